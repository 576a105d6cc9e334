//! The web pager: an anonymous visitor leaves a message for a user.
//!
//! A pager message is stored like any other message, in the recipient's
//! mailbox, with the same seq, ack and push rules. It is marked by its
//! sender name, which starts with [`PAGER_PREFIX`]: account names cannot
//! contain `:`, so no account can pass for the pager. Its sender id is
//! [`PAGER_SENDER`], an id no account ever has.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use parley_core::UserId;
use parley_core::addr::address_group;
use parley_core::rate::{WindowLimiter, retry_hint};

/// Sender name prefix of every pager message.
pub const PAGER_PREFIX: &str = "pager:";
/// Sender id of pager messages: no account's, and not the administrator's,
/// so that an account can refuse the pager alone.
pub const PAGER_SENDER: UserId = parley_core::service::PAGER_SENDER;

/// Whether a stored message came from the pager. Messages stored before the
/// pager had its own sender id carry [`parley_core::service::EXTERNAL_SENDER`];
/// the name's prefix tells them from the administrator's.
pub fn is_pager_message(sender: UserId, sender_name: &str) -> bool {
    (sender == PAGER_SENDER || sender == parley_core::service::EXTERNAL_SENDER) && sender_name.starts_with(PAGER_PREFIX)
}
/// Longest visitor name kept, in characters.
pub const MAX_VISITOR_NAME_CHARS: usize = 64;
/// Longest visitor contact kept, in characters.
pub const MAX_VISITOR_CONTACT_CHARS: usize = 128;
/// Most source addresses the rate limiter tracks; past it, the window that
/// started longest ago is dropped.
pub const MAX_TRACKED_ADDRESSES: usize = 100_000;
/// The rate limiter's window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Pager posts per source address (IPv6: its /64) per window: the core's
/// bounded window counter, as for logins and registrations.
pub struct PagerLimiter {
    /// Posts counted per address group.
    posts: WindowLimiter<IpAddr>,
}

impl PagerLimiter {
    pub fn new(per_window: u32) -> PagerLimiter {
        PagerLimiter {
            posts: WindowLimiter::new(per_window, WINDOW, MAX_TRACKED_ADDRESSES),
        }
    }

    /// Counts one post from `ip`; Err(ms to wait) when over the limit.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u32> {
        self.posts.take(&address_group(ip), now).map_err(retry_hint)
    }
}

/// Characters that reorder the text around them (embeddings, overrides,
/// isolates, marks): a right-to-left override in a name would make
/// `pager:alice\u{202E}live` read differently from what is stored.
const BIDI_CONTROLS: &[char] = &[
    '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', // embeddings, overrides
    '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', // isolates
    '\u{200E}', '\u{200F}', '\u{061C}', // marks
];

/// Characters a visitor's name may not hold: `:` would let a name such as
/// `system:admin` read as another kind of sender, and `<`, `>` would let it
/// fake the `<contact>` part.
const NOT_IN_NAMES: &[char] = &[':', '<', '>'];
/// Characters a contact may not hold: `<`, `>` would end it early.
const NOT_IN_CONTACTS: &[char] = &['<', '>'];

/// Keeps printable characters only, without bidi controls, at most `max`
/// of them, trimmed.
pub fn clean(text: &str, max: usize) -> String {
    clean_without(text, max, &[])
}

/// As [`clean`], also dropping every character in `drop`.
fn clean_without(text: &str, max: usize, drop: &[char]) -> String {
    text.chars()
        .filter(|c| !c.is_control() && !BIDI_CONTROLS.contains(c) && !drop.contains(c))
        .take(max)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The sender name a pager message is stored with: [`PAGER_PREFIX`], then
/// the visitor's name (no `:`, `<` or `>`), then `<contact>`. Whatever the
/// visitor types, it starts with the prefix and holds no second `:` before
/// the contact, so it reads as a visitor, never as an account or `system:`.
pub fn sender_name(name: Option<&str>, contact: Option<&str>) -> String {
    let name = name
        .map(|n| clean_without(n, MAX_VISITOR_NAME_CHARS, NOT_IN_NAMES))
        .unwrap_or_default();
    let contact = contact
        .map(|c| clean_without(c, MAX_VISITOR_CONTACT_CHARS, NOT_IN_CONTACTS))
        .unwrap_or_default();
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

    /// Every bidi control, spelled out again here so that shortening the
    /// list in the code fails a test.
    const EVERY_BIDI_CONTROL: &[char] = &[
        '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
        '\u{200E}', '\u{200F}', '\u{061C}',
    ];

    #[test]
    fn bidi_controls_are_dropped_from_names() {
        assert_eq!(sender_name(Some("alice\u{202E}evil"), None), "pager:aliceevil");
        for &c in EVERY_BIDI_CONTROL {
            let name = format!("{c}al{c}ice{c}");
            assert_eq!(sender_name(Some(&name), None), "pager:alice", "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn bidi_controls_are_dropped_from_contacts() {
        for &c in EVERY_BIDI_CONTROL {
            let contact = format!("{c}gro.elpmaxe@{c}ann");
            assert_eq!(
                sender_name(Some("Ann"), Some(&contact)),
                "pager:Ann <gro.elpmaxe@ann>",
                "U+{:04X}",
                c as u32
            );
        }
    }

    #[test]
    fn a_name_of_only_bidi_controls_is_no_name() {
        assert_eq!(sender_name(Some("\u{202E}\u{2066}"), None), "pager:");
    }

    #[test]
    fn a_visitor_cannot_pass_for_the_system() {
        assert_eq!(sender_name(Some("system:admin"), None), "pager:systemadmin");
        assert_eq!(sender_name(Some("System:Admin"), None), "pager:SystemAdmin");
        assert_eq!(sender_name(Some(" :system: "), None), "pager:system");
        assert!(!sender_name(Some("system:admin"), None)["pager:".len()..].contains(':'));
    }

    #[test]
    fn a_name_holds_no_colon_so_the_sender_is_pager_and_one_word_after() {
        for name in ["a:b", "pager:alice", "alice:", ":", "x\u{202E}:y"] {
            let sender = sender_name(Some(name), None);
            let visitor = sender.strip_prefix(PAGER_PREFIX).expect("pager prefix");
            assert!(!visitor.contains(':'), "{name:?} became {sender:?}");
        }
        assert_eq!(sender_name(Some(":"), None), "pager:");
    }

    #[test]
    fn a_name_cannot_fake_a_contact() {
        assert_eq!(
            sender_name(Some("bob <bob@corp.example>"), None),
            "pager:bob bob@corp.example"
        );
        assert_eq!(
            sender_name(Some("Ann"), Some("<ann@example.org>")),
            "pager:Ann <ann@example.org>"
        );
        assert_eq!(sender_name(Some("Ann"), Some("a> <b")), "pager:Ann <a b>");
    }

    #[test]
    fn a_contact_may_hold_a_colon() {
        assert_eq!(sender_name(None, Some("tel:+15550100")), "pager:<tel:+15550100>");
    }

    #[test]
    fn names_keep_letters_of_every_script() {
        assert_eq!(sender_name(Some("سارا"), None), "pager:سارا");
        assert_eq!(sender_name(Some("Zoë 😀"), None), "pager:Zoë 😀");
    }
}
