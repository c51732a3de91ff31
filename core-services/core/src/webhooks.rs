//! Payment webhook deliveries, each accepted once.
//!
//! A delivery is named by its signed timestamp and the provider's event id; the first
//! request records `("whk", signed_at_s, event_id)` in the store (all regions share it), so
//! the same signed request sent again, to any region, is a replay. Records older than the
//! signature tolerance are cleared: such a request fails the timestamp check anyway.

use std::sync::Arc;
use std::time::Duration;

use tessera_payments::webhook::VerifiedDelivery;
use tessera_store::{RangeRequest, Store, Transaction as _, TrxError};

use crate::App;
use crate::admission::tokio_util_shutdown::Shutdown;

/// Records `delivery`; `false` when it was recorded before (a replay).
pub async fn record_delivery<S: Store>(
    app: &App<S>,
    delivery: &VerifiedDelivery,
    _now_ms: u64,
) -> anyhow::Result<bool> {
    let key = app.keys().webhook_delivery(delivery.signed_at_s, &delivery.event.id);
    tessera_store::run(app.store(), |trx, maybe_committed| {
        let key = key.clone();
        async move {
            if trx.get(&key, false).await?.is_some() {
                // A retry of our own commit that did land is not a replay.
                return Ok(maybe_committed.0);
            }
            trx.set(&key, &[]);
            Ok::<_, TrxError<std::convert::Infallible>>(true)
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("record a webhook delivery: {e:?}"))
}

/// Clears delivery records older than the signature tolerance, every minute.
pub async fn run_cleanup<S: Store>(app: Arc<App<S>>, shutdown: Shutdown) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.wait() => return,
        }
        let now_s = app.clock.now_ms() / 1000;
        let horizon = now_s.saturating_sub(app.config.payments.webhook_tolerance_s + 60);
        let (begin, end) = app.keys().webhook_deliveries_before(horizon);
        let result = tessera_store::run(app.store(), |trx, _| {
            let (begin, end) = (begin.clone(), end.clone());
            async move {
                let old = trx
                    .get_range(&RangeRequest::new(begin.clone(), end.clone()).limit(1), true)
                    .await?;
                if !old.is_empty() {
                    trx.clear_range(&begin, &end);
                }
                Ok::<_, TrxError<std::convert::Infallible>>(())
            }
        })
        .await;
        if let Err(e) = result {
            tracing::debug!("clearing old webhook deliveries failed, trying again later: {e:?}");
        }
    }
}
