//! The gateway's entry point: the WebSocket accept loop, the SessionControl server, the
//! registry heartbeat and the drain on shutdown.

use std::sync::Arc;
use std::time::Duration;

use switchboard_broker::Broker;
use switchboard_proto::internal::InternalSecret;
use switchboard_proto::v1::session_control_server::SessionControlServer;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clients::{AddressError, Services};
use crate::config::Config;
use crate::connection;
use crate::control::GrpcSessionControl;
use crate::gateway::{Gateway, start_unregistrations};
use crate::gelf::GelfSender;
use crate::hub::Hub;
use crate::metrics::METRICS;
use crate::outbound::CLOSE_GOING_AWAY;
use crate::publisher::{PublishRoute, Publisher};

/// Connections over the limit being answered HTTP 503 at once.
const MAX_REFUSALS: usize = 64;
/// Fewest connections a draining gateway closes per second, whatever its `drain_window`.
const DRAIN_MIN_RATE: u32 = 50;
/// How long connections get to close after the last paced close.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the gateway's shared context (hub subscribed to `broker`, service clients carrying
/// `secret`, GELF). The SessionControl server requires the same secret.
///
/// # Errors
/// [`AddressError`] when a service address is not a valid URI.
pub fn build(
    config: Config,
    broker: &Broker,
    secret: InternalSecret,
) -> Result<Arc<Gateway>, AddressError> {
    let services = Services::new(
        &config.auth_url,
        &config.registry_url,
        &config.bus_url,
        config.rpc_timeout,
        &secret,
    )?;
    let hub = Hub::new(broker);
    hub.routes.set_history(Arc::new(services.clone()));
    Ok(Arc::new(Gateway {
        hub,
        unregistrations: start_unregistrations(services.clone(), config.gateway_id.clone()),
        prelogin: Arc::default(),
        publisher: Publisher::start(
            if config.publish_via_bus {
                PublishRoute::Bus(Box::new(services.clone()))
            } else {
                PublishRoute::Broker {
                    broker: broker.clone(),
                    policy: Arc::clone(&config.policy),
                    deadline: config.rpc_timeout,
                }
            },
            config.publish_linger,
        ),
        services,
        gelf: GelfSender::start(config.gelf.clone()),
        started: std::time::Instant::now(),
        config,
        secret,
    }))
}

/// The sockets a gateway serves.
#[derive(Debug)]
pub struct Listeners {
    /// `ws://` clients.
    pub ws: TcpListener,
    /// `wss://` clients, with the certificate of [`Config::tls`].
    pub wss: Option<TcpListener>,
    /// SessionControl gRPC.
    pub control: TcpListener,
}

async fn accept_optional(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves WebSocket clients on the `ws` (and `wss`) listeners and SessionControl on
/// `control` until `shutdown` is cancelled, then drains: stops accepting, closes every
/// socket with 1001 (each session released first), spread evenly over `drain_window` so their
/// clients do not all log in again elsewhere in the same instant, and returns once they are
/// closed (at most `drain_window` + 5 s).
///
/// # Errors
/// Returns the SessionControl server's transport error.
pub async fn serve(
    gateway: Arc<Gateway>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let Listeners {
        ws: ws_listener,
        wss: wss_listener,
        control: control_listener,
    } = listeners;
    let tls = gateway.config.tls.as_ref().map(crate::tls::Tls::acceptor);
    let wss_listener = wss_listener.filter(|_| tls.is_some());
    let control = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(gateway.secret.server_layer())
            .layer(switchboard_proto::observe::ServerTraceLayer)
            // grpc.health.v1: SERVING while the server runs (behind the secret like the rest).
            .add_service(tonic_health::server::health_reporter().1)
            .add_service(
                SessionControlServer::new(GrpcSessionControl::new(Arc::clone(&gateway)))
                    .max_decoding_message_size(switchboard_proto::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(switchboard_proto::MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(control_listener)
                    .with_nodelay(Some(true)),
                shutdown.clone().cancelled_owned(),
            ),
    );
    // Heartbeats go on while connections drain (the registry must not reap them meanwhile);
    // the loop is aborted once the drain is over.
    let heartbeat = tokio::spawn(crate::liveness::heartbeat_loop(Arc::clone(&gateway)));
    let watchdog = tokio::spawn(write_watchdog(Arc::clone(&gateway), shutdown.clone()));
    let streams = tokio::spawn(keep_streams_alive(Arc::clone(&gateway)));
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(gateway.config.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    loop {
        let (accepted, tls) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = ws_listener.accept() => (accepted, None),
            accepted = accept_optional(wss_listener.as_ref()) => (accepted, tls.clone()),
        };
        match accepted {
            Ok((stream, peer)) => match Arc::clone(&slots).try_acquire_owned() {
                Ok(slot) => {
                    let gateway = Arc::clone(&gateway);
                    let shutdown = shutdown.clone();
                    tracker.spawn(async move {
                        connection::handle(gateway, stream, peer, tls, shutdown).await;
                        drop(slot);
                    });
                }
                Err(_) => {
                    METRICS.count_refused_connection();
                    // A `ws://` client is told why (HTTP 503), by a bounded number of tasks;
                    // a `wss://` one, or one past that bound, is just closed.
                    if tls.is_none()
                        && let Ok(permit) = Arc::clone(&refusals).try_acquire_owned()
                    {
                        tracker.spawn(async move {
                            connection::refuse(stream, peer).await;
                            drop(permit);
                        });
                    }
                }
            },
            Err(error) => {
                // EMFILE and friends return at once: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(ws_listener);
    drop(wss_listener);
    close_paced(&gateway).await;
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections did not drain in time");
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, gateway.flush_unregistrations())
        .await
        .is_err()
    {
        tracing::warn!("sessions were not unregistered in time");
    }
    heartbeat.abort();
    watchdog.abort();
    streams.abort();
    match control.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// Closes every connection with 1001, one after another, evenly over `drain_window` but at
/// least [`DRAIN_MIN_RATE`] a second (a few connections need no window); then once more any
/// that opened meanwhile.
async fn close_paced(gateway: &Gateway) {
    let connections = gateway.hub.all_connections();
    let count = connections.len().max(1) as u32;
    let step = (gateway.config.drain_window / count).min(Duration::from_secs(1) / DRAIN_MIN_RATE);
    tracing::info!(connections = connections.len(), ?step, "draining");
    let started = tokio::time::Instant::now();
    for (index, connection) in connections.iter().enumerate() {
        tokio::time::sleep_until(started + step * index as u32).await;
        connection.close(CLOSE_GOING_AWAY, "gateway shutting down");
    }
    for connection in gateway.hub.all_connections() {
        connection.close(CLOSE_GOING_AWAY, "gateway shutting down");
    }
}

/// Kills connections whose socket write has stalled past `write_timeout` (a client that
/// stopped reading), so no writer waits forever and no per-write timer is needed.
/// Keeps the streams of this gateway's positioned subscriptions alive: they expire
/// `history_ttl` after their last use, so each is opened again every third of it.
async fn keep_streams_alive(gateway: Arc<Gateway>) {
    let period = (gateway.config.history_ttl / 3).max(Duration::from_secs(1));
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        interval.tick().await;
        let channels = gateway.hub.routes.positioned_channels();
        for chunk in channels.chunks(KEEP_ALIVE_BATCH) {
            if let Err(error) = gateway.services.open_streams(chunk.to_vec()).await {
                tracing::warn!(%error, "keeping positioned streams alive failed");
                break;
            }
        }
    }
}

/// Channels per `OpenStreams` call of [`keep_streams_alive`] (the bus takes at most 1000).
const KEEP_ALIVE_BATCH: usize = 500;

async fn write_watchdog(gateway: Arc<Gateway>, shutdown: CancellationToken) {
    let limit = gateway.config.write_timeout;
    let period = (limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut interval = tokio::time::interval(period);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        gateway.hub.kill_stalled_writers(limit);
    }
}
