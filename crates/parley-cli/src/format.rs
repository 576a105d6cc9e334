//! How messages and other results look on the terminal and in `--json`.
//!
//! Times are printed in UTC with a trailing `Z` (`2025-11-25 19:34:07Z`): the
//! same on every machine, sortable, and free of a time-zone database.
//! Message bodies are printed on one line with control characters escaped,
//! so a sender cannot move the cursor or recolour someone else's terminal,
//! and so `grep` and `cut` keep working; `--json` carries the body verbatim.

use std::borrow::Cow;
use std::io::Write;

use parley_client::Message;
use serde_json::{Value, json};

/// `#SEQ [id ID] YYYY-MM-DD HH:MM:SSZ FROM: BODY`
pub fn message_line(m: &Message) -> String {
    format!(
        "#{} [id {}] {} {}: {}",
        m.seq,
        m.message_id,
        utc_timestamp(m.timestamp_ms),
        printable(&m.from),
        printable(&m.body)
    )
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

/// `text` with every control character (newlines included) escaped.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
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

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SSZ` in UTC.
pub fn utc_timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`, restricted to dates after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
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
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain text"), "plain text");
        assert_eq!(printable("two\nlines"), "two\\nlines");
        assert_eq!(printable("\u{1b}[31mred"), "\\u{1b}[31mred");
    }

    #[test]
    fn message_line_format() {
        let m = Message {
            message_id: 7,
            seq: 3,
            from: "alice".into(),
            timestamp_ms: 0,
            body: "hi\tthere".into(),
            client_msg_id: String::new(),
            acked: false,
        };
        assert_eq!(message_line(&m), "#3 [id 7] 1970-01-01 00:00:00Z alice: hi\\tthere");
        assert_eq!(message_json(&m)["body"], "hi\tthere");
        assert_eq!(count(1, "unread message"), "1 unread message");
        assert_eq!(count(3, "unread message"), "3 unread messages");
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
