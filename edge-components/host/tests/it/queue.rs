use std::sync::atomic::Ordering;

use tessera_api::queue::{QueueJoined, QueueStatus, QueueStatusState};

use crate::support::*;

async fn join(
    c: &reqwest::Client,
    edge: &RunningEdge,
    fan: &str,
    device: &str,
) -> reqwest::Response {
    c.post(edge.url("/v1/events/show-1/queue"))
        .bearer_auth(fan_token(fan))
        .header("x-tessera-device", device)
        .header("content-type", "application/json")
        .body(r#"{"client_nonce":"0123456789abcdef0123456789abcdef"}"#)
        .send()
        .await
        .unwrap()
}

async fn poll(
    c: &reqwest::Client,
    edge: &RunningEdge,
    event: &str,
    ticket: &str,
    device: &str,
) -> reqwest::Response {
    c.get(edge.url(&format!("/v1/events/{event}/queue")))
        .header("x-tessera-queue-ticket", ticket)
        .header("x-tessera-device", device)
        .send()
        .await
        .unwrap()
}

async fn code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    (status, v["code"].as_str().unwrap_or("<none>").to_owned())
}

#[tokio::test]
async fn a_fan_joins_waits_is_admitted_and_holds_with_the_admission_token() {
    let (up, router) = upstream().await;
    *up.watermark.lock().unwrap() = Some(watermark("show-1", 0, 0));
    let edge = start_edge(variables(router)).await;
    let c = browser();

    let joined: QueueJoined = join(&c, &edge, "fan-1", "phone-1").await.json().await.unwrap();
    let again: QueueJoined = join(&c, &edge, "fan-1", "phone-1").await.json().await.unwrap();
    assert_eq!(again.ticket_id, joined.ticket_id, "joining twice keeps the first place");

    let waiting: QueueStatus =
        poll(&c, &edge, "show-1", &joined.ticket, "phone-1").await.json().await.unwrap();
    assert_eq!(waiting.state, QueueStatusState::Waiting);
    assert_eq!(waiting.ahead, Some(0));
    assert!(waiting.admission_token.is_none());

    // The core admits the first fan; the edge sees it through its KV (as the NATS
    // subscriber would write it).
    let wm = serde_json::to_vec(&watermark("show-1", 1, 1)).unwrap();
    assert!(tessera_edge_host::nats::apply_watermark(&edge.edge.kv(), &wm));
    let admitted: QueueStatus =
        poll(&c, &edge, "show-1", &joined.ticket, "phone-1").await.json().await.unwrap();
    assert_eq!(admitted.state, QueueStatusState::Admitted);
    let adm = admitted.admission_token.expect("admission token");

    // The core can verify the admission token with the keyset, no call to the edge.
    let claims = tessera_queue::verify_admission(
        &queue_keyset(),
        &adm,
        &tessera_api::EventId::parse("show-1").unwrap(),
        &tessera_api::CustomerId::parse("fan-1").unwrap(),
        &tessera_queue::device_hash("phone-1"),
        now_ms(),
    )
    .unwrap();
    assert_eq!(claims.ticket_id, joined.ticket_id);

    let hold = |device: &'static str, fan: &'static str| {
        c.post(edge.url("/v1/events/show-1/holds"))
            .bearer_auth(fan_token(fan))
            .header("x-tessera-device", device)
            .header("x-tessera-admission", adm.clone())
            .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .header("content-type", "application/json")
            .body(r#"{"seats":["A-1-1"]}"#)
            .send()
    };
    assert_eq!(
        code(hold("laptop-9", "fan-1").await.unwrap()).await,
        (403, "queue_token_wrong_device".into())
    );
    assert_eq!(code(hold("phone-1", "fan-2").await.unwrap()).await, (403, "forbidden".into()));
    let ok = hold("phone-1", "fan-1").await.unwrap();
    assert_eq!(ok.status(), 201);
    let seen = up.holds.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "only the valid hold reached the region");
    let tp = seen[0]["traceparent"].to_str().unwrap();
    assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "trace continued: {tp}");
    if strict_from_env() {
        // Like under Spin: no host span, the component passes the fan's parent on.
        assert!(tp.contains("00f067aa0ba902b7"), "the fan's span stays the parent: {tp}");
    } else {
        assert!(!tp.contains("00f067aa0ba902b7"), "the edge host's span is the new parent: {tp}");
    }
    assert_eq!(seen[0]["x-tessera-pop"], "test");
    // Replaying the same admission for a second hold at this edge is refused.
    assert_eq!(code(hold("phone-1", "fan-1").await.unwrap()).await, (409, "admission_used".into()));
}

#[tokio::test]
async fn queue_tickets_are_refused_when_forged_expired_for_another_event_or_device() {
    let (up, router) = upstream().await;
    *up.watermark.lock().unwrap() = Some(watermark("show-1", 0, 0));
    *up.watermark.lock().unwrap() = Some(watermark("show-1", 0, 0));
    let edge = start_edge(variables(router)).await;
    let c = browser();
    let joined: QueueJoined = join(&c, &edge, "fan-7", "phone-7").await.json().await.unwrap();

    assert_eq!(
        code(poll(&c, &edge, "show-1", &joined.ticket, "other-phone").await).await,
        (403, "queue_token_wrong_device".into())
    );
    assert_eq!(
        code(poll(&c, &edge, "show-2", &joined.ticket, "phone-7").await).await,
        (403, "queue_token_wrong_event".into())
    );

    // Same claims, signed by a key that claims the edge's kid.
    let parts: Vec<&str> = joined.ticket.split('.').collect();
    let claims: tessera_api::queue::QueueTicketClaims = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, parts[1])
            .unwrap(),
    )
    .unwrap();
    let forger = tessera_identity::SigningKeyPair::derive_for_development("edge-a", "attacker");
    let forged = tessera_queue::issue(&forger, &claims);
    assert_eq!(
        code(poll(&c, &edge, "show-1", &forged, "phone-7").await).await,
        (403, "queue_ticket_invalid".into())
    );

    let mut expired = claims.clone();
    expired.exp_ms = now_ms() - 1;
    let expired = tessera_queue::issue(&edge_key(), &expired);
    assert_eq!(
        code(poll(&c, &edge, "show-1", &expired, "phone-7").await).await,
        (401, "token_expired".into())
    );

    // An admission-typed token is not a queue ticket, and vice versa.
    let mut adm = claims.clone();
    adm.typ = "adm".into();
    let adm = tessera_queue::issue(&edge_key(), &adm);
    assert_eq!(
        code(poll(&c, &edge, "show-1", &adm, "phone-7").await).await,
        (403, "queue_ticket_invalid".into())
    );
    let _ = up.registrations.load(Ordering::SeqCst);
}

#[tokio::test]
async fn bots_land_in_the_shadow_queue_and_are_never_admitted() {
    let (up, router) = upstream().await;
    *up.watermark.lock().unwrap() = Some(watermark("show-1", 0, 0));
    let edge = start_edge(variables(router)).await;
    // A scripted client: automation user agent, no accept-language, hammering.
    let bot = reqwest::Client::builder().user_agent("python-requests/2.31").build().unwrap();
    // How fast it hammers depends on the machine; whatever the pace, every answer is a
    // proof-of-work challenge or a shadow place, and once its rate gives it away it gets a
    // place that looks real.
    let mut shadowed = None;
    for sent in 1..=600 {
        let resp = join(&bot, &edge, "bot-1", "bot-device").await;
        match resp.status().as_u16() {
            428 => continue,
            200 if sent >= 120 => {
                shadowed = Some(resp);
                break;
            }
            200 => {
                let joined: QueueJoined = resp.json().await.unwrap();
                assert!(
                    tessera_queue::lottery::is_shadow(SHADOW_SECRET.as_bytes(), &joined.ticket_id),
                    "a scripted client got a real place"
                );
            }
            other => panic!("a bot is not told it was caught, but got {other}"),
        }
    }
    let resp = shadowed.expect("600 scripted joins never got a (shadow) place");
    let joined: QueueJoined = resp.json().await.unwrap();
    assert!(tessera_queue::lottery::is_shadow(SHADOW_SECRET.as_bytes(), &joined.ticket_id));
    assert_eq!(up.registrations.load(Ordering::SeqCst), 0, "no region heard of the bot");

    // Admit everyone: the shadow ticket still waits.
    let wm = serde_json::to_vec(&watermark("show-1", 1_000_000, 1_000_000)).unwrap();
    tessera_edge_host::nats::apply_watermark(&edge.edge.kv(), &wm);
    let mut resp = poll(&browser(), &edge, "show-1", &joined.ticket, "bot-device").await;
    if resp.status() == 428 {
        // The bot's device is still under suspicion (its requests this window): it must pay
        // the proof of work, and even then it only waits.
        let challenge = resp.headers()["x-tessera-pow-challenge"].to_str().unwrap().to_owned();
        let nonce = tessera_edge_logic::pow::solve(&challenge).unwrap();
        resp = browser()
            .get(edge.url("/v1/events/show-1/queue"))
            .header("x-tessera-queue-ticket", &joined.ticket)
            .header("x-tessera-device", "bot-device")
            .header("x-tessera-pow", format!("{challenge}:{nonce}"))
            .send()
            .await
            .unwrap();
    }
    let code = resp.status();
    let text = resp.text().await.unwrap();
    let status: QueueStatus =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{code} {text}: {e}"));
    assert_eq!(status.state, QueueStatusState::Waiting);
    assert!(status.admission_token.is_none());
}

#[tokio::test]
async fn middling_scores_get_a_proof_of_work_challenge_they_can_solve() {
    let (_up, router) = upstream().await;
    let edge = start_edge(variables(router)).await;
    // curl-like but otherwise polite: challenged, not shadowed.
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("accept", "*/*".parse().unwrap());
    h.insert("accept-language", "en".parse().unwrap());
    let c = reqwest::Client::builder().user_agent("curl/8.5.0").default_headers(h).build().unwrap();
    let url = edge.url("/v1/events");
    let first = c.get(&url).header("x-tessera-device", "d-curl").send().await.unwrap();
    assert_eq!(first.status(), 428);
    let challenge = first.headers()["x-tessera-pow-challenge"].to_str().unwrap().to_owned();
    let body: serde_json::Value = first.json().await.unwrap();
    assert_eq!(body["code"], "challenge_required");
    let nonce = tessera_edge_logic::pow::solve(&challenge).unwrap();
    let solved = c
        .get(&url)
        .header("x-tessera-device", "d-curl")
        .header("x-tessera-pow", format!("{challenge}:{nonce}"))
        .send()
        .await
        .unwrap();
    assert_eq!(solved.status(), 200);
}
