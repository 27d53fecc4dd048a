//! The admin HTTP listener every Switchboard process serves, and what it reports.
//!
//! - `GET /health/live`: 200 while the process answers at all.
//! - `GET /health/ready`: 200 when every readiness check of the process passes and it is not
//!   draining; 503 otherwise, with the failing checks in the body.
//! - `GET /metrics`: the process's Prometheus registry, in the OpenMetrics text format.
//!
//! The services own their metrics and checks; this crate only holds them and serves them.
//! It calls nothing else.
//!
//! # Layout
//! - [`readiness`]: named asynchronous checks and the draining flag.
//! - [`series`]: label sets, latency histograms, the process's own series.
//! - [`scrape`]: series whose value is read when Prometheus scrapes (gauges over live state).
//! - [`server`]: the axum router and [`serve`].

pub mod readiness;
pub mod scrape;
pub mod series;
pub mod server;

pub use prometheus_client;
pub use readiness::{CheckResult, Readiness};
pub use scrape::ScrapeSeries;
pub use server::{Admin, serve};
