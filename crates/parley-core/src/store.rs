//! The storage boundary. The core reaches accounts and mailboxes only through
//! [`Store`]; `parley-store` implements it (memory, SQLite, PostgreSQL).
//!
//! **Ordering contract.** A store operation is *submitted* when the trait
//! method is called, not when its [`StoreReply`] is first polled. Two calls
//! made one after the other from the same task take effect in that order,
//! even if their replies are awaited later or concurrently. Connections rely
//! on this to pipeline sends while keeping per-sender order.
//!
//! **Durability contract.** A reply that reports a write as done means the
//! write is durable to the store's configured level; for a read, that what it
//! returns is committed.
//!
//! **Notification contract.** A store calls its [`OnStored`] hook with every
//! message an append stored, once it is durable and before the append is
//! answered, in the order it made them durable. Live delivery follows that
//! order whatever order the callers await their replies in: a connection
//! with many sends in flight polls their replies in whatever order its
//! executor wakes them, and delivery from there reached recipients out of
//! order, which they then had to read back from storage.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::histogram::HistogramSnapshot;
use crate::ids::{MessageId, Seq, UserId};
use crate::name::NamePattern;
use crate::presence::{BlockOutcome, Contact, PresenceChange, PresenceRequested};
use crate::scram::StoredCredentials;

/// Why a store operation failed.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("name taken")]
    NameTaken,
    #[error("no such user")]
    NoSuchUser,
    /// The write queue is full; nothing was done.
    #[error("store busy")]
    Busy { retry_after_ms: u32 },
    /// The store is shutting down or has stopped.
    #[error("store closed")]
    Closed,
    /// A per-account limit is reached; nothing was done.
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// The recipient's mailbox is at its quota ([`MailboxQuota`]); nothing
    /// was stored.
    #[error("mailbox full")]
    MailboxFull,
    /// The invite code of a registration is unknown, used or expired;
    /// nothing was done.
    #[error("invite invalid")]
    InviteInvalid,
    /// The storage cannot take writes now (disk full, read-only database,
    /// I/O error): nothing was done, and the same request may succeed once
    /// the operator fixed the cause. Reads still work.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("store backend error: {0}")]
    Backend(String),
}

/// How long a client is asked to wait after [`StoreError::Unavailable`]:
/// an operator's fix (freeing space) takes longer than an overload.
pub const STORAGE_RETRY_AFTER_MS: u32 = 5_000;

pub type StoreResult<T> = Result<T, StoreError>;

/// What a store tells of each message an append stored (see the
/// notification contract above): the hub's live delivery. Called on the
/// store's own thread, so it must not block.
#[derive(Clone)]
pub struct OnStored(Arc<StoredFn>);

/// The function inside an [`OnStored`].
type StoredFn = dyn Fn(&Arc<StoredMessage>) + Send + Sync;

impl OnStored {
    /// A hook that calls `hook` with each stored message.
    pub fn new(hook: impl Fn(&Arc<StoredMessage>) + Send + Sync + 'static) -> OnStored {
        OnStored(Arc::new(hook))
    }
}

impl std::fmt::Debug for OnStored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnStored")
    }
}

/// Where a store keeps its [`OnStored`] hook: set once, then read by every
/// append.
#[derive(Debug, Default)]
pub struct StoredHook(std::sync::OnceLock<OnStored>);

impl StoredHook {
    /// Sets the hook, unless one is set already (the first one stays).
    pub fn set(&self, hook: OnStored) {
        let _ = self.0.set(hook);
    }

    /// The hook, once set.
    pub fn get(&self) -> Option<&OnStored> {
        self.0.get()
    }
}

/// Tells `hook` of the message `result` stored, if it stored one (not a
/// duplicate, not an error): what every store does just before it answers
/// an append.
pub fn announce_stored(hook: Option<&OnStored>, result: &StoreResult<Appended>) {
    if let (Some(hook), Ok(appended)) = (hook, result)
        && !appended.duplicate
    {
        (hook.0)(&appended.message);
    }
}

/// The eventual answer to a submitted store operation.
///
/// A concrete future rather than a boxed one: in-memory stores answer at
/// once ([`StoreReply::ready`]), threaded stores answer through a oneshot
/// channel ([`StoreReply::pending`]).
#[must_use = "a store reply carries the operation's result"]
pub struct StoreReply<T> {
    state: ReplyState<T>,
}

enum ReplyState<T> {
    Ready(Option<StoreResult<T>>),
    Pending(oneshot::Receiver<StoreResult<T>>),
}

impl<T> StoreReply<T> {
    pub fn ready(result: StoreResult<T>) -> Self {
        StoreReply {
            state: ReplyState::Ready(Some(result)),
        }
    }

    pub fn pending(receiver: oneshot::Receiver<StoreResult<T>>) -> Self {
        StoreReply {
            state: ReplyState::Pending(receiver),
        }
    }
}

impl<T> Unpin for StoreReply<T> {}

impl<T> Future for StoreReply<T> {
    type Output = StoreResult<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            ReplyState::Ready(result) => Poll::Ready(result.take().unwrap_or(Err(StoreError::Closed))),
            // A dropped sender means the store stopped before answering.
            ReplyState::Pending(rx) => Pin::new(rx).poll(cx).map(|r| r.unwrap_or(Err(StoreError::Closed))),
        }
    }
}

/// An account as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub id: UserId,
    /// The name as registered (display case).
    pub name: String,
    pub credentials: StoredCredentials,
}

/// A new account to create.
#[derive(Clone, Debug)]
pub struct NewAccount {
    pub name: String,
    /// Lowercase lookup key; unique among live accounts.
    pub name_key: String,
    pub credentials: StoredCredentials,
    /// The invite this registration uses up, when registration is by
    /// invitation: consumed in the same step as the account is created.
    pub invite: Option<InviteUse>,
}

/// An invite code presented with a registration. Only its hash is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InviteUse {
    /// SHA-256 of the code.
    pub hash: [u8; 32],
    /// Now, ms since the Unix epoch: an invite expiring at or before it is
    /// not valid.
    pub now_ms: u64,
}

/// An invite code to remember. Only its hash is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewInvite {
    /// SHA-256 of the code.
    pub hash: [u8; 32],
    /// When it stops working, ms since the Unix epoch.
    pub expires_ms: u64,
    /// Now: invites expired by then are forgotten.
    pub now_ms: u64,
}

/// One row of an account listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountSummary {
    pub id: UserId,
    pub name: String,
    pub name_key: String,
}

/// A message to store in a recipient's mailbox.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub sender: UserId,
    pub sender_name: String,
    /// Lowercase key of the recipient's name; the store resolves it in the
    /// same step as the insert, so that a send is one ordered operation.
    pub recipient_key: String,
    pub client_msg_id: String,
    pub body: String,
    pub timestamp_ms: u64,
    /// What the recipient's mailbox may hold; checked in the same step as
    /// the insert.
    pub quota: MailboxQuota,
}

/// The most a mailbox may hold. Every stored message counts, acknowledged
/// or not (both take space); deleting messages frees room. An append that
/// would pass either bound is refused [`StoreError::MailboxFull`] (a retry
/// of an append already stored is still answered as a duplicate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailboxQuota {
    /// Messages.
    pub max_messages: u64,
    /// Bytes of bodies ([`body_bytes`]).
    pub max_bytes: u64,
}

impl MailboxQuota {
    /// No bound (tests and tools that fill mailboxes on purpose).
    pub const UNLIMITED: MailboxQuota = MailboxQuota {
        max_messages: u64::MAX,
        max_bytes: u64::MAX,
    };

    /// Whether a mailbox holding `messages` messages of `bytes` bytes has
    /// room for one more of `body` bytes.
    pub fn admits(&self, messages: u64, bytes: u64, body: u64) -> bool {
        messages < self.max_messages && bytes.saturating_add(body) <= self.max_bytes
    }
}

/// What a message counts against [`MailboxQuota::max_bytes`]: its body's
/// length in bytes of UTF-8.
pub fn body_bytes(body: &str) -> u64 {
    u64::try_from(body.len()).unwrap_or(u64::MAX)
}

/// A message as stored in one mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: MessageId,
    pub recipient: UserId,
    pub seq: Seq,
    pub sender: UserId,
    pub sender_name: String,
    pub client_msg_id: String,
    pub body: String,
    pub timestamp_ms: u64,
    pub acked: bool,
}

/// The result of an append.
#[derive(Clone, Debug)]
pub struct Appended {
    pub message: Arc<StoredMessage>,
    /// True when the sender's client_msg_id was already stored: nothing new
    /// was written and `message` is the original.
    pub duplicate: bool,
}

/// One page of a mailbox read ([`Store::fetch_page`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchPage {
    /// The messages, oldest first.
    pub messages: Vec<StoredMessage>,
    /// Whether more messages match after the last one returned.
    pub more: bool,
}

/// What one message counts against a read's byte budget: its text fields
/// and a fixed allowance for the rest (ids, seq, time, flags, framing).
pub fn message_cost(message: &StoredMessage) -> usize {
    message.body.len() + message.sender_name.len() + message.client_msg_id.len() + MESSAGE_OVERHEAD_BYTES
}

/// The fixed part of [`message_cost`].
pub const MESSAGE_OVERHEAD_BYTES: usize = 64;

/// A mailbox's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MailboxState {
    /// Highest seq ever assigned (0 if none).
    pub last_seq: Seq,
    /// Messages not yet acknowledged.
    pub unread: u64,
}

/// Which messages an ack covers.
#[derive(Clone, Debug, Default)]
pub struct AckRange {
    /// Every message with seq <= this (0: none).
    pub up_to: Seq,
    /// And each of these.
    pub seqs: Vec<Seq>,
}

/// A message the filter pipeline held in its recipient's spam folder
/// instead of the mailbox: never pushed, never counted as unread, read
/// only on request. Held messages have ids of their own, apart from
/// mailbox message ids.
#[derive(Clone, Debug, PartialEq)]
pub struct HeldMessage {
    /// The spam-folder id (its own sequence, never reused).
    pub id: u64,
    pub recipient: UserId,
    pub sender: UserId,
    pub sender_name: String,
    pub client_msg_id: String,
    pub body: String,
    /// When it was sent, ms since the Unix epoch; a release keeps it.
    pub timestamp_ms: u64,
    /// The filter that held it (`spam` for the classifier).
    pub filter: String,
    /// That filter's score, 0 to 1.
    pub score: f32,
}

/// A message to hold ([`Store::hold`]).
#[derive(Clone, Debug)]
pub struct NewHeld {
    /// The message, as it would have been appended; its quota is ignored
    /// (the spam folder has its own bound, `max_held`).
    pub message: NewMessage,
    pub filter: String,
    pub score: f32,
    /// The most messages one spam folder keeps: holding one more drops
    /// the oldest (spam is expendable; the mailbox quota is not spent on it).
    pub max_held: u32,
    /// A send being held, rather than a stored message being reported: when
    /// the sender's client_msg_id already names a stored message (its
    /// first send was accepted, this resend judged otherwise), that message
    /// is the answer, as a duplicate append's, and nothing is held.
    pub send: bool,
}

/// The answer to [`Store::hold`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The spam-folder id (0 with `stored`).
    pub id: u64,
    pub recipient: UserId,
    pub timestamp_ms: u64,
    /// True when the folder already held this (sender, client_msg_id) for
    /// this recipient, or the message was stored (`stored`): nothing new
    /// was written and `id` is the original's.
    pub duplicate: bool,
    /// The message a send's client_msg_id already names ([`NewHeld::send`]):
    /// the sender's answer, nothing held.
    pub stored: Option<Arc<StoredMessage>>,
}

impl Held {
    /// The answer to a held send whose client_msg_id names `message`, a
    /// stored one ([`NewHeld::send`]).
    pub fn already_stored(message: Arc<StoredMessage>) -> Held {
        Held {
            id: 0,
            recipient: message.recipient,
            timestamp_ms: message.timestamp_ms,
            duplicate: true,
            stored: Some(message),
        }
    }
}

/// A judgement a recipient made of a message ("spam" or "not spam"),
/// kept as labelled data for the next training run. Only the text and
/// the label are kept: not who sent it, not who judged it.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterLabel {
    /// Its number in the labels' own sequence (0 in [`Store::add_label`]).
    pub id: u64,
    pub body: String,
    /// True: spam; false: not spam.
    pub spam: bool,
    /// The score the filter gave it when it was sent (or judged), if any.
    pub score: Option<f32>,
    /// When it was judged, ms since the Unix epoch.
    pub marked_ms: u64,
}

/// A resume token to remember. Only its hash is stored.
#[derive(Clone, Debug)]
pub struct NewResumeToken {
    pub user: UserId,
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// When it stops working, ms since the Unix epoch.
    pub expires_ms: u64,
    /// Most live tokens one account keeps; creating one more drops the
    /// oldest (and every expired one).
    pub max_per_user: u32,
}

/// Accounts, mailboxes, contacts, resume tokens and idempotency keys.
///
/// Implementations must honour the ordering and durability contracts in
/// the module documentation, and must never panic on any input.
pub trait Store: Send + Sync + 'static {
    /// Creates an account; [`StoreError::NameTaken`] if a live account has the key.
    /// With [`NewAccount::invite`], uses the invite up in the same step:
    /// [`StoreError::InviteInvalid`] (and nothing done) if no live invite
    /// has that hash; a taken name leaves the invite unused.
    fn create_account(&self, account: NewAccount) -> StoreReply<Account>;
    /// Remembers an invite code's hash until it expires or is used, and
    /// forgets the invites expired by `now_ms`.
    fn create_invite(&self, invite: NewInvite) -> StoreReply<()>;
    /// Looks an account up by name key.
    fn find_account(&self, name_key: &str) -> StoreReply<Option<Account>>;
    /// Deletes an account, its mailbox, its spam folder, its idempotency keys, its resume
    /// tokens, its contacts and its place in others' contact lists, its
    /// presence subscriptions both ways and its blocks both ways. Messages
    /// it sent that sit in other mailboxes stay there (and a store may keep
    /// their idempotency keys with them: the id is never used again).
    /// Others' idempotency keys for messages in its mailbox outlive it.
    fn delete_account(&self, user: UserId) -> StoreReply<()>;
    /// Accounts whose key matches, in key order, after `after` (exclusive).
    fn list_accounts(&self, pattern: &NamePattern, after: &str, limit: u32) -> StoreReply<Vec<AccountSummary>>;
    /// Stores a message durably, assigning id and seq; idempotent on
    /// (sender, client_msg_id). [`StoreError::NoSuchUser`] if the recipient
    /// does not exist or blocks the sender (a retry of a message stored
    /// before the block still gets its original answer).
    fn append(&self, message: NewMessage) -> StoreReply<Appended>;
    /// Sets the hook told of every stored message ([`OnStored`]); the first
    /// one set stays. Appends submitted before it is set are not told.
    fn on_stored(&self, hook: OnStored);
    /// Whether an append submitted now would be taken or refused
    /// [`StoreError::Busy`]: checked before a request is turned into an
    /// append, so that refusing a flood costs little. Only a hint (the
    /// append itself still decides); a store without a queue always takes
    /// new work.
    fn check_new_work(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// [`Store::check_new_work`] as a plain answer, not counted as a
    /// refusal: for a caller deciding how to read, not refusing anything.
    fn takes_new_work(&self) -> bool {
        true
    }
    /// Messages of `user` with seq > `after`, oldest first, at most `limit`.
    fn fetch(&self, user: UserId, after: Seq, limit: u32, include_acked: bool) -> StoreReply<Vec<StoredMessage>>;
    /// Like [`Store::fetch`], but stops before the messages' total
    /// [`message_cost`] passes `max_bytes` (the first message is returned
    /// whatever its size), and says whether more follow. Messages past the
    /// budget are never loaded, so a read of a mailbox full of large
    /// messages costs the budget, not the mailbox.
    fn fetch_page(
        &self,
        user: UserId,
        after: Seq,
        limit: u32,
        include_acked: bool,
        max_bytes: usize,
    ) -> StoreReply<FetchPage>;
    /// Marks messages acknowledged; returns how many were newly acked and
    /// the mailbox state afterwards.
    fn ack(&self, user: UserId, range: AckRange) -> StoreReply<(u64, MailboxState)>;
    /// Deletes messages from `user`'s mailbox; returns the ids deleted.
    fn delete_messages(&self, user: UserId, ids: Vec<MessageId>) -> StoreReply<Vec<MessageId>>;
    /// The mailbox's counters; [`StoreError::NoSuchUser`] if the account is gone.
    fn mailbox_state(&self, user: UserId) -> StoreReply<MailboxState>;
    /// Adds the account `contact_key` to `user`'s contacts; adding one twice
    /// is not an error. [`StoreError::NoSuchUser`] if either account does not
    /// exist; [`StoreError::LimitReached`] if `user` already has `max` contacts.
    fn add_contact(&self, user: UserId, contact_key: &str, max: u32) -> StoreReply<AccountSummary>;
    /// Removes a contact, and `user`'s subscription to its presence with
    /// it; returns whether it was there.
    fn remove_contact(&self, user: UserId, contact_key: &str) -> StoreReply<bool>;
    /// `user`'s contacts in name-key order (empty for an unknown user).
    fn list_contacts(&self, user: UserId) -> StoreReply<Vec<AccountSummary>>;
    /// Remembers a resume token's hash.
    fn create_resume_token(&self, token: NewResumeToken) -> StoreReply<()>;
    /// The account a live (unexpired) token belongs to, or None.
    fn resume(&self, hash: [u8; 32], now_ms: u64) -> StoreReply<Option<Account>>;
    /// Forgets a token (logout); unknown tokens are not an error.
    fn revoke_resume_token(&self, hash: [u8; 32]) -> StoreReply<()>;
    /// Forgets every token of `user` (kick, "log out everywhere"); returns
    /// how many there were. An unknown user has none.
    fn revoke_all_resume_tokens(&self, user: UserId) -> StoreReply<u64>;
    /// Replaces the account's SCRAM credentials (a password change) and
    /// forgets every resume token it has, in one step.
    /// [`StoreError::NoSuchUser`] if the account does not exist.
    fn set_credentials(&self, user: UserId, credentials: StoredCredentials) -> StoreReply<()>;
    /// `user` asks to see the presence of the account `target_key`: it is
    /// added to `user`'s contacts (as [`Store::add_contact`], with its
    /// limit) and a pending request is stored unless one is pending or
    /// approved already. Asking oneself approves at once. When `user`
    /// blocks the target nothing is done (`blocked_by_requester`); when the
    /// target blocks `user` the request is stored but never shown.
    /// [`StoreError::NoSuchUser`] if either account does not exist.
    fn request_presence(&self, user: UserId, target_key: &str, max_contacts: u32) -> StoreReply<PresenceRequested>;
    /// `user` answers the request of `requester_key`: approve turns a
    /// pending request into an approval (anything else stays as it is);
    /// deny removes a pending request or an approval given earlier.
    /// [`StoreError::NoSuchUser`] if either account does not exist.
    fn answer_presence(&self, user: UserId, requester_key: &str, approve: bool) -> StoreReply<PresenceChange>;
    /// `user` withdraws its request for, or stops seeing, `target_key`'s
    /// presence; the contact stays. [`StoreError::NoSuchUser`] if either
    /// account does not exist.
    fn cancel_presence(&self, user: UserId, target_key: &str) -> StoreReply<PresenceChange>;
    /// The accounts whose requests wait for `user`'s answer, in name-key
    /// order, at most `limit`; requests of accounts `user` blocks are left out.
    fn presence_requests(&self, user: UserId, limit: u32) -> StoreReply<Vec<AccountSummary>>;
    /// `user`'s contacts in name-key order, each with `user`'s subscription
    /// to its presence (empty for an unknown user).
    fn contacts_with_presence(&self, user: UserId) -> StoreReply<Vec<Contact>>;
    /// `user` blocks `target_key`: every subscription between the two ends,
    /// both ways, and appends from the target to `user` answer
    /// [`StoreError::NoSuchUser`] until unblocked. Blocking twice is not an
    /// error. [`StoreError::LimitReached`] past `max` blocks;
    /// [`StoreError::NoSuchUser`] if either account does not exist.
    fn block(&self, user: UserId, target_key: &str, max: u32) -> StoreReply<BlockOutcome>;
    /// Ends a block; returns whether there was one. A request the blocked
    /// account made meanwhile (never shown) is dropped.
    fn unblock(&self, user: UserId, target_key: &str) -> StoreReply<bool>;
    /// The accounts `user` blocks, in name-key order.
    fn list_blocked(&self, user: UserId) -> StoreReply<Vec<AccountSummary>>;
    /// Whether `user` refuses messages from `sender`, a sender outside any
    /// account (such as [`crate::service::PAGER_SENDER`]), after setting it
    /// when `refuse` is given. A refused sender's appends to `user` answer
    /// [`StoreError::NoSuchUser`], as a block does; it counts toward no
    /// limit and is not listed by [`Store::list_blocked`]. An unknown user
    /// refuses nothing (and setting is [`StoreError::NoSuchUser`]).
    fn refuse_sender(&self, user: UserId, sender: UserId, refuse: Option<bool>) -> StoreReply<bool>;
    /// Holds a message in its recipient's spam folder ([`HeldMessage`]):
    /// resolved and refused as [`Store::append`] resolves and refuses
    /// (unknown or blocking recipient: [`StoreError::NoSuchUser`]), but
    /// never announced to [`OnStored`] and never counted in the mailbox.
    /// Idempotent on (recipient, sender, client_msg_id) among held
    /// messages; a send ([`NewHeld::send`]) whose client_msg_id already
    /// names a stored message is answered with it and holds nothing. Past
    /// `max_held`, the folder's oldest messages are dropped.
    fn hold(&self, held: NewHeld) -> StoreReply<Held>;
    /// `user`'s held messages with id > `after`, oldest first, at most
    /// `limit` (empty for an unknown user).
    fn held(&self, user: UserId, after: u64, limit: u32) -> StoreReply<Vec<HeldMessage>>;
    /// Drops held messages of `user`; returns the ids dropped (others'
    /// ids and unknown ids are left out).
    fn drop_held(&self, user: UserId, ids: Vec<u64>) -> StoreReply<Vec<u64>>;
    /// Keeps a recipient's judgement as labelled data; returns its id.
    fn add_label(&self, label: FilterLabel) -> StoreReply<u64>;
    /// Labels with id > `after`, oldest first, at most `limit`.
    fn labels(&self, after: u64, limit: u32) -> StoreReply<Vec<FilterLabel>>;
    /// Finishes queued work, makes it durable and stops accepting more.
    fn close(&self) -> StoreReply<()>;
    /// The store's own counters, for metrics; None for a store that has
    /// nothing to report (the memory store has no queue and no commits).
    fn stats(&self) -> Option<StoreStats> {
        None
    }
    /// Why writes fail now, when the last write failed with
    /// [`StoreError::Unavailable`] (or the database opened read-only) and
    /// none succeeded since; readiness probes report it.
    fn write_failure(&self) -> Option<String> {
        None
    }
}

/// A snapshot of a store's counters, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed (one per batch of operations).
    pub commits: u64,
    /// Operations answered from committed transactions.
    pub ops_committed: u64,
    /// Batches whose transaction failed.
    pub failed_batches: u64,
    /// Operations refused `Busy` because the queue was full.
    pub busy_rejections: u64,
    /// Operations waiting for the store now.
    pub queued: u64,
    /// Microseconds from the start of a batch's transaction to the end of
    /// its commit, one value per committed batch.
    pub commit_micros: HistogramSnapshot,
    /// Microseconds of each fsync of the WAL that answers committed batches
    /// (SQLite at `synchronous = full`; empty elsewhere, where the commit
    /// itself waits for the disk).
    pub sync_micros: HistogramSnapshot,
    /// Operations per committed batch.
    pub batch_size: HistogramSnapshot,
}
