//! `cargo xtask e2e web [--ci]`: see `tessera_e2e::scenarios::web`. `--ci` (what
//! `cargo xtask test` runs) takes the 360 px and 200 % zoom screenshots of two pages
//! instead of five; every journey and check is the same.

use tessera_e2e::scenarios::{kv_line, web};

fn main() -> anyhow::Result<()> {
    let mut opts = web::WebOptions { all_layouts: true };
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--ci" => opts.all_layouts = false,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let rt = tokio::runtime::Runtime::new()?;
    let (kv, outcome) = rt.block_on(web::run(opts))?;
    println!("{}", kv_line(&kv));
    outcome?;
    web::verdict(&kv)
}
