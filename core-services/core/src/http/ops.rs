//! Operator control: events, sales, admission rates, refunds.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use tessera_api::inventory::{CreateEvent, EventDetail, EventSummary, SaleState};
use tessera_api::ops::AdmissionRateRequest;
use tessera_api::orders::{Order, RefundRequest};
use tessera_api::{ErrorCode, EventId, OrderId};
use tessera_runtime::{ApiError, Json};
use tessera_store::Store;

use super::{AppState, admin, inventory_error, operator, order_error, path_id};

/// `POST /v1/ops/events`: creates an event from a seat map.
pub(crate) async fn create_event<S: Store>(
    State(app): State<AppState<S>>,
    h: HeaderMap,
    Json(spec): Json<CreateEvent>,
) -> Result<(StatusCode, Json<EventDetail>), ApiError> {
    let who = operator(&app, &h).await?;
    tracing::info!(operator = %who.sub, event_id = %spec.event_id, "creating event");
    let detail = app.inv.create_event(spec).await.map_err(inventory_error)?;
    app.outbox_written.notify_one();
    Ok((StatusCode::CREATED, Json(detail)))
}

/// `POST /v1/ops/events/{event_id}/{open|pause|resume|close}`.
pub(crate) async fn sale_action<S: Store>(
    State(app): State<AppState<S>>,
    Path((event_id, action)): Path<(String, String)>,
    h: HeaderMap,
) -> Result<Json<EventSummary>, ApiError> {
    let who = operator(&app, &h).await?;
    let event_id = path_id(&event_id, EventId::parse, ErrorCode::UnknownEvent, "event")?;
    let to = match action.as_str() {
        "open" | "resume" => SaleState::OnSale,
        "pause" => SaleState::Paused,
        "close" => SaleState::Closed,
        _ => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "actions are open, pause, resume and close",
            ));
        }
    };
    let view = app.inv.set_sale_state(&event_id, to).await.map_err(inventory_error)?;
    tracing::info!(operator = %who.sub, %event_id, action, "sale state changed");
    app.outbox_written.notify_one();
    Ok(Json(tessera_inventory::summary(&view.0)))
}

/// `PUT /v1/ops/events/{event_id}/admission`.
pub(crate) async fn admission_rate<S: Store>(
    State(app): State<AppState<S>>,
    Path(event_id): Path<String>,
    h: HeaderMap,
    Json(req): Json<AdmissionRateRequest>,
) -> Result<StatusCode, ApiError> {
    operator(&app, &h).await?;
    let event_id = path_id(&event_id, EventId::parse, ErrorCode::UnknownEvent, "event")?;
    if !req.rate_per_s.is_finite() || req.rate_per_s < 0.0 || req.rate_per_s > 1_000_000.0 {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "rate_per_s must be between 0 and 1000000",
        ));
    }
    app.inv.set_admission_rate(&event_id, req.rate_per_s).await.map_err(inventory_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/ops/orders/{order_id}/refund`.
pub(crate) async fn refund<S: Store>(
    State(app): State<AppState<S>>,
    Path(order_id): Path<String>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Order>, ApiError> {
    let who = admin(&app, &h).await?;
    let order_id = path_id(&order_id, OrderId::parse, ErrorCode::UnknownOrder, "order")?;
    let reason = if body.is_empty() {
        String::new()
    } else {
        let req: RefundRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(ErrorCode::MalformedJson, format!("malformed JSON: {e}")))?;
        req.reason.unwrap_or_default()
    };
    tracing::info!(operator = %who.sub, %order_id, reason, "refunding order");
    let order = app.orders.refund(&order_id).await.map_err(order_error)?;
    app.outbox_written.notify_one();
    Ok(Json(order))
}
