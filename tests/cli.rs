//! The command line through the real binary: `--help`, `--version`, usage
//! errors, `sockhook check`, and `token` and `sign` output used against the
//! real server with curl.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use support::harness::*;

/// Runs `sockhook ARGS` to completion.
fn sockhook(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `sockhook check --hooks HOOKS --key KEY`.
fn check(hooks: &Path, key: &Path) -> Output {
    Command::new(BIN)
        .arg("check")
        .arg("--hooks")
        .arg(hooks)
        .arg("--key")
        .arg(key)
        .output()
        .unwrap()
}

/// Writes a secret file readable by its owner only.
fn secret(f: &Fixture, name: &str, text: &str) -> std::path::PathBuf {
    let path = f.dir.join(name);
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn help_exits_0_and_names_every_subcommand() {
    for flag in ["--help", "-h"] {
        let out = sockhook(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let text = stdout(&out);
        for command in ["serve", "check", "token", "sign"] {
            assert!(
                text.contains(&format!("sockhook {command} ")),
                "{flag} does not show the usage of {command}:\n{text}"
            );
        }
        assert!(stderr(&out).is_empty(), "{out:?}");
    }
}

#[test]
fn version_prints_the_package_version() {
    for flag in ["--version", "-V"] {
        let out = sockhook(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(
            stdout(&out),
            format!("sockhook {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn usage_errors_exit_100_and_name_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "no command"),
        (&["frobnicate"], "frobnicate"),
        (&["serve", "--frob"], "--frob"),
        (&["check", "--listen", "127.0.0.1:1"], "--listen"),
        (&["serve", "--hooks"], "--hooks"),
        (&["serve", "--idle-timeout", "soon"], "soon"),
        (&["token"], "PATH"),
        (&["token", "hooks/a"], "hooks/a"),
        (&["sign", "--scheme", "github"], "--secret"),
    ];
    for (args, needle) in cases {
        let out = sockhook(args);
        assert_eq!(out.status.code(), Some(100), "{args:?}: {out:?}");
        let message = stderr(&out);
        assert!(
            message.contains(needle) && message.contains("usage"),
            "{args:?} should say what is wrong ({needle}): {message}"
        );
        assert!(stdout(&out).is_empty(), "{args:?}: {out:?}");
    }
}

#[test]
fn check_passes_a_good_directory_with_one_ok_line_per_hook() {
    let f = Fixture::new("check-good");
    let gh = secret(&f, "gh-secret", "shh\n");
    f.hook("a", "command = [\"/bin/true\"]\nauth = \"token\"\n");
    f.hook(
        "deploy",
        &format!("command = [\"/bin/true\", \"x\"]\nauth = \"github\"\nsecret = {gh:?}\nevents = [\"push\"]\n"),
    );
    f.hook(
        "open",
        "command = [\"/bin/true\"]\nauth = \"none\"\nallow_unauthenticated = true\n",
    );
    let out = check(&f.hooks, &f.key);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    for name in ["a", "deploy", "open"] {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("/hooks/{name}:")))
            .collect();
        assert!(
            lines.len() == 1 && lines[0].contains("ok"),
            "{name}:\n{text}"
        );
    }
    assert_eq!(
        text.lines().filter(|l| l.contains(": ok")).count(),
        3,
        "{text}"
    );
}

#[test]
fn check_reports_each_problem_with_its_file_and_key() {
    let f = Fixture::new("check-bad");
    let missing_secret = f.dir.join("no-such-secret");
    let missing_key = f.dir.join("no-such-key");
    let gone = missing_secret.display().to_string();
    // Each file, and what its one line must name: the key, and the fix where there is one.
    let problems: [(&str, String, &[&str]); 5] = [
        (
            "relative",
            "command = [\"sudo\", \"true\"]\nauth = \"token\"\n".into(),
            &["command", "absolute", "/usr/bin/sudo"],
        ),
        (
            "typo",
            "command = [\"/bin/true\"]\nauth = \"token\"\ncomand = [\"/bin/false\"]\n".into(),
            &["comand", "unknown"],
        ),
        (
            "open",
            "command = [\"/bin/true\"]\nauth = \"none\"\n".into(),
            &["auth", "allow_unauthenticated = true"],
        ),
        (
            "nosecret",
            "command = [\"/bin/true\"]\nauth = \"github\"\n".into(),
            &["secret", "github"],
        ),
        (
            "gone",
            format!("command = [\"/bin/true\"]\nauth = \"github\"\nsecret = {gone:?}\n"),
            &["secret", &gone],
        ),
    ];
    for (name, toml, _) in &problems {
        f.hook(name, toml);
    }
    // A valid token hook: it needs the server key, which is missing.
    f.hook("tok", "command = [\"/bin/true\"]\nauth = \"token\"\n");
    let out = check(&f.hooks, &missing_key);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    for (name, _, needles) in &problems {
        let file = f.hooks.join(format!("{name}.toml"));
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&file.display().to_string()))
            .collect();
        assert_eq!(lines.len(), 1, "one line for {name}.toml:\n{text}");
        for needle in *needles {
            assert!(lines[0].contains(needle), "{name}: {needle}?\n{text}");
        }
    }
    let key_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&missing_key.display().to_string()))
        .collect();
    assert!(
        key_lines.len() == 1 && key_lines[0].contains("server key"),
        "the missing key:\n{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("/hooks/tok: ok")),
        "{text}"
    );
    // Five hook files, the key, one ok line and the summary: nothing else.
    assert_eq!(text.lines().count(), 5 + 1 + 1 + 1, "{text}");
    assert!(text.contains("6 problem(s)"), "{text}");
}

#[test]
fn check_reports_a_world_readable_key() {
    let f = Fixture::new("check-key-mode");
    f.hook("a", "command = [\"/bin/true\"]\nauth = \"token\"\n");
    fs::set_permissions(&f.key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = check(&f.hooks, &f.key);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&f.key.display().to_string()))
        .collect();
    assert!(
        lines.len() == 1 && lines[0].contains("644") && lines[0].contains("chmod"),
        "{text}"
    );
    fs::set_permissions(&f.key, fs::Permissions::from_mode(0o600)).unwrap();
    let out = check(&f.hooks, &f.key);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn token_is_the_hmac_of_the_path_and_the_server_accepts_it() {
    let f = Fixture::new("token");
    let script = f.recorder("a");
    f.hook("a", &format!("command = [{script:?}]\nauth = \"token\"\n"));
    f.hook("b", &format!("command = [{script:?}]\nauth = \"token\"\n"));
    let out = sockhook(&["token", "/hooks/a", "--key", f.key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let token = stdout(&out).trim_end().to_owned();
    let key = fs::read_to_string(&f.key).unwrap();
    let expected = hex(&hmac_sha256(key.trim_end().as_bytes(), b"/hooks/a"));
    assert_eq!(token, expected);
    let server = f.serve_guarded(&[]);
    let bearer = format!("Authorization: Bearer {token}");
    let reply = server.post("/hooks/a", &[&bearer], b"with token");
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
    let reply = server.post("/hooks/b", &[&bearer], b"wrong path");
    assert_eq!(reply.status(), 401, "{reply:?}\n{}", server.log());
    server.wait_log("exited 0", 1);
    assert_eq!(f.read("a.stdin"), b"with token");
}

#[test]
fn token_url_works_as_is_with_curl() {
    let f = Fixture::new("token-url");
    let script = f.recorder("a");
    f.hook("a", &format!("command = [{script:?}]\nauth = \"token\"\n"));
    let server = f.serve(&[]);
    let base = format!("http://127.0.0.1:{}", server.addr.port());
    let out = sockhook(&[
        "token",
        "/hooks/a",
        "--key",
        f.key.to_str().unwrap(),
        "--url-base",
        &base,
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let url = stdout(&out).trim_end().to_owned();
    let token = f.token("/hooks/a");
    assert_eq!(
        url,
        format!("http://{token}:@127.0.0.1:{}/hooks/a", server.addr.port())
    );
    // For phone apps, which want the token in their Basic or Bearer field.
    let hint = String::from_utf8_lossy(&out.stderr);
    assert!(
        hint.contains(&format!(
            "Basic auth with user name {token} and an empty password"
        )) && hint.contains(&format!("Bearer token {token}")),
        "{hint}"
    );
    // curl turns the URL's user name into Basic auth (with an empty password).
    let (status, errors) = curl(&["--data-binary", "from curl", &url]);
    assert_eq!(status, 204, "{errors}\n{}", server.log());
    server.wait_log("exited 0", 1);
    assert_eq!(f.read("a.stdin"), b"from curl");
}

#[test]
fn token_with_a_missing_key_file_exits_100_naming_the_path() {
    let f = Fixture::new("token-no-key");
    let missing = f.dir.join("no-such-key");
    let out = sockhook(&["token", "/hooks/a", "--key", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(100), "{out:?}");
    assert!(
        stderr(&out).contains(&missing.display().to_string()),
        "{out:?}"
    );
    assert!(stdout(&out).is_empty(), "{out:?}");
}

#[test]
fn sign_output_is_a_header_the_server_accepts_for_each_scheme() {
    let f = Fixture::new("sign");
    let secret_file = secret(&f, "secret", "s3cret with spaces\n");
    let other_secret = secret(&f, "other", "not the secret\n");
    let schemes = ["github", "gitea", "forgejo", "gitlab"];
    for scheme in schemes {
        let script = f.recorder(scheme);
        f.hook(
            scheme,
            &format!("command = [{script:?}]\nauth = \"{scheme}\"\nsecret = {secret_file:?}\n"),
        );
    }
    let server = f.serve_guarded(&[]);
    let body = b"{\"ref\":\"refs/heads/main\",\"x\":\"\\u0000\"}";
    let body_file = f.dir.join("body.json");
    fs::write(&body_file, body).unwrap();
    let data = format!("@{}", body_file.display());
    // What each scheme's sender would send, computed here: `sign` is checked
    // against this, not only against the server (which shares its code).
    let mac = hex(&hmac_sha256(b"s3cret with spaces", body));
    let expected = [
        format!("X-Hub-Signature-256: sha256={mac}"),
        format!("X-Gitea-Signature: {mac}"),
        format!("X-Forgejo-Signature: {mac}"),
        "X-Gitlab-Token: s3cret with spaces".to_owned(),
    ];
    for (i, (scheme, expected)) in schemes.iter().zip(&expected).enumerate() {
        let url = format!("http://{}/hooks/{scheme}", server.addr);
        let header = signature_header(scheme, &secret_file, body);
        assert_eq!(&header, expected, "sockhook sign --scheme {scheme}");
        let (status, errors) = curl(&["-H", &header, "--data-binary", &data, &url]);
        assert_eq!(
            status,
            204,
            "{scheme}: {header}\n{errors}\n{}",
            server.log()
        );
        // The same header does not open the hook with another secret (or another body).
        let wrong = match *scheme {
            "gitlab" => signature_header(scheme, &other_secret, body),
            _ => signature_header(scheme, &secret_file, b"another body"),
        };
        let (status, errors) = curl(&["-H", &wrong, "--data-binary", &data, &url]);
        assert_eq!(status, 401, "{scheme}: {wrong}\n{errors}\n{}", server.log());
        server.wait_log("exited 0", i + 1);
        assert_eq!(f.runs(scheme), 1, "{scheme}\n{}", server.log());
        assert_eq!(f.read(&format!("{scheme}.stdin")), body, "{scheme}");
    }
}

/// POSTs `body` to `url` with `client` (curl, Python requests or wget),
/// credentials only as the URL carries them; returns the final status.
fn post_with(client: &str, url: &str, body: &str) -> u16 {
    let out = match client {
        "curl" => Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
            .args(["--data-binary", body, url])
            .output(),
        "python3-requests" => Command::new("python3")
            .args([
                "-c",
                "import requests, sys\nprint(requests.post(sys.argv[1], data=sys.argv[2].encode(), timeout=10).status_code)",
                url,
                body,
            ])
            .output(),
        // wget sends URL credentials once challenged; the last status counts.
        _ => Command::new("wget")
            .args(["-O", "/dev/null", "--server-response", "--timeout=10", "--tries=1"])
            .arg(format!("--post-data={body}"))
            .arg(url)
            .output(),
    }
    .unwrap_or_else(|e| panic!("{client}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status = match client {
        "wget" => text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("HTTP/1.1 "))
            .next_back()
            .and_then(|l| l.get(..3)),
        _ => text.lines().last().map(str::trim),
    };
    status
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{client} printed no status:\n{text}"))
}

/// The `--url-base` URL works as printed with curl, Python requests and
/// wget: `http://TOKEN:@host/…`, the empty password after the colon being
/// what makes requests and wget send the credentials at all.
#[test]
fn token_url_works_as_is_with_curl_python_requests_and_wget() {
    let f = Fixture::new("token-clients");
    let script = f.recorder("a");
    f.hook("a", &format!("command = [{script:?}]\nauth = \"token\"\n"));
    let server = f.serve_guarded(&[]);
    let base = format!("http://127.0.0.1:{}", server.addr.port());
    let out = Command::new(BIN)
        .args(["token", "/hooks/a", "--key"])
        .arg(&f.key)
        .arg("--hooks")
        .arg(&f.hooks)
        .args(["--url-base", &base])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let url = stdout(&out).trim_end().to_owned();
    let token = f.token("/hooks/a");
    assert_eq!(
        url,
        format!("http://{token}:@127.0.0.1:{}/hooks/a", server.addr.port())
    );
    // Without the colon, the same clients send nothing: the form matters.
    let bare = url.replace(":@", "@");
    for (n, client) in ["curl", "python3-requests", "wget"].into_iter().enumerate() {
        let body = format!("from {client}");
        let status = post_with(client, &url, &body);
        assert_eq!(status, 204, "{client} with {url}\n{}", server.log());
        server.wait_log("exited 0", n + 1);
        assert_eq!(f.read("a.stdin"), body.as_bytes(), "{client}");
        if client == "python3-requests" {
            assert_eq!(
                post_with(client, &bare, "bare"),
                401,
                "{client} with {bare}"
            );
        }
    }
    // What to put in HTTP Shortcuts, on stderr only.
    let hint = stderr(&out);
    assert!(
        hint.contains(&format!("URL {base}/hooks/a, method POST"))
            && hint.contains(&format!(
                "Basic auth with user name {token} and an empty password"
            ))
            && hint.contains(&format!("Bearer token {token}"))
            && hint.contains("HTTP Shortcuts")
            && !hint.contains("warning"),
        "{hint}"
    );
}

/// A token for a path that no hook serves comes with a warning, and is still
/// printed (the hook may be added later).
#[test]
fn token_for_a_path_no_hook_serves_warns() {
    let f = Fixture::new("token-unserved");
    f.hook("a", "command = [\"/bin/true\"]\nauth = \"token\"\n");
    for (path, warned) in [
        ("/hooks/b", true),
        ("/hooks/a", false),
        ("/hooks/", false),
        ("/other/", true),
    ] {
        let out = Command::new(BIN)
            .args(["token", path, "--key"])
            .arg(&f.key)
            .arg("--hooks")
            .arg(&f.hooks)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(stdout(&out).trim().len(), 64, "{out:?}");
        let said = stderr(&out);
        let at = if path.ends_with('/') { "below" } else { "at" };
        let warning = format!(
            "sockhook: warning: no hook in {} is served {at} {path} (hooks: a); a request with this token gets 404\n",
            f.hooks.display()
        );
        assert_eq!(said, if warned { warning } else { String::new() }, "{path}");
    }
}

/// `serve --listen` exits 100 naming a hooks directory that is not there
/// (under socket activation it answers 500 instead: tests/misconfig.rs).
#[test]
fn serve_listen_without_the_hooks_directory_exits_100() {
    let f = Fixture::new("listen-no-dir");
    fs::remove_dir_all(&f.hooks).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--hooks"])
        .arg(&f.hooks)
        .arg("--key")
        .arg(&f.key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(100), "{out:?}");
    let dir = f.hooks.display().to_string();
    assert_eq!(
        stderr(&out),
        format!(
            "sockhook: fatal: {dir}: cannot read the hooks directory: No such file or directory (os error 2); create it or pass --hooks DIR\n"
        )
    );
}

/// A secret pasted into `secret =` is printed by neither check nor serve,
/// and what they print says what the key is for.
#[test]
fn a_pasted_secret_is_never_printed() {
    let f = Fixture::new("pasted");
    let pasted = "It's a Secret to Everybody";
    f.hook(
        "gh",
        &format!("command = [\"/bin/true\"]\nauth = \"github\"\nsecret = {pasted:?}\n"),
    );
    let out = check(&f.hooks, &f.key);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(!text.contains("Secret to Everybody"), "{text}");
    assert!(
        text.contains("secret: the value looks like the secret itself (not shown here)")
            && text.contains("LoadCredential=gh:/etc/sockhook/gh"),
        "{text}"
    );
    let server = f.serve_guarded(&[]);
    let body = b"{}";
    let reply = server.post(
        "/hooks/gh",
        &[
            &github_signature(pasted.as_bytes(), body),
            "X-GitHub-Event: push",
        ],
        body,
    );
    assert_eq!(reply.status(), 500, "{}", server.log());
    let (_, log) = server.stop();
    assert!(log.contains("not shown here"), "{log}");
    assert!(!log.contains("Secret to Everybody"), "{log}");
}

/// Each subcommand's `--help` is its own help, and no error line stacks
/// prefixes (`sockhook: fatal: error: usage: …`).
#[test]
fn each_subcommand_help_is_its_own_and_errors_have_one_prefix() {
    for command in ["serve", "check", "token", "sign"] {
        for flag in ["--help", "-h"] {
            let out = sockhook(&[command, flag]);
            assert_eq!(out.status.code(), Some(0), "{command} {flag}: {out:?}");
            let text = stdout(&out);
            assert!(
                text.starts_with(&format!("sockhook {command}\n"))
                    && text.contains(&format!("  sockhook {command} ")),
                "{command} {flag}:\n{text}"
            );
        }
    }
    let levels = ["fatal", "error", "warning", "info", "usage"];
    for args in [
        &["serve", "--frob"][..],
        &["token"],
        &["frob"],
        &["check", "--user"],
    ] {
        let out = sockhook(args);
        let said = stderr(&out);
        let line = said.lines().next().unwrap_or("");
        let rest = line
            .strip_prefix("sockhook: fatal: ")
            .unwrap_or_else(|| panic!("{args:?}: {said}"));
        assert!(
            !levels.iter().any(|l| rest.starts_with(&format!("{l}:"))),
            "{args:?}: stacked prefixes: {line}"
        );
    }
}

/// No message names the same path twice: the key's, for a missing file and
/// for the unit's placeholder of a file systemd did not find.
#[test]
fn key_messages_name_each_path_once() {
    let f = Fixture::new("key-paths");
    let missing = f.dir.join("no-such-key");
    let placeholder = f.dir.join("placeholder-key");
    fs::write(
        &placeholder,
        "sockhook-missing-credential:/etc/sockhook/gone-key\n",
    )
    .unwrap();
    for (key, path) in [
        (&missing, missing.display().to_string()),
        (&placeholder, "/etc/sockhook/gone-key".to_owned()),
    ] {
        let out = sockhook(&["token", "/hooks/a", "--key", key.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(100), "{out:?}");
        let said = stderr(&out);
        assert_eq!(said.matches(&path).count(), 1, "{said}");
        assert_eq!(said.lines().count(), 1, "{said}");
    }
}
