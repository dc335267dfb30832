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
        let out = fx.check();
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

// Form and multipart payloads, sent by real clients.

const FORM_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/senders/form_client.py");
const MAIN: &str =
    r#"{"ref":"refs/heads/main","head_commit":{"id":"c0ffee","message":"a & b = 100%\n+ ünï"}}"#;
const DEV: &str = r#"{"ref":"refs/heads/dev","head_commit":{"id":"dead"}}"#;
const FORM_HOOK: &str = "[match]\nref = \"refs/heads/main\"\n[env]\nCOMMIT = \"head_commit.id\"\nMESSAGE = \"head_commit.message\"\n";

/// A script that saves its stdin and `COMMIT` and `MESSAGE`.
fn saver(fx: &Fixture) -> std::path::PathBuf {
    let d = fx.dir.display();
    fx.script(
        "save.sh",
        &format!(
            "cat > {d}/stdin\nprintf '%s' \"$COMMIT\" > {d}/COMMIT.val\nprintf '%s' \"$MESSAGE\" > {d}/MESSAGE.val\necho run >> {d}/h.runs"
        ),
    )
}

/// Hook `name` with `auth` (and the secret file `secret` for the signature
/// schemes), [`FORM_HOOK`] and `extra`.
fn form_hook(fx: &Fixture, name: &str, auth: &str, extra: &str) {
    let save = saver(fx);
    let secret = fx.dir.join("secret");
    fs::write(&secret, "form-secret-do-not-log\n").unwrap();
    let secret_line = match auth {
        "token" => String::new(),
        _ => format!("secret = {secret:?}\n"),
    };
    fx.hook(
        name,
        &format!("command = [{save:?}]\nauth = {auth:?}\n{secret_line}{extra}{FORM_HOOK}"),
    );
}

/// `form_client.py`: the status and the response body.
fn python_sends(
    server: &Server,
    fx: &Fixture,
    path: &str,
    shape: &str,
    auth: &str,
    payload: &str,
) -> (u16, String) {
    let credential = match auth {
        "token" => fx.token(path),
        _ => fx.dir.join("secret").to_str().unwrap().to_owned(),
    };
    let url = format!("http://{}{path}", server.addr);
    let out = run_with_stdin(
        "python3",
        &[FORM_CLIENT, &url, shape, auth, &credential],
        payload.as_bytes(),
    );
    assert!(out.status.success(), "form_client.py: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, body) = text.split_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}

fn curl_sends(server: &Server, fx: &Fixture, path: &str, args: &[&str]) -> u16 {
    let auth = format!("Authorization: Bearer {}", fx.token(path));
    let url = format!("http://{}{path}", server.addr);
    let mut all = vec!["-H", &auth, &url];
    all.extend_from_slice(args);
    let (status, stderr) = curl(&all);
    assert!(status != 0, "curl: {stderr}");
    status
}

fn assert_ran_with(fx: &Fixture, runs: usize) {
    assert_eq!(fx.runs("h"), runs);
    assert_eq!(value(fx, "COMMIT"), "c0ffee");
    assert_eq!(value(fx, "MESSAGE"), "a & b = 100%\n+ ünï");
}

#[test]
fn curl_forms_and_multipart_go_through_match_and_env_with_the_raw_body_on_stdin() {
    let fx = Fixture::new("form-curl");
    form_hook(&fx, "h", "token", "");
    let main = fx.dir.join("main.json");
    fs::write(&main, MAIN).unwrap();
    let dev = fx.dir.join("dev.json");
    fs::write(&dev, DEV).unwrap();
    let at = |file: &Path| format!("payload@{}", file.display());
    let part = |file: &Path| format!("payload=@{};type=application/json", file.display());
    let server = fx.serve_guarded(&["--idle-timeout", IDLE]);

    // curl --data-urlencode: GitHub's and Gitea's form shape.
    assert_eq!(
        curl_sends(&server, &fx, "/hooks/h", &["--data-urlencode", &at(&main)]),
        204
    );
    server.wait_log("exited 0", 1);
    assert_ran_with(&fx, 1);
    let stdin = String::from_utf8(fx.read("stdin")).unwrap();
    assert!(stdin.starts_with("payload=%7B%22ref%22"), "{stdin}");
    assert_eq!(
        curl_sends(&server, &fx, "/hooks/h", &["--data-urlencode", &at(&dev)]),
        200
    );

    // curl -F: Plex's multipart shape.
    assert_eq!(
        curl_sends(&server, &fx, "/hooks/h", &["-F", &part(&main)]),
        204
    );
    server.wait_log("exited 0", 2);
    assert_ran_with(&fx, 2);
    let stdin = String::from_utf8(fx.read("stdin")).unwrap();
    assert!(
        stdin.starts_with("--------------------------") && stdin.contains(MAIN),
        "{stdin}"
    );
    assert_eq!(
        curl_sends(&server, &fx, "/hooks/h", &["-F", &part(&dev)]),
        200
    );
    let (status, log) = server.wait(PATIENCE);
    assert!(status.success(), "{log}");
    assert_eq!(
        log.matches("200 hook h: ignored: ref is \"refs/heads/dev\"")
            .count(),
        2,
        "{log}"
    );
    assert_eq!(fx.runs("h"), 2);
}

#[test]
fn python_requests_forms_signed_as_github_and_gitea_sign_them() {
    let fx = Fixture::new("form-python");
    form_hook(&fx, "gh", "github", "");
    form_hook(&fx, "gt", "gitea", "");
    form_hook(&fx, "tok", "token", "stdin = \"payload\"\n");
    let server = fx.serve_guarded(&["--idle-timeout", IDLE]);
    let mut runs = 0;
    for (path, shape, auth) in [
        ("/hooks/gh", "form", "github"),
        ("/hooks/gt", "form", "gitea"),
        ("/hooks/tok", "form", "token"),
        ("/hooks/tok", "multipart", "token"),
    ] {
        let (status, body) = python_sends(&server, &fx, path, shape, auth, MAIN);
        assert_eq!(status, 204, "{path} {shape}: {body}\n{}", server.log());
        runs += 1;
        server.wait_log("exited 0", runs);
        assert_ran_with(&fx, runs);
        let stdin = String::from_utf8(fx.read("stdin")).unwrap();
        if path == "/hooks/tok" {
            // stdin = "payload": the JSON itself.
            assert_eq!(stdin, MAIN, "{path} {shape}");
        } else {
            assert!(stdin.starts_with("payload="), "{path}: {stdin}");
        }
        let (status, body) = python_sends(&server, &fx, path, shape, auth, DEV);
        assert_eq!(status, 200, "{path} {shape}: {body}");
    }
    // Gitea signs the JSON, not the form: a GitHub-style signature over the
    // form body does not verify a gitea hook, and the other way round.
    let (status, body) = python_sends(&server, &fx, "/hooks/gt", "form", "github", MAIN);
    assert_eq!(status, 401, "{body}");
    let (status, body) = python_sends(&server, &fx, "/hooks/gh", "form", "gitea", MAIN);
    assert_eq!(status, 401, "{body}");
    let (status, log) = server.wait(PATIENCE);
    assert!(status.success(), "{log}");
    assert_eq!(fx.runs("h"), runs, "{log}");
    assert!(!log.contains("form-secret-do-not-log"), "{log}");
}

#[test]
fn hostile_forms_are_refused_with_the_reason_and_nothing_runs() {
    let fx = Fixture::new("form-hostile");
    form_hook(&fx, "h", "token", "max_body = 65536\n");
    form_hook(&fx, "gt", "gitea", "");
    let auth = format!("Authorization: Bearer {}", fx.token("/hooks/h"));
    let server = fx.serve_guarded(&["--idle-timeout", IDLE]);
    let form = "Content-Type: application/x-www-form-urlencoded";
    let multipart = "Content-Type: multipart/form-data; boundary=XyZ";
    let big = format!("payload={}", "%20".repeat(30_000));
    let cases: [(&str, &[u8], u16, &str); 9] = [
        (form, b"ref=refs%2Fheads%2Fmain", 422, "the form has no payload field"),
        (form, b"payload=%7B%7D&payload=%7B%7D", 422, "the form has two payload fields"),
        (form, b"payload=%7B%2", 422, "bad percent-escape at byte 11 of the body"),
        (form, big.as_bytes(), 413, "body larger than 65536 bytes"),
        (
            multipart,
            b"--XyZ\r\nContent-Disposition: form-data; name=\"payload\"\r\n\r\n{\"ref\":\"refs/heads/main\"}\r\n--XyZ-",
            422,
            "the multipart body ends before its closing boundary",
        ),
        (
            multipart,
            b"--XyZ\r\nContent-Disposition: form-data; name=\"thumb\"\r\n\r\nx\r\n--XyZ--\r\n",
            422,
            "the multipart body has no payload part",
        ),
        (
            multipart,
            b"--XyZ\r\nContent-Disposition: form-data; name=payload\r\n\r\n{}\r\n--XyZ\r\nContent-Disposition: form-data; name=\"payload\"\r\n\r\n{}\r\n--XyZ--",
            422,
            "the body has two payload parts",
        ),
        (
            "Content-Type: multipart/form-data",
            b"--XyZ--",
            422,
            "multipart/form-data needs a boundary parameter",
        ),
        (form, b"payload=not%20json", 200, "ignored: body is not JSON"),
    ];
    for (content_type, body, status, why) in cases {
        let reply = server.post("/hooks/h", &[&auth, content_type], body);
        assert_eq!(reply.status(), status, "{why}: {reply:?}");
        assert!(reply.body().contains(why), "{why}: {}", reply.body());
        assert!(reply.complete(), "{reply:?}");
    }
    // A gitea hook checks a form's signature over its payload field or over
    // the body as sent; a form without a payload field has only the body.
    let secret = fs::read(fx.dir.join("secret")).unwrap();
    let signed = |data: &[u8]| {
        format!(
            "X-Gitea-Signature: {}",
            hex(&hmac_sha256(secret.trim_ascii(), data))
        )
    };
    let reply = server.post("/hooks/gt", &[&signed(b"{}"), form], b"nothing=here");
    assert_eq!(reply.status(), 401, "{reply:?}");
    assert!(
        reply.body().contains("signature does not match the body"),
        "{reply:?}"
    );
    // JSON that a client labels a form (curl's default): signed as sent, it
    // verifies, and then has no payload field for [match].
    let json = br#"{"ref":"refs/heads/main"}"#;
    let reply = server.post("/hooks/gt", &[&signed(json), form], json);
    assert_eq!(reply.status(), 422, "{reply:?}");
    assert!(
        reply.body().contains("the form has no payload field"),
        "{reply:?}"
    );
    // Still well: a good one runs.
    let good = format!("payload={}", "%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%7D");
    assert_eq!(
        server
            .post("/hooks/h", &[&auth, form], good.as_bytes())
            .status(),
        204
    );
    let (status, log) = server.wait(PATIENCE);
    assert!(status.success(), "{log}");
    assert_eq!(fx.runs("h"), 1, "{log}");
}
