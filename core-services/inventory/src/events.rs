//! Events: creation from a seat map, sale state changes.

use std::collections::HashSet;

use sha2::Digest as _;
use tessera_api::bus::BusEventBody;
use tessera_api::inventory::{CreateEvent, EventDetail, SaleState};
use tessera_api::{EventId, SeatId};
use tessera_fdb_schema::SeatState;
use tessera_fdb_schema::values::{self, EventRecord, PoolRecord, SectionRecord};
use tessera_store::{Store, Transaction, run};

use crate::{Inventory, InventoryError, fail, outbox};

/// Largest venue one event may describe.
pub const EVENT_CAPACITY_MAX: u64 = 2_000_000;
/// Shards of a general-admission pool. Two holds conflict only when they take from the same
/// shard in the same commit batch, so large pools get many shards; small ones keep at least
/// `GA_PLACES_PER_SHARD_MIN` places per shard so that they do not fragment.
const GA_SHARDS_MAX: u32 = 1024;
const GA_PLACES_PER_SHARD_MIN: u32 = 32;

fn validate(spec: &CreateEvent) -> Result<u64, InventoryError> {
    let bad = |m: String| Err(InventoryError::InvalidSeatMap(m));
    if spec.name.trim().is_empty() || spec.name.len() > 200 {
        return bad("name must be 1 to 200 characters".into());
    }
    if spec.venue.len() > 200 || spec.starts_at.len() > 64 {
        return bad("venue or starts_at is too long".into());
    }
    if spec.currency.len() != 3 || !spec.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return bad("currency must be a three-letter ISO 4217 code".into());
    }
    if spec.max_tickets_per_customer == 0 || spec.max_tickets_per_customer > 50 {
        return bad("max_tickets_per_customer must be between 1 and 50".into());
    }
    if spec.hold_ttl_s < 30 || spec.hold_ttl_s > 3600 {
        return bad("hold_ttl_s must be between 30 and 3600".into());
    }
    let mut tiers = HashSet::new();
    for t in &spec.tiers {
        if t.tier_id.is_empty() || t.tier_id.len() > 32 || !tiers.insert(t.tier_id.as_str()) {
            return bad(format!("tier id {:?} is empty, too long or repeated", t.tier_id));
        }
    }
    let mut ids = HashSet::new();
    let mut capacity = 0u64;
    for s in &spec.sections {
        if !ids.insert(s.section_id.as_str().to_owned()) {
            return bad(format!("section {} is repeated", s.section_id));
        }
        if !tiers.contains(s.tier.as_str()) {
            return bad(format!("section {} names unknown tier {}", s.section_id, s.tier));
        }
        if !s.rows.is_empty() && (s.row_count.is_some() || s.seats_per_row.is_some()) {
            return bad(format!("section {} gives both rows and row_count", s.section_id));
        }
        let rows = s.expanded_rows();
        if rows.is_empty() {
            return bad(format!("section {} has no rows", s.section_id));
        }
        let mut labels = HashSet::new();
        for r in &rows {
            if SeatId::new(s.section_id.clone(), &r.row, 1).is_err() {
                return bad(format!(
                    "row label {:?} in section {} is invalid",
                    r.row, s.section_id
                ));
            }
            if !labels.insert(r.row.as_str()) {
                return bad(format!("row {} in section {} is repeated", r.row, s.section_id));
            }
            if r.seats == 0 || r.seats > 9999 {
                return bad(format!(
                    "row {} in section {} must have 1 to 9999 seats",
                    r.row, s.section_id
                ));
            }
            if let Some(n) = r.accessible.iter().find(|n| **n == 0 || **n > r.seats) {
                return bad(format!(
                    "accessible seat {n} is outside row {} of section {}",
                    r.row, s.section_id
                ));
            }
            capacity += u64::from(r.seats);
        }
    }
    for p in &spec.ga_pools {
        if !ids.insert(p.pool_id.as_str().to_owned()) {
            return bad(format!("pool {} repeats an id", p.pool_id));
        }
        if !tiers.contains(p.tier.as_str()) {
            return bad(format!("pool {} names unknown tier {}", p.pool_id, p.tier));
        }
        if p.capacity == 0 {
            return bad(format!("pool {} has no capacity", p.pool_id));
        }
        capacity += u64::from(p.capacity);
    }
    if capacity == 0 {
        return bad("the event has no seats and no pools".into());
    }
    if capacity > EVENT_CAPACITY_MAX {
        return bad(format!("capacity {capacity} exceeds {EVENT_CAPACITY_MAX}"));
    }
    Ok(capacity)
}

/// Splits `capacity` over shards.
pub(crate) fn shard_capacities(capacity: u32) -> Vec<u32> {
    let shards = (capacity / GA_PLACES_PER_SHARD_MIN).clamp(1, GA_SHARDS_MAX);
    let base = capacity / shards;
    let extra = capacity % shards;
    (0..shards).map(|i| base + u32::from(i < extra)).collect()
}

impl<S: Store> Inventory<S> {
    /// Creates an event from a seat map. Seats are written in batches first; the event
    /// record, written last, makes the event exist.
    #[tracing::instrument(name = "inventory.create_event", skip_all, fields(event_id = %spec.event_id))]
    pub async fn create_event(&self, spec: CreateEvent) -> Result<EventDetail, InventoryError> {
        let capacity = validate(&spec)?;
        let event_id = spec.event_id.clone();
        {
            let trx = self.store.create_trx().map_err(InventoryError::Store)?;
            if trx
                .get(&self.keys.event(&event_id), false)
                .await
                .map_err(InventoryError::Store)?
                .is_some()
            {
                return Err(InventoryError::EventExists(event_id));
            }
        }
        // Seats, in batches small enough for one transaction each.
        let free = SeatState::free().encode();
        let mut batch: Vec<Vec<u8>> = Vec::with_capacity(self.config.create_batch_seats);
        for s in &spec.sections {
            for r in s.expanded_rows() {
                for n in 1..=r.seats {
                    let seat = SeatId::new(s.section_id.clone(), &r.row, n)
                        .map_err(|e| InventoryError::InvalidSeatMap(e.to_string()))?;
                    batch.push(self.keys.seat(&event_id, &seat));
                    if batch.len() >= self.config.create_batch_seats {
                        self.write_seats(&batch, &free).await?;
                        batch.clear();
                    }
                }
            }
        }
        if !batch.is_empty() {
            self.write_seats(&batch, &free).await?;
        }

        let mut seed = [0u8; 32];
        self.rng.fill(&mut seed);
        let commitment = hex::encode(sha2::Sha256::digest(seed));
        let now = self.clock.now_ms();
        let state = if spec.open_now { SaleState::OnSale } else { SaleState::Scheduled };
        let record = EventRecord {
            v: 1,
            event_id: event_id.clone(),
            name: spec.name.clone(),
            venue: spec.venue.clone(),
            starts_at: spec.starts_at.clone(),
            on_sale_at: spec.on_sale_at.clone(),
            currency: spec.currency.clone(),
            state,
            max_tickets_per_customer: spec.max_tickets_per_customer,
            hold_ttl_s: spec.hold_ttl_s,
            tiers: spec.tiers.clone(),
            sections: spec.sections.iter().map(|s| s.section_id.clone()).collect(),
            pools: spec.ga_pools.iter().map(|p| p.pool_id.clone()).collect(),
            capacity,
            shuffle_commitment: commitment,
            shuffle_seed: hex::encode(seed),
            created_at_ms: now,
            opened_at_ms: spec.open_now.then_some(now),
            admission_rate_per_s: None,
        };
        let sections: Vec<SectionRecord> = spec
            .sections
            .iter()
            .map(|s| SectionRecord {
                v: 1,
                section_id: s.section_id.clone(),
                name: s.name.clone(),
                tier: s.tier.clone(),
                rows: s.expanded_rows(),
            })
            .collect();
        let pools: Vec<PoolRecord> = spec
            .ga_pools
            .iter()
            .map(|p| PoolRecord {
                v: 1,
                pool_id: p.pool_id.clone(),
                name: p.name.clone(),
                tier: p.tier.clone(),
                capacity: p.capacity,
                shard_capacity: shard_capacities(p.capacity),
            })
            .collect();
        let keys = self.keys.clone();
        let region = self.config.region.clone();
        run(&self.store, |trx, maybe_committed| {
            let (record, sections, pools, keys, region) =
                (record.clone(), sections.clone(), pools.clone(), keys.clone(), region.clone());
            async move {
                if let Some(existing) = trx.get(&keys.event(&record.event_id), false).await? {
                    // After an unknown commit outcome, the event found may be this very one
                    // (its seed commitment is unique to this creation).
                    let ours = maybe_committed.0
                        && values::decode::<EventRecord>(&existing)
                            .is_ok_and(|e| e.shuffle_commitment == record.shuffle_commitment);
                    if ours {
                        return Ok(());
                    }
                    return fail(InventoryError::EventExists(record.event_id.clone()));
                }
                for s in &sections {
                    trx.set(&keys.section(&record.event_id, &s.section_id), &values::encode(s));
                }
                for p in &pools {
                    trx.set(&keys.pool(&record.event_id, &p.pool_id), &values::encode(p));
                }
                trx.set(&keys.event(&record.event_id), &values::encode(&record));
                outbox(
                    &trx,
                    &keys,
                    &region,
                    0,
                    &record.event_id,
                    now,
                    BusEventBody::EventChanged { state: record.state },
                );
                Ok(())
            }
        })
        .await?;
        tracing::info!(capacity, "event created");
        self.event_detail(&event_id).await
    }

    async fn write_seats(&self, keys: &[Vec<u8>], free: &[u8]) -> Result<(), InventoryError> {
        run(&self.store, |trx, _| async move {
            for k in keys {
                trx.set(k, free);
            }
            Ok::<_, tessera_store::TrxError<InventoryError>>(())
        })
        .await?;
        Ok(())
    }

    /// Moves an event's sale to `to`: `open` (reveals the shuffle seed), `pause`, `resume`,
    /// `close`. Pausing stops new holds; holds and checkouts in flight complete.
    #[tracing::instrument(name = "inventory.set_sale_state", skip_all, fields(event_id = %event_id, to = ?to))]
    pub async fn set_sale_state(
        &self,
        event_id: &EventId,
        to: SaleState,
    ) -> Result<EventRecordView, InventoryError> {
        let keys = self.keys.clone();
        let region = self.config.region.clone();
        let now = self.clock.now_ms();
        let record = run(&self.store, |trx, _| {
            let (keys, region) = (keys.clone(), region.clone());
            async move {
                let Some(bytes) = trx.get(&keys.event(event_id), false).await? else {
                    return fail(InventoryError::UnknownEvent(event_id.clone()));
                };
                let mut record: EventRecord = match values::decode(&bytes) {
                    Ok(r) => r,
                    Err(e) => return crate::corrupt(e),
                };
                use SaleState::*;
                let allowed = matches!(
                    (record.state, to),
                    (Scheduled, OnSale)
                        | (OnSale, Paused)
                        | (Paused, OnSale)
                        | (SoldOut, OnSale)
                        | (OnSale, SoldOut)
                        | (_, Closed)
                ) || record.state == to;
                if !allowed {
                    return fail(InventoryError::InvalidTransition {
                        event: event_id.clone(),
                        from: record.state,
                        to,
                    });
                }
                if record.state == to {
                    return Ok(record);
                }
                if to == OnSale && record.opened_at_ms.is_none() {
                    record.opened_at_ms = Some(now);
                }
                record.state = to;
                trx.set(&keys.event(event_id), &values::encode(&record));
                outbox(
                    &trx,
                    &keys,
                    &region,
                    0,
                    event_id,
                    now,
                    BusEventBody::EventChanged { state: to },
                );
                Ok(record)
            }
        })
        .await?;
        Ok(EventRecordView(record))
    }

    /// Sets the operator's admission rate for an event.
    pub async fn set_admission_rate(
        &self,
        event_id: &EventId,
        rate_per_s: f64,
    ) -> Result<(), InventoryError> {
        let keys = self.keys.clone();
        run(&self.store, |trx, _| {
            let keys = keys.clone();
            async move {
                let Some(bytes) = trx.get(&keys.event(event_id), false).await? else {
                    return fail(InventoryError::UnknownEvent(event_id.clone()));
                };
                let mut record: EventRecord = match values::decode(&bytes) {
                    Ok(r) => r,
                    Err(e) => return crate::corrupt(e),
                };
                record.admission_rate_per_s = Some(rate_per_s);
                trx.set(&keys.event(event_id), &values::encode(&record));
                Ok(())
            }
        })
        .await?;
        Ok(())
    }

    /// The stored event record (including the secret shuffle seed: for the core only).
    pub async fn event_record(&self, event_id: &EventId) -> Result<EventRecord, InventoryError> {
        let trx = self.store.create_trx().map_err(InventoryError::Store)?;
        let bytes = trx
            .get(&self.keys.event(event_id), true)
            .await
            .map_err(InventoryError::Store)?
            .ok_or_else(|| InventoryError::UnknownEvent(event_id.clone()))?;
        Ok(values::decode(&bytes)?)
    }
}

/// An event record as returned by state changes.
#[derive(Debug, Clone)]
pub struct EventRecordView(pub EventRecord);
