//! Purchase traffic for the region scenarios (`failover`, `partition`): workers that each
//! take fans through the waiting room and then hold-and-pay cycles, recording every call
//! with its timing and the region that served it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::fan::{Api, Fan, Reply};
use anyhow::{Context as _, bail};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tessera_api::RegionId;
use tessera_bus::projection::ProjectionView;
use tessera_bus::streams::{region_context, stream_name};

/// One call a fan made.
#[derive(Debug, Clone)]
pub struct Call {
    pub worker: usize,
    pub kind: &'static str,
    pub started: Instant,
    pub ended: Instant,
    /// 0 when the call failed in transport.
    pub status: u16,
    pub code: Option<String>,
    pub served_by: Option<String>,
}

impl Call {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
    /// A failure of the platform (not an answer about the request).
    pub fn is_error(&self) -> bool {
        self.status == 0 || self.status >= 500
    }
}

/// An order the platform acknowledged as completed.
#[derive(Debug, Clone)]
pub struct Acked {
    pub order_id: String,
    pub fan: Fan,
    pub seats: Vec<String>,
    pub pool: Option<String>,
    pub quantity: u64,
    pub served_by: Option<String>,
    pub at: Instant,
}

/// A hold taken, and what became of it.
#[derive(Debug, Clone)]
pub struct HoldTrace {
    pub hold_id: String,
    pub created: Instant,
    pub served_by: Option<String>,
    /// When its checkout ended and whether the hold was honoured (`None`: never tried).
    pub settled: Option<(Instant, bool, Option<String>)>,
}

/// Everything the workers saw.
#[derive(Default)]
pub struct Record {
    pub calls: Mutex<Vec<Call>>,
    pub acked: Mutex<Vec<Acked>>,
    pub holds: Mutex<Vec<HoldTrace>>,
    pub notes: Mutex<BTreeMap<String, usize>>,
}

impl Record {
    pub fn note(&self, what: &str) {
        *self.notes.lock().entry(what.to_owned()).or_default() += 1;
    }
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }
    pub fn acked(&self) -> Vec<Acked> {
        self.acked.lock().clone()
    }
}

/// Codes that mean "try the same request again a little later".
fn retryable(r: &Reply) -> bool {
    r.status >= 500
        || r.status == 429
        || matches!(
            r.code(),
            Some(
                "checkout_in_progress"
                    | "rate_limited"
                    | "unavailable"
                    | "region_unavailable"
                    | "timeout"
            )
        )
}

/// Makes fans the way real ones arrive at the edge: each from its own address and network
/// (a source address of its own in 127.0.0.0/8), with browser-like headers, so the edge's
/// bot scoring sees many people rather than one client hammering it. Identity tokens come
/// from the development issuer through the router.
pub struct Crowd {
    router: Api,
    edge: String,
    next: std::sync::atomic::AtomicU32,
}

impl Crowd {
    pub fn new(router: Api, edge: String) -> Self {
        Crowd { router, edge, next: std::sync::atomic::AtomicU32::new(1) }
    }

    /// A new fan; `pin` sends all of its calls to one region (`x-tessera-region`).
    pub async fn fan(&self, name: &str, pin: Option<&str>) -> anyhow::Result<Fan> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let addr = std::net::Ipv4Addr::new(127, 1 + (n / 250 % 250) as u8, (n % 250) as u8, 1);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36"
                .parse()?,
        );
        headers.insert("accept", "application/json, text/plain, */*".parse()?);
        headers.insert("accept-language", "en-GB,en;q=0.9".parse()?);
        if let Some(region) = pin {
            headers.insert("x-tessera-region", region.parse()?);
        }
        let http = reqwest::Client::builder()
            .local_address(std::net::IpAddr::V4(addr))
            .default_headers(headers)
            .timeout(Duration::from_secs(30))
            .build()?;
        let mut fan = Fan::new(self.router.clone(), name).await?;
        fan.api = Api::new(http, self.edge.clone());
        Ok(fan)
    }
}

/// Admitted fans waiting for a worker.
pub struct SharedFans(Mutex<Vec<Fan>>);

impl SharedFans {
    pub fn new(fans: Vec<Fan>) -> Self {
        SharedFans(Mutex::new(fans))
    }
    fn pop(&self) -> Option<Fan> {
        self.0.lock().pop()
    }
}

pub use crate::scenarios::EXPECTED_WARNINGS;

/// Ends a scenario binary: exit 0 when every check held, 1 when one failed, 2 when the
/// scenario could not run.
pub fn exit_with(scenario: &str, result: anyhow::Result<bool>) {
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("[{scenario}] failed: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Unexpected log lines grouped by service, level and message, most frequent first.
pub fn group_log_lines(lines: &[String]) -> Vec<(String, usize)> {
    let mut groups: BTreeMap<String, usize> = BTreeMap::new();
    for l in lines {
        let (service, json) = l.split_once(": ").unwrap_or(("?", l));
        let v: Value = serde_json::from_str(json).unwrap_or_default();
        let key = format!(
            "{service} {} {}",
            v["level"].as_str().unwrap_or("?"),
            v["message"].as_str().unwrap_or(json).chars().take(120).collect::<String>()
        );
        *groups.entry(key).or_default() += 1;
    }
    let mut out: Vec<(String, usize)> = groups.into_iter().collect();
    out.sort_by_key(|g| std::cmp::Reverse(g.1));
    out
}

/// Traffic settings.
#[derive(Debug, Clone)]
pub struct TrafficPlan {
    pub event: String,
    pub workers: usize,
    /// Purchases per fan before the worker takes the next fan (2 seats each).
    pub cycles_per_fan: usize,
    /// Pause between hold and checkout (a fan choosing), so holds are often in flight.
    pub think: Duration,
    /// The region new fans are pinned to (`x-tessera-region`), if any.
    pub pin_region: Option<String>,
    /// Sections to buy in, round robin; `FLOOR` is the standing pool.
    pub sections: Vec<String>,
    pub name: String,
}

/// Handles of running traffic.
pub struct Traffic {
    pub record: Arc<Record>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// Starts the workers; each takes fans from `fans` (already admitted) or, when that runs
    /// out, creates new ones through `edge`.
    pub fn start(plan: TrafficPlan, crowd: Arc<Crowd>, fans: Arc<SharedFans>) -> Traffic {
        let record = Arc::new(Record::default());
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for worker in 0..plan.workers {
            let (plan, crowd, fans, record, stop, counter) = (
                plan.clone(),
                crowd.clone(),
                fans.clone(),
                record.clone(),
                stop.clone(),
                counter.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let next = fans.pop();
                    let fan = match next {
                        Some(f) => f,
                        None => {
                            let n = counter.fetch_add(1, Ordering::SeqCst);
                            let name = format!("{}-w{worker}-{n}", plan.name);
                            match admitted_fan(
                                &crowd,
                                &plan.event,
                                &name,
                                plan.pin_region.as_deref(),
                                Duration::from_secs(30),
                            )
                            .await
                            {
                                Ok(f) => f,
                                Err(e) => {
                                    record.note(&format!("fan setup failed: {e:#}"));
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                    continue;
                                }
                            }
                        }
                    };
                    for cycle in 0..plan.cycles_per_fan {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let section = &plan.sections[(worker + cycle) % plan.sections.len()];
                        if !purchase(worker, &plan, &fan, cycle, section, &record, &stop).await {
                            break;
                        }
                    }
                }
            }));
        }
        Traffic { record, stop, tasks }
    }

    /// Stops starting new purchases and waits for the ones under way.
    pub async fn stop(self) -> Arc<Record> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
        }
        self.record
    }
}

/// A new fan with an admission token for `event`.
pub async fn admitted_fan(
    crowd: &Crowd,
    event: &str,
    name: &str,
    pin: Option<&str>,
    wait: Duration,
) -> anyhow::Result<Fan> {
    let mut fan = crowd.fan(name, pin).await?;
    let joined = fan.join(event).await?;
    if !joined.ok() {
        bail!("join {event}: {} {}", joined.status, joined.body);
    }
    fan.wait_admitted(event, wait).await?;
    Ok(fan)
}

async fn timed(
    worker: usize,
    kind: &'static str,
    record: &Record,
    call: impl std::future::Future<Output = anyhow::Result<Reply>>,
) -> Option<Reply> {
    let started = Instant::now();
    let result = call.await;
    let ended = Instant::now();
    let (status, code, served_by, reply) = match result {
        Ok(r) => (r.status, r.code().map(str::to_owned), r.served_by.clone(), Some(r)),
        Err(_) => (0, None, None, None),
    };
    record.calls.lock().push(Call { worker, kind, started, ended, status, code, served_by });
    reply
}

/// One hold-then-pay cycle. Returns false when the fan cannot buy more (limit, sold out).
async fn purchase(
    worker: usize,
    plan: &TrafficPlan,
    fan: &Fan,
    cycle: usize,
    section: &str,
    record: &Record,
    stop: &AtomicBool,
) -> bool {
    let body = if section == "FLOOR" {
        json!({"pool": "FLOOR", "quantity": 2})
    } else {
        json!({"section": section, "quantity": 2})
    };
    let hold_key = format!("{}-hold-{cycle}", fan.customer);
    let mut hold: Option<(String, Option<String>)> = None;
    for _ in 0..100 {
        let Some(r) =
            timed(worker, "hold", record, fan.hold(&plan.event, &body, Some(&hold_key))).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if r.ok() {
            let id = r.body["hold_id"].as_str().unwrap_or_default().to_owned();
            hold = Some((id, r.served_by.clone()));
            break;
        }
        if retryable(&r) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let message: String =
            r.body["message"].as_str().unwrap_or_default().chars().take(90).collect();
        record.note(&format!("hold refused: {}: {message}", r.code().unwrap_or("?")));
        // Sold out here, or the fan reached its limit: the fan is done.
        return !matches!(r.code(), Some("limit_exceeded" | "sold_out" | "event_not_on_sale"));
    }
    let Some((hold_id, hold_region)) = hold else {
        record.note("hold gave up after retries");
        return false;
    };
    let created = Instant::now();
    let index = {
        let mut holds = record.holds.lock();
        holds.push(HoldTrace {
            hold_id: hold_id.clone(),
            created,
            served_by: hold_region,
            settled: None,
        });
        holds.len() - 1
    };
    tokio::time::sleep(plan.think).await;
    let checkout_key = format!("{}-pay-{cycle}", fan.customer);
    for attempt in 0..200 {
        if attempt > 0 && stop.load(Ordering::SeqCst) && attempt > 100 {
            break;
        }
        let Some(r) = timed(
            worker,
            "checkout",
            record,
            fan.checkout(&hold_id, "pm_card_visa", &checkout_key),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Still paying: follow the order, as a client would, instead of asking again.
        let r = if r.ok() && r.body["state"] == "payment_pending" {
            let order_id = r.body["order_id"].as_str().unwrap_or_default().to_owned();
            follow_order(worker, fan, &order_id, record).await.unwrap_or(r)
        } else {
            r
        };
        if r.ok() && r.body["state"] == "completed" {
            let order = &r.body;
            record.acked.lock().push(Acked {
                order_id: order["order_id"].as_str().unwrap_or_default().to_owned(),
                fan: fan.clone(),
                seats: order["seats"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default(),
                pool: order["pool"].as_str().map(str::to_owned),
                quantity: order["quantity"].as_u64().unwrap_or(0),
                served_by: r.served_by.clone(),
                at: Instant::now(),
            });
            record.holds.lock()[index].settled = Some((Instant::now(), true, r.served_by.clone()));
            return true;
        }
        if retryable(&r) {
            // The same key again: the platform answers for the one checkout.
            tokio::time::sleep(Duration::from_millis(150)).await;
            continue;
        }
        let message: String =
            r.body["message"].as_str().unwrap_or_default().chars().take(90).collect();
        record.note(&format!(
            "checkout refused: {} {} {}: {message}",
            r.status,
            r.code().unwrap_or("?"),
            r.body["state"].as_str().unwrap_or("")
        ));
        record.holds.lock()[index].settled = Some((Instant::now(), false, r.served_by.clone()));
        return r.ok() || !matches!(r.code(), Some("limit_exceeded"));
    }
    record.note("checkout gave up after retries");
    true
}

/// Polls an order until its payment settles (at most 30 s). Returns the last answer.
async fn follow_order(worker: usize, fan: &Fan, order_id: &str, record: &Record) -> Option<Reply> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(r) = timed(worker, "order", record, fan.order(order_id)).await {
            if r.ok() && r.body["state"] != "payment_pending" {
                return Some(r);
            }
            last = Some(r);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    last
}

/// Checks every acknowledged order against the platform: it must still be completed with
/// its tickets (else it is lost), and no seat may be in two orders (else it is oversold).
/// Returns `(lost, oversold, problems)`.
pub async fn check_orders(router: &Api, acked: &[Acked]) -> (usize, usize, Vec<String>) {
    let mut lost = 0;
    let mut problems = Vec::new();
    for a in acked {
        let mut fan = a.fan.clone();
        fan.api = router.clone();
        match fan.order(&a.order_id).await {
            Ok(r) if r.ok() && r.body["state"] == "completed" => {
                let tickets = r.body["tickets"].as_array().map_or(0, Vec::len) as u64;
                if tickets != a.quantity {
                    lost += 1;
                    problems.push(format!(
                        "order {} has {tickets} tickets, {} acknowledged",
                        a.order_id, a.quantity
                    ));
                }
            }
            Ok(r) => {
                lost += 1;
                problems.push(format!(
                    "order {} acknowledged but reads {} {}",
                    a.order_id, r.status, r.body
                ));
            }
            Err(e) => {
                lost += 1;
                problems.push(format!("order {} unreadable: {e:#}", a.order_id));
            }
        }
    }
    let mut seen = BTreeSet::new();
    let mut oversold = 0;
    for a in acked {
        for s in &a.seats {
            if !seen.insert(s.clone()) {
                oversold += 1;
                problems.push(format!("seat {s} is in two acknowledged orders"));
            }
        }
    }
    (lost, oversold, problems)
}

/// Checks the availability counts of `event` (held + sold + free = capacity everywhere,
/// nothing sold past capacity) and that at least the acknowledged places are sold.
/// Returns how many sections or pools break a rule, with the reasons.
pub async fn check_availability(
    router: &Api,
    event: &str,
    acked: &[Acked],
) -> anyhow::Result<(usize, Vec<String>)> {
    let r = router.get(&format!("/v1/events/{event}/availability"), &[]).await?;
    if !r.ok() {
        bail!("availability: {} {}", r.status, r.body);
    }
    let mut bad = 0;
    let mut problems = Vec::new();
    let mut sold_by_place: BTreeMap<String, u64> = BTreeMap::new();
    for a in acked {
        match &a.pool {
            Some(p) => *sold_by_place.entry(p.clone()).or_default() += a.quantity,
            None => {
                for s in &a.seats {
                    let section = s.split('-').next().unwrap_or_default().to_owned();
                    *sold_by_place.entry(section).or_default() += 1;
                }
            }
        }
    }
    for (list, id) in [("sections", "section_id"), ("pools", "pool_id")] {
        for x in r.body[list].as_array().context("availability lists")? {
            let name = x[id].as_str().unwrap_or_default().to_owned();
            let n = |k: &str| x[k].as_u64().unwrap_or(0);
            let (cap, free, held, sold) = (n("capacity"), n("free"), n("held"), n("sold"));
            if held + sold + free != cap || sold > cap {
                bad += 1;
                problems.push(format!(
                    "{name}: held {held} + sold {sold} + free {free} != capacity {cap}"
                ));
            }
            let acked_here = sold_by_place.get(&name).copied().unwrap_or(0);
            if sold < acked_here {
                bad += 1;
                problems.push(format!(
                    "{name}: {acked_here} places acknowledged sold, only {sold} sold"
                ));
            }
        }
    }
    Ok((bad, problems))
}

/// Creates and opens an event from the demo seat map under a new id.
pub async fn open_event(
    op: &crate::fan::Operator,
    repo_root: &std::path::Path,
    event: &str,
    rate_per_s: f64,
) -> anyhow::Result<Value> {
    let mut map = crate::demo_seat_map(repo_root)?;
    map["event_id"] = json!(event);
    map["open_now"] = json!(false);
    let r = op.create_event(&map).await?;
    if r.status != 201 {
        bail!("create event {event}: {} {}", r.status, r.body);
    }
    let r = op.sale(event, "open").await?;
    if !r.ok() {
        bail!("open sale {event}: {} {}", r.status, r.body);
    }
    let r = op.admission_rate(event, rate_per_s).await?;
    if !r.ok() {
        bail!("admission rate {event}: {} {}", r.status, r.body);
    }
    Ok(map)
}

/// Waits until every region's projection equals the inventory's counts for `event`
/// (at most `timeout`); returns how long that took.
pub async fn projections_converge(
    http: &reqwest::Client,
    router: &Api,
    cores: &BTreeMap<String, String>,
    event: &str,
    timeout: Duration,
) -> anyhow::Result<Option<Duration>> {
    let truth = availability(router, event).await?;
    let started = Instant::now();
    while started.elapsed() < timeout {
        let mut all = true;
        for url in cores.values() {
            all &= projection(http, url, event).await.is_ok_and(|v| matches_truth(&v, &truth));
        }
        if all {
            return Ok(Some(started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(None)
}

/// Milliseconds of a duration, for the result line.
pub fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Held and sold per section and pool, from the inventory.
pub async fn availability(
    router: &Api,
    event: &str,
) -> anyhow::Result<BTreeMap<String, (i64, i64)>> {
    let r = router.get(&format!("/v1/events/{event}/availability"), &[]).await?;
    anyhow::ensure!(r.ok(), "availability: {} {}", r.status, r.body);
    let mut out = BTreeMap::new();
    for (list, id) in [("sections", "section_id"), ("pools", "pool_id")] {
        for x in r.body[list].as_array().context("availability lists")? {
            let n = |k: &str| x[k].as_i64().unwrap_or(0);
            out.insert(x[id].as_str().unwrap_or_default().to_owned(), (n("held"), n("sold")));
        }
    }
    Ok(out)
}

pub fn matches_truth(view: &ProjectionView, truth: &BTreeMap<String, (i64, i64)>) -> bool {
    truth.iter().all(|(place, (held, sold))| {
        let c =
            view.sections.get(place).or_else(|| view.pools.get(place)).copied().unwrap_or_default();
        c.held == *held && c.sold == *sold
    })
}

pub async fn projection(
    http: &reqwest::Client,
    core: &str,
    event: &str,
) -> anyhow::Result<ProjectionView> {
    let r = http.get(format!("{core}/v1/internal/projection/{event}")).send().await?;
    anyhow::ensure!(r.status().is_success(), "projection: {}", r.status());
    Ok(r.json().await?)
}

/// Every message of a region's stream: bus event id → (subject, payload).
pub async fn stream_events(
    client: &async_nats::Client,
    region: &RegionId,
) -> anyhow::Result<BTreeMap<String, (String, Vec<u8>)>> {
    let js = region_context(client, region);
    let mut stream = js.get_stream(stream_name(region)).await?;
    let state = stream.info().await?.state.clone();
    let mut out = BTreeMap::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(m) = stream.get_raw_message(seq).await else { continue };
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
        if let Some(id) = v["id"].as_str() {
            out.entry(id.to_owned()).or_insert((m.subject.to_string(), m.payload.to_vec()));
        }
    }
    Ok(out)
}

/// Per event kind in a region's stream: (events, places) for `event`.
pub fn kinds(
    events: &BTreeMap<String, (String, Vec<u8>)>,
    event: &str,
) -> BTreeMap<String, (usize, u64)> {
    let mut out: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (_, payload) in events.values() {
        let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        if v["event_id"] != event {
            continue;
        }
        let e = out.entry(v["type"].as_str().unwrap_or("?").to_owned()).or_default();
        e.0 += 1;
        e.1 += v["quantity"].as_u64().unwrap_or(0);
    }
    out
}
