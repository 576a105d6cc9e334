//! Waiting for a condition instead of sleeping a guess: each helper checks
//! its condition at once and then every [`POLL_INTERVAL`] until it holds or
//! the deadline passes, and then fails the test naming what it awaited. A
//! loaded machine makes such a wait longer, never wrong; a fixed sleep is
//! either too long everywhere or too short somewhere.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How long the helpers wait between two checks of a condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Checks `probe` at once and then every [`POLL_INTERVAL`] until it
/// returns `Some` (that value) or `within` passes (`None`): for a caller
/// that says more than [`poll_until`] when the wait fails.
pub async fn poll_within<T>(within: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // deliberate: the pause between two checks of the condition.
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until `probe` returns `Some`, checking at once and then every
/// [`POLL_INTERVAL`]; returns the value. Panics naming `what` when
/// `within` passes first.
pub async fn poll_until<T>(what: &str, within: Duration, probe: impl AsyncFnMut() -> Option<T>) -> T {
    match poll_within(within, probe).await {
        Some(value) => value,
        None => panic!("waited {within:?} for {what}, in vain"),
    }
}

/// Waits until `condition` holds (see [`poll_until`]).
pub async fn wait_until(what: &str, within: Duration, mut condition: impl AsyncFnMut() -> bool) {
    poll_until(what, within, async || condition().await.then_some(())).await
}

/// [`poll_within`] for code outside an async runtime (it blocks the thread).
pub fn poll_within_blocking<T>(within: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // deliberate: the pause between two checks of the condition.
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// [`poll_until`] for code outside an async runtime (it blocks the thread).
pub fn poll_until_blocking<T>(what: &str, within: Duration, probe: impl FnMut() -> Option<T>) -> T {
    match poll_within_blocking(within, probe) {
        Some(value) => value,
        None => panic!("waited {within:?} for {what}, in vain"),
    }
}

/// [`wait_until`] for code outside an async runtime (it blocks the thread).
pub fn wait_until_blocking(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    poll_until_blocking(what, within, || condition().then_some(()))
}

/// Waits for `child` to exit and returns its status; kills it and panics
/// naming `what` when `within` passes first.
pub fn wait_for_exit(what: &str, child: &mut Child, within: Duration) -> ExitStatus {
    match poll_within_blocking(within, || child.try_wait().ok().flatten()) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("waited {within:?} for {what} to exit, in vain (killed it)");
        }
    }
}
