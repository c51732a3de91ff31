//! The core's configuration: `deploy/<env>/core.toml` (or `--config`), overridden by
//! `TESSERA_CORE__<KEY>` variables, read strictly (`tessera_runtime::config::read`).
//!
//! Per-region settings (`region`, `listen`, `public_url`, `nats`) differ between the core
//! processes; the shared ones (`store`, `identity`, `queue.edge_keys`, `tickets`,
//! `payments`) must be the same in every region, and [`Config::shared_fingerprint`] lets
//! operators check that they are.
//!
//! [`Config::check`] lists every problem, one line each: always-wrong settings in both
//! modes, development conveniences only in `production` (see `README.md`, Configuration).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tessera_bus::NatsClientConfig;
use tessera_identity::oidc::OidcConfig;
use tessera_identity::{Keyset, SigningKeyPair, dev};
use tessera_runtime::config::{Checks, ConfigError, ConfigSource, Mode, Secret};
use tessera_runtime::http::ServerTlsConfig;
use tessera_runtime::telemetry::TelemetryConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `local` (development conveniences allowed) or `production` (the default).
    pub mode: Mode,
    /// This core's region (`us-east`).
    pub region: String,
    /// Every region of the deployment (for outbox takeover and checks).
    pub regions: Vec<String>,
    pub listen: String,
    /// How routers and peers reach this core.
    pub public_url: String,
    /// Largest request body, except an event's creation (its seat map).
    pub body_limit_bytes: usize,
    /// Largest event creation (`POST /v1/ops/events`, an operator's): a stadium's seat map
    /// is tens of kilobytes (80,000 seats in rows of 25 take about 75 KB).
    pub seat_map_limit_bytes: usize,
    /// Serve HTTPS (and optionally require client certificates) instead of HTTP.
    pub tls: ServerTlsConfig,
    pub store: StoreConfig,
    pub nats: NatsClientConfig,
    /// Who may sign identity tokens (any OIDC issuer).
    pub identity: OidcConfig,
    /// The local development issuer (local mode only).
    pub dev_issuer: DevIssuerConfig,
    /// Credentials of the services allowed on `/v1/internal/...` (the edge), by name.
    pub service_credentials: BTreeMap<String, Secret>,
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
            mode: Mode::default(),
            region: "us-east".into(),
            regions: vec!["us-east".into(), "eu-west".into()],
            listen: "127.0.0.1:8101".into(),
            public_url: "http://127.0.0.1:8101".into(),
            body_limit_bytes: 64 * 1024,
            seat_map_limit_bytes: 1 << 20,
            tls: ServerTlsConfig::default(),
            store: StoreConfig::default(),
            nats: NatsClientConfig::default(),
            identity: OidcConfig::default(),
            dev_issuer: DevIssuerConfig::default(),
            service_credentials: BTreeMap::new(),
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
#[serde(default)]
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

/// The development issuer: mints tokens (`POST /v1/dev/token`) and publishes its
/// discovery document and JWKS under `/v1/dev`. It exists only in local mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DevIssuerConfig {
    /// Its private key (base64url 32-byte seed); the issuer is off when unset.
    pub seed: Option<Secret>,
    pub kid: String,
}

impl Default for DevIssuerConfig {
    fn default() -> Self {
        DevIssuerConfig { seed: None, kid: "dev-1".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
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
    /// The key that signs admission watermarks, `kid:base64url-seed`; the edges verify
    /// them with its public key (their `watermark_keys`).
    pub watermark_signing_key: Secret,
    /// Time on top of `admission_ttl_s` before an unused admission goes to the next fan
    /// (the edge issues the token on the fan's first status request after admission).
    pub admission_grace_s: u64,
    /// Tickets per order the controller assumes until it has seen holds.
    pub tickets_per_order_prior: f64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            edge_keys: String::new(),
            require_admission: true,
            default_rate_per_s: 50.0,
            tick_ms: 250,
            admission_ttl_s: 600,
            watermark_signing_key: Secret::default(),
            admission_grace_s: 30,
            tickets_per_order_prior: 2.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PaymentsConfig {
    /// The provider's API (`https://api.stripe.com`, or the local simulator).
    pub base_url: String,
    /// The provider's secret API key (`sk_live_...`).
    pub secret_key: Secret,
    /// Secret that signs the provider's webhooks (`whsec_...`).
    pub webhook_secret: Secret,
    pub request_timeout_ms: u64,
    /// How far a webhook's signed timestamp may be from our clock.
    pub webhook_tolerance_s: u64,
    /// PEM file of certificate authorities trusted for `base_url` besides the public web
    /// roots (a provider behind a private CA, such as an egress proxy).
    pub ca_file: Option<PathBuf>,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        PaymentsConfig {
            base_url: "https://api.stripe.com".into(),
            secret_key: Secret::default(),
            webhook_secret: Secret::default(),
            request_timeout_ms: 5_000,
            webhook_tolerance_s: tessera_payments::webhook::DEFAULT_TOLERANCE_S,
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
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
#[serde(default)]
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
#[serde(default)]
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

/// Whether `text` is a FoundationDB cluster file: `description:id@host:port[,host:port...]`
/// on its first line that is not a comment.
pub fn is_cluster_file(text: &str) -> bool {
    let Some(line) = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'))
    else {
        return false;
    };
    let Some((name, coordinators)) = line.split_once('@') else { return false };
    let Some((desc, id)) = name.split_once(':') else { return false };
    let word = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    word(desc)
        && word(id)
        && coordinators.split(',').all(|c| {
            let c = c.trim().trim_end_matches(":tls");
            c.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            })
        })
}

impl Config {
    /// A digest of the settings every region must share, logged at start so operators
    /// can compare regions.
    pub fn shared_fingerprint(&self) -> String {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.mode.hash(&mut h);
        self.store.backend.hash(&mut h);
        self.store.root.hash(&mut h);
        self.identity.issuer.hash(&mut h);
        self.identity.audience.hash(&mut h);
        self.identity.keys.hash(&mut h);
        self.queue.edge_keys.hash(&mut h);
        self.tickets.verify_keys.hash(&mut h);
        self.tickets.signing_seed.as_ref().map(|s| s.expose().to_owned()).hash(&mut h);
        self.payments.base_url.hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// Checks what must hold before serving, as if every setting came from code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(&ConfigSource::in_code())
    }

    /// Every problem of this configuration in its mode, each naming its setting and
    /// where the setting came from.
    pub fn check(&self, source: &ConfigSource) -> Result<(), ConfigError> {
        let mut c = Checks::new(self.mode, source);
        if tessera_api::RegionId::parse(&self.region).is_err() {
            c.error("region", format!("{:?} is not a region id", self.region));
        }
        if !self.regions.iter().any(|r| r == &self.region) {
            c.error("region", format!("{} is not in regions {:?}", self.region, self.regions));
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.regions {
            if tessera_api::RegionId::parse(r).is_err() || !seen.insert(r) {
                c.error("regions", format!("{r:?} is not a region id, or is listed twice"));
            }
        }
        self.tls.check("tls", &mut c);
        if self.bus.stream_max_bytes <= 0 {
            c.error(
                "bus.stream_max_bytes",
                "must be a positive size (an unlimited stream fills the JetStream store)",
            );
        }
        if !matches!(self.bus.stream_replicas, 1..=5) {
            c.error("bus.stream_replicas", "must be between 1 and 5");
        }
        match self.store.backend.as_str() {
            "embedded" => {}
            "fdb" => {
                if let Some(file) = &self.store.fdb_cluster_file {
                    match std::fs::read_to_string(file) {
                        Ok(text) if is_cluster_file(&text) => {}
                        Ok(_) => c.error(
                            "store.fdb_cluster_file",
                            format!(
                                "{} is not a cluster file (`description:id@host:port,...`)",
                                file.display()
                            ),
                        ),
                        Err(e) => c.error(
                            "store.fdb_cluster_file",
                            format!("cannot read {}: {e}", file.display()),
                        ),
                    }
                }
            }
            other => c.error("store.backend", format!("{other:?}: must be embedded or fdb")),
        }
        self.nats.check("nats", &mut c);
        self.identity.check("identity", &mut c);
        if let Some(seed) = &self.dev_issuer.seed {
            c.production("dev_issuer.seed", "the development issuer exists only in local mode");
            if SigningKeyPair::from_base64(&self.dev_issuer.kid, seed.expose()).is_err() {
                c.error("dev_issuer.seed", "is not a base64url 32-byte seed");
            }
        }
        if self.service_credentials.is_empty() {
            c.production(
                "service_credentials",
                "missing: the edge needs a credential for /v1/internal/...",
            );
        }
        for (name, secret) in &self.service_credentials {
            let key = format!("service_credentials.{name}");
            if secret.is_empty() {
                c.error(&key, "missing: an empty credential");
            } else if secret.expose().len() < 24 {
                c.production(&key, "shorter than 24 characters");
            } else if dev::SECRETS
                .iter()
                .any(|d| tessera_runtime::config::constant_time_eq(d, secret.expose()))
            {
                c.production(&key, "is a well-known development value");
            } else if tessera_runtime::config::is_placeholder(secret.expose()) {
                c.production(&key, "is the example files' placeholder (`CHANGE_ME`)");
            }
        }
        self.check_queue(&mut c);
        let p = &self.payments;
        c.secret("payments.secret_key", &p.secret_key, &dev::SECRETS);
        c.secret("payments.webhook_secret", &p.webhook_secret, &dev::SECRETS);
        c.encrypted_url("payments.base_url", &p.base_url);
        if let Some(ca) = &p.ca_file
            && !ca.is_file()
        {
            c.error("payments.ca_file", format!("{} does not exist", ca.display()));
        }
        match &self.tickets.signing_seed {
            None => c.production(
                "tickets.signing_seed",
                "missing: tickets would be signed with the development key",
            ),
            Some(seed) => match SigningKeyPair::from_base64(&self.tickets.kid, seed.expose()) {
                Err(_) => c.error("tickets.signing_seed", "is not a base64url 32-byte seed"),
                Ok(k) if dev::is_development_signing_key(&k) => {
                    c.production("tickets.signing_seed", "is the development key")
                }
                Ok(_) => {}
            },
        }
        if !self.tickets.verify_keys.is_empty() && Keyset::parse(&self.tickets.verify_keys).is_err()
        {
            c.error("tickets.verify_keys", "is not `kid:base64url,...`");
        }
        for (i, w) in self.notifications.webhooks.iter().enumerate() {
            let key = format!("notifications.webhooks[{i}]");
            if w.secret.is_empty() {
                c.error(&format!("{key}.secret"), "missing: receivers could not verify deliveries");
            } else if dev::SECRETS.contains(&w.secret.expose()) {
                c.production(&format!("{key}.secret"), "is a well-known development value");
            }
            c.encrypted_url(&format!("{key}.url"), &w.url);
        }
        c.finish()
    }

    fn check_queue(&self, c: &mut Checks<'_>) {
        let q = &self.queue;
        if !q.require_admission {
            c.production("queue.require_admission", "off: holds would skip the waiting room");
        }
        match Keyset::parse(&q.edge_keys) {
            Err(_) => c.error("queue.edge_keys", "is not `kid:base64url,...`"),
            Ok(ks) if ks.is_empty() && q.require_admission => {
                c.error("queue.edge_keys", "missing: no admission token could be verified")
            }
            Ok(ks) => {
                if ks.ed25519_keys().iter().any(dev::is_development_key) {
                    c.production("queue.edge_keys", "holds the development edge key");
                }
            }
        }
        if q.watermark_signing_key.is_empty() {
            c.production(
                "queue.watermark_signing_key",
                "missing: watermarks would be signed with the development key",
            );
        } else {
            match SigningKeyPair::from_config(q.watermark_signing_key.expose()) {
                Err(_) => c.error("queue.watermark_signing_key", "is not `kid:base64url-seed`"),
                Ok(k) if dev::is_development_signing_key(&k) => {
                    c.production("queue.watermark_signing_key", "is the development key")
                }
                Ok(_) => {}
            }
        }
    }

    /// The key that signs tickets (the development key when none is configured, which
    /// only local mode allows).
    pub fn ticket_signing_key(&self) -> anyhow::Result<SigningKeyPair> {
        match &self.tickets.signing_seed {
            Some(seed) => SigningKeyPair::from_base64(&self.tickets.kid, seed.expose())
                .map_err(|e| anyhow::anyhow!("tickets.signing_seed: {e}")),
            None => Ok(dev::key(dev::Purpose::Tickets, &self.tickets.kid)),
        }
    }

    /// The key that signs admission watermarks (the development key when none is
    /// configured, which only local mode allows).
    pub fn watermark_signing_key(&self) -> anyhow::Result<SigningKeyPair> {
        if self.queue.watermark_signing_key.is_empty() {
            return Ok(dev::key(dev::Purpose::Watermark, "wm-dev"));
        }
        SigningKeyPair::from_config(self.queue.watermark_signing_key.expose())
            .map_err(|e| anyhow::anyhow!("queue.watermark_signing_key: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A production configuration that passes: real-looking keys, TLS NATS with a seed,
    /// an HTTPS issuer, secrets set.
    fn production() -> (Config, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not checked here").unwrap();
        let mut c = Config { mode: Mode::Production, ..Config::default() };
        c.nats = NatsClientConfig {
            url: Some("tls://nats.internal:4222".into()),
            ca_file: Some(ca),
            nkey_seed: Secret::new(nkeys::KeyPair::new_user().seed().unwrap()),
        };
        c.identity.issuer = "https://login.example.com/".into();
        c.service_credentials.insert("edge".into(), Secret::new("x".repeat(40)));
        c.queue.edge_keys =
            Keyset::new([SigningKeyPair::from_seed("e1", [1; 32]).public()]).to_config_string();
        c.queue.watermark_signing_key =
            Secret::new(SigningKeyPair::from_seed("wm1", [2; 32]).to_config_string());
        c.payments.secret_key = Secret::new("sk_live_abc");
        c.payments.webhook_secret = Secret::new("whsec_live_abc");
        c.tickets.signing_seed =
            Some(Secret::new(SigningKeyPair::from_seed("t", [3; 32]).seed_base64()));
        (c, dir)
    }

    fn refusals(c: &Config) -> Vec<String> {
        match c.validate() {
            Ok(()) => Vec::new(),
            Err(e) => e.lines(),
        }
    }

    #[test]
    fn a_complete_production_configuration_passes() {
        let (c, _dir) = production();
        assert_eq!(refusals(&c), Vec::<String>::new());
    }

    #[test]
    fn production_refuses_each_unsafe_setting_with_one_line_naming_it() {
        type Break = fn(&mut Config);
        let cases: Vec<(&str, Break)> = vec![
            ("dev_issuer.seed", |c| {
                c.dev_issuer.seed =
                    Some(Secret::new(dev::key(dev::Purpose::Identity, "k").seed_base64()))
            }),
            ("identity.issuer", |c| c.identity.issuer = "http://127.0.0.1:8081/v1/dev".into()),
            ("identity.keys", |c| {
                c.identity.keys =
                    Keyset::new([dev::key(dev::Purpose::Identity, "k").public()]).to_config_string()
            }),
            ("queue.edge_keys", |c| {
                c.queue.edge_keys =
                    Keyset::new([dev::key(dev::Purpose::Edge, "k").public()]).to_config_string()
            }),
            ("queue.watermark_signing_key", |c| c.queue.watermark_signing_key = Secret::default()),
            ("queue.watermark_signing_key", |c| {
                c.queue.watermark_signing_key =
                    Secret::new(dev::key(dev::Purpose::Watermark, "k").to_config_string())
            }),
            ("queue.require_admission", |c| c.queue.require_admission = false),
            ("tickets.signing_seed", |c| c.tickets.signing_seed = None),
            ("tickets.signing_seed", |c| {
                c.tickets.signing_seed =
                    Some(Secret::new(dev::key(dev::Purpose::Tickets, "k").seed_base64()))
            }),
            ("payments.secret_key", |c| c.payments.secret_key = Secret::new("sk_test_tessera")),
            ("payments.webhook_secret", |c| {
                c.payments.webhook_secret = Secret::new("whsec_tessera_local")
            }),
            ("payments.base_url", |c| c.payments.base_url = "http://paysim:7420".into()),
            ("nats.url", |c| {
                c.nats.url = Some("nats://nats.internal:4222".into());
                c.nats.ca_file = None;
            }),
            ("nats.nkey_seed", |c| c.nats.nkey_seed = Secret::default()),
            ("nats.url", |c| c.nats.url = None),
            ("service_credentials", |c| c.service_credentials.clear()),
            ("service_credentials.edge", |c| {
                c.service_credentials.insert("edge".into(), Secret::new("short"));
            }),
        ];
        for (key, break_it) in cases {
            let (mut c, _dir) = production();
            break_it(&mut c);
            let lines = refusals(&c);
            assert_eq!(lines.len(), 1, "{key}: {lines:?}");
            assert!(
                lines[0].starts_with(&format!("production mode refuses `{key}` (set in code): ")),
                "{key}: {lines:?}"
            );
            // The same setting is a development convenience in local mode.
            c.mode = Mode::Local;
            assert_eq!(refusals(&c), Vec::<String>::new(), "{key} in local mode");
        }
    }

    #[test]
    fn missing_secrets_and_bad_shapes_stop_every_mode() {
        for mode in [Mode::Local, Mode::Production] {
            let (mut c, _dir) = production();
            c.mode = mode;
            c.payments.secret_key = Secret::default();
            c.region = "mars".into();
            c.store.backend = "fdb".into();
            c.store.fdb_cluster_file = Some("/nonexistent/fdb.cluster".into());
            let lines = refusals(&c);
            let keys: Vec<&str> =
                lines.iter().map(|l| l.split('`').nth(1).unwrap_or_default()).collect();
            assert_eq!(
                keys,
                ["region", "store.fdb_cluster_file", "payments.secret_key"],
                "{lines:?}"
            );
        }
    }

    #[test]
    fn recognises_cluster_files() {
        assert!(is_cluster_file("tessera:abc123@10.0.0.1:4500,10.0.0.2:4500:tls\n"));
        assert!(is_cluster_file("# comment\n\ndesc_1:ID@host.example:4500"));
        assert!(!is_cluster_file(""));
        assert!(!is_cluster_file("not a cluster file"));
        assert!(!is_cluster_file("desc:id@host"));
        assert!(!is_cluster_file("desc@host:4500"));
    }
}
