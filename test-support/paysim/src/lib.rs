//! Test support (never linked into a service): the local payment provider simulator
//! (`tessera-paysim`).
//!
//! It speaks the subset of Stripe's API that [`tessera_payments::stripe::StripeClient`] uses, with the
//! same wire format, and stands in for the card network, which cannot exist on a laptop:
//!
//! - Stripe's test payment methods behave as documented: `pm_card_visa` (and the other
//!   brand cards) approve; `pm_card_chargeDeclined`, `pm_card_visa_chargeDeclined`,
//!   `pm_card_chargeDeclinedInsufficientFunds`, `..LostCard`, `..StolenCard`,
//!   `..ExpiredCard`, `..IncorrectCvc`, `..ProcessingError`, `..Fraudulent` decline.
//! - `pm_card_authenticationRequired` asks for 3-D Secure: the intent stays in
//!   `requires_action` (a test cardholder never authenticates).
//! - Simulator-only methods make faults deterministic: `pm_card_tessera_timeout` is
//!   approved but answered only after `faults.timeout_delay_ms` (so the client times out);
//!   `pm_card_tessera_unknown` is approved and answered with a 500, and that 500 is what
//!   the idempotency key replays, as Stripe saves 500s too; `pm_card_tessera_reset` is
//!   approved and the connection is cut mid-response (a replay returns the truth).
//! - Seeded random declines, timeouts and unknown outcomes at configured rates, and a
//!   latency range, for load tests.
//! - Idempotency keys as Stripe honours them: the same key with the same parameters
//!   returns the saved response; with different parameters, a 400 `idempotency_error`;
//!   while the first request is still running, a 409.
//! - Durable: every change is appended to a journal and fsynced before the response, and
//!   replayed at start, so a restart (or `kill -9`) loses no charge.
//! - Signed webhooks (`Stripe-Signature`) to the configured endpoints, retried with
//!   exponential backoff.
//! - Hosted card fields (`GET /hosted/card`, an iframe for checkout pages) that turn Stripe's
//!   test card numbers into payment methods (`POST /v1/payment_methods`, publishable key):
//!   see [`hosted`].
//! - `GET /_sim/ledger`: every intent with what it captured and refunded, and a summary
//!   (`duplicate_charges`, `uncaptured_authorizations`) for tests and audits.

mod hosted;
mod journal;
mod state;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tessera_common::{Clock, Rng};

use journal::{Journal, Record};
use state::{Applied, CardAnswer, EventRec, Ledger, Params, WireErr, intent_json, refund_json};

/// Settings of the simulator (the `tessera-paysim` config file, `deploy/<env>/paysim.toml`,
/// and `TESSERA_PAYSIM__<KEY>` variables).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// A simulator runs only in `local` mode (production, the default, refuses to start).
    pub mode: tessera_runtime::config::Mode,
    /// HTTP listen address.
    pub listen: String,
    /// Serve HTTPS with this certificate (tests of production-mode cores, which refuse a
    /// plaintext provider).
    pub tls: tessera_runtime::http::ServerTlsConfig,
    /// The secret key clients must send as `Authorization: Bearer ...`.
    pub secret_key: String,
    /// The publishable key the hosted card fields send when they create a payment method
    /// (public: it is in every checkout page).
    pub publishable_key: String,
    /// Journal file (created if missing).
    pub journal_path: PathBuf,
    /// Seed of the randomness behind random faults, latencies and ids.
    pub seed: u64,
    pub latency: LatencyConfig,
    pub faults: FaultConfig,
    /// Where to send signed events.
    pub webhooks: Vec<WebhookEndpoint>,
    pub webhook_retry: WebhookRetryConfig,
    pub body_limit_bytes: usize,
    pub telemetry: tessera_runtime::telemetry::TelemetryConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            mode: tessera_runtime::config::Mode::default(),
            listen: "127.0.0.1:7420".to_owned(),
            tls: Default::default(),
            secret_key: String::new(),
            publishable_key: String::new(),
            journal_path: PathBuf::from("var/paysim/journal.jsonl"),
            seed: 1,
            latency: LatencyConfig::default(),
            faults: FaultConfig::default(),
            webhooks: Vec::new(),
            webhook_retry: WebhookRetryConfig::default(),
            body_limit_bytes: 64 * 1024,
            telemetry: Default::default(),
        }
    }
}

/// Added to every API call, uniformly distributed in `[min_ms, max_ms]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencyConfig {
    pub min_ms: u64,
    pub max_ms: u64,
}

/// Random faults. Rates are probabilities in `[0, 1]`, drawn from the seeded generator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultConfig {
    /// Authorizations with an approving card that are declined (`card_declined`).
    pub decline_rate: f64,
    /// Authorizations that are applied but answered after `timeout_delay_ms`.
    pub timeout_rate: f64,
    /// Authorizations that are applied but answered with a 500.
    pub unknown_rate: f64,
    /// Captures, voids and refunds that are applied but answered late.
    pub followup_timeout_rate: f64,
    /// Captures, voids and refunds that are applied but answered with a 500.
    pub followup_unknown_rate: f64,
    /// How long a "timed out" answer is held back.
    pub timeout_delay_ms: u64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            decline_rate: 0.0,
            timeout_rate: 0.0,
            unknown_rate: 0.0,
            followup_timeout_rate: 0.0,
            followup_unknown_rate: 0.0,
            timeout_delay_ms: 30_000,
        }
    }
}

/// A webhook endpoint and its signing secret (`whsec_...`).
#[derive(Debug, Clone, Serialize, Deserialize)]

pub struct WebhookEndpoint {
    pub url: String,
    pub secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookRetryConfig {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub request_timeout_ms: u64,
}

impl Default for WebhookRetryConfig {
    fn default() -> Self {
        WebhookRetryConfig {
            max_attempts: 10,
            initial_backoff_ms: 500,
            max_backoff_ms: 60_000,
            request_timeout_ms: 5_000,
        }
    }
}

/// What the simulator does to one request, beyond applying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Apply, then answer after the timeout delay.
    Timeout,
    /// Apply, then answer (and save for the key) a 500.
    Unknown,
    /// Apply, save the true answer for the key, then cut the connection mid-response.
    Reset,
}

/// How a test payment method behaves.
fn card_behaviour(pm: &str) -> Option<(CardAnswer, Fault)> {
    const APPROVING: &[&str] = &[
        "pm_card_visa",
        "pm_card_visa_debit",
        "pm_card_mastercard",
        "pm_card_mastercard_debit",
        "pm_card_amex",
        "pm_card_discover",
        "pm_card_jcb",
        "pm_card_unionpay",
    ];
    if APPROVING.contains(&pm) {
        return Some((CardAnswer::Approve, Fault::None));
    }
    if pm == "pm_card_authenticationRequired" {
        return Some((CardAnswer::Authenticate, Fault::None));
    }
    let fault = match pm {
        "pm_card_tessera_timeout" => Some(Fault::Timeout),
        "pm_card_tessera_unknown" => Some(Fault::Unknown),
        "pm_card_tessera_reset" => Some(Fault::Reset),
        _ => None,
    };
    if let Some(f) = fault {
        return Some((CardAnswer::Approve, f));
    }
    let suffix = pm
        .strip_prefix("pm_card_visa_chargeDeclined")
        .or_else(|| pm.strip_prefix("pm_card_chargeDeclined"))?;
    let decline = |code, decline_code, message| CardAnswer::Decline { code, decline_code, message };
    let answer = match suffix {
        "" => decline("card_declined", Some("generic_decline"), "Your card was declined."),
        "InsufficientFunds" => decline(
            "card_declined",
            Some("insufficient_funds"),
            "Your card has insufficient funds.",
        ),
        "LostCard" => decline("card_declined", Some("lost_card"), "Your card was declined."),
        "StolenCard" => decline("card_declined", Some("stolen_card"), "Your card was declined."),
        "Fraudulent" => decline("card_declined", Some("fraudulent"), "Your card was declined."),
        "ExpiredCard" => decline("expired_card", None, "Your card has expired."),
        "IncorrectCvc" => decline("incorrect_cvc", None, "Your card's security code is incorrect."),
        "ProcessingError" => decline(
            "processing_error",
            None,
            "An error occurred while processing your card. Try again in a little bit.",
        ),
        _ => return None,
    };
    Some((answer, Fault::None))
}

/// Idempotency keys: saved responses `(fingerprint, status, body)` and the keys whose first
/// request is still running. One lock covers both, so a repeat sees exactly one of them.
struct IdemTable {
    saved: HashMap<String, (String, u16, String)>,
    in_flight: HashSet<String>,
}

struct Inner {
    config: SimConfig,
    /// `config.faults`, changeable while running ([`Simulator::set_faults`]).
    faults: Mutex<FaultConfig>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    ledger: Mutex<Ledger>,
    /// Saved responses by idempotency key: `(fingerprint, status, body)`.
    idem: Mutex<IdemTable>,
    events: Mutex<Vec<EventRec>>,
    journal: Journal,
    webhook_tx: tokio::sync::mpsc::UnboundedSender<(EventRec, usize)>,
    http: reqwest::Client,
}

/// A running simulator's state; [`Simulator::router`] serves it.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("listen", &self.inner.config.listen)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Replays the journal and starts webhook delivery (including events that were not
    /// delivered before a restart). Must run inside a tokio runtime.
    pub fn open(
        config: SimConfig,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
    ) -> anyhow::Result<Self> {
        let (journal, records) = Journal::open(&config.journal_path)?;
        Self::start(config, clock, rng, journal, records)
    }

    /// A simulator that keeps nothing on disk (`journal_path` is not read), for callers
    /// in the same process ([`Simulator::call`]): the deterministic simulation, whose
    /// virtual time a journal writer thread would race.
    pub fn in_memory(
        config: SimConfig,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
    ) -> anyhow::Result<Self> {
        Self::start(config, clock, rng, Journal::none(), Vec::new())
    }

    fn start(
        config: SimConfig,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        journal: Journal,
        records: Vec<Record>,
    ) -> anyhow::Result<Self> {
        let mut ledger = Ledger::default();
        let mut idem = HashMap::new();
        let mut events: Vec<EventRec> = Vec::new();
        let mut settled: HashSet<(String, String)> = HashSet::new();
        let replayed = records.len();
        for r in records {
            match r {
                Record::Intent(i) => ledger.put_intent(*i),
                Record::Refund(rf) => ledger.put_refund(rf),
                Record::Idem { key, fingerprint, status, body } => {
                    idem.insert(key, (fingerprint, status, body));
                }
                Record::Event(e) => {
                    ledger.next_seq = ledger.next_seq.max(e.seq + 1);
                    events.push(e);
                }
                Record::Delivery { event_id, url, .. } => {
                    settled.insert((event_id, url));
                }
            }
        }
        tracing::info!(records = replayed, intents = ledger.intents.len(), "replayed the journal");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.webhook_retry.request_timeout_ms))
            .build()?;
        let (webhook_tx, webhook_rx) = tokio::sync::mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            faults: Mutex::new(config.faults.clone()),
            config,
            clock,
            rng,
            ledger: Mutex::new(ledger),
            idem: Mutex::new(IdemTable { saved: idem, in_flight: HashSet::new() }),
            events: Mutex::new(events),
            journal,
            webhook_tx,
            http,
        });
        let pending: Vec<(EventRec, usize)> = {
            let events = inner.events.lock();
            let mut v = Vec::new();
            for e in events.iter() {
                for (n, ep) in inner.config.webhooks.iter().enumerate() {
                    if !settled.contains(&(e.id.clone(), ep.url.clone())) {
                        v.push((e.clone(), n));
                    }
                }
            }
            v
        };
        tokio::spawn(deliver_webhooks(Arc::downgrade(&inner), webhook_rx));
        for p in pending {
            let _ = inner.webhook_tx.send(p);
        }
        Ok(Simulator { inner })
    }

    /// The API routes plus `GET /_sim/ledger` and `GET /healthz`. Wrap with
    /// `tessera_runtime::http::with_common_layers` to serve.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/payment_intents", post(create_intent))
            .route("/v1/payment_intents/search", get(search_intents))
            .route("/v1/payment_intents/{id}", get(retrieve_intent))
            .route("/v1/payment_intents/{id}/confirm", post(confirm_intent))
            .route("/v1/payment_intents/{id}/capture", post(capture_intent))
            .route("/v1/payment_intents/{id}/cancel", post(cancel_intent))
            .route("/v1/refunds", post(create_refund))
            .route("/v1/refunds/{id}", get(retrieve_refund))
            .route("/_sim/ledger", get(ledger_report))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self.clone())
            .merge(hosted::routes(self.clone()))
    }

    /// The ledger as `GET /_sim/ledger` reports it.
    pub fn ledger(&self) -> Value {
        ledger_json(&self.inner.ledger.lock())
    }

    /// Every PaymentIntent, by id, with what happened to it.
    pub fn intents(&self) -> Vec<IntentView> {
        let ledger = self.inner.ledger.lock();
        let mut refunds: HashMap<&str, Vec<u64>> = HashMap::new();
        for r in ledger.refunds.values() {
            refunds.entry(r.payment_intent.as_str()).or_default().push(r.amount);
        }
        ledger
            .intents
            .values()
            .map(|i| IntentView::of(i, refunds.remove(i.id.as_str()).unwrap_or_default()))
            .collect()
    }

    /// Changes the random faults from now on.
    pub fn set_faults(&self, faults: FaultConfig) {
        *self.inner.faults.lock() = faults;
    }

    /// One API request carried in process, as it would arrive over HTTP (with the
    /// configured secret key): the answer's status and body. The response of a request
    /// that plays a timeout comes after the delay, as over the network.
    pub async fn call(
        &self,
        method: http::Method,
        path_and_query: &str,
        idempotency_key: Option<&str>,
        form: Option<String>,
    ) -> (u16, Bytes) {
        use tower::ServiceExt as _;
        let mut req = http::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.inner.config.secret_key));
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        if form.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let Ok(req) = req.body(Body::from(form.unwrap_or_default())) else {
            return (400, Bytes::from_static(b"{}"));
        };
        let Ok(resp) = self.router().oneshot(req).await;
        let status = resp.status().as_u16();
        match axum::body::to_bytes(resp.into_body(), usize::MAX).await {
            Ok(body) => (status, body),
            // A reset mid-response (`pm_card_tessera_reset`).
            Err(_) => (599, Bytes::new()),
        }
    }
}

/// A PaymentIntent as the simulator keeps it, for checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentView {
    /// As the adapter reads it (see `tessera_payments::Payment`).
    pub payment: tessera_payments::Payment,
    pub customer_id: Option<String>,
    pub payment_method: Option<String>,
    /// Charges captured (a PaymentIntent allows one).
    pub captures: u32,
    /// Refunded amounts, one per refund.
    pub refunds: Vec<u64>,
    /// Whether a charge ever held or took the amount on the card.
    pub ever_held_funds: bool,
}

impl IntentView {
    fn of(i: &state::Intent, refunds: Vec<u64>) -> Self {
        let payment = tessera_payments::Payment {
            id: i.id.clone(),
            status: i.status,
            amount_minor: i.amount,
            amount_capturable_minor: i.amount_capturable,
            amount_received_minor: i.amount_received,
            amount_refunded_minor: i.latest_charge().map_or(0, |c| c.amount_refunded),
            currency: i.currency.clone(),
            order_id: i.metadata.get("order_id").cloned(),
            last_error_code: i.last_payment_error.as_ref().map(|e| e.code.clone()),
            created_s: i.created,
        };
        IntentView {
            payment,
            customer_id: i.metadata.get("customer_id").cloned(),
            payment_method: i.payment_method.clone(),
            captures: i.charges.iter().filter(|c| c.captured).count() as u32,
            refunds,
            ever_held_funds: i.charges.iter().any(|c| c.status == "succeeded"),
        }
    }
}

/// Binds `listener` and serves the simulator until `shutdown` resolves.
pub async fn serve(
    sim: Simulator,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limit = sim.inner.config.body_limit_bytes;
    let tls = sim.inner.config.tls.acceptor()?;
    let app = tessera_runtime::http::with_common_layers("paysim", sim.router(), limit);
    tessera_runtime::http::serve_maybe_tls(listener, app, tls, shutdown).await
}

/// Which operation a POST is, for faults and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Confirm,
    Capture,
    Cancel,
    Refund,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Confirm => "confirm",
            Op::Capture => "capture",
            Op::Cancel => "cancel",
            Op::Refund => "refund",
        }
    }
}

fn wire_error(e: &WireErr) -> Response {
    json_response(e.status, &e.to_json().to_string(), false)
}

fn json_response(status: u16, body: &str, replayed: bool) -> Response {
    let mut resp = Response::new(Body::from(body.to_owned()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if replayed {
        resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

fn api_error_500() -> String {
    json!({"error": {"type": "api_error", "message": "An unknown error occurred"}}).to_string()
}

/// Stripe takes the secret key as a bearer token or as the Basic user name (`curl -u sk_...:`).
fn authorized(sim: &Simulator, headers: &HeaderMap) -> bool {
    use base64::Engine as _;
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let key = &sim.inner.config.secret_key;
    if key.is_empty() {
        return false;
    }
    if let Some(token) = value.strip_prefix("Bearer ") {
        return tessera_runtime::config::constant_time_eq(token, key);
    }
    value
        .strip_prefix("Basic ")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|user_pass| user_pass.strip_suffix(b":").map(<[u8]>::to_vec))
        .and_then(|user| String::from_utf8(user).ok())
        .is_some_and(|user| tessera_runtime::config::constant_time_eq(&user, key))
}

fn unauthorized() -> Response {
    let mut e = WireErr::invalid("api_key_invalid", "Invalid API Key provided.", None);
    e.status = 401;
    e.code = None;
    wire_error(&e)
}

fn parse_form(body: &[u8]) -> Result<Params, WireErr> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|_| WireErr::invalid("parameter_invalid_string", "Invalid request body", None))?;
    Params::parse(pairs)
}

fn roll(rng: &dyn Rng, rate: f64) -> bool {
    rate > 0.0 && (rng.below(1_000_000) as f64) < rate * 1_000_000.0
}

async fn create_intent(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    handle_post(sim, Op::Create, None, headers, body).await
}

async fn confirm_intent(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle_post(sim, Op::Confirm, Some(id), headers, body).await
}

async fn capture_intent(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle_post(sim, Op::Capture, Some(id), headers, body).await
}

async fn cancel_intent(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle_post(sim, Op::Cancel, Some(id), headers, body).await
}

async fn create_refund(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    handle_post(sim, Op::Refund, None, headers, body).await
}

/// Removes an idempotency key from the in-flight set when the request ends, however it ends.
struct InFlight {
    sim: Simulator,
    key: Option<String>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(k) = &self.key {
            self.sim.inner.idem.lock().in_flight.remove(k);
        }
    }
}

async fn handle_post(
    sim: Simulator,
    op: Op,
    id: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let resp = handle_post_inner(&sim, op, id, &headers, body).await;
    metrics::counter!("tessera_payments_sim_requests_total", "op" => op.name(), "status" => status_class(resp.status()))
        .increment(1);
    resp
}

fn status_class(s: StatusCode) -> &'static str {
    match s.as_u16() {
        200..=299 => "2xx",
        402 => "402",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

async fn handle_post_inner(
    sim: &Simulator,
    op: Op,
    id: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(sim, headers) {
        return unauthorized();
    }
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let params = match parse_form(&body) {
        Ok(p) => p,
        Err(e) => return wire_error(&e),
    };
    // Stripe compares the endpoint and the parameters; ours are canonicalized by sorting.
    let fingerprint = {
        let mut pairs: Vec<(String, String)> =
            serde_urlencoded::from_bytes(&body).unwrap_or_default();
        pairs.sort();
        format!(
            "{}:{}:{}",
            op.name(),
            id.as_deref().unwrap_or(""),
            serde_urlencoded::to_string(&pairs).unwrap_or_default()
        )
    };
    let mut _in_flight = InFlight { sim: sim.clone(), key: None };
    if let Some(k) = &key {
        let mut idem = sim.inner.idem.lock();
        if let Some((fp, status, saved)) = idem.saved.get(k).cloned() {
            if fp != fingerprint {
                let mut e = WireErr::invalid(
                    "idempotency_key_in_use",
                    format!(
                        "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{k}' if you meant to execute a different request."
                    ),
                    None,
                );
                e.kind = "idempotency_error";
                e.code = None;
                return wire_error(&e);
            }
            return json_response(status, &saved, true);
        }
        if !idem.in_flight.insert(k.clone()) {
            let mut e = WireErr::invalid(
                "idempotency_key_in_use",
                "There is currently another in-progress request using this Idempotent Key. Please try again later.",
                None,
            );
            e.status = 409;
            e.kind = "idempotency_error";
            return wire_error(&e);
        }
        // Ours now: released when this request ends, however it ends.
        _in_flight.key = Some(k.clone());
    }

    // Decide what the card network says and which fault to play, before any work.
    let cfg = &sim.inner.config;
    let faults = sim.inner.faults.lock().clone();
    let rng: &dyn Rng = &*sim.inner.rng;
    let (answer, mut fault) = match op {
        Op::Create | Op::Confirm => {
            let pm = params.scalars.get("payment_method").cloned().or_else(|| {
                id.as_ref().and_then(|i| {
                    sim.inner.ledger.lock().intents.get(i).and_then(|x| x.payment_method.clone())
                })
            });
            match pm {
                None => (CardAnswer::Approve, Fault::None),
                Some(pm) => match card_behaviour(&pm) {
                    Some(b) => b,
                    None => {
                        return wire_error(&WireErr::missing(
                            "PaymentMethod",
                            &pm,
                            Some("payment_method"),
                        ));
                    }
                },
            }
        }
        _ => (CardAnswer::Approve, Fault::None),
    };
    let mut answer = answer;
    let authorizing = matches!(op, Op::Confirm)
        || (op == Op::Create && params.scalars.get("confirm").map(String::as_str) == Some("true"));
    if fault == Fault::None {
        let f = &faults;
        if authorizing && answer == CardAnswer::Approve {
            if roll(rng, f.decline_rate) {
                answer = CardAnswer::Decline {
                    code: "card_declined",
                    decline_code: Some("generic_decline"),
                    message: "Your card was declined.",
                };
            } else if roll(rng, f.timeout_rate) {
                fault = Fault::Timeout;
            } else if roll(rng, f.unknown_rate) {
                fault = Fault::Unknown;
            }
        } else if matches!(op, Op::Capture | Op::Cancel | Op::Refund) {
            if roll(rng, f.followup_timeout_rate) {
                fault = Fault::Timeout;
            } else if roll(rng, f.followup_unknown_rate) {
                fault = Fault::Unknown;
            }
        }
    }
    let latency_ms = if cfg.latency.max_ms > cfg.latency.min_ms {
        cfg.latency.min_ms + rng.below(cfg.latency.max_ms - cfg.latency.min_ms + 1)
    } else {
        cfg.latency.min_ms
    };
    if latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    }

    let now_s = sim.inner.clock.now_ms() / 1000;
    let salt = rng.next_u64();
    let (status, body_text, records, events) = {
        let mut ledger = sim.inner.ledger.lock();
        let applied: Applied = match (op, id.as_deref()) {
            (Op::Create, _) => ledger.create(&params, now_s, salt, &answer),
            (Op::Confirm, Some(id)) => ledger.confirm(id, &params, salt, &answer),
            (Op::Capture, Some(id)) => ledger.capture(id, &params),
            (Op::Cancel, Some(id)) => ledger.cancel(id, &params, now_s),
            (Op::Refund, _) => ledger.refund(&params, now_s, salt),
            (_, None) => Applied {
                status: 404,
                body: WireErr::missing("object", "", None).to_json(),
                intents: vec![],
                refunds: vec![],
                events: vec![],
            },
        };
        // Nothing happened (a validation error): no fault applies and nothing is saved,
        // as Stripe saves results only once an endpoint started executing.
        let changed = !applied.intents.is_empty();
        if !changed {
            fault = Fault::None;
        }
        let (status, text) = if fault == Fault::Unknown {
            (500, api_error_500())
        } else {
            (applied.status, applied.body.to_string())
        };
        let mut records: Vec<Record> =
            applied.intents.into_iter().map(|i| Record::Intent(Box::new(i))).collect();
        records.extend(applied.refunds.into_iter().map(Record::Refund));
        let mut events = Vec::new();
        for (kind, object) in applied.events {
            let seq = ledger.take_seq();
            let e = EventRec {
                seq,
                id: state::object_id("evt", seq, salt.rotate_left(29)),
                kind: kind.to_owned(),
                created: now_s,
                object,
                idempotency_key: key.clone(),
            };
            records.push(Record::Event(e.clone()));
            events.push(e);
        }
        if let (Some(k), true) = (&key, changed) {
            records.push(Record::Idem {
                key: k.clone(),
                fingerprint: fingerprint.clone(),
                status,
                body: text.clone(),
            });
        }
        (status, text, records, events)
    };

    if let Err(e) = sim.inner.journal.append(records.clone()).await {
        tracing::error!("failed to make a payment change durable: {e:#}");
        return json_response(500, &api_error_500(), false);
    }
    // Visible to replays only once durable.
    for r in &records {
        if let Record::Idem { key, fingerprint, status, body } = r {
            sim.inner
                .idem
                .lock()
                .saved
                .insert(key.clone(), (fingerprint.clone(), *status, body.clone()));
        }
    }
    sim.inner.events.lock().extend(events.iter().cloned());
    for e in events {
        for n in 0..cfg.webhooks.len() {
            let _ = sim.inner.webhook_tx.send((e.clone(), n));
        }
    }

    match fault {
        Fault::None | Fault::Unknown => json_response(status, &body_text, false),
        Fault::Timeout => {
            tokio::time::sleep(Duration::from_millis(faults.timeout_delay_ms)).await;
            json_response(status, &body_text, false)
        }
        Fault::Reset => {
            // Promise the whole body, send half of it, then fail the stream: hyper drops
            // the connection and the client sees a truncated response.
            let half = Bytes::copy_from_slice(&body_text.as_bytes()[..body_text.len() / 2]);
            let stream = futures::stream::iter(vec![
                Ok::<Bytes, std::io::Error>(half),
                Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "simulated reset")),
            ]);
            let mut resp = Response::new(Body::from_stream(stream));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(body_text.len()));
            resp
        }
    }
}

fn query_params(raw: Option<String>) -> Result<Params, WireErr> {
    let raw = raw.unwrap_or_default();
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&raw)
        .map_err(|_| WireErr::invalid("parameter_invalid_string", "Invalid query string", None))?;
    Params::parse(pairs)
}

async fn retrieve_intent(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    if !authorized(&sim, &headers) {
        return unauthorized();
    }
    let p = match query_params(q) {
        Ok(p) => p,
        Err(e) => return wire_error(&e),
    };
    let ledger = sim.inner.ledger.lock();
    match ledger.intents.get(&id) {
        Some(i) => {
            json_response(200, &intent_json(i, p.expands("latest_charge")).to_string(), false)
        }
        None => wire_error(&WireErr::missing("payment_intent", &id, None)),
    }
}

async fn retrieve_refund(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&sim, &headers) {
        return unauthorized();
    }
    let ledger = sim.inner.ledger.lock();
    match ledger.refunds.get(&id) {
        Some(r) => json_response(200, &refund_json(r).to_string(), false),
        None => wire_error(&WireErr::missing("refund", &id, None)),
    }
}

async fn search_intents(
    State(sim): State<Simulator>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    if !authorized(&sim, &headers) {
        return unauthorized();
    }
    let p = match query_params(q) {
        Ok(p) => p,
        Err(e) => return wire_error(&e),
    };
    let Some(query) = p.scalars.get("query") else {
        return wire_error(&WireErr::invalid(
            "parameter_missing",
            "Missing required param: query.",
            Some("query"),
        ));
    };
    let limit =
        p.scalars.get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(10).clamp(1, 100);
    let expand = p.expands("data.latest_charge");
    let ledger = sim.inner.ledger.lock();
    match ledger.search(query) {
        Ok(found) => {
            let has_more = found.len() > limit;
            let data: Vec<Value> =
                found.iter().take(limit).map(|i| intent_json(i, expand)).collect();
            let body = json!({
                "object": "search_result",
                "data": data,
                "has_more": has_more,
                "next_page": null,
                "url": "/v1/payment_intents/search",
            });
            json_response(200, &body.to_string(), false)
        }
        Err(e) => wire_error(&e),
    }
}

async fn ledger_report(State(sim): State<Simulator>) -> Response {
    json_response(200, &sim.ledger().to_string(), false)
}

fn ledger_json(ledger: &Ledger) -> Value {
    let mut intents = Vec::new();
    let mut charged_by_order: HashMap<String, u64> = HashMap::new();
    let (mut captured, mut refunded, mut uncaptured) = (0u64, 0u64, 0u64);
    for i in ledger.intents.values() {
        let c = i.amount_captured();
        let r = i.amount_refunded();
        captured += c;
        refunded += r;
        if i.status == tessera_payments::PaymentStatus::RequiresCapture {
            uncaptured += 1;
        }
        let order_id = i.metadata.get("order_id").cloned();
        if c > r
            && let Some(o) = &order_id
        {
            *charged_by_order.entry(o.clone()).or_default() += 1;
        }
        intents.push(json!({
            "id": i.id,
            "order_id": order_id,
            "customer_id": i.metadata.get("customer_id"),
            "status": i.status.as_str(),
            "amount": i.amount,
            "currency": i.currency,
            "amount_capturable": i.amount_capturable,
            "amount_captured": c,
            "amount_refunded": r,
            "net_charged": c - r,
            "created": i.created,
        }));
    }
    let duplicate_charges: u64 = charged_by_order.values().map(|n| n.saturating_sub(1)).sum();
    json!({
        "intents": intents,
        "summary": {
            "intents": ledger.intents.len(),
            "refunds": ledger.refunds.len(),
            "captured_minor": captured,
            "refunded_minor": refunded,
            "net_charged_minor": captured - refunded,
            "orders_charged": charged_by_order.len(),
            "duplicate_charges": duplicate_charges,
            "uncaptured_authorizations": uncaptured,
        }
    })
}

/// Delivers events to endpoints, each delivery in its own task with its own backoff.
async fn deliver_webhooks(
    inner: std::sync::Weak<Inner>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(EventRec, usize)>,
) {
    while let Some((event, n)) = rx.recv().await {
        let Some(strong) = inner.upgrade() else { return };
        drop(strong);
        tokio::spawn(deliver_one(inner.clone(), event, n));
    }
}

fn event_json(e: &EventRec) -> Value {
    json!({
        "id": e.id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": e.created,
        "data": {"object": e.object},
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": e.idempotency_key},
        "type": e.kind,
    })
}

async fn deliver_one(inner: std::sync::Weak<Inner>, event: EventRec, n: usize) {
    let payload = event_json(&event).to_string();
    let mut attempt = 0u32;
    let mut last_signed_s: Option<u64> = None;
    loop {
        attempt += 1;
        let Some(sim) = inner.upgrade() else { return };
        let Some(ep) = sim.config.webhooks.get(n).cloned() else { return };
        let retry = sim.config.webhook_retry.clone();
        // Every attempt is signed anew at a later second than the one before, as a real
        // provider's retries are (Stripe's come minutes apart): the receiver refuses the
        // same signed request twice as a replay, so a retry must never repeat a signature.
        let now_ms = sim.clock.now_ms();
        if let Some(last) = last_signed_s
            && now_ms / 1000 <= last
        {
            let wait_ms = (last + 1) * 1000 - now_ms;
            drop(sim);
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            attempt -= 1;
            continue;
        }
        let now_s = now_ms / 1000;
        last_signed_s = Some(now_s);
        let signature = tessera_payments::webhook::sign(&ep.secret, now_s, payload.as_bytes());
        let result = sim
            .http
            .post(&ep.url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(tessera_payments::webhook::SIGNATURE_HEADER, signature)
            .body(payload.clone())
            .send()
            .await;
        let ok = matches!(&result, Ok(r) if r.status().is_success());
        let outcome = if ok { "delivered" } else { "failed" };
        metrics::counter!("tessera_payments_sim_webhook_attempts_total", "outcome" => outcome)
            .increment(1);
        if ok || attempt >= retry.max_attempts {
            if !ok {
                tracing::warn!(event = %event.id, attempts = attempt, "gave up delivering a webhook");
            }
            let rec =
                Record::Delivery { event_id: event.id.clone(), url: ep.url.clone(), delivered: ok };
            if let Err(e) = sim.journal.append(vec![rec]).await {
                tracing::error!("failed to record a webhook delivery: {e:#}");
            }
            return;
        }
        // The platform's retry policy, seeded from the simulator's randomness.
        let delay = tessera_common::retry::Backoff::new(
            Duration::from_millis(retry.initial_backoff_ms),
            Duration::from_millis(retry.max_backoff_ms),
        )
        .nth(attempt, sim.rng.next_u64());
        drop(sim);
        tokio::time::sleep(delay).await;
    }
}

/// Starts a simulator on a free port of 127.0.0.1 (for tests and tools) and returns its
/// address. It serves until the tokio runtime it was started on shuts down.
pub async fn spawn_local(
    config: SimConfig,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
) -> anyhow::Result<(SocketAddr, Simulator)> {
    let sim = Simulator::open(config, clock, rng)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let s = sim.clone();
    tokio::spawn(async move {
        if let Err(e) = serve(s, listener, std::future::pending()).await {
            tracing::error!("payment simulator stopped: {e:#}");
        }
    });
    Ok((addr, sim))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cards_behave_as_documented() {
        assert_eq!(card_behaviour("pm_card_visa"), Some((CardAnswer::Approve, Fault::None)));
        assert!(matches!(
            card_behaviour("pm_card_visa_chargeDeclinedInsufficientFunds"),
            Some((
                CardAnswer::Decline { decline_code: Some("insufficient_funds"), .. },
                Fault::None
            ))
        ));
        assert!(matches!(
            card_behaviour("pm_card_chargeDeclinedExpiredCard"),
            Some((CardAnswer::Decline { code: "expired_card", .. }, _))
        ));
        assert_eq!(
            card_behaviour("pm_card_tessera_timeout"),
            Some((CardAnswer::Approve, Fault::Timeout))
        );
        assert_eq!(card_behaviour("pm_card_nonsense"), None);
        assert_eq!(card_behaviour("pm_card_chargeDeclinedWhatever"), None);
    }
}
