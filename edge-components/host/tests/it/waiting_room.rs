//! The waiting room's fan-facing behaviour in the real component: long polls that answer
//! the moment a fan's state changes, "sold out" with the waiting-list choice, leaving,
//! floods of polls, and fans who share one address.

use std::time::{Duration, Instant};

use tessera_api::inventory::SaleState;
use tessera_api::queue::{
    AdmissionWatermark, QueueChoice, QueueJoined, QueueLine, QueueStatus, QueueStatusState,
};

use crate::support::*;

async fn join(c: &reqwest::Client, edge: &RunningEdge, fan: &str, device: &str) -> QueueJoined {
    let r = c
        .post(edge.url("/v1/events/show-1/queue"))
        .bearer_auth(fan_token(fan))
        .header("x-tessera-device", device)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "join");
    r.json().await.unwrap()
}

async fn poll(
    c: &reqwest::Client,
    edge: &RunningEdge,
    query: &str,
    ticket: &str,
    device: &str,
) -> reqwest::Response {
    c.get(edge.url(&format!("/v1/events/show-1/queue{query}")))
        .header("x-tessera-queue-ticket", ticket)
        .header("x-tessera-device", device)
        .send()
        .await
        .unwrap()
}

async fn fan_request(
    c: &reqwest::Client,
    edge: &RunningEdge,
    method: reqwest::Method,
    path: &str,
    fan: &str,
    ticket: &str,
    device: &str,
) -> reqwest::Response {
    c.request(method, edge.url(path))
        .bearer_auth(fan_token(fan))
        .header("x-tessera-queue-ticket", ticket)
        .header("x-tessera-device", device)
        .send()
        .await
        .unwrap()
}

fn push(edge: &RunningEdge, wm: &AdmissionWatermark) {
    let mut wm = wm.clone();
    wm.published_at_ms = now_ms();
    assert!(tessera_edge_host::nats::apply_watermark(
        &edge.edge.kv(),
        &serde_json::to_vec(&wm).unwrap()
    ));
}

fn line(open_passed: u64) -> QueueLine {
    QueueLine {
        pre_open_passed: 0,
        pre_open_threshold: None,
        open_passed,
        open_rank: open_passed.checked_sub(1).map(|i| format!("{i:020x}")),
    }
}

#[tokio::test]
async fn a_long_poll_answers_within_a_second_of_the_fans_turn() {
    let (up, router) = upstream().await;
    let edge = start_edge(variables(router)).await;
    let c = browser();
    *up.watermark.lock().unwrap() = Some(watermark("show-1", 0, 0));
    push(&edge, &watermark("show-1", 0, 0));
    let fan = join(&c, &edge, "fan-1", "phone-1").await;

    let waiting: QueueStatus =
        poll(&c, &edge, "", &fan.ticket, "phone-1").await.json().await.unwrap();
    assert_eq!(waiting.state, QueueStatusState::Waiting);
    // Every waiting fan gets an estimate.
    assert!(waiting.wait_s.is_some() && waiting.chance.is_some(), "{waiting:?}");

    // Nothing changes: the poll is held for `wait_s`, then answers with the same state.
    let t = Instant::now();
    let same: QueueStatus = poll(&c, &edge, "?wait_s=2&known=waiting", &fan.ticket, "phone-1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(same.state, QueueStatusState::Waiting);
    assert!(t.elapsed() >= Duration::from_millis(1900), "{:?}", t.elapsed());

    // The fan's turn comes while the poll is held: it answers within a second.
    let held = {
        let (c, url_ticket) = (c.clone(), fan.ticket.clone());
        let url = edge.url("/v1/events/show-1/queue?wait_s=12&known=waiting");
        tokio::spawn(async move {
            let r = c
                .get(url)
                .header("x-tessera-queue-ticket", url_ticket)
                .header("x-tessera-device", "phone-1")
                .send()
                .await
                .unwrap();
            (Instant::now(), r.json::<QueueStatus>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut admitted = watermark("show-1", 1, 1);
    admitted.version = 10;
    let pushed_at = Instant::now();
    push(&edge, &admitted);
    let (answered_at, status) = held.await.unwrap();
    assert_eq!(status.state, QueueStatusState::Admitted);
    assert!(status.admission_token.is_some());
    let latency = answered_at.duration_since(pushed_at);
    assert!(latency < Duration::from_secs(1), "answered {latency:?} after the watermark");

    // A state the fan does not know yet answers at once.
    let t = Instant::now();
    let now: QueueStatus = poll(&c, &edge, "?wait_s=20&known=waiting", &fan.ticket, "phone-1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(now.state, QueueStatusState::Admitted);
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn sold_out_fans_choose_the_waiting_list_or_leave() {
    let (up, router) = upstream().await;
    let edge = start_edge(variables(router)).await;
    let c = browser();
    push(&edge, &watermark("show-1", 0, 0));
    let a = join(&c, &edge, "fan-a", "phone-a").await;
    let b = join(&c, &edge, "fan-b", "phone-b").await;

    // Not sold out: the waiting list is refused and the core hears nothing.
    let r = fan_request(
        &c,
        &edge,
        reqwest::Method::POST,
        "/v1/events/show-1/queue/waiting-list",
        "fan-a",
        &a.ticket,
        "phone-a",
    )
    .await;
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "not_sold_out");
    assert!(up.waiting_list.lock().unwrap().is_empty());

    // What is left is spoken for: both are told, with the choice.
    let mut sold_out = watermark("show-1", 0, 2);
    sold_out.state = SaleState::SoldOut;
    sold_out.version = 5;
    sold_out.outstanding = 100;
    push(&edge, &sold_out);
    let told: QueueStatus = poll(&c, &edge, "", &a.ticket, "phone-a").await.json().await.unwrap();
    assert_eq!(told.state, QueueStatusState::SoldOut);
    assert_eq!(told.choices, vec![QueueChoice::WaitingList, QueueChoice::Leave]);
    assert!(told.chance.is_some());
    assert!(!told.waiting_list);

    // A stays: the core is told and A gets the same place, marked for the waiting list.
    let r = fan_request(
        &c,
        &edge,
        reqwest::Method::POST,
        "/v1/events/show-1/queue/waiting-list",
        "fan-a",
        &a.ticket,
        "phone-a",
    )
    .await;
    assert_eq!(r.status(), 200);
    let listed: QueueJoined = r.json().await.unwrap();
    assert_eq!(listed.ticket_id, a.ticket_id);
    assert_eq!(up.waiting_list.lock().unwrap().as_slice(), std::slice::from_ref(&a.ticket));
    let on_list: QueueStatus =
        poll(&c, &edge, "", &listed.ticket, "phone-a").await.json().await.unwrap();
    assert!(on_list.waiting_list);
    assert_eq!(on_list.choices, vec![QueueChoice::Leave]);
    // Choosing again with the new ticket changes nothing and asks the core nothing.
    let again = fan_request(
        &c,
        &edge,
        reqwest::Method::POST,
        "/v1/events/show-1/queue/waiting-list",
        "fan-a",
        &listed.ticket,
        "phone-a",
    )
    .await;
    assert_eq!(again.status(), 200);
    assert_eq!(up.waiting_list.lock().unwrap().len(), 1);
    // Another fan cannot choose for A.
    let r = fan_request(
        &c,
        &edge,
        reqwest::Method::POST,
        "/v1/events/show-1/queue/waiting-list",
        "fan-b",
        &a.ticket,
        "phone-a",
    )
    .await;
    assert_eq!(r.status(), 403);

    // B leaves.
    let r = fan_request(
        &c,
        &edge,
        reqwest::Method::DELETE,
        "/v1/events/show-1/queue",
        "fan-b",
        &b.ticket,
        "phone-b",
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(up.left.lock().unwrap().as_slice(), std::slice::from_ref(&b.ticket));

    // A place comes back and goes to the waiting list: A (on it) is admitted, the same
    // place without the choice is not.
    let mut returns = sold_out.clone();
    returns.version = 6;
    returns.waiting_list_line = Some(line(2));
    push(&edge, &returns);
    let admitted: QueueStatus =
        poll(&c, &edge, "", &listed.ticket, "phone-a").await.json().await.unwrap();
    assert_eq!(admitted.state, QueueStatusState::Admitted);
    assert!(admitted.admission_token.is_some());
    let plain: QueueStatus = poll(&c, &edge, "", &a.ticket, "phone-a").await.json().await.unwrap();
    assert_eq!(plain.state, QueueStatusState::SoldOut);

    // B left: when the line passes B's place, B's ticket is given no admission.
    let mut passed = returns.clone();
    passed.version = 7;
    passed.state = SaleState::OnSale;
    passed.open_admitted = 2;
    passed.open_admitted_rank = line(2).open_rank;
    push(&edge, &passed);
    let r = poll(&c, &edge, "", &b.ticket, "phone-b").await;
    assert_eq!(r.status(), 410);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "queue_left");

    // Every call to the core carried a key naming what it does and for which ticket, so
    // the router may repeat it in another region (the core's handlers are idempotent).
    let keys = up.keys.lock().unwrap().clone();
    assert_eq!(
        keys,
        vec![
            format!("queue-join-{}", a.ticket_id),
            format!("queue-join-{}", b.ticket_id),
            format!("queue-waiting-list-{}", a.ticket_id),
            format!("queue-leave-{}", b.ticket_id),
        ]
    );
}

#[tokio::test]
async fn a_flood_of_polls_from_one_ticket_is_refused_and_moves_nobody() {
    let (_up, router) = upstream().await;
    let edge = start_edge(variables(router)).await;
    let c = browser();
    push(&edge, &watermark("show-1", 0, 0));
    let fan = join(&c, &edge, "fan-1", "phone-1").await;
    let first: QueueStatus =
        poll(&c, &edge, "", &fan.ticket, "phone-1").await.json().await.unwrap();
    let mut refused = None;
    for _ in 0..30 {
        let r = poll(&c, &edge, "", &fan.ticket, "phone-1").await;
        if r.status() == 429 {
            let retry =
                r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let body: serde_json::Value = r.json().await.unwrap();
            refused = Some((body["code"].as_str().unwrap_or("").to_owned(), retry));
            break;
        }
    }
    let (code, retry) = refused.expect("a flood is refused");
    assert_eq!(code, "queue_poll_too_fast");
    assert!(retry.is_some_and(|r| (1..=10).contains(&r.parse::<u32>().unwrap_or(0))));
    // Another fan's poll is unaffected, and the flooding fan keeps their place.
    let other = join(&c, &edge, "fan-2", "phone-2").await;
    assert_eq!(poll(&c, &edge, "", &other.ticket, "phone-2").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(
        tessera_edge_logic::bot::WINDOW_MS - now_ms() % tessera_edge_logic::bot::WINDOW_MS + 50,
    ))
    .await;
    let later: QueueStatus =
        poll(&c, &edge, "", &fan.ticket, "phone-1").await.json().await.unwrap();
    assert_eq!((later.state, later.ahead), (first.state, first.ahead));
}

#[tokio::test]
async fn fans_behind_one_address_are_rated_one_by_one() {
    // Every request here comes from 127.0.0.1: a stadium's Wi-Fi, as the edge sees it.
    let (_up, router) = upstream().await;
    let edge = start_edge(variables(router)).await;
    let c = browser();
    push(&edge, &watermark("show-1", 0, 0));
    let fans = 60;
    let mut tickets = Vec::new();
    for i in 0..fans {
        tickets.push(join(&c, &edge, &format!("fan-{i}"), &format!("phone-{i}")).await);
    }
    // Each fan polls a few times, as pages do; together far more than one client may send
    // in a window (`client_hard_per_window` = 200), each well within it.
    let mut refused = 0;
    for round in 0..4 {
        for (i, t) in tickets.iter().enumerate() {
            let r = poll(&c, &edge, "", &t.ticket, &format!("phone-{i}")).await;
            if r.status() != 200 {
                refused += 1;
                eprintln!("round {round} fan {i}: {}", r.status());
            }
        }
    }
    assert_eq!(refused, 0, "{} requests from one address", fans * 5);
    // One device sending as much as all of them together is one client, and is limited.
    let mut limited = false;
    for _ in 0..250 {
        let r = c
            .get(edge.url("/v1/events"))
            .header("x-tessera-device", "phone-0")
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "a single device over the hard limit is refused");
}

/// What a fan's status says once the watermark has passed every place so far.
async fn state_when_everyone_is_admitted(
    c: &reqwest::Client,
    edge: &RunningEdge,
    ticket: &str,
    device: &str,
) -> QueueStatusState {
    // Each push must be newer than the last one the edge took.
    static VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_000);
    let mut wm = watermark("show-1", 1_000, 1_000);
    wm.version = VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    push(edge, &wm);
    let s: QueueStatus = poll(c, edge, "", ticket, device).await.json().await.unwrap();
    s.state
}

#[tokio::test]
async fn many_accounts_on_one_device_all_go_to_the_shadow_queue() {
    let (_up, router) = upstream().await;
    let edge = start_edge(variables(router)).await;
    let c = browser();
    push(&edge, &watermark("show-1", 0, 0));
    // A household shares a tablet: three accounts on it are fine.
    let family: Vec<QueueJoined> = accounts_on(&c, &edge, &["mum", "dad", "kid"], "tablet").await;
    let neighbour = join(&c, &edge, "neighbour", "own-phone").await;
    for t in &family {
        assert_eq!(
            state_when_everyone_is_admitted(&c, &edge, &t.ticket, "tablet").await,
            QueueStatusState::Admitted
        );
    }
    // A farm of accounts on one device: from the fourth on, every one of them (the first
    // three too, on this device) waits in the shadow queue and is never admitted.
    let farm: Vec<QueueJoined> =
        accounts_on(&c, &edge, &["farm-1", "farm-2", "farm-3", "farm-4", "farm-5"], "bot-box")
            .await;
    for t in &farm {
        assert_ne!(
            state_when_everyone_is_admitted(&c, &edge, &t.ticket, "bot-box").await,
            QueueStatusState::Admitted,
            "a farm account was admitted"
        );
    }
    assert_eq!(
        state_when_everyone_is_admitted(&c, &edge, &neighbour.ticket, "own-phone").await,
        QueueStatusState::Admitted
    );
}

#[tokio::test]
async fn a_crowd_found_after_its_admission_holds_nothing() {
    let (up, router) = upstream().await;
    let edge = start_edge(variables(router)).await;
    let c = browser();
    push(&edge, &watermark("show-1", 0, 0));
    // Three accounts of one device join and are admitted before a fourth shows them to
    // be one client; a fan on her own phone is admitted beside them.
    let first = accounts_on(&c, &edge, &["farm-1", "farm-2", "farm-3"], "bot-box").await;
    let neighbour = join(&c, &edge, "neighbour", "own-phone").await;
    let mut wm = watermark("show-1", 100, 100);
    wm.version = 2;
    push(&edge, &wm);
    let admission = |fan: &'static str, ticket: String, device: &'static str| {
        let (c, edge) = (c.clone(), &edge);
        async move {
            let s: QueueStatus = poll(&c, edge, "", &ticket, device).await.json().await.unwrap();
            assert_eq!(s.state, QueueStatusState::Admitted, "{fan} admitted");
            s.admission_token.expect("admission token")
        }
    };
    let farm_admission = admission("farm-1", first[0].ticket.clone(), "bot-box").await;
    let own_admission = admission("neighbour", neighbour.ticket.clone(), "own-phone").await;
    join(&c, &edge, "farm-4", "bot-box").await;

    let hold = |fan: &'static str, device: &'static str, adm: String| {
        c.post(edge.url("/v1/events/show-1/holds"))
            .bearer_auth(fan_token(fan))
            .header("x-tessera-device", device)
            .header("x-tessera-admission", adm)
            .header("content-type", "application/json")
            .body(r#"{"seats":["A-1-1"]}"#)
            .send()
    };
    let r = hold("farm-1", "bot-box", farm_admission).await.unwrap();
    assert_eq!(r.status(), 410);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "admission_expired");
    assert!(up.holds.lock().unwrap().is_empty(), "the farm's hold reached the region");
    let r = hold("neighbour", "own-phone", own_admission).await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(up.holds.lock().unwrap().len(), 1);
}

/// Joins each of `fans` from one device, one after the other.
async fn accounts_on(
    c: &reqwest::Client,
    edge: &RunningEdge,
    fans: &[&str],
    device: &str,
) -> Vec<QueueJoined> {
    let mut out = Vec::new();
    for f in fans {
        out.push(join(c, edge, f, device).await);
    }
    out
}

#[tokio::test]
async fn one_account_on_many_devices_goes_to_the_shadow_queue() {
    let (_up, router) = upstream().await;
    let edge = start_edge(variables(router)).await;
    let c = browser();
    push(&edge, &watermark("show-1", 0, 0));
    // A phone, a laptop and a tablet: fine.
    let mut fan = Vec::new();
    for d in ["phone", "laptop", "tablet"] {
        fan.push(join(&c, &edge, "fan-1", d).await);
    }
    assert_eq!(
        state_when_everyone_is_admitted(&c, &edge, &fan[0].ticket, "phone").await,
        QueueStatusState::Admitted
    );
    // Six devices: the account's place is never admitted, on any of them.
    let mut bot = Vec::new();
    for d in 0..6 {
        bot.push((join(&c, &edge, "bot-1", &format!("dev-{d}")).await, format!("dev-{d}")));
    }
    for (t, d) in &bot {
        assert_ne!(
            state_when_everyone_is_admitted(&c, &edge, &t.ticket, d).await,
            QueueStatusState::Admitted
        );
    }
}

#[tokio::test]
async fn a_ticket_polled_far_past_the_limit_is_never_admitted() {
    let (_up, router) = upstream().await;
    let edge = start_edge(variables(router)).await;
    let c = browser();
    push(&edge, &watermark("show-1", 0, 0));
    let bot = join(&c, &edge, "bot-1", "bot-phone").await;
    let fan = join(&c, &edge, "fan-1", "fan-phone").await;
    // The fan polls at the page's pace; the bot sends more than three times the limit
    // (20 per window) within one window, whatever it is answered.
    let window = tessera_edge_logic::bot::WINDOW_MS;
    tokio::time::sleep(Duration::from_millis(window - now_ms() % window + 20)).await;
    let mut refused = 0;
    for _ in 0..70 {
        if poll(&c, &edge, "", &bot.ticket, "bot-phone").await.status() != 200 {
            refused += 1;
        }
    }
    assert!(refused >= 45, "{refused}");
    tokio::time::sleep(Duration::from_millis(window - now_ms() % window + 20)).await;
    assert_eq!(
        state_when_everyone_is_admitted(&c, &edge, &bot.ticket, "bot-phone").await,
        QueueStatusState::Waiting,
        "the flooding ticket waits at the back of the line"
    );
    assert_eq!(
        state_when_everyone_is_admitted(&c, &edge, &fan.ticket, "fan-phone").await,
        QueueStatusState::Admitted
    );
}
