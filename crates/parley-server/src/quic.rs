//! The QUIC front door: the native protocol over QUIC (UDP), for clients
//! whose address changes under them (a phone between networks, a NAT that
//! rebinds) and paths that lose packets.
//!
//! Each QUIC connection carries one bidirectional stream, which the server
//! opens and writes the Welcome on at once; from there the bytes are those
//! of the native protocol over TCP, served by the same [`crate::native`]
//! code: the same frames, delivery contract, limits, admission control and
//! BUSY. Clients may open no streams of their own.
//!
//! What QUIC adds is below the stream: TLS 1.3 always (the listener needs
//! `tls_cert` and `tls_key`), loss recovery per packet, and connection ids
//! that outlive the client's address, so a client whose UDP port or address
//! changes keeps its session.
//!
//! Before any cryptography is done for a new client, [`Admission`] decides:
//! past `max_unauthenticated` handshakes in progress it is refused, and
//! past `quic_retry_above` a client that has not proved its address gets
//! a Retry first (one round trip that a spoofed source cannot answer).
//! A client that completes the handshake then passes the same connection
//! caps as a TCP client (the server's gate).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Settings;
use crate::server::ConnectionGate;

/// Handshakes in progress above which an unvalidated client gets a Retry.
pub const DEFAULT_RETRY_ABOVE: usize = 64;
/// QUIC connection attempts the endpoint holds before the application has
/// looked at them; more are refused by quinn itself.
const MAX_INCOMING: usize = 4_096;
/// Bytes buffered for one connection attempt before it is looked at.
const INCOMING_BUFFER_BYTES: u64 = 64 * 1024;
/// Bytes buffered for every connection attempt together.
const INCOMING_BUFFER_TOTAL_BYTES: u64 = 16 * 1024 * 1024;
/// Receive and send buffer asked of the kernel for the QUIC socket: every
/// connection's datagrams queue in this one socket, and a storm of
/// handshakes overflows the usual 208 KiB default (the kernel caps it at
/// `net.core.rmem_max` / `wmem_max`).
const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Application close code: the native protocol ended the connection.
pub const CLOSE_DONE: u32 = 0;
/// Application close code: the server is stopping or reloading.
pub const CLOSE_SHUTTING_DOWN: u32 = 1;
/// Application close code: the client opened a stream of its own, or the
/// server could not open its stream.
pub const CLOSE_PROTOCOL: u32 = 2;
/// How long a finished connection waits for the client to acknowledge the
/// last bytes before it is closed from this side.
const LINGER: Duration = Duration::from_secs(2);

/// Counters of the QUIC listener.
#[derive(Debug, Default)]
pub struct QuicCounters {
    /// Connection attempts seen (Initial packets of new connections).
    pub attempts: AtomicU64,
    /// Attempts answered with a Retry (address validation).
    pub retries: AtomicU64,
    /// Attempts refused before the handshake (too many in progress).
    pub refused: AtomicU64,
    /// Handshakes that failed or timed out.
    pub handshakes_failed: AtomicU64,
    /// Handshakes in progress now.
    pub handshaking: AtomicUsize,
}

/// What to do with a new connection attempt, before any cryptography.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Start the handshake.
    Accept,
    /// Ask the client to prove its address first.
    Retry,
    /// Too much in progress: refuse at once.
    Refuse,
}

/// The admission rule, apart from quinn so that it can be tested alone.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// Handshakes in progress at or above which an unvalidated client gets
    /// a Retry (0: every unvalidated client).
    pub retry_above: usize,
    /// Handshakes in progress at or above which attempts are refused.
    pub max_handshaking: usize,
}

impl Admission {
    /// The verdict for an attempt when `handshaking` handshakes are in
    /// progress; `validated` says the client already proved its address
    /// (it answered a Retry), `may_retry` that quinn can still send one.
    pub fn verdict(&self, handshaking: usize, validated: bool, may_retry: bool) -> Verdict {
        if handshaking >= self.max_handshaking {
            Verdict::Refuse
        } else if !validated && handshaking >= self.retry_above && may_retry {
            Verdict::Retry
        } else {
            Verdict::Accept
        }
    }
}

/// Builds the QUIC endpoint on a bound UDP socket (the master binds it and
/// hands it over, like the TCP listeners).
pub fn endpoint(socket: std::net::UdpSocket, settings: &Settings) -> anyhow::Result<quinn::Endpoint> {
    let identity = settings
        .tls
        .as_ref()
        .context("the QUIC listener needs tls_cert and tls_key")?;
    let mut transport = quinn::TransportConfig::default();
    // The server opens the one stream; the client may open none.
    transport.max_concurrent_bidi_streams(0u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    // The native protocol's own keep-alive decides when a silent client is
    // gone; QUIC's idle timeout only backs it up.
    let idle = (settings.keepalive * 2).max(Duration::from_secs(30));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle).context("the QUIC idle timeout (twice keepalive_secs)")?,
    ));
    let mut config = quinn::ServerConfig::with_crypto(identity.quic_crypto());
    config
        .transport_config(Arc::new(transport))
        .migration(true)
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER_BYTES)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL_BYTES);
    socket.set_nonblocking(true).context("the QUIC socket")?;
    grow_buffers(&socket);
    let runtime = Arc::new(quinn::TokioRuntime);
    quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(config), socket, runtime)
        .context("starting the QUIC endpoint")
}

/// Asks for [`SOCKET_BUFFER_BYTES`] each way; what the kernel grants (at
/// most its `rmem_max` and `wmem_max`) is logged, and a refusal only means
/// the default buffers stay.
fn grow_buffers(socket: &std::net::UdpSocket) {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    let asked = SOCKET_BUFFER_BYTES;
    if let Err(e) = setsockopt(socket, sockopt::RcvBuf, &asked) {
        tracing::debug!(error = %e, "the QUIC socket's receive buffer stays at the default");
    }
    if let Err(e) = setsockopt(socket, sockopt::SndBuf, &asked) {
        tracing::debug!(error = %e, "the QUIC socket's send buffer stays at the default");
    }
    let receive = getsockopt(socket, sockopt::RcvBuf).unwrap_or(0);
    let send = getsockopt(socket, sockopt::SndBuf).unwrap_or(0);
    tracing::debug!(
        receive,
        send,
        asked,
        "QUIC socket buffers (the kernel counts double what it grants)"
    );
}

/// Accepts QUIC connections until `shutdown`, then waits for the
/// connections it started (each ends on the same signal, as TCP ones do).
pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    gate: ConnectionGate,
    admission: Admission,
    counters: Arc<QuicCounters>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    let for_connections = shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                counters.attempts.fetch_add(1, Ordering::Relaxed);
                let handshaking = counters.handshaking.load(Ordering::Relaxed);
                match admission.verdict(handshaking, incoming.remote_address_validated(), incoming.may_retry()) {
                    Verdict::Refuse => {
                        counters.refused.fetch_add(1, Ordering::Relaxed);
                        incoming.refuse();
                    }
                    Verdict::Retry => {
                        counters.retries.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = incoming.retry() {
                            e.into_incoming().refuse();
                        }
                    }
                    Verdict::Accept => {
                        // Counted here, not in the task: a burst of attempts
                        // taken before any task runs must see each other.
                        let handshaking = Handshaking::start(&counters);
                        let gate = gate.clone();
                        let counters = Arc::clone(&counters);
                        let shutdown = for_connections.clone();
                        tasks.spawn(connection(incoming, handshaking, gate, counters, shutdown));
                    }
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // No new connections from here on; the ones open get the native
    // protocol's goodbye from their own shutdown branch.
    endpoint.set_server_config(None);
    while tasks.join_next().await.is_some() {}
    endpoint.close(CLOSE_SHUTTING_DOWN.into(), b"server is shutting down");
    let _ = tokio::time::timeout(LINGER, endpoint.wait_idle()).await;
}

/// Counts a handshake as in progress while it lives.
struct Handshaking(Arc<QuicCounters>);

impl Handshaking {
    fn start(counters: &Arc<QuicCounters>) -> Handshaking {
        counters.handshaking.fetch_add(1, Ordering::Relaxed);
        Handshaking(Arc::clone(counters))
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.handshaking.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection: the handshake (bounded in time), the server's stream,
/// the native protocol over it, and the close.
async fn connection(
    incoming: quinn::Incoming,
    handshaking: Handshaking,
    gate: ConnectionGate,
    counters: Arc<QuicCounters>,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = incoming.remote_address();
    let handshake = async {
        let connecting = incoming.accept().map_err(|e| e.to_string())?;
        match tokio::time::timeout(crate::tls::TLS_HANDSHAKE_TIMEOUT, connecting).await {
            Ok(done) => done.map_err(|e| e.to_string()),
            Err(_) => Err("timed out".to_owned()),
        }
    };
    let connection = tokio::select! {
        done = handshake => match done {
            Ok(connection) => connection,
            Err(why) => {
                counters.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, %why, "QUIC handshake failed");
                return;
            }
        },
        _ = shutdown.wait_for(|stop| *stop) => return,
    };
    drop(handshaking);
    let (writer, reader) = match connection.open_bi().await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "QUIC stream could not be opened");
            connection.close(CLOSE_PROTOCOL.into(), b"no stream");
            return;
        }
    };
    gate.serve_stream(reader, writer, connection.remote_address(), "quic")
        .await;
    // The native protocol finished the stream; give the client a moment to
    // read its last bytes and close first, then close from this side.
    let _ = tokio::time::timeout(LINGER, connection.closed()).await;
    connection.close(CLOSE_DONE.into(), b"");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unvalidated_clients_get_a_retry_only_past_the_threshold() {
        let rule = Admission {
            retry_above: 2,
            max_handshaking: 10,
        };
        assert_eq!(rule.verdict(0, false, true), Verdict::Accept);
        assert_eq!(rule.verdict(1, false, true), Verdict::Accept);
        assert_eq!(rule.verdict(2, false, true), Verdict::Retry);
        // A client that answered a Retry is not asked again.
        assert_eq!(rule.verdict(5, true, false), Verdict::Accept);
        // quinn cannot retry an attempt twice; it is then accepted.
        assert_eq!(rule.verdict(5, false, false), Verdict::Accept);
        assert_eq!(rule.verdict(10, true, false), Verdict::Refuse);
        assert_eq!(rule.verdict(10, false, true), Verdict::Refuse);
    }

    #[test]
    fn zero_means_every_unvalidated_client_is_retried() {
        let rule = Admission {
            retry_above: 0,
            max_handshaking: 10,
        };
        assert_eq!(rule.verdict(0, false, true), Verdict::Retry);
        assert_eq!(rule.verdict(0, true, false), Verdict::Accept);
    }
}
