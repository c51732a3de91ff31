//! On-disk formats of the embedded store: log records, the `HEAD` file and snapshots.
//!
//! ```text
//! wal-<segment>.log   records: [len u32 LE][crc32c u32 LE][body]
//!                     body:    [kind u8 = 1][version u64 LE][count u32 LE]
//!                              count × ([op u8: 1 set, 2 clear][klen u32][key][vlen u32][value])
//! snap-<segment>.bin  the state at the start of <segment>, keys in order:
//!                     ["TSRSNAP2"][version u64] count × ([klen u32][key][vlen u32][value])
//!                     [count u64][crc32c u32 of everything before]
//!                     (written as it is read from memory, so the count comes last;
//!                     "TSRSNAP1" files, count after the version, are still read)
//! HEAD                ["TSRHEAD1"][segment u64][committed_len u64][version u64]
//!                     [prev_segment_len u64][crc32c u32 of the 40 bytes before]
//! ```
//! All integers are little endian. A segment is extended with zeros ahead of its last
//! record (records overwrite allocated blocks, so an `fdatasync` of a record is not also a
//! file system journal commit); the log ends at the first all-zero record header. A
//! finished segment is cut to its last record. A record is committed once it is inside
//! `committed_len` of the current segment, or (after a crash) once it is complete and its
//! checksum matches: the recovering writer adopts such records and zeroes anything after
//! the first bad one.

use std::io;

use bytes::{Buf as _, Bytes};

use crate::mvcc::Resolved;

const RECORD_KIND_BATCH: u8 = 1;
const OP_SET: u8 = 1;
const OP_CLEAR: u8 = 2;
const HEAD_MAGIC: &[u8; 8] = b"TSRHEAD1";
const SNAP_MAGIC_V1: &[u8; 8] = b"TSRSNAP1";
const SNAP_MAGIC: &[u8; 8] = b"TSRSNAP2";
pub(crate) const HEAD_LEN: usize = 44;
pub(crate) const RECORD_HEADER_LEN: usize = 8;
/// A record larger than this is corrupt (a batch holds at most 64k transactions of 10 MB,
/// but the committer cuts batches far below that).
const RECORD_LEN_MAX: usize = 1 << 30;

/// The `HEAD` file: where the log's committed end is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Head {
    pub(crate) segment: u64,
    pub(crate) committed_len: u64,
    pub(crate) version: u64,
    /// Final committed length of `segment - 1`, for followers finishing it.
    pub(crate) prev_segment_len: u64,
}

impl Head {
    pub(crate) fn encode(&self) -> [u8; HEAD_LEN] {
        let mut b = [0u8; HEAD_LEN];
        b[..8].copy_from_slice(HEAD_MAGIC);
        b[8..16].copy_from_slice(&self.segment.to_le_bytes());
        b[16..24].copy_from_slice(&self.committed_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.version.to_le_bytes());
        b[32..40].copy_from_slice(&self.prev_segment_len.to_le_bytes());
        let crc = crc32c::crc32c(&b[..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes `HEAD`; `None` if torn or corrupt (a concurrent write: read again).
    pub(crate) fn decode(b: &[u8]) -> Option<Head> {
        if b.len() < HEAD_LEN || &b[..8] != HEAD_MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(b[40..44].try_into().ok()?);
        if crc != crc32c::crc32c(&b[..40]) {
            return None;
        }
        let u = |r: std::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().unwrap_or([0; 8]));
        Some(Head {
            segment: u(8..16),
            committed_len: u(16..24),
            version: u(24..32),
            prev_segment_len: u(32..40),
        })
    }
}

/// Writes one commit batch as a log record into a buffer, write by write, so the
/// committer never builds a list of the batch's writes: [`RecordWriter::begin`], then
/// [`RecordWriter::set`] / [`RecordWriter::clear`], then [`RecordWriter::finish`] fills in
/// the header. [`RecordWriter::discard`] drops an unfinished record.
pub(crate) struct RecordWriter<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    count: u32,
}

impl<'a> RecordWriter<'a> {
    pub(crate) fn begin(out: &'a mut Vec<u8>, version: u64) -> Self {
        let start = out.len();
        out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
        out.push(RECORD_KIND_BATCH);
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        RecordWriter { out, start, count: 0 }
    }

    pub(crate) fn set(&mut self, key: &[u8], value: &[u8]) {
        self.out.push(OP_SET);
        self.out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.out.extend_from_slice(key);
        self.out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.out.extend_from_slice(value);
        self.count += 1;
    }

    pub(crate) fn clear(&mut self, key: &[u8]) {
        self.out.push(OP_CLEAR);
        self.out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.out.extend_from_slice(key);
        self.out.extend_from_slice(&0u32.to_le_bytes());
        self.count += 1;
    }

    /// Completes the record (length, checksum, count); returns its length in bytes.
    pub(crate) fn finish(self) -> usize {
        let start = self.start;
        let count_at = start + RECORD_HEADER_LEN + 9;
        self.out[count_at..count_at + 4].copy_from_slice(&self.count.to_le_bytes());
        let body_len = self.out.len() - start - RECORD_HEADER_LEN;
        let crc = crc32c::crc32c(&self.out[start + RECORD_HEADER_LEN..]);
        self.out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
        self.out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        self.out.len() - start
    }

    /// Drops the record written so far.
    pub(crate) fn discard(self) {
        self.out.truncate(self.start);
    }
}

/// Encodes one commit batch as a log record.
#[cfg(test)]
pub(crate) fn encode_record(version: u64, writes: &[Resolved], out: &mut Vec<u8>) {
    let mut w = RecordWriter::begin(out, version);
    for write in writes {
        match write {
            Resolved::Set(k, v) => w.set(k, v),
            Resolved::Clear(k) => w.clear(k),
        }
    }
    w.finish();
}

/// A decoded record.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) version: u64,
    pub(crate) writes: Vec<Resolved>,
    /// Bytes the record takes in the log, header included.
    pub(crate) len: usize,
}

/// Decodes the record at the start of `buf`. `Ok(None)` if `buf` ends before the record
/// does or the record is corrupt (the end of the valid log).
/// From a record's header: `None` where the log ends (zeros), else `Some` of the whole
/// record's length, or of `None` if the header cannot be a record's.
pub(crate) fn record_len(header: &[u8; RECORD_HEADER_LEN]) -> Option<Option<usize>> {
    if header == &[0u8; RECORD_HEADER_LEN] {
        return None;
    }
    let body_len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    Some((body_len <= RECORD_LEN_MAX).then_some(RECORD_HEADER_LEN + body_len))
}

pub(crate) fn decode_record(buf: &Bytes) -> Option<Record> {
    if buf.len() < RECORD_HEADER_LEN {
        return None;
    }
    let body_len = u32::from_le_bytes(buf[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().ok()?);
    if body_len > RECORD_LEN_MAX || buf.len() < RECORD_HEADER_LEN + body_len {
        return None;
    }
    let body = buf.slice(RECORD_HEADER_LEN..RECORD_HEADER_LEN + body_len);
    if crc32c::crc32c(&body) != crc {
        return None;
    }
    let mut b = body.clone();
    if b.remaining() < 13 || b.get_u8() != RECORD_KIND_BATCH {
        return None;
    }
    let version = b.get_u64_le();
    let count = b.get_u32_le() as usize;
    let mut writes = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        if b.remaining() < 5 {
            return None;
        }
        let op = b.get_u8();
        let klen = b.get_u32_le() as usize;
        if b.remaining() < klen + 4 {
            return None;
        }
        let key = b.split_to(klen);
        let vlen = b.get_u32_le() as usize;
        if b.remaining() < vlen {
            return None;
        }
        let value = b.split_to(vlen);
        writes.push(match op {
            OP_SET => Resolved::Set(key, value),
            OP_CLEAR => Resolved::Clear(key),
            _ => return None,
        });
    }
    Some(Record { version, writes, len: RECORD_HEADER_LEN + body_len })
}

/// Streams a snapshot into a writer, entry by entry, in key order. The checksum is taken
/// over megabyte chunks, not field by field.
pub(crate) struct SnapshotWriter<W: io::Write> {
    w: W,
    chunk: Vec<u8>,
    crc: u32,
    len: u64,
    count: u64,
}

impl<W: io::Write> SnapshotWriter<W> {
    const CHUNK: usize = 1 << 20;

    pub(crate) fn new(w: W, version: u64) -> Self {
        let mut chunk = Vec::with_capacity(Self::CHUNK + 64);
        chunk.extend_from_slice(SNAP_MAGIC);
        chunk.extend_from_slice(&version.to_le_bytes());
        SnapshotWriter { w, chunk, crc: 0, len: 0, count: 0 }
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, &self.chunk);
        self.len += self.chunk.len() as u64;
        self.w.write_all(&self.chunk)?;
        self.chunk.clear();
        Ok(())
    }

    /// Adds an entry to the buffer; [`SnapshotWriter::flush_if_full`] writes it out.
    /// Separate, so that entries can be copied under a lock and written after.
    pub(crate) fn entry(&mut self, k: &[u8], v: &[u8]) {
        self.chunk.extend_from_slice(&(k.len() as u32).to_le_bytes());
        self.chunk.extend_from_slice(k);
        self.chunk.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.chunk.extend_from_slice(v);
        self.count += 1;
    }

    /// Writes the buffer out once it holds a chunk's worth.
    pub(crate) fn flush_if_full(&mut self) -> io::Result<()> {
        if self.chunk.len() >= Self::CHUNK { self.flush_chunk() } else { Ok(()) }
    }

    /// Writes the trailer; returns the writer, the snapshot's length and its entry count.
    pub(crate) fn finish(mut self) -> io::Result<(W, u64, u64)> {
        self.chunk.extend_from_slice(&self.count.to_le_bytes());
        self.flush_chunk()?;
        self.w.write_all(&self.crc.to_le_bytes())?;
        Ok((self.w, self.len + 4, self.count))
    }
}

/// Encodes a snapshot of `entries` (sorted) at `version`.
#[cfg(test)]
pub(crate) fn encode_snapshot(version: u64, entries: &[(Bytes, Bytes)]) -> Vec<u8> {
    let mut w = SnapshotWriter::new(Vec::new(), version);
    for (k, v) in entries {
        w.entry(k, v);
    }
    w.finish().map(|(out, _, _)| out).unwrap_or_default()
}

/// Decodes a snapshot into its version and entries.
pub(crate) fn decode_snapshot(data: Bytes) -> io::Result<(u64, Vec<(Bytes, Bytes)>)> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("snapshot {what}"));
    let v1 = data.len() >= 8 && &data[..8] == SNAP_MAGIC_V1;
    if data.len() < 28 || !(v1 || &data[..8] == SNAP_MAGIC) {
        return Err(bad("header is invalid"));
    }
    let n = data.len() - 4;
    let crc = u32::from_le_bytes(data[n..].try_into().map_err(|_| bad("is truncated"))?);
    if crc32c::crc32c(&data[..n]) != crc {
        return Err(bad("checksum does not match"));
    }
    let mut b = data.slice(8..n);
    let version = b.get_u64_le();
    let count = if v1 {
        b.get_u64_le() as usize
    } else {
        let mut tail = data.slice(n - 8..n);
        b = data.slice(16..n - 8);
        tail.get_u64_le() as usize
    };
    let mut entries = Vec::with_capacity(count.min(1 << 24));
    for _ in 0..count {
        if b.remaining() < 4 {
            return Err(bad("is truncated"));
        }
        let klen = b.get_u32_le() as usize;
        if b.remaining() < klen + 4 {
            return Err(bad("is truncated"));
        }
        let k = b.split_to(klen);
        let vlen = b.get_u32_le() as usize;
        if b.remaining() < vlen {
            return Err(bad("is truncated"));
        }
        let v = b.split_to(vlen);
        entries.push((k, v));
    }
    if b.has_remaining() {
        return Err(bad("has bytes after its last entry"));
    }
    Ok((version, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_corruption_ends_the_log() {
        let writes = vec![
            Resolved::Set(Bytes::from_static(b"k1"), Bytes::from_static(b"v1")),
            Resolved::Clear(Bytes::from_static(b"k2")),
        ];
        let mut buf = Vec::new();
        encode_record(7, &writes, &mut buf);
        encode_record(8, &writes[..1], &mut buf);
        let all = Bytes::from(buf.clone());
        let r = decode_record(&all).unwrap();
        assert_eq!((r.version, r.writes.clone()), (7, writes.clone()));
        let r2 = decode_record(&all.slice(r.len..)).unwrap();
        assert_eq!(r2.version, 8);
        // Torn tail.
        assert!(decode_record(&all.slice(r.len..all.len() - 1)).is_none());
        // Flipped bit.
        let mut bad = buf.clone();
        bad[12] ^= 1;
        assert!(decode_record(&Bytes::from(bad)).is_none());
    }

    #[test]
    fn head_detects_torn_writes() {
        let h = Head { segment: 3, committed_len: 1234, version: 99, prev_segment_len: 5 };
        let b = h.encode();
        assert_eq!(Head::decode(&b), Some(h));
        let mut torn = b;
        torn[20] ^= 0xff;
        assert_eq!(Head::decode(&torn), None);
    }

    #[test]
    fn snapshots_of_the_first_format_are_still_read() {
        // ["TSRSNAP1"][version][count] entries [crc]: what the previous release wrote.
        let mut old = Vec::new();
        old.extend_from_slice(b"TSRSNAP1");
        old.extend_from_slice(&42u64.to_le_bytes());
        old.extend_from_slice(&1u64.to_le_bytes());
        old.extend_from_slice(&1u32.to_le_bytes());
        old.extend_from_slice(b"a");
        old.extend_from_slice(&1u32.to_le_bytes());
        old.extend_from_slice(b"1");
        let crc = crc32c::crc32c(&old);
        old.extend_from_slice(&crc.to_le_bytes());
        let e = vec![(Bytes::from_static(b"a"), Bytes::from_static(b"1"))];
        assert_eq!(decode_snapshot(Bytes::from(old)).unwrap(), (42, e));
    }

    #[test]
    fn snapshots_round_trip() {
        let e = vec![(Bytes::from_static(b"a"), Bytes::from_static(b"1"))];
        let s = encode_snapshot(42, &e);
        assert_eq!(decode_snapshot(Bytes::from(s.clone())).unwrap(), (42, e));
        let mut bad = s;
        bad[10] ^= 1;
        assert!(decode_snapshot(Bytes::from(bad)).is_err());
    }
}
