//! A minimal native-protocol client over a socket the bench opens itself.
//!
//! The client library connects by address and cannot bind a source address
//! or hand out its socket, and it spends two tasks and a request map on each
//! connection. The idle scenario needs tens of thousands of connections from
//! several 127.0.0.x addresses that do nothing once logged in, so it speaks
//! just the login part of `docs/PROTOCOL.md` here: read Welcome, SCRAM
//! (AuthStart → AuthChallenge → AuthContinue → AuthOk) or Resume, then
//! nothing but keep-alive pings. The login scenario's resume phase uses it
//! too: there every login is a new connection, and the library's tasks
//! per connection cost more than the login. Frames and SCRAM come from `parley_proto`
//! and `parley_core`, so nothing of the protocol is re-implemented.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use bytes::BytesMut;
use parley_core::Mechanism;
use parley_core::scram::ClientExchange;
use parley_proto::v1::{self, client_frame, server_frame};
use parley_proto::{ClientFrame, ErrorCode, ServerFrame, decode_frame, encode_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest frame accepted before the server has said its own limit.
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// Times one login waits its turn when the server has as many logins of
/// the account (or from the address) in progress as it allows; the waits
/// are at most 50 ms each (sooner than the server's hint: the bench's
/// logins finish in milliseconds).
const MAX_LOGIN_RETRIES: u32 = 2000;

/// The first address `server` (`host:port`) resolves to.
pub async fn resolve(server: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(server)
        .await
        .with_context(|| format!("resolving {server}"))?
        .next()
        .with_context(|| format!("{server} has no address"))
}

/// Opens a TCP connection to `server`, from `source` when given.
pub async fn connect_from(server: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("creating a socket")?;
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .with_context(|| format!("binding source address {source}"))?;
    }
    let stream = socket
        .connect(server)
        .await
        .with_context(|| format!("connecting to {server}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Makes closing `stream` abort the connection (`SO_LINGER` 0): the peer
/// gets a reset, and no TIME_WAIT is left on this side's port.
pub fn abort_on_close(stream: &TcpStream) -> anyhow::Result<()> {
    stream.set_zero_linger().context("setting SO_LINGER 0")
}

/// A connection during its handshake: the socket (or any byte stream: a
/// QUIC stream for `quic://` servers) and unread input.
pub struct Handshake<S = TcpStream> {
    pub stream: S,
    /// Bytes read but not yet decoded.
    input: BytesMut,
    /// The server's frame limit, from Welcome.
    max_frame: usize,
    next_request_id: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Handshake<S> {
    /// Reads the server's Welcome.
    pub async fn start(stream: S) -> anyhow::Result<Handshake<S>> {
        let mut handshake = Handshake {
            stream,
            input: BytesMut::with_capacity(512),
            max_frame: MAX_FRAME_BYTES,
            next_request_id: 1,
        };
        match handshake.read().await?.body {
            Some(server_frame::Body::Welcome(w)) => {
                anyhow::ensure!(
                    w.protocol_version == parley_proto::PROTOCOL_VERSION,
                    "server speaks protocol version {}",
                    w.protocol_version
                );
                if w.max_frame_bytes > 0 {
                    handshake.max_frame = w.max_frame_bytes as usize;
                }
                Ok(handshake)
            }
            Some(server_frame::Body::Error(e)) => anyhow::bail!("server refused the connection: {}", e.message),
            other => anyhow::bail!("expected Welcome, got {other:?}"),
        }
    }

    async fn read(&mut self) -> anyhow::Result<ServerFrame> {
        loop {
            if let Some(frame) = decode_frame::<ServerFrame>(&mut self.input, self.max_frame)? {
                return Ok(frame);
            }
            if self.stream.read_buf(&mut self.input).await? == 0 {
                anyhow::bail!("server closed the connection");
            }
        }
    }

    /// Sends one request and reads frames until its reply.
    async fn call(&mut self, body: client_frame::Body) -> anyhow::Result<server_frame::Body> {
        match self.call_any(body).await? {
            server_frame::Body::Error(e) => {
                let code = v1::ErrorCode::try_from(e.code).unwrap_or(v1::ErrorCode::Unspecified);
                anyhow::bail!("{} ({})", e.message, code.as_str_name())
            }
            body => Ok(body),
        }
    }

    /// Like `call`, with an error reply as a body like any other.
    async fn call_any(&mut self, body: client_frame::Body) -> anyhow::Result<server_frame::Body> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let mut out = BytesMut::new();
        encode_frame(
            &ClientFrame {
                request_id,
                body: Some(body),
            },
            &mut out,
            self.max_frame,
        )?;
        self.stream.write_all(&out).await?;
        loop {
            let frame = self.read().await?;
            // Frames with request_id 0 (pushes, notices) are not ours to answer.
            if frame.request_id != request_id {
                continue;
            }
            return match frame.body {
                Some(body) => Ok(body),
                None => anyhow::bail!("empty reply"),
            };
        }
    }

    /// Logs in with SCRAM and verifies the server's signature; returns the
    /// resume token.
    pub async fn login(&mut self, name: &str, password: &str) -> anyhow::Result<Vec<u8>> {
        let mut exchange = ClientExchange::new(name, password);
        // The server bounds logins in progress per account and address:
        // many connections of one account logging in at once wait their
        // turn, as a real client does, for as long as the server asks.
        let mut attempts = 0;
        let challenge = loop {
            match self
                .call_any(client_frame::Body::AuthStart(v1::AuthStart {
                    client_first: exchange.client_first().into_bytes(),
                    quiet: false,
                }))
                .await?
            {
                server_frame::Body::AuthChallenge(c) => break c,
                server_frame::Body::Error(e)
                    if e.code == ErrorCode::RateLimited as i32 && attempts < MAX_LOGIN_RETRIES =>
                {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(u64::from(e.retry_after_ms.clamp(10, 50)))).await;
                }
                other => anyhow::bail!("expected AuthChallenge, got {other:?}"),
            }
        };
        let mechanism = Mechanism::from_name(&challenge.mechanism)
            .with_context(|| format!("unknown mechanism {:?}", challenge.mechanism))?;
        let client_final = exchange
            .client_final(mechanism, &challenge.server_first)
            .map_err(|e| anyhow::anyhow!("SCRAM: {}", e.message))?;
        let ok = match self
            .call(client_frame::Body::AuthContinue(v1::AuthContinue {
                client_final: client_final.into_bytes(),
            }))
            .await?
        {
            server_frame::Body::AuthOk(ok) => ok,
            other => anyhow::bail!("expected AuthOk, got {other:?}"),
        };
        exchange
            .verify_server_final(&ok.server_final)
            .map_err(|e| anyhow::anyhow!("server signature: {}", e.message))?;
        Ok(ok.resume_token)
    }

    /// Logs in with the resume token of an earlier login.
    /// Resumes with `token`; returns the token that replaces it.
    pub async fn resume(&mut self, token: &[u8]) -> anyhow::Result<Vec<u8>> {
        match self
            .call(client_frame::Body::Resume(v1::Resume {
                token: token.to_vec(),
                quiet: false,
            }))
            .await?
        {
            server_frame::Body::AuthOk(ok) => Ok(ok.resume_token),
            other => anyhow::bail!("expected AuthOk, got {other:?}"),
        }
    }

    /// The socket alone, once logged in; the input buffer is dropped so an
    /// idle connection costs the bench only the socket.
    pub fn into_stream(self) -> S {
        self.stream
    }

    /// The logged-in connection with what was read past the login and the
    /// server's frame limit, for a sender that speaks the rest itself.
    pub fn into_parts(self) -> (S, BytesMut, usize) {
        (self.stream, self.input, self.max_frame)
    }
}

/// A keep-alive Ping with request_id 0, whose Pong is not awaited.
pub fn ping_frame() -> anyhow::Result<BytesMut> {
    let mut out = BytesMut::new();
    encode_frame(
        &ClientFrame {
            request_id: 0,
            body: Some(client_frame::Body::Ping(v1::Ping { nonce: 0 })),
        },
        &mut out,
        MAX_FRAME_BYTES,
    )?;
    Ok(out)
}
