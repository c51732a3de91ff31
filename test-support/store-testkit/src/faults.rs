//! [`FaultyStore`]: wraps any store and makes commits fail the ways FoundationDB's do,
//! for tests and the simulator: `commit_unknown_result` after the commit was applied, or
//! before it was, and spurious conflicts. Code above the store must stay correct.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use tessera_store::{
    CommitInfo, KeyValue, MutationType, RangeRequest, Store, StoreError, Transaction,
};

/// Fault probabilities, in parts per million per commit.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultPlan {
    /// Commit is applied, then the caller hears `CommitUnknown`.
    pub unknown_after_commit_ppm: u32,
    /// Commit is dropped, and the caller hears `CommitUnknown`.
    pub unknown_before_commit_ppm: u32,
    /// Commit is dropped with `Conflict`.
    pub spurious_conflict_ppm: u32,
}

/// A store whose commits fail according to a [`FaultPlan`], driven by a seeded generator.
#[derive(Clone, Debug)]
pub struct FaultyStore<S> {
    inner: S,
    plan: FaultPlan,
    state: Arc<AtomicU64>,
    injected: Arc<AtomicU64>,
}

impl<S: Store> FaultyStore<S> {
    pub fn new(inner: S, plan: FaultPlan, seed: u64) -> Self {
        FaultyStore {
            inner,
            plan,
            state: Arc::new(AtomicU64::new(seed | 1)),
            injected: Arc::new(AtomicU64::new(0)),
        }
    }
    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

fn next_ppm(state: &AtomicU64) -> u32 {
    // splitmix64: deterministic for a seed, no locking.
    let mut z = state
        .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % 1_000_000) as u32
}

impl<S: Store> Store for FaultyStore<S> {
    type Trx = FaultyTrx<S::Trx>;

    fn create_trx(&self) -> Result<Self::Trx, StoreError> {
        Ok(FaultyTrx {
            inner: self.inner.create_trx()?,
            plan: self.plan,
            state: self.state.clone(),
            injected: self.injected.clone(),
        })
    }

    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
}

/// A transaction of a [`FaultyStore`].
#[derive(Clone, Debug)]
pub struct FaultyTrx<T> {
    inner: T,
    plan: FaultPlan,
    state: Arc<AtomicU64>,
    injected: Arc<AtomicU64>,
}

impl<T: Transaction> Transaction for FaultyTrx<T> {
    async fn get(&self, key: &[u8], snapshot: bool) -> Result<Option<Bytes>, StoreError> {
        self.inner.get(key, snapshot).await
    }
    async fn get_range(
        &self,
        range: &RangeRequest,
        snapshot: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
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
        self.inner.read_version().await
    }
    async fn commit(self) -> Result<CommitInfo, StoreError> {
        let roll = next_ppm(&self.state);
        let p = self.plan;
        let before = p.unknown_before_commit_ppm;
        let conflict = before + p.spurious_conflict_ppm;
        let after = conflict + p.unknown_after_commit_ppm;
        if roll < before {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::CommitUnknown);
        }
        if roll < conflict {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Conflict);
        }
        let info = self.inner.commit().await?;
        if roll < after && info.version != 0 {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::CommitUnknown);
        }
        Ok(info)
    }
}
