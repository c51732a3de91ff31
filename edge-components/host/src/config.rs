//! The edge host's typed configuration (`tessera_runtime::config::load("edge", ..)`:
//! defaults, then the `--config` TOML file, then `TESSERA_EDGE__<KEY>` variables).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_runtime::config::{Checks, ConfigError, ConfigSource, Mode, Secret};
use tessera_runtime::telemetry::TelemetryConfig;

use crate::manifest::{self, Manifest};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EdgeConfig {
    /// `local` or `production` (the default): production refuses development keys,
    /// missing keys and secrets, and plaintext NATS ([`EdgeConfig::check`]). The
    /// components see it as the `mode` variable.
    pub mode: Mode,
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
    /// PEM certificate authority of the NATS servers (turns TLS on).
    pub nats_ca_file: Option<PathBuf>,
    /// This edge's NKey user seed (`SU...`).
    pub nats_nkey_seed: Secret,
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
    /// flight (more with service chaining), so at least `concurrent_requests_max` +
    /// `priority_requests_reserved`.
    pub instances_max: u32,
    /// Requests served at once; more wait for a slot, first come first served.
    pub concurrent_requests_max: usize,
    /// Requests that carry this header (the waiting room's admission token: fans whose
    /// turn has come, buying) may also use `priority_requests_reserved` slots of their
    /// own, so a crowd of joins and polls queued for the shared slots never holds up a
    /// purchase. The header is only a claim (the component still checks the token): a
    /// flood that forges it fills the reserved slots and no more. Empty turns the lane off.
    pub priority_header: String,
    /// Slots only requests with `priority_header` may use, on top of
    /// `concurrent_requests_max`.
    pub priority_requests_reserved: usize,
    /// Entries per key-value store label.
    pub kv_entries_max: usize,
    /// Service-chaining depth (a loop guard).
    pub chain_depth_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Above the waiting room's longest long poll (25 s; pages ask for 20).
            request_timeout: Duration::from_secs(30),
            stream_timeout: Duration::from_secs(3600),
            memory_max_bytes: 64 << 20,
            memory_keep_resident_bytes: 2 << 20,
            instances_max: 1024,
            concurrent_requests_max: 256,
            priority_header: "x-tessera-admission".to_owned(),
            priority_requests_reserved: 64,
            kv_entries_max: 200_000,
            chain_depth_max: 8,
        }
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            mode: Mode::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9190)),
            manifest: PathBuf::from("edge-components/spin.toml"),
            pop: "local".to_owned(),
            nats_url: None,
            nats_ca_file: None,
            nats_nkey_seed: Secret::default(),
            variables: BTreeMap::new(),
            limits: Limits::default(),
            compile_cache_dir: None,
            spin_strict: false,
            shutdown_grace: Duration::from_secs(10),
            telemetry: TelemetryConfig::default(),
        }
    }
}

/// Variables holding public keys (`kid:base64url,...`).
const KEYSET_VARIABLES: [&str; 3] = ["identity_keys", "queue_keys", "watermark_keys"];
/// Variables holding secrets shared by the edges.
const SECRET_VARIABLES: [&str; 2] = ["shadow_secret", "pow_secret"];

impl EdgeConfig {
    /// The application variables as the components will see them: `SPIN_VARIABLE_*`
    /// (`spin_env`), then `[variables]`, then the manifest's defaults; `mode` and `pop`
    /// come from this config.
    pub fn component_variables(&self) -> BTreeMap<String, String> {
        let mut vars = self.variables.clone();
        vars.entry("pop".to_owned()).or_insert_with(|| self.pop.clone());
        vars.insert("mode".to_owned(), self.mode.as_str().to_owned());
        vars
    }

    /// Checks this configuration for its mode, with the `SPIN_VARIABLE_*` environment:
    /// one problem per offending setting, naming it and where it came from.
    pub fn check(
        &self,
        source: &ConfigSource,
        spin_env: &BTreeMap<String, String>,
    ) -> Result<(), ConfigError> {
        let mut c = Checks::new(self.mode, source);
        if let Some(m) = spin_env.get("SPIN_VARIABLE_MODE").or_else(|| self.variables.get("mode"))
            && m != self.mode.as_str()
        {
            c.error("variables.mode", format!("is {m:?} but the edge runs in mode {}", self.mode));
        }
        match &self.nats_url {
            None => c.production("nats_url", "missing: admission watermarks come over NATS"),
            Some(url) => {
                if self.nats_ca_file.is_none() && !url.starts_with("tls://") {
                    c.production("nats_url", "plaintext NATS; use `tls://` and set `nats_ca_file`");
                }
            }
        }
        if let Some(ca) = &self.nats_ca_file
            && !ca.is_file()
        {
            c.error("nats_ca_file", format!("{} does not exist", ca.display()));
        }
        if self.nats_url.is_some() && self.nats_nkey_seed.is_empty() {
            c.production("nats_nkey_seed", "missing: NATS without credentials");
        } else if !self.nats_nkey_seed.is_empty()
            && !self.nats_nkey_seed.expose().trim().starts_with("SU")
        {
            c.error("nats_nkey_seed", "is not an NKey user seed (`SU...`)");
        }
        let manifest = match Manifest::load(&self.manifest) {
            Ok(m) => m,
            Err(e) => {
                c.error("manifest", format!("{e:#}"));
                return c.finish();
            }
        };
        let config_vars = self.component_variables();
        let mut vars = BTreeMap::new();
        for (name, declared) in &manifest.variables {
            let env = format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase());
            let value =
                spin_env.get(&env).or_else(|| config_vars.get(name)).or(declared.default.as_ref());
            match value {
                Some(v) => {
                    vars.insert(name.clone(), v.clone());
                }
                None if declared.required => c.error(
                    &format!("variables.{name}"),
                    format!("missing: set {env} (or `{name}` under [variables])"),
                ),
                None => {}
            }
        }
        let key = |name: &str| format!("variables.{name}");
        for name in KEYSET_VARIABLES {
            let Some(spec) = vars.get(name).filter(|v| !v.trim().is_empty()) else {
                c.production(&key(name), "missing: public keys (`kid:base64url,...`)");
                continue;
            };
            match tessera_identity::Keyset::parse(spec) {
                Err(e) => c.error(&key(name), format!("not a keyset `kid:base64url,...`: {e}")),
                Ok(keys) => {
                    if keys.ed25519_keys().iter().any(tessera_identity::dev::is_development_key) {
                        c.production(&key(name), "holds a development key");
                    }
                }
            }
        }
        match vars.get("queue_signing_key").filter(|v| !v.trim().is_empty()) {
            None => {}
            Some(spec) => match tessera_identity::SigningKeyPair::from_config(spec.trim()) {
                Err(_) => {
                    c.error(&key("queue_signing_key"), "not a signing key `kid:base64url-seed`")
                }
                Ok(k) => {
                    if tessera_identity::dev::is_development_signing_key(&k) {
                        c.production(&key("queue_signing_key"), "is a development key");
                    }
                }
            },
        }
        for name in SECRET_VARIABLES {
            if let Some(v) = vars.get(name) {
                c.secret(&key(name), &Secret::new(v.clone()), &tessera_identity::dev::SECRETS);
            }
        }
        match vars.get("service_credential").map(String::as_str).unwrap_or("") {
            "" => c.production(
                &key("service_credential"),
                "missing: the cores refuse queue registrations without it",
            ),
            v if v.len() < 24 => c.error(&key("service_credential"), "shorter than 24 characters"),
            _ => {}
        }
        if let Some(issuer) = vars.get("identity_issuer") {
            c.encrypted_url(&key("identity_issuer"), issuer);
        }
        if let Err(e) = manifest::resolve_variables(&manifest.variables, spin_env, &config_vars)
            && c.problems().is_empty()
        {
            c.error("variables", format!("{e:#}"));
        }
        c.finish()
    }
}
