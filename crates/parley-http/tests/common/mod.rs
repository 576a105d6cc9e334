//! Helpers for the HTTP front door's tests: a JSON client that registers
//! and logs in with SCRAM over HTTP, as a browser would.
#![allow(dead_code)]

pub mod native_ws;

use std::time::Duration;

use base64::Engine;
use parley_core::Mechanism;
use parley_core::scram::{ClientExchange, StoredCredentials, random_salt};
use parley_testkit::{Store, TestServer};
use serde_json::{Value, json};

pub const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A JSON client for one server.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

/// A status and a parsed body (Null when empty), plus the content type.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    /// Asserts an error reply: its status, a problem body with its code.
    pub fn problem(&self, status: u16, code: &str) -> &Reply {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.content_type, "application/problem+json", "{self:?}");
        assert_eq!(self.body["code"], code, "{self:?}");
        assert_eq!(self.body["status"], status, "{self:?}");
        assert_eq!(self.body["type"], format!("urn:parley:error:{code}"), "{self:?}");
        assert!(
            self.body["title"].is_string() && self.body["detail"].is_string(),
            "{self:?}"
        );
        self
    }

    pub fn ok(&self) -> &Value {
        assert!((200..300).contains(&self.status), "{self:?}");
        &self.body
    }
}

impl Api {
    pub fn new(server: &TestServer) -> Api {
        Api {
            base: server.http_url(),
            http: reqwest::Client::builder().timeout(WAIT).build().unwrap(),
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = response.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            content_type,
            body,
            headers,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut r = self.http.get(self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        self.send(r).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.with_json(reqwest::Method::POST, path, token, body).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.with_json(reqwest::Method::PUT, path, token, body).await
    }

    async fn with_json(&self, method: reqwest::Method, path: &str, token: Option<&str>, body: Value) -> Reply {
        let mut r = self.http.request(method, self.url(path)).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        self.send(r).await
    }

    pub async fn method(&self, method: reqwest::Method, path: &str, token: Option<&str>) -> Reply {
        let mut r = self.http.request(method, self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        self.send(r).await
    }

    /// Registers `name` with SCRAM credentials derived here.
    pub async fn register(&self, name: &str, password: &str) -> Reply {
        let mut body = credential_fields(&credentials(password));
        body.insert("name".into(), json!(name));
        self.post("/v1/accounts", None, Value::Object(body)).await
    }

    /// Both SCRAM steps; returns the reply of the second (or of the first
    /// if it failed). Verifies the server's signature on success.
    pub async fn login_reply(&self, name: &str, password: &str) -> Reply {
        let mut exchange = ClientExchange::new(name, password);
        let start = self
            .post(
                "/v1/login/start",
                None,
                json!({ "client_first": exchange.client_first() }),
            )
            .await;
        if start.status != 200 {
            return start;
        }
        let mechanism = Mechanism::from_name(start.body["mechanism"].as_str().unwrap()).unwrap();
        let server_first = start.body["server_first"].as_str().unwrap();
        let client_final = exchange.client_final(mechanism, server_first.as_bytes()).unwrap();
        let finish = self
            .post(
                "/v1/login/finish",
                None,
                json!({ "login_id": start.body["login_id"], "client_final": client_final }),
            )
            .await;
        if finish.status == 200 {
            let server_final = finish.body["server_final"].as_str().unwrap();
            exchange
                .verify_server_final(server_final.as_bytes())
                .expect("server signature");
        }
        finish
    }

    /// Proves `password` again for the session of `token` (the first SCRAM
    /// step of a deletion or password change); returns (reauth_id,
    /// client_final, the exchange to verify the server with).
    pub async fn reauth(&self, token: &str, name: &str, password: &str) -> (Value, String, ClientExchange) {
        let mut exchange = ClientExchange::new(name, password);
        let start = self
            .post(
                "/v1/account/reauth",
                Some(token),
                json!({ "client_first": exchange.client_first() }),
            )
            .await;
        let body = start.ok();
        let mechanism = Mechanism::from_name(body["mechanism"].as_str().unwrap()).unwrap();
        let client_final = exchange
            .client_final(mechanism, body["server_first"].as_str().unwrap().as_bytes())
            .unwrap();
        (body["reauth_id"].clone(), client_final, exchange)
    }

    /// Deletes the account of `token`, proving `password` again.
    pub async fn delete_account(&self, token: &str, name: &str, password: &str) -> Reply {
        let (reauth_id, client_final, _) = self.reauth(token, name, password).await;
        self.send(
            self.http
                .delete(self.url("/v1/account"))
                .bearer_auth(token)
                .json(&json!({ "reauth_id": reauth_id, "client_final": client_final })),
        )
        .await
    }

    /// Logs in; returns the whole login reply body.
    pub async fn login(&self, name: &str, password: &str) -> Value {
        self.login_reply(name, password).await.ok().clone()
    }

    /// Registers (if needed) and logs in; returns the bearer token.
    pub async fn user(&self, name: &str) -> String {
        let password = format!("pw-{name}");
        let r = self.register(name, &password).await;
        assert!(r.status == 201 || r.status == 409, "{r:?}");
        self.login(name, &password).await["token"].as_str().unwrap().to_owned()
    }

    pub async fn send_message(&self, token: &str, to: &str, id: &str, body: &str) -> Value {
        self.post(
            "/v1/messages",
            Some(token),
            json!({ "to": to, "client_msg_id": id, "body": body }),
        )
        .await
        .ok()
        .clone()
    }
}

/// SCRAM-SHA-256 credentials for `password`, derived here as a client
/// does.
pub fn credentials(password: &str) -> StoredCredentials {
    StoredCredentials::derive(Mechanism::Sha256, password, &random_salt(), 4096)
}

/// The JSON fields that carry credentials (registration, a new password).
pub fn credential_fields(c: &StoredCredentials) -> serde_json::Map<String, Value> {
    [
        ("mechanism", json!("SCRAM-SHA-256")),
        ("salt", json!(B64.encode(&c.salt))),
        ("iterations", json!(c.iterations)),
        ("stored_key", json!(B64.encode(&c.stored_key))),
        ("server_key", json!(B64.encode(&c.server_key))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The body of `POST /v1/account/password`: the re-authentication that
/// proves the old password, and the new credentials.
pub fn password_change(reauth_id: &Value, client_final: &str, new: &StoredCredentials) -> Value {
    let mut body = credential_fields(new);
    body.insert("reauth_id".into(), reauth_id.clone());
    body.insert("client_final".into(), json!(client_final));
    Value::Object(body)
}

/// A server with a memory store and its HTTP listener on a free port.
pub fn server(extra: &[&str]) -> TestServer {
    TestServer::start_with(Store::Memory, extra)
}

/// Whether a test that needs an outside tool must run: with
/// `PARLEY_REQUIRE_SERVICES=1` (as in CI) a missing tool fails the test;
/// otherwise the test prints why it skips and passes.
pub fn require_or_skip(what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    if std::env::var("PARLEY_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("{what} is required (PARLEY_REQUIRE_SERVICES=1) but missing");
    }
    println!("skipped: {what} is not installed (set PARLEY_REQUIRE_SERVICES=1 to fail instead)");
    false
}

/// Whether `program --version` runs.
pub fn runs(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command with a time limit; returns whether it succeeded, with
/// its output printed (the test harness shows it on failure).
pub fn run_bounded(mut command: std::process::Command, limit: Duration) -> bool {
    use std::process::Stdio;
    let mut child = command
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the command");
    match parley_testkit::poll_within_blocking(limit, || child.try_wait().ok().flatten()) {
        Some(status) => status.success(),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            println!("killed after {limit:?}");
            false
        }
    }
}
