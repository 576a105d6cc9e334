//! Sending and receiving files: the offer, the rendezvous through the
//! server, then the bytes over a direct QUIC path ([`crate::p2p`]) or,
//! when none works in time, through the server's relay.
//!
//! [`send_file`] and [`receive_file`] drive one transfer each from start
//! to end on a logged-in [`Client`]; the requests they are made of are
//! methods of the client too, for programs that drive transfers their
//! own way. One transfer at a time per client with these two: they take
//! the client's transfer events as they come.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parley_core::files::{FileOffer, MAX_RELAY_CHUNK_BYTES, RELAY_WINDOW};
use parley_proto::v1::{self, client_frame, server_frame};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::p2p::{self, PeerEndpoint, Rendezvous};
use crate::{Client, ClientError, SendReceipt};

/// File-transfer frames the client keeps for [`Client::next_file_event`].
pub const EVENT_QUEUE: usize = 64;
/// Bytes read from a file at a time.
const READ_BYTES: usize = 256 * 1024;
/// How long a side that has sent or received everything waits for the
/// other's verdict.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the recipient waits for the next relayed chunk before it
/// gives up (the sender stalled without its connection ending).
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the recipient keeps accepting a direct path: past the sender's
/// own direct timeout, the sender has moved to the relay.
const RECIPIENT_DIRECT_GRACE: Duration = Duration::from_secs(30);

/// A transfer frame the server sent on its own.
#[derive(Debug, Clone)]
pub enum FileEvent {
    Ready(Box<v1::TransferReady>),
    Chunk(v1::RelayChunk),
    Ended(v1::TransferEnded),
}

/// How a transfer tries to reach the other side.
#[derive(Debug, Clone)]
pub struct Options {
    /// Try a direct path at all (else relay only).
    pub direct: bool,
    /// How long the sender tries the direct path before the relay.
    pub direct_timeout: Duration,
    /// The local UDP address of the direct path's endpoint.
    pub bind: SocketAddr,
    /// Addresses to announce instead of the endpoint's own (a known port
    /// forward; tests).
    pub announce: Option<Vec<SocketAddr>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            direct: true,
            direct_timeout: Duration::from_secs(3),
            bind: (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            announce: None,
        }
    }
}

/// Which way the bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Direct,
    Relayed,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Route::Direct => "direct",
            Route::Relayed => "through the server",
        })
    }
}

/// What a transfer reports as it goes.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Waiting for the other side (to come online, to accept, to serve).
    Waiting { peer: String, online: bool },
    /// Both sides are there; bytes start at `from`.
    Started { route: Route, from: u64, size: u64 },
    /// `done` of `size` bytes are across.
    Bytes { done: u64, size: u64 },
}

/// A finished transfer.
#[derive(Debug, Clone)]
pub struct Done {
    pub offer_id: u64,
    pub route: Route,
    /// Where the bytes started (more than 0 after a resume).
    pub from: u64,
    pub size: u64,
    /// The received file (recipient), or the sent one.
    pub path: PathBuf,
}

/// Why a transfer did not finish.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the recipient refused the file")]
    Refused,
    #[error(
        "the bytes received do not match the offer's SHA-256; the partial file was removed (the sender's file changed, or was tampered with)"
    )]
    HashMismatch,
    #[error("interrupted at {have} of {size} bytes: {why}; run the same command again to resume")]
    Interrupted { have: u64, size: u64, why: String },
    #[error("{0}")]
    Failed(String),
    #[error("message {0} is not a file offer")]
    NotAnOffer(u64),
    #[error("{} already exists; choose another name or remove it", .0.display())]
    Exists(PathBuf),
}

impl Client {
    /// Offers a file (its name, size and SHA-256) to `to`.
    pub async fn offer_file(
        &self,
        to: &str,
        client_msg_id: &str,
        name: &str,
        size: u64,
        sha256: &[u8; 32],
    ) -> crate::Result<SendReceipt> {
        let body = client_frame::Body::OfferFile(v1::OfferFile {
            to: to.to_owned(),
            client_msg_id: client_msg_id.to_owned(),
            name: name.to_owned(),
            size,
            sha256: sha256.to_vec(),
        });
        self.call(body, crate::receipt).await
    }

    /// Joins the rendezvous of the offer `offer_id` to `to`, as its sender.
    pub async fn serve_file(&self, to: &str, offer_id: u64, peer: v1::PeerInfo) -> crate::Result<v1::TransferJoined> {
        let body = client_frame::Body::ServeFile(v1::ServeFile {
            to: to.to_owned(),
            offer_id,
            peer: Some(peer),
        });
        self.call(body, joined).await
    }

    /// Accepts the offer at `seq` of the mailbox, holding `resume_from`
    /// bytes of it already.
    pub async fn accept_file(
        &self,
        seq: u64,
        peer: v1::PeerInfo,
        resume_from: u64,
    ) -> crate::Result<v1::TransferJoined> {
        let body = client_frame::Body::AcceptFile(v1::AcceptFile {
            seq,
            peer: Some(peer),
            resume_from,
        });
        self.call(body, joined).await
    }

    /// Refuses the offer at `seq`; its sender is told.
    pub async fn refuse_file(&self, seq: u64) -> crate::Result<v1::TransferEnded> {
        self.call(client_frame::Body::RefuseFile(v1::RefuseFile { seq }), ended)
            .await
    }

    /// Reports the end of a transfer to the server (and so to the other side).
    pub async fn transfer_done(
        &self,
        offer_id: u64,
        result: v1::TransferResult,
        detail: &str,
    ) -> crate::Result<v1::TransferEnded> {
        let body = client_frame::Body::TransferDone(v1::TransferDone {
            offer_id,
            result: result as i32,
            detail: detail.to_owned(),
        });
        self.call(body, ended).await
    }

    /// The next transfer frame the server sent on its own; None once the
    /// connection is gone.
    pub async fn next_file_event(&self) -> Option<FileEvent> {
        self.file_events.lock().await.recv().await
    }
}

fn joined(b: server_frame::Body) -> Result<v1::TransferJoined, server_frame::Body> {
    match b {
        server_frame::Body::TransferJoined(j) => Ok(j),
        other => Err(other),
    }
}

fn ended(b: server_frame::Body) -> Result<v1::TransferEnded, server_frame::Body> {
    match b {
        server_frame::Body::TransferEnded(e) => Ok(e),
        other => Err(other),
    }
}

/// The size and SHA-256 of the file at `path`.
pub async fn hash_file(path: &Path) -> std::io::Result<(u64, [u8; 32])> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BYTES];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hasher.finalize().into()))
}

/// The idempotency key of an offer: the same file offered to the same
/// account again is the same offer (so running `send-file` again after an
/// interruption resumes it instead of offering it twice).
pub fn offer_key(to: &str, name: &str, size: u64, sha256: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(parley_core::name::name_key(to).as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    h.update(size.to_be_bytes());
    h.update(sha256);
    let digest = h.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("file-{hex}")
}

/// The endpoint of the direct path, if the options want one, and what to
/// announce of it.
fn endpoint(options: &Options) -> Result<(Option<PeerEndpoint>, v1::PeerInfo), FileError> {
    if !options.direct {
        return Ok((
            None,
            v1::PeerInfo {
                candidates: Vec::new(),
                fingerprint: vec![0; 32],
            },
        ));
    }
    let ep = PeerEndpoint::bind(options.bind)?;
    let candidates = options.announce.clone().unwrap_or_else(|| ep.candidates(None));
    let info = v1::PeerInfo {
        candidates: candidates.iter().map(ToString::to_string).collect(),
        fingerprint: ep.fingerprint().to_vec(),
    };
    Ok((Some(ep), info))
}

/// What the server vouched for, from a TransferReady.
fn rendezvous(ready: &v1::TransferReady) -> Option<Rendezvous> {
    let info = ready.peer_info.as_ref()?;
    let peer_candidates: Vec<SocketAddr> = info.candidates.iter().filter_map(|c| c.parse().ok()).collect();
    if peer_candidates.is_empty() {
        return None;
    }
    Some(Rendezvous {
        peer_candidates,
        peer_fingerprint: info.fingerprint.as_slice().try_into().ok()?,
        token: ready.token.as_slice().try_into().ok()?,
    })
}

/// The error an end the other side (or the server) reported means.
fn ended_early(e: &v1::TransferEnded, have: u64, size: u64) -> FileError {
    match v1::TransferResult::try_from(e.result) {
        Ok(v1::TransferResult::Refused) => FileError::Refused,
        Ok(v1::TransferResult::HashMismatch) => FileError::HashMismatch,
        Ok(v1::TransferResult::PeerGone) | Ok(v1::TransferResult::Cancelled) => FileError::Interrupted {
            have,
            size,
            why: if e.detail.is_empty() {
                "the other side went away".into()
            } else {
                e.detail.clone()
            },
        },
        _ => FileError::Failed(format!("the transfer failed: {}", e.detail)),
    }
}

/// Waits for the rendezvous of `offer_id`.
async fn wait_ready(client: &Client, offer_id: u64, size: u64) -> Result<v1::TransferReady, FileError> {
    loop {
        match client.next_file_event().await {
            Some(FileEvent::Ready(r)) if r.offer_id == offer_id => return Ok(*r),
            Some(FileEvent::Ended(e)) if e.offer_id == offer_id => return Err(ended_early(&e, 0, size)),
            Some(_) => {}
            None => return Err(ClientError::Disconnected(None).into()),
        }
    }
}

/// Waits for the other side's verdict on `offer_id` (the sender, after
/// sending everything).
async fn wait_verdict(client: &Client, offer_id: u64, size: u64) -> Result<(), FileError> {
    let verdict = tokio::time::timeout(VERDICT_TIMEOUT, async {
        loop {
            match client.next_file_event().await {
                Some(FileEvent::Ended(e)) if e.offer_id == offer_id => return Some(e),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await;
    match verdict {
        Ok(Some(e)) if e.result == v1::TransferResult::Complete as i32 => Ok(()),
        Ok(Some(e)) => Err(ended_early(&e, size, size)),
        Ok(None) => Err(ClientError::Disconnected(None).into()),
        Err(_) => Err(FileError::Failed(
            "the recipient did not confirm the file in time".into(),
        )),
    }
}

/// Sends the file at `path` to `to`: offers it (once, however often this
/// runs), waits for the recipient to accept, then sends the bytes directly
/// or through the relay.
pub async fn send_file(
    client: &Client,
    to: &str,
    path: &Path,
    options: &Options,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Done, FileError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| FileError::Failed(format!("{} has no usable file name", path.display())))?
        .to_owned();
    let (size, sha256) = hash_file(path).await?;
    let key = offer_key(to, &name, size, &sha256);
    let offer = client.offer_file(to, &key, &name, size, &sha256).await?;
    let offer_id = offer.message_id;
    let (ep, info) = endpoint(options)?;
    let joined = client.serve_file(to, offer_id, info).await?;
    progress(Progress::Waiting {
        peer: joined.peer,
        online: joined.peer_online,
    });
    let ready = wait_ready(client, offer_id, size).await?;
    let from = ready.resume_from.min(size);
    let sent = send_bytes(
        client,
        &ready,
        ep.as_ref(),
        path,
        size,
        options.direct_timeout,
        progress,
    )
    .await;
    let (route, direct) = match sent {
        Ok(sent) => sent,
        Err(e) => {
            report(client, offer_id, &e).await;
            return Err(e);
        }
    };
    // A direct connection stays open until the verdict: the recipient may
    // still be reading.
    wait_verdict(client, offer_id, size).await?;
    drop(direct);
    close_later(ep);
    Ok(Done {
        offer_id,
        route,
        from,
        size,
        path: path.to_owned(),
    })
}

/// Closes the direct path's endpoint without making the caller wait for
/// the close to drain (attempts that never got an answer take a second):
/// the transfer is over and its verdict known.
fn close_later(ep: Option<PeerEndpoint>) {
    if let Some(ep) = ep {
        tokio::spawn(async move { ep.close().await });
    }
}

/// Tells the server (and so the other side) why this side stopped: an
/// interruption can be resumed, anything else failed.
async fn report(client: &Client, offer_id: u64, e: &FileError) {
    let result = match e {
        FileError::Interrupted { .. } => v1::TransferResult::Cancelled,
        _ => v1::TransferResult::Failed,
    };
    let _ = client.transfer_done(offer_id, result, &e.to_string()).await;
}

/// Sends the bytes from `ready.resume_from`: directly if a path is found
/// within `direct_timeout`, else through the relay. Returns the route and
/// the direct path, to be held until the verdict.
async fn send_bytes(
    client: &Client,
    ready: &v1::TransferReady,
    ep: Option<&PeerEndpoint>,
    path: &Path,
    size: u64,
    direct_timeout: Duration,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(Route, Option<p2p::DirectPath>), FileError> {
    let from = ready.resume_from.min(size);
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(from)).await?;
    let direct = match (ep, rendezvous(ready)) {
        (Some(ep), Some(rv)) => p2p::connect_as_sender(ep, &rv, direct_timeout).await.ok(),
        _ => None,
    };
    if let Some(mut path) = direct {
        progress(Progress::Started {
            route: Route::Direct,
            from,
            size,
        });
        copy_to_stream(&mut file, &mut path.send, from, size, progress).await?;
        return Ok((Route::Direct, Some(path)));
    }
    if !ready.relay {
        return Err(FileError::Failed(
            "no direct path worked, and the server cannot relay this transfer (the file is larger than its \
             relay allows, or the other side is connected to another server process)"
                .into(),
        ));
    }
    progress(Progress::Started {
        route: Route::Relayed,
        from,
        size,
    });
    relay(client, ready.offer_id, &mut file, from, size, progress).await?;
    Ok((Route::Relayed, None))
}

/// Writes the file from `from` to its end on a direct stream.
async fn copy_to_stream(
    file: &mut tokio::fs::File,
    stream: &mut quinn::SendStream,
    from: u64,
    size: u64,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(), FileError> {
    let mut buf = vec![0u8; READ_BYTES];
    let mut done = from;
    while done < size {
        let want = usize::try_from(size - done).unwrap_or(READ_BYTES).min(READ_BYTES);
        let n = file.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(FileError::Failed("the file got shorter while it was being sent".into()));
        }
        stream.write_all(&buf[..n]).await.map_err(|e| FileError::Interrupted {
            have: done,
            size,
            why: format!("the direct path broke: {e}"),
        })?;
        done += n as u64;
        progress(Progress::Bytes { done, size });
    }
    let _ = stream.finish();
    Ok(())
}

/// Sends the file from `from` through the server's relay, a window of
/// chunks in flight.
async fn relay(
    client: &Client,
    offer_id: u64,
    file: &mut tokio::fs::File,
    from: u64,
    size: u64,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(), FileError> {
    let mut in_flight = VecDeque::with_capacity(RELAY_WINDOW);
    let mut offset = from;
    let mut acked = from;
    let mut buf = vec![0u8; MAX_RELAY_CHUNK_BYTES];
    while offset < size || !in_flight.is_empty() {
        if offset < size && in_flight.len() < RELAY_WINDOW {
            let want = usize::try_from(size - offset)
                .unwrap_or(MAX_RELAY_CHUNK_BYTES)
                .min(MAX_RELAY_CHUNK_BYTES);
            file.read_exact(&mut buf[..want]).await?;
            let body = client_frame::Body::RelayChunk(v1::RelayChunk {
                offer_id,
                offset,
                data: buf[..want].to_vec(),
            });
            in_flight.push_back(client.begin(body).await?);
            offset += want as u64;
            continue;
        }
        let Some(reply) = in_flight.pop_front() else { break };
        let frame = reply.await.map_err(|_| ClientError::Disconnected(None))?;
        match frame.body {
            Some(server_frame::Body::ChunkRelayed(r)) => {
                acked = r.next_offset;
                progress(Progress::Bytes { done: acked, size });
            }
            Some(server_frame::Body::Error(e)) => {
                return Err(FileError::Interrupted {
                    have: acked,
                    size,
                    why: format!("the relay refused a chunk: {}", e.message),
                });
            }
            other => return Err(FileError::Failed(format!("unexpected reply to a chunk: {other:?}"))),
        }
    }
    Ok(())
}

/// Where an accepted file goes: `out` if given (a directory or a file
/// name), else the offer's name in the current directory.
fn destination(out: Option<&Path>, name: &str) -> PathBuf {
    match out {
        Some(dir) if dir.is_dir() => dir.join(name),
        Some(file) => file.to_owned(),
        None => PathBuf::from(name),
    }
}

/// The partial file of `target`.
fn part_path(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// Accepts the offer at `seq` and receives the file to `out` (see
/// [`destination`]); bytes left by an interrupted run are kept and the
/// transfer resumes after them. The file is checked against the offer's
/// SHA-256 before it takes its name; the offer is acknowledged then.
pub async fn receive_file(
    client: &Client,
    seq: u64,
    out: Option<&Path>,
    options: &Options,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Done, FileError> {
    let batch = client.fetch(seq.saturating_sub(1), 1, true).await?;
    let offer = batch
        .messages
        .iter()
        .find(|m| m.seq == seq)
        .and_then(|m| FileOffer::parse(&m.body))
        .ok_or(FileError::NotAnOffer(seq))?;
    let target = destination(out, &offer.name);
    if target.exists() {
        return Err(FileError::Exists(target));
    }
    let part = part_path(&target);
    let held = match tokio::fs::metadata(&part).await {
        Ok(m) if m.len() <= offer.size => m.len(),
        _ => 0,
    };
    let (ep, info) = endpoint(options)?;
    let joined = client.accept_file(seq, info, held).await?;
    let offer_id = joined.offer_id;
    progress(Progress::Waiting {
        peer: joined.peer,
        online: joined.peer_online,
    });
    let ready = wait_ready(client, offer_id, offer.size).await?;
    let from = ready.resume_from;
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&part)
        .await?;
    file.set_len(from).await?;
    file.seek(std::io::SeekFrom::Start(from)).await?;
    let received = take_bytes(client, &ready, ep.as_ref(), &mut file, from, offer.size, progress).await;
    file.flush().await?;
    file.sync_all().await?;
    drop(file);
    let route = match received {
        Ok(route) => route,
        Err(e) => {
            report(client, offer_id, &e).await;
            return Err(e);
        }
    };
    let (size, sha256) = hash_file(&part).await?;
    if size != offer.size || sha256 != offer.sha256 {
        let _ = tokio::fs::remove_file(&part).await;
        client
            .transfer_done(offer_id, v1::TransferResult::HashMismatch, "the SHA-256 did not match")
            .await?;
        return Err(FileError::HashMismatch);
    }
    tokio::fs::rename(&part, &target).await?;
    client.transfer_done(offer_id, v1::TransferResult::Complete, "").await?;
    client.ack(0, vec![seq]).await?;
    close_later(ep);
    Ok(Done {
        offer_id,
        route,
        from,
        size: offer.size,
        path: target,
    })
}

/// Receives the bytes from `from` to `size` into `file`, from whichever
/// route the sender takes: a direct stream, or the relay's chunks.
async fn take_bytes(
    client: &Client,
    ready: &v1::TransferReady,
    ep: Option<&PeerEndpoint>,
    file: &mut tokio::fs::File,
    from: u64,
    size: u64,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Route, FileError> {
    let offer_id = ready.offer_id;
    let direct = async {
        match (ep, rendezvous(ready)) {
            (Some(ep), Some(rv)) => p2p::accept_as_recipient(ep, &rv, RECIPIENT_DIRECT_GRACE).await.ok(),
            _ => None,
        }
    };
    tokio::pin!(direct);
    let mut direct_done = false;
    let first = loop {
        tokio::select! {
            path = &mut direct, if !direct_done => match path {
                Some(path) => break Ok(path),
                None => direct_done = true,
            },
            event = client.next_file_event() => match event {
                Some(FileEvent::Chunk(c)) if c.offer_id == offer_id => break Err(c),
                Some(FileEvent::Ended(e)) if e.offer_id == offer_id => return Err(ended_early(&e, from, size)),
                Some(_) => {}
                None => return Err(ClientError::Disconnected(None).into()),
            },
        }
    };
    match first {
        Ok(mut path) => {
            progress(Progress::Started {
                route: Route::Direct,
                from,
                size,
            });
            let mut buf = vec![0u8; READ_BYTES];
            let mut done = from;
            while done < size {
                let n = match path.recv.read(&mut buf).await {
                    Ok(Some(n)) => n,
                    Ok(None) => break,
                    Err(e) => {
                        return Err(FileError::Interrupted {
                            have: done,
                            size,
                            why: format!("the direct path broke: {e}"),
                        });
                    }
                };
                let n = n.min(usize::try_from(size - done).unwrap_or(n));
                file.write_all(&buf[..n]).await?;
                done += n as u64;
                progress(Progress::Bytes { done, size });
            }
            if done < size {
                return Err(FileError::Interrupted {
                    have: done,
                    size,
                    why: "the sender stopped sending".into(),
                });
            }
            Ok(Route::Direct)
        }
        Err(chunk) => {
            progress(Progress::Started {
                route: Route::Relayed,
                from,
                size,
            });
            let mut done = from;
            let mut next = Some(chunk);
            while done < size {
                let chunk = match next.take() {
                    Some(c) => c,
                    None => match tokio::time::timeout(CHUNK_TIMEOUT, client.next_file_event()).await {
                        Ok(Some(FileEvent::Chunk(c))) if c.offer_id == offer_id => c,
                        Ok(Some(FileEvent::Ended(e))) if e.offer_id == offer_id => {
                            return Err(ended_early(&e, done, size));
                        }
                        Ok(Some(_)) => continue,
                        Ok(None) => return Err(ClientError::Disconnected(None).into()),
                        Err(_) => {
                            return Err(FileError::Interrupted {
                                have: done,
                                size,
                                why: format!("nothing came through the relay for {CHUNK_TIMEOUT:?}"),
                            });
                        }
                    },
                };
                if chunk.offset != done {
                    return Err(FileError::Failed(format!(
                        "the relay skipped from {done} to {}",
                        chunk.offset
                    )));
                }
                file.write_all(&chunk.data).await?;
                done += chunk.data.len() as u64;
                progress(Progress::Bytes { done, size });
            }
            Ok(Route::Relayed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_key_is_the_same_for_the_same_file_to_the_same_account() {
        let sha = [3u8; 32];
        assert_eq!(offer_key("Bob", "a.txt", 5, &sha), offer_key("bob", "a.txt", 5, &sha));
        assert_ne!(offer_key("bob", "a.txt", 5, &sha), offer_key("bob", "a.txt", 6, &sha));
        assert!(offer_key("bob", "a.txt", 5, &sha).len() <= parley_core::limits::MAX_CLIENT_MSG_ID_BYTES);
    }

    #[test]
    fn a_partial_file_sits_beside_its_target() {
        assert_eq!(part_path(Path::new("dir/a.jpg")), PathBuf::from("dir/a.jpg.part"));
        assert_eq!(destination(None, "a.jpg"), PathBuf::from("a.jpg"));
    }
}
