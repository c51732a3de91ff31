//! The catalog cache: the event list, event details with seat maps, availability
//! counts and section seat states, served from the key-value store.
//!
//! Entries are invalidated by the host's NATS subscriber within a second of a change
//! (it writes invalidation marks the entries are compared with); without a subscriber
//! (plain `spin up`) short TTLs keep counts honest. When the region cannot be reached, a
//! stale entry is served with `x-tessera-stale: true`.

use bytes::Bytes;
use tessera_api::{ErrorCode, headers};
use tessera_edge_guest as guest;
use tessera_edge_logic::catalog::{self, CacheEntry, CacheTtls, Kind};
use tessera_edge_logic::kv;
use tessera_edge_logic::routes::Route;

use crate::ctx::Ctx;

/// How long one request may take to refresh an entry before another one tries.
const REFRESH_LOCK_MS: u64 = 2_000;

fn cached_reply(entry: CacheEntry, stale: bool) -> guest::Reply {
    let mut r = guest::json(entry.status, Bytes::from(entry.body));
    guest::set_header(r.headers_mut(), "content-type", &entry.content_type);
    if stale {
        guest::set_header(r.headers_mut(), headers::STALE, "true");
    }
    r
}

/// Serves a catalog route from the cache, or from the region on a miss.
pub(crate) async fn serve(
    ctx: &Ctx,
    parts: &http::request::Parts,
    body: Bytes,
    route: &Route,
) -> guest::Reply {
    let Some(kind) = catalog::kind(route) else {
        return guest::forward(parts, body, &ctx.upstream).await;
    };
    let now = ctx.now_ms;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let key = kv::catalog_entry(path);
    let inv_key = match (route, kind) {
        (_, Kind::EventList) => kv::INVALIDATED_EVENT_LIST.to_owned(),
        (Route::GetEvent { event_id }, _) => kv::invalidated_event(event_id),
        (Route::Availability { event_id } | Route::SectionSeats { event_id, .. }, _) => {
            kv::invalidated_counts(event_id)
        }
        _ => kv::INVALIDATED_EVENT_LIST.to_owned(),
    };
    let mut entry: Option<CacheEntry> = match ctx.store.get(&key).await {
        Ok(Some(raw)) => CacheEntry::decode(&raw),
        _ => None,
    };
    if let Some(e) = entry.take() {
        let pushed = ctx
            .get_u64(kv::BUS_ALIVE)
            .await
            .is_some_and(|t| now.saturating_sub(t) < kv::BUS_ALIVE_MAX_AGE_MS);
        let ttl = CacheTtls::default().ttl_ms(kind, pushed);
        let invalidated = ctx.get_u64(&inv_key).await;
        if catalog::is_fresh(&e, invalidated, ttl, now) {
            ctx.count("catalog_cache", "hit");
            return cached_reply(e, false);
        }
        // Only aged out (nothing changed that we know of): one request refreshes it while
        // the others keep getting the entry, so a popular key does not send a burst of
        // identical reads to the region every TTL.
        let invalidated_since = invalidated.is_some_and(|inv| inv >= e.stored_at_ms);
        let lock_key = format!("{key}#refresh");
        if !invalidated_since && now.saturating_sub(e.stored_at_ms) < ttl.saturating_mul(10) {
            let refreshing = ctx
                .get_u64(&lock_key)
                .await
                .is_some_and(|t| now.saturating_sub(t) < REFRESH_LOCK_MS);
            if refreshing {
                ctx.count("catalog_cache", "revalidating");
                return cached_reply(e, false);
            }
            let _ = ctx.store.set(&lock_key, now.to_string().as_bytes()).await;
        }
        entry = Some(e);
    }

    let upstream = match guest::outbound(parts, body, &ctx.upstream) {
        Ok(req) => guest::try_send(req).await,
        Err(reply) => return reply,
    };
    let resp = match upstream {
        Ok(resp) if !catalog::is_region_failure(resp.status().as_u16()) => resp,
        failed => {
            if let Some(e) = entry {
                ctx.count("catalog_cache", "stale");
                return cached_reply(e, true);
            }
            let why = match failed {
                Ok(resp) => format!("region answered {}", resp.status().as_u16()),
                Err(e) => format!("region unreachable: {e}"),
            };
            return guest::error(ErrorCode::RegionUnavailable, why);
        }
    };
    ctx.count("catalog_cache", "miss");
    let status = resp.status().as_u16();
    let (rparts, rbody) = match guest::read_response(resp).await {
        Ok(v) => v,
        Err(e) => return guest::error(ErrorCode::RegionUnavailable, e),
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
        let _ = ctx.store.set(&key, &entry.encode()).await;
        let _ = ctx.store.delete(&format!("{key}#refresh")).await;
    }
    guest::from_parts(rparts, rbody)
}
