//! The edge: wasmtime with a pooling allocator and pre-instantiated components, a fresh
//! store and instance per request, per-request memory and time limits, Spin-style
//! service chaining (`http://<component>.spin.internal`) handled in-process, an outbound
//! allow-list, and pooled keep-alive connections to the region router.
//!
//! The host does not rewrite what components send or answer: hop-by-hop headers, the
//! edge's internal headers, `x-tessera-pop` and `traceparent` are the components' business,
//! so they behave the same under `spin up`. What the host adds to an incoming request is
//! what Spin adds (the `spin-*` headers) and, outside Spin-strict mode, its own span as the
//! parent in `traceparent`, so the router's spans hang under the edge's.
//!
//! **Spin-strict mode** ([`EdgeOptions::spin_strict`]) makes the host fail where Spin
//! fails, so tests catch a component that only works here: a response carrying a header
//! Spin forbids (`transfer-encoding`, `connection`, ...) becomes an empty 500 instead of
//! having the header stripped; headers Spin forbids are not stripped from what an outbound
//! call returns to a component either (Spin hands them over, and copying them on fails);
//! more request headers than Spin accepts are refused; the fan's `traceparent` reaches the
//! component untouched.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use parking_lot::Mutex;
use tessera_api::{ApiErrorBody, ErrorCode};
use tokio::sync::{Semaphore, oneshot};
use tracing::Instrument as _;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::config::Limits;
use crate::kv::KvStores;
use crate::manifest::{self, Manifest, Route};
use crate::outbound::AllowList;
use crate::spin::{self, ComponentGrants, SpinState};
use crate::trace::TraceCtx;

/// The most request headers Spin (4.1) accepts; Spin-strict mode refuses more.
pub const SPIN_REQUEST_HEADERS_MAX: usize = 56;

/// The outbound client: keep-alive connections to the region router, reused by every
/// instance (a new TCP connection per outbound call cost more than the call).
type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    WasiBody,
>;

fn outbound_client() -> Client {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.enforce_http(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(512)
        .build(connector)
}

/// Epoch ticks per second (the granularity of the per-request deadline).
const EPOCH_TICK: Duration = Duration::from_millis(10);

enum Pre {
    P2(wasmtime_wasi_http::p2::bindings::ProxyPre<Host>),
    P3(wasmtime_wasi_http::p3::bindings::ServicePre<Host>),
}

struct Loaded {
    id: String,
    pre: Pre,
    allow: AllowList,
    grants: Arc<ComponentGrants>,
    environment: Vec<(String, String)>,
}

enum RoutePattern {
    Prefix(String),
    Exact(String),
}

impl RoutePattern {
    fn parse(route: &str) -> RoutePattern {
        match route.strip_suffix("/...") {
            Some(prefix) => RoutePattern::Prefix(prefix.to_owned()),
            None => RoutePattern::Exact(route.to_owned()),
        }
    }
    fn matches(&self, path: &str) -> bool {
        match self {
            RoutePattern::Prefix(p) => {
                p.is_empty()
                    || path == p
                    || (path.starts_with(p.as_str()) && path.as_bytes().get(p.len()) == Some(&b'/'))
            }
            RoutePattern::Exact(e) => path == e,
        }
    }
    fn specificity(&self) -> (u8, usize) {
        match self {
            RoutePattern::Exact(e) => (1, e.len()),
            RoutePattern::Prefix(p) => (0, p.len()),
        }
    }
}

pub(crate) struct Inner {
    engine: Engine,
    components: Vec<Loaded>,
    by_id: HashMap<String, usize>,
    routes: Vec<(RoutePattern, usize)>,
    kv: Arc<KvStores>,
    limits: Limits,
    variables: BTreeMap<String, String>,
    permits: Semaphore,
    /// The priority lane's own slots (see `Limits::priority_header`).
    priority_permits: Semaphore,
    priority_header: Option<http::HeaderName>,
    client: Client,
    spin_strict: bool,
}

/// The edge host. Cheap to clone.
#[derive(Clone)]
pub struct Edge(Arc<Inner>);

/// Store data of one component instance.
pub struct Host {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: Hooks,
    spin: SpinState,
    limits: StoreLimits,
    /// Set once the response head is out: from then on the instance only streams its body
    /// and is bounded by the stream limit, not the request limit.
    streaming: Arc<std::sync::atomic::AtomicBool>,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// Outbound HTTP of one instance: chaining, allow-list, the pooled client.
struct Hooks {
    edge: Arc<Inner>,
    component: usize,
    depth: u32,
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ),
    wasmtime_wasi_http::Error,
>;

impl WasiHttpHooks for Hooks {
    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        if self.edge.spin_strict {
            // Spin hands outbound responses to the component with these headers in place;
            // the check happens where the component's own response leaves the host.
            Arc::new(|_| false)
        } else {
            Arc::new(|name| wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name))
        }
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<dyn std::future::Future<Output = SendResult> + Send> {
        let edge = self.edge.clone();
        let caller = &edge.components[self.component];
        let uri = request.uri().clone();
        if !caller.allow.allows(&uri) {
            tracing::warn!(component = %caller.id, host = uri.host().unwrap_or(""), "outbound request denied by allowed_outbound_hosts");
            metrics::counter!("tessera_edge_outbound_requests_total", "target" => "denied", "outcome" => "denied").increment(1);
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        if let Some(target) = uri.host().and_then(|h| h.strip_suffix(".spin.internal")) {
            let Some(&idx) = edge.by_id.get(target) else {
                return Box::new(async { Err(wasmtime_wasi_http::Error::DestinationNotFound) });
            };
            let depth = self.depth + 1;
            if depth > edge.limits.chain_depth_max {
                return Box::new(async { Err(wasmtime_wasi_http::Error::LoopDetected) });
            }
            metrics::counter!("tessera_edge_outbound_requests_total", "target" => "chain", "outcome" => "ok").increment(1);
            return Box::new(async move {
                let resp = run(edge, idx, request, depth).await.map_err(|e| {
                    wasmtime_wasi_http::Error::InternalError(Some(format!("{e:#}")))
                })?;
                let done: Box<dyn std::future::Future<Output = _> + Send> =
                    Box::new(async { Ok(()) });
                Ok((resp, done))
            });
        }
        Box::new(async move {
            let started = Instant::now();
            let result = send_pooled(&edge.client, request, options, !edge.spin_strict).await;
            let outcome = if result.is_ok() { "ok" } else { "error" };
            metrics::counter!("tessera_edge_outbound_requests_total", "target" => "router", "outcome" => outcome).increment(1);
            metrics::histogram!("tessera_edge_outbound_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            let resp = result?;
            let io: Box<dyn std::future::Future<Output = _> + Send> = Box::new(async { Ok(()) });
            Ok((resp, io))
        })
    }
}

/// Sends a component's outbound request on a pooled keep-alive connection, with the
/// time limits the component asked for (the first byte; the connection is bounded by the
/// connector's own timeout).
async fn send_pooled(
    client: &Client,
    request: http::Request<WasiBody>,
    options: Option<wasmtime_wasi_http::RequestOptions>,
    strip_connection_fields: bool,
) -> Result<http::Response<WasiBody>, wasmtime_wasi_http::Error> {
    use wasmtime_wasi_http::Error as E;
    let first_byte = options.and_then(|o| o.first_byte_timeout).unwrap_or(Duration::from_secs(60));
    let resp = match tokio::time::timeout(first_byte, client.request(request)).await {
        Err(_) => return Err(E::ConnectionReadTimeout),
        Ok(Err(e)) if e.is_connect() => return Err(E::ConnectionRefused),
        Ok(Err(e)) => return Err(E::InternalError(Some(format!("{e:#}")))),
        Ok(Ok(mut resp)) => {
            if strip_connection_fields {
                // Fields named in `connection` describe the connection, not the message
                // (RFC 9110 section 7.6.1); wasmtime drops `connection` itself before the
                // component would see what it named.
                remove_connection_fields(resp.headers_mut());
            }
            resp
        }
    };
    Ok(resp.map(|body| body.map_err(E::from).boxed_unsync()))
}

fn remove_connection_fields(headers: &mut http::HeaderMap) {
    let named: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
}

/// Signals when a response body has been read to its end or dropped, so the instance
/// that produces it can be torn down.
struct DoneOnEnd {
    inner: WasiBody,
    done: Option<oneshot::Sender<()>>,
}

impl http_body::Body for DoneOnEnd {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(poll, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
            && let Some(done) = self.done.take()
        {
            let _ = done.send(());
        }
        poll
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

type Reply = anyhow::Result<http::Response<WasiBody>>;
type ReplySlot = Arc<Mutex<Option<oneshot::Sender<Reply>>>>;

fn send_reply(slot: &ReplySlot, reply: Reply) {
    if let Some(tx) = slot.lock().take() {
        let _ = tx.send(reply);
    }
}

/// Runs component `idx` on `request` in a fresh instance and returns its response as soon
/// as the headers are ready; the instance lives on (in its own task) while the body
/// streams. The request limit bounds the time to the response head; a streamed body may
/// then take up to the stream limit.
fn run(
    edge: Arc<Inner>,
    idx: usize,
    request: http::Request<WasiBody>,
    depth: u32,
) -> Pin<Box<dyn std::future::Future<Output = Reply> + Send>> {
    Box::pin(async move {
        let (tx, rx) = oneshot::channel();
        let slot: ReplySlot = Arc::new(Mutex::new(Some(tx)));
        let task_slot = slot.clone();
        let head_timeout = edge.limits.request_timeout;
        let stream_timeout = edge.limits.stream_timeout.max(head_timeout);
        let component = edge.components[idx].id.clone();
        metrics::counter!("tessera_edge_instances_total", "component" => component.clone())
            .increment(1);
        let task = tokio::spawn(async move {
            let work = instance(edge, idx, request, depth, task_slot.clone());
            let result = match tokio::time::timeout(stream_timeout, work).await {
                Ok(r) => r,
                Err(_) => Err(anyhow!("component `{component}` exceeded the stream limit")),
            };
            // Almost every instance has answered by now: the slot is empty and there is
            // nothing left to build (an error value per request showed up in profiles).
            let Some(tx) = task_slot.lock().take() else {
                if let Err(e) = result {
                    tracing::debug!(component = %component, error = %e, "component failed after its response head");
                }
                return;
            };
            let _ = tx.send(match result {
                Ok(()) => Err(anyhow!("component `{component}` returned no response")),
                Err(e) => Err(e),
            });
        });
        match tokio::time::timeout(head_timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(anyhow!("component task ended without a reply")),
            Err(_) => {
                task.abort();
                Err(anyhow!("component exceeded the request timeout"))
            }
        }
    })
}

/// Runs one instance for one request; what it wrote on stderr is logged when it ends
/// (see [`crate::guest_log`]).
async fn instance(
    edge: Arc<Inner>,
    idx: usize,
    request: http::Request<WasiBody>,
    depth: u32,
    slot: ReplySlot,
) -> anyhow::Result<()> {
    let stderr = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(crate::guest_log::STDERR_MAX_BYTES);
    let result = run_instance(edge.clone(), idx, request, depth, slot, stderr.clone()).await;
    crate::guest_log::forward(&edge.components[idx].id, &stderr.contents());
    result
}

async fn run_instance(
    edge: Arc<Inner>,
    idx: usize,
    request: http::Request<WasiBody>,
    depth: u32,
    slot: ReplySlot,
    stderr: wasmtime_wasi::p2::pipe::MemoryOutputPipe,
) -> anyhow::Result<()> {
    let loaded = &edge.components[idx];
    let mut wasi = WasiCtx::builder();
    wasi.stderr(stderr);
    for (k, v) in &loaded.environment {
        wasi.env(k, v);
    }
    let streaming = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let host = Host {
        table: ResourceTable::new(),
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        hooks: Hooks { edge: edge.clone(), component: idx, depth },
        spin: SpinState::new(loaded.grants.clone(), edge.kv.clone()),
        limits: StoreLimitsBuilder::new()
            .memory_size(edge.limits.memory_max_bytes)
            .instances(64)
            .tables(64)
            .memories(16)
            .build(),
        streaming: streaming.clone(),
    };
    let mut store = Store::new(&edge.engine, host);
    store.limiter(|h| &mut h.limits);
    let ticks = (edge.limits.request_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
    store.set_epoch_deadline(ticks);
    // Until the response head is out, running past the request limit traps. A streaming
    // body (server-sent events) may run on; the task's stream limit bounds it.
    store.epoch_deadline_callback(move |ctx| {
        if ctx.data().streaming.load(std::sync::atomic::Ordering::Relaxed) {
            Ok(wasmtime::UpdateDeadline::Continue(ticks))
        } else {
            Err(wasmtime::Trap::Interrupt.into())
        }
    });
    match &loaded.pre {
        Pre::P3(pre) => {
            let service =
                pre.instantiate_async(&mut store).await.map_err(|e| anyhow!("instantiate: {e}"))?;
            let (req, io) =
                wasmtime_wasi_http::p3::Request::from_http(store.data_mut().http().hooks, request);
            let (done_tx, done_rx) = oneshot::channel::<()>();
            let slot2 = slot.clone();
            store
                .run_concurrent(async move |acc| {
                    let res = service.handle(acc, req).await?.map_err(|e| {
                        wasmtime::format_err!("component answered with error {e:?}")
                    })?;
                    let res = acc.with(|s| res.into_http(s, io))?;
                    let res =
                        res.map(|b| DoneOnEnd { inner: b, done: Some(done_tx) }.boxed_unsync());
                    streaming.store(true, std::sync::atomic::Ordering::Relaxed);
                    send_reply(&slot2, Ok(res));
                    // Keep the instance's event loop running until the body is consumed.
                    let _ = done_rx.await;
                    wasmtime::error::Ok(())
                })
                .await
                .map_err(|e| anyhow!("{e}"))?
                .map_err(|e| anyhow!("{e}"))?;
        }
        Pre::P2(pre) => {
            use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
            let (tx, rx) = oneshot::channel();
            let req = store.data_mut().http().new_incoming_request(Scheme::Http, request)?;
            let out = store.data_mut().http().new_response_outparam(tx)?;
            let slot2 = slot.clone();
            tokio::spawn(async move {
                if let Ok(r) = rx.await {
                    streaming.store(true, std::sync::atomic::Ordering::Relaxed);
                    send_reply(
                        &slot2,
                        r.map_err(|e| anyhow!("component answered with error {e:?}")),
                    );
                }
            });
            let proxy =
                pre.instantiate_async(&mut store).await.map_err(|e| anyhow!("instantiate: {e}"))?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    Ok(())
}

fn json_body(status: u16, body: String) -> http::Response<WasiBody> {
    let mut r = http::Response::new(
        Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync(),
    );
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

/// An error response following the platform's contract.
pub fn error_response(code: ErrorCode, message: &str) -> http::Response<WasiBody> {
    let b = ApiErrorBody::new(code, message);
    json_body(b.status(), b.to_json())
}

/// What the edge needs to start.
pub struct EdgeOptions {
    pub manifest: PathBuf,
    /// `SPIN_VARIABLE_*` variables from the process environment (read in `main`).
    pub spin_env: BTreeMap<String, String>,
    /// Variables from the host's config file.
    pub variables: BTreeMap<String, String>,
    pub limits: Limits,
    /// This edge's point of presence: the default of the `pop` variable.
    pub pop: String,
    pub compile_cache_dir: Option<PathBuf>,
    /// Fail where Spin fails (see the module docs); for tests.
    pub spin_strict: bool,
}

fn engine(limits: &Limits, cache_dir: &Path) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model_async(true);
    config.epoch_interruption(true);
    // Errors inside guests are reported by message; capturing wasm backtraces for every
    // error a component handles (a closed body stream, a missing key) costs more than it
    // tells.
    config.wasm_backtrace_max_frames(None);
    let mut pool = PoolingAllocationConfig::default();
    let n = limits.instances_max;
    pool.total_component_instances(n)
        .total_core_instances(n * 8)
        .total_memories(n * 4)
        .total_tables(n * 8)
        .total_stacks(n * 2)
        .max_core_instances_per_component(16)
        .max_memories_per_component(8)
        .max_tables_per_component(16)
        .max_memory_size(limits.memory_max_bytes)
        // A fresh instance per request: resetting a few MiB with memset is cheaper than
        // handing pages back to the kernel and faulting them in again on the next request.
        .linear_memory_keep_resident(limits.memory_keep_resident_bytes)
        .table_keep_resident(64 << 10)
        .async_stack_keep_resident(64 << 10)
        // Where the kernel has PAGEMAP_SCAN (Linux 6.7+), reset only the pages an instance
        // touched instead of the whole kept-resident prefix.
        .pagemap_scan(wasmtime::Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config.memory_reservation(limits.memory_max_bytes as u64);
    config.memory_guard_size(64 << 10);
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("create {}", cache_dir.display()))?;
    let mut cache_config = wasmtime::CacheConfig::new();
    cache_config.with_directory(cache_dir);
    let cache = wasmtime::Cache::new(cache_config).map_err(|e| anyhow!("compile cache: {e}"))?;
    config.cache(Some(cache));
    Engine::new(&config).map_err(|e| anyhow!("create engine: {e}"))
}

/// Where compiled components are cached when the config names no place: `.cache` beside
/// the `.wasm` files when that can be created (a checkout), else a directory under the
/// system's temporary directory (an image whose root filesystem is read-only, where the
/// files belong to another user).
fn default_compile_cache_dir(manifest: &Manifest) -> PathBuf {
    let beside = manifest
        .components
        .first()
        .and_then(|c| c.source.parent().map(|p| p.join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    // wasmtime's cache wants an absolute path; a manifest given relative to the working
    // directory (as `spin up -f edge-components/spin.toml`) makes a relative one.
    let beside = std::path::absolute(&beside).unwrap_or(beside);
    if std::fs::create_dir_all(&beside).is_ok() {
        return beside;
    }
    let fallback = std::env::temp_dir().join("tessera-edge-compile-cache");
    tracing::info!(
        unwritable = %beside.display(),
        cache = %fallback.display(),
        "compile cache beside the components is not writable; using the temporary directory"
    );
    fallback
}

impl Edge {
    /// Loads the manifest, compiles (or loads cached) components and pre-instantiates them.
    pub fn new(opts: EdgeOptions) -> anyhow::Result<Edge> {
        let manifest = Manifest::load(&opts.manifest)?;
        let mut config_vars = opts.variables.clone();
        config_vars.entry("pop".to_owned()).or_insert_with(|| opts.pop.clone());
        let variables =
            manifest::resolve_variables(&manifest.variables, &opts.spin_env, &config_vars)?;
        let cache_dir =
            opts.compile_cache_dir.clone().unwrap_or_else(|| default_compile_cache_dir(&manifest));
        let priority_header = match opts.limits.priority_header.trim() {
            "" => None,
            h => Some(
                http::HeaderName::from_bytes(h.as_bytes())
                    .map_err(|e| anyhow!("limits.priority_header {h:?}: {e}"))?,
            ),
        };
        let reserved =
            if priority_header.is_some() { opts.limits.priority_requests_reserved } else { 0 };
        if opts.limits.concurrent_requests_max + reserved > opts.limits.instances_max as usize {
            tracing::warn!(
                instances_max = opts.limits.instances_max,
                concurrent_requests_max = opts.limits.concurrent_requests_max,
                priority_requests_reserved = reserved,
                "instances_max is below one instance per concurrent request; bursts may fail to instantiate"
            );
        }
        let engine = engine(&opts.limits, &cache_dir)?;
        let mut linker = Linker::<Host>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow!("{e}"))?;
        wasmtime_wasi::p3::add_to_linker(&mut linker).map_err(|e| anyhow!("{e}"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| anyhow!("{e}"))?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker).map_err(|e| anyhow!("{e}"))?;
        spin::add_to_linker(&mut linker, |h: &mut Host| &mut h.spin).map_err(|e| anyhow!("{e}"))?;

        let mut labels = Vec::new();
        let mut components = Vec::new();
        let mut routes = Vec::new();
        for c in &manifest.components {
            let started = Instant::now();
            let component = Component::from_file(&engine, &c.source).map_err(|e| {
                anyhow!("load component `{}` from {}: {e}", c.id, c.source.display())
            })?;
            let ipre = linker
                .instantiate_pre(&component)
                .map_err(|e| anyhow!("link component `{}`: {e}", c.id))?;
            let pre = match wasmtime_wasi_http::p3::bindings::ServicePre::new(ipre.clone()) {
                Ok(p) => Pre::P3(p),
                Err(_) => Pre::P2(
                    wasmtime_wasi_http::p2::bindings::ProxyPre::new(ipre).map_err(|e| {
                        anyhow!("component `{}` exports neither wasi:http/handler@0.3 nor incoming-handler@0.2: {e}", c.id)
                    })?,
                ),
            };
            let world = match pre {
                Pre::P3(_) => "wasi:http/handler@0.3",
                Pre::P2(_) => "wasi:http/incoming-handler@0.2",
            };
            tracing::info!(component = %c.id, world, elapsed_ms = started.elapsed().as_millis() as u64, "component ready");
            let allowed: Vec<String> = c
                .allowed_outbound_hosts
                .iter()
                .map(|h| manifest::expand(h, &variables))
                .collect::<anyhow::Result<_>>()
                .with_context(|| format!("component `{}`: allowed_outbound_hosts", c.id))?;
            let allow = AllowList::parse(&allowed)
                .with_context(|| format!("component `{}`: allowed_outbound_hosts", c.id))?;
            let mut vars = BTreeMap::new();
            for (name, template) in &c.variables {
                if let Ok(v) = manifest::expand(template, &variables) {
                    vars.insert(name.clone(), v);
                }
            }
            labels.extend(c.key_value_stores.iter().cloned());
            let idx = components.len();
            for r in &c.routes {
                if let Route::Public(p) = r {
                    routes.push((RoutePattern::parse(p), idx));
                }
            }
            components.push(Loaded {
                id: c.id.clone(),
                pre,
                allow,
                grants: Arc::new(ComponentGrants {
                    variables: vars,
                    kv_labels: c.key_value_stores.clone(),
                }),
                environment: c.environment.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.specificity()));
        labels.sort();
        labels.dedup();
        if !labels.contains(&"default".to_owned()) {
            labels.push("default".to_owned());
        }
        let by_id = components.iter().enumerate().map(|(i, c)| (c.id.clone(), i)).collect();
        let kv = Arc::new(KvStores::new(labels, opts.limits.kv_entries_max));
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("edge-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .context("start epoch thread")?;
        Ok(Edge(Arc::new(Inner {
            engine,
            components,
            by_id,
            routes,
            kv,
            permits: Semaphore::new(opts.limits.concurrent_requests_max),
            priority_permits: Semaphore::new(reserved),
            priority_header,
            limits: opts.limits,
            variables,
            client: outbound_client(),
            spin_strict: opts.spin_strict,
        })))
    }

    /// The shared key-value stores (the NATS subscriber writes here).
    pub fn kv(&self) -> Arc<KvStores> {
        self.0.kv.clone()
    }

    /// The resolved application variables.
    pub fn variables(&self) -> &BTreeMap<String, String> {
        &self.0.variables
    }

    /// Component ids with their public routes (for checks and diagnostics).
    pub fn public_routes(&self) -> Vec<(String, String)> {
        self.0
            .routes
            .iter()
            .map(|(p, i)| {
                let route = match p {
                    RoutePattern::Prefix(p) => format!("{p}/..."),
                    RoutePattern::Exact(e) => e.clone(),
                };
                (self.0.components[*i].id.clone(), route)
            })
            .collect()
    }

    /// Serves one incoming request through the components.
    pub async fn handle<B>(
        &self,
        req: http::Request<B>,
        client: SocketAddr,
    ) -> http::Response<WasiBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let started = Instant::now();
        let span = tracing::info_span!("edge.request", method = %req.method(), route = tracing::field::Empty, status = tracing::field::Empty, trace_id = tracing::field::Empty);
        let path = req.uri().path();
        let route_name = tessera_edge_logic::routes::classify(req.method().as_str(), path)
            .map(|r| r.name())
            .unwrap_or("unmatched");
        span.record("route", route_name);
        // The fan's trace is continued: the parent must be set before the span is entered.
        tessera_runtime::telemetry::set_parent_from_headers(&span, req.headers());
        let resp = self.dispatch(req, client, &span).instrument(span.clone()).await;
        let status = resp.status().as_u16();
        span.record("status", status);
        let class = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        metrics::counter!("tessera_edge_requests_total", "route" => route_name, "status" => class)
            .increment(1);
        metrics::histogram!("tessera_edge_request_duration_seconds", "route" => route_name)
            .record(started.elapsed().as_secs_f64());
        if status >= 500 {
            tracing::warn!(parent: &span, status, "request answered with a server error");
        }
        resp
    }

    /// A slot to run one request in: the shared slots, first come first served, or, for a
    /// request in the priority lane, whichever of its own and the shared slots frees first.
    async fn slot(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, tokio::sync::AcquireError> {
        let priority = self.0.priority_header.as_ref().is_some_and(|h| headers.contains_key(h));
        if !priority {
            return self.0.permits.acquire().await;
        }
        metrics::counter!("tessera_edge_priority_requests_total").increment(1);
        if let Ok(p) = self.0.priority_permits.try_acquire() {
            return Ok(p);
        }
        tokio::select! {
            p = self.0.priority_permits.acquire() => p,
            p = self.0.permits.acquire() => p,
        }
    }

    async fn dispatch<B>(
        &self,
        req: http::Request<B>,
        client: SocketAddr,
        span: &tracing::Span,
    ) -> http::Response<WasiBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let (mut parts, body) = req.into_parts();
        let body = body.map_err(Into::into).boxed_unsync();
        if self.0.spin_strict && parts.headers.len() > SPIN_REQUEST_HEADERS_MAX {
            // Spin refuses such a request before any component sees it.
            return error_response(ErrorCode::InvalidRequest, "too many request headers");
        }
        let path = parts.uri.path().to_owned();
        let Some(&(ref pattern, idx)) = self.0.routes.iter().find(|(p, _)| p.matches(&path)) else {
            return error_response(ErrorCode::NotFound, "no such route");
        };
        let Ok(_permit) = self.slot(&parts.headers).await else {
            return error_response(ErrorCode::Unavailable, "edge is shutting down");
        };
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost")
            .to_owned();
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let full_url = format!("http://{host}{pq}");
        set_spin_headers(&mut parts.headers, pattern, &path, &full_url, client);
        if !self.0.spin_strict {
            // The edge's own span becomes the parent the components pass on.
            let trace = TraceCtx::continue_in(span, &parts.headers);
            if let Ok(v) = http::HeaderValue::from_str(&trace) {
                parts.headers.insert("traceparent", v);
            }
            span.record("trace_id", trace.get(3..35).unwrap_or(""));
        }
        if let Ok(uri) = full_url.parse() {
            parts.uri = uri;
        }
        let request = http::Request::from_parts(parts, body);
        let resp = match run(self.0.clone(), idx, request, 0).await {
            Ok(resp) => resp,
            Err(e) => {
                let msg = format!("{e:#}");
                return if msg.contains("exceeded the request timeout") || msg.contains("interrupt")
                {
                    tracing::warn!("request timed out: {msg}");
                    error_response(ErrorCode::Timeout, "the edge took too long to answer")
                } else {
                    tracing::error!("component failed: {msg}");
                    error_response(ErrorCode::Internal, "internal error")
                };
            }
        };
        if self.0.spin_strict
            && let Some(name) = spin_forbidden(resp.headers())
        {
            // What Spin answers when a component's response carries such a header.
            tracing::error!(header = %name, "component response has a forbidden header (HeaderError::Forbidden)");
            let mut r = http::Response::new(
                Full::new(Bytes::new()).map_err(|never| match never {}).boxed_unsync(),
            );
            *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            return r;
        }
        resp
    }
}

/// The first header of a component's response that Spin refuses to send.
fn spin_forbidden(headers: &http::HeaderMap) -> Option<&http::HeaderName> {
    headers.keys().find(|k| wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(k))
}

/// The headers Spin adds to every request a component receives.
fn set_spin_headers(
    headers: &mut http::HeaderMap,
    pattern: &RoutePattern,
    path: &str,
    full_url: &str,
    client: SocketAddr,
) {
    let (route, base_relative) = match pattern {
        RoutePattern::Prefix(p) => {
            (format!("{p}/..."), path.strip_prefix(p.as_str()).unwrap_or(path))
        }
        RoutePattern::Exact(e) => (e.clone(), ""),
    };
    let matched = route.trim_end_matches("/...").to_owned();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    set("spin-full-url", full_url);
    set("spin-path-info", base_relative);
    set("spin-matched-route", &route);
    set("spin-base-path", "/");
    set("spin-raw-component-route", &route);
    set("spin-component-route", &matched);
    set("spin-client-addr", &client.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_mode_names_the_headers_spin_refuses_in_a_response() {
        let mut h = http::HeaderMap::new();
        h.insert("content-type", "text/event-stream".parse().unwrap());
        h.insert("x-anything", "1".parse().unwrap());
        assert_eq!(spin_forbidden(&h), None);
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        assert_eq!(spin_forbidden(&h).map(|n| n.as_str()), Some("transfer-encoding"));
        let mut h = http::HeaderMap::new();
        h.insert("connection", "keep-alive".parse().unwrap());
        assert!(spin_forbidden(&h).is_some());
    }
}
