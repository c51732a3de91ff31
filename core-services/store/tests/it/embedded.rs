//! The embedded store across handles (each handle is what one process has) and across
//! real processes killed with SIGKILL.

use std::collections::BTreeSet;
use std::time::Duration;

use tessera_store::embedded::{EmbeddedOptions, EmbeddedStore};
use tessera_store::{
    MutationType, RangeRequest, Store, StoreError, Transaction, TrxError, decode_i64, encode_i64,
    run,
};

async fn get(store: &EmbeddedStore, key: &[u8]) -> Option<Vec<u8>> {
    let t = store.create_trx().unwrap();
    t.get(key, false).await.unwrap().map(|b| b.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_acknowledged_in_one_process_is_seen_by_the_next_transaction_in_another() {
    let dir = tempfile::tempdir().unwrap();
    let a = EmbeddedStore::open(dir.path()).unwrap();
    let b = EmbeddedStore::open(dir.path()).unwrap();
    for i in 0..50u32 {
        let t = a.create_trx().unwrap();
        t.set(format!("k{i}").as_bytes(), &i.to_le_bytes());
        t.commit().await.unwrap();
        assert_eq!(get(&b, format!("k{i}").as_bytes()).await, Some(i.to_le_bytes().to_vec()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_detected_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let a = EmbeddedStore::open(dir.path()).unwrap();
    let b = EmbeddedStore::open(dir.path()).unwrap();
    let t = a.create_trx().unwrap();
    t.set(b"seat", b"free");
    t.commit().await.unwrap();

    let ta = a.create_trx().unwrap();
    assert_eq!(ta.get(b"seat", false).await.unwrap().as_deref(), Some(&b"free"[..]));
    let tb = b.create_trx().unwrap();
    assert_eq!(tb.get(b"seat", false).await.unwrap().as_deref(), Some(&b"free"[..]));
    tb.set(b"seat", b"sold to b");
    tb.commit().await.unwrap();
    ta.set(b"seat", b"sold to a");
    assert!(matches!(ta.commit().await, Err(StoreError::Conflict)));
    assert_eq!(get(&a, b"seat").await.as_deref(), Some(&b"sold to b"[..]));
}

/// Many tasks in two "processes" race to take 40 seats; each seat is taken exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_takers_never_take_a_seat_twice() {
    let dir = tempfile::tempdir().unwrap();
    let stores =
        [EmbeddedStore::open(dir.path()).unwrap(), EmbeddedStore::open(dir.path()).unwrap()];
    let mut handles = Vec::new();
    for task in 0..32u32 {
        let store = stores[(task % 2) as usize].clone();
        handles.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for attempt in 0..40u32 {
                let seat = format!("seat/{:02}", (attempt * 7 + task) % 40);
                let taken = run(&store, |t, _| {
                    let seat = seat.clone();
                    async move {
                        if t.get(seat.as_bytes(), false).await?.is_some() {
                            return Ok(false);
                        }
                        t.set(seat.as_bytes(), &task.to_le_bytes());
                        t.atomic_op(b"sold", &encode_i64(1), MutationType::Add);
                        Ok::<_, TrxError<()>>(true)
                    }
                })
                .await
                .unwrap();
                if taken {
                    won.push(seat);
                }
            }
            won
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let distinct: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), distinct.len(), "a seat was taken twice");
    assert_eq!(distinct.len(), 40);
    assert_eq!(decode_i64(&get(&stores[0], b"sold").await.unwrap()), 40);
}

/// Two "processes" commit flat out at once through the one lock: neither may starve, and
/// each counter ends exactly where its acknowledged commits put it, read from the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_busy_writers_both_get_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let stores =
        [EmbeddedStore::open(dir.path()).unwrap(), EmbeddedStore::open(dir.path()).unwrap()];
    let until = std::time::Instant::now() + Duration::from_secs(2);
    let mut handles = Vec::new();
    for task in 0..64usize {
        let store = stores[task % 2].clone();
        handles.push(tokio::spawn(async move {
            let (mut done, mut slowest) = (0u64, Duration::ZERO);
            while std::time::Instant::now() < until {
                let started = std::time::Instant::now();
                let t = store.create_trx().unwrap();
                t.atomic_op(
                    format!("count/{}", task % 2).as_bytes(),
                    &encode_i64(1),
                    MutationType::Add,
                );
                t.commit().await.unwrap();
                slowest = slowest.max(started.elapsed());
                done += 1;
            }
            (task % 2, done, slowest)
        }));
    }
    let mut done = [0u64; 2];
    let mut slowest = [Duration::ZERO; 2];
    for h in handles {
        let (writer, n, s) = h.await.unwrap();
        done[writer] += n;
        slowest[writer] = slowest[writer].max(s);
    }
    for w in 0..2 {
        assert!(done[w] >= 50, "writer {w} committed only {} times ({done:?})", done[w]);
        assert!(slowest[w] < Duration::from_secs(1), "writer {w} waited {:?}", slowest[w]);
        let key = format!("count/{w}");
        assert_eq!(decode_i64(&get(&stores[1 - w], key.as_bytes()).await.unwrap()), done[w] as i64);
    }
}

#[test]
fn opening_the_store_turns_transparent_huge_pages_off() {
    let thp = || {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:").map(|v| v.trim() == "1"))
    };
    if thp().is_none() {
        eprintln!("skipped: this kernel does not report THP_enabled in /proc/self/status");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _s = EmbeddedStore::open_with(dir.path(), EmbeddedOptions::default()).unwrap();
    // The tests of this binary share one process, and nothing turns THP back on, so
    // only "off after a default open" can be checked here.
    assert_eq!(thp(), Some(false), "transparent huge pages still enabled after a default open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_reopening_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions { segment_bytes_max: 4096, ..EmbeddedOptions::default() };
    {
        let s = EmbeddedStore::open_with(dir.path(), opts.clone()).unwrap();
        let follower = EmbeddedStore::open_with(dir.path(), opts.clone()).unwrap();
        for i in 0..300u32 {
            let t = s.create_trx().unwrap();
            t.set(format!("k{i:04}").as_bytes(), &[7u8; 40]);
            if i % 3 == 0 && i > 0 {
                t.clear(format!("k{:04}", i - 1).as_bytes());
            }
            t.commit().await.unwrap();
            if i % 50 == 0 {
                // The follower keeps up across segment rotations.
                assert!(get(&follower, format!("k{i:04}").as_bytes()).await.is_some());
            }
        }
        assert!(s.stats().unwrap().segment > 3, "segments did not rotate");
    }
    let s = EmbeddedStore::open_with(dir.path(), opts).unwrap();
    let t = s.create_trx().unwrap();
    let rows = t.get_range(&RangeRequest::prefix(b"k"), true).await.unwrap();
    assert_eq!(rows.len(), 300 - 99);
    assert!(get(&s, b"k0002").await.is_none());
    assert!(get(&s, b"k0299").await.is_some());
}

/// A writer killed while its background snapshot was still being written leaves the newest
/// segment without a snapshot; a damaged disk can leave it unreadable. Either way the next
/// process starts from the snapshot before and replays every segment since, and loses
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_newest_snapshot_is_replaced_by_an_older_one_and_the_segments_since() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions { segment_bytes_max: 4096, ..EmbeddedOptions::default() };
    {
        let s = EmbeddedStore::open_with(dir.path(), opts.clone()).unwrap();
        for i in 0..400u32 {
            let t = s.create_trx().unwrap();
            t.set(format!("k{i:04}").as_bytes(), &[9u8; 40]);
            t.atomic_op(b"count", &encode_i64(1), MutationType::Add);
            t.commit().await.unwrap();
        }
        assert!(s.stats().unwrap().segment > 3, "segments did not rotate");
        // Let the last background snapshot finish before dropping its files.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let files = |prefix: &str| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .collect();
        v.sort();
        v
    };
    let snaps = files("snap-");
    assert!(!snaps.is_empty(), "a rotated store has a snapshot");
    assert!(snaps.len() >= 2, "the snapshot before the newest is kept: {snaps:?}");
    // Damage the newest snapshot, then remove it: each time the store comes back from the
    // snapshot before and the log.
    let newest = snaps.last().unwrap().clone();
    let mut data = std::fs::read(&newest).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&newest, &data).unwrap();
    {
        let s = EmbeddedStore::open_with(dir.path(), opts.clone()).unwrap();
        let t = s.create_trx().unwrap();
        assert_eq!(t.get_range(&RangeRequest::prefix(b"k"), true).await.unwrap().len(), 400);
    }
    std::fs::remove_file(&newest).unwrap();
    let s = EmbeddedStore::open_with(dir.path(), opts.clone()).unwrap();
    let t = s.create_trx().unwrap();
    let rows = t.get_range(&RangeRequest::prefix(b"k"), true).await.unwrap();
    assert_eq!(rows.len(), 400, "every acknowledged key is back");
    assert_eq!(decode_i64(&get(&s, b"count").await.unwrap()), 400);
    // And it keeps committing and rotating from there.
    for i in 400..600u32 {
        let t = s.create_trx().unwrap();
        t.set(format!("k{i:04}").as_bytes(), &[9u8; 40]);
        t.commit().await.unwrap();
    }
    drop(s);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = EmbeddedStore::open_with(dir.path(), opts).unwrap();
    let t = s.create_trx().unwrap();
    assert_eq!(t.get_range(&RangeRequest::prefix(b"k"), true).await.unwrap().len(), 600);
}

fn only_log(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("wal-"))
        .unwrap()
}

/// A store in `dir` with one commit (`kept` = `yes`), closed; where its log ends.
async fn commit_kept(dir: &std::path::Path) -> u64 {
    let s = EmbeddedStore::open(dir).unwrap();
    let t = s.create_trx().unwrap();
    t.set(b"kept", b"yes");
    t.commit().await.unwrap();
    s.stats().unwrap().committed_len
}

fn write_at(path: &std::path::Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
    f.sync_all().unwrap();
}

/// A record cut short where the log ends (a writer killed mid-append) is zeroed at open;
/// the records written over it next are read back, nothing of the torn one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_log_tail_is_cut_off_and_committed_data_kept() {
    let dir = tempfile::tempdir().unwrap();
    let end = commit_kept(dir.path()).await;
    let log = only_log(dir.path());
    // A header announcing 256 bytes, a wrong checksum and 200 bytes of body: longer
    // than the record written over it next.
    let mut torn = vec![0x00, 1, 0, 0, 0xde, 0xad, 0xbe, 0xef];
    torn.extend_from_slice(&[0x5a; 200]);
    write_at(&log, end, &torn);
    let s = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(get(&s, b"kept").await.as_deref(), Some(&b"yes"[..]));
    let t = s.create_trx().unwrap();
    t.set(b"after", b"1");
    t.commit().await.unwrap();
    let end = s.stats().unwrap().committed_len;
    drop(s);
    let data = std::fs::read(&log).unwrap();
    assert!(data[end as usize..].iter().all(|b| *b == 0), "bytes of the torn record remain");
    let s = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(get(&s, b"after").await.as_deref(), Some(&b"1"[..]));
}

/// After a power loss, sectors of an unsynced write may land without the ones before
/// them: the log ends at a zero header with stray bytes further on. Opening the store
/// zeroes them, so that records written later never run into them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_bytes_past_the_end_of_the_log_are_zeroed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let end = commit_kept(dir.path()).await;
    let log = only_log(dir.path());
    let len = std::fs::metadata(&log).unwrap().len();
    assert!(len >= end + 8192, "the log is not extended ahead of its records: {len} bytes");
    write_at(&log, end + 4096, &[0x5a; 512]);
    let s = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(get(&s, b"kept").await.as_deref(), Some(&b"yes"[..]));
    drop(s);
    let data = std::fs::read(&log).unwrap();
    assert!(data[end as usize..].iter().all(|b| *b == 0), "stray bytes past the log remain");
}

/// The log on disk tells every write under a prefix, in commit order, even writes cleared
/// since (as a relay clears published outbox entries); once rotations have deleted old
/// segments it says from which version on it is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_history_lists_every_write_under_a_prefix() {
    for segment_bytes_max in [1 << 20, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let opts = EmbeddedOptions { segment_bytes_max, ..EmbeddedOptions::default() };
        let store = EmbeddedStore::open_with(dir.path(), opts).unwrap();
        let mut versions = Vec::new();
        for i in 0..200u32 {
            let t = store.create_trx().unwrap();
            t.set(format!("out/{i:04}").as_bytes(), &i.to_le_bytes());
            t.set(format!("other/{i:04}").as_bytes(), &[0u8; 64]);
            if i % 3 == 0 {
                t.clear(format!("out/{:04}", i / 2).as_bytes());
            }
            versions.push(t.commit().await.unwrap().version);
        }
        // Let a snapshot started by the last rotation finish (and delete old segments).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let h = tessera_store::embedded::log_history(dir.path(), b"out/", b"out0").unwrap();
        let expected: Vec<(usize, u64)> = versions
            .iter()
            .enumerate()
            .filter(|(_, v)| **v > h.since_version)
            .map(|(i, v)| (i, *v))
            .collect();
        let sets: Vec<_> = h.writes.iter().filter(|w| w.value.is_some()).collect();
        assert_eq!(sets.len(), expected.len());
        for (w, (i, v)) in sets.iter().zip(&expected) {
            assert_eq!(w.key.as_ref(), format!("out/{i:04}").as_bytes());
            assert_eq!(w.version, *v);
        }
        assert!(h.writes.iter().all(|w| w.key.starts_with(b"out/")));
        if segment_bytes_max == 1 << 20 {
            assert_eq!(h.since_version, 0);
            assert_eq!(h.writes.iter().filter(|w| w.value.is_none()).count(), 67);
        } else {
            assert!(h.since_version > 0, "tiny segments were rotated and deleted");
        }
    }
}
