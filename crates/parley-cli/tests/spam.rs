//! The spam folder from the command line, end to end: a real `parleyd`
//! whose filter holds or rejects messages, and the real `parley` binary.

mod common;

use common::Harness;
use parley_testkit::Store;

use parley_testkit::HOLD_EVERY_MESSAGE as HOLD_EVERYTHING;

/// Whether `line` shows a held message: `spam #ID TIME FROM [FILTER D.DD]: BODY`.
fn is_held_line(line: &str, id: u64, from: &str, filter: &str, body: &str) -> bool {
    let Some(rest) = line.strip_prefix(&format!("spam #{id} ")) else {
        return false;
    };
    let Some((_, rest)) = rest.split_once(&format!(" {from} [{filter} ")) else {
        return false;
    };
    let Some((score, shown)) = rest.split_once("]: ") else {
        return false;
    };
    let two_decimals = score.len() == 4 && score.as_bytes()[1] == b'.' && score.parse::<f32>().is_ok();
    two_decimals && shown == body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_send_says_so_and_read_spam_lists_and_pages() {
    let h = Harness::start_with(Store::Memory, HOLD_EVERYTHING);
    h.user("alice").await;
    h.user("bob").await;

    let out = h.run("bob", &["send", "alice", "cheap pills"]).await.expect_code(0);
    assert_eq!(
        out.stdout.trim(),
        "held: the server's spam filter put your message to alice in alice's spam folder; \
         it is stored but not delivered until alice releases it",
        "{out:#?}"
    );
    let json = h
        .run("bob", &["--json", "send", "alice", "second offer"])
        .await
        .expect_code(0)
        .json();
    assert_eq!(
        (json["held"].as_bool(), json["seq"].as_u64(), json["id"].as_u64()),
        (Some(true), Some(0), Some(0))
    );

    // Nothing was delivered.
    let out = h.run("alice", &["read"]).await.expect_code(0);
    assert_eq!(out.stdout.trim(), "no unread messages");

    let out = h.run("alice", &["read", "--spam"]).await.expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:#?}");
    assert!(is_held_line(lines[0], 1, "bob", "spam", "cheap pills"), "{out:#?}");
    assert!(is_held_line(lines[1], 2, "bob", "spam", "second offer"), "{out:#?}");

    // A count pages like `read --all`; --after continues.
    let out = h.run("alice", &["read", "--spam", "1"]).await.expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:#?}");
    assert_eq!(lines[1], "(more: parley read --spam --after 1)");
    let json = h
        .run("alice", &["--json", "read", "--spam", "--after", "1"])
        .await
        .expect_code(0)
        .json();
    assert_eq!(json["more"], false);
    let messages = json["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{json}");
    let m = &messages[0];
    assert_eq!(
        (
            m["id"].as_u64(),
            m["from"].as_str(),
            m["body"].as_str(),
            m["filter"].as_str()
        ),
        (Some(2), Some("bob"), Some("second offer"), Some("spam"))
    );
    assert!(m["score"].as_f64().is_some_and(|s| (0.0..=1.0).contains(&s)), "{json}");
    let out = h.run("alice", &["read", "--spam", "--after", "2"]).await.expect_code(0);
    assert_eq!(out.stdout.trim(), "no messages in your spam folder after spam #2");

    // Listing acknowledged nothing and left the folder as it was.
    let out = h.run("alice", &["login"]).await.expect_code(0);
    assert!(out.stdout.contains("0 unread messages"), "{out:#?}");
    let out = h.run("alice", &["read", "--spam"]).await.expect_code(0);
    assert_eq!(out.stdout.lines().count(), 2, "{out:#?}");

    let out = h.run("alice", &["read", "--spam", "--all"]).await.expect_code(2);
    assert!(out.stderr.contains("cannot be used with"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_delivers_and_report_spam_moves_back() {
    let h = Harness::start_with(Store::Sqlite, HOLD_EVERYTHING);
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let held = bob.send("alice", "actually from a friend").await.expect("send");
    assert!(held.held && held.seq == 0, "{held:?}");
    // The sender is not told the spam-folder id; the recipient reads it.
    let held_id = alice.list_held(0, 10).await.expect("list").messages[0].id;

    // Released: it gets a number in the mailbox; an unknown id is exit 4.
    let out = h
        .run("alice", &["release", &held_id.to_string(), "99"])
        .await
        .expect_code(4);
    assert_eq!(
        out.stdout.trim(),
        format!("released spam #{held_id}: it is #1 in your mailbox"),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains("no message spam #99 in your spam folder"),
        "{out:#?}"
    );
    let out = h.run("alice", &["read"]).await.expect_code(0);
    assert!(
        out.stdout.starts_with("#1 ") && out.stdout.trim_end().ends_with(" bob: actually from a friend"),
        "{out:#?}"
    );
    let out = h.run("alice", &["read", "--spam"]).await.expect_code(0);
    assert_eq!(out.stdout.trim(), "no messages in your spam folder");

    // Reported (already read): it leaves the mailbox for the spam folder.
    let out = h.run("alice", &["report-spam", "#1", "42"]).await.expect_code(4);
    let line = out.stdout.trim();
    assert!(
        line.starts_with("reported #1 as spam: it is spam #") && line.ends_with(" in your spam folder"),
        "{out:#?}"
    );
    assert!(out.stderr.contains("no message #42 in your mailbox"), "{out:#?}");
    let id: u64 = line
        .trim_start_matches("reported #1 as spam: it is spam #")
        .trim_end_matches(" in your spam folder")
        .parse()
        .expect("spam id");
    let out = h.run("alice", &["read", "--all"]).await.expect_code(0);
    assert_eq!(out.stdout.trim(), "no messages");
    let out = h.run("alice", &["read", "--spam"]).await.expect_code(0);
    assert!(
        is_held_line(out.stdout.trim(), id, "bob", "reported", "actually from a friend"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("[reported 1.00]"), "{out:#?}");

    let json = h
        .run("alice", &["--json", "report-spam", "7"])
        .await
        .expect_code(4)
        .json();
    assert_eq!(json["not_found"], serde_json::json!([7]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_spam_with_and_without_report() {
    let h = Harness::start_with(Store::Memory, HOLD_EVERYTHING);
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    for body in ["one", "two", "three"] {
        let receipt = bob.send("alice", body).await.expect("send");
        assert!(receipt.held, "{receipt:?}");
    }
    let ids: Vec<String> = alice
        .list_held(0, 10)
        .await
        .expect("list")
        .messages
        .iter()
        .map(|m| m.id.to_string())
        .collect();

    let out = h
        .run("alice", &["delete", "--spam", &format!("#{}", ids[0])])
        .await
        .expect_code(0);
    assert_eq!(out.stdout.trim(), format!("deleted spam #{}", ids[0]), "{out:#?}");
    let out = h
        .run("alice", &["delete", "--spam", "--report", &ids[1], "77"])
        .await
        .expect_code(4);
    assert_eq!(
        out.stdout.trim(),
        format!("deleted spam #{} (reported as spam)", ids[1]),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains("no message spam #77 in your spam folder"),
        "{out:#?}"
    );
    let json = h
        .run("alice", &["--json", "delete", "--spam", &ids[2]])
        .await
        .expect_code(0)
        .json();
    assert_eq!(
        json["deleted"][0].as_u64().map(|id| id.to_string()),
        Some(ids[2].clone())
    );
    let out = h.run("alice", &["read", "--spam"]).await.expect_code(0);
    assert_eq!(out.stdout.trim(), "no messages in your spam folder");

    // --report only goes with --spam.
    let out = h.run("alice", &["delete", "--report", "1"]).await.expect_code(2);
    assert!(out.stderr.contains("--spam"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_send_is_refused_with_its_reason() {
    let words = tempfile::tempdir().expect("temp dir");
    let path = words.path().join("blocked.txt");
    std::fs::write(&path, "forbidden phrase\n").expect("write the blocked words");
    let path = path.to_string_lossy().into_owned();
    let h = Harness::start_with(Store::Memory, &["--filter-blocked-words-file", &path]);
    h.user("alice").await;
    h.user("bob").await;

    let out = h
        .run("bob", &["send", "alice", "this has a Forbidden Phrase in it"])
        .await
        .expect_code(6);
    assert_eq!(out.stdout, "", "{out:#?}");
    let message = out.stderr.trim();
    assert!(
        message.starts_with("parley: sending to alice: ")
            && message.contains("nothing was stored")
            && message.contains("[reason: blocked_words]")
            && message.ends_with("(REJECTED)"),
        "{out:#?}"
    );
    let json = h
        .run("bob", &["--json", "send", "alice", "forbidden phrase"])
        .await
        .expect_code(6)
        .json();
    assert_eq!(json["error"]["code"], "REJECTED");

    // Other messages go through, and only they arrive.
    let out = h.run("bob", &["send", "alice", "a fine message"]).await.expect_code(0);
    assert!(out.stdout.contains("bob → alice: a fine message"), "{out:#?}");
    let out = h.run("alice", &["read"]).await.expect_code(0);
    assert_eq!(out.stdout.lines().count(), 1, "{out:#?}");
}

/// More than the server's page of 100: `read --spam N` reads as many pages
/// as N takes, and says more follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_spam_pages_past_the_servers_page() {
    let h = Harness::start_with(Store::Memory, HOLD_EVERYTHING);
    h.user("alice").await;
    let bob = h.user("bob").await;
    for i in 0..130 {
        assert!(bob.send("alice", &format!("offer {i}")).await.expect("send").held);
    }
    let json = h
        .run("alice", &["--json", "read", "--spam", "120"])
        .await
        .expect_code(0)
        .json();
    let messages = json["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 120);
    assert_eq!(messages[119]["body"], "offer 119");
    assert_eq!(json["more"], true);
}
