//! What a benchmark run measured.

use std::fmt;

use serde::Serialize;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Latency {
    /// Computes percentiles of `samples` (µs); sorts them.
    pub fn from_samples(samples: &mut [u64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]
        };
        Self {
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: samples[samples.len() - 1],
        }
    }
}

/// One run's results; fields a workload does not measure stay zero.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Workload name.
    pub workload: String,
    /// Subscribing (or idle, or churning) connections.
    pub connections: usize,
    /// Publishing connections.
    pub publishers: usize,
    /// Target events per second.
    pub target_rate: u64,
    /// Events published in the window, per second.
    pub published_per_sec: f64,
    /// Deliveries that arrived in the window, per second.
    pub deliveries_per_sec: f64,
    /// Deliveries of window events that should arrive.
    pub expected: u64,
    /// Distinct window deliveries that arrived.
    pub received: u64,
    /// `expected - received`.
    pub lost: u64,
    /// Deliveries that arrived twice or out of order.
    pub duplicates: u64,
    /// End-to-end latency of window deliveries.
    pub latency: Latency,
    /// Server CPU (utime+stime of `--server-pids`) during the window, seconds.
    pub server_cpu_seconds: f64,
    /// Server CPU per delivery (or per churn operation), microseconds.
    pub server_cpu_us_per_op: f64,
    /// Server RSS before connecting, KiB.
    pub server_rss_before_kib: u64,
    /// Server RSS once every connection was subscribed, KiB.
    pub server_rss_connected_kib: u64,
    /// `(connected - before) / connections`, KiB.
    pub server_rss_per_connection_kib: f64,
    /// Connections set up per second.
    pub connect_per_sec: f64,
    /// Churn operations (connect + login + subscribe + close) per second.
    pub churn_per_sec: f64,
    /// Error replies and failed connections.
    pub errors: u64,
    /// Whether delivery kept up: nothing lost and deliveries at ≥ 95% of the target.
    pub kept_up: bool,
}

fn micros(value: u64) -> String {
    if value >= 1_000_000 {
        format!("{:.2} s", value as f64 / 1e6)
    } else if value >= 1000 {
        format!("{:.1} ms", value as f64 / 1e3)
    } else {
        format!("{value} µs")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "workload    {} ({} connections, {} publishers)",
            self.workload, self.connections, self.publishers
        )?;
        if self.connect_per_sec > 0.0 {
            writeln!(f, "connect     {:.0}/s", self.connect_per_sec)?;
        }
        if self.target_rate > 0 {
            writeln!(
                f,
                "publish     {:.0} ev/s (target {})",
                self.published_per_sec, self.target_rate
            )?;
            writeln!(
                f,
                "deliveries  {:.0}/s; expected {}, received {}, lost {}, duplicated {}; kept up: {}",
                self.deliveries_per_sec,
                self.expected,
                self.received,
                self.lost,
                self.duplicates,
                self.kept_up
            )?;
            let l = &self.latency;
            writeln!(
                f,
                "latency     p50 {} p90 {} p99 {} p99.9 {} max {}",
                micros(l.p50_us),
                micros(l.p90_us),
                micros(l.p99_us),
                micros(l.p999_us),
                micros(l.max_us)
            )?;
        }
        if self.churn_per_sec > 0.0 {
            writeln!(
                f,
                "churn       {:.0} connect+login+subscribe+close/s",
                self.churn_per_sec
            )?;
        }
        if self.server_cpu_seconds > 0.0 {
            writeln!(
                f,
                "server cpu  {:.2} s in the window, {:.2} µs per {}",
                self.server_cpu_seconds,
                self.server_cpu_us_per_op,
                if self.churn_per_sec > 0.0 {
                    "operation"
                } else {
                    "delivery"
                }
            )?;
        }
        if self.server_rss_before_kib > 0 {
            writeln!(
                f,
                "server rss  {} KiB before, {} KiB connected, {:.1} KiB per connection",
                self.server_rss_before_kib,
                self.server_rss_connected_kib,
                self.server_rss_per_connection_kib
            )?;
        }
        write!(f, "errors      {}", self.errors)
    }
}
