//! Rate limits on what a client may create: accounts per source address
//! ([`WindowLimiter`], a counter per fixed window) and messages per account
//! ([`TokenBuckets`], a token bucket per key).
//!
//! Both tables are bounded. A full table first forgets what it can forget
//! without changing an answer (a window that has ended, a bucket that has
//! refilled), then the entry touched longest ago — never all entries at
//! once: a limiter that forgot everything when flooded would fail open.
//! Neither ever holds its lock across an `.await`; each call is one short
//! critical section.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::lock;

/// How long to wait, as a retry hint in whole milliseconds (at least 1).
pub fn retry_hint(wait: Duration) -> u32 {
    u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1)
}

/// Counts events per key in fixed windows and refuses the event past
/// `limit` until the key's window ends.
pub struct WindowLimiter<K> {
    /// Events allowed per key per window; 0: no limit.
    limit: u32,
    /// Length of a window.
    window: Duration,
    /// Most keys counted; past it the window started longest ago is dropped.
    max_tracked: usize,
    /// The counters.
    windows: Mutex<Windows<K>>,
}

/// One key's window.
#[derive(Clone, Copy, Debug)]
struct Window {
    /// When it started.
    start: Instant,
    /// Events counted in it.
    count: u32,
    /// Its place in [`Windows::order`].
    stamp: u64,
}

/// Counters with the order their windows started in.
struct Windows<K> {
    counters: HashMap<K, Window>,
    /// Stamp → key, oldest window first.
    order: BTreeMap<u64, K>,
    /// The next stamp.
    next: u64,
}

impl<K: Clone + Eq + Hash> WindowLimiter<K> {
    pub fn new(limit: u32, window: Duration, max_tracked: usize) -> WindowLimiter<K> {
        WindowLimiter {
            limit,
            window,
            max_tracked: max_tracked.max(1),
            windows: Mutex::new(Windows {
                counters: HashMap::new(),
                order: BTreeMap::new(),
                next: 0,
            }),
        }
    }

    /// Counts one event for `key`, or refuses it with the time until the
    /// key's window ends (nothing is counted then).
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        self.count(key, now, true)
    }

    /// Whether an event for `key` would be refused now, without counting
    /// it: Err(time until the key's window ends) when it would.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let w = lock(&self.windows);
        match w.counters.get(key) {
            Some(counter) => {
                let elapsed = now.saturating_duration_since(counter.start);
                if elapsed < self.window && counter.count >= self.limit {
                    Err(self.window - elapsed)
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// Counts one event for `key` whatever the count (a failed login is
    /// counted once it happened; [`WindowLimiter::check`] decides who may
    /// try).
    pub fn record(&self, key: &K, now: Instant) {
        let _ = self.count(key, now, false);
    }

    /// Counts one event; with `refuse`, not past the limit.
    fn count(&self, key: &K, now: Instant, refuse: bool) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let mut w = lock(&self.windows);
        if let Some(counter) = w.counters.get_mut(key) {
            let elapsed = now.saturating_duration_since(counter.start);
            if elapsed < self.window {
                if refuse && counter.count >= self.limit {
                    return Err(self.window - elapsed);
                }
                counter.count = counter.count.saturating_add(1);
                return Ok(());
            }
            // The window ended: a new one starts now, at the end of the order.
            let old = counter.stamp;
            w.order.remove(&old);
        } else {
            while w.counters.len() >= self.max_tracked {
                let Some((_, oldest)) = w.order.pop_first() else {
                    break;
                };
                w.counters.remove(&oldest);
            }
        }
        let stamp = w.next;
        w.next += 1;
        w.order.insert(stamp, key.clone());
        w.counters.insert(
            key.clone(),
            Window {
                start: now,
                count: 1,
                stamp,
            },
        );
        Ok(())
    }

    /// Keys counted now.
    pub fn tracked(&self) -> usize {
        lock(&self.windows).counters.len()
    }
}

/// Shards of [`TokenBuckets`]: sends of different accounts rarely wait for
/// each other's lock.
const BUCKET_SHARDS: usize = 16;

/// A token bucket per key: `rate` tokens a second, at most `burst` saved
/// up; each event takes one.
pub struct TokenBuckets<K> {
    /// Tokens added per second; 0: no limit.
    rate: u32,
    /// Most tokens a bucket holds (a new key starts full).
    burst: u32,
    /// Most keys per shard.
    per_shard: usize,
    /// The buckets, sharded by key hash.
    shards: Vec<Mutex<HashMap<K, Bucket>>>,
}

/// One key's bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens when last touched.
    tokens: f64,
    /// When it was last touched.
    last: Instant,
}

impl<K: Clone + Eq + Hash> TokenBuckets<K> {
    /// `max_tracked` keys in all are kept (spread over the shards).
    pub fn new(rate: u32, burst: u32, max_tracked: usize) -> TokenBuckets<K> {
        TokenBuckets {
            rate,
            burst: burst.max(1),
            per_shard: max_tracked.div_ceil(BUCKET_SHARDS).max(1),
            shards: (0..BUCKET_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        (bucket.tokens + elapsed * f64::from(self.rate)).min(f64::from(self.burst))
    }

    /// Takes a token from `key`'s bucket, or refuses with the time until
    /// one is there (nothing is taken then).
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.rate == 0 {
            return Ok(());
        }
        let shard = {
            use std::hash::{BuildHasher, BuildHasherDefault};
            let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(key);
            (hash as usize) % self.shards.len().max(1)
        };
        let Some(shard) = self.shards.get(shard) else {
            return Ok(());
        };
        let mut buckets = lock(shard);
        let tokens = match buckets.get(key) {
            Some(bucket) => self.refilled(bucket, now),
            None => {
                if buckets.len() >= self.per_shard {
                    self.make_room(&mut buckets, now);
                }
                f64::from(self.burst)
            }
        };
        if tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - tokens) / f64::from(self.rate));
            buckets.insert(key.clone(), Bucket { tokens, last: now });
            return Err(wait);
        }
        buckets.insert(
            key.clone(),
            Bucket {
                tokens: tokens - 1.0,
                last: now,
            },
        );
        Ok(())
    }

    /// Drops every bucket that has refilled (forgetting it changes
    /// nothing: a new key starts full); if none has, the one touched
    /// longest ago.
    fn make_room(&self, buckets: &mut HashMap<K, Bucket>, now: Instant) {
        let before = buckets.len();
        buckets.retain(|_, bucket| self.refilled(bucket, now) < f64::from(self.burst));
        if buckets.len() < before {
            return;
        }
        let oldest = buckets.iter().min_by_key(|(_, b)| b.last).map(|(k, _)| k.clone());
        if let Some(oldest) = oldest {
            buckets.remove(&oldest);
        }
    }

    /// Keys kept now.
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_to_its_limit_then_refuses_until_it_ends() {
        let limiter = WindowLimiter::new(3, Duration::from_secs(3600), 100);
        let now = Instant::now();
        for _ in 0..3 {
            limiter.take(&"a", now).unwrap();
        }
        let wait = limiter.take(&"a", now + Duration::from_secs(600)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(3000));
        limiter.take(&"b", now).unwrap();
        limiter.take(&"a", now + Duration::from_secs(3600)).unwrap();
    }

    #[test]
    fn a_zero_limit_is_no_limit() {
        let limiter = WindowLimiter::new(0, Duration::from_secs(1), 1);
        let buckets = TokenBuckets::new(0, 1, 1);
        let now = Instant::now();
        for i in 0..1000 {
            limiter.take(&i, now).unwrap();
            buckets.take(&i, now).unwrap();
        }
        assert_eq!(limiter.tracked() + buckets.tracked(), 0);
    }

    /// A flood of new keys drops the oldest windows, never the newest.
    #[test]
    fn a_full_window_table_evicts_the_oldest_and_never_fails_open() {
        let limiter = WindowLimiter::new(1, Duration::from_secs(3600), 10);
        let now = Instant::now();
        for i in 0..100u32 {
            limiter.take(&i, now).unwrap();
        }
        assert_eq!(limiter.tracked(), 10);
        assert!(limiter.take(&99, now).is_err(), "the newest are still counted");
    }

    #[test]
    fn a_bucket_allows_its_burst_then_the_rate() {
        let buckets = TokenBuckets::new(10, 100, 1000);
        let now = Instant::now();
        for _ in 0..100 {
            buckets.take(&1u64, now).unwrap();
        }
        let wait = buckets.take(&1u64, now).unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another key has its own bucket.
        buckets.take(&2u64, now).unwrap();
        // A tenth of a second later, one more token.
        let later = now + Duration::from_millis(100);
        buckets.take(&1u64, later).unwrap();
        assert!(buckets.take(&1u64, later).is_err());
    }

    #[test]
    fn a_full_bucket_table_forgets_refilled_buckets_first() {
        let buckets = TokenBuckets::new(1, 2, BUCKET_SHARDS * 4);
        let now = Instant::now();
        // A flood of new keys, each after the earlier ones have refilled
        // (those are dropped), then again all at once (the oldest are).
        buckets.take(&u64::MAX, now).unwrap();
        buckets.take(&u64::MAX, now).unwrap();
        let later = now + Duration::from_millis(100);
        for i in 0..1000u64 {
            buckets.take(&i, later + Duration::from_secs(2 * i)).unwrap();
        }
        assert!(buckets.tracked() <= BUCKET_SHARDS * 4);
        let end = later + Duration::from_secs(2000);
        for i in 0..1000u64 {
            let _ = buckets.take(&i, end);
        }
        assert!(buckets.tracked() <= BUCKET_SHARDS * 4, "bounded whatever the keys");
    }
}
