//! What a connection's reader owns and its commands change: the session handle, the
//! subscriptions, requests in flight, the rate limit and, until login, the before-login rules.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::prelogin::PreloginSlot;
use crate::routes::Subscription;
use crate::session::SessionHandle;
use crate::token::TokenExpiry;

/// Connection state owned by the reader.
#[derive(Debug)]
pub(crate) struct ConnState {
    pub(crate) session: Arc<SessionHandle>,
    /// Subscriptions, newest first.
    pub(crate) subscriptions: Vec<Subscription>,
    /// `session cmd` calls in flight, from the first one on; aborted when the connection ends.
    pub(crate) cmd_tasks: Option<JoinSet<()>>,
    /// Set by a `session stop` of the connection's own session: close after the reply.
    pub(crate) stop_after_reply: bool,
    /// The connection's budget of publishes waiting for the bus, from its first publish on.
    pub(crate) publish_permits: Option<Arc<tokio::sync::Semaphore>>,
    /// Expiry of the token the session logged in with; `None` for a password login.
    pub(crate) token: Option<TokenExpiry>,
    /// The connection's inbound request rate limit.
    pub(crate) frame_budget: FrameBudget,
    /// Set when the session's token expired: every request is refused until the close.
    pub(crate) expired: bool,
    /// Until login: the limits of a connection that has not logged in.
    pub(crate) prelogin: Option<Prelogin>,
}

/// What holds a connection to the before-login rules until it logs in.
#[derive(Debug)]
pub(crate) struct Prelogin {
    /// Its place among the connections of its address waiting to log in.
    pub(crate) _slot: PreloginSlot,
    /// The frame limit its [`FrameGuard`](crate::prelogin::FrameGuard) applies; set to 0 at
    /// login.
    pub(crate) frame_limit: Arc<AtomicUsize>,
    /// When it is closed with 1008 if it has not logged in.
    pub(crate) deadline: Instant,
}

/// A token bucket of requests: `rate` per second, bursts of up to `rate`.
#[derive(Debug)]
pub(crate) struct FrameBudget {
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl FrameBudget {
    /// A full bucket of `rate` requests per second; 0 never runs out.
    pub(crate) fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            refilled: Instant::now(),
        }
    }

    /// Takes one request from the bucket; false when it is empty.
    pub(crate) fn take(&mut self) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
