//! The inference server at the wire: scores identical to the model's,
//! every limit answered with a JSON error, connection and header limits,
//! and a shutdown that closes idle connections at once.

mod support;

use std::sync::Arc;
use std::time::Duration;

use parley_filter::features::FeatureSet;
use parley_filter::serve::ServeLimits;
use parley_filter::{MAX_SCORED_BYTES, Model, ModelParts, encode};
use support::{RawClient, Server, TEST_BOUND, builtin, chat_line, request, request_bytes};
use tokio::time::timeout;

/// Runs a test body under the bound every test has.
async fn bounded(body: impl Future<Output = ()>) {
    if timeout(TEST_BOUND, body).await.is_err() {
        panic!("test did not finish within {TEST_BOUND:?}");
    }
}

fn score_body(texts: &[String]) -> Vec<u8> {
    serde_json::json!({ "texts": texts }).to_string().into_bytes()
}

/// Checks a 200 answer against the model, bit for bit.
fn assert_scores(answer: &support::Answer, model: &Model, texts: &[String]) {
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let json = answer.json();
    assert_eq!(json["model"], model.version());
    let scores = json["scores"].as_array().cloned().unwrap_or_default();
    assert_eq!(scores.len(), texts.len());
    for (text, score) in texts.iter().zip(&scores) {
        let served = score.as_f64().map(|s| s as f32);
        assert_eq!(served, Some(model.score(text)), "text {text:?}");
    }
}

#[tokio::test]
async fn scores_are_the_builtin_models_bit_for_bit() {
    bounded(async {
        let model = builtin();
        let server = Server::start(Arc::clone(&model), ServeLimits::default()).await;
        let texts: Vec<String> = vec![
            String::new(),
            "ok see you at 7".into(),
            "WINNER!! You have won a £1000 prize, call 09061701461 to claim now".into(),
            "quotes \" backslash \\ newline \n tab \t nul \u{0} emoji 🎉 accents éàü".into(),
            "x".repeat(MAX_SCORED_BYTES * 3 + 1),
            "é".repeat(MAX_SCORED_BYTES),
        ];
        // Small (scored inline) and large (scored on the blocking pool).
        let answer = request(server.addr, "POST", "/v1/score", &score_body(&texts[..4])).await;
        assert_scores(&answer, &model, &texts[..4]);
        let answer = request(server.addr, "POST", "/v1/score", &score_body(&texts)).await;
        assert_scores(&answer, &model, &texts);
        let empty = request(server.addr, "POST", "/v1/score", br#"{"texts":[]}"#).await;
        assert_scores(&empty, &model, &[]);
        assert_eq!(server.stopped().await.ok(), Some(()));
    })
    .await;
}

#[tokio::test]
async fn full_batches_are_scored_on_one_keep_alive_connection() {
    bounded(async {
        let model = builtin();
        let server = Server::start(Arc::clone(&model), ServeLimits::default()).await;
        let texts: Vec<String> = (0..1024).map(|i| chat_line(i).repeat(4)).collect();
        let mut client = RawClient::connect(server.addr).await;
        for _ in 0..2 {
            let answer = client.request("POST", "/v1/score", &score_body(&texts)).await;
            assert_scores(&answer, &model, &texts);
        }
        assert_eq!(server.stopped().await.ok(), Some(()));
    })
    .await;
}

#[tokio::test]
async fn a_loaded_model_is_served_and_described() {
    bounded(async {
        let weights: Vec<(u32, f32)> = (0..64).map(|i| (i * 7, 0.25)).collect();
        let bytes = encode(&ModelParts {
            features: FeatureSet::WORDS,
            bias: -1.0,
            quarantine_threshold: 0.5,
            reject_threshold: 0.75,
            label: "test model 2027-01-02 seed 1",
            weights: &weights,
        });
        let model = match Model::load(&bytes) {
            Ok(model) => Arc::new(model),
            Err(e) => panic!("test model does not load: {e}"),
        };
        let server = Server::start(Arc::clone(&model), ServeLimits::default()).await;
        let info = request(server.addr, "GET", "/v1/model", b"").await;
        assert_eq!(info.status, 200);
        let info = info.json();
        assert_eq!(info["version"], model.version());
        assert!(model.version().starts_with("2027-01-02-"));
        assert_eq!(info["label"], "test model 2027-01-02 seed 1");
        assert_eq!(info["quarantine_threshold"], 0.5);
        assert_eq!(info["reject_threshold"], 0.75);
        let texts = vec![chat_line(1), chat_line(2)];
        let answer = request(server.addr, "POST", "/v1/score", &score_body(&texts)).await;
        assert_scores(&answer, &model, &texts);
        let health = request(server.addr, "GET", "/healthz", b"").await;
        assert_eq!(
            (health.status, health.json()),
            (200, serde_json::json!({"status": "ok"}))
        );
        assert_eq!(server.stopped().await.ok(), Some(()));
    })
    .await;
}

#[tokio::test]
async fn every_refusal_is_a_json_error_with_its_status() {
    bounded(async {
        let limits = ServeLimits {
            max_body_bytes: 64 * 1024,
            ..ServeLimits::default()
        };
        let server = Server::start(builtin(), limits).await;
        let too_many: Vec<String> = (0..1025).map(|i| i.to_string()).collect();
        let big = "a".repeat(70 * 1024);
        let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
            ("POST", "/v1/score", score_body(&too_many), 413),
            ("POST", "/v1/score", score_body(&[big]), 413),
            ("POST", "/v1/score", b"{\"texts\": [\"unterminated".to_vec(), 400),
            ("POST", "/v1/score", b"".to_vec(), 400),
            ("POST", "/v1/score", b"[]".to_vec(), 400),
            ("POST", "/v1/score", br#"{"texts": "not a list"}"#.to_vec(), 400),
            ("POST", "/v1/score", br#"{"texts": [1, 2]}"#.to_vec(), 400),
            ("POST", "/v1/score", br#"{"text": ["typo"]}"#.to_vec(), 400),
            ("POST", "/v1/score", b"{\"texts\": [\"\xff\xfe\"]}".to_vec(), 400),
            ("POST", "/v1/score", br#"{"texts": ["\ud800"]}"#.to_vec(), 400),
            ("GET", "/v1/score", Vec::new(), 405),
            ("PUT", "/v1/model", Vec::new(), 405),
            ("POST", "/healthz", Vec::new(), 405),
            ("GET", "/", Vec::new(), 404),
            ("POST", "/v2/score", score_body(&[]), 404),
        ];
        for (method, path, body, status) in cases {
            let answer = request(server.addr, method, path, &body).await;
            let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
            assert_eq!(answer.status, status, "{method} {path} {shown}");
            let error = answer.json()["error"].as_str().map(str::to_owned);
            assert!(error.is_some_and(|e| !e.is_empty()), "{method} {path} {shown}");
            if status == 405 {
                assert!(answer.header("allow").is_some());
            }
        }
        // A declared length over the limit is refused before any body.
        let mut client = RawClient::connect(server.addr).await;
        let head = "POST /v1/score HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n";
        client.send(head.as_bytes()).await;
        let answer = client.answer().await.map(|a| a.status);
        assert_eq!(answer, Some(413));
        // A chunked body that grows past the limit is cut off there.
        let mut client = RawClient::connect(server.addr).await;
        let chunk = "b".repeat(40 * 1024);
        let raw = format!(
            "POST /v1/score HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len(),
            chunk.len()
        );
        client.send(raw.as_bytes()).await;
        assert_eq!(client.answer().await.map(|a| a.status), Some(413));
        // The server is still there for well-formed requests.
        let ok = request(server.addr, "POST", "/v1/score", &score_body(&[chat_line(0)])).await;
        assert_eq!(ok.status, 200);
        assert_eq!(server.stopped().await.ok(), Some(()));
    })
    .await;
}

#[test]
fn the_default_limits_are_the_protocols() {
    let limits = ServeLimits::default();
    assert_eq!(limits.max_texts, 1024);
    assert_eq!(limits.max_body_bytes, 32 * 1024 * 1024);
    assert_eq!(limits.max_connections, 1024);
}

#[tokio::test]
async fn headers_and_bodies_must_arrive_in_time() {
    bounded(async {
        let limits = ServeLimits {
            header_read_timeout: Duration::from_millis(200),
            body_read_timeout: Duration::from_millis(200),
            ..ServeLimits::default()
        };
        let server = Server::start(builtin(), limits).await;
        // Half a request line, then nothing: the server hangs up.
        let mut client = RawClient::connect(server.addr).await;
        client.send(b"POST /v1/score HTT").await;
        assert!(client.closed().await);
        // Headers, then half the body: 408.
        let mut client = RawClient::connect(server.addr).await;
        client
            .send(b"POST /v1/score HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"texts\"")
            .await;
        assert_eq!(client.answer().await.map(|a| a.status), Some(408));
        assert_eq!(server.stopped().await.ok(), Some(()));
    })
    .await;
}

#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_slot() {
    bounded(async {
        let limits = ServeLimits {
            max_connections: 1,
            ..ServeLimits::default()
        };
        let server = Server::start(builtin(), limits).await;
        let mut first = RawClient::connect(server.addr).await;
        assert_eq!(first.request("GET", "/healthz", b"").await.status, 200);
        let mut second = RawClient::connect(server.addr).await;
        second.send(&request_bytes("GET", "/healthz", b"")).await;
        // deliberate: proving that nothing arrives needs a wait; a loaded
        // machine can only make this pass wrongly, never fail wrongly.
        let early = timeout(Duration::from_millis(300), second.answer()).await;
        assert!(
            early.is_err(),
            "the second connection was served while the first held the only slot"
        );
        drop(first);
        assert_eq!(second.answer().await.map(|a| a.status), Some(200));
        assert_eq!(server.stopped().await.ok(), Some(()));
    })
    .await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections_without_waiting_out_the_grace() {
    bounded(async {
        let limits = ServeLimits {
            shutdown_grace: Duration::from_secs(600),
            ..ServeLimits::default()
        };
        let server = Server::start(builtin(), limits).await;
        let addr = server.addr;
        let mut idle = RawClient::connect(addr).await;
        assert_eq!(idle.request("GET", "/healthz", b"").await.status, 200);
        // TEST_BOUND is far below the grace: returning proves no wait.
        assert_eq!(server.stopped().await.ok(), Some(()));
        assert!(idle.closed().await);
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    })
    .await;
}
