//! The red-team suite (`cargo xtask e2e security`): attacks on a running local stack
//! (real processes: cores, router, edge host with its WASM component, NATS, the payment
//! simulator) and on production-mode processes (a production edge; production starts of
//! the core with each unsafe setting). Every attack must be refused, with the expected
//! status and stable `code`, and must change nothing: before and after each one the suite
//! reads the sale's state from outside (availability straight from a core, each fan's
//! orders, the payment provider's journal, a waiting fan's place) and compares. A refusal
//! by one of the stack's HTTP services must also be counted under its code, by the edge
//! (`tessera_edge_refusals_total{outcome}`), the router or a core
//! (`tessera_http_refusals_total{code}`), read from their `/metrics` before and after.
//!
//! Every code a service counted a refusal under must also be in its log, on a WARN line
//! `request refused`.
//!
//! The last line is `attacks=N accepted=A state_changed=S uncounted=U unlogged=L` (plus
//! per-attack lines above it); the scenario fails unless all but `attacks` are 0.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tessera_api::queue::{QueuePhase, QueueTicketClaims};
use tessera_api::{CustomerId, EventId, headers};
use tessera_identity::{IdentityClaims, Keyset, SigningKeyPair};
use tessera_local_nats::free_port;

use crate::fan::{Api, Fan, Operator, Reply};
use crate::stack::{Stack, StackOptions};

const EVENT: &str = "redteam-night";
/// An event whose waiting room admits nobody (rate 0): a forged watermark would move it.
const LOCKED: &str = "redteam-locked";

/// One attack's verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub name: String,
    pub refused: bool,
    pub state_changed: bool,
    /// Whether a service counted the refusal under its code (`tessera_edge_refusals_total`,
    /// `tessera_http_refusals_total`); `None` where the door is no HTTP service's.
    pub counted: Option<bool>,
    pub detail: String,
}

/// Everything an attack could change, read from outside.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot(BTreeMap<String, String>);

struct Ctx {
    stack: Stack,
    edge: Api,
    router: Api,
    core: Api,
    op: Operator,
    /// Her admission was used for a hold she paid for: she owns an order.
    alice: Fan,
    /// Admitted, admission unused (kept for the parallel-reuse attack).
    bob: Fan,
    /// Waits in the locked event's queue.
    victim: Fan,
    alice_order: String,
    alice_hold: String,
    verdicts: Vec<Verdict>,
    /// Whether the attacks now run are refused by the stack's HTTP services, which count
    /// every refusal by its code (the NATS servers and production starts do not).
    http_doors: bool,
    /// `service: code` for refusals counted but never logged (see [`unlogged_refusals`]).
    unlogged: Vec<String>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

impl Ctx {
    async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let mut s = BTreeMap::new();
        for ev in [EVENT, LOCKED] {
            let a = self.core.get(&format!("/v1/events/{ev}/availability"), &[]).await?;
            let mut body = a.body.clone();
            // Only the counts: timestamps and versions move on their own.
            if let Some(o) = body.as_object_mut() {
                o.retain(|k, _| {
                    !k.ends_with("_ms") && !k.contains("_at") && !k.contains("version")
                });
            }
            s.insert(format!("availability:{ev}"), body.to_string());
        }
        for fan in [&self.alice, &self.bob, &self.victim] {
            let r =
                self.router.get("/v1/orders", &[("authorization", &bearer(&fan.token))]).await?;
            let mut orders: Vec<String> = r.body["orders"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| format!("{}:{}", o["order_id"], o["state"]))
                .collect();
            orders.sort();
            s.insert(format!("orders:{}", fan.customer), orders.join(","));
        }
        let journal = self.stack.options.run_dir.join("paysim").join("journal.jsonl");
        let lines = std::fs::read_to_string(&journal).map(|t| t.lines().count()).unwrap_or(0);
        s.insert("provider_calls".into(), lines.to_string());
        let mut victim = self.victim.clone();
        let st = victim.status(LOCKED).await?;
        s.insert(
            "victim".into(),
            format!("{} admitted={}", st.body["state"], victim.admission.is_some()),
        );
        Ok(Snapshot(s))
    }

    /// Where the stack's HTTP services count their refusals: `(service, base URL, metric
    /// family, label)` for the edge's `tessera_edge_refusals_total{outcome}` and the
    /// router's and every core's `tessera_http_refusals_total{code}`.
    fn refusal_sources(&self) -> anyhow::Result<Vec<(String, String, &'static str, &'static str)>> {
        let urls = &self.stack.urls;
        let edge = urls.edge_admin.clone().context("the edge's admin address")?;
        let mut sources = vec![
            ("edge".to_owned(), edge, "tessera_edge_refusals_total", "outcome"),
            ("router".to_owned(), urls.router.clone(), "tessera_http_refusals_total", "code"),
        ];
        for (region, core) in &urls.cores {
            sources.push((
                format!("core-{region}"),
                core.clone(),
                "tessera_http_refusals_total",
                "code",
            ));
        }
        Ok(sources)
    }

    /// How many refusals the stack's HTTP services have counted under `code`.
    async fn refusal_count(&self, code: &str) -> anyhow::Result<u64> {
        let sources = self.refusal_sources()?;
        let mut total = 0;
        for (_, base, family, label) in sources {
            let text = self.stack.http.get(format!("{base}/metrics")).send().await?.text().await?;
            total += counter_value(&text, family, label, code);
        }
        Ok(total)
    }

    /// Runs one attack: `expect` is the refusal's status and code, which a service must
    /// count its refusal under.
    async fn attack<F, Fut>(&mut self, name: &str, expect: (u16, &str), f: F) -> anyhow::Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Reply>>,
    {
        let label = expect.1.to_owned();
        self.attack_counted_as(name, expect, Some(&label), f).await
    }

    /// [`Ctx::attack`] for a refusal counted under another label than the code the
    /// attacker sees (`None`: an attack that is harmlessly answered, no refusal to count).
    async fn attack_counted_as<F, Fut>(
        &mut self,
        name: &str,
        expect: (u16, &str),
        label: Option<&str>,
        f: F,
    ) -> anyhow::Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Reply>>,
    {
        let before = self.snapshot().await?;
        let label = label.filter(|_| self.http_doors);
        let counted_before = match label {
            Some(l) => Some(self.refusal_count(l).await?),
            None => None,
        };
        let reply = f().await?;
        // Let anything the request set off (a saga, a webhook's drive) happen first.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let after = self.snapshot().await?;
        let counted = match (label, counted_before) {
            (Some(l), Some(b)) => Some(self.refusal_count(l).await? > b),
            _ => None,
        };
        let refused = reply.status == expect.0 && reply.code() == Some(expect.1);
        self.record(name, refused, before != after, counted, diff(&before, &after), &reply);
        Ok(())
    }

    fn record(
        &mut self,
        name: &str,
        refused: bool,
        changed: bool,
        counted: Option<bool>,
        diff: String,
        reply: &Reply,
    ) {
        let ok = refused && !changed && counted != Some(false);
        let detail = if ok {
            format!("{} {}", reply.status, reply.code().unwrap_or(""))
        } else if refused && !changed {
            format!("{} {}, counted by no service", reply.status, reply.code().unwrap_or(""))
        } else {
            format!("got {} {} {diff}", reply.status, reply.body)
        };
        eprintln!(
            "[security] {:<58} {}",
            name,
            if ok { format!("refused ({detail})") } else { format!("FAILED: {detail}") }
        );
        self.verdicts.push(Verdict {
            name: name.to_owned(),
            refused,
            state_changed: changed,
            counted,
            detail,
        });
    }
}

/// The value of `family{label="value"}` in a Prometheus text exposition (0 when absent).
fn counter_value(text: &str, family: &str, label: &str, value: &str) -> u64 {
    let needle = format!("{label}=\"{value}\"");
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{'))
        .filter(|l| l.split_once('}').is_some_and(|(labels, _)| labels.contains(&needle)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn diff(a: &Snapshot, b: &Snapshot) -> String {
    a.0.iter()
        .filter(|(k, v)| b.0.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: {v} -> {}", b.0.get(k).cloned().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A raw HTTP/1.1 exchange (for requests a client library will not send).
async fn raw(addr: &str, request: &[u8]) -> anyhow::Result<Reply> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let host = addr.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await?;
    s.write_all(request).await?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let body = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    Ok(Reply { status, body, served_by: None })
}

fn identity_claims(sub: &str, exp_s: u64, issuer: &str) -> IdentityClaims {
    IdentityClaims {
        iss: issuer.to_owned(),
        sub: CustomerId::parse(sub).expect("customer id"),
        aud: vec![tessera_identity::AUDIENCE.to_owned()],
        exp: exp_s,
        iat: now_ms() / 1000,
        nbf: None,
        roles: vec!["fan".into(), "admin".into(), "operator".into()],
        email: None,
    }
}

fn b64(v: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// Sets up the stack, the events and the fans.
async fn setup() -> anyhow::Result<Ctx> {
    let mut options = StackOptions::for_tests("security")?;
    // The suite reads the victim's standing before and after every attack, far more often
    // than a page polls; the per-ticket poll limit (`queue_poll_too_fast`) is not under test.
    options.bot_policy = r#"{"ticket_polls_per_window": 100000}"#.into();
    let stack = Stack::start(options, &|s| eprintln!("[security] {s}")).await?;
    let edge = Api::new(stack.http.clone(), stack.urls.edge.clone().context("edge")?);
    let router = Api::new(stack.http.clone(), stack.urls.router.clone());
    let core =
        Api::new(stack.http.clone(), stack.urls.cores.values().next().cloned().context("a core")?);
    let op = Operator::new(router.clone()).await?;
    for (ev, rate) in [(EVENT, 100.0), (LOCKED, 0.0)] {
        let map = json!({
            "event_id": ev, "name": "Red Team Night", "venue": "Hall", "starts_at": "2027-09-01T20:00:00Z",
            "currency": "EUR", "max_tickets_per_customer": 4, "hold_ttl_s": 600,
            "tiers": [{"tier_id": "GA", "name": "Floor", "price_minor": 4500}],
            "ga_pools": [{"pool_id": "FLOOR", "name": "Floor", "tier": "GA", "capacity": 100}],
            "open_now": true
        });
        let r = op.create_event(&map).await?;
        anyhow::ensure!(r.status == 201, "create {ev}: {} {}", r.status, r.body);
        let r = op.admission_rate(ev, rate).await?;
        anyhow::ensure!(r.ok(), "admission rate {ev}: {} {}", r.status, r.body);
    }
    let mut alice = Fan::new(edge.clone(), "alice-rt").await?;
    let mut bob = Fan::new(edge.clone(), "bob-rt").await?;
    let mut victim = Fan::new(edge.clone(), "victim-rt").await?;
    for f in [&mut alice, &mut bob] {
        let r = f.join(EVENT).await?;
        anyhow::ensure!(r.ok(), "join: {} {}", r.status, r.body);
        f.wait_admitted(EVENT, Duration::from_secs(30)).await?;
    }
    let r = victim.join(LOCKED).await?;
    anyhow::ensure!(r.ok(), "join locked: {} {}", r.status, r.body);
    let hold = alice.hold(EVENT, &json!({"pool": "FLOOR", "quantity": 1}), None).await?;
    anyhow::ensure!(hold.status == 201, "alice's hold: {} {}", hold.status, hold.body);
    let alice_hold = hold.body["hold_id"].as_str().context("hold id")?.to_owned();
    // Paid for: Alice owns an order.
    let order = alice.checkout(&alice_hold, "pm_card_visa", "rt-key-1").await?;
    anyhow::ensure!(order.status == 201, "alice's order: {} {}", order.status, order.body);
    let alice_order = order.body["order_id"].as_str().context("order id")?.to_owned();
    Ok(Ctx {
        stack,
        edge,
        router,
        core,
        op,
        alice,
        bob,
        victim,
        alice_order,
        alice_hold,
        verdicts: Vec::new(),
        http_doors: true,
        unlogged: Vec::new(),
    })
}

async fn identity_attacks(c: &mut Ctx) -> anyhow::Result<()> {
    let issuer = format!("{}/v1/dev", c.router.base);
    let dev = c.stack.keys.identity.clone();
    let exp = now_ms() / 1000 + 600;
    let hold_body = json!({"pool": "FLOOR", "quantity": 1});
    let adm = c.bob.admission.clone().unwrap_or_default();
    let device = c.bob.device.clone();
    let try_hold = |api: Api, token: String| {
        let body = hold_body.clone();
        let adm = adm.clone();
        let device = device.clone();
        async move {
            api.post(
                &format!("/v1/events/{EVENT}/holds"),
                &[
                    ("authorization", &bearer(&token)),
                    (headers::DEVICE, &device),
                    (headers::ADMISSION, &adm),
                ],
                &body,
            )
            .await
        }
    };
    // Signed by a key the issuer never had, under the issuer's own kid.
    let forger = SigningKeyPair::from_seed(dev.kid.clone(), [7; 32]);
    let forged = tessera_identity::sign(&forger, &identity_claims("bob-rt", exp, &issuer));
    let (e, r) = (c.edge.clone(), c.router.clone());
    c.attack("identity: forged token (edge)", (401, "invalid_token"), || {
        try_hold(e, forged.clone())
    })
    .await?;
    c.attack("identity: forged token (router)", (401, "invalid_token"), || try_hold(r, forged))
        .await?;
    let expired =
        tessera_identity::sign(&dev, &identity_claims("bob-rt", now_ms() / 1000 - 3600, &issuer));
    let r = c.router.clone();
    c.attack("identity: expired token", (401, "token_expired"), || try_hold(r, expired)).await?;
    let foreign =
        tessera_identity::sign(&dev, &identity_claims("bob-rt", exp, "https://evil.example"));
    let r = c.router.clone();
    c.attack("identity: token from another issuer", (401, "invalid_token"), || {
        try_hold(r, foreign)
    })
    .await?;
    // `alg: none`: the claims with no signature at all.
    let claims = serde_json::to_vec(&identity_claims("bob-rt", exp, &issuer))?;
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(&claims));
    let r = c.router.clone();
    c.attack("identity: alg none", (401, "invalid_token"), || try_hold(r, none)).await?;
    // Algorithm confusion: HS256 keyed with the issuer's public key.
    let header = format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{}"}}"#, dev.kid);
    let input = format!("{}.{}", b64(header.as_bytes()), b64(&claims));
    let mac = hmac_sha256(dev.public().as_bytes(), input.as_bytes());
    let confused = format!("{input}.{}", b64(&mac));
    let r = c.router.clone();
    c.attack("identity: HS256 keyed with the public key", (401, "invalid_token"), || {
        try_hold(r, confused)
    })
    .await?;
    let stranger = SigningKeyPair::from_seed("kid-nobody-knows", [9; 32]);
    let unknown = tessera_identity::sign(&stranger, &identity_claims("bob-rt", exp, &issuer));
    let r = c.router.clone();
    c.attack("identity: unknown kid", (401, "invalid_token"), || try_hold(r, unknown)).await?;
    Ok(())
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

async fn admission_attacks(c: &mut Ctx) -> anyhow::Result<()> {
    let hold_body = json!({"pool": "FLOOR", "quantity": 1});
    // Alice's admission was used for her first hold: again through the edge, and again
    // straight to the router (past the edge's own bookkeeping).
    let alice = c.alice.clone();
    let b = hold_body.clone();
    c.attack("admission: reused through the edge", (409, "admission_used"), || async move {
        alice.hold(EVENT, &b, None).await
    })
    .await?;
    let mut alice_direct = c.alice.clone();
    alice_direct.api = c.router.clone();
    let b = hold_body.clone();
    c.attack("admission: reused straight at the router", (409, "admission_used"), || async move {
        alice_direct.hold(EVENT, &b, None).await
    })
    .await?;
    let mut no_adm = c.bob.clone();
    no_adm.api = c.router.clone();
    no_adm.admission = None;
    let b = hold_body.clone();
    c.attack(
        "admission: hold without one, at the router",
        (403, "admission_required"),
        || async move { no_adm.hold(EVENT, &b, None).await },
    )
    .await?;
    // Bob's (unused) admission on another device, by another customer, for another event.
    let mut other_device = c.bob.clone();
    other_device.device = "a-stolen-device".into();
    let b = hold_body.clone();
    c.attack("admission: another device", (403, "queue_token_wrong_device"), || async move {
        other_device.hold(EVENT, &b, None).await
    })
    .await?;
    let mut thief = c.victim.clone();
    thief.admission = c.bob.admission.clone();
    thief.device = c.bob.device.clone();
    let b = hold_body.clone();
    c.attack("admission: another customer's", (403, "forbidden"), || async move {
        thief.hold(EVENT, &b, None).await
    })
    .await?;
    let bob = c.bob.clone();
    let b = hold_body.clone();
    c.attack("admission: for another event", (403, "queue_token_wrong_event"), || async move {
        bob.hold(LOCKED, &b, None).await
    })
    .await?;
    // An admission token signed by a key no edge has.
    let claims = QueueTicketClaims {
        typ: "adm".into(),
        ticket_id: tessera_queue::lottery::ticket_id(None, [0x5a; 16]),
        event_id: EventId::parse(EVENT)?,
        customer_id: CustomerId::parse(&c.victim.customer)?,
        device: tessera_queue::token::device_hash(&c.victim.device),
        phase: QueuePhase::Open,
        seq: 0,
        rank: None,
        iat_ms: now_ms(),
        exp_ms: now_ms() + 600_000,
        kid: "edge-1".into(),
        waiting_list: false,
    };
    let forger = SigningKeyPair::from_seed("edge-1", [11; 32]);
    let mut forged = c.victim.clone();
    forged.admission = Some(tessera_identity::sign(&forger, &claims));
    let b = hold_body.clone();
    c.attack("admission: forged token", (403, "queue_ticket_invalid"), || async move {
        forged.hold(EVENT, &b, None).await
    })
    .await?;
    Ok(())
}

/// One admission, six holds at once through the edge: one wins, five are refused. The
/// winner's hold is released again, so the state must be what it was.
async fn parallel_reuse(c: &mut Ctx) -> anyhow::Result<()> {
    let before = c.snapshot().await?;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let bob = c.bob.clone();
        tasks.push(tokio::spawn(async move {
            bob.hold(EVENT, &json!({"pool": "FLOOR", "quantity": 1}), None).await
        }));
    }
    let mut won = Vec::new();
    let mut refused = 0;
    let mut last = None;
    for t in tasks {
        let r = t.await??;
        if r.status == 201 {
            won.push(r.body["hold_id"].as_str().unwrap_or_default().to_owned());
        } else if r.status == 409 && r.code() == Some("admission_used") {
            refused += 1;
        }
        last = Some(r);
    }
    for h in &won {
        let r = c
            .router
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/holds/{h}"),
                &[("authorization", &bearer(&c.bob.token))],
                None,
            )
            .await?;
        anyhow::ensure!(r.ok(), "release the winning hold: {} {}", r.status, r.body);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = c.snapshot().await?;
    let reply = last.context("six replies")?;
    c.record(
        &format!("admission: six holds at once ({} won, {refused} refused)", won.len()),
        won.len() == 1 && refused == 5,
        before != after,
        None,
        diff(&before, &after),
        &reply,
    );
    Ok(())
}

async fn authorization_attacks(c: &mut Ctx) -> anyhow::Result<()> {
    let fan = bearer(&c.alice.token);
    let internal = format!("/v1/internal/events/{EVENT}/queue");
    let reg = json!({
        "ticket_id": tessera_queue::lottery::ticket_id(None, [0x11; 16]).to_string(),
        "customer_id": "alice-rt"
    });
    let (r, f, b) = (c.router.clone(), fan.clone(), reg.clone());
    let path = internal.clone();
    c.attack("internal: queue registration with a fan token", (403, "forbidden"), || async move {
        r.post(&path, &[("authorization", &f), (headers::DEVICE, "d1")], &b).await
    })
    .await?;
    let (r, f, b) = (c.router.clone(), fan.clone(), reg.clone());
    let path = internal.clone();
    c.attack("internal: a guessed service credential", (403, "forbidden"), || async move {
        r.post(
            &path,
            &[
                ("authorization", &f),
                (headers::DEVICE, "d1"),
                (headers::SERVICE_CREDENTIAL, "guess-guess-guess-guess-guess"),
            ],
            &b,
        )
        .await
    })
    .await?;
    let cred = c.stack.keys.service_credential.clone();
    let (e, f, b) = (c.edge.clone(), fan.clone(), reg.clone());
    let path = internal.clone();
    c.attack(
        "internal: through the edge, with the real credential",
        (404, "not_found"),
        || async move {
            e.post(
                &path,
                &[
                    ("authorization", &f),
                    (headers::DEVICE, "d1"),
                    (headers::SERVICE_CREDENTIAL, &cred),
                ],
                &b,
            )
            .await
        },
    )
    .await?;
    let (r, f) = (c.router.clone(), fan.clone());
    c.attack("roles: create an event with a fan's token", (403, "forbidden"), || async move {
        let map = json!({
            "event_id": "fan-made", "name": "Fan Made", "venue": "Hall", "starts_at": "2027-09-01T20:00:00Z",
            "currency": "EUR", "max_tickets_per_customer": 4, "hold_ttl_s": 600,
            "tiers": [{"tier_id": "GA", "name": "Floor", "price_minor": 1}],
            "ga_pools": [{"pool_id": "FLOOR", "name": "Floor", "tier": "GA", "capacity": 100}],
            "open_now": true
        });
        r.post("/v1/ops/events", &[("authorization", &f)], &map).await
    })
    .await?;
    let (r, f) = (c.router.clone(), fan.clone());
    c.attack("roles: close the sale with a fan's token", (403, "forbidden"), || async move {
        r.post(&format!("/v1/ops/events/{EVENT}/close"), &[("authorization", &f)], &json!({})).await
    })
    .await?;
    let (r, f) = (c.router.clone(), fan.clone());
    c.attack("roles: admit everyone with a fan's token", (403, "forbidden"), || async move {
        r.call(
            reqwest::Method::PUT,
            &format!("/v1/ops/events/{LOCKED}/admission"),
            &[("authorization", &f)],
            Some(&json!({"rate_per_s": 100000.0})),
        )
        .await
    })
    .await?;
    let (r, f, o) = (c.router.clone(), fan.clone(), c.alice_order.clone());
    c.attack("roles: refund with a fan's token", (403, "forbidden"), || async move {
        r.post(&format!("/v1/ops/orders/{o}/refund"), &[("authorization", &f)], &json!({})).await
    })
    .await?;
    let (r, f) = (c.router.clone(), fan.clone());
    c.attack("roles: check in at a gate with a fan's token", (403, "forbidden"), || async move {
        r.post("/v1/checkin", &[("authorization", &f)], &json!({"qr": "x.y.z", "gate": "g1"})).await
    })
    .await?;
    // Another fan's idempotency key and hold: nothing of Alice's moves.
    let mut bob = c.bob.clone();
    bob.admission = None;
    let hold = c.alice_hold.clone();
    c.attack("idempotency: another fan's key and hold", (403, "hold_foreign"), || async move {
        bob.checkout(&hold, "pm_card_visa", "rt-key-1").await
    })
    .await?;
    Ok(())
}

async fn webhook_attacks(c: &mut Ctx) -> anyhow::Result<()> {
    let now_s = now_ms() / 1000;
    let body = json!({"id": "evt_rt_1", "type": "payment_intent.succeeded", "created": now_s,
        "data": {"object": {"object": "balance"}}})
    .to_string();
    let send = |api: Api, sig: String, body: String| async move {
        let resp = api
            .http
            .post(format!("{}/v1/webhooks/payments", api.base))
            .header("stripe-signature", sig)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok::<_, anyhow::Error>(Reply { status, body, served_by: None })
    };
    let secret = c.stack.keys.webhook_secret.clone();
    let genuine = tessera_payments::webhook::sign(&secret, now_s, body.as_bytes());
    let first = send(c.edge.clone(), genuine.clone(), body.clone()).await?;
    anyhow::ensure!(
        first.status == 204,
        "a genuine webhook through the edge: {} {}",
        first.status,
        first.body
    );
    let (e, b) = (c.edge.clone(), body.clone());
    c.attack("webhook: forged signature", (400, "webhook_signature_invalid"), || {
        send(e, tessera_payments::webhook::sign("whsec_guess", now_s, b.as_bytes()), b.clone())
    })
    .await?;
    let (e, b) = (c.edge.clone(), body.clone());
    c.attack("webhook: replayed delivery", (400, "webhook_signature_invalid"), || {
        send(e, genuine, b)
    })
    .await?;
    let (e, b) = (c.edge.clone(), body.clone());
    c.attack("webhook: tampered body", (400, "webhook_signature_invalid"), || {
        send(
            e,
            tessera_payments::webhook::sign(&secret, now_s + 1, b.as_bytes()),
            b.replace("evt_rt_1", "evt_rt_2"),
        )
    })
    .await?;
    Ok(())
}

async fn input_attacks(c: &mut Ctx) -> anyhow::Result<()> {
    let auth = bearer(&c.bob.token);
    let e = c.edge.clone();
    let a = auth.clone();
    let dev = c.bob.device.clone();
    c.attack("input: oversized body", (413, "body_too_large"), || async move {
        let big = "x".repeat(1 << 20);
        e.post(
            &format!("/v1/events/{EVENT}/holds"),
            &[("authorization", &a), (headers::DEVICE, &dev)],
            &json!({"seats": [big]}),
        )
        .await
    })
    .await?;
    let edge_addr = c.edge.base.clone();
    let nested = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let req = format!(
        "POST /v1/orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nauthorization: {auth}\r\nidempotency-key: k1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{nested}",
        nested.len()
    );
    let ea = edge_addr.clone();
    c.attack("input: deeply nested JSON", (400, "invalid_request"), || async move {
        raw(&ea, req.as_bytes()).await
    })
    .await?;
    let req = format!(
        "POST /v1/orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nauthorization: {auth}\r\nidempotency-key: k1\r\ncontent-length: 9\r\nconnection: close\r\n\r\n{{\"hold_id"
    );
    let ea = edge_addr.clone();
    c.attack("input: malformed JSON", (400, "malformed_json"), || async move {
        raw(&ea, req.as_bytes()).await
    })
    .await?;
    // An edge-only header smuggled in by a fan: a perfect bot score. The edge strips it;
    // the proof-of-work answer header it then demands is missing, so the request falls
    // to the normal path and the hold still needs a (valid) admission.
    let mut smuggler = c.victim.clone();
    smuggler.api = c.edge.clone();
    let (r, tok, devv) = (c.edge.clone(), c.victim.token.clone(), c.victim.device.clone());
    c.attack(
        "input: header injection (edge-only headers)",
        (403, "admission_required"),
        || async move {
            r.post(
                &format!("/v1/events/{EVENT}/holds"),
                &[
                    ("authorization", &bearer(&tok)),
                    (headers::DEVICE, &devv),
                    (headers::BOT_SCORE, "0"),
                    (headers::ADMISSION, ""),
                    ("x-tessera-admitted", "1"),
                ],
                &json!({"pool": "FLOOR", "quantity": 1}),
            )
            .await
        },
    )
    .await?;
    let ea = edge_addr.clone();
    c.attack_counted_as(
        "input: CR/LF inside a header value",
        (400, ""),
        Some("malformed_http"),
        || async move {
        let mut r = raw(
            &ea,
            b"GET /v1/events HTTP/1.1\r\nhost: x\r\nx-tessera-device: a\rx-tessera-bot-score: 0\r\nconnection: close\r\n\r\n",
        )
        .await?;
        // hyper answers a malformed head with a bare 400 (no body): no code to compare.
        if r.status == 400 {
            r.body = json!({"code": ""});
        }
        Ok(r)
    },
    )
    .await?;
    for path in ["/../../etc/passwd", "/static/..%2f..%2f..%2fCargo.toml", "/v1/../../etc/passwd"] {
        let ea = edge_addr.clone();
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        c.attack(&format!("input: path traversal {path}"), (404, "not_found"), || async move {
            let r = raw(&ea, req.as_bytes()).await?;
            let leaked =
                r.body.to_string().contains("root:") || r.body.to_string().contains("[workspace]");
            Ok(if leaked { Reply { status: 200, ..r } } else { r })
        })
        .await?;
    }
    // An absolute-form request naming another host: the edge calls only the router.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let evil = listener.local_addr()?;
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let accept = tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let ea = edge_addr.clone();
    let req = format!(
        "GET http://{evil}/v1/events HTTP/1.1\r\nhost: {evil}\r\nconnection: close\r\n\r\n"
    );
    let hits2 = hits.clone();
    // Answered as any catalog read: nothing to refuse, nothing to count.
    c.attack_counted_as(
        "outbound: a request naming a host off the allow-list",
        (200, "no_outbound"),
        None,
        || async move {
            let r = raw(&ea, req.as_bytes()).await?;
            let called = hits2.load(std::sync::atomic::Ordering::SeqCst);
            // Served from the router as any catalog read (never from the named host).
            let code = if called == 0 { "no_outbound" } else { "called_the_named_host" };
            Ok(Reply {
                status: 200,
                body: json!({"code": code, "edge_answered": r.status}),
                served_by: None,
            })
        },
    )
    .await?;
    accept.abort();
    Ok(())
}

/// NATS: the servers refuse anyone without a credential (and a region's core anywhere but
/// its own leaf); the edge's credential publishes nothing; and with a stolen credential
/// that may publish (a region's core), forged watermarks still move nobody: the edge
/// believes only the core's signature. The waiting fan of the locked event must stay
/// waiting.
async fn nats_attacks(c: &mut Ctx) -> anyhow::Result<()> {
    let (region, url) = c.stack.urls.nats_leaves.iter().next().context("a leaf")?;
    let (region, url) = (region.clone(), url.clone());
    let seeds = c.stack.nats_seeds.clone();
    let ca = c.stack.pki.ca_file.clone();
    let mut doors = vec![url.clone(), c.stack.urls.nats_hub.clone()];
    doors.extend(c.stack.urls.nats_leaves.values().skip(1).cloned());
    let anonymous_ca = ca.clone();
    c.attack("nats: connect without credentials", (401, "authorization_violation"), || async move {
        let ca = anonymous_ca;
        let mut outcomes = Vec::new();
        for door in &doors {
            outcomes.push(match crate::stack::nats_connect(door, None, Some(&ca)).await {
                Ok(_) => "connected",
                Err(e) if refused_by_nats(&e) => "authorization_violation",
                Err(_) => "other_error",
            });
        }
        let all_refused = outcomes.iter().all(|o| *o == "authorization_violation");
        Ok(Reply {
            status: if all_refused { 401 } else { 200 },
            body: json!({"code": if all_refused { "authorization_violation" } else { "connected" }, "doors": doors, "outcomes": outcomes}),
            served_by: None,
        })
    })
    .await?;
    if let Some((other, other_url)) = c.stack.urls.nats_leaves.iter().nth(1) {
        let (other, other_url) = (other.clone(), other_url.clone());
        let seed = seeds.cores.get(&region).cloned().context("a core's seed")?;
        c.attack(
            &format!("nats: {region}'s core credential on {other}'s leaf"),
            (401, "authorization_violation"),
            || async move {
                let code =
                    match crate::stack::nats_connect(&other_url, Some(&seed), Some(&ca)).await {
                        Ok(_) => "connected",
                        Err(e) if refused_by_nats(&e) => "authorization_violation",
                        Err(_) => "other_error",
                    };
                Ok(Reply {
                    status: if code == "authorization_violation" { 401 } else { 200 },
                    body: json!({"code": code}),
                    served_by: None,
                })
            },
        )
        .await?;
    }
    // The edge's own credential (an edge sits at a PoP, the least trusted place) publishing
    // an event into its region's stream subjects: nothing may arrive.
    let listener = c.stack.nats_client(&url).await?;
    let forged_subject = format!("tessera.{region}.sale.closed.{LOCKED}");
    let mut heard = listener.subscribe(forged_subject.clone()).await?;
    listener.flush().await?;
    let edge_client =
        crate::stack::nats_connect(&url, Some(&seeds.edge), Some(&c.stack.pki.ca_file)).await?;
    let edge_region = region.clone();
    c.attack(
        "nats: an event published with the edge's credential",
        (403, "not_delivered"),
        || async move {
            publish_forged_event(&edge_client, forged_subject, &edge_region, 'f', &mut heard).await
        },
    )
    .await?;
    // Past this point the attacker holds a credential that may publish: region's core's.
    let client = crate::stack::nats_connect(
        &url,
        Some(
            seeds
                .cores
                .get(c.stack.urls.nats_leaves.keys().next().context("a region")?)
                .context("a core's seed")?,
        ),
        Some(&c.stack.pki.ca_file),
    )
    .await?;
    // A region's core may publish only its own region's events: one of another region's,
    // which that region's stream would store as its own, never arrives.
    if let Some((other, other_url)) = c.stack.urls.nats_leaves.iter().nth(1) {
        let (other, other_url) = (other.clone(), other_url.clone());
        let listener = c.stack.nats_client(&other_url).await?;
        let forged_subject = format!("tessera.{other}.sale.closed.{LOCKED}");
        let mut heard = listener.subscribe(forged_subject.clone()).await?;
        listener.flush().await?;
        let cl = client.clone();
        c.attack(
            &format!("nats: {region}'s core credential publishing {other}'s event"),
            (403, "not_delivered"),
            || async move {
                publish_forged_event(&cl, forged_subject, &other, 'o', &mut heard).await
            },
        )
        .await?;
    }
    // Nor may it touch another region's stream through the JetStream API: a purge of
    // the other domain's region stream (which holds every event replicated there) is
    // refused by the server and the stream keeps every message.
    if let Some(other) = c.stack.urls.nats_leaves.keys().nth(1) {
        let other = tessera_api::RegionId::parse(other)?;
        let hub = c.stack.nats_client(&c.stack.nats.hub_url()).await?;
        let cl = client.clone();
        c.attack(
            &format!("nats: {region}'s core credential purging {other}'s stream"),
            (403, "stream_intact"),
            || async move { purge_other_stream(&cl, &hub, &other).await },
        )
        .await?;
    }
    // A genuine watermark of the locked event, rewritten to admit everyone, far ahead of
    // any version the core will publish.
    let genuine = c.core.get(&format!("/v1/events/{LOCKED}/admission"), &[]).await?;
    anyhow::ensure!(
        genuine.ok(),
        "the locked event's watermark: {} {}",
        genuine.status,
        genuine.body
    );
    let template = genuine.body.clone();
    // The attacker reads the rank format from their own queue ticket (not secret).
    let rank_len = c
        .victim
        .ticket
        .as_deref()
        .and_then(|t| t.split('.').nth(1))
        .and_then(|p| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok()
        })
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["rank"].as_str().map(str::len))
        .unwrap_or(20);
    let wm = move |version: u64| {
        let mut w = template.clone();
        if let Some(o) = w.as_object_mut() {
            o.remove("signed");
            o.insert("version".into(), json!(version));
            o.insert("pre_open_threshold".into(), json!(u64::MAX));
            o.insert("pre_open_admitted".into(), json!(1_000_000));
            o.insert("open_admitted".into(), json!(1_000_000));
            o.insert("open_admitted_rank".into(), json!("f".repeat(rank_len)));
            o.insert("published_at_ms".into(), json!(now_ms()));
        }
        w
    };
    let subject = tessera_api::bus::admission_subject(&EventId::parse(LOCKED)?);
    let unsigned: Vec<Value> = (0..5).map(|i| wm(u64::MAX - i)).collect();
    let mut resigned = wm(u64::MAX);
    let (cl, s) = (client.clone(), subject.clone());
    let victim = c.victim.clone();
    c.attack(
        "nats: unsigned watermark admitting everyone",
        (200, "still_waiting"),
        || async move {
            for w in &unsigned {
                cl.publish(s.clone(), serde_json::to_vec(w)?.into()).await?;
            }
            cl.flush().await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            waiting(victim).await
        },
    )
    .await?;
    let forger = SigningKeyPair::from_seed(c.stack.keys.watermark.kid.clone(), [13; 32]);
    let (cl, s) = (client.clone(), subject.clone());
    let victim = c.victim.clone();
    c.attack("nats: watermark signed by another key", (200, "still_waiting"), || async move {
        let signed = tessera_identity::sign(&forger, &resigned);
        resigned["signed"] = json!(signed);
        cl.publish(s, serde_json::to_vec(&resigned)?.into()).await?;
        cl.flush().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        waiting(victim).await
    })
    .await?;
    Ok(())
}

/// The links themselves: every NATS server takes TLS only, and the hub's leafnode port
/// takes only leaves presenting a certificate of the run's authority (and its password).
async fn nats_link_attacks(c: &mut Ctx) -> anyhow::Result<()> {
    let (region, leaf_url) = c.stack.urls.nats_leaves.iter().next().context("a leaf")?;
    let (region, leaf_url) = (region.clone(), leaf_url.clone());
    let leaf_addr = leaf_url.split_once("://").map_or(leaf_url.as_str(), |(_, a)| a).to_owned();
    c.attack("nats: a plaintext client on a leaf", (403, "tls_required"), || async move {
        use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
        let stream = tokio::net::TcpStream::connect(&leaf_addr).await?;
        let mut stream = tokio::io::BufReader::new(stream);
        let mut info = String::new();
        stream.read_line(&mut info).await?;
        stream.get_mut().write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n").await?;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        // Refused for TLS, not only for the missing credentials that follow it.
        let tls_required = info.contains("\"tls_required\":true") && !answer.contains("PONG");
        Ok(Reply {
            status: if tls_required { 403 } else { 200 },
            body: json!({
                "code": if tls_required { "tls_required" } else { "plaintext_spoken" },
                "info": info.trim(),
                "answer": answer.trim(),
            }),
            served_by: None,
        })
    })
    .await?;

    let listener = c.stack.nats_client(&leaf_url).await?;
    let subject = format!("tessera.{region}.sale.closed.{LOCKED}");
    let mut heard = listener.subscribe(subject.clone()).await?;
    listener.flush().await?;
    let hub_leaf = c.stack.nats.hub_leaf;
    let password = c.stack.nats.leaf_password.clone().context("the stack's leaf password")?;
    let ca = c.stack.pki.ca_file.clone();
    let q = |p: &Path| json!(p.display().to_string());
    let (cert, key) = (q(&c.stack.pki.nats_cert_file), q(&c.stack.pki.nats_key_file));
    let rogues = [
        // The hub verifies the leaf's certificate: a leaf that knows the password gets
        // nowhere without one.
        (
            "nats: a rogue leaf with the leaf password but no certificate",
            format!(
                "{{\n url: \"nats-leaf://leaf:{password}@{hub_leaf}\"\n tls {{ ca_file: {} }}\n }}",
                q(&ca)
            ),
        ),
        (
            "nats: a rogue leaf with neither password nor certificate",
            format!("{{\n url: \"nats-leaf://{hub_leaf}\"\n tls {{ insecure: true }}\n }}"),
        ),
        // And a leaf whose certificate leaked still needs the password.
        (
            "nats: a rogue leaf with a leaf's certificate but no password",
            format!(
                "{{\n url: \"nats-leaf://{hub_leaf}\"\n tls {{ cert_file: {cert}, key_file: {key}, ca_file: {} }}\n }}",
                q(&ca)
            ),
        ),
    ];
    for (i, (name, remote)) in rogues.into_iter().enumerate() {
        let dir = c.stack.options.run_dir.join(format!("rogue-leaf-{i}"));
        let (port, http) = (free_port()?, free_port()?);
        let conf = format!(
            "server_name: rogue-{i}\nhost: 127.0.0.1\nport: {port}\nhttp: \"127.0.0.1:{http}\"\n\
             jetstream {{ store_dir: {store}, domain: rogue{i} }}\n\
             leafnodes {{ reconnect: 1, remotes: [ {remote} ] }}\n",
            store = json!(dir.join("data").display().to_string()),
        );
        let rogue =
            tessera_local_nats::NatsProcess::start(&format!("rogue-{i}"), &dir, &conf, port, http)
                .await?;
        let rogue_url = rogue.url();
        let leaves = c.stack.urls.nats_leaves.len() as u64;
        let (hub, subject, region) =
            (c.stack.nats.hub.monitor_addr(), subject.clone(), region.clone());
        let heard = &mut heard;
        c.attack(name, (403, "not_joined"), || async move {
            let client = crate::stack::nats_connect(&rogue_url, None, None).await?;
            let forged = json!({"id": "r".repeat(24), "region": region, "event_id": LOCKED, "at_ms": now_ms(), "kind": "sale.closed"});
            let mut delivered = false;
            let mut most_leaves = 0;
            // The rogue redials every second; give it a few tries.
            for _ in 0..6 {
                client.publish(subject.clone(), serde_json::to_vec(&forged)?.into()).await?;
                client.flush().await?;
                let got = tokio::time::timeout(Duration::from_millis(500), futures::StreamExt::next(heard)).await;
                delivered |= matches!(got, Ok(Some(_)));
                most_leaves = most_leaves.max(leaf_count(hub).await.unwrap_or(0));
            }
            let joined = delivered || most_leaves > leaves;
            Ok(Reply {
                status: if joined { 200 } else { 403 },
                body: json!({"code": if joined { "joined" } else { "not_joined" }, "delivered": delivered, "hub_leaf_connections": most_leaves}),
                served_by: None,
            })
        })
        .await?;
        drop(rogue);
    }
    Ok(())
}

/// The hub's leafnode connections (`/leafz` of its monitoring port).
async fn leaf_count(monitor: std::net::SocketAddr) -> anyhow::Result<u64> {
    let body = reqwest::get(format!("http://{monitor}/leafz")).await?.json::<Value>().await?;
    Ok(body["leafnodes"].as_u64().unwrap_or(0))
}

/// Publishes a forged `sale.closed` event of `region` on `subject` with `publisher`, then
/// listens on `heard` (subscribed to the subject elsewhere) for 700 ms: 403
/// `not_delivered`, or 200 `delivered`.
async fn publish_forged_event(
    publisher: &async_nats::Client,
    subject: String,
    region: &str,
    id: char,
    heard: &mut async_nats::Subscriber,
) -> anyhow::Result<Reply> {
    let forged = json!({"id": id.to_string().repeat(24), "region": region, "event_id": LOCKED, "at_ms": now_ms(), "kind": "sale.closed"});
    publisher.publish(subject, serde_json::to_vec(&forged)?.into()).await?;
    // The server answers a forbidden publish with an error, not by dropping the client.
    let _ = publisher.flush().await;
    let got =
        tokio::time::timeout(Duration::from_millis(700), futures::StreamExt::next(heard)).await;
    let delivered = matches!(got, Ok(Some(_)));
    Ok(Reply {
        status: if delivered { 200 } else { 403 },
        body: json!({"code": if delivered { "delivered" } else { "not_delivered" }}),
        served_by: None,
    })
}

/// Purges `region`'s stream with `attacker`'s credential; `observer` (a client allowed
/// everything) counts the stream's messages before and after.
async fn purge_other_stream(
    attacker: &async_nats::Client,
    observer: &async_nats::Client,
    region: &tessera_api::RegionId,
) -> anyhow::Result<Reply> {
    use tessera_bus::streams::{region_context, stream_name};
    let count = || async {
        let mut s = region_context(observer, region).get_stream(stream_name(region)).await?;
        anyhow::Ok(s.info().await?.state.messages)
    };
    let before = count().await?;
    let mut js = region_context(attacker, region);
    js.set_timeout(Duration::from_millis(700));
    // Describing the stream is allowed (read-only); the purge is not.
    let purged = match js.get_stream(stream_name(region)).await {
        Ok(stream) => stream.purge().await.is_ok(),
        Err(_) => false,
    };
    let after = count().await?;
    let intact = !purged && after >= before;
    Ok(Reply {
        status: if intact { 403 } else { 200 },
        body: json!({"code": if intact { "stream_intact" } else { "purged" }, "before": before, "after": after}),
        served_by: None,
    })
}

/// Whether NATS refused a connection for its credentials.
fn refused_by_nats(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<async_nats::ConnectError>()
            .is_some_and(|e| e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation)
    })
}

async fn waiting(mut fan: Fan) -> anyhow::Result<Reply> {
    let r = fan.status(LOCKED).await?;
    let code = if fan.admission.is_none() { "still_waiting" } else { "admitted" };
    Ok(Reply { status: r.status, body: json!({"code": code, "got": r.body}), served_by: None })
}

/// A production-mode edge (fresh keys, nothing from the development set) beside the local
/// stack: the development issuer's route does not exist there.
async fn production_edge(c: &mut Ctx) -> anyhow::Result<()> {
    let dir = c.stack.options.run_dir.join("prod-edge");
    std::fs::create_dir_all(&dir)?;
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")?;
    let key = |n: u8| SigningKeyPair::from_seed(format!("prod-{n}"), [n; 32]);
    let port = free_port()?;
    let admin = free_port()?;
    let seed = nkeys::KeyPair::new_user().seed()?;
    let cfg = format!(
        "mode = \"production\"\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nmanifest = {manifest:?}\npop = \"prod\"\n\
         nats_url = \"tls://127.0.0.1:1\"\nnats_ca_file = {ca:?}\nnats_nkey_seed = {seed:?}\n\
         [variables]\nrouter_url = {router:?}\nidentity_issuer = \"https://id.example.com\"\nidentity_keys = {ik:?}\n\
         queue_signing_key = {qsk:?}\nqueue_keys = {qk:?}\nwatermark_keys = {wk:?}\nshadow_secret = {ss:?}\npow_secret = {ps:?}\nservice_credential = {sc:?}\n",
        manifest =
            c.stack.options.repo_root.join("edge-components/spin.toml").display().to_string(),
        ca = ca.display().to_string(),
        router = c.router.base,
        ik = Keyset::new([key(1).public()]).to_config_string(),
        qsk = key(2).to_config_string(),
        qk = Keyset::new([key(2).public()]).to_config_string(),
        wk = Keyset::new([key(3).public()]).to_config_string(),
        ss = b64(&[4; 32]),
        ps = b64(&[5; 32]),
        sc = b64(&[6; 32]),
    );
    let file = dir.join("edge.toml");
    std::fs::write(&file, cfg)?;
    let log = std::fs::File::create(dir.join("edge.log"))?;
    let mut child = crate::reaper::Reaped::new(
        std::process::Command::new(c.stack.options.bin_dir.join("tessera-edge"))
            .arg("--config")
            .arg(&file)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = c.stack.http.clone();
    let mut up = false;
    for _ in 0..120 {
        if http.get(format!("http://127.0.0.1:{admin}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        if child.0.try_wait()?.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if !up {
        drop(child);
        anyhow::bail!(
            "the production edge did not start: {}",
            crate::stack::tail(&dir.join("edge.log"), 10)
        );
    }
    let prod = Api::new(http, base);
    let p = prod.clone();
    c.attack("production: the development issuer's route", (404, "not_found"), || async move {
        p.post(
            "/v1/dev/token",
            &[],
            &json!({"customer_id": "mallory", "operator": true, "roles": ["admin"]}),
        )
        .await
    })
    .await?;
    drop(child);
    Ok(())
}

/// A production core configuration that passes `--check-config`, as environment
/// variables over an empty file.
fn production_core_env(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")?;
    let key = |n: u8| SigningKeyPair::from_seed(format!("prod-{n}"), [n; 32]);
    let p = "TESSERA_CORE__";
    let v = [
        ("MODE", "production".to_owned()),
        ("REGION", "us-east".into()),
        ("REGIONS", "[us-east]".into()),
        ("STORE__PATH", dir.join("store").display().to_string()),
        ("BUS__PROJECTION_DIR", dir.join("projection").display().to_string()),
        ("NATS__URL", "tls://nats.internal:4222".into()),
        ("NATS__CA_FILE", ca.display().to_string()),
        ("NATS__NKEY_SEED", nkeys::KeyPair::new_user().seed()?),
        ("IDENTITY__ISSUER", "https://login.example.com/".into()),
        ("SERVICE_CREDENTIALS__EDGE", b64(&[6; 32])),
        ("QUEUE__EDGE_KEYS", Keyset::new([key(2).public()]).to_config_string()),
        ("QUEUE__WATERMARK_SIGNING_KEY", key(3).to_config_string()),
        ("PAYMENTS__BASE_URL", "https://api.stripe.com".into()),
        ("PAYMENTS__SECRET_KEY", format!("sk_live_{}", b64(&[7; 24]))),
        ("PAYMENTS__WEBHOOK_SECRET", format!("whsec_{}", b64(&[8; 24]))),
        ("TICKETS__SIGNING_SEED", key(9).seed_base64()),
    ];
    Ok(v.into_iter().map(|(k, v)| (format!("{p}{k}"), v)).collect())
}

fn check_config(bin: &Path, env: &BTreeMap<String, String>) -> anyhow::Result<(i32, String)> {
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("--check-config");
    for (k, _) in std::env::vars() {
        if k.starts_with("TESSERA_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.envs(env).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout)),
    ))
}

/// Production starts of the core, each with one unsafe setting: every one refused (exit
/// 2) with a line naming the setting.
async fn production_starts(c: &mut Ctx) -> anyhow::Result<()> {
    let dir = c.stack.options.run_dir.join("prod-core");
    std::fs::create_dir_all(&dir)?;
    let bin: PathBuf = c.stack.options.bin_dir.join("tessera-core");
    let good = production_core_env(&dir)?;
    let (status, out) = check_config(&bin, &good)?;
    anyhow::ensure!(status == 0, "the safe production configuration is refused: {out}");
    let dev = &c.stack.keys;
    let unsafe_settings: Vec<(&str, &str, Option<String>)> = vec![
        ("the development issuer", "DEV_ISSUER__SEED", Some(dev.identity.seed_base64())),
        (
            "a development identity key",
            "IDENTITY__KEYS",
            Some(Keyset::new([dev.identity.public()]).to_config_string()),
        ),
        ("the default payment secret", "PAYMENTS__SECRET_KEY", Some("sk_test_tessera".into())),
        (
            "the default webhook secret",
            "PAYMENTS__WEBHOOK_SECRET",
            Some("whsec_tessera_local".into()),
        ),
        ("no payment secret", "PAYMENTS__SECRET_KEY", None),
        ("no ticket key", "TICKETS__SIGNING_SEED", None),
        ("the development ticket key", "TICKETS__SIGNING_SEED", Some(dev.tickets.seed_base64())),
        ("no watermark key", "QUEUE__WATERMARK_SIGNING_KEY", None),
        ("plaintext NATS", "NATS__URL", Some("nats://nats.internal:4222".into())),
        ("NATS without credentials", "NATS__NKEY_SEED", None),
        ("holds without the waiting room", "QUEUE__REQUIRE_ADMISSION", Some("false".into())),
        (
            "the development service credential",
            "SERVICE_CREDENTIALS__EDGE",
            Some(dev.service_credential.clone()),
        ),
        ("a plaintext issuer", "IDENTITY__ISSUER", Some("http://login.example.com/".into())),
        ("an unknown key", "NO_SUCH_SETTING", Some("1".into())),
    ];
    for (what, key, value) in unsafe_settings {
        let mut env = good.clone();
        let var = format!("TESSERA_CORE__{key}");
        match value {
            Some(v) => {
                env.insert(var.clone(), v);
            }
            None => {
                if key == "NATS__URL" {
                    env.remove("TESSERA_CORE__NATS__CA_FILE");
                }
                env.remove(&var);
            }
        }
        if key == "NATS__URL" {
            env.remove("TESSERA_CORE__NATS__CA_FILE");
        }
        let setting = key.to_ascii_lowercase().replace("__", ".");
        let b = bin.clone();
        c.attack(&format!("production start: {what}"), (2, "refused"), || async move {
            let (status, out) = check_config(&b, &env)?;
            let named = out.contains(&setting) || out.contains(&var);
            let code = if status == 2 && named { "refused" } else { "started" };
            Ok(Reply {
                status: status as u16,
                body: json!({"code": code, "out": out}),
                served_by: None,
            })
        })
        .await?;
    }
    Ok(())
}

/// Runs the suite on a fresh local stack; returns the verdicts and the summary.
pub async fn run() -> anyhow::Result<(Vec<Verdict>, BTreeMap<String, String>)> {
    let mut c = setup().await?;
    let result = async {
        identity_attacks(&mut c).await?;
        admission_attacks(&mut c).await?;
        parallel_reuse(&mut c).await?;
        authorization_attacks(&mut c).await?;
        webhook_attacks(&mut c).await?;
        input_attacks(&mut c).await?;
        // Every code a service counted a refusal under is in its log too, at WARN.
        c.unlogged = unlogged_refusals(&c).await?;
        // From here on the doors are no HTTP service of the stack's: the NATS servers,
        // a production edge of its own, production starts.
        c.http_doors = false;
        nats_attacks(&mut c).await?;
        nats_link_attacks(&mut c).await?;
        production_edge(&mut c).await?;
        production_starts(&mut c).await?;
        anyhow::Ok(())
    }
    .await;
    let _ = &c.op;
    c.stack.stop();
    result?;
    let v = c.verdicts;
    let mut kv = BTreeMap::new();
    kv.insert("attacks".to_owned(), v.len().to_string());
    kv.insert("accepted".to_owned(), v.iter().filter(|x| !x.refused).count().to_string());
    kv.insert("state_changed".to_owned(), v.iter().filter(|x| x.state_changed).count().to_string());
    kv.insert(
        "uncounted".to_owned(),
        v.iter().filter(|x| x.refused && x.counted == Some(false)).count().to_string(),
    );
    for u in &c.unlogged {
        eprintln!("COUNTED BUT NOT LOGGED: {u}");
    }
    kv.insert("unlogged".to_owned(), c.unlogged.len().to_string());
    Ok((v, kv))
}

/// `service: code` for every refusal code a service of the stack counted (its refusal
/// counter in `/metrics`) without a WARN line `request refused` carrying that code in its
/// log. The edge logs a code at most once a second, so each counted code is looked for
/// once, not each refusal.
async fn unlogged_refusals(c: &Ctx) -> anyhow::Result<Vec<String>> {
    let sources = c.refusal_sources()?;
    let mut out = Vec::new();
    for (service, base, family, label) in sources {
        let text = c.stack.http.get(format!("{base}/metrics")).send().await?.text().await?;
        let counted = counted_codes(&text, family, label);
        let log = std::fs::read_to_string(c.stack.log_path(&service)?)?;
        let logged: std::collections::BTreeSet<String> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["level"] == "WARN" && v["message"] == "request refused")
            .filter_map(|v| v["code"].as_str().map(str::to_owned))
            .collect();
        out.extend(
            counted
                .into_iter()
                .filter(|code| !logged.contains(code))
                .map(|code| format!("{service}: {code}")),
        );
    }
    Ok(out)
}

/// The values of `label` on the lines of `family` with a count above zero.
fn counted_codes(text: &str, family: &str, label: &str) -> Vec<String> {
    let needle = format!("{label}=\"");
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{'))
        .filter(|l| {
            l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v > 0.0)
        })
        .filter_map(|l| {
            let (labels, _) = l.split_once('}')?;
            let rest = &labels[labels.find(&needle)? + needle.len()..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .collect()
}
