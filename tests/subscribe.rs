//! `sockhook subscribe`, the home side of a relay (doc/relay.md), through the
//! real binary over real loopback sockets, against the real relay (`sockhook
//! serve` with `publish = true` hooks and a state directory): each message
//! journaled, then run by the local `auth = "relay"` hook; the resume point
//! read back from the journal; retention gaps logged; TLS checked against the
//! CA given; a refused token retried with backoff; a dead connection noticed
//! by ping.
//!
//! What a correct relay never does — send a sequence number twice — comes
//! from `tests/support/standin_relay.py`, the relay's side of doc/relay.md
//! written with Python's websockets (no one here wrote it). Runs that must
//! still be going while a test acts wait for a gate file the test creates.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::harness::*;
use support::net::free_port;
use support::pki::{self, Pki};

const STANDIN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/standin_relay.py"
);
const EPOCH: &str = "00112233aabbccdd";

/// Whether the stand-in can run: Python's websockets (CI installs it).
fn standin_or_skip() -> bool {
    let found = Command::new("/usr/bin/python3")
        .args(["-c", "import websockets.asyncio.server"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !pki::ci(),
            "CI=true but python3 cannot import websockets (pip install websockets)"
        );
        eprintln!("skipped: python3 websockets is not installed");
    }
    found
}

/// A child process whose stderr is collected.
struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Proc {
    fn spawn(mut command: Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for pipe in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let sink = Arc::clone(&log);
            readers.push(thread::spawn(move || {
                let mut pipe = pipe;
                let mut buf = [0; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }));
        }
        Proc {
            child,
            log,
            readers,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log holds `needle` `count` times.
    fn wait_log(&self, needle: &str, count: usize) {
        wait_for(
            &format!("{count} × {needle:?} in the log"),
            || self.log().matches(needle).count() >= count,
            || self.log(),
        );
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, as `systemctl stop` sends; the exit code and the log.
    fn stop(mut self) -> (i32, String) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Its pipes end with it (a run it left behind would hold them: none does).
                for reader in std::mem::take(&mut self.readers) {
                    reader.join().unwrap();
                }
                return (status.code().unwrap_or(-1), self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, as a crash.
    fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `ready` until it holds; panics with `what` and `context()` after [`PATIENCE`].
fn wait_for(what: &str, mut ready: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + PATIENCE;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "waited for {what}:\n{}",
            context()
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// The stand-in relay: its websocket port, its control port, its store.
struct Relay {
    proc: Option<Proc>,
    port: u16,
    control: u16,
    store: PathBuf,
    token: String,
    tls: Option<(PathBuf, PathBuf)>,
}

impl Relay {
    fn start(dir: &Path, token: &str, tls: Option<(PathBuf, PathBuf)>) -> Relay {
        let mut relay = Relay {
            proc: None,
            port: free_port(),
            control: free_port(),
            store: dir.join("relay-store.json"),
            token: token.to_owned(),
            tls,
        };
        relay.restart();
        relay
    }

    /// Starts it again (same ports, same store), after [`Relay::kill`].
    fn restart(&mut self) {
        let mut command = Command::new("/usr/bin/python3");
        command
            .arg(STANDIN)
            .arg(self.port.to_string())
            .arg(self.control.to_string())
            .arg(&self.store)
            .arg(&self.token)
            .arg(EPOCH);
        if let Some((cert, key)) = &self.tls {
            command.arg(cert).arg(key);
        }
        let proc = Proc::spawn(command);
        proc.wait_log("ready", 1);
        self.proc = Some(proc);
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    fn control(&self, command: serde_json::Value) -> serde_json::Value {
        let mut stream = TcpStream::connect(("127.0.0.1", self.control)).unwrap();
        stream.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    /// Publishes `body` to `hook`; its seq.
    fn publish(&self, hook: &str, body: &str) -> u64 {
        self.control(
            serde_json::json!({"op": "publish", "hook": hook, "body": body, "event": "push"}),
        )["seq"]
            .as_u64()
            .unwrap()
    }

    fn clients(&self) -> u64 {
        self.control(serde_json::json!({"op": "state"}))["clients"]
            .as_u64()
            .unwrap()
    }

    fn resumes(&self) -> Vec<serde_json::Value> {
        self.control(serde_json::json!({"op": "state"}))["resumes"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until `n` subscribers are connected.
    fn wait_clients(&self, n: u64) {
        wait_for(
            &format!("{n} subscriber(s)"),
            || self.clients() == n,
            String::new,
        );
    }
}

/// The real relay: `sockhook serve --listen` (and `--listen-tls` with a
/// certificate) with a state directory, its hooks publishing.
struct RealRelay {
    f: Fixture,
    proc: Option<Proc>,
    port: u16,
    tls: Option<(u16, PathBuf, PathBuf)>,
}

impl RealRelay {
    /// A relay whose hooks `names` publish (token auth) with `extra` keys.
    fn start(
        name: &str,
        names: &[&str],
        extra: &str,
        tls: Option<(PathBuf, PathBuf)>,
    ) -> RealRelay {
        let f = Fixture::new(name);
        for hook in names {
            f.hook(hook, &format!("publish = true\nauth = \"token\"\n{extra}"));
        }
        let mut relay = RealRelay {
            f,
            proc: None,
            port: free_port(),
            tls: tls.map(|(cert, key)| (free_port(), cert, key)),
        };
        relay.restart();
        relay
    }

    /// Starts it again (same ports, same state), after [`RealRelay::kill`].
    fn restart(&mut self) {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--hooks"])
            .arg(&self.f.hooks)
            .arg("--key")
            .arg(&self.f.key)
            .arg("--state")
            .arg(self.f.dir.join("state"))
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .env_remove("STATE_DIRECTORY")
            .env_remove("LISTEN_FDS")
            .env_remove("NOTIFY_SOCKET");
        if let Some((port, cert, key)) = &self.tls {
            command
                .args(["--listen-tls", &format!("127.0.0.1:{port}")])
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
        }
        let proc = Proc::spawn(command);
        proc.wait_log("listening on", 1);
        self.proc = Some(proc);
    }

    /// SIGKILL, as a crash or `systemctl kill -s KILL`.
    fn kill(&mut self) {
        if let Some(proc) = self.proc.take() {
            proc.kill();
        }
    }

    fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log).unwrap_or_default()
    }

    /// The subscriber URL of `path`: wss:// when the relay has TLS.
    fn url(&self, path: &str) -> String {
        match &self.tls {
            Some((port, ..)) => format!("wss://127.0.0.1:{port}{path}"),
            None => format!("ws://127.0.0.1:{}{path}", self.port),
        }
    }

    fn token(&self, path: &str) -> String {
        self.f.token(path)
    }

    /// POSTs `body` to the publishing hook `hook`, as a sender does; the status.
    fn publish(&self, hook: &str, body: &str) -> u16 {
        self.publish_as(hook, &self.token(&format!("/hooks/{hook}")), body)
    }

    /// [`RealRelay::publish`] with the token already made.
    fn publish_as(&self, hook: &str, token: &str, body: &str) -> u16 {
        let authorization = format!("Authorization: Bearer {token}");
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let reply = exchange(
            &mut stream,
            &post(
                &format!("/hooks/{hook}"),
                &[&authorization, "Content-Type: text/plain"],
                body.as_bytes(),
            ),
        );
        reply.status()
    }
}

/// A home host: hooks, a state directory, a token file.
/// A relay whose hook `kodi` publishes (with `extra` keys), and a home whose
/// relay hook `kodi` records its runs (waiting for the gate when `gated`).
fn relay_and_home(name: &str, extra: &str, gated: bool) -> (RealRelay, Home) {
    let relay = RealRelay::start(&format!("{name}-relay"), &["kodi"], extra, None);
    let home = Home::new(name, &relay.token("/sub/hooks/"));
    home.hook("kodi", gated);
    (relay, home)
}

struct Home {
    f: Fixture,
    state: PathBuf,
    token: PathBuf,
}

impl Home {
    fn new(name: &str, token: &str) -> Home {
        let f = Fixture::new(name);
        let state = f.dir.join("state");
        let path = f.dir.join("relay-token");
        fs::write(&path, format!("{token}\n")).unwrap();
        Home {
            f,
            state,
            token: path,
        }
    }

    /// Relay hook `name`: appends `start BODY` and `end BODY` (and its
    /// environment) to `NAME.order`; waits for the gate in between when `gated`.
    fn hook(&self, name: &str, gated: bool) {
        let d = self.f.dir.display();
        let wait = if gated {
            self.f.gate_wait() + "\n"
        } else {
            String::new()
        };
        let script = self.f.script(
            &format!("{name}.sh"),
            &format!(
                "body=$(cat)\necho \"start $body\" >> {d}/{name}.order\nenv > {d}/{name}.env\n{wait}echo \"end $body\" >> {d}/{name}.order"
            ),
        );
        self.f
            .hook(name, &format!("command = [{script:?}]\nauth = \"relay\"\n"));
    }

    fn order(&self, name: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.f.read(&format!("{name}.order")))
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn ends(&self, name: &str) -> Vec<String> {
        self.order(name)
            .into_iter()
            .filter_map(|l| l.strip_prefix("end ").map(str::to_owned))
            .collect()
    }

    /// `subscribe`, once it has said it is connected.
    fn connected(&self, url: &str, extra: &[&str]) -> Proc {
        let sub = self.subscribe(url, extra);
        sub.wait_log("connected to", 1);
        sub
    }

    fn subscribe(&self, url: &str, extra: &[&str]) -> Proc {
        let mut command = Command::new(BIN);
        command
            .args(["subscribe", url, "--token"])
            .arg(&self.token)
            .arg("--hooks")
            .arg(&self.f.hooks)
            .arg("--state")
            .arg(&self.state)
            .args(extra)
            .env_remove("STATE_DIRECTORY")
            .env_remove("NOTIFY_SOCKET");
        Proc::spawn(command)
    }

    /// `sockhook deliveries --state …`, the list.
    fn deliveries(&self) -> String {
        let out = Command::new(BIN)
            .arg("deliveries")
            .arg("--state")
            .arg(&self.state)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The `relay` lines of the journal's entries.
    fn relay_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for entry in fs::read_dir(self.state.join("deliveries")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "entry") {
                let text = String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned();
                lines.extend(
                    text.lines()
                        .filter_map(|l| l.strip_prefix("relay "))
                        .map(str::to_owned),
                );
            }
        }
        lines.sort();
        lines
    }
}

/// A token for the stand-in (it compares the bytes; sockhook never sees the key).
const TOKEN: &str = "5c0a9f7e1d2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5";

/// The relay's epoch, as the journal's `relay` lines name it.
fn epoch(home: &Home) -> String {
    let lines = home.relay_lines();
    let first = lines.first().expect("no relay line in the journal");
    first.split(' ').next().unwrap().to_owned()
}

/// The journal's relay lines `EPOCH HOOK SEQ` for `seqs`, sorted as `relay_lines`.
fn expected_lines(epoch: &str, hook: &str, seqs: impl Iterator<Item = u64>) -> Vec<String> {
    let mut lines: Vec<String> = seqs.map(|s| format!("{epoch} {hook} {s}")).collect();
    lines.sort();
    lines
}

#[test]
fn a_published_message_runs_the_home_hook_at_once_with_its_envelope() {
    let (relay, home) = relay_and_home("sub-basic", "", false);
    let sub = home.connected(&relay.url("/sub/hooks/"), &[]);
    assert!(
        sub.log().contains("ws:// is neither encrypted"),
        "{}",
        sub.log()
    );
    let mut latencies = Vec::new();
    let publish_token = relay.token("/hooks/kodi");
    for i in 1..=9 {
        let body = format!("hello{i}");
        let sent = Instant::now();
        assert_eq!(
            relay.publish_as("kodi", &publish_token, &body),
            204,
            "{}",
            relay.log()
        );
        wait_for(
            "the run",
            || home.ends("kodi").contains(&body),
            || sub.log(),
        );
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    eprintln!(
        "publish (POST to the relay) → home hook's run ended, 9 times: min {:?}, median {:?}, max {:?}",
        latencies[0], latencies[4], latencies[8]
    );
    assert!(
        latencies[4] < Duration::from_millis(200),
        "median {:?}",
        latencies[4]
    );
    let env = String::from_utf8_lossy(&home.f.read("kodi.env")).into_owned();
    for line in [
        "SOCKHOOK_HOOK=kodi",
        "SOCKHOOK_EVENT=",
        "SOCKHOOK_CONTENT_TYPE=text/plain",
        "SOCKHOOK_REMOTE_ADDR=127.0.0.1",
        "SOCKHOOK_METHOD=",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} not in\n{env}");
    }
    let delivery = env
        .lines()
        .find_map(|l| l.strip_prefix("SOCKHOOK_DELIVERY="))
        .unwrap_or_default();
    assert!(!delivery.is_empty(), "no SOCKHOOK_DELIVERY in\n{env}");
    let token = relay.token("/sub/hooks/");
    assert!(!env.contains(&token), "the token reached the command");
    let epoch = epoch(&home);
    assert_eq!(epoch.len(), 16, "{epoch}");
    assert_eq!(home.relay_lines(), expected_lines(&epoch, "kodi", 1..=9));
    let (code, log) = sub.stop();
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains(&token), "the token is in the log:\n{log}");
    assert_eq!(
        home.deliveries().lines().count(),
        10,
        "{}",
        home.deliveries()
    );
}

#[test]
fn a_stopped_subscriber_gets_what_was_published_meanwhile_in_order_once() {
    let (relay, home) = relay_and_home("sub-resume", "", false);
    let sub = home.connected(&relay.url("/sub/hooks/"), &[]);
    assert!(
        sub.log()
            .contains("resuming from live messages (first start)")
    );
    assert_eq!(relay.publish("kodi", "m1"), 204);
    wait_for("m1", || home.ends("kodi") == ["m1"], || sub.log());
    let (code, _) = sub.stop();
    assert_eq!(code, 0);
    // Ten deliveries while no subscriber is connected: stored, answered 204.
    for i in 2..=11 {
        assert_eq!(relay.publish("kodi", &format!("m{i}")), 204);
    }
    let sub = home.subscribe(&relay.url("/sub/hooks/"), &[]);
    wait_for(
        "m11",
        || home.ends("kodi").contains(&"m11".to_owned()),
        || sub.log(),
    );
    let epoch = epoch(&home);
    // Resumed from the journal: the header named the last seq taken.
    assert!(
        sub.log().contains(&format!("resuming from {epoch} kodi=1")),
        "{}",
        sub.log()
    );
    // Every message journaled once, each run once and in order; those that
    // arrived during a run coalesced into the newest, as serve's deliveries do.
    assert_eq!(home.relay_lines(), expected_lines(&epoch, "kodi", 1..=11));
    wait_for(
        "every outcome",
        || !home.deliveries().contains("pending"),
        || home.deliveries(),
    );
    let ends = home.ends("kodi");
    let numbers: Vec<u32> = ends.iter().map(|b| b[1..].parse().unwrap()).collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "out of order or twice: {ends:?}"
    );
    assert_eq!(numbers.last(), Some(&11));
    let list = home.deliveries();
    let ran = list
        .lines()
        .filter(|l| l.contains("ok exited 0") && !l.contains("coalesced"))
        .count();
    let coalesced = list
        .matches("(coalesced into the run of a newer delivery)")
        .count();
    assert_eq!(
        (ran, coalesced),
        (numbers.len(), 11 - numbers.len()),
        "{list}"
    );
    eprintln!(
        "10 messages published while the subscriber was stopped: {} run(s) after it came back, {coalesced} coalesced",
        numbers.len() - 1
    );
    sub.stop();
}

#[test]
fn a_journal_pruned_of_every_relay_entry_still_resumes_where_it_stopped() {
    // The home journal keeps the newest 100 deliveries of every hook, serve's
    // included: a busy hook there can prune all of a relay hook's entries.
    // The saved resume point must keep the relay from sending them again.
    let (relay, home) = relay_and_home("sub-pruned", "", false);
    let sub = home.connected(&relay.url("/sub/hooks/"), &[]);
    for body in ["m1", "m2"] {
        assert_eq!(relay.publish("kodi", body), 204);
        wait_for(
            "the run",
            || home.ends("kodi").contains(&body.to_owned()),
            || sub.log(),
        );
    }
    wait_for(
        "every outcome",
        || !home.deliveries().contains("pending"),
        || home.deliveries(),
    );
    let (code, log) = sub.stop();
    assert_eq!(code, 0, "{log}");
    let epoch = epoch(&home);
    // Pruned, as --journal-keep or the size cap would.
    for entry in fs::read_dir(home.state.join("deliveries")).unwrap() {
        fs::remove_file(entry.unwrap().path()).unwrap();
    }
    assert_eq!(relay.publish("kodi", "m3"), 204);
    let sub = home.subscribe(&relay.url("/sub/hooks/"), &[]);
    wait_for(
        "m3",
        || home.ends("kodi").contains(&"m3".to_owned()),
        || sub.log(),
    );
    assert!(
        sub.log().contains(&format!("resuming from {epoch} kodi=2")),
        "{}",
        sub.log()
    );
    assert_eq!(home.relay_lines(), expected_lines(&epoch, "kodi", 3..=3));
    let (code, log) = sub.stop();
    assert_eq!(code, 0, "{log}");
    assert_eq!(home.ends("kodi"), ["m1", "m2", "m3"], "{log}");
}

#[test]
fn a_relay_killed_between_publishes_loses_nothing() {
    let (mut relay, home) = relay_and_home("sub-relay-kill", "", false);
    let sub = home.connected(&relay.url("/sub/hooks/"), &["--max-backoff", "1"]);
    assert_eq!(relay.publish("kodi", "before"), 204);
    wait_for("before", || home.ends("kodi") == ["before"], || sub.log());
    relay.kill();
    sub.wait_log("reconnecting in", 1);
    relay.restart();
    // Published before the subscriber is back: stored, then caught up.
    assert_eq!(relay.publish("kodi", "while-away"), 204);
    sub.wait_log("connected to", 2);
    assert_eq!(relay.publish("kodi", "after"), 204);
    wait_for(
        "after",
        || home.ends("kodi") == ["before", "while-away", "after"],
        || format!("{}\n{}", sub.log(), relay.log()),
    );
    let epoch = epoch(&home);
    assert_eq!(home.relay_lines(), expected_lines(&epoch, "kodi", 1..=3));
    sub.stop();
}

#[test]
fn a_retention_gap_is_logged_with_its_size() {
    let (relay, home) = relay_and_home("sub-gap", "publish_keep = 2\n", false);
    let sub = home.connected(&relay.url("/sub/hooks/"), &[]);
    assert_eq!(relay.publish("kodi", "one"), 204);
    wait_for("one", || home.ends("kodi") == ["one"], || sub.log());
    sub.stop();
    // Five while away; the relay keeps the last two.
    for body in ["two", "three", "four", "five", "six"] {
        assert_eq!(relay.publish("kodi", body), 204);
    }
    let sub = home.subscribe(&relay.url("/sub/hooks/"), &[]);
    wait_for(
        "six",
        || home.ends("kodi").contains(&"six".to_owned()),
        || sub.log(),
    );
    sub.wait_log(
        "3 message(s) (2..4) were dropped by the relay's retention",
        1,
    );
    let ends = home.ends("kodi");
    assert!(
        ends == ["one", "five", "six"] || ends == ["one", "six"],
        "{ends:?}"
    );
    sub.stop();
}

#[test]
fn a_duplicate_seq_is_dropped() {
    if !standin_or_skip() {
        return;
    }
    let home = Home::new("sub-dup", TOKEN);
    home.hook("kodi", false);
    let relay = Relay::start(&home.f.dir, TOKEN, None);
    let sub = home.subscribe(&relay.url("/sub/hooks/"), &[]);
    relay.wait_clients(1);
    relay.publish("kodi", "one");
    wait_for("one", || home.ends("kodi") == ["one"], || sub.log());
    let sent =
        relay.control(serde_json::json!({"op": "raw", "hook": "kodi", "seq": 1, "body": "again"}));
    assert_eq!(sent["sent"], 1);
    sub.wait_log("message 1 was already taken (last 1); dropped", 1);
    relay.publish("kodi", "two");
    wait_for("two", || home.ends("kodi") == ["one", "two"], || sub.log());
    // The stand-in saw the resume header of a first start: none.
    assert_eq!(relay.resumes(), [serde_json::Value::Null]);
    sub.stop();
}

#[test]
fn messages_for_missing_or_non_relay_hooks_are_skipped_and_logged() {
    let relay = RealRelay::start("sub-skip-relay", &["kodi", "nothere", "web"], "", None);
    let home = Home::new("sub-skip", &relay.token("/sub/hooks/"));
    home.hook("kodi", false);
    let other = home.f.recorder("web");
    home.f.token_hook("web", &other, "");
    let sub = home.connected(&relay.url("/sub/hooks/"), &[]);
    assert_eq!(relay.publish("nothere", "x"), 204);
    assert_eq!(relay.publish("web", "y"), 204);
    assert_eq!(relay.publish("kodi", "z"), 204);
    wait_for("z", || home.ends("kodi") == ["z"], || sub.log());
    sub.wait_log("hook web: message 1 skipped", 1);
    let log = sub.log();
    assert!(
        log.contains("hook nothere: message 1 skipped: no hook nothere in"),
        "{log}"
    );
    assert!(
        log.contains(
            "hook web: message 1 skipped: the hook here has auth = \"token\", not \"relay\""
        ),
        "{log}"
    );
    assert_eq!(home.f.runs("web"), 0);
    sub.stop();
}

#[test]
fn a_subscription_to_one_hook_gets_that_hook_only() {
    let relay = RealRelay::start("sub-one-relay", &["kodi", "web"], "", None);
    let home = Home::new("sub-one", &relay.token("/sub/hooks/kodi"));
    home.hook("kodi", false);
    home.hook("web", false);
    let sub = home.connected(&relay.url("/sub/hooks/kodi"), &[]);
    assert_eq!(relay.publish("web", "not-for-me"), 204);
    assert_eq!(relay.publish("kodi", "mine"), 204);
    wait_for("mine", || home.ends("kodi") == ["mine"], || sub.log());
    assert!(home.ends("web").is_empty(), "{}", sub.log());
    sub.stop();
    // The token of one hook does not open the others.
    let mut other = home.subscribe(&relay.url("/sub/hooks/"), &[]);
    other.wait_log("403 Forbidden", 1);
    assert!(other.running());
    other.stop();
}

#[test]
fn a_message_over_the_home_hooks_max_body_is_skipped_and_one_over_every_bound_ends_the_connection()
{
    let relay = RealRelay::start("sub-size-relay", &["kodi", "big"], "", None);
    let home = Home::new("sub-size", &relay.token("/sub/hooks/"));
    home.hook("kodi", false);
    let d = home.f.dir.display();
    // Both bounds: kodi's max_body 16, and no relay hook here takes more than
    // 70,000 bytes, so no message over 70,000 + 64 KiB is read at all.
    home.f.hook(
        "kodi",
        &format!(
            "command = [{:?}]\nauth = \"relay\"\nmax_body = 16\n",
            home.f.dir.join("kodi.sh")
        ),
    );
    home.f.hook(
        "big",
        &format!("command = [\"/bin/sh\", \"-c\", \"cat >{d}/big.out\"]\nauth = \"relay\"\nmax_body = 70000\n"),
    );
    let sub = home.connected(&relay.url("/sub/hooks/"), &["--max-backoff", "1"]);
    assert_eq!(relay.publish("kodi", "seventeen bytes!!"), 204);
    assert_eq!(relay.publish("kodi", "sixteen bytes!!!"), 204);
    wait_for(
        "the 16 bytes",
        || home.ends("kodi") == ["sixteen bytes!!!"],
        || sub.log(),
    );
    assert!(
        sub.log().contains(
            "hook kodi: message 1 skipped: its body has 17 bytes, over the hook's max_body 16"
        ),
        "{}",
        sub.log()
    );
    let huge = "x".repeat(70_000 + 64 * 1024 + 1);
    assert_eq!(relay.publish("big", &huge), 204);
    sub.wait_log("raise max_body of the relay hooks here to take it", 1);
    assert!(home.f.read("big.out").is_empty());
    sub.stop();
}

#[test]
fn a_subscriber_killed_mid_run_runs_the_message_again_only_as_the_journal_says() {
    let (relay, home) = relay_and_home("sub-kill", "", true);
    let sub = home.connected(&relay.url("/sub/hooks/"), &[]);
    assert_eq!(relay.publish("kodi", "slow"), 204);
    wait_for(
        "the run's start",
        || home.order("kodi").len() == 1,
        || sub.log(),
    );
    // A crash (the run's own process group survives it, as an orphan).
    sub.kill();
    assert!(
        home.deliveries().contains("pending"),
        "{}",
        home.deliveries()
    );
    home.f.open_gate();
    wait_for(
        "the orphan's end",
        || home.ends("kodi").len() == 1,
        String::new,
    );
    let sub = home.subscribe(&relay.url("/sub/hooks/"), &[]);
    sub.wait_log("running it now", 1);
    wait_for(
        "the resumed run",
        || home.ends("kodi").len() == 2,
        || sub.log(),
    );
    wait_for(
        "its outcome",
        || !home.deliveries().contains("pending"),
        || home.deliveries(),
    );
    let list = home.deliveries();
    // Run twice, and the journal says why: the second is the resumed one.
    assert_eq!(list.matches("(resumed").count(), 1, "{list}");
    assert_eq!(list.lines().count(), 2, "one message, one entry:\n{list}");
    // The relay resent nothing: the resume point came from the journal.
    sub.wait_log("connected to", 1);
    let epoch = epoch(&home);
    assert!(
        sub.log().contains(&format!("resuming from {epoch} kodi=1")),
        "{}",
        sub.log()
    );
    assert_eq!(home.ends("kodi"), ["slow", "slow"]);
    sub.stop();
}

#[test]
fn wss_with_the_test_ca_works_and_a_wrong_ca_is_refused() {
    if !pki::need_tools(&["openssl"]) {
        return;
    }
    let dir = Fixture::new("sub-tls-pki").dir;
    let pki = Pki::new(&dir.join("pki"));
    let leaf = pki.localhost("relay");
    let other = Pki::new(&dir.join("other-pki"));
    let relay = RealRelay::start(
        "sub-tls-relay",
        &["kodi"],
        "",
        Some((leaf.cert.clone(), leaf.key.clone())),
    );
    let home = Home::new("sub-tls", &relay.token("/sub/hooks/"));
    home.hook("kodi", false);
    let url = relay.url("/sub/hooks/");
    assert!(url.starts_with("wss://"));
    // A CA that did not sign the relay's certificate: refused, nothing run.
    let mut wrong = home.subscribe(&url, &["--ca", other.ca.to_str().unwrap()]);
    wrong.wait_log("reconnecting in", 1);
    let log = wrong.log();
    assert!(log.contains("invalid peer certificate"), "{log}");
    assert_eq!(relay.publish("kodi", "secret"), 204);
    assert!(wrong.running());
    wrong.stop();
    assert!(home.ends("kodi").is_empty());
    // The system's trust store does not know the test CA either.
    let mut system = home.subscribe(&url, &[]);
    system.wait_log("invalid peer certificate", 1);
    assert!(system.running());
    system.stop();
    assert!(home.ends("kodi").is_empty());
    // The right one (a first start: live messages only).
    let sub = home.connected(&url, &["--ca", pki.ca.to_str().unwrap()]);
    assert!(!sub.log().contains("neither encrypted"), "{}", sub.log());
    assert_eq!(relay.publish("kodi", "over-tls"), 204);
    wait_for(
        "the run",
        || home.ends("kodi") == ["over-tls"],
        || sub.log(),
    );
    sub.stop();
}

#[test]
fn a_refused_token_is_said_clearly_and_retried_with_backoff() {
    let relay = RealRelay::start("sub-badtoken-relay", &["kodi"], "", None);
    // The publish token, not the subscription's: 403.
    let home = Home::new("sub-badtoken", &relay.token("/hooks/kodi"));
    home.hook("kodi", false);
    let mut sub = home.subscribe(&relay.url("/sub/hooks/"), &["--max-backoff", "2"]);
    sub.wait_log(
        "the relay answered the upgrade 403 Forbidden; the relay refused the token",
        2,
    );
    assert!(sub.running());
    assert_eq!(relay.publish("kodi", "x"), 204);
    assert!(home.ends("kodi").is_empty());
    let log = sub.log();
    // Backoff: 1 s, then 2 s, each shortened by up to half at random.
    let waits: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split("reconnecting in ").nth(1))
        .map(|w| w.trim_end_matches(" s").parse().unwrap())
        .collect();
    assert!(waits[0] >= 0.5 && waits[0] <= 1.0, "{waits:?}");
    assert!(waits[1] >= 1.0 && waits[1] <= 2.0, "{waits:?}");
    assert!(
        !log.contains(&relay.token("/hooks/kodi")),
        "the token is in the log:\n{log}"
    );
    sub.stop();
}

#[test]
fn a_silent_relay_is_noticed_by_ping_and_left() {
    // A relay that upgrades, then never reads or answers again (a dead NAT
    // mapping looks the same from here).
    let home = Home::new("sub-ping", TOKEN);
    home.hook("kodi", false);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let callback =
                |_: &tungstenite::handshake::server::Request,
                 mut response: tungstenite::handshake::server::Response| {
                    response.headers_mut().insert(
                        "sec-websocket-protocol",
                        "sockhook.relay.1".parse().unwrap(),
                    );
                    Ok(response)
                };
            if let Ok(ws) = tungstenite::accept_hdr(stream, callback) {
                keep.lock().unwrap().push(ws);
            }
        }
    });
    let sub = home.connected(
        &format!("ws://127.0.0.1:{port}/sub/hooks/"),
        &["--ping-interval", "0.3", "--ping-timeout", "0.3"],
    );
    let connected = Instant::now();
    sub.wait_log("nothing from the relay within 0.3 s of a ping", 1);
    let noticed = connected.elapsed();
    eprintln!("a silent relay noticed after {noticed:?} (ping interval 0.3 s + timeout 0.3 s)");
    assert!(noticed >= Duration::from_millis(600), "{noticed:?}");
    sub.wait_log("connected to", 2);
    sub.stop();
}

#[test]
fn serve_answers_a_relay_hooks_path_404_and_check_accepts_it() {
    let f = Fixture::new("sub-serve-404");
    let recorder = f.recorder("kodi");
    f.hook(
        "kodi",
        &format!("command = [{recorder:?}]\nauth = \"relay\"\n"),
    );
    let bearer = format!("Authorization: Bearer {}", f.token("/hooks/kodi"));
    let server = f.serve(&["--idle-timeout", "5"]);
    for headers in [vec![], vec![bearer.as_str()]] {
        let reply = server.post("/hooks/kodi", &headers, b"x");
        assert_eq!(reply.status(), 404, "{}", reply.body());
    }
    assert_eq!(f.runs("kodi"), 0);
    let reply = server.post("/hooks/nothere", &[], b"x");
    assert_eq!(reply.status(), 404);
    let out = f.check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("/hooks/kodi: ok: auth relay (run by sockhook subscribe"),
        "{stdout}"
    );
}

#[test]
fn relay_hooks_refuse_the_keys_of_an_http_answer() {
    let f = Fixture::new("sub-keys");
    for (key, line) in [
        ("respond", "respond = \"after-run\""),
        ("methods", "methods = [\"GET\"]"),
        ("match", "[match]\nref = \"x\""),
        ("journal", "journal = false"),
        ("secret", "secret = \"/etc/x\""),
    ] {
        f.hook(
            "kodi",
            &format!("command = [\"/bin/true\"]\nauth = \"relay\"\n{line}\n"),
        );
        let out = f.check();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{key}: {stdout}");
        assert!(stdout.contains(&format!("{key}:")), "{key}: {stdout}");
    }
}

#[test]
fn bad_command_lines_and_token_files_are_refused_before_connecting() {
    let home = Home::new("sub-usage", TOKEN);
    let token = home.token.to_str().unwrap().to_owned();
    let hooks = home.f.hooks.to_str().unwrap().to_owned();
    let empty = home.f.dir.join("empty-token");
    fs::write(&empty, "\n").unwrap();
    let missing = home.f.dir.join("missing-credential");
    fs::write(
        &missing,
        "sockhook-missing-credential:/etc/sockhook/relay-token",
    )
    .unwrap();
    for (args, says) in [
        (vec!["subscribe", "--token", &token], "give the relay's URL"),
        (
            vec!["subscribe", "ws://127.0.0.1:1/sub/hooks/"],
            "--token FILE is required",
        ),
        (
            vec![
                "subscribe",
                "http://127.0.0.1:1/sub/hooks/",
                "--token",
                &token,
                "--hooks",
                &hooks,
            ],
            "give wss://HOST/sub/hooks/",
        ),
        (
            vec![
                "subscribe",
                "wss://t0k3n@127.0.0.1:1/sub/hooks/",
                "--token",
                &token,
                "--hooks",
                &hooks,
            ],
            "never on the command line",
        ),
        (
            vec![
                "subscribe",
                "ws://127.0.0.1:1/sub/hooks/",
                "--token",
                empty.to_str().unwrap(),
                "--hooks",
                &hooks,
            ],
            "must hold the token alone",
        ),
        (
            vec![
                "subscribe",
                "ws://127.0.0.1:1/sub/hooks/",
                "--token",
                missing.to_str().unwrap(),
                "--hooks",
                &hooks,
            ],
            "systemd found no /etc/sockhook/relay-token",
        ),
        (
            vec![
                "subscribe",
                "ws://127.0.0.1:1/sub/hooks/",
                "--token",
                &token,
                "--hooks",
                "/nonexistent",
            ],
            "cannot read the hooks directory",
        ),
        (
            vec![
                "subscribe",
                "wss://127.0.0.1:1/sub/hooks/",
                "--token",
                &token,
                "--hooks",
                &hooks,
                "--ca",
                "/nonexistent",
            ],
            "cannot read the trust anchors",
        ),
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(100), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(
            !stderr.contains(TOKEN),
            "{args:?}: the token is in: {stderr}"
        );
    }
}
