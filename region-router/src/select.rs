//! Choosing regions for a request. Pure.
//!
//! The order a request tries regions in:
//! 1. the region named by `x-tessera-region`, if it takes traffic;
//! 2. the others that take traffic, nearest first by the latency table row of the fan's
//!    PoP (`fly-region`, else `x-tessera-pop`, else the router's own PoP); regions the
//!    row does not list follow, in configuration order;
//! 3. only when none of those is left: active regions whose health is in doubt (not
//!    proven down by an open breaker), as a last resort.
//!
//! Draining regions never get new requests.

use std::collections::BTreeMap;

use http::HeaderMap;
use tessera_api::RegionId;
use tessera_api::headers::{EDGE_POP, FLY_REGION, REGION_HINT};
use tessera_api::ops::RegionMode;

use crate::breaker::BreakerState;

/// What the router knows about a region when it routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: RegionId,
    pub mode: RegionMode,
    pub healthy: bool,
    pub breaker: BreakerState,
}

/// Where a request would like to go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteHint {
    /// `x-tessera-region`.
    pub region: Option<String>,
    /// `fly-region`, else `x-tessera-pop`.
    pub pop: Option<String>,
}

impl RouteHint {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
        };
        RouteHint { region: text(REGION_HINT), pop: text(FLY_REGION).or_else(|| text(EDGE_POP)) }
    }
}

/// PoP → region → latency in ms.
pub type LatencyTable = BTreeMap<String, BTreeMap<String, u32>>;

/// The regions to try, in order. `candidates` is in configuration order.
pub fn rank(
    candidates: &[Candidate],
    hint: &RouteHint,
    table: &LatencyTable,
    default_pop: Option<&str>,
) -> Vec<RegionId> {
    let pop = hint.pop.as_deref().or(default_pop);
    let row = pop.and_then(|p| table.get(p));
    let latency =
        |c: &Candidate| row.and_then(|r| r.get(c.id.as_str()).copied()).unwrap_or(u32::MAX);

    let takes_traffic = |c: &&Candidate| {
        c.mode == RegionMode::Active && c.healthy && c.breaker != BreakerState::Open
    };
    // Half-open regions may serve a trial request, but only after every closed one.
    let mut ready: Vec<(usize, &Candidate)> =
        candidates.iter().enumerate().filter(|(_, c)| takes_traffic(c)).collect();
    ready.sort_by_key(|(i, c)| {
        let preferred = hint.region.as_deref() == Some(c.id.as_str());
        (!preferred, c.breaker == BreakerState::HalfOpen, latency(c), *i)
    });
    let mut out: Vec<RegionId> = ready.into_iter().map(|(_, c)| c.id.clone()).collect();
    if out.is_empty() {
        let mut doubtful: Vec<(usize, &Candidate)> = candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.mode == RegionMode::Active && c.breaker != BreakerState::Open)
            .collect();
        doubtful.sort_by_key(|(i, c)| (latency(c), *i));
        out = doubtful.into_iter().map(|(_, c)| c.id.clone()).collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, mode: RegionMode, healthy: bool, breaker: BreakerState) -> Candidate {
        Candidate { id: RegionId::parse(id).unwrap(), mode, healthy, breaker }
    }

    fn table() -> LatencyTable {
        let mut t = LatencyTable::new();
        t.insert(
            "fra".into(),
            [("eu-west".into(), 10), ("us-east".into(), 90), ("ap-south".into(), 150)].into(),
        );
        t.insert("iad".into(), [("us-east".into(), 5), ("eu-west".into(), 85)].into());
        t
    }

    fn check(candidates: &[Candidate], hint: RouteHint, expect: &[&str]) {
        let got = rank(candidates, &hint, &table(), Some("fra"));
        let got: Vec<&str> = got.iter().map(RegionId::as_str).collect();
        assert_eq!(got, expect, "{hint:?}");
    }

    fn hint(region: Option<&str>, pop: Option<&str>) -> RouteHint {
        RouteHint { region: region.map(Into::into), pop: pop.map(Into::into) }
    }

    use BreakerState::*;
    use RegionMode::*;

    #[test]
    fn nearest_region_first_from_the_fans_pop() {
        let all = [
            c("us-east", Active, true, Closed),
            c("eu-west", Active, true, Closed),
            c("ap-south", Active, true, Closed),
        ];
        check(&all, hint(None, Some("iad")), &["us-east", "eu-west", "ap-south"]);
        check(&all, hint(None, None), &["eu-west", "us-east", "ap-south"]);
        check(&all, hint(None, Some("syd")), &["us-east", "eu-west", "ap-south"]);
        check(&all, hint(Some("ap-south"), Some("iad")), &["ap-south", "us-east", "eu-west"]);
    }

    #[test]
    fn skips_draining_down_and_tripped_regions() {
        let regions = [
            c("us-east", Draining, true, Closed),
            c("eu-west", Active, false, Closed),
            c("ap-south", Active, true, Closed),
        ];
        check(&regions, hint(Some("us-east"), Some("iad")), &["ap-south"]);
        let regions = [
            c("us-east", Active, true, Open),
            c("eu-west", Active, true, HalfOpen),
            c("ap-south", Active, true, Closed),
        ];
        check(&regions, hint(None, Some("fra")), &["ap-south", "eu-west"]);
    }

    #[test]
    fn falls_back_to_doubtful_regions_but_never_to_draining_or_open_ones() {
        let regions = [
            c("us-east", Active, false, Closed),
            c("eu-west", Draining, true, Closed),
            c("ap-south", Active, false, Open),
        ];
        check(&regions, hint(None, None), &["us-east"]);
        let regions = [c("us-east", Draining, true, Closed), c("eu-west", Active, false, Open)];
        check(&regions, hint(None, None), &[]);
    }

    #[test]
    fn hints_come_from_fly_and_edge_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-tessera-pop", "IAD".parse().unwrap());
        assert_eq!(RouteHint::from_headers(&h), hint(None, Some("iad")));
        h.insert("fly-region", "fra".parse().unwrap());
        h.insert("x-tessera-region", "eu-west".parse().unwrap());
        assert_eq!(RouteHint::from_headers(&h), hint(Some("eu-west"), Some("fra")));
    }
}
