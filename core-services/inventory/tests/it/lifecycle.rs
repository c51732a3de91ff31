//! Holds over time: expiry, freezing for payment, confirmation, refunds, best available.

use tessera_api::bus::{BusEventBody, ReleaseReason};
use tessera_api::inventory::{HoldSpec, HoldState};
use tessera_api::{OrderId, RegionId, SectionId};
use tessera_fdb_schema::values::{self, OutboxRecord};
use tessera_inventory::Confirmed;
use tessera_store::{RangeRequest, Store, Transaction};

use tessera_common::Clock as _;

use crate::*;

async fn outbox_kinds(f: &Fixture<MemoryStore>) -> Vec<String> {
    let keys = f.inv.keys();
    let (b, e) = keys.outbox(&RegionId::parse("us-east").unwrap());
    let t = f.inv.store().create_trx().unwrap();
    t.get_range(&RangeRequest::new(b, e), true)
        .await
        .unwrap()
        .iter()
        .map(|(_, v)| {
            let r: OutboxRecord = values::decode(v).unwrap();
            match r.body {
                BusEventBody::HoldReleased { reason, .. } => format!("hold.released:{reason:?}"),
                body => body.kind().to_owned(),
            }
        })
        .collect()
}

fn free_in(a: &tessera_api::inventory::Availability, section: &str) -> u64 {
    a.sections.iter().find(|s| s.section_id.as_str() == section).unwrap().free
}

#[tokio::test]
async fn an_expired_hold_frees_its_seats_at_once_and_the_sweeper_makes_it_final() {
    let f = fixture(10).await;
    let h = f.inv.hold(&event_id(), &customer(1), &seats(&["A-1-3", "A-1-4"]), None).await.unwrap();
    f.clock.advance_ms(299_000);
    let err = f.inv.hold(&event_id(), &customer(2), &seats(&["A-1-3"]), None).await.unwrap_err();
    assert_eq!(err.code(), tessera_api::ErrorCode::SeatHeld);
    f.clock.advance_ms(1_000);
    // Not swept yet, but readers already see the seat free.
    let h2 = f.inv.hold(&event_id(), &customer(2), &seats(&["A-1-3"]), None).await.unwrap();
    assert_eq!(f.inv.get_hold(&h.hold_id).await.unwrap().state, HoldState::Expired);
    let report = f.inv.sweep(1000).await.unwrap();
    assert_eq!(report.expired, 1);
    // The sweeper freed A-1-4 but left A-1-3, which the second hold now owns.
    let a = f.inv.availability(&event_id()).await.unwrap();
    assert_eq!(free_in(&a, "A"), 50 - 1);
    assert_eq!(f.inv.customer_count(&event_id(), &customer(1)).await.unwrap(), 0);
    f.inv.freeze(&h2.hold_id, &customer(2)).await.unwrap();
    assert!(outbox_kinds(&f).await.contains(&"hold.released:Expired".to_owned()));
    // Sweeping again does nothing.
    assert_eq!(f.inv.sweep(1000).await.unwrap().expired, 0);
}

#[tokio::test]
async fn a_frozen_hold_outlives_its_timer_and_resumes_when_payment_fails() {
    let f = fixture(11).await;
    let h = f.inv.hold(&event_id(), &customer(1), &seats(&["B-1-1"]), None).await.unwrap();
    f.clock.advance_ms(200_000);
    let frozen = f.inv.freeze(&h.hold_id, &customer(1)).await.unwrap();
    assert_eq!(frozen.state, HoldState::PaymentPending);
    f.clock.advance_ms(200_000); // past the original deadline
    f.inv.sweep(1000).await.unwrap();
    let err = f.inv.hold(&event_id(), &customer(2), &seats(&["B-1-1"]), None).await.unwrap_err();
    assert_eq!(err.code(), tessera_api::ErrorCode::SeatHeld, "a frozen hold must keep its seats");
    // The payment was declined: the timer resumes with the 100 s that were left.
    let resumed = f.inv.unfreeze(&h.hold_id).await.unwrap();
    assert_eq!(resumed.state, HoldState::Active);
    assert_eq!(resumed.expires_at_ms, f.clock.now_ms() + 100_000);
}

#[tokio::test]
async fn a_payment_that_outlives_the_window_loses_the_seats_and_confirm_refuses() {
    let f = fixture(12).await;
    let h = f.inv.hold(&event_id(), &customer(1), &seats(&["B-2-1"]), None).await.unwrap();
    f.inv.freeze(&h.hold_id, &customer(1)).await.unwrap();
    f.clock.advance_ms(10 * 60 * 1000 + 1);
    assert_eq!(f.inv.sweep(1000).await.unwrap().expired, 1);
    f.inv.hold(&event_id(), &customer(2), &seats(&["B-2-1"]), None).await.unwrap();
    let err =
        f.inv.confirm(&h.hold_id, &OrderId::parse("o_late000001").unwrap()).await.unwrap_err();
    assert_eq!(err.code(), tessera_api::ErrorCode::HoldExpired);
}

#[tokio::test]
async fn confirm_is_idempotent_and_refunds_return_seats_to_sale() {
    let f = fixture(13).await;
    let h = f.inv.hold(&event_id(), &customer(1), &seats(&["A-5-1", "A-5-2"]), None).await.unwrap();
    let order = OrderId::parse("o_order00001").unwrap();
    f.inv.freeze(&h.hold_id, &customer(1)).await.unwrap();
    assert!(matches!(f.inv.confirm(&h.hold_id, &order).await.unwrap(), Confirmed::Sold(_)));
    assert!(matches!(f.inv.confirm(&h.hold_id, &order).await.unwrap(), Confirmed::AlreadySold(_)));
    let a = f.inv.availability(&event_id()).await.unwrap();
    let sa = a.sections.iter().find(|s| s.section_id.as_str() == "A").unwrap();
    assert_eq!((sa.held, sa.sold, sa.free), (0, 2, 48));
    let err = f.inv.hold(&event_id(), &customer(2), &seats(&["A-5-1"]), None).await.unwrap_err();
    assert_eq!(err.code(), tessera_api::ErrorCode::SeatSold);

    f.inv.return_seats(&h.hold_id, &order).await.unwrap();
    f.inv.return_seats(&h.hold_id, &order).await.unwrap(); // again: no effect
    let a = f.inv.availability(&event_id()).await.unwrap();
    let sa = a.sections.iter().find(|s| s.section_id.as_str() == "A").unwrap();
    assert_eq!((sa.held, sa.sold, sa.free), (0, 0, 50));
    f.inv.hold(&event_id(), &customer(2), &seats(&["A-5-1"]), None).await.unwrap();
    assert_eq!(f.inv.customer_count(&event_id(), &customer(1)).await.unwrap(), 0);
    let kinds = outbox_kinds(&f).await;
    for k in ["seats.held", "seats.sold", "seats.returned"] {
        assert!(kinds.iter().any(|x| x == k), "missing {k} in {kinds:?}");
    }
}

#[tokio::test]
async fn best_available_takes_adjacent_seats_front_first() {
    let f = fixture(14).await;
    let spec = |q: u32, accessible: bool| HoldSpec::BestInSection {
        section: SectionId::parse("B").unwrap(),
        quantity: q,
        adjacent: true,
        accessible,
    };
    let h = f.inv.hold(&event_id(), &customer(1), &spec(3, false), None).await.unwrap();
    assert!(h.seats.iter().all(|s| s.row() == "1"), "front row first: {:?}", h.seats);
    let mut n: Vec<u16> = h.seats.iter().map(|s| s.number()).collect();
    n.sort();
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "not adjacent: {n:?}");
    // Row 1 has one seat left: a pair goes to row 2.
    let h2 = f.inv.hold(&event_id(), &customer(2), &spec(2, false), None).await.unwrap();
    assert!(h2.seats.iter().all(|s| s.row() == "2"));
    let err = f.inv.hold(&event_id(), &customer(3), &spec(4, false), None).await.unwrap_err();
    assert_eq!(err.code(), tessera_api::ErrorCode::NotEnoughAdjacent);
    // Accessible seats only: section A row 1 seats 1-2.
    let acc = HoldSpec::BestInSection {
        section: SectionId::parse("A").unwrap(),
        quantity: 2,
        adjacent: true,
        accessible: true,
    };
    let h3 = f.inv.hold(&event_id(), &customer(4), &acc, None).await.unwrap();
    let mut got: Vec<String> = h3.seats.iter().map(|s| s.to_string()).collect();
    got.sort();
    assert_eq!(got, vec!["A-1-1", "A-1-2"]);
    // By tier: P1 spans A and B.
    let tier =
        HoldSpec::BestInTier { tier: "P1".into(), quantity: 4, adjacent: true, accessible: false };
    let h4 = f.inv.hold(&event_id(), &customer(5), &tier, None).await.unwrap();
    assert_eq!(h4.seats.len(), 4);
    assert_eq!(h4.amount_minor, 4 * 12_000);
}

#[tokio::test]
async fn the_expiry_notice_goes_out_once() {
    let f = fixture(15).await;
    f.inv.hold(&event_id(), &customer(1), &seats(&["A-2-5"]), None).await.unwrap();
    f.clock.advance_ms(250_000);
    assert_eq!(f.inv.sweep(1000).await.unwrap().notices, 1);
    assert_eq!(f.inv.sweep(1000).await.unwrap().notices, 0);
    assert!(outbox_kinds(&f).await.contains(&"hold.expiring".to_owned()));
    let _ = ReleaseReason::Expired;
}
