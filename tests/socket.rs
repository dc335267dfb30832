//! Socket adoption: the binary started exactly as systemd starts it, with
//! `--listen`, and with a connected socket (`Accept=yes`); what it refuses.

mod support;

use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::process::Command;

use support::harness::*;

fn token_hook(f: &Fixture, name: &str) -> String {
    let script = f.recorder(name);
    f.hook(name, &format!("command = [{script:?}]\nauth = \"token\"\n"));
    f.token(&format!("/hooks/{name}"))
}

#[test]
fn listening_socket_on_fd3_serves_until_idle_then_exits_0() {
    let f = Fixture::new("fd3");
    let token = token_hook(&f, "a");
    let server = f.serve_guarded(&["--idle-timeout", "0.5"]);
    for i in 1..=3 {
        let reply = server.post(
            "/hooks/a",
            &[&format!("Authorization: Bearer {token}")],
            b"",
        );
        assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
        server.wait_log("exited 0", i);
    }
    let (status, log) = server.wait(PATIENCE);
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(f.runs("a"), 3, "{log}");
    assert_eq!(
        log.matches("started").count(),
        3,
        "one activation, three runs:\n{log}"
    );
    assert!(log.contains("exiting (idle)"), "{log}");
}

#[test]
fn idle_exit_waits_for_a_running_command() {
    let f = Fixture::new("idle-waits");
    let d = f.dir.display();
    // A run five times the idle time: a server that did not wait for it would
    // exit first. A correct one passes however slow the machine is.
    let script = f.script("slow.sh", &format!("sleep 1\necho done > {d}/slow.done"));
    f.hook(
        "slow",
        &format!("command = [{script:?}]\nauth = \"token\"\n"),
    );
    let token = f.token("/hooks/slow");
    let server = f.serve_guarded(&["--idle-timeout", "0.2"]);
    let reply = server.post(
        "/hooks/slow",
        &[&format!("Authorization: Bearer {token}")],
        b"",
    );
    assert_eq!(reply.status(), 204);
    let (status, log) = server.wait(PATIENCE);
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(
        f.read("slow.done"),
        b"done\n",
        "exited before the command finished:\n{log}"
    );
}

#[test]
fn ipv6_listening_socket_on_fd3_is_served() {
    let f = Fixture::new("ipv6");
    let token = token_hook(&f, "a");
    let listener = TcpListener::bind("[::1]:0").expect("IPv6 loopback");
    let addr = listener.local_addr().unwrap();
    // Connected before sockhook starts, as under systemd: it cannot exit idle first.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let mut command = f.activation(&["--idle-timeout", "0.3"]);
    command.stderr(std::process::Stdio::piped());
    let child = spawn_with_fd3(command, listener.as_raw_fd());
    let reply = exchange(
        &mut stream,
        &post(
            "/hooks/a",
            &[&format!("Authorization: Bearer {token}")],
            b"v6",
        ),
    );
    assert_eq!(reply.status(), 204, "{reply:?}");
    let out = output_within(child, PATIENCE);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("listening on http://[::1]:"), "{log}");
    assert_eq!(f.read("a.stdin"), b"v6", "{log}");
}

#[test]
fn listen_option_binds_and_serves() {
    let f = Fixture::new("listen");
    let token = token_hook(&f, "a");
    let server = f.serve_listen(&["--idle-timeout", "0.5"]);
    let reply = server.post(
        "/hooks/a",
        &[&format!("Authorization: Bearer {token}")],
        b"x",
    );
    assert_eq!(reply.status(), 204, "{}", server.log());
    let (status, log) = server.wait(PATIENCE);
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn connected_socket_is_one_connection_then_exit() {
    let f = Fixture::new("accept-yes");
    let token = token_hook(&f, "a");
    let (server, mut client) = f.serve_connection(&[]);
    let reply = exchange(
        &mut client,
        &post(
            "/hooks/a",
            &[&format!("Authorization: Bearer {token}")],
            b"body",
        ),
    );
    assert_eq!(reply.status(), 204);
    assert!(reply.complete(), "{reply:?}");
    let (status, log) = server.wait(PATIENCE);
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(f.runs("a"), 1, "{log}");
    assert_eq!(f.read("a.stdin"), b"body");
}

#[test]
fn unix_listening_socket_is_served() {
    let f = Fixture::new("unix");
    let token = token_hook(&f, "a");
    let path = f.dir.join("sock");
    let listener = UnixListener::bind(&path).unwrap();
    // Connected before sockhook starts, as under systemd: it cannot exit idle first.
    let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut command = f.activation(&["--idle-timeout", "0.5"]);
    command.stderr(std::process::Stdio::piped());
    let child = spawn_with_fd3(command, listener.as_raw_fd());
    use std::io::{Read, Write};
    stream
        .write_all(&post(
            "/hooks/a",
            &[&format!("Authorization: Bearer {token}")],
            b"",
        ))
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 204 "), "{response}");
    let out = output_within(child, PATIENCE);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(f.runs("a"), 1, "{log}");
}

/// Starts `sockhook serve` with `fd` on fd 3 and the given LISTEN_* values; returns (code, stderr).
fn start_with(fd: i32, listen_pid: Option<&str>, listen_fds: &str) -> (Option<i32>, String) {
    let f = Fixture::new("refused");
    let script = match listen_pid {
        Some(pid) => format!("export LISTEN_PID={pid}; exec \"$0\" \"$@\""),
        None => "exec \"$0\" \"$@\"".to_owned(),
    };
    let mut command = Command::new("/bin/sh");
    command
        .args([
            "-c",
            &script,
            BIN,
            "serve",
            "--idle-timeout",
            "0.2",
            "--hooks",
        ])
        .arg(&f.hooks)
        .env("LISTEN_FDS", listen_fds)
        .env_remove("LISTEN_PID")
        .stderr(std::process::Stdio::piped());
    let child = spawn_with_fd3(command, fd);
    let out = output_within(child, PATIENCE);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn datagram_socket_is_a_configuration_error() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (code, stderr) = start_with(udp.as_raw_fd(), Some("$$"), "1");
    assert_eq!(code, Some(100), "{stderr}");
    assert!(stderr.contains("fd 3 is a Datagram socket"), "{stderr}");
}

#[test]
fn regular_file_is_a_configuration_error() {
    let file = std::fs::File::open("/dev/null").unwrap();
    let (code, stderr) = start_with(file.as_raw_fd(), Some("$$"), "1");
    assert_eq!(code, Some(100), "{stderr}");
    assert!(stderr.contains("fd 3 is not a socket"), "{stderr}");
}

#[test]
fn listen_pid_of_another_process_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (code, stderr) = start_with(listener.as_raw_fd(), Some("1"), "1");
    assert_eq!(code, Some(100), "{stderr}");
    assert!(
        stderr.contains("LISTEN_PID=\"1\" names another process"),
        "{stderr}"
    );
}

#[test]
fn missing_listen_pid_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (code, stderr) = start_with(listener.as_raw_fd(), None, "1");
    assert_eq!(code, Some(100), "{stderr}");
    assert!(stderr.contains("LISTEN_PID is not"), "{stderr}");
}

#[test]
fn no_socket_at_all_is_a_usage_error() {
    let out = Command::new(BIN)
        .args(["serve", "--hooks", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(100));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no socket"));
}

#[test]
fn command_inherits_no_fd_and_no_activation_variable() {
    let f = Fixture::new("no-leak");
    let d = f.dir.display();
    // `ls` opens /proc/self/fd itself; any other fd above 2 was inherited.
    let script = f.script(
        "fds.sh",
        &format!("exec /bin/ls -l /proc/self/fd > {d}/fds"),
    );
    f.hook(
        "fds",
        &format!("command = [{script:?}]\nauth = \"token\"\n"),
    );
    let env_script = f.recorder("env");
    f.hook(
        "env",
        &format!("command = [{env_script:?}]\nauth = \"token\"\n"),
    );
    let server = f.serve_guarded(&["--idle-timeout", "0.3"]);
    for name in ["fds", "env"] {
        let token = f.token(&format!("/hooks/{name}"));
        let reply = server.post(
            &format!("/hooks/{name}"),
            &[&format!("Authorization: Bearer {token}")],
            b"body",
        );
        assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
    }
    let (status, log) = server.wait(PATIENCE);
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(f.runs("env"), 1, "{log}");
    let listing = String::from_utf8(f.read("fds")).unwrap();
    let fds: Vec<&str> = listing.lines().filter(|l| l.contains(" -> ")).collect();
    assert!(fds.len() >= 3, "{listing}\n{log}");
    for line in fds {
        let (left, target) = line.split_once(" -> ").unwrap();
        let fd: u32 = left.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            fd <= 2 || target.ends_with("/fd"),
            "inherited fd {fd} -> {target}\n{listing}"
        );
    }
    let env = String::from_utf8(f.read("env.env")).unwrap();
    assert!(!env.contains("LISTEN_"), "{env}");
    assert!(!env.contains("NOTIFY_SOCKET"), "{env}");
}

#[test]
fn sigterm_stops_accepting_and_exits_cleanly() {
    let f = Fixture::new("sigterm");
    token_hook(&f, "a");
    let server = f.serve(&[]);
    server.wait_log("listening on", 1);
    let (status, log) = server.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("received SIGTERM"), "{log}");
    assert!(log.contains("exiting (stopped)"), "{log}");
}

#[test]
fn ipv4_clients_of_a_dual_stack_socket_are_plain_ipv4() {
    let f = Fixture::new("mapped");
    let token = token_hook(&f, "a");
    let listener = TcpListener::bind("[::]:0").expect("IPv6 wildcard");
    let port = listener.local_addr().unwrap().port();
    let mut command = f.activation(&["--idle-timeout", "0.3"]);
    command.stderr(std::process::Stdio::piped());
    let child = spawn_with_fd3(command, listener.as_raw_fd());
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let reply = exchange(
        &mut stream,
        &post(
            "/hooks/a",
            &[&format!("Authorization: Bearer {token}")],
            b"4",
        ),
    );
    assert_eq!(reply.status(), 204, "{reply:?}");
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let env = String::from_utf8_lossy(&f.read("a.env")).into_owned();
    assert!(
        env.lines().any(|l| l == "SOCKHOOK_REMOTE_ADDR=127.0.0.1"),
        "{env}"
    );
    assert!(log.contains("info: 127.0.0.1:"), "{log}");
    assert!(!log.contains("::ffff:"), "{log}");
}
