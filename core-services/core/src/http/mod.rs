//! The core's HTTP API (axum). Every route, its auth and its errors:
//!
//! | route | who |
//! |---|---|
//! | `GET /v1/events`, `/v1/events/{id}`, `/availability`, `/sections/{sid}/seats`, `/admission` | anyone |
//! | `POST /v1/events/{id}/holds`, `GET`/`DELETE /v1/holds/{id}` | fan (+ an admission token, used once) |
//! | `POST /v1/orders`, `GET /v1/orders`, `GET /v1/orders/{id}` | fan |
//! | `GET /v1/orders/{id}/tickets/{tid}/qr.svg` (the ticket's QR code, SVG) | fan |
//! | `POST /v1/checkin` | gate (or admin) |
//! | `POST /v1/internal/events/{id}/queue`, `.../queue/waiting-list`, `.../queue/leave` | a service credential (the edge), on behalf of a fan |
//! | `/v1/ops/...` | operator; refunds: admin |
//! | `POST /v1/dev/token`, `GET /v1/dev/.well-known/openid-configuration`, `/v1/dev/jwks` | anyone, local mode only (the development issuer) |
//! | `POST /v1/webhooks/payments` | the payment provider (signed, each delivery once) |
//! | `GET /healthz` (ready: the store answers), `GET /livez` (the process serves), `GET /metrics` | probes |
//!
//! Roles come from the identity token (`tessera_identity::ROLES`); `admin` includes
//! `operator`, `viewer` and `gate`. Security refusals are logged once at WARN with their
//! reason and counted in `tessera_http_refusals_total{code}`; the caller gets the code and
//! a message that does not say which check failed.

mod catalog;
mod misc;
mod ops;
mod sales;

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::{get, post, put};
use tessera_api::{CustomerId, ErrorCode};
use tessera_identity::{
    IdentityClaims, ROLE_ADMIN, ROLE_FAN, ROLE_GATE, ROLE_OPERATOR, TokenError,
};
use tessera_inventory::InventoryError;
use tessera_orders::OrderError;
use tessera_runtime::ApiError;
use tessera_runtime::config::Mode;
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
        .route("/v1/orders/{order_id}/tickets/{ticket_id}/qr.svg", get(sales::ticket_qr::<S>))
        .route("/v1/checkin", post(sales::checkin::<S>))
        .route("/v1/internal/events/{event_id}/queue", post(misc::register::<S>))
        .route("/v1/internal/events/{event_id}/queue/waiting-list", post(misc::waiting_list::<S>))
        .route("/v1/internal/events/{event_id}/queue/leave", post(misc::leave::<S>))
        .route(
            "/v1/ops/events",
            post(ops::create_event::<S>)
                .layer(axum::extract::DefaultBodyLimit::max(app.config.seat_map_limit_bytes)),
        )
        .route("/v1/ops/events/{event_id}/{action}", post(ops::sale_action::<S>))
        .route("/v1/ops/events/{event_id}/admission", put(ops::admission_rate::<S>))
        .route("/v1/ops/orders/{order_id}/refund", post(ops::refund::<S>))
        .route("/v1/webhooks/payments", post(misc::payment_webhook::<S>));
    // The development issuer and its routes exist only in local mode (`App::build`
    // leaves `dev_issuer` empty otherwise): production answers 404 as for any path.
    let api = if app.dev_issuer.is_some() {
        api.route("/v1/dev/token", post(misc::dev_token::<S>))
            .route("/v1/dev/.well-known/openid-configuration", get(misc::dev_discovery::<S>))
            .route("/v1/dev/jwks", get(misc::dev_jwks::<S>))
    } else {
        api
    };
    let api = api.with_state(app).merge(extra);
    tessera_runtime::http::with_common_layers("core", api, limit)
}

/// The verified identity of the caller. Every failure answers `unauthenticated`,
/// `token_expired` or `invalid_token` without saying which check failed; the log says.
pub(crate) async fn authenticate<S: Store>(
    app: &App<S>,
    headers: &HeaderMap,
) -> Result<IdentityClaims, ApiError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "an `Authorization: Bearer <token>` header is required",
        ));
    };
    let Some(token) = value.to_str().ok().and_then(tessera_identity::bearer) else {
        return Err(ApiError::refused(
            ErrorCode::Unauthenticated,
            "the Authorization header must be `Bearer <token>`",
            "authorization header is not a bearer token",
        ));
    };
    app.identity.verify(token, app.clock.now_ms()).await.map_err(token_error)
}

pub(crate) fn token_error(e: TokenError) -> ApiError {
    let reason = format!("identity token refused: {}", e.reason());
    match e {
        TokenError::Expired => {
            ApiError::refused(ErrorCode::TokenExpired, "the identity token has expired", reason)
        }
        TokenError::MissingRole => ApiError::refused(ErrorCode::Forbidden, "forbidden", reason),
        _ => ApiError::refused(ErrorCode::InvalidToken, "the identity token is invalid", reason),
    }
}

/// The caller, who must hold `role`.
pub(crate) async fn with_role<S: Store>(
    app: &App<S>,
    headers: &HeaderMap,
    role: &'static str,
) -> Result<IdentityClaims, ApiError> {
    let claims = authenticate(app, headers).await?;
    if !claims.has_role(role) {
        return Err(ApiError::refused(
            ErrorCode::Forbidden,
            "this needs another role",
            format!("caller lacks the {role} role"),
        ));
    }
    Ok(claims)
}

/// The caller, who must be a fan.
pub(crate) async fn fan<S: Store>(
    app: &App<S>,
    headers: &HeaderMap,
) -> Result<CustomerId, ApiError> {
    Ok(with_role(app, headers, ROLE_FAN).await?.sub)
}

/// The caller, who must hold the operator role.
pub(crate) async fn operator<S: Store>(
    app: &App<S>,
    headers: &HeaderMap,
) -> Result<IdentityClaims, ApiError> {
    with_role(app, headers, ROLE_OPERATOR).await
}

/// The caller, who must hold the admin role (refunds move money back).
pub(crate) async fn admin<S: Store>(
    app: &App<S>,
    headers: &HeaderMap,
) -> Result<IdentityClaims, ApiError> {
    with_role(app, headers, ROLE_ADMIN).await
}

/// A gate (or someone whose role includes scanning tickets).
pub(crate) async fn gate<S: Store>(
    app: &App<S>,
    headers: &HeaderMap,
) -> Result<IdentityClaims, ApiError> {
    with_role(app, headers, ROLE_GATE).await
}

/// The calling service, for `/v1/internal/...`: `x-tessera-service` must carry one of
/// `service_credentials` (compared in constant time). A fan's token is never enough.
pub(crate) fn service<S: Store>(app: &App<S>, headers: &HeaderMap) -> Result<String, ApiError> {
    if app.config.service_credentials.is_empty() && app.config.mode == Mode::Local {
        // A local stack that configures no credentials (production refuses an empty
        // table): internal endpoints stay reachable for the development tools.
        return Ok("local".to_owned());
    }
    let presented =
        headers.get(tessera_api::headers::SERVICE_CREDENTIAL).and_then(|v| v.to_str().ok());
    let Some(presented) = presented else {
        return Err(ApiError::refused(
            ErrorCode::Forbidden,
            "this endpoint is for Tessera's services",
            "internal endpoint called without a service credential",
        ));
    };
    // Every credential is compared, so the time taken does not tell which one was close.
    let mut found = None;
    for (name, secret) in &app.config.service_credentials {
        if tessera_runtime::config::constant_time_eq(secret.expose(), presented.trim()) {
            found = Some(name.clone());
        }
    }
    found.ok_or_else(|| {
        ApiError::refused(
            ErrorCode::Forbidden,
            "this endpoint is for Tessera's services",
            "internal endpoint called with an unknown service credential",
        )
    })
}

pub(crate) fn inventory_error(e: InventoryError) -> ApiError {
    if e.code() == ErrorCode::HoldForeign {
        // A fan reaching for another's hold: a refusal, logged and counted.
        ApiError::refused(e.code(), e.to_string(), "the hold belongs to another customer")
    } else if e.is_client_error() {
        ApiError::new(e.code(), e.to_string())
    } else {
        ApiError::internal(anyhow::Error::new(e))
    }
}

pub(crate) fn order_error(e: OrderError) -> ApiError {
    if let OrderError::Inventory(inner) = e {
        return inventory_error(inner);
    }
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
