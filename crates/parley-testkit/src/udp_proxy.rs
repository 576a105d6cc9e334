//! A UDP relay that loses datagrams: it forwards between clients and a
//! server (a QUIC listener, say) and drops a chosen share of the datagrams
//! in each direction, as a lossy network path would.
//!
//! The losses come from a fixed-seed generator, so a run is repeatable up
//! to thread timing. Plain threads, so that it works under any runtime.

use parley_core::sync::lock;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the relay threads look whether they should stop.
const POLL: Duration = Duration::from_millis(20);
/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 65_536;

/// Counts of what went through.
#[derive(Debug, Default)]
pub struct Counts {
    /// Datagrams relayed, both directions.
    pub forwarded: AtomicU64,
    /// Datagrams dropped on purpose, both directions.
    pub dropped: AtomicU64,
}

/// A relay from a loopback port to `target` that drops datagrams.
pub struct LossyUdpProxy {
    /// Where clients send to.
    pub addr: SocketAddr,
    /// What went through so far.
    pub counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Decides which datagrams are lost: one in `1 / share` on average.
struct Loss {
    state: u64,
    /// Drop when the next value is below this (out of `u64::MAX`).
    below: u64,
}

impl Loss {
    fn new(share: f64, seed: u64) -> Loss {
        Loss {
            state: seed | 1,
            below: (share.clamp(0.0, 1.0) * u64::MAX as f64) as u64,
        }
    }

    fn lose(&mut self) -> bool {
        // xorshift64*: enough to spread losses, no dependency.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) < self.below
    }
}

impl LossyUdpProxy {
    /// Relays between a free loopback port and `target`, dropping `share`
    /// (0.0 to 1.0) of the datagrams in each direction.
    pub fn start(target: SocketAddr, share: f64) -> LossyUdpProxy {
        LossyUdpProxy::start_with(target, share, share)
    }

    /// Like [`LossyUdpProxy::start`], with a share for each direction: 1.0
    /// towards the clients makes every client a spoofed source, whose
    /// server never hears back from it after its first packets.
    pub fn start_with(target: SocketAddr, to_server: f64, to_clients: f64) -> LossyUdpProxy {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind the proxy's port");
        front.set_read_timeout(Some(POLL)).expect("read timeout");
        let addr = front.local_addr().expect("proxy address");
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let front = Arc::new(front);
        // One upstream socket per client address, so that the server sees
        // each client as its own peer; each has a thread for the replies.
        let upstreams: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
        let replies: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>> = Arc::default();
        let forward = {
            let (front, counts, stop, replies) = (
                Arc::clone(&front),
                Arc::clone(&counts),
                Arc::clone(&stop),
                Arc::clone(&replies),
            );
            std::thread::spawn(move || {
                let mut loss = Loss::new(to_server, 0x5eed_0001);
                let mut buf = vec![0u8; MAX_DATAGRAM];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, client)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    let upstream = {
                        let mut map = lock(&upstreams);
                        Arc::clone(map.entry(client).or_insert_with(|| {
                            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind an upstream socket");
                            socket.set_read_timeout(Some(POLL)).expect("read timeout");
                            let socket = Arc::new(socket);
                            let back = back_thread(
                                Arc::clone(&socket),
                                Arc::clone(&front),
                                client,
                                to_clients,
                                Arc::clone(&counts),
                                Arc::clone(&stop),
                            );
                            lock(&replies).push(back);
                            socket
                        }))
                    };
                    if loss.lose() {
                        counts.dropped.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let _ = upstream.send_to(&buf[..n], target);
                        counts.forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                }
                for thread in lock(&replies).drain(..) {
                    let _ = thread.join();
                }
            })
        };
        LossyUdpProxy {
            addr,
            counts,
            stop,
            threads: vec![forward],
        }
    }
}

/// Relays the server's datagrams on `upstream` back to `client`.
fn back_thread(
    upstream: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    share: f64,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut loss = Loss::new(share, 0x5eed_0002 ^ u64::from(client.port()));
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while !stop.load(Ordering::Relaxed) {
            let Ok(n) = upstream.recv(&mut buf) else {
                continue;
            };
            if loss.lose() {
                counts.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                let _ = front.send_to(&buf[..n], client);
                counts.forwarded.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

impl Drop for LossyUdpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_lost_is_about_the_share_asked() {
        let mut loss = Loss::new(0.1, 42);
        let lost = (0..100_000).filter(|_| loss.lose()).count();
        assert!((9_000..11_000).contains(&lost), "{lost}");
        let mut none = Loss::new(0.0, 42);
        assert!((0..1_000).all(|_| !none.lose()));
    }
}
