//! Login throttling.
//!
//! Two kinds of bound, per account name and per source address (IPv6 by
//! its /64, see [`crate::addr`]):
//!
//! - **Failures** are counted in fixed windows; past the limit, attempts
//!   are refused with RATE_LIMITED until the window ends, whatever the
//!   password. The limit is checked when a login starts *and* again when
//!   its proof arrives, so starting many logins before finishing any of
//!   them gains nothing: every wrong proof counts, and a proof that
//!   arrives after the limit was reached is refused unread.
//! - **Logins in progress** (between the two SCRAM steps) are bounded: an
//!   [`Attempt`] holds a place from the first step until it is dropped, so
//!   nobody can hold thousands of challenges for one account, or fill a
//!   front door's table of pending logins from one address.
//!
//! Counting only failures keeps reconnect storms of honest clients free.
//! A per-account limit lets a stranger lock an account's password logins for
//! one window; resume tokens are not affected by the per-account limit, so
//! already-logged-in devices keep working.
//!
//! The failure counters are bounded ([`WindowLimiter`], shared with the
//! registration limit and the pager); when full they drop the counter
//! whose window started longest ago (never all of them: a throttle that
//! forgets everything when flooded would fail open).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::addr::address_group;
use crate::error::{CoreError, ErrorKind};
use crate::rate::{WindowLimiter, retry_hint};
use crate::sync::lock;

/// Failed logins allowed per account name per window.
pub const DEFAULT_FAILURES_PER_ACCOUNT: u32 = 10;
/// Failed logins (and resumes) allowed per source address per window.
pub const DEFAULT_FAILURES_PER_IP: u32 = 30;
/// Logins in progress (first step taken, proof not yet checked) per account.
pub const DEFAULT_PENDING_PER_ACCOUNT: u32 = 8;
/// Logins in progress per source address.
pub const DEFAULT_PENDING_PER_IP: u32 = 64;
/// Length of a counting window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// Most failure counters kept; past it, the one whose window started
/// longest ago is dropped.
pub const MAX_TRACKED: usize = 100_000;
/// Retry hint when too many logins are in progress.
const PENDING_RETRY_MS: u32 = 1000;

/// Throttle settings.
#[derive(Clone, Debug)]
pub struct ThrottleSettings {
    pub failures_per_account: u32,
    pub failures_per_ip: u32,
    pub pending_per_account: u32,
    pub pending_per_ip: u32,
    pub window: Duration,
    /// Most failure counters kept (tests make it small).
    pub max_tracked: usize,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            failures_per_account: DEFAULT_FAILURES_PER_ACCOUNT,
            failures_per_ip: DEFAULT_FAILURES_PER_IP,
            pending_per_account: DEFAULT_PENDING_PER_ACCOUNT,
            pending_per_ip: DEFAULT_PENDING_PER_IP,
            window: DEFAULT_WINDOW,
            max_tracked: MAX_TRACKED,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Account(String),
    Ip(IpAddr),
}

/// Failure counters and logins in progress.
pub struct Throttle {
    /// Limits and window.
    settings: ThrottleSettings,
    /// Failed attempts per account name key.
    account_failures: WindowLimiter<String>,
    /// Failed attempts per address group.
    ip_failures: WindowLimiter<IpAddr>,
    /// Logins in progress per key; an entry lives while an [`Attempt`]
    /// for it does, so this is bounded by the attempts alive.
    pending: Mutex<HashMap<Key, u32>>,
}

/// A login in progress: holds its place under the pending limits until it
/// is dropped, and knows whom to count a failure against.
pub struct Attempt {
    /// The throttle it counts in.
    throttle: Arc<Throttle>,
    /// The account name key, if the attempt names one.
    account: Option<String>,
    /// The address group, if known.
    ip: Option<IpAddr>,
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("account", &self.account)
            .field("ip", &self.ip)
            .finish()
    }
}

impl Attempt {
    /// Refuses the attempt if its account or address has reached its
    /// failure limit meanwhile (checked again before a proof is read).
    pub fn check(&self, now: Instant) -> Result<(), CoreError> {
        self.throttle.check_failures(self.account.as_deref(), self.ip, now)
    }

    /// The account name key it names, if any.
    pub fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    /// Its address group, if known.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let mut pending = lock(&self.throttle.pending);
        for key in Throttle::keys(self.account.as_deref(), self.ip) {
            if let Some(n) = pending.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    pending.remove(&key);
                }
            }
        }
    }
}

impl Throttle {
    pub fn new(settings: ThrottleSettings) -> Arc<Throttle> {
        Arc::new(Throttle {
            account_failures: WindowLimiter::new(settings.failures_per_account, settings.window, settings.max_tracked),
            ip_failures: WindowLimiter::new(settings.failures_per_ip, settings.window, settings.max_tracked),
            settings,
            pending: Mutex::new(HashMap::new()),
        })
    }

    fn keys(account: Option<&str>, ip: Option<IpAddr>) -> impl Iterator<Item = Key> {
        account
            .map(|a| Key::Account(a.to_owned()))
            .into_iter()
            .chain(ip.map(Key::Ip))
    }

    fn pending_limit(&self, key: &Key) -> u32 {
        match key {
            Key::Account(_) => self.settings.pending_per_account,
            Key::Ip(_) => self.settings.pending_per_ip,
        }
    }

    /// Starts a login attempt: refused if the account or the address is
    /// over its failure limit, or already has its most logins in progress.
    pub fn begin(
        self: &Arc<Self>,
        account: Option<&str>,
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Result<Attempt, CoreError> {
        let ip = ip.map(address_group);
        self.check_failures(account, ip, now)?;
        let mut pending = lock(&self.pending);
        for key in Throttle::keys(account, ip) {
            if pending.get(&key).copied().unwrap_or(0) >= self.pending_limit(&key) {
                return Err(CoreError::new(
                    ErrorKind::RateLimited,
                    "too many logins in progress; finish or wait before starting another",
                )
                .with_retry_after(PENDING_RETRY_MS));
            }
        }
        for key in Throttle::keys(account, ip) {
            *pending.entry(key).or_insert(0) += 1;
        }
        drop(pending);
        Ok(Attempt {
            throttle: Arc::clone(self),
            account: account.map(str::to_owned),
            ip,
        })
    }

    /// Refuses the attempt if the account or the address is over its limit.
    pub fn check(&self, account: Option<&str>, ip: Option<IpAddr>, now: Instant) -> Result<(), CoreError> {
        self.check_failures(account, ip.map(address_group), now)
    }

    fn check_failures(&self, account: Option<&str>, ip: Option<IpAddr>, now: Instant) -> Result<(), CoreError> {
        let by_account = account.map_or(Ok(()), |a| self.account_failures.check(&a.to_owned(), now));
        let by_ip = ip.map_or(Ok(()), |ip| self.ip_failures.check(&ip, now));
        by_account.and(by_ip).map_err(|wait| {
            CoreError::new(
                ErrorKind::RateLimited,
                "too many failed logins; wait before trying again",
            )
            .with_retry_after(retry_hint(wait))
        })
    }

    /// Counts a failed attempt.
    pub fn record_failure(&self, account: Option<&str>, ip: Option<IpAddr>, now: Instant) {
        if let Some(account) = account {
            self.account_failures.record(&account.to_owned(), now);
        }
        if let Some(ip) = ip.map(address_group) {
            self.ip_failures.record(&ip, now);
        }
    }

    /// Failure counters kept now.
    pub fn tracked(&self) -> usize {
        self.account_failures.tracked() + self.ip_failures.tracked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ThrottleSettings {
        ThrottleSettings {
            failures_per_account: 2,
            failures_per_ip: 3,
            pending_per_account: 2,
            pending_per_ip: 3,
            window: Duration::from_secs(60),
            max_tracked: 100,
        }
    }

    #[test]
    fn limits_failures_per_key_until_the_window_ends() {
        let t = Throttle::new(settings());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let now = Instant::now();
        t.record_failure(Some("alice"), Some(ip), now);
        assert!(t.check(Some("alice"), Some(ip), now).is_ok());
        t.record_failure(Some("alice"), Some(ip), now);
        let err = t.check(Some("alice"), Some(ip), now).unwrap_err();
        assert_eq!(err.kind, ErrorKind::RateLimited);
        assert!(err.retry_after_ms.unwrap() > 0);
        // Another account from the same address still has one failure left.
        assert!(t.check(Some("bob"), Some(ip), now).is_ok());
        t.record_failure(Some("bob"), Some(ip), now);
        assert!(
            t.check(Some("carol"), Some(ip), now).is_err(),
            "the address is over its limit"
        );
        // A new window starts afresh.
        let later = now + Duration::from_secs(61);
        assert!(t.check(Some("alice"), Some(ip), later).is_ok());
    }

    /// The bypass found by the probe: many logins started before any
    /// failed. The starts are bounded, and the proofs are checked against
    /// the failures counted meanwhile.
    #[test]
    fn logins_started_before_any_failure_still_count_and_are_bounded() {
        let t = Throttle::new(settings());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let now = Instant::now();
        let a = t.begin(Some("alice"), Some(ip), now).unwrap();
        let b = t.begin(Some("alice"), Some(ip), now).unwrap();
        let refused = t.begin(Some("alice"), Some(ip), now).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::RateLimited, "two in progress per account");
        a.check(now).unwrap();
        t.record_failure(a.account(), a.ip(), now);
        b.check(now).unwrap();
        t.record_failure(b.account(), b.ip(), now);
        drop((a, b));
        // Both places are free again, but the account is over its failures.
        assert!(t.begin(Some("alice"), Some(ip), now).is_err());
        // An attempt started before the limit was reached is refused at
        // its second step.
        let t = Throttle::new(settings());
        let first = t.begin(Some("bob"), Some(ip), now).unwrap();
        t.record_failure(Some("bob"), Some(ip), now);
        t.record_failure(Some("bob"), Some(ip), now);
        assert_eq!(first.check(now).unwrap_err().kind, ErrorKind::RateLimited);
    }

    #[test]
    fn logins_in_progress_are_bounded_per_address() {
        let t = Throttle::new(settings());
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let now = Instant::now();
        let held: Vec<Attempt> = ["a", "b", "c"]
            .iter()
            .map(|name| t.begin(Some(name), Some(ip), now).unwrap())
            .collect();
        assert!(t.begin(Some("d"), Some(same_64), now).is_err(), "one /64, one address");
        assert!(
            t.begin(Some("d"), Some("2001:db8:0:1::1".parse().unwrap()), now)
                .is_ok()
        );
        drop(held);
        assert!(t.begin(Some("d"), Some(same_64), now).is_ok());
    }

    /// A full table drops its oldest counters, never all of them.
    #[test]
    fn a_full_table_evicts_the_oldest_and_never_fails_open() {
        let t = Throttle::new(ThrottleSettings {
            max_tracked: 10,
            ..settings()
        });
        let now = Instant::now();
        t.record_failure(Some("victim"), None, now);
        t.record_failure(Some("victim"), None, now);
        assert!(t.check(Some("victim"), None, now).is_err());
        // A flood of new keys after the victim's counter: the table stays
        // at its size and drops the oldest first.
        for i in 0..8 {
            t.record_failure(Some(&format!("flood{i}")), None, now + Duration::from_millis(i));
        }
        assert!(t.tracked() <= 10);
        assert!(t.check(Some("victim"), None, now).is_err(), "still counted");
        for i in 8..100 {
            t.record_failure(Some(&format!("flood{i}")), None, now + Duration::from_millis(i));
        }
        assert_eq!(t.tracked(), 10);
        // The newest counters survive: the flood's own limit still holds.
        t.record_failure(Some("flood99"), None, now + Duration::from_millis(99));
        assert!(t.check(Some("flood99"), None, now + Duration::from_millis(99)).is_err());
    }
}
