//! The wall clock, read the same way by every store: for `created_ms` of
//! accounts and for deciding which resume tokens have expired when a new one
//! is created.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::convert::clamp;

/// Milliseconds since the Unix epoch, clamped like every written value; 0 if
/// the clock is before the epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| clamp(u64::try_from(since.as_millis()).unwrap_or(u64::MAX)))
        .unwrap_or(0)
}
