//! Test fixtures: component build, keys, the stand-in router, and a running edge.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};

use axum::extract::{Path as AxPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use sha2::Digest as _;
use tessera_api::inventory::{EventList, RowSeats, SaleState, SectionSeats};
use tessera_api::queue::{AdmissionWatermark, QueuePhase, QueuePlace, QueueRegistration};
use tessera_api::{CustomerId, EventId, SectionId};
use tessera_edge_host::config::Limits;
use tessera_edge_host::{Edge, EdgeOptions};
use tessera_identity::{IdentityIssuer, Keyset, SigningKeyPair};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// Builds the components once per test process (incremental: fast when up to date).
pub fn components() {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let root = workspace_root();
        let status = std::process::Command::new(env!("CARGO"))
            .current_dir(&root)
            .args(["run", "-q", "-p", "tessera-xtask", "--", "build-wasm", "--release"])
            .status()
            .expect("run cargo xtask build-wasm");
        assert!(status.success(), "cargo xtask build-wasm --release failed");
    });
}

pub fn seed_b64(pass: &str) -> String {
    let seed: [u8; 32] = sha2::Sha256::digest(pass.as_bytes()).into();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed)
}

pub const ISSUER: &str = "https://id.tessera.test";

pub fn identity_issuer() -> IdentityIssuer {
    IdentityIssuer {
        issuer: ISSUER.into(),
        key: SigningKeyPair::derive_for_development("id1", "identity"),
    }
}

pub fn edge_key() -> SigningKeyPair {
    SigningKeyPair::derive_for_development("edge-a", "edge-a")
}

pub fn queue_keyset() -> Keyset {
    Keyset::new([
        edge_key().public(),
        SigningKeyPair::derive_for_development("edge-b", "edge-b").public(),
    ])
}

pub const SHADOW_SECRET: &str = "shadow-test-secret";

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

pub fn fan_token(customer: &str) -> String {
    identity_issuer().mint(CustomerId::parse(customer).unwrap(), vec!["fan".into()], now_ms(), 3600)
}

/// What the stand-in router saw and answers with.
#[derive(Default)]
pub struct Upstream {
    pub down: AtomicBool,
    pub seat_reads: AtomicUsize,
    pub list_reads: AtomicUsize,
    pub watermark: Mutex<Option<AdmissionWatermark>>,
    pub places: Mutex<BTreeMap<String, QueuePlace>>,
    pub next_seq: AtomicU64,
    pub holds: Mutex<Vec<HeaderMap>>,
    pub registrations: AtomicUsize,
    /// Delay for seat reads (ms), to keep requests in flight.
    pub slow_ms: AtomicU64,
    /// Headers of the requests that reached the router's pass-through routes.
    pub seen: Mutex<Vec<HeaderMap>>,
    /// Fans' waiting-list choices and departures the core was told of (ticket headers).
    pub waiting_list: Mutex<Vec<String>>,
    pub left: Mutex<Vec<String>>,
    /// The idempotency keys of the registrations, waiting-list choices and departures.
    pub keys: Mutex<Vec<String>>,
}

async fn seats(
    State(up): State<Arc<Upstream>>,
    AxPath((event, section)): AxPath<(String, String)>,
) -> Result<Json<SectionSeats>, StatusCode> {
    if up.down.load(Ordering::SeqCst) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let slow = up.slow_ms.load(Ordering::SeqCst);
    if slow > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(slow)).await;
    }
    let n = up.seat_reads.fetch_add(1, Ordering::SeqCst);
    Ok(Json(SectionSeats {
        event_id: EventId::parse(&event).unwrap(),
        section_id: SectionId::parse(&section).unwrap(),
        rows: vec![RowSeats { row: "1".into(), statuses: "ffhs".into() }],
        as_of_ms: n as u64,
    }))
}

async fn list(State(up): State<Arc<Upstream>>) -> Result<Json<EventList>, StatusCode> {
    if up.down.load(Ordering::SeqCst) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    up.list_reads.fetch_add(1, Ordering::SeqCst);
    Ok(Json(EventList { events: vec![] }))
}

async fn admission(
    State(up): State<Arc<Upstream>>,
) -> Result<Json<AdmissionWatermark>, StatusCode> {
    up.watermark.lock().unwrap().clone().map(Json).ok_or(StatusCode::NOT_FOUND)
}

async fn register(
    State(up): State<Arc<Upstream>>,
    AxPath(event): AxPath<String>,
    headers: HeaderMap,
    Json(reg): Json<QueueRegistration>,
) -> Json<QueuePlace> {
    note_key(&up, &headers);
    up.registrations.fetch_add(1, Ordering::SeqCst);
    let mut places = up.places.lock().unwrap();
    let place = places.entry(reg.customer_id.to_string()).or_insert_with(|| {
        let seq = up.next_seq.fetch_add(1, Ordering::SeqCst);
        QueuePlace {
            event_id: EventId::parse(&event).unwrap(),
            ticket_id: reg.ticket_id.clone(),
            customer_id: reg.customer_id.clone(),
            phase: QueuePhase::Open,
            seq,
            rank: Some(format!("{seq:020x}")),
            joined_at_ms: now_ms(),
        }
    });
    Json(place.clone())
}

fn ticket_of(headers: &HeaderMap) -> String {
    headers.get("x-tessera-queue-ticket").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

fn note_key(up: &Upstream, headers: &HeaderMap) {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("");
    up.keys.lock().unwrap().push(key.to_owned());
}

async fn waiting_list(State(up): State<Arc<Upstream>>, headers: HeaderMap) -> StatusCode {
    note_key(&up, &headers);
    up.waiting_list.lock().unwrap().push(ticket_of(&headers));
    StatusCode::NO_CONTENT
}

async fn leave(State(up): State<Arc<Upstream>>, headers: HeaderMap) -> StatusCode {
    note_key(&up, &headers);
    up.left.lock().unwrap().push(ticket_of(&headers));
    StatusCode::NO_CONTENT
}

async fn hold(State(up): State<Arc<Upstream>>, headers: HeaderMap) -> (StatusCode, &'static str) {
    up.holds.lock().unwrap().push(headers);
    (StatusCode::CREATED, r#"{"hold_id":"h_abcdefgh12"}"#)
}

/// A reply as a real router behind a proxy might send it: hop-by-hop headers, and
/// headers that must never reach a fan, besides the body (which echoes the request's
/// headers, so tests can see what the router received).
async fn echo(State(up): State<Arc<Upstream>>, headers: HeaderMap) -> axum::response::Response {
    up.seen.lock().unwrap().push(headers.clone());
    let seen: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let mut r = axum::response::IntoResponse::into_response(Json(serde_json::json!({
        "orders": [], "seen": seen
    })));
    let h = r.headers_mut();
    h.insert("connection", "keep-alive, x-hop".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("x-hop", "named-in-connection".parse().unwrap());
    h.insert("proxy-authenticate", "Basic".parse().unwrap());
    h.insert("x-tessera-bot-verdict", "allow".parse().unwrap());
    h.insert("x-tessera-cache", "hit".parse().unwrap());
    h.insert("x-tessera-bot-score", "0".parse().unwrap());
    r
}

/// Server-sent events sent chunked, as the router streams them.
async fn stream(State(up): State<Arc<Upstream>>, headers: HeaderMap) -> axum::response::Response {
    up.seen.lock().unwrap().push(headers);
    let events = futures::stream::iter((0..3).map(|i| {
        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(format!(
            "event: availability\ndata: {{\"n\":{i}}}\n\n"
        )))
    }));
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(axum::body::Body::from_stream(events))
        .unwrap()
}

/// Serves the stand-in router on a free port.
pub async fn upstream() -> (Arc<Upstream>, SocketAddr) {
    let up = Arc::new(Upstream::default());
    let app = Router::new()
        .route("/v1/events", get(list))
        .route("/v1/events/{event}/sections/{section}/seats", get(seats))
        .route("/v1/events/{event}/admission", get(admission))
        .route("/v1/internal/events/{event}/queue", post(register))
        .route("/v1/internal/events/{event}/queue/waiting-list", post(waiting_list))
        .route("/v1/internal/events/{event}/queue/leave", post(leave))
        .route("/v1/events/{event}/holds", post(hold))
        .route("/v1/orders", get(echo))
        .route("/v1/events/{event}/stream", get(stream))
        .with_state(up.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (up, addr)
}

pub fn watermark(event: &str, open_admitted: u64, open_count: u64) -> AdmissionWatermark {
    let seed = "5e".repeat(32);
    AdmissionWatermark {
        event_id: EventId::parse(event).unwrap(),
        state: SaleState::OnSale,
        version: open_admitted + 1,
        commitment: tessera_queue::lottery::commitment(&seed).unwrap(),
        seed: Some(seed),
        pre_open_count: 0,
        pre_open_threshold: None,
        pre_open_admitted: 0,
        open_admitted,
        open_admitted_rank: open_admitted.checked_sub(1).map(|i| format!("{i:020x}")),
        open_count,
        rate_per_s: 10.0,
        remaining: 100,
        published_at_ms: now_ms(),
        outstanding: 0,
        waiting_list_line: None,
        expired_line: None,
        expired_waiting_list_line: None,
        estimate: None,
    }
}

pub fn variables(router: SocketAddr) -> BTreeMap<String, String> {
    BTreeMap::from([
        // Unsigned watermarks (these tests publish their own) are believed only locally.
        ("mode".to_owned(), "local".to_owned()),
        ("router_url".to_owned(), format!("http://{router}")),
        ("identity_issuer".to_owned(), ISSUER.to_owned()),
        (
            "identity_keys".to_owned(),
            Keyset::new([identity_issuer().key.public()]).to_config_string(),
        ),
        ("queue_signing_key".to_owned(), format!("edge-a:{}", seed_b64("edge-a"))),
        ("queue_keys".to_owned(), queue_keyset().to_config_string()),
        ("shadow_secret".to_owned(), SHADOW_SECRET.to_owned()),
        ("pow_secret".to_owned(), "pow-test-secret".to_owned()),
    ])
}

/// A running edge on a free port.
pub struct RunningEdge {
    pub edge: Edge,
    pub addr: SocketAddr,
    pub stop: tokio::sync::watch::Sender<bool>,
}

impl RunningEdge {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// Whether the suite runs the host in Spin-strict mode (`TESSERA_EDGE_SPIN_STRICT=1`, as
/// `cargo xtask test` does on a second pass), so every test also checks that the
/// components would behave the same under `spin up`.
pub fn strict_from_env() -> bool {
    std::env::var("TESSERA_EDGE_SPIN_STRICT").is_ok_and(|v| v == "1" || v == "true")
}

pub async fn start_edge(vars: BTreeMap<String, String>) -> RunningEdge {
    start_edge_with(vars, strict_from_env()).await
}

pub async fn start_edge_with(vars: BTreeMap<String, String>, spin_strict: bool) -> RunningEdge {
    let limits = Limits { instances_max: 256, concurrent_requests_max: 64, ..Limits::default() };
    start_edge_limits(vars, spin_strict, limits).await
}

pub async fn start_edge_limits(
    vars: BTreeMap<String, String>,
    spin_strict: bool,
    limits: Limits,
) -> RunningEdge {
    components();
    // Another manifest (an older build of the components, say) can be put under test.
    let manifest = std::env::var_os("TESSERA_EDGE_TEST_MANIFEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("edge-components/spin.toml"));
    let edge = Edge::new(EdgeOptions {
        manifest,
        spin_env: BTreeMap::new(),
        variables: vars,
        limits,
        pop: "test".into(),
        compile_cache_dir: None,
        spin_strict,
    })
    .expect("start edge");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(tessera_edge_host::serve::serve_public(
        edge.clone(),
        listener,
        rx,
        std::time::Duration::from_secs(2),
    ));
    RunningEdge { edge, addr, stop }
}

/// A browser-looking client.
pub fn browser() -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("accept", "application/json".parse().unwrap());
    h.insert("accept-language", "en-GB,en;q=0.9".parse().unwrap());
    reqwest::Client::builder()
        .user_agent("Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0")
        .default_headers(h)
        .build()
        .unwrap()
}
