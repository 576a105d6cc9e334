//! Senders that speak the protocol on their own sockets, for the scenarios
//! whose generator must cost as little per message as the server it loads:
//! relay (where NATS's side is driven by async-nats) and overload (which
//! must really offer twice what the server can take on the two cores they
//! share).
//!
//! A request is one encoded frame in a write that carries every send due at
//! that tick, and a reply is matched to its send by request id alone
//! (request id = sequence + 1; a resent message keeps its id). Through the
//! client library — two tasks, a channel, a map entry and a oneshot per
//! request — the generator spent more CPU per message than async-nats spends
//! on the NATS side, and its own timers fell behind: overload shed a third
//! of its sends, and relay's paced senders left up to a tenth of theirs more
//! than 10 ms late (docs/BENCHMARKS.md).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use parley_client::ErrorCode;
use parley_proto::v1::{self, client_frame, server_frame};
use parley_proto::{ClientFrame, ServerFrame, decode_frame, encode_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::cli::ClientIds;
use crate::common::{self, PerSecond};
use crate::relay::Schedule;
use crate::stats::Latency;
use crate::wire;
use parley_core::sync::lock;

/// Longest wait for replies still outstanding when the sending stops.
pub const OUTSTANDING_GRACE: Duration = Duration::from_secs(10);
/// Read reservation of a lean sender's socket.
const READ_CHUNK: usize = 64 * 1024;

/// Counts of the sends of one phase, over all its senders.
#[derive(Default)]
pub struct Tallies {
    /// Requests written (a resend counts again).
    pub issued: AtomicU64,
    /// Distinct messages sent (a resend does not count again).
    pub sent: AtomicU64,
    /// Sent replies.
    pub admitted: AtomicU64,
    /// BUSY replies.
    pub busy: AtomicU64,
    /// Any other error reply.
    pub other_errors: AtomicU64,
    /// Sends the generator dropped because too many were outstanding.
    pub shed: AtomicU64,
    /// Requests still unanswered after the grace period.
    pub unanswered: AtomicU64,
    /// The first error reply's text, for the notes.
    pub first_error: Mutex<Option<String>>,
}

impl Tallies {
    fn error(&self, message: String) {
        self.other_errors.fetch_add(1, Ordering::Relaxed);
        let mut first = lock(&self.first_error);
        first.get_or_insert(message);
    }

    /// The first error reply's text.
    pub fn first_error(&self) -> Option<String> {
        lock(&self.first_error).clone()
    }
}

/// Latencies one sender saw, from each send's due time to its reply (kept
/// only when paced).
pub struct SenderLatency {
    pub admitted: Latency,
    pub busy: Latency,
    /// How long after its due time each message was written to the socket:
    /// the generator's own lateness.
    pub late: Latency,
}

/// What a paced sender does with a send that falls due while
/// `max_outstanding` are unanswered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Keep it until a reply frees the window (relay: a closed window is
    /// backpressure, and the wait shows as latency).
    HoldBack,
    /// Drop it and count it shed (overload: an open loop must not slow down
    /// because the server does).
    Shed,
}

/// What one sender does.
pub struct SenderPlan {
    pub schedule: Schedule,
    pub size: usize,
    pub deadline: Instant,
    /// Unanswered sends at most; unpaced, the window of a closed loop.
    pub max_outstanding: usize,
    pub overflow: Overflow,
    /// Send a message refused with BUSY again (same id and body) once the
    /// retry-after has passed, as the client library does; otherwise it is
    /// only counted.
    pub resend_busy: bool,
    /// Paced, the shortest time between two writes: what falls due
    /// meanwhile goes out together at the next one. Zero writes each send
    /// when it falls due (a timer tick, about a millisecond, at the most).
    pub write_tick: Duration,
    /// Paced, record each send's lateness (`SenderLatency::late`); off
    /// where nobody reports it, since it is a histogram entry per send.
    pub lateness: bool,
    /// The idempotency keys of the sends.
    pub client_ids: ClientIds,
}

/// The idempotency key of send `seq`, made as it is encoded. Sends are
/// only resent after BUSY, which stored nothing, so a resend under a new
/// key (all but the counter) stores the message once all the same.
fn client_msg_id(kind: ClientIds, seq: u64) -> String {
    match kind {
        ClientIds::Counter => seq.to_string(),
        ClientIds::Library => parley_client::new_client_msg_id(),
        ClientIds::Random => common::hex(&rand::random::<[u8; 16]>()),
    }
}

/// The reading half of a sender's connection (TCP or a QUIC stream).
type Reader = Box<dyn AsyncRead + Unpin + Send>;
/// The writing half.
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// A sender logged in on its own socket (or QUIC connection).
pub struct LeanConnection {
    reader: Reader,
    writer: Writer,
    /// Bytes read past the login.
    input: BytesMut,
    /// The server's frame limit.
    max_frame: usize,
    /// What must live as long as the connection (a QUIC endpoint).
    _keep: Option<Box<dyn std::any::Any + Send>>,
}

/// Logs each of `names` in on its own socket, a few at a time; over QUIC
/// for a `quic://` server (any certificate accepted, as in
/// [`common::connect`]).
pub async fn login_all(server: &str, names: &[String], password: &str) -> anyhow::Result<Vec<LeanConnection>> {
    use futures::StreamExt;
    let parsed = parley_client::ServerAddress::parse(server).map_err(anyhow::Error::msg)?;
    let address = if parsed.quic {
        None
    } else {
        Some(wire::resolve(&parsed.authority).await?)
    };
    let parsed = &parsed;
    let connections: Vec<anyhow::Result<LeanConnection>> = futures::stream::iter(names)
        .map(|name| async move {
            let (reader, writer, keep): (Reader, Writer, Option<Box<dyn std::any::Any + Send>>) = match address {
                Some(address) => {
                    let (reader, writer) = wire::connect_from(address, None).await?.into_split();
                    (Box::new(reader), Box::new(writer), None)
                }
                None => {
                    let trust = parley_client::Trust::Pinned(None);
                    let quic = parley_client::quic::connect(parsed, &trust).await?;
                    (
                        Box::new(quic.reader),
                        Box::new(quic.writer),
                        Some(Box::new(quic.endpoint)),
                    )
                }
            };
            let mut handshake = wire::Handshake::start(tokio::io::join(reader, writer)).await?;
            handshake.login(name, password).await?;
            let (stream, input, max_frame) = handshake.into_parts();
            let (reader, writer) = stream.into_inner();
            Ok(LeanConnection {
                reader,
                writer,
                input,
                max_frame,
                _keep: keep,
            })
        })
        .buffered(common::LOGIN_CONCURRENCY)
        .collect()
        .await;
    connections.into_iter().collect()
}

/// Sends to `to` as `plan` says and reads the replies, on one socket in one
/// task. Paced, what fell due goes out when the pacing timer fires, one
/// write for all of it (or, held back by the window, when a reply frees
/// it). Unpaced, it keeps `max_outstanding` sends in flight and, like the
/// client library, waits the retry-after of a BUSY answer before sending
/// more.
pub async fn sender(
    connection: LeanConnection,
    to: String,
    plan: SenderPlan,
    tallies: Arc<Tallies>,
    admitted_per_second: Option<Arc<PerSecond>>,
) -> anyhow::Result<SenderLatency> {
    let LeanConnection {
        mut reader,
        mut writer,
        mut input,
        max_frame,
        _keep,
    } = connection;
    let schedule = plan.schedule;
    let paced = schedule.rate.is_some();
    // Shared by the writing and the reading halves of this one task
    // (atomics and a mutex only because the task must be Send).
    let outstanding = AtomicU64::new(0);
    let writing_done = AtomicBool::new(false);
    // Closed loop after BUSY: no sends before this, in ns after `start`.
    let paused_until_ns = AtomicU64::new(0);
    // Sequences refused with BUSY, to send again, with when they may go.
    let resends: Mutex<Vec<(u64, Instant)>> = Mutex::new(Vec::new());
    let lock_resends = || lock(&resends);
    let start = Instant::now();
    // Past this, unanswered sends are given up.
    let give_up = plan.deadline + OUTSTANDING_GRACE;
    let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    // A reply came (a held-back send may go) / the writer finished.
    let replied = Notify::new();
    let finished = Notify::new();
    let mut admitted = Latency::new()?;
    let mut busy = Latency::new()?;
    let mut late = Latency::new()?;

    let write = async {
        let mut out = BytesMut::new();
        let mut seq = 0u64;
        let encode = |out: &mut BytesMut, seq: u64| -> anyhow::Result<()> {
            let frame = ClientFrame {
                request_id: seq + 1,
                body: Some(client_frame::Body::Send(v1::SendMessage {
                    to: to.clone(),
                    client_msg_id: client_msg_id(plan.client_ids, seq),
                    body: common::payload(seq, schedule.stamp(seq), plan.size),
                })),
            };
            encode_frame(&frame, out, max_frame)?;
            outstanding.fetch_add(1, Ordering::Relaxed);
            tallies.issued.fetch_add(1, Ordering::Relaxed);
            Ok(())
        };
        loop {
            let now = Instant::now();
            // Past the deadline only refused sends still go out again.
            let sending = now < plan.deadline;
            let resending = !lock_resends().is_empty();
            if !sending && (!resending || now >= give_up) {
                break;
            }
            let until = start + Duration::from_nanos(get(&paused_until_ns));
            if sending && until > now {
                tokio::time::sleep_until(until.min(plan.deadline).into()).await;
                continue;
            }
            let room = |outstanding: &AtomicU64| get(outstanding) < plan.max_outstanding as u64;
            let mut next_resend: Option<Instant> = None;
            {
                let mut resends = lock_resends();
                let mut i = 0;
                while i < resends.len() && room(&outstanding) {
                    let (again, at) = resends[i];
                    if at <= now {
                        resends.swap_remove(i);
                        encode(&mut out, again)?;
                    } else {
                        next_resend = Some(next_resend.map_or(at, |n| n.min(at)));
                        i += 1;
                    }
                }
            }
            let due = if sending { schedule.due(now) } else { seq };
            let mut held_back = false;
            while seq < due {
                if !room(&outstanding) {
                    if plan.overflow == Overflow::HoldBack || !paced {
                        held_back = true;
                        break;
                    }
                    tallies.shed.fetch_add(1, Ordering::Relaxed);
                    seq += 1;
                    continue;
                }
                encode(&mut out, seq)?;
                tallies.sent.fetch_add(1, Ordering::Relaxed);
                if paced && plan.lateness {
                    late.record(now.saturating_duration_since(schedule.at(seq)));
                }
                seq += 1;
            }
            if !out.is_empty() {
                writer.write_all(&out).await.context("sending")?;
                out.clear();
            }
            let mut wake = match (sending, paced && !held_back) {
                (true, true) => schedule.at(seq).max(now + plan.write_tick).min(plan.deadline),
                (true, false) => plan.deadline,
                (false, _) => give_up,
            };
            if let Some(at) = next_resend {
                wake = wake.min(at);
            }
            tokio::select! {
                () = replied.notified(), if held_back || !sending => {}
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        writing_done.store(true, Ordering::Relaxed);
        finished.notify_one();
        anyhow::Ok(())
    };

    let read = async {
        loop {
            while let Some(frame) = decode_frame::<ServerFrame>(&mut input, max_frame)? {
                if frame.request_id == 0 {
                    if let Some(server_frame::Body::Goodbye(g)) = frame.body {
                        anyhow::bail!("server said goodbye: {}", g.message);
                    }
                    continue;
                }
                let now = Instant::now();
                let seq = frame.request_id - 1;
                // Measured from when the send was due, so time spent queued
                // in the generator counts, as open-loop load needs.
                let waited = now.saturating_duration_since(schedule.at(seq));
                match frame.body {
                    Some(server_frame::Body::Sent(_)) => {
                        tallies.admitted.fetch_add(1, Ordering::Relaxed);
                        if let Some(per_second) = &admitted_per_second {
                            per_second.add(now, 1);
                        }
                        if paced {
                            admitted.record(waited);
                        }
                    }
                    Some(server_frame::Body::Error(e)) if e.code == ErrorCode::Busy as i32 => {
                        tallies.busy.fetch_add(1, Ordering::Relaxed);
                        let wait = Duration::from_millis(u64::from(e.retry_after_ms.max(1)));
                        if plan.resend_busy {
                            lock_resends().push((seq, now + wait));
                        }
                        if paced {
                            busy.record(waited);
                        } else {
                            let until = (now + wait).saturating_duration_since(start).as_nanos();
                            paused_until_ns.store(u64::try_from(until).unwrap_or(u64::MAX), Ordering::Relaxed);
                        }
                    }
                    Some(server_frame::Body::Error(e)) => tallies.error(format!("send: {} ({})", e.message, e.code)),
                    _ => tallies.error("send: unexpected reply".into()),
                }
                outstanding.fetch_sub(1, Ordering::Relaxed);
                replied.notify_one();
            }
            if writing_done.load(Ordering::Relaxed) && get(&outstanding) == 0 {
                break;
            }
            input.reserve(READ_CHUNK);
            tokio::select! {
                read = reader.read_buf(&mut input) => {
                    if read.context("reading replies")? == 0 {
                        anyhow::bail!("server closed the connection");
                    }
                }
                () = finished.notified() => {}
                () = tokio::time::sleep_until(give_up.into()) => {
                    tallies.unanswered.fetch_add(get(&outstanding), Ordering::Relaxed);
                    break;
                }
            }
        }
        anyhow::Ok(())
    };
    let (written, read) = tokio::join!(write, read);
    written?;
    read?;
    Ok(SenderLatency { admitted, busy, late })
}
