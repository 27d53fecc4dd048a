//! Generated tonic/prost code for Switchboard's gRPC API (`proto/switchboard/v1`).
//!
//! Services: `Auth` (auth crate), `SessionRegistry` (session-registry crate), `EventBus`
//! (event-bus crate) and `SessionControl` (served by every gateway). Backends use the same API, with the
//! same credential ([`internal`]).
//!
//! Gateways send their per-login calls (auth `LoginStream`, registry `RegisterStream`) over one
//! long-lived stream each; [`calls`] holds both ends of that.

/// Version 1 of the API.
#[allow(missing_docs, clippy::all, unreachable_pub)]
pub mod v1 {
    tonic::include_proto!("switchboard.v1");
}

pub mod calls;
pub mod digest;
pub mod internal;
pub mod observe;

/// The largest gRPC message any Switchboard server or client sends or accepts. Every message
/// whose size grows with the deployment (session lists, heartbeats, history) is paged well
/// below it, so reaching it is a bug, not a load.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
