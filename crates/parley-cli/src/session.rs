//! Connecting and logging in, with bounded waits and errors that say what
//! the user can do about them. Both the one-shot commands and the shell
//! start here.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use parley_client::{Client, ClientError, ErrorCode, LoginInfo, Visibility, WrongProtocol};

use crate::exit::{Exit, Failure, server_code};
use crate::settings::Settings;
use crate::trust::{Servers, Target, TrustMode};

/// How long connecting (TCP, the TLS handshake, the server's Welcome) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to each server may take when there are several,
/// so that a server that is gone without a trace (its packets dropped)
/// costs a few seconds before the next one is tried.
pub const FAILOVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
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

/// Opens a connection to the first server that answers, in the order of
/// [`Servers::in_turn`], and remembers it. With one server, its error is the
/// error; with several, a changed certificate stops the search at once (it
/// may be an attack, not an outage), and when none answers, the error names
/// each server's failure and is classified as the first one's.
pub async fn connect(servers: &Servers) -> anyhow::Result<Client> {
    if let [only] = servers.all() {
        return connect_one(only, CONNECT_TIMEOUT).await;
    }
    let mut failures = Vec::new();
    for (index, target) in servers.in_turn() {
        match connect_one(target, FAILOVER_CONNECT_TIMEOUT).await {
            Ok(client) => {
                servers.settle(index);
                return Ok(client);
            }
            Err(e) if crate::exit::classify(&e).exit == Exit::CertificateChanged => return Err(e),
            Err(e) => failures.push(e),
        }
    }
    let first = failures.first().map(crate::exit::classify);
    let each: Vec<String> = failures.iter().map(crate::exit::describe).collect();
    let (exit, code) = first.map_or((Exit::Unavailable, "UNAVAILABLE".to_owned()), |r| (r.exit, r.code));
    Err(Failure::new(exit, code, format!("no server answered: {}", each.join("; "))).into())
}

/// Opens a connection to one server, checking its certificate over TLS.
/// A failure that the user's settings explain says which one to change.
async fn connect_one(server: &Target, limit: Duration) -> anyhow::Result<Client> {
    let addr = &server.given;
    match tokio::time::timeout(limit, crate::trust::connect(server)).await {
        Ok(Err(e)) => {
            let e = e.context(format!("cannot connect to {addr}"));
            let Some(advice) = advice(server, &e) else {
                return Err(e);
            };
            // Classified as the error it explains, the advice last.
            let report = crate::exit::classify(&e);
            Err(Failure::new(report.exit, report.code, format!("{}; {advice}", report.message)).into())
        }
        Ok(Ok(client)) => Ok(client),
        Err(_) => Err(Failure::unavailable(format!(
            "cannot connect to {addr}: timed out after {}s",
            limit.as_secs()
        ))
        .into()),
    }
}

/// What to do about a connection that failed for a reason the settings
/// explain: an untrusted certificate, TLS on one side only, an HTTP port.
fn advice(server: &Target, err: &anyhow::Error) -> Option<String> {
    let authority = &server.address.authority;
    let cause = err.chain().find_map(|cause| cause.downcast_ref::<ClientError>())?;
    let advice = match (cause, &server.trust) {
        (ClientError::NotTrusted(_), TrustMode::SystemRoots) => format!(
            "the system's root certificates do not vouch for {authority}'s certificate (self-signed or from a \
             private CA?): give the certificate or its CA with --ca FILE (for `parleyd gen-cert`'s, its cert.pem), \
             or pin it with --tofu or --fingerprint SHA256:..."
        ),
        (ClientError::NotTrusted(_), TrustMode::CaFile(ca)) => format!(
            "{authority}'s certificate is not signed by {} or does not name {}: check --ca, or pin it with --tofu",
            ca.display(),
            server.address.host
        ),
        (ClientError::WrongProtocol(WrongProtocol::Tls), _) => {
            format!("the server speaks TLS: write it as tls://{authority}")
        }
        (ClientError::WrongProtocol(WrongProtocol::Plaintext), _) => {
            format!("{authority} does not speak TLS: write it as {authority} for plaintext, or check the port")
        }
        (ClientError::WrongProtocol(WrongProtocol::Http), _) => format!(
            "{authority} is an HTTP port (parleyd's web UI and API), not a native one: parley needs the native \
             port (parleyd's default is {})",
            parley_client::tls::DEFAULT_PORT
        ),
        _ => return None,
    };
    Some(advice)
}

/// Logs in on an open connection. A failed login gets one message for both
/// causes, as the server deliberately does not say which it was.
/// `visibility` says whether the session makes the account appear online.
pub async fn login(client: &Client, user: &str, password: &str, visibility: Visibility) -> anyhow::Result<LoginInfo> {
    match timed("logging in", client.login_with(user, password, visibility)).await {
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
pub async fn open(
    server: &Servers,
    credentials: &Credentials,
    visibility: Visibility,
) -> anyhow::Result<(Client, LoginInfo)> {
    let client = connect(server).await?;
    let info = login(&client, &credentials.user, &credentials.password, visibility).await?;
    Ok((client, info))
}

/// Logs out on the way out, best effort and bounded: the session's resume
/// token stops working, so it cannot be used after this process is gone.
pub async fn logout(client: &Client) {
    let _ = tokio::time::timeout(LOGOUT_TIMEOUT, client.logout()).await;
}
