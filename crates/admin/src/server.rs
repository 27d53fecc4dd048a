//! The admin router and its listener.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::readiness::Readiness;

/// What one process's admin listener serves.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Every series of the process.
    pub registry: Arc<Registry>,
    /// The readiness checks of the process.
    pub readiness: Arc<Readiness>,
}

/// The OpenMetrics text content type, which Prometheus asks for and understands.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn live() -> &'static str {
    "live\n"
}

async fn ready(State(admin): State<Admin>) -> Response {
    let failures = admin.readiness.failures().await;
    if failures.is_empty() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let body: String = failures
        .iter()
        .map(|(check, reason)| format!("{check}: {reason}\n"))
        .collect();
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

async fn metrics(State(admin): State<Admin>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &admin.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The admin routes over `admin`.
pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(admin)
}

/// Serves the admin routes, and `extra` beside them, on `listener` until `shutdown` is
/// cancelled.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    listener: TcpListener,
    admin: Admin,
    extra: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(admin).merge(extra))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
