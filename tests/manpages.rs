//! The man pages agree with the program: every command and option of the
//! option table (and of the real binary's `--help`, which is made from it),
//! every key hook files accept, every auth scheme, status, exit code and
//! `SOCKHOOK_*` variable is documented; and both pages render without a
//! warning from man(1) or groff(1).
//!
//! The lists are the program's own tables (`sockhook::internals`), the ones
//! the parser, the responses and the commands use, so a new key or scheme
//! fails here until the page documents it.

use std::fs;
use std::io::Write;
use std::process::Command;

use sockhook::internals::{COMMANDS, ENV_NAMES, EXIT_CODES, HOOK_KEYS, STATUSES, Scheme};

const BIN: &str = env!("CARGO_BIN_EXE_sockhook");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(rel: &str) -> String {
    fs::read_to_string(format!("{ROOT}/{rel}")).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The page's text with roff escapes resolved: `\-` is `-`, fonts are gone.
fn plain(roff: &str) -> String {
    let text = roff
        .replace("\\-", "-")
        .replace("\\(aq", "'")
        .replace("\\(dq", "\"")
        .replace("\\(bu", "*")
        .replace("\\&", "")
        .replace("\\%", "")
        .replace("\\e", "\\");
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek() == Some(&'f') {
            chars.next();
            match chars.next() {
                Some('(') => {
                    chars.next();
                    chars.next();
                }
                Some('[') => while chars.next().is_some_and(|c| c != ']') {},
                _ => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Lines of section `name` (`.SH name`) up to the next `.SH`, in plain text.
fn section(roff: &str, name: &str) -> String {
    let heading = format!(".SH {name}");
    let mut lines = roff.lines().skip_while(|l| l.trim_matches('"') != heading);
    assert!(lines.next().is_some(), "no section {name:?}");
    plain(
        &lines
            .take_while(|l| !l.starts_with(".SH "))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// The words of each `.TP` (or `.TQ`) tag in `text` (plain): `serve`,
/// `--hooks`, `-h` and `--help`, `204`. With `first`, only the first word of each.
fn tags(text: &str, first: bool) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut tags = Vec::new();
    for w in lines.windows(2) {
        if w[0] != ".TP" && w[0] != ".TQ" {
            continue;
        }
        let tag = match w[1].strip_prefix('.') {
            Some(macro_and_rest) => macro_and_rest.split_once(' ').map_or("", |(_, r)| r),
            None => w[1],
        };
        let words = tag
            .split(|c: char| c.is_whitespace() || c == ',' || c == '"')
            .filter(|w| !w.is_empty());
        if first {
            tags.extend(words.take(1).map(str::to_owned));
        } else {
            tags.extend(words.map(str::to_owned));
        }
    }
    tags
}

/// Whether `word` occurs in `text` not as a part of a longer word.
fn has_word(text: &str, word: &str) -> bool {
    let part = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(part) && !after.is_some_and(part)
    })
}

fn help() -> String {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success(), "sockhook --help: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_command_and_option_is_in_sockhook_8() {
    let roff = read("doc/sockhook.8");
    let help = help();
    let documented = tags(&section(&roff, "OPTIONS"), false);
    let synopsis = section(&roff, "SYNOPSIS");
    let entries = tags(&section(&roff, "COMMANDS"), true);
    for command in &COMMANDS {
        assert!(
            entries.iter().any(|e| e == command.name),
            "command {} has no entry under COMMANDS in doc/sockhook.8 (entries: {entries:?})",
            command.name
        );
        assert!(
            synopsis.contains(&format!("sockhook {}", command.name)),
            "command {} is not in the SYNOPSIS of doc/sockhook.8",
            command.name
        );
        for option in command.options {
            let long = format!("--{}", option.name);
            assert!(
                documented.contains(&long),
                "{long} ({}) has no entry under OPTIONS in doc/sockhook.8 (entries: {documented:?})",
                command.name
            );
            assert!(
                has_word(&synopsis, &long),
                "{long} is not in the SYNOPSIS of doc/sockhook.8"
            );
            assert!(has_word(&help, &long), "{long} is not in sockhook --help");
        }
    }
    for option in ["-h", "--help", "-V", "--version"] {
        assert!(
            documented.iter().any(|d| d == option),
            "{option} has no entry under OPTIONS in doc/sockhook.8"
        );
    }
}

#[test]
fn every_hook_key_and_scheme_is_in_sockhook_toml_5() {
    let roff = read("doc/sockhook.toml.5");
    let documented = tags(&section(&roff, "KEYS"), true);
    for key in HOOK_KEYS {
        assert!(
            documented.iter().any(|d| d == key),
            "hook key {key} has no entry under KEYS in doc/sockhook.toml.5 (entries: {documented:?})"
        );
    }
    for key in &documented {
        assert!(
            HOOK_KEYS.contains(&key.as_str()),
            "doc/sockhook.toml.5 documents {key}, which hook files do not accept"
        );
    }
    let headings: Vec<String> = plain(&roff)
        .lines()
        .filter_map(|l| l.strip_prefix(".SS "))
        .map(str::to_owned)
        .collect();
    let keys_text = section(&roff, "KEYS");
    let page8 = plain(&read("doc/sockhook.8"));
    for scheme in Scheme::ALL {
        let name = scheme.name();
        assert!(
            headings.iter().any(|h| h == name),
            "auth scheme {name} has no .SS section in doc/sockhook.toml.5 (sections: {headings:?})"
        );
        assert!(
            has_word(&keys_text, name),
            "auth scheme {name} is not listed under the auth key in doc/sockhook.toml.5"
        );
        if scheme.needs_secret() {
            assert!(
                has_word(&page8, name),
                "signature scheme {name} (for sign --scheme) is not in doc/sockhook.8"
            );
        }
    }
}

#[test]
fn statuses_exit_codes_and_variables_are_in_sockhook_8() {
    let roff = read("doc/sockhook.8");
    let documented = tags(&section(&roff, "STATUSES"), true);
    for (status, _) in STATUSES.iter().filter(|(s, _)| *s != 100) {
        assert!(
            documented.contains(&status.to_string()),
            "status {status} has no entry under STATUSES in doc/sockhook.8"
        );
    }
    let documented = tags(&section(&roff, "EXIT STATUS"), true);
    for code in EXIT_CODES {
        assert!(
            documented.contains(&code.to_string()),
            "exit code {code} has no entry under EXIT STATUS in doc/sockhook.8"
        );
    }
    let documented = tags(&section(&roff, "THE COMMAND'S ENVIRONMENT"), true);
    for variable in ENV_NAMES {
        assert!(
            documented.iter().any(|d| d == variable),
            "{variable} has no entry under THE COMMAND'S ENVIRONMENT in doc/sockhook.8"
        );
    }
    let environment = tags(&section(&roff, "ENVIRONMENT"), false);
    for variable in [
        "LISTEN_FDS",
        "LISTEN_PID",
        "CREDENTIALS_DIRECTORY",
        "JOURNAL_STREAM",
        "NOTIFY_SOCKET",
        "RUNTIME_DIRECTORY",
    ] {
        assert!(
            environment.iter().any(|t| t == variable),
            "{variable} has no entry under ENVIRONMENT in doc/sockhook.8"
        );
    }
}

/// Under `CI=true` the tools must be there; elsewhere their absence skips.
fn tool_or_skip(tool: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but {tool} is not installed (package {package})");
        }
        let _ = writeln!(
            std::io::stderr(),
            "skipped: {tool} is not installed (package {package})"
        );
    }
    found
}

#[test]
fn man_pages_render_without_warnings() {
    if !tool_or_skip("man", "man-db") || !tool_or_skip("groff", "groff-base") {
        return;
    }
    for page in ["doc/sockhook.8", "doc/sockhook.toml.5"] {
        let path = format!("{ROOT}/{page}");
        for args in [
            &["-l", "--warnings", &path][..],
            &["--warnings", "-E", "UTF-8", "-l", &path][..],
        ] {
            let out = Command::new("man")
                .args(args)
                .env("MANWIDTH", "80")
                .env("MAN_DISABLE_SECCOMP", "1")
                .env_remove("MANPAGER")
                .env_remove("PAGER")
                .output()
                .unwrap();
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "man {args:?}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("NAME"), "man {args:?} printed:\n{text}");
            for line in text.lines() {
                assert!(
                    line.chars().count() <= 79,
                    "{page}: a line wider than MANWIDTH=80 allows:\n{line}"
                );
            }
        }
        let out = Command::new("groff")
            .args(["-ww", "-man", "-z", &path])
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "groff -ww -man -z {page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if tool_or_skip("lexgrog", "man-db") {
            // What mandb and lintian take as the whatis entry: NAME must parse.
            let out = Command::new("lexgrog").arg(&path).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains(" - "),
                "lexgrog {page}: {text}"
            );
        }
    }
}

/// `text` with runs of blanks and newlines as one space.
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn troubleshooting_in_sockhook_8_covers_what_admins_run_into() {
    let text = flat(&section(&read("doc/sockhook.8"), "TROUBLESHOOTING"));
    for needle in [
        "journalctl -u sockhook.service",
        "journalctl -u sockhook.service -p warning",
        "standard error at priority warning",
        "sockhook.service is failed",
        "systemctl reset-failed sockhook.socket sockhook.service",
        "service-start-limit-hit",
        "ALLOWED_HOST_LIST",
        "Allow requests to the local network from webhooks and integrations",
        "systemctl restart sockhook.socket",
        "sockhook check",
        "visudo -f /etc/sudoers.d/sockhook",
    ] {
        assert!(
            text.contains(needle),
            "TROUBLESHOOTING in doc/sockhook.8 lacks {needle:?}"
        );
    }
}

/// Narrowing the address with `systemctl edit sockhook.socket` takes a
/// restart of the socket; every page that says the one says the other.
#[test]
fn every_edit_of_the_socket_is_followed_by_its_restart() {
    for (page, text) in [
        ("README.md", read("README.md")),
        ("doc/sockhook.8", plain(&read("doc/sockhook.8"))),
    ] {
        let text = flat(&text.replace(['`', '*'], ""));
        let edits: Vec<usize> = text
            .match_indices("systemctl edit sockhook.socket")
            .map(|(i, _)| i)
            .collect();
        assert!(
            !edits.is_empty(),
            "{page} no longer says how to narrow the address"
        );
        for i in edits {
            let after = &text[i..(i + 400).min(text.len())];
            assert!(
                after.contains("systemctl restart sockhook.socket"),
                "{page}: systemctl edit sockhook.socket without the restart: {after}"
            );
        }
    }
}

/// The README's hooks name secrets the service can read: a credential the
/// README also loads with `LoadCredential=`, or a file given group
/// sockhook and mode 0640.
#[test]
fn readme_secrets_are_ones_the_service_can_read() {
    let readme = read("README.md");
    let secrets: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.trim().strip_prefix("secret = \""))
        .filter_map(|l| l.split('"').next())
        .collect();
    assert!(!secrets.is_empty(), "the README shows no secret");
    for secret in secrets {
        if secret.starts_with('/') {
            assert!(
                readme.contains(&format!("chgrp sockhook {secret}")),
                "README: secret = {secret:?} is root-only as created"
            );
        } else {
            assert!(
                readme.contains(&format!("LoadCredential={secret}:")),
                "README: secret = {secret:?} is a credential nothing loads"
            );
        }
    }
}

/// Key rotation is documented where admins look, and what the pages print
/// for a token URL is the form every client honours.
#[test]
fn key_rotation_and_the_token_url_form_are_documented() {
    let readme = read("README.md");
    let page = flat(&plain(&read("doc/sockhook.8")));
    assert!(readme.contains("### Replacing the server key"));
    for text in [readme.as_str(), page.as_str()] {
        assert!(text.contains("systemctl stop sockhook.service"));
        assert!(text.contains("umask 077"));
    }
    assert!(page.contains("Replace the server key"));
    for (name, text) in [
        ("README.md", readme.clone()),
        ("doc/sockhook.8", plain(&read("doc/sockhook.8"))),
        ("doc/sockhook.toml.5", plain(&read("doc/sockhook.toml.5"))),
    ] {
        assert!(
            !text.contains("TOKEN@"),
            "{name} shows a token URL without the colon"
        );
    }
    assert!(page.contains("http://TOKEN:@pi:7777/hooks/kodi-restart"));
}

/// `make install` ends with the next steps, `sockhook check` first.
#[test]
fn make_install_says_to_run_check_next() {
    let makefile = read("Makefile");
    let next = makefile
        .find("Installed. Next:")
        .expect("make install prints its next steps");
    let steps = &makefile[next..(next + 300).min(makefile.len())];
    assert!(steps.contains("sockhook check"), "{steps}");
}
