//! The `tessera` binary against a real region router with stand-in region cores.

use std::process::Output;
use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::routing::{get, post};
use serde_json::{Value, json};
use tessera_api::ops::RegionList;
use tessera_common::{Clock as _, SystemClock};
use tessera_identity::{IdentityIssuer, Keyset, SigningKeyPair};
use tessera_region_router::RouterService;
use tessera_region_router::config::{RegionEntry, RouterConfig};

fn summary(event_id: &str, state: &str) -> Value {
    json!({
        "event_id": event_id, "name": "Night Show", "venue": "Arena", "starts_at": "2027-01-01T20:00:00Z",
        "currency": "EUR", "state": state, "capacity": 4, "max_tickets_per_customer": 4,
        "hold_ttl_s": 300, "shuffle_commitment": "ab"
    })
}

async fn core(region: &'static str) -> String {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/v1/ops/events/{event_id}/{action}",
            post(move |Path((event_id, action)): Path<(String, String)>| async move {
                let state = if action == "pause" { "paused" } else { "on_sale" };
                axum::Json(summary(&event_id, state))
            }),
        )
        .route("/v1/events", get(|| async { axum::Json(json!({"events": [summary("e1", "scheduled")]})) }))
        .route(
            "/v1/events/{event_id}",
            get(|Path(event_id): Path<String>| async move {
                axum::Json(json!({
                    "event": summary(&event_id, "on_sale"),
                    "tiers": [{"tier_id": "std", "name": "Standard", "price_minor": 5000}],
                    "sections": [{"section_id": "A", "name": "Stalls", "tier": "std", "rows": [{"row": "1", "seats": 2}]}],
                    "ga_pools": [{"pool_id": "GA", "name": "Floor", "tier": "std", "capacity": 2}],
                }))
            }),
        )
        .route(
            "/v1/events/{event_id}/availability",
            get(|Path(event_id): Path<String>| async move {
                axum::Json(json!({
                    "event_id": event_id, "state": "on_sale", "as_of_ms": 1,
                    "sections": [{"section_id": "A", "capacity": 2, "free": 1, "held": 1, "sold": 0}],
                    "pools": [{"pool_id": "GA", "capacity": 2, "free": 0, "held": 0, "sold": 2}],
                }))
            }),
        )
        .layer(axum::middleware::map_response(move |mut r: axum::response::Response| async move {
            r.headers_mut().insert("x-core", region.parse().unwrap());
            r
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

struct Fixture {
    router_url: String,
    operator: String,
    fan: String,
    _service: Arc<RouterService>,
}

async fn fixture() -> Fixture {
    let issuer = IdentityIssuer {
        issuer: "https://id.test".into(),
        key: SigningKeyPair::derive_for_development("k1", "cli-tests"),
    };
    let mut cfg = RouterConfig {
        mode: tessera_runtime::config::Mode::Local,
        regions: vec![
            RegionEntry { id: "eu-west".parse().unwrap(), url: core("eu-west").await },
            RegionEntry { id: "us-east".parse().unwrap(), url: core("us-east").await },
        ],
        ..Default::default()
    };
    cfg.identity.issuer = "https://id.test".into();
    cfg.identity.keys = Keyset::new([issuer.key.public()]).to_config_string();
    let service = Arc::new(RouterService::start(cfg, Arc::new(SystemClock)).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router_url = format!("http://{}", listener.local_addr().unwrap());
    let app = service.app();
    tokio::spawn(async move { serve_router(listener, app).await });
    let now = SystemClock.now_ms();
    Fixture {
        router_url,
        operator: issuer.mint("op-1".parse().unwrap(), vec!["operator".into()], now, 600),
        fan: issuer.mint("fan-1".parse().unwrap(), vec!["fan".into()], now, 600),
        _service: service,
    }
}

async fn serve_router(listener: tokio::net::TcpListener, app: Router) {
    let _ =
        axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
            .await;
}

/// Runs the binary with `args` and the given environment.
async fn tessera(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(args).env_remove("TESSERA_ROUTER_URL").env_remove("TESSERA_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn operators_drain_and_restore_regions_from_the_command_line() {
    let f = fixture().await;
    let env =
        [("TESSERA_ROUTER_URL", f.router_url.as_str()), ("TESSERA_TOKEN", f.operator.as_str())];

    let out = tessera(&["regions"], &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("REGION"), "{table}");
    assert!(table.contains("eu-west  active"), "{table}");
    assert!(table.contains("state version 0"), "{table}");

    let out = tessera(&["regions", "drain", "eu-west"], &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("eu-west  draining"));

    let out = tessera(&["regions", "drain", "us-east"], &env).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.starts_with("error: 409 last_healthy_region: "), "{err}");

    let out = tessera(&["regions", "drain", "us-east", "--force", "--json"], &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: RegionList = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list.regions.iter().all(|r| r.mode == tessera_api::ops::RegionMode::Draining));
    assert_eq!(list.version, 2);

    for region in ["eu-west", "us-east"] {
        let out = tessera(&["regions", "restore", region], &env).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = tessera(&["regions", "restore", "mars"], &env).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("404 unknown_region"));
    let out = tessera(&["regions", "drain", "Not/A/Region"], &env).await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn refuses_without_an_operator_token() {
    let f = fixture().await;
    let out = tessera(&["--router-url", &f.router_url, "regions", "drain", "eu-west"], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("401 unauthenticated"), "{}", text(&out.stderr));
    let out = tessera(
        &["--router-url", &f.router_url, "--token", &f.fan, "regions", "drain", "eu-west"],
        &[],
    )
    .await;
    assert!(text(&out.stderr).contains("403 forbidden"), "{}", text(&out.stderr));
    let out =
        tessera(&["--token", &f.operator, "regions"], &[("TESSERA_ROUTER_URL", &f.router_url)])
            .await;
    assert!(text(&out.stdout).contains("state version 0"), "nothing changed");
    let out = tessera(&["--router-url", "http://127.0.0.1:1", "regions"], &[]).await;
    assert_eq!(out.status.code(), Some(3), "unreachable");
}

#[tokio::test]
async fn controls_sales_and_shows_events_through_the_router() {
    let f = fixture().await;
    let env =
        [("TESSERA_ROUTER_URL", f.router_url.as_str()), ("TESSERA_TOKEN", f.operator.as_str())];
    let out = tessera(&["sale", "open", "e1"], &env).await;
    assert_eq!(text(&out.stdout), "e1: sale is on sale\n", "{}", text(&out.stderr));
    let out = tessera(&["sale", "pause", "e1"], &env).await;
    assert_eq!(text(&out.stdout), "e1: sale is paused\n");
    let out = tessera(&["sale", "resume", "e1", "--json"], &env).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "on_sale");

    let out = tessera(&["events", "list"], &env).await;
    expect_test::expect![[r#"
        EVENT  STATE      CAPACITY  STARTS                NAME
        e1     scheduled  4         2027-01-01T20:00:00Z  Night Show @ Arena
    "#]]
    .assert_eq(&text(&out.stdout));
    let out = tessera(&["events", "show", "e1"], &env).await;
    expect_test::expect![[r#"
        e1 — Night Show @ Arena
        starts 2027-01-01T20:00:00Z, sale on sale, capacity 4
        at most 4 tickets per fan, holds last 300 s, prices in EUR

        SECTION  KIND      CAPACITY  FREE  HELD  SOLD  NAME
        A        seated    2         1     1     0     Stalls
        GA       standing  2         0     0     2     Floor
    "#]]
    .assert_eq(&text(&out.stdout));
}
