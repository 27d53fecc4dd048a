//! Each process's admin listener: which series and readiness checks a role has, and where it
//! listens by default. The listener itself is [`switchboard_admin`].

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use prometheus_client::registry::Registry;
use switchboard_admin::{Admin, Readiness};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Default admin listener of `switchboard dev`.
pub const DEFAULT_DEV_ADMIN_LISTEN: &str = "127.0.0.1:9100";
/// Default admin listener of a gateway.
pub const DEFAULT_GATEWAY_ADMIN_LISTEN: &str = "0.0.0.0:9110";
/// Default admin listener of the auth service.
pub const DEFAULT_AUTH_ADMIN_LISTEN: &str = "0.0.0.0:9111";
/// Default admin listener of a registry.
pub const DEFAULT_REGISTRY_ADMIN_LISTEN: &str = "0.0.0.0:9112";
/// Default admin listener of a bus.
pub const DEFAULT_BUS_ADMIN_LISTEN: &str = "0.0.0.0:9113";

/// The series of the services a process runs; `role` names it in `switchboard_build_info`.
pub fn registry_for(role: &'static str, services: &[Service]) -> Registry {
    let mut registry = Registry::default();
    switchboard_admin::series::register_process(&mut registry, role);
    for service in services {
        match service {
            Service::Auth => switchboard_auth::metrics::METRICS.register(&mut registry),
            Service::Registry => {
                switchboard_session_registry::metrics::METRICS.register(&mut registry);
            }
            Service::Bus => switchboard_event_bus::metrics::METRICS.register(&mut registry),
            Service::Gateway => switchboard_gateway::metrics::METRICS.register(&mut registry),
        }
    }
    registry
}

/// A service whose series a process exports.
#[derive(Debug, Clone, Copy)]
pub enum Service {
    /// Login checks.
    Auth,
    /// The session registry.
    Registry,
    /// The event bus.
    Bus,
    /// A gateway.
    Gateway,
}

/// Binds `address` and serves `registry` and `readiness` there until `shutdown`.
///
/// # Errors
/// When the address cannot be bound.
pub async fn start(
    address: &str,
    registry: Registry,
    readiness: Arc<Readiness>,
    extra: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot bind the admin listener on {address}"))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "admin listening (/health/live, /health/ready, /metrics)");
    let admin = Admin {
        registry: Arc::new(registry),
        readiness,
    };
    tokio::spawn(async move {
        if let Err(error) = switchboard_admin::serve(listener, admin, extra, shutdown).await {
            tracing::error!(%error, "admin listener stopped");
        }
    });
    Ok(local)
}

/// Adds a gateway's readiness checks: its broker subscriber connected, and auth, registry and
/// bus answering their health checks.
pub fn gateway_checks(readiness: &Readiness, gateway: &Arc<switchboard_gateway::Gateway>) {
    let subscriber = Arc::clone(gateway);
    readiness.add_check("redis subscriber", move || {
        let ready = subscriber.subscriber_ready();
        async move { ready }
    });
    let services = gateway.services.clone();
    readiness.add_check("services", move || {
        let services = services.clone();
        async move {
            let unhealthy = services.unhealthy().await;
            if unhealthy.is_empty() {
                return Ok(());
            }
            Err(unhealthy
                .iter()
                .map(|(service, why)| format!("{service}: {why}"))
                .collect::<Vec<_>>()
                .join("; "))
        }
    });
}
