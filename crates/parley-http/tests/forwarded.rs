//! The client address behind a proxy: parleyd believes `Forwarded` and
//! `X-Forwarded-For` only from peers in `trusted_proxies`, and then counts
//! every per-address limit under the client the proxy names.

mod common;

use common::Api;
use serde_json::json;

/// Failed logins and resumes per address per minute (the default).
const FAILURES_PER_IP: usize = 30;

/// Sends bad resume tokens with `headers` until one is refused
/// RATE_LIMITED; returns how many were tried.
async fn bad_resumes_until_limited(api: &Api, headers: &[(&str, String)]) -> usize {
    for tried in 1..=FAILURES_PER_IP + 5 {
        let mut request = api
            .http
            .post(api.url("/v1/login/resume"))
            .json(&json!({ "resume_token": "bm9wZQ==" }));
        for (name, value) in headers {
            request = request.header(*name, value.replace("{i}", &tried.to_string()));
        }
        let reply = api.send(request).await;
        if reply.status == 429 {
            reply.problem(429, "RATE_LIMITED");
            return tried;
        }
        reply.problem(401, "AUTH_FAILED");
    }
    panic!("never rate-limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    // Proxies are trusted, but not this client's address.
    let server = common::server(&["--trusted-proxies", "10.0.0.0/8,192.0.2.1"]);
    let api = Api::new(&server);
    // Each request claims another client; all count under 127.0.0.1.
    let tried = bad_resumes_until_limited(
        &api,
        &[
            ("x-forwarded-for", "198.51.100.{i}".into()),
            ("forwarded", "for=203.0.113.{i}".into()),
        ],
    )
    .await;
    assert_eq!(tried, FAILURES_PER_IP + 1);
    // A login with yet another claimed address is refused too.
    let r = api
        .send(
            api.http
                .post(api.url("/v1/login/start"))
                .header("x-forwarded-for", "198.51.100.200")
                .json(&json!({ "client_first": "n,,n=alice,r=abcdefghijklmnop" })),
        )
        .await;
    r.problem(429, "RATE_LIMITED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_client_is_counted_apart() {
    let server = common::server(&["--trusted-proxies", "127.0.0.1/32"]);
    let api = Api::new(&server);
    assert_eq!(api.register("dora", "pw-dora").await.status, 201);
    // One client behind the proxy (the rightmost untrusted hop of the chain
    // counts, whatever the client wrote to the left of it).
    let tried = bad_resumes_until_limited(&api, &[("x-forwarded-for", "10.9.9.{i}, 198.51.100.7".into())]).await;
    assert_eq!(tried, FAILURES_PER_IP + 1);
    // The same client named by RFC 7239 is the same client.
    let r = api
        .send(
            api.http
                .post(api.url("/v1/login/resume"))
                .header("forwarded", "for=198.51.100.7;proto=https")
                .json(&json!({ "resume_token": "bm9wZQ==" })),
        )
        .await;
    r.problem(429, "RATE_LIMITED");
    // Another client behind the same proxy logs in.
    let other = Api {
        base: api.base.clone(),
        http: reqwest::Client::builder()
            .timeout(common::WAIT)
            .default_headers(
                [(
                    reqwest::header::FORWARDED,
                    "for=\"[2001:db8::7]:4711\"".parse().unwrap(),
                )]
                .into_iter()
                .collect(),
            )
            .build()
            .unwrap(),
    };
    let login = other.login_reply("dora", "pw-dora").await;
    assert_eq!(login.status, 200, "{login:?}");
    // And a client that reaches parleyd directly, without the proxy's
    // headers, is the proxy's address, which is rate-limited by nothing.
    let direct = api.login_reply("dora", "pw-dora").await;
    assert_eq!(direct.status, 200, "{direct:?}");
}
