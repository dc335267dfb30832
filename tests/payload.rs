//! What a command gets from the payload: the hook's `[env]` variables from
//! JSON fields of the body, through the real binary over real TCP. Values
//! with spaces, newlines and non-ASCII characters arrive byte for byte, in
//! the environment and never in the argv; a NUL, an over-long value and a
//! missing field under `env_required` are refused with 422 naming the field,
//! and nothing runs; the journal keeps the values for a replay.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

use support::harness::*;

const IDLE: &str = "0.2";
const NAMES: [&str; 5] = ["SOCKHOOK_REF", "COMMIT", "MESSAGE", "FIRST", "COUNT"];
const ENV: &str = r#"
[env]
SOCKHOOK_REF = "ref"
COMMIT = "head_commit.id"
MESSAGE = "head_commit.message"
FIRST = "commits.0.author.name"
COUNT = "size"
"#;

/// A command that writes each of [`NAMES`] (or `unset`) to `NAME.val`, and
/// its arguments, one a line, to `argv`.
fn printer(fx: &Fixture) -> std::path::PathBuf {
    let d = fx.dir.display();
    let mut body = format!("printf '%s\\n' \"$@\" > {d}/argv\n");
    for name in NAMES {
        body.push_str(&format!(
            "if [ \"${{{name}+set}}\" ]; then printf '%s' \"${name}\" > {d}/{name}.val; else printf unset > {d}/{name}.val; fi\n"
        ));
    }
    body.push_str(&format!("echo run >> {d}/h.runs"));
    fx.script("print-env.sh", &body)
}

fn hook(name: &str, extra: &str) -> (Fixture, String) {
    let fx = Fixture::new(name);
    let program = printer(&fx);
    fx.hook(
        "h",
        &format!(
            "command = [{:?}, \"fixed arg\", \"$COMMIT\"]\nauth = \"token\"\n{extra}{ENV}",
            program.to_str().unwrap()
        ),
    );
    let auth = format!("Authorization: Bearer {}", fx.token("/hooks/h"));
    (fx, auth)
}

fn value(fx: &Fixture, name: &str) -> String {
    String::from_utf8(fx.read(&format!("{name}.val"))).unwrap()
}

const JSON: &str = "Content-Type: application/json";

const PUSH: &str = r#"{"ref":"refs/heads/main","size":3,
 "head_commit":{"id":"0123abc","message":"Fix: spaces  and\nnew lines\n\ttabs, \"quotes\", $(rm -rf /) `x` ; ünïcødé ✓ 🚀"},
 "commits":[{"author":{"name":"Zoë O'Brien"}},{"author":{"name":"second"}}]}"#;

#[test]
fn fields_reach_the_environment_byte_for_byte_and_never_the_argv() {
    let (fx, auth) = hook("env-values", "");
    let server = fx.serve_guarded(&["--idle-timeout", IDLE]);
    let reply = server.post("/hooks/h", &[&auth, JSON], PUSH.as_bytes());
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
    let (status, log) = server.wait(PATIENCE);
    assert!(status.success(), "{log}");
    assert_eq!(fx.runs("h"), 1, "{log}");
    assert_eq!(value(&fx, "SOCKHOOK_REF"), "refs/heads/main");
    assert_eq!(value(&fx, "COMMIT"), "0123abc");
    assert_eq!(
        value(&fx, "MESSAGE"),
        "Fix: spaces  and\nnew lines\n\ttabs, \"quotes\", $(rm -rf /) `x` ; ünïcødé ✓ 🚀"
    );
    assert_eq!(value(&fx, "FIRST"), "Zoë O'Brien");
    assert_eq!(value(&fx, "COUNT"), "3");
    assert_eq!(
        String::from_utf8(fx.read("argv")).unwrap(),
        "fixed arg\n$COMMIT\n"
    );
}

#[test]
fn a_missing_field_is_empty_or_refused_as_the_hook_says() {
    let body = br#"{"ref":"refs/heads/main","head_commit":null,"commits":[]}"#;
    let (fx, auth) = hook("env-missing", "");
    let server = fx.serve_guarded(&["--idle-timeout", IDLE]);
    assert_eq!(server.post("/hooks/h", &[&auth, JSON], body).status(), 204);
    let (status, log) = server.wait(PATIENCE);
    assert!(status.success(), "{log}");
    for name in ["COMMIT", "MESSAGE", "FIRST", "COUNT"] {
        assert_eq!(value(&fx, name), "", "{name}");
    }
    assert_eq!(value(&fx, "SOCKHOOK_REF"), "refs/heads/main");

    let (fx, auth) = hook("env-required", "env_required = true\n");
    let server = fx.serve_guarded(&["--idle-timeout", IDLE]);
    let reply = server.post("/hooks/h", &[&auth, JSON], body);
    assert_eq!(reply.status(), 422, "{reply:?}");
    assert_eq!(
        reply.body(),
        "cannot set the hook's [env]: head_commit.id (for COMMIT) is missing from the payload, and env_required = true\n"
    );
    let (status, log) = server.wait(PATIENCE);
    assert!(status.success(), "{log}");
    assert!(
        log.contains(
            "422 hook h: cannot set the hook's [env]: head_commit.id (for COMMIT) is missing"
        ),
        "{log}"
    );
    assert_eq!(fx.runs("h"), 0, "{log}");
}

#[test]
fn nul_over_long_and_objects_are_refused_or_as_the_hook_says() {
    let (fx, auth) = hook("env-refused", "env_objects = \"refuse\"\n");
    let server = fx.serve_guarded(&["--idle-timeout", IDLE]);
    let long = "x".repeat(4097);
    let cases = [
        (
            r#"{"ref":"a\u0000b"}"#.to_owned(),
            "ref (for SOCKHOOK_REF) holds a NUL character, which no environment variable can",
        ),
        (
            format!(r#"{{"ref":"{long}"}}"#),
            "ref (for SOCKHOOK_REF) is longer than 4096 bytes",
        ),
        (
            r#"{"ref":"r","head_commit":{"id":["x"]}}"#.to_owned(),
            "head_commit.id (for COMMIT) is an array, and env_objects = \"refuse\"",
        ),
        (
            r#"{"ref":"r","ref":"s"}"#.to_owned(),
            "\"ref\" appears twice in one object of the payload; duplicate keys are refused",
        ),
        (
            r#"{"ref":"#.to_owned(),
            "payload is not JSON: EOF while parsing",
        ),
    ];
    for (body, why) in &cases {
        let reply = server.post("/hooks/h", &[&auth, JSON], body.as_bytes());
        assert_eq!(reply.status(), 422, "{body}: {reply:?}");
        assert!(reply.body().contains(why), "{body}: {}", reply.body());
    }
    // Not JSON by its Content-Type: 415, as for [match].
    let reply = server.post("/hooks/h", &[&auth, "Content-Type: text/plain"], b"{}");
    assert_eq!(reply.status(), 415, "{reply:?}");
    // Exactly 4096 bytes is fine, and the server is still well.
    let at_limit = format!(r#"{{"ref":"{}"}}"#, "é".repeat(2048));
    let reply = server.post("/hooks/h", &[&auth, JSON], at_limit.as_bytes());
    assert_eq!(reply.status(), 204, "{reply:?}");
    let (status, log) = server.wait(PATIENCE);
    assert!(status.success(), "{log}");
    assert_eq!(fx.runs("h"), 1, "{log}");
    assert_eq!(value(&fx, "SOCKHOOK_REF"), "é".repeat(2048));
    assert_eq!(log.matches(" 422 hook h: ").count(), cases.len(), "{log}");

    let (fx, auth) = hook("env-json", "env_objects = \"json\"\n");
    let server = fx.serve_guarded(&["--idle-timeout", IDLE]);
    let body = br#"{"ref":null,"head_commit":{"id":{"a": [1, true]}}}"#;
    assert_eq!(server.post("/hooks/h", &[&auth, JSON], body).status(), 204);
    let (status, log) = server.wait(PATIENCE);
    assert!(status.success(), "{log}");
    assert_eq!(value(&fx, "SOCKHOOK_REF"), "null");
    assert_eq!(value(&fx, "COMMIT"), r#"{"a": [1, true]}"#);
}

#[test]
fn bad_env_tables_are_configuration_errors() {
    let fx = Fixture::new("env-config");
    let program = printer(&fx);
    let p = program.to_str().unwrap();
    for (name, toml, message) in [
        ("path", "[env]\nPATH = \"a\"", "env: PATH is reserved"),
        (
            "own",
            "[env]\nSOCKHOOK_EVENT = \"a\"",
            "env: SOCKHOOK_EVENT is reserved",
        ),
        (
            "preload",
            "[env]\nLD_PRELOAD = \"a\"",
            "env: LD_PRELOAD is reserved",
        ),
        (
            "lower",
            "[env]\nref = \"a\"",
            "env: \"ref\" is not a variable name",
        ),
        (
            "dots",
            "[env]\nA = \"a..b\"",
            "env: A = \"a..b\" is not a path",
        ),
        (
            "alone",
            "env_required = true",
            "env_required, env_objects: only apply with an [env] table",
        ),
        (
            "objects",
            "env_objects = \"drop\"\n[env]\nA = \"a\"",
            "env_objects: \"drop\" is not one of",
        ),
    ] {
        fx.hook(
            name,
            &format!("command = [{p:?}]\nauth = \"token\"\n{toml}\n"),
        );
        let out = Command::new(BIN)
            .args(["check", "--hooks"])
            .arg(&fx.hooks)
            .arg("--key")
            .arg(&fx.key)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains(&format!("{name}.toml")))
            .unwrap_or_else(|| panic!("no problem for {name}:\n{text}"));
        assert!(line.contains(message), "{name}: {line}");
        fs::remove_file(fx.hooks.join(format!("{name}.toml"))).unwrap();
    }
}

#[test]
fn the_journal_keeps_the_values_for_a_replay() {
    let (fx, auth) = hook("env-replay", "");
    let state = fx.dir.join("state");
    let state_arg = state.to_str().unwrap();
    let server = fx.serve_guarded(&["--idle-timeout", IDLE, "--state", state_arg]);
    assert_eq!(
        server
            .post("/hooks/h", &[&auth, JSON], PUSH.as_bytes())
            .status(),
        204
    );
    let (status, log) = server.wait(PATIENCE);
    assert!(status.success(), "{log}");
    let entry = fs::read_dir(state.join("deliveries"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "entry"))
        .unwrap();
    let text = String::from_utf8_lossy(&fs::read(&entry).unwrap()).into_owned();
    assert!(text.contains("env COMMIT=0123abc\n"), "{text}");
    assert!(
        text.contains("env MESSAGE=Fix: spaces  and\\x0anew lines"),
        "{text}"
    );
    for name in NAMES {
        fs::remove_file(fx.dir.join(format!("{name}.val"))).unwrap();
    }
    let id = entry
        .file_name()
        .unwrap()
        .to_string_lossy()
        .split('_')
        .next()
        .unwrap()
        .to_owned();
    let out = replay(&fx, &state, &id);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fx.runs("h"), 2);
    assert_eq!(value(&fx, "FIRST"), "Zoë O'Brien");
    assert_eq!(
        value(&fx, "MESSAGE"),
        "Fix: spaces  and\nnew lines\n\ttabs, \"quotes\", $(rm -rf /) `x` ; ünïcødé ✓ 🚀"
    );
}

fn replay(fx: &Fixture, state: &Path, id: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["replay", id, "--user", "root", "--hooks"])
        .arg(&fx.hooks)
        .arg("--state")
        .arg(state)
        .output()
        .unwrap()
}
