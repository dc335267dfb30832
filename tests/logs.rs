//! The log: journal priorities when stderr is the journal, peer bytes made
//! harmless, and what must never appear in it.

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;

use support::harness::*;

/// Runs sockhook on fd 3 with stderr on a pipe; `journal` sets JOURNAL_STREAM
/// to that pipe's DEV:INO (as systemd does) or to another stream's. A guard
/// connection (see `Served` in the harness) keeps it from its idle exit until
/// `requests` is done.
fn serve_logging(
    f: &Fixture,
    journal: Option<bool>,
    requests: impl FnOnce(std::net::SocketAddr),
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Waits in the backlog before sockhook starts: the first connection it accepts.
    let guard = std::net::TcpStream::connect(addr).unwrap();
    let (mut reader, writer) = std::io::pipe().unwrap();
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", writer.as_raw_fd())).unwrap();
    let mut command = f.activation(&[
        "--idle-timeout",
        "0.3",
        "--request-timeout",
        GUARD_REQUEST_TIMEOUT,
    ]);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(writer);
    match journal {
        Some(true) => command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino())),
        Some(false) => command.env(
            "JOURNAL_STREAM",
            format!("{}:{}", meta.dev(), meta.ino() + 1),
        ),
        None => command.env_remove("JOURNAL_STREAM"),
    };
    let mut child = spawn_with_fd3(command, listener.as_raw_fd());
    // The pipe's write end went with `command`: EOF comes when sockhook exits.
    let collector = std::thread::spawn(move || {
        let mut log = String::new();
        reader.read_to_string(&mut log).map(|_| log)
    });
    requests(addr);
    drop(guard);
    let status = wait_within(&mut child, PATIENCE);
    let log = collector.join().unwrap().unwrap();
    assert!(status.success(), "{status:?}\n{log}");
    // Start-up, the two requests, the exit: a log this short means it went elsewhere.
    assert!(log.lines().count() >= 4, "{log}");
    log
}

fn requests(f: &Fixture) -> impl FnOnce(std::net::SocketAddr) + '_ {
    move |addr| {
        let token = f.token("/hooks/a");
        let good = post(
            "/hooks/a",
            &[&format!("Authorization: Bearer {token}")],
            b"",
        );
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(exchange(&mut stream, &good).status(), 204);
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(
            exchange(
                &mut stream,
                &post("/hooks/a", &["Authorization: Bearer 00"], b"")
            )
            .status(),
            401
        );
    }
}

fn fixture(name: &str) -> Fixture {
    let f = Fixture::new(name);
    f.hook("a", "command = [\"/bin/true\"]\nauth = \"token\"\n");
    f
}

#[test]
fn journal_lines_carry_syslog_priorities() {
    let f = fixture("journal");
    let log = serve_logging(&f, Some(true), requests(&f));
    assert!(
        log.lines()
            .any(|l| l.starts_with("<6>sockhook: info: ") && l.contains(" 204 hook a: accepted")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("<4>sockhook: warning: ") && l.contains(" 401 hook a: ")),
        "{log}"
    );
    assert!(log.lines().all(|l| l.starts_with('<')), "{log}");
}

#[test]
fn no_priorities_when_stderr_is_not_the_journal_stream() {
    let f = fixture("not-journal");
    for journal in [None, Some(false)] {
        let log = serve_logging(&f, journal, requests(&f));
        assert!(
            log.lines().all(|l| l.starts_with("sockhook: ")),
            "{journal:?}:\n{log}"
        );
    }
}

#[test]
fn peer_bytes_are_escaped_and_truncated() {
    let f = fixture("escaped");
    let server = f.serve_guarded(&["--idle-timeout", "0.3"]);
    let long = "b".repeat(300);
    let reply = server.request(
        format!(
            "POST /hooks/\u{e9}\u{1b}[31m{long} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    );
    let (status, log) = server.wait(PATIENCE);
    assert_eq!(status.code(), Some(0), "{log}");
    // httparse refuses the ESC byte; the refused request line is still logged.
    assert_eq!(reply.status(), 400, "{reply:?}");
    assert!(
        !log.contains('\u{1b}') && !log.contains('\u{e9}'),
        "raw bytes in the log:\n{log}"
    );
    assert!(log.contains("/hooks/\\xc3\\xa9\\x1b[31m"), "{log}");
    assert!(log.contains("bbb...") && !log.contains(&long), "{log}");
}

#[test]
fn the_server_key_and_tokens_never_reach_the_log() {
    let f = fixture("no-secret");
    let key = std::fs::read_to_string(&f.key).unwrap();
    let token = f.token("/hooks/a");
    let server = f.serve_guarded(&["--idle-timeout", "0.3"]);
    for auth in [
        format!("Bearer {token}"),
        format!("Bearer {}", &token[..60]),
        format!("Bearer {}", key.trim()),
    ] {
        let reply = server.post("/hooks/a", &[&format!("Authorization: {auth}")], b"");
        assert!(reply.complete(), "{reply:?}\n{}", server.log());
    }
    let (status, log) = server.wait(PATIENCE);
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(log.matches("POST /hooks/a 204 ").count(), 1, "{log}");
    assert_eq!(log.matches("POST /hooks/a 401 ").count(), 2, "{log}");
    for secret in [key.trim(), &token, &token[..60]] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}
