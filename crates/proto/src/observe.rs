//! What a process learns from its own gRPC client calls: each call's duration by service and
//! method, and a hook that adds headers to each outgoing call (the W3C trace context).
//!
//! The observer is process-wide and set once at start ([`set_client_observer`]); without one,
//! calls pay for a pointer check.

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

    /// A call to `service`/`method` (`"SessionRegistry"`, `"List"`) took `elapsed`. For a
    /// call stream, each call on it is one call (`"Auth"`, `"Login"`).
    fn finished(&self, service: &str, method: &str, elapsed: Duration);
}

static OBSERVER: OnceLock<Box<dyn ClientObserver>> = OnceLock::new();

/// Sets the process's observer; only the first call takes effect.
pub fn set_client_observer(observer: Box<dyn ClientObserver>) {
    let _ = OBSERVER.set(observer);
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
