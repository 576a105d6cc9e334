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

/// Registrations one source address (IPv6: its /64) may make per hour;
/// 0: no limit. ejabberd's `registration_timeout` (one per 600 s) and
/// Prosody's `min_seconds_between_registrations` are the models; ten an
/// hour lets a family or a classroom behind one address sign up and stops
/// a script from creating thousands of accounts.
pub const DEFAULT_REGISTRATIONS_PER_IP_PER_HOUR: u32 = 10;
/// The window `registrations_per_ip_per_hour` counts in.
pub const REGISTRATION_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);
/// Source addresses whose registrations are counted at once; past it the
/// window that started longest ago is forgotten.
pub const MAX_TRACKED_REGISTRATION_ADDRESSES: usize = 100_000;
/// Messages per second one account may send, over all its sessions and
/// front doors; 0: no limit. A person types far slower; a client draining
/// an outbox after a reconnect uses the burst.
pub const DEFAULT_SEND_RATE_PER_ACCOUNT: u32 = 50;
/// An account's burst: this many seconds of its rate, saved up while idle.
pub const SEND_BURST_SECONDS: u32 = 10;
/// Accounts whose send buckets are kept at once; past it refilled buckets
/// are forgotten first, then the one used longest ago.
pub const MAX_TRACKED_SENDERS: usize = 100_000;
/// Messages one mailbox may hold, acknowledged or not; a send past it is
/// refused MAILBOX_FULL.
pub const DEFAULT_MAILBOX_MAX_MESSAGES: u64 = 10_000;
/// Bytes of message bodies one mailbox may hold (100 MiB); a send past it
/// is refused MAILBOX_FULL.
pub const DEFAULT_MAILBOX_MAX_BYTES: u64 = 100 * 1024 * 1024;

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
    /// Registrations per source address per hour; 0: no limit.
    pub registrations_per_ip_per_hour: u32,
    /// Messages per second per account (burst: [`SEND_BURST_SECONDS`] of
    /// it); 0: no limit.
    pub send_rate_per_account: u32,
    /// Messages one mailbox may hold; 0: no limit.
    pub mailbox_max_messages: u64,
    /// Bytes of bodies one mailbox may hold; 0: no limit.
    pub mailbox_max_bytes: u64,
    /// Largest file one offer may offer.
    pub max_file_bytes: u64,
    /// Largest file the server relays when no direct path works; 0: no relay.
    pub relay_max_file_bytes: u64,
    /// Bytes a second one account may send through the relay; 0: no limit.
    pub relay_bytes_per_sec_per_user: u64,
}

/// Largest file an offer may offer: the bytes go from peer to peer (or
/// through the relay, see below) and are never stored, so this bounds only
/// what a recipient is asked to take.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// Largest file the server relays when the two sides find no direct path:
/// every relayed byte crosses the server's network twice.
pub const DEFAULT_RELAY_MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// Relay pace per account, bytes a second (16 Mbit/s): a photo in a
/// moment, and a hundred accounts relaying at once still fit a 2 Gbit/s
/// link.
pub const DEFAULT_RELAY_BYTES_PER_SEC_PER_USER: u64 = 2 * 1024 * 1024;

impl Limits {
    /// The quota every append carries.
    pub fn mailbox_quota(&self) -> crate::store::MailboxQuota {
        let bound = |limit: u64| if limit == 0 { u64::MAX } else { limit };
        crate::store::MailboxQuota {
            max_messages: bound(self.mailbox_max_messages),
            max_bytes: bound(self.mailbox_max_bytes),
        }
    }
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
            registrations_per_ip_per_hour: DEFAULT_REGISTRATIONS_PER_IP_PER_HOUR,
            send_rate_per_account: DEFAULT_SEND_RATE_PER_ACCOUNT,
            mailbox_max_messages: DEFAULT_MAILBOX_MAX_MESSAGES,
            mailbox_max_bytes: DEFAULT_MAILBOX_MAX_BYTES,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            relay_max_file_bytes: DEFAULT_RELAY_MAX_FILE_BYTES,
            relay_bytes_per_sec_per_user: DEFAULT_RELAY_BYTES_PER_SEC_PER_USER,
        }
    }
}
