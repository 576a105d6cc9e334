//! What only the SQLite store has: persistence, group commit, admission
//! control and schema versions.

mod common;

use parley_core::store::{AckRange, MailboxState};
use parley_core::{MessageId, Seq, Store, StoreError};
use parley_store::{SqliteOptions, SqliteStore, StoreOpenError, Synchronous};

use common::{
    HOUR_MS, create_token, db_path, hash, held_ids, held_message, hold, label, live_tokens, message, new_account,
    now_ms, register, send,
};

/// The schema version this build writes.
const CURRENT_VERSION: i64 = 7;

/// The `PRAGMA user_version` of the database file.
fn schema_version(conn: &rusqlite::Connection) -> i64 {
    conn.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap()
}

/// The names of the tables in the database file, sorted.
fn tables(conn: &rusqlite::Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap();
    stmt.query_map([], |row| row.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn open(dir: &tempfile::TempDir, options: SqliteOptions) -> SqliteStore {
    SqliteStore::open(&db_path(dir.path()), options).expect("open")
}

#[tokio::test]
async fn everything_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, SqliteOptions::default());
    let alice = register(&store, "Alice").await;
    let bob = register(&store, "bob").await;
    let carol = register(&store, "carol").await;
    let m1 = send(&store, &alice, "bob", "m1", "one").await.message;
    let m2 = send(&store, &alice, "bob", "m2", "two").await.message;
    let m3 = send(&store, &carol, "bob", "m3", "three").await.message;
    store
        .ack(
            bob.id,
            AckRange {
                up_to: Seq(1),
                seqs: vec![],
            },
        )
        .await
        .unwrap();
    store.delete_messages(bob.id, vec![m3.id]).await.unwrap();
    store.delete_account(carol.id).await.unwrap();
    store.close().await.unwrap();
    // The checkpoint emptied the WAL into the database file.
    let wal = db_path(dir.path()).with_extension("db-wal");
    assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0);

    let store = open(&dir, SqliteOptions::default());
    assert_eq!(store.find_account("alice").await.unwrap(), Some(alice.clone()));
    assert_eq!(store.find_account("carol").await.unwrap(), None);
    let stored = store.fetch(bob.id, Seq(0), 10, true).await.unwrap();
    let mut m1_acked = (*m1).clone();
    m1_acked.acked = true;
    assert_eq!(stored, vec![m1_acked, (*m2).clone()]);
    assert_eq!(
        store.mailbox_state(bob.id).await,
        Ok(MailboxState {
            last_seq: Seq(3),
            unread: 1
        })
    );
    // Counters carry on where they were: seq, message id and user id.
    let m4 = send(&store, &alice, "bob", "m4", "four").await.message;
    assert_eq!(m4.seq, Seq(4));
    assert!(m4.id > m3.id);
    assert!(register(&store, "carol").await.id > carol.id);
    // Idempotency keys persist too.
    let retry = store.append(message(&alice, "bob", "m1", "one")).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.message.id, m1.id);
    store.close().await.unwrap();
}

/// The commit-latency and batch-size histograms count every committed
/// batch once, and the batch sizes add up to the operations committed.
#[tokio::test]
async fn histograms_describe_every_committed_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, SqliteOptions::default());
    let alice = register(&store, "alice").await;
    register(&store, "bob").await;
    let replies: Vec<_> = (0..100)
        .map(|n| store.append(message(&alice, "bob", &format!("m{n}"), "body")))
        .collect();
    for reply in replies {
        reply.await.expect("append");
    }
    let stats = store.stats().expect("the SQLite store reports stats");
    assert!(stats.commits >= 3, "{stats:?}");
    assert_eq!(stats.commit_micros.count(), stats.commits);
    assert_eq!(stats.batch_size.count(), stats.commits);
    assert_eq!(stats.batch_size.sum, stats.ops_committed);
    assert_eq!(stats.commit_micros.counts.len(), stats.commit_micros.bounds.len() + 1);
    assert!(stats.commit_micros.sum > 0);
    // At `full` (the default) the WAL's fsyncs are timed on their own: at
    // least one, and never more than the commits they answer.
    let syncs = stats.sync_micros.count();
    assert!(
        (1..=stats.commits).contains(&syncs),
        "{syncs} syncs for {} commits",
        stats.commits
    );
    assert_eq!(stats.queued, 0);
    assert_eq!(parley_store::MemoryStore::new().stats(), None);
    store.close().await.unwrap();
}

#[tokio::test]
async fn queued_appends_share_commits_and_keep_call_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, SqliteOptions::default());
    let alice = register(&store, "alice").await;
    let bob = register(&store, "bob").await;
    let before = store.batch_stats();
    let replies: Vec<_> = (0..200)
        .map(|n| store.append(message(&alice, "bob", &format!("m{n}"), &format!("body {n}"))))
        .collect();
    let mut last_id = 0;
    for (n, reply) in replies.into_iter().enumerate() {
        let appended = reply.await.expect("append");
        assert_eq!(appended.message.seq, Seq(n as u64 + 1), "seqs follow call order");
        assert_eq!(appended.message.client_msg_id, format!("m{n}"));
        assert!(appended.message.id.0 > last_id);
        last_id = appended.message.id.0;
    }
    let after = store.batch_stats();
    let commits = after.commits - before.commits;
    assert_eq!(after.ops_committed - before.ops_committed, 200);
    assert!(commits <= 20, "200 queued appends took {commits} commits");
    assert_eq!(
        store.mailbox_state(bob.id).await,
        Ok(MailboxState {
            last_seq: Seq(200),
            unread: 200
        })
    );
    store.close().await.unwrap();
}

/// Appends in a batch write their mailbox's `last_seq` back once; every
/// other operation queued between them, and the database after reopening,
/// must still see exact values.
#[tokio::test]
async fn seqs_assigned_in_a_batch_are_exact_for_everything_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, SqliteOptions::default());
    let alice = register(&store, "alice").await;
    let bob = register(&store, "bob").await;
    // Queued without awaiting, so they share batches.
    let first: Vec<_> = (0..5)
        .map(|n| store.append(message(&alice, "bob", &format!("a{n}"), "x")))
        .collect();
    let state = store.mailbox_state(bob.id);
    let to_alice = store.append(message(&bob, "alice", "b0", "y"));
    let second: Vec<_> = (5..8)
        .map(|n| store.append(message(&alice, "bob", &format!("a{n}"), "x")))
        .collect();
    let unread = store.fetch(bob.id, Seq(0), 100, false);
    for (n, reply) in first.into_iter().chain(second).enumerate() {
        assert_eq!(reply.await.unwrap().message.seq, Seq(n as u64 + 1));
    }
    assert_eq!(state.await.unwrap().last_seq, Seq(5));
    assert_eq!(to_alice.await.unwrap().message.seq, Seq(1));
    assert_eq!(unread.await.unwrap().len(), 8);
    store.close().await.unwrap();

    let store = open(&dir, SqliteOptions::default());
    assert_eq!(store.mailbox_state(bob.id).await.unwrap().last_seq, Seq(8));
    let next = store.append(message(&alice, "bob", "a8", "x")).await.unwrap();
    assert_eq!(next.message.seq, Seq(9));
    store.close().await.unwrap();
}

/// Appends in one batch find each recipient once; an account deleted and
/// created again under the same name between them, in the same batch, is
/// the new account for the appends after it, and unread counts and message
/// ids come out exact.
#[tokio::test]
async fn a_recipient_replaced_within_a_batch_gets_the_appends_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, SqliteOptions::default());
    let alice = register(&store, "alice").await;
    let old_bob = register(&store, "bob").await;
    // Queued without awaiting, so they share batches.
    let before: Vec<_> = (0..3)
        .map(|n| store.append(message(&alice, "bob", &format!("a{n}"), "x")))
        .collect();
    let deleted = store.delete_account(old_bob.id);
    let created = store.create_account(new_account("bob"));
    let after: Vec<_> = (3..5)
        .map(|n| store.append(message(&alice, "bob", &format!("a{n}"), "x")))
        .collect();
    let mut ids = Vec::new();
    for reply in before {
        let message = reply.await.unwrap().message;
        assert_eq!(message.recipient, old_bob.id);
        ids.push(message.id);
    }
    deleted.await.unwrap();
    let new_bob = created.await.unwrap();
    assert_ne!(new_bob.id, old_bob.id);
    for (n, reply) in after.into_iter().enumerate() {
        let message = reply.await.unwrap().message;
        assert_eq!((message.recipient, message.seq), (new_bob.id, Seq(n as u64 + 1)));
        ids.push(message.id);
    }
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "ids rise: {ids:?}");
    assert_eq!(
        store.mailbox_state(new_bob.id).await,
        Ok(MailboxState {
            last_seq: Seq(2),
            unread: 2
        })
    );
    assert_eq!(store.mailbox_state(old_bob.id).await, Err(StoreError::NoSuchUser));
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_failing_op_does_not_spoil_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, SqliteOptions::default());
    let alice = register(&store, "alice").await;
    // Queued together, so very likely in one batch; each must get its own answer.
    let taken = store.create_account(new_account("ALICE"));
    let to_nobody = store.append(message(&alice, "nobody", "x", "lost"));
    let ok = store.append(message(&alice, "alice", "note", "to self"));
    let created = store.create_account(new_account("bob"));
    assert_eq!(taken.await, Err(StoreError::NameTaken));
    assert_eq!(to_nobody.await.unwrap_err(), StoreError::NoSuchUser);
    assert_eq!(ok.await.unwrap().message.seq, Seq(1));
    assert!(created.await.unwrap().id > alice.id);
    assert_eq!(store.batch_stats().failed_batches, 0);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_full_queue_answers_busy_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        queue_capacity: 2,
        max_batch: 2,
        synchronous: Synchronous::Full,
        ..SqliteOptions::default()
    };
    let store = open(&dir, options);
    let alice = register(&store, "alice").await;
    // Submit without awaiting until the queue has refused something (the
    // counter tells at once, since a refusal is answered at call time).
    let mut replies = Vec::new();
    for n in 0..5000 {
        replies.push((n, store.append(message(&alice, "alice", &format!("m{n}"), "x"))));
        if n >= 100 && store.batch_stats().busy_rejections > 0 {
            break;
        }
    }
    let mut stored = Vec::new();
    let mut refused = Vec::new();
    for (n, reply) in replies {
        match reply.await {
            Ok(appended) => stored.push((n, appended.message.seq)),
            Err(StoreError::Busy { retry_after_ms }) => {
                assert_eq!(retry_after_ms, parley_store::BUSY_RETRY_AFTER_MS);
                refused.push(n);
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(!refused.is_empty(), "a queue of 2 never filled up");
    assert_eq!(store.batch_stats().busy_rejections, refused.len() as u64);
    // Accepted ops got consecutive seqs in call order; refused ones left no trace.
    let seqs: Vec<u64> = stored.iter().map(|(_, seq)| seq.0).collect();
    assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>());
    let in_mailbox: Vec<String> = store
        .fetch(alice.id, Seq(0), u32::MAX, true)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.client_msg_id)
        .collect();
    let expected: Vec<String> = stored.iter().map(|(n, _)| format!("m{n}")).collect();
    assert_eq!(in_mailbox, expected);
    store.close().await.unwrap();
}

#[tokio::test]
async fn new_work_leaves_room_in_the_queue_for_acks_and_reads() {
    // At `normal` an operation leaves the queue's count when the writer
    // takes it; at `full` only when it is answered, after the WAL's fsync.
    new_work_share(Synchronous::Normal, true).await;
    new_work_share(Synchronous::Full, false).await;
}

/// Fills the queue's share for new work while the writer is stuck on a
/// lock, with the first append counted against the queue or not
/// (`taken_leaves_count`).
async fn new_work_share(synchronous: Synchronous, taken_leaves_count: bool) {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        queue_capacity: 8,
        max_batch: 8,
        synchronous,
        ..SqliteOptions::default()
    };
    let store = open(&dir, options);
    let alice = register(&store, "alice").await;
    send(&store, &alice, "alice", "m0", "first").await;
    // Another connection holds the write lock, so the writer waits in its
    // BEGIN and whatever is submitted meanwhile stays queued.
    let blocker = rusqlite::Connection::open(db_path(dir.path())).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let first = store.append(message(&alice, "alice", "m1", "x"));
    if taken_leaves_count {
        // Wait until the writer took that one (it left the queue) and is
        // stuck on the lock.
        parley_testkit::wait_until(
            "the writer to take m1",
            std::time::Duration::from_secs(10),
            async || store.stats().is_some_and(|s| s.queued == 0),
        )
        .await;
    }
    let mut appends = Vec::new();
    for n in 2..20 {
        appends.push(store.append(message(&alice, "alice", &format!("m{n}"), "x")));
        if store.batch_stats().busy_rejections > 0 {
            break;
        }
    }
    // Three quarters of the queue: 6 appends (m1 among them unless it left
    // the count), the next refused.
    let admitted = if taken_leaves_count { 6 } else { 5 };
    assert_eq!(appends.len(), admitted + 1);
    // Acks and reads still get in.
    let ack = store.ack(
        alice.id,
        AckRange {
            up_to: Seq(1),
            seqs: vec![],
        },
    );
    let read = store.fetch(alice.id, Seq(0), 100, true);
    assert_eq!(store.batch_stats().busy_rejections, 1);
    blocker.execute_batch("COMMIT").unwrap();
    first.await.unwrap();
    let mut results = Vec::new();
    for reply in appends {
        results.push(reply.await.map(|a| a.message.seq.0));
    }
    assert_eq!(
        results.pop(),
        Some(Err(StoreError::Busy {
            retry_after_ms: parley_store::BUSY_RETRY_AFTER_MS
        }))
    );
    let last_seq = 2 + admitted as u64;
    assert_eq!(results, (3..=last_seq).map(Ok).collect::<Vec<_>>());
    assert_eq!(ack.await.unwrap().0, 1);
    assert_eq!(read.await.unwrap().len(), last_seq as usize);
    store.close().await.unwrap();
}

#[tokio::test]
async fn commits_reach_the_database_file_without_the_writer_checkpointing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, SqliteOptions::default());
    let alice = register(&store, "alice").await;
    for n in 0..200 {
        send(&store, &alice, "alice", &format!("m{n}"), "x").await;
    }
    // Far below the writer's own checkpoint threshold: only the
    // checkpointer thread copies the WAL into the database file.
    let copy = dir.path().join("copy.db");
    let in_file = || {
        let _ = std::fs::remove_file(&copy);
        std::fs::copy(db_path(dir.path()), &copy).unwrap();
        let conn = rusqlite::Connection::open(&copy).unwrap();
        conn.query_row("SELECT count(*) FROM messages", [], |row| row.get::<_, i64>(0))
            .unwrap_or(0)
    };
    parley_testkit::wait_until(
        "the database file alone to hold every committed message",
        std::time::Duration::from_secs(10),
        async || in_file() == 200,
    )
    .await;
    store.close().await.unwrap();
}

#[tokio::test]
async fn close_is_never_busy_and_finishes_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        queue_capacity: 4,
        max_batch: 4,
        synchronous: Synchronous::Full,
        ..SqliteOptions::default()
    };
    let store = open(&dir, options);
    let alice = register(&store, "alice").await;
    let mut replies = Vec::new();
    for n in 0..200 {
        replies.push(store.append(message(&alice, "alice", &format!("m{n}"), "x")));
    }
    store.close().await.expect("close with a full queue");
    let mut accepted = 0;
    for reply in replies {
        match reply.await {
            Ok(_) => accepted += 1,
            Err(StoreError::Busy { .. }) => {}
            Err(other) => panic!("queued work must finish before close, got {other}"),
        }
    }
    assert_eq!(
        store.append(message(&alice, "alice", "late", "x")).await.unwrap_err(),
        StoreError::Closed
    );
    let store = open(&dir, SqliteOptions::default());
    assert_eq!(store.mailbox_state(alice.id).await.unwrap().last_seq, Seq(accepted));
    store.close().await.unwrap();
}

#[tokio::test]
async fn every_durability_level_opens() {
    for synchronous in [Synchronous::Full, Synchronous::Normal, Synchronous::Off] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(
            &dir,
            SqliteOptions {
                synchronous,
                ..SqliteOptions::default()
            },
        );
        register(&store, "alice").await;
        store.close().await.unwrap();
        assert_eq!(
            Synchronous::from_name(&synchronous.name().to_uppercase()),
            Some(synchronous)
        );
    }
    assert_eq!(Synchronous::from_name("sometimes"), None);
}

#[test]
fn invalid_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for options in [
        SqliteOptions {
            queue_capacity: 0,
            ..SqliteOptions::default()
        },
        SqliteOptions {
            max_batch: 0,
            ..SqliteOptions::default()
        },
    ] {
        let result = SqliteStore::open(&db_path(dir.path()), options);
        assert!(matches!(result, Err(StoreOpenError::InvalidOptions(_))));
    }
}

#[tokio::test]
async fn a_newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, SqliteOptions::default());
    store.close().await.unwrap();
    let path = db_path(dir.path());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        assert_eq!(schema_version(&conn), CURRENT_VERSION);
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    match SqliteStore::open(&path, SqliteOptions::default()) {
        Err(
            error @ StoreOpenError::SchemaTooNew {
                found: 99,
                supported: CURRENT_VERSION,
                ..
            },
        ) => {
            assert!(error.to_string().contains("newer Parley"), "{error}");
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(schema_version(&conn), 99, "the refused database is left as it was");
}

#[tokio::test]
async fn reopening_does_not_migrate_again() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let store = open(&dir, SqliteOptions::default());
        let me = match store.find_account("alice").await.unwrap() {
            Some(account) => account,
            None => register(&store, "alice").await,
        };
        assert_eq!(
            send(&store, &me, "alice", &format!("r{round}"), "x").await.message.seq,
            Seq(round + 1)
        );
        store.close().await.unwrap();
    }
}

#[tokio::test]
async fn dropping_without_close_still_keeps_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, SqliteOptions::default());
    let alice = register(&store, "alice").await;
    send(&store, &alice, "alice", "m1", "x").await;
    drop(store);
    let store = open(&dir, SqliteOptions::default());
    assert_eq!(store.mailbox_state(alice.id).await.unwrap().last_seq, Seq(1));
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usable_through_a_trait_object_from_many_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(open(&dir, SqliteOptions::default()));
    let bob = register(&*store, "bob").await;
    let mut tasks = Vec::new();
    for sender in 0..8 {
        let store = std::sync::Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let me = register(&*store, &format!("sender{sender}")).await;
            let replies: Vec<_> = (0..50)
                .map(|n| store.append(message(&me, "bob", &format!("m{n}"), "x")))
                .collect();
            let mut last = 0;
            for reply in replies {
                let seq = reply.await.expect("append").message.seq.0;
                assert!(seq > last, "one task's sends keep their order");
                last = seq;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        store.mailbox_state(bob.id).await,
        Ok(MailboxState {
            last_seq: Seq(400),
            unread: 400
        })
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn contacts_and_tokens_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, SqliteOptions::default());
    let alice = register(&store, "alice").await;
    let bob = register(&store, "Bob").await;
    register(&store, "carol").await;
    store.add_contact(alice.id, "carol", 10).await.unwrap();
    store.add_contact(alice.id, "bob", 10).await.unwrap();
    store.add_contact(bob.id, "alice", 10).await.unwrap();
    let expires = now_ms() + HOUR_MS;
    // Same expiry: only insertion order tells them apart.
    for n in 1..=3 {
        create_token(&store, &alice, n, expires, 3).await;
    }
    create_token(&store, &bob, 4, expires, 3).await;
    store.close().await.unwrap();

    let store = open(&dir, SqliteOptions::default());
    let listed = store.list_contacts(alice.id).await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|c| c.name_key.as_str()).collect();
    assert_eq!(keys, vec!["bob", "carol"]);
    assert_eq!(listed[0].name, "Bob");
    assert_eq!(store.list_contacts(bob.id).await.unwrap().len(), 1);
    assert_eq!(store.resume(hash(1), 0).await, Ok(Some(alice.clone())));
    assert_eq!(store.resume(hash(4), 0).await, Ok(Some(bob.clone())));
    // Insertion order persisted: the first token is the one pruned.
    create_token(&store, &alice, 5, expires, 3).await;
    assert_eq!(live_tokens(&store, 1..=5, 0).await, vec![2, 3, 4, 5]);
    // The limit counts the persisted rows.
    assert!(matches!(
        store.add_contact(alice.id, "alice", 2).await,
        Err(StoreError::LimitReached(_))
    ));
    store.revoke_resume_token(hash(2)).await.unwrap();
    store.remove_contact(alice.id, "carol").await.unwrap();
    drop(store);

    // Acknowledged removals persist even without a close.
    let store = open(&dir, SqliteOptions::default());
    assert_eq!(live_tokens(&store, 1..=5, 0).await, vec![3, 4, 5]);
    assert_eq!(store.list_contacts(alice.id).await.unwrap().len(), 1);
    store.close().await.unwrap();
}

/// Turns a current database back into what version 2 wrote, with the same
/// data: per-row acks under the partial index, ids from AUTOINCREMENT (its
/// `sqlite_sequence` row at the highest id ever handed out), no counters.
/// Takes a current database back to version 3: no mailbox counts.
fn downgrade_to_version_3(conn: &rusqlite::Connection) {
    conn.execute_batch(
        "BEGIN;
         DROP TABLE held_messages;
         DROP TABLE filter_labels;
         DROP TABLE presence_subscriptions;
         DROP TABLE blocks;
         DROP TABLE invites;
         ALTER TABLE accounts DROP COLUMN stored_messages;
         ALTER TABLE accounts DROP COLUMN stored_bytes;
         PRAGMA user_version = 3;
         COMMIT;",
    )
    .unwrap();
    assert_eq!(schema_version(conn), 3);
}

fn downgrade_to_version_2(conn: &rusqlite::Connection) {
    downgrade_to_version_3(conn);
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE messages_v2 (
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
         INSERT INTO messages_v2
             SELECT m.id, m.recipient, m.seq, m.sender, m.sender_name, m.client_msg_id, m.body,
                    m.timestamp_ms, m.acked OR m.seq <= a.acked_through
             FROM messages AS m JOIN accounts AS a ON a.id = m.recipient;
         UPDATE sqlite_sequence SET seq = (SELECT value FROM counters WHERE name = 'message_id')
             WHERE name = 'messages_v2';
         DROP TABLE messages;
         ALTER TABLE messages_v2 RENAME TO messages;
         CREATE INDEX messages_unacked ON messages (recipient, seq) WHERE acked = 0;
         DROP TABLE counters;
         ALTER TABLE accounts DROP COLUMN acked_through;
         ALTER TABLE accounts DROP COLUMN unread;
         PRAGMA user_version = 2;
         COMMIT;",
    )
    .unwrap();
    assert_eq!(schema_version(conn), 2);
}

/// A database of an older version keeps its data through the migrations:
/// accounts, messages with what was acked, idempotency keys, and counters
/// that carry on (a deleted message's id is not handed out again).
async fn migrates_with_its_data(from: i64) {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let store = open(&dir, SqliteOptions::default());
    let alice = register(&store, "Alice").await;
    let bob = register(&store, "bob").await;
    let m1 = send(&store, &alice, "bob", "m1", "one").await.message;
    let m2 = send(&store, &alice, "bob", "m2", "two").await.message;
    let m3 = send(&store, &alice, "bob", "m3", "three").await.message;
    let m4 = send(&store, &alice, "bob", "m4", "four").await.message;
    send(&store, &bob, "alice", "b1", "back").await;
    let range = AckRange {
        up_to: Seq(1),
        seqs: vec![Seq(3)],
    };
    assert_eq!(store.ack(bob.id, range).await.unwrap().0, 2);
    // The highest id ever handed out goes.
    assert_eq!(store.delete_messages(bob.id, vec![m4.id]).await, Ok(vec![m4.id]));
    // A contact followed before presence needed consent.
    store.add_contact(alice.id, "bob", 10).await.unwrap();
    store.close().await.unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        assert_eq!(schema_version(&conn), CURRENT_VERSION);
        downgrade_to_version_2(&conn);
        if from == 1 {
            // Version 1 had neither contacts nor resume tokens.
            conn.execute_batch(
                "BEGIN;
                 DROP TABLE contacts;
                 DROP TABLE resume_tokens;
                 PRAGMA user_version = 1;
                 COMMIT;",
            )
            .unwrap();
            assert_eq!(tables(&conn), vec!["accounts", "messages", "sent_ids"]);
        }
        assert_eq!(schema_version(&conn), from);
    }

    let store = open(&dir, SqliteOptions::default());
    if from >= 2 {
        // A contact followed without consent became a request to answer.
        let requests = store.presence_requests(bob.id, 10).await.unwrap();
        assert_eq!(requests.iter().map(|a| a.id).collect::<Vec<_>>(), [alice.id]);
        let contacts = store.contacts_with_presence(alice.id).await.unwrap();
        assert_eq!(contacts[0].subscription, parley_core::presence::Subscription::Pending);
    }
    // The old data is all there, acks included.
    assert_eq!(store.find_account("alice").await.unwrap(), Some(alice.clone()));
    let acked = |m: &std::sync::Arc<parley_core::store::StoredMessage>| {
        let mut m = (**m).clone();
        m.acked = true;
        m
    };
    assert_eq!(
        store.fetch(bob.id, Seq(0), 10, true).await.unwrap(),
        vec![acked(&m1), (*m2).clone(), acked(&m3)]
    );
    assert_eq!(
        store.fetch(bob.id, Seq(0), 10, false).await.unwrap(),
        vec![(*m2).clone()]
    );
    assert_eq!(
        store.mailbox_state(bob.id).await,
        Ok(MailboxState {
            last_seq: Seq(4),
            unread: 1
        })
    );
    let retry = store.append(message(&alice, "bob", "m1", "one")).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(*retry.message, acked(&m1));
    // Seqs, message ids and user ids carry on.
    let m5 = send(&store, &alice, "bob", "m5", "five").await.message;
    assert_eq!((m5.seq, m5.id.0), (Seq(5), m4.id.0 + 2));
    assert!(register(&store, "carol").await.id > bob.id);
    assert_eq!(store.mailbox_state(bob.id).await.unwrap().unread, 2);
    // Acks work on the migrated mailbox.
    let range = AckRange {
        up_to: Seq(5),
        seqs: vec![],
    };
    assert_eq!(store.ack(bob.id, range).await.unwrap().0, 2);
    // The tables version 2 added work, and those of version 7.
    store.add_contact(alice.id, "bob", 10).await.unwrap();
    create_token(&store, &alice, 1, now_ms() + HOUR_MS, 3).await;
    let held = hold(&store, &alice, "bob", "s1", "spam").await;
    assert_eq!(held_ids(&store, &bob).await, [held.id]);
    store.add_label(label("spam", true, Some(0.5), 1)).await.unwrap();
    store.close().await.unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        assert_eq!(schema_version(&conn), CURRENT_VERSION);
        assert_eq!(
            tables(&conn),
            vec![
                "accounts",
                "blocks",
                "contacts",
                "counters",
                "filter_labels",
                "held_messages",
                "invites",
                "messages",
                "presence_subscriptions",
                "resume_tokens",
                "sent_ids"
            ]
        );
    }

    // And the upgraded file reopens as is.
    let store = open(&dir, SqliteOptions::default());
    assert_eq!(store.list_contacts(alice.id).await.unwrap().len(), 1);
    assert_eq!(store.resume(hash(1), 0).await, Ok(Some(alice)));
    assert_eq!(store.mailbox_state(bob.id).await.unwrap().unread, 0);
    store.close().await.unwrap();
}

/// Version 4 counts the messages already in each mailbox, acked or not,
/// and their bytes: the quota holds for mailboxes filled before it.
#[tokio::test]
async fn a_version_3_database_gets_its_mailbox_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let store = open(&dir, SqliteOptions::default());
    let alice = register(&store, "alice").await;
    let bob = register(&store, "bob").await;
    for (id, body) in [("m1", "12345"), ("m2", "héllo"), ("m3", "x")] {
        send(&store, &alice, "bob", id, body).await;
    }
    let range = AckRange {
        up_to: Seq(1),
        seqs: vec![],
    };
    store.ack(bob.id, range).await.unwrap();
    send(&store, &bob, "alice", "b1", "back").await;
    store.close().await.unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        downgrade_to_version_3(&conn);
    }
    let store = open(&dir, SqliteOptions::default());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let counts: Vec<(String, u64, u64)> = conn
            .prepare("SELECT name_key, stored_messages, stored_bytes FROM accounts ORDER BY name_key")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // "héllo" is 6 bytes of UTF-8.
        assert_eq!(counts, vec![("alice".into(), 1, 4), ("bob".into(), 3, 12)]);
    }
    let quota = |id: &str, body: &str, max_messages: u64, max_bytes: u64| parley_core::store::NewMessage {
        quota: parley_core::store::MailboxQuota {
            max_messages,
            max_bytes,
        },
        ..message(&alice, "bob", id, body)
    };
    assert_eq!(
        store.append(quota("m4", "y", 3, 100)).await.map(drop),
        Err(StoreError::MailboxFull)
    );
    assert_eq!(
        store.append(quota("m4", "y", 4, 12)).await.map(drop),
        Err(StoreError::MailboxFull)
    );
    store.append(quota("m4", "y", 4, 13)).await.unwrap();
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_version_1_database_is_migrated_with_its_data() {
    migrates_with_its_data(1).await;
}

#[tokio::test]
async fn a_version_2_database_is_migrated_with_its_data() {
    migrates_with_its_data(2).await;
}

/// A full database (its size bound, as a full disk) refuses writes with
/// `Unavailable`, fails nothing else queued with them, keeps reads going,
/// says why while it lasts, and recovers by itself once there is room.
#[tokio::test]
async fn a_full_database_refuses_writes_alone_and_recovers_when_room_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        &dir,
        SqliteOptions {
            max_db_bytes: 1 << 20,
            ..SqliteOptions::default()
        },
    );
    let alice = register(&store, "alice").await;
    let bob = register(&store, "bob").await;
    let body = "x".repeat(30_000);
    let mut stored = Vec::new();
    let full = loop {
        let n = stored.len();
        assert!(n < 200, "a 1 MiB database never filled");
        match store.append(message(&alice, "bob", &format!("fill-{n}"), &body)).await {
            Ok(appended) => stored.push(appended.message.id),
            Err(error) => break error,
        }
    };
    assert!(matches!(full, StoreError::Unavailable(_)), "{full:?}");
    assert!(store.write_failure().is_some(), "the store says writes fail");
    // Queued together with failing writes, reads and other writes get their
    // own answers: none carries the failed write's error.
    let mut replies = Vec::new();
    for i in 0..20 {
        replies.push((
            store.append(message(&alice, "bob", &format!("more-{i}"), &body)),
            store.fetch(bob.id, Seq(0), 5, true),
            store.mailbox_state(bob.id),
        ));
    }
    for (append, fetch, state) in replies {
        assert!(matches!(append.await, Err(StoreError::Unavailable(_))));
        assert_eq!(fetch.await.unwrap().len(), 5);
        assert_eq!(state.await.unwrap().last_seq, Seq(stored.len() as u64));
    }
    // Deleting messages makes room: writes succeed again, by themselves.
    let half: Vec<MessageId> = stored[..stored.len() / 2].to_vec();
    store.delete_messages(bob.id, half).await.unwrap();
    send(&store, &alice, "bob", "after", "room again").await;
    assert_eq!(store.write_failure(), None);
    store.close().await.unwrap();
}

/// Spam folders and labels persist, and their ids carry on past the
/// highest ever handed out, even when its row is gone.
#[tokio::test]
async fn held_messages_and_labels_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, SqliteOptions::default());
    let alice = register(&store, "alice").await;
    let bob = register(&store, "bob").await;
    let s1 = hold(&store, &alice, "bob", "s1", "one").await;
    let s2 = hold(&store, &alice, "bob", "s2", "two\0with nul").await;
    let s3 = hold(&store, &alice, "bob", "s3", "three").await;
    assert_eq!(store.drop_held(bob.id, vec![s3.id]).await, Ok(vec![s3.id]));
    let folder = store.held(bob.id, 0, 10).await.unwrap();
    let l1 = store.add_label(label("buy now", true, Some(0.875), 7)).await.unwrap();
    let l2 = store.add_label(label("lunch?", false, None, 8)).await.unwrap();
    let labels = store.labels(0, 10).await.unwrap();
    store.close().await.unwrap();

    let store = open(&dir, SqliteOptions::default());
    assert_eq!(store.held(bob.id, 0, 10).await.unwrap(), folder);
    assert_eq!(folder.iter().map(|m| m.id).collect::<Vec<_>>(), [s1.id, s2.id]);
    assert_eq!(store.labels(0, 10).await.unwrap(), labels);
    assert_eq!(labels.iter().map(|l| l.id).collect::<Vec<_>>(), [l1, l2]);
    // A retry is still recognised; new ids carry on past the dropped one.
    let retry = store.hold(held_message(&alice, "bob", "s1", "one", 10)).await.unwrap();
    assert_eq!((retry.id, retry.duplicate), (s1.id, true));
    let s4 = hold(&store, &alice, "bob", "s4", "four").await;
    assert!(s4.id > s3.id);
    assert!(store.add_label(label("x", true, None, 9)).await.unwrap() > l2);
    // The bound counts the persisted rows.
    let s5 = store.hold(held_message(&alice, "bob", "s5", "five", 2)).await.unwrap();
    assert_eq!(held_ids(&store, &bob).await, [s4.id, s5.id]);
    // Nothing of it touched the mailbox.
    assert_eq!(store.mailbox_state(bob.id).await, Ok(MailboxState::default()));
    drop(store);

    // Acknowledged holds persist even without a close.
    let store = open(&dir, SqliteOptions::default());
    assert_eq!(held_ids(&store, &bob).await, [s4.id, s5.id]);
    store.close().await.unwrap();
}
