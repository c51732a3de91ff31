//! The file layer under [`EmbeddedStore`](crate::embedded::EmbeddedStore).
//!
//! By default the store works on the operating system's files directly. A
//! [`FileSystem`] given to [`EmbeddedStore::open_on`](crate::embedded::EmbeddedStore::open_on)
//! takes their place: the store's power-loss tests put one there that keeps what was
//! written apart from what was synced, and at a random moment forgets every write, rename
//! and removal that no `fsync` made durable (as a machine that loses power does), before
//! the store is opened again.
//!
//! The trait names exactly what the store does with files: positioned reads and writes,
//! `fdatasync`/`fsync`, length changes, an exclusive `flock`, whole-file reads of
//! snapshots, and renames, removals and syncs of its directory. Nothing else.
//!
//! Operating-system files are not put behind the trait: [`StoreFile`] and [`Fs`] dispatch
//! with a `match`, so the store's commit path makes the same system calls as it would on
//! `std::fs::File`, and `HEAD` is still mapped into memory.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Arc;

/// Where the embedded store keeps its files, when not on the operating system's.
pub trait FileSystem: Send + Sync + Debug + 'static {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Opens `path` for reading and writing; `create` makes it if it is missing,
    /// `truncate` empties it.
    fn open(&self, path: &Path, create: bool, truncate: bool) -> io::Result<Box<dyn FileHandle>>;
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// The whole content of `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// The names of the entries of `dir`.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes the entries of `dir` (creations, renames, removals) durable: `fsync` of the
    /// directory.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file of a [`FileSystem`].
pub trait FileHandle: Send + Sync + Debug {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The file's size in bytes.
    fn size(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's content and length durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's content and all its metadata durable (`fsync`).
    fn sync_all(&self) -> io::Result<()>;
    /// Takes the exclusive lock of the file, waiting for it (`flock(LOCK_EX)`): one holder
    /// per open file, whatever the threads; released by `unlock` or when the holder's
    /// process ends.
    fn lock(&self) -> io::Result<()>;
    fn unlock(&self) -> io::Result<()>;
}

/// The store's file system: the operating system's, or another.
#[derive(Clone, Debug)]
pub(crate) enum Fs {
    Os,
    Custom(Arc<dyn FileSystem>),
}

/// An open file of the store.
#[derive(Debug)]
pub(crate) enum StoreFile {
    Os(File),
    Custom(Box<dyn FileHandle>),
}

impl Fs {
    pub(crate) fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        match self {
            Fs::Os => std::fs::create_dir_all(dir),
            Fs::Custom(fs) => fs.create_dir_all(dir),
        }
    }

    pub(crate) fn open(&self, path: &Path, create: bool, truncate: bool) -> io::Result<StoreFile> {
        match self {
            Fs::Os => OpenOptions::new()
                .create(create)
                .truncate(truncate)
                .read(true)
                .write(true)
                .open(path)
                .map(StoreFile::Os),
            Fs::Custom(fs) => fs.open(path, create, truncate).map(StoreFile::Custom),
        }
    }

    pub(crate) fn exists(&self, path: &Path) -> io::Result<bool> {
        match self {
            Fs::Os => path.try_exists(),
            Fs::Custom(fs) => fs.exists(path),
        }
    }

    pub(crate) fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        match self {
            Fs::Os => std::fs::read(path),
            Fs::Custom(fs) => fs.read(path),
        }
    }

    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        match self {
            Fs::Os => std::fs::rename(from, to),
            Fs::Custom(fs) => fs.rename(from, to),
        }
    }

    pub(crate) fn remove_file(&self, path: &Path) -> io::Result<()> {
        match self {
            Fs::Os => std::fs::remove_file(path),
            Fs::Custom(fs) => fs.remove_file(path),
        }
    }

    pub(crate) fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        match self {
            Fs::Os => Ok(std::fs::read_dir(dir)?
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()),
            Fs::Custom(fs) => fs.list_dir(dir),
        }
    }

    pub(crate) fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        match self {
            Fs::Os => File::open(dir)?.sync_all(),
            Fs::Custom(fs) => fs.sync_dir(dir),
        }
    }
}

impl StoreFile {
    #[inline]
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            StoreFile::Os(f) => f.read_exact_at(buf, offset),
            StoreFile::Custom(f) => f.read_exact_at(buf, offset),
        }
    }

    #[inline]
    pub(crate) fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self {
            StoreFile::Os(f) => f.write_all_at(buf, offset),
            StoreFile::Custom(f) => f.write_all_at(buf, offset),
        }
    }

    #[inline]
    pub(crate) fn size(&self) -> io::Result<u64> {
        match self {
            StoreFile::Os(f) => f.metadata().map(|m| m.len()),
            StoreFile::Custom(f) => f.size(),
        }
    }

    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        match self {
            StoreFile::Os(f) => f.set_len(len),
            StoreFile::Custom(f) => f.set_len(len),
        }
    }

    #[inline]
    pub(crate) fn sync_data(&self) -> io::Result<()> {
        match self {
            StoreFile::Os(f) => f.sync_data(),
            StoreFile::Custom(f) => f.sync_data(),
        }
    }

    pub(crate) fn sync_all(&self) -> io::Result<()> {
        match self {
            StoreFile::Os(f) => f.sync_all(),
            StoreFile::Custom(f) => f.sync_all(),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> io::Result<()> {
        match self {
            StoreFile::Os(f) => f.lock(),
            StoreFile::Custom(f) => f.lock(),
        }
    }

    #[inline]
    pub(crate) fn unlock(&self) -> io::Result<()> {
        match self {
            StoreFile::Os(f) => f.unlock(),
            StoreFile::Custom(f) => f.unlock(),
        }
    }

    /// The operating system's file, when it is one (to map `HEAD` into memory).
    pub(crate) fn as_os(&self) -> Option<&File> {
        match self {
            StoreFile::Os(f) => Some(f),
            StoreFile::Custom(_) => None,
        }
    }
}

/// Writes a file from the start, in order: what the snapshot writer sees.
pub(crate) struct Appender<'a> {
    pub(crate) file: &'a StoreFile,
    pub(crate) at: u64,
}

impl io::Write for Appender<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_all_at(buf, self.at)?;
        self.at += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
