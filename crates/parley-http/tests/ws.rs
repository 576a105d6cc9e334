//! The WebSocket transport: native frames, one per binary message, with the
//! native delivery contract (push, ack, re-push, resume, presence).

mod common;

use base64::Engine;
use common::native_ws::NativeWs;
use common::{Api, B64, WAIT, server};
use futures::{SinkExt, StreamExt};
use parley_proto::v1::{self, client_frame, server_frame::Body};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// A native session over a plain WebSocket.
type Ws = NativeWs<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(http_addr: &str) -> Ws {
    let (socket, response) = tokio_tungstenite::connect_async(format!("ws://{http_addr}/v1/ws"))
        .await
        .expect("websocket");
    assert_eq!(response.status(), 101);
    NativeWs::start(socket).await
}

async fn resume_token(api: &Api, name: &str, password: &str) -> Vec<u8> {
    let login = api.login(name, password).await;
    B64.decode(login["resume_token"].as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_push_ack_and_re_push_over_websocket() {
    let s = server(&["--ack-timeout-ms", "300", "--max-ack-backoff-ms", "300"]);
    let api = Api::new(&s);
    let alice = api.user("alice").await;
    api.register("bob", "pw").await.ok();
    let token = resume_token(&api, "bob", "pw").await;

    let mut bob = connect(s.http_addr.as_deref().unwrap()).await;
    bob.resume(&token).await;
    bob.subscribe(0).await;
    let sent = api.send_message(&alice, "bob", "a1", "live over ws").await;
    let pushed = bob.next_push().await;
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].body, "live over ws");
    assert_eq!(pushed[0].from, "alice");
    assert_eq!(pushed[0].message_id, sent["message_id"].as_u64().unwrap());
    // No ack: the same message comes again after the ack timeout.
    let again = bob.next_push().await;
    assert_eq!(again[0].message_id, pushed[0].message_id);
    let acked = bob
        .call(client_frame::Body::Ack(v1::Ack {
            up_to_seq: pushed[0].seq,
            seqs: vec![],
        }))
        .await;
    let Body::Acked(a) = acked else { panic!("{acked:?}") };
    assert_eq!(a.unread, 0);
    // The same commands as over TCP: send from the socket too.
    let reply = bob
        .call(client_frame::Body::Send(v1::SendMessage {
            to: "alice".into(),
            client_msg_id: "b1".into(),
            body: "hi from ws".into(),
        }))
        .await;
    assert!(matches!(reply, Body::Sent(_)), "{reply:?}");
    let inbox = api.get("/v1/messages", Some(&alice)).await;
    assert_eq!(inbox.ok()["messages"][0]["body"], "hi from ws");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_come_again_after_a_reconnect() {
    let s = server(&[]);
    let api = Api::new(&s);
    let alice = api.user("alice").await;
    api.register("bob", "pw").await.ok();
    let token = resume_token(&api, "bob", "pw").await;
    let http_addr = s.http_addr.clone().unwrap();

    let mut first = connect(&http_addr).await;
    let token = first.resume(&token).await;
    first.subscribe(0).await;
    api.send_message(&alice, "bob", "m1", "one").await;
    let one = first.next_push().await;
    first
        .call(client_frame::Body::Ack(v1::Ack {
            up_to_seq: one[0].seq,
            seqs: vec![],
        }))
        .await;
    api.send_message(&alice, "bob", "m2", "two").await;
    let two = first.next_push().await;
    assert_eq!(two[0].body, "two");
    // Gone without acking "two".
    drop(first);

    let mut second = connect(&http_addr).await;
    second.resume(&token).await;
    second.subscribe(one[0].seq).await;
    let again = second.next_push().await;
    assert_eq!(again[0].message_id, two[0].message_id);
    // Resending with the same client id stores nothing new.
    let dup = api.send_message(&alice, "bob", "m2", "two").await;
    assert_eq!(dup["duplicate"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_login_and_presence_over_websocket() {
    let s = server(&[]);
    let api = Api::new(&s);
    api.register("carol", "pw-c").await.ok();
    api.register("dan", "pw-d").await.ok();
    let mut carol = connect(s.http_addr.as_deref().unwrap()).await;
    let mut exchange = parley_core::scram::ClientExchange::new("carol", "pw-c");
    let challenge = carol
        .call(client_frame::Body::AuthStart(v1::AuthStart {
            client_first: exchange.client_first().into_bytes(),
            quiet: false,
        }))
        .await;
    let Body::AuthChallenge(c) = challenge else {
        panic!("{challenge:?}")
    };
    let mechanism = parley_core::Mechanism::from_name(&c.mechanism).unwrap();
    let client_final = exchange.client_final(mechanism, &c.server_first).unwrap();
    let ok = carol
        .call(client_frame::Body::AuthContinue(v1::AuthContinue {
            client_final: client_final.into_bytes(),
        }))
        .await;
    let Body::AuthOk(ok) = ok else { panic!("{ok:?}") };
    exchange.verify_server_final(&ok.server_final).unwrap();
    carol
        .call(client_frame::Body::AddContact(v1::AddContact { name: "dan".into() }))
        .await;
    // Presence is by consent: Dan approves over HTTP and logs out again.
    let dan = api.login("dan", "pw-d").await["token"].as_str().unwrap().to_owned();
    api.post("/v1/presence/requests/carol/approve", Some(&dan), json!({}))
        .await
        .ok();
    assert_eq!(api.post("/v1/logout", Some(&dan), json!({})).await.status, 204);
    carol.subscribe(0).await;

    // Dan comes online over HTTP, then logs out.
    let dan = api.login("dan", "pw-d").await["token"].as_str().unwrap().to_owned();
    let presence = loop {
        if let Some(Body::Presence(p)) = carol.read().await.body {
            break p;
        }
    };
    assert_eq!((presence.name.as_str(), presence.online), ("dan", true));
    assert_eq!(api.post("/v1/logout", Some(&dan), json!({})).await.status, 204);
    let presence = loop {
        if let Some(Body::Presence(p)) = carol.read().await.body {
            break p;
        }
    };
    assert_eq!((presence.name.as_str(), presence.online), ("dan", false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_closes_the_socket_with_bad_frame() {
    let s = server(&[]);
    let mut ws = connect(s.http_addr.as_deref().unwrap()).await;
    ws.socket
        .send(Message::Binary(vec![0xff, 0xff, 0xff].into()))
        .await
        .unwrap();
    let Some(Body::Error(e)) = ws.read().await.body else {
        panic!("no error")
    };
    assert_eq!(e.code, parley_proto::ErrorCode::BadFrame as i32);
    // Then the server closes.
    let end = tokio::time::timeout(WAIT, ws.socket.next())
        .await
        .expect("closed in time");
    assert!(
        matches!(end, None | Some(Ok(Message::Close(_))) | Some(Err(_))),
        "{end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_goodbye_over_websocket_and_exits_cleanly() {
    let mut s = server(&[]);
    let api = Api::new(&s);
    api.register("erin", "pw").await.ok();
    let token = resume_token(&api, "erin", "pw").await;
    let mut ws = connect(s.http_addr.as_deref().unwrap()).await;
    ws.resume(&token).await;
    let stopping = tokio::task::spawn_blocking(move || {
        let status = s.stop();
        (s, status)
    });
    let goodbye = loop {
        if let Some(Body::Goodbye(g)) = ws.read().await.body {
            break g;
        }
    };
    assert_eq!(goodbye.code, parley_proto::ErrorCode::ShuttingDown as i32);
    // Answer the server's close, as a browser does.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.socket.next()).await {}
    let (_s, status) = stopping.await.unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pager_messages_are_pushed_live_and_marked() {
    let s = server(&[]);
    let api = Api::new(&s);
    api.register("fay", "pw").await.ok();
    let token = resume_token(&api, "fay", "pw").await;
    let mut fay = connect(s.http_addr.as_deref().unwrap()).await;
    fay.resume(&token).await;
    fay.subscribe(0).await;
    let posted = api
        .post("/v1/pager/fay", None, json!({ "body": "ring ring", "name": "Gus" }))
        .await;
    assert_eq!(posted.status, 202, "{posted:?}");
    let pushed = fay.next_push().await;
    assert_eq!(pushed[0].from, "pager:Gus");
    assert_eq!(pushed[0].body, "ring ring");
}
