//! User stories end to end: the real parleyd on port 0, real sockets, every store.

mod common;

use common::*;
use parley_client::ErrorCode;
use parley_testkit::{Store, TestServer};

async fn offline_message_waits_for_login(store: Store) {
    let server = TestServer::start(store);
    let alice = server.user("alice").await;
    let bob_reg = server.client().await;
    bob_reg.register("Bob", "pw-Bob").await.unwrap();
    drop(bob_reg);
    for i in 1..=3 {
        let r = alice.send("bob", &format!("hello {i}")).await.unwrap();
        assert_eq!(r.seq, i, "seq is per-recipient and starts at 1");
    }
    // Bob logs in later: the reply carries the unread count.
    let bob = server.client().await;
    let info = bob.login("BOB", "pw-Bob").await.unwrap();
    assert_eq!(info.name, "Bob", "name keeps the case it was registered with");
    assert_eq!((info.unread, info.last_seq), (3, 3));
    // Read two at a time, oldest first; acking marks them read.
    let page = bob.fetch(0, 2, false).await.unwrap();
    assert_eq!(bodies(&page.messages), ["hello 1", "hello 2"]);
    assert!(page.more);
    assert_eq!(page.messages[0].from, "alice");
    let acked = bob.ack(page.messages[1].seq, vec![]).await.unwrap();
    assert_eq!((acked.acked, acked.unread), (2, 1));
    let rest = bob.fetch(0, 2, false).await.unwrap();
    assert_eq!(bodies(&rest.messages), ["hello 3"]);
    assert!(!rest.more);
    // Everything after seq 1, acked or not.
    let after = bob.fetch(1, 10, true).await.unwrap();
    assert_eq!(bodies(&after.messages), ["hello 2", "hello 3"]);
    assert!(after.messages[0].acked && !after.messages[1].acked);
}
every_store!(offline_message_waits_for_login, offline_message_waits_for_login);

async fn live_push_reaches_every_session(store: Store) {
    let server = TestServer::start(store);
    let alice = server.user("alice").await;
    let bob1 = server.user("bob").await;
    let bob2 = server.user("bob").await;
    bob1.subscribe(0).await.unwrap();
    bob2.subscribe(0).await.unwrap();
    let sent = alice.send("bob", "live!").await.unwrap();
    for bob in [&bob1, &bob2] {
        let got = next_messages(bob).await;
        assert_eq!(bodies(&got), ["live!"]);
        assert_eq!(got[0].message_id, sent.message_id);
        assert_eq!(got[0].seq, sent.seq);
    }
    // One session acks; the other session's next login sees nothing unread.
    bob1.ack(sent.seq, vec![]).await.unwrap();
    let bob3 = server.client().await;
    assert_eq!(bob3.login("bob", "pw-bob").await.unwrap().unread, 0);
}
every_store!(live_push_reaches_every_session, live_push_reaches_every_session);

async fn unacked_messages_are_pushed_again_on_next_login(store: Store) {
    let server = TestServer::start(store);
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    bob.subscribe(0).await.unwrap();
    alice.send("bob", "one").await.unwrap();
    alice.send("bob", "two").await.unwrap();
    let got = collect_pushes(&bob, 2).await;
    // Ack only the first, then go away.
    bob.ack(got[0].seq, vec![]).await.unwrap();
    drop(bob);
    let bob = server.user("bob").await;
    bob.subscribe(0).await.unwrap();
    let again = next_messages(&bob).await;
    assert_eq!(bodies(&again), ["two"]);
    // Subscribing after a seq skips what the client already has.
    let bob2 = server.user("bob").await;
    bob2.subscribe(again[0].seq).await.unwrap();
    assert_no_push(&bob2).await;
}
every_store!(
    unacked_messages_are_pushed_again_on_next_login,
    unacked_messages_are_pushed_again_on_next_login
);

async fn resend_is_idempotent(store: Store) {
    let server = TestServer::start(store);
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    bob.subscribe(0).await.unwrap();
    let first = alice.send_with_id("bob", "m-1", "once").await.unwrap();
    assert!(!first.duplicate);
    let again = alice.send_with_id("bob", "m-1", "once").await.unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (again.message_id, again.seq, again.timestamp_ms),
        (first.message_id, first.seq, first.timestamp_ms)
    );
    assert_eq!(bodies(&next_messages(&bob).await), ["once"]);
    assert_no_push(&bob).await;
    assert_eq!(bob.fetch(0, 10, true).await.unwrap().messages.len(), 1);
    // Still a duplicate after the recipient deleted the message.
    bob.delete_messages(vec![first.message_id]).await.unwrap();
    assert!(alice.send_with_id("bob", "m-1", "once").await.unwrap().duplicate);
    assert!(bob.fetch(0, 10, true).await.unwrap().messages.is_empty());
}
every_store!(resend_is_idempotent, resend_is_idempotent);

async fn order_per_sender_holds_under_pipelining(store: Store) {
    let server = TestServer::start(store);
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    bob.subscribe(0).await.unwrap();
    // 200 sends in flight at once on one connection.
    let sends = (0..200).map(|i| {
        let alice = &alice;
        async move { alice.send("bob", &format!("{i}")).await.unwrap() }
    });
    let receipts = parley_core::sync::join_in_order(sends).await;
    let mut seqs: Vec<u64> = receipts.iter().map(|r| r.seq).collect();
    seqs.sort();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    let got = collect_pushes(&bob, 200).await;
    let numbers: Vec<u64> = got.iter().map(|m| m.body.parse().unwrap()).collect();
    assert_eq!(numbers, (0..200).collect::<Vec<_>>(), "pushed in the order sent");
    assert!(got.windows(2).all(|w| w[1].seq == w[0].seq + 1), "no gaps");
}
every_store!(
    order_per_sender_holds_under_pipelining,
    order_per_sender_holds_under_pipelining
);

async fn delete_messages_only_from_own_mailbox(store: Store) {
    let server = TestServer::start(store);
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let to_bob = alice.send("bob", "for bob").await.unwrap();
    let to_alice = bob.send("alice", "for alice").await.unwrap();
    // Alice cannot delete Bob's message, nor ack or read it.
    let d = alice
        .delete_messages(vec![to_bob.message_id, to_alice.message_id])
        .await
        .unwrap();
    assert_eq!(
        (d.deleted, d.not_found),
        (vec![to_alice.message_id], vec![to_bob.message_id])
    );
    assert_eq!(alice.ack(to_bob.seq + 10, vec![]).await.unwrap().acked, 0);
    assert!(alice.fetch(0, 10, true).await.unwrap().messages.is_empty());
    assert_eq!(bodies(&bob.fetch(0, 10, true).await.unwrap().messages), ["for bob"]);
    // A set at once; seqs are never reused after deletion.
    let a = alice.send("bob", "a").await.unwrap();
    let b = alice.send("bob", "b").await.unwrap();
    let d = bob
        .delete_messages(vec![a.message_id, b.message_id, to_bob.message_id])
        .await
        .unwrap();
    assert_eq!(d.deleted.len(), 3);
    assert!(bob.fetch(0, 10, true).await.unwrap().messages.is_empty());
    assert_eq!(alice.send("bob", "c").await.unwrap().seq, b.seq + 1);
}
every_store!(
    delete_messages_only_from_own_mailbox,
    delete_messages_only_from_own_mailbox
);

async fn list_accounts_by_wildcard_and_page(store: Store) {
    let server = TestServer::start(store);
    let alice = server.user("alice").await;
    for name in ["albert", "Alfred", "bob", "bobby", "carol", "xbobz"] {
        server.client().await.register(name, "pw").await.unwrap();
    }
    let names = |p: &parley_client::AccountPage| p.accounts.iter().map(|a| a.name.clone()).collect::<Vec<_>>();
    let all = alice.list_accounts("", "", 0).await.unwrap();
    assert_eq!(
        names(&all),
        ["albert", "Alfred", "alice", "bob", "bobby", "carol", "xbobz"]
    );
    assert!(all.next_after.is_empty());
    let al = alice.list_accounts("AL*", "", 0).await.unwrap();
    assert_eq!(names(&al), ["albert", "Alfred", "alice"]);
    assert_eq!(
        al.accounts
            .iter()
            .filter(|a| a.online)
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        ["alice"]
    );
    let bob_q = alice.list_accounts("*bob?", "", 0).await.unwrap();
    assert_eq!(names(&bob_q), ["xbobz"]);
    let bob_star = alice.list_accounts("*bob*", "", 0).await.unwrap();
    assert_eq!(names(&bob_star), ["bob", "bobby", "xbobz"]);
    // Page by page, two at a time.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = alice.list_accounts("*", &after, 2).await.unwrap();
        assert!(page.accounts.len() <= 2);
        seen.extend(names(&page));
        if page.next_after.is_empty() {
            break;
        }
        after = page.next_after;
    }
    assert_eq!(seen, names(&all));
    let err = alice.list_accounts("a[b]", "", 0).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidPattern));
}
every_store!(list_accounts_by_wildcard_and_page, list_accounts_by_wildcard_and_page);

async fn account_deletion_semantics(store: Store) {
    let server = TestServer::start(store);
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let bob_other = server.user("bob").await;
    let carol = server.user("carol").await;
    alice.send("bob", "unread mail for bob").await.unwrap();
    bob.send("carol", "bob wrote this").await.unwrap();
    bob.delete_account("bob", "pw-bob").await.unwrap();
    // Bob's other session is told and closed.
    match tokio::time::timeout(WAIT, bob_other.next_event()).await.unwrap() {
        Some(parley_client::Event::Goodbye { code, .. }) => assert_eq!(code, ErrorCode::AccountDeleted),
        other => panic!("expected goodbye, got {other:?}"),
    }
    // Mail others hold from Bob stays, under the name he had.
    let held = carol.fetch(0, 10, true).await.unwrap();
    assert_eq!(held.messages[0].from, "bob");
    // Sending to a deleted account: no such user. Logging in: auth failed.
    assert_eq!(
        alice.send("bob", "hello?").await.unwrap_err().code(),
        Some(ErrorCode::NoSuchUser)
    );
    let again = server.client().await;
    assert_eq!(
        again.login("bob", "pw-bob").await.unwrap_err().code(),
        Some(ErrorCode::AuthFailed)
    );
    // The name can be registered again: a new account with an empty mailbox.
    let new_bob = server.user("bob").await;
    let info = new_bob.fetch(0, 10, true).await.unwrap();
    assert!(info.messages.is_empty(), "the old mailbox is gone");
    assert_eq!(alice.send("bob", "hi new bob").await.unwrap().seq, 1);
}
every_store!(account_deletion_semantics, account_deletion_semantics);

async fn logout_then_login_again(store: Store) {
    let server = TestServer::start(store);
    let alice = server.user("alice").await;
    alice.logout().await.unwrap();
    assert_eq!(
        alice.send("alice", "x").await.unwrap_err().code(),
        Some(ErrorCode::NotAuthenticated)
    );
    alice.login("alice", "pw-alice").await.unwrap();
    alice.send("alice", "note to self").await.unwrap();
    assert_eq!(alice.fetch(0, 10, false).await.unwrap().messages.len(), 1);
}
every_store!(logout_then_login_again, logout_then_login_again);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_a_restart() {
    let mut server = TestServer::start(Store::Sqlite);
    {
        let alice = server.user("alice").await;
        server.user("bob").await;
        let keep = alice.send("bob", "keep me").await.unwrap();
        let gone = alice.send("bob", "delete me").await.unwrap();
        alice.send("bob", "unread").await.unwrap();
        let bob = server.user("bob").await;
        bob.ack(keep.seq, vec![]).await.unwrap();
        bob.delete_messages(vec![gone.message_id]).await.unwrap();
        server
            .user("carol")
            .await
            .delete_account("carol", "pw-carol")
            .await
            .unwrap();
    }
    assert!(server.stop().success(), "graceful stop exits 0");
    server.restart();
    let bob = server.client().await;
    let info = bob.login("bob", "pw-bob").await.unwrap();
    assert_eq!((info.unread, info.last_seq), (1, 3));
    let all = bob.fetch(0, 10, true).await.unwrap();
    assert_eq!(bodies(&all.messages), ["keep me", "unread"]);
    assert!(all.messages[0].acked);
    assert_eq!(
        bob.list_accounts("*", "", 0).await.unwrap().accounts.len(),
        2,
        "carol stays deleted"
    );
    // Seqs continue where they were.
    let alice = server.client().await;
    alice.login("alice", "pw-alice").await.unwrap();
    assert_eq!(alice.send("bob", "after restart").await.unwrap().seq, 4);
}
