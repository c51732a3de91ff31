//! Helpers shared by Tessera's edge components: reading a request body with a size limit,
//! answering with the JSON error contract, and forwarding a request down the component
//! chain or to the region router (WASI HTTP outbound, so Spin's and the edge host's
//! allow-lists apply).
//!
//! It imports only WASI (no Spin key-value or variables), so the `validation` component
//! that uses it can also run under `wasmtime serve`.

#![allow(
    clippy::result_large_err,
    reason = "the error side is the HTTP response to send; boxing it only adds an allocation"
)]

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use spin_sdk::http::body::IncomingBodyExt as _;
use spin_sdk::http::{BoxBody, Request, Response, box_body};
use tessera_api::{ApiErrorBody, ErrorCode};

/// What components answer with.
pub type Reply = Response<BoxBody>;

/// Headers that only the edge itself may set: stripped from what fans send.
pub const INTERNAL_HEADERS: &[&str] = &[
    tessera_api::headers::BOT_SCORE,
    tessera_api::headers::STALE,
    SHADOW_HEADER,
    CLIENT_ADDR_HEADER_INTERNAL,
    VERDICT_HEADER,
    CACHE_HEADER,
    QUEUE_OUTCOME_HEADER,
];

/// Set by bot-score on queue joins from clients it sends to the shadow queue.
pub const SHADOW_HEADER: &str = "x-tessera-shadow";
/// The client address as the edge saw it, passed down the chain.
pub const CLIENT_ADDR_HEADER_INTERNAL: &str = "x-tessera-client-addr";
/// Spin's header carrying the client address on incoming requests.
pub const SPIN_CLIENT_ADDR: &str = "spin-client-addr";
/// Response headers the edge host turns into metrics (and strips).
pub const VERDICT_HEADER: &str = "x-tessera-bot-verdict";
pub const CACHE_HEADER: &str = "x-tessera-cache";
pub const QUEUE_OUTCOME_HEADER: &str = "x-tessera-queue-outcome";

/// A JSON response.
pub fn json(status: u16, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(box_body(Full::new(body.into())));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

/// An error response following the contract.
pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
    let body = ApiErrorBody::new(code, message);
    json(body.status(), body.to_json())
}

/// An error response from an already built body.
pub fn error_body(body: &ApiErrorBody) -> Reply {
    json(body.status(), body.to_json())
}

/// Reads a body, refusing more than `limit` bytes.
pub async fn read_body(
    headers: &http::HeaderMap,
    body: spin_sdk::wasip3::http_compat::IncomingRequestBody,
    limit: usize,
) -> Result<Bytes, Reply> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(error(ErrorCode::BodyTooLarge, "request body is too large"));
    }
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(error(ErrorCode::BodyTooLarge, "request body is too large"))
        }
        Err(_) => Err(error(ErrorCode::InvalidRequest, "failed to read request body")),
    }
}

/// Reads a whole response body (for bodies the edge caches or inspects).
pub async fn read_response(resp: Response) -> Result<(http::response::Parts, Bytes), String> {
    let (parts, body) = resp.into_parts();
    let bytes = body.bytes().await.map_err(|e| format!("read upstream body: {e:?}"))?;
    Ok((parts, bytes))
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "host",
    "content-length",
];

/// Copies end-to-end headers.
pub fn copy_headers(from: &http::HeaderMap, to: &mut http::HeaderMap) {
    for (k, v) in from {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            to.append(k.clone(), v.clone());
        }
    }
}

/// Builds the request that goes to `base` (`http://bot-score.spin.internal` or the router).
pub fn outbound(
    parts: &http::request::Parts,
    body: Bytes,
    base: &str,
) -> Result<http::Request<Full<Bytes>>, Reply> {
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{}", base.trim_end_matches('/'), pq);
    let mut req = http::Request::new(Full::new(body));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() =
        url.parse().map_err(|_| error(ErrorCode::Internal, "edge misconfigured: bad next hop"))?;
    copy_headers(&parts.headers, req.headers_mut());
    Ok(req)
}

/// Sends a request on and relays the answer (streamed). Upstream failures become
/// `503 region_unavailable`.
pub async fn send(req: http::Request<Full<Bytes>>) -> Reply {
    match spin_sdk::http::send(req).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            Response::from_parts(parts, box_body(body))
        }
        Err(e) => error(ErrorCode::RegionUnavailable, format!("region unreachable: {e}")),
    }
}

/// Sends a request on; `Err` carries a transport failure (for callers with a fallback).
pub async fn try_send(req: http::Request<Full<Bytes>>) -> Result<Response, String> {
    spin_sdk::http::send(req).await.map_err(|e| e.to_string())
}

/// Relays a response whose body was already read.
pub fn from_parts(parts: http::response::Parts, body: Bytes) -> Reply {
    Response::from_parts(parts, box_body(Full::new(body)))
}

/// Forwards a request to `base`.
pub async fn forward(parts: &http::request::Parts, body: Bytes, base: &str) -> Reply {
    match outbound(parts, body, base) {
        Ok(req) => send(req).await,
        Err(reply) => reply,
    }
}

/// The request as a [`tessera_edge_logic::RequestView`]-ready list of headers.
pub fn header_list(headers: &http::HeaderMap) -> Vec<(&str, &[u8])> {
    headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect()
}

/// Milliseconds since the Unix epoch (the component's clock is the host's).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A header's value as text.
pub fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Splits a request into parts and its fully read body (already bounded by `validation`).
pub async fn split(req: Request, limit: usize) -> Result<(http::request::Parts, Bytes), Reply> {
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body, limit).await?;
    Ok((parts, body))
}

/// Sets a header from a static name and a text value (ignores values that are not valid).
pub fn set_header(headers: &mut http::HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = http::HeaderValue::from_str(value) {
        headers.insert(http::HeaderName::from_static(name), v);
    }
}
