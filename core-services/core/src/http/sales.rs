//! Holds, checkout, orders and check-in.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use tessera_api::headers;
use tessera_api::inventory::{Hold, HoldRequest, HoldRequestError};
use tessera_api::orders::{
    CheckinRequest, CheckinResponse, CheckoutRequest, Order, OrderList, OrderState,
};
use tessera_api::{ErrorCode, EventId, HoldId, OrderId, TicketId};
use tessera_inventory::{Admission, InventoryError};
use tessera_payments::IdempotencyKey;
use tessera_runtime::{ApiError, Json};
use tessera_store::Store;

use super::{AppState, fan, gate, inventory_error, order_error, path_id};

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

fn idempotency_key(h: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    match header(h, headers::IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(k) => IdempotencyKey::new(k)
            .map(Some)
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string())),
    }
}

/// `POST /v1/events/{event_id}/holds`.
pub(crate) async fn hold<S: Store>(
    State(app): State<AppState<S>>,
    Path(event_id): Path<String>,
    h: HeaderMap,
    Json(req): Json<HoldRequest>,
) -> Result<(StatusCode, Json<Hold>), ApiError> {
    let claims = super::with_role(&app, &h, tessera_identity::ROLE_FAN).await?;
    let customer = claims.sub.clone();
    let event_id = path_id(&event_id, EventId::parse, ErrorCode::UnknownEvent, "event")?;
    let spec = req.validate().map_err(|e| {
        let code = match &e {
            HoldRequestError::Shape => ErrorCode::InvalidRequest,
            HoldRequestError::Quantity { .. } => ErrorCode::InvalidQuantity,
            HoldRequestError::DuplicateSeat(_) => ErrorCode::DuplicateSeat,
        };
        ApiError::new(code, e.to_string())
    })?;
    let mut admission = None;
    let mut admitted_with = None;
    if app.config.queue.require_admission {
        let Some(token) = header(&h, headers::ADMISSION) else {
            return Err(ApiError::refused(
                ErrorCode::AdmissionRequired,
                "holds need an admission token from the waiting room (`x-tessera-admission`)",
                "hold without an admission token",
            ));
        };
        let Some(device) = header(&h, headers::DEVICE) else {
            return Err(ApiError::refused(
                ErrorCode::QueueTokenWrongDevice,
                "the `x-tessera-device` header is required",
                "hold without a device id",
            ));
        };
        let claims = tessera_queue::verify_admission(
            &app.edge_keys,
            token,
            &event_id,
            &customer,
            &tessera_queue::device_hash(device),
            app.clock.now_ms(),
        )
        .map_err(|e| {
            ApiError::refused(
                e.admission_code(),
                "the admission token is not valid for this hold",
                format!("admission token refused: {e}"),
            )
        })?;
        admission = Some(Admission {
            ticket_id: claims.ticket_id.clone(),
            phase: claims.phase,
            rank: claims.rank.clone(),
        });
        admitted_with = Some(claims);
    }
    let key = idempotency_key(&h)?;
    let hold = match app
        .inv
        .hold_admitted(
            &event_id,
            &customer,
            &spec,
            key.as_ref().map(IdempotencyKey::as_str),
            admission.as_ref(),
        )
        .await
    {
        Ok(hold) => hold,
        Err(InventoryError::AdmissionUsed) => {
            return Err(ApiError::refused(
                ErrorCode::AdmissionUsed,
                "this admission already admitted a hold",
                "admission token reused",
            ));
        }
        Err(InventoryError::AdmissionReleased) => {
            return Err(ApiError::refused(
                ErrorCode::AdmissionExpired,
                "this admission ended unused (its window passed, or you left): join the queue again",
                "admission token used after its release",
            ));
        }
        Err(e) => {
            if let Some(claims) = &admitted_with
                && matches!(
                    e,
                    InventoryError::SoldOut { .. }
                        | InventoryError::NotEnoughAdjacent(_)
                        | InventoryError::SeatHeld(_)
                        | InventoryError::SeatSold(_)
                )
            {
                // Nothing the fan asked for was there: their place goes to the next fan at
                // once (their token still allows another try until it expires).
                let app = app.clone();
                let (event_id, claims) = (event_id.clone(), claims.clone());
                tokio::spawn(async move {
                    if let Err(e) = crate::admission::gave_back(&app, &event_id, &claims).await {
                        tracing::warn!("admission: {e:#}");
                    }
                });
            }
            return Err(inventory_error(e));
        }
    };
    app.outbox_written.notify_one();
    if let Some(email) = claims.email {
        // Where "your hold is about to expire" goes; off the request's path.
        let app = app.clone();
        let customer = customer.clone();
        tokio::spawn(async move { crate::bus::remember_contact(&app, &customer, &email).await });
    }
    Ok((StatusCode::CREATED, Json(hold)))
}

/// `GET /v1/holds/{hold_id}`: a fan's own hold.
pub(crate) async fn get_hold<S: Store>(
    State(app): State<AppState<S>>,
    Path(hold_id): Path<String>,
    h: HeaderMap,
) -> Result<Json<Hold>, ApiError> {
    let customer = fan(&app, &h).await?;
    let hold_id = path_id(&hold_id, HoldId::parse, ErrorCode::UnknownHold, "hold")?;
    let hold = app.inv.get_hold(&hold_id).await.map_err(inventory_error)?;
    if hold.customer_id != customer {
        return Err(inventory_error(InventoryError::HoldForeign(hold_id)));
    }
    Ok(Json(hold))
}

/// `DELETE /v1/holds/{hold_id}`.
pub(crate) async fn release<S: Store>(
    State(app): State<AppState<S>>,
    Path(hold_id): Path<String>,
    h: HeaderMap,
) -> Result<Json<Hold>, ApiError> {
    let customer = fan(&app, &h).await?;
    let hold_id = path_id(&hold_id, HoldId::parse, ErrorCode::UnknownHold, "hold")?;
    let hold = app.inv.release(&hold_id, &customer).await.map_err(inventory_error)?;
    app.outbox_written.notify_one();
    Ok(Json(hold))
}

/// `POST /v1/orders`: checkout. 201 when paid and ticketed, 202 while the payment's
/// outcome is being settled (poll `GET /v1/orders/{id}`), 402 when declined.
pub(crate) async fn checkout<S: Store>(
    State(app): State<AppState<S>>,
    h: HeaderMap,
    Json(req): Json<CheckoutRequest>,
) -> Result<(StatusCode, Json<Order>), ApiError> {
    let customer = fan(&app, &h).await?;
    let Some(key) = idempotency_key(&h)? else {
        return Err(ApiError::new(
            ErrorCode::IdempotencyKeyRequired,
            "checkout needs an `Idempotency-Key` header, so that a retry never pays twice",
        ));
    };
    if req.payment_method.is_empty() || req.payment_method.len() > 255 {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "payment_method must be 1 to 255 characters",
        ));
    }
    if req.email.as_ref().is_some_and(|e| e.len() > 254 || !e.contains('@')) {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "email is not an address"));
    }
    let result = app.orders.checkout(&customer, &req, &key).await;
    app.outbox_written.notify_one();
    let order = result.map_err(order_error)?;
    match order.state {
        OrderState::Completed | OrderState::Refunded => Ok((StatusCode::CREATED, Json(order))),
        OrderState::PaymentPending => Ok((StatusCode::ACCEPTED, Json(order))),
        OrderState::Failed => {
            let code = order.failure_code.clone().unwrap_or_default();
            let (ec, msg) = if code == "hold_expired" {
                (
                    ErrorCode::HoldExpired,
                    format!(
                        "the hold ran out before the payment completed; order {} was voided and nothing was charged",
                        order.order_id
                    ),
                )
            } else {
                (
                    ErrorCode::PaymentFailed,
                    format!("order {} failed ({code}); nothing was charged", order.order_id),
                )
            };
            Err(ApiError::new(ec, msg))
        }
    }
}

/// `GET /v1/orders`: the caller's orders.
pub(crate) async fn list_orders<S: Store>(
    State(app): State<AppState<S>>,
    h: HeaderMap,
) -> Result<Json<OrderList>, ApiError> {
    let customer = fan(&app, &h).await?;
    app.orders.list_orders(&customer).await.map(Json).map_err(order_error)
}

/// `GET /v1/orders/{order_id}`.
pub(crate) async fn get_order<S: Store>(
    State(app): State<AppState<S>>,
    Path(order_id): Path<String>,
    h: HeaderMap,
) -> Result<Json<Order>, ApiError> {
    let customer = fan(&app, &h).await?;
    let order_id = path_id(&order_id, OrderId::parse, ErrorCode::UnknownOrder, "order")?;
    app.orders.get_order(&order_id, &customer).await.map(Json).map_err(order_error)
}

/// `GET /v1/orders/{order_id}/tickets/{ticket_id}/qr.svg`: the fan's own ticket as a QR
/// code (SVG) of the signed payload the gates check (`POST /v1/checkin`).
pub(crate) async fn ticket_qr<S: Store>(
    State(app): State<AppState<S>>,
    Path((order_id, ticket_id)): Path<(String, String)>,
    h: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    let customer = fan(&app, &h).await?;
    let order_id = path_id(&order_id, OrderId::parse, ErrorCode::UnknownOrder, "order")?;
    let ticket_id = path_id(&ticket_id, TicketId::parse, ErrorCode::NotFound, "ticket")?;
    let order = app.orders.get_order(&order_id, &customer).await.map_err(order_error)?;
    let Some(ticket) = order.tickets.iter().find(|t| t.ticket_id == ticket_id) else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("order {order_id} has no ticket {ticket_id}"),
        ));
    };
    let svg = tessera_orders::qr_svg(&ticket.qr)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("draw the QR code: {e}")))?;
    let mut resp = axum::response::Response::new(axum::body::Body::from(svg));
    let headers = resp.headers_mut();
    use axum::http::HeaderValue;
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("image/svg+xml"));
    // The code stands for an entry ticket: only the fan's own browser may keep it.
    headers.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    Ok(resp)
}

/// `POST /v1/checkin`: a gate scans a ticket.
pub(crate) async fn checkin<S: Store>(
    State(app): State<AppState<S>>,
    h: HeaderMap,
    Json(req): Json<CheckinRequest>,
) -> Result<Json<CheckinResponse>, ApiError> {
    gate(&app, &h).await?;
    if req.gate.is_empty() || req.gate.len() > 64 {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "gate must be 1 to 64 characters"));
    }
    app.orders.checkin(&req.qr, &req.gate).await.map(Json).map_err(order_error)
}
