//! What a process learns from its own gRPC calls: each client call's duration by service and
//! method, and the W3C trace context carried from caller to server, in the headers of a call
//! or, for a call on a call stream, in the call itself.
//!
//! The observers are process-wide and set once at start ([`set_client_observer`],
//! [`set_server_observer`]); without them, calls pay for a pointer check.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::body::Body;
use tonic::transport::Channel;

/// Watches the process's gRPC client calls.
pub trait ClientObserver: Send + Sync + 'static {
    /// Adds headers to an outgoing call (runs in the caller's task and span).
    fn outgoing(&self, _headers: &mut http::HeaderMap) {}

    /// The current span's trace context as W3C header names and values, for a call on a call
    /// stream (runs in the caller's task and span); empty when nothing is traced.
    fn trace_context(&self) -> HashMap<String, String> {
        HashMap::new()
    }

    /// A call to `service`/`method` (`"SessionRegistry"`, `"List"`) took `elapsed`. For a
    /// call stream, each call on it is one call (`"Auth"`, `"Login"`).
    fn finished(&self, service: &str, method: &str, elapsed: Duration);
}

static OBSERVER: OnceLock<Box<dyn ClientObserver>> = OnceLock::new();

/// Sets the process's observer; only the first call takes effect.
pub fn set_client_observer(observer: Box<dyn ClientObserver>) {
    let _ = OBSERVER.set(observer);
}

/// The trace context a call on a call stream carries (see [`ClientObserver::trace_context`]).
pub fn trace_context() -> HashMap<String, String> {
    OBSERVER
        .get()
        .map(|observer| observer.trace_context())
        .unwrap_or_default()
}

/// Continues callers' traces on the server side.
pub trait ServerObserver: Send + Sync + 'static {
    /// Makes `span` a child of the caller's trace; `header` reads the caller's W3C trace
    /// context by name (`traceparent`, `tracestate`).
    fn adopt(&self, span: &tracing::Span, header: &dyn Fn(&str) -> Option<String>);
}

static SERVER_OBSERVER: OnceLock<Box<dyn ServerObserver>> = OnceLock::new();

/// Sets the process's server observer; only the first call takes effect.
pub fn set_server_observer(observer: Box<dyn ServerObserver>) {
    let _ = SERVER_OBSERVER.set(observer);
}

/// The span of one call served, named `service/method` and a child of the caller's trace; a
/// disabled span when no server observer is set or the caller sent no trace context (a
/// service continues its callers' traces and starts none: heartbeats make no root spans).
pub fn server_span(
    service: &str,
    method: &str,
    header: &dyn Fn(&str) -> Option<String>,
) -> tracing::Span {
    let Some(observer) = SERVER_OBSERVER.get() else {
        return tracing::Span::none();
    };
    if header("traceparent").is_none() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "rpc",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "server",
        rpc.service = service,
        rpc.method = method,
    );
    observer.adopt(&span, header);
    span
}

/// A tower layer for gRPC servers: each unary call runs in its [`server_span`], a child of the
/// trace context in its headers. A call stream (`…Stream` methods) gets none: each call on it
/// carries its own context, and the call stream server gives each call its span.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerTraceLayer;

impl<S> tower_layer::Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;

    fn layer(&self, inner: S) -> ServerTrace<S> {
        ServerTrace(inner)
    }
}

/// The service [`ServerTraceLayer`] makes.
#[derive(Debug, Clone)]
pub struct ServerTrace<S>(S);

impl<S, B> tower_service::Service<http::Request<B>> for ServerTrace<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use tracing::Instrument;
        let (service, method) = service_and_method(request.uri().path());
        let span = if SERVER_OBSERVER.get().is_none() || method.ends_with("Stream") {
            tracing::Span::none()
        } else {
            let headers = request.headers();
            server_span(service, method, &|name| {
                headers
                    .get(name)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned)
            })
        };
        self.0.call(request).instrument(span)
    }
}

/// Reports a call that took from `started` until now.
pub fn finished(service: &str, method: &str, started: Instant) {
    if let Some(observer) = OBSERVER.get() {
        observer.finished(service, method, started.elapsed());
    }
}

/// Splits `/switchboard.v1.SessionRegistry/List` into `("SessionRegistry", "List")`.
fn service_and_method(path: &str) -> (&str, &str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let service = service.rsplit('.').next().unwrap_or(service);
    (service, parts.next().unwrap_or_default())
}

/// A [`Channel`] whose calls the process observer sees. Streams are timed until their
/// response starts (the calls on a call stream are timed one by one where they are made).
#[derive(Debug, Clone)]
pub struct ObservedChannel(Channel);

impl ObservedChannel {
    /// Wraps `channel`.
    pub fn new(channel: Channel) -> Self {
        Self(channel)
    }
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, tonic::transport::Error>> + Send>>;

impl tower_service::Service<http::Request<Body>> for ObservedChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let Some(observer) = OBSERVER.get() else {
            return Box::pin(tower_service::Service::call(&mut self.0, request));
        };
        observer.outgoing(request.headers_mut());
        let path = request.uri().path().to_owned();
        let started = Instant::now();
        let call = tower_service::Service::call(&mut self.0, request);
        Box::pin(async move {
            let response = call.await;
            let (service, method) = service_and_method(&path);
            observer.finished(service, method, started.elapsed());
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::service_and_method;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            service_and_method("/switchboard.v1.SessionRegistry/List"),
            ("SessionRegistry", "List")
        );
        assert_eq!(
            service_and_method("/grpc.health.v1.Health/Check"),
            ("Health", "Check")
        );
    }
}
