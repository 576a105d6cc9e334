//! What a conversation looks like from the one-shot commands: one number
//! per message, the text of what was sent, local times, multi-line
//! bodies, counts, and errors that say how long to wait.

mod common;

use common::{Harness, finish};
use parley_testkit::Store;

/// The lines of stdout.
fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_shows_one_number_and_delete_takes_it() {
    let h = Harness::start(Store::Memory);
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    // Mail to bob takes the first message ids, so alice's numbers (seqs)
    // and the server-wide ids differ.
    for i in 1..=3 {
        alice.send("bob", &format!("to bob {i}")).await.expect("send");
    }
    for i in 1..=4 {
        bob.send("alice", &format!("batch {i}")).await.expect("send");
    }

    let out = h.run("alice", &["read", "--no-ack"]).await.expect_code(0);
    let shown = lines(&out.stdout);
    assert_eq!(shown.len(), 4, "{out:#?}");
    for line in &shown {
        assert!(!line.contains("[id"), "one number per message: {out:#?}");
    }
    let third = shown.iter().find(|l| l.ends_with("batch 3")).expect("batch 3");
    assert!(third.starts_with("#3 "), "{out:#?}");

    // The number shown is the one `delete` takes, with or without its `#`.
    let out = h.run("alice", &["delete", "3"]).await.expect_code(0);
    assert_eq!(out.stdout.trim(), "deleted #3", "{out:#?}");
    h.run("alice", &["delete", "#4"]).await.expect_code(0);
    let left = alice.fetch(0, 10, true).await.expect("fetch");
    let bodies: Vec<&str> = left.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["batch 1", "batch 2"]);
    let kept = bob.fetch(0, 10, true).await.expect("fetch");
    assert_eq!(kept.messages.len(), 3, "nothing of bob's mailbox was touched");

    // A number with no message: exit 4, the others still deleted.
    let out = h.run("alice", &["delete", "3", "1"]).await.expect_code(4);
    assert!(out.stderr.contains("#3"), "{out:#?}");
    assert_eq!(out.stdout.trim(), "deleted #1", "{out:#?}");
    let json = h.run("alice", &["--json", "delete", "9"]).await.expect_code(4).json();
    assert_eq!(json, serde_json::json!({ "deleted": [], "not_found": [9] }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_prints_the_text_sent() {
    let h = Harness::start(Store::Memory);
    h.user("alice").await;
    h.user("bob").await;
    let out = h.run("bob", &["send", "alice", "hello", "there"]).await.expect_code(0);
    assert!(out.stdout.trim_end().ends_with("bob → alice: hello there"), "{out:#?}");
    let json = h
        .run("bob", &["--json", "send", "alice", "again"])
        .await
        .expect_code(0)
        .json();
    assert_eq!(json["body"], "again");
}

/// `HH:MM:SS` of a time of day, in seconds.
fn clock(secs: u64) -> String {
    let secs = secs % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_are_local_and_compact_today_and_utc_on_request() {
    let h = Harness::start(Store::Memory);
    h.user("alice").await;
    let bob = h.user("bob").await;
    let sent = bob.send("alice", "what time is it").await.expect("send");
    let ts = sent.timestamp_ms / 1000;

    // A zone without daylight saving time, spelled as POSIX does, so the
    // test needs no time-zone database: UTC+05:30.
    const OFFSET: u64 = 5 * 3600 + 1800;
    let mut cmd = h.command_as("alice", &["read", "--no-ack"]);
    cmd.env("TZ", "IST-5:30");
    let out = finish(cmd, None).await.expect_code(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let local = clock(ts + OFFSET);
    if (ts + OFFSET) / 86_400 == (now + OFFSET) / 86_400 {
        // Today: the time alone.
        assert_eq!(
            out.stdout.trim(),
            format!("#1 {local} bob: what time is it"),
            "{out:#?}"
        );
    } else {
        // Sent just before midnight there: dated.
        assert!(
            out.stdout.trim().ends_with(&format!("{local} bob: what time is it")),
            "{out:#?}"
        );
    }

    // --utc: the date, the time in UTC and a Z, whatever TZ says.
    let mut cmd = h.command_as("alice", &["--utc", "read", "--no-ack"]);
    cmd.env("TZ", "IST-5:30");
    let out = finish(cmd, None).await.expect_code(0);
    let line = out.stdout.trim();
    let stamp = &line["#1 ".len()..];
    assert!(
        stamp.starts_with("20") && stamp.as_bytes()[4] == b'-' && stamp.as_bytes()[10] == b' ',
        "{out:#?}"
    );
    assert!(
        line.ends_with(&format!("{}Z bob: what time is it", clock(ts))),
        "{out:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_takes_a_count_and_the_last_n() {
    let h = Harness::start(Store::Memory);
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let mut sent = Vec::new();
    for i in 1..=5 {
        sent.push(bob.send("alice", &format!("m{i}")).await.expect("send"));
    }

    // `read 2`, as the shell's `/read 2`.
    let out = h.run("alice", &["read", "2"]).await.expect_code(0);
    let shown = lines(&out.stdout);
    assert_eq!(shown.len(), 3, "{out:#?}");
    assert!(
        shown[0].ends_with("bob: m1") && shown[1].ends_with("bob: m2"),
        "{out:#?}"
    );
    assert_eq!(shown[2], "(3 more unread)");

    // The last two, unread, then marked read; m3 stays unread.
    let out = h.run("alice", &["read", "--last", "2"]).await.expect_code(0);
    let shown = lines(&out.stdout);
    assert_eq!(shown.len(), 2, "{out:#?}");
    assert!(
        shown[0].ends_with("bob: m4") && shown[1].ends_with("bob: m5"),
        "{out:#?}"
    );
    assert_eq!(alice.ack(0, Vec::new()).await.expect("unread").unread, 1);

    // Read ones count, and a deleted one leaves room for an older one.
    alice.delete_messages(vec![sent[3].message_id]).await.expect("delete");
    let json = h
        .run("alice", &["--json", "read", "--last", "3"])
        .await
        .expect_code(0)
        .json();
    let bodies: Vec<&str> = json["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["body"].as_str())
        .collect();
    assert_eq!(bodies, ["m2", "m3", "m5"]);
    assert_eq!(alice.ack(0, Vec::new()).await.expect("unread").unread, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_line_messages_print_as_indented_lines() {
    let h = Harness::start(Store::Memory);
    h.user("alice").await;
    let bob = h.user("bob").await;
    bob.send("alice", "multi\nline\r\n#9 12:00:00 mallory: fake\u{1b}[31m\r")
        .await
        .expect("send");
    let out = h.run("alice", &["read"]).await.expect_code(0);
    let shown = lines(&out.stdout);
    assert_eq!(shown.len(), 3, "{out:#?}");
    assert!(
        shown[0].starts_with("#1 ") && shown[0].ends_with(" bob: multi"),
        "{out:#?}"
    );
    assert_eq!(shown[1], "    line");
    // A line of the body cannot pass for a message; escapes stay visible.
    assert_eq!(shown[2], "    #9 12:00:00 mallory: fake\\u{1b}[31m\\r");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_say_how_long_to_wait() {
    let h = Harness::start_with(Store::Memory, &["--login-failures-per-account", "1"]);
    drop(h.user("alice").await);
    let mut wrong = h.command_as("alice", &["login"]);
    wrong.env("PARLEY_PASSWORD", "wrong");
    finish(wrong, None).await.expect_code(3);
    let out = h.run("alice", &["login"]).await.expect_code(7);
    assert!(
        out.stderr.contains("RATE_LIMITED") && out.stderr.contains("try again in "),
        "{out:#?}"
    );
    let json = h.run("alice", &["--json", "login"]).await.expect_code(7).json();
    assert_eq!(json["error"]["code"], "RATE_LIMITED");
    let ms = json["error"]["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(ms > 0 && ms <= 60_000, "{json}");
}
