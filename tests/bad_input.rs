//! The bad-input table, through the real binary over real TCP.
//!
//! Every case starts its own server (a listening socket on fd 3, as systemd
//! passes it), sends one bad request and checks the exact status (or a clean
//! close where no response is possible), then sends a good request on the same
//! server: it must still get 204 and run its command. The server is then
//! stopped with SIGTERM, which makes it finish every connection first, so that
//! a command the bad request had started, or queued late, shows in the run
//! count or in the log. Bad requests carry valid credentials wherever the input
//! allows it, so that a server too lenient to refuse them would run a command.
//! Finally no token, key, secret or signature may appear anywhere in the log.

mod support;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use support::harness::*;

/// The hooks' largest body (hook `a`).
const MAX_BODY: usize = 1024;
/// The github hook's secret (GitHub's documented example).
const GH_SECRET: &str = "It's a Secret to Everybody";
/// The body of the good request that follows every bad one.
const GOOD_BODY: &[u8] = b"good request body";
/// The server's options in every case but the slow client's.
const ARGS: &[&str] = &["--idle-timeout", "600", "--request-timeout", "5"];

/// One server with hooks `a` and `ab` (token), `gh` (github) and `broken`.
struct Case {
    f: Fixture,
    server: Server,
    token_a: String,
    token_ab: String,
    token_prefix: String,
    token_a_dir: String,
    /// Every credential handed out, none of which may be logged.
    secrets: RefCell<Vec<String>>,
}

impl Case {
    fn start(name: &str, args: &[&str]) -> Case {
        let f = Fixture::new(name);
        let a = f.recorder("a");
        f.hook(
            "a",
            &format!("command = [{a:?}]\nauth = \"token\"\nmax_body = {MAX_BODY}\n"),
        );
        let ab = f.recorder("ab");
        f.hook("ab", &format!("command = [{ab:?}]\nauth = \"token\"\n"));
        let gh = f.recorder("gh");
        let secret = f.dir.join("gh.secret");
        std::fs::write(&secret, GH_SECRET).unwrap();
        f.hook(
            "gh",
            &format!("command = [{gh:?}]\nauth = \"github\"\nsecret = {secret:?}\n"),
        );
        f.hook("broken", "command = [\"true\"]\nauth = \"token\"\n");
        let token_a = f.token("/hooks/a");
        let token_ab = f.token("/hooks/ab");
        let token_prefix = f.token("/hooks/");
        let token_a_dir = f.token("/hooks/a/");
        let key = std::fs::read_to_string(&f.key).unwrap().trim().to_owned();
        let secrets = vec![
            key,
            GH_SECRET.to_owned(),
            token_a.clone(),
            token_ab.clone(),
            token_prefix.clone(),
            token_a_dir.clone(),
        ];
        let server = f.serve(args);
        Case {
            f,
            server,
            token_a,
            token_ab,
            token_prefix,
            token_a_dir,
            secrets: RefCell::new(secrets),
        }
    }

    /// `Authorization: Bearer` with the token of `/hooks/a`.
    fn auth_a(&self) -> String {
        format!("Authorization: Bearer {}", self.token_a)
    }

    /// `X-Hub-Signature-256` for `body` signed with `secret`.
    fn github(&self, secret: &str, body: &[u8]) -> String {
        let mac = hex(&hmac_sha256(secret.as_bytes(), body));
        self.secrets.borrow_mut().push(mac.clone());
        format!("X-Hub-Signature-256: sha256={mac}")
    }

    /// Records a credential that must not be logged.
    fn secret(&self, value: &str) -> String {
        self.secrets.borrow_mut().push(value.to_owned());
        value.to_owned()
    }

    /// Asserts that `reply` is a complete response with `expect`'s status and
    /// header, and that the request was logged as `expect` says.
    fn refused(&self, reply: &Reply, expect: &Expect) {
        let log = || self.server.log();
        assert_eq!(
            reply.status(),
            expect.status,
            "{:?}\n{}",
            String::from_utf8_lossy(&reply.bytes),
            log()
        );
        assert!(
            reply.complete(),
            "incomplete response: {reply:?}\n{}",
            log()
        );
        assert_eq!(reply.header("connection").as_deref(), Some("close"));
        if let Some((name, value)) = expect.header {
            assert_eq!(reply.header(name).as_deref(), Some(value), "{reply:?}");
        }
        let level = if expect.status >= 500 && expect.status != 501 {
            "error"
        } else {
            "warning"
        };
        let line = format!(" {} ", expect.status);
        let line_colon = format!(" {}:", expect.status);
        let found = |log: &str| {
            log.lines().any(|l| {
                l.starts_with(&format!("sockhook: {level}: 127.0.0.1:"))
                    && (l.contains(&line) || l.contains(&line_colon))
                    && expect.logs.iter().all(|needle| l.contains(needle))
            })
        };
        let deadline = Instant::now() + PATIENCE;
        while !found(&log()) {
            assert!(
                Instant::now() < deadline,
                "no {level} line with {} and {:?}:\n{}",
                expect.status,
                expect.logs,
                log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The good request: 204, and hook `a` runs once with its body. Then stops
    /// the server and checks that nothing else ran, nothing was left to run,
    /// and no credential was logged. `runs` are the expected runs of `a`, `ab`, `gh`.
    fn finish(self, runs: [usize; 3]) {
        let reply = self.server.post("/hooks/a", &[&self.auth_a()], GOOD_BODY);
        assert_eq!(
            reply.status(),
            204,
            "the good request after the bad one: {reply:?}\n{}",
            self.server.log()
        );
        assert!(reply.complete(), "{reply:?}");
        let total: usize = runs.iter().sum();
        self.server.wait_log(" exited 0 after ", total);
        let (status, log) = self.server.stop();
        assert_eq!(status.code(), Some(0), "{log}");
        for (hook, expected) in ["a", "ab", "gh"].into_iter().zip(runs) {
            assert_eq!(self.f.runs(hook), expected, "runs of hook {hook}:\n{log}");
        }
        assert_eq!(log.matches(" started").count(), total, "{log}");
        assert!(!log.contains("not run"), "a late trigger:\n{log}");
        assert_eq!(self.f.read("a.stdin"), GOOD_BODY, "{log}");
        for secret in self.secrets.borrow().iter() {
            // A prefix catches a truncated credential as well as a whole one.
            let prefix = &secret[..secret.len().min(16)];
            assert!(
                !log.contains(prefix),
                "the log shows a credential ({secret}):\n{log}"
            );
        }
    }
}

/// What a refused request must get.
struct Expect {
    status: u16,
    header: Option<(&'static str, &'static str)>,
    /// Pieces of the request's log line (request line, reason).
    logs: Vec<&'static str>,
}

fn status(status: u16) -> Expect {
    Expect {
        status,
        header: None,
        logs: Vec::new(),
    }
}

impl Expect {
    fn header(self, name: &'static str, value: &'static str) -> Expect {
        Expect {
            header: Some((name, value)),
            ..self
        }
    }

    fn logs(mut self, needle: &'static str) -> Expect {
        self.logs.push(needle);
        self
    }
}

/// A request from head lines (request line first, without CRLF) and a body.
fn raw(lines: &[&str], body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in lines {
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(body);
    bytes
}

/// Runs one table case: the bad request, its checks, then the good request.
fn check(name: &str, request: impl FnOnce(&Case) -> Vec<u8>, expect: Expect) {
    let case = Case::start(name, ARGS);
    let bytes = request(&case);
    let reply = case.server.request(&bytes);
    case.refused(&reply, &expect);
    case.finish([1, 0, 0]);
}

/// `name: |case| request bytes => expected;` — one test per line.
macro_rules! refused {
    ($($name:ident: $request:expr => $expect:expr;)*) => {$(
        #[test]
        fn $name() {
            check(stringify!($name), $request, $expect);
        }
    )*};
}

refused! {
    // Not HTTP/1.x at all.
    garbage_bytes: |_| b"\x00\x01\x02\xff\xfegarbage\r\n\r\n".to_vec()
        => status(400).logs("malformed request");
    tls_client_hello: |_| {
        let mut hello = b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03".to_vec();
        hello.extend_from_slice(&[0x5a; 32]);
        hello.extend_from_slice(b"\x00\x00\x04\x13\x01\x13\x02\x01\x00\x00\x97\x00\x00\x00\x0e");
        hello
    } => status(400).logs("malformed request");
    http09_request_line: |_| b"GET /hooks/a\r\n".to_vec() => status(400);

    // Request targets that are not origin-form, or carry forbidden bytes.
    absolute_form_target: |c| raw(
        &["POST http://test/hooks/a HTTP/1.1", "Host: test", "Content-Length: 4", &c.auth_a()],
        b"body",
    ) => status(400).logs("origin-form");
    asterisk_form_target: |c| raw(
        &["OPTIONS * HTTP/1.1", "Host: test", &c.auth_a()],
        b"",
    ) => status(400);
    asterisk_form_post: |c| raw(
        &["POST * HTTP/1.1", "Host: test", "Content-Length: 4", &c.auth_a()],
        b"body",
    ) => status(400);
    nul_in_target: |c| raw(
        &["POST /hooks/a\0 HTTP/1.1", "Host: test", "Content-Length: 4", &c.auth_a()],
        b"body",
    ) => status(400);
    control_byte_in_header_value: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "X-Note: a\x01b", "Content-Length: 4", &c.auth_a()],
        b"body",
    ) => status(400).logs("invalid header value");
    del_byte_in_header_value: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "X-Note: a\x7fb", "Content-Length: 4", &c.auth_a()],
        b"body",
    ) => status(400);
    obsolete_line_folding: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "X-Note: a", " folded", "Content-Length: 4", &c.auth_a()],
        b"body",
    ) => status(400);
    whitespace_before_colon: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "Content-Length : 4", &c.auth_a()],
        b"body",
    ) => status(400);

    // Host.
    missing_host_in_http11: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Content-Length: 4", &c.auth_a()],
        b"body",
    ) => status(400).logs("POST /hooks/a 400").logs("HTTP/1.1 needs exactly one Host field");
    two_host_fields: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "Host: other", "Content-Length: 4", &c.auth_a()],
        b"body",
    ) => status(400).logs("Host");

    // Content-Length.
    two_content_lengths: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "Content-Length: 4", "Content-Length: 5", &c.auth_a()],
        b"body!",
    ) => status(400).logs("Content-Length");
    two_equal_content_lengths: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "Content-Length: 4", "Content-Length: 4", &c.auth_a()],
        b"body",
    ) => status(400).logs("POST /hooks/a 400").logs("more than one Content-Length");
    content_length_abc: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "Content-Length: abc", &c.auth_a()],
        b"body",
    ) => status(400).logs("invalid Content-Length");
    content_length_minus_one: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "Content-Length: -1", &c.auth_a()],
        b"body",
    ) => status(400).logs("invalid Content-Length");
    content_length_list: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "Content-Length: 1,1", &c.auth_a()],
        b"b",
    ) => status(400).logs("invalid Content-Length");
    content_length_plus_five: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "Content-Length: +5", &c.auth_a()],
        b"body!",
    ) => status(400).logs("invalid Content-Length");
    content_length_too_many_digits: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "Content-Length: 000000000000000000004", &c.auth_a()],
        b"body",
    ) => status(400).logs("invalid Content-Length");
    content_length_beyond_u64: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "Content-Length: 18446744073709551616", &c.auth_a()],
        b"body",
    ) => status(400).logs("invalid Content-Length");
    content_length_empty: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "Content-Length:", &c.auth_a()],
        b"",
    ) => status(400);

    // Transfer-Encoding.
    content_length_and_transfer_encoding: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "Content-Length: 4", "Transfer-Encoding: chunked", &c.auth_a()],
        b"4\r\nbody\r\n0\r\n\r\n",
    ) => status(400).logs("both Content-Length and Transfer-Encoding");
    transfer_encoding_gzip: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "Transfer-Encoding: gzip", &c.auth_a()],
        b"body",
    ) => status(501).logs("transfer coding");
    chunked_twice: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "Transfer-Encoding: chunked, chunked", &c.auth_a()],
        b"4\r\nbody\r\n0\r\n\r\n",
    ) => status(400).logs("chunked");
    chunked_in_http10: |c| raw(
        &["POST /hooks/a HTTP/1.0", "Transfer-Encoding: chunked", &c.auth_a()],
        b"4\r\nbody\r\n0\r\n\r\n",
    ) => status(400);
    invalid_chunk_size: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "Transfer-Encoding: chunked", &c.auth_a()],
        b"zz\r\nbody\r\n0\r\n\r\n",
    ) => status(400).logs("invalid chunk size");
    chunk_data_not_followed_by_crlf: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "Transfer-Encoding: chunked", &c.auth_a()],
        b"4\r\nbodyXX0\r\n\r\n",
    ) => status(400).logs("chunk data not followed by CRLF");
    chunked_body_over_max_body: |c| {
        let mut body = Vec::new();
        for _ in 0..3 {
            body.extend_from_slice(b"200\r\n");
            body.extend_from_slice(&[b'x'; 0x200]);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        raw(
            &["POST /hooks/a HTTP/1.1", "Host: test", "Transfer-Encoding: chunked", &c.auth_a()],
            &body,
        )
    } => status(413).logs("body larger than 1024 bytes");
    one_chunk_over_max_body: |c| {
        let mut body = b"401\r\n".to_vec();
        body.extend_from_slice(&[b'x'; 0x401]);
        body.extend_from_slice(b"\r\n0\r\n\r\n");
        raw(
            &["POST /hooks/a HTTP/1.1", "Host: test", "Transfer-Encoding: chunked", &c.auth_a()],
            &body,
        )
    } => status(413);
    content_length_over_max_body: |c| post(
        "/hooks/a", &[&c.auth_a()], &[b'x'; MAX_BODY + 1],
    ) => status(413).logs("POST /hooks/a 413 hook a: body larger than 1024 bytes");

    // Limits on the head.
    head_over_8_kib: |c| {
        let big = format!("X-Big: {}", "a".repeat(9 * 1024));
        raw(&["POST /hooks/a HTTP/1.1", "Host: test", &big, "Content-Length: 4", &c.auth_a()], b"body")
    } => status(431).logs("request head too large");
    sixty_five_headers: |c| {
        let auth = c.auth_a();
        let pads: Vec<String> = (0..62).map(|i| format!("X-Pad-{i}: y")).collect();
        let mut lines = vec!["POST /hooks/a HTTP/1.1", "Host: test", "Content-Length: 4", auth.as_str()];
        lines.extend(pads.iter().map(String::as_str));
        assert_eq!(lines.len() - 1, 65);
        raw(&lines, b"body")
    } => status(431).logs("request head too large");
    target_over_4_kib: |c| {
        let line = format!("POST /hooks/{} HTTP/1.1", "a".repeat(4097 - "/hooks/".len()));
        raw(&[&line, "Host: test", "Content-Length: 4", &c.auth_a()], b"body")
    } => status(414).logs("request target too long");
    target_over_4_kib_in_the_query: |c| {
        let line = format!("POST /hooks/a?{} HTTP/1.1", "q".repeat(4097 - "/hooks/a?".len()));
        raw(&[&line, "Host: test", "Content-Length: 4", &c.auth_a()], b"body")
    } => status(414);

    // Expectations and lengths.
    expect_something: |c| raw(
        &["POST /hooks/a HTTP/1.1", "Host: test", "Expect: something", "Content-Length: 4", &c.auth_a()],
        b"body",
    ) => status(417).logs("Expect");
    http10_post_without_content_length: |c| raw(
        &["POST /hooks/a HTTP/1.0", &c.auth_a()],
        b"body",
    ) => status(411).logs("body without Content-Length");

    // Routing: exact, on the raw path. The prefix token covers every path
    // below /hooks/, so only the router can refuse these.
    unknown_path: |c| post(
        "/hooks/nope", &[&format!("Authorization: Bearer {}", c.token_prefix)], b"body",
    ) => status(404).logs("POST /hooks/nope 404: no such hook");
    root_path: |c| post("/", &[&c.auth_a()], b"body") => status(404);
    hooks_directory: |c| post(
        "/hooks/", &[&format!("Authorization: Bearer {}", c.token_prefix)], b"body",
    ) => status(404);
    trailing_slash: |c| post(
        "/hooks/a/", &[&format!("Authorization: Bearer {}", c.token_prefix)], b"body",
    ) => status(404);
    dot_dot_segment: |c| post(
        "/hooks/../a", &[&format!("Authorization: Bearer {}", c.token_prefix)], b"body",
    ) => status(404);
    dot_segment: |c| post(
        "/hooks/./a", &[&format!("Authorization: Bearer {}", c.token_prefix)], b"body",
    ) => status(404);
    double_slash: |c| post(
        "/hooks//a", &[&format!("Authorization: Bearer {}", c.token_prefix)], b"body",
    ) => status(404);
    percent_encoded_name: |c| post(
        "/hooks/%61", &[&format!("Authorization: Bearer {}", c.token_prefix)], b"body",
    ) => status(404);
    hook_file_name: |c| post(
        "/hooks/a.toml", &[&format!("Authorization: Bearer {}", c.token_prefix)], b"body",
    ) => status(404);
    upper_case_name: |c| post(
        "/hooks/A", &[&format!("Authorization: Bearer {}", c.token_prefix)], b"body",
    ) => status(404);
    no_slash_after_hooks: |c| post(
        "/hooksa", &[&format!("Authorization: Bearer {}", c.token_prefix)], b"body",
    ) => status(404);

    // Methods.
    wrong_method_get: |c| raw(&["GET /hooks/a HTTP/1.1", "Host: test", &c.auth_a()], b"")
        => status(405).header("Allow", "POST").logs("GET /hooks/a 405 hook a: method not allowed");
    wrong_method_put: |c| raw(
        &["PUT /hooks/a HTTP/1.1", "Host: test", "Content-Length: 4", &c.auth_a()],
        b"body",
    ) => status(405).header("Allow", "POST");
    lower_case_method: |c| raw(
        &["post /hooks/a HTTP/1.1", "Host: test", "Content-Length: 4", &c.auth_a()],
        b"body",
    ) => status(405).header("Allow", "POST");

    // Token hook.
    token_missing: |_| post("/hooks/a", &[], b"body")
        => status(401)
            .header("WWW-Authenticate", "Basic realm=\"sockhook\"")
            .logs("POST /hooks/a 401 hook a: unauthorized: no token");
    token_wrong: |c| {
        let mut wrong = c.token_a.clone();
        let last = if wrong.ends_with('0') { "1" } else { "0" };
        wrong.replace_range(63.., last);
        post("/hooks/a", &[&format!("Authorization: Bearer {}", c.secret(&wrong))], b"body")
    } => status(401).logs("POST /hooks/a 401 hook a: unauthorized: token does not match the path");
    token_for_another_path: |c| post(
        "/hooks/a", &[&format!("Authorization: Bearer {}", c.token_ab)], b"body",
    ) => status(401);
    token_of_a_used_on_ab: |c| post(
        "/hooks/ab", &[&c.auth_a()], b"body",
    ) => status(401);
    dir_token_of_a_used_on_ab: |c| post(
        "/hooks/ab", &[&format!("Authorization: Bearer {}", c.token_a_dir)], b"body",
    ) => status(401);
    dir_token_of_a_used_on_a: |c| post(
        "/hooks/a", &[&format!("Authorization: Bearer {}", c.token_a_dir)], b"body",
    ) => status(401);
    token_too_short: |c| post(
        "/hooks/a", &[&format!("Authorization: Bearer {}", &c.token_a[..62])], b"body",
    ) => status(401);
    token_too_long: |c| post(
        "/hooks/a", &[&format!("Authorization: Bearer {}00", c.token_a)], b"body",
    ) => status(401);
    token_in_the_query: |c| post(
        &format!("/hooks/a?token={}", c.token_a), &[], b"body",
    ) => status(401).logs("POST /hooks/a?... 401");
    basic_not_base64: |_| post(
        "/hooks/a", &["Authorization: Basic !!not*base64!!"], b"body",
    ) => status(401).logs("base64");
    basic_with_the_token_as_password: |c| {
        let value = c.secret(&base64(format!("user:{}", c.token_a).as_bytes()));
        post("/hooks/a", &[&format!("Authorization: Basic {value}")], b"body")
    } => status(401);
    unknown_auth_scheme: |c| post(
        "/hooks/a", &[&format!("Authorization: Token {}", c.token_a)], b"body",
    ) => status(401).logs("neither Basic nor Bearer");
    two_authorization_fields: |c| post(
        "/hooks/a", &[&c.auth_a(), &c.auth_a()], b"body",
    ) => status(401);

    // GitHub hook.
    github_signature_over_another_body: |c| {
        let signature = c.github(GH_SECRET, b"another body");
        post("/hooks/gh", &[&signature, "X-GitHub-Event: push"], b"the body")
    } => status(401).logs("POST /hooks/gh 401 hook gh: unauthorized: signature does not match");
    github_wrong_secret: |c| {
        let signature = c.github("not the secret", b"the body");
        post("/hooks/gh", &[&signature, "X-GitHub-Event: push"], b"the body")
    } => status(401).logs("signature does not match");
    github_sha1_only: |c| {
        let signature = c.github(GH_SECRET, b"the body").replace("-256: sha256=", ": sha1=");
        post("/hooks/gh", &[&signature[..signature.len() - 24], "X-GitHub-Event: push"], b"the body")
    } => status(401).logs("X-Hub-Signature-256");
    github_signature_missing: |_| post(
        "/hooks/gh", &["X-GitHub-Event: push"], b"the body",
    ) => status(401).logs("no X-Hub-Signature-256 header");
    github_63_hex_digits: |c| {
        let signature = c.github(GH_SECRET, b"the body");
        post("/hooks/gh", &[&signature[..signature.len() - 1], "X-GitHub-Event: push"], b"the body")
    } => status(401).logs("64 hex digits");
    github_two_signatures: |c| {
        let signature = c.github(GH_SECRET, b"the body");
        post("/hooks/gh", &[&signature, &signature, "X-GitHub-Event: push"], b"the body")
    } => status(401).logs("more than one X-Hub-Signature-256");
    github_signature_without_prefix: |c| {
        let signature = c.github(GH_SECRET, b"the body").replace("sha256=", "");
        post("/hooks/gh", &[&signature, "X-GitHub-Event: push"], b"the body")
    } => status(401);

    // A broken hook file answers 500; the good hook next to it still works.
    broken_hook_file: |c| post("/hooks/broken", &[&format!("Authorization: Bearer {}", c.token_prefix)], b"body")
        => status(500).logs("POST /hooks/broken 500 hook broken: hook misconfigured");
}

// Positive controls: what the refusals above are measured against.

#[test]
fn prefix_token_is_accepted() {
    let case = Case::start("prefix-token", ARGS);
    let auth = format!("Authorization: Bearer {}", case.token_prefix);
    let reply = case.server.post("/hooks/ab", &[&auth], b"prefix");
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", case.server.log());
    assert!(reply.complete(), "{reply:?}");
    case.server.wait_log("hook ab: run", 2);
    case.finish([1, 1, 0]);
}

#[test]
fn basic_token_as_user_name_is_accepted() {
    let case = Case::start("basic-token", ARGS);
    let value = case.secret(&base64(format!("{}:", case.token_ab).as_bytes()));
    let reply = case.server.post(
        "/hooks/ab",
        &[&format!("Authorization: Basic {value}")],
        b"",
    );
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", case.server.log());
    case.finish([1, 1, 0]);
}

#[test]
fn github_signature_is_accepted() {
    let case = Case::start("github-ok", ARGS);
    let signature = case.github(GH_SECRET, b"the body");
    let reply = case.server.post(
        "/hooks/gh",
        &[&signature, "X-GitHub-Event: push"],
        b"the body",
    );
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", case.server.log());
    case.server.wait_log("hook gh: run", 2);
    assert_eq!(case.f.read("gh.stdin"), b"the body");
    case.finish([1, 0, 1]);
}

#[test]
fn limits_are_inclusive() {
    let case = Case::start("limits-ok", ARGS);
    // 64 header fields, a body of exactly max_body, a head just under 8 KiB.
    let auth = case.auth_a();
    let pads: Vec<String> = (0..60).map(|i| format!("X-Pad-{i}: y")).collect();
    let big = format!("X-Big: {}", "b".repeat(6 * 1024));
    let mut lines = vec![
        "POST /hooks/a HTTP/1.1",
        "Host: test",
        "Content-Length: 1024",
        auth.as_str(),
        big.as_str(),
    ];
    lines.extend(pads.iter().map(String::as_str));
    assert_eq!(lines.len() - 1, 64);
    let body = [b'x'; MAX_BODY];
    let request = raw(&lines, &body);
    assert!(request.len() - MAX_BODY < 8 * 1024);
    let reply = case.server.request(&request);
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", case.server.log());
    case.server.wait_log(" exited 0 after ", 1);
    assert_eq!(case.f.read("a.stdin"), body);
    // A target of exactly 4 KiB is not too long: it is just no hook.
    let target = format!("/hooks/{}", "a".repeat(4096 - "/hooks/".len()));
    let reply = case.server.post(&target, &[&auth], b"");
    assert_eq!(reply.status(), 404, "{reply:?}\n{}", case.server.log());
    case.finish([2, 0, 0]);
}

#[test]
fn chunked_body_within_max_body_is_accepted() {
    let case = Case::start("chunked-ok", ARGS);
    let mut body = Vec::new();
    for _ in 0..2 {
        body.extend_from_slice(b"200;ext=1\r\n");
        body.extend_from_slice(&[b'c'; 0x200]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    let request = raw(
        &[
            "POST /hooks/a HTTP/1.1",
            "Host: test",
            "Transfer-Encoding: chunked",
            &case.auth_a(),
        ],
        &body,
    );
    let reply = case.server.request(&request);
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", case.server.log());
    case.server.wait_log(" exited 0 after ", 1);
    assert_eq!(case.f.read("a.stdin"), [b'c'; 2 * 0x200]);
    case.finish([2, 0, 0]);
}

// Cases that need more than one write or a clock.

#[test]
fn content_length_over_max_body_is_refused_before_the_body() {
    let case = Case::start("early-413", ARGS);
    let head = format!(
        "POST /hooks/a HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n{}\r\n\r\n",
        MAX_BODY + 1,
        case.auth_a()
    );
    let mut stream = TcpStream::connect(case.server.addr).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    // Only the head is sent: the answer must come without the body.
    let reply = read_all(&mut stream);
    case.refused(&reply, &status(413).logs("body larger than 1024 bytes"));
    drop(stream);
    case.finish([1, 0, 0]);
}

#[test]
fn expect_continue_with_a_wrong_token_gets_401_without_continue() {
    let case = Case::start("expect-401", ARGS);
    let head = format!(
        "POST /hooks/a HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\nExpect: 100-continue\r\nAuthorization: Bearer {}\r\n\r\n",
        case.token_ab
    );
    let mut stream = TcpStream::connect(case.server.addr).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let reply = read_all(&mut stream);
    assert!(
        reply.bytes.starts_with(b"HTTP/1.1 401 "),
        "{}",
        String::from_utf8_lossy(&reply.bytes)
    );
    case.refused(&reply, &status(401));
    drop(stream);
    case.finish([1, 0, 0]);
}

/// Sends the head and part of the body, then closes; returns what came back.
fn close_mid_body(case: &Case, half: bool) -> Reply {
    let request = post("/hooks/a", &[&case.auth_a()], &[b'x'; 100]);
    let mut stream = TcpStream::connect(case.server.addr).unwrap();
    stream.write_all(&request[..request.len() - 60]).unwrap();
    if half {
        done_sending(&stream);
        read_all(&mut stream)
    } else {
        drop(stream);
        Reply {
            bytes: Vec::new(),
            error: None,
        }
    }
}

#[test]
fn client_half_closes_mid_body() {
    let case = Case::start("mid-body-half", ARGS);
    let reply = close_mid_body(&case, true);
    assert!(
        reply.bytes.is_empty() && reply.error.is_none(),
        "no response, a clean close: {reply:?}"
    );
    case.server
        .wait_log("POST /hooks/a: no response: peer closed", 1);
    case.finish([1, 0, 0]);
}

#[test]
fn client_closes_mid_body() {
    let case = Case::start("mid-body-close", ARGS);
    close_mid_body(&case, false);
    case.server
        .wait_log("POST /hooks/a: no response: peer closed", 1);
    case.finish([1, 0, 0]);
}

#[test]
fn client_sends_nothing_then_closes() {
    let case = Case::start("silent", ARGS);
    let mut stream = TcpStream::connect(case.server.addr).unwrap();
    done_sending(&stream);
    let reply = read_all(&mut stream);
    assert!(
        reply.bytes.is_empty() && reply.error.is_none(),
        "no response, a clean close: {reply:?}"
    );
    drop(stream);
    case.server.wait_log("info: 127.0.0.1", 1);
    case.server.wait_log("closed without sending a request", 1);
    case.finish([1, 0, 0]);
}

#[test]
fn slow_client_gets_408_at_the_deadline() {
    let case = Case::start("slow", &["--idle-timeout", "600", "--request-timeout", "1"]);
    let request = post("/hooks/a", &[&case.auth_a()], b"a body that takes a while");
    let mut stream = TcpStream::connect(case.server.addr).unwrap();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            for byte in request {
                if stop.load(Ordering::Relaxed) || stream.write_all(&[byte]).is_err() {
                    return;
                }
                // Pacing the client, not synchronising: one byte every 200 ms.
                thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let mut first = [0u8; 1];
    let n = stream.read(&mut first).unwrap_or(0);
    let elapsed = started.elapsed();
    let mut rest = read_all(&mut stream);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    drop(stream);
    rest.bytes.splice(0..0, first[..n].iter().copied());
    // The whole request takes over 30 s at this pace: an answer within 10 s can
    // only be the deadline's (and not before 1 s), however loaded the machine.
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(10),
        "408 after {elapsed:?}, not about 1 s"
    );
    case.refused(
        &rest,
        &status(408).logs("request not complete within the deadline"),
    );
    case.finish([1, 0, 0]);
}

/// The server's preface (an empty SETTINGS frame) and a GOAWAY with last
/// stream 0 and HTTP_1_1_REQUIRED (RFC 9113 §3.4, §6.8).
const HTTP2_GOAWAY: &[u8] =
    b"\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x08\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x0d";

/// An HTTP/2 client with prior knowledge on the plain port gets an HTTP/2
/// GOAWAY that says HTTP/1.1 is required, not HTTP/1.1 text it cannot read.
#[test]
fn http2_prior_knowledge_gets_goaway_http_1_1_required() {
    let case = Case::start("http2", ARGS);
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
    let reply = case.server.request(&preface);
    assert_eq!(
        reply.bytes,
        HTTP2_GOAWAY,
        "{reply:?}\n{}",
        case.server.log()
    );
    assert!(reply.error.is_none(), "{reply:?}");
    case.server.wait_log(
        "PRI * 505: HTTP/2 without TLS: answered GOAWAY, HTTP_1_1_REQUIRED",
        1,
    );
    // curl tells why (13 is HTTP_1_1_REQUIRED), where it used to report
    // "Empty reply from server" to an HTTP/1.1 400 it could not read.
    let out = std::process::Command::new("curl")
        .args(["-v", "--http2-prior-knowledge", "--max-time", "10"])
        .arg(format!("http://{}/hooks/a", case.server.addr))
        .output()
        .expect("curl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr.contains("GOAWAY, error=13"), "curl said: {stderr}");
    case.finish([1, 0, 0]);
}
