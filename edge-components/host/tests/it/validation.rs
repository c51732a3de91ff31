use crate::support::*;

async fn call(req: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

#[tokio::test]
async fn malformed_requests_get_coded_errors_and_never_reach_the_region() {
    let (up, router) = upstream().await;
    let edge = start_edge(variables(router)).await;
    let c = browser();
    let (s, b) = call(c.get(edge.url("/nope"))).await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")));
    assert_eq!(b.as_object().unwrap().len(), 2, "error bodies are exactly code and message");
    let (s, b) = call(c.delete(edge.url("/v1/events"))).await;
    assert_eq!((s, b["code"].as_str()), (405, Some("method_not_allowed")));
    let (s, b) = call(
        c.post(edge.url("/v1/dev/token")).header("content-type", "application/json").body("{nope"),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (400, Some("malformed_json")));
    let big = format!(r#"{{"customer_id":"{}"}}"#, "a".repeat(40_000));
    let (s, b) = call(
        c.post(edge.url("/v1/dev/token")).header("content-type", "application/json").body(big),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (413, Some("body_too_large")));
    let (s, b) = call(
        c.post(edge.url("/v1/orders"))
            .bearer_auth("a.b.c")
            .header("content-type", "application/json")
            .body(r#"{"hold_id":"h_abcdefgh12","payment_method":"pm_x"}"#),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (400, Some("idempotency_key_required")));
    // Fans cannot set the edge's own headers.
    let (s, _) = call(c.get(edge.url("/v1/events")).header("x-tessera-bot-score", "0")).await;
    assert_eq!(s, 200);
    assert_eq!(up.holds.lock().unwrap().len(), 0);
}
