//! `spin up` cannot run here, so this keeps the manifest, the components and the host in
//! step: what the manifest names is what the build produces and what the code reads.

use std::collections::BTreeSet;

use tessera_edge_host::manifest::{Manifest, Route};

use crate::support::*;

fn manifest() -> Manifest {
    Manifest::load(&workspace_root().join("edge-components/spin.toml")).unwrap()
}

/// All Rust source of a component crate, for checks that read what the code calls.
fn source_of(id: &str) -> String {
    let dir = workspace_root().join(format!("edge-components/components/{id}/src"));
    let mut out = String::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    out
}

#[test]
fn the_manifest_names_components_the_build_produces() {
    let m = manifest();
    let ids: BTreeSet<String> = m.components.iter().map(|c| c.id.clone()).collect();
    // One component serves the API pipeline; `pages` serves the fan's web app.
    assert_eq!(ids, BTreeSet::from(["edge".to_owned(), "pages".to_owned()]));
    for c in &m.components {
        let expected =
            workspace_root().join(format!("edge-components/components/target/wasm/{}.wasm", c.id));
        assert_eq!(
            c.source.canonicalize().unwrap_or(c.source.clone()),
            expected.canonicalize().unwrap_or(expected.clone())
        );
        let crate_dir = workspace_root().join("edge-components/components").join(&c.id);
        assert!(crate_dir.join("Cargo.toml").exists(), "component crate {}", c.id);
    }
}

#[test]
fn the_edge_is_public_and_calls_only_the_router() {
    let m = manifest();
    let edge = m.components.iter().find(|c| c.id == "edge").unwrap();
    assert_eq!(edge.routes, vec![Route::Public("/...".into())]);
    assert_eq!(edge.allowed_outbound_hosts, vec!["{{ router_url }}".to_owned()]);
    assert!(!source_of("edge").contains(".spin.internal"), "no HTTP chaining between stages");
}

#[test]
fn pages_serve_only_the_web_app_and_call_nothing() {
    let m = manifest();
    let pages = m.components.iter().find(|c| c.id == "pages").unwrap();
    let public: Vec<Route> =
        ["/", "/assets/...", "/events/...", "/orders/...", "/signin", "/favicon.ico"]
            .map(|r| Route::Public(r.into()))
            .into();
    assert_eq!(pages.routes, public, "the API stays with `edge`");
    assert!(pages.allowed_outbound_hosts.is_empty(), "pages call nothing");
    assert!(pages.key_value_stores.is_empty(), "pages keep no state");
}

#[test]
fn the_validation_component_imports_only_wasi() {
    // It is compared with `wasmtime serve`, which offers nothing but WASI.
    let toml = std::fs::read_to_string(
        workspace_root().join("edge-components/components/validation/Cargo.toml"),
    )
    .unwrap();
    let spin = toml.lines().find(|l| l.starts_with("spin-sdk")).unwrap();
    assert_eq!(spin, r#"spin-sdk = { workspace = true, features = ["http"] }"#);
}

#[test]
fn every_variable_a_component_reads_is_declared_for_it() {
    let m = manifest();
    for c in &m.components {
        let raw = source_of(&c.id);
        // Environment variables (`std::env::var`) must be in the component's `environment`.
        for piece in raw.split("env::var(\"").skip(1) {
            let name = piece.split('"').next().unwrap_or("");
            assert!(c.environment.contains_key(name), "component {} reads env {name}", c.id);
        }
        let code = raw.replace("env::var(\"", "ENV(\"");
        let mut read = BTreeSet::new();
        for pat in ["var(\"", "var_u64(\"", "variables::get(\""] {
            for piece in code.split(pat).skip(1) {
                if let Some(name) = piece.split('"').next() {
                    read.insert(name.to_owned());
                }
            }
        }
        for name in &read {
            assert!(
                c.variables.contains_key(name),
                "component {} reads undeclared variable {name}",
                c.id
            );
        }
        for name in c.variables.keys() {
            assert!(read.contains(name), "component {} declares unused variable {name}", c.id);
        }
    }
}

#[tokio::test]
async fn the_host_serves_the_manifest_routes_and_resolves_its_variables() {
    let (_up, router) = upstream().await;
    let edge = start_edge(variables(router)).await;
    let routes = edge.edge.public_routes();
    assert!(routes.contains(&("edge".to_owned(), "/...".to_owned())), "{routes:?}");
    assert!(routes.contains(&("pages".to_owned(), "/".to_owned())), "{routes:?}");
    assert_eq!(edge.edge.variables()["router_url"], format!("http://{router}"));
    assert_eq!(edge.edge.variables()["admission_ttl_s"], "600", "manifest default applies");
}
