//! Kubernetes: every kustomization rendered with `kubectl kustomize`, validated with
//! `kubernetes-validate --strict` against the Kubernetes release we support, and checked
//! for what a schema cannot see: completeness (every ConfigMap, Secret, key, Service,
//! autoscaler target it names is in the render), security contexts matching the images,
//! writable paths mounted, probes (liveness never asks the store), autoscalers, disruption
//! budgets, spread, network policies, Service names matching the services' configs, and
//! the FoundationDB operator and SpinKube resources against their CRDs.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::docker::{self, IMAGES};
use super::tools::{KUBERNETES_VERSION, output};
use super::yaml::{self, at, id, str_at};
use super::{Ctx, Report};

/// The kustomizations that must render, and whether each is one region's cluster.
pub(crate) const KUSTOMIZATIONS: &[(&str, bool)] = &[
    ("deploy/k8s/overlays/us-east", true),
    ("deploy/k8s/overlays/eu-west", true),
    ("deploy/k8s/overlays/us-east-spinkube", true),
    ("deploy/k8s/hub", false),
];

/// Kinds `kubernetes-validate` has no schema for, checked here against their CRDs.
const CUSTOM_KINDS: &[&str] = &["FoundationDBCluster", "SpinApp"];

/// Rendered objects by kustomization.
#[derive(Default)]
pub(crate) struct Renders {
    pub(crate) objects: BTreeMap<String, Vec<Value>>,
}

impl Renders {
    /// A ConfigMap or Secret made by a kustomize generator, by the name it was given
    /// (the render appends `-<content hash>`).
    pub(crate) fn find_generated<'a>(
        objs: &'a [Value],
        kind: &str,
        base: &str,
    ) -> Option<&'a Value> {
        objs.iter().find(|o| {
            o.get("kind").and_then(Value::as_str) == Some(kind)
                && str_at(o, "metadata.name").is_some_and(|n| {
                    n == base
                        || n.strip_prefix(base).and_then(|r| r.strip_prefix('-')).is_some_and(|h| {
                            h.len() == 10 && h.chars().all(|c| c.is_ascii_alphanumeric())
                        })
                })
        })
    }

    pub(crate) fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
        objs.iter().find(|o| {
            o.get("kind").and_then(Value::as_str) == Some(kind)
                && str_at(o, "metadata.name") == Some(name)
        })
    }
}

fn render(ctx: &Ctx, dir: &str) -> anyhow::Result<(String, Vec<Value>)> {
    let text = output(Command::new(&ctx.tools.kubectl).args(["kustomize"]).arg(ctx.path(dir)))
        .with_context(|| format!("kubectl kustomize {dir}"))?;
    let docs = yaml::documents(&text)?;
    Ok((text, docs))
}

fn validate(ctx: &Ctx, dir: &str, text: &str) -> anyhow::Result<()> {
    let file = ctx.scratch.path().join(format!("{}.yaml", dir.replace('/', "_")));
    std::fs::write(&file, text)?;
    let out = Command::new(&ctx.tools.kubernetes_validate)
        .args(["--strict", "-k", KUBERNETES_VERSION, "--quiet"])
        .arg(&file)
        .output()?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let mut problems = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let custom = line.contains("Couldn't find schema")
            && CUSTOM_KINDS.iter().any(|k| line.contains(&format!("kind {k} ")));
        if !custom {
            problems.push(line.to_owned());
        }
    }
    if !out.status.success() || !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}

/// The pod template of a workload, if it is one.
fn pod_spec(obj: &Value) -> Option<&Value> {
    match obj.get("kind").and_then(Value::as_str)? {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => at(obj, "spec.template.spec"),
        _ => None,
    }
}

fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .filter_map(move |k| spec.get(k).and_then(Value::as_array))
        .flatten()
}

fn has_key(obj: &Value, key: &str) -> bool {
    ["data", "stringData", "binaryData"]
        .iter()
        .any(|d| obj.get(d).and_then(|m| m.get(key)).is_some())
}

/// A ConfigMap kept by the FoundationDB operator: `<FoundationDBCluster>-config`, with the
/// key `cluster-file`.
fn operator_config_map<'a>(objs: &'a [Value], name: &str) -> Option<&'a Value> {
    let cluster = name.strip_suffix("-config")?;
    Renders::find(objs, "FoundationDBCluster", cluster)
}

/// Every ConfigMap, Secret and key a pod, Ingress, autoscaler or SpinApp names exists.
fn completeness(objs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let check = |what: &str, kind: &str, name: &str, key: Option<&str>| -> Option<String> {
        if kind == "ConfigMap" && operator_config_map(objs, name).is_some() {
            return key
                .filter(|k| *k != "cluster-file")
                .map(|k| format!("{what}: the operator's ConfigMap {name} has no key {k}"));
        }
        match Renders::find(objs, kind, name) {
            None => Some(format!("{what}: {kind} {name} is not in the render")),
            Some(o) => key
                .filter(|k| !has_key(o, k))
                .map(|k| format!("{what}: {kind} {name} has no key {k}")),
        }
    };
    let need =
        |problems: &mut Vec<String>, what: &str, kind: &str, name: &str, key: Option<&str>| {
            problems.extend(check(what, kind, name, key));
        };
    for obj in objs {
        let me = id(obj);
        if let Some(spec) = pod_spec(obj) {
            for c in containers(spec) {
                for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(r) = at(e, "valueFrom.configMapKeyRef") {
                        need(
                            &mut problems,
                            &me,
                            "ConfigMap",
                            str_at(r, "name").unwrap_or(""),
                            str_at(r, "key"),
                        );
                    }
                    if let Some(r) = at(e, "valueFrom.secretKeyRef") {
                        need(
                            &mut problems,
                            &me,
                            "Secret",
                            str_at(r, "name").unwrap_or(""),
                            str_at(r, "key"),
                        );
                    }
                }
                for e in c.get("envFrom").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(n) = str_at(e, "configMapRef.name") {
                        need(&mut problems, &me, "ConfigMap", n, None);
                    }
                    if let Some(n) = str_at(e, "secretRef.name") {
                        need(&mut problems, &me, "Secret", n, None);
                    }
                }
            }
            for v in spec.get("volumes").and_then(Value::as_array).into_iter().flatten() {
                if let Some(cm) = v.get("configMap") {
                    let name = str_at(cm, "name").unwrap_or("");
                    let items: Vec<&str> = cm
                        .get("items")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|i| str_at(i, "key"))
                        .collect();
                    if items.is_empty() {
                        need(&mut problems, &me, "ConfigMap", name, None);
                    }
                    for k in items {
                        need(&mut problems, &me, "ConfigMap", name, Some(k));
                    }
                }
                if let Some(s) = v.get("secret") {
                    need(&mut problems, &me, "Secret", str_at(s, "secretName").unwrap_or(""), None);
                }
            }
        }
        match obj.get("kind").and_then(Value::as_str) {
            Some("Ingress") => {
                for t in at(obj, "spec.tls").and_then(Value::as_array).into_iter().flatten() {
                    need(
                        &mut problems,
                        &me,
                        "Secret",
                        str_at(t, "secretName").unwrap_or(""),
                        Some("tls.crt"),
                    );
                }
                for r in at(obj, "spec.rules").and_then(Value::as_array).into_iter().flatten() {
                    for p in at(r, "http.paths").and_then(Value::as_array).into_iter().flatten() {
                        let svc = str_at(p, "backend.service.name").unwrap_or("");
                        let spin = Renders::find(objs, "SpinApp", svc).is_some();
                        match Renders::find(objs, "Service", svc) {
                            Some(s) => {
                                if let Err(e) = service_has_port(s, at(p, "backend.service.port")) {
                                    problems.push(format!("{me}: {e}"));
                                }
                            }
                            // The spin-operator makes a Service named after the SpinApp, port 80.
                            None if spin => {
                                if at(p, "backend.service.port.number").and_then(Value::as_u64)
                                    != Some(80)
                                {
                                    problems.push(format!(
                                        "{me}: the SpinApp's Service {svc} listens on port 80"
                                    ));
                                }
                            }
                            None => {
                                problems.push(format!("{me}: Service {svc} is not in the render"))
                            }
                        }
                    }
                }
            }
            Some("HorizontalPodAutoscaler") => {
                let kind = str_at(obj, "spec.scaleTargetRef.kind").unwrap_or("");
                let name = str_at(obj, "spec.scaleTargetRef.name").unwrap_or("");
                if Renders::find(objs, kind, name).is_none() {
                    problems
                        .push(format!("{me}: scales {kind} {name}, which is not in the render"));
                }
            }
            Some("SpinApp") => {
                for v in at(obj, "spec.variables").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(r) = at(v, "valueFrom.configMapKeyRef") {
                        need(
                            &mut problems,
                            &me,
                            "ConfigMap",
                            str_at(r, "name").unwrap_or(""),
                            str_at(r, "key"),
                        );
                    }
                    if let Some(r) = at(v, "valueFrom.secretKeyRef") {
                        need(
                            &mut problems,
                            &me,
                            "Secret",
                            str_at(r, "name").unwrap_or(""),
                            str_at(r, "key"),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    problems
}

fn service_has_port(svc: &Value, port: Option<&Value>) -> anyhow::Result<()> {
    let ports = at(svc, "spec.ports").and_then(Value::as_array).cloned().unwrap_or_default();
    let ok = match port {
        Some(p) if p.get("name").is_some() => ports.iter().any(|q| q.get("name") == p.get("name")),
        Some(p) => ports.iter().any(|q| q.get("port") == p.get("number")),
        None => false,
    };
    if !ok {
        bail!("{} has no port {}", id(svc), port.map(Value::to_string).unwrap_or_default());
    }
    Ok(())
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let Some(m) = selector.get("matchLabels").and_then(Value::as_object) else { return false };
    m.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Security contexts, writable paths, resources, probes, spread, budgets, autoscalers.
fn workloads(ctx: &Ctx, objs: &[Value], region: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let images: BTreeMap<String, docker::ImageFacts> =
        IMAGES.iter().map(|i| (format!("tessera/{}", i.service), docker::facts(ctx, i))).collect();
    for obj in objs {
        let Some(spec) = pod_spec(obj) else { continue };
        let me = id(obj);
        let psc = spec.get("securityContext").cloned().unwrap_or(json!({}));
        if psc.get("runAsNonRoot") != Some(&json!(true)) {
            problems.push(format!("{me}: pod securityContext.runAsNonRoot is not true"));
        }
        if str_at(&psc, "seccompProfile.type") != Some("RuntimeDefault") {
            problems.push(format!("{me}: no RuntimeDefault seccomp profile"));
        }
        if spec.get("automountServiceAccountToken") != Some(&json!(false)) {
            problems.push(format!("{me}: mounts a service account token it does not need"));
        }
        let mounts_of = |c: &Value| -> Vec<String> {
            c.get("volumeMounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|m| str_at(m, "mountPath").map(str::to_owned))
                .collect()
        };
        for c in containers(spec) {
            let cname = format!("{me} container {}", str_at(c, "name").unwrap_or("?"));
            let sc = c.get("securityContext").cloned().unwrap_or(json!({}));
            if sc.get("allowPrivilegeEscalation") != Some(&json!(false)) {
                problems.push(format!("{cname}: allowPrivilegeEscalation is not false"));
            }
            if sc.get("readOnlyRootFilesystem") != Some(&json!(true)) {
                problems.push(format!("{cname}: root filesystem is writable"));
            }
            let drops =
                at(&sc, "capabilities.drop").and_then(Value::as_array).cloned().unwrap_or_default();
            if !drops.contains(&json!("ALL")) {
                problems.push(format!("{cname}: capabilities are not all dropped"));
            }
            if at(c, "resources.requests.cpu").is_none()
                || at(c, "resources.limits.memory").is_none()
            {
                problems.push(format!("{cname}: no cpu request or memory limit"));
            }
            let image = str_at(c, "image").unwrap_or("");
            if image.ends_with(":latest") || !image.contains(':') {
                problems.push(format!("{cname}: image {image} is not pinned to a version"));
            }
            let repo = image.split(':').next().unwrap_or("");
            if let Some(facts) = images.get(repo) {
                let uid = sc.get("runAsUser").or(psc.get("runAsUser")).and_then(Value::as_u64);
                if uid != facts.uid.map(u64::from) {
                    problems.push(format!(
                        "{cname}: runAsUser {uid:?} is not the image's user {:?}",
                        facts.uid
                    ));
                }
                let mounts = mounts_of(c);
                for v in &facts.volumes {
                    if !mounts.iter().any(|m| m == v) {
                        problems.push(format!("{cname}: the image's writable path {v} is not mounted (read-only root filesystem)"));
                    }
                }
                if at(c, "livenessProbe").is_none() || at(c, "readinessProbe").is_none() {
                    problems.push(format!("{cname}: needs a liveness and a readiness probe"));
                }
                // The core's /healthz reads the store; liveness must not restart cores
                // while FoundationDB recovers.
                if repo == "tessera/core" {
                    let live = str_at(c, "livenessProbe.httpGet.path");
                    if live != Some("/livez") {
                        problems.push(format!("{cname}: liveness probes {live:?}, which may depend on the store; use /livez"));
                    }
                    if str_at(c, "startupProbe.httpGet.path").is_some_and(|p| p != "/livez") {
                        problems.push(format!("{cname}: the startup probe depends on the store"));
                    }
                }
            }
        }
        let replicas = at(obj, "spec.replicas").and_then(Value::as_u64).unwrap_or(1);
        if replicas > 1 {
            let spread = spec
                .get("topologySpreadConstraints")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if !spread
                .iter()
                .any(|s| str_at(s, "topologyKey") == Some("topology.kubernetes.io/zone"))
            {
                problems.push(format!("{me}: not spread across zones"));
            }
            let labels = at(obj, "spec.template.metadata.labels").cloned().unwrap_or(json!({}));
            let budget = objs.iter().any(|p| {
                p.get("kind").and_then(Value::as_str) == Some("PodDisruptionBudget")
                    && at(p, "spec.selector").is_some_and(|s| labels_match(s, &labels))
            });
            if !budget {
                problems.push(format!("{me}: no PodDisruptionBudget"));
            }
        }
    }
    if region {
        for (target, needs_custom) in
            [("tessera-edge", true), ("tessera-router", false), ("tessera-core", false)]
        {
            let Some(hpa) = objs.iter().find(|o| {
                o.get("kind").and_then(Value::as_str) == Some("HorizontalPodAutoscaler")
                    && str_at(o, "spec.scaleTargetRef.name") == Some(target)
            }) else {
                // The SpinKube variant replaces the edge's Deployment (and its autoscaler).
                if Renders::find(objs, "Deployment", target).is_some() {
                    problems.push(format!("Deployment/{target}: no HorizontalPodAutoscaler"));
                }
                continue;
            };
            let metrics =
                at(hpa, "spec.metrics").and_then(Value::as_array).cloned().unwrap_or_default();
            if !metrics.iter().any(|m| str_at(m, "resource.name") == Some("cpu")) {
                problems.push(format!("{}: does not scale on CPU", id(hpa)));
            }
            if needs_custom && !metrics.iter().any(|m| str_at(m, "type") == Some("Pods")) {
                problems.push(format!("{}: does not scale on the request rate", id(hpa)));
            }
        }
    }
    problems
}

/// A default-deny policy, and every workload allowed in by some policy.
fn network_policies(objs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let policies: Vec<&Value> = objs
        .iter()
        .filter(|o| o.get("kind").and_then(Value::as_str) == Some("NetworkPolicy"))
        .collect();
    let deny = policies.iter().any(|p| {
        at(p, "spec.podSelector").is_some_and(|s| s.as_object().is_some_and(|m| m.is_empty()))
            && at(p, "spec.ingress").is_none()
            && at(p, "spec.egress").is_none()
            && at(p, "spec.policyTypes")
                .and_then(Value::as_array)
                .is_some_and(|t| t.contains(&json!("Ingress")) && t.contains(&json!("Egress")))
    });
    if !deny {
        problems.push("no default-deny NetworkPolicy (ingress and egress)".into());
    }
    for obj in objs {
        if pod_spec(obj).is_none() {
            continue;
        }
        let labels = at(obj, "spec.template.metadata.labels").cloned().unwrap_or(json!({}));
        let allowed = policies.iter().any(|p| {
            at(p, "spec.podSelector").is_some_and(|s| labels_match(s, &labels))
                && at(p, "spec.ingress").is_some()
        });
        if !allowed {
            problems.push(format!("{}: no NetworkPolicy lets anything in", id(obj)));
        }
    }
    problems
}

/// The host of a `scheme://host:port/...` URL and its port.
fn host_port(url: &str) -> Option<(String, Option<u16>)> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit('@').next()?;
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), p.parse().ok())),
        None => Some((authority.to_owned(), None)),
    }
}

/// Every in-cluster host the services' production configs (with the environment the
/// manifests set) name is a Service of the render, on a port it serves.
fn service_names(ctx: &Ctx, objs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    // (service, deployment, config keys naming hosts)
    let wanted: &[(&str, &str, &[&str])] = &[
        (
            "core",
            "tessera-core",
            &["nats.url", "notifications.smtp.host", "telemetry.otlp_endpoint"],
        ),
        ("router", "tessera-router", &["nats.url", "telemetry.otlp_endpoint", "regions"]),
        ("edge", "tessera-edge", &["variables.router_url", "nats_url", "telemetry.otlp_endpoint"]),
    ];
    for (svc, deployment, keys) in wanted {
        let Some(dep) = Renders::find(objs, "Deployment", deployment) else { continue };
        let image = IMAGES.iter().find(|i| i.service == *svc).map(|i| i.config).unwrap_or("");
        let Ok(cfg) = ctx.read(image).and_then(|s| Ok(s.parse::<toml::Table>()?)) else {
            problems.push(format!("{image} does not parse"));
            continue;
        };
        let env: BTreeMap<String, Value> = at(dep, "spec.template.spec.containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|c| c.get("env").and_then(Value::as_array).cloned().unwrap_or_default())
            .filter_map(|e| Some((str_at(&e, "name")?.to_owned(), e)))
            .collect();
        for key in *keys {
            let var = format!(
                "TESSERA_{}__{}",
                svc.to_ascii_uppercase(),
                key.replace('.', "__").to_ascii_uppercase()
            );
            let mut values: Vec<(String, Option<u16>)> = Vec::new();
            if let Some(e) = env.get(&var) {
                if let Some(v) = str_at(e, "value") {
                    values.extend(host_port(v));
                } else {
                    continue; // from a ConfigMap or Secret: checked for existence above
                }
            } else if *key == "regions" {
                for r in cfg.get("regions").and_then(|r| r.as_array()).into_iter().flatten() {
                    if let Some(u) = r.get("url").and_then(|u| u.as_str()) {
                        values.extend(host_port(u));
                    }
                }
            } else {
                let v = key
                    .split('.')
                    .try_fold(toml::Value::Table(cfg.clone()), |v, k| v.get(k).cloned());
                let port = if *key == "notifications.smtp.host" {
                    cfg.get("notifications")
                        .and_then(|n| n.get("smtp"))
                        .and_then(|s| s.get("port"))
                        .and_then(|p| p.as_integer())
                        .and_then(|p| u16::try_from(p).ok())
                } else {
                    None
                };
                match v.as_ref().and_then(|v| v.as_str()) {
                    Some(s) if *key == "notifications.smtp.host" => {
                        values.push((s.to_owned(), port))
                    }
                    Some(s) => values.extend(host_port(s)),
                    None => continue,
                }
            }
            for (host, port) in values {
                let short = host
                    .strip_suffix(".tessera.svc.cluster.local")
                    .or(host.strip_suffix(".tessera.svc"))
                    .unwrap_or(&host);
                if short.contains('.') {
                    continue; // outside the cluster
                }
                match Renders::find(objs, "Service", short) {
                    None => problems.push(format!(
                        "{image} {key} names {host}, which is no Service of the render"
                    )),
                    Some(s) => {
                        if let Some(p) = port
                            && service_has_port(s, Some(&json!({"number": p}))).is_err()
                        {
                            problems
                                .push(format!("{image} {key}: Service {short} has no port {p}"));
                        }
                    }
                }
            }
        }
    }
    problems
}

/// Field paths a FoundationDBCluster may use (from the operator's v1beta2 CRD), `*` for
/// any key. `spec.processes.*.podTemplate` and `volumeClaimTemplate` are validated as
/// Kubernetes objects.
const FDB_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata.name",
    "metadata.namespace",
    "metadata.labels.*",
    "metadata.annotations.*",
    "spec.version",
    "spec.dataCenter",
    "spec.dataHall",
    "spec.processGroupIDPrefix",
    "spec.seedConnectionString",
    "spec.routing.publicIPSource",
    "spec.routing.useDNSInClusterFile",
    "spec.routing.headlessService",
    "spec.routing.dnsDomain",
    "spec.routing.defineDNSLocalityFields",
    "spec.routing.podIPFamily",
    "spec.faultDomain.key",
    "spec.faultDomain.value",
    "spec.faultDomain.valueFrom",
    "spec.faultDomain.zoneCount",
    "spec.faultDomain.zoneIndex",
    "spec.automationOptions.replacements.enabled",
    "spec.automationOptions.replacements.maxConcurrentReplacements",
    "spec.databaseConfiguration.redundancy_mode",
    "spec.databaseConfiguration.storage_engine",
    "spec.databaseConfiguration.usable_regions",
    "spec.databaseConfiguration.logs",
    "spec.databaseConfiguration.remote_logs",
    "spec.databaseConfiguration.log_routers",
    "spec.databaseConfiguration.commit_proxies",
    "spec.databaseConfiguration.grv_proxies",
    "spec.databaseConfiguration.resolvers",
    "spec.databaseConfiguration.regions[].datacenters[].id",
    "spec.databaseConfiguration.regions[].datacenters[].priority",
    "spec.databaseConfiguration.regions[].datacenters[].satellite",
    "spec.databaseConfiguration.regions[].satellite_logs",
    "spec.databaseConfiguration.regions[].satellite_redundancy_mode",
    "spec.processCounts.storage",
    "spec.processCounts.log",
    "spec.processCounts.stateless",
    "spec.processCounts.coordinator",
    "spec.processCounts.transaction",
    "spec.processCounts.cluster_controller",
    "spec.processes.*.podTemplate",
    "spec.processes.*.volumeClaimTemplate",
    "spec.processes.*.customParameters[]",
    "spec.labels.*",
    "spec.mainContainer.enableTls",
    "spec.sidecarContainer.enableTls",
];

/// Field paths of a SpinApp (SpinKube's core.spinkube.dev/v1alpha1 CRD).
const SPINAPP_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata.name",
    "metadata.namespace",
    "metadata.labels.*",
    "metadata.annotations.*",
    "spec.image",
    "spec.executor",
    "spec.replicas",
    "spec.enableAutoscaling",
    "spec.resources.requests.*",
    "spec.resources.limits.*",
    "spec.checks.liveness.path",
    "spec.checks.readiness.path",
    "spec.podLabels.*",
    "spec.podAnnotations.*",
    "spec.serviceAnnotations.*",
    "spec.deploymentAnnotations.*",
    "spec.variables[].name",
    "spec.variables[].value",
    "spec.variables[].valueFrom.configMapKeyRef.name",
    "spec.variables[].valueFrom.configMapKeyRef.key",
    "spec.variables[].valueFrom.secretKeyRef.name",
    "spec.variables[].valueFrom.secretKeyRef.key",
    "spec.imagePullSecrets[].name",
];

/// Leaf paths of `v` (arrays as `[]`); the subtrees under `stop` prefixes are one leaf.
fn leaf_paths(v: &Value, prefix: &str, stop: &[&str], out: &mut Vec<String>) {
    if stop.iter().any(|s| matches_pattern(s, prefix)) {
        out.push(prefix.to_owned());
        return;
    }
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                leaf_paths(v, &p, stop, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for v in a {
                leaf_paths(v, &format!("{prefix}[]"), stop, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

/// A field path against a pattern: `*` stands for one key, and a trailing `.*` for any
/// key of a free-form map (label keys contain dots: `app.kubernetes.io/name`).
fn matches_pattern(pattern: &str, path: &str) -> bool {
    if let Some(map) = pattern.strip_suffix(".*")
        && !map.contains('*')
    {
        return path.strip_prefix(map).is_some_and(|rest| rest.len() > 1 && rest.starts_with('.'));
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let q: Vec<&str> = path.split('.').collect();
    p.len() == q.len() && p.iter().zip(&q).all(|(a, b)| *a == "*" || a == b)
}

fn strict_fields(obj: &Value, allowed: &[&str], stop: &[&str]) -> Vec<String> {
    let mut paths = Vec::new();
    leaf_paths(obj, "", stop, &mut paths);
    paths
        .into_iter()
        .filter(|p| !allowed.iter().any(|a| matches_pattern(a, p)))
        .map(|p| format!("{}: {p} is not a field of its CRD", id(obj)))
        .collect()
}

/// FoundationDBCluster resources: CRD fields, pod templates as Kubernetes objects, the
/// regions of `deploy/fdb/regions.json`, the client version of the core image, and one
/// database configuration across every datacenter.
fn foundationdb(ctx: &Ctx, all: &BTreeMap<String, Vec<Value>>) -> Vec<String> {
    let mut problems = Vec::new();
    let regions: Value =
        match ctx.read("deploy/fdb/regions.json").and_then(|s| Ok(serde_json::from_str(&s)?)) {
            Ok(v) => v,
            Err(e) => return vec![format!("deploy/fdb/regions.json: {e}")],
        };
    let dockerfile = ctx.read("deploy/docker/core.Dockerfile").unwrap_or_default();
    let client_version = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("ARG FDB_VERSION="))
        .unwrap_or("")
        .to_owned();
    let dcs_in_regions: BTreeSet<String> = regions["regions"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["datacenters"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| d["id"].as_str().map(str::to_owned))
        .collect();
    let mut configs: BTreeMap<String, Value> = BTreeMap::new();
    let mut wrapped = Vec::new();
    for (render, objs) in all {
        for obj in objs
            .iter()
            .filter(|o| o.get("kind").and_then(Value::as_str) == Some("FoundationDBCluster"))
        {
            let me = format!("{render}: {}", id(obj));
            problems.extend(
                strict_fields(
                    obj,
                    FDB_FIELDS,
                    &["spec.processes.*.podTemplate", "spec.processes.*.volumeClaimTemplate"],
                )
                .into_iter()
                .map(|p| format!("{render}: {p}")),
            );
            let want = &regions["regions"];
            if at(obj, "spec.databaseConfiguration.regions") != Some(want) {
                problems.push(format!(
                    "{me}: databaseConfiguration.regions differs from deploy/fdb/regions.json"
                ));
            }
            if str_at(obj, "spec.version") != Some(client_version.as_str()) {
                problems.push(format!(
                    "{me}: version {:?} differs from the core image's client {client_version}",
                    str_at(obj, "spec.version")
                ));
            }
            let dc = str_at(obj, "spec.dataCenter").unwrap_or("");
            let data_bearing = ["storage", "log"].iter().any(|c| {
                at(obj, &format!("spec.processCounts.{c}"))
                    .and_then(Value::as_i64)
                    .is_none_or(|n| n > 0)
            });
            if data_bearing && !dcs_in_regions.contains(dc) {
                problems.push(format!(
                    "{me}: datacenter {dc} holds data or logs but is in no region of regions.json"
                ));
            }
            if let Some(c) = at(obj, "spec.databaseConfiguration") {
                configs.insert(me.clone(), c.clone());
            }
            for (class, p) in
                at(obj, "spec.processes").and_then(Value::as_object).into_iter().flatten()
            {
                if let Some(t) = p.get("podTemplate") {
                    wrapped.push(json!({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": format!("{}-{class}", str_at(obj, "metadata.name").unwrap_or("x"))}, "template": t}));
                }
                if let Some(t) = p.get("volumeClaimTemplate") {
                    let mut pvc = t.clone();
                    pvc["apiVersion"] = json!("v1");
                    pvc["kind"] = json!("PersistentVolumeClaim");
                    pvc["metadata"] = json!({"name": format!("{}-{class}", str_at(obj, "metadata.name").unwrap_or("x"))});
                    wrapped.push(pvc);
                }
            }
        }
    }
    let distinct: BTreeSet<String> = configs.values().map(Value::to_string).collect();
    if distinct.len() > 1 {
        problems.push(format!(
            "the FoundationDBClusters disagree on databaseConfiguration: {:?}",
            configs.keys().collect::<Vec<_>>()
        ));
    }
    if configs.is_empty() {
        problems.push("no FoundationDBCluster in any render".into());
    }
    if !wrapped.is_empty() {
        let text: String = wrapped
            .iter()
            .map(|w| format!("---\n{}\n", serde_json::to_string(w).unwrap_or_default()))
            .collect();
        if let Err(e) = validate(ctx, "foundationdb-pod-templates", &text) {
            problems.push(format!("FoundationDBCluster pod templates: {e:#}"));
        }
    }
    problems
}

/// SpinApps: CRD fields, and the variables of the Spin manifest (all required ones set,
/// none unknown).
fn spinapps(ctx: &Ctx, objs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let spin =
        match ctx.read("edge-components/spin.toml").and_then(|s| Ok(s.parse::<toml::Table>()?)) {
            Ok(t) => t,
            Err(e) => return vec![format!("edge-components/spin.toml: {e}")],
        };
    let vars = spin.get("variables").and_then(|v| v.as_table()).cloned().unwrap_or_default();
    for obj in objs.iter().filter(|o| o.get("kind").and_then(Value::as_str) == Some("SpinApp")) {
        problems.extend(strict_fields(obj, SPINAPP_FIELDS, &[]));
        let set: BTreeSet<String> = at(obj, "spec.variables")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| str_at(v, "name").map(str::to_owned))
            .collect();
        for name in &set {
            if !vars.contains_key(name) {
                problems.push(format!("{}: variable {name} is not in spin.toml", id(obj)));
            }
        }
        for (name, v) in &vars {
            if v.get("required").and_then(|r| r.as_bool()) == Some(true) && !set.contains(name) {
                problems.push(format!("{}: required variable {name} is not set", id(obj)));
            }
        }
    }
    problems
}

pub(crate) fn check(ctx: &Ctx, report: &mut Report) -> Renders {
    let mut renders = Renders::default();
    for (dir, region) in KUSTOMIZATIONS {
        let (text, objs) = match render(ctx, dir) {
            Ok(r) => r,
            Err(e) => {
                report.check(&format!("kustomize {dir}"), Err(e));
                continue;
            }
        };
        report.check(&format!("kustomize {dir}"), Ok(()));
        report.check(&format!("kubernetes-validate --strict {dir}"), validate(ctx, dir, &text));
        report.check_all(&format!("complete {dir}"), completeness(&objs));
        report.check_all(&format!("workloads {dir}"), workloads(ctx, &objs, *region));
        report.check_all(&format!("network policies {dir}"), network_policies(&objs));
        if *region {
            report.check_all(&format!("service names {dir}"), service_names(ctx, &objs));
        }
        report.check_all(&format!("SpinApps {dir}"), spinapps(ctx, &objs));
        renders.objects.insert((*dir).to_owned(), objs);
    }
    report.check_all("FoundationDBClusters", foundationdb(ctx, &renders.objects));
    renders
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_patterns() {
        assert!(matches_pattern("metadata.labels.*", "metadata.labels.app"));
        assert!(matches_pattern(
            "spec.processes.*.podTemplate",
            "spec.processes.general.podTemplate"
        ));
        assert!(!matches_pattern("spec.version", "spec.versions"));
        assert!(matches_pattern("spec.podLabels.*", "spec.podLabels.app.kubernetes.io/name"));
        assert!(!matches_pattern("spec.podLabels.*", "spec.podLabelsx.a"));
        let obj = json!({"apiVersion": "x", "kind": "SpinApp", "metadata": {"name": "a"}, "spec": {"image": "i", "executr": "typo"}});
        let problems = strict_fields(&obj, SPINAPP_FIELDS, &[]);
        assert_eq!(problems, vec!["SpinApp/a: spec.executr is not a field of its CRD".to_owned()]);
    }

    #[test]
    fn host_of_urls() {
        assert_eq!(host_port("nats://nats-leaf:4222"), Some(("nats-leaf".into(), Some(4222))));
        assert_eq!(
            host_port("http://tessera-router:8081/x"),
            Some(("tessera-router".into(), Some(8081)))
        );
        assert_eq!(host_port("https://api.stripe.com"), Some(("api.stripe.com".into(), None)));
    }
}
