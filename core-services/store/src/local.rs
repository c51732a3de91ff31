//! The transaction handle shared by the backends built on the in-memory engine
//! (embedded and memory): reads go to the local [`Engine`], commits to the backend's
//! committer.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::mvcc::{CommitRequest, Engine, TrxBuffer};
use crate::{CommitInfo, KeyValue, MutationType, RangeRequest, StoreError, Transaction};

/// What a backend provides to [`LocalTrx`].
#[allow(unreachable_pub, reason = "sealed: named only through LocalTrx")]
pub trait Host: Send + Sync + 'static {
    fn engine(&self) -> &Engine;
    /// A read version at least as new as every commit acknowledged before the call.
    fn read_version(&self) -> Result<u64, StoreError>;
    /// Resolves, applies and makes durable one transaction.
    fn submit(
        self: Arc<Self>,
        req: CommitRequest,
    ) -> impl Future<Output = Result<CommitInfo, StoreError>> + Send;
}

/// A transaction on a local engine.
pub struct LocalTrx<H: Host> {
    host: Arc<H>,
    buf: Arc<Mutex<TrxBuffer>>,
}

impl<H: Host> Clone for LocalTrx<H> {
    fn clone(&self) -> Self {
        LocalTrx { host: self.host.clone(), buf: self.buf.clone() }
    }
}

impl<H: Host> std::fmt::Debug for LocalTrx<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTrx").finish_non_exhaustive()
    }
}

impl<H: Host> LocalTrx<H> {
    pub(crate) fn new(host: Arc<H>) -> Self {
        LocalTrx { host, buf: Arc::new(Mutex::new(TrxBuffer::new(Instant::now()))) }
    }

    fn version(&self, buf: &mut TrxBuffer) -> Result<u64, StoreError> {
        // Only commits check the transaction's age: a read at a version older than the
        // window fails on its own (the engine no longer has it), and the clock costs more
        // than the read.
        buf.check_open()?;
        match buf.read_version {
            Some(v) => Ok(v),
            None => {
                let v = self.host.read_version()?;
                buf.read_version = Some(v);
                Ok(v)
            }
        }
    }

    fn get_now(&self, key: &[u8], snapshot: bool) -> Result<Option<Bytes>, StoreError> {
        let mut buf = self.buf.lock();
        let version = self.version(&mut buf)?;
        let engine = self.host.engine();
        let hash = crate::mvcc::key_hash(key);
        let v = buf.get_through(key, || engine.get(key, hash, version))?;
        if !snapshot {
            buf.add_point_conflict(hash, key);
        }
        Ok(v)
    }

    fn range_now(&self, req: &RangeRequest, snapshot: bool) -> Result<Vec<KeyValue>, StoreError> {
        let mut buf = self.buf.lock();
        let version = self.version(&mut buf)?;
        let (rows, stopped_at) = buf.range_through(req, self.host.engine(), version)?;
        if !snapshot {
            buf.add_range_conflict(req, stopped_at);
        }
        Ok(rows)
    }
}

impl<H: Host> Transaction for LocalTrx<H> {
    fn get(
        &self,
        key: &[u8],
        snapshot: bool,
    ) -> impl Future<Output = Result<Option<Bytes>, StoreError>> + Send {
        std::future::ready(self.get_now(key, snapshot))
    }

    fn get_range(
        &self,
        range: &RangeRequest,
        snapshot: bool,
    ) -> impl Future<Output = Result<Vec<KeyValue>, StoreError>> + Send {
        std::future::ready(self.range_now(range, snapshot))
    }

    fn set(&self, key: &[u8], value: &[u8]) {
        self.buf.lock().set(key, value);
    }

    fn clear(&self, key: &[u8]) {
        self.buf.lock().clear(key);
    }

    fn clear_range(&self, begin: &[u8], end: &[u8]) {
        self.buf.lock().clear_range(begin, end);
    }

    fn atomic_op(&self, key: &[u8], param: &[u8], op: MutationType) {
        self.buf.lock().atomic_op(key, param, op);
    }

    fn add_read_conflict_range(&self, begin: &[u8], end: &[u8]) {
        self.buf.lock().add_conflict(begin, end);
    }

    fn read_version(&self) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let mut buf = self.buf.lock();
        std::future::ready(self.version(&mut buf))
    }

    fn commit(self) -> impl Future<Output = Result<CommitInfo, StoreError>> + Send {
        let req = {
            let mut buf = self.buf.lock();
            buf.check_usable(Instant::now()).and_then(|()| buf.take_request())
        };
        let host = self.host.clone();
        async move {
            match req? {
                None => Ok(CommitInfo { version: 0, versionstamp: [0; 10] }),
                Some(req) => host.submit(req).await,
            }
        }
    }
}
