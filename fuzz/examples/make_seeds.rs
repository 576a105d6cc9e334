//! Writes the seed inputs in `fuzz/seeds/`: valid frames that libFuzzer
//! would take minutes to find from nothing (a 4-byte length that matches, a
//! protobuf body with the right field numbers, names that exist, the
//! harness's resume token).
//!
//! Run it from `fuzz/` after a change to the protocol or to
//! `parley_fuzz::mode`: `cargo run --release --example make_seeds`. The
//! seeds are committed; the fuzz scripts read them as an extra corpus and
//! never write to them.

use std::path::Path;

use bytes::BytesMut;
use parley_fuzz::MAX_FRAME_BYTES;
use parley_fuzz::fixtures::{OTHER_USER, RESUME_TOKEN, USER};
use parley_fuzz::mode::Mode;
use parley_proto::v1::{self, client_frame::Body};
use parley_proto::{ClientFrame, encode_frame};

/// The frame_decoder harness's first byte: the largest frame limit (4080).
const LARGEST_LIMIT: u8 = 0xff;
/// First request id of a seed; the harness's own login uses 1 and 2.
const FIRST_REQUEST_ID: u64 = 10;

fn main() -> std::io::Result<()> {
    let plain = Mode {
        log_in: false,
        shut_down: false,
        tight_backlog: false,
        chunk: 0,
        pause: 0,
    };
    let logged_in = Mode { log_in: true, ..plain };
    let mut seeds: Vec<(String, Mode, Vec<Body>)> = Vec::new();
    for (name, body) in every_request() {
        seeds.push((format!("login-{name}"), logged_in, vec![body.clone()]));
        seeds.push((format!("anonymous-{name}"), plain, vec![body]));
    }
    let all: Vec<Body> = every_request().into_iter().map(|(_, body)| body).collect();
    seeds.push(("login-all".into(), logged_in, all.clone()));
    seeds.push(("anonymous-all".into(), plain, all.clone()));
    let shut_down = Mode {
        shut_down: true,
        ..logged_in
    };
    seeds.push(("login-all-shutdown".into(), shut_down, all.clone()));
    // Three bytes at a time: every frame arrives in pieces.
    let chunked = Mode { chunk: 2, ..logged_in };
    seeds.push(("login-all-chunked".into(), chunked, all.clone()));
    let tight = Mode {
        tight_backlog: true,
        ..logged_in
    };
    seeds.push(("login-all-tight-backlog".into(), tight, all));

    // Pushes of one's own messages: more than the session queue and the
    // unacked limit hold, with pauses long enough for re-pushes.
    let own_sends = |n: usize| -> Vec<Body> {
        let mut bodies = vec![Body::Subscribe(v1::Subscribe { after_seq: 0 })];
        bodies.extend((1..=n).map(|i| send(USER, &format!("self-{i}"))));
        bodies
    };
    seeds.push(("login-subscribe-sends".into(), logged_in, own_sends(5)));
    seeds.push(("login-subscribe-sends-shutdown".into(), shut_down, own_sends(2)));
    for pause in 4..8 {
        // One pause after the whole input, then one after every frame-sized
        // chunk (16 bytes).
        let paused = Mode { pause, ..logged_in };
        seeds.push((format!("login-subscribe-sends-pause{pause}"), paused, own_sends(4)));
        let paused_chunks = Mode { chunk: 3, ..paused };
        seeds.push((
            format!("login-subscribe-sends-chunked-pause{pause}"),
            paused_chunks,
            own_sends(4),
        ));
    }
    let resume_then = |body: Body| {
        vec![
            Body::Resume(v1::Resume {
                token: RESUME_TOKEN.to_vec(),
                quiet: false,
            }),
            body,
        ]
    };
    seeds.push((
        "anonymous-resume-subscribe".into(),
        plain,
        resume_then(Body::Subscribe(v1::Subscribe { after_seq: 0 })),
    ));
    // Logged out but talking, 5 s between 16-byte chunks, past the login timeout.
    let mut talk_after_logout = resume_then(Body::Logout(v1::Logout {}));
    talk_after_logout.extend((0..8).map(|nonce| Body::Ping(v1::Ping { nonce })));
    seeds.push((
        "anonymous-resume-logout-login-timeout".into(),
        Mode {
            chunk: 3,
            pause: 6,
            ..plain
        },
        talk_after_logout,
    ));

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let server_requests = root.join("server_requests");
    let frame_decoder = root.join("frame_decoder");
    for dir in [&server_requests, &frame_decoder] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
    }
    for (name, mode, bodies) in &seeds {
        let stream = encode(bodies);
        std::fs::write(server_requests.join(name), [&[mode.to_byte()], &stream[..]].concat())?;
        std::fs::write(frame_decoder.join(name), [&[LARGEST_LIMIT], &stream[..]].concat())?;
    }
    println!("wrote {} seeds per target under {}", seeds.len(), root.display());
    Ok(())
}

/// One valid request of every type, named for the seed files.
fn every_request() -> Vec<(&'static str, Body)> {
    vec![
        ("subscribe", Body::Subscribe(v1::Subscribe { after_seq: 0 })),
        ("send-self", send(USER, "m1")),
        ("send-other", send(OTHER_USER, "m2")),
        (
            "fetch",
            Body::Fetch(v1::Fetch {
                after_seq: 0,
                limit: 0,
                include_acked: true,
            }),
        ),
        (
            "ack",
            Body::Ack(v1::Ack {
                up_to_seq: 1,
                seqs: vec![2, 3],
            }),
        ),
        (
            "delete-messages",
            Body::DeleteMessages(v1::DeleteMessages {
                message_ids: vec![1, 2],
            }),
        ),
        (
            "list-accounts",
            Body::ListAccounts(v1::ListAccounts {
                pattern: "a*".into(),
                after: String::new(),
                limit: 1,
            }),
        ),
        (
            "add-contact",
            Body::AddContact(v1::AddContact {
                name: OTHER_USER.into(),
            }),
        ),
        (
            "add-contact-self",
            Body::AddContact(v1::AddContact { name: USER.into() }),
        ),
        (
            "remove-contact",
            Body::RemoveContact(v1::RemoveContact {
                name: OTHER_USER.into(),
            }),
        ),
        ("list-contacts", Body::ListContacts(v1::ListContacts {})),
        ("ping", Body::Ping(v1::Ping { nonce: 1 })),
        ("logout", Body::Logout(v1::Logout {})),
        (
            "resume",
            Body::Resume(v1::Resume {
                token: RESUME_TOKEN.to_vec(),
                quiet: false,
            }),
        ),
        (
            "auth-start",
            Body::AuthStart(v1::AuthStart {
                client_first: format!("n,,n={USER},r=abc").into_bytes(),
                quiet: false,
            }),
        ),
        (
            "auth-continue",
            Body::AuthContinue(v1::AuthContinue {
                client_final: b"c=biws,r=abc,p=AAAA".to_vec(),
            }),
        ),
        (
            "register",
            Body::Register(v1::Register {
                name: "carol".into(),
                mechanism: "SCRAM-SHA-256".into(),
                salt: vec![1; 16],
                iterations: 4096,
                stored_key: vec![2; 32],
                server_key: vec![3; 32],
                invite: String::new(),
            }),
        ),
        ("delete-account", Body::DeleteAccount(v1::DeleteAccount::default())),
    ]
}

fn send(to: &str, client_msg_id: &str) -> Body {
    Body::Send(v1::SendMessage {
        to: to.into(),
        client_msg_id: client_msg_id.into(),
        body: "hi".into(),
    })
}

/// The frames of `bodies`, with request ids from [`FIRST_REQUEST_ID`].
fn encode(bodies: &[Body]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for (i, body) in bodies.iter().enumerate() {
        let frame = ClientFrame {
            request_id: FIRST_REQUEST_ID + i as u64,
            body: Some(body.clone()),
        };
        encode_frame(&frame, &mut buf, MAX_FRAME_BYTES as usize).expect("a seed frame fits");
    }
    buf.to_vec()
}
