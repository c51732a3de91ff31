//! [`FdbStore`]: the [`Store`] traits on a real FoundationDB cluster, through the
//! `foundationdb` crate (client API 730, FoundationDB 7.3). Built with the `fdb` feature;
//! linking needs `libfdb_c` and running needs a cluster.
//!
//! The traits were written with FoundationDB's semantics, so most calls map one to one:
//! reads (point, range, snapshot), writes, atomic operations, versionstamps and read
//! conflict ranges go straight to the FoundationDB transaction, which also provides
//! read-your-writes. What this module adds:
//!
//! - **Limits, client side.** Keys, values, transaction size and the 5-second age are
//!   counted exactly the way the embedded backend counts them (`mvcc::TrxBuffer`), and a
//!   write that breaks a limit is not sent: the commit fails with the same [`StoreError`]
//!   the embedded store returns, before FoundationDB is asked. A transaction older than
//!   [`TRANSACTION_AGE_MAX_MS`] fails reads and commit with [`StoreError::TooOld`], as on
//!   the embedded store.
//! - **Errors.** FoundationDB error codes become [`StoreError`]s so that
//!   [`StoreError::is_retryable`] is true exactly when FoundationDB's own `on_error` would
//!   retry, and [`StoreError::maybe_committed`] exactly when the commit may have been
//!   applied. [`crate::run`] is the retry loop: it starts a new transaction per attempt
//!   (FoundationDB's `on_error` is not used) and tells the body when an earlier attempt
//!   may have committed.
//!
//!   | FoundationDB error | [`StoreError`] | retried by [`crate::run`] |
//!   |---|---|---|
//!   | 1020 `not_committed` | `Conflict` | yes |
//!   | 1007 `transaction_too_old` | `TooOld` | yes |
//!   | 1021 `commit_unknown_result`, other *maybe committed* codes (1039) | `CommitUnknown` | yes (1) |
//!   | other *retryable, not committed* codes (2) | `Conflict` | yes |
//!   | 1031 `transaction_timed_out` while reading | `Unavailable` | no |
//!   | 1031 `transaction_timed_out` while committing | `CommitUnknown` | yes |
//!   | 2101 `transaction_too_large` | `TransactionTooLarge` | no |
//!   | 2102 `key_too_large` | `KeyTooLarge` | no |
//!   | 2103 `value_too_large` | `ValueTooLarge` | no |
//!   | 1036 `accessed_unreadable` (read of a versionstamped write) | `InvalidMutation` | no |
//!   | anything else | `Backend("FoundationDB error <code>: <message>")` | no |
//!
//!   (1) and the next attempt's body gets `MaybeCommitted(true)`. (2) 1009
//!   `future_version`, 1037 `process_behind`, 1038 `database_locked`, 1042/1078 proxy
//!   memory limits, 1051/1213 throttling, ...; the code is logged at debug level, since
//!   [`StoreError`] has no variant for "retry, nothing was committed" other than `Conflict`.
//!
//!   "Retryable" and "maybe committed" come from `libfdb_c`'s own error predicates, so
//!   codes added by later FoundationDB releases are classified correctly. The one
//!   deliberate difference from `on_error` is a timeout during commit: the commit request
//!   may already have reached the commit proxies, so it is reported as an unknown result
//!   (which idempotent bodies handle) rather than as a failure that did nothing.
//! - **Process-wide network.** FoundationDB's client runs one network thread per process.
//!   The first [`FdbStore::open`] selects the API version and starts it; later opens reuse
//!   it. The thread is stopped and joined when the process exits normally, as `libfdb_c`
//!   requires. Nothing else in the process may call `foundationdb::boot`.
//!
//! Every transaction gets FoundationDB's 5-second timeout (so an unreachable cluster
//! surfaces as [`StoreError::Unavailable`] rather than a hang) and the 10 MB size limit.
//!
//! Status: compiled and linted with the feature on (`cargo check` and `cargo clippy
//! --features fdb --all-targets`), but not yet run against a FoundationDB cluster. The
//! conformance suite (`tests/it/fdb.rs`) runs wherever `FDB_CLUSTER_FILE` names a running
//! cluster and `libfdb_c` 7.3 is installed; without `libfdb_c` the test binary cannot be
//! linked with the feature on.

use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foundationdb::api::{FdbApiBuilder, NetworkAutoStop};
use foundationdb::options::{self as fdb_opt, ConflictRangeType, DatabaseOption, StreamingMode};
use foundationdb::{Database, FdbError, KeySelector, RangeOption};
use parking_lot::Mutex;

use crate::limits::{KEY_SIZE_MAX, TRANSACTION_AGE_MAX_MS, TRANSACTION_SIZE_MAX, VALUE_SIZE_MAX};
use crate::{CommitInfo, KeyValue, MutationType, RangeRequest, Store, StoreError, Transaction};

/// How long a transaction may live, as everywhere in this crate.
const TRANSACTION_AGE_MAX: Duration = Duration::from_millis(TRANSACTION_AGE_MAX_MS);

/// How to reach a cluster and how its transactions behave.
#[derive(Debug, Clone)]
pub struct FdbOptions {
    /// The cluster file; `None` uses FoundationDB's default (`FDB_CLUSTER_FILE`, then
    /// `/etc/foundationdb/fdb.cluster`).
    pub cluster_file: Option<PathBuf>,
    /// The datacenter this process runs in (the `locality_dcid` of the nearby
    /// FoundationDB processes). Set it in a multi-region cluster so that reads prefer
    /// replicas in the local datacenter.
    pub datacenter_id: Option<String>,
    /// Every transaction is cancelled after this long (FoundationDB error 1031).
    pub transaction_timeout_ms: u32,
    /// Retries FoundationDB's own `on_error` loop allows. [`crate::run`] has its own
    /// limit ([`crate::RunOptions::max_attempts`]); this one bounds code that drives a
    /// raw `foundationdb` transaction on the same database.
    pub transaction_retry_limit: u32,
}

impl Default for FdbOptions {
    fn default() -> Self {
        FdbOptions {
            cluster_file: None,
            datacenter_id: None,
            transaction_timeout_ms: TRANSACTION_AGE_MAX_MS as u32,
            transaction_retry_limit: crate::RunOptions::default().max_attempts,
        }
    }
}

/// A FoundationDB cluster as a [`Store`]. Clones share one database handle.
#[derive(Clone)]
pub struct FdbStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for FdbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdbStore").finish_non_exhaustive()
    }
}

impl FdbStore {
    /// Opens the cluster named by `cluster_file` (or FoundationDB's default cluster
    /// file), starting the client network on first use. Connecting is lazy: an
    /// unreachable cluster shows up as [`StoreError::Unavailable`] on the first read.
    pub fn open(cluster_file: Option<&Path>) -> Result<Self, StoreError> {
        let opts = FdbOptions {
            cluster_file: cluster_file.map(Path::to_path_buf),
            ..FdbOptions::default()
        };
        FdbStore::open_with(&opts)
    }

    /// [`FdbStore::open`] with every option.
    pub fn open_with(opts: &FdbOptions) -> Result<Self, StoreError> {
        start_network()?;
        let path = match &opts.cluster_file {
            None => None,
            Some(path) => {
                if !path.exists() {
                    return Err(StoreError::Backend(format!(
                        "FoundationDB cluster file {} does not exist",
                        path.display()
                    )));
                }
                match path.to_str() {
                    Some(s) if !s.contains('\0') => Some(s.to_owned()),
                    _ => {
                        return Err(StoreError::Backend(format!(
                            "FoundationDB cluster file path {} is not UTF-8 without NUL bytes",
                            path.display()
                        )));
                    }
                }
            }
        };
        let db = Database::new(path.as_deref()).map_err(|e| setup_error("open the database", e))?;
        let timeout_ms = i32::try_from(opts.transaction_timeout_ms).unwrap_or(i32::MAX);
        let retry_limit = i32::try_from(opts.transaction_retry_limit).unwrap_or(i32::MAX);
        let size_limit = i32::try_from(TRANSACTION_SIZE_MAX).unwrap_or(i32::MAX);
        let mut options = vec![
            DatabaseOption::TransactionTimeout(timeout_ms),
            DatabaseOption::TransactionRetryLimit(retry_limit),
            DatabaseOption::TransactionSizeLimit(size_limit),
        ];
        if let Some(dc) = &opts.datacenter_id {
            options.push(DatabaseOption::DatacenterId(dc.clone()));
        }
        for option in options {
            db.set_option(option).map_err(|e| setup_error("set a database option", e))?;
        }
        Ok(FdbStore { db: Arc::new(db) })
    }
}

impl Store for FdbStore {
    type Trx = FdbTrx;

    fn create_trx(&self) -> Result<FdbTrx, StoreError> {
        let trx =
            self.db.create_trx().map_err(|e| map_fdb_error(e, Phase::Read, &Sizes::default()))?;
        Ok(FdbTrx {
            inner: Arc::new(Mutex::new(TrxState {
                trx: Some(trx),
                created: Instant::now(),
                size: 0,
                sizes: Sizes::default(),
                error: None,
                wrote: false,
            })),
        })
    }

    fn backend_name(&self) -> &'static str {
        "fdb"
    }
}

fn setup_error(what: &str, e: FdbError) -> StoreError {
    StoreError::Backend(format!(
        "failed to {what}: FoundationDB error {}: {}",
        e.code(),
        e.message()
    ))
}

// ---------------------------------------------------------------------------------------
// The client network.

/// Whether the network started, once per process.
static NETWORK_STARTED: OnceLock<Result<(), String>> = OnceLock::new();
/// The running network; taken and dropped (stopped and joined) at process exit.
static NETWORK: std::sync::Mutex<Option<NetworkAutoStop>> = std::sync::Mutex::new(None);

fn start_network() -> Result<(), StoreError> {
    NETWORK_STARTED.get_or_init(boot_network).clone().map_err(StoreError::Backend)
}

fn boot_network() -> Result<(), String> {
    let builder = FdbApiBuilder::default().build().map_err(|e| {
        let version = FdbApiBuilder::default().runtime_version();
        let (code, message) = (e.code(), e.message());
        format!(
            "failed to select FoundationDB client API {version} (needs libfdb_c 7.3 or newer): \
             error {code}: {message}"
        )
    })?;
    #[allow(unsafe_code, reason = "starting libfdb_c's network thread is unsafe by contract")]
    // SAFETY: `boot` requires that the returned `NetworkAutoStop` is dropped (which stops
    // the network and joins its thread) before the process exits; an abort needs nothing.
    // It is stored in `NETWORK` and dropped by `stop_network_at_exit`, which is registered
    // with `atexit` right below and so runs when the process exits normally, before
    // libfdb_c's own static destructors (registered earlier, when the library loaded).
    // `NETWORK_STARTED` makes this run at most once per process, as libfdb_c requires.
    // (`atexit` fails only when the C library is out of memory for handlers; the process
    // then exits with the network running, which we log.)
    let network = unsafe { builder.boot() }.map_err(|e| {
        format!("failed to start the FoundationDB network: error {}: {}", e.code(), e.message())
    })?;
    *NETWORK.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(network);
    if atexit(stop_network_at_exit) != 0 {
        tracing::warn!("could not register the FoundationDB network shutdown at exit");
    }
    Ok(())
}

extern "C" fn stop_network_at_exit() {
    let network = NETWORK.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    drop(network);
}

#[allow(unsafe_code, reason = "declares libc's atexit")]
// SAFETY: this is the C standard library's `atexit` with its exact signature. It only
// records the function pointer, and the function it is given is an `extern "C" fn()`
// that does not unwind (a panic in it aborts), so calling it is safe.
unsafe extern "C" {
    safe fn atexit(callback: extern "C" fn()) -> c_int;
}

// ---------------------------------------------------------------------------------------
// Transactions.

/// A FoundationDB transaction. Clones are handles to the same transaction; after
/// `commit`, the other handles fail with [`StoreError::UsedAfterCommit`].
#[derive(Clone)]
pub struct FdbTrx {
    inner: Arc<Mutex<TrxState>>,
}

impl std::fmt::Debug for FdbTrx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdbTrx").finish_non_exhaustive()
    }
}

/// The largest key and value written, to report FoundationDB's own size errors.
#[derive(Debug, Default, Clone, Copy)]
struct Sizes {
    key_max: usize,
    value_max: usize,
    total: usize,
}

struct TrxState {
    /// `None` once committed.
    trx: Option<foundationdb::Transaction>,
    created: Instant,
    /// Bytes of keys, values and conflict ranges, counted like the embedded backend.
    size: usize,
    sizes: Sizes,
    /// The first write that broke a limit; the commit fails with it.
    error: Option<StoreError>,
    /// Whether any write reached FoundationDB (otherwise commit commits nothing).
    wrote: bool,
}

/// Where an error happened: a timeout while committing may have committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Read,
    Commit,
}

impl TrxState {
    /// The transaction, if it may still read.
    fn readable(&self) -> Result<&foundationdb::Transaction, StoreError> {
        let trx = self.trx.as_ref().ok_or(StoreError::UsedAfterCommit)?;
        if self.created.elapsed() > TRANSACTION_AGE_MAX {
            return Err(StoreError::TooOld);
        }
        Ok(trx)
    }

    fn note_error(&mut self, e: StoreError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn check_key(&mut self, key: &[u8]) -> bool {
        if key.len() > KEY_SIZE_MAX {
            self.note_error(StoreError::KeyTooLarge(key.len()));
            return false;
        }
        true
    }

    fn check_value(&mut self, value: &[u8], max: usize) -> bool {
        if value.len() > max {
            self.note_error(StoreError::ValueTooLarge(value.len()));
            return false;
        }
        true
    }

    fn count_write(&mut self, key: &[u8], value_len: usize) {
        self.size += key.len() + value_len;
        self.sizes.key_max = self.sizes.key_max.max(key.len());
        self.sizes.value_max = self.sizes.value_max.max(value_len);
        self.wrote = true;
    }

    fn count_conflict(&mut self, begin: &[u8], end: &[u8]) {
        if begin < end {
            self.size += begin.len() + end.len();
        }
    }

    fn sizes(&self) -> Sizes {
        Sizes { total: self.size, ..self.sizes }
    }
}

impl FdbTrx {
    async fn range(&self, req: RangeRequest, snapshot: bool) -> Result<Vec<KeyValue>, StoreError> {
        {
            let state = self.inner.lock();
            state.readable()?;
        }
        if req.begin >= req.end {
            return Ok(Vec::new());
        }
        let limited = req.limit > 0;
        let mut opt = RangeOption {
            begin: KeySelector::first_greater_or_equal(req.begin.clone()),
            end: KeySelector::first_greater_or_equal(req.end.clone()),
            limit: limited.then_some(req.limit),
            // A limited read wants exactly its rows in one batch; an unlimited one wants
            // the whole range, in as few batches as FoundationDB likes.
            mode: if limited { StreamingMode::Exact } else { StreamingMode::WantAll },
            reverse: req.reverse,
            ..RangeOption::default()
        };
        let mut rows: Vec<KeyValue> = Vec::new();
        let mut iteration = 1;
        loop {
            let batch = {
                let state = self.inner.lock();
                state.readable()?.get_range(&opt, iteration, snapshot)
            };
            let batch = batch.await.map_err(|e| self.fdb_error(e, Phase::Read))?;
            for kv in &batch {
                if limited && rows.len() >= req.limit {
                    break;
                }
                rows.push((Bytes::copy_from_slice(kv.key()), Bytes::copy_from_slice(kv.value())));
            }
            if limited && rows.len() >= req.limit {
                break;
            }
            match opt.next_range(&batch) {
                Some(next) => {
                    opt = next;
                    iteration += 1;
                }
                None => break,
            }
        }
        if !snapshot {
            // FoundationDB adds the conflict range itself; count it the way the embedded
            // backend does so that the size limit trips at the same point.
            let last = rows.last().map(|(k, _)| k.to_vec());
            let mut state = self.inner.lock();
            match last {
                Some(last) if limited && rows.len() >= req.limit => {
                    if req.reverse {
                        state.count_conflict(&last, &req.end);
                    } else {
                        state.count_conflict(&req.begin, &crate::key_after(&last));
                    }
                }
                _ => state.count_conflict(&req.begin, &req.end),
            }
        }
        Ok(rows)
    }

    fn fdb_error(&self, e: FdbError, phase: Phase) -> StoreError {
        let sizes = self.inner.lock().sizes();
        map_fdb_error(e, phase, &sizes)
    }
}

impl Transaction for FdbTrx {
    fn get(
        &self,
        key: &[u8],
        snapshot: bool,
    ) -> impl Future<Output = Result<Option<Bytes>, StoreError>> + Send {
        let pending = {
            let mut state = self.inner.lock();
            let pending = state.readable().map(|trx| trx.get(key, snapshot));
            if pending.is_ok() && !snapshot {
                state.count_conflict(key, &crate::key_after(key));
            }
            pending
        };
        let this = self.clone();
        async move {
            let value = pending?.await.map_err(|e| this.fdb_error(e, Phase::Read))?;
            Ok(value.map(|v| Bytes::copy_from_slice(&v)))
        }
    }

    fn get_range(
        &self,
        range: &RangeRequest,
        snapshot: bool,
    ) -> impl Future<Output = Result<Vec<KeyValue>, StoreError>> + Send {
        let this = self.clone();
        let req = range.clone();
        async move { this.range(req, snapshot).await }
    }

    fn set(&self, key: &[u8], value: &[u8]) {
        let mut state = self.inner.lock();
        if state.trx.is_none() || !state.check_key(key) || !state.check_value(value, VALUE_SIZE_MAX)
        {
            return;
        }
        state.count_write(key, value.len());
        if let Some(trx) = &state.trx {
            trx.set(key, value);
        }
    }

    fn clear(&self, key: &[u8]) {
        let mut state = self.inner.lock();
        if state.trx.is_none() || !state.check_key(key) {
            return;
        }
        state.count_write(key, 0);
        if let Some(trx) = &state.trx {
            trx.clear(key);
        }
    }

    fn clear_range(&self, begin: &[u8], end: &[u8]) {
        let mut state = self.inner.lock();
        if state.trx.is_none() || !state.check_key(begin) || !state.check_key(end) || begin >= end {
            return;
        }
        state.size += begin.len() + end.len();
        state.wrote = true;
        if let Some(trx) = &state.trx {
            trx.clear_range(begin, end);
        }
    }

    fn atomic_op(&self, key: &[u8], param: &[u8], op: MutationType) {
        let mut state = self.inner.lock();
        if state.trx.is_none() {
            return;
        }
        // The same checks, in the same order, as the embedded backend.
        let ok = match op {
            MutationType::SetVersionstampedKey => {
                if key.len() > KEY_SIZE_MAX + 4 {
                    state.note_error(StoreError::KeyTooLarge(key.len()));
                    false
                } else if let Err(e) = check_versionstamp_offset(key) {
                    state.note_error(e);
                    false
                } else {
                    state.check_value(param, VALUE_SIZE_MAX)
                }
            }
            MutationType::SetVersionstampedValue => {
                if !state.check_key(key) {
                    false
                } else if let Err(e) = check_versionstamp_offset(param) {
                    state.note_error(e);
                    false
                } else {
                    state.check_value(param, VALUE_SIZE_MAX + 4)
                }
            }
            _ => state.check_key(key) && state.check_value(param, VALUE_SIZE_MAX),
        };
        if !ok {
            return;
        }
        state.count_write(key, param.len());
        if let Some(trx) = &state.trx {
            trx.atomic_op(key, param, fdb_mutation(op));
        }
    }

    fn add_read_conflict_range(&self, begin: &[u8], end: &[u8]) {
        let mut state = self.inner.lock();
        if begin >= end {
            return;
        }
        let result = match &state.trx {
            Some(trx) => trx.add_conflict_range(begin, end, ConflictRangeType::Read),
            None => return,
        };
        state.count_conflict(begin, end);
        if let Err(e) = result {
            let sizes = state.sizes();
            state.note_error(map_fdb_error(e, Phase::Read, &sizes));
        }
    }

    fn read_version(&self) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let pending = self.inner.lock().readable().map(|trx| trx.get_read_version());
        let this = self.clone();
        async move {
            let version = pending?.await.map_err(|e| this.fdb_error(e, Phase::Read))?;
            u64::try_from(version).map_err(|_| {
                StoreError::Backend(format!(
                    "FoundationDB returned a negative read version {version}"
                ))
            })
        }
    }

    fn commit(self) -> impl Future<Output = Result<CommitInfo, StoreError>> + Send {
        let prepared = {
            let mut state = self.inner.lock();
            prepare_commit(&mut state)
        };
        async move {
            let Some((trx, versionstamp, sizes)) = prepared? else {
                return Ok(CommitInfo { version: 0, versionstamp: [0; 10] });
            };
            let committed = trx
                .commit()
                .await
                .map_err(|e| map_fdb_error(FdbError::from(e), Phase::Commit, &sizes))?;
            // From here on the commit happened: a failure to learn its version or stamp must
            // not look like a commit that did nothing.
            let version = committed.committed_version().map_err(|e| {
                tracing::warn!(
                    code = e.code(),
                    "version of a committed transaction is unavailable"
                );
                StoreError::CommitUnknown
            })?;
            let Ok(version) = u64::try_from(version) else {
                // FoundationDB found nothing to write (e.g. only rewrites of current values).
                return Ok(CommitInfo { version: 0, versionstamp: [0; 10] });
            };
            let stamp = match versionstamp.await {
                Ok(stamp) => <[u8; 10]>::try_from(&stamp[..]).ok(),
                Err(e) => {
                    tracing::warn!(
                        code = e.code(),
                        "versionstamp of a committed transaction is unavailable"
                    );
                    None
                }
            };
            // Without its stamp the caller cannot be told what it needs; reporting an unknown
            // result makes its idempotent body find its own record on the retry.
            stamp
                .map(|versionstamp| CommitInfo { version, versionstamp })
                .ok_or(StoreError::CommitUnknown)
        }
    }
}

type PreparedCommit = (
    foundationdb::Transaction,
    std::pin::Pin<
        Box<dyn Future<Output = foundationdb::FdbResult<foundationdb::future::FdbSlice>> + Send>,
    >,
    Sizes,
);

/// Takes the transaction out for commit, or says why it cannot commit (`None`: it wrote
/// nothing, so there is nothing to commit). The checks and their order are the embedded
/// backend's.
fn prepare_commit(state: &mut TrxState) -> Result<Option<PreparedCommit>, StoreError> {
    let trx = state.trx.take().ok_or(StoreError::UsedAfterCommit)?;
    if state.created.elapsed() > TRANSACTION_AGE_MAX {
        return Err(StoreError::TooOld);
    }
    if let Some(e) = state.error.take() {
        return Err(e);
    }
    if state.size > TRANSACTION_SIZE_MAX {
        return Err(StoreError::TransactionTooLarge(state.size));
    }
    if !state.wrote {
        return Ok(None);
    }
    // The versionstamp future must be taken before the commit and read after it.
    let versionstamp = Box::pin(trx.get_versionstamp());
    Ok(Some((trx, versionstamp, state.sizes())))
}

fn fdb_mutation(op: MutationType) -> fdb_opt::MutationType {
    match op {
        MutationType::Add => fdb_opt::MutationType::Add,
        MutationType::Max => fdb_opt::MutationType::Max,
        MutationType::Min => fdb_opt::MutationType::Min,
        MutationType::CompareAndClear => fdb_opt::MutationType::CompareAndClear,
        // Our operands carry the placeholder's offset as 4 little-endian bytes at the end,
        // which is what FoundationDB expects from API version 520 on.
        MutationType::SetVersionstampedKey => fdb_opt::MutationType::SetVersionstampedKey,
        MutationType::SetVersionstampedValue => fdb_opt::MutationType::SetVersionstampedValue,
    }
}

/// Checks that a versionstamped operand names a 10-byte placeholder inside itself.
fn check_versionstamp_offset(operand: &[u8]) -> Result<(), StoreError> {
    if operand.len() < 14 {
        return Err(StoreError::InvalidMutation("versionstamped operand is too short"));
    }
    let n = operand.len() - 4;
    let mut offset = [0u8; 4];
    offset.copy_from_slice(&operand[n..]);
    if u32::from_le_bytes(offset) as usize + 10 > n {
        return Err(StoreError::InvalidMutation("versionstamp offset is out of range"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Errors.

fn map_fdb_error(e: FdbError, phase: Phase, sizes: &Sizes) -> StoreError {
    let code = e.code();
    let class = ErrorClass {
        maybe_committed: e.is_maybe_committed(),
        retryable_not_committed: e.is_retryable_not_committed(),
    };
    let mapped = store_error(code, class, phase, sizes, || e.message());
    if matches!(mapped, StoreError::Conflict) && code != NOT_COMMITTED {
        tracing::debug!(
            code,
            message = e.message(),
            "retrying after a transient FoundationDB error"
        );
    }
    mapped
}

const TRANSACTION_TOO_OLD: i32 = 1007;
const NOT_COMMITTED: i32 = 1020;
const COMMIT_UNKNOWN_RESULT: i32 = 1021;
const TRANSACTION_TIMED_OUT: i32 = 1031;
const ACCESSED_UNREADABLE: i32 = 1036;
const TRANSACTION_TOO_LARGE: i32 = 2101;
const KEY_TOO_LARGE: i32 = 2102;
const VALUE_TOO_LARGE: i32 = 2103;

/// What `libfdb_c`'s error predicates say about a code.
#[derive(Debug, Clone, Copy, Default)]
struct ErrorClass {
    maybe_committed: bool,
    retryable_not_committed: bool,
}

/// The mapping itself, apart from the FFI calls that classify a code.
fn store_error(
    code: i32,
    class: ErrorClass,
    phase: Phase,
    sizes: &Sizes,
    message: impl FnOnce() -> &'static str,
) -> StoreError {
    match code {
        NOT_COMMITTED => StoreError::Conflict,
        TRANSACTION_TOO_OLD => StoreError::TooOld,
        COMMIT_UNKNOWN_RESULT => StoreError::CommitUnknown,
        TRANSACTION_TIMED_OUT if phase == Phase::Commit => StoreError::CommitUnknown,
        TRANSACTION_TIMED_OUT => StoreError::Unavailable(
            "FoundationDB transaction timed out (error 1031); is the cluster reachable?".into(),
        ),
        TRANSACTION_TOO_LARGE => StoreError::TransactionTooLarge(sizes.total),
        KEY_TOO_LARGE => StoreError::KeyTooLarge(sizes.key_max),
        VALUE_TOO_LARGE => StoreError::ValueTooLarge(sizes.value_max),
        ACCESSED_UNREADABLE => {
            StoreError::InvalidMutation("read of a key written with a versionstamp")
        }
        _ if class.maybe_committed => StoreError::CommitUnknown,
        _ if class.retryable_not_committed => StoreError::Conflict,
        _ => StoreError::Backend(format!("FoundationDB error {code}: {}", message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(code: i32, class: ErrorClass, phase: Phase) -> StoreError {
        let sizes = Sizes { key_max: 10_001, value_max: 100_001, total: 10_000_001 };
        store_error(code, class, phase, &sizes, || "message")
    }

    const NONE: ErrorClass = ErrorClass { maybe_committed: false, retryable_not_committed: false };
    const RETRY: ErrorClass = ErrorClass { maybe_committed: false, retryable_not_committed: true };
    const MAYBE: ErrorClass = ErrorClass { maybe_committed: true, retryable_not_committed: false };

    #[test]
    fn foundationdb_errors_map_to_store_errors_with_the_same_retry_semantics() {
        // What libfdb_c's predicates say for each code, as in FoundationDB 7.3.
        let cases = [
            (NOT_COMMITTED, RETRY, Phase::Commit, "Conflict", true, false),
            (TRANSACTION_TOO_OLD, RETRY, Phase::Read, "TooOld", true, false),
            (COMMIT_UNKNOWN_RESULT, MAYBE, Phase::Commit, "CommitUnknown", true, true),
            (1039, MAYBE, Phase::Commit, "CommitUnknown", true, true),
            (1009, RETRY, Phase::Read, "Conflict", true, false),
            (1037, RETRY, Phase::Commit, "Conflict", true, false),
            (1213, RETRY, Phase::Read, "Conflict", true, false),
            (TRANSACTION_TIMED_OUT, NONE, Phase::Read, "Unavailable", false, false),
            (TRANSACTION_TIMED_OUT, NONE, Phase::Commit, "CommitUnknown", true, true),
            (TRANSACTION_TOO_LARGE, NONE, Phase::Commit, "TransactionTooLarge", false, false),
            (KEY_TOO_LARGE, NONE, Phase::Commit, "KeyTooLarge", false, false),
            (VALUE_TOO_LARGE, NONE, Phase::Commit, "ValueTooLarge", false, false),
            (ACCESSED_UNREADABLE, NONE, Phase::Read, "InvalidMutation", false, false),
            (2004, NONE, Phase::Read, "Backend", false, false),
        ];
        for (code, class, phase, name, retryable, maybe_committed) in cases {
            let e = map(code, class, phase);
            let debug = format!("{e:?}");
            assert!(debug.starts_with(name), "{code} in {phase:?} became {debug}, expected {name}");
            assert_eq!(e.is_retryable(), retryable, "{code}: retryable");
            assert_eq!(e.maybe_committed(), maybe_committed, "{code}: maybe committed");
        }
        let StoreError::Backend(message) = map(2004, NONE, Phase::Read) else { unreachable!() };
        assert_eq!(message, "FoundationDB error 2004: message");
        assert!(matches!(map(KEY_TOO_LARGE, NONE, Phase::Commit), StoreError::KeyTooLarge(10_001)));
    }

    #[test]
    fn versionstamp_offsets_must_point_inside_the_operand() {
        let mut key = b"log/".to_vec();
        key.extend_from_slice(&[0; 10]);
        assert!(check_versionstamp_offset(&crate::versionstamped_key(key.clone(), 4)).is_ok());
        assert!(check_versionstamp_offset(&crate::versionstamped_key(key.clone(), 5)).is_err());
        assert!(check_versionstamp_offset(&[0; 13]).is_err());
    }
}
