//! Stage 2: read the request head and body within hard limits on bytes and time.
//!
//! `httparse` parses the head; body framing is ours (RFC 9112 §6): one valid
//! `Content-Length`, or `Transfer-Encoding: chunked` alone, nothing else.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::num::NonZeroUsize;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use httparse::Status;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use crate::error::{Lost, Refusal, RequestError};
use crate::listen::Stream;

/// Longest request head (request line and header fields) accepted, in bytes.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most header fields accepted in a head.
pub const MAX_HEADERS: usize = 64;
/// Longest request target (path and query) accepted, in bytes.
pub const MAX_TARGET_BYTES: usize = 4 * 1024;
/// Longest method plus the request line's fixed parts, on top of the target.
const MAX_REQUEST_LINE_EXTRA_BYTES: usize = 64;
/// Longest chunk-size line (size and extensions) accepted, in bytes.
pub const MAX_CHUNK_LINE_BYTES: usize = 1024;
/// Time a client has for its whole request, head and body.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where request bytes come from: a socket, or bytes in a test or fuzzer.
pub trait Source: Read {
    /// Bounds the wait of the next read; `None` waits forever.
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()>;
}

impl Source for Stream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        Stream::set_read_timeout(self, timeout)
    }
}

impl Source for &[u8] {
    fn set_read_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}

/// How the body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl Framing {
    /// Refuses a body announced larger than `max_body`, before any of it is read.
    pub fn check(self, max_body: u64) -> Result<(), Refusal> {
        match self {
            Framing::Length(len) if len > max_body => {
                Err(Refusal::BodyTooLarge { limit: max_body })
            }
            _ => Ok(()),
        }
    }
}

/// A parsed, validated request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The method, as sent (methods are case-sensitive).
    pub method: String,
    /// The path part of the target, raw (no percent-decoding).
    pub path: String,
    /// The query after `?`, raw, if any.
    pub query: Option<String>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header fields in order, names in lower case.
    pub headers: Vec<(String, Vec<u8>)>,
    /// How the body is delimited.
    pub framing: Framing,
    /// The client sent `Expect: 100-continue` and waits before sending its body.
    pub expect_continue: bool,
}

impl Head {
    /// The first field called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The first field called `name`, if it is valid UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every field called `name`.
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Parses a head from the start of `buf`.
///
/// Returns the head and its length in bytes, `None` if more bytes are needed,
/// or the error to answer with. Pure, so that every case is a unit test.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Refusal> {
    if buf.starts_with(HTTP2_PREFACE_LINE) {
        return Err(Refusal::Http2);
    }
    if HTTP2_PREFACE_LINE.starts_with(buf) {
        // Perhaps the start of it: httparse would refuse HTTP/2.0 as a version.
        return Ok(None);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    let len = match request.parse(buf) {
        Ok(Status::Complete(len)) if len > MAX_HEAD_BYTES => return Err(Refusal::HeadTooLarge),
        // The same request-line limit as while the line is still arriving.
        Ok(Status::Complete(_)) if request_line_too_long(buf) => {
            return Err(Refusal::TargetTooLong);
        }
        Ok(Status::Complete(len)) => len,
        Ok(Status::Partial) => {
            if request_line_too_long(buf) {
                return Err(Refusal::TargetTooLong);
            }
            if buf.len() >= MAX_HEAD_BYTES {
                return Err(Refusal::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::HeadTooLarge),
        Err(httparse::Error::Version) => return Err(Refusal::Malformed("not an HTTP/1.x request")),
        Err(httparse::Error::HeaderName) => return Err(Refusal::Malformed("invalid header name")),
        Err(httparse::Error::HeaderValue) => {
            return Err(Refusal::Malformed("invalid header value"));
        }
        Err(httparse::Error::Token) => return Err(Refusal::Malformed("invalid method or target")),
        Err(_) => return Err(Refusal::Malformed("invalid request line")),
    };
    let (Some(method), Some(target), Some(minor_version)) =
        (request.method, request.path, request.version)
    else {
        return Err(Refusal::Malformed("incomplete request line"));
    };
    if target.len() > MAX_TARGET_BYTES {
        return Err(Refusal::TargetTooLong);
    }
    if !target.starts_with('/') {
        return Err(Refusal::Malformed(
            "request target must be a path (origin-form)",
        ));
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    let mut head = Head {
        method: method.to_owned(),
        path: path.to_owned(),
        query,
        minor_version,
        headers: request
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect(),
        framing: Framing::Empty,
        expect_continue: false,
    };
    validate(&mut head)?;
    Ok(Some((head, len)))
}

/// Whether the request line (complete or not) is longer than the target limit
/// plus room for the method and version.
fn request_line_too_long(buf: &[u8]) -> bool {
    let line = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    line > MAX_TARGET_BYTES + MAX_REQUEST_LINE_EXTRA_BYTES
}

/// Checks the fields that decide how the request is read (RFC 9112 §3.2, §6).
fn validate(head: &mut Head) -> Result<(), Refusal> {
    let hosts = head.all("host").count();
    if hosts > 1 || (head.minor_version == 1 && hosts == 0) {
        return Err(Refusal::Malformed("HTTP/1.1 needs exactly one Host field"));
    }
    let mut lengths = head.all("content-length");
    let length = match (lengths.next(), lengths.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => return Err(Refusal::Malformed("more than one Content-Length")),
        (Some(value), None) => Some(parse_length(value)?),
    };
    drop(lengths);
    let codings: Vec<String> = head
        .all("transfer-encoding")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|c| String::from_utf8_lossy(c).trim().to_ascii_lowercase())
        .collect();
    head.framing = match (length, codings.is_empty()) {
        (Some(0), true) | (None, true) => Framing::Empty,
        (Some(n), true) => Framing::Length(n),
        (Some(_), false) => {
            return Err(Refusal::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (None, false) if head.minor_version == 0 => {
            return Err(Refusal::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        (None, false) => match codings.iter().filter(|c| *c == "chunked").count() {
            _ if codings.iter().any(|c| c.is_empty()) => {
                return Err(Refusal::Malformed("empty transfer coding"));
            }
            _ if codings.iter().any(|c| c != "chunked") => return Err(Refusal::UnsupportedCoding),
            1 => Framing::Chunked,
            _ => return Err(Refusal::Malformed("chunked applied more than once")),
        },
    };
    if let Some(expect) = head.header("expect") {
        if !expect.eq_ignore_ascii_case(b"100-continue") {
            return Err(Refusal::ExpectationFailed);
        }
        head.expect_continue = head.minor_version == 1 && head.framing != Framing::Empty;
    }
    let body_method = matches!(head.method.as_str(), "POST" | "PUT" | "PATCH");
    if head.minor_version == 0 && body_method && length.is_none() {
        return Err(Refusal::LengthRequired);
    }
    Ok(())
}

/// A `Content-Length` value: decimal digits only, no sign, no list.
fn parse_length(value: &[u8]) -> Result<u64, Refusal> {
    let invalid = Refusal::Malformed("invalid Content-Length");
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(invalid);
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(invalid)
}

/// How an HTTP/2 client with prior knowledge starts (RFC 9113 §3.4).
const HTTP2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Collects a request head from bytes as they arrive, never more than
/// [`MAX_HEAD_BYTES`]: what the event loop feeds each connection's reads to.
#[derive(Debug, Default)]
pub struct HeadReader {
    /// INVARIANT: shorter than `MAX_HEAD_BYTES` plus one read, and holds no
    /// complete head (it would have been returned).
    buf: Vec<u8>,
}

impl HeadReader {
    /// An empty head.
    pub fn new() -> HeadReader {
        HeadReader::default()
    }

    /// Adds `bytes`; returns the head once it is complete, with the bytes
    /// after it (the start of the body), or the refusal.
    ///
    /// A head can only end at a line feed, so once the request line is in,
    /// the accumulated bytes are parsed again only when one arrives: a client
    /// sending a byte at a time costs a parse per line, not per byte. The
    /// request line itself is parsed as it grows, so that what is not HTTP
    /// (a TLS ClientHello, garbage) is refused at its first bytes.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<(Head, Vec<u8>)>, Refusal> {
        let in_first_line = !self.buf.contains(&b'\n');
        self.buf.extend_from_slice(bytes);
        if !in_first_line && !bytes.contains(&b'\n') {
            // The limits parse_head applies to a partial head, checked here too.
            if request_line_too_long(&self.buf) {
                return Err(Refusal::TargetTooLong);
            }
            if self.buf.len() >= MAX_HEAD_BYTES {
                return Err(Refusal::HeadTooLarge);
            }
            return Ok(None);
        }
        match parse_head(&self.buf)? {
            Some((head, len)) => {
                let rest = self.buf.split_off(len);
                self.buf.clear();
                Ok(Some((head, rest)))
            }
            None => Ok(None),
        }
    }

    /// The method and target of the request line as received, once the line
    /// is complete: for the log when the rest of the head is refused.
    pub fn request_line(&self) -> Option<(&[u8], &[u8])> {
        let line = &self.buf[..self.buf.iter().position(|&b| b == b'\n')?];
        let mut words = line.split(|&b| b == b' ');
        Some((words.next()?, words.next()?))
    }
}

/// Where a [`BodyDecoder`] is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// `left` more bytes of a `Content-Length` body, or of a chunk's data.
    Data { left: u64, chunked: bool },
    /// A chunk-size line, collected in `line`.
    Size,
    /// The CRLF after a chunk's data; `seen` of its two bytes so far.
    Crlf { seen: u8 },
    /// The trailer section after the last chunk; `seen` bytes of it so far.
    Trailers { seen: usize },
    /// The whole body is in.
    Done,
}

/// Decodes a body framed by `Content-Length` or `chunked` from bytes as they
/// arrive, within `max_body` (RFC 9112 §6, §7.1).
#[derive(Debug)]
pub struct BodyDecoder {
    part: Part,
    max_body: u64,
    /// Body bytes decoded so far.
    total: u64,
    /// The sizes of the chunks announced so far.
    announced: u64,
    /// A chunk-size or trailer line that has not ended yet.
    /// INVARIANT: at most `MAX_CHUNK_LINE_BYTES` (sizes) or `MAX_HEAD_BYTES` (trailers).
    line: Vec<u8>,
}

impl BodyDecoder {
    /// A decoder for a body framed by `framing`, refused at once if it is
    /// announced larger than `max_body`.
    pub fn new(framing: Framing, max_body: u64) -> Result<BodyDecoder, Refusal> {
        framing.check(max_body)?;
        let part = match framing {
            Framing::Empty | Framing::Length(0) => Part::Done,
            Framing::Length(left) => Part::Data {
                left,
                chunked: false,
            },
            Framing::Chunked => Part::Size,
        };
        Ok(BodyDecoder {
            part,
            max_body,
            total: 0,
            announced: 0,
            line: Vec::new(),
        })
    }

    /// Whether the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        self.part == Part::Done
    }

    /// Decodes from `input`, handing body bytes to `sink`; returns how many
    /// bytes of `input` belong to the request (the rest follows it).
    pub fn push(
        &mut self,
        mut input: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<(), Refusal>,
    ) -> Result<usize, Refusal> {
        let start = input.len();
        while !input.is_empty() {
            match self.part {
                Part::Done => break,
                Part::Data { left, chunked } => {
                    let take = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    sink(&input[..take])?;
                    self.total += take as u64;
                    input = &input[take..];
                    let left = left - take as u64;
                    self.part = match (left, chunked) {
                        (0, true) => Part::Crlf { seen: 0 },
                        (0, false) => Part::Done,
                        (left, chunked) => Part::Data { left, chunked },
                    };
                }
                Part::Crlf { seen } => {
                    if input[0] != b"\r\n"[usize::from(seen)] {
                        return Err(Refusal::Malformed("chunk data not followed by CRLF"));
                    }
                    input = &input[1..];
                    self.part = match seen {
                        0 => Part::Crlf { seen: 1 },
                        _ => Part::Size,
                    };
                }
                Part::Size => {
                    let (line, rest) = self.take_line(input, MAX_CHUNK_LINE_BYTES, || {
                        Refusal::Malformed("chunk-size line too long")
                    })?;
                    input = rest;
                    let Some(line) = line else { break };
                    let size = match httparse::parse_chunk_size(&line) {
                        Ok(Status::Complete((len, size))) if len == line.len() => size,
                        _ => return Err(Refusal::Malformed("invalid chunk size")),
                    };
                    if size == 0 {
                        self.part = Part::Trailers { seen: 0 };
                        continue;
                    }
                    self.announced = self
                        .announced
                        .checked_add(size)
                        .filter(|&t| t <= self.max_body)
                        .ok_or(Refusal::BodyTooLarge {
                            limit: self.max_body,
                        })?;
                    self.part = Part::Data {
                        left: size,
                        chunked: true,
                    };
                    continue;
                }
                Part::Trailers { seen } => {
                    // The limit counts trailer bytes only, not what follows the request.
                    let room = MAX_HEAD_BYTES.saturating_sub(seen);
                    let (line, rest) = self.take_line(input, room, || Refusal::HeadTooLarge)?;
                    input = rest;
                    let Some(line) = line else { break };
                    let blank = line.len() <= 2 && line.iter().all(|&b| b == b'\r' || b == b'\n');
                    let seen = seen + line.len();
                    if blank {
                        self.part = Part::Done;
                    } else if seen > MAX_HEAD_BYTES {
                        return Err(Refusal::HeadTooLarge);
                    } else {
                        self.part = Part::Trailers { seen };
                    }
                }
            }
        }
        Ok(start - input.len())
    }

    /// Completes a line from `input` into `self.line`: the whole line once
    /// its line feed arrived (and the rest of `input`), or `None` and an
    /// empty rest. Longer than `max` bytes is the refusal `too_long`.
    fn take_line<'i>(
        &mut self,
        input: &'i [u8],
        max: usize,
        too_long: impl Fn() -> Refusal,
    ) -> Result<(Option<Vec<u8>>, &'i [u8]), Refusal> {
        match input.iter().position(|&b| b == b'\n') {
            Some(nl) => {
                if self.line.len() + nl + 1 > max {
                    return Err(too_long());
                }
                self.line.extend_from_slice(&input[..=nl]);
                Ok((Some(std::mem::take(&mut self.line)), &input[nl + 1..]))
            }
            None => {
                if self.line.len() + input.len() >= max {
                    return Err(too_long());
                }
                self.line.extend_from_slice(input);
                Ok((None, &[]))
            }
        }
    }
}

/// Reads one request from a blocking source with [`HeadReader`] and
/// [`BodyDecoder`], every read bounded by one deadline: the decoders driven
/// the way tests and fuzz targets can, with the same limits as the server.
pub struct Reader {
    head: HeadReader,
    /// Bytes read past the head and not yet decoded.
    pending: Vec<u8>,
    deadline: Instant,
}

/// The size of one read.
const READ_BYTES: usize = 16 * 1024;

impl Reader {
    /// A reader whose every read must finish by `deadline`.
    pub fn new(deadline: Instant) -> Reader {
        Reader {
            head: HeadReader::new(),
            pending: Vec::new(),
            deadline,
        }
    }

    /// The method and target of the request line as received, once the line is complete.
    pub fn request_line(&self) -> Option<(&[u8], &[u8])> {
        self.head.request_line()
    }

    /// Whether bytes after the head are already buffered (the client did not wait for `100 Continue`).
    pub fn has_buffered(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Reads and validates the head.
    pub fn read_head(&mut self, stream: &mut impl Source) -> Result<Head, RequestError> {
        let mut buf = [0; READ_BYTES];
        loop {
            let n = self.fill(stream, &mut buf)?;
            if let Some((head, rest)) = self.head.push(&buf[..n])? {
                self.pending = rest;
                return Ok(head);
            }
        }
    }

    /// Reads the body framed by `framing` and hands it to `sink` piece by piece.
    ///
    /// Fails with `BodyTooLarge` as soon as more than `max_body` bytes are
    /// announced or received; returns the body's length.
    pub fn read_body(
        &mut self,
        stream: &mut impl Source,
        framing: Framing,
        max_body: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), Refusal>,
    ) -> Result<u64, RequestError> {
        let mut decoder = BodyDecoder::new(framing, max_body)?;
        let mut len = 0u64;
        let mut counted = |piece: &[u8]| {
            len += piece.len() as u64;
            sink(piece)
        };
        let pending = std::mem::take(&mut self.pending);
        decoder.push(&pending, &mut counted)?;
        let mut buf = [0; READ_BYTES];
        while !decoder.is_done() {
            let n = self.fill(stream, &mut buf)?;
            decoder.push(&buf[..n], &mut counted)?;
        }
        Ok(len)
    }

    /// One read of at least one byte, by the deadline.
    fn fill(&mut self, stream: &mut impl Source, buf: &mut [u8]) -> Result<usize, RequestError> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Refusal::Timeout.into());
            }
            stream.set_read_timeout(Some(left)).map_err(Lost::Io)?;
            match stream.read(buf) {
                Ok(0) => return Err(Lost::Closed.into()),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(Refusal::Timeout.into());
                }
                Err(e) => return Err(Lost::Io(e).into()),
            }
        }
    }
}

/// A body being written to an anonymous memory file as it arrives.
pub struct Spool {
    file: Option<File>,
    len: u64,
    /// Past [`PARALLEL_SPOOL_BYTES`], the thread writing the rest.
    writer: Option<Writer>,
}

/// Bytes of a body after which the rest is written to its memory file by a
/// thread of its own, while the event loop reads and hashes the next piece.
/// Writing into shmem (page allocation and the copy) took 5 of the 23 ms a
/// 25 MiB body cost, time the sender otherwise waits on top of the hash;
/// with the thread, 25 MiB took 19-20 ms and 1 MiB 1.19 ms instead of 1.35
/// (curl, loopback, warm; the floor: 16.3 and 1.05 ms). Below this size a
/// thread costs more than it saves.
pub const PARALLEL_SPOOL_BYTES: u64 = 128 * 1024;
/// Pieces queued for that thread at most; a piece that finds the queue full
/// is written in place, so the event loop never waits for the thread and at
/// most three pieces of at most 64 KiB are in flight (a deeper queue was no
/// faster and cost 100-250 KiB more of peak RSS).
const PARALLEL_SPOOL_QUEUE: usize = 1;

/// Spool threads at most at once, over all bodies; a large body that finds
/// them all busy is written in place. On a machine of a few cores more would
/// not write faster, and the bound keeps clients that send many large bodies
/// at once (authenticated or not) from holding the tasks that commands need:
/// `TasksMax=` and `RLIMIT_NPROC` count threads too.
pub const MAX_SPOOL_THREADS: usize = 4;
/// Spool threads running now.
static SPOOL_THREADS: AtomicUsize = AtomicUsize::new(0);

/// The thread that writes pieces of a large body at their offsets.
struct Writer {
    pieces: SyncSender<(u64, Vec<u8>)>,
    /// The thread's verdict: the first write that failed, if one did.
    done: JoinHandle<io::Result<()>>,
}

impl Writer {
    /// A thread writing to `file`; `None` when [`MAX_SPOOL_THREADS`] run
    /// already or none can be started.
    fn start(file: &File) -> Option<Writer> {
        let taken = SPOOL_THREADS.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_SPOOL_THREADS).then_some(n + 1)
        });
        taken.ok()?;
        let started = file.try_clone().and_then(|file| {
            let (pieces, queue) = mpsc::sync_channel::<(u64, Vec<u8>)>(PARALLEL_SPOOL_QUEUE);
            let done = thread::Builder::new()
                .name("spool".into())
                .stack_size(WRITER_STACK_BYTES)
                .spawn(move || {
                    let written = queue
                        .into_iter()
                        .try_for_each(|(offset, piece)| file.write_all_at(&piece, offset));
                    SPOOL_THREADS.fetch_sub(1, Ordering::AcqRel);
                    written
                })?;
            Ok(Writer { pieces, done })
        });
        if started.is_err() {
            SPOOL_THREADS.fetch_sub(1, Ordering::AcqRel);
        }
        started.ok()
    }
}

/// Stack of the spool thread, which only loops over `pwrite`.
const WRITER_STACK_BYTES: usize = 64 * 1024;

impl Spool {
    /// A spool for a body framed by `framing`; no file for no body.
    pub fn new(framing: Framing) -> Result<Spool, Refusal> {
        let file = match framing {
            Framing::Empty | Framing::Length(0) => None,
            Framing::Length(_) | Framing::Chunked => Some(
                memfd_create(
                    "sockhook-body",
                    MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
                )
                .map(File::from)
                .map_err(|e| Refusal::internal("create a memory file for the body", e.into()))?,
            ),
        };
        Ok(Spool {
            file,
            len: 0,
            writer: None,
        })
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.len
    }

    /// Appends the next piece of the body.
    pub fn write(&mut self, piece: &[u8]) -> Result<(), Refusal> {
        let offset = self.len;
        self.len += piece.len() as u64;
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        let failed = |e| Refusal::internal("spool the body", e);
        if self.writer.is_none() && self.len > PARALLEL_SPOOL_BYTES {
            // Without a thread (all busy, or none can be started), every
            // piece is written here.
            self.writer = Writer::start(file);
        }
        let Some(writer) = &self.writer else {
            // Every write so far went through the file's position.
            return file.write_all(piece).map_err(failed);
        };
        match writer.pieces.try_send((offset, piece.to_vec())) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => file.write_all_at(piece, offset).map_err(failed),
            // The thread stopped at a failed write; `finish` reports it.
            Err(TrySendError::Disconnected(_)) => Ok(()),
        }
    }

    /// The whole body, sealed: it can change no more, so a mapping of it is
    /// a stable `&[u8]`. With a spool thread, waits for it to write the rest.
    pub fn finish(self) -> Result<Body, Refusal> {
        if let Some(Writer { pieces, done, .. }) = self.writer {
            drop(pieces);
            done.join()
                .unwrap_or_else(|_| Err(io::Error::other("the spool thread panicked")))
                .map_err(|e| Refusal::internal("spool the body", e))?;
        }
        let Some(file) = self.file.filter(|_| self.len > 0) else {
            return Ok(Body { file: None, len: 0 });
        };
        let seals = SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_WRITE
            | SealFlag::F_SEAL_SEAL;
        fcntl(&file, FcntlArg::F_ADD_SEALS(seals))
            .map_err(|e| Refusal::internal("seal the body's memory file", e.into()))?;
        Ok(Body {
            file: Some(file),
            len: self.len,
        })
    }
}

impl Reader {
    /// Reads the body framed by `framing` into a [`Body`], showing each piece
    /// to `inspect` (the signature check) on its way.
    pub fn spool(
        &mut self,
        stream: &mut impl Source,
        framing: Framing,
        max_body: u64,
        inspect: &mut dyn FnMut(&[u8]),
    ) -> Result<Body, RequestError> {
        let mut spool = Spool::new(framing)?;
        self.read_body(stream, framing, max_body, &mut |piece| {
            inspect(piece);
            spool.write(piece)
        })?;
        Ok(spool.finish()?)
    }
}

/// A request body, spooled to an anonymous memory file rather than held in
/// the heap, so that it becomes the command's stdin without a copy through a
/// pipe.
#[derive(Debug)]
pub struct Body {
    /// INVARIANT: `Some` exactly when `len > 0`, and then a memory file of
    /// `len` bytes sealed against writing, shrinking and growing.
    file: Option<File>,
    len: u64,
}

impl Body {
    /// The length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, mapped read-only: no copy in the heap whatever the size.
    pub fn map(&self) -> Result<Mapped, Refusal> {
        match &self.file {
            None => Ok(Mapped::EMPTY),
            Some(file) => Mapped::new(file, self.len),
        }
    }

    /// The body for a command's stdin, at its start; `None` when empty.
    pub fn reader(&self) -> io::Result<Option<File>> {
        match &self.file {
            None => Ok(None),
            Some(file) => {
                let mut reader = file.try_clone()?;
                reader.rewind()?;
                Ok(Some(reader))
            }
        }
    }
}

/// A read-only mapping of a sealed body.
pub struct Mapped {
    /// INVARIANT: `len` readable bytes at `ptr` that nothing changes while
    /// the mapping exists (the file is sealed), or a dangling `ptr` with `len` 0.
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapped {
    const EMPTY: Mapped = Mapped {
        ptr: NonNull::dangling(),
        len: 0,
    };

    #[allow(unsafe_code)]
    fn new(file: &File, len: u64) -> Result<Mapped, Refusal> {
        let fail = |e: nix::Error| Refusal::internal("map the body", e.into());
        let size = usize::try_from(len)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| fail(nix::Error::EINVAL))?;
        // SAFETY: a new read-only mapping of a whole file that is
        // sealed against writing and shrinking (`Reader::spool`), so its
        // pages neither change nor disappear while it exists.
        let ptr = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                file,
                0,
            )
        }
        .map_err(fail)?;
        Ok(Mapped {
            ptr: ptr.cast(),
            len: size.get(),
        })
    }
}

impl Deref for Mapped {
    type Target = [u8];

    #[allow(unsafe_code)]
    fn deref(&self) -> &[u8] {
        // SAFETY: see the INVARIANT of `ptr`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapped {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping is this value's alone, and no slice of it
            // outlives it (`deref` borrows `self`).
            let _ = unsafe { munmap(self.ptr.cast(), self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status a reader's error is answered with; 0 for no answer.
    fn status(e: RequestError) -> u16 {
        match e {
            RequestError::Refused(refusal) => refusal.status(),
            RequestError::Lost(_) => 0,
        }
    }

    fn parse(bytes: &[u8]) -> Result<Option<Head>, u16> {
        parse_head(bytes)
            .map(|o| o.map(|(h, _)| h))
            .map_err(|e| e.status())
    }

    /// `case!{name, request bytes, expected status}` — the head is refused with that status.
    macro_rules! refused {
        ($($name:ident, $bytes:expr, $status:expr;)*) => {$(
            #[test]
            fn $name() {
                assert_eq!(parse($bytes).map(|_| ()), Err($status));
            }
        )*};
    }

    refused! {
        garbage_is_400, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400;
        http2_preface_is_505, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505;
        http09_is_400, b"GET /hooks/a\r\n\r\n", 400;
        absolute_form_is_400, b"POST http://example.com/hooks/a HTTP/1.1\r\nHost: x\r\n\r\n", 400;
        asterisk_form_is_400, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400;
        nul_in_target_is_400, b"POST /hooks/\0a HTTP/1.1\r\nHost: x\r\n\r\n", 400;
        control_byte_in_value_is_400, b"POST /hooks/a HTTP/1.1\r\nHost: x\x01y\r\n\r\n", 400;
        missing_host_is_400, b"POST /hooks/a HTTP/1.1\r\n\r\n", 400;
        two_hosts_are_400, b"POST /hooks/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400;
        two_content_lengths_are_400, b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400;
        content_length_list_is_400, b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\n", 400;
        signed_content_length_is_400, b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n", 400;
        huge_content_length_is_400, b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400;
        length_and_chunked_is_400, b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400;
        double_chunked_is_400, b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400;
        chunked_in_http10_is_400, b"POST /hooks/a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400;
        gzip_coding_is_501, b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501;
        expect_other_is_417, b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nExpect: something\r\nContent-Length: 1\r\n\r\n", 417;
        http10_post_without_length_is_411, b"POST /hooks/a HTTP/1.0\r\n\r\n", 411;
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut req = b"POST /hooks/a HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            req.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        assert_eq!(parse(&req).map(|_| ()), Err(431));
    }

    #[test]
    fn head_over_limit_is_431_even_while_partial() {
        let mut req = b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        req.resize(MAX_HEAD_BYTES, b'a');
        assert_eq!(parse(&req).map(|_| ()), Err(431));
    }

    #[test]
    fn long_target_is_414_before_the_line_ends() {
        let mut req = b"POST /".to_vec();
        req.resize(MAX_TARGET_BYTES + 100, b'a');
        assert_eq!(parse(&req).map(|_| ()), Err(414));
    }

    #[test]
    fn long_complete_target_is_414() {
        let target = "/".repeat(MAX_TARGET_BYTES + 1);
        let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(parse(req.as_bytes()).map(|_| ()), Err(414));
    }

    #[test]
    fn partial_head_needs_more() {
        assert_eq!(parse(b"POST /hooks/a HTTP/1.1\r\nHost: x\r\n"), Ok(None));
    }

    #[test]
    fn valid_head_is_split_into_path_and_query() {
        let request = b"POST /hooks/a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-GitHub-Event: push\r\n\r\nhello";
        let (head, len) = parse_head(request).unwrap().unwrap();
        assert_eq!(head.path, "/hooks/a");
        assert_eq!(head.query.as_deref(), Some("x=1"));
        assert_eq!(head.framing, Framing::Length(5));
        assert_eq!(head.header_str("x-github-event"), Some("push"));
        assert_eq!(len, request.len() - b"hello".len());
    }

    #[test]
    fn chunked_and_expect_are_recognised() {
        let head = parse(b"POST /hooks/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\nExpect: 100-Continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        assert!(head.expect_continue);
    }

    /// Reads a whole request from `bytes`; the body, or the status it is refused with.
    fn read_request(bytes: &[u8], max_body: u64) -> Result<Vec<u8>, u16> {
        let mut source = bytes;
        let mut reader = Reader::new(Instant::now() + Duration::from_secs(5));
        let head = reader.read_head(&mut source).map_err(status)?;
        let mut body = Vec::new();
        reader
            .read_body(&mut source, head.framing, max_body, &mut |piece| {
                body.extend_from_slice(piece);
                Ok(())
            })
            .map_err(status)?;
        Ok(body)
    }

    /// `body!{name, bytes after the head (chunked), max_body, expected}`.
    macro_rules! chunked {
        ($($name:ident, $bytes:expr, $max:expr, $expected:expr;)*) => {$(
            #[test]
            fn $name() {
                let mut request = b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                request.extend_from_slice($bytes);
                let expected: Result<&[u8], u16> = $expected;
                assert_eq!(read_request(&request, $max), expected.map(<[u8]>::to_vec));
            }
        )*};
    }

    chunked! {
        chunked_body_is_decoded, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", 100, Ok(b"hello world");
        chunk_extensions_are_ignored, b"5;name=value\r\nhello\r\n0\r\n\r\n", 100, Ok(b"hello");
        trailers_are_skipped, b"1\r\na\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n", 100, Ok(b"a");
        uppercase_hex_sizes_are_read, b"A\r\n0123456789\r\n0\r\n\r\n", 100, Ok(b"0123456789");
        empty_chunked_body_is_empty, b"0\r\n\r\n", 100, Ok(b"");
        invalid_chunk_size_is_400, b"zz\r\nhello\r\n0\r\n\r\n", 100, Err(400);
        missing_crlf_after_data_is_400, b"5\r\nhelloXX0\r\n\r\n", 100, Err(400);
        chunks_over_max_body_are_413, b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", 8, Err(413);
        huge_chunk_size_is_413, b"ffffffffffffffff\r\n", 100, Err(413);
        chunk_size_overflowing_u64_is_400, b"fffffffffffffffff\r\n", 100, Err(400);
        truncated_chunked_body_is_a_close, b"5\r\nhel", 100, Err(0);
        long_chunk_line_is_400, &[b'1'; MAX_CHUNK_LINE_BYTES + 1], u64::MAX, Err(400);
    }

    #[test]
    fn content_length_body_is_read_exactly() {
        let request = b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
        assert_eq!(read_request(request, 5), Ok(b"hello".to_vec()));
        assert_eq!(read_request(request, 4), Err(413));
    }

    #[test]
    fn http10_without_host_is_fine() {
        let head = parse(b"GET /hooks/a HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.minor_version, 0);
        assert_eq!(head.framing, Framing::Empty);
    }

    /// Feeds `body` to `spool` in pieces of every size from 1 byte to 64 KiB.
    fn feed(spool: &mut Spool, body: &[u8]) {
        let (mut at, mut size) = (0, 1);
        while at < body.len() {
            let end = (at + size).min(body.len());
            spool.write(&body[at..end]).unwrap();
            at = end;
            size = size * 3 % (64 * 1024) + 1;
        }
    }

    /// The body, as the command and a filter get it, is `expected`, and sealed.
    fn assert_whole(spool: Spool, expected: &[u8]) {
        let spooled = spool.finish().unwrap();
        assert_eq!(spooled.len(), expected.len() as u64);
        assert!(
            *spooled.map().unwrap() == *expected,
            "the spooled bytes differ"
        );
        let mut stdin = Vec::new();
        spooled
            .reader()
            .unwrap()
            .unwrap()
            .read_to_end(&mut stdin)
            .unwrap();
        assert!(stdin == expected, "the command's stdin differs");
        let file = spooled.reader().unwrap().unwrap();
        assert!(file.write_at(b"x", 0).is_err(), "the body is sealed");
    }

    /// A body past [`PARALLEL_SPOOL_BYTES`], fed faster than one thread
    /// writes it (some pieces wait in its queue, others find it full and are
    /// written in place: writing those at a wrong offset fails this test),
    /// comes out whole and in order, at its length, and sealed. At most
    /// [`MAX_SPOOL_THREADS`] bodies have a thread at once: the next is
    /// written in place, as whole, and a thread is free again once a body
    /// is finished. (One test: the threads are counted for the process.)
    #[test]
    fn large_bodies_spooled_in_parallel_come_out_whole_and_threads_are_bounded() {
        let len = 3 * 1024 * 1024 + 12_345;
        let body: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4099) as u8).collect();
        let mut spool = Spool::new(Framing::Length(len as u64)).unwrap();
        feed(&mut spool, &body);
        assert!(
            spool.writer.is_some(),
            "a body this large gets a spool thread"
        );
        assert_whole(spool, &body);

        let head = PARALLEL_SPOOL_BYTES as usize + 1;
        let mut spools: Vec<Spool> = (0..=MAX_SPOOL_THREADS)
            .map(|_| {
                let mut spool = Spool::new(Framing::Length(len as u64)).unwrap();
                feed(&mut spool, &body[..head]);
                spool
            })
            .collect();
        let threads = spools.iter().filter(|s| s.writer.is_some()).count();
        assert_eq!(threads, MAX_SPOOL_THREADS, "spool threads at once");
        assert!(spools[MAX_SPOOL_THREADS].writer.is_none());
        for spool in &mut spools {
            feed(spool, &body[head..]);
        }
        for spool in spools {
            assert_whole(spool, &body);
        }
        let mut again = Spool::new(Framing::Length(len as u64)).unwrap();
        feed(&mut again, &body);
        assert!(again.writer.is_some(), "the threads were given back");
        assert_whole(again, &body);
    }

    /// A small body never starts a thread.
    #[test]
    fn a_small_body_is_spooled_in_place() {
        let mut spool = Spool::new(Framing::Length(PARALLEL_SPOOL_BYTES)).unwrap();
        spool
            .write(&vec![b'a'; PARALLEL_SPOOL_BYTES as usize])
            .unwrap();
        assert!(spool.writer.is_none());
        assert_eq!(spool.finish().unwrap().len(), PARALLEL_SPOOL_BYTES);
    }
}
