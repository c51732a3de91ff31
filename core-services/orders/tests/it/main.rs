//! The checkout saga against the real payment simulator over HTTP: successes, declines,
//! timeouts, unknown outcomes, crashes mid-saga, refunds and check-in.

use std::sync::Arc;
use std::time::Duration;

use secrecy_shim::secret;
use tessera_api::inventory::{CreateEvent, GaPoolSpec, HoldSpec, RowSpec, SectionSpec, Tier};
use tessera_api::orders::{CheckoutRequest, OrderState};
use tessera_api::{CustomerId, ErrorCode, EventId, PoolId, RegionId, SeatId, SectionId};
use tessera_common::{ManualClock, SeededRng, SystemClock};
use tessera_fdb_schema::Keyspace;
use tessera_identity::{Keyset, SigningKeyPair};
use tessera_inventory::{Inventory, InventoryConfig};
use tessera_orders::{OrderError, Orders, OrdersConfig, TicketKeys};
use tessera_payments::IdempotencyKey;
use tessera_payments::stripe::{StripeClient, StripeConfig};
use tessera_paysim::{SimConfig, Simulator};
use tessera_store::memory::MemoryStore;

mod secrecy_shim {
    pub(crate) fn secret(s: &str) -> secrecy::SecretString {
        secrecy::SecretString::from(s.to_owned())
    }
}

fn event() -> EventId {
    EventId::parse("checkout-night").unwrap()
}

fn fan(n: u32) -> CustomerId {
    CustomerId::parse(&format!("fan-{n}")).unwrap()
}

fn seat_map() -> CreateEvent {
    CreateEvent {
        event_id: event(),
        name: "Checkout Night".into(),
        venue: "Hall".into(),
        starts_at: "2027-01-01T20:00:00Z".into(),
        on_sale_at: None,
        currency: "EUR".into(),
        max_tickets_per_customer: 6,
        hold_ttl_s: 300,
        tiers: vec![Tier { tier_id: "A".into(), name: "A".into(), price_minor: 4_500 }],
        sections: vec![SectionSpec {
            section_id: SectionId::parse("S").unwrap(),
            name: "S".into(),
            tier: "A".into(),
            rows: vec![RowSpec { row: "1".into(), seats: 30, accessible: vec![] }],
            row_count: None,
            seats_per_row: None,
        }],
        ga_pools: vec![GaPoolSpec {
            pool_id: PoolId::parse("FLOOR").unwrap(),
            name: "Floor".into(),
            tier: "A".into(),
            capacity: 100,
        }],
        open_now: true,
    }
}

struct World {
    orders: Orders<MemoryStore>,
    sim: Simulator,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

async fn world(timeout_ms: u64) -> World {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SimConfig {
        journal_path: dir.path().join("journal.jsonl"),
        secret_key: "sk_test_tessera".into(),
        ..SimConfig::default()
    };
    cfg.faults.timeout_delay_ms = timeout_ms * 3;
    let (addr, sim) =
        tessera_paysim::spawn_local(cfg, Arc::new(SystemClock), SeededRng::new(3)).await.unwrap();
    let mut sc = StripeConfig::new(format!("http://{addr}"), secret("sk_test_tessera"));
    sc.request_timeout = Duration::from_millis(timeout_ms);
    let provider = Arc::new(StripeClient::new(sc).unwrap());
    let clock = ManualClock::new(1_900_000_000_000);
    let inv = Inventory::new(
        MemoryStore::new(),
        Keyspace::production(),
        clock.clone(),
        SeededRng::new(1),
        InventoryConfig::new(RegionId::parse("us-east").unwrap()),
    );
    inv.create_event(seat_map()).await.unwrap();
    let signing = SigningKeyPair::derive_for_development("t1", "tickets");
    let tickets = TicketKeys { verifying: Keyset::new([signing.public()]), signing };
    let orders = Orders::new(
        inv,
        provider,
        tickets,
        clock.clone(),
        SeededRng::new(2),
        OrdersConfig::new("us-east"),
    );
    World { orders, sim, clock, _dir: dir }
}

fn seats(list: &[&str]) -> HoldSpec {
    HoldSpec::Seats(list.iter().map(|s| SeatId::parse(s).unwrap()).collect())
}

fn key(s: &str) -> IdempotencyKey {
    IdempotencyKey::new(s).unwrap()
}

fn req(hold: &tessera_api::HoldId, pm: &str) -> CheckoutRequest {
    CheckoutRequest {
        hold_id: hold.clone(),
        payment_method: pm.into(),
        email: Some("fan@example.org".into()),
    }
}

/// Net captured amount per order id, from the simulator's ledger.
fn charged(sim: &Simulator) -> std::collections::HashMap<String, i64> {
    let ledger = sim.ledger();
    let mut out = std::collections::HashMap::new();
    for intent in ledger["intents"].as_array().cloned().unwrap_or_default() {
        let order = intent["order_id"].as_str().unwrap_or_default().to_owned();
        *out.entry(order).or_insert(0) += intent["net_charged"].as_i64().unwrap_or(0);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_checkout_sells_the_seats_and_issues_tickets() {
    let w = world(2_000).await;
    let inv = w.orders.inventory();
    let h = inv.hold(&event(), &fan(1), &seats(&["S-1-1", "S-1-2"]), None).await.unwrap();
    let order =
        w.orders.checkout(&fan(1), &req(&h.hold_id, "pm_card_visa"), &key("k1")).await.unwrap();
    assert_eq!(order.state, OrderState::Completed);
    assert_eq!(order.tickets.len(), 2);
    assert_eq!(order.amount_minor, 9_000);
    let err = inv.hold(&event(), &fan(2), &seats(&["S-1-1"]), None).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::SeatSold);
    assert_eq!(charged(&w.sim).get(order.order_id.as_str()), Some(&9_000));
    // The same request again returns the same order and moves no money.
    let again =
        w.orders.checkout(&fan(1), &req(&h.hold_id, "pm_card_visa"), &key("k1")).await.unwrap();
    assert_eq!(again.order_id, order.order_id);
    assert_eq!(charged(&w.sim).get(order.order_id.as_str()), Some(&9_000));
    // The same key for something else is refused.
    let err = w
        .orders
        .checkout(&fan(1), &req(&h.hold_id, "pm_card_mastercard"), &key("k1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::IdempotencyConflict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_charges_nothing_and_the_fan_keeps_the_hold() {
    let w = world(2_000).await;
    let inv = w.orders.inventory();
    let h = inv.hold(&event(), &fan(1), &seats(&["S-1-3"]), None).await.unwrap();
    let err = w
        .orders
        .checkout(&fan(1), &req(&h.hold_id, "pm_card_chargeDeclined"), &key("d1"))
        .await
        .unwrap_err();
    let OrderError::PaymentDeclined { order_id, .. } = &err else { panic!("{err}") };
    assert_eq!(err.code(), ErrorCode::PaymentDeclined);
    assert_eq!(charged(&w.sim).get(order_id.as_str()).copied().unwrap_or(0), 0);
    let hold = inv.get_hold(&h.hold_id).await.unwrap();
    assert_eq!(hold.state, tessera_api::inventory::HoldState::Active);
    // A second attempt with another card and another key succeeds.
    let order =
        w.orders.checkout(&fan(1), &req(&h.hold_id, "pm_card_visa"), &key("d2")).await.unwrap();
    assert_eq!(order.state, OrderState::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_lost_answers_are_settled_without_double_charges() {
    let w = world(300).await;
    let inv = w.orders.inventory();
    for (i, pm) in ["pm_card_tessera_timeout", "pm_card_tessera_unknown"].iter().enumerate() {
        let who = fan(10 + i as u32);
        let h = inv
            .hold(
                &event(),
                &who,
                &HoldSpec::General { pool: PoolId::parse("FLOOR").unwrap(), quantity: 2 },
                None,
            )
            .await
            .unwrap();
        let result = w.orders.checkout(&who, &req(&h.hold_id, pm), &key(&format!("t{i}"))).await;
        let order_id = match result {
            Ok(o) => o.order_id,
            Err(e) => panic!("{pm}: {e}"),
        };
        // Whatever the request handler saw, the reconciler settles it.
        w.clock.advance_ms(60_000);
        for _ in 0..20 {
            w.orders.reconcile(100).await.unwrap();
            if w.orders.order_record(&order_id).await.unwrap().state != OrderState::PaymentPending {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            w.clock.advance_ms(60_000);
        }
        let o = w.orders.order_record(&order_id).await.unwrap();
        assert_eq!(o.state, OrderState::Completed, "{pm}");
        assert_eq!(charged(&w.sim).get(order_id.as_str()), Some(&9_000), "{pm}: charged once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_abandoned_midway_is_finished_by_the_reconciler() {
    let w = world(2_000).await;
    let inv = w.orders.inventory();
    let mut ids = Vec::new();
    for i in 0..10u32 {
        let who = fan(100 + i);
        let h =
            inv.hold(&event(), &who, &seats(&[&format!("S-1-{}", 10 + i)]), None).await.unwrap();
        let orders = w.orders.clone();
        let r = req(&h.hold_id, "pm_card_visa");
        let k = key(&format!("abandon-{i}"));
        // The process "dies" after a varying number of milliseconds.
        let task = tokio::spawn(async move { orders.checkout(&who, &r, &k).await });
        tokio::time::sleep(Duration::from_millis(u64::from(i) * 3)).await;
        task.abort();
        let _ = task.await;
        if let Some(o) = w.orders.order_of_hold(&h.hold_id).await.unwrap() {
            ids.push(o);
        }
    }
    w.clock.advance_ms(60_000);
    for _ in 0..5 {
        w.orders.reconcile(100).await.unwrap();
    }
    let ledger = charged(&w.sim);
    for id in &ids {
        let o = w.orders.order_record(id).await.unwrap();
        let paid = ledger.get(id.as_str()).copied().unwrap_or(0);
        match o.state {
            OrderState::Completed => assert_eq!(paid, 4_500, "completed order {id} charged {paid}"),
            OrderState::Failed => assert_eq!(paid, 0, "failed order {id} charged {paid}"),
            s => panic!("order {id} still {s:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_returns_the_seats_and_voids_the_tickets() {
    let w = world(2_000).await;
    let inv = w.orders.inventory();
    let h = inv.hold(&event(), &fan(1), &seats(&["S-1-30"]), None).await.unwrap();
    let order =
        w.orders.checkout(&fan(1), &req(&h.hold_id, "pm_card_visa"), &key("r1")).await.unwrap();
    let qr = order.tickets[0].qr.clone();
    let refunded = w.orders.refund(&order.order_id).await.unwrap();
    assert_eq!(refunded.state, OrderState::Refunded);
    assert_eq!(charged(&w.sim).get(order.order_id.as_str()), Some(&0));
    inv.hold(&event(), &fan(2), &seats(&["S-1-30"]), None)
        .await
        .expect("the refunded seat is on sale again");
    let err = w.orders.checkin(&qr, "gate-1").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::TicketInvalid);
    // Refunding again changes nothing.
    assert_eq!(w.orders.refund(&order.order_id).await.unwrap().state, OrderState::Refunded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_admits_once_even_when_two_gates_scan_it_at_once() {
    let w = world(2_000).await;
    let inv = w.orders.inventory();
    let h = inv.hold(&event(), &fan(1), &seats(&["S-1-25"]), None).await.unwrap();
    let order =
        w.orders.checkout(&fan(1), &req(&h.hold_id, "pm_card_visa"), &key("c1")).await.unwrap();
    let qr = order.tickets[0].qr.clone();
    let mut scans = Vec::new();
    for g in 0..8 {
        let orders = w.orders.clone();
        let qr = qr.clone();
        scans.push(tokio::spawn(async move { orders.checkin(&qr, &format!("gate-{g}")).await }));
    }
    let mut admitted = 0;
    for s in scans {
        match s.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(e) => assert_eq!(e.code(), ErrorCode::TicketAlreadyUsed),
        }
    }
    assert_eq!(admitted, 1);
    // A forged ticket: same claims, another key.
    let mut parts: Vec<&str> = qr.split('.').collect();
    let forged_sig = "A".repeat(86);
    parts[2] = &forged_sig;
    let err = w.orders.checkin(&parts.join("."), "gate-1").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::TicketInvalid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_refusals_charge_nothing() {
    let w = world(2_000).await;
    let inv = w.orders.inventory();
    let h = inv.hold(&event(), &fan(1), &seats(&["S-1-5"]), None).await.unwrap();
    let err =
        w.orders.checkout(&fan(2), &req(&h.hold_id, "pm_card_visa"), &key("x1")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::HoldForeign);
    w.clock.advance_ms(301_000);
    let err =
        w.orders.checkout(&fan(1), &req(&h.hold_id, "pm_card_visa"), &key("x2")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::HoldExpired);
    assert!(charged(&w.sim).values().all(|v| *v == 0));
}
