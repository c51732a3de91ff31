//! The notifier: turns bus events into durable deliveries, and delivers them with retries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tessera_api::bus::BusEvent;
use tessera_api::{CustomerId, OrderId};
use tessera_common::{Clock, Rng};
use tessera_fdb_schema::Keyspace;
use tessera_fdb_schema::values::{decode, encode};
use tessera_store::{RangeRequest, RunError, Store, Transaction as _, TrxError};
use tracing::Instrument as _;

use crate::email::{self, Mailer, Recipient};
use crate::sse::SseHub;
use crate::webhooks::{self, WebhookEndpoint};
use tessera_fdb_schema::notify::{DeadLetterRecord, DeliveryChannel, DeliveryRecord, NotifyKeys};

/// The consumer name under which handled bus events are marked.
pub const CONSUMER: &str = "notifications";

/// Looks up where to reach a fan. Implemented by the core from its order and customer
/// records; addresses never travel on the bus and are never logged.
#[async_trait::async_trait]
pub trait Contacts: Send + Sync {
    async fn email_for_order(&self, order_id: &OrderId) -> anyhow::Result<Option<String>>;
    async fn email_for_customer(&self, customer_id: &CustomerId) -> anyhow::Result<Option<String>>;
}

/// Exponential backoff with jitter, then a dead letter.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Attempts before a delivery becomes a dead letter.
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 8, initial_backoff_ms: 1_000, max_backoff_ms: 5 * 60_000 }
    }
}

/// The wait before the attempt after `attempts` failed ones, by the platform's retry
/// policy ([`tessera_common::retry`]): the exponential step, of which the upper half is
/// random, so retries of many deliveries that failed together spread out.
pub fn retry_delay_ms(policy: &RetryPolicy, attempts: u32, rng: &dyn Rng) -> u64 {
    tessera_common::retry::Backoff::new(
        std::time::Duration::from_millis(policy.initial_backoff_ms),
        std::time::Duration::from_millis(policy.max_backoff_ms),
    )
    .nth(attempts.max(1), rng.next_u64())
    .as_millis() as u64
}

/// Settings of the notifier (the `[notifications]` table of the core's config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NotifierConfig {
    pub smtp: email::SmtpConfig,
    /// Where the fan's pages are served (the edge's public origin): emails link there.
    pub fan_url: String,
    pub webhooks: Vec<WebhookEndpoint>,
    pub retry: RetryPolicy,
    pub webhook_timeout_ms: u64,
    /// How long a claimed delivery stays invisible to other workers; a worker that dies
    /// mid-attempt is covered when it lapses.
    pub lease_ms: u64,
    /// How often the worker looks for due retries when nothing wakes it.
    pub poll_interval_ms: u64,
    /// Deliveries attempted at once.
    pub concurrency: usize,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            smtp: email::SmtpConfig::default(),
            fan_url: "http://127.0.0.1:8080".to_owned(),
            webhooks: Vec::new(),
            retry: RetryPolicy::default(),
            webhook_timeout_ms: 5_000,
            lease_ms: 30_000,
            poll_interval_ms: 250,
            concurrency: 16,
        }
    }
}

/// What [`Notifier::handle`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// First sight of this event: this many deliveries were queued.
    New { deliveries: usize },
    /// Already handled: nothing happened.
    Duplicate,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Nothing to send (no address on file, endpoint no longer configured).
    Skipped,
    /// Failed; retried at `due_ms`.
    Retry {
        due_ms: u64,
    },
    DeadLettered,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("store transaction failed")]
    Store(#[source] anyhow::Error),
    #[error("stored record is malformed: {0}")]
    Corrupt(String),
}

fn store_err<E: std::fmt::Debug>(e: RunError<E>) -> NotifyError {
    match e {
        RunError::Store(e) => NotifyError::Store(e.into()),
        RunError::RetriesExhausted { last, .. } => NotifyError::Store(last.into()),
        RunError::Abort(e) => NotifyError::Corrupt(format!("{e:?}")),
    }
}

struct Inner<S> {
    store: S,
    ks: Keyspace,
    keys: NotifyKeys,
    config: NotifierConfig,
    mailer: Arc<dyn Mailer>,
    contacts: Arc<dyn Contacts>,
    hub: SseHub,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    http: reqwest::Client,
    wake: tokio::sync::Notify,
    /// Bus events this process already pushed to SSE streams (bounded).
    streamed: parking_lot::Mutex<RecentIds>,
}

/// A bounded set of recently seen ids: forgets the oldest first.
struct RecentIds {
    set: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
    cap: usize,
}

impl RecentIds {
    /// Whether `id` is new (and remembers it).
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

/// Turns bus events into emails, webhooks and SSE messages. Cheap to clone.
pub struct Notifier<S: Store> {
    inner: Arc<Inner<S>>,
}

impl<S: Store> Clone for Notifier<S> {
    fn clone(&self) -> Self {
        Notifier { inner: self.inner.clone() }
    }
}

impl<S: Store> std::fmt::Debug for Notifier<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("store", &self.inner.store.backend_name())
            .finish_non_exhaustive()
    }
}

impl<S: Store> Notifier<S> {
    #[allow(clippy::too_many_arguments, reason = "every part is injected on purpose")]
    pub fn new(
        store: S,
        keyspace: Keyspace,
        config: NotifierConfig,
        mailer: Arc<dyn Mailer>,
        contacts: Arc<dyn Contacts>,
        hub: SseHub,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().build()?;
        let keys = NotifyKeys::new(keyspace.root_prefix());
        Ok(Notifier {
            inner: Arc::new(Inner {
                store,
                ks: keyspace,
                keys,
                config,
                mailer,
                contacts,
                hub,
                clock,
                rng,
                http,
                wake: tokio::sync::Notify::new(),
                streamed: parking_lot::Mutex::new(RecentIds {
                    set: Default::default(),
                    order: Default::default(),
                    cap: 100_000,
                }),
            }),
        })
    }

    /// The SSE hub this notifier publishes to.
    pub fn hub(&self) -> &SseHub {
        &self.inner.hub
    }

    /// Handles one bus event, idempotently by [`BusEvent::id`]: the first time, marks it
    /// consumed and queues its deliveries in one transaction; any later time, in any
    /// process sharing the store, queues nothing. Separately, the event is pushed to the
    /// fan's SSE streams open on *this* process, once per process: fans connected to
    /// another region hear of it from that region's notifier.
    pub async fn handle(&self, event: &BusEvent) -> Result<Handled, NotifyError> {
        let span = tracing::info_span!("notifications.handle", kind = event.body.kind(), bus_event_id = %event.id);
        self.handle_inner(event).instrument(span).await
    }

    async fn handle_inner(&self, event: &BusEvent) -> Result<Handled, NotifyError> {
        let inner = &self.inner;
        let now_ms = inner.clock.now_ms();
        let deliveries = self.deliveries_for(event, now_ms);
        let consumed = inner.ks.consumed(CONSUMER, &event.id);
        let result = tessera_store::run(&inner.store, |trx, _maybe_committed| {
            let consumed = consumed.clone();
            let deliveries = deliveries.clone();
            let keys = inner.keys.clone();
            async move {
                // After an unknown commit the mark tells whether the first attempt landed.
                if trx.get(&consumed, false).await?.is_some() {
                    return Ok::<_, TrxError<()>>(false);
                }
                trx.set(&consumed, b"");
                for d in &deliveries {
                    trx.set(&keys.delivery(&d.id), &encode(d));
                    trx.set(&keys.due(d.due_ms, &d.id), b"");
                }
                Ok(true)
            }
        })
        .await
        .map_err(store_err)?;
        if inner.streamed.lock().insert(&event.id) {
            inner.hub.publish_bus_event(event);
        }
        if !result {
            metrics::counter!("tessera_notifications_events_total", "outcome" => "duplicate")
                .increment(1);
            return Ok(Handled::Duplicate);
        }
        metrics::counter!("tessera_notifications_events_total", "outcome" => "new").increment(1);
        if !deliveries.is_empty() {
            inner.wake.notify_one();
        }
        Ok(Handled::New { deliveries: deliveries.len() })
    }

    fn deliveries_for(&self, event: &BusEvent, now_ms: u64) -> Vec<DeliveryRecord> {
        let mut channels = Vec::new();
        if email::render(event, &self.inner.config.fan_url).is_some() {
            channels.push((format!("{}.email", event.id), DeliveryChannel::Email));
        }
        for ep in &self.inner.config.webhooks {
            if ep.wants(event.body.kind()) {
                channels.push((
                    format!("{}.wh.{}", event.id, ep.id),
                    DeliveryChannel::Webhook { endpoint_id: ep.id.clone() },
                ));
            }
        }
        channels
            .into_iter()
            .map(|(id, channel)| DeliveryRecord {
                v: 1,
                id,
                channel,
                event: event.clone(),
                attempts: 0,
                created_ms: now_ms,
                due_ms: now_ms,
                last_error: None,
                traceparent: tessera_common::trace::current_traceparent(),
            })
            .collect()
    }

    /// Attempts every delivery that is due now, returning how many were attempted. The
    /// worker calls this in a loop; tests call it directly.
    pub async fn run_due(&self) -> Result<usize, NotifyError> {
        let inner = &self.inner;
        let now_ms = inner.clock.now_ms();
        let (begin, end) = inner.keys.due_until(now_ms);
        let range = RangeRequest::new(begin, end).limit(256);
        let due = {
            let trx = inner.store.create_trx().map_err(|e| NotifyError::Store(e.into()))?;
            trx.get_range(&range, true).await.map_err(|e| NotifyError::Store(e.into()))?
        };
        let mut entries = Vec::with_capacity(due.len());
        for (key, _) in due {
            entries.push(inner.keys.due_of_key(&key).map_err(NotifyError::Corrupt)?);
        }
        let attempted = entries.len();
        let results: Vec<Result<(), NotifyError>> = futures::stream::iter(entries)
            .map(|(due_ms, id)| async move { self.attempt(due_ms, &id).await.map(|_| ()) })
            .buffer_unordered(inner.config.concurrency.max(1))
            .collect()
            .await;
        for r in results {
            r?;
        }
        Ok(attempted)
    }

    /// Claims one delivery, attempts it, and records the outcome.
    async fn attempt(&self, due_ms: u64, id: &str) -> Result<Option<DeliveryOutcome>, NotifyError> {
        let inner = &self.inner;
        let now_ms = inner.clock.now_ms();
        let lease_due = now_ms + inner.config.lease_ms;
        let keys = inner.keys.clone();
        // Claim: move the schedule entry to the end of the lease, so another worker (or a
        // second pass) leaves it alone while we try.
        let claimed = tessera_store::run(&inner.store, |trx, _| {
            let keys = keys.clone();
            let id = id.to_owned();
            async move {
                if trx.get(&keys.due(due_ms, &id), false).await?.is_none() {
                    return Ok(None);
                }
                let Some(raw) = trx.get(&keys.delivery(&id), false).await? else {
                    trx.clear(&keys.due(due_ms, &id));
                    return Ok(None);
                };
                let mut rec: DeliveryRecord = match decode(&raw) {
                    Ok(r) => r,
                    Err(e) => return Err(TrxError::Abort(e.to_string())),
                };
                trx.clear(&keys.due(due_ms, &id));
                trx.set(&keys.due(lease_due, &id), b"");
                rec.attempts += 1;
                rec.due_ms = lease_due;
                trx.set(&keys.delivery(&id), &encode(&rec));
                Ok(Some(rec))
            }
        })
        .await
        .map_err(store_err)?;
        let Some(rec) = claimed else { return Ok(None) };

        let channel = match rec.channel {
            DeliveryChannel::Email => "email",
            DeliveryChannel::Webhook { .. } => "webhook",
        };
        let span = tracing::info_span!("notifications.deliver", channel, attempt = rec.attempts, bus_event_id = %rec.event.id);
        if let Some(tp) = &rec.traceparent {
            tessera_runtime::telemetry::set_parent_from_pairs(&span, |k| {
                (k == "traceparent").then_some(tp.as_str())
            });
        }
        let started = Instant::now();
        let result = self.deliver(&rec).instrument(span.clone()).await;
        metrics::histogram!("tessera_notifications_delivery_duration_seconds", "channel" => channel)
            .record(started.elapsed().as_secs_f64());

        let now_ms = inner.clock.now_ms();
        let delay = retry_delay_ms(&inner.config.retry, rec.attempts, &*inner.rng);
        let max_attempts = inner.config.retry.max_attempts;
        let outcome = tessera_store::run(&inner.store, |trx, _| {
            let keys = keys.clone();
            let mut rec = rec.clone();
            let result = result.clone();
            async move {
                // Still ours? A lapsed lease may have let someone else take it.
                match trx.get(&keys.due(lease_due, &rec.id), false).await? {
                    Some(_) => trx.clear(&keys.due(lease_due, &rec.id)),
                    None => return Ok(None),
                }
                let outcome = match result {
                    Ok(skipped) => {
                        trx.clear(&keys.delivery(&rec.id));
                        if skipped { DeliveryOutcome::Skipped } else { DeliveryOutcome::Delivered }
                    }
                    Err(reason) if rec.attempts >= max_attempts => {
                        rec.last_error = Some(reason);
                        trx.clear(&keys.delivery(&rec.id));
                        let dead =
                            DeadLetterRecord { v: 1, delivery: rec.clone(), dead_at_ms: now_ms };
                        trx.set(&keys.dead_letter(&rec.id), &encode(&dead));
                        DeliveryOutcome::DeadLettered
                    }
                    Err(reason) => {
                        rec.last_error = Some(reason);
                        rec.due_ms = now_ms + delay;
                        trx.set(&keys.delivery(&rec.id), &encode(&rec));
                        trx.set(&keys.due(rec.due_ms, &rec.id), b"");
                        DeliveryOutcome::Retry { due_ms: rec.due_ms }
                    }
                };
                Ok::<_, TrxError<()>>(Some(outcome))
            }
        })
        .await
        .map_err(store_err)?;
        if let Some(o) = &outcome {
            let label = match o {
                DeliveryOutcome::Delivered => "delivered",
                DeliveryOutcome::Skipped => "skipped",
                DeliveryOutcome::Retry { .. } => "retry",
                DeliveryOutcome::DeadLettered => "dead_letter",
            };
            metrics::counter!("tessera_notifications_deliveries_total", "channel" => channel, "outcome" => label)
                .increment(1);
            if *o == DeliveryOutcome::DeadLettered {
                tracing::warn!(parent: &span, delivery = %rec.id, attempts = rec.attempts, "gave up on a notification; kept as a dead letter");
            }
        }
        Ok(outcome)
    }

    /// One attempt. `Ok(true)` means there was nothing to send.
    async fn deliver(&self, rec: &DeliveryRecord) -> Result<bool, String> {
        let inner = &self.inner;
        match &rec.channel {
            DeliveryChannel::Email => {
                let Some((to, content)) = email::render(&rec.event, &inner.config.fan_url) else {
                    return Ok(true);
                };
                let address = match &to {
                    Recipient::Order(o) => inner.contacts.email_for_order(o).await,
                    Recipient::Customer(c) => inner.contacts.email_for_customer(c).await,
                }
                .map_err(|e| format!("look up the address: {e:#}"))?;
                let Some(address) = address else { return Ok(true) };
                let message_id = format!("<{}@tessera>", rec.id);
                match inner.mailer.send(&address, &content, &message_id).await {
                    Ok(()) => Ok(false),
                    // A malformed address will not get better with time.
                    Err(email::MailError::BadAddress) => Ok(true),
                    Err(e) => Err(e.to_string()),
                }
            }
            DeliveryChannel::Webhook { endpoint_id } => {
                let Some(ep) = inner.config.webhooks.iter().find(|e| &e.id == endpoint_id) else {
                    return Ok(true);
                };
                let timeout = Duration::from_millis(inner.config.webhook_timeout_ms);
                webhooks::post(&inner.http, ep, &rec.event, inner.clock.now_ms() / 1000, timeout)
                    .await
                    .map(|()| false)
            }
        }
    }

    /// Runs deliveries until the returned task is aborted: after each new event, and every
    /// `poll_interval_ms` for retries that fell due.
    pub fn spawn_worker(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let poll = Duration::from_millis(this.inner.config.poll_interval_ms.max(1));
            loop {
                match this.run_due().await {
                    // A full batch: there may be more due right now.
                    Ok(n) if n >= 256 => continue,
                    Ok(_) => {}
                    Err(e) => tracing::error!("failed to run notification deliveries: {e:#}"),
                }
                tokio::select! {
                    () = this.inner.wake.notified() => {}
                    () = tokio::time::sleep(poll) => {}
                }
            }
        })
    }

    /// Deliveries still waiting (for operators and tests).
    pub async fn pending(&self) -> Result<Vec<DeliveryRecord>, NotifyError> {
        self.scan(self.inner.keys.due_all(), |keys, k| {
            keys.due_of_key(k).map(|(_, id)| keys.delivery(&id)).ok()
        })
        .await
    }

    /// Deliveries that gave up.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetterRecord>, NotifyError> {
        let (b, e) = self.inner.keys.dead_letters();
        let trx = self.inner.store.create_trx().map_err(|e| NotifyError::Store(e.into()))?;
        let rows = trx
            .get_range(&RangeRequest::new(b, e), true)
            .await
            .map_err(|e| NotifyError::Store(e.into()))?;
        rows.iter()
            .map(|(_, v)| decode(v).map_err(|e| NotifyError::Corrupt(e.to_string())))
            .collect()
    }

    async fn scan(
        &self,
        (b, e): (Vec<u8>, Vec<u8>),
        record_key: impl Fn(&NotifyKeys, &[u8]) -> Option<Vec<u8>>,
    ) -> Result<Vec<DeliveryRecord>, NotifyError> {
        let trx = self.inner.store.create_trx().map_err(|e| NotifyError::Store(e.into()))?;
        let rows = trx
            .get_range(&RangeRequest::new(b, e), true)
            .await
            .map_err(|e| NotifyError::Store(e.into()))?;
        let mut out = Vec::new();
        for (k, _) in rows {
            let Some(rk) = record_key(&self.inner.keys, &k) else { continue };
            if let Some(v) = trx.get(&rk, true).await.map_err(|e| NotifyError::Store(e.into()))? {
                out.push(decode(&v).map_err(|e| NotifyError::Corrupt(e.to_string()))?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_common::SeededRng;

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_cap() {
        let p = RetryPolicy { max_attempts: 10, initial_backoff_ms: 100, max_backoff_ms: 1_000 };
        let rng = SeededRng::new(3);
        for (attempts, step) in [(1, 100u64), (2, 200), (3, 400), (4, 800), (5, 1_000), (30, 1_000)]
        {
            for _ in 0..50 {
                let d = retry_delay_ms(&p, attempts, &*rng);
                assert!((step / 2..=step).contains(&d), "attempt {attempts}: {d}");
            }
        }
        let a: Vec<u64> = (0..5).map(|_| retry_delay_ms(&p, 3, &*SeededRng::new(9))).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]), "seeded jitter is reproducible");
    }
}
