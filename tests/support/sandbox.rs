//! A real systemd as PID 1 of fresh namespaces, for system tests.
//!
//! `Sandbox::boot()` runs `tests/sandbox/boot.sh`, which mounts an overlay of the host's
//! root file system (writes land on a tmpfs and vanish with the sandbox), pivots into it
//! and execs `/lib/systemd/systemd`. Commands run inside through `nsenter`. Dropping the
//! handle kills the whole PID namespace and removes the sandbox's cgroup.
//!
//! ```ignore
//! let Some(sb) = Sandbox::boot_or_skip() else { return };
//! sb.run_ok("make -C /work/main install");
//! assert_eq!(sb.run_ok("systemctl is-active sockhook.socket").trim(), "active");
//! ```
//!
//! Nothing outlives the test process: the launcher carries a parent-death signal (bound
//! to a thread that lives exactly as long as the launcher), and unshare's `--kill-child`
//! takes systemd along. A killed test run can leave only empty cgroup directories behind;
//! the next `boot()` removes those.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Longest time from launch to `systemctl is-system-running` answering.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default limit for one command run inside.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Limit for commands that only gather diagnostics.
const DIAGNOSIS_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time teardown waits for the sandbox's processes to be gone.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often bounded waits look at the condition they wait for.
const POLL: Duration = Duration::from_millis(10);
/// Prefix of every cgroup (and host name) a sandbox uses; the rest is `<pid>-<n>`.
const PREFIX: &str = "sockhook-test-";
const BOOT_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sandbox/boot.sh");
const INSIDE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a sandbox could not be booted on this machine.
#[derive(Debug)]
pub struct SkipReason {
    /// One line, for `skipped: <reason>`.
    pub reason: String,
    /// Whatever helps to diagnose it (boot output, journal); may be empty.
    pub detail: String,
}

impl SkipReason {
    fn new(reason: impl Into<String>) -> Self {
        SkipReason {
            reason: reason.into(),
            detail: String::new(),
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)?;
        if !self.detail.is_empty() {
            write!(f, "\n{}", self.detail)?;
        }
        Ok(())
    }
}

/// What the launcher thread reports: its exit status once it has been reaped.
#[derive(Default)]
struct LauncherState {
    exited: Mutex<Option<io::Result<ExitStatus>>>,
    changed: Condvar,
}

/// A running systemd in its own namespaces. Killed and cleaned up on drop.
pub struct Sandbox {
    name: String,
    cgroup: PathBuf,
    launcher_pid: u32,
    /// Host PID of the sandbox's systemd; 0 until it is known.
    pid: u32,
    boot_time: Duration,
    console: Arc<Mutex<Vec<u8>>>,
    launcher: Arc<LauncherState>,
    keeper: Option<thread::JoinHandle<()>>,
}

impl Sandbox {
    /// Boots a sandbox and waits until systemd reports `running` or `degraded`.
    pub fn boot() -> Result<Sandbox, SkipReason> {
        let cgroup_root = preflight()?;
        remove_stale_sandboxes_in(&cgroup_root);

        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let cgroup = cgroup_root.join(&name);
        fs::create_dir(&cgroup).map_err(|e| {
            SkipReason::new(format!("cannot create cgroup {}: {e}", cgroup.display()))
        })?;

        let started = Instant::now();
        let mut sb = Sandbox {
            name,
            cgroup,
            launcher_pid: 0,
            pid: 0,
            boot_time: Duration::ZERO,
            console: Arc::default(),
            launcher: Arc::default(),
            keeper: None,
        };
        // From here on, dropping `sb` on an early return tears down whatever got started.
        sb.launch()?;
        sb.wait_for_systemd(started + BOOT_TIMEOUT)?;
        sb.wait_until_booted(started + BOOT_TIMEOUT)?;
        sb.boot_time = started.elapsed();
        Ok(sb)
    }

    /// `boot()`, or `None` after printing `skipped: <reason>` — except under `CI=true`,
    /// where a system test that cannot run must fail.
    pub fn boot_or_skip() -> Option<Sandbox> {
        match Sandbox::boot() {
            Ok(sb) => Some(sb),
            Err(skip) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("CI=true but the system-test sandbox cannot boot: {skip}")
            }
            Err(skip) => {
                // Straight to stderr: the test harness swallows eprintln! of passing tests.
                let _ = writeln!(io::stderr(), "skipped: {}", skip.reason);
                None
            }
        }
    }

    /// Starts boot.sh on a dedicated thread. PR_SET_PDEATHSIG fires when the *thread*
    /// that forked the child ends, so that thread must live as long as the launcher.
    fn launch(&mut self) -> Result<(), SkipReason> {
        let fail = |what: &str, e: io::Error| SkipReason::new(format!("{what}: {e}"));
        let (reader, writer) = io::pipe().map_err(|e| fail("pipe", e))?;
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--", "/bin/bash", BOOT_SH]);
        for dir in overlay_dirs() {
            cmd.arg("--overlay").arg(dir);
        }
        cmd.arg(&self.name).arg(&self.cgroup);
        cmd.env_clear()
            .env("PATH", INSIDE_PATH)
            .stdin(Stdio::null());
        cmd.stdout(writer.try_clone().map_err(|e| fail("pipe", e))?)
            .stderr(writer);

        let (pid_tx, pid_rx) = std::sync::mpsc::channel();
        let console = Arc::clone(&self.console);
        let state = Arc::clone(&self.launcher);
        let keeper = thread::Builder::new()
            .name(format!("{}-launcher", self.name))
            .spawn(move || {
                let spawned = cmd.spawn();
                drop(cmd); // holds the pipe's write ends; the reader must see EOF
                let mut child = match spawned {
                    Ok(child) => child,
                    Err(e) => {
                        let _ = pid_tx.send(Err(e));
                        return;
                    }
                };
                let _ = pid_tx.send(Ok(child.id()));
                collect_console(reader, &console);
                let status = child.wait();
                *state.exited.lock().unwrap() = Some(status);
                state.changed.notify_all();
            })
            .map_err(|e| fail("cannot start launcher thread", e))?;
        self.keeper = Some(keeper);
        self.launcher_pid = pid_rx
            .recv()
            .map_err(|_| SkipReason::new("launcher thread died"))?
            .map_err(|e| fail("cannot run setpriv", e))?;
        Ok(())
    }

    /// Waits until systemd runs as the sandbox's PID 1 and its private bus socket exists.
    fn wait_for_systemd(&mut self, deadline: Instant) -> Result<(), SkipReason> {
        // systemd moves itself into init.scope; that cgroup lists its host PID.
        let procs = self.cgroup.join("init.scope/cgroup.procs");
        let pid = self.wait_until(deadline, "systemd to start", || {
            let pid = fs::read_to_string(&procs)
                .ok()?
                .lines()
                .next()?
                .parse::<u32>()
                .ok()?;
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == "systemd").then_some(pid)
        })?;
        self.pid = pid;
        let bus = self.path("/run/systemd/private");
        self.wait_until(deadline, "systemd's private bus socket", || {
            bus.exists().then_some(())
        })
    }

    fn wait_until_booted(&self, deadline: Instant) -> Result<(), SkipReason> {
        let left = deadline.saturating_duration_since(Instant::now());
        let out = self.run_timeout("systemctl is-system-running --wait", left);
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match state.as_str() {
            "running" => Ok(()),
            "degraded" => {
                eprintln!(
                    "sandbox {}: degraded; failed units:\n{}",
                    self.name,
                    self.run_timeout("systemctl --failed --no-pager --full", DIAGNOSIS_TIMEOUT)
                        .stdout_text()
                );
                Ok(())
            }
            _ => Err(SkipReason {
                reason: format!(
                    "systemd in {} did not finish booting: state {state:?}",
                    self.name
                ),
                detail: format!(
                    "{}\n--- jobs ---\n{}\n--- journal ---\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.run_timeout("systemctl list-jobs --no-pager", DIAGNOSIS_TIMEOUT)
                        .stdout_text(),
                    self.run_timeout("journalctl -b --no-pager -n 100", DIAGNOSIS_TIMEOUT)
                        .stdout_text()
                ),
            }),
        }
    }

    /// Polls `probe` until it yields a value, the deadline passes, or the launcher exits.
    fn wait_until<T>(
        &self,
        deadline: Instant,
        what: &str,
        mut probe: impl FnMut() -> Option<T>,
    ) -> Result<T, SkipReason> {
        loop {
            if let Some(value) = probe() {
                return Ok(value);
            }
            if let Some(status) = self.launcher_status() {
                let console = self.console();
                let last = console
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("no output");
                return Err(SkipReason {
                    reason: format!(
                        "sandbox {} exited ({status}) while waiting for {what}: {last}",
                        self.name
                    ),
                    detail: console.clone(),
                });
            }
            if Instant::now() >= deadline {
                return Err(SkipReason {
                    reason: format!("sandbox {}: timed out waiting for {what}", self.name),
                    detail: self.console(),
                });
            }
            thread::sleep(POLL);
        }
    }

    fn launcher_status(&self) -> Option<String> {
        let exited = self.launcher.exited.lock().unwrap();
        exited.as_ref().map(|status| match status {
            Ok(status) => status.to_string(),
            Err(e) => format!("wait failed: {e}"),
        })
    }

    /// Runs `bash -c cmd` inside every namespace of the sandbox, with `RUN_TIMEOUT`.
    pub fn run(&self, cmd: &str) -> Output {
        self.run_timeout(cmd, RUN_TIMEOUT)
    }

    /// Runs `bash -c cmd` inside, killed (exit status 124 or 137) after `timeout`.
    /// The environment is a clean root login's, not the test's.
    pub fn run_timeout(&self, cmd: &str, timeout: Duration) -> Output {
        let secs = format!("{:.3}", timeout.as_secs_f64().max(0.001));
        let result = Command::new("timeout")
            .args([
                "--kill-after=5",
                &secs,
                "nsenter",
                "-t",
                &self.pid.to_string(),
                "-a",
                "--",
            ])
            .args(["/bin/bash", "-c", cmd])
            .env_clear()
            .envs([
                ("PATH", INSIDE_PATH),
                ("HOME", "/root"),
                ("LANG", "C.UTF-8"),
                ("TERM", "dumb"),
            ])
            .stdin(Stdio::null())
            .output();
        let mut out = result
            .unwrap_or_else(|e| panic!("sandbox {}: cannot run timeout/nsenter: {e}", self.name));
        if matches!(out.status.code(), Some(124 | 137)) {
            let note = format!(
                "\n[sandbox: `{cmd}` killed after {secs} s, or exited {}]\n",
                out.status
            );
            out.stderr.extend_from_slice(note.as_bytes());
        }
        out
    }

    /// Runs `cmd` inside and returns its stdout; panics with everything it printed
    /// unless it exits 0.
    pub fn run_ok(&self, cmd: &str) -> String {
        let out = self.run(cmd);
        if !out.status.success() {
            panic!(
                "in sandbox {}: `{cmd}` failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.stdout_text()
    }

    /// The journal of one unit (`journalctl -u`), or of the whole boot when `unit` is
    /// empty, for failure messages.
    pub fn journal(&self, unit: &str) -> String {
        let filter = if unit.is_empty() {
            String::new()
        } else {
            format!("-u '{unit}'")
        };
        let out = self.run(&format!(
            "journalctl -b --no-pager -o short-monotonic {filter}"
        ));
        format!(
            "{}{}",
            out.stdout_text(),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Host path of `inside` (an absolute path in the sandbox), through /proc/PID/root:
    /// read and write the sandbox's files directly from the test.
    pub fn path(&self, inside: &str) -> PathBuf {
        assert!(inside.starts_with('/'), "not an absolute path: {inside}");
        PathBuf::from(format!("/proc/{}/root{inside}", self.pid))
    }

    /// Writes a file inside the sandbox, creating its parent directories.
    pub fn write_file(&self, inside: &str, contents: impl AsRef<[u8]>) {
        let path = self.path(inside);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("mkdir -p {}: {e}", parent.display()));
        }
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The sandbox's name, also its host name and the last part of its cgroup.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host PID of the sandbox's systemd (PID 1 inside).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Host PID of the launcher (unshare); killing it takes the whole sandbox down.
    pub fn launcher_pid(&self) -> u32 {
        self.launcher_pid
    }

    /// The sandbox's cgroup on the host (the root of the cgroup tree inside).
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// From launch to `is-system-running` answering.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// What boot.sh printed (systemd itself logs to the journal).
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().unwrap()).into_owned()
    }

    fn teardown(&mut self) -> Result<(), String> {
        // init.scope holds PID 1 alone: killing it ends the PID namespace, and the
        // launcher (unshare) exits and reaps it. Before systemd is up, kill the launcher.
        if self.pid == 0 || fs::write(self.cgroup.join("init.scope/cgroup.kill"), "1").is_err() {
            let _ = fs::write(self.cgroup.join("cgroup.kill"), "1");
            if self.launcher_pid != 0 && self.launcher_status().is_none() {
                let _ = Command::new("/bin/bash")
                    .args([
                        "-c",
                        "kill -KILL \"$1\" 2>/dev/null",
                        "kill",
                        &self.launcher_pid.to_string(),
                    ])
                    .status();
            }
        }
        if self.keeper.is_some() {
            let exited = self.launcher.exited.lock().unwrap();
            let (exited, _) = self
                .launcher
                .changed
                .wait_timeout_while(exited, TEARDOWN_TIMEOUT, |e| e.is_none())
                .unwrap();
            if exited.is_none() {
                return Err(format!("launcher {} still running", self.launcher_pid));
            }
            drop(exited);
            let _ = self.keeper.take().unwrap().join();
        }
        // Nothing should be left; if something is, it goes too.
        let _ = fs::write(self.cgroup.join("cgroup.kill"), "1");
        remove_cgroup(&self.cgroup)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            let msg = format!("sandbox {}: teardown incomplete: {e}", self.name);
            if thread::panicking() {
                let _ = writeln!(io::stderr(), "{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// Lossy stdout, for messages.
pub trait OutputText {
    fn stdout_text(&self) -> String;
}

impl OutputText for Output {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Checks what booting needs; returns the cgroup2 mount to create sandboxes under.
fn preflight() -> Result<PathBuf, SkipReason> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| SkipReason::new(format!("no /proc: {e}")))?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1));
    if euid != Some("0") {
        return Err(SkipReason::new(
            "system tests need root (they boot systemd in namespaces)",
        ));
    }
    if !Path::new("/lib/systemd/systemd").exists() {
        return Err(SkipReason::new(
            "systemd is not installed (/lib/systemd/systemd)",
        ));
    }
    for tool in [
        "setpriv",
        "unshare",
        "nsenter",
        "timeout",
        "pivot_root",
        "findmnt",
        "mount",
        "ip",
        "hostname",
    ] {
        if !INSIDE_PATH
            .split(':')
            .any(|dir| Path::new(dir).join(tool).exists())
        {
            return Err(SkipReason::new(format!(
                "{tool} not found (packages util-linux, mount, coreutils, iproute2, hostname)"
            )));
        }
    }
    cgroup2_mount().ok_or_else(|| SkipReason::new("no cgroup2 file system mounted"))
}

/// The cgroup2 mount point: /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on
/// hybrid ones. Only a mount of the hierarchy's root will do.
fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let is_root = right.starts_with("cgroup2 ") && fields.get(3) == Some(&"/");
            fields.get(4).filter(|_| is_root).map(PathBuf::from)
        })
        .collect();
    found.sort_by_key(|p| p != Path::new("/sys/fs/cgroup"));
    found.into_iter().next()
}

/// What boot.sh overlays besides /: the repository and the cargo target directory, in
/// case they live on file systems of their own (an overlay of / shows empty mount points).
fn overlay_dirs() -> Vec<PathBuf> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![repo.clone()];
    // CARGO_TARGET_TMPDIR is <target dir>/tmp.
    if let Some(target) = Path::new(env!("CARGO_TARGET_TMPDIR")).parent()
        && !target.starts_with(&repo)
    {
        dirs.push(target.to_path_buf());
    }
    dirs
}

fn collect_console(mut reader: io::PipeReader, console: &Mutex<Vec<u8>>) {
    const CAP: usize = 1 << 20;
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut console = console.lock().unwrap();
                let room = CAP.saturating_sub(console.len());
                console.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Removes the sandbox cgroups whose test process is gone (killed test runs).
pub fn remove_stale_sandboxes() {
    if let Some(root) = cgroup2_mount() {
        remove_stale_sandboxes_in(&root);
    }
}

fn remove_stale_sandboxes_in(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if owner.parse::<u32>().is_ok() && !Path::new("/proc").join(owner).exists() {
            let _ = fs::write(entry.path().join("cgroup.kill"), "1");
            if let Err(e) = remove_cgroup(&entry.path()) {
                let _ = writeln!(io::stderr(), "stale sandbox cgroup {name}: {e}");
            }
        }
    }
}

/// Waits (bounded) until no process is left in the cgroup tree, then removes it
/// bottom-up; the kernel refuses to remove a cgroup that still has children.
fn remove_cgroup(cgroup: &Path) -> Result<(), String> {
    if !cgroup.exists() {
        return Ok(());
    }
    let events = cgroup.join("cgroup.events");
    let deadline = Instant::now() + TEARDOWN_TIMEOUT;
    while fs::read_to_string(&events).is_ok_and(|e| e.lines().any(|l| l == "populated 1")) {
        if Instant::now() >= deadline {
            let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
            return Err(format!(
                "{} still has processes: {}",
                cgroup.display(),
                procs.trim()
            ));
        }
        thread::sleep(POLL);
    }
    let mut dirs = Vec::new();
    collect_dirs(cgroup, &mut dirs);
    // Children were pushed after their parents: remove in reverse.
    for dir in dirs.iter().rev() {
        fs::remove_dir(dir).map_err(|e| format!("rmdir {}: {e}", dir.display()))?;
    }
    Ok(())
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}
