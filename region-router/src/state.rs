//! What the router knows about each region: health from active probes and heartbeats, the
//! circuit breaker, and the operator-set mode from the control plane.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use tessera_api::RegionId;
use tessera_api::ops::{RegionList, RegionMode, RegionStatus};
use tessera_bus::heartbeat::HeartbeatMonitor;
use tessera_common::Clock;
use tessera_identity::oidc::Oidc;
use tokio::sync::Notify;

use crate::breaker::{Breaker, BreakerState};
use crate::config::RouterConfig;
use crate::control::{ControlDoc, ControlPlane};
use crate::select::{Candidate, RouteHint, rank};

/// The HTTP client used for probes and forwarding: `http://` and `https://` region URLs
/// (rustls; the cores' CA from `upstream.ca_file`, a client certificate for mutual TLS).
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn tls_config(cfg: &RouterConfig) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.upstream.ca_file {
        Some(ca) => {
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| anyhow::anyhow!("read upstream.ca_file {}: {e}", ca.display()))?
            {
                roots.add(c?)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&cfg.upstream.client_cert_file, &cfg.upstream.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow::anyhow!("read upstream.client_cert_file: {e}"))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| anyhow::anyhow!("read upstream.client_key_file: {e}"))?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    // ALPN is left to the connector (HTTP/1.1, which the forwarder speaks).
    Ok(config)
}

pub(crate) fn http_client(cfg: &RouterConfig) -> anyhow::Result<HttpClient> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_millis(cfg.upstream.connect_timeout_ms)));
    connector.set_nodelay(true);
    connector.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(cfg)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build(https))
}

#[derive(Debug)]
struct Health {
    /// `None` until the first probe answers; a region not yet probed is given the benefit
    /// of the doubt.
    probe_ok: Option<bool>,
    probe_failures: u32,
    probe_latency_ms: Option<f64>,
    breaker: Breaker,
}

#[derive(Debug)]
pub(crate) struct RegionSlot {
    pub(crate) id: RegionId,
    /// Base URL without a trailing slash.
    pub(crate) url: String,
    health: Mutex<Health>,
}

/// Everything the router's handlers share.
pub(crate) struct Shared {
    pub(crate) cfg: RouterConfig,
    pub(crate) regions: Vec<RegionSlot>,
    pub(crate) control: Arc<ControlPlane>,
    pub(crate) heartbeats: Option<HeartbeatMonitor>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) client: HttpClient,
    pub(crate) verifier: Arc<Oidc>,
    /// Wakes the probers early (a refused connection, a heartbeat from a region marked
    /// down).
    pub(crate) wake_probes: Notify,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("regions", &self.regions).finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
        cfg: RouterConfig,
        control: Arc<ControlPlane>,
        heartbeats: Option<HeartbeatMonitor>,
        clock: Arc<dyn Clock>,
        verifier: Arc<Oidc>,
    ) -> anyhow::Result<Self> {
        let regions = cfg
            .regions
            .iter()
            .map(|r| RegionSlot {
                id: r.id.clone(),
                url: r.url.trim_end_matches('/').to_owned(),
                health: Mutex::new(Health {
                    probe_ok: None,
                    probe_failures: 0,
                    probe_latency_ms: None,
                    breaker: Breaker::new(cfg.breaker),
                }),
            })
            .collect();
        let client = http_client(&cfg)?;
        Ok(Shared {
            cfg,
            regions,
            control,
            heartbeats,
            clock,
            client,
            verifier,
            wake_probes: Notify::new(),
        })
    }

    pub(crate) fn slot(&self, id: &RegionId) -> Option<&RegionSlot> {
        self.regions.iter().find(|r| &r.id == id)
    }

    fn heartbeat_says_unhealthy(&self, id: &RegionId, now_ms: u64) -> bool {
        let Some(hb) = &self.heartbeats else { return false };
        hb.last(id).is_some_and(|seen| {
            !seen.heartbeat.healthy
                && now_ms.saturating_sub(seen.received_at_ms) <= self.cfg.probe.heartbeat_max_age_ms
        })
    }

    fn healthy(&self, slot: &RegionSlot, now_ms: u64) -> bool {
        slot.health.lock().probe_ok != Some(false)
            && !self.heartbeat_says_unhealthy(&slot.id, now_ms)
    }

    /// Every region as the selection sees it, in configuration order.
    pub(crate) fn candidates(&self, doc: &ControlDoc) -> Vec<Candidate> {
        let now = self.clock.now_ms();
        self.regions
            .iter()
            .map(|slot| Candidate {
                id: slot.id.clone(),
                mode: doc.mode(&slot.id),
                healthy: self.healthy(slot, now),
                breaker: slot.health.lock().breaker.state(now),
            })
            .collect()
    }

    /// The regions to try for a request with `hint`.
    pub(crate) fn route(&self, hint: &RouteHint) -> Vec<RegionId> {
        let doc = self.control.current();
        rank(&self.candidates(&doc), hint, &self.cfg.latency_ms, self.cfg.pop.as_deref())
    }

    /// Healthy, active regions other than `except` under `doc`.
    pub(crate) fn serving_regions_except(&self, doc: &ControlDoc, except: &RegionId) -> usize {
        self.candidates(doc)
            .iter()
            .filter(|c| {
                &c.id != except
                    && c.mode == RegionMode::Active
                    && c.healthy
                    && c.breaker != BreakerState::Open
            })
            .count()
    }

    pub(crate) fn region_list(&self) -> RegionList {
        let doc = self.control.current();
        let now = self.clock.now_ms();
        let regions = self
            .regions
            .iter()
            .map(|slot| {
                let healthy = self.healthy(slot, now);
                let mut h = slot.health.lock();
                RegionStatus {
                    region: slot.id.clone(),
                    url: slot.url.clone(),
                    mode: doc.mode(&slot.id),
                    healthy,
                    breaker: h.breaker.state(now).as_str().to_owned(),
                    last_heartbeat_ms: self
                        .heartbeats
                        .as_ref()
                        .and_then(|hb| hb.last(&slot.id))
                        .map(|s| s.received_at_ms),
                    probe_latency_ms: h.probe_latency_ms,
                }
            })
            .collect();
        RegionList { regions, version: doc.version }
    }

    /// Takes a request slot from the region's breaker (see [`Breaker::try_acquire`]).
    pub(crate) fn acquire(&self, id: &RegionId) -> bool {
        let now = self.clock.now_ms();
        self.slot(id).is_some_and(|s| s.health.lock().breaker.try_acquire(now))
    }

    pub(crate) fn on_success(&self, id: &RegionId) {
        let now = self.clock.now_ms();
        if let Some(s) = self.slot(id) {
            s.health.lock().breaker.on_success(now);
            self.publish_gauges(s);
        }
    }

    pub(crate) fn on_failure(&self, id: &RegionId) {
        let now = self.clock.now_ms();
        if let Some(s) = self.slot(id) {
            s.health.lock().breaker.on_failure(now);
            self.publish_gauges(s);
        }
    }

    /// A refused (or timed-out) connection: the region is down until a probe says
    /// otherwise, and its breaker opens at once.
    pub(crate) fn on_connect_failure(&self, id: &RegionId) {
        let now = self.clock.now_ms();
        if let Some(s) = self.slot(id) {
            {
                let mut h = s.health.lock();
                if h.probe_ok != Some(false) {
                    tracing::info!(region = %id, reason = "connection failed", "router.region.down");
                }
                h.probe_ok = Some(false);
                h.probe_failures = h.probe_failures.max(self.cfg.probe.failures_to_down);
                h.breaker.trip(now);
            }
            self.publish_gauges(s);
            self.wake_probes.notify_waiters();
        }
    }

    fn publish_gauges(&self, slot: &RegionSlot) {
        let now = self.clock.now_ms();
        let healthy = self.healthy(slot, now);
        let breaker = slot.health.lock().breaker.state(now);
        let region = slot.id.to_string();
        metrics::gauge!("tessera_router_region_healthy", "region" => region.clone())
            .set(if healthy { 1.0 } else { 0.0 });
        metrics::gauge!("tessera_router_breaker_state", "region" => region).set(breaker.gauge());
    }

    /// Probes one region forever: `GET {url}/healthz` every interval (sooner when woken).
    pub(crate) async fn probe_loop(self: Arc<Self>, index: usize) {
        let interval = self.cfg.probe_interval();
        let timeout = Duration::from_millis(self.cfg.probe.timeout_ms);
        loop {
            // Registered before probing, so a wake-up during the probe is not lost.
            let woken = self.wake_probes.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            self.probe_once(index, timeout).await;
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = woken => {}
            }
        }
    }

    async fn probe_once(&self, index: usize, timeout: Duration) {
        let slot = &self.regions[index];
        let uri = format!("{}/healthz", slot.url);
        let Ok(req) = http::Request::get(&uri).body(Full::new(Bytes::new())) else { return };
        let started = tokio::time::Instant::now();
        let outcome = tokio::time::timeout(timeout, async {
            let resp = self.client.request(req).await?;
            let ok = resp.status().is_success();
            // Read the (small) body so the connection goes back to the pool.
            let _ = resp.into_body().collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(ok)
        })
        .await;
        let (ok, refused) = match outcome {
            Ok(Ok(ok)) => (ok, false),
            Ok(Err(e)) => (false, e.is_connect()),
            Err(_) => (false, false),
        };
        let now = self.clock.now_ms();
        let changed = {
            let mut h = slot.health.lock();
            let was = h.probe_ok;
            if ok {
                h.probe_ok = Some(true);
                h.probe_failures = 0;
                h.probe_latency_ms = Some(started.elapsed().as_secs_f64() * 1e3);
            } else {
                h.probe_failures += 1;
                if refused || h.probe_failures >= self.cfg.probe.failures_to_down {
                    h.probe_ok = Some(false);
                }
            }
            h.breaker.on_probe(ok, now);
            was != h.probe_ok
        };
        if changed {
            if ok {
                tracing::info!(region = %slot.id, "router.region.up");
            } else {
                tracing::info!(region = %slot.id, refused, "router.region.down");
            }
        }
        self.publish_gauges(slot);
    }

    /// Re-probes at once when a region marked down sends a heartbeat, so a restored
    /// region gets traffic back quickly.
    pub(crate) async fn heartbeat_loop(self: Arc<Self>) {
        let Some(hb) = self.heartbeats.clone() else { return };
        loop {
            hb.changed().await;
            let now = self.clock.now_ms();
            let any_down_alive = self.regions.iter().any(|s| {
                s.health.lock().probe_ok == Some(false)
                    && hb.last(&s.id).is_some_and(|seen| {
                        seen.heartbeat.healthy
                            && now.saturating_sub(seen.received_at_ms)
                                <= self.cfg.probe.heartbeat_max_age_ms
                    })
            });
            if any_down_alive {
                self.wake_probes.notify_waiters();
                // One nudge per heartbeat round is enough.
                tokio::time::sleep(self.cfg.probe_interval() / 2).await;
            }
        }
    }
}
