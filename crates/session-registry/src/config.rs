//! Registry configuration.

use std::time::Duration;

/// Default time after a gateway's last heartbeat at which its sessions are reaped.
pub const DEFAULT_GATEWAY_TIMEOUT: Duration = Duration::from_secs(15);

/// Default number of sessions one user may hold in one service.
pub const DEFAULT_MAX_SESSIONS_PER_USER: usize = 1000;

/// Registry settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Sessions of a gateway silent for this long are removed.
    pub gateway_timeout: Duration,
    /// Sessions one user may hold in one service; 0 for no limit.
    pub max_sessions_per_user: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            gateway_timeout: DEFAULT_GATEWAY_TIMEOUT,
            max_sessions_per_user: DEFAULT_MAX_SESSIONS_PER_USER,
        }
    }
}
