//! Login throttling: failed attempts are counted per account name and per
//! source address in fixed one-window buckets; past the limit, attempts are
//! refused with RATE_LIMITED until the window ends, whatever the password.
//!
//! Counting only failures keeps reconnect storms of honest clients free.
//! A per-account limit lets a stranger lock an account's password logins for
//! one window; resume tokens are not affected by the per-account limit, so
//! already-logged-in devices keep working.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{CoreError, ErrorKind};

/// Failed logins allowed per account name per window.
pub const DEFAULT_FAILURES_PER_ACCOUNT: u32 = 10;
/// Failed logins (and resumes) allowed per source address per window.
pub const DEFAULT_FAILURES_PER_IP: u32 = 30;
/// Length of a counting window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// Most keys tracked; past it, expired buckets are dropped, and if that is
/// not enough, all of them (failing open rather than growing).
const MAX_TRACKED: usize = 100_000;

/// Throttle settings.
#[derive(Clone, Debug)]
pub struct ThrottleSettings {
    pub failures_per_account: u32,
    pub failures_per_ip: u32,
    pub window: Duration,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            failures_per_account: DEFAULT_FAILURES_PER_ACCOUNT,
            failures_per_ip: DEFAULT_FAILURES_PER_IP,
            window: DEFAULT_WINDOW,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Account(String),
    Ip(IpAddr),
}

/// Failure counters.
pub struct Throttle {
    /// Limits and window.
    settings: ThrottleSettings,
    /// Window start and failures, per key.
    buckets: Mutex<HashMap<Key, (Instant, u32)>>,
}

impl Throttle {
    pub fn new(settings: ThrottleSettings) -> Throttle {
        Throttle {
            settings,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn keys(account: Option<&str>, ip: Option<IpAddr>) -> impl Iterator<Item = Key> {
        account
            .map(|a| Key::Account(a.to_owned()))
            .into_iter()
            .chain(ip.map(Key::Ip))
    }

    fn limit(&self, key: &Key) -> u32 {
        match key {
            Key::Account(_) => self.settings.failures_per_account,
            Key::Ip(_) => self.settings.failures_per_ip,
        }
    }

    /// Refuses the attempt if the account or the address is over its limit.
    pub fn check(&self, account: Option<&str>, ip: Option<IpAddr>, now: Instant) -> Result<(), CoreError> {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        for key in Throttle::keys(account, ip) {
            if let Some(&(start, count)) = buckets.get(&key) {
                let elapsed = now.saturating_duration_since(start);
                if elapsed < self.settings.window && count >= self.limit(&key) {
                    let wait = self.settings.window - elapsed;
                    return Err(CoreError {
                        kind: ErrorKind::RateLimited,
                        message: "too many failed logins; wait before trying again".into(),
                        retry_after_ms: Some(u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1)),
                    });
                }
            }
        }
        Ok(())
    }

    /// Counts a failed attempt.
    pub fn record_failure(&self, account: Option<&str>, ip: Option<IpAddr>, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED {
            let window = self.settings.window;
            buckets.retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
            if buckets.len() >= MAX_TRACKED {
                buckets.clear();
            }
        }
        for key in Throttle::keys(account, ip) {
            let bucket = buckets.entry(key).or_insert((now, 0));
            if now.saturating_duration_since(bucket.0) >= self.settings.window {
                *bucket = (now, 0);
            }
            bucket.1 = bucket.1.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_failures_per_key_until_the_window_ends() {
        let t = Throttle::new(ThrottleSettings {
            failures_per_account: 2,
            failures_per_ip: 3,
            window: Duration::from_secs(60),
        });
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
}
