//! Identity from any OpenID Connect issuer (feature `fetch`, native processes only).
//!
//! [`Oidc`] verifies identity tokens against the issuer's published keys: it reads the
//! discovery document (`{issuer}/.well-known/openid-configuration`), checks that it names
//! the configured issuer, fetches the JWKS it points to, and keeps the keys in memory. It
//! fetches them again every `refresh_s` and, at most every `refetch_min_s`, when a token
//! names a key id it does not know, so an issuer can rotate its keys without anyone
//! restarting Tessera. Keys pinned in configuration (`keys`) turn fetching off.
//!
//! The local development issuer (in the core, local mode only) serves the same two
//! documents, so a local stack runs this very code.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tessera_runtime::config::Checks;

use crate::claims::{IdentityClaims, IdentityVerifier, ROLE_FAN, verify_identity};
use crate::keys::Keyset;
use crate::{AUDIENCE, TokenError, dev};

/// Where identity tokens come from (the `[identity]` table of the core's and the
/// router's configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OidcConfig {
    /// The issuer, exactly as tokens name it in `iss` (`https://login.example.com/`).
    pub issuer: String,
    /// The audience tokens must name in `aud` (the client id at the issuer).
    pub audience: String,
    /// Pinned public keys (`kid:base64url,...` Ed25519 keys, or a JWKS document). When
    /// set, nothing is fetched and keys rotate only with the configuration.
    pub keys: String,
    /// The JWKS URL, for issuers without a discovery document (default: discovery).
    pub jwks_url: Option<String>,
    /// PEM file of extra certificate authorities trusted for the issuer's HTTPS.
    pub ca_file: Option<PathBuf>,
    /// Claim holding the roles (`roles`, `realm_access.roles`, `https://tessera/roles`).
    pub roles_claim: String,
    /// Roles every verified token has.
    pub default_roles: Vec<String>,
    /// Clock skew tolerated on `exp`, `iat` and `nbf`.
    pub leeway_s: u64,
    /// How often the keys are fetched again.
    pub refresh_s: u64,
    /// An unknown key id fetches the keys again at most this often.
    pub refetch_min_s: u64,
    pub fetch_timeout_ms: u64,
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            issuer: String::new(),
            audience: AUDIENCE.to_owned(),
            keys: String::new(),
            jwks_url: None,
            ca_file: None,
            roles_claim: "roles".to_owned(),
            default_roles: vec![ROLE_FAN.to_owned()],
            leeway_s: 30,
            refresh_s: 300,
            refetch_min_s: 10,
            fetch_timeout_ms: 5_000,
        }
    }
}

/// The path under an issuer URL where the development issuer lives (`.../v1/dev`).
pub const DEV_ISSUER_PATH: &str = "/v1/dev";

impl OidcConfig {
    /// Adds the problems of these settings (under `prefix`, e.g. `identity`) to `checks`.
    pub fn check(&self, prefix: &str, checks: &mut Checks<'_>) {
        let key = |k: &str| format!("{prefix}.{k}");
        if self.issuer.trim().is_empty() {
            checks.error(&key("issuer"), "missing: the issuer whose tokens are accepted");
        } else {
            checks.encrypted_url(&key("issuer"), &self.issuer);
            if self.issuer.trim_end_matches('/').ends_with(DEV_ISSUER_PATH)
                || self.issuer.contains("tessera.local")
            {
                checks.production(&key("issuer"), "is the local development issuer");
            }
        }
        if self.audience.trim().is_empty() {
            checks.error(&key("audience"), "missing");
        }
        if !self.keys.trim().is_empty() {
            match Keyset::parse(&self.keys) {
                Ok(ks) if ks.is_empty() => checks.error(&key("keys"), "holds no signing key"),
                Ok(ks) => {
                    if ks.ed25519_keys().iter().any(dev::is_development_key) {
                        checks.production(&key("keys"), "holds a development key");
                    }
                }
                Err(_) => checks.error(&key("keys"), "is neither `kid:base64url,...` nor a JWKS"),
            }
        }
        if let Some(url) = &self.jwks_url {
            checks.encrypted_url(&key("jwks_url"), url);
        }
        if let Some(ca) = &self.ca_file
            && !ca.is_file()
        {
            checks.error(&key("ca_file"), format!("{} does not exist", ca.display()));
        }
        for r in &self.default_roles {
            if !crate::ROLES.contains(&r.as_str()) {
                checks.error(&key("default_roles"), format!("unknown role {r:?}"));
            }
        }
        if self.default_roles.iter().any(|r| r != ROLE_FAN) {
            checks.production(&key("default_roles"), "gives every token more than `fan`");
        }
    }

    /// The settings of a verifier (keys apart).
    fn verifier(&self, keys: Keyset) -> IdentityVerifier {
        IdentityVerifier {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            keys,
            leeway_s: self.leeway_s,
            roles_claim: self.roles_claim.clone(),
            default_roles: self.default_roles.clone(),
        }
    }
}

/// Why the issuer's keys could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("fetch {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url} is not a valid {what}")]
    Document { url: String, what: &'static str },
    #[error("the discovery document names issuer {found:?}, not {expected:?}")]
    IssuerMismatch { expected: String, found: String },
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// Largest discovery document or JWKS read.
const DOCUMENT_BYTES_MAX: usize = 1 << 20;

struct Fetcher {
    http: reqwest::Client,
    /// Serializes fetches and remembers when the last one started.
    last: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Verifies identity tokens with keys pinned in configuration or fetched from the issuer.
pub struct Oidc {
    settings: IdentityVerifier,
    config: OidcConfig,
    keys: RwLock<Keyset>,
    fetcher: Option<Fetcher>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.config.issuer)
            .field("keys", &*self.keys.read())
            .finish_non_exhaustive()
    }
}

impl Oidc {
    /// Builds the verifier; nothing is fetched until the first token or
    /// [`Oidc::refresh`].
    pub fn new(config: &OidcConfig) -> anyhow::Result<Self> {
        let pinned = if config.keys.trim().is_empty() {
            Keyset::default()
        } else {
            Keyset::parse(&config.keys).map_err(|e| anyhow::anyhow!("identity.keys: {e}"))?
        };
        let fetcher = if pinned.is_empty() {
            let mut builder = reqwest::Client::builder()
                .timeout(Duration::from_millis(config.fetch_timeout_ms))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent("tessera-identity");
            if let Some(ca) = &config.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| anyhow::anyhow!("read identity.ca_file {}: {e}", ca.display()))?;
                for cert in reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| anyhow::anyhow!("parse identity.ca_file: {e}"))?
                {
                    builder = builder.add_root_certificate(cert);
                }
            }
            Some(Fetcher { http: builder.build()?, last: tokio::sync::Mutex::new(None) })
        } else {
            None
        };
        Ok(Oidc {
            settings: config.verifier(Keyset::default()),
            config: config.clone(),
            keys: RwLock::new(pinned),
            fetcher,
        })
    }

    /// The keys trusted now.
    pub fn keys(&self) -> Keyset {
        self.keys.read().clone()
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// Whether keys are fetched from the issuer (none pinned).
    pub fn fetches(&self) -> bool {
        self.fetcher.is_some()
    }

    /// Verifies `token` at `now_ms`. A key id not in the current set fetches the keys
    /// again (at most every `refetch_min_s`) before the token is refused.
    pub async fn verify(&self, token: &str, now_ms: u64) -> Result<IdentityClaims, TokenError> {
        let keys = self.keys();
        let first = verify_identity(&keys, &self.settings, token, now_ms);
        match first {
            Err(TokenError::UnknownKey) if self.fetcher.is_some() => {
                // Another request may have fetched the key while this one waited.
                self.refresh_if_due(keys.is_empty()).await;
                verify_identity(&self.keys(), &self.settings, token, now_ms)
            }
            other => other,
        }
    }

    /// Fetches the keys unless the last fetch is more recent than `refetch_min_s` (one
    /// second while no key was ever loaded). Returns whether a fetch succeeded now.
    async fn refresh_if_due(&self, no_keys_yet: bool) -> bool {
        let Some(f) = &self.fetcher else { return false };
        let mut last = f.last.lock().await;
        let min = if no_keys_yet {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(self.config.refetch_min_s)
        };
        if last.is_some_and(|t| t.elapsed() < min) {
            metrics::counter!("tessera_identity_key_fetches_total", "outcome" => "throttled")
                .increment(1);
            return false;
        }
        *last = Some(tokio::time::Instant::now());
        match self.fetch(f).await {
            Ok(keys) => {
                self.install(keys);
                true
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.issuer, "identity: fetching the issuer's keys failed: {e:#}");
                metrics::counter!("tessera_identity_key_fetches_total", "outcome" => "failed")
                    .increment(1);
                false
            }
        }
    }

    /// Fetches the keys now.
    pub async fn refresh(&self) -> Result<(), FetchError> {
        let Some(f) = &self.fetcher else { return Ok(()) };
        let mut last = f.last.lock().await;
        *last = Some(tokio::time::Instant::now());
        let keys = self.fetch(f).await;
        drop(last);
        match keys {
            Ok(k) => {
                self.install(k);
                Ok(())
            }
            Err(e) => {
                metrics::counter!("tessera_identity_key_fetches_total", "outcome" => "failed")
                    .increment(1);
                Err(e)
            }
        }
    }

    fn install(&self, keys: Keyset) {
        let kids = keys.kids();
        let changed = self.keys.read().kids() != kids;
        *self.keys.write() = keys;
        metrics::counter!("tessera_identity_key_fetches_total", "outcome" => "ok").increment(1);
        if changed {
            tracing::info!(issuer = %self.config.issuer, kids = ?kids, "identity: issuer keys loaded");
        }
    }

    async fn fetch(&self, f: &Fetcher) -> Result<Keyset, FetchError> {
        let jwks_url = match &self.config.jwks_url {
            Some(u) => u.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let body = get(&f.http, &url).await?;
                let d: Discovery = serde_json::from_slice(&body)
                    .map_err(|_| FetchError::Document { url, what: "discovery document" })?;
                if d.issuer != self.config.issuer {
                    return Err(FetchError::IssuerMismatch {
                        expected: self.config.issuer.clone(),
                        found: d.issuer,
                    });
                }
                d.jwks_uri
            }
        };
        let body = get(&f.http, &jwks_url).await?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| FetchError::Document { url: jwks_url.clone(), what: "JWKS" })?;
        let keys = Keyset::parse(text)
            .ok()
            .filter(|k| !k.is_empty())
            .ok_or(FetchError::Document { url: jwks_url, what: "JWKS with signing keys" })?;
        Ok(keys)
    }

    /// Fetches the keys every `refresh_s` until the returned task is aborted.
    pub fn spawn_refresh(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        self.fetcher.as_ref()?;
        let this = Arc::clone(self);
        Some(tokio::spawn(async move {
            let every = Duration::from_secs(this.config.refresh_s.max(1));
            loop {
                // The first fetch happens with the first token; this keeps the keys fresh.
                tokio::time::sleep(every).await;
                if let Err(e) = this.refresh().await {
                    tracing::warn!(issuer = %this.config.issuer, "identity: refreshing the issuer's keys failed: {e:#}");
                }
            }
        }))
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, FetchError> {
    let mut resp = http
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|source| FetchError::Http { url: url.to_owned(), source })?;
    if !resp.status().is_success() {
        return Err(FetchError::Status { url: url.to_owned(), status: resp.status().as_u16() });
    }
    let mut body = Vec::new();
    while let Some(chunk) =
        resp.chunk().await.map_err(|source| FetchError::Http { url: url.to_owned(), source })?
    {
        if body.len() + chunk.len() > DOCUMENT_BYTES_MAX {
            return Err(FetchError::Document { url: url.to_owned(), what: "document (too large)" });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::routing::get;
    use tessera_api::CustomerId;

    use super::*;
    use crate::{IdentityIssuer, SigningKeyPair};

    /// A minimal OIDC issuer: a discovery document and a JWKS that the test swaps.
    async fn issuer(jwks: Arc<RwLock<String>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let doc =
            serde_json::json!({"issuer": base, "jwks_uri": format!("{base}/jwks")}).to_string();
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(move || async move { doc }))
            .route("/jwks", get(move || async move { jwks.read().clone() }));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        base
    }

    fn jwks(keys: &[&SigningKeyPair]) -> String {
        serde_json::to_string(&Keyset::new(keys.iter().map(|k| k.public())).to_jwks()).unwrap()
    }

    #[tokio::test]
    async fn keys_come_from_discovery_and_rotate_without_a_restart() {
        let k1 = SigningKeyPair::from_seed("2026-1", [21; 32]);
        let k2 = SigningKeyPair::from_seed("2026-2", [22; 32]);
        let published = Arc::new(RwLock::new(jwks(&[&k1])));
        let base = issuer(published.clone()).await;
        let oidc = Oidc::new(&OidcConfig {
            issuer: base.clone(),
            refetch_min_s: 0,
            ..OidcConfig::default()
        })
        .unwrap();
        assert!(oidc.fetches());
        let now_ms = 1_800_000_000_000;
        let mint = |key: &SigningKeyPair| {
            IdentityIssuer { issuer: base.clone(), key: key.clone() }.mint(
                CustomerId::parse("fan-1").unwrap(),
                vec!["fan".into()],
                now_ms,
                600,
            )
        };
        // The first token fetches discovery and the JWKS.
        let claims = oidc.verify(&mint(&k1), now_ms).await.unwrap();
        assert_eq!(claims.sub.as_str(), "fan-1");
        assert_eq!(oidc.keys().kids(), vec!["2026-1".to_owned()]);
        // The issuer rotates to a new key: its first token (an unknown kid) fetches again.
        *published.write() = jwks(&[&k2]);
        oidc.verify(&mint(&k2), now_ms).await.unwrap();
        assert_eq!(oidc.keys().kids(), vec!["2026-2".to_owned()]);
        // The retired key is gone, and a stranger's key never verifies.
        assert_eq!(oidc.verify(&mint(&k1), now_ms).await.unwrap_err(), TokenError::UnknownKey);
        let stranger = SigningKeyPair::from_seed("2026-2", [23; 32]);
        assert!(oidc.verify(&mint(&stranger), now_ms).await.is_err());
    }

    #[tokio::test]
    async fn a_discovery_document_for_another_issuer_is_refused() {
        let k1 = SigningKeyPair::from_seed("2026-1", [21; 32]);
        let base = issuer(Arc::new(RwLock::new(jwks(&[&k1])))).await;
        let oidc = Oidc::new(&OidcConfig {
            // Fetched from the same place, but the document names `base`, not `base/`.
            issuer: format!("{base}/"),
            ..OidcConfig::default()
        })
        .unwrap();
        assert!(oidc.refresh().await.is_err());
        assert!(oidc.keys().is_empty());
    }
}
