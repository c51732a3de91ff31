//! Prometheus metrics. Services record with the `metrics` macros, named
//! `tessera_<svc>_<thing>_<unit>` in base units with `_total` on counters; labels come
//! from small fixed sets and never carry ids.

use std::sync::OnceLock;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds, from 50 µs to 10 s.
pub const LATENCY_BUCKETS_S: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Size buckets (transactions in a commit batch, and the like), from 1 to 16384.
pub const COUNT_BUCKETS: &[f64] =
    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0];

/// Installs the global recorder (once per process) and returns its render handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS_S)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_txns".to_owned()), COUNT_BUCKETS)
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // A recorder is already installed (another test in this process): keep a
                // detached handle so rendering still works.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// `GET /metrics` in the Prometheus text format.
pub fn route<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let handle = install();
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    handle.render(),
                )
            }
        }),
    )
}
