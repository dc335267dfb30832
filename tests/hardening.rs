//! System tests of what no client and no configuration mistake may do: fail
//! the socket, stop the hooks it does not touch, or outlive its fix; and of
//! what a command may not do to sockhook. Under a real systemd with the
//! shipped units (see `support/system.rs`).

mod support;

use std::time::{Duration, Instant};

use support::sandbox::OutputText;
use support::system::*;

/// Requests per misconfiguration: more than the unit's `StartLimitBurst=`
/// (20), so that a start failing with each would fail the socket.
const REQUESTS: usize = 30;
const GH_SECRET: &str = "/etc/sockhook/gh-secret";
const GH_SECRET_TEXT: &str = "hardening-secret";

/// A GitHub delivery of `body` to hook `gh`, from inside; returns the status.
fn github(sys: &System, body: &str) -> String {
    let signature = support::harness::github_signature(GH_SECRET_TEXT.as_bytes(), body.as_bytes());
    sys.curl(&format!(
        "-H {} -H 'X-GitHub-Event: push' -H 'Content-Type: application/json' \
         --data-binary {} {URL}/hooks/gh",
        q(&signature),
        q(body)
    ))
}

/// Lines of `STATE/NAME.log`: one per run of a recorder hook.
fn runs(sys: &System, name: &str) -> usize {
    sys.read(&format!("{STATE}/{name}.log"))
        .map_or(0, |text| text.lines().count())
}

/// Waits until recorder `name` has run `n` times.
fn wait_runs(sys: &System, name: &str, n: usize) {
    sys.wait(&format!("{n} runs of {name}"), PATIENCE, || {
        (runs(sys, name) >= n).then_some(())
    });
}

/// `tok` (token) and `gh` (github, secret readable by group sockhook), both recorders.
fn two_hooks(sys: &System) {
    sys.hook("tok", &recorder("tok"));
    sys.run_ok(&format!(
        "printf %s {GH_SECRET_TEXT} >{GH_SECRET} && chgrp sockhook {GH_SECRET} && chmod 0640 {GH_SECRET}"
    ));
    sys.hook(
        "gh",
        &recorder("gh").replace(
            "auth = \"token\"\n",
            &format!("auth = \"github\"\nsecret = \"{GH_SECRET}\"\n"),
        ),
    );
}

/// Sends `REQUESTS` requests, alternately to `tok` and `gh`, each run
/// waited for; returns the statuses of each hook's requests.
fn alternate(sys: &System, token: &str) -> (Vec<String>, Vec<String>) {
    let (mut tok, mut gh) = (Vec::new(), Vec::new());
    for i in 0..REQUESTS / 2 {
        tok.push(sys.post("tok", token, &format!("t{i}")));
        let before = runs(sys, "gh");
        let status = github(sys, &format!("{{\"n\":{i}}}"));
        if status == "204" {
            wait_runs(sys, "gh", before + 1);
        }
        gh.push(status);
    }
    (tok, gh)
}

fn all(statuses: &[String], want: &str) -> bool {
    statuses.iter().all(|s| s == want)
}

/// Each configuration mistake sockhook can report itself: 30 requests, the
/// socket stays listening, the hooks the mistake does not touch answer 204
/// and run, the one it touches answers 500 with nothing run, and fixing the
/// file makes the next request succeed with no systemctl command. Files
/// sockhook reads itself are re-read when they change, within the same
/// activation; the key reaches it as a credential, which systemd reads at
/// each start, so its fix holds from the next activation (at most
/// `IDLE_TIMEOUT` after the last request).
#[test]
fn no_configuration_mistake_fails_the_socket_and_fixing_it_fixes_the_next_request() {
    let Some(sys) = System::install() else {
        return;
    };
    two_hooks(&sys);
    sys.start_socket();
    let token = sys.token("/hooks/tok");
    let starts = || sys.starts();

    // The key file missing: token hooks 500, github hooks unaffected.
    sys.run_ok("mv /etc/sockhook/key /etc/sockhook/key.saved");
    let (tok, gh) = alternate(&sys, &token);
    assert!(all(&tok, "500") && all(&gh, "204"), "{tok:?} {gh:?}");
    sys.assert_listening("sockhook.socket");
    sys.wait_log(
        &[
            "systemd found no /etc/sockhook/key",
            "token hooks answer 500",
        ],
        PATIENCE,
    );
    assert_eq!(runs(&sys, "tok"), 0, "a token hook ran without a key");
    sys.run_ok("mv /etc/sockhook/key.saved /etc/sockhook/key");
    assert_eq!(sys.wait_stopped("sockhook.service"), "inactive");
    assert_eq!(sys.post("tok", &token, "fixed-key"), "204");
    wait_runs(&sys, "tok", 1);

    // The key a directory, which systemd cannot load as one credential.
    sys.run_ok("mv /etc/sockhook/key /etc/sockhook/key.saved && mkdir /etc/sockhook/key");
    assert_eq!(sys.wait_stopped("sockhook.service"), "inactive");
    let (tok, gh) = alternate(&sys, &token);
    assert!(all(&tok, "500") && all(&gh, "204"), "{tok:?} {gh:?}");
    sys.assert_listening("sockhook.socket");
    sys.run_ok("rmdir /etc/sockhook/key && mv /etc/sockhook/key.saved /etc/sockhook/key");
    assert_eq!(sys.wait_stopped("sockhook.service"), "inactive");
    assert_eq!(sys.post("tok", &token, "fixed-key-dir"), "204");
    wait_runs(&sys, "tok", 2);

    // The secret unreadable to user sockhook: gh 500, tok unaffected.
    sys.run_ok(&format!("chgrp root {GH_SECRET} && chmod 0600 {GH_SECRET}"));
    let gh_runs = runs(&sys, "gh");
    let (tok, gh) = alternate(&sys, &token);
    assert!(all(&tok, "204") && all(&gh, "500"), "{tok:?} {gh:?}");
    sys.assert_listening("sockhook.socket");
    assert_eq!(runs(&sys, "gh"), gh_runs, "gh ran without its secret");
    sys.run_ok(&format!(
        "chgrp sockhook {GH_SECRET} && chmod 0640 {GH_SECRET}"
    ));
    assert_eq!(github(&sys, "{\"fixed\":\"secret\"}"), "204");
    wait_runs(&sys, "gh", gh_runs + 1);

    // A broken hook file: that hook 500, the other unaffected.
    let good = sys.read(&format!("{HOOKS}/gh.toml")).unwrap();
    sys.hook("gh", "command = [\"/bin/true\"\nauth = \"github\"\n");
    let gh_runs = runs(&sys, "gh");
    let (tok, gh) = alternate(&sys, &token);
    assert!(all(&tok, "204") && all(&gh, "500"), "{tok:?} {gh:?}");
    sys.assert_listening("sockhook.socket");
    sys.hook("gh", &good);
    assert_eq!(github(&sys, "{\"fixed\":\"file\"}"), "204");
    wait_runs(&sys, "gh", gh_runs + 1);

    // The hooks directory missing: every hook 500.
    sys.run_ok(&format!("mv {HOOKS} {HOOKS}.saved"));
    let tok_runs = runs(&sys, "tok");
    let (tok, gh) = alternate(&sys, &token);
    assert!(all(&tok, "500") && all(&gh, "500"), "{tok:?} {gh:?}");
    sys.assert_listening("sockhook.socket");
    assert_eq!(runs(&sys, "tok"), tok_runs);
    sys.run_ok(&format!("mv {HOOKS}.saved {HOOKS}"));
    assert_eq!(sys.post("tok", &token, "fixed-dir"), "204");
    wait_runs(&sys, "tok", tok_runs + 1);

    sys.assert_listening("sockhook.socket");
    let (active, _) = sys.state("sockhook.service");
    assert_ne!(active, "failed");
    eprintln!(
        "misconfiguration: {} requests, {} service starts, socket {:?}",
        5 * REQUESTS + 5,
        starts(),
        sys.state("sockhook.socket")
    );
}

/// SIGTERM to an `Accept=yes` instance while its command runs: the run is
/// stopped (SIGTERM to its process group, as on `systemctl stop` of the
/// main service), sockhook exits 0 at once, and the unit ends inactive, not
/// failed — it used to block SIGTERM until systemd killed it 8 s later.
#[test]
fn sigterm_to_an_accept_yes_instance_mid_run_ends_it_cleanly() {
    let Some(sys) = System::install() else {
        return;
    };
    sys.script(
        "/usr/local/bin/sockhook-test-slow",
        &format!("#!/bin/sh\necho started >{STATE}/slow.started\nexec sleep 60\n"),
    );
    sys.hook(
        "slow",
        "command = [\"/usr/local/bin/sockhook-test-slow\"]\nauth = \"token\"\n",
    );
    sys.run_ok("systemctl start sockhook-accept.socket");
    sys.assert_listening("sockhook-accept.socket");
    let token = sys.token("/hooks/slow");
    assert_eq!(sys.post("slow", &token, "x"), "204");
    sys.wait("the run to start", PATIENCE, || {
        sys.read(&format!("{STATE}/slow.started"))
    });
    let unit = sys.wait("the instance", PATIENCE, || {
        let out = sys
            .run("systemctl list-units --no-legend --plain 'sockhook-accept@*.service'")
            .stdout_text();
        out.split_whitespace().next().map(str::to_owned)
    });
    let sent = Instant::now();
    // As `systemctl stop` does: SIGTERM to every process of the unit. sockhook
    // stops its run at once, so a run's process (or its cgroup) may be gone
    // before systemd reaches it, which `systemctl kill` reports as ENODEV or
    // ESRCH; any other failure is one.
    let kill = sys.run(&format!("systemctl kill --signal=SIGTERM {unit}"));
    let said = String::from_utf8_lossy(&kill.stderr);
    assert!(
        kill.status.success()
            || said.contains("No such device")
            || said.contains("No such process"),
        "systemctl kill: {kill:?}"
    );
    let ended = sys.wait("the instance to stop", PATIENCE, || {
        let (active, _) = sys.state(&unit);
        (active == "inactive" || active == "failed").then_some(active)
    });
    let took = sent.elapsed();
    let result = sys.run_ok(&format!("systemctl show -p Result --value {unit}"));
    let log = sys.sb.journal("sockhook-accept@*.service");
    assert_eq!(ended, "inactive", "{log}");
    assert_eq!(result.trim(), "success", "{log}");
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM took {took:?} to end the instance:\n{log}"
    );
    assert!(log.contains("received SIGTERM"), "{log}");
    assert!(log.contains("as sockhook stopped"), "{log}");
    sys.assert_listening("sockhook-accept.socket");
    eprintln!("accept=yes SIGTERM mid-run: inactive/success after {took:?}");
}

/// A fork bomb in one hook's run and `yes` in another's: requests to a
/// third hook are answered 204 within 1 s all along, the bomb stays within
/// its `tasks_max`, and the journal gets at most 64 KiB of `yes` plus one
/// line saying how much more there was.
#[test]
fn a_fork_bomb_and_yes_leave_other_hooks_answered() {
    let Some(sys) = System::install() else {
        return;
    };
    sys.script(
        "/usr/local/bin/sockhook-test-bomb",
        &format!(
            "#!/bin/sh\necho started >{STATE}/bomb.started\nf() {{ f | f & }}\nf\nexec sleep 60\n"
        ),
    );
    sys.hook(
        "bomb",
        "command = [\"/usr/local/bin/sockhook-test-bomb\"]\nauth = \"token\"\ntimeout = 8\ntasks_max = 64\n",
    );
    sys.hook(
        "yes",
        "command = [\"/usr/bin/yes\", \"sockhook-test-yes\"]\nauth = \"token\"\ntimeout = 8\n",
    );
    sys.hook("ok", &recorder("ok"));
    sys.start_socket();
    let (bomb, yes, ok) = (
        sys.token("/hooks/bomb"),
        sys.token("/hooks/yes"),
        sys.token("/hooks/ok"),
    );
    assert_eq!(sys.post("bomb", &bomb, ""), "204");
    assert_eq!(sys.post("yes", &yes, ""), "204");
    sys.wait("the bomb to start", PATIENCE, || {
        sys.read(&format!("{STATE}/bomb.started"))
    });
    let mut slowest = Duration::ZERO;
    let mut statuses = Vec::new();
    let mut most_tasks = 0;
    let started = Instant::now();
    // While both run (their timeout is 8 s): a request every 250 ms.
    while started.elapsed() < Duration::from_secs(6) {
        let out = sys.run(&format!(
            "curl -s -o /dev/null -w '%{{http_code}} %{{time_total}}' --max-time 5 -u '{ok}:' \
             --data-binary during {URL}/hooks/ok"
        ));
        let text = out.stdout_text();
        let (status, time) = text.trim().split_once(' ').unwrap_or(("000", "99"));
        slowest = slowest.max(Duration::from_secs_f64(time.parse().unwrap_or(99.0)));
        statuses.push(status.to_owned());
        let tasks = sys
            .run("ps -L -u sockhook --no-headers | wc -l")
            .stdout_text();
        most_tasks = most_tasks.max(tasks.trim().parse().unwrap_or(0));
        // Paces the requests; the assertions are on each request's own time.
        std::thread::sleep(Duration::from_millis(250));
    }
    let log = sys.log("sockhook.service");
    assert!(all(&statuses, "204"), "{statuses:?}\n{log}");
    // The bomb's RLIMIT_NPROC counts every task of user sockhook, sockhook's
    // own threads too; a few more come and go (the ok runs, ps itself).
    assert!(
        most_tasks <= 64 + 4,
        "user sockhook had {most_tasks} tasks at once; the bomb's tasks_max is 64\n{log}"
    );
    assert!(
        slowest <= Duration::from_secs(1),
        "a request to the third hook took {slowest:?}\n{log}"
    );
    wait_runs(&sys, "ok", 1);
    sys.wait_log(&["hook bomb: run", "timed out after 8 s"], PATIENCE);
    sys.wait_log(&["hook yes: run", "bytes of output not logged"], PATIENCE);
    // The bomb reached its limit: its forks failed (dash says so on stderr).
    sys.wait_log(&["warning: hook bomb:", "Cannot fork"], PATIENCE);
    let log = sys.log("sockhook.service");
    let logged = log
        .lines()
        .filter(|l| l.contains("hook yes: sockhook-test-yes"))
        .count()
        * "sockhook-test-yes\n".len();
    assert!(
        logged <= 64 * 1024,
        "{logged} bytes of yes reached the journal"
    );
    eprintln!(
        "fork bomb + yes: {} requests to a third hook, all 204, slowest {slowest:?}; \
         at most {most_tasks} tasks of user sockhook; {logged} bytes of yes logged",
        statuses.len()
    );
}
