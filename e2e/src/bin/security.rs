//! `cargo xtask e2e security [--ci]`: the red-team suite, see
//! `tessera_e2e::scenarios::security`. The last line is
//! `attacks=N accepted=0 state_changed=0 uncounted=0 unlogged=0`; any accepted attack,
//! changed state, refusal no service counted or counted refusal code no service logged
//! fails it.

use clap::Parser;
use tessera_e2e::scenarios::security;

/// The red-team suite against the real local stack.
#[derive(Parser, Debug)]
struct Args {
    /// What `cargo xtask test` runs (the whole suite: it takes about a minute).
    #[arg(long)]
    ci: bool,
}

fn main() -> anyhow::Result<()> {
    Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    let (verdicts, kv) = rt.block_on(security::run())?;
    for v in verdicts.iter().filter(|v| !v.refused || v.state_changed) {
        eprintln!("NOT REFUSED OR STATE CHANGED: {}: {}", v.name, v.detail);
    }
    for v in verdicts.iter().filter(|v| v.refused && v.counted == Some(false)) {
        eprintln!("REFUSED BUT NOT COUNTED: {}: {}", v.name, v.detail);
    }
    let get = |k: &str| kv.get(k).cloned().unwrap_or_default();
    println!(
        "attacks={} accepted={} state_changed={} uncounted={} unlogged={}",
        get("attacks"),
        get("accepted"),
        get("state_changed"),
        get("uncounted"),
        get("unlogged")
    );
    if kv.get("accepted").is_some_and(|v| v != "0")
        || kv.get("state_changed").is_some_and(|v| v != "0")
    {
        anyhow::bail!("the red-team suite found an open door");
    }
    if kv.get("uncounted").is_some_and(|v| v != "0") {
        anyhow::bail!("the red-team suite saw refusals no service counted");
    }
    if kv.get("unlogged").is_some_and(|v| v != "0") {
        anyhow::bail!("the red-team suite saw refusal codes no service logged at WARN");
    }
    Ok(())
}
