//! Login throttling: failed logins per remote address over a fixed window.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Addresses tracked before old windows are swept.
const SWEEP_ABOVE: usize = 4096;

/// Failed logins allowed per address and window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures after which an address is refused until its window ends; 0 disables.
    pub max_failures: u32,
    /// Length of the window, counted from the address's first failure.
    pub window: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            max_failures: 10,
            window: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Counts failures per address.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    windows: Mutex<HashMap<String, Window>>,
}

impl Throttle {
    /// Creates a throttle.
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Tells whether `address` is over the limit now.
    pub fn is_blocked(&self, address: &str) -> bool {
        if self.config.max_failures == 0 {
            return false;
        }
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        windows.get(address).is_some_and(|window| {
            window.started.elapsed() < self.config.window
                && window.failures >= self.config.max_failures
        })
    }

    /// Counts a failed login from `address`.
    pub fn record_failure(&self, address: &str) {
        if self.config.max_failures == 0 {
            return;
        }
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() >= SWEEP_ABOVE {
            let window = self.config.window;
            windows.retain(|_, entry| entry.started.elapsed() < window);
        }
        let now = Instant::now();
        let entry = windows.entry(address.to_owned()).or_insert(Window {
            started: now,
            failures: 0,
        });
        if entry.started.elapsed() >= self.config.window {
            *entry = Window {
                started: now,
                failures: 0,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
    }

    /// Forgets `address`'s failures after a successful login.
    pub fn record_success(&self, address: &str) {
        if self.config.max_failures == 0 {
            return;
        }
        self.windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(address);
    }
}

/// The address part of a session's `remote` (`ws:IP:PORT`, `wss:[IPv6]:PORT`), which is what
/// failures are counted by; anything else is used as is.
pub fn address_of(remote: &str) -> &str {
    let rest = remote
        .strip_prefix("wss:")
        .or_else(|| remote.strip_prefix("ws:"))
        .unwrap_or(remote);
    match rest.rfind(':') {
        Some(colon) if rest[colon + 1..].bytes().all(|b| b.is_ascii_digit()) => &rest[..colon],
        _ => rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_address_of() {
        assert_eq!(address_of("ws:10.0.0.1:5555"), "10.0.0.1");
        assert_eq!(address_of("wss:[::1]:443"), "[::1]");
        assert_eq!(address_of("backend"), "backend");
    }

    #[test]
    fn test_window_blocks_then_expires() {
        let throttle = Throttle::new(ThrottleConfig {
            max_failures: 2,
            window: Duration::from_millis(50),
        });
        throttle.record_failure("a");
        assert!(!throttle.is_blocked("a"));
        throttle.record_failure("a");
        assert!(throttle.is_blocked("a"));
        assert!(
            !throttle.is_blocked("b"),
            "other addresses are not affected"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(!throttle.is_blocked("a"), "the window ends");
        throttle.record_failure("a");
        throttle.record_success("a");
        throttle.record_failure("a");
        assert!(!throttle.is_blocked("a"), "a success resets the count");
    }
}
