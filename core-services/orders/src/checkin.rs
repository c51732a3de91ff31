//! Check-in at the gate: each ticket admits exactly once, even when two gates scan it at
//! the same moment (the store lets only one of the two transactions commit).

use tessera_api::orders::CheckinResponse;
use tessera_fdb_schema::values::{self, TicketRecord, TicketState};
use tessera_store::{Store, Transaction, TrxError, run};

use crate::{OrderError, Orders, verify_ticket};

impl<S: Store> Orders<S> {
    /// Admits the ticket in `qr` at `gate`.
    #[tracing::instrument(name = "orders.checkin", skip_all, fields(gate = %gate))]
    pub async fn checkin(&self, qr: &str, gate: &str) -> Result<CheckinResponse, OrderError> {
        let claims =
            verify_ticket(&self.tickets.verifying, qr).map_err(|_| OrderError::TicketInvalid)?;
        // Names this scan across the retries of its transaction.
        let scan_id = format!("{:032x}", self.rng.next_u128());
        let out = run(self.inv.store(), |trx, maybe_committed| {
            let claims = claims.clone();
            let scan_id = scan_id.clone();
            async move {
                let key = self.inv.keys().ticket(&claims.ticket_id);
                let Some(bytes) = trx.get(&key, false).await? else {
                    return Err(TrxError::Abort(OrderError::TicketInvalid));
                };
                let mut rec: TicketRecord = values::decode(&bytes)
                    .map_err(|e| TrxError::Abort(OrderError::Corrupt(e.to_string())))?;
                if rec.state != TicketState::Valid
                    || rec.event_id != claims.event_id
                    || rec.order_id != claims.order_id
                {
                    return Err(TrxError::Abort(OrderError::TicketInvalid));
                }
                if let Some(at) = rec.checked_in_at_ms {
                    let used_gate = rec.gate.clone().unwrap_or_default();
                    // Our own earlier attempt may have committed before its outcome was lost.
                    if maybe_committed.0 && rec.scan_id.as_deref() == Some(scan_id.as_str()) {
                        return Ok(CheckinResponse {
                            ticket_id: rec.ticket_id,
                            event_id: rec.event_id,
                            seat_id: rec.seat,
                            admitted_at_ms: at,
                            gate: used_gate,
                        });
                    }
                    return Err(TrxError::Abort(OrderError::TicketAlreadyUsed { gate: used_gate }));
                }
                let now = self.clock.now_ms();
                rec.checked_in_at_ms = Some(now);
                rec.gate = Some(gate.to_owned());
                rec.scan_id = Some(scan_id);
                trx.set(&key, &values::encode(&rec));
                Ok(CheckinResponse {
                    ticket_id: rec.ticket_id,
                    event_id: rec.event_id,
                    seat_id: rec.seat,
                    admitted_at_ms: now,
                    gate: gate.to_owned(),
                })
            }
        })
        .await?;
        metrics::counter!("tessera_orders_checkins_total").increment(1);
        Ok(out)
    }
}
