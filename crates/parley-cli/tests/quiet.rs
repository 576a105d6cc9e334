//! One-shot commands are quiet: they never make the account appear online
//! to its watchers, while `watch` (a live session) does.

mod common;

use common::{Harness, Running, WAIT, watcher_of};
use parley_client::{Client, Event};
use parley_testkit::Store;

async fn next_event(client: &Client) -> Event {
    match tokio::time::timeout(WAIT, client.next_event()).await {
        Ok(Some(event)) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_commands_do_not_announce_presence() {
    let h = Harness::start(Store::Memory);
    let bob = watcher_of(&h, "bob", "alice").await;
    bob.subscribe(0).await.expect("subscribe");

    // Each command logs in and out; bob's events are in order, so any
    // presence they caused would come before the message.
    h.run("alice", &["login"]).await.expect_code(0);
    h.run("alice", &["who"]).await.expect_code(0);
    h.run("alice", &["send", "bob", "quietly"]).await.expect_code(0);
    match next_event(&bob).await {
        Event::Messages(batch) => assert_eq!(batch[0].body, "quietly"),
        other => panic!("the one-shot commands announced presence: {other:?}"),
    }

    // A live session does announce.
    let mut watch = Running::spawn(h.command_as("alice", &["watch"]));
    match next_event(&bob).await {
        Event::Presence { name, online } => assert_eq!((name.as_str(), online), ("alice", true)),
        other => panic!("expected alice online, got {other:?}"),
    }
    watch.signal("INT");
    assert_eq!(watch.exit_code().await, 0);
    match next_event(&bob).await {
        Event::Presence { name, online } => assert_eq!((name.as_str(), online), ("alice", false)),
        other => panic!("expected alice offline, got {other:?}"),
    }
}
