//! The command line: global connection flags and one subcommand per action.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::exit::EXIT_CODES_HELP;
use crate::settings::Given;

/// Largest page the server accepts for fetch and list (parley-core's limit).
const MAX_PAGE: i64 = 1000;
/// Messages `read` shows when no count is given.
pub const DEFAULT_READ: u32 = 10;

/// Command-line client for the Parley chat server.
///
/// With a subcommand, does one thing and exits (for scripts: add --json for
/// one JSON document on stdout). Without one, logs in and opens an
/// interactive shell that shows incoming messages as they arrive.
///
/// Connection settings come from flags, then PARLEY_* environment variables,
/// then the config file (TOML with the keys `server`, `user`, `password`,
/// `ca`, `tofu`, `fingerprint`), then defaults.
///
/// TLS: write the server as tls://host:port. Its certificate is checked
/// against the system's root certificates, or a CA file (--ca), or pinned:
/// --fingerprint names it, --tofu pins whatever the first connection sees
/// (in known_servers beside the config file) and refuses a changed one. A missing password is asked for on the terminal, or read as
/// the first line of stdin when stdin is not a terminal.
///
/// `watch` and the shell reconnect when the server goes away: they resume
/// the session, pick up delivery after the last message shown (nothing lost,
/// nothing shown twice), and retry with capped exponential backoff and full
/// jitter: before attempt n (0, 1, 2, ...) a random wait between 0 and
/// min(10 s, 250 ms * 2^n), i.e. at most 0.25, 0.5, 1, 2, 4, 8, then 10 s,
/// until connected (or Ctrl-C). --no-reconnect exits with code 7 instead.
///
/// Several servers (the nodes of one service): --server a:7878,b:7878. They
/// are tried in that order; the client moves on when one cannot be reached
/// (3 s each) or is shutting down, and keeps using the one that answered.
#[derive(Parser, Debug)]
#[command(name = "parley", version, about, long_about, after_long_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Args, Debug)]
pub struct GlobalArgs {
    /// Server address: host:port for plaintext, tls://host:port for TLS
    /// (an IPv6 host in brackets: tls://[::1]:7878); without a port, 7878.
    /// Several, comma-separated, are tried in order [default: 127.0.0.1:7878]
    #[arg(long, global = true, env = "PARLEY_SERVER", value_name = "ADDR[,ADDR...]")]
    pub server: Option<String>,
    /// TLS: trust the server's certificate if this PEM file's CA (or the
    /// self-signed certificate itself) signed it, instead of the system's
    /// root certificates
    #[arg(long, global = true, env = "PARLEY_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// TLS: trust on first use, like SSH. The first connection to a server
    /// pins its certificate's fingerprint in known_servers in the config
    /// directory; a different certificate later is refused (exit code 8)
    #[arg(long, global = true, env = "PARLEY_TOFU")]
    pub tofu: bool,
    /// TLS: accept exactly the certificate with this SHA-256 fingerprint
    /// (SHA256:AB:CD:..., as `parleyd gen-cert` prints it)
    #[arg(long, global = true, env = "PARLEY_FINGERPRINT", value_name = "SHA256")]
    pub fingerprint: Option<String>,
    /// Account name
    #[arg(long, global = true, env = "PARLEY_USER", value_name = "NAME")]
    pub user: Option<String>,
    /// Password. Discouraged: other users can see command lines and
    /// environments; prefer the prompt, a piped line on stdin, or a config
    /// file only you can read
    #[arg(
        long,
        global = true,
        env = "PARLEY_PASSWORD",
        value_name = "PW",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Config file [default: $XDG_CONFIG_HOME/parley/config.toml or ~/.config/parley/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print one JSON document on stdout (JSON Lines for `watch`); errors
    /// also as {"error": {"code", "message"}}, with "retry_after_ms" when
    /// the server said when to try again
    #[arg(long, global = true)]
    pub json: bool,
    /// Show times in UTC with the date (2026-12-03 08:19:35Z), for scripts;
    /// by default they are local, today's by time alone
    #[arg(long, global = true)]
    pub utc: bool,
    /// `watch` and the shell: exit (code 7) when the connection is lost
    /// instead of reconnecting with backoff (random 0 to min(10 s, 250 ms * 2^n)
    /// before attempt n)
    #[arg(long, global = true)]
    pub no_reconnect: bool,
}

impl GlobalArgs {
    pub fn given(&self) -> Given {
        Given {
            server: self.server.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            config: self.config.clone(),
            trust: crate::trust::TrustChoice {
                ca: self.ca.clone(),
                tofu: self.tofu,
                fingerprint: self.fingerprint.clone(),
            },
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the account (--user) with the password
    Register(RegisterArgs),
    /// Log in and show how many messages are unread
    Login,
    /// Send a message
    Send(SendArgs),
    /// Show unread messages, oldest first, and mark them read; `read 5`
    /// shows at most 5, `read --last 5` the 5 newest, read or not, `read
    /// --spam` the spam folder
    Read(ReadArgs),
    /// List accounts matching a wildcard pattern (* any run, ? one character)
    List(ListArgs),
    /// Delete messages from your own mailbox, or with --spam from your spam
    /// folder
    Delete(DeleteArgs),
    /// "Not spam": move messages from your spam folder (the spam ids that
    /// `read --spam` shows) into your mailbox, where each gets a new number
    /// and is delivered as usual; the server's filter learns from it
    Release(ReleaseArgs),
    /// Move messages from your mailbox (the #SEQ that `read` shows) to your
    /// spam folder; the server's filter learns from it
    ReportSpam(ReportSpamArgs),
    /// Delete your account and its mailbox, for good (proves the password again)
    DeleteAccount(DeleteAccountArgs),
    /// Change your password: proves the current one, sends credentials made
    /// from the new one (neither leaves this machine); every other session
    /// of the account ends. The new password comes from PARLEY_NEW_PASSWORD,
    /// a prompt (asked twice) on a terminal, or the next line of stdin
    Passwd,
    /// End this login; with --all, every session of the account on every
    /// device, and every saved resume token
    Logout(LogoutArgs),
    /// Print messages (and contacts coming and going) as they arrive, until
    /// interrupted; reconnects when the server goes away
    Watch(WatchArgs),
    /// List, add or remove contacts: the accounts whose presence you ask to
    /// see (* marks who is online, once they approved). Without a
    /// subcommand: list
    Contacts(ContactsArgs),
    /// Show which of your contacts are online
    Who,
    /// Answer requests to see your presence, or cancel your own. Without a
    /// subcommand: list the requests waiting for your answer
    Presence(PresenceArgs),
    /// Block an account: its messages to you fail, no presence either way,
    /// its requests are not shown; then list the accounts you block
    Block {
        /// Account name
        name: String,
    },
    /// End a block, then list the accounts you block
    Unblock {
        /// Account name
        name: String,
    },
    /// List the accounts you block
    Blocked,
    /// Send a file: offer it, wait until the recipient accepts, then send it
    /// peer to peer where the network allows, else through the server. The
    /// bytes are never stored on the server; running the same command again
    /// after an interruption resumes the same offer
    SendFile(SendFileArgs),
    /// List the file offers in your mailbox
    Files,
    /// Accept a file offer (its number from `parley files`) and receive the
    /// file; bytes left by an interrupted run are kept and the transfer
    /// resumes after them
    AcceptFile(AcceptFileArgs),
    /// Refuse a file offer; its sender is told
    RefuseFile {
        /// The offer's number (seq) from `parley files`
        seq: u64,
    },
}

/// How a file transfer reaches the other side.
#[derive(Args, Debug)]
pub struct RouteArgs {
    /// Do not try a direct path; send through the server's relay
    #[arg(long)]
    pub relay_only: bool,
    /// Seconds the sender tries a direct path before the relay
    #[arg(long, value_name = "SECS", default_value_t = 3)]
    pub direct_timeout: u64,
}

#[derive(Args, Debug)]
pub struct SendFileArgs {
    /// Recipient account name
    pub to: String,
    /// The file to send
    pub path: std::path::PathBuf,
    #[command(flatten)]
    pub route: RouteArgs,
}

#[derive(Args, Debug)]
pub struct AcceptFileArgs {
    /// The offer's number (seq) from `parley files`
    pub seq: u64,
    /// Where to put the file: a directory, or a file name [default: the
    /// offered name in the current directory]
    #[arg(long, short)]
    pub out: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub route: RouteArgs,
}

#[derive(Args, Debug)]
pub struct PresenceArgs {
    #[command(subcommand)]
    pub action: Option<PresenceAction>,
}

#[derive(Subcommand, Debug)]
pub enum PresenceAction {
    /// List the accounts asking to see your presence (the default)
    Requests,
    /// Let an account that asked see your presence
    Approve {
        /// Account name
        name: String,
    },
    /// Refuse an account's request, or take back an approval
    Deny {
        /// Account name
        name: String,
    },
    /// Withdraw your request for an account's presence, or stop seeing it
    Cancel {
        /// Account name
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// Recipient account name
    pub to: String,
    /// Message text; the words are joined by spaces. A single `-` reads the
    /// text from stdin (after the password line, if the password is piped
    /// too). Put `--` before text that starts with a dash
    #[arg(required = true, num_args = 1..)]
    pub text: Vec<String>,
    /// Idempotency key: sending again with the same id stores nothing new
    /// and reports the first result, so a retry after a lost reply is safe
    #[arg(long, value_name = "CLIENT_MSG_ID")]
    pub id: Option<String>,
}

#[derive(Args, Debug)]
pub struct ReadArgs {
    /// How many messages to show (the same as --limit)
    #[arg(value_name = "N", conflicts_with = "limit", value_parser = clap::value_parser!(u32).range(1..=MAX_PAGE))]
    pub count: Option<u32>,
    /// How many messages to show [default: 10]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_PAGE))]
    pub limit: Option<u32>,
    /// Only messages numbered (#SEQ) above this; with --spam, spam ids above
    /// this
    #[arg(long, default_value_t = 0, value_name = "SEQ")]
    pub after: u64,
    /// Include messages already read (and mark nothing read)
    #[arg(long)]
    pub all: bool,
    /// Show the spam folder instead of the mailbox: the messages the
    /// server's filter held (or you reported), oldest first, with their
    /// spam ids, the filter and its score; marks nothing read. `release ID`
    /// moves one into the mailbox, `delete --spam ID` deletes it
    #[arg(long, conflicts_with_all = ["last", "all", "no_ack"])]
    pub spam: bool,
    /// The N newest messages, read or not, oldest first; those unread are
    /// marked read
    #[arg(long, value_name = "N", conflicts_with_all = ["count", "limit", "after", "all"],
          value_parser = clap::value_parser!(u32).range(1..=MAX_PAGE))]
    pub last: Option<u32>,
    /// Do not mark the shown messages read
    #[arg(long)]
    pub no_ack: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Wildcard pattern, case-insensitive; all accounts when omitted
    #[arg(default_value = "")]
    pub pattern: String,
    /// Accounts per page
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=MAX_PAGE))]
    pub limit: u32,
    /// Print every page without pausing (always so when not on a terminal)
    #[arg(long)]
    pub all_pages: bool,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Message numbers: the `#SEQ` that `read` and `watch` show; with
    /// --spam, the spam ids that `read --spam` shows
    #[arg(required = true, num_args = 1.., value_name = "SEQ|ID", value_parser = parse_number)]
    pub seqs: Vec<u64>,
    /// Delete from the spam folder: the numbers are spam ids
    #[arg(long)]
    pub spam: bool,
    /// With --spam: report the messages as spam before deleting them, so
    /// the server's filter learns from them
    #[arg(long, requires = "spam")]
    pub report: bool,
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// Spam ids: the `spam #ID` that `read --spam` shows
    #[arg(required = true, num_args = 1.., value_name = "ID", value_parser = parse_spam_id)]
    pub ids: Vec<u64>,
}

#[derive(Args, Debug)]
pub struct ReportSpamArgs {
    /// Message numbers: the `#SEQ` that `read` and `watch` show
    #[arg(required = true, num_args = 1.., value_name = "SEQ", value_parser = parse_seq)]
    pub seqs: Vec<u64>,
}

/// A positive number, copied with or without its `#`.
fn parse_hash_number(text: &str) -> Option<u64> {
    let digits = text.strip_prefix('#').unwrap_or(text);
    digits.parse::<u64>().ok().filter(|n| *n > 0)
}

/// `5` or `#5`: the number `read` shows, copied with or without its `#`.
pub fn parse_seq(text: &str) -> Result<u64, String> {
    parse_hash_number(text).ok_or_else(|| format!("{text:?} is not a message number (the #SEQ that `read` shows)"))
}

/// `3` or `#3`: the spam id `read --spam` shows (`spam #3`).
pub fn parse_spam_id(text: &str) -> Result<u64, String> {
    parse_hash_number(text).ok_or_else(|| format!("{text:?} is not a spam id (the spam #ID that `read --spam` shows)"))
}

/// A message number or, for `delete --spam`, a spam id.
fn parse_number(text: &str) -> Result<u64, String> {
    parse_hash_number(text).ok_or_else(|| {
        format!("{text:?} is not a message number (the #SEQ that `read` shows, or with --spam the spam #ID)")
    })
}

impl ReadArgs {
    /// How many messages to show.
    pub fn limit(&self) -> u32 {
        self.count.or(self.limit).unwrap_or(DEFAULT_READ)
    }
}

#[derive(Args, Debug)]
pub struct DeleteAccountArgs {
    /// Confirm: the account and every message in its mailbox are deleted
    #[arg(long)]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct RegisterArgs {
    /// The invite code, on a server that registers by invitation (its
    /// administrator makes one with `parleyd ctl invite`)
    #[arg(long, value_name = "CODE")]
    pub invite: Option<String>,
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// Log out everywhere: every session of the account ends
    #[arg(long)]
    pub all: bool,
}

#[derive(Args, Debug)]
pub struct ContactsArgs {
    #[command(subcommand)]
    pub action: Option<ContactsAction>,
}

#[derive(Subcommand, Debug)]
pub enum ContactsAction {
    /// List your contacts (the default)
    List,
    /// Add a contact and ask to see its presence, then list your contacts
    Add {
        /// Account name
        name: String,
    },
    /// Stop following an account's presence, then list your contacts
    Remove {
        /// Account name
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Exit after this many messages (counted across reconnects; presence
    /// lines do not count)
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Only messages with a seq above this
    #[arg(long, default_value_t = 0, value_name = "SEQ")]
    pub after: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn send_text_words_and_stdin_marker() {
        let cli = Cli::try_parse_from(["parley", "send", "bob", "-", "--id", "k1"]).unwrap();
        match cli.command {
            Some(Command::Send(s)) => {
                assert_eq!(
                    (s.to.as_str(), s.text, s.id.as_deref()),
                    ("bob", vec!["-".to_owned()], Some("k1"))
                );
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["parley", "--json", "send", "bob", "hello", "there"]).unwrap();
        assert!(cli.global.json);
        let cli = Cli::try_parse_from(["parley", "send", "bob", "--", "-1", "is", "negative"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Send(s)) if s.text.join(" ") == "-1 is negative"));
        assert!(Cli::try_parse_from(["parley", "read", "--limit", "0"]).is_err());
    }

    #[test]
    fn read_takes_a_count_or_last_and_delete_takes_numbers() {
        let read = |args: &[&str]| match Cli::try_parse_from([&["parley", "read"], args].concat()) {
            Ok(Cli {
                command: Some(Command::Read(r)),
                ..
            }) => Ok((r.limit(), r.last)),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.kind()),
        };
        assert_eq!(read(&[]), Ok((10, None)));
        assert_eq!(read(&["2"]), Ok((2, None)));
        assert_eq!(read(&["--limit", "3"]), Ok((3, None)));
        assert_eq!(read(&["--last", "4"]), Ok((10, Some(4))));
        assert!(read(&["2", "--limit", "3"]).is_err());
        assert!(read(&["--last", "2", "--all"]).is_err());
        assert!(read(&["0"]).is_err());
        let cli = Cli::try_parse_from(["parley", "delete", "#6", "7"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Delete(d)) if d.seqs == [6, 7]));
        assert!(Cli::try_parse_from(["parley", "delete", "x"]).is_err());
    }

    #[test]
    fn spam_folder_commands_parse() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["parley"], args].concat()).map(|cli| cli.command);
        assert!(matches!(
            parse(&["read", "--spam", "3", "--after", "2"]),
            Ok(Some(Command::Read(r))) if r.spam && r.limit() == 3 && r.after == 2
        ));
        for conflicting in ["--all", "--no-ack"] {
            assert!(parse(&["read", "--spam", conflicting]).is_err(), "{conflicting}");
        }
        assert!(parse(&["read", "--spam", "--last", "2"]).is_err());
        assert!(matches!(
            parse(&["release", "#3", "4"]),
            Ok(Some(Command::Release(r))) if r.ids == [3, 4]
        ));
        assert!(parse(&["release"]).is_err());
        assert!(matches!(
            parse(&["report-spam", "5"]),
            Ok(Some(Command::ReportSpam(r))) if r.seqs == [5]
        ));
        assert!(matches!(
            parse(&["delete", "--spam", "--report", "#2"]),
            Ok(Some(Command::Delete(d))) if d.spam && d.report && d.seqs == [2]
        ));
        assert!(parse(&["delete", "--report", "2"]).is_err());
        assert!(parse(&["release", "spam"]).is_err());
    }

    #[test]
    fn contacts_default_to_list_and_no_reconnect_is_global() {
        let cli = Cli::try_parse_from(["parley", "contacts"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Contacts(ContactsArgs { action: None }))
        ));
        let cli = Cli::try_parse_from(["parley", "contacts", "add", "bob", "--json"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Contacts(ContactsArgs { action: Some(ContactsAction::Add { name }) })) if name == "bob")
        );
        let cli = Cli::try_parse_from(["parley", "watch", "--no-reconnect"]).unwrap();
        assert!(cli.global.no_reconnect);
        let cli = Cli::try_parse_from(["parley", "--no-reconnect"]).unwrap();
        assert!(cli.global.no_reconnect && cli.command.is_none());
        assert!(Cli::try_parse_from(["parley", "contacts", "remove"]).is_err());
    }

    #[test]
    fn presence_and_block_commands_parse() {
        let cli = Cli::try_parse_from(["parley", "presence"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Presence(PresenceArgs { action: None }))
        ));
        let cli = Cli::try_parse_from(["parley", "presence", "approve", "bob"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Presence(PresenceArgs { action: Some(PresenceAction::Approve { name }) })) if name == "bob")
        );
        let cli = Cli::try_parse_from(["parley", "block", "mallory"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Block { name }) if name == "mallory"));
        assert!(Cli::try_parse_from(["parley", "presence", "deny"]).is_err());
        assert!(Cli::try_parse_from(["parley", "unblock"]).is_err());
    }
}
