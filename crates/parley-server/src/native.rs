//! The native-protocol front door: one task per connection.
//!
//! A connection task owns its socket, its input and output buffers, its
//! in-flight requests and its [`Session`]. It is a single loop that reads
//! frames, starts requests, writes replies and pushes, and reacts to
//! shutdown, in one `select!` — no second task and no channel per
//! connection, which keeps idle connections small.
//!
//! Backpressure: the task stops reading requests while `pipeline_window`
//! requests are in flight or while more than `outbound_buffer_bytes` wait to
//! be written, and stops taking pushes while output is congested, so a client
//! that does not read never makes the server buffer without bound; messages
//! meant for it wait in its mailbox (see `Session::next_push`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use parley_core::delivery::{AckFired, AckTimer};
use parley_core::scram::StoredCredentials;
use parley_core::service::ContactView;
use parley_core::store::AckRange;
use parley_core::{
    AuthPending, CoreError, ErrorKind, LoginOutcome, MessageId, PushEvent, Seq, Service, Session, StoreError,
};
use parley_http::access;
use parley_proto::v1::{self, client_frame, server_frame::Body};
use parley_proto::{
    ClientFrame, ErrorCode, FrameError, ServerFrame, decode_frame, encode_frame, peek_send, whole_frame_len,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::convert::{self, FRAME_ENVELOPE_BYTES, core_error_frame, error_frame, frame, goodbye};
use crate::files::{self, FileSide};
use crate::perf::PerfLog;

/// Smallest space reserved for a socket read: what an idle connection
/// holds while it waits for its next request.
const MIN_READ: usize = 256;
/// Largest space reserved for a socket read. The reservation doubles each
/// time a read fills it (data is streaming in) and halves after one that
/// did not, so a busy connection reads in large chunks while an idle one
/// keeps 256 bytes instead of kilobytes.
const MAX_READ: usize = 16 * 1024;
/// Output buffer capacity kept while empty; a larger buffer (after a big
/// reply) is released so idle connections stay small.
const IDLE_OUTPUT_CAPACITY: usize = 16 * 1024;
/// Longest time the final frames of a closing connection may take to write.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What every connection of the native listener shares.
pub struct NativeContext {
    /// The chat service.
    pub service: Arc<Service>,
    /// Hard limit on a frame's payload, both directions.
    pub max_frame_bytes: usize,
    /// How long a connection may go without authenticating.
    pub auth_timeout: Duration,
    /// Requests one connection may have in flight.
    pub pipeline_window: usize,
    /// Output bytes buffered before the connection is paused.
    pub outbound_buffer_bytes: usize,
    /// The Welcome frame, built once.
    pub welcome: ServerFrame,
    /// A connection silent for this long is closed.
    pub keepalive: Duration,
    /// First wait for an ack before pushing again.
    pub ack_timeout: Duration,
    /// Longest wait between re-pushes (the wait doubles up to this).
    pub max_ack_backoff: Duration,
    /// Requests in flight across all connections past which new work is
    /// answered BUSY at once (admission control).
    pub max_backlog: usize,
    /// Requests in flight across all connections now.
    pub backlog: AtomicUsize,
    /// Connections (TCP, TLS, WebSocket) not logged in, past which a new
    /// connection is refused BUSY: unauthenticated connections cost the
    /// server but prove nothing, so they get a share of their own.
    pub max_unauthenticated: usize,
    /// Connections not logged in now.
    pub unauthenticated: AtomicUsize,
    /// Counters for metrics.
    pub counters: NativeCounters,
    /// The perf log, once the server has opened it (only when `perf_log`
    /// is on): each request's time and outcome.
    pub perf: OnceLock<Arc<PerfLog>>,
}

/// What a connection did, for the access log line written when it ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionSummary {
    /// Bytes read from the client.
    pub bytes_in: u64,
    /// Bytes written to the client.
    pub bytes_out: u64,
}

/// A request being timed for the perf log: its operation and arrival.
struct PerfOp {
    /// The request type.
    op: &'static str,
    /// When it was decoded.
    started: Instant,
}

/// The front door's own counters.
#[derive(Debug, Default)]
pub struct NativeCounters {
    /// Requests refused with BUSY (backlog or storage queue).
    pub busy_replies: AtomicU64,
    /// Times a connection's output filled up and it was paused.
    pub slow_consumer_pauses: AtomicU64,
    /// Connections closed for keep-alive silence.
    pub keepalive_timeouts: AtomicU64,
    /// Connections refused because `max_unauthenticated` were open.
    pub unauthenticated_refused: AtomicU64,
}

/// A connection's place among those not logged in; released on drop.
struct Unauthenticated(Arc<NativeContext>);

impl Unauthenticated {
    /// Takes a place, unless `max_unauthenticated` are taken (or, with
    /// `force`, in any case: a connection that logs out again).
    fn take(ctx: &Arc<NativeContext>, force: bool) -> Option<Unauthenticated> {
        let before = ctx.unauthenticated.fetch_add(1, Ordering::AcqRel);
        if before >= ctx.max_unauthenticated && !force {
            ctx.unauthenticated.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Unauthenticated(Arc::clone(ctx)))
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        self.0.unauthenticated.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long a connection is not read after one of its requests was refused
/// with BUSY. The refusal asked the client to wait longer than this (50 ms
/// or more) before retrying; reading its socket sooner would only spend the
/// CPU the store needs on refusing more, one small read per client tick.
/// Paused, what the client sends meanwhile waits in the kernel's socket
/// buffer and is read in one go, so under a flood the tokio workers make
/// fewer, larger reads and writes (docs/BENCHMARKS.md, overload).
const REFUSED_READ_PAUSE: Duration = Duration::from_millis(15);
/// Retry hint sent with the BUSY refusal of a connection over
/// `max_unauthenticated`.
const UNAUTHENTICATED_RETRY_MS: u32 = 1000;
/// Retry hint sent with BUSY when the backlog is over its high-water mark.
const BACKLOG_RETRY_MS: u32 = 100;
thread_local! {
    /// The BUSY answer to a send refused before it was decoded, built once
    /// per thread: each refusal only sets its request id.
    static BUSY_REPLY: std::cell::RefCell<ServerFrame> = std::cell::RefCell::new(core_error_frame(0, &busy()));
}
/// Retry hint when live delivery finds the store busy and no hint was given.
const PUSH_RETRY_MS: u64 = 50;

impl NativeContext {
    /// The Welcome this server sends: its identity and every limit a
    /// client needs to pace itself, all from the running configuration.
    pub fn welcome_frame(service: &Service, settings: &crate::config::Settings) -> ServerFrame {
        let config = service.config();
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let millis = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        frame(
            0,
            Body::Welcome(v1::Welcome {
                protocol_version: parley_proto::PROTOCOL_VERSION,
                server: format!("parleyd {}", env!("CARGO_PKG_VERSION")),
                mechanisms: config.auth.mechanisms.iter().map(|m| m.name().to_owned()).collect(),
                scram_iterations: config.auth.iterations,
                max_frame_bytes: settings.max_frame_bytes,
                max_body_bytes: config.limits.max_body_bytes,
                keepalive_secs: secs(settings.keepalive),
                auth_timeout_secs: secs(settings.auth_timeout),
                ack_timeout_ms: millis(settings.ack_timeout),
                max_ack_backoff_ms: millis(settings.max_ack_backoff),
                max_unacked: u32::try_from(config.limits.max_unacked).unwrap_or(u32::MAX),
                max_contacts: config.limits.max_contacts,
                login_failures_per_account: config.throttle.failures_per_account,
                login_failures_per_ip: config.throttle.failures_per_ip,
                send_rate_per_account: config.limits.send_rate_per_account,
                registrations_per_ip_per_hour: config.limits.registrations_per_ip_per_hour,
            }),
        )
    }
}

type Reply = Pin<Box<dyn Future<Output = ServerFrame> + Send>>;

/// Boxes a request's future into a reply frame (or its error frame).
fn reply<T, F>(request_id: u64, future: F, make: impl FnOnce(T) -> Body + Send + 'static) -> Reply
where
    F: Future<Output = Result<T, CoreError>> + Send + 'static,
{
    Box::pin(async move {
        match future.await {
            Ok(value) => frame(request_id, make(value)),
            Err(e) => core_error_frame(request_id, &e),
        }
    })
}

/// Whether the connection still takes requests.
enum Phase {
    Open,
    /// Finishing in-flight requests; then `last` (if any) is written and the
    /// connection closed.
    Draining {
        last: Option<Box<ServerFrame>>,
    },
}

struct Connection {
    /// Shared settings and the service.
    ctx: Arc<NativeContext>,
    /// Bytes read but not yet decoded.
    input: BytesMut,
    /// Encoded frames not yet written.
    output: BytesMut,
    /// Requests started and not yet answered.
    in_flight: FuturesUnordered<Reply>,
    /// The logged-in session, if any.
    session: Option<Session>,
    /// A login between its two SCRAM messages (boxed: most connections
    /// hold none most of the time).
    pending_auth: Option<Box<AuthPending>>,
    /// Bytes to reserve for the next read (see [`MAX_READ`]).
    read_size: usize,
    /// The client closed its side; buffered requests are still answered.
    input_closed: bool,
    /// Open or draining.
    phase: Phase,
    /// When an unauthenticated connection is closed.
    auth_deadline: Instant,
    /// Pushes paused (storage busy) until then.
    push_paused_until: Option<Instant>,
    /// No reading before this: a request was just refused with BUSY (see
    /// [`REFUSED_READ_PAUSE`]).
    read_paused_until: Option<Instant>,
    /// The last read filled the space reserved for it: more may be waiting
    /// in the socket.
    more_to_read: bool,
    /// When the oldest unacknowledged push on this session is pushed again,
    /// and the current wait for acks, which doubles with each re-push.
    ack_timer: AckTimer,
    /// When the client was last heard from.
    last_heard: Instant,
    /// When the keep-alive is next checked. Reads only move `last_heard`;
    /// the check re-arms itself from it, so the connection's one timer is
    /// not reset on every read (see [`Connection::next_deadline`]).
    keepalive_check: Instant,
    /// Whether the output was congested after the last loop turn (to count
    /// pauses once each).
    was_congested: bool,
    /// For logs.
    peer: SocketAddr,
    /// The request being handled, while it is, when the perf log is on
    /// (boxed: without a perf log it costs a connection one pointer).
    perf_op: Option<Box<PerfOp>>,
    /// Bytes read and written, for the access log.
    summary: ConnectionSummary,
    /// Its place among the connections not logged in, while it is not.
    unauthenticated: Option<Unauthenticated>,
    /// Its file transfers, once it has taken part in one (boxed: most
    /// connections never do).
    files: Option<Box<FileSide>>,
}

/// Serves one accepted connection until it closes; returns what it did.
pub async fn serve<R, W>(
    mut reader: R,
    mut writer: W,
    ctx: Arc<NativeContext>,
    mut shutdown: watch::Receiver<bool>,
    peer: SocketAddr,
) -> ConnectionSummary
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let now = Instant::now();
    let unauthenticated = Unauthenticated::take(&ctx, false);
    let auth_deadline = now + ctx.auth_timeout;
    let keepalive_check = now + ctx.keepalive;
    let ack_timer = AckTimer::new(ctx.ack_timeout, ctx.max_ack_backoff);
    let mut conn = Connection {
        ctx,
        input: BytesMut::new(),
        output: BytesMut::new(),
        in_flight: FuturesUnordered::new(),
        session: None,
        pending_auth: None,
        read_size: MIN_READ,
        input_closed: false,
        phase: Phase::Open,
        auth_deadline,
        push_paused_until: None,
        read_paused_until: None,
        more_to_read: false,
        ack_timer,
        last_heard: now,
        keepalive_check,
        was_congested: false,
        peer,
        perf_op: None,
        summary: ConnectionSummary::default(),
        unauthenticated,
        files: None,
    };
    let welcome = conn.ctx.welcome.clone();
    conn.encode(&welcome);
    if conn.unauthenticated.is_none() {
        conn.ctx
            .counters
            .unauthenticated_refused
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %conn.peer, "refused: too many connections not logged in");
        let mut refusal = error_frame(0, ErrorCode::Busy, "too many connections not logged in; retry later");
        if let Some(Body::Error(e)) = refusal.body.as_mut() {
            e.retry_after_ms = UNAUTHENTICATED_RETRY_MS;
        }
        conn.phase = Phase::Draining {
            last: Some(Box::new(refusal)),
        };
    } else if *shutdown.borrow() {
        conn.phase = Phase::Draining {
            last: Some(Box::new(goodbye(ErrorCode::ShuttingDown, "server is shutting down"))),
        };
    }
    // One timer per connection, aimed at the earliest of its deadlines and
    // moved only when that changes.
    let timer = tokio::time::sleep_until(keepalive_check);
    tokio::pin!(timer);
    loop {
        conn.decode_buffered().await;
        // Before the draining check: a push may end the session.
        conn.take_ready();
        if let Phase::Draining { last } = &mut conn.phase
            && conn.in_flight.is_empty()
        {
            if let Some(last) = last.take() {
                conn.encode(&last);
            }
            let flush = async {
                writer.write_all(&conn.output).await?;
                writer.shutdown().await
            };
            if let Ok(Ok(())) = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, flush).await {
                conn.summary.bytes_out += conn.output.len() as u64;
            }
            tracing::debug!(peer = %conn.peer, "connection closed");
            return conn.summary;
        }
        // Open, the shutdown branch is enabled; draining, `in_flight` is not
        // empty: some branch below can always fire.
        let open = matches!(conn.phase, Phase::Open);
        let congested = conn.output.len() >= conn.ctx.outbound_buffer_bytes;
        let can_read = open
            && !conn.input_closed
            && !congested
            && conn.read_paused_until.is_none()
            && (conn.in_flight.len() < conn.ctx.pipeline_window || conn.reads_past_window())
            && FileSide::may_read(&conn.files);
        if congested && !conn.was_congested {
            conn.ctx.counters.slow_consumer_pauses.fetch_add(1, Ordering::Relaxed);
        }
        conn.was_congested = congested;
        let can_push = conn.can_push();
        let deadline = conn.next_deadline();
        if let Some(deadline) = deadline
            && timer.deadline() != deadline
        {
            timer.as_mut().reset(deadline);
        }
        if can_read && conn.input.capacity() - conn.input.len() < conn.read_size {
            conn.input.reserve(conn.read_size);
        }
        let spare = conn.input.capacity() - conn.input.len();
        tokio::select! {
            read = reader.read_buf(&mut conn.input), if can_read => match read {
                Ok(0) => conn.input_closed = true,
                Ok(n) => {
                    conn.summary.bytes_in += n as u64;
                    conn.last_heard = Instant::now();
                    conn.more_to_read = n >= spare;
                    conn.read_size = if n >= spare {
                        (conn.read_size * 2).min(MAX_READ)
                    } else {
                        (conn.read_size / 2).max(MIN_READ)
                    };
                }
                Err(e) => {
                    tracing::debug!(peer = %conn.peer, error = %e, "read failed");
                    return conn.summary;
                }
            },
            Some(done) = conn.in_flight.next(), if !conn.in_flight.is_empty() => conn.encode(&done),
            event = next_push(&mut conn.session), if can_push => conn.on_push(event),
            event = FileSide::next_event(&mut conn.files), if !congested && conn.files.is_some() => {
                let frame = FileSide::event_frame(&conn.files, event);
                conn.encode(&frame);
            }
            written = writer.write_buf(&mut conn.output), if !conn.output.is_empty() => match written {
                Ok(0) | Err(_) => {
                    tracing::debug!(peer = %conn.peer, "write failed; closing");
                    return conn.summary;
                }
                Ok(n) => conn.summary.bytes_out += n as u64,
            },
            _ = shutdown.changed(), if open => {
                conn.phase = Phase::Draining { last: Some(Box::new(goodbye(ErrorCode::ShuttingDown, "server is shutting down"))) };
            }
            () = &mut timer, if deadline.is_some() => conn.on_timer(Instant::now()),
        }
        if conn.input.is_empty() && conn.input.capacity() > conn.read_size {
            conn.input = BytesMut::new();
        }
        if conn.output.is_empty() && conn.output.capacity() > IDLE_OUTPUT_CAPACITY {
            conn.output = BytesMut::new();
        }
    }
}

async fn next_push(session: &mut Option<Session>) -> Result<PushEvent, CoreError> {
    match session {
        Some(s) => s.next_push().await,
        None => std::future::pending().await,
    }
}

impl Connection {
    fn encode(&mut self, frame: &ServerFrame) {
        // While a request is handled, the first frame encoded is its answer.
        if let Some(op) = self.perf_op.take()
            && let Some(perf) = self.ctx.perf.get()
        {
            perf.record(op.op, op.started.elapsed(), outcome(frame));
        }
        if let Err(e) = encode_frame(frame, &mut self.output, self.ctx.max_frame_bytes) {
            // Replies are sized to fit (see `fit_messages`); this is a bug,
            // answered as an internal error rather than a broken stream.
            tracing::error!(peer = %self.peer, error = %e, "reply does not fit in a frame");
            let fallback = error_frame(frame.request_id, ErrorCode::Internal, "reply too large");
            let _ = encode_frame(&fallback, &mut self.output, self.ctx.max_frame_bytes);
        }
    }

    /// Encodes every reply that is already done and one batch of pushes
    /// that is already waiting, without blocking, so the write that follows
    /// carries all of them: under load one system call then writes many
    /// frames, instead of one frame per turn of the loop.
    fn take_ready(&mut self) {
        let mut budget = self.ctx.pipeline_window;
        while budget > 0
            && !self.in_flight.is_empty()
            && let Some(Some(done)) = self.in_flight.next().now_or_never()
        {
            self.encode(&done);
            budget -= 1;
        }
        if self.can_push()
            && let Some(event) = next_push(&mut self.session).now_or_never()
        {
            self.on_push(event);
        }
    }

    /// Whether a push may be taken now: open, output not congested, pushes
    /// not paused, and the session's unacked window not full.
    fn can_push(&self) -> bool {
        matches!(self.phase, Phase::Open)
            && self.output.len() < self.ctx.outbound_buffer_bytes
            && self.push_paused_until.is_none()
            && self.session.as_ref().is_some_and(Session::can_push)
    }

    /// The earliest moment something must happen without input: the login
    /// deadline, the end of a push pause, an ack timeout, the keep-alive
    /// check.
    fn next_deadline(&self) -> Option<Instant> {
        let open = matches!(self.phase, Phase::Open);
        let auth = (open && self.session.is_none()).then_some(self.auth_deadline);
        let ack = self.ack_timer.deadline().map(Instant::from_std).filter(|_| open);
        let keepalive = open.then_some(self.keepalive_check);
        [auth, ack, self.push_paused_until, self.read_paused_until, keepalive]
            .into_iter()
            .flatten()
            .min()
    }

    /// The timer fired: handle every deadline that is due.
    fn on_timer(&mut self, now: Instant) {
        if self.push_paused_until.is_some_and(|t| t <= now) {
            self.push_paused_until = None;
        }
        if self.read_paused_until.is_some_and(|t| t <= now) {
            self.read_paused_until = None;
        }
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        if self.session.is_none() && self.auth_deadline <= now {
            self.close_with(goodbye(ErrorCode::NotAuthenticated, "no login within the time allowed"));
            return;
        }
        self.on_ack_timeout(now);
        if self.keepalive_check <= now {
            let due = self.last_heard + self.ctx.keepalive;
            if due <= now {
                self.ctx.counters.keepalive_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %self.peer, "keep-alive timeout");
                self.session = None;
                self.close_with(goodbye(ErrorCode::Timeout, "nothing heard within the keep-alive time"));
            } else {
                self.keepalive_check = due;
            }
        }
    }

    /// If no ack came in time: push the unacknowledged messages again and
    /// wait twice as long next time. While output is still waiting to be
    /// written the client has not read what it was given, so pushing it
    /// again would only queue a second copy behind the first: the timer
    /// waits another round instead.
    fn on_ack_timeout(&mut self, now: Instant) {
        let session = &mut self.session;
        let fired = self.ack_timer.fire(now.into_std(), !self.output.is_empty(), || {
            session.as_mut().map_or(0, Session::redeliver)
        });
        if let AckFired::Redelivered(count) = fired
            && count > 0
        {
            tracing::debug!(peer = %self.peer, count, "re-pushing unacknowledged messages");
        }
    }

    /// Starts a request's future, under the server-wide backlog limit.
    fn start(&mut self, request_id: u64, started: Result<Reply, CoreError>) {
        match started {
            Ok(future) => {
                let ctx = Arc::clone(&self.ctx);
                let timed = self.perf_op.take();
                ctx.backlog.fetch_add(1, Ordering::Relaxed);
                self.in_flight.push(Box::pin(async move {
                    let frame = future.await;
                    ctx.backlog.fetch_sub(1, Ordering::Relaxed);
                    if let Some(op) = timed
                        && let Some(perf) = ctx.perf.get()
                    {
                        perf.record(op.op, op.started.elapsed(), outcome(&frame));
                    }
                    if let Some(Body::Error(e)) = &frame.body
                        && e.code == ErrorCode::Busy as i32
                    {
                        ctx.counters.busy_replies.fetch_add(1, Ordering::Relaxed);
                    }
                    frame
                }));
            }
            Err(e) => {
                if e.kind == ErrorKind::Busy {
                    self.ctx.counters.busy_replies.fetch_add(1, Ordering::Relaxed);
                    self.pause_reading();
                }
                self.encode(&core_error_frame(request_id, &e))
            }
        }
    }

    /// Whether the server-wide backlog is over its high-water mark.
    fn overloaded(&self) -> bool {
        self.ctx.backlog.load(Ordering::Relaxed) >= self.ctx.max_backlog
    }

    /// Starts timing a request, when the perf log is on.
    fn time(&mut self, body: Option<&client_frame::Body>) {
        if self.ctx.perf.get().is_some() {
            self.perf_op = Some(Box::new(PerfOp {
                op: body.map_or("unknown", op_name),
                started: Instant::now(),
            }));
        }
    }

    fn close_with(&mut self, last: ServerFrame) {
        self.phase = Phase::Draining {
            last: Some(Box::new(last)),
        };
    }

    /// Stops reading for [`REFUSED_READ_PAUSE`] after a request was
    /// refused with BUSY (unless a pause already runs), once the socket
    /// was read dry: what is already waiting there is refused now, not
    /// after the pause, when it would have waited for nothing.
    fn pause_reading(&mut self) {
        if self.more_to_read {
            return;
        }
        self.read_paused_until
            .get_or_insert_with(|| Instant::now() + REFUSED_READ_PAUSE);
    }

    /// The retry hint of a send refused now (see
    /// [`Connection::sends_refused`], which the caller asked first): the
    /// backlog's, or the store's, counted as one of its refusals.
    fn refusal_retry_ms(&self) -> u32 {
        if self.overloaded() {
            return BACKLOG_RETRY_MS;
        }
        match self.ctx.service.store().check_new_work() {
            Err(StoreError::Busy { retry_after_ms }) => retry_after_ms,
            _ => BACKLOG_RETRY_MS,
        }
    }

    /// Refuses the send at the front of the input with BUSY without
    /// decoding it, when sends are refused now: its request id is all the
    /// answer needs, so under a flood a refusal costs a fraction of an
    /// admission and takes no place in the pipeline window. Anything else
    /// (another request, a frame not yet whole, one that would not decode)
    /// is left to the decoder.
    fn refused_at_once(&mut self) -> bool {
        // Two loads first, so that an admitted send is not walked twice.
        if !self.sends_refused() {
            return false;
        }
        let Some(head) = peek_send(&self.input, self.ctx.max_frame_bytes) else {
            return false;
        };
        let retry_after_ms = self.refusal_retry_ms();
        self.input.advance(head.len);
        if let Some(perf) = self.ctx.perf.get() {
            perf.record("send", Duration::ZERO, ErrorCode::Busy.as_str_name());
        }
        self.ctx.counters.busy_replies.fetch_add(1, Ordering::Relaxed);
        self.pause_reading();
        BUSY_REPLY.with_borrow_mut(|reply| {
            reply.request_id = head.request_id;
            if let Some(Body::Error(e)) = &mut reply.body {
                e.retry_after_ms = retry_after_ms;
            }
            // A few dozen bytes: it always fits in a frame.
            let _ = encode_frame(reply, &mut self.output, self.ctx.max_frame_bytes);
        });
        true
    }

    /// Whether reading may go on while the pipeline window is full: sends
    /// are refused now and every whole frame buffered was taken, so what
    /// comes next is refused as it arrives instead of waiting in the
    /// socket behind admitted work. Once a send is admitted again, or a
    /// request other than a send waits at the front, the window holds
    /// reading back as before.
    fn reads_past_window(&self) -> bool {
        self.sends_refused() && whole_frame_len(&self.input, self.ctx.max_frame_bytes).is_none()
    }

    /// Whether sends are refused now: the backlog is over its high-water
    /// mark or the store takes no new work (not counted as a refusal). Only
    /// for a logged-in session: without one a send is answered "not logged
    /// in".
    fn sends_refused(&self) -> bool {
        self.session.is_some() && (self.overloaded() || !self.ctx.service.store().takes_new_work())
    }

    /// Decodes and starts every complete request already buffered, as far
    /// as the window and the output buffer allow; sends are refused past
    /// the window while the server refuses them (see
    /// [`Connection::refused_at_once`]).
    ///
    /// Once the client has closed its side, the connection drains when no
    /// complete request is left: requests it sent before closing are all
    /// answered, however many the window held back.
    async fn decode_buffered(&mut self) {
        while matches!(self.phase, Phase::Open) && self.output.len() < self.ctx.outbound_buffer_bytes {
            if self.refused_at_once() {
                continue;
            }
            if self.in_flight.len() >= self.ctx.pipeline_window {
                break;
            }
            match decode_frame::<ClientFrame>(&mut self.input, self.ctx.max_frame_bytes) {
                // Requests that wait for the store before answering run
                // boxed: they come once or twice per connection, and their
                // state inline would enlarge every connection's task.
                Ok(Some(ClientFrame {
                    request_id,
                    body: Some(body),
                })) if waits(&body) => {
                    self.time(Some(&body));
                    Box::pin(self.handle_waiting(request_id, body)).await;
                    self.perf_op = None;
                }
                Ok(Some(request)) => {
                    self.time(request.body.as_ref());
                    self.handle(request);
                    self.perf_op = None;
                }
                Ok(None) => {
                    if self.input_closed {
                        self.phase = Phase::Draining { last: None };
                    }
                    break;
                }
                Err(FrameError::TooLarge { len, max }) => {
                    tracing::info!(peer = %self.peer, len, max, "frame too large; closing");
                    self.close_with(error_frame(
                        0,
                        ErrorCode::FrameTooLarge,
                        format!("frame of {len} bytes exceeds the limit of {max}"),
                    ));
                }
                Err(FrameError::Malformed(detail)) => {
                    tracing::info!(peer = %self.peer, %detail, "malformed frame; closing");
                    self.close_with(error_frame(
                        0,
                        ErrorCode::BadFrame,
                        format!("malformed frame: {detail}"),
                    ));
                }
            }
        }
    }

    fn on_push(&mut self, event: Result<PushEvent, CoreError>) {
        match event {
            Ok(PushEvent::Messages(batch)) => {
                let messages: Vec<v1::Message> = batch.iter().map(|m| convert::message(m)).collect();
                let budget = self.ctx.max_frame_bytes - FRAME_ENVELOPE_BYTES;
                let mut chunk = Vec::new();
                let mut size = 0;
                for m in messages {
                    let cost = convert::message_frame_cost(&m);
                    if !chunk.is_empty() && size + cost > budget {
                        let full = std::mem::take(&mut chunk);
                        self.encode(&frame(0, Body::Push(v1::Push { messages: full })));
                        size = 0;
                    }
                    size += cost;
                    chunk.push(m);
                }
                if !chunk.is_empty() {
                    self.encode(&frame(0, Body::Push(v1::Push { messages: chunk })));
                }
                self.ack_timer.pushed(Instant::now().into_std());
            }
            Ok(PushEvent::Presence { name, online }) => {
                self.encode(&frame(
                    0,
                    Body::Presence(v1::Presence {
                        name: name.to_string(),
                        online,
                    }),
                ));
            }
            Ok(PushEvent::PresenceRequest { from }) => {
                self.encode(&frame(
                    0,
                    Body::PresenceRequest(v1::PresenceRequest { from: from.to_string() }),
                ));
            }
            Ok(PushEvent::PresenceApproved { name }) => {
                self.encode(&frame(
                    0,
                    Body::PresenceApproved(v1::PresenceApproved { name: name.to_string() }),
                ));
            }
            Ok(PushEvent::Closed(reason)) => {
                self.session = None;
                self.files = None;
                self.close_with(goodbye(convert::error_code(reason.kind), reason.message));
            }
            Err(e) if e.kind == ErrorKind::Busy => {
                let wait = Duration::from_millis(e.retry_after_ms.map(u64::from).unwrap_or(PUSH_RETRY_MS).max(1));
                self.push_paused_until = Some(Instant::now() + wait);
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "live delivery failed; closing");
                self.session = None;
                self.close_with(core_error_frame(0, &e));
            }
        }
    }

    /// Answers a request that needs no waiting here: it is answered at
    /// once or becomes an in-flight reply.
    fn handle(&mut self, request: ClientFrame) {
        use client_frame::Body as B;
        let id = request.request_id;
        let Some(body) = request.body else {
            self.close_with(error_frame(
                id,
                ErrorCode::UnknownType,
                "unknown or missing request type",
            ));
            return;
        };
        let service = Arc::clone(&self.ctx.service);
        match body {
            B::Ping(p) => self.encode(&frame(id, Body::Pong(v1::Pong { nonce: p.nonce }))),
            B::Register(r) => {
                if self.overloaded() {
                    return self.start(id, Err(busy()));
                }
                let credentials =
                    match StoredCredentials::from_parts(&r.mechanism, r.salt, r.iterations, r.stored_key, r.server_key)
                    {
                        Ok(credentials) => credentials,
                        Err(e) => return self.encode(&core_error_frame(id, &e)),
                    };
                let started = service
                    .register(&r.name, credentials, Some(self.peer.ip()), Some(&r.invite))
                    .map(|future| {
                        let service = Arc::clone(&service);
                        reply(id, future, move |(user, name)| {
                            service.note_registration();
                            Body::Registered(v1::Registered { name, user_id: user.0 })
                        })
                    });
                self.start(id, started);
            }
            other => self.handle_authenticated(id, other),
        }
    }

    /// Answers the requests that wait for the store before their answer
    /// changes the connection: the login steps and account deletion (see
    /// [`waits`]).
    async fn handle_waiting(&mut self, id: u64, body: client_frame::Body) {
        use client_frame::Body as B;
        let service = Arc::clone(&self.ctx.service);
        // What proves the password again needs a session, and is new work.
        if matches!(body, B::Reauth(_) | B::ChangePassword(_) | B::DeleteAccount(_)) {
            if self.session.is_none() {
                return self.encode(&core_error_frame(id, &not_logged_in()));
            }
            if self.overloaded() {
                return self.start(id, Err(busy()));
            }
        }
        match body {
            B::AuthStart(a) => {
                if self.session.is_some() {
                    let e = CoreError::new(ErrorKind::AlreadyAuthenticated, "already logged in; log out first");
                    return self.encode(&core_error_frame(id, &e));
                }
                if self.overloaded() {
                    return self.start(id, Err(busy()));
                }
                match service.auth_start(&a.client_first, Some(self.peer.ip())).await {
                    Err(e) => {
                        let name = access::name_tried(&a.client_first);
                        access::login_refused(TRANSPORT, self.peer, "scram", name.as_deref(), &e);
                        self.encode(&core_error_frame(id, &e));
                    }
                    Ok(mut pending) => {
                        pending.set_quiet(a.quiet);
                        let challenge = v1::AuthChallenge {
                            mechanism: pending.mechanism().name().to_owned(),
                            server_first: pending.server_first().as_bytes().to_vec(),
                        };
                        self.pending_auth = Some(Box::new(pending));
                        self.encode(&frame(id, Body::AuthChallenge(challenge)));
                    }
                }
            }
            B::AuthContinue(c) => {
                if self.session.is_some() {
                    let e = CoreError::new(ErrorKind::AlreadyAuthenticated, "already logged in; log out first");
                    return self.encode(&core_error_frame(id, &e));
                }
                let Some(pending) = self.pending_auth.take().map(|pending| *pending) else {
                    let e = CoreError::refused_by_state("no login in progress: send AuthStart first");
                    return self.encode(&core_error_frame(id, &e));
                };
                let result = service.auth_finish(&pending, &c.client_final).await;
                let mechanism = pending.mechanism().name();
                match &result {
                    Ok((_, outcome)) => access::login_ok(TRANSPORT, self.peer, mechanism, &outcome.name),
                    Err(e) => access::login_refused(TRANSPORT, self.peer, mechanism, Some(pending.name_key()), e),
                }
                // BUSY changed nothing: the same AuthContinue may come again.
                if matches!(&result, Err(e) if e.kind == ErrorKind::Busy) {
                    self.pending_auth = Some(Box::new(pending));
                }
                self.logged_in(id, result);
            }
            B::Resume(r) => {
                if self.session.is_some() {
                    let e = CoreError::new(ErrorKind::AlreadyAuthenticated, "already logged in; log out first");
                    return self.encode(&core_error_frame(id, &e));
                }
                if self.overloaded() {
                    return self.start(id, Err(busy()));
                }
                self.pending_auth = None;
                let result = service.resume_with(&r.token, Some(self.peer.ip()), r.quiet).await;
                match &result {
                    Ok((_, outcome)) => access::login_ok(TRANSPORT, self.peer, "resume", &outcome.name),
                    Err(e) => access::login_refused(TRANSPORT, self.peer, "resume", None, e),
                }
                self.logged_in(id, result);
            }
            B::Reauth(r) => {
                // Checked above: logged in and admitted.
                let Some(session) = self.session.as_ref() else { return };
                match session.reauth_start(&r.client_first, Some(self.peer.ip())).await {
                    Err(e) => self.encode(&core_error_frame(id, &e)),
                    Ok(pending) => {
                        let challenge = v1::AuthChallenge {
                            mechanism: pending.mechanism().name().to_owned(),
                            server_first: pending.server_first().as_bytes().to_vec(),
                        };
                        self.pending_auth = Some(Box::new(pending));
                        self.encode(&frame(id, Body::AuthChallenge(challenge)));
                    }
                }
            }
            B::ChangePassword(c) => {
                // Checked above: logged in and admitted.
                let Some(session) = self.session.as_mut() else { return };
                let Some(pending) = self.pending_auth.take() else {
                    return self.encode(&core_error_frame(id, &reauth_first()));
                };
                let credentials =
                    match StoredCredentials::from_parts(&c.mechanism, c.salt, c.iterations, c.stored_key, c.server_key)
                    {
                        Ok(credentials) => credentials,
                        Err(e) => return self.encode(&core_error_frame(id, &e)),
                    };
                match session.change_password(&pending, &c.client_final, credentials).await {
                    Ok((server_final, resume_token, resume_expires_ms)) => {
                        tracing::info!(peer = %self.peer, user = %session.name(), "password changed");
                        self.encode(&frame(
                            id,
                            Body::PasswordChanged(v1::PasswordChanged {
                                server_final: server_final.into_bytes(),
                                resume_token,
                                resume_expires_ms,
                            }),
                        ));
                    }
                    Err(e) => self.encode(&core_error_frame(id, &e)),
                }
            }
            B::DeleteAccount(d) => {
                // Checked above: logged in and admitted.
                let Some(session) = self.session.as_mut() else { return };
                let Some(pending) = self.pending_auth.take() else {
                    return self.encode(&core_error_frame(id, &reauth_first()));
                };
                let result = session.delete_account_confirmed(&pending, &d.client_final).await;
                match result {
                    Ok(()) => {
                        tracing::info!(peer = %self.peer, user = %session.name(), "account deleted");
                        self.session = None;
                        self.unauthenticated = Unauthenticated::take(&self.ctx, true);
                        self.ack_timer.disarm();
                        self.encode(&frame(id, Body::AccountDeleted(v1::AccountDeleted {})));
                    }
                    Err(e) => self.encode(&core_error_frame(id, &e)),
                }
            }
            // Only the requests `waits` names come here.
            _ => {}
        }
    }

    /// Answers a login or resume.
    fn logged_in(&mut self, id: u64, result: Result<(Session, LoginOutcome), CoreError>) {
        match result {
            Ok((session, outcome)) => {
                tracing::debug!(peer = %self.peer, user = %outcome.name, session = %outcome.session, "login");
                self.session = Some(session);
                self.unauthenticated = None;
                self.ack_timer.reset();
                self.encode(&frame(
                    id,
                    Body::AuthOk(v1::AuthOk {
                        server_final: outcome.server_final.into_bytes(),
                        name: outcome.name,
                        user_id: outcome.user.0,
                        session_id: outcome.session.0,
                        unread: outcome.mailbox.unread,
                        last_seq: outcome.mailbox.last_seq.0,
                        resume_token: outcome.resume_token,
                        resume_expires_ms: outcome.resume_expires_ms,
                    }),
                ));
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, code = e.kind.as_str(), "login failed");
                self.encode(&core_error_frame(id, &e))
            }
        }
    }

    fn handle_authenticated(&mut self, id: u64, body: client_frame::Body) {
        use client_frame::Body as B;
        let max_frame = self.ctx.max_frame_bytes;
        let overloaded = self.overloaded();
        let Some(session) = self.session.as_mut() else {
            return self.encode(&core_error_frame(id, &not_logged_in()));
        };
        // Acks and logouts always go through: they shrink the load.
        if overloaded && !matches!(body, B::Ack(_) | B::Logout(_) | B::LogoutAll(_)) {
            return self.start(id, Err(busy()));
        }
        if files::is_file_request(&body) {
            let started = FileSide::start(&mut self.files, &self.ctx.service, session, self.peer, id, body);
            return self.start(id, started);
        }
        let started: Result<Reply, CoreError> = match body {
            B::Send(s) => session
                .send(&s.to, &s.client_msg_id, s.body)
                .map(|f| reply(id, f, |a| convert::sent(&a))),
            B::Fetch(f) => session.fetch(Seq(f.after_seq), f.limit, f.include_acked).map(|fut| {
                reply(id, fut, move |(messages, more)| {
                    let (messages, trimmed) = fit_messages(messages.iter().map(convert::message), max_frame);
                    Body::Messages(v1::MessageBatch {
                        messages,
                        more: more || trimmed,
                    })
                })
            }),
            B::Ack(a) => {
                let range = AckRange {
                    up_to: Seq(a.up_to_seq),
                    seqs: a.seqs.into_iter().map(Seq).collect(),
                };
                let started = session.ack(range).map(|f| {
                    reply(id, f, |(acked, state)| {
                        Body::Acked(v1::Acked {
                            acked,
                            unread: state.unread,
                        })
                    })
                });
                let unacked = session.has_unacked();
                self.ack_timer.acked(Instant::now().into_std(), unacked);
                started
            }
            B::DeleteMessages(d) => session
                .delete_messages(d.message_ids.into_iter().map(MessageId).collect())
                .map(|f| {
                    reply(id, f, |outcome| {
                        Body::Deleted(v1::Deleted {
                            deleted: outcome.deleted.into_iter().map(|m| m.0).collect(),
                            not_found: outcome.not_found.into_iter().map(|m| m.0).collect(),
                        })
                    })
                }),
            B::ListAccounts(l) => session.list_accounts(&l.pattern, &l.after, l.limit).map(|f| {
                reply(id, f, |page| {
                    Body::Accounts(v1::AccountPage {
                        accounts: page
                            .accounts
                            .into_iter()
                            .map(|(name, online)| v1::AccountEntry {
                                name,
                                online,
                                subscription: v1::Subscription::None as i32,
                            })
                            .collect(),
                        next_after: page.next_after.unwrap_or_default(),
                    })
                })
            }),
            B::Subscribe(s) => Ok(reply(id, session.subscribe(Seq(s.after_seq)), |state| {
                Body::Subscribed(v1::Subscribed {
                    last_seq: state.last_seq.0,
                    unread: state.unread,
                })
            })),
            B::AddContact(c) => session.add_contact(&c.name).map(|added| {
                let list = session.contacts();
                reply(
                    id,
                    async move {
                        added.await.map(|_| ())?;
                        list.await
                    },
                    contact_list,
                )
            }),
            B::RemoveContact(c) => {
                let removed = session.remove_contact(&c.name);
                let list = session.contacts();
                Ok(reply(
                    id,
                    async move {
                        removed.await.map(|_| ())?;
                        list.await
                    },
                    contact_list,
                ))
            }
            B::ListContacts(_) => Ok(reply(id, session.contacts(), contact_list)),
            B::ApprovePresence(p) => session.approve_presence(&p.name).map(|approved| {
                let list = session.presence_requests();
                reply(id, then(approved, list), presence_requests)
            }),
            B::DenyPresence(p) => session.deny_presence(&p.name).map(|denied| {
                let list = session.presence_requests();
                reply(id, then(denied, list), presence_requests)
            }),
            B::CancelPresence(p) => session.cancel_presence(&p.name).map(|cancelled| {
                let list = session.contacts();
                reply(id, then(cancelled, list), contact_list)
            }),
            B::ListPresenceRequests(_) => Ok(reply(id, session.presence_requests(), presence_requests)),
            B::Block(b) => session.block(&b.name).map(|blocked| {
                let list = session.list_blocked();
                reply(id, then(blocked, list), block_list)
            }),
            B::Unblock(b) => {
                let unblocked = session.unblock(&b.name);
                let list = session.list_blocked();
                Ok(reply(id, then(unblocked, list), block_list))
            }
            B::ListBlocked(_) => Ok(reply(id, session.list_blocked(), block_list)),
            B::Pager(p) => Ok(reply(id, session.pager(p.accept), |accept| {
                Body::Pager(v1::PagerSetting { accept })
            })),
            B::ListHeld(l) => session.held(l.after_id, l.limit).map(|fut| {
                reply(id, fut, move |(held, more)| {
                    let (messages, trimmed) = fit_messages(held.iter().map(convert::held), max_frame);
                    Body::Held(v1::HeldBatch {
                        messages,
                        more: more || trimmed,
                    })
                })
            }),
            B::ReleaseHeld(r) => session.release(r.ids).map(|fut| {
                reply(id, fut, |released| {
                    Body::Released(v1::Released {
                        released: released
                            .into_iter()
                            .map(|(id, seq)| v1::ReleasedMessage { id, seq: seq.0 })
                            .collect(),
                    })
                })
            }),
            B::DropHeld(d) => session
                .drop_held(d.ids, d.spam)
                .map(|fut| reply(id, fut, |ids| Body::HeldDropped(v1::HeldDropped { ids }))),
            B::ReportSpam(r) => session.report_spam(r.seqs.into_iter().map(Seq).collect()).map(|fut| {
                reply(id, fut, |reported| {
                    Body::SpamReported(v1::SpamReported {
                        reported: reported
                            .into_iter()
                            .map(|(seq, id)| v1::ReportedMessage { seq: seq.0, id })
                            .collect(),
                    })
                })
            }),
            B::LogoutAll(_) => {
                let ended = session.logout_all();
                self.files = None;
                tracing::info!(peer = %self.peer, user = %session.name(), "logged out everywhere");
                self.session = None;
                self.unauthenticated = Unauthenticated::take(&self.ctx, true);
                self.pending_auth = None;
                self.ack_timer.disarm();
                self.auth_deadline = Instant::now() + self.ctx.auth_timeout;
                Ok(reply(id, ended, |_| Body::LoggedOut(v1::LoggedOut {})))
            }
            B::Logout(_) => {
                let revoked = session.logout();
                self.files = None;
                self.session = None;
                self.unauthenticated = Unauthenticated::take(&self.ctx, true);
                self.pending_auth = None;
                self.ack_timer.disarm();
                self.auth_deadline = Instant::now() + self.ctx.auth_timeout;
                Ok(reply(id, revoked, |()| Body::LoggedOut(v1::LoggedOut {})))
            }
            // Answered by `handle` or `handle_waiting`.
            B::Ping(_)
            | B::Register(_)
            | B::AuthStart(_)
            | B::AuthContinue(_)
            | B::Resume(_)
            | B::DeleteAccount(_)
            | B::Reauth(_)
            | B::ChangePassword(_) => {
                return;
            }
            // Answered above, by `FileSide::start`.
            B::OfferFile(_)
            | B::ServeFile(_)
            | B::AcceptFile(_)
            | B::RefuseFile(_)
            | B::RelayChunk(_)
            | B::TransferDone(_) => return,
        };
        self.start(id, started);
    }
}

/// The `transport` field of this front door's access events. WebSockets
/// are served here too; their connection lines (written by the server)
/// say `ws`.
const TRANSPORT: &str = "native";

/// A request's operation name in the perf log.
fn op_name(body: &client_frame::Body) -> &'static str {
    use client_frame::Body as B;
    match body {
        B::Ping(_) => "ping",
        B::Register(_) => "register",
        B::AuthStart(_) => "login_start",
        B::AuthContinue(_) => "login_finish",
        B::Resume(_) => "resume",
        B::Send(_) => "send",
        B::Fetch(_) => "fetch",
        B::Ack(_) => "ack",
        B::DeleteMessages(_) => "delete_messages",
        B::ListAccounts(_) => "list_accounts",
        B::Subscribe(_) => "subscribe",
        B::AddContact(_) => "add_contact",
        B::RemoveContact(_) => "remove_contact",
        B::ListContacts(_) => "list_contacts",
        B::ApprovePresence(_) => "approve_presence",
        B::DenyPresence(_) => "deny_presence",
        B::CancelPresence(_) => "cancel_presence",
        B::ListPresenceRequests(_) => "list_presence_requests",
        B::Block(_) => "block",
        B::Unblock(_) => "unblock",
        B::ListBlocked(_) => "list_blocked",
        B::Pager(_) => "pager",
        B::Logout(_) => "logout",
        B::LogoutAll(_) => "logout_all",
        B::DeleteAccount(_) => "delete_account",
        B::Reauth(_) => "reauth",
        B::ChangePassword(_) => "change_password",
        B::OfferFile(_) => "offer_file",
        B::ServeFile(_) => "serve_file",
        B::AcceptFile(_) => "accept_file",
        B::RefuseFile(_) => "refuse_file",
        B::RelayChunk(_) => "relay_chunk",
        B::TransferDone(_) => "transfer_done",
        B::ListHeld(_) => "list_held",
        B::ReleaseHeld(_) => "release_held",
        B::DropHeld(_) => "drop_held",
        B::ReportSpam(_) => "report_spam",
    }
}

/// `ok`, or the error code a reply carries.
fn outcome(frame: &ServerFrame) -> &'static str {
    match &frame.body {
        Some(Body::Error(e)) => ErrorCode::try_from(e.code).map_or("ERROR", |code| code.as_str_name()),
        _ => crate::perf::OK,
    }
}

/// Whether a request is answered by [`Connection::handle_waiting`].
fn waits(body: &client_frame::Body) -> bool {
    use client_frame::Body as B;
    matches!(
        body,
        B::AuthStart(_) | B::AuthContinue(_) | B::Resume(_) | B::DeleteAccount(_) | B::Reauth(_) | B::ChangePassword(_)
    )
}

/// The answer to a DeleteAccount or ChangePassword without a Reauth before it.
fn reauth_first() -> CoreError {
    CoreError::refused_by_state("prove the password first: send Reauth, then this request with its client_final")
}

/// The answer to a request that needs a login, on a connection without one.
fn not_logged_in() -> CoreError {
    CoreError::new(ErrorKind::NotAuthenticated, "log in first")
}

fn busy() -> CoreError {
    CoreError::new(ErrorKind::Busy, "server busy, retry later").with_retry_after(BACKLOG_RETRY_MS)
}

fn contact_list(contacts: Vec<ContactView>) -> Body {
    Body::Contacts(v1::ContactList {
        contacts: contacts
            .into_iter()
            .map(|c| v1::AccountEntry {
                name: c.name,
                online: c.online,
                subscription: convert::subscription(c.subscription) as i32,
            })
            .collect(),
    })
}

fn presence_requests(names: Vec<String>) -> Body {
    Body::PresenceRequests(v1::PresenceRequests { names })
}

fn block_list(names: Vec<String>) -> Body {
    Body::Blocked(v1::BlockList { names })
}

/// Runs `first`, then, if it succeeded, answers with what `list` read (a
/// list submitted after `first`, so it shows its effect).
async fn then<A, T>(
    first: impl Future<Output = Result<A, CoreError>>,
    list: impl Future<Output = Result<T, CoreError>>,
) -> Result<T, CoreError> {
    first.await?;
    list.await
}

/// Keeps as many messages as fit in one frame; says whether any were cut.
fn fit_messages<M: prost::Message>(messages: impl Iterator<Item = M>, max_frame_bytes: usize) -> (Vec<M>, bool) {
    let budget = max_frame_bytes - FRAME_ENVELOPE_BYTES;
    let mut kept = Vec::new();
    let mut size = 0;
    for m in messages {
        let cost = convert::message_frame_cost(&m);
        if size + cost > budget {
            return (kept, true);
        }
        size += cost;
        kept.push(m);
    }
    (kept, false)
}
