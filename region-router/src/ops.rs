//! The operator API on the router: inspect, drain and restore regions.
//!
//! - `GET  /v1/ops/regions` → [`RegionList`]
//! - `POST /v1/ops/regions/{region}/drain` (body [`DrainRequest`], optional) → [`RegionList`]
//! - `POST /v1/ops/regions/{region}/restore` → [`RegionList`]
//!
//! Every call needs `Authorization: Bearer <identity token>`: listing with the `viewer`
//! role (operators and admins have it), drain and restore with `operator`. 401
//! `unauthenticated` without a token, 401 `invalid_token`/`token_expired` for a bad one
//! (the log says which check failed, the caller is not told), 403 `forbidden` without the
//! role. A refused call changes nothing.

use std::sync::Arc;

use axum::extract::{Path, State};
use bytes::Bytes;
use http::HeaderMap;
use tessera_api::ops::{DrainRequest, RegionList, RegionMode};
use tessera_api::{ErrorCode, RegionId};
use tessera_identity::{IdentityClaims, ROLE_OPERATOR, ROLE_VIEWER, TokenError, bearer};
use tessera_runtime::{ApiError, Json};

use crate::control::{ChangeError, ModeEntry};
use crate::state::Shared;

/// Checks the caller's token and that it grants `role`.
pub(crate) async fn authorize(
    shared: &Shared,
    headers: &HeaderMap,
    role: &'static str,
) -> Result<IdentityClaims, ApiError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "operator calls need `Authorization: Bearer <token>`",
        ));
    };
    let Some(token) = value.to_str().ok().and_then(bearer) else {
        return Err(ApiError::refused(
            ErrorCode::Unauthenticated,
            "the Authorization header is not a bearer token",
            "authorization header is not a bearer token",
        ));
    };
    let now = shared.clock.now_ms();
    let claims = shared.verifier.verify(token, now).await.map_err(|e| {
        let reason = format!("operator token refused: {}", e.reason());
        match e {
            TokenError::Expired => {
                ApiError::refused(ErrorCode::TokenExpired, "the token has expired", reason)
            }
            _ => ApiError::refused(ErrorCode::InvalidToken, "the token is not valid", reason),
        }
    })?;
    if !claims.has_role(role) {
        return Err(ApiError::refused(
            ErrorCode::Forbidden,
            format!("this call needs the {role} role"),
            format!("caller lacks the {role} role"),
        ));
    }
    Ok(claims)
}

fn region_of(shared: &Shared, raw: &str) -> Result<RegionId, ApiError> {
    RegionId::parse(raw).ok().filter(|id| shared.slot(id).is_some()).ok_or_else(|| {
        ApiError::new(ErrorCode::UnknownRegion, format!("no region named {raw:?} is configured"))
    })
}

pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Json<RegionList>, ApiError> {
    authorize(&shared, &headers, ROLE_VIEWER).await?;
    Ok(Json(shared.region_list()))
}

/// Why a drain was refused.
#[derive(Debug)]
struct LastHealthy;

pub(crate) async fn drain(
    State(shared): State<Arc<Shared>>,
    Path(region): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RegionList>, ApiError> {
    let claims = authorize(&shared, &headers, ROLE_OPERATOR).await?;
    let region = region_of(&shared, &region)?;
    let request: DrainRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DrainRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(ErrorCode::InvalidRequest, format!("invalid drain request: {e}"))
        })?
    };
    let now = shared.clock.now_ms();
    let operator = claims.sub.to_string();
    let result = shared
        .control
        .change(|doc| {
            if doc.mode(&region) == RegionMode::Draining {
                return Ok(None);
            }
            if !request.force && shared.serving_regions_except(doc, &region) == 0 {
                return Err(LastHealthy);
            }
            let mut next = doc.clone();
            next.regions.insert(
                region.clone(),
                ModeEntry {
                    mode: RegionMode::Draining,
                    changed_at_ms: now,
                    changed_by: operator.clone(),
                },
            );
            Ok(Some(next))
        })
        .await;
    match result {
        Ok(doc) => {
            tracing::info!(region = %region, operator = %operator, force = request.force, version = doc.version, "router.region.drained");
            Ok(Json(shared.region_list()))
        }
        Err(ChangeError::Refused(LastHealthy)) => Err(ApiError::new(
            ErrorCode::LastHealthyRegion,
            format!(
                "{region} is the last healthy active region; draining it would leave no region to serve fans \
                 (repeat with force to drain it anyway)"
            ),
        )),
        Err(ChangeError::Unavailable(why)) => Err(ApiError::unavailable(format!(
            "the region state could not be replicated, nothing changed: {why}"
        ))),
    }
}

pub(crate) async fn restore(
    State(shared): State<Arc<Shared>>,
    Path(region): Path<String>,
    headers: HeaderMap,
) -> Result<Json<RegionList>, ApiError> {
    let claims = authorize(&shared, &headers, ROLE_OPERATOR).await?;
    let region = region_of(&shared, &region)?;
    let now = shared.clock.now_ms();
    let operator = claims.sub.to_string();
    let result = shared
        .control
        .change(|doc| {
            if doc.mode(&region) == RegionMode::Active {
                return Ok::<_, std::convert::Infallible>(None);
            }
            let mut next = doc.clone();
            next.regions.insert(
                region.clone(),
                ModeEntry {
                    mode: RegionMode::Active,
                    changed_at_ms: now,
                    changed_by: operator.clone(),
                },
            );
            Ok(Some(next))
        })
        .await;
    match result {
        Ok(doc) => {
            tracing::info!(region = %region, operator = %operator, version = doc.version, "router.region.restored");
            Ok(Json(shared.region_list()))
        }
        Err(ChangeError::Refused(never)) => match never {},
        Err(ChangeError::Unavailable(why)) => Err(ApiError::unavailable(format!(
            "the region state could not be replicated, nothing changed: {why}"
        ))),
    }
}
