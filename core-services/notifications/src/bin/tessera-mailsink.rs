//! `tessera-mailsink`: a development SMTP server that keeps messages as files and shows
//! them over HTTP (see `tessera_notifications::mailsink`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use tessera_notifications::mailsink::{self, Mailbox, MailsinkConfig};

#[derive(Debug, Parser)]
#[command(name = "tessera-mailsink", about = "A local SMTP sink for development and tests")]
struct Args {
    /// Config file (TOML); `TESSERA_MAILSINK__<KEY>` variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (config, ignored): (MailsinkConfig, _) =
        tessera_runtime::config::load("mailsink", args.config.as_deref())?;
    let _telemetry = tessera_runtime::telemetry::init("tessera-mailsink", &config.telemetry)?;
    for key in ignored {
        tracing::warn!(key, "ignoring an unknown configuration key");
    }
    tessera_runtime::metrics::install();
    let mailbox = Mailbox::open(&config.dir)?;
    let smtp = tokio::net::TcpListener::bind(&config.smtp_listen)
        .await
        .with_context(|| format!("listen on {}", config.smtp_listen))?;
    let http = tokio::net::TcpListener::bind(&config.http_listen)
        .await
        .with_context(|| format!("listen on {}", config.http_listen))?;
    tracing::info!(
        smtp = %smtp.local_addr()?,
        http = %http.local_addr()?,
        dir = %config.dir.display(),
        "mail sink listening"
    );
    let smtp_task = tokio::spawn(mailsink::serve_smtp(smtp, mailbox.clone()));
    let app = tessera_runtime::http::with_common_layers(
        "mailsink",
        mailsink::http_router(mailbox),
        config.body_limit_bytes,
    );
    let result =
        tessera_runtime::http::serve(http, app, tessera_runtime::http::shutdown_signal()).await;
    smtp_task.abort();
    result
}
