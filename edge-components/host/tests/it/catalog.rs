use std::sync::atomic::Ordering;

use crate::support::*;

#[tokio::test]
async fn serves_seat_maps_from_the_cache_and_stale_when_the_region_is_down() {
    let (up, router) = upstream().await;
    let edge = start_edge(variables(router)).await;
    let c = browser();
    let url = edge.url("/v1/events/show-1/sections/A/seats");
    let first = c.get(&url).header("x-tessera-device", "d1").send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("x-tessera-cache").is_none(), "metric headers are stripped");
    let body: serde_json::Value = first.json().await.unwrap();
    assert_eq!(body["rows"][0]["statuses"], "ffhs");
    let second = c.get(&url).header("x-tessera-device", "d1").send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(up.seat_reads.load(Ordering::SeqCst), 1, "second read came from the edge cache");
    assert!(second.headers().get("x-tessera-stale").is_none());

    // Invalidate, take the region down: the edge serves what it has, marked stale.
    edge.edge
        .kv()
        .set("default", "inv:counts:show-1", (now_ms() + 1).to_string().into_bytes())
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    up.down.store(true, Ordering::SeqCst);
    let stale = c.get(&url).header("x-tessera-device", "d1").send().await.unwrap();
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.headers()["x-tessera-stale"], "true");

    // Nothing cached and the region down: a clear 503.
    let none = c.get(edge.url("/v1/events")).send().await.unwrap();
    assert_eq!(none.status(), 503);
    let body: serde_json::Value = none.json().await.unwrap();
    assert!(body["code"] == "region_unavailable" || body["code"] == "unavailable", "{body}");
}
