//! The delivery journal under a real systemd with the shipped units
//! (`StateDirectory=sockhook`): `systemctl kill -s KILL sockhook.service`
//! after a 204 and in the middle of a run, and a hundred deliveries with
//! kills at pseudo-random points; every delivery runs to completion at least
//! once and the journal says which ran again.

mod support;

use support::system::*;

/// A hook that appends `start BODY` and, after `pause` seconds (or, with a
/// gate, once `STATE/gate` exists), `end BODY` to `STATE/job.order`.
fn job_hook(sys: &System, wait: &str) {
    sys.script(
        "/usr/local/bin/sockhook-test-job",
        &format!(
            "#!/bin/sh\nbody=$(cat)\necho \"start $body\" >>{STATE}/job.order\n{wait}\necho \"end $body\" >>{STATE}/job.order\n"
        ),
    );
    sys.hook(
        "job",
        "command = [\"/usr/local/bin/sockhook-test-job\"]\nauth = \"token\"\n",
    );
}

fn order(sys: &System) -> Vec<String> {
    sys.read(&format!("{STATE}/job.order"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn wait_line(sys: &System, line: &str) {
    sys.wait(&format!("{line:?} in job.order"), PATIENCE, || {
        order(sys).iter().any(|l| l == line).then_some(())
    });
}

/// Kills every process of sockhook.service, its runs' cgroups included, and
/// waits until systemd has seen it go.
fn kill(sys: &System) {
    sys.run_ok("systemctl kill -s KILL sockhook.service");
    sys.wait_stopped("sockhook.service");
}

/// `sockhook deliveries` as root inside: the lines after the header.
fn deliveries(sys: &System) -> Vec<String> {
    sys.run_ok("sockhook deliveries")
        .lines()
        .skip(1)
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_killed_activation_leaves_its_deliveries_to_the_next_one() {
    let Some(sys) = System::install() else {
        return;
    };
    job_hook(
        &sys,
        &format!(
            "i=0; while [ ! -e {STATE}/gate ] && [ $i -lt 2000 ]; do sleep 0.01; i=$((i+1)); done"
        ),
    );
    sys.start_socket();
    let token = sys.token("/hooks/job");
    assert_eq!(sys.post("job", &token, "one"), "204");
    wait_line(&sys, "start one");
    // Answered 204 while one runs: queued, not started.
    assert_eq!(sys.post("job", &token, "two"), "204");
    sys.wait_log(
        &["hook job: run queued behind the one in progress"],
        PATIENCE,
    );
    kill(&sys);
    assert_eq!(order(&sys), ["start one"]);
    let pending = deliveries(&sys);
    assert_eq!(pending.len(), 2, "{pending:?}");
    assert!(
        pending.iter().all(|l| l.contains(" pending ")),
        "{pending:?}"
    );
    assert_eq!(
        sys.run_ok("stat -c '%a %U' /var/lib/sockhook").trim(),
        "700 sockhook"
    );

    // The socket's next connection starts an activation, which runs both.
    sys.run_ok(&format!("touch {STATE}/gate"));
    sys.assert_listening("sockhook.socket");
    assert_eq!(sys.curl(&format!("{URL}/")), "404");
    wait_line(&sys, "end two");
    assert_eq!(
        order(&sys),
        ["start one", "start one", "end one", "start two", "end two"]
    );
    sys.wait("both outcomes", PATIENCE, || {
        let list = deliveries(&sys);
        list.iter()
            .all(|l| l.contains(" ok exited 0 ") && l.contains("(resumed: "))
            .then_some(())
    });
    sys.wait_log(&["running it now"], PATIENCE);
    sys.wait_listening("sockhook.socket");
    // Idle exit, and nothing runs again at the next activation.
    assert_eq!(sys.post("job", &token, "three"), "204");
    wait_line(&sys, "end three");
    assert_eq!(order(&sys).len(), 7);
}

/// A hundred deliveries, one at a time; after some of the 204s, the service
/// is killed at once (before or as the run starts) or once the run has
/// started (mid-run). Every delivery ends its run at least once; exactly
/// those killed ran twice, and the journal marks them resumed.
#[test]
fn a_hundred_deliveries_with_kills_at_random_points_lose_none() {
    let Some(sys) = System::install() else {
        return;
    };
    job_hook(&sys, "sleep 0.05");
    sys.start_socket();
    let token = sys.token("/hooks/job");
    let mut x: u32 = 0x9e37_79b9;
    let mut killed = Vec::new();
    for i in 0..100 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let body = format!("d{i}");
        assert_eq!(sys.post("job", &token, &body), "204", "delivery {i}");
        // About one in eight: fewer starts than the unit's StartLimitBurst= (20).
        match x % 16 {
            0 => {
                kill(&sys);
                killed.push((i, false));
            }
            1 => {
                wait_line(&sys, &format!("start {body}"));
                kill(&sys);
                killed.push((i, true));
            }
            _ => wait_line(&sys, &format!("end {body}")),
        }
    }
    // A last activation runs what the last kill left.
    assert_eq!(sys.curl(&format!("{URL}/")), "404");
    let list = sys.wait("no pending delivery", PATIENCE * 3, || {
        let list = deliveries(&sys);
        (list.len() == 100 && !list.iter().any(|l| l.contains(" pending "))).then_some(list)
    });
    let order = order(&sys);
    for i in 0..100 {
        assert!(
            order.iter().any(|l| *l == format!("end d{i}")),
            "delivery {i} never ran to its end: {order:?}"
        );
    }
    let resumed = list.iter().filter(|l| l.contains("(resumed: ")).count();
    assert!(
        !killed.is_empty() && resumed <= killed.len(),
        "{} killed, {resumed} resumed",
        killed.len()
    );
    // A kill after the run ended (possible when it outran the kill) leaves
    // nothing to resume; every resumed delivery is one that was killed.
    for line in list.iter().filter(|l| l.contains("(resumed: ")) {
        let id = line.split_whitespace().nth(2).unwrap();
        let body = sys.run_ok(&format!("sockhook deliveries show {id} --body"));
        let i: usize = body.trim_start_matches('d').parse().unwrap();
        let Some(&(_, mid_run)) = killed.iter().find(|(k, _)| *k == i) else {
            panic!("delivery {i} resumed, not killed: {line}");
        };
        // Killed mid-run: started twice. Killed right after its 204: its run
        // may or may not have started before the kill.
        let starts = order
            .iter()
            .filter(|l| **l == format!("start d{i}"))
            .count();
        assert!(
            if mid_run {
                starts == 2
            } else {
                (1..=2).contains(&starts)
            },
            "delivery {i} started {starts} times: {order:?}"
        );
    }
    eprintln!(
        "{} deliveries killed after their 204, {resumed} resumed by the next activation, {} runs in all",
        killed.len(),
        order.iter().filter(|l| l.starts_with("start ")).count()
    );
    sys.assert_listening("sockhook.socket");
}
