//! Clock and randomness for Tessera's core code.
//!
//! Core logic never calls `SystemTime::now` or `thread_rng` (clippy.toml forbids it in
//! core crates); it takes a [`Clock`] and an [`Rng`]. Processes pass [`SystemClock`] and
//! [`OsRng`]; tests and the simulator pass [`ManualClock`] and [`SeededRng`].
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
