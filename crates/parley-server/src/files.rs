//! File transfer on a native connection: the requests of "File transfer"
//! in docs/PROTOCOL.md, and the frames the rendezvous sends on its own.
//!
//! The rules live in `parley_core::files`; this module turns frames into
//! calls on it, keeps the connection's [`FileSide`] (its inbox of transfer
//! events and its relayed chunks in flight), and passes relayed chunks on
//! in the order they were read, at the account's relay pace.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parley_core::files::{Inbox, Join, Outcome, PeerInfo, RELAY_WINDOW, Role, TransferEvent};
use parley_core::{CoreError, MessageId, Seq, Service, Session};
use parley_proto::ServerFrame;
use parley_proto::v1::{self, client_frame, server_frame::Body};
use tokio::sync::oneshot;

use crate::convert::{core_error_frame, frame};

/// How long a relayed chunk may wait for room in the recipient's queue (a
/// recipient that stopped reading) before the transfer fails.
const RELAY_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection's part in file transfers, made at its first transfer
/// request and dropped with its session (which ends its transfers).
pub struct FileSide {
    inbox: Inbox,
    /// Relayed chunks read and not yet passed on.
    relaying: Arc<AtomicUsize>,
    /// Done when the chunk read last has been passed on: the next one
    /// waits for it, so chunks leave in the order they came.
    last_chunk: Option<oneshot::Receiver<()>>,
}

type Reply = std::pin::Pin<Box<dyn std::future::Future<Output = ServerFrame> + Send>>;

impl FileSide {
    /// Whether the connection may read more requests: not while
    /// [`RELAY_WINDOW`] chunks wait to be passed on.
    pub fn may_read(side: &Option<Box<FileSide>>) -> bool {
        side.as_ref()
            .is_none_or(|s| s.relaying.load(Ordering::Relaxed) < RELAY_WINDOW)
    }

    /// The next transfer event for this connection (control events first).
    pub async fn next_event(side: &mut Option<Box<FileSide>>) -> TransferEvent {
        let Some(side) = side.as_mut() else {
            return std::future::pending().await;
        };
        let inbox = &mut side.inbox;
        tokio::select! {
            biased;
            Some(event) = inbox.control.recv() => event,
            Some(event) = inbox.chunks.recv() => event,
            else => std::future::pending().await,
        }
    }

    /// The frame that carries `event` to the client.
    pub fn event_frame(side: &Option<Box<FileSide>>, event: TransferEvent) -> ServerFrame {
        match event {
            TransferEvent::Ready {
                offer,
                peer,
                info,
                token,
                resume_from,
                relay,
                relay_bytes_per_sec,
            } => frame(
                0,
                Body::TransferReady(Box::new(v1::TransferReady {
                    offer_id: offer.0,
                    peer,
                    peer_info: Some(peer_info(&info)),
                    token: token.to_vec(),
                    resume_from,
                    relay,
                    relay_bytes_per_sec,
                })),
            ),
            TransferEvent::Chunk { offer, offset, data } => frame(
                0,
                Body::RelayedChunk(v1::RelayChunk {
                    offer_id: offer.0,
                    offset,
                    data,
                }),
            ),
            TransferEvent::Ended { offer, outcome, detail } => {
                if let Some(side) = side {
                    side.inbox.side().forget(offer);
                }
                ended(offer, outcome, detail)
            }
        }
    }

    /// Starts a file request of `session`'s connection (from `peer`).
    pub fn start(
        side: &mut Option<Box<FileSide>>,
        service: &Arc<Service>,
        session: &Session,
        peer: SocketAddr,
        id: u64,
        body: client_frame::Body,
    ) -> Result<Reply, CoreError> {
        use client_frame::Body as B;
        let me = side
            .get_or_insert_with(|| {
                Box::new(FileSide {
                    inbox: service.transfers().inbox(),
                    relaying: Arc::new(AtomicUsize::new(0)),
                    last_chunk: None,
                })
            })
            .as_mut();
        let user = session.user();
        // The relay's chunks, the one frequent request, need nothing else.
        let body = match body {
            B::RelayChunk(c) => return me.relay(user, id, c),
            other => other,
        };
        let handle = me.inbox.side().clone();
        let my_name = session.name().to_owned();
        let online = seen_online(service, user);
        match body {
            B::OfferFile(o) => {
                let sent = session.offer_file(&o.to, &o.client_msg_id, &o.name, o.size, &o.sha256)?;
                Ok(boxed(id, async move { sent.await.map(|a| crate::convert::sent(&a)) }))
            }
            B::ServeFile(s) => {
                let info = checked_info(s.peer.as_ref(), peer)?;
                let found = session.find_user(&s.to);
                Ok(boxed(id, async move {
                    let (recipient, recipient_name) = found.await?;
                    let offer = handle.registry().join(
                        &handle,
                        Join {
                            offer_id: MessageId(s.offer_id),
                            role: Role::Sender,
                            sender: user,
                            sender_name: my_name,
                            recipient,
                            recipient_name: recipient_name.clone(),
                            offer: None,
                            info,
                            resume_from: 0,
                        },
                    )?;
                    Ok(joined(s.offer_id, recipient_name, offer.as_ref(), online(recipient)))
                }))
            }
            B::AcceptFile(a) => {
                let info = checked_info(a.peer.as_ref(), peer)?;
                let found = session.find_offer(Seq(a.seq));
                Ok(boxed(id, async move {
                    let (message, offer) = found.await?;
                    handle.registry().join(
                        &handle,
                        Join {
                            offer_id: message.id,
                            role: Role::Recipient,
                            sender: message.sender,
                            sender_name: message.sender_name.clone(),
                            recipient: user,
                            recipient_name: my_name,
                            offer: Some(offer.clone()),
                            info,
                            resume_from: a.resume_from,
                        },
                    )?;
                    Ok(joined(
                        message.id.0,
                        message.sender_name,
                        Some(&offer),
                        online(message.sender),
                    ))
                }))
            }
            B::RefuseFile(r) => {
                let refused = session.refuse_offer(Seq(r.seq));
                Ok(boxed(id, async move {
                    let offer = refused.await?;
                    Ok(ended_body(offer, Outcome::Refused, String::new()))
                }))
            }
            B::TransferDone(d) => {
                let outcome = outcome_from(d.result)?;
                let mut detail = d.detail;
                truncate(&mut detail, parley_core::files::MAX_DETAIL_BYTES);
                let offer = MessageId(d.offer_id);
                handle.registry().end(&handle, offer, outcome, &detail)?;
                handle.forget(offer);
                Ok(Box::pin(async move { frame(id, ended_body(offer, outcome, detail)) }))
            }
            _ => Err(CoreError::invalid("not a file request")),
        }
    }

    /// Checks a relayed chunk and passes it on after the one before it, at
    /// the account's relay pace.
    fn relay(&mut self, user: parley_core::UserId, id: u64, c: v1::RelayChunk) -> Result<Reply, CoreError> {
        let offer = MessageId(c.offer_id);
        let handle = self.inbox.side();
        let ticket = handle
            .registry()
            .relay(handle.id(), user, offer, c.offset, c.data.len())?;
        let before = self.last_chunk.take();
        let (done, after) = oneshot::channel();
        self.last_chunk = Some(after);
        let relaying = Arc::clone(&self.relaying);
        relaying.fetch_add(1, Ordering::Relaxed);
        let handle = handle.clone();
        Ok(Box::pin(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            tokio::time::sleep_until(ticket.not_before.into()).await;
            let event = TransferEvent::Chunk {
                offer,
                offset: c.offset,
                data: c.data,
            };
            let passed = tokio::time::timeout(RELAY_SEND_TIMEOUT, ticket.to.send(event)).await;
            let _ = done.send(());
            relaying.fetch_sub(1, Ordering::Relaxed);
            match passed {
                Ok(Ok(())) => frame(
                    id,
                    Body::ChunkRelayed(v1::ChunkRelayed {
                        offer_id: offer.0,
                        next_offset: ticket.next_offset,
                    }),
                ),
                _ => {
                    let detail = "the recipient stopped reading; the relay gave up";
                    let _ = handle.registry().end(&handle, offer, Outcome::Failed, detail);
                    handle.forget(offer);
                    core_error_frame(id, &CoreError::invalid(detail))
                }
            }
        }))
    }
}

/// Whether `peer` is online as `user` may know it: only what presence by
/// consent shows, so an offer reveals nobody's presence.
fn seen_online(service: &Arc<Service>, user: parley_core::UserId) -> impl Fn(parley_core::UserId) -> bool + use<> {
    let service = Arc::clone(service);
    move |peer| service.hub().sees(user, peer) && service.hub().is_online(peer)
}

/// Whether a request is a file request (answered by [`FileSide::start`]).
pub fn is_file_request(body: &client_frame::Body) -> bool {
    use client_frame::Body as B;
    matches!(
        body,
        B::OfferFile(_) | B::ServeFile(_) | B::AcceptFile(_) | B::RefuseFile(_) | B::RelayChunk(_) | B::TransferDone(_)
    )
}

fn boxed<F>(id: u64, future: F) -> Reply
where
    F: std::future::Future<Output = Result<Body, CoreError>> + Send + 'static,
{
    Box::pin(async move {
        match future.await {
            Ok(body) => frame(id, body),
            Err(e) => core_error_frame(id, &e),
        }
    })
}

/// A side's announced reach, checked, with the address the server saw it
/// connect from added (a NAT's public address; with the announced port,
/// which NATs that keep ports preserve).
fn checked_info(info: Option<&v1::PeerInfo>, seen_from: SocketAddr) -> Result<PeerInfo, CoreError> {
    let info = info.ok_or_else(|| CoreError::invalid("peer is missing"))?;
    let fingerprint: [u8; 32] = info
        .fingerprint
        .as_slice()
        .try_into()
        .map_err(|_| CoreError::invalid("fingerprint must be 32 bytes"))?;
    if info.candidates.len() > parley_core::files::MAX_CANDIDATES {
        return Err(CoreError::invalid(format!(
            "at most {} candidates",
            parley_core::files::MAX_CANDIDATES
        )));
    }
    let mut candidates = Vec::with_capacity(info.candidates.len() + 1);
    for text in &info.candidates {
        let address: SocketAddr = text
            .parse()
            .map_err(|_| CoreError::invalid(format!("candidate {text:?} is not an ip:port address")))?;
        candidates.push(address);
    }
    if let Some(port) = candidates.first().map(SocketAddr::port) {
        let seen = SocketAddr::new(seen_from.ip(), port);
        if !seen_from.ip().is_unspecified() && !candidates.contains(&seen) {
            candidates.push(seen);
        }
    }
    Ok(PeerInfo {
        candidates,
        fingerprint,
    })
}

fn peer_info(info: &PeerInfo) -> v1::PeerInfo {
    v1::PeerInfo {
        candidates: info.candidates.iter().map(ToString::to_string).collect(),
        fingerprint: info.fingerprint.to_vec(),
    }
}

fn joined(offer_id: u64, peer: String, offer: Option<&parley_core::files::FileOffer>, peer_online: bool) -> Body {
    Body::TransferJoined(v1::TransferJoined {
        offer_id,
        peer,
        name: offer.map(|o| o.name.clone()).unwrap_or_default(),
        size: offer.map_or(0, |o| o.size),
        sha256: offer.map(|o| o.sha256.to_vec()).unwrap_or_default(),
        peer_online,
    })
}

fn ended(offer: MessageId, outcome: Outcome, detail: String) -> ServerFrame {
    frame(0, ended_body(offer, outcome, detail))
}

fn ended_body(offer: MessageId, outcome: Outcome, detail: String) -> Body {
    Body::TransferEnded(v1::TransferEnded {
        offer_id: offer.0,
        result: result_code(outcome) as i32,
        detail,
    })
}

fn result_code(outcome: Outcome) -> v1::TransferResult {
    use v1::TransferResult as R;
    match outcome {
        Outcome::Complete => R::Complete,
        Outcome::Refused => R::Refused,
        Outcome::HashMismatch => R::HashMismatch,
        Outcome::PeerGone => R::PeerGone,
        Outcome::Cancelled => R::Cancelled,
        Outcome::Failed => R::Failed,
    }
}

fn outcome_from(result: i32) -> Result<Outcome, CoreError> {
    use v1::TransferResult as R;
    match R::try_from(result) {
        Ok(R::Complete) => Ok(Outcome::Complete),
        Ok(R::HashMismatch) => Ok(Outcome::HashMismatch),
        Ok(R::Cancelled) => Ok(Outcome::Cancelled),
        Ok(R::Failed) => Ok(Outcome::Failed),
        _ => Err(CoreError::invalid(
            "result must be COMPLETE, HASH_MISMATCH, CANCELLED or FAILED",
        )),
    }
}

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}
