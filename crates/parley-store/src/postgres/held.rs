//! Spam folders and the filter's labelled data in PostgreSQL: the
//! operations behind `Store::hold` and its siblings, run by the writer
//! inside its transaction like those of `ops.rs`, with the same rules as
//! SQLite's `held.rs` (schema version 4).
//!
//! A hold locks its recipient's account row first, as an append does, so
//! that holds to one folder from several processes take turns: the
//! duplicate check and the eviction past `max_held` see every committed
//! hold, and deleting the account waits for them (or they for it).

use std::sync::Arc;

use parley_core::store::{FilterLabel, Held, HeldMessage, NewHeld};
use parley_core::{StoreError, UserId};
use tokio_postgres::Row;

use super::append::original_of_send;
use super::ops::{
    Db, OpResult, Params, execute, lock_account, lookup_key, query, query_one, query_opt, signed, unsigned, utf8, wide,
};
use crate::convert::{clamp, exact_sql, saturating_sql, stored_score};

/// A folder's rows past its newest `$2` (`max_held`), deleted: with 0,
/// every row.
pub(super) const EVICT: &str = "DELETE FROM held_messages WHERE id IN (
         SELECT id FROM held_messages WHERE recipient = $1 ORDER BY id DESC OFFSET $2)";

/// Holds a message: for a send, a stored message its client id already
/// names is the answer (nothing held); the recipient resolved by key and
/// locked; a held
/// message with the same (recipient, sender, client id) is the answer, even
/// if the recipient has blocked the sender since (as for an append); else a
/// blocked or refused sender is answered as for an unknown recipient; else
/// the row, then the folder's oldest rows past `max_held` go.
pub(super) async fn hold(db: &Db, new: &NewHeld) -> OpResult<Held> {
    let message = &new.message;
    if new.send
        && let Some(original) = original_of_send(db, message).await?
    {
        return Ok(Held::already_stored(Arc::new(original)));
    }
    let Some(key) = lookup_key(&message.recipient_key) else {
        return Err(StoreError::NoSuchUser.into());
    };
    let Some(row) = query_opt(db, "SELECT id FROM accounts WHERE name_key = $1 FOR UPDATE", &[&key]).await? else {
        return Err(StoreError::NoSuchUser.into());
    };
    let recipient: i64 = row.try_get(0)?;
    let sender = signed(message.sender.0);
    let client_msg_id = message.client_msg_id.as_bytes();
    // Pipelined, after the lock: one round trip.
    let triple: Params = &[&recipient, &sender, &client_msg_id];
    let pair: Params = &[&recipient, &sender];
    let (original, blocked) = tokio::try_join!(
        query_opt(
            db,
            "SELECT id, timestamp_ms FROM held_messages
             WHERE recipient = $1 AND sender = $2 AND client_msg_id = $3",
            triple,
        ),
        query_opt(db, "SELECT 1 FROM blocks WHERE blocker = $1 AND blocked = $2", pair),
    )?;
    if let Some(original) = original {
        return Ok(Held {
            id: unsigned(original.try_get(0)?),
            recipient: UserId(unsigned(recipient)),
            timestamp_ms: unsigned(original.try_get(1)?),
            duplicate: true,
            stored: None,
        });
    }
    if blocked.is_some() {
        return Err(StoreError::NoSuchUser.into());
    }
    let timestamp_ms = clamp(message.timestamp_ms);
    let row = query_one(
        db,
        "INSERT INTO held_messages
             (recipient, sender, sender_name, client_msg_id, body, timestamp_ms, filter, score)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         RETURNING id",
        &[
            &recipient,
            &sender,
            &message.sender_name,
            &client_msg_id,
            &message.body.as_bytes(),
            &signed(timestamp_ms),
            &new.filter,
            &stored_score(new.score),
        ],
    )
    .await?;
    let id = unsigned(row.try_get(0)?);
    execute(db, EVICT, &[&recipient, &wide(new.max_held)]).await?;
    Ok(Held {
        id,
        recipient: UserId(unsigned(recipient)),
        timestamp_ms,
        duplicate: false,
        stored: None,
    })
}

/// Reads a row of `id, recipient, sender, sender_name, client_msg_id,
/// body, timestamp_ms, filter, score`.
fn held_from_row(row: &Row) -> OpResult<HeldMessage> {
    Ok(HeldMessage {
        id: unsigned(row.try_get(0)?),
        recipient: UserId(unsigned(row.try_get(1)?)),
        sender: UserId(unsigned(row.try_get(2)?)),
        sender_name: row.try_get(3)?,
        client_msg_id: utf8(row.try_get(4)?)?,
        body: utf8(row.try_get(5)?)?,
        timestamp_ms: unsigned(row.try_get(6)?),
        filter: row.try_get(7)?,
        score: row.try_get(8)?,
    })
}

/// A page of a folder ([`held`]): one range of the (recipient, id) index.
pub(super) const HELD_PAGE: &str =
    "SELECT id, recipient, sender, sender_name, client_msg_id, body, timestamp_ms, filter, score
     FROM held_messages WHERE recipient = $1 AND id > $2 ORDER BY id LIMIT $3";

pub(super) async fn held(db: &Db, user: UserId, after: u64, limit: u32) -> OpResult<Vec<HeldMessage>> {
    let Some(recipient) = exact_sql(user.0) else {
        return Ok(Vec::new());
    };
    let rows = query(db, HELD_PAGE, &[&recipient, &saturating_sql(after), &wide(limit)]).await?;
    rows.iter().map(held_from_row).collect()
}

/// Drops the listed held messages that are in `user`'s folder (its
/// account locked first, as a hold locks it); the ids dropped, ascending,
/// each once.
pub(super) async fn drop_held(db: &Db, user: UserId, ids: &[u64]) -> OpResult<Vec<u64>> {
    let Some(recipient) = exact_sql(user.0) else {
        return Ok(Vec::new());
    };
    if !lock_account(db, user).await? {
        return Ok(Vec::new());
    }
    // Ids PostgreSQL cannot hold cannot exist.
    let wanted: Vec<i64> = ids.iter().filter_map(|&id| exact_sql(id)).collect();
    let rows = query(
        db,
        "DELETE FROM held_messages WHERE recipient = $1 AND id = ANY($2) RETURNING id",
        &[&recipient, &wanted],
    )
    .await?;
    let mut dropped = Vec::with_capacity(rows.len());
    for row in &rows {
        dropped.push(unsigned(row.try_get(0)?));
    }
    dropped.sort_unstable();
    Ok(dropped)
}

pub(super) async fn add_label(db: &Db, label: &FilterLabel) -> OpResult<u64> {
    let row = query_one(
        db,
        "INSERT INTO filter_labels (body, spam, score, marked_ms) VALUES ($1, $2, $3, $4) RETURNING id",
        &[
            &label.body.as_bytes(),
            &label.spam,
            &label.score.map(stored_score),
            &signed(label.marked_ms),
        ],
    )
    .await?;
    Ok(unsigned(row.try_get(0)?))
}

pub(super) async fn labels(db: &Db, after: u64, limit: u32) -> OpResult<Vec<FilterLabel>> {
    let rows = query(
        db,
        "SELECT id, body, spam, score, marked_ms FROM filter_labels WHERE id > $1 ORDER BY id LIMIT $2",
        &[&saturating_sql(after), &wide(limit)],
    )
    .await?;
    rows.iter()
        .map(|row| {
            Ok(FilterLabel {
                id: unsigned(row.try_get(0)?),
                body: utf8(row.try_get(1)?)?,
                spam: row.try_get(2)?,
                score: row.try_get(3)?,
                marked_ms: unsigned(row.try_get(4)?),
            })
        })
        .collect()
}
