//! The one-shot commands: each connects, logs in (except `register`), does
//! one thing, prints the result and returns the exit code. Their sessions
//! are quiet: running one does not make the account appear online to its
//! watchers (`watch` and the shell are not quiet).
//!
//! Output contract: human text on stdout, or with `--json` exactly one JSON
//! document on stdout (`watch`: one JSON object per line). Errors go to
//! stderr and are printed by `main`. A command that partly succeeded
//! (`delete`, `release`, `report-spam` with unknown ids) prints its result and returns a non-zero
//! [`Exit`] instead of an error.

use std::io::Read;
use std::sync::Arc;

use anyhow::Context;
use parley_client::{AccountEntry, Client, ErrorCode, Event, LoginInfo, Message, Visibility};
use serde_json::json;

use crate::cli::{
    ContactsAction, ContactsArgs, DeleteAccountArgs, DeleteArgs, ListArgs, LogoutArgs, PresenceAction, PresenceArgs,
    ReadArgs, RegisterArgs, SendArgs, WatchArgs,
};
use crate::exit::{Exit, Failure, server_code};
use crate::format::{
    account_line, contact_line, count, held_sent_line, message_json, message_line, out, out_json,
    presence_approved_line, presence_json, presence_line, presence_request_line, printable, sent_line,
    subscription_name,
};
use crate::reconnect::{Delivery, End, Link, is_disconnect};
use crate::session::{self, Credentials, timed};
use crate::settings::Settings;
use crate::terminal;

/// Most ids one DeleteMessages or Ack request may carry (parley-core's limit).
const MAX_IDS_PER_REQUEST: usize = 1000;
/// Most messages one Fetch may return (parley-core's limit).
const MAX_FETCH: u32 = 1000;

/// What every command gets: settings to resolve identity from, and the output mode.
pub struct Invocation {
    pub settings: Settings,
    pub json: bool,
    /// Whether `watch` reconnects when the connection is lost.
    pub reconnect: bool,
    /// The connection a one-shot command logged in on, kept so that
    /// [`Invocation::finish`] can log it out.
    pub opened: Option<Arc<Client>>,
}

impl Invocation {
    pub async fn open(&mut self) -> anyhow::Result<(Arc<Client>, LoginInfo)> {
        let credentials = Credentials::obtain(&mut self.settings)?;
        self.open_with(&credentials).await
    }

    async fn open_with(&mut self, credentials: &Credentials) -> anyhow::Result<(Arc<Client>, LoginInfo)> {
        let (client, info) = session::open(&self.settings.server, credentials, Visibility::Quiet).await?;
        let client = Arc::new(client);
        self.opened = Some(Arc::clone(&client));
        Ok((client, info))
    }

    /// Logs out the one-shot command's session, so the resume token its
    /// login made stops working at once instead of lingering for days.
    pub async fn finish(&mut self) {
        if let Some(client) = self.opened.take() {
            session::logout(&client).await;
        }
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
pub async fn register(ctx: &mut Invocation, args: &RegisterArgs) -> anyhow::Result<Exit> {
    let user = ctx.settings.user()?;
    let password = ctx.settings.new_password(&user)?;
    let client = session::connect(&ctx.settings.server).await?;
    let invite = args.invite.as_deref().unwrap_or_default();
    match timed("registering", client.register_with_invite(&user, &password, invite)).await {
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
            let info = session::login(&client, &user, &password, Visibility::Quiet).await?;
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
    let (client, info) = ctx.open_with(&credentials).await?;
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
            "held": receipt.held,
            "body": body,
        }))?;
    } else {
        if receipt.held {
            out(&held_sent_line(&args.to))?;
        } else {
            out(&sent_line(&info.name, &args.to, receipt.timestamp_ms, &body))?;
        }
        if receipt.duplicate {
            out("(already sent earlier with this --id; not stored again)")?;
        }
    }
    Ok(Exit::Ok)
}

/// Acknowledges the seqs (ascending) of messages that were shown. With
/// `contiguous`, everything up to the last one was either shown or already
/// read, so a cumulative ack is exact and small; otherwise the seqs are
/// listed one by one so that unread messages the user never saw stay
/// unread. Returns the unread count left.
pub async fn ack_shown(client: &Client, seqs: &[u64], contiguous: bool) -> anyhow::Result<u64> {
    let Some(&last) = seqs.last() else {
        return unread(client).await;
    };
    if contiguous {
        return Ok(timed("marking messages read", client.ack(last, Vec::new()))
            .await?
            .unread);
    }
    let mut left = 0;
    for chunk in seqs.chunks(MAX_IDS_PER_REQUEST) {
        left = timed("marking messages read", client.ack(0, chunk.to_vec()))
            .await?
            .unread;
    }
    Ok(left)
}

/// The seqs of messages, for [`ack_shown`].
pub fn seqs_of(messages: &[parley_client::Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// The unread count, asked with an ack that acknowledges nothing.
pub async fn unread(client: &Client) -> anyhow::Result<u64> {
    Ok(timed("counting unread messages", client.ack(0, Vec::new()))
        .await?
        .unread)
}

/// The `n` newest messages of the mailbox, read or not, oldest first.
/// `last_seq` is a recent highest seq (the login's): the search starts
/// `n` below it and widens while deletions leave fewer than `n`, and
/// reads on to the end, so messages newer than `last_seq` count too.
pub async fn newest(client: &Client, last_seq: u64, n: u32) -> anyhow::Result<Vec<Message>> {
    let wanted = n as usize;
    let mut span = u64::from(n);
    loop {
        let start = last_seq.saturating_sub(span);
        let mut messages: Vec<Message> = Vec::new();
        let mut after = start;
        loop {
            let batch = timed("fetching messages", client.fetch(after, MAX_FETCH, true)).await?;
            if let Some(last) = batch.messages.last() {
                after = last.seq;
            }
            messages.extend(batch.messages);
            // Only the newest n are kept.
            let extra = messages.len().saturating_sub(wanted);
            messages.drain(..extra);
            if !batch.more {
                break;
            }
        }
        if messages.len() >= wanted || start == 0 {
            return Ok(messages);
        }
        span = span.saturating_mul(4);
    }
}

/// Prints `messages` in `--json` or as lines.
fn print_messages(ctx: &Invocation, messages: &[Message], more: bool) -> anyhow::Result<()> {
    if ctx.json {
        let list: Vec<_> = messages.iter().map(message_json).collect();
        out_json(&json!({ "messages": list, "more": more }))
    } else {
        messages.iter().try_for_each(|m| out(&message_line(m)))
    }
}

/// `parley read --last N`: the newest messages, read or not; the unread
/// ones among them are marked read once printed (unless `--no-ack`).
async fn read_last(
    ctx: &Invocation,
    client: &Client,
    info: &LoginInfo,
    args: &ReadArgs,
    n: u32,
) -> anyhow::Result<Exit> {
    let messages = newest(client, info.last_seq, n).await?;
    print_messages(ctx, &messages, false)?;
    let unread: Vec<u64> = messages.iter().filter(|m| !m.acked).map(|m| m.seq).collect();
    if !args.no_ack && !unread.is_empty() {
        ack_shown(client, &unread, false).await?;
    }
    if !ctx.json && messages.is_empty() {
        out("no messages")?;
    }
    Ok(Exit::Ok)
}

/// `parley read`
pub async fn read(ctx: &mut Invocation, args: &ReadArgs) -> anyhow::Result<Exit> {
    if args.spam {
        return crate::spam::read(ctx, args).await;
    }
    let (client, info) = ctx.open().await?;
    if let Some(n) = args.last {
        return read_last(ctx, &client, &info, args, n).await;
    }
    let batch = timed("fetching messages", client.fetch(args.after, args.limit(), args.all)).await?;
    let messages = batch.messages;
    // Print everything before acknowledging anything: a message is read once
    // it has reached stdout, not before.
    print_messages(ctx, &messages, batch.more)?;
    let acknowledge = !args.no_ack && !args.all;
    let left = if acknowledge {
        ack_shown(&client, &seqs_of(&messages), args.after == 0).await?
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
                out(&account_line(&a.name, a.online))?;
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

/// Messages numbered by their seq, as `delete` takes them.
#[derive(Debug, Default)]
pub struct DeletedSeqs {
    /// Deleted now.
    pub deleted: Vec<u64>,
    /// No such message in the mailbox (never was, or deleted already).
    pub not_found: Vec<u64>,
}

/// Deletes the messages numbered `seqs` (the `#SEQ` shown) from the
/// mailbox. The server deletes by message id, so the ids are looked up
/// first: a fetch from each number not yet found, read ones included.
pub async fn delete_by_seq(client: &Client, seqs: &[u64]) -> anyhow::Result<DeletedSeqs> {
    let mut wanted: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
    let mut seq_of_id = std::collections::HashMap::new();
    while let Some(&first) = wanted.first() {
        let batch = timed(
            "looking up the messages",
            client.fetch(first.saturating_sub(1), MAX_FETCH, true),
        )
        .await?;
        let Some(last) = batch.messages.last().map(|m| m.seq) else {
            break;
        };
        for m in &batch.messages {
            if wanted.contains(&m.seq) {
                seq_of_id.insert(m.message_id, m.seq);
            }
        }
        // Numbers up to the last one fetched are found or gone.
        wanted.retain(|seq| *seq > last);
        if !batch.more {
            break;
        }
    }
    let ids: Vec<u64> = seq_of_id.keys().copied().collect();
    let mut deleted = Vec::new();
    for chunk in ids.chunks(MAX_IDS_PER_REQUEST) {
        let result = timed("deleting messages", client.delete_messages(chunk.to_vec())).await?;
        deleted.extend(result.deleted.iter().filter_map(|id| seq_of_id.get(id).copied()));
    }
    // The user's order, each number once.
    let mut seen = std::collections::HashSet::new();
    let mut result = DeletedSeqs::default();
    for &seq in seqs.iter().filter(|seq| seen.insert(**seq)) {
        if deleted.contains(&seq) {
            result.deleted.push(seq);
        } else {
            result.not_found.push(seq);
        }
    }
    Ok(result)
}

/// `#6, #7`
pub fn numbers(seqs: &[u64]) -> String {
    seqs.iter().map(|seq| format!("#{seq}")).collect::<Vec<_>>().join(", ")
}

/// `parley delete SEQ...`
pub async fn delete(ctx: &mut Invocation, args: &DeleteArgs) -> anyhow::Result<Exit> {
    if args.spam {
        return crate::spam::delete(ctx, args).await;
    }
    let (client, _info) = ctx.open().await?;
    let result = delete_by_seq(&client, &args.seqs).await?;
    if ctx.json {
        out_json(&json!({ "deleted": result.deleted, "not_found": result.not_found }))?;
    } else {
        if !result.deleted.is_empty() {
            out(&format!("deleted {}", numbers(&result.deleted)))?;
        }
        if !result.not_found.is_empty() {
            eprintln!("no message {} in your mailbox", numbers(&result.not_found));
        }
    }
    Ok(if result.not_found.is_empty() {
        Exit::Ok
    } else {
        Exit::NotFound
    })
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
    let credentials = Credentials::obtain(&mut ctx.settings)?;
    let (client, info) = ctx.open_with(&credentials).await?;
    // The server wants the password proved again for this; the CLI has it.
    timed(
        "deleting the account",
        client.delete_account(&info.name, &credentials.password),
    )
    .await?;
    if ctx.json {
        out_json(&json!({ "name": info.name, "deleted": true }))?;
    } else {
        out(&format!("account {} deleted", info.name))?;
    }
    Ok(Exit::Ok)
}

/// The new password for `parley passwd`: PARLEY_NEW_PASSWORD, a prompt
/// asked twice on a terminal, or the next line of stdin.
fn new_password() -> anyhow::Result<String> {
    if let Ok(password) = std::env::var("PARLEY_NEW_PASSWORD") {
        return Ok(password);
    }
    if crate::terminal::interactive() {
        let password = rpassword::prompt_password("new password: ").context("reading the password")?;
        let again = rpassword::prompt_password("repeat the new password: ").context("reading the password")?;
        if again != password {
            return Err(Failure::usage("the passwords do not match").into());
        }
        return Ok(password);
    }
    match crate::terminal::read_line().context("reading the new password")? {
        Some(line) if !line.is_empty() => Ok(line),
        _ => {
            Err(Failure::usage("no new password: set PARLEY_NEW_PASSWORD, or give it as the next line of stdin").into())
        }
    }
}

/// `parley passwd`
pub async fn passwd(ctx: &mut Invocation) -> anyhow::Result<Exit> {
    let credentials = Credentials::obtain(&mut ctx.settings)?;
    let new = new_password()?;
    let (client, info) = ctx.open_with(&credentials).await?;
    timed(
        "changing the password",
        client.change_password(&info.name, &credentials.password, &new),
    )
    .await?;
    if ctx.json {
        out_json(&json!({ "name": info.name, "password_changed": true }))?;
    } else {
        out(&format!(
            "password of {} changed; every other session of the account was ended",
            info.name
        ))?;
    }
    Ok(Exit::Ok)
}

/// `parley logout [--all]`
pub async fn logout(ctx: &mut Invocation, args: &LogoutArgs) -> anyhow::Result<Exit> {
    let (client, info) = ctx.open().await?;
    if args.all {
        timed("logging out everywhere", client.logout_all()).await?;
        // Already logged out: nothing for `finish` to do.
        ctx.opened = None;
    }
    if ctx.json {
        out_json(&json!({ "name": info.name, "logged_out": true, "everywhere": args.all }))?;
    } else if args.all {
        out(&format!("{} logged out on every device", info.name))?;
    } else {
        out(&format!("{} logged out", info.name))?;
    }
    Ok(Exit::Ok)
}

/// `parley contacts [list | add NAME | remove NAME]`
pub async fn contacts(ctx: &mut Invocation, args: &ContactsArgs) -> anyhow::Result<Exit> {
    let (client, _info) = ctx.open().await?;
    let contacts = match &args.action {
        None | Some(ContactsAction::List) => timed("listing contacts", client.list_contacts()).await?,
        Some(ContactsAction::Add { name }) => add_contact(&client, name).await?,
        Some(ContactsAction::Remove { name }) => remove_contact(&client, name).await?,
    };
    print_contacts(ctx, &contacts)
}

fn print_contacts(ctx: &Invocation, contacts: &[AccountEntry]) -> anyhow::Result<Exit> {
    if ctx.json {
        let list: Vec<_> = contacts
            .iter()
            .map(|c| json!({ "name": c.name, "online": c.online, "subscription": subscription_name(c) }))
            .collect();
        out_json(&json!({ "contacts": list }))?;
    } else if contacts.is_empty() {
        eprintln!("no contacts (parley contacts add NAME adds one)");
    } else {
        for c in contacts {
            out(&contact_line(c))?;
        }
    }
    Ok(Exit::Ok)
}

/// `parley presence [requests | approve NAME | deny NAME | cancel NAME]`
pub async fn presence(ctx: &mut Invocation, args: &PresenceArgs) -> anyhow::Result<Exit> {
    let (client, _info) = ctx.open().await?;
    let requests = match &args.action {
        None | Some(PresenceAction::Requests) => timed("listing presence requests", client.presence_requests()).await?,
        Some(PresenceAction::Approve { name }) => {
            timed(&format!("approving {name}"), client.approve_presence(name)).await?
        }
        Some(PresenceAction::Deny { name }) => timed(&format!("denying {name}"), client.deny_presence(name)).await?,
        Some(PresenceAction::Cancel { name }) => {
            let contacts = timed(
                &format!("cancelling your request for {name}"),
                client.cancel_presence(name),
            )
            .await?;
            return print_contacts(ctx, &contacts);
        }
    };
    if ctx.json {
        out_json(&json!({ "requests": requests }))?;
    } else if requests.is_empty() {
        eprintln!("nobody is waiting for your answer");
    } else {
        for name in &requests {
            out(&format!("  {} asks to see when you are online", printable(name)))?;
        }
    }
    Ok(Exit::Ok)
}

/// `parley block NAME`, `parley unblock NAME` (`block: false`) and
/// `parley blocked` (no name): the accounts blocked afterwards.
pub async fn block(ctx: &mut Invocation, name: Option<&str>, block: bool) -> anyhow::Result<Exit> {
    let (client, _info) = ctx.open().await?;
    let blocked = match name {
        Some(name) if block => timed(&format!("blocking {name}"), client.block(name)).await?,
        Some(name) => timed(&format!("unblocking {name}"), client.unblock(name)).await?,
        None => timed("listing blocked accounts", client.list_blocked()).await?,
    };
    if ctx.json {
        out_json(&json!({ "blocked": blocked }))?;
    } else if blocked.is_empty() {
        eprintln!("you block nobody");
    } else {
        for name in &blocked {
            out(&format!("  {}", printable(name)))?;
        }
    }
    Ok(Exit::Ok)
}

/// `parley who`: the contacts that are online.
pub async fn who(ctx: &mut Invocation) -> anyhow::Result<Exit> {
    let (client, _info) = ctx.open().await?;
    let online = online_contacts(&client).await?;
    if ctx.json {
        out_json(&json!({ "online": online }))?;
    } else if online.is_empty() {
        eprintln!("none of your contacts is online");
    } else {
        for name in &online {
            out(&account_line(name, true))?;
        }
    }
    Ok(Exit::Ok)
}

/// Follows `name`; returns the contacts afterwards. An unknown account is
/// the server's NO_SUCH_USER (exit 4), too many contacts its LIMIT_REACHED.
pub async fn add_contact(client: &Client, name: &str) -> anyhow::Result<Vec<AccountEntry>> {
    timed(&format!("adding {name} to your contacts"), client.add_contact(name)).await
}

/// Stops following `name`; returns the contacts afterwards. The server
/// answers the same whether or not `name` was a contact, so the list is
/// checked first and a name that is not on it is NOT_A_CONTACT (exit 4):
/// a typo is reported instead of silently doing nothing.
pub async fn remove_contact(client: &Client, name: &str) -> anyhow::Result<Vec<AccountEntry>> {
    let before = timed("listing contacts", client.list_contacts()).await?;
    // Names are unique regardless of (ASCII) case.
    if !before.iter().any(|c| c.name.eq_ignore_ascii_case(name)) {
        return Err(Failure::new(
            Exit::NotFound,
            "NOT_A_CONTACT",
            format!("{name} is not one of your contacts"),
        )
        .into());
    }
    timed(
        &format!("removing {name} from your contacts"),
        client.remove_contact(name),
    )
    .await
}

/// The names of the contacts that are online.
pub async fn online_contacts(client: &Client) -> anyhow::Result<Vec<String>> {
    let contacts = timed("listing contacts", client.list_contacts()).await?;
    Ok(contacts.into_iter().filter(|c| c.online).map(|c| c.name).collect())
}

/// `parley watch`: prints pushed messages and presence changes; when the
/// connection is lost, reconnects (see [`crate::reconnect`]) and goes on
/// where it stopped, so `--count` counts distinct messages across
/// connections.
pub async fn watch(ctx: &mut Invocation, args: &WatchArgs) -> anyhow::Result<Exit> {
    let mut stop = StopSignals::install()?;
    let credentials = Credentials::obtain(&mut ctx.settings)?;
    let (mut link, mut client, info) = Link::open(&ctx.settings.server, credentials).await?;
    let subscribed = timed("subscribing", client.subscribe(args.after)).await?;
    if !ctx.json {
        eprintln!(
            "watching messages for {} ({}); Ctrl-C stops",
            info.name,
            count(subscribed.unread, "unread message")
        );
    }
    let mut remaining = args.count;
    let mut delivery = Delivery::new(args.after);
    // Catch-up and live pushes arrive in seq order after `after`, so with
    // no gap before them a cumulative ack is exact; a reconnect subscribes
    // after the last seq shown, which keeps it so.
    let contiguous = args.after == 0;
    while remaining != Some(0) {
        let event = tokio::select! {
            _ = stop.recv() => break,
            event = client.next_event() => event,
        };
        let end = match event {
            Some(Event::Messages(batch)) => {
                let sorted = delivery.sort(batch, remaining);
                for m in &sorted.new {
                    if ctx.json {
                        out_json(&message_json(m))?
                    } else {
                        out(&message_line(m))?
                    }
                }
                if let Some(left) = remaining.as_mut() {
                    *left = left.saturating_sub(sorted.new.len() as u64);
                }
                let seqs = sorted.seqs_to_ack();
                if seqs.is_empty() {
                    continue;
                }
                match ack_shown(&client, &seqs, contiguous && !sorted.cut).await {
                    Ok(_) => continue,
                    Err(e) if is_disconnect(&e) => {
                        delivery.ack_failed(&seqs);
                        End::request_failed(&e)
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(Event::Presence { name, online }) => {
                if ctx.json {
                    out_json(&presence_json(&name, online))?
                } else {
                    out(&presence_line(&name, online))?
                }
                continue;
            }
            Some(Event::PresenceRequest { from }) => {
                if ctx.json {
                    out_json(&json!({ "presence_request": { "from": from } }))?
                } else {
                    out(&presence_request_line(&from))?
                }
                continue;
            }
            Some(Event::PresenceApproved { name }) => {
                if ctx.json {
                    out_json(&json!({ "presence_approved": { "name": name } }))?
                } else {
                    out(&presence_approved_line(&name))?
                }
                continue;
            }
            Some(Event::Goodbye { code, message }) => End::from_goodbye(Some((code, message))),
            Some(Event::Disconnected) | None => End::from_goodbye(None),
        };
        let lost = match end {
            End::Fatal(failure) => return Err(failure.into()),
            End::Lost(failure) => failure,
        };
        if remaining == Some(0) {
            // Everything asked for was shown; only an acknowledgement was lost.
            return Ok(Exit::Ok);
        }
        if !ctx.reconnect {
            return Err(lost.into());
        }
        eprintln!("connection lost; reconnecting…");
        let pending = delivery.pending_acks();
        let mut status = |line: String| eprintln!("{line}");
        client = tokio::select! {
            _ = stop.recv() => return Ok(Exit::Ok),
            client = link.reconnect(delivery.last_seq_seen(), &pending, &mut status) => client?,
        };
        delivery.acked(&pending);
        eprintln!("{}", link.reconnected());
    }
    session::logout(&client).await;
    Ok(Exit::Ok)
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
