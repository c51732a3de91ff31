//! Placing holds: specific seats, best available, general admission.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use tessera_api::bus::BusEventBody;
use tessera_api::inventory::{HOLD_SEATS_MAX, Hold, HoldSpec, HoldState};
use tessera_api::queue::QueuePhase;
use tessera_api::{CustomerId, EventId, HoldId, PoolId, QueueTicketId, SeatId, SectionId};
use tessera_fdb_schema::keys::Tally;
use tessera_fdb_schema::values::{
    self, AdmissionUse, AdmissionUseState, EventRecord, HoldRecord, IdempotencyRecord, PoolRecord,
    QueueLogEntry, QueueLogRecord, QueueTicketRef, SectionRecord, ShardTake,
};
use tessera_fdb_schema::{Keyspace, SeatState, SeatStatus};
use tessera_store::{Bytes, RangeRequest, Store, Transaction, TrxError, decode_i64, run};

use crate::{Inventory, InventoryError, TrxResult, add_i64, corrupt, fail, outbox, request_hash};

/// Immutable parts of events (sections, pools), decoded once per process, and the last
/// decoded event record per event (reused while its bytes are unchanged).
#[derive(Debug, Default)]
pub(crate) struct Cache {
    /// Per event, so that a lookup borrows its ids instead of building a key.
    sections: RwLock<HashMap<EventId, HashMap<SectionId, Arc<SectionRecord>>>>,
    pools: RwLock<HashMap<EventId, HashMap<PoolId, Arc<PoolRecord>>>>,
    events: RwLock<HashMap<EventId, (Bytes, Arc<EventRecord>)>>,
}

fn cache() -> &'static Cache {
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    CACHE.get_or_init(Cache::default)
}

pub(crate) async fn read_event<T: Transaction>(
    trx: &T,
    keys: &Keyspace,
    event_id: &EventId,
    snapshot: bool,
) -> TrxResult<Arc<EventRecord>> {
    let Some(bytes) = trx.get(&keys.event(event_id), snapshot).await? else {
        return fail(InventoryError::UnknownEvent(event_id.clone()));
    };
    if let Some((b, rec)) = cache().events.read().get(event_id) {
        // The store hands out shared buffers: the same value is usually the same buffer.
        if (b.as_ptr() == bytes.as_ptr() && b.len() == bytes.len()) || *b == bytes {
            return Ok(rec.clone());
        }
    }
    let rec: EventRecord = match values::decode(&bytes) {
        Ok(r) => r,
        Err(e) => return corrupt(e),
    };
    let rec = Arc::new(rec);
    cache().events.write().insert(event_id.clone(), (bytes, rec.clone()));
    Ok(rec)
}

pub(crate) async fn read_section<T: Transaction>(
    trx: &T,
    keys: &Keyspace,
    event_id: &EventId,
    section: &SectionId,
) -> TrxResult<Arc<SectionRecord>> {
    if let Some(s) = cache().sections.read().get(event_id).and_then(|m| m.get(section)) {
        return Ok(s.clone());
    }
    let Some(bytes) = trx.get(&keys.section(event_id, section), true).await? else {
        return fail(InventoryError::UnknownSection(section.to_string()));
    };
    let rec: SectionRecord = match values::decode(&bytes) {
        Ok(r) => r,
        Err(e) => return corrupt(e),
    };
    let rec = Arc::new(rec);
    cache()
        .sections
        .write()
        .entry(event_id.clone())
        .or_default()
        .insert(section.clone(), rec.clone());
    Ok(rec)
}

pub(crate) async fn read_pool<T: Transaction>(
    trx: &T,
    keys: &Keyspace,
    event_id: &EventId,
    pool: &PoolId,
) -> TrxResult<Arc<PoolRecord>> {
    if let Some(p) = cache().pools.read().get(event_id).and_then(|m| m.get(pool)) {
        return Ok(p.clone());
    }
    let Some(bytes) = trx.get(&keys.pool(event_id, pool), true).await? else {
        return fail(InventoryError::UnknownPool(pool.clone()));
    };
    let rec: PoolRecord = match values::decode(&bytes) {
        Ok(r) => r,
        Err(e) => return corrupt(e),
    };
    let rec = Arc::new(rec);
    cache().pools.write().entry(event_id.clone()).or_default().insert(pool.clone(), rec.clone());
    Ok(rec)
}

fn price_of(event: &EventRecord, tier: &str) -> u64 {
    event.tiers.iter().find(|t| t.tier_id == tier).map_or(0, |t| t.price_minor)
}

fn decode_seat(bytes: &[u8]) -> TrxResult<SeatState> {
    match SeatState::decode(bytes) {
        Ok(s) => Ok(s),
        Err(e) => corrupt(e),
    }
}

/// Seats chosen for a hold, with their sections (for tallies) and price.
struct Taken {
    seats: Vec<SeatId>,
    pool: Option<PoolId>,
    shard_takes: Vec<ShardTake>,
    amount_minor: u64,
}

pub(crate) fn hold_view(r: &HoldRecord, now_ms: u64) -> Hold {
    into_hold(r.clone(), now_ms)
}

/// The answer for a hold, taking the record's fields (a lapsed active hold reads as
/// expired).
fn into_hold(r: HoldRecord, now_ms: u64) -> Hold {
    let state = if r.state == HoldState::Active && r.expires_at_ms <= now_ms {
        HoldState::Expired
    } else {
        r.state
    };
    Hold {
        hold_id: r.hold_id,
        event_id: r.event_id,
        customer_id: r.customer_id,
        seats: r.seats,
        pool: r.pool,
        quantity: r.quantity,
        state,
        expires_at_ms: r.expires_at_ms,
        amount_minor: r.amount_minor,
        currency: r.currency,
    }
}

/// The waiting room's admission a hold uses: the queue ticket it was issued for, and that
/// ticket's place in queue order. Each admits one hold (invariant 9), recorded in that
/// hold's transaction together with the queue-log entry that tells the admission
/// controller the place was used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub ticket_id: QueueTicketId,
    pub phase: QueuePhase,
    /// Open-phase rank (versionstamp hex).
    pub rank: Option<String>,
}

impl<S: Store> Inventory<S> {
    /// Places a hold for `customer`. With an idempotency key, a retry of the same request
    /// returns the same hold and a different request with the key is refused.
    pub async fn hold(
        &self,
        event_id: &EventId,
        customer: &CustomerId,
        spec: &HoldSpec,
        idempotency_key: Option<&str>,
    ) -> Result<Hold, InventoryError> {
        self.hold_admitted(event_id, customer, spec, idempotency_key, None).await
    }

    /// [`Inventory::hold`] that uses up `admission`: the hold's own transaction reads the
    /// admission's record with a conflict and writes it, so of two holds with one
    /// admission (at once, in any region) one commits and the other is refused
    /// ([`InventoryError::AdmissionUsed`]). A retry with the same idempotency key still
    /// returns the first hold.
    #[tracing::instrument(name = "inventory.hold", skip_all, fields(event_id = %event_id))]
    pub async fn hold_admitted(
        &self,
        event_id: &EventId,
        customer: &CustomerId,
        spec: &HoldSpec,
        idempotency_key: Option<&str>,
        admission: Option<&Admission>,
    ) -> Result<Hold, InventoryError> {
        let started = std::time::Instant::now();
        let hold_id = HoldId::from_random(self.rng.next_u128());
        let req_hash = idempotency_key
            .map(|_| request_hash(&[event_id.as_str(), customer.as_str(), &format!("{spec:?}")]));
        let result = run(&self.store, |trx, maybe_committed| {
            let hold_id = hold_id.clone();
            let req_hash = req_hash.clone();
            async move {
                let now = self.clock.now_ms();
                let idem_key = idempotency_key.map(|k| self.keys.idempotency("hold", customer, k));
                if let (Some(ik), Some(hash)) = (&idem_key, &req_hash)
                    && let Some(bytes) = trx.get(ik, false).await?
                {
                    let rec: IdempotencyRecord = match values::decode(&bytes) {
                        Ok(r) => r,
                        Err(e) => return corrupt(e),
                    };
                    if rec.request_hash != *hash {
                        return fail(InventoryError::IdempotencyConflict);
                    }
                    return match serde_json::from_value::<Hold>(rec.response) {
                        Ok(h) => Ok(h),
                        Err(e) => corrupt(e),
                    };
                }
                if maybe_committed.0 {
                    // The previous attempt may have committed this very hold.
                    if let Some(bytes) = trx.get(&self.keys.hold(&hold_id), false).await? {
                        let rec: HoldRecord = match values::decode(&bytes) {
                            Ok(r) => r,
                            Err(e) => return corrupt(e),
                        };
                        return Ok(hold_view(&rec, now));
                    }
                }
                let admission_key =
                    admission.map(|a| self.keys.admission_use(event_id, &a.ticket_id));
                if let Some(key) = &admission_key
                    && let Some(b) = trx.get(key, false).await?
                {
                    // Released: the admission's window passed unused, or its fan left, and
                    // the place went to the next fan.
                    let released = values::decode::<AdmissionUse>(&b)
                        .is_ok_and(|u| u.state == AdmissionUseState::Released);
                    return fail(if released {
                        InventoryError::AdmissionReleased
                    } else {
                        InventoryError::AdmissionUsed
                    });
                }
                let event = read_event(&trx, &self.keys, event_id, false).await?;
                if !event.state.accepts_holds() {
                    return fail(InventoryError::EventNotOnSale {
                        event: event_id.clone(),
                        state: event.state,
                    });
                }
                let quantity = match spec {
                    HoldSpec::Seats(s) => s.len() as u32,
                    HoldSpec::BestInSection { quantity, .. }
                    | HoldSpec::BestInTier { quantity, .. }
                    | HoldSpec::General { quantity, .. } => *quantity,
                };
                let limit = event.max_tickets_per_customer.min(HOLD_SEATS_MAX);
                if quantity == 0 || quantity > HOLD_SEATS_MAX {
                    return fail(InventoryError::InvalidQuantity { max: limit });
                }
                let tally_key = self.keys.customer_tally(event_id, customer);
                let current =
                    trx.get(&tally_key, false).await?.map_or(0, |b| decode_i64(&b)).max(0) as u32;
                if current + quantity > event.max_tickets_per_customer {
                    return fail(InventoryError::LimitExceeded {
                        limit: event.max_tickets_per_customer,
                        current,
                    });
                }

                let expires_at_ms = now + u64::from(event.hold_ttl_s) * 1000;
                let taken = match spec {
                    HoldSpec::Seats(seats) => self.take_seats(&trx, &event, seats, now).await?,
                    HoldSpec::BestInSection { section, quantity, adjacent, accessible } => {
                        if !event.sections.contains(section) {
                            return fail(InventoryError::UnknownSection(section.to_string()));
                        }
                        self.take_best(
                            &trx,
                            &event,
                            std::slice::from_ref(section),
                            *quantity,
                            *adjacent,
                            *accessible,
                            now,
                        )
                        .await?
                    }
                    HoldSpec::BestInTier { tier, quantity, adjacent, accessible } => {
                        if !event.tiers.iter().any(|t| &t.tier_id == tier) {
                            return fail(InventoryError::UnknownTier(tier.clone()));
                        }
                        let mut in_tier = Vec::new();
                        for s in &event.sections {
                            if read_section(&trx, &self.keys, event_id, s).await?.tier == *tier {
                                in_tier.push(s.clone());
                            }
                        }
                        self.take_best(
                            &trx,
                            &event,
                            &in_tier,
                            *quantity,
                            *adjacent,
                            *accessible,
                            now,
                        )
                        .await?
                    }
                    HoldSpec::General { pool, quantity } => {
                        if !event.pools.contains(pool) {
                            return fail(InventoryError::UnknownPool(pool.clone()));
                        }
                        self.take_general(&trx, &event, pool, *quantity).await?
                    }
                };
                for seat in &taken.seats {
                    trx.set(
                        &self.keys.seat(event_id, seat),
                        &SeatState::held(&hold_id, expires_at_ms).encode(),
                    );
                }
                let mut per_section: HashMap<&SectionId, i64> = HashMap::new();
                for seat in &taken.seats {
                    *per_section.entry(seat.section()).or_default() += 1;
                }
                for (section, n) in per_section {
                    add_i64(&trx, &self.keys.section_tally(event_id, section, Tally::Held), n);
                }
                if let Some(pool) = &taken.pool {
                    add_i64(
                        &trx,
                        &self.keys.pool_tally(event_id, pool, Tally::Held),
                        i64::from(quantity),
                    );
                }
                trx.set(&tally_key, &i64::from(current + quantity).to_le_bytes());
                let record = HoldRecord {
                    v: 1,
                    hold_id: hold_id.clone(),
                    event_id: event_id.clone(),
                    customer_id: customer.clone(),
                    seats: taken.seats,
                    pool: taken.pool,
                    shard_takes: taken.shard_takes,
                    quantity,
                    state: HoldState::Active,
                    expires_at_ms,
                    frozen_remaining_ms: None,
                    amount_minor: taken.amount_minor,
                    currency: event.currency.clone(),
                    created_at_ms: now,
                    order_id: None,
                    expiring_notice_sent: false,
                };
                trx.set(&self.keys.hold(&hold_id), &values::encode(&record));
                trx.set(&self.keys.hold_expiry(expires_at_ms, &hold_id), &[]);
                if let Some(key) = &admission_key {
                    let used = AdmissionUse {
                        v: 1,
                        state: AdmissionUseState::Used,
                        hold_id: Some(hold_id.clone()),
                        customer_id: customer.clone(),
                        used_at_ms: now,
                        released_at_ms: None,
                    };
                    trx.set(key, &values::encode(&used));
                }
                if let Some(a) = admission {
                    let entry = QueueLogRecord {
                        v: 1,
                        at_ms: now,
                        entry: QueueLogEntry::Used {
                            ticket: QueueTicketRef {
                                ticket_id: a.ticket_id.clone(),
                                phase: a.phase,
                                rank: a.rank.clone(),
                            },
                            seats: quantity,
                        },
                    };
                    trx.atomic_op(
                        &self.keys.queue_log_versionstamped(event_id, 0),
                        &values::encode(&entry),
                        tessera_store::MutationType::SetVersionstampedKey,
                    );
                }
                outbox(
                    &trx,
                    &self.keys,
                    &self.config.region,
                    0,
                    event_id,
                    now,
                    BusEventBody::SeatsHeld {
                        hold_id: hold_id.clone(),
                        customer_id: customer.clone(),
                        seats: record.seats.clone(),
                        pool: record.pool.clone(),
                        quantity,
                        expires_at_ms,
                    },
                );
                // The record is not needed any more: the answer takes its fields.
                let hold = into_hold(record, now);
                if let (Some(ik), Some(hash)) = (idem_key, req_hash) {
                    let rec = IdempotencyRecord {
                        v: 1,
                        request_hash: hash,
                        response: serde_json::to_value(&hold).unwrap_or_default(),
                        created_at_ms: now,
                    };
                    trx.set(&ik, &values::encode(&rec));
                }
                Ok(hold)
            }
        })
        .await
        .map_err(InventoryError::from);
        let outcome = match &result {
            Ok(_) => "held",
            Err(e) if e.is_client_error() => "refused",
            Err(_) => "error",
        };
        metrics::counter!("tessera_inventory_holds_total", "outcome" => outcome).increment(1);
        metrics::histogram!("tessera_inventory_hold_seconds")
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// Takes named seats: each must exist and be available.
    async fn take_seats<T: Transaction>(
        &self,
        trx: &T,
        event: &EventRecord,
        seats: &[SeatId],
        now: u64,
    ) -> TrxResult<Taken> {
        // A hold names a handful of seats: comparing them pairwise beats hashing.
        let mut sections = Vec::with_capacity(seats.len());
        for (i, seat) in seats.iter().enumerate() {
            if seats[..i].contains(seat) {
                return fail(InventoryError::DuplicateSeat(seat.clone()));
            }
            match read_section(trx, &self.keys, &event.event_id, seat.section()).await {
                Ok(section) => sections.push(section),
                Err(TrxError::Abort(InventoryError::UnknownSection(_))) => {
                    return fail(InventoryError::UnknownSeat(seat.clone()));
                }
                Err(e) => return Err(e),
            }
        }
        let mut amount = 0;
        for (seat, section) in seats.iter().zip(&sections) {
            let Some(bytes) = trx.get(&self.keys.seat(&event.event_id, seat), false).await? else {
                return fail(InventoryError::UnknownSeat(seat.clone()));
            };
            let state = decode_seat(&bytes)?;
            if !state.is_available(now) {
                return fail(match state.status {
                    SeatStatus::Held => InventoryError::SeatHeld(seat.clone()),
                    _ => InventoryError::SeatSold(seat.clone()),
                });
            }
            amount += price_of(event, &section.tier);
        }
        Ok(Taken {
            seats: seats.to_vec(),
            pool: None,
            shard_takes: Vec::new(),
            amount_minor: amount,
        })
    }

    /// Takes the best available `quantity` seats of the given sections, front rows first;
    /// side by side in one row when `adjacent`. Candidates come from snapshot reads; only
    /// the seats taken join the conflict set. Among equally good windows in a row one is
    /// chosen at random, so concurrent buyers rarely reach for the same seats.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site; a struct would only rename the fields"
    )]
    async fn take_best<T: Transaction>(
        &self,
        trx: &T,
        event: &EventRecord,
        sections: &[SectionId],
        quantity: u32,
        adjacent: bool,
        accessible: bool,
        now: u64,
    ) -> TrxResult<Taken> {
        let q = quantity as usize;
        let mut scattered: Vec<SeatId> = Vec::new();
        for section_id in sections {
            let section = read_section(trx, &self.keys, &event.event_id, section_id).await?;
            for row in &section.rows {
                let (b, e) = self.keys.seats_of_row(&event.event_id, section_id, &row.row);
                let rows = trx.get_range(&RangeRequest::new(b, e), true).await?;
                let mut free: Vec<u16> = Vec::new();
                for (k, v) in &rows {
                    let state = decode_seat(v)?;
                    if !state.is_available(now) {
                        continue;
                    }
                    let (_, seat) = match self.keys.seat_of_key(k) {
                        Ok(s) => s,
                        Err(e) => return corrupt(e),
                    };
                    if accessible && !row.accessible.contains(&seat.number()) {
                        continue;
                    }
                    free.push(seat.number());
                }
                let to_ids = |nums: &[u16]| -> TrxResult<Vec<SeatId>> {
                    nums.iter()
                        .map(|n| SeatId::new(section_id.clone(), &row.row, *n).or_else(corrupt))
                        .collect()
                };
                if adjacent {
                    // Windows of q consecutive seat numbers.
                    let windows: Vec<usize> = (0..free.len().saturating_sub(q - 1))
                        .filter(|&i| {
                            u32::from(free[i + q - 1]) - u32::from(free[i]) == (q - 1) as u32
                        })
                        .collect();
                    if windows.is_empty() {
                        continue;
                    }
                    let pick = windows[self.rng.below(windows.len() as u64) as usize];
                    let seats = to_ids(&free[pick..pick + q])?;
                    return self.take_seats(trx, event, &seats, now).await;
                }
                let need = q - scattered.len();
                scattered.extend(to_ids(&free[..free.len().min(need)])?);
                if scattered.len() == q {
                    return self.take_seats(trx, event, &scattered, now).await;
                }
            }
        }
        if adjacent {
            fail(InventoryError::NotEnoughAdjacent(quantity))
        } else {
            fail(InventoryError::SoldOut { remaining: scattered.len() as u64 })
        }
    }

    /// Takes `quantity` places of a general-admission pool, from shards with room. Usually
    /// one point read: each process walks the shards round-robin, so holds committed in one
    /// batch rarely touch the same shard; only when the chosen shards are full does it read
    /// them all (which also tells how much is left).
    async fn take_general<T: Transaction>(
        &self,
        trx: &T,
        event: &EventRecord,
        pool_id: &PoolId,
        quantity: u32,
    ) -> TrxResult<Taken> {
        static NEXT_SHARD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let pool = read_pool(trx, &self.keys, &event.event_id, pool_id).await?;
        let n = pool.shard_capacity.len();
        let taken_in = |v: Option<Bytes>| v.map_or(0, |b| decode_i64(&b)).max(0) as u32;
        let mut plan: Vec<(usize, u32)> = Vec::new();
        // Fast path: a few shards in turn, by snapshot reads.
        let first = NEXT_SHARD.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as usize;
        for probe in 0..4.min(n) {
            let i = (first + probe * 7919) % n;
            let taken = taken_in(
                trx.get(&self.keys.ga_shard(&event.event_id, pool_id, i as u16), true).await?,
            );
            if pool.shard_capacity[i].saturating_sub(taken) >= quantity {
                plan.push((i, quantity));
                break;
            }
        }
        if plan.is_empty() {
            // Slow path: read every shard, then fit the request over several if need be.
            let (b, e) = self.keys.ga_shards(&event.event_id, pool_id);
            let rows = trx.get_range(&RangeRequest::new(b, e), true).await?;
            let mut taken_by_shard = vec![0u32; n];
            for (k, v) in &rows {
                let shard = match self.keys.ga_shard_of_key(k) {
                    Ok(s) => usize::from(s),
                    Err(e) => return corrupt(e),
                };
                if let Some(slot) = taken_by_shard.get_mut(shard) {
                    *slot = decode_i64(v).max(0) as u32;
                }
            }
            let room = |i: usize| pool.shard_capacity[i].saturating_sub(taken_by_shard[i]);
            let total: u64 = (0..n).map(|i| u64::from(room(i))).sum();
            if total < u64::from(quantity) {
                return fail(InventoryError::SoldOut { remaining: total });
            }
            let start = self.rng.below(n as u64) as usize;
            let mut left = quantity;
            for j in 0..n {
                let i = (start + j) % n;
                let r = room(i);
                if r > 0 && left > 0 {
                    let t = r.min(left);
                    plan.push((i, t));
                    left -= t;
                }
            }
        }
        let mut takes = Vec::new();
        for (i, t) in plan {
            let key = self.keys.ga_shard(&event.event_id, pool_id, i as u16);
            // The read joins the conflict set: two holds on one shard cannot both commit.
            let current = trx.get(&key, false).await?.map_or(0, |b| decode_i64(&b)).max(0) as u32;
            let after = current + t;
            assert!(after <= pool.shard_capacity[i], "general admission shard would oversell");
            trx.set(&key, &i64::from(after).to_le_bytes());
            takes.push(ShardTake { shard: i as u16, quantity: t });
        }
        Ok(Taken {
            seats: Vec::new(),
            pool: Some(pool_id.clone()),
            shard_takes: takes,
            amount_minor: price_of(event, &pool.tier) * u64::from(quantity),
        })
    }
}
