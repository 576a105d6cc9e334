//! The HTTP listener with a cap on open connections: past
//! `max_connections`, it stops accepting until one closes, so new
//! connections wait in the kernel's backlog instead of costing memory and
//! file descriptors here. An upgraded WebSocket keeps its slot.
//!
//! With TLS, an accepted connection is returned at once and its handshake
//! runs when the connection's task first reads or writes, so a slow or
//! hostile client never holds up accepting others. A handshake that fails
//! or outlasts its timeout ends that connection only (counted in
//! `HttpCounters::tls_handshakes_failed`, logged at debug).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::HttpContext;

/// Pause after a failed accept (for example, out of file descriptors).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

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

/// A TCP listener that holds one permit per open connection.
pub struct LimitedListener {
    /// The bound socket.
    inner: TcpListener,
    /// One permit per connection that may be open.
    permits: Arc<Semaphore>,
    /// Some when connections speak TLS.
    tls: Option<HttpTls>,
    /// For counting failed handshakes.
    ctx: Option<Arc<HttpContext>>,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, max_connections: usize) -> LimitedListener {
        LimitedListener {
            inner,
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
            tls: None,
            ctx: None,
        }
    }

    /// Wraps every accepted connection in TLS; failed handshakes are counted
    /// in `ctx`'s counters.
    pub fn with_tls(mut self, tls: HttpTls, ctx: Arc<HttpContext>) -> LimitedListener {
        self.tls = Some(tls);
        self.ctx = Some(ctx);
        self
    }
}

/// An accepted connection and its permit, released when it closes.
pub struct LimitedStream {
    /// The connection, in whichever state its TLS is.
    io: Io,
    /// Its slot under the cap.
    _permit: OwnedSemaphorePermit,
}

/// A connection's transport.
enum Io {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS, handshake in progress.
    Handshaking {
        /// The server side of the handshake (boxed: it holds the whole
        /// TLS state, and plaintext connections should not pay for it).
        accept: Box<tokio_rustls::Accept<TcpStream>>,
        /// When the client runs out of time.
        deadline: Pin<Box<Sleep>>,
        /// Who, for the log.
        peer: SocketAddr,
        /// Where failures are counted.
        ctx: Option<Arc<HttpContext>>,
    },
    /// TLS, established.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// The handshake failed; every operation fails.
    Failed,
}

impl LimitedStream {
    /// Drives the handshake, if one is in progress; Ready(Ok) once the
    /// stream can carry data.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Io::Handshaking {
            accept,
            deadline,
            peer,
            ctx,
        } = &mut self.io
        else {
            return match self.io {
                Io::Failed => Poll::Ready(Err(io::Error::new(io::ErrorKind::NotConnected, "TLS handshake failed"))),
                _ => Poll::Ready(Ok(())),
            };
        };
        let failure = match Pin::new(accept.as_mut()).poll(cx) {
            Poll::Ready(Ok(tls)) => {
                self.io = Io::Tls(Box::new(tls));
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => {
                tracing::debug!(peer = %peer, error = %e, "HTTP TLS handshake failed");
                e
            }
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    tracing::debug!(peer = %peer, "HTTP TLS handshake timed out");
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                }
            },
        };
        if let Some(ctx) = ctx {
            ctx.counters.tls_handshakes_failed.fetch_add(1, Ordering::Relaxed);
        }
        self.io = Io::Failed;
        Poll::Ready(Err(failure))
    }
}

/// Runs `$op` on the established stream, after the handshake.
macro_rules! ready_then {
    ($self:ident, $cx:ident, |$s:ident| $op:expr) => {{
        let this = $self.get_mut();
        match this.poll_ready($cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        match &mut this.io {
            Io::Plain($s) => $op,
            Io::Tls(tls) => {
                let $s = tls.as_mut();
                $op
            }
            Io::Handshaking { .. } | Io::Failed => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::NotConnected, "TLS handshake failed")))
            }
        }
    }};
}

impl Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (LimitedStream, SocketAddr) {
        loop {
            let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
                // The semaphore is never closed; wait for shutdown.
                std::future::pending::<()>().await;
                continue;
            };
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let io = match &self.tls {
                        None => Io::Plain(stream),
                        Some(tls) => Io::Handshaking {
                            accept: Box::new(tls.acceptor.accept(stream)),
                            deadline: Box::pin(tokio::time::sleep(tls.handshake_timeout)),
                            peer,
                            ctx: self.ctx.clone(),
                        },
                    };
                    return (LimitedStream { io, _permit: permit }, peer);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        ready_then!(self, cx, |s| Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready_then!(self, cx, |s| Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready_then!(self, cx, |s| Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready_then!(self, cx, |s| Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready_then!(self, cx, |s| Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        // hyper asks once, before any handshake; both TCP and TLS streams
        // take vectored writes.
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
            Io::Handshaking { .. } | Io::Failed => true,
        }
    }
}

/// The client's address, as handlers see it (`ConnectInfo<Peer>`).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, LimitedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, LimitedListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}
