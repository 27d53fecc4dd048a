//! The auth service's series (`docs/OPERATIONS.md`, "Metrics").

use std::sync::LazyLock;
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use switchboard_admin::series::{self, CounterBy};

/// Login checks by result, and their duration.
#[derive(Debug)]
pub struct Metrics {
    /// Checks by result: `ok`, `invalid_credentials`, `too_many_attempts`.
    pub checks: CounterBy,
    /// How long a check took (password hashing included).
    pub check_duration: Histogram,
}

/// The auth series of this process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    checks: CounterBy::default(),
    check_duration: series::latency(),
});

impl Metrics {
    /// Counts a check that began at `started` and ended with `result`.
    pub fn checked(&self, started: Instant, result: &'static str) {
        self.checks.get_or_create(&[("result", result)]).inc();
        self.check_duration.observe(series::seconds_since(started));
    }

    /// Registers the auth series in `registry`.
    pub fn register(&'static self, registry: &mut Registry) {
        registry.register(
            "switchboard_auth_checks",
            "Login checks, by result (ok, invalid_credentials, too_many_attempts)",
            self.checks.clone(),
        );
        registry.register(
            "switchboard_auth_check_duration_seconds",
            "Login checks, password hashing included",
            self.check_duration.clone(),
        );
    }
}
