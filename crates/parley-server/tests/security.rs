//! What an attacker tried over the native protocol, and what must hold:
//! the login throttle cannot be outrun by starting many logins first,
//! sessions end with the account or when their owner says so, caps on
//! connections that have not logged in and on sessions per account.
//! (The HTTP side of the same findings is in parley-http's tests.)

mod common;

use std::time::Duration;

use parley_client::{Client, ErrorCode, Event};
use parley_core::Mechanism;
use parley_core::scram::ClientExchange;
use parley_proto::v1::{self, client_frame, server_frame};
use parley_testkit::{Store, TestServer};
use tokio::io::AsyncReadExt;

/// Sends AuthStart for `name`; Ok(exchange, mechanism, server_first) or
/// the error code.
async fn start_login(
    client: &Client,
    name: &str,
    password: &str,
) -> Result<(ClientExchange, Mechanism, Vec<u8>), ErrorCode> {
    let exchange = ClientExchange::new(name, password);
    let frame = client
        .request(client_frame::Body::AuthStart(v1::AuthStart {
            client_first: exchange.client_first().into_bytes(),
            quiet: false,
        }))
        .await
        .map_err(|e| e.code().unwrap_or(ErrorCode::Unspecified))?;
    match frame.body {
        Some(server_frame::Body::AuthChallenge(c)) => {
            let mechanism = Mechanism::from_name(&c.mechanism).expect("mechanism");
            Ok((exchange, mechanism, c.server_first))
        }
        Some(server_frame::Body::Error(e)) => Err(ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified)),
        other => panic!("expected a challenge, got {other:?}"),
    }
}

/// Sends the proof; Ok(()) for AuthOk, else the error code.
async fn finish_login(
    client: &Client,
    (mut exchange, mechanism, server_first): (ClientExchange, Mechanism, Vec<u8>),
) -> Result<(), ErrorCode> {
    let last = exchange.client_final(mechanism, &server_first).expect("client final");
    let frame = client
        .request(client_frame::Body::AuthContinue(v1::AuthContinue {
            client_final: last.into_bytes(),
        }))
        .await
        .map_err(|e| e.code().unwrap_or(ErrorCode::Unspecified))?;
    match frame.body {
        Some(server_frame::Body::AuthOk(_)) => Ok(()),
        Some(server_frame::Body::Error(e)) => Err(ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified)),
        other => panic!("expected AuthOk, got {other:?}"),
    }
}

/// Finding 2, natively: 59 wrong passwords on 59 connections, each login
/// started before any was finished, then the right one. Starts are bounded
/// per account, every wrong proof counts, and once the account is over
/// its limit even the right password is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_started_in_parallel_cannot_outrun_the_failure_limit() {
    let server = TestServer::start(Store::Memory);
    drop(server.user("alice").await);
    let mut clients = Vec::new();
    for _ in 0..60 {
        clients.push(server.client().await);
    }
    let mut started = Vec::new();
    let mut refused_at_start = 0;
    for (i, client) in clients.iter().enumerate() {
        let password = if i == 59 { "pw-alice" } else { "wrong" };
        match start_login(client, "alice", password).await {
            Ok(exchange) => started.push((i, exchange)),
            Err(code) => {
                assert_eq!(code, ErrorCode::RateLimited);
                refused_at_start += 1;
            }
        }
    }
    assert!(
        started.len() <= 8,
        "{} logins in progress for one account",
        started.len()
    );
    assert!(refused_at_start >= 52);
    let mut failures = 0;
    for (i, exchange) in started {
        if i == 59 {
            continue;
        }
        match finish_login(&clients[i], exchange).await {
            Err(ErrorCode::AuthFailed) => failures += 1,
            Err(ErrorCode::RateLimited) => {}
            other => panic!("{other:?}"),
        }
    }
    // Keep guessing, one login at a time, until the throttle says no.
    let guesser = server.client().await;
    loop {
        match start_login(&guesser, "alice", "wrong").await {
            Err(code) => {
                assert_eq!(code, ErrorCode::RateLimited);
                break;
            }
            Ok(exchange) => match finish_login(&guesser, exchange).await {
                Err(ErrorCode::AuthFailed) => failures += 1,
                Err(ErrorCode::RateLimited) => break,
                other => panic!("{other:?}"),
            },
        }
        assert!(failures <= 10, "more than 10 wrong guesses were checked");
    }
    assert!(failures <= 10, "{failures} wrong guesses were checked");
    // The right password, now: refused like any other attempt.
    let owner = server.client().await;
    let err = owner.login("alice", "pw-alice").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RateLimited));
}

/// Finding 8: connections that have not logged in have a cap of their own,
/// and a connection that logs in frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_not_logged_in_have_their_own_cap() {
    let server = TestServer::start_with(Store::Memory, &["--max-unauthenticated", "3"]);
    drop(server.user("alice").await);
    let silent: Vec<Client> = futures_join(&server, 3).await;
    // The fourth is refused BUSY with a retry hint and closed.
    let mut raw = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut buf))
        .await
        .expect("closed in time")
        .unwrap();
    let refusal = decode_all(&buf);
    assert!(
        refusal.iter().any(|f| matches!(&f.body,
            Some(server_frame::Body::Error(e)) if e.code == ErrorCode::Busy as i32 && e.retry_after_ms > 0)),
        "{refusal:?}"
    );
    // One of the three logs in: its place is free for a newcomer.
    silent[0].login("alice", "pw-alice").await.unwrap();
    let newcomer = server.client().await;
    newcomer.ping().await.unwrap();
    let metrics = reqwest::get(format!("http://{}/metrics", server.http_addr.as_ref().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l == "parley_unauthenticated_refused_total 1"),
        "{metrics}"
    );
}

async fn futures_join(server: &TestServer, n: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let c = server.client().await;
        c.ping().await.unwrap();
        clients.push(c);
    }
    clients
}

fn decode_all(mut bytes: &[u8]) -> Vec<parley_proto::ServerFrame> {
    let mut frames = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if bytes.len() < 4 + len {
            break;
        }
        frames.push(prost::Message::decode(&bytes[4..4 + len]).expect("frame"));
        bytes = &bytes[4 + len..];
    }
    frames
}

/// Waits for the server to end `client`'s session; returns the code.
async fn goodbye(client: &Client) -> ErrorCode {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, client.next_event())
            .await
            .expect("a goodbye in time");
        match event {
            Some(Event::Goodbye { code, .. }) => return code,
            Some(_) => continue,
            None => panic!("closed without a goodbye"),
        }
    }
}

/// Finding 8: `max_sessions_per_user`. A login past it ends the account's
/// oldest session (ejabberd's max_user_sessions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_past_the_session_limit_ends_the_oldest_session() {
    let server = TestServer::start_with(Store::Memory, &["--max-sessions-per-user", "2"]);
    let first = server.user("alice").await;
    first.subscribe(0).await.unwrap();
    let second = server.user("alice").await;
    second.subscribe(0).await.unwrap();
    let third = server.user("alice").await;
    assert_eq!(goodbye(&first).await, ErrorCode::LimitReached);
    second.ping().await.unwrap();
    third.ping().await.unwrap();
}

/// Findings 3 and 11: "log out everywhere" ends every session and kills
/// every resume token; kicking does the same for the administrator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_everywhere_and_kicking_end_sessions_and_resume_tokens() {
    let server = TestServer::start(Store::Sqlite);
    let phone = server.user("bob").await;
    phone.subscribe(0).await.unwrap();
    let laptop = server.client().await;
    let token = laptop.login("bob", "pw-bob").await.unwrap().resume_token;
    let desk = server.client().await;
    desk.login("bob", "pw-bob").await.unwrap();
    desk.request(client_frame::Body::LogoutAll(v1::LogoutAll {}))
        .await
        .unwrap();
    assert_eq!(goodbye(&phone).await, ErrorCode::NotAuthenticated);
    let again = server.client().await;
    assert_eq!(
        again.resume(&token).await.unwrap_err().code(),
        Some(ErrorCode::AuthFailed)
    );

    // Kick: the session ends, and its resume token with it.
    let bob = server.client().await;
    let token = bob.login("bob", "pw-bob").await.unwrap().resume_token;
    bob.subscribe(0).await.unwrap();
    let (status, out, err) = server.ctl(&["kick", "bob"]);
    assert!(status.success(), "{out}{err}");
    assert_eq!(goodbye(&bob).await, ErrorCode::Kicked);
    let again = server.client().await;
    assert_eq!(
        again.resume(&token).await.unwrap_err().code(),
        Some(ErrorCode::AuthFailed)
    );
}

/// Finding 11: every resume hands out a new token and kills the old one,
/// so a leaked token dies the next time its owner reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resume_rotates_the_token() {
    let server = TestServer::start(Store::Memory);
    let bob = server.client().await;
    bob.register("bob", "pw").await.unwrap();
    let first = bob.login("bob", "pw").await.unwrap().resume_token;
    drop(bob);
    let owner = server.client().await;
    let second = owner.resume(&first).await.unwrap().resume_token;
    assert_eq!(second.len(), 32);
    assert_ne!(second, first);
    let thief = server.client().await;
    assert_eq!(
        thief.resume(&first).await.unwrap_err().code(),
        Some(ErrorCode::AuthFailed)
    );
    let later = server.client().await;
    later.resume(&second).await.unwrap();
}

/// Finding 14: deleting the account proves the password again; a session
/// alone (or a wrong password) deletes nothing. Finding 11: a password
/// change ends the account's other sessions and keeps this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_account_and_changing_the_password_prove_the_password_again() {
    let server = TestServer::start(Store::Sqlite);
    let bob = server.user("bob").await;
    let other = server.user("bob").await;
    other.subscribe(0).await.unwrap();
    // No proof: refused, nothing deleted.
    let reply = bob
        .request(client_frame::Body::DeleteAccount(v1::DeleteAccount::default()))
        .await
        .unwrap();
    assert!(
        matches!(&reply.body, Some(server_frame::Body::Error(e)) if e.code == ErrorCode::InvalidRequest as i32),
        "{reply:?}"
    );
    // A wrong password: AUTH_FAILED, nothing deleted.
    assert_eq!(
        bob.delete_account("bob", "not it").await.unwrap_err().code(),
        Some(ErrorCode::AuthFailed)
    );
    bob.ping().await.unwrap();
    // Change the password: the other session ends, this one goes on.
    let token = bob.change_password("bob", "pw-bob", "new-bob").await.unwrap();
    assert_eq!(token.len(), 32);
    assert_eq!(goodbye(&other).await, ErrorCode::NotAuthenticated);
    bob.ping().await.unwrap();
    let fresh = server.client().await;
    assert_eq!(
        fresh.login("bob", "pw-bob").await.unwrap_err().code(),
        Some(ErrorCode::AuthFailed)
    );
    fresh.login("bob", "new-bob").await.unwrap();
    // Now with the right password: gone.
    bob.delete_account("bob", "new-bob").await.unwrap();
    let again = server.client().await;
    assert_eq!(
        again.login("bob", "new-bob").await.unwrap_err().code(),
        Some(ErrorCode::AuthFailed)
    );
}

/// Finding 15: what a challenge shows of an account. An account made by
/// the shipped clients (the server's first mechanism, its iterations, a
/// 16-byte salt) gets a challenge of exactly the shape a decoy for an
/// unknown name has, so the two cannot be told apart; docs/PROTOCOL.md
/// says what remains (accounts registered with other parameters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_account_challenge_looks_like_an_unknown_names_decoy() {
    let server = TestServer::start(Store::Memory);
    drop(server.user("alice").await);
    let client = server.client().await;
    let shape = |server_first: &[u8]| -> (String, usize) {
        let text = String::from_utf8(server_first.to_vec()).unwrap();
        let mut salt_len = 0;
        let mut iterations = String::new();
        for part in text.split(',') {
            if let Some(salt) = part.strip_prefix("s=") {
                use base64::Engine;
                salt_len = base64::engine::general_purpose::STANDARD.decode(salt).unwrap().len();
            }
            if let Some(i) = part.strip_prefix("i=") {
                iterations = i.to_owned();
            }
        }
        (iterations, salt_len)
    };
    let (_, real_mechanism, real) = start_login(&client, "alice", "x").await.unwrap();
    let other = server.client().await;
    let (_, decoy_mechanism, decoy) = start_login(&other, "nobody-here", "x").await.unwrap();
    assert_eq!(real_mechanism, decoy_mechanism);
    assert_eq!(shape(&real), shape(&decoy));
}
