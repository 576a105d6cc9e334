//! `send-file`, `files`, `accept-file` and `refuse-file`: file transfer
//! from the command line, with a progress bar on a terminal.
//!
//! The transfer itself is `parley_client::files`; this module picks the
//! options, prints where things stand and turns a transfer's failure into
//! an exit code and a sentence that says what to do.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use parley_client::files::{self, Done, FileError, Options, Progress, Route};
use parley_core::files::{FileOffer, human_size};
use serde_json::json;

use crate::commands::Invocation;
use crate::exit::{Exit, Failure};
use crate::format::{out, out_json, printable};
use crate::session::timed;

/// Redraws of the progress bar, at most this often.
const REDRAW_EVERY: Duration = Duration::from_millis(100);
/// Width of the bar, in characters.
const BAR_WIDTH: usize = 30;

/// How the commands reach the other side, from their flags.
pub fn options(relay_only: bool, direct_timeout_secs: u64) -> Options {
    Options {
        direct: !relay_only,
        direct_timeout: Duration::from_secs(direct_timeout_secs.max(1)),
        ..Options::default()
    }
}

/// `parley send-file TO PATH`: offers the file and stays until it is
/// across (or refused).
pub async fn send_file(ctx: &mut Invocation, to: &str, path: &Path, options: &Options) -> anyhow::Result<Exit> {
    if !path.is_file() {
        return Err(Failure::usage(format!("{} is not a file", path.display())).into());
    }
    let (client, _) = ctx.open().await?;
    let shown = Shown::new(!ctx.json);
    let result = files::send_file(&client, to, path, options, &|p| shown.show(&p)).await;
    shown.finish();
    finished(ctx, "sent", to, result)
}

/// `parley accept-file SEQ`: accepts the offer and receives the file.
pub async fn accept_file(
    ctx: &mut Invocation,
    seq: u64,
    out_path: Option<&Path>,
    options: &Options,
) -> anyhow::Result<Exit> {
    let (client, _) = ctx.open().await?;
    let shown = Shown::new(!ctx.json);
    let result = files::receive_file(&client, seq, out_path, options, &|p| shown.show(&p)).await;
    shown.finish();
    finished(ctx, "received", "", result)
}

/// `parley refuse-file SEQ`.
pub async fn refuse_file(ctx: &mut Invocation, seq: u64) -> anyhow::Result<Exit> {
    let (client, _) = ctx.open().await?;
    let ended = timed("refusing the file", client.refuse_file(seq)).await?;
    if ctx.json {
        out_json(&json!({ "refused": seq, "offer_id": ended.offer_id }))?;
    } else {
        out(&format!("refused offer {seq}; its sender is told"))?;
    }
    Ok(Exit::Ok)
}

/// The file offers in the mailbox not yet taken (unread), oldest first:
/// seq, sender, offer.
pub async fn offers(client: &parley_client::Client) -> anyhow::Result<Vec<(u64, String, FileOffer)>> {
    let mut after = 0;
    let mut offers = Vec::new();
    loop {
        let batch = timed("reading the mailbox", client.fetch(after, 1000, false)).await?;
        for m in &batch.messages {
            if let Some(offer) = FileOffer::parse(&m.body) {
                offers.push((m.seq, m.from.clone(), offer));
            }
        }
        match batch.messages.last() {
            Some(last) if batch.more => after = last.seq,
            _ => return Ok(offers),
        }
    }
}

/// `parley files`.
pub async fn list(ctx: &mut Invocation) -> anyhow::Result<Exit> {
    let (client, _) = ctx.open().await?;
    let offers = offers(&client).await?;
    if ctx.json {
        let list: Vec<_> = offers
            .iter()
            .map(|(seq, from, o)| json!({ "seq": seq, "from": from, "name": o.name, "size": o.size }))
            .collect();
        out_json(&json!({ "offers": list }))?;
    } else if offers.is_empty() {
        out("no file offers")?;
    } else {
        for (seq, from, o) in &offers {
            out(&format!(
                "{seq:>6}  {}  {}  ({})",
                printable(from),
                printable(&o.name),
                human_size(o.size)
            ))?;
        }
        out("accept with `parley accept-file SEQ`, refuse with `parley refuse-file SEQ`")?;
    }
    Ok(Exit::Ok)
}

/// Prints a finished transfer, or turns its failure into an exit.
fn finished(ctx: &Invocation, verb: &str, to: &str, result: Result<Done, FileError>) -> anyhow::Result<Exit> {
    match result {
        Ok(done) => {
            if ctx.json {
                out_json(&json!({
                    "offer_id": done.offer_id,
                    "file": done.path.display().to_string(),
                    "size": done.size,
                    "resumed_from": done.from,
                    "route": match done.route { Route::Direct => "direct", Route::Relayed => "relayed" },
                }))?;
            } else {
                let whom = if to.is_empty() {
                    String::new()
                } else {
                    format!(" to {to}")
                };
                let resumed = if done.from > 0 {
                    format!(", resumed at {}", human_size(done.from))
                } else {
                    String::new()
                };
                out(&format!(
                    "{verb} {}{whom} ({}, {}{resumed}; SHA-256 checked)",
                    done.path.display(),
                    human_size(done.size),
                    done.route
                ))?;
            }
            Ok(Exit::Ok)
        }
        Err(FileError::Client(e)) => Err(e.into()),
        Err(e) => {
            let (exit, code) = match &e {
                FileError::Refused => (Exit::Refused, "REFUSED"),
                FileError::HashMismatch => (Exit::Other, "HASH_MISMATCH"),
                FileError::Interrupted { .. } => (Exit::Unavailable, "INTERRUPTED"),
                FileError::NotAnOffer(_) => (Exit::NotFound, "NOT_AN_OFFER"),
                FileError::Exists(_) => (Exit::Usage, "FILE_EXISTS"),
                _ => (Exit::Other, "TRANSFER_FAILED"),
            };
            Err(Failure::new(exit, code, e.to_string()).into())
        }
    }
}

/// Where a transfer stands, on stderr: a bar redrawn in place on a
/// terminal, a line per step otherwise.
struct Shown {
    on: bool,
    terminal: bool,
    state: Mutex<(Instant, Option<Route>)>,
}

impl Shown {
    fn new(on: bool) -> Shown {
        Shown {
            on,
            terminal: std::io::stderr().is_terminal(),
            state: Mutex::new((Instant::now(), None)),
        }
    }

    fn show(&self, progress: &Progress) {
        if !self.on {
            return;
        }
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut err = std::io::stderr().lock();
        match progress {
            Progress::Waiting { peer, online } => {
                let _ = writeln!(
                    err,
                    "waiting for {}{}…",
                    printable(peer),
                    if *online { " (online)" } else { "" }
                );
            }
            Progress::Started { route, from, size } => {
                state.1 = Some(*route);
                let resume = if *from > 0 {
                    format!(", resuming at {}", human_size(*from))
                } else {
                    String::new()
                };
                let _ = writeln!(err, "{} {}{resume}", human_size(*size), route);
            }
            Progress::Bytes { done, size } => {
                let now = Instant::now();
                if !self.terminal || (now.duration_since(state.0) < REDRAW_EVERY && done < size) {
                    return;
                }
                state.0 = now;
                let _ = write!(err, "\r{}", bar(*done, *size));
                let _ = err.flush();
            }
        }
    }

    fn finish(&self) {
        if self.on && self.terminal {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// `[##########··········]  50%  5.0 MB of 10.0 MB`
fn bar(done: u64, size: u64) -> String {
    let fraction = if size == 0 { 1.0 } else { done as f64 / size as f64 };
    let filled = ((fraction * BAR_WIDTH as f64) as usize).min(BAR_WIDTH);
    format!(
        "[{}{}] {:>3.0}%  {} of {}",
        "#".repeat(filled),
        "·".repeat(BAR_WIDTH - filled),
        fraction * 100.0,
        human_size(done),
        human_size(size)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_bytes() {
        assert!(bar(0, 10).starts_with("[······"));
        assert!(bar(5, 10).contains(" 50%"));
        assert!(bar(10, 10).starts_with(&format!("[{}]", "#".repeat(BAR_WIDTH))));
    }
}
