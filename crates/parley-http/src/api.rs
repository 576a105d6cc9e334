//! The `/v1` JSON handlers. Each one translates its JSON into one call on
//! the core's `Service` or `Session` and the result back; the rules live in
//! the core.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, State};
use axum::http::{StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use parley_core::scram::StoredCredentials;
use parley_core::service::{ContactView, RegistrationMode};
use parley_core::store::{AckRange, StoreError, StoredMessage};
use parley_core::{CoreError, ErrorKind, LoginOutcome, MessageId, Seq, Session};
use serde::{Deserialize, Serialize};

use crate::HttpContext;
use crate::access;
use crate::client_addr::ClientAddr;
use crate::pager;
use crate::problem::{JsonBody, PathParam, Problem, QueryParams};
use crate::sessions::{self, HttpSession};

type Ctx = State<Arc<HttpContext>>;
type ApiResult<T> = Result<T, Problem>;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn decode_b64(field: &str, value: &str) -> ApiResult<Vec<u8>> {
    B64.decode(value.as_bytes())
        .map_err(|_| Problem::invalid(format!("{field} is not valid base64")))
}

/// The caller's session, from `Authorization: Bearer TOKEN`.
pub struct Authed {
    /// The token as sent (to end the session at logout).
    pub token: String,
    /// The session it names.
    pub entry: Arc<HttpSession>,
}

/// Starts a request on the caller's session with its lock held, and
/// releases the lock before anything is awaited: the core's methods only
/// submit work and return `'static` futures.
macro_rules! start {
    ($auth:expr, |$s:ident| $body:expr) => {{
        let mut guard = $auth.entry.lock();
        match guard.as_mut() {
            Some($s) => {
                let started = $body;
                drop(guard);
                Ok(started)
            }
            None => Err(session_gone()),
        }
    }};
}

fn session_gone() -> Problem {
    Problem::not_authenticated("this session has ended; log in again")
}

impl FromRequestParts<Arc<HttpContext>> for Authed {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<HttpContext>) -> Result<Self, Problem> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(Problem::not_authenticated(
                "send Authorization: Bearer TOKEN (from login)",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned();
        let mut found = ctx.sessions.get(&token);
        if found.is_none() {
            reopen(ctx, parts, &token).await?;
            found = ctx.sessions.get(&token);
        }
        match found {
            Some(Ok(entry)) => {
                if let Some(until) = entry.refresh_due(ctx.sessions.idle()) {
                    let user = entry.lock().as_ref().map(Session::user);
                    if let Some(user) = user {
                        // Submitted when called; a failure only means the
                        // key expires sooner in the store.
                        drop(ctx.service.remember_session_key(user, entry.key(), until));
                    }
                }
                Ok(Authed { token, entry })
            }
            // Ended by the server: the account was deleted, the user was
            // kicked or logged out everywhere, or a newer session replaced
            // this one. Its token is gone; say why.
            Some(Err(reason)) => Err(Problem::not_authenticated(format!(
                "this session has ended: {}; log in again",
                reason.message
            ))),
            None => Err(unknown_token()),
        }
    }
}

fn unknown_token() -> Problem {
    Problem::not_authenticated("unknown or expired token; log in again")
}

/// A token this worker does not hold: the session may have been opened by
/// a worker that has since restarted or been replaced (or by another one),
/// and the store remembers its key. Opened again here and put in the table,
/// it answers as if nothing had happened.
async fn reopen(ctx: &Arc<HttpContext>, parts: &mut Parts, token: &str) -> Result<(), Problem> {
    if !sessions::well_formed(token) {
        return Err(unknown_token());
    }
    let ClientAddr(peer) = ClientAddr::from_request_parts(parts, ctx).await?;
    let (session, outcome) = match ctx.service.reopen(sessions::bearer_key(token), Some(peer.ip())).await {
        Ok(opened) => opened,
        Err(e) if e.kind == ErrorKind::AuthFailed => return Err(unknown_token()),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(user = %outcome.name, session = %outcome.session, "HTTP session reopened");
    keep(ctx, token, session, peer.ip(), outcome.user).await
}

/// Puts a session in the table under `token` and has the store remember
/// its key; BUSY when the table is full.
async fn keep(
    ctx: &HttpContext,
    token: &str,
    session: Session,
    ip: std::net::IpAddr,
    user: parley_core::UserId,
) -> Result<(), Problem> {
    if !ctx.sessions.insert_as(token, session, ip) {
        return Err(Problem::busy("too many HTTP sessions", 1000));
    }
    if let Some(Ok(entry)) = ctx.sessions.get(token) {
        remember(ctx, &entry, user).await;
    }
    Ok(())
}

/// Has the store remember a session's key for its idle time, so that
/// another worker (or this one, restarted) can reopen it. A store that
/// fails leaves the session working on this worker only.
async fn remember(ctx: &HttpContext, entry: &HttpSession, user: parley_core::UserId) {
    let idle_ms = u64::try_from(ctx.sessions.idle().as_millis()).unwrap_or(u64::MAX);
    let until = sessions::now_ms().saturating_add(idle_ms);
    match ctx.service.remember_session_key(user, entry.key(), until).await {
        Ok(()) => entry.remembered(until),
        Err(e) => tracing::warn!(error = %e, "an HTTP session is not kept in the store; it ends with this worker"),
    }
}

// ------------------------------------------------------------ health

#[derive(Serialize)]
pub struct Status {
    status: &'static str,
}

pub async fn healthz() -> axum::Json<Status> {
    axum::Json(Status { status: "ok" })
}

/// Longest a readiness probe waits for the store.
pub const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn readyz(State(ctx): Ctx) -> ApiResult<axum::Json<Status>> {
    // A lookup of a name no account can have goes through the store's
    // queue (and, for SQLite, its thread) without changing anything.
    let store = ctx.service.store();
    let probe = store.find_account("");
    match tokio::time::timeout(READINESS_TIMEOUT, probe).await {
        Ok(Ok(_)) => match store.write_failure() {
            None => Ok(axum::Json(Status { status: "ready" })),
            // Reads answer, but nothing can be stored: not ready.
            Some(why) => Err(Problem::from(CoreError::from(StoreError::Unavailable(why)))),
        },
        Ok(Err(StoreError::Busy { retry_after_ms })) => Err(Problem::busy("store busy", retry_after_ms)),
        Ok(Err(e)) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SHUTTING_DOWN",
            format!("store unavailable: {e}"),
        )),
        Err(_) => Err(Problem::busy("store did not answer in time", 1000)),
    }
}

// ------------------------------------------------------------ server info

#[derive(Serialize)]
pub struct ServerInfo {
    server: String,
    protocol_version: u32,
    mechanisms: Vec<&'static str>,
    scram_iterations: u32,
    max_body_bytes: u32,
    pager: bool,
    session_idle_secs: u64,
    /// Who may create an account: "open", "invite" (with a code) or "closed".
    registration: &'static str,
    /// The limits a client paces itself by, as the native Welcome gives
    /// them (0: no limit where docs/LIMITS.md allows it).
    max_contacts: u32,
    login_failures_per_account: u32,
    login_failures_per_ip: u32,
    send_rate_per_account: u32,
    registrations_per_ip_per_hour: u32,
}

pub async fn server_info(State(ctx): Ctx) -> axum::Json<ServerInfo> {
    let config = ctx.service.config();
    axum::Json(ServerInfo {
        server: format!("parleyd {}", env!("CARGO_PKG_VERSION")),
        protocol_version: parley_proto::PROTOCOL_VERSION,
        mechanisms: config.auth.mechanisms.iter().map(|m| m.name()).collect(),
        scram_iterations: config.auth.iterations,
        max_body_bytes: config.limits.max_body_bytes,
        pager: ctx.settings.pager_enabled,
        session_idle_secs: ctx.sessions.idle().as_secs(),
        registration: match config.registration {
            RegistrationMode::Open => "open",
            RegistrationMode::Invite => "invite",
            RegistrationMode::Closed => "closed",
        },
        max_contacts: config.limits.max_contacts,
        login_failures_per_account: config.throttle.failures_per_account,
        login_failures_per_ip: config.throttle.failures_per_ip,
        send_rate_per_account: config.limits.send_rate_per_account,
        registrations_per_ip_per_hour: config.limits.registrations_per_ip_per_hour,
    })
}

// ------------------------------------------------------------ accounts

#[derive(Deserialize)]
pub struct RegisterRequest {
    /// The invite code, when the server registers by invitation.
    #[serde(default)]
    invite: Option<String>,
    name: String,
    #[serde(flatten)]
    credentials: CredentialFields,
}

/// SCRAM credentials derived by the client, as JSON (registration and
/// password change): binary fields in standard base64.
#[derive(Deserialize)]
pub struct CredentialFields {
    mechanism: String,
    salt: String,
    iterations: u32,
    stored_key: String,
    server_key: String,
}

impl CredentialFields {
    fn decode(&self) -> ApiResult<StoredCredentials> {
        Ok(StoredCredentials::from_parts(
            &self.mechanism,
            decode_b64("salt", &self.salt)?,
            self.iterations,
            decode_b64("stored_key", &self.stored_key)?,
            decode_b64("server_key", &self.server_key)?,
        )?)
    }
}

#[derive(Serialize)]
pub struct Registered {
    name: String,
    user_id: u64,
}

pub async fn register(
    State(ctx): Ctx,
    ClientAddr(peer): ClientAddr,
    JsonBody(r): JsonBody<RegisterRequest>,
) -> ApiResult<Response> {
    let credentials = r.credentials.decode()?;
    let (user, name) = ctx
        .service
        .register(&r.name, credentials, Some(peer.ip()), r.invite.as_deref())?
        .await?;
    ctx.service.note_registration();
    Ok((StatusCode::CREATED, axum::Json(Registered { name, user_id: user.0 })).into_response())
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pattern: String,
    #[serde(default)]
    after: String,
    #[serde(default)]
    limit: u32,
}

#[derive(Serialize)]
pub struct AccountEntry {
    name: String,
    online: bool,
}

#[derive(Serialize)]
pub struct AccountPage {
    accounts: Vec<AccountEntry>,
    next_after: Option<String>,
}

pub async fn list_accounts(auth: Authed, QueryParams(q): QueryParams<ListQuery>) -> ApiResult<axum::Json<AccountPage>> {
    let page = start!(auth, |s| s.list_accounts(&q.pattern, &q.after, q.limit))??.await?;
    Ok(axum::Json(AccountPage {
        accounts: entries(page.accounts),
        next_after: page.next_after,
    }))
}

fn entries(list: Vec<(String, bool)>) -> Vec<AccountEntry> {
    list.into_iter()
        .map(|(name, online)| AccountEntry { name, online })
        .collect()
}

#[derive(Deserialize)]
pub struct ReauthStart {
    client_first: String,
}

#[derive(Serialize)]
pub struct ReauthChallenge {
    reauth_id: String,
    mechanism: &'static str,
    server_first: String,
    expires_secs: u64,
}

/// `POST /v1/account/reauth`: the first SCRAM step of proving the password
/// again, for deleting the account or changing the password.
pub async fn reauth(
    State(ctx): Ctx,
    ClientAddr(peer): ClientAddr,
    auth: Authed,
    JsonBody(r): JsonBody<ReauthStart>,
) -> ApiResult<axum::Json<ReauthChallenge>> {
    let pending = start!(auth, |s| s.reauth_start(r.client_first.as_bytes(), Some(peer.ip())))?.await?;
    let mechanism = pending.mechanism().name();
    let server_first = pending.server_first().to_owned();
    let reauth_id = ctx
        .logins
        .insert(pending)
        .ok_or_else(|| Problem::busy("too many logins in progress", 1000))?;
    Ok(axum::Json(ReauthChallenge {
        reauth_id,
        mechanism,
        server_first,
        expires_secs: ctx.settings.login_timeout.as_secs(),
    }))
}

#[derive(Deserialize)]
pub struct Confirmation {
    reauth_id: String,
    client_final: String,
}

fn take_reauth(ctx: &HttpContext, reauth_id: &str) -> ApiResult<crate::sessions::TakenLogin> {
    ctx.logins.take(reauth_id).ok_or_else(|| {
        Problem::from(CoreError::refused_by_state(
            "prove the password first: POST /v1/account/reauth, then this request with its reauth_id",
        ))
    })
}

pub async fn delete_account(
    State(ctx): Ctx,
    auth: Authed,
    JsonBody(r): JsonBody<Confirmation>,
) -> ApiResult<StatusCode> {
    let taken = take_reauth(&ctx, &r.reauth_id)?;
    let session = auth.entry.take().ok_or_else(session_gone)?;
    match session
        .delete_account_confirmed(&taken.pending, r.client_final.as_bytes())
        .await
    {
        Ok(()) => {
            tracing::info!(user = %session.name(), "account deleted over HTTP");
            drop(ctx.sessions.remove(&auth.token));
            drop(session);
            Ok(StatusCode::NO_CONTENT)
        }
        Err(e) => {
            auth.entry.restore(session);
            Err(e.into())
        }
    }
}

#[derive(Deserialize)]
pub struct PasswordChange {
    reauth_id: String,
    client_final: String,
    #[serde(flatten)]
    credentials: CredentialFields,
}

#[derive(Serialize)]
pub struct PasswordChanged {
    server_final: String,
    resume_token: String,
    resume_expires_ms: u64,
}

/// `POST /v1/account/password`: new SCRAM credentials, once the old
/// password is proved; every other session ends, every resume token is
/// revoked, this session gets a new one.
pub async fn change_password(
    State(ctx): Ctx,
    auth: Authed,
    JsonBody(r): JsonBody<PasswordChange>,
) -> ApiResult<axum::Json<PasswordChanged>> {
    let credentials = r.credentials.decode()?;
    let taken = take_reauth(&ctx, &r.reauth_id)?;
    let mut session = auth.entry.take().ok_or_else(session_gone)?;
    let user = session.user();
    let changed = session
        .change_password(&taken.pending, r.client_final.as_bytes(), credentials)
        .await;
    if changed.is_ok() {
        tracing::info!(user = %session.name(), "password changed over HTTP");
    }
    auth.entry.restore(session);
    let (server_final, token, expires_ms) = changed?;
    // The change revoked every key the store kept, this session's too.
    remember(&ctx, &auth.entry, user).await;
    Ok(axum::Json(PasswordChanged {
        server_final,
        resume_token: B64.encode(token),
        resume_expires_ms: expires_ms,
    }))
}

// ------------------------------------------------------------ login

#[derive(Deserialize)]
pub struct LoginStart {
    client_first: String,
}

#[derive(Serialize)]
pub struct Challenge {
    login_id: String,
    mechanism: &'static str,
    server_first: String,
    expires_secs: u64,
}

pub async fn login_start(
    State(ctx): Ctx,
    ClientAddr(peer): ClientAddr,
    JsonBody(r): JsonBody<LoginStart>,
) -> ApiResult<axum::Json<Challenge>> {
    let pending = match ctx.service.auth_start(r.client_first.as_bytes(), Some(peer.ip())).await {
        Ok(pending) => pending,
        Err(e) => {
            let name = access::name_tried(r.client_first.as_bytes());
            access::login_refused("http", peer, "scram", name.as_deref(), &e);
            return Err(e.into());
        }
    };
    let mechanism = pending.mechanism().name();
    let server_first = pending.server_first().to_owned();
    let login_id = ctx
        .logins
        .insert(pending)
        .ok_or_else(|| Problem::busy("too many logins in progress", 1000))?;
    Ok(axum::Json(Challenge {
        login_id,
        mechanism,
        server_first,
        expires_secs: ctx.settings.login_timeout.as_secs(),
    }))
}

#[derive(Deserialize)]
pub struct LoginFinish {
    login_id: String,
    client_final: String,
}

#[derive(Serialize)]
pub struct LoginOk {
    token: String,
    token_type: &'static str,
    idle_expires_secs: u64,
    server_final: String,
    name: String,
    user_id: u64,
    session_id: u64,
    unread: u64,
    last_seq: u64,
    resume_token: String,
    resume_expires_ms: u64,
}

pub async fn login_finish(
    State(ctx): Ctx,
    ClientAddr(peer): ClientAddr,
    JsonBody(r): JsonBody<LoginFinish>,
) -> ApiResult<axum::Json<LoginOk>> {
    let Some(taken) = ctx.logins.take(&r.login_id) else {
        return Err(Problem::from(CoreError::refused_by_state(
            "no login in progress with this login_id (expired or used); start again",
        )));
    };
    let result = ctx.service.auth_finish(&taken.pending, r.client_final.as_bytes()).await;
    let mechanism = taken.pending.mechanism().name();
    match &result {
        Ok((_, outcome)) => access::login_ok("http", peer, mechanism, &outcome.name),
        Err(e) => access::login_refused("http", peer, mechanism, Some(taken.pending.name_key()), e),
    }
    // BUSY changed nothing: the same login/finish may come again.
    if matches!(&result, Err(e) if e.kind == ErrorKind::Busy) {
        ctx.logins.restore(r.login_id, taken);
    }
    logged_in(&ctx, peer, result).await
}

#[derive(Deserialize)]
pub struct ResumeRequest {
    resume_token: String,
}

pub async fn login_resume(
    State(ctx): Ctx,
    ClientAddr(peer): ClientAddr,
    JsonBody(r): JsonBody<ResumeRequest>,
) -> ApiResult<axum::Json<LoginOk>> {
    // A token that is not base64 is a failed resume like any other.
    let token = B64.decode(r.resume_token.as_bytes()).unwrap_or_default();
    let result = ctx.service.resume(&token, Some(peer.ip())).await;
    match &result {
        Ok((_, outcome)) => access::login_ok("http", peer, "resume", &outcome.name),
        Err(e) => access::login_refused("http", peer, "resume", None, e),
    }
    logged_in(&ctx, peer, result).await
}

async fn logged_in(
    ctx: &HttpContext,
    peer: std::net::SocketAddr,
    result: Result<(Session, LoginOutcome), CoreError>,
) -> ApiResult<axum::Json<LoginOk>> {
    let (session, outcome) = result?;
    tracing::info!(user = %outcome.name, session = %outcome.session, "login over HTTP");
    let token = sessions::random_token();
    keep(ctx, &token, session, peer.ip(), outcome.user).await?;
    Ok(axum::Json(LoginOk {
        token,
        token_type: "Bearer",
        idle_expires_secs: ctx.sessions.idle().as_secs(),
        server_final: outcome.server_final,
        name: outcome.name,
        user_id: outcome.user.0,
        session_id: outcome.session.0,
        unread: outcome.mailbox.unread,
        last_seq: outcome.mailbox.last_seq.0,
        resume_token: if outcome.resume_token.is_empty() {
            String::new()
        } else {
            B64.encode(&outcome.resume_token)
        },
        resume_expires_ms: outcome.resume_expires_ms,
    }))
}

pub async fn logout(State(ctx): Ctx, auth: Authed) -> ApiResult<StatusCode> {
    let revoked = start!(auth, |s| s.logout())?;
    drop(ctx.sessions.remove(&auth.token));
    let forgotten = ctx.service.forget_session_key(auth.entry.user(), auth.entry.key());
    revoked.await?;
    forgotten.await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/logout/all`: every session of the account ends, on every
/// front door, and every resume token stops working.
pub async fn logout_all(State(ctx): Ctx, auth: Authed) -> ApiResult<StatusCode> {
    let ended = start!(auth, |s| {
        tracing::info!(user = %s.name(), "logged out everywhere over HTTP");
        s.logout_all()
    })?;
    drop(ctx.sessions.remove(&auth.token));
    ended.await?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------ messages

#[derive(Serialize)]
pub struct Mailbox {
    last_seq: u64,
    unread: u64,
}

pub async fn mailbox(auth: Authed) -> ApiResult<axum::Json<Mailbox>> {
    let state = start!(auth, |s| s.mailbox_state())?.await?;
    Ok(axum::Json(Mailbox {
        last_seq: state.last_seq.0,
        unread: state.unread,
    }))
}

#[derive(Deserialize)]
pub struct SendRequest {
    to: String,
    client_msg_id: String,
    body: String,
}

#[derive(Serialize)]
pub struct Sent {
    client_msg_id: String,
    message_id: u64,
    seq: u64,
    timestamp_ms: u64,
    duplicate: bool,
    /// Held in the recipient's spam folder by the filter pipeline: stored,
    /// not delivered; `message_id` and `seq` are 0.
    held: bool,
}

pub async fn send(auth: Authed, JsonBody(r): JsonBody<SendRequest>) -> ApiResult<axum::Json<Sent>> {
    let appended = start!(auth, |s| s.send(&r.to, &r.client_msg_id, r.body))??.await?;
    let m = &appended.message;
    Ok(axum::Json(Sent {
        client_msg_id: m.client_msg_id.clone(),
        message_id: m.id.0,
        seq: m.seq.0,
        timestamp_ms: m.timestamp_ms,
        duplicate: appended.duplicate,
        held: appended.held,
    }))
}

#[derive(Deserialize)]
pub struct FetchQuery {
    #[serde(default)]
    after_seq: u64,
    #[serde(default)]
    limit: u32,
    #[serde(default)]
    include_acked: bool,
}

#[derive(Serialize)]
pub struct MessageView {
    message_id: u64,
    seq: u64,
    from: String,
    pager: bool,
    timestamp_ms: u64,
    body: String,
    client_msg_id: String,
    acked: bool,
}

impl From<&StoredMessage> for MessageView {
    fn from(m: &StoredMessage) -> MessageView {
        MessageView {
            message_id: m.id.0,
            seq: m.seq.0,
            from: m.sender_name.clone(),
            pager: pager::is_pager_message(m.sender, &m.sender_name),
            timestamp_ms: m.timestamp_ms,
            body: m.body.clone(),
            client_msg_id: m.client_msg_id.clone(),
            acked: m.acked,
        }
    }
}

#[derive(Serialize)]
pub struct MessageBatch {
    messages: Vec<MessageView>,
    more: bool,
}

pub async fn fetch(auth: Authed, QueryParams(q): QueryParams<FetchQuery>) -> ApiResult<axum::Json<MessageBatch>> {
    let (messages, more) = start!(auth, |s| s.fetch(Seq(q.after_seq), q.limit, q.include_acked))??.await?;
    Ok(axum::Json(MessageBatch {
        messages: messages.iter().map(MessageView::from).collect(),
        more,
    }))
}

#[derive(Deserialize)]
pub struct AckRequest {
    #[serde(default)]
    up_to_seq: u64,
    #[serde(default)]
    seqs: Vec<u64>,
}

#[derive(Serialize)]
pub struct Acked {
    acked: u64,
    unread: u64,
}

pub async fn ack(auth: Authed, JsonBody(r): JsonBody<AckRequest>) -> ApiResult<axum::Json<Acked>> {
    let range = AckRange {
        up_to: Seq(r.up_to_seq),
        seqs: r.seqs.into_iter().map(Seq).collect(),
    };
    let (acked, state) = start!(auth, |s| s.ack(range))??.await?;
    Ok(axum::Json(Acked {
        acked,
        unread: state.unread,
    }))
}

#[derive(Deserialize)]
pub struct DeleteRequest {
    message_ids: Vec<u64>,
}

#[derive(Serialize)]
pub struct Deleted {
    deleted: Vec<u64>,
    not_found: Vec<u64>,
}

pub async fn delete_messages(auth: Authed, JsonBody(r): JsonBody<DeleteRequest>) -> ApiResult<axum::Json<Deleted>> {
    let ids = r.message_ids.into_iter().map(MessageId).collect();
    let outcome = start!(auth, |s| s.delete_messages(ids))??.await?;
    Ok(axum::Json(Deleted {
        deleted: outcome.deleted.into_iter().map(|m| m.0).collect(),
        not_found: outcome.not_found.into_iter().map(|m| m.0).collect(),
    }))
}

// ------------------------------------------------------------ spam folder

#[derive(Deserialize)]
pub struct HeldQuery {
    #[serde(default)]
    after_id: u64,
    #[serde(default)]
    limit: u32,
}

#[derive(Serialize)]
pub struct HeldEntry {
    id: u64,
    from: String,
    timestamp_ms: u64,
    body: String,
    client_msg_id: String,
    filter: String,
    score: f32,
}

#[derive(Serialize)]
pub struct HeldPage {
    messages: Vec<HeldEntry>,
    more: bool,
}

pub async fn list_held(auth: Authed, QueryParams(q): QueryParams<HeldQuery>) -> ApiResult<axum::Json<HeldPage>> {
    let (held, more) = start!(auth, |s| s.held(q.after_id, q.limit))??.await?;
    Ok(axum::Json(HeldPage {
        messages: held
            .into_iter()
            .map(|h| HeldEntry {
                id: h.id,
                from: h.sender_name,
                timestamp_ms: h.timestamp_ms,
                body: h.body,
                client_msg_id: h.client_msg_id,
                filter: h.filter,
                score: h.score,
            })
            .collect(),
        more,
    }))
}

#[derive(Deserialize)]
pub struct HeldIds {
    ids: Vec<u64>,
    #[serde(default)]
    spam: bool,
}

#[derive(Serialize)]
pub struct ReleasedEntry {
    id: u64,
    seq: u64,
}

#[derive(Serialize)]
pub struct ReleasedList {
    released: Vec<ReleasedEntry>,
}

pub async fn release_held(auth: Authed, JsonBody(r): JsonBody<HeldIds>) -> ApiResult<axum::Json<ReleasedList>> {
    let released = start!(auth, |s| s.release(r.ids))??.await?;
    Ok(axum::Json(ReleasedList {
        released: released
            .into_iter()
            .map(|(id, seq)| ReleasedEntry { id, seq: seq.0 })
            .collect(),
    }))
}

#[derive(Serialize)]
pub struct DroppedList {
    deleted: Vec<u64>,
}

pub async fn drop_held(auth: Authed, JsonBody(r): JsonBody<HeldIds>) -> ApiResult<axum::Json<DroppedList>> {
    let deleted = start!(auth, |s| s.drop_held(r.ids, r.spam))??.await?;
    Ok(axum::Json(DroppedList { deleted }))
}

#[derive(Deserialize)]
pub struct ReportRequest {
    seqs: Vec<u64>,
}

#[derive(Serialize)]
pub struct ReportedEntry {
    seq: u64,
    id: u64,
}

#[derive(Serialize)]
pub struct ReportedList {
    reported: Vec<ReportedEntry>,
}

pub async fn report_spam(auth: Authed, JsonBody(r): JsonBody<ReportRequest>) -> ApiResult<axum::Json<ReportedList>> {
    let seqs = r.seqs.into_iter().map(Seq).collect();
    let reported = start!(auth, |s| s.report_spam(seqs))??.await?;
    Ok(axum::Json(ReportedList {
        reported: reported
            .into_iter()
            .map(|(seq, id)| ReportedEntry { seq: seq.0, id })
            .collect(),
    }))
}

// ------------------------------------------------------------ contacts

#[derive(Serialize)]
pub struct ContactEntry {
    name: String,
    online: bool,
    subscription: &'static str,
}

#[derive(Serialize)]
pub struct ContactList {
    contacts: Vec<ContactEntry>,
}

fn contact_list(list: Vec<ContactView>) -> axum::Json<ContactList> {
    axum::Json(ContactList {
        contacts: list
            .into_iter()
            .map(|c| ContactEntry {
                name: c.name,
                online: c.online,
                subscription: c.subscription.as_str(),
            })
            .collect(),
    })
}

pub async fn list_contacts(auth: Authed) -> ApiResult<axum::Json<ContactList>> {
    let contacts = start!(auth, |s| s.contacts())?.await?;
    Ok(contact_list(contacts))
}

pub async fn add_contact(auth: Authed, PathParam(name): PathParam<String>) -> ApiResult<axum::Json<ContactList>> {
    let (added, list) = start!(auth, |s| (s.add_contact(&name), s.contacts()))?;
    added?.await?;
    Ok(contact_list(list.await?))
}

pub async fn remove_contact(auth: Authed, PathParam(name): PathParam<String>) -> ApiResult<axum::Json<ContactList>> {
    let (removed, list) = start!(auth, |s| (s.remove_contact(&name), s.contacts()))?;
    removed.await?;
    Ok(contact_list(list.await?))
}

/// `DELETE /v1/contacts/{name}/presence`: `CancelPresence`.
pub async fn cancel_presence(auth: Authed, PathParam(name): PathParam<String>) -> ApiResult<axum::Json<ContactList>> {
    let (cancelled, list) = start!(auth, |s| (s.cancel_presence(&name), s.contacts()))?;
    cancelled?.await?;
    Ok(contact_list(list.await?))
}

// ------------------------------------------------------------ presence requests and blocks

#[derive(Serialize)]
pub struct PresenceRequests {
    requests: Vec<String>,
}

pub async fn list_presence_requests(auth: Authed) -> ApiResult<axum::Json<PresenceRequests>> {
    let requests = start!(auth, |s| s.presence_requests())?.await?;
    Ok(axum::Json(PresenceRequests { requests }))
}

pub async fn approve_presence(
    auth: Authed,
    PathParam(name): PathParam<String>,
) -> ApiResult<axum::Json<PresenceRequests>> {
    let (approved, list) = start!(auth, |s| (s.approve_presence(&name), s.presence_requests()))?;
    approved?.await?;
    Ok(axum::Json(PresenceRequests { requests: list.await? }))
}

pub async fn deny_presence(
    auth: Authed,
    PathParam(name): PathParam<String>,
) -> ApiResult<axum::Json<PresenceRequests>> {
    let (denied, list) = start!(auth, |s| (s.deny_presence(&name), s.presence_requests()))?;
    denied?.await?;
    Ok(axum::Json(PresenceRequests { requests: list.await? }))
}

#[derive(Serialize)]
pub struct BlockList {
    blocked: Vec<String>,
}

pub async fn list_blocked(auth: Authed) -> ApiResult<axum::Json<BlockList>> {
    let blocked = start!(auth, |s| s.list_blocked())?.await?;
    Ok(axum::Json(BlockList { blocked }))
}

pub async fn block(auth: Authed, PathParam(name): PathParam<String>) -> ApiResult<axum::Json<BlockList>> {
    let (blocked, list) = start!(auth, |s| (s.block(&name), s.list_blocked()))?;
    blocked?.await?;
    Ok(axum::Json(BlockList { blocked: list.await? }))
}

pub async fn unblock(auth: Authed, PathParam(name): PathParam<String>) -> ApiResult<axum::Json<BlockList>> {
    let (unblocked, list) = start!(auth, |s| (s.unblock(&name), s.list_blocked()))?;
    unblocked.await?;
    Ok(axum::Json(BlockList { blocked: list.await? }))
}

// ------------------------------------------------------------ pager

/// Whether the account takes messages from the web pager.
#[derive(Deserialize, Serialize)]
pub struct PagerSetting {
    accept: bool,
}

pub async fn pager_setting(auth: Authed) -> ApiResult<axum::Json<PagerSetting>> {
    let accept = start!(auth, |s| s.pager(None))?.await?;
    Ok(axum::Json(PagerSetting { accept }))
}

pub async fn set_pager_setting(
    auth: Authed,
    JsonBody(r): JsonBody<PagerSetting>,
) -> ApiResult<axum::Json<PagerSetting>> {
    let accept = start!(auth, |s| s.pager(Some(r.accept)))?.await?;
    Ok(axum::Json(PagerSetting { accept }))
}

#[derive(Deserialize)]
pub struct PagerRequest {
    body: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    contact: Option<String>,
}

#[derive(Serialize)]
pub struct PagerAccepted {
    status: &'static str,
}

pub async fn pager(
    State(ctx): Ctx,
    ClientAddr(peer): ClientAddr,
    PathParam(user): PathParam<String>,
    JsonBody(r): JsonBody<PagerRequest>,
) -> ApiResult<Response> {
    if !ctx.settings.pager_enabled {
        return Err(Problem::not_found("the pager is switched off on this server"));
    }
    if let Err(wait_ms) = ctx.pager.check(peer.ip(), Instant::now()) {
        ctx.counters.pager_rate_limited.fetch_add(1, Ordering::Relaxed);
        return Err(Problem::rate_limited(
            "too many pager messages from this address",
            wait_ms,
        ));
    }
    // Stored with every rule of a send from an account (validation,
    // admission, live delivery), from the pager's sender.
    let sender_name = pager::sender_name(r.name.as_deref(), r.contact.as_deref());
    let client_msg_id = format!("pager-{}", crate::sessions::random_token());
    let stored = async {
        ctx.service
            .send_from(pager::PAGER_SENDER, &sender_name, &user, &client_msg_id, r.body)?
            .await
    };
    match stored.await {
        Ok(_) => {
            ctx.counters.pager_messages.fetch_add(1, Ordering::Relaxed);
        }
        // A visitor is not told whether an account exists: a message for
        // a name nobody has, or for a full mailbox (which only an account
        // has), is answered like any other, and dropped (it counted
        // against the address's rate all the same).
        Err(e) if matches!(e.kind, ErrorKind::NoSuchUser | ErrorKind::MailboxFull) => {}
        Err(e) => return Err(e.into()),
    }
    Ok((StatusCode::ACCEPTED, axum::Json(PagerAccepted { status: "accepted" })).into_response())
}
