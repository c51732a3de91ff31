//! `tessera`: the operator CLI (see the library docs for the commands).

use clap::Parser as _;
use tessera_cli::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    #[allow(clippy::disallowed_methods, reason = "a CLI shows ages relative to the wall clock")]
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    match run(&cli, now_ms).await {
        Ok(out) => print!("{out}"),
        Err(e) => {
            let mut msg = format!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{msg}");
            std::process::exit(e.exit_code());
        }
    }
}
