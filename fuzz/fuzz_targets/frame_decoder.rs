//! Fuzzes the length-prefixed codec of `parley-proto`.
//!
//! The first input byte picks the frame limit (0 to 4080 bytes in steps of
//! 16); the rest is a byte stream decoded frame after frame, once as
//! `ClientFrame`s and once as `ServerFrame`s, the way a connection would
//! decode what it has buffered. Besides "never panics", every call is checked
//! against the contract written in `frame.rs`, and every decoded frame must
//! survive a round trip through `encode_frame`. Before each client frame is
//! decoded, `peek_send` and `whole_frame_len` are asked about it: a frame
//! `peek_send` answers for must decode to a send with its request id and
//! length, and `whole_frame_len` must agree with what decoding consumed.
#![no_main]

use std::fmt::Debug;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use parley_proto::v1::client_frame;
use parley_proto::{
    ClientFrame, FrameError, LENGTH_PREFIX_BYTES, ServerFrame, decode_frame, encode_frame, peek_send, whole_frame_len,
};
use prost::Message;

/// Step between the frame limits the first input byte selects.
const MAX_FRAME_STEP: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let max_frame_bytes = selector as usize * MAX_FRAME_STEP;
    decode_stream::<ClientFrame>(stream, max_frame_bytes);
    decode_stream::<ServerFrame>(stream, max_frame_bytes);
    check_peeks(stream, max_frame_bytes);
});

/// Walks `stream`'s client frames as a connection does, checking what
/// `peek_send` and `whole_frame_len` say of each against the decoder.
fn check_peeks(stream: &[u8], max_frame_bytes: usize) {
    let mut buf = BytesMut::from(stream);
    loop {
        let peeked = peek_send(&buf, max_frame_bytes);
        let whole = whole_frame_len(&buf, max_frame_bytes);
        let before = buf.len();
        match decode_frame::<ClientFrame>(&mut buf, max_frame_bytes) {
            Ok(Some(frame)) => {
                assert_eq!(
                    whole,
                    Some(before - buf.len()),
                    "whole_frame_len disagrees with the decoder"
                );
                if let Some(peeked) = peeked {
                    assert_eq!(peeked.len, before - buf.len(), "peek_send's length");
                    assert_eq!(peeked.request_id, frame.request_id, "peek_send's request id");
                    assert!(
                        matches!(frame.body, Some(client_frame::Body::Send(_))),
                        "peek_send took {frame:?} for a send"
                    );
                }
            }
            Ok(None) | Err(FrameError::TooLarge { .. }) => {
                assert_eq!(peeked, None, "peek_send answered for an incomplete or oversized frame");
                assert_eq!(
                    whole, None,
                    "whole_frame_len answered for an incomplete or oversized frame"
                );
                return;
            }
            Err(FrameError::Malformed(e)) => {
                assert_eq!(peeked, None, "peek_send took a frame that does not decode ({e})");
                assert_eq!(
                    whole,
                    Some(before - buf.len()),
                    "whole_frame_len disagrees with the decoder"
                );
            }
        }
    }
}

/// Decodes frames from `stream` until it runs out or announces a frame over
/// the limit, checking what each call consumed.
fn decode_stream<M: Message + Default + PartialEq + Debug>(stream: &[u8], max_frame_bytes: usize) {
    let mut buf = BytesMut::from(stream);
    loop {
        let before = buf.len();
        let announced =
            (before >= LENGTH_PREFIX_BYTES).then(|| u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize);
        match decode_frame::<M>(&mut buf, max_frame_bytes) {
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete frame must consume nothing");
                if let Some(len) = announced {
                    assert!(
                        len <= max_frame_bytes,
                        "a frame over the limit must be an error, not 'need more'"
                    );
                    assert!(
                        before < LENGTH_PREFIX_BYTES + len,
                        "a whole frame was reported as incomplete"
                    );
                }
                return;
            }
            Ok(Some(frame)) => {
                let len = announced.expect("a frame was decoded without a length prefix");
                assert!(len <= max_frame_bytes);
                assert_eq!(
                    buf.len(),
                    before - LENGTH_PREFIX_BYTES - len,
                    "a frame must consume exactly itself"
                );
                check_round_trip(&frame);
            }
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!(buf.len(), before, "a frame over the limit must consume nothing");
                assert_eq!(Some(len), announced);
                assert_eq!(max, max_frame_bytes);
                assert!(len > max);
                return;
            }
            Err(FrameError::Malformed(_)) => {
                // The bad frame is consumed whole, so decoding can go on from
                // the next one (a connection closes instead).
                let len = announced.expect("a malformed frame without a length prefix");
                assert_eq!(
                    buf.len(),
                    before - LENGTH_PREFIX_BYTES - len,
                    "a bad frame must consume exactly itself"
                );
            }
        }
    }
}

/// Encodes `frame`, decodes it again and compares; also checks that the
/// limit is exact (the encoded length fits, one byte less does not) and that
/// encoding is canonical (re-encoding the copy gives the same bytes).
///
/// The limit is the frame's own encoded length, not the limit it was decoded
/// with: the canonical encoding can be longer than the input (a repeated
/// field sent unpacked with one element is one byte shorter than packed).
fn check_round_trip<M: Message + Default + PartialEq + Debug>(frame: &M) {
    let len = frame.encoded_len();
    let mut encoded = BytesMut::new();
    encode_frame(frame, &mut encoded, len).expect("a frame must fit a limit of its own encoded length");
    assert_eq!(encoded.len(), LENGTH_PREFIX_BYTES + len);

    let mut copy = encoded.clone();
    let again: M = decode_frame(&mut copy, len)
        .expect("a re-encoded frame must decode")
        .expect("a re-encoded frame must be whole");
    assert!(copy.is_empty(), "decoding a re-encoded frame must consume all of it");
    assert_eq!(&again, frame, "round trip changed the frame");

    let mut reencoded = BytesMut::new();
    encode_frame(&again, &mut reencoded, len).expect("the copy must encode like the original");
    assert_eq!(reencoded, encoded, "encoding is not canonical");

    if len > 0 {
        let mut untouched = BytesMut::new();
        assert_eq!(
            encode_frame(frame, &mut untouched, len - 1),
            Err(FrameError::TooLarge { len, max: len - 1 })
        );
        assert!(untouched.is_empty(), "a refused encode must leave the buffer untouched");
    }
}
