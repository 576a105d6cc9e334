//! Reliability: resume tokens, keep-alive, re-push of unacknowledged
//! messages, contacts and presence, login throttling, per-address limits.

mod common;

use std::time::Duration;

use common::*;
use parley_client::{Client, ErrorCode, Event};
use parley_proto::v1::{self, client_frame, server_frame};
use parley_testkit::{Store, TestServer};

async fn resume_skips_the_password_and_restores_the_session(store: Store) {
    let server = TestServer::start(store);
    let alice = server.user("alice").await;
    let bob = server.client().await;
    bob.register("bob", "pw-bob").await.unwrap();
    let login = bob.login("bob", "pw-bob").await.unwrap();
    assert_eq!(login.resume_token.len(), 32);
    assert!(login.resume_expires_ms > 0);
    bob.subscribe(0).await.unwrap();
    alice.send("bob", "one").await.unwrap();
    let got = next_messages(&bob).await;
    // Bob's connection drops before he acks; a message arrives meanwhile.
    drop(bob);
    alice.send("bob", "two").await.unwrap();
    let again = server.client().await;
    let resumed = again.resume(&login.resume_token).await.unwrap();
    assert_eq!((resumed.name.as_str(), resumed.unread), ("bob", 2));
    assert_eq!(resumed.resume_token.len(), 32, "a resume hands out a new token");
    assert_ne!(resumed.resume_token, login.resume_token);
    // Pending and unacked messages are delivered, nothing twice.
    again.subscribe(0).await.unwrap();
    let pushed = collect_pushes(&again, 2).await;
    assert_eq!(bodies(&pushed), ["one", "two"]);
    assert_eq!(pushed[0].message_id, got[0].message_id);
    again.ack(pushed[1].seq, vec![]).await.unwrap();
    assert_no_push(&again).await;
    // The replaced token is dead; the new one works (another reconnect),
    // until logout revokes it.
    let third = server.client().await;
    assert_eq!(
        third.resume(&login.resume_token).await.unwrap_err().code(),
        Some(ErrorCode::AuthFailed)
    );
    let latest = third.resume(&resumed.resume_token).await.unwrap().resume_token;
    third.logout().await.unwrap();
    let fourth = server.client().await;
    assert_eq!(
        fourth.resume(&latest).await.unwrap_err().code(),
        Some(ErrorCode::AuthFailed)
    );
    // Garbage tokens fail the same way.
    assert_eq!(
        fourth.resume(b"nonsense").await.unwrap_err().code(),
        Some(ErrorCode::AuthFailed)
    );
    assert_eq!(
        fourth.resume(&[7u8; 32]).await.unwrap_err().code(),
        Some(ErrorCode::AuthFailed)
    );
}
every_store!(
    resume_skips_the_password_and_restores_the_session,
    resume_skips_the_password_and_restores_the_session
);

async fn deleting_the_account_revokes_its_tokens(store: Store) {
    let server = TestServer::start(store);
    let bob = server.client().await;
    bob.register("bob", "pw").await.unwrap();
    let token = bob.login("bob", "pw").await.unwrap().resume_token;
    bob.delete_account("bob", "pw").await.unwrap();
    // Even after the name is taken again.
    server.user("bob").await;
    let c = server.client().await;
    assert_eq!(c.resume(&token).await.unwrap_err().code(), Some(ErrorCode::AuthFailed));
}
every_store!(
    deleting_the_account_revokes_its_tokens,
    deleting_the_account_revokes_its_tokens
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_survive_a_restart() {
    let mut server = TestServer::start(Store::Sqlite);
    server.user("bob").await;
    let c = server.client().await;
    let token = c.login("bob", "pw-bob").await.unwrap().resume_token;
    drop(c);
    server.stop();
    server.restart();
    let c = server.client().await;
    assert_eq!(c.resume(&token).await.unwrap().name, "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_go_offline() {
    let server = TestServer::start_with(Store::Memory, &["--keepalive-secs", "1"]);
    let alice = server.user("alice").await;
    alice.add_contact("bob").await.unwrap_err();
    let bob_client = server.user("bob").await;
    alice.add_contact("bob").await.unwrap();
    bob_client.approve_presence("alice").await.unwrap();
    drop(bob_client);
    // That connection closes on its own time; its "offline" must not be
    // taken for the one this test waits for.
    parley_testkit::wait_until("bob's first connection to close", WAIT, async || {
        !alice.list_contacts().await.unwrap()[0].online
    })
    .await;
    alice.subscribe(0).await.unwrap();
    // Bob logs in by hand and then says nothing at all.
    let mut bob = RawSession::login(&server.addr, "bob", "pw-bob").await;
    match tokio::time::timeout(WAIT, alice.next_event()).await.unwrap() {
        Some(Event::Presence { name, online }) => assert_eq!((name.as_str(), online), ("bob", true)),
        other => panic!("expected presence, got {other:?}"),
    }
    let goodbye = bob
        .read_until(|f| match &f.body {
            Some(server_frame::Body::Goodbye(g)) => Some(g.code),
            _ => None,
        })
        .await;
    assert_eq!(goodbye, ErrorCode::Timeout as i32);
    match tokio::time::timeout(WAIT, alice.next_event()).await.unwrap() {
        Some(Event::Presence { name, online }) => assert_eq!((name.as_str(), online), ("bob", false)),
        other => panic!("expected presence, got {other:?}"),
    }
    // The library client pings by itself, so Alice stays connected.
    // deliberate: time passes beyond the keep-alive to show she stays.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    alice.ping().await.unwrap();
}

async fn unacked_pushes_are_pushed_again_until_acked(store: Store) {
    let server = TestServer::start_with(store, &["--ack-timeout-ms", "200", "--max-ack-backoff-ms", "400"]);
    let alice = server.user("alice").await;
    server.user("bob").await;
    // A client that withholds its acks.
    let mut bob = RawSession::login(&server.addr, "bob", "pw-bob").await;
    bob.send(client_frame::Body::Subscribe(v1::Subscribe { after_seq: 0 }))
        .await;
    let sent = alice.send("bob", "ack me").await.unwrap();
    let mut deliveries = 0;
    while deliveries < 3 {
        let ids = bob
            .read_until(|f| match &f.body {
                Some(server_frame::Body::Push(p)) => Some(p.messages.iter().map(|m| m.message_id).collect::<Vec<_>>()),
                _ => None,
            })
            .await;
        assert_eq!(ids, vec![sent.message_id], "the same message, again");
        deliveries += 1;
    }
    // Once acked, it stops.
    bob.send(client_frame::Body::Ack(v1::Ack {
        up_to_seq: sent.seq,
        seqs: vec![],
    }))
    .await;
    let acked = bob
        .read_until(|f| match &f.body {
            Some(server_frame::Body::Acked(a)) => Some(a.unread),
            _ => None,
        })
        .await;
    assert_eq!(acked, 0);
    let quiet = tokio::time::timeout(Duration::from_millis(800), async {
        loop {
            let f = bob.read_frame().await;
            if matches!(f.body, Some(server_frame::Body::Push(_))) {
                return f;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "no push after the ack: {quiet:?}");
}
every_store!(
    unacked_pushes_are_pushed_again_until_acked,
    unacked_pushes_are_pushed_again_until_acked
);

/// The ack timer does not re-push to a client that has not read what it
/// was given: a second copy would only queue behind the first.
#[tokio::test]
async fn a_reader_that_has_not_read_its_pushes_is_not_pushed_them_again() {
    const MESSAGES: u64 = 400;
    let server = TestServer::start_with(
        Store::Memory,
        &[
            "--ack-timeout-ms",
            "200",
            "--max-ack-backoff-ms",
            "400",
            "--max-unacked",
            "1000",
        ],
    );
    let alice = server.user("alice").await;
    server.user("bob").await;
    let mut bob = RawSession::login(&server.addr, "bob", "pw-bob").await;
    bob.send(client_frame::Body::Subscribe(v1::Subscribe { after_seq: 0 }))
        .await;
    // Far more than the kernel's socket buffers hold: the server's own
    // output stays backed up while Bob does not read.
    let body = "x".repeat(60 * 1024);
    for _ in 0..MESSAGES {
        alice.send("bob", &body).await.unwrap();
    }
    // deliberate: several ack timeouts pass unread; that is the scenario.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    bob.take_all_in_order(MESSAGES).await;
}

async fn contacts_and_presence(store: Store) {
    let server = TestServer::start_with(store, &["--max-contacts", "2"]);
    let alice = server.user("alice").await;
    for name in ["bob", "carol", "dave"] {
        server
            .client()
            .await
            .register(name, &format!("pw-{name}"))
            .await
            .unwrap();
    }
    assert_eq!(
        alice.add_contact("nobody").await.unwrap_err().code(),
        Some(ErrorCode::NoSuchUser)
    );
    alice.add_contact("BOB").await.unwrap();
    let list = alice.add_contact("carol").await.unwrap();
    assert_eq!(
        list.iter().map(|c| (c.name.as_str(), c.online)).collect::<Vec<_>>(),
        [("bob", false), ("carol", false)]
    );
    assert_eq!(
        alice.add_contact("dave").await.unwrap_err().code(),
        Some(ErrorCode::LimitReached)
    );
    assert_eq!(
        alice.add_contact("bob").await.unwrap().len(),
        2,
        "adding twice is fine at the limit"
    );
    // Presence is by consent: Bob lets Alice see his.
    approve_and_leave(&server, "bob", &alice, "alice").await;
    alice.subscribe(0).await.unwrap();
    // Bob's first session: one event; his second: none.
    let bob1 = server.user("bob").await;
    match tokio::time::timeout(WAIT, alice.next_event()).await.unwrap() {
        Some(Event::Presence { name, online }) => assert_eq!((name.as_str(), online), ("bob", true)),
        other => panic!("expected presence, got {other:?}"),
    }
    let bob2 = server.user("bob").await;
    assert_no_push(&alice).await;
    assert!(alice.list_contacts().await.unwrap()[0].online);
    // Dave did not approve Alice: his presence is not announced.
    let _dave = server.user("dave").await;
    assert_no_push(&alice).await;
    drop(bob1);
    assert_no_push(&alice).await;
    drop(bob2);
    match tokio::time::timeout(WAIT, alice.next_event()).await.unwrap() {
        Some(Event::Presence { name, online }) => assert_eq!((name.as_str(), online), ("bob", false)),
        other => panic!("expected presence, got {other:?}"),
    }
    // After removing him, Bob's comings and goings are not announced.
    let list = alice.remove_contact("bob").await.unwrap();
    assert_eq!(list.len(), 1);
    let _bob3 = server.user("bob").await;
    assert_no_push(&alice).await;
    // Contacts persist across logins.
    let alice2 = server.user("alice").await;
    assert_eq!(alice2.list_contacts().await.unwrap()[0].name, "carol");
}
every_store!(contacts_and_presence, contacts_and_presence);

/// A presence change that waits behind messages (the unacked window is
/// full) arrives after them, when they are pushed together, not lost.
async fn presence_behind_waiting_messages_arrives_after_them(store: Store) {
    let server = TestServer::start_with(store, &["--max-unacked", "2"]);
    let alice = server.user("alice").await;
    let carol = server.user("carol").await;
    server.client().await.register("bob", "pw-bob").await.unwrap();
    alice.add_contact("bob").await.unwrap();
    approve_and_leave(&server, "bob", &alice, "alice").await;
    alice.subscribe(0).await.unwrap();
    for i in 1..=5 {
        carol.send("alice", &format!("m{i}")).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(next_messages(&alice).await);
    }
    // The window is full: the rest waits in the session's queue, and Bob's
    // arrival queues behind it.
    assert_no_push(&alice).await;
    let _bob = server.user("bob").await;
    assert_no_push(&alice).await;
    while got.len() < 5 {
        alice.ack(got.last().unwrap().seq, vec![]).await.unwrap();
        got.extend(next_messages(&alice).await);
    }
    assert_eq!(bodies(&got), ["m1", "m2", "m3", "m4", "m5"]);
    alice.ack(got.last().unwrap().seq, vec![]).await.unwrap();
    match tokio::time::timeout(WAIT, alice.next_event()).await.unwrap() {
        Some(Event::Presence { name, online }) => assert_eq!((name.as_str(), online), ("bob", true)),
        other => panic!("expected presence, got {other:?}"),
    }
}
every_store!(
    presence_behind_waiting_messages_arrives_after_them,
    presence_behind_waiting_messages_arrives_after_them
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_is_throttled() {
    let server = TestServer::start_with(Store::Memory, &["--login-failures-per-account", "3"]);
    server.user("alice").await;
    let c = server.client().await;
    for _ in 0..3 {
        assert_eq!(
            c.login("alice", "guess").await.unwrap_err().code(),
            Some(ErrorCode::AuthFailed)
        );
    }
    // Even the right password is refused now, with a hint when to retry.
    match c.login("alice", "pw-alice").await.unwrap_err() {
        parley_client::ClientError::Server {
            code, retry_after_ms, ..
        } => {
            assert_eq!(code, ErrorCode::RateLimited);
            assert!(retry_after_ms > 0 && retry_after_ms <= 60_000);
        }
        other => panic!("expected RATE_LIMITED, got {other}"),
    }
    // Other accounts are not affected.
    server.user("bob").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped() {
    let server = TestServer::start_with(Store::Memory, &["--max-connections-per-ip", "2"]);
    let _a = server.client().await;
    let _b = server.client().await;
    match Client::connect(&server.addr).await {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::Busy)),
        Ok(_) => panic!("third connection from one address accepted"),
    }
    // Another loopback address still gets in.
    let port: u16 = server.addr.rsplit(':').next().unwrap().parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    loop {
        use tokio::io::AsyncReadExt;
        if let Some(f) = parley_proto::decode_frame::<parley_proto::ServerFrame>(&mut buf, 1 << 20).unwrap() {
            assert!(matches!(f.body, Some(server_frame::Body::Welcome(_))), "{f:?}");
            break;
        }
        assert!(stream.read_buf(&mut buf).await.unwrap() > 0);
    }
}

/// BUSY means nothing was done, also in the middle of a login: the same
/// AuthContinue may be sent again and completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_step_answered_busy_can_be_sent_again() {
    use parley_core::Mechanism;
    use parley_core::scram::ClientExchange;
    let server = TestServer::start_with(Store::Sqlite, &["--write-queue", "2"]);
    let _alice = server.user("alice").await;
    let bob = server.client().await;
    bob.register("bob", "pw-bob").await.unwrap();
    let mut exchange = ClientExchange::new("bob", "pw-bob");
    let challenge = match bob
        .request(client_frame::Body::AuthStart(v1::AuthStart {
            client_first: exchange.client_first().into_bytes(),
            quiet: false,
        }))
        .await
        .unwrap()
        .body
    {
        Some(server_frame::Body::AuthChallenge(c)) => c,
        other => panic!("expected a challenge, got {other:?}"),
    };
    let mechanism = Mechanism::from_name(&challenge.mechanism).unwrap();
    let client_final = exchange.client_final(mechanism, &challenge.server_first).unwrap();
    let continue_login = || {
        client_frame::Body::AuthContinue(v1::AuthContinue {
            client_final: client_final.clone().into_bytes(),
        })
    };

    // The writer waits with one op in hand and two more fill its queue.
    let jam = StoreJam::start(&server, "alice", 2).await;
    let refused = bob.request(continue_login()).await.unwrap();
    match refused.body {
        Some(server_frame::Body::Error(e)) => assert_eq!(e.code, ErrorCode::Busy as i32, "{e:?}"),
        other => panic!("expected BUSY, got {other:?}"),
    }
    jam.release().await;

    // The same step again: the login was kept.
    match bob.request(continue_login()).await.unwrap().body {
        Some(server_frame::Body::AuthOk(ok)) => {
            exchange.verify_server_final(&ok.server_final).unwrap();
            assert_eq!(ok.name, "bob");
        }
        other => panic!("expected AuthOk, got {other:?}"),
    }
    bob.ping().await.unwrap();
}

/// While the store has no room for new work, a send is refused with the
/// store's retry hint, an invalid send still gets its own error (validation
/// comes first), requests sent right after a refusal are answered once the
/// connection's short read pause is over, and once the store has room the
/// same send goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_are_refused_while_the_store_is_full_and_the_connection_keeps_serving() {
    let server = TestServer::start_with(Store::Sqlite, &["--write-queue", "4"]);
    let alice = std::sync::Arc::new(server.user("alice").await);
    server.user("bob").await;
    let send = |to: &str| {
        client_frame::Body::Send(v1::SendMessage {
            to: to.into(),
            client_msg_id: format!("to-{to}"),
            body: "hello".into(),
        })
    };

    // The writer waits with one request in hand, and three more fill the
    // queue's share for new work (3 of 4).
    let jam = StoreJam::start(&server, "alice", 3).await;

    match alice.request(send("bob")).await.unwrap().body {
        Some(server_frame::Body::Error(e)) => {
            assert_eq!(e.code, ErrorCode::Busy as i32, "{e:?}");
            assert_eq!(e.retry_after_ms, parley_store::sqlite::BUSY_RETRY_AFTER_MS);
        }
        other => panic!("expected BUSY, got {other:?}"),
    }
    // Sent during the read pause: answered after it, in order. A send is
    // refused before it is read, so one to a bad name gets BUSY too (it
    // changed nothing); other requests are served.
    let (bad, ping) = tokio::join!(alice.request(send("no such name!")), alice.ping());
    match bad.unwrap().body {
        Some(server_frame::Body::Error(e)) => assert_eq!(e.code, ErrorCode::Busy as i32, "{e:?}"),
        other => panic!("expected BUSY, got {other:?}"),
    }
    ping.unwrap();

    jam.release().await;
    match alice.request(send("bob")).await.unwrap().body {
        Some(server_frame::Body::Sent(sent)) => assert!(!sent.duplicate),
        other => panic!("expected Sent, got {other:?}"),
    }
    // Sent again once the store has room, the bad send gets its own error.
    match alice.request(send("no such name!")).await.unwrap().body {
        Some(server_frame::Body::Error(e)) => assert_eq!(e.code, ErrorCode::NoSuchUser as i32, "{e:?}"),
        other => panic!("expected NO_SUCH_USER, got {other:?}"),
    }
}

/// A connection whose pipeline window is full of work the store holds up
/// still has its sends answered, BUSY, as they come: a refusal takes no
/// place in the window, so it does not wait in the socket until the
/// admitted work is done (under a flood that wait was most of a BUSY's
/// latency).
#[tokio::test]
async fn a_send_past_a_full_window_is_refused_at_once_while_the_store_is_full() {
    let server = TestServer::start_with(Store::Sqlite, &["--write-queue", "4", "--pipeline-window", "4"]);
    server.user("alice").await;
    server.user("bob").await;
    let mut raw = RawSession::login(&server.addr, "alice", "pw-alice").await;
    let write = || client_frame::Body::RemoveContact(v1::RemoveContact { name: "nobody".into() });
    // The writer idle, then held by the database's lock: of four writes on
    // this connection (its whole window) it holds one and three fill the
    // queue's share for new work.
    let blocker = lock_idle_writer(&server, &mut raw).await;
    let mut writes = Vec::new();
    for _ in 0..4 {
        writes.push(raw.send(write()).await);
    }
    parley_testkit::wait_until("three writes to wait in the store's queue", WAIT, async || {
        store_queue_depth(&server).await >= 3
    })
    .await;

    let send = raw
        .send(client_frame::Body::Send(v1::SendMessage {
            to: "bob".into(),
            client_msg_id: "past-the-window".into(),
            body: "hello".into(),
        }))
        .await;
    let answer = tokio::time::timeout(WAIT, raw.read_until(|f| (f.request_id == send).then(|| f.clone())))
        .await
        .expect("the send answered while the writes wait");
    match answer.body {
        Some(server_frame::Body::Error(e)) => assert_eq!(e.code, ErrorCode::Busy as i32, "{e:?}"),
        other => panic!("expected BUSY, got {other:?}"),
    }

    // A send that would not decode (its message holds field 0) is not
    // refused like one that would: the connection closes with BAD_FRAME,
    // once the writes in flight are answered.
    let malformed: &[u8] = &[0, 0, 0, 11, 8, 99, 162, 1, 6, 10, 3, b'b', b'o', b'b', 0];
    tokio::io::AsyncWriteExt::write_all(&mut raw.stream, malformed)
        .await
        .unwrap();

    blocker.execute_batch("COMMIT").unwrap();
    let mut answered = std::collections::HashSet::new();
    loop {
        let frame = raw.read_frame().await;
        assert_ne!(frame.request_id, 99, "the malformed send was answered: {frame:?}");
        if writes.contains(&frame.request_id) {
            answered.insert(frame.request_id);
        }
        if let Some(server_frame::Body::Error(e)) = &frame.body
            && frame.request_id == 0
        {
            assert_eq!(e.code, ErrorCode::BadFrame as i32, "{e:?}");
            break;
        }
    }
    assert_eq!(answered.len(), writes.len(), "every write answered before the close");
}

/// The SQLite writer held up: another connection to the database holds its
/// write lock, the writer waits with one request in hand, and `queued` more
/// requests wait in its queue. The requests go on a connection of their own,
/// so that a `Ping` after them proves the server started them (requests
/// start in the order received), and the store's queue depth (`/metrics`)
/// shows where they are.
struct StoreJam {
    blocker: rusqlite::Connection,
    raw: RawSession,
    /// Requests sent, and how many of them were answered (refused) already.
    held: usize,
    answered: usize,
}

impl StoreJam {
    async fn start(server: &TestServer, name: &str, queued: usize) -> StoreJam {
        // Logged in first: a login writes to the store too.
        let mut raw = RawSession::login(&server.addr, name, &format!("pw-{name}")).await;
        let blocker = lock_idle_writer(server, &mut raw).await;
        let mut jam = StoreJam {
            blocker,
            raw,
            held: 0,
            answered: 0,
        };
        jam.hold(1).await;
        let depth = || store_queue_depth(server);
        parley_testkit::wait_until("the writer to take the first request", WAIT, async || {
            depth().await == 0
        })
        .await;
        jam.hold(queued).await;
        parley_testkit::wait_until(
            &format!("{queued} requests to wait in the store's queue"),
            WAIT,
            async || depth().await >= queued as u64,
        )
        .await;
        jam
    }

    /// Sends `n` writes and waits until the server has started them.
    async fn hold(&mut self, n: usize) {
        for _ in 0..n {
            // A write: the writer takes the database's write lock for it (a
            // lone read would not wait for the blocker).
            self.raw
                .send(client_frame::Body::RemoveContact(v1::RemoveContact {
                    name: "nobody".into(),
                }))
                .await;
        }
        self.held += n;
        self.raw.send(client_frame::Body::Ping(v1::Ping { nonce: 7 })).await;
        loop {
            let frame = self.raw.read_frame().await;
            match frame.body {
                Some(server_frame::Body::Pong(_)) => break,
                _ if frame.request_id != 0 => self.answered += 1,
                _ => {}
            }
        }
    }

    /// Unlocks the database; every held request completes.
    async fn release(mut self) {
        self.blocker.execute_batch("COMMIT").unwrap();
        while self.answered < self.held {
            let frame = self.raw.read_frame().await;
            if frame.request_id != 0 {
                self.answered += 1;
            }
        }
    }
}

/// Takes the database's write lock once the SQLite writer is idle: one
/// write of `raw`'s answered (so every write queued before it is done) and
/// nothing left in the queue. Otherwise a write of someone else's could be
/// the one the writer holds when the lock is taken, and the test's first
/// request would wait in the queue instead. The lock holds until the
/// connection returned commits.
async fn lock_idle_writer(server: &TestServer, raw: &mut RawSession) -> rusqlite::Connection {
    raw.send(client_frame::Body::RemoveContact(v1::RemoveContact {
        name: "nobody".into(),
    }))
    .await;
    while raw.read_frame().await.request_id == 0 {}
    parley_testkit::wait_until("the store's queue to be empty", WAIT, async || {
        store_queue_depth(server).await == 0
    })
    .await;
    let blocker = rusqlite::Connection::open(server.data_dir.join("parley.db")).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    blocker
}

/// The store's queue depth now, from the server's `/metrics`.
async fn store_queue_depth(server: &TestServer) -> u64 {
    let text = reqwest::get(format!("{}/metrics", server.http_url()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix("parley_store_queue_depth "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .expect("a parley_store_queue_depth sample")
}
