//! Stage 2: read the request head and body within hard limits on bytes and time.
//!
//! `httparse` parses the head; body framing is ours (RFC 9112 §6): one valid
//! `Content-Length`, or `Transfer-Encoding: chunked` alone, nothing else.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::num::NonZeroUsize;
use std::ops::Deref;
use std::ptr::NonNull;
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
/// Size of the read buffer; must exceed `MAX_HEAD_BYTES`.
const BUFFER_BYTES: usize = 16 * 1024;

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
#[derive(Debug, PartialEq, Eq)]
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

/// Reads one request from a connection, never more than the limits allow.
///
/// INVARIANT: `buf[start..end]` holds bytes read from the peer and not yet consumed.
pub struct Reader {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    deadline: Instant,
}

impl Reader {
    /// A reader whose every read must finish by `deadline`.
    pub fn new(deadline: Instant) -> Reader {
        Reader {
            buf: vec![0; BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            deadline,
        }
    }

    /// Whether bytes after the head are already buffered (the client did not wait for `100 Continue`).
    pub fn has_buffered(&self) -> bool {
        self.start < self.end
    }

    /// The method and target of the request line as received, once the line
    /// is complete: for the log when the rest of the head is refused.
    pub fn request_line(&self) -> Option<(&[u8], &[u8])> {
        let received = &self.buf[..self.end];
        let line = &received[..received.iter().position(|&b| b == b'\n')?];
        let mut words = line.split(|&b| b == b' ');
        Some((words.next()?, words.next()?))
    }

    /// Reads and validates the head.
    pub fn read_head(&mut self, stream: &mut impl Source) -> Result<Head, RequestError> {
        loop {
            if let Some((head, len)) = parse_head(&self.buf[self.start..self.end])? {
                self.start += len;
                return Ok(head);
            }
            self.fill(stream)?;
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
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<u64, RequestError> {
        framing.check(max_body)?;
        match framing {
            Framing::Empty => Ok(0),
            Framing::Length(len) => self.copy(stream, len, sink).map(|()| len),
            Framing::Chunked => self.read_chunked(stream, max_body, sink),
        }
    }

    fn read_chunked(
        &mut self,
        stream: &mut impl Source,
        max_body: u64,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<u64, RequestError> {
        let mut total: u64 = 0;
        loop {
            let size = loop {
                match httparse::parse_chunk_size(&self.buf[self.start..self.end]) {
                    // The same limit whether the line arrived whole or in pieces.
                    Ok(Status::Complete((len, _))) if len > MAX_CHUNK_LINE_BYTES => {
                        return Err(Refusal::Malformed("chunk-size line too long").into());
                    }
                    Ok(Status::Complete((len, size))) => {
                        self.start += len;
                        break size;
                    }
                    Ok(Status::Partial) if self.end - self.start >= MAX_CHUNK_LINE_BYTES => {
                        return Err(Refusal::Malformed("chunk-size line too long").into());
                    }
                    Ok(Status::Partial) => self.fill(stream)?,
                    Err(_) => return Err(Refusal::Malformed("invalid chunk size").into()),
                }
            };
            if size == 0 {
                self.skip_trailers(stream)?;
                return Ok(total);
            }
            total = total
                .checked_add(size)
                .filter(|&t| t <= max_body)
                .ok_or(Refusal::BodyTooLarge { limit: max_body })?;
            self.copy(stream, size, sink)?;
            while self.end - self.start < 2 {
                self.fill(stream)?;
            }
            if &self.buf[self.start..self.start + 2] != b"\r\n" {
                return Err(Refusal::Malformed("chunk data not followed by CRLF").into());
            }
            self.start += 2;
        }
    }

    /// Consumes the trailer section after the last chunk; its fields are ignored.
    fn skip_trailers(&mut self, stream: &mut impl Source) -> Result<(), RequestError> {
        let mut seen = 0;
        loop {
            let pending = &self.buf[self.start..self.end];
            // The limit counts trailer bytes only, not what follows the request.
            match pending.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    let blank = pending[..nl].iter().all(|&b| b == b'\r') && nl <= 1;
                    self.start += nl + 1;
                    seen += nl + 1;
                    if blank {
                        return Ok(());
                    }
                    if seen > MAX_HEAD_BYTES {
                        return Err(Refusal::HeadTooLarge.into());
                    }
                }
                None if seen + pending.len() > MAX_HEAD_BYTES => {
                    return Err(Refusal::HeadTooLarge.into());
                }
                None => self.fill(stream)?,
            }
        }
    }

    /// Moves exactly `len` bytes from the peer to `sink`.
    fn copy(
        &mut self,
        stream: &mut impl Source,
        mut len: u64,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), RequestError> {
        while len > 0 {
            if self.start == self.end {
                self.fill(stream)?;
            }
            let take = (self.end - self.start).min(usize::try_from(len).unwrap_or(usize::MAX));
            sink(&self.buf[self.start..self.start + take])
                .map_err(|e| Refusal::internal("spool the body", e))?;
            self.start += take;
            len -= take as u64;
        }
        Ok(())
    }

    /// Reads at least one more byte, compacting the buffer first if needed.
    fn fill(&mut self, stream: &mut impl Source) -> Result<(), RequestError> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Refusal::Timeout.into());
            }
            stream.set_read_timeout(Some(left)).map_err(Lost::Io)?;
            match stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(Lost::Closed.into()),
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
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
        let mut file = match framing {
            Framing::Empty => None,
            Framing::Length(_) | Framing::Chunked => Some(
                memfd_create(
                    "sockhook-body",
                    MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
                )
                .map(File::from)
                .map_err(|e| Refusal::internal("create a memory file for the body", e.into()))?,
            ),
        };
        let len = self.read_body(stream, framing, max_body, &mut |piece| {
            inspect(piece);
            match &mut file {
                Some(file) => file.write_all(piece),
                None => Ok(()),
            }
        })?;
        let Some(file) = file.filter(|_| len > 0) else {
            return Ok(Body { file: None, len: 0 });
        };
        // Sealed, the body can change no more, so a mapping of it is a stable `&[u8]`.
        let seals = SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_WRITE
            | SealFlag::F_SEAL_SEAL;
        fcntl(&file, FcntlArg::F_ADD_SEALS(seals))
            .map_err(|e| Refusal::internal("seal the body's memory file", e.into()))?;
        Ok(Body {
            file: Some(file),
            len,
        })
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
        http2_preface_is_400, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400;
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
}
