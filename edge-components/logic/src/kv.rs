//! The key-value layout shared by the components and the edge host (one `default` store).
//!
//! The host's NATS subscriber writes watermarks and invalidation marks; the components
//! read them, and keep their own counters and caches. Values carry their own timestamps:
//! expiry is the reader's business, as with Spin's key-value store.

use tessera_api::EventId;

/// The admission watermark of an event (`AdmissionWatermark` JSON, highest version kept).
pub fn watermark(event_id: &EventId) -> String {
    format!("wm:{event_id}")
}

/// Set by the host's NATS subscriber every few hundred ms while it is connected:
/// decimal ms since the Unix epoch. Components use short TTLs and polling when it is stale.
pub const BUS_ALIVE: &str = "bus:alive";

/// How fresh [`BUS_ALIVE`] must be for components to rely on pushed updates.
pub const BUS_ALIVE_MAX_AGE_MS: u64 = 2_000;

/// Last invalidation (ms) of an event's live counts: availability and section seats.
pub fn invalidated_counts(event_id: &EventId) -> String {
    format!("inv:counts:{event_id}")
}

/// Last invalidation (ms) of an event's details.
pub fn invalidated_event(event_id: &EventId) -> String {
    format!("inv:event:{event_id}")
}

/// Last invalidation (ms) of the event list.
pub const INVALIDATED_EVENT_LIST: &str = "inv:events";

/// A cached catalog response, keyed by path.
pub fn catalog_entry(path: &str) -> String {
    format!("cat:{path}")
}

/// A verified-token cache entry, keyed by a hash of the whole token.
pub fn verified_token(token_hash: &str) -> String {
    format!("tok:{token_hash}")
}

/// The admission token issued for a ticket (reused while it has most of its life left).
pub fn admission_issued(ticket_id: &str) -> String {
    format!("adm:{ticket_id}")
}

/// Marks an admission token whose hold succeeded here (edge-local replay guard).
pub fn admission_used(ticket_id: &str) -> String {
    format!("admused:{ticket_id}")
}

/// Marks a ticket whose fan left the waiting room here (`DELETE .../queue`): it is
/// given no admission token (the core refuses its holds wherever it is used).
pub fn queue_left(ticket_id: &str) -> String {
    format!("left:{ticket_id}")
}

/// Marks a real ticket caught acting as a bot after it was issued (polling far past the
/// limit, or one of too many accounts on a device or devices of an account): from then on
/// it is served like a shadow ticket and never admitted here.
pub fn queue_flagged(ticket_id: &str) -> String {
    format!("flag:{ticket_id}")
}

/// The accounts that joined an event's waiting room from one device here, with their
/// tickets (`device` is the hash the tickets carry).
pub fn queue_device_accounts(event_id: &EventId, device: &str) -> String {
    format!("qdev:{event_id}:{device}")
}

/// The devices one account joined an event's waiting room from here, with the tickets.
pub fn queue_account_devices(event_id: &EventId, customer: &str) -> String {
    format!("qacc:{event_id}:{customer}")
}

/// A rate counter for one window of one scope (`c` client, `n` network, `t` token).
pub fn rate(scope: &str, key: &str, window: u64) -> String {
    format!("rl:{scope}:{key}:{window}")
}

/// Timing history of a client (recent request times).
pub fn timing(client: &str) -> String {
    format!("tm:{client}")
}

/// Challenge history of a client (`solved,failed`).
pub fn challenges(client: &str) -> String {
    format!("ch:{client}")
}
