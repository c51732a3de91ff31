//! Traces that can be followed: one purchase through the real stack is one trace, from
//! the edge through the router and the core, the store commit, the NATS publish, to the
//! consumer that sends the confirmation email. Every service exports OTLP/HTTP to a
//! receiver in this test (the closest thing to a collector that runs here), which decodes
//! the spans with the `opentelemetry-proto` types.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use parking_lot::Mutex;
use prost::Message as _;
use serde_json::json;
use tessera_e2e::fan::{Api, Fan, Operator};

use crate::start;

/// A span as received: its service and the ids that link it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// An OTLP/HTTP trace receiver on a free port of 127.0.0.1.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Received>>>,
    requests: Arc<Mutex<usize>>,
}

async fn receiver() -> Receiver {
    let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
    let requests: Arc<Mutex<usize>> = Arc::default();
    let (s, r) = (spans.clone(), requests.clone());
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let (spans, requests) = (s.clone(), r.clone());
            async move {
                *requests.lock() += 1;
                let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                    return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                };
                let mut got = spans.lock();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| r.attributes.iter())
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref())
                        .and_then(|v| match &v.value {
                            Some(AnyValue::StringValue(s)) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            got.push(Received {
                                service: service.clone(),
                                name: span.name,
                                trace_id: hex::encode(span.trace_id),
                                span_id: hex::encode(span.span_id),
                                parent_span_id: hex::encode(span.parent_span_id),
                            });
                        }
                    }
                }
                (axum::http::StatusCode::OK, ExportTraceServiceResponse::default().encode_to_vec())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, spans, requests }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_purchase_is_one_trace_from_the_edge_to_the_email() {
    let otlp = receiver().await;
    let mut stack = start("trace", |o| o.otlp_endpoint = Some(otlp.url.clone())).await;
    let edge = Api::new(stack.http.clone(), stack.urls.edge.clone().unwrap());
    let router = Api::new(stack.http.clone(), stack.urls.router.clone());

    let op = Operator::new(router.clone()).await.unwrap();
    let mut map = tessera_e2e::demo_seat_map(&stack.options.repo_root).unwrap();
    map["event_id"] = json!("trace-night");
    assert_eq!(op.create_event(&map).await.unwrap().status, 201);
    assert!(op.sale("trace-night", "open").await.unwrap().ok());
    op.admission_rate("trace-night", 100.0).await.unwrap();
    let mut fan = Fan::new(edge.clone(), "fan-traced").await.unwrap();
    fan.join("trace-night").await.unwrap();
    fan.wait_admitted("trace-night", Duration::from_secs(20)).await.unwrap();
    let hold = fan.hold("trace-night", &json!({"seats": ["A-3-7"]}), None).await.unwrap();
    assert_eq!(hold.status, 201, "{}", hold.body);
    let hold_id = hold.body["hold_id"].as_str().unwrap().to_owned();

    // The fan's browser starts the trace (W3C traceparent on the request to the edge).
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let auth = format!("Bearer {}", fan.token);
    let admission = fan.admission.clone().unwrap_or_default();
    let order = edge
        .post(
            "/v1/orders",
            &[
                ("authorization", auth.as_str()),
                (tessera_api::headers::DEVICE, fan.device.as_str()),
                (tessera_api::headers::ADMISSION, admission.as_str()),
                (tessera_api::headers::IDEMPOTENCY_KEY, "trace-buy-1"),
                ("traceparent", traceparent.as_str()),
            ],
            &json!({"hold_id": hold_id, "payment_method": "pm_card_visa", "email": "traced@fans.example"}),
        )
        .await
        .unwrap();
    assert_eq!(order.status, 201, "{}", order.body);
    assert_eq!(order.body["state"], "completed");

    // The email arrives, and its delivery span reaches the receiver (batched exports).
    let mail = Api::new(stack.http.clone(), stack.urls.mailsink.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = mail.get("/messages", &[]).await.unwrap();
        let sent = m.body["messages"].as_array().is_some_and(|a| !a.is_empty());
        let delivered = otlp
            .spans
            .lock()
            .iter()
            .any(|s| s.trace_id == trace_id && s.name == "notifications.deliver");
        if sent && delivered {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let spans = otlp.spans.lock();
            let show = |s: &Received| {
                format!(
                    "{}:{} trace {} {} <- {}",
                    s.service, s.name, s.trace_id, s.span_id, s.parent_span_id
                )
            };
            let in_trace: Vec<String> =
                spans.iter().filter(|s| s.trace_id == trace_id).map(show).collect();
            let notifications: Vec<String> = spans
                .iter()
                .filter(|s| s.name.starts_with("notifications.") || s.name.starts_with("bus."))
                .map(show)
                .collect();
            panic!(
                "no email delivery span in trace {trace_id} after 30 s (email sent: {sent}; {} export requests, {} spans)\nthe trace:\n{}\nbus and notification spans:\n{}",
                *otlp.requests.lock(),
                spans.len(),
                in_trace.join("\n"),
                notifications.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Later spans of the same export batch.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let trace: Vec<Received> =
        otlp.spans.lock().iter().filter(|s| s.trace_id == trace_id).cloned().collect();
    let by_id: BTreeMap<&str, &Received> = trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let describe = || {
        trace
            .iter()
            .map(|s| format!("{}:{} {} <- {}", s.service, s.name, s.span_id, s.parent_span_id))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let parent_of = |s: &Received| by_id.get(s.parent_span_id.as_str()).copied();
    let has =
        |service: &str, name: &str| trace.iter().any(|s| s.service == service && s.name == name);

    // Every step of the data path is in the trace.
    let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    for service in ["tessera-router", "tessera-core"] {
        assert!(services.contains(service), "no {service} span in the trace:\n{}", describe());
    }
    for name in ["store.commit", "bus.publish", "bus.consume", "notifications.deliver"] {
        assert!(has("tessera-core", name), "no {name} span in the trace:\n{}", describe());
    }

    // The links: the email's delivery leads back, parent by parent, to the router's span,
    // through the consumer, the NATS publish and the core's request.
    let deliver = trace.iter().find(|s| s.name == "notifications.deliver").unwrap();
    let mut chain = vec![deliver];
    while let Some(p) = parent_of(chain.last().unwrap()) {
        assert!(chain.len() < 64, "a cycle in the trace:\n{}", describe());
        chain.push(p);
    }
    let names: Vec<String> = chain.iter().map(|s| format!("{}:{}", s.service, s.name)).collect();
    let position = |want: &str| names.iter().position(|n| n.ends_with(want));
    let consume = position(":bus.consume").unwrap_or_else(|| {
        panic!("the delivery does not lead to bus.consume: {names:?}\n{}", describe())
    });
    let publish = position(":bus.publish").unwrap_or_else(|| {
        panic!(
            "the consumer does not lead to bus.publish (NATS headers): {names:?}\n{}",
            describe()
        )
    });
    assert!(consume < publish, "{names:?}");
    let router_at =
        names.iter().position(|n| n.starts_with("tessera-router:")).unwrap_or_else(|| {
            panic!(
                "the publish does not lead to the router (HTTP traceparent): {names:?}\n{}",
                describe()
            )
        });
    assert!(publish < router_at, "{names:?}");
    // The core's request span sits between the router and the publish.
    assert!(names[publish..router_at].iter().any(|n| n.starts_with("tessera-core:")), "{names:?}");
    // A store commit of the checkout is in the core's request.
    let request =
        chain[publish + 1..router_at].iter().rev().find(|s| s.service == "tessera-core").unwrap();
    let mut commits_under_request = trace.iter().filter(|s| s.name == "store.commit").filter(|s| {
        let mut cur = parent_of(s);
        while let Some(p) = cur {
            if p.span_id == request.span_id {
                return true;
            }
            cur = parent_of(p);
        }
        false
    });
    assert!(
        commits_under_request.next().is_some(),
        "no store.commit under the core's request:\n{}",
        describe()
    );

    // The top: the edge's span when the edge exports its spans; otherwise the router's
    // span continues the trace the edge forwarded (its parent is the edge's hop).
    let top = chain.last().unwrap();
    if services.contains("tessera-edge") {
        assert_eq!(
            top.service,
            "tessera-edge",
            "the trace does not start at the edge:\n{}",
            describe()
        );
        assert_eq!(
            top.parent_span_id, "00f067aa0ba902b7",
            "the edge does not continue the fan's trace"
        );
    } else {
        // FIXME: the edge host forwards `traceparent` (same trace id, a fresh parent span
        // id per hop) but exports no spans of its own yet; when it does, the branch above
        // applies and this one goes.
        assert_eq!(top.service, "tessera-router", "{}", describe());
        assert!(
            !top.parent_span_id.is_empty() && top.parent_span_id != "0000000000000000",
            "the router's span has no parent from the edge"
        );
    }
    stack.stop();
}
