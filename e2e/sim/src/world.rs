//! The simulated world: one store, one payment provider, several regions (each an
//! `Inventory` + `Orders` over the shared store, with its sweeper and reconciler), the fans'
//! and operators' tasks, and the journal of what they were told.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tessera_api::orders::OrderState;
use tessera_api::{CustomerId, HoldId, OrderId, RegionId, TicketId};
use tessera_common::SeededRng;
use tessera_fdb_schema::Keyspace;
use tessera_inventory::{Inventory, InventoryConfig};
use tessera_orders::{Orders, OrdersConfig, TicketKeys};
use tessera_store::memory::MemoryStore;
use tessera_store_testkit::faults::FaultyStore;
use tokio::task::{AbortHandle, JoinHandle};

use crate::provider::SimProvider;
use crate::sched::{Sched, SimStore, as_actor};
use crate::util::{derive, panic_text};
use crate::venue::Venue;

/// The store every region shares.
pub type SimStoreT = SimStore<FaultyStore<MemoryStore>>;
/// One region's orders service (its inventory is `orders.inventory()`).
pub type SimOrders = Orders<SimStoreT>;

/// The names regions get, in order.
const REGION_NAMES: [&str; 4] = ["us-east", "eu-west", "ap-south", "sa-east"];

/// An invariant that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Short name of the invariant (stable; tests match on it).
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

/// Why a request to a region got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// The region is down; the request was not sent.
    RegionDown,
    /// The region died while handling the request.
    RegionDied,
    /// The handler panicked (recorded as a violation).
    Panicked,
}

/// What fans, operators and gates were told. Acknowledged outcomes must survive everything.
#[derive(Debug, Default)]
pub struct Journal {
    /// Holds acknowledged to their fan.
    pub holds: Vec<(HoldId, CustomerId)>,
    /// Releases acknowledged.
    pub releases: Vec<HoldId>,
    /// Checkout answers: (customer, idempotency key) → order ids and states seen.
    pub checkouts: BTreeMap<(CustomerId, String), Vec<(OrderId, OrderState)>>,
    /// Orders whose checkout was refused as declined.
    pub declined: Vec<OrderId>,
    /// Completed orders as their fan saw them, with their tickets' QR codes.
    pub completed: BTreeMap<OrderId, Vec<(TicketId, String)>>,
    /// Orders an operator asked to refund, and those whose refund was acknowledged.
    pub refund_requests: Vec<OrderId>,
    pub refunds: Vec<OrderId>,
    /// Tickets admitted at a gate: (ticket, gate, admitted at).
    pub admissions: Vec<(TicketId, String, u64)>,
    /// Refusals by error code, for the report.
    pub refusals: BTreeMap<String, u64>,
}

impl Journal {
    pub fn refused(&mut self, code: impl Into<String>) {
        *self.refusals.entry(code.into()).or_default() += 1;
    }
}

/// How often the background work of a region runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RegionTimers {
    pub(crate) sweep_every: Duration,
    pub(crate) reconcile_every: Duration,
}

#[derive(Default)]
struct RegionState {
    alive: bool,
    incarnation: u64,
    orders: Option<SimOrders>,
    requests: Vec<AbortHandle>,
    loops: Vec<JoinHandle<()>>,
}

/// The simulated world.
pub struct World {
    pub seed: u64,
    pub sched: Arc<Sched>,
    pub store: SimStoreT,
    pub raw: MemoryStore,
    pub keys: Keyspace,
    pub provider: Arc<SimProvider>,
    pub venue: Venue,
    pub journal: Mutex<Journal>,
    pub(crate) faulty: FaultyStore<MemoryStore>,
    tickets: TicketKeys,
    timers: RegionTimers,
    region_ids: Vec<RegionId>,
    regions: Vec<Mutex<RegionState>>,
    next_actor: Arc<AtomicU64>,
    violations: Mutex<Vec<Violation>>,
    fans: Mutex<Vec<JoinHandle<()>>>,
    /// Tasks whose panics must be looked for at the end (faults, loops of dead regions).
    watched: Mutex<Vec<JoinHandle<()>>>,
    kills: AtomicU64,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").field("seed", &self.seed).finish_non_exhaustive()
    }
}

impl World {
    #[allow(clippy::too_many_arguments, reason = "built in one place, by the scenario")]
    pub(crate) fn new(
        seed: u64,
        sched: Arc<Sched>,
        faulty: FaultyStore<MemoryStore>,
        raw: MemoryStore,
        provider: Arc<SimProvider>,
        next_actor: Arc<AtomicU64>,
        venue: Venue,
        regions: usize,
        timers: RegionTimers,
    ) -> World {
        let signing = tessera_identity::SigningKeyPair::derive_for_development("sim", "tickets");
        let tickets =
            TicketKeys { verifying: tessera_identity::Keyset::new([signing.public()]), signing };
        World {
            seed,
            store: SimStore::new(faulty.clone(), sched.clone()),
            sched,
            raw,
            keys: Keyspace::production(),
            provider,
            venue,
            journal: Mutex::new(Journal::default()),
            faulty,
            tickets,
            timers,
            region_ids: REGION_NAMES
                .iter()
                .take(regions.clamp(1, REGION_NAMES.len()))
                .map(|n| RegionId::parse(n).expect("a valid region id"))
                .collect(),
            regions: (0..regions.clamp(1, REGION_NAMES.len()))
                .map(|_| Mutex::new(RegionState::default()))
                .collect(),
            next_actor,
            violations: Mutex::new(Vec::new()),
            fans: Mutex::new(Vec::new()),
            watched: Mutex::new(Vec::new()),
            kills: AtomicU64::new(0),
        }
    }

    /// Records a violated invariant.
    pub fn violation(&self, invariant: &'static str, detail: impl Into<String>) {
        self.violations.lock().push(Violation { invariant, detail: detail.into() });
    }

    pub(crate) fn take_violations(&self) -> Vec<Violation> {
        std::mem::take(&mut *self.violations.lock())
    }

    /// Virtual wall-clock time now.
    pub fn now_ms(&self) -> u64 {
        use tessera_common::Clock as _;
        self.sched.clock().now_ms()
    }

    pub fn regions(&self) -> usize {
        self.regions.len()
    }

    pub fn region_id(&self, i: usize) -> &RegionId {
        &self.region_ids[i]
    }

    /// Regions that are up now.
    pub fn alive_regions(&self) -> Vec<usize> {
        (0..self.regions.len()).filter(|i| self.regions[*i].lock().alive).collect()
    }

    pub fn kills(&self) -> u64 {
        self.kills.load(Ordering::Relaxed)
    }

    pub(crate) fn next_actor(&self) -> u64 {
        self.next_actor.fetch_add(1, Ordering::Relaxed)
    }

    /// Spawns a task with its own actor id (its place at the gate).
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(as_actor(self.next_actor(), fut))
    }

    /// Spawns a fan, operator or gate task: the scenario waits for these to end.
    pub fn spawn_client<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let h = self.spawn(fut);
        self.fans.lock().push(h);
    }

    /// Spawns a task whose panic the scenario reports (fault injectors).
    pub(crate) fn spawn_watched<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let h = self.spawn(fut);
        self.watched.lock().push(h);
    }

    pub(crate) fn take_clients(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *self.fans.lock())
    }

    /// Sends a request to region `i`: `f` runs there as a task of the region, so it dies
    /// with the region.
    pub async fn call<T, F, Fut>(&self, i: usize, f: F) -> Result<T, CallError>
    where
        F: FnOnce(SimOrders) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let orders = {
            let st = self.regions[i].lock();
            match (&st.orders, st.alive) {
                (Some(o), true) => o.clone(),
                _ => return Err(CallError::RegionDown),
            }
        };
        let handle = self.spawn(f(orders));
        {
            let mut st = self.regions[i].lock();
            st.requests.retain(|h| !h.is_finished());
            st.requests.push(handle.abort_handle());
        }
        match handle.await {
            Ok(v) => Ok(v),
            Err(e) if e.is_cancelled() => Err(CallError::RegionDied),
            Err(e) => {
                let text = panic_text(e.into_panic());
                self.violation(
                    "no panics",
                    format!("a request in {} panicked: {text}", self.region_ids[i]),
                );
                Err(CallError::Panicked)
            }
        }
    }

    /// Starts (or restarts) region `i`: a fresh `Inventory` and `Orders` over the shared
    /// store, and its sweeper and reconciler.
    pub(crate) fn start_region(self: &Arc<Self>, i: usize) {
        let mut st = self.regions[i].lock();
        if st.alive {
            return;
        }
        st.incarnation += 1;
        tracing::info!(target: "sim.world", at_ms = self.sched.elapsed_ms(), "region {} starts (incarnation {})", self.region_ids[i], st.incarnation);
        let region = self.region_ids[i].clone();
        let clock = self.sched.clock();
        let inv = Inventory::new(
            self.store.clone(),
            self.keys.clone(),
            clock.clone(),
            SeededRng::new(derive(self.seed, "inventory", i as u64, st.incarnation)),
            InventoryConfig::new(region.clone()),
        );
        let orders = Orders::new(
            inv,
            Arc::new(self.provider.client()),
            self.tickets.clone(),
            clock,
            SeededRng::new(derive(self.seed, "orders", i as u64, st.incarnation)),
            // Like the core process: one driver name per process instance.
            OrdersConfig::new(format!("{region}-{:04}", st.incarnation)),
        );
        let timers = self.timers;
        let o = orders.clone();
        let sweeper = self.spawn(async move {
            loop {
                tokio::time::sleep(timers.sweep_every).await;
                let _ = o.inventory().sweep(1_000).await;
            }
        });
        let o = orders.clone();
        let reconciler = self.spawn(async move {
            loop {
                tokio::time::sleep(timers.reconcile_every).await;
                let _ = o.reconcile(200).await;
            }
        });
        st.orders = Some(orders);
        st.alive = true;
        st.loops = vec![sweeper, reconciler];
    }

    /// Kills region `i`: every task of it stops where it is.
    pub(crate) fn kill_region(&self, i: usize) {
        let mut st = self.regions[i].lock();
        if !st.alive {
            return;
        }
        self.kills.fetch_add(1, Ordering::Relaxed);
        tracing::info!(target: "sim.world", at_ms = self.sched.elapsed_ms(), "region {} dies", self.region_ids[i]);
        st.alive = false;
        st.orders = None;
        for h in st.requests.drain(..) {
            h.abort();
        }
        for h in st.loops.drain(..) {
            h.abort();
            self.watched.lock().push(h);
        }
    }

    /// Stops every region's background work (before the final settling).
    pub(crate) fn stop_loops(&self) {
        for r in &self.regions {
            let mut st = r.lock();
            for h in st.loops.drain(..) {
                h.abort();
                self.watched.lock().push(h);
            }
        }
    }

    /// The orders service of an up region.
    pub fn orders_of(&self, i: usize) -> Option<SimOrders> {
        let st = self.regions[i].lock();
        if st.alive { st.orders.clone() } else { None }
    }

    /// Reports panics of watched tasks that ended.
    pub(crate) async fn reap_watched(&self) {
        let watched = std::mem::take(&mut *self.watched.lock());
        for h in watched {
            h.abort();
            if let Err(e) = h.await
                && e.is_panic()
            {
                let text = panic_text(e.into_panic());
                self.violation("no panics", format!("a background task panicked: {text}"));
            }
        }
    }

    /// Store faults injected so far.
    pub fn store_faults(&self) -> u64 {
        self.faulty.injected()
    }
}

/// Picks an up region with `rng`, waiting while none is up. Gives up (None) after a while.
pub async fn pick_region(w: &World, rng: &SeededRng) -> Option<usize> {
    use tessera_common::Rng as _;
    for _ in 0..60 {
        let alive = w.alive_regions();
        if !alive.is_empty() {
            return Some(alive[rng.below(alive.len() as u64) as usize]);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    None
}
