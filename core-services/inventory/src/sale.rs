//! A hold's life after placement: read, release, freeze for payment, confirm into a sale,
//! and return sold seats on a refund.

use std::collections::HashMap;

use tessera_api::bus::{BusEventBody, ReleaseReason};
use tessera_api::inventory::{Hold, HoldState};
use tessera_api::{CustomerId, HoldId, OrderId, SectionId};
use tessera_fdb_schema::keys::Tally;
use tessera_fdb_schema::values::{self, HoldRecord};
use tessera_fdb_schema::{SeatState, SeatStatus};
use tessera_store::{Store, Transaction, decode_i64, run};

use crate::holds::{hold_view, read_pool};
use crate::{Inventory, InventoryError, TrxResult, add_i64, corrupt, fail, hold_released, outbox};

pub(crate) async fn read_hold<T: Transaction>(
    trx: &T,
    keys: &tessera_fdb_schema::Keyspace,
    hold_id: &HoldId,
) -> TrxResult<HoldRecord> {
    let Some(bytes) = trx.get(&keys.hold(hold_id), false).await? else {
        return fail(InventoryError::UnknownHold(hold_id.clone()));
    };
    match values::decode(&bytes) {
        Ok(r) => Ok(r),
        Err(e) => corrupt(e),
    }
}

/// What [`Inventory::confirm`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmed {
    /// The seats are now sold to the order.
    Sold(Hold),
    /// An earlier attempt already sold them to this order.
    AlreadySold(Hold),
}

impl<S: Store> Inventory<S> {
    /// Reads a hold. An active hold past its deadline reads as expired even before the
    /// sweeper got to it.
    pub async fn get_hold(&self, hold_id: &HoldId) -> Result<Hold, InventoryError> {
        let trx = self.store.create_trx().map_err(InventoryError::Store)?;
        let bytes = trx
            .get(&self.keys.hold(hold_id), true)
            .await
            .map_err(InventoryError::Store)?
            .ok_or_else(|| InventoryError::UnknownHold(hold_id.clone()))?;
        let record: HoldRecord = values::decode(&bytes)?;
        Ok(hold_view(&record, self.clock.now_ms()))
    }

    /// The stored hold record.
    pub async fn hold_record(&self, hold_id: &HoldId) -> Result<HoldRecord, InventoryError> {
        let trx = self.store.create_trx().map_err(InventoryError::Store)?;
        let bytes = trx
            .get(&self.keys.hold(hold_id), true)
            .await
            .map_err(InventoryError::Store)?
            .ok_or_else(|| InventoryError::UnknownHold(hold_id.clone()))?;
        Ok(values::decode(&bytes)?)
    }

    /// Frees what a hold took (seats it still owns, its pool places), inside `trx`.
    pub(crate) async fn free_held<T: Transaction>(&self, trx: &T, r: &HoldRecord) -> TrxResult<()> {
        let mut per_section: HashMap<SectionId, i64> = HashMap::new();
        for seat in &r.seats {
            let key = self.keys.seat(&r.event_id, seat);
            let Some(bytes) = trx.get(&key, false).await? else {
                return corrupt(format!("seat {seat} of hold {} vanished", r.hold_id));
            };
            let state = match SeatState::decode(&bytes) {
                Ok(s) => s,
                Err(e) => return corrupt(e),
            };
            // A seat a later hold took over (after this one expired) is not ours to free.
            if state.status == SeatStatus::Held && state.owner == r.hold_id.as_str() {
                trx.set(&key, &SeatState::free().encode());
            }
            // The held tally counted this seat for this hold either way.
            *per_section.entry(seat.section().clone()).or_default() += 1;
        }
        for (section, n) in per_section {
            add_i64(trx, &self.keys.section_tally(&r.event_id, &section, Tally::Held), -n);
        }
        if let Some(pool_id) = &r.pool {
            self.give_back_places(trx, r, pool_id).await?;
            add_i64(
                trx,
                &self.keys.pool_tally(&r.event_id, pool_id, Tally::Held),
                -i64::from(r.quantity),
            );
        }
        add_i64(
            trx,
            &self.keys.customer_tally(&r.event_id, &r.customer_id),
            -i64::from(r.quantity),
        );
        trx.clear(&self.keys.hold_expiry(r.expires_at_ms, &r.hold_id));
        Ok(())
    }

    async fn give_back_places<T: Transaction>(
        &self,
        trx: &T,
        r: &HoldRecord,
        pool_id: &tessera_api::PoolId,
    ) -> TrxResult<()> {
        let pool = read_pool(trx, &self.keys, &r.event_id, pool_id).await?;
        for take in &r.shard_takes {
            let key = self.keys.ga_shard(&r.event_id, pool_id, take.shard);
            let current = trx.get(&key, false).await?.map_or(0, |b| decode_i64(&b));
            let after = current - i64::from(take.quantity);
            assert!(after >= 0, "general admission shard went negative");
            assert!(after <= i64::from(pool.shard_capacity[usize::from(take.shard)]));
            trx.set(&key, &after.to_le_bytes());
        }
        Ok(())
    }

    /// Releases a hold its customer no longer wants.
    #[tracing::instrument(name = "inventory.release", skip_all, fields(hold_id = %hold_id))]
    pub async fn release(
        &self,
        hold_id: &HoldId,
        customer: &CustomerId,
    ) -> Result<Hold, InventoryError> {
        let hold =
            run(
                &self.store,
                |trx, _| async move { self.release_trx(&trx, hold_id, customer).await },
            )
            .await?;
        Ok(hold)
    }

    /// [`Self::release`] inside a caller's transaction.
    pub async fn release_trx<T: Transaction>(
        &self,
        trx: &T,
        hold_id: &HoldId,
        customer: &CustomerId,
    ) -> TrxResult<Hold> {
        let now = self.clock.now_ms();
        let mut r = read_hold(trx, &self.keys, hold_id).await?;
        if &r.customer_id != customer {
            return fail(InventoryError::HoldForeign(hold_id.clone()));
        }
        match r.state {
            HoldState::Active if r.expires_at_ms <= now => {
                return fail(InventoryError::HoldExpired(hold_id.clone()));
            }
            HoldState::Active => {}
            HoldState::Released => return Ok(hold_view(&r, now)),
            HoldState::PaymentPending => {
                return fail(InventoryError::HoldPaymentInFlight(hold_id.clone()));
            }
            state => return fail(InventoryError::HoldNotActive { hold: hold_id.clone(), state }),
        }
        self.free_held(trx, &r).await?;
        r.state = HoldState::Released;
        trx.set(&self.keys.hold(hold_id), &values::encode(&r));
        outbox(
            trx,
            &self.keys,
            &self.config.region,
            0,
            &r.event_id,
            now,
            hold_released(&r, ReleaseReason::Released),
        );
        Ok(hold_view(&r, now))
    }

    /// Freezes a hold's timer while its payment is in flight. The seats stay held for at
    /// most the payment window; a payment that outlives it is refunded.
    #[tracing::instrument(name = "inventory.freeze", skip_all, fields(hold_id = %hold_id))]
    pub async fn freeze(
        &self,
        hold_id: &HoldId,
        customer: &CustomerId,
    ) -> Result<Hold, InventoryError> {
        let hold =
            run(
                &self.store,
                |trx, _| async move { self.freeze_trx(&trx, hold_id, customer).await },
            )
            .await?;
        Ok(hold)
    }

    /// [`Self::freeze`] inside a caller's transaction.
    pub async fn freeze_trx<T: Transaction>(
        &self,
        trx: &T,
        hold_id: &HoldId,
        customer: &CustomerId,
    ) -> TrxResult<Hold> {
        let now = self.clock.now_ms();
        let mut r = read_hold(trx, &self.keys, hold_id).await?;
        if &r.customer_id != customer {
            return fail(InventoryError::HoldForeign(hold_id.clone()));
        }
        match r.state {
            HoldState::PaymentPending => return Ok(hold_view(&r, now)),
            HoldState::Active if r.expires_at_ms > now => {}
            HoldState::Active | HoldState::Expired => {
                return fail(InventoryError::HoldExpired(hold_id.clone()));
            }
            state => return fail(InventoryError::HoldNotActive { hold: hold_id.clone(), state }),
        }
        let deadline = now + self.config.payment_window_ms;
        for seat in &r.seats {
            let key = self.keys.seat(&r.event_id, seat);
            let Some(bytes) = trx.get(&key, false).await? else {
                return corrupt(format!("seat {seat} vanished"));
            };
            let mut state = match SeatState::decode(&bytes) {
                Ok(s) => s,
                Err(e) => return corrupt(e),
            };
            assert!(state.is_held_by(hold_id, now), "an unexpired hold lost its seat");
            state.frozen = true;
            state.expires_at_ms = deadline;
            trx.set(&key, &state.encode());
        }
        trx.clear(&self.keys.hold_expiry(r.expires_at_ms, hold_id));
        trx.set(&self.keys.hold_expiry(deadline, hold_id), &[]);
        r.frozen_remaining_ms = Some(r.expires_at_ms - now);
        r.expires_at_ms = deadline;
        r.state = HoldState::PaymentPending;
        trx.set(&self.keys.hold(hold_id), &values::encode(&r));
        Ok(hold_view(&r, now))
    }

    /// Resumes a frozen hold's timer after a payment definitively failed (nothing was
    /// charged), so the fan can try again before it runs out.
    #[tracing::instrument(name = "inventory.unfreeze", skip_all, fields(hold_id = %hold_id))]
    pub async fn unfreeze(&self, hold_id: &HoldId) -> Result<Hold, InventoryError> {
        let hold = run(&self.store, |trx, _| async move { self.unfreeze_trx(&trx, hold_id).await })
            .await?;
        Ok(hold)
    }

    /// [`Self::unfreeze`] inside a caller's transaction.
    pub async fn unfreeze_trx<T: Transaction>(&self, trx: &T, hold_id: &HoldId) -> TrxResult<Hold> {
        let now = self.clock.now_ms();
        let mut r = read_hold(trx, &self.keys, hold_id).await?;
        if r.state != HoldState::PaymentPending {
            return Ok(hold_view(&r, now));
        }
        let remaining = r.frozen_remaining_ms.unwrap_or(0).max(30_000);
        let deadline = now + remaining;
        let mut lost = false;
        for seat in &r.seats {
            let key = self.keys.seat(&r.event_id, seat);
            let Some(bytes) = trx.get(&key, false).await? else {
                return corrupt(format!("seat {seat} vanished"));
            };
            let mut state = match SeatState::decode(&bytes) {
                Ok(s) => s,
                Err(e) => return corrupt(e),
            };
            if state.status == SeatStatus::Held && state.owner == hold_id.as_str() {
                state.frozen = false;
                state.expires_at_ms = deadline;
                trx.set(&key, &state.encode());
            } else {
                lost = true;
            }
        }
        trx.clear(&self.keys.hold_expiry(r.expires_at_ms, hold_id));
        r.frozen_remaining_ms = None;
        if lost {
            // The payment window ran out and seats went to someone else: give back the
            // rest and end the hold.
            self.free_held(trx, &r).await?;
            r.state = HoldState::Expired;
            outbox(
                trx,
                &self.keys,
                &self.config.region,
                0,
                &r.event_id,
                now,
                hold_released(&r, ReleaseReason::Expired),
            );
        } else {
            r.expires_at_ms = deadline;
            r.state = HoldState::Active;
            trx.set(&self.keys.hold_expiry(deadline, hold_id), &[]);
        }
        trx.set(&self.keys.hold(hold_id), &values::encode(&r));
        Ok(hold_view(&r, now))
    }

    /// Turns a hold into a sale for `order_id`. Idempotent: confirming again for the same
    /// order reports [`Confirmed::AlreadySold`]. Refused (`HoldExpired`) if any seat is no
    /// longer the hold's — the caller then refunds the payment.
    #[tracing::instrument(name = "inventory.confirm", skip_all, fields(hold_id = %hold_id))]
    pub async fn confirm(
        &self,
        hold_id: &HoldId,
        order_id: &OrderId,
    ) -> Result<Confirmed, InventoryError> {
        let out =
            run(
                &self.store,
                |trx, _| async move { self.confirm_trx(&trx, hold_id, order_id).await },
            )
            .await?;
        metrics::counter!("tessera_inventory_sales_total").increment(1);
        Ok(out)
    }

    /// [`Self::confirm`] inside a caller's transaction.
    pub async fn confirm_trx<T: Transaction>(
        &self,
        trx: &T,
        hold_id: &HoldId,
        order_id: &OrderId,
    ) -> TrxResult<Confirmed> {
        let now = self.clock.now_ms();
        let mut r = read_hold(trx, &self.keys, hold_id).await?;
        match r.state {
            HoldState::Confirmed if r.order_id.as_ref() == Some(order_id) => {
                return Ok(Confirmed::AlreadySold(hold_view(&r, now)));
            }
            HoldState::PaymentPending => {}
            HoldState::Active if r.expires_at_ms > now => {}
            HoldState::Active | HoldState::Expired => {
                return fail(InventoryError::HoldExpired(hold_id.clone()));
            }
            state => return fail(InventoryError::HoldNotActive { hold: hold_id.clone(), state }),
        }
        let mut per_section: HashMap<SectionId, i64> = HashMap::new();
        let mut writes = Vec::with_capacity(r.seats.len());
        for seat in &r.seats {
            let key = self.keys.seat(&r.event_id, seat);
            let Some(bytes) = trx.get(&key, false).await? else {
                return corrupt(format!("seat {seat} vanished"));
            };
            let state = match SeatState::decode(&bytes) {
                Ok(s) => s,
                Err(e) => return corrupt(e),
            };
            if !(state.status == SeatStatus::Held && state.owner == hold_id.as_str()) {
                return fail(InventoryError::HoldExpired(hold_id.clone()));
            }
            writes.push(key);
            *per_section.entry(seat.section().clone()).or_default() += 1;
        }
        let sold = SeatState::sold(order_id).encode();
        for key in writes {
            trx.set(&key, &sold);
        }
        for (section, n) in per_section {
            add_i64(trx, &self.keys.section_tally(&r.event_id, &section, Tally::Held), -n);
            add_i64(trx, &self.keys.section_tally(&r.event_id, &section, Tally::Sold), n);
        }
        if let Some(pool) = &r.pool {
            let q = i64::from(r.quantity);
            add_i64(trx, &self.keys.pool_tally(&r.event_id, pool, Tally::Held), -q);
            add_i64(trx, &self.keys.pool_tally(&r.event_id, pool, Tally::Sold), q);
        }
        trx.clear(&self.keys.hold_expiry(r.expires_at_ms, hold_id));
        r.state = HoldState::Confirmed;
        r.order_id = Some(order_id.clone());
        r.frozen_remaining_ms = None;
        trx.set(&self.keys.hold(hold_id), &values::encode(&r));
        outbox(
            trx,
            &self.keys,
            &self.config.region,
            0,
            &r.event_id,
            now,
            BusEventBody::SeatsSold {
                order_id: order_id.clone(),
                hold_id: hold_id.clone(),
                customer_id: r.customer_id.clone(),
                seats: r.seats.clone(),
                pool: r.pool.clone(),
                quantity: r.quantity,
            },
        );
        Ok(Confirmed::Sold(hold_view(&r, now)))
    }

    /// Returns the seats of a refunded or cancelled order to sale. Idempotent.
    #[tracing::instrument(name = "inventory.return_seats", skip_all, fields(hold_id = %hold_id))]
    pub async fn return_seats(
        &self,
        hold_id: &HoldId,
        order_id: &OrderId,
    ) -> Result<Hold, InventoryError> {
        let hold = run(&self.store, |trx, _| async move {
            self.return_seats_trx(&trx, hold_id, order_id).await
        })
        .await?;
        Ok(hold)
    }

    /// [`Self::return_seats`] inside a caller's transaction.
    pub async fn return_seats_trx<T: Transaction>(
        &self,
        trx: &T,
        hold_id: &HoldId,
        order_id: &OrderId,
    ) -> TrxResult<Hold> {
        let now = self.clock.now_ms();
        let mut r = read_hold(trx, &self.keys, hold_id).await?;
        if r.order_id.as_ref() != Some(order_id) {
            return fail(InventoryError::HoldNotActive { hold: hold_id.clone(), state: r.state });
        }
        match r.state {
            HoldState::Released => return Ok(hold_view(&r, now)),
            HoldState::Confirmed => {}
            state => return fail(InventoryError::HoldNotActive { hold: hold_id.clone(), state }),
        }
        let mut per_section: HashMap<SectionId, i64> = HashMap::new();
        for seat in &r.seats {
            let key = self.keys.seat(&r.event_id, seat);
            let Some(bytes) = trx.get(&key, false).await? else {
                return corrupt(format!("seat {seat} vanished"));
            };
            let state = match SeatState::decode(&bytes) {
                Ok(s) => s,
                Err(e) => return corrupt(e),
            };
            assert!(
                state.status == SeatStatus::Sold && state.owner == order_id.as_str(),
                "a sold seat changed owner"
            );
            trx.set(&key, &SeatState::free().encode());
            *per_section.entry(seat.section().clone()).or_default() += 1;
        }
        for (section, n) in per_section {
            add_i64(trx, &self.keys.section_tally(&r.event_id, &section, Tally::Sold), -n);
        }
        if let Some(pool_id) = &r.pool {
            self.give_back_places(trx, &r, pool_id).await?;
            add_i64(
                trx,
                &self.keys.pool_tally(&r.event_id, pool_id, Tally::Sold),
                -i64::from(r.quantity),
            );
        }
        add_i64(
            trx,
            &self.keys.customer_tally(&r.event_id, &r.customer_id),
            -i64::from(r.quantity),
        );
        r.state = HoldState::Released;
        trx.set(&self.keys.hold(hold_id), &values::encode(&r));
        outbox(
            trx,
            &self.keys,
            &self.config.region,
            0,
            &r.event_id,
            now,
            BusEventBody::SeatsReturned {
                order_id: order_id.clone(),
                seats: r.seats.clone(),
                pool: r.pool.clone(),
                quantity: r.quantity,
            },
        );
        Ok(hold_view(&r, now))
    }
}
