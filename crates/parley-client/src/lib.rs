//! Async client for the Parley native protocol.
//!
//! One [`Client`] is one connection. A background task owns the socket: it
//! writes requests in the order they are made, matches replies to requests by
//! `request_id`, and hands pushes and server notices to [`Client::next_event`].
//! Requests may be issued concurrently from several tasks (`&self`); the
//! server answers them in any order, and this library pairs them up.
//!
//! The password never leaves the client: registration sends SCRAM keys
//! derived here, and login is a SCRAM exchange whose server signature is
//! verified before the login counts as done.
//!
//! [`Client::connect`] speaks plaintext; [`Client::connect_tls`] speaks TLS
//! and trusts the server as [`tls::Trust`] says (system roots, a CA, or a
//! pinned certificate fingerprint); [`Client::connect_quic`] speaks the same
//! protocol over QUIC, trusted the same way.
#![forbid(unsafe_code)]

pub mod files;
pub mod p2p;
pub mod quic;
pub mod tls;

use parley_core::sync::lock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use parley_core::Mechanism;
use parley_core::scram::{ClientExchange, StoredCredentials, random_salt};
use parley_proto::v1::{self, client_frame, server_frame};
use parley_proto::{ClientFrame, ServerFrame, decode_frame, encode_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

pub use parley_proto::ErrorCode;
pub use parley_proto::v1::{AccountEntry, AccountPage, Message, Subscription, Welcome};
pub use tls::{Fingerprint, ServerAddress, Trust};

/// Frame limit the client accepts from a server before it has said its own.
const CLIENT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// Requests queued for the writer before callers wait.
const REQUEST_QUEUE: usize = 1024;
/// Server events queued for the application before the reader stops reading
/// (which in turn makes the server hold pushes back).
const EVENT_QUEUE: usize = 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error. With `retry_after_ms`, the text
    /// says when to try again.
    #[error("{message} ({}){}", code.as_str_name(), retry_hint(*retry_after_ms))]
    Server {
        code: ErrorCode,
        message: String,
        retry_after_ms: u32,
    },
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The server said something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection is gone.
    #[error("disconnected{}", .0.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Disconnected(Option<String>),
    /// TLS failed: the certificate is not trusted, the server does not
    /// speak TLS, or the TLS settings are unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server's certificate did not pass the checks of the trust
    /// chosen (an unknown issuer, another name, expired).
    #[error("TLS: the server's certificate is not trusted: {0}")]
    NotTrusted(String),
    /// What answered is not the native protocol as asked for: a TLS
    /// server reached without TLS, a plaintext one with it, or an HTTP
    /// server. The text says which.
    #[error("{0}")]
    WrongProtocol(WrongProtocol),
    /// The server presented a certificate other than the pinned one.
    #[error("the server's certificate is {presented}, not the pinned {expected}")]
    CertificateChanged {
        expected: Fingerprint,
        presented: Fingerprint,
    },
}

impl ClientError {
    /// The server's error code, if the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// What answered instead of the native protocol (see
/// [`ClientError::WrongProtocol`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrongProtocol {
    /// A TLS server, reached without TLS.
    Tls,
    /// A plaintext server (or anything not TLS), reached with TLS.
    Plaintext,
    /// An HTTP server (such as parleyd's web and API port).
    Http,
}

impl std::fmt::Display for WrongProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WrongProtocol::Tls => "the server speaks TLS on this port",
            WrongProtocol::Plaintext => "the server does not speak TLS on this port",
            WrongProtocol::Http => "this port speaks HTTP (a web or HTTP API port), not the native protocol",
        })
    }
}

/// "; try again in 3 s" for a server's retry hint, "" without one.
pub fn retry_hint(retry_after_ms: u32) -> String {
    if retry_after_ms == 0 {
        return String::new();
    }
    let secs = u64::from(retry_after_ms).div_ceil(1000);
    if secs < 120 {
        format!("; try again in {secs} s")
    } else {
        format!("; try again in {} min", secs.div_ceil(60))
    }
}

fn login_info(ok: v1::AuthOk) -> LoginInfo {
    LoginInfo {
        name: ok.name,
        user_id: ok.user_id,
        session_id: ok.session_id,
        unread: ok.unread,
        last_seq: ok.last_seq,
        resume_token: ok.resume_token,
        resume_expires_ms: ok.resume_expires_ms,
    }
}

/// Most times a request refused with BUSY is sent again.
pub const BUSY_RETRIES: u32 = 5;
/// Longest wait before a retry, whatever the server's hint.
const MAX_RETRY_WAIT_MS: u32 = 5_000;
/// Keep-alive pings go out this many times per keep-alive period.
const PINGS_PER_KEEPALIVE: u32 = 3;
/// How long a plaintext connection waits for the Welcome before it sends a
/// Ping. A Parley server greets at once; a TLS or HTTP server says nothing
/// until the client speaks, and the Ping makes it answer (an alert, an
/// HTTP error) or close, so a wrong address fails at once instead of
/// waiting for a timeout.
pub const PROBE_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether a login makes the account appear online.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Visibility {
    /// The session counts for presence: watchers see the account online.
    #[default]
    Online,
    /// The session does not count for presence (`AuthStart.quiet`): for
    /// one-shot commands, which should not flash the account online.
    Quiet,
}

impl Visibility {
    fn quiet(self) -> bool {
        self == Visibility::Quiet
    }
}

/// Something the server sent on its own.
#[derive(Debug, Clone)]
pub enum Event {
    /// Live delivery; acknowledge with [`Client::ack`].
    Messages(Vec<Message>),
    /// The server is closing the connection, and why.
    Goodbye { code: ErrorCode, message: String },
    /// A contact's first session came online, or its last went away.
    Presence { name: String, online: bool },
    /// `from` asks to see this account's presence.
    PresenceRequest { from: String },
    /// `name` approved this account's request to see its presence.
    PresenceApproved { name: String },
    /// The connection ended.
    Disconnected,
}

/// What a successful login returns.
#[derive(Debug, Clone)]
pub struct LoginInfo {
    pub name: String,
    pub user_id: u64,
    pub session_id: u64,
    pub unread: u64,
    pub last_seq: u64,
    /// Secret for [`Client::resume`] after a reconnect. A resume returns a
    /// new one and ends the token it used: keep the newest.
    pub resume_token: Vec<u8>,
    /// When the token stops working, ms since the Unix epoch.
    pub resume_expires_ms: u64,
}

/// The server's receipt for a stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    pub client_msg_id: String,
    pub message_id: u64,
    pub seq: u64,
    pub timestamp_ms: u64,
    pub duplicate: bool,
    /// The server's filter held the message in the recipient's spam
    /// folder: stored, not delivered (`message_id` is its spam-folder id).
    pub held: bool,
}

/// The receipt a `Sent` reply carries (for a message or a file offer).
fn receipt(b: server_frame::Body) -> std::result::Result<SendReceipt, server_frame::Body> {
    match b {
        server_frame::Body::Sent(s) => Ok(SendReceipt {
            client_msg_id: s.client_msg_id,
            message_id: s.message_id,
            seq: s.seq,
            timestamp_ms: s.timestamp_ms,
            duplicate: s.duplicate,
            held: s.held,
        }),
        other => Err(other),
    }
}

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<ServerFrame>>>>>;

/// One connection to a Parley server.
pub struct Client {
    /// Encoded requests, for the writer task.
    requests: mpsc::Sender<BytesMut>,
    /// Replies awaited, by request id; None once the connection is gone.
    pending: Pending,
    /// Source of request ids.
    next_id: AtomicU64,
    /// Pushes and notices from the server.
    events: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    /// File-transfer frames from the server (see [`files`]).
    file_events: tokio::sync::Mutex<mpsc::Receiver<files::FileEvent>>,
    /// What the server said when we connected.
    welcome: Welcome,
    /// Fingerprint of the server's certificate, over TLS.
    server_fingerprint: Option<Fingerprint>,
    /// The QUIC endpoint, over QUIC. The connection itself lives as long as
    /// its stream's halves, held by the reader and writer tasks, so it ends
    /// as a TCP connection would.
    quic: Option<quinn::Endpoint>,
}

/// An idempotency key for a send: 32 hex digits, the milliseconds since the
/// Unix epoch (48 bits) then 80 random bits, so that the keys one sender
/// makes increase with time. The server indexes them per sender: keys that
/// increase land on the last page of the sender's index, where purely
/// random keys would each dirty a page of their own, a page write per
/// message (SQLite relayed 3.5 times slower with them: docs/BENCHMARKS.md, "Client ids").
pub fn new_client_msg_id() -> String {
    use rand::RngCore;
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut random = [0u8; 10];
    rand::rng().fill_bytes(&mut random);
    let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{:012x}{random}", millis & 0xffff_ffff_ffff)
}

impl Client {
    /// Connects and reads the server's Welcome.
    pub async fn connect(addr: &str) -> Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        Client::start(reader, writer, None, true).await
    }

    /// Connects over TLS to `addr` (`host:port`), trusting the server as
    /// `trust` says, and reads the server's Welcome. The certificate must
    /// name `host` unless the trust is a pinned fingerprint.
    pub async fn connect_tls(addr: &str, trust: &Trust) -> Result<Client> {
        let address = ServerAddress::parse(addr).map_err(ClientError::Tls)?;
        let name = tls::server_name(&address.host)?;
        let seen = tls::Seen::default();
        let config = tls::client_config(trust, &seen)?;
        let stream = TcpStream::connect(&address.authority).await?;
        stream.set_nodelay(true)?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let stream = match connector.connect(name, stream).await {
            Ok(stream) => stream,
            Err(e) => return Err(tls::refused(trust, &seen).unwrap_or_else(|| handshake_error(e))),
        };
        let fingerprint = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| Fingerprint::of(cert.as_ref()));
        let (reader, writer) = tokio::io::split(stream);
        Client::start(reader, writer, fingerprint, false).await
    }

    /// Connects over QUIC to `addr` (`host:port`, UDP), trusting the server
    /// as `trust` says, and reads the server's Welcome.
    pub async fn connect_quic(addr: &str, trust: &Trust) -> Result<Client> {
        let address = ServerAddress::parse(addr).map_err(ClientError::Tls)?;
        let connected = quic::connect(&address, trust).await?;
        let mut client = Client::start(connected.reader, connected.writer, connected.fingerprint, false).await?;
        client.quic = Some(connected.endpoint);
        Ok(client)
    }

    /// Moves a QUIC connection to a new local socket, as a client whose
    /// address changed would: the session goes on over the new path (the
    /// server validates it) without a new connection or login. An error
    /// over TCP or TLS, which cannot move.
    pub fn rebind_quic(&self, socket: std::net::UdpSocket) -> Result<()> {
        let endpoint = self
            .quic
            .as_ref()
            .ok_or_else(|| ClientError::Protocol("only a QUIC connection can move to a new socket".into()))?;
        endpoint.rebind(socket)?;
        Ok(())
    }

    /// The local address of a QUIC connection's socket; None over TCP.
    pub fn quic_local_addr(&self) -> Option<std::net::SocketAddr> {
        self.quic.as_ref().and_then(|endpoint| endpoint.local_addr().ok())
    }

    /// Connects as `server` says: plaintext, TLS (`tls://`) or QUIC
    /// (`quic://`), with `trust` for TLS and QUIC (system roots when None).
    pub async fn connect_to(server: &ServerAddress, trust: Option<&Trust>) -> Result<Client> {
        if server.quic {
            Client::connect_quic(&server.authority, trust.unwrap_or(&Trust::SystemRoots)).await
        } else if server.tls {
            Client::connect_tls(&server.authority, trust.unwrap_or(&Trust::SystemRoots)).await
        } else {
            Client::connect(&server.authority).await
        }
    }

    /// SHA-256 of the certificate the server presented; None over plaintext.
    pub fn server_fingerprint(&self) -> Option<Fingerprint> {
        self.server_fingerprint
    }

    /// Reads the Welcome and starts the connection's reader and writer.
    /// With `probe`, a peer silent for [`PROBE_AFTER`] gets a Ping, and an
    /// answer that is not the native protocol is recognised.
    async fn start<R, W>(
        mut reader: R,
        mut writer: W,
        server_fingerprint: Option<Fingerprint>,
        probe: bool,
    ) -> Result<Client>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut input = BytesMut::with_capacity(4096);
        let mut probed = !probe;
        let welcome = loop {
            match decode_frame::<ServerFrame>(&mut input, CLIENT_MAX_FRAME_BYTES) {
                Ok(Some(ServerFrame {
                    body: Some(server_frame::Body::Welcome(w)),
                    ..
                })) => break w,
                Ok(Some(ServerFrame {
                    body: Some(server_frame::Body::Error(e)),
                    ..
                })) => {
                    return Err(server_error(e));
                }
                Ok(Some(other)) => return Err(ClientError::Protocol(format!("expected Welcome, got {other:?}"))),
                Ok(None) => {
                    let read = if probed {
                        reader.read_buf(&mut input).await
                    } else {
                        // Reading is cancel-safe: a read cut by the timeout took nothing.
                        match tokio::time::timeout(PROBE_AFTER, reader.read_buf(&mut input)).await {
                            Ok(read) => read,
                            Err(_) => {
                                probed = true;
                                writer.write_all(&ping_frame()).await?;
                                continue;
                            }
                        }
                    };
                    match read {
                        Ok(0) => {
                            return Err(recognise(&input)
                                .map(ClientError::WrongProtocol)
                                .unwrap_or_else(|| ClientError::Disconnected(Some("closed before Welcome".into()))));
                        }
                        Ok(_) => {}
                        Err(e) => return Err(recognise(&input).map_or(ClientError::Io(e), ClientError::WrongProtocol)),
                    }
                }
                Err(e) => {
                    return Err(recognise(&input)
                        .map_or_else(|| ClientError::Protocol(e.to_string()), ClientError::WrongProtocol));
                }
            }
        };
        if welcome.protocol_version != parley_proto::PROTOCOL_VERSION {
            return Err(ClientError::Protocol(format!(
                "server speaks protocol version {}, this client {}",
                welcome.protocol_version,
                parley_proto::PROTOCOL_VERSION
            )));
        }
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (requests, request_rx) = mpsc::channel(REQUEST_QUEUE);
        let (event_tx, events) = mpsc::channel(EVENT_QUEUE);
        let (file_tx, file_events) = mpsc::channel(files::EVENT_QUEUE);
        let ping_every = (welcome.keepalive_secs > 0)
            .then(|| std::time::Duration::from_secs(u64::from(welcome.keepalive_secs)) / PINGS_PER_KEEPALIVE);
        tokio::spawn(write_loop(writer, request_rx, ping_every));
        tokio::spawn(read_loop(reader, input, Arc::clone(&pending), event_tx, file_tx));
        Ok(Client {
            requests,
            pending,
            next_id: AtomicU64::new(1),
            events: tokio::sync::Mutex::new(events),
            file_events: tokio::sync::Mutex::new(file_events),
            welcome,
            server_fingerprint,
            quic: None,
        })
    }

    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Sends one request and waits for its reply frame, whatever it is.
    pub async fn request(&self, body: client_frame::Body) -> Result<ServerFrame> {
        let reply = self.begin(body).await?;
        reply.await.map_err(|_| ClientError::Disconnected(None))
    }

    /// Sends one request; its reply frame arrives on the receiver. Requests
    /// begun one after the other reach the server in that order, so a
    /// caller can keep several in flight (pipelining).
    pub async fn begin(&self, body: client_frame::Body) -> Result<oneshot::Receiver<ServerFrame>> {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match lock(&self.pending).as_mut() {
            Some(map) => map.insert(request_id, tx),
            None => return Err(ClientError::Disconnected(None)),
        };
        let mut buf = BytesMut::new();
        encode_frame(
            &ClientFrame {
                request_id,
                body: Some(body),
            },
            &mut buf,
            CLIENT_MAX_FRAME_BYTES,
        )
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.send_raw(buf).await?;
        Ok(rx)
    }

    /// Writes bytes to the server as they are (for tests of bad input).
    pub async fn send_raw(&self, bytes: BytesMut) -> Result<()> {
        self.requests
            .send(bytes)
            .await
            .map_err(|_| ClientError::Disconnected(None))
    }

    /// Sends a request and unwraps the expected reply body.
    /// Every request of this library is safe to repeat after BUSY (the
    /// server did nothing), so it is sent again after the server's
    /// retry-after hint, up to [`BUSY_RETRIES`] times.
    async fn call<T>(
        &self,
        body: client_frame::Body,
        pick: impl FnOnce(server_frame::Body) -> std::result::Result<T, server_frame::Body>,
    ) -> Result<T> {
        let mut attempt = 0;
        let frame = loop {
            let frame = self.request(body.clone()).await?;
            match &frame.body {
                Some(server_frame::Body::Error(e)) if e.code == ErrorCode::Busy as i32 && attempt < BUSY_RETRIES => {
                    attempt += 1;
                    let wait = e.retry_after_ms.clamp(1, MAX_RETRY_WAIT_MS);
                    tokio::time::sleep(std::time::Duration::from_millis(u64::from(wait))).await;
                }
                _ => break frame,
            }
        };
        match frame.body {
            Some(server_frame::Body::Error(e)) => Err(server_error(e)),
            // Formatted only when it is wrong: replies can be large.
            Some(body) => pick(body).map_err(|other| ClientError::Protocol(format!("unexpected reply {other:?}"))),
            None => Err(ClientError::Protocol("empty reply".into())),
        }
    }

    /// SCRAM credentials for `password`, with the server's preferred
    /// mechanism and iterations (the password never leaves the client).
    fn derive_credentials(&self, password: &str) -> Result<StoredCredentials> {
        let mechanism = self
            .welcome
            .mechanisms
            .iter()
            .find_map(|m| Mechanism::from_name(m))
            .ok_or_else(|| ClientError::Protocol("server offers no known SCRAM mechanism".into()))?;
        let iterations = self
            .welcome
            .scram_iterations
            .max(parley_core::limits::MIN_SCRAM_ITERATIONS);
        Ok(StoredCredentials::derive(
            mechanism,
            password,
            &random_salt(),
            iterations,
        ))
    }

    /// Creates an account. The password is turned into SCRAM keys here.
    pub async fn register(&self, name: &str, password: &str) -> Result<v1::Registered> {
        self.register_with_invite(name, password, "").await
    }

    /// Creates an account with an invite code (`parleyd ctl invite`), for
    /// a server that registers by invitation; "" for none.
    pub async fn register_with_invite(&self, name: &str, password: &str, invite: &str) -> Result<v1::Registered> {
        let creds = self.derive_credentials(password)?;
        let mechanism = creds.mechanism;
        self.call(
            client_frame::Body::Register(v1::Register {
                name: name.to_owned(),
                mechanism: mechanism.name().to_owned(),
                salt: creds.salt,
                iterations: creds.iterations,
                stored_key: creds.stored_key,
                server_key: creds.server_key,
                invite: invite.to_owned(),
            }),
            |b| match b {
                server_frame::Body::Registered(r) => Ok(r),
                other => Err(other),
            },
        )
        .await
    }

    /// The first SCRAM step, as a login (`AuthStart`) or inside a session
    /// (`Reauth`): returns the exchange and the client-final-message.
    async fn scram_start(
        &self,
        name: &str,
        password: &str,
        start: impl FnOnce(Vec<u8>) -> client_frame::Body,
    ) -> Result<(ClientExchange, String)> {
        let mut exchange = ClientExchange::new(name, password);
        let challenge = self
            .call(start(exchange.client_first().into_bytes()), |b| match b {
                server_frame::Body::AuthChallenge(c) => Ok(c),
                other => Err(other),
            })
            .await?;
        let mechanism = Mechanism::from_name(&challenge.mechanism)
            .ok_or_else(|| ClientError::Protocol(format!("unknown mechanism {:?}", challenge.mechanism)))?;
        let client_final = exchange
            .client_final(mechanism, &challenge.server_first)
            .map_err(|e| ClientError::Protocol(e.message))?;
        Ok((exchange, client_final))
    }

    /// Logs in with SCRAM and checks the server's signature.
    pub async fn login(&self, name: &str, password: &str) -> Result<LoginInfo> {
        self.login_with(name, password, Visibility::Online).await
    }

    /// [`Client::login`], choosing whether the session counts for presence.
    pub async fn login_with(&self, name: &str, password: &str, visibility: Visibility) -> Result<LoginInfo> {
        let (exchange, client_final) = self
            .scram_start(name, password, |client_first| {
                client_frame::Body::AuthStart(v1::AuthStart {
                    client_first,
                    quiet: visibility.quiet(),
                })
            })
            .await?;
        let ok = self
            .call(
                client_frame::Body::AuthContinue(v1::AuthContinue {
                    client_final: client_final.into_bytes(),
                }),
                |b| match b {
                    server_frame::Body::AuthOk(ok) => Ok(ok),
                    other => Err(other),
                },
            )
            .await?;
        exchange
            .verify_server_final(&ok.server_final)
            .map_err(|e| ClientError::Protocol(e.message))?;
        Ok(login_info(ok))
    }

    /// Logs in again with the resume token of an earlier login.
    pub async fn resume(&self, token: &[u8]) -> Result<LoginInfo> {
        self.resume_with(token, Visibility::Online).await
    }

    /// [`Client::resume`], choosing whether the session counts for presence.
    pub async fn resume_with(&self, token: &[u8], visibility: Visibility) -> Result<LoginInfo> {
        let ok = self
            .call(
                client_frame::Body::Resume(v1::Resume {
                    token: token.to_vec(),
                    quiet: visibility.quiet(),
                }),
                |b| match b {
                    server_frame::Body::AuthOk(ok) => Ok(ok),
                    other => Err(other),
                },
            )
            .await?;
        Ok(login_info(ok))
    }

    /// Adds `name` to the contacts and asks to see its presence; returns
    /// the contact list afterwards.
    pub async fn add_contact(&self, name: &str) -> Result<Vec<AccountEntry>> {
        self.contacts(client_frame::Body::AddContact(v1::AddContact { name: name.to_owned() }))
            .await
    }

    /// Stops following `name`; returns the contact list afterwards.
    pub async fn remove_contact(&self, name: &str) -> Result<Vec<AccountEntry>> {
        self.contacts(client_frame::Body::RemoveContact(v1::RemoveContact {
            name: name.to_owned(),
        }))
        .await
    }

    /// The contacts with their online state.
    pub async fn list_contacts(&self) -> Result<Vec<AccountEntry>> {
        self.contacts(client_frame::Body::ListContacts(v1::ListContacts {}))
            .await
    }

    /// Lets `name` see this account's presence (it must have asked);
    /// returns the requests still waiting.
    pub async fn approve_presence(&self, name: &str) -> Result<Vec<String>> {
        self.presence_requests_after(client_frame::Body::ApprovePresence(v1::ApprovePresence {
            name: name.to_owned(),
        }))
        .await
    }

    /// Refuses `name`'s request, or takes back an approval; returns the
    /// requests still waiting.
    pub async fn deny_presence(&self, name: &str) -> Result<Vec<String>> {
        self.presence_requests_after(client_frame::Body::DenyPresence(v1::DenyPresence {
            name: name.to_owned(),
        }))
        .await
    }

    /// The accounts waiting for this account's answer.
    pub async fn presence_requests(&self) -> Result<Vec<String>> {
        self.presence_requests_after(client_frame::Body::ListPresenceRequests(v1::ListPresenceRequests {}))
            .await
    }

    async fn presence_requests_after(&self, body: client_frame::Body) -> Result<Vec<String>> {
        self.call(body, |b| match b {
            server_frame::Body::PresenceRequests(r) => Ok(r.names),
            other => Err(other),
        })
        .await
    }

    /// Withdraws the request for `name`'s presence, or stops seeing it;
    /// returns the contact list afterwards.
    pub async fn cancel_presence(&self, name: &str) -> Result<Vec<AccountEntry>> {
        self.contacts(client_frame::Body::CancelPresence(v1::CancelPresence {
            name: name.to_owned(),
        }))
        .await
    }

    /// Blocks `name`; returns the accounts blocked afterwards.
    pub async fn block(&self, name: &str) -> Result<Vec<String>> {
        self.blocked_after(client_frame::Body::Block(v1::Block { name: name.to_owned() }))
            .await
    }

    /// Ends a block of `name`; returns the accounts blocked afterwards.
    pub async fn unblock(&self, name: &str) -> Result<Vec<String>> {
        self.blocked_after(client_frame::Body::Unblock(v1::Unblock { name: name.to_owned() }))
            .await
    }

    /// The accounts this account blocks.
    pub async fn list_blocked(&self) -> Result<Vec<String>> {
        self.blocked_after(client_frame::Body::ListBlocked(v1::ListBlocked {}))
            .await
    }

    /// Whether this account takes messages from the web pager, after
    /// setting it when `accept` is given.
    pub async fn pager(&self, accept: Option<bool>) -> Result<bool> {
        self.call(client_frame::Body::Pager(v1::Pager { accept }), |b| match b {
            server_frame::Body::Pager(r) => Ok(r.accept),
            other => Err(other),
        })
        .await
    }

    async fn blocked_after(&self, body: client_frame::Body) -> Result<Vec<String>> {
        self.call(body, |b| match b {
            server_frame::Body::Blocked(r) => Ok(r.names),
            other => Err(other),
        })
        .await
    }

    async fn contacts(&self, body: client_frame::Body) -> Result<Vec<AccountEntry>> {
        self.call(body, |b| match b {
            server_frame::Body::Contacts(c) => Ok(c.contacts),
            other => Err(other),
        })
        .await
    }

    /// Sends a message with a fresh idempotency key.
    pub async fn send(&self, to: &str, body: &str) -> Result<SendReceipt> {
        self.send_with_id(to, &new_client_msg_id(), body).await
    }

    /// Sends a message with the caller's idempotency key; resending the same
    /// key returns the first receipt with `duplicate` set.
    pub async fn send_with_id(&self, to: &str, client_msg_id: &str, body: &str) -> Result<SendReceipt> {
        self.call(
            client_frame::Body::Send(v1::SendMessage {
                to: to.to_owned(),
                client_msg_id: client_msg_id.to_owned(),
                body: body.to_owned(),
            }),
            receipt,
        )
        .await
    }

    /// Messages with seq > `after_seq`, oldest first; `more` says whether
    /// another page follows.
    pub async fn fetch(&self, after_seq: u64, limit: u32, include_acked: bool) -> Result<v1::MessageBatch> {
        self.call(
            client_frame::Body::Fetch(v1::Fetch {
                after_seq,
                limit,
                include_acked,
            }),
            |b| match b {
                server_frame::Body::Messages(m) => Ok(m),
                other => Err(other),
            },
        )
        .await
    }

    /// Acknowledges every message up to `up_to_seq` and each of `seqs`.
    pub async fn ack(&self, up_to_seq: u64, seqs: Vec<u64>) -> Result<v1::Acked> {
        self.call(client_frame::Body::Ack(v1::Ack { up_to_seq, seqs }), |b| match b {
            server_frame::Body::Acked(a) => Ok(a),
            other => Err(other),
        })
        .await
    }

    /// Deletes messages from one's own mailbox.
    pub async fn delete_messages(&self, message_ids: Vec<u64>) -> Result<v1::Deleted> {
        self.call(
            client_frame::Body::DeleteMessages(v1::DeleteMessages { message_ids }),
            |b| match b {
                server_frame::Body::Deleted(d) => Ok(d),
                other => Err(other),
            },
        )
        .await
    }

    /// Held messages of the spam folder with id > `after_id`, oldest first.
    pub async fn list_held(&self, after_id: u64, limit: u32) -> Result<v1::HeldBatch> {
        self.call(
            client_frame::Body::ListHeld(v1::ListHeld { after_id, limit }),
            |b| match b {
                server_frame::Body::Held(h) => Ok(h),
                other => Err(other),
            },
        )
        .await
    }

    /// "Not spam": moves held messages into the mailbox.
    pub async fn release_held(&self, ids: Vec<u64>) -> Result<v1::Released> {
        self.call(client_frame::Body::ReleaseHeld(v1::ReleaseHeld { ids }), |b| match b {
            server_frame::Body::Released(r) => Ok(r),
            other => Err(other),
        })
        .await
    }

    /// Deletes held messages; with `spam`, reports them as spam first.
    pub async fn drop_held(&self, ids: Vec<u64>, spam: bool) -> Result<v1::HeldDropped> {
        self.call(client_frame::Body::DropHeld(v1::DropHeld { ids, spam }), |b| match b {
            server_frame::Body::HeldDropped(d) => Ok(d),
            other => Err(other),
        })
        .await
    }

    /// Reports mailbox messages as spam: they move to the spam folder.
    pub async fn report_spam(&self, seqs: Vec<u64>) -> Result<v1::SpamReported> {
        self.call(client_frame::Body::ReportSpam(v1::ReportSpam { seqs }), |b| match b {
            server_frame::Body::SpamReported(r) => Ok(r),
            other => Err(other),
        })
        .await
    }

    /// One page of accounts matching `pattern`.
    pub async fn list_accounts(&self, pattern: &str, after: &str, limit: u32) -> Result<AccountPage> {
        self.call(
            client_frame::Body::ListAccounts(v1::ListAccounts {
                pattern: pattern.to_owned(),
                after: after.to_owned(),
                limit,
            }),
            |b| match b {
                server_frame::Body::Accounts(p) => Ok(p),
                other => Err(other),
            },
        )
        .await
    }

    /// Starts live delivery of unacknowledged messages after `after_seq`.
    pub async fn subscribe(&self, after_seq: u64) -> Result<v1::Subscribed> {
        self.call(
            client_frame::Body::Subscribe(v1::Subscribe { after_seq }),
            |b| match b {
                server_frame::Body::Subscribed(s) => Ok(s),
                other => Err(other),
            },
        )
        .await
    }

    /// Proves `password` again inside the session (Reauth); returns the
    /// exchange (to check the server's signature) and the proof to send
    /// with the request it authorises.
    async fn reauth(&self, name: &str, password: &str) -> Result<(ClientExchange, String)> {
        self.scram_start(name, password, |client_first| {
            client_frame::Body::Reauth(v1::Reauth { client_first })
        })
        .await
    }

    /// Deletes the logged-in account `name`, proving its password again.
    pub async fn delete_account(&self, name: &str, password: &str) -> Result<()> {
        let (_, client_final) = self.reauth(name, password).await?;
        self.call(
            client_frame::Body::DeleteAccount(v1::DeleteAccount {
                client_final: client_final.into_bytes(),
            }),
            |b| match b {
                server_frame::Body::AccountDeleted(_) => Ok(()),
                other => Err(other),
            },
        )
        .await
    }

    /// Changes the password of the logged-in account `name` from `old` to
    /// `new` (both stay here: the server gets a SCRAM proof of the old one
    /// and credentials derived from the new one). Every other session of
    /// the account ends; returns this session's new resume token.
    pub async fn change_password(&self, name: &str, old: &str, new: &str) -> Result<Vec<u8>> {
        let (exchange, client_final) = self.reauth(name, old).await?;
        let creds = self.derive_credentials(new)?;
        let changed = self
            .call(
                client_frame::Body::ChangePassword(v1::ChangePassword {
                    client_final: client_final.into_bytes(),
                    mechanism: creds.mechanism.name().to_owned(),
                    salt: creds.salt,
                    iterations: creds.iterations,
                    stored_key: creds.stored_key,
                    server_key: creds.server_key,
                }),
                |b| match b {
                    server_frame::Body::PasswordChanged(p) => Ok(p),
                    other => Err(other),
                },
            )
            .await?;
        exchange
            .verify_server_final(&changed.server_final)
            .map_err(|e| ClientError::Protocol(e.message))?;
        Ok(changed.resume_token)
    }

    /// Logs out on every device: every session of the account ends and
    /// every resume token stops working.
    pub async fn logout_all(&self) -> Result<()> {
        self.call(client_frame::Body::LogoutAll(v1::LogoutAll {}), |b| match b {
            server_frame::Body::LoggedOut(_) => Ok(()),
            other => Err(other),
        })
        .await
    }

    pub async fn logout(&self) -> Result<()> {
        self.call(client_frame::Body::Logout(v1::Logout {}), |b| match b {
            server_frame::Body::LoggedOut(_) => Ok(()),
            other => Err(other),
        })
        .await
    }

    pub async fn ping(&self) -> Result<()> {
        self.call(client_frame::Body::Ping(v1::Ping { nonce: 1 }), |b| match b {
            server_frame::Body::Pong(_) => Ok(()),
            other => Err(other),
        })
        .await
    }

    /// The next push or notice; `None` once the connection has ended and
    /// every event was taken.
    pub async fn next_event(&self) -> Option<Event> {
        self.events.lock().await.recv().await
    }
}

/// What a peer that is not a Parley server sent first, if it is
/// recognisable: an HTTP status line, or a TLS record (an alert or a
/// handshake).
fn recognise(input: &[u8]) -> Option<WrongProtocol> {
    if input.starts_with(b"HTTP/") {
        return Some(WrongProtocol::Http);
    }
    match input {
        [0x15 | 0x16, 0x03, minor, ..] if *minor <= 0x04 => Some(WrongProtocol::Tls),
        _ => None,
    }
}

/// A keep-alive Ping; request_id 0, so its Pong is not matched to anything.
fn ping_frame() -> BytesMut {
    let mut buf = BytesMut::new();
    let ping = ClientFrame {
        request_id: 0,
        body: Some(client_frame::Body::Ping(v1::Ping { nonce: 0 })),
    };
    // A Ping is a few bytes; it always fits.
    let _ = encode_frame(&ping, &mut buf, CLIENT_MAX_FRAME_BYTES);
    buf
}

fn server_error(e: v1::Error) -> ClientError {
    ClientError::Server {
        code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
        message: match e.reason.as_str() {
            "" => e.message,
            reason => format!("{} [reason: {reason}]", e.message),
        },
        retry_after_ms: e.retry_after_ms,
    }
}

/// A failed TLS handshake: a TLS problem when rustls says so (an
/// untrusted certificate, a server that does not speak TLS: its first
/// bytes are no TLS record), otherwise the I/O error it is (refused,
/// reset), which is worth retrying.
fn handshake_error(e: std::io::Error) -> ClientError {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(why)) => ClientError::NotTrusted(format!("{why:?}")),
        Some(rustls::Error::InvalidMessage(_)) => ClientError::WrongProtocol(WrongProtocol::Plaintext),
        Some(other) => ClientError::Tls(other.to_string()),
        None => ClientError::Io(e),
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut requests: mpsc::Receiver<BytesMut>,
    ping_every: Option<std::time::Duration>,
) {
    let mut out = BytesMut::new();
    loop {
        let next = match ping_every {
            // Quiet for a while: tell the server we are still here.
            Some(every) => match tokio::time::timeout(every, requests.recv()).await {
                Ok(next) => next,
                Err(_) => Some(ping_frame()),
            },
            None => requests.recv().await,
        };
        let Some(first) = next else { break };
        out.extend_from_slice(&first);
        // Coalesce whatever else is queued into one write.
        while out.len() < 64 * 1024 {
            match requests.try_recv() {
                Ok(more) => out.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if writer.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
    let _ = writer.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: R,
    mut input: BytesMut,
    pending: Pending,
    events: mpsc::Sender<Event>,
    file_events: mpsc::Sender<files::FileEvent>,
) {
    'outer: loop {
        loop {
            match decode_frame::<ServerFrame>(&mut input, CLIENT_MAX_FRAME_BYTES) {
                Ok(Some(frame)) => {
                    if frame.request_id != 0 {
                        let waiter = lock(&pending).as_mut().and_then(|m| m.remove(&frame.request_id));
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(frame);
                        }
                        continue;
                    }
                    let event = match frame.body {
                        Some(server_frame::Body::TransferReady(r)) => {
                            let _ = file_events.send(files::FileEvent::Ready(r)).await;
                            continue;
                        }
                        Some(server_frame::Body::RelayedChunk(c)) => {
                            let _ = file_events.send(files::FileEvent::Chunk(c)).await;
                            continue;
                        }
                        Some(server_frame::Body::TransferEnded(e)) => {
                            let _ = file_events.send(files::FileEvent::Ended(e)).await;
                            continue;
                        }
                        Some(server_frame::Body::Push(p)) => Event::Messages(p.messages),
                        Some(server_frame::Body::Presence(p)) => Event::Presence {
                            name: p.name,
                            online: p.online,
                        },
                        Some(server_frame::Body::PresenceRequest(p)) => Event::PresenceRequest { from: p.from },
                        Some(server_frame::Body::PresenceApproved(p)) => Event::PresenceApproved { name: p.name },
                        Some(server_frame::Body::Goodbye(g)) => Event::Goodbye {
                            code: ErrorCode::try_from(g.code).unwrap_or(ErrorCode::Unspecified),
                            message: g.message,
                        },
                        Some(server_frame::Body::Error(e)) => Event::Goodbye {
                            code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                            message: e.message,
                        },
                        _ => continue,
                    };
                    if events.send(event).await.is_err() {
                        // Nobody listens for events; keep serving replies.
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "bad frame from server");
                    break 'outer;
                }
            }
        }
        input.reserve(4096);
        match reader.read_buf(&mut input).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // Fail every waiting request and refuse new ones.
    lock(&pending).take();
    let _ = events.send(Event::Disconnected).await;
}

#[cfg(test)]
mod tests {
    use super::new_client_msg_id;

    #[test]
    fn client_msg_ids_increase_with_time_and_do_not_repeat() {
        let first = new_client_msg_id();
        // deliberate: the next millisecond, so that the time prefix moves.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let ids: Vec<String> = (0..1000).map(|_| new_client_msg_id()).collect();
        for id in std::iter::once(&first).chain(&ids) {
            assert_eq!(id.len(), 32, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
        assert!(ids.iter().all(|id| id > &first), "{first} {ids:?}");
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
