//! Fly.io: each `deploy/fly/*.toml` against flyctl's configuration schema (the keys of
//! its `appconfig.Config` and the fly-go types it embeds, as `fly config validate
//! --strict` reports them) and the rules `fly config validate` enforces (check types,
//! intervals, timeouts, ports on services, processes, mounts, build sources); then what
//! Tessera needs on top: checks on the port that serves them, `kill_timeout` longer than
//! the service's shutdown grace, the router's `[env]`, files and Dockerfiles that exist,
//! and `deploy/README.md` deploying every private app with `--flycast` and setting every
//! secret with `fly secrets set`.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{Ctx, Report};

/// A node of the schema.
#[derive(Clone, Copy)]
enum S {
    /// A value (string, number, boolean, or an array of them).
    Leaf,
    /// A table with these keys.
    Table(&'static [(&'static str, S)]),
    /// A table or an array of tables with these keys (flyctl accepts both forms).
    Tables(&'static [(&'static str, S)]),
    /// A table with any keys, each value of this shape.
    Map(&'static S),
}
use S::{Leaf, Map, Table, Tables};

const COMPUTE: &[(&str, S)] = &[
    ("size", Leaf),
    ("memory", Leaf),
    ("processes", Leaf),
    ("cpu_kind", Leaf),
    ("cpus", Leaf),
    ("memory_mb", Leaf),
    ("max_memory_mb", Leaf),
    ("gpus", Leaf),
    ("gpu_kind", Leaf),
    ("host_dedication_id", Leaf),
    ("persist_rootfs", Leaf),
    ("kernel_args", Leaf),
];
const CONCURRENCY: &[(&str, S)] = &[("type", Leaf), ("hard_limit", Leaf), ("soft_limit", Leaf)];
const TLS_OPTIONS: &[(&str, S)] =
    &[("alpn", Leaf), ("versions", Leaf), ("default_self_signed", Leaf)];
const HTTP_OPTIONS: &[(&str, S)] = &[
    ("compress", Leaf),
    ("response", Table(&[("headers", Map(&Leaf)), ("pristine", Leaf)])),
    ("h2_backend", Leaf),
    ("idle_timeout", Leaf),
    ("headers_read_timeout", Leaf),
    ("replay_cache", Leaf),
];
/// `[[services.http_checks]]` and `[[http_service.checks]]`: no `port` (they probe the
/// service's internal port).
const SERVICE_HTTP_CHECK: &[(&str, S)] = &[
    ("interval", Leaf),
    ("timeout", Leaf),
    ("grace_period", Leaf),
    ("method", Leaf),
    ("path", Leaf),
    ("protocol", Leaf),
    ("tls_skip_verify", Leaf),
    ("tls_server_name", Leaf),
    ("headers", Map(&Leaf)),
];
const SERVICE_TCP_CHECK: &[(&str, S)] =
    &[("interval", Leaf), ("timeout", Leaf), ("grace_period", Leaf)];
const MACHINE_CHECK: &[(&str, S)] = &[
    ("command", Leaf),
    ("image", Leaf),
    ("entrypoint", Leaf),
    ("kill_signal", Leaf),
    ("kill_timeout", Leaf),
];
/// `[checks.<name>]`: these may name a port.
const TOPLEVEL_CHECK: &[(&str, S)] = &[
    ("port", Leaf),
    ("type", Leaf),
    ("interval", Leaf),
    ("timeout", Leaf),
    ("grace_period", Leaf),
    ("method", Leaf),
    ("path", Leaf),
    ("protocol", Leaf),
    ("tls_skip_verify", Leaf),
    ("tls_server_name", Leaf),
    ("headers", Map(&Leaf)),
    ("processes", Leaf),
];
const PORT: &[(&str, S)] = &[
    ("port", Leaf),
    ("start_port", Leaf),
    ("end_port", Leaf),
    ("handlers", Leaf),
    ("force_https", Leaf),
    ("tls_options", Table(TLS_OPTIONS)),
    ("http_options", Table(HTTP_OPTIONS)),
    ("proxy_proto_options", Table(&[("version", Leaf)])),
];
const SERVICE: &[(&str, S)] = &[
    ("protocol", Leaf),
    ("internal_port", Leaf),
    ("auto_stop_machines", Leaf),
    ("auto_start_machines", Leaf),
    ("min_machines_running", Leaf),
    ("ports", Tables(PORT)),
    ("concurrency", Table(CONCURRENCY)),
    ("tcp_checks", Tables(SERVICE_TCP_CHECK)),
    ("http_checks", Tables(SERVICE_HTTP_CHECK)),
    ("machine_checks", Tables(MACHINE_CHECK)),
    ("processes", Leaf),
];
const HTTP_SERVICE: &[(&str, S)] = &[
    ("internal_port", Leaf),
    ("force_https", Leaf),
    ("auto_stop_machines", Leaf),
    ("auto_start_machines", Leaf),
    ("min_machines_running", Leaf),
    ("processes", Leaf),
    ("concurrency", Table(CONCURRENCY)),
    ("tls_options", Table(TLS_OPTIONS)),
    ("http_options", Table(HTTP_OPTIONS)),
    ("checks", Tables(SERVICE_HTTP_CHECK)),
    ("machine_checks", Tables(MACHINE_CHECK)),
];
const TOP: &[(&str, S)] = &[
    ("app", Leaf),
    ("primary_region", Leaf),
    ("kill_signal", Leaf),
    ("kill_timeout", Leaf),
    ("swap_size_mb", Leaf),
    ("console_command", Leaf),
    (
        "experimental",
        Table(&[
            ("cmd", Leaf),
            ("entrypoint", Leaf),
            ("exec", Leaf),
            ("auto_rollback", Leaf),
            ("enable_consul", Leaf),
            ("enable_etcd", Leaf),
            ("lazy_load_images", Leaf),
            ("machine_config", Leaf),
            ("attached", Table(&[("secrets", Table(&[("export", Map(&Leaf))]))])),
        ]),
    ),
    (
        "build",
        Table(&[
            ("builder", Leaf),
            ("args", Map(&Leaf)),
            ("buildpacks", Leaf),
            ("image", Leaf),
            ("settings", Map(&Leaf)),
            ("builtin", Leaf),
            ("dockerfile", Leaf),
            ("ignorefile", Leaf),
            ("build-target", Leaf),
            ("compose", Table(&[("file", Leaf)])),
            ("compression", Leaf),
            ("compression_level", Leaf),
        ]),
    ),
    (
        "deploy",
        Table(&[
            ("strategy", Leaf),
            ("max_unavailable", Leaf),
            ("wait_timeout", Leaf),
            ("release_command", Leaf),
            ("release_command_timeout", Leaf),
            ("release_command_vm", Table(COMPUTE)),
            ("seed_command", Leaf),
        ]),
    ),
    ("env", Map(&Leaf)),
    ("processes", Map(&Leaf)),
    (
        "mounts",
        Tables(&[
            ("source", Leaf),
            ("destination", Leaf),
            ("initial_size", Leaf),
            ("snapshot_retention", Leaf),
            ("scheduled_snapshots", Leaf),
            ("auto_extend_size_threshold", Leaf),
            ("auto_extend_size_increment", Leaf),
            ("auto_extend_size_limit", Leaf),
            ("processes", Leaf),
        ]),
    ),
    ("http_service", Table(HTTP_SERVICE)),
    ("services", Tables(SERVICE)),
    ("checks", Map(&Table(TOPLEVEL_CHECK))),
    (
        "files",
        Tables(&[
            ("guest_path", Leaf),
            ("local_path", Leaf),
            ("secret_name", Leaf),
            ("raw_value", Leaf),
            ("processes", Leaf),
        ]),
    ),
    ("host_dedication_id", Leaf),
    ("machine_config", Leaf),
    ("container", Leaf),
    ("machine_checks", Tables(MACHINE_CHECK)),
    ("restart", Tables(&[("policy", Leaf), ("retries", Leaf), ("processes", Leaf)])),
    ("vm", Tables(COMPUTE)),
    (
        "statics",
        Tables(&[
            ("guest_path", Leaf),
            ("url_prefix", Leaf),
            ("tigris_bucket", Leaf),
            ("index_document", Leaf),
        ]),
    ),
    ("metrics", Tables(&[("port", Leaf), ("path", Leaf), ("https", Leaf), ("processes", Leaf)])),
];

/// Unknown keys of `v` against `schema`, as dotted paths.
fn unknown_keys(v: &toml::Value, schema: S, path: &str, out: &mut Vec<String>) {
    let join = |k: &str| if path.is_empty() { k.to_owned() } else { format!("{path}.{k}") };
    match schema {
        Leaf => {
            if v.is_table() || v.as_array().is_some_and(|a| a.iter().any(toml::Value::is_table)) {
                out.push(format!("{path} must be a value, not a table"));
            }
        }
        Map(inner) => match v.as_table() {
            Some(t) => t.iter().for_each(|(k, v)| unknown_keys(v, *inner, &join(k), out)),
            None => out.push(format!("{path} must be a table")),
        },
        Table(keys) | Tables(keys) => {
            let tables: Vec<&toml::Table> = match (v, schema) {
                (toml::Value::Table(t), _) => vec![t],
                (toml::Value::Array(a), Tables(_)) if a.iter().all(toml::Value::is_table) => {
                    a.iter().filter_map(toml::Value::as_table).collect()
                }
                _ => {
                    out.push(format!("{path} must be a table"));
                    return;
                }
            };
            for t in tables {
                for (k, v) in t {
                    match keys.iter().find(|(name, _)| name == k) {
                        Some((_, s)) => unknown_keys(v, *s, &join(k), out),
                        None => out.push(format!("unrecognized key {}", join(k))),
                    }
                }
            }
        }
    }
}

/// A Fly duration: `"30s"`, `"5m"` (Go syntax) or a number of seconds.
fn duration(v: &toml::Value) -> Option<Duration> {
    match v {
        toml::Value::Integer(n) => u64::try_from(*n).ok().map(Duration::from_secs),
        toml::Value::String(s) => humantime::parse_duration(s).ok(),
        _ => None,
    }
}

fn tables(v: Option<&toml::Value>) -> Vec<&toml::Table> {
    match v {
        Some(toml::Value::Table(t)) => vec![t],
        Some(toml::Value::Array(a)) => a.iter().filter_map(toml::Value::as_table).collect(),
        _ => Vec::new(),
    }
}

fn size_gb(s: &str) -> Option<f64> {
    let s = s.trim().to_ascii_lowercase();
    let (n, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| s.split_at(i))
        .unwrap_or((&s, "gb"));
    let n: f64 = n.parse().ok()?;
    match unit {
        "gb" | "g" => Some(n),
        "mb" | "m" => Some(n / 1024.0),
        _ => None,
    }
}

/// flyctl's own validations (`fly config validate`), the ones our files can trip.
fn flyctl_rules(t: &toml::Table) -> Vec<String> {
    let mut p = Vec::new();
    for (name, c) in t.get("checks").and_then(|c| c.as_table()).into_iter().flatten() {
        let c = c.as_table().cloned().unwrap_or_default();
        match c.get("type").and_then(|v| v.as_str()) {
            Some("http" | "tcp") => {}
            _ => p.push(format!("check {name}: type must be http or tcp")),
        }
        if c.get("port").is_none() {
            p.push(format!("check {name}: a top-level check needs its port"));
        }
        if let Some(i) = c.get("interval").and_then(duration)
            && i < Duration::from_secs(2)
        {
            p.push(format!("check {name}: interval {i:?} is under the 2 s minimum"));
        }
        if let Some(d) = c.get("timeout").and_then(duration)
            && d > Duration::from_secs(60)
        {
            p.push(format!("check {name}: timeout {d:?} is over the 60 s maximum"));
        }
    }
    let processes: BTreeSet<String> = t
        .get("processes")
        .and_then(|p| p.as_table())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    let mut services = tables(t.get("services"));
    if let Some(h) = t.get("http_service").and_then(|h| h.as_table()) {
        services.push(h);
    }
    for s in services {
        let listed: Vec<String> = s
            .get("processes")
            .and_then(|p| p.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        if !processes.is_empty() && listed.is_empty() {
            p.push("a service sets no processes but the app defines [processes]".into());
        }
        for l in &listed {
            if !processes.contains(l) {
                p.push(format!("a service names process {l}, which [processes] does not define"));
            }
        }
        let is_http_service = s.contains_key("force_https") || s.contains_key("checks");
        if !is_http_service && tables(s.get("ports")).is_empty() {
            p.push("a [[services]] exposes no port".into());
        }
        for key in ["http_checks", "tcp_checks", "checks"] {
            for c in tables(s.get(key)) {
                for (f, zero_ok) in
                    [("interval", false), ("timeout", false), ("grace_period", true)]
                {
                    if let Some(d) = c.get(f).and_then(duration) {
                        let too_short = (!zero_ok || !d.is_zero()) && d < Duration::from_secs(1);
                        if too_short || d > Duration::from_secs(60) {
                            p.push(format!("{key}: {f} {d:?} is outside 1 s..60 s"));
                        }
                    }
                }
            }
        }
    }
    let mounts = tables(t.get("mounts"));
    if mounts.len() > 1 {
        p.push("more than one [[mounts]]".into());
    }
    for m in mounts {
        if let Some(s) = m.get("initial_size").and_then(|s| s.as_str())
            && size_gb(s).is_none_or(|g| g < 1.0)
        {
            p.push(format!("mount initial_size {s} is under 1 GB"));
        }
    }
    if let Some(b) = t.get("build").and_then(|b| b.as_table()) {
        let n = ["image", "dockerfile", "builder", "builtin"]
            .iter()
            .filter(|k| b.contains_key(**k))
            .count();
        if n > 1 {
            p.push("[build] names more than one build strategy".into());
        }
    }
    if let Some(k) = t.get("kill_timeout")
        && duration(k).is_none_or(|d| d > Duration::from_secs(300))
    {
        p.push("kill_timeout must be a duration of at most 5 minutes".into());
    }
    p
}

/// What a Tessera app's config must hold beyond flyctl's rules.
fn tessera_rules(ctx: &Ctx, file: &str, t: &toml::Table) -> Vec<String> {
    let mut p = Vec::new();
    let dir = std::path::Path::new(file).parent().map(|d| d.to_path_buf()).unwrap_or_default();
    if let Some(df) = t.get("build").and_then(|b| b.get("dockerfile")).and_then(|d| d.as_str())
        && !ctx.root.join(&dir).join(df).is_file()
    {
        p.push(format!("[build] dockerfile {df} does not exist (relative to {})", dir.display()));
    }
    for f in tables(t.get("files")) {
        if let Some(l) = f.get("local_path").and_then(|l| l.as_str())
            && !ctx.path(l).is_file()
        {
            p.push(format!(
                "[[files]] local_path {l} does not exist (flyctl reads it from the repository root)"
            ));
        }
    }
    let kill = t.get("kill_timeout").and_then(duration);
    let app = t.get("app").and_then(|a| a.as_str()).unwrap_or("");
    let env = t.get("env").and_then(|e| e.as_table()).cloned().unwrap_or_default();
    let service_cfg = |svc: &str| -> Option<toml::Table> {
        ctx.read(&format!("deploy/production/{svc}.toml")).ok()?.parse().ok()
    };
    let port_of = |addr: Option<&str>| {
        addr.and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse::<i64>().ok())
    };
    if app == "tessera-edge" {
        let cfg = service_cfg("edge").unwrap_or_default();
        let grace = cfg.get("shutdown_grace").and_then(duration).unwrap_or_default();
        if kill.is_none_or(|k| k <= grace) {
            p.push(format!(
                "kill_timeout {kill:?} is not longer than the edge's shutdown_grace {grace:?}"
            ));
        }
        let fan = port_of(cfg.get("listen").and_then(|v| v.as_str()));
        let admin = port_of(cfg.get("admin_listen").and_then(|v| v.as_str()));
        if t.get("http_service").and_then(|h| h.get("internal_port")).and_then(|v| v.as_integer())
            != fan
        {
            p.push(format!("http_service.internal_port is not the edge's listen port {fan:?}"));
        }
        if !tables(t.get("http_service").and_then(|h| h.get("checks"))).is_empty() {
            p.push("[[http_service.checks]] probe the fan port, which has no /healthz: use [checks] on the admin port".into());
        }
        let checks = t.get("checks").and_then(|c| c.as_table()).cloned().unwrap_or_default();
        if !checks.values().any(|c| {
            c.get("port").and_then(|v| v.as_integer()) == admin
                && c.get("path").and_then(|v| v.as_str()) == Some("/healthz")
        }) {
            p.push(format!("no check of /healthz on the admin port {admin:?}"));
        }
    }
    if app.starts_with("tessera-core-") || app == "tessera-router" {
        let svc = if app == "tessera-router" { "router" } else { "core" };
        let cfg = service_cfg(svc).unwrap_or_default();
        let listen = port_of(cfg.get("listen").and_then(|v| v.as_str()));
        if !tables(t.get("services"))
            .iter()
            .any(|s| s.get("internal_port").and_then(|v| v.as_integer()) == listen)
        {
            p.push(format!("no [[services]] on the {svc}'s listen port {listen:?}"));
        }
        if env.is_empty() {
            p.push(
                "no [env]: the image's config names Kubernetes Services, which Fly does not have"
                    .into(),
            );
        }
        if kill.is_none_or(|k| k < Duration::from_secs(20)) {
            p.push(format!("kill_timeout {kill:?} is shorter than 20 s of draining"));
        }
    }
    if app.starts_with("tessera-core-") {
        let live = t
            .get("checks")
            .and_then(|c| c.as_table())
            .into_iter()
            .flatten()
            .any(|(_, c)| c.get("path").and_then(|v| v.as_str()) == Some("/livez"));
        if !live {
            p.push("no machine check on /livez (a check on /healthz restarts cores while the store recovers)".into());
        }
    }
    if app == "tessera-router" {
        for k in ["TESSERA_ROUTER__NATS__URL", "TESSERA_ROUTER__REGIONS"] {
            if !env.contains_key(k) {
                p.push(format!("[env] lacks {k}"));
            }
        }
    }
    // Fly's private addresses: flycast names resolve only for apps deployed with a
    // private IP (`fly deploy --flycast`).
    for (k, v) in &env {
        if let Some(s) = v.as_str()
            && s.contains(".flycast")
        {
            let target = s.split("://").nth(1).unwrap_or(s).split('.').next().unwrap_or("");
            if !ctx
                .path(&format!("deploy/fly/{}.toml", target.trim_start_matches("tessera-")))
                .is_file()
            {
                p.push(format!(
                    "[env] {k} names {target}.flycast, which no deploy/fly config deploys"
                ));
            }
        }
    }
    p
}

/// Every command line of the README (continuations joined).
fn readme_commands(ctx: &Ctx) -> Vec<String> {
    let text = ctx.read("deploy/README.md").unwrap_or_default();
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(body) = l.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
        } else {
            cur.push_str(l);
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// The secrets each Fly app needs: the ones the Kubernetes manifests take from Secrets and
/// the shared-keys ConfigMap (the documented way), in Fly's names, plus `[[files]]`
/// secrets.
pub(crate) fn fly_secrets(app: &str, t: &toml::Table) -> Vec<String> {
    let mut v: Vec<String> = match app {
        "tessera-edge" => [
            "SPIN_VARIABLE_IDENTITY_KEYS",
            "SPIN_VARIABLE_QUEUE_KEYS",
            "SPIN_VARIABLE_WATERMARK_KEYS",
            "SPIN_VARIABLE_QUEUE_SIGNING_KEY",
            "SPIN_VARIABLE_SHADOW_SECRET",
            "SPIN_VARIABLE_POW_SECRET",
            "SPIN_VARIABLE_SERVICE_CREDENTIAL",
            "TESSERA_EDGE__NATS_NKEY_SEED",
        ]
        .map(String::from)
        .to_vec(),
        "tessera-router" => vec!["TESSERA_ROUTER__NATS__NKEY_SEED".into()],
        a if a.starts_with("tessera-core-") => [
            "TESSERA_CORE__QUEUE__EDGE_KEYS",
            "TESSERA_CORE__PAYMENTS__SECRET_KEY",
            "TESSERA_CORE__PAYMENTS__WEBHOOK_SECRET",
            "TESSERA_CORE__TICKETS__SIGNING_SEED",
            "TESSERA_CORE__QUEUE__WATERMARK_SIGNING_KEY",
            "TESSERA_CORE__SERVICE_CREDENTIALS__EDGE",
            "TESSERA_CORE__NATS__NKEY_SEED",
        ]
        .map(String::from)
        .to_vec(),
        _ => Vec::new(),
    };
    v.extend(file_secrets(t));
    v
}

/// The secrets an app's `[[files]]` are written from (`secret_name`).
pub(crate) fn file_secrets(t: &toml::Table) -> Vec<String> {
    tables(t.get("files"))
        .iter()
        .filter_map(|f| f.get("secret_name").and_then(|s| s.as_str()).map(str::to_owned))
        .collect()
}

fn readme_rules(file: &str, t: &toml::Table, commands: &[String]) -> Vec<String> {
    let mut p = Vec::new();
    let app = t.get("app").and_then(|a| a.as_str()).unwrap_or("");
    let public = t.get("http_service").is_some();
    let deploys: Vec<&String> = commands
        .iter()
        .filter(|c| c.contains("fly deploy") && c.contains(&format!("-c {file}")))
        .collect();
    if deploys.is_empty() {
        p.push(format!("deploy/README.md never runs fly deploy -c {file}"));
    }
    if !public && !deploys.iter().all(|c| c.contains("--flycast") && c.contains("--no-public-ips"))
    {
        p.push(format!(
            "deploy/README.md deploys the private app {app} without --flycast --no-public-ips"
        ));
    }
    for secret in fly_secrets(app, t) {
        let set = commands.iter().any(|c| {
            c.contains("fly secrets set")
                && c.contains(&format!("-a {app}"))
                && c.contains(&format!("{secret}="))
        });
        if !set {
            p.push(format!("deploy/README.md has no `fly secrets set -a {app} ... {secret}=...`"));
        }
    }
    p
}

pub(crate) fn files(ctx: &Ctx) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(ctx.path("deploy/fly"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .map(|e| format!("deploy/fly/{}", e.file_name().to_string_lossy()))
        .collect();
    v.sort();
    v
}

pub(crate) fn check(ctx: &Ctx, report: &mut Report) {
    let commands = readme_commands(ctx);
    let all = files(ctx);
    if all.is_empty() {
        report.check("Fly configs", Err(anyhow::anyhow!("no deploy/fly/*.toml")));
    }
    for file in all {
        let t: toml::Table = match ctx.read(&file).and_then(|s| Ok(s.parse()?)) {
            Ok(t) => t,
            Err(e) => {
                report.check(&format!("fly strict {file}"), Err(e));
                continue;
            }
        };
        let mut unknown = Vec::new();
        unknown_keys(&toml::Value::Table(t.clone()), Table(TOP), "", &mut unknown);
        report.check_all(&format!("fly config validate --strict {file}"), unknown);
        report.check_all(&format!("fly config validate {file}"), flyctl_rules(&t));
        report.check_all(&format!("fly for tessera {file}"), tessera_rules(ctx, &file, &t));
        report.check_all(
            &format!("fly commands in deploy/README.md for {file}"),
            readme_rules(&file, &t, &commands),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        unknown_keys(&toml::Value::Table(text.parse().unwrap()), Table(TOP), "", &mut out);
        out
    }

    #[test]
    fn a_port_on_an_http_service_check_is_unknown_but_fine_on_a_top_level_check() {
        assert_eq!(
            unknown(
                "app = \"a\"\n[http_service]\ninternal_port = 8080\n[[http_service.checks]]\nport = 9190\npath = \"/healthz\"\n"
            ),
            vec!["unrecognized key http_service.checks.port".to_owned()]
        );
        assert!(unknown("app = \"a\"\n[checks.alive]\nport = 9190\ntype = \"http\"\n").is_empty());
        assert_eq!(
            unknown("[metrics]\nport = 1\nwhat = 2\n"),
            vec!["unrecognized key metrics.what".to_owned()]
        );
    }

    #[test]
    fn flyctl_rules_catch_short_intervals_and_missing_ports() {
        let t: toml::Table =
            "[checks.a]\ntype = \"http\"\ninterval = \"1s\"\n[[services]]\ninternal_port = 1\n"
                .parse()
                .unwrap();
        let p = flyctl_rules(&t);
        assert!(p.iter().any(|m| m.contains("2 s minimum")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("needs its port")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("exposes no port")), "{p:?}");
    }
}
