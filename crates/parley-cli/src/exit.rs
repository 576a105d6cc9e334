//! Exit codes and how errors map to them.
//!
//! Scripts branch on the exit code, so the codes are stable and each one
//! names a kind of outcome rather than a particular server error:
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | any other error (protocol error, internal server error, local I/O) |
//! | 2 | usage error or missing input (bad flags, no user/password, refused without `--yes`) |
//! | 3 | authentication failed (wrong password or no such account; account deleted, also while connected) |
//! | 4 | not found (`NO_SUCH_USER`, `NOT_A_CONTACT`, or message ids not in the mailbox or the spam folder) |
//! | 5 | name taken (`NAME_TAKEN`) |
//! | 6 | input refused by the server (`INVALID_NAME`, `INVALID_REQUEST`, `MESSAGE_TOO_LARGE`, `INVALID_PATTERN`, `LIMIT_REACHED`, `REJECTED` by the server's filter) |
//! | 7 | server unavailable (connect failed, an HTTP port given for the native one, disconnected with `--no-reconnect`, `BUSY`, `SHUTTING_DOWN`, `TIMEOUT`, `RATE_LIMITED`) |
//! | 8 | the server's certificate is not the pinned one (`--tofu`'s known_servers, or `--fingerprint`) |
//! | 9 | TLS failed: the certificate is not trusted (system roots, `--ca`), the server does not speak TLS, or it speaks TLS and the address said plaintext |

use std::fmt;

use parley_client::{ClientError, ErrorCode, WrongProtocol};

/// The text `--help` shows after the options; keep it in step with the table above.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  any other error
  2  usage error or missing input (no user or password, delete-account without --yes)
  3  authentication failed (wrong password, or no such account; account deleted)
  4  not found (no such user; not a contact; message ids not in the mailbox
     or the spam folder)
  5  name taken
  6  input refused by the server (invalid name, request, pattern; message too large;
     a limit such as the number of contacts reached; a message the server's
     filter rejected as spam or for a blocked phrase)
  7  server unavailable (cannot connect, busy, shutting down, rate limited;
     an HTTP port given for the native one; disconnected, with --no-reconnect)
  8  the server's certificate changed: it is not the one pinned in known_servers
     (--tofu) or given with --fingerprint; nothing was sent
  9  TLS failed: the server's certificate is not trusted (system roots, --ca),
     the server does not speak TLS, or it does and the address lacks tls://";

/// What the process tells its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Other = 1,
    Usage = 2,
    Auth = 3,
    NotFound = 4,
    NameTaken = 5,
    Refused = 6,
    Unavailable = 7,
    CertificateChanged = 8,
    Tls = 9,
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit as u8)
    }
}

/// The exit code for an error the server answered with.
pub fn exit_for_server_code(code: ErrorCode) -> Exit {
    match code {
        ErrorCode::AuthFailed | ErrorCode::NotAuthenticated | ErrorCode::AccountDeleted => Exit::Auth,
        ErrorCode::NoSuchUser => Exit::NotFound,
        ErrorCode::NameTaken => Exit::NameTaken,
        ErrorCode::InvalidName
        | ErrorCode::InvalidRequest
        | ErrorCode::MessageTooLarge
        | ErrorCode::InvalidPattern
        | ErrorCode::UnsupportedMechanism
        | ErrorCode::LimitReached
        | ErrorCode::MailboxFull
        | ErrorCode::Rejected
        | ErrorCode::RegistrationClosed
        | ErrorCode::InviteInvalid => Exit::Refused,
        ErrorCode::Busy
        | ErrorCode::ShuttingDown
        | ErrorCode::Timeout
        | ErrorCode::RateLimited
        | ErrorCode::StorageUnavailable => Exit::Unavailable,
        _ => Exit::Other,
    }
}

/// An error this program raises itself, already classified. It travels
/// inside `anyhow::Error` so commands can use `?` everywhere and the exit
/// code is decided once, in `main`.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    /// Stable, machine-readable name for `--json` output (`USAGE`, `AUTH_FAILED`, ...).
    pub code: String,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, code: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(Exit::Usage, "USAGE", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Failure {
        Failure::new(Exit::Unavailable, "UNAVAILABLE", message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// An error, classified for the caller.
#[derive(Debug, PartialEq, Eq)]
pub struct Report {
    pub exit: Exit,
    /// Machine-readable name: the server's error code name, or one of ours.
    pub code: String,
    /// Human-readable, with the context of what was being done.
    pub message: String,
    /// When the server said to try again (`BUSY`, `RATE_LIMITED`).
    pub retry_after_ms: Option<u32>,
}

/// The server's hint for when to try again, if it gave one.
pub fn retry_after_ms(err: &anyhow::Error) -> Option<u32> {
    err.chain().find_map(|cause| match cause.downcast_ref::<ClientError>() {
        Some(ClientError::Server { retry_after_ms, .. }) if *retry_after_ms > 0 => Some(*retry_after_ms),
        _ => None,
    })
}

/// The server's error code, if the server's answer is somewhere in the chain.
pub fn server_code(err: &anyhow::Error) -> Option<ErrorCode> {
    err.chain()
        .find_map(|e| e.downcast_ref::<ClientError>())
        .and_then(ClientError::code)
}

/// The error and its causes on one line. Some errors already print their
/// source (the client's I/O error does), so a cause whose text is already
/// there is not repeated.
pub fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Decides the exit code and the machine-readable name of an error.
pub fn classify(err: &anyhow::Error) -> Report {
    let (exit, code) = exit_and_code(err);
    Report {
        exit,
        code,
        message: describe(err),
        retry_after_ms: retry_after_ms(err),
    }
}

fn exit_and_code(err: &anyhow::Error) -> (Exit, String) {
    if let Some(failure) = err.chain().find_map(|e| e.downcast_ref::<Failure>()) {
        return (failure.exit, failure.code.clone());
    }
    let (exit, code) = match err.chain().find_map(|e| e.downcast_ref::<ClientError>()) {
        Some(ClientError::Server { code, .. }) => (exit_for_server_code(*code), code.as_str_name()),
        Some(ClientError::Io(_) | ClientError::Disconnected(_)) => (Exit::Unavailable, "UNAVAILABLE"),
        Some(ClientError::CertificateChanged { .. }) => (Exit::CertificateChanged, "CERTIFICATE_CHANGED"),
        Some(ClientError::Tls(_)) => (Exit::Tls, "TLS_FAILED"),
        Some(ClientError::NotTrusted(_)) => (Exit::Tls, "CERTIFICATE_NOT_TRUSTED"),
        Some(ClientError::WrongProtocol(WrongProtocol::Http)) => (Exit::Unavailable, "NOT_A_NATIVE_PORT"),
        Some(ClientError::WrongProtocol(_)) => (Exit::Tls, "TLS_MISMATCH"),
        Some(ClientError::Protocol(_)) => (Exit::Other, "PROTOCOL_ERROR"),
        None => (Exit::Other, "ERROR"),
    };
    (exit, code.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: ErrorCode) -> anyhow::Error {
        anyhow::Error::new(ClientError::Server {
            code,
            message: "m".into(),
            retry_after_ms: 0,
        })
    }

    #[test]
    fn server_codes_map_to_documented_exit_codes() {
        let cases = [
            (ErrorCode::AuthFailed, Exit::Auth, "AUTH_FAILED"),
            (ErrorCode::NoSuchUser, Exit::NotFound, "NO_SUCH_USER"),
            (ErrorCode::NameTaken, Exit::NameTaken, "NAME_TAKEN"),
            (ErrorCode::InvalidName, Exit::Refused, "INVALID_NAME"),
            (ErrorCode::InvalidRequest, Exit::Refused, "INVALID_REQUEST"),
            (ErrorCode::MessageTooLarge, Exit::Refused, "MESSAGE_TOO_LARGE"),
            (ErrorCode::InvalidPattern, Exit::Refused, "INVALID_PATTERN"),
            (ErrorCode::Busy, Exit::Unavailable, "BUSY"),
            (ErrorCode::ShuttingDown, Exit::Unavailable, "SHUTTING_DOWN"),
            (ErrorCode::LimitReached, Exit::Refused, "LIMIT_REACHED"),
            (ErrorCode::Rejected, Exit::Refused, "REJECTED"),
            (ErrorCode::RateLimited, Exit::Unavailable, "RATE_LIMITED"),
            (ErrorCode::AccountDeleted, Exit::Auth, "ACCOUNT_DELETED"),
            (ErrorCode::Internal, Exit::Other, "INTERNAL"),
        ];
        for (code, exit, name) in cases {
            let report = classify(&server(code).context("doing something"));
            assert_eq!((report.exit, report.code.as_str()), (exit, name), "{code:?}");
            assert!(report.message.starts_with("doing something: "), "{}", report.message);
        }
    }

    #[test]
    fn local_errors_are_classified() {
        let gone = anyhow::Error::new(ClientError::Disconnected(None));
        assert_eq!(classify(&gone).exit, Exit::Unavailable);
        let refused = anyhow::Error::new(ClientError::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(classify(&refused).exit, Exit::Unavailable);
        let refused = refused.context("cannot connect to h:1");
        assert_eq!(
            describe(&refused),
            format!(
                "cannot connect to h:1: connection failed: {}",
                std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
            )
        );
        let usage = anyhow::Error::new(Failure::usage("no user")).context("resolving identity");
        let report = classify(&usage);
        assert_eq!((report.exit, report.code.as_str()), (Exit::Usage, "USAGE"));
        assert_eq!(classify(&anyhow::anyhow!("disk full")).exit, Exit::Other);
        assert_eq!(
            server_code(&server(ErrorCode::NameTaken).context("x")),
            Some(ErrorCode::NameTaken)
        );
    }
}
