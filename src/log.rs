//! Log lines on stderr in one grammar: `sockhook: LEVEL: message`.
//!
//! When stderr is the journal (`JOURNAL_STREAM` names it) each line starts with a
//! `<N>` priority prefix that journald turns into the entry's priority
//! (`SyslogLevelPrefix=`, sd-daemon(3)). Bytes that come from the network go
//! through [`Clean`] so they can neither forge lines nor flood the log.

use std::fmt;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static PRIORITY_PREFIX: AtomicBool = AtomicBool::new(false);

/// How urgent a line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The program stops: it cannot do what it was asked.
    Fatal,
    /// Something failed that needs an administrator.
    Error,
    /// A request was refused, or a command did not succeed.
    Warning,
    /// Normal operation.
    Info,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Fatal => "fatal",
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Info => "info",
        }
    }

    /// The syslog priority journald gives the line.
    fn priority(self) -> u8 {
        match self {
            Level::Fatal | Level::Error => 3,
            Level::Warning => 4,
            Level::Info => 6,
        }
    }
}

/// Decides once whether lines carry `<N>` prefixes: only when stderr is the
/// very stream `JOURNAL_STREAM` names, since the variable is inherited by
/// processes whose stderr was redirected elsewhere (systemd.exec(5)).
pub fn init() {
    let stderr_is_journal = std::env::var("JOURNAL_STREAM").is_ok_and(|stream| {
        nix::sys::stat::fstat(std::io::stderr())
            .is_ok_and(|st| stream == format!("{}:{}", st.st_dev, st.st_ino))
    });
    PRIORITY_PREFIX.store(stderr_is_journal, Ordering::Relaxed);
}

/// Writes one line. A failed write to stderr is ignored: there is nowhere else to say it.
pub fn line(level: Level, args: fmt::Arguments<'_>) {
    let mut text = String::with_capacity(128);
    if PRIORITY_PREFIX.load(Ordering::Relaxed) {
        text.push_str(&format!("<{}>", level.priority()));
    }
    text.push_str(&format!("sockhook: {}: {args}\n", level.name()));
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// What the `STATUS=` line reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Last {
    /// The last request answered.
    Request,
    /// The last command run that ended.
    Run,
}

static STATUS: Mutex<[String; 2]> = Mutex::new([String::new(), String::new()]);

/// Updates one part of the line `systemctl status` shows (`STATUS=`), e.g.
/// `last request: POST /hooks/a 204 …; last run: hook a: run 12 exited 0 …`;
/// harmless without systemd.
pub fn status(part: Last, args: fmt::Arguments<'_>) {
    let mut parts = STATUS.lock().unwrap_or_else(|e| e.into_inner());
    parts[part as usize] = args.to_string();
    let line = match &*parts {
        [request, run] if run.is_empty() => format!("last request: {request}"),
        [request, run] if request.is_empty() => format!("last run: {run}"),
        [request, run] => format!("last request: {request}; last run: {run}"),
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&line)]);
}

/// Logs at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Level::Info, format_args!($($arg)*)) };
}

/// Logs at warning level.
#[macro_export]
macro_rules! warning {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Level::Warning, format_args!($($arg)*)) };
}

/// Logs the line that says why the program stops.
#[macro_export]
macro_rules! fatal {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Level::Fatal, format_args!($($arg)*)) };
}

/// Logs at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Level::Error, format_args!($($arg)*)) };
}

/// Bytes made safe for a log line: printable ASCII kept, everything else
/// `\xNN`, cut after a number of input bytes with a trailing `...`.
pub struct Clean<'a> {
    bytes: &'a [u8],
    max: usize,
}

impl<'a> Clean<'a> {
    /// How many bytes of a peer's input are shown at most.
    pub const PEER_MAX: usize = 100;
    /// How many bytes of a line a command printed are shown at most.
    pub const OUTPUT_MAX: usize = 1024;

    /// Bytes that came from the network.
    pub fn peer(bytes: &'a [u8]) -> Clean<'a> {
        Clean {
            bytes,
            max: Self::PEER_MAX,
        }
    }

    /// A line that a command printed.
    pub fn output(bytes: &'a [u8]) -> Clean<'a> {
        Clean {
            bytes,
            max: Self::OUTPUT_MAX,
        }
    }
}

impl fmt::Display for Clean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.bytes.iter().take(self.max) {
            if (0x20..0x7f).contains(&b) && b != b'\\' {
                f.write_str(char::from(b).encode_utf8(&mut [0; 4]))?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        if self.bytes.len() > self.max {
            f.write_str("...")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Clean;

    #[test]
    fn clean_escapes_control_bytes_and_backslashes() {
        assert_eq!(
            Clean::peer(b"a\nb\\c\x00\xff").to_string(),
            "a\\x0ab\\x5cc\\x00\\xff"
        );
    }

    #[test]
    fn clean_truncates_long_input() {
        let long = [b'x'; 300];
        let shown = Clean::peer(&long).to_string();
        assert_eq!(shown.len(), Clean::PEER_MAX + 3);
        assert!(shown.ends_with("..."));
    }
}
