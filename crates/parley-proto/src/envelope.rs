//! Reading and writing a frame's envelope — its request id and which body it
//! carries — without decoding or encoding the body.
//!
//! An overloaded server refuses most of what it reads. Decoding a refused
//! send in full (three strings, each allocated and checked as UTF-8) and
//! encoding its refusal from scratch cost more than the refusal itself
//! needs: [`peek_request`] finds the request id and the body's type by
//! skipping over the body's bytes, and [`PrebuiltReply`] frames an answer
//! whose body was encoded once.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, decode_varint, encode_key, encode_varint, encoded_len_varint};

use crate::LENGTH_PREFIX_BYTES;
use crate::v1::{ServerFrame, server_frame};

/// Field number of `request_id` in both frame types.
const REQUEST_ID_FIELD: u32 = 1;

/// What [`peek_request`] found in a `ClientFrame` payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The request id (0 when absent, as decoding would give).
    pub request_id: u64,
    /// The field number of the body (the `oneof body` member), if any.
    pub body_field: Option<u32>,
}

/// Reads a `ClientFrame` payload's request id and body type, skipping the
/// body's contents. Repeated fields resolve as decoding would (the last
/// one wins). `None` when the payload is not well-formed at the top level;
/// a caller then decodes it in full to report the error properly. A body
/// whose own contents are malformed is not noticed here.
pub fn peek_request(mut payload: &[u8]) -> Option<Envelope> {
    let mut envelope = Envelope {
        request_id: 0,
        body_field: None,
    };
    while !payload.is_empty() {
        let key = decode_varint(&mut payload).ok()?;
        let field = u32::try_from(key >> 3).ok().filter(|&f| f > 0)?;
        match key & 7 {
            0 => {
                let value = decode_varint(&mut payload).ok()?;
                if field == REQUEST_ID_FIELD {
                    envelope.request_id = value;
                }
            }
            1 => payload = payload.get(8..)?,
            2 => {
                let len = usize::try_from(decode_varint(&mut payload).ok()?).ok()?;
                payload = payload.get(len..)?;
                if field != REQUEST_ID_FIELD {
                    envelope.body_field = Some(field);
                }
            }
            5 => payload = payload.get(4..)?,
            // Groups (3, 4) are not used by this schema; 6 and 7 do not exist.
            _ => return None,
        }
    }
    Some(envelope)
}

/// A server reply whose body never changes (a refusal, say), encoded once
/// and framed for any request id.
#[derive(Clone, Debug)]
pub struct PrebuiltReply {
    /// The encoded `ServerFrame` without its request id: exactly the body
    /// field, since a zero request id is not encoded.
    body: Bytes,
}

impl PrebuiltReply {
    pub fn new(body: server_frame::Body) -> PrebuiltReply {
        let frame = ServerFrame {
            request_id: 0,
            body: Some(body),
        };
        PrebuiltReply {
            body: Bytes::from(frame.encode_to_vec()),
        }
    }

    /// Appends the reply to `request_id` as one frame; the bytes are those
    /// `encode_frame` writes for the same `ServerFrame`.
    pub fn encode(&self, request_id: u64, buf: &mut BytesMut) {
        let id_len = if request_id == 0 {
            0
        } else {
            1 + encoded_len_varint(request_id)
        };
        let len = id_len + self.body.len();
        buf.reserve(LENGTH_PREFIX_BYTES + len);
        // The body is a fixed few dozen bytes: its length always fits.
        buf.put_u32(len as u32);
        if request_id != 0 {
            encode_key(REQUEST_ID_FIELD, WireType::Varint, buf);
            encode_varint(request_id, buf);
        }
        buf.put_slice(&self.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{self, client_frame};
    use crate::{ClientFrame, ErrorCode, encode_frame};

    fn send_frame(request_id: u64) -> ClientFrame {
        ClientFrame {
            request_id,
            body: Some(client_frame::Body::Send(v1::SendMessage {
                to: "bob".into(),
                client_msg_id: "c-1".into(),
                body: "hello".into(),
            })),
        }
    }

    #[test]
    fn peek_finds_the_request_id_and_body_type() {
        for id in [0, 1, 300, u64::MAX] {
            let bytes = send_frame(id).encode_to_vec();
            assert_eq!(
                peek_request(&bytes),
                Some(Envelope {
                    request_id: id,
                    body_field: Some(20)
                })
            );
        }
        let ping = ClientFrame {
            request_id: 7,
            body: Some(client_frame::Body::Ping(v1::Ping { nonce: 9 })),
        };
        assert_eq!(peek_request(&ping.encode_to_vec()).and_then(|e| e.body_field), Some(40));
        assert_eq!(
            peek_request(&[]),
            Some(Envelope {
                request_id: 0,
                body_field: None
            })
        );
    }

    #[test]
    fn peek_resolves_repeated_fields_as_decoding_does() {
        // A Ping, then a Send: the oneof takes the last; so does peek.
        let mut bytes = ClientFrame {
            request_id: 5,
            body: Some(client_frame::Body::Ping(v1::Ping { nonce: 1 })),
        }
        .encode_to_vec();
        bytes.extend(send_frame(6).encode_to_vec());
        let decoded = ClientFrame::decode(bytes.as_slice()).unwrap();
        let peeked = peek_request(&bytes).unwrap();
        assert_eq!(peeked.request_id, decoded.request_id);
        assert_eq!(peeked.body_field, Some(20));
        assert!(matches!(decoded.body, Some(client_frame::Body::Send(_))));
    }

    #[test]
    fn peek_refuses_what_is_broken_at_the_top_level() {
        let bytes = send_frame(3).encode_to_vec();
        // Cut inside the body: its announced length runs past the end.
        assert_eq!(peek_request(&bytes[..bytes.len() - 1]), None);
        // A field number of 0, an unfinished varint, a group.
        assert_eq!(peek_request(&[0x00, 0x01]), None);
        assert_eq!(peek_request(&[0x08, 0x80]), None);
        assert_eq!(peek_request(&[0x0b]), None);
    }

    #[test]
    fn a_prebuilt_reply_is_byte_for_byte_the_encoded_frame() {
        let body = server_frame::Body::Error(v1::Error {
            code: ErrorCode::Busy as i32,
            message: "server busy, retry later".into(),
            retry_after_ms: 50,
        });
        let prebuilt = PrebuiltReply::new(body.clone());
        for id in [0, 1, 127, 128, u64::MAX] {
            let mut fast = BytesMut::new();
            prebuilt.encode(id, &mut fast);
            let mut slow = BytesMut::new();
            let frame = ServerFrame {
                request_id: id,
                body: Some(body.clone()),
            };
            encode_frame(&frame, &mut slow, 1 << 20).unwrap();
            assert_eq!(fast, slow, "request id {id}");
        }
    }
}
