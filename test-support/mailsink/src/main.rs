//! `tessera-mailsink`: a development SMTP server that keeps messages as files and shows
//! them over HTTP (see the library, `tessera_mailsink`). A development tool: it starts
//! only with `mode = "local"`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tessera_mailsink::{self as mailsink, Mailbox, MailsinkConfig};
use tessera_runtime::config::Checks;

#[derive(Debug, Parser)]
#[command(name = "tessera-mailsink", about = "A local SMTP sink for development and tests")]
struct Args {
    /// Config file (TOML); `TESSERA_MAILSINK__<KEY>` variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    tessera_runtime::config::exit_on_error("tessera-mailsink", run())
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let loaded =
        tessera_runtime::config::read::<MailsinkConfig>("mailsink", args.config.as_deref())?;
    let config = loaded.config;
    let mut checks = Checks::new(config.mode, &loaded.source);
    checks.production("mode", "tessera-mailsink is a development tool; run it in local mode");
    checks.finish()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let _telemetry = tessera_runtime::telemetry::init("tessera-mailsink", &config.telemetry)?;
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
    })
}
