//! The HTTP API against the real `parleyd`, over real sockets: every
//! endpoint, its errors as problem documents, and the same codes as the
//! native protocol.

mod common;

use common::{Api, server};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_server_info() {
    let s = server(&[]);
    let api = Api::new(&s);
    let health = api.get("/healthz", None).await;
    assert_eq!(health.ok()["status"], "ok");
    // HSTS only over TLS: over plain HTTP it would mean nothing.
    assert!(health.headers.get("strict-transport-security").is_none());
    assert_eq!(api.get("/readyz", None).await.ok()["status"], "ready");
    let info = api.get("/v1/server", None).await;
    assert_eq!(info.ok()["mechanisms"][0], "SCRAM-SHA-256");
    assert_eq!(info.body["scram_iterations"], 4096);
    assert_eq!(info.body["pager"], true);
    // The limits a client paces itself by, as in the native Welcome.
    let s = server(&[
        "--max-contacts",
        "7",
        "--send-rate-per-account",
        "9",
        "--login-failures-per-ip",
        "11",
    ]);
    let info = Api::new(&s).get("/v1/server", None).await;
    assert_eq!(info.ok()["max_contacts"], 7);
    assert_eq!(info.body["send_rate_per_account"], 9);
    assert_eq!(info.body["login_failures_per_ip"], 11);
    assert!(info.body["login_failures_per_account"].as_u64().is_some_and(|n| n > 0));
    assert!(info.body["registrations_per_ip_per_hour"].as_u64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_send_read_ack_delete() {
    let s = server(&[]);
    let api = Api::new(&s);
    let r = api.register("alice", "secret-a").await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["name"], "alice");
    api.register("Bob", "secret-b").await.ok();
    let alice = api.login("alice", "secret-a").await;
    assert_eq!(alice["token_type"], "Bearer");
    assert_eq!(alice["unread"], 0);
    assert!(!alice["resume_token"].as_str().unwrap().is_empty());
    let alice = alice["token"].as_str().unwrap().to_owned();
    let bob = api.login("bob", "secret-b").await["token"].as_str().unwrap().to_owned();

    let sent = api.send_message(&alice, "BOB", "m1", "hello bob").await;
    assert_eq!(sent["seq"], 1);
    assert_eq!(sent["duplicate"], false);
    let again = api.send_message(&alice, "bob", "m1", "hello bob").await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["message_id"], sent["message_id"]);
    api.send_message(&alice, "bob", "m2", "second").await;
    api.send_message(&alice, "bob", "m3", "third").await;

    assert_eq!(api.get("/v1/mailbox", Some(&bob)).await.ok()["unread"], 3);
    // Two at a time, then the rest after the last seq seen.
    let page = api.get("/v1/messages?limit=2", Some(&bob)).await;
    let messages = page.ok()["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 2);
    assert_eq!(page.body["more"], true);
    assert_eq!(messages[0]["from"], "alice");
    assert_eq!(messages[0]["body"], "hello bob");
    assert_eq!(messages[0]["pager"], false);
    let rest = api.get("/v1/messages?after_seq=2&limit=10", Some(&bob)).await;
    assert_eq!(rest.ok()["messages"][0]["body"], "third");
    assert_eq!(rest.body["more"], false);

    let acked = api
        .post("/v1/messages/ack", Some(&bob), json!({ "up_to_seq": 2 }))
        .await;
    assert_eq!(acked.ok()["acked"], 2);
    assert_eq!(acked.body["unread"], 1);
    let unread = api.get("/v1/messages", Some(&bob)).await;
    assert_eq!(unread.ok()["messages"].as_array().unwrap().len(), 1);
    let all = api.get("/v1/messages?include_acked=true", Some(&bob)).await;
    assert_eq!(all.ok()["messages"].as_array().unwrap().len(), 3);
    assert_eq!(all.body["messages"][0]["acked"], true);

    let first_id = messages[0]["message_id"].as_u64().unwrap();
    let deleted = api
        .post(
            "/v1/messages/delete",
            Some(&bob),
            json!({ "message_ids": [first_id, 999_999] }),
        )
        .await;
    assert_eq!(deleted.ok()["deleted"], json!([first_id]));
    assert_eq!(deleted.body["not_found"], json!([999_999]));
    // Someone else's message cannot be deleted.
    let theirs = api
        .post(
            "/v1/messages/delete",
            Some(&alice),
            json!({ "message_ids": [first_id + 1] }),
        )
        .await;
    assert_eq!(theirs.ok()["deleted"], json!([]));
    let all = api.get("/v1/messages?include_acked=true", Some(&bob)).await;
    assert_eq!(all.ok()["messages"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_problems_with_the_native_codes() {
    let s = server(&[]);
    let api = Api::new(&s);
    let token = api.user("carol").await;

    // Bad JSON, missing fields, wrong types: 400, never a 500.
    let bad = api
        .send(
            api.http
                .post(api.url("/v1/messages"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    bad.problem(400, "INVALID_REQUEST");
    api.post("/v1/messages", Some(&token), json!({ "to": "carol" }))
        .await
        .problem(400, "INVALID_REQUEST");
    api.post(
        "/v1/messages",
        Some(&token),
        json!({ "to": 5, "client_msg_id": "x", "body": "b" }),
    )
    .await
    .problem(400, "INVALID_REQUEST");
    api.post(
        "/v1/messages",
        Some(&token),
        json!({ "to": "carol", "client_msg_id": "", "body": "b" }),
    )
    .await
    .problem(400, "INVALID_REQUEST");
    let no_type = api
        .send(api.http.post(api.url("/v1/messages")).bearer_auth(&token).body("{}"))
        .await;
    no_type.problem(415, "UNSUPPORTED_MEDIA_TYPE");
    api.get("/v1/messages?limit=5000", Some(&token))
        .await
        .problem(400, "INVALID_REQUEST");
    api.get("/v1/messages?limit=-1", Some(&token))
        .await
        .problem(400, "INVALID_REQUEST");
    api.get("/v1/accounts?pattern=a%20b", Some(&token))
        .await
        .problem(400, "INVALID_PATTERN");

    // Bodies that are not objects; the largest seq.
    api.post("/v1/messages/ack", Some(&token), json!([]))
        .await
        .problem(400, "INVALID_REQUEST");
    let all = api
        .post("/v1/messages/ack", Some(&token), json!({ "up_to_seq": u64::MAX }))
        .await;
    assert_eq!(all.ok()["unread"], 0);

    // Sending to nobody; a body over the limit.
    api.post(
        "/v1/messages",
        Some(&token),
        json!({ "to": "nobody", "client_msg_id": "x", "body": "b" }),
    )
    .await
    .problem(404, "NO_SUCH_USER");
    let big = "x".repeat(70_000);
    api.post(
        "/v1/messages",
        Some(&token),
        json!({ "to": "carol", "client_msg_id": "y", "body": big }),
    )
    .await
    .problem(413, "MESSAGE_TOO_LARGE");
    let huge = "x".repeat(300_000);
    api.post(
        "/v1/messages",
        Some(&token),
        json!({ "to": "carol", "client_msg_id": "z", "body": huge }),
    )
    .await
    .problem(413, "MESSAGE_TOO_LARGE");

    // Registration errors.
    api.register("carol", "other").await.problem(409, "NAME_TAKEN");
    api.register("9lives", "pw").await.problem(400, "INVALID_NAME");
    let weak = api
        .post(
            "/v1/accounts",
            None,
            json!({ "name": "dave", "mechanism": "SCRAM-MD5", "salt": "AAAA", "iterations": 4096,
                    "stored_key": "AAAA", "server_key": "AAAA" }),
        )
        .await;
    weak.problem(400, "UNSUPPORTED_MECHANISM");
    api.post(
        "/v1/accounts",
        None,
        json!({ "name": "dave", "mechanism": "SCRAM-SHA-256", "salt": "not base64!", "iterations": 4096,
                "stored_key": "AAAA", "server_key": "AAAA" }),
    )
    .await
    .problem(400, "INVALID_REQUEST");

    // Wrong password and unknown user look the same.
    let wrong = api.login_reply("carol", "wrong").await;
    wrong.problem(401, "AUTH_FAILED");
    let unknown = api.login_reply("nobody", "whatever").await;
    unknown.problem(401, "AUTH_FAILED");
    assert_eq!(wrong.body["detail"], unknown.body["detail"]);
    // A login id works once.
    api.post(
        "/v1/login/finish",
        None,
        json!({ "login_id": "nope", "client_final": "c=biws" }),
    )
    .await
    .problem(409, "INVALID_REQUEST");
    api.post("/v1/login/resume", None, json!({ "resume_token": "bm9wZQ==" }))
        .await
        .problem(401, "AUTH_FAILED");

    // Missing, malformed or unknown tokens.
    let missing = api.get("/v1/mailbox", None).await;
    missing.problem(401, "NOT_AUTHENTICATED");
    assert_eq!(missing.headers["www-authenticate"], "Bearer");
    api.get("/v1/mailbox", Some("forged"))
        .await
        .problem(401, "NOT_AUTHENTICATED");
    let basic = api
        .send(
            api.http
                .get(api.url("/v1/mailbox"))
                .header("authorization", "Basic eDp5"),
        )
        .await;
    basic.problem(401, "NOT_AUTHENTICATED");

    // Unknown resources and methods.
    api.get("/v1/nothing", None).await.problem(404, "NOT_FOUND");
    api.method(Method::PATCH, "/v1/messages", Some(&token))
        .await
        .problem(405, "METHOD_NOT_ALLOWED");
    // A WebSocket route without an upgrade.
    api.get("/v1/ws", None).await.problem(400, "INVALID_REQUEST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_listed_by_wildcard_page_by_page() {
    let s = server(&[]);
    let api = Api::new(&s);
    for name in ["al", "alice", "alfred", "bob", "albert"] {
        api.register(name, "pw").await.ok();
    }
    let token = api.login("bob", "pw").await["token"].as_str().unwrap().to_owned();
    let page = api.get("/v1/accounts?pattern=al*&limit=2", Some(&token)).await;
    let names: Vec<_> = page.ok()["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["al", "albert"]);
    let after = page.body["next_after"].as_str().unwrap().to_owned();
    let next = api
        .get(&format!("/v1/accounts?pattern=al*&limit=2&after={after}"), Some(&token))
        .await;
    assert_eq!(next.ok()["accounts"][0]["name"], "alfred");
    assert_eq!(next.body["accounts"][1]["name"], "alice");
    // The last page says so.
    assert_eq!(next.body["next_after"], serde_json::Value::Null);
    let one = api.get("/v1/accounts?pattern=?ob", Some(&token)).await;
    assert_eq!(one.ok()["accounts"], json!([{ "name": "bob", "online": true }]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_and_presence() {
    let s = server(&[]);
    let api = Api::new(&s);
    let erin = api.user("erin").await;
    api.register("frank", "pw").await.ok();
    let added = api.method(Method::PUT, "/v1/contacts/Frank", Some(&erin)).await;
    assert_eq!(
        added.ok()["contacts"],
        json!([{ "name": "frank", "online": false, "subscription": "pending" }])
    );
    let frank = api.login("frank", "pw").await["token"].as_str().unwrap().to_owned();
    // Frank is online, but Erin may not see it until he approves.
    let listed = api.get("/v1/contacts", Some(&erin)).await;
    assert_eq!(
        listed.ok()["contacts"],
        json!([{ "name": "frank", "online": false, "subscription": "pending" }])
    );
    let requests = api.get("/v1/presence/requests", Some(&frank)).await;
    assert_eq!(requests.ok()["requests"], json!(["erin"]));
    let approved = api
        .post("/v1/presence/requests/erin/approve", Some(&frank), json!({}))
        .await;
    assert_eq!(approved.ok()["requests"], json!([]));
    let listed = api.get("/v1/contacts", Some(&erin)).await;
    assert_eq!(
        listed.ok()["contacts"],
        json!([{ "name": "frank", "online": true, "subscription": "approved" }])
    );
    // Logging out takes frank's HTTP session offline.
    assert_eq!(api.post("/v1/logout", Some(&frank), json!({})).await.status, 204);
    let listed = api.get("/v1/contacts", Some(&erin)).await;
    assert_eq!(
        listed.ok()["contacts"],
        json!([{ "name": "frank", "online": false, "subscription": "approved" }])
    );
    api.method(Method::PUT, "/v1/contacts/nobody", Some(&erin))
        .await
        .problem(404, "NO_SUCH_USER");
    let removed = api.method(Method::DELETE, "/v1/contacts/frank", Some(&erin)).await;
    assert_eq!(removed.ok()["contacts"], json!([]));
}

/// Over HTTP as natively: a stranger sees nobody online, a denial and a
/// cancellation end presence, a block refuses messages and requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_consent_and_blocks() {
    let s = server(&[]);
    let api = Api::new(&s);
    let gus = api.user("gus").await;
    let mal = api.user("mal").await;
    let page = api.get("/v1/accounts", Some(&mal)).await;
    assert_eq!(
        page.ok()["accounts"],
        json!([{ "name": "gus", "online": false }, { "name": "mal", "online": true }])
    );
    // Approve, then revoke with deny; cancel from the asking side.
    api.method(Method::PUT, "/v1/contacts/gus", Some(&mal)).await.ok();
    api.post("/v1/presence/requests/mal/approve", Some(&gus), json!({}))
        .await
        .ok();
    let page = api.get("/v1/accounts?pattern=gus", Some(&mal)).await;
    assert_eq!(page.ok()["accounts"], json!([{ "name": "gus", "online": true }]));
    api.post("/v1/presence/requests/mal/deny", Some(&gus), json!({}))
        .await
        .ok();
    let page = api.get("/v1/accounts?pattern=gus", Some(&mal)).await;
    assert_eq!(page.ok()["accounts"], json!([{ "name": "gus", "online": false }]));
    api.method(Method::PUT, "/v1/contacts/gus", Some(&mal)).await.ok();
    let cancelled = api
        .method(Method::DELETE, "/v1/contacts/gus/presence", Some(&mal))
        .await;
    assert_eq!(
        cancelled.ok()["contacts"],
        json!([{ "name": "gus", "online": false, "subscription": "none" }])
    );
    assert_eq!(
        api.get("/v1/presence/requests", Some(&gus)).await.ok()["requests"],
        json!([])
    );
    api.post("/v1/presence/requests/mal/approve", Some(&gus), json!({}))
        .await
        .problem(409, "INVALID_REQUEST");
    // Block: messages fail as for an unknown name, requests are not shown.
    let blocked = api.method(Method::PUT, "/v1/blocks/mal", Some(&gus)).await;
    assert_eq!(blocked.ok()["blocked"], json!(["mal"]));
    api.post(
        "/v1/messages",
        Some(&mal),
        json!({ "to": "gus", "body": "hi", "client_msg_id": "m1" }),
    )
    .await
    .problem(404, "NO_SUCH_USER");
    api.method(Method::PUT, "/v1/contacts/gus", Some(&mal)).await.ok();
    assert_eq!(
        api.get("/v1/presence/requests", Some(&gus)).await.ok()["requests"],
        json!([])
    );
    api.method(Method::PUT, "/v1/blocks/gus", Some(&gus))
        .await
        .problem(409, "INVALID_REQUEST");
    assert_eq!(api.get("/v1/blocks", Some(&gus)).await.ok()["blocked"], json!(["mal"]));
    let unblocked = api.method(Method::DELETE, "/v1/blocks/mal", Some(&gus)).await;
    assert_eq!(unblocked.ok()["blocked"], json!([]));
    api.post(
        "/v1/messages",
        Some(&mal),
        json!({ "to": "gus", "body": "hi", "client_msg_id": "m2" }),
    )
    .await
    .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_resume_and_account_deletion() {
    let s = server(&[]);
    let api = Api::new(&s);
    api.register("gina", "pw").await.ok();
    let login = api.login("gina", "pw").await;
    let token = login["token"].as_str().unwrap().to_owned();
    let resume_token = login["resume_token"].as_str().unwrap().to_owned();

    // A resume token gives a new bearer token without the password.
    let resumed = api
        .post("/v1/login/resume", None, json!({ "resume_token": resume_token }))
        .await;
    assert_eq!(resumed.ok()["name"], "gina");
    assert_eq!(resumed.body["server_final"], "");
    // A resume replaces the token it used.
    let new_resume = resumed.body["resume_token"].as_str().unwrap().to_owned();
    assert!(!new_resume.is_empty() && new_resume != resume_token);
    let resume_token = new_resume;
    let second = resumed.body["token"].as_str().unwrap().to_owned();

    // Logout ends that session and revokes the resume token.
    assert_eq!(api.post("/v1/logout", Some(&second), json!({})).await.status, 204);
    api.get("/v1/mailbox", Some(&second))
        .await
        .problem(401, "NOT_AUTHENTICATED");
    api.post("/v1/login/resume", None, json!({ "resume_token": resume_token }))
        .await
        .problem(401, "AUTH_FAILED");
    // The first session still works.
    api.get("/v1/mailbox", Some(&token)).await.ok();

    // Deleting the account ends it; the name is free again.
    let other = api.user("hank").await;
    api.send_message(&other, "gina", "h1", "hi gina").await;
    // Without proving the password again (no body), nothing happens.
    assert_eq!(
        api.method(Method::DELETE, "/v1/account", Some(&token)).await.status,
        415
    );
    let (reauth_id, wrong, _) = api.reauth(&token, "gina", "not the password").await;
    api.send(
        api.http
            .delete(api.url("/v1/account"))
            .bearer_auth(&token)
            .json(&json!({ "reauth_id": reauth_id, "client_final": wrong })),
    )
    .await
    .problem(401, "AUTH_FAILED");
    api.get("/v1/mailbox", Some(&token)).await.ok();
    assert_eq!(api.delete_account(&token, "gina", "pw").await.status, 204);
    api.get("/v1/mailbox", Some(&token))
        .await
        .problem(401, "NOT_AUTHENTICATED");
    api.login_reply("gina", "pw").await.problem(401, "AUTH_FAILED");
    api.post(
        "/v1/messages",
        Some(&other),
        json!({ "to": "gina", "client_msg_id": "h2", "body": "b" }),
    )
    .await
    .problem(404, "NO_SUCH_USER");
    assert_eq!(api.register("gina", "new").await.status, 201);
    let fresh = api.login("gina", "new").await;
    assert_eq!(fresh["unread"], 0);
    assert_eq!(fresh["last_seq"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pager_leaves_marked_messages_and_is_rate_limited() {
    let s = server(&["--pager-per-ip-per-minute", "3"]);
    let api = Api::new(&s);
    let ivy = api.user("ivy").await;
    let posted = api
        .post(
            "/v1/pager/Ivy",
            None,
            json!({ "body": "call me", "name": "Jo", "contact": "jo@example.org" }),
        )
        .await;
    assert_eq!(posted.status, 202, "{posted:?}");
    assert_eq!(posted.body["status"], "accepted");
    api.post("/v1/pager/ivy", None, json!({ "body": "anonymous" }))
        .await
        .ok();
    let inbox = api.get("/v1/messages", Some(&ivy)).await;
    let messages = inbox.ok()["messages"].as_array().unwrap().clone();
    assert_eq!(messages[0]["from"], "pager:Jo <jo@example.org>");
    assert_eq!(messages[0]["pager"], true);
    assert_eq!(messages[0]["body"], "call me");
    assert_eq!(messages[1]["from"], "pager:");
    // Whether an account exists is not the visitor's business: a name
    // nobody has is answered exactly like a real one.
    let unknown = api.post("/v1/pager/nobody", None, json!({ "body": "x" })).await;
    assert_eq!(
        (unknown.status, unknown.body.clone()),
        (202, json!({ "status": "accepted" }))
    );
    let limited = api.post("/v1/pager/ivy", None, json!({ "body": "again" })).await;
    limited.problem(429, "RATE_LIMITED");
    assert!(limited.headers.contains_key("retry-after"));
    assert!(limited.body["retry_after_ms"].as_u64().unwrap() > 0);
    api.post("/v1/pager/ivy", None, json!({ "nobody": "x" }))
        .await
        .problem(400, "INVALID_REQUEST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_can_refuse_the_pager_and_the_visitor_cannot_tell() {
    let s = server(&[]);
    let api = Api::new(&s);
    let kim = api.user("kim").await;
    assert_eq!(api.get("/v1/account/pager", Some(&kim)).await.ok()["accept"], true);
    let off = api
        .put("/v1/account/pager", Some(&kim), json!({ "accept": false }))
        .await;
    assert_eq!(off.ok()["accept"], false);
    assert_eq!(api.get("/v1/account/pager", Some(&kim)).await.ok()["accept"], false);
    // The visitor gets the same answer as for a name nobody has.
    let refused = api.post("/v1/pager/kim", None, json!({ "body": "hello?" })).await;
    let unknown = api.post("/v1/pager/nobody", None, json!({ "body": "hello?" })).await;
    assert_eq!(
        (refused.status, refused.body.clone()),
        (unknown.status, unknown.body.clone())
    );
    assert_eq!(refused.status, 202);
    // Nothing was stored; accounts still reach Kim.
    let lee = api.user("lee").await;
    api.post(
        "/v1/messages",
        Some(&lee),
        json!({ "to": "kim", "client_msg_id": "l1", "body": "from lee" }),
    )
    .await
    .ok();
    let inbox = api.get("/v1/messages", Some(&kim)).await;
    let bodies: Vec<String> = inbox.ok()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies, ["from lee"]);
    // Switched on again, the pager reaches Kim.
    let on = api
        .put("/v1/account/pager", Some(&kim), json!({ "accept": true }))
        .await;
    assert_eq!(on.ok()["accept"], true);
    api.post("/v1/pager/kim", None, json!({ "body": "now?" })).await;
    let inbox = api.get("/v1/messages", Some(&kim)).await;
    let last = inbox.ok()["messages"].as_array().unwrap().last().cloned().unwrap();
    assert_eq!(
        (last["body"].as_str(), last["pager"].as_bool()),
        (Some("now?"), Some(true))
    );
    // Bad input changes nothing.
    api.put("/v1/account/pager", Some(&kim), json!({ "accept": "no" }))
        .await
        .problem(400, "INVALID_REQUEST");
    api.get("/v1/account/pager", None)
        .await
        .problem(401, "NOT_AUTHENTICATED");
    assert_eq!(api.get("/v1/account/pager", Some(&kim)).await.ok()["accept"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pager_can_be_switched_off() {
    let s = server(&["--pager", "false"]);
    let api = Api::new(&s);
    api.register("jill", "pw").await.ok();
    api.post("/v1/pager/jill", None, json!({ "body": "hello" }))
        .await
        .problem(404, "NOT_FOUND");
    assert_eq!(api.get("/v1/server", None).await.ok()["pager"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_can_be_switched_off() {
    let s = server(&["--http-listen", "off"]);
    assert_eq!(s.http_addr, None);
    // The native listener still serves.
    let client = s.client().await;
    client.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_is_the_one_in_the_tree_and_lists_every_route() {
    let s = server(&[]);
    let api = Api::new(&s);
    let served = api.get("/v1/openapi.json", None).await;
    assert_eq!(served.content_type, "application/json");
    let file: serde_json::Value = serde_json::from_str(parley_http::openapi::DOCUMENT).unwrap();
    assert_eq!(served.body, file);
    // Every operation in the document is served (no fallback 404/405).
    for (path, item) in file["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let concrete = path.replace("{name}", "someone").replace("{user}", "someone");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = api
                .send(
                    api.http
                        .request(m, api.url(&concrete))
                        .header("content-type", "application/json")
                        .body("{}"),
                )
                .await;
            assert_ne!(r.body["code"], "METHOD_NOT_ALLOWED", "{method} {path}: {r:?}");
            if r.status == 404 {
                assert_ne!(r.body["detail"], "no such resource", "{method} {path}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_is_served_from_the_binary() {
    let s = server(&[]);
    let api = Api::new(&s);
    let page = api.send(api.http.get(api.url("/"))).await;
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"));
    for (path, _, _) in parley_http::ui::ASSETS {
        let r = api.send(api.http.get(api.url(path))).await;
        assert_eq!(r.status, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_are_capped() {
    let s = server(&["--http-max-connections", "1"]);
    let api = Api::new(&s);
    let addr = s.http_addr.clone().unwrap();
    // One idle connection takes the only slot: once it has been answered a
    // request, the server has accepted it, and it stays open (keep-alive).
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        while !String::from_utf8_lossy(&answer).contains("\"ok\"") {
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(common::WAIT, idle.read(&mut buf))
                .await
                .expect("the idle connection is answered")
                .unwrap();
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
    }
    let waiting = api
        .http
        .get(api.url("/healthz"))
        .timeout(std::time::Duration::from_millis(500))
        .send()
        .await;
    assert!(waiting.is_err(), "answered over the cap: {waiting:?}");
    // ...and when it closes, the next one is served.
    drop(idle);
    assert_eq!(api.get("/healthz", None).await.ok()["status"], "ok");
}

/// A full store (its size bound standing in for a full disk) refuses sends
/// with STORAGE_UNAVAILABLE and a retry hint, keeps reads working, reports
/// not ready, and serves again by itself once room is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_is_unavailable_for_writes_only_and_recovers_by_itself() {
    let s = parley_testkit::TestServer::start_with(parley_testkit::Store::Sqlite, &["--sqlite-max-db-mb", "1"]);
    let api = Api::new(&s);
    let mia = api.user("mia").await;
    let ned = api.user("ned").await;
    assert_eq!(api.get("/readyz", None).await.status, 200);
    let body = "y".repeat(30_000);
    let mut sent = 0;
    let refused = loop {
        assert!(sent < 200, "a 1 MiB database never filled");
        let r = api
            .post(
                "/v1/messages",
                Some(&ned),
                json!({ "to": "mia", "client_msg_id": format!("f{sent}"), "body": body }),
            )
            .await;
        if r.status != 200 {
            break r;
        }
        sent += 1;
    };
    assert_eq!(refused.headers["retry-after"], "5", "{refused:?}");
    refused.problem(503, "STORAGE_UNAVAILABLE");
    assert_eq!(refused.body["retry_after_ms"], 5000);
    let ready = api.get("/readyz", None).await;
    ready.problem(503, "STORAGE_UNAVAILABLE");
    // Reads go on.
    let inbox = api.get("/v1/messages?limit=3", Some(&mia)).await;
    assert_eq!(inbox.ok()["messages"].as_array().unwrap().len(), 3);
    // Deleting makes room; the next send succeeds and readiness returns.
    let page = api.get(&format!("/v1/messages?limit={sent}"), Some(&mia)).await;
    let ids: Vec<u64> = page.ok()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_u64().unwrap())
        .collect();
    api.post("/v1/messages/delete", Some(&mia), json!({ "message_ids": ids }))
        .await
        .ok();
    api.post(
        "/v1/messages",
        Some(&ned),
        json!({ "to": "mia", "client_msg_id": "after", "body": "room again" }),
    )
    .await
    .ok();
    assert_eq!(api.get("/readyz", None).await.status, 200);
}
