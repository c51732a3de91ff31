//! `tessera-core`: one region's core services.
//!
//! ```text
//! tessera-core --config deploy/production/core.toml
//! tessera-core --config deploy/production/core.toml --check-config
//! ```
//!
//! A configuration problem (an unknown key, a missing secret, a development key in
//! production mode...) stops it before anything starts, with one line per problem naming
//! the setting and where it came from, and exit status 2.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tessera_common::{OsRng, SystemClock};
use tessera_core::admission::tokio_util_shutdown::Shutdown;
use tessera_core::{App, Config};
use tessera_payments::stripe::{StripeClient, StripeConfig};
use tessera_store::Store;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "tessera-core", about = "One region's core services")]
struct Args {
    /// Config file (TOML); `TESSERA_CORE__<KEY>` variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Load and check the configuration in its mode, print `configuration ok`, and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    tessera_runtime::config::exit_on_error("tessera-core", run())
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let loaded = tessera_runtime::config::read::<Config>("core", args.config.as_deref())?;
    loaded.config.check(&loaded.source)?;
    let config = loaded.config;
    if args.check_config {
        println!("tessera-core: configuration ok (mode {})", config.mode);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let _telemetry = tessera_runtime::telemetry::init("tessera-core", &config.telemetry)?;
        tessera_runtime::metrics::install();
        tracing::info!(mode = %config.mode, "configuration loaded");
        match config.store.backend.as_str() {
            "embedded" => {
                let store = tessera_store::embedded::EmbeddedStore::open(&config.store.path)
                    .with_context(|| {
                        format!("open the store at {}", config.store.path.display())
                    })?;
                serve(config, store).await
            }
            #[cfg(feature = "fdb")]
            "fdb" => {
                let store =
                    tessera_store::fdb::FdbStore::open(config.store.fdb_cluster_file.as_deref())
                        .context("connect to FoundationDB")?;
                serve(config, store).await
            }
            other => anyhow::bail!("store backend {other:?} is not built into this binary"),
        }
    })
}

async fn serve<S: Store>(config: Config, store: S) -> anyhow::Result<()> {
    let mut stripe = StripeConfig::new(
        config.payments.base_url.clone(),
        secrecy::SecretString::from(config.payments.secret_key.expose().to_owned()),
    );
    stripe.request_timeout = std::time::Duration::from_millis(config.payments.request_timeout_ms);
    if let Some(ca) = &config.payments.ca_file {
        stripe.extra_roots_pem = Some(
            std::fs::read(ca).with_context(|| format!("read payments.ca_file {}", ca.display()))?,
        );
    }
    let provider = Arc::new(StripeClient::new(stripe).context("build the payment client")?);
    let nats = match &config.nats.url {
        Some(_) => Some(
            config
                .nats
                .connect(&format!("tessera-core-{}", config.region))
                .await
                .context("connect to NATS")?,
        ),
        None => None,
    };
    let listen = config.listen.clone();
    let fingerprint = config.shared_fingerprint();
    let tls = config.tls.acceptor().context("set up TLS")?;
    let app = App::build(config, store, provider, Arc::new(SystemClock), Arc::new(OsRng), nats)?;
    let shutdown = Shutdown::new();
    let mut tasks = tessera_core::tasks::spawn_all(app.clone(), shutdown.clone()).await?;

    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    let extra = tasks.routes.take().unwrap_or_default();
    let router = tessera_core::http::router(app.clone(), extra);
    tracing::info!(
        region = %app.region,
        addr = %listener.local_addr()?,
        tls = tls.is_some(),
        instance = %app.instance,
        shared_config = %fingerprint,
        "core listening"
    );
    let signal = {
        let shutdown = shutdown.clone();
        async move {
            tessera_runtime::http::shutdown_signal().await;
            tracing::info!("shutting down: draining requests");
            shutdown.trigger();
        }
    };
    tessera_runtime::http::serve_maybe_tls(listener, router, tls, signal).await?;
    tasks.join().await;
    tracing::info!("stopped");
    Ok(())
}
