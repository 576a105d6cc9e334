//! Implementations of `parley-core`'s [`Store`](parley_core::Store): accounts,
//! mailboxes, idempotency keys, contact lists, resume tokens, spam folders
//! and the spam filter's labelled data, kept in
//! memory ([`MemoryStore`]), in SQLite ([`SqliteStore`]) or in PostgreSQL
//! ([`PgStore`], which several processes may share).
//!
//! This crate owns the durable state of the service and nothing else. It must
//! never decide policy (name rules, size limits, who may do what: the core
//! checks those before calling), never speak a wire format, and never panic on
//! any input: every failure is a [`StoreError`](parley_core::StoreError).
//!
//! # Semantics shared by every store
//!
//! The stores behave identically in every observable way; one conformance
//! suite (`tests/conformance.rs`) runs against each. Name keys (`name_key`,
//! `recipient_key`, `contact_key`) are matched exactly: the core lowercases
//! names into keys before calling.
//!
//! - **create_account**: `NameTaken` if a live account has the same
//!   `name_key`. New user ids start at 1 and strictly increase; an id is never
//!   handed out again, even after its account is deleted.
//! - **find_account**: the account with that `name_key`, or `None`.
//! - **delete_account**: removes the account, every message in its mailbox,
//!   the idempotency keys it holds as a sender, its resume tokens, its contact
//!   list and its place in every other account's contact list, and its spam
//!   folder. Messages it sent that sit in other mailboxes or spam folders
//!   stay; labels, tied to no account, stay. `NoSuchUser` if there is no such
//!   account. The name can then be registered again: the new account gets a
//!   new id, an empty mailbox whose seqs start at 1, no contacts, and appears
//!   in nobody's contact list; no token of the old account resumes it.
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
//! - **add_contact**: `NoSuchUser` if the owner does not exist or no account
//!   has `contact_key` (checked in that order). If the contact is already in
//!   the list, nothing changes and the answer is the same as the first time,
//!   even when the list is full. Otherwise `LimitReached("at most N
//!   contacts")` if the owner already has `max` contacts (so `max = 0` refuses
//!   every new one), else the contact is added. Adding oneself is allowed.
//!   The answer is the contact's listing row. Contact lists are one-way:
//!   adding Bob to Alice's list does not touch Bob's.
//! - **remove_contact**: whether `contact_key` was in the list (and is no
//!   longer); an unknown owner or key answers `false`.
//! - **list_contacts**: the owner's contacts in byte order of `name_key`, with
//!   their current names; empty for an unknown owner.
//! - **create_resume_token**: `NoSuchUser` if the user does not exist. Stores
//!   only the hash with its (clamped) expiry. First, a token with the same
//!   hash is replaced, whoever held it; then the user's tokens with
//!   `expires_ms <=` the current system time are deleted; then, if more than
//!   `max_per_user - 1` of the user's tokens remain, those expiring first
//!   (ties: created first) are deleted until that many remain; finally the
//!   new token is stored. The new token is always kept, even if it expires
//!   before the others or has already expired, so `max_per_user = 0` behaves
//!   like 1.
//! - **resume**: the account of the token with that hash if its `expires_ms`
//!   is greater than `now_ms`; a token that is not is deleted, and the answer
//!   is `None`, as for an unknown hash.
//! - **revoke_resume_token**: deletes the token; an unknown hash is not an
//!   error.
//! - **hold**: for a send (`NewHeld::send`), if the sender's `client_msg_id`
//!   already names a stored message (the idempotency key of appends, its
//!   message kept or deleted), nothing is written and the answer is that
//!   message (`stored`, as a duplicate append answers), `duplicate = true`
//!   and id 0. Then the recipient is resolved by `recipient_key`
//!   (`NoSuchUser` if absent). If its spam folder holds a message with the same `(sender,
//!   client_msg_id)`, nothing is written and the answer is that message's
//!   id and timestamp with `duplicate = true`, even if the recipient has
//!   blocked the sender since (as for an append). Otherwise `NoSuchUser` if
//!   the recipient blocks the sender or refuses it (`refuse_sender`), else
//!   the message is stored with the next held-message id (one sequence for
//!   every folder, apart from message ids, never reused; strictly
//!   increasing), its clamped timestamp, the filter's name and score (a
//!   NaN score is stored as 0), and then the folder's oldest messages
//!   (lowest ids) are dropped until at most `max_held` remain (with
//!   `max_held = 0` the new one goes at once, and is still answered with
//!   its id). Holding touches no mailbox: no seq, no unread or quota count,
//!   no idempotency key of appends, and the `OnStored` hook is not told.
//! - **held**: the folder's messages with id > `after`, ascending, at most
//!   `limit`; empty for an unknown user.
//! - **drop_held**: deletes the listed ids that are in the user's own folder
//!   and returns them ascending, each once (others' and unknown ids are left
//!   out).
//! - **add_label**: stores the label with the next label id (its own
//!   sequence, never reused; the given `id` is ignored), its clamped
//!   `marked_ms` and its score (NaN stored as 0), and returns the id.
//! - **labels**: labels with id > `after`, ascending, at most `limit`.
//! - **close**: finishes queued work, makes it durable and stops; every later
//!   operation answers `Closed`. Calling it again answers `Ok(())` once the
//!   store has stopped.
//!
//! SQLite's and PostgreSQL's integers are signed 64-bit, so `u64` values
//! above `i64::MAX` are handled the same way in every store: written values (sender ids,
//! timestamps) are clamped to `i64::MAX`; ids and seqs used for lookups are
//! compared as the unsigned numbers they are, so they match nothing that
//! exists (an `after` or `up_to` that large means "beyond" or "all").
#![forbid(unsafe_code)]

mod clock;
mod convert;
pub mod memory;
pub mod postgres;
mod queue;
mod rules;
pub mod sqlite;

pub use memory::MemoryStore;
pub use postgres::{PgOpenError, PgOptions, PgStore, PgUrl};
pub use sqlite::{
    BATCH_SIZE_BUCKETS, BUSY_RETRY_AFTER_MS, BatchStats, COMMIT_MICROS_BUCKETS, DEFAULT_MAX_BATCH, DEFAULT_WRITE_QUEUE,
    NEW_WORK_QUEUE_QUARTERS, SqliteOptions, SqliteStore, StoreOpenError, Synchronous,
};
