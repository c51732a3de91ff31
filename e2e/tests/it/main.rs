//! End-to-end tests over the real stack: every service as its own process, real NATS, real
//! HTTP, real WASM in the edge host. They need the service binaries and the WASM
//! components built first (`cargo xtask test` does that).

mod purchase;
mod reaper;
mod tls;
mod trace;

use tessera_e2e::stack::{Stack, StackOptions};

pub async fn start(name: &str, tweak: impl FnOnce(&mut StackOptions)) -> Stack {
    let mut options = StackOptions::for_tests(name).expect("stack options");
    tweak(&mut options);
    match Stack::start(options, &|step| eprintln!("[{name}] {step}")).await {
        Ok(s) => s,
        Err(e) => panic!("stack did not start: {e:#}"),
    }
}
