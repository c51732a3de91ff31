//! The bundler (see the crate docs).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// A page: its name (what the component routes to), source file, title key and module.
#[derive(Debug, Clone, Copy)]
pub struct PageSpec {
    pub name: &'static str,
    pub file: &'static str,
    pub title: &'static str,
    pub script: &'static str,
}

/// Every page of the app.
pub const PAGES: &[PageSpec] = &[
    PageSpec { name: "home", file: "index.html", title: "home_title", script: "/assets/home.js" },
    PageSpec { name: "event", file: "event.html", title: "event_sale", script: "/assets/event.js" },
    PageSpec {
        name: "queue",
        file: "queue.html",
        title: "queue_doc_title",
        script: "/assets/queue.js",
    },
    PageSpec {
        name: "seats",
        file: "seats.html",
        title: "seats_title",
        script: "/assets/seats.js",
    },
    PageSpec {
        name: "checkout",
        file: "checkout.html",
        title: "checkout_title",
        script: "/assets/checkout.js",
    },
    PageSpec {
        name: "orders",
        file: "orders.html",
        title: "orders_title",
        script: "/assets/orders.js",
    },
    PageSpec {
        name: "order",
        file: "order.html",
        title: "order_title",
        script: "/assets/order.js",
    },
    PageSpec {
        name: "signin",
        file: "signin.html",
        title: "signin_title",
        script: "/assets/signin.js",
    },
    PageSpec {
        name: "notfound",
        file: "notfound.html",
        title: "notfound_title",
        script: "/assets/api.js",
    },
];

use crate::serve::{PAYMENTS_KEY_PLACEHOLDER, PAYMENTS_URL_PLACEHOLDER};

/// A static asset with its hashed path.
#[derive(Debug, Clone)]
pub struct Asset {
    /// The name sources use: `/assets/app.css`.
    pub logical: String,
    /// The name it is served under: `/assets/app.3f9c1a2b4d.css`.
    pub path: String,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub gzip: Vec<u8>,
}

/// One page in one language.
#[derive(Debug, Clone)]
pub struct Page {
    pub name: String,
    pub lang: String,
    pub html: Vec<u8>,
    pub gzip: Vec<u8>,
    /// `'sha256-…'` of the page's inline import map (for `script-src`).
    pub script_hash: String,
    /// Every asset path (hashed) the page loads, its module graph included.
    pub loads: Vec<String>,
}

/// The whole app, ready to embed.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub assets: Vec<Asset>,
    pub pages: Vec<Page>,
    /// Languages, the first is the default.
    pub langs: Vec<String>,
}

impl Bundle {
    pub fn asset(&self, logical: &str) -> Option<&Asset> {
        self.assets.iter().find(|a| a.logical == logical)
    }
    pub fn page(&self, name: &str, lang: &str) -> Option<&Page> {
        self.pages.iter().find(|p| p.name == name && p.lang == lang)
    }
    /// Gzipped bytes of a page and everything it loads: what a first visit transfers
    /// (bodies only, no headers).
    pub fn page_weight_gzip(&self, name: &str, lang: &str) -> Option<usize> {
        let page = self.page(name, lang)?;
        let mut total = page.gzip.len();
        for path in &page.loads {
            total += self.assets.iter().find(|a| &a.path == path)?.gzip.len();
        }
        Some(total)
    }
}

/// The `web/` directory of the repository this crate lives in.
pub fn web_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn content_type(name: &str) -> anyhow::Result<&'static str> {
    Ok(match name.rsplit('.').next().unwrap_or("") {
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "json" => "application/json",
        "woff2" => "font/woff2",
        other => bail!("no content type for .{other} ({name})"),
    })
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

fn short_hash(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d[..5].iter().map(|b| format!("{b:02x}")).collect()
}

fn hashed_name(logical: &str, body: &[u8]) -> String {
    let hash = short_hash(body);
    match logical.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{hash}.{ext}"),
        None => format!("{logical}.{hash}"),
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `/assets/x.js` modules a module imports statically (`from "/assets/x.js"`).
pub fn imports_of(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in source.lines() {
        let line = line.trim();
        if !(line.starts_with("import ") || line.starts_with("} from ")) {
            continue;
        }
        if let Some(start) = line.find("\"/assets/") {
            let rest = &line[start + 1..];
            if let Some(end) = rest.find('"') {
                out.push(rest[..end].to_owned());
            }
        }
    }
    out
}

/// A catalogue: `{"ui": {key: text}, "errors": {code: text}}`.
#[derive(Debug, Clone)]
pub struct Catalogue {
    pub lang: String,
    pub ui: BTreeMap<String, String>,
    pub errors: BTreeMap<String, String>,
    pub raw: serde_json::Value,
}

pub fn catalogues(web: &Path) -> anyhow::Result<Vec<Catalogue>> {
    let mut out = Vec::new();
    let dir = web.join("i18n");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for f in files {
        let lang = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        let text = std::fs::read_to_string(&f).with_context(|| format!("read {}", f.display()))?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parse {}", f.display()))?;
        let map = |k: &str| -> anyhow::Result<BTreeMap<String, String>> {
            let obj = raw[k].as_object().with_context(|| format!("{}: no `{k}`", f.display()))?;
            obj.iter()
                .map(|(k, v)| {
                    let v = v.as_str().with_context(|| format!("{}: {k} is not text", f.display()));
                    v.map(|v| (k.clone(), v.to_owned()))
                })
                .collect()
        };
        out.push(Catalogue { ui: map("ui")?, errors: map("errors")?, lang, raw });
    }
    // English first: the default when nothing in Accept-Language matches.
    out.sort_by_key(|c| (c.lang != "en", c.lang.clone()));
    if out.is_empty() {
        bail!("no catalogues in {}", dir.display());
    }
    Ok(out)
}

/// Builds the bundle from a `web/` directory.
pub fn build(web: &Path) -> anyhow::Result<Bundle> {
    let cats = catalogues(web)?;
    let mut assets = Vec::new();
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    let dir = web.join("assets");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for f in files {
        let name = f.file_name().and_then(|n| n.to_str()).context("file name")?.to_owned();
        let body = std::fs::read(&f).with_context(|| format!("read {}", f.display()))?;
        let logical = format!("/assets/{name}");
        if name.ends_with(".js") {
            sources.insert(logical.clone(), String::from_utf8(body.clone())?);
        }
        assets.push(Asset {
            path: hashed_name(&logical, &body),
            content_type: content_type(&name)?,
            gzip: gzip(&body),
            logical,
            body,
        });
    }
    // One strings module per language.
    let mut strings_path = BTreeMap::new();
    for c in &cats {
        let body = format!("export default {};\n", serde_json::to_string(&c.raw)?).into_bytes();
        let logical = format!("/assets/strings-{}.js", c.lang);
        let path = hashed_name(&logical, &body);
        strings_path.insert(c.lang.clone(), path.clone());
        assets.push(Asset {
            logical,
            path,
            content_type: "text/javascript; charset=utf-8",
            gzip: gzip(&body),
            body,
        });
    }
    let hashed =
        |logical: &str| assets.iter().find(|a| a.logical == logical).map(|a| a.path.clone());

    let layout = std::fs::read_to_string(web.join("pages").join("_layout.html"))
        .context("read web/pages/_layout.html")?;
    let mut pages = Vec::new();
    for spec in PAGES {
        let body = std::fs::read_to_string(web.join("pages").join(spec.file))
            .with_context(|| format!("read web/pages/{}", spec.file))?;
        // The page's module graph.
        let mut graph = BTreeSet::new();
        let mut todo = vec![spec.script.to_owned()];
        while let Some(m) = todo.pop() {
            if m == "/assets/strings.js" || !graph.insert(m.clone()) {
                continue;
            }
            let src = sources.get(&m).with_context(|| format!("{}: no module {m}", spec.file))?;
            todo.extend(imports_of(src));
        }
        for c in &cats {
            let mut imports = serde_json::Map::new();
            for logical in sources.keys() {
                if let Some(p) = hashed(logical) {
                    imports.insert(logical.clone(), p.into());
                }
            }
            imports.insert("/assets/strings.js".into(), strings_path[&c.lang].clone().into());
            let map = serde_json::json!({ "imports": imports }).to_string();
            let script_hash = format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(Sha256::digest(map.as_bytes()))
            );
            let mut loads: Vec<String> = Vec::new();
            let mut preload = String::new();
            for m in &graph {
                let p = hashed(m).with_context(|| format!("no asset {m}"))?;
                if m != spec.script {
                    preload.push_str(&format!("<link rel=\"modulepreload\" href=\"{p}\">\n"));
                }
                loads.push(p);
            }
            preload.push_str(&format!(
                "<link rel=\"modulepreload\" href=\"{}\">\n",
                strings_path[&c.lang]
            ));
            loads.push(strings_path[&c.lang].clone());
            for a in ["/assets/app.css", "/assets/icon.svg"] {
                loads.push(hashed(a).with_context(|| format!("no asset {a}"))?);
            }
            let mut html = layout
                .replace("{{main}}", &body)
                .replace("{{script}}", spec.script)
                .replace("{{lang}}", &c.lang);
            let title = c.ui.get(spec.title).with_context(|| {
                format!("{}: no `{}` in the {} catalogue", spec.file, spec.title, c.lang)
            })?;
            html = html.replace("{{title}}", &html_escape(title));
            if spec.name == "checkout" {
                html = html.replace(
                    "</title>",
                    &format!(
                        "</title>\n<meta name=\"tessera-payments-url\" content=\"{PAYMENTS_URL_PLACEHOLDER}\">\n<meta name=\"tessera-payments-key\" content=\"{PAYMENTS_KEY_PLACEHOLDER}\">"
                    ),
                );
            }
            html = replace_strings(&html, &c.ui)
                .with_context(|| format!("{} ({})", spec.file, c.lang))?;
            for a in &assets {
                html = html.replace(&format!("\"{}\"", a.logical), &format!("\"{}\"", a.path));
            }
            // Last: the import map maps the plain names, which must stay as they are.
            html = html.replace(
                "{{importmap}}",
                &format!("<script type=\"importmap\">{map}</script>\n{preload}"),
            );
            if html.contains("{{") {
                bail!("{} ({}): a placeholder is left: {}", spec.file, c.lang, leftover(&html));
            }
            let bytes = html.into_bytes();
            pages.push(Page {
                name: spec.name.to_owned(),
                lang: c.lang.clone(),
                gzip: gzip(&bytes),
                html: bytes,
                script_hash,
                loads,
            });
        }
    }
    Ok(Bundle { assets, pages, langs: cats.iter().map(|c| c.lang.clone()).collect() })
}

fn leftover(html: &str) -> String {
    let at = html.find("{{").unwrap_or(0);
    html[at..].chars().take(40).collect()
}

fn replace_strings(html: &str, ui: &BTreeMap<String, String>) -> anyhow::Result<String> {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(start) = rest.find("{{t:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 4..];
        let end = after.find("}}").context("unclosed {{t:")?;
        let key = &after[..end];
        let text = ui.get(key).with_context(|| format!("no string `{key}`"))?;
        out.push_str(&html_escape(text));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Writes the bundle's bodies into `out_dir` and returns Rust source declaring
/// `ASSETS: &[Asset]`, `PAGES: &[Page]` and `LANGS` for the component to `include!`.
pub fn write_rust(bundle: &Bundle, out_dir: &Path) -> anyhow::Result<String> {
    let files = out_dir.join("web");
    std::fs::create_dir_all(&files)?;
    let mut n = 0usize;
    let mut write = |bytes: &[u8]| -> anyhow::Result<String> {
        n += 1;
        let p = files.join(format!("{n}.bin"));
        std::fs::write(&p, bytes)?;
        Ok(format!("include_bytes!({:?})", p.display().to_string()))
    };
    let mut src = String::from("// Generated by tessera-web from web/: do not edit.\n");
    src.push_str("static ASSETS: &[Asset] = &[\n");
    for a in &bundle.assets {
        src.push_str(&format!(
            "    Asset {{ path: {:?}, content_type: {:?}, body: {}, gzip: {} }},\n",
            a.path,
            a.content_type,
            write(&a.body)?,
            write(&a.gzip)?
        ));
    }
    src.push_str("];\nstatic PAGES: &[Page] = &[\n");
    for p in &bundle.pages {
        src.push_str(&format!(
            "    Page {{ name: {:?}, lang: {:?}, html: {}, gzip: {}, script_hash: {:?} }},\n",
            p.name,
            p.lang,
            write(&p.html)?,
            write(&p.gzip)?,
            p.script_hash
        ));
    }
    src.push_str("];\n");
    src.push_str(&format!("static LANGS: &[&str] = &{:?};\n", bundle.langs));
    Ok(src)
}

/// Every file the bundle is built from (for `cargo:rerun-if-changed`).
pub fn inputs(web: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in ["assets", "pages", "i18n"] {
        if let Ok(rd) = std::fs::read_dir(web.join(sub)) {
            out.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
        }
        out.push(web.join(sub));
    }
    out
}
