//! Seat inventory: the only code that writes seat state.
//!
//! [`Inventory`] creates events from seat maps, places holds on specific seats, on the best
//! available adjacent seats of a section or tier, or on general-admission places; releases
//! them; freezes a hold's timer while its payment is in flight; confirms a hold into a sale
//! (idempotently, so an unknown commit outcome can be retried); returns sold seats on a
//! refund; and sweeps expired holds. Every change that other regions must learn about is
//! written to the region's outbox in the same transaction.
//!
//! It runs on any `tessera-store` backend (FoundationDB semantics) and takes its clock and
//! randomness as parameters, so the simulator can drive it. It knows nothing of HTTP, NATS
//! or payments.
//!
//! How contention stays low: candidate seats are found with snapshot reads, and only the
//! seats actually taken join the read conflict set; general-admission pools are split into
//! shards that each carry part of the capacity; availability tallies change with atomic
//! adds that never conflict.
//!
//! **Architecture invariants** (asserted, and checked by the tests and the simulator):
//! a seat is sold at most once; a pool never sells past its capacity; a hold is exclusive
//! until it expires or is released.

mod events;
mod holds;
mod sale;
mod sweep;
mod views;

use std::sync::Arc;

use sha2::Digest as _;
use tessera_api::bus::BusEventBody;
use tessera_api::inventory::{HoldState, SaleState};
use tessera_api::{ErrorCode, EventId, HoldId, PoolId, RegionId, SeatId};
use tessera_common::{Clock, Rng};
use tessera_fdb_schema::Keyspace;
use tessera_fdb_schema::values::{self, OutboxRecord};
use tessera_store::{MutationType, RunError, Store, StoreError, Transaction, TrxError};

pub use events::{EVENT_CAPACITY_MAX, EventRecordView};
pub use holds::Admission;
pub use sale::Confirmed;
pub use sweep::SweepReport;
pub use views::summary;

/// Tunables of the inventory.
#[derive(Debug, Clone)]
pub struct InventoryConfig {
    /// The region whose outbox this instance writes to.
    pub region: RegionId,
    /// How long a hold's timer may stay frozen while a payment is in flight; past this the
    /// seats go back on sale and a late payment is refunded.
    pub payment_window_ms: u64,
    /// "Your hold is about to expire" goes out this long before the deadline.
    pub expiring_notice_ms: u64,
    /// Seats written per transaction when creating an event.
    pub create_batch_seats: usize,
}

impl InventoryConfig {
    pub fn new(region: RegionId) -> Self {
        InventoryConfig {
            region,
            payment_window_ms: 10 * 60 * 1000,
            expiring_notice_ms: 60 * 1000,
            create_batch_seats: 20_000,
        }
    }
}

/// Why an inventory operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("event {0} does not exist")]
    UnknownEvent(EventId),
    #[error("event {0} already exists")]
    EventExists(EventId),
    #[error("seat map is invalid: {0}")]
    InvalidSeatMap(String),
    #[error("seat {0} does not exist")]
    UnknownSeat(SeatId),
    #[error("section {0} does not exist")]
    UnknownSection(String),
    #[error("tier {0} does not exist")]
    UnknownTier(String),
    #[error("pool {0} does not exist")]
    UnknownPool(PoolId),
    #[error("seat {0} appears twice")]
    DuplicateSeat(SeatId),
    #[error("quantity must be between 1 and {max}")]
    InvalidQuantity { max: u32 },
    #[error("seat {0} is held by someone else")]
    SeatHeld(SeatId),
    #[error("seat {0} is sold")]
    SeatSold(SeatId),
    #[error("no {0} adjacent seats are available")]
    NotEnoughAdjacent(u32),
    #[error("not enough left: {remaining} available")]
    SoldOut { remaining: u64 },
    #[error("the limit is {limit} tickets per customer and you have {current}")]
    LimitExceeded { limit: u32, current: u32 },
    #[error("event {event} is not on sale ({state:?})")]
    EventNotOnSale { event: EventId, state: SaleState },
    #[error("hold {0} does not exist")]
    UnknownHold(HoldId),
    #[error("hold {0} belongs to someone else")]
    HoldForeign(HoldId),
    #[error("hold {0} has expired")]
    HoldExpired(HoldId),
    #[error("hold {hold} is {state:?}")]
    HoldNotActive { hold: HoldId, state: HoldState },
    #[error("hold {0} has a payment in flight")]
    HoldPaymentInFlight(HoldId),
    #[error("this idempotency key was used with a different request")]
    IdempotencyConflict,
    #[error("this admission was already used for a hold")]
    AdmissionUsed,
    #[error("this admission ended unused (its window passed, or its fan left)")]
    AdmissionReleased,
    #[error("event {event} cannot go from {from:?} to {to:?}")]
    InvalidTransition { event: EventId, from: SaleState, to: SaleState },
    #[error("store failed")]
    Store(#[source] StoreError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl InventoryError {
    /// The API error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        use InventoryError as E;
        match self {
            E::UnknownEvent(_) => ErrorCode::UnknownEvent,
            E::EventExists(_) => ErrorCode::EventExists,
            E::InvalidSeatMap(_) => ErrorCode::InvalidSeatMap,
            E::UnknownSeat(_) => ErrorCode::UnknownSeat,
            E::UnknownSection(_) | E::UnknownTier(_) => ErrorCode::UnknownSection,
            E::UnknownPool(_) => ErrorCode::UnknownPool,
            E::DuplicateSeat(_) => ErrorCode::DuplicateSeat,
            E::InvalidQuantity { .. } => ErrorCode::InvalidQuantity,
            E::SeatHeld(_) => ErrorCode::SeatHeld,
            E::SeatSold(_) => ErrorCode::SeatSold,
            E::NotEnoughAdjacent(_) => ErrorCode::NotEnoughAdjacent,
            E::SoldOut { .. } => ErrorCode::SoldOut,
            E::LimitExceeded { .. } => ErrorCode::LimitExceeded,
            E::EventNotOnSale { .. } | E::InvalidTransition { .. } => ErrorCode::EventNotOnSale,
            E::UnknownHold(_) => ErrorCode::UnknownHold,
            E::HoldForeign(_) => ErrorCode::HoldForeign,
            E::HoldExpired(_) => ErrorCode::HoldExpired,
            E::HoldNotActive { .. } => ErrorCode::HoldNotActive,
            E::HoldPaymentInFlight(_) => ErrorCode::HoldPaymentInFlight,
            E::IdempotencyConflict => ErrorCode::IdempotencyConflict,
            E::AdmissionUsed => ErrorCode::AdmissionUsed,
            E::AdmissionReleased => ErrorCode::AdmissionExpired,
            E::Store(StoreError::Unavailable(_)) => ErrorCode::Unavailable,
            E::Store(_) | E::Corrupt(_) => ErrorCode::Internal,
        }
    }

    /// Whether this is the caller's fault (a 4xx), as opposed to ours.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, InventoryError::Store(_) | InventoryError::Corrupt(_))
    }
}

impl From<RunError<InventoryError>> for InventoryError {
    fn from(e: RunError<InventoryError>) -> Self {
        match e {
            RunError::Abort(e) => e,
            RunError::Store(e) => InventoryError::Store(e),
            RunError::RetriesExhausted { last, .. } => InventoryError::Store(last),
        }
    }
}

impl From<tessera_fdb_schema::SchemaError> for InventoryError {
    fn from(e: tessera_fdb_schema::SchemaError) -> Self {
        InventoryError::Corrupt(e.to_string())
    }
}

pub type TrxResult<T> = Result<T, TrxError<InventoryError>>;

pub(crate) fn fail<T>(e: InventoryError) -> TrxResult<T> {
    Err(TrxError::Abort(e))
}

pub(crate) fn corrupt<T>(e: impl std::fmt::Display) -> TrxResult<T> {
    Err(TrxError::Abort(InventoryError::Corrupt(e.to_string())))
}

/// The seat inventory of one region's core, over a shared store.
pub struct Inventory<S: Store> {
    pub(crate) store: S,
    pub(crate) keys: Keyspace,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) rng: Arc<dyn Rng>,
    pub(crate) config: InventoryConfig,
}

impl<S: Store> Clone for Inventory<S> {
    fn clone(&self) -> Self {
        Inventory {
            store: self.store.clone(),
            keys: self.keys.clone(),
            clock: self.clock.clone(),
            rng: self.rng.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: Store> std::fmt::Debug for Inventory<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory").field("region", &self.config.region).finish_non_exhaustive()
    }
}

impl<S: Store> Inventory<S> {
    pub fn new(
        store: S,
        keys: Keyspace,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        config: InventoryConfig,
    ) -> Self {
        Inventory { store, keys, clock, rng, config }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn keys(&self) -> &Keyspace {
        &self.keys
    }

    pub fn region(&self) -> &RegionId {
        &self.config.region
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// How long a hold stays frozen while its payment is in flight.
    pub fn payment_window_ms(&self) -> u64 {
        self.config.payment_window_ms
    }
}

/// Writes one bus event to the region's outbox inside `trx`. `n` orders several entries of
/// one transaction (each distinct `n` gives a distinct key).
pub fn write_outbox<T: Transaction>(
    trx: &T,
    keys: &Keyspace,
    region: &RegionId,
    n: u16,
    event_id: &EventId,
    at_ms: u64,
    body: BusEventBody,
) {
    outbox(trx, keys, region, n, event_id, at_ms, body);
}

pub(crate) fn outbox<T: Transaction>(
    trx: &T,
    keys: &Keyspace,
    region: &RegionId,
    n: u16,
    event_id: &EventId,
    at_ms: u64,
    body: BusEventBody,
) {
    // The trace of the request that wrote the entry continues at the NATS publish.
    let traceparent = tessera_common::trace::current_traceparent();
    let record = OutboxRecord { v: 1, event_id: event_id.clone(), at_ms, body, traceparent };
    trx.atomic_op(
        &keys.outbox_entry_versionstamped(region, n),
        &values::encode(&record),
        MutationType::SetVersionstampedKey,
    );
}

/// The `HoldReleased` event for a hold that gives its seats back.
pub(crate) fn hold_released(
    r: &values::HoldRecord,
    reason: tessera_api::bus::ReleaseReason,
) -> BusEventBody {
    BusEventBody::HoldReleased {
        hold_id: r.hold_id.clone(),
        customer_id: r.customer_id.clone(),
        seats: r.seats.clone(),
        pool: r.pool.clone(),
        quantity: r.quantity,
        reason,
    }
}

pub(crate) fn add_i64<T: Transaction>(trx: &T, key: &[u8], delta: i64) {
    trx.atomic_op(key, &delta.to_le_bytes(), MutationType::Add);
}

/// SHA-256 (hex) of a canonical request, for idempotency records.
pub(crate) fn request_hash(parts: &[&str]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}
