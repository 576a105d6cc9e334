//! The edges of docs/PROTOCOL.md that a client written from the document
//! alone has to get right, each checked against a real `parleyd` on port 0:
//! which `request_id` an `UNKNOWN_TYPE` error carries, the error for every
//! count out of range, what a logged-in connection may still send, that
//! mechanism names are case-sensitive, and that `Welcome` advertises the
//! limits the server runs with.

mod common;

use bytes::BytesMut;
use parley_client::{Client, ErrorCode};
use parley_proto::v1::{self, client_frame, server_frame};
use parley_proto::{ClientFrame, ServerFrame};
use parley_testkit::{Store, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::WAIT;

/// A connection driven frame by frame, with request ids the test picks.
struct Raw {
    stream: TcpStream,
    input: BytesMut,
}

impl Raw {
    /// Connects and returns the connection with the server's Welcome.
    async fn connect(addr: &str) -> (Raw, v1::Welcome) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut raw = Raw {
            stream,
            input: BytesMut::new(),
        };
        let welcome = match raw.read().await.and_then(|f| f.body) {
            Some(server_frame::Body::Welcome(w)) => w,
            other => panic!("expected Welcome, got {other:?}"),
        };
        (raw, welcome)
    }

    /// Writes a frame's payload with its length prefix, as it is.
    async fn write_payload(&mut self, payload: &[u8]) {
        let mut bytes = u32::try_from(payload.len()).expect("small").to_be_bytes().to_vec();
        bytes.extend_from_slice(payload);
        self.stream.write_all(&bytes).await.expect("write");
    }

    async fn send(&mut self, request_id: u64, body: Option<client_frame::Body>) {
        let mut buf = BytesMut::new();
        parley_proto::encode_frame(&ClientFrame { request_id, body }, &mut buf, 1 << 20).expect("encode");
        self.stream.write_all(&buf).await.expect("write");
    }

    /// The next frame, or None once the server closed the connection.
    async fn read(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some(frame) = parley_proto::decode_frame(&mut self.input, 1 << 24).expect("valid frame") {
                return Some(frame);
            }
            self.input.reserve(64 * 1024);
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.input))
                .await
                .expect("the server answers in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }
}

/// The code of an error reply, failing the test on any other reply.
fn error_code(frame: &ServerFrame) -> ErrorCode {
    match &frame.body {
        Some(server_frame::Body::Error(e)) => ErrorCode::try_from(e.code).expect("a known code"),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// The error code a request got from the client library.
fn code_of<T: std::fmt::Debug>(result: parley_client::Result<T>) -> ErrorCode {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(e) => e.code().unwrap_or_else(|| panic!("expected a server error, got {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_advertises_every_limit_the_server_runs_with() {
    let server = TestServer::start_with(
        Store::Memory,
        &[
            "--auth-timeout-secs",
            "17",
            "--ack-timeout-ms",
            "2500",
            "--max-ack-backoff-ms",
            "40000",
            "--max-unacked",
            "77",
            "--max-contacts",
            "33",
            "--login-failures-per-account",
            "4",
            "--login-failures-per-ip",
            "19",
            "--send-rate-per-account",
            "12",
            "--registrations-per-ip-per-hour",
            "7",
            "--keepalive-secs",
            "45",
            "--max-body-bytes",
            "4096",
        ],
    );
    let (_raw, welcome) = Raw::connect(&server.addr).await;
    assert_eq!(welcome.protocol_version, 1);
    assert_eq!(welcome.auth_timeout_secs, 17);
    assert_eq!(welcome.ack_timeout_ms, 2500);
    assert_eq!(welcome.max_ack_backoff_ms, 40000);
    assert_eq!(welcome.max_unacked, 77);
    assert_eq!(welcome.max_contacts, 33);
    assert_eq!(welcome.login_failures_per_account, 4);
    assert_eq!(welcome.login_failures_per_ip, 19);
    assert_eq!(welcome.send_rate_per_account, 12);
    assert_eq!(welcome.registrations_per_ip_per_hour, 7);
    assert_eq!(welcome.keepalive_secs, 45);
    assert_eq!(welcome.max_body_bytes, 4096);
    // The client library decodes the same fields.
    let client = server.client().await;
    assert_eq!(client.welcome(), &welcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_advertises_the_documented_defaults() {
    // The kit turns the send and registration rates off (0) unless a test
    // sets them; the rest are the defaults docs/PROTOCOL.md names.
    let server = TestServer::start(Store::Memory);
    let (_raw, welcome) = Raw::connect(&server.addr).await;
    assert_eq!(welcome.auth_timeout_secs, 30);
    assert_eq!(welcome.ack_timeout_ms, 10_000);
    assert_eq!(welcome.max_ack_backoff_ms, 120_000);
    assert_eq!(welcome.max_unacked, 1024);
    assert_eq!(welcome.max_contacts, 1000);
    assert_eq!(welcome.login_failures_per_account, 10);
    assert_eq!(welcome.login_failures_per_ip, 30);
    assert_eq!(welcome.send_rate_per_account, 0);
    assert_eq!(welcome.registrations_per_ip_per_hour, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_request_type_is_answered_with_the_frames_request_id_then_closed() {
    let server = TestServer::start(Store::Memory);

    // A frame without a body.
    let (mut raw, _) = Raw::connect(&server.addr).await;
    raw.send(4242, None).await;
    let reply = raw.read().await.expect("an error before the close");
    assert_eq!(error_code(&reply), ErrorCode::UnknownType);
    assert_eq!(reply.request_id, 4242, "UNKNOWN_TYPE echoes the frame's request_id");
    assert!(raw.read().await.is_none(), "the connection closes");

    // A body of a kind this server does not know: field 999, empty.
    // request_id (field 1, varint) = 77; field 999, length-delimited: tag
    // (999 << 3 | 2) = 7994 as a varint is ba 3e.
    let (mut raw, _) = Raw::connect(&server.addr).await;
    raw.write_payload(&[0x08, 77, 0xba, 0x3e, 0x00]).await;
    let reply = raw.read().await.expect("an error before the close");
    assert_eq!(error_code(&reply), ErrorCode::UnknownType);
    assert_eq!(reply.request_id, 77);
    assert!(raw.read().await.is_none(), "the connection closes");

    // A payload that is no ClientFrame at all has no id to echo.
    let (mut raw, _) = Raw::connect(&server.addr).await;
    raw.write_payload(&[0xff, 0xff, 0xff]).await;
    let reply = raw.read().await.expect("an error before the close");
    assert_eq!(error_code(&reply), ErrorCode::BadFrame);
    assert_eq!(reply.request_id, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_accounts_above_the_largest_limit_is_invalid_request() {
    let server = TestServer::start(Store::Memory);
    let alice = server.user("alice").await;
    assert_eq!(
        code_of(alice.list_accounts("", "", 1001).await),
        ErrorCode::InvalidRequest
    );
    let page = alice.list_accounts("", "", 1000).await.expect("1000 is allowed");
    assert_eq!(page.accounts.len(), 1);
    let page = alice.list_accounts("", "", 0).await.expect("0 is the default");
    assert_eq!(page.accounts.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_of_more_than_1000_seqs_is_invalid_request_and_acknowledges_nothing() {
    let server = TestServer::start(Store::Memory);
    let alice = server.user("alice").await;
    alice.send("alice", "one").await.expect("send");
    let seqs: Vec<u64> = (1..=1001).collect();
    assert_eq!(code_of(alice.ack(0, seqs).await), ErrorCode::InvalidRequest);
    let state = alice.ack(0, Vec::new()).await.expect("ask for the unread count");
    assert_eq!(state.unread, 1, "nothing was acknowledged");
    let seqs: Vec<u64> = (1..=1000).collect();
    let acked = alice.ack(0, seqs).await.expect("1000 seqs are allowed");
    assert_eq!((acked.acked, acked.unread), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_no_messages_or_more_than_1000_is_invalid_request_and_deletes_nothing() {
    let server = TestServer::start(Store::Memory);
    let alice = server.user("alice").await;
    let sent = alice.send("alice", "keep me").await.expect("send");
    assert_eq!(
        code_of(alice.delete_messages(Vec::new()).await),
        ErrorCode::InvalidRequest
    );
    let mut ids: Vec<u64> = (1_000_000..1_001_000).collect();
    ids.push(sent.message_id);
    assert_eq!(code_of(alice.delete_messages(ids).await), ErrorCode::InvalidRequest);
    let batch = alice.fetch(0, 0, true).await.expect("fetch");
    assert_eq!(batch.messages.len(), 1, "nothing was deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_while_logged_in_creates_the_account_and_keeps_the_session() {
    let server = TestServer::start(Store::Memory);
    let alice = server.user("alice").await;
    let registered = alice.register("bob", "pw-bob").await.expect("register while logged in");
    assert_eq!(registered.name, "bob");
    // The connection is still alice's: what it sends comes from alice.
    alice.send("bob", "from the same connection").await.expect("send");
    let bob = server.user("bob").await;
    let batch = bob.fetch(0, 0, false).await.expect("fetch");
    assert_eq!(batch.messages.len(), 1);
    assert_eq!(batch.messages[0].from, "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_oneself_as_a_contact_is_approved_at_once() {
    let server = TestServer::start(Store::Memory);
    let alice = server.user("alice").await;
    let contacts = alice.add_contact("alice").await.expect("adding oneself is allowed");
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].name, "alice");
    assert_eq!(contacts[0].subscription, v1::Subscription::Approved as i32);
    assert!(contacts[0].online, "online while the caller is");
    assert!(
        alice.presence_requests().await.expect("requests").is_empty(),
        "no request is shown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_non_contact_changes_nothing() {
    let server = TestServer::start(Store::Memory);
    let _bob = server.user("bob").await;
    let _carol = server.user("carol").await;
    let alice = server.user("alice").await;
    let before = alice.add_contact("bob").await.expect("add bob");
    // carol exists but is not a contact; nobody is named "nobody".
    let after = alice.remove_contact("carol").await.expect("not an error");
    assert_eq!(after, before);
    let after = alice.remove_contact("nobody").await.expect("not an error either");
    assert_eq!(after, before);
    assert_eq!(alice.list_contacts().await.expect("list"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_while_logged_in_is_already_authenticated_and_spends_no_token() {
    let server = TestServer::start(Store::Memory);
    let first = server.client().await;
    first.register("alice", "pw-alice").await.expect("register");
    let login = first.login("alice", "pw-alice").await.expect("login");
    let second = server.user("alice").await;
    assert_eq!(
        code_of(second.resume(&login.resume_token).await),
        ErrorCode::AlreadyAuthenticated
    );
    // The session stays logged in, and the token still works elsewhere.
    second.ack(0, Vec::new()).await.expect("still logged in");
    let third = server.client().await;
    third
        .resume(&login.resume_token)
        .await
        .expect("the token was not used up");
    // AuthStart while logged in is refused the same way.
    assert_eq!(
        code_of(second.login("alice", "pw-alice").await),
        ErrorCode::AlreadyAuthenticated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mechanism_names_are_case_sensitive() {
    let server = TestServer::start(Store::Memory);
    let client: Client = server.client().await;
    let mechanism = client.welcome().mechanisms[0].clone();
    let credentials = parley_core::scram::StoredCredentials::derive(
        parley_core::Mechanism::from_name(&mechanism).expect("a known mechanism"),
        "pw-alice",
        &[7; 16],
        client.welcome().scram_iterations,
    );
    let register = |mechanism: String| {
        client_frame::Body::Register(v1::Register {
            name: "alice".into(),
            mechanism,
            salt: credentials.salt.clone(),
            iterations: credentials.iterations,
            stored_key: credentials.stored_key.clone(),
            server_key: credentials.server_key.clone(),
            invite: String::new(),
        })
    };
    let lower = client
        .request(register(mechanism.to_lowercase()))
        .await
        .expect("a reply");
    assert_eq!(error_code(&lower), ErrorCode::UnsupportedMechanism);
    // Nothing was created: the name is still free for the exact spelling.
    let exact = client.request(register(mechanism)).await.expect("a reply");
    assert!(
        matches!(exact.body, Some(server_frame::Body::Registered(_))),
        "{exact:?}"
    );
    client.login("alice", "pw-alice").await.expect("login");
}
