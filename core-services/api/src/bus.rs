//! Events carried over NATS JetStream between regions.
//!
//! Every state change that other regions must learn about is written to the region's
//! outbox in the same transaction as the change, then published by the outbox relay to
//! `tessera.<region>.<kind>.<event_id>` with the outbox id as the JetStream `Nats-Msg-Id`.
//! Consumers apply events idempotently by [`BusEvent::id`].

use serde::{Deserialize, Serialize};

use crate::ids::{CustomerId, EventId, HoldId, OrderId, PoolId, RegionId, SeatId};
use crate::inventory::SaleState;

/// Why a hold stopped holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    Released,
    Expired,
    PaymentFailed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BusEventBody {
    EventChanged {
        state: SaleState,
    },
    SeatsHeld {
        hold_id: HoldId,
        customer_id: CustomerId,
        seats: Vec<SeatId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<PoolId>,
        quantity: u32,
        expires_at_ms: u64,
    },
    HoldReleased {
        hold_id: HoldId,
        customer_id: CustomerId,
        seats: Vec<SeatId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<PoolId>,
        quantity: u32,
        reason: ReleaseReason,
    },
    HoldExpiring {
        hold_id: HoldId,
        customer_id: CustomerId,
        expires_at_ms: u64,
    },
    SeatsSold {
        order_id: OrderId,
        hold_id: HoldId,
        customer_id: CustomerId,
        seats: Vec<SeatId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<PoolId>,
        quantity: u32,
    },
    SeatsReturned {
        order_id: OrderId,
        seats: Vec<SeatId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<PoolId>,
        quantity: u32,
    },
    OrderCompleted {
        order_id: OrderId,
        customer_id: CustomerId,
        amount_minor: u64,
        currency: String,
    },
    OrderFailed {
        order_id: OrderId,
        customer_id: CustomerId,
        code: String,
    },
    OrderRefunded {
        order_id: OrderId,
        customer_id: CustomerId,
        amount_minor: u64,
        currency: String,
    },
}

impl BusEventBody {
    /// The subject segment naming this kind of event.
    pub fn kind(&self) -> &'static str {
        match self {
            BusEventBody::EventChanged { .. } => "event.changed",
            BusEventBody::SeatsHeld { .. } => "seats.held",
            BusEventBody::HoldReleased { .. } => "hold.released",
            BusEventBody::HoldExpiring { .. } => "hold.expiring",
            BusEventBody::SeatsSold { .. } => "seats.sold",
            BusEventBody::SeatsReturned { .. } => "seats.returned",
            BusEventBody::OrderCompleted { .. } => "order.completed",
            BusEventBody::OrderFailed { .. } => "order.failed",
            BusEventBody::OrderRefunded { .. } => "order.refunded",
        }
    }
}

/// One event as published on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusEvent {
    /// Globally unique and ordered within a region: the hex of the outbox key's versionstamp.
    pub id: String,
    /// The region whose transaction produced the event.
    pub region: RegionId,
    pub event_id: EventId,
    pub at_ms: u64,
    #[serde(flatten)]
    pub body: BusEventBody,
}

impl BusEvent {
    /// `tessera.<region>.<kind>.<event_id>`.
    pub fn subject(&self) -> String {
        format!("tessera.{}.{}.{}", self.region, self.body.kind(), self.event_id)
    }
}

/// Subject on which the core publishes admission watermarks (core NATS, not JetStream).
pub fn admission_subject(event_id: &EventId) -> String {
    format!("tessera.admission.{event_id}")
}

/// Subject of a region's liveness heartbeat (core NATS).
pub fn heartbeat_subject(region: &RegionId) -> String {
    format!("tessera.heartbeat.{region}")
}

/// Subject carrying region-control changes (drain/restore) between routers.
pub const REGION_CONTROL_SUBJECT: &str = "tessera.control.regions";

/// A region's heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub region: RegionId,
    pub url: String,
    pub at_ms: u64,
    /// Commits per second the region's store is doing (load signal for admission).
    pub commits_per_s: f64,
    pub healthy: bool,
}
