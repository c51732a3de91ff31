//! Building the WASM edge components in `edge-components/components` (their own cargo
//! workspace).
//!
//! Two routes, picked in this order:
//! 1. rustup's `wasm32-wasip2` target, when it is installed (a normal developer machine):
//!    `cargo build --target wasm32-wasip2`.
//! 2. Debian's Rust (`rustc-web`), which can build `std` for `wasm32-wasip1` from source
//!    (`rust-web-src`) and link a component with `wasm-component-ld` (from `rust-web-llvm`)
//!    against `wasi-libc` using `lld-<LLVM major>`. The packages are installed with apt-get
//!    when running as root; otherwise the exact command is printed.
//!
//! Each component is built on its own (`-p`) so features do not unify across them: the
//! `validation` component must import nothing but WASI. The results are copied to
//! `edge-components/components/target/wasm/<component-id>.wasm`, where
//! `edge-components/spin.toml` and the edge host expect them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::prereq::{self, step};

/// The components, by component id (the crate name; the library file uses `_`).
pub(crate) const COMPONENTS: &[&str] = &["validation", "edge", "pages"];

fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or_else(|| here.to_path_buf())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn has_rustup_wasip2() -> bool {
    output(Command::new("rustup").args(["target", "list", "--installed"]))
        .is_some_and(|s| s.lines().any(|l| l.trim() == "wasm32-wasip2"))
}

fn dpkg_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

/// Installs those of `pkgs` that are not installed yet.
fn apt_install(pkgs: &[String]) -> anyhow::Result<()> {
    let missing: Vec<&str> =
        pkgs.iter().map(String::as_str).filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    prereq::apt(&missing, "the WASM build")
}

/// Whether `/usr/bin/rustc` is recent enough to link components (1.85 is not).
fn rustc_web_is_current() -> bool {
    let Some(v) = output(Command::new("/usr/bin/rustc").arg("--version")) else {
        return false;
    };
    // "rustc 1.96.0 (...)"
    let minor = v.split_whitespace().nth(1).and_then(|ver| ver.split('.').nth(1));
    minor.and_then(|m| m.parse::<u32>().ok()).is_some_and(|m| m >= 90)
}

fn llvm_major() -> anyhow::Result<String> {
    let vv = output(Command::new("/usr/bin/rustc").arg("-vV"))
        .context("run /usr/bin/rustc -vV (is rustc-web installed?)")?;
    let line = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .context("find the LLVM version in /usr/bin/rustc -vV")?;
    let major = line.trim().split('.').next().unwrap_or("").to_owned();
    if major.is_empty() || !major.bytes().all(|b| b.is_ascii_digit()) {
        bail!("unexpected LLVM version `{}`", line.trim());
    }
    Ok(major)
}

/// Removes what the outer `cargo run` put in the environment, so the inner cargo sees only
/// what we set.
fn clean_env(cmd: &mut Command) {
    for key in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "CARGO_MAKEFLAGS",
        "CARGO",
    ] {
        cmd.env_remove(key);
    }
}

/// Builds every component under `edge-components/components` and returns the directory
/// holding the `.wasm` files.
pub(crate) fn build_components(release: bool) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let dir = root.join("edge-components/components");
    let target_dir = dir.join("target");
    let profile = if release { "release" } else { "debug" };
    let out_dir = target_dir.join("wasm");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;

    let (triple, mut base) = if has_rustup_wasip2() {
        step("using rustup's wasm32-wasip2 target");
        let mut c = Command::new("cargo");
        clean_env(&mut c);
        c.args(["build", "--target", "wasm32-wasip2"]);
        ("wasm32-wasip2", c)
    } else {
        step("rustup has no wasm32-wasip2 target; using Debian's rustc-web with build-std");
        // Since 1.96, wasm-component-ld ships in rust-web-llvm (a Recommends of rustc-web,
        // which --no-install-recommends skips). Package lists older than the machine's
        // security updates know only rustc-web 1.85 and no rust-web-llvm, so the first
        // install fails and apt_install refreshes the lists.
        let mut pkgs: Vec<String> =
            ["rustc-web", "cargo-web", "rust-web-src", "rust-web-llvm", "wasi-libc"]
                .map(String::from)
                .to_vec();
        apt_install(&pkgs)?;
        let component_ld = "/usr/lib/rustlib/x86_64-unknown-linux-gnu/bin/wasm-component-ld";
        if !Path::new(component_ld).exists() || !rustc_web_is_current() {
            // An older rustc-web was installed before; bring the four Rust packages to
            // one current release.
            let rust: Vec<&str> = pkgs[..4].iter().map(String::as_str).collect();
            prereq::apt_upgrade(&rust, "linking WASM components (rustc-web too old)")?;
        }
        let major = llvm_major()?;
        step(&format!("Debian rustc uses LLVM {major}; need lld-{major}"));
        pkgs.push(format!("lld-{major}"));
        apt_install(&pkgs)?;
        let wasm_ld = format!("/usr/lib/llvm-{major}/bin/wasm-ld");
        for p in [component_ld, wasm_ld.as_str(), "/usr/lib/wasm32-wasi/crt1-reactor.o"] {
            if !Path::new(p).exists() {
                bail!("{p} is missing although the packages are installed");
            }
        }
        let rustflags = format!(
            "-C link-self-contained=no -L /usr/lib/wasm32-wasi -C linker={component_ld} \
             -C link-arg=--wasm-ld-path={wasm_ld} -C link-arg=/usr/lib/wasm32-wasi/crt1-reactor.o"
        );
        let mut c = Command::new("/usr/bin/cargo");
        clean_env(&mut c);
        c.env("RUSTC", "/usr/bin/rustc")
            .env("RUSTC_BOOTSTRAP", "1")
            .env("RUSTFLAGS", rustflags)
            .args(["build", "-Zbuild-std=std,panic_abort", "--target", "wasm32-wasip1"]);
        ("wasm32-wasip1", c)
    };
    base.current_dir(&dir).env("CARGO_TARGET_DIR", &target_dir);
    if release {
        base.arg("--release");
    }

    for name in COMPONENTS {
        step(&format!("building component `{name}` ({triple}, {profile})"));
        let mut cmd = Command::new(base.get_program());
        cmd.current_dir(&dir);
        for (k, v) in base.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.args(base.get_args()).args(["-p", name]);
        let status = cmd.status().with_context(|| format!("run cargo for {name}"))?;
        if !status.success() {
            bail!("building component `{name}` failed");
        }
        let file = format!("{}.wasm", name.replace('-', "_"));
        let built = target_dir.join(triple).join(profile).join(&file);
        let dest = out_dir.join(format!("{name}.wasm"));
        std::fs::copy(&built, &dest)
            .with_context(|| format!("copy {} to {}", built.display(), dest.display()))?;
        let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
        step(&format!("  {} ({} KiB)", dest.display(), size / 1024));
    }
    Ok(out_dir)
}
