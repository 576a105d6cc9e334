//! What the inference tests share: starting `serve` on port 0 with a
//! shutdown switch, a raw HTTP/1.1 client (so tests can send what no
//! well-behaved client would), and fake servers that misbehave on purpose.
//! Each test file uses part of it.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parley_filter::Model;
use parley_filter::serve::{ServeLimits, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The bound on every test's whole body.
pub const TEST_BOUND: Duration = Duration::from_secs(60);

/// The committed model, shared.
pub fn builtin() -> Arc<Model> {
    match Model::builtin() {
        Ok(model) => Arc::new(model.clone()),
        Err(error) => panic!("the committed model does not load: {error}"),
    }
}

/// A chat line of about 60 bytes, different for each `i`.
pub fn chat_line(i: usize) -> String {
    format!("message {i:06}: are we still on for lunch tomorrow at noon?")
}

/// `serve` running on 127.0.0.1, port 0.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub async fn start(model: Arc<Model>, limits: ServeLimits) -> Server {
        let listener = bind().await;
        let addr = local_addr(&listener);
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve(listener, model, limits, shutdown));
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Triggers shutdown; [`Server::stopped`] waits for it.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the server and waits for `serve` to return.
    pub async fn stopped(mut self) -> std::io::Result<()> {
        self.stop();
        match self.task.await {
            Ok(result) => result,
            Err(e) => panic!("serve panicked: {e}"),
        }
    }
}

pub async fn bind() -> TcpListener {
    match TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener,
        Err(e) => panic!("cannot bind 127.0.0.1:0: {e}"),
    }
}

pub fn local_addr(listener: &TcpListener) -> SocketAddr {
    match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => panic!("no local address: {e}"),
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_slice(&self.body) {
            Ok(value) => value,
            Err(e) => panic!("answer is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)),
        }
    }
}

/// A keep-alive HTTP/1.1 connection that writes raw bytes and reads
/// answers framed by Content-Length.
pub struct RawClient {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        match TcpStream::connect(addr).await {
            Ok(stream) => RawClient {
                stream,
                buffer: Vec::new(),
            },
            Err(e) => panic!("cannot connect to {addr}: {e}"),
        }
    }

    pub async fn send(&mut self, raw: &[u8]) {
        if let Err(e) = self.stream.write_all(raw).await {
            panic!("cannot write the request: {e}");
        }
    }

    /// Reads one answer; `None` if the server closed the connection first.
    pub async fn answer(&mut self) -> Option<Answer> {
        let head_end = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                break end + 4;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(0);
        while self.buffer.len() < head_end + length {
            if !self.fill().await {
                return None;
            }
        }
        let body = self.buffer[head_end..head_end + length].to_vec();
        self.buffer.drain(..head_end + length);
        Some(Answer { status, headers, body })
    }

    /// Whether the server closed the connection (reads to the end).
    pub async fn closed(&mut self) -> bool {
        let mut scratch = [0u8; 4096];
        loop {
            match self.stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    }

    async fn fill(&mut self) -> bool {
        let mut scratch = [0u8; 16 * 1024];
        match self.stream.read(&mut scratch).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buffer.extend_from_slice(&scratch[..n]);
                true
            }
        }
    }

    /// One request and its answer.
    pub async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Answer {
        self.send(&request_bytes(method, path, body)).await;
        match self.answer().await {
            Some(answer) => answer,
            None => panic!("{method} {path}: connection closed without an answer"),
        }
    }
}

pub fn request_bytes(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// One request on a new connection.
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Answer {
    RawClient::connect(addr).await.request(method, path, body).await
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// A server that accepts connections and reads requests but never answers.
pub struct Silent {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Silent {
    pub async fn start() -> Silent {
        let listener = bind().await;
        let addr = local_addr(&listener);
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Silent { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request as a [`Scripted`] server's handler sees it.
pub struct Seen {
    /// Score requests before this one (0 for the first).
    pub index: usize,
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// What a [`Scripted`] handler answers: status and body.
pub type Reply = Pin<Box<dyn Future<Output = (u16, String)> + Send>>;

/// A hand-written HTTP/1.1 server (keep-alive, one task per connection)
/// whose every answer to `POST /v1/score` comes from a handler; it answers
/// other requests 404. Counts the score requests.
pub struct Scripted {
    pub addr: SocketAddr,
    pub score_requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Scripted {
    pub async fn start(handler: impl Fn(Seen) -> Reply + Send + Sync + 'static) -> Scripted {
        let listener = bind().await;
        let addr = local_addr(&listener);
        let handler: Arc<dyn Fn(Seen) -> Reply + Send + Sync> = Arc::new(handler);
        let score_requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&score_requests);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(scripted_connection(stream, Arc::clone(&handler), Arc::clone(&counter)));
            }
        });
        Scripted {
            addr,
            score_requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn score_requests(&self) -> usize {
        self.score_requests.load(Ordering::SeqCst)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn scripted_connection(
    mut stream: TcpStream,
    handler: Arc<dyn Fn(Seen) -> Reply + Send + Sync>,
    counter: Arc<AtomicUsize>,
) {
    let mut buffer = Vec::new();
    let mut scratch = [0u8; 16 * 1024];
    loop {
        let head_end = loop {
            if let Some(end) = find(&buffer, b"\r\n\r\n") {
                break end + 4;
            }
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&scratch[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let mut words = head.split_whitespace();
        let method = words.next().unwrap_or_default().to_owned();
        let path = words.next().unwrap_or_default().to_owned();
        let length: usize = head
            .split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse().ok())
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&scratch[..n]),
            }
        }
        let body = buffer[head_end..head_end + length].to_vec();
        buffer.drain(..head_end + length);
        let (status, reply) = if method == "POST" && path == "/v1/score" {
            let index = counter.fetch_add(1, Ordering::SeqCst);
            handler(Seen {
                index,
                method,
                path,
                body,
            })
            .await
        } else {
            (404, r#"{"error":"no such path"}"#.to_owned())
        };
        let raw = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if stream.write_all(raw.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// How many texts a score request's body carries.
pub fn texts_in(body: &[u8]) -> Vec<String> {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => panic!("the client sent bad JSON: {e}"),
    };
    value["texts"]
        .as_array()
        .map(|texts| {
            texts
                .iter()
                .map(|t| t.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A JSON answer scoring each text `score`.
pub fn answer_each(texts: usize, score: f64) -> String {
    let scores = vec![score; texts];
    serde_json::json!({"model": "fake-1", "scores": scores}).to_string()
}
