//! End-to-end harness for Tessera: [`stack::Stack`] starts the real multi-region stack as
//! processes (NATS hub and leaves, one core per region over one shared embedded store, the
//! router, the edge host with the WASM components, the payment simulator and the mail
//! sink); [`fan`] drives it the way fans and operators do; [`scenarios`] are the long runs
//! behind `cargo xtask e2e <name>`.
//!
//! It is test and developer tooling: `cargo xtask up` uses the same [`stack::Stack`].

pub mod fan;
pub mod scenarios;
pub mod stack;

/// The demo seat map that `cargo xtask up` seeds.
pub fn demo_seat_map(repo_root: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let path = repo_root.join("deploy").join("seatmaps").join("riverside-live.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}
