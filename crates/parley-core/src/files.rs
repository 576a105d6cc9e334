//! File transfer: offers kept as messages, and the rendezvous where the
//! server introduces the two sides to each other.
//!
//! The server is the discovery server of a peer-to-peer transfer, never a
//! file store. An offer is an ordinary message in the recipient's mailbox
//! whose body says what is offered ([`FileOffer::body`]), so it waits for an
//! offline recipient like any message and needs nothing new from storage.
//! When the sender is serving the offer and the recipient has accepted it,
//! both online, [`Transfers`] gives each side the other's candidate
//! addresses, its certificate fingerprint and one token
//! ([`TransferEvent::Ready`]); the sides then try a direct QUIC path and,
//! when none works, send the bytes through the server, which passes each
//! chunk from the sender's connection to the recipient's without keeping
//! it ([`Transfers::relay`]).
//!
//! Who may join: the recipient's side is checked against its own mailbox
//! (the offer must be there, from the sender it names), and a rendezvous is
//! keyed by the offer and the account serving it. So a stranger can neither
//! accept someone else's offer nor serve it: serving it, it waits alone and
//! learns nothing, not even whether the offer is pending.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;
use tokio::sync::mpsc;

use crate::bus::{NodeId, Remote};
use crate::error::CoreError;
use crate::hub::Hub;
use crate::ids::{MessageId, UserId};
use crate::sync::lock;

/// The version tag of an offer's machine-readable line.
const OFFER_TAG: &str = "parley-file/1";
/// Longest file name, in bytes of UTF-8.
pub const MAX_FILE_NAME_BYTES: usize = 255;
/// Largest relayed chunk, in bytes.
pub const MAX_RELAY_CHUNK_BYTES: usize = 128 * 1024;
/// Relayed chunks one connection may have in flight; past it the server
/// reads no more from that connection until one has been passed on.
pub const RELAY_WINDOW: usize = 8;
/// Transfers one connection may have joined at once.
pub const MAX_TRANSFERS_PER_CONNECTION: usize = 16;
/// Longest free-text detail of a transfer's end, in bytes.
pub const MAX_DETAIL_BYTES: usize = 256;
/// Chunks waiting to be written to a recipient's connection: what the
/// server holds per recipient is this many chunks at most.
pub const RELAY_QUEUE: usize = 8;
/// Candidate addresses one side may announce.
pub const MAX_CANDIDATES: usize = 16;

/// A rendezvous is named by its offer and the account that made it, so an
/// account serving someone else's offer id only ever waits alone: it never
/// meets that offer's recipient, nor learns that the offer is pending.
type Key = (MessageId, UserId);

/// What an offer offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOffer {
    pub name: String,
    pub size: u64,
    pub sha256: [u8; 32],
}

impl FileOffer {
    /// Checks a sender's offer against the rules and `max_size`.
    pub fn new(name: &str, size: u64, sha256: &[u8], max_size: u64) -> Result<FileOffer, CoreError> {
        check_name(name)?;
        if size == 0 {
            return Err(CoreError::invalid("an empty file cannot be offered"));
        }
        if size > max_size {
            return Err(CoreError::new(
                crate::ErrorKind::MessageTooLarge,
                format!("the file is {size} bytes; the server's limit is {max_size} (max_file_bytes)"),
            ));
        }
        let sha256: [u8; 32] = sha256
            .try_into()
            .map_err(|_| CoreError::invalid("sha256 must be 32 bytes"))?;
        Ok(FileOffer {
            name: name.to_owned(),
            size,
            sha256,
        })
    }

    /// The message body that carries the offer: a line for people, then
    /// one for programs (docs/PROTOCOL.md, "File transfer").
    pub fn body(&self) -> String {
        let mut hex = String::with_capacity(64);
        for b in self.sha256 {
            let _ = write!(hex, "{b:02x}");
        }
        format!(
            "[file] {} ({})\n{OFFER_TAG} size={} sha256={hex} name={}",
            self.name,
            human_size(self.size),
            self.size,
            self.name
        )
    }

    /// The offer a message body carries, if it carries one.
    pub fn parse(body: &str) -> Option<FileOffer> {
        let line = body.lines().find_map(|l| l.strip_prefix(OFFER_TAG))?;
        let rest = line.strip_prefix(" size=")?;
        let (size, rest) = rest.split_once(" sha256=")?;
        let (hex, name) = rest.split_once(" name=")?;
        let size: u64 = size.parse().ok()?;
        if hex.len() != 64 || check_name(name).is_err() || size == 0 {
            return None;
        }
        let mut sha256 = [0u8; 32];
        for (i, out) in sha256.iter_mut().enumerate() {
            *out = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(FileOffer {
            name: name.to_owned(),
            size,
            sha256,
        })
    }
}

/// A file name as it may travel: no directory, nothing a terminal or a
/// file system would read as more than a name.
pub fn check_name(name: &str) -> Result<(), CoreError> {
    if name.is_empty() || name.len() > MAX_FILE_NAME_BYTES {
        return Err(CoreError::invalid(format!(
            "a file name is 1 to {MAX_FILE_NAME_BYTES} bytes"
        )));
    }
    if name == "." || name == ".." || name.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
        return Err(CoreError::invalid(
            "a file name may not be \".\" or \"..\" nor hold '/', '\\' or control characters",
        ));
    }
    Ok(())
}

/// `1234567` → "1.2 MB".
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// How a transfer ended (the protocol's `TransferResult`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    Refused,
    HashMismatch,
    PeerGone,
    Cancelled,
    Failed,
}

/// How one side can be reached directly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    pub candidates: Vec<SocketAddr>,
    pub fingerprint: [u8; 32],
}

/// What the server tells a side of a transfer on its own.
#[derive(Debug)]
pub enum TransferEvent {
    /// Both sides are there.
    Ready {
        offer: MessageId,
        peer: String,
        info: PeerInfo,
        token: [u8; 32],
        resume_from: u64,
        relay: bool,
        relay_bytes_per_sec: u64,
    },
    /// Relayed bytes, for the recipient.
    Chunk {
        offer: MessageId,
        offset: u64,
        data: Vec<u8>,
    },
    /// The transfer is over for this side.
    Ended {
        offer: MessageId,
        outcome: Outcome,
        detail: String,
    },
}

/// The limits of file transfer.
#[derive(Clone, Copy, Debug)]
pub struct TransferSettings {
    /// Largest file that may be offered.
    pub max_file_bytes: u64,
    /// Largest file the server relays; 0: it relays none.
    pub relay_max_file_bytes: u64,
    /// Bytes a second one account may send through the relay, over all its
    /// transfers; 0: no limit.
    pub relay_bytes_per_sec: u64,
}

/// One connection's way to get transfer events: control events on one
/// queue (a handful per transfer, so never full), relayed chunks on a
/// short bounded one, so a recipient that does not read holds up its
/// sender instead of filling the server. Dropping it (the connection ends,
/// or its session does) ends every transfer it took part in.
pub struct Inbox {
    pub control: mpsc::UnboundedReceiver<TransferEvent>,
    pub chunks: mpsc::Receiver<TransferEvent>,
    side: SideHandle,
}

impl Inbox {
    /// What requests of this connection act with.
    pub fn side(&self) -> &SideHandle {
        &self.side
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let joined: Vec<Key> = lock(&self.side.joined).drain().collect();
        for key in joined {
            let _ = self.side.registry.end_key(
                self.side.id,
                key,
                Outcome::PeerGone,
                "the other side's connection ended",
            );
        }
    }
}

/// A connection as a side of transfers, for its requests.
#[derive(Clone)]
pub struct SideHandle {
    id: u64,
    senders: SideSenders,
    /// The transfers this connection has joined and not seen end.
    joined: Arc<Mutex<HashSet<Key>>>,
    registry: Arc<Transfers>,
}

impl SideHandle {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn registry(&self) -> &Arc<Transfers> {
        &self.registry
    }

    /// The connection saw `offer` end.
    pub fn forget(&self, offer: MessageId) {
        lock(&self.joined).retain(|key| key.0 != offer);
    }
}

#[derive(Clone, Debug)]
struct SideSenders {
    control: mpsc::UnboundedSender<TransferEvent>,
    chunks: mpsc::Sender<TransferEvent>,
}

/// A side waiting in a pair.
#[derive(Debug)]
struct Side {
    id: u64,
    senders: SideSenders,
    info: PeerInfo,
}

/// What both sides of one meeting are told alike.
struct Meeting {
    offer: MessageId,
    token: [u8; 32],
    resume_from: u64,
    relay: bool,
    relay_bytes_per_sec: u64,
}

impl Side {
    /// Tells this side the meeting is made, with `peer` reachable at `info`.
    fn ready(&self, meeting: &Meeting, peer: &str, info: &PeerInfo) {
        let _ = self.senders.control.send(TransferEvent::Ready {
            offer: meeting.offer,
            peer: peer.to_owned(),
            info: info.clone(),
            token: meeting.token,
            resume_from: meeting.resume_from,
            relay: meeting.relay,
            relay_bytes_per_sec: meeting.relay_bytes_per_sec,
        });
    }

    /// Tells this side the transfer is over for it.
    fn ended(&self, offer: MessageId, outcome: Outcome, detail: &str) {
        let _ = self.senders.control.send(TransferEvent::Ended {
            offer,
            outcome,
            detail: detail.to_owned(),
        });
    }
}

/// One offer's rendezvous.
#[derive(Debug)]
struct Pair {
    sender: UserId,
    sender_name: String,
    recipient: UserId,
    recipient_name: String,
    /// Known once the recipient joined (from its mailbox).
    offer: Option<FileOffer>,
    sender_side: Option<Side>,
    recipient_side: Option<Side>,
    /// Set when Ready went out: from then on, either side leaving ends it.
    started: bool,
    resume_from: u64,
    /// The offset the next relayed chunk must start at.
    relay_next: u64,
    /// The process holding the other side, when the meeting was made
    /// across the bus (no relay then: it needs both sides here).
    remote_peer: Option<NodeId>,
}

/// Who joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Sender,
    Recipient,
}

/// What crosses the bus for a transfer whose two sides are connected to
/// different server processes (see [`Transfers::from_bus`]). One shape for
/// the three kinds; each uses the fields it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wire {
    pub kind: WireKind,
    pub offer: MessageId,
    /// The process that sent it, for the answer.
    pub node: NodeId,
    /// Join: the joining side's role. Ready: the role of the side it is for.
    pub role: Role,
    pub sender: UserId,
    pub sender_name: String,
    pub recipient: UserId,
    pub recipient_name: String,
    /// Join: the joining side's reach. Ready: the other side's.
    pub info: PeerInfo,
    /// Ready: the meeting's token.
    pub token: [u8; 32],
    /// Ready: where the bytes start.
    pub resume_from: u64,
    /// Ended: how.
    pub outcome: Outcome,
    pub detail: String,
}

/// What a [`Wire`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireKind {
    /// A side joined there: the process holding the other side answers
    /// (the recipient's process makes the meeting).
    Join,
    /// The meeting is made: for the waiting side there.
    Ready,
    /// The transfer ended (or the offer was refused) on the sender's end.
    Ended,
}

/// A join: who the caller is, what the offer is.
#[derive(Clone, Debug)]
pub struct Join {
    pub offer_id: MessageId,
    pub role: Role,
    pub sender: UserId,
    pub sender_name: String,
    pub recipient: UserId,
    pub recipient_name: String,
    /// The offer, when the recipient joins (checked against its mailbox).
    pub offer: Option<FileOffer>,
    pub info: PeerInfo,
    pub resume_from: u64,
}

/// Where a relayed chunk goes and when it may.
pub struct RelayTicket {
    pub to: mpsc::Sender<TransferEvent>,
    pub not_before: Instant,
    pub next_offset: u64,
}

/// Every rendezvous of this server process.
pub struct Transfers {
    settings: TransferSettings,
    pairs: Mutex<HashMap<Key, Pair>>,
    /// Each account's relay budget: bytes it may still send now (negative:
    /// in debt) and when that was computed.
    budgets: Mutex<HashMap<UserId, (f64, Instant)>>,
    next_side: AtomicU64,
    /// Where the other processes are, for meetings across them.
    hub: Arc<Hub>,
    /// Counters for metrics.
    pub relayed_bytes: AtomicU64,
    pub completed: AtomicU64,
    pub started: AtomicU64,
}

impl Transfers {
    pub fn new(settings: TransferSettings, hub: Arc<Hub>) -> Transfers {
        Transfers {
            settings,
            pairs: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            next_side: AtomicU64::new(1),
            hub,
            relayed_bytes: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            started: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> TransferSettings {
        self.settings
    }

    /// A new connection's inbox.
    pub fn inbox(self: &Arc<Self>) -> Inbox {
        let (control_tx, control) = mpsc::unbounded_channel();
        let (chunks_tx, chunks) = mpsc::channel(RELAY_QUEUE);
        Inbox {
            control,
            chunks,
            side: SideHandle {
                id: self.next_side.fetch_add(1, Ordering::Relaxed),
                senders: SideSenders {
                    control: control_tx,
                    chunks: chunks_tx,
                },
                joined: Arc::new(Mutex::new(HashSet::new())),
                registry: Arc::clone(self),
            },
        }
    }

    /// Rendezvous in progress.
    pub fn pending(&self) -> usize {
        lock(&self.pairs).len()
    }

    /// Joins `inbox`'s connection to a rendezvous. Returns the offer (when
    /// known) and whether the transfer started (Ready went to both).
    pub fn join(&self, me: &SideHandle, join: Join) -> Result<Option<FileOffer>, CoreError> {
        let key = (join.offer_id, join.sender);
        let mut joined = lock(&me.joined);
        if !joined.contains(&key) && joined.len() >= MAX_TRANSFERS_PER_CONNECTION {
            return Err(CoreError::new(
                crate::ErrorKind::LimitReached,
                format!("a connection may take part in {MAX_TRANSFERS_PER_CONNECTION} transfers at once"),
            ));
        }
        if join.offer.as_ref().is_some_and(|o| join.resume_from > o.size) {
            return Err(CoreError::invalid("resume_from is past the end of the file"));
        }
        let side = Side {
            id: me.id,
            senders: me.senders.clone(),
            info: join.info.clone(),
        };
        let mut pairs = lock(&self.pairs);
        let pair = pairs.entry(key).or_insert_with(|| Pair {
            sender: join.sender,
            sender_name: join.sender_name.clone(),
            recipient: join.recipient,
            recipient_name: join.recipient_name.clone(),
            offer: None,
            sender_side: None,
            recipient_side: None,
            started: false,
            resume_from: 0,
            relay_next: 0,
            remote_peer: None,
        });
        if pair.recipient != join.recipient {
            match join.role {
                // The same account serving one offer to two recipients.
                Role::Sender => return Err(no_such_offer()),
                Role::Recipient => {
                    // The recipient's view is the checked one: a sender
                    // side that named someone else was not serving this.
                    if let Some(stray) = pair.sender_side.take() {
                        stray.ended(join.offer_id, Outcome::Failed, "no such offer");
                    }
                    pair.recipient = join.recipient;
                    pair.recipient_name = join.recipient_name.clone();
                }
            }
        }
        if pair.started {
            return Err(CoreError::invalid("this transfer is already under way"));
        }
        match join.role {
            Role::Sender => pair.sender_side = Some(side),
            Role::Recipient => {
                pair.recipient_side = Some(side);
                pair.offer = join.offer.clone();
                pair.resume_from = join.resume_from;
            }
        }
        joined.insert(key);
        let offer = pair.offer.clone();
        if let (Some(s), Some(r), Some(offer)) = (&pair.sender_side, &pair.recipient_side, &pair.offer) {
            let relay = self.settings.relay_max_file_bytes >= offer.size;
            let meeting = self.meeting(join.offer_id, pair.resume_from, relay);
            s.ready(&meeting, &pair.recipient_name, &r.info);
            r.ready(&meeting, &pair.sender_name, &s.info);
            self.start(pair, None);
        } else if let Some(node) = self.node() {
            // The other side may be waiting in another process: tell the
            // processes holding its account.
            let peer = match join.role {
                Role::Sender => pair.recipient,
                Role::Recipient => pair.sender,
            };
            let wire = Wire {
                kind: WireKind::Join,
                node,
                resume_from: pair.resume_from,
                ..wire_of(join.offer_id, join.role, pair, &join.info)
            };
            self.send_to_holders(peer, &wire);
        }
        Ok(offer)
    }

    /// A new meeting for `offer`, with its one token.
    fn meeting(&self, offer: MessageId, resume_from: u64, relay: bool) -> Meeting {
        let mut token = [0u8; 32];
        rand::rng().fill_bytes(&mut token);
        Meeting {
            offer,
            token,
            resume_from,
            relay,
            relay_bytes_per_sec: self.settings.relay_bytes_per_sec,
        }
    }

    /// Marks `pair` met (here, or with the other side in process
    /// `remote`): from now on either side leaving ends it.
    fn start(&self, pair: &mut Pair, remote: Option<NodeId>) {
        pair.started = true;
        pair.relay_next = pair.resume_from;
        pair.remote_peer = remote;
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// This process's id on the bus, when there is a bus.
    fn node(&self) -> Option<NodeId> {
        self.hub.bus().map(|b| b.node())
    }

    fn send_to(&self, node: NodeId, wire: Wire) {
        if let Some(bus) = self.hub.bus() {
            bus.send(node, Remote::Transfer(Box::new(wire)));
        }
    }

    fn send_to_holders(&self, user: UserId, wire: &Wire) {
        for node in self.hub.nodes_with_sessions(user) {
            self.send_to(node, wire.clone());
        }
    }

    /// What another process said about a transfer. The meeting is made by
    /// the process holding the recipient's side (it has the offer from the
    /// mailbox): a sender's join reaching it makes the meeting; a
    /// recipient's join reaching the sender's process is answered with the
    /// sender's own join. Anything that finds no waiting side here is
    /// dropped (a `Ready` for a side that left is answered `Ended`).
    pub fn from_bus(&self, wire: Wire) {
        let Some(me) = self.node() else { return };
        let key = (wire.offer, wire.sender);
        let mut pairs = lock(&self.pairs);
        let Some(pair) = pairs.get_mut(&key) else {
            return;
        };
        let same = pair.recipient == wire.recipient;
        match (wire.kind, wire.role) {
            (WireKind::Join, Role::Sender) if same && !pair.started => {
                let (Some(r), Some(_)) = (&pair.recipient_side, &pair.offer) else {
                    return;
                };
                let meeting = self.meeting(wire.offer, pair.resume_from, false);
                r.ready(&meeting, &wire.sender_name, &wire.info);
                let answer = Wire {
                    kind: WireKind::Ready,
                    node: me,
                    token: meeting.token,
                    resume_from: meeting.resume_from,
                    ..wire_of(wire.offer, Role::Sender, pair, &r.info)
                };
                self.start(pair, Some(wire.node));
                drop(pairs);
                self.send_to(wire.node, answer);
            }
            (WireKind::Join, Role::Recipient) if same && !pair.started => {
                if let Some(s) = &pair.sender_side {
                    let answer = Wire {
                        kind: WireKind::Join,
                        node: me,
                        ..wire_of(wire.offer, Role::Sender, pair, &s.info)
                    };
                    drop(pairs);
                    self.send_to(wire.node, answer);
                }
            }
            (WireKind::Ready, Role::Sender) if same && !pair.started => match &pair.sender_side {
                Some(s) => {
                    let meeting = Meeting {
                        offer: wire.offer,
                        token: wire.token,
                        resume_from: wire.resume_from,
                        relay: false,
                        relay_bytes_per_sec: self.settings.relay_bytes_per_sec,
                    };
                    s.ready(&meeting, &wire.recipient_name, &wire.info);
                    pair.started = true;
                    pair.remote_peer = Some(wire.node);
                }
                None => {
                    let gone = Wire {
                        kind: WireKind::Ended,
                        node: me,
                        outcome: Outcome::PeerGone,
                        detail: "the sender left before the meeting".into(),
                        ..wire
                    };
                    drop(pairs);
                    self.send_to(gone.node, gone);
                }
            },
            (WireKind::Ended, _) if same && (!pair.started || pair.remote_peer == Some(wire.node)) => {
                if let Some(pair) = pairs.remove(&key) {
                    for side in [pair.sender_side, pair.recipient_side].into_iter().flatten() {
                        side.ended(wire.offer, wire.outcome, &wire.detail);
                    }
                }
            }
            _ => {}
        }
    }

    /// Ends `offer` from `side`'s end (its report, or its connection
    /// closing): the other side is told, the rendezvous forgotten.
    pub fn end(&self, side: &SideHandle, offer: MessageId, outcome: Outcome, detail: &str) -> Result<(), CoreError> {
        let key = lock(&side.joined).iter().find(|key| key.0 == offer).copied();
        let key = key.ok_or_else(no_such_offer)?;
        self.end_key(side.id, key, outcome, detail)
    }

    fn end_key(&self, side: u64, key: Key, outcome: Outcome, detail: &str) -> Result<(), CoreError> {
        let offer = key.0;
        let mut pairs = lock(&self.pairs);
        let Some(pair) = pairs.get_mut(&key) else {
            return Err(no_such_offer());
        };
        let (mine, other) = if pair.sender_side.as_ref().is_some_and(|s| s.id == side) {
            (&mut pair.sender_side, &mut pair.recipient_side)
        } else if pair.recipient_side.as_ref().is_some_and(|s| s.id == side) {
            (&mut pair.recipient_side, &mut pair.sender_side)
        } else {
            return Err(no_such_offer());
        };
        *mine = None;
        if pair.started {
            if let Some(other) = other.take() {
                other.ended(offer, outcome, detail);
            } else if let (Some(node), Some(me)) = (pair.remote_peer, self.node()) {
                let wire = Wire {
                    kind: WireKind::Ended,
                    node: me,
                    outcome,
                    detail: detail.to_owned(),
                    ..wire_of(offer, Role::Sender, pair, &PeerInfo::default())
                };
                self.send_to(node, wire);
            }
            if outcome == Outcome::Complete {
                self.completed.fetch_add(1, Ordering::Relaxed);
            }
            pairs.remove(&key);
        } else if pair.sender_side.is_none() && pair.recipient_side.is_none() {
            pairs.remove(&key);
        }
        Ok(())
    }

    /// `recipient` refused `offer` from `sender`: a waiting sender is
    /// told, here or in another process.
    pub fn refuse(&self, offer: MessageId, sender: (UserId, &str), recipient: (UserId, &str)) {
        let detail = format!("{} refused the file", recipient.1);
        if let Some(pair) = lock(&self.pairs).remove(&(offer, sender.0))
            && let Some(side) = pair.sender_side
        {
            side.ended(offer, Outcome::Refused, &detail);
        }
        if let Some(node) = self.node() {
            let wire = Wire {
                kind: WireKind::Ended,
                offer,
                node,
                role: Role::Recipient,
                sender: sender.0,
                sender_name: sender.1.to_owned(),
                recipient: recipient.0,
                recipient_name: recipient.1.to_owned(),
                info: PeerInfo::default(),
                token: [0; 32],
                resume_from: 0,
                outcome: Outcome::Refused,
                detail,
            };
            self.send_to_holders(sender.0, &wire);
        }
    }

    /// Checks a relayed chunk from `side` for `offer` and says where it
    /// goes and when (the sender's account's relay pace).
    pub fn relay(
        &self,
        side: u64,
        user: UserId,
        offer: MessageId,
        offset: u64,
        len: usize,
    ) -> Result<RelayTicket, CoreError> {
        if len == 0 || len > MAX_RELAY_CHUNK_BYTES {
            return Err(CoreError::invalid(format!(
                "a relayed chunk holds 1 to {MAX_RELAY_CHUNK_BYTES} bytes"
            )));
        }
        let mut pairs = lock(&self.pairs);
        let pair = pairs
            .get_mut(&(offer, user))
            .filter(|p| p.started && p.sender_side.as_ref().is_some_and(|s| s.id == side))
            .ok_or_else(no_such_offer)?;
        if pair.remote_peer.is_some() {
            return Err(CoreError::invalid(
                "the other side is connected to another server process; the relay needs both on one",
            ));
        }
        let (Some(recipient), Some(file)) = (&pair.recipient_side, &pair.offer) else {
            return Err(no_such_offer());
        };
        if self.settings.relay_max_file_bytes < file.size {
            return Err(CoreError::invalid(format!(
                "the server relays files up to {} bytes (relay_max_file_bytes); this one is {}",
                self.settings.relay_max_file_bytes, file.size
            )));
        }
        if offset != pair.relay_next {
            return Err(CoreError::invalid(format!(
                "the next chunk starts at offset {}, not {offset}",
                pair.relay_next
            )));
        }
        let end = offset.saturating_add(len as u64);
        if end > file.size {
            return Err(CoreError::invalid("the chunk goes past the end of the file"));
        }
        pair.relay_next = end;
        let to = recipient.senders.chunks.clone();
        drop(pairs);
        self.relayed_bytes.fetch_add(len as u64, Ordering::Relaxed);
        Ok(RelayTicket {
            to,
            not_before: self.spend(user, len as u64, Instant::now()),
            next_offset: end,
        })
    }

    /// Takes `bytes` from `user`'s relay budget; returns when they may go.
    /// The budget refills at the pace and holds one second of it; spending
    /// past it is a debt the caller waits out, so the pace holds however
    /// large the chunks.
    fn spend(&self, user: UserId, bytes: u64, now: Instant) -> Instant {
        let rate = self.settings.relay_bytes_per_sec;
        if rate == 0 {
            return now;
        }
        let rate = rate as f64;
        let mut budgets = lock(&self.budgets);
        if budgets.len() >= crate::limits::MAX_TRACKED_SENDERS {
            budgets.retain(|_, (left, at)| *left + now.saturating_duration_since(*at).as_secs_f64() * rate < rate);
        }
        let (left, at) = budgets.get(&user).copied().unwrap_or((rate, now));
        let refilled = (left + now.saturating_duration_since(at).as_secs_f64() * rate).min(rate);
        let left = refilled - bytes as f64;
        budgets.insert(user, (left, now));
        if left >= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(-left / rate)
        }
    }
}

/// A [`Wire`] about `pair` for the side of `role`, with `info`; the caller
/// sets the kind, the node and what the kind needs.
fn wire_of(offer: MessageId, role: Role, pair: &Pair, info: &PeerInfo) -> Wire {
    Wire {
        kind: WireKind::Join,
        offer,
        node: 0,
        role,
        sender: pair.sender,
        sender_name: pair.sender_name.clone(),
        recipient: pair.recipient,
        recipient_name: pair.recipient_name.clone(),
        info: info.clone(),
        token: [0; 32],
        resume_from: 0,
        outcome: Outcome::Failed,
        detail: String::new(),
    }
}

fn no_such_offer() -> CoreError {
    CoreError::invalid("no such file offer waiting for you")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TransferSettings {
        TransferSettings {
            max_file_bytes: 1 << 30,
            relay_max_file_bytes: 1 << 20,
            relay_bytes_per_sec: 0,
        }
    }

    fn offer(size: u64) -> FileOffer {
        FileOffer::new("photo.jpg", size, &[7u8; 32], 1 << 30).expect("valid offer")
    }

    fn join(role: Role, sender: u64, offer_data: Option<FileOffer>) -> Join {
        Join {
            offer_id: MessageId(9),
            role,
            sender: UserId(sender),
            sender_name: format!("user{sender}"),
            recipient: UserId(2),
            recipient_name: "bob".into(),
            offer: offer_data,
            info: PeerInfo {
                candidates: vec!["127.0.0.1:4000".parse().expect("address")],
                fingerprint: [sender as u8; 32],
            },
            resume_from: 0,
        }
    }

    fn side(inbox: &Inbox) -> &SideHandle {
        inbox.side()
    }

    fn ready(inbox: &mut Inbox) -> Option<(String, PeerInfo)> {
        match inbox.control.try_recv() {
            Ok(TransferEvent::Ready { peer, info, .. }) => Some((peer, info)),
            _ => None,
        }
    }

    #[test]
    fn an_offer_survives_its_body_and_bad_names_are_refused() {
        let o = offer(1_234_567);
        let body = o.body();
        assert!(body.starts_with("[file] photo.jpg (1.2 MB)\n"), "{body}");
        assert_eq!(FileOffer::parse(&body), Some(o));
        assert_eq!(FileOffer::parse("hello"), None);
        assert_eq!(FileOffer::parse("parley-file/1 size=1 sha256=zz name=a"), None);
        for bad in ["", ".", "..", "a/b", "a\\b", "a\nb", &"x".repeat(256)] {
            assert!(FileOffer::new(bad, 1, &[0; 32], 10).is_err(), "{bad:?}");
        }
        assert!(FileOffer::new("a", 0, &[0; 32], 10).is_err());
        assert!(FileOffer::new("a", 11, &[0; 32], 10).is_err());
        assert!(FileOffer::new("a", 1, &[0; 31], 10).is_err());
    }

    #[test]
    fn both_sides_get_each_others_details_once_both_joined() {
        let t = Arc::new(Transfers::new(settings(), Arc::new(Hub::default())));
        let (mut alice, mut bob) = (t.inbox(), t.inbox());
        t.join(side(&alice), join(Role::Sender, 1, None)).expect("sender joins");
        assert!(ready(&mut alice).is_none());
        let got = t
            .join(side(&bob), join(Role::Recipient, 1, Some(offer(10))))
            .expect("recipient joins");
        assert_eq!(got, Some(offer(10)));
        let (peer, info) = ready(&mut alice).expect("alice hears");
        assert_eq!((peer.as_str(), info.fingerprint), ("bob", [1; 32]));
        let (peer, info) = ready(&mut bob).expect("bob hears");
        assert_eq!((peer.as_str(), info.fingerprint), ("user1", [1; 32]));
    }

    #[test]
    fn a_stranger_serving_someone_elses_offer_waits_alone_and_learns_nothing() {
        let t = Arc::new(Transfers::new(settings(), Arc::new(Hub::default())));
        let (mut mallory, mut bob, mut alice) = (t.inbox(), t.inbox(), t.inbox());
        // mallory serves offer 9 (alice's): taken, as any join of her own.
        t.join(side(&mallory), join(Role::Sender, 3, None))
            .expect("a join of her own");
        t.join(side(&bob), join(Role::Recipient, 1, Some(offer(10))))
            .expect("bob joins");
        assert!(mallory.control.try_recv().is_err(), "mallory hears nothing");
        assert!(bob.control.try_recv().is_err(), "bob does not meet mallory");
        // A second join of hers is no different from the first.
        let again = t.inbox();
        t.join(side(&again), join(Role::Sender, 3, None))
            .expect("still her own");
        t.join(side(&alice), join(Role::Sender, 1, None)).expect("alice joins");
        assert!(ready(&mut alice).is_some());
        assert!(ready(&mut bob).is_some());
        assert!(mallory.control.try_recv().is_err());
    }

    #[test]
    fn relayed_chunks_must_follow_each_other_and_stay_in_the_file() {
        let t = Arc::new(Transfers::new(settings(), Arc::new(Hub::default())));
        let (alice, bob) = (t.inbox(), t.inbox());
        t.join(side(&alice), join(Role::Sender, 1, None)).expect("sender");
        t.join(side(&bob), join(Role::Recipient, 1, Some(offer(10))))
            .expect("recipient");
        let id = MessageId(9);
        assert!(
            t.relay(bob.side().id(), UserId(2), id, 0, 4).is_err(),
            "only the sender relays"
        );
        assert!(
            t.relay(alice.side().id(), UserId(1), id, 1, 4).is_err(),
            "must start at 0"
        );
        let ticket = t.relay(alice.side().id(), UserId(1), id, 0, 6).expect("first chunk");
        assert_eq!(ticket.next_offset, 6);
        assert!(t.relay(alice.side().id(), UserId(1), id, 6, 5).is_err(), "past the end");
        assert!(t.relay(alice.side().id(), UserId(1), id, 6, 4).is_ok());
    }

    #[test]
    fn a_side_leaving_a_started_transfer_tells_the_other() {
        let t = Arc::new(Transfers::new(settings(), Arc::new(Hub::default())));
        let (alice, mut bob) = (t.inbox(), t.inbox());
        t.join(side(&alice), join(Role::Sender, 1, None)).expect("sender");
        t.join(side(&bob), join(Role::Recipient, 1, Some(offer(10))))
            .expect("recipient");
        let _ = ready(&mut bob);
        drop(alice);
        assert!(matches!(
            bob.control.try_recv(),
            Ok(TransferEvent::Ended {
                outcome: Outcome::PeerGone,
                ..
            })
        ));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn the_relay_pace_is_a_debt_waited_out() {
        let t = Arc::new(Transfers::new(
            TransferSettings {
                relay_bytes_per_sec: 1000,
                ..settings()
            },
            Arc::new(Hub::default()),
        ));
        let now = Instant::now();
        assert_eq!(t.spend(UserId(1), 1000, now), now, "one second's worth is free");
        let at = t.spend(UserId(1), 500, now);
        assert!((at - now).as_millis() == 500, "{:?}", at - now);
        assert_eq!(t.spend(UserId(2), 10, now), now, "budgets are per account");
    }
}
