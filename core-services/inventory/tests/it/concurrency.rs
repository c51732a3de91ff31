//! Invariants under concurrency: many tasks, two store handles (two processes' views of one
//! embedded store), racing for the same seats and the last general-admission places.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tessera_api::inventory::HoldSpec;
use tessera_api::{OrderId, SeatId};
use tessera_store::embedded::EmbeddedStore;
use tessera_store_testkit::faults::{FaultPlan, FaultyStore};

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_buyers_never_get_the_same_seat() {
    let dir = tempfile::tempdir().unwrap();
    let a = inventory_on(EmbeddedStore::open(dir.path()).unwrap(), 20);
    a.inv.create_event(seat_map(300)).await.unwrap();
    let b = inventory_on(EmbeddedStore::open(dir.path()).unwrap(), 21);
    let invs = [Arc::new(a.inv), Arc::new(b.inv)];
    let all_seats: Vec<SeatId> = (1..=5)
        .flat_map(|r| (1..=10).map(move |n| SeatId::parse(&format!("A-{r}-{n}")).unwrap()))
        .collect();
    let all_seats = Arc::new(all_seats);
    let mut tasks = Vec::new();
    for t in 0..64u32 {
        let inv = invs[(t % 2) as usize].clone();
        let all_seats = all_seats.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for i in 0..10u32 {
                // Pairs of neighbouring seats, overlapping between tasks.
                let k = ((t * 7 + i * 13) % 49) as usize;
                let spec = HoldSpec::Seats(vec![all_seats[k].clone(), all_seats[k + 1].clone()]);
                let who = customer(t * 100 + i);
                if let Ok(h) = inv.hold(&event_id(), &who, &spec, None).await {
                    won.push(h);
                }
            }
            won
        }));
    }
    let mut owner: BTreeMap<SeatId, String> = BTreeMap::new();
    let mut holds = 0;
    for t in tasks {
        for h in t.await.unwrap() {
            holds += 1;
            for s in h.seats {
                if let Some(prev) = owner.insert(s.clone(), h.hold_id.to_string()) {
                    panic!("seat {s} held by both {prev} and {}", h.hold_id);
                }
            }
        }
    }
    assert!(holds >= 20, "too few holds succeeded: {holds}");
    let avail = invs[1].availability(&event_id()).await.unwrap();
    let sa = avail.sections.iter().find(|s| s.section_id.as_str() == "A").unwrap();
    assert_eq!(sa.held as usize, owner.len());
    assert_eq!(sa.free + sa.held + sa.sold, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_general_admission_places_are_never_oversold() {
    let dir = tempfile::tempdir().unwrap();
    let a = inventory_on(EmbeddedStore::open(dir.path()).unwrap(), 22);
    a.inv.create_event(seat_map(300)).await.unwrap();
    let b = inventory_on(EmbeddedStore::open(dir.path()).unwrap(), 23);
    let invs = [Arc::new(a.inv), Arc::new(b.inv)];
    let mut tasks = Vec::new();
    for t in 0..100u32 {
        let inv = invs[(t % 2) as usize].clone();
        tasks.push(tokio::spawn(async move {
            let mut got = 0u32;
            for i in 0..4u32 {
                let q = 1 + (t + i) % 4;
                let who = customer(t * 10 + i);
                match inv.hold(&event_id(), &who, &ga(q), None).await {
                    Ok(h) => {
                        got += h.quantity;
                        if i % 2 == 0 {
                            let order = OrderId::from_random(u128::from(t) << 8 | u128::from(i));
                            inv.freeze(&h.hold_id, &who).await.unwrap();
                            inv.confirm(&h.hold_id, &order).await.unwrap();
                        }
                    }
                    Err(e) => assert_eq!(e.code(), tessera_api::ErrorCode::SoldOut, "{e}"),
                }
            }
            got
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 300, "demand exceeded capacity, so the pool must sell out exactly");
    let avail = invs[0].availability(&event_id()).await.unwrap();
    let p = &avail.pools[0];
    assert_eq!(p.held + p.sold, 300);
    assert_eq!(p.free, 0);
}

/// Commits whose outcome is unknown are retried; with idempotency keys no customer ends
/// up with two holds for one request, and tallies match what is really held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commit_outcomes_never_duplicate_a_hold() {
    let plan = FaultPlan {
        unknown_after_commit_ppm: 200_000,
        unknown_before_commit_ppm: 100_000,
        spurious_conflict_ppm: 50_000,
    };
    let store = FaultyStore::new(tessera_store::memory::MemoryStore::new(), plan, 7);
    let f = inventory_on(store.clone(), 24);
    f.inv.create_event(seat_map(300)).await.unwrap();
    let inv = Arc::new(f.inv);
    let mut tasks = Vec::new();
    for t in 0..40u32 {
        let inv = inv.clone();
        tasks.push(tokio::spawn(async move {
            let who = customer(t);
            let key = format!("req-{t}");
            let first = inv.hold(&event_id(), &who, &ga(2), Some(&key)).await.unwrap();
            // The client did not hear back and sends the same request again.
            let again = inv.hold(&event_id(), &who, &ga(2), Some(&key)).await.unwrap();
            assert_eq!(first.hold_id, again.hold_id);
            (who, first)
        }));
    }
    let mut held = 0;
    for t in tasks {
        let (who, _) = t.await.unwrap();
        assert_eq!(
            inv.customer_count(&event_id(), &who).await.unwrap(),
            2,
            "customer {who} holds a duplicate"
        );
        held += 2;
    }
    assert!(store.injected() > 0, "no faults were injected");
    let p = &inv.availability(&event_id()).await.unwrap().pools[0];
    assert_eq!(p.held, held);
    let _: BTreeSet<u32> = BTreeSet::new();
}
