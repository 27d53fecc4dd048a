//! Shapes the services' series share: label sets, latency histograms, and the series every
//! process exports about itself.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// One label whose value is one of a known few (a result, an outcome, a code).
pub type Label = [(&'static str, &'static str); 1];
/// Two such labels.
pub type Labels2 = [(&'static str, &'static str); 2];
/// Counters by one label.
pub type CounterBy = Family<Label, Counter>;
/// Latency histograms by one label.
pub type HistogramBy<L = Label> = Family<L, Histogram, fn() -> Histogram>;

/// Bucket bounds of latency histograms, in seconds: 1-2.5-5 steps from 50 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// A latency histogram in seconds ([`LATENCY_BUCKETS`]).
pub fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// [`latency`] histograms by label.
pub fn latency_by<L>() -> HistogramBy<L>
where
    L: Clone + std::hash::Hash + Eq,
{
    Family::new_with_constructor(latency)
}

/// Seconds since `started`, for a latency histogram.
pub fn seconds_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64()
}

/// Registers `switchboard_build_info{version,role}` (always 1) and
/// `switchboard_start_time_seconds` (when the process started, Unix time).
pub fn register_process(registry: &mut Registry, role: &'static str) {
    let info = Family::<Labels2, Gauge>::default();
    info.get_or_create(&[("version", env!("CARGO_PKG_VERSION")), ("role", role)])
        .set(1);
    registry.register(
        "switchboard_build_info",
        "The version and role of this process (always 1)",
        info,
    );
    let started = Gauge::<i64>::default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    started.set(i64::try_from(now).unwrap_or(i64::MAX));
    registry.register(
        "switchboard_start_time_seconds",
        "When this process started, in seconds since the Unix epoch",
        started,
    );
}
