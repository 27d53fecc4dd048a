//! The session registry: the deployment-wide index user → sessions → gateway.
//!
//! Serves the `SessionRegistry` gRPC service (`proto/switchboard/v1/registry.proto`) and calls
//! nothing. Gateways register sessions at login, remove them at close and heartbeat; the
//! reaper removes the sessions of a gateway whose heartbeats stop.
//!
//! # Layout
//! - [`config`]: [`Config`], heartbeat timeout.
//! - [`store`]: [`Store`], the index in memory or in Redis, free of gRPC.
//! - [`grpc`]: the tonic adapter, the reaper task and [`serve`].

pub mod config;
pub mod grpc;
pub mod store;

pub use config::Config;
pub use grpc::serve;
pub use store::{GatewayDigest, MemoryStore, Page, RedisStore, RegistryError, Store};
