//! [`EmbeddedStore`]: the durable default backend.
//!
//! One directory holds a write-ahead log (`wal-<segment>.log`), the snapshot the current
//! segment starts from (`snap-<segment>.bin`), a `HEAD` file naming the committed end of
//! the log, and a `LOCK` file. Every process that opens the directory keeps the whole
//! key space in memory as a multi-version map and follows the log:
//!
//! - **Reads** happen in memory at a read version. Taking a read version reads `HEAD`
//!   (through a shared read-only mapping: a few loads, no system call); if another process
//!   committed since, this process first applies the new log records. So every
//!   transaction sees every commit acknowledged before it began: strict serializability
//!   across processes.
//! - **Commits** queue up. The task that queues the first commit of a batch lets the other
//!   ready tasks queue theirs, then commits the batch on its own thread (group commit):
//!   it takes the `LOCK` (`flock`, released by the kernel if the process dies), catches
//!   up with the log, resolves conflicts, applies the writes in memory (at a version no
//!   reader sees yet) and appends one record. The syncer thread then `fdatasync`s every
//!   record appended meanwhile, moves `HEAD` past them and makes them visible; only then
//!   does the acknowledger thread tell their tasks (and bring the ordered index up to
//!   date, which the committer leaves to it); the next batch is resolved while the last
//!   one is synced. An acknowledged commit is on disk; a process killed at any point
//!   loses only unacknowledged work.
//! - **Preallocation**: the committer extends the segment with zeros a few megabytes at
//!   a time ([`EmbeddedOptions::log_extend_bytes`]), so records are written over blocks
//!   the file already has: their `fdatasync` changes no metadata and, on a journaling
//!   file system, commits no journal. The log ends at the first all-zero header.
//! - **Recovery**: a writer adopts complete, checksummed records past what it applied
//!   (another writer's, waiting for its sync, or a dead writer's, whose outcome its client
//!   never learned) and zeroes a torn tail; at open it checks the whole rest of the file,
//!   as a power loss may keep any subset of an unsynced write's sectors.
//! - **Rotation**: when a segment grows past `segment_bytes_max`, the writer cuts it to
//!   its last record, syncs it, starts the next segment and has a background thread
//!   write the snapshot it starts from: a pinned version, read from memory in key order
//!   a few hundred keys at a time, copied without cloning a handle, in one-millisecond
//!   bursts each followed by three of rest, while commits go on. Once the snapshot is on
//!   disk, files older than the previous snapshot and segment are deleted. Recovery uses the newest usable
//!   snapshot and replays every segment after it; followers that still read an old
//!   segment keep its file open.
//! - **Files** go through [`crate::fs`]: the operating system's by default (the same
//!   system calls as `std::fs::File`, `HEAD` mapped into memory), or a
//!   [`FileSystem`](crate::fs::FileSystem) given to [`EmbeddedStore::open_on`]. The
//!   power-loss tests (`tests/it/power_loss`) run two writers on one that drops every
//!   write not yet synced at a random call, reopen, and check that every acknowledged
//!   commit survived and that the state is a prefix of the commit order.
//! - **History**: [`log_history`] lists every write under a key range that the log on
//!   disk still holds (audits compare a published stream with the outbox entries written,
//!   which the relay deletes once published).
//! - **Memory**: opening the store turns transparent huge pages off for the process
//!   unless [`EmbeddedOptions::transparent_huge_pages`] keeps them: the state grows by
//!   kilobytes per commit, and a 2 MiB fault zeroed in the middle of a batch is a
//!   commit's p99.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::fs::{Appender, FileSystem, Fs, StoreFile};
use crate::headmap::HeadMap;
use crate::local::{Host, LocalTrx};
use crate::mvcc::{BatchScratch, CommitRequest, Engine, versionstamp};
use crate::wal::{self, HEAD_LEN, Head};
use crate::{CommitInfo, Store, StoreError};

/// Tuning for [`EmbeddedStore`].
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Most transactions resolved and synced together.
    pub batch_txns_max: usize,
    /// Start a new log segment (and snapshot) after this many bytes.
    pub segment_bytes_max: u64,
    /// `fdatasync` before acknowledging. Only benchmarks that want to see the cost of
    /// durability turn this off.
    pub sync: bool,
    /// Let the process keep transparent huge pages. Off by default: opening the store
    /// turns them off for the whole process (`PR_SET_THP_DISABLE`). The state grows by
    /// kilobytes per commit, and a huge-page fault zeroes 2 MiB at once on the thread
    /// that touched it: on a virtual machine that reports free memory back to its host,
    /// the host faults the page in again meanwhile, which stalled commit batches for
    /// 5-7 ms and became the p99 of every commit (see BENCHMARKS.md).
    pub transparent_huge_pages: bool,
    /// The log is extended with zeros this many bytes at a time (capped at
    /// `segment_bytes_max`), ahead of the records. A record written over blocks already
    /// allocated changes no file metadata, so its `fdatasync` is one data write and a
    /// cache flush; appending past the end also commits the file system's journal each
    /// time (on ext4 with a journal that halved the syncs per second, see BENCHMARKS.md).
    pub log_extend_bytes: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            batch_txns_max: 8192,
            segment_bytes_max: 256 << 20,
            sync: true,
            transparent_huge_pages: false,
            log_extend_bytes: 4 << 20,
        }
    }
}

/// A durable store in a directory, shareable by several processes.
#[derive(Clone, Debug)]
pub struct EmbeddedStore {
    host: Arc<EmbeddedHost>,
}

/// Statistics of one process's view of the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbeddedStats {
    pub version: u64,
    pub segment: u64,
    pub committed_len: u64,
}

struct Replica {
    segment: u64,
    /// Where this process applied the log up to: at least `HEAD`, and past it while
    /// batches appended here (or by another writer, and adopted) wait for their sync.
    applied_len: u64,
    /// The version of the last record applied (of the snapshot if none).
    version: u64,
    log: Arc<StoreFile>,
    /// The log file's length when this process last looked: zeros past `applied_len`.
    alloc_len: u64,
}

/// A batch appended to the log, for the syncer to make durable and acknowledge.
struct SyncJob {
    segment: u64,
    /// The log's end after this batch.
    end: u64,
    version: u64,
    log: Arc<StoreFile>,
    replies: Vec<(tokio::sync::oneshot::Sender<Result<CommitInfo, StoreError>>, CommitInfo)>,
    started: Instant,
}

struct Waiting {
    req: CommitRequest,
    reply: tokio::sync::oneshot::Sender<Result<CommitInfo, StoreError>>,
}

pub struct EmbeddedHost {
    dir: PathBuf,
    fs: Fs,
    opts: EmbeddedOptions,
    engine: Engine,
    head: StoreFile,
    /// `head`, mapped: taking a read version reads it without a system call.
    head_map: Option<HeadMap>,
    lock: StoreFile,
    replica: Mutex<Replica>,
    /// Held with the `LOCK`: `flock` excludes other processes, this mutex the other thread
    /// of this one (a lock taken through one file description is shared by its threads).
    writer: Mutex<()>,
    /// `Replica::version`, readable without the replica's lock.
    applied: AtomicU64,
    /// Commits waiting for the next batch.
    pending: Mutex<Vec<Waiting>>,
    /// Held by the thread committing a batch (see [`EmbeddedHost::lead`]).
    leader: Mutex<Leader>,
    /// A snapshot of this process is being written in the background.
    snapshotting: AtomicBool,
    /// Size of the last snapshot this process wrote: a segment may grow to twice that
    /// before the next, so writing snapshots costs at most half as much as the log.
    last_snapshot_bytes: AtomicU64,
}

impl std::fmt::Debug for EmbeddedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedHost").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Io(e)
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("wal-{segment:016x}.log"))
}

fn snapshot_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("snap-{segment:016x}.bin"))
}

fn sync_dir(fs: &Fs, dir: &Path) -> Result<(), StoreError> {
    fs.sync_dir(dir).map_err(io)
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir, EmbeddedOptions::default())
    }

    /// Opens (or creates) the store in `dir`.
    pub fn open_with(dir: impl AsRef<Path>, opts: EmbeddedOptions) -> Result<Self, StoreError> {
        Self::open_in(Fs::Os, dir.as_ref(), opts)
    }

    /// Opens (or creates) the store in `dir` of the file system `fs` instead of the
    /// operating system's (see [`crate::fs`]).
    pub fn open_on(
        fs: Arc<dyn FileSystem>,
        dir: impl AsRef<Path>,
        opts: EmbeddedOptions,
    ) -> Result<Self, StoreError> {
        Self::open_in(Fs::Custom(fs), dir.as_ref(), opts)
    }

    fn open_in(fs: Fs, dir: &Path, opts: EmbeddedOptions) -> Result<Self, StoreError> {
        let dir = dir.to_path_buf();
        fs.create_dir_all(&dir).map_err(io)?;
        let lock = fs.open(&dir.join("LOCK"), true, false).map_err(io)?;
        lock.lock().map_err(io)?;
        let result = Self::open_locked(fs, &dir, opts, lock);
        match result {
            Ok(store) => {
                store.host.lock.unlock().map_err(io)?;
                Ok(store)
            }
            Err(e) => Err(e),
        }
    }

    fn open_locked(
        fs: Fs,
        dir: &Path,
        opts: EmbeddedOptions,
        lock: StoreFile,
    ) -> Result<Self, StoreError> {
        let head_path = dir.join("HEAD");
        let fresh = !fs.exists(&head_path).map_err(io)?;
        let head_file = fs.open(&head_path, true, false).map_err(io)?;
        if fresh {
            fs.open(&segment_path(dir, 1), true, true).map_err(io)?.sync_all().map_err(io)?;
            let head = Head { segment: 1, committed_len: 0, version: 0, prev_segment_len: 0 };
            head_file.write_all_at(&head.encode(), 0).map_err(io)?;
            head_file.sync_all().map_err(io)?;
            sync_dir(&fs, dir)?;
        }
        let mut head_buf = [0u8; HEAD_LEN];
        head_file.read_exact_at(&mut head_buf, 0).map_err(io)?;
        let head = Head::decode(&head_buf)
            .ok_or_else(|| StoreError::Corrupt(format!("{} is unreadable", head_path.display())))?;
        if !opts.transparent_huge_pages {
            disable_transparent_huge_pages();
        }
        let engine = Engine::new();
        let rep = load_state(&fs, dir, &engine, &head)?;
        let (sync_tx, sync_rx) = std::sync::mpsc::channel();
        let host = Arc::new(EmbeddedHost {
            dir: dir.to_path_buf(),
            fs,
            opts,
            engine,
            head_map: match head_file.as_os().map(HeadMap::new) {
                Some(Ok(m)) => Some(m),
                Some(Err(e)) => {
                    tracing::info!("store.open: HEAD is read with pread ({e})");
                    None
                }
                None => None,
            },
            head: head_file,
            lock,
            replica: Mutex::new(rep),
            writer: Mutex::new(()),
            applied: AtomicU64::new(0),
            pending: Mutex::new(Vec::new()),
            leader: Mutex::new(Leader {
                buffers: CommitBuffers { record: Vec::new(), scratch: BatchScratch::new() },
                syncer: sync_tx,
            }),
            snapshotting: AtomicBool::new(false),
            last_snapshot_bytes: AtomicU64::new(0),
        });
        {
            let mut rep = host.replica.lock();
            host.engine.set_visible(head.version);
            let mut head = head;
            host.recover_tail(&mut rep, &mut head)?;
            host.applied.store(rep.version, Ordering::Release);
        }
        let weak = Arc::downgrade(&host);
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("tessera-acker".into())
            .spawn({
                let weak = weak.clone();
                move || acknowledger(weak, ack_rx)
            })
            .map_err(io)?;
        std::thread::Builder::new()
            .name("tessera-syncer".into())
            .spawn(move || syncer(weak, sync_rx, ack_tx))
            .map_err(io)?;
        tracing::info!(dir = %dir.display(), version = head.version, segment = head.segment, "store.open");
        Ok(EmbeddedStore { host })
    }

    /// This process's view: the newest version it applied and where the log ends.
    pub fn stats(&self) -> Result<EmbeddedStats, StoreError> {
        let head = self.host.read_head()?;
        Ok(EmbeddedStats {
            version: head.version,
            segment: head.segment,
            committed_len: head.committed_len,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.host.dir
    }
}

/// One write found in the log by [`log_history`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedWrite {
    /// The commit's version.
    pub version: u64,
    pub key: Bytes,
    /// `None` for a clear.
    pub value: Option<Bytes>,
}

/// What [`log_history`] found.
#[derive(Debug, Clone, Default)]
pub struct LogHistory {
    /// The log on disk holds every commit after this version (0: every commit since the
    /// store was created). Older segments are deleted after a snapshot.
    pub since_version: u64,
    pub writes: Vec<LoggedWrite>,
}

/// Every write to a key in `[begin, end)` that the store in `dir` has in its log on disk,
/// in commit order; for audits (what was written, e.g. to an outbox whose entries are
/// deleted once published) and tools. Reads the files only: it takes no lock and may run
/// beside the processes using the store. Complete records past `HEAD` (appended, not yet
/// synced) are included.
pub fn log_history(
    dir: impl AsRef<Path>,
    begin: &[u8],
    end: &[u8],
) -> Result<LogHistory, StoreError> {
    let dir = dir.as_ref();
    let mut segments: Vec<u64> = std::fs::read_dir(dir)
        .map_err(io)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let hex = name.strip_prefix("wal-")?.strip_suffix(".log")?.to_owned();
            u64::from_str_radix(&hex, 16).ok()
        })
        .collect();
    segments.sort_unstable();
    let mut out = LogHistory::default();
    let mut last_version = None::<u64>;
    for (i, segment) in segments.iter().enumerate() {
        let data = match std::fs::read(segment_path(dir, *segment)) {
            Ok(d) => Bytes::from(d),
            // Deleted by a writer that just finished a snapshot: its records are older
            // than what the next segment starts from.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(e)),
        };
        let mut at = 0;
        while let Some(rec) = wal::decode_record(&data.slice(at..)) {
            if i == 0 && last_version.is_none() {
                out.since_version = if *segment == 1 { 0 } else { rec.version - 1 };
            }
            if let Some(v) = last_version
                && rec.version != v + 1
            {
                return Err(StoreError::Corrupt(format!(
                    "log segment {segment} jumps from version {v} to {}",
                    rec.version
                )));
            }
            last_version = Some(rec.version);
            for w in rec.writes {
                let (key, value) = match w {
                    crate::mvcc::Resolved::Set(k, v) => (k, Some(v)),
                    crate::mvcc::Resolved::Clear(k) => (k, None),
                };
                if key.as_ref() >= begin && key.as_ref() < end {
                    out.writes.push(LoggedWrite { version: rec.version, key, value });
                }
            }
            at += rec.len;
        }
    }
    Ok(out)
}

impl EmbeddedHost {
    fn read_head(&self) -> Result<Head, StoreError> {
        let mut buf = [0u8; HEAD_LEN];
        for _ in 0..100 {
            match &self.head_map {
                Some(m) => m.read(&mut buf),
                None => self.head.read_exact_at(&mut buf, 0).map_err(io)?,
            }
            if let Some(h) = Head::decode(&buf) {
                return Ok(h);
            }
            // Torn read while a writer updates HEAD: read again.
            std::thread::yield_now();
        }
        Err(StoreError::Corrupt("HEAD stays unreadable".into()))
    }

    fn write_head(&self, head: &Head, durable: bool) -> Result<(), StoreError> {
        self.head.write_all_at(&head.encode(), 0).map_err(io)?;
        if durable {
            self.head.sync_data().map_err(io)?;
        }
        Ok(())
    }

    /// Brings this process up to `head`.
    fn catch_up(&self, rep: &mut Replica, head: &Head) -> Result<(), StoreError> {
        if head.segment == rep.segment {
            apply_log(&self.engine, rep, head.committed_len)?;
        } else if head.segment == rep.segment + 1 {
            apply_log(&self.engine, rep, head.prev_segment_len)?;
            match self.fs.open(&segment_path(&self.dir, head.segment), false, false) {
                Ok(log) => {
                    *rep = Replica {
                        segment: head.segment,
                        applied_len: 0,
                        version: rep.version,
                        log: Arc::new(log),
                        alloc_len: 0,
                    };
                    apply_log(&self.engine, rep, head.committed_len)?;
                }
                Err(_) => self.reload(rep, head)?,
            }
        } else {
            self.reload(rep, head)?;
        }
        self.applied.fetch_max(rep.version, Ordering::AcqRel);
        self.engine.set_visible(head.version);
        Ok(())
    }

    /// Starts over from the newest snapshot (this process fell more than a segment
    /// behind). Transactions in flight here get `TooOld` and retry.
    fn reload(&self, rep: &mut Replica, head: &Head) -> Result<(), StoreError> {
        *rep = load_state(&self.fs, &self.dir, &self.engine, head)?;
        Ok(())
    }

    /// Under the lock: applies the complete records past what this process applied (those
    /// of another writer still waiting for its sync, or left by one that died), up to the
    /// first all-zero header, and zeroes a torn record. `thorough` (at open, after a
    /// possible power loss, when sectors of an unsynced write may have landed in any
    /// order) checks the whole rest of the file for stray bytes, not only the next
    /// header. Returns how many records it adopted and whether it zeroed anything.
    fn adopt_tail(&self, rep: &mut Replica, thorough: bool) -> Result<(usize, bool), StoreError> {
        let file_len = rep.log.size().map_err(io)?;
        rep.alloc_len = file_len;
        let mut adopted = 0;
        let mut torn = false;
        let now = Instant::now();
        let mut header = [0u8; wal::RECORD_HEADER_LEN];
        while rep.applied_len < file_len {
            if file_len - rep.applied_len < header.len() as u64 {
                torn = !all_zero(&rep.log, rep.applied_len, file_len)?;
                break;
            }
            rep.log.read_exact_at(&mut header, rep.applied_len).map_err(io)?;
            let len = match wal::record_len(&header) {
                None => break,
                Some(Some(len)) if len as u64 <= file_len - rep.applied_len => len,
                Some(_) => {
                    torn = true;
                    break;
                }
            };
            let mut buf = vec![0u8; len];
            rep.log.read_exact_at(&mut buf, rep.applied_len).map_err(io)?;
            match wal::decode_record(&Bytes::from(buf)) {
                Some(rec) if rec.version == rep.version + 1 => {
                    self.engine.apply_resolved(rec.version, &rec.writes);
                    self.engine.note_applied(rec.version, now);
                    rep.version = rec.version;
                    rep.applied_len += rec.len as u64;
                    adopted += 1;
                }
                _ => {
                    torn = true;
                    break;
                }
            }
        }
        self.applied.fetch_max(rep.version, Ordering::AcqRel);
        if thorough && !torn {
            torn = !all_zero(&rep.log, rep.applied_len, file_len)?;
        }
        if torn {
            // A writer died while appending (or the power went before its sync): what
            // follows its last whole record was never acknowledged. Zeroed, so that no
            // part of it is read as a record after the next one is written over it.
            write_zeros(&rep.log, rep.applied_len, file_len)?;
            tracing::warn!(
                adopted,
                zeroed_bytes = file_len - rep.applied_len,
                version = rep.version,
                "store.recover: an earlier writer stopped mid-commit"
            );
        }
        Ok((adopted, torn))
    }

    /// At open, under the lock: adopts what writers left past `HEAD`, syncs it and makes
    /// `HEAD` say so.
    fn recover_tail(&self, rep: &mut Replica, head: &mut Head) -> Result<(), StoreError> {
        let (adopted, zeroed) = self.adopt_tail(rep, true)?;
        if adopted == 0 && !zeroed {
            return Ok(());
        }
        rep.log.sync_data().map_err(io)?;
        head.committed_len = rep.applied_len;
        head.version = rep.version;
        self.write_head(head, true)?;
        self.engine.set_visible(head.version);
        if adopted > 0 {
            tracing::info!(
                adopted,
                version = head.version,
                "store.recover: adopted records past HEAD"
            );
        }
        Ok(())
    }

    /// Resolves one batch and appends it to the log, then hands it to the syncer, which
    /// acknowledges it once it is on disk; meanwhile the next batch is resolved. Called by
    /// the batch's leader only (see [`EmbeddedHost::lead`]), with buffers kept from one
    /// batch to the next (a fresh multi-megabyte buffer per batch would be zeroed by the
    /// kernel each time).
    fn commit_batch(
        self: &Arc<Self>,
        batch: Vec<Waiting>,
        buffers: &mut CommitBuffers,
        syncer: &Sender<SyncJob>,
    ) {
        let started = Instant::now();
        metrics::histogram!("tessera_store_commit_batch_txns").record(batch.len() as f64);
        match self.commit_batch_inner(batch, buffers, started) {
            Ok(Some(job)) => {
                if syncer.send(job).is_err() {
                    fatal("the syncer thread is gone");
                }
            }
            Ok(None) => {}
            // The log could not be written. What this process holds in memory may now
            // differ from disk; carrying on could acknowledge writes that are not durable.
            Err(e) => fatal(&format!("log write failed: {e:#}")),
        }
    }

    fn commit_batch_inner(
        self: &Arc<Self>,
        batch: Vec<Waiting>,
        buffers: &mut CommitBuffers,
        started: Instant,
    ) -> Result<Option<SyncJob>, StoreError> {
        let _writer = self.writer.lock();
        self.lock.lock().map_err(io)?;
        let _unlock = Unlock(&self.lock);
        let mut rep = self.replica.lock();
        let head = self.read_head()?;
        self.catch_up(&mut rep, &head)?;
        let (adopted, _) = self.adopt_tail(&mut rep, false)?;

        let version = rep.version + 1;
        let now = Instant::now();
        let record = &mut buffers.record;
        record.clear();
        let mut log = wal::RecordWriter::begin(record, version);
        let mut batch = batch;
        let resolved = self.engine.resolve_batch(
            batch.iter_mut().map(|w| &mut w.req),
            version,
            now,
            &mut log,
            &mut buffers.scratch,
        );
        let mut replies = Vec::with_capacity(batch.len());
        for (i, (w, r)) in batch.into_iter().zip(resolved).enumerate() {
            match r {
                Ok(()) => replies.push((
                    w.reply,
                    CommitInfo { version, versionstamp: versionstamp(version, i as u16) },
                )),
                Err(e) => {
                    let label = match &e {
                        StoreError::Conflict => "conflict",
                        StoreError::TooOld => "too_old",
                        _ => "error",
                    };
                    metrics::counter!("tessera_store_commits_total", "outcome" => label)
                        .increment(1);
                    // Final, whatever happens to the batches before it.
                    let _ = w.reply.send(Err(e));
                }
            }
        }
        if replies.is_empty() {
            log.discard();
            // Records adopted from another writer become visible with the next sync; if
            // their writer died, nobody else may be about to sync them.
            return Ok((adopted > 0).then(|| SyncJob {
                segment: rep.segment,
                end: rep.applied_len,
                version: rep.version,
                log: rep.log.clone(),
                replies: Vec::new(),
                started,
            }));
        }
        let record_len = log.finish();
        rep.log.write_all_at(record, rep.applied_len).map_err(io)?;
        rep.applied_len += record_len as u64;
        if rep.applied_len + wal::RECORD_HEADER_LEN as u64 > rep.alloc_len {
            // Past the zeros: extend by a step (the syncer's next `fdatasync` makes the
            // new length durable with the record).
            let step = self.opts.log_extend_bytes.min(self.opts.segment_bytes_max).max(4096);
            let to = (rep.applied_len / step + 1) * step;
            write_zeros(&rep.log, rep.applied_len, to)?;
            rep.alloc_len = to;
            metrics::counter!("tessera_store_log_extensions_total").increment(1);
        }
        rep.version = version;
        self.applied.fetch_max(version, Ordering::AcqRel);
        self.engine.note_applied(version, now);
        metrics::counter!("tessera_store_log_bytes_total").increment(record_len as u64);
        // Keep a buffer the size batches need, but do not hold on to a rare giant one.
        if record.capacity() > 64 << 20 {
            *record = Vec::new();
        }
        let job = SyncJob {
            segment: rep.segment,
            end: rep.applied_len,
            version,
            log: rep.log.clone(),
            replies,
            started,
        };
        let rotate_at =
            self.opts.segment_bytes_max.max(2 * self.last_snapshot_bytes.load(Ordering::Acquire));
        if rep.applied_len >= rotate_at && !self.snapshotting.swap(true, Ordering::AcqRel) {
            self.rotate(&mut rep)?;
        }
        Ok(Some(job))
    }

    /// Makes appended batches durable, moves `HEAD` past them (never backwards: another
    /// writer may have moved it further) and makes them visible; the caller then has them
    /// acknowledged. Called by the syncer thread only.
    fn sync_jobs(&self, jobs: &[SyncJob]) -> Result<(), StoreError> {
        let Some(last) = jobs.last() else { return Ok(()) };
        if self.opts.sync {
            let t = Instant::now();
            // Jobs of an older segment were synced when it was rotated away.
            last.log.sync_data().map_err(io)?;
            metrics::histogram!("tessera_store_fsync_seconds").record(t.elapsed().as_secs_f64());
        }
        // `HEAD` first, then visible here: a version visible in one process must be visible
        // to a transaction that starts later in any other (strict serializability).
        {
            let _writer = self.writer.lock();
            self.lock.lock().map_err(io)?;
            let _unlock = Unlock(&self.lock);
            let head = self.read_head()?;
            if head.segment == last.segment && last.end > head.committed_len {
                let next = Head { committed_len: last.end, version: last.version, ..head };
                self.write_head(&next, false)?;
            }
        }
        self.engine.set_visible(last.version);
        Ok(())
    }

    /// Starts the next segment, under the lock, and has a background thread write the
    /// snapshot it starts from. Commits go on meanwhile: the snapshot reads the pinned
    /// version from memory one hash table at a time. Until the snapshot is on disk,
    /// recovery starts from an older snapshot and replays the segments since (see
    /// [`load_state`]).
    fn rotate(self: &Arc<Self>, rep: &mut Replica) -> Result<(), StoreError> {
        // Batches still waiting for the syncer must be on disk before `HEAD` names the
        // next segment (it says they are committed); the finished segment ends at its last
        // record (recovery reads an older segment to its end).
        rep.log.set_len(rep.applied_len).map_err(io)?;
        rep.log.sync_data().map_err(io)?;
        let next = rep.segment + 1;
        let version = rep.version;
        let log = self.fs.open(&segment_path(&self.dir, next), true, true).map_err(io)?;
        log.sync_all().map_err(io)?;
        sync_dir(&self.fs, &self.dir)?;
        let head =
            Head { segment: next, committed_len: 0, version, prev_segment_len: rep.applied_len };
        self.write_head(&head, true)?;
        self.engine.set_visible(version);
        *rep = Replica { segment: next, applied_len: 0, version, log: Arc::new(log), alloc_len: 0 };
        self.engine.pin(version);
        let host = Arc::clone(self);
        let spawned =
            std::thread::Builder::new().name("tessera-store-snapshot".into()).spawn(move || {
                let started = Instant::now();
                match host.write_snapshot(next, version) {
                    Ok((keys, bytes)) => tracing::info!(
                        segment = next,
                        version,
                        keys,
                        snapshot_bytes = bytes,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "store.rotate"
                    ),
                    // Recovery keeps using the older snapshot and segments; the next
                    // rotation tries again.
                    Err(e) => {
                        tracing::error!(segment = next, "store.rotate: snapshot failed: {e:#}")
                    }
                }
                host.engine.unpin();
                host.snapshotting.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.engine.unpin();
            self.snapshotting.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// Writes `snap-<segment>` with the state at `version`, then deletes every older
    /// segment and snapshot. Returns the number of keys and bytes written.
    fn write_snapshot(&self, segment: u64, version: u64) -> Result<(u64, u64), StoreError> {
        // Commits come first: the snapshot works a millisecond at a time and then rests
        // (SNAPSHOT_REST_PER_WORK). It runs at normal priority on purpose. It holds the
        // ordered index's read lock while it copies 256 entries, and a thread at a low
        // nice value preempted inside such a copy on a busy machine kept the commit
        // leader waiting for milliseconds.
        let tmp = self.dir.join(format!("snap-{segment:016x}.tmp"));
        let (keys, bytes) = {
            let file = self.fs.open(&tmp, true, true).map_err(io)?;
            let f = Paced { file: Appender { file: &file, at: 0 }, unsynced: 0 };
            let w = std::io::BufWriter::with_capacity(1 << 20, f);
            let mut w = wal::SnapshotWriter::new(w, version);
            let mut after: Option<Vec<u8>> = None;
            let mut worked_since = Instant::now();
            loop {
                // Entries are only copied into the writer's buffer while the index is
                // locked; the buffer goes to disk after.
                let next = self
                    .engine
                    .dump_ordered(version, after.as_deref(), 256, |k, v| w.entry(k, v))?;
                w.flush_if_full().map_err(io)?;
                let worked = worked_since.elapsed();
                if worked >= Duration::from_millis(1) {
                    std::thread::sleep(worked * SNAPSHOT_REST_PER_WORK);
                    worked_since = Instant::now();
                }
                match next {
                    Some(k) => after = Some(k),
                    None => break,
                }
            }
            let (w, bytes, keys) = w.finish().map_err(io)?;
            let f = w.into_inner().map_err(|e| io(e.into_error()))?;
            f.file.file.sync_all().map_err(io)?;
            (keys, bytes)
        };
        self.fs.rename(&tmp, &snapshot_path(&self.dir, segment)).map_err(io)?;
        sync_dir(&self.fs, &self.dir)?;
        // Keep the previous snapshot and segment too, so a damaged newest snapshot is not
        // fatal; delete anything older (also what writers that died left behind). Followers
        // still reading an older segment keep their open file.
        for name in self.fs.list_dir(&self.dir).map_err(io)? {
            let older = Some(name.as_str())
                .and_then(|n| n.strip_prefix("wal-").or_else(|| n.strip_prefix("snap-")))
                .and_then(|n| n.split_once('.'))
                .and_then(|(hex, _)| u64::from_str_radix(hex, 16).ok())
                .is_some_and(|n| n + 1 < segment);
            if older {
                let _ = self.fs.remove_file(&self.dir.join(&name));
            }
        }
        self.last_snapshot_bytes.store(bytes, Ordering::Release);
        Ok((keys, bytes))
    }
}

/// Whether `[from, to)` of `file` holds only zeros (an empty range does).
fn all_zero(file: &StoreFile, from: u64, to: u64) -> Result<bool, StoreError> {
    if to <= from {
        return Ok(true);
    }
    let mut rest = vec![0u8; (to - from) as usize];
    file.read_exact_at(&mut rest, from).map_err(io)?;
    Ok(rest.iter().all(|b| *b == 0))
}

/// Writes zeros over `[from, to)` of `file`.
fn write_zeros(file: &StoreFile, from: u64, to: u64) -> Result<(), StoreError> {
    const PIECE: u64 = 256 << 10;
    let zeros = vec![0u8; PIECE.min(to.saturating_sub(from)) as usize];
    let mut at = from;
    while at < to {
        let n = PIECE.min(to - at) as usize;
        file.write_all_at(&zeros[..n], at).map_err(io)?;
        at += n as u64;
    }
    Ok(())
}

/// Applies the log of the replica's segment from `applied_len` up to `end`.
fn apply_log(engine: &Engine, rep: &mut Replica, end: u64) -> Result<(), StoreError> {
    if end <= rep.applied_len {
        return Ok(());
    }
    let len = (end - rep.applied_len) as usize;
    let mut buf = vec![0u8; len];
    rep.log.read_exact_at(&mut buf, rep.applied_len).map_err(io)?;
    let buf = Bytes::from(buf);
    let mut at = 0usize;
    let now = Instant::now();
    while at < len {
        let rec = wal::decode_record(&buf.slice(at..)).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "log segment {} has a bad record at offset {}",
                rep.segment,
                rep.applied_len as usize + at
            ))
        })?;
        engine.apply_resolved(rec.version, &rec.writes);
        engine.note_applied(rec.version, now);
        rep.version = rec.version;
        at += rec.len;
    }
    rep.applied_len = end;
    Ok(())
}

/// Loads the state `head` names into `engine`: the newest usable snapshot on disk at or
/// below `head.segment` (none for segment 1), then every segment from there on. The
/// snapshot of the current segment may still be being written (or its writer died, or it
/// is damaged); then an older one and the segments after it serve. Files deleted under us
/// by a writer that just finished a newer snapshot make us start over.
fn load_state(fs: &Fs, dir: &Path, engine: &Engine, head: &Head) -> Result<Replica, StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match load_state_once(fs, dir, engine, head) {
            Err(StoreError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound && attempt < 5 => {
                tracing::debug!("store.load: a file went away while loading ({e}); again");
            }
            other => return other,
        }
    }
}

fn load_state_once(
    fs: &Fs,
    dir: &Path,
    engine: &Engine,
    head: &Head,
) -> Result<Replica, StoreError> {
    let mut base = head.segment;
    let mut loaded = false;
    while base > 1 {
        match fs.read(&snapshot_path(dir, base)) {
            Ok(data) => match wal::decode_snapshot(Bytes::from(data)) {
                Ok((version, entries)) => {
                    engine.load(version, entries);
                    loaded = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(
                        segment = base,
                        "store.load: snapshot unusable ({e}); trying the one before"
                    );
                    base -= 1;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => base -= 1,
            Err(e) => return Err(io(e)),
        }
    }
    if !loaded {
        engine.load(0, Vec::<(Bytes, Bytes)>::new());
    }
    let mut version = engine.visible_version();
    let open = |segment: u64, version: u64| -> Result<Replica, StoreError> {
        let log = fs.open(&segment_path(dir, segment), false, false).map_err(io)?;
        Ok(Replica { segment, applied_len: 0, version, log: Arc::new(log), alloc_len: 0 })
    };
    for segment in base..head.segment {
        let mut rep = open(segment, version)?;
        // A finished segment ends where its last committed record ends.
        let end = if segment + 1 == head.segment {
            head.prev_segment_len
        } else {
            rep.log.size().map_err(io)?
        };
        apply_log(engine, &mut rep, end)?;
        version = rep.version;
    }
    let mut rep = open(head.segment, version)?;
    apply_log(engine, &mut rep, head.committed_len)?;
    Ok(rep)
}

/// Turns transparent huge pages off for this process's future page faults (see
/// [`EmbeddedOptions::transparent_huge_pages`]). Memory already mapped keeps its pages.
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and changes only how the kernel
    // backs this process's future anonymous page faults; no memory is read or written.
    #[allow(unsafe_code, reason = "prctl with integer arguments only")]
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1 as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        tracing::debug!("store.open: transparent huge pages could not be turned off");
    }
}

/// How much of one core a snapshot may take while commits go on: after each
/// millisecond or more of work it sleeps this many times as long as it worked.
const SNAPSHOT_REST_PER_WORK: u32 = 3;

/// How much of a snapshot may be written but not yet synced. A log `fdatasync` that
/// reaches the disk behind unsynced snapshot pages waits for them: a megabyte is about
/// 3 ms of this machine's disk, a quarter of one under a millisecond.
const SNAPSHOT_SYNC_BYTES: usize = 256 << 10;

/// A snapshot file that is synced every [`SNAPSHOT_SYNC_BYTES`], so the disk never has
/// more than a fraction of a millisecond of snapshot pages queued ahead of the log's next
/// `fdatasync`.
struct Paced<'a> {
    file: Appender<'a>,
    unsynced: usize,
}

impl std::io::Write for Paced<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A short write: the caller's buffer holds a megabyte.
        let room = SNAPSHOT_SYNC_BYTES - self.unsynced;
        let n = self.file.write(&buf[..buf.len().min(room)])?;
        self.unsynced += n;
        if self.unsynced >= SNAPSHOT_SYNC_BYTES {
            self.file.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Unlock<'a>(&'a StoreFile);
impl Drop for Unlock<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Buffers the batch leader reuses from batch to batch.
struct CommitBuffers {
    record: Vec<u8>,
    scratch: BatchScratch,
}

/// What the thread committing a batch works with.
struct Leader {
    buffers: CommitBuffers,
    syncer: Sender<SyncJob>,
}

/// Syncs what batch leaders appended, every batch waiting at once (group commit), and
/// passes the synced batches on to be acknowledged.
///
/// Acknowledging is the acknowledger's: waking a few dozen waiting tasks from outside
/// their runtime takes about as long as an `fdatasync`, and done here it would hold up
/// the next one.
fn syncer(host: Weak<EmbeddedHost>, rx: Receiver<SyncJob>, acks: Sender<Vec<SyncJob>>) {
    loop {
        let Ok(first) = rx.recv() else { return };
        let mut jobs = vec![first];
        while let Ok(job) = rx.try_recv() {
            jobs.push(job);
        }
        let Some(host) = host.upgrade() else { return };
        if let Err(e) = host.sync_jobs(&jobs) {
            // Whether the batches reached the disk is unknown; acknowledging later ones
            // could claim what is not durable.
            fatal(&format!("log sync failed: {e:#}"));
        }
        drop(host);
        if acks.send(jobs).is_err() {
            fatal("the acknowledger thread is gone");
        }
    }
}

/// Tells the transactions of synced batches that they committed, then brings the
/// ordered index up to date (see [`Engine::settle_order`]) while the committer works on.
fn acknowledger(host: Weak<EmbeddedHost>, rx: Receiver<Vec<SyncJob>>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = first;
        while let Ok(more) = rx.try_recv() {
            jobs.extend(more);
        }
        for job in jobs {
            metrics::histogram!("tessera_store_commit_batch_seconds")
                .record(job.started.elapsed().as_secs_f64());
            metrics::counter!("tessera_store_commits_total", "outcome" => "committed")
                .increment(job.replies.len() as u64);
            for (reply, info) in job.replies {
                let _ = reply.send(Ok(info));
            }
        }
        // It runs until the syncer is gone: stopping when the store is, it could miss
        // batches the syncer still hands on.
        if let Some(host) = host.upgrade() {
            host.engine.settle_order();
        }
    }
}

/// Stops the process after a failure that leaves memory and disk possibly different.
fn fatal(what: &str) -> ! {
    tracing::error!("store.commit: {what}; stopping the process");
    eprintln!("tessera store: {what}; stopping the process");
    std::process::abort();
}

impl Host for EmbeddedHost {
    fn engine(&self) -> &Engine {
        &self.engine
    }

    fn read_version(&self) -> Result<u64, StoreError> {
        let head = self.read_head()?;
        if head.version <= self.engine.visible_version() {
            return Ok(self.engine.visible_version());
        }
        if head.version <= self.applied.load(Ordering::Acquire) {
            // Applied here already (this process's own batch, or one it adopted), and now
            // durable: no need to wait for a batch leader to let go of the replica.
            self.engine.set_visible(head.version);
            return Ok(self.engine.visible_version());
        }
        let mut rep = self.replica.lock();
        // A batch leader may have caught up while we waited for the lock.
        let head = self.read_head()?;
        if head.version > self.engine.visible_version() {
            self.catch_up(&mut rep, &head)?;
        }
        Ok(self.engine.visible_version())
    }

    async fn submit(self: Arc<Self>, req: CommitRequest) -> Result<CommitInfo, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let first = {
            let mut pending = self.pending.lock();
            pending.push(Waiting { req, reply: tx });
            pending.len() == 1
        };
        if first {
            // Let the other tasks that are ready run first: their commits join this batch.
            tokio::task::yield_now().await;
            self.lead();
        }
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(result)) => result,
            // The batch was lost with a panic: its outcome is unknown.
            Ok(Err(_)) | Err(_) => Err(StoreError::CommitUnknown),
        }
    }
}

impl EmbeddedHost {
    /// Commits what is waiting, on the calling thread, unless another thread is already
    /// doing so (it then takes these too). The thread that wrote a transaction resolves
    /// it while its data is still in that core's cache; only the sync happens elsewhere.
    /// Resolving is short (the `fdatasync` is the syncer's): a batch blocks its thread for
    /// about as long as the transactions in it took to write.
    fn lead(self: &Arc<Self>) {
        loop {
            let Some(mut leader) = self.leader.try_lock() else { return };
            loop {
                let batch = {
                    let mut pending = self.pending.lock();
                    let max = self.opts.batch_txns_max.clamp(1, u16::MAX as usize);
                    if pending.len() <= max {
                        std::mem::take(&mut *pending)
                    } else {
                        pending.drain(..max).collect()
                    }
                };
                if batch.is_empty() {
                    break;
                }
                let Leader { buffers, syncer } = &mut *leader;
                self.commit_batch(batch, buffers, syncer);
            }
            drop(leader);
            // A commit queued after the last look but before the lock was let go found the
            // lock taken: take it up now.
            if self.pending.lock().is_empty() {
                return;
            }
        }
    }
}

impl Store for EmbeddedStore {
    type Trx = LocalTrx<EmbeddedHost>;

    fn create_trx(&self) -> Result<Self::Trx, StoreError> {
        Ok(LocalTrx::new(self.host.clone()))
    }

    fn backend_name(&self) -> &'static str {
        "embedded"
    }
}
