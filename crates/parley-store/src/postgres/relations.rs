//! Presence subscriptions and blocks in PostgreSQL: the operations behind
//! `Store::request_presence` and its siblings, run by the writer inside its
//! transaction like those of `ops.rs`, with the same rules as SQLite's
//! `relations.rs` (shared ones in `crate::rules`).
//!
//! `presence_subscriptions (watcher, target, approved)`: a row means the
//! watcher asked to see the target's presence; `approved` once the target
//! said yes. `blocks (blocker, blocked)`. An operation that changes a
//! relation locks both accounts first (in id order), so that two processes
//! acting on the same pair take turns.

use parley_core::presence::{BlockOutcome, Contact, PresenceChange, PresenceRequested, Subscription};
use parley_core::store::AccountSummary;
use parley_core::{StoreError, UserId};

use super::ops::{Db, OpError, OpResult, execute, lock_account, lock_pair, query, query_one, query_opt, signed};
use super::ops::{summary_from_row, unsigned};
use crate::convert::exact_sql;
use crate::rules::{block_limit_message, contact_limit_message};

/// Locks both accounts; both must exist.
async fn pair(db: &Db, user: UserId, key: &str) -> OpResult<(i64, AccountSummary)> {
    let (me, other) = lock_pair(db, user, key).await?;
    let other = other.ok_or(OpError::Store(StoreError::NoSuchUser))?;
    Ok((me, other))
}

/// `watcher`'s subscription to `target`'s presence.
async fn subscription(db: &Db, watcher: i64, target: i64) -> OpResult<Subscription> {
    let row = query_opt(
        db,
        "SELECT approved FROM presence_subscriptions WHERE watcher = $1 AND target = $2",
        &[&watcher, &target],
    )
    .await?;
    Ok(match row {
        None => Subscription::None,
        Some(row) if row.try_get::<_, bool>(0)? => Subscription::Approved,
        Some(_) => Subscription::Pending,
    })
}

async fn set_subscription(db: &Db, watcher: i64, target: i64, to: Subscription) -> OpResult<()> {
    match to {
        Subscription::None => {
            execute(
                db,
                "DELETE FROM presence_subscriptions WHERE watcher = $1 AND target = $2",
                &[&watcher, &target],
            )
            .await?;
        }
        Subscription::Pending | Subscription::Approved => {
            execute(
                db,
                "INSERT INTO presence_subscriptions (watcher, target, approved) VALUES ($1, $2, $3)
                 ON CONFLICT (watcher, target) DO UPDATE SET approved = excluded.approved",
                &[&watcher, &target, &(to == Subscription::Approved)],
            )
            .await?;
        }
    }
    Ok(())
}

async fn is_blocking(db: &Db, blocker: i64, blocked: i64) -> OpResult<bool> {
    let row = query_opt(
        db,
        "SELECT 1 FROM blocks WHERE blocker = $1 AND blocked = $2",
        &[&blocker, &blocked],
    )
    .await?;
    Ok(row.is_some())
}

pub(super) async fn request_presence(db: &Db, user: UserId, key: &str, max: u32) -> OpResult<PresenceRequested> {
    let (me, target) = pair(db, user, key).await?;
    let them = signed(target.id.0);
    if is_blocking(db, me, them).await? {
        return Ok(PresenceRequested {
            target,
            subscription: Subscription::None,
            new_request: false,
            blocked_by_requester: true,
        });
    }
    let listed = query_opt(
        db,
        "SELECT 1 FROM contacts WHERE owner = $1 AND contact = $2",
        &[&me, &them],
    )
    .await?
    .is_some();
    if !listed {
        let held: i64 = query_one(db, "SELECT count(*) FROM contacts WHERE owner = $1", &[&me])
            .await?
            .try_get(0)?;
        if unsigned(held) >= u64::from(max) {
            return Err(StoreError::LimitReached(contact_limit_message(max)).into());
        }
        execute(
            db,
            "INSERT INTO contacts (owner, contact) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&me, &them],
        )
        .await?;
    }
    let before = subscription(db, me, them).await?;
    let after = match before {
        // One always sees oneself.
        _ if me == them => Subscription::Approved,
        Subscription::None => Subscription::Pending,
        kept => kept,
    };
    if after != before {
        set_subscription(db, me, them, after).await?;
    }
    let new_request =
        before == Subscription::None && after == Subscription::Pending && !is_blocking(db, them, me).await?;
    Ok(PresenceRequested {
        target,
        subscription: after,
        new_request,
        blocked_by_requester: false,
    })
}

pub(super) async fn answer_presence(
    db: &Db,
    user: UserId,
    requester_key: &str,
    approve: bool,
) -> OpResult<PresenceChange> {
    let (me, requester) = pair(db, user, requester_key).await?;
    let watcher = signed(requester.id.0);
    let stored = subscription(db, watcher, me).await?;
    // A blocked account's request is kept from the blocker.
    let before = if stored == Subscription::Pending && is_blocking(db, me, watcher).await? {
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
        set_subscription(db, watcher, me, after).await?;
    }
    Ok(PresenceChange {
        other: requester,
        before,
        after,
    })
}

pub(super) async fn cancel_presence(db: &Db, user: UserId, target_key: &str) -> OpResult<PresenceChange> {
    let (me, target) = pair(db, user, target_key).await?;
    let them = signed(target.id.0);
    let before = subscription(db, me, them).await?;
    let oneself = me == them;
    if before != Subscription::None && !oneself {
        set_subscription(db, me, them, Subscription::None).await?;
    }
    let after = if oneself { before } else { Subscription::None };
    Ok(PresenceChange {
        other: target,
        before,
        after,
    })
}

pub(super) async fn presence_requests(db: &Db, user: UserId, limit: u32) -> OpResult<Vec<AccountSummary>> {
    let Some(me) = exact_sql(user.0) else {
        return Ok(Vec::new());
    };
    let rows = query(
        db,
        "SELECT accounts.id, accounts.name, accounts.name_key
         FROM presence_subscriptions JOIN accounts ON accounts.id = presence_subscriptions.watcher
         WHERE presence_subscriptions.target = $1 AND NOT presence_subscriptions.approved
           AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = $1 AND blocked = accounts.id)
         ORDER BY accounts.name_key LIMIT $2",
        &[&me, &i64::from(limit)],
    )
    .await?;
    Ok(rows.iter().map(summary_from_row).collect::<Result<_, _>>()?)
}

pub(super) async fn contacts_with_presence(db: &Db, user: UserId) -> OpResult<Vec<Contact>> {
    let Some(owner) = exact_sql(user.0) else {
        return Ok(Vec::new());
    };
    let rows = query(
        db,
        "SELECT accounts.id, accounts.name, accounts.name_key, presence_subscriptions.approved
         FROM contacts JOIN accounts ON accounts.id = contacts.contact
         LEFT JOIN presence_subscriptions
           ON presence_subscriptions.watcher = contacts.owner AND presence_subscriptions.target = contacts.contact
         WHERE contacts.owner = $1
         ORDER BY accounts.name_key",
        &[&owner],
    )
    .await?;
    let mut contacts = Vec::with_capacity(rows.len());
    for row in &rows {
        let approved: Option<bool> = row.try_get(3)?;
        contacts.push(Contact {
            account: summary_from_row(row)?,
            subscription: match approved {
                None => Subscription::None,
                Some(false) => Subscription::Pending,
                Some(true) => Subscription::Approved,
            },
        });
    }
    Ok(contacts)
}

pub(super) async fn block(db: &Db, user: UserId, key: &str, max: u32) -> OpResult<BlockOutcome> {
    let (me, target) = pair(db, user, key).await?;
    let them = signed(target.id.0);
    let already = is_blocking(db, me, them).await?;
    if !already {
        // Refused senders outside accounts (the pager) do not count.
        let held: i64 = query_one(
            db,
            "SELECT count(*) FROM blocks JOIN accounts ON accounts.id = blocks.blocked WHERE blocks.blocker = $1",
            &[&me],
        )
        .await?
        .try_get(0)?;
        if unsigned(held) >= u64::from(max) {
            return Err(StoreError::LimitReached(block_limit_message(max)).into());
        }
        execute(
            db,
            "INSERT INTO blocks (blocker, blocked) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&me, &them],
        )
        .await?;
    }
    // No presence either way.
    execute(
        db,
        "DELETE FROM presence_subscriptions WHERE (watcher = $1 AND target = $2) OR (watcher = $2 AND target = $1)",
        &[&me, &them],
    )
    .await?;
    Ok(BlockOutcome {
        target,
        added: !already,
    })
}

pub(super) async fn unblock(db: &Db, user: UserId, key: &str) -> OpResult<bool> {
    let (me, target) = match pair(db, user, key).await {
        Ok(pair) => pair,
        Err(OpError::Store(_)) => return Ok(false),
        Err(error) => return Err(error),
    };
    let them = signed(target.id.0);
    let removed = execute(
        db,
        "DELETE FROM blocks WHERE blocker = $1 AND blocked = $2",
        &[&me, &them],
    )
    .await?
        > 0;
    if removed {
        // What the blocked account asked meanwhile was never shown: it goes.
        execute(
            db,
            "DELETE FROM presence_subscriptions WHERE watcher = $2 AND target = $1",
            &[&me, &them],
        )
        .await?;
    }
    Ok(removed)
}

pub(super) async fn list_blocked(db: &Db, user: UserId) -> OpResult<Vec<AccountSummary>> {
    let Some(me) = exact_sql(user.0) else {
        return Ok(Vec::new());
    };
    let rows = query(
        db,
        "SELECT accounts.id, accounts.name, accounts.name_key
         FROM blocks JOIN accounts ON accounts.id = blocks.blocked
         WHERE blocks.blocker = $1 ORDER BY accounts.name_key",
        &[&me],
    )
    .await?;
    Ok(rows.iter().map(summary_from_row).collect::<Result<_, _>>()?)
}

/// Whether `user` refuses the sender outside accounts `sender`, after
/// setting it: a row in `blocks` whose `blocked` is no account.
pub(super) async fn refuse_sender(db: &Db, user: UserId, sender: UserId, refuse: Option<bool>) -> OpResult<bool> {
    let Some(me) = exact_sql(user.0) else {
        return match refuse {
            Some(_) => Err(StoreError::NoSuchUser.into()),
            None => Ok(false),
        };
    };
    let them = signed(sender.0);
    match refuse {
        Some(refuse) => {
            if !lock_account(db, user).await? {
                return Err(StoreError::NoSuchUser.into());
            }
            if refuse {
                execute(
                    db,
                    "INSERT INTO blocks (blocker, blocked) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&me, &them],
                )
                .await?;
            } else {
                execute(
                    db,
                    "DELETE FROM blocks WHERE blocker = $1 AND blocked = $2",
                    &[&me, &them],
                )
                .await?;
            }
            Ok(refuse)
        }
        None => is_blocking(db, me, them).await,
    }
}
