//! Unlimited registration and unlimited mailboxes, over HTTP: registrations
//! count per address across front doors, sends obey the account's rate,
//! and a full mailbox refuses messages from every sender — the pager
//! included. (The native side is in parley-server's `registration` tests.)

mod common;

use common::{Api, WAIT};
use parley_testkit::{Store, TestServer};
use serde_json::json;

/// Registrations over HTTP and over the native protocol count against one
/// hourly allowance per address; another address still registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_count_per_address_across_front_doors() {
    let s = TestServer::start_with_env(Store::Memory, &[], &[("PARLEY_REGISTRATIONS_PER_IP_PER_HOUR", "2")]);
    let api = Api::new(&s);
    s.client()
        .await
        .register("native", "pw")
        .await
        .expect("native registration");
    assert_eq!(api.register("web", "pw").await.status, 201);
    let refused = api.register("third", "pw").await;
    refused.problem(429, "RATE_LIMITED");
    assert!(refused.headers.contains_key("retry-after"));
    assert!(refused.body["retry_after_ms"].as_u64().unwrap() > 3_000_000);
    let native = s.client().await.register("fourth", "pw").await;
    let refused = native.expect_err("the address has used its registrations");
    assert!(refused.to_string().contains("RATE_LIMITED"), "{refused}");
    // 127.0.0.2 is another address.
    let elsewhere = Api {
        http: reqwest::Client::builder()
            .timeout(WAIT)
            .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
            .build()
            .unwrap(),
        ..api.clone()
    };
    assert_eq!(elsewhere.register("third", "pw").await.status, 201);
}

/// A send past the account's rate is 429 RATE_LIMITED with the wait; a
/// send to a full mailbox is 409 MAILBOX_FULL (from the pager it is
/// dropped, answered like any post), and a deletion makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sends_obey_the_rate_and_the_mailbox_quota() {
    let s = TestServer::start_with_env(
        Store::Memory,
        &[],
        &[
            ("PARLEY_SEND_RATE_PER_ACCOUNT", "1"),
            ("PARLEY_MAILBOX_MAX_MESSAGES", "5"),
        ],
    );
    let api = Api::new(&s);
    let ann = api.user("ann").await;
    let ben = api.user("ben").await;
    // Ann's burst is ten seconds of one a second: five fill Ben's mailbox.
    for i in 0..5 {
        api.send_message(&ann, "ben", &format!("m{i}"), "hi").await;
    }
    let full = api
        .post(
            "/v1/messages",
            Some(&ann),
            json!({ "to": "ben", "client_msg_id": "m5", "body": "hi" }),
        )
        .await;
    full.problem(409, "MAILBOX_FULL");
    // The pager obeys the quota too, but a visitor is not told (that
    // would say the account exists): accepted, and stored nowhere.
    let paged = api.post("/v1/pager/ben", None, json!({ "body": "call me" })).await;
    assert_eq!(paged.status, 202, "{paged:?}");
    // Ann's burst runs out: the refused sends took tokens too.
    let mut limited = None;
    for i in 0..20 {
        let reply = api
            .post(
                "/v1/messages",
                Some(&ann),
                json!({ "to": "ann", "client_msg_id": format!("self{i}"), "body": "note" }),
            )
            .await;
        if reply.status == 429 {
            limited = Some(reply);
            break;
        }
        // Ann's own mailbox may fill up meanwhile; the token is spent either way.
        if reply.status != 409 {
            reply.ok();
        }
    }
    let limited = limited.expect("RATE_LIMITED within the burst");
    limited.problem(429, "RATE_LIMITED");
    let wait = limited.body["retry_after_ms"].as_u64().unwrap();
    assert!((1..=1000).contains(&wait), "a token a second: {wait}");
    // Ben deletes one message; Ben's own sends are his own bucket.
    let inbox = api.get("/v1/messages?include_acked=true", Some(&ben)).await;
    let first = inbox.ok()["messages"][0]["message_id"].as_u64().unwrap();
    api.post("/v1/messages/delete", Some(&ben), json!({ "message_ids": [first] }))
        .await
        .ok();
    api.send_message(&ben, "ben", "to-self", "room for one").await;
    // Full again: the next send is refused, and the pager's post dropped.
    let pager_before = api.get("/v1/messages?include_acked=true&limit=1000", Some(&ben)).await;
    let count = pager_before.ok()["messages"].as_array().unwrap().len();
    let paged = api.post("/v1/pager/ben", None, json!({ "body": "call me" })).await;
    assert_eq!(paged.status, 202, "{paged:?}");
    let after = api.get("/v1/messages?include_acked=true&limit=1000", Some(&ben)).await;
    assert_eq!(after.ok()["messages"].as_array().unwrap().len(), count);
}

/// `POST /v1/accounts` under `registration = closed` and `= invite`: 403
/// with REGISTRATION_CLOSED or INVITE_INVALID; an invite from `parleyd ctl
/// invite` in the body's `invite` registers one account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_registration_obeys_closed_and_invite_modes() {
    let closed = TestServer::start_with_env(Store::Memory, &[], &[("PARLEY_REGISTRATION", "closed")]);
    Api::new(&closed)
        .register("ann", "pw")
        .await
        .problem(403, "REGISTRATION_CLOSED");

    let s = TestServer::start_with_env(Store::Memory, &[], &[("PARLEY_REGISTRATION", "invite")]);
    let api = Api::new(&s);
    api.register("ann", "pw").await.problem(403, "INVITE_INVALID");
    let (status, stdout, stderr) = s.ctl(&["invite"]);
    assert!(status.success(), "{stderr}");
    let code = serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let with_invite = |name: &str, invite: &str| {
        let salt = parley_core::scram::random_salt();
        let c = parley_core::scram::StoredCredentials::derive(parley_core::Mechanism::Sha256, "pw", &salt, 4096);
        use base64::Engine;
        let b64 = |bytes: &[u8]| common::B64.encode(bytes);
        json!({
            "name": name,
            "mechanism": "SCRAM-SHA-256",
            "salt": b64(&c.salt),
            "iterations": c.iterations,
            "stored_key": b64(&c.stored_key),
            "server_key": b64(&c.server_key),
            "invite": invite,
        })
    };
    api.post("/v1/accounts", None, with_invite("ann", "wrong"))
        .await
        .problem(403, "INVITE_INVALID");
    assert_eq!(
        api.post("/v1/accounts", None, with_invite("ann", &code)).await.status,
        201
    );
    api.post("/v1/accounts", None, with_invite("ben", &code))
        .await
        .problem(403, "INVITE_INVALID");
    api.login("ann", "pw").await;
}
