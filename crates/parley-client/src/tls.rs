//! TLS for the native protocol: how a client decides to trust a server.
//!
//! Three ways, chosen by the caller ([`Trust`]):
//! - the operating system's root certificates (read with
//!   `rustls-native-certs`, which honours `SSL_CERT_FILE` and
//!   `SSL_CERT_DIR`), the right choice for a certificate from a public CA;
//! - the certificates of a CA file (a private CA, or a self-signed server
//!   certificate used as its own CA), with the usual checks of name and
//!   validity;
//! - a pinned SHA-256 fingerprint of the server's end-entity certificate,
//!   as SSH does with host keys: the certificate must be exactly that one,
//!   whatever its names, issuer or dates. `Pinned(None)` accepts any
//!   certificate and reports its fingerprint, for a first contact that the
//!   caller then remembers (trust on first use).
//!
//! In every mode the handshake's signature is checked against the presented
//! certificate's key, so a pinned fingerprint proves the server holds the
//! private key. The only crypto provider is ring. This module reads no
//! files: a CA file's contents are handed in.

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::ClientError;

/// ALPN protocol id of the native protocol over TLS.
pub const ALPN: &[u8] = b"parley";
/// Scheme of a server address that speaks TLS: `tls://host:port`.
pub const TLS_SCHEME: &str = "tls://";
/// Scheme of a plaintext server address (the default without a scheme).
pub const TCP_SCHEME: &str = "tcp://";
/// Scheme of a server address reached over QUIC (UDP, TLS 1.3): `quic://host:port`.
pub const QUIC_SCHEME: &str = "quic://";
/// The native protocol's port, plaintext or TLS, when an address has none.
pub const DEFAULT_PORT: u16 = 7878;

/// SHA-256 of a DER-encoded certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// Parses `SHA256:AB:CD:...` as printed by [`fmt::Display`], also without
    /// the prefix, without colons, or in lower case (as `openssl x509
    /// -fingerprint -sha256` and `sha256sum` print it).
    pub fn parse(text: &str) -> Option<Fingerprint> {
        let text = text.trim();
        let hex = match text.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => &text[7..],
            _ => text,
        };
        let digits: Vec<u8> = hex.bytes().filter(|b| *b != b':').collect();
        if digits.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).ok()?;
            out[i] = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SHA256:")?;
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Whom a TLS client trusts.
#[derive(Clone, Debug)]
pub enum Trust {
    /// The operating system's root certificates.
    SystemRoots,
    /// These CA certificates only (see [`certificates_from_pem`]).
    Roots(Vec<CertificateDer<'static>>),
    /// Exactly the end-entity certificate with this fingerprint; None:
    /// any certificate (first contact), see [`crate::Client::server_fingerprint`].
    Pinned(Option<Fingerprint>),
}

/// The certificates in PEM text (a CA file).
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Tls(format!("CA file is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ClientError::Tls(
            "CA file holds no certificate (expected a \"BEGIN CERTIFICATE\" block)".into(),
        ));
    }
    Ok(certs)
}

/// A server address: `tls://host:port`, `tcp://host:port` or `host:port`
/// (plaintext). An IPv6 host is written in brackets: `tls://[::1]:7878`.
/// Without a port, the port is [`DEFAULT_PORT`] (`localhost`,
/// `tls://chat.example`, `[::1]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAddress {
    /// Whether the connection speaks TLS (over TCP, or within QUIC).
    pub tls: bool,
    /// Whether the connection is QUIC (UDP); `tls` is then true as well.
    pub quic: bool,
    /// `host:port`, as given, for connecting and for remembering the server.
    pub authority: String,
    /// The host alone (no brackets), the name the certificate must carry.
    pub host: String,
}

impl ServerAddress {
    /// Parses an address; the error says what is wrong.
    pub fn parse(text: &str) -> Result<ServerAddress, String> {
        let text = text.trim();
        let (tls, quic, rest) = if let Some(rest) = strip_prefix_ignore_case(text, TLS_SCHEME) {
            (true, false, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(text, QUIC_SCHEME) {
            (true, true, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(text, TCP_SCHEME) {
            (false, false, rest)
        } else if text.contains("://") {
            return Err(format!(
                "{text:?}: unknown scheme; use tls://HOST:PORT, quic://HOST:PORT, or HOST:PORT for plaintext"
            ));
        } else {
            (false, false, text)
        };
        let bad = || format!("{text:?} is not HOST:PORT (an IPv6 host in brackets: [::1]:7878)");
        // A port follows the last colon, unless that colon is inside an
        // IPv6 host's brackets (or there is none).
        let with_port = match rest.rsplit_once(':') {
            Some((host, _)) if !host.starts_with('[') || host.ends_with(']') => rest.to_owned(),
            _ => format!("{rest}:{DEFAULT_PORT}"),
        };
        let rest = with_port.as_str();
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        if port.parse::<u16>().is_err() || host.is_empty() || rest.contains('/') {
            return Err(bad());
        }
        let host = match host.strip_prefix('[') {
            Some(inner) => inner.strip_suffix(']').ok_or_else(bad)?,
            None if host.contains(':') => return Err(bad()),
            None => host,
        };
        Ok(ServerAddress {
            tls,
            quic,
            authority: rest.to_owned(),
            host: host.to_owned(),
        })
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// What the pinning verifier saw, for the error after a refused handshake.
pub(crate) type Seen = Arc<Mutex<Option<Fingerprint>>>;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration for `trust`; `seen` receives the fingerprint
/// of the certificate presented, when pinning.
pub(crate) fn client_config(trust: &Trust, seen: &Seen) -> Result<ClientConfig, ClientError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut config = match trust {
        Trust::SystemRoots => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                return Err(ClientError::Tls(format!(
                    "no system root certificates found{}; give a CA file or pin the fingerprint",
                    if why.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", why.join("; "))
                    }
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Roots(certs) => {
            let mut roots = RootCertStore::empty();
            for cert in certs {
                roots
                    .add(cert.clone())
                    .map_err(|e| ClientError::Tls(format!("CA certificate refused: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pinned(expected) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                expected: *expected,
                seen: Arc::clone(seen),
                provider,
            }))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// After a failed handshake: the certificate changed, when a pinned one was
/// expected and another was presented; None for any other failure.
pub(crate) fn refused(trust: &Trust, seen: &Seen) -> Option<ClientError> {
    let presented = (*parley_core::sync::lock(seen))?;
    match trust {
        Trust::Pinned(Some(expected)) if *expected != presented => Some(ClientError::CertificateChanged {
            expected: *expected,
            presented,
        }),
        _ => None,
    }
}

/// The name to check the certificate against (an IP address or a DNS name).
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, ClientError> {
    ServerName::try_from(host.to_owned()).map_err(|_| ClientError::Tls(format!("{host:?} is not a valid server name")))
}

/// Accepts exactly one end-entity certificate (or, with no expectation, any
/// one), and checks that the handshake was signed with its key.
#[derive(Debug)]
struct PinVerifier {
    /// The pinned fingerprint; None on first contact.
    expected: Option<Fingerprint>,
    /// Where the presented certificate's fingerprint is left.
    seen: Seen,
    /// For the signature checks.
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of(end_entity.as_ref());
        *parley_core::sync::lock(&self.seen) = Some(presented);
        match self.expected {
            Some(expected) if expected != presented => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_and_parse_in_every_usual_form() {
        let f = Fingerprint::of(b"certificate");
        let printed = f.to_string();
        assert!(
            printed.starts_with("SHA256:") && printed.len() == 7 + 32 * 3 - 1,
            "{printed}"
        );
        assert_eq!(Fingerprint::parse(&printed), Some(f));
        let bare = printed.trim_start_matches("SHA256:");
        assert_eq!(Fingerprint::parse(bare), Some(f));
        assert_eq!(Fingerprint::parse(&bare.replace(':', "").to_lowercase()), Some(f));
        assert_eq!(Fingerprint::parse(&format!("sha256:{bare}")), Some(f));
        assert_eq!(Fingerprint::parse("SHA256:AB"), None);
        assert_eq!(Fingerprint::parse(&"zz".repeat(32)), None);
    }

    #[test]
    fn server_addresses() {
        let tls = ServerAddress::parse("tls://chat.example:7878").unwrap();
        assert_eq!(
            (tls.tls, tls.authority.as_str(), tls.host.as_str()),
            (true, "chat.example:7878", "chat.example")
        );
        let quic = ServerAddress::parse("QUIC://chat.example:7443").unwrap();
        assert!(quic.quic && quic.tls, "{quic:?}");
        assert_eq!(
            (quic.authority.as_str(), quic.host.as_str()),
            ("chat.example:7443", "chat.example")
        );
        assert!(!tls.quic);
        let plain = ServerAddress::parse("127.0.0.1:7878").unwrap();
        assert!(!plain.tls && plain.host == "127.0.0.1");
        assert!(!ServerAddress::parse("TCP://h:1").unwrap().tls);
        let v6 = ServerAddress::parse("TLS://[::1]:7878").unwrap();
        assert_eq!(
            (v6.tls, v6.authority.as_str(), v6.host.as_str()),
            (true, "[::1]:7878", "::1")
        );
        // Without a port, the native protocol's.
        let bare = ServerAddress::parse("localhost").unwrap();
        assert_eq!((bare.tls, bare.authority.as_str()), (false, "localhost:7878"));
        assert_eq!(
            ServerAddress::parse("tls://chat.example").unwrap().authority,
            "chat.example:7878"
        );
        let v6 = ServerAddress::parse("[::1]").unwrap();
        assert_eq!((v6.authority.as_str(), v6.host.as_str()), ("[::1]:7878", "::1"));
        for bad in [
            "https://h:1",
            "",
            "h:port",
            ":1",
            "::1:7878",
            "tls://h:1/x",
            "[::1:7878",
        ] {
            assert!(ServerAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        assert!(matches!(certificates_from_pem(b"hello"), Err(ClientError::Tls(_))));
    }
}
