//! Catalog reads at the edge: the event list, event details with seat maps, availability
//! counts and section seat states, served from the key-value store.
//!
//! Entries are invalidated by the host's NATS subscriber within a second of a change
//! (it writes invalidation marks the entries are compared with); without a subscriber
//! (plain `spin up`) short TTLs keep counts honest. When the region cannot be reached, a
//! stale entry is served with `x-tessera-stale: true`.

#![allow(
    clippy::result_large_err,
    reason = "the error side is the HTTP response to send; boxing it only adds an allocation"
)]

use bytes::Bytes;
use spin_sdk::http::Request;
use spin_sdk::http_service;
use spin_sdk::key_value::Store;
use spin_sdk::variables;
use tessera_api::{ErrorCode, headers};
use tessera_edge_guest as guest;
use tessera_edge_logic::catalog::{self, CacheEntry, CacheTtls, Kind};
use tessera_edge_logic::kv;
use tessera_edge_logic::routes::{Route, classify};

/// How long one request may take to refresh an entry before another one tries.
const REFRESH_LOCK_MS: u64 = 2_000;

async fn read_u64(store: &Store, key: &str) -> Option<u64> {
    let v = store.get(key).await.ok()??;
    std::str::from_utf8(&v).ok()?.parse().ok()
}

fn cached_reply(entry: &CacheEntry, outcome: &str, stale: bool) -> guest::Reply {
    let mut r = guest::json(entry.status, Bytes::from(entry.body.clone()));
    guest::set_header(r.headers_mut(), "content-type", &entry.content_type);
    guest::set_header(r.headers_mut(), guest::CACHE_HEADER, outcome);
    if stale {
        guest::set_header(r.headers_mut(), headers::STALE, "true");
    }
    r
}

fn with_cache(mut r: guest::Reply, outcome: &str) -> guest::Reply {
    guest::set_header(r.headers_mut(), guest::CACHE_HEADER, outcome);
    r
}

#[http_service]
async fn handle(req: Request) -> Result<guest::Reply, spin_sdk::http::Error> {
    let (parts, body) = match guest::split(req, 64 * 1024).await {
        Ok(v) => v,
        Err(reply) => return Ok(reply),
    };
    let router_url = variables::get("router_url").await.unwrap_or_default();
    if router_url.is_empty() {
        return Ok(guest::error(ErrorCode::Internal, "edge misconfigured: router_url is not set"));
    }
    let route = match classify(parts.method.as_str(), parts.uri.path()) {
        Ok(r) => r,
        Err(e) => return Ok(guest::error_body(&e)),
    };
    let Some(kind) = catalog::kind(&route) else {
        return Ok(guest::forward(&parts, body, &router_url).await);
    };
    let store = match Store::open_default().await {
        Ok(s) => s,
        Err(e) => return Ok(guest::error(ErrorCode::Internal, format!("key-value: {e}"))),
    };
    let now = guest::now_ms();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let key = kv::catalog_entry(path);
    let inv_key = match (&route, kind) {
        (_, Kind::EventList) => kv::INVALIDATED_EVENT_LIST.to_owned(),
        (Route::GetEvent { event_id }, _) => kv::invalidated_event(event_id),
        (Route::Availability { event_id } | Route::SectionSeats { event_id, .. }, _) => {
            kv::invalidated_counts(event_id)
        }
        _ => kv::INVALIDATED_EVENT_LIST.to_owned(),
    };
    let entry: Option<CacheEntry> = match store.get(&key).await {
        Ok(Some(raw)) => CacheEntry::decode(&raw),
        _ => None,
    };
    let pushed = read_u64(&store, kv::BUS_ALIVE)
        .await
        .is_some_and(|t| now.saturating_sub(t) < kv::BUS_ALIVE_MAX_AGE_MS);
    let ttl = CacheTtls::default().ttl_ms(kind, pushed);
    if let Some(e) = &entry {
        let invalidated = read_u64(&store, &inv_key).await;
        if catalog::is_fresh(e, invalidated, ttl, now) {
            return Ok(cached_reply(e, "hit", false));
        }
        // Only aged out (nothing changed that we know of): one request refreshes it while
        // the others keep getting the entry, so a popular key does not send a burst of
        // identical reads to the region every TTL.
        let invalidated_since = invalidated.is_some_and(|inv| inv >= e.stored_at_ms);
        let lock_key = format!("{key}#refresh");
        if !invalidated_since && now.saturating_sub(e.stored_at_ms) < ttl.saturating_mul(10) {
            let refreshing = read_u64(&store, &lock_key)
                .await
                .is_some_and(|t| now.saturating_sub(t) < REFRESH_LOCK_MS);
            if refreshing {
                return Ok(cached_reply(e, "revalidating", false));
            }
            let _ = store.set(&lock_key, now.to_string()).await;
        }
    }

    let upstream = match guest::outbound(&parts, body, &router_url) {
        Ok(req) => guest::try_send(req).await,
        Err(reply) => return Ok(reply),
    };
    let resp = match upstream {
        Ok(resp) if !catalog::is_region_failure(resp.status().as_u16()) => resp,
        failed => {
            if let Some(e) = &entry {
                return Ok(cached_reply(e, "stale", true));
            }
            let why = match failed {
                Ok(resp) => format!("region answered {}", resp.status().as_u16()),
                Err(e) => format!("region unreachable: {e}"),
            };
            return Ok(with_cache(guest::error(ErrorCode::RegionUnavailable, why), "miss"));
        }
    };
    let status = resp.status().as_u16();
    let (rparts, rbody) = match guest::read_response(resp).await {
        Ok(v) => v,
        Err(e) => return Ok(guest::error(ErrorCode::RegionUnavailable, e)),
    };
    if catalog::is_cacheable(status) {
        let content_type =
            guest::header(&rparts.headers, "content-type").unwrap_or("application/json").to_owned();
        // Stamped with the time the read started: an invalidation that lands while the
        // read is in flight still wins.
        let entry = CacheEntry {
            stored_at_ms: now,
            status,
            content_type,
            body: String::from_utf8_lossy(&rbody).into_owned(),
        };
        let _ = store.set(&key, entry.encode()).await;
        let _ = store.delete(format!("{key}#refresh")).await;
    }
    Ok(with_cache(guest::from_parts(rparts, rbody), "miss"))
}
