//! `tessera-store-stress <dir> <writer-id> <count> [segment-bytes]`: drives an embedded
//! store from a separate process and prints `ack <n>` after each durable commit, so a test
//! can kill it with SIGKILL mid-load and check that every acknowledged commit survived.

use std::io::Write as _;
use std::process::ExitCode;

use tessera_store::embedded::{EmbeddedOptions, EmbeddedStore};
use tessera_store::{MutationType, Store, Transaction, encode_i64};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [dir, id, count, segment @ ..] if segment.len() <= 1 => {
            match (id.parse(), count.parse(), segment.first().map(|s| s.parse()).transpose()) {
                (Ok(id), Ok(count), Ok(segment)) => Some((dir.to_string(), id, count, segment)),
                _ => None,
            }
        }
        _ => None,
    };
    let Some((dir, id, count, segment)) = parsed else {
        eprintln!("usage: tessera-store-stress <dir> <writer-id> <count> [segment-bytes]");
        return ExitCode::from(2);
    };
    match stress(&dir, id, count, segment).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Commits `count` transactions, each writing key `w<id>/<n>` and adding 1 to a shared
/// counter, with 16 in flight at once; prints `ack <n>` once each is durable. Small
/// `segment_bytes` make the log rotate (and snapshots run) all the time.
async fn stress(
    dir: &str,
    id: u32,
    count: u64,
    segment_bytes: Option<u64>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut opts = EmbeddedOptions::default();
    if let Some(b) = segment_bytes {
        opts.segment_bytes_max = b;
    }
    let store = EmbeddedStore::open_with(dir, opts)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        let tx = tx.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= count {
                    return Ok::<_, tessera_store::StoreError>(());
                }
                let t = store.create_trx()?;
                t.set(format!("w{id}/{n:010}").as_bytes(), &n.to_le_bytes());
                t.atomic_op(b"counter", &encode_i64(1), MutationType::Add);
                t.commit().await?;
                let _ = tx.send(n);
            }
        }));
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    while let Some(n) = rx.recv().await {
        writeln!(out, "ack {n}")?;
        out.flush()?;
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
