//! [`MemoryStore`]: the engine without disk. Same semantics as the embedded store
//! (MVCC, conflicts, atomic ops, versionstamps, limits) but nothing survives the process.
//! For the deterministic simulator and quick tests only; never the product path.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::local::{Host, LocalTrx};
use crate::mvcc::{CommitRequest, Engine, versionstamp};
use crate::wal::RecordWriter;
use crate::{CommitInfo, Store, StoreError};

/// A non-durable in-memory store.
#[derive(Clone, Debug)]
pub struct MemoryStore(Arc<MemoryHost>);

#[derive(Debug)]
pub struct MemoryHost {
    engine: Engine,
    commit_lock: Mutex<()>,
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore(Arc::new(MemoryHost { engine: Engine::new(), commit_lock: Mutex::new(()) }))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Host for MemoryHost {
    fn engine(&self) -> &Engine {
        &self.engine
    }

    fn read_version(&self) -> Result<u64, StoreError> {
        Ok(self.engine.visible_version())
    }

    async fn submit(self: Arc<Self>, mut req: CommitRequest) -> Result<CommitInfo, StoreError> {
        let _guard = self.commit_lock.lock();
        let version = self.engine.visible_version() + 1;
        let now = Instant::now();
        // Nothing is logged; the record is only where resolution writes what it applied.
        let mut scratch = Vec::new();
        let mut log = RecordWriter::begin(&mut scratch, version);
        self.engine.resolve_and_apply(&mut req, version, 0, now, &mut log)?;
        self.engine.set_visible(version);
        self.engine.note_applied(version, now);
        Ok(CommitInfo { version, versionstamp: versionstamp(version, 0) })
    }
}

impl Store for MemoryStore {
    type Trx = LocalTrx<MemoryHost>;

    fn create_trx(&self) -> Result<Self::Trx, StoreError> {
        Ok(LocalTrx::new(self.0.clone()))
    }

    fn backend_name(&self) -> &'static str {
        "memory"
    }
}
