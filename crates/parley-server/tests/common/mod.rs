//! Helpers shared by the server's scenario tests.
#![allow(dead_code)]

use std::time::Duration;

use parley_client::{Client, Event, Message};

/// Longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Runs a scenario against every store: memory, SQLite and PostgreSQL (a
/// scratch schema; skipped, saying why, when the test database does not
/// answer, unless PARLEY_REQUIRE_SERVICES=1).
#[macro_export]
macro_rules! every_store {
    ($name:ident, $scenario:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$scenario(parley_testkit::Store::Memory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$scenario(parley_testkit::Store::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if parley_testkit::Store::Postgres.available() {
                    super::$scenario(parley_testkit::Store::Postgres).await;
                }
            }
        }
    };
}

/// Waits for the next pushed messages, failing the test after [`WAIT`].
pub async fn next_messages(client: &Client) -> Vec<Message> {
    match tokio::time::timeout(WAIT, client.next_event()).await {
        Ok(Some(Event::Messages(m))) => m,
        Ok(Some(other)) => panic!("expected messages, got {other:?}"),
        Ok(None) => panic!("connection ended"),
        Err(_) => panic!("no push within {WAIT:?}"),
    }
}

/// Collects exactly `n` pushed messages.
pub async fn collect_pushes(client: &Client, n: usize) -> Vec<Message> {
    let mut all = Vec::new();
    while all.len() < n {
        all.extend(next_messages(client).await);
    }
    assert_eq!(all.len(), n, "more messages than expected");
    all
}

/// Asserts that no push arrives for a short while.
pub async fn assert_no_push(client: &Client) {
    if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), client.next_event()).await {
        panic!("unexpected event {e:?}");
    }
}

/// `approver` lets `watcher` (logged in as `watcher_name`) see its
/// presence: logs in as `approver`, approves the pending request, logs out
/// and waits (through `watcher`'s contact list) until that session is
/// gone, so that its going offline is not taken for a later event.
pub async fn approve_and_leave(
    server: &parley_testkit::TestServer,
    approver: &str,
    watcher: &Client,
    watcher_name: &str,
) {
    let session = server.user(approver).await;
    session.approve_presence(watcher_name).await.unwrap();
    drop(session);
    parley_testkit::wait_until(&format!("{approver} to go offline"), WAIT, async || {
        let contacts = watcher.list_contacts().await.unwrap();
        !contacts
            .iter()
            .any(|c| c.name.eq_ignore_ascii_case(approver) && c.online)
    })
    .await;
}

pub fn bodies(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.body.as_str()).collect()
}

/// A logged-in connection driven by hand, frame by frame: for tests that
/// need to stop reading or withhold acks at the socket level.
pub struct RawSession {
    pub stream: tokio::net::TcpStream,
    pub input: bytes::BytesMut,
    next_id: u64,
}

impl RawSession {
    pub async fn login(addr: &str, name: &str, password: &str) -> RawSession {
        use parley_proto::v1::{self, client_frame, server_frame};
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut raw = RawSession {
            stream,
            input: bytes::BytesMut::new(),
            next_id: 1,
        };
        let welcome = raw.read_frame().await;
        assert!(matches!(welcome.body, Some(server_frame::Body::Welcome(_))));
        let mut exchange = parley_core::scram::ClientExchange::new(name, password);
        raw.send(client_frame::Body::AuthStart(v1::AuthStart {
            client_first: exchange.client_first().into_bytes(),
            quiet: false,
        }))
        .await;
        let Some(server_frame::Body::AuthChallenge(c)) = raw.read_frame().await.body else {
            panic!("no challenge")
        };
        let mechanism = parley_core::Mechanism::from_name(&c.mechanism).unwrap();
        let client_final = exchange.client_final(mechanism, &c.server_first).unwrap();
        raw.send(client_frame::Body::AuthContinue(v1::AuthContinue {
            client_final: client_final.into_bytes(),
        }))
        .await;
        let Some(server_frame::Body::AuthOk(_)) = raw.read_frame().await.body else {
            panic!("login failed")
        };
        raw
    }

    pub async fn send(&mut self, body: parley_proto::v1::client_frame::Body) -> u64 {
        use tokio::io::AsyncWriteExt;
        let id = self.next_id;
        self.next_id += 1;
        let mut buf = bytes::BytesMut::new();
        let frame = parley_proto::ClientFrame {
            request_id: id,
            body: Some(body),
        };
        parley_proto::encode_frame(&frame, &mut buf, 1 << 20).unwrap();
        self.stream.write_all(&buf).await.unwrap();
        id
    }

    pub async fn read_frame(&mut self) -> parley_proto::ServerFrame {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(f) = parley_proto::decode_frame(&mut self.input, 1 << 24).unwrap() {
                return f;
            }
            self.input.reserve(64 * 1024);
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.input))
                .await
                .expect("frame in time")
                .unwrap();
            assert!(n > 0, "connection closed");
        }
    }

    /// Reads frames until one satisfies `pick`, discarding others.
    pub async fn read_until<T>(&mut self, mut pick: impl FnMut(&parley_proto::ServerFrame) -> Option<T>) -> T {
        loop {
            let f = self.read_frame().await;
            if let Some(t) = pick(&f) {
                return t;
            }
        }
    }

    /// Takes pushes and acks them until seqs 1 to `last` have arrived,
    /// failing the test on any seq out of order or seen twice.
    pub async fn take_all_in_order(&mut self, last: u64) {
        use parley_proto::v1::{self, client_frame, server_frame};
        let mut next_seq = 1;
        while next_seq <= last {
            let seqs = self
                .read_until(|f| match &f.body {
                    Some(server_frame::Body::Push(p)) => Some(p.messages.iter().map(|m| m.seq).collect::<Vec<_>>()),
                    _ => None,
                })
                .await;
            for seq in seqs {
                assert_eq!(seq, next_seq, "each message once, in order");
                next_seq += 1;
            }
            self.send(client_frame::Body::Ack(v1::Ack {
                up_to_seq: next_seq - 1,
                seqs: vec![],
            }))
            .await;
        }
    }
}

/// The resident set size of a process, in KiB (Linux).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
