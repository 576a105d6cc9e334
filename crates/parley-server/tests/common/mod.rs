//! Helpers shared by the server's scenario tests.
#![allow(dead_code)]

use std::time::Duration;

use parley_client::{Client, Event, Message};

/// Longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Runs a scenario against both stores.
#[macro_export]
macro_rules! both_stores {
    ($name:ident, $scenario:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$scenario(parley_testkit::Store::Memory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$scenario(parley_testkit::Store::Sqlite).await;
            }
        }
    };
}

/// Waits for the next pushed messages, failing the test after [`WAIT`].
pub async fn next_messages(client: &Client) -> Vec<Message> {
    match tokio::time::timeout(WAIT, client.next_event()).await {
        Ok(Some(Event::Messages(m))) => m,
        Ok(Some(other)) => panic!("expected messages, got {other:?}"),
        Ok(None) => panic!("connection ended"),
        Err(_) => panic!("no push within {WAIT:?}"),
    }
}

/// Collects exactly `n` pushed messages.
pub async fn collect_pushes(client: &Client, n: usize) -> Vec<Message> {
    let mut all = Vec::new();
    while all.len() < n {
        all.extend(next_messages(client).await);
    }
    assert_eq!(all.len(), n, "more messages than expected");
    all
}

/// Asserts that no push arrives for a short while.
pub async fn assert_no_push(client: &Client) {
    if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), client.next_event()).await {
        panic!("unexpected event {e:?}");
    }
}

pub fn bodies(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.body.as_str()).collect()
}
