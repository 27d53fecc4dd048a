//! The gateway's series (`docs/OPERATIONS.md`, "Metrics", lists each with its meaning).
//!
//! Counters and histograms are process-wide statics (one gateway per process in a
//! deployment; `dev` runs its gateways in one process and they add up): the hot path bumps an
//! atomic and follows no pointer. Gauges over live state (connections, sessions,
//! subscriptions, Redis channels) are read from the hub at scrape time, see
//! [`crate::Gateway::scrape_series`].

use std::sync::LazyLock;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use switchboard_admin::series::{self, CounterBy, HistogramBy, Label};
use switchboard_protocol::ErrorCode;

/// `service` and `method` of a gRPC call.
pub type GrpcLabels = [(&'static str, String); 2];

/// The gateway's counters and histograms.
#[derive(Debug)]
pub struct Metrics {
    /// Client frames read (requests, responses, acks; not pings).
    pub frames_received: Counter,
    /// Frames written to clients (responses, events, server requests, close frames).
    pub frames_sent: Counter,
    /// Client events (`send_event`) handed to the bus.
    pub events_submitted: Counter,
    /// Events queued to a connection (one per subscriber).
    pub events_delivered: Counter,
    /// Events dropped because delivery fell too far behind the broker.
    pub events_dropped: Counter,
    /// Connections that ended, by the close code the server sent (`client` when the client
    /// closed first, `lost` when the socket failed).
    pub disconnects: CounterBy,
    /// Error answers by protocol code.
    pub refusals: CounterBy,
    /// Logins by result (`ok` or the error code).
    pub logins: CounterBy,
    /// Connections closed with 1008 because their outbound queue was full.
    pub slow_consumers: Counter,
    /// Connections refused at the connection limit or the per-address waiting limit.
    pub refused_connections: Counter,
    /// Frames over the per-connection rate.
    pub rate_limited_frames: Counter,
    /// Heartbeats to the registry by outcome (`ok`, `mismatch`, `failed`).
    pub heartbeats: CounterBy,
    /// How long a command took from its frame to its answer (or to its hand-off, for
    /// `send_event` and `session cmd`), by command.
    pub command_duration: HistogramBy,
    /// gRPC calls to the other services, by service and method.
    pub grpc_client_duration: HistogramBy<GrpcLabels>,
    /// Logins (credentials checked, session registered).
    pub login_duration: Histogram,
    /// From an event's publication at the bus to its delivery here (clocks of both hosts).
    pub delivery_lag: Histogram,
}

/// The gateway series of this process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    frames_received: Counter::default(),
    frames_sent: Counter::default(),
    events_submitted: Counter::default(),
    events_delivered: Counter::default(),
    events_dropped: Counter::default(),
    disconnects: CounterBy::default(),
    refusals: CounterBy::default(),
    logins: CounterBy::default(),
    slow_consumers: Counter::default(),
    refused_connections: Counter::default(),
    rate_limited_frames: Counter::default(),
    heartbeats: CounterBy::default(),
    command_duration: series::latency_by(),
    grpc_client_duration: series::latency_by(),
    login_duration: series::latency(),
    delivery_lag: series::latency(),
});

/// The `command` label of a core command (`other` for anything else).
pub fn command_label(subclass: &str, cmd: &str) -> &'static str {
    match (subclass, cmd) {
        ("user", "login") => "user/login",
        ("user", "list") => "user/list",
        ("user", "get") => "user/get",
        ("user", "send_event") => "user/send_event",
        ("session", "stop") => "session/stop",
        ("session", "send_event") => "session/send_event",
        ("session", "cmd") => "session/cmd",
        ("session", "log") => "session/log",
        ("session", "ping") => "session/ping",
        ("core", "ping") => "core/ping",
        ("event", "subscribe") => "event/subscribe",
        ("event", "unsubscribe") => "event/unsubscribe",
        ("event", "get_subscriptions") => "event/get_subscriptions",
        ("event", "send_event") => "event/send_event",
        ("event", "send") => "event/send",
        _ => "other",
    }
}

fn code_label(code: ErrorCode) -> Label {
    [("code", code.as_str())]
}

impl Metrics {
    /// Counts an error answer by its code.
    pub fn count_error(&self, code: ErrorCode) {
        self.refusals.get_or_create(&code_label(code)).inc();
    }

    /// Counts a frame refused for the rate limit (also a `limit_exceeded` refusal).
    pub fn count_rate_limited(&self) {
        self.rate_limited_frames.inc();
        self.count_error(ErrorCode::LimitExceeded);
    }

    /// Counts a slow consumer cut off.
    pub fn count_slow_consumer(&self) {
        self.slow_consumers.inc();
    }

    /// Counts events dropped because delivery fell behind the broker.
    pub fn count_dropped_events(&self, count: u64) {
        self.events_dropped.inc_by(count);
    }

    /// Counts a connection refused at a limit.
    pub fn count_refused_connection(&self) {
        self.refused_connections.inc();
    }

    /// Counts a connection's end: the close code sent, `client` or `lost`.
    pub fn count_disconnect(&self, code: &'static str) {
        self.disconnects.get_or_create(&[("code", code)]).inc();
    }

    /// Counts a login's outcome and how long it took.
    pub fn count_login(&self, started: Instant, result: Result<(), ErrorCode>) {
        let result = result.err().map_or("ok", ErrorCode::as_str);
        self.logins.get_or_create(&[("result", result)]).inc();
        self.login_duration.observe(series::seconds_since(started));
    }

    /// Records a gRPC call's duration.
    pub fn observe_grpc(&self, service: &str, method: &str, elapsed: std::time::Duration) {
        self.grpc_client_duration
            .get_or_create(&[
                ("service", service.to_owned()),
                ("method", method.to_owned()),
            ])
            .observe(elapsed.as_secs_f64());
    }

    /// Registers the gateway series in `registry`.
    pub fn register(&'static self, registry: &mut Registry) {
        let counters = [
            (
                "switchboard_frames_received",
                "Client frames read",
                &self.frames_received,
            ),
            (
                "switchboard_frames_sent",
                "Frames written to clients",
                &self.frames_sent,
            ),
            (
                "switchboard_events_submitted",
                "Client events handed to the bus",
                &self.events_submitted,
            ),
            (
                "switchboard_events_delivered",
                "Events queued to subscribers' connections",
                &self.events_delivered,
            ),
            (
                "switchboard_events_dropped",
                "Events dropped because delivery fell too far behind the broker",
                &self.events_dropped,
            ),
            (
                "switchboard_slow_consumers",
                "Connections closed with 1008 for a full outbound queue",
                &self.slow_consumers,
            ),
            (
                "switchboard_refused_connections",
                "Connections refused at the connection limit or the per-address login limit",
                &self.refused_connections,
            ),
            (
                "switchboard_rate_limited_frames",
                "Frames over the per-connection rate",
                &self.rate_limited_frames,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        let by_label = [
            (
                "switchboard_disconnects",
                "Connections ended, by the close code sent (client: the client closed first; lost: the socket failed)",
                &self.disconnects,
            ),
            (
                "switchboard_refusals",
                "Error answers, by protocol code",
                &self.refusals,
            ),
            (
                "switchboard_logins",
                "Logins, by result (ok or the error code)",
                &self.logins,
            ),
            (
                "switchboard_heartbeats",
                "Heartbeats to the registry, by outcome (ok, mismatch, failed)",
                &self.heartbeats,
            ),
        ];
        for (name, help, family) in by_label {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "switchboard_command_duration_seconds",
            "Client commands from frame to answer (to hand-off for send_event and session cmd), by command",
            self.command_duration.clone(),
        );
        registry.register(
            "switchboard_grpc_client_duration_seconds",
            "Calls to the internal services, by service and method",
            self.grpc_client_duration.clone(),
        );
        registry.register(
            "switchboard_login_duration_seconds",
            "Logins, from the request to the answer",
            self.login_duration.clone(),
        );
        registry.register(
            "switchboard_delivery_lag_seconds",
            "From an event's publication at the bus to its delivery at this gateway",
            self.delivery_lag.clone(),
        );
    }
}
