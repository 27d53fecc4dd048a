//! Traces across processes: every process of a cluster exports over OTLP/gRPC to a collector
//! the test runs, and a client's login is one trace from the gateway's command span through
//! auth and the registry; a positioned subscribe reaches the bus in the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::json;
use switchboard_test_support::free_port;
use tonic::{Request, Response, Status};

use crate::common::Client;
use crate::common::cluster::{CLUSTER_ADMIN_PASSWORD, Cluster};

/// A span as received, with the service that exported it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<String> {
        string_of(&self.span.attributes, key)
    }
}

fn string_of(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value| match &value.value {
            Some(AnyValue::StringValue(text)) => Some(text.clone()),
            _ => None,
        })
}

/// An OTLP trace collector that keeps what it receives.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().expect("collector lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| string_of(&resource.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| Received {
                    service: service.clone(),
                    span,
                }));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start(port: u16) -> Collector {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("collector port");
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        collector
    }

    /// Waits until `found` picks something out of the spans received.
    async fn until<T>(&self, what: &str, found: impl Fn(&[Received]) -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            let spans = self.spans.lock().expect("collector lock").clone();
            if let Some(value) = found(&spans) {
                return value;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{what}; received: {:#?}",
                spans
                    .iter()
                    .map(|r| (&r.service, &r.span.name))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The span named `name` exported by `service` whose parent is `parent`.
fn child_of<'a>(
    spans: &'a [Received],
    service: &str,
    name: &str,
    parent: &Received,
) -> Option<&'a Received> {
    spans.iter().find(|r| {
        r.service == service
            && r.span.name == name
            && r.span.trace_id == parent.span.trace_id
            && r.span.parent_span_id == parent.span.span_id
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_is_one_trace_from_gateway_through_auth_and_registry() {
    let port = free_port();
    let collector = Collector::start(port).await;
    let endpoint = format!("http://127.0.0.1:{port}");
    let cluster = Cluster::start_with_env(
        1,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let mut client = Client::login_at(&cluster.ws_url(0), "admin", CLUSTER_ADMIN_PASSWORD).await;
    client
        .ok(
            "event",
            "subscribe",
            json!({"class": "traced", "recover": true}),
        )
        .await;

    // The gateway's span of the login command is the root of its trace.
    let login = collector
        .until("the gateway exports its login command span", |spans| {
            spans
                .iter()
                .find(|r| {
                    r.service == "switchboard-gateway"
                        && r.span.name == "command"
                        && r.attribute("command").as_deref() == Some("user/login")
                })
                .cloned()
        })
        .await;
    // auth and the registry each continue it: their call spans are its children.
    let (auth, registry) = collector
        .until(
            "auth and registry spans are children of the login",
            |spans| {
                Some((
                    child_of(spans, "switchboard-auth", "Auth/Login", &login)?.clone(),
                    child_of(
                        spans,
                        "switchboard-registry",
                        "SessionRegistry/Register",
                        &login,
                    )?
                    .clone(),
                ))
            },
        )
        .await;
    assert_eq!(auth.attribute("rpc.method").as_deref(), Some("Login"));
    assert_eq!(
        registry.attribute("rpc.service").as_deref(),
        Some("SessionRegistry")
    );
    // Its session id and user are on the gateway's connection span, the command's parent.
    let connection = collector.until("the connection span ends with the client", |spans| {
        spans
            .iter()
            .find(|r| r.span.span_id == login.span.parent_span_id)
            .cloned()
    });
    drop(client);
    let connection = connection.await;
    assert_eq!(connection.span.name, "conn");
    assert_eq!(connection.attribute("user").as_deref(), Some("admin"));

    // A positioned subscribe opens its stream at the bus, inside the command's trace.
    let subscribe = collector
        .until("the subscribe command span", |spans| {
            spans
                .iter()
                .find(|r| r.attribute("command").as_deref() == Some("event/subscribe"))
                .cloned()
        })
        .await;
    collector
        .until(
            "the bus's OpenStreams span is a child of the subscribe",
            |spans| child_of(spans, "switchboard-bus", "EventBus/OpenStreams", &subscribe).cloned(),
        )
        .await;
    let services: HashMap<&str, usize> =
        collector.spans.lock().expect("collector lock").iter().fold(
            HashMap::new(),
            |mut seen, r| {
                *seen
                    .entry(match r.service.as_str() {
                        "switchboard-gateway" => "gateway",
                        "switchboard-auth" => "auth",
                        "switchboard-registry" => "registry",
                        "switchboard-bus" => "bus",
                        _ => "other",
                    })
                    .or_default() += 1;
                seen
            },
        );
    assert!(!services.contains_key("other"), "{services:?}");
}
