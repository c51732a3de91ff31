//! `tessera-edge`: the Tessera edge host binary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Fail wherever Spin would (overrides `spin_strict`; see the edge README).
    #[arg(long)]
    spin_strict: bool,
    /// Load everything, print components and routes, and exit.
    #[arg(long)]
    check: bool,
    /// Load and check the configuration in its mode (without compiling components),
    /// print `configuration ok`, and exit.
    #[arg(long)]
    check_config: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    tessera_runtime::config::exit_on_error("tessera-edge", run().await)
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let loaded = tessera_runtime::config::read::<EdgeConfig>("edge", cli.config.as_deref())?;
    let mut config = loaded.config;
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
    if cli.spin_strict {
        config.spin_strict = true;
    }
    // Like Spin's environment provider: SPIN_VARIABLE_<NAME> sets variable <name>.
    let spin_env: BTreeMap<String, String> =
        std::env::vars().filter(|(k, _)| k.starts_with("SPIN_VARIABLE_")).collect();
    config.check(&loaded.source, &spin_env)?;
    if cli.check_config {
        println!("tessera-edge: configuration ok (mode {})", config.mode);
        return Ok(());
    }
    let mut telemetry = config.telemetry.clone();
    if !telemetry.log_filter.contains("wasmtime_internal_cache") {
        // Edges sharing a compile cache race to write the same entry, and the loser warns
        // although the entry is there. A cache that truly fails only costs compile time,
        // which the "component ready" line reports per component.
        telemetry.log_filter.push_str(",wasmtime_internal_cache=error");
    }
    let _telemetry = tessera_runtime::telemetry::init("tessera-edge", &telemetry)?;
    tessera_runtime::metrics::install();
    tracing::info!(mode = %config.mode, "configuration loaded");
    let variable = |name: &str| {
        spin_env
            .get(&format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase()))
            .or_else(|| config.variables.get(name))
            .filter(|v| !v.trim().is_empty())
            .cloned()
    };
    let watermark_keys = match variable("watermark_keys") {
        Some(spec) => Some(tessera_identity::Keyset::parse(&spec).context("watermark_keys")?),
        None => None,
    };
    let nats_settings = config.nats_url.clone().map(|url| nats::Settings {
        url,
        ca_file: config.nats_ca_file.clone(),
        nkey_seed: Some(config.nats_nkey_seed.expose().trim().to_owned()).filter(|s| !s.is_empty()),
        watermark_keys,
    });
    let edge = Edge::new(EdgeOptions {
        manifest: config.manifest.clone(),
        spin_env,
        variables: config.component_variables(),
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
    if let Some(settings) = nats_settings {
        tokio::spawn(nats::run_with(settings, edge.kv(), stop_rx.clone()));
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
