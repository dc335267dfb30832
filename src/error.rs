//! The two kinds of failure, kept apart: why a request was not accepted
//! ([`RequestError`], which maps to a status or to no answer at all), and why
//! the program stops ([`Error`], which maps to an exit code).

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A problem found while loading the configuration, tied to the file it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (or directory) at fault.
    pub path: PathBuf,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

/// Exit code: all well.
pub const EXIT_OK: u8 = 0;
/// Exit code: a command failed (`serve`) or a problem was found (`check`).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: usage or configuration error; permanent, systemd should not loop on it.
pub const EXIT_CONFIG: u8 = 100;
/// Exit code: internal bug (a panic).
pub const EXIT_BUG: u8 = 101;
/// Exit code: a system call failed; temporary.
pub const EXIT_SYSTEM: u8 = 111;

/// Every exit code, for `--help` and the man page.
pub const EXIT_CODES: [u8; 5] = [EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_BUG, EXIT_SYSTEM];

/// Why a request was not accepted.
#[derive(Debug)]
pub enum RequestError {
    /// Refused: answered with the refusal's status.
    Refused(Refusal),
    /// The connection ended before a response could be given.
    Lost(Lost),
}

impl From<Refusal> for RequestError {
    fn from(refusal: Refusal) -> RequestError {
        RequestError::Refused(refusal)
    }
}

impl From<Lost> for RequestError {
    fn from(lost: Lost) -> RequestError {
        RequestError::Lost(lost)
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Refused(refusal) => refusal.fmt(f),
            RequestError::Lost(lost) => lost.fmt(f),
        }
    }
}

impl std::error::Error for RequestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RequestError::Refused(refusal) => Some(refusal),
            RequestError::Lost(lost) => Some(lost),
        }
    }
}

/// A refused request; each variant is answered with one status (RFC 9110 §15).
pub enum Refusal {
    /// The request is not valid HTTP/1.x as sockhook accepts it (400).
    Malformed(&'static str),
    /// Credentials are missing or do not match (401); `challenge` asks for Basic auth.
    Unauthorized {
        /// Why, in words a user can act on; never contains a secret.
        reason: String,
        /// Send `WWW-Authenticate: Basic` so that a browser prompts.
        challenge: bool,
    },
    /// Credentials that are valid for something else: a relay subscriber's
    /// token for another path, or a missing opt-in header (403).
    Forbidden(String),
    /// The client's address is not in the hook's `allow_from` (403); the
    /// address, or `None` for a Unix-socket peer that forwards none.
    NotAllowedFrom(Option<std::net::IpAddr>),
    /// No hook is served at this path (404).
    NotFound,
    /// The hook does not accept this method (405); `allow` lists the ones it does.
    MethodNotAllowed {
        /// Value of the `Allow` header.
        allow: String,
    },
    /// The request was not complete within the request deadline (408).
    Timeout,
    /// An HTTP/1.0 request with a body method carries no `Content-Length` (411).
    LengthRequired,
    /// The body is larger than the hook's `max_body` (413).
    BodyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The request target is longer than `MAX_TARGET_BYTES` (414).
    TargetTooLong,
    /// The hook filters on JSON fields and the body is not declared JSON (415).
    UnsupportedMediaType,
    /// The hook filters on JSON fields and the body comes in a content
    /// coding (`Content-Encoding: gzip`) that sockhook does not decode (415);
    /// the coding as sent, cleaned for the log.
    UnsupportedContentCoding(String),
    /// The body cannot give what the hook reads from it (422): a form
    /// without its `payload`, an `[env]` field missing with
    /// `env_required`, too long, holding a NUL; the reason names it.
    Unprocessable(String),
    /// The `Expect` header asks for something other than `100-continue` (417).
    ExpectationFailed,
    /// A websocket upgrade asks for a version other than 13 (426).
    UpgradeRequired,
    /// The request head is longer than `MAX_HEAD_BYTES` or has too many fields (431).
    HeadTooLarge,
    /// The hook's file, secret or the server key is broken (500).
    HookBroken(Problem),
    /// A system call failed while serving the request (500).
    Internal {
        /// The operation, as in "unable to `what`".
        what: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// A transfer coding other than `chunked` (501).
    UnsupportedCoding,
    /// A limit shared with other clients is reached; try again later (503).
    Busy(&'static str),
    /// The delivery could not be stored in the journal, so it is not
    /// accepted (503): a full or read-only disk, or a journal full of
    /// pending deliveries.
    NotStored(io::Error),
    /// An HTTP/2 client with prior knowledge: answered with an HTTP/2
    /// GOAWAY, `HTTP_1_1_REQUIRED`, logged as 505.
    Http2,
}

impl Refusal {
    /// The status this refusal is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Malformed(_) => 400,
            Refusal::Unauthorized { .. } => 401,
            Refusal::Forbidden(_) | Refusal::NotAllowedFrom(_) => 403,
            Refusal::NotFound => 404,
            Refusal::MethodNotAllowed { .. } => 405,
            Refusal::Timeout => 408,
            Refusal::LengthRequired => 411,
            Refusal::BodyTooLarge { .. } => 413,
            Refusal::TargetTooLong => 414,
            Refusal::UnsupportedMediaType | Refusal::UnsupportedContentCoding(_) => 415,
            Refusal::ExpectationFailed => 417,
            Refusal::Unprocessable(_) => 422,
            Refusal::UpgradeRequired => 426,
            Refusal::HeadTooLarge => 431,
            Refusal::HookBroken(_) | Refusal::Internal { .. } => 500,
            Refusal::UnsupportedCoding => 501,
            Refusal::Busy(_) | Refusal::NotStored(_) => 503,
            Refusal::Http2 => 505,
        }
    }

    /// Whether the server is at fault, so that an administrator must act: a
    /// 5xx other than 501, which only says the client asked for too much,
    /// and 503, which says clients together asked for too much.
    pub fn is_server_fault(&self) -> bool {
        matches!(
            self,
            Refusal::HookBroken(_) | Refusal::Internal { .. } | Refusal::NotStored(_)
        )
    }

    /// Shorthand for [`Refusal::Internal`].
    pub fn internal(what: impl Into<String>, source: io::Error) -> Refusal {
        Refusal::Internal {
            what: what.into(),
            source,
        }
    }

    /// Shorthand for a 401 without a Basic-auth challenge.
    pub fn unauthorized(reason: impl Into<String>) -> Refusal {
        Refusal::Unauthorized {
            reason: reason.into(),
            challenge: false,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Malformed(why) => write!(f, "malformed request: {why}"),
            Refusal::Unauthorized { reason, .. } => write!(f, "unauthorized: {reason}"),
            Refusal::Forbidden(why) => write!(f, "forbidden: {why}"),
            Refusal::NotAllowedFrom(Some(ip)) => {
                write!(f, "forbidden: {ip} is not in this hook's allow_from")
            }
            Refusal::NotAllowedFrom(None) => f.write_str(
                "forbidden: a Unix-socket peer has no address for allow_from; trust it with --trusted-proxy unix so that the address it forwards counts",
            ),
            Refusal::NotFound => f.write_str("no such hook"),
            Refusal::MethodNotAllowed { allow } => {
                write!(f, "method not allowed (allowed: {allow})")
            }
            Refusal::Timeout => f.write_str("request not complete within the deadline"),
            Refusal::LengthRequired => f.write_str("body without Content-Length"),
            Refusal::BodyTooLarge { limit } => write!(f, "body larger than {limit} bytes"),
            Refusal::TargetTooLong => f.write_str("request target too long"),
            Refusal::UnsupportedMediaType => {
                f.write_str("this hook reads a JSON payload ([match], [env] or stdin = \"payload\"): send Content-Type: application/json, or a form (application/x-www-form-urlencoded or multipart/form-data) with a payload field")
            }
            Refusal::UnsupportedContentCoding(coding) => write!(
                f,
                "Content-Encoding {coding} is not supported: this hook reads JSON fields in the body as sent; turn compression off at the sender"
            ),
            Refusal::Unprocessable(why) => f.write_str(why),
            Refusal::ExpectationFailed => f.write_str("only Expect: 100-continue is supported"),
            Refusal::UpgradeRequired => f.write_str("websocket version other than 13"),
            Refusal::HeadTooLarge => f.write_str("request head too large"),
            Refusal::HookBroken(problem) => write!(f, "hook misconfigured: {}", problem.message),
            Refusal::Internal { what, source } => write!(f, "unable to {what}: {source}"),
            Refusal::UnsupportedCoding => f.write_str("transfer coding other than chunked"),
            Refusal::Busy(why) => write!(f, "busy: {why}"),
            Refusal::NotStored(e) => write!(f, "unable to journal the delivery: {e}"),
            Refusal::Http2 => f.write_str("HTTP/2 without TLS: answered GOAWAY, HTTP_1_1_REQUIRED"),
        }
    }
}

impl std::error::Error for Refusal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Refusal::Internal { source, .. } | Refusal::NotStored(source) => Some(source),
            _ => None,
        }
    }
}

/// How a connection ended before a response could be given.
pub enum Lost {
    /// The peer closed its side before the request was complete.
    Closed,
    /// Reading from or writing to the peer failed.
    Io(io::Error),
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::Closed => f.write_str("peer closed the connection early"),
            Lost::Io(e) => write!(f, "connection failed: {e}"),
        }
    }
}

impl std::error::Error for Lost {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Lost::Io(e) => Some(e),
            Lost::Closed => None,
        }
    }
}

/// Why the program stops before its work is done.
pub enum Error {
    /// The command line is wrong.
    Usage(String),
    /// A file sockhook needs is missing or invalid.
    Config(Problem),
    /// The socket passed by systemd is not one sockhook can serve.
    Socket(String),
    /// A system call failed: `what` names the operation, as in "unable to `what`".
    System {
        /// The operation, e.g. "bind 127.0.0.1:7777".
        what: String,
        /// The operating system's error.
        source: io::Error,
    },
}

impl Error {
    /// The process exit code when this error ends the program.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Config(_) | Error::Socket(_) => EXIT_CONFIG,
            Error::System { .. } => EXIT_SYSTEM,
        }
    }

    /// Shorthand for [`Error::System`].
    pub fn system(what: impl Into<String>, source: io::Error) -> Error {
        Error::System {
            what: what.into(),
            source,
        }
    }
}

impl From<Problem> for Error {
    fn from(problem: Problem) -> Error {
        Error::Config(problem)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(why) => f.write_str(why),
            Error::Config(problem) => problem.fmt(f),
            Error::Socket(why) => write!(f, "unusable socket: {why}"),
            Error::System { what, source } => write!(f, "unable to {what}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::System { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// `Debug` as `Display`, so that `{:?}` and a failed `unwrap` show the
/// message itself (lexopt's way).
macro_rules! debug_is_display {
    ($($t:ty),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    )*};
}

debug_is_display!(Refusal, Lost, Error);
