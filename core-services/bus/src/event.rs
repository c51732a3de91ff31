//! From outbox entries to bus messages and back.
//!
//! The relay does not decode the body of an outbox record into
//! [`tessera_api::bus::BusEventBody`]: it copies it. An entry written by a newer release (a
//! body type this build does not know) is therefore still published intact, and only the
//! consumers that care about it need to understand it.

use async_nats::HeaderMap;
use serde_json::{Map, Value};
use tessera_api::RegionId;
use tessera_api::bus::BusEvent;
use tessera_fdb_schema::Keyspace;

use crate::BusError;

/// Header naming the region whose transaction produced the event (the subject names the
/// region that published it, which differs when a peer took over a dead region's outbox).
pub const ORIGIN_HEADER: &str = "Tessera-Origin";

/// One outbox entry, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingEvent {
    /// The bus event id: hex of the outbox key's 12-byte versionstamp.
    pub id: String,
    /// The `Nats-Msg-Id`: the event id when a region publishes its own outbox,
    /// `<id>@<publisher>` when it publishes a peer's (see [`msg_id`]).
    pub msg_id: String,
    /// `tessera.<publishing region>.<kind>.<event_id>`.
    pub subject: String,
    /// The JSON of a [`BusEvent`].
    pub payload: Vec<u8>,
    /// W3C `traceparent` of the transaction that wrote the entry.
    pub traceparent: Option<String>,
}

impl OutgoingEvent {
    /// `Nats-Msg-Id`, `traceparent` and the origin header.
    pub fn headers(&self, origin: &RegionId) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(async_nats::header::NATS_MESSAGE_ID, self.msg_id.as_str());
        h.insert(ORIGIN_HEADER, origin.as_str());
        if let Some(tp) = &self.traceparent {
            h.insert("traceparent", tp.as_str());
        }
        h
    }
}

/// The `Nats-Msg-Id` of event `id` from `origin`'s outbox published by `publisher`.
///
/// A region's own events carry their id, so a relay that republishes after a crash is
/// dropped by its own stream. A peer covering for a dead region uses `<id>@<publisher>`:
/// the dead region may have published the same event just before it died, and the two
/// copies then live in different streams. Had they the same message id, each region's
/// stream would meet a duplicate id when it sources the other's, which nats-server 2.9
/// treats as an error and retries for ever, stalling that source. With distinct ids both
/// copies flow and the consumers apply the event once, by its id.
pub fn msg_id(id: &str, origin: &RegionId, publisher: &RegionId) -> String {
    if origin == publisher { id.to_owned() } else { format!("{id}@{publisher}") }
}

/// The subject segment of a body type: `seats_held` → `seats.held` (the same names as
/// [`tessera_api::bus::BusEventBody::kind`]).
fn kind_of_type(body_type: &str) -> String {
    body_type.replace('_', ".")
}

fn subject_token_ok(s: &str) -> bool {
    !s.is_empty() && !s.contains(['.', '*', '>', ' ', '\t', '\r', '\n'])
}

/// Turns the outbox entry `key` → `value` of `origin` into the message `publisher`
/// publishes (`publisher` is `origin` unless it took over `origin`'s outbox).
pub fn encode_outbox_entry(
    keyspace: &Keyspace,
    origin: &RegionId,
    publisher: &RegionId,
    key: &[u8],
    value: &[u8],
) -> Result<OutgoingEvent, BusError> {
    let stamp = keyspace
        .outbox_stamp_of_key(key)
        .map_err(|e| BusError::Malformed(format!("outbox key: {e}")))?;
    let id = hex::encode(stamp);
    let record: Value = serde_json::from_slice(value)
        .map_err(|e| BusError::Malformed(format!("outbox record {id}: {e}")))?;
    let malformed = |what: &str| BusError::Malformed(format!("outbox record {id}: {what}"));
    let event_id = record
        .get("event_id")
        .and_then(Value::as_str)
        .filter(|s| subject_token_ok(s))
        .ok_or_else(|| malformed("no valid event_id"))?;
    let at_ms = record.get("at_ms").and_then(Value::as_u64).ok_or_else(|| malformed("no at_ms"))?;
    let body = record.get("body").and_then(Value::as_object).ok_or_else(|| malformed("no body"))?;
    let body_type = body
        .get("type")
        .and_then(Value::as_str)
        .filter(|s| subject_token_ok(s))
        .ok_or_else(|| malformed("body has no valid type"))?;
    let traceparent = record.get("traceparent").and_then(Value::as_str).map(str::to_owned);

    // The wire shape of `BusEvent`: its own fields plus the flattened body.
    let mut event = Map::new();
    event.insert("id".into(), Value::String(id.clone()));
    event.insert("region".into(), Value::String(origin.to_string()));
    event.insert("event_id".into(), Value::String(event_id.to_owned()));
    event.insert("at_ms".into(), Value::from(at_ms));
    for (k, v) in body {
        if !matches!(k.as_str(), "id" | "region" | "event_id" | "at_ms") {
            event.insert(k.clone(), v.clone());
        }
    }
    let subject = format!("tessera.{publisher}.{}.{event_id}", kind_of_type(body_type));
    let payload = serde_json::to_vec(&Value::Object(event))
        .map_err(|e| BusError::Malformed(format!("encode event {id}: {e}")))?;
    let msg_id = msg_id(&id, origin, publisher);
    Ok(OutgoingEvent { id, msg_id, subject, payload, traceparent })
}

/// Decodes a bus message's payload.
pub fn decode_event(payload: &[u8]) -> Result<BusEvent, BusError> {
    serde_json::from_slice(payload).map_err(|e| BusError::Malformed(format!("bus event: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_api::bus::BusEventBody;
    use tessera_api::inventory::SaleState;
    use tessera_fdb_schema::values::{OutboxRecord, encode};

    fn filled_outbox_key(ks: &Keyspace, region: &RegionId, user: u16) -> Vec<u8> {
        let k = ks.outbox_entry_versionstamped(region, user);
        let offset = u32::from_le_bytes(k[k.len() - 4..].try_into().unwrap()) as usize;
        let mut filled = k[..k.len() - 4].to_vec();
        filled[offset..offset + 10].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7, 0, 2]);
        filled
    }

    #[test]
    fn outbox_entries_become_bus_events_with_the_stamp_as_id() {
        let ks = Keyspace::production();
        let us = RegionId::parse("us-east").unwrap();
        let eu = RegionId::parse("eu-west").unwrap();
        let record = OutboxRecord {
            v: 1,
            event_id: "e1".parse().unwrap(),
            at_ms: 42,
            body: BusEventBody::EventChanged { state: SaleState::OnSale },
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        };
        let key = filled_outbox_key(&ks, &us, 1);
        let out = encode_outbox_entry(&ks, &us, &eu, &key, &encode(&record)).unwrap();
        assert_eq!(out.id, "000000000000000700020001");
        assert_eq!(out.subject, "tessera.eu-west.event.changed.e1");
        let event = decode_event(&out.payload).unwrap();
        assert_eq!(event.id, out.id);
        assert_eq!(event.region, us, "the origin region stays on the event");
        assert_eq!(event.body, record.body);
        assert_eq!(event.subject(), "tessera.us-east.event.changed.e1");
        let h = out.headers(&us);
        assert_eq!(
            h.get(async_nats::header::NATS_MESSAGE_ID).unwrap().as_str(),
            "000000000000000700020001@eu-west",
            "a peer's copy has a message id of its own"
        );
        let own = encode_outbox_entry(&ks, &us, &us, &key, &encode(&record)).unwrap();
        assert_eq!(own.msg_id, own.id);
        assert!(h.get("traceparent").is_some());
    }

    #[test]
    fn bodies_from_a_newer_release_are_copied_not_dropped() {
        let ks = Keyspace::production();
        let us = RegionId::parse("us-east").unwrap();
        let key = filled_outbox_key(&ks, &us, 0);
        let value =
            br#"{"v":3,"event_id":"e1","at_ms":1,"body":{"type":"seats_teleported","n":3}}"#;
        let out = encode_outbox_entry(&ks, &us, &us, &key, value).unwrap();
        assert_eq!(out.subject, "tessera.us-east.seats.teleported.e1");
        let v: Value = serde_json::from_slice(&out.payload).unwrap();
        assert_eq!(v["n"], 3);
        assert!(
            decode_event(&out.payload).is_err(),
            "this build cannot decode it, consumers skip it"
        );
        for bad in [&b"nope"[..], br#"{"event_id":"a.b","at_ms":1,"body":{"type":"x"}}"#] {
            assert!(encode_outbox_entry(&ks, &us, &us, &key, bad).is_err());
        }
    }
}
