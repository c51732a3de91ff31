//! NATS: every server config the deployments ship, rendered as deployed (variables from
//! the pod's environment, TLS files replaced by throwaway ones), through
//! `nats-server -t`; and the limits that keep a region accepting events: every stream's
//! byte cap fits its servers' JetStream store with room (the alert fires at 80%),
//! replicas match the servers that hold them, and every leaf dials every hub server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::k8s::Renders;
use super::tools::output;
use super::yaml::{at, str_at};
use super::{Ctx, Report};

/// A stream may take this share of its servers' store: the rest is for consumers' state,
/// and the alert (`TesseraNatsJetStreamStoreFilling`) fires at 80%.
const STREAM_SHARE_MAX: f64 = 0.8;

fn certs(ctx: &Ctx) -> anyhow::Result<PathBuf> {
    let dir = ctx.scratch.path().join("nats-tls");
    if dir.join("tls.crt").exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir)?;
    output(
        Command::new(&ctx.tools.openssl)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=tessera-check-deploy",
            ])
            .arg("-keyout")
            .arg(dir.join("tls.key"))
            .arg("-out")
            .arg(dir.join("tls.crt")),
    )?;
    std::fs::copy(dir.join("tls.crt"), dir.join("ca.crt"))?;
    Ok(dir)
}

/// `nats-server -t` on `text` (written under the scratch directory) with `env`.
fn test_config(
    ctx: &Ctx,
    name: &str,
    text: &str,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let tls = certs(ctx)?;
    let store = ctx.scratch.path().join("nats-store").join(name);
    let text = text
        .replace("/etc/nats/tls", &tls.display().to_string())
        .replace("/data/jetstream", &store.display().to_string());
    let file = ctx.scratch.path().join(format!("{name}.conf"));
    std::fs::write(&file, text)?;
    let mut cmd = Command::new(&ctx.tools.nats_server);
    cmd.arg("-t").arg("-c").arg(&file).envs(env);
    let out = cmd.output()?;
    let all =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() || !all.contains("is valid") {
        bail!("{}", all.trim());
    }
    Ok(())
}

/// The number after `key:` in a NATS config (first occurrence).
pub(crate) fn number(text: &str, key: &str) -> Option<u64> {
    text.lines().map(str::trim).find_map(|l| {
        let v = l.strip_prefix(key)?.trim_start().strip_prefix(':')?.trim();
        v.trim_matches('"').parse().ok()
    })
}

/// The hub URLs a leaf config dials.
pub(crate) fn leaf_remote_urls(text: &str) -> Vec<String> {
    text.split('"').filter(|s| s.starts_with("nats-leaf://")).map(str::to_owned).collect()
}

fn config_map_file<'a>(objs: &'a [Value], name: &str, key: &str) -> Option<&'a str> {
    Renders::find_generated(objs, "ConfigMap", name)
        .and_then(|c| c.get("data"))
        .and_then(|d| d.get(key))
        .and_then(Value::as_str)
}

fn replicas(objs: &[Value], kind: &str, name: &str) -> Option<u64> {
    Renders::find(objs, kind, name).and_then(|o| at(o, "spec.replicas")).and_then(Value::as_u64)
}

fn quantity_bytes(q: &str) -> Option<u64> {
    let (n, unit) = q.find(|c: char| !c.is_ascii_digit()).map(|i| q.split_at(i)).unwrap_or((q, ""));
    let n: u64 = n.parse().ok()?;
    let mul = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "ki" | "kb" => 1 << 10,
        "mi" | "mb" => 1 << 20,
        "gi" | "gb" => 1 << 30,
        "ti" | "tb" => 1 << 40,
        _ => return None,
    };
    Some(n * mul)
}

/// A setting of the core or router: the Deployment's literal env override, else the
/// production config's value.
fn setting(
    ctx: &Ctx,
    objs: &[Value],
    deployment: &str,
    file: &str,
    svc: &str,
    key: &str,
) -> Option<toml::Value> {
    let var = format!("TESSERA_{svc}__{}", key.replace('.', "__").to_ascii_uppercase());
    let env = Renders::find(objs, "Deployment", deployment)
        .and_then(|d| at(d, "spec.template.spec.containers"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|c| c.get("env").and_then(Value::as_array).cloned().unwrap_or_default())
        .find(|e| str_at(e, "name") == Some(var.as_str()))
        .and_then(|e| str_at(&e, "value").map(str::to_owned));
    if let Some(v) = env {
        return Some(v.parse::<i64>().map(toml::Value::Integer).unwrap_or(toml::Value::String(v)));
    }
    let t: toml::Table = ctx.read(file).ok()?.parse().ok()?;
    key.split('.').try_fold(toml::Value::Table(t), |v, k| v.get(k).cloned())
}

fn k8s_limits(ctx: &Ctx, renders: &Renders) -> Vec<String> {
    let mut problems = Vec::new();
    let hub = renders.objects.get("deploy/k8s/hub").cloned().unwrap_or_default();
    let hub_replicas = replicas(&hub, "StatefulSet", "nats-hub").unwrap_or(0);
    let hub_conf = config_map_file(&hub, "nats-hub-config", "hub.conf").unwrap_or("");
    let hub_store = number(hub_conf, "max_file_store").unwrap_or(0);
    if hub_replicas < 3 {
        problems
            .push(format!("the NATS hub has {hub_replicas} servers; it must be a cluster of 3"));
    }
    for (dir, objs) in &renders.objects {
        let Some(conf) = config_map_file(objs, "nats-leaf-config", "leaf.conf") else { continue };
        let leaf_replicas = replicas(objs, "StatefulSet", "nats-leaf").unwrap_or(0);
        let Some(store) = number(conf, "max_file_store") else {
            problems.push(format!("{dir}: leaf.conf sets no max_file_store"));
            continue;
        };
        let volume = Renders::find(objs, "StatefulSet", "nats-leaf")
            .and_then(|s| at(s, "spec.volumeClaimTemplates"))
            .and_then(Value::as_array)
            .and_then(|v| v.first())
            .and_then(|v| str_at(v, "spec.resources.requests.storage"))
            .and_then(quantity_bytes)
            .unwrap_or(0);
        if volume < store {
            problems.push(format!(
                "{dir}: the leaf's volume ({volume} bytes) is smaller than max_file_store ({store})"
            ));
        }
        let max_bytes = setting(
            ctx,
            objs,
            "tessera-core",
            "deploy/production/core.toml",
            "CORE",
            "bus.stream_max_bytes",
        )
        .and_then(|v| v.as_integer())
        .unwrap_or(-1);
        if max_bytes <= 0 || max_bytes as f64 > store as f64 * STREAM_SHARE_MAX {
            problems.push(format!("{dir}: the region stream's max_bytes {max_bytes} does not fit {STREAM_SHARE_MAX} of the leaf's store {store}"));
        }
        let stream_replicas = setting(
            ctx,
            objs,
            "tessera-core",
            "deploy/production/core.toml",
            "CORE",
            "bus.stream_replicas",
        )
        .and_then(|v| v.as_integer())
        .unwrap_or(1);
        if leaf_replicas >= 3 && stream_replicas != 3 {
            problems.push(format!("{dir}: the leaf is a cluster of {leaf_replicas} but the stream has {stream_replicas} replica(s)"));
        }
        if stream_replicas as u64 > leaf_replicas {
            problems.push(format!(
                "{dir}: {stream_replicas} stream replicas on {leaf_replicas} leaf servers"
            ));
        }
        let urls = leaf_remote_urls(conf);
        for n in 0..hub_replicas {
            let name = format!("nats-hub-{n}");
            if !urls.iter().any(|u| u.contains(&format!("//{name}."))) {
                problems.push(format!("{dir}: the leaf does not dial hub server {name}"));
            }
            if Renders::find(&hub, "Service", &name).is_none() {
                problems.push(format!("deploy/k8s/hub: no Service {name} exposes hub server {n}"));
            }
        }
        if !conf.contains("tls {") || !hub_conf.contains("verify: true") {
            problems.push(format!("{dir}: the leaf link is not TLS with client certificates"));
        }
        let control_replicas = setting(
            ctx,
            objs,
            "tessera-router",
            "deploy/production/router.toml",
            "ROUTER",
            "control_replicas",
        )
        .and_then(|v| v.as_integer())
        .unwrap_or(1);
        if control_replicas as u64 != hub_replicas.min(3) {
            problems.push(format!("{dir}: the router's bucket has {control_replicas} replica(s) on a hub of {hub_replicas}"));
        }
        let control_bytes = setting(
            ctx,
            objs,
            "tessera-router",
            "deploy/production/router.toml",
            "ROUTER",
            "control_max_bytes",
        )
        .and_then(|v| v.as_integer())
        .unwrap_or(-1);
        if control_bytes <= 0 || control_bytes as f64 > hub_store as f64 * STREAM_SHARE_MAX {
            problems.push(format!("{dir}: the router's bucket cap {control_bytes} does not fit the hub's store {hub_store}"));
        }
    }
    problems
}

fn fly_limits(ctx: &Ctx) -> Vec<String> {
    let mut problems = Vec::new();
    for region in ["us-east", "eu-west"] {
        let core: toml::Table = match ctx
            .read(&format!("deploy/fly/core-{region}.toml"))
            .and_then(|s| Ok(s.parse()?))
        {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("deploy/fly/core-{region}.toml: {e}"));
                continue;
            }
        };
        let env = core.get("env").and_then(|e| e.as_table()).cloned().unwrap_or_default();
        let conf = ctx.read(&format!("deploy/fly/nats/leaf-{region}.conf")).unwrap_or_default();
        let store = number(&conf, "max_file_store").unwrap_or(0);
        let max_bytes: i64 = env
            .get("TESSERA_CORE__BUS__STREAM_MAX_BYTES")
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1);
        if max_bytes <= 0 || max_bytes as f64 > store as f64 * STREAM_SHARE_MAX {
            problems.push(format!("Fly {region}: stream max_bytes {max_bytes} does not fit {STREAM_SHARE_MAX} of the leaf's store {store}"));
        }
        if env.get("TESSERA_CORE__BUS__STREAM_REPLICAS").and_then(|v| v.as_str()) != Some("1") {
            problems.push(format!("Fly {region}: one leaf server holds the stream: TESSERA_CORE__BUS__STREAM_REPLICAS must be 1"));
        }
        let volume = ctx
            .read(&format!("deploy/fly/nats-{region}.toml"))
            .ok()
            .and_then(|s| s.parse::<toml::Table>().ok())
            .and_then(|t| {
                t.get("mounts")
                    .and_then(|m| m.as_array())
                    .and_then(|m| m.first())
                    .and_then(|m| m.get("initial_size"))
                    .and_then(|s| s.as_str())
                    .and_then(quantity_bytes)
            })
            .unwrap_or(0);
        if volume < store {
            problems.push(format!("Fly {region}: the leaf's volume ({volume} bytes) is smaller than max_file_store ({store})"));
        }
    }
    problems
}

fn alert_exists(ctx: &Ctx) -> anyhow::Result<()> {
    let rules = ctx.read("deploy/prometheus/rules.yaml")?;
    if !rules.contains("gnatsd_varz_jetstream_stats_storage")
        || !rules.contains("gnatsd_varz_jetstream_config_max_storage")
    {
        bail!("no alert on the JetStream store's fill level in deploy/prometheus/rules.yaml");
    }
    Ok(())
}

fn files_in(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

pub(crate) fn check(ctx: &Ctx, renders: &Renders, report: &mut Report) {
    // Kubernetes: the configs as the pods see them.
    for (dir, objs) in &renders.objects {
        for (cm, key, sts) in [
            ("nats-leaf-config", "leaf.conf", "nats-leaf"),
            ("nats-hub-config", "hub.conf", "nats-hub"),
        ] {
            let Some(text) = config_map_file(objs, cm, key) else { continue };
            let mut env = BTreeMap::new();
            env.insert("POD_NAME".to_owned(), format!("{sts}-0"));
            if let Some(region) = config_map_file(objs, "tessera-region", "region") {
                env.insert("REGION".to_owned(), region.to_owned());
            }
            let name = format!("{}-{key}", dir.replace('/', "_"));
            report
                .check(&format!("nats-server -t {dir} {key}"), test_config(ctx, &name, text, &env));
        }
    }
    // Fly and the local stack's rendered configs.
    for dir in ["deploy/fly/nats", "deploy/nats/local"] {
        for file in files_in(&ctx.path(dir), "conf") {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let mut env = BTreeMap::new();
            env.insert("FLY_MACHINE_ID".to_owned(), "check".to_owned());
            let name =
                file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let rel = file.strip_prefix(&ctx.root).unwrap_or(&file).display().to_string();
            report.check(
                &format!("nats-server -t {rel}"),
                test_config(ctx, &format!("{}-{name}", dir.replace('/', "_")), &text, &env)
                    .context(rel.clone()),
            );
        }
    }
    report.check_all("NATS limits (Kubernetes)", k8s_limits(ctx, renders));
    report.check_all("NATS limits (Fly)", fly_limits(ctx));
    report.check("NATS store alert", alert_exists(ctx));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nats_settings() {
        let conf = "jetstream {\n  max_file_store: 1024\n}\nleafnodes { remotes: [ { urls: [\n \"nats-leaf://a:7422\"\n \"nats-leaf://b:7422\" ] } ] }";
        assert_eq!(number(conf, "max_file_store"), Some(1024));
        assert_eq!(leaf_remote_urls(conf), vec!["nats-leaf://a:7422", "nats-leaf://b:7422"]);
        assert_eq!(quantity_bytes("20Gi"), Some(20 << 30));
        assert_eq!(quantity_bytes("20gb"), Some(20 << 30));
    }
}
