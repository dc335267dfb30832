//! Attacks on the real binary over real sockets on loopback (issue 9): what
//! anonymous clients can take from sockhook, and that a valid sender is still
//! answered while they try.
//!
//! - Memory: bodies nobody has authenticated yet are spooled only within the
//!   pre-authentication budget; the rest are refused `503` before their body.
//! - Slots: thousands of slow heads and slow bodies, from many source
//!   addresses, leave valid requests answered within 1 s, at small cost.
//! - The per-source cap: one address gets so many connections, the next ones
//!   `503` at once, other addresses are untouched.
//! - Real tools (`slowloris` from PyPI, `slowhttptest` from Debian): the
//!   same, with the attack written by someone else. Missing tools skip the
//!   test, except under `CI=true`, where they fail it (`.ci/run` installs them).
//! - `Accept=yes` under a real systemd: see
//!   [`accept_yes_socket_under_slow_heads_from_many_sources_answers_another_source`].
//!
//! Client sockets are bound to 127.0.0.N (`support/net.rs`) to act as many
//! sources. sockhook's memory is its `VmRSS` plus the bytes its memfds hold
//! (a spooled body is RAM that `VmRSS` does not show), read from `/proc`
//! while the attack runs. Every wait is a bounded poll for a condition; the
//! only sleeps pace the attackers and the probes, and say so. The tests of
//! this file take a lock so that they run one at a time: each measures
//! latency, and another attack running next to it would be measured too.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use support::harness::*;
use support::net::{connect_from, loopback};

/// The github hook's secret (GitHub's documented example).
const GH_SECRET: &str = "It's a Secret to Everybody";
const MIB: u64 = 1024 * 1024;
/// The memory test's `--preauth-budget`: sockhook's default (limits.rs),
/// given explicitly so that the test's arithmetic holds if the default moves.
const BUDGET: u64 = 64 * MIB;
/// GitHub's own cap on a delivery, and a hook's default `max_body`.
const BODY_25_MIB: u64 = 25 * MIB;
/// The bar of issue 9 for a valid request under attack.
const PROBE_BAR: Duration = Duration::from_secs(1);
/// The bar of issue 9 for sockhook's memory (RSS + memfds) under the slots attack.
const MEMORY_BAR: u64 = 32 * MIB;
/// `Backlog=` of the shipped sockets, for the tests that open connections by
/// the thousand.
const BACKLOG: i32 = 1024;
/// "At once": the most a refusal made from the head alone may take.
const AT_ONCE: Duration = Duration::from_secs(1);

/// One test of this file at a time (see the module doc).
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Prints `skipped: why` (straight to stderr: the harness swallows the output
/// of passing tests), or fails under `CI=true`.
fn skip(why: &str) {
    assert!(!ci(), "CI=true, but {why}");
    let _ = writeln!(io::stderr(), "skipped: {why}");
}

/// Raises this process's soft limit on open files to at least `n` (and the
/// hard one when it is lower, which needs root): the attacks hold thousands of
/// sockets, and sockhook, started from here, inherits the limit as it would
/// inherit `LimitNOFILE=` from its unit.
fn raise_nofile(n: u64) {
    let mut limit = nix::libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives here.
    let got = unsafe { nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(got, 0, "getrlimit: {}", io::Error::last_os_error());
    if limit.rlim_cur >= n {
        return;
    }
    limit.rlim_cur = n;
    limit.rlim_max = limit.rlim_max.max(n);
    // SAFETY: setrlimit only reads the struct it is given.
    let set = unsafe { nix::libc::setrlimit(nix::libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(
        set,
        0,
        "cannot raise RLIMIT_NOFILE to {n}: {}",
        io::Error::last_os_error()
    );
}

/// A fixture with hook `gh` (auth github, a recorder) and the secret file.
fn github_fixture(name: &str) -> Fixture {
    let f = Fixture::new(name);
    let gh = f.recorder("gh");
    let secret = f.dir.join("gh.secret");
    fs::write(&secret, GH_SECRET).unwrap();
    f.hook(
        "gh",
        &format!("command = [{gh:?}]\nauth = \"github\"\nsecret = {secret:?}\n"),
    );
    f
}

/// A GitHub delivery of `body` to hook `gh`, signed with `secret`.
fn delivery(body: &[u8], secret: &str) -> Vec<u8> {
    post(
        "/hooks/gh",
        &[
            &github_signature(secret.as_bytes(), body),
            "X-GitHub-Event: push",
            "X-GitHub-Delivery: 72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "Content-Type: application/json",
        ],
        body,
    )
}

/// The head of a GitHub delivery whose body (`len` bytes) has not been sent,
/// with a signature made with the wrong secret.
fn fake_head(len: u64) -> Vec<u8> {
    let mut head = post(
        "/hooks/gh",
        &[
            &github_signature(b"not the secret", b"whatever"),
            "X-GitHub-Event: push",
            "Content-Type: application/json",
        ],
        b"",
    );
    let text = String::from_utf8(head).unwrap();
    head = text
        .replace(
            "Content-Length: 0\r\n",
            &format!("Content-Length: {len}\r\n"),
        )
        .into_bytes();
    head
}

/// A valid delivery from 127.0.0.1: its status (0 unless the response came
/// whole) and the time from connecting to the end of the response.
fn probe(addr: SocketAddr, n: usize) -> (u16, Duration) {
    let body = format!("{{\"probe\":{n}}}");
    let started = Instant::now();
    let Ok(mut stream) = connect_from(loopback(1), addr) else {
        return (0, started.elapsed());
    };
    let reply = exchange(&mut stream, &delivery(body.as_bytes(), GH_SECRET));
    let status = if reply.complete() { reply.status() } else { 0 };
    (status, started.elapsed())
}

/// Latencies, sorted, in ms, and their nearest-rank percentile `p`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// `count` valid probes, one every `every` (a sleep that paces them, so that
/// they spread over the attack); returns the statuses, the sorted latencies,
/// and the sockets the `sampler` last saw sockhook hold as each probe
/// started, sorted.
fn probes(
    addr: SocketAddr,
    count: usize,
    every: Duration,
    sampler: &Sampler,
) -> (Vec<u16>, Vec<Duration>, Vec<usize>) {
    let mut statuses = Vec::new();
    let mut latencies = Vec::new();
    let mut held = Vec::new();
    for n in 0..count {
        let next = Instant::now() + every;
        held.push(sampler.latest().sockets);
        let (status, took) = probe(addr, n);
        statuses.push(status);
        latencies.push(took);
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    latencies.sort();
    held.sort();
    (statuses, latencies, held)
}

/// Asserts the bar for probes: all 204, p99 within [`PROBE_BAR`]; prints the figures.
fn assert_probes(what: &str, statuses: &[u16], latencies: &[Duration], server: &Server) {
    let median = percentile(latencies, 0.5);
    let p99 = percentile(latencies, 0.99);
    let max = latencies[latencies.len() - 1];
    eprintln!(
        "{what}: {} probes, statuses {:?}; latency median {}, p99 {}, max {}",
        statuses.len(),
        count(statuses),
        ms(median),
        ms(p99),
        ms(max)
    );
    assert!(
        statuses.iter().all(|s| *s == 204),
        "{what}: probe statuses {statuses:?}\n{}",
        tail(&server.log())
    );
    assert!(
        p99 <= PROBE_BAR,
        "{what}: probe p99 {} > {}; all: {latencies:?}",
        ms(p99),
        ms(PROBE_BAR)
    );
}

fn count<T: Ord + Copy>(items: &[T]) -> BTreeMap<T, usize> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(*item).or_default() += 1;
    }
    counts
}

/// The last lines of a (long) server log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// What one process holds, from `/proc`.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    /// `VmRSS`, bytes.
    rss: u64,
    /// Bytes held by its memfds (distinct files; `st_blocks`, so holes do not count).
    memfd: u64,
    memfds: usize,
    /// Sockets among its fds: the listener and every connection.
    sockets: usize,
}

impl Usage {
    fn of(pid: u32) -> Option<Usage> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss = kib_field(&status, "VmRSS:")? * 1024;
        let mut usage = Usage {
            rss,
            ..Usage::default()
        };
        let mut seen = HashSet::new();
        for entry in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
            let Ok(link) = fs::read_link(entry.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            if link.starts_with("socket:") {
                usage.sockets += 1;
            } else if link.starts_with("/memfd:")
                && let Ok(meta) = fs::metadata(entry.path())
                && seen.insert(meta.ino())
            {
                usage.memfd += meta.blocks() * 512;
                usage.memfds += 1;
            }
        }
        Some(usage)
    }
}

/// A `kB` field of `/proc/PID/status`.
fn kib_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// `VmHWM` of `pid`: its peak RSS since exec, which no sample can miss.
fn rss_peak(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    kib_field(&status, "VmHWM:").unwrap() * 1024
}

/// The highest figures a [`Sampler`] saw.
#[derive(Clone, Copy, Debug, Default)]
struct Peaks {
    rss_and_memfd: u64,
    memfd: u64,
    memfds: usize,
    sockets: usize,
    samples: usize,
}

/// Samples a process's [`Usage`] on a thread of its own until finished.
struct Sampler {
    state: Arc<Mutex<(Usage, Peaks)>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    /// Every `every` (pacing; with thousands of fds a sample costs as many
    /// readlinks, which the server under test competes with).
    fn start(pid: u32, every: Duration) -> Sampler {
        let state = Arc::new(Mutex::new((Usage::default(), Peaks::default())));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, halt) = (Arc::clone(&state), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                let Some(now) = Usage::of(pid) else { return };
                let mut guard = s.lock().unwrap();
                let peaks = &mut guard.1;
                peaks.rss_and_memfd = peaks.rss_and_memfd.max(now.rss + now.memfd);
                peaks.memfd = peaks.memfd.max(now.memfd);
                peaks.memfds = peaks.memfds.max(now.memfds);
                peaks.sockets = peaks.sockets.max(now.sockets);
                peaks.samples += 1;
                guard.0 = now;
                drop(guard);
                thread::sleep(every);
            }
        });
        Sampler {
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// The latest sample (all zero before the first).
    fn latest(&self) -> Usage {
        self.state.lock().unwrap().0
    }

    fn peaks(&self) -> Peaks {
        self.state.lock().unwrap().1
    }

    /// Polls (every 10 ms, at most `PATIENCE`) until the latest sample
    /// satisfies `want`; panics with `what` and the log otherwise.
    fn wait(&self, what: &str, server: &Server, want: impl Fn(&Usage) -> bool) -> Usage {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = self.latest();
            if want(&now) {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "waited {PATIENCE:?} for {what}; last sample {now:?}\n{}",
                tail(&server.log())
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn finish(mut self) -> Peaks {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.peaks()
    }
}

/// Polls `done` every 10 ms until it holds; panics after [`PATIENCE`].
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// Memory

/// Connections from 127.0.0.(first + i), each sending `head` and nothing more.
fn heads_from(first: u8, n: usize, addr: SocketAddr, head: &[u8]) -> Vec<(TcpStream, Instant)> {
    (0..n)
        .map(|i| {
            let from = loopback(first + i as u8);
            let mut stream =
                connect_from(from, addr).unwrap_or_else(|e| panic!("connect from {from}: {e}"));
            stream.write_all(head).unwrap();
            let sent = Instant::now();
            stream.set_nonblocking(true).unwrap();
            (stream, sent)
        })
        .collect()
}

/// What came back on a non-blocking connection so far, and whether it ended.
#[derive(Default)]
struct Seen {
    bytes: Vec<u8>,
    ended: bool,
    /// When the first byte came.
    at: Option<Instant>,
}

impl Seen {
    fn poll(&mut self, stream: &mut TcpStream) {
        let mut buf = [0; 4096];
        while !self.ended {
            match stream.read(&mut buf) {
                Ok(0) => self.ended = true,
                Ok(n) => {
                    self.at.get_or_insert_with(Instant::now);
                    self.bytes.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.ended = true,
            }
        }
    }

    fn reply(&self) -> Reply {
        Reply {
            bytes: self.bytes.clone(),
            error: None,
        }
    }
}

/// Polls every connection until `answered` of them have ended (each with a
/// whole response); returns what each has seen.
fn wait_answers(conns: &mut [(TcpStream, Instant)], answered: usize, server: &Server) -> Vec<Seen> {
    let mut seen: Vec<Seen> = conns.iter().map(|_| Seen::default()).collect();
    let deadline = Instant::now() + PATIENCE;
    loop {
        for ((stream, _), seen) in conns.iter_mut().zip(seen.iter_mut()) {
            seen.poll(stream);
        }
        let ended = seen.iter().filter(|s| s.ended).count();
        if ended >= answered {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "waited {PATIENCE:?} for {answered} answers, got {ended}\n{}",
            tail(&server.log())
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts that the connections that ended got `503` with `Retry-After`
/// within [`AT_ONCE`] of their head; returns how many.
fn assert_refused_at_once(wave: &str, conns: &[(TcpStream, Instant)], seen: &[Seen]) -> usize {
    let mut refused = 0;
    for ((_, sent), seen) in conns.iter().zip(seen) {
        if !seen.ended {
            continue;
        }
        let reply = seen.reply();
        assert_eq!(
            reply.status(),
            503,
            "{wave}: {:?}",
            String::from_utf8_lossy(&seen.bytes)
        );
        assert!(reply.complete(), "{wave}: incomplete {reply:?}");
        assert!(
            reply.header("retry-after").is_some(),
            "{wave}: 503 without Retry-After: {reply:?}"
        );
        let took = seen.at.unwrap().duration_since(*sent);
        assert!(took <= AT_ONCE, "{wave}: the 503 took {}", ms(took));
        refused += 1;
    }
    refused
}

/// 64 clients, from 64 addresses, each send the head of a 25 MiB GitHub
/// delivery with a wrong signature: those the 64 MiB budget (the default) has room
/// for send all but the last byte and hold it; every other one is answered
/// `503` with `Retry-After` within a second of its head, having sent no body
/// byte, and so are 62 more from new addresses while the budget is held. The
/// sum of sockhook's memfds never exceeds the budget (sampled every 5 ms, and
/// it is seen to reach what the holders sent, so the sampler does see them).
/// A valid delivery from 127.0.0.1 meanwhile is answered 204 and runs with its
/// body; once the attackers let go, the memfds are freed and a valid 25 MiB
/// delivery is answered 204 and runs with all of it.
#[test]
fn memory_64_fake_signed_25_mib_bodies_stay_within_the_budget() {
    let _serial = one_at_a_time();
    let f = github_fixture("attack-memory");
    let budget = BUDGET.to_string();
    let server = f.serve(&["--idle-timeout", "600", "--preauth-budget", &budget]);
    let sampler = Sampler::start(server.pid(), Duration::from_millis(5));
    let addr = server.addr;

    // The budget has room for so many bodies of 25 MiB; each source may hold
    // half the budget, more than one body, so the total is what binds.
    let fit = (BUDGET / BODY_25_MIB) as usize;
    const {
        assert!(
            BODY_25_MIB <= BUDGET / 2,
            "one source could not hold one body"
        )
    };
    let head = fake_head(BODY_25_MIB);
    let mut first = heads_from(2, 64, addr, &head);
    let seen = wait_answers(&mut first, 64 - fit, &server);
    let refused = assert_refused_at_once("first wave", &first, &seen);
    assert_eq!(refused, 64 - fit, "refused in the first wave");
    let holders: Vec<TcpStream> = first
        .into_iter()
        .zip(&seen)
        .filter(|(_, s)| !s.ended)
        .map(|((stream, _), _)| stream)
        .collect();
    assert_eq!(holders.len(), fit);
    assert_eq!(
        sampler.peaks().memfd,
        0,
        "nothing may be spooled before a body byte arrives"
    );

    // The admitted ones send everything but the last byte and hold it.
    let almost = Arc::new(vec![b'x'; BODY_25_MIB as usize - 1]);
    let release = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = holders
        .into_iter()
        .map(|mut stream| {
            let (almost, release) = (Arc::clone(&almost), Arc::clone(&release));
            thread::spawn(move || {
                stream.set_nonblocking(false).unwrap();
                stream.set_write_timeout(Some(PATIENCE)).unwrap();
                stream.write_all(&almost).unwrap();
                wait_for("the test to release a holder", || {
                    release.load(Ordering::Relaxed)
                });
                drop(stream);
            })
        })
        .collect();
    let held = fit as u64 * (BODY_25_MIB - 1) / 4096 * 4096;
    let holding = sampler.wait("the holders' bodies in sockhook's memfds", &server, |u| {
        u.memfd >= held
    });
    eprintln!(
        "memory: {fit} of 64 admitted and holding: memfds {} ({} files), RSS {}",
        mib(holding.memfd),
        holding.memfds,
        mib(holding.rss)
    );

    // While the budget is held: 62 more from new addresses, all refused at once.
    let mut second = heads_from(2 + 64, 62, addr, &head);
    let seen = wait_answers(&mut second, 62, &server);
    assert_eq!(assert_refused_at_once("second wave", &second, &seen), 62);
    drop(second);

    // A valid delivery from 127.0.0.1 during the attack.
    let body = br#"{"during":"attack"}"#;
    let reply = connect_from(loopback(1), addr)
        .map(|mut s| exchange(&mut s, &delivery(body, GH_SECRET)))
        .unwrap();
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", tail(&server.log()));
    wait_for("the valid delivery's run", || f.runs("gh") == 1);
    assert_eq!(f.read("gh.stdin"), body);

    // The attackers let go: the memfds are freed, and a valid 25 MiB delivery passes.
    release.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.join().unwrap();
    }
    sampler.wait("the memfds to be freed", &server, |u| u.memfds == 0);
    let big = vec![b' '; BODY_25_MIB as usize];
    let reply = connect_from(loopback(1), addr)
        .map(|mut s| exchange(&mut s, &delivery(&big, GH_SECRET)))
        .unwrap();
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", tail(&server.log()));
    wait_for("the 25 MiB delivery's run", || f.runs("gh") == 2);
    assert_eq!(f.read("gh.stdin").len(), big.len());

    let peaks = sampler.finish();
    eprintln!(
        "memory: peak memfds {} (budget {}), peak RSS + memfds {}, {} samples",
        mib(peaks.memfd),
        mib(BUDGET),
        mib(peaks.rss_and_memfd),
        peaks.samples
    );
    assert!(
        peaks.memfd <= BUDGET,
        "memfds reached {} > budget {}",
        mib(peaks.memfd),
        mib(BUDGET)
    );
    let (status, log) = server.stop();
    assert!(status.success(), "{status:?}\n{}", tail(&log));
    assert!(
        log.contains("503"),
        "the refusals are not in the log:\n{}",
        tail(&log)
    );
}

// ---------------------------------------------------------------------------
// Slots

/// How an attacking connection misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slow {
    /// slowloris: part of a head, then one more header line per tick.
    Head,
    /// A whole head announcing a body with a wrong signature, then one body
    /// byte per tick (R-U-Dead-Yet).
    Body,
}

/// Attackers: connections kept open from many sources, each one sending a
/// little every tick and opened again when sockhook closes it (after its 408
/// at the head or request deadline, or a 503), as slowloris does. One thread
/// per source address, so that a connect waiting for room in the backlog
/// holds up only that address's connections.
struct Attack {
    stop: Arc<AtomicBool>,
    /// Connections open now, per thread, as the attackers see it.
    open: Vec<Arc<AtomicUsize>>,
    threads: Vec<thread::JoinHandle<BTreeMap<String, usize>>>,
}

/// One attacking connection.
struct Attacker {
    slow: Slow,
    from: Ipv4Addr,
    stream: Option<TcpStream>,
    seen: Vec<u8>,
}

impl Attacker {
    fn open(&mut self, addr: SocketAddr, path: &str) -> bool {
        let head = match self.slow {
            Slow::Head => format!("POST {path} HTTP/1.1\r\nHost: attack\r\n").into_bytes(),
            Slow::Body => {
                let mut head = fake_head(1000);
                let text = String::from_utf8(head).unwrap();
                head = text.replacen("/hooks/gh", path, 1).into_bytes();
                head
            }
        };
        let opened = connect_from(self.from, addr).and_then(|mut s| {
            s.write_all(&head)?;
            s.set_nonblocking(true)?;
            Ok(s)
        });
        self.seen.clear();
        self.stream = opened.ok();
        self.stream.is_some()
    }

    /// Reads what came; `Some(outcome)` once the connection has ended.
    fn check(&mut self) -> Option<String> {
        let stream = self.stream.as_mut()?;
        let mut buf = [0; 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(self.end(Some(e.kind()))),
            }
        }
        Some(self.end(None))
    }

    /// Forgets the connection; what it saw, as `STATUS`, `closed`, or with
    /// `+ERROR` when a read failed after (or instead of) a response.
    fn end(&mut self, error: Option<io::ErrorKind>) -> String {
        self.stream = None;
        let status = Reply {
            bytes: std::mem::take(&mut self.seen),
            error: None,
        }
        .status();
        let status = match status {
            0 => "closed".to_owned(),
            s => s.to_string(),
        };
        match error {
            None => status,
            Some(e) => format!("{status}+{e:?}"),
        }
    }

    /// One tick's worth of slowness; `Some(outcome)` if the write failed.
    fn trickle(&mut self) -> Option<String> {
        let bytes: &[u8] = match self.slow {
            Slow::Head => b"X-a: b\r\n",
            Slow::Body => b"x",
        };
        match self.stream.as_mut()?.write(bytes) {
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => Some(format!("write-{}", self.end(Some(e.kind())))),
        }
    }
}

/// Paces the attackers' loop: a pass over every connection, then this.
const PASS: Duration = Duration::from_millis(100);
/// Each connection sends a little every tick.
const TICK: Duration = Duration::from_secs(1);

impl Attack {
    /// `(slow, from, count)`: `count` connections of that kind from `from`,
    /// to `path` on `addr`. `reopen_every_pass`: a closed connection is
    /// opened again at the next pass (else at the next tick).
    fn start(
        addr: SocketAddr,
        path: &str,
        groups: &[(Slow, Ipv4Addr, usize)],
        reopen_every_pass: bool,
    ) -> Attack {
        let stop = Arc::new(AtomicBool::new(false));
        let mut open = Vec::new();
        let mut threads = Vec::new();
        for &(slow, from, n) in groups {
            let mut attackers: Vec<Attacker> = (0..n)
                .map(|_| Attacker {
                    slow,
                    from,
                    stream: None,
                    seen: Vec::new(),
                })
                .collect();
            let opened = Arc::new(AtomicUsize::new(0));
            open.push(Arc::clone(&opened));
            let (halt, path) = (Arc::clone(&stop), path.to_owned());
            threads.push(thread::spawn(move || {
                let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
                let mut next_tick = Instant::now() + TICK;
                let mut first = true;
                while !halt.load(Ordering::Relaxed) {
                    let tick = Instant::now() >= next_tick;
                    if tick {
                        next_tick += TICK;
                    }
                    let mut n = 0;
                    for attacker in &mut attackers {
                        let mut ended = attacker.check();
                        if tick && ended.is_none() {
                            ended = attacker.trickle();
                        }
                        if attacker.stream.is_none()
                            && (first || tick || reopen_every_pass)
                            && !attacker.open(addr, &path)
                        {
                            ended = Some("connect-failed".into());
                        }
                        if let Some(outcome) = ended {
                            *outcomes.entry(format!("{slow:?}:{outcome}")).or_default() += 1;
                        }
                        n += usize::from(attacker.stream.is_some());
                    }
                    first = false;
                    opened.store(n, Ordering::Relaxed);
                    // Pacing: the attackers are slow on purpose.
                    thread::sleep(PASS);
                }
                outcomes
            }));
        }
        Attack {
            stop,
            open,
            threads,
        }
    }

    fn open(&self) -> usize {
        self.open.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// Stops, closes every connection, and returns how the connections ended.
    fn finish(mut self) -> BTreeMap<String, usize> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = BTreeMap::new();
        for thread in self.threads.drain(..) {
            for (outcome, n) in thread.join().unwrap() {
                *all.entry(outcome).or_default() += n;
            }
        }
        all
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Slow heads on 2,000 connections from 20 addresses (127.0.0.2–21, 100 each)
/// and 300 one-byte-per-second body senders (127.0.0.22–31, 30 each; wrong
/// signatures, so their bodies count against the budget), all reopened as
/// sockhook closes them at its deadlines: once sockhook holds all 2,300, 30
/// valid deliveries from 127.0.0.1, paced over 7.5 s so that they also meet
/// the burst of reconnections at the 5 s head deadline, are all answered 204
/// with p99 ≤ 1 s, and sockhook's RSS + memfds stays ≤ 32 MiB (sampled, and
/// its `VmHWM`). `--max-connections-per-source 128` lets every one of the 100
/// per address in (the default 32 would answer most of them 503, which
/// `one_source_over_its_cap_is_answered_503_at_once_and_spares_the_others`
/// tests): this test is of what thousands of slow connections cost.
#[test]
fn slots_2000_slow_heads_and_300_slow_bodies_leave_valid_requests_under_1s() {
    const HEAD_SOURCES: u8 = 20;
    const HEADS_PER_SOURCE: usize = 100;
    const BODY_SOURCES: u8 = 10;
    const BODIES_PER_SOURCE: usize = 30;
    const PROBES: usize = 30;
    let _serial = one_at_a_time();
    let total =
        HEAD_SOURCES as usize * HEADS_PER_SOURCE + BODY_SOURCES as usize * BODIES_PER_SOURCE;
    raise_nofile(4 * total as u64 + 1024);
    let f = github_fixture("attack-slots");
    let server = f.serve_with_backlog(
        &[
            "--idle-timeout",
            "600",
            "--max-connections-per-source",
            "128",
        ],
        BACKLOG,
    );
    let sampler = Sampler::start(server.pid(), Duration::from_millis(100));
    let mut groups = Vec::new();
    for i in 0..HEAD_SOURCES {
        groups.push((Slow::Head, loopback(2 + i), HEADS_PER_SOURCE));
    }
    for i in 0..BODY_SOURCES {
        groups.push((
            Slow::Body,
            loopback(2 + HEAD_SOURCES + i),
            BODIES_PER_SOURCE,
        ));
    }
    let started = Instant::now();
    let attack = Attack::start(server.addr, "/hooks/gh", &groups, true);
    // The listener and every attacking connection.
    let all_in = sampler.wait(
        "sockhook to hold every attacking connection",
        &server,
        |u| u.sockets > total,
    );
    eprintln!(
        "slots: sockhook holds {} sockets {:.1} s after the attack started (attackers: {} open)",
        all_in.sockets,
        started.elapsed().as_secs_f64(),
        attack.open()
    );

    let (statuses, latencies, held) =
        probes(server.addr, PROBES, Duration::from_millis(250), &sampler);
    let during = sampler.latest();
    let attackers_open = attack.open();
    let outcomes = attack.finish();
    let peaks = sampler.finish();
    let hwm = rss_peak(server.pid());
    eprintln!(
        "slots: attackers' connections ended as {outcomes:?}; as the probes started sockhook held {}–{} sockets (median {}), at the last {}; attackers {attackers_open} open",
        held[0],
        held[held.len() - 1],
        held[held.len() / 2],
        during.sockets
    );
    eprintln!(
        "slots: sockhook peak RSS + memfds {} (memfds {} in {} files), VmHWM {}, peak sockets {}",
        mib(peaks.rss_and_memfd),
        mib(peaks.memfd),
        peaks.memfds,
        mib(hwm),
        peaks.sockets
    );
    assert_probes("slots", &statuses, &latencies, &server);
    // The attack still held: sockhook answered slow heads at their deadline
    // and the attackers came back (else the probes met no attack).
    assert!(
        outcomes.get("Head:408").copied().unwrap_or(0) >= HEAD_SOURCES as usize * HEADS_PER_SOURCE,
        "the slow heads were not all held to their deadline: {outcomes:?}"
    );
    // Probes that meet the reconnections at the head deadline see fewer.
    assert!(
        held[held.len() / 2] > total * 9 / 10 && held[0] > total / 2,
        "as the probes started sockhook held too few connections: {held:?}"
    );
    assert!(
        peaks.rss_and_memfd <= MEMORY_BAR && hwm + peaks.memfd <= MEMORY_BAR,
        "sockhook took {} (VmHWM {}, memfds {}) > {}",
        mib(peaks.rss_and_memfd),
        mib(hwm),
        mib(peaks.memfd),
        mib(MEMORY_BAR)
    );
    let (status, _) = probe(server.addr, PROBES);
    assert_eq!(status, 204, "after the attack\n{}", tail(&server.log()));
    let (status, log) = server.stop();
    assert!(status.success(), "{status:?}\n{}", tail(&log));
}

/// sockhook started with a soft limit of 1024 open files (what systemd gives
/// a unit without `LimitNOFILE=`, and what a login shell has; the hard limit
/// is higher) under 1,500 slow heads from 15 addresses
/// (`--max-connections-per-source 128`): it raises its own soft limit as far
/// as its `--max-connections` needs, so it holds them all, and 10 valid
/// deliveries get 204 within 1 s. Regression: without that, the 1,500
/// connections took every file descriptor, accepting paused, and valid
/// deliveries got 500 (no fd for the body's memfd) or waited ~4 s for a head
/// deadline to free one (measured: 7 × 500, 3 × 204 at 4.2 s).
#[test]
fn a_soft_limit_of_1024_open_files_does_not_cap_connections() {
    const SOURCES: u8 = 15;
    const PER_SOURCE: usize = 100;
    let _serial = one_at_a_time();
    let total = SOURCES as usize * PER_SOURCE;
    raise_nofile(4 * total as u64 + 1024);
    let f = github_fixture("attack-nofile");
    let server = f.serve_with_open_files(
        &[
            "--idle-timeout",
            "600",
            "--max-connections-per-source",
            "128",
        ],
        BACKLOG,
        1024,
    );
    let sampler = Sampler::start(server.pid(), Duration::from_millis(100));
    let groups: Vec<_> = (0..SOURCES)
        .map(|i| (Slow::Head, loopback(2 + i), PER_SOURCE))
        .collect();
    let attack = Attack::start(server.addr, "/hooks/gh", &groups, true);
    sampler.wait(
        "sockhook to hold every attacking connection",
        &server,
        |u| u.sockets > total,
    );
    let (statuses, latencies, _) = probes(server.addr, 10, Duration::from_millis(100), &sampler);
    attack.finish();
    sampler.finish();
    assert_probes("soft limit 1024", &statuses, &latencies, &server);
    let (status, log) = server.stop();
    assert!(status.success(), "{status:?}\n{}", tail(&log));
    assert!(!log.contains("unable to accept"), "{}", tail(&log));
}

/// 40 connections from 127.0.0.2, each a head that never ends: the default
/// cap (32 per source) holds 32 of them, the other 8 are answered `503` with
/// `Retry-After` at once; a valid delivery from 127.0.0.1 meanwhile gets 204;
/// once 127.0.0.2 lets go, it is served again.
#[test]
fn one_source_over_its_cap_is_answered_503_at_once_and_spares_the_others() {
    const CAP: usize = 32;
    let _serial = one_at_a_time();
    let f = github_fixture("attack-cap");
    let server = f.serve(&["--idle-timeout", "600"]);
    let head = b"POST /hooks/gh HTTP/1.1\r\nHost: attack\r\n";
    let mut conns: Vec<(TcpStream, Instant)> = (0..CAP + 8)
        .map(|_| {
            let mut stream = connect_from(loopback(2), server.addr).unwrap();
            stream.write_all(head).unwrap();
            let sent = Instant::now();
            stream.set_nonblocking(true).unwrap();
            (stream, sent)
        })
        .collect();
    let seen = wait_answers(&mut conns, 8, &server);
    assert_eq!(assert_refused_at_once("over the cap", &conns, &seen), 8);
    let (status, took) = probe(server.addr, 0);
    assert_eq!(status, 204, "{}", tail(&server.log()));
    assert!(took <= PROBE_BAR, "the probe took {}", ms(took));
    // Still held: none of the 32 has been answered (their head deadline is 5 s).
    let held = conns
        .iter_mut()
        .zip(seen)
        .filter_map(|((stream, _), mut seen)| {
            seen.poll(stream);
            (!seen.ended).then_some(())
        })
        .count();
    assert_eq!(held, CAP);
    drop(conns);
    let reply = connect_from(loopback(2), server.addr)
        .map(|mut s| exchange(&mut s, &delivery(b"{}", GH_SECRET)))
        .unwrap();
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", tail(&server.log()));
    let (status, log) = server.stop();
    assert!(status.success(), "{status:?}\n{}", tail(&log));
    // The first refusal is logged at once, the others summed up later.
    let logged: usize = log
        .lines()
        .filter_map(|l| l.split_once("127.0.0.2: refused ")?.1.split_once(' '))
        .filter(|(_, rest)| rest.starts_with("connection(s): over the limit of 32"))
        .map(|(n, _)| n.parse::<usize>().unwrap())
        .sum();
    assert_eq!(logged, 8, "{}", tail(&log));
}

// ---------------------------------------------------------------------------
// Real tools

/// The path of `tool`, or `None` after [`skip`].
fn tool(name: &str, install: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/bin", "/usr/bin"])
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        skip(&format!("{name} is not installed ({install})"));
    }
    found
}

/// A tool's process, its output going to a file; killed when dropped.
struct Tool {
    child: Child,
    name: &'static str,
    output: PathBuf,
}

impl Tool {
    fn spawn(name: &'static str, f: &Fixture, command: &mut Command) -> Tool {
        let output = f.dir.join(format!("{name}.out"));
        let file = fs::File::create(&output).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Tool {
            child,
            name,
            output,
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Kills it if it still runs; returns the end of its output, for failures.
    fn finish(mut self) -> String {
        let _ = self.child.kill();
        let status = self.child.wait().unwrap();
        self.output(status)
    }

    /// Waits for it to end by itself (at most `within`); returns the end of its output.
    fn wait(mut self, within: Duration) -> String {
        let status = wait_within(&mut self.child, within);
        self.output(status)
    }

    fn output(&self, status: std::process::ExitStatus) -> String {
        let text = fs::read(&self.output).unwrap_or_default();
        format!(
            "--- {} ({status}) ---\n{}",
            self.name,
            tail(&String::from_utf8_lossy(&text))
        )
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Once sockhook holds more than `at_least` connections of a tool's attack,
/// `probes_n` probes, one every `every`; returns the statuses, the sorted
/// latencies, the peaks, and the fewest connections sockhook held as a probe
/// started (asserted to be more than half of `at_least`, so that every probe
/// met the attack).
fn under_tool(
    name: &str,
    server: &Server,
    at_least: usize,
    (probes_n, every): (usize, Duration),
    attack: &mut Tool,
) -> (Vec<u16>, Vec<Duration>, Peaks) {
    let sampler = Sampler::start(server.pid(), Duration::from_millis(50));
    let deadline = Instant::now() + PATIENCE;
    while sampler.latest().sockets <= at_least {
        assert!(
            attack.running(),
            "{name} ended before sockhook held {at_least} of its connections"
        );
        assert!(
            Instant::now() < deadline,
            "{name}: sockhook never held {at_least} connections: {:?}\n{}",
            sampler.latest(),
            tail(&server.log())
        );
        thread::sleep(Duration::from_millis(10));
    }
    let (statuses, latencies, held) = probes(server.addr, probes_n, every, &sampler);
    let peaks = sampler.finish();
    eprintln!(
        "{name}: sockhook held at least {} connections as each probe started, up to {}; peak RSS + memfds {}",
        held[0],
        peaks.sockets,
        mib(peaks.rss_and_memfd)
    );
    assert!(
        held[0] > at_least / 2,
        "{name}: a probe started while sockhook held only {} connections",
        held[0]
    );
    (statuses, latencies, peaks)
}

/// `slowloris` (PyPI) with 500 sockets and a header line every second
/// against sockhook (`--max-connections-per-source 1024`, because the tool
/// cannot choose its source address and comes from 127.0.0.1 like the probes;
/// with the default 32 it would get 32 slots, and this tests the slots'
/// cost). Two rounds: once sockhook holds 400 of its connections, 30 valid
/// deliveries, one every 100 ms; then sockhook answers its heads 408 at the
/// 5 s deadline, slowloris notices and opens new ones, and once sockhook
/// holds 400 again, 30 more. All get 204 with p99 ≤ 1 s, and sockhook's RSS +
/// memfds stays ≤ 32 MiB. Bounded: the tool is killed after the probes
/// (about 15 s in all).
#[test]
fn slowloris_tool_leaves_valid_requests_under_1s() {
    let _serial = one_at_a_time();
    let Some(slowloris) = tool("slowloris", "pip install slowloris") else {
        return;
    };
    raise_nofile(4096);
    let f = github_fixture("attack-slowloris");
    let server = f.serve(&[
        "--idle-timeout",
        "600",
        "--max-connections-per-source",
        "1024",
    ]);
    let port = server.addr.port().to_string();
    let mut attack = Tool::spawn(
        "slowloris",
        &f,
        Command::new(slowloris).args(["127.0.0.1", "-p", &port, "-s", "500", "--sleeptime", "1"]),
    );
    let probing = (30, Duration::from_millis(100));
    let (mut statuses, mut latencies, first) =
        under_tool("slowloris", &server, 400, probing, &mut attack);
    // sockhook cuts the heads at its deadline; slowloris notices at its next
    // send and opens new sockets (its "Creating N new sockets" lines), which
    // the second round waits for.
    server.wait_log(" 408: ", 400);
    wait_for("slowloris to open 400 new sockets", || {
        let text = fs::read_to_string(&attack.output).unwrap_or_default();
        let new: usize = text
            .lines()
            .filter_map(|l| l.split_once("Creating ")?.1.split_once(" new sockets"))
            .filter_map(|(n, _)| n.parse::<usize>().ok())
            .sum();
        new >= 400
    });
    assert!(attack.running(), "slowloris ended");
    let (more, later, second) =
        under_tool("slowloris, new sockets", &server, 400, probing, &mut attack);
    let running = attack.running();
    let output = attack.finish();
    assert!(running, "slowloris ended while the probes ran\n{output}");
    statuses.extend(more);
    latencies.extend(later);
    latencies.sort();
    if statuses.iter().any(|s| *s != 204) {
        eprintln!("{output}");
    }
    assert_probes("slowloris", &statuses, &latencies, &server);
    let peak = first.rss_and_memfd.max(second.rss_and_memfd);
    assert!(peak <= MEMORY_BAR, "{}", mib(peak));
    let (status, _) = probe(server.addr, 99);
    assert_eq!(status, 204);
    let (status, log) = server.stop();
    assert!(status.success(), "{status:?}\n{}", tail(&log));
}

/// `slowhttptest` (Debian) in both slow modes, 1,000 connections each at 500
/// per second with a follow-up every second, for at most 12 s each, ending by
/// itself: slow headers (`-H`, slowloris) against the github hook, and slow
/// bodies (`-B`, R-U-Dead-Yet; its 4 KiB `Content-Length` bodies arrive a few
/// bytes a second) against a hook with `auth = "none"`, the one kind whose
/// body sockhook reads without any credential in the head (a signed hook
/// refuses slowhttptest's unsigned POST with 401 before its body). Once
/// sockhook holds 800 of them, 20 valid deliveries, one every 100 ms, all get
/// 204 with p99 ≤ 1 s. slowhttptest does not reopen what is closed, so `-H`
/// ends about 7 s in ("No open connections left"): sockhook answered every
/// slow head 408 at its 5 s deadline. `--max-connections-per-source 2048`:
/// see the slowloris test.
#[test]
fn slowhttptest_tool_leaves_valid_requests_under_1s() {
    let _serial = one_at_a_time();
    let Some(slowhttptest) = tool("slowhttptest", "apt-get install slowhttptest") else {
        return;
    };
    raise_nofile(8192);
    let f = github_fixture("attack-slowhttptest");
    let open = f.recorder("open");
    f.hook(
        "open",
        &format!("command = [{open:?}]\nauth = \"none\"\nallow_unauthenticated = true\n"),
    );
    let server = f.serve(&[
        "--idle-timeout",
        "600",
        "--max-connections-per-source",
        "2048",
    ]);
    for (mode, path) in [("-H", "/hooks/gh"), ("-B", "/hooks/open")] {
        let url = format!("http://127.0.0.1:{}{path}", server.addr.port());
        let mut attack = Tool::spawn(
            "slowhttptest",
            &f,
            Command::new(&slowhttptest).args([
                mode, "-c", "1000", "-r", "500", "-i", "1", "-l", "12", "-p", "3", "-u", &url,
            ]),
        );
        let what = format!("slowhttptest {mode}");
        let probing = (20, Duration::from_millis(100));
        let (statuses, latencies, peaks) = under_tool(&what, &server, 800, probing, &mut attack);
        let output = attack.wait(PATIENCE);
        let plain: String = output
            .split('\x1b')
            .map(|p| p.split_once('m').map_or(p, |(_, rest)| rest))
            .collect();
        let ended = plain
            .lines()
            .filter(|l| l.contains("Test ended") || l.contains("Exit status"))
            .collect::<Vec<_>>()
            .join("; ");
        eprintln!("{what}: {ended}");
        if statuses.iter().any(|s| *s != 204) {
            eprintln!("{output}");
        }
        assert_probes(&what, &statuses, &latencies, &server);
        assert!(
            peaks.rss_and_memfd <= MEMORY_BAR,
            "{}",
            mib(peaks.rss_and_memfd)
        );
    }
    assert_eq!(f.runs("open"), 0, "a slow body was taken as a whole one");
    let log = server.log();
    assert!(
        log.contains("POST /hooks/open 408"),
        "no slow body reached its deadline:\n{}",
        tail(&log)
    );
    let (status, log) = server.stop();
    assert!(status.success(), "{status:?}\n{}", tail(&log));
}

// ---------------------------------------------------------------------------
// Accept=yes under a real systemd

use support::sandbox::OutputText;
use support::system::{PATIENCE as SYSTEM_PATIENCE, STATE, System, recorder};

const ACCEPT_ENV: &str = "SOCKHOOK_TEST_ACCEPT_ATTACK";
const ACCEPT_TOKEN_ENV: &str = "SOCKHOOK_TEST_ACCEPT_TOKEN";
/// Attacking addresses (127.0.0.2 on) and connections each keeps trying to hold.
const ACCEPT_SOURCES: u8 = 10;
const ACCEPT_PER_SOURCE: usize = 12;
/// `MaxConnectionsPerSource=` of sockhook-accept.socket.
const ACCEPT_UNIT_PER_SOURCE: usize = 4;
const ACCEPT_PROBES: usize = 20;

/// `sockhook-accept.socket` (`Accept=yes`, one sockhook per connection) under
/// slow heads from 10 addresses, each trying to hold 12 connections and
/// opening again every second what was closed. What holds under this model:
/// systemd, not sockhook, decides who gets a process. `MaxConnectionsPerSource=4`
/// lets each attacking address hold 4 (sockhook answers each 408 at its 5 s
/// head deadline and exits; the attacker comes back) and resets the rest at
/// once; `MaxConnections=128` bounds them all. So a valid sender from another
/// address — 127.0.0.1 here — is answered as long as fewer than 128 / 4 = 32
/// attacking addresses are at work: with 10, once their 40 instances run, 20
/// deliveries, one every 250 ms, all get 204 with p99 ≤ 1 s, each paying for
/// a unit start; the socket stays listening with no failed unit, and the
/// journal shows systemd dropping the attackers' extra connections. A
/// delivery that arrives while systemd is still starting a burst of
/// instances waits behind those starts (PID 1 starts units one after the
/// other): it is sent right after the attackers' 40 are accepted, must get
/// 204, and its latency is printed but not held to 1 s (0.5–0.7 s measured
/// on 2 loaded cores). From 32 addresses on every slot can be taken; there
/// `Accept=no` (sockhook.socket, the default) is the answer, where sockhook
/// itself holds thousands of slow connections (the slots test).
#[test]
fn accept_yes_socket_under_slow_heads_from_many_sources_answers_another_source() {
    let _serial = one_at_a_time();
    let Some(sys) = System::install() else {
        return;
    };
    sys.hook("record", &recorder("record"));
    sys.run_ok("systemctl enable --now sockhook-accept.socket");
    sys.assert_listening("sockhook-accept.socket");
    let token = sys.token("/hooks/record");
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "{ACCEPT_ENV}=127.0.0.1:7777 {ACCEPT_TOKEN_ENV}={token} {} --exact accept_yes_attack_client \
         --ignored --nocapture --test-threads=1",
        exe.display()
    );
    let out = sys.sb.run_timeout(&script, Duration::from_secs(180));
    let text = out.stdout_text();
    let mut statuses = Vec::new();
    let mut latencies = Vec::new();
    let mut held = None;
    let mut burst = None;
    let mut outcomes = String::new();
    for line in text.lines() {
        let line = line.find("attack-").map_or(line, |at| &line[at..]);
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["attack-probe", status, micros] => {
                statuses.push(status.parse::<u16>().unwrap());
                latencies.push(Duration::from_micros(micros.parse().unwrap()));
            }
            ["attack-held", n, ..] => held = Some(n.parse::<usize>().unwrap()),
            ["attack-burst-probe", status, micros] => {
                burst = Some((
                    status.parse::<u16>().unwrap(),
                    micros.parse::<u64>().unwrap(),
                ));
            }
            ["attack-outcomes", rest @ ..] => outcomes = rest.join(" "),
            _ => {}
        }
    }
    assert!(
        out.status.success(),
        "the attack client failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "Accept=yes: attackers' connections ended as {outcomes}; held at once: {}; \
         probe latencies in order (ms): {:?}",
        held.map_or("?".into(), |n| n.to_string()),
        latencies.iter().map(|l| l.as_millis()).collect::<Vec<_>>()
    );
    latencies.sort();
    assert_eq!(statuses.len(), ACCEPT_PROBES, "{text}");
    let (burst_status, burst_micros) = burst.expect("no attack-burst-probe line");
    eprintln!(
        "Accept=yes: the probe sent while systemd started the attackers' instances: {burst_status} in {:.1} ms",
        burst_micros as f64 / 1000.0
    );
    assert_eq!(burst_status, 204, "{text}");
    let held = held.expect("no attack-held line");
    let per_unit = ACCEPT_SOURCES as usize * ACCEPT_UNIT_PER_SOURCE;
    assert!(
        held >= per_unit,
        "the attack held {held} connections, less than {per_unit}"
    );
    let sorted = latencies.clone();
    let median = percentile(&sorted, 0.5);
    let p99 = percentile(&sorted, 0.99);
    eprintln!(
        "Accept=yes: {} probes, statuses {:?}; latency median {}, p99 {}, max {}",
        statuses.len(),
        count(&statuses),
        ms(median),
        ms(p99),
        ms(sorted[sorted.len() - 1])
    );
    assert!(statuses.iter().all(|s| *s == 204), "{statuses:?}\n{text}");
    assert!(p99 <= PROBE_BAR, "probe p99 {} > 1 s: {sorted:?}", ms(p99));
    let record = format!("{STATE}/record.log");
    sys.wait("the probes' runs", SYSTEM_PATIENCE, || {
        let text = sys.read(&record)?;
        // The burst probe's run too.
        (text.lines().count() > ACCEPT_PROBES).then_some(())
    });
    let failed = sys.run_ok("systemctl list-units --failed --no-legend --plain 'sockhook*'");
    assert_eq!(failed.trim(), "", "failed units");
    sys.assert_listening("sockhook-accept.socket");
    let journal = sys.run_ok("journalctl -b --no-pager -o cat -u sockhook-accept.socket");
    assert!(
        journal.contains("dropping connection"),
        "systemd never refused an attacker over MaxConnectionsPerSource=:\n{journal}"
    );
}

/// Not a test on its own: the attack and the probes that
/// `accept_yes_socket_under_slow_heads_from_many_sources_answers_another_source`
/// runs inside the sandbox, whose loopback is not the host's. Prints
/// `attack-held N` (sockhook-accept.socket's `NConnections` once the
/// attackers hold their share), one `attack-probe STATUS MICROSECONDS` per
/// probe, and `attack-outcomes {…}`.
#[test]
#[ignore = "run inside the sandbox by accept_yes_socket_under_slow_heads_from_many_sources_answers_another_source"]
fn accept_yes_attack_client() {
    let (Ok(target), Ok(token)) = (std::env::var(ACCEPT_ENV), std::env::var(ACCEPT_TOKEN_ENV))
    else {
        return;
    };
    let addr: SocketAddr = target.parse().unwrap();
    let groups: Vec<_> = (0..ACCEPT_SOURCES)
        .map(|i| (Slow::Head, loopback(2 + i), ACCEPT_PER_SOURCE))
        .collect();
    let attack = Attack::start(addr, "/hooks/record", &groups, false);
    let want = ACCEPT_SOURCES as usize * ACCEPT_UNIT_PER_SOURCE;
    let connections = || -> usize {
        let out = Command::new("systemctl")
            .args([
                "show",
                "-p",
                "NConnections",
                "--value",
                "sockhook-accept.socket",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let mut held = 0;
    wait_for("the attackers to hold their connections", || {
        held = connections();
        held >= want
    });
    println!("attack-held {held} (attackers see {} open)", attack.open());
    let probe = |n: usize| {
        let body = format!("probe-{n}\n");
        let started = Instant::now();
        let reply = connect_from(loopback(1), addr)
            .map(|mut s| {
                exchange(
                    &mut s,
                    &post(
                        "/hooks/record",
                        &[&format!("Authorization: Bearer {token}")],
                        body.as_bytes(),
                    ),
                )
            })
            .ok();
        let status = reply.filter(Reply::complete).map_or(0, |r| r.status());
        format!("{status} {}", started.elapsed().as_micros())
    };
    // At once: systemd is still starting the attackers' instances.
    println!("attack-burst-probe {}", probe(0));
    let running = || -> usize {
        let out = Command::new("systemctl")
            .args(["list-units", "--state=active", "--no-legend", "--plain"])
            .arg("sockhook-accept@*.service")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    wait_for("the attackers' instances to run", || running() >= want);
    for n in 1..=ACCEPT_PROBES {
        // Pacing: the probes spread over the attackers' cycle.
        let next = Instant::now() + Duration::from_millis(250);
        println!("attack-probe {}", probe(n));
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    println!("attack-outcomes {:?}", attack.finish());
}
