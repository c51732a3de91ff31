//! A real browser for the web scenario: Debian's `chromium` driven over WebDriver by
//! `chromedriver`, with a fresh profile per fan, screenshots per step, axe-core injected
//! into pages, keyboard input as real key presses, and the browser console read back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fantoccini::actions::{InputSource as _, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// A running `chromedriver`.
#[derive(Debug)]
pub struct Driver {
    child: Child,
    pub url: String,
}

impl Driver {
    pub async fn start(log: &Path) -> anyhow::Result<Driver> {
        let port = tessera_local_nats::free_port()?;
        let log = std::fs::File::create(log)?;
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start chromedriver (apt-get install chromium-driver)")?;
        crate::reaper::watch(child.id());
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{url}/status")).send().await
                && r.status().is_success()
            {
                return Ok(Driver { child, url });
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not come up on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::reaper::release(self.child.id());
    }
}

/// Where screenshots go, numbered in the order they are taken.
#[derive(Debug)]
pub struct Shots {
    pub dir: PathBuf,
    n: AtomicUsize,
}

impl Shots {
    pub fn new(dir: PathBuf) -> anyhow::Result<Shots> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Shots { dir, n: AtomicUsize::new(0) })
    }
}

/// How a fan's browser looks.
#[derive(Debug, Clone)]
pub struct BrowserOptions {
    pub width: u32,
    pub height: u32,
    /// `Accept-Language` (and the UI language of the browser).
    pub lang: String,
    /// Device pixel ratio: 2 with a window half as wide shows the page as 200 % zoom does.
    pub scale: f64,
}

impl Default for BrowserOptions {
    fn default() -> Self {
        BrowserOptions { width: 1280, height: 900, lang: "en-GB".into(), scale: 1.0 }
    }
}

/// One fan's browser (its own profile: storage, cache and cookies).
#[derive(Debug)]
pub struct Browser {
    pub client: Client,
    pub name: String,
    pub base: String,
    _profile: tempdir::Dir,
}

mod tempdir {
    /// A directory removed when dropped.
    #[derive(Debug)]
    pub(super) struct Dir(pub(super) std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The legacy `GET log` command chromedriver still serves: the browser console.
#[derive(Debug)]
struct ConsoleLog;

impl WebDriverCompatibleCommand for ConsoleLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or_default()))
    }
    fn method_and_body(&self, _url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

impl Browser {
    pub async fn open(
        driver: &Driver,
        name: &str,
        base: &str,
        opts: &BrowserOptions,
    ) -> anyhow::Result<Browser> {
        static PROFILES: AtomicUsize = AtomicUsize::new(0);
        let profile = std::env::temp_dir().join(format!(
            "tessera-web-{name}-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile)?;
        let args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--disable-dev-shm-usage".into(),
            format!("--user-data-dir={}", profile.display()),
            format!("--window-size={},{}", opts.width, opts.height),
            format!("--force-device-scale-factor={}", opts.scale),
            format!("--lang={}", opts.lang),
            // Fans' browsers are not headless; the edge scores "HeadlessChrome" as automation.
            "--user-agent=Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36".into(),
        ];
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": args,
                "prefs": {"intl.accept_languages": opts.lang},
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .context("open a chromium session")?;
        client.set_window_size(opts.width, opts.height).await.ok();
        Ok(Browser {
            client,
            name: name.to_owned(),
            base: base.to_owned(),
            _profile: tempdir::Dir(profile),
        })
    }

    pub async fn goto(&self, path: &str) -> anyhow::Result<()> {
        self.client.goto(&format!("{}{path}", self.base)).await?;
        Ok(())
    }

    pub async fn path(&self) -> anyhow::Result<String> {
        let u = self.client.current_url().await?;
        Ok(match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        })
    }

    /// Saves a screenshot `<n>-<step>.png` and returns its path.
    pub async fn shot(&self, shots: &Shots, step: &str) -> anyhow::Result<PathBuf> {
        let png = self.client.screenshot().await?;
        let n = shots.n.fetch_add(1, Ordering::SeqCst) + 1;
        let path = shots.dir.join(format!("{n:02}-{step}.png"));
        std::fs::write(&path, png)?;
        eprintln!("[web] {}: screenshot {}", self.name, path.display());
        Ok(path)
    }

    pub async fn js(&self, script: &str) -> anyhow::Result<Value> {
        Ok(self.client.execute(script, vec![]).await?)
    }

    /// Waits until `script` (an expression) is truthy; returns its value.
    pub async fn wait_js(
        &self,
        what: &str,
        expr: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        let script = format!("try {{ return ({expr}) || null; }} catch (e) {{ return null; }}");
        loop {
            let v = self.js(&script).await?;
            if !v.is_null() && v != Value::Bool(false) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                let text = self.text("main").await.unwrap_or_default();
                bail!(
                    "{}: waited {timeout:?} for {what} on {}; the page says: {}",
                    self.name,
                    self.path().await.unwrap_or_default(),
                    text.chars().take(600).collect::<String>()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the element matching `css` contains `text`.
    pub async fn wait_text(&self, css: &str, text: &str, timeout: Duration) -> anyhow::Result<()> {
        let expr = format!(
            "document.querySelector({}) && document.querySelector({}).textContent.includes({})",
            json!(css),
            json!(css),
            json!(text)
        );
        self.wait_js(&format!("{css} to say {text:?}"), &expr, timeout).await.map(|_| ())
    }

    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        Ok(self.client.find(Locator::Css(css)).await?.text().await?)
    }

    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("{}: find {css}", self.name))?
            .click()
            .await
            .with_context(|| format!("{}: click {css}", self.name))?;
        Ok(())
    }

    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let el = self.client.find(Locator::Css(css)).await?;
        el.clear().await?;
        el.send_keys(text).await?;
        Ok(())
    }

    /// Presses keys as a keyboard does (to whatever has focus, frames included).
    pub async fn keys(&self, keys: &[char]) -> anyhow::Result<()> {
        let mut seq = KeyActions::new("keyboard".into());
        for k in keys {
            seq = seq.then(KeyAction::Down { value: *k }).then(KeyAction::Up { value: *k });
        }
        self.client.perform_actions(seq).await?;
        Ok(())
    }

    pub async fn type_keys(&self, text: &str) -> anyhow::Result<()> {
        let chars: Vec<char> = text.chars().collect();
        self.keys(&chars).await
    }

    pub async fn press(&self, key: Key) -> anyhow::Result<()> {
        self.keys(&[char::from(key)]).await
    }

    /// Presses Tab until `expr` (evaluated with `el` = the focused element) holds.
    pub async fn tab_to(&self, what: &str, expr: &str) -> anyhow::Result<()> {
        let check = format!("const el = document.activeElement; return Boolean(el && ({expr}));");
        for _ in 0..60 {
            if self.js(&check).await? == Value::Bool(true) {
                return Ok(());
            }
            self.press(Key::Tab).await?;
        }
        bail!("{}: could not reach {what} with Tab", self.name)
    }

    /// Runs axe-core (WCAG 2.0/2.1/2.2 A and AA rules) on the current document and returns
    /// the serious and critical violations, described.
    pub async fn axe(&self, axe_source: &str, page: &str) -> anyhow::Result<Vec<String>> {
        self.client.execute(axe_source, vec![]).await.context("inject axe-core")?;
        let result = self
            .client
            .execute_async(
                r#"const done = arguments[arguments.length - 1];
                   axe.run(document, {runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]}})
                     .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                         nodes: v.nodes.map(n => n.target.join(" ")).slice(0, 5)}))))
                     .catch(e => done([{id: "axe-error", impact: "critical", help: String(e), nodes: []}]));"#,
                vec![],
            )
            .await?;
        let mut serious = Vec::new();
        for v in result.as_array().cloned().unwrap_or_default() {
            let impact = v["impact"].as_str().unwrap_or("");
            let line = format!("{page}: {} ({impact}): {} at {}", v["id"], v["help"], v["nodes"]);
            eprintln!("[web] {}: axe {line}", self.name);
            if impact == "serious" || impact == "critical" {
                serious.push(line);
            }
        }
        Ok(serious)
    }

    /// Console lines that report an uncaught error (exceptions and unhandled rejections).
    pub async fn uncaught_errors(&self) -> anyhow::Result<Vec<String>> {
        let log = self.client.issue_cmd(ConsoleLog).await.unwrap_or(Value::Null);
        let mut out = Vec::new();
        for e in log.as_array().cloned().unwrap_or_default() {
            let msg = e["message"].as_str().unwrap_or("").to_owned();
            if msg.contains("Uncaught") {
                out.push(msg);
            }
        }
        Ok(out)
    }

    /// Bytes transferred for this document and what it loaded so far (from the Resource
    /// Timing API), split into the page's own files and API calls under `/v1/`.
    pub async fn transferred(&self) -> anyhow::Result<(u64, u64)> {
        let v = self
            .js(
                r#"const all = [...performance.getEntriesByType("navigation"), ...performance.getEntriesByType("resource")];
                   let page = 0, api = 0;
                   for (const e of all) { const u = new URL(e.name); if (u.pathname.startsWith("/v1/")) api += e.transferSize; else page += e.transferSize; }
                   return [page, api];"#,
            )
            .await?;
        Ok((v[0].as_u64().unwrap_or(0), v[1].as_u64().unwrap_or(0)))
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
