//! The hub: which sessions are online, and routing of new messages to them.
//!
//! It answers "where is this user's session" for its own process, and,
//! with a [`Bus`] attached, for the others too: a directory of what other
//! processes hold (see [`crate::bus`]) makes delivery, notices, closing and
//! presence cross processes through the same calls. State is a sharded map of short `std::sync::Mutex` critical sections; no
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
//! while at least one of their sessions is not quiet, in this process or in
//! another.
//!
//! Lock order: a `directory` shard (held while a user's presence changes,
//! so that one user's transitions happen one at a time) may be held while
//! taking any other lock; a `watching` shard may be held while taking a
//! `watched_by` shard, never the reverse; a `watched_by` shard may be held
//! while taking a session shard; session shards are never held while
//! taking a `watching` or `directory` shard.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::bus::{Bus, Holding, NodeId, Notice, RECENT, Remote, Spent};
use crate::error::ErrorKind;
use crate::ids::{Seq, SessionId, UserId};
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
    /// The key of the resume token (or HTTP bearer token) the session
    /// stands for, so that ending that token ends it wherever it is open.
    pub token: Mutex<[u8; 32]>,
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

impl Entry {
    /// Flags the session to close with `reason` and wakes it. A full queue
    /// is fine: the session looks at its flags before each event it takes,
    /// and a full queue is not empty.
    fn ask_to_close(&self, reason: &CloseReason) {
        *lock(&self.flags.close) = Some(reason.clone());
        let _ = self.tx.try_send(SessionEvent::Wake);
    }
}

/// Whether any of a user's sessions makes them online.
fn any_shown(list: &[Entry]) -> bool {
    list.iter().any(|e| !e.quiet)
}

/// What this process holds of a user, from its session list.
fn holding(list: Option<&Vec<Entry>>) -> Holding {
    list.map_or(Holding::NONE, |list| Holding {
        sessions: u32::try_from(list.len()).unwrap_or(u32::MAX),
        shown: any_shown(list),
    })
}

/// What the other processes hold of one user, and the last seq this
/// process stored for the user lately.
#[derive(Default)]
struct Directory {
    /// The user's name, as the processes that hold it said.
    name: Option<Arc<str>>,
    /// Processes holding sessions of the user (never [`Holding::NONE`]).
    nodes: HashMap<NodeId, Holding>,
    /// The last seq stored here for the user, and when (see
    /// [`crate::bus::RECENT`]).
    recent: Option<(Seq, Instant)>,
}

impl Directory {
    fn shown_elsewhere(&self) -> bool {
        self.nodes.values().any(|h| h.shown)
    }

    fn sessions_elsewhere(&self) -> usize {
        self.nodes.values().map(|h| h.sessions as usize).sum()
    }

    fn unused(&self) -> bool {
        self.nodes.is_empty() && self.recent.is_none()
    }
}

type DirectoryShard = Mutex<HashMap<UserId, Directory>>;

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
    /// What other processes hold, by user, sharded by user; also the lock
    /// that orders each user's presence transitions.
    directory: Box<[DirectoryShard]>,
    /// The bus to the other processes, once attached.
    bus: OnceLock<Arc<dyn Bus>>,
    /// Where uses of cluster-wide limits told by other processes are
    /// counted (the service's limiters).
    spent_here: OnceLock<SpentSink>,
    /// Where file transfers told by other processes go (the service's
    /// rendezvous).
    transfers_here: OnceLock<TransferSink>,
}

/// Takes a file transfer's news from another process.
pub type TransferSink = Box<dyn Fn(crate::files::Wire) + Send + Sync>;

/// Counts a use of a limit that another process told of.
pub type SpentSink = Box<dyn Fn(Spent) + Send + Sync>;

impl Default for Hub {
    fn default() -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            online_sessions: AtomicU64::new(0),
            lag_events: AtomicU64::new(0),
            watching: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            watched_by: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            presence_events: AtomicU64::new(0),
            directory: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            bus: OnceLock::new(),
            spent_here: OnceLock::new(),
            transfers_here: OnceLock::new(),
        }
    }
}

impl Hub {
    fn shard(&self, user: UserId) -> &Shard {
        &self.shards[(user.0 as usize) % SHARDS]
    }

    fn directory_shard(&self, user: UserId) -> &DirectoryShard {
        &self.directory[(user.0 as usize) % SHARDS]
    }

    /// Attaches the bus to the other processes (once; later calls change
    /// nothing and return false).
    pub fn attach_bus(&self, bus: Arc<dyn Bus>) -> bool {
        self.bus.set(bus).is_ok()
    }

    /// The bus, if one is attached.
    pub fn bus(&self) -> Option<&Arc<dyn Bus>> {
        self.bus.get()
    }

    /// Adds a session; when it is the user's first that is not `quiet`
    /// anywhere, tells their followers. Returns whether it was the first
    /// here that is not quiet.
    pub fn register(
        &self,
        user: UserId,
        name: Arc<str>,
        session: SessionId,
        tx: mpsc::Sender<SessionEvent>,
        flags: Arc<SessionFlags>,
        quiet: bool,
    ) -> bool {
        let mut directory = lock(self.directory_shard(user));
        let (before, after) = {
            let mut shard = lock(self.shard(user));
            let list = shard.entry(user).or_default();
            let before = holding(Some(list));
            list.push(Entry {
                name: Arc::clone(&name),
                session,
                tx,
                flags,
                quiet,
            });
            (before, holding(Some(list)))
        };
        self.online_sessions.fetch_add(1, Ordering::Relaxed);
        let first = after.shown && !before.shown;
        let elsewhere = directory.get(&user).is_some_and(Directory::shown_elsewhere);
        if first && !elsewhere {
            self.announce(user, &name, true);
        }
        if before != after
            && let Some(bus) = self.bus.get()
        {
            bus.announce(user, &name, after);
        }
        if let Some(entry) = directory.get_mut(&user)
            && entry.unused()
        {
            directory.remove(&user);
        }
        first
    }

    /// Removes a session; when it was the user's last that is not quiet
    /// anywhere, tells their followers. Returns whether it was the last
    /// here that is not quiet.
    pub fn unregister(&self, user: UserId, session: SessionId) -> bool {
        let directory = lock(self.directory_shard(user));
        let (removed, name, before, after) = {
            let mut shard = lock(self.shard(user));
            let Some(list) = shard.get_mut(&user) else { return false };
            let before = holding(Some(list));
            let name = list.first().map(|e| Arc::clone(&e.name));
            let count = list.len();
            list.retain(|e| e.session != session);
            let removed = list.len() < count;
            let after = holding(Some(list));
            if list.is_empty() {
                shard.remove(&user);
            }
            (removed, name, before, after)
        };
        if !removed {
            return false;
        }
        self.online_sessions.fetch_sub(1, Ordering::Relaxed);
        let Some(name) = name else { return false };
        let last = before.shown && !after.shown;
        let elsewhere = directory.get(&user).is_some_and(Directory::shown_elsewhere);
        if last && !elsewhere {
            self.announce(user, &name, false);
        }
        if before != after
            && let Some(bus) = self.bus.get()
        {
            bus.announce(user, &name, after);
        }
        last
    }

    /// Another process now holds `holding` of `user` (NONE: nothing).
    /// Followers here learn of a presence change it makes; and when this
    /// process stored a message for `user` lately, the process is told, so
    /// that a session it opened just before it could route here reads it.
    pub fn node_update(&self, node: NodeId, user: UserId, name: &Arc<str>, holding_there: Holding) {
        let mut directory = lock(self.directory_shard(user));
        let here = holding(lock(self.shard(user)).get(&user));
        let entry = directory.entry(user).or_default();
        let before = entry.shown_elsewhere();
        let had = entry.nodes.get(&node).copied().unwrap_or(Holding::NONE);
        if holding_there == Holding::NONE {
            entry.nodes.remove(&node);
        } else {
            entry.nodes.insert(node, holding_there);
            entry.name = Some(Arc::clone(name));
        }
        let after = entry.shown_elsewhere();
        let ring = match entry.recent {
            Some((seq, at)) if holding_there.any() && !had.any() && at.elapsed() < RECENT => Some(seq),
            _ => None,
        };
        if entry.unused() {
            directory.remove(&user);
        }
        if before != after && !here.shown {
            self.announce(user, name, after);
        }
        drop(directory);
        if let (Some(seq), Some(bus)) = (ring, self.bus.get()) {
            bus.send(node, Remote::Ring { user, seq });
        }
    }

    /// A process left (it said so, or fell silent): everything it held is
    /// forgotten, and its users that are online nowhere else go offline.
    pub fn node_gone(&self, node: NodeId) {
        for (index, shard) in self.directory.iter().enumerate() {
            let held: Vec<(UserId, Arc<str>)> = lock(shard)
                .iter()
                .filter(|(_, d)| d.nodes.contains_key(&node))
                .map(|(user, d)| (*user, d.name.clone().unwrap_or_else(|| Arc::from(""))))
                .collect();
            debug_assert!(held.iter().all(|(u, _)| (u.0 as usize) % SHARDS == index));
            for (user, name) in held {
                self.node_update(node, user, &name, Holding::NONE);
            }
        }
    }

    /// The other processes holding sessions of `user`.
    pub fn nodes_with_sessions(&self, user: UserId) -> Vec<NodeId> {
        if self.bus.get().is_none() {
            return Vec::new();
        }
        lock(self.directory_shard(user)).get(&user).map_or_else(Vec::new, |d| {
            d.nodes.iter().filter(|(_, h)| h.any()).map(|(node, _)| *node).collect()
        })
    }

    /// Sends `event` to every other process holding sessions of `user`.
    fn send_elsewhere(&self, user: UserId, event: impl Fn() -> Remote) {
        let Some(bus) = self.bus.get() else { return };
        for node in self.nodes_with_sessions(user) {
            bus.send(node, event());
        }
    }

    /// Where file-transfer news from other processes goes (once).
    pub fn receive_transfers_with(&self, sink: TransferSink) {
        let _ = self.transfers_here.set(sink);
    }

    /// Sets where uses of limits told by other processes are counted (once).
    pub fn count_spent_with(&self, sink: SpentSink) {
        let _ = self.spent_here.set(sink);
    }

    /// Tells the other processes of a use of a cluster-wide limit made
    /// here: a send to those holding the sender's sessions, the rest to all.
    pub fn spent(&self, spent: Spent) {
        let Some(bus) = self.bus.get() else { return };
        match spent {
            Spent::Send { user } => self.send_elsewhere(user, || Remote::Spent(spent.clone())),
            Spent::LoginFailure { .. } | Spent::Registration { .. } => bus.broadcast(Remote::Spent(spent)),
        }
    }

    /// What the bus brought from another process.
    pub fn from_bus(&self, event: Remote) {
        match event {
            Remote::Transfer(wire) => {
                if let Some(sink) = self.transfers_here.get() {
                    sink(*wire);
                }
            }
            Remote::Spent(spent) => {
                if let Some(sink) = self.spent_here.get() {
                    sink(spent);
                }
            }
            Remote::Message(message) => self.deliver_here(&message),
            Remote::Ring { user, .. } => {
                let shard = lock(self.shard(user));
                for entry in shard.get(&user).into_iter().flatten() {
                    // A lag makes the session read the store from what it
                    // pushed last; a session that has pushed the seq reads
                    // nothing new.
                    entry.flags.lagged.store(true, Ordering::Release);
                    let _ = entry.tx.try_send(SessionEvent::Wake);
                }
            }
            Remote::Notice { user, notice } => self.notify_here(user, &|| match &notice {
                Notice::Presence { name, online } => SessionEvent::Presence {
                    name: Arc::clone(name),
                    online: *online,
                },
                Notice::PresenceRequest { from } => SessionEvent::PresenceRequest { from: Arc::clone(from) },
                Notice::PresenceApproved { name } => SessionEvent::PresenceApproved { name: Arc::clone(name) },
            }),
            Remote::Close { user, reason, token } => self.close_here(user, None, token.as_ref(), &reason),
            Remote::Trim { user, count, reason } => {
                self.end_oldest_here(user, count as usize, &reason);
            }
            Remote::Watch {
                follower,
                contact,
                contact_name,
                follow: true,
            } => {
                let _ = contact_name;
                self.watch_change_here(follower, contact, true);
            }
            Remote::Watch {
                follower,
                contact,
                contact_name,
                follow: false,
            } => self.stop_seeing_here(follower, contact, &contact_name),
        }
    }

    /// Every user with a session here, with what this process holds of
    /// them (for a process that joins the bus).
    pub fn holdings(&self) -> Vec<(UserId, Arc<str>, Holding)> {
        self.each_user(|list| holding(Some(list)))
    }

    /// Every user with a session here: id, name and what `of` says of
    /// their sessions. Takes each shard's lock in turn, never two at once.
    fn each_user<T>(&self, of: impl Fn(&Vec<Entry>) -> T) -> Vec<(UserId, Arc<str>, T)> {
        let mut users = Vec::new();
        for shard in self.shards.iter() {
            for (user, list) in lock(shard).iter() {
                if let Some(first) = list.first() {
                    users.push((*user, Arc::clone(&first.name), of(list)));
                }
            }
        }
        users
    }

    /// Forgets the seqs stored longer ago than [`RECENT`] (called now and
    /// then by the bus).
    pub fn sweep_recent(&self) {
        for shard in self.directory.iter() {
            let mut shard = lock(shard);
            for entry in shard.values_mut() {
                if entry.recent.is_some_and(|(_, at)| at.elapsed() >= RECENT) {
                    entry.recent = None;
                }
            }
            shard.retain(|_, d| !d.unused());
        }
    }

    /// Every session here reads the store before its next push (the bus
    /// lost its connection: what it carried meanwhile is lost).
    pub fn lag_all(&self) {
        for shard in self.shards.iter() {
            for entry in lock(shard).values().flatten() {
                entry.flags.lagged.store(true, Ordering::Release);
                let _ = entry.tx.try_send(SessionEvent::Wake);
            }
        }
    }

    /// Users online in other processes, with their names (for the control
    /// socket).
    pub fn online_elsewhere(&self) -> Vec<(UserId, Arc<str>, usize)> {
        let mut users = Vec::new();
        for shard in self.directory.iter() {
            for (user, d) in lock(shard).iter() {
                if d.shown_elsewhere()
                    && let Some(name) = &d.name
                {
                    users.push((*user, Arc::clone(name), d.sessions_elsewhere()));
                }
            }
        }
        users
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
        self.watch_change_here(follower, contact, follow)
    }

    /// [`Hub::watch_change`], also in the other processes holding
    /// sessions of `follower` (whose name for `contact` is `contact_name`).
    pub fn watch_change_everywhere(
        &self,
        follower: UserId,
        contact: UserId,
        contact_name: &Arc<str>,
        follow: bool,
    ) -> bool {
        self.send_elsewhere(follower, || Remote::Watch {
            follower,
            contact,
            contact_name: Arc::clone(contact_name),
            follow,
        });
        self.watch_change_here(follower, contact, follow)
    }

    fn watch_change_here(&self, follower: UserId, contact: UserId, follow: bool) -> bool {
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
        self.send_elsewhere(watcher, || Remote::Watch {
            follower: watcher,
            contact: target,
            contact_name: Arc::clone(target_name),
            follow: false,
        });
        self.stop_seeing_here(watcher, target, target_name);
    }

    fn stop_seeing_here(&self, watcher: UserId, target: UserId, target_name: &Arc<str>) {
        if self.watch_change_here(watcher, target, false) && self.is_online(target) {
            self.notify_here(watcher, &|| SessionEvent::Presence {
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
    /// Reaches `user`'s sessions in other processes too.
    pub fn notify(&self, user: UserId, make: impl Fn() -> SessionEvent) {
        self.notify_here(user, &make);
        let notice = match make() {
            SessionEvent::Presence { name, online } => Notice::Presence { name, online },
            SessionEvent::PresenceRequest { from } => Notice::PresenceRequest { from },
            SessionEvent::PresenceApproved { name } => Notice::PresenceApproved { name },
            // Messages go by `deliver`; a wake means nothing elsewhere.
            SessionEvent::Message(_) | SessionEvent::Wake => return,
        };
        self.send_elsewhere(user, || Remote::Notice {
            user,
            notice: notice.clone(),
        });
    }

    fn notify_here(&self, user: UserId, make: &dyn Fn() -> SessionEvent) {
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

    /// Whether the user has at least one session that is not quiet, here
    /// or in another process.
    pub fn is_online(&self, user: UserId) -> bool {
        if lock(self.shard(user)).get(&user).is_some_and(|list| any_shown(list)) {
            return true;
        }
        self.bus.get().is_some()
            && lock(self.directory_shard(user))
                .get(&user)
                .is_some_and(Directory::shown_elsewhere)
    }

    pub fn online_sessions(&self) -> u64 {
        self.online_sessions.load(Ordering::Relaxed)
    }

    pub fn lag_events(&self) -> u64 {
        self.lag_events.load(Ordering::Relaxed)
    }

    /// Offers a stored message to every subscribed session of its
    /// recipient, here and in other processes. Never blocks.
    pub fn deliver(&self, message: &Arc<StoredMessage>) {
        self.deliver_here(message);
        let Some(bus) = self.bus.get() else { return };
        let user = message.recipient;
        // Under the directory's lock, so that a process whose sessions are
        // announced meanwhile either is sent the message here or is rung
        // by `node_update`.
        let nodes: Vec<NodeId> = {
            let mut directory = lock(self.directory_shard(user));
            let entry = directory.entry(user).or_default();
            if entry.recent.is_none_or(|(seq, _)| seq < message.seq) {
                entry.recent = Some((message.seq, Instant::now()));
            }
            entry
                .nodes
                .iter()
                .filter(|(_, h)| h.any())
                .map(|(node, _)| *node)
                .collect()
        };
        for node in nodes {
            bus.send(node, Remote::Message(Arc::clone(message)));
        }
    }

    fn deliver_here(&self, message: &Arc<StoredMessage>) {
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
        self.each_user(Vec::len)
    }

    /// How many sessions `user` has.
    pub fn session_count(&self, user: UserId) -> usize {
        lock(self.shard(user)).get(&user).map_or(0, Vec::len)
    }

    /// Ends sessions of `user` so that at most `max` (at least 1) remain
    /// in the whole cluster, as far as this process knows: the oldest of
    /// this process first, never its newest (the login that called this),
    /// then, for what is left over, the oldest of other processes (asked
    /// with [`Remote::Trim`], in node order). Returns how many were ended
    /// or asked to end. Two logins in two processes at the same moment may
    /// each end one: the bound holds, and errs towards fewer sessions.
    pub fn limit_sessions(&self, user: UserId, max: usize, reason: CloseReason) -> usize {
        let mut elsewhere: Vec<(NodeId, usize)> = lock(self.directory_shard(user))
            .get(&user)
            .map(|entry| {
                let counts = entry.nodes.iter().map(|(node, h)| (*node, h.sessions as usize));
                counts.filter(|(_, count)| *count > 0).collect()
            })
            .unwrap_or_default();
        elsewhere.sort_unstable();
        let open_here = self.open_session_count(user);
        let total = open_here + elsewhere.iter().map(|(_, count)| count).sum::<usize>();
        let mut excess = total.saturating_sub(max.max(1));
        if excess == 0 {
            return 0;
        }
        let ended = self.end_oldest_here(user, excess.min(open_here.saturating_sub(1)), &reason);
        excess -= ended;
        let mut asked = 0;
        for (node, count) in elsewhere {
            if excess == 0 {
                break;
            }
            let count = count.min(excess);
            if let Some(bus) = self.bus.get() {
                bus.send(
                    node,
                    Remote::Trim {
                        user,
                        count: u32::try_from(count).unwrap_or(u32::MAX),
                        reason: reason.clone(),
                    },
                );
            }
            excess -= count;
            asked += count;
        }
        ended + asked
    }

    /// How many sessions of `user` here are not already closing.
    fn open_session_count(&self, user: UserId) -> usize {
        let shard = lock(self.shard(user));
        let list = shard.get(&user);
        list.map_or(0, |list| list.iter().filter(|e| lock(&e.flags.close).is_none()).count())
    }

    /// Asks the `count` oldest sessions of `user` here that are not
    /// already closing to close; returns how many were asked.
    fn end_oldest_here(&self, user: UserId, count: usize, reason: &CloseReason) -> usize {
        let shard = lock(self.shard(user));
        let Some(list) = shard.get(&user) else { return 0 };
        // The list is in registration order: oldest first.
        let open = list.iter().filter(|e| lock(&e.flags.close).is_none());
        let mut ended = 0;
        for entry in open.take(count) {
            entry.ask_to_close(reason);
            ended += 1;
        }
        ended
    }

    /// Asks every session of `user` except `keep` (one of this process)
    /// to close, here and in other processes.
    pub fn close_user(&self, user: UserId, keep: Option<SessionId>, reason: CloseReason) {
        self.close_here(user, keep, None, &reason);
        self.send_elsewhere(user, || Remote::Close {
            user,
            reason: reason.clone(),
            token: None,
        });
    }

    /// Asks the sessions of `user` in other processes that stand for the
    /// token with key `token` to close: one HTTP bearer token may be open
    /// in several processes at once, and logging it out in one ends it in
    /// all. (In this process the caller is that session.)
    pub fn close_token_elsewhere(&self, user: UserId, token: [u8; 32], reason: CloseReason) {
        self.send_elsewhere(user, || Remote::Close {
            user,
            reason: reason.clone(),
            token: Some(token),
        });
    }

    /// Closes `user`'s sessions here but `keep`; with `token`, only those
    /// standing for that token.
    fn close_here(&self, user: UserId, keep: Option<SessionId>, token: Option<&[u8; 32]>, reason: &CloseReason) {
        let shard = lock(self.shard(user));
        let Some(list) = shard.get(&user) else { return };
        let chosen = |e: &&Entry| Some(e.session) != keep && token.is_none_or(|t| *lock(&e.flags.token) == *t);
        for entry in list.iter().filter(chosen) {
            entry.ask_to_close(reason);
        }
    }

    /// Asks every session to close (server shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for shard in self.shards.iter() {
            for list in lock(shard).values() {
                for entry in list {
                    entry.ask_to_close(&reason);
                }
            }
        }
    }
}
