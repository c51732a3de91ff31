//! A per-region circuit breaker. Pure: time comes in as `now_ms`.
//!
//! - **Closed**: traffic flows; `failure_threshold` consecutive failures open it, and a
//!   refused connection opens it at once ([`Breaker::trip`]).
//! - **Open**: no traffic until `open_ms` has passed.
//! - **Half-open**: one trial at a time (the next health probe, or one request). Success
//!   closes the breaker. A failed trial request opens it again for twice as long, up to
//!   `open_ms_max`; a failed probe opens it again for as long as before.

use crate::config::BreakerConfig;

/// What a breaker allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The name used in [`tessera_api::ops::RegionStatus::breaker`] and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// 0 closed, 1 half-open, 2 open (the `tessera_router_breaker_state` gauge).
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Closed { failures: u32 },
    Open { until_ms: u64, open_ms: u64 },
    HalfOpen { trial: bool, open_ms: u64 },
}

/// One region's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    inner: Inner,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        Breaker { cfg, inner: Inner::Closed { failures: 0 } }
    }

    /// Moves an open breaker whose time ran out to half-open.
    fn advance(&mut self, now_ms: u64) {
        if let Inner::Open { until_ms, open_ms } = self.inner
            && now_ms >= until_ms
        {
            self.inner = Inner::HalfOpen { trial: false, open_ms };
        }
    }

    pub fn state(&mut self, now_ms: u64) -> BreakerState {
        self.advance(now_ms);
        match self.inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may go to the region now. In half-open state this takes the one
    /// trial slot; the caller must report the outcome.
    pub fn try_acquire(&mut self, now_ms: u64) -> bool {
        self.advance(now_ms);
        match &mut self.inner {
            Inner::Closed { .. } => true,
            Inner::Open { .. } => false,
            Inner::HalfOpen { trial, .. } => !std::mem::replace(trial, true),
        }
    }

    pub fn on_success(&mut self, now_ms: u64) {
        self.advance(now_ms);
        match self.inner {
            Inner::Closed { .. } | Inner::HalfOpen { .. } => {
                self.inner = Inner::Closed { failures: 0 }
            }
            // A late success of a request sent before the breaker opened proves little.
            Inner::Open { .. } => {}
        }
    }

    pub fn on_failure(&mut self, now_ms: u64) {
        self.advance(now_ms);
        match self.inner {
            Inner::Closed { failures } => {
                let failures = failures + 1;
                if failures >= self.cfg.failure_threshold {
                    self.open(now_ms, self.cfg.open_ms);
                } else {
                    self.inner = Inner::Closed { failures };
                }
            }
            Inner::HalfOpen { open_ms, .. } => {
                let next =
                    open_ms.saturating_mul(2).min(self.cfg.open_ms_max.max(self.cfg.open_ms));
                self.open(now_ms, next);
            }
            Inner::Open { .. } => {}
        }
    }

    /// Opens at once (a refused connection needs no second opinion).
    pub fn trip(&mut self, now_ms: u64) {
        self.advance(now_ms);
        match self.inner {
            Inner::Open { .. } => {}
            Inner::HalfOpen { open_ms, .. } => {
                let next =
                    open_ms.saturating_mul(2).min(self.cfg.open_ms_max.max(self.cfg.open_ms));
                self.open(now_ms, next);
            }
            Inner::Closed { .. } => self.open(now_ms, self.cfg.open_ms),
        }
    }

    /// A health probe's outcome. Probes are the half-open trials, so traffic does not
    /// have to be risked to find out a region is back; in closed state they only count
    /// as failures through the health view, not here.
    pub fn on_probe(&mut self, ok: bool, now_ms: u64) {
        self.advance(now_ms);
        if let Inner::HalfOpen { open_ms, .. } = self.inner {
            if ok {
                self.inner = Inner::Closed { failures: 0 };
            } else {
                // A failed probe reopens for the same time: probes cost no fan anything, so
                // a long outage must not push the region's return further out.
                self.open(now_ms, open_ms);
            }
        }
    }

    fn open(&mut self, now_ms: u64, open_ms: u64) {
        self.inner = Inner::Open { until_ms: now_ms + open_ms, open_ms };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig { failure_threshold: 3, open_ms: 1_000, open_ms_max: 4_000 }
    }

    /// Runs a script of `(at_ms, action)` and records the state after each step.
    fn check(script: &[(u64, &str)], expect: expect_test::Expect) {
        let mut b = Breaker::new(cfg());
        let mut out = String::new();
        for (at, action) in script {
            let result = match *action {
                "fail" => {
                    b.on_failure(*at);
                    String::new()
                }
                "ok" => {
                    b.on_success(*at);
                    String::new()
                }
                "trip" => {
                    b.trip(*at);
                    String::new()
                }
                "probe-ok" => {
                    b.on_probe(true, *at);
                    String::new()
                }
                "probe-fail" => {
                    b.on_probe(false, *at);
                    String::new()
                }
                "acquire" => format!(" -> {}", b.try_acquire(*at)),
                other => panic!("unknown action {other}"),
            };
            out.push_str(&format!("{at:05} {action:<10}{result:<9} {}\n", b.state(*at).as_str()));
        }
        expect.assert_eq(&out);
    }

    #[test]
    fn opens_after_consecutive_failures_and_half_opens_after_the_timeout() {
        check(
            &[
                (0, "fail"),
                (10, "ok"),
                (20, "fail"),
                (30, "fail"),
                (40, "acquire"),
                (50, "fail"),
                (60, "acquire"),
                (1_049, "acquire"),
                (1_050, "acquire"),
                (1_051, "acquire"),
                (1_060, "ok"),
                (1_070, "acquire"),
            ],
            expect_test::expect![[r#"
                00000 fail                closed
                00010 ok                  closed
                00020 fail                closed
                00030 fail                closed
                00040 acquire    -> true  closed
                00050 fail                open
                00060 acquire    -> false open
                01049 acquire    -> false open
                01050 acquire    -> true  half_open
                01051 acquire    -> false half_open
                01060 ok                  closed
                01070 acquire    -> true  closed
            "#]],
        );
    }

    #[test]
    fn a_refused_connection_trips_at_once_and_failed_trials_back_off() {
        check(
            &[
                (0, "trip"),
                (500, "probe-ok"),
                (1_000, "probe-fail"),
                (1_999, "acquire"),
                (2_000, "acquire"),
                (2_010, "fail"),
                (4_009, "acquire"),
                (4_010, "probe-fail"),
                (6_010, "probe-ok"),
                (6_020, "acquire"),
            ],
            expect_test::expect![[r#"
                00000 trip                open
                00500 probe-ok            open
                01000 probe-fail          open
                01999 acquire    -> false open
                02000 acquire    -> true  half_open
                02010 fail                open
                04009 acquire    -> false open
                04010 probe-fail          open
                06010 probe-ok            closed
                06020 acquire    -> true  closed
            "#]],
        );
    }
}
