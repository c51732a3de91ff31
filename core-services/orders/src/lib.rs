//! Checkout: orders, the payment saga, tickets and check-in.
//!
//! A checkout turns a hold into an order and runs a saga over the payment provider:
//! **authorize** (the amount is held on the card) → **confirm the seats** (the hold becomes
//! a sale, in the inventory store) → **capture**. Every failure path compensates: a
//! declined card resumes the hold's timer; seats that could not be confirmed void the
//! authorization; a capture that definitively failed returns the seats. The hold's timer is
//! frozen while the payment is in flight.
//!
//! Every step is entered by a store transaction that checks the step before
//! (compare-and-set), and every provider call carries an idempotency key derived from the
//! fan's own `Idempotency-Key`. So the saga may be driven by the request handler, by the
//! reconciler after a crash, or by both at once from two regions, and still moves money at
//! most once: a fan whose payment succeeded gets the seats or is refunded, never charged
//! for nothing (DESIGN invariant 4).
//!
//! Tickets are issued when the order completes, as Ed25519-signed QR payloads a gate can
//! verify offline; check-in admits each ticket exactly once.
//!
//! Not here: HTTP (the core process maps [`OrderError`] to responses) and the provider's
//! wire format (`tessera-payments`).

mod checkin;
mod saga;
mod tickets;

use std::sync::Arc;

use tessera_api::orders::{Order, OrderState, Ticket};
use tessera_api::{ErrorCode, OrderId};
use tessera_common::{Clock, Rng};
use tessera_fdb_schema::values::OrderRecord;
use tessera_identity::{Keyset, SigningKeyPair};
use tessera_inventory::{Inventory, InventoryError};
use tessera_payments::{PaymentError, PaymentProvider};
use tessera_store::{RunError, Store, StoreError};

pub use saga::ReconcileReport;
pub use tickets::{TicketClaims, qr_svg, verify_ticket};

/// Tunables of the saga.
#[derive(Debug, Clone)]
pub struct OrdersConfig {
    /// Name of this driver in order leases (e.g. the region).
    pub driver: String,
    /// Attempts per provider call before leaving the order to the reconciler.
    pub provider_attempts: u32,
    /// How long a driver owns an order before another may take over.
    pub lease_ms: u64,
}

impl OrdersConfig {
    pub fn new(driver: impl Into<String>) -> Self {
        OrdersConfig { driver: driver.into(), provider_attempts: 3, lease_ms: 15_000 }
    }
}

/// Why an order operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error(transparent)]
    Inventory(InventoryError),
    #[error("order {0} does not exist")]
    UnknownOrder(OrderId),
    #[error("this idempotency key was used with a different request")]
    IdempotencyConflict,
    #[error("a checkout for this hold is already in progress (order {0})")]
    CheckoutInProgress(OrderId),
    #[error(
        "the payment was declined ({code}); order {order_id} failed and the hold is active again"
    )]
    PaymentDeclined { order_id: OrderId, code: String },
    #[error("order {0} cannot be refunded in its state")]
    NotRefundable(OrderId),
    #[error("ticket is not valid")]
    TicketInvalid,
    #[error("ticket was already used at gate {gate}")]
    TicketAlreadyUsed { gate: String },
    #[error("payment provider failed")]
    Provider(#[source] PaymentError),
    #[error("store failed")]
    Store(#[source] StoreError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl OrderError {
    pub fn code(&self) -> ErrorCode {
        match self {
            OrderError::Inventory(e) => e.code(),
            OrderError::UnknownOrder(_) => ErrorCode::UnknownOrder,
            OrderError::IdempotencyConflict => ErrorCode::IdempotencyConflict,
            OrderError::CheckoutInProgress(_) => ErrorCode::CheckoutInProgress,
            OrderError::PaymentDeclined { .. } => ErrorCode::PaymentDeclined,
            OrderError::NotRefundable(_) => ErrorCode::OrderNotRefundable,
            OrderError::TicketInvalid => ErrorCode::TicketInvalid,
            OrderError::TicketAlreadyUsed { .. } => ErrorCode::TicketAlreadyUsed,
            OrderError::Provider(_) => ErrorCode::PaymentFailed,
            OrderError::Store(StoreError::Unavailable(_)) => ErrorCode::Unavailable,
            OrderError::Store(_) | OrderError::Corrupt(_) => ErrorCode::Internal,
        }
    }

    pub fn is_client_error(&self) -> bool {
        match self {
            OrderError::Inventory(e) => e.is_client_error(),
            OrderError::Provider(_) | OrderError::Store(_) | OrderError::Corrupt(_) => false,
            _ => true,
        }
    }
}

impl From<RunError<OrderError>> for OrderError {
    fn from(e: RunError<OrderError>) -> Self {
        match e {
            RunError::Abort(e) => e,
            RunError::Store(e) => OrderError::Store(e),
            RunError::RetriesExhausted { last, .. } => OrderError::Store(last),
        }
    }
}

impl From<InventoryError> for OrderError {
    fn from(e: InventoryError) -> Self {
        match e {
            InventoryError::Store(s) => OrderError::Store(s),
            e => OrderError::Inventory(e),
        }
    }
}

impl From<tessera_fdb_schema::SchemaError> for OrderError {
    fn from(e: tessera_fdb_schema::SchemaError) -> Self {
        OrderError::Corrupt(e.to_string())
    }
}

/// Keys for tickets: the private key that signs them and the public keys gates trust.
#[derive(Debug, Clone)]
pub struct TicketKeys {
    pub signing: SigningKeyPair,
    pub verifying: Keyset,
}

/// The orders service of one region's core.
pub struct Orders<S: Store> {
    pub(crate) inv: Inventory<S>,
    pub(crate) provider: Arc<dyn PaymentProvider>,
    pub(crate) tickets: TicketKeys,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) rng: Arc<dyn Rng>,
    pub(crate) config: OrdersConfig,
}

impl<S: Store> Clone for Orders<S> {
    fn clone(&self) -> Self {
        Orders {
            inv: self.inv.clone(),
            provider: self.provider.clone(),
            tickets: self.tickets.clone(),
            clock: self.clock.clone(),
            rng: self.rng.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: Store> std::fmt::Debug for Orders<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orders").field("driver", &self.config.driver).finish_non_exhaustive()
    }
}

impl<S: Store> Orders<S> {
    pub fn new(
        inv: Inventory<S>,
        provider: Arc<dyn PaymentProvider>,
        tickets: TicketKeys,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        config: OrdersConfig,
    ) -> Self {
        Orders { inv, provider, tickets, clock, rng, config }
    }

    pub fn inventory(&self) -> &Inventory<S> {
        &self.inv
    }

    /// The fan-facing view of an order, with signed tickets once completed.
    pub fn view(&self, r: &OrderRecord) -> Order {
        let tickets = if r.state == OrderState::Completed {
            r.tickets
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let (seat_id, pool) = match r.seats.get(i) {
                        Some(s) => (Some(s.clone()), None),
                        None => (None, r.pool.clone()),
                    };
                    Ticket {
                        ticket_id: t.clone(),
                        qr: tickets::sign_ticket(&self.tickets.signing, t, r, seat_id.as_ref()),
                        seat_id,
                        pool,
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        Order {
            order_id: r.order_id.clone(),
            hold_id: r.hold_id.clone(),
            event_id: r.event_id.clone(),
            customer_id: r.customer_id.clone(),
            seats: r.seats.clone(),
            pool: r.pool.clone(),
            quantity: r.quantity,
            amount_minor: r.amount_minor,
            currency: r.currency.clone(),
            state: r.state,
            payment_id: r.payment_id.clone(),
            failure_code: r.failure_code.clone(),
            tickets,
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
        }
    }
}
