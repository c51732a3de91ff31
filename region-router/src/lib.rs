//! The region router: sends each request to the fan's nearest healthy region, fails over
//! when a region dies, and lets operators drain and restore regions.
//!
//! - **Choice** ([`select`]): an explicit `x-tessera-region`, else the latency table row of
//!   the fan's PoP (`fly-region`, `x-tessera-pop`, or the router's own), skipping regions
//!   that are draining, down, or whose breaker is open.
//! - **Health**: active probes of `GET {core}/healthz`, the cores' NATS heartbeats, and a
//!   per-region circuit breaker ([`breaker`]) fed by request outcomes. A refused connection
//!   takes a region out at once.
//! - **Failover** ([`proxy`]): retries on the next region for requests that were never
//!   delivered, and for delivered ones only when they are idempotent or carry an
//!   `Idempotency-Key`.
//! - **Operator control** ([`ops`], [`control`]): `GET /v1/ops/regions`, `POST
//!   /v1/ops/regions/{region}/drain|restore` with an operator token; the drained set is a
//!   versioned document replicated between routers through a JetStream key-value bucket
//!   in the hub and kept in a local state file.
//!
//! It runs as its own service (`tessera-router`) or inside another process through
//! [`RouterService`] (the edge host can call [`RouterService::forward`]).
//!
//! What it is not: a load balancer inside a region, or an authority on sales. It never
//! looks into request bodies, and sale control (`/v1/ops/events/...`) is forwarded to a
//! region's core like any other request.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{any, get, post};
use tessera_api::ops::RegionList;
use tessera_common::Clock;
use tokio::task::JoinHandle;

pub mod breaker;
pub mod config;
pub mod control;
mod ops;
pub mod proxy;
pub mod select;
mod state;

pub use config::RouterConfig;
use control::ControlPlane;
use state::Shared;

/// A running router: its state and background tasks (probes, heartbeats, replication),
/// which stop when it is dropped.
pub struct RouterService {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RouterService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterService").field("shared", &self.shared).finish_non_exhaustive()
    }
}

impl RouterService {
    /// Validates `cfg`, loads the region state, connects to NATS (in the background: a
    /// router starts and routes even while NATS is unreachable) and starts probing.
    pub async fn start(cfg: RouterConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        cfg.validate()?;
        let verifier = Arc::new(tessera_identity::oidc::Oidc::new(&cfg.identity)?);
        let control = ControlPlane::load(cfg.state_file.clone(), cfg.nats.url.is_some())?;
        let mut tasks = Vec::new();
        if let Some(refresh) = verifier.spawn_refresh() {
            tasks.push(refresh);
        }
        let heartbeats = match &cfg.nats.url {
            Some(_) => {
                let client = cfg.nats.connect("tessera-router").await?;
                tasks.push(control.spawn_replication(
                    client.clone(),
                    cfg.control_domain.clone(),
                    control::BucketLimits {
                        name: cfg.control_bucket.clone(),
                        replicas: cfg.control_replicas,
                        max_bytes: cfg.control_max_bytes,
                    },
                ));
                let monitor =
                    tessera_bus::heartbeat::HeartbeatMonitor::start(&client, clock.clone()).await?;
                Some(monitor)
            }
            None => None,
        };
        let shared = Arc::new(Shared::new(cfg, control, heartbeats, clock, verifier)?);
        for index in 0..shared.regions.len() {
            tasks.push(tokio::spawn(shared.clone().probe_loop(index)));
        }
        tasks.push(tokio::spawn(shared.clone().heartbeat_loop()));
        Ok(RouterService { shared, tasks })
    }

    /// The whole HTTP surface: the operator API, `/healthz`, `/metrics`, and every other
    /// `/v1/...` path forwarded to a region.
    pub fn app(&self) -> Router {
        let own = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/v1/ops/regions", get(ops::list))
            .route("/v1/ops/regions/{region}/drain", post(ops::drain))
            .route("/v1/ops/regions/{region}/restore", post(ops::restore))
            .with_state(self.shared.clone());
        // The forwarded path gets the request span and metrics but not the error
        // normalization: a region's responses, errors included, pass through untouched.
        let forwarded = Router::new()
            .route("/v1/{*rest}", any(forward_handler))
            .with_state(self.shared.clone())
            .layer(axum::middleware::from_fn(|req: Request, next: axum::middleware::Next| {
                tessera_runtime::http::observe("router", req, next)
            }));
        tessera_runtime::http::with_common_layers(
            "router",
            own,
            self.shared.cfg.upstream.body_limit_bytes,
        )
        .merge(forwarded)
    }

    /// Forwards one request (a `/v1/...` path) as the router would.
    pub async fn forward(&self, req: Request) -> Response {
        proxy::forward(self.shared.clone(), req).await
    }

    /// The regions as this router sees them now.
    pub fn regions(&self) -> RegionList {
        self.shared.region_list()
    }

    /// The replicated region-control state.
    pub fn control(&self) -> &Arc<ControlPlane> {
        &self.shared.control
    }
}

impl Drop for RouterService {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn forward_handler(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    proxy::forward(shared, req).await
}
