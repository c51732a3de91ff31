//! The reference consumer: a per-event availability and sales projection, built only from
//! bus events, kept in a region-local store.
//!
//! For each sale event it keeps, per section and per general-admission pool, how many
//! places are held and sold, as the `("tally", ...)` subspace of the inventory store does,
//! so a projection can be compared with the truth key by key. Every region runs one over
//! its own stream (which sources the other regions), in a store of its own (an
//! [`EmbeddedStore`] directory of the region, not the shared inventory store): it is the
//! model for caches and read replicas that must converge after a partition.
//!
//! Counts change by atomic adds, which commute, so events of different regions may arrive
//! in any order and the projection still converges; the dedup marks make a duplicate
//! delivery a no-op.
//!
//! [`router`] serves it to the e2e checks and to operators:
//! - `GET /v1/internal/projection/{event_id}` → [`ProjectionView`]
//! - `GET /v1/internal/projection?after=<bus event id>&limit=<n>` → [`AppliedPage`]

use std::collections::BTreeMap;
use std::path::Path;

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tessera_api::bus::{BusEvent, BusEventBody};
use tessera_api::{ErrorCode, EventId, PoolId, RegionId, SeatId};
use tessera_fdb_schema::Keyspace;
use tessera_fdb_schema::keys::Tally;
use tessera_runtime::{ApiError, Json};
use tessera_store::embedded::EmbeddedStore;
use tessera_store::{MutationType, RangeRequest, Store, StoreError, Transaction as _};
use tokio::task::JoinHandle;

use crate::BusError;
use crate::consumer::{ConsumerConfig, Handler, StoreConsumer, ensure_consumer};

/// The durable consumer name (and dedup namespace) of the projection.
pub const CONSUMER: &str = "availability-projection";

/// The key space root of projection stores; each region's projection lives under
/// `tsrproj-<region>`, so that two regions' projections never mix even if they were
/// pointed at one directory.
pub const ROOT: &str = "tsrproj";

/// The key space of `region`'s projection.
pub fn keyspace(region: &RegionId) -> Keyspace {
    Keyspace::with_root(&format!("{ROOT}-{region}"))
}

/// Applies one event to the tallies.
#[derive(Debug, Clone)]
pub struct ProjectionHandler {
    keyspace: Keyspace,
}

impl ProjectionHandler {
    pub fn new(keyspace: Keyspace) -> Self {
        ProjectionHandler { keyspace }
    }

    /// `(key, delta)` pairs an event implies.
    fn deltas(&self, event: &BusEvent) -> Vec<(Vec<u8>, i64)> {
        let ev = &event.event_id;
        let mut out = Vec::new();
        let mut place = |seats: &[SeatId],
                         pool: &Option<PoolId>,
                         quantity: u32,
                         tally,
                         sign: i64| {
            if let Some(pool) = pool {
                out.push((self.keyspace.pool_tally(ev, pool, tally), sign * i64::from(quantity)));
            }
            for seat in seats {
                out.push((self.keyspace.section_tally(ev, seat.section(), tally), sign));
            }
        };
        match &event.body {
            BusEventBody::SeatsHeld { seats, pool, quantity, .. } => {
                place(seats, pool, *quantity, Tally::Held, 1);
            }
            BusEventBody::HoldReleased { seats, pool, quantity, .. } => {
                place(seats, pool, *quantity, Tally::Held, -1);
            }
            BusEventBody::SeatsSold { seats, pool, quantity, .. } => {
                place(seats, pool, *quantity, Tally::Held, -1);
                place(seats, pool, *quantity, Tally::Sold, 1);
            }
            BusEventBody::SeatsReturned { seats, pool, quantity, .. } => {
                place(seats, pool, *quantity, Tally::Sold, -1);
            }
            BusEventBody::EventChanged { .. }
            | BusEventBody::HoldExpiring { .. }
            | BusEventBody::OrderCompleted { .. }
            | BusEventBody::OrderFailed { .. }
            | BusEventBody::OrderRefunded { .. } => {}
        }
        out
    }
}

impl<S: Store> Handler<S> for ProjectionHandler {
    async fn apply(&self, trx: &S::Trx, event: &BusEvent) -> Result<(), StoreError> {
        for (key, delta) in self.deltas(event) {
            trx.atomic_op(&key, &tessera_store::encode_i64(delta), MutationType::Add);
        }
        Ok(())
    }
}

/// Held and sold places of one section or pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub held: i64,
    pub sold: i64,
}

/// `GET /v1/internal/projection/{event_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionView {
    pub region: RegionId,
    pub event_id: EventId,
    pub sections: BTreeMap<String, Counts>,
    pub pools: BTreeMap<String, Counts>,
    /// Sums over sections and pools.
    pub held: i64,
    pub sold: i64,
    /// Bus events (of every sale event) this region's projection has applied.
    pub events_applied: u64,
}

/// `GET /v1/internal/projection?after=&limit=`: the ids of applied bus events, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedPage {
    pub region: RegionId,
    pub ids: Vec<String>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Read access to a projection store.
#[derive(Debug, Clone)]
pub struct Projection<S: Store> {
    store: S,
    keyspace: Keyspace,
    region: RegionId,
}

impl<S: Store> Projection<S> {
    pub fn new(store: S, keyspace: Keyspace, region: RegionId) -> Self {
        Projection { store, keyspace, region }
    }

    /// The consumer that feeds this projection.
    pub fn consumer(&self) -> StoreConsumer<S, ProjectionHandler> {
        StoreConsumer::new(
            self.store.clone(),
            self.keyspace.clone(),
            ConsumerConfig::new(CONSUMER),
            ProjectionHandler::new(self.keyspace.clone()),
        )
    }

    pub async fn view(&self, event_id: &EventId) -> Result<ProjectionView, BusError> {
        let trx = self.store.create_trx()?;
        let (begin, end) = self.keyspace.tallies(event_id);
        let rows = trx.get_range(&RangeRequest::new(begin, end), true).await?;
        let mut view = ProjectionView {
            region: self.region.clone(),
            event_id: event_id.clone(),
            sections: BTreeMap::new(),
            pools: BTreeMap::new(),
            held: 0,
            sold: 0,
            events_applied: 0,
        };
        for (key, value) in rows {
            let (kind, id, tally) = self
                .keyspace
                .tally_of_key(&key)
                .map_err(|e| BusError::Malformed(format!("projection key: {e}")))?;
            let n = tessera_store::decode_i64(&value);
            let counts = match kind.as_str() {
                "s" => view.sections.entry(id).or_default(),
                _ => view.pools.entry(id).or_default(),
            };
            match tally {
                Tally::Held => {
                    counts.held += n;
                    view.held += n;
                }
                Tally::Sold => {
                    counts.sold += n;
                    view.sold += n;
                }
            }
        }
        let (begin, end) = self.keyspace.consumed_all(CONSUMER);
        view.events_applied =
            trx.get_range(&RangeRequest::new(begin, end), true).await?.len() as u64;
        Ok(view)
    }

    /// Applied bus event ids after `after` (exclusive), at most `limit`.
    pub async fn applied(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<AppliedPage, BusError> {
        let (begin, end) = self.keyspace.consumed_all(CONSUMER);
        let begin = match after {
            Some(id) => tessera_store::key_after(&self.keyspace.consumed(CONSUMER, id)),
            None => begin,
        };
        let trx = self.store.create_trx()?;
        let rows = trx.get_range(&RangeRequest::new(begin, end).limit(limit + 1), true).await?;
        let root = self.keyspace.root_prefix().len();
        let mut ids = Vec::with_capacity(rows.len());
        for (key, _) in rows.iter().take(limit) {
            let (_, _, id): (String, String, String) = key
                .get(root..)
                .and_then(|rest| foundationdb_tuple::unpack(rest).ok())
                .ok_or_else(|| BusError::Malformed("dedup mark key".into()))?;
            ids.push(id);
        }
        let next = (rows.len() > limit).then(|| ids.last().cloned()).flatten();
        Ok(AppliedPage { region: self.region.clone(), ids, next })
    }
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    after: Option<String>,
    limit: Option<usize>,
}

fn internal(e: BusError) -> ApiError {
    ApiError::internal(anyhow::Error::new(e))
}

/// The axum routes serving a projection (mount them on the core's internal router).
pub fn router<S: Store>(projection: Projection<S>) -> Router {
    async fn view<S: Store>(
        State(p): State<Projection<S>>,
        UrlPath(event_id): UrlPath<String>,
    ) -> Result<Json<ProjectionView>, ApiError> {
        let event_id = EventId::parse(&event_id)
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
        p.view(&event_id).await.map(Json).map_err(internal)
    }
    async fn page<S: Store>(
        State(p): State<Projection<S>>,
        Query(q): Query<PageQuery>,
    ) -> Result<Json<AppliedPage>, ApiError> {
        let limit = q.limit.unwrap_or(1_000).clamp(1, 10_000);
        p.applied(q.after.as_deref(), limit).await.map(Json).map_err(internal)
    }
    Router::new()
        .route("/v1/internal/projection", get(page::<S>))
        .route("/v1/internal/projection/{event_id}", get(view::<S>))
        .with_state(projection)
}

/// A running projection: its routes and its consumer task.
#[derive(Debug)]
pub struct RunningProjection {
    pub router: Router,
    pub task: JoinHandle<()>,
    pub store: EmbeddedStore,
}

/// Opens the region-local projection store in `dir`, binds the durable consumer on
/// `region`'s stream (which must exist: see [`crate::streams::ensure_region_stream`]) and
/// spawns it. The core mounts `router` and aborts `task` (or lets `shutdown` end it).
pub async fn start(
    client: &async_nats::Client,
    region: &RegionId,
    dir: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunningProjection, BusError> {
    let store = EmbeddedStore::open(dir)?;
    let projection = Projection::new(store.clone(), keyspace(region), region.clone());
    let consumer = projection.consumer();
    let pull = ensure_consumer(client, region, &ConsumerConfig::new(CONSUMER)).await?;
    let task = tokio::spawn(consumer.run(pull, shutdown));
    Ok(RunningProjection { router: router(projection), task, store })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::Outcome;
    use tessera_api::bus::ReleaseReason;
    use tessera_store::memory::MemoryStore;

    fn event(id: &str, body: BusEventBody) -> BusEvent {
        BusEvent {
            id: id.into(),
            region: RegionId::parse("us-east").unwrap(),
            event_id: EventId::parse("e1").unwrap(),
            at_ms: 1,
            body,
        }
    }

    #[tokio::test]
    async fn tallies_follow_holds_sales_and_releases_and_ignore_duplicates() {
        let store = MemoryStore::new();
        let eu = RegionId::parse("eu-west").unwrap();
        let projection = Projection::new(store.clone(), keyspace(&eu), eu.clone());
        // Another region's projection in the same store stays apart.
        let other_region = RegionId::parse("us-east").unwrap();
        let other = Projection::new(store, keyspace(&other_region), other_region);
        let consumer = projection.consumer();
        let seats: Vec<SeatId> =
            ["A-1-1", "A-1-2", "B-3-4"].iter().map(|s| s.parse().unwrap()).collect();
        let hold = "h_aaaaaaaa1".parse().unwrap();
        let hold2 = "h_aaaaaaaa2".parse().unwrap();
        let customer: tessera_api::CustomerId = "fan-1".parse().unwrap();
        let held = event(
            "01",
            BusEventBody::SeatsHeld {
                hold_id: hold,
                customer_id: customer.clone(),
                seats: seats.clone(),
                pool: None,
                quantity: 3,
                expires_at_ms: 9,
            },
        );
        let sold = event(
            "02",
            BusEventBody::SeatsSold {
                order_id: "o_aaaaaaaa1".parse().unwrap(),
                hold_id: "h_aaaaaaaa1".parse().unwrap(),
                customer_id: customer.clone(),
                seats: seats[..2].to_vec(),
                pool: None,
                quantity: 2,
            },
        );
        let ga = event(
            "03",
            BusEventBody::SeatsHeld {
                hold_id: hold2,
                customer_id: customer.clone(),
                seats: vec![],
                pool: Some("GA".parse().unwrap()),
                quantity: 4,
                expires_at_ms: 9,
            },
        );
        let ga_released = event(
            "04",
            BusEventBody::HoldReleased {
                hold_id: "h_aaaaaaaa2".parse().unwrap(),
                customer_id: customer,
                seats: vec![],
                pool: Some("GA".parse().unwrap()),
                quantity: 4,
                reason: ReleaseReason::Expired,
            },
        );
        let outcomes = consumer.apply_batch(&[held.clone(), sold, ga]).await.unwrap();
        assert_eq!(outcomes, vec![Outcome::Applied; 3]);
        // A redelivery, and a duplicate inside one batch.
        let held_again = held.clone();
        let outcomes =
            consumer.apply_batch(&[held, ga_released.clone(), ga_released]).await.unwrap();
        assert_eq!(outcomes, vec![Outcome::Duplicate, Outcome::Applied, Outcome::Duplicate]);

        let view = projection.view(&EventId::parse("e1").unwrap()).await.unwrap();
        let json = serde_json::to_string(&view).unwrap();
        expect_test::expect![[r#"{"region":"eu-west","event_id":"e1","sections":{"A":{"held":0,"sold":2},"B":{"held":1,"sold":0}},"pools":{"GA":{"held":0,"sold":0}},"held":1,"sold":2,"events_applied":4}"#]]
            .assert_eq(&json);
        let page = projection.applied(None, 3).await.unwrap();
        assert_eq!(page.ids, vec!["01", "02", "03"]);
        assert_eq!(page.next.as_deref(), Some("03"));
        let page = projection.applied(Some("03"), 3).await.unwrap();
        assert_eq!(page.ids, vec!["04"]);
        assert_eq!(page.next, None);
        let untouched = other.view(&EventId::parse("e1").unwrap()).await.unwrap();
        assert_eq!((untouched.held, untouched.sold, untouched.events_applied), (0, 0, 0));
        let outcomes = other.consumer().apply_batch(&[held_again]).await.unwrap();
        assert_eq!(outcomes, vec![Outcome::Applied], "its dedup marks are its own");
    }
}
