//! Tests of the system-test sandbox itself: a real systemd boots, writes stay inside,
//! and nothing is left behind — not even when the test process is killed.

mod support;

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use support::sandbox::{BOOT_TIMEOUT, OutputText, Sandbox, remove_stale_sandboxes};

#[test]
fn sandbox_boots_real_systemd() {
    let Some(sb) = Sandbox::boot_or_skip() else {
        return;
    };
    let _ = writeln!(
        io::stderr(),
        "sandbox {} booted in {:.2} s",
        sb.name(),
        sb.boot_time().as_secs_f64()
    );

    assert_eq!(sb.run_ok("cat /proc/1/comm").trim(), "systemd");
    assert_eq!(
        fs::read_to_string(format!("/proc/{}/comm", sb.pid()))
            .unwrap()
            .trim(),
        "systemd"
    );
    let state = sb.run("systemctl is-system-running").stdout_text();
    assert!(
        matches!(state.trim(), "running" | "degraded"),
        "state {state:?}"
    );
    assert_eq!(
        sb.run_ok("systemd-detect-virt --container").trim(),
        "container-other"
    );
    // systemd really manages services: a transient one runs to completion.
    sb.run_ok("systemd-run --wait --quiet --unit=sandbox-probe /bin/true");
    let journal = sb.journal("sandbox-probe.service");
    assert!(
        journal.contains("sandbox-probe.service"),
        "journal: {journal}"
    );

    assert_eq!(sb.run_ok("hostname").trim(), sb.name());
    sb.run_ok("getent hosts \"$(hostname)\"");
    // sudo resolves the host name; when that fails it still runs, but complains.
    let sudo = sb.run("sudo -n true");
    assert!(
        sudo.status.success() && sudo.stderr.is_empty(),
        "sudo: {sudo:?}"
    );
    sb.run_ok("command -v curl");
    assert!(
        sb.run_ok("ip -o link show lo").contains("UP"),
        "loopback is down"
    );
    // The sandbox has its own network namespace: the host's loopback is not this one.
    let inside = sb.run_ok("readlink /proc/self/ns/net");
    assert_ne!(
        inside.trim(),
        fs::read_link("/proc/self/ns/net")
            .unwrap()
            .to_string_lossy()
    );
}

#[test]
fn sandbox_writes_do_not_reach_host() {
    let Some(sb) = Sandbox::boot_or_skip() else {
        return;
    };
    let in_etc = format!("/etc/sandbox-probe-{}", sb.name());
    let in_repo = format!("{}/sandbox-probe-{}", env!("CARGO_MANIFEST_DIR"), sb.name());

    // The host's files are there, and writable...
    assert_eq!(
        sb.run_ok("cat /etc/os-release"),
        fs::read_to_string("/etc/os-release").unwrap()
    );
    assert!(
        sb.run_ok(&format!("ls {}", env!("CARGO_MANIFEST_DIR")))
            .contains("Cargo.toml")
    );
    sb.run_ok(&format!(
        "echo inside > {in_etc} && echo inside > {in_repo}"
    ));
    sb.write_file("/usr/local/lib/sandbox-probe/file", "from the test\n");
    assert_eq!(
        sb.run_ok(&format!("cat {in_etc} {in_repo}")),
        "inside\ninside\n"
    );
    assert_eq!(
        sb.run_ok("cat /usr/local/lib/sandbox-probe/file"),
        "from the test\n"
    );
    let host_id = fs::read_to_string("/etc/machine-id").unwrap_or_default();
    assert_ne!(sb.run_ok("cat /etc/machine-id"), host_id);

    // ...but what is written stays inside.
    for path in [
        in_etc.as_str(),
        in_repo.as_str(),
        "/usr/local/lib/sandbox-probe",
    ] {
        assert!(!Path::new(path).exists(), "{path} reached the host");
    }
    assert_eq!(
        fs::read_to_string("/etc/machine-id").unwrap_or_default(),
        host_id
    );
    drop(sb);
    for path in [
        in_etc.as_str(),
        in_repo.as_str(),
        "/usr/local/lib/sandbox-probe",
    ] {
        assert!(!Path::new(path).exists(), "{path} reached the host");
    }
}

#[test]
fn sandbox_teardown_leaves_nothing() {
    let Some(sb) = Sandbox::boot_or_skip() else {
        return;
    };
    let marker = format!("probe-{}", sb.name());
    // One process under systemd's management, one started straight through nsenter
    // (it lives in the test's cgroup, reachable only through the PID namespace).
    sb.run_ok(&format!(
        "systemd-run --unit={marker} /bin/bash -c 'exec -a {marker} sleep 600'"
    ));
    sb.run_ok(&format!(
        "(exec -a {marker} sleep 600) </dev/null >/dev/null 2>&1 &"
    ));
    assert!(
        wait_for(Duration::from_secs(10), || processes_named(&marker).len()
            == 2),
        "probe processes did not start"
    );
    let (pid, launcher, cgroup) = (sb.pid(), sb.launcher_pid(), sb.cgroup().to_path_buf());
    assert!(cgroup.join("init.scope").is_dir());

    drop(sb);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "systemd {pid} survived"
    );
    assert!(
        !Path::new(&format!("/proc/{launcher}")).exists(),
        "launcher {launcher} survived"
    );
    assert_eq!(
        processes_named(&marker),
        Vec::<u32>::new(),
        "probe processes survived"
    );
    assert!(!cgroup.exists(), "{} survived", cgroup.display());
}

#[test]
fn sandbox_run_is_bounded() {
    let Some(sb) = Sandbox::boot_or_skip() else {
        return;
    };
    let started = Instant::now();
    // The background child keeps stdout open: the timeout must end it too.
    let out = sb.run_timeout("sleep 30 & sleep 30", Duration::from_secs(1));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("killed after"),
        "{out:?}"
    );
}

#[test]
fn sandbox_dies_with_its_launcher() {
    let Some(sb) = Sandbox::boot_or_skip() else {
        return;
    };
    let pid = sb.pid();
    kill(sb.launcher_pid());
    assert!(
        wait_for(Duration::from_secs(10), || !Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()),
        "systemd {pid} outlived its launcher"
    );
}

const HELPER_ENV: &str = "SOCKHOOK_SANDBOX_HELPER";

/// A killed `cargo test` leaves nothing running: run this test binary again as a helper
/// that boots a sandbox, SIGKILL the helper, and watch the sandbox die.
#[test]
fn sandbox_dies_with_the_test_process() {
    // Also settles whether this machine can boot sandboxes at all.
    let Some(_other) = Sandbox::boot_or_skip() else {
        return;
    };
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sandbox_orphan_helper",
            "--ignored",
            "--nocapture",
        ])
        .env(HELPER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = helper.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + BOOT_TIMEOUT + Duration::from_secs(10);
    let mut seen = Vec::new();
    let booted = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => match line.strip_prefix("sandbox-helper: ") {
                Some(rest) => break rest.to_string(),
                None => seen.push(line),
            },
            Err(_) => {
                let _ = helper.kill();
                let out = helper.wait_with_output().unwrap();
                panic!(
                    "helper did not boot a sandbox:\n{}\n{}",
                    seen.join("\n"),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    };
    let (pid, cgroup) = booted.split_once(' ').unwrap();
    let cgroup = Path::new(cgroup);
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    helper.kill().unwrap();
    helper.wait().unwrap();
    let died = wait_for(Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    // The empty cgroup is left, for the next boot to remove; here, it also kills
    // whatever survived, so that a failure leaves nothing behind either.
    remove_stale_sandboxes();
    assert!(died, "systemd {pid} outlived the killed test process");
    assert!(!cgroup.exists(), "{} survived", cgroup.display());
}

/// Not a test on its own: the process that `sandbox_dies_with_the_test_process` kills.
#[test]
#[ignore = "helper process of sandbox_dies_with_the_test_process"]
fn sandbox_orphan_helper() {
    if std::env::var(HELPER_ENV).as_deref() != Ok("1") {
        return;
    }
    let sb = Sandbox::boot().unwrap_or_else(|e| panic!("{e}"));
    println!("sandbox-helper: {} {}", sb.pid(), sb.cgroup().display());
    // Until the parent kills us, or drops its end of stdin if it dies first.
    let _ = io::stdin().read_line(&mut String::new());
}

/// Host PIDs of processes whose argv[0] is `name`.
fn processes_named(name: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline.split(|&b| b == 0).next() == Some(name.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

fn kill(pid: u32) {
    let status = Command::new("/bin/bash")
        .args(["-c", "kill -KILL \"$1\"", "kill", &pid.to_string()])
        .status();
    assert!(status.unwrap().success(), "kill {pid} failed");
}

fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}
