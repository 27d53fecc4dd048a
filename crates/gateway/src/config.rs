//! Gateway configuration.

use std::str::FromStr;
use std::sync::Arc;

use std::time::Duration;
use switchboard_protocol::ByteLimits;
use switchboard_protocol::policy::Policy;

use crate::tls::Tls;

/// Default largest inbound frame (PROTOCOL.md §1); a bigger one closes with 1009.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Default deepest JSON nesting of an inbound frame.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;
/// Default number of subscriptions per session.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 1024;
/// Default number of frames queued towards one connection before it is closed with 1008.
pub const DEFAULT_OUTBOUND_QUEUE: usize = 1024;
/// Default number of WebSocket connections one gateway accepts at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
/// Default number of inbound frames per second one connection may send (burst: as many).
pub const DEFAULT_MAX_FRAMES_PER_SECOND: u32 = 10_000;
/// Default interval of WebSocket pings.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
/// Default time without traffic after which a connection is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time a `session cmd` waits for its answer; each ack extends it by as much.
pub const DEFAULT_CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// Default longest a `session cmd` may wait in all.
pub const DEFAULT_CMD_MAX_TIMEOUT: Duration = Duration::from_secs(180);
/// Default deadline of a call to an internal service.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Default weight of the frames queued towards one connection, past which it is closed
/// with 1008.
pub const DEFAULT_OUTBOUND_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Default largest frame before login (a login request is far smaller).
pub const DEFAULT_PRELOGIN_FRAME_BYTES: usize = 16 * 1024;
/// Default time from the upgrade within which a connection must log in.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of connections from one client address that may wait to log in at once.
pub const DEFAULT_MAX_PRELOGIN_PER_ADDRESS: usize = 64;
/// Default window over which a draining gateway closes its connections.
pub const DEFAULT_DRAIN_WINDOW: Duration = Duration::from_secs(5);

/// Default auth service of a gateway.
pub const DEFAULT_AUTH_URL: &str = "http://127.0.0.1:9101";
/// Default session registry of a gateway.
pub const DEFAULT_REGISTRY_URL: &str = "http://127.0.0.1:9102";
/// Default event bus of a gateway.
pub const DEFAULT_BUS_URL: &str = "http://127.0.0.1:9103";
/// Default shortest time between two socket writes of one connection: none.
pub const DEFAULT_WRITE_COALESCE: Duration = Duration::ZERO;

/// Default interval at which a busy gateway sends its batches of clients' events: none, each
/// batch goes as soon as the one before is answered (a linger of 1 ms measured a fifth less
/// CPU per event in W2 for 1.6 ms more latency at the median; see BENCHMARKS.md).
pub const DEFAULT_PUBLISH_LINGER: Duration = Duration::ZERO;
/// Default most events a positioned subscribe recovers (PROTOCOL.md §10).
pub const DEFAULT_MAX_RECOVER: u64 = 300;

/// Default interval of heartbeats to the registry.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Default number of `session cmd` a connection may have waiting at once.
pub const DEFAULT_MAX_PENDING_CMDS: usize = 64;
/// Default time a socket write may take before the connection is dropped.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `session log` sends GELF messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GelfTarget {
    /// GELF over UDP to `host:port` (gzip, chunked).
    Udp(String),
    /// GELF over TCP to `host:port` (NUL-terminated JSON).
    Tcp(String),
}

impl FromStr for GelfTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(address) = text.strip_prefix("udp://") {
            Ok(Self::Udp(address.to_owned()))
        } else if let Some(address) = text.strip_prefix("tcp://") {
            Ok(Self::Tcp(address.to_owned()))
        } else {
            Err(format!(
                "GELF target {text:?} must be udp://host:port or tcp://host:port"
            ))
        }
    }
}

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// This gateway's identity in the registry.
    pub gateway_id: String,
    /// Address other replicas use to reach this gateway's SessionControl ("host:port").
    pub control_addr: String,
    /// gRPC address of the auth service ("http://host:port").
    pub auth_url: String,
    /// gRPC address of the session registry.
    pub registry_url: String,
    /// gRPC address of the event bus.
    pub bus_url: String,
    /// Largest inbound frame in bytes.
    pub max_frame_bytes: usize,
    /// Deepest JSON nesting of an inbound frame.
    pub max_json_depth: usize,
    /// Subscriptions per session.
    pub max_subscriptions: usize,
    /// Frames queued towards one connection before it is closed with 1008.
    pub outbound_queue: usize,
    /// Bytes the frames queued towards one connection may weigh before it is closed with
    /// 1008 (a single frame into an empty queue is always taken).
    pub outbound_queue_bytes: usize,
    /// The byte limits of key fields, bodies, login meta and log records (PROTOCOL.md §1).
    pub limits: ByteLimits,
    /// Largest inbound frame before login; a bigger one closes with 1009.
    pub prelogin_frame_bytes: usize,
    /// Time from the upgrade within which a connection must log in, else 1008.
    pub login_timeout: Duration,
    /// Connections from one client address (IPv6: one /64) that may wait to log in at
    /// once; more are answered HTTP 429.
    pub max_prelogin_per_address: usize,
    /// On shutdown, connections are closed (1001) spread evenly over this window, so their
    /// clients do not all log in again elsewhere in the same instant.
    pub drain_window: Duration,
    /// Interval of WebSocket pings.
    pub ping_interval: Duration,
    /// Time without traffic after which a connection is closed.
    pub idle_timeout: Duration,
    /// `session cmd` wait, extended by as much by each ack.
    pub cmd_timeout: Duration,
    /// Longest `session cmd` wait in all.
    pub cmd_max_timeout: Duration,
    /// Deadline of internal calls.
    pub rpc_timeout: Duration,
    /// Interval of heartbeats to the registry.
    pub heartbeat_interval: Duration,
    /// `session cmd` a connection may have waiting at once.
    pub max_pending_cmds: usize,
    /// Time a socket write may take before the connection is dropped.
    pub write_timeout: Duration,
    /// Where `session log` goes; `None` drops log messages.
    pub gelf: Option<GelfTarget>,
    /// Shortest time between two socket writes of one connection. A frame for a connection
    /// that has not been written to for this long goes out at once; frames for a busy one
    /// wait and share a write. Zero writes every batch at once; a few milliseconds trade up
    /// to that much latency for far fewer syscalls under fan-out.
    pub write_coalesce: Duration,
    /// Who may do what (PROTOCOL.md §8 by default).
    pub policy: Arc<Policy>,
    /// WebSocket connections accepted at once; more are refused with HTTP 503.
    pub max_connections: usize,
    /// Inbound frames per second per connection (a burst of as many is allowed); requests
    /// over it are answered `limit_exceeded`. 0 for no limit.
    pub max_frames_per_second: u32,
    /// Certificate of the `wss://` listener, when there is one.
    pub tls: Option<Tls>,
    /// Take the client's address (session `remote`, login throttling) from the last
    /// `X-Forwarded-For` entry of the handshake; only behind a proxy that sets it.
    pub trust_forwarded_for: bool,
    /// Send `send_event`s to the event bus over gRPC (the default) rather than publish them
    /// into the broker directly (with the same validation, policy and positions as the bus).
    pub publish_via_bus: bool,
    /// While clients' events keep coming, a gateway sends a batch of them at most once per
    /// this interval (an event after a quiet spell goes at once): fewer, larger batches cost
    /// the bus and Redis far less per event, for up to this much latency. Zero sends each
    /// batch as soon as the one before is answered.
    pub publish_linger: Duration,
    /// Most events a positioned subscribe recovers; more missed is `recovered: false`.
    pub max_recover: u64,
    /// How long a positioned stream outlives its last use: the gateway keeps the streams of
    /// its positioned subscriptions alive at a third of it.
    pub history_ttl: Duration,
}

/// Every default, a fresh gateway id, no SessionControl address yet (the embedder fills it
/// in once its listener is bound) and the services on their default loopback ports.
impl Default for Config {
    fn default() -> Self {
        Self {
            gateway_id: uuid::Uuid::new_v4().to_string(),
            control_addr: String::new(),
            auth_url: DEFAULT_AUTH_URL.to_owned(),
            registry_url: DEFAULT_REGISTRY_URL.to_owned(),
            bus_url: DEFAULT_BUS_URL.to_owned(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            outbound_queue: DEFAULT_OUTBOUND_QUEUE,
            outbound_queue_bytes: DEFAULT_OUTBOUND_QUEUE_BYTES,
            limits: ByteLimits::default(),
            prelogin_frame_bytes: DEFAULT_PRELOGIN_FRAME_BYTES,
            login_timeout: DEFAULT_LOGIN_TIMEOUT,
            max_prelogin_per_address: DEFAULT_MAX_PRELOGIN_PER_ADDRESS,
            drain_window: DEFAULT_DRAIN_WINDOW,
            ping_interval: DEFAULT_PING_INTERVAL,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            cmd_timeout: DEFAULT_CMD_TIMEOUT,
            cmd_max_timeout: DEFAULT_CMD_MAX_TIMEOUT,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            max_pending_cmds: DEFAULT_MAX_PENDING_CMDS,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            gelf: None,
            write_coalesce: DEFAULT_WRITE_COALESCE,
            policy: Arc::new(Policy::default()),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_frames_per_second: DEFAULT_MAX_FRAMES_PER_SECOND,
            tls: None,
            trust_forwarded_for: false,
            publish_via_bus: true,
            publish_linger: DEFAULT_PUBLISH_LINGER,
            max_recover: DEFAULT_MAX_RECOVER,
            history_ttl: switchboard_broker::streams::DEFAULT_HISTORY_TTL,
        }
    }
}
