//! Tessera's inventory store: an ordered, transactional key-value store with
//! FoundationDB's semantics, and its backends.
//!
//! The [`Store`] / [`Transaction`] traits mirror FoundationDB: optimistic transactions
//! that read at a read version and commit only if nothing they read (without `snapshot`)
//! changed since; ordered range reads; snapshot reads that add no conflicts; atomic
//! operations (`add`, `max`, `min`, `compare_and_clear`); versionstamped keys and values;
//! and FoundationDB's documented limits ([`limits`]). [`run`] is the retry loop.
//!
//! Backends:
//! - [`embedded::EmbeddedStore`] (the default): durable (fsync before a commit is
//!   acknowledged), strictly serializable, shared by several processes on one machine
//!   through a common write-ahead log, with group commit.
//! - [`memory::MemoryStore`]: the same engine without disk, for the simulator and quick
//!   tests. Not durable; never the product path.
//! - `fdb::FdbStore` (feature `fdb`): a real FoundationDB cluster through the
//!   `foundationdb` crate.
//!
//! One conformance suite that every backend must pass, and a store wrapper that injects
//! FoundationDB's commit faults, are test support (`tessera-store-testkit`). [`fs`] is the file layer
//! under the embedded backend: the operating system's files, or a [`fs::FileSystem`] of the
//! caller's (the power-loss tests use one that forgets every unsynced write at a random
//! moment).
//!
//! This crate knows nothing about seats: keys are bytes. The key space lives in
//! `tessera-fdb-schema`.

use std::future::Future;
use std::time::Duration;

pub use bytes::Bytes;

pub mod embedded;
#[cfg(feature = "fdb")]
pub mod fdb;
pub mod fs;
mod headmap;
mod local;
pub mod memory;
mod mvcc;
mod wal;

pub use local::LocalTrx;

/// FoundationDB's documented limits, enforced by every backend.
pub mod limits {
    /// Largest key, in bytes.
    pub const KEY_SIZE_MAX: usize = 10_000;
    /// Largest value, in bytes.
    pub const VALUE_SIZE_MAX: usize = 100_000;
    /// Largest transaction (keys, values and conflict ranges), in bytes.
    pub const TRANSACTION_SIZE_MAX: usize = 10_000_000;
    /// Longest a transaction may live, in milliseconds.
    pub const TRANSACTION_AGE_MAX_MS: u64 = 5_000;
}

/// A key and its value.
pub type KeyValue = (Bytes, Bytes);

/// Errors from the store. [`StoreError::is_retryable`] tells the retry loop what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Something this transaction read was changed by a transaction that committed first
    /// (FoundationDB `not_committed`, 1020).
    #[error("transaction conflicted with a concurrent commit")]
    Conflict,
    /// The transaction's read version is older than the MVCC window
    /// (`transaction_too_old`, 1007).
    #[error("transaction is older than the 5 s window")]
    TooOld,
    /// The commit may or may not have happened (`commit_unknown_result`, 1021).
    #[error("commit outcome is unknown")]
    CommitUnknown,
    #[error("key of {0} bytes exceeds the 10,000-byte limit")]
    KeyTooLarge(usize),
    #[error("value of {0} bytes exceeds the 100,000-byte limit")]
    ValueTooLarge(usize),
    #[error("transaction of {0} bytes exceeds the 10 MB limit")]
    TransactionTooLarge(usize),
    #[error("invalid mutation: {0}")]
    InvalidMutation(&'static str),
    /// The transaction was used after commit.
    #[error("transaction was already committed")]
    UsedAfterCommit,
    #[error("store is unavailable: {0}")]
    Unavailable(String),
    #[error("store I/O failed")]
    Io(#[source] std::io::Error),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("store backend error: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether running the transaction again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Conflict | StoreError::TooOld | StoreError::CommitUnknown)
    }
    /// Whether the failed commit may nevertheless have been applied.
    pub fn maybe_committed(&self) -> bool {
        matches!(self, StoreError::CommitUnknown)
    }
}

/// Atomic operations, applied at commit time without reading (and so without conflicts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MutationType {
    /// Little-endian integer addition (wrapping), with the parameter's width.
    Add,
    /// Little-endian unsigned maximum.
    Max,
    /// Little-endian unsigned minimum.
    Min,
    /// Clears the key if its value equals the parameter.
    CompareAndClear,
    /// Sets a key containing a 10-byte placeholder at the offset given by the key's last
    /// 4 bytes (little endian), which are removed; the placeholder becomes the commit's
    /// versionstamp. The parameter is the value.
    SetVersionstampedKey,
    /// Sets the key to the parameter whose 10-byte placeholder at the offset in its last
    /// 4 bytes becomes the versionstamp.
    SetVersionstampedValue,
}

/// A range read: keys in `[begin, end)`, at most `limit` of them (0 = no limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRequest {
    pub begin: Vec<u8>,
    pub end: Vec<u8>,
    pub limit: usize,
    pub reverse: bool,
}

impl RangeRequest {
    pub fn new(begin: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        RangeRequest { begin: begin.into(), end: end.into(), limit: 0, reverse: false }
    }
    /// All keys that start with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        let (begin, end) = prefix_range(prefix);
        RangeRequest::new(begin, end)
    }
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
    pub fn reverse(mut self, reverse: bool) -> Self {
        self.reverse = reverse;
        self
    }
}

/// `[prefix, strinc(prefix))`: every key starting with `prefix`.
pub fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let begin = prefix.to_vec();
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xff {
            end.push(last + 1);
            return (begin, end);
        }
    }
    (begin, vec![0xff])
}

/// The smallest key strictly after `key`.
pub fn key_after(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.extend_from_slice(key);
    k.push(0);
    k
}

/// What a successful commit reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    /// The commit version (0 for read-only transactions, which commit nothing).
    pub version: u64,
    /// The 10-byte versionstamp of the commit: version (8 bytes, big endian) + order
    /// within the commit batch (2 bytes, big endian). Zero for read-only transactions.
    pub versionstamp: [u8; 10],
}

/// A store: a factory of transactions.
pub trait Store: Clone + Send + Sync + 'static {
    type Trx: Transaction;

    /// Starts a transaction. Its read version is taken at the first read.
    fn create_trx(&self) -> Result<Self::Trx, StoreError>;

    /// A short name of the backend for logs and metrics (`embedded`, `memory`, `fdb`).
    fn backend_name(&self) -> &'static str;
}

/// A transaction. Handles are cheap clones of one transaction; `commit` consumes it.
/// Reads see the transaction's own writes.
pub trait Transaction: Clone + Send + Sync + 'static {
    /// Reads a key. Without `snapshot`, the key joins the read conflict set.
    fn get(
        &self,
        key: &[u8],
        snapshot: bool,
    ) -> impl Future<Output = Result<Option<Bytes>, StoreError>> + Send;

    /// Reads a range in key order (or reverse). Without `snapshot`, the part of the range
    /// that was read joins the read conflict set.
    fn get_range(
        &self,
        range: &RangeRequest,
        snapshot: bool,
    ) -> impl Future<Output = Result<Vec<KeyValue>, StoreError>> + Send;

    fn set(&self, key: &[u8], value: &[u8]);
    fn clear(&self, key: &[u8]);
    fn clear_range(&self, begin: &[u8], end: &[u8]);
    fn atomic_op(&self, key: &[u8], param: &[u8], op: MutationType);

    /// Adds `[begin, end)` to the read conflict set without reading it.
    fn add_read_conflict_range(&self, begin: &[u8], end: &[u8]);
    fn add_read_conflict_key(&self, key: &[u8]) {
        self.add_read_conflict_range(key, &key_after(key));
    }

    /// The transaction's read version (taken now if no read happened yet).
    fn read_version(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Commits. A transaction without writes commits nothing and always succeeds.
    fn commit(self) -> impl Future<Output = Result<CommitInfo, StoreError>> + Send;
}

/// Sets `key` to a little-endian `i64` (the format `MutationType::Add` works on).
pub fn encode_i64(v: i64) -> [u8; 8] {
    v.to_le_bytes()
}

/// Reads a little-endian integer of up to 8 bytes (missing bytes are zero).
pub fn decode_i64(bytes: &[u8]) -> i64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    i64::from_le_bytes(buf)
}

/// Builds the parameter for [`MutationType::SetVersionstampedKey`]: `key` must contain
/// 10 placeholder bytes at `offset`.
pub fn versionstamped_key(mut key: Vec<u8>, offset: u32) -> Vec<u8> {
    key.extend_from_slice(&offset.to_le_bytes());
    key
}

/// Whether a run's previous attempt may already have committed (after
/// [`StoreError::CommitUnknown`]). Idempotent transactions check their idempotency record
/// when this is true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaybeCommitted(pub bool);

/// The error a transaction body returns: a store error (retried when retryable) or the
/// caller's own reason to abort (never retried, nothing committed).
#[derive(Debug)]
pub enum TrxError<E> {
    Store(StoreError),
    Abort(E),
}

impl<E> From<StoreError> for TrxError<E> {
    fn from(e: StoreError) -> Self {
        TrxError::Store(e)
    }
}

/// Shorthand for aborting a transaction body with a domain error.
pub fn abort<T, E>(e: E) -> Result<T, TrxError<E>> {
    Err(TrxError::Abort(e))
}

/// How [`run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError<E> {
    #[error("transaction failed")]
    Store(#[source] StoreError),
    #[error("transaction aborted")]
    Abort(E),
    #[error("transaction retried {attempts} times without committing")]
    RetriesExhausted {
        attempts: u32,
        #[source]
        last: StoreError,
    },
}

/// Retry policy for [`run`] (the platform's one policy, [`tessera_common::retry`]).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            max_attempts: 100,
            backoff_initial: Duration::from_micros(200),
            backoff_max: Duration::from_millis(50),
        }
    }
}

/// Runs `body` in a transaction and commits, retrying on conflicts, on too-old reads and
/// on unknown commit outcomes (then telling the body [`MaybeCommitted`]). The body may run
/// several times, so it must not have side effects outside the transaction.
pub async fn run<S, T, E, F, Fut>(store: &S, body: F) -> Result<T, RunError<E>>
where
    S: Store,
    F: FnMut(S::Trx, MaybeCommitted) -> Fut,
    Fut: Future<Output = Result<T, TrxError<E>>>,
{
    run_with(store, &RunOptions::default(), body).await.map(|(v, _)| v)
}

/// [`run`] with options, also returning the commit's [`CommitInfo`].
pub async fn run_with<S, T, E, F, Fut>(
    store: &S,
    opts: &RunOptions,
    mut body: F,
) -> Result<(T, CommitInfo), RunError<E>>
where
    S: Store,
    F: FnMut(S::Trx, MaybeCommitted) -> Fut,
    Fut: Future<Output = Result<T, TrxError<E>>>,
{
    let mut maybe_committed = false;
    let policy = tessera_common::retry::Backoff::new(opts.backoff_initial, opts.backoff_max)
        .with_retries(opts.max_attempts.saturating_sub(1) as usize);
    // Made at the first retry: most transactions commit at once.
    let mut delays = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let trx = store.create_trx().map_err(RunError::Store)?;
        let result = body(trx.clone(), MaybeCommitted(maybe_committed)).await;
        let err = match result {
            Ok(value) => {
                // Commit latency as the caller sees it, on every backend alike (the
                // dashboards and the commit-latency alert read this one).
                let committing = std::time::Instant::now();
                let span =
                    tracing::info_span!("store.commit", backend = store.backend_name(), attempt);
                match tracing::Instrument::instrument(trx.commit(), span).await {
                    Ok(info) => {
                        metrics::histogram!(
                            "tessera_store_transaction_commit_seconds",
                            "backend" => store.backend_name()
                        )
                        .record(committing.elapsed().as_secs_f64());
                        return Ok((value, info));
                    }
                    Err(e) => e,
                }
            }
            Err(TrxError::Abort(e)) => return Err(RunError::Abort(e)),
            Err(TrxError::Store(e)) => e,
        };
        if !err.is_retryable() {
            if maybe_committed {
                // An earlier attempt may have committed; the caller must not take this
                // failure as "nothing happened".
                tracing::warn!("transaction failed after an unknown commit outcome: {err}");
                return Err(RunError::Store(StoreError::CommitUnknown));
            }
            return Err(RunError::Store(err));
        }
        metrics::counter!("tessera_store_retries_total", "reason" => retry_reason(&err))
            .increment(1);
        if err.maybe_committed() {
            maybe_committed = true;
        }
        let Some(delay) = delays.get_or_insert_with(|| policy.delays(None)).next() else {
            return Err(RunError::RetriesExhausted { attempts: attempt, last: err });
        };
        tokio::time::sleep(delay).await;
    }
}

fn retry_reason(e: &StoreError) -> &'static str {
    match e {
        StoreError::Conflict => "conflict",
        StoreError::TooOld => "too_old",
        StoreError::CommitUnknown => "commit_unknown",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_cover_exactly_the_prefix() {
        assert_eq!(prefix_range(b"ab"), (b"ab".to_vec(), b"ac".to_vec()));
        assert_eq!(prefix_range(b"a\xff"), (b"a\xff".to_vec(), b"b".to_vec()));
        assert_eq!(prefix_range(b"\xff\xff"), (b"\xff\xff".to_vec(), vec![0xff]));
    }

    #[test]
    fn i64_codec_round_trips_and_pads() {
        assert_eq!(decode_i64(&encode_i64(-5)), -5);
        assert_eq!(decode_i64(&[1]), 1);
        assert_eq!(decode_i64(&[]), 0);
    }
}
