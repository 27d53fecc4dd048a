//! Login throttling: failed logins per client address (IPv6: per /64) and per account, over
//! a fixed window.
//!
//! An attempt *reserves* its place before its credentials are checked: attempts in flight
//! count against the limit as if they had failed, so a burst sent at once gets no more checks
//! than one sent in sequence. The reservation becomes a failure unless the login succeeds,
//! so an attempt that times out or whose caller gives up counts too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_sync::Lock;

/// Keys tracked before old windows are swept (at most once a second).
const SWEEP_ABOVE: usize = 4096;
/// Most keys tracked at once; past it new keys are not counted (memory stays bounded under
/// a spread-out attack; the keys already counted stay throttled).
const MAX_TRACKED: usize = 100_000;

/// Default failed logins per client address and window.
pub const DEFAULT_MAX_FAILURES: u32 = 10;
/// Default failed logins per account and window, from any address.
pub const DEFAULT_MAX_ACCOUNT_FAILURES: u32 = 50;
/// Default length of a throttling window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// Failed logins allowed per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures (and attempts in flight) after which an address is refused until its
    /// window ends; 0 disables throttling.
    pub max_failures: u32,
    /// Failures after which an account is refused until its window ends, whatever the
    /// address; 0 disables the per-account limit.
    pub max_account_failures: u32,
    /// Length of the window, counted from the first failure.
    pub window: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            max_failures: DEFAULT_MAX_FAILURES,
            max_account_failures: DEFAULT_MAX_ACCOUNT_FAILURES,
            window: DEFAULT_WINDOW,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
    in_flight: u32,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            failures: 0,
            in_flight: 0,
        }
    }
}

/// What failures are counted by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Address(IpAddr),
    /// A `remote` that is not an IP address (a backend's name): counted as given.
    Remote(String),
    Account(String),
}

#[derive(Debug)]
struct Windows {
    by_key: HashMap<Key, Window>,
    swept: Instant,
}

/// Counts failures per address and per account. A success does not clear them: otherwise
/// one valid account would let an address guess other users' passwords without limit.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    windows: Mutex<Windows>,
}

/// An attempt's place, held while its credentials are checked. Dropped without
/// [`Reservation::succeeded`], it counts as a failure.
#[derive(Debug)]
pub struct Reservation {
    throttle: Arc<Throttle>,
    keys: Vec<Key>,
    succeeded: bool,
}

impl Reservation {
    /// The login succeeded: its place is given back without a failure.
    pub fn succeeded(mut self) {
        self.succeeded = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.throttle.release(&self.keys, !self.succeeded);
    }
}

impl Throttle {
    /// Creates a throttle.
    pub fn new(config: ThrottleConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            windows: Mutex::new(Windows {
                by_key: HashMap::new(),
                swept: Instant::now(),
            }),
        })
    }

    fn limit(&self, key: &Key) -> u32 {
        match key {
            Key::Account(_) => self.config.max_account_failures,
            Key::Address(_) | Key::Remote(_) => self.config.max_failures,
        }
    }

    /// Reserves a place for an attempt on `account` from `remote` (a session's `remote`,
    /// `ws:IP:PORT`); `None` while the address or the account is over its limit, counting
    /// the attempts in flight.
    pub fn reserve(self: &Arc<Self>, remote: &str, account: &str) -> Option<Reservation> {
        if self.config.max_failures == 0 {
            return Some(Reservation {
                throttle: Arc::clone(self),
                keys: Vec::new(),
                succeeded: false,
            });
        }
        let mut keys = vec![address_key(remote)];
        if self.config.max_account_failures > 0 {
            keys.push(Key::Account(account.to_owned()));
        }
        let mut windows = self.windows.locked();
        let now = Instant::now();
        self.sweep(&mut windows, now);
        for key in &keys {
            if let Some(window) = windows.by_key.get(key)
                && now.duration_since(window.started) < self.config.window
                && window.failures + window.in_flight >= self.limit(key)
            {
                return None;
            }
        }
        for key in &keys {
            if windows.by_key.len() >= MAX_TRACKED && !windows.by_key.contains_key(key) {
                continue;
            }
            let window = windows
                .by_key
                .entry(key.clone())
                .or_insert_with(|| Window::new(now));
            if now.duration_since(window.started) >= self.config.window {
                // A new window; attempts still in flight carry over.
                window.started = now;
                window.failures = 0;
            }
            window.in_flight += 1;
        }
        drop(windows);
        Some(Reservation {
            throttle: Arc::clone(self),
            keys,
            succeeded: false,
        })
    }

    fn release(&self, keys: &[Key], failed: bool) {
        let mut windows = self.windows.locked();
        for key in keys {
            if let Some(window) = windows.by_key.get_mut(key) {
                window.in_flight = window.in_flight.saturating_sub(1);
                if failed {
                    window.failures = window.failures.saturating_add(1);
                }
            }
        }
    }

    fn sweep(&self, windows: &mut Windows, now: Instant) {
        if windows.by_key.len() >= SWEEP_ABOVE
            && now.duration_since(windows.swept) >= Duration::from_secs(1)
        {
            let window = self.config.window;
            windows.by_key.retain(|_, entry| {
                entry.in_flight > 0 || now.duration_since(entry.started) < window
            });
            windows.swept = now;
        }
    }
}

/// The address part of a session's `remote` (`ws:IP:PORT`, `wss:[IPv6]:PORT`); IPv6
/// addresses count per /64 (a client can pick any address of its network).
fn address_key(remote: &str) -> Key {
    let address = address_of(remote);
    let ip = address
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>();
    match ip {
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => Key::Address(IpAddr::V4(v4)),
            None => Key::Address(IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into())),
        },
        Ok(ip) => Key::Address(ip),
        Err(_) => Key::Remote(address.to_owned()),
    }
}

/// The address part of a session's `remote` (`ws:IP:PORT`, `wss:[IPv6]:PORT`); anything
/// else is returned as is.
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

    fn throttle(max_failures: u32, max_account_failures: u32, window: Duration) -> Arc<Throttle> {
        Throttle::new(ThrottleConfig {
            max_failures,
            max_account_failures,
            window,
        })
    }

    #[test]
    fn address_of_reads_the_address_and_keys_ipv6_per_64() {
        assert_eq!(address_of("ws:10.0.0.1:5555"), "10.0.0.1");
        assert_eq!(address_of("wss:[::1]:443"), "[::1]");
        assert_eq!(address_of("backend"), "backend");
        assert_eq!(
            address_key("ws:[2001:db8:1:2:aaaa::1]:1"),
            address_key("wss:[2001:db8:1:2:bbbb::9]:2"),
            "one /64"
        );
        assert_ne!(
            address_key("ws:[2001:db8:1:2::1]:1"),
            address_key("ws:[2001:db8:1:3::1]:1")
        );
    }

    #[test]
    fn in_flight_attempts_count_and_drops_are_failures() {
        let throttle = throttle(2, 0, Duration::from_secs(60));
        let first = throttle.reserve("ws:10.0.0.1:1", "u").expect("room");
        let second = throttle.reserve("ws:10.0.0.1:2", "u").expect("room");
        assert!(
            throttle.reserve("ws:10.0.0.1:3", "u").is_none(),
            "two in flight fill the limit"
        );
        first.succeeded();
        let third = throttle
            .reserve("ws:10.0.0.1:3", "u")
            .expect("a success frees its place");
        drop(second);
        drop(third);
        assert!(
            throttle.reserve("ws:10.0.0.1:4", "u").is_none(),
            "dropped attempts are failures"
        );
        assert!(
            throttle.reserve("ws:10.0.0.2:1", "u").is_some(),
            "other address"
        );
    }

    #[test]
    fn an_account_is_limited_across_addresses() {
        let throttle = throttle(10, 3, Duration::from_secs(60));
        for n in 0..3 {
            drop(
                throttle
                    .reserve(&format!("ws:10.0.1.{n}:1"), "alice")
                    .expect("room"),
            );
        }
        assert!(throttle.reserve("ws:10.0.2.1:1", "alice").is_none());
        assert!(throttle.reserve("ws:10.0.2.1:1", "bob").is_some());
    }

    #[test]
    fn window_blocks_then_expires() {
        let throttle = throttle(2, 0, Duration::from_millis(50));
        drop(throttle.reserve("a", "u"));
        drop(throttle.reserve("a", "u"));
        assert!(throttle.reserve("a", "u").is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(throttle.reserve("a", "u").is_some(), "the window ends");
    }
}
