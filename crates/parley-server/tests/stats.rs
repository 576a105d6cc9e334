//! The server crate's counters API, in process: what a metrics endpoint or a
//! status command will read.

use std::sync::Arc;

use parley_client::Client;
use parley_server::{Server, SettingArgs, StoreKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_what_happens() {
    let settings = SettingArgs {
        store: Some("memory".into()),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    assert_eq!(settings.store, StoreKind::Memory);
    let (store, secret) = parley_server::open_store(&settings).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = Server::new(settings, Arc::clone(&store), secret);
    assert_eq!(server.stats(), parley_server::Stats::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (stats_tx, mut stats_rx) = tokio::sync::mpsc::channel(1);
    let running = tokio::spawn(async move {
        // Report the counters once the clients are done, then stop.
        let run = server_run_reporting(server, listener, stop_rx, stats_tx);
        run.await
    });
    let alice = Client::connect(&addr).await.unwrap();
    alice.register("alice", "pw").await.unwrap();
    alice.login("alice", "pw").await.unwrap();
    assert!(alice.login("alice", "pw").await.is_err());
    let bob = Client::connect(&addr).await.unwrap();
    assert!(bob.login("alice", "wrong").await.is_err());
    bob.register("bob", "pw").await.unwrap();
    bob.login("bob", "pw").await.unwrap();
    bob.subscribe(0).await.unwrap();
    let sent = alice.send("bob", "hi").await.unwrap();
    loop {
        if let Some(parley_client::Event::Messages(_)) = bob.next_event().await {
            break;
        }
    }
    bob.ack(sent.seq, vec![]).await.unwrap();
    stop_tx.send(()).unwrap();
    let stats = stats_rx.recv().await.unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(stats.connections_accepted, 2);
    assert_eq!((stats.registrations, stats.logins_ok, stats.logins_failed), (2, 2, 1));
    assert_eq!(
        (stats.messages_stored, stats.messages_pushed, stats.messages_acked),
        (1, 1, 1)
    );
    assert_eq!(stats.sessions_online, 2);
}

async fn server_run_reporting(
    server: Server,
    listener: tokio::net::TcpListener,
    stop: tokio::sync::oneshot::Receiver<()>,
    report: tokio::sync::mpsc::Sender<parley_server::Stats>,
) -> anyhow::Result<()> {
    let stats = server.stats_handle();
    let shutdown = async move {
        let _ = stop.await;
        let _ = report.send(stats.snapshot()).await;
    };
    server.run(listener, shutdown).await
}
