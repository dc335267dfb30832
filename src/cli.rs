//! The command line: `sockhook serve|check|token|sign|deliveries|replay|subscribe`,
//! parsed with lexopt.
//!
//! Every option is defined once, in [`COMMANDS`]: the help texts, the parser
//! and the man-page check all read that table, so a new option is one new
//! entry.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use lexopt::prelude::*;

use crate::config::DEFAULT_HOOKS_DIR;
use crate::error::{EXIT_BUG, EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_SYSTEM, Error};
use crate::limits::Limits;
use crate::proxy::Trusted;
use crate::reactor::DEFAULT_HEAD_TIMEOUT;
use crate::read::DEFAULT_REQUEST_TIMEOUT;
use crate::scheme::Scheme;
use crate::serve;

/// One option: its name, its value's name, its help, and what it sets.
pub struct Opt {
    /// The long name, without `--`.
    pub name: &'static str,
    /// What the help calls its value, e.g. `DIR`.
    pub value: &'static str,
    /// What it does; a `[default: …]` at the end says what holds without it.
    pub help: &'static str,
    set: fn(&mut Args, OsString) -> Result<(), Error>,
}

/// A subcommand: its synopsis, what it does, and its options.
pub struct Subcommand {
    /// The name, e.g. `serve`.
    pub name: &'static str,
    /// The operands after the options in the synopsis, e.g. `PATH`.
    pub operands: &'static str,
    /// What it does, in a sentence or two.
    pub summary: &'static str,
    /// The options it takes, in the order the help lists them.
    pub options: &'static [&'static Opt],
}

/// Everything the options of every subcommand can set, with the defaults.
struct Args {
    hooks_dir: PathBuf,
    key: Option<PathBuf>,
    listen: Option<String>,
    listen_tls: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    trusted_proxies: Vec<Trusted>,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
    head_timeout: Duration,
    request_timeout: Duration,
    limits: Limits,
    url_base: Option<String>,
    user: Option<String>,
    scheme: Option<Scheme>,
    secret: Option<PathBuf>,
    id: Option<String>,
    timestamp: Option<u64>,
    state: Option<PathBuf>,
    journal_keep: usize,
    journal_max_bytes: u64,
    hook: Option<String>,
    failed: bool,
    since: Option<String>,
    body: bool,
    token: Option<PathBuf>,
    ca: Option<PathBuf>,
    ping_interval: Duration,
    ping_timeout: Duration,
    max_backoff: Duration,
}

static HOOKS: Opt = Opt {
    name: "hooks",
    value: "DIR",
    help: "Hook files, one NAME.toml per hook, served at /hooks/NAME [default: /etc/sockhook/hooks.d]",
    set: |a, v| put(&mut a.hooks_dir, v.into()),
};

static KEY: Opt = Opt {
    name: "key",
    value: "FILE",
    help: "Server key for tokens [default: $CREDENTIALS_DIRECTORY/key under systemd, else /etc/sockhook/key]",
    set: |a, v| put(&mut a.key, Some(v.into())),
};

static LISTEN: Opt = Opt {
    name: "listen",
    value: "IP:PORT",
    help: "Bind this address when systemd passed no socket",
    set: |a, v| put(&mut a.listen, Some(text("listen", v)?)),
};

static LISTEN_TLS: Opt = Opt {
    name: "listen-tls",
    value: "IP:PORT",
    help: "Bind this address for HTTPS when systemd passed no socket (under systemd: a socket with FileDescriptorName=https)",
    set: |a, v| put(&mut a.listen_tls, Some(text("listen-tls", v)?)),
};

static TLS_CERT: Opt = Opt {
    name: "tls-cert",
    value: "FILE",
    help: "HTTPS certificate chain, PEM, leaf first [default: $CREDENTIALS_DIRECTORY/tls.crt under systemd, else /etc/sockhook/tls.crt]",
    set: |a, v| put(&mut a.tls_cert, Some(v.into())),
};

static TLS_KEY: Opt = Opt {
    name: "tls-key",
    value: "FILE",
    help: "HTTPS private key, PEM [default: $CREDENTIALS_DIRECTORY/tls.key under systemd, else /etc/sockhook/tls.key]",
    set: |a, v| put(&mut a.tls_key, Some(v.into())),
};

static TRUSTED_PROXY: Opt = Opt {
    name: "trusted-proxy",
    value: "CIDR",
    help: "A reverse proxy (address, ADDR/BITS, or unix for Unix-socket peers) whose Forwarded or X-Forwarded-For says who the client is; repeatable [default: none]",
    set: |a, v| {
        let text = text("trusted-proxy", v)?;
        let trusted = text
            .parse()
            .map_err(|why| Error::Usage(format!("--trusted-proxy: {why}")))?;
        a.trusted_proxies.push(trusted);
        Ok(())
    },
};

static IDLE_TIMEOUT: Opt = Opt {
    name: "idle-timeout",
    value: "SECS",
    help: "Exit after SECS without connections or running commands [default: 5 under systemd; with --listen, run until stopped]",
    set: |a, v| put(&mut a.idle_timeout, Some(seconds("idle-timeout", v, true)?)),
};

static MAX_LIFETIME: Opt = Opt {
    name: "max-lifetime",
    value: "SECS",
    help: "Past this age, exit at the first moment no connection is open and no command runs, so that the next activation reads renewed certificates and keys [default: 3600 under systemd; with --listen, none]",
    set: |a, v| {
        put(
            &mut a.max_lifetime,
            Some(seconds("max-lifetime", v, false)?),
        )
    },
};

static HEAD_TIMEOUT: Opt = Opt {
    name: "head-timeout",
    value: "SECS",
    help: "Time a client has to send its request head (line and header fields), counted from the connection [default: 5]",
    set: |a, v| put(&mut a.head_timeout, seconds("head-timeout", v, false)?),
};

static MAX_CONNECTIONS: Opt = Opt {
    name: "max-connections",
    value: "N",
    help: "Most connections served at once; past it, the oldest still sending its head, from the address with the most, is closed [default: 4096]",
    set: |a, v| put(&mut a.limits.max_connections, count("max-connections", v)?),
};

static MAX_CONNECTIONS_PER_SOURCE: Opt = Opt {
    name: "max-connections-per-source",
    value: "N",
    help: "Most connections at once from one IPv4 address or IPv6 /64; more are answered 503 [default: 32]",
    set: |a, v| {
        put(
            &mut a.limits.connections_per_source,
            count("max-connections-per-source", v)?,
        )
    },
};

static MAX_SUBSCRIBERS: Opt = Opt {
    name: "max-subscribers",
    value: "N",
    help: "Most relay subscribers (websockets on /sub/hooks/) at once; more are answered 503. They also count against the connection limits [default: 4096]",
    set: |a, v| put(&mut a.limits.max_subscribers, count("max-subscribers", v)?),
};

static PREAUTH_BUDGET: Opt = Opt {
    name: "preauth-budget",
    value: "BYTES",
    help: "Most body bytes spooled at once by requests whose signature is not yet checked; one address may hold half; over it, 503 with nothing spooled [default: 67108864, 64 MiB]",
    set: |a, v| {
        put(
            &mut a.limits.preauth_budget,
            count("preauth-budget", v)? as u64,
        )
    },
};

static REQUEST_TIMEOUT: Opt = Opt {
    name: "request-timeout",
    value: "SECS",
    help: "Time a client has to send its whole request [default: 10]",
    set: |a, v| {
        put(
            &mut a.request_timeout,
            seconds("request-timeout", v, false)?,
        )
    },
};

static URL_BASE: Opt = Opt {
    name: "url-base",
    value: "URL",
    help: "Print URL/PATH with the token as user name and an empty password (http://TOKEN:@host/PATH), instead of the bare token",
    set: |a, v| put(&mut a.url_base, Some(text("url-base", v)?)),
};

static USER: Opt = Opt {
    name: "user",
    value: "NAME",
    help: "As root: check judges every file as this user meets it under the installed sockhook.service, replay runs the command as this user [default: the unit's User=, else sockhook]",
    set: |a, v| put(&mut a.user, Some(text("user", v)?)),
};

static SCHEME: Opt = Opt {
    name: "scheme",
    value: "SCHEME",
    help: "The hook's auth scheme: github, gitea, forgejo, gitlab, bitbucket, standard-webhooks, stripe, slack, shopify, linear, sentry or discord",
    set: |a, v| {
        let name = text("scheme", v)?;
        a.scheme = Some(
            Scheme::from_name(&name)
                .filter(|s| s.needs_secret())
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "sign: unknown scheme {name:?}; choose github, gitea, forgejo, gitlab, bitbucket, standard-webhooks, stripe, slack, shopify, linear, sentry or discord"
                    ))
                })?,
        );
        Ok(())
    },
};

static SECRET: Opt = Opt {
    name: "secret",
    value: "FILE",
    help: "The file holding the hook's secret; for discord and standard-webhooks v1a, the sender's Ed25519 private key",
    set: |a, v| put(&mut a.secret, Some(v.into())),
};

static ID: Opt = Opt {
    name: "id",
    value: "ID",
    help: "standard-webhooks: the delivery id [default: random]",
    set: |a, v| put(&mut a.id, Some(text("id", v)?)),
};

static TIMESTAMP: Opt = Opt {
    name: "timestamp",
    value: "UNIX",
    help: "standard-webhooks, stripe, slack, discord: the timestamp [default: now]",
    set: |a, v| {
        let value = text("timestamp", v)?;
        a.timestamp = Some(value.parse().map_err(|_| {
            Error::Usage(format!(
                "--timestamp: {value:?} is not a number of seconds since 1970"
            ))
        })?);
        Ok(())
    },
};

static STATE: Opt = Opt {
    name: "state",
    value: "DIR",
    help: "The delivery journal's state directory [default: $STATE_DIRECTORY under systemd (/var/lib/sockhook); else serve and subscribe keep no journal, and the others use /var/lib/sockhook]",
    set: |a, v| put(&mut a.state, Some(v.into())),
};

static JOURNAL_KEEP: Opt = Opt {
    name: "journal-keep",
    value: "N",
    help: "Deliveries kept per hook, the newest included; when a new one comes, the oldest finished ones past N are removed [default: 100]",
    set: |a, v| put(&mut a.journal_keep, count("journal-keep", v)?),
};

static JOURNAL_MAX_BYTES: Opt = Opt {
    name: "journal-max-bytes",
    value: "BYTES",
    help: "Most bytes the journal holds; the oldest finished deliveries go first, and when pending ones alone fill it, new deliveries are answered 503 [default: 268435456, 256 MiB]",
    set: |a, v| {
        put(
            &mut a.journal_max_bytes,
            count("journal-max-bytes", v)? as u64,
        )
    },
};

static HOOK: Opt = Opt {
    name: "hook",
    value: "NAME",
    help: "Only the deliveries of this hook",
    set: |a, v| put(&mut a.hook, Some(text("hook", v)?)),
};

static FAILED: Opt = Opt {
    name: "failed",
    value: "",
    help: "Only the deliveries whose run failed",
    set: |a, _| put(&mut a.failed, true),
};

static SINCE: Opt = Opt {
    name: "since",
    value: "WHEN",
    help: "Only the deliveries received since WHEN: an age (30m, 12h, 7d) or a UTC date (2026-12-01 or 2026-12-01T08:30)",
    set: |a, v| put(&mut a.since, Some(text("since", v)?)),
};

static BODY: Opt = Opt {
    name: "body",
    value: "",
    help: "show: print the body, byte for byte, instead of the metadata",
    set: |a, _| put(&mut a.body, true),
};

static TOKEN: Opt = Opt {
    name: "token",
    value: "FILE",
    help: "The file holding the subscription token alone (sockhook token /sub/hooks/ on the relay); under systemd, the credential %d/relay-token",
    set: |a, v| put(&mut a.token, Some(v.into())),
};

static CA: Opt = Opt {
    name: "ca",
    value: "FILE",
    help: "PEM CA certificates that the relay's certificate must chain to, for a private CA [default: the system's, /etc/ssl/certs/ca-certificates.crt]",
    set: |a, v| put(&mut a.ca, Some(v.into())),
};

static PING_INTERVAL: Opt = Opt {
    name: "ping-interval",
    value: "SECS",
    help: "Send a ping after SECS without traffic from the relay [default: 30]",
    set: |a, v| put(&mut a.ping_interval, seconds("ping-interval", v, false)?),
};

static PING_TIMEOUT: Opt = Opt {
    name: "ping-timeout",
    value: "SECS",
    help: "Reconnect when nothing arrives within SECS of a ping [default: 10]",
    set: |a, v| put(&mut a.ping_timeout, seconds("ping-timeout", v, false)?),
};

static MAX_BACKOFF: Opt = Opt {
    name: "max-backoff",
    value: "SECS",
    help: "Longest wait between connection attempts; the wait starts at 1 s, doubles after each failure, and is shortened by up to half at random [default: 60]",
    set: |a, v| put(&mut a.max_backoff, seconds("max-backoff", v, false)?),
};

/// The subcommands and their options.
pub const COMMANDS: [Subcommand; 7] = [
    Subcommand {
        name: "serve",
        operands: "",
        summary: "Answer webhooks on the socket systemd passes (LISTEN_FDS), or on --listen; run each authenticated hook's command after answering.",
        options: &[
            &HOOKS,
            &KEY,
            &LISTEN,
            &LISTEN_TLS,
            &TLS_CERT,
            &TLS_KEY,
            &TRUSTED_PROXY,
            &IDLE_TIMEOUT,
            &MAX_LIFETIME,
            &HEAD_TIMEOUT,
            &REQUEST_TIMEOUT,
            &MAX_CONNECTIONS,
            &MAX_CONNECTIONS_PER_SOURCE,
            &MAX_SUBSCRIBERS,
            &PREAUTH_BUDGET,
            &STATE,
            &JOURNAL_KEEP,
            &JOURNAL_MAX_BYTES,
        ],
    },
    Subcommand {
        name: "check",
        operands: "",
        summary: "Validate every hook file, its secret and command, and the server key, and the HTTPS certificate and key when configured; run as root, judge each as the service's user meets it, sudoers included. One line per problem.",
        options: &[&HOOKS, &KEY, &USER, &TLS_CERT, &TLS_KEY],
    },
    Subcommand {
        name: "token",
        operands: "PATH",
        summary: "Print the token for PATH (hex HMAC-SHA256 of PATH with the key); a PATH ending in / gives a token for every path below it.",
        options: &[&KEY, &URL_BASE, &HOOKS],
    },
    Subcommand {
        name: "sign",
        operands: "< BODY",
        summary: "Print the header lines that make BODY (stdin) pass a signature scheme, one per line, for curl -H @FILE.",
        options: &[&SCHEME, &SECRET, &ID, &TIMESTAMP],
    },
    Subcommand {
        name: "deliveries",
        operands: "[show ID]",
        summary: "List the journaled deliveries, newest first: time, id, hook, peer, answer, the run's outcome, body size; `show ID` prints one delivery's metadata (with --body, its body).",
        options: &[&STATE, &HOOK, &FAILED, &SINCE, &BODY],
    },
    Subcommand {
        name: "replay",
        operands: "ID",
        summary: "Run a journaled delivery's hook again with its stored body and environment (plus SOCKHOOK_REPLAY=1), after any run of that hook in progress; the outcome is journaled as a new delivery.",
        options: &[&STATE, &HOOKS, &USER],
    },
    Subcommand {
        name: "subscribe",
        operands: "URL",
        summary: "Hold a websocket to a relay (a public sockhook whose hooks publish) at URL, wss://HOST/sub/hooks/ or /sub/hooks/NAME; journal each message and run the local auth = \"relay\" hook of the same name; reconnect and resume where it left off.",
        options: &[
            &TOKEN,
            &HOOKS,
            &STATE,
            &CA,
            &PING_INTERVAL,
            &PING_TIMEOUT,
            &MAX_BACKOFF,
        ],
    },
];

/// Options that are not defaults: shown bare in a synopsis, in brackets otherwise.
const REQUIRED: [(&str, &str); 3] = [
    ("sign", "scheme"),
    ("sign", "secret"),
    ("subscribe", "token"),
];

/// A parsed command line.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// `sockhook serve`.
    Serve(serve::Options),
    /// `sockhook check`.
    Check {
        /// Directory of hook files.
        hooks_dir: PathBuf,
        /// Server key file; `None` for the default.
        key: Option<PathBuf>,
        /// The user to judge files as; `None` for the unit's.
        user: Option<String>,
        /// HTTPS certificate chain; `None` for the default.
        tls_cert: Option<PathBuf>,
        /// HTTPS private key; `None` for the default.
        tls_key: Option<PathBuf>,
    },
    /// `sockhook token`.
    Token {
        /// The request path the token is for.
        path: String,
        /// Server key file; `None` for the default.
        key: Option<PathBuf>,
        /// Print a URL with this base instead of the bare token.
        url_base: Option<String>,
        /// Directory of hook files, to warn about a path no hook serves.
        hooks_dir: PathBuf,
    },
    /// `sockhook sign`.
    Sign {
        /// The hook's auth scheme.
        scheme: Scheme,
        /// The file holding the secret.
        secret: PathBuf,
        /// Standard Webhooks delivery id; `None` for a random one.
        id: Option<String>,
        /// Standard Webhooks timestamp; `None` for now.
        timestamp: Option<u64>,
    },
    /// `sockhook deliveries`.
    Deliveries(crate::deliveries::Query),
    /// `sockhook replay`.
    Replay {
        /// The delivery to run again.
        id: String,
        /// The journal's state directory; `None` for the default.
        state: Option<PathBuf>,
        /// Directory of hook files.
        hooks_dir: PathBuf,
        /// Who to run as, when started as root; `None`: the unit's `User=`.
        user: Option<String>,
    },
    /// `sockhook subscribe`.
    Subscribe(crate::subscribe::Options),
    /// `--help`: the text to print, for all of sockhook or one subcommand.
    Help(String),
    /// `--version`.
    Version,
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, Error> {
    let args: Vec<OsString> = args.into_iter().collect();
    let help = match args.first().and_then(|a| a.to_str()) {
        Some(name) if COMMANDS.iter().any(|c| c.name == name) => format!("sockhook {name} --help"),
        _ => "sockhook --help".to_owned(),
    };
    parse_inner(args).map_err(|e| match e {
        Error::Usage(why) => Error::Usage(format!("{why}; for usage see {help}")),
        e => e,
    })
}

fn parse_inner(args: impl IntoIterator<Item = OsString>) -> Result<Command, Error> {
    let mut parser = lexopt::Parser::from_args(args);
    let name = match parser.next().map_err(usage)? {
        None => return Err(Error::Usage("no command given".into())),
        Some(Short('h') | Long("help")) => return Ok(Command::Help(help())),
        Some(Short('V') | Long("version")) => return Ok(Command::Version),
        Some(Value(v)) => text("command", v)?,
        Some(other) => return Err(usage(other.unexpected())),
    };
    let command = COMMANDS
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| Error::Usage(format!("unknown command {name:?}")))?;
    let mut args = Args {
        hooks_dir: PathBuf::from(DEFAULT_HOOKS_DIR),
        key: None,
        listen: None,
        listen_tls: None,
        tls_cert: None,
        tls_key: None,
        trusted_proxies: Vec::new(),
        idle_timeout: None,
        max_lifetime: None,
        head_timeout: DEFAULT_HEAD_TIMEOUT,
        request_timeout: DEFAULT_REQUEST_TIMEOUT,
        limits: Limits::default(),
        url_base: None,
        user: None,
        scheme: None,
        secret: None,
        id: None,
        timestamp: None,
        state: None,
        journal_keep: crate::journal::DEFAULT_KEEP,
        journal_max_bytes: crate::journal::DEFAULT_MAX_BYTES,
        hook: None,
        failed: false,
        since: None,
        body: false,
        token: None,
        ca: None,
        ping_interval: crate::subscribe::DEFAULT_PING_INTERVAL,
        ping_timeout: crate::subscribe::DEFAULT_PING_TIMEOUT,
        max_backoff: crate::subscribe::DEFAULT_MAX_BACKOFF,
    };
    let mut operands = Vec::new();
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(command_help(command))),
            Long(long) => {
                let option = command
                    .options
                    .iter()
                    .find(|o| o.name == long)
                    .ok_or_else(|| Error::Usage(format!("{name}: unknown option --{long}")))?;
                let value = match option.value {
                    "" => OsString::new(),
                    _ => parser.value().map_err(usage)?,
                };
                (option.set)(&mut args, value)?;
            }
            Value(value) if !command.operands.is_empty() && !command.operands.starts_with('<') => {
                operands.push(text(command.operands, value)?);
            }
            other => return Err(Error::Usage(format!("{name}: {}", other.unexpected()))),
        }
    }
    Ok(match command.name {
        "serve" => Command::Serve(serve::Options {
            hooks_dir: args.hooks_dir,
            key: args.key,
            listen: args.listen,
            listen_tls: args.listen_tls,
            tls_cert: args.tls_cert,
            tls_key: args.tls_key,
            trusted_proxies: args.trusted_proxies,
            idle_timeout: args.idle_timeout,
            max_lifetime: args.max_lifetime,
            head_timeout: args.head_timeout,
            request_timeout: args.request_timeout,
            limits: args.limits,
            state: args.state,
            journal_keep: args.journal_keep,
            journal_max_bytes: args.journal_max_bytes,
        }),
        "check" => Command::Check {
            hooks_dir: args.hooks_dir,
            key: args.key,
            user: args.user,
            tls_cert: args.tls_cert,
            tls_key: args.tls_key,
        },
        "token" => {
            let path = match operands.as_slice() {
                [] => {
                    return Err(Error::Usage(
                        "token: give the PATH, e.g. /hooks/kodi-restart".into(),
                    ));
                }
                [path] => path.clone(),
                [_, extra, ..] => {
                    return Err(Error::Usage(format!(
                        "token: one PATH only, but {extra:?} follows"
                    )));
                }
            };
            if !path.starts_with('/') {
                return Err(Error::Usage(format!(
                    "token: PATH must start with /, not {path:?}"
                )));
            }
            Command::Token {
                path,
                key: args.key,
                url_base: args.url_base,
                hooks_dir: args.hooks_dir,
            }
        }
        "deliveries" => {
            let show = match operands.as_slice() {
                [] => None,
                [show, id] if show == "show" => Some(id.clone()),
                _ => {
                    return Err(Error::Usage(
                        "deliveries: give no operand (the list) or show ID".into(),
                    ));
                }
            };
            if args.body && show.is_none() {
                return Err(Error::Usage("deliveries: --body goes with show ID".into()));
            }
            let since = match &args.since {
                None => None,
                Some(when) => Some(
                    crate::deliveries::since(when, std::time::SystemTime::now())
                        .map_err(Error::Usage)?,
                ),
            };
            Command::Deliveries(crate::deliveries::Query {
                state: args.state,
                hook: args.hook,
                failed: args.failed,
                since,
                show,
                body: args.body,
            })
        }
        "replay" => match operands.as_slice() {
            [id] => Command::Replay {
                id: id.clone(),
                state: args.state,
                hooks_dir: args.hooks_dir,
                user: args.user,
            },
            _ => {
                return Err(Error::Usage(
                    "replay: give one delivery ID (see sockhook deliveries)".into(),
                ));
            }
        },
        "subscribe" => {
            let url = match operands.as_slice() {
                [url] => url.clone(),
                _ => {
                    return Err(Error::Usage(
                        "subscribe: give the relay's URL, e.g. wss://relay.example.org/sub/hooks/"
                            .into(),
                    ));
                }
            };
            Command::Subscribe(crate::subscribe::Options {
                url,
                token: args
                    .token
                    .ok_or_else(|| Error::Usage("subscribe: --token FILE is required".into()))?,
                hooks_dir: args.hooks_dir,
                state: args.state,
                ca: args.ca,
                ping_interval: args.ping_interval,
                ping_timeout: args.ping_timeout,
                max_backoff: args.max_backoff,
            })
        }
        _ => Command::Sign {
            scheme: args
                .scheme
                .ok_or_else(|| Error::Usage("sign: --scheme is required".into()))?,
            secret: args
                .secret
                .ok_or_else(|| Error::Usage("sign: --secret FILE is required".into()))?,
            id: args.id,
            timestamp: args.timestamp,
        },
    })
}

/// Column at which option help starts.
const HELP_COLUMN: usize = 25;
/// Width help lines are wrapped to.
const HELP_WIDTH: usize = 78;

/// `sockhook --help`.
pub fn help() -> String {
    let mut out =
        String::from("sockhook - socket-activated webhook responder for systemd hosts\n\nUsage:\n");
    for command in &COMMANDS {
        out.push_str(&synopsis(command));
    }
    out.push_str("  sockhook --help | --version\n  sockhook COMMAND --help\n\nCommands:\n");
    for command in &COMMANDS {
        out.push_str(&entry(command.name, command.summary, 10));
    }
    out.push_str("\nOptions:\n");
    let mut seen = Vec::new();
    for option in COMMANDS.iter().flat_map(|c| c.options.iter()) {
        if !seen.contains(&option.name) {
            seen.push(option.name);
            let users: Vec<&str> = COMMANDS
                .iter()
                .filter(|c| c.options.iter().any(|o| o.name == option.name))
                .map(|c| c.name)
                .collect();
            let help = format!("{}: {}", users.join(", "), option.help);
            out.push_str(&entry(&tag(option), &help, HELP_COLUMN));
        }
    }
    out.push_str(&entry("-h, --help", "Show this help", HELP_COLUMN));
    out.push_str(&entry("-V, --version", "Show the version", HELP_COLUMN));
    out.push_str("\nExit status:\n");
    for (code, meaning) in [
        (EXIT_OK, "all well (a refused request is a normal outcome)"),
        (
            EXIT_FAILED,
            "serve: a command failed or timed out; check: a problem was found",
        ),
        (EXIT_CONFIG, "usage or configuration error"),
        (EXIT_BUG, "internal error (a bug: please report it)"),
        (EXIT_SYSTEM, "a system call failed (temporary)"),
    ] {
        out.push_str(&entry(&code.to_string(), meaning, 7));
    }
    out.push_str("\nSee sockhook(8) and sockhook.toml(5).\n");
    out
}

/// `sockhook COMMAND --help`.
fn command_help(command: &Subcommand) -> String {
    let mut out = format!("sockhook {}\n\n", command.name);
    out.push_str(&wrap(command.summary, 0));
    out.push_str("\nUsage:\n");
    out.push_str(&synopsis(command));
    out.push_str("\nOptions:\n");
    for option in command.options {
        out.push_str(&entry(&tag(option), option.help, HELP_COLUMN));
    }
    out.push_str(&entry("-h, --help", "Show this help", HELP_COLUMN));
    out.push_str("\nSee sockhook(8).\n");
    out
}

/// `--name VALUE`, or `--name` for a flag.
fn tag(option: &Opt) -> String {
    match option.value {
        "" => format!("--{}", option.name),
        value => format!("--{} {value}", option.name),
    }
}

/// `  sockhook NAME [--opt VALUE] … OPERANDS`, wrapped under its start.
fn synopsis(command: &Subcommand) -> String {
    let start = format!("  sockhook {} ", command.name);
    let mut words: Vec<String> = command
        .options
        .iter()
        .map(|o| {
            if REQUIRED.contains(&(command.name, o.name)) {
                tag(o)
            } else {
                format!("[{}]", tag(o))
            }
        })
        .collect();
    if !command.operands.is_empty() {
        if command.operands.starts_with('<') {
            words.push(command.operands.into());
        } else {
            words.insert(0, command.operands.into());
        }
    }
    let mut out = String::new();
    let mut line = start.clone();
    for word in words {
        if line.len() + word.len() > HELP_WIDTH && line.len() > start.len() {
            out.push_str(line.trim_end());
            out.push('\n');
            line = " ".repeat(start.len());
        }
        line.push_str(&word);
        line.push(' ');
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}

/// `  TAG   text…`, the text wrapped at [`HELP_WIDTH`] from `column` on.
fn entry(tag: &str, text: &str, column: usize) -> String {
    let mut out = format!("  {tag}");
    let wrapped = wrap(text, column);
    if out.len() + 1 > column {
        out.push('\n');
        out.push_str(&wrapped);
    } else {
        out.push_str(&" ".repeat(column - out.len()));
        out.push_str(wrapped.trim_start());
    }
    out
}

/// `text` in lines of at most [`HELP_WIDTH`] columns, each indented by `indent`.
fn wrap(text: &str, indent: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent + line.len() + 1 + word.len() > HELP_WIDTH {
            let _ = writeln!(out, "{}{line}", " ".repeat(indent));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    let _ = writeln!(out, "{}{line}", " ".repeat(indent));
    out
}

/// Stores an option's value.
fn put<T>(slot: &mut T, value: T) -> Result<(), Error> {
    *slot = value;
    Ok(())
}

/// A value as UTF-8 text.
fn text(name: &str, value: OsString) -> Result<String, Error> {
    value
        .into_string()
        .map_err(|v| Error::Usage(format!("{name}: {v:?} is not UTF-8")))
}

/// A duration in (possibly fractional) seconds; zero only where `zero_ok`.
fn seconds(name: &str, value: OsString, zero_ok: bool) -> Result<Duration, Error> {
    let text = text(name, value)?;
    let secs: f64 = text
        .parse()
        .map_err(|_| Error::Usage(format!("--{name}: {text:?} is not a number of seconds")))?;
    if !secs.is_finite() || secs < 0.0 || (secs == 0.0 && !zero_ok) || secs > 86_400.0 * 365.0 {
        return Err(Error::Usage(format!(
            "--{name}: {text} seconds is out of range"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A positive whole number.
fn count(name: &str, value: OsString) -> Result<usize, Error> {
    let text = text(name, value)?;
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Error::Usage(format!(
            "--{name}: {text:?} is not a positive whole number"
        ))),
    }
}

fn usage(e: lexopt::Error) -> Error {
    Error::Usage(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Command, Error> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn serve_defaults() {
        let Command::Serve(options) = parse_str(&["serve"]).unwrap() else {
            panic!()
        };
        assert_eq!(options.hooks_dir, PathBuf::from(DEFAULT_HOOKS_DIR));
        assert_eq!(options.idle_timeout, None);
        assert_eq!(options.request_timeout, DEFAULT_REQUEST_TIMEOUT);
    }

    #[test]
    fn serve_options() {
        let Command::Serve(options) = parse_str(&[
            "serve",
            "--hooks",
            "/h",
            "--key=/k",
            "--listen",
            "127.0.0.1:1",
            "--idle-timeout",
            "0.5",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(options.hooks_dir, PathBuf::from("/h"));
        assert_eq!(options.key, Some(PathBuf::from("/k")));
        assert_eq!(options.idle_timeout, Some(Duration::from_millis(500)));
    }

    #[test]
    fn options_of_other_commands_are_refused() {
        assert!(parse_str(&["check", "--listen", "x"]).is_err());
        assert!(parse_str(&["serve", "extra"]).is_err());
        assert!(parse_str(&["frobnicate"]).is_err());
        assert!(parse_str(&[]).is_err());
        // Regression test: an unknown option of sign was taken as --secret.
        assert!(parse_str(&["sign", "--frob", "x"]).is_err());
    }

    #[test]
    fn bad_durations_are_refused() {
        assert!(parse_str(&["serve", "--request-timeout", "0"]).is_err());
        assert!(parse_str(&["serve", "--idle-timeout", "-1"]).is_err());
        assert!(parse_str(&["serve", "--idle-timeout", "nan"]).is_err());
    }

    #[test]
    fn token_needs_one_absolute_path() {
        assert!(parse_str(&["token"]).is_err());
        assert!(parse_str(&["token", "hooks/a"]).is_err());
        assert!(parse_str(&["token", "/a", "/b"]).is_err());
        assert_eq!(
            parse_str(&["token", "/hooks/a", "--url-base", "http://h"]).unwrap(),
            Command::Token {
                path: "/hooks/a".into(),
                key: None,
                url_base: Some("http://h".into()),
                hooks_dir: PathBuf::from(DEFAULT_HOOKS_DIR),
            }
        );
    }

    #[test]
    fn sign_takes_only_signature_schemes() {
        assert!(parse_str(&["sign", "--scheme", "token", "--secret", "/s"]).is_err());
        assert!(parse_str(&["sign", "--scheme", "none", "--secret", "/s"]).is_err());
        assert!(matches!(
            parse_str(&["sign", "--scheme", "gitea", "--secret", "/s"]).unwrap(),
            Command::Sign {
                scheme: Scheme::Gitea,
                ..
            }
        ));
    }

    #[test]
    fn each_help_lists_each_of_its_options() {
        let all = help();
        for command in &COMMANDS {
            let Command::Help(own) = parse_str(&[command.name, "--help"]).unwrap() else {
                panic!("{} --help", command.name)
            };
            for option in command.options {
                let tag = format!("--{} {}", option.name, option.value);
                assert!(own.contains(&tag), "{} --help lacks {tag}", command.name);
                assert!(all.contains(&tag), "--help lacks {tag}");
            }
        }
    }

    #[test]
    fn help_lines_fit_the_width() {
        let mut texts = vec![help()];
        texts.extend(COMMANDS.iter().map(command_help));
        for text in texts {
            for line in text.lines() {
                assert!(line.len() <= HELP_WIDTH, "too long: {line:?}");
            }
        }
    }
}
