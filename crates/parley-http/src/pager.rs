//! The web pager: an anonymous visitor leaves a message for a user.
//!
//! A pager message is stored like any other message, in the recipient's
//! mailbox, with the same seq, ack and push rules. It is marked by its
//! sender name, which starts with [`PAGER_PREFIX`]: account names cannot
//! contain `:`, so no account can pass for the pager. Its sender id is
//! [`PAGER_SENDER`], an id no account ever has.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use parley_core::UserId;

/// Sender name prefix of every pager message.
pub const PAGER_PREFIX: &str = "pager:";
/// Sender id of pager messages (shared with every sender outside an account).
pub const PAGER_SENDER: UserId = parley_core::service::EXTERNAL_SENDER;
/// Longest visitor name kept, in characters.
pub const MAX_VISITOR_NAME_CHARS: usize = 64;
/// Longest visitor contact kept, in characters.
pub const MAX_VISITOR_CONTACT_CHARS: usize = 128;
/// Most source addresses the rate limiter tracks; past it, windows that
/// ended are dropped, and if none has, new addresses are refused.
pub const MAX_TRACKED_ADDRESSES: usize = 100_000;
/// The rate limiter's window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Pager posts per source address per window.
pub struct PagerLimiter {
    /// Posts allowed per address per window.
    per_window: u32,
    /// Window start and posts counted, by address.
    table: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl PagerLimiter {
    pub fn new(per_window: u32) -> PagerLimiter {
        PagerLimiter {
            per_window,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one post from `ip`; Err(ms to wait) when over the limit.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u32> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= MAX_TRACKED_ADDRESSES && !table.contains_key(&ip) {
            table.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if table.len() >= MAX_TRACKED_ADDRESSES {
                return Err(u32::try_from(WINDOW.as_millis()).unwrap_or(u32::MAX));
            }
        }
        let entry = table.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= self.per_window {
            let left = WINDOW.saturating_sub(now.duration_since(entry.0));
            return Err(u32::try_from(left.as_millis()).unwrap_or(u32::MAX).max(1));
        }
        entry.1 += 1;
        Ok(())
    }
}

/// Keeps printable characters only, at most `max` of them, trimmed.
pub fn clean(text: &str, max: usize) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(max)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The sender name a pager message is stored with.
pub fn sender_name(name: Option<&str>, contact: Option<&str>) -> String {
    let name = name.map(|n| clean(n, MAX_VISITOR_NAME_CHARS)).unwrap_or_default();
    let contact = contact.map(|c| clean(c, MAX_VISITOR_CONTACT_CHARS)).unwrap_or_default();
    match (name.is_empty(), contact.is_empty()) {
        (true, true) => PAGER_PREFIX.to_owned(),
        (false, true) => format!("{PAGER_PREFIX}{name}"),
        (true, false) => format!("{PAGER_PREFIX}<{contact}>"),
        (false, false) => format!("{PAGER_PREFIX}{name} <{contact}>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_per_address_and_per_window() {
        let limiter = PagerLimiter::new(2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let t = Instant::now();
        assert!(limiter.check(a, t).is_ok());
        assert!(limiter.check(a, t).is_ok());
        assert!(limiter.check(a, t).is_err());
        assert!(limiter.check(b, t).is_ok());
        assert!(limiter.check(a, t + WINDOW).is_ok());
    }

    #[test]
    fn sender_names_cannot_be_account_names() {
        assert_eq!(sender_name(None, None), "pager:");
        assert_eq!(
            sender_name(Some(" Ann\n"), Some("ann@example.org")),
            "pager:Ann <ann@example.org>"
        );
        assert!(parley_core::UserName::parse(&sender_name(Some("bob"), None)).is_err());
    }
}
