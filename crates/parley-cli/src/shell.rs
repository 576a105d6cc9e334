//! The interactive shell: `parley` without a subcommand.
//!
//! Two owners share the terminal. The main thread runs reedline (line
//! editing, history) and executes commands by blocking on the runtime. A
//! background task, the supervisor, owns the subscription and the
//! connection's life: it takes every pushed message and presence change,
//! hands it to reedline's `ExternalPrinter` (which prints it above the line
//! being edited, without disturbing it), and only then acknowledges it.
//!
//! When the connection is lost, the supervisor takes it away from the
//! commands (which then answer "not connected (reconnecting)"), reconnects
//! as [`crate::reconnect`] describes, and hands the new one back. A command
//! that finds the connection dead first tells the supervisor so. Only when
//! reconnecting cannot help (account deleted, password refused, or
//! `--no-reconnect`) does it raise reedline's break signal, so the prompt
//! returns and the shell exits with the error's code.
//!
//! A message typed while there is no connection is queued (at most
//! [`OFFLINE_QUEUE`], with a fresh `client_msg_id` each) and the
//! supervisor sends the queue, in order, right after reconnecting and
//! before handing the connection back to the commands. A send whose
//! connection died under it is queued again with the same id: the server
//! stores a repeated id once, so a message is never stored twice.
//!
//! At login the oldest unread messages are shown (as `/read` shows them);
//! live delivery starts after the last seq the login reported, so unread
//! messages beyond those stay unread until `/read`; live ones are
//! acknowledged by seq, never cumulatively, for the same reason.

use parley_core::sync::lock;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use parley_client::{Client, Event};
use reedline::{
    ExternalPrinter, FileBackedHistory, History, Prompt, PromptEditMode, PromptHistorySearch,
    PromptHistorySearchStatus, Reedline, Signal,
};
use tokio::runtime::Runtime;
use tokio::sync::Notify;

use crate::cli::DEFAULT_READ;
use crate::commands::{
    ack_shown, add_contact, delete_by_seq, newest, numbers, online_contacts, remove_contact, seqs_of, unread,
};
use crate::exit::{Exit, Failure, classify, describe};
use crate::format::{
    account_line, contact_line, count, held_line, held_sent_line, message_line, out, presence_approved_line,
    presence_line, presence_request_line, printable, sent_line,
};
use crate::reconnect::{Delivery, End, Link, is_disconnect};
use crate::session::{self, Credentials, timed};
use crate::settings::{Settings, config_dir};
use crate::terminal;

/// Lines of history kept in memory and on disk.
const HISTORY_ENTRIES: usize = 1000;
/// History file name in the config directory.
const HISTORY_FILE: &str = "history.txt";
/// Pushed batches waiting for the prompt to print them; when full, the
/// delivery task waits, and so do its acknowledgements.
const PRINTER_QUEUE: usize = 64;
/// Largest `/read` and `/last` count (the server's fetch limit).
const MAX_READ: u32 = 1000;
/// What a command says while there is no connection.
const NOT_CONNECTED: &str = "not connected (reconnecting)";
/// Messages typed while disconnected that wait to be sent; one more is
/// refused, not queued.
const OFFLINE_QUEUE: usize = 100;
/// Passwords tried at the start before the shell gives up (as sudo).
const PASSWORD_ATTEMPTS: u32 = 3;

const HELP: &str = "\
commands:
  /send USER TEXT   send a message (also: /msg USER TEXT, @USER TEXT)
  /read [N]         show up to N unread messages (default 10) and mark them read
  /last [N]         show the N newest messages (default 10), read or not
  /list [PATTERN]   list accounts (* marks who is online); * and ? are wildcards
  /delete SEQ...    delete messages from your mailbox (the #SEQ shown)
  /spam [N]         show up to N messages of your spam folder (default 10):
                    what the server's filter held, or you reported
  /release ID...    not spam: move messages from the spam folder (the spam #ID
                    shown) to your mailbox, where they are delivered
  /report SEQ...    report messages as spam: they move to your spam folder
  /unread           how many messages are unread
  /contacts         list your contacts (* marks who is online)
  /add NAME         add a contact: its coming and going is shown
  /remove NAME      remove a contact
  /who              which contacts are online
  /requests         who asks to see when you are online
  /approve NAME     let NAME see when you are online
  /deny NAME        refuse NAME's request, or take back an approval
  /cancel NAME      withdraw your request for NAME's presence
  /block NAME       block NAME: no messages, no presence either way
  /unblock NAME     end a block
  /blocked          the accounts you block
  /files            the file offers in your mailbox
  /send-file USER PATH   offer a file; sent peer to peer, or through the server
                    when no direct path works, once USER accepts (in the background)
  /accept-file SEQ [DIR] accept a file offer and receive it (in the background)
  /refuse-file SEQ  refuse a file offer; its sender is told
  /help             this text
  /quit             leave (also Ctrl-D)
incoming messages are printed as they arrive and marked read.
when the connection is lost the shell reconnects by itself; messages typed
meanwhile are queued (up to 100) and sent once it is back.
lines starting with a space are not kept in the history.";

/// `NAME> `
struct ShellPrompt {
    name: String,
}

impl Prompt for ShellPrompt {
    fn render_prompt_left(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.name)
    }

    fn render_prompt_right(&self) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn render_prompt_indicator(&self, _mode: PromptEditMode) -> Cow<'_, str> {
        Cow::Borrowed("> ")
    }

    fn render_prompt_multiline_indicator(&self) -> Cow<'_, str> {
        Cow::Borrowed("... ")
    }

    fn render_prompt_history_search_indicator(&self, search: PromptHistorySearch) -> Cow<'_, str> {
        let failing = if matches!(search.status, PromptHistorySearchStatus::Failing) {
            "failing "
        } else {
            ""
        };
        Cow::Owned(format!("({failing}search: {}) ", search.term))
    }
}

/// Why the shell must end, set once by the supervisor.
#[derive(Clone, Default)]
struct Closed {
    /// Raised for reedline, which then returns `Signal::ExternalBreak`.
    flag: Arc<AtomicBool>,
    /// What to report.
    reason: Arc<Mutex<Option<Failure>>>,
}

impl Closed {
    fn close(&self, failure: Failure) {
        lock(&self.reason).get_or_insert(failure);
        self.flag.store(true, Ordering::SeqCst);
    }

    /// The error the shell exits with.
    fn failure(&self) -> Failure {
        let failure = lock(&self.reason)
            .take()
            .unwrap_or_else(|| Failure::unavailable("the server closed the connection"));
        Failure::new(failure.exit, failure.code, format!("disconnected: {}", failure.message))
    }
}

/// One connection, as the commands see it.
#[derive(Clone)]
struct Connection {
    /// The connection itself, shared with the command running now.
    client: Arc<Client>,
    /// Raised by a command whose request found this connection dead, for
    /// the supervisor; one per connection, so a late report cannot end the
    /// next one.
    lost: Arc<Notify>,
}

impl Connection {
    fn new(client: Client) -> Connection {
        Connection {
            client: Arc::new(client),
            lost: Arc::new(Notify::new()),
        }
    }
}

/// The connection the commands use: `None` while reconnecting. The lock is
/// only held to copy or replace the handle, never across an await.
#[derive(Clone, Default)]
struct Current(Arc<Mutex<Option<Connection>>>);

impl Current {
    fn get(&self) -> Option<Connection> {
        lock(&self.0).clone()
    }

    fn set(&self, connection: Option<Connection>) {
        *lock(&self.0) = connection;
    }

    /// A command found `connection` dead: stop handing it out and tell the
    /// supervisor, unless it already moved on.
    fn report_lost(&self, connection: &Connection) {
        let mut slot = lock(&self.0);
        if slot
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.client, &connection.client))
        {
            *slot = None;
            connection.lost.notify_one();
        }
    }
}

/// A message on its way: typed, not yet answered by the server.
struct Outgoing {
    /// Recipient, as typed.
    to: String,
    /// Text, as typed.
    body: String,
    /// Chosen when typed and kept across resends, so the server stores
    /// the message once however often it is sent.
    client_msg_id: String,
}

/// What the supervisor and the commands share.
#[derive(Clone)]
struct Shared {
    /// The connection to use, if there is one.
    current: Current,
    /// What was shown, so that `/read` and live delivery never show a
    /// message twice and a reconnect starts after the last one shown.
    delivery: Arc<Mutex<Delivery>>,
    /// Messages typed while disconnected, oldest first. Its lock is taken
    /// before `current`'s when both are needed: the supervisor hands the
    /// connection back only with the queue empty, under this lock.
    queue: Arc<Mutex<VecDeque<Outgoing>>>,
    /// The account's name, for the lines of messages sent.
    me: Arc<str>,
    /// Lines printed above the prompt, from background work.
    printer: SyncSender<String>,
}

impl Shared {
    /// Queues a message for the next connection, or says why not.
    fn enqueue(&self, outgoing: Outgoing) -> anyhow::Result<()> {
        let mut queue = lock(&self.queue);
        if queue.len() >= OFFLINE_QUEUE {
            anyhow::bail!(
                "{NOT_CONNECTED}; {OFFLINE_QUEUE} messages already wait to be sent, so this one to {} was not queued",
                outgoing.to
            );
        }
        let to = outgoing.to.clone();
        queue.push_back(outgoing);
        eprintln!(
            "{NOT_CONNECTED}: the message to {to} is queued ({} waiting) and will be sent once reconnected",
            queue.len()
        );
        Ok(())
    }
}

/// Runs the shell until `/quit`, Ctrl-D, or an end of the connection that
/// reconnecting cannot mend (any, with `reconnect` false).
pub fn run(runtime: &Runtime, mut settings: Settings, reconnect: bool) -> anyhow::Result<Exit> {
    if !terminal::interactive() || !terminal::stdout_is_terminal() {
        return Err(
            Failure::usage("the interactive shell needs a terminal; give a command instead (parley --help)").into(),
        );
    }
    let mut attempt = 1;
    let (link, client, info) = loop {
        let credentials = Credentials::obtain(&mut settings)?;
        match runtime.block_on(Link::open(&settings.server, credentials)) {
            // A mistyped password is asked again, as sudo and ssh do.
            Err(e) if classify(&e).code == "AUTH_FAILED" && attempt < PASSWORD_ATTEMPTS => {
                eprintln!("{}", describe(&e));
                settings.forget_password();
                attempt += 1;
            }
            result => break result?,
        }
    };
    let printer = ExternalPrinter::new(PRINTER_QUEUE);
    let shared = Shared {
        current: Current::default(),
        delivery: Arc::new(Mutex::new(Delivery::new(info.last_seq))),
        queue: Arc::default(),
        me: Arc::from(info.name.as_str()),
        printer: printer.sender(),
    };
    let shown = if info.unread > 0 { ":" } else { "" };
    out(&format!(
        "logged in as {}; {}{shown}",
        info.name,
        count(info.unread, "unread message")
    ))?;
    if info.unread > 0 {
        runtime.block_on(read(&client, &shared.delivery, ""))?;
    }
    runtime.block_on(timed("subscribing", client.subscribe(info.last_seq)))?;
    out("/help lists the commands")?;

    shared.current.set(Some(Connection::new(client)));
    let closed = Closed::default();
    runtime.spawn(supervise(
        link,
        shared.clone(),
        printer.sender(),
        closed.clone(),
        reconnect,
    ));

    let mut editor = Reedline::create()
        .with_history(history())
        .with_history_exclusion_prefix(Some(" ".to_owned()))
        .with_external_printer(printer)
        .with_break_signal(Arc::clone(&closed.flag));
    let prompt = ShellPrompt {
        name: info.name.clone(),
    };
    loop {
        match editor.read_line(&prompt).context("reading input")? {
            Signal::Success(line) => {
                if let Flow::Quit = runtime.block_on(execute(&shared, &line)) {
                    break;
                }
            }
            Signal::CtrlD => break,
            Signal::ExternalBreak(_) => return Err(closed.failure().into()),
            // Ctrl-C clears the line being edited; other signals are not used here.
            _ => {}
        }
    }
    if let Some(connection) = shared.current.get() {
        // Built inside the runtime: a timeout needs the runtime's timer.
        runtime.block_on(session::logout(&connection.client));
    }
    Ok(Exit::Ok)
}

/// The history: a file in the config directory, or memory only when there
/// is no config directory or it cannot be written.
fn history() -> Box<dyn History> {
    if let Some(path) = config_dir().map(|dir| dir.join(HISTORY_FILE)) {
        prepare_private_file(&path);
        match FileBackedHistory::with_file(HISTORY_ENTRIES, path.clone()) {
            Ok(history) => return Box::new(history),
            Err(e) => eprintln!("parley: history not saved ({}: {e})", path.display()),
        }
    }
    match FileBackedHistory::new(HISTORY_ENTRIES) {
        Ok(history) => Box::new(history),
        // Only a capacity of usize::MAX is refused, which HISTORY_ENTRIES is not.
        Err(_) => Box::new(FileBackedHistory::default()),
    }
}

/// Creates the history file readable by its owner only: it holds the text
/// of messages sent. Failures are left for the history to report.
fn prepare_private_file(path: &Path) {
    if path.exists() {
        return;
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = options.open(path);
}

/// Hands a line to the printer, waiting for room; false once the editor
/// is gone.
async fn show(printer: &SyncSender<String>, text: String) -> bool {
    let sender = printer.clone();
    // The printer's queue is a blocking std channel: wait for room on a
    // blocking thread, not on a runtime worker.
    tokio::task::spawn_blocking(move || sender.send(text).is_ok())
        .await
        .unwrap_or(false)
}

/// Owns the subscription: delivers on each connection until it ends, then
/// reconnects (sending what was queued meanwhile), until the end cannot be
/// mended or the editor is gone.
async fn supervise(mut link: Link, shared: Shared, printer: SyncSender<String>, closed: Closed, reconnect: bool) {
    let Some(mut connection) = shared.current.get() else {
        return;
    };
    loop {
        let lost = match deliver(&connection, &shared, &printer).await {
            None => return,
            Some(End::Fatal(failure)) => {
                shared.current.set(None);
                return closed.close(failure);
            }
            Some(End::Lost(failure)) => failure,
        };
        shared.current.set(None);
        if !reconnect {
            return closed.close(lost);
        }
        if !show(&printer, "connection lost; reconnecting…".to_owned()).await {
            return;
        }
        connection = loop {
            let (after, pending) = {
                let delivery = lock(&shared.delivery);
                (delivery.last_seq_seen(), delivery.pending_acks())
            };
            let mut status = |line: String| {
                // Progress notes only: dropped when the printer is full.
                let _ = printer.try_send(line);
            };
            let client = match link.reconnect(after, &pending, &mut status).await {
                Ok(client) => client,
                Err(e) => {
                    let report = classify(&e);
                    return closed.close(Failure::new(report.exit, report.code, report.message));
                }
            };
            lock(&shared.delivery).acked(&pending);
            if !show(&printer, link.reconnected()).await {
                return;
            }
            let connection = Connection::new(client);
            match send_queued(&connection, &shared, &printer).await {
                Some(true) => break connection,
                // Lost again while sending: what is left stays queued.
                Some(false) => continue,
                None => return,
            }
        };
    }
}

/// Sends the queued messages in order on a new connection, printing each
/// one sent, then hands the connection to the commands. Returns false when
/// the connection was lost meanwhile (the unsent stay queued), None when
/// the editor is gone.
async fn send_queued(connection: &Connection, shared: &Shared, printer: &SyncSender<String>) -> Option<bool> {
    loop {
        let outgoing = {
            let mut queue = lock(&shared.queue);
            match queue.pop_front() {
                Some(outgoing) => outgoing,
                None => {
                    // Under the queue's lock: a command that finds no
                    // connection queues before this, one that finds it sends.
                    shared.current.set(Some(connection.clone()));
                    return Some(true);
                }
            }
        };
        let line = match send_one(&connection.client, &shared.me, &outgoing).await {
            Ok(line) => line,
            Err(e) if crate::reconnect::is_disconnect(&e) => {
                lock(&shared.queue).push_front(outgoing);
                return Some(false);
            }
            Err(e) => format!(
                "error: the queued message to {} was not sent: {}",
                outgoing.to,
                describe(&e)
            ),
        };
        if !show(printer, line).await {
            return None;
        }
    }
}

/// Prints pushed messages and presence changes through the printer, then
/// acknowledges the messages; returns how the connection ended (`None`:
/// the editor is gone).
async fn deliver(connection: &Connection, shared: &Shared, printer: &SyncSender<String>) -> Option<End> {
    let client = &connection.client;
    loop {
        let event = tokio::select! {
            _ = connection.lost.notified() => {
                return Some(End::Lost(Failure::unavailable("the connection stopped answering")));
            }
            event = client.next_event() => event,
        };
        match event {
            Some(Event::Messages(batch)) => {
                let sorted = lock(&shared.delivery).sort(batch, None);
                if !sorted.new.is_empty() {
                    let text = sorted.new.iter().map(message_line).collect::<Vec<_>>().join("\n");
                    if !show(printer, text).await {
                        // The editor is gone; nothing was shown, so nothing is acknowledged.
                        return None;
                    }
                }
                let seqs = sorted.seqs_to_ack();
                if seqs.is_empty() {
                    continue;
                }
                match ack_shown(client, &seqs, false).await {
                    Ok(_) => {}
                    Err(e) if is_disconnect(&e) => {
                        lock(&shared.delivery).ack_failed(&seqs);
                        return Some(End::request_failed(&e));
                    }
                    Err(e) => {
                        let _ = printer.try_send(format!("(could not mark messages read: {})", describe(&e)));
                    }
                }
            }
            Some(Event::Presence { name, online }) => {
                if !show(printer, presence_line(&name, online)).await {
                    return None;
                }
            }
            Some(Event::PresenceRequest { from }) => {
                if !show(printer, presence_request_line(&from)).await {
                    return None;
                }
            }
            Some(Event::PresenceApproved { name }) => {
                if !show(printer, presence_approved_line(&name)).await {
                    return None;
                }
            }
            Some(Event::Goodbye { code, message }) => return Some(End::from_goodbye(Some((code, message)))),
            Some(Event::Disconnected) | None => return Some(End::from_goodbye(None)),
        }
    }
}

/// What the loop does after a line.
enum Flow {
    Continue,
    Quit,
}

/// Commands that send a message (besides `@USER TEXT`).
const SEND_COMMANDS: &[&str] = &["/send", "/msg"];

/// Commands that talk to the server.
const CONNECTED_COMMANDS: &[&str] = &[
    "/read",
    "/last",
    "/list",
    "/delete",
    "/spam",
    "/release",
    "/report",
    "/unread",
    "/contacts",
    "/add",
    "/remove",
    "/who",
    "/requests",
    "/approve",
    "/deny",
    "/cancel",
    "/block",
    "/unblock",
    "/blocked",
    "/files",
    "/refuse-file",
];

/// Commands that start a file transfer in the background.
const FILE_COMMANDS: &[&str] = &["/send-file", "/accept-file"];

/// Runs one input line; errors are printed and the shell goes on.
async fn execute(shared: &Shared, line: &str) -> Flow {
    let line = line.trim();
    let (command, rest) = match line.split_once(char::is_whitespace) {
        Some((command, rest)) => (command, rest.trim()),
        None => (line, ""),
    };
    let result = match command {
        "" => Ok(()),
        "/quit" | "/exit" => return Flow::Quit,
        "/help" => out(HELP),
        _ if command.starts_with('@') => send(shared, line.strip_prefix('@').unwrap_or(line)).await,
        _ if SEND_COMMANDS.contains(&command) => send(shared, rest).await,
        _ if CONNECTED_COMMANDS.contains(&command) => {
            let Some(connection) = shared.current.get() else {
                eprintln!("{NOT_CONNECTED}");
                return Flow::Continue;
            };
            match execute_connected(&connection.client, &shared.delivery, command, rest).await {
                Err(e) if is_disconnect(&e) => {
                    shared.current.report_lost(&connection);
                    eprintln!("{NOT_CONNECTED}");
                    return Flow::Continue;
                }
                result => result,
            }
        }
        _ if FILE_COMMANDS.contains(&command) => match shared.current.get() {
            Some(connection) => start_transfer(shared, &connection.client, command, rest),
            None => {
                eprintln!("{NOT_CONNECTED}");
                return Flow::Continue;
            }
        },
        _ if command.starts_with('/') => Err(anyhow::anyhow!("unknown command {command}; /help lists the commands")),
        _ => Err(anyhow::anyhow!(
            "to send, type @USER TEXT or /send USER TEXT; /help lists the commands"
        )),
    };
    if let Err(e) = result {
        eprintln!("error: {}", describe(&e));
    }
    Flow::Continue
}

/// The commands that need the connection.
async fn execute_connected(
    client: &Client,
    delivery: &Mutex<Delivery>,
    command: &str,
    rest: &str,
) -> anyhow::Result<()> {
    match command {
        "/read" => read(client, delivery, rest).await,
        "/last" => last(client, delivery, rest).await,
        "/list" => list(client, rest).await,
        "/delete" => delete(client, rest).await,
        "/spam" => spam(client, rest).await,
        "/release" => release(client, rest).await,
        "/report" => report(client, rest).await,
        "/unread" => out(&count(unread(client).await?, "unread message")),
        "/contacts" => show_contacts(&timed("listing contacts", client.list_contacts()).await?),
        "/add" => show_contacts(&add_contact(client, one_name(rest, "/add NAME")?).await?),
        "/remove" => show_contacts(&remove_contact(client, one_name(rest, "/remove NAME")?).await?),
        "/requests" => show_requests(&timed("listing presence requests", client.presence_requests()).await?),
        "/approve" => {
            let name = one_name(rest, "/approve NAME")?;
            show_requests(&timed(&format!("approving {name}"), client.approve_presence(name)).await?)
        }
        "/deny" => {
            let name = one_name(rest, "/deny NAME")?;
            show_requests(&timed(&format!("denying {name}"), client.deny_presence(name)).await?)
        }
        "/cancel" => {
            let name = one_name(rest, "/cancel NAME")?;
            show_contacts(
                &timed(
                    &format!("cancelling your request for {name}"),
                    client.cancel_presence(name),
                )
                .await?,
            )
        }
        "/block" => {
            let name = one_name(rest, "/block NAME")?;
            show_blocked(&timed(&format!("blocking {name}"), client.block(name)).await?)
        }
        "/unblock" => {
            let name = one_name(rest, "/unblock NAME")?;
            show_blocked(&timed(&format!("unblocking {name}"), client.unblock(name)).await?)
        }
        "/blocked" => show_blocked(&timed("listing blocked accounts", client.list_blocked()).await?),
        "/files" => show_offers(client).await,
        "/refuse-file" => {
            let seq = one_seq(rest, "/refuse-file SEQ")?;
            timed("refusing the file", client.refuse_file(seq)).await?;
            out(&format!("refused offer {seq}; its sender is told"))
        }
        "/who" => {
            let online = online_contacts(client).await?;
            if online.is_empty() {
                return out("none of your contacts is online");
            }
            online.iter().try_for_each(|name| out(&account_line(name, true)))
        }
        _ => Err(anyhow::anyhow!("unknown command {command}; /help lists the commands")),
    }
}

/// The offers in the mailbox, one line each.
async fn show_offers(client: &Client) -> anyhow::Result<()> {
    let offers = crate::files::offers(client).await?;
    if offers.is_empty() {
        return out("no file offers");
    }
    offers.iter().try_for_each(|(seq, from, o)| {
        out(&format!(
            "  #{seq} {} from {} ({})",
            printable(&o.name),
            printable(from),
            parley_core::files::human_size(o.size)
        ))
    })
}

/// Starts `/send-file USER PATH` or `/accept-file SEQ [DIR]` in the
/// background: the shell goes on while it waits and runs, and it prints
/// where it stands (at each quarter) and how it ended.
fn start_transfer(shared: &Shared, client: &Arc<Client>, command: &str, rest: &str) -> anyhow::Result<()> {
    let printer = shared.printer.clone();
    let client = Arc::clone(client);
    let options = parley_client::files::Options::default();
    let words: Vec<&str> = rest.split_whitespace().collect();
    let what: String;
    let job: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> = match (command, &words[..]) {
        ("/send-file", [to, ..]) if words.len() >= 2 => {
            let (to, path) = ((*to).to_owned(), std::path::PathBuf::from(rest[to.len()..].trim()));
            what = format!("{} to {to}", path.display());
            Box::pin(async move {
                let progress = quarters(printer.clone());
                parley_client::files::send_file(&client, &to, &path, &options, &progress).await
            })
        }
        ("/accept-file", [seq] | [seq, _]) => {
            let seq: u64 = seq
                .parse()
                .map_err(|_| anyhow::anyhow!("usage: /accept-file SEQ [DIR]"))?;
            let out = words.get(1).map(std::path::PathBuf::from);
            what = format!("offer #{seq}");
            Box::pin(async move {
                let progress = quarters(printer.clone());
                parley_client::files::receive_file(&client, seq, out.as_deref(), &options, &progress).await
            })
        }
        ("/send-file", _) => anyhow::bail!("usage: /send-file USER PATH"),
        _ => anyhow::bail!("usage: /accept-file SEQ [DIR]"),
    };
    let printer = shared.printer.clone();
    let started = format!("file: {what} started; it goes on in the background");
    tokio::spawn(async move {
        let line = match job.await {
            Ok(done) => format!(
                "file: {} done: {} ({}, {}; SHA-256 checked)",
                what,
                done.path.display(),
                parley_core::files::human_size(done.size),
                done.route
            ),
            Err(e) => format!("file: {what} failed: {e}"),
        };
        let _ = printer.send(line);
    });
    out(&started)
}

/// Progress for the shell: a line when waiting, when started, and at each
/// quarter of the bytes.
fn quarters(printer: SyncSender<String>) -> impl Fn(parley_client::files::Progress) + Send + Sync {
    use parley_client::files::Progress;
    let shown = std::sync::atomic::AtomicU64::new(0);
    move |p| {
        let line = match p {
            Progress::Waiting { peer, .. } => format!("file: waiting for {}", printable(&peer)),
            Progress::Started { route, from, size } => format!(
                "file: {} {route}{}",
                parley_core::files::human_size(size),
                if from > 0 { " (resuming)" } else { "" }
            ),
            Progress::Bytes { done, size } => {
                let quarter = done.saturating_mul(4) / size.max(1);
                if quarter == 0 || quarter >= 4 || shown.swap(quarter, Ordering::Relaxed) >= quarter {
                    return;
                }
                format!("file: {}%", quarter * 25)
            }
        };
        let _ = printer.send(line);
    }
}

/// The single seq a command takes.
fn one_seq(rest: &str, usage: &str) -> anyhow::Result<u64> {
    one_name(rest, usage)?
        .parse()
        .map_err(|_| anyhow::anyhow!("usage: {usage}"))
}

/// The single account name a command takes.
fn one_name<'a>(rest: &'a str, usage: &str) -> anyhow::Result<&'a str> {
    match rest.split_whitespace().collect::<Vec<_>>()[..] {
        [name] => Ok(name),
        _ => Err(anyhow::anyhow!("usage: {usage}")),
    }
}

/// The contact list, `* NAME` for those online.
fn show_contacts(contacts: &[parley_client::AccountEntry]) -> anyhow::Result<()> {
    if contacts.is_empty() {
        return out("no contacts (/add NAME adds one)");
    }
    contacts.iter().try_for_each(|c| out(&contact_line(c)))
}

/// The accounts waiting for an answer to their presence requests.
fn show_requests(requests: &[String]) -> anyhow::Result<()> {
    if requests.is_empty() {
        return out("nobody is waiting for your answer");
    }
    requests
        .iter()
        .try_for_each(|name| out(&format!("  {} asks to see when you are online", printable(name))))
}

/// The accounts blocked.
fn show_blocked(blocked: &[String]) -> anyhow::Result<()> {
    if blocked.is_empty() {
        return out("you block nobody");
    }
    blocked
        .iter()
        .try_for_each(|name| out(&format!("  {}", printable(name))))
}

/// `/send USER TEXT`, `/msg USER TEXT` and `@USER TEXT`: sent now, or
/// queued while there is no connection.
async fn send(shared: &Shared, rest: &str) -> anyhow::Result<()> {
    let Some((to, text)) = rest
        .split_once(char::is_whitespace)
        .map(|(to, text)| (to, text.trim()))
        .filter(|(_, t)| !t.is_empty())
    else {
        anyhow::bail!("usage: /send USER TEXT");
    };
    let outgoing = Outgoing {
        to: to.to_owned(),
        body: text.to_owned(),
        client_msg_id: parley_client::new_client_msg_id(),
    };
    let connection = {
        // The queue's lock first: see `Shared::queue`.
        let queue = lock(&shared.queue);
        match shared.current.get() {
            Some(connection) if queue.is_empty() => connection,
            _ => {
                drop(queue);
                return shared.enqueue(outgoing);
            }
        }
    };
    match send_one(&connection.client, &shared.me, &outgoing).await {
        Ok(line) => out(&line),
        Err(e) if is_disconnect(&e) => {
            // It may have been stored; the resend's id makes that safe.
            shared.current.report_lost(&connection);
            shared.enqueue(outgoing)
        }
        Err(e) => Err(e),
    }
}

/// Sends one message; returns the line that shows it.
async fn send_one(client: &Client, me: &str, outgoing: &Outgoing) -> anyhow::Result<String> {
    let receipt = timed(
        &format!("sending to {}", outgoing.to),
        client.send_with_id(&outgoing.to, &outgoing.client_msg_id, &outgoing.body),
    )
    .await?;
    if receipt.held {
        return Ok(held_sent_line(&outgoing.to));
    }
    Ok(sent_line(me, &outgoing.to, receipt.timestamp_ms, &outgoing.body))
}

/// The count a command takes: `DEFAULT_READ` when none is given.
fn read_count(rest: &str, usage: &str) -> anyhow::Result<u32> {
    if rest.is_empty() {
        return Ok(DEFAULT_READ);
    }
    rest.parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_READ).contains(n))
        .ok_or_else(|| anyhow::anyhow!("usage: {usage}, N from 1 to {MAX_READ}"))
}

/// `/read [N]`: the oldest unread messages, then marked read. A message
/// already shown live (pushed, its acknowledgement still on the way) is
/// not shown again.
async fn read(client: &Client, delivery: &Mutex<Delivery>, rest: &str) -> anyhow::Result<()> {
    let limit = read_count(rest, "/read [N]")?;
    let batch = timed("fetching messages", client.fetch(0, limit, false)).await?;
    let seqs = seqs_of(&batch.messages);
    let new = lock(delivery).unseen(batch.messages);
    for m in &new {
        out(&message_line(m))?;
    }
    // Fetched from seq 0 without read ones: nothing unread lies before
    // the last shown, so the cumulative ack is exact.
    let left = ack_shown(client, &seqs, true).await?;
    if left > 0 {
        out(&format!("({left} more unread; /read shows them)"))?;
    } else if new.is_empty() {
        out("no unread messages")?;
    }
    Ok(())
}

/// `/last [N]`: the newest messages, read or not (shown again if they
/// were); the unread ones among them are marked read.
async fn last(client: &Client, delivery: &Mutex<Delivery>, rest: &str) -> anyhow::Result<()> {
    let n = read_count(rest, "/last [N]")?;
    let after = lock(delivery).last_seq_seen();
    let messages = newest(client, after, n).await?;
    if messages.is_empty() {
        return out("no messages");
    }
    for m in &messages {
        out(&message_line(m))?;
    }
    let unread: Vec<u64> = messages.iter().filter(|m| !m.acked).map(|m| m.seq).collect();
    // Recorded as shown, so that a push of one of them is not shown again.
    lock(delivery).unseen(messages);
    ack_shown(client, &unread, false).await?;
    Ok(())
}

/// `/list [PATTERN]`: every page.
async fn list(client: &Client, pattern: &str) -> anyhow::Result<()> {
    let mut after = String::new();
    let mut shown = 0usize;
    loop {
        let page = timed("listing accounts", client.list_accounts(pattern, &after, 0)).await?;
        for a in &page.accounts {
            out(&account_line(&a.name, a.online))?;
        }
        shown += page.accounts.len();
        if page.next_after.is_empty() {
            break;
        }
        after = page.next_after;
    }
    if shown == 0 {
        out("no accounts match")?;
    }
    Ok(())
}

/// `/delete SEQ...`
async fn delete(client: &Client, rest: &str) -> anyhow::Result<()> {
    let seqs = numbers_of(rest, crate::cli::parse_seq, "/delete SEQ... (the #SEQ of a message)")?;
    let result = delete_by_seq(client, &seqs).await?;
    if !result.deleted.is_empty() {
        out(&format!("deleted {}", numbers(&result.deleted)))?;
    }
    if !result.not_found.is_empty() {
        out(&format!("no message {} in your mailbox", numbers(&result.not_found)))?;
    }
    Ok(())
}

/// The numbers a command takes, parsed by `parse`; the usage when there
/// are none or one does not parse.
fn numbers_of(rest: &str, parse: fn(&str) -> Result<u64, String>, usage: &str) -> anyhow::Result<Vec<u64>> {
    rest.split_whitespace()
        .map(parse)
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|numbers| !numbers.is_empty())
        .ok_or_else(|| anyhow::anyhow!("usage: {usage}"))
}

/// `/spam [N]`: the oldest N messages of the spam folder; acknowledges
/// nothing.
async fn spam(client: &Client, rest: &str) -> anyhow::Result<()> {
    let limit = read_count(rest, "/spam [N]")?;
    let (held, more) = crate::spam::held_page(client, 0, limit).await?;
    for m in &held {
        out(&held_line(m))?;
    }
    match held.last() {
        None => out("no messages in your spam folder"),
        Some(last) if more => out(&format!(
            "(more after spam #{0}: parley read --spam --after {0})",
            last.id
        )),
        Some(_) => Ok(()),
    }
}

/// Prints what a spam-folder command did; what was not found on stdout
/// too, as `/delete` does.
fn show_outcome((lines, missing): (Vec<String>, Option<String>)) -> anyhow::Result<()> {
    lines.iter().chain(missing.iter()).try_for_each(|line| out(line))
}

/// `/release ID...`: the released messages are then pushed as new ones.
async fn release(client: &Client, rest: &str) -> anyhow::Result<()> {
    let ids = numbers_of(
        rest,
        crate::cli::parse_spam_id,
        "/release ID... (the spam #ID that /spam shows)",
    )?;
    show_outcome(crate::spam::released_lines(&crate::spam::release(client, &ids).await?))
}

/// `/report SEQ...`
async fn report(client: &Client, rest: &str) -> anyhow::Result<()> {
    let seqs = numbers_of(rest, crate::cli::parse_seq, "/report SEQ... (the #SEQ of a message)")?;
    show_outcome(crate::spam::reported_lines(&crate::spam::report(client, &seqs).await?))
}
