//! `tessera-router --config <file>`: the region router as its own service.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tessera_common::SystemClock;
use tessera_region_router::{RouterConfig, RouterService};

#[derive(Parser)]
#[command(name = "tessera-router", about = "Tessera region router", version)]
struct Args {
    /// TOML configuration (see `deploy/`); `TESSERA_ROUTER__<KEY>` variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (cfg, ignored): (RouterConfig, _) =
        tessera_runtime::config::load("router", args.config.as_deref())?;
    let _telemetry = tessera_runtime::telemetry::init("tessera-router", &cfg.telemetry)?;
    for key in ignored {
        tracing::warn!(key, "ignoring an unknown configuration key");
    }
    tessera_runtime::metrics::install();
    let addr = cfg.listen_addr()?;
    let service = RouterService::start(cfg, Arc::new(SystemClock)).await?;
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listen on {addr}"))?;
    tracing::info!(%addr, "router.listening");
    tessera_runtime::http::serve(listener, service.app(), tessera_runtime::http::shutdown_signal())
        .await
}
