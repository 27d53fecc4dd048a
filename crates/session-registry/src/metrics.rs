//! The registry's series (`docs/OPERATIONS.md`, "Metrics").

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use switchboard_admin::series::CounterBy;

use crate::store::RegistryError;

/// Registrations, heartbeats and reaper runs by outcome.
#[derive(Debug)]
pub struct Metrics {
    /// Registrations by result: `ok`, `duplicate_session`, `too_many_sessions`, `unavailable`.
    pub registrations: CounterBy,
    /// Heartbeats received, by outcome: `ok`, `unavailable`.
    pub heartbeats: CounterBy,
    /// Reaper runs by outcome: `idle` (nobody silent), `reaped`, `unavailable`.
    pub reaps: CounterBy,
    /// Sessions removed because their gateway went silent.
    pub reaped_sessions: Counter,
}

/// The registry series of this process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    registrations: CounterBy::default(),
    heartbeats: CounterBy::default(),
    reaps: CounterBy::default(),
    reaped_sessions: Counter::default(),
});

/// The label of a call's outcome.
pub fn outcome<T>(result: &Result<T, RegistryError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(RegistryError::DuplicateSession) => "duplicate_session",
        Err(RegistryError::TooManySessions) => "too_many_sessions",
        Err(RegistryError::NotFound) => "not_found",
        Err(RegistryError::Unavailable(_)) => "unavailable",
    }
}

impl Metrics {
    /// Registers the registry series in `registry`.
    pub fn register(&'static self, registry: &mut Registry) {
        registry.register(
            "switchboard_registry_registrations",
            "Session registrations, by result (ok, duplicate_session, too_many_sessions, unavailable)",
            self.registrations.clone(),
        );
        registry.register(
            "switchboard_registry_heartbeats",
            "Gateway heartbeats received, by outcome (ok, unavailable)",
            self.heartbeats.clone(),
        );
        registry.register(
            "switchboard_registry_reaps",
            "Reaper runs, by outcome (idle, reaped, unavailable)",
            self.reaps.clone(),
        );
        registry.register(
            "switchboard_registry_reaped_sessions",
            "Sessions removed because their gateway stopped sending heartbeats",
            self.reaped_sessions.clone(),
        );
    }
}
