//! The hub: which sessions are online, and routing of new messages to them.
//!
//! It is the in-process implementation of the "where is this user's
//! session" boundary; a multi-node bus (NATS) will sit behind the same calls.
//! State is a sharded map of short `std::sync::Mutex` critical sections; no
//! lock is ever held across an `.await`, and delivery never blocks: a full
//! session queue drops the notification and marks the session *lagged*, and
//! the session catches up from storage (see [`crate::service::Session`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::error::ErrorKind;
use crate::ids::{SessionId, UserId};
use crate::store::StoredMessage;

/// Number of independently locked shards of the session map.
const SHARDS: usize = 64;

/// Why the server is ending a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    pub kind: ErrorKind,
    pub message: String,
}

/// What a session's queue carries.
#[derive(Debug)]
pub enum SessionEvent {
    /// A message was stored in this session's mailbox.
    Message(Arc<StoredMessage>),
    /// Look at the shared flags (a close was requested).
    Wake,
}

/// Flags the hub and a session share.
#[derive(Debug, Default)]
pub struct SessionFlags {
    /// Set once the session asked for live delivery; only then does the hub
    /// send it messages.
    pub subscribed: AtomicBool,
    /// Set when a notification was dropped because the queue was full.
    pub lagged: AtomicBool,
    /// Set when the server wants the session closed.
    pub close: Mutex<Option<CloseReason>>,
}

impl SessionFlags {
    pub fn take_close(&self) -> Option<CloseReason> {
        lock(&self.close).take()
    }
}

struct Entry {
    /// Which session this is, for removal.
    session: SessionId,
    /// The session's bounded event queue.
    tx: mpsc::Sender<SessionEvent>,
    /// Flags shared with the session.
    flags: Arc<SessionFlags>,
}

type Shard = Mutex<HashMap<UserId, Vec<Entry>>>;

/// Online sessions by user.
pub struct Hub {
    /// Sessions by user, sharded by user id.
    shards: Box<[Shard]>,
    /// Sessions online, for status and metrics.
    online_sessions: AtomicU64,
    /// Notifications dropped because a session's queue was full.
    lag_events: AtomicU64,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it:
/// every critical section here leaves the map consistent at each step.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            online_sessions: AtomicU64::new(0),
            lag_events: AtomicU64::new(0),
        }
    }
}

impl Hub {
    fn shard(&self, user: UserId) -> &Shard {
        &self.shards[(user.0 as usize) % SHARDS]
    }

    /// Adds a session. Returns true if it is the user's first.
    pub fn register(
        &self,
        user: UserId,
        session: SessionId,
        tx: mpsc::Sender<SessionEvent>,
        flags: Arc<SessionFlags>,
    ) -> bool {
        let mut shard = lock(self.shard(user));
        let list = shard.entry(user).or_default();
        list.push(Entry { session, tx, flags });
        self.online_sessions.fetch_add(1, Ordering::Relaxed);
        list.len() == 1
    }

    /// Removes a session. Returns true if it was the user's last.
    pub fn unregister(&self, user: UserId, session: SessionId) -> bool {
        let mut shard = lock(self.shard(user));
        let Some(list) = shard.get_mut(&user) else { return false };
        let before = list.len();
        list.retain(|e| e.session != session);
        if list.len() < before {
            self.online_sessions.fetch_sub(1, Ordering::Relaxed);
        }
        if list.is_empty() {
            shard.remove(&user);
            return before > 0;
        }
        false
    }

    /// Whether the user has at least one session.
    pub fn is_online(&self, user: UserId) -> bool {
        lock(self.shard(user)).contains_key(&user)
    }

    pub fn online_sessions(&self) -> u64 {
        self.online_sessions.load(Ordering::Relaxed)
    }

    pub fn lag_events(&self) -> u64 {
        self.lag_events.load(Ordering::Relaxed)
    }

    /// Offers a stored message to every subscribed session of its recipient.
    /// Never blocks.
    pub fn deliver(&self, message: &Arc<StoredMessage>) {
        let shard = lock(self.shard(message.recipient));
        let Some(list) = shard.get(&message.recipient) else {
            return;
        };
        for entry in list {
            if !entry.flags.subscribed.load(Ordering::Acquire) {
                continue;
            }
            if entry.tx.try_send(SessionEvent::Message(Arc::clone(message))).is_err() {
                entry.flags.lagged.store(true, Ordering::Release);
                self.lag_events.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Asks every session of `user` except `keep` to close.
    pub fn close_user(&self, user: UserId, keep: Option<SessionId>, reason: CloseReason) {
        let shard = lock(self.shard(user));
        let Some(list) = shard.get(&user) else { return };
        for entry in list.iter().filter(|e| Some(e.session) != keep) {
            *lock(&entry.flags.close) = Some(reason.clone());
            // A full queue is fine: the session looks at its flags before
            // each event it takes, and a full queue is not empty.
            let _ = entry.tx.try_send(SessionEvent::Wake);
        }
    }

    /// Asks every session to close (server shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for shard in self.shards.iter() {
            for list in lock(shard).values() {
                for entry in list {
                    *lock(&entry.flags.close) = Some(reason.clone());
                    let _ = entry.tx.try_send(SessionEvent::Wake);
                }
            }
        }
    }
}
