//! Workloads: fans racing for seats, an operator refunding, gates scanning tickets.

use std::future::Future;
use std::sync::Arc;

use tessera_api::inventory::{HoldSpec, HoldState};
use tessera_api::orders::{CheckoutRequest, Order, OrderState};
use tessera_api::{CustomerId, OrderId};
use tessera_common::{Rng as _, SeededRng};
use tessera_orders::OrderError;
use tessera_payments::IdempotencyKey;

use crate::check::Snapshot;
use crate::scenario::Workload;
use crate::util::{derive, millis, secs};
use crate::world::{CallError, SimOrders, Violation, World, pick_region};

/// How a client reaches a region: like the region router, it retries a request that got no
/// answer on another region (the request carries its idempotency key, if any).
async fn with_failover<T, F, Fut>(w: &World, rng: &SeededRng, attempts: u32, f: F) -> Option<T>
where
    F: Fn(SimOrders) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    for _ in 0..attempts {
        let region = pick_region(w, rng).await?;
        match w.call(region, &f).await {
            Ok(v) => return Some(v),
            Err(CallError::Panicked) => return None,
            Err(CallError::RegionDown | CallError::RegionDied) => {
                tokio::time::sleep(millis(300 + rng.below(1_500))).await;
            }
        }
    }
    None
}

fn between(rng: &SeededRng, lo: u64, hi: u64) -> u64 {
    lo + rng.below(hi - lo + 1)
}

fn code_of(e: &OrderError) -> String {
    format!("{:?}", e.code())
}

// ---- BuyersRace -----------------------------------------------------------------------

/// Fans arrive over the first half minute and race for specific seats (the front row),
/// the best available seats of a section or tier, and general-admission places; then most
/// check out with a mix of cards, some release their hold and some let it expire. Some
/// double-submit their checkout; some retry a declined card.
#[derive(Debug, Clone, Copy)]
pub struct BuyersRace {
    pub buyers: u32,
}

impl BuyersRace {
    async fn fan(w: Arc<World>, i: u32) {
        let rng = SeededRng::new(derive(w.seed, "fan", u64::from(i), 0));
        let customer = CustomerId::parse(&format!("fan-{i}")).expect("a valid customer id");
        tokio::time::sleep(millis(rng.below(30_000))).await;
        let purchases = if rng.below(8) == 0 { 2 } else { 1 };
        for n in 0..purchases {
            if !Self::purchase(&w, &rng, &customer, i, n).await {
                return;
            }
            tokio::time::sleep(secs(between(&rng, 1, 20))).await;
        }
    }

    fn pick_spec(w: &World, rng: &SeededRng) -> HoldSpec {
        let v = &w.venue;
        let quantity = between(rng, 1, 4.min(u64::from(v.max_tickets_per_customer))) as u32;
        match rng.below(100) {
            0..=34 => {
                let hot = v.hot_seats();
                let start = rng.below(hot.len() as u64) as usize;
                let n = (quantity as usize).min(hot.len() - start);
                HoldSpec::Seats(hot[start..start + n].to_vec())
            }
            35..=49 => {
                let s = &v.sections[rng.below(v.sections.len() as u64) as usize];
                let seats = v.seats_of(s);
                let seat = seats[rng.below(seats.len() as u64) as usize].clone();
                HoldSpec::Seats(vec![seat])
            }
            50..=64 => {
                let s = &v.sections[rng.below(v.sections.len() as u64) as usize];
                HoldSpec::BestInSection {
                    section: s.section_id.clone(),
                    quantity,
                    adjacent: rng.below(2) == 0,
                    accessible: rng.below(10) == 0,
                }
            }
            65..=72 => HoldSpec::BestInTier {
                tier: if rng.below(2) == 0 { "P1".into() } else { "P2".into() },
                quantity,
                adjacent: rng.below(3) == 0,
                accessible: false,
            },
            _ => {
                let (pool, _) = &v.pools[rng.below(v.pools.len() as u64) as usize];
                HoldSpec::General { pool: pool.clone(), quantity }
            }
        }
    }

    fn pick_card(rng: &SeededRng) -> &'static str {
        match rng.below(100) {
            0..=64 => "pm_card_visa",
            65..=74 => "pm_card_mastercard",
            75..=79 => "pm_card_amex",
            80..=87 => "pm_card_chargeDeclined",
            88..=94 => "pm_card_chargeDeclinedInsufficientFunds",
            _ => "pm_card_authenticationRequired",
        }
    }

    /// One hold and what follows. Returns false when the fan gives up entirely.
    async fn purchase(
        w: &Arc<World>,
        rng: &SeededRng,
        customer: &CustomerId,
        i: u32,
        n: u32,
    ) -> bool {
        let spec = Self::pick_spec(w, rng);
        let hold_key = (rng.below(2) == 0).then(|| format!("hold-{i}-{n}"));
        let event = w.venue.event_id.clone();
        let result = with_failover(w, rng, 4, |orders| {
            let (event, customer, spec, key) =
                (event.clone(), customer.clone(), spec.clone(), hold_key.clone());
            async move { orders.inventory().hold(&event, &customer, &spec, key.as_deref()).await }
        })
        .await;
        let hold = match result {
            Some(Ok(h)) => h,
            Some(Err(e)) => {
                w.journal.lock().refused(format!("hold:{:?}", e.code()));
                return true;
            }
            None => return false,
        };
        w.journal.lock().holds.push((hold.hold_id.clone(), customer.clone()));

        let plan = rng.below(100);
        if plan < 10 {
            tokio::time::sleep(secs(between(rng, 1, 20))).await;
            let released = with_failover(w, rng, 4, |orders| {
                let (h, c) = (hold.hold_id.clone(), customer.clone());
                async move { orders.inventory().release(&h, &c).await }
            })
            .await;
            match released {
                Some(Ok(h)) if h.state == HoldState::Released => {
                    w.journal.lock().releases.push(h.hold_id)
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => w.journal.lock().refused(format!("release:{:?}", e.code())),
                None => return false,
            }
            return true;
        }
        if plan < 20 {
            // Walks away: the hold expires.
            return true;
        }
        // Thinks, sometimes for longer than the hold lasts.
        let ttl_ms = u64::from(w.venue.hold_ttl_s) * 1000;
        let think = if rng.below(6) == 0 {
            between(rng, ttl_ms / 2, ttl_ms * 3 / 2)
        } else {
            between(rng, 500, 8_000)
        };
        tokio::time::sleep(millis(think)).await;
        let mut card = Self::pick_card(rng);
        for attempt in 0..3 {
            let key = format!("co-{i}-{n}-{attempt}");
            let req = CheckoutRequest {
                hold_id: hold.hold_id.clone(),
                payment_method: card.to_owned(),
                email: Some(format!("fan{i}@example.org")),
            };
            if rng.below(12) == 0 {
                // A double submit: the same request again, at once, maybe to another region.
                let (w2, c2, r2, k2) = (w.clone(), customer.clone(), req.clone(), key.clone());
                let seed = derive(w.seed, "double", u64::from(i), u64::from(n));
                w.spawn_client(async move {
                    let rng = SeededRng::new(seed);
                    let _ = Self::checkout(&w2, &rng, &c2, &r2, &k2).await;
                });
            }
            match Self::checkout(w, rng, customer, &req, &key).await {
                Checkout::Declined if attempt < 2 && rng.below(2) == 0 => {
                    card = "pm_card_visa";
                    tokio::time::sleep(secs(between(rng, 1, 5))).await;
                }
                Checkout::Pending(order_id) => {
                    Self::poll(w, rng, customer, &order_id).await;
                    return true;
                }
                Checkout::GaveUp => return false,
                _ => return true,
            }
        }
        true
    }

    async fn checkout(
        w: &Arc<World>,
        rng: &SeededRng,
        customer: &CustomerId,
        req: &CheckoutRequest,
        key: &str,
    ) -> Checkout {
        let Ok(ikey) = IdempotencyKey::new(key) else { return Checkout::Refused };
        // A server error is retried once with the same key, as a client would.
        for _ in 0..2 {
            let result = with_failover(w, rng, 5, |orders| {
                let (c, r, k) = (customer.clone(), req.clone(), ikey.clone());
                async move { orders.checkout(&c, &r, &k).await }
            })
            .await;
            match result {
                None => return Checkout::GaveUp,
                Some(Ok(order)) => {
                    Self::saw(w, customer, key, &order);
                    return match order.state {
                        OrderState::PaymentPending => Checkout::Pending(order.order_id),
                        _ => Checkout::Done,
                    };
                }
                Some(Err(OrderError::PaymentDeclined { order_id, .. })) => {
                    let mut j = w.journal.lock();
                    j.declined.push(order_id.clone());
                    j.checkouts
                        .entry((customer.clone(), key.to_owned()))
                        .or_default()
                        .push((order_id, OrderState::Failed));
                    return Checkout::Declined;
                }
                Some(Err(OrderError::CheckoutInProgress(order_id))) => {
                    w.journal.lock().refused("checkout:CheckoutInProgress");
                    return Checkout::Pending(order_id);
                }
                Some(Err(e)) if e.is_client_error() => {
                    w.journal.lock().refused(format!("checkout:{}", code_of(&e)));
                    return Checkout::Refused;
                }
                Some(Err(e)) => {
                    w.journal.lock().refused(format!("checkout:{}", code_of(&e)));
                    tokio::time::sleep(secs(between(rng, 1, 5))).await;
                }
            }
        }
        Checkout::Refused
    }

    fn saw(w: &World, customer: &CustomerId, key: &str, order: &Order) {
        let mut j = w.journal.lock();
        j.checkouts
            .entry((customer.clone(), key.to_owned()))
            .or_default()
            .push((order.order_id.clone(), order.state));
        if order.state == OrderState::Completed {
            j.completed.insert(
                order.order_id.clone(),
                order.tickets.iter().map(|t| (t.ticket_id.clone(), t.qr.clone())).collect(),
            );
        }
    }

    /// Asks for a pending order until it settles (or the fan stops caring).
    async fn poll(w: &Arc<World>, rng: &SeededRng, customer: &CustomerId, order_id: &OrderId) {
        for _ in 0..15 {
            tokio::time::sleep(secs(between(rng, 5, 15))).await;
            let got = with_failover(w, rng, 3, |orders| {
                let (o, c) = (order_id.clone(), customer.clone());
                async move { orders.get_order(&o, &c).await }
            })
            .await;
            if let Some(Ok(order)) = got
                && order.state != OrderState::PaymentPending
            {
                if order.state == OrderState::Completed {
                    w.journal.lock().completed.insert(
                        order.order_id.clone(),
                        order.tickets.iter().map(|t| (t.ticket_id.clone(), t.qr.clone())).collect(),
                    );
                }
                return;
            }
        }
    }
}

enum Checkout {
    Done,
    Pending(OrderId),
    Declined,
    Refused,
    GaveUp,
}

#[async_trait::async_trait]
impl Workload for BuyersRace {
    fn name(&self) -> String {
        format!("BuyersRace{{buyers:{}}}", self.buyers)
    }

    fn start(&self, world: &Arc<World>) {
        for i in 0..self.buyers {
            world.spawn_client(Self::fan(world.clone(), i));
        }
    }

    fn check(&self, w: &World, s: &Snapshot, out: &mut Vec<Violation>) {
        let j = w.journal.lock();
        let mut fail = |invariant: &'static str, detail: String| {
            out.push(Violation { invariant, detail });
        };
        for (hold_id, customer) in &j.holds {
            match s.holds.get(hold_id) {
                None => fail(
                    "an acknowledged write is never lost",
                    format!("hold {hold_id} was acknowledged to {customer} but is not stored"),
                ),
                Some(h) if &h.customer_id != customer => fail(
                    "an acknowledged write is never lost",
                    format!(
                        "hold {hold_id} was acknowledged to {customer} but belongs to {}",
                        h.customer_id
                    ),
                ),
                Some(_) => {}
            }
        }
        for hold_id in &j.releases {
            if let Some(h) = s.holds.get(hold_id)
                && h.state != HoldState::Released
            {
                fail(
                    "an acknowledged write is never lost",
                    format!("hold {hold_id} was acknowledged released but is {:?}", h.state),
                );
            }
        }
        for ((customer, key), seen) in &j.checkouts {
            let first = &seen[0].0;
            if seen.iter().any(|(o, _)| o != first) {
                fail(
                    "one idempotency key, one order",
                    format!("{customer} with key {key} was answered with orders {seen:?}"),
                );
            }
            for (order_id, state) in seen {
                let stored = s.orders.get(order_id);
                let ok = match (state, stored.map(|o| o.state)) {
                    (_, None) => false,
                    (OrderState::Completed, Some(st)) => {
                        st == OrderState::Completed
                            || (st == OrderState::Refunded && j.refund_requests.contains(order_id))
                    }
                    (OrderState::Failed, Some(st)) => st == OrderState::Failed,
                    (OrderState::Refunded, Some(st)) => st == OrderState::Refunded,
                    (OrderState::PaymentPending, Some(_)) => true,
                };
                if !ok {
                    fail(
                        "an acknowledged write is never lost",
                        format!(
                            "order {order_id} was answered {state:?} but is stored as {:?}",
                            stored.map(|o| o.state)
                        ),
                    );
                }
            }
        }
        for order_id in &j.declined {
            if let Some(o) = s.orders.get(order_id)
                && o.state != OrderState::Failed
            {
                fail(
                    "a declined fan is not charged",
                    format!("order {order_id} was reported declined but is {:?}", o.state),
                );
            }
        }
        for order_id in j.completed.keys() {
            if let Some(o) = s.orders.get(order_id)
                && !(o.state == OrderState::Completed
                    || (o.state == OrderState::Refunded && j.refund_requests.contains(order_id)))
            {
                fail(
                    "an acknowledged write is never lost",
                    format!("order {order_id} was shown completed but is {:?}", o.state),
                );
            }
        }
    }
}

// ---- Refunds --------------------------------------------------------------------------

/// An operator refunds some completed orders while the sale goes on, sometimes twice at
/// once from two regions.
#[derive(Debug, Clone, Copy)]
pub struct Refunds {
    pub refunds: u32,
}

impl Refunds {
    async fn operator(w: Arc<World>, k: u32) {
        let rng = SeededRng::new(derive(w.seed, "refunds", u64::from(k), 0));
        tokio::time::sleep(secs(between(&rng, 20, 240))).await;
        let candidates: Vec<OrderId> = w.journal.lock().completed.keys().cloned().collect();
        if candidates.is_empty() {
            return;
        }
        let order_id = candidates[rng.below(candidates.len() as u64) as usize].clone();
        w.journal.lock().refund_requests.push(order_id.clone());
        if rng.below(6) == 0 {
            let (w2, o2) = (w.clone(), order_id.clone());
            let seed = derive(w.seed, "refund-twice", u64::from(k), 0);
            w.spawn_client(async move {
                let rng = SeededRng::new(seed);
                Self::refund(&w2, &rng, &o2).await;
            });
        }
        Self::refund(&w, &rng, &order_id).await;
    }

    async fn refund(w: &Arc<World>, rng: &SeededRng, order_id: &OrderId) {
        let got = with_failover(w, rng, 5, |orders| {
            let o = order_id.clone();
            async move { orders.refund(&o).await }
        })
        .await;
        match got {
            Some(Ok(order)) if order.state == OrderState::Refunded => {
                w.journal.lock().refunds.push(order.order_id)
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => w.journal.lock().refused(format!("refund:{}", code_of(&e))),
            None => {}
        }
    }
}

#[async_trait::async_trait]
impl Workload for Refunds {
    fn name(&self) -> String {
        format!("Refunds{{refunds:{}}}", self.refunds)
    }

    fn start(&self, world: &Arc<World>) {
        for k in 0..self.refunds {
            world.spawn_client(Self::operator(world.clone(), k));
        }
    }

    fn check(&self, w: &World, s: &Snapshot, out: &mut Vec<Violation>) {
        let j = w.journal.lock();
        for order_id in &j.refunds {
            match s.orders.get(order_id) {
                Some(o) if o.state == OrderState::Refunded => {}
                other => out.push(Violation {
                    invariant: "an acknowledged write is never lost",
                    detail: format!(
                        "refund of {order_id} was acknowledged but the order is {:?}",
                        other.map(|o| o.state)
                    ),
                }),
            }
        }
    }
}

// ---- Checkins -------------------------------------------------------------------------

/// Gates scan tickets of completed orders concurrently: some tickets twice in a row, some at
/// two gates at the same moment.
#[derive(Debug, Clone, Copy)]
pub struct Checkins {
    pub gates: u32,
    pub scans: u32,
}

impl Checkins {
    async fn scan(w: Arc<World>, k: u32, gates: u32) {
        let rng = SeededRng::new(derive(w.seed, "scan", u64::from(k), 0));
        tokio::time::sleep(secs(between(&rng, 30, 300))).await;
        let tickets: Vec<(tessera_api::TicketId, String)> = {
            let j = w.journal.lock();
            if rng.below(5) == 0 && !j.admissions.is_empty() {
                // Someone shows a ticket that was already used.
                let (t, _, _) = &j.admissions[rng.below(j.admissions.len() as u64) as usize];
                j.completed.values().flatten().filter(|(id, _)| id == t).cloned().collect()
            } else {
                j.completed.values().flatten().cloned().collect()
            }
        };
        if tickets.is_empty() {
            return;
        }
        let (_, qr) = tickets[rng.below(tickets.len() as u64) as usize].clone();
        let gate = format!("gate-{}", rng.below(u64::from(gates.max(1))));
        if rng.below(8) == 0 {
            let (w2, qr2) = (w.clone(), qr.clone());
            let other = format!("gate-{}", rng.below(u64::from(gates.max(1))) + u64::from(gates));
            let seed = derive(w.seed, "scan-twice", u64::from(k), 0);
            w.spawn_client(async move {
                let rng = SeededRng::new(seed);
                Self::admit(&w2, &rng, &qr2, &other).await;
            });
        }
        Self::admit(&w, &rng, &qr, &gate).await;
    }

    async fn admit(w: &Arc<World>, rng: &SeededRng, qr: &str, gate: &str) {
        let got = with_failover(w, rng, 3, |orders| {
            let (qr, gate) = (qr.to_owned(), gate.to_owned());
            async move { orders.checkin(&qr, &gate).await }
        })
        .await;
        match got {
            Some(Ok(r)) => {
                tracing::info!(
                    target: "sim.gate",
                    at_ms = w.sched.elapsed_ms(),
                    "{} admitted at {gate} (recorded at {} {})",
                    r.ticket_id,
                    r.gate,
                    r.admitted_at_ms
                );
                w.journal.lock().admissions.push((r.ticket_id, r.gate, r.admitted_at_ms))
            }
            Some(Err(e)) => w.journal.lock().refused(format!("checkin:{}", code_of(&e))),
            None => {}
        }
    }
}

#[async_trait::async_trait]
impl Workload for Checkins {
    fn name(&self) -> String {
        format!("Checkins{{gates:{},scans:{}}}", self.gates, self.scans)
    }

    fn start(&self, world: &Arc<World>) {
        for k in 0..self.scans {
            world.spawn_client(Self::scan(world.clone(), k, self.gates));
        }
    }

    fn check(&self, w: &World, s: &Snapshot, out: &mut Vec<Violation>) {
        let j = w.journal.lock();
        let mut seen: std::collections::BTreeMap<&tessera_api::TicketId, u32> = Default::default();
        for (ticket, gate, at) in &j.admissions {
            *seen.entry(ticket).or_default() += 1;
            match s.tickets.get(ticket) {
                Some(t)
                    if t.gate.as_deref() == Some(gate.as_str())
                        && t.checked_in_at_ms == Some(*at) => {}
                other => out.push(Violation {
                    invariant: "an acknowledged write is never lost",
                    detail: format!(
                        "ticket {ticket} was admitted at {gate} at {at} but the record says {:?}",
                        other.map(|t| (&t.gate, t.checked_in_at_ms))
                    ),
                }),
            }
        }
        for (ticket, n) in seen {
            if n > 1 {
                let answers: std::collections::BTreeSet<(&String, u64)> = j
                    .admissions
                    .iter()
                    .filter(|(t, _, _)| t == ticket)
                    .map(|(_, gate, at)| (gate, *at))
                    .collect();
                let how = if answers.len() == 1 {
                    // Every scan was answered with the one stored check-in: the later scans
                    // took another scanner's write at the same gate for their own.
                    "at one gate, all answered with one stored check-in"
                } else {
                    "with different check-ins"
                };
                out.push(Violation {
                    invariant: "a ticket is checked in at most once",
                    detail: format!("ticket {ticket} was admitted {n} times {how}: {answers:?}"),
                });
            }
        }
    }
}
