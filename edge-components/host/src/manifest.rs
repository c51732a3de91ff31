//! Reads the Spin manifest (`spin_manifest_version = 2`) the same way `spin up` does, as
//! far as the edge needs it: components with their source, allowed outbound hosts,
//! key-value stores, environment and variables; HTTP triggers with routes (public or
//! `{ private = true }`); application variables with defaults, `required` and `secret`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
struct RawManifest {
    spin_manifest_version: u32,
    #[serde(default)]
    variables: BTreeMap<String, RawVariable>,
    #[serde(default)]
    trigger: RawTriggers,
    #[serde(default)]
    component: BTreeMap<String, RawComponent>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RawTriggers {
    #[serde(default)]
    http: Vec<RawHttpTrigger>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawHttpTrigger {
    route: RawRoute,
    component: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawRoute {
    Path(String),
    Private { private: bool },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariable {
    default: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    secret: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct RawComponent {
    source: String,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
}

/// An application variable declared in `[variables]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub default: Option<String>,
    pub required: bool,
    pub secret: bool,
}

/// Where a component can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/...` (everything), `/prefix/...` or an exact path.
    Public(String),
    /// Only through `http://<id>.spin.internal` (service chaining).
    Private,
}

#[derive(Debug, Clone)]
pub struct Component {
    pub id: String,
    pub source: PathBuf,
    /// Entries as written (may contain `{{ variable }}` templates).
    pub allowed_outbound_hosts: Vec<String>,
    pub key_value_stores: Vec<String>,
    pub environment: BTreeMap<String, String>,
    /// Component variables: name -> template (`"{{ router_url }}"` or a literal).
    pub variables: BTreeMap<String, String>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub variables: BTreeMap<String, Variable>,
    pub components: Vec<Component>,
}

fn valid_variable_name(name: &str) -> bool {
    !name.is_empty()
        && name.as_bytes()[0].is_ascii_lowercase()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Manifest {
    pub fn load(path: &Path) -> anyhow::Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read manifest {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Manifest::parse(&text, base)
    }

    /// Parses a manifest; relative `source` paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Manifest> {
        let raw: RawManifest = toml::from_str(text).context("parse spin manifest")?;
        if raw.spin_manifest_version != 2 {
            bail!("unsupported spin_manifest_version {}", raw.spin_manifest_version);
        }
        let mut variables = BTreeMap::new();
        for (name, v) in raw.variables {
            if !valid_variable_name(&name) {
                bail!("invalid variable name `{name}`");
            }
            if v.required && v.default.is_some() {
                bail!("variable `{name}` is required and has a default");
            }
            variables.insert(
                name,
                Variable { default: v.default, required: v.required, secret: v.secret },
            );
        }
        let mut components = Vec::new();
        for (id, c) in raw.component {
            for (name, template) in &c.variables {
                if !valid_variable_name(name) {
                    bail!("component `{id}`: invalid variable name `{name}`");
                }
                for used in template_names(template) {
                    if !variables.contains_key(&used) {
                        bail!("component `{id}`: variable `{name}` uses undeclared `{used}`");
                    }
                }
            }
            let routes = raw
                .trigger
                .http
                .iter()
                .filter(|t| t.component == id)
                .map(|t| match &t.route {
                    RawRoute::Path(p) => Ok(Route::Public(p.clone())),
                    RawRoute::Private { private: true } => Ok(Route::Private),
                    RawRoute::Private { private: false } => {
                        bail!("component `{id}`: route `{{ private = false }}` is not a route")
                    }
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            components.push(Component {
                source: base.join(&c.source),
                id,
                allowed_outbound_hosts: c.allowed_outbound_hosts,
                key_value_stores: c.key_value_stores,
                environment: c.environment,
                variables: c.variables,
                routes,
            });
        }
        for t in &raw.trigger.http {
            if !components.iter().any(|c| c.id == t.component) {
                bail!("trigger names unknown component `{}`", t.component);
            }
        }
        Ok(Manifest { variables, components })
    }
}

/// Names used in `{{ name }}` templates.
pub fn template_names(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push(after[..end].trim().to_owned());
        rest = &after[end + 2..];
    }
    out
}

/// Expands `{{ name }}` templates with resolved application variables.
pub fn expand(template: &str, values: &BTreeMap<String, String>) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            bail!("unterminated template in `{template}`");
        };
        let name = after[..end].trim();
        let value = values.get(name).with_context(|| format!("variable `{name}` has no value"))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Resolves application variables: `SPIN_VARIABLE_<NAME>` (given as `env`), then the
/// host's config, then manifest defaults. A required variable without a value is an error.
pub fn resolve_variables(
    declared: &BTreeMap<String, Variable>,
    env: &BTreeMap<String, String>,
    config: &BTreeMap<String, String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut missing = Vec::new();
    for (name, v) in declared {
        let value = env
            .get(&format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase()))
            .or_else(|| config.get(name))
            .cloned()
            .or_else(|| v.default.clone());
        match value {
            Some(value) => {
                out.insert(name.clone(), value);
            }
            None if v.required => missing.push(name.clone()),
            None => {}
        }
    }
    if !missing.is_empty() {
        bail!(
            "required variables have no value: {} (set SPIN_VARIABLE_<NAME> or [variables] in the edge config)",
            missing.join(", ")
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
spin_manifest_version = 2
[application]
name = "t"
[variables]
router_url = { default = "http://127.0.0.1:1" }
key = { required = true, secret = true }
[[trigger.http]]
route = "/..."
component = "a"
[[trigger.http]]
route = { private = true }
component = "b"
[component.a]
source = "a.wasm"
allowed_outbound_hosts = ["http://b.spin.internal"]
[component.b]
source = "b.wasm"
variables = { router_url = "{{ router_url }}", k = "x{{key}}y" }
"#;

    #[test]
    fn reads_components_routes_and_variables() {
        let m = Manifest::parse(TOML, Path::new("/m")).unwrap();
        assert_eq!(m.components.len(), 2);
        let a = m.components.iter().find(|c| c.id == "a").unwrap();
        assert_eq!(a.routes, vec![Route::Public("/...".into())]);
        assert_eq!(a.source, PathBuf::from("/m/a.wasm"));
        let b = m.components.iter().find(|c| c.id == "b").unwrap();
        assert_eq!(b.routes, vec![Route::Private]);
        let env = BTreeMap::from([("SPIN_VARIABLE_KEY".to_owned(), "s".to_owned())]);
        let vals = resolve_variables(&m.variables, &env, &BTreeMap::new()).unwrap();
        assert_eq!(expand(&b.variables["k"], &vals).unwrap(), "xsy");
        assert_eq!(vals["router_url"], "http://127.0.0.1:1");
        assert!(resolve_variables(&m.variables, &BTreeMap::new(), &BTreeMap::new()).is_err());
    }
}
