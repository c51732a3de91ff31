//! Health, the waiting room's core side, the development issuer and provider webhooks.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use tessera_api::ops::{DevTokenRequest, DevTokenResponse};
use tessera_api::queue::{AdmissionWatermark, QueuePlace, QueueRegistration};
use tessera_api::{ErrorCode, EventId, OrderId};
use tessera_identity::{ROLE_FAN, ROLE_OPERATOR};
use tessera_runtime::{ApiError, Json};
use tessera_store::{Store, Transaction as _};

use super::{AppState, authenticate, path_id};
use crate::admission::{self, RegisterError};

/// `GET /livez`: the process is up and serving HTTP. It reads nothing, so a store that is
/// recovering (a FoundationDB failover takes seconds) never gets a core restarted; use
/// `/healthz` for readiness.
pub(crate) async fn live() -> &'static str {
    "ok"
}

/// `GET /healthz`: this core can reach the store.
pub(crate) async fn health<S: Store>(
    State(app): State<AppState<S>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let trx = app.store().create_trx().map_err(|e| ApiError::unavailable(format!("store: {e}")))?;
    let version =
        trx.read_version().await.map_err(|e| ApiError::unavailable(format!("store: {e}")))?;
    Ok(Json(serde_json::json!({
        "status": "ok",
        "region": app.region,
        "instance": app.instance,
        "store_version": version,
    })))
}

/// `GET /v1/events/{event_id}/admission`: the newest watermark (edges that cannot listen
/// to NATS poll this).
pub(crate) async fn admission<S: Store>(
    State(app): State<AppState<S>>,
    Path(event_id): Path<String>,
) -> Result<Json<AdmissionWatermark>, ApiError> {
    let event_id = path_id(&event_id, EventId::parse, ErrorCode::UnknownEvent, "event")?;
    if let Some(wm) = app.watermarks.read().get(&event_id) {
        return Ok(Json(wm.clone()));
    }
    match admission::stored_watermark(&app, &event_id).await.map_err(ApiError::internal)? {
        Some(wm) => Ok(Json(wm)),
        None => Err(ApiError::new(
            ErrorCode::UnknownEvent,
            format!("event {event_id} has no waiting room (yet)"),
        )),
    }
}

/// `POST /v1/internal/events/{event_id}/queue`: an edge registers a fan's place. The fan's
/// identity token is forwarded and must name the customer being registered.
pub(crate) async fn register<S: Store>(
    State(app): State<AppState<S>>,
    Path(event_id): Path<String>,
    h: HeaderMap,
    Json(reg): Json<QueueRegistration>,
) -> Result<(StatusCode, Json<QueuePlace>), ApiError> {
    let claims = authenticate(&app, &h)?;
    if claims.sub != reg.customer_id {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "a place can only be registered for the token's own customer",
        ));
    }
    let event_id = path_id(&event_id, EventId::parse, ErrorCode::UnknownEvent, "event")?;
    let place = admission::register(&app, &event_id, &reg).await.map_err(|e| match e {
        RegisterError::UnknownEvent(id) => {
            ApiError::new(ErrorCode::UnknownEvent, format!("event {id} does not exist"))
        }
        RegisterError::Closed(id) => {
            ApiError::new(ErrorCode::QueueClosed, format!("the waiting room of {id} is closed"))
        }
        RegisterError::Store(m) => ApiError::internal(anyhow::anyhow!(m)),
    })?;
    Ok((StatusCode::OK, Json(place)))
}

/// `POST /v1/dev/token`: mints an identity token with the development issuer.
pub(crate) async fn dev_token<S: Store>(
    State(app): State<AppState<S>>,
    Json(req): Json<DevTokenRequest>,
) -> Result<Json<DevTokenResponse>, ApiError> {
    let Some(issuer) = &app.dev_issuer else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "the development issuer is off in this deployment",
        ));
    };
    let ttl_s = req.ttl_s.unwrap_or(3600).clamp(1, 24 * 3600);
    let mut roles = vec![ROLE_FAN.to_owned()];
    if req.operator {
        roles.push(ROLE_OPERATOR.to_owned());
        roles.push(tessera_identity::ROLE_GATE.to_owned());
    }
    let now = app.clock.now_ms();
    if req.email.as_ref().is_some_and(|e| e.len() > 254 || !e.contains('@')) {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "email is not an address"));
    }
    let token = issuer.mint_with_email(req.customer_id, roles, req.email, now, ttl_s);
    Ok(Json(DevTokenResponse { token, expires_at_ms: now + ttl_s * 1000 }))
}

/// `POST /v1/webhooks/payments`: the provider's signed events. A valid event about an
/// order wakes that order's saga; a bad signature is refused and changes nothing.
pub(crate) async fn payment_webhook<S: Store>(
    State(app): State<AppState<S>>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let signature = h.get("stripe-signature").and_then(|v| v.to_str().ok());
    let now_s = app.clock.now_ms() / 1000;
    let event = tessera_payments::webhook::verify_event(
        app.config.payments.webhook_secret.expose(),
        signature,
        &body,
        now_s,
        tessera_payments::webhook::DEFAULT_TOLERANCE_S,
    )
    .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    let order = match &event.data {
        tessera_payments::webhook::ProviderEventData::Payment(p) => p.order_id.clone(),
        tessera_payments::webhook::ProviderEventData::Charge { order_id, .. } => order_id.clone(),
        _ => None,
    };
    if let Some(order_id) = order.and_then(|o| OrderId::parse(&o).ok()) {
        let app = app.clone();
        tokio::spawn(async move {
            // Only orders nobody is driving (a crashed region's): the live saga goes on by
            // itself.
            if let Err(e) = app.orders.settle(&order_id).await {
                tracing::debug!(%order_id, "webhook-triggered drive did not finish: {e}");
            }
        });
    }
    Ok(StatusCode::NO_CONTENT)
}
