//! `cargo xtask e2e failover`: lose a whole region in the middle of an on-sale.
//!
//! The real stack (edge host, router, a core per region, NATS hub and leaves) sells an
//! event to a steady stream of fans through the edge. Then:
//! 1. the core of the region serving the traffic is killed with SIGKILL; traffic must move
//!    to a healthy region, fans keep their waiting-room places and their holds;
//! 2. the region is restarted and traffic must return to it;
//! 3. an operator drains it through the router: new traffic must leave within a second
//!    while checkouts in flight there complete; then it is restored.
//!
//! Afterwards every acknowledged order must still be there and no seat may be sold twice.
//! The last line is `key=value` pairs: besides the first success anywhere after the kill
//! (`failover_ms`), how long each fan who was buying at the kill waited for a success of
//! their own (`worst_fan_wait_ms`, `fan_wait_p99_ms`) and the p99 latency of the calls
//! made during the failover. The process fails when a floor is missed (`failover_ms` <=
//! 2000, `worst_fan_wait_ms` <= 5000, `drain_ms` <= 1000) or when any fan saw an error
//! (no answer, or a 5xx) from the kill on: requests in flight must be retried or answered,
//! never lost. Nothing lost, nothing oversold.
//!
//! Flags: `--regions <n>` (2 or 3), `--workers <n>`, `--down-s <seconds>`,
//! `--payment-latency-ms <min>-<max>` (the payment simulator's latency), `--ci`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tessera_e2e::fan::{Api, Operator};
use tessera_e2e::scenarios::quantile;
use tessera_e2e::stack::{Stack, StackOptions};
use tessera_e2e::traffic::{
    self, Call, Crowd, SharedFans, Traffic, TrafficPlan, admitted_fan, check_availability,
    check_orders, ms, open_event, projections_converge,
};

/// Lose a whole region in the middle of an on-sale, bring it back, then drain it.
#[derive(clap::Parser, Debug)]
struct Args {
    /// Regions in the stack (2 or 3).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=3))]
    regions: u8,
    /// Buying workers.
    #[arg(long, default_value_t = 12)]
    workers: usize,
    /// How long the killed core stays down, in seconds.
    #[arg(long = "down-s", default_value_t = 8)]
    down_s: u64,
    /// The payment simulator's latency range, `<min>-<max>` milliseconds.
    #[arg(long = "payment-latency-ms", default_value = "50-250", value_parser = latency_range)]
    payment_latency_ms: (u64, u64),
    /// What `cargo xtask test` runs (the same run).
    #[arg(long)]
    ci: bool,
}

fn latency_range(v: &str) -> Result<(u64, u64), String> {
    let (lo, hi) = v.split_once('-').ok_or("takes <min>-<max>, e.g. 50-250")?;
    let lo: u64 = lo.trim().parse().map_err(|e| format!("min: {e}"))?;
    let hi: u64 = hi.trim().parse().map_err(|e| format!("max: {e}"))?;
    if lo > hi {
        return Err(format!("min {lo} is above max {hi}"));
    }
    Ok((lo, hi))
}

fn say(s: &str) {
    eprintln!("[failover] {s}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    traffic::exit_with("failover", run(args).await);
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let mut options = StackOptions::for_tests("failover")?;
    options.regions = ["eu-west", "us-east", "ap-south"][..usize::from(args.regions)]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // Payments take a little while, so checkouts are in flight when things happen.
    options.paysim_toml = format!(
        "[latency]\nmin_ms = {}\nmax_ms = {}\n",
        args.payment_latency_ms.0, args.payment_latency_ms.1
    );
    let mut stack = Stack::start(options, &|s| say(s)).await?;
    let router = Api::new(stack.http.clone(), stack.urls.router.clone());
    let crowd = Arc::new(Crowd::new(
        router.clone(),
        stack.urls.edge.clone().context("the stack has no edge")?,
    ));
    let op = Operator::new(router.clone()).await?;
    let root = stack.options.repo_root.clone();

    let event = format!("failover-{}", std::process::id());
    open_event(&op, &root, &event, 1_000.0).await?;
    // A second sale that admits nobody: its fans wait in line through everything, so we
    // can see that their places survive.
    let line_event = format!("{event}-line");
    open_event(&op, &root, &line_event, 0.0).await?;
    let mut line = Vec::new();
    for i in 0..12 {
        let mut fan = crowd.fan(&format!("line-{i}"), None).await?;
        let joined = fan.join(&line_event).await?;
        anyhow::ensure!(joined.ok(), "join the line: {} {}", joined.status, joined.body);
        let mut status = fan.status(&line_event).await?;
        // The first watermark of a new sale takes a moment to reach the edge; until it
        // does, the fan waits without a place estimate.
        for _ in 0..100 {
            if status.ok() && status.body["ahead"].is_u64() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            status = fan.status(&line_event).await?;
        }
        anyhow::ensure!(
            status.ok() && status.body["ahead"].is_u64(),
            "line status without a place after 10 s: {} {}",
            status.status,
            status.body
        );
        line.push((fan, status.body["ahead"].as_u64(), status.body["ticket_id"].clone()));
    }

    say("admitting the first fans");
    let mut fans = Vec::new();
    for i in 0..args.workers * 2 {
        fans.push(
            admitted_fan(&crowd, &event, &format!("fan-{i}"), None, Duration::from_secs(30))
                .await?,
        );
    }
    let plan = TrafficPlan {
        event: event.clone(),
        workers: args.workers,
        // An admission is good for one hold: each purchase is a new fan.
        cycles_per_fan: 1,
        think: Duration::from_millis(300),
        pin_region: None,
        sections: ["A", "B", "C", "D", "E", "F", "FLOOR"].iter().map(|s| s.to_string()).collect(),
        name: "buyer".into(),
    };
    let traffic = Traffic::start(plan, crowd.clone(), Arc::new(SharedFans::new(fans)));
    tokio::time::sleep(Duration::from_secs(4)).await;

    // The region carrying the traffic.
    let served = served_counts(&traffic.record.calls(), None);
    let victim = served
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(r, _)| r.clone())
        .context("no traffic was served")?;
    say(&format!("traffic so far by region: {served:?}; killing core-{victim}"));
    stack.kill(&format!("core-{victim}"))?;
    let t_kill = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.down_s)).await;

    say("checking the waiting line while the region is down");
    let mut places_kept = 0;
    for (fan, ahead_before, ticket_before) in &mut line {
        let r = fan.status(&line_event).await?;
        let ahead_now = r.body["ahead"].as_u64();
        let kept = r.ok()
            && r.body["ticket_id"] == *ticket_before
            && match (*ahead_before, ahead_now) {
                (Some(b), Some(n)) => n <= b,
                _ => false,
            };
        if kept {
            places_kept += 1;
        } else {
            say(&format!(
                "{} lost its place: before {ahead_before:?}, now {} {}",
                fan.customer, r.status, r.body
            ));
        }
    }

    say(&format!("restarting core-{victim}"));
    stack.restart(&format!("core-{victim}")).await?;
    let t_back = Instant::now();
    let restore_ms = wait_for_traffic(&traffic, &victim, t_back, Duration::from_secs(15)).await;

    say(&format!("draining {victim} through the router"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let auth = format!("Bearer {}", op.token);
    let t_drain = Instant::now();
    let r = router
        .post(&format!("/v1/ops/regions/{victim}/drain"), &[("authorization", &auth)], &json!({}))
        .await?;
    anyhow::ensure!(r.ok(), "drain: {} {}", r.status, r.body);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t_restore = Instant::now();
    let r = router
        .post(&format!("/v1/ops/regions/{victim}/restore"), &[("authorization", &auth)], &json!({}))
        .await?;
    anyhow::ensure!(r.ok(), "restore: {} {}", r.status, r.body);
    tokio::time::sleep(Duration::from_secs(1)).await;

    say("stopping the traffic");
    let record = traffic.stop().await;
    let calls = record.calls();

    // Failover: how long until the healthy region answers successfully again, counting
    // requests in flight at the kill and those started after it; and the worst wait of a
    // fan who was buying at that moment (a checkout caught mid-payment may wait longer,
    // for the payment's outcome).
    let recovered_after =
        |c: &Call| c.ok() && c.ended >= t_kill && c.served_by.as_deref() != Some(victim.as_str());
    let first_success = calls.iter().filter(|c| recovered_after(c)).map(|c| c.ended - t_kill).min();
    // Each fan who was buying at the kill (a call in flight, or one started within a
    // second): how long until that fan's first success from a healthy region. A fan who
    // never got one waits "forever" and fails the run.
    let mut waits: Vec<Duration> = Vec::new();
    let workers: std::collections::BTreeSet<usize> = calls.iter().map(|c| c.worker).collect();
    for w in workers {
        let mine: Vec<&Call> = calls.iter().filter(|c| c.worker == w).collect();
        let active = mine.iter().any(|c| {
            (c.started <= t_kill && c.ended >= t_kill)
                || (c.started >= t_kill && c.started <= t_kill + Duration::from_secs(1))
        });
        let recovered = mine.iter().filter(|c| recovered_after(c)).map(|c| c.ended - t_kill).min();
        if active {
            waits.push(recovered.unwrap_or(Duration::MAX));
        }
    }
    waits.sort();
    let worst_wait = waits.last().copied().unwrap_or_default();
    let wait_p99 = quantile(&waits, 0.99);
    // The latency of every call in flight at the kill or started during the failover.
    let window_end = t_kill + Duration::from_secs(args.down_s);
    let mut during: Vec<Duration> = calls
        .iter()
        .filter(|c| c.ended >= t_kill && c.started <= window_end)
        .map(|c| c.ended - c.started)
        .collect();
    during.sort();
    let call_p99 = quantile(&during, 0.99);
    let failover_ms = first_success.map_or(u128::MAX, ms);
    // Requests in flight must be retried or answered, never lost: any failure a fan saw
    // (no answer, or a 5xx) from the kill to the end of the run fails it.
    let errors_during_failover =
        calls.iter().filter(|c| c.is_error() && c.ended >= t_kill && c.ended <= window_end).count();
    let errors_after_failover =
        calls.iter().filter(|c| c.is_error() && c.ended > window_end).count();
    for c in calls.iter().filter(|c| c.is_error() && c.ended >= t_kill).take(10) {
        say(&format!(
            "error seen by a fan: {} {} {:?} at +{} ms (served by {:?})",
            c.kind,
            c.status,
            c.code,
            ms(c.ended.saturating_duration_since(t_kill)),
            c.served_by
        ));
    }

    // Holds taken in the dead region and paid for after it died.
    let holds = record.holds.lock().clone();
    let carried: Vec<_> = holds
        .iter()
        .filter(|h| h.created < t_kill && h.served_by.as_deref() == Some(victim.as_str()))
        .filter(|h| h.settled.as_ref().is_some_and(|(at, _, _)| *at > t_kill))
        .collect();
    let holds_lost =
        carried.iter().filter(|h| h.settled.as_ref().is_some_and(|(_, ok, _)| !ok)).count();

    // Drain: nothing new may start in the drained region a second after the call. Only
    // calls that also ended before the restore was sent count: one started a moment
    // before it may reach the router after it, and then the victim rightly serves it.
    let after_drain: Vec<&Call> =
        calls.iter().filter(|c| c.started >= t_drain && c.ended < t_restore).collect();
    let drain_ms = after_drain
        .iter()
        .filter(|c| c.served_by.as_deref() == Some(victim.as_str()))
        .map(|c| ms(c.started - t_drain))
        .max()
        .unwrap_or(0);
    let inflight: Vec<&Call> = calls
        .iter()
        .filter(|c| {
            c.started < t_drain
                && c.ended > t_drain
                && c.served_by.as_deref() == Some(victim.as_str())
        })
        .collect();
    let inflight_failed = inflight.iter().filter(|c| !c.ok()).count();

    // Invariants.
    say("checking every acknowledged order and the counts");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Every event reached every region, including those the killed core had committed
    // but not yet published (a peer published them, or it did after its restart).
    let converged = projections_converge(
        &stack.http,
        &router,
        &stack.urls.cores,
        &event,
        Duration::from_secs(20),
    )
    .await?;
    if converged.is_none() {
        say(&format!("inventory: {:?}", traffic::availability(&router, &event).await?));
        for (region, url) in &stack.urls.cores {
            say(&format!(
                "{region}'s projection: {:?}",
                traffic::projection(&stack.http, url, &event).await
            ));
        }
        for (region, url) in &stack.urls.nats_leaves {
            let client = stack.nats_client(url).await?;
            let events =
                traffic::stream_events(&client, &tessera_api::RegionId::parse(region)?).await?;
            say(&format!("{region}'s stream: {:?}", traffic::kinds(&events, &event)));
            let completed: std::collections::BTreeSet<String> = events
                .values()
                .filter_map(|(_, p)| serde_json::from_slice::<serde_json::Value>(p).ok())
                .filter(|v| v["type"] == "order_completed")
                .filter_map(|v| v["order_id"].as_str().map(str::to_owned))
                .collect();
            for a in record.acked().iter().filter(|a| !completed.contains(&a.order_id)).take(8) {
                let at = if a.at >= t_kill {
                    format!("+{}ms", ms(a.at - t_kill))
                } else {
                    format!("-{}ms", ms(t_kill - a.at))
                };
                say(&format!(
                    "  missing order {} served by {:?} at {at} of the kill",
                    a.order_id, a.served_by
                ));
            }
        }
    }
    let acked = record.acked();
    let (lost, oversold_seats, mut problems) = check_orders(&router, &acked).await;
    let (inconsistent, more) = check_availability(&router, &event, &acked).await?;
    problems.extend(more);
    let oversold = oversold_seats + inconsistent;
    for p in problems.iter().take(20) {
        say(p);
    }
    for (what, n) in record.notes.lock().iter() {
        say(&format!("{n} × {what}"));
    }
    let warnings = stack.unexpected_warnings(traffic::EXPECTED_WARNINGS);
    for (line, n) in traffic::group_log_lines(&warnings).iter().take(15) {
        say(&format!("{n} × unexpected log line: {line}"));
    }
    stack.stop();

    let served_after = served_counts(&calls, Some(t_kill));
    say(&format!("served after the kill: {served_after:?}"));
    let ok = failover_ms <= 2_000
        && worst_wait <= Duration::from_secs(5)
        && !waits.is_empty()
        && errors_during_failover == 0
        && errors_after_failover == 0
        && lost == 0
        && oversold == 0
        && drain_ms <= 1_000
        && inflight_failed == 0
        && holds_lost == 0
        && places_kept == line.len()
        && restore_ms.is_some()
        && converged.is_some()
        && !acked.is_empty()
        && warnings.is_empty();
    println!(
        "victim={victim} orders={} fans_at_kill={} fan_wait_p99_ms={} call_p99_during_failover_ms={} errors_after_failover={errors_after_failover} restore_ms={} drain_ms={drain_ms} inflight_at_drain={} inflight_failed={inflight_failed} holds_carried={} holds_lost={holds_lost} queue_places_kept={places_kept}/{} projections_converged_ms={} unexpected_warnings={} failover_ms={failover_ms} worst_fan_wait_ms={} errors_during_failover={errors_during_failover} lost_acknowledged={lost} oversold={oversold}",
        acked.len(),
        waits.len(),
        ms_or_never(wait_p99),
        ms(call_p99),
        restore_ms.map_or(-1, |d| d as i64),
        inflight.len(),
        carried.len(),
        line.len(),
        converged.map_or(-1, |d| ms(d) as i64),
        warnings.len(),
        ms_or_never(worst_wait),
    );
    Ok(ok)
}

/// Milliseconds, or -1 for a wait that never ended.
fn ms_or_never(d: Duration) -> i128 {
    if d == Duration::MAX { -1 } else { ms(d) as i128 }
}

/// Successful calls per serving region (since `since`, if given).
fn served_counts(calls: &[Call], since: Option<Instant>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for c in calls {
        if c.ok() && since.is_none_or(|s| c.started >= s) {
            *out.entry(c.served_by.clone().unwrap_or_else(|| "?".into())).or_default() += 1;
        }
    }
    out
}

/// Milliseconds from `since` until a call started after it was served by `region`.
async fn wait_for_traffic(
    traffic: &Traffic,
    region: &str,
    since: Instant,
    timeout: Duration,
) -> Option<u128> {
    let deadline = since + timeout;
    while Instant::now() < deadline {
        let first = traffic
            .record
            .calls()
            .iter()
            .filter(|c| c.ok() && c.started >= since && c.served_by.as_deref() == Some(region))
            .map(|c| c.ended - since)
            .min();
        if let Some(d) = first {
            return Some(ms(d));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
