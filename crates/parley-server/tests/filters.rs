//! The filter pipeline against the real `parleyd`: verdicts on the native
//! front door (accept, hold, reject), the spam folder (release, report,
//! delete) and the labels it keeps, the classifier offloaded to a real
//! `parleyd filter-serve` process, and both failure policies when the
//! inference server is dead or silent. (The HTTP, WebSocket and pager
//! front doors: parley-http's tests/filters.rs.)

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use parley_client::ErrorCode;
use parley_proto::v1::{self, client_frame, server_frame};
use parley_testkit::{Store, TestServer, binary};

/// Spam the built-in model holds (its own tests keep it above the hold
/// threshold), and chat it lets through.
const SPAM: &str = "Make money fast!!! Earn $5000 a week from home, no experience needed. Reply now to get started";
const CHAT: &str = "are we still on for lunch tomorrow?";

/// A blocked-phrases file for `filter_blocked_words_file`.
fn blocked_words(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("blocked.txt");
    std::fs::write(&path, "# one phrase per line\nBuy Followers\n").unwrap();
    path.display().to_string()
}

async fn verdicts_and_the_spam_folder(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let words = blocked_words(&dir);
    let server = TestServer::start_with(
        store,
        &[
            "--filter-model",
            "builtin",
            "--filter-reject-at",
            "2",
            "--filter-blocked-words-file",
            &words,
        ],
    );
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    bob.subscribe(0).await.unwrap();

    // Chat is stored and pushed as ever.
    let ok = alice.send("bob", CHAT).await.unwrap();
    assert!(!ok.held);
    assert_eq!(bodies(&next_messages(&bob).await), [CHAT]);

    // Spam is held: the sender is told, the recipient gets no push and
    // reads it only in the spam folder.
    let held = alice.send("bob", SPAM).await.unwrap();
    assert!(held.held && held.seq == 0 && held.message_id == 0, "{held:?}");
    assert_no_push(&bob).await;
    let folder = bob.list_held(0, 10).await.unwrap();
    assert_eq!(folder.messages.len(), 1);
    let h = &folder.messages[0];
    assert_eq!(
        (h.from.as_str(), h.body.as_str(), h.filter.as_str()),
        ("alice", SPAM, "spam")
    );
    let held_id = h.id;
    assert!(h.score > 0.5 && h.score <= 1.0, "score {}", h.score);
    let unread = bob.fetch(0, 10, true).await.unwrap();
    assert_eq!(
        bodies(&unread.messages),
        [CHAT],
        "held messages stay out of the mailbox"
    );
    // A resend of the same message is the same held message.
    let again = alice.send_with_id("bob", &held.client_msg_id, SPAM).await.unwrap();
    assert!(again.held && again.duplicate, "{again:?}");
    assert_eq!(bob.list_held(0, 10).await.unwrap().messages.len(), 1);

    // A blocked phrase is refused with its reason; nothing is stored.
    let refused = alice.send("bob", "cheap! buy followers today").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::Rejected));
    assert!(refused.to_string().contains("blocked_words"), "{refused}");
    assert_eq!(bob.list_held(0, 10).await.unwrap().messages.len(), 1);
    assert_no_push(&bob).await;

    // "Not spam": the held message enters the mailbox with a new seq, is
    // pushed like any new message, and leaves the folder.
    let released = bob.release_held(vec![held_id, 999_999]).await.unwrap();
    assert_eq!(released.released.len(), 1);
    assert_eq!(released.released[0].id, held_id);
    let pushed = next_messages(&bob).await;
    assert_eq!(bodies(&pushed), [SPAM]);
    assert_eq!(pushed[0].seq, released.released[0].seq);
    assert_eq!(pushed[0].from, "alice");

    // Report spam: a mailbox message moves into the folder.
    let reported = bob.report_spam(vec![ok.seq, 12345]).await.unwrap();
    assert_eq!(reported.reported.len(), 1);
    let folder = bob.list_held(0, 10).await.unwrap();
    let moved = folder
        .messages
        .iter()
        .find(|m| m.body == CHAT)
        .expect("reported message in the folder");
    assert_eq!(moved.filter, "reported");
    assert_eq!(moved.id, reported.reported[0].id);
    assert!(
        bob.fetch(0, 10, true)
            .await
            .unwrap()
            .messages
            .iter()
            .all(|m| m.body != CHAT)
    );
    // Released again, a reported message comes back as a new message (the
    // sender's own record of its client_msg_id names the deleted one).
    let back = bob.release_held(vec![moved.id]).await.unwrap();
    let pushed = next_messages(&bob).await;
    assert_eq!((bodies(&pushed), pushed[0].seq), (vec![CHAT], back.released[0].seq));
    let fetched = bob.fetch(back.released[0].seq - 1, 1, true).await.unwrap();
    assert_eq!(bodies(&fetched.messages), [CHAT]);
    bob.report_spam(vec![back.released[0].seq]).await.unwrap();
    let folder = bob.list_held(0, 10).await.unwrap();

    // Delete, reporting the rest as spam; others' ids are not ours to drop.
    let ids: Vec<u64> = folder.messages.iter().map(|m| m.id).collect();
    assert!(alice.drop_held(ids.clone(), true).await.unwrap().ids.is_empty());
    let dropped = bob.drop_held(ids.clone(), true).await.unwrap();
    assert_eq!(dropped.ids, ids);
    assert!(bob.list_held(0, 10).await.unwrap().messages.is_empty());

    // Every judgement is kept as labelled data, without who made it.
    let (status, out, err) = server.ctl(&["labels"]);
    assert!(status.success(), "{err}");
    let labels: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let judged: Vec<(bool, &str)> = labels
        .iter()
        .map(|l| (l["spam"].as_bool().unwrap(), l["text"].as_str().unwrap()))
        .collect();
    assert_eq!(judged[0], (false, SPAM), "release labels ham: {out}");
    assert_eq!(judged[1], (true, CHAT), "report labels spam: {out}");
    assert_eq!(judged[2], (false, CHAT), "{out}");
    assert_eq!(judged[3], (true, CHAT), "{out}");
    assert_eq!(judged.len(), 4 + ids.len(), "{out}");
    assert!(labels[0]["score"].as_f64().is_some() && labels[1].get("score").is_none());
    assert!(!out.contains("alice") && !out.contains("\"bob\""));
    let (_, later, _) = server.ctl(&["labels", "--after", &labels[1]["id"].to_string()]);
    assert_eq!(later.lines().count(), 2 + ids.len());

    // The counters and the model's version.
    let (status, out, _) = server.ctl(&["status"]);
    assert!(status.success());
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let stats = &status["worker"]["stats"];
    assert!(stats["filter_model"].as_str().unwrap().starts_with("20"), "{stats}");
    assert!(stats["filter_scored"].as_u64().unwrap() >= 3);
    assert!(stats["filter_held"].as_u64().unwrap() >= 1);
    assert_eq!(stats["filter_words_rejected"].as_u64(), Some(1));
}
every_store!(verdicts_and_the_spam_folder, verdicts_and_the_spam_folder);

/// Releasing several held messages when one is from an account the
/// recipient blocks releases none of them: the answer names the blocked
/// sender, the folder and the mailbox are as they were, and the rest can
/// be released on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_includes_a_blocked_sender_releases_nothing() {
    let server = TestServer::start_with(Store::Memory, parley_testkit::HOLD_EVERY_MESSAGE);
    let alice = server.user("alice").await;
    let carol = server.user("carol").await;
    let bob = server.user("bob").await;
    alice.send("bob", CHAT).await.unwrap();
    carol.send("bob", SPAM).await.unwrap();
    let folder = bob.list_held(0, 10).await.unwrap().messages;
    let ids: Vec<u64> = folder.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 2);
    bob.block("carol").await.unwrap();

    let refused = bob.release_held(ids.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::InvalidRequest), "{refused}");
    assert!(refused.to_string().contains("carol"), "{refused}");
    assert_eq!(
        bob.list_held(0, 10).await.unwrap().messages.len(),
        2,
        "nothing left the folder"
    );
    assert!(
        bob.fetch(0, 10, false).await.unwrap().messages.is_empty(),
        "nothing was stored"
    );

    let alone = bob.release_held(vec![ids[0]]).await.unwrap();
    assert_eq!(alone.released.len(), 1);
    assert_eq!(bodies(&bob.fetch(0, 10, false).await.unwrap().messages), [CHAT]);
}

/// A resend judged otherwise than its first try (stored with the filter
/// off, then held once the operator turned it on) is the stored message's
/// duplicate: the sender gets its id and seq, and the spam folder stays
/// empty, so the recipient never sees it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_held_after_it_was_stored_is_a_duplicate() {
    let mut server = TestServer::start_with(Store::Sqlite, &[]);
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let first = alice.send_with_id("bob", "c-1", SPAM).await.unwrap();
    assert!(!first.held && first.seq == 1);
    drop((alice, bob));
    server.stop();
    server.restart_with(parley_testkit::HOLD_EVERY_MESSAGE);

    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let again = alice.send_with_id("bob", "c-1", SPAM).await.unwrap();
    assert!(again.duplicate && !again.held, "{again:?}");
    assert_eq!((again.message_id, again.seq), (first.message_id, first.seq));
    assert!(bob.list_held(0, 10).await.unwrap().messages.is_empty(), "nothing held");
    // A new message is held as the settings now say.
    assert!(alice.send_with_id("bob", "c-2", CHAT).await.unwrap().held);
}

/// The other way round: a resend accepted while its first try is held is
/// stored, and releasing the held one then finds that message instead of
/// storing it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_of_a_message_whose_resend_was_stored_stores_it_once() {
    let mut server = TestServer::start_with(Store::Sqlite, parley_testkit::HOLD_EVERY_MESSAGE);
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    assert!(alice.send_with_id("bob", "c-1", CHAT).await.unwrap().held);
    drop((alice, bob));
    server.stop();
    server.restart_with(&[]);

    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let stored = alice.send_with_id("bob", "c-1", CHAT).await.unwrap();
    assert!(!stored.held && !stored.duplicate, "{stored:?}");
    let held = bob.list_held(0, 10).await.unwrap().messages;
    assert_eq!(held.len(), 1, "the gap: the first try is still held");

    let released = bob.release_held(vec![held[0].id]).await.unwrap();
    assert_eq!(released.released[0].seq, stored.seq);
    assert_eq!(
        bodies(&bob.fetch(0, 10, true).await.unwrap().messages),
        [CHAT],
        "one copy"
    );
    assert!(bob.list_held(0, 10).await.unwrap().messages.is_empty());
}

/// At the reject threshold the sender gets REJECTED (reason spam); the
/// filter is off unless configured, and operators' broadcasts skip it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spam_is_rejected_at_the_reject_threshold_and_the_filter_is_off_by_default() {
    let server = TestServer::start_with(
        Store::Memory,
        &[
            "--filter-model",
            "builtin",
            "--filter-hold-at",
            "0.5",
            "--filter-reject-at",
            "0.5",
        ],
    );
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let refused = alice.send("bob", SPAM).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::Rejected));
    assert!(refused.to_string().contains("reason: spam"), "{refused}");
    assert!(bob.fetch(0, 10, true).await.unwrap().messages.is_empty());
    assert!(bob.list_held(0, 10).await.unwrap().messages.is_empty());
    bob.subscribe(0).await.unwrap();
    let (status, _, err) = server.ctl(&["broadcast", SPAM]);
    assert!(status.success(), "{err}");
    assert_eq!(
        bodies(&next_messages(&bob).await),
        [SPAM],
        "broadcasts are not filtered"
    );

    let plain = TestServer::start(Store::Memory);
    let alice = plain.user("alice").await;
    assert!(!alice.send("alice", SPAM).await.unwrap().held);
    let (_, out, _) = plain.ctl(&["status"]);
    assert!(out.contains("\"filter_model\":\"\""), "{out}");
}

/// A `parleyd filter-serve` process on a free port.
struct FilterServe {
    child: Child,
    addr: String,
}

impl FilterServe {
    fn start() -> FilterServe {
        parley_testkit::ensure_parleyd();
        let mut child = Command::new(binary("parleyd"))
            .args(["filter-serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start parleyd filter-serve");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout).read_line(&mut line).expect("its address line");
        let addr = line
            .split_whitespace()
            .nth(3)
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        FilterServe { child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FilterServe {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends from a raw session without waiting for answers, then reads them
/// all: the replies in request order, and what was stored in bob's mailbox
/// in the order sent.
async fn pipelined_sends(server: &TestServer, count: u64) -> Vec<server_frame::Body> {
    let mut raw = RawSession::login(&server.addr, "alice", "pw-alice").await;
    let mut ids = Vec::new();
    for i in 0..count {
        let body = if i % 3 == 0 {
            SPAM.to_owned()
        } else {
            format!("message {i}")
        };
        ids.push(
            raw.send(client_frame::Body::Send(v1::SendMessage {
                to: "bob".into(),
                client_msg_id: format!("pipelined-{i}"),
                body,
            }))
            .await,
        );
    }
    let mut replies = std::collections::HashMap::new();
    while replies.len() < ids.len() {
        let frame = raw.read_frame().await;
        if let Some(body) = frame.body {
            replies.insert(frame.request_id, body);
        }
    }
    ids.iter().map(|id| replies.remove(id).expect("a reply")).collect()
}

/// Offloaded scoring: the same verdicts from a real inference-server
/// process; a sender's pipelined messages keep their order; killed, the
/// inference server costs nothing with fail_open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offloaded_scoring_keeps_order_and_fails_open() {
    let mut inference = FilterServe::start();
    let server = TestServer::start_with(
        Store::Sqlite,
        &[
            "--filter-url",
            &inference.url(),
            "--filter-reject-at",
            "2",
            "--filter-timeout-ms",
            "2000",
        ],
    );
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    assert!(alice.send("bob", SPAM).await.unwrap().held);
    assert!(!alice.send("bob", CHAT).await.unwrap().held);
    let (_, out, _) = server.ctl(&["status"]);
    let model = parley_filter::Model::builtin().unwrap().version().to_owned();
    assert!(
        out.contains(&model),
        "ctl status names the inference server's model: {out}"
    );

    let replies = pipelined_sends(&server, 60).await;
    for (i, reply) in replies.iter().enumerate() {
        match reply {
            server_frame::Body::Sent(sent) => assert_eq!(sent.held, i % 3 == 0, "message {i}: {sent:?}"),
            other => panic!("message {i}: {other:?}"),
        }
    }
    let (_, out, _) = server.ctl(&["status"]);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let stats = &status["worker"]["stats"];
    let (batches, texts) = (
        stats["filter_remote_batches"].as_u64().unwrap(),
        stats["filter_remote_texts"].as_u64().unwrap(),
    );
    assert!(
        batches >= 1 && texts == 62,
        "{batches} requests carried {texts} messages"
    );
    let stored = bob.fetch(1, 1000, true).await.unwrap();
    let expected: Vec<String> = (0..60).filter(|i| i % 3 != 0).map(|i| format!("message {i}")).collect();
    assert_eq!(bodies(&stored.messages), expected, "stored in the order sent");

    // The inference server dies: fail_open lets every message through.
    inference.kill();
    for i in 0..20 {
        let sent = alice
            .send("bob", &format!("after the inference server {i}"))
            .await
            .unwrap();
        assert!(!sent.held);
    }
    let (_, out, _) = server.ctl(&["status"]);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        status["worker"]["stats"]["filter_fail_open"].as_u64().unwrap() >= 20,
        "{out}"
    );
}

/// A dead or silent inference server with fail_closed: BUSY with a retry
/// hint, nothing stored, within about the timeout; with fail_open the
/// message is delivered unscored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_silent_inference_servers_follow_the_failure_policy() {
    // Dead: a port nobody listens on any more.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Silent: accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held_sockets = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            kept.push(socket);
        }
    });
    for target in [dead, silent_addr] {
        let url = format!("http://{target}");
        let closed = TestServer::start_with(
            Store::Memory,
            &[
                "--filter-url",
                &url,
                "--filter-fail",
                "closed",
                "--filter-timeout-ms",
                "300",
            ],
        );
        let alice = closed.user("alice").await;
        let bob = closed.user("bob").await;
        // The client retries BUSY by itself: a raw session shows the
        // server's own answer, and how soon it comes.
        drop(alice);
        let mut raw = RawSession::login(&closed.addr, "alice", "pw-alice").await;
        let started = std::time::Instant::now();
        let id = raw
            .send(client_frame::Body::Send(v1::SendMessage {
                to: "bob".into(),
                client_msg_id: "raw-1".into(),
                body: CHAT.into(),
            }))
            .await;
        let answer = raw.read_until(|f| (f.request_id == id).then(|| f.body.clone())).await;
        let took = started.elapsed();
        match answer {
            Some(server_frame::Body::Error(e)) => {
                assert_eq!(e.code, ErrorCode::Busy as i32, "{e:?}");
                assert!(e.retry_after_ms > 0);
            }
            other => panic!("{target}: {other:?}"),
        }
        assert!(
            took < Duration::from_secs(2),
            "{target}: answered in {took:?}, far past the 300 ms timeout"
        );
        assert!(
            bob.fetch(0, 10, true).await.unwrap().messages.is_empty(),
            "nothing stored"
        );
        let (_, out, _) = closed.ctl(&["status"]);
        let status: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(status["worker"]["stats"]["filter_fail_closed"].as_u64().unwrap() >= 1);

        let open = TestServer::start_with(
            Store::Memory,
            &[
                "--filter-url",
                &url,
                "--filter-fail",
                "open",
                "--filter-timeout-ms",
                "300",
            ],
        );
        let alice = open.user("alice").await;
        let bob = open.user("bob").await;
        assert!(!alice.send("bob", CHAT).await.unwrap().held);
        assert_eq!(bodies(&bob.fetch(0, 10, true).await.unwrap().messages), [CHAT]);
    }
    held_sockets.abort();
}

/// Settings that make no sense are refused at start, naming the setting.
#[test]
fn bad_filter_settings_are_refused_at_start() {
    parley_testkit::ensure_parleyd();
    let dir = tempfile::tempdir().unwrap();
    for (flags, names) in [
        (vec!["--filter-model", "/nonexistent/model.bin"], "filter_model"),
        (vec!["--filter-url", "ftp://x"], "filter_url"),
        (
            vec!["--filter-url", "http://127.0.0.1:1", "--filter-model", "builtin"],
            "choose one",
        ),
        (vec!["--filter-hold-at=-1"], "filter_hold_at"),
        (vec!["--filter-fail", "maybe"], "filter_fail"),
        (
            vec!["--filter-blocked-words-file", "/nonexistent/words"],
            "filter_blocked_words_file",
        ),
    ] {
        let out = Command::new(binary("parleyd"))
            .args([
                "--data-dir",
                &dir.path().display().to_string(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(&flags)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(names), "{flags:?}: {err}");
    }
}
