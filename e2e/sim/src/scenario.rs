//! [`Scenario`]: workloads and faults over one seeded world, run to quiescence and checked.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use sha2::Digest as _;
use tessera_api::inventory::HoldSpec;
use tessera_api::{CustomerId, EventId, PoolId, RegionId};
use tessera_common::{ManualClock, SeededRng};
use tessera_fdb_schema::Keyspace;
use tessera_inventory::{Inventory, InventoryConfig, InventoryError};
use tessera_store::memory::MemoryStore;
use tessera_store_testkit::faults::{FaultPlan, FaultyStore};

use crate::check::{self, Snapshot};
use crate::provider::{ProviderPlan, SimProvider};
use crate::sched::Sched;
use crate::util::{derive, secs};
use crate::venue::{GA_SHARD_PERIOD, Venue};
use crate::world::{RegionTimers, Violation, World};

/// Wall-clock time at the start of every run.
pub const T0_MS: u64 = 1_900_000_000_000;
/// Length of a quantum. Longer than the store's longest retry backoff (50 ms × 1.5).
const QUANTUM: Duration = Duration::from_millis(100);
/// Bound on the run phase; clients still running after it are stopped.
const RUN_PHASE_MAX: Duration = Duration::from_secs(45 * 60);
/// The inventory's payment window (`InventoryConfig::new`), after which frozen holds end.
const PAYMENT_WINDOW: Duration = Duration::from_secs(10 * 60);

/// A workload: sets the world up, starts its clients, and checks what they were told.
#[async_trait::async_trait]
pub trait Workload: Send + Sync {
    fn name(&self) -> String;
    /// Runs once the event exists, before any client starts.
    async fn setup(&self, _world: &Arc<World>) -> anyhow::Result<()> {
        Ok(())
    }
    /// Spawns the workload's clients (`World::spawn_client`).
    fn start(&self, world: &Arc<World>);
    /// Checks, after quiescence, what only this workload knows (its journal entries).
    fn check(&self, world: &World, snapshot: &Snapshot, out: &mut Vec<Violation>);
}

/// What faults change before the world is built.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plan {
    pub store: FaultPlan,
    pub provider: ProviderPlan,
}

/// A fault: configures the store and provider, and may run an injector task.
pub trait Fault: Send + Sync {
    fn name(&self) -> String;
    fn configure(&self, _plan: &mut Plan) {}
    /// Spawns the injector (`World::spawn_watched`), if the fault has one.
    fn start(&self, _world: &Arc<World>) {}
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    /// SHA-256 of the final store, the provider's ledger and the run's counters.
    pub digest: String,
    pub holds: usize,
    pub orders: usize,
    pub completed: usize,
    pub refunded: usize,
    /// Payments captured.
    pub charges: usize,
    pub admissions: usize,
    pub store_faults: u64,
    pub provider_faults: u64,
    pub kills: u64,
    pub commits: u64,
    pub conflicts: u64,
    pub virtual_ms: u64,
    /// Refusals the clients got, by operation and error code.
    pub refusals: std::collections::BTreeMap<String, u64>,
    /// Gate entries whose order the scheduler could not control (should be 0).
    pub unordered: u64,
    pub workloads: Vec<String>,
    pub faults: Vec<String>,
    /// Invariants broken in ways no known issue explains.
    pub violations: Vec<Violation>,
    /// Invariants broken by known, unfixed bugs ([`crate::KNOWN_ISSUES`]).
    pub known: Vec<(&'static str, Violation)>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed={} holds={} orders={} completed={} refunded={} charges={} admissions={} \
             store_faults={} provider_faults={} kills={} commits={} conflicts={} virtual_s={} \
             known={} digest={} faults=[{}]",
            self.seed,
            self.holds,
            self.orders,
            self.completed,
            self.refunded,
            self.charges,
            self.admissions,
            self.store_faults,
            self.provider_faults,
            self.kills,
            self.commits,
            self.conflicts,
            self.virtual_ms / 1000,
            self.known.len(),
            &self.digest[..16.min(self.digest.len())],
            self.faults.join(","),
        )
    }
}

/// A run that broke an invariant (or could not run).
#[derive(Debug)]
pub struct SimError {
    pub seed: u64,
    pub report: Option<Box<Report>>,
    pub violations: Vec<Violation>,
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seed={} broke {} invariant(s)", self.seed, self.violations.len())?;
        for v in self.violations.iter().take(12) {
            write!(f, "\n  {v}")?;
        }
        if self.violations.len() > 12 {
            write!(f, "\n  ... and {} more", self.violations.len() - 12)?;
        }
        Ok(())
    }
}

impl std::error::Error for SimError {}

/// A change made to the raw store after quiescence, before the checks: how tests show that
/// the checks catch a broken invariant.
pub type Tamper = Box<
    dyn FnOnce(
            MemoryStore,
            Keyspace,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send,
>;

/// One seeded run: workloads and faults over a fresh world.
pub struct Scenario {
    seed: u64,
    regions: usize,
    workloads: Vec<Box<dyn Workload>>,
    faults: Vec<Box<dyn Fault>>,
    yield_ppm: u64,
    strict: bool,
    tamper: Option<Tamper>,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("seed", &self.seed)
            .field("regions", &self.regions)
            .field("workloads", &self.workloads.iter().map(|w| w.name()).collect::<Vec<_>>())
            .field("faults", &self.faults.iter().map(|w| w.name()).collect::<Vec<_>>())
            .finish()
    }
}

/// Only one scenario runs at a time in a process: the inventory keeps process-wide state
/// (a shard rotation counter, record caches) that a concurrent run would disturb.
static ONE_AT_A_TIME: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

impl Scenario {
    pub fn new(seed: u64) -> Self {
        Scenario {
            seed,
            regions: 3,
            workloads: Vec::new(),
            faults: Vec::new(),
            yield_ppm: 400_000,
            strict: false,
            tamper: None,
        }
    }

    /// Breaks the raw store on purpose after quiescence (to test the checks).
    pub fn tamper(mut self, f: Tamper) -> Self {
        self.tamper = Some(f);
        self
    }

    /// Fails the run on known issues too.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// How many regions serve (default 3).
    pub fn regions(mut self, n: usize) -> Self {
        self.regions = n.max(1);
        self
    }

    pub fn workload(mut self, w: impl Workload + 'static) -> Self {
        self.workloads.push(Box::new(w));
        self
    }

    pub fn fault(mut self, f: impl Fault + 'static) -> Self {
        self.faults.push(Box::new(f));
        self
    }

    /// Runs the scenario to quiescence and checks every invariant. Errors list the
    /// violations; the report is returned either way inside the error.
    pub fn run(self) -> Result<Report, SimError> {
        let _one = ONE_AT_A_TIME.lock();
        let seed = self.seed;
        let strict = self.strict;
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                return Err(SimError {
                    seed,
                    report: None,
                    violations: vec![Violation {
                        invariant: "runs",
                        detail: format!("build the runtime: {e}"),
                    }],
                });
            }
        };
        let report = rt.block_on(self.run_inner());
        match report {
            Ok(r) if r.violations.is_empty() && (!strict || r.known.is_empty()) => Ok(r),
            Ok(r) => {
                let mut violations = r.violations.clone();
                if strict {
                    violations.extend(r.known.iter().map(|(_, v)| v.clone()));
                }
                Err(SimError { seed, violations, report: Some(Box::new(r)) })
            }
            Err(e) => Err(SimError {
                seed,
                report: None,
                violations: vec![Violation { invariant: "runs", detail: format!("{e:#}") }],
            }),
        }
    }

    async fn run_inner(mut self) -> anyhow::Result<Report> {
        align_ga_shard_rotation().await?;
        let seed = self.seed;
        let mut plan = Plan::default();
        for f in &self.faults {
            f.configure(&mut plan);
        }
        let sched =
            Arc::new(Sched::new(QUANTUM, T0_MS, derive(seed, "sched", 0, 0), self.yield_ppm));
        let ticker = tokio::spawn(sched.clone().run_ticker());
        let raw = MemoryStore::new();
        let faulty = FaultyStore::new(raw.clone(), plan.store, derive(seed, "store", 0, 0));
        let next_actor = Arc::new(AtomicU64::new(1));
        let provider = Arc::new(SimProvider::new(
            plan.provider,
            derive(seed, "provider", 0, 0),
            sched.clock(),
            next_actor.clone(),
        ));
        let venue = Venue::generate(seed);
        let timers = RegionTimers { sweep_every: secs(5), reconcile_every: secs(10) };
        let world = Arc::new(World::new(
            seed,
            sched.clone(),
            faulty,
            raw,
            provider.clone(),
            next_actor,
            venue,
            self.regions,
            timers,
        ));
        for i in 0..world.regions() {
            world.start_region(i);
        }

        // The operator creates the event.
        let w = world.clone();
        world
            .spawn(async move {
                let Some(orders) = w.orders_of(0) else { return };
                match orders.inventory().create_event(w.venue.create_event()).await {
                    Ok(_) => {}
                    Err(InventoryError::EventExists(id)) => {
                        // Nobody else creates this event: our own first attempt committed
                        // but its outcome was lost, and the retry mistook it for a clash.
                        w.violation(
                            "acknowledged outcomes are true",
                            format!("create_event answered EventExists for {id}, which it had just created itself"),
                        );
                    }
                    Err(e) => w.violation("runs", format!("create the event: {e}")),
                }
            })
            .await?;
        if world.orders_of(0).is_none() {
            anyhow::bail!("region 0 did not start");
        }
        for wl in &self.workloads {
            wl.setup(&world).await?;
        }
        for wl in &self.workloads {
            wl.start(&world);
        }
        for f in &self.faults {
            f.start(&world);
        }

        // Run: until every client is done.
        let deadline = tokio::time::Instant::now() + RUN_PHASE_MAX;
        loop {
            let clients = world.take_clients();
            if clients.is_empty() {
                break;
            }
            for h in clients {
                match tokio::time::timeout_at(deadline, h).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if e.is_panic() => {
                        let text = crate::util::panic_text(e.into_panic());
                        world.violation("no panics", format!("a client panicked: {text}"));
                    }
                    Ok(Err(_)) => {}
                    Err(_) => {
                        world.violation(
                            "liveness",
                            "clients were still running after 45 virtual minutes",
                        );
                        break;
                    }
                }
            }
        }
        let run_phase_ms = sched.elapsed_ms();

        // Quiescence: faults stop (the store's stay), every region comes back, time passes
        // beyond every hold and payment window, and the sweeper and reconciler run until
        // nothing is pending.
        world.reap_watched().await;
        let calm =
            ProviderPlan { decline_ppm: plan.provider.decline_ppm, ..ProviderPlan::default() };
        provider.set_plan(calm);
        for i in 0..world.regions() {
            world.start_region(i);
        }
        let longest_hold = Duration::from_secs(u64::from(world.venue.hold_ttl_s));
        tokio::time::sleep(PAYMENT_WINDOW.max(longest_hold) + secs(60)).await;
        world.stop_loops();
        let w = world.clone();
        // What settling leaves undone is reported record by record by the checks.
        world.spawn(async move { settle(&w).await }).await?;
        // Let provider requests still in flight finish.
        tokio::time::sleep(secs(60)).await;
        world.reap_watched().await;
        ticker.abort();
        if let Some(tamper) = self.tamper.take() {
            tamper(world.raw.clone(), world.keys.clone()).await;
        }

        let (snapshot, mut violations) = Snapshot::read(&world.raw).await;
        violations.extend(world.take_violations());
        let ledger = provider.ledger();
        check::check_all(&world, &snapshot, &ledger, &mut violations);
        for wl in &self.workloads {
            wl.check(&world, &snapshot, &mut violations);
        }

        let mut digest = sha2::Sha256::new();
        digest.update(&snapshot.digest);
        digest.update(format!("{:?}", ledger.payments).as_bytes());
        digest.update(format!("{:?}|{:?}", ledger.delivered, ledger.faults).as_bytes());
        {
            let j = world.journal.lock();
            digest.update(
                format!("{:?}|{:?}|{:?}|{:?}", j.checkouts, j.completed, j.admissions, j.refusals)
                    .as_bytes(),
            );
        }
        let commits = sched.stats.commits.load(std::sync::atomic::Ordering::Relaxed);
        digest.update(format!("{commits}|{}|{run_phase_ms}", sched.elapsed_ms()).as_bytes());

        let (known, violations): (Vec<_>, Vec<_>) =
            violations.into_iter().partition(|v| crate::known::known_issue(v).is_some());
        let known = known
            .into_iter()
            .map(|v| (crate::known::known_issue(&v).map_or("", |k| k.name), v))
            .collect();
        let j = world.journal.lock();
        Ok(Report {
            seed,
            digest: hex::encode(digest.finalize()),
            holds: snapshot.holds.len(),
            orders: snapshot.orders.len(),
            completed: snapshot
                .orders
                .values()
                .filter(|o| o.state == tessera_api::orders::OrderState::Completed)
                .count(),
            refunded: snapshot
                .orders
                .values()
                .filter(|o| o.state == tessera_api::orders::OrderState::Refunded)
                .count(),
            charges: ledger.payments.values().filter(|p| p.captures > 0).count(),
            admissions: j.admissions.len(),
            store_faults: world.store_faults(),
            provider_faults: ledger.faults.values().sum(),
            kills: world.kills(),
            commits,
            conflicts: sched.stats.conflicts.load(std::sync::atomic::Ordering::Relaxed),
            virtual_ms: sched.elapsed_ms(),
            refusals: j.refusals.clone(),
            unordered: sched.stats.anonymous.load(std::sync::atomic::Ordering::Relaxed)
                + sched.stats.duplicate_waiters.load(std::sync::atomic::Ordering::Relaxed),
            workloads: self.workloads.iter().map(|w| w.name()).collect(),
            faults: self.faults.iter().map(|f| f.name()).collect(),
            violations,
            known,
        })
    }
}

/// Runs the sweeper and the reconciler until no order is pending and no hold is live, for
/// a bounded number of rounds.
async fn settle(w: &World) {
    for _round in 0..40 {
        let Some(i) = w.alive_regions().first().copied() else { return };
        let Some(orders) = w.orders_of(i) else { continue };
        let _ = orders.inventory().sweep(100_000).await;
        let _ = orders.reconcile(100_000).await;
        let (pending, live, index) = check::unsettled(&w.raw, &w.keys).await;
        if pending == 0 && live == 0 && index == 0 {
            return;
        }
        // Leases of drivers that went away lapse after 15 s.
        tokio::time::sleep(secs(20)).await;
    }
}

/// Makes `take_general`'s process-wide shard rotation a multiple of [`GA_SHARD_PERIOD`], so
/// that general-admission holds pick the same shards on every run of a seed, whatever ran
/// before in this process. Learns the rotation from one hold on a scratch 12-shard pool and
/// then turns it to the next multiple.
async fn align_ga_shard_rotation() -> anyhow::Result<()> {
    use tessera_api::inventory::{CreateEvent, GaPoolSpec, Tier};
    let inv = Inventory::new(
        MemoryStore::new(),
        Keyspace::production(),
        ManualClock::new(T0_MS),
        SeededRng::new(0),
        InventoryConfig::new(RegionId::parse("sim-align")?),
    );
    let event = EventId::parse("sim-shard-alignment")?;
    let pool = PoolId::parse("ALIGN")?;
    inv.create_event(CreateEvent {
        event_id: event.clone(),
        name: "Shard alignment".into(),
        venue: "Nowhere".into(),
        starts_at: "2030-01-01T00:00:00Z".into(),
        on_sale_at: None,
        currency: "EUR".into(),
        max_tickets_per_customer: 1,
        hold_ttl_s: 60,
        tiers: vec![Tier { tier_id: "GA".into(), name: "GA".into(), price_minor: 1 }],
        sections: vec![],
        ga_pools: vec![GaPoolSpec {
            pool_id: pool.clone(),
            name: "Align".into(),
            tier: "GA".into(),
            capacity: 32 * GA_SHARD_PERIOD as u32 + 6,
        }],
        open_now: true,
    })
    .await?;
    let spec = HoldSpec::General { pool, quantity: 1 };
    let probe = inv.hold(&event, &CustomerId::parse("align-0")?, &spec, None).await?;
    let record = inv.hold_record(&probe.hold_id).await?;
    let shard = record.shard_takes.first().map_or(0, |t| u64::from(t.shard));
    let turns = (GA_SHARD_PERIOD - (shard + 1) % GA_SHARD_PERIOD) % GA_SHARD_PERIOD;
    for i in 0..turns {
        inv.hold(&event, &CustomerId::parse(&format!("align-{}", i + 1))?, &spec, None).await?;
    }
    Ok(())
}
