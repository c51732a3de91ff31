//! Region streams.
//!
//! Each region has one JetStream stream in its own domain, `TESSERA_<REGION>` holding
//! `tessera.<region>.>`: the events that region publishes. It also *sources* every other
//! region's stream from that region's domain, filtered to the other region's own prefix,
//! so that a consumer of the local stream sees every region's events without a message
//! ever looping back. While a region's leaf node is cut off from the hub its stream keeps
//! accepting local writes; the sources resume where they stopped once the link returns.
//!
//! Publishers set `Nats-Msg-Id` to the bus event id; the stream drops a second message
//! with the same id inside [`StreamOptions::duplicate_window`].

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tessera_api::RegionId;

use crate::BusError;

/// The stream of a region: `TESSERA_US_EAST` for `us-east`.
pub fn stream_name(region: &RegionId) -> String {
    format!("TESSERA_{}", region.as_str().to_ascii_uppercase().replace('-', "_"))
}

/// The subjects a region publishes on: `tessera.<region>.>`.
pub fn region_subjects(region: &RegionId) -> String {
    format!("tessera.{region}.>")
}

/// The JetStream API prefix of a region's domain, `$JS.<region>.API`.
pub fn domain_api_prefix(region: &RegionId) -> String {
    format!("$JS.{region}.API")
}

/// A JetStream context for a region's domain. The domain is named explicitly, so the
/// context works from a client connected to the region's leaf node or to the hub.
pub fn region_context(client: &async_nats::Client, region: &RegionId) -> jetstream::Context {
    jetstream::with_domain(client.clone(), region.as_str())
}

/// Tunables of a region stream.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// How long a `Nats-Msg-Id` is remembered for duplicate detection.
    pub duplicate_window: Duration,
    /// How long events are kept (consumers that fall further behind than this lose events).
    pub max_age: Duration,
    /// Largest size of the stream, in bytes; the oldest events go first when it is full.
    /// It must fit the JetStream file store of every server holding a replica
    /// (`max_file_store`), or the region stops accepting events when the store fills.
    pub max_bytes: i64,
    /// Servers holding a copy (1 on a single leaf node; 3 on a leaf cluster of three).
    pub replicas: usize,
    /// File storage (durable) or memory storage (tests that want speed over durability).
    pub storage: stream::StorageType,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            duplicate_window: Duration::from_secs(10 * 60),
            max_age: Duration::from_secs(7 * 24 * 3600),
            // 1 GiB: a quarter of the 4 GiB store of the local leaf nodes.
            max_bytes: 1 << 30,
            replicas: 1,
            storage: stream::StorageType::File,
        }
    }
}

/// The configuration of `region`'s stream, sourcing each of `peers`.
pub fn region_stream_config(
    region: &RegionId,
    peers: &[RegionId],
    opts: &StreamOptions,
) -> stream::Config {
    let sources: Vec<stream::Source> = peers
        .iter()
        .filter(|p| *p != region)
        .map(|peer| stream::Source {
            name: stream_name(peer),
            // The peer's domain as an external API prefix rather than `domain`: the client
            // translates `domain` only on create, and an update without the prefix would
            // turn the source into a local one that never receives anything.
            external: Some(stream::External {
                api_prefix: domain_api_prefix(peer),
                delivery_prefix: None,
            }),
            filter_subject: Some(region_subjects(peer)),
            ..Default::default()
        })
        .collect();
    stream::Config {
        name: stream_name(region),
        description: Some(format!(
            "Tessera events published in {region}, and sourced from its peers"
        )),
        subjects: vec![region_subjects(region)],
        sources: (!sources.is_empty()).then_some(sources),
        duplicate_window: opts.duplicate_window,
        max_age: opts.max_age,
        max_bytes: opts.max_bytes,
        storage: opts.storage,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        num_replicas: opts.replicas,
        ..Default::default()
    }
}

/// Creates `region`'s stream in its domain, or updates it to source exactly `peers` (so a
/// region added later is picked up when each core restarts). Idempotent; the core calls it
/// at startup, before starting the relay and consumers.
pub async fn ensure_region_stream(
    client: &async_nats::Client,
    region: &RegionId,
    peers: &[RegionId],
    opts: &StreamOptions,
) -> Result<stream::Info, BusError> {
    let js = region_context(client, region);
    let config = region_stream_config(region, peers, opts);
    match js.get_stream(&config.name).await {
        Ok(mut existing) => {
            let info = existing.info().await.map_err(BusError::jetstream)?;
            if same_shape(&info.config, &config) {
                return Ok(info.clone());
            }
            js.update_stream(config).await.map_err(BusError::jetstream)
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            let created = js.create_stream(config).await.map_err(BusError::jetstream)?;
            Ok(created.cached_info().clone())
        }
        Err(e) => Err(BusError::jetstream(e)),
    }
}

fn same_shape(have: &stream::Config, want: &stream::Config) -> bool {
    let key = |c: &stream::Config| {
        let mut s: Vec<(String, Option<String>, Option<String>)> = c
            .sources
            .iter()
            .flatten()
            .map(|s| {
                let api = s.external.as_ref().map(|e| e.api_prefix.clone());
                (s.name.clone(), api, s.filter_subject.clone())
            })
            .collect();
        s.sort();
        s
    };
    have.subjects == want.subjects
        && key(have) == key(want)
        && have.duplicate_window == want.duplicate_window
        && have.max_age == want.max_age
        && have.max_bytes == want.max_bytes
        && have.num_replicas == want.num_replicas
}

/// Settings of [`spawn_source_watchdog`].
#[derive(Debug, Clone)]
pub struct WatchdogOptions {
    /// How often to look at the sources.
    pub interval: Duration,
    /// A source silent for this long is stalled (the server sends it a heartbeat every
    /// second while the link is up).
    pub stalled_after: Duration,
    /// Least time between two restarts of one source.
    pub restart_every_min: Duration,
}

impl Default for WatchdogOptions {
    fn default() -> Self {
        WatchdogOptions {
            interval: Duration::from_millis(250),
            stalled_after: Duration::from_millis(2_500),
            restart_every_min: Duration::from_secs(2),
        }
    }
}

/// Restarts stalled sources of `region`'s stream as soon as their origin is reachable.
///
/// nats-server 2.9 notices a stalled source (one whose link went down) only on a 10 s
/// health tick, so after a partition heals a region could wait up to ~10 s before it
/// catches up. The watchdog asks the peer's domain directly; when the peer answers but the
/// source has been silent for [`WatchdogOptions::stalled_after`], it removes the source
/// from the stream and adds it back. The server resumes a re-added source after the last
/// message it stored from it, and `Nats-Msg-Id` dedup drops any overlap.
///
/// The core spawns one per region stream; the task runs until aborted.
pub fn spawn_source_watchdog(
    client: async_nats::Client,
    region: RegionId,
    peers: Vec<RegionId>,
    stream_opts: StreamOptions,
    opts: WatchdogOptions,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let js = region_context(&client, &region);
        let mut last_restart: HashMap<String, tokio::time::Instant> = HashMap::new();
        // When this watchdog first saw each source silent (the server reports no activity
        // time for a source that never came up).
        let mut silent_since: HashMap<String, tokio::time::Instant> = HashMap::new();
        let mut ticker = tokio::time::interval(opts.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Ok(mut stream) = js.get_stream(stream_name(&region)).await else { continue };
            let Ok(info) = stream.info().await else { continue };
            let now = tokio::time::Instant::now();
            for source in info.sources.clone() {
                if source.active.is_some_and(|a| a < opts.stalled_after) {
                    silent_since.remove(&source.name);
                    continue;
                }
                let observed = now - *silent_since.entry(source.name.clone()).or_insert(now);
                let silent_for = source.active.map_or(observed, |a| a.max(observed));
                if silent_for < opts.stalled_after {
                    continue;
                }
                if last_restart
                    .get(&source.name)
                    .is_some_and(|t| t.elapsed() < opts.restart_every_min)
                {
                    continue;
                }
                let Some(peer) = peers.iter().find(|p| stream_name(p) == source.name) else {
                    continue;
                };
                if !peer_reachable(&client, peer).await {
                    continue;
                }
                last_restart.insert(source.name.clone(), now);
                silent_since.insert(source.name.clone(), now);
                match restart_source(&js, &region, &peers, peer, &stream_opts).await {
                    Ok(()) => {
                        metrics::counter!("tessera_bus_source_restarts_total", "region" => region.to_string())
                            .increment(1);
                        tracing::info!(region = %region, source = %source.name, silent_ms = silent_for.as_millis() as u64, "restarted a stalled stream source");
                    }
                    Err(e) => {
                        tracing::warn!(region = %region, source = %source.name, "failed to restart a stalled stream source: {e:#}");
                    }
                }
            }
        }
    })
}

/// Whether `peer`'s JetStream domain answers now.
async fn peer_reachable(client: &async_nats::Client, peer: &RegionId) -> bool {
    let mut js = region_context(client, peer);
    js.set_timeout(Duration::from_millis(500));
    match js.get_stream(stream_name(peer)).await {
        Ok(mut s) => s.info().await.is_ok(),
        Err(_) => false,
    }
}

async fn restart_source(
    js: &jetstream::Context,
    region: &RegionId,
    peers: &[RegionId],
    peer: &RegionId,
    opts: &StreamOptions,
) -> Result<(), BusError> {
    let others: Vec<RegionId> = peers.iter().filter(|p| *p != peer).cloned().collect();
    js.update_stream(region_stream_config(region, &others, opts))
        .await
        .map_err(BusError::jetstream)?;
    js.update_stream(region_stream_config(region, peers, opts))
        .await
        .map_err(BusError::jetstream)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sources_follow_the_region() {
        let us = RegionId::parse("us-east").unwrap();
        let eu = RegionId::parse("eu-west").unwrap();
        assert_eq!(stream_name(&us), "TESSERA_US_EAST");
        let cfg = region_stream_config(&us, &[us.clone(), eu.clone()], &StreamOptions::default());
        assert_eq!(cfg.subjects, vec!["tessera.us-east.>".to_owned()]);
        let sources = cfg.sources.unwrap();
        assert_eq!(sources.len(), 1, "a region never sources itself");
        assert_eq!(sources[0].name, "TESSERA_EU_WEST");
        assert_eq!(sources[0].external.as_ref().unwrap().api_prefix, "$JS.eu-west.API");
        assert_eq!(sources[0].filter_subject.as_deref(), Some("tessera.eu-west.>"));
    }
}
