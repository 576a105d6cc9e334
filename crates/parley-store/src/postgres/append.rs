//! Appends, a run at a time: the consecutive appends of a batch are stored
//! with two round trips of pipelined, set-based statements whatever their
//! number, instead of several statements each.
//!
//! 1. One round trip reads, in this order: the recipients' account rows,
//!    locked (`FOR UPDATE`, in id order) — the lock that keeps each
//!    mailbox's seqs gap-free while other processes append to it; the
//!    blocks between those recipients and the run's senders; the
//!    idempotency records of the run's (sender, client id) pairs (see
//!    [`Lookup`]); and one fresh message id per append from the
//!    `message_ids` sequence.
//! 2. The writer decides each append in call order, as SQLite's does one by
//!    one: a recorded client id is a duplicate (answered with the original),
//!    then an unknown or blocking recipient, then a full mailbox; otherwise
//!    the next seq of its mailbox and the next id.
//! 3. One statement writes the message rows (each its own idempotency
//!    record: see `schema.rs`) and each recipient's counters (`last_seq`,
//!    unread, quota counts) once.
//!
//! A run first looks only for the records of deleted messages
//! ([`Lookup::Deleted`]): a stored message is its own record, which the
//! insert of step 3 finds anyway, in the unique index `messages_sent`. A
//! resend of a stored message then fails that insert like the race below,
//! and the batch runs again looking for every record ([`Lookup::All`]), so
//! that the common case, a message never sent before, reads that index
//! once instead of twice. An append refused without an insert (unknown or
//! blocking recipient, full mailbox) has its record read after step 2, in
//! a round trip taken only then, since a resend is answered with its
//! original before any refusal. A deletion that moves a record from the one
//! place to the other cannot fall between the two reads: it locks the
//! account row of its mailbox, which the run holds from step 1. (Unless the
//! sender's client broke the protocol and used the id for another
//! recipient: then a deletion committed between the two reads lets the
//! resend be stored as a new message.)
//!
//! Another process may store the same (sender, client id) between steps 1
//! and 3 (a resend through another node). Its message then conflicts: the
//! insert waits for that transaction and fails on the unique index
//! `messages_sent`, and the run reports [`RunEnd::Raced`]; the writer rolls
//! the whole batch back and runs it again, when step 1 finds the other
//! process's message and answers with it. Nothing of the first attempt is
//! kept, so no seq is lost. A plain insert that fails is cheaper than
//! `ON CONFLICT DO NOTHING`, which makes every row a speculative insertion
//! (a lookup before and a confirmation after) to serve a race that almost
//! never happens.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parley_core::StoreError;
use parley_core::store::{Appended, NewMessage, StoreResult, StoredMessage, body_bytes};
use tokio_postgres::Row;

use super::ops::{
    AppendOp, Db, Op, OpError, Params, appended, execute, lookup_key, message_columns, message_from_row, query, signed,
    unacked, unsigned,
};
use crate::convert::clamp;

/// The run's recipients' account rows, locked in id order.
pub(super) const RECIPIENTS: &str = "SELECT id, name_key, last_seq, stored_messages, stored_bytes FROM accounts
     WHERE name_key = ANY($1) ORDER BY id FOR UPDATE";

/// The blocks between the run's recipients and its senders.
pub(super) const BLOCKS: &str = "SELECT b.blocker, b.blocked FROM blocks b JOIN accounts a ON a.id = b.blocker
     WHERE a.name_key = ANY($1) AND b.blocked = ANY($2)";

/// The idempotency records of the run's (sender, client id) pairs: the
/// original message where it is still stored, else the record `sent_ids`
/// kept when it was deleted. One index lookup in each place per pair, the
/// second only when the first found nothing (the `LIMIT 1` keeps each
/// lookup a lookup, not a join a plan could turn into a scan); one
/// statement, so one snapshot: a deletion that moves a record from one
/// place to the other is seen before or after, never halfway.
pub(super) const RECORDS: &str = concat!(
    "SELECT w.sender, w.client_msg_id, coalesce(m.id, s.message_id), coalesce(m.recipient, s.recipient),
            coalesce(m.seq, s.seq), coalesce(m.timestamp_ms, s.timestamp_ms), ",
    message_columns!(),
    " FROM unnest($1::bigint[], $2::bytea[]) AS w(sender, client_msg_id)
     LEFT JOIN LATERAL (
         SELECT * FROM messages m WHERE m.sender = w.sender AND m.client_msg_id = w.client_msg_id LIMIT 1
     ) m ON true
     LEFT JOIN LATERAL (
         SELECT * FROM sent_ids s
         WHERE m.id IS NULL AND s.sender = w.sender AND s.client_msg_id = w.client_msg_id LIMIT 1
     ) s ON true
     LEFT JOIN mailbox_marks k ON k.account = m.recipient
     WHERE m.id IS NOT NULL OR s.message_id IS NOT NULL"
);

/// The idempotency records of deleted messages among the run's (sender,
/// client id) pairs, in the columns of [`RECORDS`] with no stored message.
pub(super) const RECORDS_OF_DELETED: &str =
    "SELECT s.sender, s.client_msg_id, s.message_id, s.recipient, s.seq, s.timestamp_ms,
            NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::text, NULL::bytea, NULL::bytea,
            NULL::bigint, NULL::boolean
     FROM unnest($1::bigint[], $2::bytea[]) AS w(sender, client_msg_id)
     JOIN LATERAL (
         SELECT * FROM sent_ids s WHERE s.sender = w.sender AND s.client_msg_id = w.client_msg_id LIMIT 1
     ) s ON true";

/// Which idempotency records a run reads before it decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lookup {
    /// Only those of deleted messages ([`RECORDS_OF_DELETED`]): a resend of
    /// a stored message makes the run end [`RunEnd::Raced`].
    Deleted,
    /// Every one, with the stored originals ([`RECORDS`]).
    All,
}

/// The run's message rows, and each recipient's counters once, in one
/// statement (`a.id = ANY($9)` lets the plan find the account rows by index
/// rather than join the whole table). A message whose (sender, client id)
/// another transaction stored fails the whole statement on the unique index
/// `messages_sent`.
pub(super) const STORE: &str = "WITH stored AS (
         INSERT INTO messages (id, recipient, seq, sender, sender_name, client_msg_id, body, timestamp_ms)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[],
                              $6::bytea[], $7::bytea[], $8::bigint[])
     )
     UPDATE accounts a SET last_seq = u.last_seq, unread = a.unread + u.added,
         stored_messages = a.stored_messages + u.added, stored_bytes = a.stored_bytes + u.bytes
     FROM unnest($9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[]) AS u(id, last_seq, added, bytes)
     WHERE a.id = u.id AND a.id = ANY($9)";

/// One fresh message id per append of the run.
pub(super) const NEW_IDS: &str = "SELECT nextval('message_ids') FROM generate_series(1, $1::bigint)";

/// How a run of appends ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RunEnd {
    /// Every append has its answer; `wrote` when any was stored.
    Done { wrote: bool },
    /// Another process recorded one of the run's client ids meanwhile, or
    /// (with [`Lookup::Deleted`]) a stored message has one of them: the
    /// transaction must be rolled back and the batch run again.
    Raced,
}

/// A recipient of the run, from its locked account row.
#[derive(Debug)]
struct Mailbox {
    id: i64,
    /// The last seq assigned, in this run included.
    last_seq: u64,
    /// Messages stored, this run's included: what the quota is checked against.
    stored_messages: u64,
    /// Bytes of their bodies.
    stored_bytes: u64,
    /// Messages this run added.
    added: u64,
    /// Bytes of their bodies.
    added_bytes: u64,
}

/// What an idempotency record says about the message it stored.
struct Record {
    message_id: u64,
    recipient: u64,
    seq: u64,
    timestamp_ms: u64,
    /// The message as stored, unless the recipient deleted it (or its account).
    stored: Option<StoredMessage>,
}

impl Record {
    /// A row of [`RECORDS`].
    fn from_row(row: &Row) -> Result<Record, tokio_postgres::Error> {
        let stored = match row.try_get::<_, Option<i64>>(6)? {
            Some(_) => match message_from_row(row, 6) {
                Ok(message) => Some(message),
                Err(OpError::Db(error)) => return Err(error),
                // Unreadable text: rebuilt from the record instead.
                Err(OpError::Store(_)) => None,
            },
            None => None,
        };
        Ok(Record {
            message_id: unsigned(row.try_get(2)?),
            recipient: unsigned(row.try_get(3)?),
            seq: unsigned(row.try_get(4)?),
            timestamp_ms: unsigned(row.try_get(5)?),
            stored,
        })
    }

    /// The message the record names: as stored, or rebuilt from the record
    /// and the resend `new` when the recipient deleted it.
    fn message(&self, new: &NewMessage) -> StoredMessage {
        self.stored
            .clone()
            .unwrap_or_else(|| unacked(new, self.message_id, self.recipient, self.seq, self.timestamp_ms))
    }
}

/// The message `new`'s (sender, client id) already names, if one was
/// stored: what a held send answers with ([`NewHeld::send`]).
///
/// [`NewHeld::send`]: parley_core::store::NewHeld
pub(super) async fn original_of_send(
    db: &Db,
    new: &NewMessage,
) -> Result<Option<StoredMessage>, tokio_postgres::Error> {
    let senders = [signed(new.sender.0)];
    let client_ids = [new.client_msg_id.as_bytes()];
    let rows = query(db, RECORDS, &[&senders.as_slice(), &client_ids.as_slice()]).await?;
    match rows.first() {
        Some(row) => Ok(Some(Record::from_row(row)?.message(new))),
        None => Ok(None),
    }
}

/// The rows the run inserts, column by column.
#[derive(Default)]
struct NewRows<'a> {
    ids: Vec<i64>,
    recipients: Vec<i64>,
    seqs: Vec<i64>,
    senders: Vec<i64>,
    sender_names: Vec<&'a str>,
    client_msg_ids: Vec<&'a [u8]>,
    bodies: Vec<&'a [u8]>,
    timestamps: Vec<i64>,
}

/// Runs the appends `ops` (every one an [`Op::Append`]) in the current
/// transaction, reading the records `lookup` names, and keeps each one's
/// answer in it.
pub(super) async fn run(db: &Db, ops: &mut [Op], lookup: Lookup) -> Result<RunEnd, tokio_postgres::Error> {
    let appends: Vec<&mut AppendOp> = ops
        .iter_mut()
        .filter_map(|op| match op {
            Op::Append(append) => Some(&mut **append),
            Op::Call(_) => None,
        })
        .collect();
    let mut keys: Vec<&str> = appends
        .iter()
        .filter_map(|a| lookup_key(&a.message.recipient_key))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let senders: Vec<i64> = appends.iter().map(|a| signed(a.message.sender.0)).collect();
    let client_ids: Vec<&[u8]> = appends.iter().map(|a| a.message.client_msg_id.as_bytes()).collect();
    let count = i64::try_from(appends.len()).unwrap_or(i64::MAX);

    // Step 1, pipelined: the statements run in this order, so the blocks and
    // records are read after the recipients' locks are held (every one was
    // prepared when the connection opened: `writer::HOT_STATEMENTS`).
    let by_key: Params = &[&keys];
    let pairs: Params = &[&keys, &senders];
    let sent: Params = &[&senders, &client_ids];
    let wanted: Params = &[&count];
    let (recipient_rows, block_rows, record_rows, id_rows) = tokio::try_join!(
        query(db, RECIPIENTS, by_key),
        query(db, BLOCKS, pairs),
        query(
            db,
            match lookup {
                Lookup::Deleted => RECORDS_OF_DELETED,
                Lookup::All => RECORDS,
            },
            sent,
        ),
        query(db, NEW_IDS, wanted),
    )?;

    let mut mailboxes: HashMap<String, Mailbox> = HashMap::with_capacity(recipient_rows.len());
    for row in &recipient_rows {
        let key: String = row.try_get(1)?;
        mailboxes.insert(
            key,
            Mailbox {
                id: row.try_get(0)?,
                last_seq: unsigned(row.try_get(2)?),
                stored_messages: unsigned(row.try_get(3)?),
                stored_bytes: unsigned(row.try_get(4)?),
                added: 0,
                added_bytes: 0,
            },
        );
    }
    let mut blocks: HashSet<(i64, i64)> = HashSet::with_capacity(block_rows.len());
    for row in &block_rows {
        blocks.insert((row.try_get(0)?, row.try_get(1)?));
    }
    let mut records: HashMap<(i64, Vec<u8>), Record> = HashMap::with_capacity(record_rows.len());
    for row in &record_rows {
        records.insert((row.try_get(0)?, row.try_get(1)?), Record::from_row(row)?);
    }
    let mut ids = Vec::with_capacity(id_rows.len());
    for row in &id_rows {
        ids.push(unsigned(row.try_get(0)?));
    }
    ids.sort_unstable();
    let mut ids = ids.into_iter();

    // Step 2: each append in call order.
    let mut rows = NewRows::default();
    // What this run stored, by (sender, client id): where in `decided`.
    let mut this_run: HashMap<(i64, &str), usize> = HashMap::new();
    let mut decided: Vec<StoreResult<Appended>> = Vec::with_capacity(appends.len());
    for append in &appends {
        let new = &append.message;
        let sender = signed(new.sender.0);
        let earlier = this_run
            .get(&(sender, new.client_msg_id.as_str()))
            .and_then(|&at| decided.get(at))
            .and_then(|first| first.as_ref().ok())
            .map(|first| Arc::clone(&first.message));
        let result = if !records.is_empty()
            && let Some(record) = records.get(&(sender, new.client_msg_id.as_bytes().to_vec()))
        {
            Ok(appended(record.message(new), true))
        } else if let Some(message) = earlier {
            Ok(Appended {
                message,
                duplicate: true,
            })
        } else {
            let bytes = body_bytes(&new.body);
            match lookup_key(&new.recipient_key).and_then(|key| mailboxes.get_mut(key)) {
                // A blocked sender is answered as if the account did not exist.
                None => Err(StoreError::NoSuchUser),
                Some(mailbox) if blocks.contains(&(mailbox.id, sender)) => Err(StoreError::NoSuchUser),
                Some(mailbox) if !new.quota.admits(mailbox.stored_messages, mailbox.stored_bytes, bytes) => {
                    Err(StoreError::MailboxFull)
                }
                Some(mailbox) => match (mailbox.last_seq.checked_add(1), ids.next()) {
                    (Some(seq), Some(id)) => {
                        let timestamp_ms = clamp(new.timestamp_ms);
                        mailbox.last_seq = seq;
                        mailbox.stored_messages = mailbox.stored_messages.saturating_add(1);
                        mailbox.stored_bytes = mailbox.stored_bytes.saturating_add(bytes);
                        mailbox.added += 1;
                        mailbox.added_bytes = mailbox.added_bytes.saturating_add(bytes);
                        rows.ids.push(signed(id));
                        rows.recipients.push(mailbox.id);
                        rows.seqs.push(signed(seq));
                        rows.senders.push(sender);
                        rows.sender_names.push(&new.sender_name);
                        rows.client_msg_ids.push(new.client_msg_id.as_bytes());
                        rows.bodies.push(new.body.as_bytes());
                        rows.timestamps.push(signed(timestamp_ms));
                        this_run.insert((sender, new.client_msg_id.as_str()), decided.len());
                        Ok(appended(
                            unacked(new, id, unsigned(mailbox.id), seq, timestamp_ms),
                            false,
                        ))
                    }
                    (None, _) => Err(StoreError::Backend("mailbox seq overflow".into())),
                    (_, None) => Err(StoreError::Backend("no message id left for the append".into())),
                },
            }
        };
        decided.push(result);
    }
    if lookup == Lookup::Deleted {
        find_refused_resends(db, &appends, &mut decided).await?;
    }

    // Step 3, one statement.
    let wrote = !rows.ids.is_empty();
    if wrote {
        let (mut counted, mut last_seqs, mut added, mut added_bytes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for mailbox in mailboxes.values().filter(|m| m.added > 0) {
            counted.push(mailbox.id);
            last_seqs.push(signed(mailbox.last_seq));
            added.push(signed(mailbox.added));
            added_bytes.push(signed(mailbox.added_bytes));
        }
        let params: Params = &[
            &rows.ids,
            &rows.recipients,
            &rows.seqs,
            &rows.senders,
            &rows.sender_names,
            &rows.client_msg_ids,
            &rows.bodies,
            &rows.timestamps,
            &counted,
            &last_seqs,
            &added,
            &added_bytes,
        ];
        if let Err(error) = execute(db, STORE, params).await {
            return if is_recorded_meanwhile(&error) {
                Ok(RunEnd::Raced)
            } else {
                Err(error)
            };
        }
    }
    drop(this_run);
    drop(rows);
    for (append, result) in appends.into_iter().zip(decided) {
        append.result = Some(result);
    }
    Ok(RunEnd::Done { wrote })
}

/// A resend is answered with its original even where a new message would
/// be refused (an unknown or blocking recipient, a full mailbox), and no
/// insert tells a refused append from a resend: with [`Lookup::Deleted`],
/// the refused appends' records are read afterwards, in one more round trip
/// taken only when something was refused.
async fn find_refused_resends(
    db: &Db,
    appends: &[&mut AppendOp],
    decided: &mut [StoreResult<Appended>],
) -> Result<(), tokio_postgres::Error> {
    let refused: Vec<usize> = (0..decided.len()).filter(|&at| decided[at].is_err()).collect();
    if refused.is_empty() {
        return Ok(());
    }
    let senders: Vec<i64> = refused.iter().map(|&at| signed(appends[at].message.sender.0)).collect();
    let client_ids: Vec<&[u8]> = refused
        .iter()
        .map(|&at| appends[at].message.client_msg_id.as_bytes())
        .collect();
    let rows = query(db, RECORDS, &[&senders, &client_ids]).await?;
    let mut records: HashMap<(i64, Vec<u8>), Record> = HashMap::with_capacity(rows.len());
    for row in &rows {
        records.insert((row.try_get(0)?, row.try_get(1)?), Record::from_row(row)?);
    }
    for at in refused {
        let new = &appends[at].message;
        if let Some(record) = records.get(&(signed(new.sender.0), new.client_msg_id.as_bytes().to_vec())) {
            decided[at] = Ok(appended(record.message(new), true));
        }
    }
    Ok(())
}

/// Whether `error` says another transaction stored one of the run's
/// (sender, client id) pairs first: a unique violation of the index
/// `messages_sent`.
fn is_recorded_meanwhile(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        *db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION && db.constraint() == Some("messages_sent")
    })
}
