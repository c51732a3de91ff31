//! Sets `cfg(fdb_cluster)` when `FDB_CLUSTER_FILE` names a cluster at build time, so the
//! FoundationDB conformance tests run there and are reported as ignored ("skipped:
//! FDB_CLUSTER_FILE is not set") everywhere else, never as passed.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(fdb_cluster)");
    println!("cargo::rerun-if-env-changed=FDB_CLUSTER_FILE");
    if std::env::var_os("FDB_CLUSTER_FILE").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=fdb_cluster");
    }
}
