//! The sweeper: ends holds whose time ran out (their seats are already free for readers;
//! this makes it durable, fixes the tallies and tells the other regions), and sends the
//! "about to expire" notice.

use tessera_api::HoldId;
use tessera_api::bus::{BusEventBody, ReleaseReason};
use tessera_api::inventory::HoldState;
use tessera_fdb_schema::values::{self, HoldRecord};
use tessera_store::{RangeRequest, Store, Transaction, run};

use crate::sale::read_hold;
use crate::{Inventory, InventoryError, hold_released, outbox};

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: u64,
    pub notices: u64,
}

/// Holds handled per transaction.
const SWEEP_BATCH: usize = 64;

impl<S: Store> Inventory<S> {
    /// Expires every hold whose deadline passed (up to `limit`), and sends expiry notices.
    #[tracing::instrument(name = "inventory.sweep", skip_all)]
    pub async fn sweep(&self, limit: usize) -> Result<SweepReport, InventoryError> {
        let now = self.clock.now_ms();
        let mut report = SweepReport::default();
        let (b, e) = self.keys.hold_expiries_before(now + 1);
        let due = {
            let trx = self.store.create_trx().map_err(InventoryError::Store)?;
            trx.get_range(&RangeRequest::new(b, e).limit(limit), true)
                .await
                .map_err(InventoryError::Store)?
        };
        let mut holds = Vec::with_capacity(due.len());
        for (k, _) in &due {
            holds.push(self.keys.hold_of_expiry_key(k)?);
        }
        for chunk in holds.chunks(SWEEP_BATCH) {
            report.expired += self.expire_batch(chunk).await?;
        }
        report.notices = self.send_notices(now, limit).await?;
        if report.expired > 0 {
            metrics::counter!("tessera_inventory_expired_holds_total").increment(report.expired);
        }
        Ok(report)
    }

    async fn expire_batch(&self, batch: &[(u64, HoldId)]) -> Result<u64, InventoryError> {
        let n = run(&self.store, |trx, _| async move {
            let now = self.clock.now_ms();
            let mut expired = 0u64;
            let mut n_out = 0u16;
            for (at, hold_id) in batch {
                let index_key = self.keys.hold_expiry(*at, hold_id);
                let mut r = match read_hold(&trx, &self.keys, hold_id).await {
                    Ok(r) => r,
                    Err(tessera_store::TrxError::Abort(InventoryError::UnknownHold(_))) => {
                        trx.clear(&index_key);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let live = matches!(r.state, HoldState::Active | HoldState::PaymentPending);
                if !live || r.expires_at_ms != *at {
                    // A stale index entry (the hold moved on or was rescheduled).
                    trx.clear(&index_key);
                    continue;
                }
                if r.expires_at_ms > now {
                    continue;
                }
                self.free_held(&trx, &r).await?;
                r.state = HoldState::Expired;
                trx.set(&self.keys.hold(hold_id), &values::encode(&r));
                outbox(
                    &trx,
                    &self.keys,
                    &self.config.region,
                    n_out,
                    &r.event_id,
                    now,
                    hold_released(&r, ReleaseReason::Expired),
                );
                n_out += 1;
                expired += 1;
            }
            Ok(expired)
        })
        .await?;
        Ok(n)
    }

    async fn send_notices(&self, now: u64, limit: usize) -> Result<u64, InventoryError> {
        let (_, b) = self.keys.hold_expiries_before(now + 1);
        let (_, e) = self.keys.hold_expiries_before(now + self.config.expiring_notice_ms);
        let soon = {
            let trx = self.store.create_trx().map_err(InventoryError::Store)?;
            trx.get_range(&RangeRequest::new(b, e).limit(limit), true)
                .await
                .map_err(InventoryError::Store)?
        };
        let mut sent = 0;
        for (k, _) in soon {
            let (_, hold_id) = self.keys.hold_of_expiry_key(&k)?;
            let did = run(&self.store, |trx, _| {
                let hold_id = hold_id.clone();
                async move {
                    let mut r: HoldRecord = read_hold(&trx, &self.keys, &hold_id).await?;
                    if r.state != HoldState::Active || r.expiring_notice_sent {
                        return Ok(false);
                    }
                    r.expiring_notice_sent = true;
                    trx.set(&self.keys.hold(&hold_id), &values::encode(&r));
                    outbox(
                        &trx,
                        &self.keys,
                        &self.config.region,
                        0,
                        &r.event_id,
                        now,
                        BusEventBody::HoldExpiring {
                            hold_id: hold_id.clone(),
                            customer_id: r.customer_id.clone(),
                            expires_at_ms: r.expires_at_ms,
                        },
                    );
                    Ok(true)
                }
            })
            .await?;
            sent += u64::from(did);
        }
        Ok(sent)
    }
}
