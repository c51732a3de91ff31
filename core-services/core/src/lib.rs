//! The core service process of one region.
//!
//! One process per region serves the region's HTTP API (catalog, holds, checkout, orders,
//! check-in, queue admission, operator control) over the one strongly consistent inventory
//! store every region shares, and runs the region's background work: the hold sweeper, the
//! order reconciler, the admission controller (one leader across regions, by lease), the
//! outbox relay to NATS and the heartbeats routers watch.
//!
//! The library is the process minus `main`: [`App::build`] wires it from a [`Config`] so
//! tests can run a whole core in-process, and [`http::router`] is the axum app.
//!
//! It is not the inventory or the saga themselves (`tessera-inventory`,
//! `tessera-orders`), nor the bus (`tessera-bus`).

pub mod admission;
pub mod bus;
pub mod config;
pub mod http;
pub mod lease;
pub mod store_status;
pub mod tasks;
pub mod webhooks;

use std::sync::Arc;

use anyhow::Context as _;
use parking_lot::RwLock;
use tessera_common::{Clock, Rng};
use tessera_fdb_schema::Keyspace;
use tessera_identity::oidc::Oidc;
use tessera_identity::{IdentityIssuer, Keyset, SigningKeyPair};
use tessera_inventory::{Inventory, InventoryConfig};
use tessera_orders::{Orders, OrdersConfig, TicketKeys};
use tessera_payments::PaymentProvider;
use tessera_runtime::config::Mode;
use tessera_store::Store;

pub use config::Config;

/// Everything a request handler or background task of the core needs.
pub struct App<S: Store> {
    pub config: Config,
    pub region: tessera_api::RegionId,
    pub inv: Inventory<S>,
    pub orders: Orders<S>,
    /// Identity tokens: the issuer's keys, pinned or fetched (discovery + JWKS).
    pub identity: Arc<Oidc>,
    /// The development issuer (local mode only).
    pub dev_issuer: Option<IdentityIssuer>,
    pub edge_keys: Keyset,
    /// Signs the admission watermarks the edges admit by.
    pub watermark_key: SigningKeyPair,
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn Rng>,
    pub nats: Option<async_nats::Client>,
    /// Poked after commits that wrote to the outbox, so the relay publishes at once.
    pub outbox_written: Arc<tokio::sync::Notify>,
    /// The newest admission watermark per event this process knows of.
    pub watermarks: RwLock<
        std::collections::HashMap<tessera_api::EventId, tessera_api::queue::SignedWatermark>,
    >,
    /// A unique name of this process (leases).
    pub instance: String,
    pub started_at_ms: u64,
}

impl<S: Store> std::fmt::Debug for App<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("region", &self.region)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl<S: Store> App<S> {
    /// Wires the core over `store` and `provider`. The configuration must pass
    /// [`Config::validate`] in its mode.
    pub fn build(
        config: Config,
        store: S,
        provider: Arc<dyn PaymentProvider>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        nats: Option<async_nats::Client>,
    ) -> anyhow::Result<Arc<Self>> {
        config.validate()?;
        let region = tessera_api::RegionId::parse(&config.region).context("parse region")?;
        let keys = Keyspace::with_root(&config.store.root);
        let mut inv_config = InventoryConfig::new(region.clone());
        inv_config.payment_window_ms = config.inventory.payment_window_s * 1000;
        let inv = Inventory::new(store, keys, clock.clone(), rng.clone(), inv_config);

        // Validation refuses a development issuer outside local mode; this keeps the
        // route from existing even if a caller skipped it.
        let dev_issuer = match &config.dev_issuer.seed {
            Some(seed) if config.mode == Mode::Local => Some(IdentityIssuer {
                issuer: config.identity.issuer.clone(),
                key: SigningKeyPair::from_base64(&config.dev_issuer.kid, seed.expose())
                    .map_err(|e| anyhow::anyhow!("dev_issuer.seed: {e}"))?,
            }),
            _ => None,
        };
        let identity = Arc::new(Oidc::new(&config.identity)?);
        let edge_keys = Keyset::parse(&config.queue.edge_keys)
            .map_err(|e| anyhow::anyhow!("queue.edge_keys: {e}"))?;
        let signing = config.ticket_signing_key()?;
        if config.tickets.signing_seed.is_none() {
            tracing::info!("local mode: tickets are signed with the development key");
        }
        let watermark_key = config.watermark_signing_key()?;
        let mut verifying = Keyset::parse(&config.tickets.verify_keys)
            .map_err(|e| anyhow::anyhow!("tickets.verify_keys: {e}"))?;
        verifying.insert(signing.public());
        let instance = format!("{}-{:08x}", region, rng.next_u64() as u32);
        let orders = Orders::new(
            inv.clone(),
            provider,
            TicketKeys { signing, verifying },
            clock.clone(),
            rng.clone(),
            OrdersConfig::new(instance.clone()),
        );
        let started_at_ms = clock.now_ms();
        Ok(Arc::new(App {
            config,
            region,
            inv,
            orders,
            identity,
            dev_issuer,
            edge_keys,
            watermark_key,
            clock,
            rng,
            nats,
            outbox_written: Arc::new(tokio::sync::Notify::new()),
            watermarks: RwLock::new(std::collections::HashMap::new()),
            instance,
            started_at_ms,
        }))
    }

    pub fn keys(&self) -> &Keyspace {
        self.inv.keys()
    }

    pub fn store(&self) -> &S {
        self.inv.store()
    }
}
