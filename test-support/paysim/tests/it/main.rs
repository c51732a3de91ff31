//! The Stripe adapter against the real simulator over real HTTP.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use secrecy::SecretString;
use tessera_api::{CustomerId, ErrorCode, OrderId};
use tessera_common::{SeededRng, SystemClock};
use tessera_payments::stripe::{StripeClient, StripeConfig};
use tessera_payments::webhook::{self, ProviderEventData, WebhookError};
use tessera_payments::{
    AuthorizeRequest, IdempotencyKey, PaymentError, PaymentProvider, PaymentStatus,
};
use tessera_paysim::{self as sim, SimConfig, WebhookEndpoint};

const SECRET: &str = "sk_test_it";
const WHSEC: &str = "whsec_it";

struct Harness {
    client: StripeClient,
    base: String,
    _dir: tempfile::TempDir,
}

fn config(dir: &tempfile::TempDir) -> SimConfig {
    SimConfig {
        secret_key: SECRET.to_owned(),
        journal_path: dir.path().join("journal.jsonl"),
        ..SimConfig::default()
    }
}

fn client(base: &str, timeout: Duration) -> StripeClient {
    let mut cfg = StripeConfig::new(base, SecretString::from(SECRET));
    cfg.request_timeout = timeout;
    StripeClient::new(cfg).unwrap()
}

async fn start(tweak: impl FnOnce(&mut SimConfig)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir);
    tweak(&mut cfg);
    let (addr, _sim) =
        sim::spawn_local(cfg, Arc::new(SystemClock), SeededRng::new(7)).await.unwrap();
    let base = format!("http://{addr}");
    Harness { client: client(&base, Duration::from_secs(5)), base, _dir: dir }
}

fn order(n: u32) -> OrderId {
    OrderId::parse(&format!("o_{n:08}test")).unwrap()
}

fn req(n: u32, pm: &str, amount: u64) -> AuthorizeRequest {
    AuthorizeRequest {
        order_id: order(n),
        customer_id: CustomerId::parse("fan-1").unwrap(),
        amount_minor: amount,
        currency: "EUR".to_owned(),
        payment_method: pm.to_owned(),
        description: Some("2 tickets".to_owned()),
    }
}

fn key(s: &str) -> IdempotencyKey {
    IdempotencyKey::new(s).unwrap()
}

async fn ledger(base: &str) -> serde_json::Value {
    reqwest::get(format!("{base}/_sim/ledger")).await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn authorizes_captures_and_refunds_a_payment() {
    let h = start(|_| {}).await;
    let p = h.client.authorize(&req(1, "pm_card_visa", 9_000), &key("k1:auth")).await.unwrap();
    assert_eq!(p.status, PaymentStatus::RequiresCapture);
    assert_eq!((p.amount_capturable_minor, p.amount_received_minor), (9_000, 0));
    assert_eq!(p.currency, "eur");
    assert_eq!(p.order_id.as_deref(), Some(order(1).as_str()));

    let c = h.client.capture(&p.id, None, &key("k1:capture")).await.unwrap();
    assert_eq!(
        (c.status, c.amount_received_minor, c.amount_capturable_minor),
        (PaymentStatus::Succeeded, 9_000, 0)
    );

    let r1 = h.client.refund(&p.id, Some(4_000), &key("k1:refund1")).await.unwrap();
    assert_eq!((r1.amount_minor, r1.payment_id.as_str()), (4_000, p.id.as_str()));
    let r2 = h.client.refund(&p.id, None, &key("k1:refund2")).await.unwrap();
    assert_eq!(r2.amount_minor, 5_000);
    let err = h.client.refund(&p.id, None, &key("k1:refund3")).await.unwrap_err();
    assert!(
        matches!(err, PaymentError::WrongState { ref code, .. } if code == "charge_already_refunded"),
        "{err:?}"
    );

    let now = h.client.retrieve(&p.id).await.unwrap();
    assert_eq!(
        (now.amount_received_minor, now.amount_refunded_minor, now.net_charged_minor()),
        (9_000, 9_000, 0)
    );
    let l = ledger(&h.base).await;
    assert_eq!(l["summary"]["captured_minor"], 9_000);
    assert_eq!(l["summary"]["refunded_minor"], 9_000);
    assert_eq!(l["summary"]["net_charged_minor"], 0);
}

#[tokio::test]
async fn a_void_releases_the_authorization_and_blocks_capture() {
    let h = start(|_| {}).await;
    let p =
        h.client.authorize(&req(2, "pm_card_mastercard", 1_500), &key("k2:auth")).await.unwrap();
    let v = h.client.cancel(&p.id, &key("k2:void")).await.unwrap();
    assert_eq!((v.status, v.amount_capturable_minor), (PaymentStatus::Canceled, 0));
    // Repeating the void with its key is a replay, not an error.
    assert_eq!(h.client.cancel(&p.id, &key("k2:void")).await.unwrap(), v);
    let err = h.client.capture(&p.id, None, &key("k2:capture")).await.unwrap_err();
    assert!(
        matches!(err, PaymentError::WrongState { ref code, .. } if code == "payment_intent_unexpected_state")
    );
    let err = h.client.refund(&p.id, None, &key("k2:refund")).await.unwrap_err();
    assert!(matches!(err, PaymentError::WrongState { .. }), "{err:?}");
    assert_eq!(ledger(&h.base).await["summary"]["net_charged_minor"], 0);
}

#[tokio::test]
async fn the_same_key_never_charges_twice() {
    let h = start(|_| {}).await;
    let a = h.client.authorize(&req(3, "pm_card_visa", 2_000), &key("k3:auth")).await.unwrap();
    let b = h.client.authorize(&req(3, "pm_card_visa", 2_000), &key("k3:auth")).await.unwrap();
    assert_eq!(a, b);
    let err =
        h.client.authorize(&req(3, "pm_card_visa", 2_500), &key("k3:auth")).await.unwrap_err();
    assert_eq!(err, PaymentError::IdempotencyConflict);

    // Concurrent repeats of one capture resolve to a single capture.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = h.client.clone();
        let id = a.id.clone();
        tasks.push(tokio::spawn(async move { c.capture(&id, None, &key("k3:capture")).await }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(p) => {
                assert_eq!(p.amount_received_minor, 2_000);
                ok += 1;
            }
            // A repeat that overlapped the first one is told to come back later.
            Err(e) => assert!(e.is_unknown(), "{e:?}"),
        }
    }
    assert!(ok >= 1);
    let l = ledger(&h.base).await;
    assert_eq!(l["summary"]["intents"], 1);
    assert_eq!(l["summary"]["captured_minor"], 2_000);
    assert_eq!(l["summary"]["duplicate_charges"], 0);
}

#[tokio::test]
async fn declines_are_definitive_and_hold_nothing() {
    let h = start(|_| {}).await;
    let err = h
        .client
        .authorize(&req(4, "pm_card_chargeDeclinedInsufficientFunds", 3_000), &key("k4:auth"))
        .await
        .unwrap_err();
    let PaymentError::Declined { code, decline_code, payment_id } = err else { panic!("{err:?}") };
    assert_eq!(
        (code.as_str(), decline_code.as_deref()),
        ("card_declined", Some("insufficient_funds"))
    );
    let p = h.client.retrieve(&payment_id.unwrap()).await.unwrap();
    assert_eq!(p.status, PaymentStatus::RequiresPaymentMethod);
    assert_eq!(p.last_error_code.as_deref(), Some("card_declined"));
    assert!(!p.status.holds_funds());

    let err = h
        .client
        .authorize(&req(5, "pm_card_visa_chargeDeclined", 3_000), &key("k5:auth"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PaymentError::Declined { ref decline_code, .. } if decline_code.as_deref() == Some("generic_decline"))
    );
    let err = h
        .client
        .authorize(&req(6, "pm_card_chargeDeclinedExpiredCard", 3_000), &key("k6:auth"))
        .await
        .unwrap_err();
    assert!(matches!(err, PaymentError::Declined { ref code, .. } if code == "expired_card"));

    let err =
        h.client.authorize(&req(7, "pm_card_madeup", 3_000), &key("k7:auth")).await.unwrap_err();
    assert!(
        matches!(err, PaymentError::Invalid { ref param, .. } if param.as_deref() == Some("payment_method")),
        "{err:?}"
    );
    let l = ledger(&h.base).await;
    assert_eq!(l["summary"]["net_charged_minor"], 0);
    assert_eq!(l["summary"]["uncaptured_authorizations"], 0);
}

#[tokio::test]
async fn a_timed_out_authorization_is_unknown_until_reconciled() {
    let h = start(|c| c.faults.timeout_delay_ms = 3_000).await;
    let impatient = client(&h.base, Duration::from_millis(500));
    let r = req(8, "pm_card_tessera_timeout", 4_200);
    let err = impatient.authorize(&r, &key("k8:auth")).await.unwrap_err();
    assert!(err.is_unknown(), "{err:?}");

    // The provider applied it: search finds the authorization by its order.
    let found = h.client.find_by_order(&r.order_id).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].status, found[0].amount_capturable_minor),
        (PaymentStatus::RequiresCapture, 4_200)
    );
    // A retry with the same key returns the saved outcome at once, without a second charge.
    let again = impatient.authorize(&r, &key("k8:auth")).await.unwrap();
    assert_eq!(again.id, found[0].id);
    assert_eq!(ledger(&h.base).await["summary"]["intents"], 1);
}

#[tokio::test]
async fn an_unknown_outcome_replays_its_500_and_search_tells_the_truth() {
    let h = start(|_| {}).await;
    let r = req(9, "pm_card_tessera_unknown", 6_000);
    let err = h.client.authorize(&r, &key("k9:auth")).await.unwrap_err();
    assert!(err.is_unknown(), "{err:?}");
    // As with Stripe, the saved 500 is what the key replays.
    assert!(h.client.authorize(&r, &key("k9:auth")).await.unwrap_err().is_unknown());

    let found = h.client.find_by_order(&r.order_id).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].status, PaymentStatus::RequiresCapture);
    let voided = h.client.cancel(&found[0].id, &key("k9:void")).await.unwrap();
    assert_eq!(voided.status, PaymentStatus::Canceled);
    assert!(h.client.find_by_order(&order(999)).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_cut_connection_is_unknown_and_the_retry_learns_the_result() {
    let h = start(|_| {}).await;
    let r = req(10, "pm_card_tessera_reset", 7_000);
    let err = h.client.authorize(&r, &key("k10:auth")).await.unwrap_err();
    assert!(err.is_unknown(), "{err:?}");
    let p = h.client.authorize(&r, &key("k10:auth")).await.unwrap();
    assert_eq!(p.status, PaymentStatus::RequiresCapture);
    assert_eq!(ledger(&h.base).await["summary"]["intents"], 1);
}

#[tokio::test]
async fn bad_credentials_and_an_absent_provider_are_told_apart() {
    let h = start(|_| {}).await;
    let wrong =
        StripeClient::new(StripeConfig::new(&h.base, SecretString::from("sk_test_wrong"))).unwrap();
    let err = wrong.authorize(&req(11, "pm_card_visa", 100), &key("k11")).await.unwrap_err();
    assert_eq!(err, PaymentError::Unauthorized);

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gone = client(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2));
    let err = gone.authorize(&req(11, "pm_card_visa", 100), &key("k11")).await.unwrap_err();
    assert!(matches!(err, PaymentError::Unavailable { .. }), "{err:?}");
    assert!(err.is_retryable() && !err.is_unknown());

    let err = h.client.retrieve("pi_doesnotexist").await.unwrap_err();
    assert_eq!(err, PaymentError::NotFound);
    let err = h.client.retrieve("../v1/refunds").await.unwrap_err();
    assert!(matches!(err, PaymentError::Invalid { .. }));
    let err = h.client.authorize(&req(12, "pm_card_visa", 0), &key("k12")).await.unwrap_err();
    assert!(matches!(err, PaymentError::Invalid { .. }));
}

#[tokio::test]
async fn random_fault_rates_follow_the_configuration() {
    let h = start(|c| {
        c.faults.decline_rate = 0.3;
        c.faults.unknown_rate = 0.2;
    })
    .await;
    let (mut ok, mut declined, mut unknown) = (0, 0, 0);
    for n in 0..100 {
        match h.client.authorize(&req(100 + n, "pm_card_visa", 500), &key(&format!("r{n}"))).await {
            Ok(_) => ok += 1,
            Err(PaymentError::Declined { .. }) => declined += 1,
            Err(e) if e.is_unknown() => unknown += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(ok + declined + unknown, 100);
    assert!((15..=45).contains(&declined), "declined {declined}");
    assert!((6..=30).contains(&unknown), "unknown {unknown}");
    // Every unknown one was in fact authorized.
    let l = ledger(&h.base).await;
    assert_eq!(l["summary"]["uncaptured_authorizations"], ok + unknown);
}

/// A delivered body and its signature header.
type Delivery = (Bytes, Option<String>);

#[derive(Clone, Default)]
struct Receiver {
    bodies: Arc<Mutex<Vec<Delivery>>>,
    /// Every attempt, failed ones included.
    attempts: Arc<Mutex<Vec<Delivery>>>,
    fail_first: Arc<Mutex<u32>>,
}

async fn start_receiver(rx: Receiver) -> String {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let rx = rx.clone();
            async move {
                let sig = headers
                    .get("stripe-signature")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                rx.attempts.lock().push((body.clone(), sig.clone()));
                let mut fail = rx.fail_first.lock();
                if *fail > 0 {
                    *fail -= 1;
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                rx.bodies.lock().push((body, sig));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hook")
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

async fn wait_for(rx: &Receiver, n: usize) -> Vec<Delivery> {
    for _ in 0..200 {
        if rx.bodies.lock().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rx.bodies.lock().clone()
}

#[tokio::test]
async fn sends_signed_webhooks_and_retries_a_failing_endpoint() {
    let rx = Receiver::default();
    *rx.fail_first.lock() = 2;
    let url = start_receiver(rx.clone()).await;
    let h = start(|c| {
        c.webhooks = vec![WebhookEndpoint { url, secret: WHSEC.to_owned() }];
        c.webhook_retry.initial_backoff_ms = 20;
    })
    .await;
    let p = h.client.authorize(&req(13, "pm_card_visa", 1_000), &key("k13:auth")).await.unwrap();
    h.client.capture(&p.id, None, &key("k13:capture")).await.unwrap();
    h.client.refund(&p.id, None, &key("k13:refund")).await.unwrap();

    // created, amount_capturable_updated, succeeded, charge.refunded; two attempts failed.
    let got = wait_for(&rx, 4).await;
    assert_eq!(got.len(), 4, "{got:?}");
    let mut kinds = Vec::new();
    for (body, sig) in &got {
        let e = webhook::verify_event(WHSEC, sig.as_deref(), body, now_s(), 300).unwrap();
        match &e.data {
            ProviderEventData::Payment(pay) => assert_eq!(pay.id, p.id),
            ProviderEventData::Charge { payment_id, amount_refunded_minor, order_id } => {
                assert_eq!((payment_id, *amount_refunded_minor), (&p.id, 1_000));
                assert_eq!(order_id.as_deref(), Some(order(13).as_str()));
            }
            other => panic!("{other:?}"),
        }
        kinds.push(e.kind);
    }
    // A retry is signed anew, never with an earlier attempt's signature: receivers refuse
    // the same signed request twice as a replay.
    let attempts = rx.attempts.lock().clone();
    assert_eq!(attempts.len(), 6, "four events, two failed attempts");
    let distinct: std::collections::HashSet<&Delivery> = attempts.iter().collect();
    assert_eq!(distinct.len(), attempts.len(), "a retry repeated a signed request");
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "charge.refunded",
            "payment_intent.amount_capturable_updated",
            "payment_intent.created",
            "payment_intent.succeeded"
        ]
    );

    // Receivers refuse tampered, foreign, stale and unsigned deliveries.
    let (body, sig) = &got[0];
    let sig = sig.as_deref();
    let mut tampered = body.to_vec();
    tampered.extend_from_slice(b" ");
    assert_eq!(
        webhook::verify(WHSEC, sig, &tampered, now_s(), 300),
        Err(WebhookError::NoMatchingSignature)
    );
    assert_eq!(
        webhook::verify("whsec_other", sig, body, now_s(), 300),
        Err(WebhookError::NoMatchingSignature)
    );
    let late = webhook::verify(WHSEC, sig, body, now_s() + 301, 300).unwrap_err();
    assert_eq!(late, WebhookError::TimestampOutsideTolerance);
    assert_eq!(late.code(), ErrorCode::WebhookSignatureInvalid);
    assert_eq!(webhook::verify(WHSEC, None, body, now_s(), 300), Err(WebhookError::MissingHeader));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Proc(std::process::Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run_paysim(journal: &std::path::Path, port: u16) -> Proc {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tessera-paysim"))
        .env("TESSERA_PAYSIM__MODE", "local")
        .env("TESSERA_PAYSIM__LISTEN", format!("127.0.0.1:{port}"))
        .env("TESSERA_PAYSIM__JOURNAL_PATH", journal)
        .env("TESSERA_PAYSIM__SECRET_KEY", SECRET)
        .env("TESSERA_PAYSIM__TELEMETRY__LOG_FILTER", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await
            && r.status().is_success()
        {
            return proc;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("tessera-paysim did not start");
}

#[tokio::test]
async fn a_killed_simulator_comes_back_with_every_acknowledged_charge() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("paysim.jsonl");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let c = client(&base, Duration::from_secs(5));

    let sim = run_paysim(&journal, port).await;
    let mut before = Vec::new();
    for n in 0..20 {
        let p = c
            .authorize(&req(200 + n, "pm_card_visa", 1_000 + u64::from(n)), &key(&format!("j{n}")))
            .await
            .unwrap();
        let p = if n % 2 == 0 {
            c.capture(&p.id, None, &key(&format!("j{n}:cap"))).await.unwrap()
        } else {
            p
        };
        before.push(p);
    }
    drop(sim); // SIGKILL: no shutdown hook runs.

    let _sim = run_paysim(&journal, port).await;
    for p in &before {
        assert_eq!(&c.retrieve(&p.id).await.unwrap(), p);
    }
    // Idempotency keys survive too: a retried capture does not capture twice.
    let again = c.capture(&before[0].id, None, &key("j0:cap")).await.unwrap();
    assert_eq!(again, before[0]);
    // New objects do not collide with replayed ones.
    let fresh = c.authorize(&req(300, "pm_card_visa", 5), &key("fresh")).await.unwrap();
    assert!(before.iter().all(|p| p.id != fresh.id));
    let l = ledger(&base).await;
    assert_eq!(l["summary"]["intents"], 21);
    assert_eq!(
        l["summary"]["captured_minor"],
        (0..20u64).filter(|n| n % 2 == 0).map(|n| 1_000 + n).sum::<u64>()
    );
}
