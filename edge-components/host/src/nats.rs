//! The edge's NATS subscriber (core NATS): it writes what the core publishes into the
//! key-value store, where the components find it on their next request.
//!
//! - `tessera.admission.<event_id>`: [`AdmissionWatermark`] JSON; the highest `version`
//!   is kept under `wm:<event_id>`. With the cores' watermark keys configured (the
//!   `watermark_keys` variable), only a fresh watermark the core signed is stored (as
//!   published, signature included, so the components check it again): a forged one
//!   with a huge `version` cannot shadow the genuine ones.
//! - `tessera.<region>.<kind>.<event_id>` ([`BusEvent`]): `seats.*`, `hold.*` and `order.*`
//!   mark the event's counts (availability, section seats) invalidated; `event.changed`
//!   marks the event, the event list and the counts.
//! - While connected it refreshes `bus:alive` every 500 ms, so components know pushed
//!   updates are flowing and can cache longer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tessera_api::bus::BusEvent;
use tessera_api::queue::AdmissionWatermark;
use tessera_common::{Clock as _, SystemClock};
use tessera_edge_logic::kv;
use tokio::sync::watch;

use crate::kv::KvStores;

const LABEL: &str = "default";

/// Applies one admission watermark; returns whether it replaced the stored one.
pub fn apply_watermark(store: &KvStores, payload: &[u8]) -> bool {
    let Ok(wm) = serde_json::from_slice::<AdmissionWatermark>(payload) else {
        return false;
    };
    store.set_if(LABEL, &kv::watermark(&wm.event_id), payload.to_vec(), |old| {
        let old_version = old
            .and_then(|o| serde_json::from_slice::<AdmissionWatermark>(o).ok())
            .map(|o| o.version);
        old_version.is_none_or(|v| wm.version > v)
    })
}

/// Applies one bus event's invalidations at `now_ms`; returns the kind it recognised.
pub fn apply_bus_event(store: &KvStores, payload: &[u8], now_ms: u64) -> Option<&'static str> {
    let event: BusEvent = serde_json::from_slice(payload).ok()?;
    let kind = event.body.kind();
    let stamp = now_ms.to_string().into_bytes();
    let mark = |key: &str| {
        let _ = store.set(LABEL, key, stamp.clone());
    };
    let family = kind.split('.').next().unwrap_or("");
    match family {
        "seats" | "hold" | "order" => mark(&kv::invalidated_counts(&event.event_id)),
        "event" => {
            mark(&kv::invalidated_counts(&event.event_id));
            mark(&kv::invalidated_event(&event.event_id));
            mark(kv::INVALIDATED_EVENT_LIST);
        }
        _ => return None,
    }
    Some(kind)
}

/// Applies one watermark only if `keys` verify the core's signature over it and it is
/// fresh at `now_ms`; returns whether it replaced the stored one.
pub fn apply_signed_watermark(
    store: &KvStores,
    keys: &tessera_identity::Keyset,
    payload: &[u8],
    now_ms: u64,
) -> bool {
    let Ok(published) = serde_json::from_slice::<AdmissionWatermark>(payload) else {
        return false;
    };
    let event_id = published.event_id;
    let Ok(wm) = tessera_queue::watermark::verify(
        keys,
        payload,
        &event_id,
        now_ms,
        tessera_queue::watermark::MAX_AGE_MS,
    ) else {
        return false;
    };
    store.set_if(LABEL, &kv::watermark(&event_id), payload.to_vec(), |old| {
        // What is stored passed this same check, so its version can be believed.
        let old_version = old
            .and_then(|o| serde_json::from_slice::<AdmissionWatermark>(o).ok())
            .map(|o| o.version);
        old_version.is_none_or(|v| wm.version > v)
    })
}

/// How the subscriber connects and what it believes.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub url: String,
    /// PEM certificate authority of the NATS servers (turns TLS on).
    pub ca_file: Option<PathBuf>,
    /// The edge's NKey user seed.
    pub nkey_seed: Option<String>,
    /// The cores' watermark keys; `None` stores unsigned watermarks (local stacks only).
    pub watermark_keys: Option<tessera_identity::Keyset>,
}

/// [`run_with`] a plaintext connection that stores watermarks unchecked (tests).
pub async fn run(url: String, store: Arc<KvStores>, shutdown: watch::Receiver<bool>) {
    run_with(Settings { url, ..Default::default() }, store, shutdown).await
}

/// Runs until `shutdown` flips: connects (retrying), subscribes and applies messages.
pub async fn run_with(
    settings: Settings,
    store: Arc<KvStores>,
    mut shutdown: watch::Receiver<bool>,
) {
    let url = settings.url.clone();
    // The platform's retry policy between connection attempts (from 1 s up to 10 s).
    let mut delays =
        tessera_common::retry::Backoff::new(Duration::from_secs(1), Duration::from_secs(10))
            .delays(None);
    let client = loop {
        let mut options =
            async_nats::ConnectOptions::new().name("tessera-edge").retry_on_initial_connect();
        if let Some(ca) = &settings.ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        } else if url.starts_with("tls://") {
            options = options.require_tls(true);
        }
        if let Some(seed) = &settings.nkey_seed {
            options = options.nkey(seed.clone());
        }
        match options.connect(url.as_str()).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!("connect to NATS at {url}: {e}; retrying");
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    let (mut watermarks, mut events) = match (
        client.subscribe("tessera.admission.*").await,
        client.subscribe("tessera.*.*.*.*").await,
    ) {
        (Ok(w), Ok(e)) => (w, e),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("subscribe to NATS subjects: {e}");
            return;
        }
    };
    tracing::info!(url = %url, "NATS subscriber running");
    let mut alive = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = alive.tick() => {
                if client.connection_state() == async_nats::connection::State::Connected {
                    let now = SystemClock.now_ms().to_string().into_bytes();
                    let _ = store.set(LABEL, kv::BUS_ALIVE, now);
                }
            }
            Some(msg) = watermarks.next() => {
                let applied = match &settings.watermark_keys {
                    Some(keys) => apply_signed_watermark(&store, keys, &msg.payload, SystemClock.now_ms()),
                    None => apply_watermark(&store, &msg.payload),
                };
                let outcome = if applied { "applied" } else { "ignored" };
                metrics::counter!("tessera_edge_nats_messages_total", "kind" => "watermark", "outcome" => outcome).increment(1);
            }
            Some(msg) = events.next() => {
                let outcome = match apply_bus_event(&store, &msg.payload, SystemClock.now_ms()) {
                    Some(_) => "applied",
                    None => "ignored",
                };
                metrics::counter!("tessera_edge_nats_messages_total", "kind" => "bus_event", "outcome" => outcome).increment(1);
            }
        }
    }
    let _ = client.drain().await;
}
