//! The waiting room's guarantees: token properties, the verifiable shuffle, FIFO after
//! opening.

use rand::{RngCore as _, SeedableRng as _};
use tessera_api::inventory::SaleState;
use tessera_api::queue::{QueuePhase, QueueTicketClaims};
use tessera_api::{CustomerId, EventId, QueueTicketId};
use tessera_identity::{Keyset, SigningKeyPair};
use tessera_queue::controller::{AdmissionController, ControllerConfig, ControllerInput};
use tessera_queue::token::{QueueTokenError, TYP_ADMISSION, TYP_TICKET};
use tessera_queue::{admission, device_hash, issue, lottery, verify_admission, verify_ticket};

const NOW: u64 = 1_900_000_000_000;

fn event() -> EventId {
    EventId::parse("arena-night").unwrap()
}
fn fan() -> CustomerId {
    CustomerId::parse("fan-42").unwrap()
}
fn key() -> SigningKeyPair {
    SigningKeyPair::derive_for_development("edge-1", "edge-1-secret")
}
fn keys() -> Keyset {
    Keyset::new([key().public(), SigningKeyPair::derive_for_development("edge-2", "x").public()])
}
fn claims(typ: &str) -> QueueTicketClaims {
    QueueTicketClaims {
        typ: typ.into(),
        ticket_id: QueueTicketId::from_random(99),
        event_id: event(),
        customer_id: fan(),
        device: device_hash("phone"),
        phase: QueuePhase::Open,
        seq: 3,
        rank: Some(format!("{:020x}", 3)),
        iat_ms: NOW,
        exp_ms: NOW + 600_000,
        kid: String::new(),
        waiting_list: false,
    }
}

#[test]
fn a_forged_ticket_is_refused() {
    let forger = SigningKeyPair::derive_for_development("edge-1", "guess");
    let t = issue(&forger, &claims(TYP_TICKET));
    assert!(matches!(
        verify_ticket(&keys(), &t, &event(), &device_hash("phone"), NOW),
        Err(QueueTokenError::Invalid(_))
    ));
    // Editing the claims of a genuine ticket breaks the signature.
    let good = issue(&key(), &claims(TYP_TICKET));
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut better = claims(TYP_TICKET);
    better.seq = 0;
    parts[1] = base64_url(&serde_json::to_vec(&better).unwrap());
    assert!(matches!(
        verify_ticket(&keys(), &parts.join("."), &event(), &device_hash("phone"), NOW),
        Err(QueueTokenError::Invalid(_))
    ));
}

fn base64_url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn an_expired_ticket_is_refused() {
    let t = issue(&key(), &claims(TYP_TICKET));
    assert!(verify_ticket(&keys(), &t, &event(), &device_hash("phone"), NOW + 599_999).is_ok());
    assert_eq!(
        verify_ticket(&keys(), &t, &event(), &device_hash("phone"), NOW + 600_000),
        Err(QueueTokenError::Expired)
    );
}

#[test]
fn a_ticket_for_another_event_is_refused() {
    let t = issue(&key(), &claims(TYP_TICKET));
    let other = EventId::parse("other-night").unwrap();
    assert_eq!(
        verify_ticket(&keys(), &t, &other, &device_hash("phone"), NOW),
        Err(QueueTokenError::WrongEvent)
    );
}

#[test]
fn a_ticket_copied_to_another_device_is_refused() {
    let t = issue(&key(), &claims(TYP_TICKET));
    assert_eq!(
        verify_ticket(&keys(), &t, &event(), &device_hash("laptop"), NOW),
        Err(QueueTokenError::WrongDevice)
    );
}

#[test]
fn replayed_tokens_are_refused_in_every_other_role() {
    let qt = issue(&key(), &claims(TYP_TICKET));
    let adm = issue(&key(), &claims(TYP_ADMISSION));
    let dev = device_hash("phone");
    // A queue ticket replayed as an admission token.
    assert!(matches!(
        verify_admission(&keys(), &qt, &event(), &fan(), &dev, NOW),
        Err(QueueTokenError::WrongType { .. })
    ));
    // An admission token replayed as a queue ticket.
    assert!(matches!(
        verify_ticket(&keys(), &adm, &event(), &dev, NOW),
        Err(QueueTokenError::WrongType { .. })
    ));
    // An admission token replayed by another customer (even on the same device id).
    let other = CustomerId::parse("fan-43").unwrap();
    assert_eq!(
        verify_admission(&keys(), &adm, &event(), &other, &dev, NOW),
        Err(QueueTokenError::WrongCustomer)
    );
    // Replayed after its short life.
    assert_eq!(
        verify_admission(&keys(), &adm, &event(), &fan(), &dev, NOW + 600_000),
        Err(QueueTokenError::Expired)
    );
    // A key dropped from the keyset after rotation no longer verifies.
    let rotated = Keyset::new([SigningKeyPair::derive_for_development("edge-3", "y").public()]);
    assert!(matches!(
        verify_admission(&rotated, &adm, &event(), &fan(), &dev, NOW),
        Err(QueueTokenError::Invalid(_))
    ));
}

fn ids(n: u64, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<QueueTicketId> {
    (0..n)
        .map(|_| {
            let mut nonce = [0u8; 16];
            rng.fill_bytes(&mut nonce);
            let mut edge = [0u8; 16];
            rng.fill_bytes(&mut edge);
            lottery::ticket_id(Some(&hex::encode(nonce)), edge)
        })
        .collect()
}

#[test]
fn pre_open_fans_get_uniformly_random_places() {
    // Chi-square over (arrival index, place) for 8 pre-open fans across 8000 draws.
    const N: usize = 8;
    const TRIALS: usize = 8000;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut table = [[0u32; N]; N];
    for _ in 0..TRIALS {
        let tickets = ids(N as u64, &mut rng);
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let mut ranked: Vec<(u64, usize)> = tickets
            .iter()
            .enumerate()
            .map(|(arrival, t)| {
                (lottery::lottery_rank(&lottery::lottery_value(&seed, &event(), t)), arrival)
            })
            .collect();
        ranked.sort();
        for (place, (_, arrival)) in ranked.iter().enumerate() {
            table[*arrival][place] += 1;
        }
    }
    let expected = (TRIALS / N) as f64;
    let chi2: f64 =
        table.iter().flatten().map(|&o| (f64::from(o) - expected).powi(2) / expected).sum();
    // 49 degrees of freedom: the 0.1% critical value is about 85.4.
    assert!(chi2 < 85.4, "chi2 = {chi2:.1}, table = {table:?}");
    // And arriving first buys nothing: the first arrival's mean place is the middle.
    let mean_first: f64 =
        table[0].iter().enumerate().map(|(p, c)| p as f64 * f64::from(*c)).sum::<f64>()
            / TRIALS as f64;
    assert!((mean_first - 3.5).abs() < 0.1, "mean place of the first arrival {mean_first}");
}

#[test]
fn anyone_can_recompute_the_order_from_the_revealed_seed() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let tickets = ids(50, &mut rng);
    let seed_hex = "9f".repeat(32);
    let commitment = lottery::commitment(&seed_hex).unwrap();
    let mut c = AdmissionController::new(event(), commitment.clone(), ControllerConfig::default());
    let drawn = c.reveal(&seed_hex, &tickets).unwrap();

    // A fan (or an auditor) with only the published commitment, the revealed seed and the
    // ticket ids recomputes the very same order.
    assert!(lottery::verify_seed(&commitment, &seed_hex));
    let seed = hex::decode(&seed_hex).unwrap();
    let mut mine: Vec<(String, QueueTicketId)> = tickets
        .iter()
        .map(|t| (hex::encode(lottery::lottery_value(&seed, &event(), t)), t.clone()))
        .collect();
    mine.sort();
    let recomputed: Vec<QueueTicketId> = mine.into_iter().map(|(_, t)| t).collect();
    assert_eq!(recomputed, drawn);

    // The status a fan sees carries the same lottery value.
    let input = |now_ms| ControllerInput {
        now_ms,
        state: SaleState::OnSale,
        pre_open_count: 50,
        remaining: 1000,
        held: 0,
        sold: 0,
        core_health: 1.0,
        operator_rate_per_s: 10.0,
    };
    c.tick(&input(0));
    let (wm, _) = c.tick(&input(1000));
    let mut mine = claims(TYP_TICKET);
    mine.phase = QueuePhase::PreOpen;
    mine.ticket_id = drawn[3].clone();
    let view = admission::view(&mine, &wm);
    assert_eq!(
        view.lottery.unwrap(),
        hex::encode(lottery::lottery_value(&seed, &event(), &drawn[3]))
    );
    assert!(admission::is_admitted(&mine, &wm), "4th in the draw is in the first 10");
    mine.ticket_id = drawn[10].clone();
    assert!(!admission::is_admitted(&mine, &wm), "11th in the draw waits");
}

#[test]
fn after_opening_fans_are_admitted_first_come_first_served() {
    let seed_hex = "01".repeat(32);
    let mut c = AdmissionController::new(
        event(),
        lottery::commitment(&seed_hex).unwrap(),
        ControllerConfig::default(),
    );
    c.reveal(&seed_hex, &[]).unwrap();
    let rank = |i: u64| Some(format!("{:020x}", 1000 + i * 7));
    for i in 0..100 {
        c.push_open(rank(i).unwrap(), QueueTicketId::from_random(u128::from(i) + 500));
    }
    let ticket = |seq: u64| {
        let mut t = claims(TYP_TICKET);
        t.seq = seq;
        t.rank = rank(seq);
        t
    };
    let mut admitted_before = 0;
    for second in 0..20u64 {
        let (wm, _) = c.tick(&ControllerInput {
            now_ms: second * 1000,
            state: SaleState::OnSale,
            pre_open_count: 0,
            remaining: 1000,
            held: 0,
            sold: 0,
            core_health: 1.0,
            operator_rate_per_s: 3.0,
        });
        let admitted: Vec<bool> =
            (0..100).map(|s| admission::is_admitted(&ticket(s), &wm)).collect();
        let n = admitted.iter().filter(|a| **a).count();
        // Always a prefix of arrival order, never shrinking.
        assert!(admitted[..n].iter().all(|a| *a) && admitted[n..].iter().all(|a| !*a));
        assert!(n >= admitted_before);
        admitted_before = n;
        // Honest place: the fan right after the admitted ones has nobody ahead.
        if n < 100 {
            let v = admission::view(&ticket(n as u64), &wm);
            assert_eq!(v.ahead, Some(0));
        }
    }
    assert_eq!(admitted_before, 57, "3 per second for 19 seconds");
}
