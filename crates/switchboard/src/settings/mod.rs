//! Settings: a flag, a `SWITCHBOARD_<NAME>` environment variable and a key of the TOML file
//! given with `--config`, in that order of precedence, then the default.
//!
//! [`groups`] declares every setting once, typed, with its default; [`command_line`] gives
//! each its variable and merges the file; this module turns them into each crate's `Config`.

pub mod command_line;
pub mod groups;

use std::sync::Arc;

use anyhow::Context;
use clap::{Args, FromArgMatches};
use switchboard_proto::internal::InternalSecret;
use switchboard_protocol::ByteLimits;
use switchboard_protocol::policy::Policy;

pub use groups::{Addresses, AuthSettings, GatewaySettings, RegistrySettings, StreamSettings};

/// Default WebSocket listener of `switchboard dev`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9010";
/// Password of the admin in `switchboard dev` when none is configured.
pub const DEV_ADMIN_PASSWORD: &str = "admin";

/// Every setting of every role; a role ignores the settings it does not use. Its `Debug`
/// prints no secret (see [`Addresses`] and [`AuthSettings`]).
#[derive(Clone, Debug, clap::Args)]
pub struct Settings {
    /// Listeners, service addresses and the internal secret.
    #[command(flatten)]
    pub addresses: Addresses,
    /// Logins.
    #[command(flatten)]
    pub auth: AuthSettings,
    /// Client connections.
    #[command(flatten)]
    pub gateway: GatewaySettings,
    /// Sessions and gateway liveness.
    #[command(flatten)]
    pub registry: RegistrySettings,
    /// Positioned streams and recovery.
    #[command(flatten)]
    pub streams: StreamSettings,
}

/// Every default (the environment is not read).
impl Default for Settings {
    fn default() -> Self {
        let command = Settings::augment_args(clap::Command::new("settings"));
        let matches = command.get_matches_from(["settings"]);
        match Settings::from_arg_matches(&matches) {
            Ok(settings) => settings,
            Err(error) => error.exit(),
        }
    }
}

impl Settings {
    /// Returns the gateway's configuration. The service addresses are the configured ones;
    /// `control_addr` is left for the caller, which knows the bound listener.
    ///
    /// # Errors
    /// When the policy file or the certificate cannot be read.
    pub fn gateway_config(&self) -> anyhow::Result<switchboard_gateway::Config> {
        let (addresses, gateway) = (&self.addresses, &self.gateway);
        let mut config = switchboard_gateway::Config {
            auth_url: addresses.auth_url.clone(),
            registry_url: addresses.registry_url.clone(),
            bus_url: addresses.bus_url.clone(),
            max_frame_bytes: gateway.max_frame_bytes,
            max_json_depth: gateway.max_json_depth,
            max_subscriptions: gateway.max_subscriptions,
            outbound_queue: gateway.outbound_queue,
            outbound_queue_bytes: gateway.outbound_queue_bytes,
            limits: ByteLimits {
                key_field: gateway.max_key_field_bytes,
                subscription_body: gateway.max_subscription_body_bytes,
                event_body: gateway.max_event_body_bytes,
                login_meta: gateway.max_login_meta_bytes,
                log_record: gateway.max_log_record_bytes,
            },
            prelogin_frame_bytes: gateway.prelogin_frame_bytes,
            login_timeout: *gateway.login_timeout,
            max_prelogin_per_address: gateway.max_prelogin_per_address,
            drain_window: *gateway.drain_window,
            ping_interval: *gateway.ping_interval,
            idle_timeout: *gateway.idle_timeout,
            cmd_timeout: *gateway.cmd_timeout,
            cmd_max_timeout: *gateway.cmd_max_timeout,
            rpc_timeout: *gateway.rpc_timeout,
            heartbeat_interval: *gateway.heartbeat_interval,
            gelf: gateway.gelf.clone(),
            write_coalesce: *gateway.write_coalesce,
            policy: self.policy()?,
            max_connections: gateway.max_connections,
            max_frames_per_second: gateway.max_frames_per_second,
            tls: match (&gateway.tls_cert, &gateway.tls_key) {
                (Some(cert), Some(key)) => {
                    Some(switchboard_gateway::tls::Tls::from_pem_files(cert, key)?)
                }
                _ => None,
            },
            trust_forwarded_for: gateway.trust_forwarded_for,
            publish_via_bus: gateway.publish_via_bus,
            publish_linger: *gateway.publish_linger,
            max_recover: self.streams.max_recover,
            history_ttl: *self.streams.history_ttl,
            ..switchboard_gateway::Config::default()
        };
        if let Some(gateway_id) = &addresses.gateway_id {
            config.gateway_id = gateway_id.clone();
        }
        Ok(config)
    }

    /// Checks every value that needs more than its parser: files that must be readable
    /// and valid, and the internal secret.
    ///
    /// # Errors
    /// The first invalid value.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.gateway_config()?;
        if let Some(secret) = &self.addresses.internal_secret {
            InternalSecret::new(secret).context("invalid internal_secret")?;
        }
        Ok(())
    }

    /// Returns the internal credential a production role needs.
    ///
    /// # Errors
    /// When none is configured or it is invalid.
    pub fn required_secret(&self) -> anyhow::Result<InternalSecret> {
        let secret = self.addresses.internal_secret.as_deref().context(
            "internal services need a shared secret (--internal-secret or SWITCHBOARD_INTERNAL_SECRET)",
        )?;
        InternalSecret::new(secret).context("invalid internal_secret")
    }

    /// Returns the configured internal credential, or a random one for a single process.
    ///
    /// # Errors
    /// When the configured one is invalid.
    pub fn secret_or_random(&self) -> anyhow::Result<InternalSecret> {
        match &self.addresses.internal_secret {
            Some(_) => self.required_secret(),
            None => Ok(InternalSecret::random()),
        }
    }

    /// Returns the policy: the file's when one is configured, else the default.
    ///
    /// # Errors
    /// When the file cannot be read or is not a valid policy.
    pub fn policy(&self) -> anyhow::Result<Arc<Policy>> {
        let Some(path) = &self.gateway.policy_file else {
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
    pub fn auth_config(&self, admin_password: Option<String>) -> switchboard_auth::Config {
        let auth = &self.auth;
        switchboard_auth::Config {
            admin_user: auth.admin_user.clone(),
            admin_password,
            users_file: auth.users_file.clone(),
            jwt: switchboard_auth::JwtConfig {
                hs256_secret: auth.jwt_hs256_secret.clone(),
                public_key_files: auth.jwt_public_key.iter().cloned().collect(),
                jwks_file: auth.jwt_jwks.clone(),
                leeway: *auth.jwt_leeway,
                audience: auth.jwt_audience.clone(),
                issuer: auth.jwt_issuer.clone(),
            },
            throttle: switchboard_auth::ThrottleConfig {
                max_failures: auth.login_max_failures,
                max_account_failures: auth.login_max_account_failures,
                window: *auth.login_failure_window,
            },
            ..switchboard_auth::Config::default()
        }
    }

    /// Where Redis is: the cluster of `redis_cluster` when set, else `redis_url`.
    pub fn redis_target(&self) -> switchboard_broker::RedisTarget {
        switchboard_broker::RedisTarget::from_settings(
            &self.addresses.redis_url,
            self.addresses.redis_cluster.as_deref(),
        )
    }

    /// Returns the positioned streams' settings.
    pub fn stream_config(&self) -> switchboard_broker::StreamConfig {
        switchboard_broker::StreamConfig {
            history_size: self.streams.history_size,
            history_ttl: *self.streams.history_ttl,
        }
    }

    /// Returns the registry settings.
    pub fn registry_config(&self) -> switchboard_session_registry::Config {
        switchboard_session_registry::Config {
            gateway_timeout: *self.registry.gateway_timeout,
            max_sessions_per_user: self.registry.max_sessions_per_user,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::command_line::{ParseFailure, ROLES, parse, with_environment};
    use super::*;

    fn command() -> clap::Command {
        let mut command = clap::Command::new("switchboard").arg(
            clap::Arg::new("config")
                .long("config")
                .global(true)
                .value_parser(clap::value_parser!(PathBuf)),
        );
        for role in ROLES {
            command = command.subcommand(Settings::augment_args(clap::Command::new(role)));
        }
        with_environment(command)
    }

    fn settings(args: &[&str]) -> Result<Settings, ParseFailure> {
        let argv = args.iter().map(OsString::from).collect();
        let matches = parse(&command(), argv)?;
        let (_, role) = matches.subcommand().expect("a role");
        Ok(Settings::from_arg_matches(role).expect("settings"))
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("settings.toml");
        std::fs::write(
            &path,
            "listen = \"b\"\nadmin_user = \"root\"\ncmd_timeout = \"2s\"\nmax_subscriptions = 7\n",
        )
        .expect("write");
        let path = path.to_str().expect("utf-8");
        let merged = settings(&["switchboard", "gateway", "--config", path, "--listen", "a"])
            .expect("valid");
        assert_eq!(merged.addresses.listen.as_deref(), Some("a"));
        assert_eq!(merged.auth.admin_user, "root");
        assert_eq!(*merged.gateway.cmd_timeout, Duration::from_secs(2));
        assert_eq!(merged.gateway.max_subscriptions, 7);
        assert_eq!(
            merged.gateway.idle_timeout,
            Settings::default().gateway.idle_timeout
        );
    }

    #[test]
    fn unknown_or_invalid_file_keys_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        for (text, names) in [
            ("nope = 1", "nope"),
            ("cmd_timeout = \"soon\"", "cmd-timeout"),
        ] {
            let path = dir.path().join("settings.toml");
            std::fs::write(&path, text).expect("write");
            let path = path.to_str().expect("utf-8");
            match settings(&["switchboard", "dev", "--config", path]) {
                Err(ParseFailure::File(error)) => {
                    assert!(format!("{error:#}").contains(names), "{error:#}");
                }
                other => panic!("{text}: {:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn bad_values_are_refused_by_their_parser() {
        for args in [
            ["switchboard", "dev", "--gelf", "http://x"],
            ["switchboard", "dev", "--cmd-timeout", "soon"],
            ["switchboard", "dev", "--ping-interval", "0s"],
            ["switchboard", "dev", "--outbound-queue", "0"],
        ] {
            assert!(
                matches!(settings(&args), Err(ParseFailure::Clap(_))),
                "{args:?}"
            );
        }
        let good = settings(&[
            "switchboard",
            "dev",
            "--cmd-timeout",
            "2s",
            "--gelf",
            "udp://127.0.0.1:12201",
        ])
        .expect("valid");
        let config = good.gateway_config().expect("config");
        assert_eq!(config.cmd_timeout, Duration::from_secs(2));
        assert!(config.gelf.is_some());
    }

    #[test]
    fn defaults_are_the_crates_defaults() {
        let settings = Settings::default();
        let gateway = settings.gateway_config().expect("config");
        let defaults = switchboard_gateway::Config::default();
        assert_eq!(gateway.ping_interval, defaults.ping_interval);
        assert_eq!(gateway.cmd_max_timeout, defaults.cmd_max_timeout);
        assert_eq!(gateway.limits, defaults.limits);
        assert_eq!(gateway.auth_url, defaults.auth_url);
        assert_eq!(
            settings.registry_config(),
            switchboard_session_registry::Config::default()
        );
        assert_eq!(
            settings.auth_config(None).throttle,
            switchboard_auth::ThrottleConfig::default()
        );
    }
}
