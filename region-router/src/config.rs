//! The router's configuration (`tessera_runtime::config::load("router", ...)`).
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! pop = "fra"                      # this router's PoP, when a request names none
//! nats_url = "nats://127.0.0.1:4223"
//! state_file = "/var/lib/tessera/router-state.json"
//!
//! [[regions]]
//! id = "eu-west"
//! url = "http://10.0.1.10:9000"
//!
//! [latency_ms.fra]                 # PoP → region → round trip
//! eu-west = 12
//! us-east = 95
//!
//! [identity]
//! issuer = "https://id.tessera.local"
//! keys = "k1:base64,..."
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use serde::{Deserialize, Serialize};
use tessera_api::RegionId;
use tessera_identity::{IdentityVerifier, Keyset};
use tessera_runtime::telemetry::TelemetryConfig;

/// One region's core service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionEntry {
    pub id: RegionId,
    /// Base URL of the region's core (`http://host:port`), no trailing path.
    pub url: String,
}

/// Verification of operator tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct IdentityConfig {
    pub issuer: String,
    /// Trusted public keys, `kid:base64url,...`.
    pub keys: String,
    /// Allowed clock skew, in seconds.
    pub leeway_s: u64,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            issuer: "https://id.tessera.local".into(),
            keys: String::new(),
            leeway_s: 30,
        }
    }
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
    /// Largest request body the router buffers (so that it can resend it).
    pub body_limit_bytes: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout_ms: 300,
            response_timeout_ms: 15_000,
            attempts_max: 3,
            body_limit_bytes: 16 * 1024,
        }
    }
}

/// The router's whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RouterConfig {
    pub listen: String,
    /// This router's PoP: the latency table row used when a request names no PoP.
    pub pop: Option<String>,
    pub regions: Vec<RegionEntry>,
    /// PoP → region → latency (ms). Regions missing from a row rank after those in it.
    pub latency_ms: BTreeMap<String, BTreeMap<String, u32>>,
    /// NATS for heartbeats and the replicated region state; without it the router runs
    /// alone on its state file.
    pub nats_url: Option<String>,
    /// The JetStream domain and key-value bucket holding the region state.
    pub control_domain: String,
    pub control_bucket: String,
    /// Copies of the bucket: 1 on a single hub server, 3 on the hub cluster.
    pub control_replicas: usize,
    /// Size cap of the bucket, in bytes (it holds a few revisions of one small key).
    pub control_max_bytes: i64,
    /// Where the region state is kept across restarts.
    pub state_file: Option<PathBuf>,
    pub identity: IdentityConfig,
    pub probe: ProbeConfig,
    pub breaker: BreakerConfig,
    pub upstream: UpstreamConfig,
    pub telemetry: TelemetryConfig,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            listen: "127.0.0.1:8080".into(),
            pop: None,
            regions: Vec::new(),
            latency_ms: BTreeMap::new(),
            nats_url: None,
            control_domain: tessera_bus::topology::HUB_DOMAIN.into(),
            control_bucket: "tessera_regions".into(),
            control_replicas: 1,
            control_max_bytes: 64 << 20,
            state_file: None,
            identity: IdentityConfig::default(),
            probe: ProbeConfig::default(),
            breaker: BreakerConfig::default(),
            upstream: UpstreamConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl RouterConfig {
    /// Checks what must hold before the router starts.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(!self.regions.is_empty(), "configure at least one region ([[regions]] id, url)");
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.regions {
            ensure!(seen.insert(r.id.clone()), "region {} is configured twice", r.id);
            let uri: http::Uri =
                r.url.parse().with_context(|| format!("parse the url of region {}", r.id))?;
            ensure!(
                uri.scheme_str() == Some("http") && uri.authority().is_some(),
                "region {} url must be http://host:port, got {}",
                r.id,
                r.url
            );
        }
        self.listen_addr()?;
        self.verifier()?;
        ensure!(self.upstream.attempts_max >= 1, "upstream.attempts_max must be at least 1");
        ensure!(self.probe.interval_ms >= 10, "probe.interval_ms is too small");
        ensure!(matches!(self.control_replicas, 1..=5), "control_replicas must be between 1 and 5");
        ensure!(self.control_max_bytes > 0, "control_max_bytes must be a positive size");
        for (pop, row) in &self.latency_ms {
            for region in row.keys() {
                if !self.regions.iter().any(|r| r.id.as_str() == region) {
                    bail!("latency_ms.{pop} names unknown region {region}");
                }
            }
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listen.parse().with_context(|| format!("parse listen address {}", self.listen))
    }

    /// The operator-token verifier.
    pub fn verifier(&self) -> anyhow::Result<IdentityVerifier> {
        let keys = Keyset::parse(&self.identity.keys)
            .map_err(|e| anyhow::anyhow!("parse identity.keys: {e}"))?;
        Ok(IdentityVerifier {
            issuer: self.identity.issuer.clone(),
            keys,
            leeway_s: self.identity.leeway_s,
        })
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
        let (cfg, ignored): (RouterConfig, _) =
            tessera_runtime::config::load("router-shipped", Some(&file)).unwrap();
        assert!(ignored.is_empty(), "{ignored:?}");
        assert!(cfg.regions.len() >= 2);
        assert!(cfg.nats_url.is_some() && cfg.state_file.is_some());
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
                 [identity]\nkeys = \"k1:{}\"\n",
                keys.to_base64()
            ),
        )
        .unwrap();
        let (cfg, ignored): (RouterConfig, _) =
            tessera_runtime::config::load("router", Some(&file)).unwrap();
        assert!(ignored.is_empty(), "{ignored:?}");
        cfg.validate().unwrap();
        assert_eq!(cfg.latency_ms["fra"]["us-east"], 95);
        assert_eq!(cfg.regions[1].id.as_str(), "us-east");

        let mut bad = cfg.clone();
        bad.latency_ms.get_mut("fra").unwrap().insert("mars".into(), 1);
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "latency_ms.fra names unknown region mars"
        );
        let mut bad = cfg.clone();
        bad.regions.push(bad.regions[0].clone());
        assert!(bad.validate().is_err());
        let mut bad = cfg;
        bad.regions[0].url = "https://x".into();
        assert!(bad.validate().is_err());
    }
}
