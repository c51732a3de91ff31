//! `cargo xtask bench edge`: the edge's throughput and latency, on this machine, in one run.
//!
//! 1. A cached seat-map read and 2. a queue-status poll (admitted fan, warm verified-token
//!    cache, a signed watermark republished every second), both through the full pipeline
//!    in the one `edge` component: validation -> bot score -> catalog cache or waiting
//!    room, a fresh instance per request. Peak requests/s with a closed loop, then p99
//!    with an open loop at half of that rate (latency measured from the intended send
//!    time, so queueing shows).
//! 3. Host overhead: the `validation` component (imports only WASI; with no next hop it
//!    answers itself) served by the edge host and by `wasmtime serve` of the same wasmtime
//!    version (installed under `target/tools/` on first run).
//! 4. Token verifications per second on one core: cold (Ed25519 signature every time) and
//!    warm (the verified-token cache the waiting room uses: hash, lookup, decode claims,
//!    check bindings).
//!
//! The bot policy is relaxed for the run: it measures the pipeline's cost, not how fast one
//! loopback client gets rate limited. The last line is `key=value` pairs.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::routing::{get, post};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use sha2::Digest as _;
use tessera_api::queue::{AdmissionWatermark, QueuePhase, QueuePlace, QueueRegistration};
use tessera_api::{CustomerId, EventId};
use tessera_bench::loadgen::{self, Encoded};
use tessera_edge_host::config::Limits;
use tessera_edge_host::{Edge, EdgeOptions};
use tessera_identity::{IdentityIssuer, Keyset, SigningKeyPair};

// The same allocator as the `tessera-edge` binary, so the bench measures what ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WASMTIME_VERSION: &str = "48.0.8";
const RUN: Duration = Duration::from_secs(5);
const WARMUP: Duration = Duration::from_secs(1);
const CONNECTIONS: usize = 32;
/// Connections the open-loop generator may use: enough that a request never waits for a
/// connection at half of peak unless the server is behind.
const OPEN_LOOP_CONNECTIONS: usize = 128;

fn step(msg: &str) {
    eprintln!("==> {msg}");
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(".."))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn seed_b64(pass: &str) -> String {
    let seed: [u8; 32] = sha2::Sha256::digest(pass.as_bytes()).into();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed)
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

fn client() -> Client {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector)
}

fn request(url: &str, headers: &[(String, String)]) -> http::Request<Empty<Bytes>> {
    let mut b = http::Request::get(url);
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(Empty::new()).unwrap_or_default()
}

async fn once(c: &Client, url: &str, headers: &[(String, String)]) -> anyhow::Result<(u16, Bytes)> {
    let resp = c.request(request(url, headers)).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// The URL's authority and path.
fn split_url(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url.strip_prefix("http://").context("an http:// URL")?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    Ok((authority.parse()?, format!("/{path}")))
}

fn encoded(
    url: &str,
    headers: &[Vec<(String, String)>],
) -> anyhow::Result<(SocketAddr, Vec<Encoded>)> {
    let (addr, path) = split_url(url)?;
    let reqs = if headers.is_empty() {
        vec![Encoded::get(addr, &path, &[])]
    } else {
        headers.iter().map(|h| Encoded::get(addr, &path, h)).collect()
    };
    Ok((addr, reqs))
}

/// Closed loop: `CONNECTIONS` clients as fast as they go. Returns requests/s.
async fn peak(url: &str, headers: Vec<Vec<(String, String)>>) -> anyhow::Result<f64> {
    let (addr, reqs) = encoded(url, &headers)?;
    let run = tokio::task::spawn_blocking(move || {
        loadgen::closed_loop(addr, reqs, CONNECTIONS, WARMUP, RUN)
    })
    .await??;
    if run.errors > 0 {
        bail!(
            "{} requests to {url} failed during the peak run (first: {})",
            run.errors,
            run.first_error.unwrap_or_default()
        );
    }
    Ok(run.rps())
}

/// Open loop at `rate` requests/s for `RUN` (after `WARMUP` at the same rate): p99 in ms,
/// measured from the intended send time.
async fn p99_at(url: &str, headers: Vec<Vec<(String, String)>>, rate: f64) -> anyhow::Result<f64> {
    let (addr, reqs) = encoded(url, &headers)?;
    let run = tokio::task::spawn_blocking(move || {
        loadgen::open_loop(addr, reqs, rate, OPEN_LOOP_CONNECTIONS, WARMUP, RUN)
    })
    .await??;
    if run.errors > 0 {
        bail!(
            "{} requests to {url} failed during the latency run (first: {})",
            run.errors,
            run.first_error.unwrap_or_default()
        );
    }
    Ok(run.quantile_ms(0.99))
}

async fn upstream() -> anyhow::Result<SocketAddr> {
    let seats = serde_json::json!({
        "event_id": "show-1", "section_id": "A", "as_of_ms": 1,
        "rows": (1..=30).map(|r| serde_json::json!({"row": r.to_string(), "statuses": "f".repeat(40)})).collect::<Vec<_>>()
    })
    .to_string();
    let seq = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new()
        .route(
            "/v1/events/{e}/sections/{s}/seats",
            get(move || {
                let seats = seats.clone();
                async move { ([("content-type", "application/json")], seats) }
            }),
        )
        .route(
            "/v1/internal/events/{e}/queue",
            post(move |axum::Json(reg): axum::Json<QueueRegistration>| {
                let seq = seq.clone();
                async move {
                    let s = seq.fetch_add(1, Ordering::SeqCst);
                    axum::Json(QueuePlace {
                        event_id: EventId::parse("show-1").unwrap_or_else(|_| unreachable!()),
                        ticket_id: reg.ticket_id,
                        customer_id: reg.customer_id,
                        phase: QueuePhase::Open,
                        seq: s,
                        rank: Some(format!("{s:020x}")),
                        joined_at_ms: now_ms(),
                    })
                }
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move { axum::serve(l, app).await });
    Ok(addr)
}

fn watermark() -> AdmissionWatermark {
    let seed = "5e".repeat(32);
    AdmissionWatermark {
        event_id: EventId::parse("show-1").unwrap_or_else(|_| unreachable!()),
        state: tessera_api::inventory::SaleState::OnSale,
        version: 1,
        commitment: tessera_queue::lottery::commitment(&seed).unwrap_or_default(),
        seed: Some(seed),
        pre_open_count: 0,
        pre_open_threshold: None,
        pre_open_admitted: 0,
        open_admitted: 1_000_000,
        open_admitted_rank: Some(format!("{:020x}", 999_999)),
        open_count: 1_000_000,
        rate_per_s: 100.0,
        remaining: 1_000_000,
        published_at_ms: now_ms(),
        outstanding: 0,
        waiting_list_line: None,
        expired_line: None,
        expired_waiting_list_line: None,
        estimate: None,
    }
}

async fn serve_edge(
    manifest: &Path,
    vars: BTreeMap<String, String>,
) -> anyhow::Result<(Edge, SocketAddr)> {
    let edge = Edge::new(EdgeOptions {
        manifest: manifest.to_path_buf(),
        spin_env: BTreeMap::new(),
        variables: vars,
        limits: Limits::default(),
        pop: "bench".into(),
        compile_cache_dir: None,
        spin_strict: false,
    })?;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let (_tx, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(_tx);
    tokio::spawn(tessera_edge_host::serve::serve_public(
        edge.clone(),
        l,
        rx,
        Duration::from_secs(1),
    ));
    Ok((edge, addr))
}

fn wasmtime_cli() -> anyhow::Result<PathBuf> {
    let dir = root().join("target/tools").join(format!("wasmtime-cli-{WASMTIME_VERSION}"));
    let bin = dir.join("bin/wasmtime");
    if bin.exists() {
        return Ok(bin);
    }
    step(&format!(
        "installing wasmtime-cli {WASMTIME_VERSION} into {} (takes minutes, once)",
        dir.display()
    ));
    let status = Command::new("cargo")
        .args(["install", "wasmtime-cli", "--version", WASMTIME_VERSION, "--locked", "--root"])
        .arg(&dir)
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .context("run cargo install wasmtime-cli")?;
    if !status.success() || !bin.exists() {
        bail!("cargo install wasmtime-cli {WASMTIME_VERSION} failed");
    }
    Ok(bin)
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_up(c: &Client, url: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        if let Ok((200, _)) = once(c, url, &[]).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} never answered 200")
}

fn verify_rates() -> (f64, f64) {
    let key = SigningKeyPair::derive_for_development("edge-a", "edge-a");
    let keys = Keyset::new([key.public()]);
    let ev = EventId::parse("show-1").unwrap_or_else(|_| unreachable!());
    let dev = tessera_queue::device_hash("phone");
    let claims = tessera_api::queue::QueueTicketClaims {
        typ: "qt".into(),
        ticket_id: tessera_api::QueueTicketId::from_random(77),
        event_id: ev.clone(),
        customer_id: CustomerId::parse("fan-1").unwrap_or_else(|_| unreachable!()),
        device: dev.clone(),
        phase: QueuePhase::Open,
        seq: 1,
        rank: Some(format!("{:020x}", 1)),
        iat_ms: 0,
        exp_ms: u64::MAX,
        kid: String::new(),
        waiting_list: false,
    };
    let tokens: Vec<String> = (0..64)
        .map(|i| {
            let mut c = claims.clone();
            c.seq = i;
            tessera_queue::issue(&key, &c)
        })
        .collect();
    let measure = |f: &dyn Fn(&str) -> bool| {
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < Duration::from_secs(2) {
            for t in &tokens {
                assert!(f(t));
                n += 1;
            }
        }
        n as f64 / started.elapsed().as_secs_f64()
    };
    let cold = measure(&|t| tessera_queue::verify_ticket(&keys, t, &ev, &dev, 1).is_ok());
    // The waiting room's warm path: key = SHA-256 of the token; value = cached claims JSON.
    let cache: HashMap<String, Vec<u8>> = tokens
        .iter()
        .map(|t| {
            let h = hex_of(&sha2::Sha256::digest(t.as_bytes())[..16]);
            let v = serde_json::to_vec(&serde_json::json!({"at_ms": 0, "claims": tessera_identity::verify::<tessera_api::queue::QueueTicketClaims>(&keys, t).ok()})).unwrap_or_default();
            (format!("tok:q:{h}"), v)
        })
        .collect();
    let warm = measure(&|t| {
        let h = hex_of(&sha2::Sha256::digest(t.as_bytes())[..16]);
        let Some(raw) = cache.get(&format!("tok:q:{h}")) else { return false };
        #[derive(serde::Deserialize)]
        struct Cached {
            claims: tessera_api::queue::QueueTicketClaims,
        }
        let Ok(c) = serde_json::from_slice::<Cached>(raw) else { return false };
        tessera_queue::token::check_claims(&c.claims, "qt", &ev, &dev, 1).is_ok()
    });
    (cold, warm)
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The edge's throughput and latency (see the crate's docs for what each part measures).
#[derive(clap::Parser, Debug)]
#[command(name = "edge")]
struct Args {
    /// Skip the comparison with `wasmtime serve` (part 3).
    #[arg(long)]
    skip_wasmtime_serve: bool,
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let root = root();
    step("building the components (cargo xtask build-wasm --release)");
    let ok = Command::new("cargo")
        .current_dir(&root)
        .args(["run", "-q", "-p", "tessera-xtask", "--", "build-wasm", "--release"])
        .status()?
        .success();
    if !ok {
        bail!("cargo xtask build-wasm failed");
    }
    let skip_serve = args.skip_wasmtime_serve;

    let router = upstream().await?;
    let identity = IdentityIssuer {
        issuer: "https://id.bench".into(),
        key: SigningKeyPair::derive_for_development("id1", "id"),
    };
    let edge_key = SigningKeyPair::derive_for_development("edge-a", "edge-a");
    let watermark_key = SigningKeyPair::derive_for_development("wm-bench", "wm-bench");
    let vars = BTreeMap::from([
        ("router_url".to_owned(), format!("http://{router}")),
        ("identity_issuer".to_owned(), identity.issuer.clone()),
        ("identity_keys".to_owned(), Keyset::new([identity.key.public()]).to_config_string()),
        ("queue_signing_key".to_owned(), format!("edge-a:{}", seed_b64("edge-a"))),
        ("queue_keys".to_owned(), Keyset::new([edge_key.public()]).to_config_string()),
        ("shadow_secret".to_owned(), "bench-shadow".to_owned()),
        ("pow_secret".to_owned(), "bench-pow".to_owned()),
        ("watermark_keys".to_owned(), Keyset::new([watermark_key.public()]).to_config_string()),
        (
            "bot_policy".to_owned(),
            r#"{"client_hard_per_window":4000000000,"client_soft_per_window":4000000000,"network_soft_per_window":4000000000,"token_soft_per_window":4000000000,"ticket_polls_per_window":4000000000,"ticket_polls_shadow_factor":0,"accounts_per_device":0,"devices_per_account":0}"#.to_owned(),
        ),
    ]);
    step("starting the edge host with edge-components/spin.toml");
    let (edge, addr) = serve_edge(&root.join("edge-components/spin.toml"), vars.clone()).await?;
    // The core publishes a signed watermark every tick; the bench has no core and no NATS,
    // so it stores a freshly signed one every second, as the edge's NATS listener would.
    // Each new one has its signature checked once by the edge.
    let publish = {
        let edge = edge.clone();
        move || {
            let signed = tessera_queue::watermark::sign(&watermark_key, &watermark());
            if let Ok(v) = serde_json::to_vec(&signed) {
                edge.kv().set("default", "wm:show-1", v).ok();
            }
        }
    };
    publish();
    let publisher = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            publish();
        }
    });
    let c = client();
    let browser = |i: usize| {
        vec![
            (
                "user-agent".to_owned(),
                "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0".to_owned(),
            ),
            ("accept".to_owned(), "application/json".to_owned()),
            ("accept-language".to_owned(), "en".to_owned()),
            ("x-tessera-device".to_owned(), format!("device-{i}")),
        ]
    };

    // 1. Cached seat map.
    let seat_url = format!("http://{addr}/v1/events/show-1/sections/A/seats");
    let (s, _) = once(&c, &seat_url, &browser(0)).await?;
    if s != 200 {
        bail!("seat map read answered {s}");
    }
    step("cached seat-map read: peak");
    let seat_headers: Vec<_> = (0..CONNECTIONS).map(browser).collect();
    let seat_rps = peak(&seat_url, seat_headers.clone()).await?;
    step(&format!("  {seat_rps:.0} req/s; p99 at half of it"));
    let seat_p99 = p99_at(&seat_url, seat_headers, seat_rps / 2.0).await?;
    step(&format!("  p99 {seat_p99:.2} ms at {:.0} req/s", seat_rps / 2.0));

    // 2. Queue status poll by admitted fans.
    let mut poll_headers = Vec::new();
    for i in 0..CONNECTIONS {
        let fan = format!("fan-{i}");
        let token = identity.mint(CustomerId::parse(&fan)?, vec![], now_ms(), 3600);
        let mut h = browser(i);
        h.push(("authorization".into(), format!("Bearer {token}")));
        h.push(("content-type".into(), "application/json".into()));
        let req = {
            let mut b = http::Request::post(format!("http://{addr}/v1/events/show-1/queue"));
            for (k, v) in &h {
                b = b.header(k.as_str(), v.as_str());
            }
            b.body(http_body_util::Full::new(Bytes::from_static(
                br#"{"client_nonce":"00112233445566778899aabbccddeeff"}"#,
            )))?
        };
        let joiner =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(hyper_util::client::legacy::connect::HttpConnector::new());
        let resp = joiner.request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if status != 200 {
            bail!("queue join answered {status}: {}", String::from_utf8_lossy(&body));
        }
        let joined: tessera_api::queue::QueueJoined = serde_json::from_slice(&body)?;
        let mut p = browser(i);
        p.push(("x-tessera-queue-ticket".into(), joined.ticket));
        poll_headers.push(p);
    }
    let poll_url = format!("http://{addr}/v1/events/show-1/queue");
    let (s, body) = once(&c, &poll_url, &poll_headers[0]).await?;
    if s != 200 || !String::from_utf8_lossy(&body).contains("admitted") {
        bail!("queue poll answered {s}: {}", String::from_utf8_lossy(&body));
    }
    step("queue-status poll: peak");
    let poll_rps = peak(&poll_url, poll_headers.clone()).await?;
    step(&format!("  {poll_rps:.0} req/s; p99 at half of it"));
    let poll_p99 = p99_at(&poll_url, poll_headers, poll_rps / 2.0).await?;
    step(&format!("  p99 {poll_p99:.2} ms at {:.0} req/s", poll_rps / 2.0));
    publisher.abort();
    drop(edge);

    // 3. Host overhead on the WASI-only validation component.
    let dir = root.join("target/bench-edge");
    std::fs::create_dir_all(&dir)?;
    let wasm = root.join("edge-components/components/target/wasm/validation.wasm");
    let manifest = dir.join("validation-only.toml");
    std::fs::write(
        &manifest,
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"validation-only\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"validation\"\n[component.validation]\nsource = \"{}\"\n",
            wasm.display()
        ),
    )?;
    let (_v, vaddr) = serve_edge(&manifest, BTreeMap::new()).await?;
    let vurl = format!("http://{vaddr}/v1/events");
    wait_up(&c, &vurl).await?;
    step("validation component on the edge host: peak");
    let host_rps = peak(&vurl, vec![vec![]]).await?;
    step(&format!("  {host_rps:.0} req/s"));
    drop(_v);

    // Like with like: the edge host makes a fresh instance per request, so `wasmtime serve`
    // is measured with instance reuse off (`--max-instance-reuse-count 1`); its default
    // (reusing a P3 instance for up to 128 requests) is reported beside it.
    let mut serve_rps = Vec::new();
    let wasmtime = if skip_serve { None } else { Some(wasmtime_cli()?) };
    for reuse in [Some("1"), None] {
        let Some(wasmtime) = &wasmtime else {
            step("`wasmtime serve` skipped (--skip-wasmtime-serve)");
            serve_rps.push(f64::NAN);
            continue;
        };
        let port = tessera_bench::free_port()?;
        step(&format!(
            "validation component on `wasmtime serve` {WASMTIME_VERSION} (instance reuse {}): peak",
            reuse.map_or("default", |_| "off")
        ));
        let mut cmd = Command::new(wasmtime);
        cmd.args(["serve", "-Scli", "-Sp3", "-Wcomponent-model-async", "--addr"])
            .arg(format!("127.0.0.1:{port}"));
        if let Some(n) = reuse {
            cmd.args(["--max-instance-reuse-count", n]);
        }
        let serve = Killed(
            cmd.arg(&wasm)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start wasmtime serve")?,
        );
        let surl = format!("http://127.0.0.1:{port}/v1/events");
        wait_up(&c, &surl).await?;
        let rps = peak(&surl, vec![vec![]]).await?;
        drop(serve);
        step(&format!("  {rps:.0} req/s"));
        serve_rps.push(rps);
    }
    let (serve_fresh_rps, serve_reuse_rps) = (serve_rps[0], serve_rps[1]);

    // 4. Token verification.
    step("token verifications on one core");
    let (cold, warm) = tokio::task::spawn_blocking(verify_rates).await?;
    step(&format!("  cold (signature) {cold:.0}/s, warm (verified-token cache) {warm:.0}/s"));

    let ratio = if serve_fresh_rps > 0.0 { host_rps / serve_fresh_rps } else { f64::NAN };
    let p99_half_peak = seat_p99.max(poll_p99);
    println!(
        "edge pipeline_seatmap_rps={seat_rps:.0} pipeline_poll_rps={poll_rps:.0} p99_half_peak_ms={p99_half_peak:.2} seatmap_p99_ms_at_half={seat_p99:.2} poll_p99_ms_at_half={poll_p99:.2} validation_host_rps={host_rps:.0} validation_wasmtime_serve_rps={serve_fresh_rps:.0} validation_wasmtime_serve_reuse_rps={serve_reuse_rps:.0} host_over_wasmtime_serve={ratio:.2} token_verify_cold_per_s_core={cold:.0} token_verify_warm_per_s_core={warm:.0}"
    );
    Ok(())
}
