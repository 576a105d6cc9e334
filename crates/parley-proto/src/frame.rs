//! Length-prefixed framing: a 4-byte big-endian payload length, then the
//! payload, one protobuf message.
//!
//! The decoder works on a growable buffer the caller fills from its socket.
//! "Not enough bytes yet" is `Ok(None)`, not an error, so the caller can read
//! more and try again; a length above the limit is an error before a single
//! payload byte is buffered.

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;

/// Bytes in the length prefix that precedes every payload.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Why a frame could not be decoded or encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces a payload larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The payload is not a valid protobuf message of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Decodes one frame from the front of `buf`, consuming it.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame; in that case
/// nothing is consumed, and once the length is known `buf` has room reserved
/// for the rest of the frame.
pub fn decode_frame<M: Message + Default>(buf: &mut BytesMut, max_frame_bytes: usize) -> Result<Option<M>, FrameError> {
    match split_frame(buf, max_frame_bytes)? {
        Some(payload) => M::decode(payload.freeze())
            .map(Some)
            .map_err(|e| FrameError::Malformed(e.to_string())),
        None => Ok(None),
    }
}

/// Takes one frame's payload off the front of `buf`, without decoding it
/// (for a transport that frames messages itself, like WebSocket).
///
/// `Ok(None)` and reservation as for [`decode_frame`].
pub fn split_frame(buf: &mut BytesMut, max_frame_bytes: usize) -> Result<Option<BytesMut>, FrameError> {
    let Some(len) = announced_len(buf) else {
        return Ok(None);
    };
    if len > max_frame_bytes {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    if buf.len() < LENGTH_PREFIX_BYTES + len {
        buf.reserve(LENGTH_PREFIX_BYTES + len - buf.len());
        return Ok(None);
    }
    buf.advance(LENGTH_PREFIX_BYTES);
    Ok(Some(buf.split_to(len)))
}

/// Bytes the whole frame at the front of `buf` takes, its length prefix
/// included: `None` while it is incomplete or when its length is over
/// `max_frame_bytes` (then [`decode_frame`] says so).
pub fn whole_frame_len(buf: &[u8], max_frame_bytes: usize) -> Option<usize> {
    let len = announced_len(buf)?;
    (len <= max_frame_bytes && buf.len() >= LENGTH_PREFIX_BYTES + len).then_some(LENGTH_PREFIX_BYTES + len)
}

/// The payload length the prefix at the front of `buf` announces, once the
/// prefix is whole.
fn announced_len(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; LENGTH_PREFIX_BYTES] = buf.get(..LENGTH_PREFIX_BYTES)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

/// A send read by [`peek_send`] without being decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeekedSend {
    /// Bytes the frame takes at the front of the buffer, its length prefix
    /// included.
    pub len: usize,
    /// The frame's `request_id`.
    pub request_id: u64,
}

/// `ClientFrame.send`'s field number (see `proto/parley.proto`).
const SEND_FIELD: u32 = 20;

/// Whether the whole frame at the front of `buf` is a `ClientFrame` that
/// decodes to a send, read without building it: its request id and its
/// length, what a server needs to refuse it. The message's fields are
/// walked, their strings checked for UTF-8 and nothing is copied.
///
/// Only the shape a client writes is recognised: `request_id` and `send`
/// fields and nothing else. `None` for anything else (another request, a
/// frame not yet whole or over the limit, one that would not decode): the
/// caller decodes it as usual, and [`decode_frame`] says what is wrong.
/// Whenever this answers, [`decode_frame`] would decode the same frame to
/// a send with the same request id.
pub fn peek_send(buf: &[u8], max_frame_bytes: usize) -> Option<PeekedSend> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let len = whole_frame_len(buf, max_frame_bytes)?;
    let mut payload = buf.get(LENGTH_PREFIX_BYTES..len)?;
    let mut request_id = 0;
    let mut is_send = false;
    while payload.has_remaining() {
        match decode_key(&mut payload).ok()? {
            (1, WireType::Varint) => request_id = decode_varint(&mut payload).ok()?,
            (SEND_FIELD, WireType::LengthDelimited) => {
                let message = length_delimited(&mut payload)?;
                send_message_decodes(message)?;
                is_send = true;
            }
            _ => return None,
        }
    }
    is_send.then_some(PeekedSend { len, request_id })
}

/// Takes a length-delimited field's bytes off the front of `buf` (its key
/// already read).
fn length_delimited<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(prost::encoding::decode_varint(buf).ok()?).ok()?;
    let bytes = buf.get(..len)?;
    buf.advance(len);
    Some(bytes)
}

/// `Some` when `message` decodes as a `SendMessage`: its three fields are
/// strings (valid UTF-8), any other field is skipped as the decoder skips
/// an unknown one.
fn send_message_decodes(mut message: &[u8]) -> Option<()> {
    use prost::encoding::{DecodeContext, WireType, decode_key, skip_field};
    while message.has_remaining() {
        match decode_key(&mut message).ok()? {
            (1..=3, WireType::LengthDelimited) => {
                std::str::from_utf8(length_delimited(&mut message)?).ok()?;
            }
            (1..=3, _) => return None,
            (field, wire_type) => skip_field(wire_type, field, &mut message, DecodeContext::default()).ok()?,
        }
    }
    Some(())
}

/// Appends `message` to `buf` as one frame.
///
/// Fails without touching `buf` when the encoded message would exceed
/// `max_frame_bytes`, so an oversized reply is never half-written.
pub fn encode_frame<M: Message>(message: &M, buf: &mut BytesMut, max_frame_bytes: usize) -> Result<(), FrameError> {
    let len = message.encoded_len();
    if len > max_frame_bytes {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    buf.reserve(LENGTH_PREFIX_BYTES + len);
    buf.put_u32(len as u32);
    message.encode(buf).map_err(|e| FrameError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{self, client_frame, server_frame};

    fn ping(request_id: u64, nonce: u64) -> v1::ClientFrame {
        v1::ClientFrame {
            request_id,
            body: Some(client_frame::Body::Ping(v1::Ping { nonce })),
        }
    }

    /// Byte-exact vector: a Ping with request_id 1 and nonce 7 is
    /// length 6, then field 1 varint 1, then field 40 (tag 0x142 0x02) holding
    /// a 2-byte message with field 1 varint 7.
    #[test]
    fn ping_frame_is_byte_exact() {
        let mut buf = BytesMut::new();
        encode_frame(&ping(1, 7), &mut buf, 1024).unwrap();
        assert_eq!(&buf[..], &[0, 0, 0, 7, 0x08, 0x01, 0xc2, 0x02, 0x02, 0x08, 0x07]);
    }

    #[test]
    fn partial_frames_need_more_bytes_and_consume_nothing() {
        let mut whole = BytesMut::new();
        encode_frame(&ping(5, 9), &mut whole, 1024).unwrap();
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            let got: Option<v1::ClientFrame> = decode_frame(&mut part, 1024).unwrap();
            assert!(got.is_none());
            assert_eq!(part.len(), cut);
        }
        let got: v1::ClientFrame = decode_frame(&mut whole, 1024).unwrap().unwrap();
        assert_eq!(got, ping(5, 9));
        assert!(whole.is_empty());
    }

    fn send(request_id: u64, body: &str) -> v1::ClientFrame {
        v1::ClientFrame {
            request_id,
            body: Some(client_frame::Body::Send(v1::SendMessage {
                to: "bob".into(),
                client_msg_id: "c1".into(),
                body: body.into(),
            })),
        }
    }

    #[test]
    fn a_peek_finds_a_whole_send_and_nothing_else() {
        let mut buf = BytesMut::new();
        encode_frame(&send(300, &"x".repeat(500)), &mut buf, 4096).unwrap();
        let whole = buf.len();
        encode_frame(&ping(7, 1), &mut buf, 4096).unwrap();
        assert_eq!(
            peek_send(&buf, 4096),
            Some(PeekedSend {
                len: whole,
                request_id: 300
            })
        );
        assert_eq!(whole_frame_len(&buf, 4096), Some(whole));
        // Another request, an incomplete frame, one over the limit: none.
        assert_eq!(peek_send(&buf[whole..], 4096), None);
        assert_eq!(whole_frame_len(&buf[whole..], 4096), Some(buf.len() - whole));
        for cut in 0..whole {
            assert_eq!(peek_send(&buf[..cut], 4096), None, "cut at {cut}");
            assert_eq!(whole_frame_len(&buf[..cut], 4096), None, "cut at {cut}");
        }
        assert_eq!(peek_send(&buf, 100), None);
        assert_eq!(whole_frame_len(&buf, 100), None);
    }

    /// A frame that would not decode is never taken for a send: the
    /// decoder must see it and say what is wrong.
    #[test]
    fn a_peek_never_takes_what_would_not_decode() {
        let frame = |payload: &[u8]| {
            let mut buf = (payload.len() as u32).to_be_bytes().to_vec();
            buf.extend_from_slice(payload);
            buf
        };
        // request_id 12, then a send whose bytes hold field 0.
        let field_zero = frame(&[8, 12, 162, 1, 6, 10, 3, b'b', b'o', b'b', 0]);
        // A body that is not UTF-8.
        let not_utf8 = frame(&[8, 12, 162, 1, 4, 26, 2, 0xff, 0xfe]);
        // request_id with the wrong wire type.
        let id_as_bytes = frame(&[10, 1, 1, 162, 1, 0]);
        // A ping's field before the send.
        let ping_then_send = frame(&[194, 2, 0, 162, 1, 0]);
        for (name, bytes) in [
            ("field 0", &field_zero),
            ("not UTF-8", &not_utf8),
            ("id as bytes", &id_as_bytes),
            ("ping then send", &ping_then_send),
        ] {
            assert_eq!(peek_send(bytes, 1024), None, "{name}");
        }
        // An empty send decodes: it is a send.
        let empty = frame(&[8, 3, 162, 1, 0]);
        assert_eq!(peek_send(&empty, 1024).map(|p| p.request_id), Some(3));

        // Every one-byte change of a send: whenever the peek answers, the
        // decoder agrees.
        let mut valid = BytesMut::new();
        encode_frame(&send(77, "héllo"), &mut valid, 1024).unwrap();
        let mut agreed = 0;
        for at in 0..valid.len() {
            for value in [0u8, 1, 2, 7, 8, 10, 0x7f, 0x80, 0xc3, 0xff] {
                let mut changed = valid.to_vec();
                changed[at] = value;
                if let Some(peeked) = peek_send(&changed, 1024) {
                    let mut copy = BytesMut::from(&changed[..]);
                    let decoded: v1::ClientFrame = decode_frame(&mut copy, 1024)
                        .unwrap_or_else(|e| panic!("byte {at} = {value}: peeked, but {e}"))
                        .unwrap();
                    assert_eq!(decoded.request_id, peeked.request_id);
                    assert!(matches!(decoded.body, Some(client_frame::Body::Send(_))));
                    assert_eq!(copy.len(), changed.len() - peeked.len);
                    agreed += 1;
                }
            }
        }
        assert!(agreed > 0);
    }

    #[test]
    fn oversized_length_is_rejected_before_buffering() {
        let mut buf = BytesMut::from(&[0u8, 0x10, 0, 0][..]);
        let err = decode_frame::<v1::ClientFrame>(&mut buf, 1024).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: 0x10_0000,
                max: 1024
            }
        );
    }

    #[test]
    fn garbage_payload_is_malformed() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        let err = decode_frame::<v1::ClientFrame>(&mut buf, 1024).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)));
    }

    #[test]
    fn encoding_over_the_limit_leaves_buffer_untouched() {
        let frame = v1::ServerFrame {
            request_id: 0,
            body: Some(server_frame::Body::Error(v1::Error {
                code: v1::ErrorCode::Internal as i32,
                message: "x".repeat(100),
                retry_after_ms: 0,
                reason: String::new(),
            })),
        };
        let mut buf = BytesMut::new();
        assert!(encode_frame(&frame, &mut buf, 50).is_err());
        assert!(buf.is_empty());
    }
}
