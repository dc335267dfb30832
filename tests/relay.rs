//! The relay (sockhook(8), RELAY; doc/relay.md): hooks with `publish = true`
//! store each accepted delivery and fan it out to websocket subscribers,
//! through the real binary over real TCP, with clients no one here wrote:
//! Python's `websockets` as the subscriber and `wscat` (npm) for the upgrade
//! and hookbot's framing. Bad websocket input is sent over raw TCP, as no
//! well-behaved client can send it.

mod support;

use support::pki::Pki;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::harness::*;

/// A Python `websockets` subscriber: connects to argv[1] with the headers in
/// argv[2] (JSON) and the subprotocols after, prints `status N` if refused,
/// else `subprotocol P`, then `message HEX` for each of argv[3] messages.
const SUBSCRIBER_PY: &str = r#"
import asyncio, json, os, ssl, sys
import websockets
url, headers, count, protocols = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
tls = ssl.create_default_context(cafile=os.environ["CA"]) if url.startswith("wss:") else None
async def main():
    try:
        ws = await websockets.connect(url, additional_headers=headers, ssl=tls,
                                      subprotocols=protocols or None, max_size=None, open_timeout=20)
    except websockets.exceptions.InvalidStatus as e:
        print("status", e.response.status_code, flush=True)
        return
    async with ws:
        print("subprotocol", ws.subprotocol, flush=True)
        for _ in range(count):
            m = await asyncio.wait_for(ws.recv(), 20)
            if isinstance(m, str):
                m = m.encode()
            print("message", m.hex(), flush=True)
asyncio.run(main())
"#;

/// A relay on `--listen` with a state directory.
struct Relay {
    f: Fixture,
    state: PathBuf,
}

impl Relay {
    fn new(name: &str) -> Relay {
        let f = Fixture::new(name);
        let state = f.dir.join("state");
        Relay { f, state }
    }

    /// `sockhook serve --listen … --state STATE` plus `args`.
    fn serve(&self, args: &[&str]) -> Served {
        let mut all = vec!["--state", self.state.to_str().unwrap()];
        all.extend_from_slice(args);
        self.f.serve_listen(&all)
    }

    /// A token hook that publishes (and runs nothing); its Authorization line.
    fn publisher(&self, name: &str, extra: &str) -> String {
        self.f
            .hook(name, &format!("auth = \"token\"\npublish = true\n{extra}"));
        bearer(&self.f.token(&format!("/hooks/{name}")))
    }

    fn epoch(&self) -> String {
        fs::read_to_string(self.state.join("relay/epoch"))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn stored(&self, hook: &str) -> usize {
        fs::read_dir(self.state.join("relay/hooks").join(hook)).map_or(0, |d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".msg"))
            })
            .count()
        })
    }
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// A running Python subscriber and the lines it prints.
struct Subscriber {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Subscriber {
    /// Connects to `path` of `addr` with `headers` (`Name: value`) and, when
    /// `envelope`, the subprotocol; expects `count` messages.
    fn connect(
        addr: SocketAddr,
        path: &str,
        headers: &[&str],
        envelope: bool,
        count: usize,
    ) -> Subscriber {
        Subscriber::to(
            &format!("ws://{addr}{path}"),
            None,
            headers,
            envelope,
            count,
        )
    }

    /// The same for `url`, trusting `ca` for `wss://`.
    fn to(
        url: &str,
        ca: Option<&Path>,
        headers: &[&str],
        envelope: bool,
        count: usize,
    ) -> Subscriber {
        let headers: HashMap<&str, &str> = headers
            .iter()
            .map(|h| {
                let (n, v) = h.split_once(": ").unwrap();
                (n, v)
            })
            .collect();
        let headers = json(&headers);
        let mut command = Command::new("python3");
        command
            .args(["-c", SUBSCRIBER_PY, url, &headers])
            .arg(count.to_string());
        if let Some(ca) = ca {
            command.env("CA", ca);
        }
        if envelope {
            command.arg("sockhook.relay.1");
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs (with websockets from PyPI, see .ci/run)");
        let lines = lines_of(child.stdout.take().unwrap());
        Subscriber { child, lines }
    }

    /// The next line it prints; panics after [`PATIENCE`].
    fn line(&self) -> String {
        self.lines
            .recv_timeout(PATIENCE)
            .expect("the subscriber printed nothing in time")
    }

    /// Waits for the upgrade; returns the subprotocol, or panics on a refusal.
    fn subscribed(&self) -> String {
        let line = self.line();
        line.strip_prefix("subprotocol ")
            .unwrap_or_else(|| panic!("not subscribed: {line}"))
            .to_owned()
    }

    /// The status the upgrade was refused with.
    fn refused(&self) -> u16 {
        let line = self.line();
        line.strip_prefix("status ")
            .unwrap_or_else(|| panic!("not refused: {line}"))
            .parse()
            .unwrap()
    }

    /// The next message it got.
    fn message(&self) -> Vec<u8> {
        let line = self.line();
        unhex(
            line.strip_prefix("message ")
                .unwrap_or_else(|| panic!("no message: {line}")),
        )
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines_of(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn json(map: &HashMap<&str, &str>) -> String {
    let fields: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{}:{}", quote(k), quote(v)))
        .collect();
    format!("{{{}}}", fields.join(","))
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// An envelope: its JSON line as `(key, raw value)` pairs, and the body.
fn envelope(message: &[u8]) -> (HashMap<String, String>, Vec<u8>) {
    let rest = message
        .strip_prefix(b"sockhook-relay 1\n")
        .unwrap_or_else(|| panic!("not an envelope: {:?}", String::from_utf8_lossy(message)));
    let end = rest.iter().position(|&b| b == b'\n').unwrap();
    let line = std::str::from_utf8(&rest[..end]).unwrap();
    let inner = line.strip_prefix('{').unwrap().strip_suffix('}').unwrap();
    let mut fields = HashMap::new();
    for pair in split_top(inner) {
        let (k, v) = pair.split_once(':').unwrap();
        fields.insert(
            k.trim_matches('"').to_owned(),
            v.trim_matches('"').to_owned(),
        );
    }
    (fields, rest[end + 1..].to_vec())
}

/// Splits `a:1,"b":"x,y"` at the commas outside strings.
fn split_top(text: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// The path of `wscat`, installed by .ci/run under target/.
fn wscat() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/wscat/node_modules/.bin/wscat");
    assert!(
        path.exists(),
        "wscat is missing: npm install --prefix target/wscat wscat@6.1.0 (see .ci/run)"
    );
    path
}

/// `wscat -c ws://ADDR/PATH` with `headers`; its stdin stays open so that
/// it stays connected until it is killed or the server closes.
fn wscat_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[&str],
) -> (Child, mpsc::Receiver<String>) {
    let mut command = Command::new(wscat());
    command.args(["--no-color", "-c", &format!("ws://{addr}{path}")]);
    for header in headers {
        command.args(["-H", header]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wscat runs (node and npm, see .ci/run)");
    let out = lines_of(child.stdout.take().unwrap());
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        let _ = tx.send(text);
    });
    // Both outputs through one receiver: stdout lines, then stderr whole.
    let (all, lines) = mpsc::channel();
    thread::spawn(move || {
        while let Ok(line) = out.recv() {
            if all.send(line).is_err() {
                return;
            }
        }
        if let Ok(text) = rx.recv() {
            let _ = all.send(text);
        }
    });
    (child, lines)
}

/// The status wscat says its upgrade was refused with.
fn wscat_refused(addr: SocketAddr, path: &str, headers: &[&str]) -> u16 {
    let (mut child, lines) = wscat_connect(addr, path, headers);
    let deadline = Instant::now() + PATIENCE;
    let mut seen = String::new();
    while Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(100)) {
            seen.push_str(&line);
            if let Some(rest) = seen.split("Unexpected server response: ").nth(1) {
                let _ = child.kill();
                let _ = child.wait();
                return rest.trim()[..3].parse().unwrap();
            }
        }
    }
    let _ = child.kill();
    panic!("wscat was not refused: {seen}");
}

fn publish(server: &Server, path: &str, auth: &str, body: &[u8]) -> Reply {
    server.post(
        path,
        &[auth, "Content-Type: application/octet-stream"],
        body,
    )
}

/// A raw websocket upgrade of `path` with `headers`; the stream after the 101.
fn raw_subscribe(server: &Server, path: &str, headers: &[&str]) -> TcpStream {
    upgrade_on(server.connect(), path, headers)
}

/// The upgrade of [`raw_subscribe`] on `stream`.
fn upgrade_on(mut stream: TcpStream, path: &str, headers: &[&str]) -> TcpStream {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "closed during the upgrade: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // RFC 6455 §1.3's example key and its accept value, computed by the RFC.
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    stream
}

/// A client frame: `fin`, `opcode`, masked when `mask`.
fn frame(fin: bool, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let bit = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n < 65536 => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x12, 0x34, 0x56, 0x78];
    if mask {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads frames until a close frame; returns its code, and checks that the
/// connection then ends (EOF, after the half-close).
fn close_code(stream: &mut TcpStream) -> u16 {
    let reply = read_all(stream);
    let bytes = reply.bytes;
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let len = (bytes[at + 1] & 0x7f) as usize;
        assert!(len < 126, "an unexpected long frame");
        if opcode == 8 {
            assert!(
                reply.error.is_none(),
                "not a clean close: {:?}",
                reply.error
            );
            return u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]);
        }
        at += 2 + len;
    }
    panic!("no close frame in {bytes:?} (then {:?})", reply.error);
}

#[test]
fn a_subscriber_gets_the_envelope_with_every_field_and_the_exact_body() {
    let r = Relay::new("relay-envelope");
    let secret = r.f.dir.join("github.secret");
    fs::write(&secret, "It's a Secret to Everybody").unwrap();
    r.f.hook(
        "deploy",
        &format!("auth = \"github\"\nsecret = {secret:?}\npublish = true\n"),
    );
    let served = r.serve(&[]);
    let sub_token = r.f.token("/sub/hooks/deploy");
    let sub = Subscriber::connect(
        served.addr,
        "/sub/hooks/deploy",
        &[&bearer(&sub_token)],
        true,
        1,
    );
    assert_eq!(sub.subscribed(), "sockhook.relay.1");
    // Not UTF-8, with a NUL and line feeds: delivered byte for byte.
    let body = b"{\"ref\":\"refs/heads/main\"}\n\0\xff\xfe\n".to_vec();
    let signature = github_signature(b"It's a Secret to Everybody", &body);
    let before = unix_ms();
    let reply = served.post(
        "/hooks/deploy",
        &[
            "X-GitHub-Event: push",
            "X-GitHub-Delivery: 72d3162e-cc78-11e3-81ab-4c9367dc0958",
            &signature,
            "Content-Type: application/json",
        ],
        &body,
    );
    assert_eq!(reply.status(), 204, "{}", served.log());
    let (fields, got) = envelope(&sub.message());
    assert_eq!(got, body);
    assert_eq!(fields["epoch"], r.epoch());
    assert_eq!(fields["epoch"].len(), 16);
    assert_eq!(fields["seq"], "1");
    assert_eq!(fields["hook"], "deploy");
    assert_eq!(fields["event"], "push");
    assert_eq!(fields["delivery"], "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    assert_eq!(fields["content_type"], "application/json");
    assert_eq!(fields["size"], body.len().to_string());
    let received: u64 = fields["received"].parse().unwrap();
    assert!((before..=unix_ms()).contains(&received), "{received}");
    assert!(
        !fields
            .keys()
            .any(|k| k.contains("sig") || k.contains("auth"))
    );
    // A bad signature is refused at the edge: nothing is stored.
    let reply = served.post(
        "/hooks/deploy",
        &[
            "X-GitHub-Event: push",
            "X-Hub-Signature-256: sha256=00",
            "Content-Type: application/json",
        ],
        &body,
    );
    assert_eq!(reply.status(), 401);
    assert_eq!(r.stored("deploy"), 1);
    served.stop();
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn hookbot_clients_get_the_raw_body_or_name_nul_body() {
    let r = Relay::new("relay-hookbot");
    let auth = r.publisher("kodi", "");
    let served = r.serve(&[]);
    let (mut wscat, lines) = wscat_connect(
        served.addr,
        "/sub/hooks/kodi",
        &[&bearer(&r.f.token("/sub/hooks/kodi"))],
    );
    let all = Subscriber::connect(
        served.addr,
        "/sub/hooks/",
        &[&bearer(&r.f.token("/sub/hooks/"))],
        false,
        1,
    );
    assert_eq!(all.subscribed(), "None");
    served.wait_log("subscribed to hook kodi (hookbot framing)", 1);
    assert_eq!(
        publish(&served, "/hooks/kodi", &auth, b"restart please").status(),
        204
    );
    let line = lines
        .recv_timeout(PATIENCE)
        .expect("wscat printed the message");
    assert_eq!(line.trim_start_matches("< "), "restart please");
    assert_eq!(all.message(), b"kodi\0restart please");
    let _ = wscat.kill();
    let _ = wscat.wait();
    served.stop();
}

#[test]
fn the_token_table_against_the_upgrade() {
    let r = Relay::new("relay-tokens");
    let auth = r.publisher("kodi", "");
    r.publisher("other", "");
    let served = r.serve(&[]);
    let exact = r.f.token("/sub/hooks/kodi");
    let prefix = r.f.token("/sub/hooks/");
    let publish_token = auth.strip_prefix("Authorization: Bearer ").unwrap();
    let path = "/sub/hooks/kodi";
    // Refused, each with a complete answer.
    assert_eq!(
        wscat_refused(
            served.addr,
            path,
            &[&bearer(&r.f.token("/sub/hooks/other"))]
        ),
        403
    );
    assert_eq!(
        wscat_refused(served.addr, path, &[&bearer(publish_token)]),
        403
    );
    assert_eq!(wscat_refused(served.addr, path, &[]), 401);
    assert_eq!(
        wscat_refused(served.addr, "/sub/hooks/nosuch", &[&bearer(&prefix)]),
        404
    );
    // Accepted: exact (Bearer) and prefix (Basic user name, as wss://TOKEN@relay/ sends it).
    let (mut one, _) = wscat_connect(served.addr, path, &[&bearer(&exact)]);
    served.wait_log("subscribed to hook kodi", 1);
    let basic = format!(
        "Authorization: Basic {}",
        base64(format!("{prefix}:").as_bytes())
    );
    let (mut two, _) = wscat_connect(served.addr, path, &[&basic]);
    served.wait_log("subscribed to hook kodi", 2);
    for child in [&mut one, &mut two] {
        let _ = child.kill();
        let _ = child.wait();
    }
    served.wait_log("subscriber gone", 2);
    assert_eq!(publish(&served, "/hooks/kodi", &auth, b"x").status(), 204);
    served.stop();
}

#[test]
fn subscribing_to_a_hook_anyone_may_publish_to_needs_the_opt_in() {
    let r = Relay::new("relay-unsafe");
    r.f.hook(
        "open",
        "auth = \"none\"\nallow_unauthenticated = true\npublish = true\n",
    );
    let served = r.serve(&[]);
    let token = bearer(&r.f.token("/sub/hooks/open"));
    let refused = Subscriber::connect(served.addr, "/sub/hooks/open", &[&token], true, 0);
    assert_eq!(refused.refused(), 403);
    let sub = Subscriber::connect(
        served.addr,
        "/sub/hooks/open",
        &[
            &token,
            "X-Hookbot-Unsafe-Is-Ok: I understand the security implications",
        ],
        true,
        1,
    );
    sub.subscribed();
    assert_eq!(served.post("/hooks/open", &[], b"anyone").status(), 204);
    assert_eq!(envelope(&sub.message()).1, b"anyone");
    served.stop();
}

#[test]
fn bad_upgrades_get_a_complete_answer_and_nothing_else() {
    let r = Relay::new("relay-bad-upgrade");
    let auth = r.publisher("kodi", "");
    let served = r.serve(&[]);
    let token = r.f.token("/sub/hooks/kodi");
    let upgrade = |method: &str, version: &str, key: bool| {
        let key = if key {
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        } else {
            ""
        };
        format!(
            "{method} /sub/hooks/kodi HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{key}Sec-WebSocket-Version: {version}\r\n\r\n"
        )
    };
    let reply = served.request(upgrade("GET", "8", true).as_bytes());
    assert_eq!(reply.status(), 426);
    assert_eq!(reply.header("sec-websocket-version").as_deref(), Some("13"));
    assert!(reply.complete());
    let reply = served.request(upgrade("POST", "13", true).as_bytes());
    assert_eq!(reply.status(), 405);
    assert_eq!(reply.header("allow").as_deref(), Some("GET"));
    assert!(reply.complete());
    let reply = served.request(upgrade("GET", "13", false).as_bytes());
    assert_eq!(reply.status(), 400);
    assert!(reply.complete());
    let reply = served.request(
        format!(
            "GET /sub/hooks/kodi HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(reply.status(), 400);
    assert!(reply.complete());
    // Still serving, nothing stored by any of it.
    assert_eq!(r.stored("kodi"), 0);
    assert_eq!(
        publish(&served, "/hooks/kodi", &auth, b"after").status(),
        204
    );
    served.stop();
}

#[test]
fn bad_websocket_input_gets_a_close_frame_then_the_connection_ends() {
    let r = Relay::new("relay-bad-frames");
    let auth = r.publisher("kodi", "");
    let served = r.serve(&[]);
    let token = bearer(&r.f.token("/sub/hooks/kodi"));
    let cases: [(&str, Vec<u8>, u16); 4] = [
        ("an unmasked frame", frame(true, 2, b"hi", false), 1002),
        (
            "a frame over 4096 bytes",
            frame(true, 2, &[b'x'; 5000], true),
            1009,
        ),
        (
            "a message over 4096 bytes in fragments",
            {
                let mut v = frame(false, 2, &[b'x'; 3000], true);
                v.extend(frame(true, 0, &[b'x'; 3000], true));
                v
            },
            1009,
        ),
        (
            "fragments that never end",
            {
                let mut v = frame(false, 2, b"", true);
                for _ in 0..3000 {
                    v.extend(frame(false, 0, b"", true));
                }
                v
            },
            1009,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut stream = raw_subscribe(&served, "/sub/hooks/kodi", &[&token]);
        stream.write_all(&bytes).unwrap();
        assert_eq!(close_code(&mut stream), code, "{what}\n{}", served.log());
    }
    // A ping is answered with its pong; a close with a close.
    let mut stream = raw_subscribe(&served, "/sub/hooks/kodi", &[&token]);
    stream
        .write_all(&frame(true, 9, b"are you there", true))
        .unwrap();
    let mut pong = [0; 15];
    stream.read_exact(&mut pong).unwrap();
    assert_eq!(&pong[..2], [0x8a, 13]);
    assert_eq!(&pong[2..], b"are you there");
    stream
        .write_all(&frame(true, 8, &1000u16.to_be_bytes(), true))
        .unwrap();
    assert_eq!(close_code(&mut stream), 1000);
    assert_eq!(
        publish(&served, "/hooks/kodi", &auth, b"still fine").status(),
        204
    );
    served.stop();
}

#[test]
fn nothing_is_lost_while_no_subscriber_is_connected() {
    let r = Relay::new("relay-resume");
    let auth = r.publisher("kodi", "");
    let served = r.serve(&[]);
    for body in ["one", "two", "three"] {
        assert_eq!(
            publish(&served, "/hooks/kodi", &auth, body.as_bytes()).status(),
            204
        );
    }
    let token = bearer(&r.f.token("/sub/hooks/kodi"));
    // A first start (another epoch): everything stored, in order.
    let sub = Subscriber::connect(
        served.addr,
        "/sub/hooks/kodi",
        &[&token, "Sockhook-Resume: 0000000000000000"],
        true,
        4,
    );
    sub.subscribed();
    for (seq, body) in [(1, "one"), (2, "two"), (3, "three")] {
        let (fields, got) = envelope(&sub.message());
        assert_eq!(
            (fields["seq"].as_str(), got.as_slice()),
            (seq.to_string().as_str(), body.as_bytes())
        );
    }
    // Then live ones.
    assert_eq!(
        publish(&served, "/hooks/kodi", &auth, b"four").status(),
        204
    );
    assert_eq!(envelope(&sub.message()).0["seq"], "4");
    // Resuming after 2 of this epoch: 3 and 4 only.
    let resume = format!("Sockhook-Resume: {} kodi=2", r.epoch());
    let sub = Subscriber::connect(
        served.addr,
        "/sub/hooks/",
        &[&bearer(&r.f.token("/sub/hooks/")), &resume],
        true,
        2,
    );
    sub.subscribed();
    assert_eq!(envelope(&sub.message()).1, b"three");
    assert_eq!(envelope(&sub.message()).1, b"four");
    served.stop();
}

#[test]
fn a_killed_relay_loses_nothing_it_answered_for() {
    let r = Relay::new("relay-killed");
    let auth = r.publisher("kodi", "");
    let served = r.serve(&[]);
    assert_eq!(
        publish(&served, "/hooks/kodi", &auth, b"before").status(),
        204
    );
    let epoch = r.epoch();
    // SIGKILL, as systemctl kill -s KILL: no chance to write anything more.
    drop(served.release());
    let served = r.serve(&[]);
    assert_eq!(
        publish(&served, "/hooks/kodi", &auth, b"after").status(),
        204
    );
    assert_eq!(r.epoch(), epoch, "a restart keeps the store's epoch");
    let token = bearer(&r.f.token("/sub/hooks/kodi"));
    let resume = format!("Sockhook-Resume: {epoch} kodi=0");
    let sub = Subscriber::connect(served.addr, "/sub/hooks/kodi", &[&token, &resume], true, 2);
    sub.subscribed();
    let (first, body) = envelope(&sub.message());
    assert_eq!(
        (first["seq"].as_str(), body.as_slice()),
        ("1", &b"before"[..])
    );
    let (second, body) = envelope(&sub.message());
    assert_eq!(
        (second["seq"].as_str(), body.as_slice()),
        ("2", &b"after"[..])
    );
    served.stop();
}

#[test]
fn retention_keeps_the_newest_publish_keep_messages() {
    let r = Relay::new("relay-retention");
    let auth = r.publisher("kodi", "publish_keep = 2\n");
    let served = r.serve(&[]);
    for body in ["a", "b", "c"] {
        assert_eq!(
            publish(&served, "/hooks/kodi", &auth, body.as_bytes()).status(),
            204
        );
    }
    assert_eq!(r.stored("kodi"), 2);
    let token = bearer(&r.f.token("/sub/hooks/kodi"));
    let sub = Subscriber::connect(
        served.addr,
        "/sub/hooks/kodi",
        &[&token, "Sockhook-Resume: 0000000000000000"],
        true,
        2,
    );
    sub.subscribed();
    assert_eq!(envelope(&sub.message()).0["seq"], "2");
    assert_eq!(envelope(&sub.message()).0["seq"], "3");
    served.stop();
}

#[test]
fn a_delivery_that_cannot_be_stored_is_refused_503_and_not_published() {
    let r = Relay::new("relay-not-stored");
    let runs = r.f.recorder("kodi");
    r.f.hook(
        "kodi",
        &format!("auth = \"token\"\npublish = true\ncommand = [{runs:?}]\n"),
    );
    let auth = bearer(&r.f.token("/hooks/kodi"));
    // A file where the hook's directory of messages goes.
    fs::create_dir_all(r.state.join("relay/hooks")).unwrap();
    fs::write(r.state.join("relay/hooks/kodi"), "in the way").unwrap();
    let served = r.serve(&[]);
    let sub = Subscriber::connect(
        served.addr,
        "/sub/hooks/kodi",
        &[&bearer(&r.f.token("/sub/hooks/kodi"))],
        true,
        1,
    );
    sub.subscribed();
    let reply = publish(&served, "/hooks/kodi", &auth, b"lost?");
    assert_eq!(reply.status(), 503, "{}", served.log());
    assert!(reply.header("retry-after").is_some());
    assert!(reply.complete());
    fs::remove_file(r.state.join("relay/hooks/kodi")).unwrap();
    assert_eq!(
        publish(&served, "/hooks/kodi", &auth, b"stored").status(),
        204
    );
    // The first message the subscriber gets is the stored one, as seq 1.
    let (fields, body) = envelope(&sub.message());
    assert_eq!(
        (fields["seq"].as_str(), body.as_slice()),
        ("1", &b"stored"[..])
    );
    served.wait_log(" exited 0 ", 1);
    assert_eq!(r.f.runs("kodi"), 1, "the refused delivery did not run");
    served.stop();
}

#[test]
fn a_hook_must_run_a_command_or_publish() {
    let f = Fixture::new("relay-check");
    f.hook("neither", "auth = \"token\"\n");
    f.hook(
        "keep",
        "auth = \"token\"\ncommand = [\"/bin/true\"]\npublish_keep = 3\n",
    );
    f.hook(
        "after",
        "auth = \"token\"\npublish = true\nrespond = \"after-run\"\n",
    );
    let out = f.check();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("command: missing") && text.contains("or publish = true"),
        "{text}"
    );
    assert!(
        text.contains("publish_keep: only applies with publish = true"),
        "{text}"
    );
    assert!(
        text.contains("respond: a hook that only publishes"),
        "{text}"
    );
}

/// `VmRSS` of `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[test]
fn a_subscriber_that_does_not_read_is_closed_and_the_sender_never_waits() {
    let r = Relay::new("relay-slow");
    let auth = r.publisher("kodi", "max_body = 1048576\n");
    let served = r.serve(&[]);
    let token = bearer(&r.f.token("/sub/hooks/kodi"));
    let stuck = raw_subscribe(&served, "/sub/hooks/kodi", &[&token]);
    let body = vec![b'x'; 256 * 1024];
    let before = rss(served.pid());
    let mut slowest = Duration::ZERO;
    let mut sent = 0;
    // 4 MiB of send buffer plus what the sockets hold: 64 × 256 KiB is past it.
    while !served.log().contains("does not read") {
        assert!(sent < 64, "never closed:\n{}", served.log());
        let started = Instant::now();
        assert_eq!(publish(&served, "/hooks/kodi", &auth, &body).status(), 204);
        slowest = slowest.max(started.elapsed());
        sent += 1;
    }
    let after = rss(served.pid());
    println!(
        "non-reading subscriber closed after {sent} messages of 256 KiB; slowest 204 {slowest:?}; RSS {} KiB before, {} KiB after",
        before / 1024,
        after / 1024
    );
    assert!(
        after < before + 16 * 1024 * 1024,
        "RSS grew from {before} to {after}"
    );
    drop(stuck);
    // A live subscriber is unaffected.
    let sub = Subscriber::connect(served.addr, "/sub/hooks/kodi", &[&token], true, 1);
    sub.subscribed();
    assert_eq!(
        publish(&served, "/hooks/kodi", &auth, b"next").status(),
        204
    );
    assert_eq!(envelope(&sub.message()).1, b"next");
    served.stop();
}

/// A connection to `server` from `source` (any of 127.0.0.0/8 is local).
fn connect_from(source: std::net::Ipv4Addr, server: SocketAddr) -> TcpStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    use std::os::fd::AsRawFd;
    let SocketAddr::V4(server) = server else {
        panic!("IPv4 only")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(source, 0)),
    )
    .unwrap();
    connect(fd.as_raw_fd(), &SockaddrIn::from(server)).unwrap();
    TcpStream::from(fd)
}

/// Percentile `p` (0–100) of sorted `values`.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// Whether `bytes` hold a whole unmasked server frame.
fn frame_complete(bytes: &[u8]) -> bool {
    let (len, at) = match bytes.get(1).map(|b| b & 0x7f) {
        None => return false,
        Some(126) if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
        Some(127) if bytes.len() >= 10 => (
            u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
            10,
        ),
        Some(126 | 127) => return false,
        Some(len) => (len as usize, 2),
    };
    bytes.len() >= at + len
}

/// Reads one server frame from each of `streams` (non-blocking, watched by
/// epoll); returns when each was complete.
fn arrivals(streams: &[TcpStream]) -> Vec<Instant> {
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
    for (i, stream) in streams.iter().enumerate() {
        epoll
            .add(stream, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
            .unwrap();
    }
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); streams.len()];
    let mut done: Vec<Option<Instant>> = vec![None; streams.len()];
    let mut left = streams.len();
    let mut events = vec![EpollEvent::empty(); 256];
    let deadline = Instant::now() + PATIENCE;
    let mut buf = [0; 4096];
    while left > 0 {
        assert!(Instant::now() < deadline, "{left} subscribers got nothing");
        let n = epoll.wait(&mut events, EpollTimeout::from(100u8)).unwrap();
        for event in &events[..n] {
            let i = event.data() as usize;
            let mut stream = &streams[i];
            while let Ok(k @ 1..) = stream.read(&mut buf) {
                got[i].extend_from_slice(&buf[..k]);
            }
            if done[i].is_none() && frame_complete(&got[i]) {
                done[i] = Some(Instant::now());
                got[i].clear();
                left -= 1;
            }
        }
    }
    done.into_iter().map(Option::unwrap).collect()
}

#[test]
fn a_thousand_idle_subscribers_cost_little_and_all_get_each_message() {
    scale(1000, 5, 16);
}

/// `make bench-relay`: more subscribers, more publishes, a larger body.
#[test]
#[ignore = "a benchmark: make bench-relay"]
fn bench_relay() {
    scale(4000, 20, 16);
    scale(1000, 10, 64 * 1024);
}

/// `subscribers` idle subscribers from 127.0.0.2–254, then `publishes`
/// messages of `size` bytes: sockhook's RSS per subscriber and the time from
/// each POST to each subscriber's copy, printed.
fn scale(subscribers: usize, publishes: usize, size: usize) {
    let r = Relay::new("relay-scale");
    let auth = r.publisher("kodi", "");
    let max = (subscribers + 64).to_string();
    let served = r.serve(&["--max-subscribers", &max, "--max-connections", &max]);
    let token = bearer(&r.f.token("/sub/hooks/kodi"));
    // The test holds a socket per subscriber.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let before = rss(served.pid());
    // 127.0.0.2–254 in turn: 4 each, under the per-source limit of 32.
    let streams: Vec<TcpStream> = (0..subscribers)
        .map(|i| {
            let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % 253) as u8);
            let stream = upgrade_on(
                connect_from(source, served.addr),
                "/sub/hooks/kodi",
                &[&token],
            );
            stream.set_nonblocking(true).unwrap();
            stream
        })
        .collect();
    served.wait_log("subscribed to hook kodi", subscribers);
    let after = rss(served.pid());
    let per = after.saturating_sub(before) / subscribers as u64;
    println!(
        "{subscribers} idle subscribers: sockhook's RSS {} KiB before, {} KiB after: {per} bytes each",
        before / 1024,
        after / 1024
    );
    let streams = std::sync::Arc::new(streams);
    let mut all = Vec::new();
    for n in 0..publishes {
        let reader = {
            let streams = std::sync::Arc::clone(&streams);
            thread::spawn(move || arrivals(&streams))
        };
        let start = Instant::now();
        assert_eq!(
            publish(
                &served,
                "/hooks/kodi",
                &auth,
                format!("message {n}").as_bytes()
            )
            .status(),
            204
        );
        let answered = start.elapsed();
        let mut latencies: Vec<Duration> = reader
            .join()
            .unwrap()
            .iter()
            .map(|at| at.duration_since(start))
            .collect();
        latencies.sort();
        println!(
            "publish {n}: 204 after {answered:?}; all {subscribers} subscribers had it: median {:?}, p99 {:?}, last {:?} after the POST started",
            percentile(&latencies, 50),
            percentile(&latencies, 99),
            latencies[latencies.len() - 1]
        );
        all.extend(latencies);
    }
    all.sort();
    println!(
        "fan-out of {size} bytes to {subscribers} over {publishes} publishes: median {:?}, p99 {:?}",
        percentile(&all, 50),
        percentile(&all, 99)
    );
    assert!(per < 64 * 1024, "{per} bytes per subscriber");
    drop(streams);
    served.stop();
}

#[test]
fn subscribers_over_https_get_every_byte() {
    let r = Relay::new("relay-tls");
    let auth = r.publisher("kodi", "max_body = 4194304\n");
    let pki = Pki::new(&r.f.dir.join("pki"));
    let leaf = pki.localhost("server");
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tls = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tls_addr = tls.local_addr().unwrap();
    let fds = [
        std::os::fd::AsRawFd::as_raw_fd(&plain),
        std::os::fd::AsRawFd::as_raw_fd(&tls),
    ];
    let state = r.state.to_str().unwrap();
    let args = [
        "--tls-cert",
        leaf.cert.to_str().unwrap(),
        "--tls-key",
        leaf.key.to_str().unwrap(),
        "--state",
        state,
        "--idle-timeout",
        "60",
    ];
    let server =
        r.f.serve_named(&fds, plain.local_addr().unwrap(), "http:https", &args);
    let token = bearer(&r.f.token("/sub/hooks/"));
    let url = format!("wss://localhost:{}/sub/hooks/", tls_addr.port());
    let sub = Subscriber::to(&url, Some(&pki.ca), &[&token], true, 2);
    assert_eq!(sub.subscribed(), "sockhook.relay.1");
    // Larger than rustls's and the socket's buffers: written in many turns.
    let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        publish(&server, "/hooks/kodi", &auth, b"small").status(),
        204
    );
    assert_eq!(publish(&server, "/hooks/kodi", &auth, &big).status(), 204);
    assert_eq!(envelope(&sub.message()).1, b"small");
    assert_eq!(envelope(&sub.message()).1, big);
    drop(sub);
    server.stop();
}

#[test]
fn a_relay_with_subscribers_does_not_exit_idle_and_a_stop_closes_them() {
    let r = Relay::new("relay-idle");
    r.publisher("kodi", "");
    let served = r.serve(&["--idle-timeout", "1"]);
    let token = bearer(&r.f.token("/sub/hooks/kodi"));
    let mut stream = raw_subscribe(&served, "/sub/hooks/kodi", &[&token]);
    let mut server = served.release();
    // Three idle timeouts with only the subscriber connected: still serving.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(
            server.running(),
            "exited idle with a subscriber:\n{}",
            server.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let pid = nix::unistd::Pid::from_raw(server.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(close_code(&mut stream), 1001);
    let (status, log) = server.wait(PATIENCE);
    assert!(status.success(), "{log}");
    assert!(
        log.contains("subscriber closed: the relay is stopping"),
        "{log}"
    );
}

#[test]
fn subscribers_are_bounded_by_max_subscribers() {
    let r = Relay::new("relay-max");
    r.publisher("kodi", "");
    let served = r.serve(&["--max-subscribers", "2"]);
    let token = bearer(&r.f.token("/sub/hooks/kodi"));
    let _one = raw_subscribe(&served, "/sub/hooks/kodi", &[&token]);
    let _two = raw_subscribe(&served, "/sub/hooks/kodi", &[&token]);
    let third = Subscriber::connect(served.addr, "/sub/hooks/kodi", &[&token], true, 0);
    assert_eq!(third.refused(), 503);
    served.wait_log("503 hook kodi: busy: too many subscribers", 1);
    served.stop();
}

#[test]
fn subscribers_count_against_the_per_source_limit() {
    let r = Relay::new("relay-per-source");
    let auth = r.publisher("kodi", "");
    // The guard connection of serve_listen and two subscribers: three.
    let served = r.serve(&["--max-connections-per-source", "3"]);
    let token = bearer(&r.f.token("/sub/hooks/kodi"));
    let _one = raw_subscribe(&served, "/sub/hooks/kodi", &[&token]);
    let _two = raw_subscribe(&served, "/sub/hooks/kodi", &[&token]);
    let reply = publish(&served, "/hooks/kodi", &auth, b"over the limit");
    assert_eq!(reply.status(), 503, "{}", served.log());
    // From another address, the same publish goes through.
    let mut other = connect_from(std::net::Ipv4Addr::new(127, 0, 0, 2), served.addr);
    let reply = exchange(
        &mut other,
        &post(
            "/hooks/kodi",
            &[&auth, "Content-Type: text/plain"],
            b"from elsewhere",
        ),
    );
    assert_eq!(reply.status(), 204);
    served.stop();
}
