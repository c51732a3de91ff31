//! [`SimProvider`]: the simulation's in-process payment provider.
//!
//! It keeps the state machine of a card processor with manual capture (authorize → capture,
//! or cancel; refunds out of what was captured), honours idempotency keys the way the real
//! one does (the same key with the same parameters replays the first answer, another request
//! under the key is refused, a request while the first is still running is answered
//! "unknown"), and fails in seeded ways: declines, answers lost after the request was applied,
//! requests lost before they arrived, and slow processing that outlives the client's timeout.
//!
//! Client and server are separate: the caller's future carries the request there and the
//! answer back, and the server applies the request in its own task. Killing the caller
//! (a region going down) therefore loses the answer but not a request that already arrived.
//! The ledger records every payment, every capture and every refund for the checks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tessera_api::OrderId;
use tessera_common::{Clock, ManualClock, Rng as _, SeededRng};
use tessera_payments::{
    AuthorizeRequest, IdempotencyKey, Payment, PaymentError, PaymentProvider, PaymentStatus,
    Refund, RefundStatus,
};
use tokio::sync::oneshot;

/// Fault rates and latencies of the provider, in parts per million.
#[derive(Debug, Clone, Copy)]
pub struct ProviderPlan {
    /// An approvable card is declined anyway.
    pub decline_ppm: u64,
    /// A mutating call's outcome is unknown to the caller (one of three ways).
    pub unknown_ppm: u64,
    /// A read fails as unavailable.
    pub read_failure_ppm: u64,
    /// The server takes long to process a request.
    pub slow_ppm: u64,
    pub slow_max_ms: u64,
    /// Network latency of each direction.
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// The client gives up waiting for an answer after this long.
    pub client_timeout_ms: u64,
}

impl Default for ProviderPlan {
    fn default() -> Self {
        ProviderPlan {
            decline_ppm: 0,
            unknown_ppm: 0,
            read_failure_ppm: 0,
            slow_ppm: 0,
            slow_max_ms: 0,
            latency_min_ms: 20,
            latency_max_ms: 250,
            client_timeout_ms: 10_000,
        }
    }
}

/// One payment as the ledger keeps it.
#[derive(Debug, Clone)]
pub struct PaymentRecord {
    pub payment: Payment,
    pub customer: String,
    pub payment_method: String,
    /// Successful captures (at most one is possible; counted to prove it).
    pub captures: u32,
    /// Successful refunds and their amounts.
    pub refunds: Vec<u64>,
    /// Whether the card ever had this payment's amount held or taken.
    pub ever_held_funds: bool,
}

/// What happened at the provider, for the checks.
#[derive(Debug, Clone, Default)]
pub struct LedgerView {
    pub payments: BTreeMap<String, PaymentRecord>,
    /// Requests the server applied, by kind.
    pub applied: BTreeMap<&'static str, u64>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone)]
enum Answer {
    Payment(Result<Payment, PaymentError>),
    Refund(Result<Refund, PaymentError>),
}

#[derive(Debug, Default)]
struct Ledger {
    view: LedgerView,
    by_order: HashMap<String, Vec<String>>,
    /// Idempotency key → (canonical request, saved answer).
    saved: HashMap<String, (String, Answer)>,
    running: HashSet<String>,
    seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    None,
    /// The request never arrived.
    BeforeApply,
    /// Applied; the answer was lost on the way back.
    AfterApply,
    /// Applied, but the server answered (and saved under the key) an internal error.
    SavedError,
}

/// The mutating requests.
#[derive(Debug, Clone)]
enum Request {
    Authorize(AuthorizeRequest),
    Capture { payment_id: String, amount_minor: Option<u64> },
    Cancel { payment_id: String },
    Refund { payment_id: String, amount_minor: Option<u64> },
}

impl Request {
    fn kind(&self) -> &'static str {
        match self {
            Request::Authorize(_) => "authorize",
            Request::Capture { .. } => "capture",
            Request::Cancel { .. } => "cancel",
            Request::Refund { .. } => "refund",
        }
    }

    fn canonical(&self) -> String {
        match self {
            Request::Authorize(r) => format!(
                "authorize|{}|{}|{}|{}|{}",
                r.order_id,
                r.customer_id,
                r.amount_minor,
                r.currency.to_ascii_lowercase(),
                r.payment_method
            ),
            Request::Capture { payment_id, amount_minor } => {
                format!("capture|{payment_id}|{amount_minor:?}")
            }
            Request::Cancel { payment_id } => format!("cancel|{payment_id}"),
            Request::Refund { payment_id, amount_minor } => {
                format!("refund|{payment_id}|{amount_minor:?}")
            }
        }
    }
}

fn wrong_state(p: &Payment, verb: &str) -> PaymentError {
    PaymentError::WrongState {
        code: "payment_intent_unexpected_state".into(),
        message: format!("cannot {verb} a payment whose status is {}", p.status.as_str()),
    }
}

fn unknown(reason: &str) -> PaymentError {
    PaymentError::Unknown { reason: reason.into() }
}

/// The simulation's payment provider.
#[derive(Debug)]
pub struct SimProvider {
    ledger: Mutex<Ledger>,
    plan: Mutex<ProviderPlan>,
    rng: Arc<SeededRng>,
    clock: Arc<ManualClock>,
    /// Gives server tasks their actor ids (they never touch the store, but stay named).
    next_actor: Arc<std::sync::atomic::AtomicU64>,
}

impl SimProvider {
    pub(crate) fn new(
        plan: ProviderPlan,
        seed: u64,
        clock: Arc<ManualClock>,
        next_actor: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        SimProvider {
            ledger: Mutex::new(Ledger::default()),
            plan: Mutex::new(plan),
            rng: SeededRng::new(seed),
            clock,
            next_actor,
        }
    }

    /// Everything the provider did so far.
    pub fn ledger(&self) -> LedgerView {
        self.ledger.lock().view.clone()
    }

    /// Changes the fault plan (the simulation calms the provider down before it settles).
    pub(crate) fn set_plan(&self, plan: ProviderPlan) {
        *self.plan.lock() = plan;
    }

    pub(crate) fn plan(&self) -> ProviderPlan {
        *self.plan.lock()
    }

    fn chance(&self, ppm: u64) -> bool {
        ppm > 0 && self.rng.below(1_000_000) < ppm
    }

    fn between(&self, lo: u64, hi: u64) -> u64 {
        lo + self.rng.below(hi.saturating_sub(lo) + 1)
    }

    fn note_fault(&self, kind: &'static str) {
        *self.ledger.lock().view.faults.entry(kind).or_default() += 1;
    }

    /// Carries a mutating request to the server and its answer back.
    async fn call(self: &Arc<Self>, req: Request, key: &IdempotencyKey) -> Answer {
        let plan = self.plan();
        let loss = if self.chance(plan.unknown_ppm) {
            match self.rng.below(3) {
                0 => Loss::BeforeApply,
                1 => Loss::AfterApply,
                _ => Loss::SavedError,
            }
        } else {
            Loss::None
        };
        let up = self.between(plan.latency_min_ms, plan.latency_max_ms);
        let down = self.between(plan.latency_min_ms, plan.latency_max_ms);
        let work = if self.chance(plan.slow_ppm) {
            self.between(plan.client_timeout_ms / 2, plan.slow_max_ms.max(1))
        } else {
            self.between(1, 40)
        };
        let decline = self.chance(plan.decline_ppm);
        let kind = req.kind();
        let fail = |e: PaymentError| match &req {
            Request::Refund { .. } => Answer::Refund(Err(e)),
            _ => Answer::Payment(Err(e)),
        };

        let started = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(up)).await;
        if loss == Loss::BeforeApply {
            self.note_fault("lost_before_apply");
            return fail(unknown("connection reset before the request was sent"));
        }
        // The request has arrived: the server works on it whatever becomes of the caller.
        let (tx, rx) = oneshot::channel();
        let server = self.clone();
        let key_text = key.as_str().to_owned();
        let req_for_server = req.clone();
        let actor = self.next_actor.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(crate::sched::as_actor(actor, async move {
            let answer = server
                .serve(req_for_server, &key_text, work, decline, loss == Loss::SavedError)
                .await;
            let _ = tx.send(answer);
        }));
        let timeout = Duration::from_millis(plan.client_timeout_ms)
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        let answer = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(a)) => a,
            Ok(Err(_)) => fail(unknown("the server went away")),
            Err(_) => {
                self.note_fault("client_timeout");
                return fail(unknown("timed out waiting for the provider"));
            }
        };
        tokio::time::sleep(Duration::from_millis(down)).await;
        if loss == Loss::AfterApply {
            self.note_fault("lost_after_apply");
            return fail(unknown(&format!("connection reset after the {kind} was sent")));
        }
        answer
    }

    async fn serve(
        &self,
        req: Request,
        key: &str,
        work_ms: u64,
        decline: bool,
        save_error: bool,
    ) -> Answer {
        let canonical = req.canonical();
        {
            let mut l = self.ledger.lock();
            if let Some((seen, answer)) = l.saved.get(key) {
                if *seen != canonical {
                    return match req {
                        Request::Refund { .. } => {
                            Answer::Refund(Err(PaymentError::IdempotencyConflict))
                        }
                        _ => Answer::Payment(Err(PaymentError::IdempotencyConflict)),
                    };
                }
                return answer.clone();
            }
            if !l.running.insert(key.to_owned()) {
                let e = unknown("a request with this idempotency key is still running");
                return match req {
                    Request::Refund { .. } => Answer::Refund(Err(e)),
                    _ => Answer::Payment(Err(e)),
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(work_ms)).await;
        let mut l = self.ledger.lock();
        l.running.remove(key);
        let kind = req.kind();
        let order = match &req {
            Request::Authorize(r) => r.order_id.to_string(),
            Request::Capture { payment_id, .. }
            | Request::Cancel { payment_id }
            | Request::Refund { payment_id, .. } => payment_id.clone(),
        };
        let mut answer = self.apply(&mut l, req, decline);
        tracing::info!(
            target: "sim.provider",
            at_s = self.clock.now_ms() / 1000 - crate::scenario::T0_MS / 1000,
            "applied {kind} {order} key={key} save_error={save_error}: {}",
            match &answer {
                Answer::Payment(Ok(p)) => format!("{} {}", p.id, p.status.as_str()),
                Answer::Payment(Err(e)) | Answer::Refund(Err(e)) => format!("error {e}"),
                Answer::Refund(Ok(r)) => format!("{} refunded {}", r.id, r.amount_minor),
            }
        );
        *l.view.applied.entry(kind).or_default() += 1;
        if save_error {
            l.view.faults.entry("saved_error").and_modify(|n| *n += 1).or_insert(1);
            let e = unknown("the provider answered 500");
            answer = match answer {
                Answer::Refund(_) => Answer::Refund(Err(e)),
                Answer::Payment(_) => Answer::Payment(Err(e)),
            };
        }
        l.saved.insert(key.to_owned(), (canonical, answer.clone()));
        answer
    }

    fn apply(&self, l: &mut Ledger, req: Request, decline: bool) -> Answer {
        match req {
            Request::Authorize(r) => Answer::Payment(self.authorize_now(l, &r, decline)),
            Request::Capture { payment_id, amount_minor } => {
                Answer::Payment(Self::capture_now(l, &payment_id, amount_minor))
            }
            Request::Cancel { payment_id } => Answer::Payment(Self::cancel_now(l, &payment_id)),
            Request::Refund { payment_id, amount_minor } => {
                Answer::Refund(Self::refund_now(l, &payment_id, amount_minor))
            }
        }
    }

    fn authorize_now(
        &self,
        l: &mut Ledger,
        r: &AuthorizeRequest,
        decline: bool,
    ) -> Result<Payment, PaymentError> {
        if r.amount_minor == 0 {
            return Err(PaymentError::Invalid {
                code: "amount_too_small".into(),
                message: "amount must be at least 1".into(),
                param: Some("amount".into()),
            });
        }
        // The card's own answer, as the real provider's test cards give it.
        let (status, error): (PaymentStatus, Option<(&str, &str)>) = match r.payment_method.as_str()
        {
            "pm_card_visa" | "pm_card_mastercard" | "pm_card_amex" if decline => {
                (PaymentStatus::RequiresPaymentMethod, Some(("card_declined", "do_not_honor")))
            }
            "pm_card_visa" | "pm_card_mastercard" | "pm_card_amex" => {
                (PaymentStatus::RequiresCapture, None)
            }
            "pm_card_chargeDeclined" => {
                (PaymentStatus::RequiresPaymentMethod, Some(("card_declined", "generic_decline")))
            }
            "pm_card_chargeDeclinedInsufficientFunds" => (
                PaymentStatus::RequiresPaymentMethod,
                Some(("card_declined", "insufficient_funds")),
            ),
            "pm_card_authenticationRequired" => (PaymentStatus::RequiresAction, None),
            other => {
                return Err(PaymentError::Invalid {
                    code: "resource_missing".into(),
                    message: format!("no such payment method: {other}"),
                    param: Some("payment_method".into()),
                });
            }
        };
        l.seq += 1;
        let id = format!("pi_sim{:06}", l.seq);
        let payment = Payment {
            id: id.clone(),
            status,
            amount_minor: r.amount_minor,
            amount_capturable_minor: if status == PaymentStatus::RequiresCapture {
                r.amount_minor
            } else {
                0
            },
            amount_received_minor: 0,
            amount_refunded_minor: 0,
            currency: r.currency.to_ascii_lowercase(),
            order_id: Some(r.order_id.as_str().to_owned()),
            last_error_code: error.map(|(c, _)| c.to_owned()),
            created_s: self.clock.now_ms() / 1000,
        };
        l.view.payments.insert(
            id.clone(),
            PaymentRecord {
                payment: payment.clone(),
                customer: r.customer_id.as_str().to_owned(),
                payment_method: r.payment_method.clone(),
                captures: 0,
                refunds: Vec::new(),
                ever_held_funds: status.holds_funds(),
            },
        );
        l.by_order.entry(r.order_id.as_str().to_owned()).or_default().push(id.clone());
        match error {
            Some((code, decline_code)) => Err(PaymentError::Declined {
                code: code.into(),
                decline_code: Some(decline_code.into()),
                payment_id: Some(id),
            }),
            None => Ok(payment),
        }
    }

    fn capture_now(l: &mut Ledger, id: &str, amount: Option<u64>) -> Result<Payment, PaymentError> {
        let rec = l.view.payments.get_mut(id).ok_or(PaymentError::NotFound)?;
        let p = &mut rec.payment;
        if p.status != PaymentStatus::RequiresCapture {
            return Err(wrong_state(p, "capture"));
        }
        let amount = amount.unwrap_or(p.amount_capturable_minor);
        if amount == 0 || amount > p.amount_capturable_minor {
            return Err(PaymentError::Invalid {
                code: "amount_too_large".into(),
                message: "the amount to capture exceeds the amount capturable".into(),
                param: Some("amount_to_capture".into()),
            });
        }
        p.status = PaymentStatus::Succeeded;
        p.amount_received_minor = amount;
        p.amount_capturable_minor = 0;
        rec.captures += 1;
        rec.ever_held_funds = true;
        Ok(p.clone())
    }

    fn cancel_now(l: &mut Ledger, id: &str) -> Result<Payment, PaymentError> {
        let rec = l.view.payments.get_mut(id).ok_or(PaymentError::NotFound)?;
        let p = &mut rec.payment;
        match p.status {
            PaymentStatus::RequiresPaymentMethod
            | PaymentStatus::RequiresConfirmation
            | PaymentStatus::RequiresAction
            | PaymentStatus::RequiresCapture => {
                p.status = PaymentStatus::Canceled;
                p.amount_capturable_minor = 0;
                Ok(p.clone())
            }
            _ => Err(wrong_state(p, "cancel")),
        }
    }

    fn refund_now(l: &mut Ledger, id: &str, amount: Option<u64>) -> Result<Refund, PaymentError> {
        let seq = l.seq + 1;
        let rec = l.view.payments.get_mut(id).ok_or(PaymentError::NotFound)?;
        let p = &mut rec.payment;
        let left = p.net_charged_minor();
        if p.status != PaymentStatus::Succeeded || left == 0 {
            return Err(PaymentError::WrongState {
                code: if left == 0 && p.status == PaymentStatus::Succeeded {
                    "charge_already_refunded".into()
                } else {
                    "payment_intent_unexpected_state".into()
                },
                message: format!("nothing to refund on a {} payment", p.status.as_str()),
            });
        }
        let amount = amount.unwrap_or(left);
        if amount == 0 || amount > left {
            return Err(PaymentError::Invalid {
                code: "amount_too_large".into(),
                message: "refund exceeds what is left".into(),
                param: Some("amount".into()),
            });
        }
        p.amount_refunded_minor += amount;
        rec.refunds.push(amount);
        let refund = Refund {
            id: format!("re_sim{seq:06}"),
            payment_id: id.to_owned(),
            amount_minor: amount,
            currency: p.currency.clone(),
            status: RefundStatus::Succeeded,
        };
        l.seq = seq;
        Ok(refund)
    }

    /// A read: latency both ways, sometimes unavailable.
    async fn read<T>(
        &self,
        f: impl FnOnce(&Ledger) -> Result<T, PaymentError>,
    ) -> Result<T, PaymentError> {
        let plan = self.plan();
        let up = self.between(plan.latency_min_ms, plan.latency_max_ms);
        let down = self.between(plan.latency_min_ms, plan.latency_max_ms);
        let unavailable = self.chance(plan.read_failure_ppm);
        tokio::time::sleep(Duration::from_millis(up)).await;
        if unavailable {
            tracing::info!(target: "sim.provider", "a read fails as unavailable");
            self.note_fault("read_unavailable");
            return Err(PaymentError::Unavailable { reason: "connection refused".into() });
        }
        let out = f(&self.ledger.lock());
        tokio::time::sleep(Duration::from_millis(down)).await;
        out
    }
}

fn payment_of(a: Answer) -> Result<Payment, PaymentError> {
    match a {
        Answer::Payment(r) => r,
        Answer::Refund(_) => Err(unknown("the provider answered another request")),
    }
}

/// The trait takes `&self`; the provider needs an `Arc` of itself to hand requests to its
/// server tasks, so the trait is implemented on this handle.
#[derive(Debug, Clone)]
pub struct SimProviderHandle(pub Arc<SimProvider>);

#[async_trait::async_trait]
impl PaymentProvider for SimProviderHandle {
    async fn authorize(
        &self,
        req: &AuthorizeRequest,
        key: &IdempotencyKey,
    ) -> Result<Payment, PaymentError> {
        payment_of(self.0.call(Request::Authorize(req.clone()), key).await)
    }

    async fn capture(
        &self,
        payment_id: &str,
        amount_minor: Option<u64>,
        key: &IdempotencyKey,
    ) -> Result<Payment, PaymentError> {
        let req = Request::Capture { payment_id: payment_id.to_owned(), amount_minor };
        payment_of(self.0.call(req, key).await)
    }

    async fn cancel(
        &self,
        payment_id: &str,
        key: &IdempotencyKey,
    ) -> Result<Payment, PaymentError> {
        payment_of(self.0.call(Request::Cancel { payment_id: payment_id.to_owned() }, key).await)
    }

    async fn refund(
        &self,
        payment_id: &str,
        amount_minor: Option<u64>,
        key: &IdempotencyKey,
    ) -> Result<Refund, PaymentError> {
        let req = Request::Refund { payment_id: payment_id.to_owned(), amount_minor };
        match self.0.call(req, key).await {
            Answer::Refund(r) => r,
            Answer::Payment(_) => Err(unknown("the provider answered another request")),
        }
    }

    async fn retrieve(&self, payment_id: &str) -> Result<Payment, PaymentError> {
        self.0
            .read(|l| {
                l.view
                    .payments
                    .get(payment_id)
                    .map(|r| r.payment.clone())
                    .ok_or(PaymentError::NotFound)
            })
            .await
    }

    async fn find_by_order(&self, order_id: &OrderId) -> Result<Vec<Payment>, PaymentError> {
        self.0
            .read(|l| {
                let ids = l.by_order.get(order_id.as_str()).cloned().unwrap_or_default();
                Ok(ids
                    .iter()
                    .rev()
                    .filter_map(|id| l.view.payments.get(id).map(|r| r.payment.clone()))
                    .collect())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_api::CustomerId;

    fn provider() -> SimProviderHandle {
        SimProviderHandle(Arc::new(SimProvider::new(
            ProviderPlan::default(),
            7,
            ManualClock::new(crate::scenario::T0_MS),
            Arc::new(std::sync::atomic::AtomicU64::new(1)),
        )))
    }

    fn req(order: u128, card: &str, amount_minor: u64) -> AuthorizeRequest {
        AuthorizeRequest {
            order_id: OrderId::from_random(order),
            customer_id: CustomerId::parse("fan-1").unwrap(),
            amount_minor,
            currency: "EUR".into(),
            payment_method: card.into(),
            description: None,
        }
    }

    fn key(k: &str) -> IdempotencyKey {
        IdempotencyKey::new(k).unwrap()
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_repeated_key_replays_the_first_answer_and_a_reused_one_is_refused() {
        block_on(async {
            let p = provider();
            let a = p.authorize(&req(1, "pm_card_visa", 500), &key("k1")).await.unwrap();
            let b = p.authorize(&req(1, "pm_card_visa", 500), &key("k1")).await.unwrap();
            assert_eq!(a, b);
            assert_eq!(a.status, PaymentStatus::RequiresCapture);
            let e = p.authorize(&req(1, "pm_card_visa", 600), &key("k1")).await.unwrap_err();
            assert_eq!(e, PaymentError::IdempotencyConflict);
            assert_eq!(p.0.ledger().payments.len(), 1);
        });
    }

    #[test]
    fn manual_capture_moves_money_once_and_refunds_give_it_back() {
        block_on(async {
            let p = provider();
            let a = p.authorize(&req(2, "pm_card_visa", 900), &key("a")).await.unwrap();
            let c = p.capture(&a.id, None, &key("c1")).await.unwrap();
            assert_eq!((c.status, c.net_charged_minor()), (PaymentStatus::Succeeded, 900));
            let again = p.capture(&a.id, None, &key("c2")).await.unwrap_err();
            assert!(matches!(again, PaymentError::WrongState { .. }), "{again:?}");
            let void = p.cancel(&a.id, &key("v1")).await.unwrap_err();
            assert!(matches!(void, PaymentError::WrongState { .. }), "{void:?}");
            let r = p.refund(&a.id, None, &key("r1")).await.unwrap();
            assert_eq!(r.amount_minor, 900);
            assert!(matches!(
                p.refund(&a.id, None, &key("r2")).await,
                Err(PaymentError::WrongState { .. })
            ));
            let now = p.retrieve(&a.id).await.unwrap();
            assert_eq!(now.net_charged_minor(), 0);
            assert_eq!(p.0.ledger().payments[&a.id].captures, 1);
        });
    }

    #[test]
    fn a_declined_card_records_a_payment_that_holds_nothing() {
        block_on(async {
            let p = provider();
            let e = p.authorize(&req(3, "pm_card_chargeDeclined", 100), &key("d")).await;
            let Err(PaymentError::Declined { payment_id: Some(id), .. }) = e else {
                panic!("{e:?}")
            };
            let got = p.find_by_order(&OrderId::from_random(3)).await.unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(
                (got[0].id.as_str(), got[0].status),
                (id.as_str(), PaymentStatus::RequiresPaymentMethod)
            );
            assert!(!p.0.ledger().payments[&id].ever_held_funds);
            let c = p.cancel(&id, &key("v")).await.unwrap();
            assert_eq!(c.status, PaymentStatus::Canceled);
        });
    }
}
