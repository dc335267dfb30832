//! The one error type: every way a request can be refused and every way the
//! program can fail, with the HTTP status and the exit code each maps to.

use std::fmt;
use std::io;
use std::path::PathBuf;

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

/// Everything that can go wrong, from a malformed request to a missing socket.
pub enum Error {
    /// The request is not valid HTTP/1.x as sockhook accepts it (400).
    Malformed(&'static str),
    /// Credentials are missing or do not match (401); `challenge` asks for Basic auth.
    Unauthorized {
        /// Why, in words a user can act on; never contains a secret.
        reason: String,
        /// Send `WWW-Authenticate: Basic` so that a browser prompts.
        challenge: bool,
    },
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
    /// The `Expect` header asks for something other than `100-continue` (417).
    ExpectationFailed,
    /// The request head is longer than `MAX_HEAD_BYTES` or has too many fields (431).
    HeadTooLarge,
    /// The hook's file or secret is broken; the log at start-up says why (500).
    HookBroken {
        /// What is wrong with the hook.
        reason: String,
    },
    /// A transfer coding other than `chunked` (501).
    UnsupportedCoding,
    /// The peer closed the connection before the request was complete (no response).
    Closed,
    /// Reading from or writing to the peer failed (no response).
    Peer(io::Error),
    /// The command line is wrong.
    Usage(String),
    /// A file sockhook needs is missing or invalid.
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, and how to fix it.
        reason: String,
    },
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
    /// The HTTP status this error is answered with (RFC 9110 §15).
    pub fn status(&self) -> u16 {
        match self {
            Error::Malformed(_) => 400,
            Error::Unauthorized { .. } => 401,
            Error::NotFound => 404,
            Error::MethodNotAllowed { .. } => 405,
            Error::Timeout => 408,
            Error::LengthRequired => 411,
            Error::BodyTooLarge { .. } => 413,
            Error::TargetTooLong => 414,
            Error::UnsupportedMediaType => 415,
            Error::ExpectationFailed => 417,
            Error::HeadTooLarge => 431,
            Error::UnsupportedCoding => 501,
            Error::HookBroken { .. }
            | Error::Closed
            | Error::Peer(_)
            | Error::Usage(_)
            | Error::Config { .. }
            | Error::Socket(_)
            | Error::System { .. } => 500,
        }
    }

    /// The process exit code when this error ends the program.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Config { .. } | Error::Socket(_) => EXIT_CONFIG,
            Error::System { .. } => EXIT_SYSTEM,
            _ => EXIT_FAILED,
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

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Malformed(why) => write!(f, "malformed request: {why}"),
            Error::Unauthorized { reason, .. } => write!(f, "unauthorized: {reason}"),
            Error::NotFound => f.write_str("no such hook"),
            Error::MethodNotAllowed { allow } => write!(f, "method not allowed (allowed: {allow})"),
            Error::Timeout => f.write_str("request not complete within the deadline"),
            Error::LengthRequired => f.write_str("body without Content-Length"),
            Error::BodyTooLarge { limit } => write!(f, "body larger than {limit} bytes"),
            Error::TargetTooLong => f.write_str("request target too long"),
            Error::UnsupportedMediaType => {
                f.write_str("this hook matches JSON fields: send Content-Type: application/json")
            }
            Error::ExpectationFailed => f.write_str("only Expect: 100-continue is supported"),
            Error::HeadTooLarge => f.write_str("request head too large"),
            Error::HookBroken { reason } => write!(f, "hook misconfigured: {reason}"),
            Error::UnsupportedCoding => f.write_str("transfer coding other than chunked"),
            Error::Closed => f.write_str("peer closed the connection early"),
            Error::Peer(e) => write!(f, "connection failed: {e}"),
            Error::Usage(why) => write!(f, "usage: {why}"),
            Error::Config { path, reason } => write!(f, "{}: {reason}", path.display()),
            Error::Socket(why) => write!(f, "unusable socket: {why}"),
            Error::System { what, source } => write!(f, "unable to {what}: {source}"),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Error {}
