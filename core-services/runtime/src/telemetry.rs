//! Structured logs, spans and W3C trace context.
//!
//! Every process logs one JSON object per line to stderr (or human-readable lines when
//! `format = "pretty"`). Spans carry OpenTelemetry contexts so that `traceparent` flows
//! edge → router → core → NATS headers; when `otlp_endpoint` is set, spans are exported
//! over OTLP/HTTP as well.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Logging and tracing settings (the `[telemetry]` table of every service's config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `tracing` filter directives, e.g. `info,tessera_inventory=debug`.
    pub log_filter: String,
    /// `json` (default) or `pretty`.
    pub log_format: String,
    /// OTLP/HTTP endpoint (`http://127.0.0.1:4318`); spans are not exported when unset.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_filter: "info".to_owned(),
            log_format: "json".to_owned(),
            otlp_endpoint: None,
        }
    }
}

/// Flushes exported spans when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(service: &'static str, config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tessera_common::trace::set_source(current_traceparent);
    let mut builder = SdkTracerProvider::builder()
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build());
    if let Some(endpoint) = &config.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig as _;
        use opentelemetry_otlp::WithHttpConfig as _;
        let mut http = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            http = http.with_http_client(OnRuntime { client: reqwest::Client::new(), handle });
        }
        let exporter = http.build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer(service);
    opentelemetry::global::set_tracer_provider(provider.clone());

    let filter = EnvFilter::try_new(&config.log_filter)
        .or_else(|_| EnvFilter::try_new("info"))
        .map_err(|e| anyhow::anyhow!("bad log filter: {e}"))?;
    // Spans feed trace context whatever the log level: the OpenTelemetry layer has its own
    // filter (every `tessera` span, and warnings from elsewhere); the log filter applies to
    // log lines only.
    use tracing_subscriber::Layer as _;
    let otel_filter = EnvFilter::try_new("warn,tessera=info,tessera_runtime=info")
        .map_err(|e| anyhow::anyhow!("bad span filter: {e}"))?;
    let otel = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(otel_filter);
    let registry = tracing_subscriber::registry().with(otel);
    if config.log_format == "pretty" {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter))
            .try_init()?;
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()?;
    }
    Ok(TelemetryGuard { provider })
}

/// OTLP/HTTP requests sent from the process's tokio runtime. The SDK's batch processor
/// exports from a thread of its own, where reqwest's async client finds no reactor (the
/// processor's thread panicked and no span ever left the process), so each export runs as
/// a task on the runtime `init` was called in, and the processor waits for it.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    handle: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        self.handle.spawn(async move { client.send_bytes(request).await }).await?
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);
impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);
impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(k, v);
        }
    }
}

/// Makes `span` a child of the trace context carried in `headers` (if any).
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Writes the current span's trace context into outgoing HTTP headers.
pub fn inject_headers(headers: &mut http::HeaderMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// The current span's trace context as `(header, value)` pairs, for carriers that are not
/// `http::HeaderMap` (NATS message headers).
pub fn current_context_pairs() -> Vec<(String, String)> {
    let cx = tracing::Span::current().context();
    let mut map: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut map);
    map.into_iter().collect()
}

/// The current span's W3C `traceparent`, if it belongs to a trace.
pub fn current_traceparent() -> Option<String> {
    current_context_pairs().into_iter().find(|(k, _)| k == "traceparent").map(|(_, v)| v)
}

/// Makes `span` a child of a context carried as key/value pairs (NATS headers).
pub fn set_parent_from_pairs<'a>(span: &tracing::Span, get: impl Fn(&str) -> Option<&'a str>) {
    let mut map = HashMap::new();
    if let Some(tp) = get("traceparent") {
        map.insert("traceparent".to_owned(), tp.to_owned());
    }
    if let Some(ts) = get("tracestate") {
        map.insert("tracestate".to_owned(), ts.to_owned());
    }
    let cx = TraceContextPropagator::new().extract(&map);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The trace id of the current span (hex), for log correlation.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}
