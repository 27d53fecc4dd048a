//! The session registry: the deployment-wide index user → sessions → gateway.
//!
//! Serves the `SessionRegistry` gRPC service (`proto/switchboard/v1/registry.proto`) and calls
//! nothing. Gateways register sessions at login and remove them at close. A heartbeat is
//! liveness only (a session count and an XOR digest of the ids, answered with the registry's
//! own); a gateway whose digest differs reconciles through paged `GatewaySessions`, `Relearn`
//! and `UnregisterMany`. The reaper removes, in chunks, the sessions of a gateway whose
//! heartbeats stop, re-checking inside the same script that it is still silent.
//!
//! # Layout
//! - [`config`]: [`Config`], heartbeat timeout.
//! - [`store`]: [`Store`], the index in memory or in Redis, free of gRPC.
//! - [`grpc`]: the tonic adapter, the reaper task and [`serve`].
//! - [`metrics`]: registrations, heartbeats and reaper runs by outcome.

pub mod config;
pub mod grpc;
pub mod metrics;
pub mod presence;
pub mod store;

pub use config::Config;
pub use grpc::serve;
pub use store::{GatewayDigest, MemoryStore, Page, RedisStore, RegistryError, Store};
