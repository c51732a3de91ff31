//! The simulator's durable journal: one JSON record per line, appended and fsynced before
//! the response that depends on it is sent, replayed at start.
//!
//! A dedicated thread does the writing and batches whatever records queued up while the
//! previous `fdatasync` ran (group commit), so concurrent requests share one sync.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::state::{EventRec, Intent, RefundRec};

/// One state change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "rec", rename_all = "snake_case")]
pub(crate) enum Record {
    /// The full intent after a change (the last one wins on replay).
    Intent(Box<Intent>),
    Refund(RefundRec),
    /// The response saved for an idempotency key.
    Idem {
        key: String,
        fingerprint: String,
        status: u16,
        body: String,
    },
    Event(EventRec),
    /// An event reached (or gave up on) an endpoint.
    Delivery {
        event_id: String,
        url: String,
        delivered: bool,
    },
}

type Batch = (Vec<Record>, tokio::sync::oneshot::Sender<Result<(), String>>);

/// The writer side of the journal; `None` for a simulator that keeps nothing (in process,
/// for the deterministic simulation, where a writer thread would race virtual time).
#[derive(Debug, Clone)]
pub(crate) struct Journal {
    tx: Option<mpsc::Sender<Batch>>,
}

impl Journal {
    /// Reads every record in `path` (creating it if missing), dropping a torn last line,
    /// and starts the writer.
    pub(crate) fn open(path: &Path) -> anyhow::Result<(Journal, Vec<Record>)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("open journal {}", path.display()))?;
        let records = replay(&mut file, path)?;
        let (tx, rx) = mpsc::channel::<Batch>();
        let path_buf = path.to_owned();
        std::thread::Builder::new()
            .name("paysim-journal".into())
            .spawn(move || writer(file, path_buf, rx))
            .context("start journal writer")?;
        Ok((Journal { tx: Some(tx) }, records))
    }

    /// Appends `records` and resolves once they are on disk.
    /// A journal that keeps nothing.
    pub(crate) fn none() -> Journal {
        Journal { tx: None }
    }

    pub(crate) async fn append(&self, records: Vec<Record>) -> anyhow::Result<()> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        if records.is_empty() {
            return Ok(());
        }
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tx.send((records, done_tx)).map_err(|_| anyhow::anyhow!("journal writer stopped"))?;
        match done_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!("append to journal: {e}")),
            Err(_) => Err(anyhow::anyhow!("journal writer stopped")),
        }
    }
}

fn replay(file: &mut File, path: &Path) -> anyhow::Result<Vec<Record>> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::new(&*file);
    let mut records = Vec::new();
    let mut good_len = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        let complete = line.ends_with('\n');
        match serde_json::from_str::<Record>(line.trim_end()) {
            Ok(r) if complete => {
                records.push(r);
                good_len += n as u64;
            }
            _ => {
                // Only the last line can be torn by a crash mid-write. Anything after it
                // means the file is damaged, which we must not paper over.
                let mut rest = String::new();
                std::io::Read::read_to_string(&mut reader, &mut rest)?;
                anyhow::ensure!(
                    rest.trim().is_empty(),
                    "journal {} is corrupt at byte {good_len}",
                    path.display()
                );
                tracing::warn!(offset = good_len, "dropping a torn last journal record");
                break;
            }
        }
    }
    drop(reader);
    file.set_len(good_len).context("truncate torn journal tail")?;
    Ok(records)
}

fn writer(mut file: File, path: PathBuf, rx: mpsc::Receiver<Batch>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let started = Instant::now();
        let result = write_batch(&mut file, &batch);
        metrics::histogram!("tessera_payments_sim_journal_sync_seconds")
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::error!(path = %path.display(), "failed to append to the journal: {e:#}");
        }
        for (_, done) in batch {
            let _ = done.send(result.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")));
        }
    }
}

fn write_batch(file: &mut File, batch: &[Batch]) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    for (records, _) in batch {
        for r in records {
            serde_json::to_writer(&mut buf, r)?;
            buf.push(b'\n');
        }
    }
    file.write_all(&buf)?;
    file.sync_data()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replays_what_was_appended_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        {
            let (j, recs) = Journal::open(&path).unwrap();
            assert!(recs.is_empty());
            j.append(vec![Record::Idem {
                key: "k".into(),
                fingerprint: "f".into(),
                status: 200,
                body: "{}".into(),
            }])
            .await
            .unwrap();
        }
        // A crash mid-write leaves half a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"rec\":\"idem\",\"key\":\"k2\"").unwrap();
        drop(f);
        let (j, recs) = Journal::open(&path).unwrap();
        assert_eq!(recs.len(), 1);
        j.append(vec![Record::Delivery {
            event_id: "evt".into(),
            url: "u".into(),
            delivered: true,
        }])
        .await
        .unwrap();
        drop(j);
        let (_j, recs) = Journal::open(&path).unwrap();
        assert_eq!(recs.len(), 2, "the torn tail was cut before the next append");
    }

    #[test]
    fn refuses_a_journal_damaged_in_the_middle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        std::fs::write(
            &path,
            "garbage\n{\"rec\":\"delivery\",\"event_id\":\"e\",\"url\":\"u\",\"delivered\":true}\n",
        )
        .unwrap();
        assert!(Journal::open(&path).is_err());
    }
}
