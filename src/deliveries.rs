//! `sockhook deliveries` and `sockhook replay`: the delivery journal
//! ([`crate::journal`]) for an administrator — what came, how each run
//! ended, and running one again.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::act::{Dropped, ENV_NAMES, Outcome, Runner, Watch};
use crate::config::{self, CREDENTIALS_DIRECTORY};
use crate::error::{EXIT_FAILED, EXIT_OK, Error, Problem};
use crate::idle::Activity;
use crate::journal::{self, Entry, Journal, Recorder};
use crate::respond::civil;
use crate::service::Unit;

/// The state directory outside systemd, as the shipped unit's `StateDirectory=`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sockhook";
/// Where `LoadCredential=` finds the credentials in the shipped unit: what
/// `replay` reads a hook's credential-name secrets from outside systemd.
const DEFAULT_CREDENTIALS_DIR: &str = "/etc/sockhook";

/// What `sockhook deliveries` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The journal's state directory; `None` for the default.
    pub state: Option<PathBuf>,
    /// Only this hook's deliveries.
    pub hook: Option<String>,
    /// Only those whose run failed.
    pub failed: bool,
    /// Only those received at or after this time, in milliseconds since 1970.
    pub since: Option<u64>,
    /// Show this one delivery instead of the list.
    pub show: Option<String>,
    /// With `show`: print the body instead of the metadata.
    pub body: bool,
}

fn journal(state: Option<&Path>) -> Journal {
    let state = Journal::state_dir(state).unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    Journal::new(&state, journal::DEFAULT_KEEP, journal::DEFAULT_MAX_BYTES)
}

fn unreadable(journal: &Journal, e: io::Error) -> Error {
    let hint = if e.kind() == io::ErrorKind::PermissionDenied {
        " (it belongs to the service's user: run as root)"
    } else {
        ""
    };
    Error::system(
        format!(
            "read the delivery journal {}{hint}",
            journal.dir().display()
        ),
        e,
    )
}

/// `sockhook deliveries`: the list, or one delivery.
pub fn deliveries(query: &Query) -> Result<u8, Error> {
    let journal = journal(query.state.as_deref());
    let out = &mut io::stdout().lock();
    if let Some(id) = &query.show {
        let entry = journal.find(id).map_err(|e| not_found(&journal, e))?;
        if query.body {
            let mut body = journal.body(&entry).map_err(|e| unreadable(&journal, e))?;
            io::copy(&mut body, out).map_err(|e| Error::system("write the body", e))?;
        } else {
            show(&entry, out).map_err(|e| Error::system("write to stdout", e))?;
        }
        return Ok(EXIT_OK);
    }
    let (entries, problems) = journal.entries().map_err(|e| unreadable(&journal, e))?;
    for problem in problems {
        crate::warning!("{problem}");
    }
    let rows: Vec<[String; 7]> = entries
        .iter()
        .rev()
        .filter(|e| query.hook.as_ref().is_none_or(|h| *h == e.hook))
        .filter(|e| !query.failed || e.failed())
        .filter(|e| query.since.is_none_or(|since| e.received_ms >= since))
        .map(|e| {
            [
                time(e.received_ms),
                e.id.clone(),
                e.hook.clone(),
                e.peer.clone(),
                match &e.replay_of {
                    Some(_) => "replay".to_owned(),
                    None => e.answer.clone(),
                },
                e.outcome.clone().unwrap_or_else(|| "pending".into()),
                e.body_len.to_string(),
            ]
        })
        .collect();
    let header = [
        "TIME (UTC)",
        "ID",
        "HOOK",
        "PEER",
        "ANSWER",
        "OUTCOME",
        "BODY",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let write = |out: &mut io::StdoutLock<'_>, row: &[String; 7]| {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            match i {
                6 => line.push_str(cell),
                _ => line.push_str(&format!("{cell:<width$}  ", width = widths[i])),
            }
        }
        writeln!(out, "{}", line.trim_end())
    };
    let written: io::Result<()> = std::iter::once(&header)
        .chain(&rows)
        .try_for_each(|row| write(out, row));
    written.map_err(|e| Error::system("write to stdout", e))?;
    Ok(EXIT_OK)
}

fn not_found(journal: &Journal, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::Other => Error::Usage(e.to_string()),
        _ => unreadable(journal, e),
    }
}

/// One delivery's metadata, one `field: value` per line.
fn show(entry: &Entry, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "id: {}", entry.id)?;
    writeln!(out, "hook: {}", entry.hook)?;
    writeln!(out, "received: {} UTC", time(entry.received_ms))?;
    writeln!(out, "peer: {}", entry.peer)?;
    writeln!(out, "answer: {}", entry.answer)?;
    if let Some(original) = &entry.replay_of {
        writeln!(out, "replay-of: {original}")?;
    }
    writeln!(out, "user-agent: {}", entry.user_agent)?;
    for (name, value) in ENV_NAMES.iter().zip(&entry.env) {
        writeln!(out, "{name}: {}", String::from_utf8_lossy(value))?;
    }
    for (name, value) in &entry.fields {
        writeln!(out, "{name}: {}", String::from_utf8_lossy(value))?;
    }
    writeln!(out, "body: {} bytes", entry.body_len)?;
    writeln!(
        out,
        "outcome: {}",
        entry.outcome.as_deref().unwrap_or("pending")
    )
}

/// `2026-12-07 10:50:12.345`.
fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let (year, month, day) = civil(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// `--since WHEN`: an age (`30m`, `12h`, `7d`, `90s`) before `now`, or a UTC
/// date (`2026-12-01`, `2026-12-01T08:30`, `2026-12-01T08:30:15`); in
/// milliseconds since 1970.
pub fn since(when: &str, now: SystemTime) -> Result<u64, String> {
    let bad = || {
        format!(
            "--since: {when:?} is neither an age (30m, 12h, 7d) nor a UTC date (2026-12-01 or 2026-12-01T08:30)"
        )
    };
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if let Some(unit) = when.chars().last().filter(char::is_ascii_alphabetic) {
        let count: u64 = when[..when.len() - 1].parse().map_err(|_| bad())?;
        let secs = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        return Ok(now_ms.saturating_sub(count.saturating_mul(secs * 1000)));
    }
    let (date, clock) = when.split_once('T').unwrap_or((when, "00:00"));
    let numbers = |text: &str, sep: char| -> Option<Vec<u64>> {
        text.split(sep).map(|n| n.parse().ok()).collect()
    };
    let date = numbers(date, '-')
        .filter(|d| d.len() == 3)
        .ok_or_else(bad)?;
    let clock = numbers(clock, ':')
        .filter(|c| (2..=3).contains(&c.len()))
        .ok_or_else(bad)?;
    let (year, month, day) = (date[0], date[1], date[2]);
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || clock[0] > 23
        || clock[1] > 59
        || clock.get(2).is_some_and(|&s| s > 59)
    {
        return Err(bad());
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + clock[0] * 3600 + clock[1] * 60 + clock.get(2).copied().unwrap_or(0);
    Ok(secs * 1000)
}

/// Days since 1970-01-01 of a civil date: the inverse of [`civil`].
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Tells `replay` how the run ended.
struct Done(Sender<Result<String, String>>);

impl Watch for Done {
    fn ended(self: Box<Self>, outcome: &Outcome) {
        let line = journal::outcome_line(outcome);
        let _ = self.0.send(if outcome.success() {
            Ok(line)
        } else {
            Err(line)
        });
    }

    fn dropped(self: Box<Self>, why: Dropped) {
        let _ = self.0.send(Err(format!("not run: {why}")));
    }
}

/// `sockhook replay ID`: runs the delivery's hook again, as the service's
/// user, after any run of that hook in progress; exits 0 when the run
/// succeeded, 1 when it failed.
pub fn replay(
    id: &str,
    state: Option<&Path>,
    hooks_dir: &Path,
    user: Option<&str>,
) -> Result<u8, Error> {
    let journal = journal(state);
    // The hooks are read as the caller (root can read credentials the
    // service's user reads only through LoadCredential=); the run is the user's.
    let credentials = std::env::var_os(CREDENTIALS_DIRECTORY)
        .map_or_else(|| PathBuf::from(DEFAULT_CREDENTIALS_DIR), PathBuf::from);
    let hooks = config::load(hooks_dir, Some(&credentials));
    let user = user
        .map(str::to_owned)
        .or_else(|| Unit::find().and_then(|unit| unit.user))
        .unwrap_or_else(|| "sockhook".to_owned());
    become_user(&user)?;
    let entry = journal.find(id).map_err(|e| not_found(&journal, e))?;
    let hook = match hooks.get_entry(&entry.hook) {
        Some((_, Ok(hook))) => Arc::clone(hook),
        Some((_, Err(problem))) => return Err(Error::Config(problem.clone())),
        None => {
            return Err(Error::Config(Problem {
                path: hooks_dir.join(format!("{}.toml", entry.hook)),
                message: format!(
                    "no hook {} now, so its delivery cannot run again",
                    entry.hook
                ),
            }));
        }
    };
    journal.prepare().map_err(|e| unreadable(&journal, e))?;
    let (activity, _wake) = Activity::new().map_err(|e| Error::system("create a pipe", e))?;
    let runner = Runner::new(activity, None, Some(journal.locks()));
    let mut job = journal
        .restore(&entry, hook, runner.ticket(), true)
        .map_err(|e| unreadable(&journal, e))?;
    let pending = journal
        .record(&job, entry.user_agent.as_bytes(), Some(&entry.id))
        .map_err(|refusal| {
            Error::system("journal the replay", io::Error::other(refusal.to_string()))
        })?;
    let replay_id = pending.id().to_owned();
    let (done, ended) = mpsc::channel();
    job.watch(Box::new(Recorder::new(pending)));
    job.watch(Box::new(Done(done)));
    crate::info!(
        "replaying delivery {} of hook {} as delivery {replay_id}; waiting for any run of the hook in progress",
        entry.id,
        entry.hook
    );
    runner.trigger(job);
    let result = ended
        .recv_timeout(Duration::from_secs(7 * 86_400))
        .unwrap_or_else(|_| Err("no outcome".into()));
    match result {
        Ok(line) => {
            println!("{replay_id}: {line}");
            Ok(EXIT_OK)
        }
        Err(line) => {
            println!("{replay_id}: {line}");
            Ok(EXIT_FAILED)
        }
    }
}

/// Started as root: become `user`, with its groups, as the service runs.
fn become_user(user: &str) -> Result<(), Error> {
    use nix::unistd::{Uid, User, initgroups, setgid, setuid};
    if !Uid::effective().is_root() || user == "root" {
        return Ok(());
    }
    let found = User::from_name(user)
        .map_err(|e| Error::system(format!("look up user {user}"), e.into()))?
        .ok_or_else(|| {
            Error::Usage(format!(
                "--user: no user {user:?} on this system (the service's user; give --user NAME to run as another)"
            ))
        })?;
    let name =
        std::ffi::CString::new(user).map_err(|_| Error::Usage("--user: a NUL byte".into()))?;
    initgroups(&name, found.gid)
        .and_then(|()| setgid(found.gid))
        .and_then(|()| setuid(found.uid))
        .map_err(|e| Error::system(format!("become user {user}"), e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_ages_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_640_612);
        let now_ms = 1_796_640_612_000;
        for (when, want) in [
            ("90s", Ok(now_ms - 90_000)),
            ("30m", Ok(now_ms - 1_800_000)),
            ("12h", Ok(now_ms - 43_200_000)),
            ("7d", Ok(now_ms - 604_800_000)),
            ("1970-01-01", Ok(0)),
            ("2026-12-07", Ok(1_796_601_600_000)),
            ("2026-12-07T10:50", Ok(1_796_640_600_000)),
            ("2026-12-07T10:50:12", Ok(1_796_640_612_000)),
            ("2000-03-01", Ok(951_868_800_000)),
        ] {
            assert_eq!(since(when, now), want, "{when}");
        }
        for bad in [
            "",
            "7w",
            "d",
            "-1d",
            "2026-13-01",
            "2026-12-07T25:00",
            "2026-12",
            "yesterday",
        ] {
            assert!(since(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn civil_and_back() {
        for days in [0, 59, 60, 365, 10_957, 11_016, 20_429, 2_932_896] {
            let (y, m, d) = civil(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(time(1_796_640_612_345), "2026-12-07 10:50:12.345");
    }
}
