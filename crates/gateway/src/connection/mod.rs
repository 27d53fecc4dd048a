//! One WebSocket connection: the handshake, a reader that dispatches requests in order, a
//! writer that batches queued frames into few writes, and the cleanup that runs on every path.
//!
//! The reader and writer are two tasks rather than one `select!` loop because the reader
//! awaits internal calls per request (in order, as PROTOCOL.md §6 requires for events from one
//! publisher) while the writer must keep draining events and pinging meanwhile.//!
//! # Layout
//! - this module: the handshake (`handle`, `upgrade`), running a connection (`run`) and the
//!   cleanup that follows it;
//! - `reader`: frames from the client, in order: rate limit, login deadline, dispatch;
//! - `writer`: frames to the client: batching, coalescing, pings and idle timeout, and how a
//!   connection ends (`Ending`).

mod reader;
mod writer;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::conn_state::{ConnState, FrameBudget, Prelogin};
use crate::gateway::Gateway;
use crate::metrics::METRICS;
use crate::outbound::CLOSE_GOING_AWAY;
use crate::prelogin::FrameGuard;
use crate::session::SessionHandle;
use tracing::Instrument;

use reader::read_loop;
use writer::write_loop;

/// The WebSocket path of the default service; `/api/ws/<service>` selects a named one.
pub const WS_PATH: &str = "/api/ws";

/// Longest a TLS or WebSocket handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Read chunk of a connection (see `upgrade`).
const READ_BUFFER_BYTES: usize = 512;
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
    // The TLS path and the handshakes live in boxes of their own, so an idle `ws://`
    // connection's task has no room for them (`tests::connection_tasks_stay_small`).
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
    let span = tracing::info_span!(
        "conn",
        gateway = %gateway.config.gateway_id,
        conn = conn_id,
        session_id = tracing::field::Empty,
        user = tracing::field::Empty,
    );
    let writer = tokio::spawn(
        write_loop(sink, Arc::clone(&session), Arc::clone(&gateway)).instrument(span.clone()),
    );
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
    read_loop(&gateway, &mut state, stream)
        .instrument(span.clone())
        .await;
    // The writer ends after a queued close or on kill; make sure it does either way.
    session.abort();
    let abort_writer = writer.abort_handle();
    if tokio::time::timeout(gateway.config.write_timeout * 2, writer)
        .await
        .is_err()
    {
        tracing::debug!(conn.id = conn_id, "writer did not stop in time");
        abort_writer.abort();
    }
    Box::pin(cleanup(&gateway, &mut state).instrument(span)).await;
    gateway.hub.remove_connection(conn_id);
    tracing::debug!(conn.id = conn_id, "disconnected");
}

async fn cleanup(gateway: &Arc<Gateway>, state: &mut ConnState) {
    if let Some(tasks) = &mut state.cmd_tasks {
        tasks.abort_all();
    }
    state.session.drop_pending();
    let subscriptions = std::mem::take(&mut state.subscriptions);
    gateway
        .hub
        .routes
        .remove(&subscriptions, state.session.conn_id)
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
    fn the_path_names_the_service() {
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

    /// A connection lives in two tasks, each allocated at the size of its future's largest
    /// state for the connection's whole life, so what an idle connection costs is mostly
    /// these two sizes. States a connection passes through once or now and then (the TLS and
    /// WebSocket handshakes, a command, a close frame) are boxed so as not to count; these
    /// bounds, about 1.25 times today's sizes, catch a change that inlines one again.
    #[tokio::test]
    async fn connection_tasks_stay_small() {
        use switchboard_broker::{Broker, MemoryBroker};
        use switchboard_proto::internal::InternalSecret;
        use tokio_tungstenite::tungstenite::protocol::Role;

        let broker = Broker::Memory(MemoryBroker::new());
        let gateway =
            crate::server::build(crate::Config::default(), &broker, InternalSecret::random())
                .expect("gateway");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (server, peer) = listener.accept().await.expect("accept");

        let connection = handle(
            Arc::clone(&gateway),
            server,
            peer,
            None,
            CancellationToken::new(),
        );
        let connection_bytes = std::mem::size_of_val(&connection);
        drop(connection);

        let guarded = FrameGuard::new(client, Arc::new(AtomicUsize::new(usize::MAX)));
        let socket = WebSocketStream::from_raw_socket(guarded, Role::Server, None).await;
        let (sink, _stream) = socket.split();
        let session = Arc::new(SessionHandle::new(
            1,
            String::new(),
            String::new(),
            4,
            1 << 20,
        ));
        let writer = write_loop(sink, session, Arc::clone(&gateway));
        let writer_bytes = std::mem::size_of_val(&writer);

        println!("connection task: {connection_bytes} bytes, writer task: {writer_bytes} bytes");
        assert!(
            connection_bytes <= CONNECTION_BOUND,
            "{connection_bytes} bytes"
        );
        assert!(writer_bytes <= WRITER_BOUND, "{writer_bytes} bytes");
    }

    const CONNECTION_BOUND: usize = 1_100;
    const WRITER_BOUND: usize = 740;
}
