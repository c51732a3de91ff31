//! `tessera-edge`: the Tessera edge host binary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use tessera_edge_host::{Edge, EdgeConfig, EdgeOptions, nats, serve};
use tokio::sync::watch;

// Every request allocates and frees request/response buffers, header maps and instance
// bookkeeping from many threads; mimalloc's per-thread free lists make that cheaper than
// glibc malloc (which showed as ~10 % of the edge's profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tessera-edge",
    about = "Serve Tessera's edge components (the same spin.toml as `spin up`)"
)]
struct Cli {
    /// Config file (TOML); `TESSERA_EDGE__<KEY>` variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The Spin manifest (overrides `manifest`).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Fan-facing address (overrides `listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin address for /metrics and /healthz (overrides `admin_listen`).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// NATS server (overrides `nats_url`).
    #[arg(long)]
    nats_url: Option<String>,
    /// Load everything, print components and routes, and exit.
    #[arg(long)]
    check: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (mut config, ignored): (EdgeConfig, _) =
        tessera_runtime::config::load("edge", cli.config.as_deref())?;
    if let Some(m) = cli.manifest {
        config.manifest = m;
    }
    if let Some(l) = cli.listen {
        config.listen = l;
    }
    if let Some(l) = cli.admin_listen {
        config.admin_listen = l;
    }
    if cli.nats_url.is_some() {
        config.nats_url = cli.nats_url;
    }
    let mut telemetry = config.telemetry.clone();
    if !telemetry.log_filter.contains("wasmtime_internal_cache") {
        // Edges sharing a compile cache race to write the same entry, and the loser warns
        // although the entry is there. A cache that truly fails only costs compile time,
        // which the "component ready" line reports per component.
        telemetry.log_filter.push_str(",wasmtime_internal_cache=error");
    }
    let _telemetry = tessera_runtime::telemetry::init("tessera-edge", &telemetry)?;
    for key in ignored {
        tracing::warn!(key = %key, "unknown configuration key ignored");
    }
    tessera_runtime::metrics::install();
    // Like Spin's environment provider: SPIN_VARIABLE_<NAME> sets variable <name>.
    let spin_env: BTreeMap<String, String> =
        std::env::vars().filter(|(k, _)| k.starts_with("SPIN_VARIABLE_")).collect();
    let edge = Edge::new(EdgeOptions {
        manifest: config.manifest.clone(),
        spin_env,
        variables: config.variables.clone(),
        limits: config.limits.clone(),
        pop: config.pop.clone(),
        compile_cache_dir: config.compile_cache_dir.clone(),
        spin_strict: config.spin_strict,
    })
    .context("start the edge")?;
    if cli.check {
        for (component, route) in edge.public_routes() {
            println!("{route} -> {component}");
        }
        return Ok(());
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let public = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("bind {}", config.admin_listen))?;
    tracing::info!(listen = %public.local_addr()?, admin = %admin.local_addr()?, "tessera-edge listening");
    if let Some(url) = config.nats_url.clone() {
        tokio::spawn(nats::run(url, edge.kv(), stop_rx.clone()));
    }
    let admin_task = tokio::spawn(serve::serve_admin(admin, stop_rx.clone()));
    let public_task =
        tokio::spawn(serve::serve_public(edge, public, stop_rx.clone(), config.shutdown_grace));
    tessera_runtime::http::shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    public_task.await??;
    admin_task.await??;
    Ok(())
}
