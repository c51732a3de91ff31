//! The deterministic scheduler: virtual time in quanta, a gate that starts every store
//! transaction at a quantum boundary in a seeded order, and [`SimStore`], the store wrapper
//! that goes through the gate and interleaves transactions within a quantum.
//!
//! Why a gate: `tessera_store::run` backs off between attempts by a jittered sleep whose
//! randomness is not ours to seed. Under tokio's paused clock that jitter decides which
//! millisecond a retry wakes in, and so the order in which retries reach the store. The gate
//! makes that invisible: every transaction waits for the next quantum boundary (a quantum is
//! longer than the longest backoff) and all transactions that wait for the same boundary are
//! released in an order that depends only on the seed and on who is waiting. The wall clock
//! ([`ManualClock`]) also moves only at boundaries, so code that reads it before its first
//! store operation sees the same time whichever millisecond it woke in.
//!
//! Within a quantum no virtual time passes; transactions interleave at their store
//! operations (each may yield to the others), which is where real conflicts come from.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tessera_common::{ManualClock, Rng as _, SeededRng};
use tessera_store::{
    Bytes, CommitInfo, KeyValue, MutationType, RangeRequest, Store, StoreError, Transaction,
};
use tokio::sync::oneshot;

tokio::task_local! {
    /// Who is running: a deterministic id given to every task the simulation spawns.
    static ACTOR: u64;
}

/// Runs `f` as actor `id` (the key that orders it at the gate).
pub(crate) fn as_actor<F: Future>(id: u64, f: F) -> impl Future<Output = F::Output> {
    ACTOR.scope(id, f)
}

/// The actor running now, if the simulation spawned it.
pub(crate) fn current_actor() -> Option<u64> {
    ACTOR.try_with(|a| *a).ok()
}

/// Counters the scheduler keeps, for reports and for spotting lost determinism.
#[derive(Debug, Default)]
pub struct SchedStats {
    pub transactions: AtomicU64,
    pub commits: AtomicU64,
    /// Commits refused for a conflict (real or injected).
    pub conflicts: AtomicU64,
    pub yields: AtomicU64,
    /// Gate entries by tasks the simulation did not name (their order is not controlled).
    pub anonymous: AtomicU64,
    /// Boundaries where one actor waited twice (their relative order is not controlled).
    pub duplicate_waiters: AtomicU64,
}

type Waiter = (u64, u64, oneshot::Sender<()>);

/// Virtual time, the wall clock, and the gate.
#[derive(Debug)]
pub struct Sched {
    quantum: Duration,
    start: tokio::time::Instant,
    wall_start_ms: u64,
    clock: Arc<ManualClock>,
    jumped_ms: AtomicU64,
    ticks: AtomicU64,
    waiters: Mutex<Vec<Waiter>>,
    arrivals: AtomicU64,
    rng: Arc<SeededRng>,
    yield_ppm: u64,
    pub stats: SchedStats,
}

impl Sched {
    /// Must be called inside the paused runtime.
    pub(crate) fn new(quantum: Duration, wall_start_ms: u64, seed: u64, yield_ppm: u64) -> Self {
        Sched {
            quantum,
            start: tokio::time::Instant::now(),
            wall_start_ms,
            clock: ManualClock::new(wall_start_ms),
            jumped_ms: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            waiters: Mutex::new(Vec::new()),
            arrivals: AtomicU64::new(0),
            rng: SeededRng::new(seed),
            yield_ppm,
            stats: SchedStats::default(),
        }
    }

    pub fn clock(&self) -> Arc<ManualClock> {
        self.clock.clone()
    }

    /// Virtual milliseconds since the start (monotonic; clock jumps do not count).
    pub fn elapsed_ms(&self) -> u64 {
        self.ticks.load(Ordering::SeqCst) * self.quantum.as_millis() as u64
    }

    /// Moves the wall clock forward by `ms` at once (an NTP step, a VM pause).
    pub(crate) fn jump(&self, ms: u64) {
        self.jumped_ms.fetch_add(ms, Ordering::SeqCst);
        self.clock.advance_ms(ms);
    }

    pub fn jumped_ms(&self) -> u64 {
        self.jumped_ms.load(Ordering::SeqCst)
    }

    /// The ticker: at every boundary, moves the wall clock and releases the gate. Runs until
    /// aborted.
    pub(crate) async fn run_ticker(self: Arc<Self>) {
        loop {
            let n = self.ticks.load(Ordering::SeqCst) + 1;
            tokio::time::sleep_until(self.start + self.quantum * n as u32).await;
            self.ticks.store(n, Ordering::SeqCst);
            let wall = self.wall_start_ms
                + n * self.quantum.as_millis() as u64
                + self.jumped_ms.load(Ordering::SeqCst);
            self.clock.set_ms(wall);
            let mut batch = std::mem::take(&mut *self.waiters.lock());
            if batch.is_empty() {
                continue;
            }
            // Who waits is deterministic; in which order they arrived is not. Order by who,
            // then shuffle with the seed.
            batch.sort_by_key(|(actor, arrival, _)| (*actor, *arrival));
            if batch.windows(2).any(|w| w[0].0 == w[1].0) {
                self.stats.duplicate_waiters.fetch_add(1, Ordering::Relaxed);
            }
            for i in (1..batch.len()).rev() {
                let j = self.rng.below(i as u64 + 1) as usize;
                batch.swap(i, j);
            }
            // Waking in this order queues the tasks in this order.
            for (_, _, tx) in batch {
                let _ = tx.send(());
            }
        }
    }

    /// Waits for the next quantum boundary and this actor's turn in it.
    pub(crate) async fn gate(&self) {
        let actor = match current_actor() {
            Some(a) => a,
            None => {
                self.stats.anonymous.fetch_add(1, Ordering::Relaxed);
                u64::MAX
            }
        };
        let (tx, rx) = oneshot::channel();
        let arrival = self.arrivals.fetch_add(1, Ordering::Relaxed);
        self.waiters.lock().push((actor, arrival, tx));
        // A closed gate (the ticker stopped at the end of a run) lets everyone through.
        let _ = rx.await;
    }

    /// Lets other transactions of this quantum run first, sometimes.
    pub(crate) async fn maybe_yield(&self) {
        if self.rng.below(1_000_000) < self.yield_ppm {
            self.stats.yields.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
        }
    }
}

/// A store whose transactions start at quantum boundaries and interleave at their reads and
/// commits. Semantics are the inner store's.
#[derive(Debug, Clone)]
pub struct SimStore<S> {
    inner: S,
    sched: Arc<Sched>,
}

impl<S: Store> SimStore<S> {
    pub(crate) fn new(inner: S, sched: Arc<Sched>) -> Self {
        SimStore { inner, sched }
    }
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Store> Store for SimStore<S> {
    type Trx = SimTrx<S::Trx>;

    fn create_trx(&self) -> Result<Self::Trx, StoreError> {
        self.sched.stats.transactions.fetch_add(1, Ordering::Relaxed);
        Ok(SimTrx {
            inner: self.inner.create_trx()?,
            sched: self.sched.clone(),
            gated: Arc::new(AtomicBool::new(false)),
        })
    }

    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
}

/// A transaction of a [`SimStore`].
#[derive(Debug, Clone)]
pub struct SimTrx<T> {
    inner: T,
    sched: Arc<Sched>,
    gated: Arc<AtomicBool>,
}

impl<T: Transaction> SimTrx<T> {
    /// Passes the gate before the transaction's first operation; then, for operations that
    /// can conflict, maybe lets others go first.
    async fn enter(&self, interleave: bool) {
        if !self.gated.swap(true, Ordering::SeqCst) {
            self.sched.gate().await;
        }
        if interleave {
            self.sched.maybe_yield().await;
        }
    }
}

impl<T: Transaction> Transaction for SimTrx<T> {
    async fn get(&self, key: &[u8], snapshot: bool) -> Result<Option<Bytes>, StoreError> {
        // Snapshot point reads never yield: some are skipped by process-wide caches on a
        // second run, and must not change the schedule.
        self.enter(!snapshot).await;
        self.inner.get(key, snapshot).await
    }

    async fn get_range(
        &self,
        range: &RangeRequest,
        snapshot: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.enter(!snapshot).await;
        self.inner.get_range(range, snapshot).await
    }

    fn set(&self, key: &[u8], value: &[u8]) {
        self.inner.set(key, value);
    }

    fn clear(&self, key: &[u8]) {
        self.inner.clear(key);
    }

    fn clear_range(&self, begin: &[u8], end: &[u8]) {
        self.inner.clear_range(begin, end);
    }

    fn atomic_op(&self, key: &[u8], param: &[u8], op: MutationType) {
        self.inner.atomic_op(key, param, op);
    }

    fn add_read_conflict_range(&self, begin: &[u8], end: &[u8]) {
        self.inner.add_read_conflict_range(begin, end);
    }

    async fn read_version(&self) -> Result<u64, StoreError> {
        self.enter(false).await;
        self.inner.read_version().await
    }

    async fn commit(self) -> Result<CommitInfo, StoreError> {
        self.enter(true).await;
        let sched = self.sched.clone();
        let result = self.inner.commit().await;
        sched.stats.commits.fetch_add(1, Ordering::Relaxed);
        if matches!(result, Err(StoreError::Conflict)) {
            sched.stats.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        // A region killed right here has committed without hearing so.
        sched.maybe_yield().await;
        result
    }
}
