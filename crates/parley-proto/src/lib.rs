//! The Parley native wire protocol: the message types generated from
//! `proto/parley.proto` and the length-prefixed framing around them.
//!
//! This crate owns the bytes on the wire and nothing else. It is pure and
//! synchronous: no sockets, no async, no knowledge of accounts or storage.
//! Every decoder takes a hard maximum frame size so that no peer can make us
//! buffer without bound.
#![forbid(unsafe_code)]

pub mod frame;

/// Generated protobuf types of `parley.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/parley.v1.rs"));
}

pub use frame::{
    FrameError, LENGTH_PREFIX_BYTES, PeekedSend, decode_frame, encode_frame, peek_send, split_frame, whole_frame_len,
};
pub use v1::{ClientFrame, ErrorCode, ServerFrame};

/// Version of the protocol described by `docs/PROTOCOL.md`, sent in `Welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default hard limit on one frame's payload (the bytes after the length prefix).
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 256 * 1024;
