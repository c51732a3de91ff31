//! The checkout saga and its reconciler.

use std::future::Future;
use std::time::Duration;

use backon::Retryable as _;
use tessera_api::bus::BusEventBody;
use tessera_api::orders::{CheckoutRequest, Order, OrderList, OrderState};
use tessera_api::{CustomerId, HoldId, OrderId, TicketId};
use tessera_common::retry::Backoff;
use tessera_fdb_schema::values::{
    self, HoldRecord, IdempotencyRecord, OrderRecord, SagaStep, TicketRecord, TicketState,
};
use tessera_inventory::{Confirmed, InventoryError, TrxResult, write_outbox};
use tessera_payments::{AuthorizeRequest, IdempotencyKey, PaymentError, PaymentStatus};
use tessera_store::{RangeRequest, Store, Transaction, TrxError, run};

use crate::{OrderError, Orders};

type OrderTrx<T> = Result<T, TrxError<OrderError>>;

fn abort<T>(e: OrderError) -> OrderTrx<T> {
    Err(TrxError::Abort(e))
}

/// Lifts an inventory transaction result into an orders one.
fn inv<T>(r: TrxResult<T>) -> OrderTrx<T> {
    r.map_err(|e| match e {
        TrxError::Store(s) => TrxError::Store(s),
        TrxError::Abort(e) => TrxError::Abort(OrderError::from(e)),
    })
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> OrderTrx<T> {
    values::decode(bytes).map_err(|e| TrxError::Abort(OrderError::Corrupt(e.to_string())))
}

/// What one reconciliation pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub examined: u64,
    pub driven: u64,
    pub settled: u64,
}

/// What the provider says about an authorization whose answer was lost.
enum Truth {
    Authorized(String),
    Refused(Option<String>, String),
    Unknown,
}

/// The outcome of one provider step that the saga records.
enum StepOutcome {
    /// Go on to the next step.
    Advanced,
    /// The outcome is unknown for now; leave the order to the reconciler.
    Pending,
}

impl<S: Store> Orders<S> {
    async fn read_order_trx<T: Transaction>(
        &self,
        trx: &T,
        order_id: &OrderId,
    ) -> OrderTrx<OrderRecord> {
        let Some(bytes) = trx.get(&self.inv.keys().order(order_id), false).await? else {
            return abort(OrderError::UnknownOrder(order_id.clone()));
        };
        decode(&bytes)
    }

    /// Reads an order as stored.
    pub async fn order_record(&self, order_id: &OrderId) -> Result<OrderRecord, OrderError> {
        let trx = self.inv.store().create_trx().map_err(OrderError::Store)?;
        let bytes = trx
            .get(&self.inv.keys().order(order_id), true)
            .await
            .map_err(OrderError::Store)?
            .ok_or_else(|| OrderError::UnknownOrder(order_id.clone()))?;
        Ok(values::decode(&bytes)?)
    }

    /// A fan's own order (someone else's reads as unknown).
    pub async fn get_order(
        &self,
        order_id: &OrderId,
        customer: &CustomerId,
    ) -> Result<Order, OrderError> {
        let r = self.order_record(order_id).await?;
        if &r.customer_id != customer {
            return Err(OrderError::UnknownOrder(order_id.clone()));
        }
        Ok(self.view(&r))
    }

    /// Every order of a fan, newest last.
    pub async fn list_orders(&self, customer: &CustomerId) -> Result<OrderList, OrderError> {
        let trx = self.inv.store().create_trx().map_err(OrderError::Store)?;
        let (b, e) = self.inv.keys().customer_orders(customer);
        let rows =
            trx.get_range(&RangeRequest::new(b, e), true).await.map_err(OrderError::Store)?;
        let mut orders = Vec::with_capacity(rows.len());
        for (k, _) in rows {
            let id = self.inv.keys().order_of_customer_key(&k)?;
            if let Some(bytes) =
                trx.get(&self.inv.keys().order(&id), true).await.map_err(OrderError::Store)?
            {
                let r: OrderRecord = values::decode(&bytes)?;
                orders.push(self.view(&r));
            }
        }
        orders.sort_by_key(|o| o.created_at_ms);
        Ok(OrderList { orders })
    }

    /// Checks out a hold: creates the order (freezing the hold's timer) and drives the saga
    /// as far as it goes now. Repeating the request with the same idempotency key returns
    /// the same order; reusing the key for another request is refused.
    #[tracing::instrument(name = "orders.checkout", skip_all, fields(hold_id = %req.hold_id))]
    pub async fn checkout(
        &self,
        customer: &CustomerId,
        req: &CheckoutRequest,
        idempotency_key: &IdempotencyKey,
    ) -> Result<Order, OrderError> {
        let started = std::time::Instant::now();
        let hash = crate::tickets::hash_parts(&[
            customer.as_str(),
            req.hold_id.as_str(),
            &req.payment_method,
            req.email.as_deref().unwrap_or(""),
        ]);
        let new_id = OrderId::from_random(self.rng.next_u128());
        let order_id = run(self.inv.store(), |trx, _| {
            let hash = hash.clone();
            let new_id = new_id.clone();
            async move { self.start_trx(&trx, customer, req, idempotency_key, &hash, &new_id).await }
        })
        .await?;
        let record = self.drive(&order_id).await?;
        metrics::histogram!("tessera_orders_checkout_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("tessera_orders_checkouts_total", "state" => state_label(record.state))
            .increment(1);
        if record.state == OrderState::Failed
            && record.failure_code.as_deref().is_some_and(is_decline_code)
        {
            return Err(OrderError::PaymentDeclined {
                order_id: record.order_id.clone(),
                code: record.failure_code.clone().unwrap_or_default(),
            });
        }
        Ok(self.view(&record))
    }

    async fn start_trx<T: Transaction>(
        &self,
        trx: &T,
        customer: &CustomerId,
        req: &CheckoutRequest,
        key: &IdempotencyKey,
        hash: &str,
        new_id: &OrderId,
    ) -> OrderTrx<OrderId> {
        let keys = self.inv.keys();
        let now = self.clock.now_ms();
        let idem = keys.idempotency("checkout", customer, key.as_str());
        if let Some(bytes) = trx.get(&idem, false).await? {
            let rec: IdempotencyRecord = decode(&bytes)?;
            if rec.request_hash != hash {
                return abort(OrderError::IdempotencyConflict);
            }
            let id = rec.response.get("order_id").and_then(|v| v.as_str()).unwrap_or_default();
            return match OrderId::parse(id) {
                Ok(id) => Ok(id),
                Err(e) => abort(OrderError::Corrupt(e.to_string())),
            };
        }
        let Some(hold_bytes) = trx.get(&keys.hold(&req.hold_id), false).await? else {
            return abort(OrderError::Inventory(InventoryError::UnknownHold(req.hold_id.clone())));
        };
        let hold: HoldRecord = decode(&hold_bytes)?;
        if &hold.customer_id != customer {
            return abort(OrderError::Inventory(InventoryError::HoldForeign(req.hold_id.clone())));
        }
        if let Some(existing) = trx.get(&keys.hold_order(&req.hold_id), false).await? {
            let existing = String::from_utf8_lossy(&existing).into_owned();
            if let Ok(existing) = OrderId::parse(&existing) {
                let prev = self.read_order_trx(trx, &existing).await?;
                if prev.state != OrderState::Failed {
                    return abort(OrderError::CheckoutInProgress(existing));
                }
            }
        }
        inv(self.inv.freeze_trx(trx, &req.hold_id, customer).await)?;
        let record = OrderRecord {
            v: 1,
            order_id: new_id.clone(),
            hold_id: hold.hold_id.clone(),
            event_id: hold.event_id.clone(),
            customer_id: customer.clone(),
            seats: hold.seats.clone(),
            pool: hold.pool.clone(),
            quantity: hold.quantity,
            amount_minor: hold.amount_minor,
            currency: hold.currency.clone(),
            state: OrderState::PaymentPending,
            step: SagaStep::Authorizing,
            payment_id: None,
            payment_method: req.payment_method.clone(),
            idempotency_key: key.as_str().to_owned(),
            // Provider calls derive their keys from this: the fan's key scoped to the fan,
            // so no two fans' keys meet at the provider.
            provider_key: Some(key.scoped_to(customer).as_str().to_owned()),
            email: req.email.clone(),
            failure_code: None,
            tickets: Vec::new(),
            created_at_ms: now,
            updated_at_ms: now,
            lease_holder: Some(self.config.driver.clone()),
            lease_until_ms: now + self.config.lease_ms,
            attempts: 0,
        };
        trx.set(&keys.order(new_id), &values::encode(&record));
        trx.set(&keys.hold_order(&req.hold_id), new_id.as_str().as_bytes());
        trx.set(&keys.customer_order(customer, new_id), &[]);
        trx.set(&keys.pending_order(new_id), &[]);
        let rec = IdempotencyRecord {
            v: 1,
            request_hash: hash.to_owned(),
            response: serde_json::json!({ "order_id": new_id.as_str() }),
            created_at_ms: now,
        };
        trx.set(&idem, &values::encode(&rec));
        Ok(new_id.clone())
    }

    /// Moves an order from step `from` with `f`; returns the new record, or the current one
    /// unchanged if another driver moved it first.
    async fn transition<F, Fut>(
        &self,
        order_id: &OrderId,
        from: SagaStep,
        f: F,
    ) -> Result<OrderRecord, OrderError>
    where
        F: Fn(S::Trx, OrderRecord) -> Fut,
        Fut: Future<Output = OrderTrx<OrderRecord>>,
    {
        let out = run(self.inv.store(), |trx, _| {
            let f = &f;
            async move {
                let r = self.read_order_trx(&trx, order_id).await?;
                if r.step != from {
                    return Ok(r);
                }
                let mut next = f(trx.clone(), r).await?;
                let now = self.clock.now_ms();
                next.updated_at_ms = now;
                next.lease_holder = Some(self.config.driver.clone());
                next.lease_until_ms = now + self.config.lease_ms;
                if next.step == SagaStep::Done {
                    trx.clear(&self.inv.keys().pending_order(order_id));
                }
                trx.set(&self.inv.keys().order(order_id), &values::encode(&next));
                Ok(next)
            }
        })
        .await?;
        Ok(out)
    }

    /// Runs one provider call, repeating it with the same key while the outcome is unknown.
    async fn with_retries<T, F, Fut>(
        &self,
        step: &'static str,
        mut call: F,
    ) -> Result<T, PaymentError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, PaymentError>>,
    {
        // The platform's retry policy: steps of 100 ms, 200 ms, 400 ms, … (each wait in
        // the upper half of its step), jitter seeded from the service's randomness so a
        // seeded simulation replays the same schedule.
        let policy = Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
            .with_retries(self.config.provider_attempts.saturating_sub(1) as usize)
            .builder(Some(self.rng.next_u64()));
        let attempt = move || {
            let call = call();
            async move {
                let result = call.await;
                let label = match &result {
                    Ok(_) => "ok",
                    Err(e) => e.label(),
                };
                metrics::counter!("tessera_orders_provider_calls_total", "step" => step, "outcome" => label).increment(1);
                result
            }
        };
        attempt
            .retry(policy)
            .sleep(tokio::time::sleep)
            .when(PaymentError::is_retryable)
            .notify(|e, delay| {
                tracing::debug!(step, ?delay, "provider outcome unknown, repeating: {e}");
            })
            .await
    }

    /// Drives an order's saga as far as it can go now. Safe to call from several places at
    /// once; each step happens once.
    #[tracing::instrument(name = "orders.drive", skip_all, fields(order_id = %order_id))]
    pub async fn drive(&self, order_id: &OrderId) -> Result<OrderRecord, OrderError> {
        for _ in 0..16 {
            let r = self.order_record(order_id).await?;
            let key = match IdempotencyKey::new(
                r.provider_key.clone().unwrap_or_else(|| r.idempotency_key.clone()),
            ) {
                Ok(k) => k,
                Err(e) => return Err(OrderError::Corrupt(e.to_string())),
            };
            let outcome = match r.step {
                SagaStep::Done => return Ok(r),
                SagaStep::Authorizing => self.authorize_step(&r, &key).await?,
                SagaStep::Authorized => self.confirm_step(&r).await?,
                SagaStep::Capturing => self.capture_step(&r, &key).await?,
                SagaStep::Voiding => self.void_step(&r, &key).await?,
                SagaStep::Refunding => self.refund_step(&r, &key).await?,
            };
            if let StepOutcome::Pending = outcome {
                return self.order_record(order_id).await;
            }
        }
        self.order_record(order_id).await
    }

    async fn authorize_step(
        &self,
        r: &OrderRecord,
        key: &IdempotencyKey,
    ) -> Result<StepOutcome, OrderError> {
        let req = AuthorizeRequest {
            order_id: r.order_id.clone(),
            customer_id: r.customer_id.clone(),
            amount_minor: r.amount_minor,
            currency: r.currency.clone(),
            payment_method: r.payment_method.clone(),
            description: Some(format!("Tessera order {}", r.order_id)),
        };
        let akey = key.derive("authorize");
        let result = self.with_retries("authorize", || self.provider.authorize(&req, &akey)).await;
        let failure = match result {
            Ok(p) if p.status == PaymentStatus::RequiresCapture => {
                let payment_id = p.id.clone();
                self.transition(&r.order_id, SagaStep::Authorizing, |_, mut o| {
                    let payment_id = payment_id.clone();
                    async move {
                        o.payment_id = Some(payment_id);
                        o.step = SagaStep::Authorized;
                        Ok(o)
                    }
                })
                .await?;
                return Ok(StepOutcome::Advanced);
            }
            Ok(p) if p.status == PaymentStatus::Succeeded => {
                // Captured without our asking (never with manual capture): keep the money
                // only if the seats can be confirmed, which the next steps decide.
                let payment_id = p.id.clone();
                self.transition(&r.order_id, SagaStep::Authorizing, |_, mut o| {
                    let payment_id = payment_id.clone();
                    async move {
                        o.payment_id = Some(payment_id);
                        o.step = SagaStep::Authorized;
                        Ok(o)
                    }
                })
                .await?;
                return Ok(StepOutcome::Advanced);
            }
            Ok(p) => (
                Some(p.id.clone()),
                p.last_error_code
                    .clone()
                    .unwrap_or_else(|| format!("payment_{}", p.status.as_str())),
            ),
            Err(PaymentError::Declined { code, payment_id, .. }) => (payment_id, code),
            Err(e) if e.is_retryable() => match self.authorization_truth(r).await {
                Truth::Authorized(payment_id) => {
                    self.transition(&r.order_id, SagaStep::Authorizing, |_, mut o| {
                        let payment_id = payment_id.clone();
                        async move {
                            o.payment_id = Some(payment_id);
                            o.step = SagaStep::Authorized;
                            Ok(o)
                        }
                    })
                    .await?;
                    return Ok(StepOutcome::Advanced);
                }
                Truth::Refused(payment_id, code) => (payment_id, code),
                Truth::Unknown => {
                    tracing::warn!(order_id = %r.order_id, "authorization outcome unknown; the reconciler will settle it: {e}");
                    return Ok(StepOutcome::Pending);
                }
            },
            Err(e) => (None, format!("payment_{}", e.label())),
        };
        // A definitive "no": nothing was charged. The hold's timer resumes.
        let (payment_id, code) = failure;
        if let Some(pid) = &payment_id
            && code.contains("requires_action")
        {
            // Nothing is held in that state; void it so it cannot be completed later.
            let _ = self.provider.cancel(pid, &key.derive("void-unfinished")).await;
        }
        self.transition(&r.order_id, SagaStep::Authorizing, |trx, mut o| {
            let (payment_id, code) = (payment_id.clone(), code.clone());
            async move {
                inv(self.inv.unfreeze_trx(&trx, &o.hold_id).await)?;
                if payment_id.is_some() {
                    o.payment_id = payment_id;
                }
                o.state = OrderState::Failed;
                o.step = SagaStep::Done;
                o.failure_code = Some(code.clone());
                self.outbox(
                    &trx,
                    &o,
                    BusEventBody::OrderFailed {
                        order_id: o.order_id.clone(),
                        customer_id: o.customer_id.clone(),
                        code,
                    },
                );
                Ok(o)
            }
        })
        .await?;
        Ok(StepOutcome::Advanced)
    }

    /// Looks the order's payment up at the provider (by the order id in its metadata).
    async fn authorization_truth(&self, r: &OrderRecord) -> Truth {
        let payments = match self.provider.find_by_order(&r.order_id).await {
            Ok(p) => p,
            Err(_) => return Truth::Unknown,
        };
        if let Some(p) = payments.iter().find(|p| p.status.holds_funds()) {
            return Truth::Authorized(p.id.clone());
        }
        if let Some(p) = payments.first() {
            return match p.status {
                PaymentStatus::RequiresPaymentMethod | PaymentStatus::Canceled => {
                    let code = p
                        .last_error_code
                        .clone()
                        .unwrap_or_else(|| format!("payment_{}", p.status.as_str()));
                    Truth::Refused(Some(p.id.clone()), code)
                }
                // The card wants a step this checkout cannot take (3-D Secure): nothing is
                // held; the payment is voided on the way out.
                PaymentStatus::RequiresAction | PaymentStatus::RequiresConfirmation => {
                    Truth::Refused(Some(p.id.clone()), "payment_requires_action".into())
                }
                _ => Truth::Unknown,
            };
        }
        // No payment exists yet. Nothing is concluded from time: a request of ours may still
        // be on its way and land later. Every attempt repeats the authorization under the
        // same idempotency key, so the next one that gets an answer either finds that
        // request's payment or makes it now; either way the order then settles normally
        // (and a payment that arrives after the hold ran out is voided).
        Truth::Unknown
    }

    async fn confirm_step(&self, r: &OrderRecord) -> Result<StepOutcome, OrderError> {
        self.transition(&r.order_id, SagaStep::Authorized, |trx, mut o| async move {
            match self.inv.confirm_trx(&trx, &o.hold_id, &o.order_id).await {
                Ok(Confirmed::Sold(_) | Confirmed::AlreadySold(_)) => {
                    o.step = SagaStep::Capturing;
                }
                Err(TrxError::Abort(
                    e @ (InventoryError::HoldExpired(_) | InventoryError::HoldNotActive { .. }),
                )) => {
                    // The seats are gone: give the money back untouched.
                    tracing::info!(order_id = %o.order_id, "seats lost before confirmation, voiding: {e}");
                    o.step = SagaStep::Voiding;
                    o.failure_code = Some("hold_expired".into());
                }
                Err(e) => return inv(Err(e)),
            }
            Ok(o)
        })
        .await?;
        Ok(StepOutcome::Advanced)
    }

    async fn capture_step(
        &self,
        r: &OrderRecord,
        key: &IdempotencyKey,
    ) -> Result<StepOutcome, OrderError> {
        let Some(payment_id) = r.payment_id.clone() else {
            return Err(OrderError::Corrupt(format!(
                "order {} captures without a payment",
                r.order_id
            )));
        };
        // A new key per reconciliation attempt: a provider that saved an error under the old
        // key would replay it forever. Capturing twice is impossible at the provider.
        let ckey = key.derive(&format!("capture-{}", r.attempts));
        let mut result =
            self.with_retries("capture", || self.provider.capture(&payment_id, None, &ckey)).await;
        if let Err(e) = &result {
            // Whatever the call said (an unknown outcome; "wrong state" because an earlier
            // attempt already captured), the provider's record is the truth.
            let unknown = e.is_retryable();
            match self.provider.retrieve(&payment_id).await {
                Ok(p) if p.status == PaymentStatus::Succeeded => result = Ok(p),
                // Not captured yet: try again later with a fresh key.
                Ok(p) if p.status == PaymentStatus::RequiresCapture => {}
                Ok(p) if !unknown => result = Ok(p),
                _ => {}
            }
        }
        match result {
            Ok(p) if p.status == PaymentStatus::Succeeded => {
                self.transition(&r.order_id, SagaStep::Capturing, |trx, mut o| async move {
                    let now = self.clock.now_ms();
                    let n =
                        o.seats.len().max(if o.pool.is_some() { o.quantity as usize } else { 0 });
                    let mut tickets = Vec::with_capacity(n);
                    for i in 0..n {
                        let id = TicketId::from_random(self.rng.next_u128());
                        let rec = TicketRecord {
                            v: 1,
                            ticket_id: id.clone(),
                            order_id: o.order_id.clone(),
                            event_id: o.event_id.clone(),
                            seat: o.seats.get(i).cloned(),
                            pool: if o.seats.is_empty() { o.pool.clone() } else { None },
                            state: TicketState::Valid,
                            issued_at_ms: now,
                            checked_in_at_ms: None,
                            gate: None,
                            scan_id: None,
                        };
                        trx.set(&self.inv.keys().ticket(&id), &values::encode(&rec));
                        tickets.push(id);
                    }
                    o.tickets = tickets;
                    o.state = OrderState::Completed;
                    o.step = SagaStep::Done;
                    self.outbox(
                        &trx,
                        &o,
                        BusEventBody::OrderCompleted {
                            order_id: o.order_id.clone(),
                            customer_id: o.customer_id.clone(),
                            amount_minor: o.amount_minor,
                            currency: o.currency.clone(),
                        },
                    );
                    Ok(o)
                })
                .await?;
                metrics::counter!("tessera_orders_completed_total").increment(1);
                Ok(StepOutcome::Advanced)
            }
            Ok(p)
                if matches!(
                    p.status,
                    PaymentStatus::Canceled | PaymentStatus::RequiresPaymentMethod
                ) =>
            {
                // The provider says the authorization can no longer be captured (it expired
                // or was voided): no money moved, so the seats go back.
                let code = format!("capture_{}", p.status.as_str());
                tracing::warn!(order_id = %r.order_id, code, "capture failed definitively, returning the seats");
                self.transition(&r.order_id, SagaStep::Capturing, |trx, mut o| {
                    let code = code.clone();
                    async move {
                        inv(self.inv.return_seats_trx(&trx, &o.hold_id, &o.order_id).await)?;
                        o.step = SagaStep::Voiding;
                        o.failure_code = Some(code);
                        Ok(o)
                    }
                })
                .await?;
                Ok(StepOutcome::Advanced)
            }
            other => {
                // No positive evidence either way (the answer was lost, the provider could
                // not be asked): try again later, never assume.
                let why = match &other {
                    Ok(p) => format!("payment is {}", p.status.as_str()),
                    Err(e) => e.to_string(),
                };
                if r.attempts >= 20 {
                    tracing::error!(order_id = %r.order_id, attempts = r.attempts, "capture still unsettled: {why}");
                } else {
                    tracing::warn!(order_id = %r.order_id, "capture outcome unknown; the reconciler will settle it: {why}");
                }
                Ok(StepOutcome::Pending)
            }
        }
    }

    async fn void_step(
        &self,
        r: &OrderRecord,
        key: &IdempotencyKey,
    ) -> Result<StepOutcome, OrderError> {
        if let Some(payment_id) = r.payment_id.clone() {
            let vkey = key.derive(&format!("void-{}", r.attempts));
            let answer =
                self.with_retries("void", || self.provider.cancel(&payment_id, &vkey)).await;
            // The order fails only on positive evidence that nothing is held or taken.
            let truth = match answer {
                Ok(p) => Some(p),
                Err(_) => self.provider.retrieve(&payment_id).await.ok(),
            };
            match truth {
                Some(p) if p.net_charged_minor() > 0 => {
                    return self.to_refund(r, "captured_without_seats").await;
                }
                Some(p)
                    if matches!(
                        p.status,
                        PaymentStatus::Canceled | PaymentStatus::RequiresPaymentMethod
                    ) => {}
                Some(p) => {
                    tracing::warn!(order_id = %r.order_id, status = p.status.as_str(), "void not settled yet");
                    return Ok(StepOutcome::Pending);
                }
                None => return Ok(StepOutcome::Pending),
            }
        }
        self.transition(&r.order_id, SagaStep::Voiding, |trx, mut o| async move {
            o.state = OrderState::Failed;
            o.step = SagaStep::Done;
            let code = o.failure_code.clone().unwrap_or_else(|| "voided".into());
            self.outbox(
                &trx,
                &o,
                BusEventBody::OrderFailed {
                    order_id: o.order_id.clone(),
                    customer_id: o.customer_id.clone(),
                    code,
                },
            );
            Ok(o)
        })
        .await?;
        Ok(StepOutcome::Advanced)
    }

    async fn to_refund(&self, r: &OrderRecord, code: &str) -> Result<StepOutcome, OrderError> {
        self.transition(&r.order_id, r.step, |_, mut o| async move {
            o.step = SagaStep::Refunding;
            o.failure_code = Some(code.to_owned());
            Ok(o)
        })
        .await?;
        Ok(StepOutcome::Advanced)
    }

    async fn refund_step(
        &self,
        r: &OrderRecord,
        key: &IdempotencyKey,
    ) -> Result<StepOutcome, OrderError> {
        let Some(payment_id) = r.payment_id.clone() else {
            return Err(OrderError::Corrupt(format!(
                "order {} refunds without a payment",
                r.order_id
            )));
        };
        let rkey = key.derive(&format!("refund-{}", r.attempts));
        match self.with_retries("refund", || self.provider.refund(&payment_id, None, &rkey)).await {
            Ok(refund)
                if matches!(
                    refund.status,
                    tessera_payments::RefundStatus::Failed
                        | tessera_payments::RefundStatus::Canceled
                ) =>
            {
                tracing::warn!(order_id = %r.order_id, "refund did not go through; retrying");
                return Ok(StepOutcome::Pending);
            }
            Ok(_) => {}
            Err(PaymentError::WrongState { .. }) => {
                // Nothing left to refund (refunded before) or never captured.
                match self.provider.retrieve(&payment_id).await {
                    Ok(p) if p.net_charged_minor() == 0 => {}
                    _ => return Ok(StepOutcome::Pending),
                }
            }
            Err(e) if e.is_retryable() => match self.provider.retrieve(&payment_id).await {
                Ok(p) if p.net_charged_minor() == 0 => {}
                _ => return Ok(StepOutcome::Pending),
            },
            Err(e) => {
                tracing::error!(order_id = %r.order_id, "refund failed definitively: {e}");
                return Ok(StepOutcome::Pending);
            }
        }
        self.transition(&r.order_id, SagaStep::Refunding, |trx, mut o| async move {
            if o.state == OrderState::Completed {
                inv(self.inv.return_seats_trx(&trx, &o.hold_id, &o.order_id).await)?;
                for t in &o.tickets {
                    let key = self.inv.keys().ticket(t);
                    if let Some(bytes) = trx.get(&key, false).await? {
                        let mut rec: TicketRecord = decode(&bytes)?;
                        rec.state = TicketState::Revoked;
                        trx.set(&key, &values::encode(&rec));
                    }
                }
            }
            let was_sale = o.state == OrderState::Completed;
            o.state = if was_sale { OrderState::Refunded } else { OrderState::Failed };
            o.step = SagaStep::Done;
            self.outbox(
                &trx,
                &o,
                BusEventBody::OrderRefunded {
                    order_id: o.order_id.clone(),
                    customer_id: o.customer_id.clone(),
                    amount_minor: o.amount_minor,
                    currency: o.currency.clone(),
                },
            );
            Ok(o)
        })
        .await?;
        metrics::counter!("tessera_orders_refunds_total").increment(1);
        Ok(StepOutcome::Advanced)
    }

    /// Refunds a completed order (operator action): the payment is refunded, the seats go
    /// back on sale and the tickets stop admitting. Idempotent.
    #[tracing::instrument(name = "orders.refund", skip_all, fields(order_id = %order_id))]
    pub async fn refund(&self, order_id: &OrderId) -> Result<Order, OrderError> {
        let r = self.order_record(order_id).await?;
        match (r.state, r.step) {
            (OrderState::Refunded, _) | (_, SagaStep::Refunding) => {}
            (OrderState::Completed, SagaStep::Done) => {
                self.transition(order_id, SagaStep::Done, |trx, mut o| async move {
                    if o.state != OrderState::Completed {
                        return abort_store(OrderError::NotRefundable(o.order_id.clone()), &trx);
                    }
                    o.step = SagaStep::Refunding;
                    trx.set(&self.inv.keys().pending_order(&o.order_id), &[]);
                    Ok(o)
                })
                .await?;
            }
            _ => return Err(OrderError::NotRefundable(order_id.clone())),
        }
        let r = self.drive(order_id).await?;
        Ok(self.view(&r))
    }

    /// Settles orders whose driver went away (a crash, a failover) or whose outcome was
    /// unknown: each is driven again once its lease lapsed.
    #[tracing::instrument(name = "orders.reconcile", skip_all)]
    pub async fn reconcile(&self, limit: usize) -> Result<ReconcileReport, OrderError> {
        let mut report = ReconcileReport::default();
        let pending = {
            let trx = self.inv.store().create_trx().map_err(OrderError::Store)?;
            let (b, e) = self.inv.keys().pending_orders();
            trx.get_range(&RangeRequest::new(b, e).limit(limit), true)
                .await
                .map_err(OrderError::Store)?
        };
        for (k, _) in pending {
            report.examined += 1;
            let order_id = self.inv.keys().order_of_pending_key(&k)?;
            match self.settle(&order_id).await {
                Ok(Some(done)) => {
                    report.driven += 1;
                    if done.step == SagaStep::Done {
                        report.settled += 1;
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(%order_id, "reconciling failed, will retry: {e}"),
            }
        }
        if report.driven > 0 {
            metrics::counter!("tessera_orders_reconciled_total").increment(report.settled);
        }
        Ok(report)
    }

    /// Drives an order if nobody else is driving it (its lease lapsed or is ours): what the
    /// reconciler does for each pending order, and what a provider webhook triggers.
    /// Returns the order after driving, or `None` when another driver owns it.
    pub async fn settle(&self, order_id: &OrderId) -> Result<Option<OrderRecord>, OrderError> {
        let now = self.clock.now_ms();
        let r = match self.order_record(order_id).await {
            Ok(r) => r,
            Err(OrderError::UnknownOrder(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if r.step == SagaStep::Done {
            return Ok(None);
        }
        if r.lease_until_ms > now {
            return Ok(None);
        }
        // Take the lease in a transaction that reads it, so that of several reconcilers
        // (one per region) exactly one wins and the others leave the order alone.
        let me = self.config.driver.clone();
        let lease_ms = self.config.lease_ms;
        let took = tessera_store::run(self.inv.store(), |trx, _| {
            let me = me.clone();
            async move {
                let mut o = self.read_order_trx(&trx, order_id).await?;
                let now = self.clock.now_ms();
                if o.step == SagaStep::Done
                    || (o.lease_until_ms > now && o.lease_holder.as_deref() != Some(me.as_str()))
                {
                    return Ok(false);
                }
                o.attempts += 1;
                o.lease_holder = Some(me);
                o.lease_until_ms = now + lease_ms;
                trx.set(&self.inv.keys().order(order_id), &values::encode(&o));
                Ok::<_, TrxError<OrderError>>(true)
            }
        })
        .await?;
        if !took {
            return Ok(None);
        }
        self.drive(order_id).await.map(Some)
    }

    fn outbox<T: Transaction>(&self, trx: &T, o: &OrderRecord, body: BusEventBody) {
        write_outbox(
            trx,
            self.inv.keys(),
            self.inv.region(),
            1,
            &o.event_id,
            self.clock.now_ms(),
            body,
        );
    }

    /// The order a hold was checked out into, if any.
    pub async fn order_of_hold(&self, hold_id: &HoldId) -> Result<Option<OrderId>, OrderError> {
        let trx = self.inv.store().create_trx().map_err(OrderError::Store)?;
        let v =
            trx.get(&self.inv.keys().hold_order(hold_id), true).await.map_err(OrderError::Store)?;
        Ok(v.and_then(|b| OrderId::parse(&String::from_utf8_lossy(&b)).ok()))
    }
}

fn abort_store<T, X: Transaction>(e: OrderError, _trx: &X) -> OrderTrx<T> {
    abort(e)
}

fn state_label(s: OrderState) -> &'static str {
    match s {
        OrderState::PaymentPending => "payment_pending",
        OrderState::Completed => "completed",
        OrderState::Failed => "failed",
        OrderState::Refunded => "refunded",
    }
}

/// Failure codes that mean "the card said no" (shown to the fan as 402).
fn is_decline_code(code: &str) -> bool {
    !matches!(code, "hold_expired" | "voided")
        && !code.starts_with("capture_")
        && !code.starts_with("payment_invalid")
}
