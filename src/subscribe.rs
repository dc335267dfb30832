//! `sockhook subscribe`: the home side of a relay (doc/relay.md). One
//! outbound websocket to a public sockhook; each message it carries is taken
//! into the delivery journal (synced) and run by the local hook of the same
//! name, an `auth = "relay"` hook, with the same runner as `serve`. The
//! resume point — the relay's epoch and the last sequence number taken per
//! hook — is derived from the journal, so that a restart neither loses a
//! message nor takes one twice.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signalfd::SignalFd;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use sd_notify::NotifyState;
use serde::Deserialize;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::act::{ENV_NAMES, Job, Outcome, Runner, Watch};
use crate::cgroup::Cgroups;
use crate::config::{self, CREDENTIALS_DIRECTORY, Hooks, MISSING_CREDENTIAL, Problem};
use crate::error::{EXIT_OK, Error};
use crate::idle::Activity;
use crate::journal::{self, Journal, Recorder};
use crate::read::{Framing, Spool};
use crate::relay::{ENVELOPE_MAGIC, RESUME_HEADER, SUBPROTOCOL};
use crate::scheme::Scheme;
use crate::{error, info, warning};

/// Time between pings unless `--ping-interval` says otherwise.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Time a ping has for an answer unless `--ping-timeout` says otherwise.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between attempts unless `--max-backoff` says otherwise.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The wait after the first failed attempt; it doubles up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Time for the TCP connection, the TLS handshake and the upgrade together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the loop blocks in a read: how soon a stop or a due ping is seen.
const TICK: Duration = Duration::from_millis(250);
/// Bytes an envelope may have besides its body (the two head lines).
const ENVELOPE_HEAD_BYTES: u64 = 64 * 1024;
/// The system's trust store (Debian's ca-certificates).
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Largest token file read.
const MAX_TOKEN_BYTES: u64 = 4096;

/// What `sockhook subscribe` was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// `wss://HOST[:PORT]/sub/hooks/[NAME]` (or `ws://`).
    pub url: String,
    /// The file holding the subscription token.
    pub token: PathBuf,
    /// Directory of hook files.
    pub hooks_dir: PathBuf,
    /// The journal's state directory; `None`: `$STATE_DIRECTORY`, or none.
    pub state: Option<PathBuf>,
    /// Trust anchors for the relay's certificate; `None`: the system's.
    pub ca: Option<PathBuf>,
    /// Time without traffic before a ping.
    pub ping_interval: Duration,
    /// Time a ping has for an answer before the connection counts as dead.
    pub ping_timeout: Duration,
    /// Longest wait between connection attempts.
    pub max_backoff: Duration,
}

/// The relay's address, as the URL gives it.
#[derive(Debug, Clone, PartialEq)]
struct Url {
    tls: bool,
    /// The host as written, brackets included for IPv6.
    authority_host: String,
    /// The host for DNS and TLS, without brackets.
    host: String,
    port: u16,
    path: String,
}

impl Url {
    fn parse(text: &str) -> Result<Url, Error> {
        let bad = |why: &str| Error::Usage(format!("subscribe: URL {text:?}: {why}"));
        let (tls, rest) = if let Some(rest) = text.strip_prefix("wss://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("ws://") {
            (false, rest)
        } else {
            return Err(bad(
                "give wss://HOST/sub/hooks/ (or ws:// on a trusted network)",
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad(
                "a URL with credentials; the token goes in the --token FILE, never on the command line",
            ));
        }
        if path.contains(['?', '#']) || !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("the path must be plain, e.g. /sub/hooks/"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                let port = port.parse().map_err(|_| bad("the port is not a number"))?;
                (host, port)
            }
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Url {
            tls,
            authority_host: host.to_owned(),
            host: bare.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    /// The URL again, as logged (it never holds the token).
    fn describe(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!(
            "{scheme}://{}:{}{}",
            self.authority_host, self.port, self.path
        )
    }
}

/// The token file's contents: the token alone, one trailing newline trimmed.
fn read_token(path: &Path) -> Result<String, Error> {
    let problem = |message: String| {
        Error::Config(Problem {
            path: path.to_owned(),
            message,
        })
    };
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| problem(format!("cannot read the token file: {e}")))?;
    if let Some(source) = bytes.strip_prefix(MISSING_CREDENTIAL.as_bytes()) {
        return Err(problem(format!(
            "systemd found no {} for this credential (LoadCredential=); put the token from `sockhook token /sub/hooks/` on the relay there",
            String::from_utf8_lossy(source)
        )));
    }
    if bytes.len() as u64 > MAX_TOKEN_BYTES {
        return Err(problem("the token file is too large to be a token".into()));
    }
    let token = bytes
        .strip_suffix(b"\n")
        .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
        .unwrap_or(&bytes);
    if token.is_empty() || !token.iter().all(u8::is_ascii_graphic) {
        return Err(problem(
            "the token file must hold the token alone (printable, no spaces), as `sockhook token /sub/hooks/` prints it on the relay".into(),
        ));
    }
    Ok(String::from_utf8_lossy(token).into_owned())
}

/// The TLS client configuration: the relay's certificate is checked against
/// `ca`, or the system's trust store.
fn tls_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, Error> {
    let path = ca.unwrap_or(Path::new(SYSTEM_CA_FILE));
    let problem = |message: String| {
        Error::Config(Problem {
            path: path.to_owned(),
            message,
        })
    };
    let pem = fs::read(path).map_err(|e| {
        problem(format!(
            "cannot read the trust anchors: {e}{}",
            if ca.is_none() {
                " (install ca-certificates, or pass --ca FILE)"
            } else {
                ""
            }
        ))
    })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| problem(format!("not PEM certificates: {e}")))?;
        // The system store holds a few that webpki cannot use; skip those.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(problem("no usable CA certificate in it".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| problem(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The connection under the websocket.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// One message as the relay sent it (doc/relay.md, "The envelope").
#[derive(Deserialize)]
struct Envelope {
    epoch: String,
    seq: u64,
    hook: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    delivery: String,
    #[serde(default)]
    content_type: String,
    size: u64,
}

/// An envelope's head and its body; `Err` says why it is not one.
fn parse_envelope(data: &[u8]) -> Result<(Envelope, &[u8]), String> {
    let rest = data
        .strip_prefix(ENVELOPE_MAGIC.as_bytes())
        .ok_or("it does not start with \"sockhook-relay 1\"")?;
    let mut lines = rest.splitn(2, |&b| b == b'\n');
    let head = lines.next().ok_or("no head line")?;
    let body = lines.next().ok_or("no body after the head line")?;
    let envelope: Envelope =
        serde_json::from_slice(head).map_err(|e| format!("its head is not valid: {e}"))?;
    if envelope.size != body.len() as u64 {
        return Err(format!(
            "its body has {} bytes, its head says {}",
            body.len(),
            envelope.size
        ));
    }
    if !config::valid_name(&envelope.hook) {
        return Err("its hook is not a valid hook name".into());
    }
    let epoch_ok = !envelope.epoch.is_empty()
        && envelope.epoch.len() <= 64
        && envelope.epoch.bytes().all(|b| b.is_ascii_alphanumeric());
    if !epoch_ok || envelope.seq == 0 {
        return Err("its epoch or seq is not valid".into());
    }
    Ok((envelope, body))
}

/// Where to resume: the relay store's epoch and the last seq taken per hook.
#[derive(Debug, Default, Clone, PartialEq)]
struct Resume {
    epoch: Option<String>,
    last: BTreeMap<String, u64>,
}

impl Resume {
    /// What the journal's entries say, oldest first: the newest epoch, and
    /// per hook the highest seq taken in it.
    fn from_journal(journal: &Journal) -> Resume {
        let mut resume = Resume::default();
        let entries = match journal.entries() {
            Ok((entries, _)) => entries,
            Err(e) => {
                warning!("unable to read the delivery journal for the resume point: {e}");
                return resume;
            }
        };
        for (epoch, hook, seq) in entries
            .iter()
            .filter_map(|e| e.relay.as_deref().and_then(parse_relay))
        {
            resume.take(epoch, hook, seq);
        }
        resume
    }

    /// The resume point: the saved file (see [`Resume::save`]) brought up
    /// to date by the journal. The file is written after every message
    /// taken, so only an entry the journal got just before a crash can be
    /// newer: one of the file's epoch counts by its seq, one of another
    /// epoch only if it was received after the file was written. Without
    /// the file, a journal whose size cap pruned a hook's entries would
    /// lose that hook's resume point and run the relay's stored messages
    /// again.
    fn load(file: &Path, journal: &Journal) -> Resume {
        let Some((mut resume, written_ms)) = Resume::read(file) else {
            return Resume::from_journal(journal);
        };
        match journal.entries() {
            Ok((entries, _)) => {
                for entry in &entries {
                    let Some((epoch, hook, seq)) = entry.relay.as_deref().and_then(parse_relay)
                    else {
                        continue;
                    };
                    if resume.epoch.as_deref() == Some(epoch) || entry.received_ms >= written_ms {
                        resume.take(epoch, hook, seq);
                    }
                }
            }
            Err(e) => warning!("unable to read the delivery journal for the resume point: {e}"),
        }
        resume
    }

    /// The saved resume point and when it was written (ms since 1970):
    /// `written MS` then the `Sockhook-Resume` value, a line each.
    fn read(file: &Path) -> Option<(Resume, u64)> {
        let text = match fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                warning!(
                    "unable to read the resume point {}: {e}; using the journal's",
                    file.display()
                );
                return None;
            }
        };
        let mut lines = text.lines();
        let written = lines.next()?.strip_prefix("written ")?.parse().ok()?;
        let mut words = lines.next()?.split(' ');
        let epoch = words.next()?;
        let mut resume = Resume {
            epoch: Some(epoch.to_owned()),
            ..Resume::default()
        };
        for word in words {
            let (hook, seq) = word.split_once('=')?;
            resume.take(epoch, hook, seq.parse().ok()?);
        }
        Some((resume, written))
    }

    /// Writes the resume point to `file`, synced, by a rename so that a
    /// crash leaves the old or the new one.
    fn save(&self, file: &Path) -> io::Result<()> {
        let Some(value) = self.header() else {
            return Ok(());
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let tmp = file.with_extension("tmp");
        let mut out = fs::File::create(&tmp)?;
        out.write_all(format!("written {now}\n{value}\n").as_bytes())?;
        out.sync_data()?;
        fs::rename(&tmp, file)?;
        if let Some(dir) = file.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Counts message `seq` of `hook` in store `epoch` as taken.
    fn take(&mut self, epoch: &str, hook: &str, seq: u64) {
        if self.epoch.as_deref() != Some(epoch) {
            self.epoch = Some(epoch.to_owned());
            self.last.clear();
        }
        let last = self.last.entry(hook.to_owned()).or_default();
        *last = (*last).max(seq);
    }

    /// The `Sockhook-Resume` value; `None` on a first start.
    fn header(&self) -> Option<String> {
        let mut value = self.epoch.clone()?;
        for (hook, seq) in &self.last {
            value.push_str(&format!(" {hook}={seq}"));
        }
        Some(value)
    }
}

/// A journal entry's `relay EPOCH HOOK SEQ` value, split.
fn parse_relay(relay: &str) -> Option<(&str, &str, u64)> {
    let mut words = relay.split(' ');
    Some((words.next()?, words.next()?, words.next()?.parse().ok()?))
}

/// The file that keeps the resume point, in the state directory.
pub const RESUME_FILE: &str = "relay-resume";

/// What `systemctl status` shows: the connection and the last run.
#[derive(Default)]
struct Status {
    text: Mutex<(String, String)>,
}

impl Status {
    fn connection(&self, what: String) {
        let mut text = self.text.lock().unwrap_or_else(|e| e.into_inner());
        text.0 = what;
        notify(&text);
    }

    fn ran(&self, what: String) {
        let mut text = self.text.lock().unwrap_or_else(|e| e.into_inner());
        text.1 = what;
        notify(&text);
    }
}

fn notify(text: &(String, String)) {
    let line = match text.1.as_str() {
        "" => text.0.clone(),
        last => format!("{}; last run: {last}", text.0),
    };
    let _ = sd_notify::notify(&[NotifyState::Status(&line)]);
}

/// Tells [`Status`] how the run of a message ended.
struct Reporter {
    what: String,
    status: Arc<Status>,
    /// Covered by the run of a newer message, whose own reporter says it.
    coalesced: bool,
}

impl Watch for Reporter {
    fn coalesced(&mut self, _ticket: u64) {
        self.coalesced = true;
    }

    fn ended(self: Box<Self>, outcome: &Outcome) {
        if !self.coalesced {
            self.status
                .ran(format!("{} {}", self.what, outcome.describe()));
        }
    }

    fn dropped(self: Box<Self>, _why: crate::act::Dropped) {}
}

/// Why a connection ended.
enum Ended {
    /// sockhook is stopping.
    Stopped,
    /// The connection failed or closed: why, and whether it had been of use
    /// (then the next attempt starts from the first backoff).
    Lost { why: String, useful: bool },
}

/// The subscriber's state across connections.
struct Subscriber {
    url: Url,
    token: String,
    tls: Option<Arc<ClientConfig>>,
    options: Options,
    hooks: Hooks,
    journal: Option<Journal>,
    runner: Runner,
    resume: Resume,
    /// Where the resume point is saved after each message taken.
    resume_file: Option<PathBuf>,
    status: Arc<Status>,
    signals: SignalFd,
    stopping: bool,
}

/// Runs until SIGTERM/SIGINT; returns the exit code.
pub fn subscribe(options: &Options) -> Result<u8, Error> {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("starting")]);
    let url = Url::parse(&options.url)?;
    let token = read_token(&options.token)?;
    let tls = match url.tls {
        true => Some(tls_config(options.ca.as_deref())?),
        false => {
            warning!(
                "{}: ws:// is neither encrypted nor authenticated; the token and every message cross the network in clear (use wss:// beyond loopback or a trusted LAN)",
                url.describe()
            );
            None
        }
    };
    if let Err(e) = fs::read_dir(&options.hooks_dir) {
        return Err(Error::Config(Problem {
            path: options.hooks_dir.clone(),
            message: format!("cannot read the hooks directory: {e}; create it or pass --hooks DIR"),
        }));
    }
    let signals = crate::serve::stop_signals()?;
    let credentials = std::env::var_os(CREDENTIALS_DIRECTORY).map(PathBuf::from);
    let hooks = config::load(&options.hooks_dir, credentials.as_deref());
    for problem in hooks.problems() {
        error!("{problem}; its messages are skipped");
    }
    let relay_hooks: Vec<&str> = hooks
        .iter()
        .filter(|(_, h)| matches!(h, Ok(h) if h.scheme == Scheme::Relay))
        .map(|(name, _)| name)
        .collect();
    if relay_hooks.is_empty() {
        warning!(
            "no hook with auth = \"relay\" in {}: every message is skipped until one is added",
            options.hooks_dir.display()
        );
    }
    // The wake-up pipe is for serve's event loop; here it is only kept open.
    let (activity, _wake) = Activity::new().map_err(|e| Error::system("create a pipe", e))?;
    let journal = open_journal(options.state.as_deref());
    let runner = Runner::new(
        Arc::clone(&activity),
        Cgroups::detect(),
        journal.as_ref().map(Journal::locks),
    );
    let resume_file = journal
        .as_ref()
        .and_then(|_| Journal::state_dir(options.state.as_deref()))
        .map(|state| state.join(RESUME_FILE));
    let resume = match (&journal, &resume_file) {
        (Some(journal), Some(file)) => Resume::load(file, journal),
        (Some(journal), None) => Resume::from_journal(journal),
        _ => Resume::default(),
    };
    if let Some(journal) = &journal {
        journal::resume(journal, &hooks, &runner);
    }
    info!(
        "subscribing to {} for hooks: {}; resuming from {}",
        url.describe(),
        relay_hooks.join(" "),
        resume
            .header()
            .unwrap_or_else(|| "live messages (first start)".into())
    );
    let mut subscriber = Subscriber {
        url,
        token,
        tls,
        options: options.clone(),
        hooks,
        journal,
        runner,
        resume,
        resume_file,
        status: Arc::default(),
        signals,
        stopping: false,
    };
    subscriber.run();
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    subscriber.runner.stop();
    while activity.runs() > 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let failures = subscriber.runner.failures();
    info!("exiting (stopped): {failures} run(s) failed");
    Ok(EXIT_OK)
}

impl Subscriber {
    /// Connects, takes messages, and reconnects with backoff, until stopped.
    fn run(&mut self) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            self.status
                .connection(format!("connecting to {}", self.url.describe()));
            let why = match self.connect() {
                Ok((ws, peer)) => {
                    info!("connected to {}", self.url.describe());
                    self.status.connection(format!(
                        "connected to {} since {}",
                        self.url.describe(),
                        crate::respond::http_date(std::time::SystemTime::now())
                    ));
                    match self.session(ws, peer) {
                        Ended::Stopped => return,
                        Ended::Lost { why, useful } => {
                            if useful {
                                backoff = FIRST_BACKOFF;
                            }
                            why
                        }
                    }
                }
                Err(why) => why,
            };
            if self.stop_requested() {
                return;
            }
            let delay = jitter(backoff);
            // A refused token does not mend itself: an error, not a warning.
            let level = match why.contains("refused the token") {
                true => crate::log::Level::Error,
                false => crate::log::Level::Warning,
            };
            crate::log::line(
                level,
                format_args!(
                    "{}: {why}; reconnecting in {:.1} s",
                    self.url.describe(),
                    delay.as_secs_f64()
                ),
            );
            self.status.connection(format!(
                "reconnecting to {} in {:.1} s: {why}",
                self.url.describe(),
                delay.as_secs_f64()
            ));
            let until = Instant::now() + delay;
            while Instant::now() < until {
                if self.stop_requested() {
                    return;
                }
                std::thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
            }
            backoff = (backoff * 2).min(self.options.max_backoff);
        }
    }

    /// Whether SIGTERM or SIGINT came.
    fn stop_requested(&mut self) -> bool {
        if !self.stopping && matches!(self.signals.read_signal(), Ok(Some(_))) {
            info!("stopping: no more messages are taken");
            self.stopping = true;
        }
        self.stopping
    }

    /// The largest message accepted: the largest `max_body` of the relay
    /// hooks here (the default without any) and the envelope's head.
    fn max_message(&self) -> u64 {
        self.hooks
            .iter()
            .filter_map(|(_, h)| h.as_ref().ok().filter(|h| h.scheme == Scheme::Relay))
            .map(|h| h.max_body)
            .max()
            .unwrap_or(config::DEFAULT_MAX_BODY_BYTES)
            + ENVELOPE_HEAD_BYTES
    }

    /// A websocket to the relay, upgraded with the envelope's subprotocol
    /// and the resume point; the relay's address.
    fn connect(&mut self) -> Result<(WebSocket<Stream>, IpAddr), String> {
        let addrs = (self.url.host.as_str(), self.url.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.url.host))?;
        let mut last = format!("{} has no address", self.url.host);
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(e) => last = format!("cannot connect to {addr}: {e}"),
            }
        }
        let tcp = tcp.ok_or(last)?;
        let peer = tcp.peer_addr().map_err(|e| e.to_string())?.ip();
        let _ = tcp.set_nodelay(true);
        tcp.set_read_timeout(Some(CONNECT_TIMEOUT))
            .and_then(|()| tcp.set_write_timeout(Some(CONNECT_TIMEOUT)))
            .map_err(|e| e.to_string())?;
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some(config) => {
                let name = ServerName::try_from(self.url.host.clone())
                    .map_err(|e| format!("{:?} is not a TLS server name: {e}", self.url.host))?;
                let connection = ClientConnection::new(Arc::clone(config), name)
                    .map_err(|e| format!("TLS: {e}"))?;
                Stream::Tls(Box::new(StreamOwned::new(connection, tcp)))
            }
        };
        let target = format!(
            "{}://{}:{}{}",
            if self.url.tls { "wss" } else { "ws" },
            self.url.authority_host,
            self.url.port,
            self.url.path
        );
        let mut request = target
            .into_client_request()
            .map_err(|e| format!("bad URL: {e}"))?;
        let headers = request.headers_mut();
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", self.token))
            .map_err(|_| "the token is not a valid header value".to_owned())?;
        authorization.set_sensitive(true);
        headers.insert("authorization", authorization);
        headers.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        if let Some(resume) = self.resume.header() {
            let value = HeaderValue::from_str(&resume)
                .map_err(|_| "the resume point is not a valid header value".to_owned())?;
            headers.insert(RESUME_HEADER, value);
        }
        let max = usize::try_from(self.max_message()).unwrap_or(usize::MAX);
        let config = WebSocketConfig::default()
            .read_buffer_size(64 * 1024)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let (ws, response) = match tungstenite::client::client_with_config(
            request,
            stream,
            Some(config),
        ) {
            Ok(done) => done,
            Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                let status = response.status();
                let hint = match status.as_u16() {
                    401 | 403 => {
                        "; the relay refused the token: put the one `sockhook token PATH` prints on the relay for this URL's path in the --token file"
                    }
                    404 => "; the relay publishes nothing at this path",
                    _ => "",
                };
                return Err(format!("the relay answered the upgrade {status}{hint}"));
            }
            Err(HandshakeError::Failure(e)) => return Err(describe(&e)),
            Err(HandshakeError::Interrupted(_)) => {
                return Err(format!("no upgrade within {} s", CONNECT_TIMEOUT.as_secs()));
            }
        };
        let agreed = response
            .headers()
            .get("sec-websocket-protocol")
            .is_some_and(|v| v.as_bytes() == SUBPROTOCOL.as_bytes());
        if !agreed {
            return Err(format!(
                "the relay did not agree to the {SUBPROTOCOL} subprotocol (not a sockhook relay?)"
            ));
        }
        let tcp = ws.get_ref().tcp();
        tcp.set_read_timeout(Some(TICK.min(self.options.ping_timeout)))
            .and_then(|()| tcp.set_write_timeout(Some(self.options.ping_timeout)))
            .map_err(|e| e.to_string())?;
        Ok((ws, peer))
    }

    /// Takes messages until the connection ends or sockhook stops.
    fn session(&mut self, mut ws: WebSocket<Stream>, peer: IpAddr) -> Ended {
        let mut heard = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let mut useful = false;
        let lost = |why: String, useful: bool| Ended::Lost { why, useful };
        loop {
            if self.stop_requested() {
                let _ = ws.close(None);
                let _ = ws.flush();
                let _ = ws.get_ref().tcp().shutdown(Shutdown::Both);
                return Ended::Stopped;
            }
            match ws.read() {
                Ok(Message::Binary(data)) => {
                    heard = Instant::now();
                    ping_sent = None;
                    useful = true;
                    if let Err(why) = self.take(&data, peer) {
                        let _ = ws.get_ref().tcp().shutdown(Shutdown::Both);
                        return lost(why, useful);
                    }
                }
                Ok(Message::Text(_)) => {
                    heard = Instant::now();
                    warning!("a text message from the relay was ignored: envelopes are binary");
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {
                    heard = Instant::now();
                    ping_sent = None;
                    useful = true;
                    // A pong to a ping is queued by read; send it now.
                    let _ = ws.flush();
                }
                Ok(Message::Close(frame)) => {
                    let _ = ws.flush();
                    let why = frame.map_or("the relay closed the connection".into(), |f| {
                        format!("the relay closed the connection ({} {})", f.code, f.reason)
                    });
                    return lost(why, useful);
                }
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    match ping_sent {
                        Some(sent) if sent.elapsed() >= self.options.ping_timeout => {
                            let _ = ws.get_ref().tcp().shutdown(Shutdown::Both);
                            return lost(
                                format!(
                                    "nothing from the relay within {:.1} s of a ping (a dead connection or NAT mapping)",
                                    self.options.ping_timeout.as_secs_f64()
                                ),
                                useful,
                            );
                        }
                        Some(_) => {}
                        None if heard.elapsed() >= self.options.ping_interval => {
                            ping_sent = Some(Instant::now());
                            match ws.send(Message::Ping(Vec::new().into())) {
                                Ok(()) => {}
                                Err(tungstenite::Error::Io(e))
                                    if e.kind() == io::ErrorKind::WouldBlock => {}
                                Err(e) => return lost(describe(&e), useful),
                            }
                        }
                        None => {}
                    }
                }
                Err(tungstenite::Error::Capacity(e)) => {
                    return lost(
                        format!(
                            "a message over {} bytes ({e}): raise max_body of the relay hooks here to take it",
                            self.max_message()
                        ),
                        useful,
                    );
                }
                Err(e) => return lost(describe(&e), useful),
            }
        }
    }

    /// Takes one message: journaled (synced), then run by its hook.
    /// `Err` (the connection is closed, the relay keeps the message) when it
    /// cannot be stored.
    fn take(&mut self, data: &[u8], peer: IpAddr) -> Result<(), String> {
        let (envelope, body) = match parse_envelope(data) {
            Ok(parsed) => parsed,
            Err(why) => {
                error!("a message from the relay is not an envelope ({why}); skipped");
                return Ok(());
            }
        };
        let Envelope {
            epoch, seq, hook, ..
        } = &envelope;
        if self.resume.epoch.as_deref() != Some(epoch) {
            if let Some(old) = &self.resume.epoch {
                warning!(
                    "the relay's store is new (epoch {old} → {epoch}): its sequence numbers start over"
                );
            }
            self.resume.epoch = Some(epoch.clone());
            self.resume.last.clear();
        }
        let last = self.resume.last.get(hook).copied();
        match last {
            Some(last) if *seq <= last => {
                info!("hook {hook}: message {seq} was already taken (last {last}); dropped");
                return Ok(());
            }
            Some(last) if *seq > last + 1 => warning!(
                "hook {hook}: {} message(s) ({}..{}) were dropped by the relay's retention before they could be taken",
                seq - last - 1,
                last + 1,
                seq - 1
            ),
            _ => {}
        }
        if self.hooks.changed(Some(hook)) {
            self.hooks = self.hooks.reload();
            info!(
                "hook files changed: reloaded {} hook(s)",
                self.hooks.iter().count()
            );
        }
        let found = match self.hooks.get_entry(hook) {
            Some((_, Ok(found))) if found.scheme == Scheme::Relay => {
                if body.len() as u64 > found.max_body {
                    Err(format!(
                        "its body has {} bytes, over the hook's max_body {}",
                        body.len(),
                        found.max_body
                    ))
                } else {
                    Ok(Arc::clone(found))
                }
            }
            Some((_, Ok(other))) => Err(format!(
                "the hook here has auth = \"{}\", not \"relay\"",
                other.scheme.name()
            )),
            Some((_, Err(problem))) => Err(format!("the hook here is broken ({problem})")),
            None => Err(format!(
                "no hook {hook} in {}",
                self.options.hooks_dir.display()
            )),
        };
        let found = match found {
            Ok(found) => found,
            Err(why) => {
                warning!("hook {hook}: message {seq} skipped: {why}; its seq still advances");
                self.taken(epoch, hook, *seq);
                return Ok(());
            }
        };
        // The hook's [env] from the JSON body, as serve sets it; a field the
        // hook requires and the body lacks skips the message like a bad hook.
        let fields = match &found.filters.env {
            Some(env) => match env.extract(body) {
                Ok(fields) => fields,
                Err(why) => {
                    warning!(
                        "hook {hook}: message {seq} skipped: cannot set the hook's [env]: {why}; its seq still advances"
                    );
                    self.taken(epoch, hook, *seq);
                    return Ok(());
                }
            },
            None => Vec::new(),
        };
        let mut spool =
            Spool::new(Framing::Length(body.len() as u64)).map_err(|e| e.to_string())?;
        spool.write(body).map_err(|e| e.to_string())?;
        let body = spool.finish().map_err(|e| e.to_string())?;
        let env: [std::ffi::OsString; ENV_NAMES.len()] = [
            hook.into(),
            "".into(),
            "".into(),
            "".into(),
            peer.to_string().into(),
            envelope.event.as_str().into(),
            envelope.delivery.as_str().into(),
            envelope.content_type.as_str().into(),
        ];
        let mut job =
            Job::restore(found, env, body, self.runner.ticket(), false).relayed(epoch, hook, *seq);
        job.set_fields(fields);
        if let Some(journal) = &self.journal {
            match journal.record(&job, b"", None) {
                Ok(pending) => job.watch(Box::new(Recorder::new(pending))),
                Err(refusal) => {
                    return Err(format!(
                        "hook {hook}: message {seq} could not be journaled ({refusal}); the relay keeps it"
                    ));
                }
            }
        }
        job.watch(Box::new(Reporter {
            what: format!("{hook} message {seq}"),
            status: Arc::clone(&self.status),
            coalesced: false,
        }));
        info!("hook {hook}: message {seq} taken");
        self.taken(epoch, hook, *seq);
        self.runner.trigger(job);
        Ok(())
    }
}

impl Subscriber {
    /// Counts a message as taken and saves the resume point; a save that
    /// fails is logged (the journal still holds the point until pruned).
    fn taken(&mut self, epoch: &str, hook: &str, seq: u64) {
        self.resume.take(epoch, hook, seq);
        if let Some(file) = &self.resume_file
            && let Err(e) = self.resume.save(file)
        {
            warning!("unable to save the resume point in {}: {e}", file.display());
        }
    }
}

/// A websocket or TLS error in words.
fn describe(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(io) => match io.get_ref() {
            Some(inner) => format!("{inner}"),
            None => io.to_string(),
        },
        other => other.to_string(),
    }
}

/// `base` less up to half of it, at random, so that many subscribers that
/// lost one relay do not all come back at once.
fn jitter(base: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut byte = [0u8; 2];
    let random = ring::rand::SystemRandom::new()
        .fill(&mut byte)
        .map_or(0, |()| u16::from_le_bytes(byte));
    base.mul_f64(1.0 - f64::from(random) / f64::from(u16::MAX) / 2.0)
}

/// The journal under `--state` or `$STATE_DIRECTORY`; `None`, said once, without one.
fn open_journal(state: Option<&Path>) -> Option<Journal> {
    let Some(state) = Journal::state_dir(state) else {
        warning!(
            "no delivery journal: no StateDirectory= and no --state; a restart resumes from live messages only, and a run a crash interrupts is lost"
        );
        return None;
    };
    let journal = Journal::new(&state, journal::DEFAULT_KEEP, journal::DEFAULT_MAX_BYTES);
    if let Err(e) = journal.prepare() {
        error!(
            "unable to make the delivery journal in {}: {e}; messages are left with the relay until it can be written",
            state.display()
        );
    }
    Some(journal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = Url::parse("wss://relay.example.org/sub/hooks/").unwrap();
        assert_eq!(
            (url.tls, url.host.as_str(), url.port, url.path.as_str()),
            (true, "relay.example.org", 443, "/sub/hooks/")
        );
        let url = Url::parse("ws://[::1]:8080/sub/hooks/kodi").unwrap();
        assert_eq!((url.tls, url.host.as_str(), url.port), (false, "::1", 8080));
        assert_eq!(url.describe(), "ws://[::1]:8080/sub/hooks/kodi");
        assert!(Url::parse("https://relay/sub/hooks/").is_err());
        assert!(Url::parse("wss://token@relay/sub/hooks/").is_err());
        assert!(Url::parse("wss://relay:x/sub/hooks/").is_err());
        assert!(Url::parse("wss:///sub/hooks/").is_err());
    }

    #[test]
    fn envelopes() {
        let good = b"sockhook-relay 1\n{\"epoch\":\"9f2c41d07a3be5e1\",\"seq\":42,\"hook\":\"kodi\",\"event\":\"push\",\"delivery\":\"d\",\"content_type\":\"text/plain\",\"received\":1,\"size\":3}\nabc";
        let (envelope, body) = parse_envelope(good).unwrap();
        assert_eq!(
            (envelope.seq, envelope.hook.as_str(), body),
            (42, "kodi", &b"abc"[..])
        );
        let short =
            b"sockhook-relay 1\n{\"epoch\":\"e\",\"seq\":1,\"hook\":\"kodi\",\"size\":4}\nabc";
        assert!(parse_envelope(short).is_err());
        let traversal =
            b"sockhook-relay 1\n{\"epoch\":\"e\",\"seq\":1,\"hook\":\"../x\",\"size\":0}\n";
        assert!(parse_envelope(traversal).is_err());
        assert!(parse_envelope(b"hello").is_err());
    }

    #[test]
    fn resume_points_follow_the_newest_epoch() {
        let mut resume = Resume::default();
        assert_eq!(resume.header(), None);
        resume.take("aa", "kodi", 3);
        resume.take("aa", "deploy", 7);
        resume.take("aa", "kodi", 2);
        assert_eq!(resume.header().unwrap(), "aa deploy=7 kodi=3");
        resume.take("bb", "kodi", 1);
        assert_eq!(resume.header().unwrap(), "bb kodi=1");
    }

    #[test]
    fn jitter_stays_within_half() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(4));
            assert!(d >= Duration::from_secs(2) && d <= Duration::from_secs(4));
        }
    }
}
