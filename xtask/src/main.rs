//! `cargo xtask`: the developer workflows of the Tessera workspace.
//!
//! - `cargo xtask up`: build what is missing and start the whole local multi-region stack.
//! - `cargo xtask test`: run every test (unit, integration, e2e), installing or locating
//!   what they need first. `.ci/run` runs exactly this.
//! - `cargo xtask bench <inventory|edge|orders>`: run a benchmark and print its numbers.
//! - `cargo xtask e2e <checkout|failover|partition|security|sellout>`: run one end-to-end scenario.
//! - `cargo xtask build-wasm`: build the edge components.
//! - `cargo xtask check-deploy`: check `deploy/` with the real validators (part of `test`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod deploy;
mod prereq;
mod wasm;

use prereq::step;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Tessera developer workflows")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build what is missing and start the local multi-region stack; Ctrl-C stops it.
    Up {
        /// Build and run the release profile (faster services, slower build).
        #[arg(long)]
        release: bool,
        /// Regions to run, comma-separated.
        #[arg(long, default_value = "us-east,eu-west", value_delimiter = ',')]
        regions: Vec<String>,
        /// Fan-facing edge port.
        #[arg(long, default_value_t = 8080)]
        edge_port: u16,
        /// First port of the other services (router, simulator, mail, cores...).
        #[arg(long, default_value_t = 8081)]
        base_port: u16,
        /// Start from empty data instead of what the last run left.
        #[arg(long)]
        fresh: bool,
        /// Do not build; use the binaries as they are.
        #[arg(long)]
        no_build: bool,
    },
    /// Run every test: formatting, lints, unit, integration and end-to-end.
    Test {
        /// Skip the long end-to-end scenarios (checkout, failover, partition).
        #[arg(long)]
        quick: bool,
    },
    /// Run a benchmark (`inventory`, `edge` or `orders`) and print its numbers.
    Bench {
        name: String,
        /// Arguments passed to the benchmark.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run one end-to-end scenario (`checkout`, `failover`, `partition`).
    E2e {
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check everything under `deploy/` with the real validators (installed when missing).
    CheckDeploy {
        /// Use the service binaries as they are instead of building them first.
        #[arg(long)]
        no_build: bool,
    },
    /// Build the WASM edge components.
    BuildWasm {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::BuildWasm { release } => {
            let out = wasm::build_components(release)?;
            println!("components in {}", out.display());
            Ok(())
        }
        Cmd::Up { release, regions, edge_port, base_port, fresh, no_build } => {
            up(release, regions, edge_port, base_port, fresh, no_build)
        }
        Cmd::Test { quick } => test(quick),
        Cmd::CheckDeploy { no_build } => check_deploy(no_build),
        Cmd::Bench { name, args } => bench(&name, &args),
        Cmd::E2e { name, args } => e2e(&name, &args),
    }
}

fn root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or_else(|| here.to_path_buf())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    step(what);
    let started = Instant::now();
    let status = cmd.status().with_context(|| format!("run {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    eprintln!("    done in {:.0?}", started.elapsed());
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

fn build_services(release: bool) -> anyhow::Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "--workspace", "--bins", "--locked"]);
    if release {
        c.arg("--release");
    }
    run(&format!("building the services ({})", if release { "release" } else { "debug" }), &mut c)?;
    Ok(target_dir().join(if release { "release" } else { "debug" }))
}

fn check_deploy(no_build: bool) -> anyhow::Result<()> {
    let bin_dir = if no_build {
        target_dir().join("debug")
    } else {
        let mut c = cargo();
        c.args([
            "build",
            "--locked",
            "-p",
            "tessera-core",
            "-p",
            "tessera-region-router",
            "-p",
            "tessera-edge-host",
            "--bins",
        ]);
        run("building the service binaries whose configs are checked", &mut c)?;
        target_dir().join("debug")
    };
    step("checking deploy/ (container files, Kubernetes, NATS, Prometheus, Fly, configs)");
    deploy::run(&root(), &bin_dir)
}

fn up(
    release: bool,
    regions: Vec<String>,
    edge_port: u16,
    base_port: u16,
    fresh: bool,
    no_build: bool,
) -> anyhow::Result<()> {
    step("checking prerequisites");
    prereq::nats_server()?;
    let bin_dir = if no_build {
        target_dir().join(if release { "release" } else { "debug" })
    } else {
        step("building the WASM edge components");
        wasm::build_components(true)?;
        build_services(release)?
    };
    let run_dir = root().join(".tessera").join("local");
    if fresh {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    let options = tessera_e2e::stack::StackOptions {
        run_dir: run_dir.clone(),
        regions,
        base_port: Some(base_port),
        edge_port: Some(edge_port),
        bin_dir,
        repo_root: root(),
        with_edge: true,
        cuttable_links: false,
        paysim_toml: String::new(),
        core_toml: String::new(),
        log_filter: "info".into(),
        // Local development: a bot policy that lets curl through (curl's user agent alone
        // scores as automation); `deploy/production` keeps the defaults.
        bot_policy: r#"{"challenge_at": 75, "shadow_at": 95}"#.into(),
        otlp_endpoint: None,
        core_queue_toml: String::new(),
        edge_variables: Default::default(),
        edge_toml: String::new(),
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let mut stack = tessera_e2e::stack::Stack::start(options, &|s| step(s)).await?;
        step("seeding the demo event `riverside-live`");
        let router = tessera_e2e::fan::Api::new(stack.http.clone(), stack.urls.router.clone());
        let op = tessera_e2e::fan::Operator::new(router).await?;
        let map = tessera_e2e::demo_seat_map(&root())?;
        let created = op.create_event(&map).await?;
        match (created.status, created.code()) {
            (201, _) => {
                op.admission_rate("riverside-live", 200.0).await?;
            }
            (409, Some("event_exists")) => step("  already there from an earlier run"),
            (s, _) => bail!("seeding the demo event failed: {s} {}", created.body),
        }
        let u = &stack.urls;
        let cores: Vec<String> = u.cores.iter().map(|(r, url)| format!("core-{r}={url}")).collect();
        println!(
            "ready edge={} router={} {} paysim={} mail={} nats={} logs={}",
            u.edge.clone().unwrap_or_default(),
            u.router,
            cores.join(" "),
            u.paysim,
            u.mailsink,
            u.nats_hub,
            run_dir.join("logs").display()
        );
        let _ = tokio::signal::ctrl_c().await;
        step("stopping every service");
        stack.stop();
        drop(stack);
        step("stopped");
        Ok(())
    })
}

fn test(quick: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    step("checking prerequisites: nats-server, libclang, the WASM toolchain");
    prereq::nats_server()?;
    prereq::libclang()?;
    run("checking formatting", cargo().args(["fmt", "--all", "--check"]))?;
    step("building the WASM edge components");
    wasm::build_components(true)?;
    build_services(false)?;
    run(
        "linting (clippy, warnings are errors)",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "linting the FoundationDB backend (compiled, not linked: no libfdb_c here)",
        cargo().args([
            "clippy",
            "-p",
            "tessera-store",
            "--features",
            "fdb",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "running unit, integration and end-to-end tests",
        cargo().args(["test", "--workspace", "--locked"]),
    )?;
    // The edge suite once more with the host failing wherever Spin would (see
    // `tessera_edge_host::server`): a component that only works on our host fails here.
    let edge_suite = test_binary("tessera-edge-host", "it")?;
    run(
        "running the edge suite again in Spin-strict mode",
        Command::new(&edge_suite)
            .current_dir(root().join("edge-components/host"))
            .env("TESSERA_EDGE_SPIN_STRICT", "1"),
    )?;
    // The red-team suite (about half a minute): every attack refused, nothing changed.
    run(
        "red-team suite `security`",
        cargo().args(["run", "--locked", "-p", "tessera-e2e", "--bin", "security", "--", "--ci"]),
    )?;
    if !quick {
        for scenario in ["checkout", "failover", "partition", "sellout"] {
            run(
                &format!("end-to-end scenario `{scenario}`"),
                cargo().args([
                    "run",
                    "--locked",
                    "-p",
                    "tessera-e2e",
                    "--bin",
                    scenario,
                    "--",
                    "--ci",
                ]),
            )?;
        }
    }
    step(&format!("all tests passed in {:.0?}", started.elapsed()));
    Ok(())
}

/// The path of an already built integration-test binary (`cargo test --no-run` of the
/// whole workspace, so features resolve as in the main test run and nothing rebuilds).
fn test_binary(package: &str, target: &str) -> anyhow::Result<PathBuf> {
    let out = cargo()
        .args(["test", "--workspace", "--locked", "--no-run", "--message-format=json"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("run cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed");
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let is_it = msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == target
            && msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|v| v == "test"))
            && msg["package_id"].as_str().is_some_and(|id| {
                id.contains(&format!("#{package}@")) || id.contains(&format!("/{package}#"))
            });
        if is_it && let Some(exe) = msg["executable"].as_str() {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("no test binary `{target}` of {package} in the workspace build")
}

fn bench(name: &str, args: &[String]) -> anyhow::Result<()> {
    match name {
        "inventory" | "edge" | "orders" => {}
        other => bail!("unknown benchmark {other:?}: choose inventory, edge or orders"),
    }
    if name == "edge" || name == "orders" {
        prereq::nats_server()?;
        step("building the WASM edge components");
        wasm::build_components(true)?;
    }
    if name == "orders" {
        // The whole-order bench runs the stack's release binaries.
        build_services(true)?;
    }
    run(
        &format!("benchmark `{name}`"),
        cargo()
            .args(["run", "--release", "--locked", "-p", "tessera-bench", "--bin", name, "--"])
            .args(args),
    )
}

fn e2e(name: &str, args: &[String]) -> anyhow::Result<()> {
    match name {
        "checkout" | "failover" | "partition" | "security" | "sellout" => {}
        other => {
            bail!(
                "unknown scenario {other:?}: choose checkout, failover, partition, security or sellout"
            )
        }
    }
    prereq::nats_server()?;
    step("building the WASM edge components");
    wasm::build_components(true)?;
    build_services(false)?;
    run(
        &format!("end-to-end scenario `{name}`"),
        cargo().args(["run", "--locked", "-p", "tessera-e2e", "--bin", name, "--"]).args(args),
    )
}
