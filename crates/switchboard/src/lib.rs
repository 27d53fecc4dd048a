//! The `switchboard` binary's library: settings (flags, `SWITCHBOARD_*` variables, a TOML
//! file) and the wiring of the services.
//!
//! # Layout
//! - [`settings`]: every setting with its flag, variable, file key and default.
//! - [`dev`]: `switchboard dev`: auth, registry, bus and one gateway in one process, talking
//!   over real gRPC on loopback, with the in-memory broker and registry.
//! - [`client`]: `switchboard client`, the terminal client of the WebSocket protocol.
//! - [`console`]: the web console's files, served on the admin listener.
//! - [`ctl`]: `switchboard ctl`, the operator's command line over the internal gRPC services.
//! - [`mod@bench`]: `switchboard bench`, the load generator for Switchboard's protocol.
//! - [`roles`]: `switchboard auth|registry|bus|gateway`, one service per process, over Redis.
//! - [`admin`]: each process's admin listener: its series, readiness checks and address.
//! - [`telemetry`]: logs (text or JSON) and the gRPC client observer.
//!
//! Depends on every service crate; no service crate depends on it.

pub mod admin;
pub mod bench;
pub mod client;
pub mod console;
pub mod ctl;
pub mod dev;
pub mod roles;
pub mod settings;
pub mod telemetry;
