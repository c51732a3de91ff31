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

use clap::Parser;

/// Seeded simulations of the core: many seeds, or one replayed.
#[derive(Parser, Debug)]
#[command(name = "tessera-sim")]
#[command(group = clap::ArgGroup::new("which").required(true).args(["seeds", "seed"]))]
struct Args {
    /// Run this many seeds.
    #[arg(long)]
    seeds: Option<u64>,
    /// The first of `--seeds` (default: random).
    #[arg(long, requires = "seeds")]
    from: Option<u64>,
    /// Replay one seed.
    #[arg(long)]
    seed: Option<u64>,
    /// The services' and the simulation's logs on stderr.
    #[arg(long)]
    trace: bool,
    /// Known, unfixed bugs fail a seed too.
    #[arg(long)]
    strict: bool,
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
    let Args { seeds, from, seed: one, trace, strict } = Args::parse();
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
        (Some(s), _) => (s, 1, true),
        (None, n) => (from.unwrap_or_else(random_start), n.unwrap_or(0), false),
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
