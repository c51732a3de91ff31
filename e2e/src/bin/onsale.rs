//! `cargo xtask onsale [--ci] [options]`: a whole on-sale of a million fans against the
//! real local stack; see `tessera_e2e::scenarios::onsale`. The last line has the
//! headline figures; the HTML report goes to `target/onsale/`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tessera_e2e::scenarios::{kv_line, onsale};

/// A whole on-sale: a pre-queue, a spike at opening, bots, and every admitted fan buying.
#[derive(Parser, Debug)]
struct Args {
    /// The 50,000-fan variant `cargo xtask test` runs.
    #[arg(long)]
    ci: bool,
    /// Arrivals (humans and bots).
    #[arg(long)]
    fans: Option<usize>,
    /// Reserved seats (at most 52,000: 26 sections of 40 rows of 50).
    #[arg(long)]
    seats: Option<usize>,
    /// General-admission places.
    #[arg(long)]
    ga: Option<u64>,
    /// Share of arrivals that are bots (0 to below 1).
    #[arg(long)]
    bot_share: Option<f64>,
    /// Length of the pre-queue window before opening, in seconds.
    #[arg(long)]
    pre_open_s: Option<f64>,
    /// Share of human fans who arrive in the pre-queue window.
    #[arg(long)]
    pre_open_share: Option<f64>,
    /// Mean delay of the arrivals after opening, in seconds (exponential).
    #[arg(long)]
    spike_s: Option<f64>,
    /// The operator's admission rate, fans per second.
    #[arg(long)]
    admission_rate: Option<f64>,
    /// Fans who long-poll like a real page from the moment they join.
    #[arg(long)]
    live_fans: Option<usize>,
    /// Joins in flight at most.
    #[arg(long)]
    join_concurrency: Option<usize>,
    /// Requests the edge serves at once besides parked long polls.
    #[arg(long)]
    edge_concurrency: Option<usize>,
    /// Purchases in flight at most.
    #[arg(long)]
    buy_concurrency: Option<usize>,
    /// The whole run's limit, in seconds.
    #[arg(long)]
    deadline_s: Option<u64>,
    /// Seed of the arrival curve and the fans' choices.
    #[arg(long)]
    seed: Option<u64>,
    /// Where the report goes (default: target/onsale, or target/onsale-ci with --ci).
    #[arg(long)]
    report_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = tessera_e2e::stack::repo_root()?;
    let dir = args
        .report_dir
        .clone()
        .unwrap_or_else(|| root.join("target").join(if args.ci { "onsale-ci" } else { "onsale" }));
    let mut o =
        if args.ci { onsale::OnsaleOptions::ci(dir) } else { onsale::OnsaleOptions::full(dir) };
    macro_rules! set {
        ($($field:ident),*) => { $(if let Some(v) = args.$field { o.$field = v; })* };
    }
    set!(
        fans,
        seats,
        ga,
        bot_share,
        pre_open_s,
        pre_open_share,
        spike_s,
        live_fans,
        join_concurrency,
        edge_concurrency,
        buy_concurrency,
        seed
    );
    if let Some(r) = args.admission_rate {
        o.admission_rate_per_s = r;
    }
    if let Some(d) = args.deadline_s {
        o.deadline = Duration::from_secs(d);
    }
    if let Err(e) = o.validate() {
        eprintln!("onsale: {e}");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Runtime::new()?;
    let (kv, checks) = rt.block_on(onsale::run(o))?;
    for c in &checks {
        eprintln!(
            "[onsale] {} {}: {} (floor {})",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.value,
            c.floor
        );
    }
    println!("{}", kv_line(&kv));
    let head = [
        "fans",
        "seats",
        "sellout_s",
        "orders_per_s",
        "tau_preopen",
        "tau_fifo",
        "bot_ticket_share",
        "told_sold_out_p99_ms",
        "oversold",
    ];
    println!(
        "{}",
        head.iter()
            .map(|k| format!("{k}={}", kv.get(*k).map_or("?", String::as_str)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let failed: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
    if !failed.is_empty() {
        anyhow::bail!("the on-sale broke {} check(s): {}", failed.len(), failed.join("; "));
    }
    Ok(())
}
