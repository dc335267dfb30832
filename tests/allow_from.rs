//! `allow_from`: a hook limited to some client addresses refuses every other
//! one with 403 on the head, before a byte of its body is read, runs
//! nothing, and says why in one log line; behind `--trusted-proxy` the
//! forwarded address is the one checked. Over real sockets, from real
//! loopback addresses (127.0.0.1, 127.0.0.2, ::1).

mod support;

use std::io::Write;
use std::net::TcpListener;

use support::harness::*;
use support::net::{connect_from, loopback};

/// A fixture with hook `h` (a recorder, token auth) and `extra` keys;
/// returns it with the hook's Authorization line.
fn fixture(name: &str, extra: &str) -> (Fixture, String) {
    let fx = Fixture::new(name);
    let recorder = fx.recorder("h");
    let auth = fx.token_hook("h", &recorder, extra);
    (fx, auth)
}

/// A POST of `body` to `/hooks/h` from `from`.
fn post_from(server: &Server, from: u8, headers: &[&str], body: &[u8]) -> Reply {
    let mut stream = connect_from(loopback(from), server.addr).unwrap();
    exchange(&mut stream, &post("/hooks/h", headers, body))
}

#[test]
fn only_the_listed_addresses_reach_the_hook() {
    let (fx, auth) = fixture("allow-v4", "allow_from = [\"127.0.0.2/32\"]\n");
    let server = fx.serve_guarded(&["--idle-timeout", "0.2"]);
    let refused = post_from(&server, 1, &[&auth], b"{}");
    assert_eq!(refused.status(), 403, "{refused:?}");
    assert!(refused.complete(), "{refused:?}");
    assert!(
        refused
            .body()
            .contains("127.0.0.1 is not in this hook's allow_from"),
        "{refused:?}"
    );
    let allowed = post_from(&server, 2, &[&auth], b"{}");
    assert_eq!(allowed.status(), 204, "{allowed:?}\n{}", server.log());
    server.wait_log("exited 0", 1);
    assert_eq!(fx.runs("h"), 1);
    let (status, log) = server.wait(PATIENCE);
    assert!(status.success(), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains(" 403 "))
        .unwrap_or_else(|| panic!("no 403 line:\n{log}"));
    assert!(
        line.contains("127.0.0.1:") && line.contains("hook h: forbidden: 127.0.0.1 is not in"),
        "{line}"
    );
    assert_eq!(log.matches(" 403 ").count(), 1, "{log}");
}

#[test]
fn blocks_ipv4_and_ipv6_and_the_refusal_comes_before_auth() {
    // A wrong token from outside the list is 403, not 401: the address is
    // judged first, so the log does not fill with guesses from outside.
    let (fx, auth) = fixture(
        "allow-blocks",
        "allow_from = [\"10.0.0.0/8\", \"2001:db8::/32\", \"127.0.0.0/30\"]\n",
    );
    let server = fx.serve_guarded(&["--idle-timeout", "0.2"]);
    assert_eq!(post_from(&server, 3, &[&auth], b"1").status(), 204);
    assert_eq!(post_from(&server, 4, &[&auth], b"2").status(), 403);
    let wrong = "Authorization: Bearer 0000";
    assert_eq!(post_from(&server, 5, &[wrong], b"3").status(), 403);
    assert_eq!(post_from(&server, 1, &[wrong], b"4").status(), 401);
    server.wait_log("exited 0", 1);
    let (status, log) = server.wait(PATIENCE);
    assert!(status.success(), "{log}");
    assert_eq!(fx.runs("h"), 1, "{log}");
}

#[test]
fn ipv6_loopback_is_checked_as_ipv6() {
    let listener = TcpListener::bind("[::1]:0").expect("no IPv6 loopback");
    let fx = Fixture::new("allow-v6");
    let recorder = fx.recorder("h");
    let ok = fx.token_hook("h", &recorder, "allow_from = [\"::1\"]\n");
    let no = fx.token_hook("v4only", &recorder, "allow_from = [\"127.0.0.0/8\"]\n");
    let server = fx.serve_guarded_on(&listener, &["--idle-timeout", "0.2"]);
    let allowed = server.post("/hooks/h", &[&ok], b"{}");
    assert_eq!(allowed.status(), 204, "{allowed:?}");
    let refused = server.post("/hooks/v4only", &[&no], b"{}");
    assert_eq!(refused.status(), 403, "{refused:?}");
    assert!(refused.body().contains("::1 is not in"), "{refused:?}");
    server.wait_log("exited 0", 1);
    let (status, log) = server.wait(PATIENCE);
    assert!(status.success(), "{log}");
    assert_eq!(fx.runs("h"), 1, "{log}");
}

#[test]
fn behind_a_trusted_proxy_the_forwarded_address_counts() {
    let (fx, auth) = fixture("allow-proxy", "allow_from = [\"203.0.113.0/24\"]\n");
    let trusted = fx.serve_guarded(&["--idle-timeout", "0.2", "--trusted-proxy", "127.0.0.1"]);
    let forwarded = |server: &Server, from: u8, client: &str| {
        let header = format!("X-Forwarded-For: {client}");
        post_from(server, from, &[&auth, &header], b"{}").status()
    };
    assert_eq!(forwarded(&trusted, 1, "203.0.113.9"), 204);
    assert_eq!(forwarded(&trusted, 1, "198.51.100.1"), 403);
    // From a peer that is not a trusted proxy the header is not believed.
    assert_eq!(forwarded(&trusted, 2, "203.0.113.9"), 403);
    trusted.wait_log("exited 0", 1);
    let (status, log) = trusted.wait(PATIENCE);
    assert!(status.success(), "{log}");
    assert!(
        log.contains("198.51.100.1 via 127.0.0.1:")
            && log.contains("forbidden: 198.51.100.1 is not in this hook's allow_from"),
        "{log}"
    );
    assert!(log.contains("forbidden: 127.0.0.2 is not in"), "{log}");
    assert_eq!(fx.runs("h"), 1, "{log}");
}

#[test]
fn a_refused_client_is_answered_without_sending_its_body() {
    // A head announcing 1 GiB, then nothing: the 403 comes at once (not a
    // 408 at the request deadline, not after a body), the connection ends
    // with EOF, not a reset, and with Expect: 100-continue no 100 is sent.
    let (fx, auth) = fixture(
        "allow-head",
        "allow_from = [\"127.0.0.2\"]\nmax_body = 1073741824\n",
    );
    let server = fx.serve_guarded(&["--idle-timeout", "0.2", "--request-timeout", "60"]);
    for expect in ["", "Expect: 100-continue\r\n"] {
        let mut stream = connect_from(loopback(1), server.addr).unwrap();
        let head = format!(
            "POST /hooks/h HTTP/1.1\r\nHost: test\r\n{auth}\r\n{expect}Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        let reply = read_all(&mut stream);
        assert_eq!(reply.status(), 403, "{reply:?}");
        assert!(reply.complete(), "{reply:?}");
        assert!(
            !String::from_utf8_lossy(&reply.bytes).contains("100 Continue"),
            "{reply:?}"
        );
    }
    let (status, log) = server.wait(PATIENCE);
    assert!(status.success(), "{log}");
    assert_eq!(log.matches(" 403 hook h: forbidden").count(), 2, "{log}");
    assert_eq!(fx.runs("h"), 0, "{log}");
}

#[test]
fn bad_blocks_are_configuration_errors_and_check_shows_the_list() {
    let fx = Fixture::new("allow-check");
    let recorder = fx.recorder("h");
    fx.token_hook(
        "good",
        &recorder,
        "allow_from = [\"192.168.0.0/16\", \"2001:db8::/32\", \"10.1.2.3\"]\n",
    );
    let bad = [
        (
            "prefix",
            "[\"10.0.0.0/33\"]",
            "\"10.0.0.0/33\": the prefix length must be 0 to 32",
        ),
        (
            "v6prefix",
            "[\"::/129\"]",
            "\"::/129\": the prefix length must be 0 to 128",
        ),
        (
            "name",
            "[\"example.com\"]",
            "\"example.com\" is not an address or ADDR/BITS",
        ),
        (
            "unix",
            "[\"unix\"]",
            "\"unix\" is not an address or ADDR/BITS",
        ),
        ("empty", "[]", "allow_from: give 1 to 64 addresses"),
        (
            "string",
            "\"10.0.0.0/8\"",
            "line 3: invalid type: string \"10.0.0.0/8\", expected a sequence",
        ),
    ];
    for (name, list, _) in bad {
        fx.token_hook(name, &recorder, &format!("allow_from = {list}\n"));
    }
    let out = fx.check();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text.contains("/hooks/good: ok: auth token, POST runs")
            && text.contains(", from 192.168.0.0/16 2001:db8::/32 10.1.2.3/32"),
        "{text}"
    );
    for (name, _, message) in bad {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("{name}.toml")))
            .unwrap_or_else(|| panic!("no problem for {name}:\n{text}"));
        assert!(line.contains(message), "{name}: {line}");
    }
    // Served, a broken hook answers 500 and the good one still works.
    let server = fx.serve_guarded(&["--idle-timeout", "0.2"]);
    let token = format!("Authorization: Bearer {}", fx.token("/hooks/prefix"));
    assert_eq!(server.post("/hooks/prefix", &[&token], b"{}").status(), 500);
    let (status, log) = server.wait(PATIENCE);
    assert!(status.success(), "{log}");
    assert!(
        log.contains("allow_from: \"10.0.0.0/33\": the prefix length"),
        "{log}"
    );
}
