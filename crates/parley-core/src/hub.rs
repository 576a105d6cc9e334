//! The hub: which sessions are online, and routing of new messages to them.
//!
//! It is the in-process implementation of the "where is this user's
//! session" boundary; a multi-node bus (NATS) will sit behind the same calls.
//! State is a sharded map of short `std::sync::Mutex` critical sections; no
//! lock is ever held across an `.await`, and delivery never blocks: a full
//! session queue drops the notification and marks the session *lagged*, and
//! the session catches up from storage (see [`crate::service::Session`]).
//!
//! Presence: the hub also knows, for every user with a session, which users
//! they follow (those who approved their presence request; see
//! [`crate::presence`]), and so for every user who follows them. When
//! a user's first session arrives or last session leaves, each follower's
//! subscribed sessions get a presence event. Only online followers are
//! tracked, so this state is bounded by the sessions online. A *quiet*
//! session (a one-shot client's) is registered like any other, for
//! delivery and closing, but does not count for presence: a user is online
//! while at least one of their sessions is not quiet. Lock order:
//! a `watching` shard may be held while taking a `watched_by` shard, never
//! the reverse; session shards are never held together with either.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::error::ErrorKind;
use crate::ids::{SessionId, UserId};
use crate::store::StoredMessage;
use crate::sync::lock;

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
    /// A followed user's first session came online, or last went away.
    Presence { name: Arc<str>, online: bool },
    /// Someone asks to see this user's presence.
    PresenceRequest { from: Arc<str> },
    /// Someone approved this user's request to see their presence.
    PresenceApproved { name: Arc<str> },
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

    /// Why the server wants the session closed, if it does, without
    /// taking the request (for front doors that check before each request).
    pub fn closing(&self) -> Option<CloseReason> {
        lock(&self.close).clone()
    }
}

struct Entry {
    /// The user's display name, for presence events about them.
    name: Arc<str>,
    /// Which session this is, for removal.
    session: SessionId,
    /// The session's bounded event queue.
    tx: mpsc::Sender<SessionEvent>,
    /// Flags shared with the session.
    flags: Arc<SessionFlags>,
    /// Whether the session stays out of presence (it does not make its
    /// user online).
    quiet: bool,
}

/// Whether any of a user's sessions makes them online.
fn any_shown(list: &[Entry]) -> bool {
    list.iter().any(|e| !e.quiet)
}

type Shard = Mutex<HashMap<UserId, Vec<Entry>>>;
/// Followed user → online followers.
type WatchedByShard = Mutex<HashMap<UserId, HashSet<UserId>>>;

/// What an online user follows.
#[derive(Default)]
struct Watching {
    /// Sessions of the follower that registered interest.
    sessions: u32,
    /// The followed users.
    contacts: HashSet<UserId>,
}

/// Online sessions by user.
pub struct Hub {
    /// Sessions by user, sharded by user id.
    shards: Box<[Shard]>,
    /// Sessions online, for status and metrics.
    online_sessions: AtomicU64,
    /// Notifications dropped because a session's queue was full.
    lag_events: AtomicU64,
    /// Online followers and whom they follow, sharded by follower.
    watching: Box<[Mutex<HashMap<UserId, Watching>>]>,
    /// Followed user → online followers, sharded by followed user.
    watched_by: Box<[WatchedByShard]>,
    /// Presence events sent.
    presence_events: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            online_sessions: AtomicU64::new(0),
            lag_events: AtomicU64::new(0),
            watching: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            watched_by: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            presence_events: AtomicU64::new(0),
        }
    }
}

impl Hub {
    fn shard(&self, user: UserId) -> &Shard {
        &self.shards[(user.0 as usize) % SHARDS]
    }

    /// Adds a session; when it is the user's first that is not `quiet`,
    /// tells their followers.
    pub fn register(
        &self,
        user: UserId,
        name: Arc<str>,
        session: SessionId,
        tx: mpsc::Sender<SessionEvent>,
        flags: Arc<SessionFlags>,
        quiet: bool,
    ) -> bool {
        let first = {
            let mut shard = lock(self.shard(user));
            let list = shard.entry(user).or_default();
            let was_online = any_shown(list);
            list.push(Entry {
                name: Arc::clone(&name),
                session,
                tx,
                flags,
                quiet,
            });
            !quiet && !was_online
        };
        self.online_sessions.fetch_add(1, Ordering::Relaxed);
        if first {
            self.announce(user, &name, true);
        }
        first
    }

    /// Removes a session; when it was the user's last that is not quiet,
    /// tells their followers.
    pub fn unregister(&self, user: UserId, session: SessionId) -> bool {
        let (removed, last_name) = {
            let mut shard = lock(self.shard(user));
            let Some(list) = shard.get_mut(&user) else { return false };
            let before = list.len();
            let was_online = any_shown(list);
            let name = list.first().map(|e| Arc::clone(&e.name));
            list.retain(|e| e.session != session);
            let removed = list.len() < before;
            let last = removed && was_online && !any_shown(list);
            if list.is_empty() {
                shard.remove(&user);
            }
            (removed, if last { name } else { None })
        };
        if removed {
            self.online_sessions.fetch_sub(1, Ordering::Relaxed);
        }
        match last_name {
            Some(name) => {
                self.announce(user, &name, false);
                true
            }
            None => false,
        }
    }

    /// Sends a presence event about `user` to every subscribed session of
    /// every online follower.
    fn announce(&self, user: UserId, name: &Arc<str>, online: bool) {
        let followers: Vec<UserId> = match lock(self.watched_by_shard(user)).get(&user) {
            Some(set) => set.iter().copied().collect(),
            None => return,
        };
        for follower in followers {
            let shard = lock(self.shard(follower));
            let Some(list) = shard.get(&follower) else { continue };
            for entry in list.iter().filter(|e| e.flags.subscribed.load(Ordering::Acquire)) {
                let event = SessionEvent::Presence {
                    name: Arc::clone(name),
                    online,
                };
                if entry.tx.try_send(event).is_err() {
                    self.lag_events.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.presence_events.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn watching_shard(&self, user: UserId) -> &Mutex<HashMap<UserId, Watching>> {
        &self.watching[(user.0 as usize) % SHARDS]
    }

    fn watched_by_shard(&self, user: UserId) -> &WatchedByShard {
        &self.watched_by[(user.0 as usize) % SHARDS]
    }

    /// A session of `follower` starts following `contacts` (loaded from
    /// storage at login). The first session's list is kept; later sessions
    /// only count, since contact changes are applied as they happen.
    pub fn watch_start(&self, follower: UserId, contacts: &[UserId]) {
        let mut shard = lock(self.watching_shard(follower));
        let watching = shard.entry(follower).or_default();
        watching.sessions += 1;
        if watching.sessions == 1 {
            watching.contacts = contacts.iter().copied().collect();
            for &c in contacts {
                lock(self.watched_by_shard(c)).entry(c).or_default().insert(follower);
            }
        }
    }

    /// A session of `follower` ends; the last one stops following.
    pub fn watch_end(&self, follower: UserId) {
        let mut shard = lock(self.watching_shard(follower));
        let Some(watching) = shard.get_mut(&follower) else {
            return;
        };
        watching.sessions = watching.sessions.saturating_sub(1);
        if watching.sessions > 0 {
            return;
        }
        if let Some(watching) = shard.remove(&follower) {
            for c in watching.contacts {
                let mut by = lock(self.watched_by_shard(c));
                if let Some(set) = by.get_mut(&c) {
                    set.remove(&follower);
                    if set.is_empty() {
                        by.remove(&c);
                    }
                }
            }
        }
    }

    /// `follower` starts or stops following `contact` while online (an
    /// approval, a cancellation, a block). Returns whether `follower` was
    /// following `contact` before; false when `follower` is offline, whose
    /// relations are loaded at its next login.
    pub fn watch_change(&self, follower: UserId, contact: UserId, follow: bool) -> bool {
        let mut shard = lock(self.watching_shard(follower));
        let Some(watching) = shard.get_mut(&follower) else {
            return false;
        };
        let mut by = lock(self.watched_by_shard(contact));
        if follow {
            let was = !watching.contacts.insert(contact);
            by.entry(contact).or_default().insert(follower);
            was
        } else {
            let was = watching.contacts.remove(&contact);
            if let Some(set) = by.get_mut(&contact) {
                set.remove(&follower);
                if set.is_empty() {
                    by.remove(&contact);
                }
            }
            was
        }
    }

    /// `watcher` no longer sees `target` (a revocation, a block): when it
    /// was following and `target` is online, its sessions get `target` as
    /// offline, so that no client keeps showing what it may no longer see.
    pub fn stop_seeing(&self, watcher: UserId, target: UserId, target_name: &Arc<str>) {
        if self.watch_change(watcher, target, false) && self.is_online(target) {
            self.notify(watcher, || SessionEvent::Presence {
                name: Arc::clone(target_name),
                online: false,
            });
        }
    }

    /// Whether online `watcher` follows `target`'s presence (`target`
    /// approved it). Answers from memory: only online users' relations
    /// are here, and a caller asking is online.
    pub fn sees(&self, watcher: UserId, target: UserId) -> bool {
        lock(self.watching_shard(watcher))
            .get(&watcher)
            .is_some_and(|w| w.contacts.contains(&target))
    }

    /// Offers an event to every subscribed session of `user` (a presence
    /// request, an approval, a presence change sent to one user). Never
    /// blocks: a full queue drops it and counts it as lag.
    pub fn notify(&self, user: UserId, make: impl Fn() -> SessionEvent) {
        let shard = lock(self.shard(user));
        let Some(list) = shard.get(&user) else { return };
        for entry in list.iter().filter(|e| e.flags.subscribed.load(Ordering::Acquire)) {
            let event = make();
            let presence = matches!(event, SessionEvent::Presence { .. });
            if entry.tx.try_send(event).is_err() {
                self.lag_events.fetch_add(1, Ordering::Relaxed);
            } else if presence {
                self.presence_events.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn presence_events(&self) -> u64 {
        self.presence_events.load(Ordering::Relaxed)
    }

    /// Whether the user has at least one session that is not quiet.
    pub fn is_online(&self, user: UserId) -> bool {
        lock(self.shard(user)).get(&user).is_some_and(|list| any_shown(list))
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

    /// Every user with a session: id, name and how many sessions, in no
    /// particular order. For the control socket; takes each shard's lock
    /// in turn, never two at once.
    pub fn online_users(&self) -> Vec<(UserId, Arc<str>, usize)> {
        let mut users = Vec::new();
        for shard in self.shards.iter() {
            for (user, list) in lock(shard).iter() {
                if let Some(first) = list.first() {
                    users.push((*user, Arc::clone(&first.name), list.len()));
                }
            }
        }
        users
    }

    /// How many sessions `user` has.
    pub fn session_count(&self, user: UserId) -> usize {
        lock(self.shard(user)).get(&user).map_or(0, Vec::len)
    }

    /// Asks the oldest sessions of `user` that are not already closing to
    /// close, so that at most `max` remain; returns how many were asked.
    pub fn limit_sessions(&self, user: UserId, max: usize, reason: CloseReason) -> usize {
        let shard = lock(self.shard(user));
        let Some(list) = shard.get(&user) else { return 0 };
        // The list is in registration order: oldest first.
        let open: Vec<&Entry> = list.iter().filter(|e| lock(&e.flags.close).is_none()).collect();
        let excess = open.len().saturating_sub(max);
        for entry in open.into_iter().take(excess) {
            *lock(&entry.flags.close) = Some(reason.clone());
            let _ = entry.tx.try_send(SessionEvent::Wake);
        }
        excess
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
