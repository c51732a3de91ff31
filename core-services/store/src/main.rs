//! `tessera-store`: inspect an embedded store directory.
//!
//! ```text
//! tessera-store stat <dir>
//! tessera-store dump <dir> [<hex prefix>]
//! ```

use std::io::Write as _;
use std::process::ExitCode;

use tessera_store::embedded::EmbeddedStore;
use tessera_store::{RangeRequest, Store, Transaction};

fn usage() -> ExitCode {
    eprintln!("usage: tessera-store stat <dir> | dump <dir> [hex-prefix]");
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
