//! Integration tests of the store backends: the conformance suite on each backend, and
//! the embedded store across handles and processes, through crashes.

mod embedded;
#[cfg(feature = "fdb")]
mod fdb;
mod power_loss;

use tessera_store::embedded::{EmbeddedOptions, EmbeddedStore};
use tessera_store::memory::MemoryStore;

async fn memory() -> (MemoryStore, Vec<u8>) {
    (MemoryStore::new(), b"conf/".to_vec())
}

async fn embedded() -> (EmbeddedStore, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap().keep();
    (EmbeddedStore::open(dir).unwrap(), b"conf/".to_vec())
}

/// The embedded store with tiny segments, so that rotation happens during the suite.
async fn embedded_rotating() -> (EmbeddedStore, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap().keep();
    let opts = EmbeddedOptions { segment_bytes_max: 2048, ..EmbeddedOptions::default() };
    (EmbeddedStore::open_with(dir, opts).unwrap(), b"conf/".to_vec())
}

tessera_store_testkit::conformance_tests!(memory_conformance, memory());
tessera_store_testkit::conformance_tests!(embedded_conformance, embedded());
tessera_store_testkit::conformance_tests!(embedded_rotating_conformance, embedded_rotating());
