//! Bundles `web/` (content-hashed assets, per-language pages, gzip) into `OUT_DIR`.

fn main() {
    let web = tessera_web::web_dir();
    for input in tessera_web::inputs(&web) {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let bundle = tessera_web::build(&web).unwrap_or_else(|e| panic!("bundling web/: {e:#}"));
    let src = tessera_web::write_rust(&bundle, &out).unwrap_or_else(|e| panic!("{e:#}"));
    std::fs::write(out.join("bundle.rs"), src).expect("write bundle.rs");
}
