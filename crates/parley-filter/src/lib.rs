//! Parley's spam classifier: it owns turning a chat message into hashed
//! n-gram features, the logistic-regression model that scores them, the
//! model file's format, and the command that trains it (`parley-train`,
//! behind the `train` feature).
//!
//! Scoring is pure: no I/O, no allocation per message, no panic on any
//! input, the same score for the same text and model. The committed model
//! is embedded with `include_bytes!` and loaded by [`Model::builtin`]; a
//! model file from elsewhere loads with [`Model::load`], which checks every
//! byte. This crate never decides what happens to a message: the server's
//! filter pipeline compares [`Model::score`] with its configured thresholds
//! (the model only recommends them). It must never read files, the network
//! or the environment outside the training command.
//!
//! How the model was trained, on which corpus, and how well it does are in
//! `docs/MODEL.md`.

#![forbid(unsafe_code)]

pub mod features;
mod model;

pub use features::MAX_SCORED_BYTES;
pub use model::{MAGIC, Model, ModelError, ModelParts, encode, looks_like_date};
