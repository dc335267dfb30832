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

use crate::config::Answer;
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

/// A response: status, extra header fields, and a body.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Extra header fields (`Allow`, `WWW-Authenticate`, `X-Sockhook-Run`).
    pub headers: Vec<(&'static str, String)>,
    /// The media type of the body.
    pub content_type: String,
    /// The body; empty for 204.
    pub body: Vec<u8>,
    /// Answer in HTTP/2 frames instead ([`Refusal::Http2`]).
    pub http2: bool,
}

/// The media type of sockhook's own texts.
const TEXT: &str = "text/plain; charset=utf-8";

impl Response {
    /// 204 No Content: accepted, the command is queued.
    pub fn accepted() -> Response {
        Response::text(204, "")
    }

    /// 200 OK with a line of text.
    pub fn ok(text: &str) -> Response {
        Response::text(200, &format!("{text}\n"))
    }

    /// `status` with `text` (plain, UTF-8) as the body.
    pub fn text(status: u16, text: &str) -> Response {
        Response {
            status,
            headers: Vec::new(),
            content_type: TEXT.to_owned(),
            body: text.as_bytes().to_vec(),
            http2: false,
        }
    }

    /// The answer to a refused request. Server-side details stay in the log.
    pub fn refusal(refusal: &Refusal) -> Response {
        let mut headers = Vec::new();
        match refusal {
            Refusal::MethodNotAllowed { allow } => headers.push(("Allow", allow.clone())),
            Refusal::UpgradeRequired => {
                headers.push(("Sec-WebSocket-Version", "13".into()));
                headers.push(("Upgrade", "websocket".into()));
            }
            Refusal::Busy(_) | Refusal::NotStored(_) => {
                headers.push(("Retry-After", RETRY_AFTER_SECS.to_string()));
            }
            Refusal::Unauthorized {
                challenge: true, ..
            } => {
                headers.push(("WWW-Authenticate", "Basic realm=\"sockhook\"".into()));
            }
            _ => {}
        }
        let body = match refusal {
            Refusal::HookBroken(_) => "hook misconfigured; the server's log says why".into(),
            Refusal::NotStored(_) => {
                "the delivery could not be stored, so it was not accepted; try again later".into()
            }
            r if r.is_server_fault() => "internal error".into(),
            r => r.to_string(),
        };
        Response {
            headers,
            http2: matches!(refusal, Refusal::Http2),
            ..Response::text(refusal.status(), &format!("{body}\n"))
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
                "Content-Type: {}\r\nContent-Length: {}\r\n",
                self.content_type,
                self.body.len()
            ));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if self.status != 204 {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }

    /// The head of a streamed answer for run `pid`: 200,
    /// `Transfer-Encoding: chunked` (RFC 9112 §7.1), a trailer announced for
    /// the run's outcome.
    pub fn stream_head(content_type: &str, pid: u32, now: SystemTime) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nDate: {}\r\nConnection: close\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nX-Sockhook-Run: run {pid} started\r\nTrailer: X-Sockhook-Run\r\n\r\n",
            http_date(now)
        )
        .into_bytes()
    }
}

/// One chunk of a streamed answer.
pub fn chunk(bytes: &[u8], out: &mut Vec<u8>) {
    if bytes.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// The end of a streamed answer: the last chunk and the run's outcome as a trailer.
pub fn last_chunk(run: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("0\r\nX-Sockhook-Run: {run}\r\n\r\n").as_bytes());
}

impl Response {
    /// The answer after a run: what `outcome` says, in the hook's terms.
    ///
    /// Exit 0 is 200 with the command's stdout (or, when it printed
    /// nothing, a line saying how the run ended); another exit code, or a
    /// signal, is 502 (the command behind sockhook failed); a run past its
    /// `timeout` is 504; one that could not start, 500; one sockhook stopped,
    /// 503. The hook's `exit_status` maps exit codes to other statuses.
    /// `X-Sockhook-Run` says which run it was and how it ended.
    pub fn after_run(answer: &Answer, result: &RunResult) -> Response {
        let status = match &result.ended {
            Ended::NotStarted(_) => 500,
            Ended::TimedOut => 504,
            Ended::Stopped => 503,
            Ended::Exited(code) => answer.exit_status.get(code).copied().unwrap_or(match code {
                0 => 200,
                _ => 502,
            }),
            Ended::Killed(_) | Ended::Lost => 502,
        };
        let mut body = result.stdout.clone();
        if answer.include_stderr {
            body.extend_from_slice(&result.stderr);
        }
        let mut response = Response {
            status,
            headers: vec![("X-Sockhook-Run", result.describe())],
            content_type: answer.content_type.clone(),
            body,
            http2: false,
        };
        if status == 503 {
            response
                .headers
                .push(("Retry-After", RETRY_AFTER_SECS.to_string()));
        }
        // A command that prints nothing (`systemctl restart`) still tells a
        // phone button what happened.
        if response.body.is_empty() {
            response.content_type = TEXT.to_owned();
            response.body = format!("{}\n", result.describe()).into_bytes();
        }
        response
    }
}

/// What an answer after the run says about the run: which it was, how it
/// ended, what it printed (capped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    /// The run's process id, when it started.
    pub pid: Option<u32>,
    /// How long it ran, when it started.
    pub elapsed: Option<Duration>,
    /// How it ended.
    pub ended: Ended,
    /// Its stdout, cut at [`OUTPUT_MAX`] with a marker.
    pub stdout: Vec<u8>,
    /// Its stderr, cut likewise.
    pub stderr: Vec<u8>,
}

/// How a run ended, as an answer tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Killed(i32),
    /// It outlived the hook's `timeout`.
    TimedOut,
    /// sockhook stopped it, stopping itself.
    Stopped,
    /// It could not be started: why.
    NotStarted(String),
    /// It could not be waited for.
    Lost,
}

impl RunResult {
    /// `1234 exited 0`, `1234 timed out`, `not started: …`: for
    /// `X-Sockhook-Run` and the log.
    pub fn describe(&self) -> String {
        let what = match &self.ended {
            Ended::Exited(code) => format!("exited {code}"),
            Ended::Killed(signal) => format!("killed by signal {signal}"),
            Ended::TimedOut => "timed out".to_owned(),
            Ended::Stopped => "stopped as sockhook stopped".to_owned(),
            Ended::NotStarted(why) => return format!("not started: {why}"),
            Ended::Lost => "lost".to_owned(),
        };
        match self.pid {
            Some(pid) => match self.elapsed {
                Some(elapsed) => format!("run {pid} {what} after {:.3} s", elapsed.as_secs_f64()),
                None => format!("run {pid} {what}"),
            },
            None => what,
        }
    }

    /// Whether the run succeeded, whatever status the hook maps it to.
    pub fn succeeded(&self) -> bool {
        self.ended == Ended::Exited(0)
    }
}

/// Most bytes of stdout (and of stderr) an answer after the run carries;
/// more are cut, with [`CUT_MARKER`] after them.
pub const OUTPUT_MAX: usize = 64 * 1024;
/// What follows output that was cut.
pub const CUT_MARKER: &[u8] = b"\n[sockhook: output cut at 65536 bytes]\n";

/// Every status sockhook sends, with its reason phrase (RFC 9110 §15).
pub const STATUSES: [(u16, &str); 25] = [
    (100, "Continue"),
    (101, "Switching Protocols"),
    (200, "OK"),
    (202, "Accepted"),
    (204, "No Content"),
    (400, "Bad Request"),
    (401, "Unauthorized"),
    (403, "Forbidden"),
    (404, "Not Found"),
    (405, "Method Not Allowed"),
    (408, "Request Timeout"),
    (411, "Length Required"),
    (413, "Content Too Large"),
    (414, "URI Too Long"),
    (415, "Unsupported Media Type"),
    (417, "Expectation Failed"),
    (422, "Unprocessable Content"),
    (426, "Upgrade Required"),
    (431, "Request Header Fields Too Large"),
    (500, "Internal Server Error"),
    (501, "Not Implemented"),
    (502, "Bad Gateway"),
    (503, "Service Unavailable"),
    (504, "Gateway Timeout"),
    (505, "HTTP Version Not Supported"),
];

/// Statuses sockhook sends only when a hook's `exit_status` maps to them,
/// with their reason phrases (RFC 9110 §15, RFC 6585).
const MAPPED_STATUSES: [(u16, &str); 8] = [
    (201, "Created"),
    (409, "Conflict"),
    (410, "Gone"),
    (412, "Precondition Failed"),
    (423, "Locked"),
    (424, "Failed Dependency"),
    (429, "Too Many Requests"),
    (507, "Insufficient Storage"),
];

/// The reason phrase of `status`; a status a hook's `exit_status` maps to
/// that sockhook has no phrase for gets its class's (RFC 9110 §15).
pub fn reason_phrase(status: u16) -> &'static str {
    STATUSES
        .iter()
        .chain(&MAPPED_STATUSES)
        .find(|(code, _)| *code == status)
        .map_or(
            match status / 100 {
                2 => "Success",
                3 => "Redirection",
                4 => "Client Error",
                _ => "Server Error",
            },
            |(_, phrase)| phrase,
        )
}

/// The civil date (year, month, day) of `days` since 1970-01-01 (H.
/// Hinnant, "chrono-Compatible Low-Level Date Algorithms").
pub fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(month <= 2), month, day)
}

/// An IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(now: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil(days);
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
            String::from_utf8_lossy(&r.body)
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
        let body = String::from_utf8_lossy(&r.body);
        assert!(!body.contains("/etc"), "{body}");
    }

    fn answer(exit_status: &[(i32, u16)]) -> Answer {
        Answer {
            respond: crate::config::Respond::AfterRun,
            timeout: Duration::from_secs(5),
            content_type: "application/json".into(),
            include_stderr: false,
            exit_status: exit_status.iter().copied().collect(),
        }
    }

    fn result(ended: Ended, stdout: &[u8]) -> RunResult {
        RunResult {
            pid: Some(42),
            elapsed: Some(Duration::from_millis(1500)),
            ended,
            stdout: stdout.to_vec(),
            stderr: b"secret path".to_vec(),
        }
    }

    #[test]
    fn after_run_statuses_one_line_per_case() {
        let mapped = answer(&[(3, 409), (0, 201), (4, 200)]);
        for (answer, ended, status) in [
            (answer(&[]), Ended::Exited(0), 200),
            (answer(&[]), Ended::Exited(1), 502),
            (answer(&[]), Ended::Killed(9), 502),
            (answer(&[]), Ended::Lost, 502),
            (answer(&[]), Ended::TimedOut, 504),
            (answer(&[]), Ended::Stopped, 503),
            (answer(&[]), Ended::NotStarted("ENOENT".into()), 500),
            (mapped.clone(), Ended::Exited(3), 409),
            (mapped.clone(), Ended::Exited(0), 201),
            (mapped.clone(), Ended::Exited(4), 200),
            (mapped.clone(), Ended::TimedOut, 504),
        ] {
            let r = Response::after_run(&answer, &result(ended.clone(), b"out"));
            assert_eq!(r.status, status, "{ended:?}");
            assert!(!String::from_utf8_lossy(&r.body).contains("secret"));
        }
    }

    #[test]
    fn after_run_names_the_run_and_explains_an_empty_failure() {
        let r = Response::after_run(&answer(&[]), &result(Ended::Exited(0), b"{}"));
        assert_eq!(r.content_type, "application/json");
        assert_eq!(r.body, b"{}");
        assert_eq!(
            r.headers,
            [(
                "X-Sockhook-Run",
                "run 42 exited 0 after 1.500 s".to_string()
            )]
        );
        for ended in [Ended::Exited(0), Ended::Exited(5)] {
            let r = Response::after_run(&answer(&[]), &result(ended.clone(), b""));
            assert_eq!(r.content_type, TEXT);
            let code = if ended == Ended::Exited(0) { 0 } else { 5 };
            let line = format!("run 42 exited {code} after 1.500 s\n");
            assert_eq!(r.body, line.as_bytes());
        }
        let r = Response::after_run(&answer(&[]), &result(Ended::Stopped, b""));
        assert!(r.headers.iter().any(|(name, _)| *name == "Retry-After"));
    }

    #[test]
    fn mapped_statuses_have_their_phrases() {
        assert_eq!(reason_phrase(409), "Conflict");
        assert_eq!(reason_phrase(422), "Unprocessable Content");
        assert_eq!(reason_phrase(299), "Success");
        assert_eq!(reason_phrase(599), "Server Error");
    }

    #[test]
    fn chunks_and_the_trailer() {
        let mut out = Vec::new();
        chunk(b"", &mut out);
        assert!(out.is_empty(), "an empty chunk would end the body");
        chunk(b"hello\n", &mut out);
        last_chunk("run 1 exited 0", &mut out);
        assert_eq!(
            out,
            b"6\r\nhello\n\r\n0\r\nX-Sockhook-Run: run 1 exited 0\r\n\r\n"
        );
    }
}
