//! What an attacker tried over HTTP, and what must hold: the login
//! throttle counts every attempt, sessions end with their account (and
//! never pass to whoever registers the name next), replies have a byte
//! budget, and one address gets only a share of the shared tables.

mod common;

use common::*;
use parley_core::Mechanism;
use parley_core::scram::ClientExchange;
use serde_json::json;

/// A client whose requests come from `source` (a 127.0.0.x address).
fn api_from(server: &parley_testkit::TestServer, source: [u8; 4]) -> Api {
    let http = reqwest::Client::builder()
        .timeout(WAIT)
        .local_address(std::net::IpAddr::from(source))
        .build()
        .unwrap();
    Api {
        base: server.http_url(),
        http,
    }
}

/// Finding 2: 300 `login/start` for one account, then 300 wrong
/// `login/finish`. Starts are bounded per account, each wrong proof
/// counts, and the right password after that is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_many_logins_first_does_not_buy_more_guesses() {
    let server = server(&[]);
    let api = Api::new(&server);
    api.register("alice", "right").await.ok();
    let mut challenges = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        let mut exchange = ClientExchange::new("alice", "wrong");
        let start = api
            .post(
                "/v1/login/start",
                None,
                json!({ "client_first": exchange.client_first() }),
            )
            .await;
        if start.status == 429 {
            start.problem(429, "RATE_LIMITED");
            refused += 1;
            continue;
        }
        let body = start.ok();
        let mechanism = Mechanism::from_name(body["mechanism"].as_str().unwrap()).unwrap();
        let last = exchange
            .client_final(mechanism, body["server_first"].as_str().unwrap().as_bytes())
            .unwrap();
        challenges.push((body["login_id"].clone(), last));
    }
    assert!(
        challenges.len() <= 8,
        "{} logins in progress for one account",
        challenges.len()
    );
    assert!(refused >= 292);
    let mut checked = 0;
    for (login_id, last) in challenges {
        let finish = api
            .post(
                "/v1/login/finish",
                None,
                json!({ "login_id": login_id, "client_final": last }),
            )
            .await;
        match finish.status {
            401 => checked += 1,
            429 => {}
            other => panic!("{other}: {finish:?}"),
        }
    }
    // Guess on, one login at a time, until refused.
    loop {
        let r = api.login_reply("alice", "wrong").await;
        match r.status {
            401 => checked += 1,
            429 => break,
            other => panic!("{other}: {r:?}"),
        }
        assert!(checked <= 10, "more than 10 wrong guesses were checked");
    }
    assert!(checked <= 10);
    api.login_reply("alice", "right").await.problem(429, "RATE_LIMITED");
}

/// Finding 3: deleting the account ends its other bearer sessions and
/// resume tokens at once; a new account with the same name never gets
/// them. A kick and "log out everywhere" do the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_with_their_account_and_never_pass_to_a_new_owner() {
    let server = server(&[]);
    let api = Api::new(&server);
    let carol = api.user("carol").await;
    api.register("bob", "pw-bob").await.ok();
    let first = api.login("bob", "pw-bob").await;
    let second = api.login("bob", "pw-bob").await;
    let other_token = second["token"].as_str().unwrap().to_owned();
    let other_resume = second["resume_token"].as_str().unwrap().to_owned();
    let r = api
        .delete_account(first["token"].as_str().unwrap(), "bob", "pw-bob")
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    let send = |token: String| {
        let api = api.clone();
        async move {
            api.post(
                "/v1/messages",
                Some(&token),
                json!({ "to": "carol", "client_msg_id": "x1", "body": "as bob" }),
            )
            .await
        }
    };
    send(other_token.clone()).await.problem(401, "NOT_AUTHENTICATED");
    api.post(
        "/v1/login/resume",
        None,
        json!({ "resume_token": other_resume.clone() }),
    )
    .await
    .problem(401, "AUTH_FAILED");
    // Someone else takes the name: the old token still does nothing.
    api.register("bob", "pw-new-bob").await.ok();
    send(other_token).await.problem(401, "NOT_AUTHENTICATED");
    let inbox = api.get("/v1/messages?include_acked=true", Some(&carol)).await;
    assert_eq!(inbox.ok()["messages"].as_array().unwrap().len(), 0, "{inbox:?}");

    // A kick ends the bearer session and its resume token.
    let login = api.login("bob", "pw-new-bob").await;
    let (status, out, err) = server.ctl(&["kick", "bob"]);
    assert!(status.success(), "{out}{err}");
    api.get("/v1/mailbox", login["token"].as_str())
        .await
        .problem(401, "NOT_AUTHENTICATED");
    api.post(
        "/v1/login/resume",
        None,
        json!({ "resume_token": login["resume_token"] }),
    )
    .await
    .problem(401, "AUTH_FAILED");

    // "Log out everywhere" from one session ends the others.
    let a = api.login("bob", "pw-new-bob").await;
    let b = api.login("bob", "pw-new-bob").await;
    let r = api.post("/v1/logout/all", a["token"].as_str(), json!({})).await;
    assert_eq!(r.status, 204, "{r:?}");
    api.get("/v1/mailbox", b["token"].as_str())
        .await
        .problem(401, "NOT_AUTHENTICATED");
    api.post("/v1/login/resume", None, json!({ "resume_token": b["resume_token"] }))
        .await
        .problem(401, "AUTH_FAILED");
}

/// Finding 4: one reply never holds more than the byte budget, whatever
/// the limit asked for; `more` says that the rest follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_is_cut_to_its_byte_budget() {
    let server = server(&[]);
    let api = Api::new(&server);
    let token = api.user("dora").await;
    let big = "x".repeat(60 * 1024);
    for i in 0..20 {
        api.send_message(&token, "dora", &format!("m{i}"), &big).await;
    }
    let response = api
        .http
        .get(api.url("/v1/messages?limit=1000&include_acked=true"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.unwrap();
    assert!(bytes.len() < 300 * 1024, "a reply of {} bytes", bytes.len());
    let page: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let got = page["messages"].as_array().unwrap().len();
    assert!((1..20).contains(&got), "{got} messages");
    assert_eq!(page["more"], true);
    // Reading on from the last one gets the rest, page by page.
    let mut seen = got;
    let mut after = page["messages"][got - 1]["seq"].as_u64().unwrap();
    while seen < 20 {
        let page = api
            .get(
                &format!("/v1/messages?limit=1000&include_acked=true&after_seq={after}"),
                Some(&token),
            )
            .await;
        let messages = page.ok()["messages"].as_array().unwrap().clone();
        assert!(!messages.is_empty());
        seen += messages.len();
        after = messages.last().unwrap()["seq"].as_u64().unwrap();
    }
    assert_eq!(seen, 20);
}

/// Finding 6: one address cannot fill the table of logins in progress or
/// of sessions for everyone: it gets a share, and its own oldest session
/// makes room for its newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_only_a_share_of_the_shared_tables() {
    let server = server(&[
        "--http-max-pending-logins",
        "40",
        "--login-pending-per-ip",
        "10",
        "--http-max-sessions",
        "20",
        "--http-max-sessions-per-ip",
        "5",
    ]);
    let attacker = api_from(&server, [127, 0, 0, 2]);
    let honest = Api::new(&server);
    honest.register("erin", "pw-erin").await.ok();
    attacker.register("mallory", "pw-mallory").await.ok();
    // Sessions: one account's resume token used over and over.
    let login = attacker.login("mallory", "pw-mallory").await;
    let mut resume = login["resume_token"].as_str().unwrap().to_owned();
    for _ in 0..30 {
        let r = attacker
            .post("/v1/login/resume", None, json!({ "resume_token": resume }))
            .await;
        resume = r.ok()["resume_token"].as_str().unwrap().to_owned();
    }
    // Logins for names nobody has, never finished.
    let mut limited = 0;
    for i in 0..100 {
        let exchange = ClientExchange::new(&format!("ghost{i}"), "x");
        let r = attacker
            .post(
                "/v1/login/start",
                None,
                json!({ "client_first": exchange.client_first() }),
            )
            .await;
        if r.status == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 90, "{limited}");
    // Someone else logs in and out as if nothing happened.
    let ok = honest.login_reply("erin", "pw-erin").await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let token = ok.body["token"].as_str().unwrap();
    honest.get("/v1/mailbox", Some(token)).await.ok();
}

/// Findings 11 and 14: a password change proves the old password (SCRAM,
/// the password never travels), ends every other session and resume
/// token, and keeps this one with a new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_password_proves_the_old_one_and_ends_other_sessions() {
    let server = server(&[]);
    let api = Api::new(&server);
    api.register("ivy", "old").await.ok();
    let here = api.login("ivy", "old").await;
    let there = api.login("ivy", "old").await;
    let token = here["token"].as_str().unwrap();
    let creds = common::credentials("new");
    let change =
        |reauth_id: serde_json::Value, client_final: String| common::password_change(&reauth_id, &client_final, &creds);
    // The wrong old password changes nothing.
    let (id, wrong, _) = api.reauth(token, "ivy", "guess").await;
    api.post("/v1/account/password", Some(token), change(id, wrong))
        .await
        .problem(401, "AUTH_FAILED");
    api.get("/v1/mailbox", there["token"].as_str()).await.ok();
    // The right one.
    let (id, proof, exchange) = api.reauth(token, "ivy", "old").await;
    let changed = api.post("/v1/account/password", Some(token), change(id, proof)).await;
    let body = changed.ok().clone();
    exchange
        .verify_server_final(body["server_final"].as_str().unwrap().as_bytes())
        .expect("the server proved it knows the old keys");
    api.get("/v1/mailbox", Some(token)).await.ok();
    api.get("/v1/mailbox", there["token"].as_str())
        .await
        .problem(401, "NOT_AUTHENTICATED");
    api.post(
        "/v1/login/resume",
        None,
        json!({ "resume_token": there["resume_token"] }),
    )
    .await
    .problem(401, "AUTH_FAILED");
    api.post(
        "/v1/login/resume",
        None,
        json!({ "resume_token": body["resume_token"] }),
    )
    .await
    .ok();
    api.login_reply("ivy", "old").await.problem(401, "AUTH_FAILED");
    assert_eq!(api.login_reply("ivy", "new").await.status, 200);
}
