//! The fan's web app, served by the edge: every page under `/`, `/events/...`,
//! `/orders/...` and `/signin`, and the content-hashed files under `/assets/`, all embedded
//! at build time from `web/` by `tessera-web`'s bundler (see `build.rs`). Pages come in
//! the language `Accept-Language` prefers; assets are cached for a year (`immutable`),
//! pages are revalidated (`ETag`). Bodies are served gzipped when the client takes it.
//!
//! It imports WASI HTTP and Spin variables (`payments_url`, `payments_publishable_key`:
//! where the payment provider's hosted card fields live, for the checkout page). It holds
//! no state and calls nothing: the pages talk to the API under `/v1/` themselves.

use bytes::Bytes;
use http_body_util::Full;
use spin_sdk::http::{BoxBody, Request, Response, box_body};
use spin_sdk::http_service;
use spin_sdk::variables;
use tessera_web::serve::{self, Target};

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    gzip: &'static [u8],
}

struct Page {
    name: &'static str,
    lang: &'static str,
    html: &'static [u8],
    gzip: &'static [u8],
    script_hash: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/bundle.rs"));

type Reply = Response<BoxBody>;

fn reply(status: u16, headers: &[(&str, &str)], body: Bytes) -> Reply {
    let mut r = Response::new(box_body(Full::new(body)));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) =
            (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_str(v))
        {
            r.headers_mut().append(k, v);
        }
    }
    r
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A strong validator for a body: its length and a 64-bit FNV-1a hash.
fn etag(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{:x}-{h:016x}\"", body.len())
}

async fn payments() -> (String, String) {
    let url = variables::get("payments_url").await.unwrap_or_default();
    let key = variables::get("payments_publishable_key").await.unwrap_or_default();
    (url, key)
}

fn html_attr(s: &str) -> String {
    s.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;")
}

async fn page(req: &Request, name: &str, status: u16) -> Reply {
    let lang = serve::negotiate(header(req, "accept-language"), LANGS);
    let Some(p) = PAGES.iter().find(|p| p.name == name && p.lang == lang) else {
        return reply(500, &[("content-type", "text/plain")], Bytes::from_static(b"no such page"));
    };
    let gzip_ok = serve::accepts_gzip(header(req, "accept-encoding"));
    let mut frame_origin = None;
    let (body, encoded): (Bytes, bool) = if p.name == "checkout" {
        // The provider's address goes into the page, so it is filled in per request.
        let (url, key) = payments().await;
        frame_origin = serve::origin_of(&url);
        let html = String::from_utf8_lossy(p.html)
            .replace(
                serve::PAYMENTS_URL_PLACEHOLDER,
                &html_attr(frame_origin.as_deref().unwrap_or("")),
            )
            .replace(serve::PAYMENTS_KEY_PLACEHOLDER, &html_attr(&key));
        (Bytes::from(html), false)
    } else if gzip_ok {
        (Bytes::from_static(p.gzip), true)
    } else {
        (Bytes::from_static(p.html), false)
    };
    let tag = etag(&body);
    let csp = serve::page_csp(p.script_hash, frame_origin.as_deref());
    let length = body.len().to_string();
    let mut headers: Vec<(&str, &str)> = vec![
        ("content-type", "text/html; charset=utf-8"),
        ("cache-control", serve::PAGE_CACHE_CONTROL),
        ("vary", "accept-language, accept-encoding"),
        ("content-language", p.lang),
        ("content-security-policy", &csp),
        ("etag", &tag),
    ];
    headers.extend_from_slice(serve::PAGE_HEADERS);
    if encoded {
        headers.push(("content-encoding", "gzip"));
    }
    if status == 200 && header(req, "if-none-match") == Some(tag.as_str()) {
        return reply(304, &headers, Bytes::new());
    }
    headers.push(("content-length", &length));
    let body = if req.method() == http::Method::HEAD { Bytes::new() } else { body };
    reply(status, &headers, body)
}

fn asset(req: &Request, path: &str) -> Option<Reply> {
    let a = ASSETS.iter().find(|a| a.path == path)?;
    let gzip_ok = serve::accepts_gzip(header(req, "accept-encoding"));
    let body = if gzip_ok { a.gzip } else { a.body };
    let length = body.len().to_string();
    let mut headers: Vec<(&str, &str)> = vec![
        ("content-type", a.content_type),
        ("cache-control", serve::ASSET_CACHE_CONTROL),
        ("vary", "accept-encoding"),
        ("x-content-type-options", "nosniff"),
        ("content-length", &length),
    ];
    if gzip_ok {
        headers.push(("content-encoding", "gzip"));
    }
    let body = if req.method() == http::Method::HEAD { &[][..] } else { body };
    Some(reply(200, &headers, Bytes::from_static(body)))
}

#[http_service]
async fn handle(req: Request) -> Result<Reply, spin_sdk::http::Error> {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return Ok(reply(
            405,
            &[("allow", "GET, HEAD"), ("content-type", "text/plain; charset=utf-8")],
            Bytes::from_static(b"pages are read with GET\n"),
        ));
    }
    let path = req.uri().path().to_owned();
    Ok(match serve::route(&path) {
        Target::Page(name) => page(&req, name, 200).await,
        Target::Asset(p) => match asset(&req, p) {
            Some(r) => r,
            None => reply(
                404,
                &[("content-type", "text/plain; charset=utf-8"), ("cache-control", "no-store")],
                Bytes::from_static(b"no such asset\n"),
            ),
        },
        Target::NotFound => page(&req, "notfound", 404).await,
    })
}
