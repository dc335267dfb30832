//! `sockhook check`: validate every hook file and the key, the way `visudo -c` does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::{self, CREDENTIALS_DIRECTORY};
use crate::error::{EXIT_FAILED, EXIT_OK};

/// Prints one line per hook and per problem on stdout; returns the exit code.
pub fn check(hooks_dir: &Path, key: Option<&Path>) -> u8 {
    let credentials = std::env::var_os(CREDENTIALS_DIRECTORY).map(PathBuf::from);
    let hooks = config::load(hooks_dir, credentials.as_deref());
    let mut problems: Vec<String> = hooks.problems().map(ToString::to_string).collect();
    let key_path = config::key_path(key, credentials.as_deref());
    if hooks.need_key() {
        match config::load_key(&key_path) {
            Err(problem) => problems.push(problem.to_string()),
            Ok(_) => {
                let mode = std::fs::metadata(&key_path).map_or(0, |m| m.permissions().mode());
                if mode & 0o004 != 0 {
                    problems.push(format!(
                        "{}: every user can read the server key (mode {:o}); chmod 600 it",
                        key_path.display(),
                        mode & 0o777
                    ));
                }
            }
        }
    }
    for (name, hook) in hooks.iter() {
        if let Ok(hook) = hook {
            println!(
                "{}{name}: ok: auth {}{}, {} runs {}",
                config::HOOKS_PREFIX,
                hook.scheme.name(),
                secrets_note(hook),
                hook.methods.join("/"),
                hook.command[0]
            );
        }
    }
    for path in &hooks.skipped {
        println!(
            "{}: skipped: not NAME.toml with NAME of [A-Za-z0-9._-]",
            path.display()
        );
    }
    for problem in &problems {
        println!("{problem}");
    }
    let count = hooks.iter().count();
    println!(
        "{count} hook(s) in {}, {} problem(s)",
        hooks_dir.display(),
        problems.len()
    );
    if problems.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// How many secrets a hook checks with, never what they are: `" (2 secrets)"`
/// while one is being rotated, nothing for one or none.
fn secrets_note(hook: &config::Hook) -> String {
    match hook.secrets.len() {
        0 | 1 => String::new(),
        n => format!(" ({n} secrets)"),
    }
}
