//! Benchmarks for Tessera's hot paths, as binaries that print their numbers (the last line
//! of each is `key=value` pairs): `inventory` (durable holds per second against PostgreSQL
//! `SKIP LOCKED`) and `edge` (the WASM edge pipeline against `wasmtime serve`). Run them
//! with `cargo xtask bench <name>`; results and the machine are in BENCHMARKS.md.
//!
//! This library only holds helpers shared by the benchmark binaries.

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
