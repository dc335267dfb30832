//! System tests: sockhook installed by `make install` under a real systemd, with real
//! sudo, driven by curl from inside the sandbox (see `support/sandbox.rs`).
//!
//! Every test boots its own sandbox, installs the binary cargo built for this run, and
//! prints the sockhook journal when it fails. Waits are bounded polls; the only sleeps
//! pace requests. A unit passes through `activating` and `deactivating`, so its state is
//! waited for (`wait_state`, `wait_stopped`, `wait_listening`), not read once right after
//! a request or a stop. Run with `--nocapture` to see the figures (flood, 100 requests,
//! idle).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::harness::{base64, github_signature};
use support::sandbox::OutputText;
use support::system::*;

// ---------------------------------------------------------------------------------------

/// A token hook's command runs as root through `sudo -n` and the drop-in; a command the
/// drop-in does not list is refused by sudo, logged, and changes nothing for clients.
#[test]
fn sudo_runs_the_allowed_command_as_root_and_refuses_others() {
    let Some(sys) = System::install() else {
        return;
    };
    sys.script(
        "/usr/local/sbin/sockhook-test-uid",
        &format!("#!/bin/sh\nid -u >{STATE}/uid.new && mv -f {STATE}/uid.new {STATE}/uid\n"),
    );
    sys.script(
        "/usr/local/sbin/sockhook-test-denied",
        &format!("#!/bin/sh\nid -u >{STATE}/denied\n"),
    );
    sys.hook(
        "whoami",
        "command = [\"/usr/bin/sudo\", \"-n\", \"/usr/local/sbin/sockhook-test-uid\"]\nauth = \"token\"\n",
    );
    sys.hook(
        "denied",
        "command = [\"/usr/bin/sudo\", \"-n\", \"/usr/local/sbin/sockhook-test-denied\"]\nauth = \"token\"\n",
    );
    sys.allow_sudo(&["sockhook ALL=(root) NOPASSWD: /usr/local/sbin/sockhook-test-uid \"\""]);
    // check foresees what follows: whoami runs, denied is refused by sudo.
    let check = sys.run("sockhook check");
    let text = check.stdout_text();
    assert_eq!(check.status.code(), Some(1), "{text}");
    assert!(
        text.contains("/hooks/whoami: ok: auth token, POST runs /usr/local/sbin/sockhook-test-uid as root (sudo -n)")
            && text.contains(&format!(
                "{HOOKS}/denied.toml: command: sudoers does not let user sockhook run /usr/local/sbin/sockhook-test-denied as root; add this line with visudo -f {SUDOERS}: "
            ))
            && text.contains(", 1 problem(s), "),
        "{text}"
    );
    sys.start_socket();

    let whoami = sys.token("/hooks/whoami");
    assert_eq!(sys.post("whoami", &whoami, "first"), "204");
    let uid = sys.wait("the command's uid file", PATIENCE, || {
        sys.read(&format!("{STATE}/uid"))
    });
    assert_eq!(uid.trim(), "0", "the command did not run as root");
    sys.wait_log(&["hook whoami: run", "exited 0"], PATIENCE);

    let denied = sys.token("/hooks/denied");
    assert_eq!(sys.post("denied", &denied, "second"), "204");
    let refusal = sys.wait_log(&["hook denied: sudo: "], PATIENCE);
    let exit = sys.wait_log(&["hook denied: run", "exited 1"], PATIENCE);
    eprintln!("sudo refused: {refusal}\n              {exit}");
    assert!(
        sys.read(&format!("{STATE}/denied")).is_none(),
        "the command not in the drop-in ran"
    );

    // sockhook is fine: the next request to the good hook is answered and runs again.
    fs::remove_file(sys.sb.path(&format!("{STATE}/uid"))).unwrap();
    assert_eq!(sys.post("whoami", &whoami, "third"), "204");
    let uid = sys.wait("the uid file, again", PATIENCE, || {
        sys.read(&format!("{STATE}/uid"))
    });
    assert_eq!(uid.trim(), "0");
    sys.assert_listening("sockhook.socket");
}

/// 100 requests paced over 10 s: all answered 204, every command ran once, the socket
/// stays listening, and systemd started sockhook once or twice — not 100 times.
#[test]
fn hundred_requests_in_ten_seconds_one_activation() {
    let Some(sys) = System::install() else {
        return;
    };
    sys.hook("record", &recorder("record"));
    sys.start_socket();
    let token = sys.token("/hooks/record");
    assert_eq!(sys.starts(), 0);

    // Request i starts at t0 + i * 100 ms (absolute pacing, so no drift), in the
    // background; each curl writes its status and time to its own file.
    let script = format!(
        r#"set -u
mkdir -p /tmp/hundred && cd /tmp/hundred
t0=${{EPOCHREALTIME/./}}
for i in $(seq 0 99); do
    d=$(( t0 + i * 100000 - ${{EPOCHREALTIME/./}} ))
    if (( d > 0 )); then sleep "$(printf '%d.%06d' $((d / 1000000)) $((d % 1000000)))"; fi
    curl -s -o /dev/null -w '%{{http_code}} %{{time_total}}\n' --max-time 5 \
        -u '{token}:' --data-binary "req-$i" {URL}/hooks/record >"r$i" &
done
wait
echo "span_ms $(( (${{EPOCHREALTIME/./}} - t0) / 1000 ))"
cat r*"#
    );
    let out = sys.sb.run_timeout(&script, Duration::from_secs(60));
    let text = out.stdout_text();
    assert!(out.status.success(), "request loop failed: {out:?}");
    let span_ms: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("span_ms "))
        .unwrap()
        .parse()
        .unwrap();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut slowest = 0f64;
    for line in text.lines().filter(|l| !l.starts_with("span_ms")) {
        let (code, time) = line.split_once(' ').unwrap_or((line, "0"));
        *statuses.entry(code.to_string()).or_default() += 1;
        slowest = slowest.max(time.parse().unwrap_or(0.0));
    }
    let starts_during = sys.starts();
    let record = format!("{STATE}/record.log");

    // Every accepted request runs its command, unless it was coalesced: a trigger that
    // arrives while a run is in progress waits, and a newer one replaces it (logged as
    // "queued run replaced"); a trigger older than one already run or queued, whose
    // client closed later, is dropped ("not run: a newer request"; commands.rs,
    // a_lingering_older_request_never_runs_after_a_newer_one). So: lines recorded +
    // coalesced = 100, no body twice.
    let (lines, replaced) = sys.wait(
        "every command run (or its coalescing) to be recorded",
        PATIENCE,
        || {
            let lines: Vec<String> = sys
                .read(&record)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
            let log = sys.log("sockhook.service");
            let replaced = log
                .matches("queued run replaced by a newer request")
                .count()
                + log
                    .matches("not run: a newer request was already run or queued")
                    .count();
            (lines.len() + replaced >= 100).then_some((lines, replaced))
        },
    );
    let queued = sys
        .log("sockhook.service")
        .matches("run queued behind the one in progress")
        .count();
    let (active, sub) = sys.state("sockhook.socket");
    eprintln!(
        "100 requests: span {:.2} s, statuses {statuses:?}, slowest {slowest:.3} s; \
         {} runs recorded, {queued} queued behind a run, {replaced} coalesced away; \
         sockhook.service started {starts_during} time(s) \
         (= {} per 60 s; shipped limit 20 per 60 s, systemd default 5 per 10 s; \
         one process per request would need 100, i.e. 600 per 60 s); \
         sockhook.socket {active}/{sub}",
        span_ms as f64 / 1000.0,
        lines.len(),
        starts_during * 6,
    );

    assert_eq!(statuses.get("204"), Some(&100), "statuses: {statuses:?}");
    assert!(
        span_ms < 12_000,
        "the requests took {span_ms} ms, not about 10 s"
    );
    let unique: HashSet<&String> = lines.iter().collect();
    assert_eq!(unique.len(), lines.len(), "a command ran twice: {lines:?}");
    let sent: HashSet<String> = (0..100).map(|i| format!("req-{i}")).collect();
    assert!(
        lines.iter().all(|l| sent.contains(l)),
        "unexpected bodies: {lines:?}"
    );
    assert_eq!(
        lines.len() + replaced,
        100,
        "runs recorded + coalesced != 100"
    );
    // sockhook serves until 5 s without a connection: 10 s of traffic at 10 requests
    // per second keeps one process busy, and any 10 s window holds at most
    // 10/5 + 1 = 3 traffic starts. Here at most 2, i.e. at most 12 per 60 s (≤ 13).
    assert!(
        (1..=2).contains(&starts_during),
        "sockhook.service started {starts_during} times for 100 requests in 10 s"
    );
    assert_eq!(active, "active", "sockhook.socket is {active}/{sub}");
    // Back to listening once the process exits idle: nothing failed on the way.
    sys.wait_listening("sockhook.socket");
    assert_eq!(
        sys.starts(),
        starts_during,
        "started again without a request"
    );
}

/// 500 hostile connections, 50 at a time: the socket stays listening and a valid request
/// right after the flood is answered 204 within 2 s.
#[test]
fn flood_of_500_connections_leaves_the_socket_listening() {
    let Some(sys) = System::install() else {
        return;
    };
    sys.hook("record", &recorder("record"));
    sys.start_socket();
    let token = sys.token("/hooks/record");
    let exe = std::env::current_exe().unwrap();

    // The flood client is this test binary, run inside the sandbox (its loopback is not
    // the host's); then, at once, curl with a valid request.
    let script = format!(
        r#"{FLOOD_ENV}=127.0.0.1:7777 {} --exact flood_client --ignored --nocapture --test-threads=1 || exit 1
t0=${{EPOCHREALTIME/./}}
code=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 -u '{token}:' --data-binary after-flood {URL}/hooks/record)
echo "recovered $code $(( (${{EPOCHREALTIME/./}} - t0) / 1000 ))""#,
        exe.display()
    );
    let out = sys.sb.run_timeout(&script, Duration::from_secs(180));
    let text = out.stdout_text();
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut elapsed = String::new();
    let mut recovered = None;
    for line in text.lines() {
        // The harness prints "test flood_client ... " before the first result.
        let line = line.find("flood-").map_or(line, |at| &line[at..]);
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["flood-count", kind, outcome, n] => {
                let n: usize = n.parse().unwrap();
                counts.insert((kind.to_string(), outcome.to_string()), n);
                *by_status.entry(outcome.to_string()).or_default() += n;
            }
            ["flood-elapsed", secs] => elapsed = secs.to_string(),
            ["recovered", code, ms] => {
                recovered = Some((code.to_string(), ms.parse::<u64>().unwrap()));
            }
            _ => {}
        }
    }
    let total: usize = counts.values().sum();
    let (active, sub) = sys.state("sockhook.socket");
    let starts = sys.starts();
    eprintln!("flood: {total} connections, 50 at a time, in {elapsed} s");
    for ((kind, outcome), n) in &counts {
        eprintln!("flood:   {kind:<14} {outcome:<12} {n}");
    }
    eprintln!("flood: by outcome {by_status:?}");
    eprintln!(
        "flood: valid request after the flood: {recovered:?} (status, ms); \
         sockhook.socket {active}/{sub}; sockhook.service started {starts} time(s)"
    );
    assert!(
        out.status.success(),
        "flood client failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(total, 500, "flood client output:\n{text}");
    assert_eq!(active, "active", "sockhook.socket is {active}/{sub}");
    let (code, ms) = recovered.expect("no request after the flood");
    assert_eq!(code, "204", "the request after the flood");
    assert!(ms < 2000, "204 took {ms} ms after the flood ended");
    // Every connection that sent something got a complete HTTP answer.
    let expect = [
        ("half-open", "408"),
        ("slow", "404"),
        ("oversize", "413"),
        ("connect-close", "no-response"),
    ];
    for ((kind, outcome), n) in &counts {
        let ok = match expect.iter().find(|(k, _)| k == kind) {
            Some((_, want)) => outcome == want,
            None => outcome.len() == 3 && (outcome.starts_with('4') || outcome.starts_with('5')),
        };
        assert!(ok, "{n} {kind} connection(s) ended with {outcome}");
    }
    sys.wait_log(&["POST /hooks/record 204 hook record"], PATIENCE);
    sys.wait("the run after the flood", PATIENCE, || {
        (sys.read(&format!("{STATE}/record.log"))? == "after-flood\n").then_some(())
    });
    sys.wait_listening("sockhook.socket");
}

const FLOOD_ENV: &str = "SOCKHOOK_TEST_FLOOD";
const FLOOD_CONNECTIONS: usize = 500;
const FLOOD_CONCURRENCY: usize = 50;

#[derive(Clone, Copy, Debug)]
enum Flood {
    /// Random bytes, then read the answer.
    Garbage,
    /// Half a head, then hold until the server gives up.
    HalfOpen,
    /// A complete small request, one byte per 100 ms.
    Slow,
    /// A Content-Length far above the hook's max_body, and 64 KiB of it.
    Oversize,
    /// Connect, close.
    ConnectClose,
}

impl Flood {
    fn name(self) -> &'static str {
        match self {
            Flood::Garbage => "garbage",
            Flood::HalfOpen => "half-open",
            Flood::Slow => "slow",
            Flood::Oversize => "oversize",
            Flood::ConnectClose => "connect-close",
        }
    }
}

/// Of every 10 connections: 3 garbage, 1 half-open, 1 slow, 2 oversize, 3 connect-close.
const FLOOD_MIX: [Flood; 10] = [
    Flood::Garbage,
    Flood::ConnectClose,
    Flood::Oversize,
    Flood::HalfOpen,
    Flood::Garbage,
    Flood::ConnectClose,
    Flood::Slow,
    Flood::Oversize,
    Flood::Garbage,
    Flood::ConnectClose,
];

/// Not a test on its own: the flood client that
/// `flood_of_500_connections_leaves_the_socket_listening` runs inside the sandbox.
#[test]
#[ignore = "run inside the sandbox by flood_of_500_connections_leaves_the_socket_listening"]
fn flood_client() {
    let Ok(target) = std::env::var(FLOOD_ENV) else {
        return;
    };
    let addr: SocketAddr = target.parse().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let counts: Arc<Mutex<HashMap<(&'static str, String), usize>>> = Arc::default();
    let started = Instant::now();
    let workers: Vec<_> = (0..FLOOD_CONCURRENCY)
        .map(|_| {
            let (next, counts) = (Arc::clone(&next), Arc::clone(&counts));
            thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= FLOOD_CONNECTIONS {
                        return;
                    }
                    let kind = FLOOD_MIX[i % FLOOD_MIX.len()];
                    let outcome = flood_one(addr, kind, i as u64);
                    *counts
                        .lock()
                        .unwrap()
                        .entry((kind.name(), outcome))
                        .or_default() += 1;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let elapsed = started.elapsed();
    let mut out = io::stdout().lock();
    for ((kind, outcome), n) in counts.lock().unwrap().iter() {
        writeln!(out, "flood-count {kind} {outcome} {n}").unwrap();
    }
    writeln!(out, "\nflood-elapsed {:.1}", elapsed.as_secs_f64()).unwrap();
}

/// Addresses the flood comes from: 127.0.0.2 and the next ones, so that no
/// source holds more connections at once than sockhook's per-source limit
/// (32 by default; `per_source_limit_answers_503_and_spares_others` tests that).
const FLOOD_SOURCES: u64 = 4;

/// One flood connection; returns the status it got, or what happened instead.
fn flood_one(addr: SocketAddr, kind: Flood, seed: u64) -> String {
    let from = support::net::loopback(2 + (seed % FLOOD_SOURCES) as u8);
    let mut stream = match support::net::connect_from(from, addr) {
        Ok(stream) => stream,
        Err(e) => return format!("connect-{:?}", e.kind()),
    };
    let limit = Some(Duration::from_secs(20));
    stream.set_read_timeout(limit).unwrap();
    stream.set_write_timeout(limit).unwrap();
    let sent = match kind {
        Flood::ConnectClose => return "no-response".into(),
        Flood::Garbage => {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let bytes: Vec<u8> = (0..256)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect();
            stream.write_all(&bytes)
        }
        Flood::HalfOpen => {
            stream.write_all(b"POST /hooks/record HTTP/1.1\r\nHost: flood\r\nContent-Le")
        }
        Flood::Slow => b"GET /flood HTTP/1.1\r\nHost: flood\r\n\r\n"
            .iter()
            .try_for_each(|b| {
                // Pacing the client (a slow sender), not waiting for anything.
                thread::sleep(Duration::from_millis(100));
                stream.write_all(&[*b])
            }),
        Flood::Oversize => stream
            .write_all(
                b"POST /hooks/record HTTP/1.1\r\nHost: flood\r\nContent-Length: 1073741824\r\n\r\n",
            )
            .and_then(|()| stream.write_all(&[b'x'; 64 * 1024])),
    };
    let mut answer = Vec::new();
    let read = (&mut stream).take(4096).read_to_end(&mut answer);
    let status = answer
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .map(|code| String::from_utf8_lossy(code).into_owned());
    match (status, sent, read) {
        (Some(status), _, _) => status,
        (None, Err(e), _) | (None, Ok(()), Err(e)) => format!("{:?}", e.kind()),
        (None, Ok(()), Ok(_)) => "no-response".into(),
    }
}

/// sockhook exits after 5 s without a connection, and the next request starts it again.
#[test]
fn idle_exit_and_reactivation() {
    let Some(sys) = System::install() else {
        return;
    };
    sys.hook("record", &recorder("record"));
    sys.start_socket();
    let token = sys.token("/hooks/record");

    assert_eq!(sys.post("record", &token, "one"), "204");
    let answered = Instant::now();
    // sockhook sends READY=1 as it starts, but systemd may not have read it yet.
    sys.wait_state("sockhook.service", "active");
    // Idle: the service passes through deactivating to inactive (a fresh clone
    // once failed by taking deactivating for the end state); meanwhile the
    // socket stays active, back to listening once the service has let go of it.
    let state = sys.wait("sockhook.service to leave active", IDLE_TIMEOUT * 3, || {
        let (socket, sub) = sys.state("sockhook.socket");
        assert_eq!(socket, "active", "sockhook.socket is {socket}/{sub}");
        let (active, _) = sys.state("sockhook.service");
        (active != "active").then_some(active)
    });
    let idle = answered.elapsed();
    let end = sys.wait_stopped("sockhook.service");
    eprintln!(
        "idle exit: sockhook.service {state} {:.2} s after the 204, then {end}",
        idle.as_secs_f64()
    );
    assert_eq!(end, "inactive");
    assert!(
        idle >= IDLE_TIMEOUT - Duration::from_millis(500),
        "exited after {idle:?}, before the idle timeout"
    );
    let result = sys.run_ok("systemctl show -p Result,ExecMainStatus sockhook.service");
    assert!(
        result.contains("Result=success") && result.contains("ExecMainStatus=0"),
        "{result}"
    );
    sys.wait_log(&["sockhook: info: exiting", "idle"], PATIENCE);
    sys.wait_listening("sockhook.socket");
    assert_eq!(sys.starts(), 1);

    assert_eq!(sys.post("record", &token, "two"), "204");
    sys.wait_state("sockhook.service", "active");
    assert_eq!(sys.starts(), 2);
    let record = format!("{STATE}/record.log");
    sys.wait("both runs", PATIENCE, || {
        (sys.read(&record)? == "one\ntwo\n").then_some(())
    });
}

/// `systemctl status` shows what sockhook last did; the journal has rejected requests at
/// warning and accepted ones at info priority; no secret ever reaches the journal.
#[test]
fn status_and_journal_priorities_without_secrets() {
    let Some(sys) = System::install() else {
        return;
    };
    let gh_secret = format!("gh-secret-{}", sys.sb.name());
    sys.sb.write_file("/etc/sockhook/github-test", &gh_secret);
    sys.run_ok(
        "chown root:sockhook /etc/sockhook/github-test && chmod 0640 /etc/sockhook/github-test",
    );
    sys.hook("ping", "command = [\"/bin/true\"]\nauth = \"token\"\n");
    sys.hook(
        "gh",
        "command = [\"/bin/true\"]\nauth = \"github\"\nsecret = \"/etc/sockhook/github-test\"\n",
    );
    sys.run_ok("sockhook check");
    sys.start_socket();
    let token = sys.token("/hooks/ping");
    // A near miss: the right token with its last digit changed.
    let mut wrong = token.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });

    // sockhook sends STATUS= right after the response, so systemd may see it a moment
    // after curl has its answer.
    let status_shows = |text: &str| {
        sys.wait(
            &format!("systemctl status to show {text:?}"),
            PATIENCE,
            || {
                let status = sys
                    .run("systemctl status --no-pager --full sockhook.service")
                    .stdout_text();
                (status.contains(text) && status.contains("Active: active (running)"))
                    .then_some(status)
            },
        )
    };
    assert_eq!(sys.post("ping", &token, "hello"), "204");
    // One line for both: the last request answered, and the last run that ended.
    let status = status_shows(
        "Status: \"last request: POST /hooks/ping 204 hook ping: accepted; last run: hook ping: run ",
    );
    assert!(status.contains(" exited 0 after "), "{status}");
    eprintln!("{status}");
    assert_eq!(sys.post("ping", &wrong, "hello"), "401");
    status_shows("Status: \"last request: POST /hooks/ping 401 hook ping:");

    let body = "{\"ref\":\"refs/heads/main\"}";
    sys.sb.write_file("/tmp/gh-body", body);
    // Signed here, not by `sockhook sign`: sockhook is not its own witness.
    let signature = github_signature(gh_secret.as_bytes(), body.as_bytes());
    let signature = signature.as_str();
    let good_hex = signature.rsplit('=').next().unwrap().to_string();
    let bad_hex: String = good_hex.chars().rev().collect();
    let gh = |header: &str| {
        sys.curl(&format!(
            "-H 'X-GitHub-Event: push' -H {} -H 'Content-Type: application/json' \
             --data-binary @/tmp/gh-body {URL}/hooks/gh",
            q(header)
        ))
    };
    assert_eq!(gh(signature), "204");
    assert_eq!(gh(&format!("X-Hub-Signature-256: sha256={bad_hex}")), "401");
    sys.wait_log(&["POST /hooks/gh 401 hook gh:"], PATIENCE);

    let warnings = sys.run_ok("journalctl -b --no-pager -o cat -u sockhook.service -p warning");
    let infos = sys.run_ok("journalctl -b --no-pager -o cat -u sockhook.service -p info");
    eprintln!("-p warning:\n{warnings}");
    assert!(
        warnings.contains("POST /hooks/ping 401 hook ping:")
            && warnings.contains("POST /hooks/gh 401 hook gh:"),
        "rejected requests missing at priority warning:\n{warnings}"
    );
    assert!(
        !warnings.contains(" 204 "),
        "accepted requests logged as warnings:\n{warnings}"
    );
    assert!(
        infos.contains("POST /hooks/ping 204 hook ping: accepted")
            && infos.contains("POST /hooks/gh 204 hook gh: accepted"),
        "accepted requests missing at priority info:\n{infos}"
    );
    assert!(
        !infos.contains("<4>") && !infos.contains("<6>"),
        "priority prefixes were not consumed by journald:\n{infos}"
    );

    let key = sys.read("/etc/sockhook/key").unwrap().trim().to_string();
    let basic = base64(format!("{token}:").as_bytes());
    let secrets = [
        ("the server key", key.as_str()),
        ("the token", token.as_str()),
        ("a wrong token", wrong.as_str()),
        ("the Basic credentials", basic.as_str()),
        ("the GitHub secret", gh_secret.as_str()),
        ("a valid signature", good_hex.as_str()),
        ("an invalid signature", bad_hex.as_str()),
    ];
    let everything = sys
        .run_ok("journalctl -b --no-pager -o export")
        .to_lowercase();
    for (what, secret) in secrets {
        assert!(
            secret.len() >= 16 && !everything.contains(&secret.to_lowercase()),
            "{what} ({secret}) appears in the journal"
        );
    }
}

/// A run through `sudo -n` that outlives `timeout = 2` is stopped: sockhook (user
/// sockhook) sends SIGTERM to the run's process group; sudo (same real uid) gets it and
/// relays it to its command, which `exec`s sleep.
#[test]
fn timeout_stops_a_command_under_sudo() {
    timeout_under_sudo(
        "#!/bin/sh\necho \"sleeping as $(id -u)\"\nexec sleep 61\n",
        "61",
    );
}

/// The same with a script that runs sleep as a child, as most scripts would. sudo relays
/// the signal to its direct child only, and the root processes in the group cannot be
/// signalled by user sockhook: the sleep must still be gone when the run is reported
/// over, not only when systemd stops the whole unit.
#[test]
fn timeout_stops_the_children_of_a_command_under_sudo() {
    timeout_under_sudo(
        "#!/bin/sh\necho \"sleeping as $(id -u)\"\nsleep 62\necho woke up\n",
        "62",
    );
}

fn timeout_under_sudo(script: &str, seconds: &str) {
    let Some(sys) = System::install() else {
        return;
    };
    let marker = format!("sleep {seconds}");
    sys.script("/usr/local/sbin/sockhook-test-sleep", script);
    sys.hook(
        "sleepy",
        "command = [\"/usr/bin/sudo\", \"-n\", \"/usr/local/sbin/sockhook-test-sleep\"]\n\
         auth = \"token\"\ntimeout = 2\n",
    );
    sys.allow_sudo(&["sockhook ALL=(root) NOPASSWD: /usr/local/sbin/sockhook-test-sleep \"\""]);
    // A run that lasts until the test opens its gate (at most 60 s) keeps sockhook
    // from its idle exit, so that systemd cannot end the sleep by stopping the unit
    // however long the checks below take: only sockhook's timeout can.
    let gate = format!("{STATE}/keeper-gate");
    sys.script(
        "/usr/local/sbin/sockhook-test-keeper",
        &format!(
            "#!/bin/sh\ni=0\nwhile [ ! -e {gate} ]; do\n  i=$((i + 1)); [ $i -gt 1200 ] && exit 9\n  sleep 0.05\ndone\n"
        ),
    );
    sys.hook(
        "keeper",
        "command = [\"/usr/local/sbin/sockhook-test-keeper\"]\nauth = \"token\"\n",
    );
    sys.start_socket();
    assert_eq!(sys.post("keeper", &sys.token("/hooks/keeper"), ""), "204");
    sys.wait_log(&["hook keeper: run", " started"], PATIENCE);
    let token = sys.token("/hooks/sleepy");
    let pgrep = |uid: &str| {
        sys.run(&format!("pgrep -u {uid} -f -x {}", q(&marker)))
            .stdout_text()
            .trim()
            .to_string()
    };

    assert_eq!(sys.post("sleepy", &token, "zzz"), "204");
    sys.wait("the sleep to run as root", PATIENCE, || {
        (!pgrep("0").is_empty()).then_some(())
    });
    sys.wait_log(&["hook sleepy: sleeping as 0"], PATIENCE);
    let running = Instant::now();
    let timed_out = sys.wait_log(&["hook sleepy: run", "timed out after 2 s"], PATIENCE);
    let ended = sys.wait("the run to be reported over", PATIENCE, || {
        sys.log("sockhook.service")
            .lines()
            .find(|l| {
                l.contains("hook sleepy: run")
                    && (l.contains("killed by signal") || l.contains("exited"))
            })
            .map(str::to_string)
    });
    let over = Instant::now();
    // While the keeper runs, only sockhook's signals can end the sleep: systemd kills
    // what is left in the cgroup only when sockhook exits, and it cannot exit yet.
    let gone = (|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if pgrep("0").is_empty() {
                return Some(over.elapsed());
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    })();
    let service = sys.is_active("sockhook.service");
    let ps = sys.run("ps -eo pid,pgid,ppid,ruid,euid,args").stdout_text();
    eprintln!(
        "timeout through sudo ({marker}): {timed_out}\n  {ended}\n  \
         `{marker}` gone {gone:?} after the run was reported over \
         ({:.1} s after it started); sockhook.service {service}",
        running.elapsed().as_secs_f64()
    );
    assert!(
        gone.is_some(),
        "`{marker}` (root, under sudo) survived the run's timeout ({ended}); \
         sockhook.service is {service}:\n{ps}"
    );
    assert_eq!(
        service, "active",
        "sockhook.service stopped before the check, although the keeper runs: \
         systemd, not sockhook, may have ended `{marker}`"
    );
    let keeper_over = sys
        .log("sockhook.service")
        .lines()
        .any(|l| l.contains("hook keeper: run") && !l.ends_with(" started"));
    assert!(!keeper_over, "the keeper ended before the check");
    // And nothing is left once the unit has stopped (not while it deactivates:
    // systemd may still be killing what is left in its cgroup).
    sys.sb.write_file(&gate, "");
    sys.wait_log(&["hook keeper: run", "exited 0"], PATIENCE);
    sys.wait_stopped("sockhook.service");
    assert_eq!(pgrep("0"), "", "`{marker}` survived sockhook.service");
}

/// The installed units verify cleanly, the installed drop-in passes `visudo -c`, and after
/// `systemctl disable --now` and `make uninstall` no shipped file is left.
#[test]
fn units_verify_sudoers_checks_and_uninstall_leaves_nothing() {
    let Some(sys) = System::install() else {
        return;
    };
    let unitdir = "/usr/local/lib/systemd/system";
    let units = "sockhook.socket sockhook.service sockhook-accept.socket sockhook-accept@.service sockhook-subscribe.service";
    // Documentation=man:sockhook(8) is checked too: make install put the page
    // (doc/sockhook.8) where man finds it.
    assert!(
        fs::metadata(format!("{REPO}/doc/sockhook.8")).is_ok(),
        "doc/sockhook.8 is gone: Documentation=man:sockhook(8) names nothing"
    );
    let verify = sys.run(&format!("cd {unitdir} && systemd-analyze verify {units}"));
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify {units}: {}\n{}",
        verify.status,
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = sys.run_ok("systemd-analyze security --no-pager sockhook.service | tail -1");
    eprintln!("systemd-analyze security (online, systemd in the sandbox): {security}");
    sys.run_ok("visudo -c");
    assert_eq!(
        sys.run_ok(&format!("stat -c '%a %U:%G' {SUDOERS}")).trim(),
        "440 root:root"
    );
    assert_eq!(
        sys.run_ok("stat -c '%a %U' /etc/sockhook/key").trim(),
        "600 root"
    );

    sys.run_ok("systemctl enable --now sockhook.socket");
    sys.assert_listening("sockhook.socket");
    let token = sys.token("/hooks/kodi-restart");
    // The shipped hook answers after the run, through sudo: Kodi is not
    // installed here, so systemctl fails, and the button is told why.
    let answer = sys.run_ok(&format!(
        "curl -sS --max-time 20 -w '\\n%{{http_code}}' -u {} -d '' {URL}/hooks/kodi-restart",
        q(&format!("{token}:"))
    ));
    assert_eq!(
        answer, "Failed to restart kodi.service: Unit kodi.service not found.\n\n502",
        "the answer to the shipped Kodi hook"
    );
    sys.wait_log(&["hook kodi-restart: run", "exited 5"], PATIENCE);
    // With a kodi.service, the same button is answered 200, and the run is named.
    sys.run_ok(
        "printf '[Service]\\nType=oneshot\\nExecStart=/bin/true\\n' >/etc/systemd/system/kodi.service \
         && systemctl daemon-reload",
    );
    let answer = sys.run_ok(&format!(
        "curl -sS --max-time 20 -w '\\n%{{http_code}}' -u {} -d '' {URL}/hooks/kodi-restart",
        q(&format!("{token}:"))
    ));
    assert!(
        answer.starts_with("run ") && answer.ends_with(" s\n\n200"),
        "the answer once Kodi exists: {answer:?}"
    );
    let refused = sys.run(&format!("make -C {REPO} uninstall"));
    assert!(
        !refused.status.success() && sys.sb.path(BIN_INSTALLED).exists(),
        "make uninstall went ahead with the socket enabled: {refused:?}"
    );

    // systemctl waits for the socket's stop job; the service's stop follows from
    // Requires= and may still be under way.
    sys.run_ok("systemctl disable --now sockhook.socket");
    sys.wait_stopped("sockhook.service");
    let uninstall = sys.run_ok(&format!("make -C {REPO} uninstall 2>&1"));
    eprintln!("make uninstall:\n{uninstall}");

    let mut installed: Vec<&str> = sys
        .install_log
        .lines()
        .filter_map(|l| l.strip_prefix("install: "))
        .filter_map(|l| {
            let (mode, path) = l.split_once(' ')?;
            let path = path.split(' ').next()?;
            (mode.len() == 4 && mode.starts_with('0') && !path.ends_with('/')).then_some(path)
        })
        .collect();
    installed.sort();
    assert!(
        installed.len() >= 10 && installed.contains(&SUDOERS),
        "install printed: {installed:?}\n{}",
        sys.install_log
    );
    // The generated key stays (it is configuration, not a shipped file), and so does
    // the user; everything else install put there goes.
    let left: Vec<&&str> = installed
        .iter()
        .filter(|p| **p != "/etc/sockhook/key" && sys.sb.path(p).exists())
        .collect();
    assert!(left.is_empty(), "left after make uninstall: {left:?}");
    let found = sys.run_ok(
        "find /usr/local /etc/sockhook /etc/sudoers.d /etc/systemd/system \
         \\( -name '*sockhook*' -o -path '*sockhook*' \\) -print | sort",
    );
    let found: Vec<&str> = found
        .lines()
        .filter(|p| !matches!(*p, "/etc/sockhook" | "/etc/sockhook/key"))
        .collect();
    assert!(found.is_empty(), "left after make uninstall: {found:?}");
    let empty_dirs = sys
        .run_ok("find /usr/local/lib/systemd /usr/local/lib/sysusers.d -type d -empty 2>/dev/null")
        .replace('\n', " ");
    eprintln!("empty directories install created and uninstall kept: {empty_dirs}");
    let files = sys.run("systemctl list-unit-files --no-legend 'sockhook*'");
    assert_eq!(files.stdout_text().trim(), "", "units still known");
}

const BIN_INSTALLED: &str = "/usr/local/bin/sockhook";

/// The `Accept=yes` variant: one process per connection, 20 at once, all answered; it
/// excludes sockhook.socket.
#[test]
fn accept_yes_variant_serves_concurrent_requests() {
    let Some(sys) = System::install() else {
        return;
    };
    sys.hook("record", &recorder("record"));
    sys.start_socket();
    let token = sys.token("/hooks/record");
    // Switch while sockhook.service holds the port.
    assert_eq!(sys.post("record", &token, "before"), "204");
    sys.wait_state("sockhook.service", "active");
    sys.wait("the run before the switch", PATIENCE, || {
        (sys.read(&format!("{STATE}/record.log"))? == "before\n").then_some(())
    });
    // After=sockhook.socket orders this start after the conflicting stops (the
    // service's first: it is After= the socket), so they are over when it returns.
    sys.run_ok("systemctl enable --now sockhook-accept.socket");
    sys.assert_listening("sockhook-accept.socket");
    assert_eq!(
        sys.is_active("sockhook.socket"),
        "inactive",
        "sockhook-accept.socket did not stop the conflicting sockhook.socket"
    );
    assert_eq!(sys.wait_stopped("sockhook.service"), "inactive");
    fs::remove_file(sys.sb.path(&format!("{STATE}/record.log"))).unwrap();

    // From five addresses: the socket takes at most 4 connections at once
    // from one (MaxConnectionsPerSource=).
    let out = sys.run_ok(&format!(
        "for i in $(seq 1 20); do curl -s -o /dev/null -w '%{{http_code}}\\n' --max-time 5 \
         --interface 127.0.0.$((2 + i % 5)) \
         -u '{token}:' --data-binary \"acc-$i\" {URL}/hooks/record & done; wait"
    ));
    let mut statuses: BTreeMap<&str, usize> = BTreeMap::new();
    for code in out.lines() {
        *statuses.entry(code).or_default() += 1;
    }
    let record = format!("{STATE}/record.log");
    let lines = sys.wait("20 runs", PATIENCE, || {
        let text = sys.read(&record)?;
        (text.lines().count() >= 20).then_some(text)
    });
    let accepted = sys.run_ok("systemctl show -p NAccepted,NConnections sockhook-accept.socket");
    let failed = sys.run_ok("systemctl list-units --failed --no-legend --plain 'sockhook*'");
    eprintln!(
        "Accept=yes: statuses {statuses:?}; {} runs; {}; failed units: {failed:?}",
        lines.lines().count(),
        accepted.replace('\n', " ")
    );
    assert_eq!(statuses.get("204"), Some(&20), "statuses: {statuses:?}");
    let unique: HashSet<&str> = lines.lines().collect();
    assert_eq!(unique.len(), 20, "runs: {lines}");
    assert!(accepted.contains("NAccepted=20"), "{accepted}");
    assert_eq!(failed.trim(), "");
    sys.assert_listening("sockhook-accept.socket");
}

/// What sockhook(8)'s TROUBLESHOOTING says of a failed run: its stderr is in
/// `journalctl -p warning` (its stdout only at info), the service is left
/// `failed` once the activation ends, the socket keeps listening, the next
/// request is served, and `systemctl reset-failed` clears the mark.
#[test]
fn a_failed_run_shows_at_warning_and_leaves_only_the_service_failed() {
    let Some(sys) = System::install() else {
        return;
    };
    sys.script(
        "/usr/local/bin/sockhook-test-fail",
        "#!/bin/sh\necho fine-on-stdout\necho 'deploy: disk full' >&2\nexit 3\n",
    );
    sys.hook(
        "fail",
        "command = [\"/usr/local/bin/sockhook-test-fail\"]\nauth = \"token\"\n",
    );
    sys.start_socket();
    let token = sys.token("/hooks/fail");
    assert_eq!(sys.post("fail", &token, ""), "204");
    sys.wait_log(&["hook fail: run", "exited 3"], PATIENCE);
    assert_eq!(sys.wait_stopped("sockhook.service"), "failed");
    sys.assert_listening("sockhook.socket");
    let warnings = sys.run_ok("journalctl -b --no-pager -o cat -u sockhook.service -p warning");
    assert!(
        warnings.contains("sockhook: warning: hook fail: deploy: disk full")
            && warnings.contains("exited 3")
            && !warnings.contains("fine-on-stdout"),
        "-p warning:\n{warnings}"
    );
    assert!(
        sys.log("sockhook.service")
            .contains("hook fail: fine-on-stdout")
    );
    sys.run_ok("systemctl reset-failed sockhook.service");
    assert_eq!(sys.state("sockhook.service").0, "inactive");
    assert_eq!(sys.post("fail", &token, ""), "204");
    sys.assert_listening("sockhook.socket");
}
