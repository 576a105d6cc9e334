//! `parley send-file`, `files`, `accept-file` and `refuse-file`, the real
//! binary against the real server: a file offered, listed, accepted and
//! checked; a refusal reaching the waiting sender with its exit code.

mod common;

use std::time::Duration;

use common::{Harness, finish};
use parley_testkit::Store;

/// Waits until `user`'s `parley files --json` lists an offer; returns it.
async fn first_offer(h: &Harness, user: &str) -> serde_json::Value {
    for _ in 0..200 {
        let listed = h.run(user, &["files", "--json"]).await.expect_code(0).json();
        if let Some(offer) = listed["offers"].as_array().and_then(|a| a.first()) {
            return offer.clone();
        }
        // deliberate: polling for the offer the sender's command stores.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no offer listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sent_from_the_command_line_arrives_whole_and_is_reported() {
    let h = Harness::start_with(Store::Memory, &["--relay-bytes-per-sec-per-user", "0"]);
    h.user("alice").await;
    h.user("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let source = dir.path().join("holiday photo.jpg");
    let bytes: Vec<u8> = (0..700_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(&source, &bytes).unwrap();

    let sender = tokio::spawn(finish(
        h.command_as("alice", &["send-file", "bob", source.to_str().unwrap(), "--json"]),
        None,
    ));
    let offer = first_offer(&h, "bob").await;
    assert_eq!(offer["from"], "alice");
    assert_eq!(offer["name"], "holiday photo.jpg");
    assert_eq!(offer["size"], 700_000);
    let human = h.run("bob", &["files"]).await.expect_code(0);
    assert!(human.stdout.contains("holiday photo.jpg  (700.0 kB)"), "{human:#?}");
    let seq = offer["seq"].as_u64().unwrap().to_string();

    let got = h
        .run(
            "bob",
            &["accept-file", &seq, "--out", inbox.path().to_str().unwrap(), "--json"],
        )
        .await
        .expect_code(0)
        .json();
    let sent = sender.await.unwrap().expect_code(0).json();
    assert_eq!(got["route"], "direct");
    assert_eq!(sent["route"], "direct");
    assert_eq!(got["size"], 700_000);
    assert_eq!(std::fs::read(inbox.path().join("holiday photo.jpg")).unwrap(), bytes);
    // Taken offers are no longer listed, and a second accept says the file exists.
    assert_eq!(
        h.run("bob", &["files", "--json"]).await.json()["offers"],
        serde_json::json!([])
    );
    let again = h
        .run("bob", &["accept-file", &seq, "--out", inbox.path().to_str().unwrap()])
        .await
        .expect_code(2);
    assert!(again.stderr.contains("already exists"), "{again:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_file_ends_the_waiting_sender_with_its_own_exit_code() {
    let h = Harness::start(Store::Memory);
    h.user("alice").await;
    h.user("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("unwanted.zip");
    std::fs::write(&source, b"PK not really").unwrap();

    let sender = tokio::spawn(finish(
        h.command_as("alice", &["send-file", "bob", source.to_str().unwrap(), "--relay-only"]),
        None,
    ));
    let seq = first_offer(&h, "bob").await["seq"].as_u64().unwrap().to_string();
    let refused = h.run("bob", &["refuse-file", &seq]).await.expect_code(0);
    assert!(refused.stdout.contains("refused"), "{refused:#?}");
    let sent = sender.await.unwrap().expect_code(6);
    assert!(sent.stderr.contains("refused the file"), "{sent:#?}");
    // Bad input: no such offer, and a path that is not a file.
    let none = h.run("bob", &["accept-file", "999"]).await.expect_code(4);
    assert!(none.stderr.contains("not a file offer"), "{none:#?}");
    let dir_arg = h
        .run("alice", &["send-file", "bob", dir.path().to_str().unwrap()])
        .await
        .expect_code(2);
    assert!(dir_arg.stderr.contains("is not a file"), "{dir_arg:#?}");
}
