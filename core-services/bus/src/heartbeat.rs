//! Region heartbeats over core NATS.
//!
//! Each core publishes a [`Heartbeat`] on `tessera.heartbeat.<region>` every
//! ~250 ms ([`spawn_publisher`]); routers watch them with [`HeartbeatMonitor`] as a second
//! opinion next to their active probes. Heartbeats are fire-and-forget: a lost one only
//! makes the region look a little staler.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use parking_lot::RwLock;
use tessera_api::RegionId;
use tessera_api::bus::{Heartbeat, heartbeat_subject};
use tessera_common::Clock;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::BusError;

/// Every region's heartbeats: `tessera.heartbeat.*`.
pub const HEARTBEAT_WILDCARD: &str = "tessera.heartbeat.*";

/// The load a core reports in its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeartbeatLoad {
    /// Whether the core considers itself able to serve (its store answers, etc.).
    pub healthy: bool,
    /// Commits per second the core's store is doing.
    pub commits_per_s: f64,
}

impl Default for HeartbeatLoad {
    fn default() -> Self {
        HeartbeatLoad { healthy: true, commits_per_s: 0.0 }
    }
}

/// Publishes `region`'s heartbeat every `interval` until the returned task is aborted.
/// `url` is the core's base URL as routers should reach it; `load` is asked each time.
pub fn spawn_publisher<C: Clock>(
    client: async_nats::Client,
    region: RegionId,
    url: String,
    interval: Duration,
    clock: C,
    load: impl Fn() -> HeartbeatLoad + Send + Sync + 'static,
) -> JoinHandle<()> {
    let subject = heartbeat_subject(&region);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let HeartbeatLoad { healthy, commits_per_s } = load();
            let beat = Heartbeat {
                region: region.clone(),
                url: url.clone(),
                at_ms: clock.now_ms(),
                commits_per_s,
                healthy,
            };
            let Ok(payload) = serde_json::to_vec(&beat) else { continue };
            // While disconnected the client buffers; a stale heartbeat is harmless.
            if let Err(e) = client.publish(subject.clone(), payload.into()).await {
                tracing::debug!(region = %region, "heartbeat publish failed: {e}");
            }
        }
    })
}

/// The latest heartbeat of a region and when this process received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub heartbeat: Heartbeat,
    /// This process's clock when the heartbeat arrived (senders' clocks may be skewed).
    pub received_at_ms: u64,
}

/// Keeps the latest heartbeat of every region.
#[derive(Debug, Clone)]
pub struct HeartbeatMonitor {
    seen: Arc<RwLock<HashMap<RegionId, Seen>>>,
    changed: Arc<Notify>,
    _task: Arc<TaskGuard>,
}

#[derive(Debug)]
struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl HeartbeatMonitor {
    /// Subscribes to every region's heartbeats. The subscription lives as long as any
    /// clone of the monitor.
    pub async fn start<C: Clock>(client: &async_nats::Client, clock: C) -> Result<Self, BusError> {
        let mut sub = client
            .subscribe(HEARTBEAT_WILDCARD)
            .await
            .map_err(|e| BusError::JetStream(Box::new(e)))?;
        let seen: Arc<RwLock<HashMap<RegionId, Seen>>> = Arc::default();
        let changed = Arc::new(Notify::new());
        let (task_seen, task_changed) = (seen.clone(), changed.clone());
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Ok(beat) = serde_json::from_slice::<Heartbeat>(&msg.payload) else {
                    tracing::debug!(subject = %msg.subject, "ignoring a malformed heartbeat");
                    continue;
                };
                if msg.subject.as_str() != heartbeat_subject(&beat.region) {
                    continue;
                }
                let received_at_ms = clock.now_ms();
                task_seen
                    .write()
                    .insert(beat.region.clone(), Seen { heartbeat: beat, received_at_ms });
                task_changed.notify_waiters();
            }
        });
        Ok(HeartbeatMonitor { seen, changed, _task: Arc::new(TaskGuard(task)) })
    }

    /// The latest heartbeat of `region`, if any arrived.
    pub fn last(&self, region: &RegionId) -> Option<Seen> {
        self.seen.read().get(region).cloned()
    }

    /// Whether `region` sent a heartbeat within `max_age_ms` of `now_ms` that said healthy.
    pub fn is_fresh_and_healthy(&self, region: &RegionId, now_ms: u64, max_age_ms: u64) -> bool {
        self.last(region).is_some_and(|s| {
            s.heartbeat.healthy && now_ms.saturating_sub(s.received_at_ms) <= max_age_ms
        })
    }

    /// Resolves when the next heartbeat arrives (any region).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}
