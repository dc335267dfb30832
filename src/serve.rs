//! `sockhook serve`: the process's life — start-up, the loop that accepts
//! connections until sockhook has been idle long enough to exit, and the
//! exit. Each connection's request goes through [`crate::request`].

use std::io::{self, PipeReader, Read};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use sd_notify::NotifyState;

use crate::act::Runner;
use crate::cgroup::Cgroups;
use crate::config::{self, CREDENTIALS_DIRECTORY};
use crate::error::{EXIT_FAILED, EXIT_OK, Error};
use crate::idle::Activity;
use crate::listen::{self, Listener, Socket, Stream};
use crate::replay::Replay;
use crate::request::{self, Context};
use crate::{error, info};

/// Set by systemd to the service's `RuntimeDirectory=`.
pub const RUNTIME_DIRECTORY: &str = "RUNTIME_DIRECTORY";
/// Most connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// Idle time before exiting, when started by systemd.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Stack of a connection thread: parsing needs little, and threads are many.
const CONNECTION_STACK_BYTES: usize = 256 * 1024;

/// What `sockhook serve` was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Directory of hook files.
    pub hooks_dir: PathBuf,
    /// Server key file; `None` for the default.
    pub key: Option<PathBuf>,
    /// Address to bind when systemd passed no socket.
    pub listen: Option<String>,
    /// Idle time before exiting; `None`: 5 s under systemd, never with `--listen`.
    pub idle_timeout: Option<Duration>,
    /// Time a client has for its whole request.
    pub request_timeout: Duration,
}

/// Serves until idle, or until SIGTERM/SIGINT; returns the exit code.
pub fn serve(options: &Options) -> Result<u8, Error> {
    // Type=notify: a service that exits before READY=1 fails with Result=protocol.
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("starting")]);
    let passed = listen::from_systemd()?;
    listen::close_inherited_on_exec()?;
    let idle_timeout = options
        .idle_timeout
        .or(passed.is_some().then_some(DEFAULT_IDLE_TIMEOUT));
    let socket = match (passed, &options.listen) {
        (Some(socket), _) => socket,
        (None, Some(addr)) => Socket::Listeners(vec![listen::bind(addr)?]),
        (None, None) => {
            return Err(Error::Usage(
                "no socket: start sockhook from a systemd .socket unit, or pass --listen IP:PORT"
                    .into(),
            ));
        }
    };
    let signals = stop_signals()?;
    let credentials = std::env::var_os(CREDENTIALS_DIRECTORY).map(PathBuf::from);
    let hooks = config::load(&options.hooks_dir, credentials.as_deref());
    for problem in hooks.problems() {
        error!("{problem}; this hook answers 500");
    }
    let key_path = config::key_path(options.key.as_deref(), credentials.as_deref());
    let key = config::load_key(&key_path);
    if let (Err(problem), true) = (&key, hooks.need_key()) {
        error!("{problem}; token hooks answer 500");
    }
    let (activity, wake) = Activity::new().map_err(|e| Error::system("create a pipe", e))?;
    let runtime = std::env::var_os(RUNTIME_DIRECTORY).map(PathBuf::from);
    let cgroups = Cgroups::detect();
    match &cgroups {
        Some(c) => info!("each command run gets a cgroup below {}", c.describe()),
        None if std::env::var_os("INVOCATION_ID").is_some() => crate::warning!(
            "no delegated cgroup (Delegate=yes): a timeout cannot stop root processes under sudo"
        ),
        None => {}
    }
    let context = Arc::new(Context {
        replay: Replay::new(runtime.as_deref()),
        runner: Runner::new(Arc::clone(&activity), cgroups),
        hooks,
        key,
        request_timeout: options.request_timeout,
    });
    let served: Vec<String> = context
        .hooks
        .iter()
        .map(|(name, _)| name.to_owned())
        .collect();
    let mut reason = "connection served";
    match socket {
        Socket::Connection(stream) => {
            info!("serving one connection for hooks: {}", served.join(" "));
            let busy = activity.connection();
            request::serve(stream, &context);
            drop(busy);
        }
        Socket::Listeners(listeners) => {
            let on: Vec<String> = listeners.iter().map(Listener::describe).collect();
            let until = idle_timeout.map_or("stopped".into(), |t| {
                format!("idle for {} s", t.as_secs_f64())
            });
            info!(
                "listening on {} until {until}; hooks: {}",
                on.join(" "),
                served.join(" ")
            );
            let waiting = format!("waiting for requests on {}", on.join(" "));
            let _ = sd_notify::notify(&[NotifyState::Status(&waiting)]);
            reason = accept_loop(
                &listeners,
                &context,
                &activity,
                &wake,
                &signals,
                idle_timeout,
            )?;
        }
    }
    activity.wait_quiet();
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    let failures = context.runner.failures();
    if failures > 0 {
        info!("exiting ({reason}): {failures} run(s) failed");
        Ok(EXIT_FAILED)
    } else {
        info!("exiting ({reason})");
        Ok(EXIT_OK)
    }
}

/// Blocks SIGTERM and SIGINT in every thread and returns an fd that reports them.
///
/// Must run before any thread starts, so that all inherit the mask; commands
/// get an empty mask back (`act::unblock_signals_on_exec`).
fn stop_signals() -> Result<SignalFd, Error> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block()
        .map_err(|e| Error::system("block SIGTERM", e.into()))?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Error::system("create a signalfd", e.into()))
}

fn accept_loop(
    listeners: &[Listener],
    context: &Arc<Context>,
    activity: &Arc<Activity>,
    mut wake: &PipeReader,
    signals: &SignalFd,
    idle_timeout: Option<Duration>,
) -> Result<&'static str, Error> {
    for listener in listeners {
        listener
            .set_nonblocking()
            .map_err(|e| Error::system("make the listening socket non-blocking", e))?;
    }
    // Set when accept() failed for lack of resources; cleared when a connection or run ends.
    let mut paused = false;
    loop {
        // Idle means a poll found nothing: a connection already pending when the
        // limit is reached (or at start, with --idle-timeout 0) is still served.
        let idle_left = match (idle_timeout, activity.idle_for()) {
            (Some(limit), Some(idle)) => Some(limit.saturating_sub(idle)),
            _ => None,
        };
        let timeout = idle_left.map_or(PollTimeout::NONE, |left| {
            PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
        });
        let accepting = !paused && activity.connections() < MAX_CONNECTIONS;
        let mut fds = vec![
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        if accepting {
            fds.extend(
                listeners
                    .iter()
                    .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN)),
            );
        }
        match poll(&mut fds, timeout) {
            Ok(0) if idle_left.is_some_and(|left| left <= Duration::from_millis(1)) => {
                return Ok("idle");
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::system("poll the listening socket", e.into())),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[0] {
            let signal = signals
                .read_signal()
                .ok()
                .flatten()
                .and_then(|s| Signal::try_from(s.ssi_signo as i32).ok())
                .map_or("a stop signal", Signal::as_str);
            info!("received {signal}: no new connections; finishing the ones in progress");
            context.runner.stop();
            return Ok("stopped");
        }
        if ready[1] {
            let _ = wake.read(&mut [0; 64]);
            paused = false;
        }
        for (listener, _) in listeners
            .iter()
            .zip(&ready[2..])
            .filter(|(_, ready)| **ready)
        {
            paused |= accept_ready(listener, context, activity);
        }
    }
}

/// Accepts every pending connection (up to the limit); true if accepting must pause.
fn accept_ready(listener: &Listener, context: &Arc<Context>, activity: &Arc<Activity>) -> bool {
    while activity.connections() < MAX_CONNECTIONS {
        match listener.accept() {
            Ok(stream) => spawn_connection(stream, context, activity),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => {
                error!("unable to accept a connection: {e}; pausing until a connection ends");
                return true;
            }
        }
    }
    false
}

fn spawn_connection(stream: Stream, context: &Arc<Context>, activity: &Arc<Activity>) {
    let busy = activity.connection();
    let context = Arc::clone(context);
    let spawned = thread::Builder::new()
        .name("connection".into())
        .stack_size(CONNECTION_STACK_BYTES)
        .spawn(move || {
            request::serve(stream, &context);
            drop(busy);
        });
    if let Err(e) = spawned {
        error!("unable to start a thread for a connection: {e}");
    }
}
