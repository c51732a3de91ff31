//! Test support (never linked into a service): the NATS topology as local processes, a
//! hub with JetStream domain [`HUB_DOMAIN`] and one leaf node per region with its own
//! JetStream domain (the region id).
//!
//! [`render_hub`] and [`render_leaf`] fill the templates shipped in `deploy/nats/`, so local
//! stacks and tests run exactly the configuration operators deploy. [`LocalNats`] starts
//! such a topology as `nats-server` processes on free ports of 127.0.0.1 (for `cargo xtask
//! up`, the end-to-end harness and tests), optionally with a [`LinkProxy`] between each
//! leaf and the hub so that a test can cut a region off and heal it again, optionally
//! signing everyone in as one of a list of NKey users ([`NatsUser`]) held to permissions,
//! and optionally speaking TLS on every link, the hub taking only leaves with a certificate
//! of the same authority ([`NatsTlsFiles`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use parking_lot::Mutex;
use tessera_api::RegionId;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const HUB_TEMPLATE: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/nats/hub.conf.tmpl"));
const LEAF_TEMPLATE: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/nats/leaf.conf.tmpl"));

pub use tessera_bus::HUB_DOMAIN;

/// Parameters of the hub's configuration.
#[derive(Debug, Clone)]
pub struct HubParams {
    pub server_name: String,
    pub host: String,
    pub client_port: u16,
    pub http_port: u16,
    pub leaf_port: u16,
    /// `host:port` the hub tells leaf nodes to dial (its public leafnode address).
    pub leaf_advertise: String,
    pub store_dir: PathBuf,
}

/// Parameters of a region leaf node's configuration.
#[derive(Debug, Clone)]
pub struct LeafParams {
    pub region: RegionId,
    pub server_name: String,
    pub host: String,
    pub client_port: u16,
    pub http_port: u16,
    pub store_dir: PathBuf,
    /// `nats-leaf://host:port` of the hub's leafnode listener (or of a proxy in front of it).
    pub hub_leaf_url: String,
}

/// Fills `{{name}}` placeholders; every placeholder must have a value.
fn render(template: &str, values: &BTreeMap<&str, String>) -> anyhow::Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").context("find the end of a template placeholder")?;
        let name = after[..end].trim();
        let value = values.get(name).with_context(|| format!("no value for placeholder {name}"))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The hub's configuration file text.
pub fn render_hub(p: &HubParams) -> anyhow::Result<String> {
    let values = BTreeMap::from([
        ("server_name", p.server_name.clone()),
        ("host", p.host.clone()),
        ("client_port", p.client_port.to_string()),
        ("http_port", p.http_port.to_string()),
        ("leaf_port", p.leaf_port.to_string()),
        ("leaf_advertise", p.leaf_advertise.clone()),
        ("store_dir", p.store_dir.display().to_string()),
    ]);
    render(HUB_TEMPLATE, &values)
}

/// A region leaf node's configuration file text.
pub fn render_leaf(p: &LeafParams) -> anyhow::Result<String> {
    let values = BTreeMap::from([
        ("region", p.region.to_string()),
        ("server_name", p.server_name.clone()),
        ("host", p.host.clone()),
        ("client_port", p.client_port.to_string()),
        ("http_port", p.http_port.to_string()),
        ("store_dir", p.store_dir.display().to_string()),
        ("hub_leaf_url", p.hub_leaf_url.clone()),
    ]);
    render(LEAF_TEMPLATE, &values)
}

/// A free TCP port on 127.0.0.1 for a local service to listen on.
///
/// The port is free when asked, and picked so that it stays free until the service binds
/// it: it lies below the kernel's ephemeral range (so no outgoing connection is given it
/// meanwhile), and this process never hands out the same port twice (so two stacks started
/// at once by one test binary cannot share one; a service whose port was taken would fail
/// to bind while the other stack's process answered its readiness check). Another process
/// may still take it; the search starts at a place drawn from the clock and process id.
pub fn free_port() -> anyhow::Result<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    const LOWEST: u32 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let mut handed_out = HANDED_OUT.lock();
    if ephemeral_start > LOWEST + 1_000 {
        let span = ephemeral_start - LOWEST;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let start = (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % span;
        for i in 0..span {
            let port = (LOWEST + (start + i) % span) as u16;
            if !handed_out.contains(&port)
                && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            {
                handed_out.insert(port);
                return Ok(port);
            }
        }
    }
    // No room below the ephemeral range: any port the kernel gives, still never twice.
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind an ephemeral port")?;
        let port = l.local_addr()?.port();
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1")
}

/// Finds the `nats-server` binary: on `PATH`, else where Debian installs it.
pub fn nats_server_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    for candidate in ["/usr/sbin/nats-server", "/usr/local/bin/nats-server"] {
        if Path::new(candidate).is_file() {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!("nats-server not found on PATH (install it with `apt-get install nats-server`)")
}

/// One `nats-server` process, killed when dropped.
#[derive(Debug)]
pub struct NatsProcess {
    name: String,
    config_path: PathBuf,
    log_path: PathBuf,
    client_port: u16,
    http_port: u16,
    child: Option<Child>,
}

impl NatsProcess {
    /// Writes `config` next to the server's data and starts the server, waiting until it
    /// accepts clients.
    pub async fn start(
        name: &str,
        dir: &Path,
        config: &str,
        client_port: u16,
        http_port: u16,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let config_path = dir.join(format!("{name}.conf"));
        std::fs::write(&config_path, config)
            .with_context(|| format!("write {}", config_path.display()))?;
        let mut process = NatsProcess {
            name: name.to_owned(),
            config_path,
            log_path: dir.join(format!("{name}.log")),
            client_port,
            http_port,
            child: None,
        };
        process.restart().await?;
        Ok(process)
    }

    /// Starts the server again (after [`NatsProcess::kill`]) with the same configuration
    /// and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("open {}", self.log_path.display()))?;
        let child = Command::new(nats_server_binary()?)
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start nats-server {}", self.name))?;
        self.child = Some(child);
        self.wait_healthy().await
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.http_port));
        for _ in 0..200 {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "nats-server {} exited with {status}; see {}",
                    self.name,
                    self.log_path.display()
                );
            }
            if let Ok(body) = http_get(addr, "/healthz?js-enabled-only=true").await
                && body.contains("ok")
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("nats-server {} did not become healthy; see {}", self.name, self.log_path.display())
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `nats://127.0.0.1:<client port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// The monitoring endpoint, `127.0.0.1:<http port>`.
    pub fn monitor_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    /// Number of leafnode connections (`/leafz`).
    pub async fn leaf_connections(&self) -> anyhow::Result<u64> {
        let body = http_get(self.monitor_addr(), "/leafz").await?;
        let v: serde_json::Value = serde_json::from_str(&body).context("parse /leafz")?;
        Ok(v["leafnodes"].as_u64().unwrap_or(0))
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tiny HTTP/1.0 GET for the monitoring endpoints (no client library needed).
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream =
        tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await??;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok(body.to_owned())
}

/// A TCP relay in front of the hub's leafnode listener that can cut one region off and
/// heal it again, to partition a region in tests.
///
/// Each region's leaf dials its own listening address of the proxy, which is how the proxy
/// tells regions apart without reading the link (which may be TLS). Behind a proxy the hub
/// advertises a leafnode address where nothing listens: leaves add what the hub advertises
/// to the addresses they dial, and must not learn a way around the proxy.
/// Cutting a region closes its relayed connections and refuses its new ones until it is
/// healed.
#[derive(Debug, Clone)]
pub struct LinkProxy {
    inner: Arc<ProxyInner>,
}

#[derive(Debug)]
struct ProxyInner {
    listen: BTreeMap<RegionId, SocketAddr>,
    target: Mutex<Option<SocketAddr>>,
    cut: Mutex<BTreeSet<RegionId>>,
    connections: Mutex<Vec<(RegionId, AbortHandle)>>,
    accept: Mutex<Vec<AbortHandle>>,
}

impl LinkProxy {
    /// Listens on a free port of 127.0.0.1 for each region; relays to the target set with
    /// [`LinkProxy::set_target`].
    pub async fn start(regions: &[RegionId]) -> anyhow::Result<Self> {
        let mut listeners = Vec::new();
        let mut listen = BTreeMap::new();
        for region in regions {
            let listener = TcpListener::bind("127.0.0.1:0").await.context("bind link proxy")?;
            listen.insert(region.clone(), listener.local_addr()?);
            listeners.push((region.clone(), listener));
        }
        let inner = Arc::new(ProxyInner {
            listen,
            target: Mutex::new(None),
            cut: Mutex::new(BTreeSet::new()),
            connections: Mutex::new(Vec::new()),
            accept: Mutex::new(Vec::new()),
        });
        for (region, listener) in listeners {
            let weak = Arc::downgrade(&inner);
            let task = tokio::spawn(async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else { continue };
                    let Some(inner) = weak.upgrade() else { return };
                    let Some(target) = *inner.target.lock() else { continue };
                    if inner.cut.lock().contains(&region) {
                        continue; // dropped: the leaf sees its connection closed
                    }
                    let region = region.clone();
                    let pump = tokio::spawn(async move {
                        let Ok(mut hub) = TcpStream::connect(target).await else { return };
                        let mut leaf = inbound;
                        let _ = leaf.set_nodelay(true);
                        let _ = hub.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut leaf, &mut hub).await;
                    });
                    let mut conns = inner.connections.lock();
                    conns.retain(|(_, h)| !h.is_finished());
                    conns.push((region, pump.abort_handle()));
                }
            });
            inner.accept.lock().push(task.abort_handle());
        }
        Ok(LinkProxy { inner })
    }

    pub fn set_target(&self, target: SocketAddr) {
        *self.inner.target.lock() = Some(target);
    }

    /// The address `region`'s leaf dials.
    pub fn listen_addr(&self, region: &RegionId) -> Option<SocketAddr> {
        self.inner.listen.get(region).copied()
    }

    /// Closes every connection of `region`'s leaf and refuses new ones until healed.
    pub fn cut(&self, region: &RegionId) {
        self.inner.cut.lock().insert(region.clone());
        let mut conns = self.inner.connections.lock();
        conns.retain(|(who, handle)| {
            if who == region {
                handle.abort();
                false
            } else {
                !handle.is_finished()
            }
        });
    }

    pub fn heal(&self, region: &RegionId) {
        self.inner.cut.lock().remove(region);
    }

    pub fn is_cut(&self, region: &RegionId) -> bool {
        self.inner.cut.lock().contains(region)
    }
}

impl Drop for ProxyInner {
    fn drop(&mut self) {
        for h in self.accept.lock().drain(..) {
            h.abort();
        }
        for (_, h) in self.connections.lock().drain(..) {
            h.abort();
        }
    }
}

/// Certificate files of a [`LocalNats`] topology that speaks TLS on every link.
#[derive(Debug, Clone)]
pub struct NatsTlsFiles {
    /// The servers' certificate (PEM): it must name `127.0.0.1` and be good for both
    /// server and client authentication, as each leaf presents it to the hub too.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The authority that signed it: clients trust it, and the hub accepts only leaves
    /// whose certificate it signed.
    pub ca_file: PathBuf,
}

impl NatsTlsFiles {
    /// A `tls { ... }` block (`extra` lines go inside it).
    fn block(&self, indent: &str, with_ca: bool, extra: &str) -> String {
        let q = |p: &Path| serde_json::Value::from(p.display().to_string()).to_string();
        let mut out = format!(
            "{indent}tls {{\n{indent}  cert_file: {}\n{indent}  key_file: {}\n",
            q(&self.cert_file),
            q(&self.key_file)
        );
        if with_ca {
            out.push_str(&format!("{indent}  ca_file: {}\n", q(&self.ca_file)));
        }
        out.push_str(extra);
        out.push_str(&format!("{indent}  timeout: 5\n{indent}}}\n"));
        out
    }
}

/// Options of [`LocalNats::start`].
#[derive(Debug, Clone, Default)]
pub struct LocalNatsOptions {
    /// Put a [`LinkProxy`] between the leaves and the hub, so regions can be cut off.
    pub cuttable_links: bool,
    /// When not empty, every server refuses a client that is not one of these users (and
    /// holds each to its permissions), and the leaves sign in to the hub's leafnode port
    /// with a password made for this run, so nothing anonymous can join as a leaf either.
    pub users: Vec<NatsUser>,
    /// TLS on every link: the servers' client listeners take TLS only, and the hub's
    /// leafnode listener takes only leaves presenting a certificate of the same authority.
    pub tls: Option<NatsTlsFiles>,
}

/// An NKey user of a [`LocalNats`] topology and what it may do.
#[derive(Debug, Clone)]
pub struct NatsUser {
    /// The public NKey (`U...`).
    pub nkey: String,
    /// Subjects it may publish to (wildcards allowed); empty: none at all.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to; empty: none at all.
    pub subscribe: Vec<String>,
    /// The one leaf it may sign in to (a region's core), or `None`: every server.
    pub region: Option<RegionId>,
}

impl NatsUser {
    /// A user allowed to publish and subscribe to `subjects`.
    pub fn new(nkey: impl Into<String>, publish: &[&str], subscribe: &[&str]) -> Self {
        let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        NatsUser {
            nkey: nkey.into(),
            publish: own(publish),
            subscribe: own(subscribe),
            region: None,
        }
    }

    /// The same user, accepted only by `region`'s leaf.
    pub fn only_on(mut self, region: RegionId) -> Self {
        self.region = Some(region);
        self
    }
}

/// An `authorization { users: [...] }` block for `users`.
fn authorization_block(users: &[&NatsUser]) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            r#"{ deny: [">"] }"#.to_owned()
        } else {
            let quoted: Vec<String> =
                v.iter().map(|s| serde_json::Value::from(s.as_str()).to_string()).collect();
            format!("{{ allow: [{}] }}", quoted.join(", "))
        }
    };
    let mut out = String::from(
        "\n# Clients sign in as one of these NKey users; anyone else is refused.\nauthorization {\n  users: [\n",
    );
    for u in users {
        out.push_str(&format!(
            "    {{ nkey: {}, permissions: {{ publish: {}, subscribe: {} }} }}\n",
            serde_json::Value::from(u.nkey.as_str()),
            list(&u.publish),
            list(&u.subscribe)
        ));
    }
    out.push_str("  ]\n}\n");
    out
}

/// A hub and one leaf node per region, as local processes.
#[derive(Debug)]
pub struct LocalNats {
    pub hub: NatsProcess,
    pub leaves: BTreeMap<RegionId, NatsProcess>,
    pub proxy: Option<LinkProxy>,
    /// Clients must speak TLS (URLs are `tls://`).
    pub tls: bool,
    /// The hub's own leafnode listener (behind the proxy, if any).
    pub hub_leaf: SocketAddr,
    /// The password leaves sign in with on the hub's leafnode port (made for the run, with
    /// [`LocalNatsOptions::users`]).
    pub leaf_password: Option<String>,
}

impl LocalNats {
    /// Starts the topology under `dir` (configs, logs and JetStream data) and waits until
    /// every leaf is connected to the hub.
    pub async fn start(
        dir: &Path,
        regions: &[RegionId],
        opts: LocalNatsOptions,
    ) -> anyhow::Result<Self> {
        let proxy = if opts.cuttable_links { Some(LinkProxy::start(regions).await?) } else { None };
        // With users, the hub's leafnode port takes only leaves that know this password.
        let leaf_password = (!opts.users.is_empty()).then(|| {
            nkeys::KeyPair::new_user().public_key().chars().skip(1).take(32).collect::<String>()
        });
        let leaf_port = free_port()?;
        let hub_leaf = SocketAddr::from(([127, 0, 0, 1], leaf_port));
        let hub_params = HubParams {
            server_name: "hub".to_owned(),
            host: "127.0.0.1".to_owned(),
            client_port: free_port()?,
            http_port: free_port()?,
            leaf_port,
            leaf_advertise: match &proxy {
                // Nothing listens there (see [`LinkProxy`]).
                Some(_) => SocketAddr::from(([127, 0, 0, 1], free_port()?)).to_string(),
                None => hub_leaf.to_string(),
            },
            store_dir: dir.join("data").join("hub"),
        };
        if let Some(p) = &proxy {
            p.set_target(hub_leaf);
        }
        let mut hub_conf = render_hub(&hub_params)?;
        let mut leafnodes_extra = String::new();
        if let Some(password) = &leaf_password {
            leafnodes_extra
                .push_str(&format!("  authorization {{ user: leaf, password: {password:?} }}\n"));
        }
        if let Some(tls) = &opts.tls {
            leafnodes_extra.push_str(&tls.block("  ", true, "    verify: true\n"));
            hub_conf.push_str(&format!("\n# Clients: TLS only.\n{}", tls.block("", false, "")));
        }
        if !leafnodes_extra.is_empty() {
            anyhow::ensure!(
                hub_conf.contains("\nleafnodes {\n"),
                "the hub template has no leafnodes block"
            );
            hub_conf = hub_conf.replacen(
                "\nleafnodes {\n",
                &format!("\nleafnodes {{\n{leafnodes_extra}"),
                1,
            );
        }
        if leaf_password.is_some() {
            hub_conf.push_str(&authorization_block(
                &opts.users.iter().filter(|u| u.region.is_none()).collect::<Vec<_>>(),
            ));
        }
        let hub =
            NatsProcess::start("hub", dir, &hub_conf, hub_params.client_port, hub_params.http_port)
                .await?;
        let mut leaves = BTreeMap::new();
        for region in regions {
            let entry = proxy.as_ref().and_then(|p| p.listen_addr(region)).unwrap_or(hub_leaf);
            let hub_leaf_url = match &leaf_password {
                Some(password) => format!("nats-leaf://leaf:{password}@{entry}"),
                None => format!("nats-leaf://{entry}"),
            };
            let params = LeafParams {
                region: region.clone(),
                server_name: format!("leaf-{region}"),
                host: "127.0.0.1".to_owned(),
                client_port: free_port()?,
                http_port: free_port()?,
                store_dir: dir.join("data").join(format!("leaf-{region}")),
                hub_leaf_url: hub_leaf_url.clone(),
            };
            let name = format!("leaf-{region}");
            let mut leaf_conf = render_leaf(&params)?;
            if let Some(tls) = &opts.tls {
                // The link to the hub: TLS, presenting the certificate the hub verifies.
                let remote = format!("{{ url: {} }}", serde_json::Value::from(hub_leaf_url));
                anyhow::ensure!(leaf_conf.contains(&remote), "the leaf template has no remote");
                let with_tls = format!(
                    "{{\n      url: {}\n{}    }}",
                    serde_json::Value::from(params.hub_leaf_url.as_str()),
                    tls.block("      ", true, "")
                );
                leaf_conf = leaf_conf.replacen(&remote, &with_tls, 1);
                leaf_conf
                    .push_str(&format!("\n# Clients: TLS only.\n{}", tls.block("", false, "")));
            }
            if !opts.users.is_empty() {
                leaf_conf.push_str(&authorization_block(
                    &opts
                        .users
                        .iter()
                        .filter(|u| u.region.as_ref().is_none_or(|r| r == region))
                        .collect::<Vec<_>>(),
                ));
            }
            let leaf =
                NatsProcess::start(&name, dir, &leaf_conf, params.client_port, params.http_port)
                    .await?;
            leaves.insert(region.clone(), leaf);
        }
        let topology =
            LocalNats { hub, leaves, proxy, tls: opts.tls.is_some(), hub_leaf, leaf_password };
        topology.wait_connected(Duration::from_secs(10)).await?;
        Ok(topology)
    }

    /// Waits until the hub sees one leafnode connection per region.
    pub async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        let want = self.leaves.len() as u64;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.hub.leaf_connections().await.unwrap_or(0) >= want {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("leaf nodes did not connect to the hub within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `nats://` (or `tls://`) of the hub.
    pub fn hub_url(&self) -> String {
        self.client_url(self.hub.url())
    }

    fn client_url(&self, url: String) -> String {
        match url.strip_prefix("nats://") {
            Some(rest) if self.tls => format!("tls://{rest}"),
            _ => url,
        }
    }

    pub fn leaf(&self, region: &RegionId) -> Option<&NatsProcess> {
        self.leaves.get(region)
    }

    /// `nats://...` (or `tls://...`) of a region's leaf node.
    pub fn leaf_url(&self, region: &RegionId) -> Option<String> {
        self.leaves.get(region).map(|l| self.client_url(l.url()))
    }

    /// Cuts `region`'s leaf off the hub (needs [`LocalNatsOptions::cuttable_links`]).
    pub fn cut(&self, region: &RegionId) -> anyhow::Result<()> {
        self.proxy.as_ref().context("links are not cuttable")?.cut(region);
        Ok(())
    }

    /// Reconnects a region cut with [`LocalNats::cut`].
    pub fn heal(&self, region: &RegionId) -> anyhow::Result<()> {
        self.proxy.as_ref().context("links are not cuttable")?.heal(region);
        Ok(())
    }
}

/// The local development topology shipped in `deploy/nats/local/` (fixed ports, data
/// under `./data/nats/`): the hub and a leaf for each of `us-east`, `eu-west`, `ap-south`.
pub fn local_default_configs() -> anyhow::Result<Vec<(String, String)>> {
    let hub = HubParams {
        server_name: "hub".into(),
        host: "127.0.0.1".into(),
        client_port: 4222,
        http_port: 8222,
        leaf_port: 7422,
        leaf_advertise: "127.0.0.1:7422".into(),
        store_dir: PathBuf::from("./data/nats/hub"),
    };
    let mut out = vec![("hub.conf".to_owned(), render_hub(&hub)?)];
    for (i, region) in ["us-east", "eu-west", "ap-south"].into_iter().enumerate() {
        let offset = i as u16 + 1;
        let leaf = LeafParams {
            region: RegionId::parse(region)?,
            server_name: format!("leaf-{region}"),
            host: "127.0.0.1".into(),
            client_port: 4222 + offset,
            http_port: 8222 + offset,
            store_dir: PathBuf::from(format!("./data/nats/leaf-{region}")),
            hub_leaf_url: "nats-leaf://127.0.0.1:7422".into(),
        };
        out.push((format!("leaf-{region}.conf"), render_leaf(&leaf)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_never_handed_out_twice_and_lie_below_the_ephemeral_range() {
        let ephemeral_start: u16 =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
                .ok()
                .and_then(|r| r.split_whitespace().next()?.parse().ok())
                .unwrap_or(32_768);
        let mut seen = BTreeSet::new();
        for _ in 0..500 {
            let port = free_port().unwrap();
            assert!(seen.insert(port), "port {port} handed out twice");
            assert!(port < ephemeral_start, "port {port} is in the ephemeral range");
        }
    }

    #[test]
    fn shipped_local_configs_match_the_templates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats/local");
        for (name, text) in local_default_configs().unwrap() {
            let path = dir.join(&name);
            let shipped = std::fs::read_to_string(&path).unwrap_or_default();
            if shipped != text {
                // Regenerate with: TESSERA_WRITE_NATS_LOCAL=1 cargo test -p tessera-local-nats
                if std::env::var_os("TESSERA_WRITE_NATS_LOCAL").is_some() {
                    std::fs::write(&path, &text).unwrap();
                    continue;
                }
                panic!("{} is stale; regenerate it from the templates", path.display());
            }
        }
    }

    #[test]
    fn authorization_lists_each_user_with_its_permissions() {
        let edge = NatsUser::new("UEDGE", &[], &["tessera.>"]);
        let core = NatsUser::new("UCORE", &["tessera.>", "$JS.>"], &["tessera.>"])
            .only_on(RegionId::parse("eu-west").unwrap());
        let text = authorization_block(&[&edge, &core]);
        assert!(text.contains("authorization {"), "{text}");
        assert!(
            text.contains(r#"{ nkey: "UEDGE", permissions: { publish: { deny: [">"] }, subscribe: { allow: ["tessera.>"] } } }"#),
            "{text}"
        );
        assert!(
            text.contains(r#"{ nkey: "UCORE", permissions: { publish: { allow: ["tessera.>", "$JS.>"] }, subscribe: { allow: ["tessera.>"] } } }"#),
            "{text}"
        );
    }

    #[test]
    fn renders_every_placeholder_and_refuses_unknown_ones() {
        let text = render_leaf(&LeafParams {
            region: RegionId::parse("eu-west").unwrap(),
            server_name: "leaf-eu-west".into(),
            host: "127.0.0.1".into(),
            client_port: 4223,
            http_port: 8223,
            store_dir: PathBuf::from("/var/lib/nats"),
            hub_leaf_url: "nats-leaf://127.0.0.1:7422".into(),
        })
        .unwrap();
        assert!(!text.contains("{{"), "{text}");
        assert!(text.contains("domain: eu-west"));
        assert!(text.contains("url: \"nats-leaf://127.0.0.1:7422\""));
        let err = render("a {{missing}} b", &BTreeMap::new()).unwrap_err();
        assert_eq!(err.to_string(), "no value for placeholder missing");
    }
}
