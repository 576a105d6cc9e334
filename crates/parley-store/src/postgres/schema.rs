//! The schema: versioned migrations, applied at start-up by whichever
//! process gets there first, and the server secret kept beside the data.
//!
//! Versions are rows of `parley_schema`: version N recorded means the first
//! N entries of [`MIGRATIONS`] have been applied. Each migration runs in one
//! transaction together with its row, so a crash leaves the schema at one
//! version or the next. Processes starting together take a session-level
//! advisory lock (keyed by the schema's name) before they look, so exactly
//! one applies each step and the others find it done. Migrations are only
//! ever appended; an applied one is never edited.
//!
//! The tables live in the connection's current schema (the first existing
//! one of its `search_path`), so several installations, or tests, can share
//! one database in schemas of their own.
//!
//! The layout follows SQLite's version 7 (`sqlite/schema.rs` explains each
//! choice), with these differences:
//! - account and message ids come from sequences (`GENERATED ALWAYS AS
//!   IDENTITY` and `message_ids`): never reused, and handed out without a
//!   lock shared by every writer. A rolled-back transaction leaves a gap in
//!   ids, never in a mailbox's seqs (which come from `accounts.last_seq`
//!   under the account row's lock);
//! - `name_key` uses the "C" collation, so keys sort and compare by bytes
//!   as in SQLite, and `LIKE` prefixes use its index;
//! - bodies and client ids are `bytea`, since they may hold NUL, which
//!   PostgreSQL text cannot;
//! - the messages' primary key is (recipient, seq), the order every mailbox
//!   read follows, with a unique index on id for deletions and retries;
//! - `server_secret` holds the seed of decoy salts, so that every process
//!   sharing the database answers a login for an unknown name alike;
//! - a stored message is its own idempotency record: a unique index on
//!   (sender, client id) finds a resend's original, and the index's
//!   uniqueness catches two processes storing one send at once. Only when
//!   a message is deleted (alone or with its recipient's account) is its
//!   record copied into `sent_ids`, which therefore holds only the records
//!   of messages no longer stored (SQLite writes every record there): an
//!   append writes one row instead of two;
//! - a mailbox's acknowledgement state is a row of `mailbox_marks`, not
//!   columns of its account: the watermark `acked_through`, and
//!   `read_count`, the unread messages acks have passed. Acks lock only that
//!   row and appends only the account row, so the two never wait for each
//!   other, in one process with several writers or across processes. The
//!   unread count is `accounts.unread` (raised by appends, lowered by
//!   deletions) minus `read_count`;
//! - held messages' and labels' ids come from identity columns, and their
//!   bodies and client ids are `bytea` like messages'; scores are `real`
//!   (an `f32`, as the store's types hold them).

use std::time::Duration;

use tokio_postgres::Client;

use super::{PgOpenError, PgUrl};

/// The first key of the advisory lock taken around migrations ("PARL");
/// the second is a hash of the schema's name.
const MIGRATION_LOCK_CLASS: i32 = 0x5041_524C;

/// How long a process waits for another one's migration before it gives
/// up (and its supervisor retries).
const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(120);

/// The schema, as ordered steps; step `i` takes it from version `i` to
/// `i + 1`.
const MIGRATIONS: &[&str] = &[
    // Version 1: everything SQLite's version 6 holds.
    "CREATE TABLE accounts (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name text NOT NULL,
        name_key text COLLATE \"C\" NOT NULL UNIQUE,
        mechanism text NOT NULL,
        salt bytea NOT NULL,
        iterations bigint NOT NULL,
        stored_key bytea NOT NULL,
        server_key bytea NOT NULL,
        last_seq bigint NOT NULL DEFAULT 0,
        acked_through bigint NOT NULL DEFAULT 0,
        unread bigint NOT NULL DEFAULT 0,
        stored_messages bigint NOT NULL DEFAULT 0,
        stored_bytes bigint NOT NULL DEFAULT 0,
        created_ms bigint NOT NULL
    );
    CREATE SEQUENCE message_ids AS bigint;
    CREATE TABLE messages (
        recipient bigint NOT NULL,
        seq bigint NOT NULL,
        id bigint NOT NULL UNIQUE,
        sender bigint NOT NULL,
        sender_name text NOT NULL,
        client_msg_id bytea NOT NULL,
        body bytea NOT NULL,
        timestamp_ms bigint NOT NULL,
        acked boolean NOT NULL DEFAULT false,
        PRIMARY KEY (recipient, seq)
    );
    CREATE TABLE sent_ids (
        sender bigint NOT NULL,
        client_msg_id bytea NOT NULL,
        message_id bigint NOT NULL,
        recipient bigint NOT NULL,
        seq bigint NOT NULL,
        timestamp_ms bigint NOT NULL,
        PRIMARY KEY (sender, client_msg_id)
    );
    CREATE TABLE contacts (
        owner bigint NOT NULL,
        contact bigint NOT NULL,
        PRIMARY KEY (owner, contact)
    );
    CREATE INDEX contacts_contact ON contacts (contact);
    CREATE TABLE resume_tokens (
        hash bytea PRIMARY KEY,
        owner bigint NOT NULL,
        expires_ms bigint NOT NULL,
        created_seq bigint NOT NULL
    );
    CREATE INDEX resume_tokens_owner ON resume_tokens (owner, expires_ms, created_seq);
    CREATE TABLE invites (
        hash bytea PRIMARY KEY,
        expires_ms bigint NOT NULL
    );
    CREATE TABLE presence_subscriptions (
        watcher bigint NOT NULL,
        target bigint NOT NULL,
        approved boolean NOT NULL DEFAULT false,
        PRIMARY KEY (watcher, target)
    );
    CREATE INDEX presence_subscriptions_target ON presence_subscriptions (target, approved);
    CREATE TABLE blocks (
        blocker bigint NOT NULL,
        blocked bigint NOT NULL,
        PRIMARY KEY (blocker, blocked)
    );
    CREATE INDEX blocks_blocked ON blocks (blocked);
    CREATE TABLE server_secret (
        only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
        secret bytea NOT NULL CHECK (octet_length(secret) = 32)
    );",
    // Version 2: what acknowledgements change moves to a row of its own, so
    // that acks (which lock it) and appends (which lock the account row)
    // of one mailbox never wait for each other.
    "CREATE TABLE mailbox_marks (
        account bigint PRIMARY KEY,
        acked_through bigint NOT NULL DEFAULT 0,
        read_count bigint NOT NULL DEFAULT 0
    );
    INSERT INTO mailbox_marks (account, acked_through) SELECT id, acked_through FROM accounts;
    ALTER TABLE accounts DROP COLUMN acked_through",
    // Version 3: a stored message is its own idempotency record (a unique
    // index on its sender and client id), so an append writes one row, not
    // two; `sent_ids` keeps the records of messages no longer stored.
    "CREATE UNIQUE INDEX messages_sent ON messages (sender, client_msg_id);
    DELETE FROM sent_ids s USING messages m
        WHERE m.recipient = s.recipient AND m.seq = s.seq AND m.id = s.message_id",
    // Version 4: spam folders and the filter's labelled data, as SQLite's
    // version 7. `held_messages`: what the filter kept out of mailboxes,
    // touching no mailbox counter, seq or idempotency record of appends;
    // unique on (recipient, sender, client id), so that a resent hold (from
    // any process) finds its original; the index on (recipient, id) serves
    // listing a folder, dropping its oldest past `max_held` and deleting an
    // account. A hold locks its recipient's account row, so holds to one
    // folder from several processes take turns. `filter_labels`: labelled
    // texts, tied to no account, read in id order.
    "CREATE TABLE held_messages (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        recipient bigint NOT NULL,
        sender bigint NOT NULL,
        sender_name text NOT NULL,
        client_msg_id bytea NOT NULL,
        body bytea NOT NULL,
        timestamp_ms bigint NOT NULL,
        filter text NOT NULL,
        score real NOT NULL,
        CONSTRAINT held_messages_sent UNIQUE (recipient, sender, client_msg_id)
    );
    CREATE INDEX held_messages_recipient ON held_messages (recipient, id);
    CREATE TABLE filter_labels (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        body bytea NOT NULL,
        spam boolean NOT NULL,
        score real,
        marked_ms bigint NOT NULL
    )",
    // Version 5: no index on a message's id. Ids come from `message_ids`,
    // so they are unique without one, and the only statement that looks a
    // message up by id, a deletion, names its mailbox too: it reads that
    // mailbox's range of the primary key (at most `mailbox_max_messages`
    // rows, 10,000 by default). Keeping a third index up to date cost every
    // append more than a deletion now costs (docs/BENCHMARKS.md, Scale-out).
    "ALTER TABLE messages DROP CONSTRAINT messages_id_key",
];

/// The schema version this build creates and understands.
pub(super) fn supported_version() -> i32 {
    i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX)
}

/// Brings the schema up to date and returns the server secret, making one
/// from `fresh` if the database has none. `client` is a connection of its
/// own, closed afterwards: its advisory lock ends with it whatever happens.
pub(super) async fn prepare(client: &Client, url: &PgUrl, fresh: [u8; 32]) -> Result<[u8; 32], PgOpenError> {
    let failed = |error: tokio_postgres::Error| PgOpenError::Migrate {
        url: url.redacted(),
        why: describe(&error),
    };
    let schema: Option<String> = client
        .query_one("SELECT current_schema()", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(failed)?;
    if schema.is_none() {
        return Err(PgOpenError::NoSchema { url: url.redacted() });
    }
    client
        .batch_execute(&format!("SET lock_timeout = {}", MIGRATION_LOCK_WAIT.as_millis()))
        .await
        .map_err(failed)?;
    client
        .execute(
            "SELECT pg_advisory_lock($1, hashtext(current_schema()))",
            &[&MIGRATION_LOCK_CLASS],
        )
        .await
        .map_err(failed)?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS parley_schema (
                 version integer PRIMARY KEY,
                 applied_ms bigint NOT NULL
             )",
        )
        .await
        .map_err(failed)?;
    let found: i32 = client
        .query_one("SELECT coalesce(max(version), 0) FROM parley_schema", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(failed)?;
    let supported = supported_version();
    if found > supported {
        return Err(PgOpenError::SchemaTooNew {
            url: url.redacted(),
            found,
            supported,
        });
    }
    for (done, step) in MIGRATIONS.iter().enumerate().skip(usize::try_from(found).unwrap_or(0)) {
        let version = i32::try_from(done + 1).unwrap_or(i32::MAX);
        client
            .batch_execute(&format!(
                "BEGIN;
                 {step};
                 INSERT INTO parley_schema (version, applied_ms)
                     VALUES ({version}, (extract(epoch FROM clock_timestamp()) * 1000)::bigint);
                 COMMIT;"
            ))
            .await
            .map_err(failed)?;
        tracing::info!(url = %url.redacted(), version, "migrated store schema");
    }
    client
        .execute(
            "INSERT INTO server_secret (secret) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&&fresh[..]],
        )
        .await
        .map_err(failed)?;
    let secret: Vec<u8> = client
        .query_one("SELECT secret FROM server_secret", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(failed)?;
    client
        .execute(
            "SELECT pg_advisory_unlock($1, hashtext(current_schema()))",
            &[&MIGRATION_LOCK_CLASS],
        )
        .await
        .map_err(failed)?;
    <[u8; 32]>::try_from(secret.as_slice()).map_err(|_| PgOpenError::Migrate {
        url: url.redacted(),
        why: "the stored server secret is not 32 bytes".into(),
    })
}

/// A PostgreSQL error as one line: the server's message and code, or what
/// the client saw.
pub(super) fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use parley_testkit::postgres::Scratch;
    use tokio::task::JoinHandle;

    use super::*;

    /// A scratch database with the schema as version `version` left it and
    /// `rows` added, then migrated to the current version, with a
    /// connection to it (None without a test database).
    async fn migrated_from(version: usize, rows: &str) -> Option<(Scratch, Client, JoinHandle<()>)> {
        let (scratch, url, client, task) = super::super::test_support::scratch_client().await?;
        let mut sql =
            String::from("CREATE TABLE parley_schema (version integer PRIMARY KEY, applied_ms bigint NOT NULL);");
        for (done, step) in MIGRATIONS[..version].iter().enumerate() {
            sql.push_str(&format!("{step}; INSERT INTO parley_schema VALUES ({}, 0);", done + 1));
        }
        sql.push_str(rows);
        client.batch_execute(&sql).await.expect("an older schema");
        prepare(&client, &url, [1; 32]).await.expect("migrate");
        Some((scratch, client, task))
    }

    /// A database of version 1 keeps every mailbox's watermark and unread
    /// count when version 2 moves them to `mailbox_marks`.
    #[tokio::test]
    async fn version_2_keeps_the_marks_of_version_1() {
        let Some((_scratch, client, task)) = migrated_from(
            1,
            "INSERT INTO accounts (name, name_key, mechanism, salt, iterations, stored_key, server_key,
                                   last_seq, acked_through, unread, created_ms)
                 VALUES ('Bob', 'bob', 'SCRAM-SHA-256', '', 4096, '', '', 5, 2, 2, 0)",
        )
        .await
        else {
            return;
        };
        let row = client
            .query_one(
                "SELECT k.acked_through, a.unread - k.read_count, a.last_seq
                 FROM accounts a JOIN mailbox_marks k ON k.account = a.id WHERE a.name_key = 'bob'",
                &[],
            )
            .await
            .expect("bob's mailbox");
        assert_eq!(
            (row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2)),
            (2, 2, 5)
        );
        let gone = client
            .query_opt(
                "SELECT 1 FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = 'accounts' AND column_name = 'acked_through'",
                &[],
            )
            .await
            .expect("columns");
        assert!(gone.is_none(), "the watermark lives in mailbox_marks only");
        drop(client);
        let _ = task.await;
    }

    /// Version 3 keeps every idempotency record: those of stored messages
    /// move into the messages' own index, those of deleted ones stay.
    #[tokio::test]
    async fn version_3_keeps_every_idempotency_record() {
        let Some((_scratch, client, task)) = migrated_from(
            2,
            "INSERT INTO messages (id, recipient, seq, sender, sender_name, client_msg_id, body, timestamp_ms)
                 VALUES (7, 2, 1, 1, 'alice', 'kept', 'hi', 0);
             INSERT INTO sent_ids (sender, client_msg_id, message_id, recipient, seq, timestamp_ms)
                 VALUES (1, 'kept', 7, 2, 1, 0), (1, 'deleted', 6, 2, 9, 0)",
        )
        .await
        else {
            return;
        };
        let records: Vec<String> = client
            .query(
                "SELECT convert_from(client_msg_id, 'UTF8') FROM sent_ids ORDER BY 1",
                &[],
            )
            .await
            .expect("records")
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(records, ["deleted"], "the stored message is its own record");
        let twice = client
            .execute(
                "INSERT INTO messages (id, recipient, seq, sender, sender_name, client_msg_id, body, timestamp_ms)
                 VALUES (8, 2, 2, 1, 'alice', 'kept', 'again', 0)",
                &[],
            )
            .await;
        assert!(twice.is_err(), "one message per sender and client id");
        drop(client);
        let _ = task.await;
    }
}
