//! One WebSocket connection: the handshake, a reader that dispatches requests in order, a
//! writer that batches queued frames into few writes, and the cleanup that runs on every path.
//!
//! The reader and writer are two tasks rather than one `select!` loop because the reader
//! awaits internal calls per request (in order, as PROTOCOL.md §6 requires for events from one
//! publisher) while the writer must keep draining events and pinging meanwhile.

use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use switchboard_protocol::frame::{self, Inbound};
use switchboard_protocol::{ApiError, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::dispatch;
use crate::gateway::Gateway;
use crate::hub::Subscription;
use crate::metrics::METRICS;
use crate::prelogin::{self, FrameGuard, PreloginSlot};
use crate::session::{
    CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TOO_BIG, CmdAnswer, Ending, Outbound, SessionHandle,
};
use crate::token::{self, TokenExpiry};

/// The WebSocket path of the default service; `/api/ws/<service>` selects a named one.
pub const WS_PATH: &str = "/api/ws";

/// Consecutive closely spaced writes after which a connection counts as busy and coalesces.
/// Sustained traffic builds such a streak within a few frames; a quiet connection that gets
/// two or three frames close together by chance (random targeted events) is not held back.
const COALESCE_AFTER_STREAK: u32 = 4;
/// Longest a TLS or WebSocket handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Read chunk of a connection (see `upgrade`).
const READ_BUFFER_BYTES: usize = 512;
/// Most frames the writer batches into one flush.
const WRITE_BATCH: usize = 256;

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
    _slot: PreloginSlot,
    /// The frame limit its [`FrameGuard`] applies; set to 0 at login.
    frame_limit: Arc<AtomicUsize>,
    /// When it is closed with 1008 if it has not logged in.
    deadline: Instant,
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

fn service_from_path(path: &str) -> Option<String> {
    let path = path.split('?').next().unwrap_or_default();
    let rest = path.strip_prefix(WS_PATH)?;
    if rest.is_empty() || rest == "/" {
        return Some(String::new());
    }
    let service = rest.strip_prefix('/')?.trim_end_matches('/');
    (!service.is_empty() && !service.contains('/')).then(|| service.to_owned())
}

/// Answers the handshake of a `ws://` connection over the gateway's limit with HTTP 503.
pub(crate) async fn refuse(stream: TcpStream, peer: SocketAddr) {
    #[allow(clippy::result_large_err)]
    let callback = |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
        let mut error = ErrorResponse::new(Some("too many connections, retry later".to_owned()));
        *error.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        Err(error)
    };
    let handshake = tokio_tungstenite::accept_hdr_async(stream, callback);
    let _ = tokio::time::timeout(Duration::from_secs(5), handshake).await;
    tracing::debug!(peer.addr = %peer, "connection refused at the limit");
}

/// Serves one accepted TCP connection until it ends; with `tls`, the TLS handshake comes
/// first (`wss:`).
pub(crate) async fn handle(
    gateway: Arc<Gateway>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    // The connection's task is allocated at the size of its largest state, for its whole
    // life: the TLS path and the handshakes live in boxes of their own, so an idle `ws://`
    // connection does not carry room for a TLS session or a handshake it finished long ago.
    let Some(tls) = tls else {
        let upgrade = Box::pin(upgrade(Arc::clone(&gateway), stream, "ws", peer));
        return run(gateway, upgrade, shutdown).await;
    };
    Box::pin(async move {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
            Ok(Ok(stream)) => {
                let upgrade = Box::pin(upgrade(Arc::clone(&gateway), stream, "wss", peer));
                run(gateway, upgrade, shutdown).await;
            }
            Ok(Err(error)) => tracing::debug!(peer.addr = %peer, %error, "TLS handshake failed"),
            Err(_) => tracing::debug!(peer.addr = %peer, "TLS handshake timed out"),
        }
    })
    .await;
}

/// The client's address as the last proxy saw it: the last `X-Forwarded-For` entry, when it
/// is an IP address.
fn forwarded_for(request: &Request) -> Option<IpAddr> {
    let header = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .next_back()?;
    let last = header.to_str().ok()?.rsplit(',').next()?.trim();
    last.parse().ok()
}

/// A connection past its WebSocket handshake.
struct Accepted<S> {
    sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    stream: futures_util::stream::SplitStream<WebSocketStream<S>>,
    /// The service the path names ("" for the default one).
    service: String,
    /// "ws:IP:PORT" or "wss:IP:PORT".
    remote: String,
    prelogin: Prelogin,
}

/// Runs the WebSocket handshake on `stream` (under TLS, the decrypted one), behind a
/// [`FrameGuard`] that applies the before-login frame limit; `None` when it fails (logged).
async fn upgrade<S>(
    gateway: Arc<Gateway>,
    stream: S,
    scheme: &'static str,
    peer: SocketAddr,
) -> Option<Accepted<FrameGuard<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let frame_limit = Arc::new(AtomicUsize::new(gateway.config.prelogin_frame_bytes));
    let stream = FrameGuard::new(stream, Arc::clone(&frame_limit));
    let trust_forwarded_for = gateway.config.trust_forwarded_for;
    let max_waiting = gateway.config.max_prelogin_per_address;
    let mut client_ip = None;
    let mut service = None;
    let mut slot = None;
    // The handshake API fixes the callback's error type.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        if trust_forwarded_for {
            client_ip = forwarded_for(request);
        }
        let Some(found) = service_from_path(request.uri().path()) else {
            let mut error = ErrorResponse::new(Some("no such path".to_owned()));
            *error.status_mut() = StatusCode::NOT_FOUND;
            return Err(error);
        };
        service = Some(found);
        let ip = client_ip.unwrap_or(peer.ip());
        slot = gateway.prelogin.try_enter(ip, max_waiting);
        if slot.is_none() {
            METRICS.count_refused_connection();
            let mut error = ErrorResponse::new(Some(
                "too many connections waiting to log in from this address".to_owned(),
            ));
            *error.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            return Err(error);
        }
        Ok(response)
    };
    let mut ws_config = WebSocketConfig::default();
    ws_config.max_message_size = Some(gateway.config.max_frame_bytes);
    ws_config.max_frame_size = Some(gateway.config.max_frame_bytes);
    // tungstenite zero-fills a read chunk of this size per connection; the 128 KiB default
    // costs 128 KiB of RSS per idle client. Larger frames still arrive, in more reads.
    ws_config.read_buffer_size = READ_BUFFER_BYTES;
    let handshake = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(ws_config),
    ));
    let socket = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(error)) => {
            tracing::debug!(peer.addr = %peer, %error, "handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(peer.addr = %peer, "handshake timed out");
            return None;
        }
    };
    let service = service.unwrap_or_default();
    let slot = slot?;
    let prelogin = Prelogin {
        _slot: slot,
        frame_limit,
        deadline: Instant::now() + gateway.config.login_timeout,
    };
    let address = SocketAddr::new(client_ip.unwrap_or(peer.ip()), peer.port());
    let remote = format!("{scheme}:{address}");
    // Split here rather than in `run`: an async fn keeps room for its arguments for its whole
    // life, and a whole `WebSocketStream` is a few hundred bytes per connection.
    let (sink, stream) = socket.split();
    Some(Accepted {
        sink,
        stream,
        service,
        remote,
        prelogin,
    })
}

/// Serves a connection until it ends, once `upgrade` has accepted it.
///
/// Takes the handshake rather than its result: an accepted connection held as an argument
/// would keep its room in this future (a few hundred bytes) for the connection's whole life.
async fn run<S>(
    gateway: Arc<Gateway>,
    upgrade: Pin<Box<impl Future<Output = Option<Accepted<S>>>>>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(Accepted {
        sink,
        stream,
        service,
        remote,
        prelogin,
    }) = upgrade.await
    else {
        return;
    };
    let conn_id = gateway.hub.next_conn_id();
    let session = Arc::new(SessionHandle::new(
        conn_id,
        service,
        remote,
        gateway.config.outbound_queue,
        gateway.config.outbound_queue_bytes,
    ));
    // The idle clock starts now, not at the gateway's start.
    session.touch(gateway.hub.now_ms());
    gateway.hub.add_connection(&session);
    tracing::debug!(conn.id = conn_id, peer.addr = %session.remote, "connected");
    let writer = tokio::spawn(write_loop(sink, Arc::clone(&session), Arc::clone(&gateway)));
    let mut state = ConnState {
        session: Arc::clone(&session),
        subscriptions: Vec::new(),
        cmd_tasks: None,
        stop_after_reply: false,
        publish_permits: None,
        token: None,
        frame_budget: FrameBudget::new(gateway.config.max_frames_per_second),
        expired: false,
        prelogin: Some(prelogin),
    };
    if shutdown.is_cancelled() {
        // Accepted as the gateway began to drain: it missed the paced closes.
        session.close(CLOSE_GOING_AWAY, "gateway shutting down");
    }
    read_loop(&gateway, &mut state, stream).await;
    // The writer ends after a queued close or on kill; make sure it does either way.
    session.kill(CLOSE_GOING_AWAY, "");
    let abort_writer = writer.abort_handle();
    if tokio::time::timeout(gateway.config.write_timeout * 2, writer)
        .await
        .is_err()
    {
        tracing::debug!(conn.id = conn_id, "writer did not stop in time");
        abort_writer.abort();
    }
    Box::pin(cleanup(&gateway, &mut state)).await;
    gateway.hub.remove_connection(conn_id);
    tracing::debug!(conn.id = conn_id, "disconnected");
}

async fn read_loop<S: AsyncRead + AsyncWrite + Unpin>(
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
            // Boxed, like every state of the loop other than waiting: a future is as large as
            // its largest state, and this one would double an idle connection's task.
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
            state
                .session
                .close(crate::session::CLOSE_NORMAL, "session stopped");
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
            // Boxed: a command's state lives only while it runs, so an idle connection's task
            // stays small (this is most of the per-connection memory otherwise).
            if let Some(text) = Box::pin(dispatch::dispatch(gateway, state, request)).await {
                reply(state, text).await;
            }
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

async fn write_loop<S: AsyncRead + AsyncWrite + Unpin>(
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
    let started = Instant::now();
    // As if the last write were long ago, so the first frame goes out at once.
    let mut last_write = started
        .checked_sub(config.write_coalesce)
        .unwrap_or(started);
    let mut busy_streak = 0u32;
    loop {
        tokio::select! {
            () = kill.cancelled() => {
                match session.take_ending() {
                    Some(Ending::Close(code, reason)) => {
                        gateway.release(&session).await;
                        // A client killed for not reading gets until `write_timeout` to take
                        // its close.
                        send_within(config.write_timeout, &mut sink, close_message(code, &reason)).await;
                    }
                    Some(Ending::AnswerPeerClose) => {
                        gateway.release(&session).await;
                        // tungstenite queued the answering close frame when it read the
                        // client's; a flush sends it. The socket closes as the task ends.
                        let _ = Box::pin(tokio::time::timeout(config.write_timeout, sink.flush())).await;
                    }
                    Some(Ending::Abort) | None => {}
                }
                return;
            }
            () = queue.ready() => {
                // A connection under sustained traffic (several writes in a row, each within
                // `write_coalesce` of the last) writes at most once per `write_coalesce`, so
                // its frames share writes; a frame for a quiet connection goes out at once.
                let now = Instant::now();
                let next_write = last_write + config.write_coalesce;
                if now < next_write {
                    busy_streak = busy_streak.saturating_add(1);
                } else {
                    busy_streak = 0;
                }
                if busy_streak >= COALESCE_AFTER_STREAK && now < next_write {
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
                last_write = Instant::now();
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
                    Some(Ok(BatchEnd::Closed) | Err(_)) => {
                        session.kill(CLOSE_GOING_AWAY, "");
                        return;
                    }
                    // Killed mid-write: the branch above sends the close frame.
                    None => continue,
                }
            }
            _ = ping.tick() => {
                let idle_ms = gateway.hub.now_ms().saturating_sub(session.last_seen_ms());
                if Duration::from_millis(idle_ms) > config.idle_timeout {
                    gateway.release(&session).await;
                    send_within(config.write_timeout, &mut sink, close_message(CLOSE_GOING_AWAY, "idle timeout")).await;
                    session.kill(CLOSE_GOING_AWAY, "");
                    return;
                }
                if !send_within(config.write_timeout, &mut sink, Message::Ping(Vec::new().into())).await {
                    session.kill(CLOSE_GOING_AWAY, "");
                    return;
                }
            }
        }
    }
}

/// Sends one message unless `limit` passes first; true when it was sent. Boxed, so the
/// writer's task is not sized for a send it makes once in a while.
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
    while let Some(frame) = batch.pop_front() {
        let message = match frame {
            Outbound::Text(text) => Message::Text(text.into()),
            Outbound::Event(data) => {
                Message::Text(frame::event_frame(session.next_tid(), &data).into())
            }
            Outbound::Close(code, reason) => {
                // What came before goes out; the session is released before the client can
                // see its close.
                sink.flush().await?;
                Box::pin(gateway.release(session)).await;
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

/// Closes a connection's queue when its writer ends.
struct CloseQueueOnDrop<'a>(&'a crate::outbound::OutboundQueue);

impl Drop for CloseQueueOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    }))
}

async fn cleanup(gateway: &Arc<Gateway>, state: &mut ConnState) {
    if let Some(tasks) = &mut state.cmd_tasks {
        tasks.abort_all();
    }
    state.session.drop_pending();
    let subscriptions = std::mem::take(&mut state.subscriptions);
    gateway
        .hub
        .remove_routes(&subscriptions, state.session.conn_id)
        .await;
    // Unless released already (stop, or before a close frame), the session leaves the hub
    // and goes out with the next batch of unregistrations.
    if let Some(identity) = state.session.identity()
        && state.session.mark_released()
    {
        gateway
            .hub
            .remove_session_of(&identity.session_id, state.session.conn_id);
        gateway.unregister(&identity.session_id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_service_from_path() {
        assert_eq!(service_from_path("/api/ws"), Some(String::new()));
        assert_eq!(service_from_path("/api/ws/"), Some(String::new()));
        assert_eq!(service_from_path("/api/ws/media"), Some("media".to_owned()));
        assert_eq!(
            service_from_path("/api/ws/media?x=1"),
            Some("media".to_owned())
        );
        assert_eq!(service_from_path("/api/wsx"), None);
        assert_eq!(service_from_path("/other"), None);
        assert_eq!(service_from_path("/api/ws/a/b"), None);
    }
}
