//! Random operation sequences (property test): after every step the stored state obeys
//! the inventory invariants, checked from the raw records.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use tessera_api::inventory::{HoldSpec, HoldState};
use tessera_api::{HoldId, OrderId, SeatId};
use tessera_fdb_schema::values::{self, HoldRecord};
use tessera_fdb_schema::{SeatState, SeatStatus};
use tessera_store::{RangeRequest, Store, Transaction, decode_i64};

use tessera_common::Clock as _;

use crate::*;

#[derive(Debug, Clone)]
enum Op {
    HoldSeats { who: u32, seats: Vec<u8> },
    HoldGa { who: u32, q: u32 },
    Release { pick: usize },
    Freeze { pick: usize },
    Unfreeze { pick: usize },
    Confirm { pick: usize },
    Return { pick: usize },
    Advance { s: u32 },
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..6u32, proptest::collection::vec(0..58u8, 1..4)).prop_map(|(who, seats)| Op::HoldSeats { who, seats }),
        3 => (0..6u32, 1..5u32).prop_map(|(who, q)| Op::HoldGa { who, q }),
        1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Freeze { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Unfreeze { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Confirm { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Return { pick }),
        2 => (1..400u32).prop_map(|s| Op::Advance { s }),
        1 => Just(Op::Sweep),
    ]
}

fn seat_of(i: u8) -> SeatId {
    // 50 seats in A (5 × 10), 8 in B (2 × 4).
    if i < 50 {
        SeatId::parse(&format!("A-{}-{}", i / 10 + 1, i % 10 + 1)).unwrap()
    } else {
        let j = i - 50;
        SeatId::parse(&format!("B-{}-{}", j / 4 + 1, j % 4 + 1)).unwrap()
    }
}

async fn check_invariants(f: &Fixture<MemoryStore>, quiescent: bool) {
    let keys = f.inv.keys();
    let now = f.clock.now_ms();
    let t = f.inv.store().create_trx().unwrap();
    let ev = event_id();
    let mut holds: HashMap<String, HoldRecord> = HashMap::new();
    let prefix = {
        let k = keys.hold(&HoldId::parse("h_aaaaaaaa").unwrap());
        let (p, _) = tessera_store::prefix_range(&k[..k.len() - "h_aaaaaaaa".len() - 2]);
        p
    };
    for (_, v) in t.get_range(&RangeRequest::prefix(&prefix), true).await.unwrap() {
        let r: HoldRecord = values::decode(&v).unwrap();
        holds.insert(r.hold_id.to_string(), r);
    }
    // Every held seat belongs to a hold that lists it; every sold seat to a confirmed hold.
    let (b, e) = keys.seats_of_event(&ev);
    let mut held_by_section: BTreeMap<String, u64> = BTreeMap::new();
    let mut sold_by_section: BTreeMap<String, u64> = BTreeMap::new();
    for (k, v) in t.get_range(&RangeRequest::new(b, e), true).await.unwrap() {
        let (_, seat) = keys.seat_of_key(&k).unwrap();
        let s = SeatState::decode(&v).unwrap();
        match s.status {
            SeatStatus::Held => {
                let h = holds
                    .get(&s.owner)
                    .unwrap_or_else(|| panic!("seat {seat} held by unknown {}", s.owner));
                assert!(h.seats.contains(&seat), "hold {} does not list {seat}", s.owner);
                if s.expires_at_ms > now {
                    assert!(
                        matches!(h.state, HoldState::Active | HoldState::PaymentPending),
                        "live seat {seat} owned by a {:?} hold",
                        h.state
                    );
                }
                *held_by_section.entry(seat.section().to_string()).or_default() += 1;
            }
            SeatStatus::Sold => {
                let owners: Vec<_> = holds
                    .values()
                    .filter(|h| h.order_id.as_ref().map(|o| o.as_str()) == Some(s.owner.as_str()))
                    .collect();
                assert_eq!(owners.len(), 1, "sold seat {seat} has {} orders", owners.len());
                assert_eq!(owners[0].state, HoldState::Confirmed);
                assert!(owners[0].seats.contains(&seat));
                *sold_by_section.entry(seat.section().to_string()).or_default() += 1;
            }
            _ => {}
        }
    }
    // General admission: the shards carry exactly the places of holds still counting.
    let (b, e) = keys.ga_shards(&ev, &tessera_api::PoolId::parse("FLOOR").unwrap());
    let shard_total: i64 = t
        .get_range(&RangeRequest::new(b, e), true)
        .await
        .unwrap()
        .iter()
        .map(|(_, v)| decode_i64(v))
        .sum();
    let counting: i64 = holds
        .values()
        .filter(|h| {
            h.pool.is_some()
                && matches!(
                    h.state,
                    HoldState::Active | HoldState::PaymentPending | HoldState::Confirmed
                )
        })
        .map(|h| i64::from(h.quantity))
        .sum();
    assert_eq!(shard_total, counting, "pool shards disagree with the holds");
    assert!(shard_total <= 300, "pool oversold: {shard_total}");
    // Per-customer tallies match the holds that count.
    let mut per_customer: HashMap<String, i64> = HashMap::new();
    for h in holds.values() {
        if matches!(h.state, HoldState::Active | HoldState::PaymentPending | HoldState::Confirmed) {
            *per_customer.entry(h.customer_id.to_string()).or_default() += i64::from(h.quantity);
        }
    }
    for who in 0..6 {
        let c = customer(who);
        let stored = f.inv.customer_count(&ev, &c).await.unwrap();
        assert_eq!(stored, per_customer.get(c.as_str()).copied().unwrap_or(0), "tally of {c}");
        assert!(stored <= 8, "limit exceeded for {c}");
    }
    if quiescent {
        // With nothing expired and unswept, the availability tallies are exact.
        let a = f.inv.availability(&ev).await.unwrap();
        for s in &a.sections {
            let held = held_by_section.get(s.section_id.as_str()).copied().unwrap_or(0);
            let sold = sold_by_section.get(s.section_id.as_str()).copied().unwrap_or(0);
            assert_eq!((s.held, s.sold), (held, sold), "tallies of section {}", s.section_id);
            assert_eq!(s.free + s.held + s.sold, s.capacity);
        }
        let p = &a.pools[0];
        assert_eq!(p.held + p.sold, counting as u64);
    }
}

async fn apply(f: &Fixture<MemoryStore>, holds: &mut Vec<(HoldId, u32)>, op: Op, n: usize) {
    let pick = |p: usize, holds: &Vec<(HoldId, u32)>| {
        (!holds.is_empty()).then(|| holds[p % holds.len()].clone())
    };
    match op {
        Op::HoldSeats { who, seats } => {
            let spec = HoldSpec::Seats(seats.iter().map(|i| seat_of(*i)).collect());
            if let Ok(h) = f.inv.hold(&event_id(), &customer(who), &spec, None).await {
                holds.push((h.hold_id, who));
            }
        }
        Op::HoldGa { who, q } => {
            if let Ok(h) = f.inv.hold(&event_id(), &customer(who), &ga(q), None).await {
                holds.push((h.hold_id, who));
            }
        }
        Op::Release { pick: p } => {
            if let Some((h, who)) = pick(p, holds) {
                let _ = f.inv.release(&h, &customer(who)).await;
            }
        }
        Op::Freeze { pick: p } => {
            if let Some((h, who)) = pick(p, holds) {
                let _ = f.inv.freeze(&h, &customer(who)).await;
            }
        }
        Op::Unfreeze { pick: p } => {
            if let Some((h, _)) = pick(p, holds) {
                let _ = f.inv.unfreeze(&h).await;
            }
        }
        Op::Confirm { pick: p } => {
            if let Some((h, _)) = pick(p, holds) {
                let order = OrderId::from_random(n as u128 * 7919 + 1);
                let _ = f.inv.confirm(&h, &order).await;
            }
        }
        Op::Return { pick: p } => {
            if let Some((h, _)) = pick(p, holds)
                && let Ok(r) = f.inv.hold_record(&h).await
                && let Some(o) = r.order_id
            {
                f.inv.return_seats(&h, &o).await.unwrap();
            }
        }
        Op::Advance { s } => f.clock.advance_ms(u64::from(s) * 1000),
        Op::Sweep => {
            f.inv.sweep(10_000).await.unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
    #[test]
    fn random_operation_sequences_keep_every_invariant(ops in proptest::collection::vec(op(), 1..60), seed in 0..1000u64) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let f = fixture(seed).await;
            let mut holds = Vec::new();
            for (n, op) in ops.into_iter().enumerate() {
                apply(&f, &mut holds, op, n).await;
                check_invariants(&f, false).await;
            }
            // Let every timer run out, sweep, and check the exact tallies.
            f.clock.advance_ms(24 * 3600 * 1000);
            f.inv.sweep(100_000).await.unwrap();
            check_invariants(&f, true).await;
        });
    }
}
