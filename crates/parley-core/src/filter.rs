//! The filter pipeline: every message sent from an account or the pager is
//! judged after it is validated and before it is stored. A filter answers
//! accept, hold (the message goes to the recipient's spam folder, unpushed)
//! or reject (the sender gets `REJECTED` with a reason code, and nothing is
//! stored). Filters run in a fixed order and the first that does not
//! accept decides:
//!
//! 1. `words`: the operator's list of blocked phrases (case-insensitive
//!    substrings), rejected with reason `blocked_words`;
//! 2. `spam`: the classifier's score (0 to 1) against two thresholds: at or
//!    above `reject_at` the message is rejected with reason `spam`, at or
//!    above `hold_at` it is held.
//!
//! The classifier scores either in the worker ([`Scorer::Local`], a
//! microsecond or two per chat message) or on an inference server
//! ([`Scorer::Remote`], batched). A remote score arrives later, so the
//! store operation that follows it is submitted from the remote scorer's
//! answer, which comes in submission order: a sender's messages keep their
//! order (the store's ordering contract, [`crate::store`]). When the
//! inference server cannot answer in time, the [`FailPolicy`] decides:
//! let the message through unscored (counted) or answer BUSY.
//!
//! Messages an operator sends (broadcasts) are never filtered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parley_filter::Model;

use crate::histogram::Histogram;

/// Reason code of a message refused by the blocked-phrases filter.
pub const REASON_BLOCKED_WORDS: &str = "blocked_words";
/// Reason code of a message refused by the spam classifier.
pub const REASON_SPAM: &str = "spam";

/// The filter names, as metrics and held messages carry them.
pub const FILTER_WORDS: &str = "words";
pub const FILTER_SPAM: &str = "spam";

/// What the pipeline decided for one message.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Store it and deliver it.
    Accept,
    /// Store it in the recipient's spam folder; do not push it.
    Hold { filter: &'static str, score: f32 },
    /// Store nothing; tell the sender why.
    Reject {
        filter: &'static str,
        reason: &'static str,
        score: Option<f32>,
    },
    /// The classifier could not score in time and the policy is
    /// fail-closed: the sender gets BUSY.
    Unavailable,
}

/// What happens when the inference server does not answer in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailPolicy {
    /// The message goes through unscored, and is counted.
    #[default]
    Open,
    /// The sender gets BUSY with a retry hint; nothing is stored.
    Closed,
}

/// Called with a remote score, or with why there is none.
pub use parley_filter::Done as ScoreDone;
pub use parley_filter::Unscored;

/// A classifier on another process: the server's adapter over the
/// inference-server client.
pub trait RemoteScoring: Send + Sync {
    /// Queues `text`; `done` is called exactly once, and the calls of
    /// every `done` come in submission order. Gives `done` back when the
    /// queue is full. Never blocks.
    fn submit(&self, text: String, done: ScoreDone) -> Result<(), ScoreDone>;
    /// The model version the inference server last reported.
    fn version(&self) -> Option<String>;
    /// What the client has sent so far, for metrics.
    fn report(&self) -> RemoteReport;
}

/// A remote classifier's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteReport {
    /// Requests sent to the inference server.
    pub batches: u64,
    /// Messages in them (divided by `batches`: the mean batch size).
    pub texts: u64,
    /// Requests that timed out, and those that failed otherwise.
    pub timeouts: u64,
    pub failures: u64,
}

/// Where the spam classifier runs.
#[derive(Clone)]
pub enum Scorer {
    /// In the worker.
    Local(Arc<Model>),
    /// On an inference server.
    Remote(Arc<dyn RemoteScoring>),
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scorer::Local(model) => write!(f, "Local({})", model.version()),
            Scorer::Remote(_) => f.write_str("Remote"),
        }
    }
}

/// The spam classifier and what its scores lead to.
#[derive(Clone, Debug)]
pub struct SpamFilter {
    pub scorer: Scorer,
    /// Held at or above this score.
    pub hold_at: f32,
    /// Rejected at or above this score.
    pub reject_at: f32,
    pub fail: FailPolicy,
}

/// The most messages one spam folder keeps, by default.
pub const DEFAULT_MAX_HELD: u32 = 1_000;

/// The operator's choice of filters.
#[derive(Clone, Debug)]
pub struct FilterSettings {
    /// Phrases that get a message rejected, lowercase; empty: no such filter.
    pub blocked_words: Vec<String>,
    /// The classifier; None: messages are not scored.
    pub spam: Option<SpamFilter>,
    /// The most messages one spam folder keeps (the oldest go first); at
    /// least 1.
    pub max_held: u32,
}

impl Default for FilterSettings {
    fn default() -> Self {
        FilterSettings {
            blocked_words: Vec::new(),
            spam: None,
            max_held: DEFAULT_MAX_HELD,
        }
    }
}

/// Buckets of scoring latency, in microseconds.
const LATENCY_BOUNDS_US: &[u64] = &[
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000,
];

/// One filter's counters, for metrics.
#[derive(Debug)]
pub struct FilterCounters {
    pub name: &'static str,
    /// Messages the filter judged (for the classifier: scored).
    pub judged: AtomicU64,
    pub held: AtomicU64,
    pub rejected: AtomicU64,
    /// Messages let through unscored by the fail-open policy.
    pub fail_open: AtomicU64,
    /// Messages answered BUSY by the fail-closed policy.
    pub fail_closed: AtomicU64,
    /// Messages answered BUSY because the remote scorer's queue was full.
    pub overloaded: AtomicU64,
    /// Microseconds from the message reaching the filter to its verdict.
    pub latency_us: Histogram,
}

impl FilterCounters {
    fn new(name: &'static str) -> FilterCounters {
        FilterCounters {
            name,
            judged: AtomicU64::new(0),
            held: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            fail_open: AtomicU64::new(0),
            fail_closed: AtomicU64::new(0),
            overloaded: AtomicU64::new(0),
            latency_us: Histogram::new(LATENCY_BOUNDS_US),
        }
    }

    fn count(&self, verdict: &Verdict) {
        match verdict {
            Verdict::Accept => {}
            Verdict::Hold { .. } => {
                self.held.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Reject { .. } => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Unavailable => {
                self.fail_closed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn elapsed(&self, since: Instant) {
        self.latency_us
            .record(u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
}

/// A message's first judgement: final at once, or waiting for a remote
/// score.
pub enum Judged {
    Now(Verdict),
    /// The spam classifier is remote: [`Filters::judge_remote`] finishes.
    Later,
}

/// The pipeline, shared by every front door of one process.
pub struct Filters {
    settings: FilterSettings,
    pub words: FilterCounters,
    pub spam: FilterCounters,
}

impl std::fmt::Debug for Filters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filters").field("settings", &self.settings).finish()
    }
}

impl Filters {
    pub fn new(settings: FilterSettings) -> Filters {
        Filters {
            settings,
            words: FilterCounters::new(FILTER_WORDS),
            spam: FilterCounters::new(FILTER_SPAM),
        }
    }

    /// Whether any filter is configured.
    pub fn active(&self) -> bool {
        !self.settings.blocked_words.is_empty() || self.settings.spam.is_some()
    }

    pub fn settings(&self) -> &FilterSettings {
        &self.settings
    }

    /// The classifier's model version, when one is configured (a remote
    /// one: as its server last reported it, or "remote (unknown)").
    pub fn model_version(&self) -> Option<String> {
        match &self.settings.spam.as_ref()?.scorer {
            Scorer::Local(model) => Some(model.version().to_owned()),
            Scorer::Remote(remote) => Some(remote.version().unwrap_or_else(|| "remote (not yet seen)".to_owned())),
        }
    }

    /// The remote classifier's counters, when there is one.
    pub fn remote_report(&self) -> Option<RemoteReport> {
        match &self.settings.spam.as_ref()?.scorer {
            Scorer::Remote(remote) => Some(remote.report()),
            Scorer::Local(_) => None,
        }
    }

    /// Judges `body` with every filter that answers at once.
    pub fn judge(&self, body: &str) -> Judged {
        if !self.settings.blocked_words.is_empty() {
            let started = Instant::now();
            self.words.judged.fetch_add(1, Ordering::Relaxed);
            let verdict = if contains_any(body, &self.settings.blocked_words) {
                Verdict::Reject {
                    filter: FILTER_WORDS,
                    reason: REASON_BLOCKED_WORDS,
                    score: None,
                }
            } else {
                Verdict::Accept
            };
            self.words.count(&verdict);
            self.words.elapsed(started);
            if verdict != Verdict::Accept {
                return Judged::Now(verdict);
            }
        }
        let Some(spam) = &self.settings.spam else {
            return Judged::Now(Verdict::Accept);
        };
        match &spam.scorer {
            Scorer::Local(model) => {
                let started = Instant::now();
                let verdict = self.scored(spam, Ok(model.score(body)));
                self.spam.elapsed(started);
                Judged::Now(verdict)
            }
            Scorer::Remote(_) => Judged::Later,
        }
    }

    /// Sends `body` to the remote classifier; `then` gets the verdict, in
    /// submission order. Without a score (timeout, failure, the client
    /// pausing after one) the policy decides; a full queue is answered at
    /// once with BUSY, whatever the policy.
    pub fn judge_remote(self: &Arc<Self>, body: String, then: Box<dyn FnOnce(Verdict) + Send>) {
        let Some(SpamFilter {
            scorer: Scorer::Remote(remote),
            ..
        }) = &self.settings.spam
        else {
            then(Verdict::Accept);
            return;
        };
        // The model reads no further: what it would not read is not sent
        // (a batch of whole bodies could pass the inference server's
        // request limit, and every failure pauses scoring).
        let mut body = body;
        body.truncate(parley_filter::features::scored_part(&body).len());
        let started = Instant::now();
        let filters = Arc::clone(self);
        let done: ScoreDone = Box::new(move |score| {
            let verdict = match &filters.settings.spam {
                Some(spam) => filters.scored(spam, score),
                None => Verdict::Accept,
            };
            filters.spam.elapsed(started);
            then(verdict);
        });
        if let Err(done) = remote.submit(body, done) {
            done(Err(Unscored::Overloaded));
        }
    }

    /// The verdict for a score, or for its absence.
    fn scored(&self, spam: &SpamFilter, score: Result<f32, Unscored>) -> Verdict {
        let verdict = match score {
            Ok(score) => {
                self.spam.judged.fetch_add(1, Ordering::Relaxed);
                if score >= spam.reject_at {
                    Verdict::Reject {
                        filter: FILTER_SPAM,
                        reason: REASON_SPAM,
                        score: Some(score),
                    }
                } else if score >= spam.hold_at {
                    Verdict::Hold {
                        filter: FILTER_SPAM,
                        score,
                    }
                } else {
                    Verdict::Accept
                }
            }
            // A full queue is overload, answered BUSY whatever the policy,
            // as the store's full queue is: letting the message through
            // would pass the sender's earlier messages still queued.
            Err(Unscored::Overloaded) => {
                self.spam.overloaded.fetch_add(1, Ordering::Relaxed);
                return Verdict::Unavailable;
            }
            Err(_) => match spam.fail {
                FailPolicy::Open => {
                    self.spam.fail_open.fetch_add(1, Ordering::Relaxed);
                    Verdict::Accept
                }
                FailPolicy::Closed => Verdict::Unavailable,
            },
        };
        self.spam.count(&verdict);
        verdict
    }
}

/// Whether `text` contains any of `phrases` (lowercase), ignoring case.
fn contains_any(text: &str, phrases: &[String]) -> bool {
    let lower = text.to_lowercase();
    phrases.iter().any(|p| !p.is_empty() && lower.contains(p.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(hold_at: f32, reject_at: f32) -> Filters {
        let model = match Model::builtin() {
            Ok(model) => model.clone(),
            Err(e) => panic!("builtin model: {e}"),
        };
        Filters::new(FilterSettings {
            blocked_words: vec!["buy followers".into()],
            spam: Some(SpamFilter {
                scorer: Scorer::Local(Arc::new(model)),
                hold_at,
                reject_at,
                fail: FailPolicy::Open,
            }),
            max_held: 10,
        })
    }

    fn now(judged: Judged) -> Verdict {
        match judged {
            Judged::Now(v) => v,
            Judged::Later => panic!("a local pipeline answers at once"),
        }
    }

    #[test]
    fn blocked_words_reject_whatever_the_case() {
        let filters = local(2.0, 2.0);
        let verdict = now(filters.judge("Cheap! BUY Followers now"));
        assert_eq!(
            verdict,
            Verdict::Reject {
                filter: FILTER_WORDS,
                reason: REASON_BLOCKED_WORDS,
                score: None
            }
        );
        assert_eq!(filters.words.rejected.load(Ordering::Relaxed), 1);
        assert_eq!(filters.spam.judged.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn thresholds_decide_hold_and_reject() {
        // Every score is at least 0: a zero threshold catches everything.
        assert!(matches!(now(local(0.0, 2.0).judge("hi")), Verdict::Hold { .. }));
        assert!(matches!(now(local(0.0, 0.0).judge("hi")), Verdict::Reject { .. }));
        assert_eq!(now(local(2.0, 2.0).judge("see you at lunch")), Verdict::Accept);
    }
}
