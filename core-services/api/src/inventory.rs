//! Catalog and inventory wire types: seat maps, events, availability and holds.

use serde::{Deserialize, Serialize};

use crate::ids::{CustomerId, EventId, HoldId, PoolId, SeatId, SectionId};

/// Where an event's on-sale stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaleState {
    /// Created; the waiting room is open and fans who join now are shuffled at opening.
    Scheduled,
    /// Selling. Fans who join now are served first come, first served.
    OnSale,
    /// Stopped by an operator; holds and checkouts in flight complete.
    Paused,
    /// Nothing left to sell (what is left is held by someone).
    SoldOut,
    /// Closed for good.
    Closed,
}

impl SaleState {
    pub fn accepts_holds(self) -> bool {
        matches!(self, SaleState::OnSale)
    }
}

/// A price tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub tier_id: String,
    pub name: String,
    /// Price in the currency's minor unit (cents).
    pub price_minor: u64,
}

/// One row of a section: seats are numbered `1..=seats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowSpec {
    pub row: String,
    pub seats: u16,
    /// Seat numbers in this row that are wheelchair accessible.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accessible: Vec<u16>,
}

/// A reserved-seating section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectionSpec {
    pub section_id: SectionId,
    pub name: String,
    pub tier: String,
    /// Explicit rows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<RowSpec>,
    /// Shorthand: `row_count` rows labelled `1..=row_count`, each with `seats_per_row` seats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_count: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seats_per_row: Option<u16>,
}

impl SectionSpec {
    /// The rows of this section with the shorthand expanded.
    pub fn expanded_rows(&self) -> Vec<RowSpec> {
        if !self.rows.is_empty() {
            return self.rows.clone();
        }
        match (self.row_count, self.seats_per_row) {
            (Some(n), Some(per)) => (1..=n)
                .map(|r| RowSpec { row: r.to_string(), seats: per, accessible: Vec::new() })
                .collect(),
            _ => Vec::new(),
        }
    }
    pub fn capacity(&self) -> u64 {
        self.expanded_rows().iter().map(|r| u64::from(r.seats)).sum()
    }
}

/// A general-admission pool (standing floor, lawn).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaPoolSpec {
    pub pool_id: PoolId,
    pub name: String,
    pub tier: String,
    pub capacity: u32,
}

/// Everything needed to create an event: the body of `POST /v1/ops/events`, and the
/// format of the seat map files under `deploy/seatmaps/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEvent {
    pub event_id: EventId,
    pub name: String,
    pub venue: String,
    /// RFC 3339 start time, shown to fans.
    pub starts_at: String,
    /// RFC 3339 time the sale is announced to open, shown to fans as a countdown. The
    /// sale still opens only when an operator opens it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_sale_at: Option<String>,
    /// ISO 4217 currency code.
    pub currency: String,
    #[serde(default = "default_limit")]
    pub max_tickets_per_customer: u32,
    #[serde(default = "default_hold_ttl_s")]
    pub hold_ttl_s: u32,
    pub tiers: Vec<Tier>,
    #[serde(default)]
    pub sections: Vec<SectionSpec>,
    #[serde(default)]
    pub ga_pools: Vec<GaPoolSpec>,
    /// Open the sale right away instead of leaving it `scheduled`.
    #[serde(default)]
    pub open_now: bool,
}

fn default_limit() -> u32 {
    6
}
fn default_hold_ttl_s() -> u32 {
    300
}

/// An event as listed in the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventSummary {
    pub event_id: EventId,
    pub name: String,
    pub venue: String,
    pub starts_at: String,
    /// When the sale is announced to open (RFC 3339), if announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_sale_at: Option<String>,
    pub currency: String,
    pub state: SaleState,
    pub capacity: u64,
    pub max_tickets_per_customer: u32,
    pub hold_ttl_s: u32,
    /// SHA-256 commitment (hex) to the waiting-room shuffle seed, published before opening.
    pub shuffle_commitment: String,
    /// The seed itself (hex), revealed once the sale opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shuffle_seed: Option<String>,
}

/// An event with its seat map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventDetail {
    pub event: EventSummary,
    pub tiers: Vec<Tier>,
    pub sections: Vec<SectionSpec>,
    pub ga_pools: Vec<GaPoolSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventList {
    pub events: Vec<EventSummary>,
}

/// Counts for one section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionAvailability {
    pub section_id: SectionId,
    pub capacity: u64,
    pub free: u64,
    pub held: u64,
    pub sold: u64,
}

/// Counts for one general-admission pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolAvailability {
    pub pool_id: PoolId,
    pub capacity: u64,
    pub free: u64,
    pub held: u64,
    pub sold: u64,
}

/// `GET /v1/events/{event_id}/availability`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Availability {
    pub event_id: EventId,
    pub state: SaleState,
    pub sections: Vec<SectionAvailability>,
    pub pools: Vec<PoolAvailability>,
    /// Time the counts were read, in ms since the Unix epoch.
    pub as_of_ms: u64,
}

/// Seat states of one section, one string per row: `f` free, `h` held, `s` sold, by seat
/// number (`statuses[0]` is seat 1). `GET /v1/events/{event_id}/sections/{section_id}/seats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionSeats {
    pub event_id: EventId,
    pub section_id: SectionId,
    pub rows: Vec<RowSeats>,
    pub as_of_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowSeats {
    pub row: String,
    pub statuses: String,
}

/// `POST /v1/events/{event_id}/holds`. Exactly one of `seats`, `section`, `tier` or `pool`;
/// `quantity` goes with the last three.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seats: Option<Vec<SeatId>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section: Option<SectionId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<i64>,
    /// Best-available requests only: seats must be side by side in one row (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjacent: Option<bool>,
    /// Best-available requests only: only wheelchair-accessible seats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accessible: Option<bool>,
}

/// A validated [`HoldRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldSpec {
    Seats(Vec<SeatId>),
    BestInSection { section: SectionId, quantity: u32, adjacent: bool, accessible: bool },
    BestInTier { tier: String, quantity: u32, adjacent: bool, accessible: bool },
    General { pool: PoolId, quantity: u32 },
}

/// Why a hold request is malformed (before the inventory is consulted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoldRequestError {
    #[error("give exactly one of `seats`, `section`, `tier` or `pool`")]
    Shape,
    #[error("`quantity` must be between 1 and {max}")]
    Quantity { max: u32 },
    #[error("seat {0} appears twice")]
    DuplicateSeat(SeatId),
}

/// The most seats one request may name (further capped by the event's per-customer limit).
pub const HOLD_SEATS_MAX: u32 = 20;

impl HoldRequest {
    pub fn validate(&self) -> Result<HoldSpec, HoldRequestError> {
        let given = [
            self.seats.is_some(),
            self.section.is_some(),
            self.tier.is_some(),
            self.pool.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            return Err(HoldRequestError::Shape);
        }
        let quantity = |q: Option<i64>| -> Result<u32, HoldRequestError> {
            match q {
                Some(q) if q >= 1 && q <= i64::from(HOLD_SEATS_MAX) => Ok(q as u32),
                _ => Err(HoldRequestError::Quantity { max: HOLD_SEATS_MAX }),
            }
        };
        let adjacent = self.adjacent.unwrap_or(true);
        let accessible = self.accessible.unwrap_or(false);
        if let Some(seats) = &self.seats {
            if self.quantity.is_some() || self.adjacent.is_some() || self.accessible.is_some() {
                return Err(HoldRequestError::Shape);
            }
            if seats.is_empty() || seats.len() > HOLD_SEATS_MAX as usize {
                return Err(HoldRequestError::Quantity { max: HOLD_SEATS_MAX });
            }
            let mut sorted = seats.clone();
            sorted.sort();
            if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                return Err(HoldRequestError::DuplicateSeat(w[0].clone()));
            }
            return Ok(HoldSpec::Seats(seats.clone()));
        }
        if let Some(section) = &self.section {
            return Ok(HoldSpec::BestInSection {
                section: section.clone(),
                quantity: quantity(self.quantity)?,
                adjacent,
                accessible,
            });
        }
        if let Some(tier) = &self.tier {
            return Ok(HoldSpec::BestInTier {
                tier: tier.clone(),
                quantity: quantity(self.quantity)?,
                adjacent,
                accessible,
            });
        }
        if let Some(pool) = &self.pool {
            if self.adjacent.is_some() || self.accessible.is_some() {
                return Err(HoldRequestError::Shape);
            }
            return Ok(HoldSpec::General {
                pool: pool.clone(),
                quantity: quantity(self.quantity)?,
            });
        }
        Err(HoldRequestError::Shape)
    }
}

/// The life of a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    /// Held; the timer runs.
    Active,
    /// A payment is in flight; the timer is frozen.
    PaymentPending,
    /// Turned into a sale.
    Confirmed,
    /// Given back by the fan or by a failed checkout.
    Released,
    /// The timer ran out.
    Expired,
}

/// A seat hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub hold_id: HoldId,
    pub event_id: EventId,
    pub customer_id: CustomerId,
    pub seats: Vec<SeatId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolId>,
    pub quantity: u32,
    pub state: HoldState,
    /// When the hold lapses unless confirmed (ms since the Unix epoch). While a payment is in
    /// flight this is the time the timer will resume from.
    pub expires_at_ms: u64,
    pub amount_minor: u64,
    pub currency: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<HoldSpec, String> {
        let r: HoldRequest = serde_json::from_str(json).map_err(|e| format!("json: {e}"))?;
        r.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn validates_hold_requests() {
        assert!(
            matches!(req(r#"{"seats":["A-1-1","A-1-2"]}"#), Ok(HoldSpec::Seats(s)) if s.len() == 2)
        );
        assert_eq!(
            req(r#"{"seats":["A-1-1","A-1-1"]}"#),
            Err("seat A-1-1 appears twice".to_owned())
        );
        assert_eq!(
            req(r#"{"pool":"FLOOR","quantity":0}"#),
            Err("`quantity` must be between 1 and 20".into())
        );
        assert_eq!(
            req(r#"{"pool":"FLOOR","quantity":-3}"#),
            Err("`quantity` must be between 1 and 20".into())
        );
        assert_eq!(req(r#"{"pool":"FLOOR"}"#), Err("`quantity` must be between 1 and 20".into()));
        assert_eq!(
            req(r#"{"pool":"FLOOR","section":"A","quantity":2}"#),
            Err("give exactly one of `seats`, `section`, `tier` or `pool`".into())
        );
        assert!(req(r#"{"seats":[]}"#).is_err());
        assert!(
            req(r#"{"seats":["A-1-1"],"bogus":1}"#).unwrap_err().starts_with("json: unknown field")
        );
        assert!(matches!(
            req(r#"{"section":"A","quantity":3}"#),
            Ok(HoldSpec::BestInSection { quantity: 3, adjacent: true, accessible: false, .. })
        ));
    }

    #[test]
    fn expands_row_shorthand() {
        let s: SectionSpec = serde_json::from_str(
            r#"{"section_id":"A","name":"A","tier":"P1","row_count":3,"seats_per_row":10}"#,
        )
        .unwrap();
        assert_eq!(s.capacity(), 30);
        assert_eq!(s.expanded_rows()[2].row, "3");
    }
}
