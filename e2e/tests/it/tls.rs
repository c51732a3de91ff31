//! HTTPS between the router and the cores: the cores serve TLS only and require the client
//! certificate the router presents (mutual TLS, certificates made for the run). A whole
//! purchase goes edge → router → core over it; a plaintext request and a client without a
//! certificate are refused by the core, and counted.

use std::time::Duration;

use serde_json::json;
use tessera_e2e::fan::{Api, Fan, Operator};

use crate::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_router_reaches_the_cores_over_mutual_tls_and_nothing_else_does() {
    let mut stack = start("tls", |o| o.core_tls = true).await;
    let edge = Api::new(stack.http.clone(), stack.urls.edge.clone().unwrap());
    let router = Api::new(stack.http.clone(), stack.urls.router.clone());

    // Every operator call and every fan call below reaches a core only through the
    // router's TLS client.
    let op = Operator::new(router.clone()).await.unwrap();
    let mut map = tessera_e2e::demo_seat_map(&stack.options.repo_root).unwrap();
    map["event_id"] = json!("tls-night");
    let r = op.create_event(&map).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(op.sale("tls-night", "open").await.unwrap().ok());
    op.admission_rate("tls-night", 100.0).await.unwrap();
    let mut fan = Fan::new(edge.clone(), "fan-tls").await.unwrap();
    let joined = fan.join("tls-night").await.unwrap();
    assert_eq!(joined.status, 200, "{}", joined.body);
    fan.wait_admitted("tls-night", Duration::from_secs(20)).await.unwrap();
    let hold = fan.hold("tls-night", &json!({"seats": ["A-3-7"]}), None).await.unwrap();
    assert_eq!(hold.status, 201, "{}", hold.body);
    let hold_id = hold.body["hold_id"].as_str().unwrap().to_owned();
    let order = fan.checkout(&hold_id, "pm_card_visa", "tls-buy-1").await.unwrap();
    assert_eq!(order.status, 201, "{}", order.body);
    assert_eq!(order.body["state"], "completed", "{}", order.body);

    let core = stack.urls.cores.values().next().unwrap().clone();
    assert!(core.starts_with("https://"), "{core}");
    let failures = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("tessera_http_tls_handshake_failures_total "))
            .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
    };
    let metrics = || async {
        let r = stack.http.get(format!("{core}/metrics")).send().await.unwrap();
        assert!(r.status().is_success());
        r.text().await.unwrap()
    };
    let before = failures(&metrics().await);

    // Plaintext to the core's port: no HTTP answer.
    let plain = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let port = core.rsplit(':').next().unwrap();
    let r = plain.get(format!("http://127.0.0.1:{port}/healthz")).send().await;
    assert!(r.is_err(), "the core answered plaintext HTTP: {r:?}");
    // TLS that trusts the core but presents no client certificate: refused.
    let pki = stack.pki.clone();
    let anonymous = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(pki.ca().unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = anonymous.get(format!("{core}/healthz")).send().await;
    assert!(r.is_err(), "the core answered a client without a certificate: {r:?}");
    // Both refusals were handshakes that failed, and the core counted them.
    let after = failures(&metrics().await);
    assert!(after >= before + 2, "handshake failures {before} -> {after}");
    stack.stop();
}
