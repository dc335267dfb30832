//! `sockhook serve`: a request's life, stage by stage, and the loop that
//! accepts connections until sockhook has been idle long enough to exit.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, PipeReader, Read, Seek, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use sd_notify::NotifyState;

use crate::act::{Job, Runner};
use crate::cgroup::Cgroups;
use crate::config::{self, CREDENTIALS_DIRECTORY, Hook, Hooks, Key};
use crate::error::{EXIT_FAILED, EXIT_OK, Error};
use crate::filter;
use crate::idle::Activity;
use crate::listen::{self, Listener, Socket, Stream};
use crate::log::{Clean, Last, Level};
use crate::read::{Framing, Head, Reader};
use crate::replay::Replay;
use crate::respond::{Connection, Response};
use crate::route::{hook_name, route};
use crate::verify::{self, Pending};
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

struct Context {
    hooks: Hooks,
    replay: Replay,
    key: Result<Key, String>,
    request_timeout: Duration,
    runner: Runner,
    activity: Arc<Activity>,
}

/// How a request ended, when it was valid and authenticated.
enum Outcome {
    /// Run the command.
    Run(Job),
    /// A filter said no: answered 200, nothing runs.
    Ignored(String),
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
    let key = config::load_key(&key_path).map_err(|e| e.to_string());
    if let (Err(why), true) = (&key, hooks.need_key()) {
        error!("{why}; token hooks answer 500");
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
        activity,
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
            let busy = context.activity.connection();
            handle(stream, &context);
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
            reason = accept_loop(&listeners, &context, &wake, &signals, idle_timeout)?;
        }
    }
    context.activity.wait_quiet();
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
        let idle_left = match (idle_timeout, context.activity.idle_for()) {
            (Some(limit), Some(idle)) => Some(limit.saturating_sub(idle)),
            _ => None,
        };
        let timeout = idle_left.map_or(PollTimeout::NONE, |left| {
            PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
        });
        let accepting = !paused && context.activity.connections() < MAX_CONNECTIONS;
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
            paused = accept_ready(listener, context);
        }
    }
}

/// Accepts every pending connection (up to the limit); true if accepting must pause.
fn accept_ready(listener: &Listener, context: &Arc<Context>) -> bool {
    while context.activity.connections() < MAX_CONNECTIONS {
        match listener.accept() {
            Ok(stream) => spawn_connection(stream, context),
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

fn spawn_connection(stream: Stream, context: &Arc<Context>) {
    let busy = context.activity.connection();
    let context = Arc::clone(context);
    let spawned = thread::Builder::new()
        .name("connection".into())
        .stack_size(CONNECTION_STACK_BYTES)
        .spawn(move || {
            handle(stream, &context);
            drop(busy);
        });
    if let Err(e) = spawned {
        error!("unable to start a thread for a connection: {e}");
    }
}

/// What is known of a request so far, for its log line.
#[derive(Default)]
struct Seen {
    request: Option<String>,
    hook: Option<String>,
}

/// Serves one connection: read, route, verify, respond, close, then act.
fn handle(stream: Stream, context: &Context) {
    let peer = stream.peer_addr();
    let peer_text = peer.map_or_else(|| "unix".to_owned(), |a| a.to_string());
    let mut connection = Connection::new(stream);
    let mut reader = Reader::new(Instant::now() + context.request_timeout);
    let mut seen = Seen::default();
    let outcome = exchange(&mut connection, &mut reader, context, peer, &mut seen);
    if seen.request.is_none()
        && let Some((method, target)) = reader.request_line()
    {
        // The head was refused after its first line arrived: log what was asked.
        let (path, query) = target.split_at(
            target
                .iter()
                .position(|&b| b == b'?')
                .unwrap_or(target.len()),
        );
        seen.request = Some(request_line(method, path, !query.is_empty()));
    }
    let (response, level, note) = match &outcome {
        Ok(Outcome::Run(_)) => (Response::accepted(), Level::Info, "accepted".to_owned()),
        Ok(Outcome::Ignored(why)) => (
            Response::ok(&format!("ignored: {why}")),
            Level::Info,
            format!("ignored: {why}"),
        ),
        Err(Error::Closed) if seen.request.is_none() => {
            info!("{peer_text}: closed without sending a request");
            return;
        }
        Err(e @ (Error::Closed | Error::Peer(_))) => {
            let request = seen.request.as_deref().unwrap_or("-");
            crate::warning!("{peer_text} {request}: no response: {e}");
            return;
        }
        Err(e) if e.status() >= 500 && e.status() != 501 => {
            (Response::refusal(e), Level::Error, e.to_string())
        }
        Err(e) => (Response::refusal(e), Level::Warning, e.to_string()),
    };
    let delivered = match connection.respond(&response) {
        Ok(()) => String::new(),
        Err(e) => format!(" (response not delivered: {e})"),
    };
    let request = seen.request.as_deref().unwrap_or("- -");
    let hook = seen
        .hook
        .map_or_else(String::new, |name| format!(" hook {name}"));
    let status = response.status;
    crate::log::line(
        level,
        format_args!("{peer_text} {request} {status}{hook}: {note}{delivered}"),
    );
    crate::log::status(
        Last::Request,
        format_args!("{request} {status}{hook}: {note}"),
    );
    connection.close();
    if let Ok(Outcome::Run(job)) = outcome {
        context.runner.trigger(job);
    }
}

fn exchange(
    connection: &mut Connection,
    reader: &mut Reader,
    context: &Context,
    peer: Option<SocketAddr>,
    seen: &mut Seen,
) -> Result<Outcome, Error> {
    let head = reader.read_head(connection.stream())?;
    seen.request = Some(request_line(
        head.method.as_bytes(),
        head.path.as_bytes(),
        head.query.is_some(),
    ));
    if let Some(name) = hook_name(&head.path).filter(|name| context.hooks.get(name).is_some()) {
        seen.hook = Some(name.to_owned());
    }
    let hook = route(&context.hooks, &head.path, &head.method)?;
    if let Framing::Length(len) = head.framing
        && len > hook.max_body
    {
        return Err(Error::BodyTooLarge {
            limit: hook.max_body,
        });
    }
    let mut pending =
        verify::before_body(&hook, &head, context.key.as_ref().map_err(String::as_str))?;
    if hook.filter.is_some() && !is_json(head.header("content-type")) {
        return Err(Error::UnsupportedMediaType);
    }
    if head.expect_continue && !reader.has_buffered() {
        connection.send_continue().map_err(Error::Peer)?;
    }
    let mut spool = Spool::new(head.framing)?;
    reader.read_body(
        connection.stream(),
        head.framing,
        hook.max_body,
        &mut |piece| {
            if let Pending::Body(mac) = &mut pending {
                mac.update(piece);
            }
            spool.write(piece)
        },
    )?;
    if let Pending::Body(mac) = pending {
        mac.finish(&hook.name, &context.replay)?;
    }
    if let Some(why) = ignored(&hook, &head) {
        return Ok(Outcome::Ignored(why));
    }
    if let Some(filter) = &hook.filter {
        let checked = match spool.rewound()? {
            Some(body) => filter::check(filter, body),
            None => filter::check(filter, &b""[..]),
        };
        if let Err(why) = checked {
            return Ok(Outcome::Ignored(why));
        }
    }
    Ok(Outcome::Run(Job {
        env: environment(&head, &hook, peer),
        stdin: spool.finish()?,
        ticket: context.runner.ticket(),
        hook,
    }))
}

/// Whether a `Content-Type` says JSON: `application/json` or `…/…+json`.
fn is_json(content_type: Option<&[u8]>) -> bool {
    let Some(value) = content_type.and_then(|v| std::str::from_utf8(v).ok()) else {
        return false;
    };
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// `METHOD PATH` for the log, with `?...` standing for a query's values.
fn request_line(method: &[u8], path: &[u8], has_query: bool) -> String {
    let query = if has_query { "?..." } else { "" };
    format!("{} {}{query}", Clean::peer(method), Clean::peer(path))
}

/// Why the request's event does not run the command, if it does not.
fn ignored(hook: &Hook, head: &Head) -> Option<String> {
    let events = hook.events.as_ref()?;
    let header = hook.scheme.event_header()?;
    match head.header(header) {
        Some(event) if events.iter().any(|e| e.as_bytes() == event) => None,
        Some(event) => Some(format!("event {} not in events", Clean::peer(event))),
        None => Some(format!("no {header} header, and events are filtered")),
    }
}

/// The command's environment besides `PATH`.
fn environment(
    head: &Head,
    hook: &Hook,
    peer: Option<SocketAddr>,
) -> Vec<(&'static str, OsString)> {
    let field = |name: Option<&str>| {
        OsString::from_vec(
            name.and_then(|n| head.header(n))
                .unwrap_or_default()
                .to_vec(),
        )
    };
    vec![
        ("SOCKHOOK_HOOK", hook.name.clone().into()),
        ("SOCKHOOK_METHOD", head.method.clone().into()),
        ("SOCKHOOK_PATH", head.path.clone().into()),
        (
            "SOCKHOOK_QUERY",
            head.query.clone().unwrap_or_default().into(),
        ),
        (
            "SOCKHOOK_REMOTE_ADDR",
            peer.map_or_else(String::new, |a| a.ip().to_string()).into(),
        ),
        ("SOCKHOOK_EVENT", field(hook.scheme.event_header())),
        ("SOCKHOOK_DELIVERY", field(hook.scheme.delivery_header())),
        ("SOCKHOOK_CONTENT_TYPE", field(Some("content-type"))),
    ]
}

/// The body, spooled to an anonymous memory file rather than held in the heap,
/// so that it becomes the command's stdin without a copy through a pipe.
struct Spool {
    file: Option<File>,
    len: u64,
}

impl Spool {
    fn new(framing: Framing) -> Result<Spool, Error> {
        let file = match framing {
            Framing::Empty => None,
            Framing::Length(_) | Framing::Chunked => Some(
                memfd_create("sockhook-body", MFdFlags::MFD_CLOEXEC)
                    .map(File::from)
                    .map_err(|e| Error::system("create a memory file for the body", e.into()))?,
            ),
        };
        Ok(Spool { file, len: 0 })
    }

    fn write(&mut self, piece: &[u8]) -> io::Result<()> {
        self.len += piece.len() as u64;
        match &mut self.file {
            Some(file) => file.write_all(piece),
            None => Ok(()),
        }
    }

    /// The body file rewound to its start, to read it; `None` if it is empty.
    fn rewound(&mut self) -> Result<Option<&mut File>, Error> {
        match &mut self.file {
            Some(file) if self.len > 0 => {
                file.rewind()
                    .map_err(|e| Error::system("rewind the body", e))?;
                Ok(Some(file))
            }
            _ => Ok(None),
        }
    }

    /// The body rewound to its start, or `None` if it is empty.
    fn finish(self) -> Result<Option<File>, Error> {
        match self.file {
            Some(mut file) if self.len > 0 => {
                file.rewind()
                    .map_err(|e| Error::system("rewind the body", e))?;
                Ok(Some(file))
            }
            _ => Ok(None),
        }
    }
}
