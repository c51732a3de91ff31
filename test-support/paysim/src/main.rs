//! `tessera-paysim`: the local payment provider simulator (see the library, `tessera_paysim`).
//! A development tool: it starts only with `mode = "local"`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tessera_common::{SeededRng, SystemClock};
use tessera_paysim::{self as sim, SimConfig};
use tessera_runtime::config::Checks;

#[derive(Debug, Parser)]
#[command(name = "tessera-paysim", about = "A local stand-in for the card payment provider")]
struct Args {
    /// Config file (TOML); `TESSERA_PAYSIM__<KEY>` variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    tessera_runtime::config::exit_on_error("tessera-paysim", run())
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let loaded = tessera_runtime::config::read::<SimConfig>("paysim", args.config.as_deref())?;
    let config = loaded.config;
    let mut checks = Checks::new(config.mode, &loaded.source);
    checks.production("mode", "tessera-paysim is a development simulator; run it in local mode");
    if config.secret_key.trim().is_empty() {
        checks.error("secret_key", "missing: the API key clients must send");
    }
    for (i, w) in config.webhooks.iter().enumerate() {
        if w.secret.trim().is_empty() {
            checks.error(&format!("webhooks[{i}].secret"), "missing: deliveries must be signed");
        }
    }
    config.tls.check("tls", &mut checks);
    checks.finish()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let _telemetry = tessera_runtime::telemetry::init("tessera-paysim", &config.telemetry)?;
        tessera_runtime::metrics::install();
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let simulator = sim::Simulator::open(
            config.clone(),
            Arc::new(SystemClock),
            SeededRng::new(config.seed),
        )
        .context("open the simulator")?;
        tracing::info!(%addr, tls = config.tls.enabled(), journal = %config.journal_path.display(), webhooks = config.webhooks.len(), "payment simulator listening");
        sim::serve(simulator, listener, tessera_runtime::http::shutdown_signal()).await
    })
}
