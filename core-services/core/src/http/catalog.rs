//! Catalog reads.

use axum::extract::{Path, State};
use tessera_api::inventory::{Availability, EventDetail, EventList, SectionSeats};
use tessera_api::{ErrorCode, EventId, SectionId};
use tessera_runtime::{ApiError, Json};
use tessera_store::Store;

use super::{AppState, inventory_error, path_id};

pub(crate) async fn list<S: Store>(
    State(app): State<AppState<S>>,
) -> Result<Json<EventList>, ApiError> {
    app.inv.list_events().await.map(Json).map_err(inventory_error)
}

pub(crate) async fn detail<S: Store>(
    State(app): State<AppState<S>>,
    Path(event_id): Path<String>,
) -> Result<Json<EventDetail>, ApiError> {
    let event_id = path_id(&event_id, EventId::parse, ErrorCode::UnknownEvent, "event")?;
    app.inv.event_detail(&event_id).await.map(Json).map_err(inventory_error)
}

pub(crate) async fn availability<S: Store>(
    State(app): State<AppState<S>>,
    Path(event_id): Path<String>,
) -> Result<Json<Availability>, ApiError> {
    let event_id = path_id(&event_id, EventId::parse, ErrorCode::UnknownEvent, "event")?;
    app.inv.availability(&event_id).await.map(Json).map_err(inventory_error)
}

pub(crate) async fn section_seats<S: Store>(
    State(app): State<AppState<S>>,
    Path((event_id, section_id)): Path<(String, String)>,
) -> Result<Json<SectionSeats>, ApiError> {
    let event_id = path_id(&event_id, EventId::parse, ErrorCode::UnknownEvent, "event")?;
    let section_id = path_id(&section_id, SectionId::parse, ErrorCode::UnknownSection, "section")?;
    app.inv.section_seats(&event_id, &section_id).await.map(Json).map_err(inventory_error)
}
