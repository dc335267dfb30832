//! Stage 6: run the hook's command — after the response, never through a shell.
//!
//! The command is an argv with an absolute program path, started in a
//! session (and process group) of its own with a cleared environment (`PATH` and `SOCKHOOK_*` only), the
//! body as stdin and its output in sockhook's log. A hook runs at most once at
//! a time: triggers that arrive meanwhile coalesce into one follow-up run with
//! the newest request. A run that outlives its timeout gets SIGTERM, then
//! SIGKILL, sent to its whole process group.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufReader, PipeReader, Read};
use std::net::IpAddr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::cgroup::{Cgroups, RunCgroup};
use crate::config::Hook;
use crate::idle::{Activity, Busy};
use crate::log::{Clean, Last, Level};
use crate::read::{Body, Head};
use crate::{error, info, warning};

/// The only `PATH` a command sees.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Time between SIGTERM and SIGKILL when a run is stopped.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long the output of a finished run is still collected.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
/// Most bytes of one run's output that reach the log; the rest is read and
/// counted, so that a command printing without end (`yes`) cannot flood the
/// journal.
pub const MAX_LOGGED_BYTES: u64 = 64 * 1024;
/// Stack of a thread that logs a run's output.
const OUTPUT_STACK_BYTES: usize = 64 * 1024;

/// The names of the variables a command gets besides `PATH`, in order.
pub const ENV_NAMES: [&str; 8] = [
    "SOCKHOOK_HOOK",
    "SOCKHOOK_METHOD",
    "SOCKHOOK_PATH",
    "SOCKHOOK_QUERY",
    "SOCKHOOK_REMOTE_ADDR",
    "SOCKHOOK_EVENT",
    "SOCKHOOK_DELIVERY",
    "SOCKHOOK_CONTENT_TYPE",
];

/// One run of a hook's command, as a request asked for it.
pub struct Job {
    /// The hook.
    hook: Arc<Hook>,
    /// The values of [`ENV_NAMES`], in the same order.
    env: [OsString; ENV_NAMES.len()],
    /// The body, the command's stdin.
    body: Body,
    /// When the request was accepted, from [`Runner::ticket`]: orders jobs by
    /// acceptance rather than by when their clients closed the connection.
    ticket: u64,
    /// Who wants to know about the run that covers this job.
    watches: Vec<Box<dyn Watch>>,
    /// Run by `sockhook replay`: the command also gets `SOCKHOOK_REPLAY=1`.
    replay: bool,
    /// Taken from a relay by `sockhook subscribe`: `EPOCH HOOK SEQ`, for the journal.
    relay: Option<String>,
    /// The hook's `[env]` variables, from the payload.
    fields: Vec<(String, Vec<u8>)>,
}

/// One of a run's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// The command could not be started: why.
    NotStarted(String),
    /// It ran.
    Ran {
        /// Its process id.
        pid: u32,
        /// How it exited; `None` if it could not be waited for.
        status: Option<ExitStatus>,
        /// It outlived the hook's `timeout` and was stopped.
        timed_out: bool,
        /// It was stopped because sockhook stopped.
        stopped: bool,
        /// How long it ran.
        elapsed: Duration,
    },
}

impl Outcome {
    /// `exited 0 after 0.004 s (run 4242)`, `not started: …`: for the journal.
    pub fn describe(&self) -> String {
        match self {
            Outcome::NotStarted(why) => format!("not started: {why}"),
            Outcome::Ran {
                pid,
                status,
                timed_out,
                elapsed,
                ..
            } => {
                let how = match (timed_out, status) {
                    (true, _) => "timed out".to_owned(),
                    (false, Some(status)) => describe(*status),
                    (false, None) => "could not be waited for".to_owned(),
                };
                format!("{how} after {:.3} s (run {pid})", elapsed.as_secs_f64())
            }
        }
    }

    /// Whether the run counts as a success: exit 0 in time, or ended by
    /// sockhook's own stop (which is not the command failing).
    pub fn success(&self) -> bool {
        match self {
            Outcome::NotStarted(_) => false,
            Outcome::Ran {
                status: Some(status),
                timed_out: false,
                stopped,
                ..
            } => status.success() || (*stopped && status.signal().is_some()),
            Outcome::Ran { .. } => false,
        }
    }
}

/// Why no run covers a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// sockhook is stopping and starts no more runs.
    Stopping,
    /// A request accepted later was already run or queued first; that run
    /// covers this one, but it had started before this was known.
    Superseded,
    /// No thread could be started for the run.
    NoThread,
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dropped::Stopping => "sockhook is stopping",
            Dropped::Superseded => "a newer request was already run or queued",
            Dropped::NoThread => "no thread could be started for the run",
        })
    }
}

/// An observer of the run that covers a job: told when it starts, what it
/// prints, and how it ends — or that none will cover it. A job that is
/// coalesced into a newer one hands its watches on to it.
pub trait Watch: Send {
    /// The run started as process `pid`.
    fn started(&mut self, _pid: u32) {}
    /// The run printed one line (at most `Clean::OUTPUT_MAX` bytes, with its
    /// line feed if it had one) on `out`.
    fn output(&mut self, _out: Out, _line: &[u8]) {}
    /// This job was coalesced into the newer one with `ticket`, whose run covers it.
    fn coalesced(&mut self, _ticket: u64) {}
    /// The run ended.
    fn ended(self: Box<Self>, outcome: &Outcome);
    /// No run will cover the job.
    fn dropped(self: Box<Self>, why: Dropped);
}

/// The watches of a run in progress, shared with the threads reading its output.
type Watches = Arc<Mutex<Vec<Box<dyn Watch>>>>;

fn lock_watches(watches: &Watches) -> MutexGuard<'_, Vec<Box<dyn Watch>>> {
    watches.lock().unwrap_or_else(|e| e.into_inner())
}

impl Job {
    /// The job an accepted request asks for: `hook`'s command with the
    /// request's metadata in its environment and `body` on its stdin.
    pub fn new(
        hook: Arc<Hook>,
        head: &Head,
        client: Option<IpAddr>,
        body: Body,
        ticket: u64,
    ) -> Job {
        let field = |name: Option<&str>| {
            OsString::from_vec(
                name.and_then(|n| head.header(n))
                    .unwrap_or_default()
                    .to_vec(),
            )
        };
        let env = [
            hook.name.clone().into(),
            head.method.clone().into(),
            head.path.clone().into(),
            head.query.clone().unwrap_or_default().into(),
            client.map_or_else(String::new, |ip| ip.to_string()).into(),
            field(hook.scheme.event_header()),
            field(hook.scheme.delivery_header()),
            field(Some("content-type")),
        ];
        Job::restore(hook, env, body, ticket, false)
    }

    /// A job from what the delivery journal kept of a request: the values
    /// of [`ENV_NAMES`] in order, and the body.
    pub fn restore(
        hook: Arc<Hook>,
        env: [OsString; ENV_NAMES.len()],
        body: Body,
        ticket: u64,
        replay: bool,
    ) -> Job {
        Job {
            hook,
            env,
            body,
            ticket,
            watches: Vec::new(),
            replay,
            relay: None,
            fields: Vec::new(),
        }
    }

    /// Marks the job as the relay's message `seq` of `hook` in store
    /// `epoch`: its journal entry says so (`relay EPOCH HOOK SEQ`).
    pub fn relayed(mut self, epoch: &str, hook: &str, seq: u64) -> Job {
        self.relay = Some(format!("{epoch} {hook} {seq}"));
        self
    }

    /// `EPOCH HOOK SEQ` of a message taken from a relay.
    pub fn relay(&self) -> Option<&str> {
        self.relay.as_deref()
    }

    /// Sets the hook's `[env]` variables, `(NAME, value)`.
    pub fn set_fields(&mut self, fields: Vec<(String, Vec<u8>)>) {
        self.fields = fields;
    }

    /// The hook's `[env]` variables the command gets.
    pub fn fields(&self) -> &[(String, Vec<u8>)] {
        &self.fields
    }

    /// The values of [`ENV_NAMES`] the command gets, in order.
    pub fn env(&self) -> &[OsString; ENV_NAMES.len()] {
        &self.env
    }

    /// The body, the command's stdin.
    pub fn body(&self) -> &Body {
        &self.body
    }

    /// Adds an observer of the run that will cover this job.
    pub fn watch(&mut self, watch: Box<dyn Watch>) {
        self.watches.push(watch);
    }

    /// The hook it runs.
    pub fn hook(&self) -> &Hook {
        &self.hook
    }

    fn drop_with(self, why: Dropped) {
        for watch in self.watches {
            watch.dropped(why);
        }
    }
}

/// Starts jobs, one at a time per hook; cheap to clone.
#[derive(Clone)]
pub struct Runner {
    shared: Arc<Shared>,
}

struct Shared {
    runs: Mutex<Runs>,
    tickets: AtomicU64,
    activity: Arc<Activity>,
    /// Where runs get cgroups of their own, when systemd delegated one.
    cgroups: Option<Cgroups>,
    /// The journal's lock directory: each run holds its hook's lock there,
    /// so that `sockhook replay` waits for it (and it for a replay).
    locks: Option<PathBuf>,
}

#[derive(Default)]
struct Runs {
    /// Hooks with a run in progress, and the follow-up job waiting for each.
    queued: HashMap<String, Option<Job>>,
    /// The newest ticket started or queued for each hook.
    newest: HashMap<String, u64>,
    /// Process groups of the runs in progress.
    groups: HashMap<String, Pid>,
    /// Runs that failed, timed out or could not start.
    failures: u64,
    /// Set when sockhook is stopping: no new runs start.
    stopping: bool,
}

impl Runner {
    /// A runner that reports its runs to `activity`; with `locks`, each run
    /// holds its hook's lock there (see [`crate::journal::lock_hook`]).
    pub fn new(
        activity: Arc<Activity>,
        cgroups: Option<Cgroups>,
        locks: Option<PathBuf>,
    ) -> Runner {
        Runner {
            shared: Arc::new(Shared {
                runs: Mutex::default(),
                tickets: AtomicU64::new(1),
                activity,
                cgroups,
                locks,
            }),
        }
    }

    /// A number that orders accepted requests; take it when deciding to accept.
    pub fn ticket(&self) -> u64 {
        self.shared.tickets.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `job` now, or after the hook's current run if one is in progress.
    ///
    /// A job older than one already started or queued for the hook is dropped:
    /// that newer run starts after this request was accepted, so it covers it,
    /// and running the older body last would undo the newer one.
    pub fn trigger(&self, mut job: Job) {
        let name = job.hook.name.clone();
        let mut runs = self.shared.lock();
        if runs.stopping {
            warning!("hook {name}: not run: sockhook is stopping");
            drop(runs);
            return job.drop_with(Dropped::Stopping);
        }
        let newest = runs.newest.entry(name.clone()).or_default();
        if job.ticket < *newest {
            // A follow-up run that has not started covers this request fully.
            if let Some(Some(queued)) = runs.queued.get_mut(&name) {
                info!("hook {name}: run coalesced into the queued one of a newer request");
                for mut watch in job.watches {
                    watch.coalesced(queued.ticket);
                    queued.watches.push(watch);
                }
                return;
            }
            info!("hook {name}: not run: a newer request was already run or queued");
            drop(runs);
            return job.drop_with(Dropped::Superseded);
        }
        *newest = job.ticket;
        if let Some(queued) = runs.queued.get_mut(&name) {
            match queued.take() {
                Some(replaced) => {
                    info!("hook {name}: queued run replaced by a newer request");
                    for mut watch in replaced.watches {
                        watch.coalesced(job.ticket);
                        job.watches.push(watch);
                    }
                }
                None => info!("hook {name}: run queued behind the one in progress"),
            }
            *queued = Some(job);
            return;
        }
        runs.queued.insert(name.clone(), None);
        drop(runs);
        let busy = self.shared.activity.run();
        let shared = Arc::clone(&self.shared);
        // Handed over through a slot, so that it is not lost with a thread
        // that cannot be started.
        let slot = Arc::new(Mutex::new(Some(job)));
        let taken = Arc::clone(&slot);
        let spawned = thread::Builder::new()
            .name(format!("run {name}"))
            .spawn(move || {
                let job = taken.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(job) = job {
                    run_loop(&shared, job, busy);
                }
            });
        if let Err(e) = spawned {
            error!("hook {name}: unable to start a thread for the run: {e}");
            let mut runs = self.shared.lock();
            runs.queued.remove(&name);
            runs.failures += 1;
            drop(runs);
            if let Some(job) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                job.drop_with(Dropped::NoThread);
            }
        }
    }

    /// How many runs failed so far.
    pub fn failures(&self) -> u64 {
        self.shared.lock().failures
    }

    /// Stops starting runs and sends SIGTERM to the process groups of those in progress.
    pub fn stop(&self) {
        let mut runs = self.shared.lock();
        runs.stopping = true;
        for (name, group) in &runs.groups {
            info!("hook {name}: sending SIGTERM to process group {group}");
            let _ = killpg(*group, Signal::SIGTERM);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Runs> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn run_loop(shared: &Shared, mut job: Job, busy: Busy) {
    let name = job.hook.name.clone();
    loop {
        let watches: Watches = Arc::new(Mutex::new(std::mem::take(&mut job.watches)));
        let outcome = run_once(shared, job, &watches);
        let mut runs = shared.lock();
        if !outcome.success() {
            runs.failures += 1;
        }
        let next = runs.queued.get_mut(&name).and_then(Option::take);
        let stopping = runs.stopping;
        if next.is_none() || stopping {
            runs.queued.remove(&name);
        }
        drop(runs);
        for watch in std::mem::take(&mut *lock_watches(&watches)) {
            watch.ended(&outcome);
        }
        match next {
            Some(next) if !stopping => job = next,
            Some(next) => {
                next.drop_with(Dropped::Stopping);
                break;
            }
            None => break,
        }
    }
    drop(busy);
}

/// Runs the command once, to the end, telling `watches` as it goes.
fn run_once(shared: &Shared, job: Job, watches: &Watches) -> Outcome {
    let hook = &job.hook;
    let name = &hook.name;
    let cgroup = shared.cgroups.as_ref().and_then(|cgroups| {
        cgroups
            .create()
            .map_err(|e| warning!("hook {name}: no cgroup for the run ({e}); a timeout reaches its process group only"))
            .ok()
    });
    // Held until the run is over: a replay of this hook waits for it.
    let _lock = shared.locks.as_deref().and_then(|locks| {
        crate::journal::lock_hook(locks, name)
            .map_err(|e| {
                warning!(
                    "hook {name}: unable to take its run lock ({e}); a replay may run alongside"
                )
            })
            .ok()
    });
    let (stdout, stderr, child) = match spawn(&job, cgroup.as_ref()) {
        Ok(pair) => pair,
        Err(e) => {
            error!("hook {name}: unable to start {}: {e}", hook.command[0]);
            return Outcome::NotStarted(format!("unable to start {}: {e}", hook.command[0]));
        }
    };
    let started = Instant::now();
    let pid = child.id();
    let group = Pid::from_raw(pid as i32);
    info!("hook {name}: run {pid} started");
    shared.lock().groups.insert(name.clone(), group);
    for watch in lock_watches(watches).iter_mut() {
        watch.started(pid);
    }

    let (output_done, output_finished) = mpsc::channel();
    let budget = Arc::new(AtomicU64::new(MAX_LOGGED_BYTES));
    let dropped = Arc::new(AtomicU64::new(0));
    for (pipe, out, what) in [
        (stdout, Out::Stdout, "stdout"),
        (stderr, Out::Stderr, "stderr"),
    ] {
        let logger = name.clone();
        let (budget, dropped) = (Arc::clone(&budget), Arc::clone(&dropped));
        let output_done = output_done.clone();
        let watches = Arc::clone(watches);
        let _ = thread::Builder::new()
            .name(format!("log {name} {what}"))
            .stack_size(OUTPUT_STACK_BYTES)
            .spawn(move || {
                read_output(&logger, pipe, out, &budget, &dropped, &watches);
                let _ = output_done.send(());
            });
    }
    drop(output_done);
    let (exited, exit) = mpsc::channel();
    let mut child = child;
    let waiter = thread::Builder::new()
        .name(format!("wait {name}"))
        .spawn(move || exited.send(child.wait()));

    let mut timed_out = false;
    let status = match waiter {
        Err(e) => {
            let _ = killpg(group, Signal::SIGKILL);
            Err(e)
        }
        Ok(_) => exit.recv_timeout(hook.timeout).unwrap_or_else(|_| {
            timed_out = true;
            stop_group(hook, pid, &exit, cgroup.as_ref())
        }),
    };
    if let Some(cgroup) = cgroup.as_ref().filter(|c| c.populated()) {
        // A run is its whole cgroup, as a oneshot service is: what it leaves
        // behind (root processes under sudo included) would outlive it.
        warning!("hook {name}: run {pid} left processes behind; killing them (cgroup.kill)");
        if let Err(e) = cgroup.kill() {
            error!("hook {name}: unable to kill what run {pid} left: {e}");
        }
    }
    shared.lock().groups.remove(name);
    let elapsed = started.elapsed().as_secs_f64();
    let grace = Instant::now() + OUTPUT_GRACE;
    for _ in 0..2 {
        let _ = output_finished.recv_timeout(grace.saturating_duration_since(Instant::now()));
    }
    let dropped = dropped.load(Ordering::Relaxed);
    if dropped > 0 {
        warning!(
            "hook {name}: run {pid}: {dropped} more bytes of output not logged (at most {MAX_LOGGED_BYTES} per run)"
        );
    }
    if let Ok(status) = &status {
        crate::log::status(
            Last::Run,
            format_args!(
                "hook {name}: run {pid} {} after {elapsed:.3} s",
                describe(*status)
            ),
        );
    }

    // systemd's stop signals the whole cgroup at once: the run may die of it
    // before the event loop has read the same signal and stopped the
    // runner, so a stop signal still pending counts as the stop too.
    let stopping = shared.lock().stopping || stop_signal_pending();
    let stopped = stopping && matches!(&status, Ok(s) if s.signal().is_some());
    match &status {
        Ok(status) if status.success() && !timed_out => {
            info!("hook {name}: run {pid} exited 0 after {elapsed:.3} s");
        }
        // Stopping sockhook stops its runs; that is not the command failing, and
        // counting it would leave the unit "failed" after every stop mid-run.
        Ok(status) if stopped => {
            info!(
                "hook {name}: run {pid} {} after {elapsed:.3} s, as sockhook stopped",
                describe(*status)
            );
        }
        Ok(status) => {
            warning!(
                "hook {name}: run {pid} {} after {elapsed:.3} s",
                describe(*status)
            );
        }
        Err(e) => {
            error!("hook {name}: unable to wait for run {pid}: {e}");
        }
    }
    Outcome::Ran {
        pid,
        status: status.ok(),
        timed_out,
        stopped,
        elapsed: started.elapsed(),
    }
}

/// Starts the command; returns the read ends of its stdout and stderr pipes, and the child.
fn spawn(
    job: &Job,
    cgroup: Option<&RunCgroup>,
) -> io::Result<(PipeReader, PipeReader, std::process::Child)> {
    let (stdout, stdout_writer) = io::pipe()?;
    let (stderr, stderr_writer) = io::pipe()?;
    let stdin = match job.body.reader()? {
        Some(body) => Stdio::from(body),
        None => Stdio::null(),
    };
    let mut command = Command::new(&job.hook.command[0]);
    command
        .args(&job.hook.command[1..])
        .env_clear()
        .envs(
            job.fields
                .iter()
                .map(|(name, value)| (name, OsStr::from_bytes(value))),
        )
        .env("PATH", PATH)
        .envs(ENV_NAMES.iter().zip(&job.env))
        .envs(job.replay.then_some(("SOCKHOOK_REPLAY", "1")))
        .current_dir("/")
        .stdin(stdin)
        .stdout(stdout_writer)
        .stderr(stderr_writer);
    new_session_on_exec(&mut command);
    unblock_signals_on_exec(&mut command);
    limit_tasks_on_exec(&mut command, job.hook.tasks_max);
    if let Some(cgroup) = cgroup {
        cgroup.limit_tasks(job.hook.tasks_max);
        cgroup.enter_on_exec(&mut command);
    }
    let child = command.spawn()?;
    // `command` holds the pipes' write ends; dropping it lets the readers see EOF.
    drop(command);
    Ok((stdout, stderr, child))
}

/// Whether SIGTERM or SIGINT has been sent to sockhook and not yet read
/// from its signalfd (both are blocked in every thread, so they wait there).
#[allow(unsafe_code)]
fn stop_signal_pending() -> bool {
    use nix::libc;
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigpending writes a whole sigset_t to the pointer, which points
    // to space for one; it is only read below when the call succeeded.
    if unsafe { libc::sigpending(set.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: sigpending returned 0, so it initialised the set.
    let set = unsafe { set.assume_init() };
    // SAFETY: sigismember only reads the initialised set.
    unsafe {
        libc::sigismember(&set, libc::SIGTERM) == 1 || libc::sigismember(&set, libc::SIGINT) == 1
    }
}

/// Starts the command in a session of its own (so also a process group of
/// its own, which a timeout signals as a whole). A session is also what the
/// kernel's autogroup scheduling shares CPU time by: a run that forks a
/// thousand busy processes then gets no more of the CPU than sockhook does.
#[allow(unsafe_code)]
fn new_session_on_exec(command: &mut Command) {
    // SAFETY: setsid is async-signal-safe, and the closure touches no memory
    // of the parent.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
}

/// Gives the command an empty signal mask. sockhook blocks SIGTERM and SIGINT
/// in all its threads to read them from a signalfd, and a child inherits the
/// mask of the thread that forks it (std does not reset it: rust-lang/rust#101077);
/// a command with SIGTERM blocked would survive its timeout and `systemctl stop`.
#[allow(unsafe_code)]
fn unblock_signals_on_exec(command: &mut Command) {
    // SAFETY: sigprocmask is async-signal-safe, and the closure touches no
    // memory of the parent: it is all that runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let empty = nix::sys::signal::SigSet::empty();
            nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&empty),
                None,
            )
            .map_err(io::Error::from)
        });
    }
}

/// Sets the most tasks the command may have (`RLIMIT_NPROC`) between fork
/// and exec. The kernel counts every process of the user, so this bounds a
/// fork bomb run as sockhook's user where no cgroup can (the run's cgroup
/// gets `pids.max` too when the pids controller is there); root, and so a
/// command under sudo, is not held to it.
#[allow(unsafe_code)]
fn limit_tasks_on_exec(command: &mut Command, tasks_max: u64) {
    // SAFETY: setrlimit is async-signal-safe, and the closure touches no
    // memory of the parent but a copied integer.
    unsafe {
        command.pre_exec(move || {
            let limit = nix::libc::rlimit {
                rlim_cur: tasks_max,
                rlim_max: tasks_max,
            };
            if nix::libc::setrlimit(nix::libc::RLIMIT_NPROC, &limit) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
}

/// Reads one of the command's outputs to its end, line by line: each line
/// goes to the run's watches, and to the log (prefixed with the hook's
/// name; stdout at info, stderr at warning) until the run's `budget` of
/// bytes is spent; the rest is counted in `dropped`, still read so that the
/// command is never blocked on a full pipe.
fn read_output(
    name: &str,
    output: PipeReader,
    out: Out,
    budget: &AtomicU64,
    dropped: &AtomicU64,
    watches: &Watches,
) {
    let level = match out {
        Out::Stdout => Level::Info,
        Out::Stderr => Level::Warning,
    };
    let mut input = BufReader::new(output);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut input)
            .take(Clean::OUTPUT_MAX as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                for watch in lock_watches(watches).iter_mut() {
                    watch.output(out, &line);
                }
                let n = n as u64;
                let left =
                    budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(n));
                if left.is_err() {
                    budget.store(0, Ordering::Relaxed);
                    dropped.fetch_add(n, Ordering::Relaxed);
                    continue;
                }
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                crate::log::line(level, format_args!("hook {name}: {}", Clean::output(text)));
            }
        }
    }
}

/// "exited 3", "killed by signal 9 (SIGKILL)".
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited {code}"),
        (None, Some(signal)) => {
            let name = Signal::try_from(signal).map_or("unknown", Signal::as_str);
            format!("killed by signal {signal} ({name})")
        }
        (None, None) => format!("ended with status {status:?}"),
    }
}

/// Stops a run that outlived its timeout: SIGTERM to its group, then SIGKILL.
/// In a cgroup, SIGKILL goes through `cgroup.kill`, which also reaches
/// processes sockhook's user may not signal.
fn stop_group(
    hook: &Hook,
    pid: u32,
    exit: &mpsc::Receiver<io::Result<ExitStatus>>,
    cgroup: Option<&RunCgroup>,
) -> io::Result<ExitStatus> {
    let (name, group) = (&hook.name, Pid::from_raw(pid as i32));
    warning!(
        "hook {name}: run {pid} timed out after {} s; sending SIGTERM to its process group",
        hook.timeout.as_secs()
    );
    let _ = killpg(group, Signal::SIGTERM);
    if let Ok(status) = exit.recv_timeout(KILL_GRACE) {
        return status;
    }
    warning!(
        "hook {name}: run {pid} still running {} s after SIGTERM; sending SIGKILL",
        KILL_GRACE.as_secs()
    );
    match cgroup.map(RunCgroup::kill) {
        Some(Ok(())) => {}
        _ => {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
    exit.recv()
        .unwrap_or_else(|_| Err(io::Error::other("the waiting thread ended")))
}
