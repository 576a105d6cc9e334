//! Opening the database: connection settings and schema migrations.
//!
//! The schema version is `PRAGMA user_version`: version N means the first N
//! entries of [`MIGRATIONS`] have been applied. Each migration runs in its own
//! transaction together with the version bump, so a crash leaves the database
//! at one version or the next, never in between. Migrations are only ever
//! appended; an applied one is never edited.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::{StoreOpenError, Synchronous};

/// How long a statement waits for a lock held by another connection (a
/// backup tool, an operator's `sqlite3` shell) before failing.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection; comfortably more than the
/// store's distinct statements, so none is ever re-prepared.
const STATEMENT_CACHE_CAPACITY: usize = 128;

/// The schema, as ordered steps; step `i` takes the database from version
/// `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    //
    // AUTOINCREMENT on both id columns so that ids are never reused after a
    // deletion (plain rowids would hand out max(id) + 1 again).
    // `accounts.last_seq` is the mailbox's seq counter, kept on the account
    // rather than derived from messages so that seqs are not reused after
    // messages are deleted.
    // `sent_ids` is the idempotency table, apart from `messages` so that a
    // retry is recognised even after the recipient deleted the message.
    "CREATE TABLE accounts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        name_key TEXT NOT NULL UNIQUE,
        mechanism TEXT NOT NULL,
        salt BLOB NOT NULL,
        iterations INTEGER NOT NULL,
        stored_key BLOB NOT NULL,
        server_key BLOB NOT NULL,
        last_seq INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        recipient INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        sender INTEGER NOT NULL,
        sender_name TEXT NOT NULL,
        client_msg_id TEXT NOT NULL,
        body TEXT NOT NULL,
        timestamp_ms INTEGER NOT NULL,
        acked INTEGER NOT NULL DEFAULT 0,
        UNIQUE (recipient, seq)
    );
    CREATE INDEX messages_unacked ON messages (recipient, seq) WHERE acked = 0;
    CREATE TABLE sent_ids (
        sender INTEGER NOT NULL,
        client_msg_id TEXT NOT NULL,
        message_id INTEGER NOT NULL,
        recipient INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        timestamp_ms INTEGER NOT NULL,
        PRIMARY KEY (sender, client_msg_id)
    ) WITHOUT ROWID;",
    // Version 2: contact lists and resume tokens.
    //
    // `contacts` is keyed by owner, which serves listing, adding and
    // removing; the index on `contact` serves deleting an account from
    // everyone else's list. Rows refer to accounts by id without foreign
    // keys, like the rest of the schema: `delete_account` removes them.
    // `resume_tokens` holds only SHA-256 hashes of the tokens.
    // `created_seq` records insertion order within one user's tokens (a
    // per-user counter), the tie-break when pruning tokens that expire at the
    // same time. The index on `(user, expires_ms, created_seq)` serves
    // deleting expired tokens, pruning the oldest and deleting an account.
    "CREATE TABLE contacts (
        owner INTEGER NOT NULL,
        contact INTEGER NOT NULL,
        PRIMARY KEY (owner, contact)
    ) WITHOUT ROWID;
    CREATE INDEX contacts_contact ON contacts (contact);
    CREATE TABLE resume_tokens (
        hash BLOB PRIMARY KEY,
        user INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        created_seq INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX resume_tokens_user ON resume_tokens (user, expires_ms, created_seq);",
    // Version 3: acks as a watermark, unread counts kept, message ids from a
    // counter. The hot path was an append and its ack (docs/BENCHMARKS.md).
    //
    // `accounts.acked_through`: every message of the mailbox with a seq up
    // to it is acknowledged, whatever its `acked` column says; a cumulative
    // ack moves it instead of rewriting each message row. `acked` is set
    // only by acks of single seqs above it. It never passes `last_seq`, so
    // messages stored later are not covered.
    // `accounts.unread`: the mailbox's unacknowledged messages, kept by
    // appends, acks and deletions instead of counted after every ack.
    // `counters.message_id`: the last message id handed out. The writer
    // assigns ids itself, which lets an append write its idempotency record
    // first, and spares AUTOINCREMENT's read and rewrite of
    // `sqlite_sequence` on every insert; ids are still never reused.
    // The partial index of unacked messages goes: unread counts no longer
    // scan it, and unread reads start at the watermark.
    // `messages` is rebuilt without AUTOINCREMENT (SQLite cannot drop it in
    // place); its rows and ids are copied as they are.
    "CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO counters (name, value) VALUES ('message_id', max(
        coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0),
        coalesce((SELECT max(id) FROM messages), 0)));
    ALTER TABLE accounts ADD COLUMN acked_through INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE accounts ADD COLUMN unread INTEGER NOT NULL DEFAULT 0;
    UPDATE accounts SET unread =
        (SELECT count(*) FROM messages WHERE recipient = accounts.id AND acked = 0);
    CREATE TABLE messages_v3 (
        id INTEGER PRIMARY KEY,
        recipient INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        sender INTEGER NOT NULL,
        sender_name TEXT NOT NULL,
        client_msg_id TEXT NOT NULL,
        body TEXT NOT NULL,
        timestamp_ms INTEGER NOT NULL,
        acked INTEGER NOT NULL DEFAULT 0,
        UNIQUE (recipient, seq)
    );
    INSERT INTO messages_v3
        (id, recipient, seq, sender, sender_name, client_msg_id, body, timestamp_ms, acked)
        SELECT id, recipient, seq, sender, sender_name, client_msg_id, body, timestamp_ms, acked
        FROM messages;
    DROP TABLE messages;
    ALTER TABLE messages_v3 RENAME TO messages;",
    // Version 4: mailbox quotas.
    //
    // `accounts.stored_messages` and `accounts.stored_bytes`: the messages
    // in the mailbox, acknowledged or not, and the bytes of their bodies
    // (UTF-8, as `store::body_bytes` counts them). Appends, which check
    // the quota against them in the writer, add to them; deletions take
    // away; they go with the account row. Counted here for existing
    // mailboxes, through the (recipient, seq) index.
    "ALTER TABLE accounts ADD COLUMN stored_messages INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE accounts ADD COLUMN stored_bytes INTEGER NOT NULL DEFAULT 0;
    UPDATE accounts SET
        stored_messages = (SELECT count(*) FROM messages WHERE recipient = accounts.id),
        stored_bytes = (SELECT coalesce(sum(length(CAST(body AS BLOB))), 0)
                        FROM messages WHERE recipient = accounts.id);",
    // Version 5: invite codes (`registration = invite`).
    //
    // Only SHA-256 hashes of the codes, as for resume tokens. A row is
    // deleted when its code registers an account (in the same transaction
    // as the account's insert) and when it has expired and another invite
    // is made.
    "CREATE TABLE invites (
        hash BLOB PRIMARY KEY,
        expires_ms INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // Version 6: presence by consent, and blocks.
    //
    // `presence_subscriptions`: the watcher asked to see the target's
    // presence; `approved` once the target said yes. Keyed by watcher (a
    // login loads what it sees); the index on `(target, approved)` serves a
    // target's pending requests and deleting an account.
    // `blocks`: keyed by blocker (an append asks whether its recipient
    // blocks its sender); the index on `blocked` serves deleting an account.
    // Contacts made before this version were followed without consent:
    // each becomes a pending request for the contact to answer.
    "CREATE TABLE presence_subscriptions (
        watcher INTEGER NOT NULL,
        target INTEGER NOT NULL,
        approved INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (watcher, target)
    ) WITHOUT ROWID;
    CREATE INDEX presence_subscriptions_target ON presence_subscriptions (target, approved);
    CREATE TABLE blocks (
        blocker INTEGER NOT NULL,
        blocked INTEGER NOT NULL,
        PRIMARY KEY (blocker, blocked)
    ) WITHOUT ROWID;
    CREATE INDEX blocks_blocked ON blocks (blocked);
    INSERT INTO presence_subscriptions (watcher, target, approved)
        SELECT owner, contact, owner = contact FROM contacts;",
    // Version 7: spam folders and the filter's labelled data.
    //
    // `held_messages`: the messages the filter kept out of their
    // recipients' mailboxes, with the filter's name and score. They touch
    // no mailbox counter, no seq and no `sent_ids` row. AUTOINCREMENT: a
    // held message's id is never reused (holds are rare, so the read and
    // rewrite of `sqlite_sequence` costs nothing that matters). The unique
    // key (recipient, sender, client_msg_id) makes a resent hold find its
    // original; the index on (recipient, id) serves listing a folder,
    // dropping its oldest past `max_held`, and deleting an account.
    // `filter_labels`: recipients' judgements (spam or not) of message
    // texts, for the next training run: only the text, the label, the
    // score the filter gave and when, tied to no account (they outlive
    // deleted ones). AUTOINCREMENT for the same reason; read in id order.
    "CREATE TABLE held_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        recipient INTEGER NOT NULL,
        sender INTEGER NOT NULL,
        sender_name TEXT NOT NULL,
        client_msg_id TEXT NOT NULL,
        body TEXT NOT NULL,
        timestamp_ms INTEGER NOT NULL,
        filter TEXT NOT NULL,
        score REAL NOT NULL,
        UNIQUE (recipient, sender, client_msg_id)
    );
    CREATE INDEX held_messages_recipient ON held_messages (recipient, id);
    CREATE TABLE filter_labels (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        body TEXT NOT NULL,
        spam INTEGER NOT NULL,
        score REAL,
        marked_ms INTEGER NOT NULL
    );",
];

/// The schema version this build creates and understands.
fn supported_version() -> i64 {
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}

/// Opens and configures the connection and brings the schema up to date.
pub(super) fn open(path: &Path, synchronous: Synchronous) -> Result<Connection, StoreOpenError> {
    let sqlite = |source| StoreOpenError::Sqlite {
        path: path.to_owned(),
        source,
    };
    // Only the writer thread ever touches this connection, so SQLite's
    // per-connection mutex is pure overhead (it was 8% of the writer's
    // time): open it in multi-thread mode.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(sqlite)?;
    conn.busy_timeout(LOCK_WAIT).map_err(sqlite)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);

    // Check the version before changing anything, the journal mode included,
    // so that a database from a newer Parley is left exactly as it was.
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sqlite)?;
    let supported = supported_version();
    if found < 0 {
        return Err(StoreOpenError::SchemaInvalid {
            path: path.to_owned(),
            found,
        });
    }
    if found > supported {
        return Err(StoreOpenError::SchemaTooNew {
            path: path.to_owned(),
            found,
            supported,
        });
    }

    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
        .map_err(sqlite)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreOpenError::NoWal {
            path: path.to_owned(),
            mode,
        });
    }
    conn.pragma_update(None, "synchronous", synchronous.name())
        .map_err(sqlite)?;

    // The version is read again inside each migration's write transaction,
    // so two processes opening the same file cannot apply a step twice.
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite)?;
        let current: i64 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(sqlite)?;
        if current > supported {
            // A newer Parley migrated the file since the check above.
            return Err(StoreOpenError::SchemaTooNew {
                path: path.to_owned(),
                found: current,
                supported,
            });
        }
        let Some(step) = usize::try_from(current).ok().and_then(|done| MIGRATIONS.get(done)) else {
            break;
        };
        let version = current.saturating_add(1);
        tx.execute_batch(step).map_err(sqlite)?;
        tx.pragma_update(None, "user_version", version).map_err(sqlite)?;
        tx.commit().map_err(sqlite)?;
        tracing::info!(path = %path.display(), version, "migrated store schema");
    }
    Ok(conn)
}
