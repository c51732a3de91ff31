//! The core's side of the bus and of notifications: the region stream and its source
//! watchdog, the outbox relay, heartbeats, the projection consumer, and the notifier with
//! its consumer, delivery worker, SSE streams and "your turn" updates.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use futures::StreamExt as _;
use tessera_api::queue::QueueTicketClaims;
use tessera_api::{CustomerId, OrderId, RegionId};
use tessera_common::SystemClock;
use tessera_fdb_schema::values::{self, OrderRecord, queue_place};
use tessera_notifications::email::SmtpMailer;
use tessera_notifications::sse::{QueueUpdate, SseHub};
use tessera_notifications::{Contacts, Notifier};
use tessera_store::{Store, Transaction as _};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::App;
use crate::admission::tokio_util_shutdown::Shutdown;

/// Email addresses from the store: an order's checkout address, or the customer's contact
/// address from their identity token.
struct StoreContacts<S: Store> {
    app: Arc<App<S>>,
}

#[async_trait::async_trait]
impl<S: Store> Contacts for StoreContacts<S> {
    async fn email_for_order(&self, order_id: &OrderId) -> anyhow::Result<Option<String>> {
        let trx = self.app.store().create_trx()?;
        let Some(b) = trx.get(&self.app.keys().order(order_id), true).await? else {
            return Ok(None);
        };
        let order: OrderRecord = values::decode(&b)?;
        match order.email {
            Some(e) => Ok(Some(e)),
            None => self.email_for_customer(&order.customer_id).await,
        }
    }

    async fn email_for_customer(&self, customer: &CustomerId) -> anyhow::Result<Option<String>> {
        let trx = self.app.store().create_trx()?;
        let v = trx.get(&self.app.keys().contact(customer), true).await?;
        Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }
}

/// Records a customer's contact address (from their token), if it changed.
pub async fn remember_contact<S: Store>(app: &App<S>, customer: &CustomerId, email: &str) {
    let key = app.keys().contact(customer);
    let result = tessera_store::run(app.store(), |trx, _| {
        let key = key.clone();
        async move {
            if trx.get(&key, false).await?.as_deref() != Some(email.as_bytes()) {
                trx.set(&key, email.as_bytes());
            }
            Ok::<_, tessera_store::TrxError<std::convert::Infallible>>(())
        }
    })
    .await;
    if let Err(e) = result {
        tracing::debug!("could not record a contact address: {e:?}");
    }
}

/// Starts everything bus-related. Returns the task handles and the routes to mount
/// (projection reads, SSE). Without NATS only the notifier's SSE routes exist.
pub async fn start<S: Store>(
    app: Arc<App<S>>,
    shutdown: Shutdown,
) -> anyhow::Result<(Vec<JoinHandle<()>>, Router)> {
    let mut handles = Vec::new();
    let hub = SseHub::new(64);
    let mailer = Arc::new(SmtpMailer::new(&app.config.notifications.smtp)?);
    let notifier = Notifier::new(
        app.store().clone(),
        app.keys().clone(),
        app.config.notifications.clone(),
        mailer,
        Arc::new(StoreContacts { app: app.clone() }),
        hub.clone(),
        app.clock.clone(),
        app.rng.clone(),
    )?;
    handles.push(notifier.spawn_worker());
    let mut router = hub.router(
        app.identity.clone(),
        app.clock.clone(),
        Duration::from_secs(app.config.bus.sse_keep_alive_s.max(1)),
    );
    handles.push(tokio::spawn(queue_updates(app.clone(), hub.clone(), shutdown.clone())));

    let Some(client) = app.nats.clone() else {
        tracing::warn!(
            "no NATS configured: events are not published and other regions hear nothing"
        );
        return Ok((handles, router));
    };
    let region = app.region.clone();
    let peers: Vec<RegionId> = app
        .config
        .regions
        .iter()
        .filter(|r| **r != app.config.region)
        .map(|r| RegionId::parse(r))
        .collect::<Result<_, _>>()?;
    let stream_opts = tessera_bus::streams::StreamOptions {
        max_bytes: app.config.bus.stream_max_bytes,
        max_age: std::time::Duration::from_secs(app.config.bus.stream_max_age_s),
        replicas: app.config.bus.stream_replicas,
        ..Default::default()
    };
    tessera_bus::streams::ensure_region_stream(&client, &region, &peers, &stream_opts).await?;
    handles.push(tessera_bus::streams::spawn_source_watchdog(
        client.clone(),
        region.clone(),
        peers.clone(),
        stream_opts,
        Default::default(),
    ));

    // The outbox relay, poked by the API after commits that wrote to the outbox.
    let relay = tessera_bus::relay::OutboxRelay::new(
        app.store().clone(),
        app.keys().clone(),
        client.clone(),
        tessera_bus::relay::RelayConfig::new(region.clone(), peers.clone(), app.instance.clone()),
        SystemClock,
    );
    let poke = relay.notifier();
    let written = app.outbox_written.clone();
    handles.push(tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            loop {
                tokio::select! {
                    () = written.notified() => poke.notify_one(),
                    () = shutdown.wait() => return,
                }
            }
        }
    }));
    handles.push(tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(async move { shutdown.wait().await }).await }
    }));

    handles.push(tessera_bus::heartbeat::spawn_publisher(
        client.clone(),
        region.clone(),
        app.config.public_url.clone(),
        Duration::from_millis(app.config.bus.heartbeat_ms.max(50)),
        SystemClock,
        tessera_bus::heartbeat::HeartbeatLoad::default,
    ));

    let projection =
        tessera_bus::projection::start(&client, &region, &app.config.bus.projection_dir, {
            let shutdown = shutdown.clone();
            async move { shutdown.wait().await }
        })
        .await?;
    router = router.merge(projection.router);
    handles.push(projection.task);

    // Notifications read the region stream: every region's events arrive here, and the
    // store-side dedup lets exactly one region queue each event's deliveries.
    let consumer = tessera_bus::consumer::ensure_consumer(
        &client,
        &region,
        &tessera_bus::consumer::ConsumerConfig::new(tessera_notifications::CONSUMER),
    )
    .await?;
    handles.push(tokio::spawn(notify_loop(consumer, notifier, shutdown)));
    Ok((handles, router))
}

async fn notify_loop<S: Store>(
    consumer: async_nats::jetstream::consumer::PullConsumer,
    notifier: Notifier<S>,
    shutdown: Shutdown,
) {
    // The platform's retry policy between attempts to read the stream (from 1 s up to
    // 10 s), from the start again once reading works.
    let policy =
        tessera_common::retry::Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
    let mut delays = policy.delays(None);
    loop {
        let mut messages = match consumer.messages().await {
            Ok(m) => {
                delays = policy.delays(None);
                m
            }
            Err(e) => {
                tracing::warn!("notifications: cannot read the stream, retrying: {e}");
                let delay = delays.next().unwrap_or(policy.max);
                tokio::select! {
                    () = tokio::time::sleep(delay) => continue,
                    () = shutdown.wait() => return,
                }
            }
        };
        loop {
            let next = tokio::select! {
                n = messages.next() => n,
                () = shutdown.wait() => return,
            };
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::debug!("notifications: stream read failed: {e}");
                    break;
                }
                None => break,
            };
            match tessera_bus::decode_event(&msg.payload) {
                Ok(event) => {
                    // The handling continues the trace in the message's headers (the relay's
                    // `bus.publish` span); the deliveries it queues keep the handling's
                    // trace, so the email's delivery joins the trace of the purchase.
                    let span = tracing::info_span!(
                        "bus.consume",
                        consumer = tessera_notifications::CONSUMER,
                        count = 1usize,
                        bus_event_id = %event.id,
                    );
                    if let Some(headers) = msg.headers.as_ref() {
                        tessera_runtime::telemetry::set_parent_from_pairs(&span, |k| {
                            headers.get(k).map(|v| v.as_str())
                        });
                    }
                    match notifier.handle(&event).instrument(span).await {
                        Ok(_) => {
                            let _ = msg.ack().await;
                        }
                        // Not acknowledged: JetStream delivers it again after its ack wait.
                        Err(e) => {
                            tracing::warn!(bus_event_id = %event.id, "notifications: handling failed, will retry: {e:#}")
                        }
                    }
                }
                Err(e) => {
                    tracing::error!("notifications: dropping an undecodable event: {e}");
                    let _ = msg.ack().await;
                }
            }
        }
    }
}

/// Tells fans with an open stream where they stand, each second, from the stored
/// watermark and their registered place.
async fn queue_updates<S: Store>(app: Arc<App<S>>, hub: SseHub, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.wait() => return,
        }
        let Ok(events) = app.inv.list_events().await else { continue };
        for e in events.events {
            let watchers = hub.watchers(&e.event_id);
            if watchers.is_empty() {
                continue;
            }
            let wm = match crate::admission::stored_watermark(&app, &e.event_id).await {
                Ok(Some(wm)) => wm,
                _ => continue,
            };
            for customer in watchers {
                let Ok(trx) = app.store().create_trx() else { continue };
                let Ok(Some(b)) =
                    trx.get(&app.keys().queue_customer(&e.event_id, &customer), true).await
                else {
                    continue;
                };
                let Ok((stamp, rec)) = queue_place::decode_place(&b) else { continue };
                let rank = (stamp != [0u8; 12]).then(|| hex::encode(stamp));
                let claims = QueueTicketClaims {
                    typ: tessera_queue::TYP_TICKET.into(),
                    ticket_id: rec.ticket_id,
                    event_id: e.event_id.clone(),
                    customer_id: customer.clone(),
                    device: String::new(),
                    phase: rec.phase,
                    seq: rec.seq,
                    rank,
                    iat_ms: rec.joined_at_ms,
                    exp_ms: u64::MAX,
                    kid: String::new(),
                    waiting_list: false,
                };
                let view = tessera_queue::view(&claims, &wm);
                hub.queue_update(
                    &customer,
                    QueueUpdate {
                        event_id: e.event_id.clone(),
                        ahead: view.ahead,
                        estimated_wait_s: view.estimated_wait_s,
                        admitted: view.state == tessera_api::queue::QueueStatusState::Admitted,
                    },
                );
            }
        }
    }
}
