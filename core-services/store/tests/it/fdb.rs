//! The conformance suite on a real FoundationDB cluster: the one named by
//! `FDB_CLUSTER_FILE` when the tests were built. Built without it, every check is
//! reported as ignored ("skipped: FDB_CLUSTER_FILE is not set"), never as passed; run with
//! `--ignored` all the same, a check fails saying so. (Without `libfdb_c` this binary
//! cannot be linked with the `fdb` feature at all.)
//!
//! Each check works under a key prefix of its own, unique to the run, so runs sharing a
//! cluster never collide; the prefix is cleared when the check ends, pass or fail.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tessera_store::fdb::{FdbStore, FdbTrx};
use tessera_store::{Store, StoreError, Transaction, prefix_range};

/// An [`FdbStore`] that clears its test prefix when the last handle goes away.
#[derive(Clone, Debug)]
struct ScopedFdb {
    store: FdbStore,
    _cleanup: Arc<ClearPrefixOnDrop>,
}

#[derive(Debug)]
struct ClearPrefixOnDrop {
    store: FdbStore,
    prefix: Vec<u8>,
}

impl Drop for ClearPrefixOnDrop {
    fn drop(&mut self) {
        let Ok(trx) = self.store.create_trx() else { return };
        let (begin, end) = prefix_range(&self.prefix);
        trx.clear_range(&begin, &end);
        // FoundationDB's network thread completes the future, so no runtime is needed.
        if let Err(e) = futures::executor::block_on(trx.commit()) {
            eprintln!(
                "could not clear the test prefix {:?}: {e}",
                String::from_utf8_lossy(&self.prefix)
            );
        }
    }
}

impl Store for ScopedFdb {
    type Trx = FdbTrx;

    fn create_trx(&self) -> Result<FdbTrx, StoreError> {
        self.store.create_trx()
    }

    fn backend_name(&self) -> &'static str {
        self.store.backend_name()
    }
}

/// A prefix no other run or check uses: process, time and a counter.
fn unique_prefix() -> Vec<u8> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("tessera-conformance/{}-{nanos:x}-{n}/", std::process::id()).into_bytes()
}

async fn fdb_store() -> (ScopedFdb, Vec<u8>) {
    let Some(cluster_file) = std::env::var_os("FDB_CLUSTER_FILE") else {
        panic!("FDB_CLUSTER_FILE is not set: the FoundationDB conformance suite needs a cluster");
    };
    let cluster_file = PathBuf::from(cluster_file);
    let store = FdbStore::open(Some(&cluster_file)).unwrap_or_else(|e| {
        panic!("open the FoundationDB cluster in {}: {e}", cluster_file.display())
    });
    let prefix = unique_prefix();
    let cleanup = Arc::new(ClearPrefixOnDrop { store: store.clone(), prefix: prefix.clone() });
    (ScopedFdb { store, _cleanup: cleanup }, prefix)
}

tessera_store_testkit::conformance_tests!(
    fdb_conformance,
    fdb_store(),
    #[cfg_attr(not(fdb_cluster), ignore = "skipped: FDB_CLUSTER_FILE is not set")]
);
