//! The core's HTTP API in-process (`router` + `oneshot`) over a real embedded store and
//! the real payment simulator: a purchase end to end, and bad input everywhere.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tessera_api::queue::{QueuePhase, QueueTicketClaims};
use tessera_api::{CustomerId, EventId, QueueTicketId};
use tessera_common::{OsRng, SeededRng, SystemClock};
use tessera_core::{App, Config};
use tessera_identity::{Keyset, SigningKeyPair};
use tessera_payments::stripe::{StripeClient, StripeConfig};
use tessera_store::embedded::EmbeddedStore;
use tower::ServiceExt as _;

const DEV_SEED: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const WHSEC: &str = "whsec_core_tests";

struct Core {
    router: axum::Router,
    edge: SigningKeyPair,
    _dirs: Vec<tempfile::TempDir>,
}

async fn core() -> Core {
    core_with(|_| {}).await
}

/// A core whose configuration `tweak` adjusts first.
async fn core_with(tweak: impl FnOnce(&mut Config)) -> Core {
    let store_dir = tempfile::tempdir().unwrap();
    let sim_dir = tempfile::tempdir().unwrap();
    let sim_cfg = tessera_paysim::SimConfig {
        journal_path: sim_dir.path().join("journal"),
        secret_key: "sk_test_tessera".into(),
        ..Default::default()
    };
    let (addr, _sim) =
        tessera_paysim::spawn_local(sim_cfg, Arc::new(SystemClock), SeededRng::new(1))
            .await
            .unwrap();
    let edge = SigningKeyPair::derive_for_development("edge-1", "test-edge");
    let dev = SigningKeyPair::from_base64("dev-1", DEV_SEED).unwrap();
    let mut config = Config { mode: tessera_runtime::config::Mode::Local, ..Config::default() };
    config.identity.issuer = "http://127.0.0.1:1/v1/dev".into();
    // Keys pinned: nothing to fetch in-process (the local stack fetches them from the
    // development issuer's JWKS, through the router).
    config.identity.keys = Keyset::new([dev.public()]).to_config_string();
    config.dev_issuer.seed = Some(tessera_runtime::config::Secret::new(DEV_SEED));
    config.queue.edge_keys = Keyset::new([edge.public()]).to_config_string();
    config.payments.base_url = format!("http://{addr}");
    config.payments.secret_key = tessera_runtime::config::Secret::new("sk_test_tessera");
    config.payments.webhook_secret = tessera_runtime::config::Secret::new(WHSEC);
    config.body_limit_bytes = 4096;
    tweak(&mut config);
    let provider = Arc::new(
        StripeClient::new(StripeConfig::new(
            config.payments.base_url.clone(),
            secrecy::SecretString::from("sk_test_tessera".to_owned()),
        ))
        .unwrap(),
    );
    let store = EmbeddedStore::open(store_dir.path()).unwrap();
    let app =
        App::build(config, store, provider, Arc::new(SystemClock), Arc::new(OsRng), None).unwrap();
    let router = tessera_core::http::router(app, axum::Router::new());
    Core { router, edge, _dirs: vec![store_dir, sim_dir] }
}

impl Core {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let resp = self.router.clone().oneshot(req.body(body).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn token(&self, who: &str, operator: bool) -> String {
        let (s, v) = self
            .call(
                "POST",
                "/v1/dev/token",
                None,
                &[],
                Some(json!({"customer_id": who, "operator": operator})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    /// An admission token as an edge issues it; one queue place per fan and event.
    fn admission(&self, event: &str, who: &str, device: &str) -> String {
        let now = tessera_common::Clock::now_ms(&SystemClock);
        let place = who.bytes().chain(event.bytes()).fold(7u128, |h, b| h * 131 + u128::from(b));
        tessera_queue::issue(
            &self.edge,
            &QueueTicketClaims {
                typ: "adm".into(),
                ticket_id: QueueTicketId::from_random(place),
                event_id: EventId::parse(event).unwrap(),
                customer_id: CustomerId::parse(who).unwrap(),
                device: tessera_queue::device_hash(device),
                phase: QueuePhase::Open,
                seq: 0,
                rank: None,
                iat_ms: now,
                exp_ms: now + 600_000,
                kid: String::new(),
                waiting_list: false,
            },
        )
    }
}

fn seat_map() -> Value {
    json!({
        "event_id": "demo-night",
        "name": "Demo Night",
        "venue": "Hall",
        "starts_at": "2027-05-01T20:00:00Z",
        "currency": "EUR",
        "tiers": [{"tier_id": "STD", "name": "Standard", "price_minor": 3000}],
        "sections": [{"section_id": "A", "name": "A", "tier": "STD", "row_count": 4, "seats_per_row": 10}],
        "ga_pools": [{"pool_id": "FLOOR", "name": "Floor", "tier": "STD", "capacity": 50}],
        "open_now": true
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_buys_two_seats_and_nobody_can_hold_them_again() {
    let c = core().await;
    let op = c.token("ops-1", true).await;
    let (s, v) = c.call("POST", "/v1/ops/events", Some(&op), &[], Some(seat_map())).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = c.call("GET", "/v1/events", None, &[], None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["events"][0]["event_id"], "demo-night");

    let fan = c.token("fan-1", false).await;
    let (s, place) = c
        .call(
            "POST",
            "/v1/internal/events/demo-night/queue",
            Some(&fan),
            &[],
            Some(json!({"ticket_id": "q_abcdefghij", "customer_id": "fan-1"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{place}");
    assert_eq!(place["phase"], "open");
    assert!(place["rank"].as_str().is_some_and(|r| r.len() == 24));
    // Joining again keeps the first place.
    let (_, again) = c
        .call(
            "POST",
            "/v1/internal/events/demo-night/queue",
            Some(&fan),
            &[],
            Some(json!({"ticket_id": "q_zzzzzzzzzz", "customer_id": "fan-1"})),
        )
        .await;
    assert_eq!(again["ticket_id"], "q_abcdefghij");
    assert_eq!(again["rank"], place["rank"]);

    let adm = c.admission("demo-night", "fan-1", "device-1");
    let h = [("x-tessera-admission", adm.as_str()), ("x-tessera-device", "device-1")];
    let (s, hold) = c
        .call(
            "POST",
            "/v1/events/demo-night/holds",
            Some(&fan),
            &h,
            Some(json!({"seats": ["A-1-1", "A-1-2"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{hold}");
    let hold_id = hold["hold_id"].as_str().unwrap().to_owned();
    let (s, order) = c
        .call(
            "POST",
            "/v1/orders",
            Some(&fan),
            &[("idempotency-key", "buy-1")],
            Some(json!({"hold_id": hold_id, "payment_method": "pm_card_visa"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{order}");
    assert_eq!(order["state"], "completed");
    assert_eq!(order["tickets"].as_array().unwrap().len(), 2);
    let order_id = order["order_id"].as_str().unwrap();
    let (s, read) = c.call("GET", &format!("/v1/orders/{order_id}"), Some(&fan), &[], None).await;
    assert_eq!((s, &read["state"]), (StatusCode::OK, &json!("completed")));

    let other = c.token("fan-2", false).await;
    let adm2 = c.admission("demo-night", "fan-2", "device-2");
    let h2 = [("x-tessera-admission", adm2.as_str()), ("x-tessera-device", "device-2")];
    let (s, v) = c
        .call(
            "POST",
            "/v1/events/demo-night/holds",
            Some(&other),
            &h2,
            Some(json!({"seats": ["A-1-2"]})),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::CONFLICT, Some("seat_sold")));
    // Someone else's order reads as unknown.
    let (s, v) = c.call("GET", &format!("/v1/orders/{order_id}"), Some(&other), &[], None).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_order")));
    let (_, avail) = c.call("GET", "/v1/events/demo-night/availability", None, &[], None).await;
    assert_eq!(avail["sections"][0]["sold"], 2);
}

/// method, path, token, headers, body, expected status, expected code.
type Case<'a> =
    (&'a str, &'a str, Option<&'a str>, Vec<(&'a str, &'a str)>, Option<Value>, u16, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_code_and_changes_nothing() {
    let c = core().await;
    let op = c.token("ops-1", true).await;
    c.call("POST", "/v1/ops/events", Some(&op), &[], Some(seat_map())).await;
    let fan = c.token("fan-1", false).await;
    let adm = c.admission("demo-night", "fan-1", "d1");
    let h = [("x-tessera-admission", adm.as_str()), ("x-tessera-device", "d1")];
    let hold_uri = "/v1/events/demo-night/holds";
    let cases: Vec<Case<'_>> = vec![
        ("GET", "/v1/nope", None, vec![], None, 404, "not_found"),
        ("DELETE", "/v1/events", None, vec![], None, 405, "method_not_allowed"),
        ("GET", "/v1/events/no-such-event", None, vec![], None, 404, "unknown_event"),
        ("GET", "/v1/events/BAD%20ID", None, vec![], None, 404, "unknown_event"),
        (
            "GET",
            "/v1/events/demo-night/sections/ZZ/seats",
            None,
            vec![],
            None,
            422,
            "unknown_section",
        ),
        (
            "POST",
            hold_uri,
            None,
            h.to_vec(),
            Some(json!({"seats": ["A-1-1"]})),
            401,
            "unauthenticated",
        ),
        (
            "POST",
            hold_uri,
            Some("garbage"),
            h.to_vec(),
            Some(json!({"seats": ["A-1-1"]})),
            401,
            "invalid_token",
        ),
        (
            "POST",
            hold_uri,
            Some(&fan),
            vec![],
            Some(json!({"seats": ["A-1-1"]})),
            403,
            "admission_required",
        ),
        (
            "POST",
            hold_uri,
            Some(&fan),
            vec![("x-tessera-admission", &adm), ("x-tessera-device", "other-device")],
            Some(json!({"seats": ["A-1-1"]})),
            403,
            "queue_token_wrong_device",
        ),
        (
            "POST",
            hold_uri,
            Some(&fan),
            h.to_vec(),
            Some(json!({"seats": ["A-9-9"]})),
            422,
            "unknown_seat",
        ),
        (
            "POST",
            hold_uri,
            Some(&fan),
            h.to_vec(),
            Some(json!({"seats": ["A-1-1", "A-1-1"]})),
            422,
            "duplicate_seat",
        ),
        (
            "POST",
            hold_uri,
            Some(&fan),
            h.to_vec(),
            Some(json!({"seats": ["nonsense"]})),
            400,
            "invalid_request",
        ),
        (
            "POST",
            hold_uri,
            Some(&fan),
            h.to_vec(),
            Some(json!({"pool": "FLOOR", "quantity": 0})),
            422,
            "invalid_quantity",
        ),
        (
            "POST",
            hold_uri,
            Some(&fan),
            h.to_vec(),
            Some(json!({"pool": "FLOOR", "quantity": 7})),
            422,
            "limit_exceeded",
        ),
        (
            "POST",
            hold_uri,
            Some(&fan),
            h.to_vec(),
            Some(json!({"seats": ["A-1-1"], "extra": 1})),
            400,
            "invalid_request",
        ),
        ("POST", "/v1/ops/events", Some(&fan), vec![], Some(seat_map()), 403, "forbidden"),
        ("POST", "/v1/ops/events", Some(&op), vec![], Some(seat_map()), 409, "event_exists"),
        (
            "POST",
            "/v1/orders",
            Some(&fan),
            vec![],
            Some(json!({"hold_id": "h_aaaaaaaaaa", "payment_method": "pm_card_visa"})),
            400,
            "idempotency_key_required",
        ),
        (
            "POST",
            "/v1/orders",
            Some(&fan),
            vec![("idempotency-key", "k")],
            Some(json!({"hold_id": "h_aaaaaaaaaa", "payment_method": "pm_card_visa"})),
            404,
            "unknown_hold",
        ),
        (
            "POST",
            "/v1/webhooks/payments",
            None,
            vec![("stripe-signature", "t=1,v1=00")],
            Some(json!({"id": "evt_1"})),
            400,
            "webhook_signature_invalid",
        ),
        (
            "POST",
            "/v1/checkin",
            Some(&op),
            vec![],
            Some(json!({"qr": "forged.token.here", "gate": "g1"})),
            403,
            "ticket_invalid",
        ),
    ];
    for (method, uri, token, headers, body, status, code) in cases {
        let (s, v) = c.call(method, uri, token, &headers, body.clone()).await;
        assert_eq!(
            (s.as_u16(), v["code"].as_str()),
            (status, Some(code)),
            "{method} {uri} {body:?} -> {v}"
        );
    }
    // Malformed JSON and an oversized body through the same path.
    let req = Request::post(hold_uri)
        .header("authorization", format!("Bearer {fan}"))
        .header("content-type", "application/json")
        .body(Body::from("{\"seats\": ["))
        .unwrap();
    let resp = c.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let big = json!({"seats": vec!["A-1-1"; 1000]});
    let (s, v) = c.call("POST", hold_uri, Some(&fan), &h, Some(big)).await;
    assert_eq!((s.as_u16(), v["code"].as_str()), (413, Some("body_too_large")));
    // None of it changed the inventory.
    let (_, avail) = c.call("GET", "/v1/events/demo-night/availability", None, &[], None).await;
    assert_eq!(avail["sections"][0]["free"], 40);
    assert_eq!(avail["pools"][0]["free"], 50);
}

/// A store that is down (a FoundationDB recovery, a lost coordinator quorum): every
/// transaction fails to start.
#[derive(Clone)]
struct DownStore;

impl tessera_store::Store for DownStore {
    type Trx = <EmbeddedStore as tessera_store::Store>::Trx;
    fn create_trx(&self) -> Result<Self::Trx, tessera_store::StoreError> {
        Err(tessera_store::StoreError::Unavailable("the cluster is recovering".into()))
    }
    fn backend_name(&self) -> &'static str {
        "down"
    }
}

#[tokio::test]
async fn liveness_answers_while_the_store_is_down_and_readiness_does_not() {
    let mut config = Config { mode: tessera_runtime::config::Mode::Local, ..Config::default() };
    config.identity.issuer = "http://127.0.0.1:1/v1/dev".into();
    config.identity.keys =
        Keyset::new([SigningKeyPair::from_base64("dev-1", DEV_SEED).unwrap().public()])
            .to_config_string();
    config.payments.secret_key = tessera_runtime::config::Secret::new("sk_test_tessera");
    config.payments.webhook_secret = tessera_runtime::config::Secret::new(WHSEC);
    config.queue.require_admission = false;
    let provider = Arc::new(
        StripeClient::new(StripeConfig::new(
            "http://127.0.0.1:9".to_owned(),
            secrecy::SecretString::from("sk_test_tessera".to_owned()),
        ))
        .unwrap(),
    );
    let app = App::build(config, DownStore, provider, Arc::new(SystemClock), Arc::new(OsRng), None)
        .unwrap();
    let router = tessera_core::http::router(app, axum::Router::new());
    let status = |path: &'static str| {
        let router = router.clone();
        async move {
            let req = Request::get(path).body(Body::empty()).unwrap();
            router.oneshot(req).await.unwrap().status()
        }
    };
    // A restart would not bring the store back: liveness stays green.
    assert_eq!(status("/livez").await, StatusCode::OK);
    // Readiness takes the core out of rotation until the store answers.
    assert_eq!(status("/healthz").await, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_admits_one_hold_even_when_six_are_sent_at_once() {
    let c = Arc::new(core().await);
    let op = c.token("ops-1", true).await;
    c.call("POST", "/v1/ops/events", Some(&op), &[], Some(seat_map())).await;
    let fan = c.token("fan-1", false).await;
    let adm = c.admission("demo-night", "fan-1", "d1");
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (c, fan, adm) = (c.clone(), fan.clone(), adm.clone());
        tasks.push(tokio::spawn(async move {
            let h = [("x-tessera-admission", adm.as_str()), ("x-tessera-device", "d1")];
            let body = json!({"seats": [format!("A-4-{}", i + 1)]});
            let body = if i % 2 == 0 { body } else { json!({"pool": "FLOOR", "quantity": 1}) };
            c.call("POST", "/v1/events/demo-night/holds", Some(&fan), &h, Some(body)).await
        }));
    }
    let mut created = 0;
    for t in tasks {
        let (s, v) = t.await.unwrap();
        match s.as_u16() {
            201 => created += 1,
            409 => assert_eq!(v["code"], "admission_used", "{v}"),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(created, 1, "one admission, one hold");
    let (_, avail) = c.call("GET", "/v1/events/demo-night/availability", None, &[], None).await;
    let held: u64 = avail["sections"]
        .as_array()
        .unwrap()
        .iter()
        .chain(avail["pools"].as_array().unwrap())
        .map(|s| s["held"].as_u64().unwrap())
        .sum();
    assert_eq!(held, 1, "{avail}");
    // Sent straight to the core again later: still used.
    let h = [("x-tessera-admission", adm.as_str()), ("x-tessera-device", "d1")];
    let (s, v) = c
        .call(
            "POST",
            "/v1/events/demo-night/holds",
            Some(&fan),
            &h,
            Some(json!({"seats": ["A-4-9"]})),
        )
        .await;
    assert_eq!((s.as_u16(), v["code"].as_str()), (409, Some("admission_used")));
    // A retry of the successful request with its idempotency key is not a second hold.
    let adm2 = c.admission("demo-night", "fan-2", "d2");
    let fan2 = c.token("fan-2", false).await;
    let h2 = [
        ("x-tessera-admission", adm2.as_str()),
        ("x-tessera-device", "d2"),
        ("idempotency-key", "hold-once"),
    ];
    let body = json!({"seats": ["A-4-10"]});
    let (s1, first) =
        c.call("POST", "/v1/events/demo-night/holds", Some(&fan2), &h2, Some(body.clone())).await;
    let (s2, again) =
        c.call("POST", "/v1/events/demo-night/holds", Some(&fan2), &h2, Some(body)).await;
    assert_eq!((s1.as_u16(), s2.as_u16()), (201, 201), "{first} {again}");
    assert_eq!(first["hold_id"], again["hold_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_endpoints_need_a_service_credential_not_a_fan_token() {
    const CREDENTIAL: &str = "edge-credential-0123456789abcdef";
    let c = core_with(|cfg| {
        cfg.service_credentials
            .insert("edge".into(), tessera_runtime::config::Secret::new(CREDENTIAL));
    })
    .await;
    let op = c.token("ops-1", true).await;
    c.call("POST", "/v1/ops/events", Some(&op), &[], Some(seat_map())).await;
    let fan = c.token("fan-1", false).await;
    let uri = "/v1/internal/events/demo-night/queue";
    let body = json!({"ticket_id": "q_abcdefghij", "customer_id": "fan-1"});
    for headers in [vec![], vec![("x-tessera-service", "edge-credential-0123456789abcdeX")]] {
        let (s, v) = c.call("POST", uri, Some(&fan), &headers, Some(body.clone())).await;
        assert_eq!((s.as_u16(), v["code"].as_str()), (403, Some("forbidden")), "{headers:?}");
    }
    let (s, v) = c.call("POST", uri, Some(&op), &[], Some(body.clone())).await;
    assert_eq!(
        (s.as_u16(), v["code"].as_str()),
        (403, Some("forbidden")),
        "an operator is not a service"
    );
    let (s, v) =
        c.call("POST", uri, Some(&fan), &[("x-tessera-service", CREDENTIAL)], Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fans_with_the_same_idempotency_key_both_pay() {
    let c = core().await;
    let op = c.token("ops-1", true).await;
    c.call("POST", "/v1/ops/events", Some(&op), &[], Some(seat_map())).await;
    for (who, seat) in [("fan-1", "A-2-1"), ("fan-2", "A-2-2")] {
        let fan = c.token(who, false).await;
        let adm = c.admission("demo-night", who, "d");
        let h = [("x-tessera-admission", adm.as_str()), ("x-tessera-device", "d")];
        let (s, hold) = c
            .call(
                "POST",
                "/v1/events/demo-night/holds",
                Some(&fan),
                &h,
                Some(json!({"seats": [seat]})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{hold}");
        // The README's literal key, used by both fans.
        let (s, order) = c
            .call(
                "POST",
                "/v1/orders",
                Some(&fan),
                &[("idempotency-key", "checkout-1")],
                Some(json!({"hold_id": hold["hold_id"], "payment_method": "pm_card_visa"})),
            )
            .await;
        assert_eq!(
            (s, &order["state"]),
            (StatusCode::CREATED, &json!("completed")),
            "{who}: {order}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_need_an_admin_and_roles_come_from_the_token() {
    let c = core().await;
    let op = c.token("ops-1", true).await;
    c.call("POST", "/v1/ops/events", Some(&op), &[], Some(seat_map())).await;
    let fan = c.token("fan-1", false).await;
    let adm = c.admission("demo-night", "fan-1", "d");
    let h = [("x-tessera-admission", adm.as_str()), ("x-tessera-device", "d")];
    let (_, hold) = c
        .call(
            "POST",
            "/v1/events/demo-night/holds",
            Some(&fan),
            &h,
            Some(json!({"seats": ["A-3-1"]})),
        )
        .await;
    let (_, order) = c
        .call(
            "POST",
            "/v1/orders",
            Some(&fan),
            &[("idempotency-key", "k1")],
            Some(json!({"hold_id": hold["hold_id"], "payment_method": "pm_card_visa"})),
        )
        .await;
    let uri = format!("/v1/ops/orders/{}/refund", order["order_id"].as_str().unwrap());
    for who in [&fan, &op] {
        let (s, v) = c.call("POST", &uri, Some(who), &[], None).await;
        assert_eq!((s.as_u16(), v["code"].as_str()), (403, Some("forbidden")), "{v}");
    }
    let (s, v) = c
        .call(
            "POST",
            "/v1/dev/token",
            None,
            &[],
            Some(json!({"customer_id": "admin-1", "roles": ["admin"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let admin = v["token"].as_str().unwrap().to_owned();
    let (s, v) = c.call("POST", &uri, Some(&admin), &[], None).await;
    assert_eq!((s, &v["state"]), (StatusCode::OK, &json!("refunded")), "{v}");
    let (s, v) = c
        .call(
            "POST",
            "/v1/dev/token",
            None,
            &[],
            Some(json!({"customer_id": "x", "roles": ["root"]})),
        )
        .await;
    assert_eq!((s.as_u16(), v["code"].as_str()), (400, Some("invalid_request")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_delivery_is_accepted_once_and_every_failure_looks_the_same() {
    let c = core().await;
    let now_s = tessera_common::Clock::now_ms(&SystemClock) / 1000;
    let body = json!({"id": "evt_1", "type": "payment_intent.succeeded", "created": now_s,
        "data": {"object": {"object": "balance"}}})
    .to_string();
    let post = |sig: String, body: String| {
        let req = Request::post("/v1/webhooks/payments")
            .header("stripe-signature", sig)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let router = c.router.clone();
        async move {
            let resp = router.oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    let sig = tessera_payments::webhook::sign(WHSEC, now_s, body.as_bytes());
    assert_eq!(post(sig.clone(), body.clone()).await.0, 204);
    // The same signed request again: a replay.
    let replay = post(sig, body.clone()).await;
    // The provider's retry of the same event is signed anew: accepted (and idempotent).
    let retry =
        post(tessera_payments::webhook::sign(WHSEC, now_s + 1, body.as_bytes()), body.clone())
            .await;
    assert_eq!(retry.0, 204);
    let forged =
        post(tessera_payments::webhook::sign("whsec_guess", now_s, body.as_bytes()), body.clone())
            .await;
    let stale =
        post(tessera_payments::webhook::sign(WHSEC, now_s - 3600, body.as_bytes()), body.clone())
            .await;
    let tampered = post(
        tessera_payments::webhook::sign(WHSEC, now_s + 2, body.as_bytes()),
        body.replace("evt_1", "evt_2"),
    )
    .await;
    let not_json =
        post(tessera_payments::webhook::sign(WHSEC, now_s + 3, b"nope"), "nope".into()).await;
    for (name, got) in [
        ("replay", replay),
        ("forged", forged),
        ("stale", stale),
        ("tampered", tampered),
        ("not json", not_json),
    ] {
        assert_eq!(got.0, 400, "{name}");
        assert_eq!(
            got.1,
            r#"{"code":"webhook_signature_invalid","message":"the webhook could not be verified"}"#,
            "{name}: one uniform answer"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_development_issuer_its_routes_do_not_exist() {
    let c = core().await;
    let keys = c.call("GET", "/v1/dev/jwks", None, &[], None).await;
    assert_eq!(keys.0, StatusCode::OK);
    assert_eq!(keys.1["keys"][0]["kty"], "OKP");
    let d = c.call("GET", "/v1/dev/.well-known/openid-configuration", None, &[], None).await;
    assert_eq!(d.1["jwks_uri"], "http://127.0.0.1:1/v1/dev/jwks");
    let c = core_with(|cfg| cfg.dev_issuer.seed = None).await;
    for (m, uri) in [
        ("POST", "/v1/dev/token"),
        ("GET", "/v1/dev/jwks"),
        ("GET", "/v1/dev/.well-known/openid-configuration"),
    ] {
        let (s, v) =
            c.call(m, uri, None, &[], Some(json!({"customer_id": "x", "operator": true}))).await;
        assert_eq!((s.as_u16(), v["code"].as_str()), (404, Some("not_found")), "{m} {uri}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seat_map_larger_than_the_body_limit_creates_its_event() {
    let c = core().await;
    let op = c.token("ops-1", true).await;
    // 600 rows of irregular length: well past the 4,096-byte limit of every other body.
    let rows: Vec<Value> =
        (1..=600).map(|r| json!({"row": r.to_string(), "seats": 20 + r % 7})).collect();
    let mut map = seat_map();
    map["sections"] = json!([{"section_id": "A", "name": "A", "tier": "STD", "rows": rows}]);
    assert!(map.to_string().len() > 3 * 4096);
    let (s, v) = c.call("POST", "/v1/ops/events", Some(&op), &[], Some(map)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, avail) = c.call("GET", "/v1/events/demo-night/availability", None, &[], None).await;
    let seats: u64 = (1..=600u64).map(|r| 20 + r % 7).sum();
    assert_eq!(avail["sections"][0]["free"], seats);
}
