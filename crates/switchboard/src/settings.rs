//! Settings: a flag, a `SWITCHBOARD_<NAME>` environment variable and a key of the TOML file
//! given with `--config`, in that order of precedence, then the default.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use switchboard_gateway::GelfTarget;
use switchboard_proto::internal::InternalSecret;
use switchboard_protocol::policy::Policy;

/// Default WebSocket listener of `switchboard dev`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9010";
/// Password of the admin in `switchboard dev` when none is configured.
pub const DEV_ADMIN_PASSWORD: &str = "admin";

/// Every setting of every role; unset ones fall back to the file, then the default. A role
/// ignores the settings it does not use.
#[derive(Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// WebSocket listen address [default: 127.0.0.1:9010].
    #[arg(long, env = "SWITCHBOARD_LISTEN")]
    pub listen: Option<String>,
    /// Admin user name [default: admin].
    #[arg(long, env = "SWITCHBOARD_ADMIN_USER")]
    pub admin_user: Option<String>,
    /// Admin password [dev default: admin, with a warning].
    #[arg(long, env = "SWITCHBOARD_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Shared secret every internal gRPC call carries; required by auth, registry, bus and
    /// gateway (at least 16 printable bytes) [dev default: random].
    #[arg(long, env = "SWITCHBOARD_INTERNAL_SECRET", hide_env_values = true)]
    pub internal_secret: Option<String>,
    /// Users file (TOML: name, argon2id password_hash, roles), re-read when it changes
    /// [default: none].
    #[arg(long, env = "SWITCHBOARD_USERS_FILE")]
    pub users_file: Option<PathBuf>,
    /// Shared secret of HS256 login tokens, at least 32 bytes [default: none].
    #[arg(long, env = "SWITCHBOARD_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// PEM public key of RS256 (RSA) or ES256 (EC P-256) login tokens [default: none].
    #[arg(long, env = "SWITCHBOARD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS file of RS256/ES256 public keys for login tokens [default: none].
    #[arg(long, env = "SWITCHBOARD_JWT_JWKS")]
    pub jwt_jwks: Option<PathBuf>,
    /// The `aud` login tokens must carry [default: none, `aud` not checked].
    #[arg(long, env = "SWITCHBOARD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The `iss` login tokens must carry [default: none, `iss` not checked].
    #[arg(long, env = "SWITCHBOARD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Clock skew tolerated on a token's exp and nbf [default: 30s].
    #[arg(long, env = "SWITCHBOARD_JWT_LEEWAY")]
    pub jwt_leeway: Option<String>,
    /// Failed logins (attempts in flight included) per client address (IPv6: per /64) and
    /// window before `too_many_attempts`; 0 disables throttling [default: 10].
    #[arg(long, env = "SWITCHBOARD_LOGIN_MAX_FAILURES")]
    pub login_max_failures: Option<u32>,
    /// Failed logins per account and window, from any address, before `too_many_attempts`;
    /// 0 disables the per-account limit [default: 50].
    #[arg(long, env = "SWITCHBOARD_LOGIN_MAX_ACCOUNT_FAILURES")]
    pub login_max_account_failures: Option<u32>,
    /// The window of `login_max_failures`, from an address's first failure [default: 60s].
    #[arg(long, env = "SWITCHBOARD_LOGIN_FAILURE_WINDOW")]
    pub login_failure_window: Option<String>,
    /// Policy file (TOML, `[roles.NAME]` tables) replacing the default policy of
    /// PROTOCOL.md §8; read by gateways and the bus [default: none].
    #[arg(long, env = "SWITCHBOARD_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,
    /// PEM certificate chain of the `wss://` listener [default: none, no wss].
    #[arg(long, env = "SWITCHBOARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the `wss://` listener [default: none].
    #[arg(long, env = "SWITCHBOARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// `wss://` listen address [defaults: 0.0.0.0:9011; dev 127.0.0.1:9011].
    #[arg(long, env = "SWITCHBOARD_TLS_LISTEN")]
    pub tls_listen: Option<String>,
    /// Take the client address from the last X-Forwarded-For entry of the handshake; only
    /// behind a proxy that sets it (clients could forge it otherwise) [default: false].
    #[arg(long, env = "SWITCHBOARD_TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: Option<bool>,
    /// Gateways send `send_event`s to the bus over gRPC instead of publishing them into
    /// Redis themselves (same validation and policy either way) [default: false].
    #[arg(long, env = "SWITCHBOARD_PUBLISH_VIA_BUS")]
    pub publish_via_bus: Option<bool>,
    /// GELF server for `session log`: udp://host:port or tcp://host:port [default: none].
    #[arg(long, env = "SWITCHBOARD_GELF")]
    pub gelf: Option<String>,
    /// Largest inbound frame in bytes; a bigger one closes with 1009 [default: 1048576].
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Deepest JSON nesting of an inbound frame [default: 64].
    #[arg(long, env = "SWITCHBOARD_MAX_JSON_DEPTH")]
    pub max_json_depth: Option<usize>,
    /// Subscriptions per session [default: 1024].
    #[arg(long, env = "SWITCHBOARD_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<usize>,
    /// WebSocket connections one gateway accepts at once; more get HTTP 503 [default: 50000].
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Requests per second per connection (bursts of as many); more are answered
    /// `limit_exceeded`; 0 for no limit [default: 10000].
    #[arg(long, env = "SWITCHBOARD_MAX_FRAMES_PER_SECOND")]
    pub max_frames_per_second: Option<u32>,
    /// Sessions one user may hold per service; more logins get `limit_exceeded`; 0 for no
    /// limit (enforced by the registry) [default: 1000].
    #[arg(long, env = "SWITCHBOARD_MAX_SESSIONS_PER_USER")]
    pub max_sessions_per_user: Option<usize>,
    /// Address of the gateway's Prometheus endpoint, GET /metrics [default: none].
    #[arg(long, env = "SWITCHBOARD_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Frames queued to one connection before it is closed with 1008 [default: 1024].
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_QUEUE")]
    pub outbound_queue: Option<usize>,
    /// Bytes the frames queued to one connection may weigh before it is closed with 1008
    /// [default: 4194304].
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_QUEUE_BYTES")]
    pub outbound_queue_bytes: Option<usize>,
    /// Longest event key field (`class`, `subclass`, `type`, `obj_id`, `service`) in bytes
    /// [default: 256].
    #[arg(long, env = "SWITCHBOARD_MAX_KEY_FIELD_BYTES")]
    pub max_key_field_bytes: Option<usize>,
    /// Largest subscription `body` in bytes of compact JSON [default: 16384].
    #[arg(long, env = "SWITCHBOARD_MAX_SUBSCRIPTION_BODY_BYTES")]
    pub max_subscription_body_bytes: Option<usize>,
    /// Largest event `body` in bytes of compact JSON [default: 65536].
    #[arg(long, env = "SWITCHBOARD_MAX_EVENT_BODY_BYTES")]
    pub max_event_body_bytes: Option<usize>,
    /// Largest login `meta` in bytes of compact JSON [default: 8192].
    #[arg(long, env = "SWITCHBOARD_MAX_LOGIN_META_BYTES")]
    pub max_login_meta_bytes: Option<usize>,
    /// Largest `session log` request `data` in bytes of compact JSON [default: 65536].
    #[arg(long, env = "SWITCHBOARD_MAX_LOG_RECORD_BYTES")]
    pub max_log_record_bytes: Option<usize>,
    /// Largest frame before login; a bigger one closes with 1009 [default: 16384].
    #[arg(long, env = "SWITCHBOARD_PRELOGIN_FRAME_BYTES")]
    pub prelogin_frame_bytes: Option<usize>,
    /// Time from the upgrade within which a connection must log in, else 1008 [default: 10s].
    #[arg(long, env = "SWITCHBOARD_LOGIN_TIMEOUT")]
    pub login_timeout: Option<String>,
    /// Connections from one client address (IPv6: one /64) waiting to log in at once; more
    /// get HTTP 429 [default: 64].
    #[arg(long, env = "SWITCHBOARD_MAX_PRELOGIN_PER_ADDRESS")]
    pub max_prelogin_per_address: Option<usize>,
    /// Window over which a stopping gateway closes its connections [default: 5s].
    #[arg(long, env = "SWITCHBOARD_DRAIN_WINDOW")]
    pub drain_window: Option<String>,
    /// Interval of WebSocket pings, e.g. "25s" [default: 25s].
    #[arg(long, env = "SWITCHBOARD_PING_INTERVAL")]
    pub ping_interval: Option<String>,
    /// Silence after which a connection is closed [default: 60s].
    #[arg(long, env = "SWITCHBOARD_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// `session cmd` wait, and the extension each ack grants [default: 30s].
    #[arg(long, env = "SWITCHBOARD_CMD_TIMEOUT")]
    pub cmd_timeout: Option<String>,
    /// Longest `session cmd` wait in all [default: 180s].
    #[arg(long, env = "SWITCHBOARD_CMD_MAX_TIMEOUT")]
    pub cmd_max_timeout: Option<String>,
    /// Deadline of calls between services [default: 5s].
    #[arg(long, env = "SWITCHBOARD_RPC_TIMEOUT")]
    pub rpc_timeout: Option<String>,
    /// Shortest time between two writes to one connection; frames meanwhile share a write,
    /// e.g. "20ms" [default: 0, write at once].
    #[arg(long, env = "SWITCHBOARD_WRITE_COALESCE")]
    pub write_coalesce: Option<String>,
    /// gRPC listen address of auth, registry or bus [defaults: 0.0.0.0:9101, :9102, :9103].
    #[arg(long, env = "SWITCHBOARD_GRPC_LISTEN")]
    pub grpc_listen: Option<String>,
    /// Redis of the registry, the bus and the gateways [default: redis://127.0.0.1:6379].
    #[arg(long, env = "SWITCHBOARD_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Auth service for gateways [default: http://127.0.0.1:9101].
    #[arg(long, env = "SWITCHBOARD_AUTH_URL")]
    pub auth_url: Option<String>,
    /// Session registry for gateways [default: http://127.0.0.1:9102].
    #[arg(long, env = "SWITCHBOARD_REGISTRY_URL")]
    pub registry_url: Option<String>,
    /// Event bus for gateways [default: http://127.0.0.1:9103].
    #[arg(long, env = "SWITCHBOARD_BUS_URL")]
    pub bus_url: Option<String>,
    /// Gateway SessionControl gRPC listen address [default: 0.0.0.0:9104].
    #[arg(long, env = "SWITCHBOARD_CONTROL_LISTEN")]
    pub control_listen: Option<String>,
    /// Address other replicas use to reach this gateway's SessionControl [default: the
    /// listen address, or this host's address towards the registry when listening on 0.0.0.0].
    #[arg(long, env = "SWITCHBOARD_CONTROL_ADVERTISE")]
    pub control_advertise: Option<String>,
    /// This gateway's identity in the registry [default: a fresh UUID].
    #[arg(long, env = "SWITCHBOARD_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// Interval of gateway heartbeats to the registry [default: 5s].
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<String>,
    /// Silence after which the registry reaps a gateway's sessions [default: 15s].
    #[arg(long, env = "SWITCHBOARD_GATEWAY_TIMEOUT")]
    pub gateway_timeout: Option<String>,
}

/// Passwords, secrets and the Redis URL (which may carry a password) are never printed.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("grpc_listen", &self.grpc_listen)
            .field("admin_user", &self.admin_user)
            .finish_non_exhaustive()
    }
}

macro_rules! or_file {
    ($cli:ident, $file:ident, $($field:ident),+ $(,)?) => {
        Settings { $($field: $cli.$field.or($file.$field)),+ }
    };
}

impl Settings {
    /// Reads a TOML settings file.
    ///
    /// # Errors
    /// When the file cannot be read, is not TOML or has an unknown key.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read settings file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid settings file {}", path.display()))
    }

    /// Returns these settings with unset ones taken from `file`.
    pub fn or_file(self, file: Settings) -> Settings {
        let cli = self;
        or_file!(
            cli,
            file,
            listen,
            admin_user,
            admin_password,
            internal_secret,
            users_file,
            jwt_hs256_secret,
            jwt_public_key,
            jwt_jwks,
            jwt_leeway,
            jwt_audience,
            jwt_issuer,
            login_max_failures,
            login_max_account_failures,
            login_failure_window,
            policy_file,
            tls_cert,
            tls_key,
            tls_listen,
            trust_forwarded_for,
            publish_via_bus,
            gelf,
            max_frame_bytes,
            max_json_depth,
            max_subscriptions,
            max_connections,
            max_frames_per_second,
            max_sessions_per_user,
            metrics_listen,
            outbound_queue,
            outbound_queue_bytes,
            max_key_field_bytes,
            max_subscription_body_bytes,
            max_event_body_bytes,
            max_login_meta_bytes,
            max_log_record_bytes,
            prelogin_frame_bytes,
            login_timeout,
            max_prelogin_per_address,
            drain_window,
            ping_interval,
            idle_timeout,
            cmd_timeout,
            cmd_max_timeout,
            rpc_timeout,
            write_coalesce,
            grpc_listen,
            redis_url,
            auth_url,
            registry_url,
            bus_url,
            control_listen,
            control_advertise,
            gateway_id,
            heartbeat_interval,
            gateway_timeout,
        )
    }

    /// Merges the optional settings file into flags and environment.
    ///
    /// # Errors
    /// When the file is unreadable or invalid.
    pub fn resolve(self, config_file: Option<&PathBuf>) -> anyhow::Result<Settings> {
        Ok(match config_file {
            Some(path) => self.or_file(Settings::from_file(path)?),
            None => self,
        })
    }

    /// Applies the gateway settings to `config`.
    ///
    /// # Errors
    /// When a value does not parse.
    pub fn apply_to_gateway(&self, config: &mut switchboard_gateway::Config) -> anyhow::Result<()> {
        if let Some(gelf) = &self.gelf {
            config.gelf = Some(gelf.parse::<GelfTarget>().map_err(anyhow::Error::msg)?);
        }
        if let Some(value) = self.max_frame_bytes {
            config.max_frame_bytes = value;
        }
        if let Some(value) = self.max_json_depth {
            config.max_json_depth = value;
        }
        if let Some(value) = self.max_subscriptions {
            config.max_subscriptions = value;
        }
        if let Some(value) = self.max_connections {
            anyhow::ensure!(value > 0, "max_connections must be at least 1");
            config.max_connections = value;
        }
        if let Some(value) = self.max_frames_per_second {
            config.max_frames_per_second = value;
        }
        if let Some(value) = self.outbound_queue {
            anyhow::ensure!(value > 0, "outbound_queue must be at least 1");
            config.outbound_queue = value;
        }
        for (value, slot) in [
            (self.outbound_queue_bytes, &mut config.outbound_queue_bytes),
            (self.max_key_field_bytes, &mut config.limits.key_field),
            (
                self.max_subscription_body_bytes,
                &mut config.limits.subscription_body,
            ),
            (self.max_event_body_bytes, &mut config.limits.event_body),
            (self.max_login_meta_bytes, &mut config.limits.login_meta),
            (self.max_log_record_bytes, &mut config.limits.log_record),
            (self.prelogin_frame_bytes, &mut config.prelogin_frame_bytes),
            (
                self.max_prelogin_per_address,
                &mut config.max_prelogin_per_address,
            ),
        ] {
            if let Some(value) = value {
                *slot = value;
            }
        }
        for (text, slot, name) in [
            (
                &self.ping_interval,
                &mut config.ping_interval,
                "ping_interval",
            ),
            (&self.idle_timeout, &mut config.idle_timeout, "idle_timeout"),
            (&self.cmd_timeout, &mut config.cmd_timeout, "cmd_timeout"),
            (
                &self.cmd_max_timeout,
                &mut config.cmd_max_timeout,
                "cmd_max_timeout",
            ),
            (&self.rpc_timeout, &mut config.rpc_timeout, "rpc_timeout"),
            (
                &self.heartbeat_interval,
                &mut config.heartbeat_interval,
                "heartbeat_interval",
            ),
            (
                &self.write_coalesce,
                &mut config.write_coalesce,
                "write_coalesce",
            ),
            (
                &self.login_timeout,
                &mut config.login_timeout,
                "login_timeout",
            ),
            (&self.drain_window, &mut config.drain_window, "drain_window"),
        ] {
            if let Some(text) = text {
                *slot = parse_duration(text).with_context(|| format!("invalid {name}"))?;
            }
        }
        anyhow::ensure!(
            !config.ping_interval.is_zero() && !config.heartbeat_interval.is_zero(),
            "ping_interval and heartbeat_interval must be above zero"
        );
        config.policy = self.policy()?;
        if let Some(trust) = self.trust_forwarded_for {
            config.trust_forwarded_for = trust;
        }
        if let Some(via_bus) = self.publish_via_bus {
            config.publish_via_bus = via_bus;
        }
        config.tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                Some(switchboard_gateway::tls::Tls::from_pem_files(cert, key)?)
            }
            (None, None) => None,
            _ => anyhow::bail!("tls_cert and tls_key go together"),
        };
        if let Some(gateway_id) = &self.gateway_id {
            config.gateway_id = gateway_id.clone();
        }
        Ok(())
    }

    /// Checks every value that must parse, before anything is bound.
    ///
    /// # Errors
    /// The first invalid value.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut gateway = switchboard_gateway::Config::new(
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        );
        self.apply_to_gateway(&mut gateway)?;
        self.registry_config()?;
        self.auth_config(None)?;
        if let Some(secret) = &self.internal_secret {
            InternalSecret::new(secret).context("invalid internal_secret")?;
        }
        Ok(())
    }

    /// Returns the internal credential a production role needs.
    ///
    /// # Errors
    /// When none is configured or it is invalid.
    pub fn required_secret(&self) -> anyhow::Result<InternalSecret> {
        let secret = self.internal_secret.as_deref().context(
            "internal services need a shared secret (--internal-secret or SWITCHBOARD_INTERNAL_SECRET)",
        )?;
        InternalSecret::new(secret).context("invalid internal_secret")
    }

    /// Returns the configured internal credential, or a random one for a single process.
    ///
    /// # Errors
    /// When the configured one is invalid.
    pub fn secret_or_random(&self) -> anyhow::Result<InternalSecret> {
        match &self.internal_secret {
            Some(_) => self.required_secret(),
            None => Ok(InternalSecret::random()),
        }
    }

    /// Returns the policy: the file's when one is configured, else the default.
    ///
    /// # Errors
    /// When the file cannot be read or is not a valid policy.
    pub fn policy(&self) -> anyhow::Result<Arc<Policy>> {
        let Some(path) = &self.policy_file else {
            return Ok(Arc::new(Policy::default()));
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read policy file {}", path.display()))?;
        let policy = Policy::from_toml(&text)
            .with_context(|| format!("invalid policy file {}", path.display()))?;
        Ok(Arc::new(policy))
    }

    /// Returns the auth settings with the given admin password. Files are read later, by
    /// [`switchboard_auth::Authenticator::new`].
    ///
    /// # Errors
    /// When a value does not parse.
    pub fn auth_config(
        &self,
        admin_password: Option<String>,
    ) -> anyhow::Result<switchboard_auth::Config> {
        let mut config = switchboard_auth::Config {
            admin_password,
            users_file: self.users_file.clone(),
            ..switchboard_auth::Config::default()
        };
        if let Some(user) = &self.admin_user {
            config.admin_user = user.clone();
        }
        config.jwt = switchboard_auth::JwtConfig {
            hs256_secret: self.jwt_hs256_secret.clone(),
            public_key_files: self.jwt_public_key.iter().cloned().collect(),
            jwks_file: self.jwt_jwks.clone(),
            leeway: match &self.jwt_leeway {
                Some(text) => parse_duration(text).context("invalid jwt_leeway")?,
                None => DEFAULT_JWT_LEEWAY,
            },
            audience: self.jwt_audience.clone(),
            issuer: self.jwt_issuer.clone(),
        };
        if let Some(max) = self.login_max_failures {
            config.throttle.max_failures = max;
        }
        if let Some(max) = self.login_max_account_failures {
            config.throttle.max_account_failures = max;
        }
        if let Some(text) = &self.login_failure_window {
            config.throttle.window =
                parse_duration(text).context("invalid login_failure_window")?;
        }
        Ok(config)
    }

    /// Returns the registry settings.
    ///
    /// # Errors
    /// When a value does not parse.
    pub fn registry_config(&self) -> anyhow::Result<switchboard_session_registry::Config> {
        let mut config = switchboard_session_registry::Config::default();
        if let Some(text) = &self.gateway_timeout {
            config.gateway_timeout = parse_duration(text).context("invalid gateway_timeout")?;
        }
        if let Some(value) = self.max_sessions_per_user {
            config.max_sessions_per_user = value;
        }
        Ok(config)
    }

    /// Returns the Redis URL.
    pub fn redis_url(&self) -> String {
        self.redis_url
            .clone()
            .unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned())
    }
}

/// Default clock skew tolerated on a token's `exp` and `nbf`.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);

/// Default Redis of the scaled deployment.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    Ok(humantime::parse_duration(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file() {
        let cli = Settings {
            listen: Some("a".into()),
            ..Settings::default()
        };
        let file: Settings = toml::from_str("listen = \"b\"\nadmin_user = \"root\"").expect("toml");
        let merged = cli.or_file(file);
        assert_eq!(merged.listen.as_deref(), Some("a"));
        assert_eq!(merged.admin_user.as_deref(), Some("root"));
    }

    #[test]
    fn unknown_file_key_is_refused() {
        assert!(toml::from_str::<Settings>("nope = 1").is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        let mut config = switchboard_gateway::Config::new(
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        );
        let bad_gelf = Settings {
            gelf: Some("http://x".into()),
            ..Settings::default()
        };
        assert!(bad_gelf.apply_to_gateway(&mut config).is_err());
        let bad_duration = Settings {
            cmd_timeout: Some("soon".into()),
            ..Settings::default()
        };
        assert!(bad_duration.apply_to_gateway(&mut config).is_err());
        let good = Settings {
            cmd_timeout: Some("2s".into()),
            gelf: Some("udp://127.0.0.1:12201".into()),
            ..Settings::default()
        };
        good.apply_to_gateway(&mut config).expect("valid");
        assert_eq!(config.cmd_timeout, Duration::from_secs(2));
    }
}
