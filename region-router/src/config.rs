//! The router's configuration (`tessera_runtime::config::load("router", ...)`).
//!
//! ```toml
//! mode = "production"              # or "local"
//! listen = "127.0.0.1:8080"
//! pop = "fra"                      # this router's PoP, when a request names none
//! state_file = "/var/lib/tessera/router-state.json"
//!
//! [nats]
//! url = "tls://127.0.0.1:4223"
//! ca_file = "/etc/tessera/nats-ca.pem"
//! nkey_seed = "SU..."              # from the environment: TESSERA_ROUTER__NATS__NKEY_SEED
//!
//! [[regions]]
//! id = "eu-west"
//! url = "https://10.0.1.10:9000"   # https: set upstream.ca_file (and a client certificate)
//!
//! [latency_ms.fra]                 # PoP → region → round trip
//! eu-west = 12
//! us-east = 95
//!
//! [identity]                       # any OIDC issuer (discovery + JWKS), or pinned `keys`
//! issuer = "https://login.example.com"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tessera_api::RegionId;
use tessera_bus::NatsClientConfig;
use tessera_identity::oidc::OidcConfig;
use tessera_runtime::config::{Checks, ConfigError, ConfigSource, Mode};
use tessera_runtime::telemetry::TelemetryConfig;

/// One region's core service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionEntry {
    pub id: RegionId,
    /// Base URL of the region's core (`http://host:port`), no trailing path.
    pub url: String,
}

/// Active health probes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbeConfig {
    /// `GET {core}/healthz` every this often.
    pub interval_ms: u64,
    /// A probe that takes longer fails.
    pub timeout_ms: u64,
    /// Consecutive failed probes (other than a refused connection, which counts at once)
    /// that mark a region down.
    pub failures_to_down: u32,
    /// A heartbeat older than this is stale.
    pub heartbeat_max_age_ms: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            interval_ms: 200,
            timeout_ms: 400,
            failures_to_down: 2,
            heartbeat_max_age_ms: 1_500,
        }
    }
}

/// The per-region circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerConfig {
    /// Consecutive failed requests that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before it lets a trial through.
    pub open_ms: u64,
    /// Upper bound of the open time, which doubles after each failed trial.
    pub open_ms_max: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { failure_threshold: 3, open_ms: 1_000, open_ms_max: 4_000 }
    }
}

/// Forwarding to regions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamConfig {
    /// TCP connect timeout; a connect failure moves the request to the next region.
    pub connect_timeout_ms: u64,
    /// How long to wait for a region's response headers (bodies may stream for longer).
    pub response_timeout_ms: u64,
    /// Most regions one request is tried on.
    pub attempts_max: usize,
    /// Largest request body the router buffers (so that it can resend it), except an
    /// event's creation.
    pub body_limit_bytes: usize,
    /// Largest event creation (`POST /v1/ops/events`, an operator's seat map), buffered
    /// the same way.
    pub seat_map_limit_bytes: usize,
    /// PEM certificate authority of the cores' HTTPS certificates (`https://` region
    /// URLs); the public web roots when unset.
    pub ca_file: Option<PathBuf>,
    /// The router's client certificate and key, for cores that require one (mutual TLS).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout_ms: 300,
            response_timeout_ms: 15_000,
            attempts_max: 3,
            body_limit_bytes: 16 * 1024,
            seat_map_limit_bytes: 1 << 20,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

/// The router's whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RouterConfig {
    /// `local` (development conveniences allowed) or `production` (the default).
    pub mode: Mode,
    pub listen: String,
    /// This router's PoP: the latency table row used when a request names no PoP.
    pub pop: Option<String>,
    pub regions: Vec<RegionEntry>,
    /// PoP → region → latency (ms). Regions missing from a row rank after those in it.
    pub latency_ms: BTreeMap<String, BTreeMap<String, u32>>,
    /// NATS for heartbeats and the replicated region state; without it the router runs
    /// alone on its state file.
    pub nats: NatsClientConfig,
    /// The JetStream domain and key-value bucket holding the region state.
    pub control_domain: String,
    pub control_bucket: String,
    /// Copies of the bucket: 1 on a single hub server, 3 on the hub cluster.
    pub control_replicas: usize,
    /// Size cap of the bucket, in bytes (it holds a few revisions of one small key).
    pub control_max_bytes: i64,
    /// Where the region state is kept across restarts.
    pub state_file: Option<PathBuf>,
    /// Who may sign operator tokens (any OIDC issuer).
    pub identity: OidcConfig,
    pub probe: ProbeConfig,
    pub breaker: BreakerConfig,
    pub upstream: UpstreamConfig,
    pub telemetry: TelemetryConfig,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            mode: Mode::default(),
            listen: "127.0.0.1:8080".into(),
            pop: None,
            regions: Vec::new(),
            latency_ms: BTreeMap::new(),
            nats: NatsClientConfig::default(),
            control_domain: tessera_bus::HUB_DOMAIN.into(),
            control_bucket: "tessera_regions".into(),
            control_replicas: 1,
            control_max_bytes: 64 << 20,
            state_file: None,
            identity: OidcConfig::default(),
            probe: ProbeConfig::default(),
            breaker: BreakerConfig::default(),
            upstream: UpstreamConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl RouterConfig {
    /// Checks what must hold before the router starts, as if every setting came from code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(&ConfigSource::in_code())
    }

    /// Every problem of this configuration in its mode, one per setting.
    pub fn check(&self, source: &ConfigSource) -> Result<(), ConfigError> {
        let mut c = Checks::new(self.mode, source);
        if self.regions.is_empty() {
            c.error("regions", "configure at least one region ([[regions]] id, url)");
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, r) in self.regions.iter().enumerate() {
            if !seen.insert(r.id.clone()) {
                c.error(
                    &format!("regions[{i}].id"),
                    format!("region {} is configured twice", r.id),
                );
            }
            let ok = r.url.parse::<http::Uri>().ok().is_some_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some()
            });
            if !ok {
                c.error(
                    &format!("regions[{i}].url"),
                    format!("must be http(s)://host:port, got {}", r.url),
                );
            }
        }
        if self.listen_addr().is_err() {
            c.error("listen", format!("{:?} is not host:port", self.listen));
        }
        self.nats.check("nats", &mut c);
        self.identity.check("identity", &mut c);
        if self.upstream.attempts_max < 1 {
            c.error("upstream.attempts_max", "must be at least 1");
        }
        for (key, file) in [
            ("upstream.ca_file", &self.upstream.ca_file),
            ("upstream.client_cert_file", &self.upstream.client_cert_file),
            ("upstream.client_key_file", &self.upstream.client_key_file),
        ] {
            if let Some(f) = file
                && !f.is_file()
            {
                c.error(key, format!("{} does not exist", f.display()));
            }
        }
        if self.upstream.client_cert_file.is_some() != self.upstream.client_key_file.is_some() {
            c.error("upstream.client_key_file", "client_cert_file and client_key_file go together");
        }
        if self.probe.interval_ms < 10 {
            c.error("probe.interval_ms", "is too small");
        }
        if !matches!(self.control_replicas, 1..=5) {
            c.error("control_replicas", "must be between 1 and 5");
        }
        if self.control_max_bytes == 0 {
            c.error("control_max_bytes", "must be a positive size");
        }
        for (pop, row) in &self.latency_ms {
            for region in row.keys() {
                if !self.regions.iter().any(|r| r.id.as_str() == region) {
                    c.error(&format!("latency_ms.{pop}"), format!("names unknown region {region}"));
                }
            }
        }
        c.finish()
    }

    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listen.parse().with_context(|| format!("parse listen address {}", self.listen))
    }

    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe.interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_production_config_has_no_unknown_keys() {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/production/router.toml");
        let cfg: RouterConfig =
            tessera_runtime::config::read("router-shipped", Some(&file)).unwrap().config;
        assert!(cfg.regions.len() >= 2);
        assert!(cfg.nats.url.is_some() && cfg.state_file.is_some());
        assert_eq!(cfg.mode, Mode::Production);
    }

    #[test]
    fn loads_the_documented_example_and_checks_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("router.toml");
        let keys = tessera_identity::SigningKeyPair::derive_for_development("k1", "x").public();
        std::fs::write(
            &file,
            format!(
                "listen = \"127.0.0.1:0\"\npop = \"fra\"\n\
                 [[regions]]\nid = \"eu-west\"\nurl = \"http://127.0.0.1:1\"\n\
                 [[regions]]\nid = \"us-east\"\nurl = \"http://127.0.0.1:2\"\n\
                 [latency_ms.fra]\neu-west = 12\nus-east = 95\n\
                 [identity]\nissuer = \"https://id.example.org\"\nkeys = \"k1:{}\"\n",
                keys.to_base64()
            ),
        )
        .unwrap();
        let cfg: RouterConfig =
            tessera_runtime::config::read("router", Some(&file)).unwrap().config;
        // Production by default: this file has no NATS, which production refuses.
        let lines = cfg.validate().unwrap_err().lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("production mode refuses `nats.url`"), "{lines:?}");
        let mut cfg = cfg;
        cfg.mode = Mode::Local;
        cfg.validate().unwrap();
        assert_eq!(cfg.latency_ms["fra"]["us-east"], 95);
        assert_eq!(cfg.regions[1].id.as_str(), "us-east");

        let mut bad = cfg.clone();
        bad.latency_ms.get_mut("fra").unwrap().insert("mars".into(), 1);
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "`latency_ms.fra` (set in code): names unknown region mars"
        );
        let mut bad = cfg.clone();
        bad.regions.push(bad.regions[0].clone());
        assert!(bad.validate().is_err());
        let mut bad = cfg;
        bad.regions[0].url = "ftp://x".into();
        assert!(bad.validate().is_err());
    }
}
