//! Helpers shared by Tessera's edge components: reading a request body with a size limit,
//! answering with the JSON error contract, and the edge's header contract, which the
//! components keep themselves so that it holds on any host (`spin up` or `tessera-edge`):
//!
//! - hop-by-hop headers (`connection` and what it names, `keep-alive`, `transfer-encoding`,
//!   `te`, `trailer`, `upgrade`, `proxy-*`) are never copied into a response or into a
//!   forwarded request;
//! - headers only the edge may set (`x-tessera-bot-score`, ...) are dropped from what fans
//!   send, and the edge's own reporting headers never reach a fan;
//! - host-specific request headers (`spin-*`) are not forwarded;
//! - every request to the region router carries the edge's PoP (`x-tessera-pop`) and a W3C
//!   `traceparent`, continued from the fan's or started here.
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

/// Request headers that only the edge itself may set: dropped from what fans send, so a
/// value arriving from outside is never trusted.
pub const INTERNAL_HEADERS: &[&str] = &[
    tessera_api::headers::BOT_SCORE,
    tessera_api::headers::EDGE_POP,
    tessera_api::headers::STALE,
    tessera_api::headers::SERVICE_CREDENTIAL,
];

/// Headers that describe the edge's or the region's internals and never reach a fan, even
/// when a region's reply carries them.
pub const NEVER_TO_FANS: &[&str] = &[
    tessera_api::headers::BOT_SCORE,
    tessera_api::headers::EDGE_POP,
    "x-tessera-bot-verdict",
    "x-tessera-cache",
    "x-tessera-queue-outcome",
];
/// Spin's header carrying the client address on incoming requests (the project's host
/// sets it too).
pub const SPIN_CLIENT_ADDR: &str = "spin-client-addr";

/// Hop-by-hop headers (RFC 9110 section 7.6.1): they describe one connection, never the
/// message, so a proxy must not pass them on. `proxy-*` is matched by prefix.
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"];

/// Whether `name` (lowercase) is hop-by-hop, including names listed in `connection`.
pub fn is_hop_by_hop(name: &str, connection: Option<&str>) -> bool {
    HOP_BY_HOP.contains(&name)
        || name.starts_with("proxy-")
        || connection.is_some_and(|c| c.split(',').any(|t| t.trim().eq_ignore_ascii_case(name)))
}

/// Whether `name` is a header a host adds for its own purposes (`spin-full-url`, ...).
pub fn is_host_specific(name: &str) -> bool {
    name.starts_with("spin-")
}

/// Whether `name` is one of the request headers only the edge sets.
pub fn is_internal(name: &str) -> bool {
    INTERNAL_HEADERS.contains(&name)
}

/// Removes headers a fan may not set and headers that are hop-by-hop.
pub fn strip_ingress(headers: &mut http::HeaderMap) {
    let connection = header(headers, "connection").map(str::to_owned);
    let drop: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| is_internal(k.as_str()) || is_hop_by_hop(k.as_str(), connection.as_deref()))
        .cloned()
        .collect();
    for k in drop {
        headers.remove(k);
    }
}

/// Makes a response fit to leave the edge: no hop-by-hop headers and none of the edge's
/// internal headers (a router reply that carries them is not trusted either).
pub fn clean_response(mut reply: Reply) -> Reply {
    let headers = reply.headers_mut();
    let connection = header(headers, "connection").map(str::to_owned);
    let drop: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            is_hop_by_hop(k, connection.as_deref())
                || NEVER_TO_FANS.contains(&k)
                || is_host_specific(k)
        })
        .cloned()
        .collect();
    for k in drop {
        headers.remove(k);
    }
    reply
}

/// The largest response head the edge relays from a region: beyond it the reply is
/// refused with `503 region_unavailable` (the same on every host, whatever its own limits).
pub const UPSTREAM_HEADER_VALUE_MAX_BYTES: usize = 8 * 1024;
pub const UPSTREAM_HEADERS_MAX_BYTES: usize = 32 * 1024;

fn oversized(headers: &http::HeaderMap) -> bool {
    let mut total = 0usize;
    for (k, v) in headers {
        if v.len() > UPSTREAM_HEADER_VALUE_MAX_BYTES {
            return true;
        }
        total += k.as_str().len() + v.len();
    }
    total > UPSTREAM_HEADERS_MAX_BYTES
}

fn oversized_reply() -> Reply {
    error(ErrorCode::RegionUnavailable, "the region sent an oversized response head")
}

/// A JSON response.
pub fn json(status: u16, body: impl Into<Bytes>) -> Reply {
    let body = body.into();
    let len = body.len();
    let mut r = Response::new(box_body(Full::new(body)));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    let h = r.headers_mut();
    h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    r
}

/// An error response following the contract. Every error the edge makes itself passes
/// here or through [`error_body`], which mark it with its code (see [`refusal`]).
pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
    error_body(&ApiErrorBody::new(code, message))
}

/// An error response from an already built body.
pub fn error_body(body: &ApiErrorBody) -> Reply {
    let mut reply = json(body.status(), body.to_json());
    reply
        .extensions_mut()
        .insert(Refusal { label: body.code.as_str(), reason: body.message.clone() });
    reply
}

/// The mark of an error the edge made itself (never of a region's reply passed on): the
/// label it is counted under and the reason it gave.
#[derive(Debug, Clone)]
struct Refusal {
    label: &'static str,
    reason: String,
}

/// The label to count `reply` under as a refusal, and its reason: its code when the edge
/// itself refused the request (a 4xx it made), `None` for anything else (a region's
/// answers included).
pub fn refusal(reply: &Reply) -> Option<(&'static str, &str)> {
    let r = reply.extensions().get::<Refusal>()?;
    reply.status().is_client_error().then_some((r.label, r.reason.as_str()))
}

/// Counts `reply` under `label` instead of its code (a refusal that must look like
/// another to the client, such as a route that exists only on a local stack).
pub fn relabel(mut reply: Reply, label: &'static str) -> Reply {
    let reason = reply.extensions_mut().remove::<Refusal>().map(|r| r.reason).unwrap_or_default();
    reply.extensions_mut().insert(Refusal { label, reason });
    reply
}

/// Reports a refusal on standard error as one JSON line, `{"refusal":<label>,"status":<n>,
/// "reason":<text>,"path":<path>}`: Tessera's host logs it at WARN (at most once a second per label,
/// with a count of the ones it left out) and Spin writes it to the component's log. The
/// reason is the edge's own message with every quoted part left out: a parser's message
/// quotes what it read (`invalid type: string "...", expected u32`), which may be an email
/// or a token.
pub fn report_refusal(label: &str, status: u16, reason: &str, path: &str) {
    let reason = without_quoted(reason);
    // The path names what was asked for (ids, no secrets: tokens travel in headers); the
    // query is left out.
    let path: String = path.chars().take(160).collect();
    let line =
        serde_json::json!({"refusal": label, "status": status, "reason": reason, "path": path});
    eprintln!("{line}");
}

/// `text` with what is between double quotes or backticks replaced by `…`.
fn without_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut open: Option<char> = None;
    for c in text.chars() {
        match open {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if c == '"' || c == '`' {
                    open = Some(c);
                }
            }
        }
    }
    if open.is_some() {
        out.push('…');
    }
    out
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

/// What every request leaving the edge for a region carries besides the fan's headers.
#[derive(Debug, Clone, Default)]
pub struct Upstream {
    /// The region router's origin (`http://host:port`).
    pub base: String,
    /// This edge's point of presence.
    pub pop: String,
    /// The W3C `traceparent` to send (see [`traceparent`]).
    pub traceparent: String,
}

/// Copies the end-to-end headers of a fan's request onto a request to the region: not
/// hop-by-hop, not host-specific, no `host` or `content-length` (set for the new message),
/// no fan-sent trace context (replaced by the edge's).
pub fn copy_request_headers(from: &http::HeaderMap, to: &mut http::HeaderMap) {
    let connection = header(from, "connection");
    for (k, v) in from {
        let name = k.as_str();
        if is_hop_by_hop(name, connection)
            || is_host_specific(name)
            || matches!(name, "host" | "content-length" | "traceparent")
        {
            continue;
        }
        to.append(k.clone(), v.clone());
    }
}

/// Builds the request that goes to the region router.
pub fn outbound(
    parts: &http::request::Parts,
    body: Bytes,
    up: &Upstream,
) -> Result<http::Request<Full<Bytes>>, Reply> {
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{}", up.base.trim_end_matches('/'), pq);
    let mut req = http::Request::new(Full::new(body));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = url
        .parse()
        .map_err(|_| error(ErrorCode::Internal, "edge misconfigured: bad router_url"))?;
    copy_request_headers(&parts.headers, req.headers_mut());
    stamp(req.headers_mut(), up);
    Ok(req)
}

/// Adds the edge's PoP and trace context to a request for the region.
pub fn stamp(headers: &mut http::HeaderMap, up: &Upstream) {
    if !up.pop.is_empty() {
        set_header(headers, tessera_api::headers::EDGE_POP, &up.pop);
    }
    set_header(headers, "traceparent", &up.traceparent);
}

/// Sends a request on and relays the answer (streamed, cleaned). Upstream failures
/// become `503 region_unavailable`.
pub async fn send(req: http::Request<Full<Bytes>>) -> Reply {
    match spin_sdk::http::send(req).await {
        Ok(resp) if oversized(resp.headers()) => oversized_reply(),
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            clean_response(Response::from_parts(parts, box_body(body)))
        }
        Err(e) => error(ErrorCode::RegionUnavailable, format!("region unreachable: {e}")),
    }
}

/// Sends a request on; `Err` carries a transport failure (for callers with a fallback).
pub async fn try_send(req: http::Request<Full<Bytes>>) -> Result<Response, String> {
    spin_sdk::http::send(req).await.map_err(|e| e.to_string())
}

/// Relays a response whose body was already read (cleaned).
pub fn from_parts(parts: http::response::Parts, body: Bytes) -> Reply {
    if oversized(&parts.headers) {
        return oversized_reply();
    }
    clean_response(Response::from_parts(parts, box_body(Full::new(body))))
}

/// Forwards a request to the region router.
pub async fn forward(parts: &http::request::Parts, body: Bytes, up: &Upstream) -> Reply {
    match outbound(parts, body, up) {
        Ok(req) => send(req).await,
        Err(reply) => reply,
    }
}

/// The W3C `traceparent` for requests this edge makes: the fan's trace continued when the
/// incoming header is valid (version 00, non-zero ids; the parent stays the caller's span,
/// since a component records no span of its own), or a new sampled trace from `random`
/// (24 bytes: trace id then span id).
pub fn traceparent(incoming: Option<&str>, random: &[u8]) -> String {
    if let Some(tp) = incoming.map(str::trim).filter(|tp| valid_traceparent(tp)) {
        return tp.to_owned();
    }
    let mut bytes = [0u8; 24];
    let n = random.len().min(24);
    bytes[..n].copy_from_slice(&random[..n]);
    // All-zero ids are invalid; make sure neither is.
    bytes[15] |= 1;
    bytes[23] |= 1;
    format!("00-{}-{}-01", hex(&bytes[..16]), hex(&bytes[16..]))
}

fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 15) as usize] as char);
    }
    s
}

/// `00-<32 hex>-<16 hex>-<2 hex>` with non-zero ids and lowercase hex.
pub fn valid_traceparent(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let lower_hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    matches!(parts.as_slice(), [v, t, p, f]
        if *v == "00" && lower_hex(t, 32) && lower_hex(p, 16) && lower_hex(f, 2)
            && t.bytes().any(|b| b != b'0') && p.bytes().any(|b| b != b'0'))
}

/// The request as a [`tessera_edge_logic::RequestView`]-ready list of the fan's headers
/// (host-specific `spin-*` headers are not the fan's and are not counted).
pub fn header_list(headers: &http::HeaderMap) -> Vec<(&str, &[u8])> {
    headers
        .iter()
        .filter(|(k, _)| !is_host_specific(k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect()
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

/// Splits a request into parts and its fully read body.
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

/// Random bytes from the host (WASI `random`).
pub fn random_bytes(n: u64) -> Vec<u8> {
    spin_sdk::wasip3::random::random::get_random_bytes(n)
}

#[cfg(test)]
mod tests {
    use super::without_quoted;

    #[test]
    fn a_reported_reason_keeps_no_quoted_input() {
        assert_eq!(
            without_quoted(r#"invalid type: string "fan@example.com", expected u32 at line 1"#),
            r#"invalid type: string "…", expected u32 at line 1"#
        );
        assert_eq!(without_quoted("header `x-secret` is too long"), "header `…` is too long");
        assert_eq!(without_quoted(r#"cut "eyJhbGciOi"#), r#"cut "…"#);
        assert_eq!(without_quoted("no such route"), "no such route");
    }
}
