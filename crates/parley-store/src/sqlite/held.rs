//! Spam folders and the filter's labelled data in SQLite: the operations
//! behind `Store::hold` and its siblings, run by the writer thread inside
//! its transaction like those of `ops.rs` (schema version 7).
//!
//! `held_messages`: one row per held message, keyed by its own id (never
//! reused), unique on (recipient, sender, client_msg_id). Holding touches
//! neither the recipient's mailbox counters nor `sent_ids`, and is told to
//! no [`OnStored`](parley_core::store::OnStored) hook. `filter_labels`:
//! labelled texts, tied to no account.

use parley_core::store::{FilterLabel, Held, HeldMessage, NewHeld};
use parley_core::{StoreError, UserId};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::ops::{OpResult, original_of_send};
use crate::convert::{clamp, exact_sql, saturating_sql, stored_score};

/// Holds a message: for a send, a stored message its client id already
/// names is the answer (nothing held); the recipient resolved by key; a held message with the
/// same (recipient, sender, client id) is the answer, even if the
/// recipient has blocked the sender since (as for an append); else a
/// blocked or refused sender is answered as for an unknown recipient; else
/// the row, then the folder's oldest rows past `max_held` go.
pub(super) fn hold(conn: &Connection, new: NewHeld) -> OpResult<Held> {
    let NewHeld {
        message,
        filter,
        score,
        max_held,
        send,
    } = new;
    if send && let Some(original) = original_of_send(conn, message.clone())? {
        return Ok(Held::already_stored(original.message));
    }
    let sender = clamp(message.sender.0);
    let recipient: Option<u64> = conn
        .prepare_cached("SELECT id FROM accounts WHERE name_key = ?1")?
        .query_row([&message.recipient_key], |row| row.get(0))
        .optional()?;
    let Some(recipient) = recipient else {
        return Err(StoreError::NoSuchUser.into());
    };
    let original: Option<(u64, u64)> = conn
        .prepare_cached(
            "SELECT id, timestamp_ms FROM held_messages
             WHERE recipient = ?1 AND sender = ?2 AND client_msg_id = ?3",
        )?
        .query_row(params![recipient, sender, message.client_msg_id], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    if let Some((id, timestamp_ms)) = original {
        return Ok(Held {
            id,
            recipient: UserId(recipient),
            timestamp_ms,
            duplicate: true,
            stored: None,
        });
    }
    let blocked = conn
        .prepare_cached("SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2")?
        .exists(params![recipient, sender])?;
    if blocked {
        return Err(StoreError::NoSuchUser.into());
    }
    let timestamp_ms = clamp(message.timestamp_ms);
    let id: u64 = conn
        .prepare_cached(
            "INSERT INTO held_messages
                 (recipient, sender, sender_name, client_msg_id, body, timestamp_ms, filter, score)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             RETURNING id",
        )?
        .query_row(
            params![
                recipient,
                sender,
                message.sender_name,
                message.client_msg_id,
                message.body,
                timestamp_ms,
                filter,
                stored_score(score)
            ],
            |row| row.get(0),
        )?;
    // Every row past the newest `max_held` goes: with 0, the new one too.
    conn.prepare_cached(
        "DELETE FROM held_messages WHERE id IN (
             SELECT id FROM held_messages WHERE recipient = ?1 ORDER BY id DESC LIMIT -1 OFFSET ?2)",
    )?
    .execute(params![recipient, max_held])?;
    Ok(Held {
        id,
        recipient: UserId(recipient),
        timestamp_ms,
        duplicate: false,
        stored: None,
    })
}

/// Reads a row of `id, recipient, sender, sender_name, client_msg_id,
/// body, timestamp_ms, filter, score`.
fn held_from_row(row: &Row<'_>) -> rusqlite::Result<HeldMessage> {
    Ok(HeldMessage {
        id: row.get(0)?,
        recipient: UserId(row.get(1)?),
        sender: UserId(row.get(2)?),
        sender_name: row.get(3)?,
        client_msg_id: row.get(4)?,
        body: row.get(5)?,
        timestamp_ms: row.get(6)?,
        filter: row.get(7)?,
        score: row.get(8)?,
    })
}

pub(super) fn held(conn: &Connection, user: UserId, after: u64, limit: u32) -> OpResult<Vec<HeldMessage>> {
    let Some(recipient) = exact_sql(user.0) else {
        return Ok(Vec::new());
    };
    let mut stmt = conn.prepare_cached(
        "SELECT id, recipient, sender, sender_name, client_msg_id, body, timestamp_ms, filter, score
         FROM held_messages WHERE recipient = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![recipient, saturating_sql(after), limit], held_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Drops the listed held messages that are in `user`'s folder; the ids
/// dropped, ascending, each once.
pub(super) fn drop_held(conn: &Connection, user: UserId, mut ids: Vec<u64>) -> OpResult<Vec<u64>> {
    let Some(recipient) = exact_sql(user.0) else {
        return Ok(Vec::new());
    };
    ids.sort_unstable();
    ids.dedup();
    let mut stmt = conn.prepare_cached("DELETE FROM held_messages WHERE id = ?1 AND recipient = ?2")?;
    let mut dropped = Vec::new();
    for id in ids {
        // An id SQLite cannot hold cannot exist.
        let Some(sql_id) = exact_sql(id) else {
            continue;
        };
        if stmt.execute(params![sql_id, recipient])? > 0 {
            dropped.push(id);
        }
    }
    Ok(dropped)
}

pub(super) fn add_label(conn: &Connection, label: FilterLabel) -> OpResult<u64> {
    let id = conn
        .prepare_cached(
            "INSERT INTO filter_labels (body, spam, score, marked_ms) VALUES (?1, ?2, ?3, ?4)
             RETURNING id",
        )?
        .query_row(
            params![
                label.body,
                label.spam,
                label.score.map(stored_score),
                clamp(label.marked_ms)
            ],
            |row| row.get(0),
        )?;
    Ok(id)
}

pub(super) fn labels(conn: &Connection, after: u64, limit: u32) -> OpResult<Vec<FilterLabel>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, body, spam, score, marked_ms FROM filter_labels WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![saturating_sql(after), limit], |row| {
            Ok(FilterLabel {
                id: row.get(0)?,
                body: row.get(1)?,
                spam: row.get(2)?,
                score: row.get(3)?,
                marked_ms: row.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}
