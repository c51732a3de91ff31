//! The replicated region-control state: which regions operators drained.
//!
//! One small document ([`ControlDoc`]) with a version that only grows. Every router keeps
//! the newest version it has seen, in memory and in its state file (so a restart with
//! the hub unreachable still knows). Routers share it through a JetStream key-value
//! bucket in the hub's domain: a change is a compare-and-set on the bucket's key, and
//! every router watches the key (and re-reads it every second in case a watch
//! lagged), so a drain reaches every router well within a second.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{kv, stream};
use futures::StreamExt as _;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tessera_api::RegionId;
use tessera_api::ops::RegionMode;
use tokio::sync::watch;

/// The bucket key holding the document.
pub const CONTROL_KEY: &str = "regions";

/// A region's operator-set mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeEntry {
    pub mode: RegionMode,
    pub changed_at_ms: u64,
    /// The operator (token subject) who set it.
    #[serde(default)]
    pub changed_by: String,
}

/// The replicated document. Regions it does not mention are active.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlDoc {
    pub version: u64,
    #[serde(default)]
    pub regions: BTreeMap<RegionId, ModeEntry>,
}

impl ControlDoc {
    pub fn mode(&self, region: &RegionId) -> RegionMode {
        self.regions.get(region).map_or(RegionMode::Active, |e| e.mode)
    }
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError<E> {
    /// The caller's check refused it.
    #[error("change refused")]
    Refused(E),
    /// The shared state cannot be reached, so the change could not be replicated.
    #[error("the replicated region state is unavailable: {0}")]
    Unavailable(String),
}

/// This router's copy of the region-control state and its replication.
#[derive(Debug)]
pub struct ControlPlane {
    current: watch::Sender<Arc<ControlDoc>>,
    file: Option<PathBuf>,
    /// Whether changes must go through the shared bucket (NATS is configured).
    replicated: bool,
    kv: Mutex<Option<kv::Store>>,
}

impl ControlPlane {
    /// Starts from the state file, if there is one.
    pub fn load(file: Option<PathBuf>, replicated: bool) -> anyhow::Result<Arc<Self>> {
        let doc = match &file {
            Some(path) if path.exists() => {
                let text =
                    std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
                serde_json::from_slice(&text)
                    .with_context(|| format!("parse {}", path.display()))?
            }
            _ => ControlDoc::default(),
        };
        let (current, _) = watch::channel(Arc::new(doc));
        Ok(Arc::new(ControlPlane { current, file, replicated, kv: Mutex::new(None) }))
    }

    pub fn current(&self) -> Arc<ControlDoc> {
        self.current.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ControlDoc>> {
        self.current.subscribe()
    }

    /// Adopts `doc` if it is newer than what this router has. Returns whether it did.
    pub fn offer(&self, doc: ControlDoc) -> bool {
        let adopted = self.current.send_if_modified(|cur| {
            if doc.version > cur.version {
                *cur = Arc::new(doc.clone());
                true
            } else {
                false
            }
        });
        if adopted {
            tracing::info!(version = doc.version, "router.control.adopted");
            if let Some(path) = &self.file
                && let Err(e) = persist(path, &doc)
            {
                tracing::warn!("failed to save the region state file, keeping it in memory: {e:#}");
            }
        }
        adopted
    }

    /// Applies `f` to the newest document and replicates the result. `f` returns
    /// `Ok(None)` when nothing needs to change (the document stays as it is).
    pub async fn change<E>(
        &self,
        f: impl Fn(&ControlDoc) -> Result<Option<ControlDoc>, E>,
    ) -> Result<Arc<ControlDoc>, ChangeError<E>> {
        if !self.replicated {
            let base = self.current();
            let Some(mut next) = f(&base).map_err(ChangeError::Refused)? else { return Ok(base) };
            next.version = base.version + 1;
            self.offer(next);
            return Ok(self.current());
        }
        let store = self.kv.lock().clone();
        let Some(store) = store else {
            return Err(ChangeError::Unavailable(
                "not connected to the region state bucket yet".into(),
            ));
        };
        for _ in 0..16 {
            let entry = store
                .entry(CONTROL_KEY)
                .await
                .map_err(|e| ChangeError::Unavailable(e.to_string()))?;
            let (remote, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    (serde_json::from_slice::<ControlDoc>(&e.value).ok(), Some(e.revision))
                }
                Some(e) => (None, Some(e.revision)),
                None => (None, None),
            };
            let local = self.current();
            let base = match remote {
                Some(r) if r.version >= local.version => r,
                _ => (*local).clone(),
            };
            let Some(mut next) = f(&base).map_err(ChangeError::Refused)? else {
                self.offer(base);
                return Ok(self.current());
            };
            next.version = base.version + 1;
            let bytes =
                serde_json::to_vec(&next).map_err(|e| ChangeError::Unavailable(e.to_string()))?;
            let written = match revision {
                Some(rev) => {
                    store.update(CONTROL_KEY, bytes.into(), rev).await.map(|_| ()).map_err(|e| {
                        (e.kind() == kv::UpdateErrorKind::WrongLastRevision, e.to_string())
                    })
                }
                None => {
                    store.create(CONTROL_KEY, bytes.into()).await.map(|_| ()).map_err(|e| {
                        (e.kind() == kv::CreateErrorKind::AlreadyExists, e.to_string())
                    })
                }
            };
            match written {
                Ok(()) => {
                    self.offer(next);
                    return Ok(self.current());
                }
                // Another router changed it first: start again from its version.
                Err((true, _)) => continue,
                Err((false, e)) => return Err(ChangeError::Unavailable(e)),
            }
        }
        Err(ChangeError::Unavailable("too many concurrent changes".into()))
    }

    /// Keeps this router's copy in step with the bucket `bucket` in `domain`, creating the
    /// bucket if needed, until the task is aborted.
    pub fn spawn_replication(
        self: &Arc<Self>,
        client: async_nats::Client,
        domain: String,
        limits: BucketLimits,
    ) -> tokio::task::JoinHandle<()> {
        let bucket = limits.name.clone();
        let this = self.clone();
        tokio::spawn(async move {
            let mut js = async_nats::jetstream::with_domain(client, &domain);
            js.set_timeout(Duration::from_secs(2));
            let mut warned = false;
            loop {
                let store = match bind(&js, &limits).await {
                    Ok(s) => s,
                    Err(e) => {
                        if !warned {
                            tracing::warn!(domain = %domain, bucket = %bucket, "region state bucket unreachable, using the local copy: {e:#}");
                            warned = true;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                warned = false;
                *this.kv.lock() = Some(store.clone());
                if let Err(e) = this.reconcile(&store).await {
                    tracing::debug!("region state reconcile failed: {e:#}");
                }
                let mut watch = match store.watch(CONTROL_KEY).await {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::debug!("region state watch failed, polling instead: {e}");
                        None
                    }
                };
                let mut poll = tokio::time::interval(Duration::from_secs(1));
                poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    let next = async {
                        match watch.as_mut() {
                            Some(w) => w.next().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        item = next => match item {
                            Some(Ok(entry)) => this.offer_entry(&entry),
                            Some(Err(e)) => {
                                tracing::debug!("region state watch error: {e}");
                                watch = None;
                            }
                            None => watch = None,
                        },
                        _ = poll.tick() => {
                            if let Err(e) = this.reconcile(&store).await {
                                tracing::debug!("region state poll failed: {e:#}");
                                if watch.is_none() {
                                    break;
                                }
                            } else if watch.is_none() {
                                watch = store.watch(CONTROL_KEY).await.ok();
                            }
                        }
                    }
                }
            }
        })
    }

    fn offer_entry(&self, entry: &kv::Entry) {
        if entry.operation != kv::Operation::Put {
            return;
        }
        match serde_json::from_slice::<ControlDoc>(&entry.value) {
            Ok(doc) => {
                self.offer(doc);
            }
            Err(e) => tracing::warn!("ignoring an unreadable region state document: {e}"),
        }
    }

    /// Adopts the bucket's document if newer; pushes ours if the bucket is behind (it
    /// was lost or never written).
    async fn reconcile(&self, store: &kv::Store) -> anyhow::Result<()> {
        let entry = store.entry(CONTROL_KEY).await?;
        let remote_version = match &entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let doc: ControlDoc = serde_json::from_slice(&e.value)?;
                let v = doc.version;
                self.offer(doc);
                Some(v)
            }
            _ => None,
        };
        let local = self.current();
        if local.version > remote_version.unwrap_or(0) {
            let bytes = serde_json::to_vec(&*local)?;
            match entry {
                Some(e) => {
                    store.update(CONTROL_KEY, bytes.into(), e.revision).await?;
                }
                None => {
                    store.create(CONTROL_KEY, bytes.into()).await?;
                }
            }
            tracing::info!(version = local.version, "router.control.pushed_local_state");
        }
        Ok(())
    }
}

/// The region-control bucket: its name, copies and size cap.
#[derive(Debug, Clone)]
pub struct BucketLimits {
    pub name: String,
    /// 1 on a single hub server, 3 on the hub cluster.
    pub replicas: usize,
    pub max_bytes: i64,
}

async fn bind(
    js: &async_nats::jetstream::Context,
    limits: &BucketLimits,
) -> anyhow::Result<kv::Store> {
    let bucket = limits.name.as_str();
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    // The bucket's stream, created directly: the client's own `create_key_value` sends
    // settings nats-server 2.9 does not understand. These are the settings of a key-value
    // bucket (one stream `KV_<bucket>` over `$KV.<bucket>.>`).
    let created = js
        .create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("Tessera region-control state (drained regions)".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 5,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            storage: stream::StorageType::File,
            num_replicas: limits.replicas,
            max_bytes: limits.max_bytes,
            ..Default::default()
        })
        .await;
    if let Err(e) = created {
        // Another router may have created it meanwhile; binding below tells.
        tracing::debug!("creating the region state bucket: {e}");
    }
    js.get_key_value(bucket).await.context("bind the region state bucket")
}

/// Writes the state file atomically (write a temporary file, then rename over).
fn persist(path: &Path, doc: &ControlDoc) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(doc)?;
    {
        use std::io::Write as _;
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("rename onto {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(region: &str, version: u64) -> ControlDoc {
        let mut doc = ControlDoc { version, regions: BTreeMap::new() };
        doc.regions.insert(
            RegionId::parse(region).unwrap(),
            ModeEntry { mode: RegionMode::Draining, changed_at_ms: 1, changed_by: "op".into() },
        );
        doc
    }

    #[tokio::test]
    async fn keeps_the_newest_version_and_survives_a_restart_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state").join("router.json");
        let plane = ControlPlane::load(Some(file.clone()), false).unwrap();
        assert_eq!(plane.current().version, 0);
        assert!(plane.offer(drained("us-east", 3)));
        assert!(!plane.offer(drained("eu-west", 2)), "older versions are ignored");
        assert!(!plane.offer(drained("eu-west", 3)), "so are equal ones");
        let again = ControlPlane::load(Some(file), false).unwrap();
        assert_eq!(*again.current(), drained("us-east", 3));
        assert_eq!(
            again.current().mode(&RegionId::parse("us-east").unwrap()),
            RegionMode::Draining
        );
        assert_eq!(again.current().mode(&RegionId::parse("eu-west").unwrap()), RegionMode::Active);
    }

    #[tokio::test]
    async fn local_changes_bump_the_version_and_refusals_change_nothing() {
        let plane = ControlPlane::load(None, false).unwrap();
        let doc = plane.change(|_| Ok::<_, ()>(Some(drained("us-east", 0)))).await.unwrap();
        assert_eq!(doc.version, 1);
        let unchanged = plane.change(|_| Ok::<_, ()>(None)).await.unwrap();
        assert_eq!(unchanged.version, 1);
        let refused = plane.change(|_| Err::<Option<ControlDoc>, _>("no")).await;
        assert!(matches!(refused, Err(ChangeError::Refused("no"))));
        assert_eq!(plane.current().version, 1);
    }
}
