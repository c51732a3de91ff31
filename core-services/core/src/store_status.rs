//! FoundationDB's own view of the cluster as metrics, so dashboards and alerts have the
//! figures the embedded store has no equivalent for. On the `fdb` backend every core
//! reads the machine-readable status (the `\xff\xff/status/json` special key) every
//! [`POLL_INTERVAL`] and sets:
//!
//! | metric | from the status |
//! |---|---|
//! | `tessera_store_fdb_datacenter_lag_seconds` | `cluster.datacenter_lag.seconds`: how far the remote region is behind |
//! | `tessera_store_fdb_healthy` | `cluster.data.state.healthy` (1 or 0) |
//! | `tessera_store_fdb_fault_tolerance_zones` | `cluster.fault_tolerance.max_zone_failures_without_losing_data` |
//!
//! The embedded store keeps no such key; the poller does not run there.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tessera_store::{Store, Transaction as _};

use crate::App;
use crate::admission::tokio_util_shutdown::Shutdown;

/// How often the status is read (it is computed by the cluster controller; a few
/// seconds of staleness is fine for alerts that wait minutes).
pub const POLL_INTERVAL: Duration = Duration::from_secs(10);

/// The key FoundationDB answers with its status document.
pub const STATUS_KEY: &[u8] = b"\xff\xff/status/json";

/// The parts of the status document Tessera exports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterStatus {
    pub datacenter_lag_seconds: Option<f64>,
    pub healthy: Option<bool>,
    pub fault_tolerance_zones: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Doc {
    cluster: Cluster,
}
#[derive(Deserialize, Default)]
#[serde(default)]
struct Cluster {
    datacenter_lag: Option<Lag>,
    data: Option<Data>,
    fault_tolerance: Option<FaultTolerance>,
}
#[derive(Deserialize)]
struct Lag {
    seconds: Option<f64>,
}
#[derive(Deserialize)]
struct Data {
    state: Option<DataState>,
}
#[derive(Deserialize)]
struct DataState {
    healthy: Option<bool>,
}
#[derive(Deserialize)]
struct FaultTolerance {
    max_zone_failures_without_losing_data: Option<u64>,
}

/// Reads the fields of [`ClusterStatus`] from a status document; fields the document
/// lacks (a cluster that is recovering reports little) stay `None`.
pub fn parse(json: &[u8]) -> Result<ClusterStatus, serde_json::Error> {
    let doc: Doc = serde_json::from_slice(json)?;
    let c = doc.cluster;
    Ok(ClusterStatus {
        datacenter_lag_seconds: c.datacenter_lag.and_then(|l| l.seconds),
        healthy: c.data.and_then(|d| d.state).and_then(|s| s.healthy),
        fault_tolerance_zones: c
            .fault_tolerance
            .and_then(|f| f.max_zone_failures_without_losing_data),
    })
}

fn export(status: &ClusterStatus) {
    if let Some(lag) = status.datacenter_lag_seconds {
        metrics::gauge!("tessera_store_fdb_datacenter_lag_seconds").set(lag);
    }
    if let Some(healthy) = status.healthy {
        metrics::gauge!("tessera_store_fdb_healthy").set(if healthy { 1.0 } else { 0.0 });
    }
    if let Some(zones) = status.fault_tolerance_zones {
        metrics::gauge!("tessera_store_fdb_fault_tolerance_zones").set(zones as f64);
    }
}

/// Reads and exports the status until `shutdown`. A failed read is logged at debug
/// level: the readiness probe and the store's own errors already report an unreachable
/// cluster.
pub async fn run_poller<S: Store>(app: Arc<App<S>>, shutdown: Shutdown) {
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.wait() => return,
        }
        let read = async {
            let trx = app.store().create_trx()?;
            trx.get(STATUS_KEY, true).await
        };
        match read.await {
            Ok(Some(json)) => match parse(&json) {
                Ok(status) => export(&status),
                Err(e) => tracing::debug!("store status: unreadable status document: {e}"),
            },
            Ok(None) => {}
            Err(e) => tracing::debug!("store status: read failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lag_health_and_fault_tolerance_from_a_two_region_status() {
        // The shape of `status json` of a two-region cluster (fields Tessera ignores
        // trimmed), as documented in FoundationDB's machine-readable status.
        let json = br#"{
          "client": {"database_status": {"available": true, "healthy": true}},
          "cluster": {
            "active_primary_dc": "use1",
            "datacenter_lag": {"seconds": 0.42, "versions": 420000},
            "data": {"state": {"healthy": true, "name": "healthy"}},
            "fault_tolerance": {
              "max_zone_failures_without_losing_availability": 1,
              "max_zone_failures_without_losing_data": 2
            }
          }
        }"#;
        assert_eq!(
            parse(json).unwrap(),
            ClusterStatus {
                datacenter_lag_seconds: Some(0.42),
                healthy: Some(true),
                fault_tolerance_zones: Some(2),
            }
        );
    }

    #[test]
    fn a_recovering_cluster_reports_what_it_has() {
        let json = br#"{"cluster": {"data": {"state": {"healthy": false, "name": "healthy_repartitioning"}}}}"#;
        assert_eq!(
            parse(json).unwrap(),
            ClusterStatus { healthy: Some(false), ..ClusterStatus::default() }
        );
        assert!(parse(b"not json").is_err());
    }
}
