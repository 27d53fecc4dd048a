//! `session cmd` on a local session: the server request, its pending entry, acks that extend
//! the wait, and the answer (PROTOCOL.md `session cmd`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use switchboard_protocol::frame;
use switchboard_protocol::{ApiError, ErrorCode};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::Config;
use crate::outbound::Outbound;
use crate::session::{AckSignal, CmdAnswer, PendingRequest, SessionHandle};

/// Sends `request` to `session` (logged in, on this gateway) and waits for its answer.
///
/// # Errors
/// `session_stopped` or `timeout`.
pub(crate) async fn send(
    session: &SessionHandle,
    request: CmdRequest<'_>,
    timing: CmdTiming,
) -> Result<CmdAnswer, ApiError> {
    let started = Instant::now();
    let hard_deadline = started + timing.max;
    let mut deadline = (started + timing.first).min(hard_deadline);
    let tid = session.next_tid();
    let (answer_tx, mut answer_rx) = oneshot::channel();
    let acks = Arc::new(AckSignal::default());
    session.add_pending(
        tid,
        PendingRequest {
            answer_tx,
            acks: Arc::clone(&acks),
        },
    );
    // Removes the pending entry however this future ends, cancellation included.
    let _pending = PendingGuard { session, tid };
    let text = frame::server_request(
        request.class,
        request.subclass,
        request.cmd,
        request.data,
        tid,
    );
    match tokio::time::timeout_at(deadline, session.send(Outbound::Text(text))).await {
        Ok(true) => {}
        Ok(false) => return Err(session_stopped()),
        Err(_) => return Err(timeout()),
    }
    loop {
        tokio::select! {
            answer = &mut answer_rx => {
                return answer.map_err(|_| session_stopped());
            }
            () = tokio::time::sleep_until(deadline) => {
                return Err(timeout());
            }
            count = acks.acked() => {
                // Each ack extends the wait by `first`, never past `max` in all.
                deadline = (deadline + timing.first * count).min(hard_deadline);
            }
        }
    }
}

/// Removes a pending server request when dropped.
struct PendingGuard<'a> {
    session: &'a SessionHandle,
    tid: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.session.remove_pending(self.tid);
    }
}

fn timeout() -> ApiError {
    ApiError::new(ErrorCode::Timeout, "the session did not answer in time")
}

/// The request `session cmd` forwards.
#[derive(Debug, Clone, Copy)]
pub struct CmdRequest<'a> {
    /// `class`.
    pub class: &'a str,
    /// `subclass`.
    pub subclass: &'a str,
    /// `cmd`.
    pub cmd: &'a str,
    /// `data`.
    pub data: &'a Value,
}

/// How long `session cmd` waits.
#[derive(Debug, Clone, Copy)]
pub struct CmdTiming {
    /// First wait, and the extension granted by each ack.
    pub first: Duration,
    /// Longest wait in all.
    pub max: Duration,
}

impl CmdTiming {
    /// The wait `config` sets.
    pub fn of(config: &Config) -> Self {
        Self {
            first: config.cmd_timeout,
            max: config.cmd_max_timeout,
        }
    }
}

fn session_stopped() -> ApiError {
    ApiError::new(
        ErrorCode::SessionStopped,
        "the session ended before it answered",
    )
}
