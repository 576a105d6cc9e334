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
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::Digest;

use tokio::sync::mpsc;

use crate::bus::Spent;
use crate::delivery::{Offer, PushWindow};
use crate::error::{CoreError, ErrorKind};
use crate::files::{FileOffer, TransferSettings, Transfers};
use crate::filter::{FilterSettings, Filters, Judged, Verdict};
use crate::hub::{CloseReason, Hub, SessionEvent, SessionFlags};
use crate::ids::{MessageId, Seq, SessionId, UserId};
use crate::limits::*;
use crate::name::{NamePattern, UserName, name_key};
use crate::presence::Subscription;
use crate::rate::{TokenBuckets, WindowLimiter, retry_hint};
use crate::scram::{ClientFirst, Mechanism, ServerExchange, StoredCredentials, decoy_credentials};
use crate::store::{
    AckRange, Appended, FetchPage, FilterLabel, Held, HeldMessage, MESSAGE_OVERHEAD_BYTES, MailboxQuota, MailboxState,
    NewAccount, NewHeld, NewMessage, NewResumeToken, OnStored, Store, StoreError, StoreReply, StoredMessage,
};
use crate::sync::lock;
use crate::throttle::{Attempt, Throttle, ThrottleSettings};

/// Sender id of messages from outside any account (the web pager, the
/// administrator's broadcasts), for [`Service::send_from`]: account ids
/// start at 1. Such senders are told apart by their names, which contain
/// a `:` that no account name can.
pub const EXTERNAL_SENDER: UserId = UserId(0);

/// Sender id of the web pager's messages: outside any account, like
/// [`EXTERNAL_SENDER`], but its own, so that an account can refuse the
/// pager ([`Session::pager`]) and still get the administrator's
/// broadcasts. Account ids never reach it (stores keep ids as SQL
/// integers, which end here).
pub const PAGER_SENDER: UserId = UserId(i64::MAX as u64);

/// Bytes of randomness in a resume token.
pub const RESUME_TOKEN_BYTES: usize = 32;
/// How long a resume token works, by default.
pub const DEFAULT_RESUME_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Live resume tokens one account keeps (one per device or login).
pub const DEFAULT_RESUME_TOKENS_PER_USER: u32 = 32;

/// How resume tokens work.
#[derive(Clone, Debug)]
pub struct ResumeSettings {
    /// Lifetime of a token from the login that made it.
    pub ttl: Duration,
    /// Live tokens kept per account; more drop the oldest.
    pub max_per_user: u32,
}

impl Default for ResumeSettings {
    fn default() -> Self {
        ResumeSettings {
            ttl: DEFAULT_RESUME_TTL,
            max_per_user: DEFAULT_RESUME_TOKENS_PER_USER,
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn token_hash(token: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(token).into()
}

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

/// Who may create an account (Prosody's `allow_registration` and
/// `invite_only`, ejabberd's `mod_register` with an `access` rule).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RegistrationMode {
    /// Anyone may register (within the per-address rate).
    #[default]
    Open,
    /// Nobody may: REGISTRATION_CLOSED (accounts come from elsewhere).
    Closed,
    /// Only with a one-time invite code from `parleyd ctl invite`.
    Invite,
}

/// Bytes of randomness in an invite code.
pub const INVITE_CODE_BYTES: usize = 16;
/// How long an invite code works, by default.
pub const DEFAULT_INVITE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest lifetime an invite may be given.
pub const MAX_INVITE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long a sender refused BUSY by a fail-closed filter is asked to wait.
pub const FILTER_RETRY_AFTER_MS: u32 = 1_000;

/// What a send came to: stored in the recipient's mailbox, or held in its
/// spam folder by the filter pipeline.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// The message as stored; when held, its id and seq are 0 and its
    /// body is left out.
    pub message: Arc<StoredMessage>,
    /// True when this client_msg_id had been stored (or held) before.
    pub duplicate: bool,
    /// True when the message went to the recipient's spam folder.
    pub held: bool,
}

/// A send's store operation, submitted, or the pipeline's refusal.
enum Step {
    Append(StoreReply<Appended>),
    Hold(StoreReply<Held>, StoredMessage),
    Refused(CoreError),
}

/// A send's [`Step`], or the channel it comes through once a remote
/// classifier has answered.
enum Judging {
    Done(Step),
    Waiting(tokio::sync::oneshot::Receiver<Step>),
}

/// Everything the service needs besides its store.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub limits: Limits,
    pub auth: AuthSettings,
    pub resume: ResumeSettings,
    pub throttle: ThrottleSettings,
    /// Who may register.
    pub registration: RegistrationMode,
    /// The filter pipeline on the send path ([`crate::filter`]).
    pub filters: FilterSettings,
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
    pub messages_resent: AtomicU64,
    pub resumes_ok: AtomicU64,
    pub resumes_failed: AtomicU64,
    pub logins_rate_limited: AtomicU64,
    /// Registrations refused by the per-address rate.
    pub registrations_rate_limited: AtomicU64,
    /// Sends refused by the per-account rate.
    pub sends_rate_limited: AtomicU64,
}

/// The service shared by every connection of every front door.
pub struct Service {
    /// Accounts and mailboxes.
    store: Arc<dyn Store>,
    /// Online sessions and live routing (shared with the bus, when there
    /// is one).
    hub: Arc<Hub>,
    /// Limits and authentication settings.
    config: ServiceConfig,
    /// Source of session ids.
    next_session: AtomicU64,
    /// Counters for metrics.
    counters: Counters,
    /// Failed-login counters and logins in progress.
    throttle: Arc<Throttle>,
    /// Registrations per source address group, per hour.
    registrations: WindowLimiter<IpAddr>,
    /// Each account's send bucket, shared by its sessions.
    send_rate: TokenBuckets<UserId>,
    /// File transfers waiting for their other side, or under way.
    transfers: Arc<Transfers>,
    /// The filter pipeline every sent message goes through.
    filters: Arc<Filters>,
}

/// A login between its two SCRAM messages.
pub struct AuthPending {
    /// The server side of the exchange.
    exchange: ServerExchange,
    /// The account being logged into, or None for a decoy.
    account: Option<(UserId, String)>,
    /// The name key tried, for access logs.
    key: String,
    /// Its place among the logins in progress, and whom a failure counts
    /// against (the name tried and the address).
    attempt: Attempt,
    /// Whether the session this login opens stays out of presence
    /// (`AuthStart.quiet`).
    quiet: bool,
}

impl AuthPending {
    /// Makes the session this login opens quiet: it does not make the
    /// account appear online (see [`crate::hub`]).
    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    /// The server-first-message to send.
    pub fn server_first(&self) -> &str {
        self.exchange.server_first()
    }

    /// The mechanism whose hash the client must use.
    pub fn mechanism(&self) -> Mechanism {
        self.exchange.mechanism()
    }

    /// The account name key the login is for, as the client gave it
    /// (normalised; possibly a name no account has): for access logs.
    pub fn name_key(&self) -> &str {
        &self.key
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
    /// Secret for a later `resume`; only its hash is stored.
    pub resume_token: Vec<u8>,
    pub resume_expires_ms: u64,
}

/// How a session is entered: the resume token it hands out (`made` by
/// this login) or the key it was reopened with, and the token a resume
/// replaces.
struct Entry {
    token: Vec<u8>,
    hash: [u8; 32],
    expires_ms: u64,
    made: bool,
    replaced: Option<[u8; 32]>,
}

/// What [`Session::next_push`] yields.
#[derive(Debug)]
pub enum PushEvent {
    /// Messages to push, in seq order, continuing the previous batch.
    Messages(Vec<Arc<StoredMessage>>),
    /// A contact's first session came online, or last went away.
    Presence { name: Arc<str>, online: bool },
    /// `from` asks to see this account's presence.
    PresenceRequest { from: Arc<str> },
    /// `name` approved this account's request to see its presence.
    PresenceApproved { name: Arc<str> },
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

/// One entry of a contact list as a session sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactView {
    /// The contact's name as registered.
    pub name: String,
    /// The caller's subscription to the contact's presence.
    pub subscription: Subscription,
    /// Online, and the caller may see it (subscription approved).
    pub online: bool,
}

/// One page of an account listing.
#[derive(Clone, Debug)]
pub struct AccountPage {
    /// (name, online) in name order; online only for the caller and the
    /// accounts whose presence the caller may see.
    pub accounts: Vec<(String, bool)>,
    /// Cursor for the next page; None on the last page.
    pub next_after: Option<String>,
}

impl Service {
    pub fn new(store: Arc<dyn Store>, config: ServiceConfig) -> Arc<Service> {
        let throttle = Throttle::new(config.throttle.clone());
        let limits = &config.limits;
        let registrations = WindowLimiter::new(
            limits.registrations_per_ip_per_hour,
            REGISTRATION_WINDOW,
            MAX_TRACKED_REGISTRATION_ADDRESSES,
        );
        let send_rate = TokenBuckets::new(
            limits.send_rate_per_account,
            limits.send_rate_per_account.saturating_mul(SEND_BURST_SECONDS),
            MAX_TRACKED_SENDERS,
        );
        let hub = Arc::new(Hub::default());
        let transfers = Arc::new(Transfers::new(
            TransferSettings {
                max_file_bytes: limits.max_file_bytes,
                relay_max_file_bytes: limits.relay_max_file_bytes,
                relay_bytes_per_sec: limits.relay_bytes_per_sec_per_user,
            },
            Arc::clone(&hub),
        ));
        let rendezvous = Arc::downgrade(&transfers);
        hub.receive_transfers_with(Box::new(move |wire| {
            if let Some(transfers) = rendezvous.upgrade() {
                transfers.from_bus(wire);
            }
        }));
        let deliver = Arc::clone(&hub);
        store.on_stored(OnStored::new(move |message| deliver.deliver(message)));
        Arc::new_cyclic(|service: &std::sync::Weak<Service>| {
            let service = service.clone();
            hub.count_spent_with(Box::new(move |spent| {
                if let Some(service) = service.upgrade() {
                    service.count_spent_elsewhere(spent);
                }
            }));
            Service {
                store,
                hub,
                next_session: AtomicU64::new(1),
                counters: Counters::default(),
                throttle,
                registrations,
                send_rate,
                transfers,
                filters: Arc::new(Filters::new(config.filters.clone())),
                config,
            }
        })
    }

    /// Counts a failed login or resume against `account` and `ip` here and
    /// tells the other processes, so that the throttle holds across them.
    fn login_failed(&self, account: Option<&str>, ip: Option<IpAddr>) {
        self.throttle.record_failure(account, ip, Instant::now());
        self.hub.spent(Spent::LoginFailure {
            account: account.map(Arc::from),
            ip: ip.map(crate::addr::address_group),
        });
    }

    /// Counts a use of a cluster-wide limit that another process made.
    fn count_spent_elsewhere(&self, spent: Spent) {
        let now = Instant::now();
        match spent {
            Spent::LoginFailure { account, ip } => self.throttle.record_failure(account.as_deref(), ip, now),
            Spent::Registration { ip } => self.registrations.record(&ip, now),
            Spent::Send { user } => {
                // A token spent elsewhere; none left here is no refusal.
                let _ = self.send_rate.take(&user, now);
            }
        }
    }

    /// The file transfers' rendezvous.
    pub fn transfers(&self) -> &Arc<Transfers> {
        &self.transfers
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The hub, to attach a bus to it (which routes what other processes
    /// send to it).
    pub fn shared_hub(&self) -> Arc<Hub> {
        Arc::clone(&self.hub)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The filter pipeline and its counters.
    pub fn filters(&self) -> &Arc<Filters> {
        &self.filters
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Creates an account from client-derived SCRAM credentials. `peer` is
    /// the client's address, for the per-address registration rate (None:
    /// not counted — only for callers that are not a client, such as tests
    /// and tools on the server itself). `invite` is the code the client
    /// gave, if any: needed when registration is by invitation (and used
    /// up with the account), ignored otherwise.
    pub fn register(
        &self,
        name: &str,
        credentials: StoredCredentials,
        peer: Option<IpAddr>,
        invite: Option<&str>,
    ) -> Result<impl Future<Output = Result<(UserId, String), CoreError>> + Send + 'static, CoreError> {
        let invite = match self.config.registration {
            RegistrationMode::Open => None,
            RegistrationMode::Closed => {
                return Err(CoreError::new(
                    ErrorKind::RegistrationClosed,
                    "this server does not take new registrations",
                ));
            }
            RegistrationMode::Invite => match invite.filter(|code| !code.is_empty()) {
                Some(code) => Some(crate::store::InviteUse {
                    hash: token_hash(code.trim().as_bytes()),
                    now_ms: now_ms(),
                }),
                None => {
                    return Err(CoreError::new(
                        ErrorKind::InviteInvalid,
                        "this server registers by invitation only: an invite code is needed",
                    ));
                }
            },
        };
        let name = UserName::parse(name)?;
        if !self.config.auth.mechanisms.contains(&credentials.mechanism) {
            return Err(CoreError::new(
                ErrorKind::UnsupportedMechanism,
                format!("{} is not accepted for new accounts", credentials.mechanism.name()),
            ));
        }
        credentials.validate(self.config.auth.iterations)?;
        // Every valid attempt counts, taken name or not: a name that is
        // taken costs the store a lookup too, and probing names is no
        // cheaper than creating accounts.
        if let Some(peer) = peer {
            let ip = crate::addr::address_group(peer);
            if let Err(wait) = self.registrations.take(&ip, Instant::now()) {
                self.counters.registrations_rate_limited.fetch_add(1, Ordering::Relaxed);
                return Err(CoreError::new(
                    ErrorKind::RateLimited,
                    "too many registrations from this address; wait before trying again",
                )
                .with_retry_after(retry_hint(wait)));
            }
            self.hub.spent(Spent::Registration { ip });
        }
        let reply = self.store.create_account(NewAccount {
            name: name.as_str().to_owned(),
            name_key: name.key().to_owned(),
            credentials,
            invite,
        });
        Ok(async move {
            let account = reply.await?;
            Ok((account.id, account.name))
        })
    }

    /// Makes a one-time invite code that works for `ttl` (at most
    /// [`MAX_INVITE_TTL`]); resolves to the code and when it expires (ms
    /// since the Unix epoch). Only the code's hash is stored, as for resume
    /// tokens: the code is shown once, to the administrator who asked.
    pub fn create_invite(
        &self,
        ttl: Duration,
    ) -> Result<impl Future<Output = Result<(String, u64), CoreError>> + Send + 'static, CoreError> {
        if ttl.is_zero() || ttl > MAX_INVITE_TTL {
            return Err(CoreError::invalid(format!(
                "an invite lives from 1 hour to {} hours",
                MAX_INVITE_TTL.as_secs() / 3600
            )));
        }
        let mut bytes = [0u8; INVITE_CODE_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        let code: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = now_ms();
        let expires_ms = now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let reply = self.store.create_invite(crate::store::NewInvite {
            hash: token_hash(code.as_bytes()),
            expires_ms,
            now_ms: now,
        });
        Ok(async move {
            reply.await?;
            Ok((code, expires_ms))
        })
    }

    /// Notes a registration in the counters (front doors call it on success).
    pub fn note_registration(&self) {
        self.counters.registrations.fetch_add(1, Ordering::Relaxed);
    }

    /// Stores a message from `sender` (named `sender_name`) for `to`, with
    /// every rule of [`Session::send`], which calls it: validation first,
    /// admission before the append is built, the filter pipeline, the
    /// recipient's sessions notified once it is durable. Front doors call
    /// it directly only for messages from outside any account (the web
    /// pager), with a sender id no account has and a name no account can
    /// have.
    pub fn send_from(
        self: &Arc<Self>,
        sender: UserId,
        sender_name: &str,
        to: &str,
        client_msg_id: &str,
        body: String,
    ) -> Result<impl Future<Output = Result<Accepted, CoreError>> + Send + 'static, CoreError> {
        self.send_with(sender, sender_name, to, client_msg_id, body, true)
    }

    /// [`Service::send_from`] without the filter pipeline: for what the
    /// operator sends (broadcasts), which no filter should hold back.
    pub fn send_unfiltered(
        self: &Arc<Self>,
        sender: UserId,
        sender_name: &str,
        to: &str,
        client_msg_id: &str,
        body: String,
    ) -> Result<impl Future<Output = Result<Accepted, CoreError>> + Send + 'static, CoreError> {
        self.send_with(sender, sender_name, to, client_msg_id, body, false)
    }

    fn send_with(
        self: &Arc<Self>,
        sender: UserId,
        sender_name: &str,
        to: &str,
        client_msg_id: &str,
        body: String,
        filtered: bool,
    ) -> Result<impl Future<Output = Result<Accepted, CoreError>> + Send + 'static, CoreError> {
        // The message is checked before its recipient, so that a sender
        // who is not told whether the recipient exists (the pager) still
        // gets every error about what it sent.
        if client_msg_id.is_empty() || client_msg_id.len() > MAX_CLIENT_MSG_ID_BYTES {
            return Err(CoreError::invalid(format!(
                "client_msg_id must be 1 to {MAX_CLIENT_MSG_ID_BYTES} bytes"
            )));
        }
        let max = self.config.limits.max_body_bytes;
        if body.is_empty() {
            return Err(CoreError::invalid("message body is empty"));
        }
        if body.len() > max as usize {
            return Err(CoreError::new(
                ErrorKind::MessageTooLarge,
                format!("message body is {} bytes; the limit is {max}", body.len()),
            ));
        }
        let recipient =
            UserName::parse(to).map_err(|_| CoreError::new(ErrorKind::NoSuchUser, format!("no such user {to:?}")))?;
        // Under a flood most sends are refused: refuse before building the
        // append (after validation, so bad input still gets its own error).
        self.store.check_new_work()?;
        let message = NewMessage {
            sender,
            sender_name: sender_name.to_owned(),
            recipient_key: recipient.key().to_owned(),
            client_msg_id: client_msg_id.to_owned(),
            body,
            timestamp_ms: now_ms(),
            quota: self.config.limits.mailbox_quota(),
        };
        let judging = if !filtered || !self.filters.active() {
            Judging::Done(Step::Append(self.store.append(message)))
        } else {
            match self.filters.judge(&message.body) {
                Judged::Now(verdict) => Judging::Done(self.store_as(verdict, message)),
                Judged::Later => {
                    // The store operation is submitted from the remote
                    // scorer's answer, in the order messages were sent.
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let service = Arc::clone(self);
                    let body = message.body.clone();
                    self.filters.judge_remote(
                        body,
                        Box::new(move |verdict| {
                            let _ = tx.send(service.store_as(verdict, message));
                        }),
                    );
                    Judging::Waiting(rx)
                }
            }
        };
        let service = Arc::clone(self);
        let to = to.to_owned();
        Ok(async move {
            let step = match judging {
                Judging::Done(step) => step,
                Judging::Waiting(rx) => rx
                    .await
                    .map_err(|_| CoreError::new(ErrorKind::ShuttingDown, "server is shutting down"))?,
            };
            let not_stored = |e: StoreError| match e {
                StoreError::NoSuchUser => CoreError::new(ErrorKind::NoSuchUser, format!("no such user {to:?}")),
                StoreError::MailboxFull => CoreError::new(
                    ErrorKind::MailboxFull,
                    format!("the mailbox of {to:?} is full; the message was not stored"),
                ),
                other => other.into(),
            };
            match step {
                Step::Append(reply) => {
                    let appended = reply.await.map_err(not_stored)?;
                    let counter = match appended.duplicate {
                        true => &service.counters.messages_duplicate,
                        // Delivered by the store's hook (`on_stored`), in
                        // the order the store made messages durable.
                        false => &service.counters.messages_stored,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    Ok(Accepted {
                        message: appended.message,
                        duplicate: appended.duplicate,
                        held: false,
                    })
                }
                Step::Hold(reply, mut message) => {
                    let held = reply.await.map_err(not_stored)?;
                    // A resend of a message stored before: its answer.
                    if let Some(stored) = held.stored {
                        service.counters.messages_duplicate.fetch_add(1, Ordering::Relaxed);
                        return Ok(Accepted {
                            message: stored,
                            duplicate: true,
                            held: false,
                        });
                    }
                    // Not the spam-folder id: the sender has no use for
                    // it, and consecutive ones would tell how many
                    // messages the server held in between.
                    message.recipient = held.recipient;
                    message.timestamp_ms = held.timestamp_ms;
                    Ok(Accepted {
                        message: Arc::new(message),
                        duplicate: held.duplicate,
                        held: true,
                    })
                }
                Step::Refused(error) => Err(error),
            }
        })
    }

    /// Submits the store operation a verdict asks for.
    fn store_as(&self, verdict: Verdict, message: NewMessage) -> Step {
        match verdict {
            Verdict::Accept => Step::Append(self.store.append(message)),
            Verdict::Hold { filter, score } => {
                // What the sender is answered with: the message as held.
                let answer = StoredMessage {
                    id: MessageId(0),
                    recipient: UserId(0),
                    seq: Seq(0),
                    sender: message.sender,
                    sender_name: message.sender_name.clone(),
                    client_msg_id: message.client_msg_id.clone(),
                    body: String::new(),
                    timestamp_ms: message.timestamp_ms,
                    acked: false,
                };
                let reply = self.store.hold(NewHeld {
                    message,
                    filter: filter.to_owned(),
                    score,
                    max_held: self.filters.settings().max_held.max(1),
                    send: true,
                });
                Step::Hold(reply, answer)
            }
            Verdict::Reject { reason, score, .. } => Step::Refused(CoreError::rejected(
                reason,
                match score {
                    Some(score) => {
                        format!("the message looks like spam (score {score:.2}) and was refused; nothing was stored")
                    }
                    None => "the message contains a phrase this server does not accept; nothing was stored".to_owned(),
                },
            )),
            Verdict::Unavailable => Step::Refused(
                CoreError::new(
                    ErrorKind::Busy,
                    "the spam filter cannot score messages now; nothing was stored, try again later",
                )
                .with_retry_after(FILTER_RETRY_AFTER_MS),
            ),
        }
    }

    /// Takes a client-first-message and answers with a challenge. Unknown
    /// and invalid names get a decoy challenge that can never succeed.
    pub async fn auth_start(&self, client_first: &[u8], peer: Option<IpAddr>) -> Result<AuthPending, CoreError> {
        let first = ClientFirst::parse(client_first)?;
        let key = name_key(&first.username);
        let attempt = match self.throttle.begin(Some(&key), peer, Instant::now()) {
            Ok(attempt) => attempt,
            Err(e) => {
                self.counters.logins_rate_limited.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
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
                let decoy = decoy_credentials(&self.config.auth.secret, &key, mechanism, self.config.auth.iterations);
                (decoy, None)
            }
        };
        Ok(AuthPending {
            exchange: ServerExchange::start(first, credentials),
            account,
            key,
            attempt,
            quiet: false,
        })
    }

    /// Verifies the client-final-message and opens a session.
    ///
    /// The login is only borrowed: when the answer is `BUSY` nothing was
    /// done, and a front door keeps `pending` so that the client can send
    /// the same client-final-message again (BUSY is always safe to retry).
    pub async fn auth_finish(
        self: &Arc<Self>,
        pending: &AuthPending,
        client_final: &[u8],
    ) -> Result<(Session, LoginOutcome), CoreError> {
        // Failures counted since the first step (from other logins
        // started at the same time) stop this one before its proof is read.
        if let Err(e) = pending.attempt.check(Instant::now()) {
            self.counters.logins_rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        let result = self.verify(pending, client_final).await;
        match &result {
            Ok(_) => {
                self.counters.logins_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.kind == ErrorKind::Busy => {}
            Err(e) => {
                if e.kind == ErrorKind::AuthFailed {
                    self.login_failed(pending.attempt.account(), pending.attempt.ip());
                }
                self.counters.logins_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn verify(
        self: &Arc<Self>,
        pending: &AuthPending,
        client_final: &[u8],
    ) -> Result<(Session, LoginOutcome), CoreError> {
        let server_final = pending.exchange.finish(client_final)?;
        let (user, name) = pending.account.clone().ok_or_else(CoreError::auth_failed)?;
        self.login(user, name, server_final, None, pending.quiet).await
    }

    /// Opens a session with a resume token from an earlier login, without
    /// the password exchange. Every failure is AUTH_FAILED.
    pub async fn resume(
        self: &Arc<Self>,
        token: &[u8],
        peer: Option<IpAddr>,
    ) -> Result<(Session, LoginOutcome), CoreError> {
        self.resume_with(token, peer, false).await
    }

    /// [`Service::resume`], opening a quiet session when `quiet` (one that
    /// does not make the account appear online; `Resume.quiet`).
    pub async fn resume_with(
        self: &Arc<Self>,
        token: &[u8],
        peer: Option<IpAddr>,
        quiet: bool,
    ) -> Result<(Session, LoginOutcome), CoreError> {
        if let Err(e) = self.throttle.check(None, peer, Instant::now()) {
            self.counters.logins_rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        let hash = token_hash(token);
        let account = if token.len() == RESUME_TOKEN_BYTES {
            self.store.resume(hash, now_ms()).await?
        } else {
            None
        };
        let result = match account {
            Some(a) => {
                self.login(a.id, a.name, String::new(), Some((token.to_vec(), hash)), quiet)
                    .await
            }
            None => Err(CoreError::auth_failed()),
        };
        match &result {
            Ok(_) => self.counters.resumes_ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => {
                self.login_failed(None, peer);
                self.counters.resumes_failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        result
    }

    /// Opens a session for an authenticated user with a fresh resume
    /// token (revoking the one it resumed with, if any): see
    /// [`Service::enter`].
    async fn login(
        self: &Arc<Self>,
        user: UserId,
        name: String,
        server_final: String,
        resumed: Option<(Vec<u8>, [u8; 32])>,
        quiet: bool,
    ) -> Result<(Session, LoginOutcome), CoreError> {
        // Every login gets a fresh resume token, a resume too: the token it
        // resumed with is revoked once the new one is stored, so a token
        // that leaked stops working the next time its owner reconnects.
        let replaced = resumed.map(|(_, hash)| hash);
        let (token, hash, expires_ms) = self.new_resume_token(user).await?;
        let entry = Entry {
            token,
            hash,
            expires_ms,
            made: true,
            replaced,
        };
        self.enter(user, name, server_final, entry, quiet).await
    }

    /// Remembers `key` (the hash of a secret another front door hands out,
    /// such as an HTTP bearer token) as a way into `user`'s account until
    /// `expires_ms`, beside its resume tokens: any worker or node can then
    /// [`Service::reopen`] the session, and everything that revokes resume
    /// tokens (logging out everywhere, a password change, a kick, deleting
    /// the account) revokes it too. Remembering the same key again moves
    /// its expiry.
    pub fn remember_session_key(&self, user: UserId, key: [u8; 32], expires_ms: u64) -> crate::StoreReply<()> {
        self.store.create_resume_token(NewResumeToken {
            user,
            hash: key,
            expires_ms,
            max_per_user: self.config.resume.max_per_user,
        })
    }

    /// Forgets a token's key (a resume token's, or one given to
    /// [`Service::remember_session_key`]); once the store has forgotten it,
    /// sessions opened under it in other processes are asked to close (one
    /// bearer token may be open in several). Only then, so that no other
    /// process opens the session again from the key after closing it.
    pub fn forget_session_key(
        &self,
        user: UserId,
        key: [u8; 32],
    ) -> impl Future<Output = Result<(), CoreError>> + Send + 'static {
        let reply = self.store.revoke_resume_token(key);
        let hub = Arc::clone(&self.hub);
        async move {
            reply.await?;
            hub.close_token_elsewhere(
                user,
                key,
                CloseReason {
                    kind: ErrorKind::NotAuthenticated,
                    message: "logged out".into(),
                },
            );
            Ok(())
        }
    }

    /// Opens a session again under a key remembered with
    /// [`Service::remember_session_key`] (after a worker restart, or on
    /// another worker), without a password and without a new resume token:
    /// the key stays the session's own, and [`Session::logout`] forgets it.
    /// Every failure is AUTH_FAILED and counts against the address like a
    /// failed resume.
    pub async fn reopen(
        self: &Arc<Self>,
        key: [u8; 32],
        peer: Option<IpAddr>,
    ) -> Result<(Session, LoginOutcome), CoreError> {
        if let Err(e) = self.throttle.check(None, peer, Instant::now()) {
            self.counters.logins_rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        let result = match self.store.resume(key, now_ms()).await? {
            Some(account) => {
                let entry = Entry {
                    token: Vec::new(),
                    hash: key,
                    expires_ms: 0,
                    made: false,
                    replaced: None,
                };
                self.enter(account.id, account.name, String::new(), entry, false).await
            }
            None => Err(CoreError::auth_failed()),
        };
        if result.is_err() {
            self.login_failed(None, peer);
        }
        result
    }

    /// Opens a session for an authenticated user: the mailbox counters, the
    /// contacts whose presence the session follows, the session limit. A
    /// `quiet` session does not count for presence.
    async fn enter(
        self: &Arc<Self>,
        user: UserId,
        name: String,
        server_final: String,
        entry: Entry,
        quiet: bool,
    ) -> Result<(Session, LoginOutcome), CoreError> {
        let Entry {
            token,
            hash,
            expires_ms,
            made,
            replaced,
        } = entry;
        let mailbox = self.store.mailbox_state(user);
        let contacts = self.store.contacts_with_presence(user);
        let state = async {
            let mailbox = match mailbox.await {
                Ok(m) => m,
                // Deleted meanwhile.
                Err(StoreError::NoSuchUser) => return Err(CoreError::auth_failed()),
                Err(e) => return Err(CoreError::from(e)),
            };
            // Only the accounts that approved: presence is by consent.
            let contacts: Vec<UserId> = contacts
                .await?
                .into_iter()
                .filter(|c| c.subscription == Subscription::Approved)
                .map(|c| c.account.id)
                .collect();
            Ok((mailbox, contacts))
        };
        let (mailbox, contacts) = match state.await {
            Ok(state) => state,
            Err(e) => {
                if made {
                    // The token made for this login would never be handed
                    // out (and a BUSY login must leave nothing behind). The
                    // revocation is submitted when called; its answer does
                    // not matter.
                    drop(self.store.revoke_resume_token(hash));
                }
                return Err(e);
            }
        };
        if let Some(old) = replaced {
            // Only once the login succeeded (a failed one must leave the
            // client its token). Its answer does not matter: a failure
            // leaves the old token to expire.
            drop(self.store.revoke_resume_token(old));
        }
        let session = self.open_session(user, name.clone(), hash, &contacts, quiet);
        let ended = self.hub.limit_sessions(
            user,
            self.config.limits.max_sessions_per_user.max(1),
            CloseReason {
                kind: ErrorKind::LimitReached,
                message: format!(
                    "this account has more than {} sessions; the oldest was ended",
                    self.config.limits.max_sessions_per_user
                ),
            },
        );
        if ended > 0 {
            tracing::debug!(user = %name, ended, "session limit: oldest sessions ended");
        }
        let outcome = LoginOutcome {
            server_final,
            user,
            name,
            session: session.id,
            mailbox,
            resume_token: token,
            resume_expires_ms: expires_ms,
        };
        Ok((session, outcome))
    }

    /// Makes and stores a resume token for `user`: (token, hash, expiry).
    async fn new_resume_token(&self, user: UserId) -> Result<(Vec<u8>, [u8; 32], u64), CoreError> {
        let mut token = vec![0u8; RESUME_TOKEN_BYTES];
        rand::rng().fill_bytes(&mut token);
        let hash = token_hash(&token);
        let ttl_ms = u64::try_from(self.config.resume.ttl.as_millis()).unwrap_or(u64::MAX);
        let expires_ms = now_ms().saturating_add(ttl_ms);
        let created = self.store.create_resume_token(NewResumeToken {
            user,
            hash,
            expires_ms,
            max_per_user: self.config.resume.max_per_user,
        });
        created.await?;
        Ok((token, hash, expires_ms))
    }

    fn open_session(
        self: &Arc<Self>,
        user: UserId,
        name: String,
        token_hash: [u8; 32],
        contacts: &[UserId],
        quiet: bool,
    ) -> Session {
        let id = SessionId(self.next_session.fetch_add(1, Ordering::Relaxed));
        let (tx, events) = mpsc::channel(self.config.limits.session_queue.max(1));
        let flags = Arc::new(SessionFlags::default());
        *lock(&flags.token) = token_hash;
        self.hub.watch_start(user, contacts);
        self.hub
            .register(user, Arc::from(name.as_str()), id, tx, Arc::clone(&flags), quiet);
        Session {
            service: Arc::clone(self),
            user,
            name,
            id,
            events,
            flags,
            window: PushWindow::new(),
            catch_up_read: None,
            held: None,
            token_hash,
        }
    }

    /// Ends every session of `user` (but `keep`, if given) on every front
    /// door and revokes every resume token of the account, so that nothing
    /// issued before keeps working: for a kick, "log out everywhere" and a
    /// password change. The sessions are asked to close at once; the
    /// future resolves once the tokens are revoked, with how many there
    /// were.
    pub fn end_sessions(
        &self,
        user: UserId,
        keep: Option<SessionId>,
        reason: CloseReason,
    ) -> impl Future<Output = Result<u64, CoreError>> + Send + 'static {
        let revoked = self.store.revoke_all_resume_tokens(user);
        self.hub.close_user(user, keep, reason);
        async move { Ok(revoked.await?) }
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
    /// Where pushes stand: the last seq pushed, whether the next ones come
    /// from storage, and the pushes waiting for an ack (bounded by
    /// `Limits::max_unacked`, since pushing stops when it is full).
    window: PushWindow,
    /// The catch-up read in progress, kept across calls of `next_push`: the
    /// connection re-creates that future on every turn of its loop, and a
    /// read re-submitted each time would flood a threaded store with reads
    /// whose answers are thrown away.
    catch_up_read: Option<StoreReply<FetchPage>>,
    /// An event taken from the queue while looking for messages (a presence
    /// change, a wake-up), handled before the queue's next one.
    held: Option<SessionEvent>,
    /// Hash of the resume token this session logged in with or was given;
    /// revoked at logout.
    token_hash: [u8; 32],
}

impl Drop for Session {
    fn drop(&mut self) {
        self.service.hub.unregister(self.user, self.id);
        self.service.hub.watch_end(self.user);
    }
}

/// The filter name of messages a recipient moved to its spam folder.
pub const REPORTED: &str = "reported";

/// Most ids one spam-folder request names.
pub const MAX_SPAM_IDS: usize = 1_000;

/// Most held messages one spam-folder read returns (each may be as large
/// as `max_body_bytes`, and the page is cut to one reply's bytes after it
/// is read); 100 by default, as a mailbox read.
pub const MAX_HELD_PAGE: u32 = 100;

/// Stores a released message in `user`'s mailbox. A message held as it
/// was sent goes under its own client_msg_id: a release interrupted half
/// way and done again finds the message it stored, and so does one whose
/// resend was stored meanwhile (judged otherwise; docs/PROTOCOL.md), so the
/// recipient never gets it twice. A reported message, whose own id names
/// the message it was moved from, and one whose id the sender's client has
/// since used for someone else, go under [`released_id`].
async fn release_one(service: &Service, user: UserId, name: &str, held: &HeldMessage) -> Result<Appended, StoreError> {
    let under = |client_msg_id: String| NewMessage {
        sender: held.sender,
        sender_name: held.sender_name.clone(),
        recipient_key: name_key(name),
        client_msg_id,
        body: held.body.clone(),
        timestamp_ms: held.timestamp_ms,
        quota: service.config.limits.mailbox_quota(),
    };
    if held.filter != REPORTED {
        let appended = service.store.append(under(held.client_msg_id.clone())).await?;
        if !appended.duplicate || appended.message.recipient == user {
            return Ok(appended);
        }
    }
    service.store.append(under(released_id(held.id))).await
}

/// The client_msg_id a released message is stored under when its own
/// cannot be (see [`release_one`]): one per held message (held ids are
/// never reused).
fn released_id(held: u64) -> String {
    format!("released-{held}")
}

/// The ids of a spam-folder request, sorted and without repeats; refused
/// when there are none or too many.
fn check_ids(mut ids: Vec<u64>) -> Result<Vec<u64>, CoreError> {
    if ids.is_empty() || ids.len() > MAX_SPAM_IDS {
        return Err(CoreError::invalid(format!("name 1 to {MAX_SPAM_IDS} messages")));
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The held message `id` of `user`'s spam folder, if it is there.
/// Why a held message from an account the recipient blocks is not released.
fn blocked_sender(held: &HeldMessage) -> CoreError {
    CoreError::refused_by_state(format!(
        "spam message {} is from {:?}, whom you block; unblock them to release it (nothing was released)",
        held.id, held.sender_name
    ))
}

async fn find_held(service: &Service, user: UserId, id: u64) -> Result<Option<HeldMessage>, CoreError> {
    let found = service.store.held(user, id.saturating_sub(1), 1).await?;
    Ok(found.into_iter().next().filter(|h| h.id == id))
}

/// Keeps a recipient's judgement of `body` as labelled data.
async fn label(service: &Service, body: String, spam: bool, score: Option<f32>) -> Result<(), CoreError> {
    service
        .store
        .add_label(FilterLabel {
            id: 0,
            body,
            spam,
            score,
            marked_ms: now_ms(),
        })
        .await?;
    Ok(())
}

/// The answer for a name no account has (or an invalid one).
fn no_such_user(name: &str) -> CoreError {
    CoreError::new(ErrorKind::NoSuchUser, format!("no such user {name:?}"))
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

    /// Why the server ended this session (account deleted, kicked, logged
    /// out everywhere, replaced), if it did. Front doors that take no pushes
    /// (HTTP) check it before every request: an ended session must not act.
    pub fn closing(&self) -> Option<CloseReason> {
        self.flags.closing()
    }

    /// Starts proving the password again inside this session (before
    /// deleting the account or changing the password): a SCRAM exchange for
    /// this session's account, throttled like a login. A name other than
    /// the session's gets a challenge that can never succeed.
    pub fn reauth_start(
        &self,
        client_first: &[u8],
        peer: Option<IpAddr>,
    ) -> impl Future<Output = Result<AuthPending, CoreError>> + Send + 'static {
        let service = Arc::clone(&self.service);
        let user = self.user;
        let client_first = client_first.to_vec();
        async move {
            let mut pending = service.auth_start(&client_first, peer).await?;
            if pending.account.as_ref().map(|(id, _)| *id) != Some(user) {
                pending.account = None;
            }
            Ok(pending)
        }
    }

    /// Checks the proof of a [`Session::reauth_start`] exchange; returns
    /// the server-final-message. Failures count like failed logins.
    fn reauth_finish(&self, pending: &AuthPending, client_final: &[u8]) -> Result<String, CoreError> {
        let service = &self.service;
        if let Err(e) = pending.attempt.check(Instant::now()) {
            service.counters.logins_rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        let verified = pending.exchange.finish(client_final).and_then(|server_final| {
            match pending.account.as_ref().map(|(id, _)| *id) {
                Some(id) if id == self.user => Ok(server_final),
                _ => Err(CoreError::auth_failed()),
            }
        });
        if let Err(e) = &verified {
            if e.kind == ErrorKind::AuthFailed {
                service.login_failed(pending.attempt.account(), pending.attempt.ip());
            }
            service.counters.logins_failed.fetch_add(1, Ordering::Relaxed);
        }
        verified
    }

    /// Deletes the account once the password is proved again: its mailbox
    /// goes with it, its other sessions are closed with ACCOUNT_DELETED.
    /// The caller ends this session on success.
    pub async fn delete_account_confirmed(&self, pending: &AuthPending, client_final: &[u8]) -> Result<(), CoreError> {
        self.reauth_finish(pending, client_final)?;
        self.delete_account().await
    }

    /// Changes the password once the old one is proved again: the new
    /// credentials (derived by the client) replace the old, every other
    /// session of the account ends, every resume token is revoked, and this
    /// session gets a new one. Returns (server_final, token, expiry).
    pub async fn change_password(
        &mut self,
        pending: &AuthPending,
        client_final: &[u8],
        credentials: StoredCredentials,
    ) -> Result<(String, Vec<u8>, u64), CoreError> {
        let config = &self.service.config;
        if !config.auth.mechanisms.contains(&credentials.mechanism) {
            return Err(CoreError::new(
                ErrorKind::UnsupportedMechanism,
                format!("{} is not accepted for new passwords", credentials.mechanism.name()),
            ));
        }
        credentials.validate(config.auth.iterations)?;
        let server_final = self.reauth_finish(pending, client_final)?;
        self.service.store.set_credentials(self.user, credentials).await?;
        self.service.hub.close_user(
            self.user,
            Some(self.id),
            CloseReason {
                kind: ErrorKind::NotAuthenticated,
                message: "the password was changed".into(),
            },
        );
        let (token, hash, expires_ms) = self.service.new_resume_token(self.user).await?;
        self.token_hash = hash;
        *lock(&self.flags.token) = hash;
        Ok((server_final, token, expires_ms))
    }

    /// Ends every session of this account on every front door, this one
    /// included, and revokes every resume token ("log out everywhere").
    /// The caller drops this session when the future resolves.
    pub fn logout_all(&self) -> impl Future<Output = Result<u64, CoreError>> + Send + 'static {
        self.service.end_sessions(
            self.user,
            Some(self.id),
            CloseReason {
                kind: ErrorKind::NotAuthenticated,
                message: "logged out on every device".into(),
            },
        )
    }

    /// Stores a message for `to`; resolves once it is durable. A recipient
    /// with subscribed sessions is notified right after.
    ///
    /// Every send request takes a token from the account's bucket
    /// (`send_rate_per_account`, shared by all its sessions) before
    /// anything else; without one it is refused RATE_LIMITED, with the
    /// time until a token is there, and nothing else happens.
    pub fn send(
        &self,
        to: &str,
        client_msg_id: &str,
        body: String,
    ) -> Result<impl Future<Output = Result<Accepted, CoreError>> + Send + 'static, CoreError> {
        if let Err(wait) = self.service.send_rate.take(&self.user, Instant::now()) {
            self.service.counters.sends_rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(CoreError::new(
                ErrorKind::RateLimited,
                format!(
                    "sending faster than {} messages a second; wait before sending more",
                    self.service.config.limits.send_rate_per_account
                ),
            )
            .with_retry_after(retry_hint(wait)));
        }
        self.service.hub.spent(Spent::Send { user: self.user });
        self.service.send_from(self.user, &self.name, to, client_msg_id, body)
    }

    /// Offers a file to `to`: the offer is checked, then sent as a message
    /// whose body carries it, under every rule of [`Session::send`].
    pub fn offer_file(
        &self,
        to: &str,
        client_msg_id: &str,
        name: &str,
        size: u64,
        sha256: &[u8],
    ) -> Result<impl Future<Output = Result<Accepted, CoreError>> + Send + 'static, CoreError> {
        let offer = FileOffer::new(name, size, sha256, self.service.config.limits.max_file_bytes)?;
        self.send(to, client_msg_id, offer.body())
    }

    /// The file offer at `seq` of this session's mailbox.
    pub fn find_offer(
        &self,
        seq: Seq,
    ) -> impl Future<Output = Result<(StoredMessage, FileOffer), CoreError>> + Send + 'static {
        let reply = self
            .service
            .store
            .fetch(self.user, Seq(seq.0.saturating_sub(1)), 1, true);
        async move {
            let message = reply
                .await?
                .into_iter()
                .next()
                .filter(|m| m.seq == seq)
                .ok_or_else(|| CoreError::invalid(format!("there is no message {} in your mailbox", seq.0)))?;
            let offer = FileOffer::parse(&message.body)
                .ok_or_else(|| CoreError::invalid(format!("message {} is not a file offer", seq.0)))?;
            Ok((message, offer))
        }
    }

    /// The account `name` names: its id and its name as registered.
    pub fn find_user(&self, name: &str) -> impl Future<Output = Result<(UserId, String), CoreError>> + Send + 'static {
        let reply = self.service.store.find_account(&name_key(name));
        let name = name.to_owned();
        async move {
            let account = reply.await?.ok_or_else(|| no_such_user(&name))?;
            Ok((account.id, account.name))
        }
    }

    /// Refuses the offer at `seq`: a sender waiting for it is told, the
    /// offer leaves the mailbox, and the sender finds a message saying so
    /// (it may be offline now).
    pub fn refuse_offer(&self, seq: Seq) -> impl Future<Output = Result<MessageId, CoreError>> + Send + 'static {
        let found = self.find_offer(seq);
        let service = Arc::clone(&self.service);
        let (user, name) = (self.user, self.name.clone());
        async move {
            let (message, offer) = found.await?;
            service
                .transfers
                .refuse(message.id, (message.sender, &message.sender_name), (user, &name));
            service.store.delete_messages(user, vec![message.id]).await?;
            let notice = format!("refused your file {} (offer {})", offer.name, message.id.0);
            let client_msg_id = format!("refused-{}", message.id.0);
            if let Ok(sent) = service.send_from(user, &name, &message.sender_name, &client_msg_id, notice) {
                // Best effort: the sender may have gone, or block us.
                let _ = sent.await;
            }
            Ok(message.id)
        }
    }

    /// Messages in this session's spam folder with id > `after`, oldest
    /// first, at most `limit` (0: the default), and whether more follow.
    pub fn held(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<impl Future<Output = Result<(Vec<HeldMessage>, bool), CoreError>> + Send + 'static, CoreError> {
        let limit = check_limit(limit, MAX_HELD_PAGE, MAX_HELD_PAGE, "spam folder read")?;
        let budget = self.service.config.limits.max_reply_bytes;
        let reply = self.service.store.held(self.user, after, limit.saturating_add(1));
        Ok(async move {
            let mut held = reply.await?;
            let mut more = held.len() > limit as usize;
            held.truncate(limit as usize);
            // Cut to one reply's bytes, as a mailbox read is (the first
            // message goes whatever its size).
            let mut spent = 0;
            if let Some(fits) = held.iter().position(|h| {
                spent += h.body.len() + h.sender_name.len() + h.client_msg_id.len() + MESSAGE_OVERHEAD_BYTES;
                spent > budget
            }) {
                held.truncate(fits.max(1));
                more = true;
            }
            Ok((held, more))
        })
    }

    /// Moves held messages into the mailbox ("not spam"): each is stored
    /// as sent, keeping its time, then leaves the spam folder, and its text
    /// is kept as labelled data. Returns, per id released, its new seq;
    /// ids not in the folder are left out. A release interrupted half way
    /// is finished by releasing again (the store is idempotent on the
    /// sender's client_msg_id).
    pub fn release(
        &self,
        ids: Vec<u64>,
    ) -> Result<impl Future<Output = Result<Vec<(u64, Seq)>, CoreError>> + Send + 'static, CoreError> {
        let ids = check_ids(ids)?;
        let service = Arc::clone(&self.service);
        let (user, name) = (self.user, self.name.clone());
        Ok(async move {
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(held) = find_held(&service, user, id).await? {
                    found.push(held);
                }
            }
            // A message from an account the recipient blocks cannot be
            // stored (a block refuses it, as it refuses a send): say so
            // before releasing any, so that a refused request changes
            // nothing. (A block made between this check and an append
            // below is still refused, by the append.)
            if !found.is_empty() {
                let blocked = service.store.list_blocked(user).await?;
                if let Some(held) = found.iter().find(|h| blocked.iter().any(|b| b.id == h.sender)) {
                    return Err(blocked_sender(held));
                }
            }
            let mut released = Vec::with_capacity(found.len());
            for held in found {
                let id = held.id;
                let appended = release_one(&service, user, &name, &held).await.map_err(|e| match e {
                    StoreError::NoSuchUser => blocked_sender(&held),
                    other => other.into(),
                })?;
                service.store.drop_held(user, vec![id]).await?;
                label(&service, held.body, false, Some(held.score)).await?;
                released.push((id, appended.message.seq));
            }
            Ok(released)
        })
    }

    /// Drops held messages from the spam folder; with `spam`, their texts
    /// are kept as labelled spam first ("report spam"). Returns the ids
    /// dropped.
    pub fn drop_held(
        &self,
        ids: Vec<u64>,
        spam: bool,
    ) -> Result<impl Future<Output = Result<Vec<u64>, CoreError>> + Send + 'static, CoreError> {
        let ids = check_ids(ids)?;
        let service = Arc::clone(&self.service);
        let user = self.user;
        Ok(async move {
            let mut judged = Vec::new();
            if spam {
                for &id in &ids {
                    if let Some(held) = find_held(&service, user, id).await? {
                        judged.push(held);
                    }
                }
            }
            let dropped = service.store.drop_held(user, ids).await?;
            // Labelled once each: only what this request dropped.
            for held in judged.into_iter().filter(|h| dropped.contains(&h.id)) {
                label(&service, held.body, true, Some(held.score)).await?;
            }
            Ok(dropped)
        })
    }

    /// Reports mailbox messages as spam: each is kept as labelled spam,
    /// moved to the spam folder (filter `reported`) and deleted from the
    /// mailbox. Returns, per seq reported, its spam-folder id; seqs not in
    /// the mailbox are left out.
    pub fn report_spam(
        &self,
        seqs: Vec<Seq>,
    ) -> Result<impl Future<Output = Result<Vec<(Seq, u64)>, CoreError>> + Send + 'static, CoreError> {
        let seqs = check_ids(seqs.into_iter().map(|s| s.0).collect())?;
        let service = Arc::clone(&self.service);
        let (user, name) = (self.user, self.name.clone());
        Ok(async move {
            let mut reported = Vec::with_capacity(seqs.len());
            for seq in seqs {
                let found = service.store.fetch(user, Seq(seq.saturating_sub(1)), 1, true).await?;
                let Some(message) = found.into_iter().next().filter(|m| m.seq.0 == seq) else {
                    continue;
                };
                let body = message.body.clone();
                let held = service
                    .store
                    .hold(NewHeld {
                        message: NewMessage {
                            sender: message.sender,
                            sender_name: message.sender_name,
                            recipient_key: name_key(&name),
                            client_msg_id: message.client_msg_id,
                            body: message.body,
                            timestamp_ms: message.timestamp_ms,
                            quota: MailboxQuota::UNLIMITED,
                        },
                        filter: REPORTED.to_owned(),
                        score: 1.0,
                        max_held: service.filters.settings().max_held.max(1),
                        send: false,
                    })
                    .await;
                // A message from an account the recipient blocks cannot
                // be held (a block refuses it, as it refuses a send): it is
                // deleted, and the report still counts (spam folder id 0).
                let held_id = match held {
                    Ok(held) => held.id,
                    Err(StoreError::NoSuchUser) => 0,
                    Err(e) => return Err(e.into()),
                };
                let deleted = service.store.delete_messages(user, vec![message.id]).await?;
                if !deleted.is_empty() {
                    label(&service, body, true, None).await?;
                }
                reported.push((Seq(seq), held_id));
            }
            Ok(reported)
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
        let budget = self.service.config.limits.max_reply_bytes;
        let reply = self
            .service
            .store
            .fetch_page(self.user, after, limit, include_acked, budget);
        Ok(async move {
            let page = reply.await?;
            Ok((page.messages, page.more))
        })
    }

    /// Acknowledges messages; returns (newly acked, mailbox state).
    pub fn ack(
        &mut self,
        range: AckRange,
    ) -> Result<impl Future<Output = Result<(u64, MailboxState), CoreError>> + Send + 'static, CoreError> {
        if range.seqs.len() > MAX_IDS_PER_REQUEST {
            return Err(CoreError::invalid(format!(
                "at most {MAX_IDS_PER_REQUEST} seqs per ack"
            )));
        }
        // What this session pushed and now sees acknowledged no longer
        // waits for the ack timer.
        self.window.acked(range.up_to, &range.seqs);
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
        let me = self.user;
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
                .map(|r| {
                    // The caller is online to itself, even in a quiet session.
                    let online = r.id == me || (service.hub.sees(me, r.id) && service.hub.is_online(r.id));
                    (r.name, online)
                })
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
    async fn delete_account(&self) -> Result<(), CoreError> {
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

    /// Ends the session's login: its resume token stops working. The caller
    /// drops the session when the future resolves.
    pub fn logout(&self) -> impl Future<Output = Result<(), CoreError>> + Send + 'static {
        self.service.forget_session_key(self.user, self.token_hash)
    }

    /// Adds `name` to the contacts and asks to see its presence (a pending
    /// request, shown to `name`'s sessions, until it approves); returns its
    /// display name and whether it is online as far as the caller may see.
    pub fn add_contact(
        &self,
        name: &str,
    ) -> Result<impl Future<Output = Result<(String, bool), CoreError>> + Send + 'static, CoreError> {
        let contact = UserName::parse(name).map_err(|_| no_such_user(name))?;
        let max = self.service.config.limits.max_contacts;
        let reply = self.service.store.request_presence(self.user, contact.key(), max);
        let service = Arc::clone(&self.service);
        let user = self.user;
        let me: Arc<str> = Arc::from(self.name.as_str());
        let name = name.to_owned();
        Ok(async move {
            let requested = reply.await.map_err(|e| match e {
                StoreError::NoSuchUser => no_such_user(&name),
                other => other.into(),
            })?;
            let target = requested.target;
            if requested.blocked_by_requester {
                return Err(CoreError::refused_by_state(format!(
                    "you block {}; unblock them before asking to see their presence",
                    target.name
                )));
            }
            if requested.new_request {
                service
                    .hub
                    .notify(target.id, || SessionEvent::PresenceRequest { from: Arc::clone(&me) });
            }
            let approved = requested.subscription == Subscription::Approved;
            if approved {
                service
                    .hub
                    .watch_change_everywhere(user, target.id, &Arc::from(target.name.as_str()), true);
            }
            Ok((target.name, approved && service.hub.is_online(target.id)))
        })
    }

    /// Approves `name`'s pending request to see this account's presence:
    /// `name`'s sessions are told, then get this account's presence.
    /// Approving again is not an error; approving without a request is
    /// INVALID_REQUEST.
    pub fn approve_presence(
        &self,
        name: &str,
    ) -> Result<impl Future<Output = Result<(), CoreError>> + Send + 'static, CoreError> {
        self.answer_presence(name, true)
    }

    /// Refuses `name`'s pending request, or takes back an approval given
    /// earlier (RFC 6121's "unsubscribed"). Nobody is told of a refusal; a
    /// revoked watcher that is online gets this account's presence as
    /// offline. Nothing to refuse is not an error.
    pub fn deny_presence(
        &self,
        name: &str,
    ) -> Result<impl Future<Output = Result<(), CoreError>> + Send + 'static, CoreError> {
        self.answer_presence(name, false)
    }

    /// Approves or refuses `name`'s request (see the two above).
    fn answer_presence(
        &self,
        name: &str,
        approve: bool,
    ) -> Result<impl Future<Output = Result<(), CoreError>> + Send + 'static, CoreError> {
        let requester = UserName::parse(name).map_err(|_| no_such_user(name))?;
        let reply = self.service.store.answer_presence(self.user, requester.key(), approve);
        let service = Arc::clone(&self.service);
        let user = self.user;
        let me: Arc<str> = Arc::from(self.name.as_str());
        let name = name.to_owned();
        Ok(async move {
            let change = reply.await.map_err(|e| match e {
                StoreError::NoSuchUser => no_such_user(&name),
                other => other.into(),
            })?;
            if !approve {
                service.hub.stop_seeing(change.other.id, user, &me);
                return Ok(());
            }
            match (change.before, change.after) {
                (Subscription::Pending, Subscription::Approved) => {
                    let watcher = change.other.id;
                    service.hub.watch_change_everywhere(watcher, user, &me, true);
                    service
                        .hub
                        .notify(watcher, || SessionEvent::PresenceApproved { name: Arc::clone(&me) });
                    let online = service.hub.is_online(user);
                    service.hub.notify(watcher, || SessionEvent::Presence {
                        name: Arc::clone(&me),
                        online,
                    });
                    Ok(())
                }
                (_, Subscription::Approved) => Ok(()),
                _ => Err(CoreError::refused_by_state(format!(
                    "{} has not asked to see your presence",
                    change.other.name
                ))),
            }
        })
    }

    /// Withdraws this account's request to see `name`'s presence, or stops
    /// seeing it (RFC 6121's "unsubscribe"); the contact stays. Nothing to
    /// withdraw is not an error.
    pub fn cancel_presence(
        &self,
        name: &str,
    ) -> Result<impl Future<Output = Result<(), CoreError>> + Send + 'static, CoreError> {
        let target = UserName::parse(name).map_err(|_| no_such_user(name))?;
        let reply = self.service.store.cancel_presence(self.user, target.key());
        let service = Arc::clone(&self.service);
        let user = self.user;
        let name = name.to_owned();
        Ok(async move {
            let change = reply.await.map_err(|e| match e {
                StoreError::NoSuchUser => no_such_user(&name),
                other => other.into(),
            })?;
            if change.after == Subscription::None {
                service.hub.watch_change_everywhere(
                    user,
                    change.other.id,
                    &Arc::from(change.other.name.as_str()),
                    false,
                );
            }
            Ok(())
        })
    }

    /// The accounts waiting for this account's answer, in name order (at
    /// most [`MAX_PRESENCE_REQUESTS_LISTED`]).
    pub fn presence_requests(&self) -> impl Future<Output = Result<Vec<String>, CoreError>> + Send + 'static {
        let reply = self
            .service
            .store
            .presence_requests(self.user, MAX_PRESENCE_REQUESTS_LISTED);
        async move { Ok(reply.await?.into_iter().map(|a| a.name).collect()) }
    }

    /// Blocks `name` (XEP-0191): its messages to this account are refused
    /// as if this account did not exist, no presence flows either way
    /// (every subscription between the two ends), its pending request is
    /// dropped and new ones are never shown. At most `max_contacts` blocks.
    pub fn block(&self, name: &str) -> Result<impl Future<Output = Result<(), CoreError>> + Send + 'static, CoreError> {
        let target = UserName::parse(name).map_err(|_| no_such_user(name))?;
        if target.key() == name_key(&self.name) {
            return Err(CoreError::refused_by_state("you cannot block yourself"));
        }
        let max = self.service.config.limits.max_contacts;
        let reply = self.service.store.block(self.user, target.key(), max);
        let service = Arc::clone(&self.service);
        let user = self.user;
        let me: Arc<str> = Arc::from(self.name.as_str());
        let name = name.to_owned();
        Ok(async move {
            let outcome = reply.await.map_err(|e| match e {
                StoreError::NoSuchUser => no_such_user(&name),
                other => other.into(),
            })?;
            let them = outcome.target.id;
            let their_name: Arc<str> = Arc::from(outcome.target.name.as_str());
            service.hub.stop_seeing(them, user, &me);
            service.hub.stop_seeing(user, them, &their_name);
            Ok(())
        })
    }

    /// Ends a block of `name`; returns whether there was one.
    pub fn unblock(&self, name: &str) -> impl Future<Output = Result<bool, CoreError>> + Send + 'static {
        let reply = self.service.store.unblock(self.user, &name_key(name));
        async move { Ok(reply.await?) }
    }

    /// The accounts this account blocks, in name order.
    pub fn list_blocked(&self) -> impl Future<Output = Result<Vec<String>, CoreError>> + Send + 'static {
        let reply = self.service.store.list_blocked(self.user);
        async move { Ok(reply.await?.into_iter().map(|a| a.name).collect()) }
    }

    /// Whether this account takes messages from the web pager, after
    /// setting it when `accept` is given. A refused pager message is
    /// answered as one to an account that does not exist, so the visitor
    /// learns nothing.
    pub fn pager(&self, accept: Option<bool>) -> impl Future<Output = Result<bool, CoreError>> + Send + 'static {
        let reply = self
            .service
            .store
            .refuse_sender(self.user, PAGER_SENDER, accept.map(|a| !a));
        async move { Ok(!reply.await?) }
    }

    /// Stops following `name`; returns whether it was a contact.
    pub fn remove_contact(&self, name: &str) -> impl Future<Output = Result<bool, CoreError>> + Send + 'static {
        let key = name_key(name);
        let removed = self.service.store.remove_contact(self.user, &key);
        let lookup = self.service.store.find_account(&key);
        let service = Arc::clone(&self.service);
        let user = self.user;
        async move {
            let removed = removed.await?;
            if let Some(account) = lookup.await? {
                service
                    .hub
                    .watch_change_everywhere(user, account.id, &Arc::from(account.name.as_str()), false);
            }
            Ok(removed)
        }
    }

    /// The contacts, in name order, with their online state as far as
    /// this account may see it.
    pub fn list_contacts(&self) -> impl Future<Output = Result<Vec<(String, bool)>, CoreError>> + Send + 'static {
        let contacts = self.contacts();
        async move { Ok(contacts.await?.into_iter().map(|c| (c.name, c.online)).collect()) }
    }

    /// The contacts, in name order, each with this account's subscription
    /// to its presence and its online state (only when approved).
    pub fn contacts(&self) -> impl Future<Output = Result<Vec<ContactView>, CoreError>> + Send + 'static {
        let reply = self.service.store.contacts_with_presence(self.user);
        let service = Arc::clone(&self.service);
        async move {
            let contacts = reply.await?;
            Ok(contacts
                .into_iter()
                .map(|c| ContactView {
                    online: c.subscription == Subscription::Approved && service.hub.is_online(c.account.id),
                    name: c.account.name,
                    subscription: c.subscription,
                })
                .collect())
        }
    }

    /// Whether more pushes may go out: false while `max_unacked` pushed
    /// messages wait for their ack. Messages meanwhile wait in the mailbox.
    pub fn can_push(&self) -> bool {
        self.window.can_push(self.service.config.limits.max_unacked)
    }

    /// Whether pushed messages wait for an ack on this session.
    pub fn has_unacked(&self) -> bool {
        self.window.has_unacked()
    }

    /// The ack timeout expired: push again, from storage, every message
    /// from the oldest one unacknowledged on this session that is still
    /// unacknowledged (acks from other sessions count). Returns how many
    /// pushes are being retried.
    pub fn redeliver(&mut self) -> usize {
        let count = self.window.rewind();
        if count == 0 {
            return 0;
        }
        self.catch_up_read = None;
        self.service
            .counters
            .messages_resent
            .fetch_add(count as u64, Ordering::Relaxed);
        count
    }

    /// Starts live delivery: every unacknowledged message with seq > `after`
    /// is pushed first, then new messages as they are stored.
    pub fn subscribe(&mut self, after: Seq) -> impl Future<Output = Result<MailboxState, CoreError>> + Send + 'static {
        // Subscribe before the catch-up read is submitted, so that a message
        // stored in between is either in the read or notified (or both; the
        // seq check drops the second copy).
        self.flags.subscribed.store(true, Ordering::Release);
        self.window.subscribe(after);
        self.catch_up_read = None;
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
                self.window.lagged();
            }
            if self.window.needs_catch_up() {
                let read = match &mut self.catch_up_read {
                    Some(read) => read,
                    empty => {
                        // Everything queued now is stored already, so the
                        // read covers it: drop it rather than let the queue
                        // fill up while the read waits for the store. A full
                        // queue drops notifications and sets `lagged`, which
                        // starts the next catch-up: a session that fell
                        // behind once would otherwise read everything from
                        // storage, 256 messages per store round trip, for as
                        // long as the load lasts.
                        while self.held.is_none() {
                            match self.events.try_recv() {
                                Ok(SessionEvent::Message(_)) => {}
                                Ok(other) => self.held = Some(other),
                                Err(_) => break,
                            }
                        }
                        self.service.counters.catch_up_reads.fetch_add(1, Ordering::Relaxed);
                        let read = self.service.store.fetch_page(
                            self.user,
                            self.window.last_pushed(),
                            CATCH_UP_BATCH,
                            false,
                            self.service.config.limits.max_reply_bytes,
                        );
                        empty.insert(read)
                    }
                };
                let result = read.await;
                self.catch_up_read = None;
                let page = result?;
                let batch = page.messages;
                self.window.page_read(batch.last().map(|m| m.seq), page.more);
                if !batch.is_empty() {
                    return Ok(self.pushed(batch.into_iter().map(Arc::new).collect()));
                }
                continue;
            }
            let event = match self.held.take() {
                Some(event) => event,
                None => {
                    let Some(event) = self.events.recv().await else {
                        return Ok(PushEvent::Closed(CloseReason {
                            kind: ErrorKind::ShuttingDown,
                            message: "server is shutting down".into(),
                        }));
                    };
                    event
                }
            };
            let first = match event {
                SessionEvent::Message(m) => m,
                SessionEvent::Presence { name, online } => return Ok(PushEvent::Presence { name, online }),
                SessionEvent::PresenceRequest { from } => return Ok(PushEvent::PresenceRequest { from }),
                SessionEvent::PresenceApproved { name } => return Ok(PushEvent::PresenceApproved { name }),
                SessionEvent::Wake => continue,
            };
            if self.window.offer(first.seq) != Offer::Next {
                // Stale: dropped. A gap: the window now catches up.
                continue;
            }
            let mut batch = vec![first];
            // Coalesce whatever else is already queued into the same push.
            while batch.len() < CATCH_UP_BATCH as usize {
                match self.events.try_recv() {
                    Ok(SessionEvent::Message(m)) => match self.window.offer(m.seq) {
                        Offer::Stale => {}
                        Offer::Next => batch.push(m),
                        Offer::Gap => break,
                    },
                    Ok(other) => {
                        self.held = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            return Ok(self.pushed(batch));
        }
    }

    fn pushed(&mut self, batch: Vec<Arc<StoredMessage>>) -> PushEvent {
        self.service
            .counters
            .messages_pushed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.window.pushed(batch.iter().map(|m| m.seq));
        PushEvent::Messages(batch)
    }
}
