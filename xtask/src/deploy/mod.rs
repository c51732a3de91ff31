//! `cargo xtask check-deploy`: everything under `deploy/` checked with the real tools
//! (installed from the package registries when missing) and with the rules of the
//! systems that will read it:
//!
//! - container files: `hadolint`, and every path, user and writable directory they name
//!   against what the build produces and what the manifests mount ([`docker`]);
//! - Kubernetes: each overlay rendered with `kubectl kustomize` and validated with
//!   `kubernetes-validate --strict`; complete (every ConfigMap, Secret, key and Service it
//!   names is in the render), secured, probed and spread; the FoundationDB operator and
//!   SpinKube resources against their CRDs' fields; the FoundationDB regions against
//!   `deploy/fdb/regions.json` ([`k8s`]);
//! - NATS: every rendered server config through `nats-server -t`, stream and store limits
//!   that fit, leaves that dial every hub server ([`nats`]);
//! - Prometheus: `promtool check rules` and `promtool test rules`, every dashboard query
//!   parsed, every metric it names emitted by the code ([`prom`]);
//! - Fly: each `fly.toml` against flyctl's configuration schema and validations, and the
//!   commands of `deploy/README.md` ([`fly`]);
//! - each shipped production config loaded by its own binary with its secrets supplied
//!   the documented way, and refused without them ([`configs`]).
//!
//! Each check prints one line; the last line is `deploy_checks=N failed=M`.

use std::path::{Path, PathBuf};

use anyhow::bail;

mod configs;
mod docker;
mod fly;
mod k8s;
mod nats;
mod prom;
mod tools;
pub(crate) mod yaml;

pub(crate) use tools::Tools;

/// The outcome of every check, printed as it goes.
#[derive(Default)]
pub(crate) struct Report {
    checks: usize,
    failed: Vec<String>,
}

impl Report {
    /// Records one check: `Ok` passes, `Err` fails with its reason.
    pub(crate) fn check(&mut self, name: &str, outcome: anyhow::Result<()>) {
        self.checks += 1;
        match outcome {
            Ok(()) => println!("ok      {name}"),
            Err(e) => {
                println!("FAILED  {name}: {e:#}");
                self.failed.push(name.to_owned());
            }
        }
    }

    /// Records one check per problem found (none found: one passing check).
    pub(crate) fn check_all(&mut self, name: &str, problems: Vec<String>) {
        if problems.is_empty() {
            self.check(name, Ok(()));
        }
        for p in problems {
            self.check(name, Err(anyhow::anyhow!("{p}")));
        }
    }
}

/// What the checks need to know about the checkout.
pub(crate) struct Ctx {
    pub(crate) root: PathBuf,
    pub(crate) tools: Tools,
    /// Scratch space for rendered files, test certificates and stores.
    pub(crate) scratch: tempfile::TempDir,
    /// Where the service binaries are (built by `cargo xtask check-deploy` first).
    pub(crate) bin_dir: PathBuf,
}

impl Ctx {
    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    pub(crate) fn read(&self, rel: &str) -> anyhow::Result<String> {
        std::fs::read_to_string(self.path(rel)).map_err(|e| anyhow::anyhow!("read {rel}: {e}"))
    }
}

/// Runs every check; fails when one did.
pub(crate) fn run(root: &Path, bin_dir: &Path) -> anyhow::Result<()> {
    let tools = Tools::locate_or_install(root)?;
    let ctx = Ctx {
        root: root.to_path_buf(),
        tools,
        scratch: tempfile::Builder::new().prefix("tessera-check-deploy-").tempdir()?,
        bin_dir: bin_dir.to_path_buf(),
    };
    let mut report = Report::default();
    docker::check(&ctx, &mut report);
    let renders = k8s::check(&ctx, &mut report);
    nats::check(&ctx, &renders, &mut report);
    prom::check(&ctx, &mut report);
    fly::check(&ctx, &mut report);
    configs::check(&ctx, &renders, &mut report);
    println!("deploy_checks={} failed={}", report.checks, report.failed.len());
    if !report.failed.is_empty() {
        bail!("{} deploy check(s) failed: {}", report.failed.len(), report.failed.join(", "));
    }
    Ok(())
}
