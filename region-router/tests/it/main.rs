//! Integration tests of the region router over real HTTP: stand-in region cores (axum on
//! free ports that can be killed and restarted), routers as in production, and real NATS
//! servers for replication and heartbeats.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::routing::{any, get, post};
use futures::StreamExt as _;
use serde_json::Value;
use tessera_api::RegionId;
use tessera_api::ops::{RegionList, RegionMode};
use tessera_common::SystemClock;
use tessera_identity::{IdentityIssuer, SigningKeyPair};
use tessera_local_nats::{LocalNats, LocalNatsOptions};
use tessera_region_router::RouterService;
use tessera_region_router::config::{RegionEntry, RouterConfig};
use tokio::task::JoinSet;

const ISSUER: &str = "https://id.tessera.test";

fn region(s: &str) -> RegionId {
    RegionId::parse(s).unwrap()
}

fn init_telemetry() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let cfg = tessera_runtime::telemetry::TelemetryConfig {
            // Spans must be enabled for trace context to flow (the filter applies to them too).
            log_filter: "warn,tessera_runtime=info,tessera_region_router=info".into(),
            log_format: "pretty".into(),
            otlp_endpoint: None,
        };
        let guard = tessera_runtime::telemetry::init("router-test", &cfg).unwrap();
        std::mem::forget(guard);
    });
}

// ---- stand-in region cores --------------------------------------------------------------

#[derive(Default)]
struct UpstreamStats {
    hits: AtomicU64,
    posts: AtomicU64,
    flaky: AtomicBool,
}

/// A stand-in core of one region. `kill` drops the listener and every open connection
/// (what a kill -9 does to its peers); `restart` listens on the same port again.
struct Upstream {
    region: String,
    addr: SocketAddr,
    stats: Arc<UpstreamStats>,
    conns: Option<JoinSet<()>>,
}

fn upstream_app(region: String, stats: Arc<UpstreamStats>) -> Router {
    async fn echo(
        State((region, stats)): State<(String, Arc<UpstreamStats>)>,
        headers: HeaderMap,
    ) -> axum::Json<Value> {
        stats.hits.fetch_add(1, Ordering::SeqCst);
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        axum::Json(serde_json::json!({
            "region": region,
            "traceparent": h("traceparent"),
            "forwarded_for": h("x-forwarded-for"),
            "device": h("x-tessera-device"),
        }))
    }
    async fn create(
        State((region, stats)): State<(String, Arc<UpstreamStats>)>,
        body: String,
    ) -> axum::Json<Value> {
        stats.hits.fetch_add(1, Ordering::SeqCst);
        stats.posts.fetch_add(1, Ordering::SeqCst);
        axum::Json(serde_json::json!({"region": region, "body": body}))
    }
    async fn hang(State((_, stats)): State<(String, Arc<UpstreamStats>)>) -> &'static str {
        stats.hits.fetch_add(1, Ordering::SeqCst);
        stats.posts.fetch_add(1, Ordering::SeqCst);
        futures::future::pending::<()>().await;
        "never"
    }
    async fn flaky(
        State((region, stats)): State<(String, Arc<UpstreamStats>)>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse as _;
        stats.hits.fetch_add(1, Ordering::SeqCst);
        if stats.flaky.load(Ordering::SeqCst) {
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response()
        } else {
            axum::Json(serde_json::json!({"region": region})).into_response()
        }
    }
    async fn payment(
        State((_, stats)): State<(String, Arc<UpstreamStats>)>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse as _;
        stats.hits.fetch_add(1, Ordering::SeqCst);
        (
            axum::http::StatusCode::BAD_GATEWAY,
            axum::Json(
                serde_json::json!({"code": "payment_failed", "message": "card network down"}),
            ),
        )
            .into_response()
    }
    async fn events() -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
        let stream = futures::stream::unfold(0u32, |n| async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            Some((Ok(Event::default().data(format!("tick {n}"))), n + 1))
        });
        Sse::new(stream)
    }
    async fn slow(
        State((region, stats)): State<(String, Arc<UpstreamStats>)>,
    ) -> axum::Json<Value> {
        stats.hits.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(800)).await;
        axum::Json(serde_json::json!({"region": region}))
    }
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/slow", post(slow))
        .route("/v1/echo", any(echo))
        .route("/v1/things", post(create))
        .route("/v1/ops/events", post(create))
        .route("/v1/hang", any(hang))
        .route("/v1/flaky", any(flaky))
        .route("/v1/pay", post(payment))
        .route("/v1/events", get(events))
        .with_state((region, stats))
}

impl Upstream {
    async fn start(region: &str) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut u = Upstream { region: region.into(), addr, stats: Arc::default(), conns: None };
        u.serve(listener);
        u
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = upstream_app(self.region.clone(), self.stats.clone());
        let mut set = JoinSet::new();
        set.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let app = app.clone();
                conns.spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            use tower::ServiceExt as _;
                            app.clone().oneshot(req.map(axum::body::Body::new))
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, svc)
                    .await;
                });
            }
        });
        self.conns = Some(set);
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn kill(&mut self) {
        // Dropping the set aborts the accept loop, which owns (and so aborts) every
        // connection task: sockets close, the port refuses connections.
        self.conns = None;
    }

    async fn restart(&mut self) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        let mut tries = 0;
        loop {
            match socket.bind(self.addr) {
                Ok(()) => break,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        }
        let listener = socket.listen(1024).unwrap();
        self.serve(listener);
    }

    fn hits(&self) -> u64 {
        self.stats.hits.load(Ordering::SeqCst)
    }
}

// ---- routers ----------------------------------------------------------------------------

fn operator_issuer() -> IdentityIssuer {
    IdentityIssuer {
        issuer: ISSUER.into(),
        key: SigningKeyPair::derive_for_development("k1", "router-tests"),
    }
}

fn token(roles: &[&str]) -> String {
    let now = tessera_common::Clock::now_ms(&SystemClock);
    operator_issuer().mint(
        "op-1".parse().unwrap(),
        roles.iter().map(|r| r.to_string()).collect(),
        now,
        600,
    )
}

fn config(upstreams: &[&Upstream]) -> RouterConfig {
    let mut cfg = RouterConfig {
        mode: tessera_runtime::config::Mode::Local,
        listen: "127.0.0.1:0".into(),
        pop: Some("fra".into()),
        regions: upstreams
            .iter()
            .map(|u| RegionEntry { id: region(&u.region), url: u.url() })
            .collect(),
        ..Default::default()
    };
    let present = |r: &str| upstreams.iter().any(|u| u.region == r);
    for (pop, row) in
        [("fra", [("eu-west", 10), ("us-east", 90)]), ("iad", [("us-east", 5), ("eu-west", 85)])]
    {
        let row: BTreeMap<String, u32> =
            row.into_iter().filter(|(r, _)| present(r)).map(|(r, ms)| (r.to_owned(), ms)).collect();
        cfg.latency_ms.insert(pop.into(), row);
    }
    cfg.identity.issuer = ISSUER.into();
    cfg.identity.keys =
        tessera_identity::Keyset::new([operator_issuer().key.public()]).to_config_string();
    cfg.probe.interval_ms = 100;
    cfg.breaker.open_ms = 300;
    cfg.breaker.open_ms_max = 600;
    cfg
}

/// A router served on a free port; stops when dropped.
struct RunningRouter {
    url: String,
    service: Arc<RouterService>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for RunningRouter {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start_router(cfg: RouterConfig) -> RunningRouter {
    init_telemetry();
    let service = Arc::new(RouterService::start(cfg, Arc::new(SystemClock)).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = service.app();
    let server = tokio::spawn(async move {
        let _ = tessera_runtime::http::serve(listener, app, std::future::pending()).await;
    });
    RunningRouter { url, service, server }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

/// `(status, served-by, json body)` of a GET with extra headers.
async fn get_json(url: &str, headers: &[(&str, &str)]) -> (u16, Option<String>, Value) {
    let mut req = http().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let served = resp
        .headers()
        .get("x-tessera-region-served")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, served, body)
}

async fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn ops(
    router: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{router}{path}");
    let mut req = match method {
        "GET" => http().get(url),
        _ => http().post(url),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
}

fn mode_of(list: &Value, r: &str) -> String {
    let list: RegionList = serde_json::from_value(list.clone()).unwrap();
    let status = list.regions.into_iter().find(|s| s.region.as_str() == r).unwrap();
    match status.mode {
        RegionMode::Active => "active".into(),
        RegionMode::Draining => "draining".into(),
    }
}

// ---- tests ------------------------------------------------------------------------------

#[tokio::test]
async fn routes_each_fan_to_the_nearest_region_for_its_pop() {
    let eu = Upstream::start("eu-west").await;
    let us = Upstream::start("us-east").await;
    let router = start_router(config(&[&us, &eu])).await;
    let echo = format!("{}/v1/echo", router.url);

    let (status, served, body) = get_json(&echo, &[]).await;
    assert_eq!((status, served.as_deref()), (200, Some("eu-west")), "the router's own PoP is fra");
    assert_eq!(body["region"], "eu-west");
    let (_, served, _) = get_json(&echo, &[("fly-region", "iad")]).await;
    assert_eq!(served.as_deref(), Some("us-east"));
    let (_, served, _) = get_json(&echo, &[("x-tessera-pop", "iad")]).await;
    assert_eq!(served.as_deref(), Some("us-east"));
    let (_, served, _) =
        get_json(&echo, &[("fly-region", "iad"), ("x-tessera-region", "eu-west")]).await;
    assert_eq!(served.as_deref(), Some("eu-west"), "an explicit region wins");
    let (_, _, body) = get_json(&echo, &[("x-tessera-device", "dev-1")]).await;
    assert_eq!(body["device"], "dev-1", "end-to-end headers pass through");
    assert_eq!(body["forwarded_for"], "127.0.0.1");

    let resp = http().get(format!("{}/v1/events", router.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut chunks = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(2), chunks.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("tick 0"),
        "server-sent events stream through unbuffered"
    );
}

#[tokio::test]
async fn continues_the_callers_trace_upstream() {
    let eu = Upstream::start("eu-west").await;
    let router = start_router(config(&[&eu])).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (_, _, body) =
        get_json(&format!("{}/v1/echo", router.url), &[("traceparent", parent)]).await;
    let upstream = body["traceparent"].as_str().expect("a traceparent goes upstream");
    let parts: Vec<&str> = upstream.split('-').collect();
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
    assert_ne!(parts[2], "00f067aa0ba902b7", "the router's own span is the parent");
}

#[tokio::test]
async fn fails_over_at_once_when_a_region_dies_and_takes_it_back_when_it_returns() {
    let mut eu = Upstream::start("eu-west").await;
    let us = Upstream::start("us-east").await;
    let router = start_router(config(&[&us, &eu])).await;
    let echo = format!("{}/v1/echo", router.url);
    assert_eq!(get_json(&echo, &[]).await.1.as_deref(), Some("eu-west"));

    eu.kill();
    let killed = Instant::now();
    // The very next request succeeds, even a POST without a key: the refused connection
    // proves the dead region never saw it, so it moves on at once.
    let resp = http().post(format!("{}/v1/things", router.url)).body("x").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-tessera-region-served"], "us-east");
    let (status, served, _) = get_json(&echo, &[]).await;
    assert_eq!((status, served.as_deref()), (200, Some("us-east")));
    let failover = killed.elapsed();
    assert!(failover < Duration::from_millis(500), "failover took {failover:?}");
    let (_, list) =
        ops(&router.url, "GET", "/v1/ops/regions", Some(&token(&["operator"])), None).await;
    let eu_status = list["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "eu-west")
        .unwrap()
        .clone();
    assert_eq!(eu_status["healthy"], false);
    assert_eq!(eu_status["breaker"], "open");

    let hits_while_down = eu.hits();
    for _ in 0..20 {
        assert_eq!(get_json(&echo, &[]).await.1.as_deref(), Some("us-east"));
    }
    assert_eq!(eu.hits(), hits_while_down);

    eu.restart().await;
    let back = wait_until("traffic returns to eu-west", Duration::from_secs(5), async || {
        get_json(&echo, &[]).await.1.as_deref() == Some("eu-west")
    })
    .await;
    eprintln!("traffic returned {back:?} after the restart");
}

#[tokio::test]
async fn repeats_a_request_on_another_region_only_when_that_is_safe() {
    let mut eu = Upstream::start("eu-west").await;
    let us = Upstream::start("us-east").await;
    let router = start_router(config(&[&us, &eu])).await;

    // A region that answers 503 without a Tessera error code is failing.
    eu.stats.flaky.store(true, Ordering::SeqCst);
    let flaky = format!("{}/v1/flaky", router.url);
    let (status, served, _) = get_json(&flaky, &[]).await;
    assert_eq!((status, served.as_deref()), (200, Some("us-east")), "a GET is repeated");
    let resp = http().post(&flaky).send().await.unwrap();
    assert_eq!(resp.status(), 503, "a POST without a key is not repeated");
    assert_eq!(resp.headers()["x-tessera-region-served"], "eu-west");
    let resp = http().post(&flaky).header("idempotency-key", "k-1").send().await.unwrap();
    assert_eq!(resp.status(), 200, "a POST with a key is repeated");
    assert_eq!(resp.headers()["x-tessera-region-served"], "us-east");
    eu.stats.flaky.store(false, Ordering::SeqCst);
    let op = token(&["operator"]);
    wait_until("eu-west's breaker closes again", Duration::from_secs(3), async || {
        let (_, list) = ops(&router.url, "GET", "/v1/ops/regions", Some(&op), None).await;
        list["regions"].as_array().unwrap().iter().all(|r| r["breaker"] == "closed")
    })
    .await;

    // A Tessera error about the request itself is an answer, not a region failure.
    let us_hits = us.hits();
    let resp = http()
        .post(format!("{}/v1/pay", router.url))
        .header("idempotency-key", "k-2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "payment_failed");
    assert_eq!(us.hits(), us_hits, "not sent to a second region");

    // The region dies while it handles a request.
    let hang = format!("{}/v1/hang", router.url);
    let post = tokio::spawn({
        let hang = hang.clone();
        async move { http().post(hang).send().await.unwrap() }
    });
    let keyed = tokio::spawn({
        let hang = hang.clone();
        async move { http().post(hang).header("idempotency-key", "k-3").send().await.unwrap() }
    });
    wait_until("both requests reach eu-west", Duration::from_secs(5), async || {
        eu.stats.posts.load(Ordering::SeqCst) >= 2
    })
    .await;
    let us_posts = us.stats.posts.load(Ordering::SeqCst);
    eu.kill();
    let post = post.await.unwrap();
    assert_eq!(post.status(), 503);
    let body: Value = post.json().await.unwrap();
    assert_eq!(body["code"], "region_unavailable");
    assert!(body["message"].as_str().unwrap().contains("outcome is unknown"));
    // The keyed request was repeated on us-east (where /v1/hang hangs as well, so it is
    // still in flight there: the count shows it arrived).
    wait_until("the keyed request reaches us-east", Duration::from_secs(5), async || {
        us.stats.posts.load(Ordering::SeqCst) == us_posts + 1
    })
    .await;
    keyed.abort();
}

#[tokio::test]
async fn the_breaker_opens_after_failures_and_closes_after_a_good_probe() {
    let eu = Upstream::start("eu-west").await;
    let us = Upstream::start("us-east").await;
    let router = start_router(config(&[&us, &eu])).await;
    let flaky = format!("{}/v1/flaky", router.url);
    eu.stats.flaky.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(get_json(&flaky, &[]).await.1.as_deref(), Some("us-east"));
    }
    let tok = token(&["operator"]);
    let breaker = async |r: &str| {
        let (_, list) = ops(&router.url, "GET", "/v1/ops/regions", Some(&tok), None).await;
        let s =
            list["regions"].as_array().unwrap().iter().find(|x| x["region"] == r).unwrap().clone();
        s["breaker"].as_str().unwrap().to_owned()
    };
    assert_eq!(breaker("eu-west").await, "open");
    let hits = eu.hits();
    assert_eq!(get_json(&flaky, &[]).await.1.as_deref(), Some("us-east"));
    assert_eq!(eu.hits(), hits, "an open breaker keeps requests away");

    // Its health endpoint is fine, so after open_ms the next probe closes it.
    eu.stats.flaky.store(false, Ordering::SeqCst);
    wait_until("the breaker closes again", Duration::from_secs(3), async || {
        breaker("eu-west").await == "closed"
    })
    .await;
    assert_eq!(get_json(&flaky, &[]).await.1.as_deref(), Some("eu-west"));
}

#[tokio::test]
async fn operator_calls_without_an_operator_token_are_refused_and_change_nothing() {
    let eu = Upstream::start("eu-west").await;
    let us = Upstream::start("us-east").await;
    let router = start_router(config(&[&us, &eu])).await;
    let drain = "/v1/ops/regions/eu-west/drain";
    let version = || router.service.regions().version;
    let other_key = IdentityIssuer {
        issuer: ISSUER.into(),
        key: SigningKeyPair::derive_for_development("k1", "attacker"),
    };
    let forged = other_key.mint(
        "op-1".parse().unwrap(),
        vec!["operator".into()],
        tessera_common::Clock::now_ms(&SystemClock),
        600,
    );
    let expired =
        operator_issuer().mint("op-1".parse().unwrap(), vec!["operator".into()], 1_000_000, 60);

    let cases: Vec<(Option<String>, u16, &str)> = vec![
        (None, 401, "unauthenticated"),
        (Some("not-a-jwt".into()), 401, "invalid_token"),
        (Some(forged), 401, "invalid_token"),
        (Some(expired), 401, "token_expired"),
        (Some(token(&["fan"])), 403, "forbidden"),
    ];
    for (tok, status, code) in cases {
        for (method, path) in [
            ("POST", drain),
            ("POST", "/v1/ops/regions/eu-west/restore"),
            ("GET", "/v1/ops/regions"),
        ] {
            let (got, body) = ops(&router.url, method, path, tok.as_deref(), None).await;
            assert_eq!(
                (got, body["code"].as_str().unwrap_or_default()),
                (status, code),
                "{method} {path} {tok:?}"
            );
        }
    }
    let resp = http()
        .post(format!("{}{drain}", router.url))
        .header("authorization", "Basic b3A6cHc=")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(version(), 0, "nothing changed");
    assert_eq!(
        get_json(&format!("{}/v1/echo", router.url), &[]).await.1.as_deref(),
        Some("eu-west")
    );

    let op = token(&["operator"]);
    let (status, body) =
        ops(&router.url, "POST", "/v1/ops/regions/mars/drain", Some(&op), None).await;
    assert_eq!((status, body["code"].as_str().unwrap()), (404, "unknown_region"));
    let (status, body) =
        ops(&router.url, "POST", drain, Some(&op), Some(serde_json::json!({"force": "yes"}))).await;
    assert_eq!((status, body["code"].as_str().unwrap()), (400, "invalid_request"));
    assert_eq!(version(), 0);
}

#[tokio::test]
async fn draining_the_last_healthy_region_is_refused_unless_forced() {
    let eu = Upstream::start("eu-west").await;
    let us = Upstream::start("us-east").await;
    let router = start_router(config(&[&us, &eu])).await;
    let op = token(&["operator"]);
    let echo = format!("{}/v1/echo", router.url);

    let (status, list) =
        ops(&router.url, "POST", "/v1/ops/regions/eu-west/drain", Some(&op), None).await;
    assert_eq!(status, 200);
    assert_eq!(mode_of(&list, "eu-west"), "draining");
    assert_eq!(
        get_json(&echo, &[("x-tessera-region", "eu-west")]).await.1.as_deref(),
        Some("us-east")
    );
    // Draining twice is fine and changes nothing.
    let version = router.service.regions().version;
    assert_eq!(
        ops(&router.url, "POST", "/v1/ops/regions/eu-west/drain", Some(&op), None).await.0,
        200
    );
    assert_eq!(router.service.regions().version, version);

    let (status, body) =
        ops(&router.url, "POST", "/v1/ops/regions/us-east/drain", Some(&op), None).await;
    assert_eq!((status, body["code"].as_str().unwrap()), (409, "last_healthy_region"));
    assert!(body["message"].as_str().unwrap().contains("force"));
    assert_eq!(router.service.regions().version, version, "a refused drain changes nothing");
    assert_eq!(get_json(&echo, &[]).await.1.as_deref(), Some("us-east"));

    let forced = Some(serde_json::json!({"force": true}));
    let (status, list) =
        ops(&router.url, "POST", "/v1/ops/regions/us-east/drain", Some(&op), forced).await;
    assert_eq!(status, 200);
    assert_eq!(mode_of(&list, "us-east"), "draining");
    let (status, _, body) = get_json(&echo, &[]).await;
    assert_eq!((status, body["code"].as_str().unwrap()), (503, "region_unavailable"));

    let (status, list) =
        ops(&router.url, "POST", "/v1/ops/regions/eu-west/restore", Some(&op), None).await;
    assert_eq!(status, 200);
    assert_eq!(mode_of(&list, "eu-west"), "active");
    assert_eq!(get_json(&echo, &[]).await.1.as_deref(), Some("eu-west"));
}

#[tokio::test]
async fn a_drain_moves_new_traffic_at_once_while_requests_in_flight_complete() {
    let eu = Upstream::start("eu-west").await;
    let us = Upstream::start("us-east").await;
    let router = start_router(config(&[&us, &eu])).await;
    let checkout = tokio::spawn({
        let url = format!("{}/v1/slow", router.url);
        async move { http().post(url).header("idempotency-key", "k-slow").send().await.unwrap() }
    });
    wait_until("the checkout reaches eu-west", Duration::from_secs(5), async || eu.hits() == 1)
        .await;
    let op = token(&["operator"]);
    let drained = Instant::now();
    assert_eq!(
        ops(&router.url, "POST", "/v1/ops/regions/eu-west/drain", Some(&op), None).await.0,
        200
    );
    let (status, served, _) = get_json(&format!("{}/v1/echo", router.url), &[]).await;
    assert_eq!((status, served.as_deref()), (200, Some("us-east")));
    assert!(drained.elapsed() < Duration::from_secs(1));
    let done = checkout.await.unwrap();
    assert_eq!(done.status(), 200, "the request in flight finished where it was");
    assert_eq!(done.headers()["x-tessera-region-served"], "eu-west");
    assert_eq!(us.hits(), 1, "only the echo reached us-east: the checkout was not repeated there");
}

#[tokio::test]
async fn a_drain_reaches_every_router_within_a_second_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let nats = LocalNats::start(
        &dir.path().join("nats"),
        &[region("eu-west"), region("us-east")],
        LocalNatsOptions::default(),
    )
    .await
    .unwrap();
    let eu = Upstream::start("eu-west").await;
    let us = Upstream::start("us-east").await;
    let with_nats = |url: String, file: &str| {
        let mut cfg = config(&[&us, &eu]);
        cfg.nats = tessera_bus::NatsClientConfig::plain(url);
        cfg.state_file = Some(dir.path().join(file));
        cfg
    };
    // One router on each region's leaf: the bucket lives in the hub's domain.
    let r1 = start_router(with_nats(nats.leaf_url(&region("eu-west")).unwrap(), "r1.json")).await;
    let r2 = start_router(with_nats(nats.leaf_url(&region("us-east")).unwrap(), "r2.json")).await;
    let op = token(&["operator"]);
    let echo2 = format!("{}/v1/echo", r2.url);
    assert_eq!(get_json(&echo2, &[]).await.1.as_deref(), Some("eu-west"));

    // The bucket is bound in the background; a drain before that is refused (503), never
    // applied to one router only.
    wait_until("r1 can drain", Duration::from_secs(10), async || {
        let (status, _) =
            ops(&r1.url, "POST", "/v1/ops/regions/eu-west/drain", Some(&op), None).await;
        assert!(status == 200 || status == 503, "{status}");
        status == 200
    })
    .await;
    let drained_at = Instant::now();
    let seen = wait_until("r2 routes away from eu-west", Duration::from_secs(1), async || {
        get_json(&echo2, &[]).await.1.as_deref() == Some("us-east")
    })
    .await;
    eprintln!("r2 saw the drain after {seen:?}");
    assert!(drained_at.elapsed() < Duration::from_secs(1));
    assert_eq!(r2.service.regions().version, r1.service.regions().version);

    // A router restarted while NATS is down keeps the drain from its state file.
    drop(r2);
    let mut nats = nats;
    nats.hub.kill();
    for leaf in nats.leaves.values_mut() {
        leaf.kill();
    }
    let r2 = start_router(with_nats(nats.leaf_url(&region("us-east")).unwrap(), "r2.json")).await;
    assert_eq!(get_json(&format!("{}/v1/echo", r2.url), &[]).await.1.as_deref(), Some("us-east"));
    let (status, body) =
        ops(&r2.url, "POST", "/v1/ops/regions/eu-west/restore", Some(&op), None).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (503, "unavailable"),
        "no replication, no change"
    );
    assert_eq!(
        mode_of(&serde_json::to_value(r2.service.regions()).unwrap(), "eu-west"),
        "draining"
    );

    // A router with no state file learns the state from the bucket.
    nats.hub.restart().await.unwrap();
    for leaf in nats.leaves.values_mut() {
        leaf.restart().await.unwrap();
    }
    nats.wait_connected(Duration::from_secs(10)).await.unwrap();
    let r3 = start_router(with_nats(nats.hub_url(), "r3.json")).await;
    wait_until("r3 learns the drain from the bucket", Duration::from_secs(10), async || {
        r3.service.control().current().mode(&region("eu-west")) == RegionMode::Draining
    })
    .await;
    // And a restore through it reaches the others.
    wait_until("r3 can restore", Duration::from_secs(10), async || {
        ops(&r3.url, "POST", "/v1/ops/regions/eu-west/restore", Some(&op), None).await.0 == 200
    })
    .await;
    for r in [&r1, &r2] {
        wait_until("the restore reaches every router", Duration::from_secs(5), async || {
            r.service.control().current().mode(&region("eu-west")) == RegionMode::Active
        })
        .await;
    }
}

#[tokio::test]
async fn a_region_whose_heartbeat_says_unhealthy_gets_no_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let nats = LocalNats::start(
        &dir.path().join("nats"),
        &[region("eu-west")],
        LocalNatsOptions::default(),
    )
    .await
    .unwrap();
    let eu = Upstream::start("eu-west").await;
    let us = Upstream::start("us-east").await;
    let mut cfg = config(&[&us, &eu]);
    cfg.nats = tessera_bus::NatsClientConfig::plain(nats.hub_url());
    let router = start_router(cfg).await;
    let echo = format!("{}/v1/echo", router.url);
    assert_eq!(get_json(&echo, &[]).await.1.as_deref(), Some("eu-west"));

    let core =
        tessera_bus::connect(&nats.leaf_url(&region("eu-west")).unwrap(), "core").await.unwrap();
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let beat = tessera_bus::heartbeat::spawn_publisher(
        core,
        region("eu-west"),
        eu.url(),
        Duration::from_millis(100),
        SystemClock,
        move || tessera_bus::heartbeat::HeartbeatLoad {
            healthy: flag.load(Ordering::SeqCst),
            commits_per_s: 0.0,
        },
    );
    wait_until("eu-west is avoided", Duration::from_secs(5), async || {
        get_json(&echo, &[]).await.1.as_deref() == Some("us-east")
    })
    .await;
    healthy.store(true, Ordering::SeqCst);
    wait_until("eu-west is back", Duration::from_secs(5), async || {
        get_json(&echo, &[]).await.1.as_deref() == Some("eu-west")
    })
    .await;
    beat.abort();
}

#[tokio::test]
async fn a_stadium_seat_map_passes_where_other_large_bodies_are_refused() {
    let us = Upstream::start("us-east").await;
    let router = start_router(config(&[&us])).await;
    let body = |bytes: usize| format!("{{\"pad\":\"{}\"}}", "x".repeat(bytes));
    let post = |path: &str, b: String| {
        http()
            .post(format!("{}{path}", router.url))
            .header("content-type", "application/json")
            .body(b)
            .send()
    };
    // 100 KB: a big venue's seat map (80,000 seats in rows of 25 are about 75 KB).
    let resp = post("/v1/things", body(100_000)).await.unwrap();
    assert_eq!(resp.status(), 413);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["code"], "body_too_large");
    assert_eq!(us.stats.posts.load(Ordering::SeqCst), 0, "nothing reached the region");
    let resp = post("/v1/ops/events", body(100_000)).await.unwrap();
    assert_eq!(resp.status(), 200, "an event's creation carries its seat map");
    let echoed: Value = resp.json().await.unwrap();
    assert_eq!(echoed["body"].as_str().map(str::len), Some(100_000 + 10), "the body arrives whole");
    // The seat-map limit (1 MiB by default) still bounds what the router buffers.
    let resp = post("/v1/ops/events", body(2 << 20)).await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(us.stats.posts.load(Ordering::SeqCst), 1, "only the seat map reached the region");
}
