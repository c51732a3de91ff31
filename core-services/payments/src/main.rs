//! `tessera-paysim`: the local payment provider simulator (see `tessera_payments::sim`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tessera_common::{SeededRng, SystemClock};
use tessera_payments::sim::{self, SimConfig};

#[derive(Debug, Parser)]
#[command(name = "tessera-paysim", about = "A local stand-in for the card payment provider")]
struct Args {
    /// Config file (TOML); `TESSERA_PAYSIM__<KEY>` variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (config, ignored): (SimConfig, _) =
        tessera_runtime::config::load("paysim", args.config.as_deref())?;
    let _telemetry = tessera_runtime::telemetry::init("tessera-paysim", &config.telemetry)?;
    for key in ignored {
        tracing::warn!(key, "ignoring an unknown configuration key");
    }
    tessera_runtime::metrics::install();
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let simulator =
        sim::Simulator::open(config.clone(), Arc::new(SystemClock), SeededRng::new(config.seed))
            .context("open the simulator")?;
    tracing::info!(%addr, journal = %config.journal_path.display(), webhooks = config.webhooks.len(), "payment simulator listening");
    sim::serve(simulator, listener, tessera_runtime::http::shutdown_signal()).await
}
