//! The RST race (hyper#3078; RFC 1122 §4.2.2.13, RFC 9112 §9.6; the fix is in
//! `src/respond.rs`): a server that closes a connection with unread request
//! bytes makes the kernel send RST, which can destroy the response already written.
//! sockhook answers early (413 from the length, 404 from the path) while the
//! client is still sending a 1 MiB body, so only its half-close and drain keep
//! the response intact. The clients here write the whole request before they
//! read anything, as phone apps do, and the race is run many times, because
//! whether one run catches it depends on timing.

mod support;

use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use support::harness::*;

/// Repetitions against one activation, per status.
const WARM_REPETITIONS: usize = 200;
/// Repetitions with a fresh process per request, per status.
const COLD_REPETITIONS: usize = 50;
/// The hook's `max_body`; the bodies sent are far larger.
const MAX_BODY: usize = 1024;
/// What each client sends as its body.
const BODY_BYTES: usize = 1024 * 1024;

/// A fixture with hook `small` (token, `max_body = 1024`); returns its token.
fn fixture(name: &str) -> (Fixture, String) {
    let f = Fixture::new(name);
    let script = f.recorder("small");
    f.hook(
        "small",
        &format!("command = [{script:?}]\nauth = \"token\"\nmax_body = {MAX_BODY}\n"),
    );
    let token = f.token("/hooks/small");
    (f, token)
}

/// The two requests raced, with the status each must get.
fn requests(token: &str) -> [(u16, Vec<u8>); 2] {
    let body = vec![b'x'; BODY_BYTES];
    let auth = format!("Authorization: Bearer {token}");
    [
        (413, post("/hooks/small", &[&auth], &body)),
        (404, post("/hooks/nope", &[&auth], &body)),
    ]
}

/// Outcomes of one status's repetitions.
#[derive(Default)]
struct Tally {
    complete: usize,
    failures: Vec<String>,
}

impl Tally {
    fn record(&mut self, expected: u16, reply: &Reply) {
        if reply.complete() && reply.status() == expected {
            self.complete += 1;
        } else {
            self.failures.push(format!(
                "status {} error {:?} after {} bytes: {:?}",
                reply.status(),
                reply.error,
                reply.bytes.len(),
                String::from_utf8_lossy(&reply.bytes[..reply.bytes.len().min(200)])
            ));
        }
    }

    fn total(&self) -> usize {
        self.complete + self.failures.len()
    }
}

/// Prints the figures and fails if any response was lost.
fn report(what: &str, tallies: &[(u16, Tally)], log: &str) {
    let figures: Vec<String> = tallies
        .iter()
        .map(|(status, t)| format!("{status}: {}/{} complete", t.complete, t.total()))
        .collect();
    println!("reset race, {what}: {}", figures.join(", "));
    for (status, tally) in tallies {
        assert!(
            tally.failures.is_empty(),
            "{what}: {} of {} responses {status} lost or damaged; first ones:\n{}\nserver log:\n{log}",
            tally.failures.len(),
            tally.total(),
            tally.failures[..tally.failures.len().min(5)].join("\n")
        );
    }
}

#[test]
fn early_responses_arrive_complete_in_one_activation() {
    let (f, token) = fixture("race-warm");
    let server = f.serve(&["--idle-timeout", "600"]);
    let started = Instant::now();
    // The two kinds race side by side, each client writing its whole request first.
    let tallies: Vec<(u16, Tally)> = thread::scope(|scope| {
        let workers: Vec<_> = requests(&token)
            .into_iter()
            .map(|(status, request)| {
                let server = &server;
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    for _ in 0..WARM_REPETITIONS {
                        tally.record(status, &server.request(&request));
                    }
                    (status, tally)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let elapsed = started.elapsed();
    server.wait_log(" 413 ", WARM_REPETITIONS);
    server.wait_log(" 404:", WARM_REPETITIONS);
    let log = server.log();
    report(&format!("one activation, {elapsed:.1?}"), &tallies, &log);
    assert_eq!(f.runs("small"), 0, "{log}");
    assert!(!log.contains("started"), "{log}");
}

/// [`COLD_REPETITIONS`] cold activations per status with `--idle-timeout IDLE`.
fn cold_race(name: &str, idle: &str) {
    let (f, token) = fixture(name);
    let started = Instant::now();
    let mut tallies: Vec<(u16, Tally)> = Vec::new();
    let mut first_failure_log = String::new();
    for (status, request) in requests(&token) {
        let mut tally = Tally::default();
        for _ in 0..COLD_REPETITIONS {
            let (reply, log) = cold(&f, &request, idle);
            tally.record(status, &reply);
            if !tally.failures.is_empty() && first_failure_log.is_empty() {
                first_failure_log = log;
            }
        }
        tallies.push((status, tally));
    }
    let elapsed = started.elapsed();
    report(
        &format!("fresh process per request, --idle-timeout {idle}, {elapsed:.1?}"),
        &tallies,
        &first_failure_log,
    );
    assert_eq!(f.runs("small"), 0);
}

/// What cold systemd activation looks like when every request gets its own
/// process: the connection is pending before the process starts.
#[test]
fn early_responses_arrive_complete_from_a_fresh_process_each() {
    cold_race("race-cold", "0");
}

/// The same with an idle period just long enough to reach the first poll.
#[test]
fn early_responses_arrive_complete_from_a_fresh_process_with_short_idle() {
    cold_race("race-cold-short", "0.05");
}

/// One cold activation, as systemd does it with `Accept=no`: the connection
/// is made and the request written while no process runs; then sockhook
/// starts with the listening socket on fd 3 and `--idle-timeout IDLE`,
/// serves what is pending and exits. Returns the reply and the server's log.
fn cold(f: &Fixture, request: &[u8], idle: &str) -> (Reply, String) {
    // The test holds the listening socket as systemd does, across the start.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let handle = stream.try_clone().unwrap();
    let client = {
        let request = request.to_vec();
        let mut stream = stream;
        thread::spawn(move || {
            let reply = exchange(&mut stream, &request);
            // Closes now: `handle` keeps the socket open otherwise.
            let _ = stream.shutdown(Shutdown::Both);
            reply
        })
    };
    let mut command = f.activation(&["--idle-timeout", idle]);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = spawn_with_fd3(command, listener.as_raw_fd());
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    let log = format!(
        "exit {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    // The process is gone: a client still waiting was never answered.
    let _ = handle.shutdown(Shutdown::Both);
    let mut reply = client.join().unwrap();
    if out.status.code() != Some(0) && reply.error.is_none() {
        reply.error = Some(std::io::ErrorKind::Other);
    }
    (reply, log)
}

#[test]
fn extra_bytes_after_the_body_do_not_spoil_the_response() {
    const REPETITIONS: usize = 20;
    let f = Fixture::new("race-extra");
    let script = f.recorder("a");
    f.hook("a", &format!("command = [{script:?}]\nauth = \"token\"\n"));
    let token = f.token("/hooks/a");
    let auth = format!("Authorization: Bearer {token}");
    let server = f.serve(&["--idle-timeout", "600"]);
    for i in 1..=REPETITIONS {
        let body = format!("exactly this body, number {i}");
        let mut request = post("/hooks/a", &[&auth], body.as_bytes());
        // A pipelined second request, then 64 KiB of junk: none of it is a request.
        request.extend_from_slice(&post("/hooks/a", &[&auth], b"pipelined"));
        request.resize(request.len() + 64 * 1024, b'j');
        let reply = server.request(&request);
        assert_eq!(
            reply.status(),
            204,
            "{:?}\n{}",
            String::from_utf8_lossy(&reply.bytes),
            server.log()
        );
        assert!(
            reply.complete(),
            "repetition {i}: {:?} {:?}\n{}",
            reply.error,
            String::from_utf8_lossy(&reply.bytes),
            server.log()
        );
        assert_eq!(reply.header("content-length"), None);
        server.wait_log(" exited 0 after ", i);
        assert_eq!(f.runs("a"), i, "{}", server.log());
        assert_eq!(f.read("a.stdin"), body.as_bytes(), "{}", server.log());
    }
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(f.runs("a"), REPETITIONS, "{log}");
    assert_eq!(log.matches(" started").count(), REPETITIONS, "{log}");
}
