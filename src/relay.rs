//! The relay: hooks with `publish = true` store each accepted delivery and
//! fan it out to websocket subscribers of `/sub/hooks/NAME` and
//! `/sub/hooks/` (doc/relay.md is the contract with `sockhook subscribe`).
//!
//! The store is a directory per hook under the state directory, one file per
//! message holding its envelope exactly as it goes on the wire; a file is
//! written, synced, renamed into place and the directory synced before the
//! sender's 2xx, as the delivery journal does. The worker that stored a
//! message queues it for the event loop, which sends it to the subscribers:
//! the sender's answer never waits on them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tungstenite::Message as Frame;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

use crate::config::Hook;
use crate::error::Refusal;
use crate::read::{Framing, Head};
use crate::request::Config;
use crate::scheme::Scheme;
use crate::tls::Transport;
use crate::verify;

/// Where subscribers connect: `/sub/hooks/NAME`, or this for every hook.
pub const SUB_PREFIX: &str = "/sub/hooks/";
/// Every path under this is the relay's, answered here and never as a hook.
pub const SUB_ROOT: &str = "/sub/";
/// The subprotocol of the envelope (doc/relay.md).
pub const SUBPROTOCOL: &str = "sockhook.relay.1";
/// The first line of every envelope.
pub const ENVELOPE_MAGIC: &str = "sockhook-relay 1\n";
/// Where a subscriber says what it already has.
pub const RESUME_HEADER: &str = "sockhook-resume";
/// hookbot's opt-in for subscribing to a hook anyone may publish to.
pub const UNSAFE_HEADER: &str = "x-hookbot-unsafe-is-ok";
/// The value [`UNSAFE_HEADER`] must have.
pub const UNSAFE_VALUE: &str = "I understand the security implications";
/// Subscribers at once unless `--max-subscribers` says otherwise.
pub const DEFAULT_MAX_SUBSCRIBERS: usize = 4096;
/// The largest frame, and message, a subscriber may send.
pub const MAX_INCOMING_BYTES: usize = 4096;
/// Bytes a subscriber may send without completing a message (pings and
/// pongs complete one): more is a fragmented message that never ends.
pub const MAX_UNFINISHED_BYTES: usize = 2 * MAX_INCOMING_BYTES;
/// A subscriber that sends nothing for this long is closed.
pub const IDLE_CLOSE: Duration = Duration::from_secs(120);
/// How often the relay pings a subscriber.
pub const PING_EVERY: Duration = Duration::from_secs(30);
/// Bytes of live messages queued for one subscriber past what it is being
/// sent; a subscriber that would need more does not read: it is closed and
/// resumes later. The messages are shared between subscribers, not copied.
pub const SEND_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Control frames (pongs, the close) waiting for one subscriber; past it
/// the subscriber pings faster than it reads.
pub const MAX_CONTROL_BYTES: usize = 64 * 1024;

/// One stored message: its envelope, exactly as `sockhook.relay.1` sends it.
#[derive(Debug)]
pub struct Message {
    /// The topic: the hook's name.
    pub hook: String,
    /// Its sequence number in the hook.
    pub seq: u64,
    /// The envelope: two lines, then the body.
    pub bytes: Vec<u8>,
    /// Where the body starts in `bytes`.
    pub body_at: usize,
}

impl Message {
    /// A stored envelope read back.
    fn parse(hook: &str, seq: u64, bytes: Vec<u8>) -> io::Result<Message> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "not a relay envelope");
        if !bytes.starts_with(ENVELOPE_MAGIC.as_bytes()) {
            return Err(bad());
        }
        let rest = &bytes[ENVELOPE_MAGIC.len()..];
        let line = rest.iter().position(|&b| b == b'\n').ok_or_else(bad)?;
        let body_at = ENVELOPE_MAGIC.len() + line + 1;
        Ok(Message {
            hook: hook.to_owned(),
            seq,
            bytes,
            body_at,
        })
    }
}

/// What the envelope says of a delivery besides its body.
pub struct Meta {
    /// The sender's event, or empty.
    pub event: String,
    /// The sender's delivery id, or empty for the relay's own.
    pub delivery: String,
    /// The body's media type, or empty.
    pub content_type: String,
}

/// What the store knows of one hook's messages.
#[derive(Default)]
struct Index {
    /// The last sequence number given out.
    last: u64,
    /// The messages kept, oldest first: sequence number and file size.
    kept: VecDeque<(u64, u64)>,
    bytes: u64,
}

/// The relay's store under `STATE/relay/`.
///
/// Three locks, so that the event loop never waits for a disk: `writing`
/// is held by the worker storing a message, across its fsyncs; `hooks` and
/// `live` only for a moment, by the workers and the loop.
pub struct Store {
    dir: PathBuf,
    epoch: String,
    /// Held while a message is written: one at a time, in sequence order.
    writing: Mutex<()>,
    hooks: Mutex<HashMap<String, Index>>,
    /// Stored messages the event loop has not fanned out yet, in order.
    live: Mutex<VecDeque<Arc<Message>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// Opens the store under `state`, making it (and its epoch) if need be.
    pub fn open(state: &Path) -> io::Result<Store> {
        let dir = state.join("relay");
        fs::create_dir_all(dir.join("hooks"))?;
        let epoch = match fs::read_to_string(dir.join("epoch")) {
            Ok(text) if is_epoch(text.trim()) => text.trim().to_owned(),
            Ok(_) => return Err(io::Error::other("relay/epoch is not 16 hex digits")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => make_epoch(&dir)?,
            Err(e) => return Err(e),
        };
        let mut hooks = HashMap::new();
        for entry in fs::read_dir(dir.join("hooks"))? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            hooks.insert(name, scan(&entry.path())?);
        }
        Ok(Store {
            dir,
            epoch,
            writing: Mutex::new(()),
            hooks: Mutex::new(hooks),
            live: Mutex::new(VecDeque::new()),
        })
    }

    /// The epoch, 16 hex digits chosen when the store was made.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn hook_dir(&self, hook: &str) -> PathBuf {
        self.dir.join("hooks").join(hook)
    }

    /// Stores a delivery of `hook`, synced, and queues it for the
    /// subscribers; returns its sequence number. Refused (503) when it
    /// cannot be stored: then nothing is stored and nothing published.
    pub fn publish(&self, hook: &Hook, meta: &Meta, body: &[u8]) -> Result<u64, Refusal> {
        let Some(publish) = hook.publish else {
            return Err(Refusal::internal(
                "publish",
                io::Error::other("the hook does not publish"),
            ));
        };
        let _writing = lock(&self.writing);
        let seq = lock(&self.hooks).get(&hook.name).map_or(0, |i| i.last) + 1;
        let received = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let delivery = match meta.delivery.is_empty() {
            true => format!("{received}-{}-{seq}", std::process::id()),
            false => meta.delivery.clone(),
        };
        let json = format!(
            "{{\"epoch\":\"{}\",\"seq\":{seq},\"hook\":{},\"event\":{},\"delivery\":{},\"content_type\":{},\"received\":{received},\"size\":{}}}\n",
            self.epoch,
            quote(&hook.name),
            quote(&meta.event),
            quote(&delivery),
            quote(&meta.content_type),
            body.len()
        );
        let mut bytes = Vec::with_capacity(ENVELOPE_MAGIC.len() + json.len() + body.len());
        bytes.extend_from_slice(ENVELOPE_MAGIC.as_bytes());
        bytes.extend_from_slice(json.as_bytes());
        let body_at = bytes.len();
        bytes.extend_from_slice(body);
        let dir = self.hook_dir(&hook.name);
        write_synced(&dir, seq, &bytes).map_err(Refusal::NotStored)?;
        let mut dropped = Vec::new();
        {
            let mut hooks = lock(&self.hooks);
            let index = hooks.entry(hook.name.clone()).or_default();
            index.last = seq;
            index.kept.push_back((seq, bytes.len() as u64));
            index.bytes += bytes.len() as u64;
            while index.kept.len() > 1
                && (index.kept.len() > publish.keep || index.bytes > publish.max_bytes)
            {
                let Some((old, size)) = index.kept.pop_front() else {
                    break;
                };
                index.bytes -= size;
                dropped.push(old);
            }
        }
        lock(&self.live).push_back(Arc::new(Message {
            hook: hook.name.clone(),
            seq,
            bytes,
            body_at,
        }));
        for old in dropped {
            // A file left behind is only dropped again at the next start.
            let _ = fs::remove_file(dir.join(file_name(old)));
        }
        Ok(seq)
    }

    /// The messages stored and not yet fanned out, in order.
    pub fn take_live(&self) -> VecDeque<Arc<Message>> {
        std::mem::take(&mut lock(&self.live))
    }

    /// The last sequence number of every hook that has published.
    pub fn lasts(&self) -> HashMap<String, u64> {
        lock(&self.hooks)
            .iter()
            .map(|(name, index)| (name.clone(), index.last))
            .collect()
    }

    /// The sequence numbers kept for `hook` above `after`, oldest first.
    pub fn kept_after(&self, hook: &str, after: u64) -> Vec<u64> {
        lock(&self.hooks).get(hook).map_or_else(Vec::new, |index| {
            index
                .kept
                .iter()
                .map(|&(seq, _)| seq)
                .filter(|&seq| seq > after)
                .collect()
        })
    }

    /// Reads stored message `seq` of `hook`; `None` if retention dropped it.
    pub fn load(&self, hook: &str, seq: u64) -> io::Result<Option<Message>> {
        let mut bytes = Vec::new();
        match File::open(self.hook_dir(hook).join(file_name(seq))) {
            Ok(mut file) => file.read_to_end(&mut bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Message::parse(hook, seq, bytes).map(Some)
    }
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.msg")
}

fn is_epoch(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A new epoch, written and synced before it is used.
fn make_epoch(dir: &Path) -> io::Result<String> {
    let mut random = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| io::Error::other("no random bytes for the relay's epoch"))?;
    let epoch = verify::hex(&random);
    let tmp = dir.join("epoch.tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(format!("{epoch}\n").as_bytes())?;
    file.sync_data()?;
    fs::rename(&tmp, dir.join("epoch"))?;
    File::open(dir)?.sync_all()?;
    Ok(epoch)
}

/// The index of one hook's directory; half-written files are removed.
fn scan(dir: &Path) -> io::Result<Index> {
    let mut kept = BTreeMap::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
            continue;
        }
        let Some(seq) = name
            .strip_suffix(".msg")
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        kept.insert(seq, entry.metadata()?.len());
    }
    Ok(Index {
        last: kept.keys().next_back().copied().unwrap_or(0),
        bytes: kept.values().sum(),
        kept: kept.into_iter().collect(),
    })
}

/// Writes message `seq` into `dir`: data synced, renamed into place,
/// directory synced, so a crash leaves the whole message or none.
fn write_synced(dir: &Path, seq: u64, bytes: &[u8]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{seq:020}.tmp"));
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_data()
        })
        .and_then(|()| fs::rename(&tmp, dir.join(file_name(seq))))
        .and_then(|()| File::open(dir)?.sync_all());
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(dir.join(file_name(seq)));
    }
    written
}

/// A JSON string.
fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

/// What a subscriber subscribed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// One hook.
    One(String),
    /// Every published hook (`/sub/hooks/`).
    All,
}

impl Topic {
    /// Whether a message of `hook` goes to this subscriber.
    pub fn covers(&self, hook: &str) -> bool {
        match self {
            Topic::One(name) => name == hook,
            Topic::All => true,
        }
    }
}

/// An accepted upgrade: what the subscriber gets, and the 101 to send it.
#[derive(Debug)]
pub struct Upgrade {
    /// What it subscribed to.
    pub topic: Topic,
    /// It speaks `sockhook.relay.1` (else hookbot's framing).
    pub envelope: bool,
    /// Where it resumes: the last sequence number it has, per hook; `None`
    /// for live messages only.
    pub resume: Option<HashMap<String, u64>>,
    /// The `101 Switching Protocols` response.
    pub response: Vec<u8>,
}

/// Judges a request for a `/sub/` path: the upgrade, the token, the hook.
pub fn upgrade(config: &Config, head: &Head, store: Option<&Store>) -> Result<Upgrade, Refusal> {
    if head.method != "GET" {
        return Err(Refusal::MethodNotAllowed {
            allow: "GET".into(),
        });
    }
    let key = handshake(head)?;
    let topic = match head.path.strip_prefix(SUB_PREFIX) {
        Some("") => Topic::All,
        Some(name) if !name.contains('/') => Topic::One(name.to_owned()),
        _ => return Err(Refusal::NotFound),
    };
    let server_key = config
        .key
        .as_ref()
        .map_err(|problem| Refusal::HookBroken(problem.clone()))?;
    let token = verify::presented_token(head, false)?;
    if !verify::token_matches(server_key, &head.path, &token) {
        return Err(Refusal::Forbidden(format!(
            "the token is not the one for {} (sockhook token {})",
            head.path, head.path
        )));
    }
    let publishing = |hook: &Hook| hook.publish.is_some();
    if let Topic::One(name) = &topic {
        let hook = match config.hooks.get_entry(name).map(|(_, h)| h) {
            Some(Ok(hook)) if publishing(hook) => hook,
            Some(Err(problem)) => return Err(Refusal::HookBroken(problem.clone())),
            _ => return Err(Refusal::NotFound),
        };
        if hook.scheme == Scheme::None && !unsafe_ok(head) {
            return Err(Refusal::Forbidden(format!(
                "anyone may publish to hook {name}: send X-Hookbot-Unsafe-Is-Ok: {UNSAFE_VALUE}"
            )));
        }
    } else if config.hooks.iter().any(|(_, h)| {
        h.as_ref()
            .is_ok_and(|h| publishing(h) && h.scheme == Scheme::None)
    }) && !unsafe_ok(head)
    {
        return Err(Refusal::Forbidden(format!(
            "anyone may publish to a hook under {SUB_PREFIX}: send X-Hookbot-Unsafe-Is-Ok: {UNSAFE_VALUE}"
        )));
    }
    let envelope = head
        .headers
        .iter()
        .filter(|(n, _)| n == "sec-websocket-protocol")
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .any(|p| p.trim_ascii() == SUBPROTOCOL.as_bytes());
    let resume = match (envelope, head.header(RESUME_HEADER)) {
        (true, Some(value)) => Some(parse_resume(value, store.map(Store::epoch))?),
        _ => None,
    };
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        accept_key(key)
    );
    if envelope {
        response.push_str(&format!("Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"));
    }
    response.push_str("\r\n");
    Ok(Upgrade {
        topic,
        envelope,
        resume,
        response: response.into_bytes(),
    })
}

fn unsafe_ok(head: &Head) -> bool {
    head.header(UNSAFE_HEADER)
        .is_some_and(|v| v.trim_ascii() == UNSAFE_VALUE.as_bytes())
}

/// The RFC 6455 §4.2.1 fields of an upgrade; returns the client's key.
fn handshake(head: &Head) -> Result<&[u8], Refusal> {
    let has_token = |name: &str, token: &str| {
        head.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    if head.minor_version != 1 {
        return Err(Refusal::Malformed("a websocket upgrade needs HTTP/1.1"));
    }
    if head.framing != Framing::Empty {
        return Err(Refusal::Malformed("a websocket upgrade carries no body"));
    }
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(Refusal::Malformed(
            "not a websocket upgrade (Upgrade: websocket, Connection: Upgrade)",
        ));
    }
    if head.header("sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(Refusal::UpgradeRequired);
    }
    let key = head
        .header("sec-websocket-key")
        .map(<[u8]>::trim_ascii)
        .unwrap_or_default();
    if BASE64.decode(key).map(|k| k.len()) != Ok(16) {
        return Err(Refusal::Malformed(
            "Sec-WebSocket-Key is not the base64 of 16 bytes",
        ));
    }
    Ok(key)
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut input = key.to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    BASE64.encode(digest.as_ref())
}

/// `EPOCH HOOK=SEQ[ HOOK=SEQ…]`: the last sequence number per hook; empty
/// (everything stored) when the epoch is not the store's.
pub fn parse_resume(value: &[u8], epoch: Option<&str>) -> Result<HashMap<String, u64>, Refusal> {
    let bad = || Refusal::Malformed("Sockhook-Resume is not EPOCH HOOK=SEQ ...");
    let text = std::str::from_utf8(value).map_err(|_| bad())?;
    let mut words = text.split_ascii_whitespace();
    let theirs = words.next().filter(|e| is_epoch(e)).ok_or_else(bad)?;
    let mut resume = HashMap::new();
    for word in words {
        let (hook, seq) = word.split_once('=').ok_or_else(bad)?;
        let seq = seq.parse::<u64>().map_err(|_| bad())?;
        if hook.is_empty() {
            return Err(bad());
        }
        resume.insert(hook.to_owned(), seq);
    }
    if epoch.is_some_and(|ours| ours.eq_ignore_ascii_case(theirs)) {
        Ok(resume)
    } else {
        Ok(HashMap::new())
    }
}

/// The header of a final, unmasked binary frame of `len` bytes.
pub fn frame_header(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    let header = FrameHeader {
        is_final: true,
        opcode: OpCode::Data(Data::Binary),
        ..FrameHeader::default()
    };
    header.format(len as u64, &mut out).unwrap_or_default();
    out
}

/// A message on its way to one subscriber.
enum Item {
    /// Stored before the subscriber came: read from the store in its turn.
    Stored(String, u64),
    /// Fanned out as it was stored.
    Live(Arc<Message>),
}

/// The frame being written: its header (and hookbot's `NAME\0`), then
/// the shared message from `from`.
struct Outgoing {
    head: Vec<u8>,
    message: Arc<Message>,
    from: usize,
    /// Bytes of head and payload written so far.
    written: usize,
}

impl Outgoing {
    /// What is left to write: the rest of the head, then of the payload.
    fn rest(&self) -> [IoSlice<'_>; 2] {
        let payload = &self.message.bytes[self.from..];
        match self.written.checked_sub(self.head.len()) {
            None => [
                IoSlice::new(&self.head[self.written..]),
                IoSlice::new(payload),
            ],
            Some(done) => [IoSlice::new(&payload[done..]), IoSlice::new(&[])],
        }
    }

    fn len(&self) -> usize {
        self.head.len() + self.message.bytes.len() - self.from
    }
}

/// Why a subscriber is closed.
#[derive(Debug)]
pub enum Closed {
    /// With a close frame (`code`, reason): written, then half-close and drain.
    Clean(CloseCode, &'static str),
    /// At once: the connection is gone or cannot take even the close frame.
    Abrupt(String),
}

/// What a subscriber's socket needs next.
#[derive(Debug, PartialEq, Eq)]
pub enum Wants {
    /// To be told when it can take more.
    Write,
    /// Only to be read.
    Read,
    /// The close frame is out: half-close and drain.
    Done,
}

/// One websocket subscriber: frames in through tungstenite, messages out
/// as shared buffers behind their own frame headers (no copy per
/// subscriber, but for TLS's).
pub struct Subscriber {
    /// What it subscribed to.
    pub topic: Topic,
    envelope: bool,
    ws: WebSocketContext,
    /// What goes out before the next data frame: the 101, pongs, pings,
    /// the close. INVARIANT: at most `MAX_CONTROL_BYTES` (past it the
    /// subscriber is closed).
    ctl: Vec<u8>,
    current: Option<Outgoing>,
    queue: VecDeque<Item>,
    /// Bytes of the live messages in `queue`.
    queued_bytes: usize,
    /// The last sequence number queued per hook: what is not sent again.
    upto: HashMap<String, u64>,
    /// Bytes read since the last complete message or control frame.
    unfinished: usize,
    /// A close frame is queued; nothing more goes out after it.
    closing: Option<&'static str>,
    /// When it last sent anything.
    pub heard: Instant,
    /// When it was last pinged.
    pub pinged: Instant,
    /// When its socket last took bytes, or when it had nothing to take.
    pub progress: Instant,
    /// Messages written to it.
    pub sent: u64,
    /// Stored messages it was given to catch up.
    pub replayed: usize,
}

/// The reads and writes tungstenite makes: reads from the socket, counted;
/// writes into the subscriber's control buffer, written between data frames.
struct Io<'a> {
    transport: &'a mut Transport,
    ctl: &'a mut Vec<u8>,
    unfinished: &'a mut usize,
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if *self.unfinished > MAX_UNFINISHED_BYTES {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let room = MAX_UNFINISHED_BYTES + 1 - *self.unfinished;
        let len = buf.len().min(room);
        let n = self.transport.read(&mut buf[..len])?;
        *self.unfinished += n;
        Ok(n)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.ctl.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Subscriber {
    /// A subscriber that was sent nothing yet; `rest` is what it sent
    /// after its upgrade request. Catches up from `store` if it resumes.
    pub fn new(upgrade: Upgrade, rest: Vec<u8>, store: Option<&Store>) -> Subscriber {
        let config = WebSocketConfig::default()
            .read_buffer_size(MAX_INCOMING_BYTES)
            .write_buffer_size(0)
            .max_message_size(Some(MAX_INCOMING_BYTES))
            .max_frame_size(Some(MAX_INCOMING_BYTES));
        let upto = store.map(Store::lasts).unwrap_or_default();
        let mut queue = VecDeque::new();
        if let (Some(resume), Some(store)) = (&upgrade.resume, store) {
            let mut hooks: Vec<&String> = upto
                .keys()
                .filter(|hook| upgrade.topic.covers(hook))
                .collect();
            hooks.sort();
            for hook in hooks {
                let after = resume.get(hook).copied().unwrap_or(0);
                for seq in store.kept_after(hook, after) {
                    queue.push_back(Item::Stored(hook.clone(), seq));
                }
            }
        }
        let now = Instant::now();
        Subscriber {
            topic: upgrade.topic,
            envelope: upgrade.envelope,
            ws: WebSocketContext::from_partially_read(rest, Role::Server, Some(config)),
            ctl: upgrade.response,
            current: None,
            replayed: queue.len(),
            queue,
            queued_bytes: 0,
            upto,
            unfinished: 0,
            closing: None,
            heard: now,
            pinged: now,
            progress: now,
            sent: 0,
        }
    }

    /// Whether anything waits to go out.
    pub fn busy(&self) -> bool {
        !self.ctl.is_empty() || self.current.is_some() || !self.queue.is_empty()
    }

    /// Queues a stored message if it is for this subscriber and new to it;
    /// refused when the subscriber does not read fast enough to take it.
    pub fn offer(&mut self, message: &Arc<Message>) -> Result<(), Closed> {
        if self.closing.is_some() || !self.topic.covers(&message.hook) {
            return Ok(());
        }
        let upto = self.upto.entry(message.hook.clone()).or_default();
        if message.seq <= *upto {
            return Ok(());
        }
        *upto = message.seq;
        let len = message.bytes.len();
        if self.busy() && self.queued_bytes + len > SEND_BUFFER_BYTES {
            return Err(Closed::Abrupt(format!(
                "does not read: over its send buffer of {SEND_BUFFER_BYTES} bytes (it resumes from seq {} of {})",
                message.seq, message.hook
            )));
        }
        self.queued_bytes += len;
        self.queue.push_back(Item::Live(Arc::clone(message)));
        Ok(())
    }

    /// Reads what it sent: pings are answered, data is dropped (a
    /// subscriber has nothing to say); bad input closes it.
    pub fn read(&mut self, transport: &mut Transport) -> Result<(), Closed> {
        use tungstenite::Error as E;
        use tungstenite::error::ProtocolError as P;
        let Subscriber {
            ws,
            ctl,
            unfinished,
            ..
        } = self;
        let mut io = Io {
            transport,
            ctl,
            unfinished,
        };
        let mut result = Ok(());
        for _ in 0..READ_TURN_MESSAGES {
            let before = *io.unfinished;
            let read = ws.read(&mut io);
            if *io.unfinished != before {
                self.heard = Instant::now();
            }
            match read {
                Ok(Frame::Close(_)) => {
                    // tungstenite queued the reply in `ctl`.
                    self.closing.get_or_insert("closed by the subscriber");
                    self.queue.clear();
                    self.queued_bytes = 0;
                    break;
                }
                Ok(_) => *io.unfinished = 0,
                Err(E::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(E::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(E::Io(e)) => {
                    result = Err(Closed::Abrupt(format!("read failed: {e}")));
                    break;
                }
                Err(E::ConnectionClosed | E::AlreadyClosed) => {
                    result = Err(Closed::Abrupt("closed".into()));
                    break;
                }
                Err(E::Protocol(P::ResetWithoutClosingHandshake)) => {
                    result = Err(Closed::Abrupt("closed without a close frame".into()));
                    break;
                }
                Err(E::Capacity(_)) => {
                    result = Err(Closed::Clean(
                        CloseCode::Size,
                        "sent a frame or message over 4096 bytes",
                    ));
                    break;
                }
                Err(E::Utf8(_)) => {
                    result = Err(Closed::Clean(
                        CloseCode::Invalid,
                        "sent text that is not UTF-8",
                    ));
                    break;
                }
                Err(E::Protocol(P::UnmaskedFrameFromClient)) => {
                    result = Err(Closed::Clean(CloseCode::Protocol, "sent an unmasked frame"));
                    break;
                }
                Err(_) => {
                    result = Err(Closed::Clean(
                        CloseCode::Protocol,
                        "broke the websocket protocol",
                    ));
                    break;
                }
            }
        }
        // The pong or the close reply tungstenite holds, into `ctl`.
        let _ = ws.flush(&mut io);
        if result.is_ok() && self.unfinished > MAX_UNFINISHED_BYTES {
            result = Err(Closed::Clean(
                CloseCode::Size,
                "sent a fragmented message that never ends",
            ));
        }
        if self.ctl.len() > MAX_CONTROL_BYTES {
            result = Err(Closed::Abrupt("pings faster than it reads".into()));
        }
        result
    }

    /// Queues a close frame with `code` and `why`; nothing else goes out
    /// after it.
    pub fn close(&mut self, transport: &mut Transport, code: CloseCode, why: &'static str) {
        if self.closing.is_some() {
            return;
        }
        self.closing = Some(why);
        self.queue.clear();
        self.queued_bytes = 0;
        let Subscriber {
            ws,
            ctl,
            unfinished,
            ..
        } = self;
        let mut io = Io {
            transport,
            ctl,
            unfinished,
        };
        let frame = CloseFrame {
            code,
            reason: why.into(),
        };
        let _ = ws.close(&mut io, Some(frame));
    }

    /// Why it is closing, once a close frame is queued.
    pub fn closing(&self) -> Option<&'static str> {
        self.closing
    }

    /// Queues a ping.
    pub fn ping(&mut self, transport: &mut Transport) {
        self.pinged = Instant::now();
        let Subscriber {
            ws,
            ctl,
            unfinished,
            ..
        } = self;
        let mut io = Io {
            transport,
            ctl,
            unfinished,
        };
        let _ = ws
            .write(&mut io, Frame::Ping(Default::default()))
            .and_then(|()| ws.flush(&mut io));
    }

    /// Writes what waits, as far as the socket takes it.
    pub fn write(&mut self, transport: &mut Transport, store: Option<&Store>) -> io::Result<Wants> {
        loop {
            if self.current.is_none() && !self.ctl.is_empty() {
                match transport.write(&self.ctl) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.ctl.drain(..n);
                        self.progress = Instant::now();
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Wants::Write),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            if self.closing.is_some() && self.current.is_none() {
                transport.flush_pending()?;
                return Ok(match transport.wants_write() {
                    true => Wants::Write,
                    false => Wants::Done,
                });
            }
            if let Some(out) = &mut self.current {
                match transport.write_vectored(&out.rest()) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        out.written += n;
                        self.progress = Instant::now();
                        if out.written == out.len() {
                            self.current = None;
                            self.sent += 1;
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Wants::Write),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            let message = match self.queue.pop_front() {
                None => break,
                Some(Item::Live(message)) => {
                    self.queued_bytes -= message.bytes.len();
                    message
                }
                Some(Item::Stored(hook, seq)) => {
                    match store.map(|s| s.load(&hook, seq)).transpose()?.flatten() {
                        Some(message) => Arc::new(message),
                        // Dropped by retention meanwhile: the subscriber sees the gap.
                        None => continue,
                    }
                }
            };
            self.current = Some(self.frame(message));
        }
        self.progress = Instant::now();
        transport.flush_pending()?;
        Ok(match transport.wants_write() {
            true => Wants::Write,
            false => Wants::Read,
        })
    }

    /// The frame of `message` as this subscriber gets it: the envelope, or
    /// hookbot's raw body (`NAME\0BODY` on a prefix subscription).
    fn frame(&self, message: Arc<Message>) -> Outgoing {
        let (prefix, from) = match (self.envelope, &self.topic) {
            (true, _) => (Vec::new(), 0),
            (false, Topic::One(_)) => (Vec::new(), message.body_at),
            (false, Topic::All) => {
                let mut prefix = message.hook.as_bytes().to_vec();
                prefix.push(0);
                (prefix, message.body_at)
            }
        };
        let mut head = frame_header(prefix.len() + message.bytes.len() - from);
        head.extend_from_slice(&prefix);
        Outgoing {
            head,
            message,
            from,
            written: 0,
        }
    }
}

/// Most messages read from one subscriber before others get their turn.
const READ_TURN_MESSAGES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_is_rfc_6455s_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn resume_takes_hooks_of_the_same_epoch_only() {
        let ours = "9f2c41d07a3be5e1";
        let r = parse_resume(b"9f2c41d07a3be5e1 kodi=4 deploy=17", Some(ours)).unwrap();
        assert_eq!(r.get("kodi"), Some(&4));
        assert_eq!(r.get("deploy"), Some(&17));
        assert!(
            parse_resume(b"0000000000000000 kodi=4", Some(ours))
                .unwrap()
                .is_empty()
        );
        for bad in [
            &b"kodi=4"[..],
            b"9f2c41d07a3be5e1 kodi",
            b"9f2c41d07a3be5e1 kodi=x",
            b"",
        ] {
            assert!(parse_resume(bad, Some(ours)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn frame_headers_use_the_shortest_length() {
        assert_eq!(frame_header(5), [0x82, 5]);
        assert_eq!(frame_header(300), [0x82, 126, 1, 44]);
        assert_eq!(frame_header(70_000)[..2], [0x82, 127]);
    }
}
