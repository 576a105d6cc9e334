//! The one-shot commands: each connects, logs in (except `register`), does
//! one thing, prints the result and returns the exit code.
//!
//! Output contract: human text on stdout, or with `--json` exactly one JSON
//! document on stdout (`watch`: one JSON object per line). Errors go to
//! stderr and are printed by `main`. A command that partly succeeded
//! (`delete` with unknown ids) prints its result and returns a non-zero
//! [`Exit`] instead of an error.

use std::io::Read;

use anyhow::Context;
use parley_client::{Client, ErrorCode, Event, LoginInfo, Message};
use serde_json::json;

use crate::cli::{DeleteAccountArgs, DeleteArgs, ListArgs, ReadArgs, SendArgs, WatchArgs};
use crate::exit::{Exit, Failure, server_code};
use crate::format::{count, message_json, message_line, out, out_json, printable};
use crate::session::{self, Credentials, timed};
use crate::settings::Settings;
use crate::terminal;

/// Most ids one DeleteMessages or Ack request may carry (parley-core's limit).
const MAX_IDS_PER_REQUEST: usize = 1000;

/// What every command gets: settings to resolve identity from, and the output mode.
pub struct Invocation {
    pub settings: Settings,
    pub json: bool,
}

impl Invocation {
    async fn open(&mut self) -> anyhow::Result<(Client, LoginInfo)> {
        let credentials = Credentials::obtain(&mut self.settings)?;
        session::open(&self.settings.server, &credentials).await
    }
}

fn print_login(ctx: &Invocation, info: &LoginInfo) -> anyhow::Result<()> {
    if ctx.json {
        out_json(&json!({
            "name": info.name,
            "user_id": info.user_id,
            "unread": info.unread,
            "last_seq": info.last_seq,
        }))
    } else {
        out(&format!(
            "logged in as {}; {}",
            info.name,
            count(info.unread, "unread message")
        ))
    }
}

/// `parley register`
pub async fn register(ctx: &mut Invocation) -> anyhow::Result<Exit> {
    let user = ctx.settings.user()?;
    let password = ctx.settings.new_password(&user)?;
    let client = session::connect(&ctx.settings.server).await?;
    match timed("registering", client.register(&user, &password)).await {
        Ok(registered) => {
            if ctx.json {
                out_json(&json!({ "name": registered.name, "user_id": registered.user_id }))?;
            } else {
                out(&format!(
                    "registered {} (user id {})",
                    registered.name, registered.user_id
                ))?;
            }
            Ok(Exit::Ok)
        }
        Err(e) if server_code(&e) == Some(ErrorCode::NameTaken) => {
            let message = format!("account {user} already exists");
            if ctx.json || !terminal::interactive() {
                return Err(Failure::new(Exit::NameTaken, "NAME_TAKEN", message).into());
            }
            eprintln!("{message}");
            if !terminal::ask_yes_no("Log in instead? [y/N] ")? {
                return Ok(Exit::NameTaken);
            }
            let info = session::login(&client, &user, &password).await?;
            print_login(ctx, &info)?;
            Ok(Exit::Ok)
        }
        Err(e) => Err(e),
    }
}

/// `parley login`
pub async fn login(ctx: &mut Invocation) -> anyhow::Result<Exit> {
    let (_client, info) = ctx.open().await?;
    print_login(ctx, &info)?;
    Ok(Exit::Ok)
}

/// `parley send USER TEXT...`
pub async fn send(ctx: &mut Invocation, args: &SendArgs) -> anyhow::Result<Exit> {
    // Credentials first: a piped password is the first line of stdin, and
    // a body read with `-` is the rest.
    let credentials = Credentials::obtain(&mut ctx.settings)?;
    let body = if args.text == ["-"] {
        let mut body = String::new();
        std::io::stdin()
            .read_to_string(&mut body)
            .context("reading the message from stdin")?;
        let kept = body.trim_end_matches(['\n', '\r']).len();
        body.truncate(kept);
        body
    } else {
        args.text.join(" ")
    };
    if body.is_empty() {
        return Err(Failure::usage("the message is empty").into());
    }
    let (client, _info) = session::open(&ctx.settings.server, &credentials).await?;
    let client_msg_id = args.id.clone().unwrap_or_else(parley_client::new_client_msg_id);
    let receipt = timed(
        &format!("sending to {}", args.to),
        client.send_with_id(&args.to, &client_msg_id, &body),
    )
    .await?;
    if ctx.json {
        out_json(&json!({
            "to": args.to,
            "id": receipt.message_id,
            "seq": receipt.seq,
            "timestamp_ms": receipt.timestamp_ms,
            "client_msg_id": receipt.client_msg_id,
            "duplicate": receipt.duplicate,
        }))?;
    } else {
        let again = if receipt.duplicate {
            "; already sent earlier with this --id, not stored again"
        } else {
            ""
        };
        out(&format!(
            "sent to {} (id {}, seq {}){again}",
            args.to, receipt.message_id, receipt.seq
        ))?;
    }
    Ok(Exit::Ok)
}

/// Acknowledges messages that were shown. With `contiguous`, everything up
/// to the last one was either shown or already read, so a cumulative ack is
/// exact and small; otherwise the seqs are listed one by one so that unread
/// messages the user never saw stay unread. Returns the unread count left.
pub async fn ack_shown(client: &Client, shown: &[Message], contiguous: bool) -> anyhow::Result<u64> {
    let Some(last) = shown.last() else {
        return unread(client).await;
    };
    if contiguous {
        return Ok(timed("marking messages read", client.ack(last.seq, Vec::new()))
            .await?
            .unread);
    }
    let mut left = 0;
    for chunk in shown.chunks(MAX_IDS_PER_REQUEST) {
        let seqs = chunk.iter().map(|m| m.seq).collect();
        left = timed("marking messages read", client.ack(0, seqs)).await?.unread;
    }
    Ok(left)
}

/// The unread count, asked with an ack that acknowledges nothing.
pub async fn unread(client: &Client) -> anyhow::Result<u64> {
    Ok(timed("counting unread messages", client.ack(0, Vec::new()))
        .await?
        .unread)
}

/// `parley read`
pub async fn read(ctx: &mut Invocation, args: &ReadArgs) -> anyhow::Result<Exit> {
    let (client, _info) = ctx.open().await?;
    let batch = timed("fetching messages", client.fetch(args.after, args.limit, args.all)).await?;
    let messages = batch.messages;
    // Print everything before acknowledging anything: a message is read once
    // it has reached stdout, not before.
    if ctx.json {
        let list: Vec<_> = messages.iter().map(message_json).collect();
        out_json(&json!({ "messages": list, "more": batch.more }))?;
    } else {
        for m in &messages {
            out(&message_line(m))?;
        }
    }
    let acknowledge = !args.no_ack && !args.all;
    let left = if acknowledge {
        ack_shown(&client, &messages, args.after == 0).await?
    } else {
        unread(&client).await?
    };
    if !ctx.json {
        if args.all {
            match messages.last() {
                None => out("no messages")?,
                Some(last) if batch.more => out(&format!("(more: parley read --all --after {})", last.seq))?,
                Some(_) => {}
            }
        } else if messages.is_empty() {
            if left == 0 {
                out("no unread messages")?;
            } else {
                // Only possible with --after: the unread ones are older.
                out(&format!(
                    "no unread messages after seq {} ({} at or before it)",
                    args.after,
                    count(left, "unread message")
                ))?;
            }
        } else {
            // Without an ack the shown messages are still counted as unread.
            let more = if acknowledge {
                left
            } else {
                left.saturating_sub(messages.len() as u64)
            };
            if more > 0 {
                out(&format!("({more} more unread)"))?;
            }
        }
    }
    Ok(Exit::Ok)
}

/// `parley list [PATTERN]`
pub async fn list(ctx: &mut Invocation, args: &ListArgs) -> anyhow::Result<Exit> {
    let (client, _info) = ctx.open().await?;
    let pause = !ctx.json && !args.all_pages && terminal::interactive() && terminal::stdout_is_terminal();
    let mut accounts = Vec::new();
    let mut after = String::new();
    let mut shown = 0usize;
    loop {
        let page = timed(
            "listing accounts",
            client.list_accounts(&args.pattern, &after, args.limit),
        )
        .await?;
        if ctx.json {
            accounts.extend(
                page.accounts
                    .iter()
                    .map(|a| json!({ "name": a.name, "online": a.online })),
            );
        } else {
            for a in &page.accounts {
                out(&format!("{} {}", if a.online { '*' } else { ' ' }, printable(&a.name)))?;
            }
        }
        shown += page.accounts.len();
        if page.next_after.is_empty() {
            break;
        }
        if pause
            && terminal::ask("-- more (Enter for next page, q to quit) --")?
                .is_none_or(|a| a.trim().eq_ignore_ascii_case("q"))
        {
            break;
        }
        after = page.next_after;
    }
    if ctx.json {
        out_json(&json!({ "accounts": accounts }))?;
    } else if shown == 0 {
        eprintln!("no accounts match {:?}", args.pattern);
    }
    Ok(Exit::Ok)
}

/// `parley delete MSG_ID...`
pub async fn delete(ctx: &mut Invocation, args: &DeleteArgs) -> anyhow::Result<Exit> {
    let mut ids = args.ids.clone();
    // Keep the user's order but ask once per id.
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
    let (client, _info) = ctx.open().await?;
    let (mut deleted, mut not_found) = (Vec::new(), Vec::new());
    for chunk in ids.chunks(MAX_IDS_PER_REQUEST) {
        let result = timed("deleting messages", client.delete_messages(chunk.to_vec())).await?;
        deleted.extend(result.deleted);
        not_found.extend(result.not_found);
    }
    if ctx.json {
        out_json(&json!({ "deleted": deleted, "not_found": not_found }))?;
    } else {
        let join = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        if !deleted.is_empty() {
            out(&format!("deleted: {}", join(&deleted)))?;
        }
        if !not_found.is_empty() {
            eprintln!("not found: {}", join(&not_found));
        }
    }
    Ok(if not_found.is_empty() { Exit::Ok } else { Exit::NotFound })
}

/// `parley delete-account --yes`
pub async fn delete_account(ctx: &mut Invocation, args: &DeleteAccountArgs) -> anyhow::Result<Exit> {
    if !args.yes {
        return Err(Failure::usage(
            "deleting an account is irreversible: the account and every message in its mailbox are gone for good; \
             run again with --yes to confirm",
        )
        .into());
    }
    let (client, info) = ctx.open().await?;
    timed("deleting the account", client.delete_account()).await?;
    if ctx.json {
        out_json(&json!({ "name": info.name, "deleted": true }))?;
    } else {
        out(&format!("account {} deleted", info.name))?;
    }
    Ok(Exit::Ok)
}

/// `parley watch`
pub async fn watch(ctx: &mut Invocation, args: &WatchArgs) -> anyhow::Result<Exit> {
    let mut stop = StopSignals::install()?;
    let (client, info) = ctx.open().await?;
    let subscribed = timed("subscribing", client.subscribe(args.after)).await?;
    if !ctx.json {
        eprintln!(
            "watching messages for {} ({}); Ctrl-C stops",
            info.name,
            count(subscribed.unread, "unread message")
        );
    }
    let mut remaining = args.count;
    if remaining == Some(0) {
        return Ok(Exit::Ok);
    }
    loop {
        let event = tokio::select! {
            _ = stop.recv() => return Ok(Exit::Ok),
            event = client.next_event() => event,
        };
        match event {
            Some(Event::Messages(mut batch)) => {
                if batch.is_empty() {
                    continue;
                }
                if let Some(left) = remaining {
                    batch.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                }
                for m in &batch {
                    if ctx.json {
                        out_json(&message_json(m))?
                    } else {
                        out(&message_line(m))?
                    }
                }
                // Catch-up and live pushes arrive in seq order after
                // `after`, so with no gap before them a cumulative ack is exact.
                ack_shown(&client, &batch, args.after == 0).await?;
                if let Some(left) = remaining.as_mut() {
                    *left = left.saturating_sub(batch.len() as u64);
                    if *left == 0 {
                        return Ok(Exit::Ok);
                    }
                }
            }
            Some(Event::Goodbye { code, message }) => {
                return Err(Failure::new(
                    Exit::Unavailable,
                    code.as_str_name(),
                    format!("the server closed the connection: {message} ({})", code.as_str_name()),
                )
                .into());
            }
            Some(Event::Presence { .. }) => {}
            Some(Event::Disconnected) | None => {
                return Err(Failure::unavailable("the server closed the connection").into());
            }
        }
    }
}

/// SIGINT and SIGTERM, installed before anything slow happens so that an
/// early Ctrl-C is not lost.
struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals {
                interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
                terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(StopSignals {})
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
