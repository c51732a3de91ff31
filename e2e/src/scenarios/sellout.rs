//! `cargo xtask e2e sellout`: a sale with more fans than places, over the real stack.
//! Every fan long-polls the waiting room the way a fan's page does; admitted fans buy,
//! abandon (their admission expires unused), fail (a hold that finds nothing, then try
//! again), release their hold, or let it lapse. Fans told "sold out" stay on the waiting
//! list or leave. The run checks, from outside:
//!
//! - nobody is stranded: when the sale ends every fan was admitted, left, or was told
//!   "sold out" while nothing was left (and no place sat unsold while fans waited);
//! - every waiting fan was told "sold out" within 5 s of the controller saying so
//!   (`told_sold_out_p99_ms`, from the watermarks on NATS to the fan's long poll);
//! - places that came back were admitted again (`recycled_admissions`), to the waiting
//!   list in queue order (`waiting_list_admitted`, `waiting_list_out_of_order`);
//! - "it's your turn" reached a fan within a second of the watermark that admitted them
//!   (`turn_notify_p99_ms`), with no poll answered early without a change;
//! - nothing was sold twice or past capacity (`oversold`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tessera_api::inventory::SaleState;
use tessera_api::queue::AdmissionWatermark;

use crate::fan::{Api, Fan, Operator};
use crate::stack::{Stack, StackOptions};

/// Size and shape of the run.
#[derive(Debug, Clone)]
pub struct SelloutOptions {
    pub fans: usize,
    /// General-admission places on the floor (plus a box of 3 nobody can fill with one
    /// order of 4: the fans who fail try it first).
    pub places: u64,
    /// Admission window in seconds, and hold lifetime (30 s is the shortest an event
    /// takes): short, so that abandoned admissions and lapsed holds come back within the run.
    pub admission_ttl_s: u64,
    pub hold_ttl_s: u64,
    pub admission_rate_per_s: f64,
    /// The whole run's limit.
    pub deadline: Duration,
}

impl SelloutOptions {
    pub fn full() -> Self {
        SelloutOptions {
            fans: 400,
            places: 150,
            admission_ttl_s: 8,
            hold_ttl_s: 30,
            admission_rate_per_s: 40.0,
            deadline: Duration::from_secs(300),
        }
    }

    /// The variant `cargo xtask test` runs.
    pub fn ci() -> Self {
        SelloutOptions { fans: 160, places: 60, deadline: Duration::from_secs(240), ..Self::full() }
    }
}

const BOX_PLACES: u64 = 3;

/// What a fan does once admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Persona {
    /// Holds 1 or 2 places and pays.
    Buy(u32),
    /// Never comes back: the admission expires unused.
    Abandon,
    /// Asks for what is not there (4 places in the box of 3), then buys 1.
    Fail,
    /// Holds, then releases the hold.
    Release,
    /// Holds and never pays: the hold lapses.
    Lapse,
}

fn persona(i: usize) -> Persona {
    // A fixed mix, spread over the line (i * 37 walks every residue of 100).
    match (i * 37) % 100 {
        0..=24 => Persona::Buy(1),
        25..=44 => Persona::Buy(2),
        45..=59 => Persona::Abandon,
        60..=74 => Persona::Fail,
        75..=86 => Persona::Release,
        _ => Persona::Lapse,
    }
}

/// Told "sold out", a fan stays on the waiting list (7 in 10) or leaves.
fn stays(i: usize) -> bool {
    (i * 53) % 10 < 7
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Bought,
    Abandoned,
    GaveUp,
    Released,
    Lapsed,
    Left,
    /// Still in line (waiting list or not) when the sale ended.
    InLine,
}

#[derive(Debug, Default)]
struct FanLog {
    /// When the fan had their place (since t0).
    joined_at: Option<Duration>,
    /// Times (since t0) the fan's long poll answered, with the state it said.
    answers: Vec<(Duration, String, bool)>,
    admitted_at: Option<Duration>,
    admitted_on_list: bool,
    rank: Option<String>,
    end: Option<End>,
    polls: usize,
    early_without_change: usize,
}

struct Shared {
    t0: Instant,
    event: String,
    /// Every watermark seen on NATS: (time since t0, watermark).
    watermarks: Mutex<Vec<(Duration, AdmissionWatermark)>>,
    logs: Vec<Mutex<FanLog>>,
    over: tokio::sync::watch::Receiver<bool>,
    /// Long polls held open at the edge right now.
    parked: std::sync::atomic::AtomicUsize,
}

/// Counts a long poll as held while it lives (also when it is dropped unanswered).
struct Parked<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Parked<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Parked(n)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The open rank and waiting-list flag a ticket carries (its payload is plain JSON in the
/// middle of the JWT; the fan reads its own ticket).
fn ticket_claims(ticket: &str) -> (Option<String>, bool) {
    use base64::Engine as _;
    let payload = ticket.split('.').nth(1).unwrap_or("");
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return (None, false);
    };
    let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    (v["rank"].as_str().map(str::to_owned), v["waiting_list"].as_bool().unwrap_or(false))
}

async fn retrying<F, Fut>(what: &str, mut f: F) -> anyhow::Result<crate::fan::Reply>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<crate::fan::Reply>>,
{
    let mut last = String::new();
    for _ in 0..20 {
        match f().await {
            Ok(r) if r.status < 500 => return Ok(r),
            Ok(r) => last = format!("{} {}", r.status, r.body),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("{what}: {last}")
}

/// Tries to hold `quantity` places: the floor first, then the box.
async fn hold(fan: &Fan, event: &str, quantity: u32) -> anyhow::Result<Option<String>> {
    for pool in ["FLOOR", "BOX"] {
        let body = json!({"pool": pool, "quantity": quantity});
        let r = retrying("hold", || fan.hold(event, &body, None)).await?;
        match r.status {
            201 => return Ok(r.body["hold_id"].as_str().map(str::to_owned)),
            409 => continue,
            _ => bail!("hold: {} {}", r.status, r.body),
        }
    }
    Ok(None)
}

async fn act(fan: &Fan, event: &str, who: Persona, i: usize) -> anyhow::Result<End> {
    Ok(match who {
        Persona::Abandon => End::Abandoned,
        Persona::Buy(_) | Persona::Release | Persona::Lapse | Persona::Fail => {
            let q = match who {
                Persona::Buy(q) => q,
                Persona::Fail => {
                    // 4 from the box of 3: nothing fits, the place goes back.
                    let body = json!({"pool": "BOX", "quantity": 4});
                    let r = retrying("hold", || fan.hold(event, &body, None)).await?;
                    if r.status == 201 {
                        bail!("fan {i}: 4 places held in a box of 3: {}", r.body);
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    1
                }
                _ => 1,
            };
            let Some(hold_id) = hold(fan, event, q).await? else {
                return Ok(End::GaveUp);
            };
            match who {
                Persona::Release => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let r = retrying("release", || fan.release(&hold_id)).await?;
                    if !r.ok() {
                        bail!("fan {i}: release: {} {}", r.status, r.body);
                    }
                    End::Released
                }
                Persona::Lapse => End::Lapsed,
                _ => {
                    let key = format!("sellout-{i}");
                    let r = retrying("checkout", || fan.checkout(&hold_id, "pm_card_visa", &key))
                        .await?;
                    if r.status != 201 {
                        bail!("fan {i}: checkout: {} {}", r.status, r.body);
                    }
                    End::Bought
                }
            }
        }
    })
}

/// One fan's whole visit.
async fn visit(shared: Arc<Shared>, edge: Api, issuer: Api, i: usize) -> anyhow::Result<()> {
    let event = shared.event.clone();
    let customer = format!("fan-{i}");
    let token = issuer.dev_token(&customer, false).await?;
    let mut fan = Fan::with_token(edge, &customer, token);
    let r = retrying("join", || {
        let mut f = fan.clone();
        let event = event.clone();
        async move {
            let r = f.join(&event).await?;
            Ok(r)
        }
    })
    .await?;
    if !r.ok() {
        bail!("fan {i}: join: {} {}", r.status, r.body);
    }
    fan.ticket = r.body["ticket"].as_str().map(str::to_owned);
    let log = &shared.logs[i];
    {
        let mut l = log.lock();
        l.rank = ticket_claims(fan.ticket.as_deref().unwrap_or("")).0;
        l.joined_at = Some(shared.t0.elapsed());
    }
    let mut known = "waiting".to_owned();
    let mut decided = false;
    let mut over = shared.over.clone();
    loop {
        if *over.borrow() {
            log.lock().end = Some(End::InLine);
            return Ok(());
        }
        let asked = Instant::now();
        let parked = &shared.parked;
        let r = tokio::select! {
            r = retrying("status", || {
                let mut f = fan.clone();
                let (e, k) = (event.clone(), known.clone());
                async move {
                    let _parked = Parked::new(parked);
                    f.status_wait(&e, 20, &k).await
                }
            }) => r?,
            _ = over.changed() => continue,
        };
        let at = shared.t0.elapsed();
        if !r.ok() {
            bail!("fan {i}: status: {} {}", r.status, r.body);
        }
        let state = r.body["state"].as_str().unwrap_or("").to_owned();
        let on_list = r.body["waiting_list"].as_bool().unwrap_or(false);
        {
            let mut l = log.lock();
            l.polls += 1;
            if state == known && asked.elapsed() < Duration::from_secs(19) {
                l.early_without_change += 1;
            }
            l.answers.push((at, state.clone(), on_list));
        }
        if let Some(adm) = r.body["admission_token"].as_str() {
            fan.admission = Some(adm.to_owned());
        }
        match state.as_str() {
            "admitted" => {
                {
                    let mut l = log.lock();
                    l.admitted_at = Some(at);
                    l.admitted_on_list = on_list;
                }
                let end = act(&fan, &event, persona(i), i).await?;
                log.lock().end = Some(end);
                return Ok(());
            }
            "sold_out" if !decided => {
                decided = true;
                if stays(i) {
                    let r = retrying("waiting list", || {
                        let mut f = fan.clone();
                        let e = event.clone();
                        async move { f.waiting_list(&e).await }
                    })
                    .await?;
                    match r.status {
                        200 => fan.ticket = r.body["ticket"].as_str().map(str::to_owned),
                        // Places came back between the answer and the choice.
                        409 if r.code() == Some("not_sold_out") => decided = false,
                        _ => bail!("fan {i}: waiting list: {} {}", r.status, r.body),
                    }
                } else {
                    let r = retrying("leave", || fan.leave(&event)).await?;
                    if r.status != 204 {
                        bail!("fan {i}: leave: {} {}", r.status, r.body);
                    }
                    log.lock().end = Some(End::Left);
                    return Ok(());
                }
            }
            "expired" | "closed" => bail!("fan {i}: {state} while waiting: {}", r.body),
            _ => {}
        }
        known = state;
    }
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    crate::scenarios::quantile(&v, p)
}

/// Whether the watermark's lines have passed a ticket (open phase, by rank).
fn passes(wm: &AdmissionWatermark, rank: &str, on_list: bool) -> bool {
    let before =
        |r: Option<&String>| r.is_some_and(|r| r.len() == rank.len() && rank <= r.as_str());
    before(wm.open_admitted_rank.as_ref())
        || (on_list && before(wm.waiting_list_line.as_ref().and_then(|l| l.open_rank.as_ref())))
}

/// Runs the scenario on a fresh stack and returns the `key=value` summary.
pub async fn run(opts: SelloutOptions) -> anyhow::Result<BTreeMap<String, String>> {
    let mut options = StackOptions::for_tests("sellout")?;
    options.core_queue_toml =
        format!("admission_ttl_s = {}\nadmission_grace_s = 2\n", opts.admission_ttl_s);
    options.edge_variables.insert("admission_ttl_s".into(), opts.admission_ttl_s.to_string());
    // Every fan holds a long poll open at once; buyers also have the host's 64 reserved
    // slots (`priority_requests_reserved`), each with its instance.
    let slots = (opts.fans * 2 + 256).max(1024);
    options.edge_toml = format!(
        "[limits]\nrequest_timeout = \"30s\"\nconcurrent_requests_max = {slots}\ninstances_max = {}\n",
        slots + 64
    );
    let mut stack = Stack::start(options, &|s| eprintln!("[sellout] {s}")).await?;
    let edge = Api::new(stack.http.clone(), stack.urls.edge.clone().context("edge")?);
    let router = Api::new(stack.http.clone(), stack.urls.router.clone());
    let op = Operator::new(router.clone()).await?;
    let event = "sellout-night".to_owned();
    let capacity = opts.places + BOX_PLACES;
    let map = json!({
        "event_id": event, "name": "Sellout Night", "venue": "Hall", "starts_at": "2027-09-01T20:00:00Z",
        "currency": "EUR", "max_tickets_per_customer": 4, "hold_ttl_s": opts.hold_ttl_s,
        "tiers": [{"tier_id": "GA", "name": "Floor", "price_minor": 4500}],
        "ga_pools": [
            {"pool_id": "FLOOR", "name": "Floor", "tier": "GA", "capacity": opts.places},
            {"pool_id": "BOX", "name": "Box", "tier": "GA", "capacity": BOX_PLACES}
        ],
        "open_now": true
    });
    let r = op.create_event(&map).await?;
    if r.status != 201 {
        bail!("create event: {} {}", r.status, r.body);
    }
    let r = op.admission_rate(&event, opts.admission_rate_per_s).await?;
    if !r.ok() {
        bail!("admission rate: {} {}", r.status, r.body);
    }

    // Watch the watermarks as the edges do.
    let nats_url = stack.urls.nats_leaves.values().next().cloned().context("no NATS leaf")?;
    let nats = stack.nats_client(&nats_url).await?;
    let mut sub = nats
        .subscribe(tessera_api::bus::admission_subject(&tessera_api::EventId::parse(&event)?))
        .await?;
    let (over_tx, over_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        event: event.clone(),
        watermarks: Mutex::new(Vec::new()),
        logs: (0..opts.fans).map(|_| Mutex::new(FanLog::default())).collect(),
        over: over_rx,
        parked: std::sync::atomic::AtomicUsize::new(0),
    });
    // How much a waiting fan costs the edge: its resident memory against the long polls
    // it holds.
    let edge_pid = stack.service("edge")?.pid().context("edge pid")?;
    let edge_base_kib = rss_kib(edge_pid).unwrap_or(0);
    let edge_peak = Arc::new(Mutex::new((0usize, edge_base_kib)));
    let sampler = {
        let (shared, peak) = (shared.clone(), edge_peak.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let parked = shared.parked.load(std::sync::atomic::Ordering::Relaxed);
                let rss = rss_kib(edge_pid).unwrap_or(0);
                let mut p = peak.lock();
                if parked > p.0 {
                    *p = (parked, rss.max(p.1));
                }
            }
        })
    };
    let watcher = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if let Ok(wm) = serde_json::from_slice::<AdmissionWatermark>(&msg.payload) {
                    shared.watermarks.lock().push((shared.t0.elapsed(), wm));
                }
            }
        })
    };

    // Fans arrive over the first seconds, as a sale's opening minute does.
    let mut tasks = Vec::new();
    for i in 0..opts.fans {
        let (shared, edge, router) = (shared.clone(), edge.clone(), router.clone());
        tasks.push(tokio::spawn(async move { (i, visit(shared, edge, router, i).await) }));
        if i % 40 == 39 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // The sale ends when every place is sold, or when no fan is left in line.
    let t0 = shared.t0;
    let mut last_report = Instant::now();
    let mut sold_at = None;
    let ended_by = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let avail = router.get(&format!("/v1/events/{event}/availability"), &[]).await?;
        let pools = avail.body["pools"].as_array().cloned().unwrap_or_default();
        let sum = |k: &str| pools.iter().map(|p| p[k].as_u64().unwrap_or(0)).sum::<u64>();
        let (sold, held) = (sum("sold"), sum("held"));
        let active = shared.logs.iter().filter(|l| l.lock().end.is_none()).count();
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "[sellout] {:>4.0?}: sold {sold}/{capacity}, held {held}, fans still in line {active}",
                t0.elapsed()
            );
        }
        if sold == capacity {
            // Let the fans in line hear it (they long-poll).
            let at = *sold_at.get_or_insert(Instant::now());
            if at.elapsed() > Duration::from_secs(6) {
                break "sold out";
            }
        }
        if active == 0 {
            break "nobody left in line";
        }
        if t0.elapsed() > opts.deadline {
            break "deadline";
        }
    };
    eprintln!("[sellout] sale ended ({ended_by}) after {:.0?}", t0.elapsed());
    let _ = over_tx.send(true);
    let mut failures = Vec::new();
    for t in tasks {
        match t.await? {
            (_, Ok(())) => {}
            (i, Err(e)) => failures.push(format!("fan-{i}: {e:#}")),
        }
    }
    watcher.abort();
    sampler.abort();
    if !failures.is_empty() {
        bail!(
            "{} fans failed:\n{}",
            failures.len(),
            failures.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
        );
    }

    // The audit.
    let avail = router.get(&format!("/v1/events/{event}/availability"), &[]).await?;
    let pools = avail.body["pools"].as_array().cloned().unwrap_or_default();
    let sum = |k: &str| pools.iter().map(|p| p[k].as_u64().unwrap_or(0)).sum::<u64>();
    let (sold, held, free) = (sum("sold"), sum("held"), sum("free"));
    let over_capacity = pools.iter().any(|p| {
        p["sold"].as_u64().unwrap_or(0) + p["held"].as_u64().unwrap_or(0)
            > p["capacity"].as_u64().unwrap_or(0)
    });
    let logs: Vec<FanLog> = shared.logs.iter().map(|l| std::mem::take(&mut *l.lock())).collect();
    let bought = logs.iter().filter(|l| l.end == Some(End::Bought)).count();
    let oversold = u64::from(over_capacity || sold > capacity || sold + held + free != capacity);

    // Sold-out periods, as the controller published them.
    let wms = shared.watermarks.lock().clone();
    let mut periods: Vec<(Duration, Duration)> = Vec::new();
    let mut open: Option<Duration> = None;
    for (at, wm) in &wms {
        match (wm.state == SaleState::SoldOut, open) {
            (true, None) => open = Some(*at),
            (false, Some(s)) => {
                periods.push((s, *at));
                open = None;
            }
            _ => {}
        }
    }
    let end_of_run = t0.elapsed();
    if let Some(s) = open {
        periods.push((s, end_of_run));
    }
    // Every fan in line (not admitted, not gone) when a sold-out period began must hear of
    // it within 5 s; one who never did while it lasted counts with the whole period.
    let mut told_ms = Vec::new();
    let mut never_told = 0;
    for l in &logs {
        let Some(first) = l.joined_at else { continue };
        let gone = l.admitted_at.or_else(|| {
            matches!(l.end, Some(End::Left)).then(|| l.answers.last().map(|(t, _, _)| *t))?
        });
        for (start, end) in &periods {
            // The fan was in line during the period (joined before it ended, still there).
            let from = (*start).max(first);
            // Admitted within 5 s instead is better news than "sold out".
            if from >= *end || gone.is_some_and(|g| g <= from + Duration::from_secs(5)) {
                continue;
            }
            let heard = l
                .answers
                .iter()
                .find(|(t, s, _)| {
                    *t >= from && *t <= *end + Duration::from_secs(1) && s == "sold_out"
                })
                .map(|(t, _, _)| *t);
            match heard {
                Some(t) => told_ms.push(t.saturating_sub(from).as_secs_f64() * 1000.0),
                None if end.saturating_sub(from) > Duration::from_secs(5) => {
                    if never_told < 5 {
                        eprintln!(
                            "[sellout] not told in {:?}..{:?}: {:?} admitted_at={:?} end={:?}",
                            from, end, l.answers, l.admitted_at, l.end
                        );
                    }
                    never_told += 1;
                    told_ms.push(end.saturating_sub(from).as_secs_f64() * 1000.0);
                }
                None => {}
            }
        }
    }
    // "It's your turn": from the first watermark whose lines passed the fan to the answer.
    let mut turn_ms = Vec::new();
    for l in &logs {
        let (Some(at), Some(rank)) = (l.admitted_at, l.rank.as_deref()) else { continue };
        if let Some((t, _)) = wms.iter().find(|(_, wm)| passes(wm, rank, l.admitted_on_list)) {
            turn_ms.push(at.saturating_sub(*t).as_secs_f64() * 1000.0);
        }
    }
    let first_sold_out = periods.first().map(|(s, _)| *s);
    let recycled = logs
        .iter()
        .filter(|l| l.admitted_at.is_some_and(|a| first_sold_out.is_some_and(|s| a > s)))
        .count();
    let waiting_list_admitted = logs.iter().filter(|l| l.admitted_on_list).count();
    // Waiting-list admissions in queue order: among fans admitted from the list, a later
    // rank is never admitted (by its watermark) before an earlier one that chose the list
    // before that watermark.
    let mut on_list: Vec<(String, Duration)> = logs
        .iter()
        .filter(|l| l.admitted_on_list)
        .filter_map(|l| Some((l.rank.clone()?, l.admitted_at?)))
        .collect();
    on_list.sort();
    let out_of_order =
        on_list.windows(2).filter(|w| w[1].1 + Duration::from_secs(2) < w[0].1).count();
    let in_line: Vec<&FanLog> = logs.iter().filter(|l| l.end == Some(End::InLine)).collect();
    // Stranded: in line at the end, although places were left that no admission spoke
    // for, or without having been told "sold out"; or never told while it lasted.
    let unoffered =
        free > 0 && (ended_by == "deadline" || wms.last().is_none_or(|(_, w)| w.outstanding == 0));
    let stranded = in_line
        .iter()
        .filter(|l| {
            let last = l.answers.last().map(|(_, s, _)| s.as_str());
            unoffered || last != Some("sold_out")
        })
        .count()
        + never_told;
    let early: usize = logs.iter().map(|l| l.early_without_change).sum();
    let polls: usize = logs.iter().map(|l| l.polls).sum();
    let count = |e: End| logs.iter().filter(|l| l.end == Some(e)).count().to_string();

    let warnings = stack.unexpected_warnings(crate::scenarios::EXPECTED_WARNINGS);
    for w in warnings.iter().take(20) {
        eprintln!("[sellout] unexpected: {w}");
    }
    stack.stop();
    let mut kv = BTreeMap::new();
    kv.insert("fans".into(), opts.fans.to_string());
    kv.insert("places".into(), capacity.to_string());
    kv.insert("sold".into(), sold.to_string());
    kv.insert("left_unsold".into(), free.to_string());
    kv.insert("bought".into(), bought.to_string());
    kv.insert("abandoned".into(), count(End::Abandoned));
    kv.insert("gave_up".into(), count(End::GaveUp));
    kv.insert("released".into(), count(End::Released));
    kv.insert("lapsed".into(), count(End::Lapsed));
    kv.insert("left".into(), count(End::Left));
    kv.insert("in_line_at_end".into(), in_line.len().to_string());
    kv.insert("sold_out_periods".into(), periods.len().to_string());
    kv.insert("told_sold_out_p50_ms".into(), format!("{:.0}", pct(told_ms.clone(), 0.5)));
    kv.insert("told_sold_out_p99_ms".into(), format!("{:.0}", pct(told_ms, 0.99)));
    kv.insert("turn_notify_p50_ms".into(), format!("{:.0}", pct(turn_ms.clone(), 0.5)));
    kv.insert("turn_notify_p99_ms".into(), format!("{:.0}", pct(turn_ms, 0.99)));
    kv.insert("recycled_admissions".into(), recycled.to_string());
    kv.insert("waiting_list_admitted".into(), waiting_list_admitted.to_string());
    kv.insert("waiting_list_out_of_order".into(), out_of_order.to_string());
    kv.insert("early_answers_without_change".into(), early.to_string());
    kv.insert("polls".into(), polls.to_string());
    kv.insert("stranded_fans".into(), stranded.to_string());
    kv.insert("oversold".into(), oversold.to_string());
    kv.insert("unexpected_warnings".into(), warnings.len().to_string());
    let (parked_max, rss_at_peak) = *edge_peak.lock();
    kv.insert("edge_parked_polls_max".into(), parked_max.to_string());
    kv.insert("edge_rss_base_kib".into(), edge_base_kib.to_string());
    kv.insert("edge_rss_at_peak_kib".into(), rss_at_peak.to_string());
    kv.insert(
        "edge_kib_per_parked_poll".into(),
        format!(
            "{:.0}",
            rss_at_peak.saturating_sub(edge_base_kib) as f64 / parked_max.max(1) as f64
        ),
    );
    Ok(kv)
}
