#![allow(unreachable_pub, reason = "test support module")]
//! Integration tests of the edge host: the real components (built by
//! `cargo xtask build-wasm`) in real wasmtime, behind real sockets, against an in-test
//! axum upstream standing in for the region router, and a real nats-server.

mod support;

mod catalog;
mod consistency;
mod nats;
mod ops;
mod queue;
mod spin_parity;
mod validation;
mod waiting_room;
