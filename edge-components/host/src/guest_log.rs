//! What components write on standard error, turned into log lines.
//!
//! Each instance writes into its own bounded buffer (a component cannot flood the host's
//! stderr or interleave with other instances); when the instance ends, its lines are
//! logged. A refusal the edge component reports (`{"refusal":<code>,"status":<n>,
//! "reason":<text>,"path":<path>}`, see `tessera_edge_guest::report_refusal`) becomes a
//! WARN line `request refused` with target `tessera_edge::refusal`; anything else (a panic
//! message) a WARN line `component wrote to stderr` with target `tessera_edge::component`.
//! Both are rate-limited per key (the refusal's code, or the component): at most one line a second,
//! carrying `suppressed`, the number left out since the previous one. The counters in
//! `/metrics` still count every refusal.
//!
//! Hand-written rather than a rate-limiting crate: what is needed is "one line per key
//! per second, and how many were dropped", which is a timestamp and a counter per key.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How much one instance may write to stderr (a refusal line is about 150 bytes). A write
/// past it fails, and Rust's `eprintln!` panics on a failed write: a component that writes
/// more in one request ends that request with an error.
pub const STDERR_MAX_BYTES: usize = 16 << 10;

/// How often one key is logged.
const WINDOW: Duration = Duration::from_secs(1);

/// At most this many keys are tracked; past it, new keys share one.
const KEYS_MAX: usize = 256;

/// A longer line is cut.
const LINE_MAX_CHARS: usize = 512;

#[derive(Debug)]
struct Window {
    last_logged: Instant,
    suppressed: u64,
}

/// Per key: when it was last logged and how many were left out since.
#[derive(Debug, Default)]
pub struct Limiter {
    keys: Mutex<HashMap<String, Window>>,
}

impl Limiter {
    /// `Some(suppressed)` when a line for `key` may be logged now (with how many were left
    /// out since the previous one), `None` when it is left out.
    pub fn admit(&self, key: &str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock();
        let key = if keys.len() >= KEYS_MAX && !keys.contains_key(key) { "other" } else { key };
        match keys.get_mut(key) {
            Some(w) if now.duration_since(w.last_logged) < WINDOW => {
                w.suppressed += 1;
                None
            }
            Some(w) => {
                w.last_logged = now;
                Some(std::mem::take(&mut w.suppressed))
            }
            None => {
                keys.insert(key.to_owned(), Window { last_logged: now, suppressed: 0 });
                Some(0)
            }
        }
    }
}

static LIMITER: LazyLock<Limiter> = LazyLock::new(Limiter::default);

/// A refusal line as the edge component writes it.
#[derive(Debug, serde::Deserialize)]
struct Refusal<'a> {
    refusal: &'a str,
    status: u16,
    #[serde(default)]
    reason: std::borrow::Cow<'a, str>,
    #[serde(default)]
    path: std::borrow::Cow<'a, str>,
}

/// Logs what `component` wrote to stderr during one request.
pub fn forward(component: &str, written: &[u8]) {
    if written.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(written);
    let now = Instant::now();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Ok(r) = serde_json::from_str::<Refusal>(line)
            && !r.refusal.is_empty()
            && r.refusal.len() <= 64
        {
            if let Some(suppressed) = LIMITER.admit(r.refusal, now) {
                tracing::warn!(
                    target: "tessera_edge::refusal",
                    code = r.refusal,
                    status = r.status,
                    reason = %cut(&r.reason),
                    path = %cut(&r.path),
                    suppressed,
                    component,
                    "request refused"
                );
            }
            continue;
        }
        if let Some(suppressed) = LIMITER.admit(&format!("component:{component}"), now) {
            tracing::warn!(
                target: "tessera_edge::component",
                component,
                line = %cut(line),
                suppressed,
                "component wrote to stderr"
            );
        }
    }
}

fn cut(s: &str) -> &str {
    match s.char_indices().nth(LINE_MAX_CHARS) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_second_with_the_count_left_out() {
        let l = Limiter::default();
        let t0 = Instant::now();
        assert_eq!(l.admit("bot_suspected", t0), Some(0));
        assert_eq!(l.admit("bot_suspected", t0 + Duration::from_millis(10)), None);
        assert_eq!(l.admit("bot_suspected", t0 + Duration::from_millis(900)), None);
        // Another code has its own window.
        assert_eq!(l.admit("invalid_token", t0 + Duration::from_millis(20)), Some(0));
        assert_eq!(l.admit("bot_suspected", t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(l.admit("bot_suspected", t0 + Duration::from_millis(2500)), Some(0));
    }

    #[test]
    fn keys_past_the_bound_share_one_window() {
        let l = Limiter::default();
        let t0 = Instant::now();
        for i in 0..KEYS_MAX {
            assert_eq!(l.admit(&format!("k{i}"), t0), Some(0));
        }
        assert_eq!(l.admit("new-1", t0), Some(0));
        assert_eq!(l.admit("new-2", t0), None, "shares the window of `other`");
        assert_eq!(l.keys.lock().len(), KEYS_MAX + 1);
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        let s = "é".repeat(LINE_MAX_CHARS + 10);
        assert_eq!(cut(&s).chars().count(), LINE_MAX_CHARS);
        assert_eq!(cut("short"), "short");
    }
}
