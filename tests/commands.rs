//! Commands (sockhook(8), "THE COMMAND'S ENVIRONMENT"), through the real binary over real TCP:
//! one run per accepted request, the body byte for byte on stdin, exactly the
//! allowlisted environment, answer before acting, timeouts that kill the whole
//! process group, single flight with coalescing, failures in the exit code,
//! and `Expect: 100-continue`.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use support::harness::*;

/// Idle time before the server exits, in tests that look at the exit code.
const IDLE: &str = "1";

/// A script that saves its stdin in `NAME.stdin` (exits non-zero if reading fails).
fn stdin_saver(f: &Fixture, name: &str) -> std::path::PathBuf {
    f.script(
        &format!("{name}.sh"),
        &format!("exec /bin/cat > {}/{name}.stdin", f.dir.display()),
    )
}

/// Bytes that are not text: every byte value, NUL and 0xff among them, in a
/// pseudo-random order that no simple transformation preserves.
fn binary(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i < 256 { i as u8 } else { (x >> 24) as u8 }
        })
        .collect()
}

/// Whether `pid` is a live process (a zombie is dead: only its parent's reaping is left).
fn alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Live processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After "(comm)": state ppid pgrp ...
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        if fields.get(2) == Some(&pgid.to_string().as_str()) && alive(pid) {
            members.push(pid);
        }
    }
    members
}

/// Waits (bounded) until none of `pids` and no member of group `pgid` is alive;
/// `log` gives the server's log for the message.
fn assert_all_dead(pids: &[i32], pgid: i32, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let living: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        let members = group_members(pgid);
        if living.is_empty() && members.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for pid in living.iter().chain(&members) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            panic!(
                "still alive: {living:?}, group {pgid} members {members:?}\n{}",
                log()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The pid in the first "hook NAME: run PID started" line.
fn run_pid(log: &str, hook: &str) -> i32 {
    let marker = format!("hook {hook}: run ");
    log.lines()
        .find_map(|line| {
            let rest = &line[line.find(&marker)? + marker.len()..];
            rest.strip_suffix(" started")?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no run of {hook} started:\n{log}"))
}

/// A pid a script wrote to `file` in the fixture.
fn pid_file(f: &Fixture, file: &str, log: &str) -> i32 {
    String::from_utf8_lossy(&f.read(file))
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{file} holds no pid:\n{log}"))
}

/// What the command printed, from the log lines `hook NAME: …` between its
/// start and end lines.
fn output_lines(log: &str, hook: &str) -> Vec<String> {
    let pid = run_pid(log, hook);
    let prefix = format!("sockhook: info: hook {hook}: ");
    let started = format!("run {pid} started");
    let ended = format!("run {pid} ");
    let mut lines = Vec::new();
    let mut inside = false;
    for line in log.lines() {
        // Tolerate journal priority prefixes, should JOURNAL_STREAM be set around the tests.
        let line = match line.strip_prefix('<') {
            Some(rest) => rest.split_once('>').map_or(line, |(_, l)| l),
            None => line,
        };
        let Some(text) = line.strip_prefix(&prefix) else {
            continue;
        };
        if text == started {
            inside = true;
        } else if inside && text.starts_with(&ended) {
            return lines;
        } else if inside {
            lines.push(text.to_owned());
        }
    }
    panic!("run {pid} of {hook} did not end in the log:\n{log}");
}

#[test]
fn one_run_per_accepted_request() {
    let f = Fixture::new("one-run-each");
    let d = f.dir.display();
    let script = f.script("each.sh", &format!("{{ /bin/cat; echo; }} >> {d}/bodies"));
    let auth = f.token_hook("each", &script, "");
    let server = f.serve_guarded(&["--idle-timeout", IDLE]);
    for i in 1..=5 {
        let reply = server.post("/hooks/each", &[&auth], format!("body {i}").as_bytes());
        assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
        server.wait_log("exited 0", i);
    }
    let (status, log) = server.wait(PATIENCE);
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(
        String::from_utf8_lossy(&f.read("bodies")),
        "body 1\nbody 2\nbody 3\nbody 4\nbody 5\n",
        "{log}"
    );
    assert_eq!(log.matches(" started").count(), 5, "{log}");
}

#[test]
fn stdin_is_a_binary_body_byte_for_byte() {
    let f = Fixture::new("stdin-binary");
    let auth = f.token_hook("bin", &stdin_saver(&f, "bin"), "");
    let server = f.serve(&[]);
    let body = binary(4096);
    assert!(body.contains(&0) && body.contains(&0xff));
    let reply = server.post(
        "/hooks/bin",
        &[&auth, "Content-Type: application/octet-stream"],
        &body,
    );
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
    server.wait_log("exited 0", 1);
    assert!(
        f.read("bin.stdin") == body,
        "stdin differs:\n{}",
        server.log()
    );
}

#[test]
fn stdin_is_a_chunked_body_decoded_with_extensions_and_trailer() {
    let f = Fixture::new("stdin-chunked");
    let auth = f.token_hook("chunked", &stdin_saver(&f, "chunked"), "");
    let server = f.serve(&[]);
    let pieces: [&[u8]; 4] = [b"ab\0\xffc", b"0123456789abcdef\r\n", b"\xff", &binary(300)];
    let mut request = format!(
        "POST /hooks/chunked HTTP/1.1\r\nHost: test\r\n{auth}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    let extensions = [";ext=1", "", ";name=\"quoted value\"", ";a;b=c"];
    for (piece, ext) in pieces.iter().zip(extensions) {
        request.extend_from_slice(format!("{:x}{ext}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\nX-Trailer: yes\r\nX-Other: 2\r\n\r\n");
    let reply = server.request(&request);
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
    server.wait_log("exited 0", 1);
    assert!(
        f.read("chunked.stdin") == pieces.concat(),
        "stdin {:?}\n{}",
        f.read("chunked.stdin"),
        server.log()
    );
}

#[test]
fn stdin_is_a_5_mib_body_byte_for_byte() {
    let f = Fixture::new("stdin-5mib");
    let auth = f.token_hook("big", &stdin_saver(&f, "big"), "");
    let server = f.serve(&[]);
    let body = binary(5 * 1024 * 1024);
    let reply = server.post("/hooks/big", &[&auth], &body);
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
    server.wait_log("exited 0", 1);
    let got = f.read("big.stdin");
    assert!(
        got == body,
        "stdin has {} bytes, first difference at {:?}\n{}",
        got.len(),
        got.iter().zip(&body).position(|(a, b)| a != b),
        server.log()
    );
}

#[test]
fn stdin_of_an_empty_body_is_empty_and_readable() {
    let f = Fixture::new("stdin-empty");
    let d = f.dir.display();
    // `cat` fails on a closed fd 0; its status is the script's, so "exited 0" proves a readable stdin.
    let script = f.script(
        "empty.sh",
        &format!(
            "/bin/cat > {d}/$SOCKHOOK_QUERY.stdin || exit 4\necho read >> {d}/$SOCKHOOK_QUERY.stdin"
        ),
    );
    let auth = f.token_hook("empty", &script, "");
    let server = f.serve_guarded(&[]);
    let length_zero = post("/hooks/empty?length", &[&auth], b"");
    let no_length = format!("POST /hooks/empty?none HTTP/1.1\r\nHost: test\r\n{auth}\r\n\r\n");
    let no_chunks = format!(
        "POST /hooks/empty?chunks HTTP/1.1\r\nHost: test\r\n{auth}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    for (i, request) in [length_zero, no_length.into_bytes(), no_chunks.into_bytes()]
        .iter()
        .enumerate()
    {
        let reply = server.request(request);
        assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
        server.wait_log("hook empty: run", 2 * (i + 1));
    }
    let log = server.log();
    assert_eq!(log.matches("exited 0").count(), 3, "{log}");
    for kind in ["length", "none", "chunks"] {
        assert_eq!(
            f.read(&format!("{kind}.stdin")),
            b"read\n",
            "{kind}:\n{log}"
        );
    }
}

#[test]
fn environment_is_exactly_the_allowlist() {
    let f = Fixture::new("env");
    let secret = f.dir.join("gh-secret");
    fs::write(&secret, "it's a secret\n").unwrap();
    f.hook(
        "envgh",
        &format!("command = [\"/usr/bin/env\"]\nauth = \"github\"\nsecret = {secret:?}\n"),
    );
    let server = f.serve_with_env(&[], &[("SECRET_CANARY", "x")]);
    let body = br#"{"ref":"refs/heads/main"}"#;
    let signature = github_signature(b"it's a secret", body);
    let reply = server.post(
        "/hooks/envgh?x=1&y=two",
        &[
            &signature,
            "X-GitHub-Event: push",
            "X-GitHub-Delivery: 72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "Content-Type: application/json",
        ],
        body,
    );
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
    server.wait_log("exited 0", 1);
    // Read only now that the server has answered: right after the spawn the
    // launcher may still be exec'ing sockhook, and its environ is then empty.
    let environ = fs::read(format!("/proc/{}/environ", server.pid())).unwrap();
    assert!(
        environ.split(|&b| b == 0).any(|v| v == b"SECRET_CANARY=x"),
        "the canary is not in the server's environment"
    );
    let log = server.log();
    let mut env: Vec<(String, String)> = output_lines(&log, "envgh")
        .iter()
        .map(|line| {
            let (name, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not NAME=VALUE: {line:?}\n{log}"));
            (name.to_owned(), value.to_owned())
        })
        .collect();
    env.sort();
    let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "PATH",
            "SOCKHOOK_CONTENT_TYPE",
            "SOCKHOOK_DELIVERY",
            "SOCKHOOK_EVENT",
            "SOCKHOOK_HOOK",
            "SOCKHOOK_METHOD",
            "SOCKHOOK_PATH",
            "SOCKHOOK_QUERY",
            "SOCKHOOK_REMOTE_ADDR",
        ],
        "{log}"
    );
    let value = |name: &str| env.iter().find(|(n, _)| n == name).unwrap().1.as_str();
    assert_eq!(value("SOCKHOOK_HOOK"), "envgh");
    assert_eq!(value("SOCKHOOK_METHOD"), "POST");
    assert_eq!(value("SOCKHOOK_PATH"), "/hooks/envgh");
    assert_eq!(value("SOCKHOOK_QUERY"), "x=1&y=two");
    assert_eq!(value("SOCKHOOK_REMOTE_ADDR"), "127.0.0.1");
    assert_eq!(value("SOCKHOOK_EVENT"), "push");
    assert_eq!(
        value("SOCKHOOK_DELIVERY"),
        "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    );
    assert_eq!(value("SOCKHOOK_CONTENT_TYPE"), "application/json");
    assert!(
        value("PATH").split(':').all(|dir| dir.starts_with('/')),
        "{}",
        value("PATH")
    );
    assert!(!log.contains("SECRET_CANARY"), "{log}");
}

#[test]
fn command_runs_after_the_response() {
    let f = Fixture::new("after");
    let d = f.dir.display();
    // The run waits (at most 20 s) for a gate that the test opens only once it has
    // its answer: a server that answered after the run would answer when the wait
    // gives up (exit 9), or not before the read below does.
    let script = f.script(
        "late.sh",
        &format!(
            "i=0\nwhile [ ! -e {d}/gate ]; do\n  i=$((i + 1)); [ $i -gt 400 ] && exit 9\n  /bin/sleep 0.05\ndone\necho done > {d}/late.done"
        ),
    );
    let auth = f.token_hook("late", &script, "");
    let server = f.serve(&[]);
    let reply = server.post("/hooks/late", &[&auth], b"x");
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
    assert!(reply.complete(), "{reply:?}");
    assert!(
        !server.log().contains(" exited "),
        "the run ended before the answer:\n{}",
        server.log()
    );
    fs::write(f.dir.join("gate"), "").unwrap();
    server.wait_log("exited 0", 1);
    assert_eq!(f.read("late.done"), b"done\n");
    let log = server.log();
    let (request, started) = (
        log.find(" 204 hook late").unwrap(),
        log.find("hook late: run").unwrap(),
    );
    assert!(
        request < started,
        "the run started before the response:\n{log}"
    );
}

/// The `SigBlk:` or `SigIgn:` mask in a `/proc/PID/status` text.
fn signal_mask(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|hex| u64::from_str_radix(hex.trim_start_matches("\\x09").trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

// Regression test: sockhook blocks SIGTERM and SIGINT for its signalfd, and
// std::process has inherited the parent's signal mask since rust-lang/rust#101077,
// so a command that does not clear its mask could not be stopped with SIGTERM.
#[test]
fn command_starts_with_no_signal_blocked() {
    let f = Fixture::new("sigmask");
    f.hook(
        "mask",
        "command = [\"/bin/grep\", \"^Sig\", \"/proc/self/status\"]\nauth = \"token\"\n",
    );
    let auth = format!("Authorization: Bearer {}", f.token("/hooks/mask"));
    let server = f.serve(&[]);
    let reply = server.post("/hooks/mask", &[&auth], b"");
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
    server.wait_log("exited 0", 1);
    let log = server.log();
    let status = output_lines(&log, "mask").join("\n");
    let blocked = signal_mask(&status, "SigBlk:");
    let ignored = signal_mask(&status, "SigIgn:");
    let sigterm = 1 << (nix::libc::SIGTERM - 1);
    assert_eq!(
        blocked, 0,
        "blocked signals {blocked:#x} (SIGTERM is {sigterm:#x}):\n{log}"
    );
    assert_eq!(ignored & sigterm, 0, "SIGTERM ignored:\n{log}");
}

/// Runs hook `name`, a script that starts `/bin/sleep 60` in the background and
/// sleeps itself, with `timeout = 1`, `prelude` first in the script; waits for
/// the timeout and the server's exit. Returns its status, its log, and the
/// pids of the script and of its background child.
fn run_into_timeout(
    f: &Fixture,
    name: &str,
    prelude: &str,
) -> (std::process::ExitStatus, String, [i32; 2]) {
    let d = f.dir.display();
    let script = f.script(
        &format!("{name}.sh"),
        &format!(
            "{prelude}echo $$ > {d}/script.pid\n/bin/sleep 60 &\necho $! > {d}/child.pid\n/bin/sleep 60"
        ),
    );
    let auth = f.token_hook(name, &script, "timeout = 1\n");
    let server = f.serve_guarded(&["--idle-timeout", IDLE]);
    let reply = server.post(&format!("/hooks/{name}"), &[&auth], b"");
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
    server.wait_log("timed out", 1);
    let (status, log) = server.wait(PATIENCE);
    let pids = [
        pid_file(f, "script.pid", &log),
        pid_file(f, "child.pid", &log),
    ];
    (status, log, pids)
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let f = Fixture::new("timeout");
    let (status, log, pids) = run_into_timeout(&f, "hang", "");
    assert_eq!(
        run_pid(&log, "hang"),
        pids[0],
        "the command ran through a wrapper:\n{log}"
    );
    assert_all_dead(&pids, pids[0], &|| log.clone());
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(!log.contains("SIGKILL"), "SIGTERM was enough:\n{log}");
    assert_eq!(status.code(), Some(1), "{log}");
}

#[test]
fn timeout_escalates_to_sigkill_when_sigterm_is_ignored() {
    let f = Fixture::new("sigkill");
    // Ignored signals stay ignored across fork and exec: the background sleep ignores SIGTERM too.
    let (status, log, pids) = run_into_timeout(&f, "stubborn", "trap '' TERM\n");
    assert_all_dead(&pids, pids[0], &|| log.clone());
    let (term, kill) = (log.find("SIGTERM"), log.find("SIGKILL"));
    assert!(
        term.is_some() && kill.is_some() && term < kill,
        "SIGTERM, then SIGKILL:\n{log}"
    );
    assert!(log.contains("killed by signal 9"), "{log}");
    assert_eq!(status.code(), Some(1), "{log}");
}

#[test]
fn stopping_the_server_stops_a_running_command() {
    let f = Fixture::new("stop");
    f.hook(
        "nap",
        "command = [\"/bin/sleep\", \"10\"]\nauth = \"token\"\n",
    );
    let auth = format!("Authorization: Bearer {}", f.token("/hooks/nap"));
    let server = f.serve(&[]);
    let reply = server.post("/hooks/nap", &[&auth], b"");
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
    server.wait_log(" started", 1);
    let pid = run_pid(&server.log(), "nap");
    // sockhook passes SIGTERM on to the command's group, and waits for the run
    // to end before it exits; /bin/sleep dies of it at once (not after 10 s).
    let (status, log) = server.stop();
    assert_all_dead(&[pid], pid, &|| log.clone());
    assert!(log.contains("killed by signal 15"), "{log}");
    // A run that sockhook's own stop ended is not a failed command: exit 0, or
    // every `systemctl stop` mid-run would leave the unit "failed".
    assert!(log.contains("as sockhook stopped"), "{log}");
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn triggers_during_a_run_coalesce_into_one_run_with_the_newest_body() {
    let f = Fixture::new("coalesce");
    let d = f.dir.display();
    // The first run lasts until the test opens the gate (at most 20 s), so that the
    // five triggers certainly arrive while it runs, however slow the machine.
    let script = f.script(
        "slow.sh",
        &format!(
            "{{ /bin/cat; echo; }} >> {d}/bodies\ni=0\nwhile [ ! -e {d}/gate ]; do\n  i=$((i + 1)); [ $i -gt 400 ] && exit 9\n  /bin/sleep 0.05\ndone"
        ),
    );
    let auth = f.token_hook("slow", &script, "");
    let server = f.serve_guarded(&["--idle-timeout", IDLE]);
    let reply = server.post("/hooks/slow", &[&auth], b"first");
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
    server.wait_log(" started", 1);
    for i in 1..=5 {
        let reply = server.post("/hooks/slow", &[&auth], format!("trigger {i}").as_bytes());
        assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
        // Each trigger is handed over after its connection closed: wait for it, so that
        // "newest" is the order of the requests.
        server.wait_log("queued", i);
    }
    assert!(
        !server.log().contains("exited"),
        "the first run ended early:\n{}",
        server.log()
    );
    fs::write(f.dir.join("gate"), "").unwrap();
    let (status, log) = server.wait(PATIENCE);
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(
        String::from_utf8_lossy(&f.read("bodies")),
        "first\ntrigger 5\n",
        "{log}"
    );
    assert_eq!(log.matches(" started").count(), 2, "{log}");
}

#[test]
fn two_hooks_run_concurrently() {
    let f = Fixture::new("concurrent");
    let d = f.dir.display();
    let mut auths = Vec::new();
    for (name, other) in [("a", "b"), ("b", "a")] {
        // Each run waits (at most 10 s) for the other to have started: both exit 0 only
        // if they overlap.
        let script = f.script(
            &format!("{name}.sh"),
            &format!(
                ": > {d}/{name}.started\ni=0\nwhile [ ! -e {d}/{other}.started ]; do\n  i=$((i + 1)); [ $i -gt 200 ] && exit 7\n  /bin/sleep 0.05\ndone"
            ),
        );
        auths.push(f.token_hook(name, &script, ""));
    }
    let server = f.serve_guarded(&["--idle-timeout", IDLE]);
    for (name, auth) in ["a", "b"].iter().zip(&auths) {
        let reply = server.post(&format!("/hooks/{name}"), &[auth], b"");
        assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
    }
    let (status, log) = server.wait(PATIENCE);
    assert_eq!(log.matches("exited 0").count(), 2, "{log}");
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn failing_command_is_logged_and_makes_the_exit_code_1() {
    let f = Fixture::new("fails");
    let fail = f.script("fail.sh", "exit 3");
    let fail_auth = f.token_hook("fail", &fail, "");
    let ok_auth = f.token_hook("ok", &f.recorder("ok"), "");
    let server = f.serve_guarded(&["--idle-timeout", IDLE]);
    let reply = server.post("/hooks/fail", &[&fail_auth], b"");
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
    server.wait_log("exited 3", 1);
    let reply = server.post("/hooks/ok", &[&ok_auth], b"still here");
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
    let (status, log) = server.wait(PATIENCE);
    assert_eq!(f.runs("ok"), 1, "{log}");
    assert_eq!(f.read("ok.stdin"), b"still here");
    assert_eq!(status.code(), Some(1), "{log}");
}

#[test]
fn command_that_vanished_after_load_is_logged_and_makes_the_exit_code_1() {
    let f = Fixture::new("vanished");
    let script = f.script("gone.sh", "exit 0");
    let auth = f.token_hook("gone", &script, "");
    let server = f.serve_guarded(&["--idle-timeout", IDLE]);
    server.wait_log("listening on", 1);
    fs::remove_file(&script).unwrap();
    for i in 1..=2 {
        let reply = server.post("/hooks/gone", &[&auth], b"");
        assert_eq!(
            reply.status(),
            204,
            "request {i}: {reply:?}\n{}",
            server.log()
        );
        server.wait_log(&format!("unable to start {}", script.display()), i);
    }
    let (status, log) = server.wait(PATIENCE);
    assert!(
        log.contains("No such file or directory"),
        "the log says why:\n{log}"
    );
    assert_eq!(status.code(), Some(1), "{log}");
}

/// Reads a response head (through the blank line), and nothing after it.
fn read_head(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!("{other:?} after {:?}", String::from_utf8_lossy(&head)),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn expect_100_continue_gets_100_then_204() {
    let f = Fixture::new("expect");
    let auth = f.token_hook("wait", &stdin_saver(&f, "wait"), "");
    let server = f.serve(&[]);
    let body = binary(70_000);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let head = format!(
        "POST /hooks/wait HTTP/1.1\r\nHost: test\r\n{auth}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    assert_eq!(
        read_head(&mut stream),
        "HTTP/1.1 100 Continue\r\n\r\n",
        "{}",
        server.log()
    );
    let reply = exchange(&mut stream, &body);
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
    assert!(reply.complete(), "{reply:?}");
    assert!(
        !String::from_utf8_lossy(&reply.bytes).contains("100 Continue"),
        "{reply:?}"
    );
    server.wait_log("exited 0", 1);
    assert!(f.read("wait.stdin") == body, "{}", server.log());
}

#[test]
fn expect_100_continue_refused_before_the_body_gets_no_100() {
    let f = Fixture::new("expect-refused");
    let auth = f.token_hook("small", &f.recorder("small"), "max_body = 10\n");
    // The guard's --request-timeout (120 s) is also the deadline of these requests:
    // a server that waited for the body would answer only then, long after the
    // read below gives up (PATIENCE), so the status alone shows it did not wait.
    let server = f.serve_guarded(&[]);
    let auth = format!("{auth}\r\n");
    let cases = [
        ("/hooks/small", "", 5, 401),
        ("/hooks/nonexistent", auth.as_str(), 100, 404),
        ("/hooks/small", auth.as_str(), 11, 413),
    ];
    for (path, auth_line, length, expected) in cases {
        let mut stream = server.connect();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\n{auth_line}Expect: 100-continue\r\nContent-Length: {length}\r\n\r\n"
        );
        // The head only: a client that waits for 100 before sending its body.
        stream.write_all(head.as_bytes()).unwrap();
        let reply = read_all(&mut stream);
        let text = String::from_utf8_lossy(&reply.bytes);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {expected} ")),
            "{path} with Content-Length {length}: {text:?} {:?}\n{}",
            reply.error,
            server.log()
        );
        assert!(reply.complete(), "{reply:?}");
    }
    // Stopped, the server has finished everything: a run would show by now.
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(f.runs("small"), 0, "{log}");
}

#[test]
fn curl_with_expect_100_continue_does_not_wait_for_its_timeout() {
    let f = Fixture::new("expect-curl");
    let auth = f.token_hook("curl", &stdin_saver(&f, "curl"), "");
    let server = f.serve(&[]);
    let body = binary(1024 * 1024);
    let body_file = f.dir.join("body");
    fs::write(&body_file, &body).unwrap();
    // curl waits this long for 100 Continue before it sends the body anyway,
    // but gives up on the whole transfer sooner: without the 100 it fails.
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}"])
        .args(["--expect100-timeout", "60", "--max-time", "20"])
        .args(["-H", &auth, "-H", "Expect: 100-continue"])
        .arg("--data-binary")
        .arg(format!("@{}", body_file.display()))
        .arg(format!("http://{}/hooks/curl", server.addr))
        .output()
        .unwrap();
    let written = String::from_utf8_lossy(&out.stdout);
    assert!(
        written.starts_with("204 "),
        "curl (status and time_total: {written:?}) waited for a 100 Continue that never came? {out:?}\n{}",
        server.log()
    );
    server.wait_log("exited 0", 1);
    assert!(f.read("curl.stdin") == body, "{}", server.log());
}

// Regression test: runs were ordered by when clients closed their connections
// (the trigger follows the drain), so an older request whose client lingered
// ran after a newer one, and a deploy hook ended on the older push.
#[test]
fn a_lingering_older_request_never_runs_after_a_newer_one() {
    let f = Fixture::new("ordering");
    let script = f.recorder("order");
    let auth = f.token_hook("order", &script, "");
    let server = f.serve_guarded(&["--idle-timeout", "0.3"]);

    let mut older = TcpStream::connect(server.addr).unwrap();
    older
        .write_all(&post("/hooks/order", &[&auth], b"older"))
        .unwrap();
    let mut head = [0; 12];
    older.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 204", "the older request was accepted");

    let reply = server.post("/hooks/order", &[&auth], b"newer");
    assert_eq!(reply.status(), 204);
    server.wait_log("exited 0", 1);
    drop(older);
    server.wait_log("not run: a newer request was already run or queued", 1);

    let (status, log) = server.wait(PATIENCE);
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(f.runs("order"), 1, "{log}");
    assert_eq!(f.read("order.stdin"), b"newer", "{log}");
}
