//! Benchmarks for Tessera's hot paths, as binaries that print their numbers (the last line
//! of each is `key=value` pairs): `inventory` (durable holds per second, closed and open
//! loop, and a contended sell-out recounted from the raw records, against the common
//! PostgreSQL `SKIP LOCKED` design and the best one-round-trip design), `edge` (the WASM
//! edge pipeline against `wasmtime serve`) and `orders` (whole purchases through the edge
//! on the real local stack, with CPU per order by process and an audit of what was sold).
//! Run them with `cargo xtask bench <name>`; results and the machine are in BENCHMARKS.md.
//!
//! This library only holds helpers shared by the benchmark binaries.

pub mod loadgen;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// On-CPU time of this process's threads so far, summed by thread name (Linux
/// `/proc/self/task/*/schedstat`; names are cut to 15 bytes by the kernel). Comparing two
/// readings tells which thread did the work of a run, which varies far less from run to run
/// than throughput does on a shared machine.
pub fn thread_cpu() -> std::collections::BTreeMap<String, std::time::Duration> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()));
        if let Some(ns) = ns {
            *out.entry(name.trim().to_owned()).or_default() += std::time::Duration::from_nanos(ns);
        }
    }
    out
}

/// `after - before` per thread name, as `name=µs-per-op` pairs for threads that ran.
pub fn cpu_per_op(
    before: &std::collections::BTreeMap<String, std::time::Duration>,
    after: &std::collections::BTreeMap<String, std::time::Duration>,
    ops: u64,
) -> String {
    let mut parts = Vec::new();
    for (name, a) in after {
        let b = before.get(name).copied().unwrap_or_default();
        let d = a.saturating_sub(b);
        if d.as_micros() > 0 && ops > 0 {
            parts.push(format!("{name}={:.1}", d.as_secs_f64() * 1e6 / ops as f64));
        }
    }
    parts.join(" ")
}
