//! The operations the writer thread runs, and their SQL.
//!
//! Every function here runs inside the writer's open transaction and assumes
//! nothing about what else is in it. Domain checks (name taken, no such user)
//! come before any write, and the writer wraps each writing op in a SAVEPOINT,
//! so a failed op leaves nothing behind while the rest of its batch commits.

use std::collections::HashMap;
use std::sync::Arc;

use parley_core::scram::StoredCredentials;
use parley_core::store::{
    Account, AccountSummary, AckRange, Appended, FetchPage, FilterLabel, Held, HeldMessage, MailboxState, NewAccount,
    NewHeld, NewInvite, NewMessage, NewResumeToken, OnStored, StoreResult, StoredMessage, announce_stored, body_bytes,
    message_cost,
};
use parley_core::{Mechanism, MessageId, NamePattern, Seq, StoreError, UserId};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, Statement, params};
use tokio::sync::oneshot;

use crate::clock;
use crate::convert::{clamp, exact_sql, saturating_sql};
use crate::rules::{contact_limit_message, other_tokens_kept};

/// Where an operation's answer goes.
pub(super) type Reply<T> = oneshot::Sender<StoreResult<T>>;

/// One queued store operation: the arguments of the [`Store`] method of the
/// same name, and the channel its answer goes to.
///
/// [`Store`]: parley_core::Store
#[derive(Debug)]
pub(super) enum Op {
    CreateAccount {
        account: NewAccount,
        reply: Reply<Account>,
    },
    CreateInvite {
        invite: NewInvite,
        reply: Reply<()>,
    },
    FindAccount {
        name_key: String,
        reply: Reply<Option<Account>>,
    },
    DeleteAccount {
        user: UserId,
        reply: Reply<()>,
    },
    ListAccounts {
        pattern: NamePattern,
        after: String,
        limit: u32,
        reply: Reply<Vec<AccountSummary>>,
    },
    Append {
        message: NewMessage,
        reply: Reply<Appended>,
        /// Told of the message once the batch commits.
        on_stored: Option<OnStored>,
    },
    Fetch {
        user: UserId,
        after: Seq,
        limit: u32,
        include_acked: bool,
        reply: Reply<Vec<StoredMessage>>,
    },
    FetchPage {
        user: UserId,
        after: Seq,
        limit: u32,
        include_acked: bool,
        max_bytes: usize,
        reply: Reply<FetchPage>,
    },
    Ack {
        user: UserId,
        range: AckRange,
        reply: Reply<(u64, MailboxState)>,
    },
    DeleteMessages {
        user: UserId,
        ids: Vec<MessageId>,
        reply: Reply<Vec<MessageId>>,
    },
    MailboxState {
        user: UserId,
        reply: Reply<MailboxState>,
    },
    AddContact {
        user: UserId,
        contact_key: String,
        max: u32,
        reply: Reply<AccountSummary>,
    },
    RemoveContact {
        user: UserId,
        contact_key: String,
        reply: Reply<bool>,
    },
    ListContacts {
        user: UserId,
        reply: Reply<Vec<AccountSummary>>,
    },
    CreateResumeToken {
        token: NewResumeToken,
        reply: Reply<()>,
    },
    Resume {
        hash: [u8; 32],
        now_ms: u64,
        reply: Reply<Option<Account>>,
    },
    RevokeResumeToken {
        hash: [u8; 32],
        reply: Reply<()>,
    },
    RevokeAllResumeTokens {
        user: UserId,
        reply: Reply<u64>,
    },
    SetCredentials {
        user: UserId,
        credentials: StoredCredentials,
        reply: Reply<()>,
    },
    /// Holds a message in its recipient's spam folder (`held.rs`); never
    /// announced to the `OnStored` hook.
    Hold {
        held: NewHeld,
        reply: Reply<Held>,
    },
    Held {
        user: UserId,
        after: u64,
        limit: u32,
        reply: Reply<Vec<HeldMessage>>,
    },
    DropHeld {
        user: UserId,
        ids: Vec<u64>,
        reply: Reply<Vec<u64>>,
    },
    AddLabel {
        label: FilterLabel,
        reply: Reply<u64>,
    },
    Labels {
        after: u64,
        limit: u32,
        reply: Reply<Vec<FilterLabel>>,
    },
    /// A presence subscription or block operation (`relations.rs`).
    Relation(Box<dyn super::relations::RelationCall>),
}

/// An operation that has run, holding its answer until the batch commits.
pub(super) trait Outcome: Send {
    /// Whether the operation failed, so its writes must be rolled back.
    fn failed(&self) -> bool;
    /// The error, when SQLite itself failed (not a domain answer).
    fn backend_error(&self) -> Option<StoreError>;
    /// Sends the answer, or `error` instead when the batch did not commit.
    fn deliver(self: Box<Self>, error: Option<&StoreError>);
}

/// The [`Outcome`] of an operation answering `T`.
struct Answer<T> {
    /// The caller's reply channel.
    reply: Reply<T>,
    /// What the operation produced inside the transaction.
    result: StoreResult<T>,
    /// The store's hook, for an append.
    on_stored: Option<OnStored>,
    /// What is told to the hook once the batch committed, before the
    /// answer is sent: [`announce_stored`] for an append, nothing otherwise.
    announce: fn(Option<&OnStored>, &StoreResult<T>),
}

impl<T: Send> Outcome for Answer<T> {
    fn failed(&self) -> bool {
        self.result.is_err()
    }

    fn backend_error(&self) -> Option<StoreError> {
        match &self.result {
            Err(error @ (StoreError::Backend(_) | StoreError::Unavailable(_))) => Some(error.clone()),
            _ => None,
        }
    }

    fn deliver(self: Box<Self>, error: Option<&StoreError>) {
        let result = match error {
            None => self.result,
            Some(error) => Err(error.clone()),
        };
        (self.announce)(self.on_stored.as_ref(), &result);
        // A caller that dropped its reply no longer wants the answer.
        let _ = self.reply.send(result);
    }
}

/// Boxes an operation's result with its reply channel.
pub(super) fn answer<T: Send + 'static>(reply: Reply<T>, result: Result<T, OpError>) -> Box<dyn Outcome> {
    Box::new(Answer {
        reply,
        result: result.map_err(StoreError::from),
        on_stored: None,
        announce: |_, _| {},
    })
}

/// Why an operation failed inside the writer.
#[derive(Debug, thiserror::Error)]
pub(super) enum OpError {
    /// A domain answer such as `NameTaken` or `NoSuchUser`.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl From<OpError> for StoreError {
    fn from(error: OpError) -> StoreError {
        match error {
            OpError::Store(error) => error,
            OpError::Sqlite(error) => sqlite_error(&error),
        }
    }
}

/// The [`StoreError`] for a failure of SQLite itself: what the operator has
/// to fix and a retry may then pass (disk full, read-only database, I/O
/// error) is [`StoreError::Unavailable`]; anything else is a fault,
/// [`StoreError::Backend`].
pub(super) fn sqlite_error(error: &rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as Code;
    let why = match error.sqlite_error_code() {
        Some(Code::DiskFull) => "the disk or the database's size limit is full",
        Some(Code::ReadOnly) => "the database is read-only",
        Some(Code::SystemIoFailure) => "the disk reports an I/O error",
        Some(Code::CannotOpen) => "a database file cannot be opened",
        _ => return StoreError::Backend(error.to_string()),
    };
    StoreError::Unavailable(why.into())
}

pub(super) type OpResult<T> = Result<T, OpError>;

impl Op {
    /// Whether the operation may write, and so needs a savepoint.
    pub(super) fn writes(&self) -> bool {
        match self {
            Op::CreateAccount { .. }
            | Op::CreateInvite { .. }
            | Op::DeleteAccount { .. }
            | Op::Append { .. }
            | Op::Ack { .. }
            | Op::DeleteMessages { .. }
            | Op::AddContact { .. }
            | Op::RemoveContact { .. }
            | Op::CreateResumeToken { .. }
            // A resume deletes the token it finds expired.
            | Op::Resume { .. }
            | Op::RevokeResumeToken { .. }
            | Op::RevokeAllResumeTokens { .. }
            | Op::SetCredentials { .. }
            | Op::Hold { .. }
            | Op::DropHeld { .. }
            | Op::AddLabel { .. } => true,
            Op::Relation(call) => call.writes(),
            Op::FindAccount { .. }
            | Op::ListAccounts { .. }
            | Op::Fetch { .. }
            | Op::FetchPage { .. }
            | Op::MailboxState { .. }
            | Op::ListContacts { .. }
            | Op::Held { .. }
            | Op::Labels { .. } => false,
        }
    }

    /// Whether every domain error of the operation (such as `NoSuchUser`)
    /// is found before its first write, so that it needs no savepoint: a
    /// domain error leaves nothing to undo, and an SQLite error part-way
    /// fails the whole batch instead. Appends, the hot path, are such; a
    /// savepoint per append cost a sixth of the writer's time (statement
    /// journal pages). Acks too: their only domain error, `NoSuchUser`,
    /// comes first.
    pub(super) fn fails_before_writing(&self) -> bool {
        matches!(self, Op::Append { .. } | Op::Ack { .. })
    }

    /// Whether the operation is an append, the one kind that may run with
    /// mailbox seqs not yet written back (see [`PendingAppends`]).
    pub(super) fn is_append(&self) -> bool {
        matches!(self, Op::Append { .. })
    }

    /// Runs the operation in the current transaction.
    pub(super) fn execute(
        self,
        conn: &Connection,
        pending: &mut PendingAppends,
        statements: &mut AppendStatements<'_>,
    ) -> Box<dyn Outcome> {
        match self {
            Op::CreateAccount { account, reply } => answer(reply, create_account(conn, account)),
            Op::CreateInvite { invite, reply } => answer(reply, create_invite(conn, invite)),
            Op::FindAccount { name_key, reply } => answer(reply, find_account(conn, &name_key)),
            Op::DeleteAccount { user, reply } => answer(reply, delete_account(conn, user)),
            Op::ListAccounts {
                pattern,
                after,
                limit,
                reply,
            } => answer(reply, list_accounts(conn, &pattern, &after, limit)),
            Op::Append {
                message,
                reply,
                on_stored,
            } => Box::new(Answer {
                reply,
                result: append(conn, message, pending, statements).map_err(StoreError::from),
                on_stored,
                announce: announce_stored,
            }),
            Op::Fetch {
                user,
                after,
                limit,
                include_acked,
                reply,
            } => answer(
                reply,
                fetch(conn, user, after, limit, include_acked, usize::MAX).map(|page| page.messages),
            ),
            Op::FetchPage {
                user,
                after,
                limit,
                include_acked,
                max_bytes,
                reply,
            } => answer(reply, fetch(conn, user, after, limit, include_acked, max_bytes)),
            Op::Ack { user, range, reply } => answer(reply, ack(conn, user, range)),
            Op::DeleteMessages { user, ids, reply } => answer(reply, delete_messages(conn, user, ids)),
            Op::MailboxState { user, reply } => answer(reply, mailbox_state(conn, user)),
            Op::AddContact {
                user,
                contact_key,
                max,
                reply,
            } => answer(reply, add_contact(conn, user, &contact_key, max)),
            Op::RemoveContact {
                user,
                contact_key,
                reply,
            } => answer(reply, remove_contact(conn, user, &contact_key)),
            Op::ListContacts { user, reply } => answer(reply, list_contacts(conn, user)),
            Op::CreateResumeToken { token, reply } => answer(reply, create_resume_token(conn, token)),
            Op::Resume { hash, now_ms, reply } => answer(reply, resume(conn, hash, now_ms)),
            Op::RevokeResumeToken { hash, reply } => answer(reply, revoke_resume_token(conn, hash)),
            Op::RevokeAllResumeTokens { user, reply } => answer(reply, revoke_all_resume_tokens(conn, user)),
            Op::SetCredentials {
                user,
                credentials,
                reply,
            } => answer(reply, set_credentials(conn, user, &credentials)),
            Op::Hold { held, reply } => answer(reply, super::held::hold(conn, held)),
            Op::Held {
                user,
                after,
                limit,
                reply,
            } => answer(reply, super::held::held(conn, user, after, limit)),
            Op::DropHeld { user, ids, reply } => answer(reply, super::held::drop_held(conn, user, ids)),
            Op::AddLabel { label, reply } => answer(reply, super::held::add_label(conn, label)),
            Op::Labels { after, limit, reply } => answer(reply, super::held::labels(conn, after, limit)),
            Op::Relation(call) => call.execute(conn),
        }
    }

    /// Answers `error` without running the operation.
    pub(super) fn fail(self, error: StoreError) {
        match self {
            Op::CreateAccount { reply, .. } => refuse(reply, error),
            Op::CreateInvite { reply, .. } => refuse(reply, error),
            Op::FindAccount { reply, .. } => refuse(reply, error),
            Op::DeleteAccount { reply, .. } => refuse(reply, error),
            Op::ListAccounts { reply, .. } => refuse(reply, error),
            Op::Append { reply, .. } => refuse(reply, error),
            Op::Fetch { reply, .. } => refuse(reply, error),
            Op::FetchPage { reply, .. } => refuse(reply, error),
            Op::Ack { reply, .. } => refuse(reply, error),
            Op::DeleteMessages { reply, .. } => refuse(reply, error),
            Op::MailboxState { reply, .. } => refuse(reply, error),
            Op::AddContact { reply, .. } => refuse(reply, error),
            Op::RemoveContact { reply, .. } => refuse(reply, error),
            Op::ListContacts { reply, .. } => refuse(reply, error),
            Op::CreateResumeToken { reply, .. } => refuse(reply, error),
            Op::Resume { reply, .. } => refuse(reply, error),
            Op::RevokeResumeToken { reply, .. } => refuse(reply, error),
            Op::RevokeAllResumeTokens { reply, .. } => refuse(reply, error),
            Op::SetCredentials { reply, .. } => refuse(reply, error),
            Op::Hold { reply, .. } => refuse(reply, error),
            Op::Held { reply, .. } => refuse(reply, error),
            Op::DropHeld { reply, .. } => refuse(reply, error),
            Op::AddLabel { reply, .. } => refuse(reply, error),
            Op::Labels { reply, .. } => refuse(reply, error),
            Op::Relation(call) => call.fail(error),
        }
    }
}

/// Answers `error` on `reply`.
pub(super) fn refuse<T>(reply: Reply<T>, error: StoreError) {
    // A caller that dropped its reply no longer wants the answer.
    let _ = reply.send(Err(error));
}

/// Whether an account with this id exists; never for ids SQLite cannot hold.
pub(super) fn account_exists(conn: &Connection, user: UserId) -> OpResult<bool> {
    let Some(id) = exact_sql(user.0) else {
        return Ok(false);
    };
    let mut stmt = conn.prepare_cached("SELECT 1 FROM accounts WHERE id = ?1")?;
    Ok(stmt.exists([id])?)
}

/// Reads an account from a row of `id, name, mechanism, salt, iterations,
/// stored_key, server_key`.
fn account_from_row(row: &Row<'_>) -> rusqlite::Result<Account> {
    let mechanism: String = row.get(2)?;
    let mechanism = Mechanism::from_name(&mechanism).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(2, Type::Text, format!("unknown mechanism {mechanism:?}").into())
    })?;
    Ok(Account {
        id: UserId(row.get(0)?),
        name: row.get(1)?,
        credentials: StoredCredentials {
            mechanism,
            salt: row.get(3)?,
            iterations: row.get(4)?,
            stored_key: row.get(5)?,
            server_key: row.get(6)?,
        },
    })
}

/// `SELECT` of the columns [`message_from_row`] reads, in its order, with
/// `?1` the mailbox's `acked_through` (a message at or below it is acked
/// whatever its column says); a macro so that whole statements can be built
/// with `concat!` at compile time.
macro_rules! select_message {
    () => {
        "SELECT id, recipient, seq, sender, sender_name, client_msg_id, body, timestamp_ms, \
         acked OR seq <= ?1 FROM messages "
    };
}

/// Reads a message from a row selected by `select_message!`.
fn message_from_row(row: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        id: MessageId(row.get(0)?),
        recipient: UserId(row.get(1)?),
        seq: Seq(row.get(2)?),
        sender: UserId(row.get(3)?),
        sender_name: row.get(4)?,
        client_msg_id: row.get(5)?,
        body: row.get(6)?,
        timestamp_ms: row.get(7)?,
        acked: row.get(8)?,
    })
}

fn create_account(conn: &Connection, new: NewAccount) -> OpResult<Account> {
    let mut taken = conn.prepare_cached("SELECT 1 FROM accounts WHERE name_key = ?1")?;
    if taken.exists([&new.name_key])? {
        return Err(StoreError::NameTaken.into());
    }
    // The invite is used up first; the savepoint around the operation
    // takes it back if the insert fails.
    if let Some(invite) = new.invite {
        let used = conn
            .prepare_cached("DELETE FROM invites WHERE hash = ?1 AND expires_ms > ?2")?
            .execute(params![&invite.hash[..], saturating_sql(invite.now_ms)])?;
        if used == 0 {
            return Err(StoreError::InviteInvalid.into());
        }
    }
    let credentials = &new.credentials;
    let mut insert = conn.prepare_cached(
        "INSERT INTO accounts
             (name, name_key, mechanism, salt, iterations, stored_key, server_key, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         RETURNING id",
    )?;
    let id: u64 = insert.query_row(
        params![
            new.name,
            new.name_key,
            credentials.mechanism.name(),
            credentials.salt,
            credentials.iterations,
            credentials.stored_key,
            credentials.server_key,
            clock::now_ms(),
        ],
        |row| row.get(0),
    )?;
    Ok(Account {
        id: UserId(id),
        name: new.name,
        credentials: new.credentials,
    })
}

fn create_invite(conn: &Connection, invite: NewInvite) -> OpResult<()> {
    conn.prepare_cached("DELETE FROM invites WHERE expires_ms <= ?1")?
        .execute([saturating_sql(invite.now_ms)])?;
    conn.prepare_cached("INSERT OR REPLACE INTO invites (hash, expires_ms) VALUES (?1, ?2)")?
        .execute(params![&invite.hash[..], saturating_sql(invite.expires_ms)])?;
    Ok(())
}

fn find_account(conn: &Connection, name_key: &str) -> OpResult<Option<Account>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, mechanism, salt, iterations, stored_key, server_key
         FROM accounts WHERE name_key = ?1",
    )?;
    Ok(stmt.query_row([name_key], account_from_row).optional()?)
}

fn delete_account(conn: &Connection, user: UserId) -> OpResult<()> {
    let Some(id) = exact_sql(user.0) else {
        return Err(StoreError::NoSuchUser.into());
    };
    if !account_exists(conn, user)? {
        return Err(StoreError::NoSuchUser.into());
    }
    conn.prepare_cached("DELETE FROM messages WHERE recipient = ?1")?
        .execute([id])?;
    // Its spam folder; what it sent to others' folders stays, as messages do.
    conn.prepare_cached("DELETE FROM held_messages WHERE recipient = ?1")?
        .execute([id])?;
    conn.prepare_cached("DELETE FROM sent_ids WHERE sender = ?1")?
        .execute([id])?;
    conn.prepare_cached("DELETE FROM resume_tokens WHERE user = ?1")?
        .execute([id])?;
    conn.prepare_cached("DELETE FROM contacts WHERE owner = ?1")?
        .execute([id])?;
    conn.prepare_cached("DELETE FROM contacts WHERE contact = ?1")?
        .execute([id])?;
    super::relations::forget_account(conn, id)?;
    conn.prepare_cached("DELETE FROM accounts WHERE id = ?1")?
        .execute([id])?;
    Ok(())
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

fn list_accounts(conn: &Connection, pattern: &NamePattern, after: &str, limit: u32) -> OpResult<Vec<AccountSummary>> {
    // The literal prefix turns the GLOB into an index range scan; the GLOB
    // itself (same syntax and meaning as `NamePattern`) filters within it.
    // The scan starts at whichever is later, `after` or the prefix: a single
    // lower bound, so that SQLite cannot pick the looser one for the index.
    let prefix = pattern.literal_prefix();
    let glob = pattern.as_str();
    let accounts = match prefix_upper_bound(prefix) {
        None => {
            let mut stmt = conn.prepare_cached(LIST_AFTER)?;
            let rows = stmt.query_map(params![after, glob, limit], summary_from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        }
        Some(upper) => {
            let (sql, lower) = if after >= prefix {
                (LIST_AFTER_BELOW, after)
            } else {
                (LIST_FROM_BELOW, prefix)
            };
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map(params![lower, upper, glob, limit], summary_from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        }
    };
    Ok(accounts)
}

/// Listing without a literal prefix: everything after `?1`.
const LIST_AFTER: &str = "SELECT id, name, name_key FROM accounts
     WHERE name_key > ?1 AND name_key GLOB ?2
     ORDER BY name_key LIMIT ?3";
/// Listing within a prefix's range `[.., ?2)`, after a key `?1` at or past
/// the prefix.
const LIST_AFTER_BELOW: &str = "SELECT id, name, name_key FROM accounts
     WHERE name_key > ?1 AND name_key < ?2 AND name_key GLOB ?3
     ORDER BY name_key LIMIT ?4";
/// Listing within a prefix's range `[?1, ?2)`, from its start.
const LIST_FROM_BELOW: &str = "SELECT id, name, name_key FROM accounts
     WHERE name_key >= ?1 AND name_key < ?2 AND name_key GLOB ?3
     ORDER BY name_key LIMIT ?4";

/// Reads a row of `id, name, name_key`.
pub(super) fn summary_from_row(row: &Row<'_>) -> rusqlite::Result<AccountSummary> {
    Ok(AccountSummary {
        id: UserId(row.get(0)?),
        name: row.get(1)?,
        name_key: row.get(2)?,
    })
}

/// What the current transaction's appends keep in the writer instead of
/// writing at once. A run of appends to a few mailboxes — the common batch —
/// then reads and updates each account row once instead of once per message,
/// and reads the message id counter once per transaction.
///
/// The writer writes it back before any other kind of operation runs and
/// before COMMIT, so every other operation and every committed state see
/// exact values; the mailboxes are forgotten then, so an account deleted or
/// created by a later operation is looked up afresh. A failed batch drops it
/// with itself. Nothing outlives the transaction, which holds SQLite's write
/// lock: no other connection (another worker during a reload) can change
/// what it caches.
#[derive(Debug, Default)]
pub(super) struct PendingAppends {
    /// The current run's recipients, by name key.
    mailboxes: HashMap<String, PendingMailbox>,
    /// The last message id handed out in this transaction, once read.
    last_id: Option<u64>,
    /// Whether `counters.message_id` is behind `last_id`.
    id_unwritten: bool,
}

/// A recipient of the current run of appends.
#[derive(Debug, Clone, Copy)]
struct PendingMailbox {
    /// Its account id.
    id: u64,
    /// The last seq assigned, stored or not.
    last_seq: u64,
    /// Messages appended and not yet counted in the account row.
    appended: u64,
    /// Bytes of their bodies.
    appended_bytes: u64,
    /// Messages in the mailbox, those appended in this run included: what
    /// the quota is checked against.
    stored_messages: u64,
    /// Bytes of their bodies.
    stored_bytes: u64,
    /// Whether the recipient blocks any account, so that only then does an
    /// append look for a block of its sender (one lookup per recipient
    /// per run instead of one per message).
    blocks_anyone: bool,
}

impl PendingAppends {
    /// Writes every pending count back to its row.
    pub(super) fn write_back(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if !self.mailboxes.is_empty() {
            let mut update = conn.prepare_cached(
                "UPDATE accounts SET last_seq = ?2, unread = unread + ?3,
                     stored_messages = stored_messages + ?3, stored_bytes = stored_bytes + ?4
                 WHERE id = ?1",
            )?;
            for mailbox in self.mailboxes.values().filter(|mailbox| mailbox.appended > 0) {
                update.execute(params![
                    mailbox.id,
                    mailbox.last_seq,
                    mailbox.appended,
                    saturating_sql(mailbox.appended_bytes)
                ])?;
            }
            self.mailboxes.clear();
        }
        if self.id_unwritten
            && let Some(last_id) = self.last_id
        {
            conn.prepare_cached("UPDATE counters SET value = ?1 WHERE name = 'message_id'")?
                .execute([last_id])?;
            self.id_unwritten = false;
        }
        Ok(())
    }

    /// The recipient's mailbox as this run sees it, or `None` if no
    /// account has the key. Read from its account row once per run.
    fn recipient(&mut self, key: &str, lookup: &mut Statement<'_>) -> rusqlite::Result<Option<PendingMailbox>> {
        if let Some(mailbox) = self.mailboxes.get(key) {
            return Ok(Some(*mailbox));
        }
        let found = lookup
            .query_row([key], |row| {
                Ok(PendingMailbox {
                    id: row.get(0)?,
                    last_seq: row.get(1)?,
                    appended: 0,
                    appended_bytes: 0,
                    stored_messages: row.get(2)?,
                    stored_bytes: row.get(3)?,
                    blocks_anyone: row.get(4)?,
                })
            })
            .optional()?;
        if let Some(mailbox) = found {
            self.mailboxes.insert(key.to_owned(), mailbox);
        }
        Ok(found)
    }

    /// The id the next message gets (not yet taken).
    fn next_id(&mut self, counter: &mut Statement<'_>) -> OpResult<u64> {
        let last = match self.last_id {
            Some(last) => last,
            None => {
                let last = counter.query_row([], |row| row.get::<_, u64>(0))?;
                *self.last_id.insert(last)
            }
        };
        Ok(last
            .checked_add(1)
            .ok_or_else(|| StoreError::Backend("message id overflow".into()))?)
    }

    /// Takes `id` and `seq` for a message to the recipient `key`, which
    /// [`PendingAppends::recipient`] found.
    fn appended(&mut self, key: &str, seq: u64, id: u64, bytes: u64) {
        if let Some(mailbox) = self.mailboxes.get_mut(key) {
            mailbox.last_seq = seq;
            mailbox.appended += 1;
            mailbox.appended_bytes = mailbox.appended_bytes.saturating_add(bytes);
            mailbox.stored_messages = mailbox.stored_messages.saturating_add(1);
            mailbox.stored_bytes = mailbox.stored_bytes.saturating_add(bytes);
        }
        self.last_id = Some(id);
        self.id_unwritten = true;
    }
}

/// The statements of an append, prepared once for the writer's lifetime.
/// Through `prepare_cached` each append hashed the text of four statements
/// to find them and put each back in the cache's LRU list afterwards: 14% of
/// an append's time and 8% of the writer's, in a relay profile
/// (docs/BENCHMARKS.md). SQLite re-prepares a statement by itself if the
/// schema changes under it.
pub(super) struct AppendStatements<'c> {
    /// The idempotency record of (sender, client_msg_id).
    sent: Statement<'c>,
    /// The recipient's id, stored `last_seq`, quota counts and whether it
    /// blocks anyone.
    recipient: Statement<'c>,
    /// Whether the recipient blocks the sender.
    blocked: Statement<'c>,
    /// The last message id handed out.
    last_id: Statement<'c>,
    /// The idempotency record written, unless there is one.
    record: Statement<'c>,
    /// The message row.
    insert: Statement<'c>,
}

impl<'c> AppendStatements<'c> {
    pub(super) fn prepare(conn: &'c Connection) -> rusqlite::Result<AppendStatements<'c>> {
        Ok(AppendStatements {
            sent: conn.prepare(SENT_RECORD)?,
            recipient: conn.prepare(
                "SELECT id, last_seq, stored_messages, stored_bytes,
                        EXISTS (SELECT 1 FROM blocks WHERE blocker = accounts.id)
                 FROM accounts WHERE name_key = ?1",
            )?,
            blocked: conn.prepare("SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2")?,
            last_id: conn.prepare("SELECT value FROM counters WHERE name = 'message_id'")?,
            record: conn.prepare(
                "INSERT INTO sent_ids (sender, client_msg_id, message_id, recipient, seq, timestamp_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (sender, client_msg_id) DO NOTHING",
            )?,
            insert: conn.prepare(
                "INSERT INTO messages (id, recipient, seq, sender, sender_name, client_msg_id, body, timestamp_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?,
        })
    }
}

/// Stores a message: its idempotency record first, whose conflict is the
/// duplicate check (one b-tree descent instead of a lookup and an insert),
/// then the row, with the id and seq [`PendingAppends`] hands out.
fn append(
    conn: &Connection,
    new: NewMessage,
    pending: &mut PendingAppends,
    statements: &mut AppendStatements<'_>,
) -> OpResult<Appended> {
    let sender = clamp(new.sender.0);
    let timestamp_ms = clamp(new.timestamp_ms);
    let found = pending.recipient(&new.recipient_key, &mut statements.recipient)?;
    // A blocked sender is answered as if the account did not exist.
    let found = match found {
        Some(mailbox) if mailbox.blocks_anyone && statements.blocked.exists(params![mailbox.id, sender])? => None,
        found => found,
    };
    let Some(mailbox) = found else {
        // A retry gets the original answer even if the recipient is gone.
        return match original(conn, new, &mut statements.sent)? {
            Some(appended) => Ok(appended),
            None => Err(StoreError::NoSuchUser.into()),
        };
    };
    let (recipient, last_seq) = (mailbox.id, mailbox.last_seq);
    let bytes = body_bytes(&new.body);
    if !new.quota.admits(mailbox.stored_messages, mailbox.stored_bytes, bytes) {
        // A retry of a stored message still gets the original answer; only
        // a full mailbox pays for this lookup.
        return match original(conn, new, &mut statements.sent)? {
            Some(appended) => Ok(appended),
            None => Err(StoreError::MailboxFull.into()),
        };
    }
    let seq = last_seq
        .checked_add(1)
        .ok_or_else(|| StoreError::Backend("mailbox seq overflow".into()))?;
    let message_id = pending.next_id(&mut statements.last_id)?;
    let recorded = statements.record.execute(params![
        sender,
        new.client_msg_id,
        message_id,
        recipient,
        seq,
        timestamp_ms
    ])?;
    if recorded == 0 {
        return original(conn, new, &mut statements.sent)?
            .ok_or_else(|| StoreError::Backend("idempotency record vanished".into()).into());
    }
    statements.insert.execute(params![
        message_id,
        recipient,
        seq,
        sender,
        new.sender_name,
        new.client_msg_id,
        new.body,
        timestamp_ms
    ])?;
    pending.appended(&new.recipient_key, seq, message_id, bytes);
    Ok(Appended {
        message: Arc::new(unacked(new, message_id, recipient, seq, timestamp_ms)),
        duplicate: false,
    })
}

/// `new` as stored with these id, recipient, seq and timestamp, not acked.
fn unacked(new: NewMessage, id: u64, recipient: u64, seq: u64, timestamp_ms: u64) -> StoredMessage {
    StoredMessage {
        id: MessageId(id),
        recipient: UserId(recipient),
        seq: Seq(seq),
        sender: UserId(clamp(new.sender.0)),
        sender_name: new.sender_name,
        client_msg_id: new.client_msg_id,
        body: new.body,
        timestamp_ms,
        acked: false,
    }
}

/// The idempotency record of (sender, client_msg_id).
const SENT_RECORD: &str = "SELECT message_id, recipient, seq, timestamp_ms FROM sent_ids
     WHERE sender = ?1 AND client_msg_id = ?2";

/// [`original`] for a hold ([`NewHeld::send`](parley_core::store::NewHeld)),
/// which has no append statements.
pub(super) fn original_of_send(conn: &Connection, new: NewMessage) -> OpResult<Option<Appended>> {
    let mut sent = conn.prepare_cached(SENT_RECORD)?;
    original(conn, new, &mut sent)
}

/// The answer to a retried append, if the sender's client_msg_id is
/// recorded: the message as stored, or rebuilt from the record when the
/// recipient deleted it.
fn original(conn: &Connection, new: NewMessage, sent: &mut Statement<'_>) -> OpResult<Option<Appended>> {
    let sender = clamp(new.sender.0);
    let record = sent
        .query_row(params![sender, new.client_msg_id], |row| {
            Ok((
                row.get::<_, u64>(0)?,
                row.get::<_, u64>(1)?,
                row.get::<_, u64>(2)?,
                row.get::<_, u64>(3)?,
            ))
        })
        .optional()?;
    let Some((message_id, recipient, seq, original_ms)) = record else {
        return Ok(None);
    };
    let stored = match mailbox_row(conn, recipient)? {
        Some(mailbox) => {
            let mut stmt = conn.prepare_cached(concat!(select_message!(), "WHERE id = ?2"))?;
            stmt.query_row(params![mailbox.acked_through, message_id], message_from_row)
                .optional()?
        }
        None => None,
    };
    let message = match stored {
        Some(message) => message,
        None => unacked(new, message_id, recipient, seq, original_ms),
    };
    Ok(Some(Appended {
        message: Arc::new(message),
        duplicate: true,
    }))
}

/// A mailbox's counters, from its account row.
#[derive(Debug)]
struct MailboxRow {
    last_seq: u64,
    acked_through: u64,
    unread: u64,
}

/// The counters of the mailbox of account `id`, or `None` if there is no
/// such account.
fn mailbox_row(conn: &Connection, id: u64) -> OpResult<Option<MailboxRow>> {
    let Some(id) = exact_sql(id) else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached("SELECT last_seq, acked_through, unread FROM accounts WHERE id = ?1")?;
    let row = stmt
        .query_row([id], |row| {
            Ok(MailboxRow {
                last_seq: row.get(0)?,
                acked_through: row.get(1)?,
                unread: row.get(2)?,
            })
        })
        .optional()?;
    Ok(row)
}

/// Reads a page of a mailbox; rows are stepped one at a time, so those
/// past `limit` or the byte budget are never loaded.
fn fetch(
    conn: &Connection,
    user: UserId,
    after: Seq,
    limit: u32,
    include_acked: bool,
    max_bytes: usize,
) -> OpResult<FetchPage> {
    let Some(mailbox) = mailbox_row(conn, user.0)? else {
        return Ok(FetchPage::default());
    };
    let watermark = mailbox.acked_through;
    let (sql, after) = if include_acked {
        (
            concat!(
                select_message!(),
                "WHERE recipient = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4"
            ),
            after.0,
        )
    } else {
        // Nothing at or below the watermark is unread.
        (
            concat!(
                select_message!(),
                "WHERE recipient = ?2 AND seq > ?3 AND acked = 0 ORDER BY seq LIMIT ?4"
            ),
            after.0.max(watermark),
        )
    };
    let mut stmt = conn.prepare_cached(sql)?;
    // One row past the limit tells whether more follow.
    let rows = stmt.query_map(
        params![watermark, user.0, saturating_sql(after), u64::from(limit) + 1],
        message_from_row,
    )?;
    let mut page = FetchPage::default();
    let mut spent = 0usize;
    for row in rows {
        let message = row?;
        let cost = message_cost(&message);
        if page.messages.len() >= limit as usize
            || (!page.messages.is_empty() && spent.saturating_add(cost) > max_bytes)
        {
            page.more = true;
            break;
        }
        spent = spent.saturating_add(cost);
        page.messages.push(message);
    }
    Ok(page)
}

/// Acks up to a seq by moving the mailbox's watermark, counting the unread
/// messages it passes (no row is rewritten), and single seqs above it by
/// their `acked` column.
fn ack(conn: &Connection, user: UserId, range: AckRange) -> OpResult<(u64, MailboxState)> {
    let Some(mut mailbox) = mailbox_row(conn, user.0)? else {
        return Err(StoreError::NoSuchUser.into());
    };
    let recipient = user.0;
    let mut newly = 0u64;
    // Never past the last seq: messages stored later are not acked.
    let up_to = range.up_to.0.min(mailbox.last_seq);
    let watermark = mailbox.acked_through;
    if up_to > watermark {
        let mut passed = conn.prepare_cached(
            "SELECT count(*) FROM messages WHERE recipient = ?1 AND seq > ?2 AND seq <= ?3 AND acked = 0",
        )?;
        newly += passed.query_row(params![recipient, watermark, up_to], |row| row.get::<_, u64>(0))?;
        mailbox.acked_through = up_to;
    }
    let mut one =
        conn.prepare_cached("UPDATE messages SET acked = 1 WHERE recipient = ?1 AND seq = ?2 AND acked = 0")?;
    // Seqs at or below the watermark are acked already; seqs SQLite cannot
    // hold cannot exist.
    for seq in range.seqs.iter().filter(|seq| seq.0 > mailbox.acked_through) {
        if let Some(seq) = exact_sql(seq.0) {
            newly += u64::try_from(one.execute(params![recipient, seq])?).unwrap_or(u64::MAX);
        }
    }
    if mailbox.acked_through != watermark || newly > 0 {
        mailbox.unread = mailbox.unread.saturating_sub(newly);
        conn.prepare_cached("UPDATE accounts SET acked_through = ?2, unread = ?3 WHERE id = ?1")?
            .execute(params![recipient, mailbox.acked_through, mailbox.unread])?;
    }
    Ok((
        newly,
        MailboxState {
            last_seq: Seq(mailbox.last_seq),
            unread: mailbox.unread,
        },
    ))
}

fn delete_messages(conn: &Connection, user: UserId, ids: Vec<MessageId>) -> OpResult<Vec<MessageId>> {
    let Some(mailbox) = mailbox_row(conn, user.0)? else {
        return Ok(Vec::new());
    };
    let recipient = user.0;
    let mut stmt = conn.prepare_cached(
        "DELETE FROM messages WHERE id = ?1 AND recipient = ?2
         RETURNING seq, acked, length(CAST(body AS BLOB))",
    )?;
    let mut deleted = Vec::new();
    let mut unread_deleted = 0u64;
    let mut bytes_deleted = 0u64;
    for id in ids {
        // An id SQLite cannot hold cannot exist; a repeated id finds its row
        // already gone, so each id is reported once.
        let Some(sql_id) = exact_sql(id.0) else {
            continue;
        };
        let row = stmt
            .query_row(params![sql_id, recipient], |row| {
                Ok((row.get::<_, u64>(0)?, row.get::<_, bool>(1)?, row.get::<_, u64>(2)?))
            })
            .optional()?;
        if let Some((seq, acked, bytes)) = row {
            if !acked && seq > mailbox.acked_through {
                unread_deleted += 1;
            }
            bytes_deleted = bytes_deleted.saturating_add(bytes);
            deleted.push(id);
        }
    }
    if !deleted.is_empty() {
        let count = u64::try_from(deleted.len()).unwrap_or(u64::MAX);
        conn.prepare_cached(
            "UPDATE accounts SET unread = ?2,
                 stored_messages = max(stored_messages - ?3, 0), stored_bytes = max(stored_bytes - ?4, 0)
             WHERE id = ?1",
        )?
        .execute(params![
            recipient,
            mailbox.unread.saturating_sub(unread_deleted),
            saturating_sql(count),
            saturating_sql(bytes_deleted)
        ])?;
    }
    Ok(deleted)
}

fn mailbox_state(conn: &Connection, user: UserId) -> OpResult<MailboxState> {
    let Some(mailbox) = mailbox_row(conn, user.0)? else {
        return Err(StoreError::NoSuchUser.into());
    };
    Ok(MailboxState {
        last_seq: Seq(mailbox.last_seq),
        unread: mailbox.unread,
    })
}

/// The account with this name key, as a listing row.
pub(super) fn find_summary(conn: &Connection, name_key: &str) -> OpResult<Option<AccountSummary>> {
    let mut stmt = conn.prepare_cached("SELECT id, name, name_key FROM accounts WHERE name_key = ?1")?;
    Ok(stmt.query_row([name_key], summary_from_row).optional()?)
}

fn add_contact(conn: &Connection, user: UserId, contact_key: &str, max: u32) -> OpResult<AccountSummary> {
    let Some(owner) = exact_sql(user.0) else {
        return Err(StoreError::NoSuchUser.into());
    };
    if !account_exists(conn, user)? {
        return Err(StoreError::NoSuchUser.into());
    }
    let Some(contact) = find_summary(conn, contact_key)? else {
        return Err(StoreError::NoSuchUser.into());
    };
    let mut present = conn.prepare_cached("SELECT 1 FROM contacts WHERE owner = ?1 AND contact = ?2")?;
    // Adding again is not an error, and is allowed at the limit: it adds nothing.
    if present.exists(params![owner, contact.id.0])? {
        return Ok(contact);
    }
    let mut count = conn.prepare_cached("SELECT count(*) FROM contacts WHERE owner = ?1")?;
    let held: u64 = count.query_row([owner], |row| row.get(0))?;
    if held >= u64::from(max) {
        return Err(StoreError::LimitReached(contact_limit_message(max)).into());
    }
    conn.prepare_cached("INSERT INTO contacts (owner, contact) VALUES (?1, ?2)")?
        .execute(params![owner, contact.id.0])?;
    Ok(contact)
}

fn remove_contact(conn: &Connection, user: UserId, contact_key: &str) -> OpResult<bool> {
    let Some(owner) = exact_sql(user.0) else {
        return Ok(false);
    };
    let mut stmt = conn.prepare_cached(
        "DELETE FROM contacts
         WHERE owner = ?1 AND contact = (SELECT id FROM accounts WHERE name_key = ?2)",
    )?;
    let removed = stmt.execute(params![owner, contact_key])? > 0;
    if removed {
        // The subscription to its presence goes with the contact.
        conn.prepare_cached(
            "DELETE FROM presence_subscriptions
             WHERE watcher = ?1 AND target = (SELECT id FROM accounts WHERE name_key = ?2)",
        )?
        .execute(params![owner, contact_key])?;
    }
    Ok(removed)
}

fn list_contacts(conn: &Connection, user: UserId) -> OpResult<Vec<AccountSummary>> {
    let Some(owner) = exact_sql(user.0) else {
        return Ok(Vec::new());
    };
    let mut stmt = conn.prepare_cached(
        "SELECT accounts.id, accounts.name, accounts.name_key
         FROM contacts JOIN accounts ON accounts.id = contacts.contact
         WHERE contacts.owner = ?1
         ORDER BY accounts.name_key",
    )?;
    let contacts = stmt
        .query_map([owner], summary_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(contacts)
}

fn create_resume_token(conn: &Connection, token: NewResumeToken) -> OpResult<()> {
    let Some(user) = exact_sql(token.user.0) else {
        return Err(StoreError::NoSuchUser.into());
    };
    if !account_exists(conn, token.user)? {
        return Err(StoreError::NoSuchUser.into());
    }
    let hash = &token.hash[..];
    let now = clock::now_ms();
    // A token with the same hash is replaced, whoever held it.
    conn.prepare_cached("DELETE FROM resume_tokens WHERE hash = ?1")?
        .execute([hash])?;
    conn.prepare_cached("DELETE FROM resume_tokens WHERE user = ?1 AND expires_ms <= ?2")?
        .execute(params![user, now])?;
    // Make room for the new token, which is always kept: drop the tokens
    // expiring first (in insertion order among equals).
    let mut count = conn.prepare_cached("SELECT count(*) FROM resume_tokens WHERE user = ?1")?;
    let held: u64 = count.query_row([user], |row| row.get(0))?;
    let excess = held.saturating_sub(u64::from(other_tokens_kept(token.max_per_user)));
    if excess > 0 {
        conn.prepare_cached(
            "DELETE FROM resume_tokens WHERE hash IN (
                 SELECT hash FROM resume_tokens WHERE user = ?1
                 ORDER BY expires_ms, created_seq LIMIT ?2)",
        )?
        .execute(params![user, excess])?;
    }
    conn.prepare_cached(
        "INSERT INTO resume_tokens (hash, user, expires_ms, created_seq)
         SELECT ?1, ?2, ?3, coalesce(max(created_seq), 0) + 1 FROM resume_tokens WHERE user = ?2",
    )?
    .execute(params![hash, user, clamp(token.expires_ms)])?;
    Ok(())
}

fn resume(conn: &Connection, hash: [u8; 32], now_ms: u64) -> OpResult<Option<Account>> {
    let hash = &hash[..];
    let mut token = conn.prepare_cached("SELECT user, expires_ms FROM resume_tokens WHERE hash = ?1")?;
    let Some((user, expires_ms)) = token
        .query_row([hash], |row| Ok((row.get::<_, u64>(0)?, row.get::<_, u64>(1)?)))
        .optional()?
    else {
        return Ok(None);
    };
    if expires_ms <= now_ms {
        conn.prepare_cached("DELETE FROM resume_tokens WHERE hash = ?1")?
            .execute([hash])?;
        return Ok(None);
    }
    let mut account = conn.prepare_cached(
        "SELECT id, name, mechanism, salt, iterations, stored_key, server_key
         FROM accounts WHERE id = ?1",
    )?;
    Ok(account.query_row([user], account_from_row).optional()?)
}

fn revoke_resume_token(conn: &Connection, hash: [u8; 32]) -> OpResult<()> {
    conn.prepare_cached("DELETE FROM resume_tokens WHERE hash = ?1")?
        .execute([&hash[..]])?;
    Ok(())
}

fn revoke_all_resume_tokens(conn: &Connection, user: UserId) -> OpResult<u64> {
    let Some(id) = exact_sql(user.0) else { return Ok(0) };
    let removed = conn
        .prepare_cached("DELETE FROM resume_tokens WHERE user = ?1")?
        .execute([id])?;
    Ok(removed as u64)
}

fn set_credentials(conn: &Connection, user: UserId, credentials: &StoredCredentials) -> OpResult<()> {
    let Some(id) = exact_sql(user.0) else {
        return Err(StoreError::NoSuchUser.into());
    };
    let changed = conn
        .prepare_cached(
            "UPDATE accounts SET mechanism = ?2, salt = ?3, iterations = ?4, stored_key = ?5, server_key = ?6
             WHERE id = ?1",
        )?
        .execute(params![
            id,
            credentials.mechanism.name(),
            credentials.salt,
            credentials.iterations,
            credentials.stored_key,
            credentials.server_key
        ])?;
    if changed == 0 {
        return Err(StoreError::NoSuchUser.into());
    }
    conn.prepare_cached("DELETE FROM resume_tokens WHERE user = ?1")?
        .execute([id])?;
    Ok(())
}
