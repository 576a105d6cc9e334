//! The nginx snippet in deploy/nginx/parley.conf, run by a real nginx on
//! loopback ports in front of a real parleyd: TLS terminated by nginx, the
//! HTTP API and a WebSocket chat proxied to parleyd's plaintext HTTP
//! listener.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::native_ws::NativeWs;
use common::{Api, B64, WAIT, require_or_skip};
use parley_proto::v1::{self, client_frame, server_frame::Body};
use parley_testkit::{GeneratedCert, Store, TestServer, gen_cert};

/// The snippet, as shipped.
const SNIPPET: &str = include_str!("../../../deploy/nginx/parley.conf");

/// nginx's path: on PATH, or where Debian puts it.
fn nginx() -> Option<PathBuf> {
    ["nginx", "/usr/sbin/nginx"].into_iter().map(PathBuf::from).find(|p| {
        Command::new(p)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A free loopback port (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running nginx, stopped by its pid when dropped.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx with the snippet pointed at `upstream`, listening on `port`.
    fn start(binary: &Path, dir: &Path, upstream: &str, port: u16, cert: &GeneratedCert) -> Nginx {
        let snippet = SNIPPET
            .replace("server 127.0.0.1:7880;", &format!("server {upstream};"))
            .replace("listen 443 ssl;", &format!("listen 127.0.0.1:{port} ssl;"))
            .replace("listen [::]:443 ssl;", "")
            .replace("/etc/parley/tls/cert.pem", &cert.cert.display().to_string())
            .replace("/etc/parley/tls/key.pem", &cert.key.display().to_string());
        assert!(
            snippet.contains(upstream) && snippet.contains(&port.to_string()),
            "{snippet}"
        );
        std::fs::write(dir.join("parley.conf"), snippet).unwrap();
        // The workers would drop to an unprivileged user that cannot enter
        // the test's private directory; as root, keep them root.
        let root = std::fs::metadata("/proc/self").map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0
        });
        let user = if root.unwrap_or(false) { "user root root;" } else { "" };
        let d = dir.display();
        let conf = format!(
            "{user}
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/parley.conf;
}}
"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let nginx = |extra: &[&str]| {
            let mut command = Command::new(binary);
            command
                .args(extra)
                .arg("-p")
                .arg(dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(&conf_path);
            command
        };
        let check = nginx(&["-t"]).output().expect("run nginx -t");
        assert!(
            check.status.success(),
            "nginx refused the snippet: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = nginx(&[])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let nginx = Nginx {
            child,
            dir: dir.to_owned(),
        };
        let listening =
            parley_testkit::poll_within_blocking(WAIT, || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
        assert!(listening.is_some(), "nginx did not listen: {}", nginx.error_log());
        nginx
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // QUIT: graceful stop of the master and its worker.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        if parley_testkit::poll_within_blocking(Duration::from_secs(5), || self.child.try_wait().ok().flatten())
            .is_some()
        {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Opens a WebSocket through nginx's TLS and reads the Welcome.
async fn connect_wss(port: u16, cert: &GeneratedCert) -> NativeWs<Tls> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&cert.cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS with nginx");
    let (socket, response) = tokio_tungstenite::client_async(format!("wss://localhost:{port}/v1/ws"), tls)
        .await
        .expect("websocket upgrade through nginx");
    assert_eq!(response.status(), 101);
    NativeWs::start(socket).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_chat_through_nginx_with_tls() {
    let Some(binary) = nginx() else {
        require_or_skip("nginx (Debian package nginx-light)", false);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path());
    let server = TestServer::start(Store::Sqlite);
    let port = free_port();
    let nginx = Nginx::start(&binary, dir.path(), server.http_addr.as_deref().unwrap(), port, &cert);

    // The HTTP API over HTTPS, through the proxy.
    let pem = std::fs::read(&cert.cert).unwrap();
    let api = Api {
        base: format!("https://localhost:{port}"),
        http: reqwest::Client::builder()
            .timeout(WAIT)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .resolve("localhost", ([127, 0, 0, 1], port).into())
            .build()
            .unwrap(),
    };
    let health = api.get("/healthz", None).await;
    assert_eq!(health.status, 200, "{health:?} {}", nginx.error_log());
    api.register("alice", "pw-alice").await.ok();
    api.register("bob", "pw-bob").await.ok();
    let token = |login: serde_json::Value| B64.decode(login["resume_token"].as_str().unwrap()).unwrap();
    let alice_token = token(api.login("alice", "pw-alice").await);
    let bob_token = token(api.login("bob", "pw-bob").await);

    // Two WebSockets through nginx: bob writes, alice gets the push live.
    let mut alice = connect_wss(port, &cert).await;
    alice.resume(&alice_token).await;
    alice.subscribe(0).await;
    let mut bob = connect_wss(port, &cert).await;
    bob.resume(&bob_token).await;
    for (i, text) in ["hello through nginx", "and a second one"].into_iter().enumerate() {
        let reply = bob
            .call(client_frame::Body::Send(v1::SendMessage {
                to: "alice".into(),
                client_msg_id: format!("n{i}"),
                body: text.into(),
            }))
            .await;
        assert!(matches!(reply, Body::Sent(_)), "{reply:?}");
        let pushed = alice.next_push().await;
        assert_eq!(pushed[0].body, text);
        assert_eq!(pushed[0].from, "bob");
        let seq = pushed[0].seq;
        let reply = alice
            .call(client_frame::Body::Ack(v1::Ack {
                up_to_seq: seq,
                seqs: Vec::new(),
            }))
            .await;
        assert!(matches!(reply, Body::Acked(_)), "{reply:?}");
    }
    // Once they close, nginx logs each upgrade as a 101 to /v1/ws.
    let _ = alice.socket.close(None).await;
    let _ = bob.socket.close(None).await;
    let mut access = String::new();
    let logged = parley_testkit::poll_within(WAIT, async || {
        access = std::fs::read_to_string(dir.path().join("access.log")).unwrap_or_default();
        (access.matches("GET /v1/ws HTTP/1.1\" 101").count() == 2).then_some(())
    })
    .await;
    assert!(logged.is_some(), "{access}");
    drop(nginx);
}

/// An HTTPS client to nginx whose connections come from `source`.
fn client_from(port: u16, cert: &GeneratedCert, source: [u8; 4]) -> Api {
    let pem = std::fs::read(&cert.cert).unwrap();
    Api {
        base: format!("https://localhost:{port}"),
        http: reqwest::Client::builder()
            .timeout(WAIT)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .resolve("localhost", ([127, 0, 0, 1], port).into())
            .local_address(std::net::IpAddr::from(source))
            .build()
            .unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_each_client_is_rate_limited_alone() {
    let Some(binary) = nginx() else {
        require_or_skip("nginx (Debian package nginx-light)", false);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path());
    // As deploy/nginx/parley.conf tells the operator to configure it.
    let server = TestServer::start_with(Store::Memory, &["--trusted-proxies", "127.0.0.1/32"]);
    let port = free_port();
    // nginx listens on 127.0.0.1, which accepts connections from any
    // loopback source address.
    let nginx = Nginx::start(&binary, dir.path(), server.http_addr.as_deref().unwrap(), port, &cert);
    each_client_is_limited_alone(&nginx, port, &cert).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_over_a_unix_socket_each_client_is_rate_limited_alone() {
    let Some(binary) = nginx() else {
        require_or_skip("nginx (Debian package nginx-light)", false);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_cert(dir.path());
    // The snippet's unix-socket variant: no TCP port, and no
    // trusted_proxies to set (the socket's peer is the proxy).
    let socket = dir.path().join("parleyd-http.sock");
    let listen = format!("unix:{}", socket.display());
    let server = TestServer::start_with(Store::Memory, &["--http-listen", &listen]);
    assert_eq!(server.http_addr.as_deref(), Some(listen.as_str()));
    let port = free_port();
    let nginx = Nginx::start(&binary, dir.path(), &listen, port, &cert);
    each_client_is_limited_alone(&nginx, port, &cert).await;
}

/// Two clients of `nginx` from different addresses: one guessing resume
/// tokens until it is throttled, the other logging in meanwhile.
async fn each_client_is_limited_alone(nginx: &Nginx, port: u16, cert: &GeneratedCert) {
    let mallory = client_from(port, cert, [127, 0, 0, 2]);
    let alice = client_from(port, cert, [127, 0, 0, 3]);
    let r = alice.register("alice", "pw-alice").await;
    assert_eq!(r.status, 201, "{r:?} {}", nginx.error_log());

    // Mallory guesses resume tokens until the throttle stops her.
    let mut limited = false;
    for _ in 0..35 {
        let r = mallory
            .post(
                "/v1/login/resume",
                None,
                serde_json::json!({ "resume_token": "bm9wZQ==" }),
            )
            .await;
        if r.status == 429 {
            r.problem(429, "RATE_LIMITED");
            limited = true;
            break;
        }
        r.problem(401, "AUTH_FAILED");
    }
    assert!(limited, "mallory was never rate-limited");
    // Alice, through the same nginx, is another client: she logs in.
    let login = alice.login_reply("alice", "pw-alice").await;
    assert_eq!(login.status, 200, "{login:?}");
    let r = mallory
        .post(
            "/v1/login/resume",
            None,
            serde_json::json!({ "resume_token": "bm9wZQ==" }),
        )
        .await;
    r.problem(429, "RATE_LIMITED");
}
