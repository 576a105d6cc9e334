//! The HTTP listener: the accept loop and one task per connection, with
//! the limits that keep one client from holding what others need.
//!
//! - At most `max_connections` connections are open at once: past it,
//!   accepting pauses until one closes, so new connections wait in the
//!   kernel's backlog instead of costing memory and file descriptors here.
//! - At most `max_connections_per_ip` from one address (by
//!   `parley_core::addr::address_group`); one more is answered with a bare
//!   `503` and `Retry-After` before any HTTP is parsed, and closed. Trusted
//!   proxies are exempt: they carry many clients.
//! - A request's headers must arrive within `header_timeout` of its first
//!   byte (for the first request, of the accept or the end of the TLS
//!   handshake); a connection idle between
//!   requests is closed after `keepalive`. Both are enforced here, outside
//!   hyper, which only knows a header timeout that also runs while idle.
//!   The body's deadline is the admission middleware's (`lib.rs`), which
//!   reads it before a request takes an in-flight slot.
//!
//! The listener is TCP or a unix-domain socket ([`HttpListener`]). A peer
//! on the unix socket is a process of this machine allowed by the socket
//! file's mode (a reverse proxy such as nginx): it is trusted as a proxy
//! ([`Peer::proxy`]), so its forwarding headers name the client and it is
//! exempt from the per-address cap; without those headers the client is
//! `127.0.0.1`.
//!
//! An upgraded WebSocket keeps its connection's slots: they live in the
//! stream that the upgrade hands over. With TLS, the handshake runs in the
//! connection's own task under its deadline, so a slow or hostile client
//! never holds up accepting others; a handshake that fails or times out
//! ends that connection only (counted in
//! `HttpCounters::tls_handshakes_failed`, logged at debug).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::HttpContext;
use parley_core::sync::lock;

/// Pause after a failed accept (for example, out of file descriptors).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// What a connection past the per-address cap is told before it is closed.
/// It is written without parsing the request (none may have arrived).
const PER_ADDRESS_REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Retry-After: 1\r\n\
Content-Type: text/plain\r\n\
Content-Length: 40\r\n\
Connection: close\r\n\
\r\n\
too many connections from this address\r\n";

/// TLS on the HTTP listener: the acceptor (certificate, key and ALPN, made
/// by the server crate; this crate reads no files) and how long a client
/// may take to finish its handshake.
#[derive(Clone)]
pub struct HttpTls {
    /// The server configuration, ready to use.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Deadline for the handshake, from the accept.
    pub handshake_timeout: Duration,
}

/// What the HTTP front door listens on.
pub enum HttpListener {
    Tcp(TcpListener),
    /// A unix-domain socket (its file's mode decides who may connect).
    Unix(UnixListener),
}

impl From<TcpListener> for HttpListener {
    fn from(listener: TcpListener) -> HttpListener {
        HttpListener::Tcp(listener)
    }
}

impl From<UnixListener> for HttpListener {
    fn from(listener: UnixListener) -> HttpListener {
        HttpListener::Unix(listener)
    }
}

/// The address a peer on the unix socket is known by when its proxy names
/// no client.
pub const UNIX_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

impl HttpListener {
    /// The next connection and its peer; a TCP peer is a proxy when it is
    /// in `proxies`, a unix one always.
    async fn accept(&self, proxies: &crate::TrustedProxies) -> io::Result<(Io, Peer)> {
        match self {
            HttpListener::Tcp(listener) => {
                let (stream, addr) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let proxy = proxies.contains(addr.ip());
                Ok((Io::Plain(stream), Peer { addr, proxy }))
            }
            HttpListener::Unix(listener) => {
                let (stream, _) = listener.accept().await?;
                let peer = Peer {
                    addr: UNIX_PEER,
                    proxy: true,
                };
                Ok((Io::Unix(stream), peer))
            }
        }
    }
}

/// The client's peer, as handlers see it (`ConnectInfo<Peer>`). Rules
/// that count clients use [`crate::client_addr::ClientAddr`] instead,
/// which sees through trusted proxies.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// The TCP peer's address ([`UNIX_PEER`] on the unix socket).
    pub addr: SocketAddr,
    /// A trusted proxy: in `trusted_proxies`, or on the unix socket.
    pub proxy: bool,
}

impl Peer {
    /// The client this connection speaks for: the peer itself, or, behind
    /// a trusted proxy, whom its forwarding headers name.
    pub fn client(&self, headers: &axum::http::HeaderMap, trusted: &crate::TrustedProxies) -> crate::ClientAddr {
        if self.proxy {
            crate::ClientAddr::behind_proxy(self.addr, headers, trusted)
        } else {
            crate::ClientAddr(self.addr)
        }
    }
}

/// Accepts connections on `listener` and serves `app` on each until
/// `shutdown` resolves; then stops accepting, asks every connection to
/// close once its request in progress is answered, and waits for them.
pub(crate) async fn run(
    listener: HttpListener,
    ctx: Arc<HttpContext>,
    app: Router,
    tls: Option<HttpTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(ctx.settings.max_connections.max(1)));
    let per_address = Arc::new(PerAddress::default());
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                // Never closed; if it were, nothing more could be admitted.
                Err(_) => break,
            },
        };
        let (io, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept(&ctx.settings.trusted_proxies) => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let address_slot = if peer.proxy {
            None
        } else {
            match PerAddress::take(&per_address, peer.addr.ip(), ctx.settings.max_connections_per_ip) {
                Some(slot) => Some(slot),
                None => {
                    ctx.counters.refused_per_address.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = %peer.addr, "HTTP connection refused: too many from this address");
                    // Over TLS a plaintext answer would be noise: just close.
                    if let (None, Io::Plain(stream)) = (&tls, &io) {
                        // The socket is new, its send buffer empty: the
                        // answer fits, and a full buffer only loses it.
                        let _ = stream.try_write(PER_ADDRESS_REFUSAL);
                    }
                    drop(io);
                    continue;
                }
            }
        };
        let slots = Slots {
            _connection: permit,
            _address: address_slot,
        };
        connections.spawn(serve_connection(
            io,
            peer,
            slots,
            app.clone(),
            tls.clone(),
            Arc::clone(&ctx),
            stop.clone(),
        ));
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// One connection: the TLS handshake if any, then HTTP/1.1 until the
/// client leaves, a timeout passes, or the server shuts down.
async fn serve_connection(
    io: Io,
    peer: Peer,
    slots: Slots,
    app: Router,
    tls: Option<HttpTls>,
    ctx: Arc<HttpContext>,
    stop: CancellationToken,
) {
    let addr = peer.addr;
    let io = match (tls, io) {
        (Some(tls), Io::Plain(stream)) => {
            let handshake = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream));
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                outcome = handshake => outcome,
            };
            match outcome {
                Ok(Ok(stream)) => Io::Tls(Box::new(stream)),
                Ok(Err(e)) => {
                    tracing::debug!(peer = %addr, error = %e, "HTTP TLS handshake failed");
                    ctx.counters.tls_handshakes_failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %addr, "HTTP TLS handshake timed out");
                    ctx.counters.tls_handshakes_failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        // Plaintext; TLS is for TCP, and the unix socket's peer is the local proxy.
        (_, io) => io,
    };
    let activity = Arc::new(Activity::new());
    let stream = CountedStream {
        io,
        activity: Arc::clone(&activity),
        _slots: slots,
    };
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let busy = Activity::request_started(&activity);
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(Body::new)).await;
                drop(busy);
                response
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        // Our own deadlines below: hyper's header timer also runs while a
        // kept-alive connection is idle, which would cut keep-alive short.
        .header_read_timeout(None::<Duration>)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let (header_timeout, keepalive) = (ctx.settings.header_timeout, ctx.settings.keepalive);
    // Set once the connection was asked to close after its request in
    // progress (shutdown or keep-alive expiry).
    let mut closing = false;
    loop {
        let deadline = activity.deadline(header_timeout, keepalive, closing);
        let sleep = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %addr, error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = stop.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = activity.changed.notified() => {}
            _ = sleep => match deadline {
                Some((_, Expiry::Headers)) => {
                    ctx.counters.header_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = %addr, "HTTP request headers did not arrive in time; closing");
                    return;
                }
                Some((_, Expiry::Idle)) => {
                    tracing::debug!(peer = %addr, "HTTP connection idle past keep-alive; closing");
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                None => {}
            },
        }
    }
}

/// The slots a connection holds, released when its stream is dropped (for
/// a WebSocket, when the socket closes).
struct Slots {
    /// Under `max_connections`.
    _connection: OwnedSemaphorePermit,
    /// Under `max_connections_per_ip`; None for a trusted proxy.
    _address: Option<AddressSlot>,
}

/// Open connections by address group.
#[derive(Default)]
struct PerAddress {
    /// Count by `address_group`; an entry goes when its count reaches zero,
    /// so the map never holds more than `max_connections` entries.
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// A slot for `ip`, or None if its group already holds `cap`.
    fn take(this: &Arc<PerAddress>, ip: IpAddr, cap: usize) -> Option<AddressSlot> {
        let group = parley_core::addr::address_group(ip);
        let mut counts = lock(&this.counts);
        let count = counts.entry(group).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            table: Arc::clone(this),
            group,
        })
    }
}

/// One connection counted under its address group.
struct AddressSlot {
    /// Where it is counted.
    table: Arc<PerAddress>,
    /// Under which key.
    group: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.table.counts);
        if let Some(count) = counts.get_mut(&self.group) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.group);
            }
        }
    }
}

/// Which deadline a connection is under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    /// A request's headers are arriving (or the first is awaited).
    Headers,
    /// Between requests.
    Idle,
}

/// Where a connection is between requests, shared by its stream (which
/// sees bytes arrive), its service (which sees requests start and end) and
/// its task (which enforces the deadlines).
struct Activity {
    /// The phase; locked only to read or change it, never across an await.
    phase: Mutex<Phase>,
    /// Woken when the phase changes in a way that moves the deadline.
    changed: Notify,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Headers expected since this instant (the accept, or the first byte
    /// after an idle spell).
    Headers(Instant),
    /// Requests being served; no deadline here (the body has its own).
    Busy(usize),
    /// No request since this instant.
    Idle(Instant),
}

impl Activity {
    fn new() -> Activity {
        Activity {
            phase: Mutex::new(Phase::Headers(Instant::now())),
            changed: Notify::new(),
        }
    }

    fn set(&self, change: impl FnOnce(Phase) -> Phase) {
        let mut phase = lock(&self.phase);
        *phase = change(*phase);
        drop(phase);
        self.changed.notify_one();
    }

    /// Bytes arrived: an idle connection starts a request.
    fn bytes_read(&self) {
        let idle = matches!(*lock(&self.phase), Phase::Idle(_));
        if idle {
            self.set(|phase| match phase {
                Phase::Idle(_) => Phase::Headers(Instant::now()),
                other => other,
            });
        }
    }

    /// A request's headers were parsed; the guard marks its end.
    fn request_started(this: &Arc<Activity>) -> RequestInProgress {
        this.set(|phase| match phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        });
        RequestInProgress(Arc::clone(this))
    }

    /// The deadline now in force, if any.
    fn deadline(&self, header_timeout: Duration, keepalive: Duration, closing: bool) -> Option<(Instant, Expiry)> {
        match *lock(&self.phase) {
            Phase::Headers(since) => Some((since + header_timeout, Expiry::Headers)),
            Phase::Busy(_) => None,
            // Already asked to close: hyper closes an idle connection itself.
            Phase::Idle(_) if closing => None,
            Phase::Idle(since) => Some((since + keepalive, Expiry::Idle)),
        }
    }
}

/// A request being served; dropping it ends the request.
struct RequestInProgress(Arc<Activity>);

impl Drop for RequestInProgress {
    fn drop(&mut self) {
        self.0.set(|phase| match phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        });
    }
}

/// A connection's transport.
enum Io {
    /// Plaintext.
    Plain(TcpStream),
    /// Plaintext on the unix socket.
    Unix(UnixStream),
    /// TLS, established (boxed: it holds the whole TLS state, and
    /// plaintext connections should not pay for it).
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection, which tells its [`Activity`] when bytes arrive
/// and holds its slots until it is dropped.
struct CountedStream {
    /// The transport.
    io: Io,
    /// Told when bytes arrive.
    activity: Arc<Activity>,
    /// Released with the stream.
    _slots: Slots,
}

impl AsyncRead for CountedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Unix(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Unix(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}
