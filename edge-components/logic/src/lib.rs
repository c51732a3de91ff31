//! Pure edge logic shared by Tessera's WASM edge components and the edge host: the fan
//! route table, request validation (typed schemas, size limits, the JSON error contract),
//! bot scoring, the proof-of-work challenge, catalog cache entries and the key-value
//! layout the components and the host agree on.
//!
//! It is not a component and does no I/O: no clock, no randomness, no HTTP, no key-value
//! calls. Callers pass time, random bytes and counters in. It compiles for wasm32 and for
//! the host alike.

pub mod bot;
pub mod catalog;
pub mod client;
pub mod kv;
pub mod pow;
pub mod routes;
pub mod validate;

pub use routes::Route;
pub use validate::{Limits, RequestView, validate};

use tessera_api::{ApiErrorBody, ErrorCode};

/// An error response as the edge sends it: status and the `{"code","message"}` body.
pub fn error_body(code: ErrorCode, message: impl Into<String>) -> (u16, String) {
    let body = ApiErrorBody::new(code, message);
    (body.status(), body.to_json())
}
