//! Open-loop load: requests are offered at a fixed rate whatever the answers, and each
//! one's latency runs from the moment it was meant to be sent. A stall therefore delays
//! every request scheduled during it, as it would delay real fans, instead of quietly
//! lowering the offered load (coordinated omission, which closed-loop clients suffer).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// What one request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Held,
    /// Refused by the system (seat taken, sold out): a correct answer, timed like the rest.
    Refused,
    Error,
}

/// Figures of one open-loop run.
#[derive(Debug, Clone, Default)]
pub(crate) struct OpenLoopResult {
    pub(crate) offered_per_s: f64,
    pub(crate) sent: u64,
    pub(crate) held: u64,
    pub(crate) refused: u64,
    pub(crate) errors: u64,
    /// Requests not sent because too many were already waiting (the system fell behind).
    pub(crate) shed: u64,
    /// From the first intended send to the last answer.
    pub(crate) seconds: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

impl OpenLoopResult {
    pub(crate) fn answered_per_s(&self) -> f64 {
        (self.held + self.refused) as f64 / self.seconds.max(1e-9)
    }
}

/// Offers `rate_per_s` requests per second for `seconds`: request `i` is due at
/// `start + i / rate`, and `call(i)` is spawned as soon as it is due (the generator wakes
/// at least every millisecond and sends everything due by then). Latency is recorded from
/// the due time to the answer, in microseconds, in an HdrHistogram. At most
/// `in_flight_max` requests wait at once; beyond that the run sheds load and says so.
pub(crate) async fn run<F, Fut>(
    rate_per_s: f64,
    seconds: u64,
    in_flight_max: u64,
    call: F,
) -> anyhow::Result<OpenLoopResult>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    anyhow::ensure!(rate_per_s > 0.0, "an open-loop rate must be positive");
    let total = (rate_per_s * seconds as f64).round() as u64;
    let interval_ns = 1e9 / rate_per_s;
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?));
    let in_flight = Arc::new(AtomicU64::new(0));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let start = Instant::now() + Duration::from_millis(5);
    let due = |i: u64| start + Duration::from_nanos((i as f64 * interval_ns) as u64);
    let mut tasks = tokio::task::JoinSet::new();
    let mut shed = 0u64;
    let mut i = 0u64;
    let mut next_report = start + Duration::from_secs(1);
    while i < total {
        let now = Instant::now();
        while i < total && due(i) <= now {
            let intended = due(i);
            if in_flight.load(Ordering::Relaxed) >= in_flight_max {
                shed += 1;
            } else {
                in_flight.fetch_add(1, Ordering::Relaxed);
                let fut = call(i);
                let (hist, in_flight, counts) = (hist.clone(), in_flight.clone(), counts.clone());
                tasks.spawn(async move {
                    let outcome = fut.await;
                    let us = intended.elapsed().as_micros() as u64;
                    hist.lock().record(us.max(1)).ok();
                    let slot = match outcome {
                        Outcome::Held => 0,
                        Outcome::Refused => 1,
                        Outcome::Error => 2,
                    };
                    counts[slot].fetch_add(1, Ordering::Relaxed);
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
            i += 1;
        }
        // Reap finished tasks so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
        if now >= next_report {
            eprintln!(
                "    {:>4.1} s: {i} offered, {} answered, {} waiting",
                (now - start).as_secs_f64(),
                counts[0].load(Ordering::Relaxed) + counts[1].load(Ordering::Relaxed),
                in_flight.load(Ordering::Relaxed)
            );
            next_report += Duration::from_secs(1);
        }
        if i < total {
            tokio::time::sleep_until(due(i).into()).await;
        }
    }
    while tasks.join_next().await.is_some() {}
    let seconds = start.elapsed().as_secs_f64();
    let h = hist.lock();
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    Ok(OpenLoopResult {
        offered_per_s: rate_per_s,
        sent: total - shed,
        held: counts[0].load(Ordering::Relaxed),
        refused: counts[1].load(Ordering::Relaxed),
        errors: counts[2].load(Ordering::Relaxed),
        shed,
        seconds,
        p50_ms: q(0.50),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
        max_ms: h.max() as f64 / 1000.0,
    })
}

pub(crate) fn print_row(system: &str, workload: &str, load: f64, r: &OpenLoopResult) {
    println!(
        "{system:<22} {workload:<8} open loop at {:>3.0} % of peak: offered {:>7.0}/s ({} sent), answered {:>7.0}/s, p50={:>6.2} ms  p99={:>6.2} ms  p999={:>6.2} ms  max={:>7.2} ms{}",
        load * 100.0,
        r.offered_per_s,
        r.sent,
        r.answered_per_s(),
        r.p50_ms,
        r.p99_ms,
        r.p999_ms,
        r.max_ms,
        if r.shed + r.errors > 0 {
            format!("  (shed {}, errors {})", r.shed, r.errors)
        } else {
            String::new()
        }
    );
}
