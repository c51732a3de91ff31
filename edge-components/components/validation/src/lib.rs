//! The edge's request validation on its own: checks a request against the route table,
//! its typed schema and the size limits, exactly as the `edge` component's first stage
//! does, and answers `200 {"valid":true,"route":..}` or the `{"code","message"}` error.
//!
//! It imports only WASI (no Spin key-value or variables), so the same file runs on the
//! project's host and under `wasmtime serve`: `cargo xtask bench edge` uses it to compare
//! the two hosts on identical work.

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
    guest::strip_ingress(&mut parts.headers);
    let headers = guest::header_list(&parts.headers);
    let view = RequestView {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &headers,
        body: &body,
    };
    Ok(match validate(&view, &limits) {
        Ok(route) => {
            let answer = serde_json::json!({ "valid": true, "route": route.name() });
            guest::json(200, answer.to_string())
        }
        Err(e) => guest::error_body(&e),
    })
}
