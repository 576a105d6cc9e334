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
//! Scoring can also be offloaded to another process, behind two cargo
//! features so that the model-only build has no HTTP or async dependency:
//! `serve` adds [`serve`], an HTTP/JSON inference server over a [`Model`];
//! `remote` adds [`remote`], the batching client that the message server
//! calls on its send path (bounded queue, batches formed as soon as a slot
//! is free, callbacks in submission order, a pause after any failure).
//! [`wire`] holds the protocol both speak; `docs/REMOTE.md` in this crate
//! describes it. These modules do network I/O, but only on the listener or
//! URL they are given; they still read no files and no environment.
//!
//! How the model was trained, on which corpus, and how well it does are in
//! `docs/MODEL.md` at the workspace root.

#![forbid(unsafe_code)]

pub mod features;
mod model;
pub mod outcome;
#[cfg(feature = "remote")]
pub mod remote;
#[cfg(feature = "serve")]
pub mod serve;
#[cfg(any(feature = "serve", feature = "remote"))]
pub mod wire;

pub use features::MAX_SCORED_BYTES;
pub use model::{MAGIC, Model, ModelError, ModelParts, encode, looks_like_date};
pub use outcome::{Done, Unscored};
