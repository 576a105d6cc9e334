//! Unlimited registration and unlimited mailboxes, over the native
//! protocol: one address may register only so many accounts an hour, one
//! account may send only so fast, and one mailbox holds only so much.
//! (The HTTP side of the same limits is in parley-http's `quotas` tests.)
//!
//! These servers set the limits they test explicitly, through the
//! environment (as a deployment might; flags work the same way): the test
//! kit turns the two rates off for every other test.

mod common;

use std::time::{Duration, Instant};

use parley_client::{ClientError, ErrorCode};
use parley_testkit::{Store, TestServer};

fn server_error(result: Result<impl std::fmt::Debug, ClientError>) -> (ErrorCode, u32, String) {
    match result {
        Err(ClientError::Server {
            code,
            retry_after_ms,
            message,
        }) => (code, retry_after_ms, message),
        other => panic!("expected an error from the server, got {other:?}"),
    }
}

/// The finding: 5,000 accounts from one connection. With the default of
/// ten an hour per address, the eleventh is refused RATE_LIMITED with the
/// rest of the hour as its retry hint, on a new connection too; a valid
/// request that is refused changes nothing (the name is still free).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_registers_ten_accounts_an_hour_by_default() {
    // The real default: the kit's "0" is replaced by the default value.
    let server = TestServer::start_with_env(Store::Memory, &[], &[("PARLEY_REGISTRATIONS_PER_IP_PER_HOUR", "10")]);
    let client = server.client().await;
    for i in 0..10 {
        client
            .register(&format!("user{i}"), "pw")
            .await
            .unwrap_or_else(|e| panic!("registration {i}: {e}"));
    }
    let (code, retry_after_ms, message) = server_error(client.register("user10", "pw").await);
    assert_eq!(code, ErrorCode::RateLimited, "{message}");
    assert!(
        (3_500_000..=3_600_000).contains(&retry_after_ms),
        "about an hour: {retry_after_ms}"
    );
    assert!(message.contains("registrations"), "{message}");
    // Another connection from the same address is the same address.
    let other = server.client().await;
    let (code, ..) = server_error(other.register("user10", "pw").await);
    assert_eq!(code, ErrorCode::RateLimited);
    // Existing accounts log in as before, and the refused name was not taken.
    other.login("user3", "pw").await.expect("login");
    assert_eq!(
        other
            .list_accounts("user1*", "", 10)
            .await
            .expect("list")
            .accounts
            .len(),
        1,
        "user10 does not exist"
    );
}

/// Bad input is answered as bad input and does not use up the address's
/// registrations; a limit of 0 is no limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_registrations_do_not_count_and_zero_is_no_limit() {
    let server = TestServer::start_with_env(Store::Memory, &[], &[("PARLEY_REGISTRATIONS_PER_IP_PER_HOUR", "1")]);
    let client = server.client().await;
    let (code, ..) = server_error(client.register("no spaces allowed", "pw").await);
    assert_eq!(code, ErrorCode::InvalidName);
    client.register("first", "pw").await.expect("the one registration");
    let (code, ..) = server_error(client.register("second", "pw").await);
    assert_eq!(code, ErrorCode::RateLimited);

    let unlimited = TestServer::start_with(Store::Memory, &["--registrations-per-ip-per-hour", "0"]);
    let client = unlimited.client().await;
    for i in 0..30 {
        client.register(&format!("u{i}"), "pw").await.expect("no limit");
    }
}

/// An account may send `rate` messages a second with a burst of ten
/// seconds' worth, over all its sessions; past it RATE_LIMITED says how
/// long until the next token. Other accounts are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_past_the_account_rate_are_refused_with_the_wait() {
    let server = TestServer::start_with_env(Store::Memory, &[], &[("PARLEY_SEND_RATE_PER_ACCOUNT", "5")]);
    let alice = server.user("alice").await;
    let alice_phone = server.user("alice").await;
    let bob = server.user("bob").await;
    let started = Instant::now();
    let mut sent = 0u32;
    let refused = loop {
        assert!(sent < 200, "never refused");
        // The two sessions share one bucket.
        let session = if sent.is_multiple_of(2) { &alice } else { &alice_phone };
        match session.send("bob", "hi").await {
            Ok(_) => sent += 1,
            Err(e) => break server_error(Err::<(), _>(e)),
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let (code, retry_after_ms, message) = refused;
    assert_eq!(code, ErrorCode::RateLimited, "{message}");
    // The burst (50) and what refilled meanwhile (5 a second).
    let most = 50 + (elapsed * 5.0).ceil() as u32 + 1;
    assert!((50..=most).contains(&sent), "sent {sent} in {elapsed:.2}s");
    assert!(
        (1..=200).contains(&retry_after_ms),
        "a token every 200 ms: {retry_after_ms}"
    );
    // Nothing was stored for the refused send.
    let stored = bob.fetch(0, 1000, true).await.expect("fetch").messages.len();
    assert_eq!(stored as u32, sent);
    // Bob has his own bucket.
    bob.send("alice", "hello").await.expect("bob sends");
    // After the wait, alice may send again.
    // deliberate: waiting as long as the server said is what is tested.
    tokio::time::sleep(Duration::from_millis(u64::from(retry_after_ms))).await;
    parley_testkit::wait_until("alice's next token", common::WAIT, async || {
        match alice.send("bob", "later").await {
            Ok(_) => true,
            Err(e) if e.code() == Some(ErrorCode::RateLimited) => false,
            Err(e) => panic!("send after the wait: {e}"),
        }
    })
    .await;
}

/// The finding: 2,000 × 64 KiB to one recipient grew the database by
/// 179 MB. A mailbox holds `mailbox_max_messages` messages and
/// `mailbox_max_bytes` bytes of bodies, acknowledged or not; the send
/// past either is refused MAILBOX_FULL to the sender and stores nothing;
/// the recipient's deletions make room.
async fn a_full_mailbox_refuses_sends_until_messages_are_deleted(store: Store) {
    let server = TestServer::start_with_env(
        store,
        &[],
        &[
            ("PARLEY_MAILBOX_MAX_MESSAGES", "3"),
            ("PARLEY_MAILBOX_MAX_BYTES", "1000"),
        ],
    );
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    for i in 0..3 {
        alice.send("bob", &format!("m{i}")).await.expect("room");
    }
    let (code, _, message) = server_error(alice.send("bob", "one too many").await);
    assert_eq!(code, ErrorCode::MailboxFull, "{message}");
    assert!(message.contains("bob"), "{message}");
    let batch = bob.fetch(0, 100, true).await.expect("fetch");
    assert_eq!(batch.messages.len(), 3, "nothing stored past the quota");
    // Acknowledged messages still count.
    bob.ack(3, vec![]).await.expect("ack");
    let (code, ..) = server_error(alice.send("bob", "still full").await);
    assert_eq!(code, ErrorCode::MailboxFull);
    // Deleting one makes room for one.
    let first = batch.messages[0].message_id;
    bob.delete_messages(vec![first]).await.expect("delete");
    alice.send("bob", "fits now").await.expect("room again");
    let (code, ..) = server_error(alice.send("bob", "full again").await);
    assert_eq!(code, ErrorCode::MailboxFull);
    // The byte bound: a body that alone passes it never fits.
    let carol = server.user("carol").await;
    let (code, ..) = server_error(alice.send("carol", &"x".repeat(1001)).await);
    assert_eq!(code, ErrorCode::MailboxFull);
    alice.send("carol", &"x".repeat(1000)).await.expect("exactly the quota");
    assert_eq!(carol.fetch(0, 10, true).await.expect("fetch").messages.len(), 1);
}

every_store!(full_mailbox, a_full_mailbox_refuses_sends_until_messages_are_deleted);

/// `registration = closed`: nobody registers, whatever the request says;
/// existing accounts are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_registration_refuses_everyone() {
    let server = TestServer::start_with_env(Store::Sqlite, &[], &[("PARLEY_REGISTRATION", "closed")]);
    let client = server.client().await;
    let (code, _, message) = server_error(client.register("alice", "pw").await);
    assert_eq!(code, ErrorCode::RegistrationClosed, "{message}");
    // Even with an invite code, and even with bad input: closed is closed.
    let (code, ..) = server_error(client.register_with_invite("bob", "pw", "0123").await);
    assert_eq!(code, ErrorCode::RegistrationClosed);
    let (code, ..) = server_error(client.register("no spaces", "pw").await);
    assert_eq!(code, ErrorCode::RegistrationClosed);
}

/// `registration = invite`: `parleyd ctl invite` prints a code once; it
/// registers one account and is then used up. A missing, wrong or used
/// code is INVITE_INVALID and creates nothing; a taken name does not use
/// the code up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_codes_from_ctl_register_one_account_each() {
    let server = TestServer::start_with_env(Store::Sqlite, &[], &[("PARLEY_REGISTRATION", "invite")]);
    let invite = || {
        let (status, stdout, stderr) = server.ctl(&["invite", "--expires-hours", "2"]);
        assert!(status.success(), "{stderr}");
        let reply: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
        let expires_ms = reply["expires_ms"].as_u64().expect("expires_ms");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(
            (now_ms + 7_000_000..=now_ms + 7_300_000).contains(&expires_ms),
            "two hours"
        );
        reply["code"].as_str().expect("code").to_owned()
    };
    let client = server.client().await;
    let (code, _, message) = server_error(client.register("alice", "pw").await);
    assert_eq!(code, ErrorCode::InviteInvalid, "{message}");
    assert!(message.contains("invit"), "{message}");
    let (code, ..) = server_error(client.register_with_invite("alice", "pw", "not-a-code").await);
    assert_eq!(code, ErrorCode::InviteInvalid);

    let first = invite();
    let second = invite();
    assert_ne!(first, second);
    client
        .register_with_invite("alice", "pw", &first)
        .await
        .expect("invited");
    let (code, ..) = server_error(client.register_with_invite("bob", "pw", &first).await);
    assert_eq!(code, ErrorCode::InviteInvalid, "used up");
    // A taken name leaves the code unused.
    let (code, ..) = server_error(client.register_with_invite("Alice", "pw", &second).await);
    assert_eq!(code, ErrorCode::NameTaken);
    client
        .register_with_invite("bob", "pw", &second)
        .await
        .expect("still valid");
    client.login("bob", "pw").await.expect("login");
    // Only the hash is stored: the code is nowhere in the database files.
    for file in ["parley.db", "parley.db-wal"] {
        let bytes = std::fs::read(server.data_dir.join(file)).unwrap_or_default();
        assert!(!bytes.windows(second.len()).any(|w| w == second.as_bytes()), "{file}");
    }
    // Bad lifetimes are refused by the server, which changes nothing.
    let (status, _, stderr) = server.ctl(&["invite", "--expires-hours", "0"]);
    assert!(!status.success() && stderr.contains("hour"), "{stderr}");
}
