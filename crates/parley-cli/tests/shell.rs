//! The interactive shell, driven through a real terminal: `parley` runs in
//! a detached tmux session, keys are typed with `send-keys` and the screen
//! is read with `capture-pane`.
//!
//! Without tmux these tests say why and pass, unless PARLEY_REQUIRE_SERVICES=1
//! (CI sets it), where a missing tmux fails them.

mod common;

use std::path::Path;
use std::process::Command as StdCommand;

use common::{Harness, WAIT, finish, wait_presence, watcher_of};
use parley_client::{Client, Event};
use parley_testkit::{Store, binary};

/// Whether the tests can run; panics when they must and cannot.
fn tmux_available(test: &str) -> bool {
    let found = StdCommand::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("PARLEY_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "{test}: tmux is required (PARLEY_REQUIRE_SERVICES=1) but not installed (apt-get install tmux)"
        );
        eprintln!("{test}: skipped: tmux is not installed (apt-get install tmux)");
    }
    found
}

/// Quotes for `sh`.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A private tmux server with one session; killed on drop, pass or fail.
struct Tmux {
    /// Socket name (`tmux -L`), unique per test so tests never share a server.
    socket: String,
}

impl Tmux {
    /// Starts `command` (a shell command line) in a 200x50 session.
    fn start(test: &str, command: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("parley-{test}-{}", std::process::id()),
        };
        let status = tmux
            .cmd()
            .args(["new-session", "-d", "-s", "main", "-x", "200", "-y", "50", command])
            .status()
            .expect("run tmux");
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    fn cmd(&self) -> StdCommand {
        let mut cmd = StdCommand::new("tmux");
        // -f /dev/null: the user's tmux.conf must not change key handling.
        cmd.args(["-f", "/dev/null", "-L", &self.socket]);
        cmd
    }

    fn capture(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "main"])
            .output()
            .expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types text as it is (no key names).
    fn type_text(&self, text: &str) {
        assert!(
            self.cmd()
                .args(["send-keys", "-t", "main", "-l", text])
                .status()
                .expect("send-keys")
                .success()
        );
    }

    fn press(&self, key: &str) {
        assert!(
            self.cmd()
                .args(["send-keys", "-t", "main", key])
                .status()
                .expect("send-keys")
                .success()
        );
    }

    /// Polls the screen until `ready` holds; panics with the screen after [`WAIT`].
    async fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let mut screen = String::new();
        let shown = parley_testkit::poll_within(WAIT, async || {
            screen = self.capture();
            ready(&screen).then_some(())
        })
        .await;
        assert!(shown.is_some(), "waited for {what}; the screen shows:\n{screen}");
        screen
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

/// The last non-empty line on the screen (where the prompt is).
fn last_line(screen: &str) -> &str {
    screen.lines().map(str::trim_end).rfind(|l| !l.is_empty()).unwrap_or("")
}

/// The shell command line that runs `parley --server ADDR --user USER ARGS`
/// with the harness's private home (and PARLEY_PASSWORD when given), then
/// reports its exit code and keeps the pane open so the test can read it.
fn parley_command(h: &Harness, user: &str, password: Option<&str>, args: &[&str]) -> String {
    let q = |p: &Path| quote(&p.to_string_lossy());
    let password = password
        .map(|pw| format!("PARLEY_PASSWORD={}", quote(pw)))
        .unwrap_or_default();
    let args: Vec<String> = args.iter().map(|a| quote(a)).collect();
    format!(
        "env -u PARLEY_SERVER -u PARLEY_USER -u PARLEY_PASSWORD HOME={} XDG_CONFIG_HOME={} {password} {} --server {} --user {} {}; \
         echo PARLEY-EXIT=$?; sleep 60",
        q(h.home.path()),
        q(&h.config_dir()),
        q(&binary("parley")),
        quote(&h.server.addr),
        quote(user),
        args.join(" ")
    )
}

/// The interactive shell as `user` with the right password.
fn shell_command(h: &Harness, user: &str) -> String {
    parley_command(h, user, Some(&format!("pw-{user}")), &[])
}

async fn next_bodies(client: &Client) -> Vec<(String, String)> {
    match tokio::time::timeout(WAIT, client.next_event()).await {
        Ok(Some(Event::Messages(batch))) => batch.into_iter().map(|m| (m.from, m.body)).collect(),
        other => panic!("expected pushed messages, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_prints_incoming_while_typing_and_sends() {
    if !tmux_available("shell_prints_incoming_while_typing_and_sends") {
        return;
    }
    let h = Harness::start(Store::Memory);
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    // Bob lets alice see his presence, so that /list shows him online.
    alice.add_contact("bob").await.expect("add contact");
    bob.approve_presence("alice").await.expect("approve");
    bob.send("alice", "sent before the shell").await.expect("send");
    bob.subscribe(0).await.expect("subscribe");

    let tmux = Tmux::start("typing", &shell_command(&h, "alice"));
    tmux.wait_for("the prompt", |s| {
        s.contains("logged in as alice; 1 unread message") && last_line(s) == "alice>"
    })
    .await;

    // Half a command typed, then a message arrives: it is printed above the
    // prompt and the half-typed line is kept.
    tmux.type_text("/send bob par");
    tmux.wait_for("the typed text", |s| last_line(s) == "alice> /send bob par")
        .await;
    bob.send("alice", "hello while you type").await.expect("send");
    let screen = tmux
        .wait_for("the pushed message", |s| {
            s.contains("bob: hello while you type") && last_line(s) == "alice> /send bob par"
        })
        .await;
    let pushed = screen
        .lines()
        .find(|l| l.contains("hello while you type"))
        .unwrap_or_default();
    assert!(
        pushed.starts_with("#2 ") && pushed.contains(" bob: ") && !pushed.contains("[id"),
        "{screen}"
    );

    tmux.type_text("tial");
    tmux.press("Enter");
    assert_eq!(next_bodies(&bob).await, [("alice".to_owned(), "partial".to_owned())]);
    tmux.wait_for("the sent line", |s| {
        s.contains("alice → bob: partial") && last_line(s) == "alice>"
    })
    .await;

    tmux.type_text("@bob at sign");
    tmux.press("Enter");
    assert_eq!(next_bodies(&bob).await, [("alice".to_owned(), "at sign".to_owned())]);

    // The older message was shown at login, the live one once pushed; both
    // are acknowledged, so /read has nothing more.
    parley_testkit::wait_until("the shown messages to be acknowledged", WAIT, async || {
        alice.ack(0, Vec::new()).await.expect("unread").unread == 0
    })
    .await;
    tmux.type_text("/read");
    tmux.press("Enter");
    let screen = tmux
        .wait_for("/read output", |s| {
            s.contains("no unread messages") && last_line(s) == "alice>"
        })
        .await;
    assert!(screen.contains("bob: sent before the shell"), "{screen}");

    tmux.type_text("/list");
    tmux.press("Enter");
    tmux.wait_for("/list output", |s| s.contains("* alice") && s.contains("* bob"))
        .await;

    tmux.type_text("/quit");
    tmux.press("Enter");
    tmux.wait_for("the exit", |s| s.contains("PARLEY-EXIT=0")).await;

    let history = std::fs::read_to_string(h.config_dir().join("parley/history.txt")).expect("history file");
    assert!(
        history.contains("/send bob partial") && history.contains("/quit"),
        "{history}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_exits_when_the_server_goes_away() {
    if !tmux_available("shell_exits_when_the_server_goes_away") {
        return;
    }
    let mut h = Harness::start(Store::Sqlite);
    drop(h.user("alice").await);
    let tmux = Tmux::start(
        "gone",
        &parley_command(&h, "alice", Some("pw-alice"), &["--no-reconnect"]),
    );
    tmux.wait_for("the prompt", |s| last_line(s) == "alice>").await;
    h.server.stop();
    let screen = tmux.wait_for("the exit", |s| s.contains("PARLEY-EXIT=7")).await;
    assert!(screen.contains("disconnected"), "{screen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_login_failure_and_no_terminal() {
    let h = Harness::start(Store::Memory);
    drop(h.user("alice").await);
    // Without a terminal the shell refuses to start.
    let mut cmd = h.command();
    cmd.args(["--server", &h.server.addr, "--user", "alice", "--password", "pw-alice"]);
    let out = finish(cmd, None).await.expect_code(2);
    assert!(out.stderr.contains("needs a terminal"), "{out:#?}");

    if !tmux_available("shell_login_failure_and_no_terminal") {
        return;
    }
    // The password is asked again twice; the third failure ends the shell.
    let command = shell_command(&h, "alice").replace("PARLEY_PASSWORD='pw-alice'", "PARLEY_PASSWORD='wrong'");
    let tmux = Tmux::start("authfail", &command);
    for failed in 1..=2 {
        tmux.wait_for("the password prompt again", |s| {
            s.matches("login failed for alice").count() == failed && last_line(s) == "password for alice:"
        })
        .await;
        tmux.type_text("still wrong");
        tmux.press("Enter");
    }
    let screen = tmux.wait_for("the exit", |s| s.contains("PARLEY-EXIT=3")).await;
    assert!(
        screen.contains("login failed for alice (wrong password, or no such account"),
        "{screen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_prompts_for_password_login_instead_and_pages() {
    if !tmux_available("terminal_prompts_for_password_login_instead_and_pages") {
        return;
    }
    let h = Harness::start(Store::Memory);
    for name in ["alice", "amber", "anna"] {
        drop(h.user(name).await);
    }

    // The password is asked for without echo.
    let tmux = Tmux::start("password", &parley_command(&h, "alice", None, &["login"]));
    tmux.wait_for("the password prompt", |s| last_line(s) == "password for alice:")
        .await;
    tmux.type_text("pw-alice");
    tmux.press("Enter");
    let screen = tmux.wait_for("the exit", |s| s.contains("PARLEY-EXIT=0")).await;
    assert!(
        screen.contains("logged in as alice; 0 unread messages") && !screen.contains("pw-alice"),
        "{screen}"
    );
    drop(tmux);

    // Registering a taken name offers to log in instead.
    let tmux = Tmux::start("taken", &parley_command(&h, "alice", Some("pw-alice"), &["register"]));
    tmux.wait_for("the question", |s| {
        s.contains("account alice already exists") && last_line(s) == "Log in instead? [y/N]"
    })
    .await;
    tmux.type_text("y");
    tmux.press("Enter");
    let screen = tmux.wait_for("the exit", |s| s.contains("PARLEY-EXIT=0")).await;
    assert!(screen.contains("logged in as alice"), "{screen}");
    drop(tmux);

    // On a terminal, `list` pauses between pages; q stops.
    let tmux = Tmux::start(
        "pager",
        &parley_command(&h, "alice", Some("pw-alice"), &["list", "a*", "--limit", "1"]),
    );
    tmux.wait_for("the first page", |s| {
        s.contains("* alice") && last_line(s).starts_with("-- more (Enter for next page, q to quit) --")
    })
    .await;
    tmux.press("Enter");
    tmux.wait_for("the second page", |s| {
        s.contains("  amber") && last_line(s).starts_with("-- more")
    })
    .await;
    tmux.type_text("q");
    tmux.press("Enter");
    let screen = tmux.wait_for("the exit", |s| s.contains("PARLEY-EXIT=0")).await;
    assert!(!screen.contains("anna"), "{screen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_shows_presence_and_reconnects_after_a_restart() {
    if !tmux_available("shell_shows_presence_and_reconnects_after_a_restart") {
        return;
    }
    let mut h = Harness::start(Store::Sqlite);
    let bob = h.user("bob").await;
    let alice = h.user("alice").await;
    alice.add_contact("bob").await.expect("add contact");
    bob.approve_presence("alice").await.expect("approve");
    drop(bob);
    wait_presence(&alice, "bob", false).await;
    drop(alice);

    let tmux = Tmux::start("reconnect", &shell_command(&h, "alice"));
    tmux.wait_for("the prompt", |s| last_line(s) == "alice>").await;
    let bob = h.user("bob").await;
    tmux.wait_for("bob online", |s| s.contains("* bob is online")).await;
    tmux.type_text("/who");
    tmux.press("Enter");
    tmux.wait_for("/who output", |s| s.lines().any(|l| l.trim_end() == "* bob"))
        .await;
    drop(bob);
    tmux.wait_for("bob offline", |s| s.contains("* bob went offline")).await;

    // The server goes away; a command typed meanwhile is answered, not fatal.
    h.server.stop();
    tmux.wait_for("the reconnect notice", |s| s.contains("connection lost; reconnecting…"))
        .await;
    tmux.type_text("/contacts");
    tmux.press("Enter");
    tmux.wait_for("the not-connected answer", |s| {
        s.contains("not connected (reconnecting)") && last_line(s) == "alice>"
    })
    .await;

    h.server.restart();
    tmux.wait_for("the reconnection", |s| s.contains("reconnected")).await;
    let bob = h.user("bob").await;
    bob.send("alice", "after the restart").await.expect("send");
    tmux.wait_for("the new message", |s| s.contains("bob: after the restart"))
        .await;
    tmux.type_text("/contacts");
    tmux.press("Enter");
    tmux.wait_for("/contacts output", |s| {
        s.lines().filter(|l| l.trim_end() == "* bob").count() == 2
    })
    .await;

    tmux.type_text("/quit");
    tmux.press("Enter");
    tmux.wait_for("the exit", |s| s.contains("PARLEY-EXIT=0")).await;
}

/// Waits for alice to come online in `watcher`'s events, past any other.
async fn wait_online_event(watcher: &Client, who: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, watcher.next_event()).await {
            Ok(Some(Event::Presence { name, online: true })) if name == who => return,
            Ok(Some(_)) => continue,
            other => panic!("{who} never came online: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_asks_the_password_again_shows_unread_and_takes_msg() {
    if !tmux_available("shell_asks_the_password_again_shows_unread_and_takes_msg") {
        return;
    }
    let h = Harness::start(Store::Memory);
    let bob = watcher_of(&h, "bob", "alice").await;
    bob.send("alice", "first unread").await.expect("send");
    bob.send("alice", "second\nunread").await.expect("send");
    bob.subscribe(0).await.expect("subscribe");

    // A wrong password is asked again, not fatal.
    let command = shell_command(&h, "alice").replace("PARLEY_PASSWORD='pw-alice'", "PARLEY_PASSWORD='wrong'");
    let tmux = Tmux::start("again", &command);
    tmux.wait_for("the second password prompt", |s| {
        s.contains("login failed for alice") && last_line(s) == "password for alice:"
    })
    .await;
    tmux.type_text("pw-alice");
    tmux.press("Enter");
    // The unread messages are shown at login, a multi-line one as lines,
    // and marked read.
    let screen = tmux
        .wait_for("the prompt", |s| {
            s.contains("logged in as alice; 2 unread messages") && last_line(s) == "alice>"
        })
        .await;
    assert!(screen.contains("bob: first unread"), "{screen}");
    assert!(
        screen.contains("bob: second\n    unread"),
        "a multi-line message is printed as indented lines: {screen}"
    );
    // The shell's login is seen by a watcher.
    wait_online_event(&bob, "alice").await;
    // Alice is online already: this second session announces nothing.
    let checker = h.user("alice").await;
    parley_testkit::wait_until("the unread messages to be acknowledged", WAIT, async || {
        checker.ack(0, Vec::new()).await.expect("unread").unread == 0
    })
    .await;

    // /msg is /send; the text sent is shown.
    tmux.type_text("/msg bob hi via msg");
    tmux.press("Enter");
    assert_eq!(next_bodies(&bob).await, [("alice".to_owned(), "hi via msg".to_owned())]);
    tmux.wait_for("the sent line", |s| {
        s.contains("alice → bob: hi via msg") && last_line(s) == "alice>"
    })
    .await;
    tmux.type_text("/quit");
    tmux.press("Enter");
    tmux.wait_for("the exit", |s| s.contains("PARLEY-EXIT=0")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_queues_what_is_typed_while_disconnected() {
    if !tmux_available("shell_queues_what_is_typed_while_disconnected") {
        return;
    }
    let mut h = Harness::start(Store::Sqlite);
    drop(h.user("alice").await);
    drop(h.user("bob").await);
    let tmux = Tmux::start("queue", &shell_command(&h, "alice"));
    tmux.wait_for("the prompt", |s| last_line(s) == "alice>").await;

    h.server.stop();
    tmux.wait_for("the reconnect notice", |s| s.contains("connection lost; reconnecting…"))
        .await;
    tmux.type_text("@bob while away");
    tmux.press("Enter");
    tmux.wait_for("the queued notice", |s| s.contains("queued (1 waiting)"))
        .await;
    tmux.type_text("/send bob second");
    tmux.press("Enter");
    tmux.wait_for("the second queued notice", |s| s.contains("queued (2 waiting)"))
        .await;

    h.server.restart();
    tmux.wait_for("both sent", |s| {
        s.contains("reconnected") && s.contains("alice → bob: while away") && s.contains("alice → bob: second")
    })
    .await;
    let bob = h.user("bob").await;
    let batch = bob.fetch(0, 10, true).await.expect("fetch");
    let bodies: Vec<&str> = batch.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["while away", "second"], "sent once each, in order");

    tmux.type_text("/quit");
    tmux.press("Enter");
    tmux.wait_for("the exit", |s| s.contains("PARLEY-EXIT=0")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_shows_a_file_offer_and_receives_it_in_the_background() {
    if !tmux_available("shell_shows_a_file_offer_and_receives_it_in_the_background") {
        return;
    }
    let h = Harness::start_with(Store::Memory, &["--relay-bytes-per-sec-per-user", "0"]);
    let alice = std::sync::Arc::new(h.user("alice").await);
    h.user("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let source = dir.path().join("report.pdf");
    std::fs::write(&source, vec![42u8; 300_000]).unwrap();

    let tmux = Tmux::start("files", &shell_command(&h, "bob"));
    tmux.wait_for("the prompt", |s| last_line(s) == "bob>").await;
    let sending = {
        let (alice, source) = (std::sync::Arc::clone(&alice), source.clone());
        tokio::spawn(async move {
            let options = parley_client::files::Options::default();
            parley_client::files::send_file(&alice, "bob", &source, &options, &|_| {}).await
        })
    };
    // The offer is shown as one line that says how to take it.
    tmux.wait_for("the offer", |s| {
        s.contains("alice: offers you the file report.pdf (300.0 kB): accept-file 1 or refuse-file 1")
    })
    .await;
    tmux.type_text(&format!("/accept-file 1 {}", inbox.path().display()));
    tmux.press("Enter");
    tmux.wait_for("the transfer's end", |s| {
        s.contains("file: offer #1 done:") && s.contains("SHA-256 checked")
    })
    .await;
    assert!(sending.await.unwrap().is_ok());
    assert_eq!(
        std::fs::read(inbox.path().join("report.pdf")).unwrap(),
        vec![42u8; 300_000]
    );
}

/// `/spam` lists the spam folder, `/release` delivers a held message (it is
/// then pushed like any other), `/report` moves it back, and a message the
/// shell sends that the filter holds says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_lists_releases_and_reports_spam() {
    if !tmux_available("shell_lists_releases_and_reports_spam") {
        return;
    }
    // The classifier on, holding every message and rejecting none.
    let h = Harness::start_with(Store::Memory, parley_testkit::HOLD_EVERY_MESSAGE);
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let held = bob.send("alice", "not spam at all").await.expect("send");
    assert!(held.held, "{held:?}");
    let id = alice.list_held(0, 10).await.expect("list").messages[0].id;
    drop(alice);

    let tmux = Tmux::start("spam", &shell_command(&h, "alice"));
    tmux.wait_for("the prompt", |s| {
        s.contains("logged in as alice; 0 unread messages") && last_line(s) == "alice>"
    })
    .await;

    tmux.type_text("/help");
    tmux.press("Enter");
    tmux.wait_for("the help", |s| {
        s.contains("/spam [N]") && s.contains("/release ID...") && s.contains("/report SEQ...")
    })
    .await;

    tmux.type_text("/spam");
    tmux.press("Enter");
    let screen = tmux
        .wait_for("the spam folder", |s| {
            s.contains(&format!("spam #{id} ")) && last_line(s) == "alice>"
        })
        .await;
    let line = screen
        .lines()
        .find(|l| l.starts_with(&format!("spam #{id} ")))
        .unwrap_or_default()
        .trim_end();
    assert!(
        line.contains(" bob [spam 0.") && line.ends_with("]: not spam at all"),
        "{screen}"
    );

    // Released: the answer, then the message itself, pushed with its number.
    tmux.type_text(&format!("/release {id}"));
    tmux.press("Enter");
    tmux.wait_for("the release and the push", |s| {
        s.contains(&format!("released spam #{id}: it is #1 in your mailbox"))
            && s.lines()
                .any(|l| l.starts_with("#1 ") && l.trim_end().ends_with(" bob: not spam at all"))
    })
    .await;

    tmux.type_text("/report 1");
    tmux.press("Enter");
    tmux.wait_for("the report", |s| {
        s.contains("reported #1 as spam: it is spam #") && s.contains("in your spam folder")
    })
    .await;
    tmux.type_text("/release 999");
    tmux.press("Enter");
    tmux.wait_for("an unknown id", |s| {
        s.contains("no message spam #999 in your spam folder")
    })
    .await;

    // A message alice sends is held too, and the shell says so.
    tmux.type_text("@bob hello");
    tmux.press("Enter");
    tmux.wait_for("the held line", |s| {
        s.contains("held: the server's spam filter put your message to bob in bob's spam folder")
    })
    .await;
    let folder = bob.list_held(0, 10).await.expect("bob's spam folder");
    assert_eq!(folder.messages.len(), 1);
    assert_eq!(folder.messages[0].body, "hello");

    tmux.type_text("/quit");
    tmux.press("Enter");
    tmux.wait_for("the exit", |s| s.contains("PARLEY-EXIT=0")).await;
}
