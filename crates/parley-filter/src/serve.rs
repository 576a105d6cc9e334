//! The inference server (feature `serve`): scores batches of texts for
//! other processes over HTTP/1.1 and JSON (the protocol is in
//! [`crate::wire`] and `docs/REMOTE.md`).
//!
//! It owns its listener, its connections and nothing else: the model is
//! shared read-only, and there is no state between requests. Every input is
//! bounded before it costs anything:
//!
//! - at most [`ServeLimits::max_connections`] connections are open; past
//!   it, accepting pauses and new connections wait in the kernel's backlog;
//! - a request's headers must arrive within
//!   [`ServeLimits::header_read_timeout`] (hyper runs this timer while a
//!   keep-alive connection is idle too, so it also closes idle
//!   connections; the [`crate::remote`] client drops its idle ones sooner);
//! - a body must be at most [`ServeLimits::max_body_bytes`] and arrive
//!   within [`ServeLimits::body_read_timeout`], and carry at most
//!   [`ServeLimits::max_texts`] texts.
//!
//! Decoding, scoring and encoding a request body of more than
//! `INLINE_MAX_BODY_BYTES` (1 KiB) run on tokio's blocking pool, so a
//! batch (256 chat lines take about half a millisecond, 1024 long texts
//! several) never holds an async worker; a tiny one runs inline, where
//! the hand-off would cost more than the work.
//!
//! On shutdown it stops accepting, lets each connection finish the
//! request it is answering, closes idle ones at once, and waits at most
//! [`ServeLimits::shutdown_grace`] before dropping the rest.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::Model;
use crate::wire::{
    ErrorBody, HEALTH_PATH, MAX_BATCH_TEXTS, MAX_REQUEST_BYTES, MODEL_PATH, ModelInfo, SCORE_PATH, ScoreRequest,
    ScoreResponse,
};

/// Default for [`ServeLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default for [`ServeLimits::header_read_timeout`]; longer than the
/// client's idle-connection timeout, so the client never reuses a
/// connection the server is closing.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for [`ServeLimits::body_read_timeout`].
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for [`ServeLimits::shutdown_grace`].
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Request bodies of at most this many bytes (a dozen chat lines, tens of
/// microseconds of scoring) are scored on the connection's task, larger
/// ones on the blocking pool. For 256-text batches of chat lines the
/// blocking pool is the faster: about 270,000 texts/s against 170,000
/// inline through `benches/remote.rs` on a 2-core machine, since scoring
/// inline stalls the async workers that carry the other connections.
const INLINE_MAX_BODY_BYTES: usize = 1024;

/// How long to wait after a failed accept (out of file descriptors, say)
/// before trying again, so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// What `GET /healthz` answers.
const HEALTH_BODY: &[u8] = br#"{"status":"ok"}"#;

/// The server's limits; every one has a named default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections open at once ([`DEFAULT_MAX_CONNECTIONS`]).
    pub max_connections: usize,
    /// Texts in one request ([`MAX_BATCH_TEXTS`]).
    pub max_texts: usize,
    /// Bytes in one request body ([`MAX_REQUEST_BYTES`]).
    pub max_body_bytes: usize,
    /// From the first byte of a request (or the end of the previous one)
    /// to the end of its headers ([`DEFAULT_HEADER_READ_TIMEOUT`]).
    pub header_read_timeout: Duration,
    /// From the end of the headers to the end of the body
    /// ([`DEFAULT_BODY_READ_TIMEOUT`]).
    pub body_read_timeout: Duration,
    /// How long shutdown waits for requests in progress
    /// ([`DEFAULT_SHUTDOWN_GRACE`]).
    pub shutdown_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> ServeLimits {
        ServeLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_texts: MAX_BATCH_TEXTS,
            max_body_bytes: MAX_REQUEST_BYTES,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// Serves `model` on `listener` until `shutdown` resolves, then drains
/// (see the module docs). To serve the committed model, pass
/// `Arc::new(Model::builtin()?.clone())`; any loaded model works the same.
///
/// Errors on one connection end that connection only (logged at debug);
/// a failed accept is logged and retried. The result is `Ok` once drained.
pub async fn serve(
    listener: TcpListener,
    model: Arc<Model>,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let state = Arc::new(State::new(model, limits));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(joined) = connections.join_next() => {
                if let Err(e) = joined {
                    tracing::warn!(error = %e, "inference connection task failed");
                }
            }
            accepted = accept(&listener, &permits) => {
                if let Some((stream, permit)) = accepted {
                    connections.spawn(connection(stream, permit, Arc::clone(&state), stopped.clone()));
                }
            }
        }
    }
    drop(listener);
    // Every connection watches this: idle ones close now, busy ones after
    // the answer they are writing.
    let _ = stop.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "inference connections still busy after the shutdown grace; dropping them"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// What every request handler reads, built once.
struct State {
    /// The model, shared read-only.
    model: Arc<Model>,
    /// The body of `GET /v1/model`, encoded once.
    model_info: Bytes,
    /// The limits the handlers enforce.
    limits: ServeLimits,
}

impl State {
    fn new(model: Arc<Model>, limits: ServeLimits) -> State {
        let info = ModelInfo {
            version: model.version().to_owned(),
            label: model.label().to_owned(),
            quarantine_threshold: f64::from(model.quarantine_threshold()),
            reject_threshold: f64::from(model.reject_threshold()),
        };
        // Encoding strings and finite floats cannot fail; an empty body
        // would only make clients report a bad answer.
        let model_info = serde_json::to_vec(&info).map(Bytes::from).unwrap_or_default();
        State {
            model,
            model_info,
            limits,
        }
    }
}

/// The next connection, once a connection slot is free. `None` after a
/// failed accept (logged, and waited out).
async fn accept(listener: &TcpListener, permits: &Arc<Semaphore>) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    // The semaphore is never closed.
    let permit = Arc::clone(permits).acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, _)) => {
            let _ = stream.set_nodelay(true);
            Some((stream, permit))
        }
        Err(e) => {
            tracing::warn!(error = %e, "inference server accept failed");
            tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            None
        }
    }
}

/// One connection, HTTP/1.1 with keep-alive, until the client leaves, a
/// timeout passes or the server stops. Holds its slot until it ends.
async fn connection(
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    state: Arc<State>,
    mut stopped: watch::Receiver<bool>,
) {
    let header_read_timeout = state.limits.header_read_timeout;
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(handle(request, &state).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => Some(ended),
        // An error means the server is gone: stop as well.
        _ = stopped.wait_for(|stop| *stop) => None,
    };
    // Finish the request in progress, if any, then close.
    let ended = match ended {
        Some(ended) => ended,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "inference connection ended with an error");
    }
}

/// Routes one request.
async fn handle(request: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::POST, SCORE_PATH) => score(request, state).await,
        (&Method::GET, MODEL_PATH) => json(StatusCode::OK, state.model_info.clone()),
        (&Method::GET, HEALTH_PATH) => json(StatusCode::OK, Bytes::from_static(HEALTH_BODY)),
        (_, SCORE_PATH) => method_not_allowed("POST"),
        (_, MODEL_PATH | HEALTH_PATH) => method_not_allowed("GET"),
        _ => error(StatusCode::NOT_FOUND, "no such path"),
    }
}

/// `POST /v1/score`: read the body within its limits, then score it here
/// or on the blocking pool.
async fn score(request: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let limits = &state.limits;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_body_bytes as u64) {
        return too_large_body(limits);
    }
    let body = Limited::new(request.into_body(), limits.max_body_bytes);
    let body = match tokio::time::timeout(limits.body_read_timeout, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large_body(limits),
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, &format!("could not read the body: {e}")),
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time"),
    };
    if body.len() <= INLINE_MAX_BODY_BYTES {
        return score_body(&body, &state.model, limits.max_texts);
    }
    let model = Arc::clone(&state.model);
    let max_texts = limits.max_texts;
    match tokio::task::spawn_blocking(move || score_body(&body, &model, max_texts)).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "scoring a batch failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "scoring failed")
        }
    }
}

/// Decodes a score request, scores it and encodes the answer.
fn score_body(body: &[u8], model: &Model, max_texts: usize) -> Response<Full<Bytes>> {
    let request: ScoreRequest<'_> = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("malformed request: {e}")),
    };
    if request.texts.len() > max_texts {
        let message = format!("{} texts in one request; at most {max_texts}", request.texts.len());
        return error(StatusCode::PAYLOAD_TOO_LARGE, &message);
    }
    let scores = request.texts.iter().map(|text| f64::from(model.score(text))).collect();
    let answer = ScoreResponse {
        model: model.version().into(),
        scores,
    };
    match serde_json::to_vec(&answer) {
        Ok(encoded) => json(StatusCode::OK, Bytes::from(encoded)),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("could not encode the answer: {e}"),
        ),
    }
}

fn too_large_body(limits: &ServeLimits) -> Response<Full<Bytes>> {
    let message = format!("request body larger than {} bytes", limits.max_body_bytes);
    error(StatusCode::PAYLOAD_TOO_LARGE, &message)
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// `{"error": message}` with `status`.
fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = ErrorBody { error: message.into() };
    let encoded = serde_json::to_vec(&body).unwrap_or_default();
    json(status, Bytes::from(encoded))
}

fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
