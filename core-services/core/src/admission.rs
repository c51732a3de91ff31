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
use tessera_api::queue::{
    AdmissionWatermark, QueuePhase, QueuePlace, QueueRegistration, QueueTicketClaims,
};
use tessera_api::{CustomerId, EventId, QueueTicketId};
use tessera_fdb_schema::values::{
    self, AdmissionRecord, AdmissionUse, AdmissionUseState, EventRecord, LeaseRecord,
    QueueLogEntry, QueueLogRecord, QueueRecord, QueueTicketRef, queue_place,
};
use tessera_queue::controller::{FanEvent, Progress, TicketRef};
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
                // A place whose admission was released (it expired unused, or the fan
                // left) is finished: joining again gives a new place at the back.
                let finished =
                    match trx.get(&keys.admission_use(event_id, &rec.ticket_id), false).await? {
                        Some(b) => values::decode::<AdmissionUse>(&b)
                            .is_ok_and(|u| u.state == AdmissionUseState::Released),
                        None => false,
                    };
                if !finished {
                    return Ok((rec, Some(stamp)));
                }
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

/// The newest watermark this process knows of: its own (when it drives the controller),
/// else the stored one.
pub async fn current_watermark<S: Store>(
    app: &App<S>,
    event_id: &EventId,
) -> anyhow::Result<Option<AdmissionWatermark>> {
    if let Some(wm) = app.watermarks.read().get(event_id) {
        return Ok(Some(wm.watermark.clone()));
    }
    stored_watermark(app, event_id).await
}

fn ticket_ref(claims: &QueueTicketClaims) -> QueueTicketRef {
    QueueTicketRef {
        ticket_id: claims.ticket_id.clone(),
        phase: claims.phase,
        rank: claims.rank.clone(),
    }
}

fn log_entry<T: Transaction>(
    trx: &T,
    keys: &tessera_fdb_schema::Keyspace,
    event_id: &EventId,
    at_ms: u64,
    entry: QueueLogEntry,
) {
    let rec = QueueLogRecord { v: 1, at_ms, entry };
    trx.atomic_op(
        &keys.queue_log_versionstamped(event_id, 0),
        &values::encode(&rec),
        MutationType::SetVersionstampedKey,
    );
}

/// Why a fan's waiting-room request changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum FanRequestError {
    #[error("places are still offered in queue order")]
    NotSoldOut,
    #[error("you left the waiting room with this ticket")]
    Left,
    #[error("store failed: {0}")]
    Store(String),
}

/// Records that a hold with this admission failed for lack of places, so the place goes to
/// the next fan. Only the first failure of an admission counts.
pub async fn gave_back<S: Store>(
    app: &App<S>,
    event_id: &EventId,
    claims: &QueueTicketClaims,
) -> anyhow::Result<()> {
    let keys = app.keys().clone();
    let now = app.clock.now_ms();
    tessera_store::run(app.store(), |trx, _| {
        let keys = keys.clone();
        async move {
            let mark = keys.queue_gave_back(event_id, &claims.ticket_id);
            if trx.get(&mark, false).await?.is_some() {
                return Ok(());
            }
            trx.set(&mark, &[]);
            log_entry(
                &trx,
                &keys,
                event_id,
                now,
                QueueLogEntry::GaveBack { ticket: ticket_ref(claims) },
            );
            Ok::<_, TrxError<std::convert::Infallible>>(())
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("record a place given back: {e:?}"))
}

/// Records that a hold was made with this admission (`seats` places), so the controller
/// stops counting it as outstanding. Best effort: if it is lost, the admission counts
/// until its window ends, and its release then finds the hold and changes nothing.
pub async fn used<S: Store>(
    app: &App<S>,
    event_id: &EventId,
    claims: &QueueTicketClaims,
    seats: u32,
) {
    let keys = app.keys().clone();
    let now = app.clock.now_ms();
    let result = tessera_store::run(app.store(), |trx, _| {
        let keys = keys.clone();
        async move {
            log_entry(
                &trx,
                &keys,
                event_id,
                now,
                QueueLogEntry::Used { ticket: ticket_ref(claims), seats },
            );
            Ok::<_, TrxError<std::convert::Infallible>>(())
        }
    })
    .await;
    if let Err(e) = result {
        tracing::warn!("admission: record an admission used: {e:?}");
    }
}

/// A fan leaves the waiting room: their place (or admission) goes to the next fan, their
/// admission token admits nothing any more, and joining again gives a new place.
pub async fn leave<S: Store>(
    app: &App<S>,
    event_id: &EventId,
    claims: &QueueTicketClaims,
) -> Result<(), FanRequestError> {
    let keys = app.keys().clone();
    let now = app.clock.now_ms();
    tessera_store::run(app.store(), |trx, _| {
        let keys = keys.clone();
        async move {
            let key = keys.admission_use(event_id, &claims.ticket_id);
            if trx.get(&key, false).await?.is_some() {
                // Used for a hold (the fan keeps it), or already released: nothing to do.
                return Ok(());
            }
            let released = AdmissionUse {
                v: 1,
                state: AdmissionUseState::Released,
                hold_id: None,
                customer_id: claims.customer_id.clone(),
                used_at_ms: 0,
                released_at_ms: Some(now),
            };
            trx.set(&key, &values::encode(&released));
            log_entry(
                &trx,
                &keys,
                event_id,
                now,
                QueueLogEntry::Left { ticket: ticket_ref(claims) },
            );
            Ok::<_, TrxError<std::convert::Infallible>>(())
        }
    })
    .await
    .map_err(|e| FanRequestError::Store(format!("{e:?}")))?;
    metrics::counter!("tessera_core_queue_fan_events_total", "kind" => "left").increment(1);
    Ok(())
}

/// A fan told "sold out" chooses the waiting list. Refused while places are still offered
/// in queue order (or the fan is admitted); choosing twice changes nothing.
pub async fn join_waiting_list<S: Store>(
    app: &App<S>,
    event_id: &EventId,
    claims: &QueueTicketClaims,
) -> Result<(), FanRequestError> {
    let wm = current_watermark(app, event_id)
        .await
        .map_err(|e| FanRequestError::Store(format!("{e:#}")))?;
    let sold_out = wm.as_ref().is_some_and(|wm| {
        tessera_queue::view(claims, wm).state == tessera_api::queue::QueueStatusState::SoldOut
    });
    if !sold_out {
        return Err(FanRequestError::NotSoldOut);
    }
    let keys = app.keys().clone();
    let now = app.clock.now_ms();
    tessera_store::run(app.store(), |trx, _| {
        let keys = keys.clone();
        async move {
            if let Some(b) =
                trx.get(&keys.admission_use(event_id, &claims.ticket_id), false).await?
                && values::decode::<AdmissionUse>(&b)
                    .is_ok_and(|u| u.state == AdmissionUseState::Released)
            {
                return Err(TrxError::Abort(FanRequestError::Left));
            }
            log_entry(
                &trx,
                &keys,
                event_id,
                now,
                QueueLogEntry::WaitingList { ticket: ticket_ref(claims) },
            );
            Ok(())
        }
    })
    .await
    .map_err(|e| match e {
        tessera_store::RunError::Abort(e) => e,
        e => FanRequestError::Store(format!("{e:?}")),
    })?;
    metrics::counter!("tessera_core_queue_fan_events_total", "kind" => "waiting_list").increment(1);
    Ok(())
}

/// One event's controller and how far it has read the queue and its log.
struct Driven {
    controller: AdmissionController,
    next_open_key: Option<Vec<u8>>,
    next_log_key: Option<Vec<u8>>,
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
        if let Err(e) = tick_all(&app, &mut driven, &lease_key).await {
            tracing::warn!("admission: tick failed, retrying next tick: {e:#}");
            // What this process holds may be ahead of what was stored: rebuild from the
            // store next tick.
            driven.clear();
        }
    }
    if leader {
        let _ = crate::lease::release(app.store(), &lease_key, &app.instance).await;
    }
}

async fn tick_all<S: Store>(
    app: &App<S>,
    driven: &mut HashMap<EventId, Driven>,
    lease_key: &[u8],
) -> anyhow::Result<()> {
    let events = app.inv.list_events().await?;
    for summary in events.events {
        if summary.state == SaleState::Closed {
            driven.remove(&summary.event_id);
            continue;
        }
        if let Err(e) = tick_event(app, driven, &summary.event_id, lease_key).await {
            driven.remove(&summary.event_id);
            return Err(e.context(format!("event {}", summary.event_id)));
        }
    }
    // With the newest watermark's time below, an alert can tell a stalled controller
    // (events to drive, no fresh watermark) from a quiet one (nothing to drive).
    metrics::gauge!("tessera_core_admission_events_driven").set(driven.len() as f64);
    Ok(())
}

/// Reads open-phase places recorded since `d.next_open_key` into the controller.
async fn read_open_places<S: Store>(
    app: &App<S>,
    d: &mut Driven,
    event_id: &EventId,
) -> anyhow::Result<()> {
    let keys = app.keys();
    loop {
        let trx = app.store().create_trx()?;
        let (b, e) = keys.queue_open_all(event_id);
        let begin = d.next_open_key.clone().unwrap_or(b);
        let rows = trx.get_range(&RangeRequest::new(begin, e).limit(10_000), true).await?;
        for (k, v) in &rows {
            let stamp = keys.queue_open_stamp_of_key(k)?;
            let rec: QueueRecord = values::decode(v)?;
            d.controller.push_open(hex12(&stamp), rec.ticket_id);
        }
        match rows.last() {
            Some((k, _)) => d.next_open_key = Some(key_after(k)),
            None => return Ok(()),
        }
        if rows.len() < 10_000 {
            return Ok(());
        }
    }
}

/// Applies the log entries recorded since `d.next_log_key`. Fans' events always; the
/// controller's own progress only when `replay` (a successor rebuilding the state; a
/// running controller already holds what it recorded).
async fn read_log<S: Store>(
    app: &App<S>,
    d: &mut Driven,
    event_id: &EventId,
    replay: bool,
) -> anyhow::Result<()> {
    let keys = app.keys();
    loop {
        let trx = app.store().create_trx()?;
        let (b, e) = keys.queue_log_all(event_id);
        let begin = d.next_log_key.clone().unwrap_or(b);
        let rows = trx.get_range(&RangeRequest::new(begin, e).limit(10_000), true).await?;
        for (_, v) in &rows {
            let rec: QueueLogRecord = values::decode(v)?;
            let fan = |t: QueueTicketRef| TicketRef {
                ticket_id: t.ticket_id,
                phase: t.phase,
                rank: t.rank,
            };
            let c = &mut d.controller;
            match rec.entry {
                QueueLogEntry::Used { ticket, seats } => {
                    c.fan_event(&fan(ticket), FanEvent::Used { seats }, rec.at_ms);
                }
                QueueLogEntry::GaveBack { ticket } => {
                    c.fan_event(&fan(ticket), FanEvent::GaveBack, rec.at_ms);
                }
                QueueLogEntry::Left { ticket } => {
                    c.fan_event(&fan(ticket), FanEvent::Left, rec.at_ms);
                }
                QueueLogEntry::WaitingList { ticket } => {
                    c.fan_event(&fan(ticket), FanEvent::WaitingList, rec.at_ms);
                }
                QueueLogEntry::Admitted {
                    main_from,
                    main_to,
                    waiting_list,
                    waiting_list_line,
                    sold_out,
                } if replay => c.replay(&Progress::Admitted {
                    at_ms: rec.at_ms,
                    main_from,
                    main_to,
                    waiting_list,
                    waiting_list_line,
                    sold_out,
                }),
                QueueLogEntry::Expired { positions } if replay => {
                    c.replay(&Progress::Expired { at_ms: rec.at_ms, positions });
                }
                QueueLogEntry::Admitted { .. }
                | QueueLogEntry::Expired { .. }
                | QueueLogEntry::Unknown => {}
            }
        }
        match rows.last() {
            Some((k, _)) => d.next_log_key = Some(key_after(k)),
            None => return Ok(()),
        }
        if rows.len() < 10_000 {
            return Ok(());
        }
    }
}

/// Draws the pre-open order once the sale has opened.
async fn reveal<S: Store>(
    app: &App<S>,
    d: &mut Driven,
    event_id: &EventId,
    record: &EventRecord,
) -> anyhow::Result<()> {
    if d.controller.revealed() || record.state == SaleState::Scheduled {
        return Ok(());
    }
    let trx = app.store().create_trx()?;
    let (b, e) = app.keys().queue_pre_open_all(event_id);
    let rows = trx.get_range(&RangeRequest::new(b, e), true).await?;
    let mut tickets = Vec::with_capacity(rows.len());
    for (_, v) in rows {
        let rec: QueueRecord = values::decode(&v)?;
        tickets.push(rec.ticket_id);
    }
    d.controller
        .reveal(&record.shuffle_seed, &tickets)
        .map_err(|e| anyhow::anyhow!("reveal the shuffle seed of {event_id}: {e}"))?;
    tracing::info!(%event_id, pre_open = tickets.len(), "admission: drew the pre-open order");
    Ok(())
}

/// A controller for `event_id` rebuilt from the store: the draw, every place, and the
/// whole queue log replayed.
async fn rebuild<S: Store>(
    app: &App<S>,
    event_id: &EventId,
    record: &EventRecord,
) -> anyhow::Result<Driven> {
    let config = ControllerConfig {
        admission_ttl_ms: app.config.queue.admission_ttl_s * 1000,
        admission_grace_ms: app.config.queue.admission_grace_s * 1000,
        tickets_per_order_prior: app.config.queue.tickets_per_order_prior,
        ..ControllerConfig::default()
    };
    let mut d = Driven {
        controller: AdmissionController::new(
            event_id.clone(),
            record.shuffle_commitment.clone(),
            config,
        ),
        next_open_key: None,
        next_log_key: None,
    };
    let trx = app.store().create_trx()?;
    let stored = match trx.get(&app.keys().queue_admission(event_id), true).await? {
        Some(b) => Some(values::decode::<AdmissionRecord>(&b)?),
        None => None,
    };
    reveal(app, &mut d, event_id, record).await?;
    read_open_places(app, &mut d, event_id).await?;
    read_log(app, &mut d, event_id, true).await?;
    if let Some(rec) = stored {
        d.controller.restore_version(rec.version);
        anyhow::ensure!(
            d.controller.main_line() >= rec.pre_open_admitted + rec.open_admitted,
            "the queue log of {event_id} ends before the stored progress ({} < {})",
            d.controller.main_line(),
            rec.pre_open_admitted + rec.open_admitted
        );
    }
    Ok(d)
}

async fn tick_event<S: Store>(
    app: &App<S>,
    driven: &mut HashMap<EventId, Driven>,
    event_id: &EventId,
    lease_key: &[u8],
) -> anyhow::Result<()> {
    let keys = app.keys().clone();
    let record = app.inv.event_record(event_id).await?;
    let d = match driven.entry(event_id.clone()) {
        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(rebuild(app, event_id, &record).await?)
        }
    };
    reveal(app, d, event_id, &record).await?;
    read_open_places(app, d, event_id).await?;
    // The log before the inventory: a hold that commits between the two reads shows up
    // as held seats with its admission still counted (admits less for a tick), never the
    // other way round.
    read_log(app, d, event_id, false).await?;

    let now = app.clock.now_ms();
    let instance = app.instance.clone();
    // Admissions whose window passed unused: released in the store (a hold with one now
    // fails), unless the store shows the hold came first.
    let due = d.controller.due_expiries(now);
    if !due.is_empty() {
        let (positions, used) = tessera_store::run(app.store(), |trx, _| {
            let (keys, due, instance) = (keys.clone(), due.clone(), instance.clone());
            async move {
                check_lease(&trx, lease_key, &instance).await?;
                let mut positions = Vec::with_capacity(due.len());
                let mut used = Vec::new();
                for (p, ticket) in &due {
                    positions.push(*p);
                    let key = keys.admission_use(event_id, &ticket.ticket_id);
                    if trx.get(&key, false).await?.is_some() {
                        used.push(*p);
                        continue;
                    }
                    // The record names the place's customer, as a hold's does.
                    let place_key = match (ticket.phase, ticket.rank.as_deref()) {
                        (QueuePhase::PreOpen, _) => keys.queue_pre_open(event_id, &ticket.ticket_id),
                        (QueuePhase::Open, Some(rank)) => {
                            let stamp = hex::decode(rank)
                                .ok()
                                .and_then(|b| <[u8; 12]>::try_from(b).ok())
                                .unwrap_or_default();
                            keys.queue_open_at(event_id, stamp)
                        }
                        (QueuePhase::Open, None) => continue,
                    };
                    let customer = match trx.get(&place_key, true).await? {
                        Some(b) => values::decode::<QueueRecord>(&b).ok().map(|r| r.customer_id),
                        None => None,
                    };
                    let Some(customer_id) = customer else {
                        tracing::warn!(ticket = %ticket.ticket_id, "admission: an expired admission's place is not in the store");
                        continue;
                    };
                    let released = AdmissionUse {
                        v: 1,
                        state: AdmissionUseState::Released,
                        hold_id: None,
                        customer_id,
                        used_at_ms: 0,
                        released_at_ms: Some(now),
                    };
                    trx.set(&key, &values::encode(&released));
                }
                let expired: Vec<u64> =
                    positions.iter().copied().filter(|p| !used.contains(p)).collect();
                if !expired.is_empty() {
                    log_entry(&trx, &keys, event_id, now, QueueLogEntry::Expired {
                        positions: expired,
                    });
                }
                Ok::<_, TrxError<LeaseLost>>((positions, used))
            }
        })
        .await
        .map_err(|e| anyhow::anyhow!("release expired admissions: {e:?}"))?;
        let _ = d.controller.expire(&positions, &used, now);
        metrics::counter!("tessera_core_admissions_expired_total")
            .increment((positions.len() - used.len()) as u64);
    }

    let count = |b: Option<tessera_store::Bytes>| b.map_or(0, |b| decode_i64(&b)).max(0) as u64;
    let pre_open_count = {
        let trx = app.store().create_trx()?;
        count(trx.get(&keys.queue_count(event_id, true), true).await?)
    };
    let availability = app.inv.availability(event_id).await?;
    let sum = |f: fn(u64, u64, u64) -> u64| {
        availability.sections.iter().map(|s| f(s.free, s.held, s.sold)).sum::<u64>()
            + availability.pools.iter().map(|p| f(p.free, p.held, p.sold)).sum::<u64>()
    };
    let input = ControllerInput {
        now_ms: now,
        state: record.state,
        pre_open_count,
        remaining: sum(|free, _, _| free),
        held: sum(|_, held, _| held),
        sold: sum(|_, _, sold| sold),
        core_health: 1.0,
        operator_rate_per_s: record
            .admission_rate_per_s
            .unwrap_or(app.config.queue.default_rate_per_s),
    };
    let (mut wm, progress) = d.controller.tick(&input);
    wm.published_at_ms = now;
    persist(app, event_id, &wm, progress.as_ref(), lease_key).await?;
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
    metrics::gauge!("tessera_core_admission_outstanding").set(wm.outstanding as f64);
    metrics::gauge!("tessera_core_admission_waiting_list")
        .set(d.controller.waiting_list_len() as f64);
    metrics::gauge!("tessera_core_admission_sold_out").set(if d.controller.is_sold_out() {
        1.0
    } else {
        0.0
    });
    Ok(())
}

/// The admission lease moved to another process mid-tick.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the admission lease moved to another process")]
pub struct LeaseLost;

/// Aborts the transaction unless `instance` still holds the controller lease: a process
/// that lost it (paused, partitioned) must not record progress over its successor's.
async fn check_lease<T: Transaction>(
    trx: &T,
    lease_key: &[u8],
    instance: &str,
) -> Result<(), TrxError<LeaseLost>> {
    let holder = match trx.get(lease_key, false).await? {
        Some(b) => values::decode::<LeaseRecord>(&b).ok().map(|l| l.holder),
        None => None,
    };
    if holder.as_deref() != Some(instance) {
        return Err(TrxError::Abort(LeaseLost));
    }
    Ok(())
}

async fn persist<S: Store>(
    app: &App<S>,
    event_id: &EventId,
    wm: &AdmissionWatermark,
    progress: Option<&Progress>,
    lease_key: &[u8],
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
    let entry = progress.map(|p| match p {
        Progress::Admitted {
            at_ms,
            main_from,
            main_to,
            waiting_list,
            waiting_list_line,
            sold_out,
        } => (
            *at_ms,
            QueueLogEntry::Admitted {
                main_from: *main_from,
                main_to: *main_to,
                waiting_list: waiting_list.clone(),
                waiting_list_line: *waiting_list_line,
                sold_out: *sold_out,
            },
        ),
        Progress::Expired { at_ms, positions } => {
            (*at_ms, QueueLogEntry::Expired { positions: positions.clone() })
        }
    });
    let keys = app.keys().clone();
    let instance = app.instance.clone();
    tessera_store::run(app.store(), |trx, _| {
        let (key, rec, entry, keys, instance) =
            (key.clone(), rec.clone(), entry.clone(), keys.clone(), instance.clone());
        async move {
            check_lease(&trx, lease_key, &instance).await?;
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
            if let Some((at_ms, entry)) = entry {
                log_entry(&trx, &keys, event_id, at_ms, entry);
            }
            Ok(())
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
