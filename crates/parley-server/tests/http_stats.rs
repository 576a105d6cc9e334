//! The HTTP front door run in process beside the native listener: its
//! counters appear in the server's stats.

use std::sync::Arc;

use parley_server::{Server, SettingArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_counters_appear_in_the_stats() {
    let settings = SettingArgs {
        store: Some("memory".into()),
        pager_per_ip_per_minute: Some("1".into()),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    let (store, secret) = parley_server::open_store(&settings).unwrap();
    let native = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = native.local_addr().unwrap().to_string();
    let base = format!("http://{}", http.local_addr().unwrap());
    let server = Server::new(settings, Arc::clone(&store), secret);
    let stats = server.stats_handle();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run_with_http(native, Some(http), async move {
        let _ = stop_rx.await;
    }));
    // An account made natively, paged over HTTP twice (the second is over
    // the per-address limit).
    let client = parley_client::Client::connect(&addr).await.unwrap();
    client.register("ann", "pw").await.unwrap();
    let http = reqwest::Client::new();
    let post = || {
        http.post(format!("{base}/v1/pager/ann"))
            .json(&serde_json::json!({ "body": "hello" }))
            .send()
    };
    assert_eq!(post().await.unwrap().status(), 202);
    assert_eq!(post().await.unwrap().status(), 429);
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.http_requests, 2);
    assert_eq!((snapshot.pager_messages, snapshot.pager_rate_limited), (1, 1));
    assert_eq!(snapshot.messages_stored, 1);
    assert_eq!(snapshot.http_sessions, 0);
    stop_tx.send(()).unwrap();
    running.await.unwrap().unwrap();
}
