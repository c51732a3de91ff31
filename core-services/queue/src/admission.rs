//! What the edge tells a waiting fan, from their ticket's claims and the latest watermark:
//! admitted or not, their place, and an honest estimate (a wait range from the measured
//! admission rate, and the chance that a ticket is left when their turn comes).

use tessera_api::inventory::SaleState;
use tessera_api::queue::{
    AdmissionWatermark, EstimateInputs, QueueChoice, QueueLine, QueuePhase, QueueStatusState,
    QueueTicketClaims, WaitRange,
};

use crate::lottery;

/// A fan's standing.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueView {
    pub state: QueueStatusState,
    pub ahead: Option<u64>,
    pub estimated_wait_s: Option<u64>,
    /// Hex lottery value of a pre-open ticket once the seed is revealed.
    pub lottery: Option<String>,
    pub wait_s: Option<WaitRange>,
    pub chance: Option<f64>,
    pub choices: Vec<QueueChoice>,
}

/// The revealed seed, if the watermark carries one that matches its commitment.
fn revealed_seed(wm: &AdmissionWatermark) -> Option<Vec<u8>> {
    let seed = wm.seed.as_deref()?;
    if !lottery::verify_seed(&wm.commitment, seed) {
        return None;
    }
    hex::decode(seed).ok()
}

/// The watermark's main line.
pub fn main_line(wm: &AdmissionWatermark) -> QueueLine {
    QueueLine {
        pre_open_passed: wm.pre_open_admitted,
        pre_open_threshold: wm.pre_open_threshold,
        open_passed: wm.open_admitted,
        open_rank: wm.open_admitted_rank.clone(),
    }
}

/// Whether the ticket's place is before `line`.
fn before(claims: &QueueTicketClaims, seed: Option<&[u8]>, line: &QueueLine) -> bool {
    match claims.phase {
        QueuePhase::PreOpen => {
            let (Some(threshold), Some(seed)) = (line.pre_open_threshold, seed) else {
                return false;
            };
            let value = lottery::lottery_value(seed, &claims.event_id, &claims.ticket_id);
            lottery::lottery_rank(&value) <= threshold
        }
        QueuePhase::Open => match (&claims.rank, &line.open_rank) {
            // Versionstamp ranks: fixed-length hex, so string order is rank order.
            (Some(rank), Some(upto)) => rank.len() == upto.len() && rank <= upto,
            (Some(_), None) => false,
            // A core that records no ranks: arrival order by sequence number.
            (None, _) => claims.seq < line.open_passed,
        },
    }
}

/// Whether a line has passed the ticket's place: the main line, or for a waiting-list
/// ticket the waiting-list line. (An admission that has since expired still counts.)
pub fn is_admitted(claims: &QueueTicketClaims, wm: &AdmissionWatermark) -> bool {
    if claims.event_id != wm.event_id {
        return false;
    }
    let seed = revealed_seed(wm);
    passed(claims, seed.as_deref(), &main_line(wm), wm.waiting_list_line.as_ref())
}

fn passed(
    claims: &QueueTicketClaims,
    seed: Option<&[u8]>,
    main: &QueueLine,
    waiting_list: Option<&QueueLine>,
) -> bool {
    before(claims, seed, main)
        || (claims.waiting_list && waiting_list.is_some_and(|l| before(claims, seed, l)))
}

/// The fan's place in queue order (0-based, counting pre-open places first). Exact for
/// open-phase places; a pre-open place is its lottery rank scaled to the number of
/// pre-open fans (exact in expectation; the core knows the exact order), or half of them
/// before the draw.
fn place(claims: &QueueTicketClaims, seed: Option<&[u8]>, wm: &AdmissionWatermark) -> u64 {
    match claims.phase {
        QueuePhase::PreOpen => match seed {
            Some(seed) => {
                let rank = lottery::lottery_rank(&lottery::lottery_value(
                    seed,
                    &claims.event_id,
                    &claims.ticket_id,
                ));
                ((rank as f64 / 18_446_744_073_709_551_616.0) * wm.pre_open_count as f64).floor()
                    as u64
            }
            None => wm.pre_open_count / 2,
        },
        QueuePhase::Open => wm.pre_open_count + claims.seq,
    }
}

fn passed_count(line: &QueueLine) -> u64 {
    line.pre_open_passed + line.open_passed
}

/// The standard normal distribution function (Abramowitz and Stegun 7.1.26, error below
/// 1.5e-7: plenty for a chance shown in whole percent).
fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 { 0.5 * (1.0 + erf) } else { 0.5 * (1.0 - erf) }
}

/// The chance that at least one place is left for a fan with `ahead` fans before them
/// who will still be admitted. Each fan ahead takes nothing with probability
/// `1 - conversion`, else a number of tickets with the observed mean and variance; what
/// is left for the queue is what is neither sold nor held, plus the observed share of held
/// places that come back, minus what admitted fans are expected to take.
pub fn chance(ahead: f64, wm: &AdmissionWatermark, e: &EstimateInputs) -> f64 {
    let tpo = e.tickets_per_order.max(1.0);
    let conv = e.conversion.clamp(0.0, 1.0);
    let left = wm.remaining as f64 + e.held as f64 * e.hold_lapse.clamp(0.0, 1.0)
        - wm.outstanding as f64 * conv * tpo;
    let mean = conv * tpo;
    let var = (conv * (e.tickets_per_order_var.max(0.0) + tpo * tpo) - mean * mean).max(0.0);
    let p = if ahead <= 0.0 {
        left.clamp(0.0, 1.0)
    } else {
        // Normal approximation of the sum, with a continuity correction; a small floor on
        // the spread keeps a fixed order size from turning the answer into a cliff.
        let sd = (ahead * var).sqrt().max(0.5);
        normal_cdf((left - 0.5 - ahead * mean) / sd)
    };
    (p.clamp(0.0, 1.0) * 1000.0).round() / 1000.0
}

/// A wait range for `ahead` fans at an admission rate between `slow` and `fast` per
/// second; `None` when nothing is moving.
fn range(ahead: u64, slow: f64, fast: f64) -> Option<WaitRange> {
    if !(slow.is_finite() && fast.is_finite()) || slow <= 0.0 || fast <= 0.0 {
        return None;
    }
    let low = (ahead as f64 / fast).floor() as u64;
    let high = ((ahead + 1) as f64 / slow).ceil() as u64;
    Some(WaitRange { low, high: high.max(low) })
}

/// The wait range of a fan who is not admitted.
fn wait_range(
    state: QueueStatusState,
    ahead: u64,
    wm: &AdmissionWatermark,
    e: &EstimateInputs,
) -> Option<WaitRange> {
    match state {
        QueueStatusState::Waiting if e.admitted_per_s > 0.0 => {
            // The last minute's rate; the range spans its slower and faster spells (the
            // slow end at no less than half the mean, so a single idle spell does not
            // promise forever).
            let mid = e.admitted_per_s;
            range(ahead, e.admitted_per_s_low.max(mid / 2.0), e.admitted_per_s_high.max(mid))
        }
        QueueStatusState::Waiting | QueueStatusState::PreOpen | QueueStatusState::Paused => {
            // Nothing measured yet: the rate the controller will admit at, give or take a
            // quarter.
            let planned = if e.planned_per_s > 0.0 { e.planned_per_s } else { wm.rate_per_s };
            range(ahead, planned * 0.75, planned * 1.25)
        }
        QueueStatusState::SoldOut => {
            // Returns are what moves now: places coming back, a fan's order's worth each.
            let rate = e.returned_per_s / e.tickets_per_order.max(1.0);
            range(ahead, rate / 2.0, rate * 1.5)
        }
        _ => None,
    }
}

/// The fan's standing under the watermark.
pub fn view(claims: &QueueTicketClaims, wm: &AdmissionWatermark) -> QueueView {
    let seed = revealed_seed(wm);
    let seed = seed.as_deref();
    let lottery_hex = match (claims.phase, seed) {
        (QueuePhase::PreOpen, Some(seed)) => {
            Some(hex::encode(lottery::lottery_value(seed, &claims.event_id, &claims.ticket_id)))
        }
        _ => None,
    };
    let main = main_line(wm);
    let same_event = claims.event_id == wm.event_id;
    if same_event && passed(claims, seed, &main, wm.waiting_list_line.as_ref()) {
        let expired = wm.expired_line.as_ref().is_some_and(|l| before(claims, seed, l))
            || (claims.waiting_list
                && wm.expired_waiting_list_line.as_ref().is_some_and(|l| before(claims, seed, l)));
        let (state, choices) = if expired {
            (QueueStatusState::Expired, vec![QueueChoice::Rejoin])
        } else {
            (QueueStatusState::Admitted, vec![])
        };
        return QueueView {
            state,
            ahead: Some(0),
            estimated_wait_s: Some(0),
            lottery: lottery_hex,
            wait_s: None,
            chance: None,
            choices,
        };
    }
    let sold_out = wm.state == SaleState::SoldOut
        || (wm.state == SaleState::OnSale && wm.remaining == 0 && wm.outstanding == 0);
    let state = match wm.state {
        SaleState::Closed => QueueStatusState::Closed,
        _ if sold_out => QueueStatusState::SoldOut,
        SaleState::Paused => QueueStatusState::Paused,
        SaleState::Scheduled => QueueStatusState::PreOpen,
        SaleState::OnSale | SaleState::SoldOut => QueueStatusState::Waiting,
    };
    let at = place(claims, seed, wm);
    // A waiting-list fan counts from the waiting-list line, everyone else from the main
    // line; both only move forward, so nobody's place moves backwards.
    let line = match (&wm.waiting_list_line, claims.waiting_list) {
        (Some(l), true) => passed_count(l),
        _ => passed_count(&main),
    };
    let ahead = at.saturating_sub(line);
    let estimate = wm.estimate.clone().unwrap_or_else(|| EstimateInputs {
        planned_per_s: wm.rate_per_s,
        tickets_per_order: 1.0,
        conversion: 1.0,
        ..EstimateInputs::default()
    });
    // Once sold out only the fans on the waiting list compete for returns.
    let competing = if state == QueueStatusState::SoldOut {
        ahead as f64 * estimate.waiting_list_share.clamp(0.0, 1.0)
    } else {
        ahead as f64
    };
    let wait_s = wait_range(state, competing.round() as u64, wm, &estimate);
    let chance = match state {
        QueueStatusState::Closed => Some(0.0),
        _ => Some(chance(competing, wm, &estimate)),
    };
    let choices = match state {
        QueueStatusState::SoldOut if claims.waiting_list => vec![QueueChoice::Leave],
        QueueStatusState::SoldOut => vec![QueueChoice::WaitingList, QueueChoice::Leave],
        QueueStatusState::Closed => vec![],
        _ => vec![QueueChoice::Leave],
    };
    QueueView {
        state,
        ahead: Some(ahead),
        estimated_wait_s: wait_s.map(|w| (w.low + w.high).div_ceil(2)),
        lottery: lottery_hex,
        wait_s,
        chance,
        choices,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_api::{CustomerId, EventId, QueueTicketId};

    fn wm(state: SaleState) -> AdmissionWatermark {
        let seed = "ab".repeat(32);
        AdmissionWatermark {
            event_id: EventId::parse("e1").unwrap(),
            state,
            version: 1,
            commitment: lottery::commitment(&seed).unwrap(),
            seed: Some(seed),
            pre_open_count: 0,
            pre_open_threshold: None,
            pre_open_admitted: 0,
            open_admitted: 10,
            open_admitted_rank: Some(format!("{:020x}", 9)),
            open_count: 100,
            rate_per_s: 5.0,
            remaining: 50,
            published_at_ms: 0,
            outstanding: 0,
            waiting_list_line: None,
            expired_line: None,
            expired_waiting_list_line: None,
            estimate: None,
        }
    }

    fn open(seq: u64) -> QueueTicketClaims {
        QueueTicketClaims {
            typ: "qt".into(),
            ticket_id: QueueTicketId::from_random(u128::from(seq)),
            event_id: EventId::parse("e1").unwrap(),
            customer_id: CustomerId::parse("c").unwrap(),
            device: String::new(),
            phase: QueuePhase::Open,
            seq,
            rank: Some(format!("{seq:020x}")),
            iat_ms: 0,
            exp_ms: 1,
            kid: String::new(),
            waiting_list: false,
        }
    }

    fn line(open_passed: u64) -> QueueLine {
        QueueLine {
            pre_open_passed: 0,
            pre_open_threshold: None,
            open_passed,
            open_rank: open_passed.checked_sub(1).map(|i| format!("{i:020x}")),
        }
    }

    #[test]
    fn open_tickets_are_served_first_come_first_served() {
        let w = wm(SaleState::OnSale);
        assert!(is_admitted(&open(9), &w));
        assert!(!is_admitted(&open(10), &w));
        let mut unranked = open(3);
        unranked.rank = None;
        assert!(is_admitted(&unranked, &w));
        let v = view(&open(30), &w);
        assert_eq!(v.state, QueueStatusState::Waiting);
        assert_eq!(v.ahead, Some(20));
        // No measured rate yet: the planned 5/s, give or take a quarter.
        assert_eq!(v.wait_s, Some(WaitRange { low: 3, high: 6 }));
        assert!(v.chance.is_some());
    }

    #[test]
    fn waiting_fans_are_told_when_the_rest_is_spoken_for() {
        let mut w = wm(SaleState::OnSale);
        w.remaining = 0;
        let v = view(&open(30), &w);
        assert_eq!(v.state, QueueStatusState::SoldOut);
        assert_eq!(v.choices, vec![QueueChoice::WaitingList, QueueChoice::Leave]);
        assert_eq!(view(&open(1), &w).state, QueueStatusState::Admitted);
        // The controller says so while places are still free but spoken for.
        let mut w = wm(SaleState::SoldOut);
        w.outstanding = 50;
        let mut on_list = open(30);
        on_list.waiting_list = true;
        let v = view(&on_list, &w);
        assert_eq!(v.state, QueueStatusState::SoldOut);
        assert_eq!(v.choices, vec![QueueChoice::Leave]);
    }

    #[test]
    fn the_waiting_list_line_admits_only_fans_who_chose_it() {
        let mut w = wm(SaleState::SoldOut);
        w.waiting_list_line = Some(line(40));
        let mut chose = open(30);
        chose.waiting_list = true;
        assert!(is_admitted(&chose, &w));
        assert_eq!(view(&chose, &w).state, QueueStatusState::Admitted);
        assert_eq!(view(&open(30), &w).state, QueueStatusState::SoldOut);
        // Places are counted from the line each fan is behind, so choosing the list never
        // moves a fan back.
        let mut later = open(60);
        assert_eq!(view(&later, &w).ahead, Some(50));
        later.waiting_list = true;
        assert_eq!(view(&later, &w).ahead, Some(20));
    }

    #[test]
    fn an_admission_past_its_window_is_expired() {
        let mut w = wm(SaleState::OnSale);
        w.expired_line = Some(line(5));
        let v = view(&open(3), &w);
        assert_eq!(v.state, QueueStatusState::Expired);
        assert_eq!(v.choices, vec![QueueChoice::Rejoin]);
        assert_eq!(view(&open(7), &w).state, QueueStatusState::Admitted);
    }

    #[test]
    fn a_seed_that_breaks_its_commitment_admits_no_pre_open_ticket() {
        let mut w = wm(SaleState::OnSale);
        w.pre_open_threshold = Some(u64::MAX);
        w.pre_open_count = 1;
        let mut c = open(0);
        c.phase = QueuePhase::PreOpen;
        assert!(is_admitted(&c, &w));
        w.seed = Some("cd".repeat(32));
        assert!(!is_admitted(&c, &w));
    }

    fn estimate() -> EstimateInputs {
        EstimateInputs {
            admitted_per_s: 10.0,
            admitted_per_s_low: 8.0,
            admitted_per_s_high: 12.0,
            planned_per_s: 10.0,
            returned_per_s: 0.0,
            tickets_per_order: 2.0,
            tickets_per_order_var: 0.5,
            conversion: 1.0,
            held: 0,
            hold_lapse: 0.0,
            waiting_list_share: 0.5,
        }
    }

    #[test]
    fn the_chance_falls_where_the_places_run_out() {
        let mut w = wm(SaleState::OnSale);
        w.remaining = 100;
        let e = estimate();
        // 100 places at 2 a fan: 50 fans' worth.
        assert!(chance(10.0, &w, &e) > 0.99);
        assert!(chance(60.0, &w, &e) < 0.01);
        let mid = chance(49.0, &w, &e);
        assert!((0.2..0.9).contains(&mid), "{mid}");
        // Fans who admit but never buy leave places for those behind them.
        let half = EstimateInputs { conversion: 0.5, ..e.clone() };
        assert!(chance(80.0, &w, &half) > 0.9);
        // Outstanding admissions take their share first.
        w.outstanding = 40;
        assert!(chance(20.0, &w, &e) < 0.01);
        let mut w = wm(SaleState::OnSale);
        w.remaining = 0;
        assert_eq!(chance(0.0, &w, &e), 0.0);
        // Held places that are observed to come back count for the queue.
        let lapsing = EstimateInputs { held: 40, hold_lapse: 0.5, ..e };
        assert!(chance(5.0, &w, &lapsing) > 0.9);
    }

    #[test]
    fn every_waiting_fan_gets_a_wait_range_and_a_chance() {
        let mut w = wm(SaleState::OnSale);
        w.estimate = Some(estimate());
        let v = view(&open(30), &w);
        // 20 ahead at 8..12 per second.
        assert_eq!(v.wait_s, Some(WaitRange { low: 1, high: 3 }));
        assert!(v.chance.is_some_and(|c| c > 0.9));
        for state in [SaleState::Scheduled, SaleState::Paused, SaleState::SoldOut] {
            let mut w = w.clone();
            w.state = state;
            let v = view(&open(30), &w);
            assert!(v.chance.is_some(), "{state:?}");
            if state != SaleState::SoldOut {
                assert!(v.wait_s.is_some(), "{state:?}");
            }
        }
        // Once sold out, the wait follows returns; with none seen there is no range, only
        // the chance.
        let mut w = w.clone();
        w.state = SaleState::SoldOut;
        assert_eq!(view(&open(30), &w).wait_s, None);
        w.estimate.as_mut().unwrap().returned_per_s = 4.0;
        assert!(view(&open(30), &w).wait_s.is_some());
    }

    #[test]
    fn normal_cdf_is_accurate() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-6);
        assert!((normal_cdf(1.96) - 0.975).abs() < 1e-3);
        assert!((normal_cdf(-1.0) - 0.158_655).abs() < 1e-4);
    }
}
