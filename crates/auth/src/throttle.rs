//! Login throttling: failed logins per remote address over a fixed window.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Addresses tracked before old windows are swept (at most once a second).
const SWEEP_ABOVE: usize = 4096;
/// Most addresses tracked at once; past it new addresses are not counted (memory stays
/// bounded under a spread-out attack; the ones already counted stay throttled).
const MAX_TRACKED: usize = 100_000;

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

#[derive(Debug)]
struct Windows {
    by_address: HashMap<String, Window>,
    swept: Instant,
}

/// Counts failures per address. A success does not clear them: otherwise one valid account
/// would let an address guess other users' passwords without limit.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    windows: Mutex<Windows>,
}

impl Throttle {
    /// Creates a throttle.
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            windows: Mutex::new(Windows {
                by_address: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// Tells whether `address` is over the limit now.
    pub fn is_blocked(&self, address: &str) -> bool {
        if self.config.max_failures == 0 {
            return false;
        }
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        windows.by_address.get(address).is_some_and(|window| {
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
        let now = Instant::now();
        if windows.by_address.len() >= SWEEP_ABOVE
            && now.duration_since(windows.swept) >= Duration::from_secs(1)
        {
            let window = self.config.window;
            windows
                .by_address
                .retain(|_, entry| entry.started.elapsed() < window);
            windows.swept = now;
        }
        if windows.by_address.len() >= MAX_TRACKED && !windows.by_address.contains_key(address) {
            return;
        }
        let entry = windows
            .by_address
            .entry(address.to_owned())
            .or_insert(Window {
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
    }
}
