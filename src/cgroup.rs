//! A cgroup per command run, so that a timeout can stop everything the run
//! started — including processes that `sudo` made root, which the `sockhook`
//! user may not signal (sudo relays signals to its direct child only).
//!
//! Used when systemd delegated the service's cgroup (`Delegate=yes`): each
//! run's process moves itself into `run-N` below sockhook's own cgroup before
//! it executes the command, while it is still unprivileged, and writing
//! `cgroup.kill` (Linux ≥ 5.14) kills every process in it, whatever its user.
//! Elsewhere (`--listen`, tests) runs use process groups only.
//!
//! Where the delegated cgroup offers the pids controller, sockhook moves
//! itself into a `supervisor` child first (cgroup v2 lets only a cgroup
//! without processes of its own hand controllers to its children), enables
//! the controller for its children, and each run's cgroup gets `pids.max`:
//! a fork bomb in one run then cannot take the tasks sockhook and the
//! other runs need.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// Set by systemd for every process of a unit; a cgroup of our own is only
/// ours to divide when we run as a systemd service.
const INVOCATION_ID: &str = "INVOCATION_ID";

/// Sockhook's own cgroup, when it may create runs' cgroups below it.
pub struct Cgroups {
    dir: PathBuf,
    next: AtomicU64,
}

/// One run's cgroup; removed when dropped if it is empty by then.
pub struct RunCgroup {
    dir: PathBuf,
    procs: File,
}

impl Cgroups {
    /// The delegated cgroup of this service, or `None` when there is none.
    pub fn detect() -> Option<Cgroups> {
        std::env::var_os(INVOCATION_ID)?;
        let own = fs::read_to_string("/proc/self/cgroup").ok()?;
        let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mount = mountinfo.lines().find_map(|line| {
            let (mount, fs_type) = line.split_once(" - ")?;
            fs_type
                .starts_with("cgroup2 ")
                .then(|| mount.split(' ').nth(4))?
        })?;
        let dir = Path::new(mount).join(path.trim_start_matches('/'));
        let usable = dir.join("cgroup.kill").exists()
            && nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).is_ok();
        if !usable {
            return None;
        }
        let cgroups = Cgroups {
            dir,
            next: AtomicU64::new(1),
        };
        cgroups.enable_pids();
        Some(cgroups)
    }

    /// Enables the pids controller for the runs' cgroups, if it is offered;
    /// moves sockhook into `supervisor/` to be allowed to. Must run before
    /// sockhook starts a thread, as it moves the whole process.
    fn enable_pids(&self) {
        let offered = fs::read_to_string(self.dir.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids"));
        if !offered {
            return;
        }
        let supervisor = self.dir.join("supervisor");
        let moved = (fs::create_dir(&supervisor).is_ok() || supervisor.is_dir())
            && fs::write(supervisor.join("cgroup.procs"), b"0").is_ok();
        if moved {
            let _ = fs::write(self.dir.join("cgroup.subtree_control"), b"+pids");
        }
    }

    /// Where runs' cgroups are made, for the start-up log line.
    pub fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    /// A new, empty cgroup for one run.
    pub fn create(&self) -> io::Result<RunCgroup> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.join(format!("run-{}-{n}", std::process::id()));
        fs::create_dir(&dir)?;
        let procs = OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"));
        match procs {
            Ok(procs) => Ok(RunCgroup { dir, procs }),
            Err(e) => {
                let _ = fs::remove_dir(&dir);
                Err(e)
            }
        }
    }
}

impl RunCgroup {
    /// Makes the command's process join this cgroup between fork and exec.
    #[allow(unsafe_code)]
    pub fn enter_on_exec(&self, command: &mut Command) {
        let fd = self.procs.as_raw_fd();
        // SAFETY: write(2) is async-signal-safe; the fd stays open in the parent
        // until spawn returns, and "0" names the writing process itself.
        unsafe {
            command.pre_exec(move || {
                if nix::libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
    }

    /// Caps the tasks of the run at `tasks_max`, where the pids controller is
    /// enabled (elsewhere the file is not there and this does nothing).
    pub fn limit_tasks(&self, tasks_max: u64) {
        let _ = fs::write(self.dir.join("pids.max"), tasks_max.to_string());
    }

    /// Kills every process in the cgroup with SIGKILL.
    pub fn kill(&self) -> io::Result<()> {
        OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.kill"))?
            .write_all(b"1")
    }

    /// Whether any process is still in the cgroup.
    pub fn populated(&self) -> bool {
        fs::read_to_string(self.dir.join("cgroup.events"))
            .is_ok_and(|events| events.lines().any(|l| l == "populated 1"))
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        // Fails while processes remain; systemd removes the whole subtree when
        // the service stops.
        let _ = fs::remove_dir(&self.dir);
    }
}
