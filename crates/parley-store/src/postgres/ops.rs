//! The operations the writer runs, and their SQL (appends are in
//! `append.rs`, presence and blocks in `relations.rs`, spam folders and
//! labels in `held.rs`).
//!
//! Every function here runs inside the writer's open transaction and assumes
//! nothing about what else is in it. Each makes all its domain checks (name
//! taken, no such user, limits) before its first write, so a domain error
//! leaves nothing to undo and needs no savepoint; a database error fails the
//! transaction, and the writer then runs the batch's ops one by one.
//!
//! An operation that changes an account's rows first locks the account
//! (`FOR UPDATE`), so that other processes sharing the database change it
//! one at a time: counts checked against limits, the mailbox counters and
//! the unread watermark stay exact.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parley_core::scram::StoredCredentials;
use parley_core::store::{
    Account, AccountSummary, AckRange, Appended, FetchPage, MESSAGE_OVERHEAD_BYTES, MailboxState, NewAccount,
    NewInvite, NewMessage, NewResumeToken, OnStored, StoreResult, StoredMessage, announce_stored,
};
use parley_core::sync::join_in_order;
use parley_core::{Mechanism, MessageId, NamePattern, Seq, StoreError, UserId};
use tokio::sync::oneshot;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::clock;
use crate::convert::{clamp, exact_sql, saturating_sql};
use crate::rules::{contact_limit_message, other_tokens_kept};

/// A pooled connection, with its cache of prepared statements.
pub(super) type Db = deadpool_postgres::ClientWrapper;
/// Where an operation's answer goes.
pub(super) type Reply<T> = oneshot::Sender<StoreResult<T>>;
/// A boxed future borrowing the connection.
pub(super) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// An operation's body: runs on the connection with its arguments.
pub(super) type Run<A, T> = for<'a> fn(&'a Db, &'a A) -> BoxFuture<'a, OpResult<T>>;
/// A parameter list for tokio-postgres.
pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Why an operation failed inside the writer.
#[derive(Debug)]
pub(super) enum OpError {
    /// A domain answer such as `NameTaken` or `NoSuchUser`: the operation
    /// wrote nothing and the transaction goes on.
    Store(StoreError),
    /// PostgreSQL (or the connection) failed: the transaction is lost.
    Db(tokio_postgres::Error),
}

impl From<StoreError> for OpError {
    fn from(error: StoreError) -> OpError {
        OpError::Store(error)
    }
}

impl From<tokio_postgres::Error> for OpError {
    fn from(error: tokio_postgres::Error) -> OpError {
        OpError::Db(error)
    }
}

pub(super) type OpResult<T> = Result<T, OpError>;

/// Whether an operation may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
    /// Reads only: a batch of reads needs no account lock.
    Read,
    /// May write (after its domain checks).
    Write,
    /// An acknowledgement: writes only its caller's own mailbox, sends every
    /// statement it runs on its first poll (so that several run pipelined,
    /// in order, in one round trip), and may run before appends queued
    /// ahead of it. Moved before an append, an ack can only acknowledge
    /// less: it never covers a message its client has not been sent, and
    /// no message is pushed before its batch commits.
    Acknowledge,
}

impl Access {
    /// Whether an operation of this kind may write.
    pub(super) fn writes(self) -> bool {
        self != Access::Read
    }
}

/// The account rows an operation will lock, so that a batch can lock every
/// row it needs at once, in id order, before its first op: two processes'
/// batches then never wait for each other in a cycle.
#[derive(Clone, Debug, Default)]
pub(super) struct Locks {
    /// An account by id.
    pub(super) user: Option<UserId>,
    /// An account by name key.
    pub(super) key: Option<String>,
    /// A mailbox's marks (`mailbox_marks`), locked after every account row.
    pub(super) marks: Option<UserId>,
}

impl Locks {
    /// Locks nothing (reads, and operations on rows of no account).
    pub(super) const NONE: Locks = Locks {
        user: None,
        key: None,
        marks: None,
    };

    /// The caller's account.
    pub(super) fn user(user: UserId) -> Locks {
        Locks {
            user: Some(user),
            key: None,
            marks: None,
        }
    }

    /// The caller's mailbox marks only (acknowledgements).
    pub(super) fn marks(user: UserId) -> Locks {
        Locks {
            user: None,
            key: None,
            marks: Some(user),
        }
    }

    /// The caller's account and its mailbox marks (deletions of messages).
    pub(super) fn mailbox(user: UserId) -> Locks {
        Locks {
            user: Some(user),
            key: None,
            marks: Some(user),
        }
    }

    /// The account with this name key (the recipient of a hold).
    pub(super) fn key(key: &str) -> Locks {
        Locks {
            user: None,
            key: Some(key.to_owned()),
            marks: None,
        }
    }

    /// The caller's account and the other party of a relation.
    pub(super) fn both(user: UserId, key: &str) -> Locks {
        Locks {
            user: Some(user),
            key: Some(key.to_owned()),
            marks: None,
        }
    }
}

/// An append waiting for, or holding, its answer.
pub(super) struct AppendOp {
    /// What to store.
    pub(super) message: NewMessage,
    /// Where the answer goes.
    pub(super) reply: Reply<Appended>,
    /// The answer, once its run computed it; sent when the batch commits.
    pub(super) result: Option<StoreResult<Appended>>,
    /// Told of the message once the batch commits.
    pub(super) on_stored: Option<OnStored>,
}

/// One queued store operation.
pub(super) enum Op {
    /// Consecutive appends run together (`append.rs`).
    Append(Box<AppendOp>),
    /// Anything else.
    Call(Box<dyn Call>),
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Append(_) => f.write_str("Append"),
            Op::Call(_) => f.write_str("Call"),
        }
    }
}

impl Op {
    /// An append of `message`, answering on `reply`.
    pub(super) fn append(message: NewMessage, reply: Reply<Appended>, on_stored: Option<OnStored>) -> Op {
        Op::Append(Box::new(AppendOp {
            message,
            reply,
            result: None,
            on_stored,
        }))
    }

    /// Whether the operation is an append.
    pub(super) fn is_append(&self) -> bool {
        matches!(self, Op::Append(_))
    }

    /// Whether the operation is an acknowledgement (`Access::Acknowledge`).
    pub(super) fn is_ack(&self) -> bool {
        matches!(self, Op::Call(call) if call.access() == Access::Acknowledge)
    }

    /// Whether the operation is an append or an ack: the kinds a batch
    /// runs together in stretches, on the statements prepared with every
    /// connection (`writer::HOT_STATEMENTS`) only.
    pub(super) fn is_append_or_ack(&self) -> bool {
        self.is_append() || self.is_ack()
    }

    /// Whether the operation may write.
    pub(super) fn writes(&self) -> bool {
        match self {
            Op::Append(_) => true,
            Op::Call(call) => call.access().writes(),
        }
    }

    /// Adds the account rows the operation locks to `ids` and `keys`.
    pub(super) fn locks(&self, wanted: &mut BatchLocks) {
        match self {
            Op::Append(op) => wanted.keys.push(op.message.recipient_key.clone()),
            Op::Call(call) => {
                let locks = call.locks();
                wanted.ids.extend(locks.user.and_then(|u| exact_sql(u.0)));
                wanted.keys.extend(locks.key.iter().cloned());
                wanted.marks.extend(locks.marks.and_then(|u| exact_sql(u.0)));
            }
        }
    }

    /// Sends the answer the op computed, or `error` instead when its batch
    /// did not commit.
    pub(super) fn deliver(self, error: Option<&StoreError>) {
        match self {
            Op::Append(op) => {
                let result = match (error, op.result) {
                    (Some(error), _) => Err(error.clone()),
                    (None, Some(result)) => result,
                    (None, None) => Err(StoreError::Backend("the append was never run".into())),
                };
                announce_stored(op.on_stored.as_ref(), &result);
                // A caller that dropped its reply no longer wants the answer.
                let _ = op.reply.send(result);
            }
            Op::Call(call) => call.deliver(error),
        }
    }
}

/// A queued operation other than an append: its arguments, the function
/// that runs it, and where its answer goes.
pub(super) trait Call: Send {
    /// Whether it may write.
    fn access(&self) -> Access;
    /// The account rows it locks.
    fn locks(&self) -> &Locks;
    /// Runs it in the current transaction and keeps its answer; an error
    /// means the transaction failed.
    fn run<'a>(&'a mut self, db: &'a Db) -> BoxFuture<'a, Result<(), tokio_postgres::Error>>;
    /// Sends the kept answer, or `error` instead.
    fn deliver(self: Box<Self>, error: Option<&StoreError>);
}

/// A [`Call`] with arguments `A` answering `T`.
struct Job<A, T> {
    args: A,
    run: Run<A, T>,
    access: Access,
    locks: Locks,
    reply: Reply<T>,
    /// The answer of the last run.
    result: Option<StoreResult<T>>,
}

impl<A: Send + Sync + 'static, T: Send + 'static> Call for Job<A, T> {
    fn access(&self) -> Access {
        self.access
    }

    fn locks(&self) -> &Locks {
        &self.locks
    }

    fn run<'a>(&'a mut self, db: &'a Db) -> BoxFuture<'a, Result<(), tokio_postgres::Error>> {
        Box::pin(async move {
            let outcome = (self.run)(db, &self.args).await;
            match outcome {
                Ok(value) => self.result = Some(Ok(value)),
                Err(OpError::Store(error)) => self.result = Some(Err(error)),
                Err(OpError::Db(error)) => {
                    self.result = None;
                    return Err(error);
                }
            }
            Ok(())
        })
    }

    fn deliver(self: Box<Self>, error: Option<&StoreError>) {
        let result = match (error, self.result) {
            (Some(error), _) => Err(error.clone()),
            (None, Some(result)) => result,
            (None, None) => Err(StoreError::Backend("the operation was never run".into())),
        };
        // A caller that dropped its reply no longer wants the answer.
        let _ = self.reply.send(result);
    }
}

/// The [`Op`] that runs `run(db, &args)` and answers on `reply`.
pub(super) fn call<A, T>(args: A, reply: Reply<T>, access: Access, locks: Locks, run: Run<A, T>) -> Op
where
    A: Send + Sync + 'static,
    T: Send + 'static,
{
    Op::Call(Box::new(Job {
        args,
        run,
        access,
        locks,
        reply,
        result: None,
    }))
}

/// Runs `sql` through the connection's statement cache: prepared once per
/// connection, then one round trip per call.
pub(super) async fn query(db: &Db, sql: &str, params: Params<'_>) -> Result<Vec<Row>, tokio_postgres::Error> {
    let statement = db.prepare_cached(sql).await?;
    db.query(&statement, params).await
}

/// Like [`query`], for at most one row.
pub(super) async fn query_opt(db: &Db, sql: &str, params: Params<'_>) -> Result<Option<Row>, tokio_postgres::Error> {
    let statement = db.prepare_cached(sql).await?;
    db.query_opt(&statement, params).await
}

/// Like [`query`], for exactly one row.
pub(super) async fn query_one(db: &Db, sql: &str, params: Params<'_>) -> Result<Row, tokio_postgres::Error> {
    let statement = db.prepare_cached(sql).await?;
    db.query_one(&statement, params).await
}

/// Like [`query`], for a statement without rows: how many it changed.
pub(super) async fn execute(db: &Db, sql: &str, params: Params<'_>) -> Result<u64, tokio_postgres::Error> {
    let statement = db.prepare_cached(sql).await?;
    db.execute(&statement, params).await
}

/// A stored `bigint` as the unsigned number it is (nothing negative is
/// ever written).
pub(super) fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A `u64` as written: clamped like every stored value.
pub(super) fn signed(value: u64) -> i64 {
    saturating_sql(clamp(value))
}

/// A `u32` as a `bigint`.
pub(super) fn wide(value: u32) -> i64 {
    i64::from(value)
}

/// Text for a range bound: PostgreSQL text cannot hold NUL, and no name
/// key has one, so a bound with NUL is cut there; every stored key compares
/// with the cut as with the whole (nothing stored lies between them).
pub(super) fn text(value: &str) -> &str {
    value.split('\0').next().unwrap_or_default()
}

/// A name key to look up: `None` for one with NUL, which no account has
/// (and PostgreSQL text cannot hold).
pub(super) fn lookup_key(key: &str) -> Option<&str> {
    (!key.contains('\0')).then_some(key)
}

/// Bytes stored as `bytea` (bodies and client ids may hold any character,
/// NUL included, as in SQLite) read back as text.
pub(super) fn utf8(bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|_| StoreError::Backend("stored text is not UTF-8".into()))
}

/// Locks the account rows with these ids, in id order; returns the ids that
/// exist.
pub(super) async fn lock_accounts(db: &Db, ids: &[i64]) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = query(
        db,
        "SELECT id FROM accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        &[&ids],
    )
    .await?;
    rows.iter().map(|row| row.try_get(0)).collect()
}

/// Locks one account row; whether it exists. Ids PostgreSQL cannot hold
/// exist for no account.
pub(super) async fn lock_account(db: &Db, user: UserId) -> Result<bool, tokio_postgres::Error> {
    let Some(id) = exact_sql(user.0) else {
        return Ok(false);
    };
    Ok(!lock_accounts(db, &[id]).await?.is_empty())
}

/// The rows a batch's operations will lock.
#[derive(Debug, Default)]
pub(super) struct BatchLocks {
    /// Account rows by id.
    pub(super) ids: Vec<i64>,
    /// Account rows by name key.
    pub(super) keys: Vec<String>,
    /// Mailbox marks by account id.
    pub(super) marks: Vec<i64>,
}

impl BatchLocks {
    /// Sorted, each once.
    pub(super) fn tidy(&mut self) {
        for list in [&mut self.ids, &mut self.marks] {
            list.sort_unstable();
            list.dedup();
        }
        self.keys.sort_unstable();
        self.keys.dedup();
    }
}

/// Locks, at the start of a batch, every row its operations will lock: the
/// account rows in id order, then the mailbox marks in id order. Every
/// operation locks in that order too (an account before its marks), so
/// batches of different writers and processes never wait for each other in
/// a cycle. A list with nothing in it costs no statement (a batch of
/// appends locks no marks, one of acks no account rows).
pub(super) async fn lock_for_batch(db: &Db, wanted: &BatchLocks) -> Result<(), tokio_postgres::Error> {
    let keys: Vec<&str> = wanted.keys.iter().filter_map(|k| lookup_key(k)).collect();
    let accounts: Params = &[&wanted.ids, &keys];
    let marks: Params = &[&wanted.marks];
    // Pipelined, in this order: one round trip (both statements were
    // prepared when the connection opened: `writer::HOT_STATEMENTS`).
    tokio::try_join!(
        async {
            if wanted.ids.is_empty() && keys.is_empty() {
                return Ok(Vec::new());
            }
            query(db, LOCK_ACCOUNTS, accounts).await
        },
        async {
            if wanted.marks.is_empty() {
                return Ok(Vec::new());
            }
            query(db, LOCK_MARKS, marks).await
        },
    )?;
    Ok(())
}

/// Reads an account from a row of `id, name, mechanism, salt, iterations,
/// stored_key, server_key`.
fn account_from_row(row: &Row) -> OpResult<Account> {
    let mechanism: String = row.try_get(2)?;
    let mechanism = Mechanism::from_name(&mechanism)
        .ok_or_else(|| StoreError::Backend(format!("unknown mechanism {mechanism:?}")))?;
    let iterations: i64 = row.try_get(4)?;
    Ok(Account {
        id: UserId(unsigned(row.try_get(0)?)),
        name: row.try_get(1)?,
        credentials: StoredCredentials {
            mechanism,
            salt: row.try_get(3)?,
            iterations: u32::try_from(iterations).map_err(|_| StoreError::Backend("bad iteration count".into()))?,
            stored_key: row.try_get(5)?,
            server_key: row.try_get(6)?,
        },
    })
}

/// Reads a row of `id, name, name_key`.
pub(super) fn summary_from_row(row: &Row) -> Result<AccountSummary, tokio_postgres::Error> {
    Ok(AccountSummary {
        id: UserId(unsigned(row.try_get(0)?)),
        name: row.try_get(1)?,
        name_key: row.try_get(2)?,
    })
}

/// The columns [`message_from_row`] reads, in its order, with `k` the
/// recipient's `mailbox_marks` row: a message at or below its `acked_through` is
/// acknowledged whatever its own column says.
macro_rules! message_columns {
    () => {
        "m.id, m.recipient, m.seq, m.sender, m.sender_name, m.client_msg_id, m.body, m.timestamp_ms, \
         m.acked OR m.seq <= k.acked_through"
    };
}
pub(super) use message_columns;

/// Reads a message from a row of `message_columns!()`, starting at `at`.
pub(super) fn message_from_row(row: &Row, at: usize) -> OpResult<StoredMessage> {
    Ok(StoredMessage {
        id: MessageId(unsigned(row.try_get(at)?)),
        recipient: UserId(unsigned(row.try_get(at + 1)?)),
        seq: Seq(unsigned(row.try_get(at + 2)?)),
        sender: UserId(unsigned(row.try_get(at + 3)?)),
        sender_name: row.try_get(at + 4)?,
        client_msg_id: utf8(row.try_get(at + 5)?)?,
        body: utf8(row.try_get(at + 6)?)?,
        timestamp_ms: unsigned(row.try_get(at + 7)?),
        acked: row.try_get(at + 8)?,
    })
}

pub(super) async fn create_account(db: &Db, new: &NewAccount) -> OpResult<Account> {
    let Some(key) = lookup_key(&new.name_key) else {
        return Err(StoreError::Backend("a name key holds NUL".into()).into());
    };
    if query_opt(db, "SELECT 1 FROM accounts WHERE name_key = $1", &[&key])
        .await?
        .is_some()
    {
        return Err(StoreError::NameTaken.into());
    }
    // The invite is locked (another process cannot use it meanwhile) and
    // used up only once the account row is in.
    if let Some(invite) = &new.invite {
        let valid = query_opt(
            db,
            "SELECT 1 FROM invites WHERE hash = $1 AND expires_ms > $2 FOR UPDATE",
            &[&&invite.hash[..], &saturating_sql(invite.now_ms)],
        )
        .await?;
        if valid.is_none() {
            return Err(StoreError::InviteInvalid.into());
        }
    }
    let credentials = &new.credentials;
    // Another process may register the same key meanwhile: the conflict
    // (after waiting for its transaction) is then a taken name.
    let inserted = query_opt(
        db,
        "INSERT INTO accounts
             (name, name_key, mechanism, salt, iterations, stored_key, server_key, created_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (name_key) DO NOTHING
         RETURNING id",
        &[
            &new.name,
            &key,
            &credentials.mechanism.name(),
            &credentials.salt,
            &wide(credentials.iterations),
            &credentials.stored_key,
            &credentials.server_key,
            &signed(clock::now_ms()),
        ],
    )
    .await?;
    let Some(row) = inserted else {
        return Err(StoreError::NameTaken.into());
    };
    let id: i64 = row.try_get(0)?;
    execute(db, "INSERT INTO mailbox_marks (account) VALUES ($1)", &[&id]).await?;
    if let Some(invite) = &new.invite {
        execute(db, "DELETE FROM invites WHERE hash = $1", &[&&invite.hash[..]]).await?;
    }
    Ok(Account {
        id: UserId(unsigned(id)),
        name: new.name.clone(),
        credentials: new.credentials.clone(),
    })
}

pub(super) async fn create_invite(db: &Db, invite: &NewInvite) -> OpResult<()> {
    execute(
        db,
        "DELETE FROM invites WHERE expires_ms <= $1",
        &[&saturating_sql(invite.now_ms)],
    )
    .await?;
    execute(
        db,
        "INSERT INTO invites (hash, expires_ms) VALUES ($1, $2)
         ON CONFLICT (hash) DO UPDATE SET expires_ms = excluded.expires_ms",
        &[&&invite.hash[..], &saturating_sql(invite.expires_ms)],
    )
    .await?;
    Ok(())
}

pub(super) async fn find_account(db: &Db, name_key: &str) -> OpResult<Option<Account>> {
    let Some(name_key) = lookup_key(name_key) else {
        return Ok(None);
    };
    let row = query_opt(
        db,
        "SELECT id, name, mechanism, salt, iterations, stored_key, server_key FROM accounts WHERE name_key = $1",
        &[&name_key],
    )
    .await?;
    row.as_ref().map(account_from_row).transpose()
}

/// Deletes a mailbox (`$1`), keeping the idempotency records of what
/// others sent to it in `sent_ids` (a stored message is its own record:
/// `schema.rs`).
const DELETE_MAILBOX: &str = "WITH gone AS (
         DELETE FROM messages WHERE recipient = $1
         RETURNING sender, client_msg_id, id, recipient, seq, timestamp_ms
     )
     INSERT INTO sent_ids (sender, client_msg_id, message_id, recipient, seq, timestamp_ms)
     SELECT * FROM gone WHERE sender <> $1
     ON CONFLICT (sender, client_msg_id) DO NOTHING";

/// Deletes messages `$2` of mailbox `$1`, keeping their idempotency records
/// in `sent_ids`, and returns what the counters need of each.
const DELETE_MESSAGES: &str = "WITH gone AS (
         DELETE FROM messages WHERE recipient = $1 AND id = ANY($2)
         RETURNING id, seq, acked, octet_length(body) AS bytes, sender, client_msg_id, recipient, timestamp_ms
     ), kept AS (
         INSERT INTO sent_ids (sender, client_msg_id, message_id, recipient, seq, timestamp_ms)
         SELECT sender, client_msg_id, id, recipient, seq, timestamp_ms FROM gone
         ON CONFLICT (sender, client_msg_id) DO NOTHING
     )
     SELECT id, seq, acked, bytes FROM gone";

pub(super) async fn delete_account(db: &Db, user: UserId) -> OpResult<()> {
    let Some(id) = exact_sql(user.0) else {
        return Err(StoreError::NoSuchUser.into());
    };
    if !lock_account(db, user).await? {
        return Err(StoreError::NoSuchUser.into());
    }
    // Independent statements, pipelined: one round trip.
    let id: Params = &[&id];
    tokio::try_join!(
        // The records of what others sent to it outlive its mailbox, so
        // that a resend of one is still answered with the original.
        execute(db, DELETE_MAILBOX, id),
        execute(db, "DELETE FROM sent_ids WHERE sender = $1", id),
        // Its spam folder; what it sent to others' folders stays, as messages do.
        execute(db, "DELETE FROM held_messages WHERE recipient = $1", id),
        execute(db, "DELETE FROM resume_tokens WHERE owner = $1", id),
        execute(db, "DELETE FROM contacts WHERE owner = $1 OR contact = $1", id),
        execute(
            db,
            "DELETE FROM presence_subscriptions WHERE watcher = $1 OR target = $1",
            id
        ),
        execute(db, "DELETE FROM blocks WHERE blocker = $1 OR blocked = $1", id),
        execute(db, "DELETE FROM accounts WHERE id = $1", id),
        execute(db, "DELETE FROM mailbox_marks WHERE account = $1", id),
    )?;
    Ok(())
}

/// The pattern as SQL `LIKE` sees it: `*` is `%`, `?` is `_`, and a
/// literal `_` (a name character) is escaped.
fn like_pattern(pattern: &NamePattern) -> String {
    let mut like = String::with_capacity(pattern.as_str().len() + 4);
    for c in pattern.as_str().chars() {
        match c {
            '*' => like.push('%'),
            '?' => like.push('_'),
            '_' | '%' | '\\' => {
                like.push('\\');
                like.push(c);
            }
            c => like.push(c),
        }
    }
    like
}

/// The smallest string greater than every string starting with `prefix`, or
/// `None` if there is no bound (empty prefix). Name characters are ASCII
/// below `~`, so bumping the last one is enough.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut bound = prefix.to_owned();
    let last = bound.pop()?;
    bound.push(char::from_u32(u32::from(last) + 1)?);
    Some(bound)
}

pub(super) async fn list_accounts(
    db: &Db,
    pattern: &NamePattern,
    after: &str,
    limit: u32,
) -> OpResult<Vec<AccountSummary>> {
    // The literal prefix bounds an index range scan (the keys' collation is
    // "C": byte order, as in SQLite); LIKE filters within it.
    let after = text(after);
    let prefix = pattern.literal_prefix();
    let like = like_pattern(pattern);
    let lower = if after >= prefix { after } else { prefix };
    // `after` itself is excluded, the prefix included.
    let strict = after >= prefix;
    let limit = wide(limit);
    let rows = match (prefix_upper_bound(prefix), strict) {
        (None, _) => {
            query(
                db,
                "SELECT id, name, name_key FROM accounts WHERE name_key > $1 AND name_key LIKE $2
                 ORDER BY name_key LIMIT $3",
                &[&after, &like, &limit],
            )
            .await?
        }
        (Some(upper), true) => {
            query(
                db,
                "SELECT id, name, name_key FROM accounts
                 WHERE name_key > $1 AND name_key < $2 AND name_key LIKE $3
                 ORDER BY name_key LIMIT $4",
                &[&lower, &upper, &like, &limit],
            )
            .await?
        }
        (Some(upper), false) => {
            query(
                db,
                "SELECT id, name, name_key FROM accounts
                 WHERE name_key >= $1 AND name_key < $2 AND name_key LIKE $3
                 ORDER BY name_key LIMIT $4",
                &[&lower, &upper, &like, &limit],
            )
            .await?
        }
    };
    Ok(rows.iter().map(summary_from_row).collect::<Result<_, _>>()?)
}

/// The statements of the hot path, named so that a test can check their
/// plans (`tests::generic_plans_of_the_hot_statements_use_indexes`).
///
/// A page of a mailbox ([`fetch`]).
pub(super) const FETCH_PAGE: &str = concat!(
    "SELECT page.id, page.recipient, page.seq, page.sender, page.sender_name, page.client_msg_id,
            page.body, page.timestamp_ms, page.acked, page.total
     FROM (
         SELECT c.*, row_number() OVER w AS n, count(*) OVER () AS total,
                (sum(c.cost) OVER w)::bigint AS spent
         FROM (
             SELECT ",
    message_columns!(),
    " AS acked, octet_length(m.body) + octet_length(m.sender_name)
                         + octet_length(m.client_msg_id) + $5::bigint AS cost
             FROM mailbox_marks k
             CROSS JOIN LATERAL (
                 SELECT * FROM messages m
                 WHERE m.recipient = k.account
                   AND m.seq > CASE WHEN $3::boolean THEN $2::bigint
                                    ELSE greatest($2::bigint, k.acked_through) END
                   AND ($3::boolean OR NOT m.acked)
                 ORDER BY m.seq
                 LIMIT $4::bigint
             ) m
             WHERE k.account = $1
         ) c
         WINDOW w AS (ORDER BY c.seq ROWS UNBOUNDED PRECEDING)
     ) page
     WHERE page.n <= $6::bigint AND (page.n = 1 OR page.spent <= $7::bigint)
     ORDER BY page.seq"
);
/// Whether a mailbox holds anything past a seq ([`fetch`] of no messages).
pub(super) const FETCH_ANY: &str = "SELECT 1 FROM mailbox_marks k JOIN messages m ON m.recipient = k.account
     WHERE k.account = $1
       AND m.seq > CASE WHEN $3::boolean THEN $2::bigint ELSE greatest($2::bigint, k.acked_through) END
       AND ($3::boolean OR NOT m.acked)
     LIMIT 1";
/// An acknowledgement's watermark ([`ack`]): never past the last seq
/// (messages stored later are not acked); seqs at or below the new
/// watermark are acked by it, and the count covers (old, new watermark].
pub(super) const ACK: &str = "WITH mailbox AS (
         SELECT k.account AS id, a.last_seq, greatest(a.unread - k.read_count, 0) AS unread,
                k.acked_through AS old_mark,
                greatest(k.acked_through, least($2::bigint, a.last_seq)) AS new_mark
         FROM mailbox_marks k JOIN accounts a ON a.id = k.account WHERE k.account = $1
     ), passed AS (
         SELECT count(*) AS n FROM messages m JOIN mailbox b ON m.recipient = b.id
         WHERE m.seq > b.old_mark AND m.seq <= b.new_mark AND NOT m.acked
     ), saved AS (
         UPDATE mailbox_marks k SET acked_through = b.new_mark, read_count = k.read_count + passed.n
         FROM mailbox b, passed
         WHERE k.account = b.id AND b.new_mark <> b.old_mark
         RETURNING 1
     )
     SELECT b.last_seq, passed.n, greatest(b.unread - passed.n, 0), (SELECT count(*) FROM saved)
     FROM mailbox b, passed";
/// One single seq of an acknowledgement ([`ack`]), after its watermark:
/// marks the message acked when it lies above the watermark and was not
/// yet, and counts it read; one row changed when it did. A statement per
/// seq, each looking its message up by the whole primary key: the set-based
/// form (`seq = ANY($3)` beside the watermark) got, from a generic plan made
/// while the table held a few hundred rows, a scan of the whole mailbox on
/// every ack.
pub(super) const ACK_SINGLE: &str = "WITH one AS (
         UPDATE messages m SET acked = true FROM mailbox_marks k
         WHERE k.account = $1 AND m.recipient = $1 AND m.seq = $2 AND m.seq > k.acked_through AND NOT m.acked
         RETURNING 1
     )
     UPDATE mailbox_marks SET read_count = read_count + 1 WHERE account = $1 AND EXISTS (SELECT 1 FROM one)";
/// Account rows by id or name key, locked in id order ([`lock_for_batch`]);
/// not `id = ANY($1) OR name_key = ANY($2)`, which a generic plan may
/// answer with a scan of the whole table.
pub(super) const LOCK_ACCOUNTS: &str = "SELECT id FROM accounts
     WHERE id = ANY(array_cat($1::bigint[], ARRAY(SELECT id FROM accounts WHERE name_key = ANY($2::text[]))))
     ORDER BY id FOR UPDATE";
/// Mailbox marks, locked in id order ([`lock_for_batch`]).
pub(super) const LOCK_MARKS: &str =
    "SELECT account FROM mailbox_marks WHERE account = ANY($1) ORDER BY account FOR UPDATE";
/// A mailbox's counters ([`mailbox_row`]).
pub(super) const MAILBOX: &str = "SELECT a.last_seq, k.acked_through, greatest(a.unread - k.read_count, 0)
     FROM accounts a JOIN mailbox_marks k ON k.account = a.id WHERE a.id = $1";

/// A mailbox's counters, from its account row and its marks.
#[derive(Debug)]
pub(super) struct MailboxRow {
    pub(super) last_seq: u64,
    pub(super) acked_through: u64,
    pub(super) unread: u64,
}

/// The counters of the mailbox of `user`, or `None` if there is no such
/// account; with `lock`, its account row and then its marks are locked for
/// the transaction (the order every batch locks in).
async fn mailbox_row(db: &Db, user: UserId, lock: bool) -> OpResult<Option<MailboxRow>> {
    let Some(id) = exact_sql(user.0) else {
        return Ok(None);
    };
    let id: Params = &[&id];
    let row = if lock {
        // Pipelined, in this order: one round trip.
        let (_, _, row) = tokio::try_join!(
            query(db, "SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", id),
            query(db, "SELECT 1 FROM mailbox_marks WHERE account = $1 FOR UPDATE", id),
            query_opt(db, MAILBOX, id),
        )?;
        row
    } else {
        query_opt(db, MAILBOX, id).await?
    };
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(MailboxRow {
        last_seq: unsigned(row.try_get(0)?),
        acked_through: unsigned(row.try_get(1)?),
        unread: unsigned(row.try_get(2)?),
    }))
}

/// Reads a page of a mailbox. PostgreSQL reads at most `limit + 1` rows in
/// one range scan of the (recipient, seq) index, adds up their costs and
/// sends the messages within the budget: rows past it are never sent. One
/// scan, so that no plan (a cached generic plan made while the tables were
/// empty included) can read a whole mailbox to find a page of it.
pub(super) async fn fetch(
    db: &Db,
    user: UserId,
    after: Seq,
    limit: u32,
    include_acked: bool,
    max_bytes: usize,
) -> OpResult<FetchPage> {
    let Some(id) = exact_sql(user.0) else {
        return Ok(FetchPage::default());
    };
    let after = saturating_sql(after.0);
    if limit == 0 {
        // Nothing fits; more follow if any message would match.
        let any = query_opt(db, FETCH_ANY, &[&id, &after, &include_acked]).await?;
        return Ok(FetchPage {
            messages: Vec::new(),
            more: any.is_some(),
        });
    }
    // One row past the limit tells whether more follow.
    let wanted = i64::from(limit).saturating_add(1);
    let budget = i64::try_from(max_bytes).unwrap_or(i64::MAX);
    let overhead = i64::try_from(MESSAGE_OVERHEAD_BYTES).unwrap_or(0);
    let rows = query(
        db,
        FETCH_PAGE,
        &[
            &id,
            &after,
            &include_acked,
            &wanted,
            &overhead,
            &i64::from(limit),
            &budget,
        ],
    )
    .await?;
    let mut page = FetchPage::default();
    let mut total = 0i64;
    for row in &rows {
        page.messages.push(message_from_row(row, 0)?);
        total = row.try_get(9)?;
    }
    page.more = total > i64::try_from(page.messages.len()).unwrap_or(i64::MAX);
    Ok(page)
}

/// Acks up to a seq by moving the mailbox's watermark, counting the unread
/// messages it passes (no row is rewritten), then single seqs above it by
/// their `acked` column: every statement sent together, one round trip.
/// The mailbox's marks (not its account row, which appends lock) are
/// already locked by the batch, in a statement of its own before this one
/// (`writer::transaction` locks the marks of every batch with an ack, a
/// batch of one ack included): so the watermark's statement ([`ACK`]),
/// which takes its snapshot when it starts, sees every message committed
/// before the lock was granted, and reads the last seq as committed (an
/// append still in flight has seqs above it, which the ack does not
/// cover). Each single ([`ACK_SINGLE`]) runs after it, so it sees the new
/// watermark.
pub(super) async fn ack(db: &Db, user: UserId, range: &AckRange) -> OpResult<(u64, MailboxState)> {
    let Some(id) = exact_sql(user.0) else {
        return Err(StoreError::NoSuchUser.into());
    };
    let up_to = saturating_sql(range.up_to.0);
    // Seqs PostgreSQL cannot hold cannot exist; a single at or below
    // `up_to` is either passed by the watermark or past the last seq, and
    // one named twice is one statement.
    let mut singles: Vec<i64> = range
        .seqs
        .iter()
        .filter_map(|seq| exact_sql(seq.0))
        .filter(|&seq| seq > up_to)
        .collect();
    singles.sort_unstable();
    singles.dedup();
    let acked: Params = &[&id, &up_to];
    let each_single: Vec<[&(dyn ToSql + Sync); 2]> = singles.iter().map(|seq| [&id as _, seq as _]).collect();
    // Every statement goes out on the first poll, in this order (both were
    // prepared when the connection opened: `writer::HOT_STATEMENTS`).
    let (rows, marked) = tokio::try_join!(query(db, ACK, acked), async {
        let each = join_in_order(each_single.iter().map(|params| execute(db, ACK_SINGLE, params))).await;
        each.into_iter().sum::<Result<u64, _>>()
    })?;
    let Some(row) = rows.first() else {
        return Err(StoreError::NoSuchUser.into());
    };
    let unread = unsigned(row.try_get(2)?);
    Ok((
        unsigned(row.try_get(1)?).saturating_add(marked),
        MailboxState {
            last_seq: Seq(unsigned(row.try_get(0)?)),
            unread: unread.saturating_sub(marked),
        },
    ))
}

pub(super) async fn delete_messages(db: &Db, user: UserId, ids: &[MessageId]) -> OpResult<Vec<MessageId>> {
    let Some(mailbox) = mailbox_row(db, user, true).await? else {
        return Ok(Vec::new());
    };
    let recipient = signed(user.0);
    // Ids PostgreSQL cannot hold cannot exist.
    let wanted: Vec<i64> = ids.iter().filter_map(|id| exact_sql(id.0)).collect();
    let rows = query(db, DELETE_MESSAGES, &[&recipient, &wanted]).await?;
    let mut gone = std::collections::HashSet::new();
    let mut unread_deleted = 0u64;
    let mut bytes_deleted = 0u64;
    for row in &rows {
        let id = unsigned(row.try_get(0)?);
        let seq = unsigned(row.try_get(1)?);
        let acked: bool = row.try_get(2)?;
        let bytes: i32 = row.try_get(3)?;
        if !acked && seq > mailbox.acked_through {
            unread_deleted += 1;
        }
        bytes_deleted = bytes_deleted.saturating_add(u64::try_from(bytes).unwrap_or(0));
        gone.insert(id);
    }
    // In the order given, each once.
    let mut deleted = Vec::with_capacity(gone.len());
    for id in ids {
        if gone.remove(&id.0) {
            deleted.push(*id);
        }
    }
    if !deleted.is_empty() {
        let count = u64::try_from(deleted.len()).unwrap_or(u64::MAX);
        execute(
            db,
            "UPDATE accounts SET unread = greatest(unread - $2, 0),
                 stored_messages = greatest(stored_messages - $3, 0), stored_bytes = greatest(stored_bytes - $4, 0)
             WHERE id = $1",
            &[
                &recipient,
                &signed(unread_deleted),
                &signed(count),
                &signed(bytes_deleted),
            ],
        )
        .await?;
    }
    Ok(deleted)
}

pub(super) async fn mailbox_state(db: &Db, user: UserId) -> OpResult<MailboxState> {
    let Some(mailbox) = mailbox_row(db, user, false).await? else {
        return Err(StoreError::NoSuchUser.into());
    };
    Ok(MailboxState {
        last_seq: Seq(mailbox.last_seq),
        unread: mailbox.unread,
    })
}

/// The account with this name key, as a listing row.
pub(super) async fn find_summary(db: &Db, name_key: &str) -> OpResult<Option<AccountSummary>> {
    let Some(name_key) = lookup_key(name_key) else {
        return Ok(None);
    };
    let row = query_opt(
        db,
        "SELECT id, name, name_key FROM accounts WHERE name_key = $1",
        &[&name_key],
    )
    .await?;
    Ok(row.as_ref().map(summary_from_row).transpose()?)
}

/// Locks the caller's account and the one with key `key` (in id order);
/// `NoSuchUser` unless the caller exists. The other is `None` when no
/// account has the key.
pub(super) async fn lock_pair(db: &Db, user: UserId, key: &str) -> OpResult<(i64, Option<AccountSummary>)> {
    let Some(me) = exact_sql(user.0) else {
        return Err(StoreError::NoSuchUser.into());
    };
    let other = find_summary(db, key).await?;
    let mut ids = vec![me];
    ids.extend(other.as_ref().and_then(|o| exact_sql(o.id.0)));
    let locked = lock_accounts(db, &ids).await?;
    if !locked.contains(&me) {
        return Err(StoreError::NoSuchUser.into());
    }
    // The other account may have gone while this waited for its lock.
    let other = other.filter(|o| exact_sql(o.id.0).is_some_and(|id| locked.contains(&id)));
    Ok((me, other))
}

pub(super) async fn add_contact(db: &Db, user: UserId, contact_key: &str, max: u32) -> OpResult<AccountSummary> {
    let (owner, contact) = lock_pair(db, user, contact_key).await?;
    let Some(contact) = contact else {
        return Err(StoreError::NoSuchUser.into());
    };
    let them = signed(contact.id.0);
    // Adding again is not an error, and is allowed at the limit: it adds nothing.
    let present = query_opt(
        db,
        "SELECT 1 FROM contacts WHERE owner = $1 AND contact = $2",
        &[&owner, &them],
    )
    .await?;
    if present.is_some() {
        return Ok(contact);
    }
    let held: i64 = query_one(db, "SELECT count(*) FROM contacts WHERE owner = $1", &[&owner])
        .await?
        .try_get(0)?;
    if unsigned(held) >= u64::from(max) {
        return Err(StoreError::LimitReached(contact_limit_message(max)).into());
    }
    execute(
        db,
        "INSERT INTO contacts (owner, contact) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&owner, &them],
    )
    .await?;
    Ok(contact)
}

pub(super) async fn remove_contact(db: &Db, user: UserId, contact_key: &str) -> OpResult<bool> {
    let (owner, contact) = match lock_pair(db, user, contact_key).await {
        Ok(pair) => pair,
        Err(OpError::Store(_)) => return Ok(false),
        Err(error) => return Err(error),
    };
    let Some(contact) = contact else {
        return Ok(false);
    };
    let them = signed(contact.id.0);
    let removed = execute(
        db,
        "DELETE FROM contacts WHERE owner = $1 AND contact = $2",
        &[&owner, &them],
    )
    .await?
        > 0;
    if removed {
        // The subscription to its presence goes with the contact.
        execute(
            db,
            "DELETE FROM presence_subscriptions WHERE watcher = $1 AND target = $2",
            &[&owner, &them],
        )
        .await?;
    }
    Ok(removed)
}

pub(super) async fn list_contacts(db: &Db, user: UserId) -> OpResult<Vec<AccountSummary>> {
    let Some(owner) = exact_sql(user.0) else {
        return Ok(Vec::new());
    };
    let rows = query(
        db,
        "SELECT accounts.id, accounts.name, accounts.name_key
         FROM contacts JOIN accounts ON accounts.id = contacts.contact
         WHERE contacts.owner = $1
         ORDER BY accounts.name_key",
        &[&owner],
    )
    .await?;
    Ok(rows.iter().map(summary_from_row).collect::<Result<_, _>>()?)
}

pub(super) async fn create_resume_token(db: &Db, token: &NewResumeToken) -> OpResult<()> {
    if !lock_account(db, token.user).await? {
        return Err(StoreError::NoSuchUser.into());
    }
    let user = signed(token.user.0);
    let hash = &token.hash[..];
    let now = signed(clock::now_ms());
    // A token with the same hash is replaced, whoever held it; then the
    // user's expired ones go. Pipelined.
    let same: Params = &[&hash];
    let expired: Params = &[&user, &now];
    tokio::try_join!(
        execute(db, "DELETE FROM resume_tokens WHERE hash = $1", same),
        execute(
            db,
            "DELETE FROM resume_tokens WHERE owner = $1 AND expires_ms <= $2",
            expired
        ),
    )?;
    // Make room for the new token, which is always kept: drop the tokens
    // expiring first (in insertion order among equals).
    let held: i64 = query_one(db, "SELECT count(*) FROM resume_tokens WHERE owner = $1", &[&user])
        .await?
        .try_get(0)?;
    let excess = unsigned(held).saturating_sub(u64::from(other_tokens_kept(token.max_per_user)));
    if excess > 0 {
        execute(
            db,
            "DELETE FROM resume_tokens WHERE hash IN (
                 SELECT hash FROM resume_tokens WHERE owner = $1
                 ORDER BY expires_ms, created_seq LIMIT $2)",
            &[&user, &signed(excess)],
        )
        .await?;
    }
    execute(
        db,
        "INSERT INTO resume_tokens (hash, owner, expires_ms, created_seq)
         SELECT $1, $2, $3, coalesce(max(created_seq), 0) + 1 FROM resume_tokens WHERE owner = $2",
        &[&hash, &user, &signed(token.expires_ms)],
    )
    .await?;
    Ok(())
}

pub(super) async fn resume(db: &Db, hash: &[u8; 32], now_ms: u64) -> OpResult<Option<Account>> {
    let hash = &hash[..];
    let Some(token) = query_opt(
        db,
        "SELECT owner, expires_ms FROM resume_tokens WHERE hash = $1",
        &[&hash],
    )
    .await?
    else {
        return Ok(None);
    };
    let owner: i64 = token.try_get(0)?;
    let expires_ms: i64 = token.try_get(1)?;
    if unsigned(expires_ms) <= now_ms {
        execute(db, "DELETE FROM resume_tokens WHERE hash = $1", &[&hash]).await?;
        return Ok(None);
    }
    let row = query_opt(
        db,
        "SELECT id, name, mechanism, salt, iterations, stored_key, server_key FROM accounts WHERE id = $1",
        &[&owner],
    )
    .await?;
    row.as_ref().map(account_from_row).transpose()
}

pub(super) async fn revoke_resume_token(db: &Db, hash: &[u8; 32]) -> OpResult<()> {
    execute(db, "DELETE FROM resume_tokens WHERE hash = $1", &[&&hash[..]]).await?;
    Ok(())
}

pub(super) async fn revoke_all_resume_tokens(db: &Db, user: UserId) -> OpResult<u64> {
    let Some(id) = exact_sql(user.0) else { return Ok(0) };
    Ok(execute(db, "DELETE FROM resume_tokens WHERE owner = $1", &[&id]).await?)
}

pub(super) async fn set_credentials(db: &Db, user: UserId, credentials: &StoredCredentials) -> OpResult<()> {
    let Some(id) = exact_sql(user.0) else {
        return Err(StoreError::NoSuchUser.into());
    };
    let changed = execute(
        db,
        "UPDATE accounts SET mechanism = $2, salt = $3, iterations = $4, stored_key = $5, server_key = $6
         WHERE id = $1",
        &[
            &id,
            &credentials.mechanism.name(),
            &credentials.salt,
            &wide(credentials.iterations),
            &credentials.stored_key,
            &credentials.server_key,
        ],
    )
    .await?;
    if changed == 0 {
        return Err(StoreError::NoSuchUser.into());
    }
    execute(db, "DELETE FROM resume_tokens WHERE owner = $1", &[&id]).await?;
    Ok(())
}

/// `new` as stored with these id, recipient, seq and timestamp, not acked.
pub(super) fn unacked(new: &NewMessage, id: u64, recipient: u64, seq: u64, timestamp_ms: u64) -> StoredMessage {
    StoredMessage {
        id: MessageId(id),
        recipient: UserId(recipient),
        seq: Seq(seq),
        sender: UserId(clamp(new.sender.0)),
        sender_name: new.sender_name.clone(),
        client_msg_id: new.client_msg_id.clone(),
        body: new.body.clone(),
        timestamp_ms,
        acked: false,
    }
}

/// An append's answer around `message`.
pub(super) fn appended(message: StoredMessage, duplicate: bool) -> Appended {
    Appended {
        message: Arc::new(message),
        duplicate,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{append, held, schema};
    use super::*;

    /// Tables that grow with use: a plan that scans one of them whole costs
    /// more with every message or account.
    const GROWING: [&str; 6] = [
        "messages",
        "sent_ids",
        "accounts",
        "mailbox_marks",
        "blocks",
        "held_messages",
    ];

    /// Where a plan line's node starts (its `->`; the first line's node
    /// starts at 0).
    fn depth(line: &str) -> usize {
        line.find("->").unwrap_or(0)
    }

    /// Whether the plan line is a node (not a condition or a label).
    fn is_node(at: usize, line: &str) -> bool {
        at == 0 || line.trim_start().starts_with("->")
    }

    /// The unique keys of `messages` besides its primary key: an index scan
    /// that gives every column of one with `=` reads at most one row.
    const ONE_ROW_KEYS: [&[&str]; 1] = [&["sender", "client_msg_id"]];

    /// What is wrong with a plan (EXPLAIN's lines): a sequential scan of a
    /// growing table; a scan of messages bounded neither by a seq nor by a
    /// unique key ([`ONE_ROW_KEYS`]) nor, for a range open above, by a
    /// Limit over it.
    fn scan_problems(plan: &[String]) -> Vec<String> {
        let mut problems = Vec::new();
        for (at, line) in plan.iter().enumerate() {
            for table in GROWING {
                if line.contains(&format!("Seq Scan on {table} ")) || line.ends_with(&format!("Seq Scan on {table}")) {
                    problems.push(format!("scans all of {table}: {}", line.trim()));
                }
            }
            let on_messages = line.contains(" on messages ") || line.ends_with(" on messages");
            if !(is_node(at, line) && line.contains("Scan") && on_messages) {
                continue;
            }
            let conditions: Vec<&str> = plan[at + 1..]
                .iter()
                .take_while(|l| !l.trim_start().starts_with("->"))
                .map(|l| l.trim())
                .filter(|l| l.starts_with("Index Cond:") || l.starts_with("Recheck Cond:"))
                .collect();
            let text = conditions.join(" ");
            let one_row = ONE_ROW_KEYS
                .iter()
                .any(|key| key.iter().all(|column| text.contains(&format!("({column} ="))));
            if one_row {
                continue;
            }
            if !text.contains("seq") {
                problems.push(format!("reads a whole mailbox: {} {text}", line.trim()));
                continue;
            }
            let bounded = text.contains("seq =") || text.contains("seq <");
            if text.contains("seq >") && !bounded {
                let mut limit = false;
                let mut below = depth(line);
                for (up, above) in plan[..at].iter().enumerate().rev() {
                    if is_node(up, above) && depth(above) < below {
                        below = depth(above);
                        limit |= above.contains("Limit");
                    }
                }
                if !limit {
                    problems.push(format!("reads every message above a seq: {} {text}", line.trim()));
                }
            }
        }
        problems
    }

    /// PostgreSQL plans a statement a few times, then may keep one generic
    /// plan for it for as long as the connection lives, made with what the
    /// tables held then: nothing, a few rows, or thousands not yet analyzed
    /// (autovacuum looks once a minute). Made at any of these, every
    /// statement of the hot path must still read only what it needs: no
    /// scan of a whole table, of a whole mailbox, or of every message above
    /// a watermark. (The earlier forms of the page read, the
    /// acknowledgement's singles, the batch lock and the record lookup each
    /// failed this, and the first cost the relay 95% of its rate once
    /// mailboxes held thousands of messages. The singles' second form passed
    /// on empty tables only: made with 1 to 1,000 rows, its plan read the
    /// whole mailbox on every ack.)
    #[tokio::test]
    async fn generic_plans_of_the_hot_statements_use_indexes() {
        let Some((_scratch, url, client, task)) = super::super::test_support::scratch_client().await else {
            return;
        };
        schema::prepare(&client, &url, [7; 32]).await.expect("migrate");
        // The store's own session settings, then generic plans at once.
        client
            .batch_execute(&format!(
                "{} SET plan_cache_mode = force_generic_plan",
                super::super::writer::SESSION_SETUP
            ))
            .await
            .expect("set");
        let statements = [
            ("FETCH_PAGE", FETCH_PAGE),
            ("FETCH_ANY", FETCH_ANY),
            ("ACK", ACK),
            ("ACK_SINGLE", ACK_SINGLE),
            ("LOCK_ACCOUNTS", LOCK_ACCOUNTS),
            ("LOCK_MARKS", LOCK_MARKS),
            ("MAILBOX", MAILBOX),
            ("append::RECIPIENTS", append::RECIPIENTS),
            ("append::BLOCKS", append::BLOCKS),
            ("append::RECORDS", append::RECORDS),
            ("append::RECORDS_OF_DELETED", append::RECORDS_OF_DELETED),
            ("append::STORE", append::STORE),
            ("held::HELD_PAGE", held::HELD_PAGE),
            ("held::EVICT", held::EVICT),
        ];
        // As many accounts (with their marks and a block each), and messages
        // to four mailboxes, idempotency records of deleted messages and
        // held messages.
        let fill = |rows: u32| {
            format!(
                "TRUNCATE accounts, mailbox_marks, blocks, messages, sent_ids, held_messages;
                 INSERT INTO accounts (name, name_key, mechanism, salt, iterations, stored_key, server_key, created_ms)
                     SELECT 'user' || g, 'user' || g, 'SCRAM-SHA-256', '\\x00', 4096, '\\x00', '\\x00', 0
                     FROM generate_series(1, {rows}) g;
                 INSERT INTO mailbox_marks (account) SELECT id FROM accounts;
                 INSERT INTO blocks (blocker, blocked) SELECT id, id + 1 FROM accounts;
                 INSERT INTO messages (recipient, seq, id, sender, sender_name, client_msg_id, body, timestamp_ms)
                     SELECT 1 + g % 4, g, g, 5, 'sender', decode(md5(g::text), 'hex'), '\\x00', 0
                     FROM generate_series(1, {rows}) g;
                 INSERT INTO sent_ids (sender, client_msg_id, message_id, recipient, seq, timestamp_ms)
                     SELECT 5, decode(md5((-g)::text), 'hex'), g, 1 + g % 4, g, 0 FROM generate_series(1, {rows}) g;
                 INSERT INTO held_messages (recipient, sender, sender_name, client_msg_id, body, timestamp_ms, filter, score)
                     SELECT 1 + g % 4, 5, 'sender', decode(md5(g::text), 'hex'), '\\x00', 0, 'test', 1
                     FROM generate_series(1, {rows}) g;"
            )
        };
        let mut problems = Vec::new();
        for (round, rows) in [0, 1, 10, 100, 1_000, 5_000].into_iter().enumerate() {
            client.batch_execute(&fill(rows)).await.expect("fill");
            for (at, (name, sql)) in statements.iter().enumerate() {
                let params = client.prepare(sql).await.expect(name).params().len();
                client
                    .batch_execute(&format!("PREPARE hot{round}_{at} AS {sql}"))
                    .await
                    .expect(name);
                let nulls = vec!["NULL"; params].join(", ");
                let plan: Vec<String> = client
                    .simple_query(&format!("EXPLAIN EXECUTE hot{round}_{at}({nulls})"))
                    .await
                    .expect(name)
                    .into_iter()
                    .filter_map(|message| match message {
                        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                        _ => None,
                    })
                    .collect();
                assert!(!plan.is_empty(), "{name} has no plan");
                let made = format!("{name} made with {rows} messages");
                problems.extend(scan_problems(&plan).into_iter().map(|p| format!("{made}: {p}")));
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
        drop(client);
        let _ = task.await;
    }

    /// The check itself, on the plans the earlier forms got.
    #[test]
    fn the_plan_check_finds_whole_scans() {
        let lines = |text: &str| text.lines().map(str::to_owned).collect::<Vec<_>>();
        let page = lines(
            "Sort  (cost=1..2 rows=1 width=1)
   ->  Nested Loop  (cost=1..2 rows=1 width=1)
         ->  Bitmap Heap Scan on messages m  (cost=4.16..9.50 rows=2 width=137)
               Recheck Cond: (recipient = $1)
               ->  Bitmap Index Scan on messages_pkey  (cost=0.00..4.16 rows=2 width=0)
                     Index Cond: (recipient = $1)",
        );
        assert_eq!(scan_problems(&page).len(), 1, "{:?}", scan_problems(&page));
        let singles = lines(
            "Update on messages m  (cost=0.15..8.21 rows=1 width=47)
   ->  Nested Loop  (cost=0.15..8.21 rows=1 width=47)
         ->  Index Scan using messages_pkey on messages m  (cost=0.15..8.18 rows=1 width=22)
               Index Cond: ((recipient = b_1.id) AND (seq > b_1.new_mark))",
        );
        assert_eq!(scan_problems(&singles).len(), 1);
        let lock = lines(
            "LockRows  (cost=20.55..20.79 rows=19 width=14)
   ->  Seq Scan on accounts  (cost=0.00..20.15 rows=19 width=14)",
        );
        assert_eq!(scan_problems(&lock).len(), 1);
        let limited = lines(
            "Limit  (cost=0.15..8.19 rows=1 width=16)
   ->  Index Scan using messages_pkey on messages m_1  (cost=0.15..605.13 rows=116 width=16)
         Index Cond: ((recipient = a.id) AND (seq > $2))",
        );
        assert!(scan_problems(&limited).is_empty());
        let by_key = lines(
            "Index Scan using messages_sent on messages m  (cost=0.15..8.17 rows=1 width=137)
   Index Cond: ((sender = w.sender) AND (client_msg_id = w.client_msg_id))",
        );
        assert!(scan_problems(&by_key).is_empty());
        let by_sender = lines(
            "Index Scan using messages_sent on messages m  (cost=0.15..8.17 rows=1 width=137)
   Index Cond: (sender = w.sender)",
        );
        assert_eq!(
            scan_problems(&by_sender).len(),
            1,
            "half the key reads all a sender sent"
        );
    }
}
