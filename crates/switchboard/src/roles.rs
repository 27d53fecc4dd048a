//! One service per process: `switchboard auth|registry|bus|gateway`, as the scaled deployment
//! runs them. Each binds its listeners (its admin listener first), logs where, and serves until
//! `shutdown` is cancelled; its readiness checks go into the process's [`Readiness`].

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

use anyhow::Context;
use switchboard_broker::{Broker, RedisBroker};
use switchboard_session_registry::{RedisStore, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use switchboard_admin::Readiness;

use crate::admin::{self, Service};
use crate::settings::Settings;

/// Starts the process's admin listener with the series of `service`.
async fn start_admin(
    settings: &Settings,
    default: &str,
    role: &'static str,
    service: Service,
    readiness: &Arc<Readiness>,
    extra: Option<switchboard_admin::ScrapeSeries>,
    routes: axum::Router,
) -> anyhow::Result<()> {
    let mut registry = admin::registry_for(role, &[service]);
    if let Some(extra) = extra {
        registry.register_collector(Box::new(extra));
    }
    let address = settings
        .addresses
        .admin_listen
        .as_deref()
        .unwrap_or(default);
    // The admin listener outlives the role's drain: readiness answers 503 throughout it.
    admin::start(
        address,
        registry,
        Arc::clone(readiness),
        routes,
        CancellationToken::new(),
    )
    .await?;
    Ok(())
}

/// Default gRPC listener of the auth service.
pub const DEFAULT_AUTH_LISTEN: &str = "0.0.0.0:9101";
/// Default gRPC listener of the registry.
pub const DEFAULT_REGISTRY_LISTEN: &str = "0.0.0.0:9102";
/// Default gRPC listener of the bus.
pub const DEFAULT_BUS_LISTEN: &str = "0.0.0.0:9103";
/// Default WebSocket listener of a gateway.
pub const DEFAULT_GATEWAY_LISTEN: &str = "0.0.0.0:9010";
/// Default `wss://` listener of a gateway with a certificate.
pub const DEFAULT_GATEWAY_TLS_LISTEN: &str = "0.0.0.0:9011";

async fn bind(address: &str, what: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot bind {what} on {address}"))?;
    tracing::info!(address = %listener.local_addr()?, "{what} listening");
    Ok(listener)
}

/// Runs the auth service. Refuses to start without an admin password.
///
/// # Errors
/// On a missing password, a bind failure or a transport error.
pub async fn auth(
    settings: Settings,
    shutdown: CancellationToken,
    readiness: Arc<Readiness>,
) -> anyhow::Result<()> {
    let secret = settings.required_secret()?;
    let admin_password = settings.auth.admin_password.clone().context(
        "the auth service needs an admin password (--admin-password or SWITCHBOARD_ADMIN_PASSWORD)",
    )?;
    let authenticator =
        switchboard_auth::Authenticator::new(settings.auth_config(Some(admin_password)))?;
    start_admin(
        &settings,
        admin::DEFAULT_AUTH_ADMIN_LISTEN,
        "auth",
        Service::Auth,
        &readiness,
        None,
        axum::Router::new(),
    )
    .await?;
    let listen = settings
        .addresses
        .grpc_listen
        .as_deref()
        .unwrap_or(DEFAULT_AUTH_LISTEN);
    let listener = bind(listen, "auth gRPC").await?;
    switchboard_auth::serve(authenticator, listener, secret, shutdown.cancelled_owned()).await?;
    Ok(())
}

/// Runs a registry replica over Redis.
///
/// # Errors
/// On an invalid setting, a bind failure or a transport error.
pub async fn registry(
    settings: Settings,
    shutdown: CancellationToken,
    readiness: Arc<Readiness>,
) -> anyhow::Result<()> {
    let config = settings.registry_config();
    let secret = settings.required_secret()?;
    let store = RedisStore::connect_to(&settings.redis_target())
        .map_err(|error| anyhow::anyhow!("invalid redis_url or redis_cluster: {error:?}"))?
        .with_streams(settings.stream_config());
    let store = Store::Redis(Box::new(store));
    let pinged = store.clone();
    readiness.add_check("redis", move || {
        let store = pinged.clone();
        async move { store.ping().await.map_err(|error| format!("{error:?}")) }
    });
    start_admin(
        &settings,
        admin::DEFAULT_REGISTRY_ADMIN_LISTEN,
        "registry",
        Service::Registry,
        &readiness,
        None,
        axum::Router::new(),
    )
    .await?;
    let listen = settings
        .addresses
        .grpc_listen
        .as_deref()
        .unwrap_or(DEFAULT_REGISTRY_LISTEN);
    let listener = bind(listen, "registry gRPC").await?;
    switchboard_session_registry::serve(config, store, listener, secret, shutdown).await?;
    Ok(())
}

/// Runs a bus replica publishing into Redis.
///
/// # Errors
/// On an invalid setting, a bind failure or a transport error.
pub async fn bus(
    settings: Settings,
    shutdown: CancellationToken,
    readiness: Arc<Readiness>,
) -> anyhow::Result<()> {
    let secret = settings.required_secret()?;
    let broker = RedisBroker::connect_to(&settings.redis_target())
        .context("invalid redis_url or redis_cluster")?
        .with_streams(settings.stream_config());
    let broker = Broker::Redis(Box::new(broker));
    let pinged = broker.clone();
    readiness.add_check("redis", move || {
        let broker = pinged.clone();
        async move { broker.ping().await.map_err(|error| error.to_string()) }
    });
    start_admin(
        &settings,
        admin::DEFAULT_BUS_ADMIN_LISTEN,
        "bus",
        Service::Bus,
        &readiness,
        None,
        axum::Router::new(),
    )
    .await?;
    let listen = settings
        .addresses
        .grpc_listen
        .as_deref()
        .unwrap_or(DEFAULT_BUS_LISTEN);
    let listener = bind(listen, "bus gRPC").await?;
    switchboard_event_bus::serve(
        broker,
        settings.policy()?,
        listener,
        secret,
        shutdown.cancelled_owned(),
    )
    .await?;
    Ok(())
}

/// Finds the address other replicas can reach this host at: the local address of a route
/// towards `peer_url` (no packet is sent).
fn local_address_towards(peer_url: &str) -> Option<IpAddr> {
    let authority = peer_url.split("://").nth(1).unwrap_or(peer_url);
    let authority = authority.split('/').next()?;
    let target = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .ok()?
        .next()?;
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

fn advertised_control(settings: &Settings, bound: SocketAddr, registry_url: &str) -> String {
    if let Some(advertise) = &settings.addresses.control_advertise {
        return advertise.clone();
    }
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let ip = local_address_towards(registry_url).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    SocketAddr::new(ip, bound.port()).to_string()
}

/// Runs a gateway replica: WebSockets, SessionControl, Redis subscriber.
///
/// # Errors
/// On an invalid setting, a bind failure or a transport error.
pub async fn gateway(
    settings: Settings,
    shutdown: CancellationToken,
    readiness: Arc<Readiness>,
) -> anyhow::Result<()> {
    let secret = settings.required_secret()?;
    let mut config = settings.gateway_config()?;
    let broker = RedisBroker::connect_to(&settings.redis_target())
        .context("invalid redis_url or redis_cluster")?
        .with_streams(settings.stream_config());
    let ws_listen = settings
        .addresses
        .listen
        .as_deref()
        .unwrap_or(DEFAULT_GATEWAY_LISTEN);
    let control_listen = &settings.addresses.control_listen;
    let ws_listener = bind(ws_listen, "gateway WebSocket").await?;
    let control_listener = bind(control_listen, "gateway SessionControl").await?;
    let wss_listener = match &config.tls {
        Some(_) => {
            let address = settings
                .addresses
                .tls_listen
                .as_deref()
                .unwrap_or(DEFAULT_GATEWAY_TLS_LISTEN);
            let listener = bind(address, "gateway secure WebSocket").await?;
            println!(
                "switchboard gateway listening on wss://{}/api/ws",
                listener.local_addr()?
            );
            Some(listener)
        }
        None => None,
    };
    config.control_addr = advertised_control(
        &settings,
        control_listener.local_addr()?,
        &config.registry_url,
    );
    tracing::info!(gateway.id = %config.gateway_id, control = %config.control_addr, "gateway starting");
    println!(
        "switchboard gateway listening on ws://{}/api/ws",
        ws_listener.local_addr()?
    );
    let gateway = switchboard_gateway::build(config, &Broker::Redis(Box::new(broker)), secret)?;
    admin::gateway_checks(&readiness, &gateway);
    start_admin(
        &settings,
        admin::DEFAULT_GATEWAY_ADMIN_LISTEN,
        "gateway",
        Service::Gateway,
        &readiness,
        Some(gateway.scrape_series()),
        if settings.gateway.console {
            crate::console::router(ws_listener.local_addr()?.port(), Arc::clone(&gateway))
        } else {
            axum::Router::new()
        },
    )
    .await?;
    let listeners = switchboard_gateway::Listeners {
        ws: ws_listener,
        wss: wss_listener,
        control: control_listener,
    };
    switchboard_gateway::serve(gateway, listeners, shutdown).await?;
    Ok(())
}
