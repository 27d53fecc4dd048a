//! A connection's writer: drains the outbound queue in batches (coalesced for busy
//! connections), pings, closes idle connections, and ends the connection as it was told to
//! (`Ending`): with a close frame, with the answer to the client's, or without one. A
//! logged-in session is released before any close frame goes out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use switchboard_protocol::frame;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::gateway::Gateway;
use crate::metrics::METRICS;
use crate::outbound::{CLOSE_GOING_AWAY, Ending, Outbound, OutboundQueue};
use crate::session::SessionHandle;
use crate::token::CLOSE_TOKEN_EXPIRED;
use switchboard_protocol::presence::reason as presence_reason;

/// Consecutive closely spaced writes after which a connection counts as busy and coalesces.
/// Sustained traffic builds such a streak within a few frames; a quiet connection that gets
/// two or three frames close together by chance (random targeted events) is not held back.
const COALESCE_AFTER_STREAK: u32 = 4;
/// Most frames the writer batches into one flush.
const WRITE_BATCH: usize = 256;

/// Writes the connection's queued frames until it ends; see the module doc.
pub(super) async fn write_loop<S: AsyncRead + AsyncWrite + Unpin>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    session: Arc<SessionHandle>,
    gateway: Arc<Gateway>,
) {
    let queue = session.outbound();
    // However the writer ends (abort included), nothing waits on its queue any more.
    let _closed = CloseQueueOnDrop(queue);
    let config = &gateway.config;
    let mut ping =
        tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
    let kill = session.kill_token().clone();
    let mut coalescer = Coalescer::new(config.write_coalesce, Instant::now());
    loop {
        tokio::select! {
            () = kill.cancelled() => {
                match session.take_ending() {
                    Some(Ending::Close(code, reason)) => {
                        METRICS.count_disconnect(close_label(code));
                        gateway.release(&session, ended_because(code)).await;
                        // A client killed for not reading gets until `write_timeout` to take
                        // its close.
                        send_within(config.write_timeout, &mut sink, close_message(code, &reason)).await;
                    }
                    Some(Ending::AnswerPeerClose) => {
                        METRICS.count_disconnect("client");
                        gateway.release(&session, presence_reason::CLOSED).await;
                        // tungstenite queued the answering close frame when it read the
                        // client's; a flush sends it. The socket closes as the task ends.
                        let _ = Box::pin(tokio::time::timeout(config.write_timeout, sink.flush())).await;
                    }
                    Some(Ending::Abort) | None => METRICS.count_disconnect("lost"),
                }
                return;
            }
            () = queue.ready() => {
                if let Some(next_write) = coalescer.hold_until(Instant::now()) {
                    let killed = Box::pin(async {
                        tokio::select! {
                            () = tokio::time::sleep_until(next_write) => false,
                            () = kill.cancelled() => true,
                        }
                    });
                    if killed.await {
                        continue;
                    }
                }
                coalescer.wrote(Instant::now());
                // No timer per batch: the gateway's watchdog kills a write that stalls.
                session.set_write_started(gateway.hub.now_ms());
                let batch = queue.take(WRITE_BATCH);
                let outcome = Box::pin(async {
                    tokio::select! {
                        written = write_batch(&mut sink, batch, &session, &gateway) => Some(written),
                        () = kill.cancelled() => None,
                    }
                })
                .await;
                session.set_write_started(0);
                match outcome {
                    Some(Ok(BatchEnd::More)) => {}
                    Some(Ok(BatchEnd::Closed)) => {
                        session.abort();
                        return;
                    }
                    Some(Err(_)) => {
                        METRICS.count_disconnect("lost");
                        session.abort();
                        return;
                    }
                    // Killed mid-write: the branch above sends the close frame.
                    None => continue,
                }
            }
            _ = ping.tick() => {
                let idle_ms = gateway.hub.now_ms().saturating_sub(session.last_seen_ms());
                if Duration::from_millis(idle_ms) > config.idle_timeout {
                    METRICS.count_disconnect(close_label(CLOSE_GOING_AWAY));
                    gateway.release(&session, presence_reason::CLOSED).await;
                    send_within(config.write_timeout, &mut sink, close_message(CLOSE_GOING_AWAY, "idle timeout")).await;
                    session.abort();
                    return;
                }
                if !send_within(config.write_timeout, &mut sink, Message::Ping(Vec::new().into())).await {
                    METRICS.count_disconnect("lost");
                    session.abort();
                    return;
                }
            }
        }
    }
}

/// When a connection's next write may go out. A connection under sustained traffic (several
/// writes in a row, each within `interval` of the last) writes at most once per `interval`,
/// so its frames share writes; a frame for a quiet connection goes out at once.
#[derive(Debug)]
struct Coalescer {
    interval: Duration,
    last_write: Instant,
    busy_streak: u32,
}

impl Coalescer {
    /// A coalescer whose first write goes out at once.
    fn new(interval: Duration, now: Instant) -> Self {
        Self {
            interval,
            // As if the last write were long ago.
            last_write: now.checked_sub(interval).unwrap_or(now),
            busy_streak: 0,
        }
    }

    /// Called when frames are ready at `now`: the instant to wait for before writing them,
    /// or `None` to write at once.
    fn hold_until(&mut self, now: Instant) -> Option<Instant> {
        let next_write = self.last_write + self.interval;
        if now < next_write {
            self.busy_streak = self.busy_streak.saturating_add(1);
        } else {
            self.busy_streak = 0;
        }
        (self.busy_streak >= COALESCE_AFTER_STREAK && now < next_write).then_some(next_write)
    }

    /// Records a write that starts at `now`.
    fn wrote(&mut self, now: Instant) {
        self.last_write = now;
    }
}

/// Sends one message unless `limit` passes first; true when it was sent. Boxed: a send made
/// once in a while (`connection_tasks_stay_small`).
async fn send_within<S: AsyncRead + AsyncWrite + Unpin>(
    limit: Duration,
    sink: &mut futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    message: Message,
) -> bool {
    let sent = Box::pin(tokio::time::timeout(limit, sink.send(message))).await;
    matches!(sent, Ok(Ok(())))
}

/// How a batch of writes ended.
enum BatchEnd {
    /// The connection goes on.
    More,
    /// A close frame was written.
    Closed,
}

/// Writes `batch` (up to a close frame), then flushes once, so a burst of frames costs one
/// write.
async fn write_batch<S: AsyncRead + AsyncWrite + Unpin>(
    sink: &mut futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    mut batch: VecDeque<Outbound>,
    session: &SessionHandle,
    gateway: &Gateway,
) -> Result<BatchEnd, WsError> {
    let mut end = BatchEnd::More;
    METRICS.frames_sent.inc_by(batch.len() as u64);
    while let Some(frame) = batch.pop_front() {
        let message = match frame {
            Outbound::Text(text) => Message::Text(text.into()),
            Outbound::Event(data) => {
                Message::Text(frame::event_frame(session.next_tid(), &data).into())
            }
            Outbound::Positioned(data, pos) => Message::Text(
                frame::positioned_event_frame(session.next_tid(), &data, Some(&pos)).into(),
            ),
            Outbound::Close(code, reason) => {
                // What came before goes out; the session is released before the client can
                // see its close.
                sink.flush().await?;
                METRICS.count_disconnect(close_label(code));
                Box::pin(gateway.release(session, ended_because(code))).await;
                end = BatchEnd::Closed;
                close_message(code, &reason)
            }
        };
        sink.feed(message).await?;
        if matches!(end, BatchEnd::Closed) {
            break;
        }
    }
    sink.flush().await?;
    Ok(end)
}

/// The `code` label of a close code the server sent.
fn close_label(code: u16) -> &'static str {
    match code {
        1000 => "1000",
        1001 => "1001",
        1008 => "1008",
        1009 => "1009",
        1011 => "1011",
        4001 => "4001",
        4002 => "4002",
        _ => "other",
    }
}

/// Closes a connection's queue when its writer ends.
struct CloseQueueOnDrop<'a>(&'a OutboundQueue);

impl Drop for CloseQueueOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The `reason` of the `stopped` event of a session closed with `code`.
fn ended_because(code: u16) -> &'static str {
    if code == CLOSE_TOKEN_EXPIRED {
        presence_reason::EXPIRED
    } else {
        presence_reason::CLOSED
    }
}

fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_connections_write_at_once_and_busy_ones_coalesce() {
        let interval = Duration::from_millis(20);
        let start = Instant::now();
        let mut coalescer = Coalescer::new(interval, start);
        assert_eq!(
            coalescer.hold_until(start),
            None,
            "the first write goes out"
        );
        coalescer.wrote(start);
        // A few frames close together by chance: still written at once.
        let mut now = start;
        for _ in 1..COALESCE_AFTER_STREAK {
            now += Duration::from_millis(1);
            assert_eq!(coalescer.hold_until(now), None);
            coalescer.wrote(now);
        }
        // A sustained streak: held until `interval` after the last write.
        now += Duration::from_millis(1);
        assert_eq!(
            coalescer.hold_until(now),
            Some(now - Duration::from_millis(1) + interval)
        );
        coalescer.wrote(now + interval);
        // Quiet again: at once, and the streak starts over.
        now += interval * 3;
        assert_eq!(coalescer.hold_until(now), None);
    }

    #[test]
    fn no_interval_never_holds() {
        let start = Instant::now();
        let mut coalescer = Coalescer::new(Duration::ZERO, start);
        for step in 0..10 {
            assert_eq!(coalescer.hold_until(start), None, "write {step}");
            coalescer.wrote(start);
        }
    }
}
