//! The walking skeleton: one fan buys two seats through the edge, and another region's
//! NATS leaf hears that they were sold.

use std::time::Duration;

use futures::StreamExt as _;
use serde_json::json;
use tessera_e2e::fan::{Api, Fan, Operator};

use crate::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fan_buys_two_seats_through_the_edge_and_the_other_region_hears_of_it() {
    let mut stack = start("purchase", |_| {}).await;
    let edge = Api::new(stack.http.clone(), stack.urls.edge.clone().unwrap());
    let router = Api::new(stack.http.clone(), stack.urls.router.clone());

    // Subscribers on every region's leaf node, before anything is sold.
    let mut subs = Vec::new();
    for (region, url) in &stack.urls.nats_leaves {
        let client = stack.nats_client(url).await.unwrap();
        let sub = client.subscribe("tessera.*.seats.sold.>").await.unwrap();
        client.flush().await.unwrap();
        subs.push((region.clone(), client, sub));
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // interest crosses the hub

    let op = Operator::new(router.clone()).await.unwrap();
    let mut map = tessera_e2e::demo_seat_map(&stack.options.repo_root).unwrap();
    map["event_id"] = json!("skeleton-night");
    let r = op.create_event(&map).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let r = op.sale("skeleton-night", "open").await.unwrap();
    assert!(r.ok(), "{}", r.body);
    op.admission_rate("skeleton-night", 100.0).await.unwrap();

    let mut fan = Fan::new(edge.clone(), "fan-skeleton").await.unwrap();
    let events = edge.get("/v1/events", &[]).await.unwrap();
    assert!(
        events.body["events"].as_array().unwrap().iter().any(|e| e["event_id"] == "skeleton-night"),
        "{}",
        events.body
    );
    let map = edge.get("/v1/events/skeleton-night", &[]).await.unwrap();
    assert_eq!(map.status, 200);
    assert_eq!(map.body["sections"].as_array().unwrap().len(), 6);

    let joined = fan.join("skeleton-night").await.unwrap();
    assert_eq!(joined.status, 200, "{}", joined.body);
    fan.wait_admitted("skeleton-night", Duration::from_secs(20)).await.unwrap();

    let hold =
        fan.hold("skeleton-night", &json!({"seats": ["A-3-7", "A-3-8"]}), None).await.unwrap();
    assert_eq!(hold.status, 201, "{}", hold.body);
    let hold_id = hold.body["hold_id"].as_str().unwrap().to_owned();
    let order = fan.checkout(&hold_id, "pm_card_visa", "skeleton-buy-1").await.unwrap();
    assert_eq!(order.status, 201, "{}", order.body);
    assert_eq!(order.body["state"], "completed");
    let order_id = order.body["order_id"].as_str().unwrap().to_owned();
    let read = fan.order(&order_id).await.unwrap();
    assert_eq!(read.body["state"], "completed");
    assert_eq!(read.body["tickets"].as_array().unwrap().len(), 2);
    let served_by = order.served_by.clone().unwrap_or_default();

    // The seats are gone for everyone else.
    let mut other = Fan::new(edge.clone(), "fan-late").await.unwrap();
    other.join("skeleton-night").await.unwrap();
    other.wait_admitted("skeleton-night", Duration::from_secs(20)).await.unwrap();
    let r = other.hold("skeleton-night", &json!({"seats": ["A-3-8"]}), None).await.unwrap();
    assert_eq!((r.status, r.code()), (409, Some("seat_sold")), "{}", r.body);

    // A leaf node of another region than the one that sold heard about it.
    let mut heard_elsewhere = false;
    for (region, _client, sub) in subs.iter_mut() {
        let got = tokio::time::timeout(Duration::from_secs(10), sub.next()).await;
        if let Ok(Some(msg)) = got {
            let ev: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
            assert_eq!(ev["order_id"], order_id.as_str());
            if region != &served_by {
                heard_elsewhere = true;
            }
        }
    }
    assert!(heard_elsewhere, "no other region's leaf heard of the sale (served by {served_by})");

    let warnings = stack.unexpected_warnings(&[]);
    assert!(warnings.is_empty(), "unexpected WARN/ERROR lines:\n{}", warnings.join("\n"));
    stack.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_json_errors_with_codes_through_the_edge_and_directly() {
    let mut stack = start("badinput", |_| {}).await;
    let edge = Api::new(stack.http.clone(), stack.urls.edge.clone().unwrap());
    let core = Api::new(stack.http.clone(), stack.urls.cores.values().next().unwrap().clone());
    let router = Api::new(stack.http.clone(), stack.urls.router.clone());
    let op = Operator::new(router.clone()).await.unwrap();
    let mut map = tessera_e2e::demo_seat_map(&stack.options.repo_root).unwrap();
    map["event_id"] = json!("bad-input-night");
    op.create_event(&map).await.unwrap();
    op.sale("bad-input-night", "open").await.unwrap();
    let fan = Fan::new(edge.clone(), "fan-bad").await.unwrap();
    let auth = format!("Bearer {}", fan.token);

    for api in [&edge, &core] {
        let r = api.get("/v1/definitely-not-a-route", &[]).await.unwrap();
        assert_eq!((r.status, r.code()), (404, Some("not_found")), "{} {}", api.base, r.body);
        let r = api.get("/v1/events/no-such-event", &[]).await.unwrap();
        assert_eq!((r.status, r.code()), (404, Some("unknown_event")), "{} {}", api.base, r.body);
        // Malformed JSON.
        let resp = api
            .http
            .post(format!("{}/v1/events/bad-input-night/holds", api.base))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body("{\"seats\": [")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("malformed_json")),
            "{} {body}",
            api.base
        );
        // Oversized body.
        let big = json!({"seats": vec!["A-1-1"; 20_000]});
        let r = api
            .post("/v1/events/bad-input-night/holds", &[("authorization", &auth)], &big)
            .await
            .unwrap();
        assert_eq!((r.status, r.code()), (413, Some("body_too_large")), "{} {}", api.base, r.body);
    }
    // Unknown seat ids, past the waiting room.
    let mut fan = fan;
    fan.join("bad-input-night").await.unwrap();
    fan.wait_admitted("bad-input-night", Duration::from_secs(20)).await.unwrap();
    let r = fan.hold("bad-input-night", &json!({"seats": ["A-99-1"]}), None).await.unwrap();
    assert_eq!((r.status, r.code()), (422, Some("unknown_seat")), "{}", r.body);
    let avail = edge.get("/v1/events/bad-input-night/availability", &[]).await.unwrap();
    assert_eq!(avail.body["sections"][0]["held"], 0, "{}", avail.body);
    stack.stop();
}
