//! The checkpointer thread: copies the WAL into the database file on its own
//! connection, so that the writer never stops committing to do it.
//!
//! SQLite's automatic checkpoint runs inside the COMMIT that crosses its
//! threshold, on the committing connection: the writer thread then copied
//! pages and waited for the database file's fsync while every queued
//! operation waited for it (7–9% of the writer's time in a relay profile,
//! in bursts). Here the writer only tells this thread that it committed;
//! the thread runs PASSIVE checkpoints, which never block the writer, at
//! most every [`MIN_INTERVAL`]. The writer keeps an automatic checkpoint
//! at a far higher threshold ([`BACKSTOP_PAGES`]) as a backstop, so the WAL
//! stays bounded even if this thread falls behind or cannot run.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{StoreOpenError, Synchronous};
use parley_core::sync::lock;

/// Shortest time between two checkpoints of this thread: long enough that
/// each copies many commits' pages, short enough that the WAL stays a few
/// megabytes under load.
pub(super) const MIN_INTERVAL: Duration = Duration::from_millis(20);
/// WAL size in pages at which the writer checkpoints by itself (SQLite's
/// own default is 1,000; 8,192 pages of 4 KiB are 32 MiB).
pub(super) const BACKSTOP_PAGES: u32 = 8_192;
/// How long the checkpointer's connection waits for a lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// What the writer and the checkpointer share.
#[derive(Debug, Default)]
struct Signal {
    /// Commits happened since the last checkpoint started.
    pending: bool,
    /// The store is closing: stop after the current checkpoint.
    stop: bool,
}

/// The writer's handle on the checkpointer thread.
#[derive(Debug)]
pub(super) struct Checkpointer {
    /// The flags and the condition variable the thread waits on.
    signal: Arc<(Mutex<Signal>, Condvar)>,
    /// The thread, joined by [`Checkpointer::stop`].
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a second connection to the database at `path` and starts the
    /// thread. The schema must already be migrated.
    pub(super) fn start(path: &Path, synchronous: Synchronous) -> Result<Checkpointer, StoreOpenError> {
        let sqlite = |source| StoreOpenError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(sqlite)?;
        conn.busy_timeout(LOCK_WAIT).map_err(sqlite)?;
        // A checkpoint syncs the WAL and the database file as this says.
        conn.pragma_update(None, "synchronous", synchronous.name())
            .map_err(sqlite)?;
        // This connection never commits, but make sure it would not
        // checkpoint on its own schedule either.
        conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(sqlite)?;
        let signal = Arc::new((Mutex::new(Signal::default()), Condvar::new()));
        let thread_signal = Arc::clone(&signal);
        let thread = std::thread::Builder::new()
            .name("parley-store-checkpoint".into())
            .spawn(move || run(conn, &thread_signal))
            .map_err(StoreOpenError::Spawn)?;
        Ok(Checkpointer {
            signal,
            thread: Some(thread),
        })
    }

    /// The writer committed: a checkpoint has something to copy.
    pub(super) fn committed(&self) {
        let (mutex, wake) = &*self.signal;
        let mut signal = lock(mutex);
        if !signal.pending {
            signal.pending = true;
            wake.notify_one();
        }
    }

    /// Stops the thread and waits for it, so that the writer's final
    /// checkpoint does not find this one in its way.
    pub(super) fn stop(&mut self) {
        {
            let (mutex, wake) = &*self.signal;
            let mut signal = lock(mutex);
            signal.stop = true;
            wake.notify_one();
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the SQLite checkpoint thread panicked");
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The thread's body.
fn run(conn: Connection, signal: &(Mutex<Signal>, Condvar)) {
    let (mutex, wake) = signal;
    loop {
        {
            let mut state = lock(mutex);
            while !state.pending && !state.stop {
                state = wake.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            if state.stop {
                return;
            }
            state.pending = false;
        }
        // PASSIVE copies what no reader still needs and returns at once if
        // anything is in its way; the next commit asks again.
        if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(%error, "WAL checkpoint failed; the writer's backstop checkpoint takes over");
        }
        std::thread::sleep(MIN_INTERVAL);
    }
}
