//! Counters of what the gateway refused or cut off, and a Prometheus text endpoint for them.
//!
//! The counters are process-wide (one gateway per process in a deployment) and only grow.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use switchboard_protocol::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The gateway's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests answered `unauthorized` (the policy refused them).
    pub denied: AtomicU64,
    /// Logins answered `too_many_attempts`.
    pub throttled_logins: AtomicU64,
    /// Requests answered `limit_exceeded` (subscriptions, sessions per user, frame rate).
    pub limit_exceeded: AtomicU64,
    /// Of those, frames refused for going over the per-connection rate.
    pub rate_limited_frames: AtomicU64,
    /// Connections closed with 1008 because their outbound queue was full.
    pub slow_consumers: AtomicU64,
    /// Events dropped because delivery fell too far behind the broker.
    pub dropped_events: AtomicU64,
    /// Connections refused at the per-gateway connection limit.
    pub refused_connections: AtomicU64,
}

/// The counters of this process.
pub static METRICS: Metrics = Metrics {
    denied: AtomicU64::new(0),
    throttled_logins: AtomicU64::new(0),
    limit_exceeded: AtomicU64::new(0),
    rate_limited_frames: AtomicU64::new(0),
    slow_consumers: AtomicU64::new(0),
    dropped_events: AtomicU64::new(0),
    refused_connections: AtomicU64::new(0),
};

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// Counts an error answer by its code.
    pub fn count_error(&self, code: ErrorCode) {
        match code {
            ErrorCode::Unauthorized => bump(&self.denied),
            ErrorCode::TooManyAttempts => bump(&self.throttled_logins),
            ErrorCode::LimitExceeded => bump(&self.limit_exceeded),
            _ => {}
        }
    }

    /// Counts a frame refused for the rate limit (also a `limit_exceeded`).
    pub fn count_rate_limited(&self) {
        bump(&self.rate_limited_frames);
        bump(&self.limit_exceeded);
    }

    /// Counts a slow consumer cut off.
    pub fn count_slow_consumer(&self) {
        bump(&self.slow_consumers);
    }

    /// Counts events dropped because delivery fell behind the broker.
    pub fn count_dropped_events(&self, count: u64) {
        self.dropped_events.fetch_add(count, Ordering::Relaxed);
    }

    /// Counts a connection refused at the limit.
    pub fn count_refused_connection(&self) {
        bump(&self.refused_connections);
    }

    /// Renders the counters and `connections` (the current count) as Prometheus text.
    pub fn render(&self, connections: usize) -> String {
        let counters = [
            (
                "switchboard_denied_total",
                "Requests refused by the policy.",
                &self.denied,
            ),
            (
                "switchboard_throttled_logins_total",
                "Logins refused as too_many_attempts.",
                &self.throttled_logins,
            ),
            (
                "switchboard_limit_exceeded_total",
                "Requests refused as limit_exceeded.",
                &self.limit_exceeded,
            ),
            (
                "switchboard_rate_limited_frames_total",
                "Frames over the per-connection rate.",
                &self.rate_limited_frames,
            ),
            (
                "switchboard_slow_consumers_total",
                "Connections closed with 1008 for a full outbound queue.",
                &self.slow_consumers,
            ),
            (
                "switchboard_refused_connections_total",
                "Connections refused at the connection limit, or from an address with too many waiting to log in.",
                &self.refused_connections,
            ),
            (
                "switchboard_dropped_events_total",
                "Events dropped because delivery fell too far behind the broker.",
                &self.dropped_events,
            ),
        ];
        let mut text = String::new();
        for (name, help, counter) in counters {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                counter.load(Ordering::Relaxed)
            ));
        }
        text.push_str(&format!(
            "# HELP switchboard_connections Open WebSocket connections.\n# TYPE switchboard_connections gauge\nswitchboard_connections {connections}\n"
        ));
        text
    }
}

/// Scrapes answered at once.
const MAX_SCRAPES: usize = 16;
/// Largest request head the endpoint reads.
const MAX_REQUEST: usize = 4096;

/// Reads the open-connections gauge at scrape time.
pub type ConnectionCount = Arc<dyn Fn() -> usize + Send + Sync>;

/// Serves `GET /metrics` (Prometheus text format) on `listener` until `shutdown`; the
/// `switchboard_connections` gauge is what `connections` reads at each scrape.
pub async fn serve_metrics(
    connections: ConnectionCount,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let scrapes = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // A bounded number of scrapes at once; a connection past that is closed.
        let Ok(permit) = Arc::clone(&scrapes).try_acquire_owned() else {
            continue;
        };
        let connections = Arc::clone(&connections);
        tokio::spawn(async move {
            let scrape = answer(connections.as_ref(), stream);
            let _ = tokio::time::timeout(Duration::from_secs(5), scrape).await;
            drop(permit);
        });
    }
}

async fn answer(
    connections: &(dyn Fn() -> usize + Send + Sync),
    mut stream: tokio::net::TcpStream,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..read]);
    }
    let response = if head.starts_with(b"GET /metrics ") {
        let body = METRICS.render(connections());
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
