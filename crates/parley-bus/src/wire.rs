//! The bus's frames and their encoding: a version byte, a kind byte, the
//! sending node, then the kind's fields — integers little-endian, strings
//! as a `u32` length and UTF-8. Decoding never panics: a frame that does not
//! parse is an error, dropped and counted by the caller.
//!
//! One NATS message holds one frame, or a bundle of frames published to
//! one subject one after the other ([`bundle`]): the byte [`BUNDLE`], then
//! each frame as a `u32` length and its bytes. A bundle's frames are
//! applied in order, as if each had come alone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use parley_core::bus::{Holding, NodeId, Notice, Remote, Spent};
use parley_core::files::{Outcome, PeerInfo, Role, Wire, WireKind};
use parley_core::hub::CloseReason;
use parley_core::store::StoredMessage;
use parley_core::{ErrorKind, MessageId, Seq, UserId};

/// The encoding's version; a frame of another version is refused (every
/// process of a cluster runs the same one). 2: holdings carry a session
/// count, and `Trim` exists. 3: `Transfer` exists.
pub const VERSION: u8 = 3;

/// The first byte of a bundle of frames; never a frame's version.
pub const BUNDLE: u8 = 0xB0;

/// Several encoded frames as one NATS payload, in order.
pub fn bundle(frames: &[Bytes]) -> Bytes {
    let size = frames.iter().map(|frame| 4 + frame.len()).sum::<usize>();
    let mut out = BytesMut::with_capacity(1 + size);
    out.put_u8(BUNDLE);
    for frame in frames {
        out.put_u32_le(u32::try_from(frame.len()).unwrap_or(u32::MAX));
        out.put_slice(frame);
    }
    out.freeze()
}

/// The encoded frames of a NATS payload: the payload itself, or each frame
/// of a bundle. A bundle cut short is an error as a whole (its frames
/// before the cut are not applied either: a lost doorbell, as a dropped
/// frame is, never a message lost).
pub fn frames_of(payload: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    let Some((&BUNDLE, mut rest)) = payload.split_first() else {
        return Ok(vec![payload]);
    };
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let len = u32_of(&mut rest)? as usize;
        if rest.len() < len {
            return Err(DecodeError::Short);
        }
        let (frame, after) = rest.split_at(len);
        frames.push(frame);
        rest = after;
    }
    Ok(frames)
}

/// One frame on the bus, with the node that sent it.
#[derive(Clone, Debug)]
pub struct Frame {
    pub from: NodeId,
    pub body: Body,
}

#[derive(Clone, Debug)]
pub enum Body {
    /// "I am here": the receivers answer with what they hold.
    Hello,
    /// "I am still here" (every heartbeat interval).
    Heartbeat,
    /// "I am leaving": forget what I held.
    Bye,
    /// What the sender holds of these users (one when a holding changes,
    /// many in answer to a hello).
    Holdings(Vec<(UserId, Arc<str>, Holding)>),
    /// Something for one user's sessions on the receiver.
    Remote(Remote),
    /// The sender dropped frames it should have sent: every session on the
    /// receiver reads the store.
    Lag,
}

/// Why a frame did not decode.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the frame ends early")]
    Short,
    #[error("unknown version {0}")]
    Version(u8),
    #[error("unknown kind {0}")]
    Kind(u8),
    #[error("a string is not UTF-8")]
    Utf8,
    #[error("unknown error kind {0:?}")]
    ErrorKind(String),
    #[error("{0} bytes after the frame")]
    Trailing(usize),
}

mod kind {
    pub const HELLO: u8 = 1;
    pub const HEARTBEAT: u8 = 2;
    pub const BYE: u8 = 3;
    pub const HOLDINGS: u8 = 4;
    pub const MESSAGE: u8 = 5;
    pub const RING: u8 = 6;
    pub const NOTICE: u8 = 7;
    pub const CLOSE: u8 = 8;
    pub const LAG: u8 = 9;
    pub const WATCH: u8 = 10;
    pub const SPENT: u8 = 11;
    pub const TRIM: u8 = 12;
    pub const TRANSFER: u8 = 13;
}

mod transfer {
    pub const JOIN: u8 = 1;
    pub const READY: u8 = 2;
    pub const ENDED: u8 = 3;
}

mod spent {
    pub const LOGIN_FAILURE: u8 = 1;
    pub const REGISTRATION: u8 = 2;
    pub const SEND: u8 = 3;
}

mod notice {
    pub const PRESENCE: u8 = 1;
    pub const REQUEST: u8 = 2;
    pub const APPROVED: u8 = 3;
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u32_le(u32::try_from(s.len()).unwrap_or(u32::MAX));
    out.put_slice(&s.as_bytes()[..s.len().min(u32::MAX as usize)]);
}

fn holding_bits(h: Holding) -> u8 {
    u8::from(h.shown)
}

impl Frame {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        out.put_u8(VERSION);
        let kind = match &self.body {
            Body::Hello => kind::HELLO,
            Body::Heartbeat => kind::HEARTBEAT,
            Body::Bye => kind::BYE,
            Body::Holdings(_) => kind::HOLDINGS,
            Body::Remote(Remote::Message(_)) => kind::MESSAGE,
            Body::Remote(Remote::Ring { .. }) => kind::RING,
            Body::Remote(Remote::Notice { .. }) => kind::NOTICE,
            Body::Remote(Remote::Close { .. }) => kind::CLOSE,
            Body::Remote(Remote::Watch { .. }) => kind::WATCH,
            Body::Remote(Remote::Spent(_)) => kind::SPENT,
            Body::Remote(Remote::Trim { .. }) => kind::TRIM,
            Body::Remote(Remote::Transfer(_)) => kind::TRANSFER,
            Body::Lag => kind::LAG,
        };
        out.put_u8(kind);
        out.put_u64_le(self.from);
        match &self.body {
            Body::Hello | Body::Heartbeat | Body::Bye | Body::Lag => {}
            Body::Holdings(entries) => {
                out.put_u32_le(u32::try_from(entries.len()).unwrap_or(u32::MAX));
                for (user, name, holding) in entries {
                    out.put_u64_le(user.0);
                    out.put_u8(holding_bits(*holding));
                    out.put_u32_le(holding.sessions);
                    put_str(&mut out, name);
                }
            }
            Body::Remote(Remote::Message(m)) => {
                out.put_u64_le(m.id.0);
                out.put_u64_le(m.recipient.0);
                out.put_u64_le(m.seq.0);
                out.put_u64_le(m.sender.0);
                out.put_u64_le(m.timestamp_ms);
                out.put_u8(u8::from(m.acked));
                put_str(&mut out, &m.sender_name);
                put_str(&mut out, &m.client_msg_id);
                put_str(&mut out, &m.body);
            }
            Body::Remote(Remote::Ring { user, seq }) => {
                out.put_u64_le(user.0);
                out.put_u64_le(seq.0);
            }
            Body::Remote(Remote::Notice { user, notice: n }) => {
                out.put_u64_le(user.0);
                match n {
                    Notice::Presence { name, online } => {
                        out.put_u8(notice::PRESENCE);
                        out.put_u8(u8::from(*online));
                        put_str(&mut out, name);
                    }
                    Notice::PresenceRequest { from } => {
                        out.put_u8(notice::REQUEST);
                        out.put_u8(0);
                        put_str(&mut out, from);
                    }
                    Notice::PresenceApproved { name } => {
                        out.put_u8(notice::APPROVED);
                        out.put_u8(0);
                        put_str(&mut out, name);
                    }
                }
            }
            Body::Remote(Remote::Trim { user, count, reason }) => {
                out.put_u64_le(user.0);
                out.put_u32_le(*count);
                put_close_reason(&mut out, reason);
            }
            Body::Remote(Remote::Close { user, reason, token }) => {
                out.put_u64_le(user.0);
                put_close_reason(&mut out, reason);
                match token {
                    Some(key) => {
                        out.put_u8(1);
                        out.put_slice(key);
                    }
                    None => out.put_u8(0),
                }
            }
            Body::Remote(Remote::Spent(spent)) => match spent {
                Spent::LoginFailure { account, ip } => {
                    out.put_u8(spent::LOGIN_FAILURE);
                    match account {
                        Some(name) => {
                            out.put_u8(1);
                            put_str(&mut out, name);
                        }
                        None => out.put_u8(0),
                    }
                    put_ip(&mut out, *ip);
                }
                Spent::Registration { ip } => {
                    out.put_u8(spent::REGISTRATION);
                    put_ip(&mut out, Some(*ip));
                }
                Spent::Send { user } => {
                    out.put_u8(spent::SEND);
                    out.put_u64_le(user.0);
                }
            },
            Body::Remote(Remote::Watch {
                follower,
                contact,
                contact_name,
                follow,
            }) => {
                out.put_u64_le(follower.0);
                out.put_u64_le(contact.0);
                out.put_u8(u8::from(*follow));
                put_str(&mut out, contact_name);
            }
            Body::Remote(Remote::Transfer(w)) => put_transfer(&mut out, w),
        }
        out.freeze()
    }

    pub fn decode(mut bytes: &[u8]) -> Result<Frame, DecodeError> {
        let r = &mut bytes;
        let version = u8_of(r)?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let kind = u8_of(r)?;
        let from = u64_of(r)?;
        let body = match kind {
            kind::HELLO => Body::Hello,
            kind::HEARTBEAT => Body::Heartbeat,
            kind::BYE => Body::Bye,
            kind::LAG => Body::Lag,
            kind::HOLDINGS => {
                let count = u32_of(r)?;
                // Each entry takes at least 17 bytes: never reserve more
                // than the frame could hold.
                let mut entries = Vec::with_capacity((count as usize).min(r.remaining() / 17));
                for _ in 0..count {
                    let user = UserId(u64_of(r)?);
                    let bits = u8_of(r)?;
                    let sessions = u32_of(r)?;
                    let name = str_of(r)?;
                    let holding = Holding {
                        sessions,
                        shown: bits & 1 != 0,
                    };
                    entries.push((user, Arc::from(name), holding));
                }
                Body::Holdings(entries)
            }
            kind::MESSAGE => {
                let id = MessageId(u64_of(r)?);
                let recipient = UserId(u64_of(r)?);
                let seq = Seq(u64_of(r)?);
                let sender = UserId(u64_of(r)?);
                let timestamp_ms = u64_of(r)?;
                let acked = u8_of(r)? != 0;
                let sender_name = str_of(r)?;
                let client_msg_id = str_of(r)?;
                let body = str_of(r)?;
                Body::Remote(Remote::Message(Arc::new(StoredMessage {
                    id,
                    recipient,
                    seq,
                    sender,
                    sender_name,
                    client_msg_id,
                    body,
                    timestamp_ms,
                    acked,
                })))
            }
            kind::RING => {
                let user = UserId(u64_of(r)?);
                let seq = Seq(u64_of(r)?);
                Body::Remote(Remote::Ring { user, seq })
            }
            kind::NOTICE => {
                let user = UserId(u64_of(r)?);
                let which = u8_of(r)?;
                let online = u8_of(r)? != 0;
                let name: Arc<str> = Arc::from(str_of(r)?);
                let notice = match which {
                    notice::PRESENCE => Notice::Presence { name, online },
                    notice::REQUEST => Notice::PresenceRequest { from: name },
                    notice::APPROVED => Notice::PresenceApproved { name },
                    other => return Err(DecodeError::Kind(other)),
                };
                Body::Remote(Remote::Notice { user, notice })
            }
            kind::TRIM => {
                let user = UserId(u64_of(r)?);
                let count = u32_of(r)?;
                let reason = close_reason_of(r)?;
                Body::Remote(Remote::Trim { user, count, reason })
            }
            kind::CLOSE => {
                let user = UserId(u64_of(r)?);
                let reason = close_reason_of(r)?;
                let token = match u8_of(r)? {
                    0 => None,
                    _ => {
                        let mut key = [0u8; 32];
                        r.try_copy_to_slice(&mut key).map_err(|_| DecodeError::Short)?;
                        Some(key)
                    }
                };
                Body::Remote(Remote::Close { user, reason, token })
            }
            kind::SPENT => Body::Remote(Remote::Spent(match u8_of(r)? {
                spent::LOGIN_FAILURE => {
                    let account = match u8_of(r)? {
                        0 => None,
                        _ => Some(Arc::from(str_of(r)?)),
                    };
                    Spent::LoginFailure { account, ip: ip_of(r)? }
                }
                spent::REGISTRATION => Spent::Registration {
                    ip: ip_of(r)?.ok_or(DecodeError::Kind(0))?,
                },
                spent::SEND => Spent::Send {
                    user: UserId(u64_of(r)?),
                },
                other => return Err(DecodeError::Kind(other)),
            })),
            kind::TRANSFER => Body::Remote(Remote::Transfer(Box::new(transfer_of(r)?))),
            kind::WATCH => {
                let follower = UserId(u64_of(r)?);
                let contact = UserId(u64_of(r)?);
                let follow = u8_of(r)? != 0;
                let contact_name = Arc::from(str_of(r)?);
                Body::Remote(Remote::Watch {
                    follower,
                    contact,
                    contact_name,
                    follow,
                })
            }
            other => return Err(DecodeError::Kind(other)),
        };
        if r.has_remaining() {
            return Err(DecodeError::Trailing(r.remaining()));
        }
        Ok(Frame { from, body })
    }
}

/// An address as a family byte (0 none, 4, 6) and its octets.
fn put_close_reason(out: &mut BytesMut, reason: &CloseReason) {
    put_str(out, reason.kind.as_str());
    put_str(out, &reason.message);
}

fn close_reason_of(r: &mut &[u8]) -> Result<CloseReason, DecodeError> {
    let kind_name = str_of(r)?;
    let kind = ErrorKind::from_name(&kind_name).ok_or(DecodeError::ErrorKind(kind_name))?;
    let message = str_of(r)?;
    Ok(CloseReason { kind, message })
}

fn put_ip(out: &mut BytesMut, ip: Option<IpAddr>) {
    match ip {
        None => out.put_u8(0),
        Some(IpAddr::V4(v4)) => {
            out.put_u8(4);
            out.put_slice(&v4.octets());
        }
        Some(IpAddr::V6(v6)) => {
            out.put_u8(6);
            out.put_slice(&v6.octets());
        }
    }
}

fn ip_of(r: &mut &[u8]) -> Result<Option<IpAddr>, DecodeError> {
    match u8_of(r)? {
        0 => Ok(None),
        4 => {
            let mut octets = [0u8; 4];
            r.try_copy_to_slice(&mut octets).map_err(|_| DecodeError::Short)?;
            Ok(Some(IpAddr::V4(Ipv4Addr::from(octets))))
        }
        6 => {
            let mut octets = [0u8; 16];
            r.try_copy_to_slice(&mut octets).map_err(|_| DecodeError::Short)?;
            Ok(Some(IpAddr::V6(Ipv6Addr::from(octets))))
        }
        other => Err(DecodeError::Kind(other)),
    }
}

fn u8_of(r: &mut &[u8]) -> Result<u8, DecodeError> {
    r.try_get_u8().map_err(|_| DecodeError::Short)
}

fn u32_of(r: &mut &[u8]) -> Result<u32, DecodeError> {
    r.try_get_u32_le().map_err(|_| DecodeError::Short)
}

fn u64_of(r: &mut &[u8]) -> Result<u64, DecodeError> {
    r.try_get_u64_le().map_err(|_| DecodeError::Short)
}

fn str_of(r: &mut &[u8]) -> Result<String, DecodeError> {
    let len = u32_of(r)? as usize;
    if r.remaining() < len {
        return Err(DecodeError::Short);
    }
    let text = std::str::from_utf8(&r[..len])
        .map_err(|_| DecodeError::Utf8)?
        .to_owned();
    r.advance(len);
    Ok(text)
}

fn put_transfer(out: &mut BytesMut, w: &Wire) {
    out.put_u8(match w.kind {
        WireKind::Join => transfer::JOIN,
        WireKind::Ready => transfer::READY,
        WireKind::Ended => transfer::ENDED,
    });
    out.put_u64_le(w.offer.0);
    out.put_u64_le(w.node);
    out.put_u8(u8::from(w.role == Role::Recipient));
    out.put_u64_le(w.sender.0);
    put_str(out, &w.sender_name);
    out.put_u64_le(w.recipient.0);
    put_str(out, &w.recipient_name);
    out.put_u8(u8::try_from(w.info.candidates.len()).unwrap_or(u8::MAX));
    for candidate in w.info.candidates.iter().take(usize::from(u8::MAX)) {
        put_str(out, &candidate.to_string());
    }
    out.put_slice(&w.info.fingerprint);
    out.put_slice(&w.token);
    out.put_u64_le(w.resume_from);
    out.put_u8(outcome_code(w.outcome));
    put_str(out, &w.detail);
}

fn outcome_code(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Complete => 1,
        Outcome::Refused => 2,
        Outcome::HashMismatch => 3,
        Outcome::PeerGone => 4,
        Outcome::Cancelled => 5,
        Outcome::Failed => 6,
    }
}

fn transfer_of(r: &mut &[u8]) -> Result<Wire, DecodeError> {
    let kind = match u8_of(r)? {
        transfer::JOIN => WireKind::Join,
        transfer::READY => WireKind::Ready,
        transfer::ENDED => WireKind::Ended,
        other => return Err(DecodeError::Kind(other)),
    };
    let offer = MessageId(u64_of(r)?);
    let node = u64_of(r)?;
    let role = if u8_of(r)? != 0 { Role::Recipient } else { Role::Sender };
    let sender = UserId(u64_of(r)?);
    let sender_name = str_of(r)?;
    let recipient = UserId(u64_of(r)?);
    let recipient_name = str_of(r)?;
    let count = u8_of(r)?;
    let mut candidates = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        candidates.push(str_of(r)?.parse().map_err(|_| DecodeError::Kind(0))?);
    }
    let mut fingerprint = [0u8; 32];
    r.try_copy_to_slice(&mut fingerprint).map_err(|_| DecodeError::Short)?;
    let mut token = [0u8; 32];
    r.try_copy_to_slice(&mut token).map_err(|_| DecodeError::Short)?;
    let resume_from = u64_of(r)?;
    let outcome = match u8_of(r)? {
        1 => Outcome::Complete,
        2 => Outcome::Refused,
        3 => Outcome::HashMismatch,
        4 => Outcome::PeerGone,
        5 => Outcome::Cancelled,
        6 => Outcome::Failed,
        other => return Err(DecodeError::Kind(other)),
    };
    let detail = str_of(r)?;
    Ok(Wire {
        kind,
        offer,
        node,
        role,
        sender,
        sender_name,
        recipient,
        recipient_name,
        info: PeerInfo {
            candidates,
            fingerprint,
        },
        token,
        resume_from,
        outcome,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(body: Body) -> Frame {
        let frame = Frame { from: 42, body };
        let decoded = Frame::decode(&frame.encode()).expect("decodes");
        assert_eq!(decoded.from, 42);
        decoded
    }

    #[test]
    fn a_transfer_round_trips() {
        let wire = Wire {
            kind: WireKind::Ready,
            offer: MessageId(77),
            node: 9,
            role: Role::Sender,
            sender: UserId(1),
            sender_name: "alice".into(),
            recipient: UserId(2),
            recipient_name: "bö".into(),
            info: PeerInfo {
                candidates: vec!["10.0.0.2:4000".parse().unwrap(), "[2001:db8::1]:4000".parse().unwrap()],
                fingerprint: [5; 32],
            },
            token: [6; 32],
            resume_from: 12_345,
            outcome: Outcome::PeerGone,
            detail: "gone".into(),
        };
        match round_trip(Body::Remote(Remote::Transfer(Box::new(wire.clone())))).body {
            Body::Remote(Remote::Transfer(got)) => assert_eq!(*got, wire),
            other => panic!("{other:?}"),
        }
        // Cut anywhere, it is an error, not a panic.
        let bytes = Frame {
            from: 1,
            body: Body::Remote(Remote::Transfer(Box::new(wire))),
        }
        .encode();
        for end in 0..bytes.len() {
            assert!(Frame::decode(&bytes[..end]).is_err(), "cut at {end}");
        }
    }

    #[test]
    fn every_kind_round_trips() {
        for body in [Body::Hello, Body::Heartbeat, Body::Bye, Body::Lag] {
            let kind = std::mem::discriminant(&body);
            assert_eq!(std::mem::discriminant(&round_trip(body).body), kind);
        }
        for spent in [
            Spent::LoginFailure {
                account: Some(Arc::from("böb")),
                ip: Some("192.0.2.7".parse().unwrap()),
            },
            Spent::LoginFailure {
                account: None,
                ip: Some("2001:db8::".parse().unwrap()),
            },
            Spent::LoginFailure {
                account: Some(Arc::from("ann")),
                ip: None,
            },
            Spent::Registration {
                ip: "198.51.100.1".parse().unwrap(),
            },
            Spent::Send { user: UserId(42) },
        ] {
            match round_trip(Body::Remote(Remote::Spent(spent.clone()))).body {
                Body::Remote(Remote::Spent(got)) => assert_eq!(got, spent),
                other => panic!("{other:?}"),
            }
        }
        let entries = vec![
            (
                UserId(7),
                Arc::from("ann"),
                Holding {
                    sessions: 1,
                    shown: false,
                },
            ),
            (
                UserId(8),
                Arc::from("bö"),
                Holding {
                    sessions: 70_000,
                    shown: true,
                },
            ),
        ];
        match round_trip(Body::Holdings(entries.clone())).body {
            Body::Holdings(got) => assert_eq!(got, entries),
            other => panic!("{other:?}"),
        }
        let message = StoredMessage {
            id: MessageId(9),
            recipient: UserId(8),
            seq: Seq(3),
            sender: UserId(7),
            sender_name: "ann".into(),
            client_msg_id: "c-1".into(),
            body: "hello\nthere ✓".into(),
            timestamp_ms: 1_700_000_000_000,
            acked: false,
        };
        match round_trip(Body::Remote(Remote::Message(Arc::new(message.clone())))).body {
            Body::Remote(Remote::Message(got)) => assert_eq!(*got, message),
            other => panic!("{other:?}"),
        }
        match round_trip(Body::Remote(Remote::Ring {
            user: UserId(8),
            seq: Seq(12),
        }))
        .body
        {
            Body::Remote(Remote::Ring { user, seq }) => assert_eq!((user, seq), (UserId(8), Seq(12))),
            other => panic!("{other:?}"),
        }
        for notice in [
            Notice::Presence {
                name: Arc::from("ann"),
                online: true,
            },
            Notice::PresenceRequest { from: Arc::from("bo") },
            Notice::PresenceApproved { name: Arc::from("cy") },
        ] {
            match round_trip(Body::Remote(Remote::Notice {
                user: UserId(1),
                notice: notice.clone(),
            }))
            .body
            {
                Body::Remote(Remote::Notice { user, notice: got }) => assert_eq!((user, got), (UserId(1), notice)),
                other => panic!("{other:?}"),
            }
        }
        match round_trip(Body::Remote(Remote::Watch {
            follower: UserId(1),
            contact: UserId(2),
            contact_name: Arc::from("bo"),
            follow: true,
        }))
        .body
        {
            Body::Remote(Remote::Watch {
                follower,
                contact,
                contact_name,
                follow,
            }) => assert_eq!(
                (follower, contact, &*contact_name, follow),
                (UserId(1), UserId(2), "bo", true)
            ),
            other => panic!("{other:?}"),
        }
        let reason = CloseReason {
            kind: ErrorKind::Kicked,
            message: "kicked by the administrator".into(),
        };
        match round_trip(Body::Remote(Remote::Trim {
            user: UserId(3),
            count: 2,
            reason: reason.clone(),
        }))
        .body
        {
            Body::Remote(Remote::Trim {
                user,
                count,
                reason: got,
            }) => {
                assert_eq!((user, count, got), (UserId(3), 2, reason.clone()))
            }
            other => panic!("{other:?}"),
        }
        for token in [None, Some([7u8; 32])] {
            match round_trip(Body::Remote(Remote::Close {
                user: UserId(1),
                reason: reason.clone(),
                token,
            }))
            .body
            {
                Body::Remote(Remote::Close {
                    user,
                    reason: got,
                    token: got_token,
                }) => assert_eq!((user, got, got_token), (UserId(1), reason.clone(), token)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn bad_frames_are_errors_never_panics() {
        let good = Frame {
            from: 1,
            body: Body::Holdings(vec![(UserId(1), Arc::from("ann"), Holding::NONE)]),
        }
        .encode();
        // Every truncation, and a byte too many.
        for len in 0..good.len() {
            assert!(Frame::decode(&good[..len]).is_err(), "{len}");
        }
        let mut longer = good.to_vec();
        longer.push(0);
        assert_eq!(Frame::decode(&longer).unwrap_err(), DecodeError::Trailing(1));
        assert_eq!(Frame::decode(&[1, 1]).unwrap_err(), DecodeError::Version(1));
        let mut unknown = vec![VERSION, 200];
        unknown.extend_from_slice(&[0; 8]);
        assert_eq!(Frame::decode(&unknown).unwrap_err(), DecodeError::Kind(200));
        // A count far beyond the frame reserves nothing big.
        let mut huge = vec![VERSION, 4];
        huge.extend_from_slice(&[0; 8]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Frame::decode(&huge).unwrap_err(), DecodeError::Short);
    }

    #[test]
    fn a_bundle_gives_back_its_frames_in_order() {
        let frames: Vec<Bytes> = [Body::Hello, Body::Heartbeat, Body::Lag, Body::Bye]
            .into_iter()
            .map(|body| Frame { from: 9, body }.encode())
            .collect();
        let payload = bundle(&frames);
        let parts = frames_of(&payload).unwrap();
        assert_eq!(parts, frames.iter().map(|f| &f[..]).collect::<Vec<_>>());
        let kinds: Vec<_> = parts
            .iter()
            .map(|part| format!("{:?}", Frame::decode(part).unwrap().body))
            .collect();
        assert_eq!(kinds, ["Hello", "Heartbeat", "Lag", "Bye"]);
        // A lone frame is its own payload.
        assert_eq!(frames_of(&frames[0]).unwrap(), [&frames[0][..]]);
        // An empty bundle holds nothing.
        assert!(frames_of(&[BUNDLE]).unwrap().is_empty());
    }

    #[test]
    fn a_bundle_cut_anywhere_is_refused_whole() {
        let frames: Vec<Bytes> = (0..3)
            .map(|_| {
                Frame {
                    from: 1,
                    body: Body::Hello,
                }
                .encode()
            })
            .collect();
        let payload = bundle(&frames);
        for cut in 1..payload.len() {
            let shorter = &payload[..cut];
            match frames_of(shorter) {
                Err(DecodeError::Short) => {}
                // Cut between two frames: a shorter, whole bundle.
                Ok(parts) => assert!(parts.iter().all(|part| Frame::decode(part).is_ok()), "cut at {cut}"),
                Err(other) => panic!("cut at {cut}: {other:?}"),
            }
        }
        // A length past the end reserves nothing and is refused.
        let mut huge = vec![BUNDLE];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(frames_of(&huge).unwrap_err(), DecodeError::Short);
    }
}
