//! `spin up` cannot run here, so this keeps the manifest, the components and the host in
//! step: what the manifest names is what the build produces and what the code reads.

use std::collections::BTreeSet;

use tessera_edge_host::manifest::{Manifest, Route};

use crate::support::*;

fn manifest() -> Manifest {
    Manifest::load(&workspace_root().join("edge-components/spin.toml")).unwrap()
}

#[test]
fn the_manifest_names_every_component_the_build_produces() {
    let m = manifest();
    let ids: BTreeSet<String> = m.components.iter().map(|c| c.id.clone()).collect();
    let built: BTreeSet<String> =
        ["validation", "bot-score", "waiting-room", "catalog-cache"].map(String::from).into();
    assert_eq!(ids, built);
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
fn only_validation_is_public_and_chaining_targets_are_allowed() {
    let m = manifest();
    for c in &m.components {
        if c.id == "validation" {
            assert_eq!(c.routes, vec![Route::Public("/...".into())]);
            assert!(c.key_value_stores.is_empty(), "validation imports only WASI");
            assert!(c.variables.is_empty(), "validation imports only WASI");
            assert_eq!(c.environment["TESSERA_NEXT_HOP"], "http://bot-score.spin.internal");
        } else {
            assert_eq!(c.routes, vec![Route::Private], "{}", c.id);
        }
    }
    let src = |id: &str| {
        std::fs::read_to_string(
            workspace_root().join(format!("edge-components/components/{id}/src/lib.rs")),
        )
        .unwrap()
    };
    // Every `*.spin.internal` target a component calls is in its allow-list.
    for c in &m.components {
        let code = src(&c.id);
        for target in ["bot-score", "waiting-room", "catalog-cache"] {
            let url = format!("http://{target}.spin.internal");
            if code.contains(&url) || c.environment.values().any(|v| v == &url) {
                assert!(c.allowed_outbound_hosts.contains(&url), "{} calls {url}", c.id);
            }
        }
    }
}

#[test]
fn every_variable_a_component_reads_is_declared_for_it() {
    let m = manifest();
    let src = |id: &str| {
        std::fs::read_to_string(
            workspace_root().join(format!("edge-components/components/{id}/src/lib.rs")),
        )
        .unwrap()
    };
    for c in &m.components {
        let raw = src(&c.id);
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
    assert_eq!(edge.edge.public_routes(), vec![("validation".to_owned(), "/...".to_owned())]);
    assert_eq!(edge.edge.variables()["router_url"], format!("http://{router}"));
    assert_eq!(edge.edge.variables()["admission_ttl_s"], "600", "manifest default applies");
}
