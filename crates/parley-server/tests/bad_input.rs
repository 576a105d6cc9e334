//! Bad input gets its defined error, changes nothing, and the server keeps
//! serving everyone else.

mod common;

use bytes::BytesMut;
use common::*;
use parley_client::{Client, ErrorCode};
use parley_proto::v1::{self, client_frame, server_frame};
use parley_proto::{ServerFrame, decode_frame};
use parley_testkit::{Store, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes on a fresh socket and returns every frame the server
/// sends before closing (after its Welcome).
async fn raw_exchange(addr: &str, bytes: &[u8]) -> Vec<ServerFrame> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut buf = BytesMut::new();
    let read_all = async {
        loop {
            buf.reserve(4096);
            if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(WAIT, read_all)
        .await
        .expect("server closes the connection");
    let mut frames = Vec::new();
    while let Some(f) = decode_frame::<ServerFrame>(&mut buf, 1 << 24).unwrap() {
        frames.push(f);
    }
    assert!(matches!(
        frames.first().and_then(|f| f.body.as_ref()),
        Some(server_frame::Body::Welcome(_))
    ));
    frames.remove(0);
    frames
}

fn error_code(frame: &ServerFrame) -> ErrorCode {
    match &frame.body {
        Some(server_frame::Body::Error(e)) => ErrorCode::try_from(e.code).unwrap(),
        Some(server_frame::Body::Goodbye(g)) => ErrorCode::try_from(g.code).unwrap(),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A bystander that must keep working while others misbehave.
async fn assert_still_serving(server: &TestServer, bystander: &Client) {
    bystander.ping().await.expect("bystander still served");
    let fresh = server.user("fresh").await;
    fresh
        .send("bystander", "still here")
        .await
        .expect("server still accepts work");
}

async fn transport_garbage_closes_only_that_connection(store: Store) {
    let server = TestServer::start_with(store, &["--max-frame-bytes", "4096", "--max-body-bytes", "2048"]);
    let bystander = server.user("bystander").await;

    // Garbage bytes: a length prefix followed by a payload that is no protobuf.
    let frames = raw_exchange(&server.addr, &[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).await;
    assert_eq!(error_code(&frames[0]), ErrorCode::BadFrame);

    // A frame whose length prefix exceeds the limit.
    let frames = raw_exchange(&server.addr, &[0, 1, 0, 0, 1, 2, 3]).await;
    assert_eq!(error_code(&frames[0]), ErrorCode::FrameTooLarge);

    // A well-formed frame of an unknown request type (field 99).
    let frames = raw_exchange(&server.addr, &[0, 0, 0, 5, 0x08, 0x07, 0x98, 0x06, 0x01]).await;
    assert_eq!(error_code(frames.last().unwrap()), ErrorCode::UnknownType);

    // A truncated frame, then the client hangs up: nothing is answered,
    // the connection simply ends.
    let frames = raw_exchange_then_half_close(&server.addr, &[0, 0, 0, 50, 1, 2, 3]).await;
    assert!(frames.is_empty(), "{frames:?}");

    assert_still_serving(&server, &bystander).await;
}
every_store!(
    transport_garbage_closes_only_that_connection,
    transport_garbage_closes_only_that_connection
);

async fn raw_exchange_then_half_close(addr: &str, bytes: &[u8]) -> Vec<ServerFrame> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut buf = BytesMut::new();
    tokio::time::timeout(WAIT, async {
        loop {
            buf.reserve(4096);
            if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                break;
            }
        }
    })
    .await
    .expect("server closes");
    let mut frames = Vec::new();
    while let Some(f) = decode_frame::<ServerFrame>(&mut buf, 1 << 24).unwrap() {
        frames.push(f);
    }
    frames.remove(0);
    frames
}

async fn request_errors_keep_the_connection(store: Store) {
    let server = TestServer::start_with(store, &["--max-frame-bytes", "4096", "--max-body-bytes", "2048"]);
    let bystander = server.user("bystander").await;
    let alice = server.user("alice").await;

    // Duplicate account (case-insensitively) and invalid names.
    let c = server.client().await;
    assert_eq!(
        c.register("ALICE", "x").await.unwrap_err().code(),
        Some(ErrorCode::NameTaken)
    );
    for bad in ["", "9lives", "has space", "x".repeat(33).as_str(), "al*ce"] {
        assert_eq!(
            c.register(bad, "x").await.unwrap_err().code(),
            Some(ErrorCode::InvalidName),
            "{bad:?}"
        );
    }
    // Wrong password and unknown user look the same.
    let wrong = c.login("alice", "nope").await.unwrap_err();
    let unknown = c.login("nobody", "nope").await.unwrap_err();
    assert_eq!(wrong.code(), Some(ErrorCode::AuthFailed));
    assert_eq!(unknown.code(), Some(ErrorCode::AuthFailed));
    assert_eq!(wrong.to_string(), unknown.to_string());
    // Requests before login.
    assert_eq!(
        c.send("alice", "hi").await.unwrap_err().code(),
        Some(ErrorCode::NotAuthenticated)
    );
    // Unknown recipient, oversized and empty bodies, bad limits.
    assert_eq!(
        alice.send("nobody", "hi").await.unwrap_err().code(),
        Some(ErrorCode::NoSuchUser)
    );
    assert_eq!(
        alice.send("bystander", &"x".repeat(2049)).await.unwrap_err().code(),
        Some(ErrorCode::MessageTooLarge)
    );
    assert_eq!(
        alice.send("bystander", "").await.unwrap_err().code(),
        Some(ErrorCode::InvalidRequest)
    );
    assert_eq!(
        alice.fetch(0, 5000, false).await.unwrap_err().code(),
        Some(ErrorCode::InvalidRequest)
    );
    // Extreme seqs are only numbers: acking "everything up to u64::MAX" and
    // an ack of a seq that cannot exist change nothing and break nothing.
    bystander.ack(u64::MAX, vec![u64::MAX]).await.unwrap();
    bystander.ping().await.unwrap();
    assert_eq!(
        alice.login("alice", "pw-alice").await.unwrap_err().code(),
        Some(ErrorCode::AlreadyAuthenticated)
    );
    // A register with keys of the wrong size.
    let frame = c
        .request(client_frame::Body::Register(v1::Register {
            name: "zed".into(),
            mechanism: "SCRAM-SHA-256".into(),
            salt: vec![0; 16],
            iterations: 4096,
            stored_key: vec![0; 5],
            server_key: vec![0; 32],
            invite: String::new(),
        }))
        .await
        .unwrap();
    assert_eq!(error_code(&frame), ErrorCode::InvalidRequest);
    // Too few iterations, unknown mechanism.
    let frame = c
        .request(client_frame::Body::Register(v1::Register {
            name: "zed".into(),
            mechanism: "SCRAM-MD5".into(),
            salt: vec![0; 16],
            iterations: 1,
            stored_key: vec![0; 32],
            server_key: vec![0; 32],
            invite: String::new(),
        }))
        .await
        .unwrap();
    assert_eq!(error_code(&frame), ErrorCode::UnsupportedMechanism);
    // A malformed SCRAM message.
    let frame = c
        .request(client_frame::Body::AuthStart(v1::AuthStart {
            client_first: b"hello".to_vec(),
            quiet: false,
        }))
        .await
        .unwrap();
    assert_eq!(error_code(&frame), ErrorCode::AuthFailed);
    let frame = c
        .request(client_frame::Body::AuthContinue(v1::AuthContinue {
            client_final: b"c=biws".to_vec(),
        }))
        .await
        .unwrap();
    assert_eq!(error_code(&frame), ErrorCode::InvalidRequest);

    // Nothing changed: no account "zed", nothing stored for bystander.
    assert!(alice.list_accounts("zed", "", 0).await.unwrap().accounts.is_empty());
    assert_eq!(bystander.fetch(0, 10, true).await.unwrap().messages.len(), 0);
    // And the same connections still work.
    c.login("alice", "pw-alice").await.unwrap();
    alice.send("bystander", "fine").await.unwrap();
    assert_still_serving(&server, &bystander).await;
}
every_store!(request_errors_keep_the_connection, request_errors_keep_the_connection);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_get_busy() {
    let server = TestServer::start_with(Store::Memory, &["--max-connections", "3"]);
    let held: Vec<Client> = futures_vec(&server, 3).await;
    match Client::connect(&server.addr).await {
        Err(parley_client::ClientError::Server {
            code, retry_after_ms, ..
        }) => {
            assert_eq!(code, ErrorCode::Busy);
            assert!(retry_after_ms > 0);
        }
        Err(other) => panic!("expected BUSY, got {other}"),
        Ok(_) => panic!("expected BUSY, got a connection"),
    }
    drop(held);
    // Once a slot frees up, connections are accepted again.
    let again = parley_testkit::poll_until("a slot to free up", WAIT, async || {
        Client::connect(&server.addr).await.ok()
    })
    .await;
    again.ping().await.unwrap();
}

async fn futures_vec(server: &TestServer, n: usize) -> Vec<Client> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(server.client().await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_time_out() {
    let server = TestServer::start_with(Store::Memory, &["--auth-timeout-secs", "1"]);
    let idle = server.client().await;
    match tokio::time::timeout(WAIT, idle.next_event()).await.unwrap() {
        Some(parley_client::Event::Goodbye { code, .. }) => assert_eq!(code, ErrorCode::NotAuthenticated),
        other => panic!("expected goodbye, got {other:?}"),
    }
    // A logged-in connection is not affected.
    let alice = server.user("alice").await;
    // deliberate: the auth timeout passes for a logged-in connection.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    alice.ping().await.unwrap();
}

#[test]
fn invalid_configuration_reports_every_error_and_exits_2() {
    let out = std::process::Command::new(parley_testkit::binary("parleyd"))
        .args(["--listen", "nowhere", "--store", "oracle", "--max-frame-bytes", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["listen", "store", "max_frame_bytes"] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    assert!(!err.contains("panicked"));
}
