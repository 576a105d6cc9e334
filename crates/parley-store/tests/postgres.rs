//! What only the PostgreSQL store has: persistence in a database that
//! several stores (processes) share, group commit, admission control,
//! migrations, and what happens when the database goes away. Every test
//! works in a scratch schema of its own and skips (saying why) when the
//! test database does not answer, unless PARLEY_REQUIRE_SERVICES=1.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use parley_core::store::{AckRange, MailboxState, NewMessage};
use parley_core::{Seq, Store, StoreError};
use parley_store::{PgOpenError, PgOptions, PgStore, PgUrl};
use parley_testkit::postgres::Scratch;
use parley_testkit::proxy::TcpProxy;

use common::{held_ids, held_message, hold, label, message, new_account, pg_options, register, send};

/// The longest a test waits for something to happen.
const WAIT: Duration = Duration::from_secs(20);

fn open(scratch: &Scratch) -> PgStore {
    PgStore::open(pg_options(scratch)).expect("open")
}

/// Waits until `done` holds, failing after [`WAIT`].
async fn eventually(what: &str, done: impl AsyncFnMut() -> bool) {
    parley_testkit::wait_until(what, WAIT, done).await
}

/// A connection of the test's own to the scratch schema, driven on the
/// test's runtime.
async fn connect(scratch: &Scratch) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(scratch.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn everything_survives_close_and_reopen() {
    let Some(scratch) = Scratch::create() else { return };
    let store = open(&scratch);
    let secret = store.server_secret();
    let alice = register(&store, "Alice").await;
    let bob = register(&store, "bob").await;
    let carol = register(&store, "carol").await;
    let m1 = send(&store, &alice, "bob", "m1", "one").await.message;
    let m2 = send(&store, &alice, "bob", "m2", "two").await.message;
    let m3 = send(&store, &carol, "bob", "m3", "three").await.message;
    let up_to_first = AckRange {
        up_to: Seq(1),
        seqs: vec![],
    };
    store.ack(bob.id, up_to_first).await.unwrap();
    store.delete_messages(bob.id, vec![m3.id]).await.unwrap();
    store.delete_account(carol.id).await.unwrap();
    store.close().await.unwrap();

    let store = open(&scratch);
    assert_eq!(store.server_secret(), secret, "the secret is kept in the database");
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
    store.close().await.unwrap();
}

#[tokio::test]
async fn queued_appends_share_commits_and_keep_call_order() {
    let Some(scratch) = Scratch::create() else { return };
    let store = open(&scratch);
    let alice = register(&store, "alice").await;
    let bob = register(&store, "bob").await;
    let before = store.stats().expect("stats");
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
    let after = store.stats().expect("stats");
    let commits = after.commits - before.commits;
    assert_eq!(after.ops_committed - before.ops_committed, 200);
    assert!(commits <= 20, "200 queued appends took {commits} commits");
    assert_eq!(after.commit_micros.count(), after.commits);
    assert_eq!(after.batch_size.sum, after.ops_committed);
    assert_eq!(after.failed_batches, 0);
    assert_eq!(
        store.mailbox_state(bob.id).await,
        Ok(MailboxState {
            last_seq: Seq(200),
            unread: 200
        })
    );
    store.close().await.unwrap();
}

/// A batch first looks only for deleted messages' idempotency records; a
/// resend of a stored message is found by its insert, and the batch runs
/// again. Resends queued among new messages are answered with their
/// originals, the new ones are stored once each, in call order, with no
/// seq lost to the first try, and nothing counts as a failed batch.
#[tokio::test]
async fn resends_among_new_messages_get_their_originals_and_lose_no_seq() {
    let Some(scratch) = Scratch::create() else { return };
    let store = open(&scratch);
    let alice = register(&store, "alice").await;
    let bob = register(&store, "bob").await;
    let mut originals = Vec::new();
    for n in 0..50 {
        originals.push(send(&store, &alice, "bob", &format!("old-{n}"), &format!("old {n}")).await);
    }
    // Deleted ones are answered from the records their deletion kept.
    let gone: Vec<_> = originals[..10].iter().map(|a| a.message.id).collect();
    assert_eq!(store.delete_messages(bob.id, gone.clone()).await.unwrap(), gone);
    let before = store.stats().expect("stats");
    let replies: Vec<_> = (0..100)
        .map(|n| {
            if n % 2 == 0 {
                store.append(message(&alice, "bob", &format!("new-{n}"), &format!("new {n}")))
            } else {
                let k = n / 2;
                store.append(message(&alice, "bob", &format!("old-{k}"), &format!("old {k}")))
            }
        })
        .collect();
    // A resend of one of them queued in the same burst: found in the run
    // that stores it, or by the next one.
    let again = store.append(message(&alice, "bob", "new-0", "new 0"));
    let mut next_seq = 51;
    let mut first_new = None;
    for (n, reply) in replies.into_iter().enumerate() {
        let appended = reply.await.expect("append");
        if n % 2 == 0 {
            assert!(!appended.duplicate, "new-{n} is new");
            assert_eq!(appended.message.seq, Seq(next_seq), "new-{n} takes the next seq");
            next_seq += 1;
            first_new.get_or_insert(appended.message);
        } else {
            let original = &originals[n / 2].message;
            assert!(appended.duplicate, "old-{} is a resend", n / 2);
            assert_eq!(
                (appended.message.id, appended.message.seq),
                (original.id, original.seq),
                "old-{} is answered with its original",
                n / 2
            );
        }
    }
    let again = again.await.expect("append");
    assert!(again.duplicate);
    assert_eq!(Some(again.message), first_new, "new-0's resend gets new-0");
    let after = store.stats().expect("stats");
    assert_eq!(after.failed_batches, before.failed_batches);
    assert_eq!(
        store.mailbox_state(bob.id).await.map(|state| state.last_seq),
        Ok(Seq(100))
    );
    let stored = store.fetch(bob.id, Seq(0), u32::MAX, true).await.unwrap();
    assert_eq!(stored.len(), 90, "40 kept, 50 new, no resend stored again");
    store.close().await.unwrap();
}

/// Appends, acks, reads and account changes queued together, so that they
/// share batches: each sees exactly what was called before it.
#[tokio::test]
async fn operations_in_one_batch_see_each_other_in_call_order() {
    let Some(scratch) = Scratch::create() else { return };
    let store = open(&scratch);
    let alice = register(&store, "alice").await;
    let old_bob = register(&store, "bob").await;
    let first: Vec<_> = (0..5)
        .map(|n| store.append(message(&alice, "bob", &format!("a{n}"), "x")))
        .collect();
    let state = store.mailbox_state(old_bob.id);
    let ack = store.ack(
        old_bob.id,
        AckRange {
            up_to: Seq(2),
            seqs: vec![Seq(4)],
        },
    );
    let unread = store.fetch(old_bob.id, Seq(0), 100, false);
    let deleted = store.delete_account(old_bob.id);
    let created = store.create_account(new_account("bob"));
    let after: Vec<_> = (5..7)
        .map(|n| store.append(message(&alice, "bob", &format!("a{n}"), "x")))
        .collect();
    for (n, reply) in first.into_iter().enumerate() {
        let message = reply.await.unwrap().message;
        assert_eq!((message.recipient, message.seq), (old_bob.id, Seq(n as u64 + 1)));
    }
    assert_eq!(
        state.await,
        Ok(MailboxState {
            last_seq: Seq(5),
            unread: 5
        })
    );
    assert_eq!(
        ack.await,
        Ok((
            3,
            MailboxState {
                last_seq: Seq(5),
                unread: 2
            }
        ))
    );
    let unread: Vec<u64> = unread.await.unwrap().iter().map(|m| m.seq.0).collect();
    assert_eq!(unread, vec![3, 5]);
    deleted.await.unwrap();
    let new_bob = created.await.unwrap();
    for (n, reply) in after.into_iter().enumerate() {
        let message = reply.await.unwrap().message;
        assert_eq!((message.recipient, message.seq), (new_bob.id, Seq(n as u64 + 1)));
    }
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_failing_op_does_not_spoil_its_batch() {
    let Some(scratch) = Scratch::create() else { return };
    let store = open(&scratch);
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
    assert_eq!(store.stats().unwrap().failed_batches, 0);
    store.close().await.unwrap();
}

/// A row PostgreSQL refuses (a sender name with NUL, which its text cannot
/// hold) fails its batch; the batch then runs one op at a time, so only
/// that op fails, and no seq is lost.
#[tokio::test]
async fn a_row_the_database_refuses_fails_alone() {
    let Some(scratch) = Scratch::create() else { return };
    let store = open(&scratch);
    let alice = register(&store, "alice").await;
    let bob = register(&store, "bob").await;
    let before: Vec<_> = (0..3)
        .map(|n| store.append(message(&alice, "bob", &format!("b{n}"), "x")))
        .collect();
    let bad = store.append(NewMessage {
        sender_name: "al\0ice".into(),
        ..message(&alice, "bob", "bad", "x")
    });
    let after: Vec<_> = (3..6)
        .map(|n| store.append(message(&alice, "bob", &format!("b{n}"), "x")))
        .collect();
    let mut seqs = Vec::new();
    for reply in before {
        seqs.push(reply.await.unwrap().message.seq.0);
    }
    assert!(matches!(bad.await, Err(StoreError::Backend(_))));
    for reply in after {
        seqs.push(reply.await.unwrap().message.seq.0);
    }
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
    assert_eq!(store.mailbox_state(bob.id).await.unwrap().last_seq, Seq(6));
    // Bodies and client ids may hold NUL, as in SQLite.
    let odd = send(&store, &alice, "bob", "id\0with nul", "body\0with nul")
        .await
        .message;
    let stored = store.fetch(bob.id, Seq(6), 10, true).await.unwrap();
    assert_eq!(stored, vec![(*odd).clone()]);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_full_queue_answers_busy_and_stores_nothing() {
    let Some(scratch) = Scratch::create() else { return };
    let store = PgStore::open(PgOptions {
        queue_capacity: 2,
        max_batch: 2,
        ..pg_options(&scratch)
    })
    .expect("open");
    let alice = register(&store, "alice").await;
    let mut replies = Vec::new();
    for n in 0..5000 {
        replies.push((n, store.append(message(&alice, "alice", &format!("m{n}"), "x"))));
        if n >= 100 && store.stats().unwrap().busy_rejections > 0 {
            break;
        }
    }
    let mut stored = Vec::new();
    let mut refused = 0;
    for (n, reply) in replies {
        match reply.await {
            Ok(appended) => stored.push((n, appended.message.seq)),
            Err(StoreError::Busy { retry_after_ms }) => {
                assert_eq!(retry_after_ms, parley_store::BUSY_RETRY_AFTER_MS);
                refused += 1;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(refused > 0, "a queue of 2 never filled up");
    assert_eq!(store.stats().unwrap().busy_rejections, refused);
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
    let Some(scratch) = Scratch::create() else { return };
    let store = PgStore::open(PgOptions {
        queue_capacity: 8,
        max_batch: 8,
        ..pg_options(&scratch)
    })
    .expect("open");
    let alice = register(&store, "alice").await;
    send(&store, &alice, "alice", "m0", "first").await;
    // Another session holds alice's row, so the writer waits in its first
    // append and whatever is submitted meanwhile stays queued.
    let mut blocker = connect(&scratch).await;
    let hold = blocker.transaction().await.unwrap();
    hold.execute("SELECT 1 FROM accounts WHERE name_key = 'alice' FOR UPDATE", &[])
        .await
        .unwrap();
    let first = store.append(message(&alice, "alice", "m1", "x"));
    eventually("the writer takes the append", async || {
        store.stats().unwrap().queued == 0
    })
    .await;
    let mut appends = Vec::new();
    for n in 2..20 {
        appends.push(store.append(message(&alice, "alice", &format!("m{n}"), "x")));
        if store.stats().unwrap().busy_rejections > 0 {
            break;
        }
    }
    // Three quarters of the queue: 6 appends, the 7th refused.
    assert_eq!(appends.len(), 7);
    // Acks and reads still get in.
    let ack = store.ack(
        alice.id,
        AckRange {
            up_to: Seq(1),
            seqs: vec![],
        },
    );
    let read = store.fetch(alice.id, Seq(0), 100, true);
    assert_eq!(store.stats().unwrap().busy_rejections, 1);
    hold.commit().await.unwrap();
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
    assert_eq!(results, (3..=8).map(Ok).collect::<Vec<_>>());
    assert_eq!(ack.await.unwrap().0, 1);
    assert_eq!(read.await.unwrap().len(), 8);
    store.close().await.unwrap();
}

#[tokio::test]
async fn close_finishes_the_queue_and_refuses_later_work() {
    let Some(scratch) = Scratch::create() else { return };
    let store = PgStore::open(PgOptions {
        queue_capacity: 4,
        max_batch: 4,
        ..pg_options(&scratch)
    })
    .expect("open");
    let alice = register(&store, "alice").await;
    let replies: Vec<_> = (0..200)
        .map(|n| store.append(message(&alice, "alice", &format!("m{n}"), "x")))
        .collect();
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
    assert_eq!(store.close().await, Ok(()));
    let store = open(&scratch);
    assert_eq!(store.mailbox_state(alice.id).await.unwrap().last_seq, Seq(accepted));
    store.close().await.unwrap();
}

/// Processes that start together on a fresh schema migrate it once; each
/// finds the others' work and the same server secret.
#[tokio::test]
async fn stores_opened_together_migrate_once() {
    let Some(scratch) = Scratch::create() else { return };
    let url = scratch.url().to_owned();
    let opening: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                PgStore::open(PgOptions {
                    pool_size: 1,
                    ..PgOptions::new(PgUrl::parse(&url).unwrap())
                })
            })
        })
        .collect();
    let stores: Vec<PgStore> = opening.into_iter().map(|t| t.join().unwrap().expect("open")).collect();
    let secrets: Vec<[u8; 32]> = stores.iter().map(PgStore::server_secret).collect();
    assert!(secrets.windows(2).all(|pair| pair[0] == pair[1]), "one secret for all");
    let versions = scratch
        .column("SELECT version FROM parley_schema ORDER BY version")
        .unwrap();
    assert_eq!(versions, ["1", "2", "3", "4", "5"]);
    register(&stores[0], "alice").await;
    assert!(stores[3].find_account("alice").await.unwrap().is_some());
    for store in &stores {
        store.close().await.unwrap();
    }
    // Opening again changes nothing.
    open(&scratch).close().await.unwrap();
    let versions = scratch
        .column("SELECT version FROM parley_schema ORDER BY version")
        .unwrap();
    assert_eq!(versions, ["1", "2", "3", "4", "5"]);
}

#[tokio::test]
async fn a_newer_schema_is_refused_untouched() {
    let Some(scratch) = Scratch::create() else { return };
    open(&scratch).close().await.unwrap();
    scratch
        .execute("INSERT INTO parley_schema (version, applied_ms) VALUES (999, 0)")
        .unwrap();
    match PgStore::open(pg_options(&scratch)) {
        Err(PgOpenError::SchemaTooNew { found, supported, .. }) => {
            assert_eq!(found, 999);
            assert!(supported < found);
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    let versions = scratch
        .column("SELECT version FROM parley_schema ORDER BY version")
        .unwrap();
    assert_eq!(versions, ["1", "2", "3", "4", "5", "999"]);
}

#[tokio::test]
async fn where_there_is_no_database_opening_says_why() {
    let Some(scratch) = Scratch::create() else { return };
    let nowhere = format!("{}_missing", scratch.url());
    match PgStore::open(pg_options_for(&nowhere)) {
        Err(PgOpenError::NoSchema { url }) => assert!(!url.contains("search_path"), "{url}"),
        other => panic!("expected NoSchema, got {other:?}"),
    }
    // A port nobody listens on: refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap();
    drop(closed);
    match PgStore::open(pg_options_for(&scratch.url_via(port))) {
        Err(PgOpenError::Connect { url, why }) => {
            assert!(url.contains(&port.to_string()), "{url}");
            assert!(!why.is_empty());
        }
        other => panic!("expected Connect, got {other:?}"),
    }
    assert!(PgUrl::parse("postgres://u:pw@127.0.0.1/db?sslmode=require").is_err());
    assert!(PgUrl::parse("not a url at all ===").is_err());
}

fn pg_options_for(url: &str) -> PgOptions {
    PgOptions {
        pool_size: 1,
        connect_timeout: Duration::from_secs(2),
        ..PgOptions::new(PgUrl::parse(url).expect("URL"))
    }
}

/// Several stores on one database, as several processes are: their
/// appends to the same recipients, pipelined and all at once, give every
/// mailbox the seqs 1..=k, each once, and every message its own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_sharing_a_database_keep_every_mailbox_gap_free() {
    const STORES: usize = 4;
    const SENDERS_PER_STORE: usize = 3;
    const PER_RECIPIENT: usize = 25;
    let Some(scratch) = Scratch::create() else { return };
    let stores: Vec<Arc<PgStore>> = (0..STORES).map(|_| Arc::new(open(&scratch))).collect();
    let recipients = ["r0", "r1", "r2"];
    let mut ids = Vec::new();
    for name in recipients {
        ids.push(register(&*stores[0], name).await.id);
    }
    let mut senders = Vec::new();
    for s in 0..STORES * SENDERS_PER_STORE {
        senders.push(register(&*stores[s % STORES], &format!("s{s}")).await);
    }
    let mut tasks = Vec::new();
    for (s, sender) in senders.into_iter().enumerate() {
        let store = Arc::clone(&stores[s % STORES]);
        tasks.push(tokio::spawn(async move {
            // Pipelined: every append submitted before any is awaited.
            let replies: Vec<_> = (0..PER_RECIPIENT)
                .flat_map(|n| recipients.map(|r| (r, n)))
                .map(|(r, n)| store.append(message(&sender, r, &format!("{r}-{n}"), "x")))
                .collect();
            for reply in replies {
                let appended = reply.await.expect("append");
                assert!(!appended.duplicate);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total = STORES * SENDERS_PER_STORE * PER_RECIPIENT;
    let mut all_ids = std::collections::HashSet::new();
    for (r, id) in ids.into_iter().enumerate() {
        let stored = stores[r % STORES].fetch(id, Seq(0), u32::MAX, true).await.unwrap();
        let seqs: Vec<u64> = stored.iter().map(|m| m.seq.0).collect();
        assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "mailbox r{r}");
        // Each sender's messages keep its order.
        for sender in 0..STORES * SENDERS_PER_STORE {
            let name = format!("s{sender}");
            let own: Vec<&str> = stored
                .iter()
                .filter(|m| m.sender_name == name)
                .map(|m| m.client_msg_id.as_str())
                .collect();
            let expected: Vec<String> = (0..PER_RECIPIENT).map(|n| format!("r{r}-{n}")).collect();
            assert_eq!(own, expected, "order of {name} in r{r}");
        }
        all_ids.extend(stored.iter().map(|m| m.id));
        assert_eq!(
            stores[0].mailbox_state(id).await,
            Ok(MailboxState {
                last_seq: Seq(total as u64),
                unread: total as u64
            })
        );
    }
    assert_eq!(all_ids.len(), total * recipients.len(), "message ids are unique");
    for store in stores {
        store.close().await.unwrap();
    }
}

/// Acks of one mailbox through several stores (a user's sessions on
/// several nodes) while its messages are still arriving through another:
/// each ack takes effect on the watermark and counts as it stood when the
/// ack's lock was granted, so every message is counted read exactly once
/// and the watermark never moves back. Acks go out pipelined (several in
/// one batch) and alone, cumulative and with single seqs above the
/// watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_through_several_stores_count_each_message_once() {
    const TOTAL: u64 = 400;
    let Some(scratch) = Scratch::create() else { return };
    let stores: Vec<Arc<PgStore>> = (0..3).map(|_| Arc::new(open(&scratch))).collect();
    let reader = register(&*stores[0], "reader").await;
    let writer = register(&*stores[0], "writer").await;
    let appender = {
        let store = Arc::clone(&stores[0]);
        tokio::spawn(async move {
            for chunk in 0..TOTAL / 20 {
                let replies: Vec<_> = (0..20)
                    .map(|n| store.append(message(&writer, "reader", &format!("m{}", chunk * 20 + n), "x")))
                    .collect();
                for reply in replies {
                    reply.await.expect("append");
                }
            }
        })
    };
    let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut ackers = Vec::new();
    for (a, store) in stores[1..].iter().enumerate() {
        let (store, counted, reader) = (Arc::clone(store), Arc::clone(&counted), reader.id);
        ackers.push(tokio::spawn(async move {
            let mut round = 0u64;
            loop {
                round += 1;
                let last = store.mailbox_state(reader).await.expect("state").last_seq.0;
                // Several acks in flight at once, behind and at the last
                // seq, with singles above the watermark; every other round
                // one ack alone.
                let ranges: Vec<AckRange> = if round.is_multiple_of(2) {
                    vec![AckRange {
                        up_to: Seq(last),
                        seqs: Vec::new(),
                    }]
                } else {
                    (0..4u64)
                        .map(|k| AckRange {
                            up_to: Seq(last.saturating_sub(8 * (3 - k) + a as u64)),
                            seqs: vec![Seq(last.saturating_sub(2)), Seq(last)],
                        })
                        .collect()
                };
                let replies: Vec<_> = ranges.into_iter().map(|range| store.ack(reader, range)).collect();
                for reply in replies {
                    let (newly, state) = reply.await.expect("ack");
                    counted.fetch_add(newly, std::sync::atomic::Ordering::Relaxed);
                    assert!(state.last_seq.0 >= last, "the last seq went back");
                }
                if last == TOTAL {
                    break;
                }
            }
        }));
    }
    appender.await.unwrap();
    for acker in ackers {
        acker.await.unwrap();
    }
    let (newly, state) = stores[1]
        .ack(
            reader.id,
            AckRange {
                up_to: Seq(TOTAL),
                seqs: Vec::new(),
            },
        )
        .await
        .expect("final ack");
    counted.fetch_add(newly, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        state,
        MailboxState {
            last_seq: Seq(TOTAL),
            unread: 0
        }
    );
    assert_eq!(
        counted.load(std::sync::atomic::Ordering::Relaxed),
        TOTAL,
        "every message counted read once"
    );
    let unacked = stores[2]
        .fetch(reader.id, Seq(0), u32::MAX, false)
        .await
        .expect("fetch");
    assert!(unacked.is_empty(), "{} messages left unacked", unacked.len());
    for store in stores {
        store.close().await.unwrap();
    }
}

/// The same (sender, client id) sent through two stores at once, as a
/// client resending through another node: both are answered with the one
/// stored message, never an error. Half the rounds name another recipient
/// the second time (a confused client): then no account lock orders the two
/// appends, and the loser's insert is what finds the winner's (on the
/// unique index of sender and client id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_through_another_store_gets_the_same_message() {
    const ROUNDS: usize = 40;
    let Some(scratch) = Scratch::create() else { return };
    let a = Arc::new(open(&scratch));
    let b = Arc::new(open(&scratch));
    let alice = register(&*a, "alice").await;
    let bob = register(&*a, "bob").await;
    let carol = register(&*a, "carol").await;
    for n in 0..ROUNDS {
        let id = format!("same-{n}");
        let other = if n % 2 == 0 { "bob" } else { "carol" };
        // Other traffic in the same batches, so that a race redoes more
        // than the one append.
        let noise_a = a.append(message(&bob, "alice", &format!("a-{n}"), "noise"));
        let first = a.append(message(&alice, "bob", &id, "body"));
        let second = b.append(message(&alice, other, &id, "body"));
        let noise_b = b.append(message(&carol, "alice", &format!("b-{n}"), "noise"));
        let (first, second) = tokio::join!(first, second);
        let (first, second) = (first.expect("first"), second.expect("second"));
        assert_eq!(first.message, second.message, "round {n}");
        assert!(
            first.duplicate != second.duplicate,
            "round {n}: one stored it, one found it"
        );
        noise_a.await.unwrap();
        noise_b.await.unwrap();
    }
    let mut stored = 0;
    for user in [&bob, &carol] {
        let mailbox = a.fetch(user.id, Seq(0), u32::MAX, true).await.unwrap();
        let seqs: Vec<u64> = mailbox.iter().map(|m| m.seq.0).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{}", user.name);
        stored += mailbox.len();
    }
    assert_eq!(stored, ROUNDS, "each client id stored once");
    let alices = a.fetch(alice.id, Seq(0), u32::MAX, true).await.unwrap();
    assert_eq!(
        alices.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        (1..=2 * ROUNDS as u64).collect::<Vec<_>>()
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// The database goes away (its connections cut, new ones refused): every
/// operation is answered `Unavailable` at once, the store says why writes
/// fail, and when the database is back it recovers by itself — without an
/// operation to try it — and nothing acknowledged was lost.
#[tokio::test]
async fn an_unreachable_database_answers_unavailable_and_recovers_by_itself() {
    let Some(scratch) = Scratch::create() else { return };
    let mut proxy = TcpProxy::start(scratch.server_addr());
    let store = PgStore::open(PgOptions {
        connect_timeout: Duration::from_secs(2),
        ..pg_options_for(&scratch.url_via(proxy.addr))
    })
    .expect("open");
    let alice = register(&store, "alice").await;
    let mut stored = Vec::new();
    for n in 0..5 {
        stored.push(
            send(&store, &alice, "alice", &format!("before-{n}"), "x")
                .await
                .message
                .seq,
        );
    }
    assert_eq!(store.write_failure(), None);

    proxy.cut();
    let outage = Instant::now();
    for n in 0..5 {
        match store
            .append(message(&alice, "alice", &format!("during-{n}"), "x"))
            .await
        {
            Err(StoreError::Unavailable(why)) => assert!(why.contains("PostgreSQL"), "{why}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert!(matches!(
        store.find_account("alice").await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(outage.elapsed() < Duration::from_secs(5), "answers come at once");
    assert!(store.write_failure().is_some(), "the store says writes fail");

    proxy.restore();
    // Nothing is submitted: the writer's own probe finds the database back.
    eventually("the store recovers", async || store.write_failure().is_none()).await;
    let after = send(&store, &alice, "alice", "after", "x").await.message;
    stored.push(after.seq);
    // A resend of what the outage refused is stored now, once.
    let resent = send(&store, &alice, "alice", "during-0", "x").await.message;
    stored.push(resent.seq);
    assert_eq!(
        stored.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    assert_eq!(store.fetch(alice.id, Seq(0), 100, true).await.unwrap().len(), 7);
    store.close().await.unwrap();
}

/// A connection PostgreSQL ends (an administrator's pg_terminate_backend,
/// a restart) is replaced: the operations of the batch that found it dead
/// run again on a fresh one, and none of them fails.
#[tokio::test]
async fn a_terminated_connection_is_replaced_without_failing_anything() {
    let Some(scratch) = Scratch::create() else { return };
    let name = scratch.schema().to_owned();
    let url = format!("{}&application_name={name}", scratch.url());
    let store = PgStore::open(pg_options_for(&url)).expect("open");
    let alice = register(&store, "alice").await;
    send(&store, &alice, "alice", "m0", "x").await;
    let admin = connect(&scratch).await;
    let ended = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .unwrap();
    assert!(!ended.is_empty(), "the store's connection was found");
    let replies: Vec<_> = (1..10)
        .map(|n| store.append(message(&alice, "alice", &format!("m{n}"), "x")))
        .collect();
    for (n, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply.await.expect("append").message.seq, Seq(n as u64 + 2));
    }
    assert_eq!(store.write_failure(), None);
    store.close().await.unwrap();
}

/// Several writers in one process: each task's operations go to one writer,
/// different tasks' to different writers. Tasks that pipeline sends to two
/// shared mailboxes, and the owners' tasks acknowledging as they go, end
/// with every mailbox's seqs gap-free, each sender's messages in the order
/// it sent them, each sent once, and the unread counts exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_keep_each_tasks_order_and_every_mailbox_gap_free() {
    let Some(scratch) = Scratch::create() else { return };
    let store = Arc::new(
        PgStore::open(PgOptions {
            writers: 4,
            ..pg_options(&scratch)
        })
        .expect("open"),
    );
    let owners = [register(&*store, "ann").await, register(&*store, "ben").await];
    const SENDERS: usize = 8;
    const EACH: usize = 150;
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let me = register(&*store, &format!("sender{s}")).await;
            // Pipelined: submitted one after the other, awaited later.
            let replies: Vec<_> = (0..EACH)
                .map(|n| {
                    let to = if (n + s) % 2 == 0 { "ann" } else { "ben" };
                    store.append(message(&me, to, &format!("{s}-{n}"), &format!("{s}:{n}")))
                })
                .collect();
            for reply in replies {
                reply.await.expect("append");
            }
        }));
    }
    for owner in owners.clone() {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                let state = store.mailbox_state(owner.id).await.expect("state");
                let up_to = Seq(state.last_seq.0 / 2);
                store
                    .ack(owner.id, AckRange { up_to, seqs: vec![] })
                    .await
                    .expect("ack");
                tokio::task::yield_now().await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let mut total = 0;
    for owner in &owners {
        let all = store.fetch(owner.id, Seq(0), 10_000, true).await.expect("fetch");
        let seqs: Vec<u64> = all.iter().map(|m| m.seq.0).collect();
        assert_eq!(
            seqs,
            (1..=all.len() as u64).collect::<Vec<_>>(),
            "{}: gap-free",
            owner.name
        );
        let mut last = [None::<usize>; SENDERS];
        for m in &all {
            let (s, n) = m.body.split_once(':').expect("body");
            let (s, n): (usize, usize) = (s.parse().unwrap(), n.parse().unwrap());
            assert!(last[s].is_none_or(|before| before < n), "sender {s} out of order");
            last[s] = Some(n);
        }
        let unacked = all.iter().filter(|m| !m.acked).count() as u64;
        let state = store.mailbox_state(owner.id).await.expect("state");
        assert_eq!(state.unread, unacked, "{}: unread", owner.name);
        total += all.len();
    }
    assert_eq!(total, SENDERS * EACH, "each message stored once");
    store.close().await.unwrap();
}

/// Spam folders and labels persist in the database, and their ids carry
/// on past the highest ever handed out, even when its row is gone.
#[tokio::test]
async fn held_messages_and_labels_survive_close_and_reopen() {
    let Some(scratch) = Scratch::create() else { return };
    let store = open(&scratch);
    let alice = register(&store, "alice").await;
    let bob = register(&store, "bob").await;
    let s1 = hold(&store, &alice, "bob", "s1", "one").await;
    let s2 = hold(&store, &alice, "bob", "s2", "two").await;
    assert_eq!(store.drop_held(bob.id, vec![s2.id]).await, Ok(vec![s2.id]));
    let folder = store.held(bob.id, 0, 10).await.unwrap();
    let l1 = store.add_label(label("buy now", true, Some(0.875), 7)).await.unwrap();
    let labels = store.labels(0, 10).await.unwrap();
    store.close().await.unwrap();

    let store = open(&scratch);
    assert_eq!(store.held(bob.id, 0, 10).await.unwrap(), folder);
    assert_eq!(store.labels(0, 10).await.unwrap(), labels);
    let retry = store.hold(held_message(&alice, "bob", "s1", "one", 10)).await.unwrap();
    assert_eq!((retry.id, retry.duplicate), (s1.id, true));
    assert!(hold(&store, &alice, "bob", "s3", "three").await.id > s2.id);
    assert!(store.add_label(label("x", false, None, 8)).await.unwrap() > l1);
    store.close().await.unwrap();
}

/// Two stores on one database (two processes) holding the same message at
/// once: one holds it, the other finds it, and a folder bounded by
/// `max_held` keeps its bound whoever holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_through_two_stores_keep_one_copy_and_the_bound() {
    const ROUNDS: usize = 20;
    const MAX_HELD: u32 = 5;
    let Some(scratch) = Scratch::create() else { return };
    let a = Arc::new(open(&scratch));
    let b = Arc::new(open(&scratch));
    let alice = register(&*a, "alice").await;
    let bob = register(&*a, "bob").await;
    for n in 0..ROUNDS {
        let id = format!("same-{n}");
        let first = a.hold(held_message(&alice, "bob", &id, "spam", MAX_HELD));
        let second = b.hold(held_message(&alice, "bob", &id, "spam", MAX_HELD));
        let (first, second) = tokio::join!(first, second);
        let (first, second) = (first.expect("first"), second.expect("second"));
        assert_eq!(first.id, second.id, "round {n}");
        assert!(
            first.duplicate != second.duplicate,
            "round {n}: one held it, one found it"
        );
    }
    let ids = held_ids(&*a, &bob).await;
    assert_eq!(ids.len(), MAX_HELD as usize);
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// A writer holding only acks waits `ack_linger` for more: acks of two
/// users, the second arriving while the first waits, are answered together
/// once the linger is over (not the first at once, nor the second a linger
/// after it); a send arriving while an ack waits ends the wait at once, and
/// both are answered without waiting it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_alone_linger_and_share_a_commit_while_other_work_ends_the_wait() {
    const LINGER: Duration = Duration::from_secs(1);
    let Some(scratch) = Scratch::create() else { return };
    let store = Arc::new(
        PgStore::open(PgOptions {
            writers: 1,
            ack_linger: LINGER,
            ..pg_options(&scratch)
        })
        .expect("open"),
    );
    let ann = register(&*store, "ann").await;
    let ben = register(&*store, "ben").await;
    for n in 0..3 {
        send(&*store, &ben, "ann", &format!("b{n}"), "to ann").await;
        send(&*store, &ann, "ben", &format!("a{n}"), "to ben").await;
    }
    let ack = |user: parley_core::UserId, up_to: u64| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let reply = store
                .ack(
                    user,
                    AckRange {
                        up_to: Seq(up_to),
                        seqs: vec![],
                    },
                )
                .await;
            (reply.expect("ack"), Instant::now())
        })
    };

    let start = Instant::now();
    let first = ack(ann.id, 2);
    // deliberate: the second ack must reach the writer while the first waits.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = ack(ben.id, 3);
    let ((acked_ann, ann_at), (acked_ben, ben_at)) = (first.await.expect("task"), second.await.expect("task"));
    assert_eq!((acked_ann.0, acked_ann.1.unread), (2, 1), "ann's ack took effect");
    assert_eq!((acked_ben.0, acked_ben.1.unread), (3, 0), "ben's ack took effect");
    assert!(
        ann_at - start >= LINGER - Duration::from_millis(100),
        "an ack alone waits out the linger: answered after {:?}",
        ann_at - start
    );
    let apart = ben_at.max(ann_at) - ben_at.min(ann_at);
    assert!(
        apart < LINGER / 2,
        "the second ack joined the first's batch: answered {apart:?} apart"
    );

    let start = Instant::now();
    let third = ack(ann.id, 3);
    // deliberate: the send must reach the writer while the ack waits.
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&*store, &ben, "ann", "b-late", "ends the wait").await;
    let sent_at = Instant::now();
    let (acked, acked_at) = third.await.expect("task");
    assert_eq!(
        (acked.0, acked.1.unread),
        (1, 0),
        "the third ack took effect, before the send"
    );
    assert_eq!(
        store.mailbox_state(ann.id).await.expect("state").unread,
        1,
        "the send came after it"
    );
    assert!(
        sent_at - start < LINGER - Duration::from_millis(200) && acked_at - start < LINGER - Duration::from_millis(200),
        "a send ends an ack's wait: sent after {:?}, acked after {:?}",
        sent_at - start,
        acked_at - start
    );
    store.close().await.expect("close");
}
