//! When to exit: counts running commands, remembers when the last one ended,
//! and wakes the event loop whenever that changes (and when a worker has
//! decided a request), through a pipe the loop watches.

use std::io::{PipeReader, PipeWriter, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// Shared between the event loop, the workers and the command runs.
pub struct Activity {
    state: Mutex<State>,
    wake: PipeWriter,
}

struct State {
    runs: usize,
    last: Instant,
}

/// Marks one run (with its follow-ups) as in progress until dropped.
pub struct Busy {
    activity: Arc<Activity>,
}

impl Activity {
    /// A new tracker, and the pipe end the event loop watches to be woken.
    pub fn new() -> std::io::Result<(Arc<Activity>, PipeReader)> {
        let (reader, wake) = std::io::pipe()?;
        for end in [
            fcntl(&reader, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)),
            fcntl(&wake, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)),
        ] {
            end?;
        }
        let activity = Activity {
            state: Mutex::new(State {
                runs: 0,
                last: Instant::now(),
            }),
            wake,
        };
        Ok((Arc::new(activity), reader))
    }

    /// Counts a command run (with its follow-ups) until the guard is dropped.
    pub fn run(self: &Arc<Self>) -> Busy {
        self.lock().runs += 1;
        Busy {
            activity: Arc::clone(self),
        }
    }

    /// Runs in progress now.
    pub fn runs(&self) -> usize {
        self.lock().runs
    }

    /// How long no run has been in progress, or `None` while one is.
    pub fn idle_for(&self) -> Option<Duration> {
        let state = self.lock();
        (state.runs == 0).then(|| state.last.elapsed())
    }

    /// Wakes the event loop.
    pub fn wake(&self) {
        // A full pipe already holds a wake-up; nothing is lost when this write fails.
        let _ = (&self.wake).write(&[1]);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.activity.lock();
        state.runs -= 1;
        state.last = Instant::now();
        drop(state);
        self.activity.wake();
    }
}
