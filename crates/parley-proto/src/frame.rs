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
    if buf.len() < LENGTH_PREFIX_BYTES {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
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

/// What [`peek_frame`] reads of a whole frame without decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// Bytes the frame takes at the front of the buffer, its length prefix
    /// included.
    pub len: usize,
    /// The message's field 1 (`request_id` in both frame types; 0 if absent).
    pub request_id: u64,
    /// The field number of the body, the last of the oneof's fields present
    /// (as decoding takes the last one), if any.
    pub body_field: Option<u32>,
}

/// Reads the request id and the body's field number of the whole frame at
/// the front of `buf`, skipping over the body's bytes: what a server needs
/// to refuse a request without building it.
///
/// `None` when `buf` does not hold a whole frame, or its length is over
/// `max_frame_bytes`, or its payload is not well-formed protobuf: then
/// [`decode_frame`] says which. Only field 1 is read as a value; every
/// length-delimited field numbered 10 or more counts as a body.
pub fn peek_frame(buf: &[u8], max_frame_bytes: usize) -> Option<FrameHead> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    let prefix: [u8; LENGTH_PREFIX_BYTES] = buf.get(..LENGTH_PREFIX_BYTES)?.try_into().ok()?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max_frame_bytes {
        return None;
    }
    let mut payload = buf.get(LENGTH_PREFIX_BYTES..LENGTH_PREFIX_BYTES + len)?;
    let mut head = FrameHead {
        len: LENGTH_PREFIX_BYTES + len,
        request_id: 0,
        body_field: None,
    };
    while payload.has_remaining() {
        let (field, wire_type) = decode_key(&mut payload).ok()?;
        match (field, wire_type) {
            (1, WireType::Varint) => head.request_id = decode_varint(&mut payload).ok()?,
            (field, wire_type) => {
                if field >= 10 && wire_type == WireType::LengthDelimited {
                    head.body_field = Some(field);
                }
                skip_field(wire_type, field, &mut payload, DecodeContext::default()).ok()?;
            }
        }
    }
    Some(head)
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

    #[test]
    fn a_peek_reads_the_request_id_and_the_body_field_of_a_whole_frame_only() {
        let send = v1::ClientFrame {
            request_id: 300,
            body: Some(client_frame::Body::Send(v1::SendMessage {
                to: "bob".into(),
                client_msg_id: "c1".into(),
                body: "x".repeat(500),
            })),
        };
        let mut buf = BytesMut::new();
        encode_frame(&send, &mut buf, 4096).unwrap();
        let whole = buf.len();
        encode_frame(&ping(7, 1), &mut buf, 4096).unwrap();
        let head = peek_frame(&buf, 4096).unwrap();
        assert_eq!(
            head,
            FrameHead {
                len: whole,
                request_id: 300,
                body_field: Some(20)
            }
        );
        let next = peek_frame(&buf[head.len..], 4096).unwrap();
        assert_eq!((next.request_id, next.body_field), (7, Some(40)));
        // Incomplete, over the limit, malformed: no head.
        for cut in 0..whole {
            assert_eq!(peek_frame(&buf[..cut], 4096), None, "cut at {cut}");
        }
        assert_eq!(peek_frame(&buf, 100), None);
        assert_eq!(peek_frame(&[0, 0, 0, 3, 0xff, 0xff, 0xff], 1024), None);
        // A frame without a body has none.
        let mut empty = BytesMut::new();
        encode_frame(
            &v1::ClientFrame {
                request_id: 2,
                body: None,
            },
            &mut empty,
            64,
        )
        .unwrap();
        assert_eq!(peek_frame(&empty, 64).map(|h| h.body_field), Some(None));
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
