//! Idempotent consumers of a region's stream.
//!
//! A consumer is a durable pull consumer on the local region stream (which also carries
//! every peer region's events, sourced). [`StoreConsumer`] applies each event with a
//! [`Handler`] inside a store transaction that also writes the dedup mark
//! `("note", consumer, event_id)`; an event whose mark exists is skipped. Messages are
//! acknowledged only after the transaction committed, so a crash redelivers and the mark
//! makes the redelivery harmless. Events are applied in small batches (one transaction per
//! batch of ready messages) to keep up with an on-sale.
//!
//! Consumers whose effect is outside the store (sending an email) use
//! [`StoreConsumer::apply_batch`]'s dedup in the same way: record the mark together with
//! an "outbox of effects", or check [`already_applied`] before acting.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind};
use futures::{FutureExt as _, StreamExt as _};
use tessera_api::RegionId;
use tessera_api::bus::BusEvent;
use tessera_fdb_schema::Keyspace;
use tessera_store::{Store, StoreError, Transaction as _, TrxError};
use tracing::Instrument as _;

use crate::BusError;
use crate::streams::{region_context, stream_name};

/// Applies events to a store. Implementations act only through `trx`: the transaction may
/// run more than once before it commits.
pub trait Handler<S: Store>: Send + Sync + 'static {
    fn apply(
        &self,
        trx: &S::Trx,
        event: &BusEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Its dedup mark was there: applied before, nothing done now.
    Duplicate,
}

/// A durable consumer's settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Durable name; also the namespace of the dedup marks, so never rename a consumer
    /// whose marks must stay valid.
    pub durable: String,
    /// Only events on this subject (`tessera.*.seats.>`); `None` = every event.
    pub filter_subject: Option<String>,
    /// Redelivery after this long without an ack.
    pub ack_wait: Duration,
    /// Unacknowledged messages in flight.
    pub max_ack_pending: i64,
    /// Most events applied in one transaction.
    pub batch_max: usize,
}

impl ConsumerConfig {
    pub fn new(durable: impl Into<String>) -> Self {
        ConsumerConfig {
            durable: durable.into(),
            filter_subject: None,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
            batch_max: 256,
        }
    }
}

/// Creates (or binds to) the durable pull consumer on `region`'s stream in its domain.
pub async fn ensure_consumer(
    client: &async_nats::Client,
    region: &RegionId,
    cfg: &ConsumerConfig,
) -> Result<PullConsumer, BusError> {
    let js = region_context(client, region);
    let stream = js.get_stream(stream_name(region)).await.map_err(BusError::jetstream)?;
    stream
        .get_or_create_consumer(
            &cfg.durable,
            pull::Config {
                durable_name: Some(cfg.durable.clone()),
                description: Some("Tessera idempotent consumer".to_owned()),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: cfg.ack_wait,
                max_ack_pending: cfg.max_ack_pending,
                filter_subject: cfg.filter_subject.clone().unwrap_or_default(),
                ..Default::default()
            },
        )
        .await
        .map_err(BusError::jetstream)
}

/// Whether `consumer` already applied `event_id` (read inside `trx`, so it conflicts with a
/// concurrent application).
pub async fn already_applied<T: tessera_store::Transaction>(
    trx: &T,
    keyspace: &Keyspace,
    consumer: &str,
    event_id: &str,
) -> Result<bool, StoreError> {
    Ok(trx.get(&keyspace.consumed(consumer, event_id), false).await?.is_some())
}

/// Applies events idempotently with a [`Handler`].
pub struct StoreConsumer<S: Store, H: Handler<S>> {
    store: S,
    keyspace: Keyspace,
    cfg: ConsumerConfig,
    handler: H,
}

impl<S: Store, H: Handler<S>> std::fmt::Debug for StoreConsumer<S, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConsumer").field("durable", &self.cfg.durable).finish_non_exhaustive()
    }
}

impl<S: Store, H: Handler<S>> StoreConsumer<S, H> {
    pub fn new(store: S, keyspace: Keyspace, cfg: ConsumerConfig, handler: H) -> Self {
        StoreConsumer { store, keyspace, cfg, handler }
    }

    pub fn name(&self) -> &str {
        &self.cfg.durable
    }

    /// Applies `events` in one transaction; each is skipped if its mark exists.
    pub async fn apply_batch(&self, events: &[BusEvent]) -> Result<Vec<Outcome>, BusError> {
        let name = self.cfg.durable.as_str();
        let outcomes = tessera_store::run(&self.store, |trx, _| async move {
            let mut outcomes = Vec::with_capacity(events.len());
            for event in events {
                let mark = self.keyspace.consumed(name, &event.id);
                if trx.get(&mark, false).await?.is_some() {
                    outcomes.push(Outcome::Duplicate);
                    continue;
                }
                self.handler.apply(&trx, event).await?;
                trx.set(&mark, b"");
                outcomes.push(Outcome::Applied);
            }
            Ok::<_, TrxError<()>>(outcomes)
        })
        .await?;
        for outcome in &outcomes {
            let label = match outcome {
                Outcome::Applied => "applied",
                Outcome::Duplicate => "duplicate",
            };
            metrics::counter!("tessera_bus_consumer_events_total", "consumer" => self.cfg.durable.clone(), "outcome" => label)
                .increment(1);
        }
        Ok(outcomes)
    }

    /// Consumes `consumer` until `shutdown` resolves, reconnecting after errors.
    pub async fn run(self, consumer: PullConsumer, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        // The platform's retry policy between attempts to start pulling (from 0.5 s up to
        // 5 s), from the start again once pulling works.
        let policy =
            tessera_common::retry::Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        let mut delays = policy.delays(None);
        loop {
            let mut messages = match consumer.messages().await {
                Ok(m) => {
                    delays = policy.delays(None);
                    m
                }
                Err(e) => {
                    tracing::warn!(consumer = %self.cfg.durable, "failed to start pulling, retrying: {e}");
                    let delay = delays.next().unwrap_or(policy.max);
                    tokio::select! {
                        () = &mut shutdown => return,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            loop {
                let first = tokio::select! {
                    () = &mut shutdown => return,
                    next = messages.next() => next,
                };
                let mut batch = match first {
                    None => break,
                    Some(Err(e)) => {
                        tracing::debug!(consumer = %self.cfg.durable, "pull stream error: {e}");
                        continue;
                    }
                    Some(Ok(m)) => vec![m],
                };
                // Take whatever else is already here, without waiting.
                while batch.len() < self.cfg.batch_max {
                    match messages.next().now_or_never() {
                        Some(Some(Ok(m))) => batch.push(m),
                        _ => break,
                    }
                }
                self.handle(batch).await;
            }
        }
    }

    async fn handle(&self, batch: Vec<jetstream::Message>) {
        let mut events = Vec::with_capacity(batch.len());
        let mut decoded = Vec::with_capacity(batch.len());
        for msg in batch {
            match crate::event::decode_event(&msg.payload) {
                Ok(event) => {
                    events.push(event);
                    decoded.push(msg);
                }
                Err(e) => {
                    // An event this build does not understand (or garbage): it cannot be
                    // applied now or later, so stop its redelivery.
                    tracing::warn!(consumer = %self.cfg.durable, subject = %msg.subject, "skipping an event that does not decode: {e:#}");
                    metrics::counter!("tessera_bus_consumer_events_total", "consumer" => self.cfg.durable.clone(), "outcome" => "skipped")
                        .increment(1);
                    let _ = msg.ack_with(AckKind::Term).await;
                }
            }
        }
        if events.is_empty() {
            return;
        }
        // Consecutive messages of one trace are applied together under one span that
        // continues that trace; a batch mixing several purchases becomes several runs.
        let traceparent = |m: &jetstream::Message| {
            m.headers.as_ref().and_then(|h| h.get("traceparent")).map(|v| v.as_str().to_owned())
        };
        let mut events = events.into_iter();
        let mut decoded = decoded.into_iter().peekable();
        while let Some(first) = decoded.next() {
            let tp = traceparent(&first);
            let mut msgs = vec![first];
            while decoded.peek().is_some_and(|m| traceparent(m) == tp) {
                msgs.extend(decoded.next());
            }
            let run: Vec<BusEvent> = events.by_ref().take(msgs.len()).collect();
            self.handle_run(run, msgs, tp).await;
        }
    }

    async fn handle_run(
        &self,
        events: Vec<BusEvent>,
        decoded: Vec<jetstream::Message>,
        traceparent: Option<String>,
    ) {
        let span =
            tracing::info_span!("bus.consume", consumer = %self.cfg.durable, count = events.len());
        if let Some(tp) = &traceparent {
            tessera_runtime::telemetry::set_parent_from_pairs(&span, |k| {
                (k == "traceparent").then_some(tp.as_str())
            });
        }
        match self.apply_batch(&events).instrument(span).await {
            Ok(_) => {
                for msg in decoded {
                    if let Err(e) = msg.ack().await {
                        // Redelivered later and then skipped as a duplicate.
                        tracing::debug!(consumer = %self.cfg.durable, "ack failed: {e}");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(consumer = %self.cfg.durable, "failed to apply events, they will be redelivered: {e:#}");
                metrics::counter!("tessera_bus_consumer_events_total", "consumer" => self.cfg.durable.clone(), "outcome" => "failed")
                    .increment(decoded.len() as u64);
                for msg in decoded {
                    let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                }
            }
        }
    }
}
