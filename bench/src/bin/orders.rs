//! `cargo xtask bench orders`: whole purchases through the edge on the real local stack
//! (edge -> router -> core -> store -> payment simulator -> NATS -> mail), as fast as many
//! concurrent fans can make them, each doing exactly what a fan's page does: get an
//! identity token, join the waiting room, poll until admitted, hold (a third each: two
//! specific seats, best available two in a section, two general-admission places), pay,
//! read the order.
//!
//! It prints orders/s, p50/p99 per step, CPU seconds per order by process, and afterwards
//! audits what was sold: no seat in two orders, no general-admission pool past its
//! capacity, every paid order with its tickets, the event's counts agreeing with the
//! orders. The last line is `key=value` pairs.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use serde_json::{Value, json};
use tessera_e2e::fan::{Api, Fan, Operator};
use tessera_e2e::stack::{Stack, StackOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "orders", about = "Whole purchases per second through the local stack")]
struct Args {
    /// Fans, each buying one order.
    #[arg(long, default_value_t = 6000)]
    fans: usize,
    /// Fans buying at the same time.
    #[arg(long, default_value_t = 192)]
    concurrency: usize,
    /// Sections of 40 rows x 50 seats (2,000 seats each). Best-available leaves single
    /// seats behind as rows fill, so its half needs room to spare.
    #[arg(long, default_value_t = 6)]
    sections: usize,
    /// General-admission places.
    #[arg(long, default_value_t = 10_000)]
    ga_capacity: usize,
    /// Use the debug build of the services (the default is release).
    #[arg(long)]
    debug: bool,
}

const SEATS_PER_ROW: usize = 50;
const ROWS: usize = 40;
const EVENT: &str = "bench-orders";

fn seat_map(sections: usize, ga: usize) -> Value {
    let letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let sections: Vec<Value> = (0..sections)
        .map(|s| {
            let id = &letters[s..s + 1];
            json!({
                "section_id": id, "name": format!("Section {id}"), "tier": "P1",
                "rows": (1..=ROWS).map(|r| json!({"row": r.to_string(), "seats": SEATS_PER_ROW})).collect::<Vec<_>>()
            })
        })
        .collect();
    json!({
        "event_id": EVENT, "name": "Bench orders", "venue": "Bench Arena",
        "starts_at": "2030-01-01T19:00:00Z", "currency": "EUR",
        "max_tickets_per_customer": 6, "hold_ttl_s": 600,
        "tiers": [{"tier_id": "P1", "name": "Seated", "price_minor": 5000},
                  {"tier_id": "GA", "name": "Floor", "price_minor": 4000}],
        "sections": sections,
        "ga_pools": [{"pool_id": "FLOOR", "name": "Floor", "tier": "GA", "capacity": ga}],
        "open_now": false
    })
}

/// What fan `i` holds: every third fan picks two specific seats, every third asks for the
/// best two in a section, the rest take two general-admission places. Pickers buy in the
/// upper half of the sections, each fan their own pair, and best-available in the lower
/// half, so no fan's hold fails for a seat another fan took (best-available chooses from
/// the middle of the rows out, wherever the free seats are).
fn hold_body(i: usize, sections: usize) -> Value {
    let letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let best_sections = sections / 2;
    let picker_sections = sections - best_sections;
    match i % 3 {
        0 => {
            let pair = i / 3;
            let per_row = SEATS_PER_ROW / 2;
            let row_index = pair / per_row;
            let section = best_sections + (row_index / ROWS) % picker_sections;
            let row = row_index % ROWS + 1;
            let seat = (pair % per_row) * 2 + 1;
            let s = &letters[section..section + 1];
            json!({"seats": [format!("{s}-{row}-{seat}"), format!("{s}-{row}-{}", seat + 1)]})
        }
        1 => {
            let section = (i / 3) % best_sections;
            json!({"section": &letters[section..section + 1], "quantity": 2})
        }
        _ => json!({"pool": "FLOOR", "quantity": 2}),
    }
}

#[derive(Default)]
struct Steps {
    hist: BTreeMap<&'static str, hdrhistogram::Histogram<u64>>,
}

impl Steps {
    fn record(&mut self, step: &'static str, took: Duration) {
        let h = self
            .hist
            .entry(step)
            .or_insert_with(|| hdrhistogram::Histogram::new(3).unwrap_or_else(|_| unreachable!()));
        let _ = h.record((took.as_micros() as u64).max(1));
    }
}

struct Outcome {
    order_id: String,
    seats: Vec<String>,
    ga: u64,
    tickets: usize,
}

async fn buy(
    api: Api,
    i: usize,
    sections: usize,
    steps: &std::sync::Mutex<Steps>,
) -> anyhow::Result<Outcome> {
    let customer = format!("fan-{i}");
    let timed = |step: &'static str, started: Instant| {
        if let Ok(mut s) = steps.lock() {
            s.record(step, started.elapsed());
        }
    };
    let t = Instant::now();
    let mut fan = Fan::new(api, &customer).await?;
    timed("token", t);
    let t = Instant::now();
    let j = fan.join(EVENT).await?;
    if !j.ok() {
        bail!("join: {} {}", j.status, j.body);
    }
    timed("join", t);
    let t = Instant::now();
    let mut polls = 0;
    loop {
        let r = fan.status(EVENT).await?;
        polls += 1;
        if fan.admission.is_some() {
            break;
        }
        if polls > 200 {
            bail!("not admitted after {polls} polls: {}", r.body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    timed("admitted", t);
    let t = Instant::now();
    let key = format!("hold-{i}");
    let h = fan.hold(EVENT, &hold_body(i, sections), Some(&key)).await?;
    if !h.ok() {
        bail!("hold: {} {}", h.status, h.body);
    }
    timed("hold", t);
    let hold_id = h.body["hold_id"].as_str().context("hold_id")?.to_owned();
    let t = Instant::now();
    let c = fan.checkout(&hold_id, "pm_card_visa", &format!("order-{i}")).await?;
    if !c.ok() {
        bail!("checkout: {} {}", c.status, c.body);
    }
    timed("pay", t);
    let order_id = c.body["order_id"].as_str().context("order_id")?.to_owned();
    let t = Instant::now();
    let mut o = fan.order(&order_id).await?;
    timed("read_order", t);
    // A payment still settling reads as `payment_pending`; the page keeps reading.
    let mut reads = 1;
    while o.ok() && o.body["state"] == "payment_pending" && reads < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        o = fan.order(&order_id).await?;
        reads += 1;
    }
    if !o.ok() {
        bail!("read order: {} {}", o.status, o.body);
    }
    if o.body["state"] != "completed" {
        bail!("order {order_id} ended {}", o.body["state"]);
    }
    let tickets = o.body["tickets"].as_array().map_or(0, Vec::len);
    let seats: Vec<String> = o.body["tickets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["seat_id"].as_str().map(str::to_owned))
        .collect();
    let ga = o.body["tickets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["pool"].as_str().is_some())
        .count() as u64;
    Ok(Outcome { order_id, seats, ga, tickets })
}

/// CPU time (user + system) of a process so far.
fn cpu_of(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime is field 14 and stime 15 (1-based) of the whole line: 12 and 13 here.
    let hz = 100;
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.fans == 0 || args.concurrency == 0 {
        bail!("--fans and --concurrency must be at least 1");
    }
    if args.sections < 2 || args.sections > 26 {
        bail!(
            "--sections must be between 2 and 26 (pickers and best-available buy in separate halves)"
        );
    }
    // Each half must hold its third of the fans' pairs.
    let seats = (args.sections / 2) * ROWS * SEATS_PER_ROW * 2;
    let needed_seats = args.fans.div_ceil(3) * 2 * 2;
    let needed_ga = args.fans.div_ceil(3) * 2;
    if needed_seats > seats || needed_ga > args.ga_capacity {
        bail!(
            "{} fans need {needed_seats} seats and {needed_ga} GA places; the venue has {seats} and {}: add --sections or --ga-capacity",
            args.fans,
            args.ga_capacity
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut options = StackOptions::for_tests("bench-orders")?;
    if !args.debug {
        options.bin_dir = options.bin_dir.parent().context("bin dir")?.join("release");
    }
    options.log_filter = "warn".into();
    // A bench measures the pipeline's cost, not how fast one loopback host gets scored.
    options.bot_policy = r#"{"client_hard_per_window":4000000000,"client_soft_per_window":4000000000,"network_soft_per_window":4000000000,"token_soft_per_window":4000000000}"#.into();
    eprintln!(
        "==> starting the local stack ({} services)",
        if args.debug { "debug" } else { "release" }
    );
    let mut stack = Stack::start(options, &|s| eprintln!("==>   {s}")).await?;
    let edge = stack.urls.edge.clone().context("the stack has an edge")?;
    let api = Api::new(stack.http.clone(), edge);
    let op = Operator::new(Api::new(stack.http.clone(), stack.urls.router.clone())).await?;
    let created = op.create_event(&seat_map(args.sections, args.ga_capacity)).await?;
    if created.status != 201 {
        bail!("create event: {} {}", created.status, created.body);
    }
    let opened = op.sale(EVENT, "open").await?;
    if !opened.ok() {
        bail!("open sale: {} {}", opened.status, opened.body);
    }
    let rate = op.admission_rate(EVENT, 1_000_000.0).await?;
    if !rate.ok() {
        bail!("admission rate: {} {}", rate.status, rate.body);
    }

    let steps = Arc::new(std::sync::Mutex::new(Steps::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let pids = stack.pids();
    let cpu_before: Vec<Duration> = pids.iter().map(|(_, p)| cpu_of(*p)).collect();
    let started = Instant::now();
    eprintln!("==> {} fans buying, {} at a time", args.fans, args.concurrency);
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (api, steps, next, done) = (api.clone(), steps.clone(), next.clone(), done.clone());
        let (fans, sections) = (args.fans, args.sections);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= fans {
                    break;
                }
                out.push(
                    buy(api.clone(), i, sections, &steps).await.with_context(|| format!("fan {i}")),
                );
                done.fetch_add(1, Ordering::Relaxed);
            }
            out
        }));
    }
    let progress = {
        let done = done.clone();
        let total = args.fans;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let d = done.load(Ordering::Relaxed);
                eprintln!("==>   {d}/{total} orders");
                if d >= total {
                    break;
                }
            }
        })
    };
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for t in tasks {
        for r in t.await? {
            match r {
                Ok(o) => outcomes.push(o),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
    }
    let elapsed = started.elapsed();
    progress.abort();
    let cpu_after: Vec<Duration> = pids.iter().map(|(_, p)| cpu_of(*p)).collect();
    let orders = outcomes.len();
    let orders_per_s = orders as f64 / elapsed.as_secs_f64();

    // Audit: from the orders themselves and from the event's own counts.
    eprintln!("==> auditing {orders} orders");
    let mut seen = HashSet::new();
    let mut double_sold = 0usize;
    let mut ga_sold = 0u64;
    let mut without_tickets = 0usize;
    for o in &outcomes {
        for s in &o.seats {
            if !seen.insert(s.clone()) {
                double_sold += 1;
            }
        }
        ga_sold += o.ga;
        if o.tickets == 0 || o.tickets != o.seats.len() + o.ga as usize {
            without_tickets += 1;
        }
        let _ = &o.order_id;
    }
    let availability = api.get(&format!("/v1/events/{EVENT}/availability"), &[]).await?;
    let ga_over = ga_sold.saturating_sub(args.ga_capacity as u64);
    let oversold = double_sold as u64 + ga_over;

    let s = steps.lock().map_err(|_| anyhow::anyhow!("steps lock"))?;
    for (step, h) in &s.hist {
        println!(
            "step {step:<11} p50 {:>7.1} ms  p99 {:>7.1} ms  n {}",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.len()
        );
    }
    let mut cpu_parts = Vec::new();
    let mut cpu_total = Duration::ZERO;
    for (i, (name, _)) in pids.iter().enumerate() {
        let used = cpu_after[i].saturating_sub(cpu_before[i]);
        cpu_total += used;
        let per_order_ms = used.as_secs_f64() * 1000.0 / orders.max(1) as f64;
        println!("cpu {name:<14} {:>7.2} s  {per_order_ms:.3} ms/order", used.as_secs_f64());
        cpu_parts.push(format!("cpu_ms_per_order_{}={per_order_ms:.3}", name.replace('-', "_")));
    }
    println!("availability after the run: {}", availability.body);
    for f in failures.iter().take(5) {
        eprintln!("failed: {f}");
    }
    stack.stop();
    if !failures.is_empty() {
        bail!("{} of {} fans failed to buy (first: {})", failures.len(), args.fans, failures[0]);
    }
    if oversold > 0 || without_tickets > 0 {
        bail!("audit failed: oversold={oversold} orders_without_tickets={without_tickets}");
    }
    println!(
        "orders fans={} orders={orders} elapsed_s={:.2} orders_per_s={orders_per_s:.0} cpu_ms_per_order={:.3} {} oversold={oversold} orders_without_tickets={without_tickets}",
        args.fans,
        elapsed.as_secs_f64(),
        cpu_total.as_secs_f64() * 1000.0 / orders.max(1) as f64,
        cpu_parts.join(" ")
    );
    Ok(())
}
