//! `cargo xtask e2e web [--ci]`: see `tessera_e2e::scenarios::web`. `--ci` (what
//! `cargo xtask test` runs) takes the 360 px and 200 % zoom screenshots of two pages
//! instead of five; every journey and check is the same.

use clap::Parser;
use tessera_e2e::scenarios::{kv_line, web};

/// Fans in a real browser (headless Chromium) against the real local stack.
#[derive(Parser, Debug)]
struct Args {
    /// Narrow and zoomed screenshots of two pages instead of five.
    #[arg(long)]
    ci: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let opts = web::WebOptions { all_layouts: !args.ci };
    let rt = tokio::runtime::Runtime::new()?;
    let (kv, outcome) = rt.block_on(web::run(opts))?;
    println!("{}", kv_line(&kv));
    outcome?;
    web::verdict(&kv)
}
