//! The settings, one group per concern. Each default is the owning crate's constant, named
//! beside the setting; `--help` prints it, and the environment variable of every setting is
//! added by [`super::command_line`].

use std::path::PathBuf;

use humantime::Duration;
use switchboard_gateway::GelfTarget;
use switchboard_gateway::config as gateway;
use switchboard_protocol::limits;

/// Default Redis of the scaled deployment.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default SessionControl listener of a gateway.
pub const DEFAULT_CONTROL_LISTEN: &str = "0.0.0.0:9104";

/// Where each service listens, where it finds the others, and the secret between them.
#[derive(Clone, clap::Args)]
#[command(next_help_heading = "Addresses")]
pub struct Addresses {
    /// WebSocket listen address [defaults: gateway 0.0.0.0:9010, dev 127.0.0.1:9010].
    #[arg(long)]
    pub listen: Option<String>,
    /// `wss://` listen address [defaults: gateway 0.0.0.0:9011, dev 127.0.0.1:9011].
    #[arg(long)]
    pub tls_listen: Option<String>,
    /// gRPC listen address of auth, registry or bus [defaults: 0.0.0.0:9101, :9102, :9103].
    #[arg(long)]
    pub grpc_listen: Option<String>,
    /// Gateway SessionControl gRPC listen address.
    #[arg(long, default_value = DEFAULT_CONTROL_LISTEN)]
    pub control_listen: String,
    /// Address other replicas use to reach this gateway's SessionControl [default: the
    /// listen address, or this host's address towards the registry when listening on 0.0.0.0].
    #[arg(long)]
    pub control_advertise: Option<String>,
    /// Admin HTTP listener: GET /health/live, /health/ready, /metrics [defaults: gateway
    /// 0.0.0.0:9110, auth :9111, registry :9112, bus :9113, dev 127.0.0.1:9100].
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Auth service for gateways.
    #[arg(long, default_value = gateway::DEFAULT_AUTH_URL)]
    pub auth_url: String,
    /// Session registry for gateways.
    #[arg(long, default_value = gateway::DEFAULT_REGISTRY_URL)]
    pub registry_url: String,
    /// Event bus for gateways.
    #[arg(long, default_value = gateway::DEFAULT_BUS_URL)]
    pub bus_url: String,
    /// Redis of the registry, the bus and the gateways.
    #[arg(long, default_value = DEFAULT_REDIS_URL, hide_env_values = true)]
    pub redis_url: String,
    /// Redis Cluster seed nodes, comma-separated (`host:port` or `redis://host:port`); when
    /// set, the registry, the bus and the gateways use the cluster (sharded pub/sub) instead
    /// of `redis_url` [default: none].
    #[arg(long, hide_env_values = true)]
    pub redis_cluster: Option<String>,
    /// This gateway's identity in the registry [default: a fresh UUID].
    #[arg(long)]
    pub gateway_id: Option<String>,
    /// Shared secret every internal gRPC call carries; required by auth, registry, bus and
    /// gateway (at least 16 printable bytes) [dev default: random].
    #[arg(long, hide_env_values = true)]
    pub internal_secret: Option<String>,
}

/// Who may log in, and how failed logins are throttled.
#[derive(Clone, clap::Args)]
#[command(next_help_heading = "Auth")]
pub struct AuthSettings {
    /// Admin user name.
    #[arg(long, default_value = switchboard_auth::config::DEFAULT_ADMIN_USER)]
    pub admin_user: String,
    /// Admin password [dev default: admin, with a warning].
    #[arg(long, hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Users file (TOML: name, argon2id password_hash, roles), re-read when it changes
    /// [default: none].
    #[arg(long)]
    pub users_file: Option<PathBuf>,
    /// Shared secret of HS256 login tokens, at least 32 bytes [default: none].
    #[arg(long, hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// PEM public key of RS256 (RSA) or ES256 (EC P-256) login tokens [default: none].
    #[arg(long)]
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS file of RS256/ES256 public keys for login tokens [default: none].
    #[arg(long)]
    pub jwt_jwks: Option<PathBuf>,
    /// The `aud` login tokens must carry [default: none, `aud` not checked].
    #[arg(long)]
    pub jwt_audience: Option<String>,
    /// The `iss` login tokens must carry [default: none, `iss` not checked].
    #[arg(long)]
    pub jwt_issuer: Option<String>,
    /// Clock skew tolerated on a token's exp and nbf.
    #[arg(long, default_value_t = switchboard_auth::jwt::DEFAULT_LEEWAY.into())]
    pub jwt_leeway: Duration,
    /// Failed logins (attempts in flight included) per client address (IPv6: per /64) and
    /// window before `too_many_attempts`; 0 disables throttling.
    #[arg(long, default_value_t = switchboard_auth::throttle::DEFAULT_MAX_FAILURES)]
    pub login_max_failures: u32,
    /// Failed logins per account and window, from any address, before `too_many_attempts`;
    /// 0 disables the per-account limit.
    #[arg(long, default_value_t = switchboard_auth::throttle::DEFAULT_MAX_ACCOUNT_FAILURES)]
    pub login_max_account_failures: u32,
    /// The window of `login_max_failures`, from an address's first failure.
    #[arg(long, default_value_t = switchboard_auth::throttle::DEFAULT_WINDOW.into())]
    pub login_failure_window: Duration,
}

/// What a gateway accepts from a client, how long it waits, and where it sends logs.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Gateway")]
pub struct GatewaySettings {
    /// Policy file (TOML, `[roles.NAME]` tables) replacing the default policy of
    /// PROTOCOL.md §8; read by gateways and the bus [default: none].
    #[arg(long)]
    pub policy_file: Option<PathBuf>,
    /// PEM certificate chain of the `wss://` listener [default: none, no wss].
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the `wss://` listener [default: none].
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Take the client address from the last X-Forwarded-For entry of the handshake; only
    /// behind a proxy that sets it (clients could forge it otherwise).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_forwarded_for: bool,
    /// Serve the web console at /console/ on the admin listener (gateway and dev); it logs
    /// in over the WebSocket with the credentials typed into it.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub console: bool,
    /// Gateways send `send_event`s to the bus over gRPC; `false` publishes them into Redis
    /// from the gateway (same validation, policy and positions either way).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub publish_via_bus: bool,
    /// While clients' events keep coming, send a batch of them at most once per this
    /// interval (an event after a quiet spell goes at once); 0 sends each batch at once.
    #[arg(long, default_value_t = gateway::DEFAULT_PUBLISH_LINGER.into())]
    pub publish_linger: Duration,
    /// GELF server for `session log`: udp://host:port or tcp://host:port [default: none].
    #[arg(long)]
    pub gelf: Option<GelfTarget>,
    /// Largest inbound frame in bytes; a bigger one closes with 1009.
    #[arg(long, default_value_t = gateway::DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,
    /// Deepest JSON nesting of an inbound frame.
    #[arg(long, default_value_t = gateway::DEFAULT_MAX_JSON_DEPTH)]
    pub max_json_depth: usize,
    /// Subscriptions per session.
    #[arg(long, default_value_t = gateway::DEFAULT_MAX_SUBSCRIPTIONS)]
    pub max_subscriptions: usize,
    /// WebSocket connections one gateway accepts at once; more get HTTP 503.
    #[arg(long, default_value_t = gateway::DEFAULT_MAX_CONNECTIONS, value_parser = at_least_one)]
    pub max_connections: usize,
    /// Requests per second per connection (bursts of as many); more are answered
    /// `limit_exceeded`; 0 for no limit.
    #[arg(long, default_value_t = gateway::DEFAULT_MAX_FRAMES_PER_SECOND)]
    pub max_frames_per_second: u32,
    /// Frames queued to one connection before it is closed with 1008.
    #[arg(long, default_value_t = gateway::DEFAULT_OUTBOUND_QUEUE, value_parser = at_least_one)]
    pub outbound_queue: usize,
    /// Bytes the frames queued to one connection may weigh before it is closed with 1008.
    #[arg(long, default_value_t = gateway::DEFAULT_OUTBOUND_QUEUE_BYTES)]
    pub outbound_queue_bytes: usize,
    /// Longest event key field (`class`, `subclass`, `type`, `obj_id`, `service`) in bytes.
    #[arg(long, default_value_t = limits::DEFAULT_KEY_FIELD_BYTES)]
    pub max_key_field_bytes: usize,
    /// Largest subscription `body` in bytes of compact JSON.
    #[arg(long, default_value_t = limits::DEFAULT_SUBSCRIPTION_BODY_BYTES)]
    pub max_subscription_body_bytes: usize,
    /// Largest event `body` in bytes of compact JSON.
    #[arg(long, default_value_t = limits::DEFAULT_EVENT_BODY_BYTES)]
    pub max_event_body_bytes: usize,
    /// Largest login `meta` in bytes of compact JSON.
    #[arg(long, default_value_t = limits::DEFAULT_LOGIN_META_BYTES)]
    pub max_login_meta_bytes: usize,
    /// Largest `session log` request `data` in bytes of compact JSON.
    #[arg(long, default_value_t = limits::DEFAULT_LOG_RECORD_BYTES)]
    pub max_log_record_bytes: usize,
    /// Largest frame before login; a bigger one closes with 1009.
    #[arg(long, default_value_t = gateway::DEFAULT_PRELOGIN_FRAME_BYTES)]
    pub prelogin_frame_bytes: usize,
    /// Time from the upgrade within which a connection must log in, else 1008.
    #[arg(long, default_value_t = gateway::DEFAULT_LOGIN_TIMEOUT.into())]
    pub login_timeout: Duration,
    /// Connections from one client address (IPv6: one /64) waiting to log in at once; more
    /// get HTTP 429; 0 for no cap.
    #[arg(long, default_value_t = gateway::DEFAULT_MAX_PRELOGIN_PER_ADDRESS)]
    pub max_prelogin_per_address: usize,
    /// Window over which a stopping gateway closes its connections.
    #[arg(long, default_value_t = gateway::DEFAULT_DRAIN_WINDOW.into())]
    pub drain_window: Duration,
    /// Interval of WebSocket pings.
    #[arg(long, default_value_t = gateway::DEFAULT_PING_INTERVAL.into(), value_parser = above_zero)]
    pub ping_interval: Duration,
    /// Silence after which a connection is closed.
    #[arg(long, default_value_t = gateway::DEFAULT_IDLE_TIMEOUT.into())]
    pub idle_timeout: Duration,
    /// `session cmd` wait, and the extension each ack grants.
    #[arg(long, default_value_t = gateway::DEFAULT_CMD_TIMEOUT.into())]
    pub cmd_timeout: Duration,
    /// Longest `session cmd` wait in all.
    #[arg(long, default_value_t = gateway::DEFAULT_CMD_MAX_TIMEOUT.into())]
    pub cmd_max_timeout: Duration,
    /// Deadline of calls between services.
    #[arg(long, default_value_t = gateway::DEFAULT_RPC_TIMEOUT.into())]
    pub rpc_timeout: Duration,
    /// Shortest time between two writes to one connection; frames meanwhile share a write,
    /// e.g. "20ms"; 0 writes at once.
    #[arg(long, default_value_t = gateway::DEFAULT_WRITE_COALESCE.into())]
    pub write_coalesce: Duration,
    /// Interval of gateway heartbeats to the registry.
    #[arg(long, default_value_t = gateway::DEFAULT_HEARTBEAT_INTERVAL.into(), value_parser = above_zero)]
    pub heartbeat_interval: Duration,
}

/// Positioned streams (PROTOCOL.md §10): read by the bus (and gateways, which publish
/// directly without `publish_via_bus` and keep their subscriptions' streams alive).
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Streams")]
pub struct StreamSettings {
    /// Events a positioned stream keeps for recovery.
    #[arg(long, default_value_t = switchboard_broker::streams::DEFAULT_HISTORY_SIZE, value_parser = at_least_one)]
    pub history_size: usize,
    /// How long a stream outlives its last positioned subscription or event.
    #[arg(long, default_value_t = switchboard_broker::streams::DEFAULT_HISTORY_TTL.into(), value_parser = above_zero)]
    pub history_ttl: Duration,
    /// Most events a positioned subscribe recovers; more missed answers `recovered: false`.
    #[arg(long, default_value_t = gateway::DEFAULT_MAX_RECOVER)]
    pub max_recover: u64,
}

/// How the registry decides a gateway is gone, and how many sessions a user may hold.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Registry")]
pub struct RegistrySettings {
    /// Silence after which the registry reaps a gateway's sessions.
    #[arg(long, default_value_t = switchboard_session_registry::config::DEFAULT_GATEWAY_TIMEOUT.into())]
    pub gateway_timeout: Duration,
    /// Sessions one user may hold per service; more logins get `limit_exceeded`; 0 for no
    /// limit.
    #[arg(long, default_value_t = switchboard_session_registry::config::DEFAULT_MAX_SESSIONS_PER_USER)]
    pub max_sessions_per_user: usize,
}

/// The secret and the Redis URL (which may carry a password) are never printed.
impl std::fmt::Debug for Addresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Addresses")
            .field("listen", &self.listen)
            .field("grpc_listen", &self.grpc_listen)
            .field("control_listen", &self.control_listen)
            .field("auth_url", &self.auth_url)
            .field("registry_url", &self.registry_url)
            .field("bus_url", &self.bus_url)
            .finish_non_exhaustive()
    }
}

/// Passwords and token secrets are never printed.
impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("admin_user", &self.admin_user)
            .field("users_file", &self.users_file)
            .field("jwt_public_key", &self.jwt_public_key)
            .field("jwt_jwks", &self.jwt_jwks)
            .finish_non_exhaustive()
    }
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(value) => Ok(value),
        Err(error) => Err(error.to_string()),
    }
}

fn above_zero(text: &str) -> Result<Duration, String> {
    match text.parse::<Duration>() {
        Ok(duration) if duration.is_zero() => Err("must be above zero".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}
