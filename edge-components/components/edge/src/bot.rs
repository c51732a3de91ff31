//! Bot scoring. Each request's signals (rates per client, network and token, header
//! anomalies, timing regularity, challenge history) are kept in the key-value store and
//! scored by `tessera_edge_logic::bot`. Then:
//! - over the hard rate limit: `429 rate_limited` with `retry-after`;
//! - a middling score without a solved challenge: `428 challenge_required` with an
//!   adaptive proof-of-work challenge in `x-tessera-pow-challenge`;
//! - a bot's queue join goes on marked for the shadow queue (other routes are challenged
//!   at full difficulty);
//! - otherwise the request goes on, with its score for the region in `x-tessera-bot-score`.
//!
//! A client is its address and device: fans behind one address (a stadium's Wi-Fi, a
//! carrier's NAT) are rated one by one when each sends its own device id. Thresholds come
//! from the `bot_policy` variable (JSON, per-event overrides).

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tessera_api::{ErrorCode, headers};
use tessera_edge_guest as guest;
use tessera_edge_logic::bot::{self, Policy, Signals, Verdict};
use tessera_edge_logic::routes::Route;
use tessera_edge_logic::{kv, pow};

use crate::ctx::Ctx;

/// What the store keeps per client besides its rate counters: recent request times and
/// challenge history (best effort: two concurrent requests may each add only their own
/// time, which costs the timing signal one sample; counts that limit rates are atomic).
#[derive(Debug, Default, Serialize, Deserialize)]
struct ClientState {
    times_ms: Vec<u64>,
    solved: u32,
    failed: u32,
    /// Last challenge counted as solved (each counts once).
    last_solved: String,
}

const TIMES_KEPT: usize = 8;

/// A request that may go on.
pub(crate) struct Pass {
    /// Its queue join goes to the shadow queue.
    pub shadow: bool,
    /// Requests with its queue ticket (or identity token) in this window, this one
    /// included, and how many queue status requests a ticket may make per window.
    pub token_requests: u32,
    pub ticket_polls_per_window: u32,
    pub accounts_per_device: u32,
    pub devices_per_account: u32,
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..10])
}

/// Counts a request in a rate window; atomic, so concurrent instances never under-count.
fn bump(ctx: &Ctx, key: &str) -> u32 {
    ctx.increment(key, 1).map_or(1, |n| n.clamp(1, i64::from(u32::MAX)) as u32)
}

/// Scores the request; `Err` is the answer for a request that may not go on.
pub(crate) async fn check(
    ctx: &Ctx,
    parts: &mut http::request::Parts,
    route: &Route,
) -> Result<Pass, guest::Reply> {
    let policy = Policy::parse(&ctx.var("bot_policy").await)
        .map_err(|e| guest::error(ErrorCode::Internal, e))?;
    let now = ctx.now_ms;
    let window = now / bot::WINDOW_MS;

    let ip = bot::client_ip(&ctx.client_addr);
    let network = bot::network_of(&ip);
    let device = guest::header(&parts.headers, headers::DEVICE);
    let client = short_hash(&format!("{ip}|{}", device.unwrap_or("")));

    let client_key = kv::timing(&client);
    let mut state: ClientState = match ctx.store.get(&client_key).await {
        Ok(Some(v)) => serde_json::from_slice(&v).unwrap_or_default(),
        _ => ClientState::default(),
    };
    // A long-polled status request comes back when the edge answers it: its timing is the
    // edge's, not the client's, so it says nothing about who sends it.
    let paced = matches!(route, Route::QueueStatus { .. })
        && tessera_edge_logic::validate::long_poll(parts.uri.query()).is_ok_and(|l| l.wait_s > 0);
    if !paced {
        state.times_ms.push(now);
    }
    if state.times_ms.len() > TIMES_KEPT {
        let excess = state.times_ms.len() - TIMES_KEPT;
        state.times_ms.drain(..excess);
    }

    let mut pow_ok = false;
    if let Some(solution) = guest::header(&parts.headers, headers::POW) {
        let secret = ctx.var("pow_secret").await;
        match pow::verify(secret.as_bytes(), &client, solution, now) {
            Ok(_) => {
                pow_ok = true;
                let challenge = solution.rsplit_once(':').map_or("", |(c, _)| c);
                if state.last_solved != challenge {
                    state.solved += 1;
                    state.last_solved = challenge.to_owned();
                }
            }
            Err(_) => state.failed += 1,
        }
    }

    let client_requests = bump(ctx, &kv::rate("c", &client, window));
    let network_requests = bump(ctx, &kv::rate("n", &short_hash(&network), window));
    let token = guest::header(&parts.headers, headers::QUEUE_TICKET)
        .or_else(|| guest::header(&parts.headers, headers::AUTHORIZATION));
    let token_requests = match token {
        Some(t) => bump(ctx, &kv::rate("t", &short_hash(t), window)),
        None => 0,
    };
    if let Ok(v) = serde_json::to_vec(&state) {
        let _ = ctx.store.set(&client_key, &v).await;
    }
    if let Route::QueueStatus { event_id } = route
        && policy.ticket_polls_shadow_factor > 0
        && token_requests
            > policy.ticket_polls_per_window.saturating_mul(policy.ticket_polls_shadow_factor)
    {
        crate::waiting_room::flag_flooding_ticket(ctx, parts, event_id).await;
    }

    let signals = Signals {
        client_requests,
        network_requests,
        token_requests,
        user_agent: guest::header(&parts.headers, "user-agent").map(str::to_owned),
        has_accept: parts.headers.contains_key("accept"),
        has_accept_language: parts.headers.contains_key("accept-language"),
        has_device: device.is_some(),
        recent_times_ms: std::mem::take(&mut state.times_ms),
        challenges_solved: state.solved,
        challenges_failed: state.failed,
    };
    let score = bot::score(&signals, &policy);
    let mut verdict = bot::verdict(&signals, &score, &policy, route.event_id(), pow_ok);
    if verdict == Verdict::Shadow && !matches!(route, Route::QueueJoin { .. }) {
        verdict = Verdict::Challenge { difficulty: pow::DIFFICULTY_MAX };
    }

    ctx.count("bot_verdicts", verdict.label());
    match verdict {
        Verdict::RateLimited => {
            let mut r = guest::error(ErrorCode::RateLimited, "too many requests; slow down");
            guest::set_header(r.headers_mut(), "retry-after", "10");
            Err(r)
        }
        Verdict::Challenge { difficulty } => {
            let mut salt = [0u8; 8];
            let random = guest::random_bytes(8);
            salt.copy_from_slice(&random[..8.min(random.len())]);
            let secret = ctx.var("pow_secret").await;
            let challenge = pow::issue(secret.as_bytes(), &client, difficulty, now, salt);
            let mut r = guest::error(
                ErrorCode::ChallengeRequired,
                format!(
                    "solve the challenge in `x-tessera-pow-challenge` ({difficulty} leading zero bits of SHA-256(challenge:nonce)) and retry with `{}: <challenge>:<nonce>`",
                    headers::POW
                ),
            );
            guest::set_header(r.headers_mut(), "x-tessera-pow-challenge", &challenge);
            guest::set_header(r.headers_mut(), "x-tessera-pow-difficulty", &difficulty.to_string());
            Err(r)
        }
        Verdict::Allow | Verdict::Shadow => {
            guest::set_header(&mut parts.headers, headers::BOT_SCORE, &score.total.to_string());
            Ok(Pass {
                shadow: verdict == Verdict::Shadow,
                token_requests,
                ticket_polls_per_window: policy.ticket_polls_per_window,
                accounts_per_device: policy.accounts_per_device,
                devices_per_account: policy.devices_per_account,
            })
        }
    }
}
