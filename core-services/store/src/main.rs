//! `tessera-store`: inspect an embedded store directory, or drive it from a separate
//! process (the crash tests kill this process with SIGKILL mid-load).
//!
//! ```text
//! tessera-store stat <dir>
//! tessera-store dump <dir> [<hex prefix>]
//! tessera-store stress <dir> <writer-id> <count> [segment-bytes]
//!                                                 # prints "ack <n>" after each durable commit
//! ```

use std::io::Write as _;
use std::process::ExitCode;

use tessera_store::embedded::{EmbeddedOptions, EmbeddedStore};
use tessera_store::{MutationType, RangeRequest, Store, Transaction, encode_i64};

fn usage() -> ExitCode {
    eprintln!(
        "usage: tessera-store stat <dir> | dump <dir> [hex-prefix] | stress <dir> <writer-id> <count> [segment-bytes]"
    );
    ExitCode::from(2)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn printable(b: &[u8]) -> String {
    b.iter()
        .map(
            |&c| if c.is_ascii_graphic() { (c as char).to_string() } else { format!("\\x{c:02x}") },
        )
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["stat", dir] => stat(dir).await,
        ["dump", dir] => dump(dir, "").await,
        ["dump", dir, prefix] => dump(dir, prefix).await,
        ["stress", dir, id, count, segment @ ..] if segment.len() <= 1 => {
            match (id.parse(), count.parse(), segment.first().map(|s| s.parse()).transpose()) {
                (Ok(id), Ok(count), Ok(segment)) => stress(dir, id, count, segment).await,
                _ => return usage(),
            }
        }
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn stat(dir: &str) -> Result<(), Box<dyn std::error::Error>> {
    let store = EmbeddedStore::open(dir)?;
    let s = store.stats()?;
    let t = store.create_trx()?;
    let keys = t.get_range(&RangeRequest::new(vec![], vec![0xff]), true).await?.len();
    println!(
        "version={} segment={} committed_len={} keys={keys}",
        s.version, s.segment, s.committed_len
    );
    Ok(())
}

async fn dump(dir: &str, prefix_hex: &str) -> Result<(), Box<dyn std::error::Error>> {
    let prefix: Vec<u8> = (0..prefix_hex.len() / 2)
        .map(|i| u8::from_str_radix(&prefix_hex[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()?;
    let store = EmbeddedStore::open(dir)?;
    let t = store.create_trx()?;
    let range = if prefix.is_empty() {
        RangeRequest::new(vec![], vec![0xff])
    } else {
        RangeRequest::prefix(&prefix)
    };
    let mut out = std::io::stdout().lock();
    for (k, v) in t.get_range(&range, true).await? {
        writeln!(out, "{} = {} ({} bytes)", printable(&k), hex(&v[..v.len().min(32)]), v.len())?;
    }
    Ok(())
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
