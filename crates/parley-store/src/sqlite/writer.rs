//! The writer thread: the only owner of the SQLite connection.
//!
//! It runs queued operations in batches, one transaction per batch (group
//! commit), and answers each operation only after its batch committed. It
//! stops when every sender of the queue is gone (the store was closed or
//! dropped), after finishing everything queued.
//!
//! While writes fail for a reason the operator must fix (a full disk, a
//! read-only database: [`StoreError::Unavailable`]), batches hold one op
//! each, so that a failing write fails nothing but itself and reads go on;
//! the first commit that writes again ends that.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
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
) {
    let guard = FinishOnExit(shared);
    let shared = &guard.0;
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
        shared.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        let commits = shared.counters.commits.load(Ordering::Relaxed);
        run_batch(&conn, &mut batch, shared, &mut statements);
        if shared.counters.commits.load(Ordering::Relaxed) != commits {
            checkpointer.committed();
        }
    }
    drop(queue);
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

/// Runs `batch` (leaving it empty) in one transaction, then answers every op.
fn run_batch(conn: &Connection, batch: &mut Vec<Op>, shared: &Shared, statements: &mut AppendStatements<'_>) {
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
                run_batch(conn, &mut vec![op], shared, statements);
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
    for (i, outcome) in outcomes.into_iter().enumerate() {
        outcome.deliver(if i < stand { None } else { failure.as_ref() });
    }
    for op in rest {
        run_batch(conn, &mut vec![op], shared, statements);
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
