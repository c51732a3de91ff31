//! The in-memory engine shared by the embedded and memory backends: a multi-version
//! ordered map, the transaction buffer with read-your-writes, and conflict resolution.
//!
//! Every key keeps its recent versions for the 5-second MVCC window, so a transaction
//! reads a consistent snapshot at its read version while commits go on. A commit is
//! accepted only if no key in its read conflict set has a version newer than its read
//! version (FoundationDB's optimistic concurrency). Commits are resolved and applied by a
//! single committer at a time, in batches that share one commit version.
//!
//! Readers and the committer do not exclude each other: the hash index is split into
//! shards with a lock each, and the ordered index has its own lock, each held for one
//! key (or one range read). That is safe because of the versions, not the locks: the
//! committer writes versions above the visible one, readers read at or below it, and a
//! batch becomes readable all at once when `visible` moves.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::BuildHasher as _;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::limits::{KEY_SIZE_MAX, TRANSACTION_AGE_MAX_MS, TRANSACTION_SIZE_MAX, VALUE_SIZE_MAX};
use crate::wal::RecordWriter;
use crate::{KeyValue, MutationType, RangeRequest, StoreError};

/// How long versions stay readable.
pub(crate) const MVCC_WINDOW: Duration = Duration::from_millis(TRANSACTION_AGE_MAX_MS);

/// The hash of a key, the same for every engine of the process, so a transaction can
/// compute it once, when it writes, instead of the committer doing it under its locks.
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    static HASHER: OnceLock<hashbrown::DefaultHashBuilder> = OnceLock::new();
    HASHER.get_or_init(hashbrown::DefaultHashBuilder::default).hash_one(key)
}

/// A key as the engine keeps it: its bytes behind one reference count, in one allocation.
/// The hash index and the ordered index share it. (A `Bytes` made from a buffer allocates
/// its reference count separately, the first time it is cloned: a second allocation per
/// new key, on the committer's thread.)
pub(crate) type KeyBytes = Arc<[u8]>;

/// A key and its [`key_hash`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) bytes: KeyBytes,
    pub(crate) hash: u64,
}

impl Key {
    pub(crate) fn new(bytes: KeyBytes) -> Self {
        let hash = key_hash(&bytes);
        Key { bytes, hash }
    }
    pub(crate) fn copy(key: &[u8]) -> Self {
        Key::new(KeyBytes::from(key))
    }
}

/// The versions of one key, newest in `latest`.
#[derive(Debug, Clone)]
struct Chain {
    latest: (u64, Option<Bytes>),
    older: Vec<(u64, Option<Bytes>)>,
}

impl Chain {
    fn at(&self, version: u64) -> Option<&Option<Bytes>> {
        if self.latest.0 <= version {
            return Some(&self.latest.1);
        }
        let i = self.older.partition_point(|(v, _)| *v <= version);
        i.checked_sub(1).map(|i| &self.older[i].1)
    }

    fn push(&mut self, version: u64, value: Option<Bytes>, horizon: u64) {
        let prev = std::mem::replace(&mut self.latest, (version, value));
        if prev.0 == version {
            // Rewritten within the same commit: the older write never existed for readers.
            return;
        }
        if self.older.capacity() == 0 {
            // Most keys are rewritten rarely: room for one old version, not the four a
            // vector starts with.
            self.older.reserve_exact(1);
        } else if self.older.len() == self.older.capacity() {
            // Forget what no reader can see only when the vector is full. A hot key (a
            // pool's tally) is rewritten by nearly every batch and keeps seconds of
            // versions; trimming on every push moved all of them each time. If more than
            // half are still readable, the vector doubles, so that the next trim is at
            // least as many pushes away as it moves: amortized, a push moves a version or
            // two, and a vector holds at most four times what is readable. Versions below
            // the horizon that stay meanwhile are never read: a read below the horizon is
            // refused.
            self.forget_below(horizon);
            if self.older.len() > self.older.capacity() / 2 {
                self.older.reserve(self.older.len());
            }
        }
        self.older.push(prev);
    }

    /// Drops the versions older than the newest one at or below `horizon`, and that one
    /// too if it is a deletion (unreadable history).
    fn forget_below(&mut self, horizon: u64) {
        let keep_from = self.older.partition_point(|(v, _)| *v <= horizon).saturating_sub(1);
        if keep_from > 0 {
            self.older.drain(..keep_from);
        }
        if self.older.first().is_some_and(|(v, val)| *v <= horizon && val.is_none()) {
            self.older.remove(0);
        }
    }
}

/// A key in the ordered index. The first 32 bytes are kept inline as big-endian words, so
/// most comparisons while descending the tree are two integer compares on memory the
/// tree node already brought in, instead of a `memcmp` behind a pointer per level. Keys
/// are zero-padded, which orders them as bytes do (a zero pad only ever ties with a zero
/// byte, and ties fall back to the whole key).
#[derive(Debug, Clone)]
struct OrdKey {
    head: [u128; 2],
    key: KeyBytes,
}

impl OrdKey {
    fn new(key: KeyBytes) -> Self {
        OrdKey { head: key_head(&key), key }
    }
}

/// The first 32 bytes of a key, zero-padded, as big-endian words: ordering by these and
/// then by the whole key orders keys as bytes.
pub(crate) fn key_head(key: &[u8]) -> [u128; 2] {
    let mut buf = [0u8; 32];
    let n = key.len().min(32);
    buf[..n].copy_from_slice(&key[..n]);
    let mut a = [0u8; 16];
    let mut b = [0u8; 16];
    a.copy_from_slice(&buf[..16]);
    b.copy_from_slice(&buf[16..]);
    [u128::from_be_bytes(a), u128::from_be_bytes(b)]
}

impl PartialEq for OrdKey {
    fn eq(&self, other: &Self) -> bool {
        self.head == other.head && self.key == other.key
    }
}
impl Eq for OrdKey {}
impl PartialOrd for OrdKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.head.cmp(&other.head).then_with(|| self.key.as_ref().cmp(other.key.as_ref()))
    }
}

/// A hash shard's entries: the key's hash (so that growing the table never re-reads keys,
/// and a probe touches a key's bytes only when the whole hash matches), key, versions.
type Shard = hashbrown::HashTable<(u64, KeyBytes, Chain)>;

/// The keys of the engine: hash tables for point access (most operations), and an ordered
/// set of the same keys for range reads. Updating an existing key touches only its hash
/// shard; only new and forgotten keys change the order.
///
/// The hash index is split into [`SHARDS`] tables by a slice of each key's hash, each with
/// its own lock, so that readers rarely wait for the committer and growing the index
/// rehashes one small table at a time instead of stopping every commit while millions of
/// keys move.
///
/// New keys reach the ordered set lazily: the committer only queues them in `unindexed`,
/// and whoever next needs the order (a range read, a range conflict check, a snapshot, or
/// the acknowledging thread between batches) moves them in first. Inserting into a tree
/// of millions of keys is a third of what resolving a transaction costs, and the
/// committer is the one serial step of a commit.
#[derive(Debug)]
struct Table {
    shards: Box<[RwLock<Shard>]>,
    order: RwLock<BTreeSet<OrdKey>>,
    /// Keys in the hash shards but not yet in `order`. Only moved out while `order` is
    /// write-locked, so a walk that finds it empty and then takes `order`'s lock sees
    /// every key put before it looked.
    unindexed: Mutex<Vec<KeyBytes>>,
}

/// Many small tables rather than a few large ones: growing a table allocates one twice
/// its size and moves every entry, and each fresh page of the new table is a page fault
/// on the committer's thread. With 256 shards of a two-million-key map, each growth was a
/// megabyte table and stalled the batch being resolved for 5-10 ms (1-2 % of batches:
/// the p99); at 1024 a growth moves a quarter of that. (4096 cut the stalls further but
/// cost a tenth of the throughput in interleaved runs.)
const SHARDS: usize = 1024;
const _: () = assert!(SHARDS <= 1 << 16, "shard numbers are u16");

impl Default for Table {
    fn default() -> Self {
        Table {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::new())).collect(),
            order: RwLock::new(BTreeSet::new()),
            unindexed: Mutex::new(Vec::new()),
        }
    }
}

/// Slots of [`shard_of`]'s table, dealt to the shards unevenly.
const SHARD_SLOTS: usize = 1 << 14;

/// The shard of a hash. It comes from middle bits: the tables use the low bits for the
/// bucket and the top seven for the control tag.
///
/// Shards are deliberately of different sizes, spread evenly on a log scale over a factor
/// of two. Equal shards would all outgrow their tables at the same moment, and hundreds
/// of tables rehashing at once stall commits for a long while; uneven ones take turns,
/// one every fraction of a percent of growth.
fn shard_of(hash: u64) -> usize {
    static MAP: OnceLock<Box<[u16; SHARD_SLOTS]>> = OnceLock::new();
    let map = MAP.get_or_init(|| {
        // Shard i wants a share proportional to 2^(i / SHARDS); hand out slots by
        // largest remainder so every shard gets at least one.
        let weights: Vec<f64> = (0..SHARDS).map(|i| (i as f64 / SHARDS as f64).exp2()).collect();
        let total: f64 = weights.iter().sum();
        let mut counts: Vec<usize> =
            weights.iter().map(|w| ((w / total) * SHARD_SLOTS as f64) as usize).collect();
        let mut left = SHARD_SLOTS - counts.iter().sum::<usize>();
        let mut i = SHARDS;
        while left > 0 {
            i = if i == 0 { SHARDS - 1 } else { i - 1 };
            counts[i] += 1;
            left -= 1;
        }
        let mut map = Box::new([0u16; SHARD_SLOTS]);
        let mut at = 0;
        for (shard, n) in counts.iter().enumerate() {
            for slot in &mut map[at..at + n] {
                *slot = shard as u16;
            }
            at += n;
        }
        map
    });
    usize::from(map[(hash >> 40) as usize % SHARD_SLOTS])
}

fn find<'a>(shard: &'a Shard, hash: u64, key: &[u8]) -> Option<&'a Chain> {
    shard.find(hash, |(h, k, _)| *h == hash && k.as_ref() == key).map(|(_, _, c)| c)
}

impl Table {
    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        &self.shards[shard_of(hash)]
    }

    /// The newest version of a key, if the key exists.
    fn latest_version(&self, hash: u64, key: &[u8]) -> Option<u64> {
        find(&self.shard(hash).read(), hash, key).map(|c| c.latest.0)
    }

    /// The key's value at `version`: `None` if the key has no entry, `Some(None)` if it is
    /// deleted at that version.
    fn value_at(&self, hash: u64, key: &[u8], version: u64) -> Option<Option<Bytes>> {
        find(&self.shard(hash).read(), hash, key).and_then(|c| c.at(version).cloned())
    }

    /// The key's newest value.
    fn latest_value(&self, hash: u64, key: &[u8]) -> Option<Bytes> {
        find(&self.shard(hash).read(), hash, key).and_then(|c| c.latest.1.clone())
    }

    /// Writes a version of a key. Returns whether the key is new (and so must join the
    /// ordered index, which the caller does).
    fn put(&self, key: &Key, value: Option<Bytes>, version: u64, horizon: u64) -> bool {
        let mut shard = self.shard(key.hash).write();
        let entry =
            shard.entry(key.hash, |(h, k, _)| *h == key.hash && *k == key.bytes, |(h, _, _)| *h);
        match entry {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                e.get_mut().2.push(version, value, horizon);
                false
            }
            hashbrown::hash_table::Entry::Vacant(e) => match value {
                Some(v) => {
                    e.insert((
                        key.hash,
                        key.bytes.clone(),
                        Chain { latest: (version, Some(v)), older: Vec::new() },
                    ));
                    true
                }
                None => false,
            },
        }
    }

    /// Queues new keys for the ordered index (see [`Table::settle`]).
    fn index(&self, new_keys: &mut Vec<KeyBytes>) {
        if new_keys.is_empty() {
            return;
        }
        self.unindexed.lock().append(new_keys);
    }

    /// Moves every queued key into the ordered index.
    fn settle(&self) {
        if self.unindexed.lock().is_empty() {
            return;
        }
        Self::insert_queued(&mut self.order.write(), &self.unindexed);
    }

    /// [`Table::settle`], unless the ordered index is locked (a snapshot or a range read
    /// is walking it): then the keys stay queued for whoever walks next, which settles
    /// first.
    fn try_settle(&self) {
        if self.unindexed.lock().is_empty() {
            return;
        }
        if let Some(mut order) = self.order.try_write() {
            Self::insert_queued(&mut order, &self.unindexed);
        }
    }

    fn insert_queued(order: &mut BTreeSet<OrdKey>, unindexed: &Mutex<Vec<KeyBytes>>) {
        let keys = std::mem::take(&mut *unindexed.lock());
        // In key order, each insertion descends a path the previous one mostly warmed:
        // a batch's outbox and expiry keys land side by side.
        let mut keys: Vec<OrdKey> = keys.into_iter().map(OrdKey::new).collect();
        keys.sort_unstable();
        for k in keys {
            order.insert(k);
        }
    }

    /// Removes a key whose newest entry is a deletion at or below `horizon`.
    fn forget(&self, key: &Key, horizon: u64) -> bool {
        let mut shard = self.shard(key.hash).write();
        if let Ok(e) = shard.find_entry(key.hash, |(h, k, _)| *h == key.hash && *k == key.bytes) {
            let (_, _, c) = e.get();
            if c.latest.1.is_none() && c.latest.0 <= horizon {
                e.remove();
                return true;
            }
        }
        false
    }

    fn clear(&self) {
        self.shards.iter().for_each(|s| s.write().clear());
        let mut order = self.order.write();
        order.clear();
        self.unindexed.lock().clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Calls `f` with each key of `[begin, end)` (in order, or reversed) and the key's
    /// chain, until it returns false.
    fn range(
        &self,
        begin: &[u8],
        end: &[u8],
        reverse: bool,
        f: impl FnMut(&KeyBytes, &Chain) -> bool,
    ) {
        if begin >= end {
            return;
        }
        let lo = OrdKey::new(KeyBytes::from(begin));
        let hi = OrdKey::new(KeyBytes::from(end));
        self.walk(Bound::Included(&lo), Bound::Excluded(&hi), reverse, f);
    }

    /// Calls `f` with each key between `lo` and `hi` that has a chain (in order, or
    /// reversed) until it returns false, holding the ordered index's read lock throughout.
    fn walk(
        &self,
        lo: Bound<&OrdKey>,
        hi: Bound<&OrdKey>,
        reverse: bool,
        mut f: impl FnMut(&KeyBytes, &Chain) -> bool,
    ) {
        self.settle();
        let order = self.order.read();
        let range = order.range((lo, hi));
        let mut visit = |k: &OrdKey| {
            let hash = key_hash(&k.key);
            match find(&self.shard(hash).read(), hash, &k.key) {
                Some(c) => f(&k.key, c),
                None => true,
            }
        };
        if reverse {
            for k in range.rev() {
                if !visit(k) {
                    break;
                }
            }
        } else {
            for k in range {
                if !visit(k) {
                    break;
                }
            }
        }
    }
}

/// A resolved write, as applied and as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved {
    Set(Bytes, Bytes),
    Clear(Bytes),
}

/// The shared multi-version map.
#[derive(Debug)]
#[allow(unreachable_pub, reason = "sealed: reachable only through the Host trait")]
pub struct Engine {
    map: Table,
    /// Odd while [`Engine::load`] replaces the whole state; readers that overlap a load
    /// get `TooOld` and retry (a seqlock around every read).
    generation: AtomicU64,
    /// Newest version readers may use (everything at or below it is committed and durable).
    visible: AtomicU64,
    /// Oldest version still readable.
    horizon: AtomicU64,
    /// While a snapshot is being written, the horizon stays at or below this version so
    /// that the snapshot can read it (`u64::MAX`: nothing pinned).
    pinned: AtomicU64,
    /// When each recent version was applied, to advance `horizon`.
    history: Mutex<VecDeque<(u64, Instant)>>,
    /// Keys whose latest entry is a deletion, to forget once it is below the horizon.
    tombstones: Mutex<VecDeque<(u64, Key)>>,
}

/// What a batch resolution needs besides the requests: where to log the writes, and
/// reusable scratch space.
pub(crate) struct BatchScratch {
    new_keys: Vec<KeyBytes>,
    tombstones: Vec<Key>,
}

impl BatchScratch {
    pub(crate) fn new() -> Self {
        BatchScratch { new_keys: Vec::new(), tombstones: Vec::new() }
    }
}

impl Engine {
    pub(crate) fn new() -> Self {
        Engine {
            map: Table::default(),
            generation: AtomicU64::new(0),
            visible: AtomicU64::new(0),
            horizon: AtomicU64::new(0),
            pinned: AtomicU64::new(u64::MAX),
            history: Mutex::new(VecDeque::new()),
            tombstones: Mutex::new(VecDeque::new()),
        }
    }

    pub(crate) fn visible_version(&self) -> u64 {
        self.visible.load(Ordering::Acquire)
    }

    pub(crate) fn set_visible(&self, version: u64) {
        self.visible.fetch_max(version, Ordering::AcqRel);
    }

    pub(crate) fn horizon(&self) -> u64 {
        self.horizon.load(Ordering::Acquire)
    }

    /// Starts a read at `version`: the generation to check afterwards with
    /// [`Engine::end_read`].
    fn begin_read(&self, version: u64) -> Result<u64, StoreError> {
        let g = self.generation.load(Ordering::Acquire);
        if g % 2 == 1 || version < self.horizon() {
            return Err(StoreError::TooOld);
        }
        Ok(g)
    }

    /// Whether a read at `version` that began at generation `g` saw one consistent state:
    /// no load replaced the state meanwhile, and the horizon did not pass `version` (a
    /// commit during the read may then have dropped the version it needed).
    fn end_read(&self, g: u64, version: u64) -> Result<(), StoreError> {
        if self.generation.load(Ordering::Acquire) != g || version < self.horizon() {
            return Err(StoreError::TooOld);
        }
        Ok(())
    }

    /// Loads a snapshot: every key at `version`. Readers in flight get `TooOld`.
    pub(crate) fn load(&self, version: u64, entries: impl IntoIterator<Item = (Bytes, Bytes)>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.map.clear();
        let mut new_keys = Vec::new();
        for (k, v) in entries {
            let key = Key::copy(&k);
            if self.map.put(&key, Some(v), version, version) {
                new_keys.push(key.bytes);
            }
            if new_keys.len() >= 4096 {
                self.map.index(&mut new_keys);
            }
        }
        self.map.index(&mut new_keys);
        self.map.settle();
        self.tombstones.lock().clear();
        self.history.lock().clear();
        self.visible.store(version, Ordering::Release);
        self.horizon.store(version, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Brings the ordered index up to date with every key written so far, so that the
    /// next range read does not have to, unless something is walking the index: the
    /// caller acknowledges commits and must not wait for a snapshot's walk. Called
    /// between batches, off the commit path.
    pub(crate) fn settle_order(&self) {
        self.map.try_settle();
    }

    /// Keeps `version` readable until [`Engine::unpin`], however long that takes.
    pub(crate) fn pin(&self, version: u64) {
        self.pinned.store(version, Ordering::Release);
    }

    pub(crate) fn unpin(&self) {
        self.pinned.store(u64::MAX, Ordering::Release);
    }

    /// Calls `f` with each live key at `version` among the next `max` keys after `after`
    /// (from the first key if `None`), in order, with its value. Returns the last key
    /// looked at if there may be more. `f` runs under the ordered index's read lock and
    /// should only copy: the lock is held for these `max` keys, so a snapshot walking the
    /// whole map holds up commits for tens of microseconds at a time. Nothing is cloned
    /// out of the map, so the walk neither allocates nor writes to the map's memory.
    pub(crate) fn dump_ordered(
        &self,
        version: u64,
        after: Option<&[u8]>,
        max: usize,
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let g = self.begin_read(version)?;
        let from = after.map(|a| OrdKey::new(KeyBytes::from(a)));
        let lo = from.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
        let mut seen = 0;
        let mut last: Option<Vec<u8>> = None;
        self.map.walk(lo, Bound::Unbounded, false, |k, c| {
            if let Some(Some(v)) = c.at(version) {
                f(k, v);
            }
            seen += 1;
            if seen < max {
                return true;
            }
            last = Some(k.to_vec());
            false
        });
        self.end_read(g, version)?;
        Ok(last)
    }

    /// Reads a key whose [`key_hash`] is `hash` at `version`.
    pub(crate) fn get(
        &self,
        key: &[u8],
        hash: u64,
        version: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        let g = self.begin_read(version)?;
        let v = self.map.value_at(hash, key, version).flatten();
        self.end_read(g, version)?;
        Ok(v)
    }

    /// Reads up to `limit` live keys of `[begin, end)` at `version`, calling `f` for each
    /// in order until it returns false.
    pub(crate) fn scan(
        &self,
        begin: &[u8],
        end: &[u8],
        reverse: bool,
        version: u64,
        mut f: impl FnMut(&KeyBytes, &Bytes) -> bool,
    ) -> Result<(), StoreError> {
        let g = self.begin_read(version)?;
        self.map.range(begin, end, reverse, |k, c| match c.at(version) {
            Some(Some(v)) => f(k, v),
            _ => true,
        });
        self.end_read(g, version)
    }

    /// Whether anything in `conflicts` changed after `read_version`.
    fn conflicts(&self, read_version: u64, conflicts: &ConflictSet) -> bool {
        for (hash, key) in conflicts.points() {
            if self.map.latest_version(hash, key).is_some_and(|v| v > read_version) {
                return true;
            }
        }
        for (begin, end) in &conflicts.ranges {
            let mut changed = false;
            self.map.range(begin, end, false, |_, c| {
                changed = c.latest.0 > read_version;
                !changed
            });
            if changed {
                return true;
            }
        }
        false
    }

    /// Resolves and applies one transaction at `version` / `batch_index`, logging its
    /// writes to `log`. Returns why the transaction cannot commit, if it cannot.
    pub(crate) fn resolve_and_apply(
        &self,
        req: &mut CommitRequest,
        version: u64,
        batch_index: u16,
        now: Instant,
        log: &mut RecordWriter<'_>,
    ) -> Result<(), StoreError> {
        let mut scratch = BatchScratch::new();
        let out = self.resolve_one(req, version, batch_index, now, log, &mut scratch);
        self.remember_tombstones(version, &mut scratch.tombstones);
        out
    }

    /// Resolves and applies a batch in order, logging the writes of the transactions that
    /// commit to `log`. Outcomes are in batch order.
    pub(crate) fn resolve_batch<'a>(
        &self,
        reqs: impl Iterator<Item = &'a mut CommitRequest>,
        version: u64,
        now: Instant,
        log: &mut RecordWriter<'_>,
        scratch: &mut BatchScratch,
    ) -> Vec<Result<(), StoreError>> {
        let out = reqs
            .enumerate()
            .map(|(i, r)| self.resolve_one(r, version, i as u16, now, log, scratch))
            .collect();
        self.remember_tombstones(version, &mut scratch.tombstones);
        out
    }

    fn remember_tombstones(&self, version: u64, tombstones: &mut Vec<Key>) {
        if !tombstones.is_empty() {
            let mut t = self.tombstones.lock();
            t.extend(tombstones.drain(..).map(|k| (version, k)));
        }
    }

    /// Takes the request's writes: once resolved, a request is only answered.
    fn resolve_one(
        &self,
        req: &mut CommitRequest,
        version: u64,
        batch_index: u16,
        now: Instant,
        log: &mut RecordWriter<'_>,
        scratch: &mut BatchScratch,
    ) -> Result<(), StoreError> {
        let horizon = self.horizon();
        if now.duration_since(req.created) > MVCC_WINDOW {
            return Err(StoreError::TooOld);
        }
        if let Some(rv) = req.read_version {
            if rv < horizon {
                return Err(StoreError::TooOld);
            }
            if self.conflicts(rv, &req.conflicts) {
                return Err(StoreError::Conflict);
            }
        }
        // Versionstamp offsets were checked when the transaction wrote them; check again
        // before applying anything, so that a transaction is applied whole or not at all.
        for m in &req.mutations {
            if let Mutation::Atomic(k, p, op) = m {
                match op {
                    MutationType::SetVersionstampedKey => drop(versionstamp_offset(&k.bytes)?),
                    MutationType::SetVersionstampedValue => drop(versionstamp_offset(p)?),
                    _ => {}
                }
            }
        }
        let stamp = versionstamp(version, batch_index);
        let map = &self.map;
        let mut w = Writer { map, log, scratch, version, horizon };
        for m in std::mem::take(&mut req.mutations) {
            match m {
                Mutation::Set(k, v) => w.set(&k, v),
                Mutation::Clear(k) => {
                    if map.latest_value(k.hash, &k.bytes).is_some() {
                        w.clear(k);
                    }
                }
                Mutation::ClearRange(b, e) => {
                    let mut keys = Vec::new();
                    // New keys of this transaction must be in the order before the range
                    // is walked.
                    map.index(&mut w.scratch.new_keys);
                    map.range(&b, &e, false, |k, c| {
                        if c.latest.1.is_some() {
                            keys.push(k.clone());
                        }
                        true
                    });
                    for k in keys {
                        w.clear(Key::new(k));
                    }
                }
                Mutation::Atomic(k, param, op) => match op {
                    MutationType::SetVersionstampedKey => {
                        let key = Key::new(KeyBytes::from(fill_versionstamp(&k.bytes, &stamp)?));
                        w.set(&key, param);
                    }
                    MutationType::SetVersionstampedValue => {
                        let value = Bytes::from(fill_versionstamp(&param, &stamp)?);
                        w.set(&k, value);
                    }
                    _ => {
                        let current = map.latest_value(k.hash, &k.bytes);
                        match apply_atomic(op, current.as_deref(), &param) {
                            Some(v) => w.set(&k, Bytes::from(v)),
                            None => {
                                if current.is_some() {
                                    w.clear(k);
                                }
                            }
                        }
                    }
                },
            }
        }
        // Later transactions of the batch may range-read over these keys' conflicts.
        map.index(&mut scratch.new_keys);
        Ok(())
    }

    /// Applies writes already resolved by another process (log replay).
    pub(crate) fn apply_resolved(&self, version: u64, writes: &[Resolved]) {
        let horizon = self.horizon();
        let mut tombstones = Vec::new();
        let mut new_keys = Vec::new();
        for w in writes {
            match w {
                Resolved::Set(k, v) => {
                    let key = Key::copy(k);
                    if self.map.put(&key, Some(v.clone()), version, horizon) {
                        new_keys.push(key.bytes);
                    }
                }
                Resolved::Clear(k) => {
                    let key = Key::copy(k);
                    self.map.put(&key, None, version, horizon);
                    tombstones.push(key);
                }
            }
        }
        self.map.index(&mut new_keys);
        self.remember_tombstones(version, &mut tombstones);
    }

    /// Records that `version` was applied now; advances the MVCC horizon past versions
    /// older than the window and forgets deletions below it.
    pub(crate) fn note_applied(&self, version: u64, now: Instant) {
        let mut history = self.history.lock();
        history.push_back((version, now));
        let mut newest_old = None;
        if let Some(cutoff) = now.checked_sub(MVCC_WINDOW) {
            while let Some(&(v, at)) = history.front() {
                if at > cutoff {
                    break;
                }
                newest_old = Some(v);
                history.pop_front();
            }
        }
        drop(history);
        if let Some(v) = newest_old {
            let v = v.min(self.pinned.load(Ordering::Acquire));
            self.horizon.fetch_max(v, Ordering::AcqRel);
            self.forget_tombstones();
        }
    }

    fn forget_tombstones(&self) {
        let horizon = self.horizon();
        let mut t = self.tombstones.lock();
        let mut forgotten = Vec::new();
        while let Some((v, _)) = t.front() {
            if *v > horizon {
                break;
            }
            let Some((_, k)) = t.pop_front() else { break };
            if self.map.forget(&k, horizon) {
                forgotten.push(OrdKey::new(k.bytes));
            }
        }
        drop(t);
        if !forgotten.is_empty() {
            // A forgotten key may still be queued: settle first, or it would be indexed
            // after its removal.
            self.map.settle();
            let mut order = self.map.order.write();
            for k in &forgotten {
                order.remove(k);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn key_count(&self) -> usize {
        self.map.len()
    }
}
/// Applies one transaction's writes to the map and logs them.
struct Writer<'m, 'l, 'w, 's> {
    map: &'m Table,
    log: &'l mut RecordWriter<'w>,
    scratch: &'s mut BatchScratch,
    version: u64,
    horizon: u64,
}

impl Writer<'_, '_, '_, '_> {
    fn set(&mut self, key: &Key, value: Bytes) {
        self.log.set(&key.bytes, &value);
        if self.map.put(key, Some(value), self.version, self.horizon) {
            self.scratch.new_keys.push(key.bytes.clone());
        }
    }

    fn clear(&mut self, key: Key) {
        self.log.clear(&key.bytes);
        self.map.put(&key, None, self.version, self.horizon);
        self.scratch.tombstones.push(key);
    }
}

/// The 10-byte versionstamp of a transaction in a commit batch.
pub(crate) fn versionstamp(version: u64, batch_index: u16) -> [u8; 10] {
    let mut s = [0u8; 10];
    s[..8].copy_from_slice(&version.to_be_bytes());
    s[8..].copy_from_slice(&batch_index.to_be_bytes());
    s
}

/// Replaces the placeholder at the offset named by the last 4 bytes of `param`.
fn fill_versionstamp(param: &[u8], stamp: &[u8; 10]) -> Result<Vec<u8>, StoreError> {
    let offset = versionstamp_offset(param)?;
    let mut out = param[..param.len() - 4].to_vec();
    out[offset..offset + 10].copy_from_slice(stamp);
    Ok(out)
}

fn versionstamp_offset(param: &[u8]) -> Result<usize, StoreError> {
    if param.len() < 14 {
        return Err(StoreError::InvalidMutation("versionstamped operand is too short"));
    }
    let n = param.len() - 4;
    let mut off = [0u8; 4];
    off.copy_from_slice(&param[n..]);
    let offset = u32::from_le_bytes(off) as usize;
    if offset + 10 > n {
        return Err(StoreError::InvalidMutation("versionstamp offset is out of range"));
    }
    Ok(offset)
}

/// Applies an atomic operation to the current value. `None` means "clear the key".
pub(crate) fn apply_atomic(
    op: MutationType,
    current: Option<&[u8]>,
    param: &[u8],
) -> Option<Vec<u8>> {
    let width = param.len();
    let cur = |c: Option<&[u8]>| -> Vec<u8> {
        let mut v = c.unwrap_or(&[]).to_vec();
        v.resize(width, 0);
        v
    };
    match op {
        MutationType::Add => {
            let a = cur(current);
            let mut out = vec![0u8; width];
            let mut carry = 0u16;
            for i in 0..width {
                let s = u16::from(a[i]) + u16::from(param[i]) + carry;
                out[i] = s as u8;
                carry = s >> 8;
            }
            Some(out)
        }
        MutationType::Max | MutationType::Min => {
            let Some(c) = current else { return Some(param.to_vec()) };
            let a = cur(Some(c));
            // Little-endian unsigned comparison: compare from the most significant byte.
            let greater = a.iter().rev().cmp(param.iter().rev()) == std::cmp::Ordering::Greater;
            let keep_current = if op == MutationType::Max { greater } else { !greater };
            Some(if keep_current { a } else { param.to_vec() })
        }
        MutationType::CompareAndClear => match current {
            Some(c) if c == param => None,
            Some(c) => Some(c.to_vec()),
            None => None,
        },
        MutationType::SetVersionstampedKey | MutationType::SetVersionstampedValue => {
            Some(param.to_vec())
        }
    }
}

/// A buffered write. Keys carry their hash, computed by the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mutation {
    Set(Key, Bytes),
    Clear(Key),
    ClearRange(Vec<u8>, Vec<u8>),
    /// For `SetVersionstampedKey` the key still holds the placeholder and offset, and its
    /// hash means nothing.
    Atomic(Key, Bytes, MutationType),
}

/// A transaction's read conflict set: single keys (the common case, each checked with one
/// hash lookup, kept with their hashes in one buffer) and ranges.
#[derive(Debug, Default)]
pub(crate) struct ConflictSet {
    /// `(hash, start, len)` into `bytes`.
    points: Vec<(u64, u32, u32)>,
    bytes: Vec<u8>,
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
}

impl ConflictSet {
    fn add_point(&mut self, hash: u64, key: &[u8]) {
        self.points.push((hash, self.bytes.len() as u32, key.len() as u32));
        self.bytes.extend_from_slice(key);
    }

    fn points(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.points
            .iter()
            .map(|&(h, at, len)| (h, &self.bytes[at as usize..at as usize + len as usize]))
    }
}

/// What a transaction submits to the committer.
#[derive(Debug)]
#[allow(unreachable_pub, reason = "sealed: reachable only through the Host trait")]
pub struct CommitRequest {
    pub(crate) read_version: Option<u64>,
    pub(crate) conflicts: ConflictSet,
    pub(crate) mutations: Vec<Mutation>,
    pub(crate) created: Instant,
}

/// A write as seen by the transaction's own later reads.
#[derive(Debug, Clone)]
enum Pending {
    Set(Bytes),
    Clear,
    /// Atomic operations on top of the value at the read version.
    Atomic(Vec<(MutationType, Bytes)>),
    /// Written with a versionstamp that is only known at commit.
    Unreadable,
}

/// Below this many writes, a read looks for its own writes by scanning them; from there
/// on the buffer keeps an ordered index of what it wrote.
const INDEX_WRITES_MIN: usize = 32;

/// The key a write names for the transaction's own reads (`None`: a clear of a range, or
/// a key only known at commit).
fn written_key(m: &Mutation) -> Option<&KeyBytes> {
    match m {
        Mutation::Set(k, _) | Mutation::Clear(k) => Some(&k.bytes),
        Mutation::Atomic(_, _, MutationType::SetVersionstampedKey) => None,
        Mutation::Atomic(k, _, _) => Some(&k.bytes),
        Mutation::ClearRange(..) => None,
    }
}

/// What a key reads as after `m`, which wrote it (or cleared a range holding it), given
/// what it read as before.
fn after_write(before: Option<&Pending>, m: &Mutation) -> Pending {
    match m {
        Mutation::Set(_, v) => Pending::Set(v.clone()),
        Mutation::Clear(_) | Mutation::ClearRange(..) => Pending::Clear,
        Mutation::Atomic(_, _, MutationType::SetVersionstampedValue) => Pending::Unreadable,
        Mutation::Atomic(_, p, op) => {
            let set_or_clear =
                |v: Option<Vec<u8>>| v.map_or(Pending::Clear, |v| Pending::Set(Bytes::from(v)));
            match before {
                Some(Pending::Set(v)) => set_or_clear(apply_atomic(*op, Some(v), p)),
                Some(Pending::Clear) => set_or_clear(apply_atomic(*op, None, p)),
                Some(Pending::Atomic(ops)) => {
                    let mut ops = ops.clone();
                    ops.push((*op, p.clone()));
                    Pending::Atomic(ops)
                }
                Some(Pending::Unreadable) => Pending::Unreadable,
                None => Pending::Atomic(vec![(*op, p.clone())]),
            }
        }
    }
}

/// The client side of a transaction: read version, read-your-writes buffer, conflict set.
#[derive(Debug)]
pub(crate) struct TrxBuffer {
    pub(crate) created: Instant,
    pub(crate) read_version: Option<u64>,
    /// What each written key reads as, once the transaction has written enough keys for
    /// an index to beat a scan of its writes.
    index: Option<BTreeMap<KeyBytes, Pending>>,
    cleared: Vec<(Vec<u8>, Vec<u8>)>,
    mutations: Vec<Mutation>,
    conflicts: ConflictSet,
    size: usize,
    error: Option<StoreError>,
    pub(crate) committed: bool,
}

impl TrxBuffer {
    pub(crate) fn new(now: Instant) -> Self {
        TrxBuffer {
            created: now,
            read_version: None,
            index: None,
            cleared: Vec::new(),
            mutations: Vec::new(),
            conflicts: ConflictSet::default(),
            size: 0,
            error: None,
            committed: false,
        }
    }

    /// Whether the transaction may still be used (it was not committed).
    pub(crate) fn check_open(&self) -> Result<(), StoreError> {
        if self.committed {
            return Err(StoreError::UsedAfterCommit);
        }
        Ok(())
    }

    pub(crate) fn check_usable(&self, now: Instant) -> Result<(), StoreError> {
        self.check_open()?;
        if now.duration_since(self.created) > MVCC_WINDOW {
            return Err(StoreError::TooOld);
        }
        Ok(())
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

    fn in_cleared(&self, key: &[u8]) -> bool {
        self.cleared.iter().any(|(b, e)| key >= b.as_slice() && key < e.as_slice())
    }

    /// Records a write: in the list sent to the committer, and in the index if there is
    /// one (built from the list once it is long enough).
    fn push(&mut self, m: Mutation) {
        if let Mutation::ClearRange(b, e) = &m {
            if let Some(index) = &mut self.index {
                for (_, p) in
                    index.range_mut::<[u8], _>((Bound::Included(&b[..]), Bound::Excluded(&e[..])))
                {
                    *p = Pending::Clear;
                }
            }
            self.cleared.push((b.clone(), e.clone()));
        } else if let (Some(k), Some(index)) = (written_key(&m), &self.index) {
            // A key first written after a range holding it was cleared starts out cleared.
            let before = match index.get(k) {
                Some(p) => Some(p.clone()),
                None if self.in_cleared(k) => Some(Pending::Clear),
                None => None,
            };
            let after = after_write(before.as_ref(), &m);
            if let Some(index) = &mut self.index {
                index.insert(k.clone(), after);
            }
        }
        self.mutations.push(m);
        if self.index.is_none() && self.mutations.len() >= INDEX_WRITES_MIN {
            self.build_index();
        }
    }

    fn build_index(&mut self) {
        let mut index: BTreeMap<KeyBytes, Pending> = BTreeMap::new();
        let mut cleared: Vec<(&[u8], &[u8])> = Vec::new();
        for m in &self.mutations {
            if let Mutation::ClearRange(b, e) = m {
                for (_, p) in
                    index.range_mut::<[u8], _>((Bound::Included(&b[..]), Bound::Excluded(&e[..])))
                {
                    *p = Pending::Clear;
                }
                cleared.push((b, e));
            } else if let Some(k) = written_key(m) {
                let before = match index.get(k) {
                    Some(p) => Some(p.clone()),
                    None if cleared.iter().any(|(b, e)| k.as_ref() >= *b && k.as_ref() < *e) => {
                        Some(Pending::Clear)
                    }
                    None => None,
                };
                let after = after_write(before.as_ref(), m);
                index.insert(k.clone(), after);
            }
        }
        self.index = Some(index);
    }

    /// What `key` reads as from this transaction's own writes, if it wrote it (or cleared
    /// a range holding it).
    fn pending(&self, key: &[u8]) -> Option<Pending> {
        if let Some(index) = &self.index {
            return match index.get(key) {
                Some(p) => Some(p.clone()),
                None if self.in_cleared(key) => Some(Pending::Clear),
                None => None,
            };
        }
        let mut state: Option<Pending> = None;
        for m in &self.mutations {
            let hits = match m {
                Mutation::ClearRange(b, e) => key >= b.as_slice() && key < e.as_slice(),
                _ => written_key(m).is_some_and(|k| k.as_ref() == key),
            };
            if hits {
                state = Some(after_write(state.as_ref(), m));
            }
        }
        state
    }

    /// The keys in `[begin, end)` this transaction wrote, in order (reversed if asked), with
    /// what they read as.
    fn pending_range(&self, begin: &[u8], end: &[u8], reverse: bool) -> Vec<(KeyBytes, Pending)> {
        if begin >= end {
            return Vec::new();
        }
        let mut out: Vec<(KeyBytes, Pending)> = match &self.index {
            Some(index) => index
                .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
                .map(|(k, p)| (k.clone(), p.clone()))
                .collect(),
            None => {
                let mut keys: Vec<&KeyBytes> = self
                    .mutations
                    .iter()
                    .filter_map(written_key)
                    .filter(|k| k.as_ref() >= begin && k.as_ref() < end)
                    .collect();
                keys.sort_unstable();
                keys.dedup();
                keys.into_iter().filter_map(|k| self.pending(k).map(|p| (k.clone(), p))).collect()
            }
        };
        if reverse {
            out.reverse();
        }
        out
    }

    pub(crate) fn set(&mut self, key: &[u8], value: &[u8]) {
        if !self.check_key(key) {
            return;
        }
        if value.len() > VALUE_SIZE_MAX {
            self.note_error(StoreError::ValueTooLarge(value.len()));
            return;
        }
        self.size += key.len() + value.len();
        self.push(Mutation::Set(Key::copy(key), Bytes::copy_from_slice(value)));
    }

    pub(crate) fn clear(&mut self, key: &[u8]) {
        if !self.check_key(key) {
            return;
        }
        self.size += key.len();
        self.push(Mutation::Clear(Key::copy(key)));
    }

    pub(crate) fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        if !self.check_key(begin) || !self.check_key(end) || begin >= end {
            return;
        }
        self.size += begin.len() + end.len();
        self.push(Mutation::ClearRange(begin.to_vec(), end.to_vec()));
    }

    pub(crate) fn atomic_op(&mut self, key: &[u8], param: &[u8], op: MutationType) {
        match op {
            MutationType::SetVersionstampedKey => {
                if key.len() > KEY_SIZE_MAX + 4 {
                    self.note_error(StoreError::KeyTooLarge(key.len()));
                    return;
                }
                if let Err(e) = versionstamp_offset(key) {
                    self.note_error(e);
                    return;
                }
                if param.len() > VALUE_SIZE_MAX {
                    self.note_error(StoreError::ValueTooLarge(param.len()));
                    return;
                }
            }
            MutationType::SetVersionstampedValue => {
                if !self.check_key(key) {
                    return;
                }
                if let Err(e) = versionstamp_offset(param) {
                    self.note_error(e);
                    return;
                }
                if param.len() > VALUE_SIZE_MAX + 4 {
                    self.note_error(StoreError::ValueTooLarge(param.len()));
                    return;
                }
            }
            _ => {
                if !self.check_key(key) {
                    return;
                }
                if param.len() > VALUE_SIZE_MAX {
                    self.note_error(StoreError::ValueTooLarge(param.len()));
                    return;
                }
            }
        }
        self.size += key.len() + param.len();
        let key = if op == MutationType::SetVersionstampedKey {
            Key { bytes: KeyBytes::from(key), hash: 0 }
        } else {
            Key::copy(key)
        };
        self.push(Mutation::Atomic(key, Bytes::copy_from_slice(param), op));
    }

    pub(crate) fn add_conflict(&mut self, begin: &[u8], end: &[u8]) {
        if begin < end {
            // A point range `key .. key\0` is kept as the key: the committer checks it with
            // one hash lookup. (Counted at the size FoundationDB counts the range.)
            self.size += begin.len() + end.len();
            if end.len() == begin.len() + 1 && end.starts_with(begin) && end.last() == Some(&0) {
                self.conflicts.add_point(key_hash(begin), begin);
            } else {
                self.conflicts.ranges.push((begin.to_vec(), end.to_vec()));
            }
        }
    }

    /// Adds one key, whose [`key_hash`] is `hash`, to the read conflict set.
    pub(crate) fn add_point_conflict(&mut self, hash: u64, key: &[u8]) {
        self.size += 2 * key.len() + 1;
        self.conflicts.add_point(hash, key);
    }

    /// Reads one key through the buffer; `base` reads the store at the read version.
    pub(crate) fn get_through(
        &self,
        key: &[u8],
        base: impl FnOnce() -> Result<Option<Bytes>, StoreError>,
    ) -> Result<Option<Bytes>, StoreError> {
        match self.pending(key) {
            Some(Pending::Set(v)) => Ok(Some(v)),
            Some(Pending::Clear) => Ok(None),
            Some(Pending::Unreadable) => {
                Err(StoreError::InvalidMutation("read of a key written with a versionstamp"))
            }
            Some(Pending::Atomic(ops)) => {
                let mut v = base()?;
                for (op, p) in &ops {
                    v = apply_atomic(*op, v.as_deref(), p).map(Bytes::from);
                }
                Ok(v)
            }
            None => base(),
        }
    }

    /// Merges a base range scan with the buffer. Returns the rows and the key where reading
    /// stopped (for the conflict range) when a limit cut it short.
    pub(crate) fn range_through(
        &self,
        req: &RangeRequest,
        engine: &Engine,
        version: u64,
    ) -> Result<(Vec<KeyValue>, Option<Vec<u8>>), StoreError> {
        let limit = if req.limit == 0 { usize::MAX } else { req.limit };
        let written = self.pending_range(&req.begin, &req.end, req.reverse);
        let overlay: Vec<(&KeyBytes, &Pending)> = written.iter().map(|(k, p)| (k, p)).collect();
        let mut out: Vec<KeyValue> = Vec::new();
        let mut oi = 0;
        let before = |a: &[u8], b: &[u8]| if req.reverse { a > b } else { a < b };
        let mut error = None;
        let emit_overlay = |out: &mut Vec<KeyValue>,
                            k: &KeyBytes,
                            p: &Pending,
                            base: Option<&Bytes>|
         -> Result<(), StoreError> {
            let v = match p {
                Pending::Set(v) => Some(v.clone()),
                Pending::Clear => None,
                Pending::Unreadable => {
                    return Err(StoreError::InvalidMutation(
                        "read of a key written with a versionstamp",
                    ));
                }
                Pending::Atomic(ops) => {
                    let mut v = if self.in_cleared(k) { None } else { base.cloned() };
                    for (op, param) in ops {
                        v = apply_atomic(*op, v.as_deref(), param).map(Bytes::from);
                    }
                    v
                }
            };
            if let Some(v) = v {
                out.push((Bytes::copy_from_slice(k), v));
            }
            Ok(())
        };
        engine.scan(&req.begin, &req.end, req.reverse, version, |k, v| {
            // Overlay keys that come before this base key.
            while oi < overlay.len() && before(overlay[oi].0, k) && out.len() < limit {
                let (ok, p) = overlay[oi];
                // An atomic op on a key absent from the base sees no base value.
                if let Err(e) = emit_overlay(&mut out, ok, p, None) {
                    error = Some(e);
                    return false;
                }
                oi += 1;
            }
            if out.len() >= limit {
                return false;
            }
            if oi < overlay.len() && overlay[oi].0 == k {
                let (ok, p) = overlay[oi];
                if let Err(e) = emit_overlay(&mut out, ok, p, Some(v)) {
                    error = Some(e);
                    return false;
                }
                oi += 1;
            } else if !self.in_cleared(k) {
                out.push((Bytes::copy_from_slice(k), v.clone()));
            }
            out.len() < limit
        })?;
        if let Some(e) = error {
            return Err(e);
        }
        while oi < overlay.len() && out.len() < limit {
            let (ok, p) = overlay[oi];
            emit_overlay(&mut out, ok, p, None)?;
            oi += 1;
        }
        let stopped_at =
            (out.len() >= limit).then(|| out.last().map(|(k, _)| k.to_vec())).flatten();
        Ok((out, stopped_at))
    }

    /// Adds the conflict range a range read covered.
    pub(crate) fn add_range_conflict(&mut self, req: &RangeRequest, stopped_at: Option<Vec<u8>>) {
        match stopped_at {
            None => self.add_conflict(&req.begin.clone(), &req.end.clone()),
            Some(last) if req.reverse => self.add_conflict(&last, &req.end.clone()),
            Some(last) => self.add_conflict(&req.begin.clone(), &crate::key_after(&last)),
        }
    }

    /// Finishes the buffer into a commit request, or the first error a write recorded.
    pub(crate) fn take_request(&mut self) -> Result<Option<CommitRequest>, StoreError> {
        self.committed = true;
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.size > TRANSACTION_SIZE_MAX {
            return Err(StoreError::TransactionTooLarge(self.size));
        }
        if self.mutations.is_empty() {
            return Ok(None);
        }
        Ok(Some(CommitRequest {
            read_version: self.read_version,
            conflicts: std::mem::take(&mut self.conflicts),
            mutations: std::mem::take(&mut self.mutations),
            created: self.created,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(
        rv: Option<u64>,
        conflicts: Vec<(Vec<u8>, Vec<u8>)>,
        mutations: Vec<Mutation>,
    ) -> CommitRequest {
        let mut buf = TrxBuffer::new(Instant::now());
        for (b, e) in conflicts {
            buf.add_conflict(&b, &e);
        }
        CommitRequest {
            read_version: rv,
            conflicts: buf.conflicts,
            mutations,
            created: Instant::now(),
        }
    }
    fn set(k: &str, v: &str) -> Mutation {
        Mutation::Set(Key::copy(k.as_bytes()), Bytes::copy_from_slice(v.as_bytes()))
    }
    /// Resolves one request as the only transaction of a commit at `version`.
    fn commit(e: &Engine, r: &CommitRequest, version: u64, now: Instant) -> Result<(), StoreError> {
        let mut r = CommitRequest {
            read_version: r.read_version,
            conflicts: ConflictSet {
                points: r.conflicts.points.clone(),
                bytes: r.conflicts.bytes.clone(),
                ranges: r.conflicts.ranges.clone(),
            },
            mutations: r.mutations.clone(),
            created: r.created,
        };
        let mut log = Vec::new();
        let mut w = RecordWriter::begin(&mut log, version);
        e.resolve_and_apply(&mut r, version, 0, now, &mut w)
    }

    #[test]
    fn readers_see_their_snapshot_while_writers_commit() {
        let e = Engine::new();
        commit(&e, &req(None, vec![], vec![set("a", "1")]), 1, Instant::now()).unwrap();
        e.note_applied(1, Instant::now());
        commit(&e, &req(None, vec![], vec![set("a", "2")]), 2, Instant::now()).unwrap();
        e.note_applied(2, Instant::now());
        assert_eq!(e.get(b"a", key_hash(b"a"), 1).unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(e.get(b"a", key_hash(b"a"), 2).unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(e.get(b"a", key_hash(b"a"), 0).unwrap(), None);
    }

    #[test]
    fn conflicting_commit_is_refused_and_changes_nothing() {
        let e = Engine::new();
        commit(&e, &req(None, vec![], vec![set("a", "1")]), 1, Instant::now()).unwrap();
        let point = (b"a".to_vec(), b"a\0".to_vec());
        let r = req(Some(0), vec![point], vec![set("b", "x")]);
        assert!(matches!(commit(&e, &r, 2, Instant::now()), Err(StoreError::Conflict)));
        assert_eq!(e.get(b"b", key_hash(b"b"), 2).unwrap(), None);
        // A range conflict catches a key created inside the range.
        let r = req(Some(0), vec![(b"0".to_vec(), b"z".to_vec())], vec![set("c", "x")]);
        assert!(matches!(commit(&e, &r, 2, Instant::now()), Err(StoreError::Conflict)));
        let r = req(Some(1), vec![(b"0".to_vec(), b"z".to_vec())], vec![set("c", "x")]);
        assert!(commit(&e, &r, 2, Instant::now()).is_ok());
    }

    #[test]
    fn a_snapshot_walk_sees_every_live_key_once_at_its_version() {
        let e = Engine::new();
        let keys: Vec<String> = (0..23).map(|i| format!("k{i:02}")).collect();
        let all: Vec<Mutation> = keys.iter().map(|k| set(k, "v1")).collect();
        commit(&e, &req(None, vec![], all), 1, Instant::now()).unwrap();
        e.note_applied(1, Instant::now());
        // After version 1: one key deleted, one rewritten, one added.
        let later = vec![Mutation::Clear(Key::copy(b"k05")), set("k07", "v2"), set("k99", "v2")];
        commit(&e, &req(None, vec![], later), 2, Instant::now()).unwrap();
        e.note_applied(2, Instant::now());
        for (version, want) in [(1, 23), (2, 23)] {
            let mut seen: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let next = e
                    .dump_ordered(version, after.as_deref(), 4, |k, v| {
                        seen.push((k.to_vec(), v.to_vec()))
                    })
                    .unwrap();
                match next {
                    Some(k) => after = Some(k),
                    None => break,
                }
            }
            assert_eq!(seen.len(), want, "at version {version}");
            assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "in order, each once");
            let value = |k: &str| seen.iter().find(|(key, _)| key == k.as_bytes()).map(|e| &e.1);
            if version == 1 {
                assert_eq!(value("k05").map(Vec::as_slice), Some(&b"v1"[..]));
                assert_eq!(value("k07").map(Vec::as_slice), Some(&b"v1"[..]));
                assert!(value("k99").is_none());
            } else {
                assert!(value("k05").is_none());
                assert_eq!(value("k07").map(Vec::as_slice), Some(&b"v2"[..]));
                assert_eq!(value("k99").map(Vec::as_slice), Some(&b"v2"[..]));
            }
        }
    }

    proptest::proptest! {
        /// The ordered index's inline heads never change the byte order, including for
        /// keys that are prefixes of each other or end in zero bytes (the padding).
        #[test]
        fn ord_keys_order_as_bytes(
            a in proptest::collection::vec(proptest::sample::select(vec![0u8, 1, 0x7f, 0xff]), 0..40),
            b in proptest::collection::vec(proptest::sample::select(vec![0u8, 1, 0x7f, 0xff]), 0..40),
        ) {
            let (ka, kb) = (OrdKey::new(KeyBytes::from(&a[..])), OrdKey::new(KeyBytes::from(&b[..])));
            proptest::prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            proptest::prop_assert_eq!(ka == kb, a == b);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u8, u8),
        Clear(u8),
        ClearRange(u8, u8),
        Add(u8, u8),
        Get(u8),
        Range(u8, u8, bool),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let k = 0u8..12;
        prop_oneof![
            (k.clone(), any::<u8>()).prop_map(|(k, v)| Op::Set(k, v)),
            k.clone().prop_map(Op::Clear),
            (k.clone(), k.clone()).prop_map(|(a, b)| Op::ClearRange(a, b)),
            (k.clone(), any::<u8>()).prop_map(|(k, v)| Op::Add(k, v)),
            k.clone().prop_map(Op::Get),
            (k.clone(), k, any::<bool>()).prop_map(|(a, b, r)| Op::Range(a, b, r)),
        ]
    }

    proptest::proptest! {
        /// A transaction reads its own writes exactly as if they had been applied in order
        /// to what it read from the store: with a scan of few writes and with the index of
        /// many, point and range reads, clears of ranges and atomic adds mixed.
        #[test]
        fn reads_see_own_writes_applied_in_order(
            base in proptest::collection::btree_map(0u8..12, proptest::prelude::any::<u8>(), 0..8),
            ops in proptest::collection::vec(op(), 0..90),
        ) {
            let key = |k: u8| vec![b'k', k];
            let engine = Engine::new();
            engine.load(1, base.iter().map(|(k, v)| (Bytes::from(key(*k)), Bytes::from(vec![*v]))));
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> =
                base.iter().map(|(k, v)| (key(*k), vec![*v])).collect();
            let mut buf = TrxBuffer::new(Instant::now());
            for op in ops {
                match op {
                    Op::Set(k, v) => {
                        buf.set(&key(k), &[v]);
                        model.insert(key(k), vec![v]);
                    }
                    Op::Clear(k) => {
                        buf.clear(&key(k));
                        model.remove(&key(k));
                    }
                    Op::ClearRange(a, b) => {
                        buf.clear_range(&key(a), &key(b));
                        let doomed: Vec<_> = if a < b {
                            model.range(key(a)..key(b)).map(|(k, _)| k.clone()).collect()
                        } else {
                            Vec::new()
                        };
                        for k in doomed {
                            model.remove(&k);
                        }
                    }
                    Op::Add(k, v) => {
                        buf.atomic_op(&key(k), &[v], MutationType::Add);
                        let next = apply_atomic(MutationType::Add, model.get(&key(k)).map(|v| &v[..]), &[v]);
                        if let Some(n) = next { model.insert(key(k), n); }
                    }
                    Op::Get(k) => {
                        let kk = key(k);
                        let got = buf.get_through(&kk, || engine.get(&kk, key_hash(&kk), 1)).unwrap();
                        proptest::prop_assert_eq!(got.map(|b| b.to_vec()), model.get(&kk).cloned());
                    }
                    Op::Range(a, b, reverse) => {
                        let req = RangeRequest::new(key(a), key(b)).reverse(reverse);
                        let (rows, _) = buf.range_through(&req, &engine, 1).unwrap();
                        let got: Vec<(Vec<u8>, Vec<u8>)> =
                            rows.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
                        let mut want: Vec<(Vec<u8>, Vec<u8>)> = if key(a) < key(b) {
                            model.range(key(a)..key(b)).map(|(k, v)| (k.clone(), v.clone())).collect()
                        } else {
                            Vec::new()
                        };
                        if reverse {
                            want.reverse();
                        }
                        proptest::prop_assert_eq!(got, want);
                    }
                }
            }
        }
    }

    #[test]
    fn shards_differ_in_size_over_a_factor_of_two() {
        let mut counts = vec![0usize; SHARDS];
        for slot in 0..SHARD_SLOTS as u64 {
            counts[shard_of(slot << 40)] += 1;
        }
        let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
        assert!(min >= 1, "every shard gets a share");
        assert!((max as f64 / min as f64) >= 1.7, "shards must not all fill up together");
        assert_eq!(counts.iter().sum::<usize>(), SHARD_SLOTS);
    }

    #[test]
    fn atomic_ops_follow_foundationdb() {
        assert_eq!(apply_atomic(MutationType::Add, Some(&[255, 0]), &[1, 0]), Some(vec![0, 1]));
        assert_eq!(apply_atomic(MutationType::Add, None, &[5]), Some(vec![5]));
        assert_eq!(apply_atomic(MutationType::Max, Some(&[1, 2]), &[9, 1]), Some(vec![1, 2]));
        assert_eq!(apply_atomic(MutationType::Min, Some(&[1, 2]), &[9, 1]), Some(vec![9, 1]));
        assert_eq!(apply_atomic(MutationType::CompareAndClear, Some(b"x"), b"x"), None);
        assert_eq!(
            apply_atomic(MutationType::CompareAndClear, Some(b"y"), b"x"),
            Some(b"y".to_vec())
        );
    }

    #[test]
    fn a_hot_key_keeps_every_readable_version_and_forgets_the_rest() {
        let mut chain = Chain { latest: (1, Some(Bytes::from_static(b"1"))), older: Vec::new() };
        // Rewritten at every version while the horizon trails 1,000 versions behind.
        let mut moved = 0;
        for version in 2..=20_000u64 {
            let horizon = version.saturating_sub(1_000);
            let before = chain.older.len();
            chain.push(version, Some(Bytes::from(version.to_string())), horizon);
            if chain.older.len() <= before {
                // Trimmed: what is left was moved to the front.
                moved += chain.older.len();
            }
            if version % 997 == 0 && horizon > 0 {
                for read in [horizon, horizon + 1, version - 1, version] {
                    let want = read.to_string();
                    let got = chain.at(read).cloned().flatten();
                    assert_eq!(got.as_deref(), Some(want.as_bytes()), "read at {read}");
                }
            }
        }
        // Forgotten in steps, not one version at a time, and never more than four times
        // what is readable.
        assert!(chain.older.capacity() <= 4 * 1_001, "room for {}", chain.older.capacity());
        assert!(chain.older.len() >= 1_000);
        assert!(moved <= 2 * 20_000, "{moved} versions moved for 20,000 writes");
    }

    #[test]
    fn old_versions_and_tombstones_are_forgotten_after_the_window() {
        let e = Engine::new();
        let t0 = Instant::now();
        commit(&e, &req(None, vec![], vec![set("a", "1")]), 1, t0).unwrap();
        e.note_applied(1, t0);
        let clear = Mutation::Clear(Key::copy(b"a"));
        commit(&e, &req(None, vec![], vec![clear]), 2, t0).unwrap();
        e.note_applied(2, t0);
        assert_eq!(e.key_count(), 1);
        let later = t0 + MVCC_WINDOW + Duration::from_millis(10);
        e.note_applied(3, later);
        e.note_applied(4, later + MVCC_WINDOW + Duration::from_millis(10));
        assert!(e.horizon() >= 2);
        assert_eq!(e.key_count(), 0);
        assert!(matches!(e.get(b"a", key_hash(b"a"), 1), Err(StoreError::TooOld)));
    }

    #[test]
    fn keys_not_yet_in_the_ordered_index_are_seen_by_ranges_and_never_linger() {
        let e = Engine::new();
        let t0 = Instant::now();
        commit(&e, &req(None, vec![], vec![set("a", "1"), set("b", "1")]), 1, t0).unwrap();
        e.note_applied(1, t0);
        assert_eq!(e.map.unindexed.lock().len(), 2, "the committer only queues new keys");
        let mut seen = Vec::new();
        e.scan(b"a", b"z", false, 1, |k, _| {
            seen.push(k.to_vec());
            true
        })
        .unwrap();
        assert_eq!(seen, vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(e.map.unindexed.lock().is_empty(), "a range read settles the queue first");

        // Created and deleted while still queued: forgetting it must not leave it indexed.
        commit(&e, &req(None, vec![], vec![set("c", "1")]), 2, t0).unwrap();
        e.note_applied(2, t0);
        commit(&e, &req(None, vec![], vec![Mutation::Clear(Key::copy(b"c"))]), 3, t0).unwrap();
        e.note_applied(3, t0);
        let later = t0 + MVCC_WINDOW + Duration::from_millis(10);
        e.note_applied(4, later);
        e.note_applied(5, later + MVCC_WINDOW + Duration::from_millis(10));
        e.settle_order();
        let order: Vec<Vec<u8>> = e.map.order.read().iter().map(|k| k.key.to_vec()).collect();
        assert_eq!(order, vec![b"a".to_vec(), b"b".to_vec()]);
    }
}
