//! `cargo xtask`: the developer workflows of the Tessera workspace.
//!
//! - `cargo xtask up`: build what is missing and start the whole local multi-region stack.
//! - `cargo xtask test`: run every test (unit, integration, e2e), installing or locating
//!   what they need first.
//! - `cargo xtask bench <inventory|edge>`: run a benchmark and print its numbers.
//! - `cargo xtask e2e <checkout|failover|partition>`: run one end-to-end scenario.
//! - `cargo xtask build-wasm`: build the edge components.

use clap::{Parser, Subcommand};

mod wasm;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Tessera developer workflows")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the WASM edge components.
    BuildWasm {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::BuildWasm { release } => {
            let out = wasm::build_components(release)?;
            println!("components in {}", out.display());
        }
    }
    Ok(())
}
