//! One conformance suite for every backend: the behaviour of FoundationDB that Tessera's
//! inventory relies on. Each check takes a store and a key prefix of its own (so a shared
//! FoundationDB cluster can run them side by side) and panics with a message on failure.
//!
//! [`conformance_tests!`](crate::conformance_tests) expands to one `#[tokio::test]` per check
//! for a backend constructor.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tessera_store::{
    MutationType, RangeRequest, Store, StoreError, Transaction, TrxError, decode_i64, encode_i64,
    key_after, run, versionstamped_key,
};

fn k(prefix: &[u8], s: &str) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

async fn put<S: Store>(store: &S, key: &[u8], value: &[u8]) {
    let t = store.create_trx().expect("create trx");
    t.set(key, value);
    t.commit().await.expect("commit");
}

async fn read<S: Store>(store: &S, key: &[u8]) -> Option<Vec<u8>> {
    let t = store.create_trx().expect("create trx");
    t.get(key, false).await.expect("get").map(|b| b.to_vec())
}

/// Writes are visible to later transactions; clears remove; reads of absent keys are empty.
pub async fn point_reads_and_writes<S: Store>(store: &S, prefix: &[u8]) {
    assert_eq!(read(store, &k(prefix, "a")).await, None);
    put(store, &k(prefix, "a"), b"1").await;
    assert_eq!(read(store, &k(prefix, "a")).await.as_deref(), Some(&b"1"[..]));
    let t = store.create_trx().unwrap();
    t.clear(&k(prefix, "a"));
    t.commit().await.unwrap();
    assert_eq!(read(store, &k(prefix, "a")).await, None);
    // A read-only transaction commits nothing.
    let t = store.create_trx().unwrap();
    let _ = t.get(&k(prefix, "a"), false).await.unwrap();
    assert_eq!(t.commit().await.unwrap().version, 0);
}

/// A transaction reads its own writes, in point and range reads, including clears,
/// cleared ranges and atomic operations on top of stored values.
pub async fn reads_its_own_writes<S: Store>(store: &S, prefix: &[u8]) {
    for (key, v) in [("b", "1"), ("c", "2"), ("d", "3"), ("n", "")] {
        put(store, &k(prefix, key), v.as_bytes()).await;
    }
    put(store, &k(prefix, "n"), &encode_i64(10)).await;
    let t = store.create_trx().unwrap();
    t.set(&k(prefix, "a"), b"0");
    t.clear(&k(prefix, "c"));
    t.set(&k(prefix, "e"), b"4");
    t.atomic_op(&k(prefix, "n"), &encode_i64(5), MutationType::Add);
    assert_eq!(t.get(&k(prefix, "a"), false).await.unwrap().as_deref(), Some(&b"0"[..]));
    assert_eq!(t.get(&k(prefix, "c"), false).await.unwrap(), None);
    assert_eq!(decode_i64(&t.get(&k(prefix, "n"), false).await.unwrap().unwrap()), 15);
    let rows =
        t.get_range(&RangeRequest::new(k(prefix, "a"), k(prefix, "f")), false).await.unwrap();
    let keys: Vec<_> = rows.iter().map(|(key, _)| key[prefix.len()..].to_vec()).collect();
    assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec(), b"d".to_vec(), b"e".to_vec()]);
    t.clear_range(&k(prefix, "a"), &k(prefix, "c"));
    t.set(&k(prefix, "b"), b"again");
    let rows =
        t.get_range(&RangeRequest::new(k(prefix, "a"), k(prefix, "f")), false).await.unwrap();
    let keys: Vec<_> = rows.iter().map(|(key, _)| key[prefix.len()..].to_vec()).collect();
    assert_eq!(keys, vec![b"b".to_vec(), b"d".to_vec(), b"e".to_vec()]);
    let rows = t
        .get_range(&RangeRequest::new(k(prefix, "a"), k(prefix, "f")).reverse(true).limit(2), false)
        .await
        .unwrap();
    let keys: Vec<_> = rows.iter().map(|(key, _)| key[prefix.len()..].to_vec()).collect();
    assert_eq!(keys, vec![b"e".to_vec(), b"d".to_vec()]);
    t.commit().await.unwrap();
    assert_eq!(read(store, &k(prefix, "b")).await.as_deref(), Some(&b"again"[..]));
    assert_eq!(read(store, &k(prefix, "a")).await, None);
    assert_eq!(decode_i64(&read(store, &k(prefix, "n")).await.unwrap()), 15);
}

/// Range reads are ordered, honour limits and reverse, and stay inside their bounds.
pub async fn range_reads_are_ordered<S: Store>(store: &S, prefix: &[u8]) {
    let t = store.create_trx().unwrap();
    for i in (0..50u32).rev() {
        t.set(&k(prefix, &format!("r{i:03}")), &i.to_le_bytes());
    }
    t.set(&k(prefix, "s"), b"outside");
    t.commit().await.unwrap();
    let t = store.create_trx().unwrap();
    let all = t.get_range(&RangeRequest::prefix(&k(prefix, "r")), true).await.unwrap();
    assert_eq!(all.len(), 50);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "range is not ordered");
    let first = t.get_range(&RangeRequest::prefix(&k(prefix, "r")).limit(3), true).await.unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(&first[0].0[prefix.len()..], b"r000");
    let last = t
        .get_range(&RangeRequest::prefix(&k(prefix, "r")).limit(2).reverse(true), true)
        .await
        .unwrap();
    assert_eq!(&last[0].0[prefix.len()..], b"r049");
    assert_eq!(&last[1].0[prefix.len()..], b"r048");
    let mid =
        t.get_range(&RangeRequest::new(k(prefix, "r010"), k(prefix, "r013")), true).await.unwrap();
    assert_eq!(mid.len(), 3);
}

/// A transaction whose read was overwritten by a concurrent commit does not commit; a
/// snapshot read adds no conflict.
pub async fn conflicting_writes_are_refused<S: Store>(store: &S, prefix: &[u8]) {
    put(store, &k(prefix, "x"), b"0").await;
    let t1 = store.create_trx().unwrap();
    let t_snap = store.create_trx().unwrap();
    assert_eq!(t1.get(&k(prefix, "x"), false).await.unwrap().as_deref(), Some(&b"0"[..]));
    let _ = t_snap.get(&k(prefix, "x"), true).await.unwrap();
    put(store, &k(prefix, "x"), b"1").await;
    t1.set(&k(prefix, "y"), b"from t1");
    t_snap.set(&k(prefix, "z"), b"from snapshot reader");
    assert!(matches!(t1.commit().await, Err(StoreError::Conflict)));
    t_snap.commit().await.expect("snapshot reads must not conflict");
    assert_eq!(read(store, &k(prefix, "y")).await, None, "a refused commit changed data");
    assert_eq!(read(store, &k(prefix, "z")).await.as_deref(), Some(&b"from snapshot reader"[..]));

    // An explicit read conflict key behaves like a read.
    let t2 = store.create_trx().unwrap();
    let _ = t2.read_version().await.unwrap();
    t2.add_read_conflict_key(&k(prefix, "x"));
    put(store, &k(prefix, "x"), b"2").await;
    t2.set(&k(prefix, "y"), b"t2");
    assert!(matches!(t2.commit().await, Err(StoreError::Conflict)));
}

/// Range reads conflict with inserts into the part of the range they read (phantoms), and
/// not with writes past where a limited read stopped.
pub async fn range_reads_catch_phantoms<S: Store>(store: &S, prefix: &[u8]) {
    put(store, &k(prefix, "p1"), b"").await;
    put(store, &k(prefix, "p5"), b"").await;
    let t = store.create_trx().unwrap();
    let rows =
        t.get_range(&RangeRequest::new(k(prefix, "p0"), k(prefix, "p9")), false).await.unwrap();
    assert_eq!(rows.len(), 2);
    put(store, &k(prefix, "p3"), b"phantom").await;
    t.set(&k(prefix, "q"), b"");
    assert!(matches!(t.commit().await, Err(StoreError::Conflict)), "phantom insert not detected");

    let t = store.create_trx().unwrap();
    let rows = t
        .get_range(&RangeRequest::new(k(prefix, "p0"), k(prefix, "p9")).limit(1), false)
        .await
        .unwrap();
    assert_eq!(&rows[0].0[prefix.len()..], b"p1");
    put(store, &k(prefix, "p7"), b"beyond the limit").await;
    t.set(&k(prefix, "q"), b"");
    t.commit().await.expect("a write past a limited read's end must not conflict");
}

/// Reads inside one transaction see one snapshot, whatever commits meanwhile.
pub async fn transactions_read_a_consistent_snapshot<S: Store>(store: &S, prefix: &[u8]) {
    put(store, &k(prefix, "s1"), b"old").await;
    let t = store.create_trx().unwrap();
    assert_eq!(t.get(&k(prefix, "s1"), true).await.unwrap().as_deref(), Some(&b"old"[..]));
    put(store, &k(prefix, "s1"), b"new").await;
    put(store, &k(prefix, "s2"), b"new").await;
    assert_eq!(t.get(&k(prefix, "s1"), true).await.unwrap().as_deref(), Some(&b"old"[..]));
    assert_eq!(t.get(&k(prefix, "s2"), true).await.unwrap(), None);
    // A transaction started after a commit was acknowledged sees it.
    assert_eq!(read(store, &k(prefix, "s2")).await.as_deref(), Some(&b"new"[..]));
}

/// Atomic add, max, min and compare-and-clear, and concurrent adds never lose an update.
pub async fn atomic_operations<S: Store>(store: &S, prefix: &[u8]) {
    let key = k(prefix, "counter");
    let tasks = 8;
    let per_task = 25;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let store = store.clone();
        let key = key.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..per_task {
                let t = store.create_trx().unwrap();
                t.atomic_op(&key, &encode_i64(1), MutationType::Add);
                t.commit().await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(decode_i64(&read(store, &key).await.unwrap()), (tasks * per_task) as i64);

    let m = k(prefix, "max");
    for (op, v) in [(MutationType::Max, 5u64), (MutationType::Max, 3), (MutationType::Max, 9)] {
        let t = store.create_trx().unwrap();
        t.atomic_op(&m, &v.to_le_bytes(), op);
        t.commit().await.unwrap();
    }
    assert_eq!(read(store, &m).await.unwrap(), 9u64.to_le_bytes().to_vec());
    let t = store.create_trx().unwrap();
    t.atomic_op(&m, &4u64.to_le_bytes(), MutationType::Min);
    t.commit().await.unwrap();
    assert_eq!(read(store, &m).await.unwrap(), 4u64.to_le_bytes().to_vec());

    let c = k(prefix, "cac");
    put(store, &c, b"v").await;
    let t = store.create_trx().unwrap();
    t.atomic_op(&c, b"other", MutationType::CompareAndClear);
    t.commit().await.unwrap();
    assert_eq!(read(store, &c).await.as_deref(), Some(&b"v"[..]));
    let t = store.create_trx().unwrap();
    t.atomic_op(&c, b"v", MutationType::CompareAndClear);
    t.commit().await.unwrap();
    assert_eq!(read(store, &c).await, None);
}

/// Read-modify-write through [`run`] under contention loses no update.
pub async fn retry_loop_serializes_read_modify_write<S: Store>(store: &S, prefix: &[u8]) {
    let key = Arc::new(k(prefix, "rmw"));
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let key = key.clone();
        let attempts = attempts.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..20 {
                run(&store, |t, _| {
                    let key = key.clone();
                    let attempts = attempts.clone();
                    async move {
                        attempts.fetch_add(1, Ordering::Relaxed);
                        let v = t.get(&key, false).await?.map(|b| decode_i64(&b)).unwrap_or(0);
                        tokio::task::yield_now().await;
                        t.set(&key, &encode_i64(v + 1));
                        Ok::<_, TrxError<()>>(())
                    }
                })
                .await
                .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(decode_i64(&read(store, &key).await.unwrap()), 160);
    assert!(attempts.load(Ordering::Relaxed) >= 160);
}

/// Versionstamped keys are unique and ordered by commit, and match the commit's stamp.
pub async fn versionstamps_order_commits<S: Store>(store: &S, prefix: &[u8]) {
    let mut stamps = Vec::new();
    for i in 0..5u8 {
        let t = store.create_trx().unwrap();
        let mut key = k(prefix, "log/");
        let offset = key.len() as u32;
        key.extend_from_slice(&[0u8; 10]);
        key.push(i);
        t.atomic_op(&versionstamped_key(key, offset), &[i], MutationType::SetVersionstampedKey);
        let info = t.commit().await.unwrap();
        stamps.push(info.versionstamp);
    }
    let t = store.create_trx().unwrap();
    let rows = t.get_range(&RangeRequest::prefix(&k(prefix, "log/")), true).await.unwrap();
    assert_eq!(rows.len(), 5);
    let start = prefix.len() + 4;
    for (i, (key, value)) in rows.iter().enumerate() {
        assert_eq!(
            &key[start..start + 10],
            &stamps[i][..],
            "key carries the commit's versionstamp"
        );
        assert_eq!(value.as_ref(), &[i as u8]);
    }
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "versionstamps must increase");
}

/// FoundationDB's size limits are enforced and a refused transaction changes nothing.
pub async fn limits_are_enforced<S: Store>(store: &S, prefix: &[u8]) {
    let t = store.create_trx().unwrap();
    t.set(&vec![b'k'; tessera_store::limits::KEY_SIZE_MAX + 1], b"v");
    assert!(matches!(t.commit().await, Err(StoreError::KeyTooLarge(_))));
    let t = store.create_trx().unwrap();
    t.set(&k(prefix, "big"), &vec![0u8; tessera_store::limits::VALUE_SIZE_MAX + 1]);
    assert!(matches!(t.commit().await, Err(StoreError::ValueTooLarge(_))));
    assert_eq!(read(store, &k(prefix, "big")).await, None);
    let t = store.create_trx().unwrap();
    let value = vec![7u8; 90_000];
    for i in 0..120 {
        t.set(&k(prefix, &format!("huge{i:04}")), &value);
    }
    assert!(matches!(t.commit().await, Err(StoreError::TransactionTooLarge(_))));
    assert_eq!(read(store, &k(prefix, "huge0000")).await, None);
    // Exactly at the limits is fine.
    let t = store.create_trx().unwrap();
    let mut key = k(prefix, "edge");
    key.resize(tessera_store::limits::KEY_SIZE_MAX, b'e');
    t.set(&key, &vec![1u8; tessera_store::limits::VALUE_SIZE_MAX]);
    t.commit().await.unwrap();
}

/// A transaction older than five seconds cannot commit.
pub async fn old_transactions_are_refused<S: Store>(store: &S, prefix: &[u8]) {
    let t = store.create_trx().unwrap();
    let _ = t.get(&k(prefix, "old"), false).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5_200)).await;
    t.set(&k(prefix, "old"), b"late");
    let r = t.commit().await;
    assert!(matches!(r, Err(StoreError::TooOld)), "got {r:?}");
    assert_eq!(read(store, &k(prefix, "old")).await, None);
}

/// `key_after` and prefix ranges select what FoundationDB selects.
pub async fn key_selectors_match_foundationdb<S: Store>(store: &S, prefix: &[u8]) {
    put(store, &k(prefix, "ka"), b"").await;
    put(store, &k(prefix, "ka\0"), b"").await;
    let t = store.create_trx().unwrap();
    let rows = t
        .get_range(&RangeRequest::new(key_after(&k(prefix, "ka")), k(prefix, "kb")), true)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(&rows[0].0[prefix.len()..], b"ka\0");
}

/// Expands to one `#[tokio::test]` per conformance check for a backend. `$make` is a
/// future of `(store, key_prefix)`; attributes after it go on every test, e.g. to report
/// the checks as ignored where the backend is not available:
///
/// ```ignore
/// tessera_store_testkit::conformance_tests!(memory, async { (MemoryStore::new(), b"conf/".to_vec()) });
/// tessera_store_testkit::conformance_tests!(fdb, fdb_store(),
///     #[cfg_attr(not(fdb_cluster), ignore = "skipped: FDB_CLUSTER_FILE is not set")]);
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($name:ident, $make:expr $(, #[$attr:meta])* $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            macro_rules! check {
                ($check:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    $(#[$attr])*
                    async fn $check() {
                        let (store, prefix) = $make.await;
                        $crate::conformance::$check(&store, &prefix).await;
                    }
                };
            }
            check!(point_reads_and_writes);
            check!(reads_its_own_writes);
            check!(range_reads_are_ordered);
            check!(conflicting_writes_are_refused);
            check!(range_reads_catch_phantoms);
            check!(transactions_read_a_consistent_snapshot);
            check!(atomic_operations);
            check!(retry_loop_serializes_read_modify_write);
            check!(versionstamps_order_commits);
            check!(limits_are_enforced);
            check!(old_transactions_are_refused);
            check!(key_selectors_match_foundationdb);
        }
    };
}
