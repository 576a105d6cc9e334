//! Graceful shutdown: clients are told, in-flight work finishes, the store is
//! closed cleanly, the process exits 0.

mod common;

use common::*;
use parley_client::{ErrorCode, Event};
use parley_testkit::{Store, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_clients_and_keeps_every_acked_message() {
    let mut server = TestServer::start(Store::Sqlite);
    let alice = server.user("alice").await;
    let watcher = server.user("bob").await;
    watcher.subscribe(0).await.unwrap();
    // Keep sending while the server stops; count what was acknowledged.
    let sender = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..100_000 {
            match alice.send("bob", &format!("{i}")).await {
                Ok(r) => acked.push(r.seq),
                Err(_) => break,
            }
        }
        acked
    });
    // Stop once sends are flowing: the watcher has been pushed one.
    next_messages(&watcher).await;
    assert!(server.stop().success());
    let acked = sender.await.unwrap();
    assert!(!acked.is_empty());
    // The watcher was told why.
    let mut told = false;
    while let Ok(Some(event)) = tokio::time::timeout(WAIT, watcher.next_event()).await {
        match event {
            Event::Goodbye { code, .. } => {
                assert_eq!(code, ErrorCode::ShuttingDown);
                told = true;
            }
            Event::Disconnected => break,
            Event::Messages(_)
            | Event::Presence { .. }
            | Event::PresenceRequest { .. }
            | Event::PresenceApproved { .. } => {}
        }
    }
    assert!(told, "watcher got a goodbye");
    assert!(server.log().contains("stopped"), "shutdown logged its counters");
    // Every acknowledged message is there after a restart.
    server.restart();
    let bob = server.user("bob").await;
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = bob.fetch(after, 1000, true).await.unwrap();
        stored.extend(page.messages.iter().map(|m| m.seq));
        match page.messages.last() {
            Some(m) if page.more => after = m.seq,
            _ => break,
        }
    }
    for seq in &acked {
        assert!(stored.binary_search(seq).is_ok(), "acked seq {seq} lost");
    }
}
