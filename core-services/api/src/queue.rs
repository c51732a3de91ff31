//! The waiting room: joining, status, admission, and the admission watermark that the core
//! publishes over NATS for the edges.

use serde::{Deserialize, Serialize};

use crate::ids::{CustomerId, EventId, QueueTicketId};
use crate::inventory::SaleState;

/// `POST /v1/events/{event_id}/queue`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueJoinRequest {
    /// Fan-chosen randomness (hex, 16-64 chars) mixed into the ticket id, so that nobody,
    /// operator included, can pick a ticket id that the revealed seed favours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_nonce: Option<String>,
}

/// Whether a ticket was issued before the sale opened (shuffled) or after (FIFO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueuePhase {
    PreOpen,
    Open,
}

/// What the edge asks the core when a fan joins: `POST /v1/internal/events/{event_id}/queue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueRegistration {
    pub ticket_id: QueueTicketId,
    pub customer_id: CustomerId,
}

/// The core's answer: the place it recorded. Joining twice returns the first place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePlace {
    pub event_id: EventId,
    pub ticket_id: QueueTicketId,
    pub customer_id: CustomerId,
    pub phase: QueuePhase,
    /// Approximate order of arrival among fans in the same phase (0-based): the number of
    /// fans who had joined in this phase when this fan joined. For wait estimates only.
    pub seq: u64,
    /// Exact first-come-first-served rank of an open-phase place: the hex of the 10-byte
    /// versionstamp of the commit that recorded it (ordered like arrival, unique). `None`
    /// for pre-open places, whose order is the lottery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<String>,
    pub joined_at_ms: u64,
}

/// The response to joining.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueJoined {
    /// The signed queue ticket; send it back in `x-tessera-queue-ticket`.
    pub ticket: String,
    pub ticket_id: QueueTicketId,
    pub event_id: EventId,
    pub phase: QueuePhase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueStatusState {
    /// The sale has not opened; the order of everyone here is drawn at opening.
    PreOpen,
    Waiting,
    Admitted,
    Paused,
    /// What is left is already held by fans ahead of you.
    SoldOut,
    Closed,
}

/// `GET /v1/events/{event_id}/queue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStatus {
    pub event_id: EventId,
    pub ticket_id: QueueTicketId,
    pub state: QueueStatusState,
    /// Fans ahead of you (an estimate before the shuffle seed is revealed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ahead: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_wait_s: Option<u64>,
    /// Present once admitted: send it in `x-tessera-admission` with holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission_expires_at_ms: Option<u64>,
    /// Lottery value of a pre-open ticket (hex of SHA-256(seed ‖ event ‖ ticket)), once
    /// the seed is revealed: anyone can recompute it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lottery: Option<String>,
}

/// The admission watermark: published by the core of each region on
/// `tessera.admission.<event_id>` several times a second. An edge admits a ticket when its
/// rank is at or below the watermark, without asking a region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdmissionWatermark {
    pub event_id: EventId,
    pub state: SaleState,
    /// Monotonic version of this watermark (edges ignore older ones).
    pub version: u64,
    /// SHA-256 (hex) commitment to the shuffle seed.
    pub commitment: String,
    /// The seed (hex), once revealed at opening.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
    /// Number of fans who joined before opening.
    pub pre_open_count: u64,
    /// Pre-open tickets whose lottery value (first 8 bytes, big endian) is `<=` this are admitted.
    /// `None` admits none of them yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_open_threshold: Option<u64>,
    /// How many pre-open fans have been admitted so far.
    pub pre_open_admitted: u64,
    /// How many open-phase fans have been admitted so far (for estimates).
    pub open_admitted: u64,
    /// Open-phase tickets whose `rank` is `<=` this (hex strings compare like the ranks)
    /// are admitted. `None` admits none of them yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_admitted_rank: Option<String>,
    /// Open-phase fans who have joined so far.
    pub open_count: u64,
    /// Admissions per second right now (for wait estimates).
    pub rate_per_s: f64,
    /// Seats (or GA places) neither sold nor held.
    pub remaining: u64,
    pub published_at_ms: u64,
}

/// What the core publishes on `tessera.admission.<event_id>` and answers on
/// `GET /v1/events/{id}/admission`: the watermark's fields, plus `signed`, the same
/// watermark as a compact Ed25519 JWT signed by the core's watermark key. An edge admits
/// only by what a valid signature covers and ignores a stale one
/// (`tessera_queue::watermark::verify`); readers that predate `signed` see a plain
/// [`AdmissionWatermark`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedWatermark {
    #[serde(flatten)]
    pub watermark: AdmissionWatermark,
    pub signed: String,
}

/// Claims of a signed queue ticket (an Ed25519-signed token issued by an edge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueTicketClaims {
    /// Token type: `"qt"` for queue tickets, `"adm"` for admission tokens.
    pub typ: String,
    pub ticket_id: QueueTicketId,
    pub event_id: EventId,
    pub customer_id: CustomerId,
    /// SHA-256 (hex, first 32 chars) of the device id the ticket is bound to.
    pub device: String,
    pub phase: QueuePhase,
    pub seq: u64,
    /// Open-phase rank (see [`QueuePlace::rank`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<String>,
    pub iat_ms: u64,
    pub exp_ms: u64,
    /// Key id that signed the token.
    pub kid: String,
}
