//! Property tests: every frame we can build encodes and decodes to itself,
//! one or many in a row, whatever way the byte stream is split.

use bytes::BytesMut;
use parley_proto::v1::{self, client_frame, server_frame};
use parley_proto::{decode_frame, encode_frame};
use proptest::prelude::*;

const MAX: usize = 1 << 20;

fn arb_message() -> impl Strategy<Value = v1::Message> {
    (
        any::<u64>(),
        any::<u64>(),
        "[a-z]{1,32}",
        any::<u64>(),
        ".{0,200}",
        "[a-z0-9]{0,64}",
        any::<bool>(),
    )
        .prop_map(
            |(message_id, seq, from, timestamp_ms, body, client_msg_id, acked)| v1::Message {
                message_id,
                seq,
                from,
                timestamp_ms,
                body,
                client_msg_id,
                acked,
            },
        )
}

fn arb_client_body() -> impl Strategy<Value = client_frame::Body> {
    prop_oneof![
        (
            "[a-zA-Z0-9._-]{0,40}",
            ".{0,20}",
            prop::collection::vec(any::<u8>(), 0..64),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..64),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(name, mechanism, salt, iterations, stored_key, server_key)| {
                client_frame::Body::Register(v1::Register {
                    name,
                    mechanism,
                    salt,
                    iterations,
                    stored_key,
                    server_key,
                    invite: String::new(),
                })
            }),
        (prop::collection::vec(any::<u8>(), 0..128), any::<bool>())
            .prop_map(|(client_first, quiet)| { client_frame::Body::AuthStart(v1::AuthStart { client_first, quiet }) }),
        prop::collection::vec(any::<u8>(), 0..128)
            .prop_map(|client_final| client_frame::Body::AuthContinue(v1::AuthContinue { client_final })),
        (".{0,40}", ".{0,64}", ".{0,500}").prop_map(|(to, client_msg_id, body)| client_frame::Body::Send(
            v1::SendMessage {
                to,
                client_msg_id,
                body
            }
        )),
        (any::<u64>(), any::<u32>(), any::<bool>()).prop_map(|(after_seq, limit, include_acked)| {
            client_frame::Body::Fetch(v1::Fetch {
                after_seq,
                limit,
                include_acked,
            })
        }),
        (any::<u64>(), prop::collection::vec(any::<u64>(), 0..20))
            .prop_map(|(up_to_seq, seqs)| client_frame::Body::Ack(v1::Ack { up_to_seq, seqs })),
        prop::collection::vec(any::<u64>(), 0..20)
            .prop_map(|message_ids| client_frame::Body::DeleteMessages(v1::DeleteMessages { message_ids })),
        any::<u64>().prop_map(|after_seq| client_frame::Body::Subscribe(v1::Subscribe { after_seq })),
        (".{0,40}", ".{0,40}", any::<u32>()).prop_map(|(pattern, after, limit)| client_frame::Body::ListAccounts(
            v1::ListAccounts { pattern, after, limit }
        )),
        prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|client_final| client_frame::Body::DeleteAccount(v1::DeleteAccount { client_final })),
        prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|client_first| client_frame::Body::Reauth(v1::Reauth { client_first })),
        (
            prop::collection::vec(any::<u8>(), 0..64),
            ".{0,20}",
            prop::collection::vec(any::<u8>(), 0..64),
            any::<u32>()
        )
            .prop_map(|(client_final, mechanism, salt, iterations)| {
                client_frame::Body::ChangePassword(v1::ChangePassword {
                    client_final,
                    mechanism,
                    salt,
                    iterations,
                    stored_key: vec![1; 32],
                    server_key: vec![2; 32],
                })
            }),
        Just(client_frame::Body::Logout(v1::Logout {})),
        Just(client_frame::Body::LogoutAll(v1::LogoutAll {})),
        Just(client_frame::Body::ListContacts(v1::ListContacts {})),
        (prop::collection::vec(any::<u8>(), 0..64), any::<bool>())
            .prop_map(|(token, quiet)| client_frame::Body::Resume(v1::Resume { token, quiet })),
        ".{0,40}".prop_map(|name| client_frame::Body::AddContact(v1::AddContact { name })),
        ".{0,40}".prop_map(|name| client_frame::Body::RemoveContact(v1::RemoveContact { name })),
        ".{0,40}".prop_map(|name| client_frame::Body::ApprovePresence(v1::ApprovePresence { name })),
        ".{0,40}".prop_map(|name| client_frame::Body::DenyPresence(v1::DenyPresence { name })),
        ".{0,40}".prop_map(|name| client_frame::Body::CancelPresence(v1::CancelPresence { name })),
        Just(client_frame::Body::ListPresenceRequests(v1::ListPresenceRequests {})),
        ".{0,40}".prop_map(|name| client_frame::Body::Block(v1::Block { name })),
        ".{0,40}".prop_map(|name| client_frame::Body::Unblock(v1::Unblock { name })),
        Just(client_frame::Body::ListBlocked(v1::ListBlocked {})),
        any::<Option<bool>>().prop_map(|accept| client_frame::Body::Pager(v1::Pager { accept })),
        any::<u64>().prop_map(|nonce| client_frame::Body::Ping(v1::Ping { nonce })),
    ]
}

fn arb_server_body() -> impl Strategy<Value = server_frame::Body> {
    prop_oneof![
        (
            any::<u32>(),
            ".{0,30}",
            prop::collection::vec("[A-Z0-9-]{1,20}", 0..3),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            prop::array::uniform9(any::<u32>())
        )
            .prop_map(
                |(protocol_version, server, mechanisms, scram_iterations, max_frame_bytes, max_body_bytes, limits)| {
                    server_frame::Body::Welcome(v1::Welcome {
                        protocol_version,
                        server,
                        mechanisms,
                        scram_iterations,
                        max_frame_bytes,
                        max_body_bytes,
                        keepalive_secs: scram_iterations.rotate_left(7),
                        auth_timeout_secs: limits[0],
                        ack_timeout_ms: limits[1],
                        max_ack_backoff_ms: limits[2],
                        max_unacked: limits[3],
                        max_contacts: limits[4],
                        login_failures_per_account: limits[5],
                        login_failures_per_ip: limits[6],
                        send_rate_per_account: limits[7],
                        registrations_per_ip_per_hour: limits[8],
                    })
                }
            ),
        (0i32..50, ".{0,80}", any::<u32>(), ".{0,16}").prop_map(|(code, message, retry_after_ms, reason)| {
            server_frame::Body::Error(v1::Error {
                code,
                message,
                retry_after_ms,
                reason,
            })
        }),
        (".{0,20}", prop::collection::vec(any::<u8>(), 0..128)).prop_map(|(mechanism, server_first)| {
            server_frame::Body::AuthChallenge(v1::AuthChallenge {
                mechanism,
                server_first,
            })
        }),
        (
            prop::collection::vec(any::<u8>(), 0..64),
            ".{0,32}",
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(server_final, name, user_id, session_id, unread, last_seq)| server_frame::Body::AuthOk(v1::AuthOk {
                    name,
                    user_id,
                    session_id,
                    unread,
                    last_seq,
                    resume_token: server_final.iter().rev().copied().collect(),
                    resume_expires_ms: user_id ^ last_seq,
                    server_final,
                })
            ),
        (
            ".{0,64}",
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(client_msg_id, message_id, seq, timestamp_ms, duplicate, held)| {
                server_frame::Body::Sent(v1::Sent {
                    client_msg_id,
                    message_id,
                    seq,
                    timestamp_ms,
                    duplicate,
                    held,
                })
            }),
        (prop::collection::vec(arb_message(), 0..8), any::<bool>())
            .prop_map(|(messages, more)| server_frame::Body::Messages(v1::MessageBatch { messages, more })),
        prop::collection::vec(arb_message(), 0..8).prop_map(|messages| server_frame::Body::Push(v1::Push { messages })),
        (
            prop::collection::vec((".{0,32}", any::<bool>(), 0..3i32), 0..8),
            ".{0,32}"
        )
            .prop_map(|(entries, next_after)| {
                server_frame::Body::Accounts(v1::AccountPage {
                    accounts: entries
                        .into_iter()
                        .map(|(name, online, subscription)| v1::AccountEntry {
                            name,
                            online,
                            subscription,
                        })
                        .collect(),
                    next_after,
                })
            }),
        (
            prop::collection::vec(any::<u64>(), 0..8),
            prop::collection::vec(any::<u64>(), 0..8)
        )
            .prop_map(|(deleted, not_found)| server_frame::Body::Deleted(v1::Deleted { deleted, not_found })),
        ".{0,32}".prop_map(|from| server_frame::Body::PresenceRequest(v1::PresenceRequest { from })),
        ".{0,32}".prop_map(|name| server_frame::Body::PresenceApproved(v1::PresenceApproved { name })),
        prop::collection::vec(".{0,32}", 0..8)
            .prop_map(|names| server_frame::Body::PresenceRequests(v1::PresenceRequests { names })),
        prop::collection::vec(".{0,32}", 0..8).prop_map(|names| server_frame::Body::Blocked(v1::BlockList { names })),
        any::<bool>().prop_map(|accept| server_frame::Body::Pager(v1::PagerSetting { accept })),
    ]
}

proptest! {
    #[test]
    fn client_frames_round_trip(frames in prop::collection::vec((any::<u64>(), arb_client_body()), 1..6), split in 1usize..64) {
        let frames: Vec<v1::ClientFrame> = frames.into_iter()
            .map(|(request_id, body)| v1::ClientFrame { request_id, body: Some(body) }).collect();
        let mut wire = BytesMut::new();
        for f in &frames { encode_frame(f, &mut wire, MAX).unwrap(); }
        // Feed the stream in chunks of `split` bytes, as a socket might.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(split) {
            buf.extend_from_slice(chunk);
            while let Some(f) = decode_frame::<v1::ClientFrame>(&mut buf, MAX).unwrap() { got.push(f); }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn server_frames_round_trip(request_id in any::<u64>(), body in arb_server_body()) {
        let frame = v1::ServerFrame { request_id, body: Some(body) };
        let mut wire = BytesMut::new();
        encode_frame(&frame, &mut wire, MAX).unwrap();
        let got = decode_frame::<v1::ServerFrame>(&mut wire, MAX).unwrap().unwrap();
        prop_assert_eq!(got, frame);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decode_frame::<v1::ClientFrame>(&mut buf, 256) {}
    }
}
