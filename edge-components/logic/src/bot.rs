//! Bot scoring: a score from 0 (human) to 100 (bot) computed from request signals, and
//! the verdict that follows from per-event thresholds.
//!
//! Middling scores get an adaptive proof-of-work challenge ([`crate::pow`]); high scores
//! send queue joins to the shadow queue (a ticket that looks real and never admits).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_api::EventId;

/// Thresholds and limits; per-event overrides live in `events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Scores at or above this are challenged.
    pub challenge_at: u8,
    /// Scores at or above this join the shadow queue.
    pub shadow_at: u8,
    /// Requests per 10 s window from one client beyond which it is refused outright.
    pub client_hard_per_window: u32,
    /// Soft rates (per 10 s window) above which the score rises.
    pub client_soft_per_window: u32,
    pub network_soft_per_window: u32,
    pub token_soft_per_window: u32,
    /// Queue status requests per 10 s window with one queue ticket beyond which they are
    /// refused with `429 queue_poll_too_fast` (a page long-polls every 20 s, or polls
    /// about once a second where it cannot).
    pub ticket_polls_per_window: u32,
    /// A ticket that polls more than this many times the per-window limit in one window
    /// is automation (a page long-polls, or polls about once a second where it cannot): it
    /// is moved to the shadow queue (0 never moves one).
    pub ticket_polls_shadow_factor: u32,
    /// Accounts that may join one event's waiting room from one device (a household
    /// sharing a tablet); the next one moves all of them to the shadow queue (0: no limit).
    pub accounts_per_device: u32,
    /// Devices one account may join one event's waiting room from (a phone and a
    /// laptop); the next one moves all its tickets to the shadow queue (0: no limit).
    pub devices_per_account: u32,
    pub events: BTreeMap<String, EventPolicy>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventPolicy {
    pub challenge_at: Option<u8>,
    pub shadow_at: Option<u8>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            challenge_at: 40,
            shadow_at: 80,
            client_hard_per_window: 200,
            client_soft_per_window: 30,
            network_soft_per_window: 600,
            token_soft_per_window: 30,
            ticket_polls_per_window: 20,
            ticket_polls_shadow_factor: 2,
            accounts_per_device: 3,
            devices_per_account: 3,
            events: BTreeMap::new(),
        }
    }
}

/// The length of a rate window.
pub const WINDOW_MS: u64 = 10_000;

impl Policy {
    /// Parses the `bot_policy` variable (JSON); empty means the defaults.
    pub fn parse(json: &str) -> Result<Policy, String> {
        if json.trim().is_empty() {
            return Ok(Policy::default());
        }
        serde_json::from_str(json).map_err(|e| format!("bad bot_policy: {e}"))
    }

    /// `(challenge_at, shadow_at)` for an event.
    pub fn thresholds(&self, event_id: Option<&EventId>) -> (u8, u8) {
        let ev = event_id.and_then(|e| self.events.get(e.as_str()));
        (
            ev.and_then(|e| e.challenge_at).unwrap_or(self.challenge_at),
            ev.and_then(|e| e.shadow_at).unwrap_or(self.shadow_at),
        )
    }
}

/// What the edge knows about a request when scoring it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    /// Requests in the current window, this one included.
    pub client_requests: u32,
    pub network_requests: u32,
    pub token_requests: u32,
    pub user_agent: Option<String>,
    pub has_accept: bool,
    pub has_accept_language: bool,
    pub has_device: bool,
    /// Recent request times of this client, oldest first (ms).
    pub recent_times_ms: Vec<u64>,
    pub challenges_solved: u32,
    pub challenges_failed: u32,
}

/// A score with its parts, so operators can see why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Score {
    pub rate: u8,
    pub headers: u8,
    pub timing: u8,
    pub history: i8,
    pub total: u8,
}

fn over(count: u32, soft: u32, max_points: u32) -> u32 {
    if soft == 0 || count <= soft {
        return 0;
    }
    // Linear from the soft limit to four times it.
    let excess = count - soft;
    (excess * max_points / (3 * soft)).min(max_points)
}

const AUTOMATION_AGENTS: &[&str] = &[
    "curl",
    "wget",
    "python",
    "go-http-client",
    "java/",
    "okhttp",
    "headless",
    "phantomjs",
    "selenium",
    "puppeteer",
    "playwright",
    "scrapy",
    "httpclient",
    "libwww",
    "node-fetch",
    "axios",
];

/// Points for header and client anomalies.
pub fn header_points(s: &Signals) -> u8 {
    let mut p = 0u32;
    match &s.user_agent {
        None => p += 25,
        Some(ua) => {
            let ua = ua.to_ascii_lowercase();
            if ua.len() < 8 {
                p += 20;
            }
            if AUTOMATION_AGENTS.iter().any(|a| ua.contains(a)) {
                p += 40;
            }
        }
    }
    if !s.has_accept {
        p += 5;
    }
    if !s.has_accept_language {
        p += 10;
    }
    if !s.has_device {
        p += 5;
    }
    p.min(60) as u8
}

/// Points for machine-like regularity of the gaps between requests.
pub fn timing_points(times_ms: &[u64]) -> u8 {
    if times_ms.len() < 6 {
        return 0;
    }
    let gaps: Vec<f64> = times_ms.windows(2).map(|w| w[1].saturating_sub(w[0]) as f64).collect();
    let n = gaps.len() as f64;
    let mean = gaps.iter().sum::<f64>() / n;
    if mean <= 0.0 {
        // Bursts of simultaneous requests.
        return 25;
    }
    let var = gaps.iter().map(|g| (g - mean) * (g - mean)).sum::<f64>() / n;
    let cv = var.sqrt() / mean;
    if cv < 0.05 {
        25
    } else if cv < 0.15 {
        10
    } else {
        0
    }
}

/// Scores a request.
pub fn score(s: &Signals, policy: &Policy) -> Score {
    let rate = (over(s.client_requests, policy.client_soft_per_window, 35)
        + over(s.network_requests, policy.network_soft_per_window, 20)
        + over(s.token_requests, policy.token_soft_per_window, 25))
    .min(60) as u8;
    let headers = header_points(s);
    let timing = timing_points(&s.recent_times_ms);
    let history = (s.challenges_failed.min(3) as i32 * 10 - s.challenges_solved.min(2) as i32 * 15)
        .clamp(-30, 30) as i8;
    let total = (i32::from(rate) + i32::from(headers) + i32::from(timing) + i32::from(history))
        .clamp(0, 100) as u8;
    Score { rate, headers, timing, history, total }
}

/// What happens to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Ask for proof of work of this many leading zero bits.
    Challenge {
        difficulty: u8,
    },
    /// Queue joins get a shadow ticket; other requests are challenged at full difficulty.
    Shadow,
    /// Over the hard rate limit: 429.
    RateLimited,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Challenge { .. } => "challenge",
            Verdict::Shadow => "shadow",
            Verdict::RateLimited => "rate_limited",
        }
    }
}

/// Decides. `pow_ok` says whether the request carries a valid solved challenge.
pub fn verdict(
    s: &Signals,
    sc: &Score,
    policy: &Policy,
    event_id: Option<&EventId>,
    pow_ok: bool,
) -> Verdict {
    if s.client_requests > policy.client_hard_per_window {
        return Verdict::RateLimited;
    }
    let (challenge_at, shadow_at) = policy.thresholds(event_id);
    if sc.total >= shadow_at {
        return Verdict::Shadow;
    }
    if sc.total >= challenge_at && !pow_ok {
        return Verdict::Challenge {
            difficulty: crate::pow::difficulty_for(sc.total, challenge_at, shadow_at),
        };
    }
    Verdict::Allow
}

/// The network a client address belongs to: /24 for IPv4, /48 for IPv6.
pub fn network_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').filter(|(h, _)| h.contains('.')).map_or(addr, |(h, _)| h);
    if let Ok(v4) = host.parse::<std::net::Ipv4Addr>() {
        let o = v4.octets();
        return format!("{}.{}.{}.0/24", o[0], o[1], o[2]);
    }
    let host = host.trim_start_matches('[').split(']').next().unwrap_or(host);
    if let Ok(v6) = host.parse::<std::net::Ipv6Addr>() {
        let s = v6.segments();
        return format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2]);
    }
    host.to_owned()
}

/// The client address without its port.
pub fn client_ip(addr: &str) -> String {
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        return sa.ip().to_string();
    }
    addr.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn browser() -> Signals {
        Signals {
            client_requests: 3,
            network_requests: 10,
            token_requests: 1,
            user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0".into()),
            has_accept: true,
            has_accept_language: true,
            has_device: true,
            recent_times_ms: vec![0, 900, 2_300, 2_800, 5_000, 5_100, 9_000],
            ..Signals::default()
        }
    }

    fn bot() -> Signals {
        Signals {
            client_requests: 120,
            network_requests: 900,
            token_requests: 60,
            user_agent: Some("python-requests/2.31".into()),
            has_accept: true,
            has_accept_language: false,
            has_device: true,
            recent_times_ms: (0..8).map(|i| i * 100).collect(),
            ..Signals::default()
        }
    }

    #[test]
    fn browsers_pass_and_scripted_clients_are_shadowed() {
        let p = Policy::default();
        let h = score(&browser(), &p);
        assert_eq!(h.total, 0);
        assert_eq!(verdict(&browser(), &h, &p, None, false), Verdict::Allow);
        let b = score(&bot(), &p);
        assert!(b.total >= 80, "{b:?}");
        assert_eq!(verdict(&bot(), &b, &p, None, false), Verdict::Shadow);
    }

    #[test]
    fn middling_scores_are_challenged_until_they_solve() {
        let p = Policy::default();
        let mut s = browser();
        s.user_agent = Some("curl/8.5".into());
        let sc = score(&s, &p);
        assert!((40..80).contains(&sc.total), "{sc:?}");
        assert!(matches!(verdict(&s, &sc, &p, None, false), Verdict::Challenge { .. }));
        assert_eq!(verdict(&s, &sc, &p, None, true), Verdict::Allow);
    }

    #[test]
    fn thresholds_can_be_set_per_event() {
        let p =
            Policy::parse(r#"{"events":{"hot-show":{"challenge_at":5,"shadow_at":30}}}"#).unwrap();
        let hot = EventId::parse("hot-show").unwrap();
        assert_eq!(p.thresholds(Some(&hot)), (5, 30));
        assert_eq!(p.thresholds(None), (40, 80));
        assert!(Policy::parse(r#"{"nope":1}"#).is_err());
    }

    #[test]
    fn hard_rate_limit_wins() {
        let p = Policy::default();
        let mut s = browser();
        s.client_requests = 1_000;
        let sc = score(&s, &p);
        assert_eq!(verdict(&s, &sc, &p, None, true), Verdict::RateLimited);
    }

    #[test]
    fn networks_group_neighbours() {
        assert_eq!(network_of("10.1.2.3"), "10.1.2.0/24");
        assert_eq!(network_of("10.1.2.3:5555"), "10.1.2.0/24");
        assert_eq!(network_of("2001:db8:1:2::1"), "2001:db8:1::/48");
        assert_eq!(client_ip("127.0.0.1:4000"), "127.0.0.1");
    }
}
