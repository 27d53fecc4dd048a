//! Series read when Prometheus scrapes: the current size of live state (connections,
//! sessions, subscriptions), or a count another crate keeps, costs nothing between scrapes.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

type Read = Arc<dyn Fn() -> i64 + Send + Sync>;

/// A set of gauges and counters, each a name, a help text and a function read at scrape time.
#[derive(Default, Clone)]
pub struct ScrapeSeries {
    gauges: Vec<(&'static str, &'static str, Read)>,
    counters: Vec<(&'static str, &'static str, Read)>,
}

impl fmt::Debug for ScrapeSeries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = (self.gauges.iter().chain(&self.counters))
            .map(|(name, _, _)| *name)
            .collect();
        f.debug_struct("ScrapeSeries")
            .field("gauges", &names)
            .finish()
    }
}

impl ScrapeSeries {
    /// Adds the gauge `name` whose value is `read()` at each scrape.
    #[must_use]
    pub fn gauge(
        mut self,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> i64 + Send + Sync + 'static,
    ) -> Self {
        self.gauges.push((name, help, Arc::new(read)));
        self
    }

    /// Adds the counter `name` (exported as `name_total`) whose value is `read()` at each
    /// scrape; `read` must never go down.
    #[must_use]
    pub fn counter(
        mut self,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Self {
        let read: Read = Arc::new(move || i64::try_from(read()).unwrap_or(i64::MAX));
        self.counters.push((name, help, read));
        self
    }
}

impl Collector for ScrapeSeries {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        for (name, help, read) in &self.gauges {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(read()).encode(metric)?;
        }
        for (name, help, read) in &self.counters {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(read().unsigned_abs()).encode(metric)?;
        }
        Ok(())
    }
}
