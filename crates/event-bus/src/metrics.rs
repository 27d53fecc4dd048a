//! The bus's series (`docs/OPERATIONS.md`, "Metrics").

use std::sync::LazyLock;

use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use switchboard_admin::series::{self, CounterBy};
use switchboard_publish::Refusal;

/// Events by result, and the broker's publish time.
#[derive(Debug)]
pub struct Metrics {
    /// Events by result: `published`, `denied`, `invalid`, `limit_exceeded`, `unavailable`.
    pub events: CounterBy,
    /// One publish into the broker (a batch: one Lua call into Redis).
    pub publish_duration: Histogram,
}

/// The bus series of this process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    events: CounterBy::default(),
    publish_duration: series::latency(),
});

impl Metrics {
    /// Counts `count` events with `result`.
    pub fn count(&self, result: &'static str, count: usize) {
        self.events
            .get_or_create(&[("result", result)])
            .inc_by(count as u64);
    }

    /// Counts one event refused for `refusal`.
    pub fn refused(&self, refusal: &Refusal) {
        self.count(
            match refusal {
                Refusal::Denied => "denied",
                Refusal::LimitExceeded(_) => "limit_exceeded",
                Refusal::Invalid(_) => "invalid",
            },
            1,
        );
    }

    /// Registers the bus series in `registry`.
    pub fn register(&'static self, registry: &mut Registry) {
        registry.register(
            "switchboard_bus_events",
            "Events, by result (published, denied, invalid, limit_exceeded, unavailable)",
            self.events.clone(),
        );
        registry.register(
            "switchboard_bus_redis_publish_duration_seconds",
            "One publish into the broker: a batch of events, one Lua call into Redis",
            self.publish_duration.clone(),
        );
    }
}
