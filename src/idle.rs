//! When to exit: counts open connections and running commands, remembers when
//! the last of them ended, and wakes the accept loop whenever that changes.

use std::io::{PipeReader, PipeWriter, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// Shared between the accept loop, connection threads and command runs.
pub struct Activity {
    state: Mutex<State>,
    quiet: Condvar,
    wake: PipeWriter,
}

struct State {
    connections: usize,
    runs: usize,
    last: Instant,
}

/// Marks one connection or run as in progress until dropped.
pub struct Busy {
    activity: Arc<Activity>,
    run: bool,
}

impl Activity {
    /// A new tracker, and the pipe end the accept loop polls to be woken.
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
                connections: 0,
                runs: 0,
                last: Instant::now(),
            }),
            quiet: Condvar::new(),
            wake,
        };
        Ok((Arc::new(activity), reader))
    }

    /// Counts a connection until the guard is dropped.
    pub fn connection(self: &Arc<Self>) -> Busy {
        self.lock().connections += 1;
        Busy {
            activity: Arc::clone(self),
            run: false,
        }
    }

    /// Counts a command run (with its follow-ups) until the guard is dropped.
    pub fn run(self: &Arc<Self>) -> Busy {
        self.lock().runs += 1;
        Busy {
            activity: Arc::clone(self),
            run: true,
        }
    }

    /// Open connections now.
    pub fn connections(&self) -> usize {
        self.lock().connections
    }

    /// How long nothing has been going on, or `None` while something is.
    pub fn idle_for(&self) -> Option<Duration> {
        let state = self.lock();
        (state.connections == 0 && state.runs == 0).then(|| state.last.elapsed())
    }

    /// Blocks until no connection is open and no command runs.
    pub fn wait_quiet(&self) {
        let mut state = self.lock();
        while state.connections > 0 || state.runs > 0 {
            state = self.quiet.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.activity.lock();
        if self.run {
            state.runs -= 1;
        } else {
            state.connections -= 1;
        }
        state.last = Instant::now();
        drop(state);
        self.activity.quiet.notify_all();
        // A full pipe already holds a wake-up; nothing is lost when this write fails.
        let _ = (&self.activity.wake).write(&[1]);
    }
}
