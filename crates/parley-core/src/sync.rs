//! The one way Parley takes a `std::sync::Mutex` or `RwLock`, and the one
//! way it waits for several futures whose first polls must come in order.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::Poll;

/// Locks `mutex`, recovering the data if a thread panicked while holding
/// it. Every critical section in Parley is short and leaves its data
/// consistent at each step (a map updated by one insert or remove, a
/// counter bumped), so a poisoned lock still guards valid data, and
/// refusing it would turn one panic into a server that fails forever.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads `lock`, recovering the data after a panic, for the reason
/// [`lock`] gives.
pub fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Writes `lock`, recovering the data after a panic, for the reason
/// [`lock`] gives.
pub fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `futures` together and gives their outputs in order. Each is first
/// polled in order, so what each sends on its first poll (a request on a
/// shared connection) goes out in that order; a finished future is not
/// polled again.
pub async fn join_in_order<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut running: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = running.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in running.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_in_order_starts_each_in_turn_and_keeps_their_order() {
        let started = Mutex::new(Vec::new());
        let futures = (0..40u32).map(|i| {
            let started = &started;
            async move {
                lock(started).push(i);
                tokio::task::yield_now().await;
                if i % 3 == 0 {
                    tokio::task::yield_now().await;
                }
                i * 2
            }
        });
        let outputs = join_in_order(futures).await;
        assert_eq!(outputs, (0..40).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(*lock(&started), (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn a_poisoned_lock_still_gives_its_data() {
        let mutex = std::sync::Arc::new(Mutex::new(1));
        let clone = std::sync::Arc::clone(&mutex);
        let _ = std::thread::spawn(move || {
            let _guard = clone.lock();
            panic!("poison it");
        })
        .join();
        assert!(mutex.is_poisoned());
        *lock(&mutex) += 1;
        assert_eq!(*lock(&mutex), 2);
    }
}
