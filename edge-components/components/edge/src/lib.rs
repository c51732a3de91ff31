//! Tessera's edge as one Spin component. Every fan request runs the whole pipeline in one
//! fresh instance:
//!
//! ```text
//! validation ─> bot scoring ─┬─> catalog cache ─> region router   (catalog reads)
//!                            ├─> waiting room  ─> region router   (queue, holds)
//!                            └──────────────────> region router   (everything else)
//! ```
//!
//! The stages are plain functions over the request already read and parsed, so a request
//! is read once, validated once and never re-serialised between stages; the edge keeps
//! its header contract itself ([`tessera_edge_guest`]), so it holds under `spin up` as
//! under the project's host. What the stages decide lives in `tessera-edge-logic` and
//! `tessera-queue` (pure, tested natively); this crate is the I/O around them: key-value,
//! variables, outbound HTTP.

#![allow(
    clippy::result_large_err,
    reason = "the error side is the HTTP response to send; boxing it only adds an allocation"
)]

mod bot;
mod catalog;
mod ctx;
mod waiting_room;

use spin_sdk::http::Request;
use spin_sdk::http_service;
use tessera_api::ErrorCode;
use tessera_edge_guest as guest;
use tessera_edge_logic::routes::{Route, Stage};
use tessera_edge_logic::{Limits, RequestView, validate};

use crate::ctx::Ctx;

#[http_service]
async fn handle(req: Request) -> Result<guest::Reply, spin_sdk::http::Error> {
    let path = req.uri().path().to_owned();
    let reply = pipeline(req).await;
    // Every refusal the edge makes is counted and reported here, by its code, whichever
    // stage made it.
    if let Some((label, reason)) = guest::refusal(&reply) {
        ctx::count_refusal(label);
        guest::report_refusal(label, reply.status().as_u16(), reason, &path);
    }
    Ok(guest::clean_response(reply))
}

async fn pipeline(req: Request) -> guest::Reply {
    let limits = Limits::default();
    let (mut parts, body) = match guest::split(req, limits.body_max_bytes).await {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    // What a fan sends in the edge's own headers is dropped before anything reads it.
    guest::strip_ingress(&mut parts.headers);
    let route = {
        let headers = guest::header_list(&parts.headers);
        let view = RequestView {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &headers,
            body: &body,
        };
        match validate(&view, &limits) {
            Ok(route) => route,
            Err(e) => return guest::error_body(&e),
        }
    };
    let ctx = match Ctx::open(&parts).await {
        Ok(ctx) => ctx,
        Err(reply) => return reply,
    };
    match route {
        // The development issuer exists only on a local stack: elsewhere the route is not
        // there at all (the same answer as any unknown path).
        Route::DevToken if &*ctx.var("mode").await != "local" => {
            return guest::relabel(guest::error(ErrorCode::NotFound, "no such route"), "dev_route");
        }
        // Servers, not fans, call here, and the core verifies the signature over the
        // exact bytes: no bot scoring, no proof of work.
        Route::PaymentWebhook => return guest::forward(&parts, body, &ctx.upstream).await,
        _ => {}
    }
    let pass = match bot::check(&ctx, &mut parts, &route).await {
        Ok(pass) => pass,
        Err(reply) => return reply,
    };
    match route.stage() {
        Stage::Catalog => catalog::serve(&ctx, &parts, body, &route).await,
        Stage::WaitingRoom => waiting_room::serve(&ctx, &parts, body, route, &pass).await,
        Stage::Router => guest::forward(&parts, body, &ctx.upstream).await,
    }
}
