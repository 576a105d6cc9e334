//! How messages and other results look on the terminal and in `--json`.
//!
//! One number per message: its `#SEQ`, its place in your mailbox, which
//! every command takes (`read --after`, `delete`, `watch --after`). The
//! server-wide message id is only in `--json`.
//!
//! Times are local (the `TZ` variable, else the system's zone): the time
//! alone for today's messages, `YYYY-MM-DD HH:MM:SS` for older ones. With
//! `--utc` (for scripts) every time is `YYYY-MM-DD HH:MM:SSZ` in UTC, the
//! same on every machine and sortable; `--json` carries `timestamp_ms`.
//!
//! A message body is printed as its lines: the first after the header,
//! every further one indented by [`CONTINUATION_INDENT`], so no line of a
//! body can pass for the header of another message. Every other control
//! character (a carriage return, escape sequences) and the bidirectional
//! overrides are escaped, so a sender cannot move the cursor, recolour
//! someone else's terminal or reorder what it shows; `--json` carries the
//! body verbatim.

use std::borrow::Cow;
use std::io::Write;
use std::sync::OnceLock;

use chrono::{DateTime, Local, TimeZone, Utc};
use parley_client::Message;
use serde_json::{Value, json};

/// What starts every line of a message body after its first.
pub const CONTINUATION_INDENT: &str = "    ";

/// How times are shown, chosen once per process (`--utc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Times {
    /// The local zone; today's messages by time alone.
    Local,
    /// UTC, always with the date and a trailing `Z`.
    Utc,
}

static TIMES: OnceLock<Times> = OnceLock::new();

/// Chooses how times are shown; the first choice stays.
pub fn set_times(times: Times) {
    let _ = TIMES.set(times);
}

fn times() -> Times {
    *TIMES.get().unwrap_or(&Times::Local)
}

/// `#SEQ TIME FROM: BODY`, a multi-line body as indented lines.
pub fn message_line(m: &Message) -> String {
    let header = format!("#{} {} {}:", m.seq, timestamp(m.timestamp_ms), printable(&m.from));
    match parley_core::files::FileOffer::parse(&m.body) {
        Some(offer) => with_body(header, &offer_text(&offer, m.seq)),
        None => with_body(header, &m.body),
    }
}

/// A file offer, as a line that says how to take it.
fn offer_text(offer: &parley_core::files::FileOffer, seq: u64) -> String {
    format!(
        "offers you the file {} ({}): accept-file {seq} or refuse-file {seq}",
        offer.name,
        parley_core::files::human_size(offer.size)
    )
}

/// `TIME FROM → TO: BODY`, for a message this user sent (it has no number
/// here: it sits in the recipient's mailbox).
pub fn sent_line(from: &str, to: &str, timestamp_ms: u64, body: &str) -> String {
    let header = format!(
        "{} {} \u{2192} {}:",
        timestamp(timestamp_ms),
        printable(from),
        printable(to)
    );
    with_body(header, body)
}

/// What `send` prints when the server's filter held the message instead of
/// delivering it: no number, since it is not in the recipient's mailbox.
pub fn held_sent_line(to: &str) -> String {
    let to = printable(to);
    format!(
        "held: the server's spam filter put your message to {to} in {to}'s spam folder; \
         it is stored but not delivered until {to} releases it"
    )
}

/// A message in the spam folder, as shown. parley-client hands out the
/// wire type, which this crate cannot name; this is the part it shows.
#[derive(Clone, Debug, PartialEq)]
pub struct HeldMessage {
    /// The spam id (`spam #ID`), the folder's own numbering.
    pub id: u64,
    pub from: String,
    pub timestamp_ms: u64,
    pub body: String,
    /// Which filter put it there: `spam` (the classifier) or `reported`.
    pub filter: String,
    /// That filter's score, 0 to 1.
    pub score: f32,
}

/// `spam #ID TIME FROM [FILTER SCORE]: BODY`, a multi-line body as
/// indented lines (as [`message_line`]).
pub fn held_line(m: &HeldMessage) -> String {
    let header = format!(
        "spam #{} {} {} [{} {:.2}]:",
        m.id,
        timestamp(m.timestamp_ms),
        printable(&m.from),
        printable(&m.filter),
        m.score
    );
    with_body(header, &m.body)
}

/// The JSON object for one message of the spam folder.
pub fn held_json(m: &HeldMessage) -> Value {
    // Through its shortest decimal text, so 0.97 stays 0.97 and does not
    // become 0.9700000286102295.
    let score = m.score.to_string().parse::<f64>().unwrap_or(f64::from(m.score));
    json!({
        "id": m.id,
        "from": m.from,
        "timestamp_ms": m.timestamp_ms,
        "body": m.body,
        "filter": m.filter,
        "score": score,
    })
}

/// `spam #3, spam #4`
pub fn spam_numbers(ids: &[u64]) -> String {
    ids.iter()
        .map(|id| format!("spam #{id}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The header, then the body's first line after a space and every other
/// line indented below it.
fn with_body(header: String, body: &str) -> String {
    let mut text = header;
    let lines: Vec<&str> = body.split('\n').collect();
    for (i, &line) in lines.iter().enumerate() {
        // A Windows line end is a line end; any other carriage return is
        // shown escaped.
        let line = match line.strip_suffix('\r') {
            Some(stripped) if i + 1 < lines.len() => stripped,
            _ => line,
        };
        if i == 0 {
            text.push(' ');
        } else {
            text.push('\n');
            text.push_str(CONTINUATION_INDENT);
        }
        text.push_str(&printable(line));
    }
    text
}

/// The JSON object for one message, shared by `read` and `watch`.
pub fn message_json(m: &Message) -> Value {
    json!({
        "id": m.message_id,
        "seq": m.seq,
        "from": m.from,
        "timestamp_ms": m.timestamp_ms,
        "body": m.body,
    })
}

/// `* NAME` for an account that is online, `  NAME` for one that is not;
/// shared by `list`, `contacts` and `who`.
pub fn account_line(name: &str, online: bool) -> String {
    format!("{} {}", if online { '*' } else { ' ' }, printable(name))
}

/// A contact line: `account_line`, then what the subscription waits for.
pub fn contact_line(entry: &parley_client::AccountEntry) -> String {
    let line = account_line(&entry.name, entry.online);
    match entry.subscription() {
        parley_client::Subscription::Approved => line,
        parley_client::Subscription::Pending => format!("{line} (asked to see their presence)"),
        parley_client::Subscription::None => format!("{line} (presence not shared)"),
    }
}

/// The subscription's name, as the HTTP API spells it, for JSON output.
pub fn subscription_name(entry: &parley_client::AccountEntry) -> &'static str {
    match entry.subscription() {
        parley_client::Subscription::Approved => "approved",
        parley_client::Subscription::Pending => "pending",
        parley_client::Subscription::None => "none",
    }
}

/// `* NAME asks to see when you are online`, for a presence request.
pub fn presence_request_line(from: &str) -> String {
    format!(
        "* {} asks to see when you are online (parley presence approve/deny NAME; /approve, /deny in the shell)",
        printable(from)
    )
}

/// `* NAME lets you see when they are online`, for an approval.
pub fn presence_approved_line(name: &str) -> String {
    format!("* {} lets you see when they are online", printable(name))
}

/// `* NAME is online` or `* NAME went offline`, for a contact's presence.
pub fn presence_line(name: &str, online: bool) -> String {
    let change = if online { "is online" } else { "went offline" };
    format!("* {} {change}", printable(name))
}

/// The JSON Lines object `watch` prints for a contact's presence.
pub fn presence_json(name: &str, online: bool) -> Value {
    json!({ "presence": { "name": name, "online": online } })
}

/// Whether `c` reorders the text around it (bidirectional embeddings,
/// overrides, isolates and marks), which would let a sender make a line
/// read differently from what it holds.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// `text` with every control character (newlines included) and every
/// bidirectional control escaped.
pub fn printable(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || is_bidi_control(c);
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// "1 unread message", "3 unread messages".
pub fn count(n: u64, singular: &str) -> String {
    if n == 1 {
        format!("{n} {singular}")
    } else {
        format!("{n} {singular}s")
    }
}

/// A message's time as this process shows them (see [`Times`]).
pub fn timestamp(ms: u64) -> String {
    match times() {
        Times::Utc => utc_timestamp(ms),
        Times::Local => zoned_timestamp(ms, &Local, Local::now()),
    }
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SSZ` in UTC.
pub fn utc_timestamp(ms: u64) -> String {
    match Utc.timestamp_millis_opt(i64::try_from(ms).unwrap_or(i64::MAX)).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
        None => format!("{ms} ms"),
    }
}

/// Milliseconds since the Unix epoch in `zone`: `HH:MM:SS` on the day of
/// `now` there, `YYYY-MM-DD HH:MM:SS` on any other.
fn zoned_timestamp<Z: TimeZone>(ms: u64, zone: &Z, now: DateTime<Z>) -> String
where
    Z::Offset: std::fmt::Display,
{
    let Some(t) = zone
        .timestamp_millis_opt(i64::try_from(ms).unwrap_or(i64::MAX))
        .single()
    else {
        return utc_timestamp(ms);
    };
    if t.date_naive() == now.date_naive() {
        t.format("%H:%M:%S").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M:%S").to_string()
    }
}

/// Writes one line to stdout and flushes it, so readers on a pipe see each
/// line as soon as it is printed. A failed write (a closed pipe) is an error
/// for the caller: messages that were not shown must not be acknowledged.
pub fn out(line: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

/// Writes one compact JSON document as one line.
pub fn out_json(value: &Value) -> anyhow::Result<()> {
    out(&value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(utc_timestamp(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc_timestamp(1_764_099_247_999), "2025-11-25 19:34:07Z");
        assert_eq!(utc_timestamp(4_107_542_399_000), "2100-02-28 23:59:59Z");
        assert_eq!(utc_timestamp(4_107_542_400_000), "2100-03-01 00:00:00Z");
    }

    #[test]
    fn local_times_are_compact_today_and_dated_otherwise() {
        use chrono::FixedOffset;
        // Berlin in winter: UTC+1.
        let berlin = FixedOffset::east_opt(3600).unwrap();
        let at = |ms: u64| berlin.timestamp_millis_opt(ms as i64).unwrap();
        // 2026-12-03 08:19:35Z
        let sent = 1_796_285_975_000;
        assert_eq!(utc_timestamp(sent), "2026-12-03 08:19:35Z");
        assert_eq!(zoned_timestamp(sent, &berlin, at(sent + 3_600_000)), "09:19:35");
        assert_eq!(
            zoned_timestamp(sent, &berlin, at(sent + 86_400_000)),
            "2026-12-03 09:19:35"
        );
        // The zone's date decides, not UTC's: 23:00Z is the next morning in Tokyo.
        let tokyo = FixedOffset::east_opt(9 * 3600).unwrap();
        let late = 1_796_338_800_000; // 2026-12-03 23:00:00Z, 08:00 on the 4th in Tokyo
        let now = tokyo.timestamp_millis_opt(late as i64 + 60_000).unwrap();
        assert_eq!(zoned_timestamp(late, &tokyo, now), "08:00:00");
        assert_eq!(zoned_timestamp(late - 86_400_000, &tokyo, now), "2026-12-03 08:00:00");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain text"), "plain text");
        assert_eq!(printable("two\nlines"), "two\\nlines");
        assert_eq!(printable("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(printable("abc\u{202E}def"), "abc\\u{202e}def");
    }

    fn message(body: &str) -> Message {
        Message {
            message_id: 7,
            seq: 3,
            from: "alice".into(),
            timestamp_ms: 0,
            body: body.into(),
            client_msg_id: String::new(),
            acked: false,
        }
    }

    #[test]
    fn message_line_format() {
        set_times(Times::Utc);
        let m = message("hi\tthere");
        assert_eq!(message_line(&m), "#3 1970-01-01 00:00:00Z alice: hi\\tthere");
        assert_eq!(message_json(&m)["body"], "hi\tthere");
        assert_eq!(count(1, "unread message"), "1 unread message");
        assert_eq!(count(3, "unread message"), "3 unread messages");
    }

    #[test]
    fn multi_line_bodies_are_indented_lines() {
        set_times(Times::Utc);
        let m = message("multi\nline\r\n#4 00:00:00 bob: fake\r\u{1b}[2J");
        assert_eq!(
            message_line(&m),
            "#3 1970-01-01 00:00:00Z alice: multi\n    line\n    #4 00:00:00 bob: fake\\r\\u{1b}[2J"
        );
        assert_eq!(
            sent_line("alice", "bob", 0, "one\ntwo"),
            "1970-01-01 00:00:00Z alice \u{2192} bob: one\n    two"
        );
    }

    #[test]
    fn held_messages() {
        set_times(Times::Utc);
        let m = HeldMessage {
            id: 3,
            from: "mallory".into(),
            timestamp_ms: 0,
            body: "win\nnow".into(),
            filter: "spam".into(),
            score: 0.971,
        };
        assert_eq!(
            held_line(&m),
            "spam #3 1970-01-01 00:00:00Z mallory [spam 0.97]: win\n    now"
        );
        assert_eq!(held_json(&m)["score"], 0.971);
        assert_eq!(spam_numbers(&[3, 4]), "spam #3, spam #4");
        assert!(held_sent_line("bob").contains("in bob's spam folder"));
    }

    #[test]
    fn accounts_and_presence() {
        assert_eq!(account_line("bob", true), "* bob");
        assert_eq!(account_line("bob", false), "  bob");
        assert_eq!(presence_line("bob", true), "* bob is online");
        assert_eq!(presence_line("bob", false), "* bob went offline");
        assert_eq!(
            presence_json("bob", false).to_string(),
            r#"{"presence":{"name":"bob","online":false}}"#
        );
    }
}
