//! `parleyd`, the Parley server: configuration, storage selection, the
//! native-protocol listener and graceful shutdown.
//!
//! This crate is the only one that reads files, the environment and
//! sockets. It turns bytes into calls on `parley_core::Service` and back; the
//! rules of the chat service live in the core, never here.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod convert;
pub mod ctl;
pub mod files;
pub mod filter;
pub mod gen_cert;
pub mod log_limit;
pub mod logging;
pub mod metrics;
pub mod native;
pub mod perf;
pub mod private_files;
pub mod quic;
pub mod server;
pub mod supervisor;
pub mod tls;
pub mod utc;
pub mod worker;

pub use config::{SettingArgs, Settings, StoreKind};
pub use server::{Server, Stats, StatsHandle, open_store, run};
