//! The in-memory engine shared by the embedded and memory backends: a multi-version
//! ordered map, the transaction buffer with read-your-writes, and conflict resolution.
//!
//! Every key keeps its recent versions for the 5-second MVCC window, so a transaction
//! reads a consistent snapshot at its read version while commits go on. A commit is
//! accepted only if no key in its read conflict set has a version newer than its read
//! version (FoundationDB's optimistic concurrency). Commits are resolved and applied by a
//! single committer at a time, in batches that share one commit version.

use std::collections::{BTreeMap, VecDeque};
use std::hash::BuildHasher as _;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::limits::{KEY_SIZE_MAX, TRANSACTION_AGE_MAX_MS, TRANSACTION_SIZE_MAX, VALUE_SIZE_MAX};
use crate::{KeyValue, MutationType, RangeRequest, StoreError};

/// How long versions stay readable.
pub(crate) const MVCC_WINDOW: Duration = Duration::from_millis(TRANSACTION_AGE_MAX_MS);

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
        self.older.push(prev);
        // Keep the newest version at or below the horizon; drop everything older. Versions
        // ascend, so a binary search finds it: a hot key (a pool's tally) can gather many
        // versions while a snapshot pins the horizon.
        let keep_from = self.older.partition_point(|(v, _)| *v <= horizon).saturating_sub(1);
        if keep_from > 0 {
            self.older.drain(..keep_from);
        }
        // A deleted value at or below the horizon is unreadable history.
        if self.older.first().is_some_and(|(v, val)| *v <= horizon && val.is_none()) {
            self.older.remove(0);
        }
    }
}

/// The keys of the engine: hash tables for point access (most operations), and an ordered
/// set of the same keys for range reads. Updating an existing key touches only the hash
/// tables; only new and forgotten keys change the order.
///
/// The hash index is split into [`SHARDS`] tables by a slice of each key's hash, so that
/// growing it rehashes one small table at a time instead of stopping every commit while
/// millions of keys move.
#[derive(Debug)]
struct Table {
    hasher: hashbrown::DefaultHashBuilder,
    chains: Box<[hashbrown::HashTable<(Bytes, Chain)>]>,
    order: std::collections::BTreeSet<Bytes>,
}

const SHARDS: usize = 256;

impl Default for Table {
    fn default() -> Self {
        Table {
            hasher: hashbrown::DefaultHashBuilder::default(),
            chains: (0..SHARDS).map(|_| hashbrown::HashTable::new()).collect(),
            order: std::collections::BTreeSet::new(),
        }
    }
}

impl Table {
    /// The key's hash and its shard. The shard comes from middle bits: the tables use the
    /// low bits for the bucket and the top seven for the control tag.
    fn slot(&self, key: &[u8]) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        (hash, (hash >> 40) as usize % SHARDS)
    }
    fn get(&self, key: &[u8]) -> Option<&Chain> {
        let (hash, shard) = self.slot(key);
        self.chains[shard].find(hash, |(k, _)| k.as_ref() == key).map(|(_, c)| c)
    }
    fn get_mut(&mut self, key: &[u8]) -> Option<&mut Chain> {
        let (hash, shard) = self.slot(key);
        self.chains[shard].find_mut(hash, |(k, _)| k.as_ref() == key).map(|(_, c)| c)
    }
    fn insert(&mut self, key: Bytes, chain: Chain) {
        let (hash, shard) = self.slot(&key);
        let hasher = &self.hasher;
        match self.chains[shard].entry(
            hash,
            |(k, _)| *k == key,
            |(k, _)| hasher.hash_one(k.as_ref() as &[u8]),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut e) => e.get_mut().1 = chain,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert((key.clone(), chain));
                self.order.insert(key);
            }
        }
    }
    fn remove(&mut self, key: &[u8]) {
        let (hash, shard) = self.slot(key);
        if let Ok(e) = self.chains[shard].find_entry(hash, |(k, _)| k.as_ref() == key) {
            e.remove();
            self.order.remove(key);
        }
    }
    fn clear(&mut self) {
        self.chains.iter_mut().for_each(hashbrown::HashTable::clear);
        self.order.clear();
    }
    #[cfg(test)]
    fn len(&self) -> usize {
        self.chains.iter().map(hashbrown::HashTable::len).sum()
    }
    fn range<'a>(
        &'a self,
        begin: &[u8],
        end: &[u8],
    ) -> impl DoubleEndedIterator<Item = (&'a Bytes, &'a Chain)> + 'a {
        let range = if begin < end {
            Some(self.order.range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end))))
        } else {
            None
        };
        range.into_iter().flatten().filter_map(move |k| self.get(k.as_ref()).map(|c| (k, c)))
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
    map: RwLock<Table>,
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
    tombstones: Mutex<VecDeque<(u64, Bytes)>>,
}

impl Engine {
    pub(crate) fn new() -> Self {
        Engine {
            map: RwLock::new(Table::default()),
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

    /// Loads a snapshot: every key at `version`.
    pub(crate) fn load(&self, version: u64, entries: impl IntoIterator<Item = (Bytes, Bytes)>) {
        let mut map = self.map.write();
        map.clear();
        for (k, v) in entries {
            map.insert(k, Chain { latest: (version, Some(v)), older: Vec::new() });
        }
        self.visible.store(version, Ordering::Release);
        self.horizon.store(version, Ordering::Release);
    }

    /// Keeps `version` readable until [`Engine::unpin`], however long that takes.
    pub(crate) fn pin(&self, version: u64) {
        self.pinned.store(version, Ordering::Release);
    }

    pub(crate) fn unpin(&self) {
        self.pinned.store(u64::MAX, Ordering::Release);
    }

    /// How many parts [`Engine::dump_part`] splits the keys into.
    pub(crate) const DUMP_PARTS: usize = SHARDS;

    /// Appends the live keys of one part of the index (`part < DUMP_PARTS`) with their
    /// values at `version`, in no particular order. Walks one hash table in memory order
    /// under the read lock, so commits wait for one part at most (a few thousand keys).
    pub(crate) fn dump_part(
        &self,
        part: usize,
        version: u64,
        out: &mut Vec<(Bytes, Bytes)>,
    ) -> Result<(), StoreError> {
        if version < self.horizon() {
            return Err(StoreError::TooOld);
        }
        let map = self.map.read();
        for (k, c) in map.chains[part].iter() {
            if let Some(Some(v)) = c.at(version) {
                out.push((k.clone(), v.clone()));
            }
        }
        Ok(())
    }

    pub(crate) fn get(&self, key: &[u8], version: u64) -> Result<Option<Bytes>, StoreError> {
        if version < self.horizon() {
            return Err(StoreError::TooOld);
        }
        let map = self.map.read();
        Ok(map.get(key).and_then(|c| c.at(version)).cloned().flatten())
    }

    /// Reads up to `limit` live keys of `[begin, end)` at `version`, calling `f` for each
    /// in order until it returns false.
    pub(crate) fn scan(
        &self,
        begin: &[u8],
        end: &[u8],
        reverse: bool,
        version: u64,
        mut f: impl FnMut(&Bytes, &Bytes) -> bool,
    ) -> Result<(), StoreError> {
        if version < self.horizon() {
            return Err(StoreError::TooOld);
        }
        if begin >= end {
            return Ok(());
        }
        let map = self.map.read();
        let range = map.range(begin, end);
        let mut visit = |(k, c): (&Bytes, &Chain)| match c.at(version) {
            Some(Some(v)) => f(k, v),
            _ => true,
        };
        if reverse {
            for kc in range.rev() {
                if !visit(kc) {
                    break;
                }
            }
        } else {
            for kc in range {
                if !visit(kc) {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Whether anything in `ranges` changed after `read_version`.
    fn conflicts(map: &Table, read_version: u64, ranges: &[(Vec<u8>, Vec<u8>)]) -> bool {
        for (begin, end) in ranges {
            // Point ranges are the common case: `key .. key\0`.
            if end.len() == begin.len() + 1 && end.starts_with(begin) && end.last() == Some(&0) {
                if map.get(begin.as_slice()).is_some_and(|c| c.latest.0 > read_version) {
                    return true;
                }
                continue;
            }
            if begin >= end {
                continue;
            }
            let mut range = map.range(begin, end);
            if range.any(|(_, c)| c.latest.0 > read_version) {
                return true;
            }
        }
        false
    }

    /// Resolves and applies one transaction at `version` / `batch_index`. Returns the
    /// resolved writes (for the log), or why the transaction cannot commit.
    pub(crate) fn resolve_and_apply(
        &self,
        req: &CommitRequest,
        version: u64,
        batch_index: u16,
        now: Instant,
    ) -> Result<Vec<Resolved>, StoreError> {
        let mut map = self.map.write();
        let mut tombstones = Vec::new();
        let out = self.resolve_locked(&mut map, req, version, batch_index, now, &mut tombstones);
        drop(map);
        self.remember_tombstones(version, tombstones);
        out
    }

    /// Resolves and applies a whole batch under one write lock (readers wait once per
    /// batch instead of once per transaction). Outcomes are in batch order.
    pub(crate) fn resolve_batch<'a>(
        &self,
        reqs: impl Iterator<Item = &'a CommitRequest>,
        version: u64,
        now: Instant,
    ) -> Vec<Result<Vec<Resolved>, StoreError>> {
        let mut map = self.map.write();
        let mut tombstones = Vec::new();
        let out = reqs
            .enumerate()
            .map(|(i, r)| self.resolve_locked(&mut map, r, version, i as u16, now, &mut tombstones))
            .collect();
        drop(map);
        self.remember_tombstones(version, tombstones);
        out
    }

    fn remember_tombstones(&self, version: u64, tombstones: Vec<Bytes>) {
        if !tombstones.is_empty() {
            let mut t = self.tombstones.lock();
            t.extend(tombstones.into_iter().map(|k| (version, k)));
        }
    }

    fn resolve_locked(
        &self,
        map: &mut Table,
        req: &CommitRequest,
        version: u64,
        batch_index: u16,
        now: Instant,
        tombstones: &mut Vec<Bytes>,
    ) -> Result<Vec<Resolved>, StoreError> {
        let horizon = self.horizon();
        if now.duration_since(req.created) > MVCC_WINDOW {
            return Err(StoreError::TooOld);
        }
        if let Some(rv) = req.read_version {
            if rv < horizon {
                return Err(StoreError::TooOld);
            }
            if Self::conflicts(map, rv, &req.conflicts) {
                return Err(StoreError::Conflict);
            }
        }
        let stamp = versionstamp(version, batch_index);
        let mut out = Vec::with_capacity(req.mutations.len());
        for m in &req.mutations {
            match m {
                Mutation::Set(k, v) => {
                    put(map, k.clone(), Some(v.clone()), version, horizon);
                    out.push(Resolved::Set(k.clone(), v.clone()));
                }
                Mutation::Clear(k) => {
                    if map.get(k.as_ref()).is_some_and(|c| c.latest.1.is_some()) {
                        put(map, k.clone(), None, version, horizon);
                        tombstones.push(k.clone());
                        out.push(Resolved::Clear(k.clone()));
                    }
                }
                Mutation::ClearRange(b, e) => {
                    let keys: Vec<Bytes> = map
                        .range(b, e)
                        .filter(|(_, c)| c.latest.1.is_some())
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in keys {
                        put(map, k.clone(), None, version, horizon);
                        tombstones.push(k.clone());
                        out.push(Resolved::Clear(k));
                    }
                }
                Mutation::Atomic(k, param, op) => {
                    let current = map.get(k.as_ref()).and_then(|c| c.latest.1.clone());
                    match op {
                        MutationType::SetVersionstampedKey => {
                            let key = fill_versionstamp(k, &stamp)?;
                            let key = Bytes::from(key);
                            put(map, key.clone(), Some(param.clone()), version, horizon);
                            out.push(Resolved::Set(key, param.clone()));
                        }
                        MutationType::SetVersionstampedValue => {
                            let value = Bytes::from(fill_versionstamp(param, &stamp)?);
                            put(map, k.clone(), Some(value.clone()), version, horizon);
                            out.push(Resolved::Set(k.clone(), value));
                        }
                        _ => match apply_atomic(*op, current.as_deref(), param) {
                            Some(v) => {
                                let v = Bytes::from(v);
                                put(map, k.clone(), Some(v.clone()), version, horizon);
                                out.push(Resolved::Set(k.clone(), v));
                            }
                            None => {
                                if current.is_some() {
                                    put(map, k.clone(), None, version, horizon);
                                    tombstones.push(k.clone());
                                    out.push(Resolved::Clear(k.clone()));
                                }
                            }
                        },
                    }
                }
            }
        }
        Ok(out)
    }

    /// Applies writes already resolved by another process (log replay).
    pub(crate) fn apply_resolved(&self, version: u64, writes: &[Resolved]) {
        let horizon = self.horizon();
        let mut map = self.map.write();
        let mut tombstones = Vec::new();
        for w in writes {
            match w {
                Resolved::Set(k, v) => put(&mut map, k.clone(), Some(v.clone()), version, horizon),
                Resolved::Clear(k) => {
                    put(&mut map, k.clone(), None, version, horizon);
                    tombstones.push(k.clone());
                }
            }
        }
        drop(map);
        if !tombstones.is_empty() {
            self.tombstones.lock().extend(tombstones.into_iter().map(|k| (version, k)));
        }
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
        if t.front().is_none_or(|(v, _)| *v > horizon) {
            return;
        }
        let mut map = self.map.write();
        while let Some((v, _)) = t.front() {
            if *v > horizon {
                break;
            }
            let Some((_, k)) = t.pop_front() else { break };
            let remove =
                map.get(k.as_ref()).is_some_and(|c| c.latest.1.is_none() && c.latest.0 <= horizon);
            if remove {
                map.remove(k.as_ref());
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn key_count(&self) -> usize {
        self.map.read().len()
    }
}

fn put(map: &mut Table, key: Bytes, value: Option<Bytes>, version: u64, horizon: u64) {
    match map.get_mut(key.as_ref()) {
        Some(chain) => chain.push(version, value, horizon),
        None => {
            if value.is_some() {
                map.insert(key, Chain { latest: (version, value), older: Vec::new() });
            }
        }
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

/// A buffered write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mutation {
    Set(Bytes, Bytes),
    Clear(Bytes),
    ClearRange(Vec<u8>, Vec<u8>),
    Atomic(Bytes, Bytes, MutationType),
}

/// What a transaction submits to the committer.
#[derive(Debug)]
#[allow(unreachable_pub, reason = "sealed: reachable only through the Host trait")]
pub struct CommitRequest {
    pub(crate) read_version: Option<u64>,
    pub(crate) conflicts: Vec<(Vec<u8>, Vec<u8>)>,
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

/// The client side of a transaction: read version, read-your-writes buffer, conflict set.
#[derive(Debug)]
pub(crate) struct TrxBuffer {
    pub(crate) created: Instant,
    pub(crate) read_version: Option<u64>,
    pending: BTreeMap<Vec<u8>, Pending>,
    cleared: Vec<(Vec<u8>, Vec<u8>)>,
    mutations: Vec<Mutation>,
    conflicts: Vec<(Vec<u8>, Vec<u8>)>,
    size: usize,
    error: Option<StoreError>,
    pub(crate) committed: bool,
}

impl TrxBuffer {
    pub(crate) fn new(now: Instant) -> Self {
        TrxBuffer {
            created: now,
            read_version: None,
            pending: BTreeMap::new(),
            cleared: Vec::new(),
            mutations: Vec::new(),
            conflicts: Vec::new(),
            size: 0,
            error: None,
            committed: false,
        }
    }

    pub(crate) fn check_usable(&self, now: Instant) -> Result<(), StoreError> {
        if self.committed {
            return Err(StoreError::UsedAfterCommit);
        }
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

    pub(crate) fn set(&mut self, key: &[u8], value: &[u8]) {
        if !self.check_key(key) {
            return;
        }
        if value.len() > VALUE_SIZE_MAX {
            self.note_error(StoreError::ValueTooLarge(value.len()));
            return;
        }
        let (k, v) = (Bytes::copy_from_slice(key), Bytes::copy_from_slice(value));
        self.size += key.len() + value.len();
        self.pending.insert(key.to_vec(), Pending::Set(v.clone()));
        self.mutations.push(Mutation::Set(k, v));
    }

    pub(crate) fn clear(&mut self, key: &[u8]) {
        if !self.check_key(key) {
            return;
        }
        self.size += key.len();
        self.pending.insert(key.to_vec(), Pending::Clear);
        self.mutations.push(Mutation::Clear(Bytes::copy_from_slice(key)));
    }

    pub(crate) fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        if !self.check_key(begin) || !self.check_key(end) || begin >= end {
            return;
        }
        self.size += begin.len() + end.len();
        let inside: Vec<Vec<u8>> = self
            .pending
            .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
            .map(|(k, _)| k.clone())
            .collect();
        for k in inside {
            self.pending.remove(&k);
        }
        self.cleared.push((begin.to_vec(), end.to_vec()));
        self.mutations.push(Mutation::ClearRange(begin.to_vec(), end.to_vec()));
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
                self.pending.insert(key.to_vec(), Pending::Unreadable);
            }
            _ => {
                if !self.check_key(key) {
                    return;
                }
                if param.len() > VALUE_SIZE_MAX {
                    self.note_error(StoreError::ValueTooLarge(param.len()));
                    return;
                }
                let p = Bytes::copy_from_slice(param);
                let cleared = self.in_cleared(key);
                let entry = self.pending.entry(key.to_vec());
                use std::collections::btree_map::Entry;
                match entry {
                    Entry::Occupied(mut o) => {
                        let next = match o.get() {
                            Pending::Set(v) => apply_atomic(op, Some(v), param)
                                .map_or(Pending::Clear, |v| Pending::Set(Bytes::from(v))),
                            Pending::Clear => apply_atomic(op, None, param)
                                .map_or(Pending::Clear, |v| Pending::Set(Bytes::from(v))),
                            Pending::Atomic(ops) => {
                                let mut ops = ops.clone();
                                ops.push((op, p.clone()));
                                Pending::Atomic(ops)
                            }
                            Pending::Unreadable => Pending::Unreadable,
                        };
                        o.insert(next);
                    }
                    Entry::Vacant(v) => {
                        if cleared {
                            v.insert(
                                apply_atomic(op, None, param)
                                    .map_or(Pending::Clear, |v| Pending::Set(Bytes::from(v))),
                            );
                        } else {
                            v.insert(Pending::Atomic(vec![(op, p.clone())]));
                        }
                    }
                }
            }
        }
        self.size += key.len() + param.len();
        self.mutations.push(Mutation::Atomic(
            Bytes::copy_from_slice(key),
            Bytes::copy_from_slice(param),
            op,
        ));
    }

    pub(crate) fn add_conflict(&mut self, begin: &[u8], end: &[u8]) {
        if begin < end {
            self.size += begin.len() + end.len();
            self.conflicts.push((begin.to_vec(), end.to_vec()));
        }
    }

    /// Reads one key through the buffer; `base` reads the store at the read version.
    pub(crate) fn get_through(
        &self,
        key: &[u8],
        base: impl FnOnce() -> Result<Option<Bytes>, StoreError>,
    ) -> Result<Option<Bytes>, StoreError> {
        match self.pending.get(key) {
            Some(Pending::Set(v)) => Ok(Some(v.clone())),
            Some(Pending::Clear) => Ok(None),
            Some(Pending::Unreadable) => {
                Err(StoreError::InvalidMutation("read of a key written with a versionstamp"))
            }
            Some(Pending::Atomic(ops)) => {
                let mut v = if self.in_cleared(key) { None } else { base()? };
                for (op, p) in ops {
                    v = apply_atomic(*op, v.as_deref(), p).map(Bytes::from);
                }
                Ok(v)
            }
            None if self.in_cleared(key) => Ok(None),
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
        let overlay: Vec<(&Vec<u8>, &Pending)> = {
            let r = self.pending.range::<[u8], _>((
                Bound::Included(req.begin.as_slice()),
                Bound::Excluded(req.end.as_slice()),
            ));
            if req.reverse { r.rev().collect() } else { r.collect() }
        };
        let mut out: Vec<KeyValue> = Vec::new();
        let mut oi = 0;
        let before = |a: &[u8], b: &[u8]| if req.reverse { a > b } else { a < b };
        let mut error = None;
        let emit_overlay = |out: &mut Vec<KeyValue>,
                            k: &Vec<u8>,
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
            if oi < overlay.len() && overlay[oi].0.as_slice() == k.as_ref() {
                let (ok, p) = overlay[oi];
                if let Err(e) = emit_overlay(&mut out, ok, p, Some(v)) {
                    error = Some(e);
                    return false;
                }
                oi += 1;
            } else if !self.in_cleared(k) {
                out.push((k.clone(), v.clone()));
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
        CommitRequest { read_version: rv, conflicts, mutations, created: Instant::now() }
    }
    fn set(k: &str, v: &str) -> Mutation {
        Mutation::Set(Bytes::copy_from_slice(k.as_bytes()), Bytes::copy_from_slice(v.as_bytes()))
    }

    #[test]
    fn readers_see_their_snapshot_while_writers_commit() {
        let e = Engine::new();
        e.resolve_and_apply(&req(None, vec![], vec![set("a", "1")]), 1, 0, Instant::now()).unwrap();
        e.note_applied(1, Instant::now());
        e.resolve_and_apply(&req(None, vec![], vec![set("a", "2")]), 2, 0, Instant::now()).unwrap();
        e.note_applied(2, Instant::now());
        assert_eq!(e.get(b"a", 1).unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(e.get(b"a", 2).unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(e.get(b"a", 0).unwrap(), None);
    }

    #[test]
    fn conflicting_commit_is_refused_and_changes_nothing() {
        let e = Engine::new();
        e.resolve_and_apply(&req(None, vec![], vec![set("a", "1")]), 1, 0, Instant::now()).unwrap();
        let point = (b"a".to_vec(), b"a\0".to_vec());
        let r = req(Some(0), vec![point], vec![set("b", "x")]);
        assert!(matches!(e.resolve_and_apply(&r, 2, 0, Instant::now()), Err(StoreError::Conflict)));
        assert_eq!(e.get(b"b", 2).unwrap(), None);
        // A range conflict catches a key created inside the range.
        let r = req(Some(0), vec![(b"0".to_vec(), b"z".to_vec())], vec![set("c", "x")]);
        assert!(matches!(e.resolve_and_apply(&r, 2, 0, Instant::now()), Err(StoreError::Conflict)));
        let r = req(Some(1), vec![(b"0".to_vec(), b"z".to_vec())], vec![set("c", "x")]);
        assert!(e.resolve_and_apply(&r, 2, 0, Instant::now()).is_ok());
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
    fn old_versions_and_tombstones_are_forgotten_after_the_window() {
        let e = Engine::new();
        let t0 = Instant::now();
        e.resolve_and_apply(&req(None, vec![], vec![set("a", "1")]), 1, 0, t0).unwrap();
        e.note_applied(1, t0);
        let clear = Mutation::Clear(Bytes::from_static(b"a"));
        e.resolve_and_apply(&req(None, vec![], vec![clear]), 2, 0, t0).unwrap();
        e.note_applied(2, t0);
        assert_eq!(e.key_count(), 1);
        let later = t0 + MVCC_WINDOW + Duration::from_millis(10);
        e.note_applied(3, later);
        e.note_applied(4, later + MVCC_WINDOW + Duration::from_millis(10));
        assert!(e.horizon() >= 2);
        assert_eq!(e.key_count(), 0);
        assert!(matches!(e.get(b"a", 1), Err(StoreError::TooOld)));
    }
}
