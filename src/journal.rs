//! Stage 5: the delivery journal. Every accepted delivery is on disk, synced,
//! before it is answered; the outcome of the run that covered it is written
//! beside it; a delivery whose run never finished is run by the next
//! activation. A 2xx is a promise that the delivery will run at least once.
//!
//! The layout, under the state directory (`StateDirectory=`, `--state`):
//!
//! ```text
//! deliveries/ID_HOOK.entry    the delivery: a text head, a blank line, the body
//! deliveries/ID_HOOK.outcome  one line: how the run that covered it ended
//! deliveries/ID_HOOK.tmp      an entry being written, or torn by a crash
//! deliveries/PID.NAME.spare   an empty file for a next entry (see [`Spares`]),
//!                             or one being written, or torn by a crash
//! locks/HOOK.lock             held during each run of HOOK, by serve and replay
//! ```
//!
//! An `ID` is `MILLISECONDS-PID-SEQUENCE`: it sorts by arrival and is unique
//! across processes. An entry's head is version 1 of this format:
//!
//! ```text
//! sockhook-delivery 1
//! id 1765104612345-4242-1
//! hook kodi
//! received 1765104612345
//! peer 192.0.2.7
//! answer before-run
//! replay-of 1765104600000-4100-3        (only for `sockhook replay`)
//! relay 9f2c41d07a3be5e1 kodi 42        (only for `sockhook subscribe`: epoch, hook, seq)
//! user-agent GitHub-Hookshot/abc
//! env SOCKHOOK_EVENT=push               (one line per SOCKHOOK_* variable)
//! body 1234
//!
//! BODY
//! ```
//!
//! Nothing of `Authorization`, signatures, tokens or secrets is stored: the
//! head holds exactly the fields above.
//!
//! An entry becomes visible by a rename after its data is synced, and the
//! directory is synced after the rename, so a crash leaves either a whole
//! entry or a `.tmp` file, which the next look skips with one log line, or a
//! spare file, which the next activation empties and reuses. An
//! entry without an outcome is pending; the process that wrote it holds an
//! `flock` on it until the outcome is written, so a pending entry whose lock
//! can be taken belongs to a process that is gone.
//!
//! What a delivery costs on the way to its answer is the entry's write and
//! the two syncs: renames are group-committed (one directory sync serves
//! every delivery renamed before it started), and the finished entries a
//! delivery pushes past `--journal-keep` are removed when its run's outcome
//! is written, not before its answer (an unlink frees blocks, which the next
//! journal commit of the filesystem pays for). An activation looks at the
//! directory once.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};

use crate::act::{Dropped, ENV_NAMES, Job, Outcome, Runner, Watch};
use crate::config::{Hook, Hooks};
use crate::error::Refusal;
use crate::read::{Framing, Spool};
use crate::{info, warning};

/// The first line of every entry: the format and its version.
pub const FORMAT: &str = "sockhook-delivery 1";
/// Deliveries kept per hook, the newest included, unless `--journal-keep`
/// says otherwise; only finished ones are removed.
pub const DEFAULT_KEEP: usize = 100;
/// Bytes the journal may hold unless `--journal-max-bytes` says otherwise.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Set by systemd to the service's `StateDirectory=`.
pub const STATE_DIRECTORY: &str = "STATE_DIRECTORY";
/// Most bytes of an entry's head that are read.
const MAX_HEAD_BYTES: u64 = 16 * 1024;

/// The journal of one state directory.
pub struct Journal {
    deliveries: PathBuf,
    locks: PathBuf,
    keep: usize,
    max_bytes: u64,
    sequence: AtomicU64,
    /// What this process knows of the entries; `None` until first needed.
    index: Arc<Mutex<Option<Index>>>,
    /// Syncs of the directory, shared by the deliveries that wait for one.
    dir_sync: DirSync,
    /// Empty files for the next entries.
    spares: Spares,
}

/// Empty files, named `PID.NAME.spare`, that the next deliveries write their
/// entries into: an entry written into a file that exists costs its sync far
/// less than one written into a new file (on ext4, creating a file makes the
/// journal commit that the entry's `fdatasync` waits for several times
/// longer: `bench/sync-strategies.py`). They are the files of removed
/// entries, emptied, and files made after a run (off every answer's path)
/// while there are fewer than [`MAX_SPARES`]; they outlive the activation,
/// and the next one takes over those of processes that are gone. Listings
/// skip them.
type Spares = Arc<Mutex<Vec<PathBuf>>>;

/// Most spare files a process keeps; past them, removed entries are unlinked.
const MAX_SPARES: usize = 128;

/// The entries on disk as this process knows them: listed once, then kept
/// up to date by its own writes, outcomes and removals, so that a delivery
/// costs no listing of the directory. Listed again when it says there is no
/// room, since other processes (`replay`, `Accept=yes`) write there too.
#[derive(Default)]
struct Index {
    files: BTreeMap<SortKey, EntryFile>,
    /// Finished entries past `keep`, out of the index, whose files are
    /// removed after the answer (by the next outcome written), not before.
    removable: Vec<String>,
}

impl Index {
    fn total(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }
}

/// A lock on the index; a poisoned one is still the index.
fn lock_index(index: &Mutex<Option<Index>>) -> MutexGuard<'_, Option<Index>> {
    index.lock().unwrap_or_else(|e| e.into_inner())
}

/// Group commit of the directory's fsync: a delivery renamed into place
/// waits for a sync that started after its rename, and one sync serves
/// every delivery renamed before it started.
#[derive(Default)]
struct DirSync {
    state: Mutex<SyncState>,
    done: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// Renames so far; each takes the next number.
    renamed: u64,
    /// Every rename up to this number is synced.
    synced: u64,
    /// A sync is running.
    running: bool,
    /// The directory, opened by the first sync and kept for the next.
    dir: Option<Arc<File>>,
}

impl DirSync {
    /// Returns once the rename just made (by the caller) is on disk.
    fn after_rename(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.renamed += 1;
        let mine = state.renamed;
        loop {
            if state.synced >= mine {
                return Ok(());
            }
            if !state.running {
                state.running = true;
                let covers = state.renamed;
                let opened = state.dir.clone();
                drop(state);
                let opened = match opened {
                    Some(d) => Ok(d),
                    None => File::open(dir).map(Arc::new),
                };
                let synced = opened.and_then(|d| d.sync_all().map(|()| d));
                state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                state.running = false;
                if let Ok(d) = &synced {
                    state.synced = state.synced.max(covers);
                    state.dir = Some(Arc::clone(d));
                }
                self.done.notify_all();
                synced?;
                continue;
            }
            state = self.done.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Journal {
    /// What was left for after an answer goes when the activation does.
    fn drop(&mut self) {
        if let Some(index) = lock_index(&self.index).as_mut() {
            self.remove_removable(index);
        }
    }
}

/// A lock on the spare files; a poisoned one is still the list.
fn lock_spares(spares: &Spares) -> MutexGuard<'_, Vec<PathBuf>> {
    spares.lock().unwrap_or_else(|e| e.into_inner())
}

/// A journaled delivery, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its id.
    pub id: String,
    /// The hook it was for.
    pub hook: String,
    /// When it was accepted, in milliseconds since 1970.
    pub received_ms: u64,
    /// The client's address.
    pub peer: String,
    /// How it was answered: `before-run` (204), `after-run`, `stream`.
    pub answer: String,
    /// The delivery this one replays, for `sockhook replay`.
    pub replay_of: Option<String>,
    /// `EPOCH HOOK SEQ` of a message `sockhook subscribe` took from a relay.
    pub relay: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: String,
    /// The values of [`ENV_NAMES`], in that order.
    pub env: Vec<Vec<u8>>,
    /// The hook's `[env]` variables, `(NAME, value)`.
    pub fields: Vec<(String, Vec<u8>)>,
    /// The body's length.
    pub body_len: u64,
    /// Where the body starts in the file.
    body_offset: u64,
    /// How the run that covered it ended; `None` while it is pending.
    pub outcome: Option<String>,
}

impl Entry {
    /// Whether its run failed (pending is not failed).
    pub fn failed(&self) -> bool {
        self.outcome
            .as_deref()
            .is_some_and(|o| o.starts_with("failed"))
    }
}

/// A pending entry this process owns: its lock is held until the outcome is
/// written, or until it is dropped, leaving the entry to the next activation.
pub struct Pending {
    id: String,
    name: String,
    deliveries: PathBuf,
    /// The index to tell that it has an outcome.
    index: Arc<Mutex<Option<Index>>>,
    /// Where the entries it removes go.
    spares: Spares,
    _lock: Flock<File>,
}

impl Pending {
    /// The delivery's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Writes the outcome: the delivery is no longer pending.
    fn finish(self, outcome: &str) {
        // Past `keep`: removed off the request path, before the outcome
        // that says this run is over.
        let removable = lock_index(&self.index)
            .as_mut()
            .map(|index| std::mem::take(&mut index.removable))
            .unwrap_or_default();
        for name in removable {
            remove_entry(&self.deliveries, &name, &self.spares);
        }
        let path = self.deliveries.join(format!("{}.outcome", self.name));
        let tmp = self.deliveries.join(format!("{}.outcome.tmp", self.name));
        let written =
            fs::write(&tmp, format!("{outcome}\n")).and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            warning!(
                "delivery {}: unable to journal its outcome ({e}); it will run again",
                self.id
            );
            return;
        }
        if lock_spares(&self.spares).len() < MAX_SPARES {
            let spare =
                self.deliveries
                    .join(format!("{}.{}.made.spare", std::process::id(), self.name));
            let made = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&spare);
            if made.is_ok() {
                lock_spares(&self.spares).push(spare);
            }
        }
        if let Some(index) = lock_index(&self.index).as_mut()
            && let Some(file) = index.files.get_mut(&sort_key(&self.name))
        {
            file.finished = true;
        }
    }
}

impl Journal {
    /// The journal under `state`; nothing is touched until it is used.
    pub fn new(state: &Path, keep: usize, max_bytes: u64) -> Journal {
        Journal {
            deliveries: state.join("deliveries"),
            locks: state.join("locks"),
            keep,
            max_bytes,
            sequence: AtomicU64::new(0),
            index: Arc::default(),
            dir_sync: DirSync::default(),
            spares: Spares::default(),
        }
    }

    /// Makes its directories if missing (mode 0700). A journal that cannot
    /// be made refuses every delivery (503) until it can.
    pub fn prepare(&self) -> io::Result<()> {
        for dir in [&self.deliveries, &self.locks] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        Ok(())
    }

    /// Where the entries are.
    pub fn dir(&self) -> &Path {
        &self.deliveries
    }

    /// The state directory to use: `--state`, else `$STATE_DIRECTORY` (the
    /// first, if systemd passes several); `None` for no journal.
    pub fn state_dir(option: Option<&Path>) -> Option<PathBuf> {
        option.map(Path::to_owned).or_else(|| {
            let dirs = std::env::var_os(STATE_DIRECTORY)?;
            let first = dirs.into_vec().split(|&b| b == b':').next()?.to_vec();
            (!first.is_empty()).then(|| PathBuf::from(OsString::from_vec(first)))
        })
    }

    /// Stores `job`'s delivery, synced, and returns it locked as pending.
    /// Refused (503) when it cannot be stored or the journal is full of
    /// pending deliveries.
    pub fn record(
        &self,
        job: &Job,
        user_agent: &[u8],
        replay_of: Option<&str>,
    ) -> Result<Pending, Refusal> {
        let hook = &job.hook().name;
        let body_len = job.body().len();
        let received_ms = now_ms();
        let id = format!(
            "{received_ms}-{}-{}",
            std::process::id(),
            self.sequence.fetch_add(1, Ordering::Relaxed) + 1
        );
        let name = format!("{id}_{hook}");
        let answer = match job.hook().answer.respond {
            crate::config::Respond::BeforeRun => "before-run",
            crate::config::Respond::AfterRun => "after-run",
            crate::config::Respond::Stream => "stream",
        };
        let mut head = format!(
            "{FORMAT}\nid {id}\nhook {hook}\nreceived {received_ms}\npeer {}\nanswer {answer}\n",
            String::from_utf8_lossy(&job.env()[4].clone().into_vec())
        );
        if let Some(original) = replay_of {
            head.push_str(&format!("replay-of {original}\n"));
        }
        if let Some(relay) = job.relay() {
            head.push_str(&format!("relay {}\n", one_line(relay.as_bytes())));
        }
        head.push_str(&format!("user-agent {}\n", one_line(user_agent)));
        for (name, value) in ENV_NAMES.iter().zip(job.env()) {
            head.push_str(&format!(
                "env {name}={}\n",
                one_line(value.as_encoded_bytes())
            ));
        }
        for (name, value) in job.fields() {
            head.push_str(&format!("env {name}={}\n", one_line(value)));
        }
        head.push_str(&format!("body {body_len}\n\n"));
        let size = head.len() as u64 + body_len;
        self.make_room(&name, hook, size)?;
        let path = self.deliveries.join(format!("{name}.entry"));
        let spare = lock_spares(&self.spares).pop();
        let (tmp, stored) = match spare
            .map(|spare| (self.write_entry(&spare, false, head.as_bytes(), job), spare))
        {
            Some((Ok(lock), spare)) => (spare, Ok(lock)),
            other => {
                // A spare that cannot be written into is dropped.
                if let Some((_, spare)) = other {
                    let _ = fs::remove_file(spare);
                }
                let tmp = self.deliveries.join(format!("{name}.tmp"));
                let written = self.write_entry(&tmp, true, head.as_bytes(), job);
                (tmp, written)
            }
        };
        let stored = stored.and_then(|lock| {
            fs::rename(&tmp, &path)?;
            self.dir_sync.after_rename(&self.deliveries)?;
            Ok(lock)
        });
        let lock = match stored {
            Ok(lock) => lock,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                let _ = fs::remove_file(&path);
                if let Some(index) = lock_index(&self.index).as_mut() {
                    index.files.remove(&sort_key(&name));
                    // The disk may be full: what can go, goes now.
                    self.remove_removable(index);
                }
                return Err(Refusal::NotStored(e));
            }
        };
        Ok(Pending {
            id,
            name,
            deliveries: self.deliveries.clone(),
            index: Arc::clone(&self.index),
            spares: Arc::clone(&self.spares),
            _lock: lock,
        })
    }

    /// Writes the entry into `tmp`: a new file, or an empty spare.
    fn write_entry(
        &self,
        tmp: &Path,
        new: bool,
        head: &[u8],
        job: &Job,
    ) -> io::Result<Flock<File>> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(new)
            .mode(0o600)
            .open(tmp)?;
        let mut file = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| io::Error::from(e))?;
        file.write_all(head)?;
        if let Some(mut body) = job.body().reader()? {
            io::copy(&mut body, &mut *file)?;
        }
        file.sync_data()?;
        Ok(file)
    }

    /// Makes room for entry `name` of `hook`, `size` bytes, and counts it in
    /// the index: drops the oldest finished entries past `keep` per hook and
    /// past the size cap; refused when pending entries alone leave no room.
    fn make_room(&self, name: &str, hook: &str, size: u64) -> Result<(), Refusal> {
        let mut guard = lock_index(&self.index);
        let fresh = guard.is_none();
        if fresh {
            *guard = Some(self.read_index().map_err(Refusal::NotStored)?);
        }
        let index = guard.as_mut().expect("just filled");
        let mut left = self.prune(index, size);
        if left > self.max_bytes && !fresh {
            // Another process may have removed entries: look again.
            self.remove_removable(index);
            *index = self.read_index().map_err(Refusal::NotStored)?;
            left = self.prune(index, size);
        }
        if left > self.max_bytes {
            return Err(Refusal::NotStored(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "the journal is full: pending deliveries hold {} bytes of its {} (--journal-max-bytes)",
                    left - size,
                    self.max_bytes
                ),
            )));
        }
        index
            .files
            .insert(sort_key(name), EntryFile::pending(name, hook, size));
        Ok(())
    }

    /// Removes the finished entries that must go for `size` more bytes;
    /// returns the bytes the journal would then hold, `size` included.
    /// Those past `keep` leave the index now and the disk after the answer
    /// (an unlink costs the request its time, and the next sync its
    /// journal commit); those the size cap needs gone go now, since the new
    /// entry needs their room.
    fn prune(&self, index: &mut Index, size: u64) -> u64 {
        let mut per_hook: HashMap<&str, usize> = HashMap::new();
        let mut past_keep: Vec<SortKey> = Vec::new();
        // Newest first: past `keep` per hook, finished entries go.
        for (key, file) in index.files.iter().rev() {
            let seen = per_hook.entry(file.hook.as_str()).or_default();
            *seen += 1;
            if *seen >= self.keep && file.finished {
                past_keep.push(key.clone());
            }
        }
        for key in past_keep {
            if let Some(file) = index.files.remove(&key) {
                index.removable.push(file.name);
            }
        }
        let mut total = index.total();
        let mut for_room: Vec<SortKey> = Vec::new();
        // Oldest first: finished entries go until the new one fits.
        for (key, file) in &index.files {
            if total.saturating_add(size) <= self.max_bytes {
                break;
            }
            if file.finished {
                for_room.push(key.clone());
                total -= file.size;
            }
        }
        if !for_room.is_empty() {
            self.remove_removable(index);
        }
        for key in for_room {
            if let Some(file) = index.files.remove(&key) {
                remove_entry(&self.deliveries, &file.name, &self.spares);
            }
        }
        total.saturating_add(size)
    }

    /// Removes now the entries left for after an answer.
    fn remove_removable(&self, index: &mut Index) {
        for name in std::mem::take(&mut index.removable) {
            remove_entry(&self.deliveries, &name, &self.spares);
        }
    }

    /// The index as the directory shows it now.
    fn read_index(&self) -> io::Result<Index> {
        Ok(Index {
            files: self
                .files()?
                .into_iter()
                .map(|f| (sort_key(&f.name), f))
                .collect(),
            removable: Vec::new(),
        })
    }

    /// Every entry file, oldest first, with its size and whether it has an outcome.
    fn files(&self) -> io::Result<Vec<EntryFile>> {
        Ok(self.listing()?.0)
    }

    /// One look at the directory: every entry file, oldest first, with its
    /// size and whether it has an outcome; every entry being written
    /// (`.tmp`), which may be torn; and the spare files of processes that
    /// are gone.
    fn listing(&self) -> io::Result<(Vec<EntryFile>, Vec<PathBuf>, Vec<PathBuf>)> {
        let mut entries = BTreeMap::new();
        let mut outcomes = Vec::new();
        let mut written = Vec::new();
        let mut stale = Vec::new();
        for dirent in fs::read_dir(&self.deliveries)? {
            let dirent = dirent?;
            let file_name = dirent.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if file_name.ends_with(".tmp") && !file_name.ends_with(".outcome.tmp") {
                written.push(dirent.path());
            } else if file_name.ends_with(".spare") {
                if stale_spare(file_name) {
                    stale.push(dirent.path());
                }
            } else if let Some(name) = file_name.strip_suffix(".entry") {
                let Some((_, hook)) = name.split_once('_') else {
                    continue;
                };
                let size = dirent.metadata().map_or(0, |m| m.len());
                entries.insert(sort_key(name), EntryFile::pending(name, hook, size));
            } else if let Some(name) = file_name.strip_suffix(".outcome") {
                outcomes.push(name.to_owned());
            }
        }
        for name in outcomes {
            if let Some(entry) = entries.get_mut(&sort_key(&name)) {
                entry.finished = true;
            }
        }
        Ok((entries.into_values().collect(), written, stale))
    }

    /// Every entry that can be read, oldest first, and one line for each
    /// that cannot (torn or corrupt), which is skipped.
    pub fn entries(&self) -> io::Result<(Vec<Entry>, Vec<String>)> {
        let (files, written, _) = self.listing()?;
        self.read_all(files, &torn(written))
    }

    /// The entries of `files`, read; the problems of those, and the torn
    /// files.
    fn read_all(
        &self,
        files: Vec<EntryFile>,
        torn: &[PathBuf],
    ) -> io::Result<(Vec<Entry>, Vec<String>)> {
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        for file in files {
            match self.read_entry(&file.name) {
                Ok(entry) => entries.push(entry),
                Err(e) => problems.push(format!("skipped journal entry {}: {e}", file.name)),
            }
        }
        for torn in torn {
            problems.push(format!(
                "skipped journal entry {}: torn (a crash while it was written; it was never answered 2xx)",
                torn.display()
            ));
        }
        Ok((entries, problems))
    }

    /// The job `entry` asked for, its body read back into a sealed memory
    /// file, for `hook` as it is configured now.
    pub fn restore(
        &self,
        entry: &Entry,
        hook: Arc<Hook>,
        ticket: u64,
        replay: bool,
    ) -> io::Result<Job> {
        let refused = |r: Refusal| io::Error::other(r.to_string());
        let mut spool = Spool::new(Framing::Length(entry.body_len)).map_err(refused)?;
        let mut body = self.body(entry)?;
        let mut buf = vec![0; 64 * 1024];
        let mut read = 0;
        loop {
            let n = body.read(&mut buf)?;
            if n == 0 {
                break;
            }
            read += n as u64;
            spool.write(&buf[..n]).map_err(refused)?;
        }
        if read != entry.body_len {
            return Err(corrupt("its body is shorter than its head says"));
        }
        let body = spool.finish().map_err(refused)?;
        let env: [OsString; ENV_NAMES.len()] = std::array::from_fn(|i| {
            OsString::from_vec(entry.env.get(i).cloned().unwrap_or_default())
        });
        let mut job = Job::restore(hook, env, body, ticket, replay);
        job.set_fields(entry.fields.clone());
        Ok(job)
    }

    /// The entry with `id` (or the only one whose id starts with it).
    pub fn find(&self, id: &str) -> io::Result<Entry> {
        let matches: Vec<EntryFile> = self
            .files()?
            .into_iter()
            .filter(|f| f.name.starts_with(&format!("{id}_")) || f.name.starts_with(id))
            .collect();
        match matches.as_slice() {
            [one] => self.read_entry(&one.name),
            [] => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no delivery {id} in {}", self.deliveries.display()),
            )),
            _ => Err(io::Error::other(format!(
                "{} deliveries start with {id}; give more of the id",
                matches.len()
            ))),
        }
    }

    /// The body of `entry`, positioned at its first byte, `body_len` long.
    pub fn body(&self, entry: &Entry) -> io::Result<impl Read> {
        let mut file = File::open(self.entry_path(entry))?;
        file.seek(SeekFrom::Start(entry.body_offset))?;
        Ok(file.take(entry.body_len))
    }

    fn entry_path(&self, entry: &Entry) -> PathBuf {
        self.deliveries
            .join(format!("{}_{}.entry", entry.id, entry.hook))
    }

    fn read_entry(&self, name: &str) -> io::Result<Entry> {
        let path = self.deliveries.join(format!("{name}.entry"));
        let file = File::open(&path)?;
        let size = file.metadata()?.len();
        let mut reader = BufReader::new(file.take(MAX_HEAD_BYTES));
        let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
        let mut offset = 0u64;
        let mut first = true;
        loop {
            let mut line = Vec::new();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                return Err(corrupt("its head does not end"));
            }
            offset += n as u64;
            line.pop();
            if first {
                if line != FORMAT.as_bytes() {
                    return Err(corrupt(&format!(
                        "it does not start with {FORMAT:?} (another version, or not an entry)"
                    )));
                }
                first = false;
                continue;
            }
            if line.is_empty() {
                break;
            }
            let (key, value) = match line.iter().position(|&b| b == b' ') {
                Some(space) => (&line[..space], line[space + 1..].to_vec()),
                None => (&line[..], Vec::new()),
            };
            fields.push((String::from_utf8_lossy(key).into_owned(), value));
        }
        let field = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let number = |key: &str| -> io::Result<u64> {
            field(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| corrupt(&format!("no valid {key} field")))
        };
        let body_len = number("body")?;
        if offset + body_len != size {
            return Err(corrupt(&format!(
                "it holds {} bytes of body, its head says {body_len}",
                size.saturating_sub(offset)
            )));
        }
        let env = ENV_NAMES
            .iter()
            .map(|name| {
                fields
                    .iter()
                    .filter(|(k, _)| k == "env")
                    .find_map(|(_, v)| v.strip_prefix(format!("{name}=").as_bytes()).map(unescape))
                    .unwrap_or_default()
            })
            .collect();
        let hook_env = fields
            .iter()
            .filter(|(k, _)| k == "env")
            .filter_map(|(_, v)| {
                let (name, value) = v.split_at(v.iter().position(|&b| b == b'=')?);
                let name = String::from_utf8_lossy(name).into_owned();
                (!ENV_NAMES.contains(&name.as_str())).then(|| (name, unescape(&value[1..])))
            })
            .collect();
        let outcome = fs::read_to_string(self.deliveries.join(format!("{name}.outcome")))
            .ok()
            .map(|o| o.trim_end().to_owned())
            .filter(|o| !o.is_empty());
        Ok(Entry {
            id: field("id").ok_or_else(|| corrupt("no id field"))?,
            hook: field("hook").ok_or_else(|| corrupt("no hook field"))?,
            received_ms: number("received")?,
            peer: field("peer").unwrap_or_default(),
            answer: field("answer").unwrap_or_default(),
            replay_of: field("replay-of"),
            relay: field("relay"),
            user_agent: field("user-agent").unwrap_or_default(),
            env,
            fields: hook_env,
            body_len,
            body_offset: offset,
            outcome,
        })
    }

    /// The pending entries whose writer is gone, oldest first, each locked
    /// for this process; logs one line per entry it skips.
    pub fn take_pending(&self) -> Vec<(Entry, Pending)> {
        // One listing: it also fills the index the first delivery needs and
        // finds the torn entries, and only the pending entries are read.
        let mut torn_files = Vec::new();
        let listed = self.listing().map(|(files, written, stale)| {
            // Empty, or an entry never answered (nothing is lost with it):
            // taken over, emptied, or removed.
            for spare in stale {
                self.take_over(&spare);
            }
            let mut index = lock_index(&self.index);
            if index.is_none() {
                *index = Some(Index {
                    files: files
                        .iter()
                        .map(|f| (sort_key(&f.name), f.clone()))
                        .collect(),
                    removable: Vec::new(),
                });
            }
            torn_files = torn(written);
            files.into_iter().filter(|f| !f.finished).collect()
        });
        let read = listed.and_then(|pending| self.read_all(pending, &torn_files));
        let (entries, problems) = match read {
            Ok(found) => found,
            Err(e) => {
                warning!(
                    "unable to read the delivery journal {}: {e}",
                    self.deliveries.display()
                );
                return Vec::new();
            }
        };
        for problem in problems {
            warning!("{problem}");
        }
        // Never answered 2xx, so nothing is lost with them; said once, above.
        for torn in torn_files {
            let _ = fs::remove_file(torn);
        }
        let mut taken = Vec::new();
        for entry in entries.into_iter().filter(|e| e.outcome.is_none()) {
            let Ok(file) = File::open(self.entry_path(&entry)) else {
                continue;
            };
            // Held by a live process (another activation, a replay): its run is its own.
            let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            // It may have finished between the listing and the lock.
            let name = format!("{}_{}", entry.id, entry.hook);
            if self.deliveries.join(format!("{name}.outcome")).exists() {
                continue;
            }
            let pending = Pending {
                id: entry.id.clone(),
                name,
                deliveries: self.deliveries.clone(),
                index: Arc::clone(&self.index),
                spares: Arc::clone(&self.spares),
                _lock: lock,
            };
            taken.push((entry, pending));
        }
        taken
    }

    /// Makes `spare`, left by a process that is gone, one of this process's.
    fn take_over(&self, spare: &Path) {
        let mut spares = lock_spares(&self.spares);
        let name = spare.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let rest = name.split_once('.').map_or(name, |(_, rest)| rest);
        let mine = self
            .deliveries
            .join(format!("{}.{rest}", std::process::id()));
        // A rename replaces: never a spare already there.
        if spares.len() >= MAX_SPARES || mine.symlink_metadata().is_ok() {
            let _ = fs::remove_file(spare);
            return;
        }
        // The rename claims it: of two activations, one gets it.
        let emptied = fs::rename(spare, &mine)
            .and_then(|()| OpenOptions::new().write(true).open(&mine))
            .and_then(|file| file.set_len(0));
        match emptied {
            Ok(()) => spares.push(mine),
            Err(_) => drop(fs::remove_file(&mine)),
        }
    }

    /// Where the locks are, for the runner.
    pub fn locks(&self) -> PathBuf {
        self.locks.clone()
    }
}

/// Of the entries being written, those left half-written by a process that
/// is gone: `.tmp` files whose writer's lock can be taken (one being
/// written is locked).
fn torn(written: Vec<PathBuf>) -> Vec<PathBuf> {
    written
        .into_iter()
        .filter(|path| {
            File::open(path)
                .is_ok_and(|file| Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok())
        })
        .collect()
}

/// Removes entry `name` and its outcome; its file becomes a spare, emptied,
/// while there are fewer than [`MAX_SPARES`].
fn remove_entry(deliveries: &Path, name: &str, spares: &Spares) {
    let entry = deliveries.join(format!("{name}.entry"));
    let recycled = lock_spares(spares).len() < MAX_SPARES && {
        let spare = deliveries.join(format!("{}.{name}.spare", std::process::id()));
        // A rename replaces: never a spare already there.
        let emptied = match spare.symlink_metadata() {
            Ok(_) => Err(io::ErrorKind::AlreadyExists.into()),
            Err(_) => fs::rename(&entry, &spare),
        }
        .and_then(|()| OpenOptions::new().write(true).open(&spare))
        .and_then(|file| file.set_len(0));
        match &emptied {
            Ok(()) => lock_spares(spares).push(spare),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(_) => drop(fs::remove_file(&spare)),
        }
        emptied.is_ok()
    };
    if !recycled {
        let _ = fs::remove_file(entry);
    }
    let _ = fs::remove_file(deliveries.join(format!("{name}.outcome")));
}

/// Whether spare file `file_name` (`PID.NAME.spare`) is left by a process
/// that is gone.
fn stale_spare(file_name: &str) -> bool {
    let pid = file_name
        .split('.')
        .next()
        .and_then(|p| p.parse::<i32>().ok());
    pid.is_none_or(|pid| {
        pid != std::process::id() as i32
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                == Err(nix::errno::Errno::ESRCH)
    })
}

/// Runs again, oldest first and coalesced as usual, each pending delivery
/// whose writer is gone: accepted by an activation that ended (killed,
/// stopped, crashed) before the run that covers it finished.
pub fn resume(journal: &Journal, hooks: &Hooks, runner: &Runner) {
    for (entry, pending) in journal.take_pending() {
        let hook = match hooks.get_entry(&entry.hook) {
            Some((_, Ok(hook))) => Arc::clone(hook),
            _ => {
                warning!(
                    "delivery {}: hook {} is not served now; the delivery stays pending until it is",
                    entry.id,
                    entry.hook
                );
                continue;
            }
        };
        let mut job = match journal.restore(&entry, hook, runner.ticket(), false) {
            Ok(job) => job,
            Err(e) => {
                warning!(
                    "delivery {}: unable to read it back ({e}); it stays pending",
                    entry.id
                );
                continue;
            }
        };
        info!(
            "delivery {} of hook {}: accepted at {} by an activation that ended before its run finished; running it now",
            entry.id,
            entry.hook,
            crate::respond::http_date(
                UNIX_EPOCH + std::time::Duration::from_millis(entry.received_ms)
            )
        );
        job.watch(Box::new(Recorder::resumed(pending)));
        runner.trigger(job);
    }
}

/// Waits for, then holds, `LOCKS/HOOK.lock`: one run of `hook` at a time
/// across every process that shares the state directory.
pub fn lock_hook(locks: &Path, hook: &str) -> io::Result<Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(locks.join(format!("{hook}.lock")))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e.into())
}

/// An entry file as listed.
#[derive(Clone)]
struct EntryFile {
    name: String,
    hook: String,
    size: u64,
    finished: bool,
}

impl EntryFile {
    /// Entry `name` of `hook`, `size` bytes, with no outcome (yet).
    fn pending(name: &str, hook: &str, size: u64) -> EntryFile {
        EntryFile {
            name: name.to_owned(),
            hook: hook.to_owned(),
            size,
            finished: false,
        }
    }
}

/// An entry's place in arrival order.
type SortKey = (u64, u64, u64, String);

/// Orders entry names by arrival: `MILLISECONDS-PID-SEQUENCE` numerically.
fn sort_key(name: &str) -> SortKey {
    let id = name.split('_').next().unwrap_or_default();
    let mut parts = id.split('-').map(|p| p.parse().unwrap_or(u64::MAX));
    (
        parts.next().unwrap_or(u64::MAX),
        parts.next().unwrap_or(u64::MAX),
        parts.next().unwrap_or(u64::MAX),
        name.to_owned(),
    )
}

fn corrupt(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("corrupt: {why}"))
}

/// A header value on one line: bytes other than printable ASCII and space
/// as `\xNN`.
fn one_line(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b' '..=b'~' if b != b'\\' => (b as char).to_string(),
            b => format!("\\x{b:02x}"),
        })
        .collect()
}

/// The bytes [`one_line`] wrote.
fn unescape(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let byte = text
            .get(i..i + 4)
            .filter(|t| t.starts_with(b"\\x"))
            .and_then(|t| std::str::from_utf8(&t[2..]).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match byte {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(text[i]);
                i += 1;
            }
        }
    }
    out
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Writes the outcome of the run that covers a journaled delivery.
pub struct Recorder {
    pending: Option<Pending>,
    coalesced: bool,
    /// Run by a later activation than the one that accepted it.
    resumed: bool,
}

impl Recorder {
    /// The recorder of `pending`.
    pub fn new(pending: Pending) -> Recorder {
        Recorder {
            pending: Some(pending),
            coalesced: false,
            resumed: false,
        }
    }

    /// The recorder of a pending delivery that a later activation runs.
    fn resumed(pending: Pending) -> Recorder {
        Recorder {
            resumed: true,
            ..Recorder::new(pending)
        }
    }
}

/// The outcome line of a run: `ok …` or `failed …`.
pub fn outcome_line(outcome: &Outcome) -> String {
    let verdict = if outcome.success() { "ok" } else { "failed" };
    format!("{verdict} {}", outcome.describe())
}

impl Watch for Recorder {
    fn coalesced(&mut self, _ticket: u64) {
        self.coalesced = true;
    }

    fn ended(mut self: Box<Self>, outcome: &Outcome) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        if let Outcome::Ran { stopped: true, .. } = outcome {
            info!(
                "delivery {}: its run was stopped with sockhook; it stays pending and runs again at the next activation",
                pending.id
            );
            return;
        }
        let mut line = outcome_line(outcome);
        if self.coalesced {
            line.push_str(" (coalesced into the run of a newer delivery)");
        }
        if self.resumed {
            line.push_str(" (resumed: its first activation ended before its run finished)");
        }
        pending.finish(&line);
    }

    fn dropped(mut self: Box<Self>, why: Dropped) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        match why {
            Dropped::Superseded => pending
                .finish("superseded: the run of a newer delivery, already started, covers it"),
            Dropped::Stopping | Dropped::NoThread => info!(
                "delivery {}: not run ({why}); it stays pending and runs at the next activation",
                pending.id
            ),
        }
    }
}

/// Whether another open file description holds the lock of `path`.
#[cfg(test)]
fn locked(path: &Path) -> bool {
    let file = File::open(path).unwrap();
    Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_then_pid_then_sequence() {
        let mut names = vec![
            "1700000000010-5-1_a",
            "1700000000002-77-10_b",
            "1700000000002-77-9_a",
            "1700000000002-8-1_a",
        ];
        names.sort_by_key(|n| sort_key(n));
        assert_eq!(
            names,
            [
                "1700000000002-8-1_a",
                "1700000000002-77-9_a",
                "1700000000002-77-10_b",
                "1700000000010-5-1_a"
            ]
        );
    }

    #[test]
    fn one_line_escapes_what_would_break_the_head() {
        let raw = b"curl/7.88 \\ \n\x00\xff";
        assert_eq!(one_line(raw), "curl/7.88 \\x5c \\x0a\\x00\\xff");
        assert_eq!(unescape(one_line(raw).as_bytes()), raw);
    }

    #[test]
    fn a_lock_is_seen_by_another_open_file() {
        let dir =
            std::env::temp_dir().join(format!("sockhook-journal-lock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let journal = Journal::new(&dir, 1, 1024);
        journal.prepare().unwrap();
        let held = lock_hook(&journal.locks(), "a").unwrap();
        assert!(locked(&dir.join("locks/a.lock")));
        drop(held);
        assert!(!locked(&dir.join("locks/a.lock")));
        fs::remove_dir_all(&dir).unwrap();
    }
}
