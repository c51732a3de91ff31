//! Health, the waiting room's core side, the development issuer and provider webhooks.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use tessera_api::ops::{DevTokenRequest, DevTokenResponse};
use tessera_api::queue::{QueuePlace, QueueRegistration, QueueTicketClaims, SignedWatermark};
use tessera_api::{ErrorCode, EventId, OrderId};
use tessera_identity::{ROLE_FAN, ROLE_OPERATOR};
use tessera_runtime::{ApiError, Json};
use tessera_store::{Store, Transaction as _};

use super::{AppState, authenticate, path_id, service};
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

/// `GET /v1/events/{event_id}/admission`: the newest watermark, signed (edges that cannot
/// listen to NATS poll this).
pub(crate) async fn admission<S: Store>(
    State(app): State<AppState<S>>,
    Path(event_id): Path<String>,
) -> Result<Json<SignedWatermark>, ApiError> {
    let event_id = path_id(&event_id, EventId::parse, ErrorCode::UnknownEvent, "event")?;
    if let Some(wm) = app.watermarks.read().get(&event_id) {
        return Ok(Json(wm.clone()));
    }
    match admission::stored_watermark(&app, &event_id).await.map_err(ApiError::internal)? {
        Some(wm) => Ok(Json(tessera_queue::watermark::sign(&app.watermark_key, &wm))),
        None => Err(ApiError::new(
            ErrorCode::UnknownEvent,
            format!("event {event_id} has no waiting room (yet)"),
        )),
    }
}

/// `POST /v1/internal/events/{event_id}/queue`: an edge registers a fan's place. The
/// edge proves itself with its service credential; the fan's identity token is forwarded
/// too and must name the customer being registered.
pub(crate) async fn register<S: Store>(
    State(app): State<AppState<S>>,
    Path(event_id): Path<String>,
    h: HeaderMap,
    Json(reg): Json<QueueRegistration>,
) -> Result<(StatusCode, Json<QueuePlace>), ApiError> {
    service(&app, &h)?;
    let claims = authenticate(&app, &h).await?;
    if claims.sub != reg.customer_id {
        return Err(ApiError::refused(
            ErrorCode::Forbidden,
            "a place can only be registered for the token's own customer",
            "queue registration for another customer",
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

/// The queue ticket a fan's request carries, verified (signature by an edge key, event,
/// device) and bound to the caller's identity.
async fn fan_ticket<S: Store>(
    app: &AppState<S>,
    h: &HeaderMap,
    event_id: &EventId,
) -> Result<QueueTicketClaims, ApiError> {
    let claims = authenticate(app, h).await?;
    let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
    let Some(ticket) = header(tessera_api::headers::QUEUE_TICKET) else {
        return Err(ApiError::new(ErrorCode::QueueTicketInvalid, "send your queue ticket"));
    };
    let Some(device) = header(tessera_api::headers::DEVICE) else {
        return Err(ApiError::new(
            ErrorCode::QueueTokenWrongDevice,
            "the `x-tessera-device` header is required",
        ));
    };
    let ticket = tessera_queue::verify_ticket(
        &app.edge_keys,
        ticket,
        event_id,
        &tessera_queue::device_hash(device),
        app.clock.now_ms(),
    )
    .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    if ticket.customer_id != claims.sub {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this queue ticket belongs to someone else",
        ));
    }
    Ok(ticket)
}

fn fan_request_error(e: admission::FanRequestError) -> ApiError {
    match e {
        admission::FanRequestError::NotSoldOut => ApiError::new(
            ErrorCode::NotSoldOut,
            "places are still offered in queue order: keep your place, no waiting list needed",
        ),
        admission::FanRequestError::Left => ApiError::new(
            ErrorCode::QueueLeft,
            "you left the waiting room with this ticket; join again for a new place",
        ),
        admission::FanRequestError::Store(m) => ApiError::internal(anyhow::anyhow!(m)),
    }
}

/// `POST /v1/internal/events/{event_id}/queue/waiting-list`: an edge records that a fan
/// told "sold out" stays for returns (the fan's ticket and identity are forwarded).
pub(crate) async fn waiting_list<S: Store>(
    State(app): State<AppState<S>>,
    Path(event_id): Path<String>,
    h: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let event_id = path_id(&event_id, EventId::parse, ErrorCode::UnknownEvent, "event")?;
    service(&app, &h)?;
    let ticket = fan_ticket(&app, &h, &event_id).await?;
    admission::join_waiting_list(&app, &event_id, &ticket).await.map_err(fan_request_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/internal/events/{event_id}/queue/leave`: an edge records that a fan gave
/// their place up.
pub(crate) async fn leave<S: Store>(
    State(app): State<AppState<S>>,
    Path(event_id): Path<String>,
    h: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let event_id = path_id(&event_id, EventId::parse, ErrorCode::UnknownEvent, "event")?;
    service(&app, &h)?;
    let ticket = fan_ticket(&app, &h, &event_id).await?;
    admission::leave(&app, &event_id, &ticket).await.map_err(fan_request_error)?;
    Ok(StatusCode::NO_CONTENT)
}

fn no_dev_issuer() -> ApiError {
    ApiError::refused(ErrorCode::NotFound, "no such route", "development route outside local mode")
}

/// `POST /v1/dev/token` (local mode only): mints an identity token with the development
/// issuer. `operator: true` adds `operator` and `gate`; `roles` names roles exactly.
pub(crate) async fn dev_token<S: Store>(
    State(app): State<AppState<S>>,
    Json(req): Json<DevTokenRequest>,
) -> Result<Json<DevTokenResponse>, ApiError> {
    let Some(issuer) = &app.dev_issuer else {
        return Err(no_dev_issuer());
    };
    let ttl_s = req.ttl_s.unwrap_or(3600).clamp(1, 24 * 3600);
    let mut roles = vec![ROLE_FAN.to_owned()];
    if req.operator {
        roles.push(ROLE_OPERATOR.to_owned());
        roles.push(tessera_identity::ROLE_GATE.to_owned());
    }
    for r in &req.roles {
        if !tessera_identity::ROLES.contains(&r.as_str()) {
            return Err(ApiError::new(ErrorCode::InvalidRequest, format!("unknown role {r:?}")));
        }
        roles.push(r.clone());
    }
    let now = app.clock.now_ms();
    if req.email.as_ref().is_some_and(|e| e.len() > 254 || !e.contains('@')) {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "email is not an address"));
    }
    let token = issuer.mint_with_email(req.customer_id, roles, req.email, now, ttl_s);
    Ok(Json(DevTokenResponse { token, expires_at_ms: now + ttl_s * 1000 }))
}

/// `GET /v1/dev/.well-known/openid-configuration` (local mode only): the development
/// issuer's discovery document, so the core verifies its tokens the way it verifies any
/// issuer's. The issuer is `identity.issuer` (a URL ending in `/v1/dev`).
pub(crate) async fn dev_discovery<S: Store>(
    State(app): State<AppState<S>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(issuer) = &app.dev_issuer else {
        return Err(no_dev_issuer());
    };
    let base = issuer.issuer.trim_end_matches('/');
    Ok(Json(serde_json::json!({
        "issuer": issuer.issuer,
        "jwks_uri": format!("{base}/jwks"),
        "token_endpoint": format!("{base}/token"),
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "subject_types_supported": ["public"],
        "response_types_supported": ["id_token"],
    })))
}

/// `GET /v1/dev/jwks` (local mode only): the development issuer's public key.
pub(crate) async fn dev_jwks<S: Store>(
    State(app): State<AppState<S>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(issuer) = &app.dev_issuer else {
        return Err(no_dev_issuer());
    };
    let jwks = tessera_identity::Keyset::new([issuer.key.public()]).to_jwks();
    Ok(Json(serde_json::to_value(jwks).map_err(|e| ApiError::internal(e.into()))?))
}

/// `POST /v1/webhooks/payments`: the provider's signed events, through the public edge.
/// Every failure (no signature, a wrong one, a stale or replayed delivery, a body that is
/// not an event) answers the same `400 webhook_signature_invalid`; the log says which.
/// A delivery is accepted once: its signature is recorded in the store, so a captured
/// request sent again is refused, while the provider's own retries (signed anew) are
/// answered 204 and handled idempotently. A valid event about an order wakes that
/// order's saga.
pub(crate) async fn payment_webhook<S: Store>(
    State(app): State<AppState<S>>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let refuse = |reason: String| {
        ApiError::refused(
            ErrorCode::WebhookSignatureInvalid,
            "the webhook could not be verified",
            reason,
        )
    };
    let signature =
        h.get(tessera_payments::webhook::SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    let now_ms = app.clock.now_ms();
    let verified = tessera_payments::webhook::verify_delivery(
        app.config.payments.webhook_secret.expose(),
        signature,
        &body,
        now_ms / 1000,
        app.config.payments.webhook_tolerance_s,
    )
    .map_err(|e| refuse(format!("payment webhook: {e}")))?;
    let first = crate::webhooks::record_delivery(&app, &verified, now_ms)
        .await
        .map_err(ApiError::internal)?;
    if !first {
        return Err(refuse(format!("payment webhook: delivery {} replayed", verified.event.id)));
    }
    let event = verified.event;
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
