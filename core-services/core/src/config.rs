//! The core's configuration: `deploy/<env>/core.toml` (or `--config`), overridden by
//! `TESSERA_CORE__<KEY>` variables.
//!
//! Per-region settings (`region`, `listen`, `public_url`, `nats.url`) differ between the
//! core processes; the shared ones (`store`, `identity`, `queue.edge_keys`, `tickets`,
//! `payments`) must be the same in every region, and [`Config::shared_fingerprint`] lets
//! operators check that they are.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tessera_runtime::config::Secret;
use tessera_runtime::telemetry::TelemetryConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This core's region (`us-east`).
    pub region: String,
    /// Every region of the deployment (for outbox takeover and checks).
    pub regions: Vec<String>,
    pub listen: String,
    /// How routers and peers reach this core.
    pub public_url: String,
    pub body_limit_bytes: usize,
    pub store: StoreConfig,
    pub nats: NatsConfig,
    pub identity: IdentityConfig,
    pub queue: QueueConfig,
    pub payments: PaymentsConfig,
    pub tickets: TicketsConfig,
    pub inventory: InventoryConfig,
    pub bus: BusConfig,
    pub notifications: tessera_notifications::NotifierConfig,
    pub telemetry: TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            region: "us-east".into(),
            regions: vec!["us-east".into(), "eu-west".into()],
            listen: "127.0.0.1:8101".into(),
            public_url: "http://127.0.0.1:8101".into(),
            body_limit_bytes: 64 * 1024,
            store: StoreConfig::default(),
            nats: NatsConfig::default(),
            identity: IdentityConfig::default(),
            queue: QueueConfig::default(),
            payments: PaymentsConfig::default(),
            tickets: TicketsConfig::default(),
            inventory: InventoryConfig::default(),
            bus: BusConfig::default(),
            notifications: tessera_notifications::NotifierConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `embedded` (default) or `fdb` (needs the `fdb` build feature).
    pub backend: String,
    /// Directory of the embedded store, shared by every region's core on one machine.
    pub path: PathBuf,
    /// First element of every key (several deployments can share one FoundationDB).
    pub root: String,
    /// FoundationDB cluster file (default: the client's default lookup).
    pub fdb_cluster_file: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: "embedded".into(),
            path: PathBuf::from(".tessera/store"),
            root: "tsr".into(),
            fdb_cluster_file: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// This region's NATS leaf node; no bus when unset.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// The `iss` of accepted identity tokens.
    pub issuer: String,
    /// Public keys of the issuer: `kid:base64url,...`.
    pub keys: String,
    /// When set, this core also mints tokens (`POST /v1/dev/token`) with this private key
    /// (base64url 32-byte seed). Local development only.
    pub dev_issuer_seed: Option<Secret>,
    pub dev_issuer_kid: String,
    /// Allowed clock skew.
    pub leeway_s: u64,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            issuer: "https://id.tessera.local".into(),
            keys: String::new(),
            dev_issuer_seed: None,
            dev_issuer_kid: "dev-1".into(),
            leeway_s: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Public keys of the edges that sign queue and admission tokens: `kid:base64url,...`.
    pub edge_keys: String,
    /// Refuse holds without a valid admission token.
    pub require_admission: bool,
    /// Admission rate of an event whose operator set none.
    pub default_rate_per_s: f64,
    /// How often the admission controller ticks.
    pub tick_ms: u64,
    /// How long an admission token lives.
    pub admission_ttl_s: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            edge_keys: String::new(),
            require_admission: true,
            default_rate_per_s: 50.0,
            tick_ms: 250,
            admission_ttl_s: 600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentsConfig {
    /// The provider's API (`https://api.stripe.com`, or the local simulator).
    pub base_url: String,
    pub secret_key: Secret,
    /// Secret that signs the provider's webhooks (`whsec_...`).
    pub webhook_secret: Secret,
    pub request_timeout_ms: u64,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        PaymentsConfig {
            base_url: "http://127.0.0.1:7420".into(),
            secret_key: Secret::new("sk_test_tessera"),
            webhook_secret: Secret::new("whsec_tessera_local"),
            request_timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TicketsConfig {
    /// Private key that signs tickets (base64url 32-byte seed).
    pub signing_seed: Option<Secret>,
    pub kid: String,
    /// Public keys gates accept: `kid:base64url,...` (the signing key is always accepted).
    pub verify_keys: String,
}

impl Default for TicketsConfig {
    fn default() -> Self {
        TicketsConfig { signing_seed: None, kid: "tickets-1".into(), verify_keys: String::new() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InventoryConfig {
    /// How long a hold's timer may stay frozen while a payment is in flight.
    pub payment_window_s: u64,
    pub sweep_interval_ms: u64,
    pub reconcile_interval_ms: u64,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            payment_window_s: 600,
            sweep_interval_ms: 250,
            reconcile_interval_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// The region-local store of the projections this region builds from events.
    pub projection_dir: PathBuf,
    /// How often the core tells routers it is alive.
    pub heartbeat_ms: u64,
    /// Keep-alive interval of server-sent-event streams.
    pub sse_keep_alive_s: u64,
    /// Size cap of this region's event stream, in bytes (the oldest events go first). It
    /// must fit the leaf node's JetStream `max_file_store`.
    pub stream_max_bytes: i64,
    /// How long the stream keeps events.
    pub stream_max_age_s: u64,
    /// Copies of the stream: 1 on a single leaf node, 3 on a leaf cluster.
    pub stream_replicas: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            projection_dir: PathBuf::from(".tessera/projection"),
            heartbeat_ms: 250,
            sse_keep_alive_s: 15,
            stream_max_bytes: 1 << 30,
            stream_max_age_s: 7 * 24 * 3600,
            stream_replicas: 1,
        }
    }
}

impl Config {
    /// A digest of the settings every region must share, logged at start so operators
    /// can compare regions.
    pub fn shared_fingerprint(&self) -> String {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.store.backend.hash(&mut h);
        self.store.root.hash(&mut h);
        self.identity.issuer.hash(&mut h);
        self.identity.keys.hash(&mut h);
        self.queue.edge_keys.hash(&mut h);
        self.tickets.verify_keys.hash(&mut h);
        self.tickets.signing_seed.as_ref().map(|s| s.expose().to_owned()).hash(&mut h);
        self.payments.base_url.hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// Checks what must hold before serving.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.regions.iter().any(|r| r == &self.region),
            "region {} is not in regions {:?}",
            self.region,
            self.regions
        );
        anyhow::ensure!(
            !self.identity.keys.is_empty() || self.identity.dev_issuer_seed.is_some(),
            "identity.keys is empty: no identity token could be verified"
        );
        anyhow::ensure!(
            !self.queue.require_admission || !self.queue.edge_keys.is_empty(),
            "queue.require_admission is on but queue.edge_keys is empty"
        );
        anyhow::ensure!(
            matches!(self.store.backend.as_str(), "embedded" | "fdb"),
            "store.backend must be embedded or fdb"
        );
        anyhow::ensure!(
            self.bus.stream_max_bytes > 0,
            "bus.stream_max_bytes must be a positive size (an unlimited stream fills the JetStream store)"
        );
        anyhow::ensure!(
            matches!(self.bus.stream_replicas, 1..=5),
            "bus.stream_replicas must be between 1 and 5"
        );
        Ok(())
    }
}
