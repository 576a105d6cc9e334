//! The interactive shell: `parley` without a subcommand.
//!
//! Two owners share the terminal. The main thread runs reedline (line
//! editing, history) and executes commands by blocking on the runtime. A
//! background task owns the subscription: it takes every pushed message,
//! hands it to reedline's `ExternalPrinter` (which prints it above the line
//! being edited, without disturbing it), and only then acknowledges it. When
//! the connection ends, the task raises reedline's break signal so the
//! prompt returns and the shell exits with the "unavailable" code.
//!
//! Live delivery starts after the last seq the login reported, so messages
//! that were unread before the shell started stay unread until `/read`;
//! live ones are acknowledged by seq, never cumulatively, for the same reason.

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use parley_client::{Client, Event};
use reedline::{
    ExternalPrinter, FileBackedHistory, History, Prompt, PromptEditMode, PromptHistorySearch,
    PromptHistorySearchStatus, Reedline, Signal,
};
use tokio::runtime::Runtime;

use crate::commands::{ack_shown, unread};
use crate::exit::{Exit, Failure, describe};
use crate::format::{count, message_line, out, printable};
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
/// Messages `/read` shows when no count is given.
const DEFAULT_READ: u32 = 10;
/// Largest `/read` count (the server's fetch limit).
const MAX_READ: u32 = 1000;
/// How long the goodbye (logout) may take on the way out.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(2);

const HELP: &str = "\
commands:
  /send USER TEXT   send a message (also: @USER TEXT)
  /read [N]         show up to N unread messages (default 10) and mark them read
  /list [PATTERN]   list accounts (* marks who is online); * and ? are wildcards
  /delete ID...     delete messages from your mailbox
  /unread           how many messages are unread
  /help             this text
  /quit             leave (also Ctrl-D)
incoming messages are printed as they arrive and marked read.
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

/// Why the connection ended, set once by whoever notices first.
#[derive(Clone, Default)]
struct Closed {
    /// Raised for reedline, which then returns `Signal::ExternalBreak`.
    flag: Arc<AtomicBool>,
    /// The human-readable reason.
    reason: Arc<Mutex<Option<String>>>,
}

impl Closed {
    fn close(&self, reason: String) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(reason);
        self.flag.store(true, Ordering::SeqCst);
    }

    fn reason(&self) -> String {
        let slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        slot.clone()
            .unwrap_or_else(|| "the server closed the connection".to_owned())
    }
}

/// Runs the shell until `/quit`, Ctrl-D or the end of the connection.
pub fn run(runtime: &Runtime, mut settings: Settings) -> anyhow::Result<Exit> {
    if !terminal::interactive() || !terminal::stdout_is_terminal() {
        return Err(
            Failure::usage("the interactive shell needs a terminal; give a command instead (parley --help)").into(),
        );
    }
    let credentials = Credentials::obtain(&mut settings)?;
    let (client, info) = runtime.block_on(session::open(&settings.server, &credentials))?;
    let client = Arc::new(client);
    let hint = if info.unread > 0 { " (/read shows them)" } else { "" };
    out(&format!(
        "logged in as {}; {}{hint}",
        info.name,
        count(info.unread, "unread message")
    ))?;
    runtime.block_on(timed("subscribing", client.subscribe(info.last_seq)))?;
    out("/help lists the commands")?;

    let printer = ExternalPrinter::new(PRINTER_QUEUE);
    let closed = Closed::default();
    runtime.spawn(deliver(Arc::clone(&client), printer.sender(), closed.clone()));

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
                if let Flow::Quit = runtime.block_on(execute(&client, &line)) {
                    break;
                }
            }
            Signal::CtrlD => break,
            Signal::ExternalBreak(_) => {
                return Err(Failure::unavailable(format!("disconnected: {}", closed.reason())).into());
            }
            // Ctrl-C clears the line being edited; other signals are not used here.
            _ => {}
        }
    }
    // Built inside the runtime: a timeout needs the runtime's timer.
    let _ = runtime.block_on(async { tokio::time::timeout(LOGOUT_TIMEOUT, client.logout()).await });
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

/// Prints pushed messages through the printer, then acknowledges them.
async fn deliver(client: Arc<Client>, printer: SyncSender<String>, closed: Closed) {
    loop {
        match client.next_event().await {
            Some(Event::Messages(batch)) => {
                if batch.is_empty() {
                    continue;
                }
                let text = batch.iter().map(message_line).collect::<Vec<_>>().join("\n");
                let sender = printer.clone();
                // The printer's queue is a blocking std channel: wait for
                // room on a blocking thread, not on a runtime worker.
                let printed = tokio::task::spawn_blocking(move || sender.send(text).is_ok())
                    .await
                    .unwrap_or(false);
                if !printed {
                    // The editor is gone; nothing was shown, so nothing is acknowledged.
                    return;
                }
                if let Err(e) = ack_shown(&client, &batch, false).await {
                    let _ = printer.try_send(format!("(could not mark messages read: {})", describe(&e)));
                }
            }
            Some(Event::Goodbye { code, message }) => {
                closed.close(format!("{message} ({})", code.as_str_name()));
                return;
            }
            Some(Event::Presence { .. }) => {}
            Some(Event::Disconnected) | None => {
                closed.close("the server closed the connection".to_owned());
                return;
            }
        }
    }
}

/// What the loop does after a line.
enum Flow {
    Continue,
    Quit,
}

/// Runs one input line; errors are printed and the shell goes on.
async fn execute(client: &Client, line: &str) -> Flow {
    let line = line.trim();
    let (command, rest) = match line.split_once(char::is_whitespace) {
        Some((command, rest)) => (command, rest.trim()),
        None => (line, ""),
    };
    let result = match command {
        "" => Ok(()),
        _ if command.starts_with('@') => send(client, line.strip_prefix('@').unwrap_or(line)).await,
        "/quit" | "/exit" => return Flow::Quit,
        "/help" => out(HELP),
        "/send" => send(client, rest).await,
        "/read" => read(client, rest).await,
        "/list" => list(client, rest).await,
        "/delete" => delete(client, rest).await,
        "/unread" => match unread(client).await {
            Ok(n) => out(&count(n, "unread message")),
            Err(e) => Err(e),
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

/// `/send USER TEXT` and `@USER TEXT`.
async fn send(client: &Client, rest: &str) -> anyhow::Result<()> {
    let Some((to, text)) = rest
        .split_once(char::is_whitespace)
        .map(|(to, text)| (to, text.trim()))
        .filter(|(_, t)| !t.is_empty())
    else {
        anyhow::bail!("usage: /send USER TEXT");
    };
    let receipt = timed(&format!("sending to {to}"), client.send(to, text)).await?;
    out(&format!(
        "sent to {to} (id {}, seq {})",
        receipt.message_id, receipt.seq
    ))
}

/// `/read [N]`: the oldest unread messages, then marked read.
async fn read(client: &Client, rest: &str) -> anyhow::Result<()> {
    let limit = if rest.is_empty() {
        DEFAULT_READ
    } else {
        rest.parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_READ).contains(n))
            .ok_or_else(|| anyhow::anyhow!("usage: /read [N], N from 1 to {MAX_READ}"))?
    };
    let batch = timed("fetching messages", client.fetch(0, limit, false)).await?;
    if batch.messages.is_empty() {
        return out("no unread messages");
    }
    for m in &batch.messages {
        out(&message_line(m))?;
    }
    // Fetched from seq 0 without read ones: nothing unread lies before
    // the last shown, so the cumulative ack is exact.
    let left = ack_shown(client, &batch.messages, true).await?;
    if left > 0 {
        out(&format!("({left} more unread)"))?;
    }
    Ok(())
}

/// `/list [PATTERN]`: every page.
async fn list(client: &Client, pattern: &str) -> anyhow::Result<()> {
    let mut after = String::new();
    let mut shown = 0usize;
    loop {
        let page = timed("listing accounts", client.list_accounts(pattern, &after, 0)).await?;
        for a in &page.accounts {
            out(&format!("{} {}", if a.online { '*' } else { ' ' }, printable(&a.name)))?;
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

/// `/delete ID...`
async fn delete(client: &Client, rest: &str) -> anyhow::Result<()> {
    let ids = rest
        .split_whitespace()
        .map(str::parse::<u64>)
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|ids| !ids.is_empty())
        .ok_or_else(|| anyhow::anyhow!("usage: /delete ID... (the [id N] of a message)"))?;
    let result = timed("deleting messages", client.delete_messages(ids)).await?;
    let join = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    if !result.deleted.is_empty() {
        out(&format!("deleted: {}", join(&result.deleted)))?;
    }
    if !result.not_found.is_empty() {
        out(&format!("not found: {}", join(&result.not_found)))?;
    }
    Ok(())
}
