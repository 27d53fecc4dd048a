//! Lifecycle events (PROTOCOL.md §11): `core/presence/started/<user>` and
//! `core/presence/stopped/<user>`, and the reasons a session ends.

/// Subclass of lifecycle events.
pub const SUBCLASS: &str = "presence";

/// Why a session ended: the `reason` of its `stopped` event.
pub mod reason {
    /// Its connection ended.
    pub const CLOSED: &str = "closed";
    /// `session stop`.
    pub const STOPPED: &str = "stopped";
    /// A login took it over.
    pub const TAKEN_OVER: &str = "taken_over";
    /// Its token expired.
    pub const EXPIRED: &str = "expired";
    /// Its gateway died and it was reaped.
    pub const LOST: &str = "lost";

    /// Tells whether `reason` is one the protocol defines.
    pub fn is_known(reason: &str) -> bool {
        [CLOSED, STOPPED, TAKEN_OVER, EXPIRED, LOST].contains(&reason)
    }
}
