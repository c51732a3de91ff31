//! [`SimProvider`]: the simulation's payment provider, `tessera-paysim` in process, reached
//! through the real Stripe adapter (`tessera_payments::stripe::StripeClient`) over a
//! transport that carries each request in virtual time.
//!
//! The simulator keeps the card processor's state machine with manual capture (authorize
//! → capture, or cancel; refunds out of what was captured), the test cards (declines,
//! 3-D Secure that never completes), and idempotency keys as Stripe honours them (the same
//! key with the same parameters replays the first answer, other parameters are refused, a
//! request while the first is still running gets a 409). Its seeded faults play the
//! provider's side: random declines, an applied request answered with a 500 that the key
//! then replays, an applied request answered late. The transport plays the network's:
//! latency each way, requests lost before they arrive, answers lost after the request was
//! applied, reads that fail, and the client's timeout.
//!
//! Client and server are separate: the caller's future carries the request there and the
//! answer back, and the server handles the request in its own task. Killing the caller
//! (a region going down) therefore loses the answer but not a request that already arrived.
//! The ledger is the simulator's own record of every payment, capture and refund.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tessera_common::{ManualClock, Rng as _, SeededRng};
use tessera_payments::stripe::{StripeClient, Transport, WireRequest};
use tessera_payments::{Payment, PaymentError};
use tokio::sync::oneshot;

/// Fault rates and latencies of the provider, in parts per million.
#[derive(Debug, Clone, Copy)]
pub struct ProviderPlan {
    /// An approvable card is declined anyway.
    pub decline_ppm: u64,
    /// A mutating call's outcome is unknown to the caller (one of three ways: lost before
    /// it arrived, answer lost after it was applied, applied and answered with a 500).
    pub unknown_ppm: u64,
    /// A read fails as unavailable.
    pub read_failure_ppm: u64,
    /// The server answers late (after `slow_max_ms`), having applied the request.
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

impl ProviderPlan {
    /// The provider's side of the plan, as the simulator's random faults.
    fn server_faults(&self) -> tessera_paysim::FaultConfig {
        let rate = |ppm: u64| ppm as f64 / 1_000_000.0;
        tessera_paysim::FaultConfig {
            decline_rate: rate(self.decline_ppm),
            timeout_rate: rate(self.slow_ppm),
            unknown_rate: rate(self.unknown_ppm / 3),
            followup_timeout_rate: rate(self.slow_ppm),
            followup_unknown_rate: rate(self.unknown_ppm / 3),
            timeout_delay_ms: self.slow_max_ms.max(1),
        }
    }
}

/// One payment as the simulator keeps it.
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
    /// Requests that reached the simulator, by kind.
    pub delivered: BTreeMap<&'static str, u64>,
    /// Faults the transport injected, by kind (the simulator's own are in its answers).
    pub faults: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Default)]
struct Counts {
    delivered: BTreeMap<&'static str, u64>,
    faults: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    None,
    /// The request never arrived.
    BeforeApply,
    /// Applied; the answer was lost on the way back.
    AfterApply,
}

fn unknown(reason: &str) -> PaymentError {
    PaymentError::Unknown { reason: reason.into() }
}

/// The simulation's payment provider.
#[derive(Debug)]
pub struct SimProvider {
    paysim: tessera_paysim::Simulator,
    plan: Mutex<ProviderPlan>,
    rng: Arc<SeededRng>,
    /// What [`LedgerView::delivered`] and [`LedgerView::faults`] report.
    counts: Mutex<Counts>,
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
        let config = tessera_paysim::SimConfig {
            mode: tessera_runtime::config::Mode::Local,
            secret_key: "sk_test_simulation".to_owned(),
            seed,
            // The server's own work: the key stays "in progress" meanwhile.
            latency: tessera_paysim::LatencyConfig { min_ms: 1, max_ms: 40 },
            faults: plan.server_faults(),
            ..Default::default()
        };
        let paysim =
            tessera_paysim::Simulator::in_memory(config, clock, SeededRng::new(seed ^ 0x5eed))
                .expect("an in-memory payment simulator starts");
        SimProvider {
            paysim,
            plan: Mutex::new(plan),
            rng: SeededRng::new(seed),
            counts: Mutex::new(Default::default()),
            next_actor,
        }
    }

    /// The real Stripe adapter, talking to this provider.
    pub fn client(self: &Arc<Self>) -> StripeClient {
        StripeClient::with_transport(Arc::new(SimTransport(self.clone())))
    }

    /// Everything the provider did so far.
    pub fn ledger(&self) -> LedgerView {
        let payments = self
            .paysim
            .intents()
            .into_iter()
            .map(|i| {
                let record = PaymentRecord {
                    customer: i.customer_id.unwrap_or_default(),
                    payment_method: i.payment_method.unwrap_or_default(),
                    captures: i.captures,
                    refunds: i.refunds,
                    ever_held_funds: i.ever_held_funds,
                    payment: i.payment,
                };
                (record.payment.id.clone(), record)
            })
            .collect();
        let Counts { delivered, faults } = self.counts.lock().clone();
        LedgerView { payments, delivered, faults }
    }

    /// Changes the fault plan (the simulation calms the provider down before it settles).
    pub(crate) fn set_plan(&self, plan: ProviderPlan) {
        self.paysim.set_faults(plan.server_faults());
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
        *self.counts.lock().faults.entry(kind).or_default() += 1;
    }

    fn note_delivered(&self, kind: &'static str) {
        *self.counts.lock().delivered.entry(kind).or_default() += 1;
    }
}

/// What a request does, for the counts.
fn kind_of(req: &WireRequest) -> &'static str {
    let path = req.path_and_query.split('?').next().unwrap_or_default();
    match (req.method == http::Method::GET, path) {
        (true, _) => "read",
        (false, "/v1/payment_intents") => "authorize",
        (false, "/v1/refunds") => "refund",
        (false, p) if p.ends_with("/capture") => "capture",
        (false, p) if p.ends_with("/cancel") => "cancel",
        _ => "other",
    }
}

/// Carries the adapter's requests to the simulator and its answers back, in virtual time,
/// losing some on the way.
#[derive(Debug, Clone)]
struct SimTransport(Arc<SimProvider>);

#[async_trait::async_trait]
impl Transport for SimTransport {
    async fn send(&self, req: WireRequest) -> Result<(u16, Bytes), PaymentError> {
        let p = &self.0;
        let plan = p.plan();
        let up = p.between(plan.latency_min_ms, plan.latency_max_ms);
        let down = p.between(plan.latency_min_ms, plan.latency_max_ms);
        let kind = kind_of(&req);
        if req.method == http::Method::GET {
            let unavailable = p.chance(plan.read_failure_ppm);
            tokio::time::sleep(Duration::from_millis(up)).await;
            if unavailable {
                tracing::info!(target: "sim.provider", "a read fails as unavailable");
                p.note_fault("read_unavailable");
                return Err(PaymentError::Unavailable { reason: "connection refused".into() });
            }
            p.note_delivered(kind);
            let answer = p.paysim.call(req.method, &req.path_and_query, None, None).await;
            tokio::time::sleep(Duration::from_millis(down)).await;
            return Ok(answer);
        }
        // Two of the three ways an outcome becomes unknown are the network's; the third
        // (a saved 500) is the simulator's own.
        let loss = if p.chance(plan.unknown_ppm.saturating_sub(plan.unknown_ppm / 3)) {
            if p.rng.below(2) == 0 { Loss::BeforeApply } else { Loss::AfterApply }
        } else {
            Loss::None
        };
        let started = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(up)).await;
        if loss == Loss::BeforeApply {
            p.note_fault("lost_before_apply");
            return Err(unknown("connection reset before the request was sent"));
        }
        // The request has arrived: the server works on it whatever becomes of the caller.
        p.note_delivered(kind);
        let (tx, rx) = oneshot::channel();
        let paysim = p.paysim.clone();
        let actor = p.next_actor.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(crate::sched::as_actor(actor, async move {
            let answer = paysim
                .call(req.method, &req.path_and_query, req.idempotency_key.as_deref(), req.form)
                .await;
            let _ = tx.send(answer);
        }));
        let timeout = Duration::from_millis(plan.client_timeout_ms)
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        let answer = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(a)) => a,
            Ok(Err(_)) => return Err(unknown("the server went away")),
            Err(_) => {
                p.note_fault("client_timeout");
                return Err(unknown("timed out waiting for the provider"));
            }
        };
        tokio::time::sleep(Duration::from_millis(down)).await;
        if loss == Loss::AfterApply {
            p.note_fault("lost_after_apply");
            return Err(unknown(&format!("connection reset after the {kind} was sent")));
        }
        tracing::info!(target: "sim.provider", "{kind} answered {}", answer.0);
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_api::{CustomerId, OrderId};
    use tessera_payments::{AuthorizeRequest, IdempotencyKey, PaymentProvider as _, PaymentStatus};

    /// The provider and the real adapter talking to it.
    fn provider() -> (Arc<SimProvider>, StripeClient) {
        let sim = Arc::new(SimProvider::new(
            ProviderPlan::default(),
            7,
            ManualClock::new(crate::scenario::T0_MS),
            Arc::new(std::sync::atomic::AtomicU64::new(1)),
        ));
        let client = sim.client();
        (sim, client)
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
            let (sim, p) = provider();
            let a = p.authorize(&req(1, "pm_card_visa", 500), &key("k1")).await.unwrap();
            let b = p.authorize(&req(1, "pm_card_visa", 500), &key("k1")).await.unwrap();
            assert_eq!(a, b);
            assert_eq!(a.status, PaymentStatus::RequiresCapture);
            let e = p.authorize(&req(1, "pm_card_visa", 600), &key("k1")).await.unwrap_err();
            assert_eq!(e, PaymentError::IdempotencyConflict);
            assert_eq!(sim.ledger().payments.len(), 1);
        });
    }

    #[test]
    fn manual_capture_moves_money_once_and_refunds_give_it_back() {
        block_on(async {
            let (sim, p) = provider();
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
            assert_eq!(sim.ledger().payments[&a.id].captures, 1);
        });
    }

    #[test]
    fn a_declined_card_records_a_payment_that_holds_nothing() {
        block_on(async {
            let (sim, p) = provider();
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
            assert!(!sim.ledger().payments[&id].ever_held_funds);
            let c = p.cancel(&id, &key("v")).await.unwrap();
            assert_eq!(c.status, PaymentStatus::Canceled);
        });
    }

    #[test]
    fn a_card_that_asks_for_3d_secure_waits_and_can_be_canceled() {
        block_on(async {
            let (sim, p) = provider();
            let a = p
                .authorize(&req(4, "pm_card_authenticationRequired", 700), &key("t"))
                .await
                .unwrap();
            assert_eq!(a.status, PaymentStatus::RequiresAction);
            assert!(!sim.ledger().payments[&a.id].ever_held_funds);
            let c = p.cancel(&a.id, &key("tv")).await.unwrap();
            assert_eq!(c.status, PaymentStatus::Canceled);
            assert_eq!(sim.ledger().delivered.get("authorize"), Some(&1));
        });
    }
}
