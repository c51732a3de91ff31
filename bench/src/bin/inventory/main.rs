//! `cargo xtask bench inventory`: durable holds per second and their latency, on the
//! embedded store, side by side with two PostgreSQL designs, on this machine, in one run.
//!
//! Workloads on the store, each for `--seconds` or until the inventory runs out:
//! - `uniform`: fans hold one specific seat each, spread uniformly over a >= 100k-seat
//!   event (the venue map with everybody clicking different seats). Closed loop.
//! - `ga`: fans hold 1-2 places of one hot general-admission pool. Closed loop.
//! - `contended`: more clients than places race for the seats and places of a small
//!   event until it is sold out; several rounds. This is the workload that could oversell.
//! - open loop: holds offered at fixed rates (by default 50 % and 80 % of the peak the
//!   closed-loop run just measured), latency from each hold's intended send time
//!   (HdrHistogram p50/p99/p999), on fresh events sized for the run.
//!
//! PostgreSQL runs the same workloads in two designs (see `inventory/pg.rs`): the common
//! `SELECT ... FOR UPDATE SKIP LOCKED` design and the best one, one round trip per hold
//! over the same sharded counters, with and without a tuned `commit_delay`, at several
//! connection counts; the best of all is what the store is compared with.
//!
//! Both systems are durable: the embedded store fsyncs before acknowledging (group
//! commit), PostgreSQL runs with `fsync=on` and `synchronous_commit=on`. Both record the
//! hold and an outbox row per hold. Every run ends with a recount of the raw records
//! (seat records, shard values, place rows) against the holds the clients were told
//! about; `oversold` and `contended_oversold` count every discrepancy, and the process
//! fails when either is not 0, when a hold failed, or when the store is not at least 5x
//! the best PostgreSQL design on both workloads (the floor).
//!
//! `--disk journaled` runs everything on a loop-mounted ext4 image with a journal
//! (`data=ordered`) instead of the default disk. Each second's rate is printed while a
//! workload runs; the last line is `key=value` pairs.

mod disk;
mod open_loop;
mod pg;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use hdrhistogram::Histogram;
use tessera_api::inventory::{CreateEvent, GaPoolSpec, HoldSpec, RowSpec, SectionSpec, Tier};
use tessera_api::{CustomerId, EventId, PoolId, RegionId, SeatId, SectionId};
use tessera_common::{OsRng, SystemClock};
use tessera_fdb_schema::values::{self, PoolRecord};
use tessera_fdb_schema::{Keyspace, SeatState, SeatStatus};
use tessera_inventory::{Inventory, InventoryConfig, InventoryError};
use tessera_store::embedded::{EmbeddedOptions, EmbeddedStore};
use tessera_store::{RangeRequest, Store as _, Transaction as _, decode_i64};

use open_loop::{OpenLoopResult, Outcome};
use pg::{Design, PgBench};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Largest venue one event may describe (`tessera_inventory::EVENT_CAPACITY_MAX`).
const EVENT_CAPACITY_MAX: u64 = tessera_inventory::EVENT_CAPACITY_MAX;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "inventory",
    about = "Durable holds per second: the embedded store against PostgreSQL, in one run"
)]
struct Args {
    /// Seconds per closed-loop workload.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Seconds of the unmeasured warm-up (per system); 0 skips it.
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// Sections of 1,000 seats in the bench venue (beside its 1,000,000-place pool).
    #[arg(long, default_value_t = 400)]
    sections: u32,
    /// Store clients on the uniform workload.
    #[arg(long, default_value_t = 112)]
    clients: usize,
    /// Store clients on the pool.
    #[arg(long, default_value_t = 64)]
    ga_clients: usize,
    /// PostgreSQL connection counts to try (comma-separated); the best is compared.
    #[arg(long, value_delimiter = ',', default_values_t = [16, 64, 112])]
    pg_clients: Vec<usize>,
    /// `commit_delay` of the tuned PostgreSQL variant, in microseconds (0 skips it).
    #[arg(long, default_value_t = 250)]
    pg_commit_delay_us: u32,
    /// `commit_siblings` of the tuned PostgreSQL variant.
    #[arg(long, default_value_t = 5)]
    pg_commit_siblings: u32,
    /// Only the store.
    #[arg(long)]
    skip_pg: bool,
    /// Not durable: shows what fsync costs. Never a figure to compare.
    #[arg(long)]
    no_sync: bool,
    /// Request worker threads of the runtime (default: cores - 1).
    #[arg(long)]
    worker_threads: Option<usize>,
    /// Log segment size: a rotation, and the snapshot it starts, every N MiB.
    #[arg(long)]
    segment_mib: Option<u64>,
    /// How far ahead the store's log is extended with zeros, in MiB (its default: 4).
    #[arg(long)]
    log_extend_mib: Option<u64>,
    /// Seconds of each open-loop run; 0 skips them.
    #[arg(long, default_value_t = 5)]
    open_loop_seconds: u64,
    /// Offered loads of the open-loop runs, as fractions of the measured peak.
    #[arg(long, value_delimiter = ',', default_values_t = [0.5, 0.8], allow_negative_numbers = true)]
    open_loop_loads: Vec<f64>,
    /// Rounds of the contended workload (a fresh small event each); 0 skips it.
    #[arg(long, default_value_t = 5)]
    contended_rounds: usize,
    /// Clients racing in each contended round (more than the seats and the places).
    #[arg(long, default_value_t = 256)]
    contended_clients: usize,
    /// Seats of the contended event (rows of 25).
    #[arg(long, default_value_t = 200)]
    contended_seats: u32,
    /// General-admission places of the contended event.
    #[arg(long, default_value_t = 160)]
    contended_places: u32,
    /// Where the files go: `default` (the disk `target/` is on) or `journaled` (a
    /// loop-mounted ext4 image with a journal, data=ordered; needs root).
    #[arg(long, default_value = "default", value_parser = ["default", "journaled"])]
    disk: String,
    /// Size of the journaled image, in GiB (sparse).
    #[arg(long, default_value_t = 24)]
    disk_image_gib: u64,
}

impl Args {
    /// Refuses what cannot be run, with one line that says why.
    fn validate(&self) -> Result<(), String> {
        let seats = u64::from(self.sections) * 1000;
        if self.seconds == 0 {
            return Err("--seconds must be at least 1".into());
        }
        if self.sections == 0 {
            return Err("--sections must be at least 1 (1,000 seats each)".into());
        }
        if seats + u64::from(GA_CAPACITY) > EVENT_CAPACITY_MAX {
            return Err(format!(
                "--sections {} makes a venue of {seats} seats plus the {GA_CAPACITY}-place pool, more than the {EVENT_CAPACITY_MAX} places an event may have (at most {} sections)",
                self.sections,
                (EVENT_CAPACITY_MAX - u64::from(GA_CAPACITY)) / 1000
            ));
        }
        if self.clients == 0 || self.ga_clients == 0 {
            return Err("--clients and --ga-clients must be at least 1".into());
        }
        if self.clients as u64 > seats {
            return Err(format!(
                "--clients {} is more than the {seats} seats of the venue: each client needs seats of its own",
                self.clients
            ));
        }
        if !self.skip_pg && (self.pg_clients.is_empty() || self.pg_clients.contains(&0)) {
            return Err("--pg-clients needs connection counts of at least 1".into());
        }
        if let Some(n) = self.pg_clients.iter().find(|n| **n > 500) {
            return Err(format!(
                "--pg-clients {n} is more than the server's 500 spare connections"
            ));
        }
        for l in &self.open_loop_loads {
            if !(*l > 0.0 && *l <= 1.0) {
                return Err(format!(
                    "--open-loop-loads {l} is not a fraction of the peak in (0, 1]"
                ));
            }
        }
        if self.contended_rounds > 0 {
            let s = self.contended_seats;
            if s == 0 || !s.is_multiple_of(25) || s > 1000 {
                return Err(format!(
                    "--contended-seats {s} must be a multiple of 25 between 25 and 1000 (rows of 25)"
                ));
            }
            if self.contended_places == 0 {
                return Err("--contended-places must be at least 1".into());
            }
            let most = s.max(self.contended_places) as usize;
            if self.contended_clients <= most {
                return Err(format!(
                    "--contended-clients {} must be more than the {s} seats and the {} places they race for",
                    self.contended_clients, self.contended_places
                ));
            }
            if !self.skip_pg && self.contended_clients > 500 {
                return Err(format!(
                    "--contended-clients {} is more than PostgreSQL's 500 spare connections",
                    self.contended_clients
                ));
            }
        }
        if self.worker_threads == Some(0) {
            return Err("--worker-threads must be at least 1".into());
        }
        if self.segment_mib == Some(0) {
            return Err("--segment-mib must be at least 1".into());
        }
        if self.log_extend_mib == Some(0) {
            return Err("--log-extend-mib must be at least 1".into());
        }
        if self.disk == "journaled" && self.disk_image_gib < 4 {
            return Err("--disk-image-gib must be at least 4".into());
        }
        Ok(())
    }
}

/// Rows of 25 seats, 40 rows a section: 1,000 seats per section.
const ROWS: u16 = 40;
const SEATS_PER_ROW: u16 = 25;
const GA_CAPACITY: u32 = 1_000_000;
const EVENT: &str = "bench-arena";
const POOL: &str = "FLOOR";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Workload {
    Uniform,
    Ga,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Uniform => "uniform",
            Workload::Ga => "ga",
        }
    }
}

fn event_spec(id: &str, sections: u32, rows: u16, pool: Option<(&str, u32)>) -> CreateEvent {
    CreateEvent {
        event_id: EventId::parse(id).unwrap(),
        name: "Bench Arena".into(),
        venue: "Bench".into(),
        starts_at: "2027-01-01T20:00:00Z".into(),
        on_sale_at: None,
        currency: "EUR".into(),
        max_tickets_per_customer: 6,
        hold_ttl_s: 600,
        tiers: vec![Tier { tier_id: "T".into(), name: "T".into(), price_minor: 5000 }],
        sections: (0..sections)
            .map(|i| SectionSpec {
                section_id: SectionId::parse(&format!("S{i}")).unwrap(),
                name: format!("S{i}"),
                tier: "T".into(),
                rows: (1..=rows)
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
        ga_pools: pool
            .map(|(id, capacity)| GaPoolSpec {
                pool_id: PoolId::parse(id).unwrap(),
                name: id.into(),
                tier: "T".into(),
                capacity,
            })
            .into_iter()
            .collect(),
        open_now: true,
    }
}

/// Seat number `n` of a venue, in a fixed order: (section, row, number).
fn seat(n: u32) -> (u32, u16, u16) {
    let per_section = u32::from(ROWS) * u32::from(SEATS_PER_ROW);
    let rest = n % per_section;
    (
        n / per_section,
        (rest / u32::from(SEATS_PER_ROW)) as u16 + 1,
        (rest % u32::from(SEATS_PER_ROW)) as u16 + 1,
    )
}

fn seat_name(n: u32) -> String {
    let (s, r, k) = seat(n);
    format!("S{s}-{r}-{k}")
}

/// A seeded permutation of `0..n`: the order in which clients take the seats.
fn permutation(n: u32) -> Vec<u32> {
    let mut all: Vec<u32> = (0..n).collect();
    pg::shuffle(&mut all, 42);
    all
}

/// The permutation dealt to `clients` so that nobody contends.
fn deal(n: u32, clients: usize) -> Vec<Vec<u32>> {
    let mut out = vec![Vec::new(); clients];
    for (i, s) in permutation(n).into_iter().enumerate() {
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

type Inv = Inventory<EmbeddedStore>;

fn open_inventory(args: &Args, dir: &Path) -> anyhow::Result<Inv> {
    let mut opts = EmbeddedOptions { sync: !args.no_sync, ..EmbeddedOptions::default() };
    if let Some(mib) = args.segment_mib {
        opts.segment_bytes_max = mib << 20;
    }
    if let Some(mib) = args.log_extend_mib {
        opts.log_extend_bytes = mib << 20;
    }
    let store = EmbeddedStore::open_with(dir.join("store"), opts)?;
    Ok(Inventory::new(
        store,
        Keyspace::production(),
        Arc::new(SystemClock),
        Arc::new(OsRng),
        InventoryConfig::new(RegionId::parse("us-east")?),
    ))
}

async fn create(inv: &Inv, spec: CreateEvent) -> anyhow::Result<()> {
    let started = Instant::now();
    let seats: u64 = spec.sections.iter().map(|s| s.rows.len() as u64 * 25).sum();
    let places: u64 = spec.ga_pools.iter().map(|p| u64::from(p.capacity)).sum();
    let id = spec.event_id.clone();
    inv.create_event(spec).await?;
    eprintln!("    created {id}: {seats} seats, {places} pool places in {:.1?}", started.elapsed());
    Ok(())
}

/// What clients were told they hold, for the recount.
#[derive(Default)]
struct Acked {
    seats: Vec<(SeatId, String)>,
    places: u64,
}

impl Acked {
    fn merge(&mut self, other: Acked) {
        self.seats.extend(other.seats);
        self.places += other.places;
    }
}

/// The closed-loop runs on the store: uniform seats, then the hot pool. Returns both
/// results and the recount's discrepancies.
async fn embedded_closed(args: &Args, inv: &Inv) -> anyhow::Result<(Result_, Result_, u64)> {
    create(inv, event_spec(EVENT, args.sections, ROWS, Some((POOL, GA_CAPACITY)))).await?;
    let event = EventId::parse(EVENT)?;
    settle_disk();
    let seats = args.sections * u32::from(ROWS) * u32::from(SEATS_PER_ROW);
    let dealt = deal(seats, args.clients);
    let (uniform, acked_u) =
        run_embedded(inv, &event, args, dealt.into_iter().map(Work::Seats).collect()).await?;
    let (ga, acked_g) =
        run_embedded(inv, &event, args, (0..args.ga_clients).map(|_| Work::Pool).collect()).await?;
    let mut acked = acked_u;
    acked.merge(acked_g);
    let oversold = recount_embedded(inv, &event, &PoolId::parse(POOL)?, &acked, None).await?;
    Ok((uniform, ga, oversold))
}

enum Work {
    Seats(Vec<u32>),
    Pool,
}

async fn run_embedded(
    inv: &Inv,
    event: &EventId,
    args: &Args,
    work: Vec<Work>,
) -> anyhow::Result<(Result_, Acked)> {
    let clients = work.len();
    let stop = Arc::new(AtomicBool::new(false));
    let holds = Arc::new(AtomicU64::new(0));
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
                        let id = SeatId::parse(&seat_name(*n)).unwrap();
                        (HoldSpec::Seats(vec![id]), who(i))
                    })
                    .collect(),
                Work::Pool => (0..ga_per_client)
                    .map(|i| {
                        let pool = PoolId::parse(POOL).unwrap();
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
        let (stop, holds, refused) = (stop.clone(), holds.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut acked = Acked::default();
            for (spec, who) in &requests {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                match inv.hold(&event, who, spec, None).await {
                    Ok(mut h) => {
                        record(&mut hist, t);
                        holds.fetch_add(1, Ordering::Relaxed);
                        if h.pool.is_some() {
                            acked.places += u64::from(h.quantity);
                        } else if let Some(s) = h.seats.pop() {
                            acked.seats.push((s, h.hold_id.to_string()));
                        }
                    }
                    Err(e) if e.is_client_error() => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        if matches!(e, InventoryError::SoldOut { .. }) {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    Err(e) => return Err(anyhow::anyhow!("hold failed: {e:#}")),
                }
            }
            Ok((hist, acked))
        }));
    }
    let ticker = progress(holds.clone(), started);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut acked = Acked::default();
    for t in tasks {
        let (h, a) = t.await??;
        hist.add(h)?;
        acked.merge(a);
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
    Ok((r, acked))
}

/// Recounts `event` from the store's raw records, not its tallies: every seat record (its
/// status and the hold it names) and every shard value of `pool` (against each shard's
/// capacity in the pool record). Counts every discrepancy with what clients were told:
/// an acknowledged seat hold whose seat names another hold, held seats no
/// acknowledgement explains, places taken that differ from the places acknowledged, a
/// shard past its capacity, more acknowledged than the event has (`capacity`).
async fn recount_embedded(
    inv: &Inv,
    event: &EventId,
    pool: &PoolId,
    acked: &Acked,
    capacity: Option<(u64, u64)>,
) -> anyhow::Result<u64> {
    let keys = inv.keys();
    let store = inv.store();
    // Seats, a chunk per transaction (a transaction lives at most 5 s).
    let mut owner: HashMap<SeatId, String> = HashMap::new();
    let (mut begin, end) = keys.seats_of_event(event);
    loop {
        let trx = store.create_trx()?;
        let rows = trx
            .get_range(&RangeRequest::new(begin.clone(), end.clone()).limit(50_000), true)
            .await?;
        let Some((last, _)) = rows.last() else { break };
        begin = last.to_vec();
        begin.push(0);
        for (k, v) in &rows {
            let (_, seat) = keys.seat_of_key(k)?;
            let state = SeatState::decode(v)?;
            if state.status != SeatStatus::Free {
                owner.insert(seat, state.owner);
            }
        }
    }
    let wrong = acked.seats.iter().filter(|(s, h)| owner.get(s) != Some(h)).count() as u64;
    let unexplained = (owner.len() as u64).saturating_sub(acked.seats.len() as u64);
    let mut bad = wrong + unexplained;
    if bad > 0 {
        eprintln!(
            "    MISMATCH (store, {event}): {} seat records held, {} seat holds acknowledged, {wrong} acknowledged holds not on their seat's record",
            owner.len(),
            acked.seats.len()
        );
    }
    // Pool shards.
    let trx = store.create_trx()?;
    // An event without the pool has no shards: nothing taken.
    let record: PoolRecord = match trx.get(&keys.pool(event, pool), true).await? {
        Some(r) => values::decode(&r)?,
        None => PoolRecord {
            v: 1,
            pool_id: pool.clone(),
            name: String::new(),
            tier: String::new(),
            capacity: 0,
            shard_capacity: Vec::new(),
        },
    };
    let (b, e) = keys.ga_shards(event, pool);
    let mut taken = 0u64;
    let mut over = 0u64;
    for (k, v) in trx.get_range(&RangeRequest::new(b, e), true).await? {
        let shard = usize::from(keys.ga_shard_of_key(&k)?);
        let t = decode_i64(&v).max(0) as u64;
        let cap = u64::from(record.shard_capacity.get(shard).copied().unwrap_or(0));
        taken += t;
        over += t.saturating_sub(cap);
    }
    let mut more = over + taken.abs_diff(acked.places);
    if let Some((seats, places)) = capacity {
        more += (acked.seats.len() as u64).saturating_sub(seats);
        more += acked.places.saturating_sub(places);
    }
    if more > 0 {
        eprintln!(
            "    MISMATCH (store, {event}): {taken} places in the shard values, {} acknowledged, {over} past a shard's capacity",
            acked.places
        );
    }
    bad += more;
    Ok(bad)
}

/// The shard capacities of a pool, from its record in the store.
async fn shard_capacity(inv: &Inv, event: &EventId, pool: &PoolId) -> anyhow::Result<Vec<u32>> {
    let trx = inv.store().create_trx()?;
    let record = trx.get(&inv.keys().pool(event, pool), true).await?.context("pool record")?;
    let record: PoolRecord = values::decode(&record)?;
    Ok(record.shard_capacity)
}

/// The seats of a contended event: one section of `seats / 25` rows.
fn contended_seat_names(seats: u32) -> Vec<String> {
    (0..seats).map(seat_name).collect()
}

/// One contended round on the store: see `PgBench::contended` for the same on PostgreSQL.
async fn embedded_contended(args: &Args, inv: &Inv, round: usize) -> anyhow::Result<pg::Contended> {
    let id = format!("contended-{round}");
    let rows = (args.contended_seats / u32::from(SEATS_PER_ROW)) as u16;
    create(inv, event_spec(&id, 1, rows, Some(("SMALL", args.contended_places)))).await?;
    let event = EventId::parse(&id)?;
    let pool = PoolId::parse("SMALL")?;
    let seats: Arc<Vec<SeatId>> = Arc::new(
        contended_seat_names(args.contended_seats)
            .iter()
            .map(|s| SeatId::parse(s))
            .collect::<Result<_, _>>()?,
    );
    let clients = args.contended_clients;
    let gate = Arc::new(tokio::sync::Barrier::new(clients));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (inv, event, pool, seats, gate) =
            (inv.clone(), event.clone(), pool.clone(), seats.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            // What this client was told, kept whatever happens after.
            let mut acked = Acked::default();
            let mut refused = 0u64;
            let mut mine: Vec<usize> = (0..seats.len()).collect();
            pg::shuffle(&mut mine, (round * 1_000_003 + c) as u64);
            let mut i = 0;
            let mut who = || {
                i += 1;
                CustomerId::parse(&format!("k{round}-{c}-{i}")).unwrap()
            };
            gate.wait().await;
            for s in mine {
                match inv.hold(&event, &who(), &HoldSpec::Seats(vec![seats[s].clone()]), None).await
                {
                    Ok(mut h) => {
                        if let Some(seat) = h.seats.pop() {
                            acked.seats.push((seat, h.hold_id.to_string()));
                        }
                        break;
                    }
                    Err(InventoryError::SeatHeld(_) | InventoryError::SeatSold(_)) => refused += 1,
                    Err(e) => return (acked, refused, Some(format!("seat hold failed: {e:#}"))),
                }
            }
            loop {
                let spec = HoldSpec::General { pool: pool.clone(), quantity: 1 + (c % 2) as u32 };
                match inv.hold(&event, &who(), &spec, None).await {
                    Ok(h) => acked.places += u64::from(h.quantity),
                    Err(InventoryError::SoldOut { .. }) => {
                        refused += 1;
                        break;
                    }
                    Err(e) => return (acked, refused, Some(format!("pool hold failed: {e:#}"))),
                }
            }
            (acked, refused, None)
        }));
    }
    let mut acked = Acked::default();
    let mut out = pg::Contended::default();
    for t in tasks {
        let (a, r, error) = t.await?;
        acked.merge(a);
        out.refused += r;
        if let Some(e) = error {
            eprintln!("    contended {e}");
            out.errors += 1;
        }
    }
    out.elapsed = started.elapsed();
    out.seat_holds = acked.seats.len() as u64;
    out.places = acked.places;
    let capacity = Some((u64::from(args.contended_seats), u64::from(args.contended_places)));
    out.oversold = recount_embedded(inv, &event, &pool, &acked, capacity).await?;
    Ok(out)
}

/// Open loop on the store: a fresh event sized for the run, `rate_per_s` holds offered.
async fn embedded_open(
    inv: &Inv,
    workload: Workload,
    rate_per_s: f64,
    seconds: u64,
    tag: &str,
) -> anyhow::Result<(OpenLoopResult, u64)> {
    let total = (rate_per_s * seconds as f64).ceil() as u64;
    let id = format!("open-{}-{tag}", workload.name());
    let pool = PoolId::parse("OPEN")?;
    let (spec, requests): (CreateEvent, Vec<HoldSpec>) = match workload {
        Workload::Uniform => {
            let seats = (total + total / 20 + 1000).min(EVENT_CAPACITY_MAX);
            let sections = seats.div_ceil(1000) as u32;
            let order = permutation(sections * 1000);
            let requests = order
                .iter()
                .take(total as usize)
                .map(|n| HoldSpec::Seats(vec![SeatId::parse(&seat_name(*n)).unwrap()]))
                .collect();
            (event_spec(&id, sections, ROWS, None), requests)
        }
        Workload::Ga => {
            let places = (total * 2 + 1000).min(EVENT_CAPACITY_MAX) as u32;
            let requests = (0..total)
                .map(|i| HoldSpec::General { pool: pool.clone(), quantity: 1 + (i % 2) as u32 })
                .collect();
            (event_spec(&id, 0, ROWS, Some(("OPEN", places))), requests)
        }
    };
    create(inv, spec).await?;
    let event = EventId::parse(&id)?;
    let requests: Arc<Vec<(HoldSpec, CustomerId)>> = Arc::new(
        requests
            .into_iter()
            .enumerate()
            .map(|(i, s)| (s, CustomerId::parse(&format!("o{tag}-{i}")).unwrap()))
            .collect(),
    );
    settle_disk();
    let acked = Arc::new(parking_lot::Mutex::new(Acked::default()));
    let result = open_loop::run(rate_per_s, seconds, 200_000, |i| {
        let (inv, event, requests, acked) =
            (inv.clone(), event.clone(), requests.clone(), acked.clone());
        async move {
            let Some((spec, who)) = requests.get(i as usize) else { return Outcome::Error };
            match inv.hold(&event, who, spec, None).await {
                Ok(mut h) => {
                    let mut a = acked.lock();
                    if h.pool.is_some() {
                        a.places += u64::from(h.quantity);
                    } else if let Some(s) = h.seats.pop() {
                        a.seats.push((s, h.hold_id.to_string()));
                    }
                    Outcome::Held
                }
                Err(e) if e.is_client_error() => Outcome::Refused,
                Err(e) => {
                    eprintln!("    hold failed: {e:#}");
                    Outcome::Error
                }
            }
        }
    })
    .await?;
    let acked = std::mem::take(&mut *acked.lock());
    let oversold = recount_embedded(inv, &event, &pool, &acked, None).await?;
    Ok((result, oversold))
}

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

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Benchmarks write where the repository's `target/` is (a real disk), not to tmpfs.
fn bench_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::current_dir()?.join("target").join("bench");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn main() {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if e.use_stderr() => {
            // One line: what was wrong. `--help` says the rest.
            let text = e.render().to_string();
            eprintln!("{}", text.lines().next().unwrap_or("invalid arguments"));
            std::process::exit(2);
        }
        Err(e) => e.exit(),
    };
    if let Err(why) = args.validate() {
        eprintln!("error: {why}");
        std::process::exit(2);
    }
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
    match bench(args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn bench(args: Args) -> anyhow::Result<bool> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // One core is left to the store's syncer thread (fdatasync, page write-back) and the
    // kernel; the rest run the request tasks, whose first committer in a batch resolves it.
    // `--worker-threads` overrides this.
    let workers = args.worker_threads.unwrap_or(cores.saturating_sub(1).max(1));
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?;
    let base = bench_dir()?;
    // Dropped last: unmounted after every file on it is closed.
    let journaled = match args.disk.as_str() {
        "journaled" => {
            eprintln!("==> mounting a journaled ext4 image ({} GiB, sparse)", args.disk_image_gib);
            Some(disk::JournaledDisk::mount(&base, args.disk_image_gib)?)
        }
        _ => None,
    };
    let (root, disk_name) = match &journaled {
        Some(d) => {
            eprintln!("    {}", d.describe());
            (d.mount.clone(), "ext4-journal-ordered-loop")
        }
        None => (base, "default"),
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = run_all(&args, &root, cores, workers, disk_name) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Everything the run started (PostgreSQL, the store's threads) is stopped before the
    // disk goes away.
    drop(rt);
    drop(journaled);
    result
}

async fn run_all(
    args: &Args,
    root: &Path,
    cores: usize,
    workers: usize,
    disk_name: &str,
) -> anyhow::Result<bool> {
    let dir = tempfile::Builder::new().prefix("tessera-bench-inventory").tempdir_in(root)?;
    let seats = args.sections * 1000;
    println!(
        "inventory benchmark: {seats} seats, {GA_CAPACITY}-place pool, {} s per workload, {cores} cores, {workers} request worker thread(s), {} clients on seats, {} on the pool, disk {disk_name}",
        args.seconds, args.clients, args.ga_clients
    );
    // Start from a quiet disk: the build that precedes a benchmark leaves hundreds of
    // megabytes being written back, which would slow the first fsyncs measured.
    settle_disk();
    if args.warmup_seconds > 0 {
        // A short unmeasured run in a scratch store first: a freshly built machine (page
        // cache, memory compaction, CPU clocks) runs the first seconds slower.
        eprintln!("==> warm-up ({} s, not counted)", args.warmup_seconds);
        let scratch = tempfile::Builder::new().prefix("warmup").tempdir_in(dir.path())?;
        let warm = Args { seconds: args.warmup_seconds, sections: 50, ..args.clone() };
        let inv = open_inventory(&warm, scratch.path())?;
        let (wu, wg, _) = embedded_closed(&warm, &inv).await?;
        eprintln!("    warm-up: {:.0} / {:.0} holds/s", wu.per_s(), wg.per_s());
    }
    eprintln!("==> embedded store (durable, group commit)");
    let inv = open_inventory(args, dir.path())?;
    let (eu, eg, e_over) = embedded_closed(args, &inv).await?;
    print_row("tessera embedded", "uniform", &eu);
    print_row("tessera embedded", "ga", &eg);
    let mut kv = vec![
        format!("disk={disk_name}"),
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
    let mut ok = true;
    let mut oversold = e_over;

    // Contended rounds on the store.
    let mut contended_oversold = 0u64;
    let mut contended_errors = 0u64;
    let mut contended_shards = Vec::new();
    for round in 0..args.contended_rounds {
        eprintln!(
            "==> contended round {}: {} clients race for {} seats and {} places",
            round + 1,
            args.contended_clients,
            args.contended_seats,
            args.contended_places
        );
        let c = embedded_contended(args, &inv, round).await?;
        print_contended("tessera embedded", round, &c);
        contended_oversold += c.oversold;
        contended_errors += c.errors;
        if contended_shards.is_empty() {
            contended_shards = shard_capacity(
                &inv,
                &EventId::parse(&format!("contended-{round}"))?,
                &PoolId::parse("SMALL")?,
            )
            .await?;
        }
    }

    // Open loop on the store, at fractions of the peak just measured.
    if args.open_loop_seconds > 0 {
        for &load in &args.open_loop_loads {
            for (w, peak) in [(Workload::Uniform, eu.per_s()), (Workload::Ga, eg.per_s())] {
                let rate = peak * load;
                eprintln!(
                    "==> embedded {} open loop: {rate:.0} holds/s offered ({:.0} % of {peak:.0})",
                    w.name(),
                    load * 100.0
                );
                let tag = format!("{:.0}", load * 100.0);
                let (r, over) = embedded_open(&inv, w, rate, args.open_loop_seconds, &tag).await?;
                open_loop::print_row("tessera embedded", w.name(), load, &r);
                oversold += over;
                ok &= r.errors == 0 && r.shed == 0;
                push_open(&mut kv, &format!("embedded_{}_open{tag}", w.name()), &r);
            }
        }
    }
    let pool_shards = shard_capacity(&inv, &EventId::parse(EVENT)?, &PoolId::parse(POOL)?).await?;
    drop(inv);

    if !args.skip_pg {
        settle_disk();
        eprintln!("==> PostgreSQL");
        let venue = pg::seat_names(&permutation(seats));
        let pgb = PgBench::setup(dir.path(), venue, &pool_shards).await?;
        let mut designs = vec![Design::SkipLocked, Design::Best];
        if args.pg_commit_delay_us > 0 {
            designs.push(Design::BestDelayed {
                commit_delay_us: args.pg_commit_delay_us,
                commit_siblings: args.pg_commit_siblings,
            });
        }
        // (design, workload) -> best result.
        let mut best: HashMap<(String, Workload), (Design, Result_)> = HashMap::new();
        for &design in &designs {
            eprintln!("==> {}", design.label());
            if args.warmup_seconds > 0 {
                pgb.warm_up(design, args.pg_clients[0], args.warmup_seconds).await?;
            }
            for &clients in &args.pg_clients {
                for w in [Workload::Uniform, Workload::Ga] {
                    let (r, over) = pgb.closed(design, w, clients, args.seconds).await?;
                    print_row(&design.label(), w.name(), &r);
                    oversold += over;
                    let slot =
                        best.entry((design.label(), w)).or_insert((design, Result_::default()));
                    if r.per_s() > slot.1.per_s() {
                        *slot = (design, r);
                    }
                }
            }
        }
        let get = |d: Design, w: Workload| {
            best.get(&(d.label(), w)).map(|(_, r)| r.clone()).unwrap_or_default()
        };
        let best_of = |w: Workload| {
            designs
                .iter()
                .filter(|d| **d != Design::SkipLocked)
                .map(|d| (*d, get(*d, w)))
                .max_by(|a, b| a.1.per_s().total_cmp(&b.1.per_s()))
                .unwrap_or((Design::Best, Result_::default()))
        };
        let (pu, pga) =
            (get(Design::SkipLocked, Workload::Uniform), get(Design::SkipLocked, Workload::Ga));
        let (bu_design, bu) = best_of(Workload::Uniform);
        let (bg_design, bg) = best_of(Workload::Ga);
        kv.push(format!("pg_uniform_holds_per_s={:.0}", pu.per_s()));
        kv.push(format!("pg_uniform_p99_ms={:.2}", pu.p99_ms));
        kv.push(format!("pg_ga_holds_per_s={:.0}", pga.per_s()));
        kv.push(format!("pg_ga_p99_ms={:.2}", pga.p99_ms));
        kv.push(format!("ratio_uniform={:.1}", eu.per_s() / pu.per_s().max(1e-9)));
        kv.push(format!("ratio_ga={:.1}", eg.per_s() / pga.per_s().max(1e-9)));
        for d in designs.iter().filter(|d| **d != Design::SkipLocked) {
            let name = match d {
                Design::BestDelayed { .. } => "pg_best_delay",
                _ => "pg_best_plain",
            };
            kv.push(format!(
                "{name}_uniform_holds_per_s={:.0}",
                get(*d, Workload::Uniform).per_s()
            ));
            kv.push(format!("{name}_ga_holds_per_s={:.0}", get(*d, Workload::Ga).per_s()));
        }
        kv.push(format!("pg_best_uniform_holds_per_s={:.0}", bu.per_s()));
        kv.push(format!("pg_best_uniform_clients={}", bu.clients));
        kv.push(format!("pg_best_uniform_p99_ms={:.2}", bu.p99_ms));
        kv.push(format!("pg_best_ga_holds_per_s={:.0}", bg.per_s()));
        kv.push(format!("pg_best_ga_clients={}", bg.clients));
        kv.push(format!("pg_best_ga_p99_ms={:.2}", bg.p99_ms));
        let ratio_u = eu.per_s() / bu.per_s().max(1e-9);
        let ratio_g = eg.per_s() / bg.per_s().max(1e-9);
        kv.push(format!("ratio_best_uniform={ratio_u:.1}"));
        kv.push(format!("ratio_best_ga={ratio_g:.1}"));
        if ratio_u < 5.0 || ratio_g < 5.0 {
            eprintln!(
                "FLOOR MISSED: the store must do at least 5x the best PostgreSQL design (uniform {ratio_u:.1}x, ga {ratio_g:.1}x)"
            );
            ok = false;
        }

        // Contended rounds on both PostgreSQL designs.
        let seat_list = contended_seat_names(args.contended_seats);
        for design in [Design::SkipLocked, bu_design] {
            for round in 0..args.contended_rounds {
                let c = pgb
                    .contended(design, round, args.contended_clients, &seat_list, &contended_shards)
                    .await?;
                print_contended(&design.label(), round, &c);
                contended_oversold += c.oversold;
                contended_errors += c.errors;
            }
        }

        // Open loop on the best design, at its best connection count.
        if args.open_loop_seconds > 0 {
            for &load in &args.open_loop_loads {
                for (w, design, r) in
                    [(Workload::Uniform, bu_design, &bu), (Workload::Ga, bg_design, &bg)]
                {
                    let rate = r.per_s() * load;
                    eprintln!(
                        "==> {} {} open loop: {rate:.0} holds/s offered to {} connections",
                        design.label(),
                        w.name(),
                        r.clients
                    );
                    let (o, over) =
                        pgb.open(design, w, r.clients, rate, args.open_loop_seconds).await?;
                    open_loop::print_row(&design.label(), w.name(), load, &o);
                    oversold += over;
                    ok &= o.errors == 0 && o.shed == 0;
                    push_open(
                        &mut kv,
                        &format!("pg_best_{}_open{:.0}", w.name(), load * 100.0),
                        &o,
                    );
                }
            }
        }
    }
    kv.push(format!("contended_rounds={}", args.contended_rounds));
    kv.push(format!("contended_errors={contended_errors}"));
    kv.push(format!("contended_oversold={contended_oversold}"));
    kv.push(format!("oversold={oversold}"));
    println!("{}", kv.join(" "));
    if oversold + contended_oversold > 0 {
        eprintln!(
            "INVARIANT BROKEN: the recount found {oversold} + {contended_oversold} (contended) discrepancies"
        );
        ok = false;
    }
    if contended_errors > 0 {
        eprintln!("{contended_errors} contended clients failed");
        ok = false;
    }
    Ok(ok)
}

fn push_open(kv: &mut Vec<String>, prefix: &str, r: &OpenLoopResult) {
    kv.push(format!("{prefix}_offered_per_s={:.0}", r.offered_per_s));
    kv.push(format!("{prefix}_p50_ms={:.2}", r.p50_ms));
    kv.push(format!("{prefix}_p99_ms={:.2}", r.p99_ms));
    kv.push(format!("{prefix}_p999_ms={:.2}", r.p999_ms));
}

fn print_contended(system: &str, round: usize, c: &pg::Contended) {
    println!(
        "{system:<22} contended round {round}: {} seat holds, {} places, {} refused, {} errors in {:.0?}, oversold={}",
        c.seat_holds, c.places, c.refused, c.errors, c.elapsed, c.oversold
    );
}
