//! Bad input: each refusal has its own code and changes nothing.

use tessera_api::ErrorCode;
use tessera_api::inventory::HoldSpec;
use tessera_api::{EventId, HoldId, OrderId, PoolId, SectionId};
use tessera_inventory::InventoryError;

use crate::*;

async fn snapshot(f: &Fixture<MemoryStore>) -> String {
    let a = f.inv.availability(&event_id()).await.unwrap();
    let s = f.inv.section_seats(&event_id(), &SectionId::parse("A").unwrap()).await.unwrap();
    format!("{:?}{:?}{:?}", a.sections, a.pools, s.rows)
}

async fn refused(f: &Fixture<MemoryStore>, who: u32, spec: HoldSpec) -> ErrorCode {
    let before = snapshot(f).await;
    let err = f.inv.hold(&event_id(), &customer(who), &spec, None).await.unwrap_err();
    assert_eq!(snapshot(f).await, before, "a refused hold changed the inventory");
    err.code()
}

#[tokio::test]
async fn refusals_have_distinct_codes_and_change_nothing() {
    let f = fixture(1).await;
    f.inv.hold(&event_id(), &customer(1), &seats(&["A-1-1"]), None).await.unwrap();
    let h = f.inv.hold(&event_id(), &customer(2), &seats(&["A-1-2"]), None).await.unwrap();
    f.inv.freeze(&h.hold_id, &customer(2)).await.unwrap();
    f.inv.confirm(&h.hold_id, &OrderId::parse("o_aaaaaaaaaa").unwrap()).await.unwrap();

    assert_eq!(refused(&f, 3, seats(&["A-1-1"])).await, ErrorCode::SeatHeld);
    assert_eq!(refused(&f, 3, seats(&["A-1-2"])).await, ErrorCode::SeatSold);
    assert_eq!(refused(&f, 3, seats(&["A-9-1"])).await, ErrorCode::UnknownSeat);
    assert_eq!(refused(&f, 3, seats(&["Z-1-1"])).await, ErrorCode::UnknownSeat);
    assert_eq!(refused(&f, 3, seats(&["A-1-11"])).await, ErrorCode::UnknownSeat);
    assert_eq!(refused(&f, 3, seats(&["A-1-5", "A-1-5"])).await, ErrorCode::DuplicateSeat);
    // A request mixing a free seat with a held one takes neither.
    assert_eq!(refused(&f, 3, seats(&["A-1-5", "A-1-1"])).await, ErrorCode::SeatHeld);
    assert_eq!(refused(&f, 3, ga(0)).await, ErrorCode::InvalidQuantity);
    assert_eq!(refused(&f, 3, ga(21)).await, ErrorCode::InvalidQuantity);
    assert_eq!(refused(&f, 3, ga(9)).await, ErrorCode::LimitExceeded);
    let pool = HoldSpec::General { pool: PoolId::parse("BALCONY").unwrap(), quantity: 1 };
    assert_eq!(refused(&f, 3, pool).await, ErrorCode::UnknownPool);
    let section = HoldSpec::BestInSection {
        section: SectionId::parse("Q").unwrap(),
        quantity: 2,
        adjacent: true,
        accessible: false,
    };
    assert_eq!(refused(&f, 3, section).await, ErrorCode::UnknownSection);
    let err = f
        .inv
        .hold(&EventId::parse("nope").unwrap(), &customer(3), &seats(&["A-1-5"]), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownEvent);
}

#[tokio::test]
async fn hold_lifecycle_refusals_have_distinct_codes() {
    let f = fixture(2).await;
    let h = f.inv.hold(&event_id(), &customer(1), &seats(&["A-2-1"]), None).await.unwrap();
    let err = f.inv.release(&h.hold_id, &customer(2)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::HoldForeign);
    let err =
        f.inv.release(&HoldId::parse("h_doesnotexist").unwrap(), &customer(1)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownHold);
    f.clock.advance_ms(301_000);
    let err = f.inv.freeze(&h.hold_id, &customer(1)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::HoldExpired);
    let err =
        f.inv.confirm(&h.hold_id, &OrderId::parse("o_bbbbbbbbbb").unwrap()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::HoldExpired);

    let h2 = f.inv.hold(&event_id(), &customer(1), &seats(&["A-2-2"]), None).await.unwrap();
    f.inv.freeze(&h2.hold_id, &customer(1)).await.unwrap();
    let err = f.inv.release(&h2.hold_id, &customer(1)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::HoldPaymentInFlight);
    f.inv.confirm(&h2.hold_id, &OrderId::parse("o_cccccccccc").unwrap()).await.unwrap();
    let err =
        f.inv.confirm(&h2.hold_id, &OrderId::parse("o_dddddddddd").unwrap()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::HoldNotActive);
}

#[tokio::test]
async fn an_idempotency_key_reused_for_another_request_is_refused() {
    let f = fixture(3).await;
    let a = f.inv.hold(&event_id(), &customer(1), &seats(&["A-3-1"]), Some("key-1")).await.unwrap();
    let again =
        f.inv.hold(&event_id(), &customer(1), &seats(&["A-3-1"]), Some("key-1")).await.unwrap();
    assert_eq!(a, again, "a retried request must get the same hold");
    let err =
        f.inv.hold(&event_id(), &customer(1), &seats(&["A-3-2"]), Some("key-1")).await.unwrap_err();
    assert!(matches!(err, InventoryError::IdempotencyConflict));
    assert_eq!(err.code(), ErrorCode::IdempotencyConflict);
    // The same key from another customer is another key.
    f.inv.hold(&event_id(), &customer(2), &seats(&["A-3-2"]), Some("key-1")).await.unwrap();
    assert_eq!(f.inv.customer_count(&event_id(), &customer(1)).await.unwrap(), 1);
}

#[tokio::test]
async fn holds_are_refused_while_a_sale_is_paused() {
    use tessera_api::inventory::SaleState;
    let f = fixture(4).await;
    let h = f.inv.hold(&event_id(), &customer(1), &seats(&["A-4-1"]), None).await.unwrap();
    f.inv.set_sale_state(&event_id(), SaleState::Paused).await.unwrap();
    let err = f.inv.hold(&event_id(), &customer(2), &seats(&["A-4-2"]), None).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::EventNotOnSale);
    // Checkouts in flight complete while paused.
    f.inv.freeze(&h.hold_id, &customer(1)).await.unwrap();
    f.inv.confirm(&h.hold_id, &OrderId::parse("o_eeeeeeeeee").unwrap()).await.unwrap();
    f.inv.set_sale_state(&event_id(), SaleState::OnSale).await.unwrap();
    f.inv.hold(&event_id(), &customer(2), &seats(&["A-4-2"]), None).await.unwrap();
}

#[tokio::test]
async fn invalid_seat_maps_are_refused() {
    let f = inventory_on(MemoryStore::new(), 5);
    let mut m = seat_map(10);
    m.sections[0].tier = "NOPE".into();
    assert!(matches!(f.inv.create_event(m).await, Err(InventoryError::InvalidSeatMap(_))));
    let mut m = seat_map(10);
    m.sections[1].section_id = SectionId::parse("A").unwrap();
    assert!(matches!(f.inv.create_event(m).await, Err(InventoryError::InvalidSeatMap(_))));
    let mut m = seat_map(10);
    m.sections[0].rows[0].accessible = vec![11];
    assert!(matches!(f.inv.create_event(m).await, Err(InventoryError::InvalidSeatMap(_))));
    let mut m = seat_map(10);
    m.currency = "euro".into();
    assert!(matches!(f.inv.create_event(m).await, Err(InventoryError::InvalidSeatMap(_))));
    f.inv.create_event(seat_map(10)).await.unwrap();
    assert!(matches!(f.inv.create_event(seat_map(10)).await, Err(InventoryError::EventExists(_))));
}
