//! TLS on both listeners of the real `parleyd`: the library and reqwest
//! over TLS, and bad input on the TLS ports (garbage, plaintext clients,
//! silence) that must end only its own connection.

use std::sync::Arc;
use std::time::Duration;

use parley_client::{Client, ClientError, Trust};
use parley_testkit::{GeneratedCert, Store, TestServer, gen_cert};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn start_tls() -> (TestServer, GeneratedCert, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    let pair = gen_cert(certs.path());
    let flags = pair.tls_flags();
    let server = TestServer::start_with(Store::Memory, &flags.iter().map(String::as_str).collect::<Vec<_>>());
    (server, pair, certs)
}

fn ca(pair: &GeneratedCert) -> Trust {
    let pem = std::fs::read(&pair.cert).unwrap();
    Trust::Roots(parley_client::tls::certificates_from_pem(&pem).unwrap())
}

fn https(pair: &GeneratedCert) -> reqwest::Client {
    let pem = std::fs::read(&pair.cert).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn tls_user(server: &TestServer, trust: &Trust, name: &str) -> Client {
    let client = Client::connect_tls(&server.addr, trust).await.expect("TLS connect");
    let password = format!("pw-{name}");
    match client.register(name, &password).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(parley_client::ErrorCode::NameTaken) => {}
        Err(e) => panic!("register {name}: {e}"),
    }
    client.login(name, &password).await.expect("login");
    client
}

/// Whatever the server answers to `bytes` on a fresh connection, read
/// until it closes; fails if it does not close within the time limit.
async fn answer_to(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .ok();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_and_http_speak_tls_with_the_generated_pair() {
    let (server, pair, _certs) = start_tls();
    let trust = ca(&pair);
    let alice = tls_user(&server, &trust, "alice").await;
    let bob = tls_user(&server, &trust, "bob").await;
    assert_eq!(
        alice.server_fingerprint().map(|f| f.to_string()),
        Some(format!("SHA256:{}", pair.fingerprint))
    );
    bob.send("alice", "sealed").await.unwrap();
    let page = alice.fetch(0, 10, false).await.unwrap();
    assert_eq!(page.messages.len(), 1);

    let http_addr = server.http_addr.clone().unwrap();
    let web = https(&pair);
    let health = web.get(format!("https://{http_addr}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.version(), reqwest::Version::HTTP_11);
    // Over TLS, browsers are told to keep using HTTPS for a year.
    assert_eq!(
        health
            .headers()
            .get("strict-transport-security")
            .and_then(|v| v.to_str().ok()),
        Some("max-age=31536000")
    );
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    assert!(reqwest::get(format!("http://{http_addr}/healthz")).await.is_err());
    // The pinned fingerprint works as well as the CA, and a wrong one is refused.
    let pinned = Trust::Pinned(alice.server_fingerprint());
    Client::connect_tls(&server.addr, &pinned).await.expect("pinned");
    let wrong = Trust::Pinned(Some(parley_client::Fingerprint::of(b"another")));
    match Client::connect_tls(&server.addr, &wrong).await {
        Err(ClientError::CertificateChanged { presented, .. }) => {
            assert_eq!(Some(presented), alice.server_fingerprint());
        }
        Err(e) => panic!("expected CertificateChanged, got {e}"),
        Ok(_) => panic!("a wrong pin connected"),
    }
    // The certificate names 127.0.0.1 and localhost, not another host.
    let err = Client::connect_tls(&server.addr.replace("127.0.0.1", "127.0.0.2"), &trust)
        .await
        .err()
        .expect("a name the certificate does not carry");
    assert!(matches!(err, ClientError::Tls(_) | ClientError::Io(_)), "{err}");
    // The web UI is served over TLS too.
    let page = web.get(format!("https://{http_addr}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_tls_ports_ends_only_its_own_connection() {
    let (mut server, pair, _certs) = start_tls();
    let trust = ca(&pair);
    let alice = Arc::new(tls_user(&server, &trust, "alice").await);
    let http_addr = server.http_addr.clone().unwrap();

    // Garbage instead of a ClientHello: at most a TLS alert, then the close.
    let garbage = b"\x16\x03\x01\x00\x05hello, this is not TLS at all\r\n\r\n".repeat(4);
    let answer = answer_to(&server.addr, &garbage).await;
    assert!(answer.len() < 64, "no more than an alert: {answer:?}");
    answer_to(&http_addr, &garbage).await;
    // An HTTP request in plaintext on the HTTPS port.
    answer_to(&http_addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    // A plaintext native client: it waits for a Welcome that never comes in
    // the clear, and the server waits for a ClientHello; the client gives up.
    let plain = tokio::time::timeout(Duration::from_secs(2), Client::connect(&server.addr)).await;
    assert!(!matches!(plain, Ok(Ok(_))), "a plaintext client got a Welcome");

    // Everyone else is served as before.
    alice
        .send("alice", "still here")
        .await
        .expect("the old connection works");
    let bob = tls_user(&server, &trust, "bob").await;
    bob.send("alice", "hello").await.unwrap();
    let health = https(&pair)
        .get(format!("https://{http_addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // The failures were counted (native and HTTP together) and logged at debug.
    drop(bob);
    server.stop();
    let log = server.log();
    let failed = log
        .split("tls_handshakes_failed: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("the final stats carry tls_handshakes_failed");
    assert!(failed >= 3, "{failed} failed handshakes counted:\n{log}");
    assert!(log.contains("TLS handshake failed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_cut_after_the_handshake_timeout() {
    let (server, pair, _certs) = start_tls();
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(&server.addr).await.unwrap();
    let mut silent_http = TcpStream::connect(server.http_addr.as_deref().unwrap()).await.unwrap();
    let mut buf = [0u8; 16];
    let limit = parley_server::tls::TLS_HANDSHAKE_TIMEOUT + Duration::from_secs(5);
    let closed = tokio::time::timeout(limit, silent.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    let closed = tokio::time::timeout(limit, silent_http.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    assert!(started.elapsed() >= parley_server::tls::TLS_HANDSHAKE_TIMEOUT - Duration::from_millis(500));
    // Meanwhile and after, TLS clients are served.
    tls_user(&server, &ca(&pair), "dave").await;
}
