//! The inference protocol that [`crate::serve`] answers and
//! [`crate::remote`] speaks: its paths, its limits and its JSON shapes, in
//! one place so that the two sides cannot drift apart. `docs/REMOTE.md`
//! describes it for people.
//!
//! Scores travel as JSON numbers written from the `f64` that holds the
//! model's `f32` exactly, so the client reads back the very `f32` the model
//! computed (a shortest-`f32` decimal read through `f64`, as serde_json
//! does, could round differently).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Scores a batch: `POST` a [`ScoreRequest`], get a [`ScoreResponse`].
pub const SCORE_PATH: &str = "/v1/score";

/// Describes the model being served: `GET`, get a [`ModelInfo`].
pub const MODEL_PATH: &str = "/v1/model";

/// Liveness: `GET`, get `{"status":"ok"}`.
pub const HEALTH_PATH: &str = "/healthz";

/// The most texts one request may carry; more is answered 413.
pub const MAX_BATCH_TEXTS: usize = 1024;

/// The largest request body, in bytes; more is answered 413.
pub const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// The body of `POST /v1/score`. Texts borrow from the request body when
/// they hold no escapes, so the server copies nothing to score them.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct ScoreRequest<'a> {
    /// The texts to score, in order.
    #[serde(borrow)]
    pub texts: Vec<Cow<'a, str>>,
}

/// The answer to `POST /v1/score`: one score per text, in the same order.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct ScoreResponse<'a> {
    /// The version of the model that scored them ([`crate::Model::version`]).
    #[serde(borrow)]
    pub model: Cow<'a, str>,
    /// Probabilities in [0, 1], each an `f32` widened to `f64`.
    pub scores: Vec<f64>,
}

/// The answer to `GET /v1/model`.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct ModelInfo {
    /// [`crate::Model::version`].
    pub version: String,
    /// [`crate::Model::label`].
    pub label: String,
    /// [`crate::Model::quarantine_threshold`], widened to `f64`.
    pub quarantine_threshold: f64,
    /// [`crate::Model::reject_threshold`], widened to `f64`.
    pub reject_threshold: f64,
}

/// The body of every answer other than 200.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct ErrorBody<'a> {
    /// What was wrong, for a person to read.
    #[serde(borrow)]
    pub error: Cow<'a, str>,
}
