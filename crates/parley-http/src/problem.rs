//! Errors as RFC 9457 problem details (`application/problem+json`), and the
//! extractors that turn every rejected request into one.
//!
//! Every error carries the native protocol's stable code (`code`), so an HTTP
//! client and a native client see the same codes for the same failures. A
//! few codes exist only over HTTP (`NOT_FOUND`, `METHOD_NOT_ALLOWED`,
//! `UNSUPPORTED_MEDIA_TYPE`); docs/PROTOCOL.md lists them.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use parley_core::{Cause, CoreError, ErrorKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One error answered to one request.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// A URI naming the kind of problem: `urn:parley:error:CODE`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short and stable for a given code.
    pub title: String,
    /// The HTTP status, repeated in the body.
    pub status: u16,
    /// Human-readable; never parse it.
    pub detail: String,
    /// The stable error code, as in the native protocol.
    pub code: &'static str,
    /// With BUSY and RATE_LIMITED: milliseconds to wait before retrying
    /// (also sent as a `Retry-After` header, rounded up to seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u32>,
    /// With REJECTED: which filter refused the message (`spam`,
    /// `blocked_words`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("urn:parley:error:{code}"),
            title: title(code).to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code,
            retry_after_ms: None,
            reason: None,
        }
    }

    pub fn invalid(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", detail)
    }

    pub fn not_authenticated(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "NOT_AUTHENTICATED", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "NOT_FOUND", detail)
    }

    pub fn busy(detail: impl Into<String>, retry_after_ms: u32) -> Problem {
        let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "BUSY", detail);
        p.retry_after_ms = Some(retry_after_ms);
        p
    }

    pub fn rate_limited(detail: impl Into<String>, retry_after_ms: u32) -> Problem {
        let mut p = Problem::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", detail);
        p.retry_after_ms = Some(retry_after_ms);
        p
    }
}

/// The HTTP status each core error kind is answered with.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidRequest | ErrorKind::InvalidName | ErrorKind::InvalidPattern => StatusCode::BAD_REQUEST,
        ErrorKind::UnsupportedMechanism => StatusCode::BAD_REQUEST,
        ErrorKind::NotAuthenticated | ErrorKind::AuthFailed | ErrorKind::Kicked => StatusCode::UNAUTHORIZED,
        ErrorKind::AlreadyAuthenticated | ErrorKind::NameTaken | ErrorKind::LimitReached => StatusCode::CONFLICT,
        // The recipient's state refuses the message, as a taken name does.
        ErrorKind::MailboxFull => StatusCode::CONFLICT,
        // Understood, and refused by the server's policy.
        ErrorKind::RegistrationClosed | ErrorKind::InviteInvalid => StatusCode::FORBIDDEN,
        ErrorKind::NoSuchUser => StatusCode::NOT_FOUND,
        ErrorKind::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Busy | ErrorKind::ShuttingDown | ErrorKind::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::AccountDeleted => StatusCode::GONE,
        ErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        // Understood, and refused for what it says.
        ErrorKind::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

fn title(code: &str) -> &'static str {
    match code {
        "INVALID_REQUEST" => "Invalid request",
        "NOT_AUTHENTICATED" => "Not authenticated",
        "ALREADY_AUTHENTICATED" => "Already authenticated",
        "AUTH_FAILED" => "Authentication failed",
        "INVALID_NAME" => "Invalid account name",
        "NAME_TAKEN" => "Name taken",
        "NO_SUCH_USER" => "No such user",
        "MESSAGE_TOO_LARGE" => "Too large",
        "INVALID_PATTERN" => "Invalid pattern",
        "UNSUPPORTED_MECHANISM" => "Unsupported mechanism",
        "BUSY" => "Server busy",
        "SHUTTING_DOWN" => "Server shutting down",
        "ACCOUNT_DELETED" => "Account deleted",
        "INTERNAL" => "Internal error",
        "TIMEOUT" => "Timeout",
        "RATE_LIMITED" => "Rate limited",
        "LIMIT_REACHED" => "Limit reached",
        "KICKED" => "Session ended by an administrator",
        "MAILBOX_FULL" => "Mailbox full",
        "REGISTRATION_CLOSED" => "Registration closed",
        "INVITE_INVALID" => "Invite code not valid",
        "STORAGE_UNAVAILABLE" => "Storage unavailable",
        "REJECTED" => "Message refused by a filter",
        "NOT_FOUND" => "Not found",
        "METHOD_NOT_ALLOWED" => "Method not allowed",
        "UNSUPPORTED_MEDIA_TYPE" => "Unsupported media type",
        _ => "Error",
    }
}

impl From<CoreError> for Problem {
    fn from(e: CoreError) -> Problem {
        // A well-formed request the current state refuses is a conflict
        // with that state, whatever its code.
        let status = match e.cause {
            Cause::State => StatusCode::CONFLICT,
            Cause::Request => status_of(e.kind),
        };
        let mut p = Problem::new(status, e.kind.as_str(), e.message);
        p.retry_after_ms = e.retry_after_ms;
        p.reason = e.reason;
        if p.retry_after_ms.is_none() && e.kind == ErrorKind::ShuttingDown {
            p.retry_after_ms = Some(1000);
        }
        p
    }
}

/// A problem response's code, kept in the response's extensions so that
/// middleware (the perf log) can tell the outcome without reading the body.
#[derive(Clone, Copy, Debug)]
pub struct ProblemCode(pub &'static str);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = self.retry_after_ms;
        let code = self.code;
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(ms) = retry {
            let secs = ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                headers.insert(header::RETRY_AFTER, v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(ProblemCode(code));
        response
    }
}

/// A JSON request body; any rejection (bad JSON, missing or mistyped
/// fields, wrong content type, too large) is a problem, never a 500.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let value = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(value)) => value,
            Err(rejection) => return Err(json_problem(&rejection)),
        };
        // Every request body is an object; serde would also take an array
        // for a struct, which the document does not allow.
        if !value.is_object() {
            return Err(Problem::invalid("the request body must be a JSON object"));
        }
        match serde_json::from_value(value) {
            Ok(value) => Ok(JsonBody(value)),
            Err(e) => Err(Problem::invalid(format!("invalid request body: {e}"))),
        }
    }
}

fn json_problem(rejection: &JsonRejection) -> Problem {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "MESSAGE_TOO_LARGE",
            "request body too large",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "send the body as application/json",
        ),
        _ => Problem::invalid(rejection.body_text()),
    }
}

/// Query parameters; a rejection is a 400 problem.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(QueryParams(value)),
            Err(rejection) => Err(query_problem(&rejection)),
        }
    }
}

fn query_problem(rejection: &QueryRejection) -> Problem {
    Problem::invalid(rejection.body_text())
}

/// Path parameters; a rejection is a 400 problem.
pub struct PathParam<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParam<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(PathParam(value)),
            Err(rejection) => Err(path_problem(&rejection)),
        }
    }
}

fn path_problem(rejection: &PathRejection) -> Problem {
    Problem::invalid(rejection.body_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_kind_keeps_its_code() {
        for kind in [
            ErrorKind::InvalidRequest,
            ErrorKind::AuthFailed,
            ErrorKind::NoSuchUser,
            ErrorKind::Busy,
            ErrorKind::RateLimited,
        ] {
            let p = Problem::from(CoreError::new(kind, "x"));
            assert_eq!(p.code, kind.as_str());
            assert_eq!(p.kind, format!("urn:parley:error:{}", kind.as_str()));
            assert_ne!(p.title, "Error");
        }
    }
}
