//! Prometheus and OpenTelemetry: `promtool check rules` and `promtool test rules` on the
//! alerting rules; every dashboard query parsed by promtool; every `tessera_*` metric the
//! rules and the dashboard read is one the code emits (so a panel is never empty because
//! of a typo or a renamed metric); the OpenTelemetry Collector's pipelines use only
//! components it defines.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::bail;
use serde_json::Value;

use super::tools::output;
use super::yaml;
use super::{Ctx, Report};

fn promtool(ctx: &Ctx, args: &[&str]) -> anyhow::Result<()> {
    output(
        Command::new(&ctx.tools.promtool).args(args).current_dir(ctx.path("deploy/prometheus")),
    )?;
    Ok(())
}

fn dashboard_exprs(ctx: &Ctx) -> anyhow::Result<Vec<(String, String)>> {
    let d: Value = serde_json::from_str(&ctx.read("deploy/grafana/tessera-onsale.json")?)?;
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        let title = p["title"].as_str().unwrap_or("?").to_owned();
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((title.clone(), e.to_owned()));
            }
        }
    }
    Ok(out)
}

fn check_dashboard_parses(ctx: &Ctx) -> anyhow::Result<()> {
    let exprs = dashboard_exprs(ctx)?;
    if exprs.is_empty() {
        bail!("the dashboard has no queries");
    }
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, (_, e))| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": e}))
        .collect();
    let file = ctx.scratch.path().join("dashboard-rules.json");
    std::fs::write(
        &file,
        serde_json::to_string(
            &serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]}),
        )?,
    )?;
    output(Command::new(&ctx.tools.promtool).args(["check", "rules"]).arg(&file))?;
    Ok(())
}

/// `tessera_*` metric names in a query (histogram suffixes removed).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == '_'
                || bytes[i - 1] == ':');
        if boundary
            && expr[expr.char_indices().nth(i).map(|(b, _)| b).unwrap_or(0)..]
                .starts_with("tessera_")
        {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_') {
                i += 1;
            }
            let name: String = bytes[start..i].iter().collect();
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .fold(name.clone(), |n, s| n.strip_suffix(s).map(str::to_owned).unwrap_or(n));
            out.insert(base);
        } else {
            i += 1;
        }
    }
    out
}

/// Every `"name"` string literal in the workspace's Rust sources.
fn emitted(ctx: &Ctx) -> String {
    let mut all = String::new();
    let mut stack = vec![ctx.root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | ".tessera" | "node_modules")
                    && !name.starts_with("target")
                {
                    stack.push(p);
                }
            } else if name.ends_with(".rs") && !p.to_string_lossy().contains("/xtask/") {
                all.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    all
}

fn check_metrics_exist(ctx: &Ctx) -> Vec<String> {
    let sources = emitted(ctx);
    let mut queries: Vec<(String, String)> = dashboard_exprs(ctx)
        .unwrap_or_default()
        .into_iter()
        .map(|(t, e)| (format!("dashboard panel {t:?}"), e))
        .collect();
    if let Ok(text) = ctx.read("deploy/prometheus/rules.yaml") {
        for doc in yaml::documents(&text).unwrap_or_default() {
            for g in doc["groups"].as_array().into_iter().flatten() {
                for r in g["rules"].as_array().into_iter().flatten() {
                    let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?");
                    queries.push((
                        format!("rule {name}"),
                        r["expr"].as_str().unwrap_or("").to_owned(),
                    ));
                }
            }
        }
    }
    let mut problems = Vec::new();
    for (whence, expr) in queries {
        for m in metric_names(&expr) {
            if !sources.contains(&format!("\"{m}\"")) {
                problems.push(format!("{whence} reads {m}, which no code emits"));
            }
        }
    }
    problems
}

/// The collector's pipelines name only receivers, processors and exporters it defines.
fn check_otel(ctx: &Ctx) -> Vec<String> {
    let file = "deploy/k8s/base/otel/collector.yaml";
    let doc = match ctx.read(file).and_then(|t| yaml::documents(&t)) {
        Ok(d) if !d.is_empty() => d[0].clone(),
        Ok(_) => return vec![format!("{file} is empty")],
        Err(e) => return vec![format!("{file}: {e}")],
    };
    let mut problems = Vec::new();
    let pipelines = doc["service"]["pipelines"].as_object().cloned().unwrap_or_default();
    if !pipelines.contains_key("traces") {
        problems.push(format!("{file}: no traces pipeline"));
    }
    for (name, p) in &pipelines {
        for section in ["receivers", "processors", "exporters"] {
            for c in p[section].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if doc[section].get(c).is_none() {
                    problems.push(format!(
                        "{file}: pipeline {name} uses {section} {c}, which is not defined"
                    ));
                }
            }
        }
    }
    for e in doc["service"]["extensions"].as_array().into_iter().flatten().filter_map(Value::as_str)
    {
        if doc["extensions"].get(e).is_none() {
            problems.push(format!("{file}: extension {e} is not defined"));
        }
    }
    if doc["receivers"]["otlp"]["protocols"]["http"].is_null() {
        problems.push(format!("{file}: no OTLP/HTTP receiver (the services export OTLP/HTTP)"));
    }
    problems
}

pub(crate) fn check(ctx: &Ctx, report: &mut Report) {
    report.check(
        "promtool check rules deploy/prometheus/rules.yaml",
        promtool(ctx, &["check", "rules", "rules.yaml"]),
    );
    report.check(
        "promtool test rules deploy/prometheus/tests.yaml",
        promtool(ctx, &["test", "rules", "tests.yaml"]),
    );
    report.check("dashboard queries parse", check_dashboard_parses(ctx));
    report.check_all("metrics in rules and dashboard exist", check_metrics_exist(ctx));
    report.check_all("OpenTelemetry Collector config", check_otel(ctx));
}

#[cfg(test)]
mod tests {
    use super::metric_names;

    #[test]
    fn finds_metric_names() {
        let n = metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(tessera_inventory_hold_seconds_bucket[5m]))) + tessera:x:y + foo_tessera_z",
        );
        assert_eq!(
            n.into_iter().collect::<Vec<_>>(),
            vec!["tessera_inventory_hold_seconds".to_owned()]
        );
    }
}
