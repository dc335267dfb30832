//! The delivery journal (sockhook(8), DELIVERY JOURNAL), through the real
//! binary over real TCP: every accepted delivery on disk before its 204, its
//! outcome beside it, a delivery whose run never finished run by the next
//! activation, a 503 instead of a 204 when it cannot be stored, and
//! `sockhook deliveries` / `sockhook replay`.
//!
//! Runs that must still be going while a test acts wait for a gate file the
//! test creates; a killed activation is killed with SIGKILL, its run's
//! process group too, as `systemctl kill -s KILL` does with the cgroup.

mod support;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::harness::*;

/// A fixture with a state directory, and a hook `NAME` whose command appends
/// `start BODY` and `end BODY` to `NAME.order` and, when `gated`, waits for
/// the gate in between.
struct Journaled {
    f: Fixture,
    state: PathBuf,
}

impl Journaled {
    fn new(name: &str) -> Journaled {
        let f = Fixture::new(name);
        let state = f.dir.join("state");
        Journaled { f, state }
    }

    /// Hook `name` (token auth) with `extra` keys; returns its Authorization line.
    fn hook(&self, name: &str, gated: bool, extra: &str) -> String {
        let d = self.f.dir.display();
        let wait = if gated {
            self.f.gate_wait() + "\n"
        } else {
            String::new()
        };
        let script = self.f.script(
            &format!("{name}.sh"),
            &format!(
                "body=$(cat)\necho \"start $body replay=${{SOCKHOOK_REPLAY:-0}}\" >> {d}/{name}.order\n{wait}echo \"end $body\" >> {d}/{name}.order"
            ),
        );
        self.f.hook(
            name,
            &format!("command = [{script:?}]\nauth = \"token\"\n{extra}"),
        );
        format!(
            "Authorization: Bearer {}",
            self.f.token(&format!("/hooks/{name}"))
        )
    }

    fn order(&self, name: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.f.read(&format!("{name}.order")))
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn wait_order(&self, name: &str, lines: usize) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let order = self.order(name);
            if order.len() >= lines {
                return order;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {lines} lines in {name}.order: {order:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `n` deliveries have their outcome on disk.
    fn wait_outcomes(&self, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.files(".outcome").len() < n {
            assert!(
                Instant::now() < deadline,
                "waited for {n} outcomes: {:?}",
                self.files("")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until exactly `entries` entries and `outcomes` outcomes are on disk.
    fn wait_files(&self, entries: usize, outcomes: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.files(".entry").len() != entries || self.files(".outcome").len() != outcomes {
            assert!(
                Instant::now() < deadline,
                "waited for {entries} entries and {outcomes} outcomes: {:?}",
                self.files("")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn serve(&self, args: &[&str]) -> Served {
        let state = self.state.to_str().unwrap();
        let mut all = vec!["--state", state];
        all.extend_from_slice(args);
        self.f.serve_guarded(&all)
    }

    /// `sockhook ARGS --state STATE`.
    fn sockhook(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--state")
            .arg(&self.state)
            .output()
            .unwrap()
    }

    /// The lines of `sockhook deliveries` after its header, newest first.
    fn list(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec!["deliveries"];
        all.extend_from_slice(args);
        let out = self.sockhook(&all);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with("TIME (UTC)"), "{text}");
        lines.map(str::to_owned).collect()
    }

    /// The id of each listed delivery, newest first.
    fn ids(&self) -> Vec<String> {
        self.list(&[])
            .iter()
            .map(|l| l.split_whitespace().nth(2).unwrap().to_owned())
            .collect()
    }

    fn files(&self, suffix: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(self.state.join("deliveries"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.to_string_lossy().ends_with(suffix));
        files.sort();
        files
    }
}

/// Kills sockhook and every process of its runs' sessions with SIGKILL.
fn kill_all(server: Served) {
    let pid = server.pid() as i32;
    let sessions = child_sessions(pid);
    let server = server.release();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    for session in sessions {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(session),
            nix::sys::signal::SIGKILL,
        );
    }
    let (status, _) = server.wait(PATIENCE);
    assert!(!status.success());
}

/// The process groups of `parent`'s children (each run is a session of its own).
fn child_sessions(parent: i32) -> Vec<i32> {
    let mut groups = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        if fields.get(1).and_then(|p| p.parse().ok()) == Some(parent)
            && let Some(group) = fields.get(2).and_then(|g| g.parse().ok())
        {
            groups.push(group);
        }
    }
    groups
}

#[test]
fn each_delivery_is_listed_with_its_outcome_and_its_body_byte_for_byte() {
    let j = Journaled::new("journal-list");
    let auth = j.hook("rec", false, "");
    let server = j.serve(&[]);
    let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let reply = server.post(
        "/hooks/rec",
        &[&auth, "User-Agent: GitHub-Hookshot/x", "X-Extra: 1"],
        &body,
    );
    assert_eq!(reply.status(), 204, "{reply:?}");
    j.wait_order("rec", 2);
    assert_eq!(server.post("/hooks/rec", &[&auth], b"second").status(), 204);
    j.wait_order("rec", 4);
    // The outcome is written after the run's end is logged.
    server.wait_log("exited 0", 2);
    j.wait_outcomes(2);
    let list = j.list(&[]);
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list[0].ends_with(" 6"), "newest first: {list:?}");
    assert!(list[1].ends_with(" 70000"), "{list:?}");
    for line in &list {
        assert!(line.contains(" rec "), "{line}");
        assert!(line.contains(" 127.0.0.1 "), "{line}");
        assert!(line.contains(" before-run "), "{line}");
        assert!(line.contains(" ok exited 0 after "), "{line}");
    }
    let ids = j.ids();
    let out = j.sockhook(&["deliveries", "show", &ids[1], "--body"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, body, "the body, byte for byte");
    let out = j.sockhook(&["deliveries", "show", &ids[1]]);
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        format!("id: {}", ids[1]),
        "hook: rec".into(),
        "peer: 127.0.0.1".into(),
        "user-agent: GitHub-Hookshot/x".into(),
        "SOCKHOOK_PATH: /hooks/rec".into(),
        "body: 70000 bytes".into(),
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
    }
    assert!(text.contains("outcome: ok exited 0 after "), "{text}");
    // Nothing of the request's credentials, nor fields outside the allowlist.
    for file in j.files(".entry") {
        let stored = fs::read(&file).unwrap();
        let head = String::from_utf8_lossy(&stored[..stored.len().min(2048)]).into_owned();
        assert!(
            !head.contains(&auth["Authorization: Bearer ".len()..]),
            "{head}"
        );
        assert!(!head.contains("Authorization"), "{head}");
        assert!(!head.contains("X-Extra"), "{head}");
    }
    // A short id prefix that only one delivery has is enough; an unknown one is refused.
    let out = j.sockhook(&["deliveries", "show", "nope"]);
    assert_eq!(out.status.code(), Some(100), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no delivery nope"));
}

/// A server with gated hook `job`: delivery `one` running (held by the
/// gate), `two` answered 204 and queued behind it. Returns the server and
/// the hook's `Authorization` line.
fn one_running_one_queued(j: &Journaled) -> (Served, String) {
    let auth = j.hook("job", true, "");
    let server = j.serve(&[]);
    assert_eq!(server.post("/hooks/job", &[&auth], b"one").status(), 204);
    j.wait_order("job", 1);
    assert_eq!(server.post("/hooks/job", &[&auth], b"two").status(), 204);
    server.wait_log("run queued behind the one in progress", 1);
    (server, auth)
}

/// SIGKILL after the 204 of a delivery whose run is queued (not started)
/// and in the middle of another's run: the next activation runs both once
/// more, in order.
#[test]
fn deliveries_whose_run_never_finished_run_at_the_next_activation() {
    let j = Journaled::new("journal-kill");
    let (server, auth) = one_running_one_queued(&j);
    kill_all(server);
    assert_eq!(j.order("job"), ["start one replay=0"]);
    assert!(j.files(".outcome").is_empty());
    let pending = j.list(&[]);
    assert!(
        pending.iter().all(|l| l.contains(" pending ")),
        "{pending:?}"
    );

    j.f.open_gate();
    let server = j.serve(&[]);
    server.wait_log("running it now", 2);
    j.wait_order("job", 5);
    server.wait_log("exited 0", 2);
    let order = j.order("job");
    assert_eq!(
        order,
        [
            "start one replay=0",
            "start one replay=0",
            "end one",
            "start two replay=0",
            "end two"
        ]
    );
    // Once: a third activation finds nothing pending.
    j.wait_outcomes(2);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    let server = j.serve(&[]);
    assert_eq!(server.post("/hooks/job", &[&auth], b"three").status(), 204);
    j.wait_order("job", 7);
    assert!(!server.log().contains("running it now"), "{}", server.log());
    let resumed = j.list(&["--hook", "job"]);
    assert_eq!(
        resumed
            .iter()
            .filter(|l| l.contains("(resumed: its first activation ended before its run finished)"))
            .count(),
        2,
        "{resumed:?}"
    );
    assert_eq!(j.order("job").len(), 7);
}

/// A journal full of pending deliveries refuses new ones with 503 and runs
/// nothing for them; once the pending one has run, 204 again.
#[test]
fn a_full_journal_answers_503_and_runs_nothing() {
    let j = Journaled::new("journal-full");
    let auth = j.hook("job", true, "");
    let server = j.serve(&["--journal-max-bytes", "2000"]);
    assert_eq!(
        server.post("/hooks/job", &[&auth], &[b'a'; 1000]).status(),
        204
    );
    j.wait_order("job", 1);
    let reply = server.post("/hooks/job", &[&auth], &[b'b'; 1500]);
    assert_eq!(reply.status(), 503, "{reply:?}");
    assert!(reply.complete(), "{reply:?}");
    assert_eq!(reply.header("retry-after").as_deref(), Some("5"));
    assert!(reply.body().contains("could not be stored"), "{reply:?}");
    server.wait_log("unable to journal the delivery: the journal is full", 1);
    j.f.open_gate();
    j.wait_order("job", 2);
    server.wait_log("exited 0", 1);
    j.wait_outcomes(1);
    // The finished one makes room for the next.
    assert_eq!(
        server.post("/hooks/job", &[&auth], &[b'c'; 1500]).status(),
        204
    );
    j.wait_order("job", 4);
    assert!(!j.order("job").iter().any(|l| l.contains("bbb")));
}

/// Unmounts a tmpfs the test mounted, whatever happens.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A state directory on a full disk (a 256 KiB tmpfs): 503 for a delivery
/// that cannot be stored, nothing run, the process fine; space freed, 204
/// again.
#[test]
fn a_full_disk_answers_503_until_space_is_freed() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true, but not root: a tmpfs needs root"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let j = Journaled::new("journal-disk");
    let auth = j.hook("rec", false, "");
    fs::create_dir_all(&j.state).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
        .arg(&j.state)
        .status()
        .unwrap();
    assert!(mounted.success());
    let _mounted = Mounted(j.state.clone());
    let filler = j.state.join("filler");
    fs::write(&filler, vec![0; 200_000]).unwrap();
    let server = j.serve(&[]);
    let reply = server.post("/hooks/rec", &[&auth], &[b'x'; 100_000]);
    assert_eq!(reply.status(), 503, "{reply:?}\n{}", server.log());
    assert!(reply.complete(), "{reply:?}");
    assert_eq!(reply.header("retry-after").as_deref(), Some("5"));
    server.wait_log("unable to journal the delivery", 1);
    assert!(
        j.order("rec").is_empty(),
        "a delivery that was not stored ran"
    );
    assert!(j.files(".tmp").is_empty(), "a failed write left its file");
    fs::remove_file(&filler).unwrap();
    let reply = server.post("/hooks/rec", &[&auth], &[b'y'; 100_000]);
    assert_eq!(reply.status(), 204, "{reply:?}\n{}", server.log());
    j.wait_order("rec", 2);
    let (status, _) = server.stop();
    assert!(status.success());
}

#[test]
fn a_torn_tail_and_a_corrupt_entry_are_skipped_and_the_rest_replayable() {
    let j = Journaled::new("journal-torn");
    let auth = j.hook("rec", false, "");
    let server = j.serve(&[]);
    // One at a time, so that none is coalesced into another's run.
    for (i, body) in ["one", "two", "three"].iter().enumerate() {
        assert_eq!(
            server
                .post("/hooks/rec", &[&auth], body.as_bytes())
                .status(),
            204
        );
        j.wait_order("rec", 2 * (i + 1));
    }
    let (status, _) = server.stop();
    assert!(status.success());
    let entries = j.files(".entry");
    assert_eq!(entries.len(), 3);
    // The middle entry loses its last bytes; a crash left a half-written one.
    let middle = &entries[1];
    let bytes = fs::read(middle).unwrap();
    fs::write(middle, &bytes[..bytes.len() - 2]).unwrap();
    let torn = j.state.join("deliveries/9999999999999-1-1_rec.tmp");
    fs::write(&torn, "sockhook-delivery 1\nid 99").unwrap();

    let out = j.sockhook(&["deliveries"]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("corrupt: it holds 1 bytes of body, its head says 3"),
        "{stderr}"
    );
    assert!(
        stderr.contains("9999999999999-1-1_rec.tmp: torn"),
        "{stderr}"
    );
    let listed = String::from_utf8_lossy(&out.stdout).lines().count() - 1;
    assert_eq!(listed, 2, "{out:?}");
    // The next activation logs the same and serves.
    let server = j.serve(&[]);
    server.wait_log("skipped journal entry", 1);
    assert!(server.log().contains("_rec.tmp: torn"), "{}", server.log());
    // The torn file was never answered 2xx: the server removes it.
    assert!(!torn.exists());
    assert_eq!(server.post("/hooks/rec", &[&auth], b"four").status(), 204);
    j.wait_order("rec", 8);
    let (status, _) = server.stop();
    assert!(status.success());
    // The first one is replayable.
    let first = entries[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let id = first.split('_').next().unwrap();
    let out = j.sockhook(&[
        "replay",
        id,
        "--hooks",
        j.f.hooks.to_str().unwrap(),
        "--user",
        "root",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        j.order("rec")
            .ends_with(&["start one replay=1".into(), "end one".into()])
    );
}

/// `replay` while a server runs the same hook waits for that run; it runs
/// with its own body, also for a delivery that was coalesced.
#[test]
fn replay_waits_for_the_servers_run_of_the_hook_and_is_journaled() {
    let j = Journaled::new("journal-replay");
    let (server, auth) = one_running_one_queued(&j);
    // three comes during one's run too: two is coalesced into three's run.
    assert_eq!(server.post("/hooks/job", &[&auth], b"three").status(), 204);
    server.wait_log("queued run replaced by a newer request", 1);
    let two = j.ids()[1].clone();
    let replay = Command::new(BIN)
        .args(["replay", &two, "--user", "root", "--hooks"])
        .arg(&j.f.hooks)
        .arg("--state")
        .arg(&j.state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It waits for the lock while one's run holds it.
    let deadline = Instant::now() + PATIENCE;
    while j.list(&[]).len() < 4 {
        assert!(Instant::now() < deadline, "the replay was not journaled");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(j.order("job"), ["start one replay=0"]);
    j.f.open_gate();
    let out = output_within(replay, PATIENCE);
    assert!(out.status.success(), "{out:?}");
    j.wait_order("job", 6);
    let order = j.order("job");
    // Runs never overlap: each start is followed by its own end.
    for pair in order.chunks(2) {
        let body = pair[0].split_whitespace().nth(1).unwrap();
        assert_eq!(pair[1], format!("end {body}"), "{order:?}");
    }
    assert!(
        order.contains(&"start two replay=1".to_owned()),
        "{order:?}"
    );
    assert!(
        order.contains(&"start three replay=0".to_owned()),
        "{order:?}"
    );
    server.wait_log("exited 0", 2);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let list = j.list(&[]);
        let done = list.iter().filter(|l| !l.contains(" pending ")).count();
        if done == 4 {
            assert!(
                list.iter()
                    .any(|l| l.contains(" replay ") && l.contains(" ok exited 0")),
                "{list:?}"
            );
            assert!(
                list.iter()
                    .any(|l| l.contains("(coalesced into the run of a newer delivery)")),
                "{list:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{list:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(": ok exited 0 after "), "{stdout}");
}

#[test]
fn retention_keeps_the_newest_per_hook_and_journal_false_keeps_none() {
    let j = Journaled::new("journal-keep");
    let auth = j.hook("rec", false, "");
    let secret_auth = j.hook("private", false, "journal = false\n");
    let server = j.serve(&["--journal-keep", "3"]);
    for i in 0..6 {
        assert_eq!(
            server
                .post("/hooks/rec", &[&auth], format!("b{i}").as_bytes())
                .status(),
            204
        );
        j.wait_order("rec", 2 * (i + 1));
        server.wait_log("exited 0", i + 1);
        // The outcome is on disk before the next delivery prunes; what a
        // delivery pruned is gone once its own outcome is written.
        j.wait_files((i + 1).min(3), (i + 1).min(3));
    }
    assert_eq!(
        server
            .post("/hooks/private", &[&secret_auth], b"secret body")
            .status(),
        204
    );
    j.wait_order("private", 2);
    let list = j.list(&[]);
    // Three per hook: the newest and the two finished before it.
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(list.iter().all(|l| l.contains(" rec ")), "{list:?}");
    let bodies: Vec<Vec<u8>> = j
        .ids()
        .iter()
        .map(|id| j.sockhook(&["deliveries", "show", id, "--body"]).stdout)
        .collect();
    assert_eq!(bodies, [b"b5".to_vec(), b"b4".to_vec(), b"b3".to_vec()]);
    for file in j.files("") {
        assert!(!fs::read(&file).unwrap().windows(6).any(|w| w == b"secret"));
    }
    assert_eq!(j.list(&["--hook", "private"]).len(), 0);
}

#[test]
fn deliveries_filters_by_hook_failure_and_time() {
    let j = Journaled::new("journal-filter");
    let auth = j.hook("rec", false, "");
    let fail = j.f.script("fail.sh", "exit 3");
    j.f.hook("fail", &format!("command = [{fail:?}]\nauth = \"token\"\n"));
    let fail_auth = format!("Authorization: Bearer {}", j.f.token("/hooks/fail"));
    let server = j.serve(&[]);
    assert_eq!(server.post("/hooks/rec", &[&auth], b"x").status(), 204);
    assert_eq!(
        server.post("/hooks/fail", &[&fail_auth], b"y").status(),
        204
    );
    server.wait_log("exited 3", 1);
    server.wait_log("exited 0", 1);
    j.wait_outcomes(2);
    let failed = j.list(&["--failed"]);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains(" fail ") && failed[0].contains(" failed exited 3 "));
    assert_eq!(j.list(&["--hook", "rec"]).len(), 1);
    assert_eq!(j.list(&["--since", "1h"]).len(), 2);
    assert_eq!(j.list(&["--since", "2999-01-01"]).len(), 0);
    let out = j.sockhook(&["deliveries", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(100));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since: \"yesterday\" is neither"));
}

/// Without `--state` and `STATE_DIRECTORY`, `serve` says once that it keeps
/// no journal, and serves.
#[test]
fn without_a_state_directory_serve_says_it_keeps_no_journal() {
    let f = Fixture::new("journal-none");
    let script = f.recorder("rec");
    f.hook(
        "rec",
        &format!("command = [{script:?}]\nauth = \"token\"\n"),
    );
    let server = f.serve_guarded(&[]);
    let auth = format!("Authorization: Bearer {}", f.token("/hooks/rec"));
    assert_eq!(server.post("/hooks/rec", &[&auth], b"x").status(), 204);
    server.wait_log("no delivery journal: no StateDirectory= and no --state", 1);
}

/// A signed delivery: neither the secret nor the signature reaches any
/// file of the journal, only the allowlisted head and the body.
#[test]
fn no_secret_or_signature_is_journaled() {
    let j = Journaled::new("journal-secrets");
    let secret_text = "journal-secret-7f3a";
    let secret = j.f.dir.join("gh-secret");
    fs::write(&secret, secret_text).unwrap();
    let script = j.f.recorder("gh");
    j.f.hook(
        "gh",
        &format!("command = [{script:?}]\nauth = \"github\"\nsecret = {secret:?}\n"),
    );
    let server = j.serve(&[]);
    let body = br#"{"ref":"refs/heads/main"}"#;
    let signature = github_signature(secret_text.as_bytes(), body);
    let reply = server.post(
        "/hooks/gh",
        &[
            &signature,
            "X-GitHub-Event: push",
            "X-GitHub-Delivery: 72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "Content-Type: application/json",
        ],
        body,
    );
    assert_eq!(reply.status(), 204, "{reply:?}");
    let deadline = Instant::now() + PATIENCE;
    while j.f.runs("gh") < 1 {
        assert!(Instant::now() < deadline, "no run");
        std::thread::sleep(Duration::from_millis(10));
    }
    let hex = signature.rsplit('=').next().unwrap();
    let mut files = 0;
    for file in j.files("") {
        let stored = fs::read(&file).unwrap();
        let text = String::from_utf8_lossy(&stored);
        assert!(!text.contains(hex), "{}: the signature", file.display());
        assert!(
            !text.contains(secret_text),
            "{}: the secret",
            file.display()
        );
        assert!(!text.contains("Hub-Signature"), "{}", file.display());
        files += 1;
    }
    assert!(files >= 1);
    let ids = j.ids();
    let shown = String::from_utf8(j.sockhook(&["deliveries", "show", &ids[0]]).stdout).unwrap();
    assert!(shown.contains("SOCKHOOK_EVENT: push"), "{shown}");
    assert!(
        shown.contains("SOCKHOOK_DELIVERY: 72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        "{shown}"
    );
}

#[test]
fn entries_are_written_into_spare_files_and_a_dead_activations_spares_are_taken_over() {
    let j = Journaled::new("journal-spare");
    let auth = j.hook("rec", false, "");
    let server = j.serve(&["--journal-keep", "2"]);
    let pid = server.pid();
    for i in 0..5 {
        let body = format!("b{i}");
        assert_eq!(
            server
                .post("/hooks/rec", &[&auth], body.as_bytes())
                .status(),
            204
        );
        j.wait_order("rec", 2 * (i + 1));
        server.wait_log("exited 0", i + 1);
        j.wait_files((i + 1).min(2), (i + 1).min(2));
    }
    // After a run, an empty file is made for the next delivery; a removed
    // entry's file becomes one too.
    let spares = j.files(".spare");
    assert!(!spares.is_empty(), "{:?}", j.files(""));
    let bodies = |j: &Journaled| -> Vec<Vec<u8>> {
        j.ids()
            .iter()
            .map(|id| j.sockhook(&["deliveries", "show", id, "--body"]).stdout)
            .collect()
    };
    assert_eq!(bodies(&j), [b"b4".to_vec(), b"b3".to_vec()]);
    for spare in &spares {
        assert_eq!(fs::metadata(spare).unwrap().len(), 0, "{spare:?}");
    }

    // Killed while an entry is being written into a spare: what it holds
    // was never answered.
    kill_all(server);
    fs::write(&spares[0], "sockhook-delivery 1\nid torn").unwrap();
    let server = j.serve(&["--journal-keep", "2"]);
    assert_eq!(server.post("/hooks/rec", &[&auth], b"b5").status(), 204);
    j.wait_order("rec", 12);
    server.wait_log("exited 0", 1);
    j.wait_files(2, 2);
    let left = j.files(".spare");
    let dead = format!("{pid}.");
    assert!(
        left.iter()
            .all(|p| !p.file_name().unwrap().to_string_lossy().starts_with(&dead)),
        "the dead activation's spares are taken over: {left:?}"
    );
    for spare in &left {
        assert_eq!(fs::metadata(spare).unwrap().len(), 0, "{spare:?}");
    }
    assert_eq!(bodies(&j), [b"b5".to_vec(), b"b4".to_vec()]);
    let listed = j.list(&[]);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(!server.log().contains("skipped"), "{}", server.log());
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}
