//! The gateway: terminates client WebSockets and owns everything that dies with a
//! connection: the session, its subscriptions, its outbound queue and its pending server
//! requests.
//!
//! Calls `Auth` (login) and `SessionRegistry` (register, list, get, lookup, heartbeat,
//! reconcile) over
//! gRPC; sends events to `EventBus` over gRPC (or, without `publish_via_bus`, publishes them
//! into the broker through the bus's code) and opens positioned streams and reads their
//! history there; subscribes broker channels for its local subscriptions; serves
//! `SessionControl` (stop, cmd) to other replicas and backends.
//!
//! # Layout
//! - [`server`]: [`build`] and [`serve`]: accept loop, SessionControl server, drain.
//! - [`liveness`]: heartbeats of a session count and digest, and reconciling with the registry.
//! - `conn_state`: what a connection's reader owns and its commands change.
//! - [`connection`]: one WebSocket: reader, batching writer, cleanup.
//! - `dispatch` and `commands`: request routing and the `core` commands; `reply`: what a
//!   command answers and its response frame.
//! - [`hub`]: local sessions, the subscription index and event fan-out.
//! - [`publisher`]: `send_event`s batched into the broker (or the bus), in order, with
//!   backpressure.
//! - [`server_request`]: `session cmd` on a local session: pending entry, acks, answer.
//! - [`session`]: the per-connection handle other tasks use.
//! - [`outbound`]: frames for a connection's writer, close codes, how a connection ends, and
//!   its bounded queue.
//! - [`prelogin`]: the limits of a connection that has not logged in yet.
//! - [`token`]: the expiry of sessions that logged in with a signed token.
//! - [`control`]: the SessionControl gRPC service.
//! - [`gelf`]: `session log` as GELF over UDP or TCP.
//! - [`clients`]: gRPC clients with deadlines and error mapping.
//! - [`tls`]: the `wss://` listener's certificate.
//! - [`metrics`]: counters of refusals and cut-offs, served as Prometheus text.

pub mod clients;
mod commands;
pub mod config;
mod conn_state;
pub mod connection;
pub mod control;
pub mod deployment;
mod dispatch;
pub mod gateway;
pub mod gelf;
pub mod hub;
pub mod liveness;
pub mod metrics;
pub mod outbound;
pub mod positioned;
pub mod prelogin;
pub mod publisher;
mod reply;
pub mod routes;
pub mod server;
pub mod server_request;
pub mod session;
pub mod tls;
pub mod token;

pub use config::{Config, GelfTarget};
pub use gateway::Gateway;
pub use server::{Listeners, build, serve};
