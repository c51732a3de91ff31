//! Tessera's event bus on NATS JetStream: region streams, the outbox relay, heartbeats and
//! idempotent consumers.
//!
//! The pieces, in the order an event meets them:
//! 1. A core transaction writes the change and an outbox entry `("out", region, stamp)`
//!    together (the core's job, with `tessera-fdb-schema` keys).
//! 2. [`relay::OutboxRelay`] publishes each entry as a [`tessera_api::bus::BusEvent`] to the
//!    region's stream ([`streams`]) with `Nats-Msg-Id` = the event id, waits for the
//!    acknowledgements, then deletes the entries. A crash in between republishes, and the
//!    stream drops the duplicate. Leases let a healthy region publish a dead region's
//!    leftover outbox.
//! 3. Each region's stream sources the other regions' streams across JetStream domains, so
//!    a region cut off from the hub keeps publishing locally and catches up afterwards.
//! 4. [`consumer::StoreConsumer`] applies events in a store transaction together with a
//!    dedup mark `("note", consumer, event_id)`, so a redelivered or republished event has
//!    no second effect. [`projection`] is the reference consumer: per-event availability
//!    tallies built only from events, in a region-local store.
//!
//! [`heartbeat`] carries region liveness over core NATS for the region routers. The hub
//! and leaf configurations in `deploy/nats/`, run as local processes for tests and
//! `cargo xtask up`, are test support: `tessera-local-nats`.
//!
//! What this crate is not: the owner of any business state. It never decides what an
//! event means for inventory or orders; it moves events and guarantees they take effect
//! once.

pub mod client;
pub mod consumer;
pub mod event;
pub mod heartbeat;
pub mod projection;
pub mod relay;
pub mod streams;

/// The JetStream domain of the hub (where the routers' region-control bucket lives).
pub const HUB_DOMAIN: &str = "hub";

/// What a region's core may publish (`deploy/` and the local stack grant exactly this):
/// its own region's events (a relay that took over a dead peer's outbox publishes those
/// under its own prefix too), its own heartbeat, admission watermarks (signed; any region's
/// core may hold the admission lease), the JetStream API of its own region's domain (the
/// leaf it connects to), a stream's description in any domain (read-only: how the core
/// sees whether a peer's domain answers), acknowledgements of its own region's stream, and
/// replies. Another region's events and heartbeats, and any change to another domain's
/// streams or consumers, are refused by the server.
pub fn core_publish_subjects(region: &tessera_api::RegionId) -> Vec<String> {
    vec![
        streams::region_subjects(region),
        tessera_api::bus::heartbeat_subject(region),
        "tessera.admission.*".to_owned(),
        // The leaf server maps its own domain's `$JS.<region>.API.>` to `$JS.API.>` before
        // it checks permissions; a leaf never forwards `$JS.API.>` to another domain.
        "$JS.API.>".to_owned(),
        format!("{}.>", streams::domain_api_prefix(region)),
        "$JS.*.API.STREAM.INFO.*".to_owned(),
        format!("$JS.ACK.{}.>", streams::stream_name(region)),
        "_INBOX.>".to_owned(),
    ]
}

pub use client::NatsClientConfig;
pub use event::{decode_event, encode_outbox_entry};

/// What went wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("failed to connect to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("JetStream request failed")]
    JetStream(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("NATS publish failed")]
    Publish(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("store operation failed")]
    Store(#[source] tessera_store::StoreError),
    #[error("malformed data: {0}")]
    Malformed(String),
}

impl BusError {
    pub(crate) fn jetstream(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        BusError::JetStream(Box::new(e))
    }
    pub(crate) fn publish(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        BusError::Publish(Box::new(e))
    }
}

impl From<tessera_store::StoreError> for BusError {
    fn from(e: tessera_store::StoreError) -> Self {
        BusError::Store(e)
    }
}

impl<E: std::fmt::Debug> From<tessera_store::RunError<E>> for BusError {
    fn from(e: tessera_store::RunError<E>) -> Self {
        match e {
            tessera_store::RunError::Store(e) => BusError::Store(e),
            tessera_store::RunError::RetriesExhausted { last, .. } => BusError::Store(last),
            tessera_store::RunError::Abort(e) => BusError::Malformed(format!("{e:?}")),
        }
    }
}

/// Connects to `url` without TLS or credentials (see [`NatsClientConfig::connect`] for
/// how services connect).
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, BusError> {
    NatsClientConfig::plain(url).connect(name).await
}
