//! The waiting room.
//!
//! - `POST /v1/events/{id}/queue`: verifies the fan's identity, registers the place with the
//!   core (`POST {router_url}/v1/internal/events/{id}/queue`), and signs a queue ticket
//!   bound to the event, the customer and the device. Clients marked by bot-score get a
//!   shadow ticket instead: it looks the same and never admits.
//! - `GET /v1/events/{id}/queue`: verifies the ticket (signature checked once, then served
//!   from a verified-token cache keyed by the token's hash), compares it with the
//!   admission watermark, and returns place, an honest estimate (a wait range and the
//!   chance of a ticket) and, once admitted, a signed admission token. With
//!   `?wait_s=20&known=<state>` it is a long poll: the instance waits (a monotonic-clock
//!   wait, re-reading the watermark from the key-value store) until the fan's state
//!   differs from `known` or `wait_s` runs out, so "it's your turn" arrives within a
//!   second without the page polling faster than every 20 s.
//! - `POST /v1/events/{id}/queue/waiting-list`: a fan told "sold out" stays for returns;
//!   the core records it and the edge re-issues the ticket marked for the waiting list.
//! - `DELETE /v1/events/{id}/queue`: the fan gives the place up (the core records it).
//! - `POST /v1/events/{id}/holds`: checks the admission token against identity and device
//!   and passes the request to the router.
//!
//! The watermark arrives in the key-value store from the host's NATS subscriber; without
//! one (plain `spin up`) the component polls `GET {router_url}/v1/events/{id}/admission`
//! when what it has is older than two seconds. Either way it admits only by a watermark
//! the core signed (`tessera_queue::watermark::verify` against the `watermark_keys`
//! variable) that is fresh; a forged or stale one counts as none. Only in `mode = local`
//! with no `watermark_keys` are unsigned watermarks believed.
//!
//! The queue registration carries the edge's service credential (`service_credential`,
//! header `x-tessera-service`): the core serves `/v1/internal/...` to Tessera's services
//! only, never on a fan's token alone.

use bytes::Bytes;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest as _, Sha256};
use spin_sdk::key_value::Store;
use tessera_api::queue::{
    AdmissionWatermark, QueueChoice, QueueJoinRequest, QueueJoined, QueuePhase, QueuePlace,
    QueueRegistration, QueueStatus, QueueStatusState, QueueTicketClaims,
};
use tessera_api::{CustomerId, ErrorCode, EventId, QueueTicketId, headers};
use tessera_edge_guest as guest;
use tessera_edge_logic::kv;
use tessera_edge_logic::routes::Route;
use tessera_identity::{IdentityClaims, Keyset, SigningKeyPair, TokenError};
use tessera_queue::token::{self, QueueTokenError, TYP_ADMISSION, TYP_TICKET};
use tessera_queue::{admission, lottery};

use crate::ctx::Ctx;

type Outcome = Result<guest::Reply, guest::Reply>;

fn fail(code: ErrorCode, message: impl Into<String>) -> guest::Reply {
    guest::error(code, message)
}

/// A verified token's claims, cached by the hash of the whole token.
#[derive(Serialize, Deserialize)]
struct Cached<C> {
    at_ms: u64,
    claims: C,
}

/// Clock skew tolerated on identity tokens.
const IDENTITY_LEEWAY_S: u64 = 30;
/// How long a signature check is trusted for the same token string.
const VERIFIED_CACHE_MS: u64 = 60_000;
/// How old a watermark may get before the component asks the region itself.
const WATERMARK_MAX_AGE_MS: u64 = 2_000;

fn token_hash(prefix: &str, token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    format!("{prefix}:{}", hex::encode(&d[..16]))
}

/// Verifies a token's signature once and caches the claims; later calls with the same
/// token skip the signature check.
async fn verified<C: Serialize + DeserializeOwned>(
    store: &Store,
    prefix: &str,
    token: &str,
    now_ms: u64,
    verify: impl FnOnce() -> Result<C, tessera_identity::TokenError>,
) -> Result<C, tessera_identity::TokenError> {
    let key = kv::verified_token(&token_hash(prefix, token));
    if let Ok(Some(raw)) = store.get(&key).await
        && let Ok(c) = serde_json::from_slice::<Cached<C>>(&raw)
        && now_ms.saturating_sub(c.at_ms) < VERIFIED_CACHE_MS
    {
        return Ok(c.claims);
    }
    let claims = verify()?;
    if let Ok(v) = serde_json::to_vec(&Cached { at_ms: now_ms, claims: &claims }) {
        let _ = store.set(&key, v).await;
    }
    Ok(claims)
}

impl Ctx {
    async fn identity(&self, parts: &http::request::Parts) -> Result<CustomerId, guest::Reply> {
        let Some(token) = guest::header(&parts.headers, headers::AUTHORIZATION)
            .and_then(tessera_identity::bearer)
        else {
            return Err(fail(ErrorCode::Unauthenticated, "send `authorization: Bearer <token>`"));
        };
        // The keyset is parsed (point decompression per key) only when the cache misses.
        let keys_spec = self.var("identity_keys").await;
        let issuer = self.var("identity_issuer").await;
        let claims: IdentityClaims = verified(&self.store, "id", token, self.now_ms, || {
            let keys = Keyset::parse(&keys_spec).map_err(|_| TokenError::UnknownKey)?;
            tessera_identity::verify(&keys, token)
        })
        .await
        .map_err(identity_error)?;
        claims.check(&issuer, self.now_ms, IDENTITY_LEEWAY_S).map_err(identity_error)?;
        Ok(claims.sub)
    }

    async fn queue_claims(
        &self,
        token: &str,
        typ: &'static str,
        event_id: &EventId,
        device_hash: &str,
    ) -> Result<QueueTicketClaims, guest::Reply> {
        // The keyset is parsed (point decompression per key) only when the cache misses.
        let keys_spec = self.var("queue_keys").await;
        let claims: QueueTicketClaims = verified(&self.store, "q", token, self.now_ms, || {
            let keys = Keyset::parse(&keys_spec).map_err(|_| TokenError::UnknownKey)?;
            tessera_identity::verify(&keys, token)
        })
        .await
        .map_err(|e| token_error(&QueueTokenError::Invalid(e)))?;
        token::check_claims(&claims, typ, event_id, device_hash, self.now_ms).map_err(|e| {
            if typ == TYP_ADMISSION {
                fail(e.admission_code(), e.to_string())
            } else {
                token_error(&e)
            }
        })?;
        Ok(claims)
    }

    /// What a published watermark (stored or polled) says, if the core's signature covers
    /// it and it is fresh at `now_ms`; `None` otherwise. The signature of one published
    /// watermark is checked once per edge (cached by its hash, as tokens are): the long
    /// polls parked on an event all re-read the same few watermarks.
    async fn trusted_watermark(
        &self,
        event_id: &EventId,
        raw: &[u8],
        now_ms: u64,
    ) -> Option<AdmissionWatermark> {
        let keys_spec = self.var("watermark_keys").await;
        if keys_spec.trim().is_empty() {
            // Unsigned watermarks only where nothing is at stake.
            return if &*self.var("mode").await == "local" {
                serde_json::from_slice(raw).ok()
            } else {
                self.count("watermarks", "no_keys");
                None
            };
        }
        let max_age = tessera_queue::watermark::MAX_AGE_MS;
        let cache_key = kv::verified_token(&token_hash("wm", &hex::encode(Sha256::digest(raw))));
        if let Ok(Some(cached)) = self.store.get(&cache_key).await
            && let Ok(c) = serde_json::from_slice::<Cached<AdmissionWatermark>>(&cached)
            && c.claims.event_id == *event_id
        {
            let wm = c.claims;
            let fresh =
                now_ms <= wm.published_at_ms + max_age && wm.published_at_ms <= now_ms + max_age;
            return fresh.then_some(wm);
        }
        let keys = Keyset::parse(&keys_spec).ok()?;
        match tessera_queue::watermark::verify(&keys, raw, event_id, now_ms, max_age) {
            Ok(wm) => {
                if let Ok(v) = serde_json::to_vec(&Cached { at_ms: now_ms, claims: &wm }) {
                    let _ = self.store.set(&cache_key, v).await;
                }
                Some(wm)
            }
            Err(_) => {
                self.count("watermarks", "refused");
                None
            }
        }
    }

    async fn stored_watermark(
        &self,
        event_id: &EventId,
        now_ms: u64,
    ) -> Option<AdmissionWatermark> {
        let raw = self.store.get(kv::watermark(event_id)).await.ok()??;
        self.trusted_watermark(event_id, &raw, now_ms).await
    }

    async fn bus_alive(&self, now_ms: u64) -> bool {
        match self.store.get(kv::BUS_ALIVE).await {
            Ok(Some(v)) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|t| now_ms.saturating_sub(t) < kv::BUS_ALIVE_MAX_AGE_MS),
            _ => false,
        }
    }

    /// The latest watermark at `now_ms`: pushed by the host, or polled from the region
    /// when stale.
    async fn watermark(&self, event_id: &EventId, now_ms: u64) -> Option<AdmissionWatermark> {
        let stored = self.stored_watermark(event_id, now_ms).await;
        let fresh = stored
            .as_ref()
            .is_some_and(|w| now_ms.saturating_sub(w.published_at_ms) < WATERMARK_MAX_AGE_MS);
        if fresh || (stored.is_some() && self.bus_alive(now_ms).await) {
            return stored;
        }
        let url =
            format!("{}/v1/events/{event_id}/admission", self.upstream.base.trim_end_matches('/'));
        let mut req = http::Request::new(http_body_util::Full::new(Bytes::new()));
        if let Ok(uri) = url.parse() {
            *req.uri_mut() = uri;
        }
        guest::stamp(req.headers_mut(), &self.upstream);
        let polled = match guest::try_send(req).await {
            Ok(resp) if resp.status().is_success() => match guest::read_response(resp).await {
                Ok((_, body)) => {
                    self.trusted_watermark(event_id, &body, now_ms).await.map(|wm| (wm, body))
                }
                Err(_) => None,
            },
            _ => None,
        };
        match (stored, polled) {
            (Some(s), Some((p, _))) if p.version < s.version => Some(s),
            (_, Some((p, body))) => {
                // Stored as published (with its signature), so the next reader checks it too.
                let _ = self.store.set(kv::watermark(event_id), body.to_vec()).await;
                Some(p)
            }
            (s, None) => s,
        }
    }
}

fn identity_error(e: tessera_identity::TokenError) -> guest::Reply {
    use tessera_identity::TokenError as T;
    match e {
        T::Expired => fail(ErrorCode::TokenExpired, "identity token has expired"),
        other => fail(ErrorCode::InvalidToken, format!("identity token refused: {other}")),
    }
}

fn token_error(e: &QueueTokenError) -> guest::Reply {
    fail(e.code(), e.to_string())
}

fn signing_key(spec: &str) -> Option<SigningKeyPair> {
    let (kid, seed) = spec.trim().split_once(':')?;
    SigningKeyPair::from_base64(kid, seed).ok()
}

fn device_of(parts: &http::request::Parts) -> Result<String, guest::Reply> {
    guest::header(&parts.headers, headers::DEVICE)
        .filter(|d| !d.is_empty())
        .map(token::device_hash)
        .ok_or_else(|| fail(ErrorCode::InvalidRequest, "send your device id in `x-tessera-device`"))
}

fn random16() -> [u8; 16] {
    let r = spin_sdk::wasip3::random::random::get_random_bytes(16);
    let mut b = [0u8; 16];
    let n = r.len().min(16);
    b[..n].copy_from_slice(&r[..n]);
    b
}

fn json_reply<T: Serialize>(status: u16, value: &T) -> guest::Reply {
    match serde_json::to_string(value) {
        Ok(s) => guest::json(status, s),
        Err(_) => fail(ErrorCode::Internal, "failed to encode response"),
    }
}

async fn join(
    ctx: &Ctx,
    parts: &http::request::Parts,
    body: &Bytes,
    event_id: EventId,
    pass: &crate::bot::Pass,
) -> Outcome {
    let shadow = pass.shadow;
    let join: QueueJoinRequest = if body.is_empty() {
        QueueJoinRequest::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| fail(ErrorCode::InvalidRequest, format!("invalid request body: {e}")))?
    };
    let customer_id = ctx.identity(parts).await?;
    let device = device_of(parts)?;
    let key = signing_key(&ctx.var("queue_signing_key").await)
        .ok_or_else(|| fail(ErrorCode::Internal, "edge misconfigured: queue_signing_key"))?;
    let ttl_ms = ctx.var_u64("queue_ticket_ttl_s", 4 * 3600).await * 1000;

    let (ticket_id, phase, seq, rank) = if shadow {
        // Looks like any other place; no region ever hears of it.
        let secret = ctx.var("shadow_secret").await;
        let wm = ctx.watermark(&event_id, ctx.now_ms).await;
        let id = lottery::shadow_ticket_id(secret.as_bytes(), random16());
        let phase = match wm.as_ref().map(|w| w.state) {
            Some(tessera_api::inventory::SaleState::Scheduled) | None => QueuePhase::PreOpen,
            _ => QueuePhase::Open,
        };
        let seq = wm.map_or(0, |w| w.open_count + w.pre_open_count);
        (id, phase, seq, None)
    } else {
        let ticket_id = lottery::ticket_id(join.client_nonce.as_deref(), random16());
        let registration = QueueRegistration { ticket_id, customer_id: customer_id.clone() };
        let url = format!(
            "{}/v1/internal/events/{event_id}/queue",
            ctx.upstream.base.trim_end_matches('/')
        );
        let body = serde_json::to_vec(&registration)
            .map_err(|_| fail(ErrorCode::Internal, "failed to encode registration"))?;
        let mut req = http::Request::new(http_body_util::Full::new(Bytes::from(body)));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() =
            url.parse().map_err(|_| fail(ErrorCode::Internal, "edge misconfigured: router_url"))?;
        req.headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        for name in [headers::AUTHORIZATION, headers::DEVICE, headers::BOT_SCORE, "tracestate"] {
            if let Some(v) = parts.headers.get(name) {
                req.headers_mut().insert(http::HeaderName::from_static(name), v.clone());
            }
        }
        let credential = ctx.var("service_credential").await;
        if !credential.is_empty()
            && let Ok(v) = http::HeaderValue::from_str(&credential)
        {
            req.headers_mut().insert(headers::SERVICE_CREDENTIAL, v);
        }
        // Registering is idempotent (the core returns the customer's unfinished place as
        // it is), so the router may repeat it in another region when the first one dies
        // with the request in flight, instead of answering "outcome unknown".
        if let Ok(v) =
            http::HeaderValue::from_str(&format!("queue-join-{}", registration.ticket_id))
        {
            req.headers_mut().insert(headers::IDEMPOTENCY_KEY, v);
        }
        guest::stamp(req.headers_mut(), &ctx.upstream);
        let resp = guest::try_send(req)
            .await
            .map_err(|e| fail(ErrorCode::RegionUnavailable, format!("region unreachable: {e}")))?;
        let status = resp.status().as_u16();
        let (rparts, rbody) =
            guest::read_response(resp).await.map_err(|e| fail(ErrorCode::RegionUnavailable, e))?;
        if !(200..300).contains(&status) {
            // The core's own error (queue closed, unknown event...) goes to the fan as is.
            return Err(guest::from_parts(rparts, rbody));
        }
        let place: QueuePlace = serde_json::from_slice(&rbody)
            .map_err(|_| fail(ErrorCode::Internal, "region sent an unreadable queue place"))?;
        if place.customer_id != customer_id || place.event_id != event_id {
            return Err(fail(ErrorCode::Internal, "region sent a queue place for someone else"));
        }
        crowd_check(ctx, &event_id, &customer_id, &device, &place.ticket_id, pass).await;
        (place.ticket_id, place.phase, place.seq, place.rank)
    };

    let claims = QueueTicketClaims {
        typ: TYP_TICKET.to_owned(),
        ticket_id: ticket_id.clone(),
        event_id: event_id.clone(),
        customer_id,
        device,
        phase,
        seq,
        rank,
        iat_ms: ctx.now_ms,
        exp_ms: ctx.now_ms + ttl_ms,
        kid: String::new(),
        waiting_list: false,
    };
    let ticket = token::issue(&key, &claims);
    let joined = QueueJoined { ticket, ticket_id, event_id, phase };
    Ok(json_reply(200, &joined))
}

#[derive(Serialize, Deserialize)]
struct IssuedAdmission {
    token: String,
    exp_ms: u64,
}

/// The longest a long poll is held when `queue_long_poll_max_s` is unset (the host's
/// per-request limit must allow it).
const LONG_POLL_MAX_S: u64 = 25;
/// How often a long poll re-reads the watermark when the fan may be admitted within a few
/// seconds, and otherwise: "it's your turn" within a second, "sold out" within a few.
const LONG_POLL_NEAR_MS: u64 = 250;
const LONG_POLL_FAR_MS: u64 = 1_000;

/// The fan's status under the current watermark (without an admission token yet).
fn standing(
    claims: &QueueTicketClaims,
    wm: Option<&AdmissionWatermark>,
    shadow: bool,
) -> QueueStatus {
    let Some(wm) = wm else {
        // The controller has not published for this event yet (it just opened, or this
        // edge just started): the fan's place is recorded; they wait without an estimate.
        return QueueStatus {
            event_id: claims.event_id.clone(),
            ticket_id: claims.ticket_id.clone(),
            state: match claims.phase {
                QueuePhase::PreOpen => QueueStatusState::PreOpen,
                QueuePhase::Open => QueueStatusState::Waiting,
            },
            ahead: None,
            estimated_wait_s: None,
            admission_token: None,
            admission_expires_at_ms: None,
            lottery: None,
            wait_s: None,
            chance: None,
            waiting_list: claims.waiting_list,
            choices: vec![QueueChoice::Leave],
        };
    };
    let mut view = admission::view(claims, wm);
    if shadow && matches!(view.state, QueueStatusState::Admitted | QueueStatusState::Expired) {
        // The shadow queue moves, slowly, and never reaches the front: it always sees
        // itself at the back of the line as it is now.
        let mut back = claims.clone();
        back.phase = QueuePhase::Open;
        back.rank = None;
        back.seq = wm.open_count.max(wm.open_admitted + 1);
        let lottery = view.lottery.take();
        view = admission::view(&back, wm);
        view.lottery = lottery;
    }
    QueueStatus {
        event_id: claims.event_id.clone(),
        ticket_id: claims.ticket_id.clone(),
        state: view.state,
        ahead: view.ahead,
        estimated_wait_s: view.estimated_wait_s,
        admission_token: None,
        admission_expires_at_ms: None,
        lottery: view.lottery,
        wait_s: view.wait_s,
        chance: view.chance,
        waiting_list: claims.waiting_list,
        choices: view.choices,
    }
}

/// How long a long poll sleeps before looking again: briefly when the fan may be admitted
/// soon, longer when many are ahead (only a sale-wide change can reach them, and that
/// must reach them within a few seconds).
fn poll_interval_ms(status: &QueueStatus) -> u64 {
    match (status.state, status.wait_s) {
        // `low` is from the fastest measured spell: nobody is admitted sooner than that
        // unless the rate jumps, which the margin covers.
        (QueueStatusState::Waiting, Some(w)) if w.low <= 5 => LONG_POLL_NEAR_MS,
        (QueueStatusState::Waiting, None) => LONG_POLL_NEAR_MS,
        // Returns go to the waiting list at once, whatever the estimate says.
        (QueueStatusState::SoldOut, _) if status.waiting_list => LONG_POLL_NEAR_MS,
        _ => LONG_POLL_FAR_MS,
    }
}

async fn status(
    ctx: &Ctx,
    parts: &http::request::Parts,
    event_id: EventId,
    pass: &crate::bot::Pass,
) -> Outcome {
    let device = device_of(parts)?;
    let ticket = guest::header(&parts.headers, headers::QUEUE_TICKET)
        .ok_or_else(|| fail(ErrorCode::QueueTicketInvalid, "send your queue ticket"))?;
    if pass.token_requests > pass.ticket_polls_per_window {
        // A flood from one ticket changes nothing and is told when to come back (far past
        // the limit, `crate::bot` has moved the ticket to the shadow queue).
        let window_ends = (ctx.now_ms / tessera_edge_logic::bot::WINDOW_MS + 1)
            * tessera_edge_logic::bot::WINDOW_MS;
        let mut r = fail(
            ErrorCode::QueuePollTooFast,
            "too many status requests with this ticket: long-poll with `?wait_s=20&known=<state>`",
        );
        let retry = window_ends.saturating_sub(ctx.now_ms).div_ceil(1000).max(1);
        guest::set_header(r.headers_mut(), "retry-after", &retry.to_string());
        return Err(r);
    }
    let poll = tessera_edge_logic::validate::long_poll(parts.uri.query())
        .map_err(|e| guest::error_body(&e))?;
    let claims = ctx.queue_claims(ticket, TYP_TICKET, &event_id, &device).await?;
    let shadow = shadowed(ctx, &claims.ticket_id).await;
    let max_s = ctx.var_u64("queue_long_poll_max_s", LONG_POLL_MAX_S).await;
    let wait_ms = poll.wait_s.min(max_s) * 1000;
    let started = guest::now_ms();
    let mut out = loop {
        let now = guest::now_ms();
        let wm = ctx.watermark(&event_id, now).await;
        let out = standing(&claims, wm.as_ref(), shadow);
        let elapsed = now.saturating_sub(started);
        let changed = poll.known.is_none_or(|k| k != out.state);
        if wait_ms == 0 || changed || elapsed >= wait_ms {
            break out;
        }
        let nap = poll_interval_ms(&out).min(wait_ms - elapsed);
        spin_sdk::time::sleep(std::time::Duration::from_millis(nap)).await;
    };
    if out.state == QueueStatusState::Admitted && !shadow {
        let now = guest::now_ms();
        if matches!(ctx.store.exists(&kv::queue_left(claims.ticket_id.as_str())).await, Ok(true)) {
            return Err(fail(
                ErrorCode::QueueLeft,
                "you left the waiting room with this ticket; join again for a new place",
            ));
        }
        let ttl_ms = ctx.var_u64("admission_ttl_s", 600).await * 1000;
        let issued_key = kv::admission_issued(claims.ticket_id.as_str());
        let reuse = match ctx.store.get(&issued_key).await {
            Ok(Some(raw)) => serde_json::from_slice::<IssuedAdmission>(&raw)
                .ok()
                .filter(|a| a.exp_ms.saturating_sub(now) > ttl_ms / 2),
            _ => None,
        };
        let issued = match reuse {
            Some(a) => a,
            None => {
                let key = signing_key(&ctx.var("queue_signing_key").await).ok_or_else(|| {
                    fail(ErrorCode::Internal, "edge misconfigured: queue_signing_key")
                })?;
                let mut adm = claims.clone();
                adm.typ = TYP_ADMISSION.to_owned();
                adm.iat_ms = now;
                adm.exp_ms = now + ttl_ms;
                let a = IssuedAdmission { token: token::issue(&key, &adm), exp_ms: adm.exp_ms };
                if let Ok(v) = serde_json::to_vec(&a) {
                    let _ = ctx.store.set(&issued_key, v).await;
                }
                a
            }
        };
        out.admission_token = Some(issued.token);
        out.admission_expires_at_ms = Some(issued.exp_ms);
    }
    Ok(json_reply(200, &out))
}

/// The ticket a fan's waiting-list or leave request is about, checked against their
/// identity and device.
async fn own_ticket(
    ctx: &Ctx,
    parts: &http::request::Parts,
    event_id: &EventId,
) -> Result<QueueTicketClaims, guest::Reply> {
    let device = device_of(parts)?;
    let ticket = guest::header(&parts.headers, headers::QUEUE_TICKET)
        .ok_or_else(|| fail(ErrorCode::QueueTicketInvalid, "send your queue ticket"))?;
    let claims = ctx.queue_claims(ticket, TYP_TICKET, event_id, &device).await?;
    let customer_id = ctx.identity(parts).await?;
    if claims.customer_id != customer_id {
        return Err(token_error(&QueueTokenError::WrongCustomer));
    }
    Ok(claims)
}

/// Sends a fan's waiting-room request to the core
/// (`POST {router}/v1/internal/events/{id}/queue/{action}`), with the fan's identity,
/// device and ticket for the core to check. Both such requests (`waiting-list`, `leave`)
/// are idempotent in the core, so each carries a key made of the action and the ticket
/// (`queue-<action>-<ticket id>`): the router may repeat it in another region when the
/// first dies with it in flight, rather than answer "outcome unknown".
async fn tell_core(
    ctx: &Ctx,
    parts: &http::request::Parts,
    event_id: &EventId,
    action: &str,
    ticket_id: &QueueTicketId,
) -> Result<(), guest::Reply> {
    let url = format!(
        "{}/v1/internal/events/{event_id}/queue/{action}",
        ctx.upstream.base.trim_end_matches('/')
    );
    let mut req = http::Request::new(http_body_util::Full::new(Bytes::new()));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() =
        url.parse().map_err(|_| fail(ErrorCode::Internal, "edge misconfigured: router_url"))?;
    for name in [headers::AUTHORIZATION, headers::DEVICE, headers::QUEUE_TICKET, "tracestate"] {
        if let Some(v) = parts.headers.get(name) {
            req.headers_mut().insert(http::HeaderName::from_static(name), v.clone());
        }
    }
    // The core serves `/v1/internal/...` to Tessera's services only.
    let credential = ctx.var("service_credential").await;
    if !credential.is_empty()
        && let Ok(v) = http::HeaderValue::from_str(&credential)
    {
        req.headers_mut().insert(headers::SERVICE_CREDENTIAL, v);
    }
    if let Ok(v) = http::HeaderValue::from_str(&format!("queue-{action}-{ticket_id}")) {
        req.headers_mut().insert(headers::IDEMPOTENCY_KEY, v);
    }
    guest::stamp(req.headers_mut(), &ctx.upstream);
    let resp = guest::try_send(req)
        .await
        .map_err(|e| fail(ErrorCode::RegionUnavailable, format!("region unreachable: {e}")))?;
    let status = resp.status().as_u16();
    let (rparts, rbody) =
        guest::read_response(resp).await.map_err(|e| fail(ErrorCode::RegionUnavailable, e))?;
    if (200..300).contains(&status) { Ok(()) } else { Err(guest::from_parts(rparts, rbody)) }
}

/// A ticket whose status requests came far past the per-window limit (whatever the
/// edge answered them with: refusals and challenges count too): a page long-polls, so
/// this is automation, and the ticket (once its signature and device say it is one) is
/// served as a shadow ticket from now on.
pub(crate) async fn flag_flooding_ticket(
    ctx: &Ctx,
    parts: &http::request::Parts,
    event_id: &EventId,
) {
    let Some(ticket) = guest::header(&parts.headers, headers::QUEUE_TICKET) else { return };
    let Ok(device) = device_of(parts) else { return };
    if let Ok(claims) = ctx.queue_claims(ticket, TYP_TICKET, event_id, &device).await
        && !shadowed(ctx, &claims.ticket_id).await
    {
        flag(ctx, claims.ticket_id.as_str(), "polls").await;
        ctx.count("bot_verdicts", "poll_flagged");
    }
}

/// Whether a ticket is served as a shadow ticket: issued as one, or flagged since.
async fn shadowed(ctx: &Ctx, ticket_id: &QueueTicketId) -> bool {
    let secret = ctx.var("shadow_secret").await;
    lottery::is_shadow(secret.as_bytes(), ticket_id)
        || matches!(ctx.store.exists(&kv::queue_flagged(ticket_id.as_str())).await, Ok(true))
}

async fn flag(ctx: &Ctx, ticket_id: &str, why: &'static str) {
    let _ = ctx.store.set(&kv::queue_flagged(ticket_id), why.as_bytes()).await;
}

/// The accounts seen on one device, or the devices of one account, in one event's
/// waiting room, with their tickets.
#[derive(Default, Serialize, Deserialize)]
struct Crowd {
    members: Vec<String>,
    tickets: Vec<String>,
}

/// Tickets kept per crowd (a crowd past its limit flags every later ticket as it joins).
const CROWD_TICKETS_KEPT: usize = 64;

/// Records a join in its device's and its account's crowds. A crowd past its limit (more
/// accounts on one device, or more devices of one account, than a household has) is one
/// client pretending to be many: all its tickets move to the shadow queue. Best effort
/// under concurrency (two joins at once may each miss the other), which costs a bot one
/// ticket at most.
async fn crowd_check(
    ctx: &Ctx,
    event_id: &EventId,
    customer: &CustomerId,
    device: &str,
    ticket_id: &QueueTicketId,
    pass: &crate::bot::Pass,
) {
    let crowds = [
        (
            kv::queue_device_accounts(event_id, device),
            customer.as_str(),
            pass.accounts_per_device,
            "accounts_per_device",
        ),
        (
            kv::queue_account_devices(event_id, customer.as_str()),
            device,
            pass.devices_per_account,
            "devices_per_account",
        ),
    ];
    for (key, member, limit, why) in crowds {
        if limit == 0 {
            continue;
        }
        let mut crowd: Crowd = match ctx.store.get(&key).await {
            Ok(Some(raw)) => serde_json::from_slice(&raw).unwrap_or_default(),
            _ => Crowd::default(),
        };
        let over_before = crowd.members.len() > limit as usize;
        if !crowd.members.iter().any(|m| m == member) && !over_before {
            crowd.members.push(member.to_owned());
        }
        let ticket = ticket_id.as_str();
        if !crowd.tickets.iter().any(|t| t == ticket) && crowd.tickets.len() < CROWD_TICKETS_KEPT {
            crowd.tickets.push(ticket.to_owned());
        }
        if let Ok(v) = serde_json::to_vec(&crowd) {
            let _ = ctx.store.set(&key, v).await;
        }
        if crowd.members.len() > limit as usize {
            if !over_before {
                for t in &crowd.tickets {
                    flag(ctx, t, why).await;
                }
            }
            flag(ctx, ticket, why).await;
            ctx.count("bot_verdicts", "crowd_flagged");
        }
    }
}

/// `POST /v1/events/{id}/queue/waiting-list`.
async fn waiting_list(ctx: &Ctx, parts: &http::request::Parts, event_id: EventId) -> Outcome {
    let mut claims = own_ticket(ctx, parts, &event_id).await?;
    let key = signing_key(&ctx.var("queue_signing_key").await)
        .ok_or_else(|| fail(ErrorCode::Internal, "edge misconfigured: queue_signing_key"))?;
    if !claims.waiting_list {
        let shadow = shadowed(ctx, &claims.ticket_id).await;
        let wm = ctx.watermark(&event_id, ctx.now_ms).await;
        let state = standing(&claims, wm.as_ref(), shadow).state;
        if state != QueueStatusState::SoldOut {
            return Err(fail(
                ErrorCode::NotSoldOut,
                "places are still offered in queue order: keep your place (the waiting list opens when the sale is sold out)",
            ));
        }
        if !shadow {
            tell_core(ctx, parts, &event_id, "waiting-list", &claims.ticket_id).await?;
        }
        claims.waiting_list = true;
    }
    // The same place, marked for the waiting list (choosing twice gets the same answer).
    let joined = QueueJoined {
        ticket: token::issue(&key, &claims),
        ticket_id: claims.ticket_id.clone(),
        event_id,
        phase: claims.phase,
    };
    Ok(json_reply(200, &joined))
}

/// `DELETE /v1/events/{id}/queue`.
async fn leave(ctx: &Ctx, parts: &http::request::Parts, event_id: EventId) -> Outcome {
    let claims = own_ticket(ctx, parts, &event_id).await?;
    let secret = ctx.var("shadow_secret").await;
    if !lottery::is_shadow(secret.as_bytes(), &claims.ticket_id) {
        tell_core(ctx, parts, &event_id, "leave", &claims.ticket_id).await?;
        let _ =
            ctx.store.set(&kv::queue_left(claims.ticket_id.as_str()), ctx.now_ms.to_string()).await;
    }
    let (parts, ()) = http::Response::builder()
        .status(204)
        .body(())
        .map_err(|_| fail(ErrorCode::Internal, "failed to build a response"))?
        .into_parts();
    Ok(guest::from_parts(parts, Bytes::new()))
}

async fn hold(ctx: &Ctx, parts: &http::request::Parts, body: Bytes, event_id: EventId) -> Outcome {
    let device = device_of(parts)?;
    let customer_id = ctx.identity(parts).await?;
    let token = guest::header(&parts.headers, headers::ADMISSION)
        .ok_or_else(|| fail(ErrorCode::AdmissionRequired, "holds need an admission token"))?;
    let claims = ctx.queue_claims(token, TYP_ADMISSION, &event_id, &device).await?;
    if claims.customer_id != customer_id {
        return Err(token_error(&QueueTokenError::WrongCustomer));
    }
    let used_key = kv::admission_used(claims.ticket_id.as_str());
    if matches!(ctx.store.exists(&used_key).await, Ok(true)) {
        // The same answer as the core's, which decides in the hold's own transaction;
        // this check only spares the region a request it would refuse.
        return Err(fail(ErrorCode::AdmissionUsed, "this admission already admitted a hold"));
    }
    if matches!(ctx.store.exists(&kv::queue_left(claims.ticket_id.as_str())).await, Ok(true)) {
        return Err(fail(
            ErrorCode::QueueLeft,
            "you left the waiting room with this ticket; join again for a new place",
        ));
    }
    // A ticket caught acting as a bot after its admission was issued (a crowd found when
    // a later account of it joined, or a flood counted late on a busy edge) holds nothing:
    // the flag reaches the admission it already has, not only the places still ahead.
    // Told as an admission that is no longer valid, which says nothing of why.
    if shadowed(ctx, &claims.ticket_id).await {
        ctx.count("bot_verdicts", "admission_refused");
        return Err(fail(ErrorCode::AdmissionExpired, "this admission is no longer valid"));
    }
    let reply = guest::forward(parts, body, &ctx.upstream).await;
    if reply.status().is_success() {
        let _ = ctx.store.set(&used_key, ctx.now_ms.to_string()).await;
    }
    Ok(reply)
}

/// Serves a waiting-room route.
pub(crate) async fn serve(
    ctx: &Ctx,
    parts: &http::request::Parts,
    body: Bytes,
    route: Route,
    pass: &crate::bot::Pass,
) -> guest::Reply {
    let shadow = pass.shadow;
    let (out, what) = match route {
        Route::QueueJoin { event_id } => (
            join(ctx, parts, &body, event_id, pass).await,
            if shadow { "shadow_joined" } else { "joined" },
        ),
        Route::QueueStatus { event_id } => (status(ctx, parts, event_id, pass).await, "status"),
        Route::QueueWaitingList { event_id } => {
            (waiting_list(ctx, parts, event_id).await, "waiting_list")
        }
        Route::QueueLeave { event_id } => (leave(ctx, parts, event_id).await, "left"),
        Route::CreateHold { event_id } => {
            (hold(ctx, parts, body, event_id).await, "hold_forwarded")
        }
        _ => return guest::forward(parts, body, &ctx.upstream).await,
    };
    match out {
        Ok(reply) => {
            ctx.count("queue_outcomes", what);
            reply
        }
        Err(reply) => {
            ctx.count(
                "queue_outcomes",
                if reply.status().is_client_error() { "rejected" } else { "error" },
            );
            reply
        }
    }
}
