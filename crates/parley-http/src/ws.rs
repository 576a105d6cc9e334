//! The WebSocket transport: native-protocol frames, one per binary message.
//!
//! Each binary WebSocket message carries exactly one protobuf frame
//! (`ClientFrame` from the client, `ServerFrame` from the server) *without*
//! the 4-byte length prefix, since WebSocket messages are already framed.
//! The socket is bridged to an in-memory byte stream that the native
//! connection handler serves exactly as it serves a TCP connection: same
//! login, same pipelining, same pushes, acks, re-pushes and resume. The
//! delivery contract over WebSocket is therefore the native one by
//! construction.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use parley_proto::{LENGTH_PREFIX_BYTES, split_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Serves one native-protocol connection over a byte stream; the server
/// crate supplies it (the native handler, with its connection caps and
/// shutdown signal), so this crate never depends on the server.
pub type NativeHandler =
    Arc<dyn Fn(DuplexStream, SocketAddr) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Bytes buffered in each direction between a WebSocket and its native
/// handler. The native handler's own output limit applies on top.
pub const BRIDGE_BUFFER_BYTES: usize = 64 * 1024;
/// How long a client may take to answer our close after the server side
/// has finished.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// The optional WebSocket subprotocol name.
pub const SUBPROTOCOL: &str = "parley.v1";

/// Bridges one upgraded WebSocket to the native handler until either side ends.
pub async fn bridge(socket: WebSocket, handler: NativeHandler, peer: SocketAddr) {
    let (ours, theirs) = tokio::io::duplex(BRIDGE_BUFFER_BYTES);
    let serve = handler(theirs, peer);
    let (mut from_server, mut to_server) = tokio::io::split(ours);
    let (mut sink, mut stream) = socket.split();

    // Client → server: prefix each message with its length. The end of the
    // client's messages is a half-close: the handler answers every request
    // already received, then closes (as on TCP).
    let inbound = async move {
        while let Some(message) = stream.next().await {
            let payload = match message {
                Ok(Message::Binary(payload)) => payload,
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(Message::Text(_)) => {
                    tracing::debug!(%peer, "text message on the native WebSocket; closing");
                    break;
                }
                Ok(Message::Close(_)) | Err(_) => break,
            };
            let Ok(len) = u32::try_from(payload.len()) else { break };
            let mut framed = Vec::with_capacity(LENGTH_PREFIX_BYTES + payload.len());
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&payload);
            if to_server.write_all(&framed).await.is_err() {
                break;
            }
        }
        let _ = to_server.shutdown().await;
    };

    // Server → client: split the byte stream at frame boundaries and send
    // each frame's payload as one binary message.
    let outbound = async move {
        let mut buf = BytesMut::with_capacity(4096);
        'read: loop {
            match from_server.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // The native handler wrote these frames itself, within its
            // own limit: no second limit here.
            while let Ok(Some(payload)) = split_frame(&mut buf, usize::MAX) {
                if sink.send(Message::Binary(payload.freeze())).await.is_err() {
                    break 'read;
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
        let _ = sink.close().await;
    };

    let bridged = async move {
        tokio::pin!(inbound, outbound);
        tokio::select! {
            () = &mut outbound => {
                // The server side is done; give the client a moment to
                // answer the close, then drop the socket.
                let _ = tokio::time::timeout(CLOSE_WAIT, inbound).await;
            }
            () = &mut inbound => outbound.await,
        }
    };
    tokio::join!(serve, bridged);
    tracing::debug!(%peer, "websocket closed");
}
