//! File transfer on the real `parleyd`: the server introduces the two
//! sides, the bytes go directly over QUIC on loopback or through the
//! server's relay when the direct path is blocked, an offer waits for an
//! offline recipient, an interrupted transfer resumes, a changed byte is
//! caught, and a stranger gets nowhere.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parley_client::files::{self, Done, FileError, Options, Route};
use parley_client::{Client, ErrorCode};
use parley_proto::v1;
use parley_testkit::{Store, TestServer};
use rand::RngCore;

/// Longest a whole transfer may take in these tests.
const TRANSFER: Duration = Duration::from_secs(60);

fn server(extra: &[&str]) -> TestServer {
    let mut flags = vec!["--relay-bytes-per-sec-per-user", "0"];
    flags.extend_from_slice(extra);
    TestServer::start_with(Store::Memory, &flags)
}

/// A file of `size` random bytes in `dir`.
fn random_file(dir: &Path, name: &str, size: usize) -> PathBuf {
    let mut bytes = vec![0u8; size];
    rand::rng().fill_bytes(&mut bytes);
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    path
}

/// Direct paths on loopback only, quickly given up.
fn loopback() -> Options {
    Options {
        bind: "127.0.0.1:0".parse().unwrap(),
        direct_timeout: Duration::from_secs(2),
        ..Options::default()
    }
}

/// Options whose announced address is a UDP socket that never answers:
/// the direct path is blocked both ways.
fn blocked(hole: &UdpSocket) -> Options {
    Options {
        announce: Some(vec![hole.local_addr().unwrap()]),
        direct_timeout: Duration::from_secs(1),
        ..loopback()
    }
}

fn relay_only() -> Options {
    Options {
        direct: false,
        ..Options::default()
    }
}

fn quiet(_: files::Progress) {}

/// Starts `alice` sending `path` to `to` in the background.
fn send_in_background(
    alice: &Arc<Client>,
    to: &str,
    path: &Path,
    options: Options,
) -> tokio::task::JoinHandle<Result<Done, FileError>> {
    let (alice, to, path) = (Arc::clone(alice), to.to_owned(), path.to_owned());
    tokio::spawn(async move {
        tokio::time::timeout(TRANSFER, files::send_file(&alice, &to, &path, &options, &quiet))
            .await
            .expect("the sender finishes in time")
    })
}

/// Waits until `client`'s mailbox holds a file offer; returns its seq.
async fn offer_seq(client: &Client) -> u64 {
    for _ in 0..200 {
        let batch = client.fetch(0, 100, false).await.unwrap();
        if let Some(m) = batch
            .messages
            .iter()
            .find(|m| parley_core::files::FileOffer::parse(&m.body).is_some())
        {
            return m.seq;
        }
        // deliberate: polling the mailbox for the offer the sender stores.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no file offer arrived");
}

async fn receive(bob: &Client, seq: u64, out: &Path, options: &Options) -> Result<Done, FileError> {
    tokio::time::timeout(TRANSFER, files::receive_file(bob, seq, Some(out), options, &quiet))
        .await
        .expect("the recipient finishes in time")
}

/// alice sends `source` to bob (options `send`), bob takes the offer into
/// `inbox` (options `take`); both must finish, on the same route, with the
/// same bytes. Returns the route.
async fn transfer(
    alice: &Arc<Client>,
    bob: &Client,
    source: &Path,
    inbox: &Path,
    send: Options,
    take: Options,
) -> Route {
    let sending = send_in_background(alice, "bob", source, send);
    let seq = offer_seq(bob).await;
    let got = receive(bob, seq, inbox, &take).await.expect("received");
    let sent = sending.await.unwrap().expect("sent");
    assert_eq!(got.route, sent.route, "both sides saw the same route");
    assert_eq!(got.offer_id, sent.offer_id);
    assert_eq!(got.path, inbox.join(source.file_name().unwrap()));
    same_bytes(source, &got.path);
    got.route
}

fn same_bytes(a: &Path, b: &Path) {
    assert!(
        std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
        "the files differ"
    );
}

/// The bytes the server relayed, from its metrics.
async fn relayed_bytes(server: &TestServer) -> u64 {
    let metrics = reqwest::get(format!("{}/metrics", server.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("parley_file_relayed_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the relayed-bytes counter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_goes_directly_between_two_clients_and_arrives_whole() {
    let server = server(&[]);
    let dir = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let source = random_file(dir.path(), "photo.jpg", 3 << 20);
    let alice = Arc::new(server.user("alice").await);
    let bob = server.user("bob").await;

    let route = transfer(&alice, &bob, &source, inbox.path(), loopback(), loopback()).await;
    assert_eq!(route, Route::Direct);
    assert!(!inbox.path().join("photo.jpg.part").exists());
    assert_eq!(relayed_bytes(&server).await, 0, "nothing went through the server");
    // The offer is read once the file is in.
    assert_eq!(bob.ack(0, Vec::new()).await.unwrap().unread, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_direct_path_blocked_the_server_relays_the_bytes() {
    let server = server(&[]);
    let dir = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let source = random_file(dir.path(), "notes.pdf", (1 << 20) + 12_345);
    let (hole_a, hole_b) = (
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        UdpSocket::bind("127.0.0.1:0").unwrap(),
    );
    let alice = Arc::new(server.user("alice").await);
    let bob = server.user("bob").await;

    let route = transfer(&alice, &bob, &source, inbox.path(), blocked(&hole_a), blocked(&hole_b)).await;
    assert_eq!(route, Route::Relayed);
    assert_eq!(relayed_bytes(&server).await, (1 << 20) + 12_345);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_waits_for_an_offline_recipient_who_accepts_later() {
    let server = server(&[]);
    let dir = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let source = random_file(dir.path(), "song.ogg", 200_000);
    // bob exists but is not connected when alice offers.
    drop(server.user("bob").await);
    let alice = Arc::new(server.user("alice").await);
    let sending = send_in_background(&alice, "bob", &source, relay_only());

    // deliberate: bob comes online a while after the offer was stored.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bob = server.user("bob").await;
    let seq = offer_seq(&bob).await;
    let offer = bob.fetch(seq - 1, 1, false).await.unwrap().messages.remove(0);
    assert_eq!(offer.from, "alice");
    assert!(offer.body.starts_with("[file] song.ogg (200.0 kB)"), "{}", offer.body);
    let got = receive(&bob, seq, inbox.path(), &relay_only()).await.expect("received");
    sending.await.unwrap().expect("sent");
    same_bytes(&source, &got.path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_transfer_keeps_its_bytes_and_resumes_after_them() {
    // A slow relay, so the transfer is cut in the middle.
    let server = TestServer::start_with(Store::Memory, &["--relay-bytes-per-sec-per-user", "1000000"]);
    let dir = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let size = 3_000_000;
    let source = random_file(dir.path(), "video.mp4", size);
    let alice = Arc::new(server.user("alice").await);
    let bob = Arc::new(server.user("bob").await);

    let sending = send_in_background(&alice, "bob", &source, relay_only());
    let seq = offer_seq(&bob).await;
    let receiving = {
        let (bob, out) = (Arc::clone(&bob), inbox.path().to_owned());
        tokio::spawn(async move { receive(&bob, seq, &out, &relay_only()).await })
    };
    // deliberate: let a second or so of bytes through, then cut the sender off.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sending.abort();
    let _ = sending.await;
    drop(alice);
    match receiving.await.unwrap() {
        Err(FileError::Interrupted { have, size: s, why }) => {
            assert!(have > 0, "{have}");
            // The pace held: one second's worth saved up, then 1 MB/s, for
            // 1.5 s, and a window of chunks in flight. (Only an upper bound:
            // a slow machine moves fewer bytes, never more.)
            assert!(
                have <= 2_500_000 + 8 * 131_072,
                "{have} bytes passed a 1 MB/s relay in 1.5 s"
            );
            assert_eq!(s, size as u64);
            assert!(why.contains("connection ended"), "{why}");
        }
        other => panic!("expected an interruption, got {other:?}"),
    }
    let part = inbox.path().join("video.mp4.part");
    let kept = std::fs::metadata(&part).expect("the partial file is kept").len();
    assert!(kept > 0);

    // The same command again: the same offer, the bytes from where they stopped.
    let alice = Arc::new(server.user("alice").await);
    let sending = send_in_background(&alice, "bob", &source, relay_only());
    let got = receive(&bob, seq, inbox.path(), &relay_only()).await.expect("resumed");
    let sent = sending.await.unwrap().expect("sent");
    assert_eq!(got.from, kept);
    assert_eq!(sent.offer_id, got.offer_id, "the same offer, not a second one");
    same_bytes(&source, &got.path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_byte_is_caught_by_the_hash_and_nothing_is_kept() {
    let server = server(&[]);
    let dir = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let source = random_file(dir.path(), "contract.txt", 100_000);
    let alice = Arc::new(server.user("alice").await);
    let bob = server.user("bob").await;

    let sending = send_in_background(&alice, "bob", &source, loopback());
    let seq = offer_seq(&bob).await;
    // The offer names the hash of the file as it was; one byte changes
    // before the bytes go.
    let mut bytes = std::fs::read(&source).unwrap();
    bytes[50_000] ^= 0x01;
    std::fs::write(&source, &bytes).unwrap();

    let got = receive(&bob, seq, inbox.path(), &loopback()).await;
    assert!(matches!(got, Err(FileError::HashMismatch)), "{got:?}");
    assert!(matches!(sending.await.unwrap(), Err(FileError::HashMismatch)));
    assert!(!inbox.path().join("contract.txt").exists());
    assert!(!inbox.path().join("contract.txt.part").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_can_neither_accept_nor_serve_someone_elses_offer() {
    let server = server(&[]);
    let dir = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let source = random_file(dir.path(), "secret.bin", 50_000);
    let alice = Arc::new(server.user("alice").await);
    let bob = server.user("bob").await;
    let mallory = server.user("mallory").await;
    let info = |n: u8| v1::PeerInfo {
        candidates: vec!["127.0.0.1:9".into()],
        fingerprint: vec![n; 32],
    };

    // alice's offer is stored; she is not serving it yet.
    let (size, sha) = files::hash_file(&source).await.unwrap();
    let offer = alice
        .offer_file("bob", "offer-1", "secret.bin", size, &sha)
        .await
        .unwrap();
    let seq = offer_seq(&bob).await;

    // mallory cannot accept it: it is not in her mailbox.
    let e = mallory.accept_file(seq, info(3), 0).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidRequest));
    // mallory serves it: she only ever waits alone, meets nobody, and
    // cannot tell whether the offer is pending (a second try is answered
    // the same way as the first).
    let first = mallory.serve_file("bob", offer.message_id, info(3)).await.unwrap();
    let bob_joined = bob.accept_file(seq, info(2), 0).await.unwrap();
    assert_eq!(bob_joined.peer, "alice");
    let second = mallory.serve_file("bob", offer.message_id, info(3)).await.unwrap();
    assert_eq!(
        (first.name.as_str(), first.size),
        ("", 0),
        "nothing of the offer is shown to her"
    );
    assert_eq!((second.name.as_str(), second.size), ("", 0));
    if let Ok(event) = tokio::time::timeout(Duration::from_millis(300), mallory.next_file_event()).await {
        panic!("mallory should hear nothing, got {event:?}");
    }
    if let Ok(event) = tokio::time::timeout(Duration::from_millis(300), bob.next_file_event()).await {
        panic!("bob should not meet mallory, got {event:?}");
    }
    // mallory cannot relay into it either.
    let chunk = mallory
        .request(v1::client_frame::Body::RelayChunk(v1::RelayChunk {
            offer_id: offer.message_id,
            offset: 0,
            data: vec![0; 10],
        }))
        .await
        .unwrap();
    assert!(matches!(chunk.body, Some(v1::server_frame::Body::Error(e)) if e.code == ErrorCode::InvalidRequest as i32));
    drop(bob_joined);

    // The real sender still gets the file across (a new offer: the first
    // one was made by hand).
    drop(bob);
    let bob = server.user("bob").await;
    bob.delete_messages(vec![offer.message_id]).await.unwrap();
    let sending = send_in_background(&alice, "bob", &source, relay_only());
    let seq = offer_seq(&bob).await;
    let got = receive(&bob, seq, inbox.path(), &relay_only()).await.expect("received");
    sending.await.unwrap().expect("sent");
    same_bytes(&source, &got.path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_tells_the_waiting_sender_and_leaves_a_note() {
    let server = server(&[]);
    let dir = tempfile::tempdir().unwrap();
    let source = random_file(dir.path(), "spam.exe", 1000);
    let alice = Arc::new(server.user("alice").await);
    let bob = server.user("bob").await;

    let sending = send_in_background(&alice, "bob", &source, loopback());
    let seq = offer_seq(&bob).await;
    let ended = bob.refuse_file(seq).await.unwrap();
    assert_eq!(ended.result, v1::TransferResult::Refused as i32);
    assert!(matches!(sending.await.unwrap(), Err(FileError::Refused)));
    // The offer left bob's mailbox; alice has a note, from bob.
    assert!(bob.fetch(0, 100, true).await.unwrap().messages.is_empty());
    let notes = alice.fetch(0, 100, false).await.unwrap().messages;
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].from, "bob");
    assert!(
        notes[0].body.contains("refused your file spam.exe"),
        "{}",
        notes[0].body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_offers_and_chunks_are_refused_and_store_nothing() {
    let server = server(&["--max-file-bytes", "1000000", "--relay-max-file-bytes", "1000"]);
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let sha = [1u8; 32];
    for (name, size, sha, code) in [
        ("../etc/passwd", 10, &sha[..], ErrorCode::InvalidRequest),
        ("", 10, &sha[..], ErrorCode::InvalidRequest),
        ("a\u{1b}[2J", 10, &sha[..], ErrorCode::InvalidRequest),
        ("empty", 0, &sha[..], ErrorCode::InvalidRequest),
        ("big", 1_000_001, &sha[..], ErrorCode::MessageTooLarge),
        ("short-hash", 10, &sha[..31], ErrorCode::InvalidRequest),
    ] {
        let e = alice
            .request(v1::client_frame::Body::OfferFile(v1::OfferFile {
                to: "bob".into(),
                client_msg_id: format!("bad-{name}"),
                name: name.into(),
                size,
                sha256: sha.to_vec(),
            }))
            .await
            .unwrap();
        match e.body {
            Some(v1::server_frame::Body::Error(e)) => assert_eq!(e.code, code as i32, "{name:?}: {}", e.message),
            other => panic!("{name:?} was accepted: {other:?}"),
        }
    }
    assert!(
        bob.fetch(0, 100, true).await.unwrap().messages.is_empty(),
        "nothing stored"
    );
    // A file larger than the relay's limit is offered, but not relayed.
    let offer = alice.offer_file("bob", "ok-1", "mid.bin", 5000, &sha).await.unwrap();
    let seq = offer_seq(&bob).await;
    let none = || v1::PeerInfo {
        candidates: Vec::new(),
        fingerprint: vec![0; 32],
    };
    alice.serve_file("bob", offer.message_id, none()).await.unwrap();
    bob.accept_file(seq, none(), 0).await.unwrap();
    let Some(files::FileEvent::Ready(ready)) = alice.next_file_event().await else {
        panic!("ready")
    };
    assert!(!ready.relay);
    let chunk = alice
        .request(v1::client_frame::Body::RelayChunk(v1::RelayChunk {
            offer_id: offer.message_id,
            offset: 0,
            data: vec![0; 10],
        }))
        .await
        .unwrap();
    assert!(matches!(chunk.body, Some(v1::server_frame::Body::Error(e)) if e.message.contains("relay_max_file_bytes")));
    // A bad peer description.
    let e = bob
        .accept_file(
            seq,
            v1::PeerInfo {
                candidates: vec!["not an address".into()],
                fingerprint: vec![0; 32],
            },
            0,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidRequest));
    // The server is still serving.
    alice.send("bob", "still here").await.unwrap();
}

/// Two nodes of one service (PostgreSQL and NATS): skipped, saying why,
/// when the services are absent (failing under PARLEY_REQUIRE_SERVICES=1).
fn two_nodes() -> Option<(parley_testkit::cluster::Cluster, TestServer, TestServer)> {
    let cluster = parley_testkit::cluster::Cluster::create()?;
    let a = cluster.node(&["--relay-bytes-per-sec-per-user", "0"]);
    let b = cluster.node(&["--relay-bytes-per-sec-per-user", "0"]);
    Some((cluster, a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_nodes_meet_through_the_bus_and_go_directly() {
    let Some((_cluster, a, b)) = two_nodes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let source = random_file(dir.path(), "across.bin", 1 << 20);
    let alice = Arc::new(a.user("alice").await);
    let bob = b.user("bob").await;

    let route = transfer(&alice, &bob, &source, inbox.path(), loopback(), loopback()).await;
    assert_eq!(route, Route::Direct);

    // The recipient first this time, the sender after: the meeting is made
    // either way round.
    let second = random_file(dir.path(), "second.bin", 100_000);
    let (size, sha) = files::hash_file(&second).await.unwrap();
    // The offer as `send_file` makes it (its key), so that the sender's
    // command below serves this same offer.
    let key = files::offer_key("bob", "second.bin", size, &sha);
    let offer = alice.offer_file("bob", &key, "second.bin", size, &sha).await.unwrap();
    let receiving = {
        let out = inbox.path().to_owned();
        tokio::spawn(async move { receive(&bob, offer.seq, &out, &loopback()).await })
    };
    // deliberate: the recipient's join goes first and waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = send_in_background(&alice, "bob", &second, loopback()).await.unwrap();
    let got = receiving.await.unwrap().expect("received second");
    assert_eq!(sent.expect("sent second").offer_id, offer.message_id);
    same_bytes(&second, &got.path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_nodes_a_refusal_reaches_the_sender_and_a_blocked_path_fails_with_a_reason() {
    let Some((_cluster, a, b)) = two_nodes() else { return };
    let dir = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let alice = Arc::new(a.user("alice").await);
    let bob = b.user("bob").await;

    let refused = random_file(dir.path(), "refused.bin", 1000);
    let sending = send_in_background(&alice, "bob", &refused, loopback());
    let seq = offer_seq(&bob).await;
    // deliberate: alice's join reaches the bus before bob refuses.
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.refuse_file(seq).await.unwrap();
    assert!(matches!(sending.await.unwrap(), Err(FileError::Refused)));

    // No direct path, and the relay needs both sides on one process.
    let blocked_file = random_file(dir.path(), "blocked.bin", 1000);
    let (hole_a, hole_b) = (
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        UdpSocket::bind("127.0.0.1:0").unwrap(),
    );
    let sending = send_in_background(&alice, "bob", &blocked_file, blocked(&hole_a));
    let seq = offer_seq(&bob).await;
    let got = receive(&bob, seq, inbox.path(), &blocked(&hole_b)).await;
    let sent = sending.await.unwrap();
    match sent {
        Err(FileError::Failed(why)) => assert!(why.contains("another server process"), "{why}"),
        other => panic!("expected a failure with its reason, got {other:?}"),
    }
    assert!(got.is_err(), "{got:?}");
    assert!(!inbox.path().join("blocked.bin").exists());
}
