//! The native protocol over QUIC on the real `parleyd`: the same protocol
//! as over TCP, a client that changes address mid-session, a lossy path,
//! address validation, and the connection caps.

mod common;

use common::{bodies, collect_pushes};
use parley_client::{Client, ClientError, ErrorCode, Trust};
use parley_testkit::udp_proxy::LossyUdpProxy;
use parley_testkit::{GeneratedCert, Store, TestServer, gen_cert};

/// A server with TLS on the native listener and QUIC on a port of its own.
fn start_quic(extra: &[&str]) -> (TestServer, GeneratedCert, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    let pair = gen_cert(certs.path());
    let mut flags = pair.tls_flags();
    flags.extend(["--quic-listen".to_owned(), "127.0.0.1:0".to_owned()]);
    flags.extend(extra.iter().map(|s| s.to_string()));
    let server = TestServer::start_with(Store::Memory, &flags.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(server.quic_addr.is_some(), "the start line names the QUIC address");
    (server, pair, certs)
}

fn ca(pair: &GeneratedCert) -> Trust {
    let pem = std::fs::read(&pair.cert).unwrap();
    Trust::Roots(parley_client::tls::certificates_from_pem(&pem).unwrap())
}

async fn logged_in(client: Client, name: &str) -> Client {
    let password = format!("pw-{name}");
    match client.register(name, &password).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::NameTaken) => {}
        Err(e) => panic!("register {name}: {e}"),
    }
    client.login(name, &password).await.expect("login");
    client.subscribe(0).await.expect("subscribe");
    client
}

async fn quic_user(addr: &str, trust: &Trust, name: &str) -> Client {
    logged_in(Client::connect_quic(addr, trust).await.expect("QUIC connect"), name).await
}

async fn tls_user(server: &TestServer, trust: &Trust, name: &str) -> Client {
    logged_in(
        Client::connect_tls(&server.addr, trust).await.expect("TLS connect"),
        name,
    )
    .await
}

async fn ack_all(client: &Client, messages: &[parley_client::Message]) {
    if let Some(last) = messages.iter().map(|m| m.seq).max() {
        client.ack(last, Vec::new()).await.expect("ack");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_client_and_a_tcp_client_chat_both_ways() {
    let (server, pair, _certs) = start_quic(&[]);
    let trust = ca(&pair);
    let quic_addr = server.quic_addr.clone().unwrap();
    let alice = quic_user(&quic_addr, &trust, "alice").await;
    assert!(alice.quic_local_addr().is_some());
    let fingerprint = alice
        .server_fingerprint()
        .expect("the certificate's fingerprint over QUIC");
    assert_eq!(fingerprint.to_string(), format!("SHA256:{}", pair.fingerprint));
    let bob = tls_user(&server, &trust, "bob").await;

    let receipt = alice.send("bob", "over QUIC").await.expect("send over QUIC");
    assert!(receipt.message_id > 0);
    let got = collect_pushes(&bob, 1).await;
    assert_eq!(bodies(&got), ["over QUIC"]);
    assert_eq!(got[0].from, "alice");
    ack_all(&bob, &got).await;

    bob.send("alice", "back over TCP").await.expect("send over TCP");
    let got = collect_pushes(&alice, 1).await;
    assert_eq!(bodies(&got), ["back over TCP"]);
    ack_all(&alice, &got).await;

    // The same replies as over TCP, errors included.
    let err = alice.send("nobody-here", "x").await.expect_err("no such user");
    assert_eq!(err.code(), Some(ErrorCode::NoSuchUser));
    // And the same stored mailbox.
    let batch = alice.fetch(0, 10, true).await.expect("fetch over QUIC");
    assert_eq!(batch.messages.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_address_changes_keeps_its_session_and_misses_nothing() {
    let (server, pair, _certs) = start_quic(&[]);
    let trust = ca(&pair);
    let quic_addr = server.quic_addr.clone().unwrap();
    let alice = quic_user(&quic_addr, &trust, "alice").await;
    let bob = tls_user(&server, &trust, "bob").await;

    for i in 0..5 {
        bob.send("alice", &format!("before {i}")).await.unwrap();
    }
    let before = collect_pushes(&alice, 5).await;
    ack_all(&alice, &before).await;

    // A new socket on a new port, as after a network change or a NAT
    // rebinding: the same connection goes on from it.
    let old = alice.quic_local_addr().unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    alice.rebind_quic(socket).expect("rebind");
    let new = alice.quic_local_addr().unwrap();
    assert_ne!(old.port(), new.port());

    // Messages sent while (and after) the path changes all arrive, once,
    // in order, on the same session: no reconnect, no login.
    for i in 0..5 {
        bob.send("alice", &format!("after {i}")).await.unwrap();
    }
    let after = collect_pushes(&alice, 5).await;
    assert_eq!(bodies(&after), ["after 0", "after 1", "after 2", "after 3", "after 4"]);
    ack_all(&alice, &after).await;
    // Alice's requests go out from the new address too.
    alice
        .send("bob", "from my new address")
        .await
        .expect("send after the move");
    let got = collect_pushes(&bob, 1).await;
    assert_eq!(bodies(&got), ["from my new address"]);
    // Still the one session the login made.
    let (code, out, err) = server.ctl(&["sessions"]);
    assert!(code.success(), "{err}");
    let sessions: serde_json::Value = serde_json::from_str(&out).unwrap();
    let alice_sessions = sessions
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["user"] == "alice")
        .map(|s| s["sessions"].clone());
    assert_eq!(alice_sessions, Some(serde_json::json!(1)), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_path_delivers_everything_exactly_once_in_order() {
    let (server, pair, _certs) = start_quic(&[]);
    let trust = ca(&pair);
    let target: std::net::SocketAddr = server.quic_addr.clone().unwrap().parse().unwrap();
    // One datagram in ten lost, each way.
    let proxy = LossyUdpProxy::start(target, 0.10);
    let through = proxy.addr.to_string();
    let alice = quic_user(&through, &trust, "alice").await;
    let bob = quic_user(&through, &trust, "bob").await;

    const N: usize = 300;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            bob.send("alice", &format!("m{i:03}"))
                .await
                .expect("send over a lossy path");
        }
        bob
    });
    let got = collect_pushes(&alice, N).await;
    let expected: Vec<String> = (0..N).map(|i| format!("m{i:03}")).collect();
    assert_eq!(bodies(&got), expected.iter().map(String::as_str).collect::<Vec<_>>());
    ack_all(&alice, &got).await;
    let _bob = sender.await.unwrap();
    common::assert_no_push(&alice).await;
    let dropped = proxy.counts.dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped > 10, "the path did lose datagrams ({dropped})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_clients_prove_their_address_with_a_retry_when_asked() {
    // 0: every client that has not proved its address gets a Retry.
    let (server, pair, _certs) = start_quic(&["--quic-retry-above", "0"]);
    let trust = ca(&pair);
    let quic_addr = server.quic_addr.clone().unwrap();
    let alice = quic_user(&quic_addr, &trust, "alice").await;
    alice.ping().await.expect("served after the Retry");
    let (code, out, err) = server.ctl(&["status", "--json"]);
    assert!(code.success(), "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let stats = &status["worker"]["stats"];
    assert!(stats["quic_retries"].as_u64() >= Some(1), "a Retry was sent: {stats}");
    assert!(stats["quic_attempts"].as_u64() >= Some(2), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_handshakes_that_never_finish_turns_on_address_validation() {
    // Clients behind a path that drops everything towards them act like
    // spoofed sources: their Initials arrive, the server's answers go
    // nowhere, and their handshakes stay in progress.
    let (server, pair, _certs) = start_quic(&["--quic-retry-above", "4"]);
    let trust = ca(&pair);
    let quic_addr = server.quic_addr.clone().unwrap();
    let blackhole = LossyUdpProxy::start_with(quic_addr.parse().unwrap(), 0.0, 1.0);
    let through = blackhole.addr.to_string();
    let mut attempts = Vec::new();
    for _ in 0..6 {
        let (through, trust) = (through.clone(), trust.clone());
        attempts.push(tokio::spawn(async move {
            Client::connect_quic(&through, &trust).await.is_ok()
        }));
    }
    let stats = || {
        let (code, out, err) = server.ctl(&["status", "--json"]);
        assert!(code.success(), "{err}");
        let status: serde_json::Value = serde_json::from_str(&out).unwrap();
        status["worker"]["stats"].clone()
    };
    parley_testkit::wait::wait_until_blocking("the flood's Retries", std::time::Duration::from_secs(10), || {
        stats()["quic_retries"].as_u64() >= Some(1)
    });
    // A real client still gets in: it answers the Retry and is served.
    let alice = quic_user(&quic_addr, &trust, "alice").await;
    alice.ping().await.expect("served during the flood");
    let after = stats();
    assert!(after["quic_attempts"].as_u64() >= Some(7), "{after}");
    for attempt in &attempts {
        assert!(!attempt.is_finished(), "a client that hears nothing is still waiting");
        attempt.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_connection_that_never_logs_in_times_out_as_over_tcp() {
    let (server, pair, _certs) = start_quic(&["--auth-timeout-secs", "1"]);
    let quic_addr = server.quic_addr.clone().unwrap();
    let idle = Client::connect_quic(&quic_addr, &ca(&pair)).await.unwrap();
    match tokio::time::timeout(common::WAIT, idle.next_event()).await.unwrap() {
        Some(parley_client::Event::Goodbye { code, .. }) => assert_eq!(code, ErrorCode::NotAuthenticated),
        other => panic!("expected goodbye, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_hands_the_quic_socket_to_the_new_worker() {
    let (server, pair, _certs) = start_quic(&[]);
    let trust = ca(&pair);
    let quic_addr = server.quic_addr.clone().unwrap();
    let alice = quic_user(&quic_addr, &trust, "alice").await;
    let old = server.pid();
    let (code, _, err) = server.ctl(&["reload"]);
    assert!(code.success(), "{err}");
    parley_testkit::wait_until("the worker to be replaced", common::WAIT, async || server.pid() != old).await;
    // The old worker's QUIC client is told, as TCP clients are.
    match tokio::time::timeout(common::WAIT, alice.next_event()).await.unwrap() {
        Some(parley_client::Event::Goodbye { code, .. }) => assert_eq!(code, ErrorCode::ShuttingDown),
        Some(parley_client::Event::Disconnected) | None => {}
        other => panic!("expected goodbye, got {other:?}"),
    }
    // The same address serves new QUIC connections from the new worker.
    let again = parley_testkit::poll_until("QUIC to serve again", common::WAIT, async || {
        Client::connect_quic(&quic_addr, &trust).await.ok()
    })
    .await;
    let again = logged_in(again, "alice").await;
    again.ping().await.expect("served by the new worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_connections_count_against_the_per_address_cap() {
    let (server, pair, _certs) = start_quic(&["--max-connections-per-ip", "1"]);
    let trust = ca(&pair);
    let quic_addr = server.quic_addr.clone().unwrap();
    let first = Client::connect_quic(&quic_addr, &trust)
        .await
        .expect("first connection");
    first.ping().await.unwrap();
    // The second from the same address gets BUSY with a retry hint, as
    // over TCP.
    match Client::connect_quic(&quic_addr, &trust).await {
        Err(ClientError::Server {
            code: ErrorCode::Busy, ..
        }) => {}
        Err(e) => panic!("expected BUSY, got {e}"),
        Ok(_) => panic!("a second connection from one address was admitted"),
    }
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_certificate_is_refused_over_quic_as_over_tls() {
    let (server, pair, _certs) = start_quic(&[]);
    let quic_addr = server.quic_addr.clone().unwrap();
    let other = tempfile::tempdir().unwrap();
    let stranger = gen_cert(other.path());
    match Client::connect_quic(&quic_addr, &ca(&stranger)).await {
        Err(ClientError::NotTrusted(_)) => {}
        Err(e) => panic!("expected NotTrusted, got {e:?}"),
        Ok(_) => panic!("a server with an untrusted certificate was accepted"),
    }
    // The server is unharmed.
    let trust = ca(&pair);
    let alice = quic_user(&quic_addr, &trust, "alice").await;
    alice.ping().await.unwrap();
}
