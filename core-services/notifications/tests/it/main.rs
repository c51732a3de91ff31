//! Notifications end to end: bus events in; real SMTP to the mail sink, real HTTP to
//! webhook receivers and SSE streams out; state in the durable embedded store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use futures::StreamExt as _;
use parking_lot::Mutex;
use tessera_api::bus::{BusEvent, BusEventBody, ReleaseReason};
use tessera_api::{CustomerId, EventId, HoldId, OrderId, RegionId};
use tessera_common::{Clock as _, SeededRng, SystemClock};
use tessera_fdb_schema::Keyspace;
use tessera_identity::{IdentityIssuer, Keyset, SigningKeyPair};
use tessera_mailsink::{self as mailsink, Mailbox, MessageList};
use tessera_notifications::email::{SmtpConfig, SmtpMailer};
use tessera_notifications::sse::{QueueUpdate, SseHub};
use tessera_notifications::webhooks::{self, SignatureError, WebhookEndpoint};
use tessera_notifications::{Contacts, Handled, Notifier, NotifierConfig, RetryPolicy};
use tessera_store::embedded::EmbeddedStore;

const WHSEC: &str = "whsec_notify";

struct Book(HashMap<String, String>);

#[async_trait::async_trait]
impl Contacts for Book {
    async fn email_for_order(&self, order_id: &OrderId) -> anyhow::Result<Option<String>> {
        Ok(self.0.get(order_id.as_str()).cloned())
    }
    async fn email_for_customer(&self, customer_id: &CustomerId) -> anyhow::Result<Option<String>> {
        Ok(self.0.get(customer_id.as_str()).cloned())
    }
}

struct Harness {
    notifier: Notifier<EmbeddedStore>,
    store: EmbeddedStore,
    mail_http: String,
    smtp_port: u16,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn contacts() -> Arc<Book> {
    Arc::new(Book(HashMap::from([
        ("o_00000001".to_owned(), "ada@example.org".to_owned()),
        ("o_00000002".to_owned(), "ada@example.org".to_owned()),
        ("fan-1".to_owned(), "ada@example.org".to_owned()),
        ("fan-2".to_owned(), "bob@example.org".to_owned()),
    ])))
}

async fn start(tweak: impl FnOnce(&mut NotifierConfig)) -> Harness {
    let store_dir = tempfile::tempdir().unwrap();
    let mail_dir = tempfile::tempdir().unwrap();
    let mailbox = Mailbox::open(mail_dir.path()).unwrap();
    let (smtp, http) = mailsink::spawn_local(mailbox).await.unwrap();
    let mut config = NotifierConfig {
        smtp: SmtpConfig { host: "127.0.0.1".into(), port: smtp.port(), ..SmtpConfig::default() },
        retry: RetryPolicy { max_attempts: 5, initial_backoff_ms: 20, max_backoff_ms: 200 },
        poll_interval_ms: 10,
        ..NotifierConfig::default()
    };
    tweak(&mut config);
    let store = EmbeddedStore::open(store_dir.path()).unwrap();
    let notifier = notifier(&store, config);
    Harness {
        notifier,
        store,
        mail_http: format!("http://{http}"),
        smtp_port: smtp.port(),
        _dirs: (store_dir, mail_dir),
    }
}

fn notifier(store: &EmbeddedStore, config: NotifierConfig) -> Notifier<EmbeddedStore> {
    let mailer = Arc::new(SmtpMailer::new(&config.smtp).unwrap());
    Notifier::new(
        store.clone(),
        Keyspace::with_root("test"),
        config,
        mailer,
        contacts(),
        SseHub::new(16),
        Arc::new(SystemClock),
        SeededRng::new(5),
    )
    .unwrap()
}

fn bus(id: &str, event: &str, body: BusEventBody) -> BusEvent {
    BusEvent {
        id: id.to_owned(),
        region: RegionId::parse("eu-west").unwrap(),
        event_id: EventId::parse(event).unwrap(),
        at_ms: SystemClock.now_ms(),
        body,
    }
}

fn completed(id: &str, order: &str, fan: &str) -> BusEvent {
    bus(
        id,
        "rock-night",
        BusEventBody::OrderCompleted {
            order_id: OrderId::parse(order).unwrap(),
            customer_id: CustomerId::parse(fan).unwrap(),
            amount_minor: 12_050,
            currency: "eur".into(),
        },
    )
}

fn expiring(id: &str, event: &str, fan: &str) -> BusEvent {
    bus(
        id,
        event,
        BusEventBody::HoldExpiring {
            hold_id: HoldId::parse("h_00000001").unwrap(),
            customer_id: CustomerId::parse(fan).unwrap(),
            expires_at_ms: 1_795_602_907_000,
        },
    )
}

async fn messages(h: &Harness) -> MessageList {
    reqwest::get(format!("{}/messages", h.mail_http)).await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn emails_an_order_confirmation_over_smtp() {
    let h = start(|_| {}).await;
    let e = completed("0000000000000001", "o_00000001", "fan-1");
    assert_eq!(h.notifier.handle(&e).await.unwrap(), Handled::New { deliveries: 1 });
    assert_eq!(h.notifier.run_due().await.unwrap(), 1);

    let list = messages(&h).await;
    assert_eq!(list.messages.len(), 1);
    let m = &list.messages[0];
    assert_eq!(m.envelope_to, ["ada@example.org"]);
    assert_eq!(m.to.as_deref(), Some("ada@example.org"));
    assert_eq!(m.subject.as_deref(), Some("Your tickets for rock-night are confirmed"));
    assert!(
        m.text.contains("Order: o_00000001") && m.text.contains("Paid: 120.50 EUR"),
        "{}",
        m.text
    );
    assert!(m.message_id.as_deref().is_some_and(|id| id.contains("0000000000000001.email")));
    assert!(h.notifier.pending().await.unwrap().is_empty());
}

#[tokio::test]
async fn warns_by_email_that_a_hold_is_about_to_expire() {
    let h = start(|_| {}).await;
    h.notifier.handle(&expiring("0000000000000002", "rock-night", "fan-2")).await.unwrap();
    h.notifier.run_due().await.unwrap();
    let list = messages(&h).await;
    assert_eq!(list.messages.len(), 1);
    let m = &list.messages[0];
    assert_eq!(m.envelope_to, ["bob@example.org"]);
    assert_eq!(m.subject.as_deref(), Some("Your seats for rock-night are about to be released"));
    assert!(m.text.contains("until 2026-11-25 10:35:07 UTC"), "{}", m.text);
    // A fan without an address on file gets nothing, and nothing stays queued.
    h.notifier.handle(&expiring("0000000000000003", "rock-night", "fan-9")).await.unwrap();
    h.notifier.run_due().await.unwrap();
    assert_eq!(messages(&h).await.messages.len(), 1);
    assert!(h.notifier.pending().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_email_waits_for_an_smtp_server_that_is_down() {
    let h = start(|c| {
        // Point at a port nobody listens on.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        c.smtp.port = dead;
        c.smtp.timeout_ms = 1_000;
    })
    .await;
    let e = completed("0000000000000004", "o_00000002", "fan-1");
    h.notifier.handle(&e).await.unwrap();
    h.notifier.run_due().await.unwrap();
    let pending = h.notifier.pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].attempts, 1);
    assert!(pending[0].last_error.as_deref().is_some_and(|e| e.contains("smtp")), "{pending:?}");

    // The same queue, served by a notifier that can reach the sink, delivers it.
    let fixed = notifier(
        &h.store,
        NotifierConfig {
            smtp: SmtpConfig { port: h.smtp_port, ..SmtpConfig::default() },
            ..NotifierConfig::default()
        },
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while messages(&h).await.messages.is_empty() && Instant::now() < deadline {
        fixed.run_due().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(messages(&h).await.messages.len(), 1);
    assert!(fixed.pending().await.unwrap().is_empty());
}

/// When a delivery arrived, its body and its signature header.
type Hit = (Instant, Bytes, Option<String>);

#[derive(Clone, Default)]
struct Receiver {
    hits: Arc<Mutex<Vec<Hit>>>,
    failures_left: Arc<Mutex<u32>>,
}

async fn start_receiver(rx: Receiver) -> String {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let rx = rx.clone();
            async move {
                let sig = headers
                    .get("tessera-signature")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                rx.hits.lock().push((Instant::now(), body, sig));
                let mut left = rx.failures_left.lock();
                if *left > 0 {
                    *left -= 1;
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hook")
}

fn endpoint(url: String, events: &[&str]) -> WebhookEndpoint {
    WebhookEndpoint {
        id: "ops".into(),
        url,
        secret: tessera_runtime::config::Secret::new(WHSEC),
        events: events.iter().map(|s| (*s).to_owned()).collect(),
    }
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn signs_webhooks_that_receivers_can_verify() {
    let rx = Receiver::default();
    let url = start_receiver(rx.clone()).await;
    let h = start(|c| c.webhooks = vec![endpoint(url, &["order.completed"])]).await;
    let e = completed("0000000000000005", "o_00000001", "fan-1");
    assert_eq!(h.notifier.handle(&e).await.unwrap(), Handled::New { deliveries: 2 });
    // Not subscribed to hold events: only the email channel.
    let other = expiring("0000000000000006", "rock-night", "fan-1");
    assert_eq!(h.notifier.handle(&other).await.unwrap(), Handled::New { deliveries: 1 });
    h.notifier.run_due().await.unwrap();

    let hits = rx.hits.lock().clone();
    assert_eq!(hits.len(), 1);
    let (_, body, sig) = &hits[0];
    let now = SystemClock.now_ms() / 1000;
    assert_eq!(webhooks::verify(WHSEC, sig.as_deref(), body, now, 300), Ok(()));
    let received: BusEvent = serde_json::from_slice(body).unwrap();
    assert_eq!(received, e);
    let mut forged = body.to_vec();
    forged[10] ^= 1;
    assert_eq!(
        webhooks::verify(WHSEC, sig.as_deref(), &forged, now, 300),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        webhooks::verify("whsec_wrong", sig.as_deref(), body, now, 300),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        webhooks::verify(WHSEC, sig.as_deref(), body, now + 301, 300),
        Err(SignatureError::Stale)
    );
}

#[tokio::test]
async fn retries_a_flaky_endpoint_with_growing_backoff_until_it_answers() {
    let rx = Receiver::default();
    *rx.failures_left.lock() = 3;
    let url = start_receiver(rx.clone()).await;
    let h = start(|c| c.webhooks = vec![endpoint(url, &[])]).await;
    let worker = h.notifier.spawn_worker();
    h.notifier
        .handle(&bus(
            "0000000000000007",
            "rock-night",
            BusEventBody::EventChanged { state: tessera_api::inventory::SaleState::OnSale },
        ))
        .await
        .unwrap();
    wait_until(|| rx.hits.lock().len() >= 4).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    worker.abort();

    let hits = rx.hits.lock().clone();
    assert_eq!(hits.len(), 4, "three failures, then one success, then nothing");
    let gaps: Vec<Duration> = hits.windows(2).map(|w| w[1].0 - w[0].0).collect();
    // Steps of 20, 40 and 80 ms, at least half of each.
    for (gap, min_ms) in gaps.iter().zip([10u64, 20, 40]) {
        assert!(*gap >= Duration::from_millis(min_ms), "{gaps:?}");
    }
    assert!(hits.iter().all(|(_, b, _)| b == &hits[0].1), "every attempt sends the same body");
    assert!(h.notifier.pending().await.unwrap().is_empty());
    assert!(h.notifier.dead_letters().await.unwrap().is_empty());
}

#[tokio::test]
async fn keeps_a_dead_letter_after_the_last_attempt() {
    let rx = Receiver::default();
    *rx.failures_left.lock() = u32::MAX;
    let url = start_receiver(rx.clone()).await;
    let h = start(|c| {
        c.webhooks = vec![endpoint(url, &["order.failed"])];
        c.retry.max_attempts = 3;
    })
    .await;
    let worker = h.notifier.spawn_worker();
    let e = bus(
        "0000000000000008",
        "rock-night",
        BusEventBody::OrderFailed {
            order_id: OrderId::parse("o_00000003").unwrap(),
            customer_id: CustomerId::parse("fan-1").unwrap(),
            code: "payment_declined".into(),
        },
    );
    h.notifier.handle(&e).await.unwrap();
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dead.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        dead = h.notifier.dead_letters().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    worker.abort();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].delivery.attempts, 3);
    assert_eq!(dead[0].delivery.event, e);
    assert_eq!(dead[0].delivery.last_error.as_deref(), Some("endpoint answered 500"));
    assert_eq!(rx.hits.lock().len(), 3, "no attempt after the limit");
    assert!(h.notifier.pending().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_duplicate_bus_event_has_no_second_effect() {
    let rx = Receiver::default();
    let url = start_receiver(rx.clone()).await;
    let h = start(|c| c.webhooks = vec![endpoint(url.clone(), &[])]).await;
    let e = completed("0000000000000009", "o_00000001", "fan-1");
    assert_eq!(h.notifier.handle(&e).await.unwrap(), Handled::New { deliveries: 2 });
    assert_eq!(h.notifier.handle(&e).await.unwrap(), Handled::Duplicate);
    h.notifier.run_due().await.unwrap();
    // Redelivered after the first was fully sent, and by a restarted process.
    assert_eq!(h.notifier.handle(&e).await.unwrap(), Handled::Duplicate);
    let restarted = notifier(
        &h.store,
        NotifierConfig { webhooks: vec![endpoint(url, &[])], ..NotifierConfig::default() },
    );
    assert_eq!(restarted.handle(&e).await.unwrap(), Handled::Duplicate);
    restarted.run_due().await.unwrap();
    h.notifier.run_due().await.unwrap();

    assert_eq!(messages(&h).await.messages.len(), 1);
    assert_eq!(rx.hits.lock().len(), 1);
}

struct SseClient {
    stream: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    buf: String,
}

impl SseClient {
    async fn connect(url: &str, bearer: Option<&str>) -> Self {
        let mut req = reqwest::Client::new().get(url);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        SseClient { stream: resp.bytes_stream().boxed(), buf: String::new() }
    }

    /// The next `(event, data)`, skipping keep-alive comments; `None` after `wait`.
    async fn next(&mut self, wait: Duration) -> Option<(String, String)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if !data.is_empty() {
                    return Some((name, data));
                }
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }
}

fn issuer() -> IdentityIssuer {
    IdentityIssuer {
        issuer: "https://id.test".into(),
        key: SigningKeyPair::derive_for_development("k1", "sse-test"),
    }
}

/// Serves a hub's SSE route on a free port; returns the base URL.
async fn serve_sse(hub: &SseHub) -> String {
    let verifier = tessera_identity::oidc::Oidc::new(&tessera_identity::oidc::OidcConfig {
        issuer: "https://id.test".into(),
        keys: Keyset::new([issuer().key.public()]).to_config_string(),
        leeway_s: 5,
        ..Default::default()
    })
    .unwrap();
    let app = hub.router(Arc::new(verifier), Arc::new(SystemClock), Duration::from_secs(15));
    let app = tessera_runtime::http::with_common_layers("test", app, 1024);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn every_process_streams_an_event_while_only_one_sends_it() {
    let h = start(|_| {}).await;
    // A second region's notifier on the same (shared) store, with its own connected fans.
    let other = notifier(
        &h.store,
        NotifierConfig {
            smtp: SmtpConfig { port: h.smtp_port, ..SmtpConfig::default() },
            ..NotifierConfig::default()
        },
    );
    let token =
        issuer().mint(CustomerId::parse("fan-1").unwrap(), vec![], SystemClock.now_ms(), 600);
    let mut streams = Vec::new();
    for n in [&h.notifier, &other] {
        let base = serve_sse(n.hub()).await;
        let mut c =
            SseClient::connect(&format!("{base}/v1/events/rock-night/stream"), Some(&token)).await;
        assert_eq!(c.next(Duration::from_secs(2)).await.unwrap().0, "ready");
        streams.push(c);
    }
    let e = expiring("0000000000000020", "rock-night", "fan-1");
    assert_eq!(h.notifier.handle(&e).await.unwrap(), Handled::New { deliveries: 1 });
    assert_eq!(other.handle(&e).await.unwrap(), Handled::Duplicate);
    // A redelivery to the same process is not streamed twice.
    assert_eq!(other.handle(&e).await.unwrap(), Handled::Duplicate);
    for c in &mut streams {
        assert_eq!(c.next(Duration::from_secs(2)).await.unwrap().0, "hold.expiring");
        assert_eq!(c.next(Duration::from_millis(200)).await, None);
    }
    h.notifier.run_due().await.unwrap();
    other.run_due().await.unwrap();
    assert_eq!(messages(&h).await.messages.len(), 1);
}

#[tokio::test]
async fn streams_a_fans_own_events_and_not_another_fans() {
    let h = start(|_| {}).await;
    let issuer = issuer();
    let base = serve_sse(h.notifier.hub()).await;

    let now = SystemClock.now_ms();
    let token =
        |fan: &str| issuer.mint(CustomerId::parse(fan).unwrap(), vec!["fan".into()], now, 600);
    let url = format!("{base}/v1/events/rock-night/stream");
    let mut ada = SseClient::connect(&format!("{url}?access_token={}", token("fan-1")), None).await;
    let mut bob = SseClient::connect(&url, Some(&token("fan-2"))).await;
    assert_eq!(ada.next(Duration::from_secs(2)).await.unwrap().0, "ready");
    assert_eq!(bob.next(Duration::from_secs(2)).await.unwrap().0, "ready");

    let fan1 = CustomerId::parse("fan-1").unwrap();
    let mut watchers = h.notifier.hub().watchers(&EventId::parse("rock-night").unwrap());
    watchers.sort();
    assert_eq!(watchers, [fan1.clone(), CustomerId::parse("fan-2").unwrap()]);

    h.notifier.handle(&expiring("0000000000000010", "rock-night", "fan-1")).await.unwrap();
    h.notifier.handle(&expiring("0000000000000011", "jazz-night", "fan-1")).await.unwrap();
    h.notifier.handle(&completed("0000000000000012", "o_00000002", "fan-2")).await.unwrap();
    h.notifier
        .handle(&bus(
            "0000000000000013",
            "rock-night",
            BusEventBody::HoldReleased {
                hold_id: HoldId::parse("h_00000001").unwrap(),
                customer_id: fan1.clone(),
                seats: vec![],
                pool: None,
                quantity: 2,
                reason: ReleaseReason::Expired,
            },
        ))
        .await
        .unwrap();
    let up = |ahead, admitted| QueueUpdate {
        event_id: EventId::parse("rock-night").unwrap(),
        ahead: Some(ahead),
        estimated_wait_s: None,
        admitted,
    };
    h.notifier.hub().queue_update(&fan1, up(0, true));

    let (name, data) = ada.next(Duration::from_secs(2)).await.unwrap();
    assert_eq!(name, "hold.expiring");
    let got: BusEvent = serde_json::from_str(&data).unwrap();
    assert_eq!(got.id, "0000000000000010");
    assert_eq!(ada.next(Duration::from_secs(2)).await.unwrap().0, "hold.released");
    assert_eq!(ada.next(Duration::from_secs(2)).await.unwrap().0, "queue.your_turn");
    assert_eq!(
        ada.next(Duration::from_millis(300)).await,
        None,
        "nothing of bob's, nothing of jazz-night"
    );

    let (name, data) = bob.next(Duration::from_secs(2)).await.unwrap();
    assert_eq!(name, "order.completed");
    assert!(data.contains("o_00000002"));
    assert_eq!(bob.next(Duration::from_millis(300)).await, None);

    // Without a valid token there is no stream.
    let code = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap();
        (status, v["code"].as_str().unwrap_or_default().to_owned())
    };
    let c = reqwest::Client::new();
    assert_eq!(code(c.get(&url).send().await.unwrap()).await, (401, "unauthenticated".into()));
    let forged = IdentityIssuer {
        issuer: "https://id.test".into(),
        key: SigningKeyPair::derive_for_development("k1", "evil"),
    }
    .mint(fan1.clone(), vec![], now, 600);
    assert_eq!(
        code(c.get(&url).bearer_auth(forged).send().await.unwrap()).await,
        (401, "invalid_token".into())
    );
    let expired = issuer.mint(fan1, vec![], now - 3_600_000, 60);
    assert_eq!(
        code(c.get(format!("{url}?access_token={expired}")).send().await.unwrap()).await,
        (401, "token_expired".into())
    );
}
