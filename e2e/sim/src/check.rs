//! The invariants, checked from the raw store records and the provider's ledger, never
//! through the APIs under test.

use std::collections::{BTreeMap, BTreeSet};

use foundationdb_tuple::{Element, Subspace};
use sha2::Digest as _;
use tessera_api::bus::BusEventBody;
use tessera_api::inventory::HoldState;
use tessera_api::orders::OrderState;
use tessera_api::{HoldId, OrderId, TicketId};
use tessera_fdb_schema::values::{
    self, HoldRecord, IdempotencyRecord, OrderRecord, OutboxRecord, PoolRecord, SagaStep,
    SectionRecord, TicketRecord, TicketState,
};
use tessera_fdb_schema::{Keyspace, SeatState, SeatStatus};
use tessera_payments::PaymentStatus;
use tessera_store::memory::MemoryStore;
use tessera_store::{RangeRequest, Store, Transaction, decode_i64};

use crate::provider::LedgerView;
use crate::world::{Violation, World};

/// The root every key lives under (`Keyspace::production`).
fn root() -> Subspace {
    Subspace::all().subspace(&"tsr")
}

/// Every record of the store, decoded.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// SHA-256 of every key and value, in key order.
    pub digest: Vec<u8>,
    pub sections: BTreeMap<(String, String), SectionRecord>,
    pub pools: BTreeMap<(String, String), PoolRecord>,
    /// (event, seat id) → state.
    pub seats: BTreeMap<(String, String), SeatState>,
    /// (event, pool, shard) → places taken.
    pub shards: BTreeMap<(String, String, i64), i64>,
    /// (event, "s"|"p", section or pool, "held"|"sold") → count.
    pub tallies: BTreeMap<(String, String, String, String), i64>,
    /// (event, customer) → places counted against the customer's limit.
    pub customer_tallies: BTreeMap<(String, String), i64>,
    pub holds: BTreeMap<HoldId, HoldRecord>,
    pub expiry_index: Vec<(i64, String)>,
    pub orders: BTreeMap<OrderId, OrderRecord>,
    pub pending: Vec<String>,
    pub tickets: BTreeMap<TicketId, TicketRecord>,
    /// (scope, customer, key) → record.
    pub idempotency: BTreeMap<(String, String, String), IdempotencyRecord>,
    /// Outbox entries in commit order: (versionstamp, region, record).
    pub outbox: Vec<([u8; 12], String, OutboxRecord)>,
}

fn text(e: Option<&Element>) -> String {
    match e {
        Some(Element::String(s)) => s.to_string(),
        Some(Element::Int(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn int(e: Option<&Element>) -> i64 {
    match e {
        Some(Element::Int(i)) => *i,
        _ => i64::MIN,
    }
}

impl Snapshot {
    /// Reads every record straight from the memory store under the simulation.
    pub async fn read(raw: &MemoryStore) -> (Snapshot, Vec<Violation>) {
        let mut s = Snapshot::default();
        let mut bad = Vec::new();
        let mut corrupt = |what: &str, e: String| {
            bad.push(Violation { invariant: "records decode", detail: format!("{what}: {e}") });
        };
        let rows = match raw.create_trx() {
            Ok(trx) => {
                let (b, e) = root().range();
                trx.get_range(&RangeRequest::new(b, e), true).await
            }
            Err(e) => Err(e),
        };
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                corrupt("read the store", e.to_string());
                return (s, bad);
            }
        };
        let mut digest = sha2::Sha256::new();
        for (k, v) in &rows {
            digest.update((k.len() as u64).to_le_bytes());
            digest.update(k);
            digest.update((v.len() as u64).to_le_bytes());
            digest.update(v);
            let elems: Vec<Element> = match root().unpack(k) {
                Ok(e) => e,
                Err(e) => {
                    corrupt("unpack a key", format!("{e:?}"));
                    continue;
                }
            };
            let kind = text(elems.first());
            macro_rules! rec {
                ($t:ty) => {
                    match values::decode::<$t>(v) {
                        Ok(r) => r,
                        Err(e) => {
                            corrupt(&kind, e.to_string());
                            continue;
                        }
                    }
                };
            }
            match kind.as_str() {
                "sec" => {
                    s.sections
                        .insert((text(elems.get(1)), text(elems.get(2))), rec!(SectionRecord));
                }
                "pool" => {
                    s.pools.insert((text(elems.get(1)), text(elems.get(2))), rec!(PoolRecord));
                }
                "seat" => {
                    let state = match SeatState::decode(v) {
                        Ok(st) => st,
                        Err(e) => {
                            corrupt("seat", e.to_string());
                            continue;
                        }
                    };
                    let seat = format!(
                        "{}-{}-{}",
                        text(elems.get(2)),
                        text(elems.get(3)),
                        int(elems.get(4))
                    );
                    s.seats.insert((text(elems.get(1)), seat), state);
                }
                "gas" => {
                    s.shards.insert(
                        (text(elems.get(1)), text(elems.get(2)), int(elems.get(3))),
                        decode_i64(v),
                    );
                }
                "tally" => {
                    s.tallies.insert(
                        (
                            text(elems.get(1)),
                            text(elems.get(2)),
                            text(elems.get(3)),
                            text(elems.get(4)),
                        ),
                        decode_i64(v),
                    );
                }
                "cev" => {
                    s.customer_tallies
                        .insert((text(elems.get(1)), text(elems.get(2))), decode_i64(v));
                }
                "hold" => {
                    let r = rec!(HoldRecord);
                    s.holds.insert(r.hold_id.clone(), r);
                }
                "hexp" => s.expiry_index.push((int(elems.get(1)), text(elems.get(2)))),
                "ord" => {
                    let r = rec!(OrderRecord);
                    s.orders.insert(r.order_id.clone(), r);
                }
                "opend" => s.pending.push(text(elems.get(1))),
                "tkt" => {
                    let r = rec!(TicketRecord);
                    s.tickets.insert(r.ticket_id.clone(), r);
                }
                "idem" => {
                    s.idempotency.insert(
                        (text(elems.get(1)), text(elems.get(2)), text(elems.get(3))),
                        rec!(IdempotencyRecord),
                    );
                }
                "out" => {
                    let stamp = match elems.get(2) {
                        Some(Element::Versionstamp(vs)) => *vs.as_bytes(),
                        _ => {
                            corrupt("outbox key", "no versionstamp".into());
                            continue;
                        }
                    };
                    s.outbox.push((stamp, text(elems.get(1)), rec!(OutboxRecord)));
                }
                _ => {}
            }
        }
        s.outbox.sort_by_key(|e| e.0);
        s.digest = digest.finalize().to_vec();
        (s, bad)
    }
}

/// Orders pending, holds live and expiry index entries left, read from the raw store.
pub(crate) async fn unsettled(raw: &MemoryStore, keys: &Keyspace) -> (usize, usize, usize) {
    let Ok(trx) = raw.create_trx() else { return (usize::MAX, 0, 0) };
    let count = |range: (Vec<u8>, Vec<u8>)| {
        let trx = trx.clone();
        async move {
            trx.get_range(&RangeRequest::new(range.0, range.1), true).await.unwrap_or_default()
        }
    };
    let pending = count(keys.pending_orders()).await.len();
    let index = count(root().subspace(&("hexp",)).range()).await.len();
    let live = count(root().subspace(&("hold",)).range())
        .await
        .iter()
        .filter(|(_, v)| {
            values::decode::<HoldRecord>(v)
                .map(|h| matches!(h.state, HoldState::Active | HoldState::PaymentPending))
                .unwrap_or(false)
        })
        .count();
    (pending, live, index)
}

struct Out<'a>(&'a mut Vec<Violation>);

impl Out<'_> {
    fn fail(&mut self, invariant: &'static str, detail: impl Into<String>) {
        self.0.push(Violation { invariant, detail: detail.into() });
    }
}

/// Every invariant of the core, after quiescence.
pub fn check_all(w: &World, s: &Snapshot, ledger: &LedgerView, out: &mut Vec<Violation>) {
    let mut out = Out(out);
    let ev = w.venue.event_id.as_str().to_owned();
    seats_and_sections(w, s, &ev, &mut out);
    general_admission(s, &ev, &mut out);
    holds(w, s, &mut out);
    outbox(s, &mut out);
    orders_and_money(s, ledger, &mut out);
    tickets(s, &mut out);
    history(w, s, &mut out);
}

/// A seat is sold at most once, to a completed order; held + sold + free == capacity and the
/// tallies agree with the seats.
fn seats_and_sections(w: &World, s: &Snapshot, ev: &str, out: &mut Out<'_>) {
    let mut held: BTreeMap<String, i64> = BTreeMap::new();
    let mut sold: BTreeMap<String, i64> = BTreeMap::new();
    let mut free: BTreeMap<String, i64> = BTreeMap::new();
    let mut other: BTreeMap<String, i64> = BTreeMap::new();
    for ((event, seat), st) in &s.seats {
        if event != ev {
            continue;
        }
        let section = seat.split('-').next().unwrap_or_default().to_owned();
        match st.status {
            SeatStatus::Free => *free.entry(section).or_default() += 1,
            SeatStatus::Held => {
                *held.entry(section).or_default() += 1;
                let holder = HoldId::parse(&st.owner).ok().and_then(|h| s.holds.get(&h));
                out.fail(
                    "an ended hold frees its seats",
                    format!(
                        "seat {seat} is still held by {} ({:?}) after quiescence",
                        st.owner,
                        holder.map(|h| h.state)
                    ),
                );
            }
            SeatStatus::Sold => {
                *sold.entry(section).or_default() += 1;
                let order = OrderId::parse(&st.owner).ok().and_then(|o| s.orders.get(&o));
                match order {
                    None => out.fail(
                        "a sold seat belongs to a completed order",
                        format!("seat {seat} is sold to {}, which does not exist", st.owner),
                    ),
                    Some(o) => {
                        if o.state != OrderState::Completed {
                            out.fail(
                                "a sold seat belongs to a completed order",
                                format!(
                                    "seat {seat} is sold to {} which is {:?}",
                                    o.order_id, o.state
                                ),
                            );
                        }
                        if !o.seats.iter().any(|x| x.to_string() == *seat) {
                            out.fail(
                                "a sold seat belongs to a completed order",
                                format!(
                                    "seat {seat} is sold to {}, which did not buy it",
                                    o.order_id
                                ),
                            );
                        }
                    }
                }
            }
            SeatStatus::Unavailable => *other.entry(section).or_default() += 1,
        }
    }
    for section in &w.venue.sections {
        let id = section.section_id.to_string();
        let capacity: i64 = section.rows.iter().map(|(_, n)| i64::from(*n)).sum();
        let (h, so, f, o) = (
            held.get(&id).copied().unwrap_or(0),
            sold.get(&id).copied().unwrap_or(0),
            free.get(&id).copied().unwrap_or(0),
            other.get(&id).copied().unwrap_or(0),
        );
        if h + so + f + o != capacity {
            out.fail(
                "held + sold + free == capacity",
                format!(
                    "section {id}: {h} held + {so} sold + {f} free + {o} off sale != {capacity}"
                ),
            );
        }
        let tally = |t: &str| {
            s.tallies.get(&(ev.to_owned(), "s".into(), id.clone(), t.into())).copied().unwrap_or(0)
        };
        if tally("held") != h || tally("sold") != so {
            out.fail(
                "tallies agree with the seats",
                format!(
                    "section {id}: tallies say {} held and {} sold, the seats {h} and {so}",
                    tally("held"),
                    tally("sold")
                ),
            );
        }
    }
}

fn counts(state: HoldState) -> bool {
    matches!(state, HoldState::Active | HoldState::PaymentPending | HoldState::Confirmed)
}

/// A pool never sells past its capacity; its shards carry exactly the places of the holds
/// that still count.
fn general_admission(s: &Snapshot, ev: &str, out: &mut Out<'_>) {
    for ((event, pool_id), pool) in &s.pools {
        if event != ev {
            continue;
        }
        let mut taken = 0i64;
        for (i, cap) in pool.shard_capacity.iter().enumerate() {
            let t = s.shards.get(&(event.clone(), pool_id.clone(), i as i64)).copied().unwrap_or(0);
            if t < 0 || t > i64::from(*cap) {
                out.fail(
                    "a pool never sells past its capacity",
                    format!("pool {pool_id} shard {i} has {t} places taken of {cap}"),
                );
            }
            taken += t;
        }
        let of_pool = |st: &dyn Fn(HoldState) -> bool| -> i64 {
            s.holds
                .values()
                .filter(|h| h.pool.as_ref().map(|p| p.as_str()) == Some(pool_id.as_str()))
                .filter(|h| st(h.state))
                .map(|h| i64::from(h.quantity))
                .sum()
        };
        let counting = of_pool(&counts);
        let confirmed = of_pool(&|st| st == HoldState::Confirmed);
        let live = of_pool(&|st| matches!(st, HoldState::Active | HoldState::PaymentPending));
        if taken != counting {
            out.fail(
                "pool shards carry exactly the counting holds",
                format!(
                    "pool {pool_id}: shards say {taken} taken, holds that count sum to {counting}"
                ),
            );
        }
        if confirmed > i64::from(pool.capacity) || taken > i64::from(pool.capacity) {
            out.fail(
                "a pool never sells past its capacity",
                format!(
                    "pool {pool_id}: {confirmed} sold, {taken} taken, capacity {}",
                    pool.capacity
                ),
            );
        }
        let sold_orders: i64 = s
            .orders
            .values()
            .filter(|o| o.state == OrderState::Completed)
            .filter(|o| o.pool.as_ref().map(|p| p.as_str()) == Some(pool_id.as_str()))
            .map(|o| i64::from(o.quantity))
            .sum();
        if sold_orders != confirmed {
            out.fail(
                "every completed order's places are sold to it",
                format!("pool {pool_id}: completed orders hold {sold_orders} places, confirmed holds {confirmed}"),
            );
        }
        let tally = |t: &str| {
            s.tallies
                .get(&(ev.to_owned(), "p".into(), pool_id.clone(), t.into()))
                .copied()
                .unwrap_or(0)
        };
        if tally("held") != live || tally("sold") != confirmed {
            out.fail(
                "tallies agree with the holds",
                format!(
                    "pool {pool_id}: tallies say {} held and {} sold, the holds {live} and {confirmed}",
                    tally("held"),
                    tally("sold")
                ),
            );
        }
    }
}

/// Every hold ended either honoured (confirmed, its seats sold to its completed order) or
/// released / expired (owning nothing), never both; per-customer tallies agree.
fn holds(w: &World, s: &Snapshot, out: &mut Out<'_>) {
    let mut per_customer: BTreeMap<(String, String), i64> = BTreeMap::new();
    for h in s.holds.values() {
        if counts(h.state) {
            *per_customer
                .entry((h.event_id.to_string(), h.customer_id.to_string()))
                .or_default() += i64::from(h.quantity);
        }
        match h.state {
            HoldState::Active | HoldState::PaymentPending => out.fail(
                "every hold ends",
                format!("hold {} is still {:?} after quiescence", h.hold_id, h.state),
            ),
            HoldState::Confirmed => {
                let order = h.order_id.as_ref().and_then(|o| s.orders.get(o));
                match order {
                    Some(o) if o.state == OrderState::Completed && o.hold_id == h.hold_id => {}
                    Some(o) => out.fail(
                        "a confirmed hold belongs to a completed order",
                        format!(
                            "hold {} is confirmed for {} which is {:?}",
                            h.hold_id, o.order_id, o.state
                        ),
                    ),
                    None => out.fail(
                        "a confirmed hold belongs to a completed order",
                        format!(
                            "hold {} is confirmed for a missing order {:?}",
                            h.hold_id, h.order_id
                        ),
                    ),
                }
                for seat in &h.seats {
                    let st = s.seats.get(&(h.event_id.to_string(), seat.to_string()));
                    let owned = st.is_some_and(|st| {
                        st.status == SeatStatus::Sold
                            && h.order_id.as_ref().is_some_and(|o| st.owner == o.as_str())
                    });
                    if !owned {
                        out.fail(
                            "every completed order's seats are sold to it",
                            format!("seat {seat} of confirmed hold {} is {:?}", h.hold_id, st),
                        );
                    }
                }
            }
            HoldState::Released | HoldState::Expired => {
                for seat in &h.seats {
                    if let Some(st) = s.seats.get(&(h.event_id.to_string(), seat.to_string())) {
                        let ours = st.owner == h.hold_id.as_str()
                            || h.order_id.as_ref().is_some_and(|o| st.owner == o.as_str());
                        if st.status != SeatStatus::Free && ours {
                            out.fail(
                                "a hold is honoured or released, never both",
                                format!(
                                    "hold {} is {:?} but seat {seat} is still {:?} for it",
                                    h.hold_id, h.state, st.status
                                ),
                            );
                        }
                    }
                }
                if let Some(o) = h.order_id.as_ref().and_then(|o| s.orders.get(o))
                    && o.state == OrderState::Completed
                {
                    out.fail(
                        "a hold is honoured or released, never both",
                        format!(
                            "hold {} is {:?} but its order {} is completed",
                            h.hold_id, h.state, o.order_id
                        ),
                    );
                }
            }
        }
    }
    for o in s.orders.values() {
        if o.state == OrderState::Completed {
            match s.holds.get(&o.hold_id) {
                Some(h)
                    if h.state == HoldState::Confirmed
                        && h.order_id.as_ref() == Some(&o.order_id) => {}
                other => out.fail(
                    "a completed order's hold is confirmed for it",
                    format!(
                        "order {} is completed but its hold is {:?}",
                        o.order_id,
                        other.map(|h| (h.state, &h.order_id))
                    ),
                ),
            }
        }
    }
    let limit = i64::from(w.venue.max_tickets_per_customer);
    let mut keys: BTreeSet<&(String, String)> = per_customer.keys().collect();
    keys.extend(s.customer_tallies.keys());
    for k in keys {
        let want = per_customer.get(k).copied().unwrap_or(0);
        let have = s.customer_tallies.get(k).copied().unwrap_or(0);
        if want != have {
            out.fail(
                "per-customer tallies agree with the holds",
                format!("customer {} of {}: tally {have}, holds that count {want}", k.1, k.0),
            );
        }
        if want > limit {
            out.fail(
                "the per-customer limit holds",
                format!("customer {} has {want} > {limit}", k.1),
            );
        }
    }
    if !s.expiry_index.is_empty() {
        out.fail(
            "the expiry index is empty once every hold ended",
            format!("{} entries left, first {:?}", s.expiry_index.len(), s.expiry_index.first()),
        );
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct HoldEvents {
    held: u32,
    released: u32,
    sold: u32,
    returned: u32,
}

#[derive(Debug, Default, Clone, Copy)]
struct OrderEvents {
    completed: u32,
    failed: u32,
    refunded: u32,
}

/// Every change others must learn about is in the outbox exactly once, and the outbox tells
/// the same story as the records.
fn outbox(s: &Snapshot, out: &mut Out<'_>) {
    let mut holds: BTreeMap<String, HoldEvents> = BTreeMap::new();
    let mut orders: BTreeMap<String, OrderEvents> = BTreeMap::new();
    for (_, _, rec) in &s.outbox {
        match &rec.body {
            BusEventBody::SeatsHeld { hold_id, .. } => {
                holds.entry(hold_id.to_string()).or_default().held += 1
            }
            BusEventBody::HoldReleased { hold_id, .. } => {
                holds.entry(hold_id.to_string()).or_default().released += 1
            }
            BusEventBody::SeatsSold { hold_id, .. } => {
                holds.entry(hold_id.to_string()).or_default().sold += 1
            }
            BusEventBody::SeatsReturned { order_id, .. } => {
                if let Some(o) = s.orders.get(order_id) {
                    holds.entry(o.hold_id.to_string()).or_default().returned += 1
                }
            }
            BusEventBody::OrderCompleted { order_id, .. } => {
                orders.entry(order_id.to_string()).or_default().completed += 1
            }
            BusEventBody::OrderFailed { order_id, .. } => {
                orders.entry(order_id.to_string()).or_default().failed += 1
            }
            BusEventBody::OrderRefunded { order_id, .. } => {
                orders.entry(order_id.to_string()).or_default().refunded += 1
            }
            BusEventBody::EventChanged { .. } | BusEventBody::HoldExpiring { .. } => {}
        }
    }
    for (id, e) in &holds {
        let Some(h) = HoldId::parse(id).ok().and_then(|h| s.holds.get(&h)) else {
            out.fail(
                "published events match the records",
                format!("events for unknown hold {id}: {e:?}"),
            );
            continue;
        };
        let ok = e.held == 1
            && match h.state {
                HoldState::Confirmed => e.sold == 1 && e.returned == 0 && e.released == 0,
                HoldState::Released => {
                    (e.released == 1 && e.sold == 0 && e.returned == 0)
                        || (e.sold == 1 && e.returned == 1 && e.released == 0)
                }
                HoldState::Expired => e.released == 1 && e.sold == 0 && e.returned == 0,
                HoldState::Active | HoldState::PaymentPending => {
                    e.released == 0 && e.sold == 0 && e.returned == 0
                }
            };
        if !ok {
            out.fail(
                "every hold change is published exactly once",
                format!("hold {id} is {:?} and published {e:?}; {}", h.state, describe_hold(s, h)),
            );
        }
    }
    for h in s.holds.keys() {
        if !holds.contains_key(h.as_str()) {
            out.fail(
                "every hold change is published exactly once",
                format!("hold {h} was never published"),
            );
        }
    }
    for o in s.orders.values() {
        let e = orders.get(o.order_id.as_str()).copied().unwrap_or_default();
        let ok = match o.state {
            OrderState::Completed => e.completed == 1 && e.failed == 0 && e.refunded == 0,
            OrderState::Refunded => e.completed == 1 && e.refunded == 1 && e.failed == 0,
            OrderState::Failed => e.completed == 0 && e.failed + e.refunded == 1,
            OrderState::PaymentPending => e.completed + e.failed + e.refunded == 0,
        };
        if !ok {
            out.fail(
                "every order change is published exactly once",
                format!("order {} is {:?} and published {e:?}", o.order_id, o.state),
            );
        }
    }
}

/// Idempotency, and money: no charge without a completed order, no completed order without
/// exactly one capture, refunds give everything back, no authorization left open.
fn orders_and_money(s: &Snapshot, ledger: &LedgerView, out: &mut Out<'_>) {
    let mut by_key: BTreeMap<(String, String), Vec<&OrderId>> = BTreeMap::new();
    for o in s.orders.values() {
        by_key
            .entry((o.customer_id.to_string(), o.idempotency_key.clone()))
            .or_default()
            .push(&o.order_id);
        if o.step != SagaStep::Done || o.state == OrderState::PaymentPending {
            out.fail(
                "every order settles",
                format!(
                    "{} is still at step {:?} after quiescence",
                    describe_order(s, ledger, o.order_id.as_str()),
                    o.step
                ),
            );
        }
    }
    for ((customer, key), ids) in &by_key {
        if ids.len() > 1 {
            out.fail(
                "one idempotency key, one order",
                format!("customer {customer} key {key}: orders {ids:?}"),
            );
        }
    }
    for ((scope, customer, key), rec) in &s.idempotency {
        if scope == "hold" {
            let id = rec.response.get("hold_id").and_then(|v| v.as_str()).unwrap_or_default();
            let found = HoldId::parse(id).ok().and_then(|id| s.holds.get(&id));
            if found.is_none_or(|h| h.customer_id.as_str() != customer) {
                out.fail(
                    "one idempotency key, one hold",
                    format!("hold key {key} of {customer} answers {id}, which is not its hold"),
                );
            }
            continue;
        }
        if scope != "checkout" {
            continue;
        }
        let id = rec.response.get("order_id").and_then(|v| v.as_str()).unwrap_or_default();
        let found = OrderId::parse(id).ok().and_then(|id| s.orders.get(&id));
        match found {
            Some(o) if o.customer_id.as_str() == customer && o.idempotency_key == *key => {}
            _ => out.fail(
                "one idempotency key, one order",
                format!("checkout key {key} of {customer} answers {id}, which is not its order"),
            ),
        }
    }
    for id in &s.pending {
        // Pending orders that are not done are reported above; an index entry for a done
        // order is a leak of its own.
        if let Some(o) = OrderId::parse(id).ok().and_then(|id| s.orders.get(&id))
            && o.step == SagaStep::Done
        {
            out.fail(
                "every order settles",
                format!("order {id} is done but still in the pending index"),
            );
        }
    }

    let mut payments_of: BTreeMap<&str, Vec<&crate::provider::PaymentRecord>> = BTreeMap::new();
    for p in ledger.payments.values() {
        let order = p.payment.order_id.as_deref().unwrap_or_default();
        payments_of.entry(order).or_default().push(p);
        if p.captures > 1 {
            out.fail(
                "a payment is captured at most once",
                format!("{} captured {} times", p.payment.id, p.captures),
            );
        }
        if p.payment.status == PaymentStatus::RequiresCapture {
            out.fail(
                "no authorization is left open",
                format!(
                    "payment {} (created at {} s) still holds {} on the card after quiescence; {}",
                    p.payment.id,
                    p.payment.created_s,
                    p.payment.amount_capturable_minor,
                    describe_order(s, ledger, order)
                ),
            );
        }
        let o = OrderId::parse(order).ok().and_then(|id| s.orders.get(&id));
        if p.payment.net_charged_minor() > 0 {
            match o {
                Some(o)
                    if o.state == OrderState::Completed
                        && o.payment_id.as_deref() == Some(p.payment.id.as_str()) => {}
                _ => out.fail(
                    "no charge without a completed order",
                    format!(
                        "payment {} charged {}: {}",
                        p.payment.id,
                        p.payment.net_charged_minor(),
                        describe_order(s, ledger, order)
                    ),
                ),
            }
        }
        if o.is_none() {
            out.fail(
                "every payment has its order",
                format!("payment {} names unknown order {order}", p.payment.id),
            );
        }
    }
    for (order, ps) in &payments_of {
        let holding = ps.iter().filter(|p| p.ever_held_funds).count();
        if holding > 1 {
            out.fail(
                "one idempotency key, one charge",
                format!("order {order} had {holding} payments holding funds"),
            );
        }
    }
    for o in s.orders.values() {
        let ps = payments_of.get(o.order_id.as_str()).cloned().unwrap_or_default();
        let net: u64 = ps.iter().map(|p| p.payment.net_charged_minor()).sum();
        match o.state {
            OrderState::Completed => {
                let captured: Vec<_> = ps.iter().filter(|p| p.captures > 0).collect();
                if captured.len() != 1 || net != o.amount_minor {
                    out.fail(
                        "a completed order was captured exactly once",
                        format!(
                            "order {} ({} due): {} captured payments, {net} charged",
                            o.order_id,
                            o.amount_minor,
                            captured.len()
                        ),
                    );
                }
                let want =
                    o.seats.len().max(if o.pool.is_some() { o.quantity as usize } else { 0 });
                if o.tickets.len() != want {
                    out.fail(
                        "a completed order has its tickets",
                        format!(
                            "order {} has {} tickets for {want} places",
                            o.order_id,
                            o.tickets.len()
                        ),
                    );
                }
            }
            OrderState::Refunded | OrderState::Failed => {
                if net != 0 {
                    out.fail(
                        "a refunded or failed order keeps no money",
                        format!(
                            "order {} is {:?} ({:?}) with {net} charged",
                            o.order_id, o.state, o.failure_code
                        ),
                    );
                }
                for seat in &o.seats {
                    if let Some(st) = s.seats.get(&(o.event_id.to_string(), seat.to_string()))
                        && st.status == SeatStatus::Sold
                        && st.owner == o.order_id.as_str()
                    {
                        out.fail(
                            "a refunded order's seats are free",
                            format!(
                                "seat {seat} is still sold to {:?} order {}",
                                o.state, o.order_id
                            ),
                        );
                    }
                }
            }
            OrderState::PaymentPending => {}
        }
    }
}

/// One line about a hold and the orders made from it, for violation reports.
fn describe_hold(s: &Snapshot, h: &HoldRecord) -> String {
    let orders: Vec<String> = s
        .orders
        .values()
        .filter(|o| o.hold_id == h.hold_id)
        .map(|o| {
            format!("{} {:?} {:?} via {}", o.order_id, o.state, o.failure_code, o.payment_method)
        })
        .collect();
    format!(
        "{} seat(s), pool {:?}, created at {} s, expires at {} s; orders [{}]",
        h.seats.len(),
        h.pool,
        h.created_at_ms / 1000,
        h.expires_at_ms / 1000,
        orders.join("; ")
    )
}

/// One line about an order and its payments, for violation reports.
fn describe_order(s: &Snapshot, ledger: &LedgerView, order: &str) -> String {
    let Some(o) = OrderId::parse(order).ok().and_then(|id| s.orders.get(&id)) else {
        return format!("order {order} does not exist");
    };
    let payments: Vec<String> = ledger
        .payments
        .values()
        .filter(|p| p.payment.order_id.as_deref() == Some(order))
        .map(|p| format!("{} {} via {}", p.payment.id, p.payment.status.as_str(), p.payment_method))
        .collect();
    let events: Vec<String> = s
        .outbox
        .iter()
        .filter(|(_, _, r)| match &r.body {
            BusEventBody::OrderCompleted { order_id, .. }
            | BusEventBody::OrderFailed { order_id, .. }
            | BusEventBody::OrderRefunded { order_id, .. }
            | BusEventBody::SeatsSold { order_id, .. }
            | BusEventBody::SeatsReturned { order_id, .. } => order_id.as_str() == order,
            _ => false,
        })
        .map(|(_, region, r)| format!("{}@{region}", r.body.kind()))
        .collect();
    format!(
        "order {order} is {:?} (failure {:?}, payment {:?}, created at {} s, updated at {} s, {} reconciliations, card {}, published [{}]); provider has [{}]",
        o.state,
        o.failure_code,
        o.payment_id,
        o.created_at_ms / 1000,
        o.updated_at_ms / 1000,
        o.attempts,
        o.payment_method,
        events.join(", "),
        payments.join("; ")
    )
}

/// Tickets belong to their orders; refunded orders' tickets no longer admit.
fn tickets(s: &Snapshot, out: &mut Out<'_>) {
    for t in s.tickets.values() {
        let Some(o) = s.orders.get(&t.order_id) else {
            out.fail(
                "tickets belong to orders",
                format!("ticket {} names unknown order {}", t.ticket_id, t.order_id),
            );
            continue;
        };
        if !o.tickets.contains(&t.ticket_id) {
            out.fail(
                "tickets belong to orders",
                format!("ticket {} is not listed by order {}", t.ticket_id, o.order_id),
            );
        }
        let want = match o.state {
            OrderState::Completed => TicketState::Valid,
            _ => TicketState::Revoked,
        };
        if t.state != want {
            out.fail(
                "tickets admit exactly while their order stands",
                format!("ticket {} is {:?} for a {:?} order", t.ticket_id, t.state, o.state),
            );
        }
        if t.checked_in_at_ms.is_some() != t.gate.is_some() {
            out.fail(
                "a ticket is checked in at most once",
                format!("ticket {} has a half-written check-in", t.ticket_id),
            );
        }
    }
    for o in s.orders.values() {
        for t in &o.tickets {
            if !s.tickets.contains_key(t) {
                out.fail(
                    "tickets belong to orders",
                    format!("order {} lists missing ticket {t}", o.order_id),
                );
            }
        }
    }
}

/// Replays the outbox in commit order: no seat is ever sold twice without being returned in
/// between, and a pool never has more places out than its capacity.
fn history(w: &World, s: &Snapshot, out: &mut Out<'_>) {
    let mut sold_to: BTreeMap<String, String> = BTreeMap::new();
    let mut places: BTreeMap<String, i64> = BTreeMap::new();
    let capacity: BTreeMap<String, i64> =
        w.venue.pools.iter().map(|(p, c)| (p.to_string(), i64::from(*c))).collect();
    for (stamp, _, rec) in &s.outbox {
        if rec.event_id != w.venue.event_id {
            continue;
        }
        match &rec.body {
            BusEventBody::SeatsSold { order_id, seats, .. } => {
                for seat in seats {
                    if let Some(prev) = sold_to.insert(seat.to_string(), order_id.to_string()) {
                        out.fail(
                            "a seat is sold at most once",
                            format!(
                                "seat {seat} sold to {order_id} while still sold to {prev} (at {})",
                                hex::encode(stamp)
                            ),
                        );
                    }
                }
            }
            BusEventBody::SeatsReturned { seats, pool, quantity, .. } => {
                for seat in seats {
                    sold_to.remove(&seat.to_string());
                }
                if let Some(p) = pool {
                    *places.entry(p.to_string()).or_default() -= i64::from(*quantity);
                }
            }
            BusEventBody::SeatsHeld { pool: Some(p), quantity, .. } => {
                let n = places.entry(p.to_string()).or_default();
                *n += i64::from(*quantity);
                if *n > capacity.get(p.as_str()).copied().unwrap_or(0) {
                    out.fail(
                        "a pool never sells past its capacity",
                        format!("pool {p} had {n} places out at {}", hex::encode(stamp)),
                    );
                }
            }
            BusEventBody::HoldReleased { pool: Some(p), quantity, .. } => {
                *places.entry(p.to_string()).or_default() -= i64::from(*quantity);
            }
            _ => {}
        }
    }
}
