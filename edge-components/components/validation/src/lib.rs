//! The public entry of the edge: checks every request against the route table and its
//! typed schema and size limits, strips headers only the edge may set, and passes valid
//! requests to the next hop named by the `TESSERA_NEXT_HOP` environment variable
//! (`http://bot-score.spin.internal`). With no next hop it answers
//! `200 {"valid":true,"route":..}` itself (used to compare hosts under `wasmtime serve`).
//!
//! It imports only WASI: no Spin key-value or variables.

#![allow(
    clippy::result_large_err,
    reason = "the error side is the HTTP response to send; boxing it only adds an allocation"
)]

use spin_sdk::http::Request;
use spin_sdk::http_service;
use tessera_edge_guest as guest;
use tessera_edge_logic::{Limits, RequestView, validate};

#[http_service]
async fn handle(req: Request) -> Result<guest::Reply, spin_sdk::http::Error> {
    let limits = Limits::default();
    let (mut parts, body) = match guest::split(req, limits.body_max_bytes).await {
        Ok(v) => v,
        Err(reply) => return Ok(reply),
    };
    // Whatever a fan sends in the edge's own headers is dropped; the client address is
    // carried on under the edge's name (Spin sets `spin-client-addr`, so does the host).
    for name in guest::INTERNAL_HEADERS {
        parts.headers.remove(*name);
    }
    if let Some(addr) = parts.headers.get(guest::SPIN_CLIENT_ADDR).cloned() {
        parts
            .headers
            .insert(http::HeaderName::from_static(guest::CLIENT_ADDR_HEADER_INTERNAL), addr);
    }
    let headers = guest::header_list(&parts.headers);
    let view = RequestView {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &headers,
        body: &body,
    };
    let route = match validate(&view, &limits) {
        Ok(route) => route,
        Err(e) => return Ok(guest::error_body(&e)),
    };
    drop(headers);
    match std::env::var("TESSERA_NEXT_HOP") {
        Ok(next) if !next.is_empty() => Ok(guest::forward(&parts, body, &next).await),
        _ => {
            let answer = serde_json::json!({ "valid": true, "route": route.name() });
            Ok(guest::json(200, answer.to_string()))
        }
    }
}
