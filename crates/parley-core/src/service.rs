//! The chat service: registration, login, and everything an authenticated
//! [`Session`] can do.
//!
//! Every request method validates its input first (returning the error at
//! once, having changed nothing), then *submits* its store operation before
//! returning a `'static` future for the result. Submission order is
//! therefore call order (see the ordering contract in [`crate::store`]):
//! a front door may pipeline requests by calling methods in the order
//! requests arrive and awaiting the futures concurrently.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::error::{CoreError, ErrorKind};
use crate::hub::{CloseReason, Hub, SessionEvent, SessionFlags};
use crate::ids::{MessageId, Seq, SessionId, UserId};
use crate::limits::*;
use crate::name::{NamePattern, UserName, name_key};
use crate::scram::{ClientFirst, Mechanism, ServerExchange, StoredCredentials, decoy_credentials};
use crate::store::{AckRange, Appended, MailboxState, NewAccount, NewMessage, Store, StoredMessage};

/// How accounts authenticate.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    /// Mechanisms accepted for new registrations, preferred first. Existing
    /// accounts always log in with the mechanism they registered with.
    pub mechanisms: Vec<Mechanism>,
    /// Minimum PBKDF2 iteration count for new registrations; also the count
    /// decoy challenges for unknown names announce.
    pub iterations: u32,
    /// Server secret for decoy salts, so an unknown name always gets the
    /// same salt and cannot be told apart from a real account.
    pub secret: [u8; 32],
}

/// Everything the service needs besides its store.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub limits: Limits,
    pub auth: AuthSettings,
}

/// Monotonic counters, read by metrics and the shutdown log line.
#[derive(Debug, Default)]
pub struct Counters {
    pub logins_ok: AtomicU64,
    pub logins_failed: AtomicU64,
    pub registrations: AtomicU64,
    pub messages_stored: AtomicU64,
    pub messages_duplicate: AtomicU64,
    pub messages_pushed: AtomicU64,
    pub messages_acked: AtomicU64,
    pub catch_up_reads: AtomicU64,
}

/// The service shared by every connection of every front door.
pub struct Service {
    /// Accounts and mailboxes.
    store: Arc<dyn Store>,
    /// Online sessions and live routing.
    hub: Hub,
    /// Limits and authentication settings.
    config: ServiceConfig,
    /// Source of session ids.
    next_session: AtomicU64,
    /// Counters for metrics.
    counters: Counters,
}

/// A login between its two SCRAM messages.
pub struct AuthPending {
    /// The server side of the exchange.
    exchange: ServerExchange,
    /// The account being logged into, or None for a decoy.
    account: Option<(UserId, String)>,
}

impl AuthPending {
    /// The server-first-message to send.
    pub fn server_first(&self) -> &str {
        self.exchange.server_first()
    }

    /// The mechanism whose hash the client must use.
    pub fn mechanism(&self) -> Mechanism {
        self.exchange.mechanism()
    }
}

/// What a successful login tells the client.
#[derive(Clone, Debug)]
pub struct LoginOutcome {
    pub server_final: String,
    pub user: UserId,
    pub name: String,
    pub session: SessionId,
    pub mailbox: MailboxState,
}

/// What [`Session::next_push`] yields.
#[derive(Debug)]
pub enum PushEvent {
    /// Messages to push, in seq order, continuing the previous batch.
    Messages(Vec<Arc<StoredMessage>>),
    /// The server ends this session.
    Closed(CloseReason),
}

/// What a delete did.
#[derive(Clone, Debug)]
pub struct DeleteOutcome {
    /// Ids deleted from the caller's mailbox.
    pub deleted: Vec<MessageId>,
    /// Ids not in the caller's mailbox; nothing happened to them.
    pub not_found: Vec<MessageId>,
}

/// One page of an account listing.
#[derive(Clone, Debug)]
pub struct AccountPage {
    /// (name, online) in name order.
    pub accounts: Vec<(String, bool)>,
    /// Cursor for the next page; None on the last page.
    pub next_after: Option<String>,
}

impl Service {
    pub fn new(store: Arc<dyn Store>, config: ServiceConfig) -> Arc<Service> {
        Arc::new(Service {
            store,
            hub: Hub::default(),
            config,
            next_session: AtomicU64::new(1),
            counters: Counters::default(),
        })
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Creates an account from client-derived SCRAM credentials.
    pub fn register(
        &self,
        name: &str,
        credentials: StoredCredentials,
    ) -> Result<impl Future<Output = Result<(UserId, String), CoreError>> + Send + 'static, CoreError> {
        let name = UserName::parse(name)?;
        if !self.config.auth.mechanisms.contains(&credentials.mechanism) {
            return Err(CoreError::new(
                ErrorKind::UnsupportedMechanism,
                format!("{} is not accepted for new accounts", credentials.mechanism.name()),
            ));
        }
        credentials.validate(self.config.auth.iterations)?;
        let reply = self.store.create_account(NewAccount {
            name: name.as_str().to_owned(),
            name_key: name.key().to_owned(),
            credentials,
        });
        Ok(async move {
            let account = reply.await?;
            Ok((account.id, account.name))
        })
    }

    /// Notes a registration in the counters (front doors call it on success).
    pub fn note_registration(&self) {
        self.counters.registrations.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a client-first-message and answers with a challenge. Unknown
    /// and invalid names get a decoy challenge that can never succeed.
    pub async fn auth_start(&self, client_first: &[u8]) -> Result<AuthPending, CoreError> {
        let first = ClientFirst::parse(client_first)?;
        let key = name_key(&first.username);
        let account = match UserName::parse(&first.username) {
            Ok(_) => self.store.find_account(&key).await?,
            Err(_) => None,
        };
        let (credentials, account) = match account {
            Some(a) => (a.credentials, Some((a.id, a.name))),
            None => {
                let mechanism = self
                    .config
                    .auth
                    .mechanisms
                    .first()
                    .copied()
                    .unwrap_or(Mechanism::Sha256);
                (
                    decoy_credentials(&self.config.auth.secret, &key, mechanism, self.config.auth.iterations),
                    None,
                )
            }
        };
        Ok(AuthPending {
            exchange: ServerExchange::start(first, credentials),
            account,
        })
    }

    /// Verifies the client-final-message and opens a session.
    pub async fn auth_finish(
        self: &Arc<Self>,
        pending: AuthPending,
        client_final: &[u8],
    ) -> Result<(Session, LoginOutcome), CoreError> {
        let result = self.verify(pending, client_final).await;
        let counter = if result.is_ok() {
            &self.counters.logins_ok
        } else {
            &self.counters.logins_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn verify(
        self: &Arc<Self>,
        pending: AuthPending,
        client_final: &[u8],
    ) -> Result<(Session, LoginOutcome), CoreError> {
        let server_final = pending.exchange.finish(client_final)?;
        let (user, name) = pending.account.ok_or_else(CoreError::auth_failed)?;
        let mailbox = match self.store.mailbox_state(user).await {
            Ok(m) => m,
            // Deleted between the two messages.
            Err(crate::store::StoreError::NoSuchUser) => return Err(CoreError::auth_failed()),
            Err(e) => return Err(e.into()),
        };
        let session = self.open_session(user, name.clone());
        let outcome = LoginOutcome {
            server_final,
            user,
            name,
            session: session.id,
            mailbox,
        };
        Ok((session, outcome))
    }

    fn open_session(self: &Arc<Self>, user: UserId, name: String) -> Session {
        let id = SessionId(self.next_session.fetch_add(1, Ordering::Relaxed));
        let (tx, events) = mpsc::channel(self.config.limits.session_queue.max(1));
        let flags = Arc::new(SessionFlags::default());
        self.hub.register(user, id, tx, Arc::clone(&flags));
        Session {
            service: Arc::clone(self),
            user,
            name,
            id,
            events,
            flags,
            last_pushed: Seq(0),
            catch_up: false,
        }
    }

    /// Asks every session to end (server shutdown).
    pub fn close_all_sessions(&self) {
        self.hub.close_all(CloseReason {
            kind: ErrorKind::ShuttingDown,
            message: "server is shutting down".into(),
        });
    }
}

/// One authenticated login. Dropping it takes the session offline.
pub struct Session {
    /// The service this session belongs to.
    service: Arc<Service>,
    /// Whose session this is.
    user: UserId,
    /// The account name as registered.
    name: String,
    /// This session's id.
    id: SessionId,
    /// Notifications from the hub.
    events: mpsc::Receiver<SessionEvent>,
    /// Flags shared with the hub.
    flags: Arc<SessionFlags>,
    /// Highest seq pushed (or skipped as already known) on this session.
    last_pushed: Seq,
    /// Whether pushes must next come from storage: after subscribing, after
    /// a gap in notifications, or after the hub dropped some.
    catch_up: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.service.hub.unregister(self.user, self.id);
    }
}

fn check_limit(limit: u32, default: u32, max: u32, what: &str) -> Result<u32, CoreError> {
    match limit {
        0 => Ok(default),
        n if n <= max => Ok(n),
        _ => Err(CoreError::invalid(format!(
            "{what} limit must be 1 to {max} (0 for the default {default})"
        ))),
    }
}

impl Session {
    pub fn user(&self) -> UserId {
        self.user
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Stores a message for `to`; resolves once it is durable. A recipient
    /// with subscribed sessions is notified right after.
    pub fn send(
        &self,
        to: &str,
        client_msg_id: &str,
        body: String,
    ) -> Result<impl Future<Output = Result<Appended, CoreError>> + Send + 'static, CoreError> {
        let recipient =
            UserName::parse(to).map_err(|_| CoreError::new(ErrorKind::NoSuchUser, format!("no such user {to:?}")))?;
        if client_msg_id.is_empty() || client_msg_id.len() > MAX_CLIENT_MSG_ID_BYTES {
            return Err(CoreError::invalid(format!(
                "client_msg_id must be 1 to {MAX_CLIENT_MSG_ID_BYTES} bytes"
            )));
        }
        let max = self.service.config.limits.max_body_bytes;
        if body.is_empty() {
            return Err(CoreError::invalid("message body is empty"));
        }
        if body.len() > max as usize {
            return Err(CoreError::new(
                ErrorKind::MessageTooLarge,
                format!("message body is {} bytes; the limit is {max}", body.len()),
            ));
        }
        let timestamp_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let reply = self.service.store.append(NewMessage {
            sender: self.user,
            sender_name: self.name.clone(),
            recipient_key: recipient.key().to_owned(),
            client_msg_id: client_msg_id.to_owned(),
            body,
            timestamp_ms,
        });
        let service = Arc::clone(&self.service);
        let to = to.to_owned();
        Ok(async move {
            let appended = reply.await.map_err(|e| match e {
                crate::store::StoreError::NoSuchUser => {
                    CoreError::new(ErrorKind::NoSuchUser, format!("no such user {to:?}"))
                }
                other => other.into(),
            })?;
            if appended.duplicate {
                service.counters.messages_duplicate.fetch_add(1, Ordering::Relaxed);
            } else {
                service.counters.messages_stored.fetch_add(1, Ordering::Relaxed);
                service.hub.deliver(&appended.message);
            }
            Ok(appended)
        })
    }

    /// Messages in this session's mailbox with seq > `after`.
    pub fn fetch(
        &self,
        after: Seq,
        limit: u32,
        include_acked: bool,
    ) -> Result<impl Future<Output = Result<(Vec<StoredMessage>, bool), CoreError>> + Send + 'static, CoreError> {
        let limit = check_limit(limit, DEFAULT_FETCH_LIMIT, MAX_FETCH_LIMIT, "fetch")?;
        // One extra row tells whether more follow.
        let reply = self.service.store.fetch(self.user, after, limit + 1, include_acked);
        Ok(async move {
            let mut messages = reply.await?;
            let more = messages.len() > limit as usize;
            messages.truncate(limit as usize);
            Ok((messages, more))
        })
    }

    /// Acknowledges messages; returns (newly acked, mailbox state).
    pub fn ack(
        &self,
        range: AckRange,
    ) -> Result<impl Future<Output = Result<(u64, MailboxState), CoreError>> + Send + 'static, CoreError> {
        if range.seqs.len() > MAX_IDS_PER_REQUEST {
            return Err(CoreError::invalid(format!(
                "at most {MAX_IDS_PER_REQUEST} seqs per ack"
            )));
        }
        let reply = self.service.store.ack(self.user, range);
        let service = Arc::clone(&self.service);
        Ok(async move {
            let (acked, state) = reply.await?;
            service.counters.messages_acked.fetch_add(acked, Ordering::Relaxed);
            Ok((acked, state))
        })
    }

    /// Deletes messages from this session's own mailbox; returns (deleted, not found).
    pub fn delete_messages(
        &self,
        ids: Vec<MessageId>,
    ) -> Result<impl Future<Output = Result<DeleteOutcome, CoreError>> + Send + 'static, CoreError> {
        if ids.is_empty() || ids.len() > MAX_IDS_PER_REQUEST {
            return Err(CoreError::invalid(format!(
                "name 1 to {MAX_IDS_PER_REQUEST} message ids"
            )));
        }
        let reply = self.service.store.delete_messages(self.user, ids.clone());
        Ok(async move {
            let deleted = reply.await?;
            let mut not_found: Vec<MessageId> = ids.into_iter().filter(|id| !deleted.contains(id)).collect();
            not_found.dedup();
            Ok(DeleteOutcome { deleted, not_found })
        })
    }

    /// One page of accounts matching `pattern`, after the cursor `after`.
    pub fn list_accounts(
        &self,
        pattern: &str,
        after: &str,
        limit: u32,
    ) -> Result<impl Future<Output = Result<AccountPage, CoreError>> + Send + 'static, CoreError> {
        let pattern = NamePattern::parse(pattern)?;
        let limit = check_limit(limit, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, "list")?;
        let reply = self.service.store.list_accounts(&pattern, &name_key(after), limit + 1);
        let service = Arc::clone(&self.service);
        Ok(async move {
            let mut rows = reply.await?;
            let next_after = if rows.len() > limit as usize {
                rows.truncate(limit as usize);
                rows.last().map(|r| r.name_key.clone())
            } else {
                None
            };
            let accounts = rows
                .into_iter()
                .map(|r| (r.name, service.hub.is_online(r.id)))
                .collect();
            Ok(AccountPage { accounts, next_after })
        })
    }

    /// The mailbox's counters.
    pub fn mailbox_state(&self) -> impl Future<Output = Result<MailboxState, CoreError>> + Send + 'static {
        let reply = self.service.store.mailbox_state(self.user);
        async move { Ok(reply.await?) }
    }

    /// Deletes the account: its mailbox goes with it, its other sessions are
    /// closed with ACCOUNT_DELETED. The caller ends this session on success.
    pub async fn delete_account(&self) -> Result<(), CoreError> {
        self.service.store.delete_account(self.user).await?;
        self.service.hub.close_user(
            self.user,
            Some(self.id),
            CloseReason {
                kind: ErrorKind::AccountDeleted,
                message: "this account was deleted".into(),
            },
        );
        Ok(())
    }

    /// Starts live delivery: every unacknowledged message with seq > `after`
    /// is pushed first, then new messages as they are stored.
    pub fn subscribe(&mut self, after: Seq) -> impl Future<Output = Result<MailboxState, CoreError>> + Send + 'static {
        // Subscribe before the catch-up read is submitted, so that a message
        // stored in between is either in the read or notified (or both; the
        // seq check drops the second copy).
        self.flags.subscribed.store(true, Ordering::Release);
        self.last_pushed = after;
        self.catch_up = true;
        self.mailbox_state()
    }

    /// Waits for the next messages to push on this session, in seq order and
    /// without gaps, or for the server to end the session. Never resolves
    /// before [`Session::subscribe`] unless the session is closed.
    ///
    /// Cancel-safe between awaits: dropping the future loses no message (a
    /// lost notification only turns into a catch-up read).
    pub async fn next_push(&mut self) -> Result<PushEvent, CoreError> {
        loop {
            if let Some(reason) = self.flags.take_close() {
                return Ok(PushEvent::Closed(reason));
            }
            if self.flags.lagged.swap(false, Ordering::AcqRel) {
                self.catch_up = true;
            }
            if self.catch_up {
                self.service.counters.catch_up_reads.fetch_add(1, Ordering::Relaxed);
                let batch = self
                    .service
                    .store
                    .fetch(self.user, self.last_pushed, CATCH_UP_BATCH, false)
                    .await?;
                if batch.len() < CATCH_UP_BATCH as usize {
                    self.catch_up = false;
                }
                if let Some(last) = batch.last() {
                    self.last_pushed = last.seq;
                    return Ok(self.pushed(batch.into_iter().map(Arc::new).collect()));
                }
                continue;
            }
            let Some(event) = self.events.recv().await else {
                return Ok(PushEvent::Closed(CloseReason {
                    kind: ErrorKind::ShuttingDown,
                    message: "server is shutting down".into(),
                }));
            };
            let SessionEvent::Message(first) = event else { continue };
            if first.seq <= self.last_pushed {
                continue;
            }
            if first.seq != self.last_pushed.next() {
                self.catch_up = true;
                continue;
            }
            self.last_pushed = first.seq;
            let mut batch = vec![first];
            // Coalesce whatever else is already queued into the same push.
            while batch.len() < CATCH_UP_BATCH as usize {
                match self.events.try_recv() {
                    Ok(SessionEvent::Message(m)) if m.seq <= self.last_pushed => {}
                    Ok(SessionEvent::Message(m)) if m.seq == self.last_pushed.next() => {
                        self.last_pushed = m.seq;
                        batch.push(m);
                    }
                    Ok(SessionEvent::Message(_)) => {
                        self.catch_up = true;
                        break;
                    }
                    Ok(SessionEvent::Wake) => break,
                    Err(_) => break,
                }
            }
            return Ok(self.pushed(batch));
        }
    }

    fn pushed(&self, batch: Vec<Arc<StoredMessage>>) -> PushEvent {
        self.service
            .counters
            .messages_pushed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        PushEvent::Messages(batch)
    }
}
