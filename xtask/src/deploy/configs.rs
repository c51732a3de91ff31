//! Each shipped production config loaded by its own binary (`--check-config`: load,
//! validate, production-mode rules; nothing is started), with its keys and secrets
//! supplied the documented way: the environment variables the Kubernetes manifests set,
//! and each Fly app's `[env]` plus its `fly secrets`. Then refused: without each secret,
//! with the example files' placeholder values, and with an unknown key, the binary must
//! exit non-zero naming what is wrong.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use base64::Engine as _;
use serde_json::Value;

use super::k8s::Renders;
use super::yaml::{at, str_at};
use super::{Ctx, Report};

struct Service {
    name: &'static str,
    binary: &'static str,
    deployment: &'static str,
    config: &'static str,
}

const SERVICES: &[Service] = &[
    Service {
        name: "core",
        binary: "tessera-core",
        deployment: "tessera-core",
        config: "deploy/production/core.toml",
    },
    Service {
        name: "router",
        binary: "tessera-router",
        deployment: "tessera-router",
        config: "deploy/production/router.toml",
    },
    Service {
        name: "edge",
        binary: "tessera-edge",
        deployment: "tessera-edge",
        config: "deploy/production/edge.toml",
    },
];

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Fresh keys and secrets in the formats the services expect (never the examples').
struct Material {
    identity_public: String,
    edge_public: String,
    edge_signing: String,
    watermark_public: String,
    watermark_signing: String,
    /// The edges' credential for the cores (the same value on both sides).
    service_credential: String,
}

impl Material {
    fn new() -> Material {
        let seed = |kid: &str| -> (String, String) {
            let mut s = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut s);
            let key = ed25519_dalek::SigningKey::from_bytes(&s);
            (format!("{kid}:{}", b64(key.verifying_key().as_bytes())), format!("{kid}:{}", b64(&s)))
        };
        let (identity_public, _) = seed("issuer-2027-1");
        let (edge_public, edge_signing) = seed("edge-us-east-1");
        let (watermark_public, watermark_signing) = seed("wm-2027-1");
        Material {
            identity_public,
            edge_public,
            edge_signing,
            watermark_public,
            watermark_signing,
            service_credential: Material::random(),
        }
    }

    fn random() -> String {
        let mut s = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut s);
        b64(&s)
    }

    /// A valid value for the configuration the manifests take from `source` (a Secret or
    /// ConfigMap key).
    fn value_for(&self, key: &str) -> String {
        match key {
            "identity-keys" => self.identity_public.clone(),
            "edge-public-keys" => self.edge_public.clone(),
            "queue-signing-key" => self.edge_signing.clone(),
            "watermark-keys" => self.watermark_public.clone(),
            "queue-watermark-signing-key" => self.watermark_signing.clone(),
            "edge-service-credential" | "service-credential" => self.service_credential.clone(),
            // A fresh NKey user seed (`SU...`) for each service's NATS user.
            "nats-nkey-seed" => nkeys::KeyPair::new_user().seed().unwrap_or_default(),
            "payments-secret-key" => format!("sk_live_{}", Material::random()),
            "payments-webhook-secret" => format!("whsec_{}", Material::random()),
            _ => Material::random(),
        }
    }
}

/// How a Deployment's container gets each variable: literal, or from a ConfigMap or
/// Secret key (`(kind, name, key)`).
enum Source {
    Literal(String),
    Ref { kind: &'static str, name: String, key: String },
}

fn deployment_env(objs: &[Value], deployment: &str) -> BTreeMap<String, Source> {
    let mut out = BTreeMap::new();
    let Some(dep) = Renders::find(objs, "Deployment", deployment) else { return out };
    for c in
        at(dep, "spec.template.spec.containers").and_then(Value::as_array).into_iter().flatten()
    {
        for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
            let Some(name) = str_at(e, "name") else { continue };
            let src = if let Some(v) = str_at(e, "value") {
                Source::Literal(v.to_owned())
            } else if let Some(r) = at(e, "valueFrom.configMapKeyRef") {
                Source::Ref {
                    kind: "ConfigMap",
                    name: str_at(r, "name").unwrap_or("").to_owned(),
                    key: str_at(r, "key").unwrap_or("").to_owned(),
                }
            } else if let Some(r) = at(e, "valueFrom.secretKeyRef") {
                Source::Ref {
                    kind: "Secret",
                    name: str_at(r, "name").unwrap_or("").to_owned(),
                    key: str_at(r, "key").unwrap_or("").to_owned(),
                }
            } else {
                continue;
            };
            out.insert(name.to_owned(), src);
        }
    }
    out
}

/// The value an object of the render holds for `key` (Secrets are base64).
pub(crate) fn rendered_value(objs: &[Value], kind: &str, name: &str, key: &str) -> Option<String> {
    let o = Renders::find(objs, kind, name)?;
    if let Some(v) = o.get("data").and_then(|d| d.get(key)).and_then(Value::as_str) {
        return Some(if kind == "Secret" {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v).ok()?).ok()?
        } else {
            v.to_owned()
        });
    }
    o.get("stringData").and_then(|d| d.get(key)).and_then(Value::as_str).map(str::to_owned)
}

struct Run {
    ok: bool,
    output: String,
}

fn run(ctx: &Ctx, svc: &Service, env: &BTreeMap<String, String>) -> Run {
    let bin: PathBuf = ctx.bin_dir.join(svc.binary);
    let mut cmd = Command::new(&bin);
    cmd.arg("--config").arg(ctx.path(svc.config)).arg("--check-config");
    cmd.current_dir(ctx.scratch.path());
    // Only what the test sets: nothing from the developer's shell leaks in.
    for (k, _) in std::env::vars() {
        if k.starts_with("TESSERA_") || k.starts_with("SPIN_VARIABLE_") || k == "FDB_CLUSTER_FILE" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env);
    match cmd.output() {
        Ok(o) => Run {
            ok: o.status.success(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&o.stdout)
            ),
        },
        Err(e) => Run { ok: false, output: format!("could not run {}: {e}", bin.display()) },
    }
}

/// The NATS CA file a service's production config names.
fn nats_ca_file(ctx: &Ctx, svc: &Service) -> Option<String> {
    let cfg: toml::Table = ctx.read(svc.config).ok()?.parse().ok()?;
    let v = match svc.name {
        "edge" => cfg.get("nats_ca_file"),
        _ => cfg.get("nats").and_then(|n| n.get("ca_file")),
    };
    v.and_then(|v| v.as_str()).map(str::to_owned)
}

/// The variable that overrides it.
fn nats_ca_var(svc: &Service) -> String {
    match svc.name {
        "edge" => "TESSERA_EDGE__NATS_CA_FILE".to_owned(),
        name => format!("TESSERA_{}__NATS__CA_FILE", name.to_ascii_uppercase()),
    }
}

/// Paths the production configs name that do not exist on a build machine, pointed at
/// scratch copies (the cluster file is the example of deploy/fdb, the NATS CA a throwaway
/// one).
fn machine_env(ctx: &Ctx, svc: &Service) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    // The NATS CA only where the config names one (a config without it must stand alone).
    if nats_ca_file(ctx, svc).is_some() {
        let ca = super::nats::certs(ctx).map(|d| d.join("ca.crt").display().to_string());
        let ca = ca.unwrap_or_else(|e| format!("(no throwaway CA: {e:#})"));
        env.insert(nats_ca_var(svc), ca);
    }
    if svc.name == "core" {
        let file = ctx.scratch.path().join("fdb.cluster");
        let _ = std::fs::copy(ctx.path("deploy/fdb/fdb.cluster"), &file);
        env.insert("TESSERA_CORE__STORE__FDB_CLUSTER_FILE".into(), file.display().to_string());
        env.insert(
            "TESSERA_CORE__BUS__PROJECTION_DIR".into(),
            ctx.scratch.path().join("projection").display().to_string(),
        );
    }
    if svc.name == "edge" {
        env.insert(
            "TESSERA_EDGE__MANIFEST".into(),
            ctx.path("edge-components/spin.toml").display().to_string(),
        );
        env.insert(
            "TESSERA_EDGE__COMPILE_CACHE_DIR".into(),
            ctx.scratch.path().join("compile-cache").display().to_string(),
        );
    }
    if svc.name == "router" {
        env.insert(
            "TESSERA_ROUTER__STATE_FILE".into(),
            ctx.scratch.path().join("router-state.json").display().to_string(),
        );
    }
    env
}

/// The key a refusal must name: the config path (`payments.secret_key`) or the
/// variable itself; for an entry of a map (`service_credentials.edge`), a refusal of the
/// map itself (`` `service_credentials` ``: it holds no entry at all).
fn names(output: &str, var: &str) -> bool {
    let path = var
        .strip_prefix("SPIN_VARIABLE_")
        .map(str::to_ascii_lowercase)
        .or_else(|| {
            var.split_once("__").map(|(_, rest)| rest.to_ascii_lowercase().replace("__", "."))
        })
        .unwrap_or_default();
    let map = path.rsplit_once('.').map(|(m, _)| format!("`{m}`"));
    output.contains(var)
        || (!path.is_empty() && output.contains(&path))
        || map.is_some_and(|m| output.contains(&m))
}

fn check_service(
    ctx: &Ctx,
    renders: &Renders,
    svc: &Service,
    material: &Material,
    report: &mut Report,
) {
    let Some(objs) = renders.objects.get("deploy/k8s/overlays/us-east") else {
        report.check(
            &format!("{} production config", svc.name),
            Err(anyhow::anyhow!("the us-east overlay did not render")),
        );
        return;
    };
    let sources = deployment_env(objs, svc.deployment);
    let mut good = machine_env(ctx, svc);
    let mut example = machine_env(ctx, svc);
    let mut secrets = Vec::new();
    for (var, src) in &sources {
        match src {
            Source::Literal(v) => {
                good.insert(var.clone(), v.clone());
                example.insert(var.clone(), v.clone());
            }
            Source::Ref { kind, name, key } => {
                let rendered = rendered_value(objs, kind, name, key).unwrap_or_default();
                example.insert(var.clone(), rendered.clone());
                if *kind == "ConfigMap" && name.starts_with("tessera-region") {
                    good.insert(var.clone(), rendered);
                } else {
                    good.insert(var.clone(), material.value_for(key));
                    secrets.push(var.clone());
                }
            }
        }
    }
    let base = format!("{} production config ({})", svc.name, svc.config);
    let ok = run(ctx, svc, &good);
    report.check(
        &format!("{base} loads with the manifests' variables"),
        if ok.ok { Ok(()) } else { Err(anyhow::anyhow!("{}", ok.output.trim())) },
    );
    for var in &secrets {
        let mut without = good.clone();
        without.remove(var);
        let r = run(ctx, svc, &without);
        report.check(
            &format!("{base} refused without {var}"),
            if r.ok {
                Err(anyhow::anyhow!("it started without {var}"))
            } else if !names(&r.output, var) {
                Err(anyhow::anyhow!("the refusal does not name {var}: {}", r.output.trim()))
            } else {
                Ok(())
            },
        );
    }
    let r = run(ctx, svc, &example);
    report.check(
        &format!("{base} refused with the example files' placeholder values"),
        if r.ok { Err(anyhow::anyhow!("it accepted the CHANGE_ME placeholders")) } else { Ok(()) },
    );
    let mut unknown = good.clone();
    let var = format!("TESSERA_{}__NO_SUCH_SETTING", svc.name.to_ascii_uppercase());
    unknown.insert(var.clone(), "1".into());
    let r = run(ctx, svc, &unknown);
    report.check(
        &format!("{base} refused with an unknown key"),
        if r.ok {
            Err(anyhow::anyhow!("it accepted {var}"))
        } else if !r.output.contains("no_such_setting") && !r.output.contains(&var) {
            Err(anyhow::anyhow!("the refusal does not name the key: {}", r.output.trim()))
        } else {
            Ok(())
        },
    );
}

/// Each Fly app's `[env]` and `fly secrets` over the image's config.
fn check_fly(ctx: &Ctx, material: &Material, report: &mut Report) {
    for file in super::fly::files(ctx) {
        let Ok(t) = ctx.read(&file).and_then(|s| Ok(s.parse::<toml::Table>()?)) else { continue };
        let app = t.get("app").and_then(|a| a.as_str()).unwrap_or("");
        let svc = match app {
            "tessera-edge" => &SERVICES[2],
            "tessera-router" => &SERVICES[1],
            a if a.starts_with("tessera-core-") => &SERVICES[0],
            _ => continue,
        };
        let mut env = machine_env(ctx, svc);
        for (k, v) in t.get("env").and_then(|e| e.as_table()).into_iter().flatten() {
            if let Some(v) = v.as_str() {
                env.insert(k.clone(), v.to_owned());
            }
        }
        // Secrets that Fly writes as files ([[files]] secret_name: the cluster file, the
        // NATS CA): machine_env points at scratch ones.
        let file_secrets = super::fly::file_secrets(&t);
        for secret in super::fly::fly_secrets(app, &t) {
            if file_secrets.contains(&secret) {
                continue;
            }
            let key = match secret.as_str() {
                s if s.ends_with("IDENTITY__KEYS") || s.ends_with("IDENTITY_KEYS") => {
                    "identity-keys"
                }
                s if s.ends_with("EDGE_KEYS") || s.ends_with("QUEUE_KEYS") => "edge-public-keys",
                s if s.ends_with("WATERMARK_KEYS") => "watermark-keys",
                s if s.ends_with("WATERMARK_SIGNING_KEY") => "queue-watermark-signing-key",
                s if s.ends_with("QUEUE_SIGNING_KEY") => "queue-signing-key",
                s if s.ends_with("SERVICE_CREDENTIAL")
                    || s.ends_with("SERVICE_CREDENTIALS__EDGE") =>
                {
                    "edge-service-credential"
                }
                s if s.ends_with("NKEY_SEED") => "nats-nkey-seed",
                s if s.ends_with("SECRET_KEY") => "payments-secret-key",
                s if s.ends_with("WEBHOOK_SECRET") => "payments-webhook-secret",
                _ => "random",
            };
            env.insert(secret, material.value_for(key));
        }
        let r = run(ctx, svc, &env);
        report.check(
            &format!("{file}: {} loads with [env] and its fly secrets", svc.binary),
            if r.ok { Ok(()) } else { Err(anyhow::anyhow!("{}", r.output.trim())) },
        );
    }
}

/// What one parked long poll holds at most: its pooled instance's touched memory and the
/// request (measured 0.5-0.9 MiB).
const PARKED_POLL_BYTES: u64 = 922 * 1024;
/// What an edge needs besides: compiled components, the key-value store, the runtime.
const EDGE_BASE_BYTES: u64 = 1 << 30;

/// The edge's `[limits]` against the waiting room: a long poll is held up to
/// `queue_long_poll_max_s`, so the request timeout must outlast it, and every parked poll
/// holds a request slot and an instance, so the memory the deployments give the edge must
/// hold `concurrent_requests_max` of them.
fn edge_limits(ctx: &Ctx, renders: &Renders) -> Vec<String> {
    let mut p = Vec::new();
    let file = "deploy/production/edge.toml";
    let cfg: toml::Table = match ctx.read(file).and_then(|s| Ok(s.parse()?)) {
        Ok(t) => t,
        Err(e) => return vec![format!("{e:#}")],
    };
    let manifest: toml::Table =
        ctx.read("edge-components/spin.toml").ok().and_then(|s| s.parse().ok()).unwrap_or_default();
    let limits = cfg.get("limits").and_then(|l| l.as_table()).cloned().unwrap_or_default();
    let poll = cfg
        .get("variables")
        .and_then(|v| v.get("queue_long_poll_max_s"))
        .or_else(|| {
            manifest
                .get("variables")
                .and_then(|v| v.get("queue_long_poll_max_s"))
                .and_then(|v| v.get("default"))
        })
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<u64>().ok());
    match poll {
        None => {
            p.push("no queue_long_poll_max_s in edge-components/spin.toml or [variables]".into())
        }
        Some(poll) => {
            let need = std::time::Duration::from_secs((poll + 5).max(30));
            let timeout = limits
                .get("request_timeout")
                .and_then(|v| v.as_str())
                .and_then(|s| humantime::parse_duration(s).ok());
            match timeout {
                None => p.push(format!("{file}: [limits] request_timeout is not set")),
                Some(t) if t < need => p.push(format!(
                    "{file}: request_timeout {t:?} is shorter than {need:?}: the waiting room's long poll holds a request up to {poll} s"
                )),
                Some(_) => {}
            }
        }
    }
    // The host's defaults when unset.
    let int = |k: &str, default: u64| {
        limits.get(k).and_then(|v| v.as_integer()).map_or(default, |v| v.max(0) as u64)
    };
    let lane = limits.get("priority_header").and_then(|v| v.as_str()).unwrap_or("x");
    let reserved = if lane.trim().is_empty() { 0 } else { int("priority_requests_reserved", 64) };
    let concurrent = int("concurrent_requests_max", 256) + reserved;
    let instances = int("instances_max", 1024);
    if instances < concurrent {
        p.push(format!(
            "{file}: instances_max {instances} is below concurrent_requests_max + priority_requests_reserved ({concurrent})"
        ));
    }
    let need = concurrent * PARKED_POLL_BYTES + EDGE_BASE_BYTES;
    let mib = |b: u64| b >> 20;
    for (dir, objs) in &renders.objects {
        let Some(dep) = Renders::find(objs, "Deployment", "tessera-edge") else { continue };
        let limit = at(dep, "spec.template.spec.containers")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| str_at(c, "name") == Some("edge")))
            .and_then(|c| str_at(c, "resources.limits.memory"))
            .and_then(super::nats::quantity_bytes)
            .unwrap_or(0);
        if limit < need {
            p.push(format!(
                "{dir}: the edge's memory limit ({} MiB) does not hold {concurrent} parked long polls ({} MiB with the runtime)",
                mib(limit),
                mib(need)
            ));
        }
    }
    let fly: toml::Table =
        ctx.read("deploy/fly/edge.toml").ok().and_then(|s| s.parse().ok()).unwrap_or_default();
    let vm_memory = fly
        .get("vm")
        .and_then(|v| v.as_array())
        .and_then(|v| v.first())
        .and_then(|v| v.get("memory"))
        .and_then(|m| m.as_str())
        .and_then(super::nats::quantity_bytes)
        .unwrap_or(0);
    if vm_memory < need {
        p.push(format!(
            "deploy/fly/edge.toml: [[vm]] memory ({} MiB) does not hold {concurrent} parked long polls ({} MiB with the runtime)",
            mib(vm_memory),
            mib(need)
        ));
    }
    p
}

/// The NATS CA file each production config names is there when the service runs: a
/// volume of every region's Deployment mounts it (a Secret or ConfigMap key at that
/// path), and every Fly app of the service writes it from `[[files]]`.
fn nats_ca_mounted(ctx: &Ctx, renders: &Renders) -> Vec<String> {
    let mut p = Vec::new();
    for svc in SERVICES {
        let Some(ca) = nats_ca_file(ctx, svc) else {
            p.push(format!("{}: names no NATS CA file", svc.config));
            continue;
        };
        for (dir, objs) in &renders.objects {
            let Some(dep) = Renders::find(objs, "Deployment", svc.deployment) else { continue };
            let volumes = at(dep, "spec.template.spec.volumes").and_then(Value::as_array);
            let mounted = at(dep, "spec.template.spec.containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|c| c.get("volumeMounts").and_then(Value::as_array).into_iter().flatten())
                .any(|m| {
                    let (Some(dir), Some(name)) = (str_at(m, "mountPath"), str_at(m, "name"))
                    else {
                        return false;
                    };
                    let Some(file) = ca.strip_prefix(dir).and_then(|f| f.strip_prefix('/')) else {
                        return false;
                    };
                    let Some(v) = volumes
                        .into_iter()
                        .flatten()
                        .find(|v| str_at(v, "name") == Some(name))
                        .and_then(|v| v.get("secret").or_else(|| v.get("configMap")))
                    else {
                        return false;
                    };
                    match v.get("items").and_then(Value::as_array) {
                        Some(items) => items.iter().any(|i| str_at(i, "path") == Some(file)),
                        None => !file.contains('/'),
                    }
                });
            if !mounted {
                p.push(format!("{dir}: Deployment/{} mounts nothing at {ca}", svc.deployment));
            }
        }
    }
    for file in super::fly::files(ctx) {
        let Ok(t) = ctx.read(&file).and_then(|s| Ok(s.parse::<toml::Table>()?)) else { continue };
        let app = t.get("app").and_then(|a| a.as_str()).unwrap_or("");
        let svc = match app {
            "tessera-edge" => &SERVICES[2],
            "tessera-router" => &SERVICES[1],
            a if a.starts_with("tessera-core-") => &SERVICES[0],
            _ => continue,
        };
        let ca = t
            .get("env")
            .and_then(|e| e.get(nats_ca_var(svc)))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .or_else(|| nats_ca_file(ctx, svc))
            .unwrap_or_else(|| "(unset)".to_owned());
        let files = match t.get("files") {
            Some(toml::Value::Array(a)) => a.clone(),
            Some(v @ toml::Value::Table(_)) => vec![v.clone()],
            _ => Vec::new(),
        };
        if !files.iter().any(|f| f.get("guest_path").and_then(|g| g.as_str()) == Some(&ca)) {
            p.push(format!("{file}: no [[files]] writes the NATS CA {ca}"));
        }
    }
    p
}

pub(crate) fn check(ctx: &Ctx, renders: &Renders, report: &mut Report) {
    let material = Material::new();
    for svc in SERVICES {
        check_service(ctx, renders, svc, &material, report);
    }
    check_fly(ctx, &material, report);
    report.check_all("edge limits hold the waiting room's long polls", edge_limits(ctx, renders));
    report.check_all(
        "the NATS CA is mounted where the configs name it",
        nats_ca_mounted(ctx, renders),
    );
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn a_refusal_names_the_key_or_its_map() {
        let var = "TESSERA_CORE__SERVICE_CREDENTIALS__EDGE";
        assert!(names("refuses `service_credentials` (not set): missing", var));
        assert!(names("refuses `service_credentials.edge`: too short", var));
        assert!(!names("refuses `payments.secret_key`: missing", var));
        let var = "TESSERA_CORE__PAYMENTS__SECRET_KEY";
        assert!(!names("refuses `payments.webhook_secret`: missing", var));
        assert!(!names("refuses `payments.base_url`: plaintext", var));
        assert!(names("refuses `payments.secret_key`: missing", var));
        assert!(names("variables.watermark_keys: missing", "SPIN_VARIABLE_WATERMARK_KEYS"));
    }
}
