//! Clock and randomness for Tessera's core code.
//!
//! Core logic never calls `SystemTime::now` or `thread_rng` (clippy.toml forbids it in
//! core crates); it takes a [`Clock`] and an [`Rng`]. Processes pass [`SystemClock`] and
//! [`OsRng`]; tests and the simulator pass [`ManualClock`] and [`SeededRng`].
//! [`retry`] is the one retry policy of the platform.
//! This crate is tiny on purpose: it has no I/O and no async.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use rand::{RngCore as _, SeedableRng as _};

/// Wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods, reason = "the one place that reads the real clock")]
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now_ms: u64) -> Arc<Self> {
        Arc::new(ManualClock(AtomicU64::new(now_ms)))
    }
    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn set_ms(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

/// A source of randomness.
pub trait Rng: Send + Sync + 'static {
    fn next_u64(&self) -> u64;
    fn next_u128(&self) -> u128 {
        (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64())
    }
    fn fill(&self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    /// A uniform value in `0..n` (`n > 0`).
    fn below(&self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        // Lemire's multiply-shift with rejection: unbiased.
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

/// The operating system's randomness (via a thread-local CSPRNG seeded from the OS).
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRng;

impl Rng for OsRng {
    #[allow(clippy::disallowed_methods, reason = "the one place that uses OS randomness")]
    fn next_u64(&self) -> u64 {
        rand::thread_rng().next_u64()
    }
}

/// A deterministic generator for tests and the simulator.
#[derive(Debug)]
pub struct SeededRng(Mutex<rand_chacha::ChaCha8Rng>);

impl SeededRng {
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(SeededRng(Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed))))
    }
}

impl Rng for SeededRng {
    fn next_u64(&self) -> u64 {
        self.0.lock().next_u64()
    }
}

impl<R: Rng + ?Sized> Rng for Arc<R> {
    fn next_u64(&self) -> u64 {
        (**self).next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_rng_is_reproducible_and_below_is_in_range() {
        let a = SeededRng::new(42);
        let b = SeededRng::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[a.below(3) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance_ms(250);
        assert_eq!(c.now_ms(), 1_250);
    }
}

/// The W3C `traceparent` of the caller's current span, for records that carry a trace
/// across a process boundary (outbox entries, queued notifications). Core crates stay free
/// of tracing exporters: a process's telemetry registers the source once
/// ([`trace::set_source`]); without one (unit tests, the simulator) there is none, so
/// nothing nondeterministic enters a record.
pub mod trace {
    use std::sync::OnceLock;

    static SOURCE: OnceLock<fn() -> Option<String>> = OnceLock::new();

    /// Registers where the current `traceparent` comes from (first call wins).
    pub fn set_source(source: fn() -> Option<String>) {
        let _ = SOURCE.set(source);
    }

    /// The current span's `traceparent`, when telemetry registered a source and the span
    /// belongs to a trace.
    pub fn current_traceparent() -> Option<String> {
        SOURCE.get().and_then(|f| f())
    }
}

pub mod retry {
    //! The one retry policy every retry in Tessera uses (store transactions, the outbox
    //! relay, payment-provider calls, notification deliveries, the payment simulator's
    //! webhooks): exponential backoff with jitter, from `backon`.
    //!
    //! The wait before retry `n` (from 1) is drawn from the upper half of its step,
    //! `initial * 2^(n-1)` capped at `max` ("equal jitter"): retries of many callers that
    //! failed together spread out, and none waits less than half its step. The jitter is
    //! seeded where the caller has a seeded [`Rng`](super::Rng) (the simulator replays it).

    use std::time::Duration;

    pub use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

    /// Exponential backoff with equal jitter.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Backoff {
        /// The first step.
        pub initial: Duration,
        /// The largest step.
        pub max: Duration,
        /// How many retries (waits) at most; `None` for as many as the caller makes.
        pub retries: Option<usize>,
    }

    impl Backoff {
        pub const fn new(initial: Duration, max: Duration) -> Self {
            Backoff { initial, max, retries: None }
        }

        /// At most `retries` waits.
        pub const fn with_retries(mut self, retries: usize) -> Self {
            self.retries = Some(retries);
            self
        }

        /// The policy as `backon`'s builder (for `Retryable::retry`), its jitter seeded
        /// with `seed`, or from the operating system with `None`.
        pub fn builder(&self, seed: Option<u64>) -> ExponentialBuilder {
            // backon adds a random part in [0, delay) to each delay: starting from half
            // the step gives [step/2, step).
            let b = ExponentialBuilder::new()
                .with_min_delay(self.initial / 2)
                .with_max_delay(self.max / 2)
                .with_factor(2.0)
                .with_jitter();
            let b = match seed {
                Some(s) => b.with_jitter_seed(s),
                None => b,
            };
            match self.retries {
                Some(n) => b.with_max_times(n),
                None => b.without_max_times(),
            }
        }

        /// The waits, in order (`None` once the retries are used up).
        pub fn delays(&self, seed: Option<u64>) -> ExponentialBackoff {
            self.builder(seed).build()
        }

        /// The wait before retry `n` (from 1) of a caller that keeps no iterator (a
        /// delivery whose attempts are counted in the store).
        pub fn nth(&self, n: u32, seed: u64) -> Duration {
            let unbounded = Backoff { retries: None, ..*self };
            // Past 64 doublings every step is the cap.
            let n = n.clamp(1, 64) as usize;
            unbounded.delays(Some(seed)).nth(n - 1).unwrap_or(self.max)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn steps_double_to_the_cap_each_in_its_upper_half() {
            let b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1_000));
            for seed in 0..50 {
                let got: Vec<Duration> = b.delays(Some(seed)).take(6).collect();
                for (d, step) in got.iter().zip([100u64, 200, 400, 800, 1_000, 1_000]) {
                    let step = Duration::from_millis(step);
                    assert!(
                        *d >= step / 2 && *d <= step,
                        "seed {seed}: {d:?} for a step of {step:?}"
                    );
                }
                for n in [1u32, 3, 30, 1_000] {
                    let step = Duration::from_millis((100u64 << (n - 1).min(10)).min(1_000));
                    let d = b.nth(n, seed);
                    assert!(d >= step / 2 && d <= step, "retry {n}: {d:?}");
                }
            }
        }

        #[test]
        fn retries_run_out_and_a_seed_replays() {
            let b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).with_retries(3);
            assert_eq!(b.delays(None).count(), 3);
            let a: Vec<Duration> = b.delays(Some(7)).collect();
            assert_eq!(a, b.delays(Some(7)).collect::<Vec<_>>());
            assert_eq!(b.nth(5, 7), b.nth(5, 7), "nth ignores the retry limit");
        }
    }
}
