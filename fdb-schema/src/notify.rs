//! The notifications subspaces: deliveries waiting to go out (email, webhooks), their retry
//! schedule, and the dead letters of deliveries that gave up.
//!
//! | key | value |
//! |---|---|
//! | `("ntf", "dlv", delivery_id)` | [`DeliveryRecord`] |
//! | `("ntf", "due", due_ms, delivery_id)` | empty: the retry schedule, ordered by time |
//! | `("ntf", "dead", delivery_id)` | [`DeadLetterRecord`] |
//!
//! A bus event the notifier has already turned into deliveries is marked with
//! `Keyspace::consumed("notifications", bus_event_id)`; marking it and writing its deliveries
//! happen in one transaction, so an event is fanned out exactly once.
//!
//! Delivery ids are `<bus event id>.<channel>` (`email`, `wh.<endpoint id>`), so enqueuing
//! the same event twice writes the same keys.
//!
//! This file depends only on `foundationdb-tuple`, `serde` and `tessera-api`, and builds
//! keys under the prefix returned by `Keyspace::root_prefix`.

use foundationdb_tuple::TuplePack;
use serde::{Deserialize, Serialize};
use tessera_api::bus::BusEvent;

/// Builds the notifications keys under a key space's root prefix.
#[derive(Debug, Clone)]
pub struct NotifyKeys {
    prefix: Vec<u8>,
}

impl NotifyKeys {
    /// `root_prefix` is `Keyspace::root_prefix()`.
    pub fn new(root_prefix: &[u8]) -> Self {
        NotifyKeys { prefix: root_prefix.to_vec() }
    }

    fn key<T: TuplePack>(&self, t: &T) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(&foundationdb_tuple::pack(t));
        k
    }

    /// `("ntf", "dlv", delivery_id)` → [`DeliveryRecord`].
    pub fn delivery(&self, delivery_id: &str) -> Vec<u8> {
        self.key(&("ntf", "dlv", delivery_id))
    }

    /// `("ntf", "due", due_ms, delivery_id)` → empty.
    pub fn due(&self, due_ms: u64, delivery_id: &str) -> Vec<u8> {
        self.key(&("ntf", "due", due_ms_i64(due_ms), delivery_id))
    }

    /// Schedule entries due at or before `now_ms`, oldest first.
    pub fn due_until(&self, now_ms: u64) -> (Vec<u8>, Vec<u8>) {
        let begin = self.key(&("ntf", "due"));
        let end = self.key(&("ntf", "due", due_ms_i64(now_ms).saturating_add(1)));
        (begin, end)
    }

    /// The whole schedule.
    pub fn due_all(&self) -> (Vec<u8>, Vec<u8>) {
        let mut begin = self.key(&("ntf", "due"));
        let mut end = begin.clone();
        begin.push(0x00);
        end.push(0xff);
        (begin, end)
    }

    /// `(due_ms, delivery_id)` of a schedule key.
    pub fn due_of_key(&self, key: &[u8]) -> Result<(u64, String), String> {
        let rest =
            key.strip_prefix(self.prefix.as_slice()).ok_or("key is outside the key space")?;
        let (_, _, due_ms, id): (String, String, i64, String) =
            foundationdb_tuple::unpack(rest).map_err(|e| e.to_string())?;
        Ok((u64::try_from(due_ms).map_err(|_| "negative due time")?, id))
    }

    /// `("ntf", "dead", delivery_id)` → [`DeadLetterRecord`].
    pub fn dead_letter(&self, delivery_id: &str) -> Vec<u8> {
        self.key(&("ntf", "dead", delivery_id))
    }

    pub fn dead_letters(&self) -> (Vec<u8>, Vec<u8>) {
        let mut begin = self.key(&("ntf", "dead"));
        let mut end = begin.clone();
        begin.push(0x00);
        end.push(0xff);
        (begin, end)
    }
}

/// Tuple integers are signed; times past `i64::MAX` ms do not occur.
fn due_ms_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn v1() -> u32 {
    1
}

/// Where a delivery goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeliveryChannel {
    /// An email to the fan; the address is looked up when sending and never stored here.
    Email,
    /// An operator's webhook endpoint, by its configured id.
    Webhook { endpoint_id: String },
}

/// `("ntf", "dlv", delivery_id)`: one notification on its way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub id: String,
    pub channel: DeliveryChannel,
    pub event: BusEvent,
    /// Attempts started so far.
    #[serde(default)]
    pub attempts: u32,
    pub created_ms: u64,
    /// When the next attempt is due (mirrors the schedule key).
    pub due_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// W3C `traceparent` of the event's handling, so the delivery continues the trace of
    /// the purchase that caused it (appended field; older records have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// `("ntf", "dead", delivery_id)`: a delivery that exhausted its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub delivery: DeliveryRecord,
    pub dead_at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_keys_sort_by_time_and_round_trip() {
        let k = NotifyKeys::new(b"\x02tsr\x00");
        assert!(k.due(9, "b") < k.due(10, "a"), "times must sort numerically");
        let (begin, end) = k.due_until(10);
        assert!(begin < k.due(0, "x") && k.due(10, "zzz") < end);
        assert!(k.due(11, "a") >= end);
        let (all_b, all_e) = k.due_all();
        assert!(all_b < k.due(0, "a") && k.due(u64::MAX, "z") < all_e);
        assert_eq!(
            k.due_of_key(&k.due(1234, "evt.email")).unwrap(),
            (1234, "evt.email".to_owned())
        );
        let (db, de) = k.dead_letters();
        assert!(db < k.dead_letter("x") && k.dead_letter("x") < de);
        assert!(!(db..de).contains(&k.delivery("x")));
    }
}
