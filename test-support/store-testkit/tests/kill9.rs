//! Crash tests of the embedded store across processes: writers (`tessera-store-stress`)
//! killed with SIGKILL mid-load lose no acknowledged commit.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tessera_store::embedded::EmbeddedStore;
use tessera_store::{RangeRequest, Store as _, Transaction as _, decode_i64};

/// Two writer processes load the store; both are killed with SIGKILL mid-load. Every
/// commit they acknowledged is there after reopening, and each commit is all or nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commits_survive_kill_9_of_writer_processes() {
    kill_9_writers(None).await;
}

/// The same with 32 KiB log segments: both processes rotate and write snapshots in the
/// background all the time, so the kill lands mid-snapshot, mid-rotation or mid-commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commits_survive_kill_9_while_segments_rotate() {
    kill_9_writers(Some(32 * 1024)).await;
}

async fn kill_9_writers(segment_bytes: Option<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_tessera-store-stress");
    let mut children = Vec::new();
    for id in 0..2 {
        let mut args = vec![dir.path().display().to_string(), id.to_string(), "1000000".into()];
        args.extend(segment_bytes.map(|b| b.to_string()));
        let child = Command::new(bin)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        children.push((id, child));
    }
    let mut readers = Vec::new();
    for (id, child) in children.iter_mut() {
        let stdout = child.stdout.take().unwrap();
        let id = *id;
        readers.push(std::thread::spawn(move || {
            let mut acked = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("ack ") {
                    acked.push((id, n.parse::<u64>().unwrap()));
                }
            }
            acked
        }));
    }
    // Let both writers get going, then kill them without warning.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (_, child) in children.iter_mut() {
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let mut acked = Vec::new();
    for r in readers {
        acked.extend(r.join().unwrap());
    }
    assert!(acked.len() > 100, "writers made too little progress: {}", acked.len());

    if segment_bytes.is_some() {
        let segments = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("snap-"))
            .count();
        assert!(segments > 0, "the writers never rotated the log");
    }
    let s = EmbeddedStore::open(dir.path()).unwrap();
    let t = s.create_trx().unwrap();
    let rows = t.get_range(&RangeRequest::prefix(b"w"), true).await.unwrap();
    let present: BTreeSet<Vec<u8>> = rows.iter().map(|(k, _)| k.to_vec()).collect();
    for (id, n) in &acked {
        let key = format!("w{id}/{n:010}").into_bytes();
        assert!(present.contains(&key), "acknowledged commit w{id}/{n} was lost");
    }
    // Each transaction wrote its key and bumped the counter together.
    let counter = decode_i64(&t.get(b"counter", true).await.unwrap().unwrap());
    assert_eq!(counter as usize, present.len(), "a commit was applied partially");
    eprintln!(
        "acked={} present={} (present may exceed acked: unacknowledged commits that landed)",
        acked.len(),
        present.len()
    );
}
