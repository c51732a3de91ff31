//! Background work of a core process: the hold sweeper, the order reconciler, clearing old
//! webhook deliveries and refreshing the identity issuer's keys. All are safe to run in
//! every region at once (their transactions check state before acting).

use std::sync::Arc;
use std::time::Duration;

use tessera_store::Store;

use crate::App;
use crate::admission::tokio_util_shutdown::Shutdown;

/// Ends expired holds every `sweep_interval_ms`.
pub async fn run_sweeper<S: Store>(app: Arc<App<S>>, shutdown: Shutdown) {
    let mut interval = tokio::time::interval(Duration::from_millis(
        app.config.inventory.sweep_interval_ms.max(20),
    ));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.wait() => return,
        }
        match app.inv.sweep(10_000).await {
            Ok(r) if r.expired > 0 || r.notices > 0 => {
                tracing::debug!(expired = r.expired, notices = r.notices, "sweeper");
                app.outbox_written.notify_one();
            }
            Ok(_) => {}
            Err(e) if e.is_client_error() => {}
            Err(e) => tracing::warn!("sweeper failed, retrying: {e:#}"),
        }
    }
}

/// Settles orders whose driver went away or whose payment outcome was unknown.
pub async fn run_reconciler<S: Store>(app: Arc<App<S>>, shutdown: Shutdown) {
    let mut interval = tokio::time::interval(Duration::from_millis(
        app.config.inventory.reconcile_interval_ms.max(50),
    ));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.wait() => return,
        }
        match app.orders.reconcile(500).await {
            Ok(r) if r.driven > 0 => {
                tracing::info!(
                    examined = r.examined,
                    driven = r.driven,
                    settled = r.settled,
                    "reconciler"
                );
                app.outbox_written.notify_one();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("reconciler failed, retrying: {e:#}"),
        }
    }
}

/// The background tasks of a running core, and the routes they serve.
#[derive(Debug, Default)]
pub struct Tasks {
    handles: Vec<tokio::task::JoinHandle<()>>,
    /// Routes contributed by background subsystems (projection reads, SSE).
    pub routes: Option<axum::Router>,
}

impl Tasks {
    /// Waits for every task to stop (after the shutdown signal).
    pub async fn join(self) {
        for h in self.handles {
            let _ = h.await;
        }
    }
}

/// Starts the sweeper, the reconciler, the admission controller, and the bus and
/// notification tasks ([`crate::bus::start`]).
pub async fn spawn_all<S: Store>(app: Arc<App<S>>, shutdown: Shutdown) -> anyhow::Result<Tasks> {
    let mut tasks = Tasks::default();
    tasks.handles.push(tokio::spawn(run_sweeper(app.clone(), shutdown.clone())));
    tasks.handles.push(tokio::spawn(run_reconciler(app.clone(), shutdown.clone())));
    tasks
        .handles
        .push(tokio::spawn(crate::admission::run_controller(app.clone(), shutdown.clone())));
    if app.store().backend_name() == "fdb" {
        tasks
            .handles
            .push(tokio::spawn(crate::store_status::run_poller(app.clone(), shutdown.clone())));
    }
    tasks.handles.push(tokio::spawn(crate::webhooks::run_cleanup(app.clone(), shutdown.clone())));
    if let Some(refresh) = app.identity.spawn_refresh() {
        // Aborted with the process; it only keeps the issuer's keys fresh.
        let shutdown = shutdown.clone();
        tasks.handles.push(tokio::spawn(async move {
            shutdown.wait().await;
            refresh.abort();
        }));
    }
    let (handles, routes) = crate::bus::start(app, shutdown).await?;
    tasks.handles.extend(handles);
    tasks.routes = Some(routes);
    Ok(tasks)
}
