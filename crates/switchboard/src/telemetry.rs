//! What a process tells its operator besides metrics: logs, as text or one JSON object per
//! line; traces, exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; and the
//! observers of its gRPC calls (client call durations, the W3C trace context carried from
//! caller to server).

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use switchboard_proto::observe::{ClientObserver, ServerObserver};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The variable that turns trace export on (the OpenTelemetry SDKs' own).
pub const OTLP_ENDPOINT_VARIABLE: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields.message`, and the
    /// fields of the spans it happened in (`session_id`, `user`, `gateway`, `tid`).
    Json,
}

/// What [`init`] started; [`Telemetry::shutdown`] sends the traces still buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether traces are exported.
    pub fn tracing(&self) -> bool {
        self.traces.is_some()
    }

    /// Exports the spans still buffered and stops exporting (at process exit).
    pub fn shutdown(self) {
        if let Some(provider) = self.traces
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "traces not all exported");
        }
    }
}

/// Starts logging to standard error in `format`, filtered by `RUST_LOG` (default `info`), and,
/// when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, exporting spans over OTLP/gRPC as service
/// `service` (`OTEL_SERVICE_NAME` overrides it); installs the gRPC observers. Call it once,
/// inside the Tokio runtime.
pub fn init(format: LogFormat, service: &str) -> Telemetry {
    let traces = std::env::var_os(OTLP_ENDPOINT_VARIABLE)
        .filter(|endpoint| !endpoint.is_empty())
        .map(|_| trace_provider(service));
    let (traces, trace_error) = match traces {
        Some(Ok(provider)) => (Some(provider), None),
        Some(Err(error)) => (None, Some(error)),
        None => (None, None),
    };
    let trace_layer = traces
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("switchboard")));
    let log_layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .flatten_event(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(log_layer)
        .with(trace_layer)
        .init();
    if let Some(error) = trace_error {
        tracing::error!(%error, "traces are not exported");
    }
    let tracing = traces.is_some();
    switchboard_proto::observe::set_client_observer(Box::new(CallObserver { tracing }));
    if tracing {
        switchboard_proto::observe::set_server_observer(Box::new(TraceAdopter));
    }
    Telemetry { traces }
}

fn trace_provider(service: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(OnRuntime {
            inner: exporter,
            runtime: tokio::runtime::Handle::current(),
        })
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build())
}

/// Runs an exporter's calls on the process's Tokio runtime: the batch processor exports from
/// a thread of its own, where the tonic client would find no reactor.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: E,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.inner.export(batch).await
        } else {
            self.runtime.block_on(self.inner.export(batch))
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Times the process's gRPC client calls into `switchboard_grpc_client_duration_seconds` and,
/// when traces are exported, sends the current span's context with each call.
#[derive(Debug)]
struct CallObserver {
    tracing: bool,
}

impl ClientObserver for CallObserver {
    fn outgoing(&self, headers: &mut http::HeaderMap) {
        if !self.tracing {
            return;
        }
        for (name, value) in self.trace_context() {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(&value),
            ) {
                headers.insert(name, value);
            }
        }
    }

    fn trace_context(&self) -> HashMap<String, String> {
        let mut context = HashMap::new();
        if self.tracing {
            TraceContextPropagator::new()
                .inject_context(&tracing::Span::current().context(), &mut context);
        }
        context
    }

    fn finished(&self, service: &str, method: &str, elapsed: Duration) {
        switchboard_gateway::metrics::METRICS.observe_grpc(service, method, elapsed);
    }
}

/// Makes each served call's span a child of its caller's (W3C `traceparent`).
#[derive(Debug)]
struct TraceAdopter;

impl ServerObserver for TraceAdopter {
    fn adopt(&self, span: &tracing::Span, header: &dyn Fn(&str) -> Option<String>) {
        let carrier: HashMap<String, String> = ["traceparent", "tracestate"]
            .into_iter()
            .filter_map(|name| header(name).map(|value| (name.to_owned(), value)))
            .collect();
        if carrier.is_empty() {
            return;
        }
        let parent = TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(parent);
    }
}
