//! `cargo xtask e2e checkout [--ci] [--checkouts N] [--concurrency N]`: see
//! `tessera_e2e::scenarios::checkout`.

use tessera_e2e::scenarios::{checkout, kv_line};

fn main() -> anyhow::Result<()> {
    let mut opts = checkout::CheckoutOptions::full();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ci" => {}
            "--checkouts" => opts.checkouts = args.next().unwrap_or_default().parse()?,
            "--concurrency" => opts.concurrency = args.next().unwrap_or_default().parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
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
