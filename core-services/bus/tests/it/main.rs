//! Integration tests of tessera-bus against real `nats-server` processes: a hub and one
//! leaf node per region, each with its own JetStream domain, with cuttable links.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_api::RegionId;
use tessera_api::bus::{BusEvent, BusEventBody, Heartbeat};
use tessera_api::inventory::SaleState;
use tessera_bus::consumer::ensure_consumer;
use tessera_bus::heartbeat::{HeartbeatLoad, HeartbeatMonitor};
use tessera_bus::projection::{self, Projection};
use tessera_bus::relay::{OutboxRelay, RelayConfig};
use tessera_bus::streams::{StreamOptions, ensure_region_stream, region_context, stream_name};
use tessera_common::{ManualClock, SystemClock};
use tessera_fdb_schema::Keyspace;
use tessera_fdb_schema::values::{OutboxRecord, encode};
use tessera_local_nats::{LocalNats, LocalNatsOptions};
use tessera_store::memory::MemoryStore;
use tessera_store::{MutationType, RangeRequest, Store, Transaction as _, TrxError};

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn region(s: &str) -> RegionId {
    RegionId::parse(s).unwrap()
}

fn us() -> RegionId {
    region("us-east")
}

fn eu() -> RegionId {
    region("eu-west")
}

struct Net {
    nats: LocalNats,
    _dir: tempfile::TempDir,
}

impl Net {
    async fn start(cuttable: bool) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let nats = LocalNats::start(
            dir.path(),
            &[us(), eu()],
            LocalNatsOptions { cuttable_links: cuttable, ..LocalNatsOptions::default() },
        )
        .await
        .unwrap();
        Net { nats, _dir: dir }
    }

    async fn client(&self, r: &RegionId) -> async_nats::Client {
        tessera_bus::connect(&self.nats.leaf_url(r).unwrap(), "test").await.unwrap()
    }

    /// Both region streams, each sourcing the other.
    async fn streams(&self) -> BTreeMap<RegionId, async_nats::Client> {
        let mut clients = BTreeMap::new();
        for r in [us(), eu()] {
            let c = self.client(&r).await;
            ensure_region_stream(&c, &r, &[us(), eu()], &StreamOptions::default()).await.unwrap();
            clients.insert(r, c);
        }
        clients
    }
}

/// Every message of `region`'s stream: (subject, bus event id, origin region).
async fn stream_contents(
    client: &async_nats::Client,
    r: &RegionId,
) -> Vec<(String, String, String)> {
    let js = region_context(client, r);
    let mut stream = js.get_stream(stream_name(r)).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(m) = stream.get_raw_message(seq).await else { continue };
        let event: BusEvent = serde_json::from_slice(&m.payload).unwrap();
        out.push((m.subject.to_string(), event.id, event.region.to_string()));
    }
    out
}

async fn stream_len(client: &async_nats::Client, r: &RegionId) -> u64 {
    let js = region_context(client, r);
    let mut stream = js.get_stream(stream_name(r)).await.unwrap();
    stream.info().await.unwrap().state.messages
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn bus_event(id: &str, origin: &RegionId) -> BusEvent {
    BusEvent {
        id: id.to_owned(),
        region: origin.clone(),
        event_id: "e1".parse().unwrap(),
        at_ms: 1,
        body: BusEventBody::EventChanged { state: SaleState::OnSale },
    }
}

/// Publishes an event the way the relay does (`Nats-Msg-Id` = id).
async fn publish(client: &async_nats::Client, on: &RegionId, event: &BusEvent) -> bool {
    let js = region_context(client, on);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, event.id.as_str());
    let subject = format!("tessera.{on}.{}.{}", event.body.kind(), event.event_id);
    let ack = js
        .publish_with_headers(subject, headers, serde_json::to_vec(event).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    ack.duplicate
}

#[tokio::test]
async fn a_region_cut_off_from_the_hub_keeps_accepting_and_catches_up_after_healing() {
    let net = Net::start(true).await;
    let clients = net.streams().await;
    let (cu, ce) = (&clients[&us()], &clients[&eu()]);
    let _watchdogs: Vec<_> = [us(), eu()]
        .into_iter()
        .map(|r| {
            AbortOnDrop(tessera_bus::streams::spawn_source_watchdog(
                clients[&r].clone(),
                r,
                vec![us(), eu()],
                StreamOptions::default(),
                Default::default(),
            ))
        })
        .collect();

    for i in 0..5 {
        publish(cu, &us(), &bus_event(&format!("us{i:02}"), &us())).await;
    }
    wait_for("eu-west to source us-east", Duration::from_secs(10), async || {
        stream_len(ce, &eu()).await == 5
    })
    .await;

    net.nats.cut(&eu()).unwrap();
    for i in 5..10 {
        publish(cu, &us(), &bus_event(&format!("us{i:02}"), &us())).await;
    }
    for i in 0..3 {
        // eu-west's own stream lives on its leaf and takes writes while cut off.
        publish(ce, &eu(), &bus_event(&format!("eu{i:02}"), &eu())).await;
    }
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(net.nats.hub.leaf_connections().await.unwrap(), 1, "only us-east is connected");
    assert_eq!(stream_len(ce, &eu()).await, 8, "nothing crosses a cut link");
    assert_eq!(stream_len(cu, &us()).await, 10);

    net.nats.heal(&eu()).unwrap();
    let catchup = wait_for("both streams to catch up", Duration::from_secs(15), async || {
        stream_len(ce, &eu()).await == 13 && stream_len(cu, &us()).await == 13
    })
    .await;
    eprintln!("catch-up after healing took {catchup:?}");
    assert!(catchup < Duration::from_secs(5), "catch-up took {catchup:?}");

    for (client, r) in [(cu, us()), (ce, eu())] {
        let ids: BTreeSet<String> =
            stream_contents(client, &r).await.into_iter().map(|m| m.1).collect();
        assert_eq!(ids.len(), 13, "{r} has every event exactly once");
    }
}

#[tokio::test]
async fn the_stream_drops_a_second_message_with_the_same_id() {
    let net = Net::start(false).await;
    let clients = net.streams().await;
    let cu = &clients[&us()];
    assert!(!publish(cu, &us(), &bus_event("dup1", &us())).await);
    assert!(publish(cu, &us(), &bus_event("dup1", &us())).await, "second copy is a duplicate");
    assert!(!publish(cu, &us(), &bus_event("dup2", &us())).await);
    assert_eq!(stream_len(cu, &us()).await, 2);
}

/// Writes `n` outbox entries for `origin` in one transaction each; returns their keys.
async fn write_outbox(store: &MemoryStore, ks: &Keyspace, origin: &RegionId, n: usize) {
    for i in 0..n {
        let record = OutboxRecord {
            v: 1,
            event_id: "e1".parse().unwrap(),
            at_ms: i as u64,
            body: BusEventBody::EventChanged { state: SaleState::OnSale },
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        };
        let key = ks.outbox_entry_versionstamped(origin, 0);
        let value = encode(&record);
        tessera_store::run(store, |trx, _| {
            trx.atomic_op(&key, &value, MutationType::SetVersionstampedKey);
            async { Ok::<_, TrxError<()>>(()) }
        })
        .await
        .unwrap();
    }
}

async fn outbox_entries(
    store: &MemoryStore,
    ks: &Keyspace,
    origin: &RegionId,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (b, e) = ks.outbox(origin);
    let trx = store.create_trx().unwrap();
    trx.get_range(&RangeRequest::new(b, e), true)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

fn relay_config(r: &RegionId, instance: &str) -> RelayConfig {
    let mut cfg = RelayConfig::new(r.clone(), vec![us(), eu()], instance.to_owned());
    cfg.batch_max = 7; // several batches per drain
    cfg
}

#[tokio::test]
async fn the_relay_publishes_each_entry_once_in_effect_even_when_it_dies_before_deleting() {
    let net = Net::start(false).await;
    let clients = net.streams().await;
    let cu = clients[&us()].clone();
    let store = MemoryStore::new();
    let ks = Keyspace::with_root("t1");
    let clock = ManualClock::new(1_000_000);

    write_outbox(&store, &ks, &us(), 20).await;
    let before = outbox_entries(&store, &ks, &us()).await;
    assert_eq!(before.len(), 20);

    let mut relay = OutboxRelay::new(
        store.clone(),
        ks.clone(),
        cu.clone(),
        relay_config(&us(), "a"),
        clock.clone(),
    );
    let report = relay.pass().await.unwrap();
    assert_eq!(report.published[&us()], 20);
    assert_eq!(report.duplicates, 0);
    assert!(outbox_entries(&store, &ks, &us()).await.is_empty(), "published entries are deleted");

    // The process died after the stream acknowledged but before the delete committed:
    // the entries are still in the outbox when the next instance starts.
    drop(relay);
    tessera_store::run(&store, |trx, _| {
        for (k, v) in &before {
            trx.set(k, v);
        }
        async { Ok::<_, TrxError<()>>(()) }
    })
    .await
    .unwrap();
    clock.advance_ms(6_000); // the dead instance's lease runs out
    let mut restarted = OutboxRelay::new(
        store.clone(),
        ks.clone(),
        cu.clone(),
        relay_config(&us(), "b"),
        clock.clone(),
    );
    let report = restarted.pass().await.unwrap();
    assert_eq!(report.published[&us()], 20);
    assert_eq!(report.duplicates, 20, "the stream recognised every republished entry");
    assert!(outbox_entries(&store, &ks, &us()).await.is_empty());

    let contents = stream_contents(&cu, &us()).await;
    assert_eq!(contents.len(), 20);
    let ids: Vec<&str> = contents.iter().map(|m| m.1.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "events are published in commit order");
    assert!(contents.iter().all(|m| m.0 == "tessera.us-east.event.changed.e1"));
}

#[tokio::test]
async fn a_peer_takes_over_a_dead_regions_outbox_and_hands_it_back() {
    let net = Net::start(false).await;
    let clients = net.streams().await;
    let (cu, ce) = (clients[&us()].clone(), clients[&eu()].clone());
    let store = MemoryStore::new();
    let ks = Keyspace::with_root("t2");
    let clock = ManualClock::new(1_000_000);

    let mut relay_us = OutboxRelay::new(
        store.clone(),
        ks.clone(),
        cu.clone(),
        relay_config(&us(), "a"),
        clock.clone(),
    );
    let mut relay_eu = OutboxRelay::new(
        store.clone(),
        ks.clone(),
        ce.clone(),
        relay_config(&eu(), "b"),
        clock.clone(),
    );
    relay_us.pass().await.unwrap();
    relay_eu.pass().await.unwrap();
    assert!(relay_us.holds(&us()));
    assert!(!relay_eu.holds(&us()), "a live region's outbox is not taken");

    // us-east publishes four events and dies (kill -9: no release) after the stream
    // acknowledged them but before it deleted them from its outbox.
    write_outbox(&store, &ks, &us(), 4).await;
    let unpublished = outbox_entries(&store, &ks, &us()).await;
    assert_eq!(relay_us.pass().await.unwrap().published[&us()], 4);
    drop(relay_us);
    tessera_store::run(&store, |trx, _| {
        for (k, v) in &unpublished {
            trx.set(k, v);
        }
        async { Ok::<_, TrxError<()>>(()) }
    })
    .await
    .unwrap();
    clock.advance_ms(2_000);
    let report = relay_eu.pass().await.unwrap();
    assert!(!report.published.contains_key(&us()), "not before the lease expires");
    clock.advance_ms(4_000);
    let report = relay_eu.pass().await.unwrap();
    assert_eq!(report.published[&us()], 4);
    assert!(relay_eu.holds(&us()));
    let copies: Vec<_> = stream_contents(&ce, &eu())
        .await
        .into_iter()
        .filter(|(subject, _, _)| subject.starts_with("tessera.eu-west."))
        .collect();
    assert_eq!(copies.len(), 4);
    for (_, _, origin) in &copies {
        assert_eq!(origin, "us-east", "the event keeps its origin region");
    }
    // Each stream holds the originals and the copies: sourcing goes on past events it
    // already has under another message id (a shared id would stall nats-server 2.9's
    // sources for good), and consumers apply each event once by its id.
    for (client, r) in [(&cu, us()), (&ce, eu())] {
        wait_for("both copies in each stream", Duration::from_secs(10), async || {
            stream_len(client, &r).await == 8
        })
        .await;
        let ids: BTreeSet<String> =
            stream_contents(client, &r).await.into_iter().map(|m| m.1).collect();
        assert_eq!(ids.len(), 4, "{r}: four events, each twice");
    }

    // us-east comes back and takes its outbox home at once.
    let mut back = OutboxRelay::new(
        store.clone(),
        ks.clone(),
        cu.clone(),
        relay_config(&us(), "c"),
        clock.clone(),
    );
    back.pass().await.unwrap();
    assert!(back.holds(&us()));
    clock.advance_ms(1_000);
    relay_eu.pass().await.unwrap();
    assert!(!relay_eu.holds(&us()), "the peer handed the outbox back");
    write_outbox(&store, &ks, &us(), 2).await;
    let report = back.pass().await.unwrap();
    assert_eq!(report.published[&us()], 2);
    let report = relay_eu.pass().await.unwrap();
    assert!(!report.published.contains_key(&us()));
    wait_for("the next events to reach eu-west", Duration::from_secs(10), async || {
        stream_len(&ce, &eu()).await == 10
    })
    .await;
}

#[tokio::test]
async fn projections_in_both_regions_converge_and_ignore_duplicates() {
    let net = Net::start(false).await;
    let clients = net.streams().await;
    let dirs = tempfile::tempdir().unwrap();
    let mut running = BTreeMap::new();
    for r in [us(), eu()] {
        let p = projection::start(
            &clients[&r],
            &r,
            &dirs.path().join(r.as_str()),
            std::future::pending(),
        )
        .await
        .unwrap();
        running.insert(r, p);
    }
    let customer: tessera_api::CustomerId = "fan-1".parse().unwrap();
    let held = |id: &str, origin: &RegionId, hold: &str, seat: &str| BusEvent {
        id: id.into(),
        region: origin.clone(),
        event_id: "e1".parse().unwrap(),
        at_ms: 1,
        body: BusEventBody::SeatsHeld {
            hold_id: hold.parse().unwrap(),
            customer_id: customer.clone(),
            seats: vec![seat.parse().unwrap()],
            pool: None,
            quantity: 1,
            expires_at_ms: 10,
        },
    };
    let sold = BusEvent {
        id: "eu-0003".into(),
        region: eu(),
        event_id: "e1".parse().unwrap(),
        at_ms: 2,
        body: BusEventBody::SeatsSold {
            order_id: "o_aaaaaaaa1".parse().unwrap(),
            hold_id: "h_aaaaaaaa1".parse().unwrap(),
            customer_id: customer.clone(),
            seats: vec!["A-1-1".parse().unwrap()],
            pool: None,
            quantity: 1,
        },
    };
    publish(&clients[&us()], &us(), &held("us-0001", &us(), "h_aaaaaaaa1", "A-1-1")).await;
    publish(&clients[&us()], &us(), &held("us-0002", &us(), "h_aaaaaaaa2", "A-1-2")).await;
    publish(&clients[&eu()], &eu(), &sold).await;
    // Duplicates that slip past the stream's window: same bus event id, new msg id.
    let js = region_context(&clients[&us()], &us());
    for copy in 0..3 {
        let e = held("us-0001", &us(), "h_aaaaaaaa1", "A-1-1");
        let mut h = async_nats::HeaderMap::new();
        h.insert(async_nats::header::NATS_MESSAGE_ID, format!("replay-{copy}").as_str());
        js.publish_with_headers(
            "tessera.us-east.seats.held.e1",
            h,
            serde_json::to_vec(&e).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }

    let want = r#"{"A":{"held":1,"sold":1}}"#;
    for r in [us(), eu()] {
        let p = Projection::new(running[&r].store.clone(), projection::keyspace(&r), r.clone());
        wait_for("the projection to converge", Duration::from_secs(10), async || {
            let v = p.view(&"e1".parse().unwrap()).await.unwrap();
            v.events_applied == 3 && serde_json::to_string(&v.sections).unwrap() == want
        })
        .await;
        // Stays converged: the duplicates have no effect.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let v = p.view(&"e1".parse().unwrap()).await.unwrap();
        assert_eq!((v.held, v.sold, v.events_applied), (1, 1, 3), "{r}");
    }
    // The durable consumer exists once per region and is shared by restarts.
    let again = ensure_consumer(
        &clients[&us()],
        &us(),
        &tessera_bus::consumer::ConsumerConfig::new(projection::CONSUMER),
    )
    .await
    .unwrap();
    assert_eq!(again.cached_info().config.durable_name.as_deref(), Some(projection::CONSUMER));

    // Served over HTTP for the e2e checks.
    use tower::ServiceExt as _;
    let router = running[&eu()].router.clone();
    let resp = router
        .oneshot(
            axum::http::Request::get("/v1/internal/projection/e1")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    let view: projection::ProjectionView = serde_json::from_slice(&body).unwrap();
    assert_eq!(view.region, eu());
    assert_eq!((view.held, view.sold), (1, 1));
}

#[tokio::test]
async fn heartbeats_from_one_region_reach_a_monitor_on_another_leaf() {
    let net = Net::start(false).await;
    let cu = net.client(&us()).await;
    let ce = net.client(&eu()).await;
    let monitor = HeartbeatMonitor::start(&ce, SystemClock).await.unwrap();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = healthy.clone();
    let task = tessera_bus::heartbeat::spawn_publisher(
        cu,
        us(),
        "http://127.0.0.1:1".into(),
        Duration::from_millis(100),
        SystemClock,
        move || HeartbeatLoad {
            healthy: flag.load(std::sync::atomic::Ordering::SeqCst),
            commits_per_s: 5.0,
        },
    );
    let clock = SystemClock;
    use tessera_common::Clock as _;
    wait_for("a heartbeat across the hub", Duration::from_secs(5), async || {
        monitor.is_fresh_and_healthy(&us(), clock.now_ms(), 500)
    })
    .await;
    let seen: Heartbeat = monitor.last(&us()).unwrap().heartbeat;
    assert_eq!(seen.url, "http://127.0.0.1:1");
    healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_for("the unhealthy flag", Duration::from_secs(5), async || {
        !monitor.is_fresh_and_healthy(&us(), clock.now_ms(), 500)
    })
    .await;
    task.abort();
    assert!(monitor.last(&eu()).is_none());
}
