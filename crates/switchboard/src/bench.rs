//! `switchboard bench`: a load generator for Switchboard's own protocol.
//!
//! It opens WebSocket clients against one or more gateway URLs, logs them in, subscribes
//! them, fires events at a target rate for a fixed time and reports publish and delivery
//! rates, lost and duplicated deliveries, end-to-end latency percentiles (the send time
//! travels in the event body), server CPU per delivery and server RSS per connection (read
//! from `/proc` of the PIDs given with `--server-pids`).
//!
//! Workloads: `fanout` (W1: every subscriber on one key), `targeted` (W2: one key per
//! subscriber, events to random keys), `idle` (W3: logged-in, subscribed, idle connections)
//! and `churn` (W4: connect + login + subscribe + close, as fast as it goes).
//!
//! # Layout
//! - [`client`]: one benchmark connection (login, subscribe, publish, read deliveries).
//! - [`procstat`]: CPU time and RSS of server processes.
//! - [`report`]: what a run measured, as text and as one JSON line.
//! - [`workloads`]: the four workloads and the rate sweep.

pub mod client;
pub mod procstat;
pub mod report;
pub mod workloads;

use std::time::Duration;

pub use report::Report;
pub use workloads::run;

/// Which workload to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// W1: every subscriber on `--topics` keys (1 by default), events to them in turn.
    Fanout,
    /// W2: one key per subscriber, events to random keys.
    Targeted,
    /// W3: logged-in, subscribed connections that stay idle; RSS per connection.
    Idle,
    /// W4: connect + login + subscribe + close in a loop; operations per second.
    Churn,
}

/// `switchboard bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Gateway WebSocket URLs, comma-separated; client i uses URL i mod n.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:9010/api/ws"
    )]
    pub url: Vec<String>,
    /// The workload.
    #[arg(long, value_enum, default_value = "fanout")]
    pub workload: Workload,
    /// User every connection logs in as.
    #[arg(long, default_value = "admin")]
    pub user: String,
    /// Its password.
    #[arg(
        long,
        env = "SWITCHBOARD_BENCH_PASSWORD",
        default_value = "admin",
        hide_env_values = true
    )]
    pub password: String,
    /// Subscribing connections.
    #[arg(long, default_value_t = 1000)]
    pub subs: usize,
    /// Positioned subscriptions (`"recover": true`, PROTOCOL.md §10): W5 is `targeted` with it.
    #[arg(long)]
    pub recover: bool,
    /// Distinct keys (event types) the subscribers spread over [fanout: 1, targeted: --subs].
    #[arg(long)]
    pub topics: Option<usize>,
    /// Publishing connections.
    #[arg(long, default_value_t = 1)]
    pub pubs: usize,
    /// Events per second in total.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Rates to sweep (fanout); stops at the first rate that does not keep up.
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<u64>,
    /// Seconds of publishing before the measured window.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds of the measured window.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Most seconds to wait for in-flight deliveries after the window.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Bytes of padding in each event body.
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// Connections opened at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Concurrent workers in the churn workload.
    #[arg(long, default_value_t = 16)]
    pub churn_workers: usize,
    /// Server PIDs to sample (utime+stime, VmRSS), comma-separated: gateways, services, Redis.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// Appends the report as one JSON line to this file.
    #[arg(long)]
    pub json_out: Option<std::path::PathBuf>,
}

impl BenchArgs {
    /// Returns options for a short run against `url` (tests, smoke runs).
    pub fn smoke(url: &str, password: &str) -> Self {
        Self {
            url: vec![url.to_owned()],
            workload: Workload::Fanout,
            user: "admin".into(),
            password: password.into(),
            subs: 20,
            recover: false,
            topics: None,
            pubs: 1,
            rate: 100,
            sweep: Vec::new(),
            warmup: 0.2,
            duration: 0.5,
            drain: 5.0,
            payload_bytes: 0,
            connect_concurrency: 20,
            churn_workers: 4,
            server_pids: Vec::new(),
            json_out: None,
        }
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup.max(0.0))
    }

    fn window(&self) -> Duration {
        Duration::from_secs_f64(self.duration.max(0.1))
    }

    fn drain(&self) -> Duration {
        Duration::from_secs_f64(self.drain.max(0.0))
    }
}
