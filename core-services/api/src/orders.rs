//! Checkout, orders and tickets.

use serde::{Deserialize, Serialize};

use crate::ids::{CustomerId, EventId, HoldId, OrderId, PoolId, SeatId, TicketId};

/// `POST /v1/orders` (with an `Idempotency-Key` header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    pub hold_id: HoldId,
    /// A payment method token from the provider's client-side SDK (`pm_...`).
    pub payment_method: String,
    /// Where the confirmation goes. Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    /// The payment is being authorized; the hold's timer is frozen.
    PaymentPending,
    /// Paid, seats sold, tickets issued.
    Completed,
    /// The payment was declined or failed; nothing was charged and the seats went back.
    Failed,
    /// Refunded by an operator (or automatically); seats returned to sale.
    Refunded,
}

/// An issued ticket. `qr` is a signed payload a gate can verify offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub ticket_id: TicketId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seat_id: Option<SeatId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolId>,
    pub qr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: OrderId,
    pub hold_id: HoldId,
    pub event_id: EventId,
    pub customer_id: CustomerId,
    pub seats: Vec<SeatId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolId>,
    pub quantity: u32,
    pub amount_minor: u64,
    pub currency: String,
    pub state: OrderState,
    /// The provider's payment id (PaymentIntent id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<String>,
    #[serde(default)]
    pub tickets: Vec<Ticket>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderList {
    pub orders: Vec<Order>,
}

/// `POST /v1/checkin` from a gate scanner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckinRequest {
    pub qr: String,
    pub gate: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckinResponse {
    pub ticket_id: TicketId,
    pub event_id: EventId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seat_id: Option<SeatId>,
    pub admitted_at_ms: u64,
    pub gate: String,
}

/// `POST /v1/ops/orders/{order_id}/refund`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    #[serde(default)]
    pub reason: Option<String>,
}
