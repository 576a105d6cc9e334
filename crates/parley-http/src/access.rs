//! Access events: logins and HTTP requests, on the tracing target
//! [`ACCESS_TARGET`], which the server routes to its access log. The
//! native front door uses the same helpers for its logins, so that a
//! login reads the same whichever door it came through.
//!
//! An access event never carries a password, a SCRAM proof or nonce, a
//! bearer or resume token, or a message body: only names, addresses,
//! mechanisms, routes, results and sizes. Names and paths come from
//! clients, so they are logged with `Debug` formatting (quoted, control
//! characters escaped) and cannot forge a line.

use std::net::SocketAddr;

use parley_core::{CoreError, ErrorKind};

/// The tracing target of access events.
pub const ACCESS_TARGET: &str = "parley::access";

/// The `result` field of a login that did not succeed.
pub fn login_result(error: &CoreError) -> &'static str {
    match error.kind {
        ErrorKind::AuthFailed => "failed",
        ErrorKind::RateLimited => "rate_limited",
        ErrorKind::Busy => "busy",
        _ => "error",
    }
}

/// A successful login (`mechanism` is the SCRAM mechanism, or `resume`).
pub fn login_ok(transport: &str, peer: SocketAddr, mechanism: &str, user: &str) {
    tracing::info!(target: ACCESS_TARGET, transport, %peer, mechanism, user = ?user, result = "ok", "login");
}

/// A login that did not succeed; `user` is the name tried, when known.
pub fn login_refused(transport: &str, peer: SocketAddr, mechanism: &str, user: Option<&str>, error: &CoreError) {
    tracing::info!(
        target: ACCESS_TARGET,
        transport,
        %peer,
        mechanism,
        user = ?user.unwrap_or_default(),
        result = login_result(error),
        code = error.kind.as_str(),
        "login"
    );
}

/// The name a client-first-message names, for a login refused before a
/// challenge was made (no secret is in it: only the name and a nonce,
/// which is not logged).
pub fn name_tried(client_first: &[u8]) -> Option<String> {
    parley_core::scram::ClientFirst::parse(client_first)
        .ok()
        .map(|first| parley_core::name::name_key(&first.username))
}
