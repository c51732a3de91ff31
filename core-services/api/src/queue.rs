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
    /// What is left is already held by fans ahead of you (or by fans admitted before you).
    /// Places that come back go to the waiting list in queue order: see
    /// [`QueueStatus::choices`].
    SoldOut,
    Closed,
    /// You were admitted but the admission's window passed unused, so the place went to
    /// the next fan. Join again for a new place.
    Expired,
}

/// A wait range in seconds, from the measured admission rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitRange {
    pub low: u64,
    pub high: u64,
}

/// What a fan can do from where they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueChoice {
    /// Stay for returns: `POST /v1/events/{id}/queue/waiting-list`.
    WaitingList,
    /// Give the place up: `DELETE /v1/events/{id}/queue`.
    Leave,
    /// Join again at the back: `POST /v1/events/{id}/queue`.
    Rejoin,
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
    /// How long until your turn, as a range from the measured admission rate (the rate
    /// of returns once sold out). Present for every fan who is not admitted yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_s: Option<WaitRange>,
    /// The chance, in [0, 1], that a ticket is left when your turn comes: live inventory,
    /// admissions in flight, observed tickets per order and returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chance: Option<f64>,
    /// You chose to stay on the waiting list for returns.
    #[serde(default)]
    pub waiting_list: bool,
    /// What you can do now (e.g. when sold out: stay on the waiting list, or leave).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<QueueChoice>,
}

/// A line in queue order: everyone before it. Pre-open places (in lottery order) come
/// before open-phase places (in arrival order), so a line is a lottery threshold and an
/// open rank. The admission watermark's own fields are its main line; these are the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLine {
    /// Pre-open places before the line.
    pub pre_open_passed: u64,
    /// Pre-open tickets whose lottery rank is `<=` this are before the line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_open_threshold: Option<u64>,
    /// Open-phase places before the line.
    pub open_passed: u64,
    /// Open-phase tickets whose rank is `<=` this are before the line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_rank: Option<String>,
}

/// What the edges compute a waiting fan's estimates from (measured by the core).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EstimateInputs {
    /// Admissions per second over the last minute, and the slowest and fastest 5-second
    /// spells in it.
    pub admitted_per_s: f64,
    pub admitted_per_s_low: f64,
    pub admitted_per_s_high: f64,
    /// The rate the controller admits at when places are there (operator's rate scaled by
    /// core health): what a fan waiting for the opening can expect.
    pub planned_per_s: f64,
    /// Places (seats or GA) that came back per second over the last minute: what moves
    /// the waiting list once sold out.
    pub returned_per_s: f64,
    /// Tickets per hold made with an admission: observed mean and variance.
    pub tickets_per_order: f64,
    pub tickets_per_order_var: f64,
    /// Share of finished admissions that were used for a hold.
    pub conversion: f64,
    /// Places held right now, and the share of held places observed to come back.
    pub held: u64,
    pub hold_lapse: f64,
    /// Share of the fans told "sold out" who chose the waiting list.
    pub waiting_list_share: f64,
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
    /// Admissions given and not yet used for a hold, given back, or expired. With
    /// `remaining` it says what is really left: `remaining` minus what these fans take.
    #[serde(default)]
    pub outstanding: u64,
    /// While sold out: waiting-list tickets before this line are admitted too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_list_line: Option<QueueLine>,
    /// Admissions of places before this line (and of waiting-list places before
    /// `expired_waiting_list_line`) were given more than the admission window ago: unused,
    /// they have gone to the next fans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_line: Option<QueueLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_waiting_list_line: Option<QueueLine>,
    /// What waiting fans' estimates are computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<EstimateInputs>,
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
    /// The fan chose the waiting list for returns (set on the ticket the edge issues for
    /// that choice).
    #[serde(default, skip_serializing_if = "is_false")]
    pub waiting_list: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}
