//! The whole local multi-region stack as real processes: a NATS hub and one leaf per
//! region, the payment simulator, the mail sink, one core per region over one shared
//! embedded store, the region router and the edge host running the WASM components.
//!
//! `cargo xtask up` runs it on fixed ports for people; tests run it on free ports, as many
//! at once as they like. Everything it starts is stopped when the [`Stack`] is dropped.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tessera_api::RegionId;
use tessera_identity::{Keyset, SigningKeyPair};
use tessera_local_nats::{LocalNats, LocalNatsOptions, NatsUser, free_port};

/// How to start a stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Where configs, logs and data go (created; reused data survives restarts).
    pub run_dir: PathBuf,
    pub regions: Vec<String>,
    /// Fixed ports from this base (`up`), or free ports (`None`, tests).
    pub base_port: Option<u16>,
    /// The fan-facing edge port (8080 for `up`).
    pub edge_port: Option<u16>,
    /// Where the service binaries are.
    pub bin_dir: PathBuf,
    /// The repository root (for `edge-components/spin.toml` and seat maps).
    pub repo_root: PathBuf,
    pub with_edge: bool,
    /// Put cuttable proxies between each leaf and the hub (partition tests).
    pub cuttable_links: bool,
    /// Extra `TESSERA_PAYSIM__...`-style settings for the simulator, as TOML lines.
    pub paysim_toml: String,
    /// Extra core settings, as TOML lines appended to every core's file.
    pub core_toml: String,
    /// `tracing` filter for the services.
    pub log_filter: String,
    /// The edge's bot policy (JSON, `tessera_edge_logic::bot::Policy`); empty = defaults.
    pub bot_policy: String,
    /// Where every service exports its spans (OTLP/HTTP base URL); none when unset.
    pub otlp_endpoint: Option<String>,
    /// Extra settings of the cores' `[queue]` table (TOML lines).
    pub core_queue_toml: String,
    /// Extra edge component variables (`[variables]` of the edge host's config).
    pub edge_variables: BTreeMap<String, String>,
    /// Extra edge host settings, as TOML appended to its file (e.g. a `[limits]` table).
    pub edge_toml: String,
    /// The cores serve HTTPS only, and require the client certificate the router presents
    /// (mutual TLS, with certificates made for the run: [`crate::pki`]). The stack's own
    /// HTTP client trusts the run's authority and presents the same certificate.
    pub core_tls: bool,
}

impl StackOptions {
    pub fn for_tests(name: &str) -> anyhow::Result<Self> {
        let repo_root = repo_root()?;
        let run_dir =
            repo_root.join("target").join("e2e").join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run_dir);
        Ok(StackOptions {
            run_dir,
            regions: vec!["us-east".into(), "eu-west".into()],
            base_port: None,
            edge_port: None,
            bin_dir: bin_dir()?,
            repo_root,
            with_edge: true,
            cuttable_links: false,
            paysim_toml: String::new(),
            core_toml: String::new(),
            core_tls: false,
            log_filter: "info".into(),
            bot_policy: String::new(),
            otlp_endpoint: None,
            core_queue_toml: String::new(),
            edge_variables: BTreeMap::new(),
            edge_toml: String::new(),
        })
    }
}

/// The repository root: where the workspace `Cargo.toml` with `[workspace]` is.
pub fn repo_root() -> anyhow::Result<PathBuf> {
    let mut dir = std::env::current_dir()?;
    loop {
        let manifest = dir.join("Cargo.toml");
        if manifest.is_file()
            && std::fs::read_to_string(&manifest)?.contains("[workspace]")
            && dir.join("e2e").is_dir()
        {
            return Ok(dir);
        }
        if !dir.pop() {
            // Not inside the repository: use the one this crate was built from.
            let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf);
            return built_in
                .filter(|d| d.join("e2e").is_dir())
                .context("run this inside the Tessera repository");
        }
    }
}

/// Where the service binaries are: `TESSERA_BIN_DIR`, else next to this executable
/// (`target/<profile>`, also for test executables under `target/<profile>/deps`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("TESSERA_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("executable has no directory")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The keys and secrets of a local stack. Derived from fixed phrases
/// (`tessera_identity::dev`): development only, and refused by production mode.
#[derive(Debug, Clone)]
pub struct DevKeys {
    pub identity: SigningKeyPair,
    pub edge: SigningKeyPair,
    pub tickets: SigningKeyPair,
    pub watermark: SigningKeyPair,
    pub shadow_secret: String,
    pub pow_secret: String,
    pub webhook_secret: String,
    pub payments_secret: String,
    /// The edge's credential for the cores' internal endpoints.
    pub service_credential: String,
    /// The payment simulator's publishable key (for its hosted card fields).
    pub payments_publishable: String,
}

impl DevKeys {
    pub fn local() -> Self {
        use tessera_identity::dev::{Purpose, key};
        DevKeys {
            identity: key(Purpose::Identity, "dev-1"),
            edge: key(Purpose::Edge, "edge-1"),
            tickets: key(Purpose::Tickets, "tickets-1"),
            watermark: key(Purpose::Watermark, "wm-dev"),
            service_credential: tessera_identity::dev::SERVICE_CREDENTIAL.into(),
            shadow_secret: "tessera-local-shadow-secret".into(),
            pow_secret: "tessera-local-pow-secret".into(),
            webhook_secret: "whsec_tessera_local".into(),
            payments_secret: "sk_test_tessera".into(),
            payments_publishable: "pk_test_tessera".into(),
        }
    }
}

/// One child process of the stack.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log_path: PathBuf,
    /// `http://127.0.0.1:<port>/healthz`-style readiness URL.
    health_url: String,
    child: Option<Child>,
}

impl Service {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("open {}", self.log_path.display()))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "start {} ({}); build it with `cargo build --bins`",
                self.name,
                self.program.display()
            )
        })?;
        crate::reaper::watch(child.id());
        self.child = Some(child);
        Ok(())
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            crate::reaper::release(c.id());
        }
    }

    /// Asks the process to stop (SIGTERM) and waits up to `grace`, then kills it.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                crate::reaper::release(c.id());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        crate::reaper::release(c.id());
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "{} exited with {status}; last log lines:\n{}",
                    self.name,
                    tail(&self.log_path, 20)
                );
            }
            if let Ok(r) = http.get(&self.health_url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready within {timeout:?}; last log lines:\n{}",
                    self.name,
                    tail(&self.log_path, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Addresses of a running stack.
#[derive(Debug, Clone)]
pub struct Urls {
    pub edge: Option<String>,
    pub edge_admin: Option<String>,
    pub router: String,
    pub cores: BTreeMap<String, String>,
    pub paysim: String,
    pub mailsink: String,
    pub smtp: String,
    pub nats_hub: String,
    pub nats_leaves: BTreeMap<String, String>,
}

/// The NKey seeds of the stack's NATS users, made fresh for each run. The servers refuse
/// anyone else, and each user may do only what its service needs: a region's core signs in
/// only to its own leaf; the router publishes no events; the edge publishes nothing.
#[derive(Clone)]
pub struct NatsSeeds {
    pub cores: BTreeMap<String, String>,
    pub router: String,
    pub edge: String,
    /// The operator's and the tests' own user: may publish and read anything.
    pub tools: String,
}

impl std::fmt::Debug for NatsSeeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Seeds are secrets, even made-for-the-run ones: never in a log line.
        f.debug_struct("NatsSeeds")
            .field("cores", &self.cores.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl NatsSeeds {
    fn new(regions: &[String]) -> anyhow::Result<Self> {
        let seed = || -> anyhow::Result<String> {
            nkeys::KeyPair::new_user().seed().map_err(|e| anyhow::anyhow!("make an NKey: {e}"))
        };
        let mut cores = BTreeMap::new();
        for r in regions {
            cores.insert(r.clone(), seed()?);
        }
        Ok(NatsSeeds { cores, router: seed()?, edge: seed()?, tools: seed()? })
    }

    fn users(&self) -> anyhow::Result<Vec<NatsUser>> {
        let public = |seed: &str| -> anyhow::Result<String> {
            Ok(nkeys::KeyPair::from_seed(seed)
                .map_err(|e| anyhow::anyhow!("read an NKey seed: {e}"))?
                .public_key())
        };
        let all = ["tessera.>", "$JS.>", "$KV.>", "_INBOX.>"];
        let mut users = vec![
            NatsUser::new(public(&self.router)?, &["$JS.>", "$KV.>", "_INBOX.>"], &all),
            NatsUser::new(public(&self.edge)?, &[], &["tessera.>"]),
            NatsUser::new(public(&self.tools)?, &[">"], &[">"]),
        ];
        for (region, seed) in &self.cores {
            let region = RegionId::parse(region)?;
            let publish = tessera_bus::core_publish_subjects(&region);
            let publish: Vec<&str> = publish.iter().map(String::as_str).collect();
            users.push(NatsUser::new(public(seed)?, &publish, &all).only_on(region));
        }
        Ok(users)
    }
}

/// A NATS client signed in with `seed` (or anonymous with `None`), failing at once when the
/// server refuses it; over TLS trusting `ca_file` when given.
pub async fn nats_connect(
    url: &str,
    seed: Option<&str>,
    ca_file: Option<&Path>,
) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new();
    if let Some(seed) = seed {
        options = options.nkey(seed.to_owned());
    }
    if let Some(ca) = ca_file {
        options = options.add_root_certificates(ca.to_owned()).require_tls(true);
    }
    options.connect(url).await.with_context(|| format!("connect to NATS at {url}"))
}

/// A running stack.
#[derive(Debug)]
pub struct Stack {
    pub options: StackOptions,
    pub urls: Urls,
    pub keys: DevKeys,
    pub nats: LocalNats,
    pub nats_seeds: NatsSeeds,
    services: Vec<Service>,
    /// The client every test uses; with [`StackOptions::core_tls`] it trusts the run's
    /// authority and presents the router's client certificate.
    pub http: reqwest::Client,
    /// The run's certificates (NATS speaks TLS with them; the cores with
    /// [`StackOptions::core_tls`]).
    pub pki: crate::pki::TestPki,
}

struct Ports {
    next: Option<u16>,
}

impl Ports {
    fn take(&mut self) -> anyhow::Result<u16> {
        match &mut self.next {
            Some(p) => {
                let port = *p;
                *p += 1;
                Ok(port)
            }
            None => free_port(),
        }
    }
}

/// The edge component's variables for a local stack (the host's `[variables]`, or
/// `SPIN_VARIABLE_<NAME>` for `spin up`).
pub fn edge_variables(
    keys: &DevKeys,
    router: &str,
    bot_policy: &str,
    payments_url: &str,
) -> Vec<(String, String)> {
    vec![
        ("mode".into(), "local".into()),
        ("router_url".into(), router.to_owned()),
        ("identity_issuer".into(), format!("{router}/v1/dev")),
        ("identity_keys".into(), Keyset::new([keys.identity.public()]).to_config_string()),
        ("queue_signing_key".into(), keys.edge.to_config_string()),
        ("queue_keys".into(), Keyset::new([keys.edge.public()]).to_config_string()),
        ("shadow_secret".into(), keys.shadow_secret.clone()),
        ("pow_secret".into(), keys.pow_secret.clone()),
        ("bot_policy".into(), bot_policy.to_owned()),
        ("watermark_keys".into(), Keyset::new([keys.watermark.public()]).to_config_string()),
        ("service_credential".into(), keys.service_credential.clone()),
        ("payments_url".into(), payments_url.to_owned()),
        ("payments_publishable_key".into(), keys.payments_publishable.clone()),
    ]
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

impl Stack {
    /// The file holding the tools' NKey seed (`nats --nkey <file>`), readable by its owner only.
    pub fn nats_tools_seed_file(&self) -> PathBuf {
        self.options.run_dir.join("nats").join("tools.nk")
    }

    /// A NATS client of the operator's tools (may publish and read anything) on `url`.
    pub async fn nats_client(&self, url: &str) -> anyhow::Result<async_nats::Client> {
        nats_connect(url, Some(&self.nats_seeds.tools), Some(&self.pki.ca_file)).await
    }

    /// Starts everything and waits until every service is ready. `progress` hears about each
    /// step.
    pub async fn start(options: StackOptions, progress: &dyn Fn(&str)) -> anyhow::Result<Stack> {
        let run = &options.run_dir;
        std::fs::create_dir_all(run.join("logs"))?;
        let keys = DevKeys::local();
        let regions: Vec<RegionId> =
            options.regions.iter().map(|r| RegionId::parse(r)).collect::<Result<_, _>>()?;
        progress(&format!("starting NATS: hub + {} leaf nodes", regions.len()));
        let nats_seeds = NatsSeeds::new(&options.regions)?;
        // From here on, a signal that ends the harness ends every process it started.
        crate::reaper::arm();
        let pki = crate::pki::TestPki::write(&run.join("tls"))?;
        let nats = LocalNats::start(
            &run.join("nats"),
            &regions,
            LocalNatsOptions {
                cuttable_links: options.cuttable_links,
                users: nats_seeds.users()?,
                tls: Some(pki.nats_tls()),
            },
        )
        .await
        .context("start NATS")?;
        // The tools' seed, for a developer's `nats --nkey` against the local stack.
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let path = run.join("nats").join("tools.nk");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("write {}", path.display()))?;
            writeln!(f, "{}", nats_seeds.tools)?;
        }

        let mut ports = Ports { next: options.base_port };
        let router_port = ports.take()?;
        let paysim_port = ports.take()?;
        let mail_http_port = ports.take()?;
        let smtp_port = ports.take()?;
        let edge_admin_port = ports.take()?;
        let mut core_ports = BTreeMap::new();
        for r in &options.regions {
            core_ports.insert(r.clone(), ports.take()?);
        }
        let edge_port = match options.edge_port {
            Some(p) => p,
            None => ports.take()?,
        };
        let core_pki = options.core_tls.then_some(&pki);
        let core_scheme = if core_pki.is_some() { "https" } else { "http" };
        let nats_ca = toml_str(&pki.ca_file.display().to_string());
        let router = format!("http://127.0.0.1:{router_port}");
        let urls = Urls {
            edge: options.with_edge.then(|| format!("http://127.0.0.1:{edge_port}")),
            edge_admin: options.with_edge.then(|| format!("http://127.0.0.1:{edge_admin_port}")),
            router: router.clone(),
            cores: core_ports
                .iter()
                .map(|(r, p)| (r.clone(), format!("{core_scheme}://127.0.0.1:{p}")))
                .collect(),
            paysim: format!("http://127.0.0.1:{paysim_port}"),
            mailsink: format!("http://127.0.0.1:{mail_http_port}"),
            smtp: format!("127.0.0.1:{smtp_port}"),
            nats_hub: nats.hub_url(),
            nats_leaves: regions
                .iter()
                .filter_map(|r| nats.leaf_url(r).map(|u| (r.to_string(), u)))
                .collect(),
        };
        let bin = |name: &str| options.bin_dir.join(name);
        let log = |name: &str| run.join("logs").join(format!("{name}.log"));
        let mut telemetry =
            format!("[telemetry]\nlog_filter = {}\n", toml_str(&options.log_filter));
        if let Some(endpoint) = &options.otlp_endpoint {
            telemetry.push_str(&format!("otlp_endpoint = {}\n", toml_str(endpoint)));
        }
        let mut services = Vec::new();

        // Payment simulator, sending its webhooks through the router to any region.
        let paysim_cfg = run.join("paysim.toml");
        std::fs::write(
            &paysim_cfg,
            format!(
                "mode = \"local\"\nlisten = \"127.0.0.1:{paysim_port}\"\nsecret_key = {}\npublishable_key = {}\njournal_path = {}\n{}\n[[webhooks]]\nurl = {}\nsecret = {}\n{telemetry}",
                toml_str(&keys.payments_secret),
                toml_str(&keys.payments_publishable),
                toml_str(&run.join("paysim").join("journal.jsonl").display().to_string()),
                options.paysim_toml,
                toml_str(&format!("{router}/v1/webhooks/payments")),
                toml_str(&keys.webhook_secret),
            ),
        )?;
        services.push(Service {
            name: "paysim".into(),
            program: bin("tessera-paysim"),
            args: vec!["--config".into(), paysim_cfg.display().to_string()],
            env: vec![],
            log_path: log("paysim"),
            health_url: format!("{}/healthz", urls.paysim),
            child: None,
        });

        let mail_cfg = run.join("mailsink.toml");
        std::fs::write(
            &mail_cfg,
            format!(
                "mode = \"local\"\nsmtp_listen = \"127.0.0.1:{smtp_port}\"\nhttp_listen = \"127.0.0.1:{mail_http_port}\"\ndir = {}\n{telemetry}",
                toml_str(&run.join("mail").display().to_string())
            ),
        )?;
        services.push(Service {
            name: "mailsink".into(),
            program: bin("tessera-mailsink"),
            args: vec!["--config".into(), mail_cfg.display().to_string()],
            env: vec![],
            log_path: log("mailsink"),
            health_url: format!("{}/healthz", urls.mailsink),
            child: None,
        });

        let edge_keys = Keyset::new([keys.edge.public()]).to_config_string();
        // The development issuer lives in the cores (local mode); everyone reaches it, and
        // its discovery document and JWKS, through the router, as they would a real one.
        let issuer = format!("{router}/v1/dev");
        let store_dir = run.join("store");
        let regions_toml = format!(
            "[{}]",
            options.regions.iter().map(|r| toml_str(r)).collect::<Vec<_>>().join(", ")
        );
        let core_tls = core_pki.map_or_else(String::new, |p| {
            format!(
                "[tls]\ncert_file = {}\nkey_file = {}\nclient_ca_file = {}\n",
                toml_str(&p.server_cert_file.display().to_string()),
                toml_str(&p.server_key_file.display().to_string()),
                toml_str(&p.ca_file.display().to_string()),
            )
        });
        for (region, port) in &core_ports {
            let cfg = run.join(format!("core-{region}.toml"));
            let url = &urls.cores[region];
            std::fs::write(
                &cfg,
                format!(
                    "mode = \"local\"\nregion = {region_s}\nregions = {regions_toml}\nlisten = \"127.0.0.1:{port}\"\npublic_url = {public_url}\n\
                     [store]\npath = {store}\n\
                     [nats]\nurl = {nats}\nnkey_seed = {nats_seed}\nca_file = {nats_ca}\n\
                     [bus]\nprojection_dir = {projection}\n\
                     [identity]\nissuer = {issuer}\n\
                     [dev_issuer]\nseed = {dev_seed}\nkid = {dev_kid}\n\
                     [queue]\nedge_keys = {edge_keys}\nwatermark_signing_key = {wm_key}\n{core_queue}\
                     [payments]\nbase_url = {paysim}\nsecret_key = {psk}\nwebhook_secret = {whsec}\nrequest_timeout_ms = 2000\n\
                     [tickets]\nsigning_seed = {tseed}\nkid = {tkid}\n\
                     [service_credentials]\nedge = {svc}\n\
                     [notifications]\nfan_url = {fan_url}\n\
                     [notifications.smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\n\
                     {telemetry}{extra}\n{core_tls}",
                    region_s = toml_str(region),
                    public_url = toml_str(url),
                    store = toml_str(&store_dir.display().to_string()),
                    projection =
                        toml_str(&run.join(format!("projection-{region}")).display().to_string()),
                    nats = toml_str(
                        urls.nats_leaves.get(region).map(String::as_str).unwrap_or_default()
                    ),
                    nats_seed = toml_str(
                        nats_seeds.cores.get(region).map(String::as_str).unwrap_or_default()
                    ),
                    issuer = toml_str(&issuer),
                    dev_seed = toml_str(&keys.identity.seed_base64()),
                    wm_key = toml_str(&keys.watermark.to_config_string()),
                    dev_kid = toml_str(&keys.identity.kid),
                    edge_keys = toml_str(&edge_keys),
                    paysim = toml_str(&urls.paysim),
                    psk = toml_str(&keys.payments_secret),
                    whsec = toml_str(&keys.webhook_secret),
                    tseed = toml_str(&keys.tickets.seed_base64()),
                    tkid = toml_str(&keys.tickets.kid),
                    svc = toml_str(&keys.service_credential),
                    fan_url = toml_str(
                        urls.edge.as_deref().unwrap_or(&format!("http://127.0.0.1:{edge_port}"))
                    ),
                    extra = options.core_toml,
                    core_queue = options.core_queue_toml,
                ),
            )?;
            services.push(Service {
                name: format!("core-{region}"),
                program: bin("tessera-core"),
                args: vec!["--config".into(), cfg.display().to_string()],
                env: vec![],
                log_path: log(&format!("core-{region}")),
                health_url: format!("{url}/healthz"),
                child: None,
            });
        }

        let router_cfg = run.join("router.toml");
        let upstream = core_pki.map_or_else(String::new, |p| {
            format!(
                "[upstream]\nca_file = {}\nclient_cert_file = {}\nclient_key_file = {}\n",
                toml_str(&p.ca_file.display().to_string()),
                toml_str(&p.client_cert_file.display().to_string()),
                toml_str(&p.client_key_file.display().to_string()),
            )
        });
        let mut regions_cfg = String::new();
        for (region, url) in &urls.cores {
            regions_cfg.push_str(&format!(
                "[[regions]]\nid = {}\nurl = {}\n",
                toml_str(region),
                toml_str(url)
            ));
        }
        std::fs::write(
            &router_cfg,
            format!(
                "mode = \"local\"\nlisten = \"127.0.0.1:{router_port}\"\npop = \"local\"\nstate_file = {}\n\
                 [nats]\nurl = {}\nnkey_seed = {}\nca_file = {nats_ca}\n\
                 [identity]\nissuer = {}\n{upstream}{regions_cfg}{telemetry}",
                toml_str(&run.join("router-state.json").display().to_string()),
                toml_str(urls.nats_leaves.values().next().map(String::as_str).unwrap_or_default()),
                toml_str(&nats_seeds.router),
                toml_str(&issuer),
            ),
        )?;
        services.push(Service {
            name: "router".into(),
            program: bin("tessera-router"),
            args: vec!["--config".into(), router_cfg.display().to_string()],
            env: vec![],
            log_path: log("router"),
            health_url: format!("{router}/healthz"),
            child: None,
        });

        if options.with_edge {
            // `TESSERA_EDGE_SPIN_STRICT=1` runs the edge failing wherever Spin would.
            let spin_strict =
                std::env::var("TESSERA_EDGE_SPIN_STRICT").is_ok_and(|v| v == "1" || v == "true");
            let edge_cfg = run.join("edge.toml");
            let manifest = options.repo_root.join("edge-components").join("spin.toml");
            let variables: String =
                edge_variables(&keys, &router, &options.bot_policy, &urls.paysim)
                    .iter()
                    .map(|(k, v)| format!("{k} = {}\n", toml_str(v)))
                    .collect();
            std::fs::write(
                &edge_cfg,
                format!(
                    "mode = \"local\"\nlisten = \"127.0.0.1:{edge_port}\"\nadmin_listen = \"127.0.0.1:{edge_admin_port}\"\nmanifest = {}\npop = \"local\"\nnats_url = {}\nnats_nkey_seed = {}\nnats_ca_file = {nats_ca}\nspin_strict = {spin_strict}\n\
                     [variables]\n{variables}{extra_vars}{telemetry}{edge_toml}",
                    toml_str(&manifest.display().to_string()),
                    toml_str(
                        urls.nats_leaves.values().next().map(String::as_str).unwrap_or_default()
                    ),
                    toml_str(&nats_seeds.edge),
                    extra_vars = options
                        .edge_variables
                        .iter()
                        .map(|(k, v)| format!("{k} = {}\n", toml_str(v)))
                        .collect::<String>(),
                    edge_toml = options.edge_toml,
                ),
            )?;
            services.push(Service {
                name: "edge".into(),
                program: bin("tessera-edge"),
                args: vec!["--config".into(), edge_cfg.display().to_string()],
                env: vec![],
                log_path: log("edge"),
                health_url: format!("http://127.0.0.1:{edge_admin_port}/healthz"),
                child: None,
            });
        }

        // Clients of the stack look like a browser, as fans' do (the edge scores clients).
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::ACCEPT,
            reqwest::header::HeaderValue::from_static("application/json"),
        );
        headers.insert(
            reqwest::header::ACCEPT_LANGUAGE,
            reqwest::header::HeaderValue::from_static("en-GB,en;q=0.8"),
        );
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent("Mozilla/5.0 (X11; Linux x86_64) tessera-e2e")
            .default_headers(headers);
        if let Some(p) = core_pki {
            http =
                http.use_rustls_tls().add_root_certificate(p.ca()?).identity(p.client_identity()?);
        }
        let http = http.build()?;
        let mut stack = Stack { options, urls, keys, nats, nats_seeds, services, http, pki };
        for i in 0..stack.services.len() {
            let name = stack.services[i].name.clone();
            progress(&format!("starting {name}"));
            stack.services[i].spawn()?;
            let http = stack.http.clone();
            stack.services[i].wait_ready(&http, Duration::from_secs(60)).await?;
        }
        Ok(stack)
    }

    pub fn service(&mut self, name: &str) -> anyhow::Result<&mut Service> {
        self.services
            .iter_mut()
            .find(|s| s.name == name)
            .with_context(|| format!("no service {name}"))
    }

    /// The log file of the service `name`.
    pub fn log_path(&self, name: &str) -> anyhow::Result<PathBuf> {
        let s = self
            .services
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no service {name}"))?;
        Ok(s.log_path.clone())
    }

    pub fn service_names(&self) -> Vec<String> {
        self.services.iter().map(|s| s.name.clone()).collect()
    }

    /// The running services and their process ids (for CPU accounting).
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.services.iter().filter_map(|s| s.pid().map(|p| (s.name.clone(), p))).collect()
    }

    /// Kills a service with SIGKILL.
    pub fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        self.service(name)?.kill();
        Ok(())
    }

    /// Starts a stopped or killed service again and waits until it is ready.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let http = self.http.clone();
        let s = self.service(name)?;
        s.kill();
        s.spawn()?;
        s.wait_ready(&http, Duration::from_secs(60)).await
    }

    /// Stops every service gracefully (reverse start order), then NATS.
    pub fn stop(&mut self) {
        for s in self.services.iter_mut().rev() {
            s.stop(Duration::from_secs(5));
        }
    }

    /// Log lines at WARN or ERROR (and panics) from every service, minus the ones an
    /// entry of `expected` allows (same level, same target, same message: see
    /// [`crate::scenarios::Expected`]), and every permissions violation a NATS server
    /// logged (a service publishing or subscribing outside what its credential grants).
    pub fn unexpected_warnings(&self, expected: &[crate::scenarios::Expected]) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.services {
            let text = std::fs::read_to_string(&s.log_path).unwrap_or_default();
            for line in text.lines() {
                if let Some(l) = crate::scenarios::unexpected_log_line(line, expected) {
                    out.push(format!("{}: {l}", s.name));
                }
            }
        }
        let servers = std::iter::once(("nats-hub".to_owned(), &self.nats.hub))
            .chain(self.nats.leaves.iter().map(|(r, p)| (format!("nats-{r}"), p)));
        for (name, server) in servers {
            let text = std::fs::read_to_string(server.log_path()).unwrap_or_default();
            out.extend(
                text.lines()
                    .filter(|l| l.contains(" Violation - "))
                    .map(|l| format!("{name}: {l}")),
            );
        }
        out
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // A test that failed shows what each process was doing: whether it still ran and
        // the end of its log (the logs stay under the stack's directory).
        if std::thread::panicking() {
            for s in &mut self.services {
                let state = match s.child.as_mut().map(Child::try_wait) {
                    None => "stopped by the test".to_owned(),
                    Some(Ok(None)) => "running".to_owned(),
                    Some(Ok(Some(status))) => format!("exited on its own with {status}"),
                    Some(Err(e)) => format!("unknown ({e})"),
                };
                eprintln!(
                    "--- {} ({state}; {}), last log lines:\n{}",
                    s.name,
                    s.log_path.display(),
                    tail(&s.log_path, 12)
                );
            }
        }
        for s in self.services.iter_mut().rev() {
            s.kill();
        }
    }
}
