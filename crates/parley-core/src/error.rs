//! The core's error type. Every error that reaches a client carries a stable
//! kind (mapped to a wire code by each front door) and a human message.

use crate::store::StoreError;

/// Stable error kinds. Front doors map each to their own wire code; the names
/// match the native protocol's `ErrorCode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    NotAuthenticated,
    AlreadyAuthenticated,
    AuthFailed,
    InvalidName,
    NameTaken,
    NoSuchUser,
    MessageTooLarge,
    InvalidPattern,
    UnsupportedMechanism,
    Busy,
    ShuttingDown,
    AccountDeleted,
    Internal,
    Timeout,
    RateLimited,
    LimitReached,
    Kicked,
    MailboxFull,
    RegistrationClosed,
    InviteInvalid,
    StorageUnavailable,
    Rejected,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 23] = [
        ErrorKind::InvalidRequest,
        ErrorKind::NotAuthenticated,
        ErrorKind::AlreadyAuthenticated,
        ErrorKind::AuthFailed,
        ErrorKind::InvalidName,
        ErrorKind::NameTaken,
        ErrorKind::NoSuchUser,
        ErrorKind::MessageTooLarge,
        ErrorKind::InvalidPattern,
        ErrorKind::UnsupportedMechanism,
        ErrorKind::Busy,
        ErrorKind::ShuttingDown,
        ErrorKind::AccountDeleted,
        ErrorKind::Internal,
        ErrorKind::Timeout,
        ErrorKind::RateLimited,
        ErrorKind::LimitReached,
        ErrorKind::Kicked,
        ErrorKind::MailboxFull,
        ErrorKind::RegistrationClosed,
        ErrorKind::InviteInvalid,
        ErrorKind::StorageUnavailable,
        ErrorKind::Rejected,
    ];

    /// The kind with this stable name ([`ErrorKind::as_str`]).
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The stable name, as written in docs/PROTOCOL.md.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "INVALID_REQUEST",
            ErrorKind::NotAuthenticated => "NOT_AUTHENTICATED",
            ErrorKind::AlreadyAuthenticated => "ALREADY_AUTHENTICATED",
            ErrorKind::AuthFailed => "AUTH_FAILED",
            ErrorKind::InvalidName => "INVALID_NAME",
            ErrorKind::NameTaken => "NAME_TAKEN",
            ErrorKind::NoSuchUser => "NO_SUCH_USER",
            ErrorKind::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorKind::InvalidPattern => "INVALID_PATTERN",
            ErrorKind::UnsupportedMechanism => "UNSUPPORTED_MECHANISM",
            ErrorKind::Busy => "BUSY",
            ErrorKind::ShuttingDown => "SHUTTING_DOWN",
            ErrorKind::AccountDeleted => "ACCOUNT_DELETED",
            ErrorKind::Internal => "INTERNAL",
            ErrorKind::Timeout => "TIMEOUT",
            ErrorKind::RateLimited => "RATE_LIMITED",
            ErrorKind::LimitReached => "LIMIT_REACHED",
            ErrorKind::Kicked => "KICKED",
            ErrorKind::MailboxFull => "MAILBOX_FULL",
            ErrorKind::RegistrationClosed => "REGISTRATION_CLOSED",
            ErrorKind::InviteInvalid => "INVITE_INVALID",
            ErrorKind::StorageUnavailable => "STORAGE_UNAVAILABLE",
            ErrorKind::Rejected => "REJECTED",
        }
    }
}

/// Whose fault a refusal is, where the kind alone does not say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Cause {
    /// The request itself is wrong (out of range, malformed): sent again
    /// as it is, it is refused again.
    #[default]
    Request,
    /// The request is well formed, and the state it meets refuses it (a
    /// login step with no login in progress, approving a request nobody
    /// made): the same request can succeed in another state. HTTP answers
    /// these 409 Conflict; the native protocol keeps the kind's code.
    State,
}

/// An error answered to one request.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct CoreError {
    pub kind: ErrorKind,
    pub message: String,
    /// With [`ErrorKind::Busy`]: how long the client should wait.
    pub retry_after_ms: Option<u32>,
    /// Whether the request or the state it met is at fault.
    pub cause: Cause,
    /// With [`ErrorKind::Rejected`]: the stable reason code (which filter
    /// refused the message, [`crate::filter`]).
    pub reason: Option<&'static str>,
}

impl CoreError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CoreError {
            kind,
            message: message.into(),
            retry_after_ms: None,
            cause: Cause::Request,
            reason: None,
        }
    }

    /// `REJECTED`: a filter refused the message; nothing was stored.
    pub fn rejected(reason: &'static str, message: impl Into<String>) -> Self {
        CoreError {
            reason: Some(reason),
            ..CoreError::new(ErrorKind::Rejected, message)
        }
    }

    /// The same error with a retry hint.
    pub fn with_retry_after(mut self, retry_after_ms: u32) -> Self {
        self.retry_after_ms = Some(retry_after_ms);
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        CoreError::new(ErrorKind::InvalidRequest, message)
    }

    /// `INVALID_REQUEST` for a well-formed request that the current state
    /// refuses ([`Cause::State`]).
    pub fn refused_by_state(message: impl Into<String>) -> Self {
        CoreError {
            cause: Cause::State,
            ..CoreError::invalid(message)
        }
    }

    /// The one answer to every failed login, whatever the cause, so that a
    /// client cannot tell an unknown user from a wrong password.
    pub fn auth_failed() -> Self {
        CoreError::new(ErrorKind::AuthFailed, "authentication failed")
    }
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken => CoreError::new(ErrorKind::NameTaken, "that name is taken"),
            StoreError::NoSuchUser => CoreError::new(ErrorKind::NoSuchUser, "no such user"),
            StoreError::Busy { retry_after_ms } => {
                CoreError::new(ErrorKind::Busy, "server busy, retry later").with_retry_after(retry_after_ms)
            }
            StoreError::LimitReached(what) => CoreError::new(ErrorKind::LimitReached, what),
            StoreError::InviteInvalid => CoreError::new(
                ErrorKind::InviteInvalid,
                "that invite code is not valid: unknown, already used or expired",
            ),
            StoreError::MailboxFull => CoreError::new(
                ErrorKind::MailboxFull,
                "the recipient's mailbox is full; the message was not stored",
            ),
            StoreError::Closed => CoreError::new(ErrorKind::ShuttingDown, "server is shutting down"),
            StoreError::Unavailable(why) => CoreError::new(
                ErrorKind::StorageUnavailable,
                format!("the server cannot store anything now ({why}); nothing was done, try again later"),
            )
            .with_retry_after(crate::store::STORAGE_RETRY_AFTER_MS),
            StoreError::Backend(detail) => {
                tracing::error!(%detail, "store failure");
                CoreError::new(ErrorKind::Internal, "internal storage error")
            }
        }
    }
}
