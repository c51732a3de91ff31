//! Faults: regions dying mid-saga, commits with unknown outcomes, a misbehaving payment
//! provider, and a wall clock that jumps.

use std::sync::Arc;
use std::time::Duration;

use tessera_common::{Rng as _, SeededRng};

use crate::scenario::{Fault, Plan};
use crate::util::derive;
use crate::world::World;

fn ppm(p: f64) -> u64 {
    (p.clamp(0.0, 1.0) * 1_000_000.0).round() as u64
}

/// At virtual time `at`, one region dies: every task of it (requests in flight, sagas
/// halfway, its sweeper and reconciler) stops where it is. After `down` a fresh instance of
/// the region starts, with a new sweeper and reconciler.
#[derive(Debug, Clone, Copy)]
pub struct KillRegion {
    pub at: Duration,
}

/// How long a killed region stays down.
const DOWN: Duration = Duration::from_secs(30);

impl Fault for KillRegion {
    fn name(&self) -> String {
        format!("KillRegion{{at:{}s}}", self.at.as_secs())
    }

    fn start(&self, world: &Arc<World>) {
        let w = world.clone();
        let at = self.at;
        world.spawn_watched(async move {
            let rng = SeededRng::new(derive(w.seed, "kill", at.as_millis() as u64, 0));
            tokio::time::sleep(at).await;
            // Die in the middle of a quantum, between other tasks' store operations.
            w.sched.gate().await;
            for _ in 0..rng.below(8) {
                tokio::task::yield_now().await;
            }
            let region = rng.below(w.regions() as u64) as usize;
            w.kill_region(region);
            tokio::time::sleep(DOWN).await;
            w.start_region(region);
        });
    }
}

/// Commits fail the ways FoundationDB's do, each with probability `p`: outcome unknown after
/// the commit was applied, outcome unknown with nothing applied (half of `p` each), and a
/// spurious conflict (`p`).
#[derive(Debug, Clone, Copy)]
pub struct UnknownCommit {
    pub p: f64,
}

impl Fault for UnknownCommit {
    fn name(&self) -> String {
        format!("UnknownCommit{{p:{}}}", self.p)
    }

    fn configure(&self, plan: &mut Plan) {
        let half = (ppm(self.p) / 2) as u32;
        plan.store.unknown_after_commit_ppm = half;
        plan.store.unknown_before_commit_ppm = half;
        plan.store.spurious_conflict_ppm = ppm(self.p) as u32;
    }
}

/// The provider declines approvable cards with probability `decline`, and loses a
/// mutating call's outcome with probability `unknown` (the request never arrived, or it
/// was applied and the answer lost, or it was applied and answered with a saved 500); reads
/// fail as unavailable with probability `unknown / 2`.
#[derive(Debug, Clone, Copy)]
pub struct ProviderFaults {
    pub decline: f64,
    pub unknown: f64,
}

impl Fault for ProviderFaults {
    fn name(&self) -> String {
        format!("ProviderFaults{{decline:{},unknown:{}}}", self.decline, self.unknown)
    }

    fn configure(&self, plan: &mut Plan) {
        plan.provider.decline_ppm = ppm(self.decline);
        plan.provider.unknown_ppm = ppm(self.unknown);
        plan.provider.read_failure_ppm = ppm(self.unknown / 2.0);
    }
}

/// With probability `p` the provider takes between half the client's timeout and `max` to
/// process a request: the client gives up, the request is applied later anyway, and the
/// saga's lease may lapse while its driver still waits.
#[derive(Debug, Clone, Copy)]
pub struct SlowProvider {
    pub p: f64,
    pub max: Duration,
}

impl Fault for SlowProvider {
    fn name(&self) -> String {
        format!("SlowProvider{{p:{},max:{}s}}", self.p, self.max.as_secs())
    }

    fn configure(&self, plan: &mut Plan) {
        plan.provider.slow_ppm = ppm(self.p);
        plan.provider.slow_max_ms = self.max.as_millis() as u64;
    }
}

/// The wall clock jumps forward `jumps` times during the sale, each time by up to `max`
/// (an NTP step, a paused VM): holds expire mid-checkout, leases lapse under their holder.
#[derive(Debug, Clone, Copy)]
pub struct ClockJumps {
    pub jumps: u32,
    pub max: Duration,
}

impl Fault for ClockJumps {
    fn name(&self) -> String {
        format!("ClockJumps{{jumps:{},max:{}s}}", self.jumps, self.max.as_secs())
    }

    fn start(&self, world: &Arc<World>) {
        let w = world.clone();
        let (jumps, max) = (self.jumps, self.max.as_millis() as u64);
        world.spawn_watched(async move {
            let rng = SeededRng::new(derive(w.seed, "jumps", 0, 0));
            for _ in 0..jumps {
                tokio::time::sleep(Duration::from_millis(5_000 + rng.below(240_000))).await;
                w.sched.gate().await;
                let by = 1 + rng.below(max.max(1));
                tracing::info!(target: "sim.world", at_ms = w.sched.elapsed_ms(), "the wall clock jumps {by} ms");
                w.sched.jump(by);
            }
        });
    }
}
