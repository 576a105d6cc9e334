//! The core's limits, each a named default that configuration may override.
//! `parleyd --help` and docs/CONFIG list them with the server's own limits.

/// Default maximum message body, in bytes of UTF-8.
pub const DEFAULT_MAX_BODY_BYTES: u32 = 64 * 1024;
/// Maximum length of a sender's idempotency key, in bytes.
pub const MAX_CLIENT_MSG_ID_BYTES: usize = 64;
/// Messages returned by a fetch when the request does not say.
pub const DEFAULT_FETCH_LIMIT: u32 = 100;
/// Most messages one fetch may return.
pub const MAX_FETCH_LIMIT: u32 = 1000;
/// Accounts per page when the request does not say.
pub const DEFAULT_LIST_LIMIT: u32 = 50;
/// Most accounts one page may hold.
pub const MAX_LIST_LIMIT: u32 = 1000;
/// Most seqs one ack or message ids one delete may name.
pub const MAX_IDS_PER_REQUEST: usize = 1000;
/// Events a session may have queued before new pushes to it are dropped
/// (the messages stay in the mailbox and are caught up from storage).
pub const DEFAULT_SESSION_QUEUE: usize = 1024;
/// Messages one catch-up read from storage pushes at a time.
pub const CATCH_UP_BATCH: u32 = 256;
/// Contacts one account may have; also how many accounts it may block.
pub const DEFAULT_MAX_CONTACTS: u32 = 1000;
/// Most pending presence requests one listing returns, in name order;
/// answering some shows the rest.
pub const MAX_PRESENCE_REQUESTS_LISTED: u32 = 1000;
/// Pushed messages one session may have unacknowledged before pushing
/// pauses (the rest wait in the mailbox).
pub const DEFAULT_MAX_UNACKED: usize = 1024;
/// Default PBKDF2 iteration count required of new registrations.
pub const DEFAULT_SCRAM_ITERATIONS: u32 = 4096;
/// Lowest iteration count the server can be configured to accept.
pub const MIN_SCRAM_ITERATIONS: u32 = 4096;
/// Sessions one account may have at once over every front door. A login
/// past it ends the account's oldest session, as ejabberd does with its
/// `max_user_sessions`: the person logging in now is most likely the one
/// who should keep working, and 300 forgotten sessions of one account
/// that never read cost the server about 310 KiB each.
pub const DEFAULT_MAX_SESSIONS_PER_USER: usize = 32;
/// Default budget of one mailbox read, the size of a native frame.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 256 * 1024;

/// Limits the core enforces on every request.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest message body accepted, in bytes.
    pub max_body_bytes: u32,
    /// Capacity of each session's event queue.
    pub session_queue: usize,
    /// Contacts per account, and blocked accounts per account.
    pub max_contacts: u32,
    /// Unacknowledged pushes per session.
    pub max_unacked: usize,
    /// Sessions per account; a login past it ends the oldest.
    pub max_sessions_per_user: usize,
    /// Budget of one read of a mailbox (a fetch, a catch-up batch), in
    /// bytes of messages (see `store::message_cost`): a reply never holds
    /// more, so a read of a mailbox full of large messages costs the
    /// server this much, whatever the limit asked for.
    pub max_reply_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            session_queue: DEFAULT_SESSION_QUEUE,
            max_contacts: DEFAULT_MAX_CONTACTS,
            max_unacked: DEFAULT_MAX_UNACKED,
            max_sessions_per_user: DEFAULT_MAX_SESSIONS_PER_USER,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
        }
    }
}
