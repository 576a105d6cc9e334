//! The bus between parleyd processes, on NATS: the workers of one machine
//! and the nodes of a cluster tell each other which users' sessions they
//! hold, and send each other what those sessions need (see
//! [`parley_core::bus`] for what crosses and why it can never lose, reorder
//! or duplicate what a client sees).
//!
//! Subjects (under a prefix, `parley` by default, so that several clusters
//! can share one NATS):
//! - `PREFIX.all` — to every process: hello, heartbeat, bye, lag, each
//!   change of what a process holds of a user, and each failed login and
//!   registration (so the throttles hold across processes).
//! - `PREFIX.node.ID` — to one process: messages, rings, notices and close
//!   requests for the users whose sessions it holds, and the answer to its
//!   hello (everything the answering process holds).
//!
//! Messages go to the processes that hold their recipient's sessions, never
//! to all: a process learns who holds what from the announcements, so a
//! message costs one bus frame per process holding a session of its
//! recipient, and a message to a user offline everywhere costs none. A
//! process that stops sending heartbeats for `node_timeout` is taken as
//! gone: its users are offline unless another process holds them.
//!
//! The connection uses NATS's `no_echo`, so a process never receives its own
//! frames.

pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use parley_core::UserId;
use parley_core::bus::{Bus, Holding, NodeId, Remote};
use parley_core::hub::Hub;
use parley_core::sync::lock;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::wire::{Body, Frame};

/// Entries in one frame of holdings (a hello's answer is cut into frames
/// of this many, well under NATS's default 1 MiB payload).
const HOLDINGS_PER_FRAME: usize = 8_192;

/// Most bytes of frames one bundle gathers (a frame larger than this goes
/// alone); well under NATS's default 1 MiB payload.
const BUNDLE_BYTES: usize = 256 * 1024;

/// How the bus connects and how it judges other processes.
#[derive(Clone, Debug)]
pub struct BusSettings {
    /// The NATS server, `nats://host:port` (several, comma-separated).
    pub url: String,
    /// Subject prefix shared by the processes of one service.
    pub prefix: String,
    /// How often this process says it is alive.
    pub heartbeat: Duration,
    /// A process not heard from for this long is gone.
    pub node_timeout: Duration,
    /// Frames waiting to be published; past it, frames are dropped and
    /// every process is told to read the store.
    pub queue: usize,
}

/// Counters, for metrics.
#[derive(Debug, Default)]
pub struct BusCounters {
    /// Frames handed to NATS.
    pub sent: AtomicU64,
    /// Frames received and understood.
    pub received: AtomicU64,
    /// Frames dropped because the outgoing queue was full.
    pub dropped: AtomicU64,
    /// Frames received that did not decode.
    pub malformed: AtomicU64,
    /// Other processes heard from lately.
    pub nodes: AtomicU64,
    /// Times the connection to NATS came back.
    pub reconnects: AtomicU64,
}

/// Why the bus could not start.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot reach the bus at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("cannot subscribe on the bus: {0}")]
    Subscribe(String),
}

/// The NATS bus of one process.
pub struct NatsBus {
    node: NodeId,
    prefix: String,
    /// Frames for the publisher task: (subject, frame).
    out: mpsc::Sender<(String, Bytes)>,
    /// Set when a frame was dropped; the publisher then tells everyone to
    /// read the store.
    dropped_some: AtomicBool,
    counters: Arc<BusCounters>,
    client: async_nats::Client,
    stop: CancellationToken,
}

impl Bus for NatsBus {
    fn node(&self) -> NodeId {
        self.node
    }

    fn send(&self, node: NodeId, event: Remote) {
        self.queue(self.direct(node), Body::Remote(event));
    }

    fn announce(&self, user: UserId, name: &Arc<str>, holding: Holding) {
        self.queue(self.all(), Body::Holdings(vec![(user, Arc::clone(name), holding)]));
    }

    fn broadcast(&self, event: Remote) {
        self.queue(self.all(), Body::Remote(event));
    }
}

impl NatsBus {
    /// Connects to NATS and starts the bus's tasks for `hub`: from now on
    /// the hub's routing reaches the other processes. The connection is
    /// retried in the background if NATS is not reachable yet (sessions of
    /// this process are served meanwhile, and read the store once it is).
    pub async fn start(settings: BusSettings, hub: Arc<Hub>) -> Result<Arc<NatsBus>, BusError> {
        let node = loop {
            let id = rand::random::<u64>();
            if id != 0 {
                break id;
            }
        };
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name(format!("parleyd {node:016x}"))
            .no_echo()
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let events = events_tx.clone();
                async move {
                    let _ = events.send(event);
                }
            })
            .connect(settings.url.as_str())
            .await
            .map_err(|e| BusError::Connect {
                url: settings.url.clone(),
                detail: e.to_string(),
            })?;
        let prefix = settings.prefix.clone();
        let all = client
            .subscribe(format!("{prefix}.all"))
            .await
            .map_err(|e| BusError::Subscribe(e.to_string()))?;
        let direct = client
            .subscribe(format!("{prefix}.node.{node}"))
            .await
            .map_err(|e| BusError::Subscribe(e.to_string()))?;
        let (out, out_rx) = mpsc::channel(settings.queue.max(1));
        let bus = Arc::new(NatsBus {
            node,
            prefix,
            out,
            dropped_some: AtomicBool::new(false),
            counters: Arc::new(BusCounters::default()),
            client: client.clone(),
            stop: CancellationToken::new(),
        });
        hub.attach_bus(Arc::clone(&bus) as Arc<dyn Bus>);
        let peers = Arc::new(Peers::default());
        tokio::spawn(publish(Arc::clone(&bus), client, out_rx));
        tokio::spawn(receive(
            Arc::clone(&bus),
            Arc::clone(&hub),
            Arc::clone(&peers),
            futures::stream::select(all, direct),
        ));
        tokio::spawn(tick(Arc::clone(&bus), Arc::clone(&hub), peers, settings));
        tokio::spawn(watch_connection(Arc::clone(&bus), hub, events_rx));
        // Everyone answers with what they hold.
        bus.queue(bus.all(), Body::Hello);
        tracing::info!(node = %format!("{node:016x}"), prefix = %bus.prefix, "joined the bus");
        Ok(bus)
    }

    /// Counters, for metrics.
    pub fn counters(&self) -> &BusCounters {
        &self.counters
    }

    /// Says goodbye (the others forget this process at once instead of
    /// after the node timeout) and stops the bus's tasks.
    pub async fn leave(&self) {
        let frame = Frame {
            from: self.node,
            body: Body::Bye,
        };
        let _ = self.client.publish(self.all(), frame.encode()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
        self.stop.cancel();
    }

    /// Stops the bus's tasks without a goodbye, as a process that dies
    /// does: the others forget it only after the node timeout.
    pub fn halt(&self) {
        self.stop.cancel();
    }

    fn all(&self) -> String {
        format!("{}.all", self.prefix)
    }

    fn direct(&self, node: NodeId) -> String {
        format!("{}.node.{node}", self.prefix)
    }

    fn queue(&self, subject: String, body: Body) {
        let frame = Frame { from: self.node, body };
        if self.out.try_send((subject, frame.encode())).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped_some.store(true, Ordering::Release);
        }
    }

    /// Sends `node` everything this process holds.
    fn send_holdings(&self, hub: &Hub, node: NodeId) {
        let holdings = hub.holdings();
        for chunk in holdings.chunks(HOLDINGS_PER_FRAME) {
            self.queue(self.direct(node), Body::Holdings(chunk.to_vec()));
        }
    }
}

/// The other processes heard from, and when last.
#[derive(Default)]
struct Peers {
    seen: Mutex<HashMap<NodeId, Instant>>,
}

impl Peers {
    /// Notes `node` as heard from now; true when it was not known.
    fn heard(&self, node: NodeId) -> bool {
        lock(&self.seen).insert(node, Instant::now()).is_none()
    }

    fn forget(&self, node: NodeId) {
        lock(&self.seen).remove(&node);
    }

    /// Forgets and returns the processes silent for `timeout`.
    fn silent(&self, timeout: Duration) -> Vec<NodeId> {
        let mut seen = lock(&self.seen);
        let gone: Vec<NodeId> = seen
            .iter()
            .filter(|(_, at)| at.elapsed() >= timeout)
            .map(|(node, _)| *node)
            .collect();
        for node in &gone {
            seen.remove(node);
        }
        gone
    }

    fn count(&self) -> usize {
        lock(&self.seen).len()
    }
}

/// Hands queued frames to NATS, in order. Frames already queued behind one
/// for the same subject go with it as one bundle (`wire::bundle`), up to
/// [`BUNDLE_BYTES`]: a commit of hundreds of messages to the users of
/// another process is a few NATS messages, not hundreds.
async fn publish(bus: Arc<NatsBus>, client: async_nats::Client, mut frames: mpsc::Receiver<(String, Bytes)>) {
    // A frame taken from the queue that could not join the bundle before it.
    let mut held_over: Option<(String, Bytes)> = None;
    loop {
        let next = match held_over.take() {
            Some(frame) => Some(frame),
            None => tokio::select! {
                next = frames.recv() => next,
                () = bus.stop.cancelled() => None,
            },
        };
        let Some((subject, first)) = next else { return };
        // Let the task that queued this frame queue the rest of its burst
        // (a commit's messages are handed over one after the other).
        tokio::task::yield_now().await;
        // Each frame takes its length prefix in a bundle.
        let mut size = 4 + first.len();
        let mut parts = vec![first];
        while size < BUNDLE_BYTES {
            match frames.try_recv() {
                Ok((to, frame)) if to == subject && size + 4 + frame.len() <= BUNDLE_BYTES => {
                    size += 4 + frame.len();
                    parts.push(frame);
                }
                Ok(other) => {
                    held_over = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let count = parts.len() as u64;
        let payload = match parts.as_slice() {
            [only] => only.clone(),
            _ => wire::bundle(&parts),
        };
        match client.publish(subject, payload).await {
            Ok(()) => {
                bus.counters.sent.fetch_add(count, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(error = %e, frames = count, "bus frames were not published");
                bus.counters.dropped.fetch_add(count, Ordering::Relaxed);
                bus.dropped_some.store(true, Ordering::Release);
            }
        }
        if held_over.is_none() && frames.is_empty() && bus.dropped_some.swap(false, Ordering::AcqRel) {
            // What was dropped cannot be told apart: every process reads
            // the store for every session.
            tracing::warn!("bus frames were dropped; every process's sessions read the store");
            let lag = Frame {
                from: bus.node,
                body: Body::Lag,
            };
            let _ = client.publish(bus.all(), lag.encode()).await;
        }
    }
}

/// Applies what other processes send.
async fn receive(
    bus: Arc<NatsBus>,
    hub: Arc<Hub>,
    peers: Arc<Peers>,
    mut frames: impl futures::Stream<Item = async_nats::Message> + Unpin,
) {
    loop {
        let message = tokio::select! {
            m = frames.next() => m,
            () = bus.stop.cancelled() => None,
        };
        let Some(message) = message else { return };
        let parts = match wire::frames_of(&message.payload) {
            Ok(parts) => parts,
            Err(e) => {
                bus.counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, subject = %message.subject, "a bus bundle did not decode");
                continue;
            }
        };
        for part in parts {
            apply(&bus, &hub, &peers, part, &message.subject);
        }
    }
}

/// Applies one frame another process sent.
fn apply(bus: &NatsBus, hub: &Hub, peers: &Peers, part: &[u8], subject: &str) {
    let frame = match Frame::decode(part) {
        Ok(frame) => frame,
        Err(e) => {
            bus.counters.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, subject = %subject, "a bus frame did not decode");
            return;
        }
    };
    bus.counters.received.fetch_add(1, Ordering::Relaxed);
    let from = frame.from;
    if from == bus.node {
        return;
    }
    let hello = matches!(frame.body, Body::Hello);
    let new = !matches!(frame.body, Body::Bye) && peers.heard(from);
    match frame.body {
        // Its hello: tell it what this process holds.
        Body::Hello => bus.send_holdings(hub, from),
        Body::Heartbeat => {}
        Body::Bye => {
            peers.forget(from);
            hub.node_gone(from);
        }
        Body::Holdings(entries) => {
            for (user, name, holding) in entries {
                hub.node_update(from, user, &name, holding);
            }
        }
        Body::Remote(event) => hub.from_bus(event),
        Body::Lag => hub.lag_all(),
    }
    if new && !hello {
        // A process heard from for the first time without its hello
        // (it started before this one subscribed, or is back after a
        // silence): ask it what it holds.
        bus.queue(bus.direct(from), Body::Hello);
    }
    bus.counters.nodes.store(peers.count() as u64, Ordering::Relaxed);
}

/// Heartbeats, silent processes, and the hub's memory of recent seqs.
async fn tick(bus: Arc<NatsBus>, hub: Arc<Hub>, peers: Arc<Peers>, settings: BusSettings) {
    let mut interval = tokio::time::interval(settings.heartbeat.max(Duration::from_millis(10)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = bus.stop.cancelled() => return,
        }
        bus.queue(bus.all(), Body::Heartbeat);
        for node in peers.silent(settings.node_timeout) {
            tracing::warn!(node = %format!("{node:016x}"), "a process on the bus fell silent; its users are offline unless held elsewhere");
            hub.node_gone(node);
        }
        bus.counters.nodes.store(peers.count() as u64, Ordering::Relaxed);
        ticks += 1;
        if ticks.is_multiple_of(10) {
            hub.sweep_recent();
        }
    }
}

/// Reacts to the connection's ups and downs.
async fn watch_connection(bus: Arc<NatsBus>, hub: Arc<Hub>, mut events: mpsc::UnboundedReceiver<async_nats::Event>) {
    // Whether the first connection was made (its event comes like any
    // other): only later ones follow an outage.
    let mut connected_before = false;
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            () = bus.stop.cancelled() => None,
        };
        let Some(event) = event else { return };
        match event {
            async_nats::Event::Connected if !connected_before => {
                connected_before = true;
                tracing::info!("connected to the bus");
            }
            async_nats::Event::Connected => {
                bus.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!("connected to the bus again");
                // Whatever was sent while the connection was down is lost:
                // every session here reads the store, and the others learn
                // again what this process holds.
                hub.lag_all();
                bus.queue(bus.all(), Body::Hello);
                for (user, name, holding) in hub.holdings() {
                    bus.announce(user, &name, holding);
                }
            }
            async_nats::Event::Disconnected => {
                tracing::warn!("lost the connection to the bus; retrying");
            }
            other => tracing::debug!(event = %other, "bus connection event"),
        }
    }
}
