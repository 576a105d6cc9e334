//! Fuzzes one native-protocol connection: `native::serve` over a fresh
//! `Service` and `MemoryStore`, with the fuzz input as the client's bytes.
//!
//! The server is configured as `Server::new` does, from settings validated
//! by `SettingArgs::resolve`, with every limit small (see
//! `parley_fuzz::settings`). Before the connection starts, the harness
//! registers alice and bob through the `Service`, stores two messages from
//! bob in alice's mailbox and gives alice a known resume token.
//!
//! The first input byte steers the harness (`parley_fuzz::mode`): whether it
//! logs in first, with real SCRAM frames on the wire (the proof depends on
//! the server's nonce, so this is a conversation, not a canned prefix);
//! whether it shuts the server down once the input is written; in what
//! chunks it writes the input; and how long it waits, in virtual time, after
//! each chunk. Then the client's end closes (EOF), so the connection ends by
//! itself. The runtime's clock is paused: a wait costs nothing, and timers
//! fire as soon as nothing else can run.
//!
//! A panic anywhere in the server, core or store is a finding; so is breaking
//! one of these oracles, each taken from `docs/PROTOCOL.md`:
//! - the output is whole, valid `ServerFrame`s within the frame limit, the
//!   first `Welcome`, nothing after `Goodbye`;
//! - every request the server decodes gets exactly one reply with its
//!   `request_id` (at most one when the server closed the connection first);
//! - the keep-alive closes the connection only if the client was silent that
//!   long, the login timeout only once that much time has passed;
//! - the connection ends within `HANG_LIMIT` once its input has ended.
#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use parley_core::scram::{ClientExchange, Mechanism, StoredCredentials};
use parley_core::store::{NewMessage, NewResumeToken};
use parley_core::{Service, Store, UserId};
use parley_fuzz::fixtures::{LOGIN_REQUEST_IDS, OTHER_USER, PASSWORD, RESUME_TOKEN, USER};
use parley_fuzz::mode::Mode;
use parley_fuzz::{MAX_FRAME_BYTES, settings as limits};
use parley_proto::v1::{self, client_frame, server_frame};
use parley_proto::{ClientFrame, ErrorCode, ServerFrame, decode_frame, encode_frame};
use parley_server::config::{SettingArgs, Settings};
use parley_server::native::{self, NativeContext};
use parley_store::memory::MemoryStore;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// Virtual time the connection may take once its input has ended. The
/// server then waits on timers for a few seconds at most (the close flush),
/// so a connection still open after this no longer ends by itself.
const HANG_LIMIT: Duration = Duration::from_secs(60);
/// Capacity of each direction of the in-memory socket.
const PIPE_BYTES: usize = 4096;
/// Fixed decoy secret, so that runs repeat as far as the nonces allow.
const SECRET: [u8; 32] = [7; 32];
/// Lifetime of alice's resume token.
const RESUME_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("harness: building the runtime");
    runtime.block_on(run_connection(input, Mode::from_byte(first)));
});

/// Whether to print the conversation (`PARLEY_FUZZ_TRACE=1`), for looking
/// at a finding or a seed; off while fuzzing.
fn tracing() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("PARLEY_FUZZ_TRACE").is_some_and(|v| v != "0"))
}

/// `parleyd`'s settings with the harness's limits, validated by the same
/// code that validates flags; then the SCRAM iteration count is lowered
/// below what validation allows (see `settings::SCRAM_ITERATIONS`).
fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let arg = |value: &dyn ToString| Some(value.to_string());
        let args = SettingArgs {
            store: arg(&"memory"),
            max_frame_bytes: arg(&MAX_FRAME_BYTES),
            max_body_bytes: arg(&limits::MAX_BODY_BYTES),
            auth_timeout_secs: arg(&limits::AUTH_TIMEOUT_SECS),
            session_queue: arg(&limits::SESSION_QUEUE),
            pipeline_window: arg(&limits::PIPELINE_WINDOW),
            outbound_buffer_bytes: arg(&limits::OUTBOUND_BUFFER_BYTES),
            keepalive_secs: arg(&limits::KEEPALIVE_SECS),
            ack_timeout_ms: arg(&limits::ACK_TIMEOUT_MS),
            max_ack_backoff_ms: arg(&limits::MAX_ACK_BACKOFF_MS),
            max_unacked: arg(&limits::MAX_UNACKED),
            max_contacts: arg(&limits::MAX_CONTACTS),
            max_backlog: arg(&limits::MAX_BACKLOG),
            login_failures_per_account: arg(&limits::LOGIN_FAILURES_PER_ACCOUNT),
            login_failures_per_ip: arg(&limits::LOGIN_FAILURES_PER_IP),
            ..SettingArgs::default()
        };
        let mut settings = args
            .resolve()
            .unwrap_or_else(|e| panic!("harness: invalid settings: {e}"));
        settings.scram_iterations = limits::SCRAM_ITERATIONS;
        settings
    })
}

/// The service and connection context, built as `Server::new` builds them
/// (which keeps them private; keep this in step with it).
fn context(settings: &Settings, store: Arc<dyn Store>, max_backlog: usize) -> Arc<NativeContext> {
    let mut settings = settings.clone();
    settings.max_backlog = max_backlog;
    parley_server::Server::new(settings, store, SECRET).native_context()
}

/// The harness's accounts' credentials, derived once.
fn credentials() -> &'static StoredCredentials {
    static CREDENTIALS: OnceLock<StoredCredentials> = OnceLock::new();
    CREDENTIALS
        .get_or_init(|| StoredCredentials::derive(Mechanism::Sha256, PASSWORD, &[42; 16], limits::SCRAM_ITERATIONS))
}

/// Registers alice and bob, stores two messages from bob to alice and gives
/// alice the known resume token.
async fn add_fixtures(service: &Service) {
    let mut ids = Vec::new();
    for name in [USER, OTHER_USER] {
        let registered = service
            .register(name, credentials().clone(), None, None)
            .expect("harness: registering");
        let (id, _) = registered.await.expect("harness: registering");
        ids.push(id);
    }
    let (alice, bob): (UserId, UserId) = (ids[0], ids[1]);
    let store = service.store();
    for n in 1..=2 {
        store
            .append(NewMessage {
                sender: bob,
                sender_name: OTHER_USER.into(),
                recipient_key: USER.into(),
                client_msg_id: format!("seed-{n}"),
                body: format!("hello {n}"),
                timestamp_ms: n,
                quota: parley_core::store::MailboxQuota::UNLIMITED,
            })
            .await
            .expect("harness: storing a message");
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("harness: clock")
        .as_millis() as u64;
    store
        .create_resume_token(NewResumeToken {
            user: alice,
            hash: sha2::Sha256::digest(RESUME_TOKEN).into(),
            expires_ms: now_ms + RESUME_TOKEN_LIFETIME.as_millis() as u64,
            max_per_user: parley_core::service::DEFAULT_RESUME_TOKENS_PER_USER,
        })
        .await
        .expect("harness: storing a resume token");
}

async fn run_connection(input: &[u8], mode: Mode) {
    let settings = settings();
    let max_backlog = if mode.tight_backlog {
        limits::TIGHT_MAX_BACKLOG
    } else {
        settings.max_backlog
    };
    let ctx = context(settings, Arc::new(MemoryStore::new()), max_backlog);
    let service = Arc::clone(&ctx.service);
    add_fixtures(&service).await;

    if tracing() {
        eprintln!("mode: {mode:?}");
        let mut buf = BytesMut::from(input);
        while let Ok(Some(frame)) = decode_frame::<ClientFrame>(&mut buf, MAX_FRAME_BYTES as usize) {
            eprintln!("client: {frame:?}");
        }
        eprintln!("client: {} bytes not a valid frame", buf.len());
    }
    let (mut to_server, server_reader) = tokio::io::duplex(PIPE_BYTES);
    let (server_writer, mut from_server) = tokio::io::duplex(PIPE_BYTES);
    // Kept alive for the whole run: a dropped sender reads as a shutdown.
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let peer = SocketAddr::from(([127, 0, 0, 1], 0));
    let started = Instant::now();
    let server = native::serve(server_reader, server_writer, ctx, shutdown_rx, peer);

    let (input_ended_tx, input_ended_rx) = oneshot::channel::<()>();
    let client = async {
        let mut output = Output::default();
        if mode.log_in {
            log_in_on_the_wire(&mut to_server, &mut from_server, &mut output).await;
        }
        let write = async {
            let pieces: Vec<&[u8]> = match mode.chunk_size() {
                0 => vec![input],
                n => input.chunks(n).collect(),
            };
            for piece in pieces {
                // A server that closed early just stops reading: no finding.
                let _ = to_server.write_all(piece).await;
                tokio::task::yield_now().await;
                if !mode.pause().is_zero() {
                    tokio::time::sleep(mode.pause()).await;
                }
            }
            if mode.shut_down {
                let _ = shutdown_tx.send(true);
                service.close_all_sessions();
            }
            let _ = to_server.shutdown().await;
            let _ = input_ended_tx.send(());
        };
        let read = output.read_to_end(&mut from_server);
        tokio::join!(write, read);
        output
    };
    let watchdog = async {
        let _ = input_ended_rx.await;
        tokio::time::sleep(HANG_LIMIT).await;
    };

    let output = tokio::select! {
        (_summary, output) = async { tokio::join!(server, client) } => output,
        () = watchdog => panic!("oracle: the connection did not end within {HANG_LIMIT:?} of virtual time after its input ended"),
    };
    check_timeouts(&output, mode, started);
    check_replies(input, &output, mode);
    drop(shutdown_tx);
}

/// What the server sent, decoded and checked frame by frame.
#[derive(Default)]
struct Output {
    /// Bytes read but not yet a whole frame.
    buffer: BytesMut,
    /// Frames decoded so far.
    frames: usize,
    /// The Goodbye, if one came (nothing may follow it), and when.
    goodbye: Option<(v1::Goodbye, Instant)>,
    /// Whether the server closed the connection itself: a Goodbye, or an
    /// Error with request_id 0 (a connection-level failure).
    closed_by_server: bool,
    /// Replies seen after the login, by request id (0 excluded).
    replies: HashMap<u64, usize>,
}

impl Output {
    /// Reads one frame (during the login), failing the run if the server
    /// closes first.
    async fn next_frame(&mut self, from_server: &mut DuplexStream) -> ServerFrame {
        loop {
            if let Some(frame) = self.decode() {
                return frame;
            }
            let read = from_server.read_buf(&mut self.buffer).await.expect("harness: reading");
            assert!(read > 0, "harness: the server closed during the login");
        }
    }

    /// Reads and checks everything until the server closes.
    async fn read_to_end(&mut self, from_server: &mut DuplexStream) {
        loop {
            while let Some(frame) = self.decode() {
                if frame.request_id != 0 {
                    *self.replies.entry(frame.request_id).or_default() += 1;
                }
            }
            match from_server.read_buf(&mut self.buffer).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => panic!("harness: reading: {e}"),
            }
        }
        assert!(
            self.buffer.is_empty(),
            "oracle: the server's output ended inside a frame"
        );
    }

    /// Decodes one buffered frame and checks the stream-level oracles.
    fn decode(&mut self) -> Option<ServerFrame> {
        let frame = decode_frame::<ServerFrame>(&mut self.buffer, MAX_FRAME_BYTES as usize)
            .unwrap_or_else(|e| panic!("oracle: the server sent an invalid frame: {e}"))?;
        if tracing() {
            eprintln!("server, at {:?}: {frame:?}", Instant::now());
        }
        assert!(self.goodbye.is_none(), "oracle: a frame after Goodbye: {frame:?}");
        if self.frames == 0 {
            assert!(
                matches!(frame.body, Some(server_frame::Body::Welcome(_))),
                "oracle: the first frame is not Welcome: {frame:?}"
            );
        }
        match &frame.body {
            Some(server_frame::Body::Goodbye(g)) => {
                self.goodbye = Some((g.clone(), Instant::now()));
                self.closed_by_server = true;
            }
            Some(server_frame::Body::Error(_)) if frame.request_id == 0 => self.closed_by_server = true,
            _ => {}
        }
        self.frames += 1;
        Some(frame)
    }
}

/// Logs in as alice with real SCRAM frames.
async fn log_in_on_the_wire(to_server: &mut DuplexStream, from_server: &mut DuplexStream, output: &mut Output) {
    let mut exchange = ClientExchange::new(USER, PASSWORD);
    let (start_id, continue_id) = LOGIN_REQUEST_IDS;
    let start = client_frame::Body::AuthStart(v1::AuthStart {
        client_first: exchange.client_first().into_bytes(),
        quiet: false,
    });
    send_frame(to_server, start_id, start).await;
    let challenge = loop {
        let frame = output.next_frame(from_server).await;
        match frame.body {
            Some(server_frame::Body::Welcome(_)) => {}
            Some(server_frame::Body::AuthChallenge(c)) if frame.request_id == start_id => break c,
            other => panic!("harness: expected AuthChallenge, got {other:?}"),
        }
    };
    let mechanism = Mechanism::from_name(&challenge.mechanism).expect("harness: challenge mechanism");
    let client_final = exchange
        .client_final(mechanism, &challenge.server_first)
        .expect("harness: client-final");
    let finish = client_frame::Body::AuthContinue(v1::AuthContinue {
        client_final: client_final.into_bytes(),
    });
    send_frame(to_server, continue_id, finish).await;
    let frame = output.next_frame(from_server).await;
    match frame.body {
        Some(server_frame::Body::AuthOk(ok)) if frame.request_id == continue_id => {
            exchange
                .verify_server_final(&ok.server_final)
                .expect("oracle: the server's final SCRAM message does not verify");
        }
        other => panic!("harness: expected AuthOk, got {other:?}"),
    }
}

async fn send_frame(to_server: &mut DuplexStream, request_id: u64, body: client_frame::Body) {
    let mut buf = BytesMut::new();
    let frame = ClientFrame {
        request_id,
        body: Some(body),
    };
    encode_frame(&frame, &mut buf, MAX_FRAME_BYTES as usize).expect("harness: encoding");
    to_server.write_all(&buf).await.expect("harness: writing");
}

/// The keep-alive may close the connection only if the client was silent
/// that long (the harness is silent only in its pauses); the login timeout
/// only once that much time has passed since the connection started.
fn check_timeouts(output: &Output, mode: Mode, started: Instant) {
    let Some((goodbye, when)) = &output.goodbye else {
        return;
    };
    let settings = settings();
    if goodbye.code == ErrorCode::Timeout as i32 {
        assert!(
            mode.pause() >= settings.keepalive,
            "oracle: keep-alive timeout although the client never paused {:?} (its pauses: {:?})",
            settings.keepalive,
            mode.pause()
        );
    }
    if goodbye.code == ErrorCode::NotAuthenticated as i32 {
        assert!(
            *when - started >= settings.auth_timeout,
            "oracle: login timeout after {:?}, before the {:?} allowed",
            *when - started,
            settings.auth_timeout
        );
    }
}

/// Every request the server decodes gets exactly one reply with its id, or
/// at most one when the server closed the connection itself (a Goodbye or a
/// connection-level Error) or was shut down, since it then stops reading.
/// The harness decodes the input as the server does, up to the first frame
/// the server refuses (too large, malformed, or without a body, which is
/// answered and then closes the connection).
fn check_replies(input: &[u8], output: &Output, mode: Mode) {
    let mut requests: HashMap<u64, usize> = HashMap::new();
    let mut buf = BytesMut::from(input);
    while let Ok(Some(frame)) = decode_frame::<ClientFrame>(&mut buf, MAX_FRAME_BYTES as usize) {
        if frame.request_id != 0 {
            *requests.entry(frame.request_id).or_default() += 1;
        }
        if frame.body.is_none() {
            break;
        }
    }
    for (id, &replies) in &output.replies {
        let asked = requests.get(id).copied().unwrap_or(0);
        assert!(
            replies <= asked,
            "oracle: {replies} replies with request_id {id}, which was sent {asked} times"
        );
    }
    if !mode.shut_down && !output.closed_by_server {
        for (id, &asked) in &requests {
            let replies = output.replies.get(id).copied().unwrap_or(0);
            assert_eq!(
                replies, asked,
                "oracle: request_id {id} was sent {asked} times and answered {replies} times"
            );
        }
    }
}
