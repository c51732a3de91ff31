//! The edge host's typed configuration (`tessera_runtime::config::load("edge", ..)`:
//! defaults, then the `--config` TOML file, then `TESSERA_EDGE__<KEY>` variables).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_runtime::telemetry::TelemetryConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EdgeConfig {
    /// Where fans connect.
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz` and `/readyz`.
    pub admin_listen: SocketAddr,
    /// The Spin manifest naming components, routes and variables.
    pub manifest: PathBuf,
    /// The PoP this edge runs in (sent to the router as `x-tessera-pop`).
    pub pop: String,
    /// Core NATS for admission watermarks and catalog invalidations; none disables the
    /// subscriber (components then poll).
    pub nats_url: Option<String>,
    /// Application variables, below `SPIN_VARIABLE_<NAME>` and above manifest defaults.
    pub variables: BTreeMap<String, String>,
    pub limits: Limits,
    /// Where compiled components are cached (default: `.cache` beside the `.wasm` files
    /// when it can be created there, else `tessera-edge-compile-cache` in the temporary
    /// directory). Images set it to a declared writable path.
    pub compile_cache_dir: Option<PathBuf>,
    /// Fail where Spin fails instead of tolerating it (tests use this to catch components
    /// that would break under `spin up`; see `tessera_edge_host::server`).
    pub spin_strict: bool,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock limit for one request until its response head is out.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Wall-clock limit for a streamed response body (server-sent events) after its head.
    #[serde(with = "humantime_serde")]
    pub stream_timeout: Duration,
    /// Linear memory one component instance may grow to.
    pub memory_max_bytes: usize,
    /// Bytes of each pooled linear memory kept resident between instances (reset with
    /// memset instead of being returned to the kernel).
    pub memory_keep_resident_bytes: usize,
    /// Component instances alive at once (pooling allocator slots): one per request in
    /// flight (more with service chaining), so at least `concurrent_requests_max`.
    pub instances_max: u32,
    /// Requests served at once; more wait for a slot.
    pub concurrent_requests_max: usize,
    /// Entries per key-value store label.
    pub kv_entries_max: usize,
    /// Service-chaining depth (a loop guard).
    pub chain_depth_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout: Duration::from_secs(15),
            stream_timeout: Duration::from_secs(3600),
            memory_max_bytes: 64 << 20,
            memory_keep_resident_bytes: 2 << 20,
            instances_max: 1024,
            concurrent_requests_max: 256,
            kv_entries_max: 200_000,
            chain_depth_max: 8,
        }
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9190)),
            manifest: PathBuf::from("edge-components/spin.toml"),
            pop: "local".to_owned(),
            nats_url: None,
            variables: BTreeMap::new(),
            limits: Limits::default(),
            compile_cache_dir: None,
            spin_strict: false,
            shutdown_grace: Duration::from_secs(10),
            telemetry: TelemetryConfig::default(),
        }
    }
}
