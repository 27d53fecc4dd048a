//! Switchboard's integration tests, in one binary (one link instead of one per file): each
//! module drives the services over real sockets (WebSocket, gRPC, Redis, GELF) through the
//! harness in `common`.

mod common;

mod bench;
mod binary;
mod byte_limits;
mod client;
mod cluster;
mod ctl;
mod events;
mod failover;
mod frames;
mod fuzz_commands;
mod gelf;
mod internal;
mod liveness;
mod login;
mod login_backends;
mod operations;
mod orderly_ends;
mod policy_limits;
mod positioned;
mod prelogin;
mod presence;
mod recovery;
mod sessions;
mod takeover;
mod tls;
mod traces;
