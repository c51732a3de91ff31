//! The long end-to-end scenarios behind `cargo xtask e2e <name>`. Each runs a fresh stack,
//! drives it hard, checks every invariant it can observe from outside, and returns its
//! figures; the binaries print them as one `key=value` line (the last line).

use std::collections::BTreeMap;

pub mod checkout;
pub mod onsale;
pub mod security;
pub mod sellout;
pub mod web;

/// A WARN or ERROR line a scenario provokes on purpose (a killed core, a cut link, lost
/// payment answers), which therefore does not fail it: its level, its target (the module
/// that logged it) and its message, all matched exactly. `detail` lets the message be
/// followed by `": "` and the error that caused it (`"outbox relay pass failed,
/// retrying: connection refused"`); nothing else may differ. `code`, when set, must be
/// the line's `code` field too (a refusal a scenario provokes: that code and no other).
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    pub level: &'static str,
    pub target: &'static str,
    pub message: &'static str,
    pub detail: bool,
    pub code: Option<&'static str>,
}

pub(crate) const fn warn(target: &'static str, message: &'static str, detail: bool) -> Expected {
    Expected { level: "WARN", target, message, detail, code: None }
}

/// The edge's WARN line for a refusal with `code` (`tessera_edge_host::guest_log`).
pub(crate) const fn edge_refusal(code: &'static str) -> Expected {
    Expected {
        level: "WARN",
        target: "tessera_edge::refusal",
        message: "request refused",
        detail: false,
        code: Some(code),
    }
}

impl Expected {
    /// Whether this entry allows a log line with these `level`, `target`, `message` and
    /// `code` field.
    pub fn allows(&self, level: &str, target: &str, message: &str, code: Option<&str>) -> bool {
        level == self.level
            && target == self.target
            && (self.code.is_none() || self.code == code)
            && match message.strip_prefix(self.message) {
                Some("") => true,
                Some(rest) => self.detail && rest.len() > 2 && rest.starts_with(": "),
                None => false,
            }
    }
}

/// Every line the scenarios provoke on purpose. Anything else at WARN or ERROR fails
/// them. Shared by every scenario: the same failure must not pass one and fail another.
/// A scenario adds an entry only for a refusal it provokes on purpose (`web`: another
/// fan's hold in the address bar).
/// Nothing here allows a fan to see an error (the edge's "request answered with a server
/// error" is not listed).
pub const EXPECTED_WARNINGS: &[Expected] = &[
    // The checkout path, for payments whose answer was lost with the core that asked.
    warn("tessera_payments::stripe", "payment call outcome unknown", true),
    warn(
        "tessera_orders::saga",
        "authorization outcome unknown; the reconciler will settle it",
        true,
    ),
    warn("tessera_orders::saga", "capture outcome unknown; the reconciler will settle it", true),
    warn("tessera_store", "transaction failed after an unknown commit outcome", true),
    warn("tessera_orders::saga", "reconciling failed, will retry", true),
    warn("tessera_paysim", "gave up delivering a webhook", false),
    // A core killed in the middle of a commit, and the next writer adopting its records.
    warn("tessera_store::embedded", "store.recover: an earlier writer stopped mid-commit", false),
    warn("tessera_core::bus", "notifications: handling failed, will retry", true),
    warn("tessera_core::admission", "admission: tick failed, retrying next tick", true),
    // Regions: a peer's relay covering for the killed core, a router that cannot reach
    // the hub's region-state bucket through a cut leaf, a relay or source retrying.
    warn(
        "tessera_bus::relay",
        "took over the outbox of a region whose relay stopped renewing its lease",
        false,
    ),
    warn(
        "tessera_region_router::control",
        "region state bucket unreachable, using the local copy",
        true,
    ),
    warn("tessera_bus::relay", "outbox relay pass failed, retrying", true),
    warn("tessera_bus::streams", "failed to restart a stalled stream source", true),
    warn("tessera_bus::consumer", "failed to start pulling, retrying", true),
];

/// Whether a service's log line is a problem: a WARN or ERROR line (JSON, as every
/// service logs) that no entry of `expected` allows, or a panic. Returns a short form of
/// the line for the report.
pub fn unexpected_log_line(line: &str, expected: &[Expected]) -> Option<String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        // Not a log record: a panic (or an abort) writes plain text to stderr.
        return (line.contains("panicked at") || line.contains("stopping the process"))
            .then(|| line.to_owned());
    };
    let level = v["level"].as_str().unwrap_or_default();
    if level != "WARN" && level != "ERROR" {
        return None;
    }
    let target = v["target"].as_str().unwrap_or_default();
    let message = v["message"].as_str().or_else(|| v["fields"]["message"].as_str());
    let message = message.unwrap_or_default();
    let code = v["code"].as_str();
    if expected.iter().any(|e| e.allows(level, target, message, code)) {
        return None;
    }
    Some(line.to_owned())
}

/// The `q` quantile (0..=1, nearest rank) of `sorted`, which must be in ascending order;
/// the default (zero) when there is nothing.
pub fn quantile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((sorted.len() as f64 - 1.0) * q.clamp(0.0, 1.0)).round() as usize;
    sorted[rank]
}

/// The payment simulator's ledger once every authorization is captured or voided (the
/// saga or the reconciler settles them), or as it is after 60 s.
pub async fn settled_ledger(
    stack: &crate::stack::Stack,
    scenario: &str,
) -> anyhow::Result<serde_json::Value> {
    let settle_until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let ledger: serde_json::Value = stack
            .http
            .get(format!("{}/_sim/ledger", stack.urls.paysim))
            .send()
            .await?
            .json()
            .await?;
        let open = ledger["summary"]["uncaptured_authorizations"].as_u64().unwrap_or(u64::MAX);
        if open == 0 || std::time::Instant::now() > settle_until {
            return Ok(ledger);
        }
        eprintln!("[{scenario}] {open} authorizations not yet captured or voided");
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// `key=value key=value ...` in key order.
pub fn kv_line(kv: &BTreeMap<String, String>) -> String {
    kv.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(level: &str, target: &str, message: &str) -> String {
        serde_json::json!({"timestamp": "t", "level": level, "target": target, "message": message})
            .to_string()
    }

    #[test]
    fn quantile_is_the_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.0), 1);
        assert_eq!(quantile(&v, 0.5), 51);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&v, 7.0), 100);
        assert_eq!(quantile::<u32>(&[], 0.99), 0);
        assert_eq!(quantile(&[5.0_f64], 0.99), 5.0);
    }

    #[test]
    fn allows_only_the_listed_level_target_and_message() {
        let relay = "tessera_bus::relay";
        let ok = |l: &str| unexpected_log_line(l, EXPECTED_WARNINGS).is_none();
        assert!(ok(&line("WARN", relay, "outbox relay pass failed, retrying: nats: timed out")));
        assert!(ok(&line("INFO", "anything", "anything at all")));
        // Another level, another target, a message that only contains the listed one, a
        // listed message with words added, or a detail where none is allowed: refused.
        assert!(!ok(&line("ERROR", relay, "outbox relay pass failed, retrying: x")));
        assert!(!ok(&line("WARN", "tessera_bus::consumer", "outbox relay pass failed, retrying")));
        assert!(!ok(&line("WARN", relay, "then: outbox relay pass failed, retrying")));
        assert!(!ok(&line("WARN", relay, "outbox relay pass failed, retrying twice")));
        assert!(!ok(&line(
            "WARN",
            relay,
            "took over the outbox of a region whose relay stopped renewing its lease: x"
        )));
        // The substring allow-list let every edge 5xx through; nothing lists it now.
        assert!(!ok(&line(
            "WARN",
            "tessera_edge_host::server",
            "request answered with a server error"
        )));
        assert!(!ok("thread 'main' panicked at src/main.rs:1:1:"));
    }

    #[test]
    fn an_edge_refusal_is_allowed_only_with_its_code() {
        let refusal = |code: &str| {
            serde_json::json!({"level": "WARN", "target": "tessera_edge::refusal",
                "message": "request refused", "code": code})
            .to_string()
        };
        let expected = [edge_refusal("queue_poll_too_fast")];
        assert!(unexpected_log_line(&refusal("queue_poll_too_fast"), &expected).is_none());
        assert!(unexpected_log_line(&refusal("invalid_token"), &expected).is_some());
        assert!(unexpected_log_line(&refusal("queue_poll_too_fast"), EXPECTED_WARNINGS).is_some());
    }
}
