//! `cargo xtask e2e sellout [--ci] [--fans N] [--places N]`: see
//! `tessera_e2e::scenarios::sellout`.

use clap::Parser;
use tessera_e2e::scenarios::{kv_line, sellout};

/// More fans than places: nobody may be left waiting once the sale sells out.
#[derive(Parser, Debug)]
struct Args {
    /// The reduced variant `cargo xtask test` runs (fewer fans and places).
    #[arg(long)]
    ci: bool,
    /// Fans who join the waiting room (default: the chosen variant's).
    #[arg(long)]
    fans: Option<usize>,
    /// General-admission places (default: the chosen variant's).
    #[arg(long)]
    places: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut opts =
        if args.ci { sellout::SelloutOptions::ci() } else { sellout::SelloutOptions::full() };
    if let Some(fans) = args.fans {
        opts.fans = fans;
    }
    if let Some(places) = args.places {
        opts.places = places;
    }
    let rt = tokio::runtime::Runtime::new()?;
    let kv = rt.block_on(sellout::run(opts))?;
    println!("{}", kv_line(&kv));
    // The headline figures, last.
    let head = [
        "stranded_fans",
        "told_sold_out_p99_ms",
        "recycled_admissions",
        "waiting_list_admitted",
        "oversold",
    ];
    println!(
        "{}",
        head.iter()
            .map(|k| format!("{k}={}", kv.get(*k).map_or("?", String::as_str)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let bad = ["stranded_fans", "oversold", "waiting_list_out_of_order", "unexpected_warnings"]
        .iter()
        .filter(|k| kv.get(**k).is_some_and(|v| v != "0"))
        .count();
    let slow = kv
        .get("told_sold_out_p99_ms")
        .and_then(|v| v.parse::<f64>().ok())
        .is_none_or(|v| v > 5000.0);
    if bad > 0 || slow {
        anyhow::bail!("sellout scenario broke an invariant");
    }
    Ok(())
}
