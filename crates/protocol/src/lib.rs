//! The Switchboard client protocol (PROTOCOL.md), with no I/O.
//!
//! # Layout
//! - [`error`]: the stable error codes of PROTOCOL.md §3 and [`ApiError`].
//! - [`frame`]: decoding one inbound text frame into a request, a response or an ack, with
//!   the size and depth limits applied; encoding responses, events and server requests.
//! - [`fields`]: typed access to a request's `data` with `missing_field`/`syntax_error` answers.
//! - [`event`]: event and subscription keys, the broker channel of a key, the (at most 8) keys
//!   an event can match, and the body merge rule of §6.
//! - [`policy`]: the default authorisation policy of §8.
//! - [`limits`]: the byte limits of §1 (key fields, bodies, login meta, log records).
//!
//! Everything here is pure so it can be unit- and property-tested without a network.

pub mod error;
pub mod event;
pub mod fields;
pub mod frame;
pub mod limits;
pub mod policy;
pub mod presence;

pub use error::{ApiError, ErrorCode};
pub use event::{EventKey, merge_body};
pub use frame::{Inbound, Request, Response};
pub use limits::ByteLimits;

/// Longest accepted user name in bytes (PROTOCOL.md §4).
pub const MAX_USER_LEN: usize = 256;
/// Longest accepted session id in bytes (PROTOCOL.md §4).
pub const MAX_SESSION_ID_LEN: usize = 128;
