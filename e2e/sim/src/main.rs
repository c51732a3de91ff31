//! `tessera-sim`: runs seeded simulations of the core.
//!
//! ```text
//! cargo run -p tessera-sim -- --seeds 100 [--from 4242]   # 100 seeds from 4242 (default: random)
//! cargo run -p tessera-sim -- --seed 4242 [--trace]       # replay one seed (with logs)
//! ```
//! A failing seed prints `seed=<n> commit=<git HEAD>` and the invariants it broke. Known,
//! unfixed bugs (`KNOWN_ISSUES`) are printed as `known (...)` and do not fail a seed unless
//! `--strict` is given. The last line is a `key=value` summary.

use std::process::ExitCode;
use std::time::Instant;

fn usage() -> ExitCode {
    eprintln!("usage: tessera-sim (--seeds N [--from S] | --seed S [--trace]) [--strict]");
    ExitCode::from(2)
}

fn git_head() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn random_start() -> u64 {
    use std::hash::{BuildHasher as _, RandomState};
    RandomState::new().hash_one(std::process::id()) % 1_000_000_000
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seeds: Option<u64> = None;
    let mut from: Option<u64> = None;
    let mut one: Option<u64> = None;
    let mut trace = false;
    let mut strict = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--trace" || a == "--strict" {
            trace |= a == "--trace";
            strict |= a == "--strict";
            continue;
        }
        let value = it.next().and_then(|v| v.parse::<u64>().ok());
        match (a.as_str(), value) {
            ("--seeds", Some(v)) => seeds = Some(v),
            ("--from", Some(v)) => from = Some(v),
            ("--seed", Some(v)) => one = Some(v),
            _ => return usage(),
        }
    }
    if trace {
        // The services' own logs and the simulation's, on stderr, without real timestamps.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .without_time()
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
    }
    let (start, count, replay) = match (one, seeds) {
        (Some(s), None) => (s, 1, true),
        (None, Some(n)) => (from.unwrap_or_else(random_start), n, false),
        _ => return usage(),
    };
    let commit = git_head();
    println!("tessera-sim: seeds {start}..{} at commit {commit}", start + count);
    let (mut failures, mut known, mut holds, mut orders, mut charges) =
        (0u64, 0u64, 0usize, 0usize, 0usize);
    let started = Instant::now();
    for seed in start..start + count {
        let t = Instant::now();
        match tessera_sim::standard(seed).strict(strict).run() {
            Ok(r) => {
                if !r.known.is_empty() {
                    known += 1;
                    println!("seed={seed} commit={commit} shows known issue(s):");
                    for (name, v) in &r.known {
                        println!("  known ({name}): {v}");
                    }
                }
                holds += r.holds;
                orders += r.orders;
                charges += r.charges;
                println!("ok {r} real_ms={}", t.elapsed().as_millis());
                if replay {
                    println!("digest={} unordered={}", r.digest, r.unordered);
                    println!("refusals={:?}", r.refusals);
                }
            }
            Err(e) => {
                failures += 1;
                if let Some(r) = &e.report {
                    holds += r.holds;
                    orders += r.orders;
                    charges += r.charges;
                    println!("FAIL {r}");
                }
                println!("seed={seed} commit={commit}");
                println!("{e}");
            }
        }
    }
    println!(
        "seeds={count} failures={failures} known={known} holds={holds} orders={orders} charges={charges} real_s={}",
        started.elapsed().as_secs()
    );
    if failures > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
