//! The one way Switchboard takes a `std::sync::Mutex`: [`Lock::locked`], which tolerates
//! poisoning.
//!
//! A lock is poisoned when a thread panics while holding it. Every lock in Switchboard guards
//! data that each critical section leaves consistent at every step (maps of sessions, routes,
//! counters, queues of answers), so the data behind a poisoned lock is still sound. Refusing it
//! would turn one connection task's panic into a failure of every connection sharing the map.
//! Critical sections never `.await` (clippy's `await_holding_lock` is on for the workspace).
//!
//! Depends on nothing; every crate with a shared lock uses it.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks a mutex, taking over a poisoned one.
pub trait Lock<T: ?Sized> {
    /// Blocks until the lock is held and returns its guard, even if a holder panicked.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Lock<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_gives_its_data() {
        let shared = std::sync::Arc::new(Mutex::new(vec![1]));
        let clone = std::sync::Arc::clone(&shared);
        let panicked = std::thread::spawn(move || {
            let mut guard = clone.locked();
            guard.push(2);
            panic!("a holder panics");
        })
        .join();
        assert!(panicked.is_err());
        assert!(shared.is_poisoned());
        assert_eq!(*shared.locked(), vec![1, 2]);
    }
}
