//! Sessions that logged in with a signed token end when it expires: the session is told with
//! a `core/session_event/token_expiring` event [`EXPIRY_WARNING`] before (at once for a
//! shorter token), and at expiry gets `token_expired` and close code [`CLOSE_TOKEN_EXPIRED`],
//! unless a `user login` with a fresh token moved the expiry meanwhile.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::time::Instant;

use crate::session::SessionHandle;

/// Close code of a session whose token expired (private-use range of RFC 6455).
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// `core/session_event` types only the gateway sends (`session send_event` refuses them).
pub const RESERVED_TYPES: &[&str] = &["token_expiring", "token_expired"];
/// How long before expiry the session is warned.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30);

/// What happens at the next deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Send `token_expiring`.
    Warn,
    /// Send `token_expired` and close.
    Close,
}

/// A token session's expiry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenExpiry {
    /// Seconds since the Unix epoch.
    expires_at: u64,
    warned: bool,
}

/// Longest wait a timer is set for; a later expiry is checked again then.
const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Time until `unix_seconds`, at most [`MAX_WAIT`] (an `exp` far in the future must not
/// overflow the clock arithmetic).
fn until(unix_seconds: u64) -> Duration {
    // Past the clock's range is as good as never: wait the longest and look again.
    UNIX_EPOCH
        .checked_add(Duration::from_secs(unix_seconds))
        .map_or(MAX_WAIT, |at| {
            at.duration_since(SystemTime::now()).unwrap_or_default()
        })
        .min(MAX_WAIT)
}

impl TokenExpiry {
    pub(crate) fn new(expires_at: u64) -> Self {
        Self {
            expires_at,
            warned: false,
        }
    }

    /// When the next step is due; `None` when the expiry is beyond [`MAX_WAIT`] (wait that
    /// long, then look again).
    pub(crate) fn next(&self) -> (Instant, Option<Step>) {
        let remaining = until(self.expires_at);
        if remaining >= MAX_WAIT {
            return (Instant::now() + MAX_WAIT, None);
        }
        if self.warned {
            (Instant::now() + remaining, Some(Step::Close))
        } else {
            (
                Instant::now() + remaining.saturating_sub(EXPIRY_WARNING),
                Some(Step::Warn),
            )
        }
    }

    /// Carries out `step` on `session`.
    pub(crate) fn run(&mut self, step: Step, session: &SessionHandle) {
        let Some(identity) = session.identity() else {
            return;
        };
        let event = |type_: &str| {
            json!({
                "class": "core",
                "subclass": "session_event",
                "type": type_,
                "obj_id": identity.session_id,
                "body": {"expires_at": self.expires_at},
            })
            .to_string()
        };
        match step {
            Step::Warn => {
                self.warned = true;
                session.push_event(event("token_expiring").into());
            }
            Step::Close => {
                session.push_event(event("token_expired").into());
                session.close(CLOSE_TOKEN_EXPIRED, "token expired");
            }
        }
    }
}

/// Waits for `expiry`'s next step (`None`: nothing to do yet); never returns for a session
/// without a token.
pub(crate) async fn next_step(expiry: Option<TokenExpiry>) -> Option<Step> {
    match expiry {
        Some(expiry) => {
            let (at, step) = expiry.next();
            // Boxed: the connection's task holds this future even without a token
            // (`connection_tasks_stay_small`).
            Box::pin(tokio::time::sleep_until(at)).await;
            step
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_and_past_expiries() {
        let (at, step) = TokenExpiry::new(u64::MAX).next();
        assert_eq!(step, None, "an exp beyond a week is looked at again later");
        assert!(at > Instant::now() + MAX_WAIT - Duration::from_secs(1));
        let mut past = TokenExpiry::new(0);
        let (at, step) = past.next();
        assert_eq!(step, Some(Step::Warn));
        assert!(at <= Instant::now());
        past.warned = true;
        assert_eq!(past.next().1, Some(Step::Close));
    }
}
