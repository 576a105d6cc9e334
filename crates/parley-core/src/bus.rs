//! What crosses between parleyd processes — the workers of one machine and
//! the nodes of a cluster — so that any user reaches any user.
//!
//! The [`Hub`](crate::hub::Hub) of each process routes to its own sessions;
//! with a [`Bus`] attached it also keeps a *directory* of which other
//! processes hold sessions of which users (and whether one of them shows
//! the user online), and sends those processes what their sessions need: a
//! stored message, a notice, a request to close. Single-process and cluster
//! share this one path: without a bus the directory stays empty.
//!
//! The bus is a doorbell, not the record. A message reaches the bus only
//! after it is stored, and a session pushes strictly in seq order: what
//! arrives twice is skipped, what arrives after a gap makes the session
//! read the store (see [`crate::service::Session::next_push`]), and a bus
//! that lost its connection makes every session read the store
//! ([`Hub::lag_all`](crate::hub::Hub::lag_all)). One race is closed
//! explicitly: a message stored here just before this process learned that
//! another one holds a session of its recipient is announced to that
//! process as a [`Remote::Ring`] (the hub remembers, per recipient, the
//! last seq stored in the last [`RECENT`]), so the session reads it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::hub::CloseReason;
use crate::ids::{Seq, UserId};
use crate::store::StoredMessage;

/// A process's identity on the bus: random at each start, so a restarted
/// process is a new node and nothing said of the old one applies to it.
pub type NodeId = u64;

/// How long the hub remembers the last seq it stored for a recipient,
/// for [`Remote::Ring`]. Far longer than a directory update takes to cross
/// the bus.
pub const RECENT: Duration = Duration::from_secs(30);

/// What one process holds of a user, as the others see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holding {
    /// How many sessions of the user it has (any: it wants the user's
    /// messages and notices; the count: `max_sessions_per_user` holds
    /// across processes).
    pub sessions: u32,
    /// One of those sessions is not quiet: the user is online there.
    pub shown: bool,
}

impl Holding {
    pub const NONE: Holding = Holding {
        sessions: 0,
        shown: false,
    };

    /// Whether it holds any session of the user.
    pub fn any(self) -> bool {
        self.sessions > 0
    }
}

/// A notice for one user's sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A contact it follows came online or went offline (sent to one user).
    Presence { name: Arc<str>, online: bool },
    /// Someone asks to see its presence.
    PresenceRequest { from: Arc<str> },
    /// Someone approved its request to see their presence.
    PresenceApproved { name: Arc<str> },
}

/// What one process sends another about one user's sessions.
#[derive(Clone, Debug)]
pub enum Remote {
    /// A message was stored in the recipient's mailbox.
    Message(Arc<StoredMessage>),
    /// Messages up to `seq` were stored for `user`: its sessions that have
    /// pushed less read the store.
    Ring { user: UserId, seq: Seq },
    /// A notice for `user`'s sessions.
    Notice { user: UserId, notice: Notice },
    /// Every session of `user` there must close (a kick, logging out
    /// everywhere, a password change, the account deleted), or with
    /// `token`, only the sessions standing for the token of that key (an
    /// HTTP bearer token logged out in another process).
    Close {
        user: UserId,
        reason: CloseReason,
        token: Option<[u8; 32]>,
    },
    /// `user` has more sessions in the cluster than it may: the receiver
    /// ends its `count` oldest sessions of `user` (those not already
    /// closing) with `reason`.
    Trim {
        user: UserId,
        count: u32,
        reason: CloseReason,
    },
    /// A limit that protects accounts was used in the sending process; the
    /// receiver counts it too, so that the limit holds across the cluster.
    Spent(Spent),
    /// `follower` starts or stops following `contact`'s presence (an
    /// approval, a cancellation, a block, made where `follower` may have
    /// no session); on stopping, its sessions there that showed `contact`
    /// online are told it is not.
    Watch {
        follower: UserId,
        contact: UserId,
        contact_name: Arc<str>,
        follow: bool,
    },
    /// A file transfer whose sides are in different processes (sent to
    /// the processes holding the other side's account).
    Transfer(Box<crate::files::Wire>),
}

/// One use of a limit that holds across the cluster. Each process counts
/// its own uses and the uses it hears of, so that spreading attempts over
/// processes gains nothing (up to the time a frame takes to cross).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spent {
    /// A failed login or resume, against an account name key and an
    /// address group (told to every process).
    LoginFailure {
        account: Option<Arc<str>>,
        ip: Option<IpAddr>,
    },
    /// An account registered from an address group (told to every process).
    Registration { ip: IpAddr },
    /// `user` sent a message: one token of its send rate (told to the
    /// processes holding its sessions, the only ones it can send from
    /// without logging in there, which a login would announce).
    Send { user: UserId },
}

/// The transport between processes. Implementations never block the
/// caller: they queue what they send, and a send that cannot be queued is
/// dropped (the receiving sessions catch up from the store).
pub trait Bus: Send + Sync + 'static {
    /// This process's id.
    fn node(&self) -> NodeId;
    /// Sends `event` to process `node`.
    fn send(&self, node: NodeId, event: Remote);
    /// Tells every other process what this one now holds of `user`.
    fn announce(&self, user: UserId, name: &Arc<str>, holding: Holding);
    /// Sends `event` to every other process.
    fn broadcast(&self, event: Remote);
}
