//! The man pages agree with the program: every option and command of the real
//! binary's `--help`, every key `HookFile` accepts, every auth scheme, status,
//! exit code and `SOCKHOOK_*` variable in the source is documented; and both
//! pages render without a warning from man(1) or groff(1).
//!
//! The lists come from the source files themselves, read as text, so a new
//! key or scheme fails here until the page documents it.

use std::fs;
use std::io::Write;
use std::process::Command;

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

/// The lines of `--help`'s block that starts with `heading`, up to a blank line.
fn help_block<'a>(help: &'a str, heading: &str) -> Vec<&'a str> {
    let block: Vec<&str> = help
        .lines()
        .skip_while(|l| *l != heading)
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert!(!block.is_empty(), "no {heading:?} block in --help");
    block
}

/// `--long` and `-s` options in the Usage and Options blocks of `--help`.
fn help_options(help: &str) -> Vec<String> {
    let mut lines = help_block(help, "Usage:");
    lines.extend(help_block(help, "Options:"));
    let mut options: Vec<String> = lines
        .iter()
        .flat_map(|l| l.split(|c: char| c.is_whitespace() || "[]|=,".contains(c)))
        .filter(|w| {
            let long = w.strip_prefix("--").is_some_and(|n| {
                n.len() > 1 && n.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            });
            let short = w.len() == 2 && w.starts_with('-') && w.as_bytes()[1].is_ascii_alphabetic();
            long || short
        })
        .map(str::to_owned)
        .collect();
    options.sort();
    options.dedup();
    options
}

/// Subcommands: the entries of `--help`'s "Commands:" block.
fn help_commands(help: &str) -> Vec<String> {
    help_block(help, "Commands:")
        .into_iter()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Fields of `struct name { … }` in Rust source, with `#[serde(rename = "…")]` applied.
fn struct_fields(source: &str, name: &str) -> Vec<String> {
    let start = format!("struct {name} {{");
    let mut fields = Vec::new();
    let mut rename = None;
    for line in source
        .lines()
        .skip_while(|l| !l.contains(&start))
        .skip(1)
        .map(str::trim)
        .take_while(|l| *l != "}")
    {
        if let Some(rest) = line.strip_prefix("#[serde(rename = \"") {
            rename = rest.split('"').next().map(str::to_owned);
        } else if let Some((field, _)) = line.trim_start_matches("pub ").split_once(':')
            && !line.starts_with("//")
            && field.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            fields.push(rename.take().unwrap_or_else(|| field.to_owned()));
        }
    }
    assert!(!fields.is_empty(), "no fields found in struct {name}");
    fields
}

/// Variants of `enum Scheme`, as hook files spell them (`rename_all = "kebab-case"`).
fn schemes(source: &str) -> Vec<String> {
    let body: Vec<&str> = source
        .lines()
        .skip_while(|l| !l.contains("pub enum Scheme {"))
        .skip(1)
        .map(str::trim)
        .take_while(|l| *l != "}")
        .collect();
    let attributes: String = source
        .lines()
        .take_while(|l| !l.contains("pub enum Scheme {"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        attributes.ends_with("#[serde(rename_all = \"kebab-case\")]"),
        "Scheme is no longer renamed kebab-case; update this test"
    );
    let variants: Vec<String> = body
        .iter()
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        .map(|l| {
            let mut kebab = String::new();
            for (i, c) in l.trim_end_matches(',').chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    kebab.push('-');
                }
                kebab.push(c.to_ascii_lowercase());
            }
            kebab
        })
        .collect();
    assert!(
        variants.len() >= 3,
        "no Scheme variants found: {variants:?}"
    );
    variants
}

/// Every three-digit number in the body of `fn name` in `source`.
fn numbers_in_fn(source: &str, name: &str) -> Vec<String> {
    let start = format!("fn {name}(");
    let mut numbers: Vec<String> = source
        .lines()
        .skip_while(|l| !l.contains(&start))
        .skip(1)
        .take_while(|l| !l.starts_with("    }"))
        .flat_map(|l| l.split(|c: char| !c.is_ascii_digit()))
        .filter(|n| n.len() == 3)
        .map(str::to_owned)
        .collect();
    numbers.sort();
    numbers.dedup();
    numbers
}

#[test]
fn every_option_and_command_of_help_is_in_sockhook_8() {
    let roff = read("doc/sockhook.8");
    let help = help();
    let options = help_options(&help);
    assert!(
        options.len() >= 10 && options.contains(&"--hooks".to_owned()),
        "options found in --help: {options:?}"
    );
    let documented = tags(&section(&roff, "OPTIONS"), false);
    let synopsis = section(&roff, "SYNOPSIS");
    for option in &options {
        assert!(
            documented.contains(option),
            "{option} (sockhook --help) has no entry under OPTIONS in doc/sockhook.8 (entries: {documented:?})"
        );
        if option.starts_with("--") && !["--help", "--version"].contains(&option.as_str()) {
            assert!(
                has_word(&synopsis, option),
                "{option} is not in the SYNOPSIS of doc/sockhook.8"
            );
        }
    }
    let commands = help_commands(&help);
    assert!(
        commands.len() >= 4,
        "commands found in --help: {commands:?}"
    );
    let entries = tags(&section(&roff, "COMMANDS"), true);
    for command in &commands {
        assert!(
            entries.contains(command),
            "command {command} has no entry under COMMANDS in doc/sockhook.8 (entries: {entries:?})"
        );
        assert!(
            synopsis.contains(&format!("sockhook {command}")),
            "command {command} is not in the SYNOPSIS of doc/sockhook.8"
        );
    }
}

#[test]
fn every_hook_key_and_scheme_is_in_sockhook_toml_5() {
    let roff = read("doc/sockhook.toml.5");
    let config = read("src/config.rs");
    let keys = struct_fields(&config, "HookFile");
    let documented = tags(&section(&roff, "KEYS"), true);
    for key in &keys {
        assert!(
            documented.contains(key),
            "hook key {key} (HookFile in src/config.rs) has no entry under KEYS in doc/sockhook.toml.5 (entries: {documented:?})"
        );
    }
    for key in &documented {
        assert!(
            keys.contains(key),
            "doc/sockhook.toml.5 documents {key}, which HookFile does not accept"
        );
    }
    let schemes = schemes(&config);
    let headings: Vec<String> = plain(&roff)
        .lines()
        .filter_map(|l| l.strip_prefix(".SS "))
        .map(str::to_owned)
        .collect();
    let keys_text = section(&roff, "KEYS");
    for scheme in &schemes {
        assert!(
            headings.contains(scheme),
            "auth scheme {scheme} has no .SS section in doc/sockhook.toml.5 (sections: {headings:?})"
        );
        assert!(
            has_word(&keys_text, scheme),
            "auth scheme {scheme} is not listed under the auth key in doc/sockhook.toml.5"
        );
    }
    let page8 = plain(&read("doc/sockhook.8"));
    for scheme in schemes
        .iter()
        .filter(|s| !["token", "none"].contains(&s.as_str()))
    {
        assert!(
            has_word(&page8, scheme),
            "signature scheme {scheme} (for sign --scheme) is not in doc/sockhook.8"
        );
    }
}

#[test]
fn statuses_exit_codes_and_variables_are_in_sockhook_8() {
    let roff = read("doc/sockhook.8");
    let error = read("src/error.rs");
    let mut statuses = numbers_in_fn(&error, "status");
    statuses.extend(["200".to_owned(), "204".to_owned()]);
    assert!(statuses.len() >= 10, "statuses found: {statuses:?}");
    let documented = tags(&section(&roff, "STATUSES"), true);
    for status in &statuses {
        assert!(
            documented.contains(status),
            "status {status} (src/error.rs) has no entry under STATUSES in doc/sockhook.8"
        );
    }
    let codes: Vec<String> = error
        .lines()
        .filter_map(|l| l.strip_prefix("pub const EXIT_"))
        .filter_map(|l| l.rsplit_once("= "))
        .map(|(_, n)| n.trim_end_matches(';').to_owned())
        .collect();
    assert!(codes.len() >= 4, "exit codes found: {codes:?}");
    let documented = tags(&section(&roff, "EXIT STATUS"), true);
    for code in &codes {
        assert!(
            documented.contains(code),
            "exit code {code} (src/error.rs) has no entry under EXIT STATUS in doc/sockhook.8"
        );
    }
    let mut variables = Vec::new();
    for entry in fs::read_dir(format!("{ROOT}/src")).unwrap() {
        let source = fs::read_to_string(entry.unwrap().path()).unwrap();
        // Names in unit tests are not the program's.
        let program = source.split("#[cfg(test)]").next().unwrap_or_default();
        for piece in program.split('"').skip(1).step_by(2) {
            if piece.starts_with("SOCKHOOK_")
                && piece.len() > 9
                && piece.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            {
                variables.push(piece.to_owned());
            }
        }
    }
    variables.sort();
    variables.dedup();
    assert!(variables.len() >= 5, "variables found: {variables:?}");
    let documented = tags(&section(&roff, "THE COMMAND'S ENVIRONMENT"), true);
    for variable in &variables {
        assert!(
            documented.contains(variable),
            "{variable} (src/) has no entry under THE COMMAND'S ENVIRONMENT in doc/sockhook.8"
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
