use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn metrics_count_bot_verdicts_cache_outcomes_and_requests() {
    tessera_runtime::metrics::install();
    let (_up, router) = upstream().await;
    let edge = start_edge(variables(router)).await;
    let c = browser();
    for _ in 0..3 {
        c.get(edge.url("/v1/events/show-1/sections/B/seats")).send().await.unwrap();
    }
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(tessera_edge_host::serve::serve_admin(admin, rx));
    let text =
        c.get(format!("http://{admin_addr}/metrics")).send().await.unwrap().text().await.unwrap();
    for needle in [
        "tessera_edge_bot_verdicts_total{outcome=\"allow\"}",
        "tessera_edge_catalog_cache_total{outcome=\"hit\"}",
        "tessera_edge_catalog_cache_total{outcome=\"miss\"}",
        "tessera_edge_requests_total",
        "tessera_edge_request_duration_seconds",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    let health = c.get(format!("http://{admin_addr}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn shutdown_drains_requests_in_flight() {
    let (up, router) = upstream().await;
    up.slow_ms.store(400, Ordering::SeqCst);
    let edge = start_edge(variables(router)).await;
    let c = browser();
    let url = edge.url("/v1/events/show-1/sections/C/seats");
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    edge.stop.send(true).unwrap();
    assert_eq!(in_flight.await.unwrap().unwrap(), 200, "the request in flight finished");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = reqwest::Client::new().get(edge.url("/v1/events")).send().await;
    assert!(after.is_err(), "no new connections after shutdown");
}
