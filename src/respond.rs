//! Stage 5: answer, half-close, drain, close — so the answer is never lost.
//!
//! Closing a socket with unread input makes Linux send RST instead of FIN, and
//! the peer may then discard the response it already received (RFC 1122
//! §4.2.2.13, RFC 2525 §2.17, hyper#3078: the netcat race). So after the
//! response the write side is shut down and the peer's remaining bytes are read
//! and discarded, within bounds, before the socket is closed. [`Closing`] is
//! the only way an answered connection ends, so no path can skip it.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::Refusal;
use crate::listen::Stream;

/// Longest wait for one read while draining.
pub const DRAIN_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest time spent draining in all, after a whole request.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest time spent draining after a refusal made before the body was
/// read: enough for a client that sends its whole body before it reads,
/// short so that a hostile one holds its connection briefly.
pub const REFUSAL_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes read and discarded while draining.
pub const DRAIN_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Longest wait for one write of the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// What a 503 asks the client to wait before it tries again, in seconds.
pub const RETRY_AFTER_SECS: u64 = 5;

/// What an HTTP/2 client that did not ask first gets: the server's
/// connection preface, an empty SETTINGS frame, then GOAWAY with the last
/// stream 0 and the error HTTP_1_1_REQUIRED (0xd), so that it says why
/// (RFC 9113 §3.4, §6.8, §7).
const HTTP2_GOAWAY: [u8; 26] = [
    0, 0, 0, 0x4, 0, 0, 0, 0, 0, // SETTINGS, empty
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY, 8 bytes
    0, 0, 0, 0, // last stream id
    0, 0, 0, 0xd, // HTTP_1_1_REQUIRED
];

/// A response: status, extra header fields, and a short plain-text body.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Extra header fields (`Allow`, `WWW-Authenticate`).
    pub headers: Vec<(&'static str, String)>,
    /// The body; empty for 204.
    pub body: String,
    /// Answer in HTTP/2 frames instead ([`Refusal::Http2`]).
    pub http2: bool,
}

impl Response {
    /// 204 No Content: accepted, the command is queued.
    pub fn accepted() -> Response {
        Response {
            status: 204,
            headers: Vec::new(),
            body: String::new(),
            http2: false,
        }
    }

    /// 200 OK with a line of text.
    pub fn ok(text: &str) -> Response {
        Response {
            status: 200,
            headers: Vec::new(),
            body: format!("{text}\n"),
            http2: false,
        }
    }

    /// The answer to a refused request. Server-side details stay in the log.
    pub fn refusal(refusal: &Refusal) -> Response {
        let mut headers = Vec::new();
        match refusal {
            Refusal::MethodNotAllowed { allow } => headers.push(("Allow", allow.clone())),
            Refusal::Busy(_) => headers.push(("Retry-After", RETRY_AFTER_SECS.to_string())),
            Refusal::Unauthorized {
                challenge: true, ..
            } => {
                headers.push(("WWW-Authenticate", "Basic realm=\"sockhook\"".into()));
            }
            _ => {}
        }
        let body = match refusal {
            Refusal::HookBroken(_) => "hook misconfigured; the server's log says why".into(),
            r if r.is_server_fault() => "internal error".into(),
            r => r.to_string(),
        };
        Response {
            status: refusal.status(),
            headers,
            body: format!("{body}\n"),
            http2: matches!(refusal, Refusal::Http2),
        }
    }

    /// The bytes on the wire, dated `now`.
    pub fn to_bytes(&self, now: SystemTime) -> Vec<u8> {
        if self.http2 {
            return HTTP2_GOAWAY.to_vec();
        }
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nDate: {}\r\nConnection: close\r\n",
            self.status,
            reason_phrase(self.status),
            http_date(now)
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        // RFC 9110 §8.6: a 204 has no body and no Content-Length.
        if self.status != 204 {
            out.push_str(&format!(
                "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
                self.body.len()
            ));
        }
        out.push_str("\r\n");
        if self.status != 204 {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

/// Every status sockhook sends, with its reason phrase (RFC 9110 §15).
pub const STATUSES: [(u16, &str); 18] = [
    (100, "Continue"),
    (200, "OK"),
    (204, "No Content"),
    (400, "Bad Request"),
    (401, "Unauthorized"),
    (404, "Not Found"),
    (405, "Method Not Allowed"),
    (408, "Request Timeout"),
    (411, "Length Required"),
    (413, "Content Too Large"),
    (414, "URI Too Long"),
    (415, "Unsupported Media Type"),
    (417, "Expectation Failed"),
    (431, "Request Header Fields Too Large"),
    (500, "Internal Server Error"),
    (501, "Not Implemented"),
    (503, "Service Unavailable"),
    (505, "HTTP Version Not Supported"),
];

/// The reason phrase of `status`.
pub fn reason_phrase(status: u16) -> &'static str {
    STATUSES
        .iter()
        .find(|(code, _)| *code == status)
        .map_or("Unknown", |(_, phrase)| phrase)
}

/// An IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(now: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms").
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// An answer on its way out, then the half-close and the drain: the only way
/// a connection that was answered ends, so that no answer is lost to an RST.
///
/// Driven by the event loop: [`Closing::write`] when the socket is
/// writable, [`Closing::drain`] when it is readable, [`Closing::deadline`]
/// for when to give up.
#[derive(Debug)]
pub struct Closing {
    /// INVARIANT: `sent <= out.len()`; once all is sent, `draining` is set.
    out: Vec<u8>,
    sent: usize,
    draining: Option<Drain>,
    /// How long the drain may take in all.
    drain_for: Duration,
    /// Giving up on the write.
    write_until: Instant,
}

#[derive(Debug)]
struct Drain {
    until: Instant,
    quiet_until: Instant,
    bytes: u64,
}

/// What a [`Closing`] needs next.
#[derive(Debug)]
pub enum Step {
    /// Call [`Closing::write`] again once the socket is writable.
    Write,
    /// The answer is out and the write side shut down: log it; call
    /// [`Closing::drain`] once the socket is readable.
    Written,
    /// Call [`Closing::drain`] again once the socket is readable.
    Drain,
    /// Close the socket now. `Err` if the answer could not be delivered.
    Close(Result<(), io::Error>),
}

impl Closing {
    /// The bytes of an answer, then a drain of at most `drain_for`.
    pub fn new(out: Vec<u8>, drain_for: Duration) -> Closing {
        Closing {
            out,
            sent: 0,
            draining: None,
            drain_for,
            write_until: Instant::now() + WRITE_TIMEOUT,
        }
    }

    /// When to give up: on the write, or on the drain.
    pub fn deadline(&self) -> Instant {
        match &self.draining {
            None => self.write_until,
            Some(drain) => drain.until.min(drain.quiet_until),
        }
    }

    /// Whether the answer is out.
    pub fn is_written(&self) -> bool {
        self.draining.is_some()
    }

    /// Writes what the socket takes; once all is out, half-closes.
    pub fn write(&mut self, stream: &mut impl Outlet) -> Step {
        while self.sent < self.out.len() {
            match stream.write(&self.out[self.sent..]) {
                Ok(0) => return Step::Close(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Write,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Step::Close(Err(e)),
            }
        }
        // Never SO_LINGER 0: that sends RST by design. The FIN goes out
        // after the answer's last byte.
        if let Err(e) = stream.shutdown_write() {
            return Step::Close(Err(e));
        }
        let now = Instant::now();
        self.draining = Some(Drain {
            until: now + self.drain_for,
            quiet_until: now + DRAIN_READ_TIMEOUT,
            bytes: 0,
        });
        Step::Written
    }

    /// Reads and discards what the peer still sends, until it closes or a
    /// bound is reached. `scratch` must not be empty: a read into nothing
    /// returns 0, which would look like the peer's close.
    pub fn drain(&mut self, stream: &mut impl Read, scratch: &mut [u8]) -> Step {
        assert!(!scratch.is_empty(), "drain into an empty buffer");
        let Some(drain) = &mut self.draining else {
            return Step::Write;
        };
        loop {
            match stream.read(scratch) {
                Ok(0) => return Step::Close(Ok(())),
                Ok(n) => {
                    drain.bytes += n as u64;
                    drain.quiet_until = Instant::now() + DRAIN_READ_TIMEOUT;
                    if drain.bytes >= DRAIN_MAX_BYTES {
                        return Step::Close(Ok(()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Drain,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The answer is out; whatever else goes wrong now, it was delivered.
                Err(_) => return Step::Close(Ok(())),
            }
        }
    }

    /// What to do when the deadline passed.
    pub fn expire(&self) -> Step {
        match self.draining {
            None => Step::Close(Err(io::ErrorKind::TimedOut.into())),
            Some(_) => Step::Close(Ok(())),
        }
    }
}

/// The writing side of a connection, for [`Closing`].
pub trait Outlet: Write {
    /// Shuts down the write side: FIN once everything written is out.
    fn shutdown_write(&mut self) -> io::Result<()>;
}

impl Outlet for Stream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        Stream::shutdown_write(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_imf_fixdate() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(http_date(leap), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn no_content_has_no_body_and_no_length() {
        let bytes = String::from_utf8(Response::accepted().to_bytes(UNIX_EPOCH)).unwrap();
        assert_eq!(
            bytes,
            "HTTP/1.1 204 No Content\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn refusals_carry_their_headers_and_a_length() {
        let r = Response::refusal(&Refusal::MethodNotAllowed {
            allow: "POST".into(),
        });
        let bytes = String::from_utf8(r.to_bytes(UNIX_EPOCH)).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(bytes.contains("\r\nAllow: POST\r\n"));
        assert!(bytes.ends_with(&format!(
            "Content-Length: {}\r\n\r\n{}",
            r.body.len(),
            r.body
        )));
        let r = Response::refusal(&Refusal::Unauthorized {
            reason: "x".into(),
            challenge: true,
        });
        assert_eq!(
            r.headers,
            [("WWW-Authenticate", "Basic realm=\"sockhook\"".to_string())]
        );
    }

    #[test]
    fn misconfiguration_details_stay_in_the_log() {
        let r = Response::refusal(&Refusal::HookBroken(crate::config::Problem {
            path: "/etc/sockhook/secret".into(),
            message: "denied".into(),
        }));
        assert_eq!(r.status, 500);
        assert!(!r.body.contains("/etc"), "{}", r.body);
    }
}
