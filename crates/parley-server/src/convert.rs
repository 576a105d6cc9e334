//! Translation between the core's types and the native protocol's messages.
//! The only place that knows both.

use parley_core::presence::Subscription;
use parley_core::store::StoredMessage;
use parley_core::{CoreError, ErrorKind};
use parley_proto::v1::{self, server_frame::Body};
use parley_proto::{ErrorCode, ServerFrame};

pub fn error_code(kind: ErrorKind) -> ErrorCode {
    match kind {
        ErrorKind::InvalidRequest => ErrorCode::InvalidRequest,
        ErrorKind::NotAuthenticated => ErrorCode::NotAuthenticated,
        ErrorKind::AlreadyAuthenticated => ErrorCode::AlreadyAuthenticated,
        ErrorKind::AuthFailed => ErrorCode::AuthFailed,
        ErrorKind::InvalidName => ErrorCode::InvalidName,
        ErrorKind::NameTaken => ErrorCode::NameTaken,
        ErrorKind::NoSuchUser => ErrorCode::NoSuchUser,
        ErrorKind::MessageTooLarge => ErrorCode::MessageTooLarge,
        ErrorKind::InvalidPattern => ErrorCode::InvalidPattern,
        ErrorKind::UnsupportedMechanism => ErrorCode::UnsupportedMechanism,
        ErrorKind::Busy => ErrorCode::Busy,
        ErrorKind::ShuttingDown => ErrorCode::ShuttingDown,
        ErrorKind::AccountDeleted => ErrorCode::AccountDeleted,
        ErrorKind::Internal => ErrorCode::Internal,
        ErrorKind::Timeout => ErrorCode::Timeout,
        ErrorKind::RateLimited => ErrorCode::RateLimited,
        ErrorKind::LimitReached => ErrorCode::LimitReached,
        ErrorKind::Kicked => ErrorCode::Kicked,
        ErrorKind::MailboxFull => ErrorCode::MailboxFull,
        ErrorKind::RegistrationClosed => ErrorCode::RegistrationClosed,
        ErrorKind::InviteInvalid => ErrorCode::InviteInvalid,
        ErrorKind::StorageUnavailable => ErrorCode::StorageUnavailable,
        ErrorKind::Rejected => ErrorCode::Rejected,
    }
}

pub fn frame(request_id: u64, body: Body) -> ServerFrame {
    ServerFrame {
        request_id,
        body: Some(body),
    }
}

pub fn error_frame(request_id: u64, code: ErrorCode, message: impl Into<String>) -> ServerFrame {
    frame(
        request_id,
        Body::Error(v1::Error {
            code: code as i32,
            message: message.into(),
            retry_after_ms: 0,
            reason: String::new(),
        }),
    )
}

pub fn core_error_frame(request_id: u64, error: &CoreError) -> ServerFrame {
    frame(
        request_id,
        Body::Error(v1::Error {
            code: error_code(error.kind) as i32,
            message: error.message.clone(),
            retry_after_ms: error.retry_after_ms.unwrap_or(0),
            reason: error.reason.unwrap_or_default().to_owned(),
        }),
    )
}

pub fn goodbye(code: ErrorCode, message: impl Into<String>) -> ServerFrame {
    frame(
        0,
        Body::Goodbye(v1::Goodbye {
            code: code as i32,
            message: message.into(),
        }),
    )
}

pub fn message(m: &StoredMessage) -> v1::Message {
    v1::Message {
        message_id: m.id.0,
        seq: m.seq.0,
        from: m.sender_name.clone(),
        timestamp_ms: m.timestamp_ms,
        body: m.body.clone(),
        client_msg_id: m.client_msg_id.clone(),
        acked: m.acked,
    }
}

/// Bytes a message adds to a frame that carries a repeated `Message` field:
/// the message, its field tag and its length prefix.
pub fn message_frame_cost(m: &impl prost::Message) -> usize {
    let len = m.encoded_len();
    len + 1 + prost::length_delimiter_len(len)
}

/// Room kept in every frame for the envelope around repeated messages.
pub const FRAME_ENVELOPE_BYTES: usize = 64;

/// A subscription state as the protocol names it.
pub fn subscription(state: Subscription) -> v1::Subscription {
    match state {
        Subscription::None => v1::Subscription::None,
        Subscription::Pending => v1::Subscription::Pending,
        Subscription::Approved => v1::Subscription::Approved,
    }
}

/// The reply to a stored send (a message or a file offer).
pub fn sent(accepted: &parley_core::service::Accepted) -> Body {
    let m = &accepted.message;
    Body::Sent(v1::Sent {
        client_msg_id: m.client_msg_id.clone(),
        message_id: m.id.0,
        seq: m.seq.0,
        timestamp_ms: m.timestamp_ms,
        duplicate: accepted.duplicate,
        held: accepted.held,
    })
}

/// A held message as the protocol carries it.
pub fn held(h: &parley_core::store::HeldMessage) -> v1::HeldMessage {
    v1::HeldMessage {
        id: h.id,
        from: h.sender_name.clone(),
        timestamp_ms: h.timestamp_ms,
        body: h.body.clone(),
        client_msg_id: h.client_msg_id.clone(),
        filter: h.filter.clone(),
        score: h.score,
    }
}
