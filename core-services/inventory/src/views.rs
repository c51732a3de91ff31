//! Read-only views for the catalog: events, seat maps, availability, seat states.

use std::collections::HashMap;

use tessera_api::inventory::{
    Availability, EventDetail, EventList, EventSummary, GaPoolSpec, PoolAvailability, RowSeats,
    SaleState, SectionAvailability, SectionSeats, SectionSpec,
};
use tessera_api::{CustomerId, EventId, SectionId};
use tessera_fdb_schema::keys::Tally;
use tessera_fdb_schema::values::{self, EventRecord, PoolRecord, SectionRecord};
use tessera_fdb_schema::{SeatState, SeatStatus};
use tessera_store::{RangeRequest, Store, Transaction, decode_i64};

use crate::{Inventory, InventoryError};

/// The fan-facing summary of an event record. The shuffle seed is shown only once the
/// sale has opened.
pub fn summary(r: &EventRecord) -> EventSummary {
    EventSummary {
        event_id: r.event_id.clone(),
        name: r.name.clone(),
        venue: r.venue.clone(),
        starts_at: r.starts_at.clone(),
        on_sale_at: r.on_sale_at.clone(),
        currency: r.currency.clone(),
        state: r.state,
        capacity: r.capacity,
        max_tickets_per_customer: r.max_tickets_per_customer,
        hold_ttl_s: r.hold_ttl_s,
        shuffle_commitment: r.shuffle_commitment.clone(),
        shuffle_seed: (r.state != SaleState::Scheduled && r.opened_at_ms.is_some())
            .then(|| r.shuffle_seed.clone()),
    }
}

impl<S: Store> Inventory<S> {
    fn trx(&self) -> Result<S::Trx, InventoryError> {
        self.store.create_trx().map_err(InventoryError::Store)
    }

    pub async fn list_events(&self) -> Result<EventList, InventoryError> {
        let trx = self.trx()?;
        let (b, e) = self.keys.events();
        let rows =
            trx.get_range(&RangeRequest::new(b, e), true).await.map_err(InventoryError::Store)?;
        let mut events = Vec::with_capacity(rows.len());
        for (_, v) in rows {
            let r: EventRecord = values::decode(&v)?;
            events.push(summary(&r));
        }
        Ok(EventList { events })
    }

    pub async fn event_detail(&self, event_id: &EventId) -> Result<EventDetail, InventoryError> {
        let trx = self.trx()?;
        let bytes = trx
            .get(&self.keys.event(event_id), true)
            .await
            .map_err(InventoryError::Store)?
            .ok_or_else(|| InventoryError::UnknownEvent(event_id.clone()))?;
        let r: EventRecord = values::decode(&bytes)?;
        let (b, e) = self.keys.sections(event_id);
        let mut sections = Vec::new();
        for (_, v) in
            trx.get_range(&RangeRequest::new(b, e), true).await.map_err(InventoryError::Store)?
        {
            let s: SectionRecord = values::decode(&v)?;
            sections.push(SectionSpec {
                section_id: s.section_id,
                name: s.name,
                tier: s.tier,
                rows: s.rows,
                row_count: None,
                seats_per_row: None,
            });
        }
        let (b, e) = self.keys.pools(event_id);
        let mut ga_pools = Vec::new();
        for (_, v) in
            trx.get_range(&RangeRequest::new(b, e), true).await.map_err(InventoryError::Store)?
        {
            let p: PoolRecord = values::decode(&v)?;
            ga_pools.push(GaPoolSpec {
                pool_id: p.pool_id,
                name: p.name,
                tier: p.tier,
                capacity: p.capacity,
            });
        }
        Ok(EventDetail { event: summary(&r), tiers: r.tiers.clone(), sections, ga_pools })
    }

    /// Per-section and per-pool counts from the tallies. Holds that expired in the last
    /// sweep interval still count as held until the sweeper ends them.
    pub async fn availability(&self, event_id: &EventId) -> Result<Availability, InventoryError> {
        let detail = self.event_detail(event_id).await?;
        let trx = self.trx()?;
        let (b, e) = self.keys.tallies(event_id);
        let mut tallies: HashMap<(String, String, bool), i64> = HashMap::new();
        for (k, v) in
            trx.get_range(&RangeRequest::new(b, e), true).await.map_err(InventoryError::Store)?
        {
            let (kind, id, tally) = self.keys.tally_of_key(&k)?;
            tallies.insert((kind, id, tally == Tally::Held), decode_i64(&v));
        }
        let get = |kind: &str, id: &str, held: bool| {
            tallies.get(&(kind.to_owned(), id.to_owned(), held)).copied().unwrap_or(0).max(0) as u64
        };
        let sections = detail
            .sections
            .iter()
            .map(|s| {
                let capacity = s.capacity();
                let held = get("s", s.section_id.as_str(), true);
                let sold = get("s", s.section_id.as_str(), false);
                SectionAvailability {
                    section_id: s.section_id.clone(),
                    capacity,
                    free: capacity.saturating_sub(held + sold),
                    held,
                    sold,
                }
            })
            .collect();
        let pools = detail
            .ga_pools
            .iter()
            .map(|p| {
                let capacity = u64::from(p.capacity);
                let held = get("p", p.pool_id.as_str(), true);
                let sold = get("p", p.pool_id.as_str(), false);
                PoolAvailability {
                    pool_id: p.pool_id.clone(),
                    capacity,
                    free: capacity.saturating_sub(held + sold),
                    held,
                    sold,
                }
            })
            .collect();
        Ok(Availability {
            event_id: event_id.clone(),
            state: detail.event.state,
            sections,
            pools,
            as_of_ms: self.clock.now_ms(),
        })
    }

    /// The state of every seat of a section, by row.
    pub async fn section_seats(
        &self,
        event_id: &EventId,
        section_id: &SectionId,
    ) -> Result<SectionSeats, InventoryError> {
        let trx = self.trx()?;
        if trx.get(&self.keys.event(event_id), true).await.map_err(InventoryError::Store)?.is_none()
        {
            return Err(InventoryError::UnknownEvent(event_id.clone()));
        }
        let bytes = trx
            .get(&self.keys.section(event_id, section_id), true)
            .await
            .map_err(InventoryError::Store)?
            .ok_or_else(|| InventoryError::UnknownSection(section_id.to_string()))?;
        let section: SectionRecord = values::decode(&bytes)?;
        let now = self.clock.now_ms();
        let mut rows = Vec::with_capacity(section.rows.len());
        for row in &section.rows {
            let (b, e) = self.keys.seats_of_row(event_id, section_id, &row.row);
            let seats = trx
                .get_range(&RangeRequest::new(b, e), true)
                .await
                .map_err(InventoryError::Store)?;
            let mut statuses = vec![b'x'; usize::from(row.seats)];
            for (k, v) in seats {
                let (_, seat) = self.keys.seat_of_key(&k)?;
                let state = SeatState::decode(&v)?;
                let c = match state.status {
                    _ if state.is_available(now) => b'f',
                    SeatStatus::Held => b'h',
                    SeatStatus::Sold => b's',
                    SeatStatus::Free | SeatStatus::Unavailable => b'x',
                };
                if let Some(slot) = statuses.get_mut(usize::from(seat.number()) - 1) {
                    *slot = c;
                }
            }
            rows.push(RowSeats {
                row: row.row.clone(),
                statuses: String::from_utf8_lossy(&statuses).into_owned(),
            });
        }
        Ok(SectionSeats {
            event_id: event_id.clone(),
            section_id: section_id.clone(),
            rows,
            as_of_ms: now,
        })
    }

    /// Seats the customer holds or bought for the event (the per-customer limit's count).
    pub async fn customer_count(
        &self,
        event_id: &EventId,
        customer: &CustomerId,
    ) -> Result<i64, InventoryError> {
        let trx = self.trx()?;
        Ok(trx
            .get(&self.keys.customer_tally(event_id, customer), true)
            .await
            .map_err(InventoryError::Store)?
            .map_or(0, |b| decode_i64(&b)))
    }
}
