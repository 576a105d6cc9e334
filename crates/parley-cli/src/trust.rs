//! Which server to talk to and how far to trust it: the server address
//! (`tls://host:port` for TLS, `host:port` for plaintext) and, for TLS, the
//! system roots, a CA file (`--ca`), a fingerprint given by the user
//! (`--fingerprint`), or trust on first use (`--tofu`).
//!
//! Trust on first use works like SSH's known_hosts: the first connection to
//! a `host:port` pins the SHA-256 fingerprint of the certificate it
//! presents in `known_servers` in the config directory and says so; later
//! connections accept that certificate only, and a different one stops the
//! client with a loud warning and exit code 8 (see [`crate::exit`]). The
//! user accepts a new certificate by deleting the server's line.
//!
//! Several servers (`--server a:7878,b:7878`, the nodes of one cluster) are
//! tried in the order given, as libpq does with several hosts: the first is
//! preferred, and the client moves on to the next only when one cannot be
//! reached. Once one works it is tried first from then on ([`Servers`]),
//! so a client that moved stays where it landed. Every server gets the same
//! trust choice.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use parley_client::{Client, ClientError, Fingerprint, ServerAddress, Trust};

use crate::exit::{Exit, Failure};

/// File name, in the config directory, of the pinned certificates.
pub const KNOWN_SERVERS_FILE: &str = "known_servers";

/// What the first lines of a new known_servers file say.
const KNOWN_SERVERS_HEADER: &str = "\
# Certificates that parley pinned on first contact (--tofu), one server a line:
# HOST:PORT SHA256:FINGERPRINT
# Delete a server's line to accept its new certificate on the next connection.
";

/// How a TLS server's certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustMode {
    /// Not TLS.
    Plaintext,
    /// The operating system's root certificates.
    SystemRoots,
    /// The certificates in this PEM file.
    CaFile(PathBuf),
    /// Exactly this certificate.
    Fingerprint(Fingerprint),
    /// Whatever this file pinned on first contact (and pin it if none).
    FirstUse(PathBuf),
}

/// A server and how to trust it.
#[derive(Clone, Debug)]
pub struct Target {
    /// The address as the user wrote it, for messages.
    pub given: String,
    /// Parsed.
    pub address: ServerAddress,
    /// For TLS.
    pub trust: TrustMode,
}

/// The TLS choices of one source (flags and environment, or the file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustChoice {
    pub ca: Option<PathBuf>,
    pub tofu: bool,
    pub fingerprint: Option<String>,
}

impl TrustChoice {
    fn is_empty(&self) -> bool {
        self.ca.is_none() && !self.tofu && self.fingerprint.is_none()
    }
}

impl Target {
    /// Decides the target. The flags' trust choice replaces the file's as a
    /// whole; a choice from flags for a plaintext server is a usage error,
    /// while the file's is simply not used then. `config_dir` is where
    /// known_servers lives.
    pub fn resolve(
        server: &str,
        flags: &TrustChoice,
        file: &TrustChoice,
        config_dir: Option<&Path>,
    ) -> Result<Target, Failure> {
        let address = ServerAddress::parse(server).map_err(|e| Failure::usage(format!("--server: {e}")))?;
        let (choice, from_flags) = if flags.is_empty() { (file, false) } else { (flags, true) };
        let trust = if !address.tls {
            if from_flags {
                return Err(Failure::usage(format!(
                    "--ca, --tofu and --fingerprint are for TLS servers; write the server as tls://{} (or quic://)",
                    address.authority
                )));
            }
            TrustMode::Plaintext
        } else {
            let source = if from_flags { "" } else { " (in the config file)" };
            match (&choice.ca, choice.tofu, &choice.fingerprint) {
                (None, false, None) => TrustMode::SystemRoots,
                (Some(ca), false, None) => TrustMode::CaFile(ca.clone()),
                (None, false, Some(text)) => TrustMode::Fingerprint(Fingerprint::parse(text).ok_or_else(|| {
                    Failure::usage(format!(
                        "--fingerprint{source}: {text:?} is not a SHA-256 fingerprint (SHA256:AB:CD:... with 32 bytes)"
                    ))
                })?),
                (None, true, None) => match config_dir {
                    Some(dir) => TrustMode::FirstUse(dir.join(KNOWN_SERVERS_FILE)),
                    None => {
                        return Err(Failure::usage(
                            "--tofu needs a config directory for known_servers: set HOME or XDG_CONFIG_HOME",
                        ));
                    }
                },
                _ => {
                    return Err(Failure::usage(format!(
                        "--ca, --tofu and --fingerprint{source} exclude each other: choose one way to trust the server"
                    )));
                }
            }
        };
        Ok(Target {
            given: server.trim().to_owned(),
            address,
            trust,
        })
    }
}

/// The servers of one service, in the user's order of preference, and
/// which of them to try first.
#[derive(Debug)]
pub struct Servers {
    /// At least one.
    list: Vec<Target>,
    /// Index in `list` of the server tried first: the last that worked.
    current: AtomicUsize,
}

impl Clone for Servers {
    fn clone(&self) -> Servers {
        Servers {
            list: self.list.clone(),
            current: AtomicUsize::new(self.current.load(Ordering::Relaxed)),
        }
    }
}

impl Servers {
    /// Parses a comma-separated list of addresses, each decided as
    /// [`Target::resolve`] does with the same trust choice.
    pub fn resolve(
        servers: &str,
        flags: &TrustChoice,
        file: &TrustChoice,
        config_dir: Option<&Path>,
    ) -> Result<Servers, Failure> {
        let list = servers
            .split(',')
            .map(|one| {
                if one.trim().is_empty() {
                    return Err(Failure::usage(format!(
                        "--server: {servers:?} has an empty address; separate servers with single commas"
                    )));
                }
                Target::resolve(one, flags, file, config_dir)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Servers {
            list,
            current: AtomicUsize::new(0),
        })
    }

    /// Every server, in the user's order.
    pub fn all(&self) -> &[Target] {
        &self.list
    }

    /// The server tried first now.
    pub fn current(&self) -> &Target {
        &self.list[self.current.load(Ordering::Relaxed) % self.list.len()]
    }

    /// The servers in the order to try them now: the current one, then the
    /// ones after it in the list, round to the ones before it.
    pub fn in_turn(&self) -> impl Iterator<Item = (usize, &Target)> {
        let start = self.current.load(Ordering::Relaxed) % self.list.len();
        (0..self.list.len()).map(move |k| {
            let index = (start + k) % self.list.len();
            (index, &self.list[index])
        })
    }

    /// Remembers the server that worked, to try it first next time.
    pub fn settle(&self, index: usize) {
        self.current.store(index % self.list.len(), Ordering::Relaxed);
    }

    /// Moves past the current server (it is shutting down or went away
    /// after connecting), so the next attempt starts with the next one.
    pub fn pass_over_current(&self) {
        let next = (self.current.load(Ordering::Relaxed) + 1) % self.list.len();
        self.current.store(next, Ordering::Relaxed);
    }
}

/// Connects to the target, checking its certificate as its trust mode
/// says; under trust on first use, pins the certificate of a new server.
pub async fn connect(target: &Target) -> anyhow::Result<Client> {
    let authority = &target.address.authority;
    let trust = match &target.trust {
        TrustMode::Plaintext => return Ok(Client::connect(authority).await?),
        TrustMode::SystemRoots => Trust::SystemRoots,
        TrustMode::CaFile(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| Failure::usage(format!("cannot read the CA file {}: {e}", path.display())))?;
            let certs = parley_client::tls::certificates_from_pem(&pem)
                .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
            Trust::Roots(certs)
        }
        TrustMode::Fingerprint(expected) => Trust::Pinned(Some(*expected)),
        TrustMode::FirstUse(file) => return connect_first_use(&target.address, file).await,
    };
    Ok(dial(&target.address, &trust).await?)
}

/// Connects over TLS, or over QUIC for a `quic://` address (TLS 1.3 inside,
/// trusted the same way).
async fn dial(address: &ServerAddress, trust: &Trust) -> Result<Client, ClientError> {
    if address.quic {
        Client::connect_quic(&address.authority, trust).await
    } else {
        Client::connect_tls(&address.authority, trust).await
    }
}

/// Trust on first use against `file`. A server's certificate is pinned by
/// `host:port`, whether it was reached over TLS or QUIC.
async fn connect_first_use(address: &ServerAddress, file: &Path) -> anyhow::Result<Client> {
    let authority = address.authority.as_str();
    let known = KnownServers::load(file)?;
    match known.find(authority) {
        Some((line, pinned)) => match dial(address, &Trust::Pinned(Some(pinned))).await {
            Err(ClientError::CertificateChanged { expected, presented }) => {
                Err(certificate_changed(authority, file, line, expected, presented).into())
            }
            other => Ok(other?),
        },
        None => {
            let client = dial(address, &Trust::Pinned(None)).await?;
            let Some(presented) = client.server_fingerprint() else {
                anyhow::bail!("the server presented no certificate");
            };
            KnownServers::append(file, authority, presented)?;
            eprintln!(
                "parley: first contact with {authority}: its certificate {presented} is now pinned in {} \
                 (check it against the server's: `parleyd gen-cert` and parleyd's log print it)",
                file.display()
            );
            Ok(client)
        }
    }
}

/// The refusal when a pinned certificate changed, loud on purpose.
fn certificate_changed(
    authority: &str,
    file: &Path,
    line: usize,
    expected: Fingerprint,
    presented: Fingerprint,
) -> Failure {
    let file = file.display();
    Failure::new(
        Exit::CertificateChanged,
        "CERTIFICATE_CHANGED",
        format!(
            "refusing to connect to {authority}: its certificate has changed
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: THE SERVER'S CERTIFICATE HAS CHANGED!               @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
Someone may be intercepting this connection (a man-in-the-middle
attack), or the server's certificate was replaced.
The certificate {authority} presented is
  {presented}
but the one pinned for it in {file}:{line} is
  {expected}
Nothing was sent. If you know the certificate was replaced, remove
line {line} of {file} and connect again: the new certificate
will be pinned on first contact."
        ),
    )
}

/// The contents of a known_servers file.
#[derive(Debug, Default)]
pub struct KnownServers {
    /// (line number, host:port, fingerprint), in file order.
    entries: Vec<(usize, String, Fingerprint)>,
}

impl KnownServers {
    /// Reads the file; a missing one is empty. A malformed line is an
    /// error naming it, since ignoring it could silently unpin a server.
    pub fn load(path: &Path) -> anyhow::Result<KnownServers> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(KnownServers::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        KnownServers::parse(&text).map_err(|(line, why)| {
            Failure::new(
                Exit::Other,
                "KNOWN_SERVERS",
                format!("{}:{line}: {why}", path.display()),
            )
            .into()
        })
    }

    fn parse(text: &str) -> Result<KnownServers, (usize, String)> {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(server), Some(print), None) = (words.next(), words.next(), words.next()) else {
                return Err((number, "expected HOST:PORT SHA256:FINGERPRINT".into()));
            };
            let print = Fingerprint::parse(print).ok_or((number, format!("{print:?} is not a SHA-256 fingerprint")))?;
            entries.push((number, server.to_ascii_lowercase(), print));
        }
        Ok(KnownServers { entries })
    }

    /// The line and fingerprint pinned for `authority` (the first, if
    /// several were).
    pub fn find(&self, authority: &str) -> Option<(usize, Fingerprint)> {
        let authority = authority.to_ascii_lowercase();
        self.entries
            .iter()
            .find(|(_, server, _)| *server == authority)
            .map(|(line, _, print)| (*line, *print))
    }

    /// Adds a line to the file, creating it (and its directory) if needed.
    pub fn append(path: &Path, authority: &str, print: Fingerprint) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let fresh = file.metadata().map(|m| m.len() == 0).unwrap_or(false);
        let mut text = String::new();
        if fresh {
            text.push_str(KNOWN_SERVERS_HEADER);
        }
        text.push_str(&format!("{} {print}\n", authority.to_ascii_lowercase()));
        file.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(ca: Option<&str>, tofu: bool, fingerprint: Option<&str>) -> TrustChoice {
        TrustChoice {
            ca: ca.map(PathBuf::from),
            tofu,
            fingerprint: fingerprint.map(str::to_owned),
        }
    }

    #[test]
    fn the_trust_mode_follows_the_address_and_the_choice() {
        let none = TrustChoice::default();
        let dir = Path::new("/conf");
        let mode = |server: &str, flags: &TrustChoice, file: &TrustChoice| {
            Target::resolve(server, flags, file, Some(dir))
                .map(|t| t.trust)
                .map_err(|f| f.exit)
        };
        assert_eq!(mode("127.0.0.1:7878", &none, &none), Ok(TrustMode::Plaintext));
        assert_eq!(mode("tls://h:1", &none, &none), Ok(TrustMode::SystemRoots));
        assert_eq!(
            mode("tls://h:1", &choice(Some("ca.pem"), false, None), &none),
            Ok(TrustMode::CaFile("ca.pem".into()))
        );
        assert_eq!(
            mode("tls://h:1", &choice(None, true, None), &none),
            Ok(TrustMode::FirstUse(dir.join(KNOWN_SERVERS_FILE)))
        );
        let print = Fingerprint::of(b"x");
        assert_eq!(
            mode("tls://h:1", &choice(None, false, Some(&print.to_string())), &none),
            Ok(TrustMode::Fingerprint(print))
        );
        // The flags' choice replaces the file's; the file's is unused for
        // a plaintext server, a flag's is a mistake.
        assert_eq!(
            mode(
                "tls://h:1",
                &choice(Some("ca.pem"), false, None),
                &choice(None, true, None)
            ),
            Ok(TrustMode::CaFile("ca.pem".into()))
        );
        assert_eq!(mode("h:1", &none, &choice(None, true, None)), Ok(TrustMode::Plaintext));
        let usage = |r: Result<TrustMode, Exit>| r;
        assert_eq!(usage(mode("h:1", &choice(None, true, None), &none)), Err(Exit::Usage));
        assert_eq!(
            usage(mode("tls://h:1", &choice(Some("c"), true, None), &none)),
            Err(Exit::Usage)
        );
        assert_eq!(
            usage(mode("tls://h:1", &choice(None, false, Some("AB")), &none)),
            Err(Exit::Usage)
        );
        assert_eq!(usage(mode("https://h:1", &none, &none)), Err(Exit::Usage));
        assert!(Target::resolve("tls://h:1", &choice(None, true, None), &none, None).is_err());
    }

    #[test]
    fn known_servers_round_trip_and_refuse_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(KNOWN_SERVERS_FILE);
        assert!(KnownServers::load(&path).unwrap().find("h:1").is_none());
        let (a, b) = (Fingerprint::of(b"a"), Fingerprint::of(b"b"));
        KnownServers::append(&path, "Host.Example:1", a).unwrap();
        KnownServers::append(&path, "[::1]:2", b).unwrap();
        let known = KnownServers::load(&path).unwrap();
        let header_lines = KNOWN_SERVERS_HEADER.lines().count();
        assert_eq!(known.find("host.example:1"), Some((header_lines + 1, a)));
        assert_eq!(known.find("[::1]:2"), Some((header_lines + 2, b)));
        assert_eq!(known.find("host.example:2"), None);
        assert_eq!(KnownServers::parse("h:1\n").unwrap_err().0, 1);
        assert_eq!(KnownServers::parse("# c\n\nh:1 SHA256:zz\n").unwrap_err().0, 3);
    }
}
