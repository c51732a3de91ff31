//! The Tessera edge host: a wasmtime 48 server that runs the edge's Spin components
//! (spin-sdk 7, `wasi:http/handler@0.3`; WASI P2 components work too) from the same
//! `spin.toml` that `spin up` reads.
//!
//! It provides what the components import: WASI (P2 and P3), `wasi:http` outbound with
//! Spin's `allowed_outbound_hosts` semantics, service chaining to
//! `http://<component>.spin.internal` in-process, `spin:variables` (`SPIN_VARIABLE_<NAME>`,
//! then the host config, then manifest defaults) and `spin:key-value` (in memory, one
//! store per label, bounded). Instances come from a pooling allocator; each request gets
//! a fresh one with memory and time limits. A NATS subscriber feeds admission watermarks
//! and catalog invalidations into the key-value store. Outbound requests carry W3C trace
//! context. `/metrics`, `/healthz` and `/readyz` are on a separate admin listener.
//!
//! It is not Spin: no other triggers, no `files`, no Spin SQLite/Redis/LLM interfaces, and
//! `key-value.get-keys` traps.

pub mod config;
pub mod kv;
pub mod manifest;
pub mod nats;
pub mod outbound;
pub mod serve;
pub mod server;
pub mod spin;
pub mod trace;

pub use config::EdgeConfig;
pub use server::{Edge, EdgeOptions};
