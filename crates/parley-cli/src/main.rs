//! `parley`: the command-line client for Parley.
//!
//! This crate owns the user-facing side of a client: the command line and
//! its exit codes, where settings come from (flags, `PARLEY_*` variables,
//! the config file), prompting, output formats (human text and `--json`),
//! and the interactive shell. It must never speak the wire protocol itself
//! (every request goes through `parley-client`), never print a password or
//! put one in the history, and never acknowledge a message before it has
//! been printed.
//!
//! Exit codes (also in `parley --help`): 0 ok, 1 other error, 2 usage or
//! missing input, 3 authentication failed, 4 not found, 5 name taken,
//! 6 input refused by the server, 7 server unavailable, 8 the server's
//! pinned certificate changed, 9 TLS failed (certificate not trusted, or
//! the server does not speak TLS); see [`exit`].
//!
//! Reconnecting (also in `parley --help`): `watch` and the shell outlive the
//! server going away (the connection drops, or a Goodbye says the server is
//! shutting down or timed the connection out). They say "connection lost;
//! reconnecting…", then retry with capped exponential backoff and full
//! jitter: before attempt n (0, 1, 2, ...) a random wait between 0 and
//! min(10 s, 250 ms * 2^n), i.e. at most 0.25, 0.5, 1, 2, 4, 8, then 10 s,
//! until connected. They resume the session with the token of the last
//! login (falling back to the password when it expired or was revoked; a
//! refused password exits with 3, as does a deleted account), subscribe
//! after the last message shown, and drop repeated message ids, so nothing
//! is lost and nothing is shown twice. `--no-reconnect` exits with 7
//! instead. See [`reconnect`].
//!
//! Codemap: `cli` (flags), `settings` (config file and precedence),
//! `session` (connect and log in), `reconnect` (backoff, resume, what was
//! shown), `commands` (one-shot commands and `watch`), `spam` (the spam
//! folder: `read --spam`, `release`, `report-spam`, `delete --spam`),
//! `shell` (interactive), `format` (how things look), `exit` (exit codes),
//! `terminal` (questions on the terminal), `trust` (TLS: server addresses,
//! CA files, pinned certificates and known_servers).
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod exit;
mod files;
mod format;
mod reconnect;
mod session;
mod settings;
mod shell;
mod spam;
mod terminal;
mod trust;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::json;

use crate::cli::{Cli, Command};
use crate::commands::Invocation;
use crate::exit::{Exit, Failure, classify};
use crate::settings::Settings;

/// How long leftover background work may run after the command is done.
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    // clap exits with 2 on usage errors and 0 after --help/--version.
    let cli = Cli::parse();
    let json = cli.global.json;
    format::set_times(if cli.global.utc {
        format::Times::Utc
    } else {
        format::Times::Local
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            return report(anyhow::Error::new(e).context("cannot start the async runtime"), json);
        }
    };
    let result = run(cli, &runtime);
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(exit) => exit.into(),
        Err(err) => report(err, json),
    }
}

fn run(cli: Cli, runtime: &tokio::runtime::Runtime) -> anyhow::Result<Exit> {
    let settings = Settings::resolve(&cli.global.given())?;
    let json = cli.global.json;
    let reconnect = !cli.global.no_reconnect;
    let Some(command) = cli.command else {
        if json {
            return Err(Failure::usage("--json is for commands; the interactive shell prints text").into());
        }
        return shell::run(runtime, settings, reconnect);
    };
    let mut ctx = Invocation {
        settings,
        json,
        reconnect,
        opened: None,
    };
    runtime.block_on(async {
        let result = match &command {
            Command::Register(args) => commands::register(&mut ctx, args).await,
            Command::Login => commands::login(&mut ctx).await,
            Command::Send(args) => commands::send(&mut ctx, args).await,
            Command::Read(args) => commands::read(&mut ctx, args).await,
            Command::List(args) => commands::list(&mut ctx, args).await,
            Command::Delete(args) => commands::delete(&mut ctx, args).await,
            Command::Release(args) => spam::release_command(&mut ctx, args).await,
            Command::ReportSpam(args) => spam::report_command(&mut ctx, args).await,
            Command::DeleteAccount(args) => commands::delete_account(&mut ctx, args).await,
            Command::Passwd => commands::passwd(&mut ctx).await,
            Command::Logout(args) => commands::logout(&mut ctx, args).await,
            Command::Watch(args) => commands::watch(&mut ctx, args).await,
            Command::Contacts(args) => commands::contacts(&mut ctx, args).await,
            Command::Who => commands::who(&mut ctx).await,
            Command::Presence(args) => commands::presence(&mut ctx, args).await,
            Command::Block { name } => commands::block(&mut ctx, Some(name), true).await,
            Command::Unblock { name } => commands::block(&mut ctx, Some(name), false).await,
            Command::Blocked => commands::block(&mut ctx, None, false).await,
            Command::SendFile(a) => {
                let options = files::options(a.route.relay_only, a.route.direct_timeout);
                files::send_file(&mut ctx, &a.to, &a.path, &options).await
            }
            Command::Files => files::list(&mut ctx).await,
            Command::AcceptFile(a) => {
                let options = files::options(a.route.relay_only, a.route.direct_timeout);
                files::accept_file(&mut ctx, a.seq, a.out.as_deref(), &options).await
            }
            Command::RefuseFile { seq } => files::refuse_file(&mut ctx, *seq).await,
        };
        ctx.finish().await;
        result
    })
}

/// Prints an error (stderr; with `--json` also a JSON error on stdout) and
/// turns it into the exit code.
fn report(err: anyhow::Error, json: bool) -> ExitCode {
    let report = classify(&err);
    eprintln!("parley: {}", report.message);
    if json {
        // Nothing more can be done if stdout is gone as well.
        let mut error = json!({ "code": report.code, "message": report.message });
        if let Some(ms) = report.retry_after_ms {
            error["retry_after_ms"] = json!(ms);
        }
        let _ = format::out_json(&json!({ "error": error }));
    }
    report.exit.into()
}
