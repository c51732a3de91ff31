//! [`PowerLossFs`]: a file system in memory that loses power on cue.
//!
//! Every file keeps two contents: what was written (what reads see, like the page cache)
//! and what was last synced (what a disk would still hold). Directories keep their synced
//! entries apart from the entries created, renamed or removed since the directory was last
//! synced. At a chosen operation the power goes: every write no `fsync`/`fdatasync` made
//! durable and every directory change no `fsync` of the directory made durable is dropped
//! ([`Persist::Synced`]), or, in the harsher mode ([`Persist::SomeSectors`]), each unsynced
//! 512-byte sector independently reaches the disk or not and a random prefix of the
//! unsynced directory changes survives (as a journaling file system commits them in
//! order).
//!
//! What the old "machine" was doing stops there: the store opened before the loss sees
//! every later call on its files and directory block forever, like a process that no
//! longer runs. Only the acknowledgements it sent before are seen. The store is then
//! opened again on a fresh [`PowerLossFs::boot`] view.
//!
//! Written in the spirit of TigerBeetle's storage simulator and Jepsen's LazyFS; small
//! enough to be read in one sitting.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, MutexGuard};
use tessera_store::fs::{FileHandle, FileSystem};

const SECTOR: usize = 512;

/// What survives a power loss besides what was synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Persist {
    /// Nothing: the disk holds exactly what was synced.
    Synced,
    /// Each unsynced sector survives or not, at random; and a random prefix of the
    /// unsynced directory changes.
    SomeSectors,
}

#[derive(Debug, Default)]
struct Inode {
    /// What reads see.
    data: Vec<u8>,
    /// What the disk holds.
    durable: Vec<u8>,
}

#[derive(Debug, Clone)]
enum NameOp {
    Link(PathBuf, usize),
    Rename(PathBuf, PathBuf),
    Unlink(PathBuf),
}

impl NameOp {
    fn dir(&self) -> Option<&Path> {
        match self {
            NameOp::Link(p, _) | NameOp::Rename(p, _) | NameOp::Unlink(p) => p.parent(),
        }
    }
    fn apply(&self, names: &mut BTreeMap<PathBuf, usize>) {
        match self {
            NameOp::Link(p, ino) => {
                names.insert(p.clone(), *ino);
            }
            NameOp::Rename(from, to) => {
                if let Some(ino) = names.remove(from) {
                    names.insert(to.clone(), ino);
                }
            }
            NameOp::Unlink(p) => {
                names.remove(p);
            }
        }
    }
}

#[derive(Debug)]
struct State {
    epoch: u64,
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    /// Directory changes not yet made durable, in order.
    unsynced_names: Vec<NameOp>,
    /// Inode -> the handle holding its lock.
    locks: HashMap<usize, u64>,
    next_handle: u64,
    /// Operations of the current epoch so far, and the one at which the power goes.
    ops: u64,
    crash_at: Option<u64>,
    persist: Persist,
    rng: u64,
    crashes: u64,
    /// Writes and syncs that reached the file system (for the test's report).
    writes: u64,
    syncs: u64,
    renames: u64,
}

impl State {
    fn random(&mut self) -> u64 {
        // xorshift64*: deterministic for a seed.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn lose_power(&mut self) {
        let keep = match self.persist {
            Persist::Synced => 0,
            Persist::SomeSectors => {
                (self.random() % (self.unsynced_names.len() as u64 + 1)) as usize
            }
        };
        let mut names = self.durable_names.clone();
        for op in self.unsynced_names.drain(..keep) {
            op.apply(&mut names);
        }
        self.unsynced_names.clear();
        self.names = names.clone();
        self.durable_names = names;
        for i in 0..self.inodes.len() {
            let survived = match self.persist {
                Persist::Synced => self.inodes[i].durable.clone(),
                Persist::SomeSectors => {
                    let (data, durable) = (&self.inodes[i].data, &self.inodes[i].durable);
                    let (data, durable) = (data.clone(), durable.clone());
                    let len =
                        if self.random().is_multiple_of(2) { data.len() } else { durable.len() };
                    let mut out = vec![0u8; len];
                    for start in (0..len).step_by(SECTOR) {
                        let end = (start + SECTOR).min(len);
                        let from = if self.random().is_multiple_of(2) { &data } else { &durable };
                        for (j, b) in out[start..end].iter_mut().enumerate() {
                            *b = from.get(start + j).copied().unwrap_or(0);
                        }
                    }
                    out
                }
            };
            self.inodes[i].data = survived.clone();
            self.inodes[i].durable = survived;
        }
        self.locks.clear();
        self.epoch += 1;
        self.crash_at = None;
        self.ops = 0;
        self.crashes += 1;
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    unlocked: Condvar,
}

/// The file system; [`PowerLossFs::boot`] gives the view a store opens.
#[derive(Debug, Clone)]
pub(crate) struct PowerLossFs {
    shared: Arc<Shared>,
}

/// What the file system saw, for the test's report.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) crashes: u64,
    pub(crate) writes: u64,
    pub(crate) syncs: u64,
    /// Renames: each is a snapshot the store finished.
    pub(crate) renames: u64,
}

impl PowerLossFs {
    pub(crate) fn new(persist: Persist, seed: u64) -> Self {
        let state = State {
            epoch: 0,
            inodes: Vec::new(),
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            unsynced_names: Vec::new(),
            locks: HashMap::new(),
            next_handle: 0,
            ops: 0,
            crash_at: None,
            persist,
            rng: seed | 1,
            crashes: 0,
            writes: 0,
            syncs: 0,
            renames: 0,
        };
        PowerLossFs {
            shared: Arc::new(Shared { state: Mutex::new(state), unlocked: Condvar::new() }),
        }
    }

    /// A view of the file system for the machine as it is now: after the next power loss
    /// every call through it blocks forever.
    pub(crate) fn boot(&self) -> Arc<dyn FileSystem> {
        let epoch = self.shared.state.lock().epoch;
        Arc::new(View { shared: self.shared.clone(), epoch })
    }

    /// The power goes at the `ops`-th file system call from now.
    pub(crate) fn lose_power_after(&self, ops: u64) {
        let mut st = self.shared.state.lock();
        st.ops = 0;
        st.crash_at = Some(ops.max(1));
    }

    /// No power loss is pending.
    pub(crate) fn disarm(&self) {
        self.shared.state.lock().crash_at = None;
    }

    /// How many power losses so far: a change means the machine went down.
    pub(crate) fn epoch(&self) -> u64 {
        self.shared.state.lock().epoch
    }

    pub(crate) fn counts(&self) -> Counts {
        let st = self.shared.state.lock();
        Counts { crashes: st.crashes, writes: st.writes, syncs: st.syncs, renames: st.renames }
    }

    pub(crate) fn random(&self) -> u64 {
        self.shared.state.lock().random()
    }
}

/// The machine is off: whatever called never returns.
fn halt() -> ! {
    loop {
        std::thread::park();
    }
}

#[derive(Debug)]
struct View {
    shared: Arc<Shared>,
    epoch: u64,
}

/// Enters the file system for one call of the machine of `epoch`; the power goes here if
/// this is the chosen call (which then never happens).
fn enter(shared: &Shared, epoch: u64) -> MutexGuard<'_, State> {
    let mut st = shared.state.lock();
    if st.epoch != epoch {
        drop(st);
        halt();
    }
    st.ops += 1;
    if st.crash_at == Some(st.ops) {
        st.lose_power();
        shared.unlocked.notify_all();
        drop(st);
        halt();
    }
    st
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} does not exist", path.display()))
}

impl FileSystem for View {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        // Directories are implicit: a file's parent is its directory.
        drop(enter(&self.shared, self.epoch));
        Ok(())
    }

    fn open(&self, path: &Path, create: bool, truncate: bool) -> io::Result<Box<dyn FileHandle>> {
        let mut st = enter(&self.shared, self.epoch);
        let ino = match st.names.get(path) {
            Some(ino) => *ino,
            None if create => {
                st.inodes.push(Inode::default());
                let ino = st.inodes.len() - 1;
                st.names.insert(path.to_path_buf(), ino);
                st.unsynced_names.push(NameOp::Link(path.to_path_buf(), ino));
                ino
            }
            None => return Err(not_found(path)),
        };
        if truncate {
            st.inodes[ino].data.clear();
        }
        st.next_handle += 1;
        let id = st.next_handle;
        Ok(Box::new(Handle { shared: self.shared.clone(), epoch: self.epoch, ino, id }))
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        Ok(enter(&self.shared, self.epoch).names.contains_key(path))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = enter(&self.shared, self.epoch);
        let ino = *st.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(st.inodes[ino].data.clone())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = enter(&self.shared, self.epoch);
        st.renames += 1;
        let ino = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_path_buf(), ino);
        st.unsynced_names.push(NameOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = enter(&self.shared, self.epoch);
        st.names.remove(path).ok_or_else(|| not_found(path))?;
        st.unsynced_names.push(NameOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = enter(&self.shared, self.epoch);
        Ok(st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = enter(&self.shared, self.epoch);
        st.syncs += 1;
        let ops = std::mem::take(&mut st.unsynced_names);
        let (mine, others): (Vec<NameOp>, Vec<NameOp>) =
            ops.into_iter().partition(|op| op.dir() == Some(dir));
        for op in &mine {
            op.apply(&mut st.durable_names);
        }
        st.unsynced_names = others;
        Ok(())
    }
}

#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    epoch: u64,
    ino: usize,
    id: u64,
}

impl FileHandle for Handle {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let st = enter(&self.shared, self.epoch);
        let data = &st.inodes[self.ino].data;
        let start = offset as usize;
        let end = start + buf.len();
        if end > data.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"));
        }
        buf.copy_from_slice(&data[start..end]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = enter(&self.shared, self.epoch);
        st.writes += 1;
        let data = &mut st.inodes[self.ino].data;
        let start = offset as usize;
        let end = start + buf.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(enter(&self.shared, self.epoch).inodes[self.ino].data.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = enter(&self.shared, self.epoch);
        st.inodes[self.ino].data.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = enter(&self.shared, self.epoch);
        st.syncs += 1;
        let inode = &mut st.inodes[self.ino];
        inode.durable = inode.data.clone();
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn lock(&self) -> io::Result<()> {
        let mut st = enter(&self.shared, self.epoch);
        loop {
            match st.locks.get(&self.ino) {
                None => {
                    st.locks.insert(self.ino, self.id);
                    return Ok(());
                }
                Some(holder) if *holder == self.id => return Ok(()),
                Some(_) => {
                    self.shared.unlocked.wait(&mut st);
                    if st.epoch != self.epoch {
                        drop(st);
                        halt();
                    }
                }
            }
        }
    }

    fn unlock(&self) -> io::Result<()> {
        let mut st = enter(&self.shared, self.epoch);
        if st.locks.get(&self.ino) == Some(&self.id) {
            st.locks.remove(&self.ino);
            self.shared.unlocked.notify_all();
        }
        Ok(())
    }
}

impl Drop for Handle {
    /// Closing a file lets go of its lock, as closing the last descriptor of an open file
    /// does with `flock`.
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        if st.epoch == self.epoch && st.locks.get(&self.ino) == Some(&self.id) {
            st.locks.remove(&self.ino);
            self.shared.unlocked.notify_all();
        }
    }
}
