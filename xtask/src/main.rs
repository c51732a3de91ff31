//! `cargo xtask`: the developer workflows of the Tessera workspace.
//!
//! - `cargo xtask up`: build what is missing and start the whole local multi-region stack.
//! - `cargo xtask test`: run every test (unit, integration, e2e), installing or locating
//!   what they need first. `.ci/run` runs exactly this.
//! - `cargo xtask bench <inventory|edge|orders>`: run a benchmark and print its numbers.
//! - `cargo xtask e2e <checkout|failover|partition|security|sellout|web|spin-readme>`: run
//!   one end-to-end scenario (`web`: fans in a real browser, screenshots under `target/e2e-web/`).
//! - `cargo xtask onsale`: a whole on-sale of a million fans on the release build, with an
//!   HTML report under `target/onsale/` (`--ci`: the 50,000-fan variant `test` runs).
//! - `cargo xtask spin-up`: the same local stack with `spin up` as its edge.
//! - `cargo xtask build-wasm`: build the edge components.
//! - `cargo xtask check-deploy`: check `deploy/` with the real validators (part of `test`).

use std::os::unix::process::CommandExt as _;
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
    /// Run every test: formatting, deploy checks, lints, unit, integration and end-to-end.
    Test {
        /// Skip the long end-to-end scenarios (web, checkout, failover, partition).
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
    /// Run one end-to-end scenario (`checkout`, `failover`, `partition`, `security`,
    /// `sellout`, `web`, `spin-readme`); a scenario's own flags go after `--`.
    E2e {
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A whole on-sale: a million fans (a fifth of them bots) against the local stack on the
    /// release build; the report goes to `target/onsale/`. Its own flags (`--fans`,
    /// `--seats`, `--ci`, `--help`...) go after `--`.
    Onsale {
        /// Run the services from the debug build (what `cargo xtask test` does).
        #[arg(long)]
        debug: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check everything under `deploy/` with the real validators (installed when missing).
    CheckDeploy {
        /// Use the service binaries as they are instead of building them first.
        #[arg(long)]
        no_build: bool,
    },
    /// Like `up`, with `spin up` (Spin >= 4.1 on the PATH) as the edge instead of the
    /// project's host.
    SpinUp {
        /// Fan-facing edge port.
        #[arg(long, default_value_t = 8080)]
        edge_port: u16,
        /// First port of the other services (router, simulator, mail, cores...).
        #[arg(long, default_value_t = 8081)]
        base_port: u16,
        /// Do not build; use the binaries as they are.
        #[arg(long)]
        no_build: bool,
        /// Print the `SPIN_VARIABLE_*` lines of the local stack (for running `spin up`
        /// yourself against `cargo xtask up`) and exit.
        #[arg(long)]
        print_env: bool,
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
        Cmd::SpinUp { print_env: true, base_port, .. } => {
            // The stack's first two ports: the router, then the payment simulator.
            let vars = tessera_e2e::stack::edge_variables(
                &tessera_e2e::stack::DevKeys::local(),
                &format!("http://127.0.0.1:{base_port}"),
                LOCAL_BOT_POLICY,
                &format!("http://127.0.0.1:{}", base_port + 1),
            );
            for (k, v) in vars {
                println!("export SPIN_VARIABLE_{}='{v}'", k.to_ascii_uppercase());
            }
            Ok(())
        }
        Cmd::SpinUp { edge_port, base_port, no_build, .. } => {
            spin_up(edge_port, base_port, no_build)
        }
        Cmd::Test { quick } => test(quick),
        Cmd::CheckDeploy { no_build } => check_deploy(no_build),
        Cmd::Onsale { debug, args } => onsale(!debug, &args),
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
    let options =
        local_stack_options(run_dir.clone(), regions, base_port, edge_port, bin_dir, true);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let mut stack = tessera_e2e::stack::Stack::start(options, &|s| step(s)).await?;
        seed_demo_event(&stack).await?;
        let u = &stack.urls;
        let cores: Vec<String> = u.cores.iter().map(|(r, url)| format!("core-{r}={url}")).collect();
        println!(
            "ready edge={} router={} {} paysim={} mail={} nats={} nats_nkey={} nats_ca={} logs={}",
            u.edge.clone().unwrap_or_default(),
            u.router,
            cores.join(" "),
            u.paysim,
            u.mailsink,
            u.nats_hub,
            stack.nats_tools_seed_file().display(),
            stack.pki.ca_file.display(),
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

/// A developer's local stack (`up`, `spin-up`): fixed ports from `base_port`, the local
/// bot policy, `info` logs; `with_edge` runs the project's edge host (`spin-up` runs
/// `spin up` instead).
fn local_stack_options(
    run_dir: PathBuf,
    regions: Vec<String>,
    base_port: u16,
    edge_port: u16,
    bin_dir: PathBuf,
    with_edge: bool,
) -> tessera_e2e::stack::StackOptions {
    tessera_e2e::stack::StackOptions {
        run_dir,
        regions,
        base_port: Some(base_port),
        edge_port: Some(edge_port),
        bin_dir,
        repo_root: root(),
        with_edge,
        cuttable_links: false,
        paysim_toml: String::new(),
        core_toml: String::new(),
        log_filter: "info".into(),
        bot_policy: LOCAL_BOT_POLICY.into(),
        otlp_endpoint: None,
        core_queue_toml: String::new(),
        edge_variables: Default::default(),
        edge_toml: String::new(),
        core_tls: false,
    }
}

/// The local stack's core services with `spin up` as the edge.
fn spin_up(edge_port: u16, base_port: u16, no_build: bool) -> anyhow::Result<()> {
    step("checking prerequisites: spin (>= 4.1) and nats-server");
    let spin = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("spin")).find(|f| f.is_file()));
    let Some(spin) = spin else {
        bail!(
            "`spin` is not on the PATH. Install Spin 4.1 or later (https://spinframework.dev/install, \
             or `cargo install --locked --git https://github.com/spinframework/spin spin-cli`), \
             or run the same components on the project's host with `cargo xtask up`"
        );
    };
    prereq::nats_server()?;
    let bin_dir = if no_build {
        target_dir().join("debug")
    } else {
        step("building the WASM edge components");
        wasm::build_components(true)?;
        build_services(false)?
    };
    let run_dir = root().join(".tessera").join("spin");
    let regions = vec!["us-east".into(), "eu-west".into()];
    let options =
        local_stack_options(run_dir.clone(), regions, base_port, edge_port, bin_dir, false);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let mut stack = tessera_e2e::stack::Stack::start(options, &|s| step(s)).await?;
        seed_demo_event(&stack).await?;
        let vars = tessera_e2e::stack::edge_variables(
            &stack.keys,
            &stack.urls.router,
            LOCAL_BOT_POLICY,
            &stack.urls.paysim,
        );
        step(&format!("starting `{} up` as the edge on :{edge_port}", spin.display()));
        let mut cmd = tokio::process::Command::new(&spin);
        cmd.current_dir(root())
            .args(["up", "-f", "edge-components/spin.toml", "--listen"])
            .arg(format!("127.0.0.1:{edge_port}"))
            .args(["--runtime-config-file", "edge-components/runtime-config.toml"])
            .kill_on_drop(true);
        for (k, v) in &vars {
            cmd.env(format!("SPIN_VARIABLE_{}", k.to_ascii_uppercase()), v);
        }
        let mut child = cmd.spawn().with_context(|| format!("start {}", spin.display()))?;
        let edge = format!("http://127.0.0.1:{edge_port}");
        let mut up = false;
        for _ in 0..300 {
            if let Ok(r) = stack.http.get(format!("{edge}/v1/events")).send().await
                && r.status().is_success()
            {
                up = true;
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!("spin up exited: {status}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if !up {
            bail!("spin up did not answer on {edge} within 30 s");
        }
        let u = &stack.urls;
        println!(
            "ready edge={edge} (spin up) router={} paysim={} mail={} nats={} nats_nkey={} nats_ca={} logs={}",
            u.router,
            u.paysim,
            u.mailsink,
            u.nats_hub,
            stack.nats_tools_seed_file().display(),
            stack.pki.ca_file.display(),
            run_dir.join("logs").display()
        );
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            status = child.wait() => step(&format!("spin up exited: {status:?}")),
        }
        step("stopping every service");
        let _ = child.kill().await;
        stack.stop();
        Ok(())
    })
}

/// The shell blocks of the README section `title` (fenced as `sh`), in order.
fn readme_blocks(readme: &str, title: &str) -> anyhow::Result<Vec<String>> {
    let start = readme.find(title).with_context(|| format!("README has no section {title:?}"))?;
    let rest = &readme[start + title.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "```sh" {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(body.join("\n"));
        }
    }
    Ok(blocks)
}

/// Follows the README's Spin section verbatim: its first block (the stack with `spin up`
/// as the edge) in the background until `ready`, then the second (calls a developer makes)
/// must succeed. Where no Spin CLI is installed, `e2e/fixtures/spin` stands in for it.
fn spin_readme() -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let readme = std::fs::read_to_string(root().join("README.md")).context("read README.md")?;
    let blocks = readme_blocks(&readme, "## Running the edge components under Spin")?;
    let [start, calls] = blocks.as_slice() else {
        bail!("the README's Spin section should have two sh blocks, found {}", blocks.len());
    };
    prereq::nats_server()?;
    step("building the WASM edge components and the services");
    wasm::build_components(true)?;
    let bin_dir = build_services(false)?;
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    let has_spin = std::env::split_paths(&path).any(|d| d.join("spin").is_file());
    if !has_spin {
        step("no Spin CLI on the PATH: e2e/fixtures/spin (tessera-edge --spin-strict) stands in");
        let mut dirs = vec![root().join("e2e/fixtures")];
        dirs.extend(std::env::split_paths(&path));
        path = std::env::join_paths(dirs)?;
    }
    step(&format!("running the README's first block: {start}"));
    let mut stack = Command::new("bash")
        .args(["-c", start])
        .current_dir(root())
        .env("PATH", &path)
        .env("TESSERA_EDGE_BIN", bin_dir.join("tessera-edge"))
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .context("run the README's first block")?;
    let stdout = stack.stdout.take().context("stdout of the first block")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if line.starts_with("ready ") {
                let _ = tx.send(());
            }
        }
    });
    let stop = |stack: &mut std::process::Child| {
        // The whole group, as Ctrl-C in a terminal would (`--`: a negative id is a group,
        // not an option); if it has not stopped within 30 s, it is killed.
        let group = format!("-{}", stack.id());
        let _ = Command::new("kill").args(["-INT", "--", &group]).status();
        for _ in 0..300 {
            if let Ok(Some(_)) = stack.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("the README's first block ignored Ctrl-C for 30 s; killing it");
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = stack.wait();
    };
    if rx.recv_timeout(std::time::Duration::from_secs(600)).is_err() {
        stop(&mut stack);
        bail!("the README's first block never printed its `ready` line");
    }
    step(&format!("running the README's second block:\n{calls}"));
    let out = Command::new("bash")
        .args(["-c", &format!("set -e\n{calls}")])
        .current_dir(root())
        .env("PATH", &path)
        .output()
        .context("run the README's second block")?;
    stop(&mut stack);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    if !out.status.success() {
        bail!(
            "the README's second block failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !text.contains("riverside-live") {
        bail!("the README's calls did not show the demo event");
    }
    println!("spin_readme blocks=2 spin={} ok=1", if has_spin { "installed" } else { "stand-in" });
    Ok(())
}

/// Local development: a bot policy that lets curl through (curl's user agent alone
/// scores as automation); `deploy/production` keeps the defaults.
const LOCAL_BOT_POLICY: &str = r#"{"challenge_at": 75, "shadow_at": 95}"#;

/// Creates the demo event `riverside-live` (once; later runs find it there).
async fn seed_demo_event(stack: &tessera_e2e::stack::Stack) -> anyhow::Result<()> {
    step("seeding the demo event `riverside-live`");
    let router = tessera_e2e::fan::Api::new(stack.http.clone(), stack.urls.router.clone());
    let op = tessera_e2e::fan::Operator::new(router).await?;
    let mut map = tessera_e2e::demo_seat_map(&root())?;
    // Announced to open in 15 minutes: the event page counts down (the sale opens when an
    // operator opens it).
    map["on_sale_at"] = serde_json::json!(tessera_e2e::rfc3339_in(15 * 60));
    let created = op.create_event(&map).await?;
    match (created.status, created.code()) {
        (201, _) => {
            op.admission_rate("riverside-live", 200.0).await?;
        }
        (409, Some("event_exists")) => step("  already there from an earlier run"),
        (s, _) => bail!("seeding the demo event failed: {s} {}", created.body),
    }
    Ok(())
}

fn test(quick: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    step("checking prerequisites: nats-server, libclang, the WASM toolchain");
    prereq::nats_server()?;
    prereq::libclang()?;
    run("checking formatting", cargo().args(["fmt", "--all", "--check"]))?;
    step("building the WASM edge components");
    wasm::build_components(true)?;
    let bin_dir = build_services(false)?;
    // `check-deploy --no-build`: the binaries just built load the shipped configs.
    step("checking deploy/ (container files, Kubernetes, NATS, Prometheus, Fly, configs)");
    deploy::run(&root(), &bin_dir)?;
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
    production_links_no_test_support()?;
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
        prereq::chromium()?;
        prereq::web_test_tools(&root())?;
        run(
            "end-to-end scenario `web` (fans in a real browser)",
            cargo().args(["run", "--locked", "-p", "tessera-e2e", "--bin", "web", "--", "--ci"]),
        )?;
        for scenario in ["checkout", "failover", "partition", "sellout", "onsale"] {
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
        spin_readme()?;
    }
    step(&format!("all tests passed in {:.0?}", started.elapsed()));
    Ok(())
}

/// The service binaries' packages, which ship in the images.
const SERVICE_PACKAGES: &[&str] =
    &["tessera-core", "tessera-region-router", "tessera-edge-host", "tessera-cli"];

/// Fails when a service binary links a crate under `test-support/` (simulators, local
/// NATS, store test kits): those are for tests and the local stack only.
fn production_links_no_test_support() -> anyhow::Result<()> {
    step("checking that no service links a test-support crate");
    let test_support: Vec<String> = std::fs::read_dir(root().join("test-support"))
        .context("list test-support/")?
        .filter_map(|e| {
            let manifest = std::fs::read_to_string(e.ok()?.path().join("Cargo.toml")).ok()?;
            let doc: toml::Table = manifest.parse().ok()?;
            Some(doc.get("package")?.get("name")?.as_str()?.to_owned())
        })
        .collect();
    anyhow::ensure!(!test_support.is_empty(), "no crates found under test-support/");
    let mut c = cargo();
    c.args(["tree", "--locked", "-e", "normal,build", "--prefix", "none"]);
    for p in SERVICE_PACKAGES {
        c.args(["-p", p]);
    }
    let out = c.output().context("run cargo tree")?;
    anyhow::ensure!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let linked: std::collections::BTreeSet<&str> =
        tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    let found: Vec<&String> = test_support.iter().filter(|t| linked.contains(t.as_str())).collect();
    if !found.is_empty() {
        bail!("service binaries link test-support crates: {found:?}");
    }
    println!("services link none of {} test-support crates", test_support.len());
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

fn onsale(release: bool, args: &[String]) -> anyhow::Result<()> {
    prereq::nats_server()?;
    step("building the WASM edge components");
    wasm::build_components(true)?;
    build_services(release)?;
    let mut c = cargo();
    c.args(["run", "--locked", "-p", "tessera-e2e", "--bin", "onsale"]);
    if release {
        c.arg("--release");
    }
    run("the on-sale", c.arg("--").args(args))
}

fn e2e(name: &str, args: &[String]) -> anyhow::Result<()> {
    match name {
        "checkout" | "failover" | "partition" | "security" | "sellout" | "web" => {}
        "spin-readme" => return spin_readme(),
        other => {
            bail!(
                "unknown scenario {other:?}: choose checkout, failover, partition, security, sellout, web or spin-readme"
            )
        }
    }
    prereq::nats_server()?;
    if name == "web" {
        prereq::chromium()?;
        prereq::web_test_tools(&root())?;
    }
    step("building the WASM edge components");
    wasm::build_components(true)?;
    build_services(false)?;
    run(
        &format!("end-to-end scenario `{name}`"),
        cargo().args(["run", "--locked", "-p", "tessera-e2e", "--bin", name, "--"]).args(args),
    )
}
