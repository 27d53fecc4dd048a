//! The byte limits of PROTOCOL.md §1: how long a key field, a body, a login `meta` or a
//! `session log` record may be. Items are bounded elsewhere (subscriptions per session,
//! frame size); these bound what one accepted item may cost in memory and in Redis.

use serde::Serialize;

use crate::{ApiError, ErrorCode};

/// Default limit of each event key field (`class`, `subclass`, `type`, `obj_id`, `service`).
pub const DEFAULT_KEY_FIELD_BYTES: usize = 256;
/// Default limit of a subscription `body`, as compact JSON.
pub const DEFAULT_SUBSCRIPTION_BODY_BYTES: usize = 16 * 1024;
/// Default limit of an event `body`, as compact JSON.
pub const DEFAULT_EVENT_BODY_BYTES: usize = 64 * 1024;
/// Default limit of a login `meta`, as compact JSON.
pub const DEFAULT_LOGIN_META_BYTES: usize = 8 * 1024;
/// Default limit of a `session log` request's `data`, as compact JSON.
pub const DEFAULT_LOG_RECORD_BYTES: usize = 64 * 1024;

/// The byte limits in force (all configurable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteLimits {
    /// Each event key field, in UTF-8 bytes.
    pub key_field: usize,
    /// A subscription `body`.
    pub subscription_body: usize,
    /// An event `body`.
    pub event_body: usize,
    /// A login `meta`.
    pub login_meta: usize,
    /// A `session log` request's `data`.
    pub log_record: usize,
}

impl Default for ByteLimits {
    fn default() -> Self {
        Self {
            key_field: DEFAULT_KEY_FIELD_BYTES,
            subscription_body: DEFAULT_SUBSCRIPTION_BODY_BYTES,
            event_body: DEFAULT_EVENT_BODY_BYTES,
            login_meta: DEFAULT_LOGIN_META_BYTES,
            log_record: DEFAULT_LOG_RECORD_BYTES,
        }
    }
}

/// `limit_exceeded` naming `field` unless `len` is at most `max`.
///
/// # Errors
/// `limit_exceeded` past the limit.
pub fn check(field: &str, len: usize, max: usize) -> Result<(), ApiError> {
    if len <= max {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::LimitExceeded,
            format!("{field} is {len} bytes; at most {max} are allowed"),
        ))
    }
}

/// `limit_exceeded` naming `field` unless `value`, as compact JSON, is at most `max` bytes.
/// Stops counting (and allocates nothing) once past the limit.
///
/// # Errors
/// `limit_exceeded` past the limit.
pub fn check_json<T: Serialize + ?Sized>(
    field: &str,
    value: &T,
    max: usize,
) -> Result<(), ApiError> {
    let mut counter = Counter { len: 0, max };
    if serde_json::to_writer(&mut counter, value).is_ok() {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::LimitExceeded,
        format!("{field} is over {max} bytes as JSON"),
    ))
}

/// Counts bytes written and fails once past `max`.
struct Counter {
    len: usize,
    max: usize,
}

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.len += buf.len();
        if self.len > self.max {
            return Err(std::io::Error::other("over the limit"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn limits_count_compact_utf8_bytes() {
        assert!(check("class", 256, 256).is_ok());
        let error = check("class", 257, 256).expect_err("past the limit");
        assert_eq!(error.code, ErrorCode::LimitExceeded);
        assert!(error.message.contains("class"), "{}", error.message);
        // {"k":"éé"} is 12 bytes: é is two.
        let body: Value = json!({"k": "éé"});
        assert!(check_json("body", &body, 12).is_ok());
        let error = check_json("body", &body, 11).expect_err("past the limit");
        assert!(error.message.contains("body"), "{}", error.message);
    }
}
