//! Registry configuration.

use std::time::Duration;

/// Default time after a gateway's last heartbeat at which its sessions are reaped.
pub const DEFAULT_GATEWAY_TIMEOUT: Duration = Duration::from_secs(15);

/// Registry settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Sessions of a gateway silent for this long are removed.
    pub gateway_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            gateway_timeout: DEFAULT_GATEWAY_TIMEOUT,
        }
    }
}
