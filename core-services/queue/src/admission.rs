//! What the edge tells a waiting fan, from their ticket's claims and the latest watermark.

use tessera_api::inventory::SaleState;
use tessera_api::queue::{AdmissionWatermark, QueuePhase, QueueStatusState, QueueTicketClaims};

use crate::lottery;

/// A fan's standing.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueView {
    pub state: QueueStatusState,
    pub ahead: Option<u64>,
    pub estimated_wait_s: Option<u64>,
    /// Hex lottery value of a pre-open ticket once the seed is revealed.
    pub lottery: Option<String>,
}

/// The revealed seed, if the watermark carries one that matches its commitment.
fn revealed_seed(wm: &AdmissionWatermark) -> Option<Vec<u8>> {
    let seed = wm.seed.as_deref()?;
    if !lottery::verify_seed(&wm.commitment, seed) {
        return None;
    }
    hex::decode(seed).ok()
}

/// Whether the ticket is admitted under the watermark.
pub fn is_admitted(claims: &QueueTicketClaims, wm: &AdmissionWatermark) -> bool {
    if claims.event_id != wm.event_id {
        return false;
    }
    match claims.phase {
        QueuePhase::PreOpen => {
            let (Some(threshold), Some(seed)) = (wm.pre_open_threshold, revealed_seed(wm)) else {
                return false;
            };
            let value = lottery::lottery_value(&seed, &claims.event_id, &claims.ticket_id);
            lottery::lottery_rank(&value) <= threshold
        }
        QueuePhase::Open => match (&claims.rank, &wm.open_admitted_rank) {
            // Versionstamp ranks: fixed-length hex, so string order is rank order.
            (Some(rank), Some(upto)) => rank.len() == upto.len() && rank <= upto,
            (Some(_), None) => false,
            // A core that records no ranks: arrival order by sequence number.
            (None, _) => claims.seq < wm.open_admitted,
        },
    }
}

fn wait_s(ahead: u64, rate_per_s: f64) -> Option<u64> {
    if rate_per_s.is_finite() && rate_per_s > 0.0 {
        Some((ahead as f64 / rate_per_s).ceil() as u64)
    } else {
        None
    }
}

/// The fan's standing under the watermark. Places are honest: a pre-open fan's place is
/// their lottery rank scaled to the number of pre-open fans (exact in expectation; the core
/// knows the exact order), an open fan's place is exact.
pub fn view(claims: &QueueTicketClaims, wm: &AdmissionWatermark) -> QueueView {
    let seed = revealed_seed(wm);
    let lottery_hex = match (claims.phase, &seed) {
        (QueuePhase::PreOpen, Some(seed)) => {
            Some(hex::encode(lottery::lottery_value(seed, &claims.event_id, &claims.ticket_id)))
        }
        _ => None,
    };
    if is_admitted(claims, wm) {
        return QueueView {
            state: QueueStatusState::Admitted,
            ahead: Some(0),
            estimated_wait_s: Some(0),
            lottery: lottery_hex,
        };
    }
    let pre_open_left = wm.pre_open_count.saturating_sub(wm.pre_open_admitted);
    let ahead = match claims.phase {
        QueuePhase::PreOpen => match &seed {
            Some(seed) => {
                let rank = lottery::lottery_rank(&lottery::lottery_value(
                    seed,
                    &claims.event_id,
                    &claims.ticket_id,
                ));
                let place = ((rank as f64 / 18_446_744_073_709_551_616.0)
                    * wm.pre_open_count as f64)
                    .floor() as u64;
                Some(place.saturating_sub(wm.pre_open_admitted))
            }
            // Before the draw every pre-open place is equally likely: expect half ahead.
            None => Some(wm.pre_open_count / 2),
        },
        QueuePhase::Open => Some(pre_open_left + claims.seq.saturating_sub(wm.open_admitted)),
    };
    let state = match wm.state {
        SaleState::Closed => QueueStatusState::Closed,
        SaleState::SoldOut => QueueStatusState::SoldOut,
        _ if wm.remaining == 0 && wm.state == SaleState::OnSale => QueueStatusState::SoldOut,
        SaleState::Paused => QueueStatusState::Paused,
        SaleState::Scheduled => QueueStatusState::PreOpen,
        SaleState::OnSale => QueueStatusState::Waiting,
    };
    let estimated_wait_s = match state {
        QueueStatusState::Waiting | QueueStatusState::PreOpen => {
            ahead.and_then(|a| wait_s(a + 1, wm.rate_per_s))
        }
        _ => None,
    };
    QueueView { state, ahead, estimated_wait_s, lottery: lottery_hex }
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
        assert_eq!(v.estimated_wait_s, Some(5));
    }

    #[test]
    fn waiting_fans_are_told_when_the_rest_is_spoken_for() {
        let mut w = wm(SaleState::OnSale);
        w.remaining = 0;
        assert_eq!(view(&open(30), &w).state, QueueStatusState::SoldOut);
        assert_eq!(view(&open(1), &w).state, QueueStatusState::Admitted);
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
}
