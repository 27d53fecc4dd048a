//! What a process tells its operator besides metrics: logs, as text or one JSON object per
//! line, and the observer of its gRPC client calls.

use std::time::Duration;

use switchboard_proto::observe::ClientObserver;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields.message`, and the
    /// fields of the spans it happened in (`session_id`, `user`, `gateway`, `tid`).
    Json,
}

/// Starts logging to standard error in `format`, filtered by `RUST_LOG` (default `info`).
pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .flatten_event(false)
            .init(),
    }
}

/// Times the process's gRPC client calls into `switchboard_grpc_client_duration_seconds`.
#[derive(Debug)]
pub struct CallTimer;

impl ClientObserver for CallTimer {
    fn finished(&self, service: &str, method: &str, elapsed: Duration) {
        switchboard_gateway::metrics::METRICS.observe_grpc(service, method, elapsed);
    }
}

/// Installs the process-wide gRPC client observer.
pub fn observe_calls() {
    switchboard_proto::observe::set_client_observer(Box::new(CallTimer));
}
