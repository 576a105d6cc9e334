//! Direct peer-to-peer paths for file transfer, found through the server.
//!
//! The server is only a discovery service here: for one transfer it tells
//! each side the other's candidate UDP addresses, the other's certificate
//! fingerprint and a one-time token ([`Rendezvous`]). Each side has a fresh
//! QUIC endpoint with an ephemeral self-signed certificate
//! ([`PeerEndpoint`]). Both sides dial every candidate of the other *and*
//! accept on their own endpoint, so a path opens when either direction gets
//! through, and the outgoing packets open a simple NAT's pinhole for the
//! incoming ones. TLS is mutual and pinned: each side accepts exactly the
//! certificate the server vouched for (no CA, no name) and checks the
//! handshake signature, so the peer proves it holds the key.
//!
//! When several connections come up (on loopback both directions do), the
//! sender offers one at a time: it opens the only stream on it and writes
//! the token. The recipient watches every connection and takes the first
//! stream whose token matches, then answers with one byte, so the sender
//! knows the peer took that stream before it calls the path ready (a
//! connection can complete on the dialling side and still be refused by the
//! other). Connections not chosen are dropped, which closes them with code 0.
//!
//! This module moves no file bytes: it hands the caller the streams.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parley_core::sync::lock;
use quinn::VarInt;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::tls::Fingerprint;

/// ALPN protocol id of a direct file-transfer connection.
pub const ALPN: &[u8] = b"parley-file/1";

/// SHA-256 of a DER certificate, as the server hands it over.
pub type Fingerprint32 = [u8; 32];

/// The name dialled with: TLS needs one, and the pinned verifier ignores it.
const PEER_NAME: &str = "parley-peer";
/// QUIC keep-alive: keeps the NAT bindings on the path open while the
/// caller is slow (reading a file from disk), since many NATs forget an
/// idle UDP mapping after 30 s.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A peer silent for this long (keep-alives included) is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// One stream carries a whole file, and a stream can move at most one
/// window per round trip: quinn's default (1.25 MB) caps a 100 ms path at
/// about 12 MB/s; 8 MiB lifts that to about 80 MB/s.
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
/// The connection's window (and what we keep unacknowledged in flight):
/// room for the file stream and the caller's own small streams.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// UDP socket buffers asked for, so bursts at these windows are not dropped
/// by the kernel; it may grant less (`net.core.rmem_max`), which is fine.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;
/// How long [`PeerEndpoint::close`] waits for the close to reach peers.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Attempt reports queued before the attempts wait for the chooser.
const REPORT_QUEUE: usize = 16;
/// The recipient's answer on the token stream: this path is taken.
const ACCEPTED: u8 = 1;
/// Stream error code for a stream whose token is not this transfer's.
const WRONG_TOKEN: VarInt = VarInt::from_u32(1);

/// The fingerprint of the peer this endpoint's transfer is with; None
/// until the rendezvous is known, and then every handshake is refused.
type Expected = Arc<Mutex<Option<Fingerprint32>>>;

/// One side's endpoint for one transfer: a UDP socket that both dials and
/// accepts, with its own ephemeral certificate. It pins one peer at a
/// time, so a new transfer takes a new endpoint.
pub struct PeerEndpoint {
    /// The QUIC endpoint, client and server on one socket, so that the
    /// packets we send open the NAT pinhole the peer's packets come in by.
    endpoint: quinn::Endpoint,
    /// Our certificate's fingerprint, which the server hands to the peer.
    fingerprint: Fingerprint32,
    /// The peer's fingerprint, shared with the verifiers of both directions.
    expected: Expected,
}

/// What the server vouched for: where the peer may be, who it is, and the
/// token that ties a stream to this transfer.
#[derive(Clone)]
pub struct Rendezvous {
    /// The peer's announced addresses ([`PeerEndpoint::candidates`]), each dialled.
    pub peer_candidates: Vec<SocketAddr>,
    /// The peer's certificate, the only one either direction accepts.
    pub peer_fingerprint: Fingerprint32,
    /// Ties the sender's stream to this transfer, on whichever connection.
    pub token: [u8; 32],
}

/// A direct path that is ready: the caller writes (sender) or reads
/// (recipient) the file bytes on its streams. Keep the [`PeerEndpoint`]
/// until the transfer is done.
#[derive(Debug)]
pub struct DirectPath {
    /// The connection, for its statistics and to close it when done.
    pub connection: quinn::Connection,
    /// The transfer's stream, past the token (and the recipient's answer).
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    /// The peer's address on this path.
    pub remote: SocketAddr,
    /// Whether we dialled this connection (else the peer did).
    pub dialed: bool,
}

/// Why no direct path was made.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// Nothing connected and proved to be the peer in time.
    #[error(
        "no direct path to the peer within {timeout:?}: dialled {tried} candidate address(es) and accepted \
         incoming connections, and none proved to be the peer{}",
        last_failure.as_ref().map(|why| format!(" (last failure: {why})")).unwrap_or_default()
    )]
    NoPath {
        tried: usize,
        timeout: Duration,
        last_failure: Option<String>,
    },
    /// The endpoint was closed, so nothing more can connect.
    #[error("the peer-to-peer endpoint is closed")]
    Closed,
}

impl PeerEndpoint {
    /// Binds a UDP socket at `addr` (e.g. `0.0.0.0:0`) and sets up the
    /// endpoint on it, as [`PeerEndpoint::from_socket`] does.
    pub fn bind(addr: SocketAddr) -> io::Result<PeerEndpoint> {
        PeerEndpoint::from_socket(UdpSocket::bind(addr)?)
    }

    /// Sets up the endpoint on a socket the caller made: a fresh
    /// self-signed certificate, a server side that requires the expected
    /// peer's certificate, and a client side that requires it of the
    /// server. Must be called inside a tokio runtime.
    pub fn from_socket(socket: UdpSocket) -> io::Result<PeerEndpoint> {
        enlarge_buffers(&socket);
        socket.set_nonblocking(true)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let identity = Identity::generate()?;
        let expected = Expected::default();
        let verifier = Arc::new(PinnedPeer {
            expected: Arc::clone(&expected),
            provider: Arc::clone(&provider),
        });
        let transport = Arc::new(transport_config());
        let server = server_config(&identity, &provider, Arc::clone(&verifier), Arc::clone(&transport))?;
        let client = client_config(&identity, &provider, verifier, transport)?;
        let runtime =
            quinn::default_runtime().ok_or_else(|| io::Error::other("a peer endpoint needs a tokio runtime"))?;
        let mut endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, runtime)?;
        endpoint.set_default_client_config(client);
        Ok(PeerEndpoint {
            endpoint,
            fingerprint: identity.fingerprint,
            expected,
        })
    }

    /// Our certificate's fingerprint, for the server to hand to the peer.
    pub fn fingerprint(&self) -> Fingerprint32 {
        self.fingerprint
    }

    /// The bound socket's address (its port goes into every candidate).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Addresses to announce. Bound to a specific IP: that address. Bound
    /// to the unspecified address: every up interface's address of the
    /// socket's family (loopback included, last; IPv6 link-local left out,
    /// as it is useless without a scope), with `prefer` (say, the address
    /// used to reach the server) first, and no duplicates.
    pub fn candidates(&self, prefer: Option<IpAddr>) -> Vec<SocketAddr> {
        let Ok(local) = self.local_addr() else {
            return Vec::new();
        };
        if !local.ip().is_unspecified() {
            return vec![local];
        }
        let usable = |ip: &IpAddr| ip.is_ipv4() == local.is_ipv4() && !ip.is_unspecified() && !is_link_local(ip);
        let mut found = interface_addresses();
        // Stable: keeps the system's order, loopback last.
        found.sort_by_key(IpAddr::is_loopback);
        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in prefer.into_iter().chain(found).filter(usable) {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        ips.into_iter().map(|ip| SocketAddr::new(ip, local.port())).collect()
    }

    /// Closes the endpoint and every connection on it (code 0), and waits
    /// briefly for the close to reach the peers.
    pub async fn close(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"done");
        let _ = tokio::time::timeout(CLOSE_GRACE, self.endpoint.wait_idle()).await;
    }

    /// Pins the peer and starts every attempt: one dial per candidate and
    /// one loop accepting incoming connections. Each reports on the
    /// returned channel; dropping the set stops them all.
    fn start_attempts(&self, rv: &Rendezvous) -> (JoinSet<()>, mpsc::Receiver<Attempt>) {
        *lock(&self.expected) = Some(rv.peer_fingerprint);
        let (report, reports) = mpsc::channel(REPORT_QUEUE);
        let mut attempts = JoinSet::new();
        for &addr in &rv.peer_candidates {
            attempts.spawn(dial(self.endpoint.clone(), addr, report.clone()));
        }
        attempts.spawn(accept_all(self.endpoint.clone(), report));
        (attempts, reports)
    }
}

/// Sender side: pins the peer, dials every candidate and accepts incoming
/// connections, all within `timeout`. Each connection that completes the
/// handshake (so the peer's certificate is the pinned one) is offered in
/// turn: one stream opened, the token written, the recipient's answer
/// awaited; the first one taken is the path.
pub async fn connect_as_sender(
    ep: &PeerEndpoint,
    rv: &Rendezvous,
    timeout: Duration,
) -> Result<DirectPath, DirectError> {
    let (_attempts, mut reports) = ep.start_attempts(rv);
    let mut last_failure = None;
    let chosen = tokio::time::timeout(timeout, async {
        while let Some(report) = reports.recv().await {
            let offered = match report {
                Attempt::Connected { connection, dialed } => offer(connection, dialed, &rv.token).await,
                Attempt::Failed(why) => Err(why),
            };
            match offered {
                Ok(path) => return Ok(path),
                Err(why) => last_failure = Some(why),
            }
        }
        Err(DirectError::Closed)
    })
    .await;
    chosen.unwrap_or_else(|_| Err(no_path(rv, timeout, last_failure)))
}

/// Recipient side: pins the peer, dials every candidate and accepts
/// incoming connections, all within `timeout`. Every connection that
/// completes the handshake is watched for streams, whichever side dialled
/// it, since the sender picks which one to use; the first stream that
/// starts with the token is answered and returned. Streams with another
/// token are refused and the wait goes on.
pub async fn accept_as_recipient(
    ep: &PeerEndpoint,
    rv: &Rendezvous,
    timeout: Duration,
) -> Result<DirectPath, DirectError> {
    let (_attempts, mut reports) = ep.start_attempts(rv);
    let mut watchers = JoinSet::new();
    let (found, mut streams) = mpsc::channel(REPORT_QUEUE);
    let mut last_failure = None;
    let taken = tokio::time::timeout(timeout, async {
        loop {
            let failed = tokio::select! {
                Some(stream) = streams.recv() => match stream {
                    Ok(path) => return Ok(path),
                    Err(why) => why,
                },
                report = reports.recv() => match report {
                    Some(Attempt::Connected { connection, dialed }) => {
                        watchers.spawn(watch(connection, dialed, rv.token, found.clone()));
                        continue;
                    }
                    Some(Attempt::Failed(why)) => why,
                    None => return Err(DirectError::Closed),
                },
            };
            last_failure = Some(failed);
        }
    })
    .await;
    taken.unwrap_or_else(|_| Err(no_path(rv, timeout, last_failure)))
}

/// What one attempt came to.
enum Attempt {
    /// The handshake completed, so the peer's certificate is the pinned one.
    Connected {
        connection: quinn::Connection,
        dialed: bool,
    },
    /// The attempt failed; why, for the error if nothing connects.
    Failed(String),
}

/// Dials `addr` and reports the outcome. A report nobody waits for any
/// more drops its connection, which closes it with code 0.
async fn dial(endpoint: quinn::Endpoint, addr: SocketAddr, report: mpsc::Sender<Attempt>) {
    let connected = match endpoint.connect(addr, PEER_NAME) {
        Ok(connecting) => connecting.await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let attempt = match connected {
        Ok(connection) => Attempt::Connected {
            connection,
            dialed: true,
        },
        Err(why) => Attempt::Failed(format!("dialling {addr}: {why}")),
    };
    let _ = report.send(attempt).await;
}

/// Accepts incoming connections until the endpoint closes, each handshake
/// in its own task so a slow one holds up no other.
async fn accept_all(endpoint: quinn::Endpoint, report: mpsc::Sender<Attempt>) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    handshakes.spawn(handshake(incoming, report.clone()));
                }
                None => return,
            },
            // Reaps finished handshakes so the set does not grow.
            Some(_) = handshakes.join_next() => {}
        }
    }
}

async fn handshake(incoming: quinn::Incoming, report: mpsc::Sender<Attempt>) {
    let remote = incoming.remote_address();
    let attempt = match incoming.await {
        Ok(connection) => Attempt::Connected {
            connection,
            dialed: false,
        },
        Err(e) => Attempt::Failed(format!("accepting from {remote}: {e}")),
    };
    let _ = report.send(attempt).await;
}

/// Sender: opens the one stream on `connection`, writes the token, and
/// waits for the recipient to take it.
async fn offer(connection: quinn::Connection, dialed: bool, token: &[u8; 32]) -> Result<DirectPath, String> {
    let remote = connection.remote_address();
    // A refused handshake shows here as a lost connection; its close
    // reason says why (say, the peer refused our certificate).
    let failed = |e: &dyn std::fmt::Display| match connection.close_reason() {
        Some(reason) => format!("offering the path to {remote}: {reason}"),
        None => format!("offering the path to {remote}: {e}"),
    };
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| failed(&e))?;
    send.write_all(token).await.map_err(|e| failed(&e))?;
    let mut answer = [0u8; 1];
    recv.read_exact(&mut answer).await.map_err(|e| failed(&e))?;
    if answer[0] != ACCEPTED {
        return Err(failed(&format!("unexpected answer {}", answer[0])));
    }
    Ok(DirectPath {
        connection,
        send,
        recv,
        remote,
        dialed,
    })
}

/// Recipient: takes streams on `connection` until one starts with `token`,
/// answers it and reports it; refuses (and reports) the others.
async fn watch(
    connection: quinn::Connection,
    dialed: bool,
    token: [u8; 32],
    report: mpsc::Sender<Result<DirectPath, String>>,
) {
    let remote = connection.remote_address();
    loop {
        let (mut send, mut recv) = match connection.accept_bi().await {
            Ok(stream) => stream,
            // Not a failure worth reporting: the sender drops every
            // connection it does not choose.
            Err(_) => return,
        };
        let mut presented = [0u8; 32];
        let outcome = match recv.read_exact(&mut presented).await {
            Ok(()) if same_token(&presented, &token) => send.write_all(&[ACCEPTED]).await.map_err(|e| e.to_string()),
            Ok(()) => Err("a stream with another transfer's token".to_owned()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = outcome {
            let _ = recv.stop(WRONG_TOKEN);
            let _ = send.reset(WRONG_TOKEN);
            let _ = report.send(Err(format!("stream from {remote}: {why}"))).await;
            continue;
        }
        let path = DirectPath {
            connection,
            send,
            recv,
            remote,
            dialed,
        };
        let _ = report.send(Ok(path)).await;
        return;
    }
}

/// Compares tokens in constant time, so timing tells nothing of a token.
fn same_token(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn no_path(rv: &Rendezvous, timeout: Duration, last_failure: Option<String>) -> DirectError {
    DirectError::NoPath {
        tried: rv.peer_candidates.len(),
        timeout,
        last_failure,
    }
}

/// An ephemeral certificate and its key, for one endpoint.
struct Identity {
    /// Presented in both directions: as server and as client.
    cert: CertificateDer<'static>,
    /// Signs the handshakes, proving we hold the certificate.
    key: PrivatePkcs8KeyDer<'static>,
    /// What the server hands the peer to pin.
    fingerprint: Fingerprint32,
}

impl Identity {
    fn generate() -> io::Result<Identity> {
        let certified = rcgen::generate_simple_self_signed(vec![PEER_NAME.to_owned()])
            .map_err(|e| io::Error::other(format!("making the peer certificate: {e}")))?;
        let cert = certified.cert.der().clone();
        Ok(Identity {
            fingerprint: Fingerprint::of(cert.as_ref()).0,
            cert,
            key: PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()),
        })
    }
}

fn transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    // 30 s fits in a QUIC varint of milliseconds, so this never fails.
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    transport.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    transport.receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    transport.send_window(u64::from(CONNECTION_WINDOW));
    transport
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::other(format!("peer-to-peer TLS settings: {e}"))
}

/// The accepting side: TLS 1.3 (QUIC needs it), our certificate, and a
/// client certificate required and pinned.
fn server_config(
    identity: &Identity,
    provider: &Arc<CryptoProvider>,
    verifier: Arc<PinnedPeer>,
    transport: Arc<quinn::TransportConfig>,
) -> io::Result<quinn::ServerConfig> {
    let mut crypto = rustls::ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key().into())
        .map_err(tls_error)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(crypto).map_err(io::Error::other)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}

/// The dialling side: TLS 1.3, the server's certificate pinned, and our
/// certificate presented, since the peer requires it.
fn client_config(
    identity: &Identity,
    provider: &Arc<CryptoProvider>,
    verifier: Arc<PinnedPeer>,
    transport: Arc<quinn::TransportConfig>,
) -> io::Result<quinn::ClientConfig> {
    let mut crypto = rustls::ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key().into())
        .map_err(tls_error)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(crypto).map_err(io::Error::other)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}

/// Accepts exactly the expected peer's certificate, in either direction,
/// whatever its names and dates, and checks the handshake signature with
/// its key. Before the peer is known, it refuses everyone.
#[derive(Debug)]
struct PinnedPeer {
    /// Shared with the endpoint, which sets it when the rendezvous is known.
    expected: Expected,
    /// Ring, for the signature checks.
    provider: Arc<CryptoProvider>,
}

impl PinnedPeer {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let presented = Fingerprint::of(end_entity.as_ref()).0;
        match *lock(&self.expected) {
            Some(expected) if expected == presented => Ok(()),
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
}

/// QUIC is TLS 1.3 only, so a TLS 1.2 signature is never asked for; if it
/// were, it is refused rather than checked under weaker rules.
fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOfferedOrEnabled,
    ))
}

impl ServerCertVerifier for PinnedPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PinnedPeer {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Asks for larger UDP buffers; a refusal only costs throughput.
fn enlarge_buffers(socket: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    let asked = [
        setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER),
        setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER),
    ];
    for refused in asked.into_iter().filter_map(Result::err) {
        tracing::debug!(error = %refused, "peer-to-peer socket keeps its smaller buffer");
    }
}

/// The addresses of every interface that is up.
fn interface_addresses() -> Vec<IpAddr> {
    use nix::net::if_::InterfaceFlags;
    let interfaces = match nix::ifaddrs::getifaddrs() {
        Ok(interfaces) => interfaces,
        Err(e) => {
            tracing::debug!(error = %e, "cannot list network interfaces");
            return Vec::new();
        }
    };
    interfaces
        .filter(|interface| interface.flags.contains(InterfaceFlags::IFF_UP))
        .filter_map(|interface| {
            let address = interface.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                return Some(IpAddr::V4(v4.ip()));
            }
            address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
        })
        .collect()
}

fn is_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// Bounds every test, so a hang fails instead of stalling the suite.
    const TEST_LIMIT: Duration = Duration::from_secs(20);
    /// Time given to a rendezvous that should succeed.
    const CONNECT: Duration = Duration::from_secs(10);
    /// Time given to a rendezvous that should fail.
    const REFUSE: Duration = Duration::from_secs(1);

    fn loopback() -> PeerEndpoint {
        PeerEndpoint::bind((Ipv4Addr::LOCALHOST, 0).into()).unwrap()
    }

    /// What the server would tell the side that meets `peer`.
    fn meeting(peer: &PeerEndpoint, token: [u8; 32]) -> Rendezvous {
        Rendezvous {
            peer_candidates: peer.candidates(None),
            peer_fingerprint: peer.fingerprint(),
            token,
        }
    }

    /// Runs both sides of one rendezvous together.
    async fn meet(
        sender: &PeerEndpoint,
        for_sender: Rendezvous,
        recipient: &PeerEndpoint,
        for_recipient: Rendezvous,
        timeout: Duration,
    ) -> (Result<DirectPath, DirectError>, Result<DirectPath, DirectError>) {
        tokio::join!(
            connect_as_sender(sender, &for_sender, timeout),
            accept_as_recipient(recipient, &for_recipient, timeout),
        )
    }

    fn peer_fingerprint(connection: &quinn::Connection) -> Option<Fingerprint32> {
        let chain = connection
            .peer_identity()?
            .downcast::<Vec<CertificateDer<'static>>>()
            .ok()?;
        chain.first().map(|cert| Fingerprint::of(cert.as_ref()).0)
    }

    async fn within<F: std::future::Future>(future: F) -> F::Output {
        tokio::time::timeout(TEST_LIMIT, future)
            .await
            .expect("test took too long")
    }

    #[tokio::test]
    async fn two_peers_connect_and_the_bytes_arrive() {
        within(async {
            let (sender, recipient) = (loopback(), loopback());
            let token = [9u8; 32];
            let (sent, taken) = meet(
                &sender,
                meeting(&recipient, token),
                &recipient,
                meeting(&sender, token),
                CONNECT,
            )
            .await;
            let (mut sent, mut taken) = (sent.unwrap(), taken.unwrap());
            // One connection, dialled by one side and accepted by the other.
            assert_ne!(sent.dialed, taken.dialed);
            assert_eq!(peer_fingerprint(&sent.connection), Some(recipient.fingerprint()));
            assert_eq!(peer_fingerprint(&taken.connection), Some(sender.fingerprint()));
            let payload = b"the whole file".repeat(1000);
            let (written, read) = tokio::join!(
                async {
                    sent.send.write_all(&payload).await.map_err(|e| e.to_string())?;
                    sent.send.finish().map_err(|e| e.to_string())
                },
                taken.recv.read_to_end(1 << 20),
            );
            written.unwrap();
            assert_eq!(read.unwrap(), payload);
            sender.close().await;
            recipient.close().await;
        })
        .await;
    }

    #[tokio::test]
    async fn a_stranger_gets_no_stream_and_the_real_sender_still_does() {
        within(async {
            let (sender, recipient, stranger) = (loopback(), loopback(), loopback());
            let token = [3u8; 32];
            // The stranger knows the token and the recipient's certificate,
            // but holds another certificate of its own.
            let to_recipient = meeting(&recipient, token);
            let (intruded, (sent, taken)) = tokio::join!(
                connect_as_sender(&stranger, &to_recipient, REFUSE),
                meet(
                    &sender,
                    to_recipient.clone(),
                    &recipient,
                    meeting(&sender, token),
                    CONNECT
                ),
            );
            match intruded {
                Err(DirectError::NoPath {
                    last_failure: Some(why),
                    ..
                }) => assert!(why.contains("certificate"), "{why}"),
                other => panic!("expected the stranger refused, got {other:?}"),
            }
            let (sent, taken) = (sent.unwrap(), taken.unwrap());
            assert_eq!(peer_fingerprint(&taken.connection), Some(sender.fingerprint()));
            assert_eq!(peer_fingerprint(&sent.connection), Some(recipient.fingerprint()));
        })
        .await;
    }

    #[tokio::test]
    async fn a_wrong_peer_fingerprint_finds_no_path_in_time() {
        within(async {
            let (sender, recipient) = (loopback(), loopback());
            let token = [5u8; 32];
            let wrong = Rendezvous {
                peer_fingerprint: [7u8; 32],
                ..meeting(&recipient, token)
            };
            let started = tokio::time::Instant::now();
            let (sent, taken) = meet(&sender, wrong, &recipient, meeting(&sender, token), REFUSE).await;
            assert!(started.elapsed() < REFUSE * 3, "{:?}", started.elapsed());
            match sent {
                Err(DirectError::NoPath { tried, .. }) => assert_eq!(tried, 1),
                other => panic!("expected NoPath, got {other:?}"),
            }
            assert!(matches!(taken, Err(DirectError::NoPath { .. })), "{taken:?}");
        })
        .await;
    }

    #[tokio::test]
    async fn a_wrong_token_is_ignored() {
        within(async {
            let (sender, recipient) = (loopback(), loopback());
            let (sent, taken) = meet(
                &sender,
                meeting(&recipient, [1u8; 32]),
                &recipient,
                meeting(&sender, [2u8; 32]),
                REFUSE,
            )
            .await;
            assert!(matches!(sent, Err(DirectError::NoPath { .. })), "{sent:?}");
            match taken {
                Err(DirectError::NoPath {
                    last_failure: Some(why),
                    ..
                }) => assert!(why.contains("token"), "{why}"),
                other => panic!("expected NoPath after a wrong token, got {other:?}"),
            }
        })
        .await;
    }

    #[tokio::test]
    async fn candidates_name_the_bound_address_or_every_interface() {
        let any = PeerEndpoint::bind((Ipv4Addr::UNSPECIFIED, 0).into()).unwrap();
        let port = any.local_addr().unwrap().port();
        let localhost = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let all = any.candidates(None);
        assert!(all.contains(&localhost), "{all:?}");
        assert!(all.iter().all(|addr| addr.is_ipv4() && addr.port() == port), "{all:?}");
        let preferred = any.candidates(Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(preferred.first(), Some(&localhost));
        assert_eq!(preferred.len(), all.len(), "no duplicates: {preferred:?}");
        // An address of the other family is no use to this socket.
        assert_eq!(any.candidates(Some("::1".parse().unwrap())), all);

        let one = loopback();
        assert_eq!(one.candidates(None), vec![one.local_addr().unwrap()]);
        assert_eq!(
            one.candidates(Some("10.0.0.1".parse().unwrap())),
            vec![one.local_addr().unwrap()]
        );
    }

    #[tokio::test]
    async fn one_reachable_direction_is_enough() {
        within(async {
            let (sender, recipient) = (loopback(), loopback());
            // The sender only knows an address where nothing answers; the
            // recipient dials the sender's real one.
            let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let token = [4u8; 32];
            let unreachable = Rendezvous {
                peer_candidates: vec![silent.local_addr().unwrap()],
                ..meeting(&recipient, token)
            };
            let (sent, taken) = meet(&sender, unreachable, &recipient, meeting(&sender, token), CONNECT).await;
            let (sent, taken) = (sent.unwrap(), taken.unwrap());
            assert!(!sent.dialed && taken.dialed);
            assert_eq!(sent.remote, recipient.local_addr().unwrap());
        })
        .await;
    }

    #[test]
    fn tokens_compare_whole() {
        let token = [8u8; 32];
        let mut other = token;
        other[31] ^= 1;
        assert!(same_token(&token, &token));
        assert!(!same_token(&token, &other));
    }
}
