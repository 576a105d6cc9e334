//! Connecting and logging in, with bounded waits and errors that say what
//! the user can do about them. Both the one-shot commands and the shell
//! start here.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use parley_client::{Client, ErrorCode, LoginInfo};

use crate::exit::{Exit, Failure, server_code};
use crate::settings::Settings;
use crate::trust::Target;

/// How long connecting (TCP, the TLS handshake, the server's Welcome) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may wait for its answer before we call the server
/// unavailable. Login is one of these; SCRAM's key derivation is client-side.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the goodbye (logout) may take on the way out.
pub const LOGOUT_TIMEOUT: Duration = Duration::from_secs(2);

/// Awaits one request with [`REQUEST_TIMEOUT`]; `what` names it in errors.
pub async fn timed<T>(what: &str, request: impl Future<Output = parley_client::Result<T>>) -> anyhow::Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => result.with_context(|| what.to_owned()),
        Err(_) => Err(Failure::unavailable(format!(
            "{what}: no answer from the server within {}s",
            REQUEST_TIMEOUT.as_secs()
        ))
        .into()),
    }
}

/// Opens a connection to the server, checking its certificate over TLS.
pub async fn connect(server: &Target) -> anyhow::Result<Client> {
    let addr = &server.given;
    match tokio::time::timeout(CONNECT_TIMEOUT, crate::trust::connect(server)).await {
        Ok(result) => result.with_context(|| format!("cannot connect to {addr}")),
        Err(_) => Err(Failure::unavailable(format!(
            "cannot connect to {addr}: timed out after {}s",
            CONNECT_TIMEOUT.as_secs()
        ))
        .into()),
    }
}

/// Logs in on an open connection. A failed login gets one message for both
/// causes, as the server deliberately does not say which it was.
pub async fn login(client: &Client, user: &str, password: &str) -> anyhow::Result<LoginInfo> {
    match timed("logging in", client.login(user, password)).await {
        Err(e) if server_code(&e) == Some(ErrorCode::AuthFailed) => Err(Failure::new(
            Exit::Auth,
            "AUTH_FAILED",
            format!("login failed for {user} (wrong password, or no such account — `parley register` creates one)"),
        )
        .into()),
        other => other,
    }
}

/// A user name and password, resolved before any connection is made so that
/// prompts never race the network.
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl Credentials {
    /// Asks for whatever the settings do not have.
    pub fn obtain(settings: &mut Settings) -> anyhow::Result<Credentials> {
        let user = settings.user()?;
        let password = settings.password(&user)?;
        Ok(Credentials { user, password })
    }
}

/// Connects and logs in.
pub async fn open(server: &Target, credentials: &Credentials) -> anyhow::Result<(Client, LoginInfo)> {
    let client = connect(server).await?;
    let info = login(&client, &credentials.user, &credentials.password).await?;
    Ok((client, info))
}

/// Logs out on the way out, best effort and bounded: the session's resume
/// token stops working, so it cannot be used after this process is gone.
pub async fn logout(client: &Client) {
    let _ = tokio::time::timeout(LOGOUT_TIMEOUT, client.logout()).await;
}
