//! Bearer sessions outlive the worker that opened them: the store keeps
//! each token's key, so a restarted worker, a reloaded one or a server
//! started again opens the session on its next request. Whatever ends a
//! session still ends it for good.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{Api, B64};
use parley_testkit::{Store, TestServer};
use serde_json::json;

/// Waits until the server answers `/readyz` with 200 on a fresh connection
/// (a worker that was killed or replaced leaves pooled connections dead),
/// then returns a client with a fresh pool.
async fn serving(server: &TestServer) -> Api {
    parley_testkit::poll_until("the server to serve again", Duration::from_secs(20), async || {
        let api = Api::new(server);
        let answered = api.http.get(api.url("/readyz")).send().await;
        answered.is_ok_and(|r| r.status().is_success()).then_some(api)
    })
    .await
}

/// Waits until the master serves with a worker other than `old`.
async fn replaced(server: &TestServer, old: u32) {
    parley_testkit::wait_until(
        &format!("the worker {old} to be replaced"),
        Duration::from_secs(20),
        async || server.pid() != old,
    )
    .await;
}

/// What `token` sees of its own mailbox: the reply's status.
async fn mailbox_status(api: &Api, token: &str) -> u16 {
    api.get("/v1/mailbox", Some(token)).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_sessions_survive_a_worker_restart_a_reload_and_a_server_restart() {
    let mut server = TestServer::start_with(Store::Sqlite, &[]);
    let api = Api::new(&server);
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    api.send_message(&alice, "bob", "m1", "before").await;

    // The worker is killed: the next one opens both sessions again.
    let old = server.kill_worker();
    replaced(&server, old).await;
    let api = serving(&server).await;
    api.send_message(&alice, "bob", "m2", "after a crash").await;
    let page = api.get("/v1/messages?limit=10", Some(&bob)).await;
    let bodies: Vec<&str> = page.ok()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["before", "after a crash"]);

    // A reload replaces the worker too.
    let old = server.pid();
    let (code, _, err) = server.ctl(&["reload"]);
    assert!(code.success(), "{err}");
    replaced(&server, old).await;
    let api = serving(&server).await;
    api.send_message(&alice, "bob", "m3", "after a reload").await;
    assert_eq!(mailbox_status(&api, &bob).await, 200);

    // The whole server stops and starts again on the same data.
    assert!(server.stop().success());
    server.restart();
    let api = serving(&server).await;
    let sent = api.send_message(&alice, "bob", "m3", "after a reload").await;
    assert_eq!(sent["duplicate"], true, "{sent}");
    assert_eq!(mailbox_status(&api, &bob).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_ends_a_bearer_session_ends_it_across_restarts() {
    let server = TestServer::start_with(Store::Sqlite, &[]);
    let api = Api::new(&server);
    let alice = api.user("alice").await;
    let alice_too = api.login("alice", "pw-alice").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob = api.user("bob").await;
    let bob_too = api.login("bob", "pw-bob").await["token"].as_str().unwrap().to_owned();
    let carol = api.user("carol").await;
    let dave = api.user("dave").await;
    let dave_too = api.login("dave", "pw-dave").await["token"].as_str().unwrap().to_owned();

    // Logged out: that token only.
    assert_eq!(api.post("/v1/logout", Some(&alice), json!({})).await.status, 204);
    // Logged out everywhere: every token.
    assert_eq!(api.post("/v1/logout/all", Some(&bob), json!({})).await.status, 204);
    // Kicked by the operator.
    let (code, out, err) = server.ctl(&["kick", "carol"]);
    assert!(code.success(), "{out}{err}");
    // A new password: the session that changed it stays, the other ends.
    let (reauth_id, client_final, _) = api.reauth(&dave, "dave", "pw-dave").await;
    let change = common::password_change(&reauth_id, &client_final, &common::credentials("new-pw-dave"));
    api.post("/v1/account/password", Some(&dave), change).await.ok();

    let old = server.kill_worker();
    replaced(&server, old).await;
    let api = serving(&server).await;
    for token in [&alice, &bob, &bob_too, &carol, &dave_too] {
        api.get("/v1/mailbox", Some(token))
            .await
            .problem(401, "NOT_AUTHENTICATED");
    }
    assert_eq!(mailbox_status(&api, &alice_too).await, 200, "alice's other login");
    assert_eq!(
        mailbox_status(&api, &dave).await,
        200,
        "the session that changed the password"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_is_not_a_resume_token_nor_the_reverse() {
    let server = TestServer::start_with(Store::Sqlite, &[]);
    let api = Api::new(&server);
    api.user("alice").await;
    let login = api.login("alice", "pw-alice").await;
    let bearer = login["token"].as_str().unwrap();
    let resume = login["resume_token"].as_str().unwrap();

    // The bearer token's bytes offered as a resume token.
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(bearer).unwrap();
    api.post("/v1/login/resume", None, json!({ "resume_token": B64.encode(&raw) }))
        .await
        .problem(401, "AUTH_FAILED");
    api.post("/v1/login/resume", None, json!({ "resume_token": bearer }))
        .await
        .problem(401, "AUTH_FAILED");

    // The resume token offered as a bearer token, here and after a restart.
    let raw = B64.decode(resume).unwrap();
    let as_bearer = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    for _ in 0..2 {
        let api = serving(&server).await;
        api.get("/v1/mailbox", Some(&as_bearer))
            .await
            .problem(401, "NOT_AUTHENTICATED");
        assert_eq!(mailbox_status(&api, bearer).await, 200);
        let old = server.kill_worker();
        replaced(&server, old).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_session_works_on_every_node_and_ends_on_every_node() {
    let Some(cluster) = parley_testkit::cluster::Cluster::create() else {
        return;
    };
    let a = cluster.node(&[]);
    let b = cluster.node(&[]);
    let on_a = Api::new(&a);
    let on_b = Api::new(&b);
    let alice = on_a.user("alice").await;
    let alice_too = on_a.login("alice", "pw-alice").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob = on_b.user("bob").await;

    // A token from node A works on node B, and the reverse.
    on_b.send_message(&alice, "bob", "m1", "through b").await;
    on_a.send_message(&bob, "alice", "m2", "through a").await;
    assert_eq!(mailbox_status(&on_b, &alice).await, 200);
    assert_eq!(mailbox_status(&on_a, &bob).await, 200);

    // Logged out on node A: node B, which has the session open, refuses
    // the token too (once the bus has told it); alice's other token still
    // works on both.
    assert_eq!(on_a.post("/v1/logout", Some(&alice), json!({})).await.status, 204);
    on_a.get("/v1/mailbox", Some(&alice))
        .await
        .problem(401, "NOT_AUTHENTICATED");
    refused_soon(&on_b, &alice).await;
    for api in [&on_a, &on_b] {
        assert_eq!(mailbox_status(api, &alice_too).await, 200);
    }
    // Kicked from node A: bob's session ends on node B too.
    let (code, out, err) = a.ctl(&["kick", "bob"]);
    assert!(code.success(), "{out}{err}");
    on_a.get("/v1/mailbox", Some(&bob))
        .await
        .problem(401, "NOT_AUTHENTICATED");
    refused_soon(&on_b, &bob).await;
}

/// Waits until `token` is refused (a session ended in another process is
/// ended here when the bus brings the word), then checks the refusal.
async fn refused_soon(api: &Api, token: &str) {
    parley_testkit::wait_until("the token to be refused", Duration::from_secs(10), async || {
        mailbox_status(api, token).await != 200
    })
    .await;
    api.get("/v1/mailbox", Some(token))
        .await
        .problem(401, "NOT_AUTHENTICATED");
}
