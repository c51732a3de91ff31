//! The long end-to-end scenarios behind `cargo xtask e2e <name>`. Each runs a fresh stack,
//! drives it hard, checks every invariant it can observe from outside, and returns its
//! figures; the binaries print them as one `key=value` line (the last line).

use std::collections::BTreeMap;

pub mod checkout;
pub mod security;
pub mod sellout;
pub mod web;

/// WARN lines that the scenarios provoke on purpose (a killed core, a cut link, lost
/// payment answers) and that therefore do not fail them. Anything else at WARN or ERROR
/// does. Shared by every scenario: the same failure must not pass one and fail another.
pub const EXPECTED_WARNINGS: [&str; 17] = [
    // The checkout path, for payments whose answer was lost with the core that asked.
    "payment call outcome unknown",
    "outcome unknown; the reconciler will settle it",
    "transaction failed after an unknown commit outcome",
    "reconciling failed, will retry",
    "gave up delivering a webhook",
    "store.recover: an earlier writer stopped mid-commit",
    "notifications: handling failed, will retry",
    "admission: tick failed",
    // Regions: a peer's relay covering for the killed core, a router that cannot reach
    // the hub's region-state bucket through a cut leaf, a relay or source retrying.
    "took over the outbox of a region",
    "region state bucket unreachable",
    "outbox relay pass failed, retrying",
    "failed to restart a stalled stream source",
    "failed to start pulling, retrying",
    "circuit breaker",
    "heartbeat",
    // The edge reports the 503 a fan got while the region handling the request was killed
    // (its outcome unknown) or no region could be reached.
    "request answered with a server error",
    "region unreachable",
];

/// `key=value key=value ...` in key order.
pub fn kv_line(kv: &BTreeMap<String, String>) -> String {
    kv.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}
