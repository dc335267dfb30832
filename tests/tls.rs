//! HTTPS through the real binary over real sockets: a plain and an HTTPS
//! socket passed the way systemd passes two `.socket` units to one service
//! (`LISTEN_FDNAMES=http:https`), a CA and certificates made by the test
//! with openssl, and real clients (curl, `openssl s_client`, Python's
//! `requests` and `ssl`, OkHttp) that verify the certificate.
//!
//! Then the bad-input table of the TLS port: each case is answered by a
//! bounded, logged refusal, the server neither panics nor hangs, and both
//! ports serve a good request afterwards. No test may find a line of the
//! private key in the log.
//!
//! Tools missing: the test says `skipped`; under `CI=true` it fails.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::harness::*;
use support::pki::{Leaf, Pki, ci, have, need, need_tools, openssl};

/// What every request sends.
const BODY: &str = "hello over https";
/// The hook's largest body.
const MAX_BODY: usize = 1024;
/// Options of every server: no idle exit during a test.
const ARGS: &[&str] = &["--idle-timeout", "600"];
/// How long a refusal on the TLS port may take (head deadline 2 s plus
/// generous slack for a loaded machine).
const REFUSAL_BOUND: Duration = Duration::from_secs(12);

/// One sockhook with a plain and an HTTPS socket and a token hook `a`.
struct Case {
    f: Fixture,
    pki: Pki,
    leaf: Leaf,
    server: Server,
    tls: SocketAddr,
    token: String,
}

impl Case {
    /// A server with `localhost`'s certificate; `None` if openssl or curl is
    /// missing (and not CI).
    fn start(name: &str, args: &[&str]) -> Option<Case> {
        if !need_tools(&["openssl", "curl"]) {
            return None;
        }
        let f = Fixture::new(name);
        let pki = Pki::new(&f.dir.join("pki"));
        let leaf = pki.localhost("server");
        Some(Case::with(f, pki, leaf, args))
    }

    fn with(f: Fixture, pki: Pki, leaf: Leaf, args: &[&str]) -> Case {
        let a = f.recorder("a");
        f.hook(
            "a",
            &format!("command = [{a:?}]\nauth = \"token\"\nmax_body = {MAX_BODY}\n"),
        );
        let token = f.token("/hooks/a");
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        let tls = TcpListener::bind("127.0.0.1:0").unwrap();
        let tls_addr = tls.local_addr().unwrap();
        let mut all = vec![
            "--tls-cert",
            leaf.cert.to_str().unwrap(),
            "--tls-key",
            leaf.key.to_str().unwrap(),
        ];
        all.extend_from_slice(ARGS);
        all.extend_from_slice(args);
        let fds = [plain.as_raw_fd(), tls.as_raw_fd()];
        let server = f.serve_named(&fds, plain.local_addr().unwrap(), "http:https", &all);
        Case {
            f,
            pki,
            leaf,
            server,
            tls: tls_addr,
            token,
        }
    }

    /// `https://localhost:PORT/hooks/a`.
    fn url(&self) -> String {
        format!("https://localhost:{}/hooks/a", self.tls.port())
    }

    /// curl's `--resolve` for `host`: to the HTTPS socket.
    fn resolve(&self, host: &str) -> String {
        format!("{host}:{}:127.0.0.1", self.tls.port())
    }

    /// curl with the CA, `localhost` resolved to the HTTPS socket, and `args`.
    fn curl(&self, args: &[&str]) -> (u16, String) {
        let mut all = vec!["--cacert", self.pki.ca.to_str().unwrap(), "--resolve"];
        let resolve = self.resolve("localhost");
        all.push(&resolve);
        all.extend_from_slice(args);
        curl(&all)
    }

    /// A token POST with curl over HTTPS; the status.
    fn curl_post(&self) -> u16 {
        let user = format!("{}:", self.token);
        let url = self.url();
        let (status, stderr) = self.curl(&["-u", &user, "--data-binary", BODY, &url]);
        assert_eq!(status, 204, "curl: {stderr}\n{}", self.server.log());
        status
    }

    /// Waits until hook `a` has run `n` times in all.
    fn wait_runs(&self, n: usize) {
        self.server.wait_log(" exited 0 after ", n);
        assert_eq!(self.f.runs("a"), n, "{}", self.server.log());
    }

    /// A raw TCP connection to the HTTPS socket.
    fn connect_tls(&self) -> TcpStream {
        let stream = TcpStream::connect(self.tls).unwrap();
        stream.set_read_timeout(Some(REFUSAL_BOUND)).unwrap();
        stream.set_write_timeout(Some(REFUSAL_BOUND)).unwrap();
        stream
    }

    /// After a bad input: both ports still serve a good request, the server
    /// still runs, and it never panicked; then it stops cleanly, the runs
    /// are `runs` in all, and no line of the private key is in the log.
    fn finish(mut self, runs: usize) -> String {
        assert!(
            self.server.running(),
            "sockhook exited:\n{}",
            self.server.log()
        );
        let reply = self.server.post(
            "/hooks/a",
            &[&format!("Authorization: Bearer {}", self.token)],
            BODY.as_bytes(),
        );
        assert_eq!(
            reply.status(),
            204,
            "plain port: {reply:?}\n{}",
            self.server.log()
        );
        self.curl_post();
        self.wait_runs(runs + 2);
        let (status, log) = self.server.stop();
        assert_eq!(status.code(), Some(0), "{log}");
        assert!(!log.contains("internal error"), "{log}");
        assert_no_key(&log, &self.leaf);
        log
    }
}

/// No line of the private key of `leaf`, nor a part of one, is in `log`.
fn assert_no_key(log: &str, leaf: &Leaf) {
    for line in leaf.key_lines() {
        for piece in line.as_bytes().chunks(16) {
            let piece = std::str::from_utf8(piece).unwrap();
            assert!(
                piece.len() < 12 || !log.contains(piece),
                "the log shows private-key bytes ({piece}):\n{log}"
            );
        }
    }
}

/// Reads until EOF, an error or the bound; returns the bytes, how it ended
/// and how long it took.
fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Option<std::io::ErrorKind>, Duration) {
    let start = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (bytes, None, start.elapsed()),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (bytes, Some(e.kind()), start.elapsed()),
        }
    }
}

/// The connection ended (EOF or reset, not our read timeout) within the bound.
fn assert_closed(stream: &mut TcpStream, case: &Case) -> Vec<u8> {
    let (bytes, error, took) = read_until_closed(stream);
    assert!(
        !matches!(
            error,
            Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        ),
        "still open after {took:?}:\n{}",
        case.server.log()
    );
    assert!(took < REFUSAL_BOUND, "took {took:?}");
    bytes
}

/// A TLS alert record (content type 21) with description `alert`.
fn is_alert(bytes: &[u8], alert: u8) -> bool {
    bytes.len() >= 7 && bytes[0] == 0x15 && bytes[1] == 3 && bytes[6] == alert
}

/// A ClientHello record offering `version` (`[3, 1]`: TLS 1.0, `[3, 2]`:
/// TLS 1.1, `[3, 3]`: TLS 1.2), ECDHE with P-256, AES-GCM, and no
/// `supported_versions` extension: exactly what an old client sends.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = version.to_vec();
    body.extend([0x5a; 32]); // random
    body.push(0); // no session id
    body.extend([0, 6, 0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x9c]); // cipher suites
    body.extend([1, 0]); // null compression
    let extensions: &[u8] = &[
        0x00, 0x0a, 0, 4, 0, 2, 0, 0x17, // supported_groups: secp256r1
        0x00, 0x0b, 0, 2, 1, 0, // ec_point_formats: uncompressed
        0x00, 0x0d, 0, 6, 0, 4, 0x04, 0x03, 0x04, 0x01, // signature_algorithms
    ];
    body.extend((extensions.len() as u16).to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![1];
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 3, 1];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// Runs `program args` with `stdin` (see [`run_with_stdin`]).
fn run(program: &str, args: &[&str], stdin: &[u8]) -> Output {
    run_with_stdin(program, args, stdin)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------
// Real clients
// ---------------------------------------------------------------------------

/// curl verifies the certificate against the test CA, gets 204, and the
/// command runs with the body; the plain socket of the same process too.
#[test]
fn curl_with_cacert_gets_204_and_the_command_runs() {
    let Some(case) = Case::start("tls-curl", &[]) else {
        return;
    };
    case.curl_post();
    case.wait_runs(1);
    assert_eq!(case.f.read("a.stdin"), BODY.as_bytes());
    let env = String::from_utf8(case.f.read("a.env")).unwrap();
    assert!(env.contains("SOCKHOOK_REMOTE_ADDR=127.0.0.1"), "{env}");
    let log = case.server.log();
    assert!(
        log.contains("listening on http://127.0.0.1:") && log.contains(" https://127.0.0.1:"),
        "{log}"
    );
    assert!(
        log.contains("HTTPS: certificate chain of 1 certificate(s)"),
        "{log}"
    );
    case.finish(1);
}

/// `openssl s_client` with verification on: the chain verifies for
/// `localhost`, the protocol is TLS 1.3, and the request gets 204.
#[test]
fn openssl_s_client_verifies_and_gets_204() {
    let Some(case) = Case::start("tls-s-client", &[]) else {
        return;
    };
    let connect = case.tls.to_string();
    let request = format!(
        "POST /hooks/a HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{BODY}",
        case.token,
        BODY.len()
    );
    let out = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "localhost",
            "-verify_hostname",
            "localhost",
            "-CAfile",
            case.pki.ca.to_str().unwrap(),
            "-verify_return_error",
            "-alpn",
            "http/1.1",
            "-ign_eof",
        ],
        request.as_bytes(),
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}\n{}", case.server.log());
    assert!(said.contains("Verify return code: 0 (ok)"), "{said}");
    assert!(
        said.contains("Protocol  : TLSv1.3") || said.contains("TLSv1.3"),
        "{said}"
    );
    assert!(said.contains("ALPN protocol: http/1.1"), "{said}");
    assert!(said.contains("HTTP/1.1 204 No Content"), "{said}");
    case.wait_runs(1);
    case.finish(1);
}

const PYTHON_CLIENTS: &str = r#"
import socket, ssl, sys
import requests
url, ca, token, body, port = sys.argv[1:6]
r = requests.post(url, data=body.encode(), headers={"Authorization": "Bearer " + token}, verify=ca, timeout=20)
print("requests", r.status_code, r.raw.version)
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["h2", "http/1.1"])
with socket.create_connection(("127.0.0.1", int(port)), timeout=20) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(("POST /hooks/a HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer %s\r\n"
                   "Content-Length: %d\r\n\r\n%s" % (token, len(body), body)).encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        print("ssl", s.version(), s.selected_alpn_protocol(), data.split(b"\r\n")[0].decode())
"#;

/// Python: `requests` with `verify=` the CA, and the `ssl` module with the
/// default (verifying) context, each gets 204; `ssl` negotiates http/1.1
/// although it offers h2 first.
#[test]
fn python_requests_and_ssl_verify_and_get_204() {
    if !need(&[("python3 with requests", python_has_requests())]) {
        return;
    }
    let Some(case) = Case::start("tls-python", &[]) else {
        return;
    };
    let port = case.tls.port().to_string();
    let out = run(
        "python3",
        &[
            "-c",
            PYTHON_CLIENTS,
            &case.url(),
            case.pki.ca.to_str().unwrap(),
            &case.token,
            BODY,
            &port,
        ],
        b"",
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}\n{}", case.server.log());
    assert!(said.contains("requests 204 11"), "{said}");
    assert!(
        said.contains("ssl TLSv1.3 http/1.1 HTTP/1.1 204 No Content"),
        "{said}"
    );
    case.wait_runs(2);
    case.finish(2);
}

fn python_has_requests() -> bool {
    have("python3")
        && Command::new("python3")
            .args(["-c", "import requests"])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// A client as the HTTP Shortcuts app makes it: OkHttp, trusting the test CA
/// only, `localhost` resolved to 127.0.0.1. Prints `status CODE PROTOCOL
/// TLSVERSION`, or `refused EXCEPTION` and exits 3.
const OKHTTP_CLIENT: &str = r#"
import java.io.FileInputStream;
import java.net.InetAddress;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.util.Collections;
import javax.net.ssl.*;
import okhttp3.*;

public class OkClient {
    public static void main(String[] a) throws Exception {
        Certificate ca;
        try (FileInputStream in = new FileInputStream(a[1])) {
            ca = CertificateFactory.getInstance("X.509").generateCertificate(in);
        }
        KeyStore store = KeyStore.getInstance(KeyStore.getDefaultType());
        store.load(null, null);
        store.setCertificateEntry("ca", ca);
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(store);
        X509TrustManager trust = (X509TrustManager) tmf.getTrustManagers()[0];
        SSLContext tls = SSLContext.getInstance("TLS");
        tls.init(null, new TrustManager[] {trust}, null);
        OkHttpClient client = new OkHttpClient.Builder()
            .sslSocketFactory(tls.getSocketFactory(), trust)
            .dns(host -> Collections.singletonList(InetAddress.getByName("127.0.0.1")))
            .build();
        Request request = new Request.Builder().url(a[0])
            .header("Authorization", "Bearer " + a[2])
            .post(RequestBody.create(MediaType.parse("text/plain"), a[3]))
            .build();
        try (Response response = client.newCall(request).execute()) {
            System.out.println("status " + response.code() + " " + response.protocol()
                + " " + response.handshake().tlsVersion());
        } catch (SSLException e) {
            System.out.println("refused " + e);
            System.exit(3);
        }
    }
}
"#;

/// OkClient compiled once per test run; `None` if javac, java or the jars
/// are missing (and not CI).
fn okhttp_client() -> Option<String> {
    support::java::okhttp_class("OkClient", OKHTTP_CLIENT)
}

/// OkHttp (the HTTP Shortcuts app's client) gets 204 over TLS with
/// http/1.1, and the command runs.
#[test]
fn okhttp_gets_204_and_the_command_runs() {
    let Some(classpath) = okhttp_client() else {
        return;
    };
    let Some(case) = Case::start("tls-okhttp", &[]) else {
        return;
    };
    let ca = case.pki.ca.to_str().unwrap();
    let out = run(
        "java",
        &[
            "-cp",
            &classpath,
            "OkClient",
            &case.url(),
            ca,
            &case.token,
            BODY,
        ],
        b"",
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}\n{}", case.server.log());
    assert!(said.contains("status 204 http/1.1 TLS_1_3"), "{said}");
    case.wait_runs(1);
    assert_eq!(case.f.read("a.stdin"), BODY.as_bytes());
    case.finish(1);
}

/// A certificate for another name: curl, `openssl s_client`, Python's
/// `ssl` and `requests`, and OkHttp all refuse it, and nothing runs.
#[test]
fn every_client_refuses_a_mismatched_hostname() {
    if !need_tools(&["openssl", "curl"]) {
        return;
    }
    let f = Fixture::new("tls-mismatch");
    let pki = Pki::new(&f.dir.join("pki"));
    let other = pki.leaf("other", &["other.example"], "-1 hour", "+90 days", "ec");
    let case = Case::with(f, pki, other, &[]);
    let user = format!("{}:", case.token);
    let url = case.url();
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--max-time", "10", "--cacert"])
        .arg(&case.pki.ca)
        .args([
            "--resolve",
            &case.resolve("localhost"),
            "-u",
            &user,
            "-d",
            BODY,
            &url,
        ])
        .output()
        .unwrap();
    // 60: the peer's certificate cannot be authenticated with the CA.
    assert_eq!(out.status.code(), Some(60), "curl: {}", text(&out));
    assert!(text(&out).contains("localhost"), "{}", text(&out));

    let connect = case.tls.to_string();
    let out = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "localhost",
            "-verify_hostname",
            "localhost",
            "-CAfile",
            case.pki.ca.to_str().unwrap(),
            "-verify_return_error",
        ],
        b"",
    );
    assert!(!out.status.success(), "s_client: {}", text(&out));
    assert!(text(&out).contains("hostname mismatch"), "{}", text(&out));

    if python_has_requests() {
        let script = r#"
import socket, ssl, sys
import requests
url, ca, port = sys.argv[1:4]
try:
    requests.post(url, data=b"x", verify=ca, timeout=20)
    print("requests accepted")
except requests.exceptions.SSLError as e:
    print("requests refused", "match" in str(e))
ctx = ssl.create_default_context(cafile=ca)
try:
    with socket.create_connection(("127.0.0.1", int(port)), timeout=20) as raw:
        ctx.wrap_socket(raw, server_hostname="localhost")
    print("ssl accepted")
except ssl.SSLCertVerificationError as e:
    print("ssl refused", e.verify_message)
"#;
        let port = case.tls.port().to_string();
        let out = run(
            "python3",
            &["-c", script, &url, case.pki.ca.to_str().unwrap(), &port],
            b"",
        );
        let said = text(&out);
        assert!(said.contains("requests refused True"), "{said}");
        assert!(said.contains("ssl refused Hostname mismatch"), "{said}");
    } else {
        need(&[("python3 with requests", false)]);
    }

    if let Some(classpath) = okhttp_client() {
        let ca = case.pki.ca.to_str().unwrap();
        let out = run(
            "java",
            &["-cp", &classpath, "OkClient", &url, ca, &case.token, BODY],
            b"",
        );
        let said = text(&out);
        assert_eq!(out.status.code(), Some(3), "{said}");
        assert!(
            said.contains("refused javax.net.ssl.SSLPeerUnverifiedException"),
            "{said}"
        );
        assert!(said.contains("localhost"), "{said}");
    }
    assert_eq!(case.f.runs("a"), 0);
    // Clients that refuse the certificate abort the handshake: logged, bounded.
    case.server.wait_log("TLS handshake failed", 1);
    let log = case.server.log();
    assert!(!log.contains(" 204"), "{log}");
    drop(case);
}

// ---------------------------------------------------------------------------
// Protocol versions and ALPN
// ---------------------------------------------------------------------------

/// A ClientHello for TLS 1.0 or 1.1 (no `supported_versions`) is refused
/// with a `protocol_version` alert (70); so is `openssl s_client -tls1_1`
/// with its own security level lowered so that it really offers 1.1.
#[test]
fn tls_1_0_and_1_1_are_refused() {
    let Some(case) = Case::start("tls-old", &[]) else {
        return;
    };
    for version in [[3, 1], [3, 2]] {
        let mut stream = case.connect_tls();
        stream.write_all(&client_hello(version)).unwrap();
        let bytes = assert_closed(&mut stream, &case);
        assert!(
            is_alert(&bytes, 70),
            "TLS {version:?}: {bytes:x?}\n{}",
            case.server.log()
        );
    }
    // The same hello for TLS 1.2 gets a ServerHello: the refusal is the version's.
    let mut stream = case.connect_tls();
    stream.write_all(&client_hello([3, 3])).unwrap();
    let mut first = [0; 6];
    stream.read_exact(&mut first).unwrap();
    assert_eq!(&first[..3], &[0x16, 3, 3], "not a handshake record");
    assert_eq!(first[5], 2, "not a ServerHello");
    drop(stream);
    for flag in ["-tls1", "-tls1_1"] {
        let connect = case.tls.to_string();
        let out = run(
            "openssl",
            &[
                "s_client",
                "-connect",
                &connect,
                flag,
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
            ],
            b"",
        );
        let said = text(&out);
        assert!(!out.status.success(), "{flag}: {said}");
        // Refused by the server, not by openssl itself: an alert is all it read.
        // (These hellos lack signature_algorithms, which rustls checks first.)
        assert!(
            said.contains("alert protocol version") || said.contains("alert handshake failure"),
            "{flag}: {said}"
        );
        assert!(
            said.contains("SSL handshake has read 7 bytes"),
            "{flag}: {said}"
        );
    }
    case.server.wait_log("TLS handshake failed", 4);
    // The two raw hellos: refused for their version.
    case.server
        .wait_log("peer is incompatible: Tls12NotOffered", 2);
    case.finish(0);
}

/// ALPN offers only http/1.1: `curl --http2` over TLS still talks HTTP/1.1
/// and gets its 204. (A cleartext HTTP/2 prior-knowledge preface gets a
/// GOAWAY with HTTP_1_1_REQUIRED: tests/bad_input.rs,
/// `http2_prior_knowledge_gets_goaway_http_1_1_required`, with curl.)
#[test]
fn alpn_offers_only_http_1_1() {
    let Some(case) = Case::start("tls-alpn", &[]) else {
        return;
    };
    let user = format!("{}:", case.token);
    let url = case.url();
    let out = Command::new("curl")
        .args(["-sS", "-v", "--http2", "--max-time", "10", "--cacert"])
        .arg(&case.pki.ca)
        .args([
            "--resolve",
            &case.resolve("localhost"),
            "-u",
            &user,
            "--data-binary",
            BODY,
            "-w",
            "\nversion %{http_version} status %{http_code}\n",
            &url,
        ])
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("ALPN: offers h2,http/1.1"), "{said}");
    assert!(said.contains("ALPN: server accepted http/1.1"), "{said}");
    assert!(said.contains("version 1.1 status 204"), "{said}");
    case.wait_runs(1);
    case.finish(1);
}

// ---------------------------------------------------------------------------
// Bad input on the TLS port
// ---------------------------------------------------------------------------

/// Plain HTTP to the HTTPS port: not TLS, refused at once, logged.
#[test]
fn tls_port_refuses_plain_http() {
    let Some(case) = Case::start("tls-bad-plain", &["--head-timeout", "2"]) else {
        return;
    };
    let mut stream = case.connect_tls();
    let request = post(
        "/hooks/a",
        &[&format!("Authorization: Bearer {}", case.token)],
        BODY.as_bytes(),
    );
    stream.write_all(&request).unwrap();
    let bytes = assert_closed(&mut stream, &case);
    assert!(!bytes.starts_with(b"HTTP/"), "{bytes:?}");
    case.server.wait_log("TLS handshake failed", 1);
    case.finish(0);
}

/// Random-looking bytes: refused, logged.
#[test]
fn tls_port_refuses_garbage() {
    let Some(case) = Case::start("tls-bad-garbage", &["--head-timeout", "2"]) else {
        return;
    };
    let mut stream = case.connect_tls();
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = stream.write_all(&garbage);
    assert_closed(&mut stream, &case);
    case.server.wait_log("TLS handshake failed", 1);
    case.finish(0);
}

/// The first half of a ClientHello, then the client's FIN: the handshake
/// cannot finish, the connection is closed and logged.
#[test]
fn tls_port_refuses_a_truncated_client_hello() {
    let Some(case) = Case::start("tls-bad-truncated", &["--head-timeout", "2"]) else {
        return;
    };
    let hello = client_hello([3, 3]);
    let mut stream = case.connect_tls();
    stream.write_all(&hello[..hello.len() / 2]).unwrap();
    done_sending(&stream);
    let bytes = assert_closed(&mut stream, &case);
    assert!(bytes.is_empty() || bytes[0] == 0x15, "{bytes:x?}");
    case.server.wait_log("during the TLS handshake", 1);
    // And the half that never ends: the head deadline closes it.
    let mut stream = case.connect_tls();
    stream.write_all(&hello[..hello.len() / 2]).unwrap();
    assert_closed(&mut stream, &case);
    case.finish(0);
}

/// A ClientHello record longer than TLS allows (2^14 + 2048 bytes, RFC 8446
/// §5.2), and a ClientHello message claiming 16 MiB over many records: both
/// refused long before the bytes are all sent.
#[test]
fn tls_port_refuses_an_oversized_client_hello() {
    let Some(case) = Case::start("tls-bad-oversized", &["--head-timeout", "2"]) else {
        return;
    };
    let mut stream = case.connect_tls();
    let mut record = vec![0x16, 3, 1, 0xff, 0xff, 1, 0x00, 0xff, 0xfb];
    record.extend(vec![0x41; 0xffff - 4]);
    let _ = stream.write_all(&record);
    let bytes = assert_closed(&mut stream, &case);
    assert!(bytes.is_empty() || bytes[0] == 0x15, "{bytes:x?}");

    let mut stream = case.connect_tls();
    let started = Instant::now();
    let mut sent = 0usize;
    let mut message = vec![1, 0xff, 0xff, 0xff];
    message.extend(&client_hello([3, 3])[9..]);
    let mut ended = None;
    while sent < 16 << 20 && started.elapsed() < REFUSAL_BOUND {
        let chunk = if sent == 0 {
            message.clone()
        } else {
            vec![0x42; 16 * 1024]
        };
        let mut record = vec![0x16, 3, 3];
        record.extend((chunk.len() as u16).to_be_bytes());
        record.extend(chunk);
        match stream.write_all(&record) {
            Ok(()) => sent += record.len(),
            Err(e) => {
                ended = Some(e.kind());
                break;
            }
        }
    }
    // Refused at the first record: the client's writes fail as soon as the
    // reset arrives (the socket buffers of loopback take some MiB before).
    assert!(
        ended.is_some() && sent < 16 << 20 && started.elapsed() < REFUSAL_BOUND,
        "sockhook took {sent} bytes of one ClientHello in {:?}",
        started.elapsed()
    );
    case.server.wait_log("TLS handshake failed", 2);
    case.server.wait_log("TooLarge", 2);
    case.finish(0);
}

/// A handshake trickled a byte every 100 ms: at the head deadline (2 s) the
/// connection is closed, although bytes keep coming.
#[test]
fn tls_port_times_out_a_slowloris_handshake() {
    let Some(case) = Case::start("tls-bad-slowloris", &["--head-timeout", "2"]) else {
        return;
    };
    let hello = client_hello([3, 3]);
    let stream = case.connect_tls();
    let started = Instant::now();
    let mut writer = stream.try_clone().unwrap();
    let trickle = thread::spawn(move || {
        for byte in hello.iter().cycle() {
            // Pacing, not waiting: the client's own slowness is the input.
            thread::sleep(Duration::from_millis(100));
            if writer.write_all(&[*byte]).is_err() || started.elapsed() > REFUSAL_BOUND {
                return started.elapsed();
            }
        }
        unreachable!()
    });
    let mut reader = stream;
    let (_, error, took) = read_until_closed(&mut reader);
    assert!(
        !matches!(
            error,
            Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        ),
        "still open after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(1900),
        "closed before the deadline: {took:?}"
    );
    assert!(took < REFUSAL_BOUND, "took {took:?}");
    let stopped = trickle.join().unwrap();
    assert!(
        stopped < REFUSAL_BOUND,
        "the trickle went on for {stopped:?}"
    );
    case.server.wait_log("408", 1);
    case.finish(0);
}

/// A client that sends a whole ClientHello, reads the server's first
/// flight, and vanishes: once with a FIN, once with a reset.
#[test]
fn tls_port_survives_a_client_vanishing_mid_handshake() {
    let Some(case) = Case::start("tls-bad-vanish", &["--head-timeout", "2"]) else {
        return;
    };
    for reset in [false, true] {
        let mut stream = case.connect_tls();
        stream.write_all(&client_hello([3, 3])).unwrap();
        let mut first = [0; 6];
        stream.read_exact(&mut first).unwrap();
        assert_eq!(first[5], 2, "not a ServerHello: {first:x?}");
        if !reset {
            // A FIN while the rest of the server's flight is unread (closing
            // now would make our kernel send a reset), then its close.
            done_sending(&stream);
            assert_closed(&mut stream, &case);
        } else {
            let linger = nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &linger)
                .unwrap();
        }
        drop(stream);
    }
    case.server.wait_log("during the TLS handshake", 1);
    case.server.wait_log("TLS handshake failed", 1);
    case.finish(0);
}

// ---------------------------------------------------------------------------
// Certificates: reload, broken files, no key in the log
// ---------------------------------------------------------------------------

/// The SHA-256 fingerprint of the certificate the server at `addr` sends.
fn served_fingerprint(addr: SocketAddr, dir: &Path) -> String {
    let connect = addr.to_string();
    let out = run(
        "openssl",
        &["s_client", "-connect", &connect, "-servername", "localhost"],
        b"",
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = said
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("{said}"));
    let end = said.find("-----END CERTIFICATE-----").unwrap() + 25;
    let pem = dir.join("served.pem");
    fs::write(&pem, &said[start..end]).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-in",
            pem.to_str().unwrap(),
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    )
    .trim()
    .to_owned()
}

/// Renewal: the certificate files are replaced between two activations
/// (same paths, as certbot's symlinks change); the second activation serves
/// the new certificate, with no restart of anything in between.
#[test]
fn a_certificate_replaced_between_activations_is_served_by_the_next() {
    if !need_tools(&["openssl", "curl"]) {
        return;
    }
    let f = Fixture::new("tls-reload");
    let pki = Pki::new(&f.dir.join("pki"));
    let old = pki.localhost("old");
    let new = pki.localhost("new");
    let live = Leaf {
        cert: f.dir.join("live.crt"),
        key: f.dir.join("live.key"),
    };
    let install = |from: &Leaf| {
        // As certbot does: new files, then a rename over the names in use.
        for (src, dst) in [(&from.cert, &live.cert), (&from.key, &live.key)] {
            let tmp = dst.with_extension("tmp");
            fs::copy(src, &tmp).unwrap();
            fs::rename(&tmp, dst).unwrap();
        }
    };
    install(&old);
    assert_ne!(old.fingerprint(), new.fingerprint());
    let case = Case::with(f, pki, live.clone(), &["--idle-timeout", "1"]);
    assert_eq!(
        served_fingerprint(case.tls, &case.pki.dir),
        old.fingerprint()
    );
    case.curl_post();
    case.wait_runs(1);
    // First activation: idle exit.
    let Case {
        f,
        pki,
        leaf,
        server,
        ..
    } = case;
    let (status, log) = server.wait(PATIENCE);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("exiting (idle)"), "{log}");
    install(&new);
    // The second activation's log counts its own runs only.
    fs::remove_file(f.dir.join("a.runs")).unwrap();
    let case = Case::with(f, pki, leaf, &[]);
    assert_eq!(
        served_fingerprint(case.tls, &case.pki.dir),
        new.fingerprint()
    );
    let log = case.finish(0);
    assert_no_key(&log, &old);
    assert_no_key(&log, &new);
}

/// Broken certificate files: HTTPS connections are closed unanswered, the
/// log says which file and why, never a byte of the key, and the plain
/// socket serves on.
#[test]
fn a_broken_key_is_logged_without_its_bytes_and_plain_http_goes_on() {
    if !need_tools(&["openssl", "curl"]) {
        return;
    }
    let f = Fixture::new("tls-broken");
    let pki = Pki::new(&f.dir.join("pki"));
    let good = pki.localhost("good");
    let other = pki.localhost("other");
    // A key cut in half (a partial copy), then the key of another certificate.
    let pem = fs::read_to_string(&good.key).unwrap();
    let cut = Leaf {
        cert: good.cert.clone(),
        key: f.dir.join("cut.key"),
    };
    fs::write(&cut.key, &pem[..pem.len() / 2]).unwrap();
    let mismatched = Leaf {
        cert: good.cert.clone(),
        key: other.key.clone(),
    };
    for (leaf, says) in [
        (&cut, "holds no PEM private key"),
        (&mismatched, "does not go with the certificate"),
    ] {
        let case = Case::with(
            Fixture::new("tls-broken"),
            Pki {
                dir: pki.dir.clone(),
                ca: pki.ca.clone(),
            },
            leaf.clone(),
            &[],
        );
        let mut stream = case.connect_tls();
        let _ = stream.write_all(&client_hello([3, 3]));
        let bytes = assert_closed(&mut stream, &case);
        assert!(bytes.is_empty(), "{bytes:x?}");
        case.server.wait_log(says, 1);
        let reply = case.server.post(
            "/hooks/a",
            &[&format!("Authorization: Bearer {}", case.token)],
            BODY.as_bytes(),
        );
        assert_eq!(reply.status(), 204, "{reply:?}");
        case.wait_runs(1);
        let log = case.server.log();
        assert!(log.contains(&leaf.key.display().to_string()), "{log}");
        assert_no_key(&log, &good);
        assert_no_key(&log, &other);
        let (status, log) = case.server.stop();
        assert_eq!(status.code(), Some(0), "{log}");
    }
}

/// Clean close through TLS: a client that writes a whole 1 MiB body before
/// reading (as phone apps do) to a hook that takes 1 KiB gets the whole 413,
/// then close_notify, then EOF, never a reset; twenty times over.
#[test]
fn a_client_writing_1_mib_before_reading_gets_the_whole_413() {
    let Some(case) = Case::start("tls-close", &[]) else {
        return;
    };
    let roots = {
        let mut roots = rustls::RootCertStore::empty();
        let pem = fs::read(&case.pki.ca).unwrap();
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        Arc::new(roots)
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let body = vec![b'x'; 1 << 20];
    let request = post(
        "/hooks/a",
        &[&format!("Authorization: Bearer {}", case.token)],
        &body,
    );
    for round in 0..20 {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::clone(&config), name).unwrap();
        let tcp = TcpStream::connect(case.tls).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        tcp.set_write_timeout(Some(PATIENCE)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(&request)
            .unwrap_or_else(|e| panic!("round {round}: writing: {e}\n{}", case.server.log()));
        tls.flush().unwrap();
        let mut response = Vec::new();
        // Ok only when the server's close_notify came: an EOF without it is
        // UnexpectedEof, a reset is ConnectionReset.
        let ended = tls.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response);
        assert!(
            ended.is_ok(),
            "round {round}: {ended:?} after {text:?}\n{}",
            case.server.log()
        );
        assert!(text.starts_with("HTTP/1.1 413 "), "round {round}: {text:?}");
        let (head, rest) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(rest.len(), length, "round {round}: {text:?}");
    }
    case.server.wait_log(" 413", 20);
    case.finish(0);
}

// ---------------------------------------------------------------------------
// sockhook check
// ---------------------------------------------------------------------------

/// `sockhook check --tls-cert --tls-key`, as user `as_user` (a uid) when
/// given; returns the exit code and stdout.
fn check(f: &Fixture, leaf: &Leaf, as_user: Option<u32>) -> (i32, String) {
    let mut command = match as_user {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "--",
                BIN,
            ]);
            c
        }
        None => Command::new(BIN),
    };
    let out = command
        .args(["check", "--hooks"])
        .arg(&f.hooks)
        .arg("--key")
        .arg(&f.key)
        .arg("--tls-cert")
        .arg(&leaf.cert)
        .arg("--tls-key")
        .arg(&leaf.key)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), said)
}

/// Each thing `sockhook check` says about a certificate, one row each: the
/// exit code, and the words (with the fix) the line must have.
#[test]
fn check_reports_each_certificate_problem_with_its_fix() {
    if !need_tools(&["openssl", "setpriv"]) {
        return;
    }
    let f = Fixture::new("tls-check");
    // Readable by an unprivileged user, for the "unreadable" row.
    for dir in [&f.dir, &f.hooks] {
        fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let pki = Pki::new(&f.dir.join("pki"));
    fs::set_permissions(
        &pki.dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let names = &["localhost"];
    let good = pki.leaf("good", names, "-1 hour", "+90 days -1 hour", "ec");
    let rsa = pki.leaf("rsa", names, "-1 hour", "+90 days", "rsa");
    // Not "+5 days": within the same second that would be 5 whole days.
    let soon = pki.leaf("soon", names, "-80 days", "+5 days -1 hour", "ec");
    let future = pki.leaf("future", names, "+2 days", "+90 days", "ec");
    let expired = pki.leaf("expired", names, "-90 days", "-1 day", "ec");
    let missing_cert = Leaf {
        cert: pki.dir.join("nothing.crt"),
        key: good.key.clone(),
    };
    let missing_key = Leaf {
        cert: good.cert.clone(),
        key: pki.dir.join("nothing.key"),
    };
    let mismatched = Leaf {
        cert: good.cert.clone(),
        key: rsa.key.clone(),
    };
    let not_pem = Leaf {
        cert: f.key.clone(),
        key: good.key.clone(),
    };
    let open_key = pki.leaf("open", names, "-1 hour", "+90 days", "ec");
    fs::set_permissions(
        &open_key.key,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    struct Row<'a> {
        name: &'static str,
        leaf: &'a Leaf,
        user: Option<u32>,
        code: i32,
        says: &'static [&'static str],
    }
    let nobody = 65534;
    // /proc/self belongs to the effective user.
    let root = std::os::unix::fs::MetadataExt::uid(&fs::metadata("/proc/self").unwrap()) == 0;
    let rows = [
        Row {
            name: "good",
            leaf: &good,
            user: None,
            code: 0,
            says: &["ok: HTTPS certificate chain of 1, valid until", "(89 days)"],
        },
        Row {
            name: "rsa",
            leaf: &rsa,
            user: None,
            code: 0,
            says: &["ok: HTTPS certificate chain"],
        },
        Row {
            name: "expiring within 14 days",
            leaf: &soon,
            user: None,
            code: 0,
            says: &[
                "warning: the certificate expires on",
                "in 4 day(s)",
                "certbot renew",
            ],
        },
        Row {
            name: "not yet valid",
            leaf: &future,
            user: None,
            code: 1,
            says: &["not valid yet: from", "check the clock"],
        },
        Row {
            name: "expired",
            leaf: &expired,
            user: None,
            code: 1,
            says: &["expired on", "renew it"],
        },
        Row {
            name: "missing certificate",
            leaf: &missing_cert,
            user: None,
            code: 1,
            says: &[
                "nothing.crt: the HTTPS certificate chain is missing",
                "fullchain.pem",
                "--tls-cert",
            ],
        },
        Row {
            name: "missing key",
            leaf: &missing_key,
            user: None,
            code: 1,
            says: &[
                "nothing.key: the HTTPS private key is missing",
                "privkey.pem",
                "--tls-key",
            ],
        },
        Row {
            name: "key of another certificate",
            leaf: &mismatched,
            user: None,
            code: 1,
            says: &[
                "rsa.key: does not go with the certificate",
                "use the key the certificate was issued for",
            ],
        },
        Row {
            name: "not a certificate",
            leaf: &not_pem,
            user: None,
            code: 1,
            says: &["holds no certificate"],
        },
        Row {
            name: "key readable by everyone",
            leaf: &open_key,
            user: None,
            code: 1,
            says: &["every user can read the HTTPS private key (mode 644); chmod 600 it"],
        },
        Row {
            name: "unreadable key",
            leaf: &good,
            user: root.then_some(nobody),
            code: 1,
            says: &[
                "good.key: the HTTPS private key is unreadable",
                "LoadCredential=",
            ],
        },
    ];
    for row in &rows {
        if row.name == "unreadable key" && !root {
            // Not root: make it unreadable for ourselves instead.
            fs::set_permissions(
                &good.key,
                std::os::unix::fs::PermissionsExt::from_mode(0o000),
            )
            .unwrap();
        }
        let (code, said) = check(&f, row.leaf, row.user);
        assert_eq!(code, row.code, "{}: {said}", row.name);
        for words in row.says {
            assert!(
                said.contains(words),
                "{}: no {words:?} in:\n{said}",
                row.name
            );
        }
        assert_no_key(&said, row.leaf);
    }
    if ci() {
        assert!(
            root,
            "CI runs the tests as root, where the unreadable row uses setpriv"
        );
    }
}

/// Without `--tls-cert`/`--tls-key` and with no certificate file, check
/// says nothing about HTTPS: it is not configured, which is no problem.
#[test]
fn check_is_silent_about_https_when_it_is_not_configured() {
    let f = Fixture::new("tls-check-none");
    let out = Command::new(BIN)
        .args(["check", "--hooks"])
        .arg(&f.hooks)
        .arg("--key")
        .arg(&f.key)
        .env("CREDENTIALS_DIRECTORY", f.dir.join("no-credentials"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(!said.contains("HTTPS"), "{said}");
}

/// The shipped binary, HTTPS included, stays within 2.5 MiB stripped (issue
/// 12). Release builds only: the release profile strips (`strip = true`);
/// a debug build is not what ships.
#[test]
fn the_stripped_release_binary_stays_within_2_5_mib() {
    const LIMIT: u64 = 5 * 1024 * 1024 / 2;
    if cfg!(debug_assertions) {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: a debug build; cargo test --release checks the size"
        );
        return;
    }
    let size = fs::metadata(BIN).unwrap().len();
    assert!(size <= LIMIT, "{BIN} is {size} bytes, over {LIMIT}");
    // Stripped indeed: no symbol table.
    let out = Command::new("sh")
        .args([
            "-c",
            &format!("LC_ALL=C readelf -S {BIN} 2>/dev/null | grep -c '[.]symtab' || true"),
        ])
        .output()
        .unwrap();
    if have("readelf") {
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "0",
            "{BIN} has a symbol table"
        );
    }
}

/// Over the per-source connection cap, a plain connection is told 503; a
/// TLS connection must not be sent that plain text (a TLS client reads it
/// as a corrupt record: "wrong version number"), only closed.
#[test]
fn over_the_per_source_cap_a_tls_client_gets_no_plain_text() {
    let Some(case) = Case::start("tls-cap", &["--max-connections-per-source", "1"]) else {
        return;
    };
    // The one connection 127.0.0.1 may have, held open.
    let holder = case.connect_tls();
    holder.set_nodelay(true).unwrap();
    let mut over = case.connect_tls();
    let _ = over.write_all(&client_hello([3, 3]));
    let bytes = assert_closed(&mut over, &case);
    assert!(
        !bytes.starts_with(b"HTTP/"),
        "plain HTTP on a TLS socket: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    case.server
        .wait_log("over the limit of 1 at once per source", 1);
    // The plain socket still answers 503 over the cap.
    let mut plain = TcpStream::connect(case.server.addr).unwrap();
    let reply = exchange(&mut plain, b"");
    assert_eq!(reply.status(), 503, "{reply:?}");
    drop(holder);
    case.server.wait_log("closed during the TLS handshake", 1);
    case.finish(0);
}

/// Under steady HTTPS traffic an activation never goes idle, so it would
/// keep its certificate forever: `--max-lifetime` ends it at the first
/// quiet moment past that age, which is what bounds how long an old
/// certificate is served after a renewal (README, HTTPS).
#[test]
fn max_lifetime_ends_an_activation_under_steady_traffic() {
    let Some(case) = Case::start("tls-lifetime", &["--max-lifetime", "1"]) else {
        return;
    };
    let started = Instant::now();
    let (tls, ca, token) = (case.tls, case.pki.ca.clone(), case.token.clone());
    // A request every 100 ms (pacing: the traffic is the input) until the
    // socket is gone with the process.
    let traffic = thread::spawn(move || {
        let (user, url) = (
            format!("{token}:"),
            format!("https://localhost:{}/hooks/a", tls.port()),
        );
        let resolve = format!("localhost:{}:127.0.0.1", tls.port());
        let mut answered = 0;
        while started.elapsed() < PATIENCE {
            let (status, _) = curl(&[
                "--cacert",
                ca.to_str().unwrap(),
                "--resolve",
                &resolve,
                "-u",
                &user,
                "-d",
                BODY,
                &url,
            ]);
            match status {
                204 => answered += 1,
                _ => return answered,
            }
            thread::sleep(Duration::from_millis(100));
        }
        answered
    });
    let Case { server, f, .. } = case;
    let (status, log) = server.wait(PATIENCE);
    let lived = started.elapsed();
    let answered = traffic.join().unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("exiting (served its --max-lifetime"), "{log}");
    assert!(answered >= 3, "only {answered} requests answered:\n{log}");
    assert!(lived >= Duration::from_secs(1), "exited after {lived:?}");
    assert!(!log.contains("exiting (idle)"), "{log}");
    assert_eq!(f.runs("a"), log.matches(" exited 0 after ").count());
}
