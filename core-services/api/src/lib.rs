//! Wire types shared by every Tessera process: the edge components (compiled to WASM),
//! the region router and the core services.
//!
//! This crate is the **API boundary** of the platform. It holds identifiers, request and
//! response bodies, the error body with its stable machine-readable `code`, the events
//! carried over NATS, and the header names. It does no I/O and pulls in nothing but
//! `serde`, so it compiles for `wasm32-wasip1`/`wasip2` as well as for the host.
//!
//! It is *not* the storage format: values kept in the inventory store are defined in
//! `tessera-fdb-schema` and evolve on their own schedule.

pub mod bus;
pub mod error;
pub mod headers;
pub mod ids;
pub mod inventory;
pub mod ops;
pub mod orders;
pub mod queue;

pub use error::{ApiErrorBody, ErrorCode};
pub use ids::*;
