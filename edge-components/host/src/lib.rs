//! The Tessera edge host: a wasmtime 48 server that runs the edge's Spin components
//! (spin-sdk 7, `wasi:http/handler@0.3`; WASI P2 components work too) from the same
//! `spin.toml` that `spin up` reads.
//!
//! It provides what the components import: WASI (P2 and P3), `wasi:http` outbound with
//! Spin's `allowed_outbound_hosts` semantics over pooled keep-alive connections, service
//! chaining to `http://<component>.spin.internal` in-process, `spin:variables`
//! (`SPIN_VARIABLE_<NAME>`, then the host config, then manifest defaults), and
//! `spin:key-value` with `wasi:keyvalue` store and atomics over the same in-memory stores
//! (one per label; host-pushed entries pinned, component caches bounded). Instances come
//! from a pooling allocator; each request gets a fresh one with memory and time limits. A
//! NATS subscriber feeds admission watermarks and catalog invalidations into the key-value
//! store. What a component writes on stderr (the edge's refusals, a panic) is logged,
//! rate-limited ([`guest_log`]). `/metrics`, `/healthz` and `/readyz` are on a separate
//! admin listener.
//!
//! The host leaves the edge's header contract to the components, so they behave the same
//! under `spin up`; a Spin-strict mode ([`EdgeOptions::spin_strict`]) fails wherever Spin
//! would, for tests.
//!
//! It is not Spin: no other triggers, no `files`, no Spin SQLite/Redis/LLM interfaces, and
//! key listings trap.

pub mod config;
pub mod guest_log;
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
