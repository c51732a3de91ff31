//! The differences seen between `spin up` and the project's host, one test each, run
//! with the host in Spin-strict mode (it fails where Spin fails and helps with nothing), so
//! a component that would break under Spin breaks here. Each also runs in the normal mode:
//! the answer must be the same on both hosts.

use crate::support::*;

async fn both_modes<F, Fut>(check: F)
where
    F: Fn(RunningEdge, std::sync::Arc<Upstream>, bool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for strict in [true, false] {
        let (up, router) = upstream().await;
        let edge = start_edge_with(variables(router), strict).await;
        check(edge, up, strict).await;
    }
}

#[tokio::test]
async fn the_event_stream_works_when_the_router_answers_chunked() {
    both_modes(|edge, _up, strict| async move {
        let resp = browser()
            .get(edge.url("/v1/events/show-1/stream"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "strict={strict}");
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let body = resp.text().await.unwrap();
        assert_eq!(body.matches("event: availability").count(), 3, "strict={strict}: {body}");
    })
    .await;
}

#[tokio::test]
async fn internal_and_hop_by_hop_headers_never_reach_a_fan() {
    both_modes(|edge, _up, strict| async move {
        let resp = browser()
            .get(edge.url("/v1/orders"))
            .bearer_auth(fan_token("fan-1"))
            .header("x-tessera-device", "d1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "strict={strict}");
        for name in [
            "x-tessera-bot-verdict",
            "x-tessera-cache",
            "x-tessera-queue-outcome",
            "x-tessera-bot-score",
            "keep-alive",
            "x-hop",
            "proxy-authenticate",
        ] {
            assert!(resp.headers().get(name).is_none(), "strict={strict}: {name} leaked");
        }
        // The edge's own answers (a cached catalog read) carry none either.
        for _ in 0..2 {
            let r = browser()
                .get(edge.url("/v1/events/show-1/sections/A/seats"))
                .header("x-tessera-device", "d1")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert!(
                r.headers()
                    .keys()
                    .all(|k| !k.as_str().starts_with("x-tessera-") || k == "x-tessera-stale"),
                "strict={strict}: {:?}",
                r.headers()
            );
        }
    })
    .await;
}

#[tokio::test]
async fn the_router_gets_the_pop_and_trace_context_and_no_host_headers() {
    both_modes(|edge, up, strict| async move {
        let fan_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let resp = browser()
            .get(edge.url("/v1/orders"))
            .bearer_auth(fan_token("fan-1"))
            .header("x-tessera-device", "d1")
            .header("traceparent", format!("00-{fan_trace}-00f067aa0ba902b7-01"))
            // A fan cannot pass itself off as the edge, nor set host headers.
            .header("x-tessera-bot-score", "0")
            .header("x-tessera-pop", "forged")
            .header("spin-full-url", "http://evil/")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let seen = up.seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(seen["x-tessera-pop"], "test", "strict={strict}");
        let tp = seen["traceparent"].to_str().unwrap();
        assert!(tp.starts_with(&format!("00-{fan_trace}-")), "strict={strict}: continued {tp}");
        assert_eq!(seen.get_all("traceparent").iter().count(), 1);
        assert!(
            seen.keys().all(|k| !k.as_str().starts_with("spin-")),
            "strict={strict}: host headers forwarded: {seen:?}"
        );
        let score: u32 = seen["x-tessera-bot-score"].to_str().unwrap().parse().unwrap();
        assert!(seen.get_all("x-tessera-bot-score").iter().count() == 1, "one score");
        let _ = score;

        // Without a trace from the fan the edge starts one.
        browser()
            .get(edge.url("/v1/orders"))
            .bearer_auth(fan_token("fan-1"))
            .header("x-tessera-device", "d1")
            .send()
            .await
            .unwrap();
        let seen = up.seen.lock().unwrap().last().cloned().unwrap();
        let tp = seen["traceparent"].to_str().unwrap();
        assert_eq!(tp.len(), 55, "strict={strict}: {tp}");
        assert!(!tp.contains(fan_trace));
    })
    .await;
}

#[tokio::test]
async fn both_hosts_give_the_same_answer_to_many_headers() {
    let mut answers = Vec::new();
    for strict in [true, false] {
        let (_up, router) = upstream().await;
        let edge = start_edge_with(variables(router), strict).await;
        let mut row = Vec::new();
        for n in [40usize, 48, 49, 57, 62, 70] {
            let mut req = browser().get(edge.url("/v1/events")).header("x-tessera-device", "d1");
            // The browser client sends 4 headers of its own (accept, accept-language,
            // user-agent, host) and the device id: fill up to `n`.
            for i in 0..n.saturating_sub(5) {
                req = req.header(format!("x-filler-{i}"), "1");
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            row.push((n, status, body["code"].as_str().unwrap_or("").to_owned()));
        }
        answers.push(row);
    }
    assert_eq!(answers[0], answers[1], "strict and normal hosts differ");
    let by_n = |n: usize| answers[0].iter().find(|(k, _, _)| *k == n).cloned().unwrap();
    assert_eq!(by_n(48).1, 200, "{:?}", answers[0]);
    assert_eq!((by_n(49).1, by_n(49).2.as_str()), (400, "invalid_request"));
    assert_eq!((by_n(57).1, by_n(57).2.as_str()), (400, "invalid_request"));
}
