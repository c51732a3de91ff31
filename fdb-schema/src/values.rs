//! Value formats.
//!
//! Two encodings, chosen per subspace:
//! - **Fixed layout** for the hottest value, [`SeatState`]: a format byte, then fields at
//!   fixed offsets. New fields are only ever appended; readers ignore bytes they do not
//!   know, and treat an unknown status as "not available" (the safe reading).
//! - **JSON records** for everything else: each has `"v"` (format version) and readers
//!   ignore unknown fields and default missing ones, so the previous release reads what the
//!   next one writes. A field is never re-purposed; removing one means leaving it written.
//!   Optional fields of the hottest records (holds, outbox entries) are left out when
//!   they hold their default (none, empty, false), which every reader assumes anyway.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tessera_api::bus::BusEventBody;
use tessera_api::inventory::{HoldState, RowSpec, SaleState, Tier};
use tessera_api::queue::QueuePhase;
use tessera_api::{CustomerId, EventId, HoldId, OrderId, PoolId, QueueTicketId, SeatId, SectionId};

/// A key or value that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("malformed key: {0}")]
    Key(String),
    #[error("malformed value: {0}")]
    Value(String),
}

impl SchemaError {
    pub(crate) fn key(e: impl std::fmt::Display) -> Self {
        SchemaError::Key(e.to_string())
    }
    pub(crate) fn id(e: impl std::fmt::Display) -> Self {
        SchemaError::Key(e.to_string())
    }
}

// ---- seat state -----------------------------------------------------------------------

/// What a seat is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeatStatus {
    Free,
    Held,
    Sold,
    /// Taken off sale by an operator (or written by a newer release in a state this one
    /// does not know): never available.
    Unavailable,
}

/// `("seat", ...)` values: `[1][status][expires_at_ms u64 BE][flags][owner len][owner]`.
/// Flags: bit 0 = the hold's payment is in flight (timer frozen). The owner is the hold id
/// (held) or the order id (sold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatState {
    pub status: SeatStatus,
    pub expires_at_ms: u64,
    pub frozen: bool,
    pub owner: String,
}

const SEAT_FORMAT: u8 = 1;
const FLAG_FROZEN: u8 = 1;

impl SeatState {
    pub fn free() -> Self {
        SeatState {
            status: SeatStatus::Free,
            expires_at_ms: 0,
            frozen: false,
            owner: String::new(),
        }
    }
    pub fn held(hold: &HoldId, expires_at_ms: u64) -> Self {
        SeatState {
            status: SeatStatus::Held,
            expires_at_ms,
            frozen: false,
            owner: hold.as_str().to_owned(),
        }
    }
    pub fn sold(order: &OrderId) -> Self {
        SeatState {
            status: SeatStatus::Sold,
            expires_at_ms: 0,
            frozen: false,
            owner: order.as_str().to_owned(),
        }
    }

    /// Whether a new hold may take the seat at `now_ms`: free, or held by a hold whose
    /// time ran out (expired holds free their seats at once, before the sweeper runs).
    pub fn is_available(&self, now_ms: u64) -> bool {
        match self.status {
            SeatStatus::Free => true,
            SeatStatus::Held => self.expires_at_ms <= now_ms,
            SeatStatus::Sold | SeatStatus::Unavailable => false,
        }
    }

    /// Whether `hold` holds this seat at `now_ms`.
    pub fn is_held_by(&self, hold: &HoldId, now_ms: u64) -> bool {
        self.status == SeatStatus::Held
            && self.owner == hold.as_str()
            && self.expires_at_ms > now_ms
    }

    pub fn encode(&self) -> Vec<u8> {
        let owner = self.owner.as_bytes();
        let owner_len = owner.len().min(255);
        let mut out = Vec::with_capacity(12 + owner_len);
        out.push(SEAT_FORMAT);
        out.push(match self.status {
            SeatStatus::Free => 0,
            SeatStatus::Held => 1,
            SeatStatus::Sold => 2,
            SeatStatus::Unavailable => 3,
        });
        out.extend_from_slice(&self.expires_at_ms.to_be_bytes());
        out.push(if self.frozen { FLAG_FROZEN } else { 0 });
        out.push(owner_len as u8);
        out.extend_from_slice(&owner[..owner_len]);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, SchemaError> {
        if b.len() < 12 || b[0] == 0 {
            return Err(SchemaError::Value("seat state is too short".into()));
        }
        let status = match b[1] {
            0 => SeatStatus::Free,
            1 => SeatStatus::Held,
            2 => SeatStatus::Sold,
            _ => SeatStatus::Unavailable,
        };
        let mut at = [0u8; 8];
        at.copy_from_slice(&b[2..10]);
        let owner_len = b[11] as usize;
        let owner = b
            .get(12..12 + owner_len)
            .ok_or_else(|| SchemaError::Value("seat owner is truncated".into()))?;
        Ok(SeatState {
            status,
            expires_at_ms: u64::from_be_bytes(at),
            frozen: b[10] & FLAG_FROZEN != 0,
            owner: String::from_utf8_lossy(owner).into_owned(),
        })
    }
}

// ---- JSON records ---------------------------------------------------------------------

/// Encodes a JSON record.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    // Records are plain structs of strings and numbers: serializing cannot fail.
    serde_json::to_vec(record).unwrap_or_default()
}

/// Decodes a JSON record.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SchemaError> {
    serde_json::from_slice(bytes).map_err(|e| SchemaError::Value(e.to_string()))
}

fn v1() -> u32 {
    1
}

/// `("ev", event_id)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub event_id: EventId,
    pub name: String,
    pub venue: String,
    pub starts_at: String,
    /// Announced opening time (RFC 3339), for fans' countdowns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_sale_at: Option<String>,
    pub currency: String,
    pub state: SaleState,
    pub max_tickets_per_customer: u32,
    pub hold_ttl_s: u32,
    pub tiers: Vec<Tier>,
    pub sections: Vec<SectionId>,
    pub pools: Vec<PoolId>,
    pub capacity: u64,
    /// SHA-256 (hex) of the shuffle seed; public from creation.
    pub shuffle_commitment: String,
    /// The shuffle seed (hex). Secret until the sale opens; then published.
    pub shuffle_seed: String,
    pub created_at_ms: u64,
    #[serde(default)]
    pub opened_at_ms: Option<u64>,
    /// Operator's admission rate (fans per second).
    #[serde(default)]
    pub admission_rate_per_s: Option<f64>,
}

/// `("sec", event_id, section_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub section_id: SectionId,
    pub name: String,
    pub tier: String,
    pub rows: Vec<RowSpec>,
}

impl SectionRecord {
    pub fn capacity(&self) -> u64 {
        self.rows.iter().map(|r| u64::from(r.seats)).sum()
    }
}

/// `("pool", event_id, pool_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub pool_id: PoolId,
    pub name: String,
    pub tier: String,
    pub capacity: u32,
    /// Capacity of each shard; sums to `capacity`.
    pub shard_capacity: Vec<u32>,
}

/// How a general-admission hold is spread over shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardTake {
    pub shard: u16,
    pub quantity: u32,
}

/// `("hold", hold_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub hold_id: HoldId,
    pub event_id: EventId,
    pub customer_id: CustomerId,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seats: Vec<SeatId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shard_takes: Vec<ShardTake>,
    pub quantity: u32,
    pub state: HoldState,
    pub expires_at_ms: u64,
    /// While a payment is in flight: how much of the timer was left when it froze.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_remaining_ms: Option<u64>,
    pub amount_minor: u64,
    pub currency: String,
    pub created_at_ms: u64,
    /// The order checkout made of this hold, once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<OrderId>,
    /// Set once the "about to expire" notice went out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expiring_notice_sent: bool,
}

/// `("idem", scope, customer_id, key)`: the first request with this key and its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    #[serde(default = "v1")]
    pub v: u32,
    /// SHA-256 (hex) of the canonical request.
    pub request_hash: String,
    /// The answer given, replayed for retries.
    pub response: serde_json::Value,
    pub created_at_ms: u64,
}

/// What became of an admission: `used` by a hold, or `released` (the hold failed or
/// expired and the place went back to the waiting room). Either way the admission token
/// that carried it admits no other hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdmissionUseState {
    Used,
    Released,
    /// A state a newer release wrote; read as used.
    #[serde(other)]
    Unknown,
}

/// `("adm", event_id, ticket_id)`: the one hold an admission was used for, written in that
/// hold's own transaction (or `released` with no hold, when the admission lapsed unused
/// or its fan left).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionUse {
    #[serde(default = "v1")]
    pub v: u32,
    pub state: AdmissionUseState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<HoldId>,
    pub customer_id: CustomerId,
    pub used_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at_ms: Option<u64>,
}

/// `("out", region, versionstamp)`: an event waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub event_id: EventId,
    pub at_ms: u64,
    pub body: BusEventBody,
    /// W3C `traceparent` of the transaction that wrote it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// `("olease", region)`: which relay instance publishes a region's outbox, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub holder: String,
    pub expires_at_ms: u64,
}

/// `("qc", ...)`, `("qpre", ...)`, `("qopen", ...)`: a place in the waiting room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub ticket_id: QueueTicketId,
    pub customer_id: CustomerId,
    pub phase: QueuePhase,
    pub seq: u64,
    pub joined_at_ms: u64,
}

/// Which place a queue-log entry is about, as the fan's ticket says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueTicketRef {
    pub ticket_id: QueueTicketId,
    pub phase: QueuePhase,
    /// Open-phase rank (versionstamp hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<String>,
}

/// One entry of an event's queue log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QueueLogEntry {
    /// A hold was made with the place's admission (written in the hold's transaction).
    Used { ticket: QueueTicketRef, seats: u32 },
    /// A hold with the admission failed for lack of places: the place goes back.
    GaveBack { ticket: QueueTicketRef },
    /// The fan left the waiting room.
    Left { ticket: QueueTicketRef },
    /// The fan chose the waiting list for returns.
    WaitingList { ticket: QueueTicketRef },
    /// The controller moved its lines (positions in queue order).
    Admitted {
        main_from: u64,
        main_to: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        waiting_list: Vec<u64>,
        waiting_list_line: u64,
        sold_out: bool,
    },
    /// The controller ended admissions whose window passed unused.
    Expired { positions: Vec<u64> },
    /// An entry a newer release wrote; skipped.
    #[serde(other)]
    Unknown,
}

/// `("qlog", event_id, versionstamp)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLogRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub at_ms: u64,
    pub entry: QueueLogEntry,
}

/// `("qadm", event_id)`: the admission controller's progress, so it resumes after a
/// restart or failover without re-admitting or skipping anyone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AdmissionRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub version: u64,
    pub pre_open_admitted: u64,
    #[serde(default)]
    pub pre_open_threshold: Option<u64>,
    pub open_admitted: u64,
    #[serde(default)]
    pub open_admitted_rank: Option<String>,
    pub updated_at_ms: u64,
    /// The watermark last published, served to edges that poll instead of listening.
    #[serde(default)]
    pub watermark: Option<tessera_api::queue::AdmissionWatermark>,
}

/// `("qc", event_id, customer_id)` values: `"Q1"`, the 12-byte versionstamp of the place
/// (10 commit + 2 user bytes; zero for pre-open places), then the JSON [`QueueRecord`].
/// Open-phase places are written with `SetVersionstampedValue` so the stamp is the commit's.
pub mod queue_place {
    use super::{QueueRecord, SchemaError, decode, encode};

    const MAGIC: &[u8; 2] = b"Q1";

    /// The value of a pre-open place (no stamp).
    pub fn plain(record: &QueueRecord) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[0u8; 12]);
        out.extend_from_slice(&encode(record));
        out
    }

    /// The `SetVersionstampedValue` parameter of an open-phase place.
    pub fn versionstamped(record: &QueueRecord) -> Vec<u8> {
        let mut out = plain(record);
        out.extend_from_slice(&2u32.to_le_bytes());
        out
    }

    /// The stamp and record of a stored place.
    pub fn decode_place(bytes: &[u8]) -> Result<([u8; 12], QueueRecord), SchemaError> {
        if bytes.len() < 14 || &bytes[..2] != MAGIC {
            return Err(SchemaError::Value("queue place has no header".into()));
        }
        let mut stamp = [0u8; 12];
        stamp.copy_from_slice(&bytes[2..14]);
        Ok((stamp, decode(&bytes[14..])?))
    }
}

/// Where the checkout saga of an order stands. Each step is entered by a transaction that
/// checks the step before (compare-and-set), so concurrent drivers (the request handler, a
/// reconciler in another region) never apply a step twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStep {
    /// The payment is being authorized (its outcome may be unknown).
    Authorizing,
    /// The amount is held on the card; the seats are not sold yet.
    Authorized,
    /// The seats are sold to the order; the payment is being captured.
    Capturing,
    /// The seats could not be sold: the authorization is being voided.
    Voiding,
    /// A captured payment is being refunded.
    Refunding,
    /// Nothing left to do.
    Done,
}

/// `("ord", order_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub order_id: OrderId,
    pub hold_id: HoldId,
    pub event_id: EventId,
    pub customer_id: CustomerId,
    #[serde(default)]
    pub seats: Vec<SeatId>,
    #[serde(default)]
    pub pool: Option<PoolId>,
    pub quantity: u32,
    pub amount_minor: u64,
    pub currency: String,
    pub state: tessera_api::orders::OrderState,
    pub step: SagaStep,
    #[serde(default)]
    pub payment_id: Option<String>,
    /// The provider's payment method token (not card data).
    pub payment_method: String,
    /// The fan's idempotency key (unique per customer, not across customers).
    pub idempotency_key: String,
    /// The key provider calls derive theirs from: the fan's key scoped to the customer
    /// (`IdempotencyKey::scoped_to`). Orders written before it existed derive from
    /// `idempotency_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_key: Option<String>,
    /// Where the confirmation goes. Never logged.
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub failure_code: Option<String>,
    #[serde(default)]
    pub tickets: Vec<tessera_api::TicketId>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Who drives the saga now, and until when (other drivers wait for the lease to lapse).
    #[serde(default)]
    pub lease_holder: Option<String>,
    #[serde(default)]
    pub lease_until_ms: u64,
    /// Reconciliation attempts, for backoff and alerting.
    #[serde(default)]
    pub attempts: u32,
}

/// Whether a ticket still admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketState {
    Valid,
    /// The order was refunded.
    Revoked,
}

/// `("tkt", ticket_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub ticket_id: tessera_api::TicketId,
    pub order_id: OrderId,
    pub event_id: EventId,
    #[serde(default)]
    pub seat: Option<SeatId>,
    #[serde(default)]
    pub pool: Option<PoolId>,
    pub state: TicketState,
    pub issued_at_ms: u64,
    #[serde(default)]
    pub checked_in_at_ms: Option<u64>,
    #[serde(default)]
    pub gate: Option<String>,
    /// The scan that admitted it (unique per scan), so a retried scan recognises its own
    /// admission after an unknown commit outcome.
    #[serde(default)]
    pub scan_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seat_states_round_trip_and_expire_for_readers() {
        let h = HoldId::parse("h_abcdefgh23").unwrap();
        let s = SeatState::held(&h, 1_000);
        assert_eq!(SeatState::decode(&s.encode()).unwrap(), s);
        assert!(!s.is_available(999));
        assert!(s.is_available(1_000), "an expired hold frees its seat at once");
        assert!(s.is_held_by(&h, 999));
        assert!(!s.is_held_by(&h, 1_000));
        let o = OrderId::parse("o_abcdefgh23").unwrap();
        assert!(!SeatState::sold(&o).is_available(u64::MAX));
        assert!(SeatState::free().is_available(0));
    }

    #[test]
    fn seat_states_from_a_newer_release_are_read_safely() {
        let h = HoldId::parse("h_abcdefgh23").unwrap();
        // A newer release appended a field and invented status 9.
        let mut b = SeatState::held(&h, 5).encode();
        b.extend_from_slice(b"future field");
        assert_eq!(SeatState::decode(&b).unwrap().owner, "h_abcdefgh23");
        b[1] = 9;
        let s = SeatState::decode(&b).unwrap();
        assert_eq!(s.status, SeatStatus::Unavailable);
        assert!(!s.is_available(u64::MAX));
        assert!(SeatState::decode(&[1, 0]).is_err());
    }

    #[test]
    fn records_ignore_unknown_fields_and_default_missing_ones() {
        let json = br#"{"v":2,"holder":"relay-1","expires_at_ms":5,"new_field":[1,2]}"#;
        let l: LeaseRecord = decode(json).unwrap();
        assert_eq!(l.holder, "relay-1");
        let json = br#"{"holder":"relay-1","expires_at_ms":5}"#;
        assert_eq!(decode::<LeaseRecord>(json).unwrap().v, 1);
    }
}
