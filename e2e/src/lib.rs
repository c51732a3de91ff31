//! End-to-end harness for Tessera: [`stack::Stack`] starts the real multi-region stack as
//! processes (NATS hub and leaves, one core per region over one shared embedded store, the
//! router, the edge host with the WASM components, the payment simulator and the mail
//! sink); [`fan`] drives it the way fans and operators do; [`scenarios`] are the long runs
//! behind `cargo xtask e2e <name>` and `cargo xtask onsale` (a whole sale of a million
//! fans, [`scenarios::onsale`]), and [`traffic`] is the buying crowd of the region
//! scenarios (`failover`, `partition`). [`pki`] makes a run's throwaway certificates when
//! the cores serve mutual TLS ([`stack::StackOptions::core_tls`]).
//!
//! It is test and developer tooling: `cargo xtask up` uses the same [`stack::Stack`].

pub mod browser;
pub mod fan;
pub mod pki;
pub mod reaper;
pub mod scenarios;
pub mod stack;
pub mod traffic;

/// The demo seat map that `cargo xtask up` seeds.
pub fn demo_seat_map(repo_root: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let path = repo_root.join("deploy").join("seatmaps").join("riverside-live.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// An RFC 3339 UTC time `secs` from now.
pub fn rfc3339_in(secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + secs;
    let days = (now / 86_400) as i64 + 719_468;
    let rem = now % 86_400;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}
