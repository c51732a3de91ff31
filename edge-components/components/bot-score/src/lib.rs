//! Bot scoring at the edge. Each request's signals (rates per client, network and token,
//! header anomalies, timing regularity, challenge history) are kept in the key-value
//! store and scored by `tessera_edge_logic::bot`. Then:
//! - over the hard rate limit: `429 rate_limited`;
//! - a middling score without a solved challenge: `428 challenge_required` with an
//!   adaptive proof-of-work challenge in `x-tessera-pow-challenge`;
//! - a bot's queue join: passed on marked for the shadow queue (other routes are
//!   challenged at full difficulty);
//! - otherwise the request goes on: catalog reads to `catalog-cache`, queue routes to
//!   `waiting-room`, the rest to the region router.
//!
//! Thresholds come from the `bot_policy` variable (JSON, per-event overrides).

#![allow(
    clippy::result_large_err,
    reason = "the error side is the HTTP response to send; boxing it only adds an allocation"
)]

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use spin_sdk::http::Request;
use spin_sdk::http_service;
use spin_sdk::key_value::Store;
use spin_sdk::variables;
use tessera_api::{ErrorCode, headers};
use tessera_edge_guest as guest;
use tessera_edge_logic::bot::{self, Policy, Signals, Verdict};
use tessera_edge_logic::routes::{Route, Stage, classify};
use tessera_edge_logic::{kv, pow};

/// What the store keeps per client.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ClientState {
    window: u64,
    count: u32,
    times_ms: Vec<u64>,
    solved: u32,
    failed: u32,
    /// Last challenge counted as solved (each counts once).
    last_solved: String,
}

const TIMES_KEPT: usize = 8;

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..10])
}

async fn bump(store: &Store, key: &str) -> u32 {
    let n = match store.get(key).await {
        Ok(Some(v)) => {
            std::str::from_utf8(&v).ok().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0)
        }
        _ => 0,
    } + 1;
    let _ = store.set(key, n.to_string()).await;
    n
}

async fn var(name: &str) -> String {
    variables::get(name).await.unwrap_or_default()
}

#[http_service]
async fn handle(req: Request) -> Result<guest::Reply, spin_sdk::http::Error> {
    let (mut parts, body) = match guest::split(req, 64 * 1024).await {
        Ok(v) => v,
        Err(reply) => return Ok(reply),
    };
    let route = match classify(parts.method.as_str(), parts.uri.path()) {
        Ok(r) => r,
        Err(e) => return Ok(guest::error_body(&e)),
    };
    let policy = match Policy::parse(&var("bot_policy").await) {
        Ok(p) => p,
        Err(e) => return Ok(guest::error(ErrorCode::Internal, e)),
    };
    let secret = var("pow_secret").await;
    let store = match Store::open_default().await {
        Ok(s) => s,
        Err(e) => return Ok(guest::error(ErrorCode::Internal, format!("key-value: {e}"))),
    };
    let now = guest::now_ms();
    let window = now / bot::WINDOW_MS;

    let addr =
        guest::header(&parts.headers, guest::CLIENT_ADDR_HEADER_INTERNAL).unwrap_or("unknown");
    let ip = bot::client_ip(addr);
    let network = bot::network_of(&ip);
    let device = guest::header(&parts.headers, headers::DEVICE);
    let client = short_hash(&format!("{ip}|{}", device.unwrap_or("")));

    let client_key = kv::timing(&client);
    let mut state: ClientState = match store.get(&client_key).await {
        Ok(Some(v)) => serde_json::from_slice(&v).unwrap_or_default(),
        _ => ClientState::default(),
    };
    if state.window != window {
        state.window = window;
        state.count = 0;
    }
    state.count += 1;
    state.times_ms.push(now);
    if state.times_ms.len() > TIMES_KEPT {
        let excess = state.times_ms.len() - TIMES_KEPT;
        state.times_ms.drain(..excess);
    }

    let mut pow_ok = false;
    if let Some(solution) = guest::header(&parts.headers, headers::POW) {
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

    let network_requests = bump(&store, &kv::rate("n", &short_hash(&network), window)).await;
    let token = guest::header(&parts.headers, headers::QUEUE_TICKET)
        .or_else(|| guest::header(&parts.headers, headers::AUTHORIZATION));
    let token_requests = match token {
        Some(t) => bump(&store, &kv::rate("t", &short_hash(t), window)).await,
        None => 0,
    };
    if let Ok(v) = serde_json::to_vec(&state) {
        let _ = store.set(&client_key, v).await;
    }

    let signals = Signals {
        client_requests: state.count,
        network_requests,
        token_requests,
        user_agent: guest::header(&parts.headers, "user-agent").map(str::to_owned),
        has_accept: parts.headers.contains_key("accept"),
        has_accept_language: parts.headers.contains_key("accept-language"),
        has_device: device.is_some(),
        recent_times_ms: state.times_ms.clone(),
        challenges_solved: state.solved,
        challenges_failed: state.failed,
    };
    let score = bot::score(&signals, &policy);
    let event_id = route.event_id().cloned();
    let mut verdict = bot::verdict(&signals, &score, &policy, event_id.as_ref(), pow_ok);
    if verdict == Verdict::Shadow && !matches!(route, Route::QueueJoin { .. }) {
        verdict = Verdict::Challenge { difficulty: pow::DIFFICULTY_MAX };
    }

    let mut reply = match verdict {
        Verdict::RateLimited => {
            let mut r = guest::error(ErrorCode::RateLimited, "too many requests; slow down");
            guest::set_header(r.headers_mut(), "retry-after", "10");
            r
        }
        Verdict::Challenge { difficulty } => {
            let mut salt = [0u8; 8];
            let random = spin_sdk::wasip3::random::random::get_random_bytes(8);
            salt.copy_from_slice(&random[..8.min(random.len())]);
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
            r
        }
        Verdict::Allow | Verdict::Shadow => {
            guest::set_header(&mut parts.headers, headers::BOT_SCORE, &score.total.to_string());
            if verdict == Verdict::Shadow {
                guest::set_header(&mut parts.headers, guest::SHADOW_HEADER, "1");
            }
            let next = match route.stage() {
                Stage::Catalog => "http://catalog-cache.spin.internal".to_owned(),
                Stage::WaitingRoom => "http://waiting-room.spin.internal".to_owned(),
                Stage::Router => var("router_url").await,
            };
            if next.is_empty() {
                guest::error(ErrorCode::Internal, "edge misconfigured: router_url is not set")
            } else {
                guest::forward(&parts, body, &next).await
            }
        }
    };
    guest::set_header(reply.headers_mut(), guest::VERDICT_HEADER, verdict.label());
    Ok(reply)
}
