//! One suite, run against every store: each behaviour in the crate
//! documentation is a case here, and the `conformance!` macro at the bottom
//! runs every case against the memory store, SQLite and PostgreSQL (each
//! case in a scratch schema; skipped when the test database does not answer,
//! unless PARLEY_REQUIRE_SERVICES=1).

mod common;

use std::sync::{Arc, Mutex};

use parley_core::presence::{Contact, Subscription};
use parley_core::store::{
    AckRange, FilterLabel, Held, HeldMessage, InviteUse, MailboxQuota, MailboxState, NewAccount, NewHeld, NewInvite,
    NewMessage, OnStored,
};
use parley_core::{MessageId, NamePattern, Seq, Store, StoreError, UserId};

use common::{
    HOUR_MS, Harness, ROOMY_FOLDER, create_token, credentials, hash, held_ids, held_message, hold, label, live_tokens,
    message, new_account, now_ms, register, send, token,
};

fn seqs(messages: &[parley_core::store::StoredMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq.0).collect()
}

fn keys(accounts: &[parley_core::store::AccountSummary]) -> Vec<&str> {
    accounts.iter().map(|a| a.name_key.as_str()).collect()
}

fn pattern(raw: &str) -> NamePattern {
    NamePattern::parse(raw).expect("pattern")
}

async fn accounts_round_trip(store: &dyn Store) {
    let alice = register(store, "Alice").await;
    assert_eq!(alice.name, "Alice");
    assert_eq!(alice.credentials, credentials("Alice"));
    let found = store.find_account("alice").await.unwrap().expect("found");
    assert_eq!(found, alice);
    assert_eq!(store.find_account("Alice").await.unwrap(), None, "lookups are by key");
    assert_eq!(store.find_account("nobody").await.unwrap(), None);
}

async fn names_are_unique_by_key(store: &dyn Store) {
    let alice = register(store, "Alice").await;
    for clash in ["alice", "ALICE", "aLiCe"] {
        assert_eq!(
            store.create_account(new_account(clash)).await,
            Err(StoreError::NameTaken),
            "{clash}"
        );
    }
    let bob = register(store, "bob").await;
    assert!(bob.id > alice.id);
    // A refused registration uses up no id.
    let carol = register(store, "carol").await;
    assert_eq!(carol.id.0, bob.id.0 + 1);
}

async fn user_ids_are_never_reused(store: &dyn Store) {
    let a = register(store, "a").await;
    let b = register(store, "b").await;
    store.delete_account(b.id).await.unwrap();
    let c = register(store, "c").await;
    assert!(c.id > b.id && b.id > a.id);
    store.delete_account(c.id).await.unwrap();
    let again = register(store, "c").await;
    assert!(again.id > c.id, "re-registering a name gives a new id");
}

async fn append_assigns_seqs_and_ids(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "Bob").await;
    let first = send(store, &alice, "bob", "m1", "hello").await.message;
    assert_eq!((first.recipient, first.seq, first.sender), (bob.id, Seq(1), alice.id));
    assert_eq!(
        (
            first.sender_name.as_str(),
            first.client_msg_id.as_str(),
            first.body.as_str()
        ),
        ("alice", "m1", "hello")
    );
    assert_eq!(first.timestamp_ms, message(&alice, "bob", "m1", "hello").timestamp_ms);
    assert!(!first.acked);
    let to_alice = send(store, &bob, "ALICE", "m1", "hi").await.message;
    assert_eq!(
        (to_alice.recipient, to_alice.seq),
        (alice.id, Seq(1)),
        "seqs are per mailbox"
    );
    let second = send(store, &alice, "bob", "m2", "again").await.message;
    assert_eq!(second.seq, Seq(2));
    assert!(
        first.id < to_alice.id && to_alice.id < second.id,
        "message ids are global and increasing"
    );
    let stored = store.fetch(bob.id, Seq(0), 10, true).await.unwrap();
    assert_eq!(stored, vec![(*first).clone(), (*second).clone()]);
}

async fn seqs_keep_rising_after_deletions(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(send(store, &alice, "bob", &format!("m{n}"), "x").await.message.id);
    }
    assert_eq!(store.delete_messages(bob.id, vec![ids[2]]).await.unwrap(), vec![ids[2]]);
    let fourth = send(store, &alice, "bob", "m4", "x").await.message;
    assert_eq!(fourth.seq, Seq(4));
    assert!(fourth.id > ids[2], "message ids are not reused either");
    let all = vec![ids[0], ids[1], fourth.id];
    assert_eq!(store.delete_messages(bob.id, all.clone()).await.unwrap(), all);
    assert_eq!(send(store, &alice, "bob", "m5", "x").await.message.seq, Seq(5));
    assert_eq!(
        store.mailbox_state(bob.id).await.unwrap(),
        MailboxState {
            last_seq: Seq(5),
            unread: 1
        }
    );
}

async fn append_is_idempotent(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    let carol = register(store, "carol").await;
    let original = send(store, &alice, "bob", "same", "first body").await.message;

    // A retry, even with another body, returns the original and stores nothing.
    let mut retry = message(&alice, "bob", "same", "second body");
    retry.timestamp_ms += 5000;
    let again = store.append(retry).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(*again.message, *original);
    // The key is the sender's: another sender may use the same client id.
    let other = send(store, &carol, "bob", "same", "from carol").await.message;
    assert_eq!(other.seq, Seq(2));
    assert_eq!(store.fetch(bob.id, Seq(0), 10, true).await.unwrap().len(), 2);

    // After the recipient acked and deleted it, a retry is still a duplicate
    // with the original id, seq and timestamp, and is not stored again.
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
    store.delete_messages(bob.id, vec![original.id]).await.unwrap();
    let mut late = message(&alice, "bob", "same", "third body");
    late.timestamp_ms += 9000;
    let late = store.append(late).await.unwrap();
    assert!(late.duplicate);
    let rebuilt = &late.message;
    assert_eq!(
        (rebuilt.id, rebuilt.recipient, rebuilt.seq),
        (original.id, bob.id, Seq(1))
    );
    assert_eq!(
        (rebuilt.sender, rebuilt.timestamp_ms),
        (alice.id, original.timestamp_ms)
    );
    assert_eq!(
        (rebuilt.client_msg_id.as_str(), rebuilt.body.as_str(), rebuilt.acked),
        ("same", "third body", false)
    );
    assert_eq!(seqs(&store.fetch(bob.id, Seq(0), 10, true).await.unwrap()), vec![2]);
    assert_eq!(store.mailbox_state(bob.id).await.unwrap().last_seq, Seq(2));

    // Idempotency is checked before the recipient: a retry after the
    // recipient's account is gone still gets the original answer.
    let to_carol = send(store, &alice, "carol", "to-carol", "hi").await.message;
    store.delete_account(carol.id).await.unwrap();
    let retry = store.append(message(&alice, "carol", "to-carol", "hi")).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!((retry.message.id, retry.message.seq), (to_carol.id, to_carol.seq));
}

async fn unknown_users(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let ghost = UserId(alice.id.0 + 100);
    assert_eq!(
        store.append(message(&alice, "nobody", "m1", "x")).await.unwrap_err(),
        StoreError::NoSuchUser
    );
    assert_eq!(store.mailbox_state(ghost).await, Err(StoreError::NoSuchUser));
    assert_eq!(store.delete_account(ghost).await, Err(StoreError::NoSuchUser));
    assert_eq!(
        store
            .ack(
                ghost,
                AckRange {
                    up_to: Seq(1),
                    seqs: vec![Seq(2)]
                }
            )
            .await,
        Err(StoreError::NoSuchUser)
    );
    assert_eq!(store.fetch(ghost, Seq(0), 10, true).await, Ok(vec![]));
    assert_eq!(store.delete_messages(ghost, vec![MessageId(1)]).await, Ok(vec![]));
    // A refused append wrote nothing, not even its idempotency key.
    register(store, "nobody").await;
    assert!(
        !store
            .append(message(&alice, "nobody", "m1", "x"))
            .await
            .unwrap()
            .duplicate
    );
}

async fn fetch_pages_and_filters(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    for n in 1..=6 {
        send(store, &alice, "bob", &format!("m{n}"), &format!("body {n}")).await;
    }
    assert_eq!(
        seqs(&store.fetch(bob.id, Seq(0), 100, false).await.unwrap()),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert_eq!(
        seqs(&store.fetch(bob.id, Seq(2), 3, false).await.unwrap()),
        vec![3, 4, 5]
    );
    assert_eq!(seqs(&store.fetch(bob.id, Seq(5), 3, false).await.unwrap()), vec![6]);
    assert_eq!(
        seqs(&store.fetch(bob.id, Seq(6), 3, false).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(&store.fetch(bob.id, Seq(0), 0, true).await.unwrap()),
        Vec::<u64>::new()
    );

    store
        .ack(
            bob.id,
            AckRange {
                up_to: Seq(2),
                seqs: vec![Seq(4)],
            },
        )
        .await
        .unwrap();
    assert_eq!(
        seqs(&store.fetch(bob.id, Seq(0), 100, false).await.unwrap()),
        vec![3, 5, 6]
    );
    assert_eq!(
        seqs(&store.fetch(bob.id, Seq(0), 2, false).await.unwrap()),
        vec![3, 5],
        "limit counts unread only"
    );
    let all = store.fetch(bob.id, Seq(0), 100, true).await.unwrap();
    assert_eq!(seqs(&all), vec![1, 2, 3, 4, 5, 6]);
    let acked: Vec<bool> = all.iter().map(|m| m.acked).collect();
    assert_eq!(acked, vec![true, true, false, true, false, false]);
    assert_eq!(
        store.fetch(alice.id, Seq(0), 100, true).await.unwrap(),
        vec![],
        "other mailboxes are separate"
    );
}

async fn ack_is_cumulative_and_listed(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    for n in 1..=6 {
        send(store, &alice, "bob", &format!("m{n}"), "x").await;
    }
    let ack = |up_to: u64, list: &[u64]| AckRange {
        up_to: Seq(up_to),
        seqs: list.iter().map(|&s| Seq(s)).collect(),
    };
    let state = |unread| MailboxState {
        last_seq: Seq(6),
        unread,
    };
    assert_eq!(store.ack(bob.id, ack(0, &[])).await, Ok((0, state(6))));
    assert_eq!(store.ack(bob.id, ack(2, &[])).await, Ok((2, state(4))));
    assert_eq!(
        store.ack(bob.id, ack(2, &[])).await,
        Ok((0, state(4))),
        "acking again changes nothing"
    );
    assert_eq!(
        store.ack(bob.id, ack(0, &[5, 5, 99])).await,
        Ok((1, state(3))),
        "listed seqs, duplicates and gaps"
    );
    assert_eq!(
        store.ack(bob.id, ack(4, &[1, 6])).await,
        Ok((3, state(0))),
        "range and list together"
    );
    // Another user's ack touches only their own mailbox.
    send(store, &bob, "alice", "back", "x").await;
    assert_eq!(store.ack(bob.id, ack(10, &[])).await, Ok((0, state(0))));
    assert_eq!(
        store.mailbox_state(alice.id).await,
        Ok(MailboxState {
            last_seq: Seq(1),
            unread: 1
        })
    );
}

/// Each acknowledged message counts once, however it is acked: a single
/// named twice, a single at or below the watermark, a seq past the last
/// one, and singles the watermark later passes.
async fn acks_count_each_message_once(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    for n in 1..=8 {
        send(store, &alice, "bob", &format!("m{n}"), "x").await;
    }
    let ack = |up_to: u64, seqs: &[u64]| AckRange {
        up_to: Seq(up_to),
        seqs: seqs.iter().copied().map(Seq).collect(),
    };
    let state = |unread: u64| MailboxState {
        last_seq: Seq(8),
        unread,
    };
    // 1 and 2 by the watermark; 4 once though named twice; 2 again and 9
    // (never stored) not at all.
    assert_eq!(store.ack(bob.id, ack(2, &[4, 2, 4, 9])).await, Ok((3, state(5))));
    // Named again, alone: nothing new.
    assert_eq!(store.ack(bob.id, ack(0, &[4, 1])).await, Ok((0, state(5))));
    // The watermark passes 4: 3, 5 and 6 are new, 4 is not counted again;
    // 7 as a single.
    assert_eq!(store.ack(bob.id, ack(6, &[7])).await, Ok((4, state(1))));
    assert_eq!(store.ack(bob.id, ack(100, &[8, 8])).await, Ok((1, state(0))));
    assert_eq!(store.mailbox_state(bob.id).await, Ok(state(0)));
    let acked: Vec<bool> = store
        .fetch(bob.id, Seq(0), 100, true)
        .await
        .unwrap()
        .iter()
        .map(|m| m.acked)
        .collect();
    assert_eq!(acked, vec![true; 8]);
}

async fn unread_counts(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    assert_eq!(
        store.mailbox_state(bob.id).await,
        Ok(MailboxState {
            last_seq: Seq(0),
            unread: 0
        })
    );
    let mut ids = Vec::new();
    for n in 1..=4 {
        ids.push(send(store, &alice, "bob", &format!("m{n}"), "x").await.message.id);
    }
    assert_eq!(
        store.mailbox_state(bob.id).await,
        Ok(MailboxState {
            last_seq: Seq(4),
            unread: 4
        })
    );
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
    // Deleting an acked message leaves the count; deleting an unread one lowers it.
    store.delete_messages(bob.id, vec![ids[0]]).await.unwrap();
    assert_eq!(
        store.mailbox_state(bob.id).await,
        Ok(MailboxState {
            last_seq: Seq(4),
            unread: 3
        })
    );
    store.delete_messages(bob.id, vec![ids[3]]).await.unwrap();
    assert_eq!(
        store.mailbox_state(bob.id).await,
        Ok(MailboxState {
            last_seq: Seq(4),
            unread: 2
        })
    );
}

async fn delete_only_own_messages(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    let to_bob = send(store, &alice, "bob", "m1", "x").await.message;
    let to_alice = send(store, &bob, "alice", "m1", "y").await.message;
    assert_eq!(
        store.delete_messages(alice.id, vec![to_bob.id]).await,
        Ok(vec![]),
        "the sender cannot delete it"
    );
    assert_eq!(store.fetch(bob.id, Seq(0), 10, true).await.unwrap().len(), 1);
    let asked = vec![to_bob.id, to_alice.id, to_bob.id, MessageId(9999)];
    assert_eq!(store.delete_messages(bob.id, asked).await, Ok(vec![to_bob.id]));
    assert_eq!(store.delete_messages(bob.id, vec![to_bob.id]).await, Ok(vec![]));
    assert_eq!(
        store.fetch(alice.id, Seq(0), 10, true).await.unwrap(),
        vec![(*to_alice).clone()]
    );
    // Order given is kept.
    let ids: Vec<MessageId> = {
        let mut ids = Vec::new();
        for n in 2..=4 {
            ids.push(send(store, &bob, "alice", &format!("m{n}"), "z").await.message.id);
        }
        ids
    };
    let reversed: Vec<MessageId> = ids.iter().rev().copied().collect();
    assert_eq!(store.delete_messages(alice.id, reversed.clone()).await, Ok(reversed));
}

async fn delete_account_effects(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "Bob").await;
    send(store, &alice, "bob", "a1", "to bob").await;
    let from_bob = send(store, &bob, "alice", "b1", "to alice").await.message;

    store.delete_account(bob.id).await.unwrap();
    assert_eq!(store.delete_account(bob.id).await, Err(StoreError::NoSuchUser));
    assert_eq!(store.find_account("bob").await, Ok(None));
    assert_eq!(store.mailbox_state(bob.id).await, Err(StoreError::NoSuchUser));
    assert_eq!(
        store.fetch(bob.id, Seq(0), 10, true).await,
        Ok(vec![]),
        "the mailbox is gone"
    );
    assert_eq!(
        store.fetch(alice.id, Seq(0), 10, true).await,
        Ok(vec![(*from_bob).clone()]),
        "sent messages stay"
    );
    assert_eq!(
        keys(&store.list_accounts(&pattern("*"), "", 10).await.unwrap()),
        vec!["alice"]
    );

    // The name is free again: new id, empty mailbox, seqs from 1, and none
    // of the old id's idempotency keys (a store may keep those of messages
    // still stored elsewhere, as PostgreSQL does inside them: the old id is
    // never used again, so nothing can ask for them).
    let bob2 = register(store, "bob").await;
    assert!(bob2.id > bob.id);
    let reused = store.append(message(&bob2, "alice", "b1", "to alice")).await.unwrap();
    assert!(!reused.duplicate, "a new account starts with no idempotency keys");
    assert_eq!(
        store.mailbox_state(bob2.id).await,
        Ok(MailboxState {
            last_seq: Seq(0),
            unread: 0
        })
    );
    assert_eq!(store.fetch(bob2.id, Seq(0), 10, true).await, Ok(vec![]));
    assert_eq!(
        send(store, &alice, "bob", "a2", "welcome back").await.message.seq,
        Seq(1)
    );
    // The old sender's idempotency key still answers for the old message.
    let old = store.append(message(&alice, "bob", "a1", "to bob")).await.unwrap();
    assert!(old.duplicate);
    assert_eq!((old.message.recipient, old.message.seq), (bob.id, Seq(1)));
}

async fn list_matches_patterns(store: &dyn Store) {
    for name in ["bob", "Alice", "albert", "xbab", "Bib", "bobby", "carol"] {
        register(store, name).await;
    }
    let list = |p: &'static str| async move { store.list_accounts(&pattern(p), "", 100).await.unwrap() };
    let everyone = list("*").await;
    assert_eq!(
        keys(&everyone),
        vec!["albert", "alice", "bib", "bob", "bobby", "carol", "xbab"]
    );
    let alice = everyone.iter().find(|a| a.name_key == "alice").unwrap();
    assert_eq!(alice.name, "Alice");
    assert_eq!(Some(alice.id), store.find_account("alice").await.unwrap().map(|a| a.id));
    assert_eq!(keys(&list("").await), keys(&everyone), "empty pattern means everything");
    assert_eq!(keys(&list("al*").await), vec!["albert", "alice"]);
    assert_eq!(keys(&list("AL*").await), vec!["albert", "alice"]);
    assert_eq!(keys(&list("*b?b").await), vec!["bib", "bob", "xbab"]);
    assert_eq!(keys(&list("b?b*").await), vec!["bib", "bob", "bobby"]);
    assert_eq!(keys(&list("bob").await), vec!["bob"]);
    assert_eq!(keys(&list("z*").await), Vec::<&str>::new());
    assert_eq!(keys(&list("*o*").await), vec!["bob", "bobby", "carol"]);
}

async fn list_pages(store: &dyn Store) {
    let names: Vec<String> = (0..10).map(|n| format!("user{n:02}")).collect();
    for name in names.iter().rev() {
        register(store, name).await;
    }
    register(store, "other").await;
    let all = pattern("user*");
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = store.list_accounts(&all, &after, 3).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = last.name_key.clone();
        seen.extend(page.into_iter().map(|a| a.name_key));
    }
    assert_eq!(seen, names);
    assert_eq!(store.list_accounts(&all, "", 0).await, Ok(vec![]));
    assert_eq!(
        keys(&store.list_accounts(&all, "user07", 100).await.unwrap()),
        vec!["user08", "user09"]
    );
    // `after` before the pattern's prefix, and past every key.
    assert_eq!(store.list_accounts(&all, "a", 2).await.unwrap().len(), 2);
    assert_eq!(store.list_accounts(&all, "zzz", 10).await, Ok(vec![]));
    let everyone = store.list_accounts(&pattern("*"), "user05", u32::MAX).await.unwrap();
    assert_eq!(keys(&everyone), vec!["user06", "user07", "user08", "user09"]);
}

async fn ordering_follows_calls(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    // Submit without awaiting, then await in reverse: each op took effect
    // when it was called.
    let first = store.append(message(&alice, "bob", "m1", "one"));
    let state_between = store.mailbox_state(bob.id);
    let second = store.append(message(&alice, "bob", "m2", "two"));
    let ack = store.ack(
        bob.id,
        AckRange {
            up_to: Seq(1),
            seqs: vec![],
        },
    );
    let fetched = store.fetch(bob.id, Seq(0), 10, false);
    assert_eq!(seqs(&fetched.await.unwrap()), vec![2]);
    assert_eq!(ack.await.unwrap().0, 1);
    assert_eq!(second.await.unwrap().message.seq, Seq(2));
    assert_eq!(
        state_between.await,
        Ok(MailboxState {
            last_seq: Seq(1),
            unread: 1
        })
    );
    assert_eq!(first.await.unwrap().message.seq, Seq(1));

    // Contacts and tokens follow call order too.
    let now = now_ms();
    let added = store.add_contact(alice.id, "bob", ROOMY);
    let listed_with = store.list_contacts(alice.id);
    let removed = store.remove_contact(alice.id, "bob");
    let listed_without = store.list_contacts(alice.id);
    let created = store.create_resume_token(token(&alice, 1, now + HOUR_MS, 5));
    let resumed = store.resume(hash(1), now);
    let revoked = store.revoke_resume_token(hash(1));
    let resumed_after = store.resume(hash(1), now);
    assert_eq!(resumed_after.await, Ok(None));
    assert_eq!(revoked.await, Ok(()));
    assert_eq!(resumed.await, Ok(Some(alice.clone())));
    assert_eq!(created.await, Ok(()));
    assert_eq!(listed_without.await, Ok(vec![]));
    assert_eq!(removed.await, Ok(true));
    assert_eq!(keys(&listed_with.await.unwrap()), vec!["bob"]);
    assert_eq!(added.await.unwrap().id, bob.id);

    // And the spam folder and labels.
    let held = store.hold(held_message(&alice, "bob", "h1", "spam", ROOMY_FOLDER));
    let folder_with = store.held(bob.id, 0, 10);
    let labelled = store.add_label(label("spam", true, Some(0.5), 1));
    let labels = store.labels(0, 10);
    assert_eq!(labels.await.unwrap().len(), 1);
    let labelled = labelled.await.unwrap();
    let folder_with = folder_with.await.unwrap();
    let held = held.await.unwrap();
    assert_eq!(folder_with.iter().map(|m| m.id).collect::<Vec<_>>(), [held.id]);
    let dropped = store.drop_held(bob.id, vec![held.id]);
    let folder_without = store.held(bob.id, 0, 10);
    let labels_after = store.labels(labelled, 10);
    assert_eq!(labels_after.await, Ok(vec![]));
    assert_eq!(folder_without.await, Ok(vec![]));
    assert_eq!(dropped.await, Ok(vec![held.id]));
}

async fn closed_store_refuses_everything(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let pending = store.append(message(&alice, "alice", "before", "queued before close"));
    store.close().await.unwrap();
    assert!(!pending.await.unwrap().duplicate, "work queued before close is done");
    let closed = Err::<(), _>(StoreError::Closed);
    assert_eq!(store.create_account(new_account("bob")).await.map(drop), closed);
    assert_eq!(store.find_account("alice").await.map(drop), closed);
    assert_eq!(store.delete_account(alice.id).await.map(drop), closed);
    assert_eq!(store.list_accounts(&pattern("*"), "", 10).await.map(drop), closed);
    assert_eq!(
        store.append(message(&alice, "alice", "after", "x")).await.map(drop),
        closed
    );
    assert_eq!(store.fetch(alice.id, Seq(0), 10, true).await.map(drop), closed);
    assert_eq!(store.ack(alice.id, AckRange::default()).await.map(drop), closed);
    assert_eq!(store.delete_messages(alice.id, vec![]).await.map(drop), closed);
    assert_eq!(store.mailbox_state(alice.id).await.map(drop), closed);
    assert_eq!(store.add_contact(alice.id, "alice", ROOMY).await.map(drop), closed);
    assert_eq!(store.remove_contact(alice.id, "alice").await.map(drop), closed);
    assert_eq!(store.list_contacts(alice.id).await.map(drop), closed);
    assert_eq!(
        store.create_resume_token(token(&alice, 1, u64::MAX, 5)).await.map(drop),
        closed
    );
    assert_eq!(store.resume(hash(1), 0).await.map(drop), closed);
    assert_eq!(store.revoke_resume_token(hash(1)).await.map(drop), closed);
    assert_eq!(
        store
            .hold(held_message(&alice, "alice", "h1", "x", ROOMY_FOLDER))
            .await
            .map(drop),
        closed
    );
    assert_eq!(store.held(alice.id, 0, 10).await.map(drop), closed);
    assert_eq!(store.drop_held(alice.id, vec![1]).await.map(drop), closed);
    assert_eq!(store.add_label(label("x", true, None, 0)).await.map(drop), closed);
    assert_eq!(store.labels(0, 10).await.map(drop), closed);
    assert_eq!(store.close().await, Ok(()), "closing again is fine");
}

async fn huge_values_do_not_panic(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let huge = NewMessage {
        timestamp_ms: u64::MAX,
        ..message(&alice, "alice", "huge", "x")
    };
    let stored = store.append(huge).await.unwrap().message;
    assert_eq!(
        stored.timestamp_ms,
        i64::MAX as u64,
        "timestamps are clamped to what SQLite holds"
    );
    let odd_sender = NewMessage {
        sender: UserId(u64::MAX),
        ..message(&alice, "alice", "odd", "x")
    };
    assert_eq!(
        store.append(odd_sender).await.unwrap().message.sender,
        UserId(i64::MAX as u64)
    );
    assert_eq!(store.fetch(alice.id, Seq(u64::MAX), u32::MAX, true).await, Ok(vec![]));
    assert_eq!(store.fetch(alice.id, Seq(0), u32::MAX, true).await.unwrap().len(), 2);
    assert_eq!(store.fetch(UserId(u64::MAX), Seq(0), u32::MAX, true).await, Ok(vec![]));
    let all = AckRange {
        up_to: Seq(u64::MAX),
        seqs: vec![Seq(u64::MAX), Seq(i64::MAX as u64)],
    };
    assert_eq!(
        store.ack(alice.id, all).await,
        Ok((
            2,
            MailboxState {
                last_seq: Seq(2),
                unread: 0
            }
        ))
    );
    assert_eq!(
        store.ack(UserId(u64::MAX), AckRange::default()).await,
        Err(StoreError::NoSuchUser)
    );
    assert_eq!(
        store.delete_messages(alice.id, vec![MessageId(u64::MAX)]).await,
        Ok(vec![])
    );
    assert_eq!(
        store.delete_messages(UserId(u64::MAX), vec![stored.id]).await,
        Ok(vec![])
    );
    assert_eq!(store.mailbox_state(UserId(u64::MAX)).await, Err(StoreError::NoSuchUser));
    assert_eq!(
        store.delete_account(UserId(u64::MAX)).await,
        Err(StoreError::NoSuchUser)
    );
    let long_key = "k".repeat(10_000);
    assert_eq!(store.find_account(&long_key).await, Ok(None));
    assert_eq!(store.list_accounts(&pattern("*"), &long_key, 10).await, Ok(vec![]));

    let nobody = UserId(u64::MAX);
    assert_eq!(
        store.add_contact(nobody, "alice", u32::MAX).await,
        Err(StoreError::NoSuchUser)
    );
    assert_eq!(store.remove_contact(nobody, "alice").await, Ok(false));
    assert_eq!(store.list_contacts(nobody).await, Ok(vec![]));
    assert_eq!(
        store.add_contact(alice.id, &long_key, u32::MAX).await,
        Err(StoreError::NoSuchUser)
    );
    assert_eq!(
        store.add_contact(alice.id, "alice", u32::MAX).await.unwrap().id,
        alice.id
    );
    let ghost_token = parley_core::store::NewResumeToken {
        user: nobody,
        ..token(&alice, 1, u64::MAX, u32::MAX)
    };
    assert_eq!(
        store.create_resume_token(ghost_token).await,
        Err(StoreError::NoSuchUser)
    );
    // Expiries are clamped like timestamps.
    create_token(store, &alice, 1, u64::MAX, u32::MAX).await;
    assert_eq!(
        store.resume(hash(1), i64::MAX as u64 - 1).await,
        Ok(Some(alice.clone()))
    );
    assert_eq!(store.resume(hash(1), u64::MAX).await, Ok(None));
    assert_eq!(store.resume(hash(1), 0).await, Ok(None), "deleted as expired");
}

/// A contact limit no test reaches unless it means to.
const ROOMY: u32 = 100;

async fn contacts_add_list_remove(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "Bob").await;
    let carol = register(store, "carol").await;
    assert_eq!(store.list_contacts(alice.id).await, Ok(vec![]));
    let added = store.add_contact(alice.id, "carol", ROOMY).await.unwrap();
    assert_eq!(
        (added.id, added.name.as_str(), added.name_key.as_str()),
        (carol.id, "carol", "carol")
    );
    let added = store.add_contact(alice.id, "bob", ROOMY).await.unwrap();
    assert_eq!((added.id, added.name.as_str()), (bob.id, "Bob"));
    let listed = store.list_contacts(alice.id).await.unwrap();
    assert_eq!(keys(&listed), vec!["bob", "carol"], "in key order, not insertion order");
    assert_eq!(listed[0], added);
    assert_eq!(store.list_contacts(bob.id).await, Ok(vec![]), "lists are one-way");

    assert_eq!(store.remove_contact(alice.id, "bob").await, Ok(true));
    assert_eq!(store.remove_contact(alice.id, "bob").await, Ok(false), "already gone");
    assert_eq!(store.remove_contact(alice.id, "nobody").await, Ok(false));
    assert_eq!(
        store.remove_contact(bob.id, "carol").await,
        Ok(false),
        "not in bob's list"
    );
    assert_eq!(keys(&store.list_contacts(alice.id).await.unwrap()), vec!["carol"]);

    // Adding oneself is allowed.
    store.add_contact(alice.id, "alice", ROOMY).await.unwrap();
    assert_eq!(
        keys(&store.list_contacts(alice.id).await.unwrap()),
        vec!["alice", "carol"]
    );
}

async fn contacts_add_is_idempotent(store: &dyn Store) {
    let alice = register(store, "alice").await;
    register(store, "bob").await;
    let first = store.add_contact(alice.id, "bob", ROOMY).await.unwrap();
    let again = store.add_contact(alice.id, "bob", ROOMY).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(store.list_contacts(alice.id).await, Ok(vec![first]));
    // One removal undoes any number of adds.
    assert_eq!(store.remove_contact(alice.id, "bob").await, Ok(true));
    assert_eq!(store.list_contacts(alice.id).await, Ok(vec![]));
}

async fn contacts_of_unknown_accounts(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let ghost = UserId(alice.id.0 + 100);
    assert_eq!(
        store.add_contact(alice.id, "nobody", ROOMY).await,
        Err(StoreError::NoSuchUser)
    );
    assert_eq!(
        store.add_contact(ghost, "alice", ROOMY).await,
        Err(StoreError::NoSuchUser)
    );
    assert_eq!(
        store.add_contact(ghost, "nobody", 0).await,
        Err(StoreError::NoSuchUser),
        "existence comes before the limit"
    );
    assert_eq!(store.remove_contact(ghost, "alice").await, Ok(false));
    assert_eq!(store.list_contacts(ghost).await, Ok(vec![]));
    // Refused adds left nothing behind: the names registered later are new.
    assert_eq!(store.list_contacts(alice.id).await, Ok(vec![]));
    register(store, "nobody").await;
    assert_eq!(store.remove_contact(alice.id, "nobody").await, Ok(false));
}

async fn contacts_limit(store: &dyn Store) {
    let alice = register(store, "alice").await;
    for name in ["bob", "carol", "dave"] {
        register(store, name).await;
    }
    store.add_contact(alice.id, "bob", 2).await.unwrap();
    store.add_contact(alice.id, "carol", 2).await.unwrap();
    match store.add_contact(alice.id, "dave", 2).await {
        Err(StoreError::LimitReached(why)) => assert_eq!(why, "at most 2 contacts"),
        other => panic!("expected LimitReached, got {other:?}"),
    }
    assert_eq!(
        keys(&store.list_contacts(alice.id).await.unwrap()),
        vec!["bob", "carol"]
    );
    // A contact already in a full list can be added again.
    assert_eq!(store.add_contact(alice.id, "carol", 2).await.unwrap().name_key, "carol");
    // A lower limit than the list's size refuses new contacts but keeps the list.
    assert!(matches!(
        store.add_contact(alice.id, "dave", 1).await,
        Err(StoreError::LimitReached(_))
    ));
    assert!(store.add_contact(alice.id, "bob", 1).await.is_ok());
    // Removing one makes room.
    assert_eq!(store.remove_contact(alice.id, "bob").await, Ok(true));
    store.add_contact(alice.id, "dave", 2).await.unwrap();
    assert_eq!(
        keys(&store.list_contacts(alice.id).await.unwrap()),
        vec!["carol", "dave"]
    );
    // The limit is per owner; 0 refuses everything new.
    let bob = store.find_account("bob").await.unwrap().unwrap();
    assert_eq!(
        store.add_contact(bob.id, "alice", 0).await,
        Err(StoreError::LimitReached("at most 0 contacts".into()))
    );
    assert_eq!(store.add_contact(bob.id, "alice", 1).await.unwrap().id, alice.id);
}

async fn contacts_use_keys(store: &dyn Store) {
    let alice = register(store, "ALICE").await;
    register(store, "Bob").await;
    register(store, "cArOl").await;
    // Keys are the lowercase names, whatever case the names were registered in.
    assert_eq!(store.add_contact(alice.id, "bob", ROOMY).await.unwrap().name, "Bob");
    store.add_contact(alice.id, "carol", ROOMY).await.unwrap();
    store.add_contact(alice.id, "alice", ROOMY).await.unwrap();
    let listed = store.list_contacts(alice.id).await.unwrap();
    assert_eq!(keys(&listed), vec!["alice", "bob", "carol"]);
    let names: Vec<&str> = listed.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["ALICE", "Bob", "cArOl"], "display names as registered");
    // Like every lookup, keys match exactly: the core lowercases them.
    assert_eq!(
        store.add_contact(alice.id, "BOB", ROOMY).await,
        Err(StoreError::NoSuchUser)
    );
    assert_eq!(store.remove_contact(alice.id, "Bob").await, Ok(false));
    assert_eq!(store.remove_contact(alice.id, "bob").await, Ok(true));
}

async fn delete_account_removes_contacts(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    let carol = register(store, "carol").await;
    for (owner, contact) in [
        (&alice, "bob"),
        (&alice, "carol"),
        (&alice, "alice"),
        (&bob, "alice"),
        (&bob, "carol"),
        (&carol, "alice"),
    ] {
        store.add_contact(owner.id, contact, ROOMY).await.unwrap();
    }
    store.delete_account(alice.id).await.unwrap();
    assert_eq!(keys(&store.list_contacts(bob.id).await.unwrap()), vec!["carol"]);
    assert_eq!(store.list_contacts(carol.id).await, Ok(vec![]));
    assert_eq!(store.list_contacts(alice.id).await, Ok(vec![]), "its own list is gone");
    assert_eq!(
        store.add_contact(alice.id, "bob", ROOMY).await,
        Err(StoreError::NoSuchUser)
    );
    assert_eq!(
        store.add_contact(bob.id, "alice", ROOMY).await,
        Err(StoreError::NoSuchUser)
    );

    // The name registered again is a new account in nobody's list, with an
    // empty list of its own, and can be added anew.
    let alice2 = register(store, "alice").await;
    assert_eq!(store.list_contacts(alice2.id).await, Ok(vec![]));
    assert_eq!(store.list_contacts(carol.id).await, Ok(vec![]));
    assert_eq!(store.add_contact(carol.id, "alice", ROOMY).await.unwrap().id, alice2.id);
    // Bob's list was emptied down to one, so his limit counts only that.
    store.add_contact(bob.id, "alice", 2).await.unwrap();
    assert_eq!(
        keys(&store.list_contacts(bob.id).await.unwrap()),
        vec!["alice", "carol"]
    );
    // Deleting a contact, rather than an owner, empties others' lists too.
    store.delete_account(carol.id).await.unwrap();
    assert_eq!(keys(&store.list_contacts(bob.id).await.unwrap()), vec!["alice"]);
}

async fn tokens_create_and_resume(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    let now = now_ms();
    create_token(store, &alice, 1, now + HOUR_MS, 5).await;
    create_token(store, &bob, 2, now + HOUR_MS, 5).await;
    assert_eq!(store.resume(hash(1), now).await, Ok(Some(alice.clone())));
    assert_eq!(store.resume(hash(2), now).await, Ok(Some(bob.clone())));
    assert_eq!(
        store.resume(hash(1), now).await,
        Ok(Some(alice.clone())),
        "a token is reusable"
    );
    assert_eq!(store.resume(hash(3), now).await, Ok(None), "unknown token");
    // A token created again with the same hash is replaced, owner included.
    create_token(store, &bob, 1, now + HOUR_MS, 5).await;
    assert_eq!(store.resume(hash(1), now).await, Ok(Some(bob)));
    // Unknown users get no tokens.
    let ghost = UserId(alice.id.0 + 100);
    assert_eq!(
        store
            .create_resume_token(parley_core::store::NewResumeToken {
                user: ghost,
                ..token(&alice, 4, now + HOUR_MS, 5)
            })
            .await,
        Err(StoreError::NoSuchUser)
    );
    assert_eq!(store.resume(hash(4), now).await, Ok(None));
}

async fn tokens_expire(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let expires = now_ms() + HOUR_MS;
    create_token(store, &alice, 1, expires, 5).await;
    assert_eq!(store.resume(hash(1), expires - 1).await, Ok(Some(alice.clone())));
    assert_eq!(store.resume(hash(1), expires).await, Ok(None), "expiry is exclusive");
    assert_eq!(
        store.resume(hash(1), expires - 1).await,
        Ok(None),
        "an expired token is deleted when found"
    );

    // A token created already expired is still stored (it only resumes with
    // an earlier `now_ms`), and the next creation deletes it.
    let past = now_ms() - 1000;
    create_token(store, &alice, 2, past, 5).await;
    create_token(store, &alice, 3, past + 2 * HOUR_MS, 5).await;
    assert_eq!(live_tokens(store, [2, 3], 0).await, vec![3]);
}

async fn tokens_revoke(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let now = now_ms();
    create_token(store, &alice, 1, now + HOUR_MS, 5).await;
    create_token(store, &alice, 2, now + HOUR_MS, 5).await;
    assert_eq!(store.revoke_resume_token(hash(1)).await, Ok(()));
    assert_eq!(store.resume(hash(1), now).await, Ok(None));
    assert_eq!(store.revoke_resume_token(hash(1)).await, Ok(()), "revoking twice");
    assert_eq!(store.revoke_resume_token(hash(9)).await, Ok(()), "unknown token");
    assert_eq!(live_tokens(store, [1, 2], now).await, vec![2], "only that token");
}

async fn tokens_max_per_user_prunes_the_oldest(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    let base = now_ms() + HOUR_MS;
    let all = || 1..=9;
    // Oldest means expiring first.
    create_token(store, &alice, 1, base + 5000, 3).await;
    create_token(store, &alice, 2, base + 1000, 3).await;
    create_token(store, &alice, 3, base + 3000, 3).await;
    assert_eq!(live_tokens(store, all(), 0).await, vec![1, 2, 3]);
    create_token(store, &alice, 4, base + 4000, 3).await;
    assert_eq!(live_tokens(store, all(), 0).await, vec![1, 3, 4]);
    // Among equal expiries, the one created first goes.
    create_token(store, &bob, 5, base, 2).await;
    create_token(store, &bob, 6, base, 2).await;
    create_token(store, &bob, 7, base, 2).await;
    assert_eq!(live_tokens(store, all(), 0).await, vec![1, 3, 4, 6, 7], "per user");
    // The new token stays even when it expires before the others.
    create_token(store, &bob, 8, base - 500, 2).await;
    assert_eq!(live_tokens(store, all(), 0).await, vec![1, 3, 4, 7, 8]);
    // A lower limit prunes down to it at the next creation; 0 acts as 1.
    create_token(store, &alice, 9, base, 0).await;
    assert_eq!(live_tokens(store, all(), 0).await, vec![7, 8, 9]);
    // Revoked and expired tokens do not count against the limit.
    store.revoke_resume_token(hash(7)).await.unwrap();
    create_token(store, &bob, 1, base, 2).await;
    assert_eq!(live_tokens(store, all(), 0).await, vec![1, 8, 9]);
}

async fn delete_account_revokes_tokens(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    let now = now_ms();
    create_token(store, &alice, 1, now + HOUR_MS, 5).await;
    create_token(store, &alice, 2, now + 2 * HOUR_MS, 5).await;
    create_token(store, &bob, 3, now + HOUR_MS, 5).await;
    store.delete_account(alice.id).await.unwrap();
    assert_eq!(live_tokens(store, [1, 2, 3], now).await, vec![3]);
    assert_eq!(
        store.create_resume_token(token(&alice, 4, now + HOUR_MS, 5)).await,
        Err(StoreError::NoSuchUser)
    );
    // The name registered again is another account: old tokens stay dead,
    // and the old account's limit does not carry over.
    let alice2 = register(store, "alice").await;
    assert_eq!(live_tokens(store, [1, 2, 4], now).await, Vec::<u8>::new());
    create_token(store, &alice2, 5, now + HOUR_MS, 1).await;
    assert_eq!(store.resume(hash(5), now).await, Ok(Some(alice2)));
    assert_eq!(live_tokens(store, [1, 2, 3, 4], now).await, vec![3]);
}

/// Runs every case against one store kind, each on a fresh store.
/// An ack past the end of the mailbox covers only what exists: later
/// messages are unread, and an unread fetch from the start finds them.
async fn acks_do_not_cover_future_messages(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    send(store, &alice, "bob", "m1", "x").await;
    send(store, &alice, "bob", "m2", "x").await;
    let (acked, state) = store
        .ack(
            bob.id,
            AckRange {
                up_to: Seq(100),
                seqs: vec![],
            },
        )
        .await
        .unwrap();
    assert_eq!((acked, state.unread), (2, 0));
    send(store, &alice, "bob", "m3", "later").await;
    assert_eq!(store.mailbox_state(bob.id).await.unwrap().unread, 1);
    let unread = store.fetch(bob.id, Seq(0), 10, false).await.unwrap();
    assert_eq!(unread.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![Seq(3)]);
    let (acked, state) = store
        .ack(
            bob.id,
            AckRange {
                up_to: Seq(3),
                seqs: vec![],
            },
        )
        .await
        .unwrap();
    assert_eq!((acked, state.unread), (1, 0));
    assert!(store.fetch(bob.id, Seq(0), 10, false).await.unwrap().is_empty());
}

/// `message` to `to` with a quota on the recipient's mailbox.
fn with_quota(new: NewMessage, max_messages: u64, max_bytes: u64) -> NewMessage {
    NewMessage {
        quota: MailboxQuota {
            max_messages,
            max_bytes,
        },
        ..new
    }
}

/// Every stored message counts, acked or not; a send past the quota is
/// refused MAILBOX_FULL and stores nothing (no seq, no idempotency
/// record); deleting frees room; a retry of a stored message is still
/// answered as a duplicate.
async fn mailbox_quota_counts_messages(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    let quota = |id: &str| with_quota(message(&alice, "bob", id, "hello"), 3, u64::MAX);
    // Submitted together: SQLite runs them in one batch, and the check
    // must see the appends before it in the same run.
    let replies: Vec<_> = (1..=5).map(|i| store.append(quota(&format!("m{i}")))).collect();
    let mut stored = Vec::new();
    for (i, reply) in replies.into_iter().enumerate() {
        match reply.await {
            Ok(appended) => stored.push(appended.message),
            Err(e) => assert!(i >= 3 && e == StoreError::MailboxFull, "append {i}: {e:?}"),
        }
    }
    assert_eq!(stored.len(), 3);
    let state = store.mailbox_state(bob.id).await.unwrap();
    assert_eq!(
        (state.last_seq, state.unread),
        (Seq(3), 3),
        "nothing stored past the quota"
    );
    // Acknowledged messages still take room.
    let range = AckRange {
        up_to: Seq(3),
        seqs: vec![],
    };
    store.ack(bob.id, range).await.unwrap();
    assert_eq!(store.append(quota("m4")).await.map(drop), Err(StoreError::MailboxFull));
    // A retry of a stored message is a duplicate, not a refusal.
    assert!(store.append(quota("m1")).await.unwrap().duplicate);
    // Deleting one makes room for one; the refused id was never recorded.
    store.delete_messages(bob.id, vec![stored[0].id]).await.unwrap();
    let m4 = store.append(quota("m4")).await.unwrap();
    assert!(!m4.duplicate);
    assert_eq!(m4.message.seq, Seq(4));
    assert_eq!(store.append(quota("m5")).await.map(drop), Err(StoreError::MailboxFull));
    // Another mailbox has its own count.
    let to_alice = with_quota(message(&bob, "alice", "b1", "hi"), 3, u64::MAX);
    store.append(to_alice).await.unwrap();
    // A deleted account's mailbox goes with it: a new account of the same
    // name starts empty.
    store.delete_account(bob.id).await.unwrap();
    register(store, "bob").await;
    for i in 10..13 {
        store.append(quota(&format!("m{i}"))).await.unwrap();
    }
    assert_eq!(store.append(quota("m13")).await.map(drop), Err(StoreError::MailboxFull));
}

/// The byte quota counts bodies; a message that would pass it is refused
/// even when smaller ones still fit.
async fn mailbox_quota_counts_bytes(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    let send = |id: &str, body: &str| store.append(with_quota(message(&alice, "bob", id, body), 100, 10));
    let first = send("a", "12345").await.unwrap().message;
    assert_eq!(send("b", "123456").await.map(drop), Err(StoreError::MailboxFull));
    send("c", "67890").await.unwrap();
    assert_eq!(send("d", "x").await.map(drop), Err(StoreError::MailboxFull));
    store.delete_messages(bob.id, vec![first.id]).await.unwrap();
    send("b", "123").await.unwrap();
    send("e", "45").await.unwrap();
    assert_eq!(send("f", "6").await.map(drop), Err(StoreError::MailboxFull));
    let bodies: Vec<String> = store
        .fetch(bob.id, Seq(0), 10, true)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(bodies, ["67890", "123", "45"]);
}

/// An invite registers one account, in the same step as the account is
/// created; a used, unknown or expired one registers none and changes
/// nothing; a taken name leaves the invite unused.
async fn invites_are_used_up_with_the_account(store: &dyn Store) {
    let now = now_ms();
    let invite = |n: u8, expires_ms: u64| NewInvite {
        hash: hash(n),
        expires_ms,
        now_ms: now,
    };
    let with = |name: &str, n: u8| NewAccount {
        invite: Some(InviteUse {
            hash: hash(n),
            now_ms: now,
        }),
        ..new_account(name)
    };
    store.create_invite(invite(1, now + HOUR_MS)).await.unwrap();
    store.create_invite(invite(2, now + HOUR_MS)).await.unwrap();
    store.create_invite(invite(3, now)).await.unwrap();
    let alice = store.create_account(with("alice", 1)).await.unwrap();
    assert_eq!(
        store.create_account(with("bob", 1)).await,
        Err(StoreError::InviteInvalid),
        "used"
    );
    assert_eq!(
        store.create_account(with("bob", 9)).await,
        Err(StoreError::InviteInvalid),
        "unknown"
    );
    assert_eq!(
        store.create_account(with("bob", 3)).await,
        Err(StoreError::InviteInvalid),
        "expired"
    );
    assert_eq!(store.find_account("bob").await.unwrap(), None, "nothing was created");
    // A taken name: the invite stays for the next try.
    assert_eq!(store.create_account(with("Alice", 2)).await, Err(StoreError::NameTaken));
    let bob = store.create_account(with("bob", 2)).await.unwrap();
    assert!(bob.id > alice.id);
    // Without an invite the store creates accounts as before (the service
    // decides when one is needed).
    register(store, "carol").await;
}

fn subscriptions(contacts: &[Contact]) -> Vec<(&str, Subscription)> {
    contacts
        .iter()
        .map(|c| (c.account.name_key.as_str(), c.subscription))
        .collect()
}

async fn presence_request_approve_deny_cancel(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "Bob").await;
    register(store, "carol").await;
    // A request adds the contact and waits for Bob.
    let asked = store.request_presence(alice.id, "bob", ROOMY).await.unwrap();
    assert_eq!(
        (
            asked.target.id,
            asked.subscription,
            asked.new_request,
            asked.blocked_by_requester
        ),
        (bob.id, Subscription::Pending, true, false)
    );
    let again = store.request_presence(alice.id, "bob", ROOMY).await.unwrap();
    assert_eq!((again.subscription, again.new_request), (Subscription::Pending, false));
    assert_eq!(
        subscriptions(&store.contacts_with_presence(alice.id).await.unwrap()),
        [("bob", Subscription::Pending)]
    );
    assert_eq!(keys(&store.presence_requests(bob.id, 10).await.unwrap()), ["alice"]);
    assert_eq!(store.presence_requests(alice.id, 10).await, Ok(vec![]), "one-way");
    // Approving turns it into an approval; approving again changes nothing.
    let approved = store.answer_presence(bob.id, "alice", true).await.unwrap();
    assert_eq!(
        (approved.other.id, approved.before, approved.after),
        (alice.id, Subscription::Pending, Subscription::Approved)
    );
    let twice = store.answer_presence(bob.id, "alice", true).await.unwrap();
    assert_eq!(
        (twice.before, twice.after),
        (Subscription::Approved, Subscription::Approved)
    );
    assert_eq!(store.presence_requests(bob.id, 10).await, Ok(vec![]));
    assert_eq!(
        subscriptions(&store.contacts_with_presence(alice.id).await.unwrap()),
        [("bob", Subscription::Approved)]
    );
    // Asking again once approved keeps the approval.
    let kept = store.request_presence(alice.id, "bob", ROOMY).await.unwrap();
    assert_eq!((kept.subscription, kept.new_request), (Subscription::Approved, false));
    // Approving what nobody asked changes nothing.
    let unasked = store.answer_presence(alice.id, "carol", true).await.unwrap();
    assert_eq!(
        (unasked.before, unasked.after),
        (Subscription::None, Subscription::None)
    );
    // Denying revokes an approval; the contact stays.
    let revoked = store.answer_presence(bob.id, "alice", false).await.unwrap();
    assert_eq!(
        (revoked.before, revoked.after),
        (Subscription::Approved, Subscription::None)
    );
    assert_eq!(
        subscriptions(&store.contacts_with_presence(alice.id).await.unwrap()),
        [("bob", Subscription::None)]
    );
    // Cancelling withdraws a pending request.
    store.request_presence(alice.id, "bob", ROOMY).await.unwrap();
    let cancelled = store.cancel_presence(alice.id, "bob").await.unwrap();
    assert_eq!(
        (cancelled.before, cancelled.after),
        (Subscription::Pending, Subscription::None)
    );
    assert_eq!(store.presence_requests(bob.id, 10).await, Ok(vec![]));
    // Removing the contact takes the subscription with it.
    store.request_presence(alice.id, "bob", ROOMY).await.unwrap();
    store.answer_presence(bob.id, "alice", true).await.unwrap();
    assert_eq!(store.remove_contact(alice.id, "bob").await, Ok(true));
    store.add_contact(alice.id, "bob", ROOMY).await.unwrap();
    assert_eq!(
        subscriptions(&store.contacts_with_presence(alice.id).await.unwrap()),
        [("bob", Subscription::None)]
    );
    // Oneself is approved at once; unknown names and callers are refused.
    let me = store.request_presence(alice.id, "alice", ROOMY).await.unwrap();
    assert_eq!((me.subscription, me.new_request), (Subscription::Approved, false));
    assert_eq!(
        store.request_presence(alice.id, "nobody", ROOMY).await.map(drop),
        Err(StoreError::NoSuchUser)
    );
    assert_eq!(
        store.answer_presence(bob.id, "nobody", true).await.map(drop),
        Err(StoreError::NoSuchUser)
    );
    let ghost = UserId(bob.id.0 + 100);
    assert_eq!(
        store.cancel_presence(ghost, "bob").await.map(drop),
        Err(StoreError::NoSuchUser)
    );
    assert_eq!(store.presence_requests(ghost, 10).await, Ok(vec![]));
}

async fn presence_requests_count_against_the_contact_limit(store: &dyn Store) {
    let alice = register(store, "alice").await;
    register(store, "bob").await;
    register(store, "carol").await;
    store.request_presence(alice.id, "bob", 1).await.unwrap();
    assert!(matches!(
        store.request_presence(alice.id, "carol", 1).await,
        Err(StoreError::LimitReached(_))
    ));
    // At the limit, asking an existing contact again is fine.
    store.request_presence(alice.id, "bob", 1).await.unwrap();
    let many: Vec<_> = (0..5).map(|i| format!("u{i}")).collect();
    for name in &many {
        let user = register(store, name).await;
        store.request_presence(user.id, "carol", 1).await.unwrap();
    }
    let carol = store.find_account("carol").await.unwrap().unwrap();
    assert_eq!(
        store.presence_requests(carol.id, 3).await.unwrap().len(),
        3,
        "the listing is bounded"
    );
}

async fn blocks_refuse_appends_and_hide_requests(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    register(store, "carol").await;
    let before = send(store, &alice, "bob", "m1", "before").await;
    store.request_presence(alice.id, "bob", ROOMY).await.unwrap();
    store.answer_presence(bob.id, "alice", true).await.unwrap();
    store.request_presence(bob.id, "alice", ROOMY).await.unwrap();
    let blocked = store.block(bob.id, "alice", ROOMY).await.unwrap();
    assert_eq!((blocked.target.id, blocked.added), (alice.id, true));
    assert!(
        !store.block(bob.id, "alice", ROOMY).await.unwrap().added,
        "twice is fine"
    );
    // Subscriptions end both ways.
    assert_eq!(
        subscriptions(&store.contacts_with_presence(alice.id).await.unwrap()),
        [("bob", Subscription::None)]
    );
    assert_eq!(
        subscriptions(&store.contacts_with_presence(bob.id).await.unwrap()),
        [("alice", Subscription::None)]
    );
    // Appends from the blocked account answer as if Bob did not exist; a
    // retry of what was stored before still gets its original answer.
    assert_eq!(
        store.append(message(&alice, "bob", "m2", "after")).await.map(drop),
        Err(StoreError::NoSuchUser)
    );
    let retry = store.append(message(&alice, "bob", "m1", "before")).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.message.id, before.message.id);
    // Bob may still write to Alice.
    send(store, &bob, "alice", "b1", "hi").await;
    // Her new request is kept from him and cannot be approved.
    let hidden = store.request_presence(alice.id, "bob", ROOMY).await.unwrap();
    assert_eq!(
        (hidden.subscription, hidden.new_request),
        (Subscription::Pending, false)
    );
    assert_eq!(store.presence_requests(bob.id, 10).await, Ok(vec![]));
    let refused = store.answer_presence(bob.id, "alice", true).await.unwrap();
    assert_eq!(
        (refused.before, refused.after),
        (Subscription::None, Subscription::None)
    );
    // The blocker asking for the blocked one's presence does nothing.
    let own = store.request_presence(bob.id, "alice", ROOMY).await.unwrap();
    assert!(own.blocked_by_requester);
    assert_eq!(store.presence_requests(alice.id, 10).await, Ok(vec![]));
    // Limits and listing.
    store.block(bob.id, "carol", 2).await.unwrap();
    register(store, "dave").await;
    assert!(matches!(
        store.block(bob.id, "dave", 2).await,
        Err(StoreError::LimitReached(_))
    ));
    assert_eq!(keys(&store.list_blocked(bob.id).await.unwrap()), ["alice", "carol"]);
    assert_eq!(store.list_blocked(alice.id).await, Ok(vec![]));
    assert_eq!(
        store.block(bob.id, "nobody", ROOMY).await.map(drop),
        Err(StoreError::NoSuchUser)
    );
    // Unblocking lets messages through and drops the hidden request.
    assert_eq!(store.unblock(bob.id, "alice").await, Ok(true));
    assert_eq!(store.unblock(bob.id, "alice").await, Ok(false));
    assert_eq!(store.unblock(bob.id, "nobody").await, Ok(false));
    send(store, &alice, "bob", "m3", "again").await;
    assert_eq!(store.presence_requests(bob.id, 10).await, Ok(vec![]));
    assert_eq!(
        subscriptions(&store.contacts_with_presence(alice.id).await.unwrap()),
        [("bob", Subscription::None)]
    );
}

async fn an_account_can_refuse_a_sender_outside_accounts(store: &dyn Store) {
    let bob = register(store, "bob").await;
    let carol = register(store, "carol").await;
    let pager = UserId(i64::MAX as u64);
    let system = UserId(0);
    let from = |sender: UserId, id: &str| NewMessage {
        sender,
        sender_name: "pager:visitor".to_owned(),
        recipient_key: "bob".to_owned(),
        client_msg_id: id.to_owned(),
        body: "hi".to_owned(),
        timestamp_ms: 1_700_000_000_000,
        quota: MailboxQuota::UNLIMITED,
    };
    assert_eq!(
        store.refuse_sender(bob.id, pager, None).await,
        Ok(false),
        "new accounts accept"
    );
    let before = store.append(from(pager, "p1")).await.unwrap();
    assert_eq!(store.refuse_sender(bob.id, pager, Some(true)).await, Ok(true));
    assert_eq!(
        store.refuse_sender(bob.id, pager, Some(true)).await,
        Ok(true),
        "twice is fine"
    );
    assert_eq!(store.refuse_sender(bob.id, pager, None).await, Ok(true));
    // Refused as if Bob did not exist; a retry of what was stored before
    // still gets its original answer; other senders still reach him.
    assert_eq!(
        store.append(from(pager, "p2")).await.map(drop),
        Err(StoreError::NoSuchUser)
    );
    let retry = store.append(from(pager, "p1")).await.unwrap();
    assert_eq!((retry.duplicate, retry.message.id), (true, before.message.id));
    store.append(from(system, "s1")).await.unwrap();
    send(store, &carol, "bob", "c1", "hello").await;
    // It is no block of an account: neither listed nor counted.
    assert_eq!(store.list_blocked(bob.id).await, Ok(vec![]));
    store.block(bob.id, "carol", 1).await.unwrap();
    assert_eq!(store.refuse_sender(carol.id, pager, None).await, Ok(false));
    assert_eq!(store.refuse_sender(bob.id, pager, Some(false)).await, Ok(false));
    store.append(from(pager, "p3")).await.unwrap();
    // Unknown accounts refuse nothing and cannot be set.
    assert_eq!(store.refuse_sender(UserId(999), pager, None).await, Ok(false));
    assert_eq!(
        store.refuse_sender(UserId(999), pager, Some(true)).await,
        Err(StoreError::NoSuchUser)
    );
    // Deleting the account forgets it.
    store.refuse_sender(bob.id, pager, Some(true)).await.unwrap();
    store.delete_account(bob.id).await.unwrap();
    let again = register(store, "bob").await;
    assert_eq!(store.refuse_sender(again.id, pager, None).await, Ok(false));
}

async fn delete_account_removes_relations(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    store.request_presence(alice.id, "bob", ROOMY).await.unwrap();
    store.block(alice.id, "bob", ROOMY).await.unwrap();
    store.request_presence(bob.id, "alice", ROOMY).await.unwrap();
    store.delete_account(alice.id).await.unwrap();
    assert_eq!(store.presence_requests(bob.id, 10).await, Ok(vec![]));
    // A new account with the name inherits nothing.
    let again = register(store, "alice").await;
    assert_eq!(store.list_blocked(again.id).await, Ok(vec![]));
    assert_eq!(store.presence_requests(again.id, 10).await, Ok(vec![]));
    send(store, &bob, "alice", "b1", "hello").await;
    assert_eq!(store.contacts_with_presence(bob.id).await, Ok(vec![]));
}

/// What `held_message` holds, as the folder lists it.
fn as_listed(held: &Held, new: &NewHeld) -> HeldMessage {
    HeldMessage {
        id: held.id,
        recipient: held.recipient,
        sender: new.message.sender,
        sender_name: new.message.sender_name.clone(),
        client_msg_id: new.message.client_msg_id.clone(),
        body: new.message.body.clone(),
        timestamp_ms: new.message.timestamp_ms,
        filter: new.filter.clone(),
        score: new.score,
    }
}

/// A send held after its first try was stored (the filter judged the two
/// otherwise) is answered with the stored message and holds nothing; a
/// report, which holds a stored message on purpose, still holds it.
async fn a_held_resend_of_a_stored_message_is_its_duplicate(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    let stored = send(store, &alice, "bob", "m1", "hello").await.message;

    let resend = held_message(&alice, "bob", "m1", "hello", ROOMY_FOLDER);
    let held = store.hold(resend.clone()).await.unwrap();
    assert!(held.duplicate, "{held:?}");
    assert_eq!(held.stored.as_deref(), Some(&*stored));
    assert_eq!((held.id, held.recipient), (0, bob.id));
    assert_eq!(store.held(bob.id, 0, 10).await.unwrap(), vec![], "nothing held");

    // Deleted by its recipient, it is still the answer (from the record).
    store.delete_messages(bob.id, vec![stored.id]).await.unwrap();
    let again = store.hold(resend.clone()).await.unwrap();
    assert_eq!(again.stored.map(|m| (m.id, m.seq)), Some((stored.id, stored.seq)));
    assert_eq!(store.held(bob.id, 0, 10).await.unwrap(), vec![]);

    // A report holds the message it names.
    let kept = send(store, &alice, "bob", "m2", "report me").await.message;
    let report = NewHeld {
        send: false,
        ..held_message(&alice, "bob", "m2", "report me", ROOMY_FOLDER)
    };
    let reported = store.hold(report).await.unwrap();
    assert!(!reported.duplicate && reported.stored.is_none(), "{reported:?}");
    let folder = store.held(bob.id, 0, 10).await.unwrap();
    assert_eq!(
        folder.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        [kept.body.as_str()]
    );
}

async fn held_messages_stay_out_of_the_mailbox(store: &dyn Store) {
    let announced = Arc::new(Mutex::new(Vec::new()));
    let told = Arc::clone(&announced);
    store.on_stored(OnStored::new(move |stored| {
        parley_core::sync::lock(&told).push(stored.client_msg_id.clone());
    }));
    let alice = register(store, "alice").await;
    let bob = register(store, "Bob").await;
    let carol = register(store, "carol").await;
    let first = send(store, &alice, "bob", "m1", "hello").await.message;

    let new = held_message(&alice, "BOB", "s1", "buy now", ROOMY_FOLDER);
    let held = store.hold(new.clone()).await.unwrap();
    assert_eq!(
        (held.recipient, held.timestamp_ms, held.duplicate),
        (bob.id, new.message.timestamp_ms, false)
    );
    // The mailbox's quota is not the folder's.
    let mut over_quota = held_message(&carol, "bob", "s2", "cheap pills\0inside", ROOMY_FOLDER);
    over_quota.message.quota = MailboxQuota {
        max_messages: 0,
        max_bytes: 0,
    };
    over_quota.filter = "links".to_owned();
    let second = store.hold(over_quota.clone()).await.unwrap();
    assert!(second.id > held.id, "held ids increase");
    let third = hold(store, &alice, "bob", "s3", "more").await;
    let listed = store.held(bob.id, 0, 10).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0], as_listed(&held, &new));
    assert_eq!(listed[1], as_listed(&second, &over_quota));
    assert_eq!(listed[2].id, third.id);

    // The mailbox knows nothing of them: no message, no seq, no unread
    // count, and nothing told to live delivery.
    assert_eq!(
        store.fetch(bob.id, Seq(0), 10, true).await.unwrap(),
        vec![(*first).clone()]
    );
    assert_eq!(
        store.mailbox_state(bob.id).await,
        Ok(MailboxState {
            last_seq: Seq(1),
            unread: 1
        })
    );
    assert_eq!(send(store, &alice, "bob", "m2", "again").await.message.seq, Seq(2));
    assert_eq!(*parley_core::sync::lock(&announced), ["m1", "m2"]);

    // Paging, and folders apart.
    let page = store.held(bob.id, 0, 2).await.unwrap();
    assert_eq!(page, listed[..2]);
    assert_eq!(store.held(bob.id, second.id, 10).await.unwrap(), listed[2..]);
    assert_eq!(store.held(bob.id, third.id, 10).await, Ok(vec![]));
    assert_eq!(store.held(bob.id, 0, 0).await, Ok(vec![]));
    assert_eq!(store.held(bob.id, u64::MAX, 10).await, Ok(vec![]));
    assert_eq!(store.held(alice.id, 0, 10).await, Ok(vec![]));
    assert_eq!(store.held(UserId(carol.id.0 + 100), 0, 10).await, Ok(vec![]));
}

async fn hold_is_idempotent(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    let carol = register(store, "carol").await;
    let original = hold(store, &alice, "bob", "same", "first body").await;

    // A retry, even with another body, time and score, answers the
    // original and writes nothing.
    let mut retry = held_message(&alice, "bob", "same", "second body", ROOMY_FOLDER);
    retry.message.timestamp_ms += 5000;
    retry.score = 0.1;
    assert_eq!(
        store.hold(retry).await,
        Ok(Held {
            duplicate: true,
            ..original
        })
    );
    let folder = store.held(bob.id, 0, 10).await.unwrap();
    assert_eq!(folder.len(), 1);
    assert_eq!((folder[0].id, folder[0].body.as_str()), (original.id, "first body"));

    // The key is (recipient, sender, client id).
    let from_carol = hold(store, &carol, "bob", "same", "from carol").await;
    let to_carol = hold(store, &alice, "carol", "same", "to carol").await;
    assert!(original.id < from_carol.id && from_carol.id < to_carol.id);
    assert_eq!(held_ids(store, &bob).await, [original.id, from_carol.id]);

    // Appends' idempotency is apart from the folder's: a held message's
    // client id does not stop an append...
    let appended = send(store, &alice, "bob", "same", "appended").await.message;
    // ...but a held send whose client id names a stored message is that
    // message's duplicate (a_held_resend_of_a_stored_message_is_its_duplicate),
    // while a report holds it all the same.
    let retry = store
        .hold(held_message(&alice, "bob", "same", "x", ROOMY_FOLDER))
        .await
        .unwrap();
    assert_eq!((retry.id, retry.duplicate, retry.stored), (0, true, Some(appended)));
    send(store, &alice, "bob", "sent-first", "appended").await;
    let report = NewHeld {
        send: false,
        ..held_message(&alice, "bob", "sent-first", "held after", ROOMY_FOLDER)
    };
    assert!(!store.hold(report).await.unwrap().duplicate);

    // Once dropped, it may be held again, under a new id (by a report: a
    // send of "same" is now the appended message's duplicate).
    assert_eq!(store.drop_held(bob.id, vec![original.id]).await, Ok(vec![original.id]));
    let again = NewHeld {
        send: false,
        ..held_message(&alice, "bob", "same", "first body", ROOMY_FOLDER)
    };
    let anew = store.hold(again).await.unwrap();
    assert!(!anew.duplicate && anew.id > to_carol.id, "{anew:?}");
}

async fn hold_is_refused_as_an_append_is(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    let carol = register(store, "carol").await;
    assert_eq!(
        store
            .hold(held_message(&alice, "nobody", "s0", "x", ROOMY_FOLDER))
            .await,
        Err(StoreError::NoSuchUser)
    );
    let before = hold(store, &alice, "bob", "s1", "before").await;
    store.block(bob.id, "alice", ROOMY).await.unwrap();
    assert_eq!(
        store
            .hold(held_message(&alice, "bob", "s2", "after", ROOMY_FOLDER))
            .await,
        Err(StoreError::NoSuchUser)
    );
    // A retry of what was held before the block gets its original answer.
    assert_eq!(
        store
            .hold(held_message(&alice, "bob", "s1", "before", ROOMY_FOLDER))
            .await,
        Ok(Held {
            duplicate: true,
            ..before
        })
    );
    let from_carol = hold(store, &carol, "bob", "c1", "hi").await;
    // A refused sender outside accounts is refused the same way.
    let pager = UserId(i64::MAX as u64);
    store.refuse_sender(bob.id, pager, Some(true)).await.unwrap();
    let from_pager = NewHeld {
        message: NewMessage {
            sender: pager,
            sender_name: "pager:visitor".to_owned(),
            recipient_key: "bob".to_owned(),
            client_msg_id: "p1".to_owned(),
            body: "hi".to_owned(),
            timestamp_ms: 1_700_000_000_000,
            quota: MailboxQuota::UNLIMITED,
        },
        filter: "spam".to_owned(),
        score: 0.99,
        max_held: ROOMY_FOLDER,
        send: true,
    };
    assert_eq!(store.hold(from_pager.clone()).await, Err(StoreError::NoSuchUser));
    // Unblocked, unrefused: held again.
    store.unblock(bob.id, "alice").await.unwrap();
    store.refuse_sender(bob.id, pager, Some(false)).await.unwrap();
    let after = hold(store, &alice, "bob", "s2", "after").await;
    let paged = store.hold(from_pager).await.unwrap();
    assert_eq!(
        held_ids(store, &bob).await,
        [before.id, from_carol.id, after.id, paged.id]
    );
    assert_eq!(store.held(bob.id, after.id, 10).await.unwrap()[0].sender, pager);
}

async fn max_held_drops_the_oldest(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    let carol = register(store, "carol").await;
    let to_carol = hold(store, &alice, "carol", "c1", "x").await;
    let mut ids = Vec::new();
    for n in 1..=5 {
        let held = store
            .hold(held_message(&alice, "bob", &format!("s{n}"), "x", 3))
            .await
            .unwrap();
        assert!(!held.duplicate);
        ids.push(held.id);
    }
    assert_eq!(held_ids(store, &bob).await, ids[2..]);
    assert_eq!(held_ids(store, &carol).await, [to_carol.id], "other folders stay");
    // A lower bound drops more at once.
    let one = store.hold(held_message(&alice, "bob", "s6", "x", 1)).await.unwrap();
    assert_eq!(held_ids(store, &bob).await, [one.id]);
    // 0 keeps none: the new one is answered, and gone.
    let gone = store.hold(held_message(&alice, "bob", "s7", "x", 0)).await.unwrap();
    assert!(!gone.duplicate && gone.id > one.id);
    assert_eq!(held_ids(store, &bob).await, Vec::<u64>::new());
    // Dropped ones are no duplicates, and no id is handed out again.
    let again = hold(store, &alice, "bob", "s7", "x").await;
    assert!(again.id > gone.id);
    let first_again = hold(store, &alice, "bob", "s1", "x").await;
    assert_eq!(held_ids(store, &bob).await, [again.id, first_again.id]);
}

async fn drop_held_drops_only_own(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    let carol = register(store, "carol").await;
    let b1 = hold(store, &alice, "bob", "b1", "x").await;
    let b2 = hold(store, &alice, "bob", "b2", "x").await;
    let b3 = hold(store, &alice, "bob", "b3", "x").await;
    let c1 = hold(store, &alice, "carol", "c1", "x").await;
    // Ascending, each once; others' and unknown ids left out.
    assert_eq!(
        store
            .drop_held(bob.id, vec![b3.id, c1.id, b1.id, b3.id, u64::MAX, c1.id + 1000])
            .await,
        Ok(vec![b1.id, b3.id])
    );
    assert_eq!(held_ids(store, &bob).await, [b2.id]);
    assert_eq!(held_ids(store, &carol).await, [c1.id]);
    assert_eq!(store.drop_held(bob.id, vec![b1.id]).await, Ok(vec![]), "once");
    assert_eq!(store.drop_held(bob.id, vec![]).await, Ok(vec![]));
    assert_eq!(store.drop_held(UserId(u64::MAX), vec![c1.id]).await, Ok(vec![]));
    assert_eq!(store.drop_held(UserId(carol.id.0 + 100), vec![c1.id]).await, Ok(vec![]));
    assert_eq!(held_ids(store, &carol).await, [c1.id]);
    // Dropping touches no mailbox.
    assert_eq!(store.mailbox_state(bob.id).await, Ok(MailboxState::default()));
}

async fn delete_account_removes_the_spam_folder(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let bob = register(store, "bob").await;
    let carol = register(store, "carol").await;
    hold(store, &alice, "bob", "s1", "x").await;
    hold(store, &carol, "bob", "s2", "x").await;
    let sent = hold(store, &bob, "carol", "b1", "x").await;
    store.add_label(label("x", true, Some(0.9), 1)).await.unwrap();
    store.delete_account(bob.id).await.unwrap();
    assert_eq!(store.held(bob.id, 0, 10).await, Ok(vec![]));
    // What it held for others stays, and so do the labels.
    assert_eq!(held_ids(store, &carol).await, [sent.id]);
    assert_eq!(store.labels(0, 10).await.unwrap().len(), 1);
    // A new account with the name starts with an empty folder; the old
    // ids are not handed out again.
    let again = register(store, "bob").await;
    assert_eq!(held_ids(store, &again).await, Vec::<u64>::new());
    let anew = hold(store, &alice, "bob", "s1", "x").await;
    assert_eq!(anew.recipient, again.id);
    assert!(anew.id > sent.id);
}

async fn labels_are_kept_in_order_and_paged(store: &dyn Store) {
    assert_eq!(store.labels(0, 10).await, Ok(vec![]));
    let made = [
        label("buy now", true, Some(0.9), 1_700_000_000_000),
        label("lunch?", false, None, 1_700_000_000_001),
        label("nul\0inside", true, Some(0.5), 0),
        label("see you", false, Some(0.0), 1_700_000_000_003),
    ];
    let mut expected = Vec::new();
    for made in made {
        // The given id is ignored.
        let id = store
            .add_label(FilterLabel {
                id: 999,
                ..made.clone()
            })
            .await
            .unwrap();
        expected.push(FilterLabel { id, ..made });
    }
    assert!(expected.windows(2).all(|pair| pair[0].id < pair[1].id));
    let all = store.labels(0, 10).await.unwrap();
    assert_eq!(all, expected);
    assert_eq!(store.labels(0, 2).await.unwrap(), all[..2]);
    assert_eq!(store.labels(all[1].id, 10).await.unwrap(), all[2..]);
    assert_eq!(store.labels(all[3].id, 10).await, Ok(vec![]));
    assert_eq!(store.labels(0, 0).await, Ok(vec![]));
    assert_eq!(store.labels(u64::MAX, 10).await, Ok(vec![]));
    // Clamped like every written value; a NaN score is stored as 0.
    let odd = store
        .add_label(label("odd", false, Some(f32::NAN), u64::MAX))
        .await
        .unwrap();
    let infinite = store
        .add_label(label("sure", true, Some(f32::INFINITY), 5))
        .await
        .unwrap();
    assert_eq!(
        store.labels(all[3].id, 10).await.unwrap(),
        [
            FilterLabel {
                id: odd,
                score: Some(0.0),
                marked_ms: i64::MAX as u64,
                ..label("odd", false, None, 0)
            },
            FilterLabel {
                id: infinite,
                ..label("sure", true, Some(f32::INFINITY), 5)
            },
        ]
    );
}

async fn huge_held_values_do_not_panic(store: &dyn Store) {
    let alice = register(store, "alice").await;
    let mut huge = held_message(&alice, "alice", "huge", "x", u32::MAX);
    huge.message.timestamp_ms = u64::MAX;
    huge.message.sender = UserId(u64::MAX);
    huge.score = f32::NAN;
    let held = store.hold(huge).await.unwrap();
    assert_eq!(held.timestamp_ms, i64::MAX as u64, "timestamps are clamped");
    let listed = store.held(alice.id, 0, u32::MAX).await.unwrap();
    assert_eq!(
        (listed[0].sender, listed[0].timestamp_ms, listed[0].score),
        (UserId(i64::MAX as u64), i64::MAX as u64, 0.0)
    );
    let long_key = "k".repeat(10_000);
    for key in [long_key.as_str(), "ali\0ce"] {
        let mut odd = held_message(&alice, "alice", "odd", "x", 1);
        odd.message.recipient_key = key.to_owned();
        assert_eq!(store.hold(odd).await, Err(StoreError::NoSuchUser));
    }
    assert_eq!(store.held(UserId(u64::MAX), 0, u32::MAX).await, Ok(vec![]));
    assert_eq!(
        store.drop_held(alice.id, vec![u64::MAX, i64::MAX as u64]).await,
        Ok(vec![])
    );
    assert_eq!(store.drop_held(alice.id, vec![held.id]).await, Ok(vec![held.id]));
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    let harness = super::Harness::memory();
                    super::$case(&*harness.store).await;
                    harness.finish().await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let harness = super::Harness::sqlite();
                    super::$case(&*harness.store).await;
                    harness.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(harness) = super::Harness::postgres() else { return };
                    super::$case(&*harness.store).await;
                    harness.finish().await;
                }
            )*
        }
    };
}

conformance!(
    accounts_round_trip,
    acks_do_not_cover_future_messages,
    names_are_unique_by_key,
    user_ids_are_never_reused,
    append_assigns_seqs_and_ids,
    seqs_keep_rising_after_deletions,
    append_is_idempotent,
    unknown_users,
    fetch_pages_and_filters,
    ack_is_cumulative_and_listed,
    unread_counts,
    acks_count_each_message_once,
    delete_only_own_messages,
    delete_account_effects,
    list_matches_patterns,
    list_pages,
    ordering_follows_calls,
    closed_store_refuses_everything,
    huge_values_do_not_panic,
    contacts_add_list_remove,
    contacts_add_is_idempotent,
    contacts_of_unknown_accounts,
    contacts_limit,
    contacts_use_keys,
    delete_account_removes_contacts,
    tokens_create_and_resume,
    tokens_expire,
    tokens_revoke,
    tokens_max_per_user_prunes_the_oldest,
    delete_account_revokes_tokens,
    mailbox_quota_counts_messages,
    mailbox_quota_counts_bytes,
    invites_are_used_up_with_the_account,
    presence_request_approve_deny_cancel,
    presence_requests_count_against_the_contact_limit,
    blocks_refuse_appends_and_hide_requests,
    delete_account_removes_relations,
    an_account_can_refuse_a_sender_outside_accounts,
    held_messages_stay_out_of_the_mailbox,
    a_held_resend_of_a_stored_message_is_its_duplicate,
    hold_is_idempotent,
    hold_is_refused_as_an_append_is,
    max_held_drops_the_oldest,
    drop_held_drops_only_own,
    delete_account_removes_the_spam_folder,
    labels_are_kept_in_order_and_paged,
    huge_held_values_do_not_panic,
);
