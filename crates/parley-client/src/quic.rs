//! The native protocol over QUIC (`quic://host:port`).
//!
//! The server opens one bidirectional stream as soon as the handshake is
//! done and writes its Welcome on it; from there the stream carries the same
//! bytes as a TCP connection. The client opens no stream. TLS 1.3 is part of
//! QUIC, so a QUIC address is trusted exactly as a `tls://` one is.
//!
//! What QUIC adds for the user: the connection is named by ids, not by the
//! client's address, so a client whose address or port changes (a phone
//! that moves between networks, a NAT that rebinds, [`crate::Client::rebind_quic`])
//! keeps its session and misses nothing; and loss is repaired per packet.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::tls::{self, Fingerprint, Seen, ServerAddress, Trust};
use crate::{ClientError, Result};

/// How long the QUIC handshake may take before the connection attempt
/// fails (a server without QUIC, or UDP blocked on the way, never answers).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// QUIC-level keep-alive: keeps the path (and any NAT binding on it) open
/// even when the native protocol is quiet.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// A connected QUIC link with the server's stream, ready for the native
/// protocol (the server's Welcome is the first frame to read), and the
/// fingerprint of the certificate the server presented.
pub struct Connected {
    /// The endpoint; keep it as long as the stream is used.
    pub endpoint: quinn::Endpoint,
    /// The connection, for its state (`close_reason`) and statistics.
    pub connection: quinn::Connection,
    pub reader: quinn::RecvStream,
    pub writer: quinn::SendStream,
    pub fingerprint: Option<Fingerprint>,
}

/// Resolves `address`, makes the QUIC handshake (trusting the server as
/// `trust` says), and takes the stream the server opens. For a program
/// that speaks the frames itself (a load generator); others use
/// [`crate::Client::connect_quic`].
pub async fn connect(address: &ServerAddress, trust: &Trust) -> Result<Connected> {
    let remote = resolve(&address.authority).await?;
    let endpoint = endpoint_for(remote)?;
    connect_on(&endpoint, remote, address, trust).await
}

/// A client endpoint (one UDP socket on an ephemeral port) that can reach
/// `remote`; many connections may share it.
pub fn endpoint_for(remote: SocketAddr) -> Result<quinn::Endpoint> {
    let local: SocketAddr = if remote.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    Ok(quinn::Endpoint::client(local)?)
}

/// Like [`connect`], on an endpoint the caller made (and may share between
/// connections), to `remote`, the address `address` resolved to.
pub async fn connect_on(
    endpoint: &quinn::Endpoint,
    remote: SocketAddr,
    address: &ServerAddress,
    trust: &Trust,
) -> Result<Connected> {
    let name = tls::server_name(&address.host)?;
    let seen = Seen::default();
    let crypto = tls::client_config(trust, &seen)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| ClientError::Tls(format!("QUIC: {e}")))?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    let server_name = match &name {
        rustls::pki_types::ServerName::DnsName(dns) => dns.as_ref().to_owned(),
        _ => address.host.clone(),
    };
    let connecting = endpoint
        .connect_with(config, remote, &server_name)
        .map_err(|e| ClientError::Tls(format!("QUIC: {e}")))?;
    let connection = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => return Err(tls::refused(trust, &seen).unwrap_or_else(|| handshake_error(e))),
        Err(_) => {
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no QUIC answer from {} within {CONNECT_TIMEOUT:?} (is quic_listen on there, and UDP let through?)",
                    address.authority
                ),
            )));
        }
    };
    let fingerprint = connection
        .peer_identity()
        .and_then(|identity| {
            identity
                .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| chain.first().map(|cert| Fingerprint::of(cert.as_ref())));
    let (writer, reader) = match tokio::time::timeout(CONNECT_TIMEOUT, connection.accept_bi()).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(closed(e)),
        Err(_) => {
            return Err(ClientError::Protocol(
                "the QUIC server opened no stream: it does not speak Parley's native protocol".into(),
            ));
        }
    };
    Ok(Connected {
        endpoint: endpoint.clone(),
        connection,
        reader,
        writer,
        fingerprint,
    })
}

/// The first address `authority` (`host:port`) resolves to.
async fn resolve(authority: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(authority).await?.next().ok_or_else(|| {
        ClientError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{authority} resolves to no address"),
        ))
    })
}

/// A failed QUIC handshake as the TLS errors of a TCP connection read.
fn handshake_error(e: quinn::ConnectionError) -> ClientError {
    match &e {
        // TLS alerts travel as transport errors 0x100 + alert.
        quinn::ConnectionError::TransportError(t) if (0x100..0x200).contains(&u64::from(t.code)) => {
            ClientError::NotTrusted(t.reason.clone())
        }
        _ => closed(e),
    }
}

/// A QUIC connection that ended, as the client reports a lost connection.
fn closed(e: quinn::ConnectionError) -> ClientError {
    match e {
        quinn::ConnectionError::ConnectionClosed(_) | quinn::ConnectionError::ApplicationClosed(_) => {
            ClientError::Disconnected(Some(e.to_string()))
        }
        other => ClientError::Io(std::io::Error::other(other.to_string())),
    }
}
