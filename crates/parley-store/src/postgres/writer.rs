//! The writer: the only task that talks to PostgreSQL for the store.
//!
//! It takes queued operations in batches and runs each batch as one
//! transaction on one pooled connection (group commit), answering each
//! operation only after its batch committed. It stops when every sender of
//! the queue is gone (the store was closed or dropped), after finishing
//! everything queued.
//!
//! A batch that writes begins by locking every account row its operations
//! will lock, in id order, so that batches of different processes never wait
//! for each other in a cycle. What can still go wrong, and what follows:
//! - PostgreSQL reports a deadlock or a serialization failure, or another
//!   process stored one of the batch's client ids meanwhile (`append.rs`):
//!   the batch is rolled back and run again, a few times.
//! - The connection is lost before COMMIT (PostgreSQL restarted, an
//!   administrator ended the session): nothing committed, and the batch
//!   runs once more on a fresh connection.
//! - A statement fails otherwise (a row PostgreSQL refuses): the batch is
//!   rolled back and each of its operations is run again in a transaction
//!   of its own, so that one bad operation fails alone.
//! - No connection can be had (refused, timed out): every operation of the
//!   batch is answered [`StoreError::Unavailable`], the store reports the
//!   failure (`write_failure`, for `/readyz`), and for a second new
//!   operations are answered the same without trying; meanwhile, and while
//!   writes fail for any other reason, the writer probes the database every
//!   second with a one-row write and clears the failure when it passes.
//! - The connection dies during COMMIT, or a batch outlives its timeout:
//!   nobody can tell whether it committed. Its operations are answered
//!   `Unavailable` and the connection is dropped; a resent message is
//!   recognised by its client id whichever way it went.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use parley_core::StoreError;
use parley_core::sync::{join_in_order, lock};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use super::append::{self, Lookup, RunEnd};
use super::ops::{self, Db, Op};
use super::schema::{self, describe};
use super::{BUSY_RETRY_AFTER_MS, PgOpenError, PgOptions};
use crate::queue::Shared;

/// How often the writer retries a database it could not reach or write to,
/// while no operation comes; also how long it answers new operations
/// `Unavailable` without trying after a connection could not be opened.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How many times a batch runs when PostgreSQL asks for a retry (deadlock,
/// serialization failure, a client id stored by another process meanwhile).
const MAX_TRIES: u32 = 5;

/// How long a writer reads every idempotency record before its appends
/// ([`Lookup::All`]) after a batch of its ran into a stored message's: a
/// client that resends after a reconnect resends its whole unanswered
/// window, so one resend is soon followed by others.
const RESENDS_WINDOW: Duration = Duration::from_secs(1);

/// What every connection sets before its first use: the durability and
/// isolation the store's reasoning relies on, whatever the server's or the
/// role's defaults. `synchronous_commit = on`: COMMIT returns once the
/// commit is flushed to the server's disk (and to synchronous standbys, if
/// configured), so an acknowledged message survives a crash of PostgreSQL or
/// of the machine. READ COMMITTED: each statement sees what committed before
/// it, which the append runs rely on after taking their locks.
/// `plan_cache_mode = auto`: statements are planned afresh a few times, then
/// run on a cached generic plan where it costs no more than theirs, which
/// saves the planning that otherwise costs about a quarter of the relay's
/// rate (a batch of appends and acks only takes generic plans at once:
/// [`BEGIN_HOT`]). A generic plan may have been
/// made while the tables were nearly empty, and outlives their growth until
/// autovacuum next analyzes them, so every statement of the hot path is
/// written so that its only plans are index lookups and bounded index
/// ranges (`ops::tests::generic_plans_of_the_hot_statements_use_indexes`).
/// `enable_seqscan = off`: a table of a few hundred rows, not yet analyzed,
/// is cheaper to scan whole than to look up in an index several times, and
/// a generic plan made then (for the account rows a batch locks or counts)
/// keeps scanning the whole table, dead row versions and all, after it grew;
/// every statement of the store has an index to use, and one that has none
/// is still planned as a scan.
pub(super) const SESSION_SETUP: &str = "SET synchronous_commit = on;
     SET default_transaction_isolation = 'read committed'; SET plan_cache_mode = auto;
     SET enable_seqscan = off;";

/// Opens connections for the pool: plain TCP or unix socket (no TLS), and
/// the session settings above, with the server ending a session that stays
/// idle inside a transaction (a process frozen while it held account locks)
/// or runs one statement past the batch timeout.
struct Session {
    /// The batch timeout, for the server-side timeouts.
    timeout: Duration,
}

impl deadpool_postgres::Connect for Session {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> ops::BoxFuture<'_, Result<(Client, JoinHandle<()>), tokio_postgres::Error>> {
        let config = config.clone();
        let millis = self.timeout.as_millis();
        Box::pin(async move {
            let (client, task) = connect(&config).await?;
            let setup = format!(
                "{SESSION_SETUP} SET idle_in_transaction_session_timeout = {millis}; SET statement_timeout = {millis};"
            );
            if let Err(error) = client.batch_execute(&setup).await {
                task.abort();
                return Err(error);
            }
            Ok((client, task))
        })
    }
}

/// Opens one connection and drives it on a task of this runtime.
async fn connect(config: &tokio_postgres::Config) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    let task = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %describe(&error), "PostgreSQL connection ended");
        }
    });
    Ok((client, task))
}

/// Why a batch's transaction did not commit.
enum Failure {
    /// A statement failed.
    Db(tokio_postgres::Error),
    /// Another process recorded one of the run's client ids meanwhile.
    Raced,
    /// COMMIT failed in a way that does not say whether it took effect.
    CommitUnknown(tokio_postgres::Error),
}

/// What the writer makes of a PostgreSQL error.
enum Verdict {
    /// Run the batch again.
    Retry,
    /// The database cannot serve now: [`StoreError::Unavailable`].
    Unavailable(String),
    /// Anything else: [`StoreError::Backend`].
    Backend(String),
}

/// Whether the error means the connection is gone: closed, an I/O error,
/// a connection exception, or the server ending the session (an
/// administrator's `pg_terminate_backend`, a shutdown or crash restart).
fn connection_lost(error: &tokio_postgres::Error) -> bool {
    if error.is_closed()
        || std::error::Error::source(error).is_some_and(|cause| cause.downcast_ref::<std::io::Error>().is_some())
    {
        return true;
    }
    error.code().is_some_and(|code| {
        code.code().starts_with("08") || *code == SqlState::ADMIN_SHUTDOWN || *code == SqlState::CRASH_SHUTDOWN
    })
}

fn verdict(error: &tokio_postgres::Error) -> Verdict {
    let why = describe(error);
    if connection_lost(error) {
        return Verdict::Unavailable(format!("lost the connection to PostgreSQL: {why}"));
    }
    let Some(code) = error.code() else {
        return Verdict::Backend(why);
    };
    if *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE {
        return Verdict::Retry;
    }
    let class = &code.code()[..2.min(code.code().len())];
    // Connection exceptions, insufficient resources (disk full, out of
    // memory, too many connections), operator intervention (shutdown,
    // cancelled or timed-out statements), system errors, and a read-only
    // server (a standby): an operator's or a failover's business, after
    // which the same request may pass.
    let unavailable = matches!(class, "08" | "53" | "57" | "58") || *code == SqlState::READ_ONLY_SQL_TRANSACTION;
    if unavailable {
        Verdict::Unavailable(format!("PostgreSQL: {why}"))
    } else {
        Verdict::Backend(why)
    }
}

/// A writer's own state.
#[derive(Clone)]
pub(super) struct Writer {
    /// The connections.
    pool: Pool,
    /// See [`PgOptions::batch_timeout`].
    batch_timeout: Duration,
    /// Most operations per batch.
    max_batch: usize,
    /// See [`PgOptions::ack_linger`].
    ack_linger: Duration,
    /// When a connection last could not be opened, and why, while the
    /// database is unreachable: new operations are answered at once until
    /// [`PROBE_INTERVAL`] has passed. Shared by the writers, so that one
    /// writer's successful connection clears it for all of them (else a
    /// writer still inside its interval would report the failure again
    /// after another's probe had cleared it).
    unreachable: Arc<std::sync::Mutex<Option<(Instant, String)>>>,
    /// Until when this writer's batches read every idempotency record
    /// (see [`RESENDS_WINDOW`]).
    resends_until: Option<Instant>,
}

/// Answers waiting `close` callers even if the writer ends abnormally, so
/// that nobody waits forever.
struct FinishOnExit(
    /// The state whose `close` waiters must be answered.
    Arc<Shared>,
);

impl Drop for FinishOnExit {
    fn drop(&mut self) {
        // A no-op when the writer already reported how it stopped.
        self.0.finish(Err(StoreError::Backend(
            "the PostgreSQL writer stopped unexpectedly".into(),
        )));
    }
}

/// The statements of every batch's path, prepared when a connection opens
/// (in one round trip): a statement a batch sends must be prepared before
/// the batch sends anything, for a statement still being prepared would be
/// sent after those that were not (on a connection's first use, an append
/// run's reads before its locks, an ack before its batch's lock).
const HOT_STATEMENTS: [&str; 10] = [
    ops::LOCK_ACCOUNTS,
    ops::LOCK_MARKS,
    ops::ACK,
    ops::ACK_SINGLE,
    append::RECIPIENTS,
    append::BLOCKS,
    append::RECORDS,
    append::RECORDS_OF_DELETED,
    append::NEW_IDS,
    append::STORE,
];

/// How a batch of appends and acks only begins: its statements
/// ([`HOT_STATEMENTS`]) run on their generic plans from the first use.
/// Under `plan_cache_mode = auto`, PostgreSQL compares a generic plan's
/// estimated cost with the custom plans' it made for the first five uses,
/// and a generic plan for `= ANY($1)` is costed for an array of several
/// elements: against custom plans made for arrays of one, the statements
/// of small batches were planned afresh on every use, a sixth of
/// PostgreSQL's CPU at 2,000 msg/s. Their generic plans read only bounded
/// index ranges whatever the tables hold
/// (`ops::tests::generic_plans_of_the_hot_statements_use_indexes`); other
/// statements (an account listing's pattern, say) keep `auto`.
const BEGIN_HOT: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan";

/// Prepares [`HOT_STATEMENTS`] into the connection's statement cache.
async fn prepare_hot_statements(db: &Db) -> Result<(), tokio_postgres::Error> {
    let prepared = join_in_order(HOT_STATEMENTS.iter().map(|sql| db.prepare_cached(sql))).await;
    prepared.into_iter().try_for_each(|statement| statement.map(drop))
}

/// Connects, migrates, reads the server secret and builds the pool.
pub(super) async fn start(options: &PgOptions) -> Result<(Writer, [u8; 32]), PgOpenError> {
    let mut config = options.url.config.clone();
    config.connect_timeout(options.connect_timeout);
    if config.get_application_name().is_none() {
        config.application_name("parleyd");
    }
    let unreachable = |error: tokio_postgres::Error| PgOpenError::Connect {
        url: options.url.redacted(),
        why: describe(&error),
    };
    let (client, task) = connect(&config).await.map_err(unreachable)?;
    let fresh: [u8; 32] = rand::random();
    let prepared = schema::prepare(&client, &options.url, fresh).await;
    // Closing this connection also releases the migration lock, whatever
    // happened.
    drop(client);
    let _ = task.await;
    let secret = prepared?;

    let manager = Manager::from_connect(
        config,
        Session {
            timeout: options.batch_timeout,
        },
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .post_create(Hook::async_fn(|db: &mut Db, _| {
            Box::pin(async move { prepare_hot_statements(db).await.map_err(HookError::Backend) })
        }))
        .max_size(options.pool_size.max(options.writers + 1))
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(options.connect_timeout))
        .wait_timeout(Some(options.connect_timeout))
        .build()
        .map_err(|error| PgOpenError::Connect {
            url: options.url.redacted(),
            why: error.to_string(),
        })?;
    Ok((
        Writer {
            pool,
            batch_timeout: options.batch_timeout,
            max_batch: options.max_batch,
            ack_linger: options.ack_linger,
            unreachable: Arc::default(),
            resends_until: None,
        },
        secret,
    ))
}

/// Runs one writer per queue, each on a connection of the pool, until
/// every sender of every queue is gone; then closes the pool and reports
/// that the store stopped.
pub(super) async fn run(writer: Writer, queues: Vec<mpsc::Receiver<Op>>, shared: Arc<Shared>) {
    let guard = FinishOnExit(shared);
    let shared = &*guard.0;
    let pool = writer.pool.clone();
    join_in_order(queues.into_iter().map(|queue| writer.clone().serve(queue, shared))).await;
    pool.close();
    shared.finish(Ok(()));
}

impl Writer {
    /// Serves the queue until every sender is gone.
    async fn serve(mut self, mut queue: mpsc::Receiver<Op>, shared: &Shared) {
        let mut batch = Vec::new();
        // While writes fail, the database is probed at most once per
        // interval, whether operations keep coming (reads may succeed and
        // clear nothing) or not.
        let mut next_probe = tokio::time::Instant::now();
        loop {
            let failing = shared.writes_failing.load(Ordering::Relaxed);
            if failing && tokio::time::Instant::now() >= next_probe {
                self.probe(shared).await;
                next_probe = tokio::time::Instant::now() + PROBE_INTERVAL;
                continue;
            }
            let first = if failing {
                tokio::select! {
                    op = queue.recv() => op,
                    () = tokio::time::sleep_until(next_probe) => continue,
                }
            } else {
                queue.recv().await
            };
            // `recv` ends only once the queue is empty and every sender gone.
            let Some(first) = first else { break };
            batch.push(first);
            // Take what is already waiting, without waiting for more: the
            // batch is as large as the load makes it, and a lone op is not
            // delayed. While writes fail, one op per batch, so that a
            // failing write fails nothing else.
            let max_batch = if failing { 1 } else { self.max_batch };
            while batch.len() < max_batch {
                match queue.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            if !failing {
                self.linger(&mut batch, &mut queue).await;
            }
            shared.queued.fetch_sub(batch.len(), Ordering::Relaxed);
            self.run_batch(std::mem::take(&mut batch), shared).await;
        }
    }

    /// Holds a batch of acks alone for up to [`PgOptions::ack_linger`],
    /// taking what arrives meanwhile, until the batch is full or an
    /// operation other than an ack joins it (that one is not delayed).
    async fn linger(&self, batch: &mut Vec<Op>, queue: &mut mpsc::Receiver<Op>) {
        if self.ack_linger.is_zero() || !batch.iter().all(Op::is_ack) {
            return;
        }
        let until = tokio::time::Instant::now() + self.ack_linger;
        while batch.len() < self.max_batch {
            let Ok(Some(op)) = tokio::time::timeout_at(until, queue.recv()).await else {
                return;
            };
            let ack = op.is_ack();
            batch.push(op);
            if !ack {
                return;
            }
        }
    }

    /// Runs a batch, and its operations one by one if it failed as a whole.
    async fn run_batch(&mut self, ops: Vec<Op>, shared: &Shared) {
        let Some(ops) = self.attempt(ops, shared, true).await else {
            return;
        };
        for op in ops {
            // A lone op is always answered by `attempt`.
            if let Some(rest) = self.attempt(vec![op], shared, false).await {
                let error = StoreError::Backend("the operation could not be run".into());
                rest.into_iter().for_each(|op| op.deliver(Some(&error)));
            }
        }
    }

    /// A pooled connection, or why there is none. With `fail_fast`, a
    /// database found unreachable less than [`PROBE_INTERVAL`] ago is not
    /// tried again.
    async fn connection(&mut self, fail_fast: bool) -> Result<Object, String> {
        if fail_fast
            && let Some((since, why)) = &*lock(&self.unreachable)
            && since.elapsed() < PROBE_INTERVAL
        {
            return Err(why.clone());
        }
        match self.pool.get().await {
            Ok(connection) => {
                *lock(&self.unreachable) = None;
                Ok(connection)
            }
            Err(error) => {
                let why = match &error {
                    deadpool_postgres::PoolError::Backend(error) => {
                        format!("cannot connect to PostgreSQL: {}", describe(error))
                    }
                    other => format!("cannot connect to PostgreSQL: {other}"),
                };
                *lock(&self.unreachable) = Some((Instant::now(), why.clone()));
                Err(why)
            }
        }
    }

    /// Runs `ops` in one transaction, again when PostgreSQL asks for it, and
    /// answers them; or, when the batch failed as a whole and `split` allows,
    /// gives them back unanswered to be run one by one.
    async fn attempt(&mut self, mut ops: Vec<Op>, shared: &Shared, split: bool) -> Option<Vec<Op>> {
        let counters = &shared.counters;
        let size = u64::try_from(ops.len()).unwrap_or(u64::MAX);
        let mut tries = 0;
        loop {
            tries += 1;
            let connection = match self.connection(true).await {
                Ok(connection) => connection,
                Err(why) => {
                    counters.failed_batches.fetch_add(1, Ordering::Relaxed);
                    shared.set_write_failure(Some(why.clone()));
                    deliver(ops, Some(StoreError::Unavailable(why)));
                    return None;
                }
            };
            let started = Instant::now();
            // The first try looks only for deleted messages' records (see
            // `append.rs`), unless resends are expected.
            let lookup = if tries > 1 || self.resends_until.is_some_and(|until| started < until) {
                Lookup::All
            } else {
                Lookup::Deleted
            };
            let outcome = tokio::time::timeout(self.batch_timeout, transaction(&connection, &mut ops, lookup)).await;
            let failure = match outcome {
                Ok(Ok(wrote)) => {
                    drop(connection);
                    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    counters.commit_micros.record(micros);
                    counters.batch_size.record(size);
                    counters.commits.fetch_add(1, Ordering::Relaxed);
                    counters.ops_committed.fetch_add(size, Ordering::Relaxed);
                    if wrote && shared.writes_failing.load(Ordering::Relaxed) {
                        shared.set_write_failure(None);
                    }
                    deliver(ops, None);
                    return None;
                }
                Ok(Err(failure)) => failure,
                Err(_) => {
                    // The transaction may be anywhere, COMMIT included: the
                    // connection goes, PostgreSQL rolls back what did not
                    // commit.
                    discard(connection);
                    counters.failed_batches.fetch_add(1, Ordering::Relaxed);
                    let why = format!("PostgreSQL did not finish a batch within {:?}", self.batch_timeout);
                    shared.set_write_failure(Some(why.clone()));
                    deliver(ops, Some(StoreError::Unavailable(why)));
                    return None;
                }
            };
            if lookup == Lookup::Deleted && matches!(failure, Failure::Raced) {
                // A resend of a stored message, found by its insert: not a
                // failure, and likely not the last.
                self.resends_until = Some(Instant::now() + RESENDS_WINDOW);
            } else {
                counters.failed_batches.fetch_add(1, Ordering::Relaxed);
            }
            let (error, unknown) = match failure {
                Failure::Raced => {
                    roll_back(connection).await;
                    if tries < MAX_TRIES {
                        continue;
                    }
                    (None, false)
                }
                Failure::Db(error) => {
                    if connection_lost(&error) {
                        discard(connection);
                        // Nothing committed: once more, on a fresh
                        // connection (PostgreSQL restarted, or an
                        // administrator ended the session).
                        if tries == 1 {
                            continue;
                        }
                    } else {
                        roll_back(connection).await;
                    }
                    (Some(error), false)
                }
                Failure::CommitUnknown(error) => {
                    discard(connection);
                    (Some(error), true)
                }
            };
            let verdict = match &error {
                Some(error) => verdict(error),
                None => Verdict::Retry,
            };
            let answer = match verdict {
                Verdict::Retry if tries < MAX_TRIES && !unknown => {
                    // Let the other transaction finish first.
                    tokio::time::sleep(Duration::from_millis(u64::from(tries) * 5)).await;
                    continue;
                }
                // Contention that outlasted the retries: the client may
                // try again shortly.
                Verdict::Retry => StoreError::Busy {
                    retry_after_ms: BUSY_RETRY_AFTER_MS,
                },
                Verdict::Unavailable(why) => {
                    if split && ops.len() > 1 && !unknown {
                        // Each op on a fresh connection, if one can be had.
                        return Some(ops);
                    }
                    shared.set_write_failure(Some(why.clone()));
                    StoreError::Unavailable(why)
                }
                Verdict::Backend(why) => {
                    if split && ops.len() > 1 && !unknown {
                        return Some(ops);
                    }
                    tracing::error!(error = %why, ops = size, "PostgreSQL batch failed");
                    StoreError::Backend(why)
                }
            };
            deliver(ops, Some(answer));
            return None;
        }
    }

    /// Tries a one-row write in a transaction of its own; clears the write
    /// failure when it commits, records why when it does not.
    async fn probe(&mut self, shared: &Shared) {
        let connection = match self.connection(false).await {
            Ok(connection) => connection,
            Err(why) => {
                shared.set_write_failure(Some(why));
                return;
            }
        };
        let write = connection.batch_execute("BEGIN; UPDATE server_secret SET secret = secret; COMMIT;");
        match tokio::time::timeout(self.batch_timeout, write).await {
            Ok(Ok(())) => shared.set_write_failure(None),
            Ok(Err(error)) => {
                let why = match verdict(&error) {
                    Verdict::Unavailable(why) | Verdict::Backend(why) => why,
                    Verdict::Retry => return,
                };
                if connection_lost(&error) {
                    discard(connection);
                } else {
                    roll_back(connection).await;
                }
                shared.set_write_failure(Some(why));
            }
            Err(_) => {
                discard(connection);
                shared.set_write_failure(Some(format!(
                    "PostgreSQL did not finish a write within {:?}",
                    self.batch_timeout
                )));
            }
        }
    }
}

/// Runs the batch in one transaction (none for a batch of reads only), its
/// appends reading the idempotency records `lookup` names; whether it may
/// have written. BEGIN, the batch's lock and the first of its operations'
/// statements go out together, in this order (every statement of that path
/// is prepared when the connection opens, so each is sent on its future's
/// first poll); PostgreSQL runs them one after the other, so the
/// operations still run inside the transaction, after the lock.
async fn transaction(db: &Db, ops: &mut [Op], lookup: Lookup) -> Result<bool, Failure> {
    let writes = ops.iter().any(Op::writes);
    // A batch of appends only is locked by its one run's first statement
    // (`append::RECIPIENTS`, in id order too); a lone call locks what it
    // needs itself, but for an ack, which counts on the batch to have
    // locked its marks (`ops::ack`).
    let locked = writes && (ops.iter().any(Op::is_ack) || (ops.len() > 1 && !ops.iter().all(Op::is_append)));
    let mut wanted = ops::BatchLocks::default();
    if locked {
        for op in ops.iter() {
            op.locks(&mut wanted);
        }
        wanted.tidy();
    }
    // A batch of appends and acks only runs only the statements whose
    // generic plans are tested (`HOT_STATEMENTS`): it takes them at once.
    let begin_sql = if ops.iter().all(Op::is_append_or_ack) {
        BEGIN_HOT
    } else {
        "BEGIN"
    };
    let begin = async {
        if writes {
            // Pipelined: one round trip.
            tokio::try_join!(db.batch_execute(begin_sql), ops::lock_for_batch(db, &wanted)).map_err(Failure::Db)?;
        }
        Ok(())
    };
    let ((), wrote) = tokio::try_join!(begin, run_ops(db, ops, lookup))?;
    if writes {
        db.batch_execute("COMMIT").await.map_err(|error| {
            if connection_lost(&error) {
                Failure::CommitUnknown(error)
            } else {
                Failure::Db(error)
            }
        })?;
    }
    Ok(wrote)
}

/// Runs the batch's operations in call order, but for the acks of a
/// stretch of appends and acks, which go first (see
/// `Access::Acknowledge`), sent together with the run's first statements.
async fn run_ops(db: &Db, ops: &mut [Op], lookup: Lookup) -> Result<bool, Failure> {
    let mut wrote = false;
    let mut at = 0;
    while at < ops.len() {
        let stretch = ops[at..].iter().take_while(|op| op.is_append_or_ack()).count();
        if stretch > 0 {
            let part = &mut ops[at..at + stretch];
            // Stable: the acks keep their order, and so do the appends.
            part.sort_by_key(Op::is_append);
            let acks = part.iter().take_while(|op| op.is_ack()).count();
            let (acked, appended) = part.split_at_mut(acks);
            let appends = async {
                if appended.is_empty() {
                    return Ok(false);
                }
                match append::run(db, appended, lookup).await.map_err(Failure::Db)? {
                    RunEnd::Done { wrote } => Ok(wrote),
                    RunEnd::Raced => Err(Failure::Raced),
                }
            };
            let ((), stored) = tokio::try_join!(async { pipelined(db, acked).await.map_err(Failure::Db) }, appends)?;
            wrote |= acks > 0 || stored;
            at += stretch;
            continue;
        }
        if let Op::Call(call) = &mut ops[at] {
            call.run(db).await.map_err(Failure::Db)?;
            wrote |= call.access().writes();
        }
        at += 1;
    }
    Ok(wrote)
}

/// Runs calls that send every statement on their first poll (acks), all
/// at once: each is polled in order, so their statements reach PostgreSQL
/// in order and run one after the other as if awaited in turn, in one
/// round trip. The first error is returned once every call has finished.
async fn pipelined(db: &Db, ops: &mut [Op]) -> Result<(), tokio_postgres::Error> {
    let calls = ops.iter_mut().filter_map(|op| match op {
        Op::Call(call) => Some(call.run(db)),
        Op::Append(_) => None,
    });
    join_in_order(calls).await.into_iter().collect()
}

/// Ends a failed transaction; a connection that cannot is dropped.
async fn roll_back(connection: Object) {
    if let Err(error) = connection.batch_execute("ROLLBACK").await {
        tracing::debug!(error = %describe(&error), "rollback after a failed batch");
        discard(connection);
    }
}

/// Takes a connection out of the pool and closes it.
fn discard(connection: Object) {
    drop(Object::take(connection));
}

/// Answers every op: its own answer, or `error`.
fn deliver(ops: Vec<Op>, error: Option<StoreError>) {
    for op in ops {
        op.deliver(error.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use deadpool_postgres::Connect;

    use super::*;

    /// Every pooled connection runs with `synchronous_commit = on`, READ
    /// COMMITTED and generic plans allowed, whatever the connection string,
    /// role or database say.
    #[tokio::test]
    async fn sessions_commit_synchronously_whatever_the_defaults() {
        let Some(scratch) = parley_testkit::postgres::Scratch::create() else {
            return;
        };
        let url = format!(
            "{}%20-c%20synchronous_commit%3Doff%20-c%20default_transaction_isolation%3Dserializable%20-c%20plan_cache_mode%3Dforce_custom_plan",
            scratch.url()
        );
        let config: tokio_postgres::Config = url.parse().unwrap();
        let session = Session {
            timeout: Duration::from_secs(7),
        };
        let (client, task) = session.connect(&config).await.expect("connect");
        let show = |name: &'static str| {
            let client = &client;
            async move {
                let row = client.query_one(&format!("SHOW {name}"), &[]).await.unwrap();
                row.get::<_, String>(0)
            }
        };
        assert_eq!(show("synchronous_commit").await, "on");
        assert_eq!(show("default_transaction_isolation").await, "read committed");
        assert_eq!(show("plan_cache_mode").await, "auto");
        assert_eq!(show("statement_timeout").await, "7s");
        assert_eq!(show("idle_in_transaction_session_timeout").await, "7s");
        drop(client);
        let _ = task.await;
    }

    /// Batches of one append and of one ack, the smallest there are, run
    /// their statements on generic plans from the first use: with `auto`,
    /// PostgreSQL kept planning them afresh on every use (their custom plans,
    /// made for arrays of one, looked cheaper than the generic ones).
    #[tokio::test]
    async fn small_hot_batches_run_on_generic_plans() {
        let Some(scratch) = parley_testkit::postgres::Scratch::create() else {
            return;
        };
        let url = super::super::PgUrl::parse(scratch.url()).expect("the scratch URL");
        let (writer, _) = start(&super::super::PgOptions::new(url)).await.expect("start");
        let db = writer.pool.get().await.expect("a connection");
        db.batch_execute(
            "INSERT INTO accounts (name, name_key, mechanism, salt, iterations, stored_key, server_key, created_ms)
                 VALUES ('ann', 'ann', 'SCRAM-SHA-256', '\\x00', 4096, '\\x00', '\\x00', 0);
             INSERT INTO mailbox_marks (account) SELECT id FROM accounts;",
        )
        .await
        .expect("an account");
        let ann = parley_core::UserId(ops::unsigned(
            db.query_one("SELECT id FROM accounts", &[]).await.expect("id").get(0),
        ));
        for n in 1..=8u64 {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let message = parley_core::store::NewMessage {
                sender: ann,
                sender_name: "ann".into(),
                recipient_key: "ann".into(),
                client_msg_id: format!("m{n}"),
                body: "hi".into(),
                timestamp_ms: 1,
                quota: parley_core::store::MailboxQuota::UNLIMITED,
            };
            let mut batch = vec![Op::append(message, reply, None)];
            assert!(transaction(&db, &mut batch, Lookup::Deleted).await.is_ok(), "append");
            batch.into_iter().for_each(|op| op.deliver(None));
            answer.await.expect("answered").expect("stored");
            let (reply, answer) = tokio::sync::oneshot::channel();
            let range = parley_core::store::AckRange {
                up_to: parley_core::Seq(n),
                seqs: vec![parley_core::Seq(n + 1)],
            };
            let mut batch = vec![ops::call(
                (ann, range),
                reply,
                ops::Access::Acknowledge,
                ops::Locks::marks(ann),
                |db, (user, range)| Box::pin(ops::ack(db, *user, range)),
            )];
            assert!(transaction(&db, &mut batch, Lookup::Deleted).await.is_ok(), "ack");
            batch.into_iter().for_each(|op| op.deliver(None));
            answer.await.expect("answered").expect("acked");
        }
        let mut custom = Vec::new();
        for row in db
            .query(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements",
                &[],
            )
            .await
            .expect("prepared statements")
        {
            let (sql, generic, planned): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
            let hot = HOT_STATEMENTS.iter().find(|hot| **hot == sql);
            if hot.is_some() && planned > 0 {
                custom.push(format!("{planned} custom, {generic} generic: {sql}"));
            }
            if [append::RECIPIENTS, append::STORE, ops::ACK, ops::ACK_SINGLE].contains(&sql.as_str()) {
                assert!(generic >= 8, "{generic} generic plans of {sql}");
            }
        }
        assert!(custom.is_empty(), "{custom:#?}");
    }
}
