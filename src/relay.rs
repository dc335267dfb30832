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
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::config::Hook;
use crate::error::Refusal;
use crate::read::{Framing, Head};
use crate::request::Config;
use crate::scheme::Scheme;
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

    /// The body as the sender sent it.
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.body_at..]
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

struct Inner {
    hooks: HashMap<String, Index>,
    /// Stored messages the event loop has not fanned out yet, in order.
    live: VecDeque<Arc<Message>>,
}

/// The relay's store under `STATE/relay/`.
pub struct Store {
    dir: PathBuf,
    epoch: String,
    inner: Mutex<Inner>,
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
            inner: Mutex::new(Inner {
                hooks,
                live: VecDeque::new(),
            }),
        })
    }

    /// The epoch, 16 hex digits chosen when the store was made.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut inner = self.lock();
        let index = inner.hooks.entry(hook.name.clone()).or_default();
        let seq = index.last + 1;
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
            // A file left behind is only dropped again at the next start.
            let _ = fs::remove_file(dir.join(file_name(old)));
        }
        inner.live.push_back(Arc::new(Message {
            hook: hook.name.clone(),
            seq,
            bytes,
            body_at,
        }));
        Ok(seq)
    }

    /// The messages stored and not yet fanned out, in order.
    pub fn take_live(&self) -> VecDeque<Arc<Message>> {
        std::mem::take(&mut self.lock().live)
    }

    /// The last sequence number of every hook that has published.
    pub fn lasts(&self) -> HashMap<String, u64> {
        self.lock()
            .hooks
            .iter()
            .map(|(name, index)| (name.clone(), index.last))
            .collect()
    }

    /// The sequence numbers kept for `hook` above `after`, oldest first.
    pub fn kept_after(&self, hook: &str, after: u64) -> Vec<u64> {
        self.lock().hooks.get(hook).map_or_else(Vec::new, |index| {
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
                "anyone may publish to hook {name}: send {UNSAFE_HEADER}: {UNSAFE_VALUE}"
            )));
        }
    } else if config.hooks.iter().any(|(_, h)| {
        h.as_ref()
            .is_ok_and(|h| publishing(h) && h.scheme == Scheme::None)
    }) && !unsafe_ok(head)
    {
        return Err(Refusal::Forbidden(format!(
            "anyone may publish to a hook under {SUB_PREFIX}: send {UNSAFE_HEADER}: {UNSAFE_VALUE}"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_is_rfc_6455s_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZK+xOo4Y="
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
