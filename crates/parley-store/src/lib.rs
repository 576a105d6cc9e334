//! Implementations of `parley-core`'s [`Store`](parley_core::Store): accounts,
//! mailboxes and idempotency keys, kept in memory ([`MemoryStore`]) or in
//! SQLite ([`SqliteStore`]).
//!
//! This crate owns the durable state of the service and nothing else. It must
//! never decide policy (name rules, size limits, who may do what: the core
//! checks those before calling), never speak a wire format, and never panic on
//! any input: every failure is a [`StoreError`](parley_core::StoreError).
//!
//! # Semantics shared by both stores
//!
//! Both stores behave identically in every observable way; one conformance
//! suite (`tests/conformance.rs`) runs against both.
//!
//! - **create_account**: `NameTaken` if a live account has the same
//!   `name_key`. New user ids start at 1 and strictly increase; an id is never
//!   handed out again, even after its account is deleted.
//! - **find_account**: the account with that `name_key`, or `None`.
//! - **delete_account**: removes the account, every message in its mailbox and
//!   the idempotency keys it holds as a sender. Messages it sent that sit in
//!   other mailboxes stay. `NoSuchUser` if there is no such account. The name
//!   can then be registered again: the new account gets a new id and an empty
//!   mailbox whose seqs start at 1.
//! - **list_accounts**: accounts whose `name_key` matches the pattern and is
//!   greater than `after` (a `name_key`; `""` starts at the beginning), in
//!   byte order of `name_key`, at most `limit` of them.
//! - **append**: idempotent on `(sender, client_msg_id)`. If that key is
//!   already stored, nothing is written and the original message comes back
//!   with `duplicate = true`; this check comes first, so a retry is answered
//!   the same way even if the recipient has since deleted the message or its
//!   whole account. If the recipient deleted the original message, the answer
//!   is rebuilt from the idempotency record (original id, recipient, seq and
//!   timestamp) and the retry's sender name and body, with `acked = false`.
//!   Otherwise the recipient is resolved by `recipient_key` (`NoSuchUser` if
//!   absent), gets the next seq of its mailbox and the next global message id,
//!   and `duplicate = false`. Seqs strictly increase per mailbox and are never
//!   reused, even after deletions; message ids strictly increase globally.
//! - **fetch**: messages of the mailbox with seq > `after`, ascending, at most
//!   `limit`, and only unacknowledged ones unless `include_acked`. An unknown
//!   user has an empty mailbox (not an error).
//! - **ack**: marks acknowledged every message with seq <= `up_to` (when
//!   `up_to` > 0) and each listed seq; seqs that do not exist are ignored.
//!   Returns how many messages were newly acknowledged and the mailbox state
//!   afterwards. `NoSuchUser` if there is no such account.
//! - **delete_messages**: deletes the listed messages that are in the user's
//!   own mailbox (never another's) and returns the ids actually deleted, in
//!   the order given, each once. An unknown user deletes nothing.
//! - **mailbox_state**: the highest seq ever assigned and the number of
//!   unacknowledged messages; `NoSuchUser` if there is no such account.
//! - **close**: finishes queued work, makes it durable and stops; every later
//!   operation answers `Closed`. Calling it again answers `Ok(())` once the
//!   store has stopped.
//!
//! SQLite integers are signed 64-bit, so `u64` values above `i64::MAX` are
//! handled the same way in both stores: written values (sender ids,
//! timestamps) are clamped to `i64::MAX`; ids and seqs used for lookups are
//! compared as the unsigned numbers they are, so they match nothing that
//! exists (an `after` or `up_to` that large means "beyond" or "all").
#![forbid(unsafe_code)]

mod convert;
pub mod memory;
pub mod sqlite;

pub use memory::MemoryStore;
pub use sqlite::{
    BUSY_RETRY_AFTER_MS, BatchStats, DEFAULT_MAX_BATCH, DEFAULT_WRITE_QUEUE, SqliteOptions, SqliteStore,
    StoreOpenError, Synchronous,
};
