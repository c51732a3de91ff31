use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tessera_api::bus::{BusEvent, BusEventBody};
use tessera_api::{CustomerId, EventId, HoldId, RegionId, SeatId};

use crate::support::*;

struct NatsServer(Child, u16);
impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nats_server() -> Option<NatsServer> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(NatsServer(child, port));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[tokio::test]
async fn nats_watermarks_and_bus_events_reach_the_components_within_a_second() {
    let nats = nats_server().expect("nats-server is installed (apt-get install nats-server)");
    let url = format!("nats://127.0.0.1:{}", nats.1);
    let (up, router) = upstream().await;
    let edge = start_edge(variables(router)).await;
    let (_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(tessera_edge_host::nats::run(url.clone(), edge.edge.kv(), rx));
    let client = async_nats::connect(&url).await.unwrap();

    // bus:alive shows up, so components cache with the long TTL.
    let mut alive = false;
    for _ in 0..50 {
        if edge.edge.kv().get("default", "bus:alive").is_some() {
            alive = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(alive);

    // Higher versions win; older ones are ignored.
    let newer = watermark("show-1", 5, 10);
    let older = watermark("show-1", 2, 10);
    client
        .publish("tessera.admission.show-1", serde_json::to_vec(&newer).unwrap().into())
        .await
        .unwrap();
    client
        .publish("tessera.admission.show-1", serde_json::to_vec(&older).unwrap().into())
        .await
        .unwrap();
    client.flush().await.unwrap();

    let c = browser();
    let url_seats = edge.url("/v1/events/show-1/sections/A/seats");
    c.get(&url_seats).send().await.unwrap();
    c.get(&url_seats).send().await.unwrap();
    assert_eq!(up.seat_reads.load(Ordering::SeqCst), 1);

    let event = BusEvent {
        id: "0000000000000001".into(),
        region: RegionId::parse("eu-west").unwrap(),
        event_id: EventId::parse("show-1").unwrap(),
        at_ms: now_ms(),
        body: BusEventBody::SeatsHeld {
            hold_id: HoldId::parse("h_abcdefgh12").unwrap(),
            customer_id: CustomerId::parse("fan-1").unwrap(),
            seats: vec![SeatId::parse("A-1-1").unwrap()],
            pool: None,
            quantity: 1,
            expires_at_ms: now_ms() + 60_000,
        },
    };
    let published = std::time::Instant::now();
    client.publish(event.subject(), serde_json::to_vec(&event).unwrap().into()).await.unwrap();
    client.flush().await.unwrap();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.get(&url_seats).send().await.unwrap();
        if up.seat_reads.load(Ordering::SeqCst) == 2 {
            break;
        }
        assert!(published.elapsed() < Duration::from_secs(1), "invalidation took over a second");
    }
    let stored = edge.edge.kv().get("default", "wm:show-1").unwrap();
    let wm: tessera_api::queue::AdmissionWatermark = serde_json::from_slice(&stored).unwrap();
    assert_eq!(wm.version, newer.version);
}
