//! The outbox relay: publishes a region's outbox to its stream, exactly once in effect.
//!
//! A pass reads the outbox `("out", region, stamp)` in key (commit) order with snapshot
//! reads, publishes a batch with `Nats-Msg-Id` = the event id, waits for every
//! acknowledgement, and then deletes the acknowledged prefix of the batch in one
//! transaction. If the process dies between the acknowledgement and the delete, the next
//! pass publishes the entries again and the stream drops them as duplicates (consumers are
//! idempotent as well, for republishes older than the duplicate window).
//!
//! **Leases.** `("olease", region)` names the relay that publishes a region's outbox and
//! until when. Each region's relay holds its own region's lease (renewed every
//! [`RelayConfig::lease_renew`], valid for [`RelayConfig::lease_ttl`]). When a peer
//! region's lease has expired (its core died), this relay takes that outbox over: it
//! publishes the leftovers under its own subject prefix while the events keep their origin
//! region. When the owner comes back it claims its lease again at once, and this relay
//! notices at its next renewal and stops. For a short overlap both may publish the same
//! entries; the ids are the same, so the stream drops the copies.
//!
//! The core calls [`OutboxRelay::notifier`]`.notify_one()` after each commit that wrote to
//! the outbox; without a poke the relay polls every [`RelayConfig::poll_interval`].

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tessera_api::RegionId;
use tessera_common::{Clock, Rng};
use tessera_fdb_schema::Keyspace;
use tessera_fdb_schema::values::{LeaseRecord, decode, encode};
use tessera_store::{RangeRequest, Store, Transaction as _, TrxError};
use tokio::sync::Notify;
use tracing::Instrument as _;

use crate::BusError;
use crate::event::encode_outbox_entry;

/// Settings of a relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The region this relay runs in: it owns this region's outbox and publishes on
    /// `tessera.<region>.>`.
    pub region: RegionId,
    /// The other regions, whose outboxes it takes over when their lease expires.
    pub peers: Vec<RegionId>,
    /// Unique per process (see [`instance_id`]).
    pub instance: String,
    /// Most entries read and published per batch.
    pub batch_max: usize,
    /// How often to look at the outbox without a poke.
    pub poll_interval: Duration,
    /// How long a lease stays valid without renewal.
    pub lease_ttl: Duration,
    /// How often a held lease is renewed and peer leases are checked.
    pub lease_renew: Duration,
    /// Whether to take over the outboxes of peers whose lease expired.
    pub take_over_peers: bool,
    /// How long to wait for the stream's acknowledgement of a publish.
    pub ack_timeout: Duration,
}

impl RelayConfig {
    /// The defaults: batches of 256, polling every 50 ms, leases of 5 s renewed every 1 s.
    pub fn new(region: RegionId, peers: Vec<RegionId>, instance: String) -> Self {
        RelayConfig {
            region,
            peers,
            instance,
            batch_max: 256,
            poll_interval: Duration::from_millis(50),
            lease_ttl: Duration::from_secs(5),
            lease_renew: Duration::from_secs(1),
            take_over_peers: true,
            ack_timeout: Duration::from_secs(2),
        }
    }
}

/// A process-unique relay instance name: `<pid>-<random>`.
pub fn instance_id(rng: &impl Rng) -> String {
    format!("{}-{:08x}", std::process::id(), rng.next_u64() as u32)
}

/// Whose lease a relay is asking for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRole {
    /// The relay's own region: taken from anyone but a live instance of the same region.
    Owner,
    /// A peer region's outbox: taken only when nobody holds it or the holder's time ran out.
    Standby,
}

/// The region part of a lease holder name `<region>/<instance>`.
fn holder_region(holder: &str) -> &str {
    holder.split_once('/').map(|(r, _)| r).unwrap_or(holder)
}

/// Whether a relay named `me` of region `my_region` may claim a lease currently in
/// `current`, at `now_ms`. Pure, so the rules can be tested on their own.
pub fn may_claim(
    current: Option<&LeaseRecord>,
    me: &str,
    my_region: &RegionId,
    role: LeaseRole,
    now_ms: u64,
) -> bool {
    let Some(lease) = current else { return true };
    if lease.holder == me || lease.expires_at_ms <= now_ms {
        return true;
    }
    match role {
        // A peer is covering for us: we are back, so we take it home. Another live
        // instance of our own region: wait for it to expire or release.
        LeaseRole::Owner => holder_region(&lease.holder) != my_region.as_str(),
        LeaseRole::Standby => false,
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Entries published and deleted, by origin region.
    pub published: BTreeMap<RegionId, usize>,
    /// Of those, how many the stream reported as duplicates.
    pub duplicates: usize,
}

/// Publishes outboxes. Build with [`OutboxRelay::new`], then spawn [`OutboxRelay::run`].
pub struct OutboxRelay<S: Store, C: Clock> {
    store: S,
    keyspace: Keyspace,
    js: jetstream::Context,
    cfg: RelayConfig,
    holder: String,
    clock: C,
    notify: Arc<Notify>,
    /// Leases this relay holds: region → valid until (ms, by this relay's clock).
    held: BTreeMap<RegionId, u64>,
    next_lease_check_ms: u64,
    poisoned: HashSet<Vec<u8>>,
}

impl<S: Store, C: Clock> std::fmt::Debug for OutboxRelay<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay").field("holder", &self.holder).finish_non_exhaustive()
    }
}

impl<S: Store, C: Clock> OutboxRelay<S, C> {
    /// `client` must be connected to the relay region's leaf node (or anywhere that routes
    /// `tessera.<region>.>` to the region's stream).
    pub fn new(
        store: S,
        keyspace: Keyspace,
        client: async_nats::Client,
        cfg: RelayConfig,
        clock: C,
    ) -> Self {
        let mut js = crate::streams::region_context(&client, &cfg.region);
        js.set_timeout(cfg.ack_timeout);
        let holder = format!("{}/{}", cfg.region, cfg.instance);
        OutboxRelay {
            store,
            keyspace,
            js,
            cfg,
            holder,
            clock,
            notify: Arc::new(Notify::new()),
            held: BTreeMap::new(),
            next_lease_check_ms: 0,
            poisoned: HashSet::new(),
        }
    }

    /// The handle the core pokes (`notify_one()`) after committing outbox entries.
    pub fn notifier(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    /// This relay's lease holder name, `<region>/<instance>`.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Runs until `shutdown` resolves, then publishes what is left (while the lease is
    /// still held) and releases its leases so a peer can take over without waiting.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        // After a failed pass, the platform's retry policy from twice the poll interval up
        // to a second; after a good one, the poll interval again.
        let policy =
            tessera_common::retry::Backoff::new(self.cfg.poll_interval * 2, Duration::from_secs(1));
        // Made at the first failure, dropped at the next good pass.
        let mut delays = None;
        let mut backoff;
        loop {
            match self.pass().await {
                Ok(_) => {
                    backoff = self.cfg.poll_interval;
                    delays = None;
                }
                Err(e) => {
                    metrics::counter!("tessera_bus_relay_errors_total", "region" => self.cfg.region.to_string())
                        .increment(1);
                    tracing::warn!(region = %self.cfg.region, "outbox relay pass failed, retrying: {e:#}");
                    backoff = delays
                        .get_or_insert_with(|| policy.delays(None))
                        .next()
                        .unwrap_or(Duration::from_secs(1));
                }
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = self.notify.notified() => {}
                () = tokio::time::sleep(backoff) => {}
            }
        }
        if let Err(e) = self.pass().await {
            tracing::warn!(region = %self.cfg.region, "final outbox relay pass failed: {e:#}");
        }
        self.release_all().await;
    }

    /// One pass: renew or claim leases when due, then drain every outbox this relay holds.
    pub async fn pass(&mut self) -> Result<PassReport, BusError> {
        let now = self.clock.now_ms();
        if now >= self.next_lease_check_ms {
            self.check_leases(now).await?;
            self.next_lease_check_ms = now + self.cfg.lease_renew.as_millis() as u64;
        }
        let mut report = PassReport::default();
        let held: Vec<RegionId> = self.held.keys().cloned().collect();
        for origin in held {
            self.drain(&origin, &mut report).await?;
        }
        Ok(report)
    }

    /// Whether this relay currently holds `region`'s lease (by its own bookkeeping).
    pub fn holds(&self, region: &RegionId) -> bool {
        self.held.get(region).is_some_and(|until| *until > self.clock.now_ms())
    }

    async fn check_leases(&mut self, now: u64) -> Result<(), BusError> {
        let own = self.cfg.region.clone();
        self.claim(&own, LeaseRole::Owner, now).await?;
        if self.cfg.take_over_peers {
            for peer in self.cfg.peers.clone() {
                if peer != own {
                    self.claim(&peer, LeaseRole::Standby, now).await?;
                }
            }
        }
        let held: Vec<String> = self.held.keys().map(ToString::to_string).collect();
        tracing::debug!(holder = %self.holder, ?held, "bus.relay.leases");
        Ok(())
    }

    async fn claim(
        &mut self,
        region: &RegionId,
        role: LeaseRole,
        now: u64,
    ) -> Result<(), BusError> {
        let key = self.keyspace.outbox_lease(region);
        let me = self.holder.clone();
        let my_region = self.cfg.region.clone();
        let until = now + self.cfg.lease_ttl.as_millis() as u64;
        let region_s = region.to_string();
        let claimed = tessera_store::run(&self.store, |trx, _| {
            let key = key.clone();
            let me = me.clone();
            let my_region = my_region.clone();
            let region_s = region_s.clone();
            async move {
                let current = match trx.get(&key, false).await? {
                    Some(bytes) => decode::<LeaseRecord>(&bytes).ok(),
                    None => None,
                };
                if !may_claim(current.as_ref(), &me, &my_region, role, now) {
                    return Ok::<_, TrxError<()>>((false, false));
                }
                let record = LeaseRecord { v: 1, holder: me, expires_at_ms: until };
                trx.set(&key, &encode(&record));
                // Whether a relay of the region itself held it before (and stopped).
                let had_owner =
                    current.is_some_and(|l| l.holder.split('/').next() == Some(region_s.as_str()));
                Ok((true, had_owner))
            }
        })
        .await?;
        let (claimed, had_owner) = claimed;
        let was_held = self.held.contains_key(region);
        if claimed {
            self.held.insert(region.clone(), until);
            if !was_held && role == LeaseRole::Standby {
                if had_owner {
                    tracing::warn!(holder = %self.holder, region = %region, "took over the outbox of a region whose relay stopped renewing its lease");
                } else {
                    // The region's relay never ran (yet): cover for it until it does.
                    tracing::info!(holder = %self.holder, region = %region, "publishing the outbox of a region whose relay has not started");
                }
            }
        } else {
            self.held.remove(region);
            if was_held && role == LeaseRole::Standby {
                tracing::info!(holder = %self.holder, region = %region, "handed a peer's outbox back");
            }
        }
        let label = region.to_string();
        metrics::gauge!("tessera_bus_relay_lease_held", "region" => label).set(if claimed {
            1.0
        } else {
            0.0
        });
        Ok(())
    }

    async fn release_all(&mut self) {
        let now = self.clock.now_ms();
        for region in std::mem::take(&mut self.held).into_keys() {
            let key = self.keyspace.outbox_lease(&region);
            let me = self.holder.clone();
            let result = tessera_store::run(&self.store, |trx, _| {
                let key = key.clone();
                let me = me.clone();
                async move {
                    if let Some(bytes) = trx.get(&key, false).await?
                        && let Ok(lease) = decode::<LeaseRecord>(&bytes)
                        && lease.holder == me
                    {
                        let released = LeaseRecord { v: 1, holder: me, expires_at_ms: now };
                        trx.set(&key, &encode(&released));
                    }
                    Ok::<_, TrxError<()>>(())
                }
            })
            .await;
            if let Err(e) = result {
                tracing::warn!(region = %region, "failed to release outbox lease: {e:#}");
            }
        }
    }

    async fn drain(&mut self, origin: &RegionId, report: &mut PassReport) -> Result<(), BusError> {
        let (begin, end) = self.keyspace.outbox(origin);
        let mut from = begin;
        loop {
            if !self.holds(origin) {
                return Ok(());
            }
            let trx = self.store.create_trx()?;
            let range = RangeRequest::new(from.clone(), end.clone()).limit(self.cfg.batch_max);
            let entries = trx.get_range(&range, true).await?;
            drop(trx);
            let Some((last_key, _)) = entries.last() else { return Ok(()) };
            let next_from = tessera_store::key_after(last_key);
            let full = entries.len() >= self.cfg.batch_max;

            let mut batch = Vec::with_capacity(entries.len());
            for (key, value) in &entries {
                match encode_outbox_entry(&self.keyspace, origin, &self.cfg.region, key, value) {
                    Ok(event) => batch.push((key.clone(), event)),
                    Err(e) => {
                        // Publishing it is impossible and deleting it would lose an event:
                        // leave it for a human and go on with the rest.
                        if self.poisoned.insert(key.to_vec()) {
                            tracing::error!(region = %origin, "skipping an outbox entry that cannot be published: {e:#}");
                        }
                    }
                }
            }
            let span = tracing::info_span!("bus.relay.publish", region = %origin, publisher = %self.cfg.region, count = batch.len());
            let (published, duplicates, failure) =
                self.publish_batch(origin, &batch).instrument(span).await;
            if published > 0 {
                let keys: Vec<Vec<u8>> =
                    batch[..published].iter().map(|(k, _)| k.to_vec()).collect();
                tessera_store::run(&self.store, |trx, _| {
                    for k in &keys {
                        trx.clear(k);
                    }
                    async { Ok::<_, TrxError<()>>(()) }
                })
                .await?;
                *report.published.entry(origin.clone()).or_default() += published;
                report.duplicates += duplicates;
                let mode = if *origin == self.cfg.region { "own" } else { "takeover" };
                metrics::counter!("tessera_bus_relay_published_total", "region" => origin.to_string(), "mode" => mode)
                    .increment(published as u64);
                if duplicates > 0 {
                    metrics::counter!("tessera_bus_relay_duplicates_total", "region" => origin.to_string())
                        .increment(duplicates as u64);
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
            if !full {
                return Ok(());
            }
            from = next_from;
        }
    }

    /// Publishes in order, pipelined, and returns how many leading entries were
    /// acknowledged, how many of those were duplicates, and the first failure.
    async fn publish_batch(
        &self,
        origin: &RegionId,
        batch: &[(tessera_store::Bytes, crate::event::OutgoingEvent)],
    ) -> (usize, usize, Option<BusError>) {
        let mut pending = Vec::with_capacity(batch.len());
        let mut send_failure = None;
        for (_, event) in batch {
            // Each event continues the trace of the request that wrote it; consumers
            // continue this span's.
            let span = tracing::info_span!("bus.publish", subject = %event.subject);
            if let Some(tp) = &event.traceparent {
                tessera_runtime::telemetry::set_parent_from_pairs(&span, |k| {
                    (k == "traceparent").then_some(tp.as_str())
                });
            }
            let mut headers = event.headers(origin);
            for (k, v) in span.in_scope(tessera_runtime::telemetry::current_context_pairs) {
                headers.insert(k.as_str(), v.as_str());
            }
            let sent = self
                .js
                .publish_with_headers(event.subject.clone(), headers, event.payload.clone().into())
                .instrument(span)
                .await;
            match sent {
                Ok(ack) => pending.push(ack),
                Err(e) => {
                    send_failure = Some(BusError::publish(e));
                    break;
                }
            }
        }
        let mut acknowledged = 0;
        let mut duplicates = 0;
        let mut failure = None;
        for ack in pending {
            match ack.await {
                Ok(ack) if failure.is_none() => {
                    acknowledged += 1;
                    if ack.duplicate {
                        duplicates += 1;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if failure.is_none() {
                        failure = Some(BusError::publish(e));
                    }
                }
            }
        }
        let failure = failure.or(send_failure);
        (acknowledged, duplicates, failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, expires_at_ms: u64) -> LeaseRecord {
        LeaseRecord { v: 1, holder: holder.into(), expires_at_ms }
    }

    #[test]
    fn lease_rules_hand_outboxes_over_and_back() {
        let us = RegionId::parse("us-east").unwrap();
        let eu = RegionId::parse("eu-west").unwrap();
        let now = 10_000;
        let check = |current: Option<LeaseRecord>, me: &str, region: &RegionId, role| {
            may_claim(current.as_ref(), me, region, role, now)
        };
        // Nobody holds it, or the holder's time ran out.
        assert!(check(None, "us-east/a", &us, LeaseRole::Owner));
        assert!(check(Some(lease("us-east/old", now)), "us-east/a", &us, LeaseRole::Owner));
        assert!(check(Some(lease("us-east/a", now)), "eu-west/b", &eu, LeaseRole::Standby));
        // Renewal of one's own lease.
        assert!(check(Some(lease("eu-west/b", now + 1)), "eu-west/b", &eu, LeaseRole::Standby));
        // A standby never takes a live lease.
        assert!(!check(Some(lease("us-east/a", now + 1)), "eu-west/b", &eu, LeaseRole::Standby));
        // The owner takes its outbox back from a peer at once ...
        assert!(check(Some(lease("eu-west/b", now + 4_000)), "us-east/new", &us, LeaseRole::Owner));
        // ... but waits for another live instance of its own region.
        assert!(!check(Some(lease("us-east/old", now + 1)), "us-east/new", &us, LeaseRole::Owner));
    }
}
