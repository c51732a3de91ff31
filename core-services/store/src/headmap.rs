//! The `HEAD` file mapped into memory, so that taking a read version costs a few loads
//! instead of a `pread` system call. Writers still update it with `pwrite`; the mapping
//! shares the page cache page, so a reader sees every write as soon as it is made. A read
//! that overlaps a write is torn, and the checksum in `HEAD` rejects it (the caller reads
//! again), exactly as with `pread`.
//!
//! This is the store's only `unsafe` code: one `mmap`, the loads, one `munmap`.

#![allow(unsafe_code, reason = "maps one page of the HEAD file read-only; see the SAFETY notes")]

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::wal::HEAD_LEN;

const WORDS: usize = HEAD_LEN / 4;
const _: () = assert!(HEAD_LEN.is_multiple_of(4), "HEAD is read as 32-bit words");
const MAP_LEN: usize = 4096;

/// A read-only shared mapping of the first page of `HEAD`.
pub(crate) struct HeadMap {
    words: *const AtomicU32,
}

// SAFETY: the mapping is read-only and only ever read through atomic loads, which are
// sound from any thread; nothing in it is owned by a thread.
unsafe impl Send for HeadMap {}
// SAFETY: as for `Send`: shared access is atomic loads only.
unsafe impl Sync for HeadMap {}

impl HeadMap {
    /// Maps `file`, which must be at least `HEAD_LEN` bytes long and never shrink (the
    /// store never truncates `HEAD`).
    pub(crate) fn new(file: &File) -> std::io::Result<Self> {
        if file.metadata()?.len() < HEAD_LEN as u64 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "HEAD is too short"));
        }
        // SAFETY: a fresh read-only shared mapping of one page of an open file; the
        // kernel picks the address, so it aliases no Rust object. Bytes past the end of
        // the file within that page read as zero; the first `HEAD_LEN` are in the file.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MAP_LEN,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(HeadMap { words: ptr.cast::<AtomicU32>() })
    }

    /// Copies the current bytes of `HEAD` (possibly torn by a concurrent write).
    pub(crate) fn read(&self, out: &mut [u8; HEAD_LEN]) {
        for i in 0..WORDS {
            // SAFETY: `words` points at a live, page-aligned mapping of `MAP_LEN` bytes,
            // and `i < WORDS` keeps the load inside its first `HEAD_LEN` bytes. Atomic
            // loads are sound however other processes write the page.
            let w = unsafe { &*self.words.add(i) }.load(Ordering::Acquire);
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
    }
}

impl Drop for HeadMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing else refers to.
        unsafe {
            libc::munmap(self.words as *mut libc::c_void, MAP_LEN);
        }
    }
}
