//! The admission controller: the pure algorithm the core runs a few times a second to turn
//! the queue's counts, the remaining inventory, core health and the operator's rate into
//! the [`AdmissionWatermark`] it publishes on `tessera.admission.<event_id>`.
//!
//! Rules:
//! - Nobody is admitted unless the sale is on. Pre-open fans go first, in lottery order
//!   (the seed must have been revealed and must match the commitment); then open-phase
//!   fans in arrival order.
//! - The rate is the operator's, scaled down by core health (1.0 healthy, 0.0 down).
//! - Admissions in flight (admitted within the admission token's lifetime) never exceed
//!   `overbook` times the remaining seats: admitting more would only make fans wait
//!   in the hold step instead of the queue.
//! - When nothing is left (`remaining == 0`: every seat sold or held) the watermark says
//!   `sold_out`, and waiting fans are told so.

use std::collections::VecDeque;

use tessera_api::inventory::SaleState;
use tessera_api::queue::AdmissionWatermark;
use tessera_api::{EventId, QueueTicketId};

use crate::lottery;

/// Tunables of the controller.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerConfig {
    /// How long an admission token lives (admissions count as in flight this long).
    pub admission_ttl_ms: u64,
    /// In-flight admissions allowed per remaining seat.
    pub overbook: f64,
    /// Largest burst, in seconds of rate, that can accumulate (after a pause, say).
    pub burst_s: f64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig { admission_ttl_ms: 10 * 60 * 1000, overbook: 1.0, burst_s: 1.0 }
    }
}

/// What the core measures before each tick.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerInput {
    pub now_ms: u64,
    pub state: SaleState,
    /// Fans who joined before opening (the core's registrations).
    pub pre_open_count: u64,
    /// Fans who joined after opening.
    pub open_count: u64,
    /// Seats (or GA places) neither sold nor held.
    pub remaining: u64,
    /// 1.0 when the core is healthy, down to 0.0 when it cannot take load.
    pub core_health: f64,
    /// The operator's admission rate (fans per second).
    pub operator_rate_per_s: f64,
}

/// Why revealing a seed failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevealError {
    #[error("seed does not match the published commitment")]
    CommitmentMismatch,
}

/// The controller of one event. Keep one per event in the core; feed it `tick`s.
#[derive(Debug, Clone)]
pub struct AdmissionController {
    event_id: EventId,
    config: ControllerConfig,
    commitment: String,
    seed: Option<String>,
    /// Lottery ranks of the pre-open tickets, ascending (filled at reveal).
    pre_open_ranks: Vec<u64>,
    version: u64,
    budget: f64,
    last_tick_ms: Option<u64>,
    pre_open_admitted: u64,
    open_admitted: u64,
    /// (time, admitted count) of recent ticks, for the in-flight window.
    recent: VecDeque<(u64, u64)>,
    last_rate_per_s: f64,
}

impl AdmissionController {
    /// A controller for an event whose seed commitment is `commitment` (hex).
    pub fn new(event_id: EventId, commitment: String, config: ControllerConfig) -> Self {
        AdmissionController {
            event_id,
            config,
            commitment,
            seed: None,
            pre_open_ranks: Vec::new(),
            version: 0,
            budget: 0.0,
            last_tick_ms: None,
            pre_open_admitted: 0,
            open_admitted: 0,
            recent: VecDeque::new(),
            last_rate_per_s: 0.0,
        }
    }

    /// Reveals the seed at opening and draws the pre-open order from the registered
    /// ticket ids. Returns the ids in admission order (for the core's records).
    pub fn reveal(
        &mut self,
        seed_hex: &str,
        pre_open_tickets: &[QueueTicketId],
    ) -> Result<Vec<QueueTicketId>, RevealError> {
        if !lottery::verify_seed(&self.commitment, seed_hex) {
            return Err(RevealError::CommitmentMismatch);
        }
        let mut ranked: Vec<(u64, QueueTicketId)> = pre_open_tickets
            .iter()
            .filter_map(|t| lottery::rank_for(seed_hex, &self.event_id, t).map(|r| (r, t.clone())))
            .collect();
        ranked.sort();
        self.pre_open_ranks = ranked.iter().map(|(r, _)| *r).collect();
        self.seed = Some(seed_hex.to_owned());
        Ok(ranked.into_iter().map(|(_, t)| t).collect())
    }

    /// Restores counters after a restart or failover (from the core's durable records),
    /// so admission never moves backwards.
    pub fn restore(&mut self, version: u64, pre_open_admitted: u64, open_admitted: u64) {
        self.version = self.version.max(version);
        self.pre_open_admitted = self.pre_open_admitted.max(pre_open_admitted);
        self.open_admitted = self.open_admitted.max(open_admitted);
    }

    fn in_flight(&mut self, now_ms: u64) -> u64 {
        let horizon = now_ms.saturating_sub(self.config.admission_ttl_ms);
        while self.recent.front().is_some_and(|(t, _)| *t < horizon) {
            self.recent.pop_front();
        }
        self.recent.iter().map(|(_, n)| n).sum()
    }

    /// Advances the controller and returns the watermark to publish. `open_rank_at(i)` is
    /// the rank (versionstamp hex, see `QueuePlace::rank`) of the `i`-th open-phase place in
    /// arrival order (0-based); the watermark admits every open place up to that of the
    /// last admitted fan.
    pub fn tick(
        &mut self,
        input: &ControllerInput,
        open_rank_at: impl Fn(u64) -> Option<String>,
    ) -> AdmissionWatermark {
        let dt_s = match self.last_tick_ms {
            Some(last) => (input.now_ms.saturating_sub(last) as f64 / 1000.0).min(5.0),
            None => 0.0,
        };
        self.last_tick_ms = Some(input.now_ms);
        let health =
            if input.core_health.is_finite() { input.core_health.clamp(0.0, 1.0) } else { 0.0 };
        let operator = if input.operator_rate_per_s.is_finite() {
            input.operator_rate_per_s.max(0.0)
        } else {
            0.0
        };
        let rate = operator * health;
        let in_flight = self.in_flight(input.now_ms);
        let pre_open_total = if self.seed.is_some() {
            self.pre_open_ranks.len() as u64
        } else {
            input.pre_open_count
        };

        let mut state = input.state;
        let mut effective_rate = 0.0;
        if input.state == SaleState::OnSale {
            if input.remaining == 0 {
                state = SaleState::SoldOut;
                self.budget = 0.0;
            } else {
                effective_rate = rate;
                let headroom =
                    (input.remaining as f64 * self.config.overbook - in_flight as f64).max(0.0);
                self.budget = (self.budget + rate * dt_s).min(rate * self.config.burst_s.max(0.0));
                let mut n = self.budget.min(headroom).floor() as u64;
                let mut admitted = 0;
                // Pre-open fans first, and only once the draw is public.
                if self.seed.is_some() {
                    let take = n.min(pre_open_total.saturating_sub(self.pre_open_admitted));
                    self.pre_open_admitted += take;
                    admitted += take;
                    n -= take;
                }
                let pre_open_done = self.seed.is_some() && self.pre_open_admitted >= pre_open_total;
                if pre_open_done || pre_open_total == 0 {
                    let take = n.min(input.open_count.saturating_sub(self.open_admitted));
                    self.open_admitted += take;
                    admitted += take;
                }
                self.budget -= admitted as f64;
                if admitted > 0 {
                    self.recent.push_back((input.now_ms, admitted));
                }
                if headroom - (admitted as f64) < 1.0 {
                    // The rest is spoken for by fans already admitted; rate shows 0 so wait
                    // estimates do not promise progress that may not come.
                    effective_rate = 0.0;
                }
            }
        } else {
            self.budget = 0.0;
        }
        self.last_rate_per_s = effective_rate;
        self.version += 1;
        AdmissionWatermark {
            event_id: self.event_id.clone(),
            state,
            version: self.version,
            commitment: self.commitment.clone(),
            seed: self.seed.clone(),
            pre_open_count: pre_open_total,
            pre_open_threshold: lottery::threshold_for(
                &self.pre_open_ranks,
                self.pre_open_admitted,
            ),
            pre_open_admitted: self.pre_open_admitted,
            open_admitted: self.open_admitted,
            open_admitted_rank: self.open_admitted.checked_sub(1).and_then(open_rank_at),
            open_count: input.open_count,
            rate_per_s: effective_rate,
            remaining: input.remaining,
            published_at_ms: input.now_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(now_ms: u64, open_count: u64, remaining: u64) -> ControllerInput {
        ControllerInput {
            now_ms,
            state: SaleState::OnSale,
            pre_open_count: 0,
            open_count,
            remaining,
            core_health: 1.0,
            operator_rate_per_s: 10.0,
        }
    }

    fn rank(i: u64) -> Option<String> {
        Some(format!("{i:020x}"))
    }

    fn controller() -> AdmissionController {
        let seed = "11".repeat(32);
        AdmissionController::new(
            EventId::parse("e1").unwrap(),
            lottery::commitment(&seed).unwrap(),
            ControllerConfig::default(),
        )
    }

    #[test]
    fn admits_at_the_operator_rate_scaled_by_health() {
        let mut c = controller();
        c.reveal(&"11".repeat(32), &[]).unwrap();
        c.tick(&input(0, 1000, 1000), rank);
        let w = c.tick(&input(1000, 1000, 1000), rank);
        assert_eq!(w.open_admitted, 10);
        assert_eq!(w.open_admitted_rank, rank(9));
        let mut half = input(2000, 1000, 1000);
        half.core_health = 0.5;
        let w = c.tick(&half, rank);
        assert_eq!(w.open_admitted, 15);
        assert_eq!(w.rate_per_s, 5.0);
        assert!(w.version > 1);
    }

    #[test]
    fn pre_open_fans_go_first_in_lottery_order() {
        let mut c = controller();
        let ids: Vec<QueueTicketId> = (0..20).map(QueueTicketId::from_random).collect();
        let order = c.reveal(&"11".repeat(32), &ids).unwrap();
        c.tick(&input(0, 5, 1000), rank);
        let w = c.tick(&input(1000, 5, 1000), rank);
        assert_eq!((w.pre_open_admitted, w.open_admitted), (10, 0));
        let t = w.pre_open_threshold.unwrap();
        let seed = hex::decode("11".repeat(32)).unwrap();
        let admitted: Vec<_> = ids
            .iter()
            .filter(|id| {
                lottery::lottery_rank(&lottery::lottery_value(&seed, &w.event_id, id)) <= t
            })
            .cloned()
            .collect();
        assert_eq!(admitted.len(), 10);
        assert!(order[..10].iter().all(|id| admitted.contains(id)));
        let w = c.tick(&input(2000, 5, 1000), rank);
        assert_eq!((w.pre_open_admitted, w.open_admitted), (20, 0));
        let w = c.tick(&input(3000, 5, 1000), rank);
        assert_eq!(w.open_admitted, 5);
    }

    #[test]
    fn stops_admitting_when_the_rest_is_spoken_for() {
        let mut c = controller();
        c.reveal(&"11".repeat(32), &[]).unwrap();
        c.tick(&input(0, 100, 3), rank);
        let w = c.tick(&input(1000, 100, 3), rank);
        assert_eq!(w.open_admitted, 3);
        assert_eq!(w.rate_per_s, 0.0);
        let w = c.tick(&input(2000, 100, 0), rank);
        assert_eq!(w.state, SaleState::SoldOut);
        assert_eq!(w.open_admitted, 3);
    }

    #[test]
    fn refuses_a_seed_that_breaks_the_commitment() {
        let mut c = controller();
        assert_eq!(c.reveal(&"22".repeat(32), &[]), Err(RevealError::CommitmentMismatch));
    }

    #[test]
    fn admits_nobody_before_the_sale_opens() {
        let mut c = controller();
        let mut i = input(0, 0, 100);
        i.state = SaleState::Scheduled;
        i.pre_open_count = 50;
        c.tick(&i, rank);
        i.now_ms = 5000;
        let w = c.tick(&i, rank);
        assert_eq!((w.pre_open_admitted, w.open_admitted, w.pre_open_threshold), (0, 0, None));
        assert_eq!(w.pre_open_count, 50);
    }
}
