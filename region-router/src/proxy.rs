//! Forwarding a request to a region, and failing over.
//!
//! The request body (at most `upstream.body_limit_bytes`) is buffered so that it can be
//! sent again; the response body streams through untouched (server-sent events included).
//!
//! When a region fails, the request moves to the next region in the ranking:
//! - a failed **connection** (refused, connect timeout) proves the region never saw the
//!   request, so every request moves on, whatever its method;
//! - a failure **after** the request may have arrived (reset, no answer in time, or a
//!   502/503/504 that is not a Tessera error about the request itself) moves on only
//!   for requests that are safe to repeat: GET, HEAD, PUT, DELETE, OPTIONS, or any
//!   request carrying an `Idempotency-Key`. Other requests get an error and the client
//!   decides.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use tessera_api::headers::{IDEMPOTENCY_KEY, SERVED_BY};
use tessera_api::{ApiErrorBody, ErrorCode, RegionId};
use tessera_runtime::ApiError;
use tracing::Instrument as _;

use crate::select::RouteHint;
use crate::state::Shared;

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Largest error body the router reads to decide whether a 502/503/504 is the region's
/// failure or an answer about the request.
const ERROR_PEEK_BYTES: usize = 64 * 1024;

/// Whether a request may be sent to a second region after the first may have seen it.
pub fn is_safe_to_repeat(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS)
        || headers.contains_key(IDEMPOTENCY_KEY)
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// How one attempt ended.
enum Attempt {
    /// A response to hand back (success, or an answer about the request itself).
    Done(Response),
    /// The region failed; `repeatable` says whether the request may have reached it.
    Failed { response: Option<Response>, delivered: bool, outcome: &'static str },
}

/// Forwards `req` to the best region, failing over as the rules above allow.
pub(crate) async fn forward(shared: Arc<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let limit = if parts.method == Method::POST && parts.uri.path() == "/v1/ops/events" {
        shared.cfg.upstream.seat_map_limit_bytes
    } else {
        shared.cfg.upstream.body_limit_bytes
    };
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return ApiError::new(
                ErrorCode::BodyTooLarge,
                format!("request body is larger than {limit} bytes"),
            )
            .into_response();
        }
        Err(_) => {
            return ApiError::new(ErrorCode::InvalidRequest, "failed to read the request body")
                .into_response();
        }
    };
    let repeatable = is_safe_to_repeat(&parts.method, &parts.headers);
    let hint = RouteHint::from_headers(&parts.headers);
    let order = shared.route(&hint);
    let client_ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let path_and_query =
        parts.uri.path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());

    let mut attempts = 0;
    let mut last_response: Option<Response> = None;
    let mut previous: Option<RegionId> = None;
    for region in order {
        if attempts >= shared.cfg.upstream.attempts_max {
            break;
        }
        if !shared.acquire(&region) {
            continue;
        }
        attempts += 1;
        if let Some(from) = &previous {
            metrics::counter!("tessera_router_failovers_total", "region" => from.to_string())
                .increment(1);
            tracing::info!(from = %from, to = %region, method = %parts.method, "router.failover");
        }
        let Some(slot) = shared.slot(&region) else { continue };
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        headers.remove(HOST);
        headers.remove(CONTENT_LENGTH);
        if let Some(ip) = client_ip
            && let Ok(v) = HeaderValue::from_str(&ip.to_string())
        {
            headers.append(HeaderName::from_static("x-forwarded-for"), v);
        }
        let uri = format!("{}{}", slot.url, path_and_query);
        let span = tracing::info_span!("router.forward", region = %region, attempt = attempts);
        let attempt = send(&shared, &region, parts.method.clone(), &uri, headers, body.clone())
            .instrument(span)
            .await;
        match attempt {
            Attempt::Done(mut resp) => {
                if let Ok(v) = HeaderValue::from_str(region.as_str()) {
                    resp.headers_mut().insert(SERVED_BY, v);
                }
                return resp;
            }
            Attempt::Failed { response, delivered, outcome } => {
                metrics::counter!("tessera_router_requests_total", "region" => region.to_string(), "outcome" => outcome)
                    .increment(1);
                let response = response.map(|mut r| {
                    if let Ok(v) = HeaderValue::from_str(region.as_str()) {
                        r.headers_mut().insert(SERVED_BY, v);
                    }
                    r
                });
                if delivered && !repeatable {
                    tracing::info!(region = %region, method = %parts.method, outcome, "router.not_retried");
                    return response.unwrap_or_else(|| {
                        ApiError::new(
                            ErrorCode::RegionUnavailable,
                            format!(
                                "region {region} failed while handling the request; its outcome is unknown \
                                 (send an Idempotency-Key to make such requests safe to retry)"
                            ),
                        )
                        .into_response()
                    });
                }
                if response.is_some() {
                    last_response = response;
                }
                previous = Some(region);
            }
        }
    }
    last_response.unwrap_or_else(|| {
        metrics::counter!("tessera_router_unroutable_total").increment(1);
        ApiError::new(ErrorCode::RegionUnavailable, "no region is available to serve the request")
            .into_response()
    })
}

async fn send(
    shared: &Shared,
    region: &RegionId,
    method: Method,
    uri: &str,
    mut headers: HeaderMap,
    body: Bytes,
) -> Attempt {
    tessera_runtime::telemetry::inject_headers(&mut headers);
    let mut builder = http::Request::builder().method(method).uri(uri);
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    let Ok(req) = builder.body(Full::new(body)) else {
        return Attempt::Failed { response: None, delivered: false, outcome: "bad_request" };
    };
    let started = tokio::time::Instant::now();
    let timeout = Duration::from_millis(shared.cfg.upstream.response_timeout_ms);
    let result = tokio::time::timeout(timeout, shared.client.request(req)).await;
    metrics::histogram!("tessera_router_upstream_seconds", "region" => region.to_string())
        .record(started.elapsed().as_secs_f64());
    match result {
        Err(_) => {
            shared.on_failure(region);
            Attempt::Failed { response: None, delivered: true, outcome: "timeout" }
        }
        Ok(Err(e)) if e.is_connect() => {
            tracing::info!(region = %region, "router.connect_failed: {e}");
            shared.on_connect_failure(region);
            Attempt::Failed { response: None, delivered: false, outcome: "connect_failed" }
        }
        Ok(Err(e)) => {
            tracing::info!(region = %region, "router.upstream_failed: {e}");
            shared.on_failure(region);
            Attempt::Failed { response: None, delivered: true, outcome: "reset" }
        }
        Ok(Ok(resp)) => {
            let (mut parts, incoming) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            if matches!(
                parts.status,
                StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            ) {
                let is_json = parts
                    .headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("application/json"));
                let bytes = match Limited::new(incoming, ERROR_PEEK_BYTES).collect().await {
                    Ok(c) => c.to_bytes(),
                    Err(_) => Bytes::new(),
                };
                let code = is_json
                    .then(|| serde_json::from_slice::<ApiErrorBody>(&bytes).ok())
                    .flatten()
                    .map(|b| b.code);
                let response = Response::from_parts(parts, Body::from(bytes));
                let region_failed = !matches!(
                    code,
                    Some(c) if !matches!(c, ErrorCode::Unavailable | ErrorCode::RegionUnavailable | ErrorCode::Timeout)
                );
                if region_failed {
                    shared.on_failure(region);
                    return Attempt::Failed {
                        response: Some(response),
                        delivered: true,
                        outcome: "unavailable",
                    };
                }
                shared.on_success(region);
                metrics::counter!("tessera_router_requests_total", "region" => region.to_string(), "outcome" => "ok")
                    .increment(1);
                return Attempt::Done(response);
            }
            shared.on_success(region);
            metrics::counter!("tessera_router_requests_total", "region" => region.to_string(), "outcome" => "ok")
                .increment(1);
            Attempt::Done(Response::from_parts(parts, Body::new(incoming)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_or_keyed_requests_are_repeated() {
        let none = HeaderMap::new();
        let mut keyed = HeaderMap::new();
        keyed.insert(IDEMPOTENCY_KEY, "k1".parse().unwrap());
        for m in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE, Method::OPTIONS] {
            assert!(is_safe_to_repeat(&m, &none), "{m}");
        }
        assert!(!is_safe_to_repeat(&Method::POST, &none));
        assert!(!is_safe_to_repeat(&Method::PATCH, &none));
        assert!(is_safe_to_repeat(&Method::POST, &keyed));
    }

    #[test]
    fn hop_by_hop_headers_do_not_cross_the_router() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("x-tessera-device", "d1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-tessera-device"]);
    }
}
