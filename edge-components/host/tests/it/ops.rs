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
    // Refusals the edge makes itself are counted by their code.
    assert_eq!(c.get(edge.url("/nope")).send().await.unwrap().status(), 404);
    assert_eq!(c.delete(edge.url("/v1/events")).send().await.unwrap().status(), 405);
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
        "tessera_edge_refusals_total{outcome=\"not_found\"}",
        "tessera_edge_refusals_total{outcome=\"method_not_allowed\"}",
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

/// With every shared slot busy and more requests queued for them, how long a request
/// carrying an admission token (a fan whose turn has come, buying) and a plain one wait.
async fn lane_waits(reserved: usize) -> (Duration, Duration) {
    let (up, router) = upstream().await;
    up.slow_ms.store(1500, Ordering::SeqCst);
    let limits = tessera_edge_host::config::Limits {
        instances_max: 64,
        concurrent_requests_max: 4,
        priority_requests_reserved: reserved,
        ..Default::default()
    };
    let edge = start_edge_limits(variables(router), strict_from_env(), limits).await;
    let c = browser();
    // Eight slow reads of distinct sections (no cache can merge them): four hold the shared
    // slots, four queue behind them.
    let mut crowd = Vec::new();
    for section in ["A", "B", "C", "D", "E", "F", "G", "H"] {
        let (c, url) =
            (c.clone(), edge.url(&format!("/v1/events/show-1/sections/{section}/seats")));
        crowd.push(tokio::spawn(async move { c.get(url).send().await.map(|r| r.status()) }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let timed = |admission: bool| {
        let c = c.clone();
        let url = edge.url("/v1/events/show-1/holds");
        async move {
            let started = std::time::Instant::now();
            let mut req = c.post(url).json(&serde_json::json!({"seats": ["A-1-1"]}));
            if admission {
                req = req.header("x-tessera-admission", "not-a-real-token");
            }
            let status = req.send().await.unwrap().status();
            assert!(status.is_client_error(), "a forged token is refused, got {status}");
            started.elapsed()
        }
    };
    let (buyer, plain) = tokio::join!(timed(true), timed(false));
    for r in crowd {
        assert!(r.await.unwrap().unwrap().is_success());
    }
    (buyer, plain)
}

#[tokio::test]
async fn admitted_fans_have_a_lane_of_their_own() {
    let (buyer, plain) = lane_waits(2).await;
    assert!(buyer < Duration::from_millis(700), "the buyer waited {buyer:?} behind the crowd");
    assert!(
        plain > Duration::from_millis(1000),
        "a plain request queues with the crowd: {plain:?}"
    );
}

#[tokio::test]
async fn without_reserved_slots_the_buyer_queues_with_the_crowd() {
    let (buyer, _) = lane_waits(0).await;
    assert!(buyer > Duration::from_millis(1000), "no lane, yet the buyer waited only {buyer:?}");
}
