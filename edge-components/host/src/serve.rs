//! The listeners: fans on one port (HTTP/1.1 and HTTP/2), `/metrics`, `/healthz` and
//! `/readyz` on the admin port. Shutdown stops accepting, then drains in-flight requests.

use std::convert::Infallible;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::server::Edge;

/// Serves fans until `shutdown` flips, then waits up to `grace` for in-flight requests.
pub async fn serve_public(
    edge: Edge,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> anyhow::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let edge = edge.clone();
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let edge = edge.clone();
                    async move { Ok::<_, Infallible>(edge.handle(req, peer).await) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        count_connection_error(&*e, peer);
                    }
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all in-flight requests finished"),
        _ = tokio::time::sleep(grace) => tracing::warn!("shutdown grace period ran out with requests in flight"),
    }
    Ok(())
}

/// A connection that ended in an error: a request head hyper could not parse (answered
/// with a bare 400 or 431 before any component ran) is a refusal like any other, logged
/// once and counted as `tessera_edge_refusals_total{outcome="malformed_http"}`; anything
/// else (a client gone mid-request) is routine.
fn count_connection_error(e: &(dyn std::error::Error + 'static), peer: std::net::SocketAddr) {
    let malformed = e
        .downcast_ref::<hyper::Error>()
        .is_some_and(|h| h.is_parse() || h.is_parse_too_large() || h.is_parse_status());
    if malformed {
        tracing::warn!(code = "malformed_http", peer = %peer.ip(), reason = %e, "request refused");
        metrics::counter!("tessera_edge_refusals_total", "outcome" => "malformed_http")
            .increment(1);
    } else {
        tracing::debug!("connection ended: {e}");
    }
}

/// The admin router: `/metrics`, `/healthz` (the process is up) and `/readyz` (components
/// are loaded, which is true once this runs).
pub fn admin_router() -> axum::Router {
    use axum::routing::get;
    tessera_runtime::metrics::route()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
}

/// Serves the admin router until `shutdown` flips.
pub async fn serve_admin(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    axum::serve(listener, admin_router())
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await?;
    Ok(())
}
