//! Server-sent events for the fan's page: `GET /v1/events/{event_id}/stream`.
//!
//! The fan authenticates with their identity token, as `Authorization: Bearer <jwt>` or
//! as `?access_token=<jwt>` (browsers' `EventSource` cannot set headers). The stream sends:
//!
//! | SSE `event:` | `data:` | when |
//! |---|---|---|
//! | `ready` | `{"event_id": ...}` | at once: the subscription is live |
//! | `hold.expiring`, `hold.released`, `order.completed`, `order.failed`, `order.refunded` | the `BusEvent` JSON (`id:` is its id) | the fan's own holds and orders for this event |
//! | `queue.position` | [`QueueUpdate`] | the fan's place moved |
//! | `queue.your_turn` | [`QueueUpdate`] | once, when the fan is admitted |
//!
//! plus keep-alive comments. Fan-out is a `tokio::sync::broadcast` channel per connected
//! customer; nothing is stored, so a fan who was offline reads their orders instead.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures::{Stream, StreamExt as _};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tessera_api::bus::{BusEvent, BusEventBody};
use tessera_api::{CustomerId, ErrorCode, EventId};
use tessera_common::Clock;
use tessera_identity::TokenError;
use tessera_identity::oidc::Oidc;
use tessera_runtime::ApiError;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

/// A fan's place in the waiting room, as the core computes it from the admission
/// watermark and hands to [`SseHub::queue_update`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueUpdate {
    pub event_id: EventId,
    /// Fans ahead of this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ahead: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_wait_s: Option<u64>,
    /// It's this fan's turn: they may pick seats now.
    pub admitted: bool,
}

#[derive(Debug)]
struct FanMessage {
    event_id: EventId,
    name: &'static str,
    id: Option<String>,
    data: String,
}

#[derive(Debug)]
struct Fan {
    tx: broadcast::Sender<Arc<FanMessage>>,
    /// Open streams per event.
    streams: HashMap<EventId, usize>,
    /// The last queue update sent per event.
    queue: HashMap<EventId, QueueUpdate>,
}

#[derive(Debug)]
struct HubInner {
    capacity: usize,
    fans: Mutex<HashMap<CustomerId, Fan>>,
}

/// Routes events to the streams of the fans they concern. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SseHub {
    inner: Arc<HubInner>,
}

impl Default for SseHub {
    fn default() -> Self {
        SseHub::new(64)
    }
}

/// Whose stream a bus event belongs on, if any.
fn audience(event: &BusEvent) -> Option<&CustomerId> {
    match &event.body {
        BusEventBody::HoldExpiring { customer_id, .. }
        | BusEventBody::HoldReleased { customer_id, .. }
        | BusEventBody::OrderCompleted { customer_id, .. }
        | BusEventBody::OrderFailed { customer_id, .. }
        | BusEventBody::OrderRefunded { customer_id, .. } => Some(customer_id),
        _ => None,
    }
}

impl SseHub {
    /// `capacity` messages are buffered per fan; a stream that falls further behind is
    /// told with a `lagged` event and goes on from the newest.
    pub fn new(capacity: usize) -> Self {
        SseHub {
            inner: Arc::new(HubInner {
                capacity: capacity.max(1),
                fans: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn send(&self, customer: &CustomerId, msg: FanMessage) {
        if let Some(fan) = self.inner.fans.lock().get(customer) {
            // No receiver means the last stream just closed; nothing to do.
            let _ = fan.tx.send(Arc::new(msg));
        }
    }

    /// Pushes a bus event to its fan's open streams (hold and order events only).
    pub fn publish_bus_event(&self, event: &BusEvent) {
        let Some(customer) = audience(event) else { return };
        let Ok(data) = serde_json::to_string(event) else { return };
        self.send(
            customer,
            FanMessage {
                event_id: event.event_id.clone(),
                name: event.body.kind(),
                id: Some(event.id.clone()),
                data,
            },
        );
    }

    /// The hook for the admission watermark: call it with a connected fan's new place
    /// (see [`SseHub::watchers`]). Sends `queue.position` when the place changed, and
    /// `queue.your_turn` the first time the fan is admitted.
    pub fn queue_update(&self, customer: &CustomerId, update: QueueUpdate) {
        let mut fans = self.inner.fans.lock();
        let Some(fan) = fans.get_mut(customer) else { return };
        let previous = fan.queue.get(&update.event_id);
        if previous == Some(&update) {
            return;
        }
        let was_admitted = previous.is_some_and(|p| p.admitted);
        let name =
            if update.admitted && !was_admitted { "queue.your_turn" } else { "queue.position" };
        let Ok(data) = serde_json::to_string(&update) else { return };
        fan.queue.insert(update.event_id.clone(), update.clone());
        let _ =
            fan.tx.send(Arc::new(FanMessage { event_id: update.event_id, name, id: None, data }));
    }

    /// Fans with an open stream for `event_id`: whom the watermark loop should compute
    /// places for.
    pub fn watchers(&self, event_id: &EventId) -> Vec<CustomerId> {
        let fans = self.inner.fans.lock();
        fans.iter()
            .filter(|(_, f)| f.streams.contains_key(event_id))
            .map(|(c, _)| c.clone())
            .collect()
    }

    fn subscribe(&self, customer: &CustomerId, event_id: &EventId) -> Subscription {
        let mut fans = self.inner.fans.lock();
        let fan = fans.entry(customer.clone()).or_insert_with(|| Fan {
            tx: broadcast::channel(self.inner.capacity).0,
            streams: HashMap::new(),
            queue: HashMap::new(),
        });
        *fan.streams.entry(event_id.clone()).or_default() += 1;
        metrics::gauge!("tessera_notifications_sse_streams").increment(1.0);
        Subscription {
            rx: fan.tx.subscribe(),
            last_queue: fan.queue.get(event_id).cloned(),
            guard: StreamGuard {
                hub: self.clone(),
                customer: customer.clone(),
                event_id: event_id.clone(),
            },
        }
    }

    /// The SSE route, ready to merge into the core's router.
    pub fn router(
        &self,
        verifier: Arc<Oidc>,
        clock: Arc<dyn Clock>,
        keep_alive: Duration,
    ) -> Router {
        let state = SseState { hub: self.clone(), verifier, clock, keep_alive };
        Router::new().route("/v1/events/{event_id}/stream", get(stream)).with_state(state)
    }
}

struct Subscription {
    rx: broadcast::Receiver<Arc<FanMessage>>,
    last_queue: Option<QueueUpdate>,
    guard: StreamGuard,
}

/// Forgets a stream when the client goes away.
struct StreamGuard {
    hub: SseHub,
    customer: CustomerId,
    event_id: EventId,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        metrics::gauge!("tessera_notifications_sse_streams").decrement(1.0);
        let mut fans = self.hub.inner.fans.lock();
        let Some(fan) = fans.get_mut(&self.customer) else { return };
        if let Some(n) = fan.streams.get_mut(&self.event_id) {
            *n -= 1;
            if *n == 0 {
                fan.streams.remove(&self.event_id);
                fan.queue.remove(&self.event_id);
            }
        }
        if fan.streams.is_empty() {
            fans.remove(&self.customer);
        }
    }
}

#[derive(Clone)]
struct SseState {
    hub: SseHub,
    verifier: Arc<Oidc>,
    clock: Arc<dyn Clock>,
    keep_alive: Duration,
}

#[derive(Deserialize)]
struct StreamQuery {
    access_token: Option<String>,
}

fn token_error(e: TokenError) -> ApiError {
    let reason = format!("identity token refused: {}", e.reason());
    match e {
        TokenError::Expired => {
            ApiError::refused(ErrorCode::TokenExpired, "the identity token has expired", reason)
        }
        _ => ApiError::refused(ErrorCode::InvalidToken, "the identity token is not valid", reason),
    }
}

async fn stream(
    State(st): State<SseState>,
    Path(event_id): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, ApiError> {
    let header_token = match headers.get(http::header::AUTHORIZATION) {
        Some(v) => Some(v.to_str().ok().and_then(tessera_identity::bearer).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidToken, "expected `Authorization: Bearer <token>`")
        })?),
        None => None,
    };
    let token = header_token.or(q.access_token.as_deref()).ok_or_else(|| {
        ApiError::new(ErrorCode::Unauthenticated, "an identity token is required")
    })?;
    let claims = st.verifier.verify(token, st.clock.now_ms()).await.map_err(token_error)?;
    let event_id = EventId::parse(&event_id)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("bad event id: {e}")))?;

    let Subscription { rx, last_queue, guard } = st.hub.subscribe(&claims.sub, &event_id);
    let ready = Event::default()
        .event("ready")
        .data(serde_json::json!({ "event_id": event_id }).to_string());
    let mut first = vec![Ok(ready)];
    if let Some(q) = last_queue.and_then(|q| serde_json::to_string(&q).ok()) {
        first.push(Ok(Event::default().event("queue.position").data(q)));
    }
    let wanted = event_id.clone();
    let live = BroadcastStream::new(rx).filter_map(move |m| {
        let out = match m {
            Ok(msg) if msg.event_id == wanted => {
                let mut ev = Event::default().event(msg.name).data(msg.data.clone());
                if let Some(id) = &msg.id {
                    ev = ev.id(id.clone());
                }
                Some(Ok(ev))
            }
            Ok(_) => None,
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                Some(Ok(Event::default().event("lagged").data(format!("{{\"missed\":{n}}}"))))
            }
        };
        futures::future::ready(out)
    });
    let stream = futures::stream::iter(first).chain(live).map(move |item| {
        // The guard lives as long as the stream: dropping the connection unsubscribes.
        let _ = &guard;
        item
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(st.keep_alive)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_updates_say_your_turn_once_and_skip_repeats() {
        let hub = SseHub::new(16);
        let fan = CustomerId::parse("fan-1").unwrap();
        let ev = EventId::parse("show").unwrap();
        let mut sub = hub.subscribe(&fan, &ev);
        assert_eq!(hub.watchers(&ev), vec![fan.clone()]);
        let up = |ahead, admitted| QueueUpdate {
            event_id: ev.clone(),
            ahead: Some(ahead),
            estimated_wait_s: None,
            admitted,
        };
        hub.queue_update(&fan, up(10, false));
        hub.queue_update(&fan, up(10, false));
        hub.queue_update(&fan, up(0, true));
        hub.queue_update(&fan, up(0, true));
        let names: Vec<&str> =
            std::iter::from_fn(|| sub.rx.try_recv().ok()).map(|m| m.name).collect();
        assert_eq!(names, ["queue.position", "queue.your_turn"]);
        drop(sub);
        assert!(hub.watchers(&ev).is_empty());
        // Nobody listening: updates go nowhere and leave nothing behind.
        hub.queue_update(&fan, up(3, false));
        assert!(hub.inner.fans.lock().is_empty());
    }
}
