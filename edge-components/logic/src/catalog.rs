//! Catalog cache entries: what the catalog component keeps in the key-value store and the
//! freshness rule it applies.
//!
//! An entry is fresh while it is younger than its TTL and newer than the last invalidation
//! of what it shows. When the region cannot be reached, a stale entry is served anyway and
//! marked with `x-tessera-stale: true`.

use serde::{Deserialize, Serialize};

use crate::routes::Route;

/// A cached response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub stored_at_ms: u64,
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl CacheEntry {
    /// The stored form: one header line (`v1 <stored_at_ms> <status> <content_type>`) and
    /// the body as is, so a cache hit neither escapes nor unescapes the body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("v1 {} {} {}\n", self.stored_at_ms, self.status, self.content_type)
            .into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }

    /// Reads the stored form; `None` for anything else (treated as a miss).
    pub fn decode(raw: &[u8]) -> Option<CacheEntry> {
        let nl = raw.iter().position(|b| *b == b'\n')?;
        let header = std::str::from_utf8(&raw[..nl]).ok()?;
        let mut parts = header.splitn(4, ' ');
        let (Some("v1"), Some(at), Some(status), Some(ct)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some(CacheEntry {
            stored_at_ms: at.parse().ok()?,
            status: status.parse().ok()?,
            content_type: ct.to_owned(),
            body: String::from_utf8(raw[nl + 1..].to_vec()).ok()?,
        })
    }
}

/// TTLs of cached catalog data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTtls {
    /// Used while pushed invalidations arrive (the host's NATS subscriber is alive).
    pub counts_pushed_ms: u64,
    pub details_pushed_ms: u64,
    /// Used without pushed invalidations (plain `spin up`): short, so counts stay honest.
    pub counts_polled_ms: u64,
    pub details_polled_ms: u64,
}

impl Default for CacheTtls {
    fn default() -> Self {
        CacheTtls {
            counts_pushed_ms: 30_000,
            details_pushed_ms: 300_000,
            counts_polled_ms: 1_000,
            details_polled_ms: 10_000,
        }
    }
}

/// What kind of data a catalog route shows (decides TTL and invalidation key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    EventList,
    EventDetail,
    Counts,
}

pub fn kind(route: &Route) -> Option<Kind> {
    match route {
        Route::ListEvents => Some(Kind::EventList),
        Route::GetEvent { .. } => Some(Kind::EventDetail),
        Route::Availability { .. } | Route::SectionSeats { .. } => Some(Kind::Counts),
        _ => None,
    }
}

impl CacheTtls {
    pub fn ttl_ms(&self, kind: Kind, pushed: bool) -> u64 {
        match (kind, pushed) {
            (Kind::Counts, true) => self.counts_pushed_ms,
            (Kind::Counts, false) => self.counts_polled_ms,
            (_, true) => self.details_pushed_ms,
            (_, false) => self.details_polled_ms,
        }
    }
}

/// Whether an entry may be served without asking the region.
pub fn is_fresh(
    entry: &CacheEntry,
    invalidated_at_ms: Option<u64>,
    ttl_ms: u64,
    now_ms: u64,
) -> bool {
    let young = now_ms.saturating_sub(entry.stored_at_ms) < ttl_ms;
    let not_invalidated = invalidated_at_ms.is_none_or(|inv| entry.stored_at_ms > inv);
    young && not_invalidated
}

/// Whether an upstream answer means "the region is not there" (serve stale instead).
pub fn is_region_failure(status: u16) -> bool {
    matches!(status, 502..=504)
}

/// Only successful answers are cached.
pub fn is_cacheable(status: u16) -> bool {
    status == 200
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at: u64) -> CacheEntry {
        CacheEntry {
            stored_at_ms: at,
            status: 200,
            content_type: "application/json".into(),
            body: "{}".into(),
        }
    }

    #[test]
    fn entries_round_trip_through_the_stored_form() {
        let e = CacheEntry {
            stored_at_ms: 42,
            status: 200,
            content_type: "application/json; charset=utf-8".into(),
            body: "{\"a\":\"line\nbreak\"}".into(),
        };
        assert_eq!(CacheEntry::decode(&e.encode()), Some(e));
        assert_eq!(CacheEntry::decode(b"{}"), None);
    }

    #[test]
    fn entries_expire_by_ttl_and_by_invalidation() {
        assert!(is_fresh(&entry(1_000), None, 500, 1_400));
        assert!(!is_fresh(&entry(1_000), None, 500, 1_500));
        assert!(!is_fresh(&entry(1_000), Some(1_000), 500, 1_100));
        assert!(is_fresh(&entry(1_000), Some(999), 500, 1_100));
    }
}
