//! `cargo xtask e2e sellout [--ci] [--fans N] [--places N]`: see
//! `tessera_e2e::scenarios::sellout`.

use tessera_e2e::scenarios::{kv_line, sellout};

fn main() -> anyhow::Result<()> {
    let mut opts = sellout::SelloutOptions::full();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ci" => opts = sellout::SelloutOptions::ci(),
            "--fans" => opts.fans = args.next().unwrap_or_default().parse()?,
            "--places" => opts.places = args.next().unwrap_or_default().parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
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
