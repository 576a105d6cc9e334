//! The writer thread: the only owner of the SQLite connection.
//!
//! It runs queued operations in batches, one transaction per batch (group
//! commit), and answers each operation only after its batch committed. It
//! stops when every sender of the queue is gone (the store was closed or
//! dropped), after finishing everything queued.
//!
//! With `synchronous = full` the commit itself does not wait for the disk:
//! the connection runs at `synchronous = normal` (a commit writes the WAL
//! without an fsync) and each committed batch goes to the syncer thread,
//! which fsyncs the WAL and only then answers the batch's operations, in
//! commit order. Meanwhile the writer already runs the next batch, so the
//! writer's CPU and the disk's flush overlap instead of taking turns; no
//! answer, and no announcement of a stored message, leaves before the
//! fsync that makes it durable (see [`Syncer`]).
//!
//! While writes fail for a reason the operator must fix (a full disk, a
//! read-only database: [`StoreError::Unavailable`]), batches hold one op
//! each, so that a failing write fails nothing but itself and reads go on;
//! the first commit that writes again ends that.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::Instant;

use parley_core::StoreError;
use rusqlite::Connection;

use super::checkpoint::Checkpointer;
use super::ops::{AppendStatements, Op, Outcome, PendingAppends, sqlite_error};
use crate::queue::Shared;

/// Answers waiting `close` callers even if the thread ends abnormally, so
/// that nobody waits forever.
struct FinishOnExit(
    /// The state whose `close` waiters must be answered.
    Arc<Shared>,
);

impl Drop for FinishOnExit {
    fn drop(&mut self) {
        // A no-op when the thread already reported how it stopped.
        self.0.finish(Err(StoreError::Backend(
            "the SQLite writer thread stopped unexpectedly".into(),
        )));
    }
}

/// The thread's body.
pub(super) fn run(
    conn: Connection,
    queue: Receiver<Op>,
    max_batch: usize,
    shared: Arc<Shared>,
    mut checkpointer: Checkpointer,
    wal: Option<PathBuf>,
) {
    let guard = FinishOnExit(shared);
    let shared = &guard.0;
    let started = wal.map(|wal| Syncer::start(wal, Arc::clone(shared))).transpose();
    let (answers, syncer) = match started {
        Ok(Some((sender, thread))) => (Answers::AfterSync(sender), Some(thread)),
        Ok(None) => (Answers::Now, None),
        Err(error) => {
            tracing::error!(%error, "cannot start the SQLite syncer thread; the store stops");
            return;
        }
    };
    // Static SQL against the schema just migrated: this fails only if the
    // database is unusable, and then no op could run anyway.
    let mut statements = match AppendStatements::prepare(&conn) {
        Ok(statements) => statements,
        Err(error) => {
            tracing::error!(%error, "cannot prepare the store's statements; the store stops");
            return;
        }
    };
    let mut batch = Vec::new();
    let mut ran = Vec::new();
    // `recv` fails only once the queue is empty and every sender is gone.
    while let Ok(first) = queue.recv() {
        batch.push(first);
        // Take what is already waiting, without waiting for more: the batch
        // is as large as the load makes it, and a lone op is not delayed.
        let max_batch = if shared.writes_failing.load(Ordering::Relaxed) {
            1
        } else {
            max_batch
        };
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // An op leaves the queue's count as the writer takes it, or at
        // `full` once answered (see `Answers::answer`).
        let release = match answers {
            Answers::Now => {
                shared.queued.fetch_sub(batch.len(), Ordering::Relaxed);
                0
            }
            Answers::AfterSync(_) => batch.len(),
        };
        let commits = shared.counters.commits.load(Ordering::Relaxed);
        run_batch(&conn, &mut batch, shared, &mut statements, &mut ran);
        answers.answer(&mut ran, release, shared);
        if shared.counters.commits.load(Ordering::Relaxed) != commits {
            checkpointer.committed();
        }
    }
    drop(queue);
    // Every batch is answered before the store reports itself closed.
    drop(answers);
    if let Some(syncer) = syncer
        && syncer.join().is_err()
    {
        tracing::error!("the SQLite syncer thread panicked");
    }
    drop(statements);
    checkpointer.stop();
    let outcome = shut_down(conn);
    if let Err(error) = &outcome {
        tracing::error!(%error, "SQLite store did not close cleanly");
    }
    shared.finish(outcome);
}

/// Runs a statement that returns no rows, through the statement cache.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Runs `batch` (leaving it empty) in one transaction and adds its outcomes
/// to `ran`, to be answered; ops that could not run are answered at once.
fn run_batch(
    conn: &Connection,
    batch: &mut Vec<Op>,
    shared: &Shared,
    statements: &mut AppendStatements<'_>,
    ran: &mut Vec<Settled>,
) {
    let size = u64::try_from(batch.len()).unwrap_or(u64::MAX);
    let started = Instant::now();
    // A lone read needs no write lock: on a read-only database it still runs.
    let begin = match batch.as_slice() {
        [op] if !op.writes() => "BEGIN",
        _ => "BEGIN IMMEDIATE",
    };
    if let Err(error) = exec(conn, begin) {
        let error = sqlite_error(&error);
        if let StoreError::Unavailable(why) = &error
            && batch.len() > 1
        {
            // Nothing ran: each op gets its own chance, reads succeed.
            shared.set_write_failure(Some(why.clone()));
            for op in std::mem::take(batch) {
                run_batch(conn, &mut vec![op], shared, statements, ran);
            }
            return;
        }
        tracing::error!(%error, "cannot begin a store transaction");
        shared.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
        batch.drain(..).for_each(|op| op.fail(error.clone()));
        return;
    }
    let mut ops = batch.drain(..);

    // What the batch's appends assigned and did not write back yet; dropped
    // with the batch, so a rolled-back batch leaves none behind.
    let pending = &mut PendingAppends::default();
    let mut outcomes: Vec<Box<dyn Outcome>> = Vec::with_capacity(ops.len());
    // Set when the transaction is in an unknown state: nothing of the batch
    // may then be committed.
    let mut broken: Option<StoreError> = None;
    // How many outcomes came before the batch's first write: they saw only
    // what was committed, so they stand even if the batch fails.
    let mut before_writes: Option<usize> = None;
    for op in ops.by_ref() {
        if before_writes.is_none() && op.writes() {
            before_writes = Some(outcomes.len());
        }
        match run_op(conn, op, pending, statements) {
            Ok(outcome) => outcomes.push(outcome),
            Err((outcome, error)) => {
                outcomes.extend(outcome);
                broken = Some(error);
                break;
            }
        }
    }

    let failure = match broken {
        Some(error) => Some(error),
        None => pending
            .write_back(conn)
            .and_then(|()| exec(conn, "COMMIT"))
            .err()
            .map(|error| sqlite_error(&error)),
    };
    // Ops the batch did not reach yet: after a failure the operator must
    // fix, each still gets its own transaction instead of the batch's error.
    let mut rest: Vec<Op> = Vec::new();
    match &failure {
        None => {
            // Three relaxed additions and a clock read per batch: cheap
            // next to the commit they describe.
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            shared.counters.commit_micros.record(micros);
            shared.counters.batch_size.record(size);
            shared.counters.commits.fetch_add(1, Ordering::Relaxed);
            shared.counters.ops_committed.fetch_add(size, Ordering::Relaxed);
            if before_writes.is_some() && shared.writes_failing.load(Ordering::Relaxed) {
                shared.set_write_failure(None);
            }
        }
        Some(error) => {
            match error {
                StoreError::Unavailable(why) => shared.set_write_failure(Some(why.clone())),
                _ => tracing::error!(%error, ops = size, "store batch failed; rolling it back"),
            }
            shared.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
            // SQLite may already have rolled back on its own (disk full, I/O
            // error), in which case this fails harmlessly.
            if let Err(rollback) = exec(conn, "ROLLBACK") {
                tracing::debug!(%rollback, "rollback after a failed batch");
            }
            match error {
                StoreError::Unavailable(_) => rest.extend(ops),
                _ => ops.for_each(|op| op.fail(error.clone())),
            }
        }
    }
    let stand = match failure {
        Some(_) => before_writes.unwrap_or(outcomes.len()),
        None => outcomes.len(),
    };
    ran.push(Settled {
        wrote: failure.is_none() && before_writes.is_some(),
        outcomes,
        stand,
        failure,
        release: 0,
    });
    for op in rest {
        run_batch(conn, &mut vec![op], shared, statements, ran);
    }
}

/// A batch that ran: its outcomes, waiting to be answered.
struct Settled {
    /// One per operation that ran, in order.
    outcomes: Vec<Box<dyn Outcome>>,
    /// Outcomes before this index stand; those after get `failure`.
    stand: usize,
    /// Why the batch did not commit, if it did not.
    failure: Option<StoreError>,
    /// The batch committed writes, which the WAL's fsync must cover.
    wrote: bool,
    /// Operations taken off the queue that stop counting against it once
    /// this batch is answered (see [`Answers::answer`]).
    release: usize,
}

impl Settled {
    /// Answers every operation; `sync_failed`, when the fsync that was to
    /// make this batch durable failed, replaces every answer.
    fn deliver(self, sync_failed: Option<&StoreError>) {
        let failure = sync_failed.or(self.failure.as_ref());
        let stand = if sync_failed.is_some() { 0 } else { self.stand };
        for (i, outcome) in self.outcomes.into_iter().enumerate() {
            outcome.deliver(if i < stand { None } else { failure });
        }
    }
}

/// Where the writer hands the batches that ran.
enum Answers {
    /// Answer at once: the commit itself waited for the disk as far as
    /// the configured `synchronous` asks.
    Now,
    /// Answer after the syncer's fsync of the WAL.
    AfterSync(SyncSender<Settled>),
}

impl Answers {
    /// Takes `release` ops off the queue's count and answers (or passes on
    /// to be answered) what ran of one batch. The count drops before the
    /// answers go out, so that a caller who has its answer never finds its
    /// own op still holding a place in the queue. At `full` a batch's ops
    /// count against `write_queue` until answered, so that what waits for
    /// the fsync is bounded by the same limit as what waits for the writer:
    /// the last part of the batch carries the count to the syncer.
    fn answer(&self, ran: &mut Vec<Settled>, release: usize, shared: &Shared) {
        let sender = match self {
            Answers::AfterSync(sender) if !ran.is_empty() => sender,
            _ => {
                shared.queued.fetch_sub(release, Ordering::Relaxed);
                ran.drain(..).for_each(|settled| settled.deliver(None));
                return;
            }
        };
        if let Some(last) = ran.last_mut() {
            last.release = release;
        }
        for settled in ran.drain(..) {
            if let Err(std::sync::mpsc::SendError(settled)) = sender.send(settled) {
                // The syncer is gone (it panicked): nothing can be made
                // durable any more, so nothing is confirmed.
                let error = StoreError::Backend("the SQLite syncer thread stopped".into());
                shared.queued.fetch_sub(settled.release, Ordering::Relaxed);
                settled.deliver(Some(&error));
            }
        }
    }
}

/// Batches the writer committed and the syncer has not answered yet, beyond
/// the group it is syncing: past it the writer waits, so what is taken off
/// the queue and not yet answered stays within a few batches.
const SYNC_DEPTH: usize = 2;

/// The syncer thread: fsyncs the WAL for each group of committed batches,
/// then answers their operations in commit order.
///
/// Why this is as durable as `synchronous = full`: a batch is answered only
/// after an `fdatasync` of the WAL file that began after its COMMIT wrote
/// its frames, and those frames are all SQLite needs to recover the
/// transaction. Checkpoints run with their own fsyncs (the writer's
/// `synchronous = normal` and the checkpointer's `full` both sync the WAL
/// before copying it and the database file before the WAL is reused), so a
/// WAL that starts over never drops a transaction that only it held.
///
/// A failed fsync fails the whole group with [`StoreError::Unavailable`],
/// and every group after it: once an fsync failed, the kernel may have
/// dropped the pages it could not write and a later fsync would succeed
/// without them, so nothing this process wrote can be confirmed any more
/// (PostgreSQL stops for the same reason). The writes may still be visible;
/// after a restart SQLite recovers what is really on disk, and a resend
/// finds what was kept by its client id.
struct Syncer {
    /// The WAL file, opened at the first sync (it exists by then).
    wal: Option<File>,
    /// Its path.
    path: PathBuf,
    /// Where answered operations stop counting against the queue.
    shared: Arc<Shared>,
    /// Set by the first failed fsync; every answer after it fails so.
    failed: Option<StoreError>,
}

impl Syncer {
    /// Starts the thread for the WAL at `path`.
    fn start(path: PathBuf, shared: Arc<Shared>) -> std::io::Result<(SyncSender<Settled>, JoinHandle<()>)> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(SYNC_DEPTH);
        let thread = std::thread::Builder::new()
            .name("parley-store-sync".into())
            .spawn(move || {
                Syncer {
                    wal: None,
                    path,
                    shared,
                    failed: None,
                }
                .run(&receiver);
            })?;
        Ok((sender, thread))
    }

    fn run(mut self, batches: &Receiver<Settled>) {
        let mut group = Vec::new();
        while let Ok(first) = batches.recv() {
            group.push(first);
            group.extend(batches.try_iter());
            let error = match &self.failed {
                Some(failed) => Some(failed.clone()),
                None if group.iter().any(|settled| settled.wrote) => self.sync().err(),
                None => None,
            };
            if let Some(error) = &error
                && self.failed.is_none()
            {
                tracing::error!(
                    %error,
                    "cannot make committed writes durable; from now on every request that uses the store fails until parleyd restarts"
                );
                self.failed = Some(StoreError::Unavailable(format!(
                    "an fsync of the database's WAL failed ({error}); restart parleyd"
                )));
            }
            // The count first, as in `Answers::answer`.
            let release: usize = group.iter().map(|settled| settled.release).sum();
            self.shared.queued.fetch_sub(release, Ordering::Relaxed);
            group.drain(..).for_each(|settled| settled.deliver(error.as_ref()));
        }
    }

    /// One `fdatasync` of the WAL.
    fn sync(&mut self) -> Result<(), StoreError> {
        let unavailable =
            |error: std::io::Error| StoreError::Unavailable(format!("the WAL could not be flushed to disk: {error}"));
        let wal = match &mut self.wal {
            Some(wal) => wal,
            None => self.wal.insert(File::open(&self.path).map_err(unavailable)?),
        };
        let started = Instant::now();
        let synced = wal.sync_data().map_err(unavailable);
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.shared.counters.sync_micros.record(micros);
        synced
    }
}

/// What [`run_op`] returns when the transaction can no longer be trusted: the
/// op's outcome if it ran, and the error.
type Broken = (Option<Box<dyn Outcome>>, StoreError);

/// Runs one op; a writing op inside its own savepoint, rolled back if the op
/// failed, so that it leaves no partial writes in the batch — except ops
/// that fail before writing anything (see `Op::fails_before_writing`), whose
/// SQLite errors break the batch instead.
fn run_op(
    conn: &Connection,
    op: Op,
    pending: &mut PendingAppends,
    statements: &mut AppendStatements<'_>,
) -> Result<Box<dyn Outcome>, Broken> {
    let backend = |error: rusqlite::Error| sqlite_error(&error);
    // Anything but an append sees exact `last_seq` values.
    if !op.is_append()
        && let Err(error) = pending.write_back(conn)
    {
        let error = backend(error);
        op.fail(error.clone());
        return Err((None, error));
    }
    if !op.writes() {
        return Ok(op.execute(conn, pending, statements));
    }
    if op.fails_before_writing() {
        let outcome = op.execute(conn, pending, statements);
        return match outcome.backend_error() {
            Some(error) => Err((Some(outcome), error)),
            None => Ok(outcome),
        };
    }
    if let Err(error) = exec(conn, "SAVEPOINT op") {
        let error = backend(error);
        op.fail(error.clone());
        return Err((None, error));
    }
    let outcome = op.execute(conn, pending, statements);
    let end = if outcome.failed() {
        exec(conn, "ROLLBACK TO op").and_then(|()| exec(conn, "RELEASE op"))
    } else {
        exec(conn, "RELEASE op")
    };
    match end {
        Ok(()) => Ok(outcome),
        Err(error) => Err((Some(outcome), backend(error))),
    }
}

/// Makes everything durable in the main database file and closes it.
fn shut_down(conn: Connection) -> Result<(), StoreError> {
    let backend = |error: rusqlite::Error| StoreError::Backend(error.to_string());
    // TRUNCATE moves the WAL into the database file and empties it, so the
    // file alone is a complete copy (for backups) and the next open starts
    // without recovery work.
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
        .map_err(backend)?;
    if busy != 0 {
        // Another connection (a backup, a shell) kept a read open; the WAL
        // stays and SQLite replays it on the next open. Nothing is lost.
        tracing::warn!("WAL checkpoint at close was blocked by another connection");
    }
    conn.close().map_err(|(_, error)| backend(error))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// What the outcomes were answered, in the order they were.
    type Log = Arc<Mutex<Vec<(usize, Option<String>)>>>;

    /// An outcome that writes its answer into a log.
    struct Probe(usize, Log);

    impl Outcome for Probe {
        fn failed(&self) -> bool {
            false
        }

        fn backend_error(&self) -> Option<StoreError> {
            None
        }

        fn deliver(self: Box<Self>, error: Option<&StoreError>) {
            parley_core::sync::lock(&self.1).push((self.0, error.map(ToString::to_string)));
        }
    }

    fn settled(ids: &[usize], log: &Log, wrote: bool) -> Settled {
        Settled {
            outcomes: ids
                .iter()
                .map(|&id| Box::new(Probe(id, Arc::clone(log))) as Box<dyn Outcome>)
                .collect(),
            stand: ids.len(),
            failure: None,
            wrote,
            release: 0,
        }
    }

    /// Runs a syncer on `path` over `batches`, to the end.
    fn sync_all(path: PathBuf, batches: Vec<Settled>) {
        let shared = Arc::new(Shared::new("sqlite"));
        let (sender, thread) = Syncer::start(path, Arc::clone(&shared)).unwrap();
        let answers = Answers::AfterSync(sender);
        for batch in batches {
            answers.answer(&mut vec![batch], 0, &shared);
        }
        drop(answers);
        thread.join().unwrap();
    }

    #[test]
    fn batches_are_answered_in_commit_order() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("db-wal");
        std::fs::write(&wal, b"frames").unwrap();
        let log = Log::default();
        sync_all(
            wal,
            vec![
                settled(&[1, 2], &log, true),
                settled(&[3], &log, false),
                settled(&[4, 5], &log, true),
            ],
        );
        let answered = parley_core::sync::lock(&log).clone();
        assert_eq!(answered, (1..=5).map(|id| (id, None)).collect::<Vec<_>>());
    }

    #[test]
    fn a_failed_sync_fails_every_answer_of_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::default();
        let mut partly_failed = settled(&[1, 2], &log, true);
        partly_failed.stand = 1;
        partly_failed.failure = Some(StoreError::Backend("the batch failed".into()));
        // No such file: its fsync cannot succeed.
        sync_all(dir.path().join("missing-wal"), vec![partly_failed]);
        let answered = parley_core::sync::lock(&log).clone();
        assert_eq!(answered.len(), 2);
        for (_, error) in answered {
            let error = error.expect("no answer may stand without its fsync");
            assert!(error.contains("could not be flushed"), "{error}");
        }
    }

    #[test]
    fn after_a_failed_sync_nothing_is_confirmed_again() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("db-wal");
        let log = Log::default();
        let shared = Arc::new(Shared::new("sqlite"));
        let (sender, thread) = Syncer::start(wal.clone(), Arc::clone(&shared)).unwrap();
        let answers = Answers::AfterSync(sender);
        // No WAL yet: this fsync fails.
        answers.answer(&mut vec![settled(&[1], &log, true)], 0, &shared);
        wait_for_answers(&log, 1);
        // The file now exists and could be synced; nothing is confirmed
        // anyway, reads included.
        std::fs::write(&wal, b"frames").unwrap();
        answers.answer(
            &mut vec![settled(&[2], &log, true), settled(&[3], &log, false)],
            0,
            &shared,
        );
        drop(answers);
        thread.join().unwrap();
        let answered = parley_core::sync::lock(&log).clone();
        assert_eq!(answered.len(), 3);
        assert!(
            answered[0]
                .1
                .as_deref()
                .is_some_and(|e| e.contains("could not be flushed"))
        );
        for (_, error) in &answered[1..] {
            assert!(
                error.as_deref().is_some_and(|e| e.contains("restart parleyd")),
                "{error:?}"
            );
        }
    }

    /// Waits until `log` holds `count` answers (the syncer answers on its
    /// own thread).
    fn wait_for_answers(log: &Log, count: usize) {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while parley_core::sync::lock(log).len() < count {
            assert!(Instant::now() < deadline, "no answer within 10 s");
            std::thread::yield_now();
        }
    }

    #[test]
    fn batches_that_wrote_nothing_need_no_sync() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::default();
        sync_all(dir.path().join("missing-wal"), vec![settled(&[1], &log, false)]);
        assert_eq!(parley_core::sync::lock(&log).clone(), vec![(1, None)]);
    }
}
