//! Stage 2: the event loop. One thread owns every socket: it accepts
//! connections (at most so many per source and in all), reads each
//! request's head and body without blocking and under deadlines, refuses at
//! once what it can, and hands complete requests to a worker for the
//! verdict; then it writes the answer, half-closes, drains and closes — and
//! only then starts the job.
//!
//! Why a loop and not a thread per connection: a connection waiting for
//! its head or its body costs a few hundred bytes here, so thousands of slow
//! or idle clients neither exhaust a fixed number of slots nor make a valid
//! sender wait behind them. Threads are for work that may block or take CPU
//! (the verdict, the commands), never for waiting on a client.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, PipeReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::act::{Dropped, Job, Out, Outcome, Watch};
use crate::config::{Answer, Respond};
use crate::error::{Error, Lost, Refusal};
use crate::idle::Activity;
use crate::limits::{Connections, Limits, Source};
use crate::listen::{Endpoint, Stream};
use crate::log::{self, Last, Level};
use crate::proxy::{self, Trusted};
use crate::read::{Head, HeadReader};
use crate::relay::{self, Closed, Subscriber, Wants};
use crate::request::{self, Accepted, Admitted, Config, Shared};
use crate::respond::{
    CUT_MARKER, Closing, DRAIN_TIMEOUT, Ended as RunEnded, OUTPUT_MAX, REFUSAL_DRAIN_TIMEOUT,
    RETRY_AFTER_SECS, Response, RunResult, Step, WRITE_TIMEOUT, chunk, last_chunk,
};
use crate::tls::{self, Transport};
use crate::{info, warning};

/// Time a client has for its request head, unless `--head-timeout` says otherwise.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Most threads deciding requests at once; more requests wait for one.
pub const MAX_WORKERS: usize = 8;
/// Stack of a worker thread: the verdict and the payload filter need little.
const WORKER_STACK_BYTES: usize = 256 * 1024;
/// Most bytes read from one connection before others get their turn.
const READ_TURN_BYTES: usize = 256 * 1024;
/// Size of the buffer every read goes through.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Most connections accepted from one listener before others get their turn.
const ACCEPT_TURN: usize = 64;
/// How often refusals for too many connections are summed up in the log.
const REFUSED_REPORT_EVERY: Duration = Duration::from_secs(10);

/// How the loop is asked to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time a client has for its request head.
    pub head_timeout: Duration,
    /// Time a client has for its whole request, head and body.
    pub request_timeout: Duration,
    /// Idle time before the loop ends; `None` runs until stopped.
    pub idle_timeout: Option<Duration>,
    /// Past this age the loop ends at the first moment nothing is going on,
    /// so that the next activation reads the credentials afresh.
    pub max_lifetime: Option<Duration>,
    /// Connections and bytes a client may take.
    pub limits: Limits,
    /// Peers that may say who the client is.
    pub trusted: Vec<Trusted>,
    /// The certificate and key for the HTTPS sockets.
    pub tls: tls::Files,
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// No connection and no run for the idle timeout.
    Idle,
    /// Older than the maximum lifetime, and nothing going on.
    Expired,
    /// A stop signal, and everything in progress has finished.
    Stopped,
    /// The one connection (`Accept=yes`) is served and its run finished.
    Served,
}

const SIGNALS: u64 = 0;
const WAKE: u64 = 1;
/// Listener `i` is `LISTENERS + i`; connections get ids above `FIRST_CONNECTION`.
const LISTENERS: u64 = 2;
const FIRST_CONNECTION: u64 = 1 << 32;

/// One client connection and where its request is.
struct Conn {
    transport: Transport,
    peer: Option<SocketAddr>,
    /// The client's address: the peer's, or the one a trusted proxy forwards.
    client: Option<IpAddr>,
    /// The peer is a trusted proxy, exempt from the per-source limit.
    proxy: bool,
    source: Source,
    accepted: Instant,
    deadline: Instant,
    /// The request line and hook name for the log, once the head is in.
    line: Option<String>,
    hook: Option<String>,
    /// Bytes to write before reading on (`100 Continue`).
    out: Vec<u8>,
    phase: Phase,
    /// What epoll watches for it now.
    watching: Option<EpollFlags>,
}

enum Phase {
    /// Reading the head.
    Head(HeadReader),
    /// Reading the body.
    Body(Box<(Head, Admitted)>),
    /// A worker decides; the socket is not watched meanwhile.
    Deciding,
    /// Waiting for the run that covers the request (`respond = "after-run"`,
    /// or `"stream"` until the run starts); the socket is not watched.
    Waiting(Box<Waiting>),
    /// Writing a run's stdout as it comes (`respond = "stream"`).
    Streaming(Box<Streaming>),
    /// Answering, then draining; the job starts when the socket is closed.
    Closing(Box<Answering>),
    /// A relay subscriber, upgraded to a websocket.
    Subscribed(Box<Subscriber>),
}

/// A client waiting for a run's outcome.
struct Waiting {
    answer: Answer,
    hook: String,
}

/// A run's stdout on its way to the client, chunk by chunk.
struct Streaming {
    hook: String,
    /// Chunks not yet written. INVARIANT: at most `MAX_STREAM_PENDING` bytes.
    out: Vec<u8>,
    /// Bytes of stdout streamed so far.
    streamed: u64,
}

/// What the watch of an answered-after-the-run job tells the loop.
enum RunEvent {
    /// The run started (streamed answers begin now).
    Started { id: u64, pid: u32 },
    /// A line of its stdout (streamed answers).
    Line { id: u64, line: Vec<u8> },
    /// How it ended, and what it printed (capped).
    Ended { id: u64, result: RunResult },
    /// No run will cover the request.
    Dropped { id: u64, why: Dropped },
}

/// Most bytes of a run's stdout that a streamed answer carries.
pub const MAX_STREAMED_BYTES: u64 = 1024 * 1024;
/// Most bytes of a streamed answer waiting for a client that does not read;
/// past it the client is dropped (the run goes on).
const MAX_STREAM_PENDING: usize = 256 * 1024;

/// Watches the run that covers one connection's request, for its answer.
struct Waiter {
    id: u64,
    stream: bool,
    include_stderr: bool,
    events: Sender<RunEvent>,
    activity: Arc<Activity>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Bytes of stdout sent on while streaming.
    streamed: u64,
}

impl Waiter {
    fn send(&self, event: RunEvent) {
        if self.events.send(event).is_ok() {
            self.activity.wake();
        }
    }
}

/// Appends `line` to `kept`, cutting at `OUTPUT_MAX` with the marker.
fn keep(kept: &mut Vec<u8>, line: &[u8]) {
    if kept.len() > OUTPUT_MAX {
        return;
    }
    let room = OUTPUT_MAX - kept.len();
    if line.len() <= room {
        kept.extend_from_slice(line);
    } else {
        kept.extend_from_slice(&line[..room]);
        kept.extend_from_slice(CUT_MARKER);
    }
}

impl Watch for Waiter {
    fn started(&mut self, pid: u32) {
        if self.stream {
            self.send(RunEvent::Started { id: self.id, pid });
        }
    }

    fn output(&mut self, out: Out, line: &[u8]) {
        if out == Out::Stderr && !self.include_stderr {
            return;
        }
        if !self.stream {
            let kept = match out {
                Out::Stdout => &mut self.stdout,
                Out::Stderr => &mut self.stderr,
            };
            return keep(kept, line);
        }
        if self.streamed >= MAX_STREAMED_BYTES {
            return;
        }
        let room = (MAX_STREAMED_BYTES - self.streamed) as usize;
        let mut line = line[..line.len().min(room)].to_vec();
        self.streamed += line.len() as u64;
        if self.streamed >= MAX_STREAMED_BYTES {
            line.extend_from_slice(
                format!("\n[sockhook: output cut at {MAX_STREAMED_BYTES} bytes]\n").as_bytes(),
            );
        }
        self.send(RunEvent::Line { id: self.id, line });
    }

    fn ended(self: Box<Self>, outcome: &Outcome) {
        let ended = match outcome {
            Outcome::NotStarted(why) => RunEnded::NotStarted(why.clone()),
            Outcome::Ran {
                timed_out: true, ..
            } => RunEnded::TimedOut,
            Outcome::Ran { stopped: true, .. } => RunEnded::Stopped,
            Outcome::Ran {
                status: Some(status),
                ..
            } => match (status.code(), status.signal()) {
                (Some(code), _) => RunEnded::Exited(code),
                (None, Some(signal)) => RunEnded::Killed(signal),
                (None, None) => RunEnded::Lost,
            },
            Outcome::Ran { status: None, .. } => RunEnded::Lost,
        };
        let (pid, elapsed) = match outcome {
            Outcome::Ran { pid, elapsed, .. } => (Some(*pid), Some(*elapsed)),
            Outcome::NotStarted(_) => (None, None),
        };
        let result = RunResult {
            pid,
            elapsed,
            ended,
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
        };
        self.send(RunEvent::Ended {
            id: self.id,
            result,
        });
    }

    fn dropped(self: Box<Self>, why: Dropped) {
        self.send(RunEvent::Dropped { id: self.id, why });
    }
}

/// An answer on its way out, what to log once it is, and the job to start
/// once the connection is closed.
struct Answering {
    closing: Closing,
    log: Option<(Level, u16, String)>,
    job: Option<Job>,
}

/// A complete request on its way to a worker.
struct Task {
    id: u64,
    head: Head,
    client: Option<IpAddr>,
    admitted: Admitted,
}

/// A worker's verdict on its way back.
struct Decided {
    id: u64,
    outcome: Result<Accepted, Refusal>,
}

/// Threads that decide requests, started as they are needed.
struct Workers {
    tasks: Sender<Task>,
    queue: Arc<Mutex<Receiver<Task>>>,
    decided: Sender<Decided>,
    idle: Arc<Mutex<usize>>,
    started: usize,
    shared: Arc<Shared>,
    activity: Arc<Activity>,
}

impl Workers {
    fn new(shared: Arc<Shared>, activity: Arc<Activity>) -> (Workers, Receiver<Decided>) {
        let (tasks, queue) = mpsc::channel();
        let (decided, results) = mpsc::channel();
        let workers = Workers {
            tasks,
            queue: Arc::new(Mutex::new(queue)),
            decided,
            idle: Arc::new(Mutex::new(0)),
            started: 0,
            shared,
            activity,
        };
        (workers, results)
    }

    /// Queues `task`, starting a worker if none is free; false if none runs
    /// and none can be started.
    fn submit(&mut self, task: Task) -> bool {
        let free = *self.idle.lock().unwrap_or_else(|e| e.into_inner()) > 0;
        if !free && self.started < MAX_WORKERS {
            match self.start() {
                Ok(()) => self.started += 1,
                Err(e) if self.started == 0 => {
                    warning!("unable to start a thread to decide requests: {e}");
                    return false;
                }
                Err(_) => {}
            }
        }
        self.tasks.send(task).is_ok()
    }

    fn start(&self) -> io::Result<()> {
        let queue = Arc::clone(&self.queue);
        let decided = self.decided.clone();
        let idle = Arc::clone(&self.idle);
        let shared = Arc::clone(&self.shared);
        let activity = Arc::clone(&self.activity);
        thread::Builder::new()
            .name("decide".into())
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || {
                loop {
                    *idle.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                    let task = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    *idle.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                    let Ok(task) = task else { return };
                    let outcome = request::decide(&shared, &task.head, task.client, task.admitted);
                    if decided
                        .send(Decided {
                            id: task.id,
                            outcome,
                        })
                        .is_err()
                    {
                        return;
                    }
                    activity.wake();
                }
            })
            .map(drop)
    }
}

/// The loop's state.
struct Reactor<'a> {
    epoll: Epoll,
    listeners: &'a [Endpoint],
    /// The HTTPS configuration, loaded at the first TLS connection; `Err`
    /// once loading failed (logged once).
    tls: Option<Result<Arc<rustls::ServerConfig>, ()>>,
    accepting: bool,
    /// Accepting failed for want of resources; retried when a connection closes.
    paused: bool,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    deadlines: BTreeSet<(Instant, u64)>,
    connections: Connections,
    settings: Settings,
    config: Config,
    shared: &'a Arc<Shared>,
    workers: Workers,
    decided: Receiver<Decided>,
    /// What the watches of answered-after-the-run jobs tell.
    run_events: Receiver<RunEvent>,
    run_events_tx: Sender<RunEvent>,
    activity: Arc<Activity>,
    /// What each read of a head or body goes through.
    scratch: Box<[u8]>,
    /// What drained bytes go to; never lent out, unlike `scratch`.
    discard: Box<[u8]>,
    /// Connections refused for the per-source limit since the last report.
    refused: HashMap<Source, u64>,
    refused_reported: Option<Instant>,
    last_close: Instant,
    /// The connections in `Phase::Subscribed`.
    subscribers: BTreeSet<u64>,
}

/// Serves `listeners` (or the one `connection`) until idle, stopped, or served.
#[allow(clippy::too_many_arguments)]
pub fn run(
    listeners: &[Endpoint],
    connection: Option<Stream>,
    config: Config,
    shared: &Arc<Shared>,
    settings: Settings,
    signals: &SignalFd,
    activity: &Arc<Activity>,
    wake: &PipeReader,
) -> Result<Ended, Error> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
        .map_err(|e| Error::system("create an epoll instance", e.into()))?;
    let watch = |fd: std::os::fd::BorrowedFd<'_>, data: u64, what: &str| {
        epoll
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, data))
            .map_err(|e| Error::system(format!("watch {what}"), e.into()))
    };
    watch(signals.as_fd(), SIGNALS, "the signalfd")?;
    watch(wake.as_fd(), WAKE, "the wake-up pipe")?;
    for (i, endpoint) in listeners.iter().enumerate() {
        endpoint
            .listener
            .set_nonblocking()
            .map_err(|e| Error::system("make the listening socket non-blocking", e))?;
        watch(
            endpoint.listener.as_fd(),
            LISTENERS + i as u64,
            "the listening socket",
        )?;
    }
    let (workers, decided) = Workers::new(Arc::clone(shared), Arc::clone(activity));
    let (run_events_tx, run_events) = mpsc::channel();
    let mut reactor = Reactor {
        epoll,
        listeners,
        tls: None,
        accepting: true,
        paused: false,
        conns: HashMap::new(),
        next_id: FIRST_CONNECTION,
        deadlines: BTreeSet::new(),
        connections: Connections::default(),
        settings,
        config,
        shared,
        workers,
        decided,
        run_events,
        run_events_tx,
        activity: Arc::clone(activity),
        scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
        discard: vec![0; SCRATCH_BYTES].into_boxed_slice(),
        refused: HashMap::new(),
        refused_reported: None,
        last_close: Instant::now(),
        subscribers: BTreeSet::new(),
    };
    let one = connection.is_some();
    if let Some(stream) = connection {
        reactor.admit(stream, false);
    }
    let mut stopping = false;
    let mut events = vec![EpollEvent::empty(); 256];
    let started = Instant::now();
    loop {
        let now = Instant::now();
        let expires_in = reactor
            .settings
            .max_lifetime
            .map(|max| max.saturating_sub(started.elapsed()));
        let expired = expires_in.is_some_and(|left| left.is_zero());
        let limit = match reactor.settings.idle_timeout {
            Some(_) if expired => Some(Duration::ZERO),
            limit => limit,
        };
        let idle_left = match (limit, one || stopping) {
            (Some(limit), false) if reactor.conns.is_empty() => activity.idle_for().map(|idle| {
                let left = limit.saturating_sub(idle.min(reactor.last_close.elapsed()));
                expires_in.map_or(left, |e| left.min(e))
            }),
            _ => None,
        };
        let next = reactor
            .deadlines
            .first()
            .map(|(at, _)| at.saturating_duration_since(now));
        let wait = match (idle_left, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = wait.map_or(EpollTimeout::NONE, |w| {
            // Round up, so that a deadline is never polled for just before it.
            let ms = w.as_nanos().div_ceil(1_000_000);
            EpollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(EpollTimeout::MAX)
        });
        let n = match reactor.epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(Error::system("wait for events", e.into())),
        };
        if n == 0 && idle_left.is_some_and(|left| left <= Duration::from_millis(1)) {
            // Idle means a wait found nothing: a connection pending at the
            // limit (or at start, with --idle-timeout 0) is still served.
            let aged = reactor
                .settings
                .max_lifetime
                .is_some_and(|max| started.elapsed() >= max);
            return Ok(if aged { Ended::Expired } else { Ended::Idle });
        }
        for event in &events[..n] {
            match event.data() {
                SIGNALS => {
                    let signal = signals
                        .read_signal()
                        .ok()
                        .flatten()
                        .and_then(|s| Signal::try_from(s.ssi_signo as i32).ok())
                        .map_or("a stop signal", Signal::as_str);
                    if !stopping {
                        // First: a run that dies of the same signal meanwhile
                        // must find the runner stopping (see act::run_once).
                        shared.runner.stop();
                        info!(
                            "received {signal}: no new connections; finishing the ones in progress"
                        );
                        stopping = true;
                        reactor.stop_accepting();
                        reactor.close_subscribers(CloseCode::Away, "the relay is stopping");
                    }
                }
                WAKE => {
                    let _ = (&*wake).read(&mut [0; 64]);
                    reactor.resume_if_paused();
                }
                id if id < FIRST_CONNECTION => {
                    if reactor.accepting {
                        reactor.accept((id - LISTENERS) as usize);
                    }
                }
                id => reactor.on_event(id, event.events()),
            }
        }
        while let Ok(decided) = reactor.decided.try_recv() {
            reactor.on_decided(decided);
        }
        while let Ok(event) = reactor.run_events.try_recv() {
            reactor.on_run_event(event);
        }
        reactor.fan_out();
        reactor.expire();
        reactor.report_refused(false);
        if (stopping || one) && reactor.conns.is_empty() && activity.runs() == 0 {
            reactor.report_refused(true);
            return Ok(if one { Ended::Served } else { Ended::Stopped });
        }
    }
}

impl Reactor<'_> {
    fn stop_accepting(&mut self) {
        for endpoint in self.listeners {
            let _ = self.epoll.delete(endpoint.listener.as_fd());
        }
        self.accepting = false;
    }

    /// Accepts again after a failure for want of resources.
    fn resume_if_paused(&mut self) {
        if !self.paused {
            return;
        }
        self.paused = false;
        for (i, endpoint) in self.listeners.iter().enumerate() {
            let event = EpollEvent::new(EpollFlags::EPOLLIN, LISTENERS + i as u64);
            let _ = self.epoll.add(endpoint.listener.as_fd(), event);
        }
        self.accepting = true;
    }

    /// Accepts what is pending on listener `i`, a turn's worth.
    fn accept(&mut self, i: usize) {
        for _ in 0..ACCEPT_TURN {
            let endpoint = &self.listeners[i];
            match endpoint.listener.accept() {
                Ok(stream) => self.admit(stream, endpoint.tls),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    crate::error!(
                        "unable to accept a connection: {e}; pausing until a connection or run ends"
                    );
                    self.stop_accepting();
                    self.paused = true;
                    return;
                }
            }
        }
    }

    /// Takes a new connection in, if its source and the whole have room.
    fn admit(&mut self, stream: Stream, tls: bool) {
        let peer = stream.peer_addr();
        let source = Source::of(peer);
        let limits = self.settings.limits;
        // A trusted proxy speaks for many clients: the limit is on the whole.
        let proxy = proxy::is_trusted(&self.settings.trusted, peer);
        let per_source = if proxy {
            limits.max_connections
        } else {
            limits.connections_per_source
        };
        if !self.connections.admit(source, per_source) {
            *self.refused.entry(source).or_default() += 1;
            if self.refused_reported.is_none() {
                self.report_refused(true);
            }
            // Best effort, unread input or not: this client holds too much already.
            // A TLS client would read plain text as a corrupt record: closed unanswered.
            if !tls {
                let mut stream = stream;
                let _ = stream.set_nonblocking();
                let _ = stream.write(
                    &Response::refusal(&Refusal::Busy("too many connections from your address"))
                        .to_bytes(SystemTime::now()),
                );
            }
            return;
        }
        if self.connections.total() > limits.max_connections {
            self.evict();
        }
        if let Err(e) = stream.set_nonblocking() {
            warning!("unable to make a connection non-blocking: {e}");
            self.connections.release(source);
            return;
        }
        let transport = match tls {
            false => Transport::Plain(stream),
            true => match self
                .tls_config()
                .map(|config| Transport::tls(stream, config))
            {
                Some(Ok(transport)) => transport,
                Some(Err(e)) => {
                    warning!("{}: unable to start TLS: {e}", describe(peer));
                    self.connections.release(source);
                    return;
                }
                // No usable certificate (logged once): closed unanswered,
                // as nothing can be said to a TLS client without one.
                None => {
                    self.connections.release(source);
                    return;
                }
            },
        };
        let id = self.next_id;
        self.next_id += 1;
        let now = Instant::now();
        let conn = Conn {
            transport,
            peer,
            client: peer.map(|p| p.ip()),
            proxy,
            source,
            accepted: now,
            deadline: now
                + self
                    .settings
                    .head_timeout
                    .min(self.settings.request_timeout),
            line: None,
            hook: None,
            out: Vec::new(),
            phase: Phase::Head(HeadReader::new()),
            watching: None,
        };
        self.deadlines.insert((conn.deadline, id));
        self.conns.insert(id, conn);
        self.watch(id, Some(EpollFlags::EPOLLIN));
    }

    /// The HTTPS configuration, loaded at the first TLS connection of the
    /// activation; `None` (logged the first time) when it cannot be.
    fn tls_config(&mut self) -> Option<Arc<rustls::ServerConfig>> {
        let files = &self.settings.tls;
        let loaded = self.tls.get_or_insert_with(|| match tls::load(files) {
            Ok(loaded) => {
                info!(
                    "HTTPS: certificate chain of {} certificate(s) from {}",
                    loaded.chain.len(),
                    files.cert.display()
                );
                Ok(loaded.config)
            }
            Err(problem) => {
                crate::error!(
                    "{problem}; HTTPS connections are closed unanswered until it is fixed (plain HTTP is unaffected)"
                );
                Err(())
            }
        });
        loaded.as_ref().ok().cloned()
    }

    /// Makes room when every slot is taken: the oldest connection still
    /// sending its head, from the source that holds the most, goes.
    fn evict(&mut self) {
        let Some((source, _)) = self.connections.busiest() else {
            return;
        };
        let oldest = self
            .conns
            .iter()
            .filter(|(_, c)| c.source == source && matches!(c.phase, Phase::Head(_)))
            .min_by_key(|(_, c)| c.accepted)
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.close(id);
        }
    }

    /// Logs the connections refused for the per-source limit: at once for
    /// the first, then summed up every few seconds.
    fn report_refused(&mut self, now: bool) {
        let due = self
            .refused_reported
            .is_none_or(|at| at.elapsed() >= REFUSED_REPORT_EVERY);
        if self.refused.is_empty() || !(now || due) {
            return;
        }
        let limit = self.settings.limits.connections_per_source;
        for (source, count) in self.refused.drain() {
            warning!(
                "{source}: refused {count} connection(s): over the limit of {limit} at once per source (503)"
            );
        }
        self.refused_reported = Some(Instant::now());
    }

    /// Sets what epoll watches for connection `id`.
    fn watch(&mut self, id: u64, flags: Option<EpollFlags>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.watching == flags {
            return;
        }
        let fd = conn.transport.as_fd();
        let done = match (conn.watching, flags) {
            (None, Some(f)) => self.epoll.add(fd, EpollEvent::new(f, id)),
            (Some(_), Some(f)) => self.epoll.modify(fd, &mut EpollEvent::new(f, id)),
            (Some(_), None) => self.epoll.delete(fd),
            (None, None) => Ok(()),
        };
        if let Err(e) = done {
            warning!("unable to watch a connection: {e}");
        }
        conn.watching = flags;
    }

    fn set_deadline(&mut self, id: u64, at: Instant) {
        if let Some(conn) = self.conns.get_mut(&id) {
            self.deadlines.remove(&(conn.deadline, id));
            conn.deadline = at;
            self.deadlines.insert((at, id));
        }
    }

    fn on_event(&mut self, id: u64, flags: EpollFlags) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let writable = flags.contains(EpollFlags::EPOLLOUT);
        let trouble = flags.intersects(EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP);
        match &conn.phase {
            Phase::Head(_) | Phase::Body(_) => {
                if !conn.out.is_empty() && (writable || trouble) {
                    self.flush_out(id);
                }
                self.read(id);
            }
            Phase::Closing(answering) if !answering.closing.is_written() => self.closing(id, false),
            Phase::Closing(_) => self.closing(id, true),
            Phase::Streaming(_) => self.stream(id),
            Phase::Subscribed(_) => {
                if flags.intersects(EpollFlags::EPOLLIN) || trouble {
                    self.sub_read(id);
                }
                self.sub_write(id);
            }
            Phase::Deciding | Phase::Waiting(_) => {}
        }
    }

    /// Writes what waits to go while the request is read: `100 Continue`,
    /// and the TLS handshake's records.
    fn flush_out(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let written = match conn.out.is_empty() {
            true => Ok(0),
            false => conn.transport.write(&conn.out),
        };
        match written.and_then(|n| conn.transport.flush_pending().map(|()| n)) {
            Ok(n) => {
                conn.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return self.lose(id, Lost::Io(e)),
        }
        self.watch_reading(id);
    }

    /// Watches a connection whose request is being read: for input, and for
    /// writability while anything waits to go out.
    fn watch_reading(&mut self, id: u64) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let flags = if conn.out.is_empty() && !conn.transport.wants_write() {
            EpollFlags::EPOLLIN
        } else {
            EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT
        };
        self.watch(id, Some(flags));
    }

    /// Reads what connection `id` sent, a turn's worth, into its head or body.
    fn read(&mut self, id: u64) {
        let mut taken = 0;
        while taken < READ_TURN_BYTES {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            if !matches!(conn.phase, Phase::Head(_) | Phase::Body(_)) {
                return;
            }
            let n = match conn.transport.read(&mut self.scratch) {
                Ok(0) => return self.lose(id, Lost::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if conn.transport.is_tls() {
                        self.watch_reading(id);
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.lose(id, Lost::Io(e)),
            };
            taken += n;
            // Lent out while the bytes are fed on, which needs all of `self`.
            let scratch = std::mem::take(&mut self.scratch);
            self.received(id, &scratch[..n]);
            self.scratch = scratch;
        }
    }

    /// Feeds bytes to connection `id`'s head or body.
    fn received(&mut self, id: u64, bytes: &[u8]) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match &mut conn.phase {
            Phase::Head(reader) => match reader.push(bytes) {
                Ok(None) => {}
                Ok(Some((head, rest))) => self.on_head(id, head, rest),
                Err(refusal) => {
                    let line = reader
                        .request_line()
                        .map(|(method, target)| request::request_line(method, target));
                    conn.line = line;
                    self.refuse(id, refusal, REFUSAL_DRAIN_TIMEOUT);
                }
            },
            Phase::Body(body) => match body.1.push(bytes) {
                Ok(_) if body.1.is_complete() => self.decide(id),
                Ok(_) => {}
                Err(refusal) => self.refuse(id, refusal, REFUSAL_DRAIN_TIMEOUT),
            },
            Phase::Deciding
            | Phase::Waiting(_)
            | Phase::Streaming(_)
            | Phase::Closing(_)
            | Phase::Subscribed(_) => {}
        }
    }

    /// The head is in: the stages that need no body, then the body's start.
    fn on_head(&mut self, id: u64, head: Head, rest: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.line = Some(request::head_line(&head));
        if conn.proxy {
            conn.client = proxy::client(&self.settings.trusted, conn.peer, &head);
        }
        // Limits go by the client, also when a trusted proxy forwards for it.
        let source = match conn.client {
            Some(ip) => Source::of(Some(SocketAddr::new(ip, 0))),
            None => conn.source,
        };
        let conn_client = conn.client;
        self.config.refresh(&head.path);
        if head.path.starts_with(relay::SUB_ROOT) {
            return self.subscribe(id, head, rest);
        }
        let (name, admitted) = request::admit(
            &self.config,
            self.shared,
            &head,
            conn_client,
            source,
            !rest.is_empty(),
        );
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.hook = name;
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(refusal) => return self.refuse(id, refusal, REFUSAL_DRAIN_TIMEOUT),
        };
        if admitted.send_continue {
            conn.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let complete = admitted.is_complete();
        conn.phase = Phase::Body(Box::new((head, admitted)));
        let body_deadline = conn.accepted + self.settings.request_timeout;
        self.set_deadline(id, body_deadline);
        if !self.conns[&id].out.is_empty() {
            self.flush_out(id);
        }
        if complete {
            self.decide(id);
        } else if !rest.is_empty() {
            self.received(id, &rest);
        }
    }

    /// The body is in: a worker decides, or this thread for a quick verdict.
    fn decide(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Body(body) = std::mem::replace(&mut conn.phase, Phase::Deciding) else {
            return;
        };
        let (head, admitted) = *body;
        let task = Task {
            id,
            head,
            client: conn.client,
            admitted,
        };
        self.watch(id, None);
        if let Some(conn) = self.conns.get(&id) {
            self.deadlines.remove(&(conn.deadline, id));
        }
        if task.admitted.is_quick(self.shared) {
            let outcome = request::decide(self.shared, &task.head, task.client, task.admitted);
            return self.on_decided(Decided { id, outcome });
        }
        if !self.workers.submit(task) {
            self.refuse(
                id,
                Refusal::Busy("no thread to decide the request"),
                DRAIN_TIMEOUT,
            );
        }
    }

    fn on_decided(&mut self, decided: Decided) {
        if !self.conns.contains_key(&decided.id) {
            return;
        }
        if let Ok(Accepted::Run(job)) = &decided.outcome
            && job.hook().answer.respond != Respond::BeforeRun
        {
            let Ok(Accepted::Run(job)) = decided.outcome else {
                return;
            };
            return self.wait_for_run(decided.id, *job);
        }
        let (response, level, note) = request::answer(&decided.outcome);
        let job = match decided.outcome {
            Ok(Accepted::Run(job)) => Some(*job),
            _ => None,
        };
        self.answer(decided.id, response, level, note, job, DRAIN_TIMEOUT);
    }

    /// An accepted request of a hook that answers after the run: the job
    /// starts now, and the client waits for the run that covers it, at most
    /// the hook's `respond_timeout`.
    fn wait_for_run(&mut self, id: u64, mut job: Job) {
        let hook = job.hook();
        let answer = hook.answer.clone();
        let name = hook.name.clone();
        job.watch(Box::new(Waiter {
            id,
            stream: answer.respond == Respond::Stream,
            include_stderr: answer.include_stderr,
            events: self.run_events_tx.clone(),
            activity: Arc::clone(&self.activity),
            stdout: Vec::new(),
            stderr: Vec::new(),
            streamed: 0,
        }));
        let deadline = Instant::now() + answer.timeout;
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.phase = Phase::Waiting(Box::new(Waiting { answer, hook: name }));
        }
        self.set_deadline(id, deadline);
        self.shared.runner.trigger(job);
    }

    fn on_run_event(&mut self, event: RunEvent) {
        let id = match &event {
            RunEvent::Started { id, .. }
            | RunEvent::Line { id, .. }
            | RunEvent::Ended { id, .. }
            | RunEvent::Dropped { id, .. } => *id,
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match (&mut conn.phase, event) {
            (Phase::Waiting(waiting), RunEvent::Started { pid, .. })
                if waiting.answer.respond == Respond::Stream =>
            {
                let out =
                    Response::stream_head(&waiting.answer.content_type, pid, SystemTime::now());
                let hook = std::mem::take(&mut waiting.hook);
                conn.phase = Phase::Streaming(Box::new(Streaming {
                    hook,
                    out,
                    streamed: 0,
                }));
                let deadline = Instant::now() + WRITE_TIMEOUT;
                self.set_deadline(id, deadline);
                self.stream(id);
            }
            (Phase::Streaming(streaming), RunEvent::Line { line, .. }) => {
                streaming.streamed += line.len() as u64;
                chunk(&line, &mut streaming.out);
                if streaming.out.len() > MAX_STREAM_PENDING {
                    let hook = streaming.hook.clone();
                    let peer = describe_client(conn);
                    warning!(
                        "{peer}: hook {hook}: the client reads the stream slower than the run writes it; closed (the run goes on)"
                    );
                    return self.close(id);
                }
                self.stream(id);
            }
            (Phase::Streaming(streaming), RunEvent::Ended { result, .. }) => {
                let run = result.describe();
                last_chunk(&run, &mut streaming.out);
                let out = std::mem::take(&mut streaming.out);
                let level = if result.succeeded() {
                    Level::Info
                } else {
                    Level::Warning
                };
                let note = format!(
                    "streamed {} bytes of {run} (answered during the run)",
                    streaming.streamed
                );
                self.answer_bytes(id, out, 200, level, note, DRAIN_TIMEOUT);
            }
            (Phase::Waiting(waiting), RunEvent::Ended { result, .. }) => {
                let response = Response::after_run(&waiting.answer, &result);
                let level = if result.succeeded() {
                    Level::Info
                } else {
                    Level::Warning
                };
                let note = format!("{} (answered after the run)", result.describe());
                self.answer(id, response, level, note, None, DRAIN_TIMEOUT);
            }
            (Phase::Waiting(_), RunEvent::Dropped { why, .. }) => {
                let (response, level) = match why {
                    Dropped::Superseded => (
                        Response::text(
                            202,
                            "accepted: the run of a newer request covers this one\n",
                        ),
                        Level::Info,
                    ),
                    Dropped::Stopping | Dropped::NoThread => (
                        Response {
                            headers: vec![("Retry-After", RETRY_AFTER_SECS.to_string())],
                            ..Response::text(503, &format!("not run: {why}\n"))
                        },
                        Level::Warning,
                    ),
                };
                self.answer(
                    id,
                    response,
                    level,
                    format!("not run: {why}"),
                    None,
                    DRAIN_TIMEOUT,
                );
            }
            // A streamed answer whose run ended before it started (not
            // started at all), or events for a client that has gone on.
            (Phase::Waiting(waiting), RunEvent::Line { .. })
                if waiting.answer.respond == Respond::Stream => {}
            _ => {}
        }
    }

    /// Writes what a streamed answer has so far.
    fn stream(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Streaming(streaming) = &mut conn.phase else {
            return;
        };
        while !streaming.out.is_empty() {
            match conn.transport.write(&streaming.out) {
                Ok(0) => return self.close(id),
                Ok(n) => {
                    streaming.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let peer = describe_client(conn);
                    warning!("{peer}: the streamed answer could not be delivered: {e}");
                    return self.close(id);
                }
            }
        }
        let pending = !streaming.out.is_empty() || conn.transport.wants_write();
        let deadline = Instant::now() + WRITE_TIMEOUT;
        self.set_deadline(id, deadline);
        self.watch(id, pending.then_some(EpollFlags::EPOLLOUT));
    }

    fn refuse(&mut self, id: u64, refusal: Refusal, drain: Duration) {
        let (response, level, note) = request::answer(&Err(refusal));
        self.answer(id, response, level, note, None, drain);
    }

    /// Starts the answer; the log line is written once it is out.
    fn answer(
        &mut self,
        id: u64,
        response: Response,
        level: Level,
        note: String,
        job: Option<Job>,
        drain: Duration,
    ) {
        let bytes = response.to_bytes(SystemTime::now());
        self.answer_bytes(id, bytes, response.status, level, note, drain);
        let Some(job) = job else {
            return;
        };
        match self.conns.get_mut(&id).map(|c| &mut c.phase) {
            Some(Phase::Closing(answering)) => answering.job = Some(job),
            // Closed at once (the answer done or failed): accepted all the same.
            _ => self.shared.runner.trigger(job),
        }
    }

    /// Writes `bytes` (the rest of an answer), then half-closes and drains.
    fn answer_bytes(
        &mut self,
        id: u64,
        bytes: Vec<u8>,
        status: u16,
        level: Level,
        note: String,
        drain: Duration,
    ) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let closing = Closing::new(bytes, drain);
        let deadline = closing.deadline();
        conn.phase = Phase::Closing(Box::new(Answering {
            closing,
            log: Some((level, status, note)),
            job: None,
        }));
        self.set_deadline(id, deadline);
        self.closing(id, false);
    }

    /// Drives an answer: writes, then (`readable`) drains.
    fn closing(&mut self, id: u64, readable: bool) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Closing(answering) = &mut conn.phase else {
            return;
        };
        let step = if readable {
            answering
                .closing
                .drain(&mut Raw(&mut conn.transport), &mut self.discard)
        } else {
            answering.closing.write(&mut conn.transport)
        };
        self.step(id, step);
    }

    fn step(&mut self, id: u64, step: Step) {
        match step {
            Step::Write => self.watch(id, Some(EpollFlags::EPOLLOUT)),
            Step::Drain => {
                self.watch(id, Some(EpollFlags::EPOLLIN));
                self.refresh_deadline(id);
            }
            Step::Written => {
                self.log_answer(id, None);
                self.watch(id, Some(EpollFlags::EPOLLIN));
                self.refresh_deadline(id);
                self.closing(id, true);
            }
            Step::Close(delivered) => {
                if let Err(e) = delivered {
                    self.log_answer(id, Some(e));
                }
                self.close(id);
            }
        }
    }

    fn refresh_deadline(&mut self, id: u64) {
        if let Some(Phase::Closing(answering)) = self.conns.get(&id).map(|c| &c.phase) {
            let at = answering.closing.deadline();
            self.set_deadline(id, at);
        }
    }

    /// The request's one log line, once its answer is out (or failed).
    fn log_answer(&mut self, id: u64, failed: Option<io::Error>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Closing(answering) = &mut conn.phase else {
            return;
        };
        let Some((level, status, note)) = answering.log.take() else {
            return;
        };
        let peer = describe_client(conn);
        let line = conn.line.as_deref().unwrap_or("- -");
        let hook = conn
            .hook
            .as_ref()
            .map_or_else(String::new, |name| format!(" hook {name}"));
        let delivered =
            failed.map_or_else(String::new, |e| format!(" (response not delivered: {e})"));
        log::line(
            level,
            format_args!("{peer} {line} {status}{hook}: {note}{delivered}"),
        );
        log::status(Last::Request, format_args!("{line} {status}{hook}: {note}"));
    }

    /// The connection ended before it could be answered.
    fn lose(&mut self, id: u64, lost: Lost) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let peer = describe_client(conn);
        if conn.transport.handshaking() {
            match &lost {
                Lost::Closed => info!("{peer}: closed during the TLS handshake"),
                Lost::Io(e) => warning!("{peer}: TLS handshake failed: {e}"),
            }
            return self.close(id);
        }
        let line = conn.line.clone().or_else(|| match &conn.phase {
            Phase::Head(reader) => reader
                .request_line()
                .map(|(method, target)| request::request_line(method, target)),
            _ => None,
        });
        match (line, &lost) {
            (None, Lost::Closed) => info!("{peer}: closed without sending a request"),
            (line, _) => {
                let line = line.as_deref().unwrap_or("-");
                warning!("{peer} {line}: no response: {lost}");
            }
        }
        self.close(id);
    }

    /// Closes connection `id`; starts its job if it has one.
    fn close(&mut self, id: u64) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.deadlines.remove(&(conn.deadline, id));
        self.subscribers.remove(&id);
        if conn.watching.is_some() {
            let _ = self.epoll.delete(conn.transport.as_fd());
        }
        self.connections.release(conn.source);
        self.last_close = Instant::now();
        drop(conn.transport);
        self.resume_if_paused();
        if let Phase::Closing(answering) = conn.phase
            && let Some(job) = answering.job
        {
            self.shared.runner.trigger(job);
        }
    }

    /// Acts on every deadline that has passed.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                return;
            }
            self.deadlines.remove(&(at, id));
            let Some(conn) = self.conns.get(&id) else {
                continue;
            };
            match &conn.phase {
                Phase::Head(_) | Phase::Body(_) => {
                    if let Phase::Head(reader) = &conn.phase {
                        let line = reader
                            .request_line()
                            .map(|(m, t)| request::request_line(m, t));
                        if let Some(conn) = self.conns.get_mut(&id) {
                            conn.line = conn.line.take().or(line);
                        }
                    }
                    self.refuse(id, Refusal::Timeout, REFUSAL_DRAIN_TIMEOUT);
                }
                Phase::Closing(answering) => {
                    let step = answering.closing.expire();
                    self.step(id, step);
                }
                // The run goes on; its outcome will be in the log (and the journal).
                Phase::Waiting(waiting) => {
                    let secs = waiting.answer.timeout.as_secs();
                    let response = Response::text(
                        202,
                        &format!("accepted: still running after {secs} s; the run goes on\n"),
                    );
                    let note =
                        format!("still running after respond_timeout ({secs} s); the run goes on");
                    self.answer(id, response, Level::Info, note, None, DRAIN_TIMEOUT);
                }
                Phase::Streaming(_) => {
                    let peer = describe_client(conn);
                    warning!(
                        "{peer}: a streamed answer made no progress for {} s; closed (the run goes on)",
                        WRITE_TIMEOUT.as_secs()
                    );
                    self.close(id);
                }
                Phase::Subscribed(_) => self.sub_tick(id),
                Phase::Deciding => {}
            }
        }
    }

    /// A request for a `/sub/` path: upgraded to a subscriber, or refused.
    fn subscribe(&mut self, id: u64, head: Head, rest: Vec<u8>) {
        let store = self.shared.relay.as_ref();
        let upgrade = relay::upgrade(&self.config, &head, store);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.hook = head
            .path
            .strip_prefix(relay::SUB_PREFIX)
            .filter(|name| !name.is_empty())
            .map(str::to_owned);
        let upgrade = match upgrade {
            Ok(_) if self.subscribers.len() >= self.settings.limits.max_subscribers => {
                return self.refuse(id, Refusal::Busy("too many subscribers"), DRAIN_TIMEOUT);
            }
            Ok(upgrade) => upgrade,
            Err(refusal) => return self.refuse(id, refusal, REFUSAL_DRAIN_TIMEOUT),
        };
        let framing = match upgrade.envelope {
            true => relay::SUBPROTOCOL,
            false => "hookbot framing",
        };
        let subscriber = Subscriber::new(upgrade, rest, store);
        let topic = match &subscriber.topic {
            relay::Topic::One(name) => format!("hook {name}"),
            relay::Topic::All => "every published hook".to_owned(),
        };
        let peer = describe_client(conn);
        let line = conn.line.as_deref().unwrap_or("- -");
        info!(
            "{peer} {line} 101: subscribed to {topic} ({framing}), {} stored message(s) to catch up",
            subscriber.replayed
        );
        conn.phase = Phase::Subscribed(Box::new(subscriber));
        self.subscribers.insert(id);
        self.sub_write(id);
        self.sub_deadline(id);
    }

    /// Reads what subscriber `id` sent.
    fn sub_read(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Subscribed(sub) = &mut conn.phase else {
            return;
        };
        if let Err(closed) = sub.read(&mut conn.transport) {
            self.sub_close(id, closed);
        }
    }

    /// Writes what waits for subscriber `id`, and watches for what it needs.
    fn sub_write(&mut self, id: u64) {
        let store = self.shared.relay.as_ref();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Subscribed(sub) = &mut conn.phase else {
            return;
        };
        match sub.write(&mut conn.transport, store) {
            Ok(Wants::Write) => self.watch(id, Some(EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT)),
            Ok(Wants::Read) => self.watch(id, Some(EpollFlags::EPOLLIN)),
            Ok(Wants::Done) => {
                let why = sub.closing().unwrap_or("closed");
                let note = format!(
                    "subscriber closed: {why}; sent {} message(s) in {} s",
                    sub.sent,
                    conn.accepted.elapsed().as_secs()
                );
                self.subscribers.remove(&id);
                self.answer_bytes(id, Vec::new(), 101, Level::Info, note, DRAIN_TIMEOUT);
            }
            Err(e) => self.sub_close(id, Closed::Abrupt(format!("write failed: {e}"))),
        }
    }

    /// Closes subscriber `id`: with a close frame, or at once.
    fn sub_close(&mut self, id: u64, closed: Closed) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let peer = describe_client(conn);
        let Phase::Subscribed(sub) = &mut conn.phase else {
            return;
        };
        match closed {
            Closed::Clean(code, why) => {
                if code == CloseCode::Away {
                    info!("{peer}: subscriber closed: {why}");
                } else {
                    warning!("{peer}: subscriber closed: {why}");
                }
                sub.close(&mut conn.transport, code, why);
                self.sub_write(id);
            }
            Closed::Abrupt(why) => {
                let sent = sub.sent;
                let secs = conn.accepted.elapsed().as_secs();
                info!("{peer}: subscriber gone: {why}; sent {sent} message(s) in {secs} s");
                self.close(id);
            }
        }
    }

    /// Sends every message stored since the last turn to its subscribers.
    fn fan_out(&mut self) {
        let Some(store) = self.shared.relay.as_ref() else {
            return;
        };
        let live = store.take_live();
        if live.is_empty() {
            return;
        }
        let ids: Vec<u64> = self.subscribers.iter().copied().collect();
        for id in ids {
            let Some(Phase::Subscribed(sub)) = self.conns.get_mut(&id).map(|c| &mut c.phase) else {
                continue;
            };
            let offered = live.iter().try_for_each(|message| sub.offer(message));
            match offered {
                Ok(()) => self.sub_write(id),
                Err(closed) => self.sub_close(id, closed),
            }
            self.sub_deadline(id);
        }
    }

    /// Closes every subscriber with `code` (the relay stops).
    fn close_subscribers(&mut self, code: CloseCode, why: &'static str) {
        let ids: Vec<u64> = self.subscribers.iter().copied().collect();
        for id in ids {
            self.sub_close(id, Closed::Clean(code, why));
        }
    }

    /// Sets subscriber `id`'s deadline: its next ping, its idle close, or
    /// the end of the time it has to take what waits.
    fn sub_deadline(&mut self, id: u64) {
        let Some(Phase::Subscribed(sub)) = self.conns.get(&id).map(|c| &c.phase) else {
            return;
        };
        let mut at = (sub.pinged + relay::PING_EVERY).min(sub.heard + relay::IDLE_CLOSE);
        if sub.busy() {
            at = at.min(sub.progress + WRITE_TIMEOUT);
        }
        self.set_deadline(id, at);
    }

    /// Subscriber `id`'s deadline passed: ping it, or close it.
    fn sub_tick(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Subscribed(sub) = &mut conn.phase else {
            return;
        };
        let now = Instant::now();
        if sub.busy() && now >= sub.progress + WRITE_TIMEOUT {
            let secs = WRITE_TIMEOUT.as_secs();
            return self.sub_close(
                id,
                Closed::Abrupt(format!("took nothing for {secs} s (it resumes later)")),
            );
        }
        if now >= sub.heard + relay::IDLE_CLOSE {
            return self.sub_close(id, Closed::Clean(CloseCode::Away, "sent nothing for 120 s"));
        }
        if now >= sub.pinged + relay::PING_EVERY && sub.closing().is_none() {
            sub.ping(&mut conn.transport);
            self.sub_write(id);
        }
        self.sub_deadline(id);
    }
}

/// A peer for the log.
fn describe(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "unix".to_owned(), |a| a.to_string())
}

/// The client for the log: the peer, or the forwarded address and the proxy.
fn describe_client(conn: &Conn) -> String {
    let peer = describe(conn.peer);
    match conn.client {
        Some(ip) if conn.peer.map(|p| p.ip()) != Some(ip) => format!("{ip} via {peer}"),
        _ => peer,
    }
}

/// Reads the raw socket under a transport: what a drain discards.
struct Raw<'t>(&'t mut Transport);

impl Read for Raw<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_raw(buf)
    }
}
