//! The filter pipeline on the HTTP API, the WebSocket and the pager: the
//! same verdicts as the native protocol (accept, hold, reject with its
//! reason), and the spam folder over HTTP.

mod common;

use common::native_ws::NativeWs;
use common::{Api, server};
use parley_proto::v1::{self, client_frame, server_frame::Body};
use serde_json::json;

const SPAM: &str = "Make money fast!!! Earn $5000 a week from home, no experience needed. Reply now to get started";
const CHAT: &str = "are we still on for lunch tomorrow?";

/// A server holding what the model calls spam, rejecting nothing for its
/// score, and rejecting the phrase "buy followers".
fn filtered(dir: &tempfile::TempDir) -> parley_testkit::TestServer {
    let words = dir.path().join("blocked.txt");
    std::fs::write(&words, "buy followers\n").unwrap();
    server(&[
        "--filter-model",
        "builtin",
        "--filter-reject-at",
        "2",
        "--filter-blocked-words-file",
        &words.display().to_string(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sends_are_held_or_rejected_and_the_spam_folder_works() {
    let dir = tempfile::tempdir().unwrap();
    let s = filtered(&dir);
    let api = Api::new(&s);
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;

    let ok = api.send_message(&alice, "bob", "c1", CHAT).await;
    assert_eq!(ok["held"], false);
    let held = api.send_message(&alice, "bob", "s1", SPAM).await;
    assert_eq!(
        (held["held"].as_bool(), held["seq"].as_u64()),
        (Some(true), Some(0)),
        "{held}"
    );
    let refused = api
        .post(
            "/v1/messages",
            Some(&alice),
            json!({ "to": "bob", "client_msg_id": "w1", "body": "Buy Followers now" }),
        )
        .await;
    refused.problem(422, "REJECTED");
    assert_eq!(refused.body["reason"], "blocked_words");

    // The mailbox has the chat only; the folder has the spam.
    let inbox = api.get("/v1/messages?include_acked=true", Some(&bob)).await;
    let bodies: Vec<&str> = inbox.ok()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, [CHAT]);
    let folder = api.get("/v1/spam", Some(&bob)).await;
    let messages = folder.ok()["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        (messages[0]["body"].as_str(), messages[0]["filter"].as_str()),
        (Some(SPAM), Some("spam"))
    );
    assert_eq!(held["message_id"], 0);
    let held_id = messages[0]["id"].clone();
    assert_eq!(folder.body["more"], false);

    // Release: into the mailbox with a new seq.
    let released = api
        .post("/v1/spam/release", Some(&bob), json!({ "ids": [held_id] }))
        .await;
    let seq = released.ok()["released"][0]["seq"].as_u64().unwrap();
    assert_eq!(seq, 2);
    // Report the chat; delete it as spam.
    let reported = api
        .post("/v1/messages/report-spam", Some(&bob), json!({ "seqs": [1, 77] }))
        .await;
    let id = reported.ok()["reported"][0]["id"].as_u64().unwrap();
    assert_eq!(reported.body["reported"].as_array().unwrap().len(), 1);
    let deleted = api
        .post("/v1/spam/delete", Some(&bob), json!({ "ids": [id], "spam": true }))
        .await;
    assert_eq!(deleted.ok()["deleted"], json!([id]));
    assert_eq!(api.get("/v1/spam", Some(&bob)).await.ok()["messages"], json!([]));

    // Bad requests change nothing.
    api.post("/v1/spam/release", Some(&bob), json!({ "ids": [] }))
        .await
        .problem(400, "INVALID_REQUEST");
    api.get("/v1/spam?limit=5000", Some(&bob))
        .await
        .problem(400, "INVALID_REQUEST");
    api.get("/v1/spam", None).await.problem(401, "NOT_AUTHENTICATED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sends_carry_the_same_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let s = filtered(&dir);
    let api = Api::new(&s);
    api.user("bob").await;
    api.register("alice", "pw").await.ok();
    let login = api.login("alice", "pw").await;
    let token = base64::Engine::decode(&common::B64, login["resume_token"].as_str().unwrap()).unwrap();
    let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", s.http_addr.as_deref().unwrap()))
        .await
        .unwrap();
    let mut ws = NativeWs::start(socket).await;
    ws.resume(&token).await;
    let send = |id: &str, body: &str| {
        client_frame::Body::Send(v1::SendMessage {
            to: "bob".into(),
            client_msg_id: id.into(),
            body: body.into(),
        })
    };
    let Body::Sent(held) = ws.call(send("s1", SPAM)).await else {
        panic!()
    };
    assert!(held.held && held.seq == 0);
    let Body::Sent(ok) = ws.call(send("c1", CHAT)).await else {
        panic!()
    };
    assert!(!ok.held && ok.seq == 1);
    let Body::Error(e) = ws.call(send("w1", "buy followers")).await else {
        panic!()
    };
    assert_eq!(
        (e.code, e.reason.as_str()),
        (v1::ErrorCode::Rejected as i32, "blocked_words")
    );
    let Body::Held(folder) = ws
        .call(client_frame::Body::ListHeld(v1::ListHeld { after_id: 0, limit: 0 }))
        .await
    else {
        panic!()
    };
    assert!(folder.messages.is_empty(), "alice's own folder is empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pager_is_filtered_too() {
    let dir = tempfile::tempdir().unwrap();
    let s = filtered(&dir);
    let api = Api::new(&s);
    let ivy = api.user("ivy").await;
    let refused = api
        .post("/v1/pager/ivy", None, json!({ "body": "buy followers cheap" }))
        .await;
    refused.problem(422, "REJECTED");
    assert_eq!(refused.body["reason"], "blocked_words");
    // Refused before any account is looked up: a name nobody has gets
    // the same answer, so the refusal tells nothing about accounts.
    let unknown = api
        .post("/v1/pager/nobody", None, json!({ "body": "buy followers cheap" }))
        .await;
    unknown.problem(422, "REJECTED");
    // Held spam is answered like any accepted message.
    let held = api
        .post("/v1/pager/ivy", None, json!({ "body": SPAM, "name": "Jo" }))
        .await;
    assert_eq!(held.status, 202, "{held:?}");
    assert_eq!(api.get("/v1/messages", Some(&ivy)).await.ok()["messages"], json!([]));
    let folder = api.get("/v1/spam", Some(&ivy)).await;
    assert_eq!(folder.ok()["messages"][0]["from"], "pager:Jo");
}
