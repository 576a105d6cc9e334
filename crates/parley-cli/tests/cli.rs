//! The one-shot commands, end to end: the real `parley` binary against the
//! real `parleyd`, checked by exit code, output, and what the server holds.

mod common;

use common::{Harness, Running, WAIT, finish, wait_presence};
use parley_client::Event;
use parley_testkit::Store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_then_name_taken_then_invalid_name() {
    let h = Harness::start(Store::Memory);
    let out = h.run("alice", &["register"]).await.expect_code(0);
    assert!(out.stdout.contains("registered alice"), "{out:#?}");

    let out = h.run("alice", &["register"]).await.expect_code(5);
    assert!(out.stderr.contains("account alice already exists"), "{out:#?}");

    let out = h.run("Alice", &["--json", "register"]).await.expect_code(5);
    assert_eq!(out.json()["error"]["code"], "NAME_TAKEN");

    let out = h.run("1nvalid", &["register"]).await.expect_code(6);
    assert!(
        out.stderr.contains("INVALID_NAME") && out.stderr.contains("must start with a letter"),
        "{out:#?}"
    );

    // The account works: the library can log in with the same password.
    let client = h.server.client().await;
    client.login("alice", "pw-alice").await.expect("login as registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_shows_unread_count_sqlite() {
    let h = Harness::start(Store::Sqlite);
    h.run("alice", &["register"]).await.expect_code(0);
    let bob = h.user("bob").await;
    for i in 0..3 {
        bob.send("alice", &format!("note {i}")).await.expect("send");
    }
    let out = h.run("alice", &["login"]).await.expect_code(0);
    assert_eq!(out.stdout.trim(), "logged in as alice; 3 unread messages");

    let json = h.run("alice", &["login", "--json"]).await.expect_code(0).json();
    assert_eq!(
        (
            json["name"].as_str(),
            json["unread"].as_u64(),
            json["last_seq"].as_u64()
        ),
        (Some("alice"), Some(3), Some(3))
    );
    assert!(json["user_id"].as_u64().is_some());

    let out = h.run("alice", &["read"]).await.expect_code(0);
    assert_eq!(out.stdout.lines().count(), 3, "{out:#?}");
    let out = h.run("alice", &["login"]).await.expect_code(0);
    assert!(out.stdout.contains("0 unread messages"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_then_read_in_order_with_paging() {
    let h = Harness::start(Store::Memory);
    h.user("alice").await;
    h.user("bob").await;
    for i in 1..=5 {
        let out = h
            .run("bob", &["send", "alice", "message", &i.to_string()])
            .await
            .expect_code(0);
        assert!(
            out.stdout.trim_end().ends_with(&format!("bob → alice: message {i}")),
            "{out:#?}"
        );
    }

    let first = h.run("alice", &["read", "--limit", "2"]).await.expect_code(0);
    let lines: Vec<&str> = first.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{first:#?}");
    assert!(
        lines[0].starts_with("#1 ") && lines[0].ends_with(" bob: message 1"),
        "{first:#?}"
    );
    assert!(
        lines[1].starts_with("#2 ") && lines[1].ends_with(" bob: message 2"),
        "{first:#?}"
    );
    assert_eq!(lines[2], "(3 more unread)");

    // The first two were acknowledged, so the next read continues.
    let second = h.run("alice", &["read", "--limit", "2"]).await.expect_code(0);
    let lines: Vec<&str> = second.stdout.lines().collect();
    assert!(
        lines[0].ends_with("message 3") && lines[1].ends_with("message 4"),
        "{second:#?}"
    );
    assert_eq!(lines[2], "(1 more unread)");

    // --no-ack leaves it unread; --json is one parseable document.
    let peek = h
        .run("alice", &["read", "--no-ack", "--json"])
        .await
        .expect_code(0)
        .json();
    assert_eq!(peek["more"], false);
    let messages = peek["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(
        (
            m["id"].as_u64(),
            m["seq"].as_u64(),
            m["from"].as_str(),
            m["body"].as_str()
        ),
        (Some(5), Some(5), Some("bob"), Some("message 5"))
    );
    assert!(m["timestamp_ms"].as_u64().is_some_and(|t| t > 1_600_000_000_000));

    let last = h.run("alice", &["read", "--json"]).await.expect_code(0).json();
    assert_eq!(last["messages"].as_array().map(Vec::len), Some(1));
    let out = h.run("alice", &["read"]).await.expect_code(0);
    assert_eq!(out.stdout.trim(), "no unread messages");

    // --all shows read ones too, and --after skips.
    let out = h.run("alice", &["read", "--all", "--after", "3"]).await.expect_code(0);
    let seqs: Vec<&str> = out
        .stdout
        .lines()
        .map(|l| l.split(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(seqs, ["#4", "#5"], "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_variants_and_errors() {
    let h = Harness::start(Store::Memory);
    let alice = h.user("alice").await;
    h.user("bob").await;

    let out = h.run("bob", &["send", "nobody", "hi"]).await.expect_code(4);
    assert!(out.stderr.contains("NO_SUCH_USER"), "{out:#?}");
    let out = h.run("bob", &["send", "nobody", "hi", "--json"]).await.expect_code(4);
    assert_eq!(out.json()["error"]["code"], "NO_SUCH_USER");

    // A retry with the same --id is stored once.
    let first = h
        .run("bob", &["--json", "send", "alice", "once", "--id", "retry-1"])
        .await
        .expect_code(0)
        .json();
    let again = h
        .run("bob", &["--json", "send", "alice", "once", "--id", "retry-1"])
        .await
        .expect_code(0)
        .json();
    assert_eq!(first["id"], again["id"]);
    assert_eq!(
        (first["duplicate"].as_bool(), again["duplicate"].as_bool()),
        (Some(false), Some(true))
    );

    // `-` reads the body from stdin; the piped password is its first line.
    let mut cmd = h.command();
    cmd.args(["--server", &h.server.addr, "--user", "bob", "send", "alice", "-"]);
    finish(cmd, Some("pw-bob\nfirst line\nsecond line\n"))
        .await
        .expect_code(0);

    let batch = alice.fetch(0, 10, false).await.expect("fetch");
    let bodies: Vec<&str> = batch.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["once", "first line\nsecond line"]);
    // On the terminal a multi-line body is printed as indented lines.
    let out = h.run("alice", &["read"]).await.expect_code(0);
    assert!(out.stdout.contains("bob: first line\n    second line\n"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_with_pattern_online_marker_and_paging() {
    let h = Harness::start(Store::Memory);
    // Only albert stays connected; the others' clients are dropped at once.
    // Carl sees albert's presence (albert approved him), nobody else's.
    let albert = h.user("albert").await;
    drop(h.user("alice").await);
    drop(h.user("alfred").await);
    let observer = h.user("carl").await;
    observer.add_contact("albert").await.expect("add contact");
    albert.approve_presence("carl").await.expect("approve");
    wait_presence(&observer, "albert", true).await;
    drop(observer);

    let out = h.run("carl", &["list", "al*"]).await.expect_code(0);
    assert_eq!(out.stdout, "* albert\n  alfred\n  alice\n", "{out:#?}");

    let out = h.run("carl", &["list", "AL?CE"]).await.expect_code(0);
    assert_eq!(out.stdout, "  alice\n");

    // One account per page, every page.
    let out = h
        .run("carl", &["list", "al*", "--limit", "1", "--all-pages"])
        .await
        .expect_code(0);
    assert_eq!(out.stdout.lines().count(), 3, "{out:#?}");
    let json = h
        .run("carl", &["list", "--limit", "1", "--json"])
        .await
        .expect_code(0)
        .json();
    let names: Vec<&str> = json["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["albert", "alfred", "alice", "carl"]);
    assert_eq!(json["accounts"][0]["online"], true);

    let out = h.run("carl", &["list", "a[b]"]).await.expect_code(6);
    assert!(out.stderr.contains("INVALID_PATTERN"), "{out:#?}");
    drop(albert);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_messages_and_not_found() {
    let h = Harness::start(Store::Memory);
    h.user("alice").await;
    let bob = h.user("bob").await;
    let keep = bob.send("alice", "keep me").await.expect("send");
    let gone = bob.send("alice", "delete me").await.expect("send");

    let out = h.run("alice", &["delete", &gone.seq.to_string()]).await.expect_code(0);
    assert_eq!(out.stdout.trim(), format!("deleted #{}", gone.seq));
    let out = h.run("alice", &["read", "--all"]).await.expect_code(0);
    assert!(
        out.stdout.contains("keep me") && !out.stdout.contains("delete me"),
        "{out:#?}"
    );

    // Unknown numbers: exit 4, the known one is still deleted.
    let out = h
        .run("alice", &["delete", "999", &keep.seq.to_string()])
        .await
        .expect_code(4);
    assert!(out.stderr.contains("no message #999"), "{out:#?}");
    assert!(out.stdout.contains(&format!("deleted #{}", keep.seq)), "{out:#?}");
    let json = h.run("alice", &["--json", "delete", "999"]).await.expect_code(4).json();
    assert_eq!(json["not_found"], serde_json::json!([999]));
    let out = h.run("alice", &["read", "--all"]).await.expect_code(0);
    assert_eq!(out.stdout.trim(), "no messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_account_needs_yes_then_login_fails() {
    let h = Harness::start(Store::Sqlite);
    h.user("alice").await;
    let out = h.run("alice", &["delete-account"]).await.expect_code(2);
    assert!(
        out.stderr.contains("irreversible") && out.stderr.contains("--yes"),
        "{out:#?}"
    );
    h.run("alice", &["login"]).await.expect_code(0);

    let out = h.run("alice", &["delete-account", "--yes"]).await.expect_code(0);
    assert_eq!(out.stdout.trim(), "account alice deleted");
    let out = h.run("alice", &["login"]).await.expect_code(3);
    assert!(out.stderr.contains("login failed"), "{out:#?}");
    let out = h.run("alice", &["--json", "login"]).await.expect_code(3);
    assert_eq!(out.json()["error"]["code"], "AUTH_FAILED");
}

/// On a server that registers by invitation, `parley register` without a
/// code is refused (INVITE_INVALID) and `--invite CODE` from
/// `parleyd ctl invite` registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_takes_an_invite_code() {
    let h = Harness::start_with(Store::Sqlite, &["--registration", "invite"]);
    let out = h.run("alice", &["--json", "register"]).await;
    assert_eq!(out.json()["error"]["code"], "INVITE_INVALID", "{out:#?}");
    let (status, stdout, stderr) = h.server.ctl(&["invite"]);
    assert!(status.success(), "{stderr}");
    let reply: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let code = reply["code"].as_str().expect("code");
    let out = h.run("alice", &["register", "--invite", code]).await.expect_code(0);
    assert!(out.stdout.starts_with("registered alice"), "{out:#?}");
    h.run("alice", &["login"]).await.expect_code(0);
}

/// `parley passwd` proves the old password and sets the new one (from
/// stdin here); `parley logout --all` ends the account's other sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_changes_the_password_and_logout_all_ends_every_session() {
    let h = Harness::start(Store::Sqlite);
    h.user("alice").await;
    let elsewhere = h.user("alice").await;
    elsewhere.subscribe(0).await.unwrap();
    let out = h.run("alice", &["logout", "--all"]).await.expect_code(0);
    assert_eq!(out.stdout.trim(), "alice logged out on every device");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match elsewhere.next_event().await {
                Some(parley_client::Event::Goodbye { code, .. }) => return code,
                Some(_) => continue,
                None => panic!("closed without a goodbye"),
            }
        }
    })
    .await
    .expect("the other session ends");
    assert_eq!(ended, parley_client::ErrorCode::NotAuthenticated);

    let out = finish(h.command_as("alice", &["passwd"]), Some("a new secret\n")).await;
    let out = out.expect_code(0);
    assert!(out.stdout.contains("password of alice changed"), "{out:#?}");
    let out = h.run("alice", &["login"]).await.expect_code(3);
    assert!(out.stderr.contains("login failed"), "{out:#?}");
    let mut with_new = h.command_as("alice", &["login"]);
    with_new.env("PARLEY_PASSWORD", "a new secret");
    finish(with_new, None).await.expect_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_pushed_messages_and_stops_after_count() {
    let h = Harness::start(Store::Sqlite);
    h.user("alice").await;
    let bob = h.user("bob").await;
    let mut watch = Running::spawn(h.command_as("alice", &["watch", "--count", "2"]));
    // The notice on stderr comes after the subscription is in place.
    assert!(watch.stderr_line().await.starts_with("watching messages for alice"));
    bob.send("alice", "first").await.expect("send");
    bob.send("alice", "second").await.expect("send");
    let one = watch.stdout_line().await;
    let two = watch.stdout_line().await;
    assert!(one.starts_with("#1 ") && one.ends_with("bob: first"), "{one}");
    assert!(two.starts_with("#2 ") && two.ends_with("bob: second"), "{two}");
    assert_eq!(watch.exit_code().await, 0);
    // Printed means acknowledged.
    let out = h.run("alice", &["login"]).await.expect_code(0);
    assert!(out.stdout.contains("0 unread messages"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_json_lines_catch_up_and_sigterm() {
    let h = Harness::start(Store::Memory);
    h.user("alice").await;
    let bob = h.user("bob").await;
    bob.send("alice", "waiting already").await.expect("send");
    let mut watch = Running::spawn(h.command_as("alice", &["watch", "--json"]));
    let first: serde_json::Value = serde_json::from_str(&watch.stdout_line().await).expect("json line");
    assert_eq!(
        (first["seq"].as_u64(), first["body"].as_str()),
        (Some(1), Some("waiting already"))
    );
    bob.send("alice", "live").await.expect("send");
    let second: serde_json::Value = serde_json::from_str(&watch.stdout_line().await).expect("json line");
    assert_eq!(
        (second["seq"].as_u64(), second["from"].as_str()),
        (Some(2), Some("bob"))
    );
    watch.signal("TERM");
    assert_eq!(watch.exit_code().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_server_shutdown_as_unavailable() {
    let mut h = Harness::start(Store::Memory);
    h.user("alice").await;
    let mut watch = Running::spawn(h.command_as("alice", &["watch", "--no-reconnect"]));
    watch.stderr_line().await;
    h.server.stop();
    assert_eq!(watch.exit_code().await, 7);
    let mut rest = String::new();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(WAIT, watch.stderr.next_line()).await {
        rest.push_str(&line);
    }
    assert!(rest.contains("closed the connection"), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_precedence_and_missing_input() {
    let h = Harness::start(Store::Memory);
    h.user("alice").await;
    h.user("bob").await;
    let dir = h.config_dir().join("parley");
    std::fs::create_dir_all(&dir).expect("config dir");
    let config = format!(
        "server = \"{}\"\nuser = \"alice\"\npassword = \"pw-alice\"\n",
        h.server.addr
    );
    std::fs::write(dir.join("config.toml"), config).expect("config");

    // Everything from the default config file.
    let mut cmd = h.command();
    cmd.arg("login");
    let out = finish(cmd, None).await.expect_code(0);
    assert!(out.stdout.starts_with("logged in as alice"), "{out:#?}");

    // The environment beats the file.
    let mut cmd = h.command();
    cmd.arg("login")
        .env("PARLEY_USER", "bob")
        .env("PARLEY_PASSWORD", "pw-bob");
    assert!(
        finish(cmd, None)
            .await
            .expect_code(0)
            .stdout
            .starts_with("logged in as bob")
    );

    // A flag beats the environment: a dead server address from the env is not used.
    let mut cmd = h.command();
    cmd.args(["--server", &h.server.addr.clone(), "login"])
        .env("PARLEY_SERVER", "127.0.0.1:1");
    finish(cmd, None).await.expect_code(0);

    // An explicitly named config file must exist.
    let mut cmd = h.command();
    cmd.args(["--config", "/nonexistent/parley.toml", "login"]);
    let out = finish(cmd, None).await.expect_code(2);
    assert!(out.stderr.contains("/nonexistent/parley.toml"), "{out:#?}");

    // A typo in the file is reported.
    let bad = h.home.path().join("bad.toml");
    std::fs::write(&bad, "usr = \"alice\"\n").expect("write");
    let mut cmd = h.command();
    cmd.arg("--config").arg(&bad).arg("login");
    finish(cmd, None).await.expect_code(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_identity_and_unreachable_server() {
    let h = Harness::start(Store::Memory);
    h.user("alice").await;
    // No password anywhere and nothing on stdin: usage error.
    let mut cmd = h.command();
    cmd.args(["--server", &h.server.addr, "--user", "alice", "login"]);
    let out = finish(cmd, None).await.expect_code(2);
    assert!(out.stderr.contains("no password"), "{out:#?}");
    // A piped password works.
    let mut cmd = h.command();
    cmd.args(["--server", &h.server.addr, "--user", "alice", "login"]);
    finish(cmd, Some("pw-alice\n")).await.expect_code(0);
    // No user: usage error.
    let mut cmd = h.command();
    cmd.args(["--server", &h.server.addr, "login"])
        .env("PARLEY_PASSWORD", "x");
    finish(cmd, None).await.expect_code(2);
    // Wrong password: authentication failed.
    let mut cmd = h.command();
    cmd.args([
        "--server",
        &h.server.addr,
        "--user",
        "alice",
        "--password",
        "wrong",
        "login",
    ]);
    finish(cmd, None).await.expect_code(3);

    // Nobody listens on a port that was just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut cmd = h.command();
    cmd.args([
        "--server",
        &format!("127.0.0.1:{port}"),
        "--user",
        "alice",
        "--password",
        "x",
        "--json",
        "login",
    ]);
    let out = finish(cmd, None).await.expect_code(7);
    assert_eq!(out.json()["error"]["code"], "UNAVAILABLE");
    // Bad flags are usage errors too.
    let mut cmd = h.command();
    cmd.args(["read", "--limit", "zero"]);
    finish(cmd, None).await.expect_code(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_reach_a_library_subscriber_from_cli_send() {
    // The CLI's send goes through the same server path as the library's:
    // a subscribed library client gets it live.
    let h = Harness::start(Store::Memory);
    let alice = h.user("alice").await;
    h.user("bob").await;
    let sub = alice.subscribe(0).await.expect("subscribe");
    assert_eq!(sub.unread, 0);
    h.run("bob", &["send", "alice", "live", "one"]).await.expect_code(0);
    match tokio::time::timeout(WAIT, alice.next_event()).await {
        Ok(Some(Event::Messages(m))) => assert_eq!(m[0].body, "live one"),
        other => panic!("expected a push, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_add_list_remove_and_who() {
    let h = Harness::start_with(Store::Memory, &["--max-contacts", "2"]);
    drop(h.user("alice").await);
    // bob stays online; carol and dave exist but are offline.
    let bob = h.user("bob").await;
    for name in ["carol", "dave"] {
        drop(h.user(name).await);
    }

    let out = h.run("alice", &["contacts"]).await.expect_code(0);
    assert!(out.stdout.is_empty() && out.stderr.contains("no contacts"), "{out:#?}");
    // Adding asks; bob is shown online only once he approves.
    let out = h.run("alice", &["contacts", "add", "bob"]).await.expect_code(0);
    assert_eq!(out.stdout, "  bob (asked to see their presence)\n", "{out:#?}");
    bob.approve_presence("alice").await.expect("approve");
    let out = h.run("alice", &["contacts", "add", "Carol"]).await.expect_code(0);
    assert_eq!(out.stdout, "* bob\n  carol (asked to see their presence)\n", "{out:#?}");
    let out = h.run("alice", &["contacts", "list"]).await.expect_code(0);
    assert_eq!(out.stdout, "* bob\n  carol (asked to see their presence)\n", "{out:#?}");
    let json = h.run("alice", &["--json", "contacts"]).await.expect_code(0).json();
    assert_eq!(
        json,
        serde_json::json!({ "contacts": [
            { "name": "bob", "online": true, "subscription": "approved" },
            { "name": "carol", "online": false, "subscription": "pending" },
        ] })
    );

    let out = h.run("alice", &["who"]).await.expect_code(0);
    assert_eq!(out.stdout, "* bob\n", "{out:#?}");
    let json = h.run("alice", &["who", "--json"]).await.expect_code(0).json();
    assert_eq!(json, serde_json::json!({ "online": ["bob"] }));

    // Unknown accounts, the server's limit, and names that are not contacts.
    let out = h.run("alice", &["contacts", "add", "nobody"]).await.expect_code(4);
    assert!(out.stderr.contains("NO_SUCH_USER"), "{out:#?}");
    let out = h
        .run("alice", &["--json", "contacts", "add", "dave"])
        .await
        .expect_code(6);
    assert_eq!(out.json()["error"]["code"], "LIMIT_REACHED");
    let out = h.run("alice", &["contacts", "remove", "dave"]).await.expect_code(4);
    assert!(out.stderr.contains("dave is not one of your contacts"), "{out:#?}");
    let out = h
        .run("alice", &["--json", "contacts", "remove", "dave"])
        .await
        .expect_code(4);
    assert_eq!(out.json()["error"]["code"], "NOT_A_CONTACT");

    let out = h.run("alice", &["contacts", "remove", "CAROL"]).await.expect_code(0);
    assert_eq!(out.stdout, "* bob\n", "{out:#?}");
    let json = h
        .run("alice", &["--json", "contacts", "remove", "bob"])
        .await
        .expect_code(0)
        .json();
    assert_eq!(json, serde_json::json!({ "contacts": [] }));
    let out = h.run("alice", &["who"]).await.expect_code(0);
    assert!(
        out.stdout.is_empty() && out.stderr.contains("none of your contacts is online"),
        "{out:#?}"
    );
    let json = h.run("alice", &["--json", "who"]).await.expect_code(0).json();
    assert_eq!(json, serde_json::json!({ "online": [] }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_requests_answers_and_blocks() {
    let h = Harness::start(Store::Memory);
    for name in ["alice", "bob", "mallory"] {
        drop(h.user(name).await);
    }
    h.run("alice", &["contacts", "add", "bob"]).await.expect_code(0);
    h.run("mallory", &["contacts", "add", "bob"]).await.expect_code(0);
    let out = h.run("bob", &["presence"]).await.expect_code(0);
    assert_eq!(
        out.stdout, "  alice asks to see when you are online\n  mallory asks to see when you are online\n",
        "{out:#?}"
    );
    let json = h
        .run("bob", &["--json", "presence", "approve", "alice"])
        .await
        .expect_code(0)
        .json();
    assert_eq!(json, serde_json::json!({ "requests": ["mallory"] }));
    let out = h.run("bob", &["presence", "deny", "mallory"]).await.expect_code(0);
    assert!(
        out.stdout.is_empty() && out.stderr.contains("nobody is waiting"),
        "{out:#?}"
    );
    let out = h.run("bob", &["presence", "approve", "mallory"]).await.expect_code(6);
    assert!(out.stderr.contains("INVALID_REQUEST"), "{out:#?}");
    let json = h.run("alice", &["--json", "contacts"]).await.expect_code(0).json();
    assert_eq!(json["contacts"][0]["subscription"], "approved");
    let json = h
        .run("alice", &["--json", "presence", "cancel", "bob"])
        .await
        .expect_code(0)
        .json();
    assert_eq!(json["contacts"][0]["subscription"], "none");

    // A block: mallory's messages fail as for an unknown account.
    let out = h.run("bob", &["block", "mallory"]).await.expect_code(0);
    assert_eq!(out.stdout, "  mallory\n", "{out:#?}");
    let out = h.run("mallory", &["send", "bob", "hello?"]).await.expect_code(4);
    assert!(out.stderr.contains("NO_SUCH_USER"), "{out:#?}");
    let json = h.run("bob", &["--json", "blocked"]).await.expect_code(0).json();
    assert_eq!(json, serde_json::json!({ "blocked": ["mallory"] }));
    let out = h.run("bob", &["unblock", "mallory"]).await.expect_code(0);
    assert!(out.stderr.contains("you block nobody"), "{out:#?}");
    h.run("mallory", &["send", "bob", "hello"]).await.expect_code(0);
}
