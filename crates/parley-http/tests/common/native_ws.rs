//! A native session over a WebSocket, over any stream (plain TCP, or TLS
//! through a proxy).

use futures::{SinkExt, StreamExt};
use parley_proto::v1::{self, client_frame, server_frame::Body};
use parley_proto::{ClientFrame, ServerFrame};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::WAIT;

pub struct NativeWs<S> {
    pub socket: WebSocketStream<S>,
    next_id: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> NativeWs<S> {
    /// Takes an upgraded socket and reads the server's Welcome.
    pub async fn start(socket: WebSocketStream<S>) -> NativeWs<S> {
        let mut ws = NativeWs { socket, next_id: 1 };
        let Some(Body::Welcome(w)) = ws.read().await.body else {
            panic!("no welcome")
        };
        assert_eq!(w.protocol_version, 1);
        ws
    }

    pub async fn send(&mut self, body: client_frame::Body) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let frame = ClientFrame {
            request_id: id,
            body: Some(body),
        };
        self.socket
            .send(Message::Binary(frame.encode_to_vec().into()))
            .await
            .unwrap();
        id
    }

    pub async fn read(&mut self) -> ServerFrame {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("a frame in time")
                .expect("socket open")
                .expect("no socket error");
            match message {
                Message::Binary(bytes) => return ServerFrame::decode(bytes.as_ref()).expect("a ServerFrame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Sends a request and reads until its reply, skipping pushes.
    pub async fn call(&mut self, body: client_frame::Body) -> Body {
        let id = self.send(body).await;
        loop {
            let f = self.read().await;
            if f.request_id == id {
                return f.body.expect("a body");
            }
        }
    }

    /// Resumes with `token`; returns the token that replaces it.
    pub async fn resume(&mut self, token: &[u8]) -> Vec<u8> {
        let reply = self
            .call(client_frame::Body::Resume(v1::Resume {
                token: token.to_vec(),
                quiet: false,
            }))
            .await;
        match reply {
            Body::AuthOk(ok) => ok.resume_token,
            other => panic!("expected AuthOk, got {other:?}"),
        }
    }

    pub async fn subscribe(&mut self, after_seq: u64) {
        let reply = self
            .call(client_frame::Body::Subscribe(v1::Subscribe { after_seq }))
            .await;
        assert!(matches!(reply, Body::Subscribed(_)), "{reply:?}");
    }

    pub async fn next_push(&mut self) -> Vec<v1::Message> {
        loop {
            let f = self.read().await;
            if let Some(Body::Push(p)) = f.body {
                return p.messages;
            }
        }
    }
}
