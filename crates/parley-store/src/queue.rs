//! What the SQLite and PostgreSQL stores share around their one writer: the
//! bounded queue of operations with its admission rule, the writer's
//! counters, the state of failing writes and the close handshake. Each
//! store has its own operations and its own writer; everything between a
//! `Store` call and the writer's queue is here, once.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use parley_core::histogram::Histogram;
use parley_core::store::StoreStats;
use parley_core::sync::{self, lock};
use parley_core::{StoreError, StoreReply};
use tokio::sync::oneshot;

type StoreResult<T> = Result<T, StoreError>;

/// The share of the queue, in quarters, that new work (appends and account
/// creations) may fill. The remaining quarter only takes operations that
/// finish work already admitted or shed load — acks, the reads that
/// deliver stored messages, deletions, logouts — so that under a flood of
/// sends recipients can still acknowledge and catch up. Without it a full
/// queue refused their acks, their unacked windows filled, live delivery
/// stopped and every message had to be read back from the database, which
/// halved what the writer admitted (docs/BENCHMARKS.md, overload).
pub const NEW_WORK_QUEUE_QUARTERS: usize = 3;
/// What a `Busy` answer tells the caller to wait before retrying, in
/// milliseconds: about the time a few group commits take on a slow disk.
pub const BUSY_RETRY_AFTER_MS: u32 = 50;

/// Upper bounds, in microseconds, of the commit-latency histogram's buckets:
/// from a batch of reads on a warm cache (tens of microseconds) to a commit
/// stuck behind a slow disk (seconds).
pub const COMMIT_MICROS_BUCKETS: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    10_000_000,
];
/// Upper bounds of the batch-size histogram's buckets (operations per
/// commit), powers of two up to past the default `max_batch`.
pub const BATCH_SIZE_BUCKETS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// A snapshot of the writer's counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Transactions committed (one per batch of operations).
    pub commits: u64,
    /// Operations answered from committed transactions, including reads and
    /// operations that failed with a domain error such as `NameTaken`.
    pub ops_committed: u64,
    /// Batches whose transaction failed or was retried.
    pub failed_batches: u64,
    /// Operations refused with `Busy` because the queue was full.
    pub busy_rejections: u64,
}

/// The writer's counters, updated with relaxed atomics: they are statistics,
/// not synchronisation.
#[derive(Debug)]
pub(crate) struct Counters {
    /// See [`BatchStats::commits`].
    pub(crate) commits: AtomicU64,
    /// See [`BatchStats::ops_committed`].
    pub(crate) ops_committed: AtomicU64,
    /// See [`BatchStats::failed_batches`].
    pub(crate) failed_batches: AtomicU64,
    /// See [`BatchStats::busy_rejections`].
    pub(crate) busy_rejections: AtomicU64,
    /// Microseconds from BEGIN to the end of COMMIT, per committed batch.
    pub(crate) commit_micros: Histogram,
    /// Microseconds per fsync of the WAL by SQLite's syncer thread.
    pub(crate) sync_micros: Histogram,
    /// Operations per committed batch.
    pub(crate) batch_size: Histogram,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            commits: AtomicU64::new(0),
            ops_committed: AtomicU64::new(0),
            failed_batches: AtomicU64::new(0),
            busy_rejections: AtomicU64::new(0),
            commit_micros: Histogram::new(COMMIT_MICROS_BUCKETS),
            sync_micros: Histogram::new(COMMIT_MICROS_BUCKETS),
            batch_size: Histogram::new(BATCH_SIZE_BUCKETS),
        }
    }
}

/// Where `close` callers wait for the writer to stop.
#[derive(Debug, Default)]
struct Shutdown {
    /// How the writer stopped, once it has.
    outcome: Option<StoreResult<()>>,
    /// Callers of `close` waiting for `outcome`.
    waiters: Vec<oneshot::Sender<StoreResult<()>>>,
}

/// State shared by a store's handle and its writer.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Which store, for the log.
    store: &'static str,
    /// Statistics the writer updates.
    pub(crate) counters: Counters,
    /// Operations queued and not yet taken by the writer: incremented before
    /// a send, decremented as the writer takes each op (SQLite at
    /// `synchronous = full`: as its syncer answers it). The channel's own
    /// capacity stays the hard bound; this count only decides, slightly
    /// approximately under races, whether new work still fits in its share
    /// ([`NEW_WORK_QUEUE_QUARTERS`]).
    pub(crate) queued: AtomicUsize,
    /// The close handshake.
    shutdown: Mutex<Shutdown>,
    /// Set while writes fail for a reason the operator must fix
    /// ([`StoreError::Unavailable`]): the writer then runs one op per
    /// transaction, so that a failing write fails nothing else. Cleared by
    /// the next commit that wrote.
    pub(crate) writes_failing: AtomicBool,
    /// Why, while `writes_failing`.
    write_failure: Mutex<Option<String>>,
}

impl Shared {
    /// The shared state of the store named `store` (for the log).
    pub(crate) fn new(store: &'static str) -> Shared {
        Shared {
            store,
            counters: Counters::default(),
            queued: AtomicUsize::new(0),
            shutdown: Mutex::new(Shutdown::default()),
            writes_failing: AtomicBool::new(false),
            write_failure: Mutex::new(None),
        }
    }

    /// Records whether writes fail now, and why; logs each change.
    pub(crate) fn set_write_failure(&self, why: Option<String>) {
        let mut current = lock(&self.write_failure);
        let store = self.store;
        match (&*current, &why) {
            (None, Some(why)) => tracing::error!(
                store,
                %why,
                "storage writes fail; reads go on, writes are refused with STORAGE_UNAVAILABLE until they succeed again"
            ),
            (Some(_), None) => tracing::info!(store, "storage writes succeed again"),
            _ => {}
        }
        self.writes_failing.store(why.is_some(), Ordering::Relaxed);
        *current = why;
    }

    /// Records how the writer stopped and answers every waiting `close`.
    /// Only the first outcome counts.
    pub(crate) fn finish(&self, outcome: StoreResult<()>) {
        let mut shutdown = lock(&self.shutdown);
        let outcome = shutdown.outcome.get_or_insert(outcome).clone();
        for waiter in shutdown.waiters.drain(..) {
            // A caller that stopped waiting does not need the answer.
            let _ = waiter.send(outcome.clone());
        }
    }
}

/// Why a channel did not take an op.
pub(crate) enum Refused {
    Full,
    Closed,
}

/// The sending end of a writer's queue: std's for a writer thread, tokio's
/// for a writer task.
pub(crate) trait OpSender<Op>: Send + Sync {
    fn try_push(&self, op: Op) -> Result<(), Refused>;
}

impl<Op: Send> OpSender<Op> for std::sync::mpsc::SyncSender<Op> {
    fn try_push(&self, op: Op) -> Result<(), Refused> {
        self.try_send(op).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(_) => Refused::Full,
            std::sync::mpsc::TrySendError::Disconnected(_) => Refused::Closed,
        })
    }
}

impl<Op: Send> OpSender<Op> for tokio::sync::mpsc::Sender<Op> {
    fn try_push(&self, op: Op) -> Result<(), Refused> {
        self.try_send(op).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => Refused::Full,
            tokio::sync::mpsc::error::TrySendError::Closed(_) => Refused::Closed,
        })
    }
}

/// A store's handle on its writer: the queue, its admission rule, and what
/// the writer shares.
#[derive(Debug)]
pub(crate) struct OpQueue<S> {
    /// The sending end; `None` once `close` was called. Operations take the
    /// read lock only around a non-blocking send; `close` takes the write
    /// lock to drop the sender, which is what tells the writer to finish.
    sender: RwLock<Option<S>>,
    /// Queued operations past which new work is refused (see
    /// [`NEW_WORK_QUEUE_QUARTERS`]); at least 1.
    new_work_limit: usize,
    /// Counters, failure state and the close handshake.
    shared: Arc<Shared>,
}

impl<S> OpQueue<S> {
    /// The handle on a queue of `capacity` ops.
    pub(crate) fn new(sender: S, capacity: usize, shared: Arc<Shared>) -> OpQueue<S> {
        OpQueue {
            sender: RwLock::new(Some(sender)),
            new_work_limit: (capacity / 4 * NEW_WORK_QUEUE_QUARTERS).max(1),
            shared,
        }
    }

    /// Queues an op that brings new work: refused while the queue holds its
    /// share of such work (see [`NEW_WORK_QUEUE_QUARTERS`]), before anything
    /// is built, since under a flood most of these calls are refused.
    pub(crate) fn submit_new<Op, T>(&self, make: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Op) -> StoreReply<T>
    where
        S: OpSender<Op>,
    {
        match self.new_work_room() {
            Ok(()) => self.submit(make),
            Err(busy) => StoreReply::ready(Err(busy)),
        }
    }

    /// Whether the queue has room for new work; a refusal is counted.
    pub(crate) fn new_work_room(&self) -> StoreResult<()> {
        if !self.has_new_work_room() {
            return Err(self.busy_error());
        }
        Ok(())
    }

    /// Whether the queue has room for new work, not counted.
    pub(crate) fn has_new_work_room(&self) -> bool {
        self.shared.queued.load(Ordering::Relaxed) < self.new_work_limit
    }

    fn busy_error(&self) -> StoreError {
        self.shared.counters.busy_rejections.fetch_add(1, Ordering::Relaxed);
        StoreError::Busy {
            retry_after_ms: BUSY_RETRY_AFTER_MS,
        }
    }

    /// Queues the op `make` builds around a fresh reply channel, at once and
    /// without blocking.
    pub(crate) fn submit<Op, T>(&self, make: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Op) -> StoreReply<T>
    where
        S: OpSender<Op>,
    {
        let (reply, answer) = oneshot::channel();
        // The lock only guards an Option; a poisoned one holds valid data.
        let sender = sync::read(&self.sender);
        let Some(sender) = sender.as_ref() else {
            return StoreReply::ready(Err(StoreError::Closed));
        };
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        match sender.try_push(make(reply)) {
            Ok(()) => StoreReply::pending(answer),
            Err(refused) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                match refused {
                    Refused::Full => StoreReply::ready(Err(self.busy_error())),
                    Refused::Closed => StoreReply::ready(Err(StoreError::Closed)),
                }
            }
        }
    }

    /// `Store::close`: the writer finishes what is queued and stops; every
    /// caller gets its outcome.
    pub(crate) fn close(&self) -> StoreReply<()> {
        let (waiter, answer) = oneshot::channel();
        {
            let mut shutdown = lock(&self.shared.shutdown);
            if let Some(outcome) = &shutdown.outcome {
                return StoreReply::ready(outcome.clone());
            }
            shutdown.waiters.push(waiter);
        }
        // Dropping the only sender is the close signal: it cannot be refused
        // for a full queue, and the writer sees it only after everything
        // queued before it. Later operations find no sender and get `Closed`.
        let sender = sync::write(&self.sender).take();
        drop(sender);
        StoreReply::pending(answer)
    }

    /// `Store::write_failure`.
    pub(crate) fn write_failure(&self) -> Option<String> {
        if !self.shared.writes_failing.load(Ordering::Relaxed) {
            return None;
        }
        lock(&self.shared.write_failure).clone()
    }

    /// The writer's counters so far.
    pub(crate) fn batch_stats(&self) -> BatchStats {
        let counters = &self.shared.counters;
        BatchStats {
            commits: counters.commits.load(Ordering::Relaxed),
            ops_committed: counters.ops_committed.load(Ordering::Relaxed),
            failed_batches: counters.failed_batches.load(Ordering::Relaxed),
            busy_rejections: counters.busy_rejections.load(Ordering::Relaxed),
        }
    }

    /// `Store::stats`.
    pub(crate) fn stats(&self) -> StoreStats {
        let counters = &self.shared.counters;
        let batches = self.batch_stats();
        StoreStats {
            commits: batches.commits,
            ops_committed: batches.ops_committed,
            failed_batches: batches.failed_batches,
            busy_rejections: batches.busy_rejections,
            queued: self.shared.queued.load(Ordering::Relaxed) as u64,
            commit_micros: counters.commit_micros.snapshot(),
            sync_micros: counters.sync_micros.snapshot(),
            batch_size: counters.batch_size.snapshot(),
        }
    }
}
