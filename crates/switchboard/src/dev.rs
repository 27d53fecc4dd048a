//! `switchboard dev`: every service in one process.
//!
//! Auth, registry and bus each serve gRPC on their own loopback port; the gateways reach them
//! (and each other's SessionControl) through real gRPC clients, exactly as separate processes
//! would. The broker is the in-memory one and the registry keeps its index in memory.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use switchboard_admin::Readiness;
use switchboard_broker::{Broker, MemoryBroker};
use switchboard_proto::internal::InternalSecret;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::Service;

/// Default `wss://` listener of `switchboard dev` with a certificate.
pub const DEFAULT_DEV_TLS_LISTEN: &str = "127.0.0.1:9011";

/// What to start.
#[derive(Debug, Clone)]
pub struct DevConfig {
    /// WebSocket address of the first gateway; further gateways take a free loopback port.
    pub listen: String,
    /// Auth service settings.
    pub auth: switchboard_auth::Config,
    /// Registry settings.
    pub registry: switchboard_session_registry::Config,
    /// Gateway settings; the service addresses are filled in by [`start`].
    pub gateway: switchboard_gateway::Config,
    /// Number of gateways (1 for `switchboard dev`).
    pub gateways: usize,
    /// The internal credential between the services (random by default).
    pub secret: InternalSecret,
    /// The process's admin listener (health, readiness, metrics of every service), if any.
    pub admin_listen: Option<String>,
    /// Serve the web console at `/console/` on the admin listener.
    pub console: bool,
    /// `wss://` address of the first gateway when `gateway.tls` is set.
    pub tls_listen: String,
    /// How long positioned streams live and how much they keep.
    pub streams: switchboard_broker::StreamConfig,
}

impl DevConfig {
    /// Creates a configuration with every default and the given admin password.
    pub fn new(listen: &str, admin_password: &str) -> Self {
        Self {
            listen: listen.to_owned(),
            auth: switchboard_auth::Config {
                admin_password: Some(admin_password.to_owned()),
                ..switchboard_auth::Config::default()
            },
            registry: switchboard_session_registry::Config::default(),
            gateway: switchboard_gateway::Config::default(),
            gateways: 1,
            secret: InternalSecret::random(),
            admin_listen: None,
            console: false,
            tls_listen: DEFAULT_DEV_TLS_LISTEN.to_owned(),
            streams: switchboard_broker::StreamConfig::default(),
        }
    }
}

/// The running services.
#[derive(Debug)]
pub struct Running {
    /// WebSocket address of each gateway.
    pub ws_addrs: Vec<SocketAddr>,
    /// gRPC address of the auth service.
    pub auth_addr: SocketAddr,
    /// gRPC address of the registry.
    pub registry_addr: SocketAddr,
    /// gRPC address of the bus.
    pub bus_addr: SocketAddr,
    /// SessionControl address of each gateway.
    pub control_addrs: Vec<SocketAddr>,
    /// The internal credential the services require.
    pub secret: InternalSecret,
    /// The admin listener, when enabled.
    pub admin_addr: Option<SocketAddr>,
    /// The process's readiness (what `/health/ready` answers).
    pub readiness: Arc<Readiness>,
    /// `wss://` address of each gateway, when a certificate is configured.
    pub wss_addrs: Vec<SocketAddr>,
    shutdown: CancellationToken,
    /// Stops the admin listener, after everything else.
    admin_shutdown: CancellationToken,
    tasks: JoinSet<()>,
    gateway_shutdowns: Vec<CancellationToken>,
}

impl Running {
    /// Returns the WebSocket URL of gateway `index` for the default service.
    pub fn ws_url(&self, index: usize) -> String {
        format!("ws://{}/api/ws", self.ws_addrs[index])
    }

    /// Drains gateway `index` as on SIGTERM (close 1001) while the rest keeps running.
    pub fn stop_gateway(&self, index: usize) {
        self.gateway_shutdowns[index].cancel();
    }

    /// Stops everything and waits for it.
    pub async fn stop(mut self) {
        self.readiness.start_draining();
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.admin_shutdown.cancel();
    }

    /// Waits until the first service ends (it should not before shutdown).
    pub async fn wait(&mut self) {
        self.tasks.join_next().await;
    }

    /// Returns the shutdown token.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

async fn bind(address: &str, what: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot bind {what} on {address}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

fn log_exit(what: &'static str, result: Result<(), tonic::transport::Error>) {
    if let Err(error) = result {
        tracing::error!(service = what, %error, "service stopped with an error");
    }
}

/// The first gateway takes the configured address, the others a free loopback port.
fn gateway_address(index: usize, configured: &str) -> &str {
    if index == 0 {
        configured
    } else {
        "127.0.0.1:0"
    }
}

/// Binds every listener, then starts the services.
///
/// # Errors
/// When a listener cannot be bound or an address is invalid.
pub async fn start(config: DevConfig) -> anyhow::Result<Running> {
    let authenticator = switchboard_auth::Authenticator::new(config.auth.clone())?;
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let memory_broker = MemoryBroker::new().with_streams(config.streams);
    let broker = Broker::Memory(memory_broker.clone());

    let (auth_listener, auth_addr) = bind("127.0.0.1:0", "auth").await?;
    let (registry_listener, registry_addr) = bind("127.0.0.1:0", "registry").await?;
    let (bus_listener, bus_addr) = bind("127.0.0.1:0", "event bus").await?;

    let token = shutdown.clone();
    let secret = config.secret.clone();
    tasks.spawn(async move {
        log_exit(
            "auth",
            switchboard_auth::serve(
                authenticator,
                auth_listener,
                secret,
                token.cancelled_owned(),
            )
            .await,
        );
    });
    let token = shutdown.clone();
    let registry_config = config.registry.clone();
    let secret = config.secret.clone();
    let lifecycle_events = memory_broker;
    tasks.spawn(async move {
        log_exit(
            "registry",
            switchboard_session_registry::serve(
                registry_config,
                switchboard_session_registry::Store::Memory(
                    switchboard_session_registry::MemoryStore::new().with_events(lifecycle_events),
                ),
                registry_listener,
                secret,
                token,
            )
            .await,
        );
    });
    let token = shutdown.clone();
    let bus_broker = broker.clone();
    let bus_policy = std::sync::Arc::clone(&config.gateway.policy);
    let secret = config.secret.clone();
    tasks.spawn(async move {
        log_exit(
            "bus",
            switchboard_event_bus::serve(
                bus_broker,
                bus_policy,
                bus_listener,
                secret,
                token.cancelled_owned(),
            )
            .await,
        );
    });

    let mut ws_addrs = Vec::new();
    let mut control_addrs = Vec::new();
    let mut gateway_shutdowns = Vec::new();
    let mut wss_addrs = Vec::new();
    let mut first_gateway = None;
    let readiness = Readiness::new();
    let mut registry = crate::admin::registry_for(
        "dev",
        &[
            Service::Auth,
            Service::Registry,
            Service::Bus,
            Service::Gateway,
        ],
    );
    let several = config.gateways > 1;
    for index in 0..config.gateways.max(1) {
        let address = |first| gateway_address(index, first);
        let (ws_listener, ws_addr) = bind(address(&config.listen), "WebSocket listener").await?;
        let (control_listener, control_addr) = bind("127.0.0.1:0", "session control").await?;
        let wss_listener = match &config.gateway.tls {
            Some(_) => {
                let (listener, wss_addr) =
                    bind(address(&config.tls_listen), "secure WebSocket listener").await?;
                wss_addrs.push(wss_addr);
                Some(listener)
            }
            None => None,
        };
        let mut gateway_config = config.gateway.clone();
        gateway_config.gateway_id = format!("gateway-{index}-{}", std::process::id());
        gateway_config.control_addr = control_addr.to_string();
        gateway_config.auth_url = format!("http://{auth_addr}");
        gateway_config.registry_url = format!("http://{registry_addr}");
        gateway_config.bus_url = format!("http://{bus_addr}");
        let gateway = switchboard_gateway::build(gateway_config, &broker, config.secret.clone())?;
        let token = shutdown.child_token();
        gateway_shutdowns.push(token.clone());
        crate::admin::gateway_checks(&readiness, &gateway);
        if first_gateway.is_none() {
            first_gateway = Some(Arc::clone(&gateway));
        }
        let gauges = Box::new(gateway.scrape_series());
        if several {
            // Each gateway's gauges, told apart by a `gateway` label.
            registry
                .sub_registry_with_label(("gateway".into(), index.to_string().into()))
                .register_collector(gauges);
        } else {
            registry.register_collector(gauges);
        }
        tasks.spawn(async move {
            log_exit(
                "gateway",
                switchboard_gateway::serve(
                    gateway,
                    switchboard_gateway::Listeners {
                        ws: ws_listener,
                        wss: wss_listener,
                        control: control_listener,
                    },
                    token,
                )
                .await,
            );
        });
        ws_addrs.push(ws_addr);
        control_addrs.push(control_addr);
    }
    let admin_shutdown = CancellationToken::new();
    let admin_addr = match &config.admin_listen {
        Some(address) => Some(
            crate::admin::start(
                address,
                registry,
                Arc::clone(&readiness),
                match (&first_gateway, config.console) {
                    (Some(gateway), true) => {
                        crate::console::router(ws_addrs[0].port(), Arc::clone(gateway))
                    }
                    _ => axum::Router::new(),
                },
                admin_shutdown.clone(),
            )
            .await?,
        ),
        None => None,
    };
    Ok(Running {
        ws_addrs,
        auth_addr,
        registry_addr,
        bus_addr,
        control_addrs,
        secret: config.secret,
        admin_addr,
        readiness,
        wss_addrs,
        shutdown,
        admin_shutdown,
        tasks,
        gateway_shutdowns,
    })
}
