//! Container files (`deploy/docker/<service>.Dockerfile`): `hadolint` with no finding at
//! all, and what no linter knows: every file the runtime stage copies is produced by the
//! build stage (or is in the repository and not excluded by `.dockerignore`), the binaries
//! named are binaries of the packages built, the user is numeric, the entrypoint and its
//! config are copied in, and every path the service writes (per its production config) is
//! a declared, writable volume.

use std::collections::BTreeMap;
use std::process::Command;

use super::{Ctx, Report};

/// One image: its Dockerfile and the production config baked into it.
pub(crate) struct Image {
    pub(crate) service: &'static str,
    pub(crate) dockerfile: &'static str,
    pub(crate) config: &'static str,
}

pub(crate) const IMAGES: &[Image] = &[
    Image {
        service: "core",
        dockerfile: "deploy/docker/core.Dockerfile",
        config: "deploy/production/core.toml",
    },
    Image {
        service: "router",
        dockerfile: "deploy/docker/router.Dockerfile",
        config: "deploy/production/router.toml",
    },
    Image {
        service: "edge",
        dockerfile: "deploy/docker/edge.Dockerfile",
        config: "deploy/production/edge.toml",
    },
];

/// A parsed instruction: keyword and the rest of the (joined) line.
#[derive(Debug, Clone)]
pub(crate) struct Instr {
    pub(crate) op: String,
    pub(crate) args: String,
}

#[derive(Debug, Default)]
pub(crate) struct Stage {
    pub(crate) name: String,
    pub(crate) instrs: Vec<Instr>,
}

/// Splits a Dockerfile into stages of instructions (continuations joined, comments
/// dropped).
pub(crate) fn parse(text: &str) -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    let mut line = String::new();
    for raw in text.lines() {
        let t = raw.trim();
        if t.starts_with('#') || (t.is_empty() && line.is_empty()) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            line.push_str(body);
            line.push(' ');
            continue;
        }
        line.push_str(t);
        let full = std::mem::take(&mut line);
        let (op, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
        let op = op.to_ascii_uppercase();
        let args = args.trim().to_owned();
        if op == "FROM" {
            let name =
                args.rsplit_once(" AS ").map(|(_, n)| n.trim().to_owned()).unwrap_or_default();
            stages.push(Stage { name, instrs: Vec::new() });
        } else if let Some(stage) = stages.last_mut() {
            stage.instrs.push(Instr { op, args });
        }
    }
    stages
}

fn json_array(args: &str) -> Option<Vec<String>> {
    serde_json::from_str::<Vec<String>>(args).ok()
}

/// The flags (`--from=build`) and paths of a COPY.
fn copy_parts(args: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let mut flags = BTreeMap::new();
    let mut paths = Vec::new();
    for w in args.split_whitespace() {
        if let Some(f) = w.strip_prefix("--") {
            let (k, v) = f.split_once('=').unwrap_or((f, ""));
            flags.insert(k.to_owned(), v.to_owned());
        } else {
            paths.push(w.to_owned());
        }
    }
    (flags, paths)
}

/// `.dockerignore` patterns (only the forms the file uses: names, `dir/sub`, `**/name`,
/// `prefix*`).
fn ignored(patterns: &[String], rel: &str) -> bool {
    patterns.iter().any(|p| {
        if let Some(name) = p.strip_prefix("**/") {
            rel.split('/').any(|c| c == name)
                || (name.starts_with("*.") && rel.ends_with(&name[1..]))
        } else if let Some(prefix) = p.strip_suffix('*') {
            rel.split('/').next().is_some_and(|c| c.starts_with(prefix))
        } else {
            rel == p || rel.starts_with(&format!("{p}/"))
        }
    })
}

pub(crate) fn dockerignore(ctx: &Ctx) -> Vec<String> {
    ctx.read(".dockerignore")
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect()
}

/// Binary names of a workspace package (`[[bin]] name`), by package name.
fn package_bins(ctx: &Ctx) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let Ok(ws) = ctx.read("Cargo.toml") else { return out };
    let Ok(ws) = ws.parse::<toml::Table>() else { return out };
    let members = ws
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .cloned()
        .unwrap_or_default();
    for m in members.iter().filter_map(|m| m.as_str()) {
        let Ok(text) = ctx.read(&format!("{m}/Cargo.toml")) else { continue };
        let Ok(t) = text.parse::<toml::Table>() else { continue };
        let Some(name) = t.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str())
        else {
            continue;
        };
        let bins = t
            .get("bin")
            .and_then(|b| b.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|b| b.get("name").and_then(|n| n.as_str()).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        out.insert(name.to_owned(), bins);
    }
    out
}

/// What one image promises: its numeric user, volumes and files (for the manifests).
#[derive(Debug, Default, Clone)]
pub(crate) struct ImageFacts {
    pub(crate) uid: Option<u32>,
    pub(crate) volumes: Vec<String>,
}

pub(crate) fn facts(ctx: &Ctx, image: &Image) -> ImageFacts {
    let stages = parse(&ctx.read(image.dockerfile).unwrap_or_default());
    let mut f = ImageFacts::default();
    if let Some(last) = stages.last() {
        for i in &last.instrs {
            match i.op.as_str() {
                "USER" => f.uid = i.args.split(':').next().and_then(|u| u.parse().ok()),
                "VOLUME" => f.volumes = json_array(&i.args).unwrap_or_default(),
                _ => {}
            }
        }
    }
    f
}

/// Paths the service writes to at run time, read from its production config.
fn writable_paths(ctx: &Ctx, image: &Image) -> Vec<(String, String)> {
    let Ok(t) = ctx.read(image.config).and_then(|s| Ok(s.parse::<toml::Table>()?)) else {
        return Vec::new();
    };
    let get = |path: &str| -> Option<String> {
        path.split('.')
            .try_fold(toml::Value::Table(t.clone()), |v, k| v.get(k).cloned())
            .and_then(|v| v.as_str().map(str::to_owned))
    };
    let mut out = Vec::new();
    match image.service {
        "core" => {
            if let Some(p) = get("bus.projection_dir") {
                out.push(("bus.projection_dir".to_owned(), p));
            }
        }
        "router" => {
            if let Some(p) = get("state_file") {
                let dir = std::path::Path::new(&p).parent().map(|d| d.display().to_string());
                out.push(("state_file".to_owned(), dir.unwrap_or(p)));
            }
        }
        "edge" => match get("compile_cache_dir") {
            Some(p) => out.push(("compile_cache_dir".to_owned(), p)),
            None => out.push(("compile_cache_dir".to_owned(), "(unset)".to_owned())),
        },
        _ => {}
    }
    out
}

fn check_image(ctx: &Ctx, image: &Image, bins: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    let text = match ctx.read(image.dockerfile) {
        Ok(t) => t,
        Err(e) => return vec![e.to_string()],
    };
    let stages = parse(&text);
    let Some(runtime) = stages.last() else { return vec!["no FROM".into()] };
    let ignore = dockerignore(ctx);
    let build_runs: BTreeMap<&str, String> = stages
        .iter()
        .map(|s| {
            let runs: Vec<&str> =
                s.instrs.iter().filter(|i| i.op == "RUN").map(|i| i.args.as_str()).collect();
            (s.name.as_str(), runs.join("\n"))
        })
        .collect();
    // Binaries built: `target/release/<bin>` must be a binary of a `-p` package.
    for stage in &stages {
        for run in stage.instrs.iter().filter(|i| i.op == "RUN") {
            if !run.args.contains("cargo build") {
                continue;
            }
            let cargo_build: Vec<&str> =
                run.args.split("&&").filter(|seg| seg.contains("cargo build")).collect();
            let words: Vec<&str> =
                cargo_build.iter().flat_map(|seg| seg.split_whitespace()).collect();
            let pkgs: Vec<&str> = words.windows(2).filter(|w| w[0] == "-p").map(|w| w[1]).collect();
            for w in run.args.split_whitespace() {
                if let Some(bin) = w.strip_prefix("target/release/") {
                    let known = pkgs
                        .iter()
                        .any(|p| bins.get(*p).is_some_and(|b| b.iter().any(|b| b == bin)));
                    if !known {
                        problems.push(format!(
                            "stage {}: target/release/{bin} is not a binary of the packages built ({pkgs:?})",
                            stage.name
                        ));
                    }
                }
            }
            for p in &pkgs {
                if !bins.contains_key(*p) {
                    problems
                        .push(format!("stage {}: package {p} is not in the workspace", stage.name));
                }
            }
        }
    }
    let mut dests: Vec<String> = Vec::new();
    let mut user: Option<String> = None;
    let mut volumes: Vec<String> = Vec::new();
    let mut entry: Vec<String> = Vec::new();
    for i in &runtime.instrs {
        match i.op.as_str() {
            "COPY" => {
                let (flags, paths) = copy_parts(&i.args);
                let Some((dest, srcs)) = paths.split_last() else { continue };
                for src in srcs {
                    match flags.get("from") {
                        Some(stage) => {
                            let runs = build_runs.get(stage.as_str()).cloned().unwrap_or_default();
                            let made_by_build = runs.contains(src.as_str());
                            // The FoundationDB client package installs its library here.
                            let from_package = src == "/usr/lib/libfdb_c.so"
                                && runs.contains("foundationdb-clients");
                            if !made_by_build && !from_package {
                                problems.push(format!(
                                    "COPY --from={stage} {src}: stage {stage} never writes it"
                                ));
                            }
                        }
                        None => {
                            if !ctx.path(src).exists() {
                                problems.push(format!("COPY {src}: not in the repository"));
                            } else if ignored(&ignore, src) {
                                problems.push(format!("COPY {src}: excluded by .dockerignore"));
                            }
                        }
                    }
                    let base = std::path::Path::new(src)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if dest.ends_with('/') {
                        dests.push(format!("{dest}{base}"));
                    } else {
                        dests.push(dest.clone());
                    }
                }
            }
            "USER" => user = Some(i.args.clone()),
            "VOLUME" => volumes = json_array(&i.args).unwrap_or_default(),
            "ENTRYPOINT" => entry = json_array(&i.args).unwrap_or_default(),
            _ => {}
        }
    }
    match &user {
        Some(u) if u.split(':').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())) => {
            if u.split(':').next() == Some("0") {
                problems.push("USER is root".into());
            }
        }
        Some(u) => problems.push(format!(
            "USER {u} is not numeric uid:gid (Kubernetes cannot verify runAsNonRoot)"
        )),
        None => problems.push("no USER: the image runs as root".into()),
    }
    let copied = |p: &str| dests.iter().any(|d| p == d || p.starts_with(&format!("{d}/")));
    match entry.first() {
        Some(bin) if copied(bin) => {}
        Some(bin) => problems.push(format!("ENTRYPOINT {bin} is not copied into the image")),
        None => problems.push("no exec-form ENTRYPOINT".into()),
    }
    if let Some(cfg) = entry.windows(2).find(|w| w[0] == "--config").map(|w| w[1].clone()) {
        if !copied(&cfg) {
            problems.push(format!("ENTRYPOINT --config {cfg} is not copied into the image"));
        }
        let baked = runtime
            .instrs
            .iter()
            .any(|i| i.op == "COPY" && i.args.contains(image.config) && i.args.contains(&cfg));
        if !baked {
            problems.push(format!("{cfg} is not {}", image.config));
        }
    }
    // Every path the service writes is a declared volume created for the user.
    let runtime_runs: String = runtime
        .instrs
        .iter()
        .filter(|i| i.op == "RUN")
        .map(|i| i.args.clone())
        .collect::<Vec<_>>()
        .join("\n");
    let uid = user.as_deref().and_then(|u| u.split(':').next()).unwrap_or("");
    for (key, path) in writable_paths(ctx, image) {
        let Some(vol) = volumes.iter().find(|v| path == **v || path.starts_with(&format!("{v}/")))
        else {
            problems.push(format!("{key} = {path} ({}) is not under a VOLUME {volumes:?}: the read-only root filesystem refuses it", image.config));
            continue;
        };
        if vol != "/tmp" && !runtime_runs.contains(&format!("-o {uid}")) {
            problems.push(format!("VOLUME {vol} is not created for uid {uid}"));
        }
    }
    if !volumes.iter().any(|v| v == "/tmp") {
        problems.push("/tmp is not a declared VOLUME".into());
    }
    // The edge's components: every source in the manifest is inside what is copied.
    if image.service == "edge" {
        problems.extend(check_edge_manifest(ctx, image, &dests, &build_runs));
    }
    problems
}

fn check_edge_manifest(
    ctx: &Ctx,
    image: &Image,
    dests: &[String],
    build_runs: &BTreeMap<&str, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let Ok(cfg) = ctx.read(image.config).and_then(|s| Ok(s.parse::<toml::Table>()?)) else {
        return vec![format!("{} does not parse", image.config)];
    };
    let Some(manifest) = cfg.get("manifest").and_then(|m| m.as_str()) else {
        return vec![format!("{} names no manifest", image.config)];
    };
    let manifest_dir = std::path::Path::new(manifest)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if !dests.iter().any(|d| manifest.starts_with(&format!("{d}/")) || manifest == d) {
        problems.push(format!("manifest {manifest} is not copied into the image"));
    }
    let Ok(spin) =
        ctx.read("edge-components/spin.toml").and_then(|s| Ok(s.parse::<toml::Table>()?))
    else {
        return vec!["edge-components/spin.toml does not parse".into()];
    };
    let runs: String = build_runs.values().cloned().collect::<Vec<_>>().join("\n");
    for (id, c) in spin.get("component").and_then(|c| c.as_table()).into_iter().flatten() {
        let Some(src) = c.get("source").and_then(|s| s.as_str()) else { continue };
        let in_image = format!("{manifest_dir}/{src}");
        if !dests.iter().any(|d| in_image.starts_with(&format!("{d}/"))) {
            problems.push(format!("component {id}: {in_image} is outside what the image copies"));
        }
        let src_dir =
            std::path::Path::new(src).parent().map(|p| p.display().to_string()).unwrap_or_default();
        if !runs.contains(&format!("edge-components/{src_dir}")) {
            problems
                .push(format!("component {id}: the build never copies edge-components/{src_dir}"));
        }
    }
    problems
}

pub(crate) fn check(ctx: &Ctx, report: &mut Report) {
    let bins = package_bins(ctx);
    for image in IMAGES {
        let out = Command::new(&ctx.tools.hadolint)
            .args(["--no-color", "--failure-threshold", "info"])
            .arg(ctx.path(image.dockerfile))
            .output();
        report.check(
            &format!("hadolint {}", image.dockerfile),
            match out {
                Ok(o) if o.status.success() && o.stdout.is_empty() => Ok(()),
                Ok(o) => Err(anyhow::anyhow!("{}", String::from_utf8_lossy(&o.stdout).trim())),
                Err(e) => Err(e.into()),
            },
        );
        report.check_all(
            &format!("image contents {}", image.dockerfile),
            check_image(ctx, image, &bins),
        );
    }
    // The build context: nothing the builds need is excluded; the heavy parts are.
    let ignore = dockerignore(ctx);
    let mut problems = Vec::new();
    for must_ship in [
        "Cargo.toml",
        "Cargo.lock",
        "deploy/nats/hub.conf.tmpl",
        "deploy/nats/leaf.conf.tmpl",
        "deploy/production/core.toml",
        "edge-components/spin.toml",
    ] {
        if ignored(&ignore, must_ship) {
            problems.push(format!(".dockerignore excludes {must_ship}, which the build needs"));
        }
    }
    for must_not in [".git", "target", "edge-components/components/target", ".tessera"] {
        if !ignored(&ignore, must_not) {
            problems.push(format!(".dockerignore lets {must_not} into the build context"));
        }
    }
    report.check_all(".dockerignore", problems);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stages_and_joined_lines() {
        let s = parse("# c\nFROM a AS build\nRUN x \\\n  y\nFROM b\nUSER 1:1\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "build");
        assert_eq!(s[0].instrs[0].args, "x  y");
        assert_eq!(s[1].instrs[0].op, "USER");
    }

    #[test]
    fn dockerignore_patterns() {
        let p: Vec<String> =
            [".git", "**/target", "target-*", "deploy/k8s"].map(String::from).to_vec();
        assert!(ignored(&p, ".git"));
        assert!(ignored(&p, "edge-components/components/target"));
        assert!(ignored(&p, "target-x"));
        assert!(ignored(&p, "deploy/k8s/base"));
        assert!(!ignored(&p, "deploy/nats/hub.conf.tmpl"));
    }
}
