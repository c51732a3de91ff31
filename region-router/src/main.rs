//! `tessera-router --config <file>`: the region router as its own service.
//!
//! `--check-config` loads and checks the configuration in its mode and exits; a problem
//! stops the router with one line per problem and exit status 2.

use std::path::PathBuf;
use std::process::ExitCode;
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
    /// Load and check the configuration in its mode, print `configuration ok`, and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    tessera_runtime::config::exit_on_error("tessera-router", run())
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let loaded = tessera_runtime::config::read::<RouterConfig>("router", args.config.as_deref())?;
    loaded.config.check(&loaded.source)?;
    let cfg = loaded.config;
    if args.check_config {
        println!("tessera-router: configuration ok (mode {})", cfg.mode);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let _telemetry = tessera_runtime::telemetry::init("tessera-router", &cfg.telemetry)?;
        tessera_runtime::metrics::install();
        let addr = cfg.listen_addr()?;
        tracing::info!(mode = %cfg.mode, "configuration loaded");
        let service = RouterService::start(cfg, Arc::new(SystemClock)).await?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen on {addr}"))?;
        tracing::info!(%addr, "router.listening");
        tessera_runtime::http::serve(
            listener,
            service.app(),
            tessera_runtime::http::shutdown_signal(),
        )
        .await
    })
}
