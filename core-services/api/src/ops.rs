//! Operator API: sale control, admission rates and region control.

use serde::{Deserialize, Serialize};

use crate::ids::{CustomerId, RegionId};

/// `POST /v1/dev/token` (local development issuer only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevTokenRequest {
    pub customer_id: CustomerId,
    /// Adds the `operator` and `gate` roles.
    #[serde(default)]
    pub operator: bool,
    /// More roles (`viewer`, `operator`, `admin`, `gate`); every token has `fan`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
    /// Put into the token's `email` claim (where notifications go).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevTokenResponse {
    pub token: String,
    pub expires_at_ms: u64,
}

/// `PUT /v1/ops/events/{event_id}/admission`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionRateRequest {
    /// Fans admitted per second; the controller may go lower when inventory or health say so.
    pub rate_per_s: f64,
}

/// How a region takes traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionMode {
    /// Takes new traffic.
    Active,
    /// Takes no new traffic; requests already in flight finish.
    Draining,
}

/// A region as the router sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionStatus {
    pub region: RegionId,
    pub url: String,
    pub mode: RegionMode,
    pub healthy: bool,
    /// `closed` (traffic flows), `open` (tripped) or `half_open` (probing).
    pub breaker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_latency_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionList {
    pub regions: Vec<RegionStatus>,
    /// Version of the replicated region-state document.
    pub version: u64,
}

/// `POST /v1/ops/regions/{region}/drain`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Drain even when it is the last healthy region.
    #[serde(default)]
    pub force: bool,
}
