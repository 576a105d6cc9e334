//! Parley's core: the rules of the chat service, independent of any wire
//! format or transport.
//!
//! It owns account names and their rules, the SCRAM exchange, the delivery
//! contract (sequence numbers, idempotent sends, acks, gap-free ordered push)
//! and the routing of messages to online sessions ([`hub::Hub`]). Storage is
//! reached only through the [`store::Store`] trait.
//!
//! The core never opens a socket or a file, never reads the environment and
//! knows nothing of protobuf, JSON or HTTP: every front door (native protocol,
//! and later WebSocket, HTTP, XMPP) translates its own wire format into calls
//! on [`service::Service`] and [`service::Session`].
#![forbid(unsafe_code)]

pub mod addr;
pub mod bus;
pub mod delivery;
pub mod error;
pub mod files;
pub mod filter;
pub mod histogram;
pub mod hub;
pub mod ids;
pub mod limits;
pub mod name;
pub mod presence;
pub mod rate;
pub mod scram;
pub mod service;
pub mod store;
pub mod sync;
pub mod throttle;

pub use error::{Cause, CoreError, ErrorKind};
pub use ids::{MessageId, Seq, SessionId, UserId};
pub use limits::Limits;
pub use name::{NamePattern, UserName};
pub use scram::Mechanism;
pub use service::{AuthPending, LoginOutcome, PushEvent, Service, Session};
pub use store::{Store, StoreError, StoreReply};
