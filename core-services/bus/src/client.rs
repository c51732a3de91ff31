//! How a Tessera process connects to NATS: TLS against a configured certificate
//! authority, and an NKey user the server knows by its public key (the seed never leaves
//! the client; the server only checks a signature of its nonce).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_runtime::config::{Checks, Secret};

use crate::BusError;

/// A process's NATS connection settings (the `[nats]` table of the core's config, and
/// the router's and the edge's equivalents).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsClientConfig {
    /// `tls://host:4222` (or `nats://host:4222` with `ca_file`, which also turns TLS on).
    /// No bus when unset.
    pub url: Option<String>,
    /// PEM file of the certificate authority that signed the servers' certificates.
    pub ca_file: Option<PathBuf>,
    /// This process's NKey seed (`SU...`): the user the server lets publish and subscribe
    /// on this process's subjects only.
    pub nkey_seed: Secret,
}

impl NatsClientConfig {
    /// A plaintext, unauthenticated connection (tests of the bus itself).
    pub fn plain(url: impl Into<String>) -> Self {
        NatsClientConfig { url: Some(url.into()), ..Default::default() }
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.ca_file.is_some() || self.url.as_deref().is_some_and(|u| u.starts_with("tls://"))
    }

    /// Adds the problems of these settings (under `prefix`, e.g. `nats`) to `checks`.
    pub fn check(&self, prefix: &str, checks: &mut Checks<'_>) {
        let key = |k: &str| format!("{prefix}.{k}");
        let Some(url) = &self.url else {
            checks.production(&key("url"), "missing: a region without NATS publishes nothing");
            return;
        };
        if url.split(',').any(|u| !u.contains("://")) {
            checks.error(&key("url"), "must be `tls://host:port` (or `nats://host:port`)");
        }
        if !self.is_tls() {
            checks.production(&key("url"), "plaintext NATS; use `tls://` and set `ca_file`");
        }
        if let Some(ca) = &self.ca_file
            && !ca.is_file()
        {
            checks.error(&key("ca_file"), format!("{} does not exist", ca.display()));
        }
        if self.nkey_seed.is_empty() {
            checks.production(&key("nkey_seed"), "missing: NATS without credentials");
        } else if nkeys::KeyPair::from_seed(self.nkey_seed.expose().trim()).is_err() {
            checks.error(&key("nkey_seed"), "is not an NKey seed (`SU...`)");
        }
    }

    /// Connects as every Tessera process does: named, retrying the first connection in
    /// the background (so a process can start while its leaf node is still coming up),
    /// and reconnecting quickly after a loss.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, BusError> {
        let url = self.url.clone().unwrap_or_default();
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| {
                // 0, 100 ms, 200 ms, ... capped at 1 s: a healed link is used again quickly.
                Duration::from_millis((attempts as u64 * 100).min(1_000))
            });
        if let Some(ca) = &self.ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        } else if self.is_tls() {
            options = options.require_tls(true);
        }
        if !self.nkey_seed.is_empty() {
            options = options.nkey(self.nkey_seed.expose().trim().to_owned());
        }
        options.connect(url.as_str()).await.map_err(|source| BusError::Connect { url, source })
    }
}
