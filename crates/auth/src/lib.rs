//! The auth service: checks login credentials and returns the user, the session id to use and
//! the session's roles.
//!
//! Serves the `Auth` gRPC service (`proto/switchboard/v1/auth.proto`); calls nothing.
//!
//! # Layout
//! - [`config`]: [`Config`], the configured admin and any static users.
//! - [`service`]: [`Authenticator`], the credential check, free of gRPC.
//! - [`grpc`]: the tonic adapter and [`serve`].

pub mod config;
pub mod grpc;
pub mod service;

pub use config::{Config, StaticUser};
pub use grpc::serve;
pub use service::{AuthError, Authenticator, Identity};
