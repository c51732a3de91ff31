//! `cargo xtask e2e checkout [--ci] [--checkouts N] [--concurrency N]`: see
//! `tessera_e2e::scenarios::checkout`.

use clap::Parser;
use tessera_e2e::scenarios::{checkout, kv_line};

/// Checkouts through the real stack with declines, payment timeouts, a killed core and
/// webhook retries; every attempt must be accounted for.
#[derive(Parser, Debug)]
struct Args {
    /// What `cargo xtask test` runs (the same run: it fits there whole).
    #[arg(long)]
    ci: bool,
    /// Checkouts to attempt.
    #[arg(long, default_value_t = checkout::CheckoutOptions::full().checkouts)]
    checkouts: usize,
    /// Checkouts in flight at once.
    #[arg(long, default_value_t = checkout::CheckoutOptions::full().concurrency)]
    concurrency: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut opts = checkout::CheckoutOptions::full();
    opts.checkouts = args.checkouts;
    opts.concurrency = args.concurrency;
    opts.kill_after = opts.kill_after.min(opts.checkouts / 2);
    let rt = tokio::runtime::Runtime::new()?;
    let kv = rt.block_on(checkout::run(opts))?;
    println!("{}", kv_line(&kv));
    let bad = [
        "charged_without_ticket",
        "ticket_without_charge",
        "duplicate_charges",
        "oversold",
        "unexpected_warnings",
        "unaccounted",
        "decline_mismatch",
        "checkouts_unanswered",
        "uncaptured_authorizations",
    ]
    .iter()
    .filter(|k| kv.get(**k).is_some_and(|v| v != "0"))
    .count();
    if bad > 0 {
        anyhow::bail!("checkout scenario broke an invariant");
    }
    Ok(())
}
