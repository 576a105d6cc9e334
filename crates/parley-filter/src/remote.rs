//! The batching client of the inference server (feature `remote`): the
//! message server hands it each text on its send path and gets the score
//! back through a callback.
//!
//! Who owns what: submitters own nothing but their `done` callbacks until
//! [`RemoteScorer::submit`] moves them into a bounded queue (a tokio
//! channel). One dispatcher task owns everything after that: it takes
//! whatever is queued, up to `max_batch`, as one batch as soon as fewer than
//! `max_in_flight` batches are out, with no waiting delay (one text at a
//! time when quiet, full batches under load); it keeps the batches in a
//! `FuturesOrdered`, so answers are handed out in the order the batches
//! were taken, whatever order they arrive in; and it calls every `done`
//! itself, in submission order, holding no lock.
//!
//! Failing fast: after any failure (timeout, unreachable server, bad
//! answer) the scorer pauses for `pause_after_failure`: batches taken then
//! are answered [`Unscored::Paused`] without asking the server, so a dead
//! server costs one timeout rather than one per message. The first batch
//! taken after the pause tries again.
//!
//! It must never block or await in `submit`, never call `done` twice or
//! not at all while the runtime runs (a `done` that panics is caught and
//! counted), and never hold a lock while calling `done`.

mod stats;

use std::borrow::Cow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub use stats::{HistogramSnapshot, RemoteStats};

use crate::wire::{ErrorBody, MAX_BATCH_TEXTS, MODEL_PATH, ModelInfo, SCORE_PATH, ScoreRequest, ScoreResponse};
use stats::{Counters, add, bump};

/// Default for [`RemoteConfig::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);

/// Default for [`RemoteConfig::max_batch`].
pub const DEFAULT_MAX_BATCH: usize = 256;

/// Default for [`RemoteConfig::queue_capacity`].
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;

/// Default for [`RemoteConfig::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;

/// Default for [`RemoteConfig::pause_after_failure`].
pub const DEFAULT_PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// How long an idle pooled connection is kept; shorter than the server's
/// header read timeout (`serve::DEFAULT_HEADER_READ_TIMEOUT`, which also
/// closes idle connections), so a request never goes out on a connection
/// the server is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest answer read; a 1024-score answer is about 25 KB.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// How long the best-effort `GET /v1/model` at start may take.
const MODEL_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The scorer's settings; every one has a named default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConfig {
    /// The inference server, `http://host:port` (plain HTTP only).
    pub url: String,
    /// How long one batch may take, from sending it to its last byte
    /// ([`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
    /// The most texts in one request, at most [`MAX_BATCH_TEXTS`]
    /// ([`DEFAULT_MAX_BATCH`]).
    pub max_batch: usize,
    /// How many texts may wait for a batch ([`DEFAULT_QUEUE_CAPACITY`]).
    pub queue_capacity: usize,
    /// How many requests may be out at once ([`DEFAULT_MAX_IN_FLIGHT`]).
    pub max_in_flight: usize,
    /// How long to answer [`Unscored::Paused`] after a failure
    /// ([`DEFAULT_PAUSE_AFTER_FAILURE`]).
    pub pause_after_failure: Duration,
}

impl RemoteConfig {
    /// The defaults, for the server at `url`.
    pub fn new(url: impl Into<String>) -> RemoteConfig {
        RemoteConfig {
            url: url.into(),
            timeout: DEFAULT_TIMEOUT,
            max_batch: DEFAULT_MAX_BATCH,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            pause_after_failure: DEFAULT_PAUSE_AFTER_FAILURE,
        }
    }

    /// Every problem with the settings at once, or the score endpoint.
    fn check(&self) -> Result<reqwest::Url, String> {
        let mut problems = Vec::new();
        let base = self.url.trim_end_matches('/');
        let endpoint = match reqwest::Url::parse(&format!("{base}{SCORE_PATH}")) {
            Ok(url) if url.scheme() != "http" => {
                problems.push(format!("url {:?}: only http:// is supported", self.url));
                None
            }
            Ok(url) if url.host().is_none() => {
                problems.push(format!("url {:?} names no host", self.url));
                None
            }
            Ok(url) => Some(url),
            Err(e) => {
                problems.push(format!("url {:?}: {e}", self.url));
                None
            }
        };
        if self.timeout.is_zero() {
            problems.push("timeout must be more than zero".to_owned());
        }
        if !(1..=MAX_BATCH_TEXTS).contains(&self.max_batch) {
            problems.push(format!(
                "max_batch must be 1 to {MAX_BATCH_TEXTS}, not {}",
                self.max_batch
            ));
        }
        if self.queue_capacity == 0 {
            problems.push("queue_capacity must be at least 1".to_owned());
        }
        if self.max_in_flight == 0 {
            problems.push("max_in_flight must be at least 1".to_owned());
        }
        match endpoint {
            Some(endpoint) if problems.is_empty() => Ok(endpoint),
            _ => Err(problems.join("; ")),
        }
    }
}

pub use crate::outcome::{Done, Unscored};

/// The batching client. Start it with [`RemoteScorer::start`]; dropping
/// every handle closes it like [`RemoteScorer::close`], without waiting.
pub struct RemoteScorer {
    /// The queue into the dispatcher; it owns the receiving end.
    queue: mpsc::Sender<Job>,
    /// Set by `close`; the dispatcher watches it.
    closing: watch::Sender<bool>,
    /// Set by the dispatcher when it has answered everything and ended.
    finished: watch::Receiver<bool>,
    /// What the dispatcher, its batches and the model probe report into.
    shared: Arc<Shared>,
}

/// One submitted text and what to call with its score.
struct Job {
    text: String,
    done: Done,
}

/// State written by the dispatcher's batches and read by the handles.
struct Shared {
    /// The counters and histograms behind [`RemoteStats`].
    counters: Counters,
    /// The model version from the last good answer.
    model_version: Mutex<Option<String>>,
    /// The scorer's clock starts here; `paused_until` counts from it.
    epoch: Instant,
    /// Nanoseconds after `epoch` until which batches are answered
    /// `Paused`; moved forward by each failure.
    paused_until: AtomicU64,
}

impl Shared {
    fn nanos_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn pause(&self, pause: Duration) {
        let until = self.nanos_since_epoch(Instant::now() + pause);
        self.paused_until.fetch_max(until, Ordering::Relaxed);
    }

    fn is_paused(&self) -> bool {
        self.nanos_since_epoch(Instant::now()) < self.paused_until.load(Ordering::Relaxed)
    }

    fn set_model_version(&self, version: &str) {
        let mut current = self
            .model_version
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.as_deref() != Some(version) {
            *current = Some(version.to_owned());
        }
    }
}

impl RemoteScorer {
    /// Checks `config` (every problem reported at once), then spawns the
    /// dispatcher on the current tokio runtime, and a best-effort
    /// `GET /v1/model` to learn the model version. Fails outside a runtime.
    pub fn start(config: RemoteConfig) -> Result<Arc<RemoteScorer>, String> {
        let endpoint = config.check()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "RemoteScorer::start must be called inside a tokio runtime".to_owned())?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .tcp_nodelay(true)
            .connect_timeout(config.timeout)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(config.max_in_flight)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let shared = Arc::new(Shared {
            counters: Counters::new(),
            model_version: Mutex::new(None),
            epoch: Instant::now(),
            paused_until: AtomicU64::new(0),
        });
        let (queue, jobs) = mpsc::channel(config.queue_capacity);
        let (closing, closing_seen) = watch::channel(false);
        let (finish, finished) = watch::channel(false);
        let mut model_url = endpoint.clone();
        model_url.set_path(&endpoint.path().replace(SCORE_PATH, MODEL_PATH));
        runtime.spawn(probe_model(client.clone(), model_url, Arc::clone(&shared)));
        let dispatcher = Dispatcher {
            client,
            endpoint,
            config,
            shared: Arc::clone(&shared),
        };
        runtime.spawn(dispatcher.run(jobs, closing_seen, finish));
        Ok(Arc::new(RemoteScorer {
            queue,
            closing,
            finished,
            shared,
        }))
    }

    /// Queues `text`; `done` is called later with its score. Never blocks
    /// nor awaits. Gives `done` back, uncalled, when `queue_capacity`
    /// texts are already waiting or the scorer is closed.
    pub fn submit(&self, text: String, done: Done) -> Result<(), Done> {
        match self.queue.try_send(Job { text, done }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job) | TrySendError::Closed(job)) => {
                bump(&self.shared.counters.rejected);
                Err(job.done)
            }
        }
    }

    /// The model version named by the last good answer (or by the
    /// server's `/v1/model` at start); `None` before either.
    pub fn model_version(&self) -> Option<String> {
        self.shared
            .model_version
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The counters and histograms now.
    pub fn stats(&self) -> RemoteStats {
        let queue_len = self.queue.max_capacity() - self.queue.capacity();
        self.shared.counters.snapshot(queue_len)
    }

    /// Stops taking texts, lets the batches already sent be answered (each
    /// within the timeout), answers every text still queued
    /// [`Unscored::Closed`], and returns when every `done` has been called.
    pub async fn close(&self) {
        self.closing.send_replace(true);
        let mut finished = self.finished.clone();
        // An error means the dispatcher is gone, which is as finished.
        let _ = finished.wait_for(|finished| *finished).await;
    }
}

/// A batch's outcome with the callbacks waiting for it.
struct Answered {
    dones: Vec<Done>,
    outcome: Result<Vec<f32>, Unscored>,
}

type Pending = Pin<Box<dyn Future<Output = Answered> + Send>>;

/// The task that forms batches, sends them and calls the callbacks; what
/// it reads while doing so (its channels are [`Dispatcher::run`]'s).
struct Dispatcher {
    /// The HTTP client, with its pool of keep-alive connections.
    client: reqwest::Client,
    /// `<url>/v1/score`.
    endpoint: reqwest::Url,
    /// The settings, checked.
    config: RemoteConfig,
    /// Counters, model version and pause, shared with the handles.
    shared: Arc<Shared>,
}

impl Dispatcher {
    /// Runs until the scorer is closed (or every handle dropped) and every
    /// text answered. `jobs` is the submit queue, `closing` turns true (or
    /// its sender goes) on close, `finish` is set at the end for `close`.
    async fn run(self, mut jobs: mpsc::Receiver<Job>, mut closing: watch::Receiver<bool>, finish: watch::Sender<bool>) {
        let max_batch = self.config.max_batch;
        let max_in_flight = self.config.max_in_flight;
        // Batches out (and answered-at-once ones waiting behind them), in
        // the order they were taken.
        let mut in_flight: FuturesOrdered<Pending> = FuturesOrdered::new();
        let mut taken: Vec<Job> = Vec::with_capacity(max_batch);
        let mut closed = false;
        let mut drained = false;
        loop {
            tokio::select! {
                // Answers first, so memory is freed before more is taken.
                biased;
                Some(answered) = in_flight.next() => self.deliver(answered),
                _ = closing.wait_for(|closing| *closing), if !closed => {
                    // Refuse new submissions; what is queued is still
                    // received below and answered Closed.
                    closed = true;
                    jobs.close();
                }
                received = jobs.recv_many(&mut taken, max_batch), if !drained && in_flight.len() < max_in_flight => {
                    if received == 0 {
                        drained = true;
                    } else {
                        let batch = std::mem::replace(&mut taken, Vec::with_capacity(max_batch));
                        in_flight.push_back(self.take(batch, closed));
                    }
                }
                else => break,
            }
        }
        finish.send_replace(true);
    }

    /// Turns a batch into the future of its answer: a request, or an
    /// immediate refusal when closed or paused.
    fn take(&self, batch: Vec<Job>, closed: bool) -> Pending {
        let (texts, dones): (Vec<String>, Vec<Done>) = batch.into_iter().map(|job| (job.text, job.done)).unzip();
        if closed || self.shared.is_paused() {
            let outcome = Err(if closed { Unscored::Closed } else { Unscored::Paused });
            return Box::pin(std::future::ready(Answered { dones, outcome }));
        }
        let request = self.client.post(self.endpoint.clone());
        let timeout = self.config.timeout;
        let pause = self.config.pause_after_failure;
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let outcome = send_batch(request, texts, timeout, pause, &shared).await;
            Answered { dones, outcome }
        })
    }

    /// Calls a batch's callbacks, in order.
    fn deliver(&self, answered: Answered) {
        let counters = &self.shared.counters;
        match answered.outcome {
            Ok(scores) => {
                add(&counters.texts_scored, scores.len());
                for (done, score) in answered.dones.into_iter().zip(scores) {
                    self.call(done, Ok(score));
                }
            }
            Err(unscored) => {
                let n = answered.dones.len();
                add(&counters.unscored, n);
                match unscored {
                    Unscored::Paused => add(&counters.paused, n),
                    Unscored::Closed => add(&counters.closed, n),
                    _ => {}
                }
                for done in answered.dones {
                    self.call(done, Err(unscored.clone()));
                }
            }
        }
    }

    /// Calls one callback; a panic in it is counted, not spread, so the
    /// texts after it are still answered.
    fn call(&self, done: Done, outcome: Result<f32, Unscored>) {
        if catch_unwind(AssertUnwindSafe(move || done(outcome))).is_err() {
            bump(&self.shared.counters.done_panics);
            tracing::error!("a remote-scoring callback panicked");
        }
    }
}

/// Sends one batch and checks the answer; a failure pauses the scorer at
/// once (not when the answer's turn to be delivered comes).
async fn send_batch(
    request: reqwest::RequestBuilder,
    texts: Vec<String>,
    timeout: Duration,
    pause: Duration,
    shared: &Shared,
) -> Result<Vec<f32>, Unscored> {
    let counters = &shared.counters;
    let count = texts.len();
    let request_body = ScoreRequest {
        texts: texts.iter().map(|text| Cow::Borrowed(text.as_str())).collect(),
    };
    let body = serde_json::to_vec(&request_body);
    drop(request_body);
    drop(texts);
    let started = Instant::now();
    bump(&counters.batches_sent);
    add(&counters.texts_sent, count);
    counters.batch_size.record(count as u64);
    let outcome = match body {
        Ok(body) => match tokio::time::timeout(timeout, exchange(request, body, count)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Unscored::Timeout),
        },
        Err(e) => Err(Unscored::BadAnswer(format!("cannot encode the request: {e}"))),
    };
    counters.latency_us.record_duration(started.elapsed());
    match &outcome {
        Ok((version, _)) => shared.set_model_version(version),
        Err(unscored) => {
            match unscored {
                Unscored::Timeout => bump(&counters.timeouts),
                Unscored::Unreachable(_) => bump(&counters.unreachable),
                _ => bump(&counters.bad_answers),
            }
            shared.pause(pause);
            tracing::warn!(error = %unscored, texts = count, "remote scoring failed; pausing");
        }
    }
    outcome.map(|(_, scores)| scores)
}

/// One request and its answer: the model version and one score per text.
async fn exchange(
    request: reqwest::RequestBuilder,
    body: Vec<u8>,
    count: usize,
) -> Result<(String, Vec<f32>), Unscored> {
    let response = request
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| Unscored::Unreachable(error_chain(&e)))?;
    let status = response.status();
    let bytes = read_capped(response).await?;
    if status != reqwest::StatusCode::OK {
        let reason = serde_json::from_slice::<ErrorBody<'_>>(&bytes)
            .map(|body| body.error.into_owned())
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned());
        return Err(Unscored::BadAnswer(format!("status {status}: {reason}")));
    }
    let answer: ScoreResponse<'_> =
        serde_json::from_slice(&bytes).map_err(|e| Unscored::BadAnswer(format!("malformed answer: {e}")))?;
    if answer.scores.len() != count {
        let message = format!("{} scores for {count} texts", answer.scores.len());
        return Err(Unscored::BadAnswer(message));
    }
    let mut scores = Vec::with_capacity(count);
    for score in answer.scores {
        // NaN fails this test too.
        if !(0.0..=1.0).contains(&score) {
            return Err(Unscored::BadAnswer(format!("score {score} outside [0, 1]")));
        }
        scores.push(score as f32);
    }
    Ok((answer.model.into_owned(), scores))
}

/// The answer's body, refusing one longer than [`MAX_ANSWER_BYTES`].
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, Unscored> {
    let too_long = || Unscored::BadAnswer(format!("answer longer than {MAX_ANSWER_BYTES} bytes"));
    if response
        .content_length()
        .is_some_and(|length| length > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_long());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Unscored::Unreachable(error_chain(&e)))?
    {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_long());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Learns the model version before the first answer, if the server says.
async fn probe_model(client: reqwest::Client, url: reqwest::Url, shared: Arc<Shared>) {
    let probe = async {
        let response = client.get(url).send().await.ok()?;
        if response.status() != reqwest::StatusCode::OK {
            return None;
        }
        let bytes = read_capped(response).await.ok()?;
        serde_json::from_slice::<ModelInfo>(&bytes).ok()
    };
    if let Ok(Some(info)) = tokio::time::timeout(MODEL_PROBE_TIMEOUT, probe).await {
        let mut current = shared
            .model_version
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A batch's answer, if one came first, is as new or newer.
        if current.is_none() {
            *current = Some(info.version);
        }
    }
}

/// An error and its sources, `a: b: c`, since reqwest's own message
/// leaves out the cause (such as "connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
