//! Slow and silent clients against the HTTP listener: one source address
//! holding thousands of idle connections, headers trickled a byte at a
//! time and bodies that never arrive must not keep anyone else from being
//! served, and each such connection is closed once its timeout passes.
//!
//! The attacker's sockets are bound to 127.0.0.2 and the honest client
//! speaks from 127.0.0.1, so that the server sees two addresses.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The attacker's source address.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// What the honest client may wait for each answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// A connection from `from` to `to`, or None if it did not complete in time
/// (a listener that stopped accepting leaves connections in its backlog,
/// and past the backlog the kernel drops the SYN).
async fn connect_from(from: IpAddr, to: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(from, 0)).ok()?;
    tokio::time::timeout(Duration::from_secs(2), socket.connect(to))
        .await
        .ok()?
        .ok()
}

/// Opens up to `n` connections from `from`, 200 at a time.
async fn open_many(from: IpAddr, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut all = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let batch = left.min(200);
        left -= batch;
        let opened = futures::future::join_all((0..batch).map(|_| connect_from(from, to))).await;
        all.extend(opened.into_iter().flatten());
    }
    all
}

/// Reads until the peer closes (or `limit` passes); returns what was read
/// and whether the connection was closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn http_addr(server: &parley_testkit::TestServer) -> SocketAddr {
    server.http_addr.as_deref().unwrap().parse().unwrap()
}

/// A POST that announces a body and sends one byte of it.
const SLOW_BODY: &[u8] =
    b"POST /v1/pager/nobody HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_stall_the_http_listener() {
    let started = Instant::now();
    // Small global caps, so that the flood below would exhaust them if one
    // address could take them all. Header and body deadlines past the
    // test's length: on a slow machine opening the flood takes longer than
    // the default 10 s, and the attacker's first connections, closed by
    // them, would free the address's slots for its last ones, which are
    // checked for a refusal below.
    let server = common::server(&[
        "--http-max-connections",
        "2000",
        "--http-max-in-flight",
        "16",
        "--http-header-timeout-secs",
        "120",
        "--http-body-timeout-secs",
        "120",
    ]);
    let addr = http_addr(&server);
    let api = Api::new(&server);
    assert_eq!(api.get("/healthz", None).await.status, 200);

    // Bodies that never finish: each request waits for its body.
    let mut slow_bodies = open_many(ATTACKER, addr, 40).await;
    for s in &mut slow_bodies {
        let _ = s.write_all(SLOW_BODY).await;
    }
    // Headers trickled: a header line now and then, never the end.
    let mut slow_headers = open_many(ATTACKER, addr, 20).await;
    for s in &mut slow_headers {
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
    }
    let trickle = tokio::spawn(async move {
        for _ in 0..30 {
            for s in &mut slow_headers {
                let _ = s.write_all(b"X-Slow: 1\r\n").await;
            }
            // deliberate: the trickle's pace (a header line every half second).
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        slow_headers
    });
    // And thousands of connections that say nothing.
    let silent = open_many(ATTACKER, addr, 2500).await;
    println!(
        "attacker holds {} silent, {} slow-body connections after {:?}",
        silent.len(),
        slow_bodies.len(),
        started.elapsed()
    );

    // Everyone else is served at once: probes and a whole web login.
    let within = |what: &'static str| move |_| panic!("{what} took longer than {ANSWER_WITHIN:?}");
    let health = tokio::time::timeout(ANSWER_WITHIN, api.get("/healthz", None))
        .await
        .unwrap_or_else(within("/healthz"));
    assert_eq!(health.status, 200, "{health:?}");
    let registered = tokio::time::timeout(ANSWER_WITHIN, api.register("carol", "pw-carol"))
        .await
        .unwrap_or_else(within("register"));
    assert_eq!(registered.status, 201, "{registered:?}");
    let login = tokio::time::timeout(ANSWER_WITHIN * 2, api.login_reply("carol", "pw-carol"))
        .await
        .unwrap_or_else(within("login/start + login/finish"));
    assert_eq!(login.status, 200, "{login:?}");
    let page = tokio::time::timeout(ANSWER_WITHIN, api.get("/", None))
        .await
        .unwrap_or_else(within("/"));
    assert_eq!(page.status, 200);

    // Past the per-address cap, the attacker's connections were answered
    // with a bare 503 and closed.
    let mut last = silent.into_iter().last().expect("some silent connections");
    let (answer, closed) = read_until_closed(&mut last, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(closed && answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.to_ascii_lowercase().contains("retry-after:"), "{answer:?}");

    drop(slow_bodies);
    trickle.abort();
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_connections_are_closed_after_their_timeouts() {
    let server = common::server(&[
        "--http-header-timeout-secs",
        "1",
        "--http-body-timeout-secs",
        "1",
        "--http-keepalive-secs",
        "3",
    ]);
    let addr = http_addr(&server);
    let limit = Duration::from_secs(8);

    // Silent from the accept: closed after the header timeout.
    let t = Instant::now();
    let mut silent = connect_from(ATTACKER, addr).await.expect("connect");
    let (answer, closed) = read_until_closed(&mut silent, limit).await;
    assert!(closed && answer.is_empty(), "{answer:?}");
    assert!(t.elapsed() >= Duration::from_millis(900), "{:?}", t.elapsed());

    // Headers trickled a byte at a time: trickling does not extend the deadline.
    let t = Instant::now();
    let mut slow = connect_from(ATTACKER, addr).await.expect("connect");
    let trickled = async {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1234567890\r\n".iter() {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            // deliberate: the trickle's pace, a byte every 100 ms.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(limit, trickled).await;
    let (answer, closed) = read_until_closed(&mut slow, limit).await;
    assert!(closed, "{answer:?}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());

    // A body that never arrives: 408, a problem document, then the close.
    let t = Instant::now();
    let mut body = connect_from(ATTACKER, addr).await.expect("connect");
    body.write_all(SLOW_BODY).await.unwrap();
    let (answer, closed) = read_until_closed(&mut body, limit).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(closed && answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("application/problem+json"), "{answer:?}");
    assert!(t.elapsed() >= Duration::from_millis(900), "{:?}", t.elapsed());

    // Kept alive after a response, idle: closed after the keep-alive time,
    // not after the (shorter) header timeout.
    let t = Instant::now();
    let mut idle = connect_from(ATTACKER, addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let answered = Instant::now();
    let (_, closed) = read_until_closed(&mut idle, limit).await;
    assert!(closed);
    let idle_for = answered.elapsed();
    assert!(
        idle_for >= Duration::from_millis(2500) && idle_for < Duration::from_secs(6),
        "{idle_for:?} after {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_cap_refuses_with_a_bare_503() {
    let server = common::server(&["--http-max-connections-per-ip", "4"]);
    let addr = http_addr(&server);
    let api = Api::new(&server);
    let mut held = open_many(ATTACKER, addr, 4).await;
    assert_eq!(held.len(), 4);
    // The server has counted them once each answers a request.
    for s in &mut held {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    let mut fifth = connect_from(ATTACKER, addr).await.expect("connect");
    let (answer, closed) = read_until_closed(&mut fifth, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(closed && answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    // Another address is not affected.
    assert_eq!(api.get("/healthz", None).await.status, 200);
    // Once one closes, the address gets a slot again.
    drop(held.pop());
    let mut answer = String::new();
    let served = parley_testkit::poll_within(common::WAIT, async || {
        let mut again = connect_from(ATTACKER, addr).await.expect("connect");
        again
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(2), again.read(&mut buf))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        buf[..n].starts_with(b"HTTP/1.1 200").then_some(())
    })
    .await;
    assert!(served.is_some(), "{answer:?}");
}
