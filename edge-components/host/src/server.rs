//! The edge: wasmtime with a pooling allocator and pre-instantiated components, a fresh
//! store and instance per request, per-request memory and time limits, Spin-style
//! service chaining (`http://<component>.spin.internal`) handled in-process, an outbound
//! allow-list, and W3C trace context on every request to the region router.

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

/// Response headers components use to report what happened; the host turns them into
/// metrics and strips them.
const METRIC_HEADERS: &[(&str, &str)] = &[
    ("x-tessera-bot-verdict", "tessera_edge_bot_verdicts_total"),
    ("x-tessera-cache", "tessera_edge_catalog_cache_total"),
    ("x-tessera-queue-outcome", "tessera_edge_queue_outcomes_total"),
];

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
    pop: String,
    variables: BTreeMap<String, String>,
    permits: Semaphore,
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

/// Outbound HTTP of one instance: chaining, allow-list, trace context.
struct Hooks {
    edge: Arc<Inner>,
    component: usize,
    depth: u32,
    trace: TraceCtx,
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ),
    wasmtime_wasi_http::Error,
>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
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
            let trace = self.trace.clone();
            metrics::counter!("tessera_edge_outbound_requests_total", "target" => "chain", "outcome" => "ok").increment(1);
            return Box::new(async move {
                let resp = run(edge, idx, request, trace, depth).await.map_err(|e| {
                    wasmtime_wasi_http::Error::InternalError(Some(format!("{e:#}")))
                })?;
                let done: Box<dyn std::future::Future<Output = _> + Send> =
                    Box::new(async { Ok(()) });
                Ok((resp, done))
            });
        }
        self.trace.inject(request.headers_mut());
        if let Ok(v) = http::HeaderValue::from_str(&edge.pop) {
            request.headers_mut().insert(tessera_api::headers::EDGE_POP, v);
        }
        Box::new(async move {
            let started = Instant::now();
            let result = wasmtime_wasi_http::default_send_request(request, options).await;
            let outcome = if result.is_ok() { "ok" } else { "error" };
            metrics::counter!("tessera_edge_outbound_requests_total", "target" => "router", "outcome" => outcome).increment(1);
            metrics::histogram!("tessera_edge_outbound_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            let (resp, io) = result?;
            let io: Box<dyn std::future::Future<Output = _> + Send> = Box::new(io);
            Ok((resp.map(|b| b.boxed_unsync()), io))
        })
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
/// as the headers are ready; the instance lives on (in its own task) while the body streams.
fn run(
    edge: Arc<Inner>,
    idx: usize,
    request: http::Request<WasiBody>,
    trace: TraceCtx,
    depth: u32,
) -> Pin<Box<dyn std::future::Future<Output = Reply> + Send>> {
    Box::pin(async move {
        let (tx, rx) = oneshot::channel();
        let slot: ReplySlot = Arc::new(Mutex::new(Some(tx)));
        let task_slot = slot.clone();
        let timeout = edge.limits.request_timeout;
        let component = edge.components[idx].id.clone();
        metrics::counter!("tessera_edge_instances_total", "component" => component.clone())
            .increment(1);
        tokio::spawn(async move {
            let work = instance(edge, idx, request, trace, depth, task_slot.clone());
            let result = match tokio::time::timeout(timeout, work).await {
                Ok(r) => r,
                Err(_) => Err(anyhow!("component `{component}` exceeded the request timeout")),
            };
            match result {
                Ok(()) => send_reply(
                    &task_slot,
                    Err(anyhow!("component `{component}` returned no response")),
                ),
                Err(e) => send_reply(&task_slot, Err(e)),
            }
        });
        match rx.await {
            Ok(reply) => reply,
            Err(_) => Err(anyhow!("component task ended without a reply")),
        }
    })
}

async fn instance(
    edge: Arc<Inner>,
    idx: usize,
    request: http::Request<WasiBody>,
    trace: TraceCtx,
    depth: u32,
    slot: ReplySlot,
) -> anyhow::Result<()> {
    let loaded = &edge.components[idx];
    let mut wasi = WasiCtx::builder();
    wasi.inherit_stderr();
    for (k, v) in &loaded.environment {
        wasi.env(k, v);
    }
    let host = Host {
        table: ResourceTable::new(),
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        hooks: Hooks { edge: edge.clone(), component: idx, depth, trace },
        spin: SpinState::new(loaded.grants.clone(), edge.kv.clone()),
        limits: StoreLimitsBuilder::new()
            .memory_size(edge.limits.memory_max_bytes)
            .instances(64)
            .tables(64)
            .memories(16)
            .build(),
    };
    let mut store = Store::new(&edge.engine, host);
    store.limiter(|h| &mut h.limits);
    let ticks = (edge.limits.request_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
    store.set_epoch_deadline(ticks);
    store.epoch_deadline_trap();
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
    pub pop: String,
    pub compile_cache_dir: Option<PathBuf>,
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

impl Edge {
    /// Loads the manifest, compiles (or loads cached) components and pre-instantiates them.
    pub fn new(opts: EdgeOptions) -> anyhow::Result<Edge> {
        let manifest = Manifest::load(&opts.manifest)?;
        let variables =
            manifest::resolve_variables(&manifest.variables, &opts.spin_env, &opts.variables)?;
        let cache_dir = opts.compile_cache_dir.clone().unwrap_or_else(|| {
            manifest
                .components
                .first()
                .and_then(|c| c.source.parent().map(|p| p.join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
        });
        if opts.limits.concurrent_requests_max.saturating_mul(4)
            > opts.limits.instances_max as usize
        {
            tracing::warn!(
                instances_max = opts.limits.instances_max,
                concurrent_requests_max = opts.limits.concurrent_requests_max,
                "instances_max is below four instances per concurrent request; bursts may fail to instantiate"
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
            limits: opts.limits,
            pop: opts.pop,
            variables,
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

    /// Serves one incoming request through the component chain.
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
        let trace = TraceCtx::from_headers(req.headers());
        let span = tracing::info_span!("edge.request", method = %req.method(), route = tracing::field::Empty, status = tracing::field::Empty, trace_id = %trace.trace_id_hex());
        let path = req.uri().path().to_owned();
        let route_name = tessera_edge_logic::routes::classify(req.method().as_str(), &path)
            .map(|r| r.name())
            .unwrap_or("unmatched");
        span.record("route", route_name);
        let mut resp = self.dispatch(req, client, trace, route_name).instrument(span.clone()).await;
        for (header, metric) in METRIC_HEADERS {
            if let Some(v) = resp.headers_mut().remove(*header) {
                let label = match v.to_str() {
                    Ok(s)
                        if s.len() <= 32
                            && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') =>
                    {
                        s.to_owned()
                    }
                    _ => "other".to_owned(),
                };
                metrics::counter!(*metric, "outcome" => label).increment(1);
            }
        }
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

    async fn dispatch<B>(
        &self,
        req: http::Request<B>,
        client: SocketAddr,
        trace: TraceCtx,
        route_name: &str,
    ) -> http::Response<WasiBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let (mut parts, body) = req.into_parts();
        let body = body.map_err(Into::into).boxed_unsync();
        if route_name == "event_stream" {
            return self.stream_passthrough(parts, body, &trace).await;
        }
        let path = parts.uri.path();
        let Some(&(_, idx)) = self.0.routes.iter().find(|(p, _)| p.matches(path)) else {
            return error_response(ErrorCode::NotFound, "no such route");
        };
        let Ok(_permit) = self.0.permits.acquire().await else {
            return error_response(ErrorCode::Unavailable, "edge is shutting down");
        };
        if let Ok(v) = http::HeaderValue::from_str(&client.to_string()) {
            parts.headers.insert("spin-client-addr", v);
        }
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost")
            .to_owned();
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        if let Ok(v) = http::HeaderValue::from_str(&format!("http://{host}{pq}")) {
            parts.headers.insert("spin-full-url", v);
        }
        if let Ok(uri) = format!("http://{host}{pq}").parse() {
            parts.uri = uri;
        }
        let request = http::Request::from_parts(parts, body);
        match run(self.0.clone(), idx, request, trace, 0).await {
            Ok(resp) => resp,
            Err(e) => {
                let msg = format!("{e:#}");
                if msg.contains("exceeded the request timeout") || msg.contains("interrupt") {
                    tracing::warn!("request timed out: {msg}");
                    error_response(ErrorCode::Timeout, "the edge took too long to answer")
                } else {
                    tracing::error!("component failed: {msg}");
                    error_response(ErrorCode::Internal, "internal error")
                }
            }
        }
    }

    /// Server-sent events go straight to the router: the stream can outlive any sensible
    /// per-instance time limit, and there is nothing for a component to do on it.
    async fn stream_passthrough(
        &self,
        parts: http::request::Parts,
        body: WasiBody,
        trace: &TraceCtx,
    ) -> http::Response<WasiBody> {
        let Some(router) = self.0.variables.get("router_url") else {
            return error_response(
                ErrorCode::Internal,
                "edge misconfigured: router_url is not set",
            );
        };
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let Ok(uri) = format!("{}{}", router.trim_end_matches('/'), pq).parse::<http::Uri>() else {
            return error_response(ErrorCode::Internal, "edge misconfigured: router_url");
        };
        let mut req = http::Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        for (k, v) in &parts.headers {
            if !matches!(k.as_str(), "host" | "connection" | "content-length" | "transfer-encoding")
            {
                req.headers_mut().append(k.clone(), v.clone());
            }
        }
        trace.inject(req.headers_mut());
        let options = wasmtime_wasi_http::RequestOptions {
            connect_timeout: Some(Duration::from_secs(5)),
            first_byte_timeout: Some(Duration::from_secs(30)),
            between_bytes_timeout: Some(Duration::from_secs(3600)),
        };
        match wasmtime_wasi_http::default_send_request(req, Some(options)).await {
            Ok((resp, io)) => {
                tokio::spawn(io);
                resp.map(|b| b.boxed_unsync())
            }
            Err(e) => {
                tracing::warn!("event stream: router unreachable: {e}");
                error_response(ErrorCode::RegionUnavailable, "region unreachable")
            }
        }
    }
}
