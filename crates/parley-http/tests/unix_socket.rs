//! The HTTP listener on a unix-domain socket (`http_listen =
//! "unix:PATH"`), for a proxy on the same machine: the socket's mode, the
//! API over it, its peer trusted as a proxy, and the file's lifetime.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use parley_testkit::{Store, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request over the unix socket at `socket`, with `headers`
/// and a JSON `body` when given; the reply's status and body.
async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect to the HTTP socket");
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        text.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    text.push_str("\r\n");
    text.push_str(body.unwrap_or(""));
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(common::WAIT, stream.read_to_end(&mut reply))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP reply: {reply:?}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_served_on_a_unix_socket_whose_peer_is_a_trusted_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("http.sock");
    let listen = format!("unix:{}", socket.display());
    let mut server = TestServer::start_with(
        Store::Memory,
        &["--http-listen", &listen, "--pager-per-ip-per-minute", "1"],
    );
    assert_eq!(
        server.http_addr.as_deref(),
        Some(listen.as_str()),
        "the start line names the socket"
    );
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    // The owner and its group (the proxy's) may connect; nobody else.
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    let (status, body) = request(&socket, "GET", "/healthz", &[], None).await;
    assert_eq!(status, 200, "{body}");

    // The proxy names its clients and each is limited on its own: the
    // pager takes one post a minute per client.
    let page = Some(r#"{"body":"hello"}"#);
    let first = [("X-Forwarded-For", "198.51.100.1")];
    let other = [("X-Forwarded-For", "198.51.100.2")];
    assert_eq!(request(&socket, "POST", "/v1/pager/ivy", &first, page).await.0, 202);
    let (status, body) = request(&socket, "POST", "/v1/pager/ivy", &first, page).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(request(&socket, "POST", "/v1/pager/ivy", &other, page).await.0, 202);

    // Stopping removes the socket file; starting again makes it anew.
    assert!(server.stop().success());
    assert!(!socket.exists(), "the socket file is removed at stop");
    server.restart();
    assert_eq!(request(&socket, "GET", "/healthz", &[], None).await.0, 200);
}

#[test]
fn a_socket_in_a_missing_directory_or_with_tls_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("unix:{}", dir.path().join("no/such/dir/http.sock").display());
    let tls = format!("unix:{}", dir.path().join("http.sock").display());
    for (args, needle) in [
        (vec!["--http-listen", missing.as_str()], "does not exist"),
        (
            vec!["--http-listen", tls.as_str(), "--http-tls", "true"],
            "http_tls is for a TCP listener",
        ),
    ] {
        let out = std::process::Command::new(parley_testkit::binary("parleyd"))
            .args(["--listen", "127.0.0.1:0", "--store", "memory", "--data-dir"])
            .arg(dir.path())
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
