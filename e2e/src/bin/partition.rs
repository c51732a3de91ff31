//! `cargo xtask e2e partition`: cut one region's NATS leaf node off the hub while both
//! regions keep selling, then heal.
//!
//! Fans buy through the edge, pinned to each region (`x-tessera-region`). One region's
//! leaf is cut from the hub for at least 10 s (its core keeps publishing into its own
//! JetStream domain); then the traffic stops and the link heals. Every event must reach
//! both regions, both availability projections (built only from events) must converge to
//! the inventory's counts, and events delivered again must change nothing. "Every event"
//! is every entry the cores wrote to their outboxes, read back from the store's log: an
//! event that reached no stream at all is lost too.
//!
//! The last line is `key=value` pairs with `catchup_ms`, `lost_events` and
//! `duplicate_effects`; the process fails when `catchup_ms` > 5000 or anything is lost or
//! applied twice.
//!
//! Flags: `--cut-s <seconds>` (at least 10), `--workers <n>` per region, `--ci`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tessera_api::RegionId;
use tessera_api::bus::BusEvent;
use tessera_bus::projection::{AppliedPage, ProjectionView};
use tessera_bus::streams::{region_context, stream_name};
use tessera_e2e::fan::{Api, Operator};
use tessera_e2e::stack::{Stack, StackOptions};
use tessera_e2e::traffic::{
    self, Crowd, SharedFans, Traffic, TrafficPlan, admitted_fan, availability, check_availability,
    check_orders, matches_truth, ms, open_event, projection, stream_events,
};
use tessera_fdb_schema::Keyspace;

/// Cut one region's NATS link in the middle of an on-sale, then heal it.
#[derive(clap::Parser, Debug)]
struct Args {
    /// How long the link stays cut, in seconds (at least 10).
    #[arg(long = "cut-s", default_value_t = 12, value_parser = clap::value_parser!(u64).range(10..))]
    cut_s: u64,
    /// Buying workers per region.
    #[arg(long, default_value_t = 5)]
    workers: usize,
    /// What `cargo xtask test` runs (the same run).
    #[arg(long)]
    ci: bool,
}

fn say(s: &str) {
    eprintln!("[partition] {s}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    traffic::exit_with("partition", run(args).await);
}

const CUT: &str = "eu-west";
const OTHER: &str = "us-east";

async fn run(args: Args) -> anyhow::Result<bool> {
    let mut options = StackOptions::for_tests("partition")?;
    options.regions = vec![CUT.into(), OTHER.into()];
    options.cuttable_links = true;
    let mut stack = Stack::start(options, &|s| say(s)).await?;
    let router = Api::new(stack.http.clone(), stack.urls.router.clone());
    let crowd = Arc::new(Crowd::new(
        router.clone(),
        stack.urls.edge.clone().context("the stack has no edge")?,
    ));
    let op = Operator::new(router.clone()).await?;
    let event = format!("partition-{}", std::process::id());
    open_event(&op, &stack.options.repo_root, &event, 1_000.0).await?;

    // Everyone is admitted before the cut: the waiting room is not what this tests.
    say("admitting fans");
    let mut traffics = Vec::new();
    for region in [CUT, OTHER] {
        let mut fans = Vec::new();
        for i in 0..args.workers * 6 {
            fans.push(
                admitted_fan(
                    &crowd,
                    &event,
                    &format!("{region}-fan-{i}"),
                    Some(region),
                    Duration::from_secs(30),
                )
                .await?,
            );
        }
        let plan = TrafficPlan {
            event: event.clone(),
            workers: args.workers,
            // An admission is good for one hold: each purchase is a new fan.
            cycles_per_fan: 1,
            think: Duration::from_millis(100),
            pin_region: Some(region.into()),
            sections: ["A", "B", "C", "D", "E", "F", "FLOOR"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            name: format!("{region}-extra"),
        };
        traffics
            .push((region, Traffic::start(plan, crowd.clone(), Arc::new(SharedFans::new(fans)))));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let cut_region = RegionId::parse(CUT)?;
    say(&format!(
        "cutting {CUT}'s leaf node off the hub for {:?}",
        Duration::from_secs(args.cut_s)
    ));
    stack.nats.cut(&cut_region)?;
    let t_cut = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.cut_s)).await;

    say("stopping the traffic, then healing");
    let mut records = Vec::new();
    for (region, t) in traffics {
        records.push((region, t.stop().await));
    }
    let t_stop = Instant::now();
    stack.nats.heal(&cut_region)?;
    let t_heal = Instant::now();

    let mut sold_during_cut = BTreeMap::new();
    let mut acked = Vec::new();
    for (region, record) in &records {
        let n = record
            .acked()
            .iter()
            .filter(|a| a.at >= t_cut && a.at <= t_stop && a.served_by.as_deref() == Some(*region))
            .count();
        sold_during_cut.insert(region.to_string(), n);
        acked.extend(record.acked());
        for (what, n) in record.notes.lock().iter() {
            say(&format!("{region}: {n} × {what}"));
        }
    }
    say(&format!("orders completed during the cut, by region: {sold_during_cut:?}"));

    // Catch-up: both projections equal the inventory's counts and hold the same events.
    let cores = stack.urls.cores.clone();
    let truth = availability(&router, &event).await?;
    let mut catchup_ms = None;
    let deadline = t_heal + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut converged = true;
        let mut applied = BTreeSet::new();
        for url in cores.values() {
            match projection(&stack.http, url, &event).await {
                Ok(view) => {
                    converged &= matches_truth(&view, &truth);
                    applied.insert(view.events_applied);
                }
                Err(_) => converged = false,
            }
        }
        if converged && applied.len() == 1 {
            catchup_ms = Some(ms(t_heal.elapsed()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    say(&format!("caught up after {catchup_ms:?} ms"));
    if catchup_ms.is_none() {
        say(&format!("truth: {truth:?}"));
        for (region, url) in &cores {
            say(&format!("{region}: {:?}", projection(&stack.http, url, &event).await));
        }
        for (region, url) in &stack.urls.nats_leaves {
            let client = stack.nats_client(url).await?;
            let js = region_context(&client, &RegionId::parse(region)?);
            match js.get_stream(stream_name(&RegionId::parse(region)?)).await {
                Ok(mut st) => {
                    let info = st.info().await?;
                    say(&format!(
                        "{region} stream: {} messages, sources {:?}",
                        info.state.messages,
                        info.sources
                            .iter()
                            .map(|s| (s.name.clone(), s.lag, s.active))
                            .collect::<Vec<_>>()
                    ));
                }
                Err(e) => say(&format!("{region} stream: {e}")),
            }
        }
    }

    // What must have been delivered: every entry written to the regions' outboxes, read
    // from the store's log (the relays delete entries once published, and comparing the
    // streams with their own union would not see an event no stream got).
    let written = outbox_history(&stack)?;
    say(&format!("{} events were written to the outboxes during the run", written.len()));
    // Every one of them in both regions' streams (the last ones written may still be on
    // their way: at most 10 s), and in both projections.
    let mut streams = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for (region, url) in &stack.urls.nats_leaves {
            let client = stack.nats_client(url).await?;
            let events = stream_events(&client, &RegionId::parse(region)?)
                .await
                .with_context(|| format!("read {region}'s stream at {url}"))?;
            streams.insert(region.clone(), events);
        }
        let complete = streams
            .values()
            .all(|ids: &BTreeMap<String, _>| written.iter().all(|id| ids.contains_key(id)));
        if complete || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all: BTreeSet<String> = streams.values().flat_map(|s| s.keys().cloned()).collect();
    // Read again after the streams: whatever a stream holds was written by now.
    let written_by_now = outbox_history(&stack)?;
    let mut lost_events = 0;
    for (region, ids) in &streams {
        let missing: Vec<&String> = written.iter().filter(|id| !ids.contains_key(*id)).collect();
        if !missing.is_empty() {
            say(&format!(
                "{} events never reached {region}'s stream, e.g. {:?}",
                missing.len(),
                missing.iter().take(3).collect::<Vec<_>>()
            ));
        }
        lost_events += missing.len();
    }
    // And nothing in a stream that no outbox ever held.
    let unknown_events = all.iter().filter(|id| !written_by_now.contains(*id)).count();
    if unknown_events > 0 {
        say(&format!("{unknown_events} events in the streams were never written to an outbox"));
    }
    for (region, url) in &cores {
        let applied = applied_ids(&stack.http, url).await?;
        let missing = written.iter().filter(|id| !applied.contains(*id)).count();
        if missing > 0 {
            say(&format!("{region}'s projection never applied {missing} events"));
        }
        lost_events += missing;
    }

    // Deliver events again and see that nothing changes.
    let before: BTreeMap<String, ProjectionView> = snapshot(&stack.http, &cores, &event).await?;
    let mut resent = 0;
    let mut dropped_by_stream = 0;
    for (region, url) in &stack.urls.nats_leaves {
        let client = stack.nats_client(url).await?;
        let js = region_context(&client, &RegionId::parse(region)?);
        let own: Vec<(String, Vec<u8>, String)> = streams[region]
            .values()
            .filter(|(subject, _)| subject.starts_with(&format!("tessera.{region}.")))
            .take(25)
            .map(|(subject, payload)| {
                let id =
                    serde_json::from_slice::<BusEvent>(payload).map(|e| e.id).unwrap_or_default();
                (subject.clone(), payload.clone(), id)
            })
            .collect();
        for (i, (subject, payload, id)) in own.iter().enumerate() {
            // A new message id gets past the stream's dedup: only the consumers can tell.
            let mut h = async_nats::HeaderMap::new();
            h.insert(async_nats::header::NATS_MESSAGE_ID, format!("replay-{i}-{id}").as_str());
            js.publish_with_headers(subject.clone(), h, payload.clone().into()).await?.await?;
            resent += 1;
            // The original id: the stream itself drops it.
            let mut h = async_nats::HeaderMap::new();
            h.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            if js
                .publish_with_headers(subject.clone(), h, payload.clone().into())
                .await?
                .await?
                .duplicate
            {
                dropped_by_stream += 1;
            }
        }
    }
    say(&format!(
        "re-sent {resent} events under new ids; the streams dropped {dropped_by_stream} exact copies"
    ));
    // Let both consumers see them (each region's replay reaches the other through sourcing).
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_consumers_idle(&stack, Duration::from_secs(15)).await?;
    let after = snapshot(&stack.http, &cores, &event).await?;
    let mut duplicate_effects = 0;
    for (region, b) in &before {
        let a = &after[region];
        if a != b {
            say(&format!("{region}'s projection changed after duplicates: {b:?} -> {a:?}"));
            duplicate_effects += diff_count(b, a);
        }
    }

    say("checking every acknowledged order and the counts");
    let (lost, oversold_seats, mut problems) = check_orders(&router, &acked).await;
    let (inconsistent, more) = check_availability(&router, &event, &acked).await?;
    problems.extend(more);
    for p in problems.iter().take(20) {
        say(p);
    }
    let warnings = stack.unexpected_warnings(traffic::EXPECTED_WARNINGS);
    for (line, n) in traffic::group_log_lines(&warnings).iter().take(15) {
        say(&format!("{n} × unexpected log line: {line}"));
    }
    stack.stop();

    let catchup = catchup_ms.map_or(-1, |m| m as i64);
    let ok = catchup_ms.is_some_and(|m| m <= 5_000)
        && lost_events == 0
        && unknown_events == 0
        && !written.is_empty()
        && duplicate_effects == 0
        && lost == 0
        && oversold_seats + inconsistent == 0
        && sold_during_cut.values().all(|n| *n > 0)
        && dropped_by_stream == resent
        && warnings.is_empty();
    println!(
        "cut_s={} sold_during_cut_{}={} sold_during_cut_{}={} events={} orders={} stream_dups_dropped={dropped_by_stream}/{resent} lost_acknowledged={lost} oversold={} unexpected_warnings={} unknown_events={unknown_events} catchup_ms={catchup} lost_events={lost_events} duplicate_effects={duplicate_effects}",
        args.cut_s,
        CUT.replace('-', "_"),
        sold_during_cut.get(CUT).unwrap_or(&0),
        OTHER.replace('-', "_"),
        sold_during_cut.get(OTHER).unwrap_or(&0),
        written.len(),
        acked.len(),
        oversold_seats + inconsistent,
        warnings.len(),
    );
    Ok(ok)
}

/// The ids of every event written to any region's outbox since the store was created,
/// from the store's log on disk (an outbox entry's id is its key's versionstamp).
fn outbox_history(stack: &Stack) -> anyhow::Result<BTreeSet<String>> {
    let keys = Keyspace::production();
    let dir = stack.options.run_dir.join("store");
    let mut out = BTreeSet::new();
    for region in &stack.options.regions {
        let (begin, end) = keys.outbox(&RegionId::parse(region)?);
        let history = tessera_store::embedded::log_history(&dir, &begin, &end)
            .with_context(|| format!("read the store's log in {}", dir.display()))?;
        anyhow::ensure!(
            history.since_version == 0,
            "the store's log no longer reaches back to the start of the run (version {})",
            history.since_version
        );
        for w in history.writes.iter().filter(|w| w.value.is_some()) {
            out.insert(hex::encode(keys.outbox_stamp_of_key(&w.key)?));
        }
    }
    Ok(out)
}

async fn snapshot(
    http: &reqwest::Client,
    cores: &BTreeMap<String, String>,
    event: &str,
) -> anyhow::Result<BTreeMap<String, ProjectionView>> {
    let mut out = BTreeMap::new();
    for (region, url) in cores {
        out.insert(region.clone(), projection(http, url, event).await?);
    }
    Ok(out)
}

fn diff_count(a: &ProjectionView, b: &ProjectionView) -> usize {
    let mut n = usize::from(a.events_applied != b.events_applied);
    let keys: BTreeSet<&String> = a
        .sections
        .keys()
        .chain(b.sections.keys())
        .chain(a.pools.keys())
        .chain(b.pools.keys())
        .collect();
    for k in keys {
        let get = |v: &ProjectionView| {
            v.sections.get(k).or_else(|| v.pools.get(k)).copied().unwrap_or_default()
        };
        if get(a) != get(b) {
            n += 1;
        }
    }
    n
}

async fn applied_ids(http: &reqwest::Client, core: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{core}/v1/internal/projection?limit=5000");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page: AppliedPage = http.get(url).send().await?.json().await?;
        out.extend(page.ids);
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// Waits until the projection consumer of every region has nothing pending.
async fn wait_consumers_idle(stack: &Stack, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for (region, url) in &stack.urls.nats_leaves {
        let client = stack.nats_client(url).await?;
        let region = RegionId::parse(region)?;
        let js = region_context(&client, &region);
        let stream = js.get_stream(stream_name(&region)).await?;
        loop {
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
                .get_consumer(tessera_bus::projection::CONSUMER)
                .await
                .map_err(|e| anyhow::anyhow!("get the projection consumer: {e}"))?;
            let info = consumer.info().await?;
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{region}'s projection consumer is still busy"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
