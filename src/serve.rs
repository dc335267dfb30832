//! `sockhook serve`: the process's life — start-up, the event loop
//! ([`crate::reactor`]) until sockhook has been idle long enough to exit or
//! is stopped, and the exit.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use sd_notify::NotifyState;

use crate::act::Runner;
use crate::cgroup::Cgroups;
use crate::config::{self, CREDENTIALS_DIRECTORY, Problem};
use crate::error::{EXIT_FAILED, EXIT_OK, Error};
use crate::idle::Activity;
use crate::info;
use crate::journal::{self, Journal};
use crate::limits::{Budget, Limits};
use crate::listen::{self, Endpoint, Socket};
use crate::proxy::Trusted;
use crate::reactor::{self, Ended, Settings};
use crate::relay;
use crate::replay::Replay;
use crate::request::{Config, Shared};
use crate::tls;

/// Set by systemd to the service's `RuntimeDirectory=`.
pub const RUNTIME_DIRECTORY: &str = "RUNTIME_DIRECTORY";
/// Idle time before exiting, when started by systemd.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an activation serves at most, when started by systemd.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(3600);

/// What `sockhook serve` was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Directory of hook files.
    pub hooks_dir: PathBuf,
    /// Server key file; `None` for the default.
    pub key: Option<PathBuf>,
    /// Address to bind when systemd passed no socket.
    pub listen: Option<String>,
    /// Address to bind for HTTPS when systemd passed no socket.
    pub listen_tls: Option<String>,
    /// The certificate chain; `None` for the default.
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key; `None` for the default.
    pub tls_key: Option<PathBuf>,
    /// Peers that may say who the client is.
    pub trusted_proxies: Vec<Trusted>,
    /// Idle time before exiting; `None`: 5 s under systemd, never with `--listen`.
    pub idle_timeout: Option<Duration>,
    /// Age past which sockhook exits when quiet; `None`: an hour under
    /// systemd, never with `--listen`.
    pub max_lifetime: Option<Duration>,
    /// Time a client has for its request head.
    pub head_timeout: Duration,
    /// Time a client has for its whole request.
    pub request_timeout: Duration,
    /// Connections and unauthenticated bytes a client may take.
    pub limits: Limits,
    /// The state directory of the delivery journal; `None`:
    /// `$STATE_DIRECTORY`, or no journal without it.
    pub state: Option<PathBuf>,
    /// Finished deliveries the journal keeps per hook.
    pub journal_keep: usize,
    /// Bytes the journal may hold.
    pub journal_max_bytes: u64,
}

/// Open files one connection may take: its socket and its body's memfd.
const FILES_PER_CONNECTION: u64 = 2;
/// Open files besides the connections': listeners, epoll, signalfd, pipes,
/// what runs and reloads hold.
const FILES_RESERVED: u64 = 256;

/// Raises the soft limit on open files to what `--max-connections` needs,
/// as far as the hard limit allows. systemd gives a unit without
/// `LimitNOFILE=` a soft limit of 1024 (and a hard one of 524288), and a
/// login shell has 1024 too: there, 1,000 idle connections took every file
/// descriptor, accepting paused and valid requests got 500 (no memfd for
/// their body) or waited for a head deadline. Commands inherit the raised
/// soft limit, as they inherit `LimitNOFILE=`.
fn raise_open_files_limit(limits: &Limits) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let want = (limits.max_connections as u64)
        .saturating_mul(FILES_PER_CONNECTION)
        .saturating_add(FILES_RESERVED);
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= want {
        return;
    }
    let raised = want.min(hard);
    if raised > soft && setrlimit(Resource::RLIMIT_NOFILE, raised, hard).is_err() {
        return;
    }
    if raised < want {
        crate::warning!(
            "open files limited to {raised} (hard limit): fewer than --max-connections {} connections fit; raise LimitNOFILE= or ulimit -Hn",
            limits.max_connections
        );
    }
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
    let max_lifetime = options
        .max_lifetime
        .or(passed.is_some().then_some(DEFAULT_MAX_LIFETIME));
    let socket = match passed {
        Some(socket) => socket,
        None => {
            let mut endpoints = Vec::new();
            if let Some(addr) = &options.listen {
                let listener = listen::bind("listen", addr)?;
                endpoints.push(Endpoint {
                    listener,
                    tls: false,
                });
            }
            if let Some(addr) = &options.listen_tls {
                let listener = listen::bind("listen-tls", addr)?;
                endpoints.push(Endpoint {
                    listener,
                    tls: true,
                });
            }
            if endpoints.is_empty() {
                return Err(Error::Usage(
                    "no socket: start sockhook from a systemd .socket unit, or pass --listen IP:PORT or --listen-tls IP:PORT"
                        .into(),
                ));
            }
            // Started by hand, a hooks directory that is not there is a
            // mistake to fix before serving. Under systemd it is answered
            // 500 instead, as every configuration mistake is, and the next
            // request after it appears is served (DESIGN.md, decision 9):
            // an exit would only count towards the unit's start limit.
            if let Err(e) = std::fs::read_dir(&options.hooks_dir) {
                return Err(Error::Config(Problem {
                    path: options.hooks_dir.clone(),
                    message: format!(
                        "cannot read the hooks directory: {e}; create it or pass --hooks DIR"
                    ),
                }));
            }
            Socket::Listeners(endpoints)
        }
    };
    if let Socket::Listeners(_) = &socket {
        raise_open_files_limit(&options.limits);
    }
    let signals = stop_signals()?;
    let credentials = std::env::var_os(CREDENTIALS_DIRECTORY).map(PathBuf::from);
    let key_path = config::key_path(options.key.as_deref(), credentials.as_deref());
    let config = Config::load(&options.hooks_dir, key_path, credentials.as_deref());
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
    let served: Vec<String> = config
        .hooks
        .iter()
        .map(|(name, _)| name.to_owned())
        .collect();
    let journal = open_journal(options);
    let relay = open_relay(options, &config);
    let limits = options.limits;
    let shared = Arc::new(Shared {
        replay: Replay::new(runtime.as_deref()),
        runner: Runner::new(
            Arc::clone(&activity),
            cgroups,
            journal.as_ref().map(Journal::locks),
        ),
        budget: Budget::new(limits.preauth_budget, limits.preauth_share()),
        journal,
        relay,
    });
    if let Some(journal) = &shared.journal {
        journal::resume(journal, &config.hooks, &shared.runner);
    }
    let settings = Settings {
        head_timeout: options.head_timeout,
        request_timeout: options.request_timeout,
        idle_timeout,
        max_lifetime,
        limits,
        trusted: options.trusted_proxies.clone(),
        tls: tls::Files::new(
            options.tls_cert.as_deref(),
            options.tls_key.as_deref(),
            credentials.as_deref(),
        ),
    };
    let (listeners, connection) = match socket {
        Socket::Connection(stream) => {
            info!("serving one connection for hooks: {}", served.join(" "));
            (Vec::new(), Some(stream))
        }
        Socket::Listeners(listeners) => {
            let on: Vec<String> = listeners.iter().map(Endpoint::describe).collect();
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
            (listeners, None)
        }
    };
    let ended = reactor::run(
        &listeners, connection, config, &shared, settings, &signals, &activity, &wake,
    )?;
    let reason = match ended {
        Ended::Idle => "idle",
        Ended::Expired => "served its --max-lifetime; the next activation reads credentials afresh",
        Ended::Stopped => "stopped",
        Ended::Served => "connection served",
    };
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    let failures = shared.runner.failures();
    if failures > 0 {
        info!("exiting ({reason}): {failures} run(s) failed");
        Ok(EXIT_FAILED)
    } else {
        info!("exiting ({reason})");
        Ok(EXIT_OK)
    }
}

/// The delivery journal, ready; `None` (said once) without a state directory.
fn open_journal(options: &Options) -> Option<Journal> {
    let Some(state) = Journal::state_dir(options.state.as_deref()) else {
        info!(
            "no delivery journal: no StateDirectory= and no --state; accepted deliveries are not kept on disk"
        );
        return None;
    };
    let journal = Journal::new(&state, options.journal_keep, options.journal_max_bytes);
    if let Err(e) = journal.prepare() {
        crate::error!(
            "unable to make the delivery journal in {}: {e}; deliveries are refused (503) until it can be written",
            state.display()
        );
    }
    Some(journal)
}

/// The relay's store, when a hook publishes; `None` (said once) when
/// there is no state directory or the store cannot be made, and then
/// publishing hooks answer 503.
fn open_relay(options: &Options, config: &Config) -> Option<relay::Store> {
    let publishing = config
        .hooks
        .iter()
        .any(|(_, hook)| hook.as_ref().is_ok_and(|h| h.publish.is_some()));
    if !publishing {
        return None;
    }
    let Some(state) = Journal::state_dir(options.state.as_deref()) else {
        {
            crate::error!(
                "no StateDirectory= and no --state: hooks with publish = true answer 503, as nothing can be stored for subscribers"
            );
        }
        return None;
    };
    match relay::Store::open(&state) {
        Ok(store) => Some(store),
        Err(e) => {
            crate::error!(
                "unable to open the relay's store in {}/relay: {e}; hooks with publish = true answer 503",
                state.display()
            );
            None
        }
    }
}

/// Blocks SIGTERM and SIGINT in every thread and returns an fd that reports them.
///
/// Must run before any thread starts, so that all inherit the mask; commands
/// get an empty mask back (`act::unblock_signals_on_exec`). `serve` and
/// `subscribe` both stop on these.
pub(crate) fn stop_signals() -> Result<SignalFd, Error> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block()
        .map_err(|e| Error::system("block SIGTERM", e.into()))?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Error::system("create a signalfd", e.into()))
}
