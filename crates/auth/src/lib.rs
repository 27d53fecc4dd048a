//! The auth service: checks login credentials and returns the user, the session id to use,
//! the session's roles and, for a token, when it expires.
//!
//! Serves the `Auth` gRPC service (`proto/switchboard/v1/auth.proto`); calls nothing.
//!
//! # Layout
//! - [`config`]: [`Config`], which backends are enabled.
//! - [`service`]: [`Authenticator`], the credential check, free of gRPC.
//! - [`users`]: the users file (argon2id hashes, roles), reloaded when it changes.
//! - [`password`]: argon2id hashing, also behind `switchboard hash-password`.
//! - [`jwt`]: signed tokens (HS256, RS256, ES256; PEM or JWKS keys).
//! - [`throttle`]: failed logins per remote address.
//! - [`grpc`]: the tonic adapter and [`serve`].
//! - [`metrics`]: login checks by result and their duration.

pub mod config;
pub mod grpc;
pub mod jwt;
pub mod metrics;
pub mod password;
pub mod service;
pub mod throttle;
pub mod users;

pub use config::Config;
pub use grpc::serve;
pub use jwt::JwtConfig;
pub use service::{Attempt, AuthError, Authenticator, Identity, SetupError};
pub use throttle::ThrottleConfig;
pub use users::UserRecord;
