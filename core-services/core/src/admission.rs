//! Queue admission in the core: registering fans' places, and the admission controller
//! that turns queue counts, remaining inventory and the operator's rate into the watermark
//! the edges admit by.
//!
//! Places are recorded in the shared store. Before the sale opens a place is keyed by its
//! ticket id (the order is drawn by lottery at opening); after, by the versionstamp of the
//! commit that recorded it, so arrival order is commit order and joins never contend on a
//! counter. A customer has one place per event.
//!
//! One core across all regions drives each event's controller (the `admission` lease);
//! its progress is stored with every tick, so a successor resumes where it stopped and
//! admission never moves backwards.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tessera_api::inventory::SaleState;
use tessera_api::queue::{AdmissionWatermark, QueuePhase, QueuePlace, QueueRegistration};
use tessera_api::{CustomerId, EventId, QueueTicketId};
use tessera_fdb_schema::values::{self, AdmissionRecord, EventRecord, QueueRecord, queue_place};
use tessera_queue::{AdmissionController, ControllerConfig, ControllerInput};
use tessera_store::{
    MutationType, RangeRequest, Store, Transaction, TrxError, decode_i64, key_after, run_with,
};

use crate::App;

/// Why a place could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("event {0} does not exist")]
    UnknownEvent(EventId),
    #[error("the waiting room of event {0} is closed")]
    Closed(EventId),
    #[error("store failed: {0}")]
    Store(String),
}

fn hex12(stamp: &[u8; 12]) -> String {
    hex::encode(stamp)
}

/// Records a fan's place (or returns the place they already have).
#[tracing::instrument(name = "core.queue_register", skip_all, fields(event_id = %event_id))]
pub async fn register<S: Store>(
    app: &App<S>,
    event_id: &EventId,
    reg: &QueueRegistration,
) -> Result<QueuePlace, RegisterError> {
    let keys = app.keys().clone();
    let now = app.clock.now_ms();
    let result = run_with(app.store(), &Default::default(), |trx, _| {
        let keys = keys.clone();
        async move {
            let qc = keys.queue_customer(event_id, &reg.customer_id);
            if let Some(bytes) = trx.get(&qc, false).await? {
                let (stamp, rec) = queue_place::decode_place(&bytes)
                    .map_err(|e| TrxError::Abort(RegisterError::Store(e.to_string())))?;
                return Ok((rec, Some(stamp)));
            }
            // Read without snapshot: an opening that commits first makes this join retry
            // and land in the open phase.
            let Some(ev) = trx.get(&keys.event(event_id), false).await? else {
                return Err(TrxError::Abort(RegisterError::UnknownEvent(event_id.clone())));
            };
            let ev: EventRecord = values::decode(&ev)
                .map_err(|e| TrxError::Abort(RegisterError::Store(e.to_string())))?;
            let phase = match ev.state {
                SaleState::Scheduled => QueuePhase::PreOpen,
                SaleState::OnSale | SaleState::Paused | SaleState::SoldOut => QueuePhase::Open,
                SaleState::Closed => {
                    return Err(TrxError::Abort(RegisterError::Closed(event_id.clone())));
                }
            };
            let pre = phase == QueuePhase::PreOpen;
            let count_key = keys.queue_count(event_id, pre);
            let seq = trx.get(&count_key, true).await?.map_or(0, |b| decode_i64(&b)).max(0) as u64;
            let rec = QueueRecord {
                v: 1,
                ticket_id: reg.ticket_id.clone(),
                customer_id: reg.customer_id.clone(),
                phase,
                seq,
                joined_at_ms: now,
            };
            if pre {
                trx.set(&keys.queue_pre_open(event_id, &reg.ticket_id), &values::encode(&rec));
                trx.set(&qc, &queue_place::plain(&rec));
            } else {
                trx.atomic_op(
                    &keys.queue_open_versionstamped(event_id),
                    &values::encode(&rec),
                    MutationType::SetVersionstampedKey,
                );
                trx.atomic_op(
                    &qc,
                    &queue_place::versionstamped(&rec),
                    MutationType::SetVersionstampedValue,
                );
            }
            trx.atomic_op(&count_key, &1i64.to_le_bytes(), MutationType::Add);
            Ok((rec, None))
        }
    })
    .await;
    let ((rec, stored_stamp), info) = match result {
        Ok(v) => v,
        Err(tessera_store::RunError::Abort(e)) => return Err(e),
        Err(e) => return Err(RegisterError::Store(format!("{e:?}"))),
    };
    let rank = match rec.phase {
        QueuePhase::PreOpen => None,
        QueuePhase::Open => {
            let stamp = match stored_stamp {
                Some(s) => s,
                None => {
                    let mut s = [0u8; 12];
                    s[..10].copy_from_slice(&info.versionstamp);
                    s
                }
            };
            Some(hex12(&stamp))
        }
    };
    metrics::counter!("tessera_core_queue_joins_total", "phase" => match rec.phase { QueuePhase::PreOpen => "pre_open", QueuePhase::Open => "open" }).increment(1);
    Ok(QueuePlace {
        event_id: event_id.clone(),
        ticket_id: rec.ticket_id,
        customer_id: rec.customer_id,
        phase: rec.phase,
        seq: rec.seq,
        rank,
        joined_at_ms: rec.joined_at_ms,
    })
}

/// The latest watermark of an event as stored by the controller.
pub async fn stored_watermark<S: Store>(
    app: &App<S>,
    event_id: &EventId,
) -> anyhow::Result<Option<AdmissionWatermark>> {
    let trx = app.store().create_trx()?;
    let Some(b) = trx.get(&app.keys().queue_admission(event_id), true).await? else {
        return Ok(None);
    };
    let rec: AdmissionRecord = values::decode(&b)?;
    Ok(rec.watermark)
}

/// One event's controller and what it has read of the open-phase places so far.
struct Driven {
    controller: AdmissionController,
    revealed: bool,
    open_ranks: Vec<String>,
    next_open_key: Option<Vec<u8>>,
}

/// The admission loop: while this process holds the `admission` lease, ticks every
/// event's controller and publishes the watermarks.
pub async fn run_controller<S: Store>(app: Arc<App<S>>, shutdown: tokio_util_shutdown::Shutdown) {
    let tick = Duration::from_millis(app.config.queue.tick_ms.max(50));
    let lease_key = app.keys().lease("admission");
    let ttl_ms = (app.config.queue.tick_ms * 12).max(2_000);
    let mut driven: HashMap<EventId, Driven> = HashMap::new();
    let mut leader = false;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.wait() => break,
        }
        let now = app.clock.now_ms();
        match crate::lease::acquire(app.store(), &lease_key, &app.instance, now, ttl_ms).await {
            Ok(true) => {
                if !leader {
                    tracing::info!(instance = %app.instance, "admission: took the controller lease");
                    // Start from the stored progress, not from what this process had.
                    driven.clear();
                }
                leader = true;
            }
            Ok(false) => {
                if leader {
                    tracing::info!("admission: lost the controller lease");
                }
                leader = false;
                driven.clear();
                continue;
            }
            Err(e) => {
                tracing::warn!("admission: lease check failed: {e:#}");
                continue;
            }
        }
        if let Err(e) = tick_all(&app, &mut driven).await {
            tracing::warn!("admission: tick failed, retrying next tick: {e:#}");
        }
    }
    if leader {
        let _ = crate::lease::release(app.store(), &lease_key, &app.instance).await;
    }
}

async fn tick_all<S: Store>(
    app: &App<S>,
    driven: &mut HashMap<EventId, Driven>,
) -> anyhow::Result<()> {
    let events = app.inv.list_events().await?;
    for summary in events.events {
        if summary.state == SaleState::Closed {
            driven.remove(&summary.event_id);
            continue;
        }
        tick_event(app, driven, &summary.event_id).await?;
    }
    // With the newest watermark's time below, an alert can tell a stalled controller
    // (events to drive, no fresh watermark) from a quiet one (nothing to drive).
    metrics::gauge!("tessera_core_admission_events_driven").set(driven.len() as f64);
    Ok(())
}

async fn tick_event<S: Store>(
    app: &App<S>,
    driven: &mut HashMap<EventId, Driven>,
    event_id: &EventId,
) -> anyhow::Result<()> {
    let keys = app.keys();
    let record = app.inv.event_record(event_id).await?;
    let now = app.clock.now_ms();
    let d = match driven.entry(event_id.clone()) {
        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            let config = ControllerConfig {
                admission_ttl_ms: app.config.queue.admission_ttl_s * 1000,
                ..ControllerConfig::default()
            };
            let mut controller = AdmissionController::new(
                event_id.clone(),
                record.shuffle_commitment.clone(),
                config,
            );
            let trx = app.store().create_trx()?;
            if let Some(b) = trx.get(&keys.queue_admission(event_id), true).await? {
                let rec: AdmissionRecord = values::decode(&b)?;
                controller.restore(rec.version, rec.pre_open_admitted, rec.open_admitted);
            }
            v.insert(Driven {
                controller,
                revealed: false,
                open_ranks: Vec::new(),
                next_open_key: None,
            })
        }
    };
    // Reveal the seed and draw the pre-open order once the sale has opened.
    if !d.revealed && record.state != SaleState::Scheduled {
        let trx = app.store().create_trx()?;
        let (b, e) = keys.queue_pre_open_all(event_id);
        let rows = trx.get_range(&RangeRequest::new(b, e), true).await?;
        let mut tickets = Vec::with_capacity(rows.len());
        for (_, v) in rows {
            let rec: QueueRecord = values::decode(&v)?;
            tickets.push(rec.ticket_id);
        }
        d.controller
            .reveal(&record.shuffle_seed, &tickets)
            .map_err(|e| anyhow::anyhow!("reveal the shuffle seed of {event_id}: {e}"))?;
        d.revealed = true;
        tracing::info!(%event_id, pre_open = tickets.len(), "admission: drew the pre-open order");
    }
    // Read open-phase places that arrived since the last tick.
    {
        let trx = app.store().create_trx()?;
        let (b, e) = keys.queue_open_all(event_id);
        let begin = d.next_open_key.clone().unwrap_or(b);
        let rows = trx.get_range(&RangeRequest::new(begin, e).limit(100_000), true).await?;
        for (k, _) in &rows {
            let stamp = keys.queue_open_stamp_of_key(k)?;
            d.open_ranks.push(hex12(&stamp));
        }
        if let Some((k, _)) = rows.last() {
            d.next_open_key = Some(key_after(k));
        }
    }
    let trx = app.store().create_trx()?;
    let count = |b: Option<tessera_store::Bytes>| b.map_or(0, |b| decode_i64(&b)).max(0) as u64;
    let pre_open_count = count(trx.get(&keys.queue_count(event_id, true), true).await?);
    let open_count = (d.open_ranks.len() as u64).max(
        count(trx.get(&keys.queue_count(event_id, false), true).await?)
            .min(d.open_ranks.len() as u64),
    );
    let availability = app.inv.availability(event_id).await?;
    let remaining: u64 = availability.sections.iter().map(|s| s.free).sum::<u64>()
        + availability.pools.iter().map(|p| p.free).sum::<u64>();
    let input = ControllerInput {
        now_ms: now,
        state: record.state,
        pre_open_count,
        open_count,
        remaining,
        core_health: 1.0,
        operator_rate_per_s: record
            .admission_rate_per_s
            .unwrap_or(app.config.queue.default_rate_per_s),
    };
    let ranks = &d.open_ranks;
    let mut wm = d.controller.tick(&input, |i| ranks.get(i as usize).cloned());
    wm.published_at_ms = now;
    persist(app, event_id, &wm, &record).await?;
    let signed = tessera_queue::watermark::sign(&app.watermark_key, &wm);
    app.watermarks.write().insert(event_id.clone(), signed.clone());
    if let Some(nats) = &app.nats {
        let subject = tessera_api::bus::admission_subject(event_id);
        let payload = serde_json::to_vec(&signed)?;
        if let Err(e) = nats.publish(subject, payload.into()).await {
            tracing::warn!("admission: publish failed: {e}");
        }
    }
    metrics::gauge!("tessera_core_admission_open_admitted").set(wm.open_admitted as f64);
    metrics::gauge!("tessera_core_admission_watermark_published_seconds")
        .set(wm.published_at_ms as f64 / 1000.0);
    Ok(())
}

async fn persist<S: Store>(
    app: &App<S>,
    event_id: &EventId,
    wm: &AdmissionWatermark,
    _ev: &EventRecord,
) -> anyhow::Result<()> {
    let key = app.keys().queue_admission(event_id);
    let rec = AdmissionRecord {
        v: 1,
        version: wm.version,
        pre_open_admitted: wm.pre_open_admitted,
        pre_open_threshold: wm.pre_open_threshold,
        open_admitted: wm.open_admitted,
        open_admitted_rank: wm.open_admitted_rank.clone(),
        updated_at_ms: wm.published_at_ms,
        watermark: Some(wm.clone()),
    };
    tessera_store::run(app.store(), |trx, _| {
        let key = key.clone();
        let rec = rec.clone();
        async move {
            // Never move backwards, even if a stale leader ticks once more.
            if let Some(b) = trx.get(&key, false).await?
                && let Ok(old) = values::decode::<AdmissionRecord>(&b)
                && (old.version > rec.version
                    || old.open_admitted > rec.open_admitted
                    || old.pre_open_admitted > rec.pre_open_admitted)
            {
                return Ok(());
            }
            trx.set(&key, &values::encode(&rec));
            Ok::<_, TrxError<std::convert::Infallible>>(())
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("store the watermark: {e:?}"))?;
    Ok(())
}

/// Tells whether a ticket id is one the core registered (used by tests and audits).
pub async fn place_of<S: Store>(
    app: &App<S>,
    event_id: &EventId,
    customer: &CustomerId,
) -> anyhow::Result<Option<(QueueTicketId, QueuePhase)>> {
    let trx = app.store().create_trx()?;
    let Some(b) = trx.get(&app.keys().queue_customer(event_id, customer), true).await? else {
        return Ok(None);
    };
    let (_, rec) = queue_place::decode_place(&b)?;
    Ok(Some((rec.ticket_id, rec.phase)))
}

/// A tiny shutdown signal shared by background tasks.
pub mod tokio_util_shutdown {
    use std::sync::Arc;

    /// Cloneable; `wait` resolves once `trigger` was called.
    #[derive(Clone, Debug, Default)]
    pub struct Shutdown(Arc<tokio::sync::watch::Sender<bool>>);

    impl Shutdown {
        pub fn new() -> Self {
            Shutdown(Arc::new(tokio::sync::watch::channel(false).0))
        }
        pub fn trigger(&self) {
            let _ = self.0.send(true);
        }
        pub async fn wait(&self) {
            let mut rx = self.0.subscribe();
            let _ = rx.wait_for(|v| *v).await;
        }
        pub fn is_triggered(&self) -> bool {
            *self.0.borrow()
        }
    }
}
