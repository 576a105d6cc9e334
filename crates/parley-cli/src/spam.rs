//! The spam folder: where the server's filter holds messages it does not
//! deliver, and where reported messages go. `read --spam` lists it,
//! `release` moves messages back into the mailbox ("not spam"),
//! `report-spam` moves mailbox messages into it, and `delete --spam`
//! deletes from it. The shell's `/spam`, `/release` and `/report` share the
//! requests here.
//!
//! Two numberings meet here: a mailbox message's `#SEQ` and a held
//! message's spam id (`spam #ID`, the folder's own sequence). Every line
//! says which one it prints. Nothing here acknowledges a message.

use parley_client::Client;
use serde_json::json;

use crate::cli::{DeleteArgs, ReadArgs, ReleaseArgs, ReportSpamArgs};
use crate::commands::{Invocation, numbers};
use crate::exit::Exit;
use crate::format::{HeldMessage, held_json, held_line, out, out_json, spam_numbers};
use crate::session::timed;

/// Most ids one spam-folder request may carry (parley-core's limit).
const MAX_IDS_PER_REQUEST: usize = 1000;

/// Most held messages the server returns in one read (parley-core's
/// `MAX_HELD_PAGE`).
const SERVER_PAGE: u32 = 100;

/// Up to `limit` held messages with a spam id above `after`, oldest first,
/// and whether more follow: read in as many server pages as that takes
/// (a page is at most 100, and the server may cut one shorter to fit).
pub async fn held_page(client: &Client, after: u64, limit: u32) -> anyhow::Result<(Vec<HeldMessage>, bool)> {
    let mut held: Vec<HeldMessage> = Vec::new();
    let mut after = after;
    loop {
        let want = limit
            .saturating_sub(u32::try_from(held.len()).unwrap_or(u32::MAX))
            .min(SERVER_PAGE);
        let batch = timed("reading the spam folder", client.list_held(after, want)).await?;
        let got = batch.messages.len();
        held.extend(batch.messages.into_iter().map(|m| HeldMessage {
            id: m.id,
            from: m.from,
            timestamp_ms: m.timestamp_ms,
            body: m.body,
            filter: m.filter,
            score: m.score,
        }));
        let Some(last) = held.last().map(|h| h.id) else {
            return Ok((held, batch.more));
        };
        if !batch.more || got == 0 || held.len() >= limit as usize {
            return Ok((held, batch.more));
        }
        after = last;
    }
}

/// What became of the numbers a spam-folder command was given, in the
/// user's order, each number once.
#[derive(Debug)]
pub struct Outcome {
    /// Each number done, with the number it has now (the new `#SEQ` of a
    /// released message, the spam id of a reported one; the same number
    /// for a deleted one).
    pub done: Vec<(u64, u64)>,
    /// Not there (never was, or already moved or deleted).
    pub not_found: Vec<u64>,
}

impl Outcome {
    /// Sorts `asked` into done (found in `done`, by the number asked) and
    /// not found.
    fn sort(asked: &[u64], done: &std::collections::HashMap<u64, u64>) -> Outcome {
        let mut seen = std::collections::HashSet::new();
        let mut outcome = Outcome {
            done: Vec::new(),
            not_found: Vec::new(),
        };
        for &number in asked.iter().filter(|n| seen.insert(**n)) {
            match done.get(&number) {
                Some(&now) => outcome.done.push((number, now)),
                None => outcome.not_found.push(number),
            }
        }
        outcome
    }

    fn exit(&self) -> Exit {
        if self.not_found.is_empty() {
            Exit::Ok
        } else {
            Exit::NotFound
        }
    }
}

/// The numbers, each once, in requests of at most [`MAX_IDS_PER_REQUEST`].
fn chunks(numbers: &[u64]) -> Vec<Vec<u64>> {
    let mut unique = numbers.to_vec();
    unique.sort_unstable();
    unique.dedup();
    unique.chunks(MAX_IDS_PER_REQUEST).map(<[u64]>::to_vec).collect()
}

/// Releases the held messages `ids` into the mailbox.
pub async fn release(client: &Client, ids: &[u64]) -> anyhow::Result<Outcome> {
    let mut done = std::collections::HashMap::new();
    for chunk in chunks(ids) {
        let released = timed("releasing messages from the spam folder", client.release_held(chunk)).await?;
        done.extend(released.released.iter().map(|r| (r.id, r.seq)));
    }
    Ok(Outcome::sort(ids, &done))
}

/// Reports the mailbox messages `seqs` as spam, moving them to the folder.
pub async fn report(client: &Client, seqs: &[u64]) -> anyhow::Result<Outcome> {
    let mut done = std::collections::HashMap::new();
    for chunk in chunks(seqs) {
        let reported = timed("reporting spam", client.report_spam(chunk)).await?;
        done.extend(reported.reported.iter().map(|r| (r.seq, r.id)));
    }
    Ok(Outcome::sort(seqs, &done))
}

/// Deletes the held messages `ids`; with `report`, labelled spam first.
pub async fn drop_held(client: &Client, ids: &[u64], report: bool) -> anyhow::Result<Outcome> {
    let mut done = std::collections::HashMap::new();
    for chunk in chunks(ids) {
        let dropped = timed("deleting from the spam folder", client.drop_held(chunk, report)).await?;
        done.extend(dropped.ids.iter().map(|&id| (id, id)));
    }
    Ok(Outcome::sort(ids, &done))
}

/// The lines that say what a release did: one per id released, then the
/// ids not found.
pub fn released_lines(outcome: &Outcome) -> (Vec<String>, Option<String>) {
    let lines = outcome
        .done
        .iter()
        .map(|(id, seq)| format!("released spam #{id}: it is #{seq} in your mailbox"))
        .collect();
    (lines, not_in_folder(&outcome.not_found))
}

/// The lines that say what a report did: one per seq reported, then the
/// seqs not found.
pub fn reported_lines(outcome: &Outcome) -> (Vec<String>, Option<String>) {
    let lines = outcome
        .done
        .iter()
        .map(|(seq, id)| format!("reported #{seq} as spam: it is spam #{id} in your spam folder"))
        .collect();
    let missing =
        (!outcome.not_found.is_empty()).then(|| format!("no message {} in your mailbox", numbers(&outcome.not_found)));
    (lines, missing)
}

/// `no message spam #4 in your spam folder`, when some were not there.
fn not_in_folder(ids: &[u64]) -> Option<String> {
    (!ids.is_empty()).then(|| format!("no message {} in your spam folder", spam_numbers(ids)))
}

/// Prints an outcome's lines: done on stdout, not found on stderr.
fn print_lines((lines, missing): (Vec<String>, Option<String>)) -> anyhow::Result<()> {
    lines.iter().try_for_each(|line| out(line))?;
    if let Some(missing) = missing {
        eprintln!("{missing}");
    }
    Ok(())
}

/// `parley read --spam`: one page of the spam folder; acknowledges nothing.
pub async fn read(ctx: &mut Invocation, args: &ReadArgs) -> anyhow::Result<Exit> {
    let (client, _info) = ctx.open().await?;
    let (held, more) = held_page(&client, args.after, args.limit()).await?;
    if ctx.json {
        let list: Vec<_> = held.iter().map(held_json).collect();
        out_json(&json!({ "messages": list, "more": more }))?;
        return Ok(Exit::Ok);
    }
    for m in &held {
        out(&held_line(m))?;
    }
    match held.last() {
        None if args.after == 0 => out("no messages in your spam folder")?,
        None => out(&format!("no messages in your spam folder after spam #{}", args.after))?,
        Some(last) if more => out(&format!("(more: parley read --spam --after {})", last.id))?,
        Some(_) => {}
    }
    Ok(Exit::Ok)
}

/// `parley release ID...`
pub async fn release_command(ctx: &mut Invocation, args: &ReleaseArgs) -> anyhow::Result<Exit> {
    let (client, _info) = ctx.open().await?;
    let outcome = release(&client, &args.ids).await?;
    if ctx.json {
        let released: Vec<_> = outcome
            .done
            .iter()
            .map(|(id, seq)| json!({ "id": id, "seq": seq }))
            .collect();
        out_json(&json!({ "released": released, "not_found": outcome.not_found }))?;
    } else {
        print_lines(released_lines(&outcome))?;
    }
    Ok(outcome.exit())
}

/// `parley report-spam SEQ...`
pub async fn report_command(ctx: &mut Invocation, args: &ReportSpamArgs) -> anyhow::Result<Exit> {
    let (client, _info) = ctx.open().await?;
    let outcome = report(&client, &args.seqs).await?;
    if ctx.json {
        let reported: Vec<_> = outcome
            .done
            .iter()
            .map(|(seq, id)| json!({ "seq": seq, "id": id }))
            .collect();
        out_json(&json!({ "reported": reported, "not_found": outcome.not_found }))?;
    } else {
        print_lines(reported_lines(&outcome))?;
    }
    Ok(outcome.exit())
}

/// `parley delete --spam ID... [--report]`
pub async fn delete(ctx: &mut Invocation, args: &DeleteArgs) -> anyhow::Result<Exit> {
    let (client, _info) = ctx.open().await?;
    let outcome = drop_held(&client, &args.seqs, args.report).await?;
    let deleted: Vec<u64> = outcome.done.iter().map(|(id, _)| *id).collect();
    if ctx.json {
        out_json(&json!({ "deleted": deleted, "not_found": outcome.not_found, "reported": args.report }))?;
    } else {
        if !deleted.is_empty() {
            let reported = if args.report { " (reported as spam)" } else { "" };
            out(&format!("deleted {}{reported}", spam_numbers(&deleted)))?;
        }
        if let Some(missing) = not_in_folder(&outcome.not_found) {
            eprintln!("{missing}");
        }
    }
    Ok(outcome.exit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_keep_the_users_order_once_each() {
        let done = [(7, 12), (3, 11)].into_iter().collect();
        let outcome = Outcome::sort(&[7, 4, 3, 7], &done);
        assert_eq!(outcome.done, [(7, 12), (3, 11)]);
        assert_eq!(outcome.not_found, [4]);
        assert_eq!(outcome.exit(), Exit::NotFound);
        let (lines, missing) = released_lines(&outcome);
        assert_eq!(lines[0], "released spam #7: it is #12 in your mailbox");
        assert_eq!(missing.as_deref(), Some("no message spam #4 in your spam folder"));
        let (lines, missing) = reported_lines(&outcome);
        assert_eq!(lines[1], "reported #3 as spam: it is spam #11 in your spam folder");
        assert_eq!(missing.as_deref(), Some("no message #4 in your mailbox"));
        assert_eq!(chunks(&[3, 1, 3]), [vec![1, 3]]);
    }
}
