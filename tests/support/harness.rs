//! Starts the real `sockhook` binary on a real socket, exactly as systemd does
//! (listening socket on fd 3, `LISTEN_FDS=1`, `LISTEN_PID` set in the child), or
//! with `--listen`, or with a connected socket (`Accept=yes`), and talks to it
//! over TCP.
//!
//! Every wait is bounded ([`PATIENCE`]) and waits for a condition, never for
//! time. A server with a short `--idle-timeout` that gets more than one request
//! is started guarded ([`Fixture::serve_guarded`], [`Served`]), so that a slow
//! machine cannot see it exit in between; [`Server::stop`] stops one as
//! `systemctl stop` does. What tests send is signed here ([`hmac_sha256`]),
//! independently of sockhook.

#![allow(unsafe_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sockhook");
/// Upper bound for any wait in these tests.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A directory with a server key and a hooks directory.
pub struct Fixture {
    pub dir: PathBuf,
    pub hooks: PathBuf,
    pub key: PathBuf,
}

impl Fixture {
    /// A fresh fixture under cargo's per-test temporary directory.
    pub fn new(name: &str) -> Fixture {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{name}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        let hooks = dir.join("hooks.d");
        fs::create_dir_all(&hooks).unwrap();
        let key = dir.join("key");
        fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        Fixture { dir, hooks, key }
    }

    /// Writes `hooks.d/NAME.toml`.
    pub fn hook(&self, name: &str, toml: &str) -> &Fixture {
        fs::write(self.hooks.join(format!("{name}.toml")), toml).unwrap();
        self
    }

    /// Writes hook `name` running `command` with token auth and `extra`
    /// keys; returns its `Authorization: Bearer …` header line.
    pub fn token_hook(&self, name: &str, command: &Path, extra: &str) -> String {
        self.hook(
            name,
            &format!("command = [{command:?}]\nauth = \"token\"\n{extra}"),
        );
        format!(
            "Authorization: Bearer {}",
            self.token(&format!("/hooks/{name}"))
        )
    }

    /// Writes an executable shell script in the fixture and returns its path.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A script that appends one line per run to `NAME.runs` and saves its stdin
    /// and environment of the last run in `NAME.stdin` and `NAME.env`.
    pub fn recorder(&self, name: &str) -> PathBuf {
        let d = self.dir.display();
        self.script(
            &format!("{name}.sh"),
            &format!("cat > {d}/{name}.stdin\nenv > {d}/{name}.env\necho run >> {d}/{name}.runs"),
        )
    }

    /// How many times the recorder called `name` ran.
    pub fn runs(&self, name: &str) -> usize {
        fs::read_to_string(self.dir.join(format!("{name}.runs"))).map_or(0, |s| s.lines().count())
    }

    /// A file the fixture's scripts wrote.
    pub fn read(&self, file: &str) -> Vec<u8> {
        fs::read(self.dir.join(file)).unwrap_or_default()
    }

    /// The token for `path` with the fixture's key, from `sockhook token`.
    pub fn token(&self, path: &str) -> String {
        let out = Command::new(BIN)
            .args(["token", path, "--key"])
            .arg(&self.key)
            .output()
            .unwrap();
        assert!(out.status.success(), "sockhook token failed: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Shell lines that wait (bounded, 20 s) until the fixture's gate is
    /// open: scripts use them to hold a run until the test says so.
    pub fn gate_wait(&self) -> String {
        format!(
            "i=0; while [ ! -e {} ] && [ $i -lt 2000 ]; do sleep 0.01; i=$((i+1)); done",
            self.dir.join("gate").display()
        )
    }

    /// Opens the gate: the runs waiting at [`Fixture::gate_wait`] go on.
    pub fn open_gate(&self) {
        fs::write(self.dir.join("gate"), "").unwrap();
    }

    /// `sockhook check --hooks … --key …` on the fixture's hooks and key.
    pub fn check(&self) -> Output {
        Command::new(BIN)
            .args(["check", "--hooks"])
            .arg(&self.hooks)
            .arg("--key")
            .arg(&self.key)
            .output()
            .unwrap()
    }

    /// `sockhook serve --hooks … --key …` plus `args`, on a listening socket
    /// passed as fd 3, the way systemd's `Accept=no` does it.
    pub fn serve(&self, args: &[&str]) -> Server {
        self.serve_with_env(args, &[])
    }

    /// The same with a connected socket on fd 3, as systemd's `Accept=yes` does
    /// it; returns the server and the client end.
    pub fn serve_connection(&self, args: &[&str]) -> (Server, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let child = spawn_with_fd3(piped(self.activation(args)), accepted.as_raw_fd());
        (Server::new(child, addr), client)
    }

    /// `sockhook serve --listen 127.0.0.1:PORT`, waiting until it accepts; the
    /// connection that found it accepting stays open as the guard (see [`Served`]).
    pub fn serve_listen(&self, args: &[&str]) -> Served {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut command = Command::new(BIN);
        command.args(["serve", "--listen", &addr.to_string(), "--hooks"]);
        command
            .arg(&self.hooks)
            .arg("--key")
            .arg(&self.key)
            .args(guarded_args(args));
        let mut server = Server::new(spawn(command), addr);
        let deadline = Instant::now() + PATIENCE;
        let guard = loop {
            if let Ok(stream) = TcpStream::connect(addr) {
                break stream;
            }
            assert!(
                server.running() && Instant::now() < deadline,
                "--listen never accepted: {}",
                server.log()
            );
            thread::sleep(Duration::from_millis(10));
        };
        Served { server, guard }
    }

    /// `sockhook serve --hooks … --key …` plus `args`, with `LISTEN_FDS=1` and
    /// `LISTEN_PID` set to sockhook's own pid, as systemd starts it; the caller
    /// puts the socket on fd 3 with [`spawn_with_fd3`] and chooses stdio.
    pub fn activation(&self, args: &[&str]) -> Command {
        // LISTEN_PID must be the pid of sockhook itself: a shell learns its own pid
        // and execs the binary, keeping it (activate.c sets it after fork the same way).
        let mut command = Command::new("/bin/sh");
        command
            .args([
                "-c",
                "export LISTEN_PID=$$; exec \"$0\" \"$@\"",
                BIN,
                "serve",
                "--hooks",
            ])
            .arg(&self.hooks)
            .arg("--key")
            .arg(&self.key)
            .args(args)
            .env("LISTEN_FDS", "1");
        command
    }
}

/// A socket on 127.0.0.1 listening with `backlog`.
fn listener_with_backlog(backlog: i32) -> TcpListener {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, socket,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
    listen(&fd, Backlog::new(backlog).unwrap()).unwrap();
    TcpListener::from(fd)
}

/// Spawns `command` with `fd` moved to fd 3; stdio stays as the caller set it.
pub fn spawn_with_fd3(mut command: Command, fd: RawFd) -> Child {
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if fd == 3 {
                let flags = nix::libc::fcntl(3, nix::libc::F_GETFD);
                nix::libc::fcntl(3, nix::libc::F_SETFD, flags & !nix::libc::FD_CLOEXEC);
            } else if nix::libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().unwrap()
}

/// Waits for `child` to exit; kills it and panics after `within`.
pub fn wait_within(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {within:?}", child.id());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// [`Child::wait_with_output`], bounded: reads stdout and stderr (where piped)
/// while it waits; kills the child and panics with its stderr after `within`.
pub fn output_within(mut child: Child, within: Duration) -> Output {
    fn collect(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "process {} did not exit within {within:?}; stderr:\n{}",
            child.id(),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

fn spawn(command: Command) -> Child {
    piped(command).spawn().unwrap()
}

/// No stdin, no stdout, stderr piped to the test for `Server::log`.
fn piped(mut command: Command) -> Command {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// A running sockhook and everything it logged so far.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Server {
    fn new(mut child: Child, addr: SocketAddr) -> Server {
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        let reader = thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Server {
            child,
            addr,
            log,
            reader: Some(reader),
        }
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle` `count` times; panics after [`PATIENCE`].
    pub fn wait_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "waited for {count} × {needle:?} in the log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit; panics after `within`.
    pub fn wait(mut self, within: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sockhook did not exit within {within:?}:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(10));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (status, self.log())
    }

    /// Stops the server as `systemctl stop` does: SIGTERM, then waits for the
    /// exit (at most [`PATIENCE`]; after that it is killed and the test fails).
    /// Returns the exit status and the whole log, as [`Server::wait`] does.
    ///
    /// sockhook finishes the connections in progress before it exits, so a
    /// connection the test still holds open (a [`Served`] guard) delays the
    /// exit: stop a guarded server with [`Served::stop`].
    pub fn stop(self) -> (ExitStatus, String) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
            panic!("cannot send SIGTERM to sockhook {pid}: {e}\n{}", self.log());
        }
        self.wait(PATIENCE)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a whole request, then reads the whole response.
    pub fn request(&self, bytes: &[u8]) -> Reply {
        let mut stream = self.connect();
        exchange(&mut stream, bytes)
    }

    /// A new connection to the server; panics with the log if there is none
    /// (most likely the server has exited: see [`Served`]).
    pub fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).unwrap_or_else(|e| {
            panic!(
                "cannot connect to sockhook at {}: {e}\n{}",
                self.addr,
                self.log()
            )
        })
    }

    /// A POST with `headers` (lines without CRLF) and `body`.
    pub fn post(&self, path: &str, headers: &[&str], body: &[u8]) -> Reply {
        self.request(&post(path, headers, body))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds a POST request with a Content-Length.
pub fn post(path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n",
        body.len()
    );
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(body);
    request
}

/// What came back on a connection.
#[derive(Debug)]
pub struct Reply {
    /// The bytes received before EOF.
    pub bytes: Vec<u8>,
    /// The read error that ended the connection, if it did not end with EOF.
    pub error: Option<std::io::ErrorKind>,
}

impl Reply {
    /// The head and body of the final response, after any `100 Continue`.
    fn final_response(&self) -> (String, String) {
        let text = String::from_utf8_lossy(&self.bytes);
        let mut rest = text.as_ref();
        while let Some(after) = rest.strip_prefix("HTTP/1.1 100 Continue\r\n\r\n") {
            rest = after;
        }
        match rest.split_once("\r\n\r\n") {
            Some((head, body)) => (head.to_owned(), body.to_owned()),
            None => (rest.to_owned(), String::new()),
        }
    }

    /// The status code of the final response, or 0 when there is none.
    pub fn status(&self) -> u16 {
        let (head, _) = self.final_response();
        head.strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }

    /// The first header called `name` (case-insensitive) of the final response.
    pub fn header(&self, name: &str) -> Option<String> {
        let (head, _) = self.final_response();
        head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    /// The body of the final response.
    pub fn body(&self) -> String {
        self.final_response().1
    }

    /// Whether the response is complete: ended by EOF (no reset) and, if it
    /// declares a Content-Length, with exactly that many body bytes.
    pub fn complete(&self) -> bool {
        self.error.is_none()
            && self.status() != 0
            && self
                .header("content-length")
                .is_none_or(|len| len.parse() == Ok(self.body().len()))
    }
}

/// Writes `bytes` (all of them, before reading anything, as phone apps do),
/// then reads until EOF or an error.
pub fn exchange(stream: &mut TcpStream, bytes: &[u8]) -> Reply {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    let written = stream.write_all(bytes);
    let mut reply = read_all(stream);
    if let (Err(e), None) = (written, reply.error) {
        reply.error = Some(e.kind());
    }
    reply
}

/// Reads until EOF or an error.
pub fn read_all(stream: &mut TcpStream) -> Reply {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Reply { bytes, error: None },
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Reply {
                    bytes,
                    error: Some(e.kind()),
                };
            }
        }
    }
}

/// Half-closes our side, as a client that is done sending.
pub fn done_sending(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
}

impl Fixture {
    /// [`Fixture::serve`] with `env` added to the server's own environment.
    pub fn serve_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        self.serve_on(&listener, args, env)
    }

    /// [`Fixture::serve`] on a socket listening with `backlog` (the units'
    /// `Backlog=`) rather than std's 128: for tests that open connections
    /// faster than one `accept` turn takes them.
    pub fn serve_with_backlog(&self, args: &[&str], backlog: i32) -> Server {
        self.serve_on(&listener_with_backlog(backlog), args, &[])
    }

    /// [`Fixture::serve_with_backlog`], with sockhook's soft limit on open
    /// files set to `open_files` (the hard limit stays): as systemd starts a
    /// unit without `LimitNOFILE=` (1024), or a shell with `ulimit -Sn`.
    pub fn serve_with_open_files(&self, args: &[&str], backlog: i32, open_files: u64) -> Server {
        let listener = listener_with_backlog(backlog);
        let mut command = piped(self.activation(args));
        // SAFETY: only async-signal-safe calls (getrlimit, setrlimit) between
        // fork and exec, on a struct on this closure's stack.
        unsafe {
            command.pre_exec(move || {
                let mut limit = nix::libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                limit.rlim_cur = open_files.min(limit.rlim_max);
                if nix::libc::setrlimit(nix::libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = spawn_with_fd3(command, listener.as_raw_fd());
        Server::new(child, listener.local_addr().unwrap())
    }

    /// [`Fixture::serve`], kept from its idle exit by a guard connection until
    /// the test lets go of it (see [`Served`]). For every server started with a
    /// short `--idle-timeout` that is sent more than one request, or that the
    /// test may reach late.
    pub fn serve_guarded(&self, args: &[&str]) -> Served {
        self.serve_guarded_with_env(args, &[])
    }

    /// [`Fixture::serve_guarded`] with `env` added to the server's environment.
    pub fn serve_guarded_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // Connected before sockhook exists: the guard waits in the backlog and is
        // the first connection sockhook accepts, so it is never running and idle.
        let guard = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let server = self.serve_on(&listener, &guarded_args(args), env);
        Served { server, guard }
    }

    /// [`Fixture::serve_guarded`] on `listener` (e.g. one bound to `[::1]`).
    pub fn serve_guarded_on(&self, listener: &TcpListener, args: &[&str]) -> Served {
        let guard = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let server = self.serve_on(listener, &guarded_args(args), &[]);
        Served { server, guard }
    }

    /// Starts sockhook with `listener` on fd 3; the test's copy closes on return.
    fn serve_on(&self, listener: &TcpListener, args: &[&str], env: &[(&str, &str)]) -> Server {
        let addr = listener.local_addr().unwrap();
        let mut command = piped(self.activation(args));
        command.envs(env.iter().copied());
        let child = spawn_with_fd3(command, listener.as_raw_fd());
        Server::new(child, addr)
    }
}

/// Request deadline given to guarded servers (seconds): longer than any test,
/// so that the guard, which never sends a request, is not answered 408 and
/// closed while the test still counts on it.
pub const GUARD_REQUEST_TIMEOUT: &str = "120";

/// `--request-timeout GUARD_REQUEST_TIMEOUT`, then `args`: a `--request-timeout`
/// of the test's own comes later and wins (and then also bounds the guard).
fn guarded_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--request-timeout", GUARD_REQUEST_TIMEOUT];
    all.extend_from_slice(args);
    all
}

/// A server kept from its idle exit by a guard: an open connection that sends
/// nothing. sockhook does not exit idle while any connection is open, so with a
/// short `--idle-timeout` a slow machine (or a test that takes its time between
/// two requests) cannot see it exit before the first request or between two of
/// them. It exits idle only after the test lets go: [`Served::release`],
/// [`Served::wait`], [`Served::stop`].
///
/// Everything else of [`Server`] is reached through `Deref`. The guard is an
/// ordinary connection: sockhook logs one line for it when it closes
/// (`closed without sending a request`), it counts towards the connection
/// limit, and it would be answered 408 at the request deadline, which is why
/// guarded servers get `--request-timeout` [`GUARD_REQUEST_TIMEOUT`].
pub struct Served {
    server: Server,
    guard: TcpStream,
}

impl std::ops::Deref for Served {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

impl Served {
    /// Closes the guard: from now on the server exits once it is idle.
    pub fn release(self) -> Server {
        let Served { server, guard } = self;
        drop(guard);
        server
    }

    /// Closes the guard, then waits for the idle exit ([`Server::wait`]).
    pub fn wait(self, within: Duration) -> (ExitStatus, String) {
        self.release().wait(within)
    }

    /// Closes the guard, then stops the server ([`Server::stop`]).
    pub fn stop(self) -> (ExitStatus, String) {
        self.release().stop()
    }
}

/// HMAC-SHA256 of `data` under `key`, with the hmac and sha2 crates: what a
/// test sends is computed independently of `sockhook::verify` and of
/// `sockhook sign`, so that a bug shared by sockhook's signer and its checker
/// cannot make a test pass.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Lower-case hex, as GitHub, Gitea and the tokens write a MAC. (There is no
/// hex crate among sockhook's dependencies, and this is all of it.)
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard base64 with padding (Basic credentials), from the base64 crate.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The `X-Hub-Signature-256` header line GitHub sends for `body` signed with
/// `secret`, computed here (see [`hmac_sha256`]).
pub fn github_signature(secret: &[u8], body: &[u8]) -> String {
    format!(
        "X-Hub-Signature-256: sha256={}",
        hex(&hmac_sha256(secret, body))
    )
}

/// The header line `sockhook sign --scheme SCHEME --secret FILE` prints for
/// `body`: for tests of `sockhook sign` itself, which compare it with
/// [`hmac_sha256`]; a test that needs a valid signature computes it itself.
pub fn signature_header(scheme: &str, secret: &Path, body: &[u8]) -> String {
    let mut child = Command::new(BIN)
        .args(["sign", "--scheme", scheme, "--secret"])
        .arg(secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sockhook sign failed: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
}

/// Runs `program args` with `stdin` written to it (by a thread, so that a
/// program that writes before it reads cannot block on us), at most
/// [`PATIENCE`]; panics if it cannot be started.
pub fn run_with_stdin(program: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = output_within(child, PATIENCE);
    writer.join().unwrap();
    out
}

/// Runs `curl -sS -o /dev/null -w %{http_code}` with `args` (at most 10 s);
/// returns the status curl saw (0 if none) and curl's stderr.
pub fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(args)
        .output()
        .expect("curl is installed");
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (status, String::from_utf8_lossy(&out.stderr).into_owned())
}

impl Fixture {
    /// `sockhook serve` with several listening sockets, `fds` (TCP or Unix),
    /// passed as fds 3, 4, … with `LISTEN_FDS` and `LISTEN_FDNAMES` (`names`,
    /// colon-separated), as systemd passes the sockets of several `.socket`
    /// units to one service. [`Server::addr`] is `addr`, the TCP socket that
    /// [`Server::request`] and the like connect to.
    pub fn serve_named(
        &self,
        fds: &[RawFd],
        addr: SocketAddr,
        names: &str,
        args: &[&str],
    ) -> Server {
        let fds = fds.to_vec();
        assert!(fds.len() <= 16, "at most 16 sockets");
        let mut command = piped(self.activation(args));
        command
            .env("LISTEN_FDS", fds.len().to_string())
            .env("LISTEN_FDNAMES", names);
        // SAFETY: only async-signal-safe calls (fcntl, dup2, close) between
        // fork and exec; `fds` was allocated before the fork.
        unsafe {
            command.pre_exec(move || {
                // Out of the way first, so that no fd is overwritten before it is moved.
                let mut moved = [0; 16];
                for (i, &fd) in fds.iter().enumerate() {
                    moved[i] = nix::libc::fcntl(fd, nix::libc::F_DUPFD, 100);
                    if moved[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, &fd) in moved[..fds.len()].iter().enumerate() {
                    if nix::libc::dup2(fd, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    nix::libc::close(fd);
                }
                Ok(())
            });
        }
        Server::new(command.spawn().unwrap(), addr)
    }
}
