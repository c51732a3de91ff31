//! Inventory behaviour: every invariant of the design under concurrency, bad input,
//! expiry, payment freezes, unknown commit outcomes, and random operation sequences.

mod bad_input;
mod concurrency;
mod lifecycle;
mod model;

use std::sync::Arc;

use tessera_api::inventory::{CreateEvent, GaPoolSpec, HoldSpec, RowSpec, SectionSpec, Tier};
use tessera_api::{CustomerId, EventId, PoolId, RegionId, SeatId, SectionId};
use tessera_common::{ManualClock, SeededRng};
use tessera_fdb_schema::Keyspace;
use tessera_inventory::{Inventory, InventoryConfig};
use tessera_store::Store;
use tessera_store::memory::MemoryStore;

pub const T0: u64 = 1_900_000_000_000;

pub fn event_id() -> EventId {
    EventId::parse("arena-night").unwrap()
}

pub fn customer(n: u32) -> CustomerId {
    CustomerId::parse(&format!("fan-{n}")).unwrap()
}

pub fn seat(s: &str) -> SeatId {
    SeatId::parse(s).unwrap()
}

pub fn seats(list: &[&str]) -> HoldSpec {
    HoldSpec::Seats(list.iter().map(|s| seat(s)).collect())
}

pub fn ga(quantity: u32) -> HoldSpec {
    HoldSpec::General { pool: PoolId::parse("FLOOR").unwrap(), quantity }
}

/// Sections A (5 rows × 10, seats 1-2 of row 1 accessible) and B (2 rows × 4), and a
/// 300-place floor.
pub fn seat_map(ga_capacity: u32) -> CreateEvent {
    CreateEvent {
        event_id: event_id(),
        name: "Arena Night".into(),
        venue: "Riverside Arena".into(),
        starts_at: "2027-06-01T20:00:00Z".into(),
        on_sale_at: None,
        currency: "EUR".into(),
        max_tickets_per_customer: 8,
        hold_ttl_s: 300,
        tiers: vec![
            Tier { tier_id: "P1".into(), name: "Premium".into(), price_minor: 12_000 },
            Tier { tier_id: "GA".into(), name: "Floor".into(), price_minor: 5_000 },
        ],
        sections: vec![
            SectionSpec {
                section_id: SectionId::parse("A").unwrap(),
                name: "Block A".into(),
                tier: "P1".into(),
                rows: (1..=5)
                    .map(|r| RowSpec {
                        row: r.to_string(),
                        seats: 10,
                        accessible: if r == 1 { vec![1, 2] } else { vec![] },
                    })
                    .collect(),
                row_count: None,
                seats_per_row: None,
            },
            SectionSpec {
                section_id: SectionId::parse("B").unwrap(),
                name: "Block B".into(),
                tier: "P1".into(),
                rows: vec![],
                row_count: Some(2),
                seats_per_row: Some(4),
            },
        ],
        ga_pools: vec![GaPoolSpec {
            pool_id: PoolId::parse("FLOOR").unwrap(),
            name: "Floor".into(),
            tier: "GA".into(),
            capacity: ga_capacity,
        }],
        open_now: true,
    }
}

pub struct Fixture<S: Store> {
    pub inv: Inventory<S>,
    pub clock: Arc<ManualClock>,
}

pub fn inventory_on<S: Store>(store: S, seed: u64) -> Fixture<S> {
    let clock = ManualClock::new(T0);
    let inv = Inventory::new(
        store,
        Keyspace::production(),
        clock.clone(),
        SeededRng::new(seed),
        InventoryConfig::new(RegionId::parse("us-east").unwrap()),
    );
    Fixture { inv, clock }
}

pub async fn fixture(seed: u64) -> Fixture<MemoryStore> {
    let f = inventory_on(MemoryStore::new(), seed);
    f.inv.create_event(seat_map(300)).await.unwrap();
    f
}
