//! Transport security: loading the certificate and key named in the
//! configuration, the TLS handshake on accepted connections, and the warning
//! about plaintext listeners that others can reach.
//!
//! Listeners are bound elsewhere (and may be handed over by another
//! process); TLS only ever wraps a stream that was already accepted, so a
//! handshake runs in the connection's own task, bounded by
//! [`TLS_HANDSHAKE_TIMEOUT`], and a failed one ends that connection and
//! nothing else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::Settings;

/// Longest time a client may take to complete the TLS handshake after its
/// connection was accepted; the login timeout (`auth_timeout_secs`) starts
/// after it.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// ALPN protocol id of the native protocol over TLS.
pub const ALPN_NATIVE: &[u8] = b"parley";
/// ALPN protocol id of the HTTP listener over TLS (HTTP/1.1 only).
pub const ALPN_HTTP: &[u8] = b"http/1.1";

/// The server's certificate chain and key, loaded and checked, with a TLS
/// configuration for each listener.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The PEM file the chain came from.
    pub cert_path: PathBuf,
    /// The PEM file the key came from.
    pub key_path: PathBuf,
    /// SHA-256 of the end-entity certificate, `AB:CD:...`, for logs and for
    /// clients that pin it.
    pub fingerprint: String,
    /// For the native listener (ALPN `parley`).
    native: Arc<ServerConfig>,
    /// For the HTTP listener (ALPN `http/1.1`).
    http: Arc<ServerConfig>,
    /// For the QUIC listener: TLS 1.3 only, ALPN `parley`.
    quic: Arc<quinn::crypto::rustls::QuicServerConfig>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl TlsIdentity {
    /// The acceptor for native-protocol connections.
    pub fn native_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.native))
    }

    /// The acceptor for HTTP connections.
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.http))
    }

    /// The handshake configuration of the QUIC listener.
    pub fn quic_crypto(&self) -> Arc<quinn::crypto::rustls::QuicServerConfig> {
        Arc::clone(&self.quic)
    }
}

/// SHA-256 of a DER certificate as colon-separated upper-case hex, the form
/// `openssl x509 -noout -fingerprint -sha256` prints.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// Reads and checks the certificate chain and key, and builds the TLS
/// configurations. Every problem found is returned, each naming its file.
pub fn load_identity(cert_path: &Path, key_path: &Path) -> Result<TlsIdentity, Vec<String>> {
    let mut errors = Vec::new();
    let certs = match std::fs::read(cert_path) {
        Err(e) => {
            errors.push(format!("tls_cert: cannot read {}: {e}", cert_path.display()));
            None
        }
        Ok(pem) => match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
            Err(e) => {
                errors.push(format!("tls_cert: {} is not valid PEM: {e}", cert_path.display()));
                None
            }
            Ok(certs) if certs.is_empty() => {
                errors.push(format!(
                    "tls_cert: {} holds no certificate (expected a \"BEGIN CERTIFICATE\" block)",
                    cert_path.display()
                ));
                None
            }
            Ok(certs) => Some(certs),
        },
    };
    let key = match std::fs::read(key_path) {
        Err(e) => {
            errors.push(format!("tls_key: cannot read {}: {e}", key_path.display()));
            None
        }
        Ok(pem) => match PrivateKeyDer::from_pem_slice(&pem) {
            Ok(key) => Some(key),
            Err(rustls::pki_types::pem::Error::NoItemsFound) => {
                errors.push(format!(
                    "tls_key: {} holds no private key (expected a PKCS#8, RSA or EC \"PRIVATE KEY\" block)",
                    key_path.display()
                ));
                None
            }
            Err(e) => {
                errors.push(format!("tls_key: {} is not valid PEM: {e}", key_path.display()));
                None
            }
        },
    };
    let (Some(certs), Some(key)) = (certs, key) else {
        return Err(errors);
    };
    let fingerprint = fingerprint(certs[0].as_ref());
    let files = (cert_path, key_path);
    let mut quic = server_config(certs.clone(), key.clone_key(), files, &[&rustls::version::TLS13])?;
    quic.alpn_protocols = vec![ALPN_NATIVE.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(quic).map_err(|e| vec![format!("QUIC: {e}")])?;
    let native = server_config(certs, key, files, rustls::DEFAULT_VERSIONS)?;
    let mut http = native.clone();
    let mut native = native;
    native.alpn_protocols = vec![ALPN_NATIVE.to_vec()];
    http.alpn_protocols = vec![ALPN_HTTP.to_vec()];
    Ok(TlsIdentity {
        cert_path: cert_path.to_path_buf(),
        key_path: key_path.to_path_buf(),
        fingerprint,
        native: Arc::new(native),
        http: Arc::new(http),
        quic: Arc::new(quic),
    })
}

/// A server configuration with ring as the crypto provider (the only one
/// built in), the given TLS versions, no client certificates.
fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    (cert_path, key_path): (&Path, &Path),
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<ServerConfig, Vec<String>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| vec![format!("TLS: {e}")])?;
    builder.with_no_client_auth().with_single_cert(certs, key).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "the key does not belong to the certificate".to_owned()
            }
            other => other.to_string(),
        };
        vec![format!(
            "tls_cert/tls_key: {} and {}: {why}",
            cert_path.display(),
            key_path.display()
        )]
    })
}

/// Runs the server side of the handshake on an accepted stream, within
/// [`TLS_HANDSHAKE_TIMEOUT`]. A failure (garbage, a plaintext client, a
/// client that gives up or stalls) is counted in `failed`, logged at debug
/// and returns None: the caller drops the connection.
pub async fn handshake<S>(
    acceptor: &TlsAcceptor,
    stream: S,
    peer: SocketAddr,
    failed: &AtomicU64,
) -> Option<TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, timeout = ?TLS_HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            None
        }
    }
}

/// The listeners that serve plaintext on an address other hosts can reach
/// (anything but loopback; the unspecified 0.0.0.0 and :: included), by
/// setting name.
pub fn plaintext_exposures(settings: &Settings) -> Vec<(&'static str, SocketAddr)> {
    let mut exposed = Vec::new();
    if !settings.native_tls && !settings.listen.ip().is_loopback() {
        exposed.push(("listen", settings.listen));
    }
    if let Some(http) = settings.http_listen
        && !settings.http_tls
        && !http.ip().is_loopback()
    {
        exposed.push(("http_listen", http));
    }
    exposed
}

/// Logs a warning for each plaintext listener bound off loopback: logins are
/// SCRAM (the password never travels), but messages, names and tokens do, in
/// the clear.
pub fn warn_plaintext_exposure(settings: &Settings) {
    for (setting, addr) in plaintext_exposures(settings) {
        let switch = if setting == "listen" { "native_tls" } else { "http_tls" };
        tracing::warn!(
            %addr,
            "{setting} is plaintext on a non-loopback address: messages and session tokens cross the network \
             unencrypted; set tls_cert, tls_key and {switch} = true, or bind to 127.0.0.1 behind a \
             TLS-terminating proxy"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SettingArgs;

    fn settings(listen: &str, http: &str) -> Settings {
        SettingArgs {
            listen: Some(listen.into()),
            http_listen: Some(http.into()),
            ..Default::default()
        }
        .resolve()
        .unwrap()
    }

    #[test]
    fn only_plaintext_listeners_off_loopback_are_exposed() {
        let names = |s: &Settings| plaintext_exposures(s).into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert!(names(&settings("127.0.0.1:7878", "127.0.0.1:7880")).is_empty());
        assert!(names(&settings("[::1]:7878", "127.0.0.2:7880")).is_empty());
        assert!(names(&settings("127.0.0.1:7878", "off")).is_empty());
        assert_eq!(names(&settings("0.0.0.0:7878", "127.0.0.1:7880")), ["listen"]);
        assert_eq!(names(&settings("127.0.0.1:7878", "[::]:7880")), ["http_listen"]);
        assert_eq!(
            names(&settings("192.0.2.1:7878", "192.0.2.1:7880")),
            ["listen", "http_listen"]
        );
        let mut tls = settings("0.0.0.0:7878", "0.0.0.0:7880");
        tls.native_tls = true;
        assert_eq!(names(&tls), ["http_listen"]);
        tls.http_tls = true;
        assert!(names(&tls).is_empty());
    }

    #[test]
    fn fingerprints_are_colon_separated_sha256() {
        let f = fingerprint(b"");
        assert_eq!(f.len(), 32 * 3 - 1);
        assert!(f.starts_with("E3:B0:C4:42"), "{f}");
    }
}
