//! Locating (or installing) what the stack and the tests need outside cargo: `nats-server`,
//! for the FoundationDB backend's compile check `libclang`, and for the web scenario
//! Debian's `chromium` + `chromium-driver` and axe-core from npm (`npm ci`).

use std::path::Path;
use std::process::Command;

use anyhow::bail;

pub(crate) fn step(msg: &str) {
    eprintln!("==> {msg}");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

fn apt_get_install(packages: &[&str]) -> bool {
    Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success())
}

fn apt_get_update() -> anyhow::Result<()> {
    if !Command::new("apt-get").args(["update", "-q"]).status().is_ok_and(|s| s.success()) {
        bail!("apt-get update failed; check the machine's access to Debian's package mirror");
    }
    Ok(())
}

fn need_root(list: &str, why: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "{why} needs Debian packages that are missing or too old.\n    run: sudo apt-get update && sudo apt-get install -y {list}"
        );
    }
    Ok(())
}

/// Installs Debian packages when running as root, or says exactly what to run. The package
/// lists are refreshed only if the first attempt fails.
pub(crate) fn apt(packages: &[&str], why: &str) -> anyhow::Result<()> {
    let list = packages.join(" ");
    need_root(&list, why)?;
    step(&format!("installing {list} ({why})"));
    if apt_get_install(packages) {
        return Ok(());
    }
    step("package lookup failed; running apt-get update first");
    apt_get_update()?;
    if !apt_get_install(packages) {
        bail!("apt-get install -y {list} failed");
    }
    Ok(())
}

/// Refreshes the package lists, then installs (or upgrades to their newest release)
/// `packages`.
pub(crate) fn apt_upgrade(packages: &[&str], why: &str) -> anyhow::Result<()> {
    let list = packages.join(" ");
    need_root(&list, why)?;
    step(&format!("apt-get update, then upgrading {list} ({why})"));
    apt_get_update()?;
    if !apt_get_install(packages) {
        bail!("apt-get install -y {list} failed");
    }
    Ok(())
}

/// `nats-server` on PATH or in /usr/sbin.
pub(crate) fn nats_server() -> anyhow::Result<()> {
    if on_path("nats-server") || Path::new("/usr/sbin/nats-server").is_file() {
        return Ok(());
    }
    apt(&["nats-server"], "the NATS hub and leaf nodes")?;
    if !(on_path("nats-server") || Path::new("/usr/sbin/nats-server").is_file()) {
        bail!("nats-server is still missing after installing the nats-server package");
    }
    Ok(())
}

/// Debian's `chromium` and `chromium-driver` (the web scenario's browser).
pub(crate) fn chromium() -> anyhow::Result<()> {
    let have = |bin: &str| on_path(bin) || Path::new("/usr/bin").join(bin).is_file();
    if have("chromium") && have("chromedriver") {
        return Ok(());
    }
    apt(&["chromium", "chromium-driver"], "the browser of the web scenario")?;
    if !(have("chromium") && have("chromedriver")) {
        bail!("chromium or chromedriver is still missing after installing them");
    }
    Ok(())
}

/// The web scenario's npm tooling (axe-core), exactly as `e2e/web/package-lock.json` pins
/// it (`npm ci`), when it is not installed yet or the lock file changed.
pub(crate) fn web_test_tools(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("e2e").join("web");
    let lock = dir.join("package-lock.json");
    let stamp = dir.join("node_modules").join(".package-lock.json");
    let fresh = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if dir.join("node_modules/axe-core/axe.min.js").is_file()
        && matches!((fresh(&stamp), fresh(&lock)), (Some(s), Some(l)) if s >= l)
    {
        return Ok(());
    }
    if !on_path("npm") {
        apt(&["npm"], "installing axe-core for the web scenario")?;
    }
    step("installing axe-core (npm ci in e2e/web)");
    let ok = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
        .current_dir(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("npm ci in {} failed", dir.display());
    }
    Ok(())
}

/// Whether `name` is a library bindgen can load: `libclang.so*` or `libclang-<N>.so*`, not
/// `libclang-cpp` (which LLVM packages such as rust-web-llvm pull in on their own).
fn is_libclang(name: &str) -> bool {
    name.starts_with("libclang.so")
        || name.strip_prefix("libclang-").is_some_and(|rest| {
            rest.starts_with(|c: char| c.is_ascii_digit()) && rest.contains(".so")
        })
}

/// libclang (bindgen) for compiling the FoundationDB client bindings.
pub(crate) fn libclang() -> anyhow::Result<()> {
    let has_libclang = |dir: &Path| {
        dir.read_dir().ok().is_some_and(|mut r| {
            r.any(|f| f.ok().is_some_and(|f| is_libclang(&f.file_name().to_string_lossy())))
        })
    };
    let found = std::fs::read_dir("/usr/lib").ok().is_some_and(|dirs| {
        dirs.flatten().any(|d| {
            let p = d.path();
            p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("llvm-"))
                && has_libclang(&p.join("lib"))
        })
    }) || has_libclang(Path::new("/usr/lib/x86_64-linux-gnu"));
    if found {
        return Ok(());
    }
    apt(&["libclang-dev"], "compiling the FoundationDB backend (bindgen)")
}

#[cfg(test)]
mod tests {
    use super::is_libclang;

    #[test]
    fn libclang_cpp_is_not_libclang() {
        assert!(is_libclang("libclang.so"));
        assert!(is_libclang("libclang.so.1"));
        assert!(is_libclang("libclang-14.so.14.0.6"));
        assert!(is_libclang("libclang-22.so.1"));
        assert!(!is_libclang("libclang-cpp.so.14"));
        assert!(!is_libclang("libclang-cpp.so.22"));
        assert!(!is_libclang("libclangBasic.a"));
    }
}
