//! Glue every Tessera native process shares: typed configuration loading, structured
//! logging with W3C trace context and optional OTLP export, Prometheus metrics, and the
//! HTTP error contract (`{"code": ..., "message": ...}` with a stable code) for axum.
//!
//! It is not a framework: services build their own axum routers and call these helpers
//! from `main`.

pub mod config;
pub mod http;
pub mod metrics;
pub mod telemetry;

pub use http::{ApiError, Json};
