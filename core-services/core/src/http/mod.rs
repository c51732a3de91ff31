//! The core's HTTP API (axum). Every route, its auth and its errors:
//!
//! | route | who |
//! |---|---|
//! | `GET /v1/events`, `/v1/events/{id}`, `/availability`, `/sections/{sid}/seats`, `/admission` | anyone |
//! | `POST /v1/events/{id}/holds`, `GET`/`DELETE /v1/holds/{id}` | fan (+ admission token) |
//! | `POST /v1/orders`, `GET /v1/orders`, `GET /v1/orders/{id}` | fan |
//! | `POST /v1/checkin` | gate or operator |
//! | `POST /v1/internal/events/{id}/queue` | edge, on behalf of a fan |
//! | `/v1/ops/...` | operator |
//! | `POST /v1/dev/token` | anyone, only with the development issuer on |
//! | `POST /v1/webhooks/payments` | the payment provider (signed) |
//! | `GET /healthz` (ready: the store answers), `GET /livez` (the process serves), `GET /metrics` | probes |

mod catalog;
mod misc;
mod ops;
mod sales;

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::{get, post, put};
use tessera_api::{CustomerId, ErrorCode};
use tessera_identity::{IdentityClaims, ROLE_GATE, ROLE_OPERATOR, TokenError};
use tessera_inventory::InventoryError;
use tessera_orders::OrderError;
use tessera_runtime::ApiError;
use tessera_store::Store;

use crate::App;

pub(crate) type AppState<S> = Arc<App<S>>;

/// The core's router over `app`, with the shared layers (errors, spans, metrics, limits).
pub fn router<S: Store>(app: Arc<App<S>>, extra: Router) -> Router {
    let limit = app.config.body_limit_bytes;
    let api = Router::new()
        .route("/healthz", get(misc::health::<S>))
        .route("/livez", get(misc::live))
        .route("/v1/events", get(catalog::list::<S>))
        .route("/v1/events/{event_id}", get(catalog::detail::<S>))
        .route("/v1/events/{event_id}/availability", get(catalog::availability::<S>))
        .route(
            "/v1/events/{event_id}/sections/{section_id}/seats",
            get(catalog::section_seats::<S>),
        )
        .route("/v1/events/{event_id}/admission", get(misc::admission::<S>))
        .route("/v1/events/{event_id}/holds", post(sales::hold::<S>))
        .route("/v1/holds/{hold_id}", get(sales::get_hold::<S>).delete(sales::release::<S>))
        .route("/v1/orders", post(sales::checkout::<S>).get(sales::list_orders::<S>))
        .route("/v1/orders/{order_id}", get(sales::get_order::<S>))
        .route("/v1/checkin", post(sales::checkin::<S>))
        .route("/v1/internal/events/{event_id}/queue", post(misc::register::<S>))
        .route("/v1/ops/events", post(ops::create_event::<S>))
        .route("/v1/ops/events/{event_id}/{action}", post(ops::sale_action::<S>))
        .route("/v1/ops/events/{event_id}/admission", put(ops::admission_rate::<S>))
        .route("/v1/ops/orders/{order_id}/refund", post(ops::refund::<S>))
        .route("/v1/dev/token", post(misc::dev_token::<S>))
        .route("/v1/webhooks/payments", post(misc::payment_webhook::<S>))
        .with_state(app)
        .merge(extra);
    tessera_runtime::http::with_common_layers("core", api, limit)
}

/// The verified identity of the caller.
pub(crate) fn authenticate<S: Store>(
    app: &App<S>,
    headers: &HeaderMap,
) -> Result<IdentityClaims, ApiError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "an `Authorization: Bearer <token>` header is required",
        ));
    };
    let Some(token) = tessera_identity::bearer(value) else {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "the Authorization header must be `Bearer <token>`",
        ));
    };
    app.identity.verify(token, app.clock.now_ms()).map_err(token_error)
}

pub(crate) fn token_error(e: TokenError) -> ApiError {
    match e {
        TokenError::Expired => {
            ApiError::new(ErrorCode::TokenExpired, "the identity token has expired")
        }
        TokenError::MissingRole => ApiError::new(ErrorCode::Forbidden, "this needs another role"),
        e => ApiError::new(ErrorCode::InvalidToken, format!("the identity token is invalid: {e}")),
    }
}

/// The caller, who must be a fan (any authenticated customer).
pub(crate) fn fan<S: Store>(app: &App<S>, headers: &HeaderMap) -> Result<CustomerId, ApiError> {
    Ok(authenticate(app, headers)?.sub)
}

/// The caller, who must hold the operator role.
pub(crate) fn operator<S: Store>(
    app: &App<S>,
    headers: &HeaderMap,
) -> Result<IdentityClaims, ApiError> {
    let claims = authenticate(app, headers)?;
    if !claims.has_role(ROLE_OPERATOR) {
        return Err(ApiError::new(ErrorCode::Forbidden, "this needs the operator role"));
    }
    Ok(claims)
}

pub(crate) fn gate<S: Store>(
    app: &App<S>,
    headers: &HeaderMap,
) -> Result<IdentityClaims, ApiError> {
    let claims = authenticate(app, headers)?;
    if !claims.has_role(ROLE_GATE) && !claims.has_role(ROLE_OPERATOR) {
        return Err(ApiError::new(ErrorCode::Forbidden, "this needs the gate role"));
    }
    Ok(claims)
}

pub(crate) fn inventory_error(e: InventoryError) -> ApiError {
    if e.is_client_error() {
        ApiError::new(e.code(), e.to_string())
    } else {
        ApiError::internal(anyhow::Error::new(e))
    }
}

pub(crate) fn order_error(e: OrderError) -> ApiError {
    if e.is_client_error() {
        ApiError::new(e.code(), e.to_string())
    } else if matches!(e, OrderError::Provider(_)) {
        tracing::warn!("payment provider failed: {e:#}");
        ApiError::new(ErrorCode::PaymentFailed, "the payment provider failed; nothing was charged")
    } else {
        ApiError::internal(anyhow::Error::new(e))
    }
}

/// Parses an id from the path, answering `code` (404) when it cannot exist.
pub(crate) fn path_id<T>(
    raw: &str,
    parse: impl Fn(&str) -> Result<T, tessera_api::ids::InvalidId>,
    code: ErrorCode,
    what: &str,
) -> Result<T, ApiError> {
    parse(raw).map_err(|_| ApiError::new(code, format!("no {what} {raw:?}")))
}
