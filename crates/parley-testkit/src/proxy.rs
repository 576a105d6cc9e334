//! A TCP proxy a test can cut: it forwards a loopback port to a service
//! (PostgreSQL, say) until [`TcpProxy::cut`] closes its listener and every
//! connection through it, as an outage of the service would, and
//! [`TcpProxy::restore`] listens on the same port again.
//!
//! Plain threads, so that it works under any runtime or none.

use parley_core::sync::lock;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the accept loop looks whether it should stop.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

/// A proxy from a loopback port to `target`.
pub struct TcpProxy {
    /// Where connections go.
    target: SocketAddr,
    /// The port it listens on, the same across restores.
    pub addr: SocketAddr,
    /// What the current listening period shares with its threads.
    period: Option<Period>,
}

/// One stretch of listening, between a restore and a cut.
struct Period {
    /// Tells the accept loop to stop.
    stop: Arc<AtomicBool>,
    /// Every socket of the period's connections, to shut them down.
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    /// The accept loop.
    acceptor: std::thread::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let mut proxy = TcpProxy {
            target,
            addr,
            period: None,
        };
        proxy.listen(listener);
        proxy
    }

    /// Closes the listener and every connection: new connections are
    /// refused, open ones see their peer vanish.
    pub fn cut(&mut self) {
        let Some(period) = self.period.take() else { return };
        period.stop.store(true, Ordering::Relaxed);
        let _ = period.acceptor.join();
        for socket in lock(&period.sockets).drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Listens again on the same port.
    pub fn restore(&mut self) {
        if self.period.is_some() {
            return;
        }
        // The port may linger for a moment after the cut.
        let listener = crate::poll_until_blocking(
            &format!("the proxy's port {} to be free again", self.addr),
            Duration::from_secs(5),
            || TcpListener::bind(self.addr).ok(),
        );
        self.listen(listener);
    }

    fn listen(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let target = self.target;
        let acceptor = {
            let stop = Arc::clone(&stop);
            let sockets = Arc::clone(&sockets);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => forward(client, target, &sockets),
                        // deliberate: a non-blocking accept loop's pause, so
                        // that it sees the stop flag; it waits for nothing.
                        Err(_) => std::thread::sleep(ACCEPT_POLL),
                    }
                }
            })
        };
        self.period = Some(Period {
            stop,
            sockets,
            acceptor,
        });
    }
}

/// Connects `client` to `target` and copies both ways on two threads.
fn forward(client: TcpStream, target: SocketAddr, sockets: &Mutex<Vec<TcpStream>>) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect(target) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let copies = (client.try_clone(), server.try_clone());
    let (Ok(client_copy), Ok(server_copy)) = copies else {
        return;
    };
    {
        let mut held = lock(sockets);
        for socket in [&client, &server] {
            if let Ok(clone) = socket.try_clone() {
                held.push(clone);
            }
        }
    }
    std::thread::spawn(move || pump(client, server));
    std::thread::spawn(move || pump(server_copy, client_copy));
}

/// Copies from `from` to `to` until either ends, then closes both.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
