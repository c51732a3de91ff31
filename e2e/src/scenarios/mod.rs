//! The long end-to-end scenarios behind `cargo xtask e2e <name>`. Each runs a fresh stack,
//! drives it hard, checks every invariant it can observe from outside, and returns its
//! figures; the binaries print them as one `key=value` line (the last line).

use std::collections::BTreeMap;

pub mod checkout;

/// WARN lines that a scenario provokes on purpose (lost answers, killed peers) and that
/// therefore do not fail it. Anything else at WARN or ERROR does.
pub const EXPECTED_WARNINGS: [&str; 13] = [
    "took over the outbox of a region whose relay stopped renewing its lease",
    "payment call outcome unknown",
    "outcome unknown; the reconciler will settle it",
    "transaction failed after an unknown commit outcome",
    "gave up delivering a webhook",
    "reconciling failed, will retry",
    "outbox relay pass failed, retrying",
    "store.recover: an earlier writer stopped mid-commit",
    "region unreachable",
    "circuit breaker",
    "heartbeat",
    "notifications: handling failed, will retry",
    "admission: tick failed",
];

/// `key=value key=value ...` in key order.
pub fn kv_line(kv: &BTreeMap<String, String>) -> String {
    kv.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}
