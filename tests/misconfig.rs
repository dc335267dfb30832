//! Configuration mistakes, through the real binary: each breaks only what it
//! touches (those hooks answer 500 and nothing runs, the others keep
//! working), the process keeps serving, and fixing the file fixes the next
//! request in the same activation — no restart, no reload command.
//! (The same under a real systemd, with the key as a credential, is in
//! tests/system.rs.)

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use support::harness::*;

/// A request to `hook` with its token.
fn token_post(server: &Served, f: &Fixture, hook: &str) -> Reply {
    let token = f.token(&format!("/hooks/{hook}"));
    server.post(
        &format!("/hooks/{hook}"),
        &[&format!("Authorization: Bearer {token}")],
        b"x",
    )
}

/// A GitHub delivery to `hook`, signed with `secret`.
fn github_post(server: &Served, hook: &str, secret: &[u8]) -> Reply {
    let body = br#"{"zen":"x"}"#;
    server.post(
        &format!("/hooks/{hook}"),
        &[
            &github_signature(secret, body),
            "X-GitHub-Event: push",
            "Content-Type: application/json",
        ],
        body,
    )
}

/// Waits (bounded) until the recorder of `name` has run `n` times, so that
/// no run is coalesced with the next request's or stopped with the server.
fn wait_runs(f: &Fixture, name: &str, n: usize, server: &Served) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while f.runs(name) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{name} ran {} times, not {n}:\n{}",
            f.runs(name),
            server.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn token_hook(f: &Fixture, name: &str) {
    let script = f.recorder(name);
    f.hook(name, &format!("command = [{script:?}]\nauth = \"token\"\n"));
}

#[test]
fn a_broken_hook_file_answers_500_until_it_is_fixed() {
    let f = Fixture::new("broken-fixed");
    token_hook(&f, "good");
    let script = f.recorder("bad");
    f.hook("bad", &format!("command = [{script:?}]\nauth = \"tokn\"\n"));
    let server = f.serve_guarded(&["--idle-timeout", "60"]);
    for n in 1..=3 {
        let reply = token_post(&server, &f, "bad");
        assert_eq!(reply.status(), 500, "{}", server.log());
        assert_eq!(token_post(&server, &f, "good").status(), 204);
        wait_runs(&f, "good", n, &server);
    }
    server.wait_log("POST /hooks/bad 500 hook bad: hook misconfigured", 3);
    f.hook(
        "bad",
        &format!("command = [{script:?}]\nauth = \"token\"\n"),
    );
    let reply = token_post(&server, &f, "bad");
    assert_eq!(reply.status(), 204, "{}", server.log());
    server.wait_log("hook files changed: reloaded 2 hook(s), 0 problem(s)", 1);
    wait_runs(&f, "bad", 1, &server);
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(f.runs("bad"), 1, "the broken hook ran while broken:\n{log}");
    assert_eq!(f.runs("good"), 3, "{log}");
}

#[test]
fn a_missing_secret_answers_500_until_it_is_written() {
    let f = Fixture::new("secret-fixed");
    token_hook(&f, "other");
    let secret = f.dir.join("gh-secret");
    let script = f.recorder("gh");
    f.hook(
        "gh",
        &format!("command = [{script:?}]\nauth = \"github\"\nsecret = {secret:?}\n"),
    );
    let server = f.serve_guarded(&["--idle-timeout", "60"]);
    assert_eq!(github_post(&server, "gh", b"s3cret").status(), 500);
    assert_eq!(token_post(&server, &f, "other").status(), 204);
    fs::write(&secret, "s3cret\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let reply = github_post(&server, "gh", b"s3cret");
    assert_eq!(reply.status(), 204, "{}", server.log());
    wait_runs(&f, "gh", 1, &server);
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(f.runs("gh"), 1, "{log}");
    assert!(!log.contains("s3cret"), "the secret is in the log:\n{log}");
}

#[test]
fn a_missing_hooks_directory_answers_500_until_it_exists() {
    let f = Fixture::new("no-dir");
    let script = f.recorder("late");
    fs::remove_dir_all(&f.hooks).unwrap();
    let server = f.serve_guarded(&["--idle-timeout", "60"]);
    let reply = token_post(&server, &f, "late");
    assert_eq!(reply.status(), 500, "{}", server.log());
    // Paths that name no hook are still 404, not the directory's problem.
    assert_eq!(server.post("/other", &[], b"").status(), 404);
    server.wait_log("cannot read the hooks directory", 2);
    fs::create_dir(&f.hooks).unwrap();
    f.hook(
        "late",
        &format!("command = [{script:?}]\nauth = \"token\"\n"),
    );
    assert_eq!(
        token_post(&server, &f, "late").status(),
        204,
        "{}",
        server.log()
    );
    wait_runs(&f, "late", 1, &server);
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(f.runs("late"), 1, "{log}");
}

#[test]
fn a_missing_key_breaks_token_hooks_only_until_it_is_written() {
    let f = Fixture::new("no-key");
    token_hook(&f, "tok");
    let secret = f.dir.join("gh-secret");
    fs::write(&secret, "s3cret").unwrap();
    let script = f.recorder("gh");
    f.hook(
        "gh",
        &format!("command = [{script:?}]\nauth = \"github\"\nsecret = {secret:?}\n"),
    );
    let token = f.token("/hooks/tok");
    let key = fs::read(&f.key).unwrap();
    fs::remove_file(&f.key).unwrap();
    let server = f.serve_guarded(&["--idle-timeout", "60"]);
    let auth = format!("Authorization: Bearer {token}");
    for n in 1..=3 {
        assert_eq!(server.post("/hooks/tok", &[&auth], b"x").status(), 500);
        assert_eq!(github_post(&server, "gh", b"s3cret").status(), 204);
        wait_runs(&f, "gh", n, &server);
    }
    fs::write(&f.key, &key).unwrap();
    fs::set_permissions(&f.key, fs::Permissions::from_mode(0o600)).unwrap();
    let reply = server.post("/hooks/tok", &[&auth], b"x");
    assert_eq!(reply.status(), 204, "{}", server.log());
    server.wait_log(
        "the server key changed: reloaded 2 hook(s), 0 problem(s)",
        1,
    );
    wait_runs(&f, "tok", 1, &server);
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(f.runs("tok"), 1, "{log}");
    assert_eq!(f.runs("gh"), 3, "{log}");
    assert!(!log.contains(&token), "a token is in the log:\n{log}");
}
