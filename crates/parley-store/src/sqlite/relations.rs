//! Presence subscriptions and blocks in SQLite: the operations behind
//! `Store::request_presence` and its siblings, run by the writer thread
//! inside its transaction like those of `ops.rs`.
//!
//! `presence_subscriptions (watcher, target, approved)`: a row means the
//! watcher asked to see the target's presence; `approved = 1` once the
//! target said yes. `blocks (blocker, blocked)`. Every rule the stores
//! share is in `crate::rules`.

use parley_core::presence::{BlockOutcome, Contact, PresenceChange, PresenceRequested, Subscription};
use parley_core::store::AccountSummary;
use parley_core::{StoreError, UserId};
use rusqlite::{Connection, OptionalExtension, params};

use super::ops::{Op, OpResult, Outcome, Reply, account_exists, answer, find_summary, refuse, summary_from_row};
use crate::convert::exact_sql;
use crate::rules::{block_limit_message, contact_limit_message};

/// The caller's id as SQLite holds it, if the account exists.
fn existing(conn: &Connection, user: UserId) -> OpResult<i64> {
    match exact_sql(user.0) {
        Some(id) if account_exists(conn, user)? => Ok(id),
        _ => Err(StoreError::NoSuchUser.into()),
    }
}

/// The other account of a relation, by name key.
fn other(conn: &Connection, key: &str) -> OpResult<AccountSummary> {
    find_summary(conn, key)?.ok_or_else(|| StoreError::NoSuchUser.into())
}

/// `watcher`'s subscription to `target`'s presence.
fn subscription(conn: &Connection, watcher: u64, target: u64) -> OpResult<Subscription> {
    let mut stmt =
        conn.prepare_cached("SELECT approved FROM presence_subscriptions WHERE watcher = ?1 AND target = ?2")?;
    let approved: Option<bool> = stmt.query_row(params![watcher, target], |row| row.get(0)).optional()?;
    Ok(match approved {
        None => Subscription::None,
        Some(false) => Subscription::Pending,
        Some(true) => Subscription::Approved,
    })
}

fn set_subscription(conn: &Connection, watcher: u64, target: u64, to: Subscription) -> OpResult<()> {
    match to {
        Subscription::None => {
            conn.prepare_cached("DELETE FROM presence_subscriptions WHERE watcher = ?1 AND target = ?2")?
                .execute(params![watcher, target])?;
        }
        Subscription::Pending | Subscription::Approved => {
            conn.prepare_cached(
                "INSERT INTO presence_subscriptions (watcher, target, approved) VALUES (?1, ?2, ?3)
                 ON CONFLICT (watcher, target) DO UPDATE SET approved = excluded.approved",
            )?
            .execute(params![watcher, target, to == Subscription::Approved])?;
        }
    }
    Ok(())
}

fn is_blocking(conn: &Connection, blocker: u64, blocked: u64) -> OpResult<bool> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2")?;
    Ok(stmt.exists(params![blocker, blocked])?)
}

pub(super) fn request_presence(conn: &Connection, user: UserId, key: &str, max: u32) -> OpResult<PresenceRequested> {
    let owner = existing(conn, user)?;
    let target = other(conn, key)?;
    let me = user.0;
    let them = target.id.0;
    if is_blocking(conn, me, them)? {
        return Ok(PresenceRequested {
            target,
            subscription: Subscription::None,
            new_request: false,
            blocked_by_requester: true,
        });
    }
    let listed = conn
        .prepare_cached("SELECT 1 FROM contacts WHERE owner = ?1 AND contact = ?2")?
        .exists(params![owner, them])?;
    if !listed {
        let held: u64 = conn
            .prepare_cached("SELECT count(*) FROM contacts WHERE owner = ?1")?
            .query_row([owner], |row| row.get(0))?;
        if held >= u64::from(max) {
            return Err(StoreError::LimitReached(contact_limit_message(max)).into());
        }
        conn.prepare_cached("INSERT INTO contacts (owner, contact) VALUES (?1, ?2)")?
            .execute(params![owner, them])?;
    }
    let before = subscription(conn, me, them)?;
    let after = match before {
        // One always sees oneself.
        _ if me == them => Subscription::Approved,
        Subscription::None => Subscription::Pending,
        kept => kept,
    };
    if after != before {
        set_subscription(conn, me, them, after)?;
    }
    let new_request = before == Subscription::None && after == Subscription::Pending && !is_blocking(conn, them, me)?;
    Ok(PresenceRequested {
        target,
        subscription: after,
        new_request,
        blocked_by_requester: false,
    })
}

pub(super) fn answer_presence(
    conn: &Connection,
    user: UserId,
    requester_key: &str,
    approve: bool,
) -> OpResult<PresenceChange> {
    existing(conn, user)?;
    let requester = other(conn, requester_key)?;
    let (watcher, me) = (requester.id.0, user.0);
    let stored = subscription(conn, watcher, me)?;
    // A blocked account's request is kept from the blocker.
    let before = if stored == Subscription::Pending && is_blocking(conn, me, watcher)? {
        Subscription::None
    } else {
        stored
    };
    let after = match (approve, before) {
        (true, Subscription::Pending) => Subscription::Approved,
        (true, kept) => kept,
        (false, _) => Subscription::None,
    };
    // A hidden request stays hidden: only a visible change is written.
    if after != before {
        set_subscription(conn, watcher, me, after)?;
    }
    Ok(PresenceChange {
        other: requester,
        before,
        after,
    })
}

pub(super) fn cancel_presence(conn: &Connection, user: UserId, target_key: &str) -> OpResult<PresenceChange> {
    existing(conn, user)?;
    let target = other(conn, target_key)?;
    let before = subscription(conn, user.0, target.id.0)?;
    if before != Subscription::None && user != target.id {
        set_subscription(conn, user.0, target.id.0, Subscription::None)?;
    }
    let after = if user == target.id { before } else { Subscription::None };
    Ok(PresenceChange {
        other: target,
        before,
        after,
    })
}

pub(super) fn presence_requests(conn: &Connection, user: UserId, limit: u32) -> OpResult<Vec<AccountSummary>> {
    let Some(me) = exact_sql(user.0) else {
        return Ok(Vec::new());
    };
    let mut stmt = conn.prepare_cached(
        "SELECT accounts.id, accounts.name, accounts.name_key
         FROM presence_subscriptions JOIN accounts ON accounts.id = presence_subscriptions.watcher
         WHERE presence_subscriptions.target = ?1 AND presence_subscriptions.approved = 0
           AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = accounts.id)
         ORDER BY accounts.name_key LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![me, limit], summary_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

pub(super) fn contacts_with_presence(conn: &Connection, user: UserId) -> OpResult<Vec<Contact>> {
    let Some(owner) = exact_sql(user.0) else {
        return Ok(Vec::new());
    };
    let mut stmt = conn.prepare_cached(
        "SELECT accounts.id, accounts.name, accounts.name_key, presence_subscriptions.approved
         FROM contacts JOIN accounts ON accounts.id = contacts.contact
         LEFT JOIN presence_subscriptions
           ON presence_subscriptions.watcher = contacts.owner AND presence_subscriptions.target = contacts.contact
         WHERE contacts.owner = ?1
         ORDER BY accounts.name_key",
    )?;
    let rows = stmt
        .query_map([owner], |row| {
            let approved: Option<bool> = row.get(3)?;
            Ok(Contact {
                account: summary_from_row(row)?,
                subscription: match approved {
                    None => Subscription::None,
                    Some(false) => Subscription::Pending,
                    Some(true) => Subscription::Approved,
                },
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

pub(super) fn block(conn: &Connection, user: UserId, key: &str, max: u32) -> OpResult<BlockOutcome> {
    let me = existing(conn, user)?;
    let target = other(conn, key)?;
    let them = target.id.0;
    let already = is_blocking(conn, user.0, them)?;
    if !already {
        let held: u64 = conn
            .prepare_cached(
                "SELECT count(*) FROM blocks JOIN accounts ON accounts.id = blocks.blocked WHERE blocks.blocker = ?1",
            )?
            .query_row([me], |row| row.get(0))?;
        if held >= u64::from(max) {
            return Err(StoreError::LimitReached(block_limit_message(max)).into());
        }
        conn.prepare_cached("INSERT INTO blocks (blocker, blocked) VALUES (?1, ?2)")?
            .execute(params![me, them])?;
    }
    // No presence either way.
    conn.prepare_cached(
        "DELETE FROM presence_subscriptions WHERE (watcher = ?1 AND target = ?2) OR (watcher = ?2 AND target = ?1)",
    )?
    .execute(params![me, them])?;
    Ok(BlockOutcome {
        target,
        added: !already,
    })
}

pub(super) fn unblock(conn: &Connection, user: UserId, key: &str) -> OpResult<bool> {
    let Some(me) = exact_sql(user.0) else {
        return Ok(false);
    };
    let Some(target) = find_summary(conn, key)? else {
        return Ok(false);
    };
    let removed = conn
        .prepare_cached("DELETE FROM blocks WHERE blocker = ?1 AND blocked = ?2")?
        .execute(params![me, target.id.0])?
        > 0;
    if removed {
        // What the blocked account asked meanwhile was never shown: it goes.
        conn.prepare_cached("DELETE FROM presence_subscriptions WHERE watcher = ?2 AND target = ?1")?
            .execute(params![me, target.id.0])?;
    }
    Ok(removed)
}

pub(super) fn list_blocked(conn: &Connection, user: UserId) -> OpResult<Vec<AccountSummary>> {
    let Some(me) = exact_sql(user.0) else {
        return Ok(Vec::new());
    };
    let mut stmt = conn.prepare_cached(
        "SELECT accounts.id, accounts.name, accounts.name_key
         FROM blocks JOIN accounts ON accounts.id = blocks.blocked
         WHERE blocks.blocker = ?1 ORDER BY accounts.name_key",
    )?;
    let rows = stmt
        .query_map([me], summary_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Whether `user` refuses the sender outside accounts `sender`, after
/// setting it: a row in `blocks` whose `blocked` is no account.
pub(super) fn refuse_sender(conn: &Connection, user: UserId, sender: UserId, refuse: Option<bool>) -> OpResult<bool> {
    let me = match refuse {
        Some(_) => existing(conn, user)?,
        None => match exact_sql(user.0) {
            Some(me) => me,
            None => return Ok(false),
        },
    };
    match refuse {
        Some(true) => {
            conn.prepare_cached("INSERT INTO blocks (blocker, blocked) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?
                .execute(params![me, sender.0])?;
            Ok(true)
        }
        Some(false) => {
            conn.prepare_cached("DELETE FROM blocks WHERE blocker = ?1 AND blocked = ?2")?
                .execute(params![me, sender.0])?;
            Ok(false)
        }
        None => is_blocking(conn, user.0, sender.0),
    }
}

/// Deletes every subscription and block the account takes part in.
pub(super) fn forget_account(conn: &Connection, id: i64) -> OpResult<()> {
    conn.prepare_cached("DELETE FROM presence_subscriptions WHERE watcher = ?1 OR target = ?1")?
        .execute([id])?;
    conn.prepare_cached("DELETE FROM blocks WHERE blocker = ?1 OR blocked = ?1")?
        .execute([id])?;
    Ok(())
}

/// A relation operation queued for the writer: its arguments, the function
/// that runs it, and where its answer goes. One generic [`Op`] variant
/// carries them all.
///
/// [`Op`]: super::ops::Op
pub(super) trait RelationCall: Send {
    /// Runs the operation in the current transaction.
    fn execute(self: Box<Self>, conn: &Connection) -> Box<dyn Outcome>;
    /// Answers `error` without running the operation.
    fn fail(self: Box<Self>, error: StoreError);
    /// Whether the operation may write, and so needs a savepoint.
    fn writes(&self) -> bool;
}

impl std::fmt::Debug for dyn RelationCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelationCall")
    }
}

/// A [`RelationCall`] with arguments `A` answering `T`.
struct Call<A, T> {
    args: A,
    run: fn(&Connection, A) -> OpResult<T>,
    reply: Reply<T>,
    writes: bool,
}

impl<A: Send + 'static, T: Send + 'static> RelationCall for Call<A, T> {
    fn execute(self: Box<Self>, conn: &Connection) -> Box<dyn Outcome> {
        let call = *self;
        answer(call.reply, (call.run)(conn, call.args))
    }

    fn fail(self: Box<Self>, error: StoreError) {
        refuse(self.reply, error);
    }

    fn writes(&self) -> bool {
        self.writes
    }
}

/// The [`Op`] that runs `run(conn, args)` and answers on `reply`.
///
/// [`Op`]: super::ops::Op
pub(super) fn call<A: Send + 'static, T: Send + 'static>(
    args: A,
    reply: Reply<T>,
    writes: bool,
    run: fn(&Connection, A) -> OpResult<T>,
) -> Op {
    Op::Relation(Box::new(Call {
        args,
        run,
        reply,
        writes,
    }))
}
