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

/// Throwaway TLS files under the scratch directory: a CA (`ca.crt`) and a certificate
/// it signed (`tls.crt`, `tls.key`) for `localhost`, `127.0.0.1` and `nats-leaf`.
pub(crate) fn certs(ctx: &Ctx) -> anyhow::Result<PathBuf> {
    let dir = ctx.scratch.path().join("nats-tls");
    if dir.join("tls.crt").exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir)?;
    let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    output(
        Command::new(&ctx.tools.openssl)
            .args(["req", "-x509", "-days", "1", "-subj", "/CN=tessera-check-deploy-ca"])
            .args(key)
            .arg("-keyout")
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(dir.join("ca.crt")),
    )?;
    output(
        Command::new(&ctx.tools.openssl)
            .args(["req", "-subj", "/CN=nats-leaf"])
            .args(key)
            .arg("-keyout")
            .arg(dir.join("tls.key"))
            .arg("-out")
            .arg(dir.join("tls.csr")),
    )?;
    std::fs::write(
        dir.join("tls.ext"),
        "subjectAltName=DNS:localhost,DNS:nats-leaf,IP:127.0.0.1\n\
         extendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n",
    )?;
    output(
        Command::new(&ctx.tools.openssl)
            .args(["x509", "-req", "-days", "1", "-CAcreateserial"])
            .arg("-in")
            .arg(dir.join("tls.csr"))
            .arg("-CA")
            .arg(dir.join("ca.crt"))
            .arg("-CAkey")
            .arg(dir.join("ca.key"))
            .arg("-extfile")
            .arg(dir.join("tls.ext"))
            .arg("-out")
            .arg(dir.join("tls.crt")),
    )?;
    Ok(dir)
}

/// `text` with the top-level block `name { ... }` left out.
fn without_block(text: &str, name: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for line in text.lines() {
        let code = line.split('#').next().unwrap_or("");
        let opens = line.strip_prefix(name).is_some_and(|r| r.trim_start().starts_with('{'));
        if depth == 0 && !opens {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        depth += code.matches('{').count();
        depth -= code.matches('}').count().min(depth);
    }
    out
}

/// The variables holding the public NKeys of the leaf's users (core, router, edge).
const USER_VARS: [&str; 3] = ["CORE_NKEY", "ROUTER_NKEY", "EDGE_NKEY"];

/// The leaf's client users on a real server: the leaf config as deployed (throwaway TLS
/// files, the JetStream store in scratch space; its cluster routes and hub link left out,
/// its own ports), with fresh user keys in `CORE_NKEY`, `ROUTER_NKEY` and `EDGE_NKEY`
/// whose seeds this check holds. Over TLS, a core's watermark reaches an edge; neither an
/// edge nor a router can publish one; the core publishes its own `region`'s events and
/// not another region's, creates its region's stream in its own domain, and may describe
/// another domain's stream but not purge it; a client without a key is refused.
fn leaf_users(
    ctx: &Ctx,
    name: &str,
    text: &str,
    env: &BTreeMap<String, String>,
    region: &str,
) -> anyhow::Result<()> {
    let tls = certs(ctx)?;
    let free_port = || -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
    };
    let port = free_port()?;
    let store = ctx.scratch.path().join("nats-users-store").join(name);
    let mut text = without_block(&without_block(text, "cluster"), "leafnodes")
        .replace("/etc/nats/tls", &tls.display().to_string())
        .replace("/data/jetstream", &store.display().to_string());
    text = text
        .lines()
        .filter(|l| !l.starts_with("http:"))
        .map(|l| if l.starts_with("port:") { format!("port: {port}") } else { l.to_owned() })
        .collect::<Vec<_>>()
        .join("\n");
    let file = ctx.scratch.path().join(format!("{name}-users.conf"));
    std::fs::write(&file, text)?;
    let mut env = env.clone();
    let mut seeds = Vec::new();
    for var in USER_VARS {
        let user = nkeys::KeyPair::new_user();
        env.insert(var.to_owned(), user.public_key());
        seeds.push(user.seed()?);
    }
    let log = ctx.scratch.path().join(format!("{name}-users.log"));
    let mut server = Command::new(&ctx.tools.nats_server)
        .arg("-c")
        .arg(&file)
        .envs(&env)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let started = std::time::Instant::now();
    let result = loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break users_behave(port, &tls.join("ca.crt"), &seeds, region);
        }
        if server.try_wait()?.is_some() || started.elapsed() > std::time::Duration::from_secs(15) {
            break Err(anyhow::anyhow!("nats-server did not start"));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = server.kill();
    let _ = server.wait();
    result.map_err(|e| {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        anyhow::anyhow!("{e:#} (server log, last lines: {:?})", tail)
    })
}

fn users_behave(port: u16, ca: &Path, seeds: &[String], region: &str) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    use std::time::Duration;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let url = format!("tls://localhost:{port}");
        let connect = |seed: Option<&String>| {
            let mut o = async_nats::ConnectOptions::new()
                .add_root_certificates(ca.to_path_buf())
                .require_tls(true)
                .connection_timeout(Duration::from_secs(3));
            if let Some(s) = seed {
                o = o.nkey(s.clone());
            }
            o.connect(url.clone())
        };
        let core = connect(Some(&seeds[0])).await.context("the core's user cannot connect")?;
        let router = connect(Some(&seeds[1])).await.context("the router's user cannot connect")?;
        let edge = connect(Some(&seeds[2])).await.context("the edge's user cannot connect")?;
        let subject = "tessera.admission.check-deploy";
        let mut at_edge = edge.subscribe("tessera.admission.*").await?;
        let mut at_core = core.subscribe("tessera.>").await?;
        edge.flush().await?;
        core.flush().await?;
        // The edge's subscription reaches the server on its own connection: the core
        // publishes until the edge hears it (3 s at most).
        let mut heard = false;
        for _ in 0..30 {
            core.publish(subject, "core".into()).await?;
            core.flush().await?;
            if let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(100), at_edge.next()).await
                && &m.payload[..] == b"core"
            {
                heard = true;
                break;
            }
        }
        if !heard {
            bail!("the edge's user did not receive the core's watermark within 3 s");
        }
        // A publish each from the edge and the router: refused (the server answers with a
        // permissions violation and routes nothing), so the core hears only its own
        // messages for the next second and a half.
        edge.publish(subject, "edge".into()).await?;
        let _ = edge.flush().await;
        router.publish(subject, "router".into()).await?;
        let _ = router.flush().await;
        // The core's own region's event goes through; another region's is refused.
        let other = if region == "check-other" { "check-another" } else { "check-other" };
        core.publish(format!("tessera.{other}.sale.opened.x"), "foreign".into()).await?;
        core.publish(format!("tessera.{region}.sale.opened.x"), "own".into()).await?;
        let _ = core.flush().await;
        let until = tokio::time::Instant::now() + Duration::from_millis(1500);
        let mut own_heard = false;
        while let Ok(Some(m)) = tokio::time::timeout_at(until, at_core.next()).await {
            match &m.payload[..] {
                b"core" => {}
                b"own" => own_heard = true,
                b"foreign" => bail!("the core's user published another region's event"),
                other => bail!(
                    "the {} user published a watermark on {subject}",
                    String::from_utf8_lossy(other)
                ),
            }
        }
        if !own_heard {
            bail!("the core's user could not publish its own region's ({region}) event");
        }
        // The JetStream API: the core may describe another domain's stream (read-only) but
        // not purge it; the router, whose subscription covers `$JS.>`, hears which got
        // through. (A domain this server does not host, so JetStream itself answers neither.)
        let mut at_router = router.subscribe(format!("$JS.{other}.API.>")).await?;
        router.flush().await?;
        let info = format!("$JS.{other}.API.STREAM.INFO.TESSERA_CHECK");
        let purge = format!("$JS.{other}.API.STREAM.PURGE.TESSERA_CHECK");
        let mut described = false;
        for _ in 0..30 {
            core.publish(purge.clone(), "purge".into()).await?;
            core.publish(info.clone(), "info".into()).await?;
            let _ = core.flush().await;
            let until = tokio::time::Instant::now() + Duration::from_millis(100);
            while let Ok(Some(m)) = tokio::time::timeout_at(until, at_router.next()).await {
                match &m.payload[..] {
                    b"info" => described = true,
                    _ => bail!("the core's user changed another domain's stream ({})", m.subject),
                }
            }
            if described {
                break;
            }
        }
        if !described {
            bail!("the core's user could not describe another domain's stream");
        }
        // Its own domain's JetStream API works: it creates its region's stream there.
        let js = async_nats::jetstream::with_domain(core.clone(), region);
        let name = format!("TESSERA_{}", region.to_ascii_uppercase().replace('-', "_"));
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name,
            subjects: vec![format!("tessera.{region}.>")],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            anyhow::anyhow!("the core's user could not create its region's stream: {e}")
        })?;
        if connect(None).await.is_ok() {
            bail!("a client without an NKey was let in");
        }
        Ok(())
    })
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

/// A StatefulSet's container variables that the render decides: literal values and
/// ConfigMap keys (a key the render lacks is left out, so the config fails to expand).
fn statefulset_env(objs: &[Value], sts: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let Some(set) = Renders::find(objs, "StatefulSet", sts) else { return env };
    for c in
        at(set, "spec.template.spec.containers").and_then(Value::as_array).into_iter().flatten()
    {
        for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
            let Some(name) = str_at(e, "name") else { continue };
            let value = if let Some(v) = str_at(e, "value") {
                Some(v.to_owned())
            } else if let Some(r) = at(e, "valueFrom.configMapKeyRef") {
                super::configs::rendered_value(
                    objs,
                    "ConfigMap",
                    str_at(r, "name").unwrap_or(""),
                    str_at(r, "key").unwrap_or(""),
                )
            } else {
                None
            };
            if let Some(v) = value {
                env.insert(name.to_owned(), v);
            }
        }
    }
    env
}

/// The `[env]` of the `deploy/fly/*.toml` whose `[[files]]` ship `rel`.
fn fly_app_env(ctx: &Ctx, rel: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for file in super::fly::files(ctx) {
        let Ok(t) = ctx.read(&file).and_then(|s| Ok(s.parse::<toml::Table>()?)) else { continue };
        let files = match t.get("files") {
            Some(toml::Value::Array(a)) => a.clone(),
            Some(v @ toml::Value::Table(_)) => vec![v.clone()],
            _ => Vec::new(),
        };
        if !files.iter().any(|f| f.get("local_path").and_then(|l| l.as_str()) == Some(rel)) {
            continue;
        }
        for (k, v) in t.get("env").and_then(|e| e.as_table()).into_iter().flatten() {
            if let Some(v) = v.as_str() {
                env.insert(k.clone(), v.to_owned());
            }
        }
    }
    env
}

fn replicas(objs: &[Value], kind: &str, name: &str) -> Option<u64> {
    Renders::find(objs, kind, name).and_then(|o| at(o, "spec.replicas")).and_then(Value::as_u64)
}

pub(crate) fn quantity_bytes(q: &str) -> Option<u64> {
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
            // The StatefulSet's environment as the pod gets it: literal values and
            // ConfigMap keys of the render (REGION, the users' public NKeys), and POD_NAME.
            let mut env = statefulset_env(objs, sts);
            env.insert("POD_NAME".to_owned(), format!("{sts}-0"));
            let name = format!("{}-{key}", dir.replace('/', "_"));
            report
                .check(&format!("nats-server -t {dir} {key}"), test_config(ctx, &name, text, &env));
            if cm == "nats-leaf-config" {
                let region = env.get("REGION").cloned().unwrap_or_default();
                report.check(
                    &format!("NATS users on a running leaf server {dir}"),
                    leaf_users(ctx, &name, text, &env, &region),
                );
            }
        }
    }
    // Fly and the local stack's rendered configs.
    for dir in ["deploy/fly/nats", "deploy/nats/local"] {
        for file in files_in(&ctx.path(dir), "conf") {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let name =
                file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let rel = file.strip_prefix(&ctx.root).unwrap_or(&file).display().to_string();
            // The `[env]` of the Fly app that ships this file, as its machine gets it.
            let mut env = fly_app_env(ctx, &rel);
            env.insert("FLY_MACHINE_ID".to_owned(), "check".to_owned());
            report.check(
                &format!("nats-server -t {rel}"),
                test_config(ctx, &format!("{}-{name}", dir.replace('/', "_")), &text, &env)
                    .context(rel.clone()),
            );
            if dir == "deploy/fly/nats" && name.starts_with("leaf-") {
                let region = name.trim_start_matches("leaf-").to_owned();
                report.check(
                    &format!("NATS users on a running leaf server {rel}"),
                    leaf_users(ctx, &format!("fly-{name}"), &text, &env, &region),
                );
            }
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

    #[test]
    fn leaves_out_a_top_level_block() {
        let conf = "port: 4222\ncluster {\n  name: x # {\n  routes: [\n    \"a\"\n  ]\n}\nleafnodes { remotes: [ { urls: [\"b\"] } ] }\njetstream {\n  domain: d\n}\n";
        let out = without_block(&without_block(conf, "cluster"), "leafnodes");
        assert_eq!(out, "port: 4222\njetstream {\n  domain: d\n}\n");
    }
}
