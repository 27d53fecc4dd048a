//! A connection's reader: frames from the client, handled in order (PROTOCOL.md §6), under the
//! request rate limit and, until login, the login deadline.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use serde_json::Value;
use switchboard_protocol::frame::{self, Inbound};
use switchboard_protocol::{ApiError, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::conn_state::ConnState;
use crate::dispatch;
use crate::gateway::Gateway;
use crate::metrics::METRICS;
use crate::outbound::{CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, Outbound};
use crate::prelogin;
use crate::session::CmdAnswer;
use crate::token;
use tracing::Instrument;

/// Reads and handles the client's frames until the connection ends or is killed.
pub(super) async fn read_loop<S: AsyncRead + AsyncWrite + Unpin>(
    gateway: &Arc<Gateway>,
    state: &mut ConnState,
    mut stream: futures_util::stream::SplitStream<WebSocketStream<S>>,
) {
    let kill = state.session.kill_token().clone();
    loop {
        let login_deadline = state.prelogin.as_ref().map(|prelogin| prelogin.deadline);
        let message = tokio::select! {
            () = kill.cancelled() => return,
            () = sleep_until_some(login_deadline) => {
                state.session.kill(CLOSE_POLICY, "no login in time");
                return;
            }
            step = token::next_step(state.token) => {
                let Some(step) = step else { continue };
                if let Some(token) = &mut state.token {
                    token.run(step, &state.session);
                }
                if step == token::Step::Close {
                    state.token = None;
                    state.expired = true;
                }
                continue;
            }
            message = stream.next() => message,
        };
        state.session.touch(gateway.hub.now_ms());
        let message = match message {
            None => return,
            Some(Ok(message)) => message,
            Some(Err(WsError::Capacity(error))) => {
                tracing::debug!(conn.id = state.session.conn_id, %error, "frame over the limit");
                state.session.kill(CLOSE_TOO_BIG, "frame too large");
                return;
            }
            Some(Err(WsError::Io(error))) if prelogin::is_frame_too_big(&error) => {
                tracing::debug!(
                    conn.id = state.session.conn_id,
                    "frame over the limit before login"
                );
                state
                    .session
                    .kill(CLOSE_TOO_BIG, "frame too large before login");
                return;
            }
            Some(Err(error)) => {
                tracing::debug!(conn.id = state.session.conn_id, %error, "read failed");
                return;
            }
        };
        match message {
            // Boxed, like every state but waiting (`connection_tasks_stay_small`).
            Message::Text(text) => Box::pin(handle_text(gateway, state, text.as_str())).await,
            Message::Binary(_) => {
                if state.frame_budget.take() {
                    let error =
                        ApiError::new(ErrorCode::InvalidFrame, "binary frames are not supported");
                    Box::pin(reply(state, frame::error_response(None, &error))).await;
                } else {
                    METRICS.count_rate_limited();
                }
            }
            Message::Close(_) => {
                state.session.answer_peer_close();
                return;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
        if state.prelogin.is_some() && state.session.identity().is_some() {
            // Logged in: the connection's frames may now be as large as `max_frame_bytes`,
            // and it no longer counts among its address's waiting ones.
            if let Some(prelogin) = state.prelogin.take() {
                prelogin.frame_limit.store(0, Ordering::Relaxed);
            }
        }
        if state.stop_after_reply {
            state.session.close(CLOSE_NORMAL, "session stopped");
            state.stop_after_reply = false;
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn reply(state: &ConnState, text: String) {
    state.session.send(Outbound::Text(text)).await;
}

async fn handle_text(gateway: &Arc<Gateway>, state: &mut ConnState, text: &str) {
    // Every frame counts against the rate, requests or not; past it, requests are answered
    // `limit_exceeded` and invalid frames get no answer at all.
    let within_rate = state.frame_budget.take();
    METRICS.frames_received.inc();
    match frame::decode(text, gateway.config.max_json_depth) {
        Err(_) if !within_rate => METRICS.count_rate_limited(),
        Err(rejected) => {
            reply(
                state,
                frame::error_response(rejected.tid.as_ref(), &rejected.error),
            )
            .await;
        }
        Ok(Inbound::Request(request)) if !within_rate => {
            METRICS.count_rate_limited();
            let error = ApiError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "more than {} requests per second on this connection",
                    gateway.config.max_frames_per_second
                ),
            );
            reply(state, frame::error_response(Some(&request.tid), &error)).await;
        }
        Ok(Inbound::Request(request)) => {
            let started = std::time::Instant::now();
            let command = crate::metrics::command_label(&request.subclass, &request.cmd);
            let logged_in = state.session.identity().is_some();
            let span = tracing::info_span!("command", command, tid = %request.tid);
            // Boxed: a command's state lives only while it runs.
            let dispatched = Box::pin(dispatch::dispatch(gateway, state, request).instrument(span));
            if let Some(text) = dispatched.await {
                reply(state, text).await;
            }
            if !logged_in && let Some(identity) = state.session.identity() {
                // The connection's span names its session from now on.
                tracing::Span::current()
                    .record("session_id", identity.session_id.as_str())
                    .record("user", identity.user.as_str());
                tracing::debug!("logged in");
            }
            METRICS
                .command_duration
                .get_or_create(&[("command", command)])
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(Inbound::Response(response)) => {
            if let Some(tid) = server_tid(&response.tid) {
                state.session.answer(
                    tid,
                    CmdAnswer {
                        ok: response.ok,
                        data: response.data,
                    },
                );
            }
        }
        Ok(Inbound::Ack(tid)) => {
            if let Some(tid) = server_tid(&tid) {
                state.session.ack(tid);
            }
        }
    }
}

/// Reads a tid the server issued (a number, or a numeric string).
fn server_tid(tid: &Value) -> Option<u64> {
    match tid {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
}
