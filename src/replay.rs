//! Standard Webhooks delivery ids already accepted, so that a captured
//! delivery cannot be replayed while its timestamp is still within tolerance.
//!
//! Kept in `$RUNTIME_DIRECTORY/webhook-ids` when systemd provides a runtime
//! directory (`RuntimeDirectory=` with `RuntimeDirectoryPreserve=yes`), so that
//! ids survive the responder's idle exits; an exclusive `flock` serialises
//! separate processes (`Accept=yes`). Without one they are kept in memory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::error::Refusal;

/// How long an id is remembered: a delivery can pass the timestamp check for
/// twice the tolerance (from `tolerance` in the future to `tolerance` old).
pub const REMEMBER: Duration = Duration::from_secs(2 * 300);
/// Most ids remembered; the oldest are forgotten first.
pub const MAX_IDS: usize = 10_000;
/// The file's name in the runtime directory.
pub const FILE_NAME: &str = "webhook-ids";
/// Longest id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// The ids accepted recently, in a file or in memory.
pub struct Replay {
    file: Option<PathBuf>,
    memory: Mutex<Vec<(u64, String)>>,
}

impl Replay {
    /// Ids kept in `runtime_dir`, or in memory when it is `None`.
    pub fn new(runtime_dir: Option<&Path>) -> Replay {
        Replay {
            file: runtime_dir.map(|dir| dir.join(FILE_NAME)),
            memory: Mutex::default(),
        }
    }

    /// Records delivery `id` of `hook` at `now` (Unix seconds), or refuses it
    /// if it was accepted within [`REMEMBER`]; `what` names it in the refusal
    /// (`webhook-id`, `this Stripe-Signature`).
    pub fn admit(&self, hook: &str, what: &str, id: &str, now: u64) -> Result<(), Refusal> {
        let key = format!("{hook} {id}");
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        let Some(path) = &self.file else {
            return admit_in(&mut memory, key, now).map_err(|()| replayed(what));
        };
        let fail = |what: &str, e: std::io::Error| {
            Refusal::internal(format!("{what} {}", path.display()), e)
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| fail("open", e))?;
        let mut file =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| fail("lock", e.into()))?;
        let mut ids = read_ids(&mut file);
        admit_in(&mut ids, key, now).map_err(|()| replayed(what))?;
        let text: String = ids.iter().map(|(t, k)| format!("{t} {k}\n")).collect();
        file.rewind()
            .and_then(|()| file.set_len(0))
            .and_then(|()| file.write_all(text.as_bytes()))
            .map_err(|e| fail("write", e))
    }
}

fn read_ids(file: &mut File) -> Vec<(u64, String)> {
    let mut text = String::new();
    let limit = (MAX_IDS * (MAX_ID_BYTES + 96)) as u64;
    let _ = file.take(limit).read_to_string(&mut text);
    text.lines()
        .filter_map(|line| {
            let (time, key) = line.split_once(' ')?;
            Some((time.parse().ok()?, key.to_owned()))
        })
        .collect()
}

fn replayed(what: &str) -> Refusal {
    Refusal::unauthorized(format!("{what} was already accepted (a replay)"))
}

fn admit_in(ids: &mut Vec<(u64, String)>, key: String, now: u64) -> Result<(), ()> {
    ids.retain(|&(time, _)| time + REMEMBER.as_secs() >= now);
    if ids.iter().any(|(_, k)| *k == key) {
        return Err(());
    }
    ids.push((now, key));
    if ids.len() > MAX_IDS {
        ids.drain(..ids.len() - MAX_IDS);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_accepted_once_within_the_window() {
        let replay = Replay::new(None);
        replay.admit("h", "webhook-id", "msg_1", 1000).unwrap();
        assert_eq!(
            replay
                .admit("h", "webhook-id", "msg_1", 1001)
                .unwrap_err()
                .status(),
            401
        );
        replay.admit("other", "webhook-id", "msg_1", 1001).unwrap();
        replay
            .admit("h", "webhook-id", "msg_1", 1000 + REMEMBER.as_secs() + 1)
            .unwrap();
    }

    #[test]
    fn ids_survive_in_the_file() {
        let dir = std::env::temp_dir().join(format!("sockhook-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Replay::new(Some(&dir))
            .admit("h", "webhook-id", "msg_1", 1000)
            .unwrap();
        let again = Replay::new(Some(&dir)).admit("h", "webhook-id", "msg_1", 1010);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(again.is_err());
    }

    #[test]
    fn the_oldest_ids_are_forgotten_first() {
        let mut ids = Vec::new();
        for i in 0..=MAX_IDS {
            admit_in(&mut ids, format!("h {i}"), 5).unwrap();
        }
        assert_eq!(ids.len(), MAX_IDS);
        assert_eq!(ids[0].1, "h 1");
    }
}
