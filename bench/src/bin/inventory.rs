//! `cargo xtask bench inventory`: durable holds per second and their latency, on the
//! embedded store, side by side with the common open-source design (PostgreSQL rows locked
//! with `SELECT ... FOR UPDATE SKIP LOCKED`), on this machine, in one run.
//!
//! Workloads, each for `--seconds` or until the inventory runs out:
//! - `uniform`: fans hold one specific seat each, spread uniformly over a >= 100k-seat
//!   event (the venue map with everybody clicking different seats).
//! - `ga`: fans hold 1-2 places of one hot general-admission pool.
//!
//! Both systems are durable: the embedded store fsyncs before acknowledging (group commit),
//! PostgreSQL runs with `fsync=on` and `synchronous_commit=on`. Both record the hold row
//! and an outbox row per hold. Defaults: 400,000 seats; 112 clients on seats (two commit
//! batches in flight, one resolving while the other is synced) and 64 on the pool (at 112
//! its p99 passed 5 ms in most runs, for no more holds per second); PostgreSQL at 16, 64
//! and 112 clients, the best of them compared; 5 s per workload after an unmeasured 2 s
//! warm-up and a `sync` of the disk. Each second's rate is printed while a workload runs;
//! the last line is `key=value` pairs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use tessera_api::inventory::{CreateEvent, GaPoolSpec, HoldSpec, RowSpec, SectionSpec, Tier};
use tessera_api::{CustomerId, EventId, PoolId, RegionId, SeatId, SectionId};
use tessera_common::{OsRng, Rng as _, SystemClock};
use tessera_fdb_schema::Keyspace;
use tessera_inventory::{Inventory, InventoryConfig};
use tessera_store::embedded::{EmbeddedOptions, EmbeddedStore};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone)]
struct Args {
    seconds: u64,
    warmup_seconds: u64,
    sections: u16,
    clients: usize,
    ga_clients: usize,
    pg_clients: Vec<usize>,
    skip_pg: bool,
    no_sync: bool,
    worker_threads: Option<usize>,
    segment_mib: Option<u64>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        seconds: 5,
        warmup_seconds: 2,
        sections: 400,
        clients: 112,
        ga_clients: 64,
        pg_clients: vec![16, 64, 112],
        skip_pg: false,
        no_sync: false,
        worker_threads: None,
        segment_mib: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => a.seconds = val()?.parse()?,
            "--warmup-seconds" => a.warmup_seconds = val()?.parse()?,
            "--sections" => a.sections = val()?.parse()?,
            "--clients" => a.clients = val()?.parse()?,
            "--ga-clients" => a.ga_clients = val()?.parse()?,
            "--pg-clients" => {
                a.pg_clients = val()?.split(',').map(str::parse).collect::<Result<_, _>>()?
            }
            "--skip-pg" => a.skip_pg = true,
            "--worker-threads" => a.worker_threads = Some(val()?.parse()?),
            // Log segment size: a rotation, and the snapshot it starts, every N MiB.
            "--segment-mib" => a.segment_mib = Some(val()?.parse()?),
            // Not durable: shows what fsync costs. Never a figure to compare.
            "--no-sync" => a.no_sync = true,
            "--help" | "-h" => {
                println!(
                    "inventory [--seconds N] [--warmup-seconds N] [--sections N (x1000 seats)] [--clients N] [--ga-clients N] [--pg-clients a,b] [--skip-pg] [--no-sync] [--worker-threads N] [--segment-mib N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

/// Rows of 25 seats, 40 rows a section: 1,000 seats per section.
const ROWS: u16 = 40;
const SEATS_PER_ROW: u16 = 25;
const GA_CAPACITY: u32 = 1_000_000;

fn seat_map(sections: u16) -> CreateEvent {
    CreateEvent {
        event_id: EventId::parse("bench-arena").unwrap(),
        name: "Bench Arena".into(),
        venue: "Bench".into(),
        starts_at: "2027-01-01T20:00:00Z".into(),
        currency: "EUR".into(),
        max_tickets_per_customer: 6,
        hold_ttl_s: 600,
        tiers: vec![Tier { tier_id: "T".into(), name: "T".into(), price_minor: 5000 }],
        sections: (0..sections)
            .map(|i| SectionSpec {
                section_id: SectionId::parse(&format!("S{i}")).unwrap(),
                name: format!("S{i}"),
                tier: "T".into(),
                rows: (1..=ROWS)
                    .map(|r| RowSpec {
                        row: r.to_string(),
                        seats: SEATS_PER_ROW,
                        accessible: vec![],
                    })
                    .collect(),
                row_count: None,
                seats_per_row: None,
            })
            .collect(),
        ga_pools: vec![GaPoolSpec {
            pool_id: PoolId::parse("FLOOR").unwrap(),
            name: "Floor".into(),
            tier: "T".into(),
            capacity: GA_CAPACITY,
        }],
        open_now: true,
    }
}

/// Seat number `n` of the event, in a fixed order.
fn seat(n: u32) -> (u16, u16, u16) {
    let per_section = u32::from(ROWS) * u32::from(SEATS_PER_ROW);
    let section = (n / per_section) as u16;
    let rest = n % per_section;
    (
        section,
        (rest / u32::from(SEATS_PER_ROW)) as u16 + 1,
        (rest % u32::from(SEATS_PER_ROW)) as u16 + 1,
    )
}

/// A permutation of `0..n` (seeded), dealt to `clients` so nobody contends.
fn deal(n: u32, clients: usize) -> Vec<Vec<u32>> {
    let mut all: Vec<u32> = (0..n).collect();
    let rng = tessera_common::SeededRng::new(42);
    for i in (1..all.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        all.swap(i, j);
    }
    let mut out = vec![Vec::new(); clients];
    for (i, s) in all.into_iter().enumerate() {
        out[i % clients].push(s);
    }
    out
}

#[derive(Debug, Clone, Default)]
struct Result_ {
    holds: u64,
    refused: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    clients: usize,
}

impl Result_ {
    fn per_s(&self) -> f64 {
        self.holds as f64 / self.seconds.max(1e-9)
    }
}

fn summarize(
    hist: &Histogram<u64>,
    holds: u64,
    refused: u64,
    elapsed: Duration,
    clients: usize,
) -> Result_ {
    Result_ {
        holds,
        refused,
        seconds: elapsed.as_secs_f64(),
        p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        clients,
    }
}

fn print_row(system: &str, workload: &str, r: &Result_) {
    println!(
        "{system:<22} {workload:<8} clients={:<4} holds={:<8} refused={:<6} {:>9.0} holds/s  p50={:>6.2} ms  p99={:>6.2} ms",
        r.clients,
        r.holds,
        r.refused,
        r.per_s(),
        r.p50_ms,
        r.p99_ms
    );
}

// ---- embedded -------------------------------------------------------------------------

async fn embedded(args: &Args, dir: &Path) -> anyhow::Result<(Result_, Result_, u64)> {
    let mut opts = EmbeddedOptions { sync: !args.no_sync, ..EmbeddedOptions::default() };
    if let Some(mib) = args.segment_mib {
        opts.segment_bytes_max = mib << 20;
    }
    let store = EmbeddedStore::open_with(dir.join("store"), opts)?;
    let inv = Inventory::new(
        store,
        Keyspace::production(),
        Arc::new(SystemClock),
        Arc::new(OsRng),
        InventoryConfig::new(RegionId::parse("us-east")?),
    );
    let started = Instant::now();
    inv.create_event(seat_map(args.sections)).await?;
    let seats = u32::from(args.sections) * u32::from(ROWS) * u32::from(SEATS_PER_ROW);
    eprintln!(
        "    created {seats} seats and a {GA_CAPACITY}-place pool in {:.1?}",
        started.elapsed()
    );
    let event = EventId::parse("bench-arena")?;
    settle_disk();

    // Uniform seats.
    let dealt = deal(seats, args.clients);
    let uniform =
        run_embedded(&inv, &event, args, dealt.into_iter().map(Work::Seats).collect()).await?;
    // Hot pool.
    let ga = run_embedded(&inv, &event, args, (0..args.ga_clients).map(|_| Work::Pool).collect())
        .await?;

    // Invariants after the run: no seat owned twice, the pool not oversold.
    let oversold = check_embedded(&inv, &event, uniform.holds, &ga).await?;
    Ok((uniform, ga, oversold))
}

enum Work {
    Seats(Vec<u32>),
    Pool,
}

async fn run_embedded(
    inv: &Inventory<EmbeddedStore>,
    event: &EventId,
    args: &Args,
    work: Vec<Work>,
) -> anyhow::Result<Result_> {
    let clients = work.len();
    let stop = Arc::new(AtomicBool::new(false));
    let holds = Arc::new(AtomicU64::new(0));
    let ga_places = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    // Requests are made before the clock starts: the clients should cost the machine as
    // little as clients on other machines would.
    let ga_per_client = (args.seconds as usize * 150_000 / clients.max(1)).max(1000);
    let work: Vec<Vec<(HoldSpec, CustomerId)>> = work
        .into_iter()
        .enumerate()
        .map(|(c, w)| {
            let who = |i: usize| CustomerId::parse(&format!("c{c}-{i}")).unwrap();
            match w {
                Work::Seats(list) => list
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let (s, r, k) = seat(*n);
                        let id = SeatId::parse(&format!("S{s}-{r}-{k}")).unwrap();
                        (HoldSpec::Seats(vec![id]), who(i))
                    })
                    .collect(),
                Work::Pool => (0..ga_per_client)
                    .map(|i| {
                        let pool = PoolId::parse("FLOOR").unwrap();
                        (HoldSpec::General { pool, quantity: 1 + (i % 2) as u32 }, who(i))
                    })
                    .collect(),
            }
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let cpu_before = tessera_bench::thread_cpu();
    // The store and the inventory record their metrics, as in `tessera-core`.
    let metrics_before = tessera_runtime::metrics::install().render();
    let mut tasks = Vec::new();
    for requests in work {
        let inv = inv.clone();
        let event = event.clone();
        let (stop, holds, refused, ga_places) =
            (stop.clone(), holds.clone(), refused.clone(), ga_places.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            for (spec, who) in &requests {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                match inv.hold(&event, who, spec, None).await {
                    Ok(h) => {
                        record(&mut hist, t);
                        holds.fetch_add(1, Ordering::Relaxed);
                        if h.pool.is_some() {
                            ga_places.fetch_add(u64::from(h.quantity), Ordering::Relaxed);
                        }
                    }
                    Err(e) if e.is_client_error() => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        if matches!(e, tessera_inventory::InventoryError::SoldOut { .. }) {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    Err(e) => panic!("hold failed: {e:#}"),
                }
            }
            hist
        }));
    }
    let ticker = progress(holds.clone(), started);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        hist.add(t.await?)?;
    }
    ticker.abort();
    let elapsed = started.elapsed();
    eprintln!("    store: {}", store_counters(&metrics_before));
    eprintln!(
        "    CPU µs per hold by thread: {}",
        tessera_bench::cpu_per_op(
            &cpu_before,
            &tessera_bench::thread_cpu(),
            holds.load(Ordering::Relaxed)
        )
    );
    let r = summarize(
        &hist,
        holds.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        elapsed,
        clients,
    );
    if ga_places.load(Ordering::Relaxed) > 0 {
        GA_TAKEN.store(ga_places.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    Ok(r)
}

static GA_TAKEN: AtomicU64 = AtomicU64::new(0);

/// The store's own counters since `before` (a Prometheus rendering): commits, conflicts,
/// retries, and transactions per batch.
fn store_counters(before: &str) -> String {
    let now = tessera_runtime::metrics::install().render();
    let sum = |text: &str, name: &str, label: Option<&str>| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && label.is_none_or(|lb| l.contains(lb)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let delta = |name: &str, label: Option<&str>| sum(&now, name, label) - sum(before, name, label);
    let committed = delta("tessera_store_commits_total", Some("outcome=\"committed\""));
    let conflicts = delta("tessera_store_commits_total", Some("outcome=\"conflict\""));
    let retries = delta("tessera_store_retries_total", None);
    let batches = delta("tessera_store_commit_batch_txns_count", None);
    let txns = delta("tessera_store_commit_batch_txns_sum", None);
    let log_bytes = delta("tessera_store_log_bytes_total", None);
    let fsyncs = delta("tessera_store_fsync_seconds_count", None);
    let fsync_s = delta("tessera_store_fsync_seconds_sum", None);
    let batch_s = delta("tessera_store_commit_batch_seconds_sum", None);
    format!(
        "committed={committed:.0} conflicts={conflicts:.0} retries={retries:.0} txns_per_batch={:.1} log_bytes_per_commit={:.0} fsyncs={fsyncs:.0} fsync_mean_us={:.0} batch_commit_mean_us={:.0}",
        txns / batches.max(1.0),
        log_bytes / committed.max(1.0),
        fsync_s * 1e6 / fsyncs.max(1.0),
        batch_s * 1e6 / batches.max(1.0)
    )
}

/// Flushes every dirty page of the machine to disk (`sync`) before a measurement.
fn settle_disk() {
    let started = Instant::now();
    match Command::new("sync").status() {
        Ok(s) if s.success() => {
            eprintln!("    flushed pending disk writes in {:.1?}", started.elapsed())
        }
        _ => {
            eprintln!("    warning: `sync` failed; pending disk writes may slow the first seconds")
        }
    }
}

/// The slowest hold of the current second, in microseconds, for the progress line.
static SLOWEST_US: AtomicU64 = AtomicU64::new(0);

fn record(hist: &mut Histogram<u64>, t: Instant) {
    let us = t.elapsed().as_micros() as u64;
    hist.record(us).ok();
    SLOWEST_US.fetch_max(us, Ordering::Relaxed);
}

/// Prints the rate of each second while a workload runs, and its slowest hold.
fn progress(count: Arc<AtomicU64>, started: Instant) -> tokio::task::JoinHandle<()> {
    SLOWEST_US.store(0, Ordering::Relaxed);
    tokio::spawn(async move {
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = count.load(Ordering::Relaxed);
            let slowest = SLOWEST_US.swap(0, Ordering::Relaxed);
            eprintln!(
                "    {:>4.1} s: {:>7} holds/s, {now} in all, slowest {:.1} ms",
                started.elapsed().as_secs_f64(),
                now - last,
                slowest as f64 / 1000.0
            );
            last = now;
        }
    })
}

async fn check_embedded(
    inv: &Inventory<EmbeddedStore>,
    event: &EventId,
    seat_holds: u64,
    _ga: &Result_,
) -> anyhow::Result<u64> {
    let a = inv.availability(event).await?;
    let held_seats: u64 = a.sections.iter().map(|s| s.held + s.sold).sum();
    let pool = &a.pools[0];
    let mut oversold = 0;
    if held_seats != seat_holds {
        eprintln!("    MISMATCH: {held_seats} seats held, {seat_holds} holds acknowledged");
        oversold += held_seats.abs_diff(seat_holds);
    }
    if pool.held + pool.sold > pool.capacity || pool.held != GA_TAKEN.load(Ordering::Relaxed) {
        eprintln!(
            "    MISMATCH: pool held {} of {}, {} places acknowledged",
            pool.held,
            pool.capacity,
            GA_TAKEN.load(Ordering::Relaxed)
        );
        oversold += 1;
    }
    Ok(oversold)
}

// ---- PostgreSQL -----------------------------------------------------------------------

struct Postgres {
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").is_file())
            .collect();
        versions.sort();
        if let Some(v) = versions.pop() {
            return Ok(v);
        }
    }
    bail!("PostgreSQL is not installed; run: apt-get install -y postgresql")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Postgres {
    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn start(dir: &Path) -> anyhow::Result<Postgres> {
        let bin = match pg_bin_dir() {
            Ok(b) => b,
            Err(_) if is_root() => {
                eprintln!("    installing PostgreSQL (apt-get install -y postgresql)");
                let ok = Command::new("apt-get")
                    .args(["install", "-y", "-q", "postgresql"])
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .status()?
                    .success();
                if !ok {
                    bail!("apt-get install -y postgresql failed");
                }
                pg_bin_dir()?
            }
            Err(e) => return Err(e),
        };
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data)?;
        let as_postgres = is_root();
        if as_postgres {
            // PostgreSQL refuses to run as root: hand the directory to the postgres user.
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .status()?
                .success();
            if !ok {
                bail!("chown postgres {}", dir.display());
            }
        }
        let port = tessera_bench::free_port()?;
        let pg = Postgres { data, bin, port, as_postgres };
        let out = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&pg.data)
            .output()?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=512MB -c fsync=on -c synchronous_commit=on -c full_page_writes=on",
            pg.data.display()
        );
        let log = pg.data.join("server.log");
        let out = pg
            .command("pg_ctl")
            .arg("-D")
            .arg(&pg.data)
            .args(["-o", &opts, "-l"])
            .arg(&log)
            .args(["-w", "start"])
            .output()?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(pg)
    }

    async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

async fn postgres(args: &Args, dir: &Path) -> anyhow::Result<(Result_, Result_, u64)> {
    let pg = Postgres::start(dir)?;
    let db = pg.connect().await?;
    let seats = u32::from(args.sections) * u32::from(ROWS) * u32::from(SEATS_PER_ROW);
    let started = Instant::now();
    db.batch_execute(
        "CREATE TABLE seats (event_id text, seat_id text, state smallint NOT NULL DEFAULT 0, hold_id text, expires_at timestamptz, PRIMARY KEY (event_id, seat_id));
         CREATE TABLE ga_places (place_id bigint PRIMARY KEY, pool_id text NOT NULL, state smallint NOT NULL DEFAULT 0, hold_id text);
         CREATE INDEX ga_free ON ga_places (pool_id, place_id) WHERE state = 0;
         CREATE TABLE holds (hold_id text PRIMARY KEY, event_id text NOT NULL, customer_id text NOT NULL, quantity int NOT NULL, expires_at timestamptz NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE outbox (id bigserial PRIMARY KEY, event_id text NOT NULL, body jsonb NOT NULL);",
    )
    .await?;
    db.execute(
        "INSERT INTO seats (event_id, seat_id) SELECT 'bench-arena', 'S' || (n / 1000) || '-' || ((n % 1000) / 25 + 1) || '-' || (n % 25 + 1) FROM generate_series(0, $1::int - 1) AS n",
        &[&(seats as i32)],
    )
    .await?;
    db.execute("INSERT INTO ga_places (place_id, pool_id) SELECT n, 'FLOOR' FROM generate_series(1, 300000) AS n", &[]).await?;
    db.batch_execute("VACUUM ANALYZE").await?;
    eprintln!("    loaded {seats} seats and 300000 pool places in {:.1?}", started.elapsed());

    let mut best_uniform = Result_::default();
    let mut best_ga = Result_::default();
    let mut next_seat_offset = 0usize;
    for &clients in &args.pg_clients {
        // Fresh seats for each run: deal from the part of the map not used yet.
        let dealt = deal(seats, clients);
        let r = run_pg(
            &pg,
            args,
            dealt
                .into_iter()
                .map(|v| Work::Seats(v.into_iter().skip(next_seat_offset).collect()))
                .collect(),
            clients,
        )
        .await?;
        next_seat_offset += (r.holds as usize) / clients + 1;
        print_row("postgres skip-locked", "uniform", &r);
        if r.per_s() > best_uniform.per_s() {
            best_uniform = r;
        }
        let r = run_pg(&pg, args, (0..clients).map(|_| Work::Pool).collect(), clients).await?;
        print_row("postgres skip-locked", "ga", &r);
        if r.per_s() > best_ga.per_s() {
            best_ga = r;
        }
    }
    // Invariants: each held seat has one hold; pool places never held twice.
    let row = db.query_one("SELECT count(*) FROM seats WHERE state = 1", &[]).await?;
    let held: i64 = row.get(0);
    let row = db.query_one("SELECT count(*) FROM holds WHERE hold_id LIKE 's%'", &[]).await?;
    let seat_holds: i64 = row.get(0);
    let oversold = held.abs_diff(seat_holds);
    Ok((best_uniform, best_ga, oversold))
}

async fn run_pg(
    pg: &Postgres,
    args: &Args,
    work: Vec<Work>,
    clients: usize,
) -> anyhow::Result<Result_> {
    let holds = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let run_id = started.elapsed().as_nanos() as u64 ^ OsRng.next_u64();
    let mut tasks = Vec::new();
    for (c, w) in work.into_iter().enumerate() {
        let db = pg.connect().await?;
        let (holds, refused) = (holds.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let lock_seat = db
                .prepare("SELECT seat_id FROM seats WHERE event_id = 'bench-arena' AND seat_id = $1 AND state = 0 FOR UPDATE SKIP LOCKED")
                .await
                .unwrap();
            let take_seat = db.prepare("UPDATE seats SET state = 1, hold_id = $2, expires_at = now() + interval '10 minutes' WHERE event_id = 'bench-arena' AND seat_id = $1").await.unwrap();
            let lock_places = db.prepare("SELECT place_id FROM ga_places WHERE pool_id = 'FLOOR' AND state = 0 ORDER BY place_id LIMIT $1 FOR UPDATE SKIP LOCKED").await.unwrap();
            let take_places = db.prepare("UPDATE ga_places SET state = 1, hold_id = $2 WHERE place_id = ANY($1)").await.unwrap();
            let insert_hold = db.prepare("INSERT INTO holds (hold_id, event_id, customer_id, quantity, expires_at) VALUES ($1, 'bench-arena', $2, $3, now() + interval '10 minutes')").await.unwrap();
            let insert_outbox = db.prepare("INSERT INTO outbox (event_id, body) VALUES ('bench-arena', $1)").await.unwrap();
            let mut seats = match &w {
                Work::Seats(list) => Some(list.iter()),
                Work::Pool => None,
            };
            let mut db = db;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let hold_id = format!("{}{run_id:x}-{c}-{i}", if seats.is_some() { "s" } else { "g" });
                let customer = format!("c{c}-{i}");
                i += 1;
                let tx = db.transaction().await.unwrap();
                let ok = match seats.as_mut() {
                    Some(it) => {
                        let Some(n) = it.next() else { break };
                        let (s, r, k) = seat(*n);
                        let seat_id = format!("S{s}-{r}-{k}");
                        if tx.query_opt(&lock_seat, &[&seat_id]).await.unwrap().is_some() {
                            tx.execute(&take_seat, &[&seat_id, &hold_id]).await.unwrap();
                            tx.execute(&insert_hold, &[&hold_id, &customer, &1i32]).await.unwrap();
                            true
                        } else {
                            false
                        }
                    }
                    None => {
                        let q = 1 + (i % 2) as i64;
                        let rows = tx.query(&lock_places, &[&q]).await.unwrap();
                        if rows.len() as i64 == q {
                            let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                            tx.execute(&take_places, &[&ids, &hold_id]).await.unwrap();
                            tx.execute(&insert_hold, &[&hold_id, &customer, &(q as i32)]).await.unwrap();
                            true
                        } else {
                            false
                        }
                    }
                };
                if ok {
                    let body = serde_json::json!({"type": "seats_held", "hold_id": hold_id});
                    tx.execute(&insert_outbox, &[&body]).await.unwrap();
                    tx.commit().await.unwrap();
                    record(&mut hist, t);
                    holds.fetch_add(1, Ordering::Relaxed);
                } else {
                    tx.rollback().await.unwrap();
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            hist
        }));
    }
    let ticker = progress(holds.clone(), started);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        hist.add(t.await?)?;
    }
    ticker.abort();
    Ok(summarize(
        &hist,
        holds.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        started.elapsed(),
        clients,
    ))
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    // The store's own lines (log rotation and snapshots) show what a dip in the rate was.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,tessera_store=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .compact()
        .init();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // One core is left to the store's syncer thread (fdatasync, page write-back) and the
    // kernel; the rest run the request tasks, whose first committer in a batch resolves it.
    // `--worker-threads` overrides this.
    let workers = args.worker_threads.unwrap_or(cores.saturating_sub(1).max(1));
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?;
    rt.block_on(async move {
        let dir = tempfile::Builder::new().prefix("tessera-bench-inventory").tempdir_in(bench_dir()?)?;
        let seats = u32::from(args.sections) * 1000;
        println!("inventory benchmark: {seats} seats, {GA_CAPACITY}-place pool, {} s per workload, {cores} cores, {workers} request worker thread(s), {} clients on seats, {} on the pool", args.seconds, args.clients, args.ga_clients);
        // Start from a quiet disk: the build that precedes a benchmark leaves hundreds of
        // megabytes being written back, which would slow the first fsyncs measured.
        settle_disk();
        if args.warmup_seconds > 0 {
            // A short unmeasured run in a scratch store first: a freshly built machine
            // (page cache, memory compaction, CPU clocks) runs the first seconds slower.
            eprintln!("==> warm-up ({} s, not counted)", args.warmup_seconds);
            let scratch = tempfile::Builder::new().prefix("warmup").tempdir_in(dir.path())?;
            let warm = Args { seconds: args.warmup_seconds, sections: 50, ..args.clone() };
            let (wu, _, _) = embedded(&warm, scratch.path()).await?;
            eprintln!("    warm-up: {:.0} holds/s", wu.per_s());
        }
        eprintln!("==> embedded store (durable, group commit)");
        let (eu, eg, e_over) = embedded(&args, dir.path()).await?;
        print_row("tessera embedded", "uniform", &eu);
        print_row("tessera embedded", "ga", &eg);
        let mut kv = vec![
            format!("seats={seats}"),
            format!("clients_uniform={}", args.clients),
            format!("clients_ga={}", args.ga_clients),
            format!("embedded_uniform_holds_per_s={:.0}", eu.per_s()),
            format!("embedded_uniform_p50_ms={:.2}", eu.p50_ms),
            format!("embedded_uniform_p99_ms={:.2}", eu.p99_ms),
            format!("embedded_ga_holds_per_s={:.0}", eg.per_s()),
            format!("embedded_ga_p50_ms={:.2}", eg.p50_ms),
            format!("embedded_ga_p99_ms={:.2}", eg.p99_ms),
        ];
        let mut oversold = e_over;
        if !args.skip_pg {
            settle_disk();
            eprintln!("==> PostgreSQL, SELECT ... FOR UPDATE SKIP LOCKED (durable)");
            let (pu, pg_ga, p_over) = postgres(&args, dir.path()).await?;
            oversold += p_over;
            kv.push(format!("pg_uniform_holds_per_s={:.0}", pu.per_s()));
            kv.push(format!("pg_uniform_p99_ms={:.2}", pu.p99_ms));
            kv.push(format!("pg_ga_holds_per_s={:.0}", pg_ga.per_s()));
            kv.push(format!("pg_ga_p99_ms={:.2}", pg_ga.p99_ms));
            kv.push(format!("ratio_uniform={:.1}", eu.per_s() / pu.per_s().max(1e-9)));
            kv.push(format!("ratio_ga={:.1}", eg.per_s() / pg_ga.per_s().max(1e-9)));
        }
        kv.push(format!("oversold={oversold}"));
        println!("{}", kv.join(" "));
        Ok(())
    })
}

/// Benchmarks write where the repository's `target/` is (a real disk), not to tmpfs.
fn bench_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::current_dir()?.join("target").join("bench");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
