//! The adapter for Stripe's PaymentIntents REST API (`/v1/payment_intents`, `/v1/refunds`).
//!
//! Requests are form-encoded with Stripe's bracket syntax (`metadata[order_id]=...`,
//! `expand[]=latest_charge`), authenticated with the secret key as a bearer token, and
//! every POST carries an `Idempotency-Key`. Responses and errors are JSON
//! (`{"error": {"type", "code", "decline_code", "message", "payment_intent"}}`).
//!
//! The base URL is configurable: `https://api.stripe.com` in production, the local
//! simulator (`tessera-paysim`) in development and tests. Requests go through a
//! [`Transport`]: HTTPS ([`HttpTransport`]) everywhere but in the deterministic simulator,
//! which carries them in process to the same simulator.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use tessera_api::OrderId;
use tracing::Instrument as _;

use crate::provider::{
    AuthorizeRequest, IdempotencyKey, Payment, PaymentError, PaymentProvider, PaymentStatus,
    Refund, RefundStatus,
};

/// How to reach the provider.
#[derive(Debug, Clone)]
pub struct StripeConfig {
    /// `https://api.stripe.com`, or the simulator's `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// `sk_live_...` / `sk_test_...`.
    pub secret_key: SecretString,
    /// The longest a call may take before its outcome is declared unknown.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Pins `Stripe-Version`; the account default applies when unset.
    pub api_version: Option<String>,
    /// PEM certificates trusted besides the public web roots (a provider reached through
    /// a private certificate authority, such as an egress proxy).
    pub extra_roots_pem: Option<Vec<u8>>,
}

impl StripeConfig {
    pub fn new(base_url: impl Into<String>, secret_key: SecretString) -> Self {
        StripeConfig {
            base_url: base_url.into(),
            secret_key,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            api_version: None,
            extra_roots_pem: None,
        }
    }
}

/// One request of the adapter as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRequest {
    pub method: http::Method,
    /// The path and the query, `/v1/payment_intents/search?query=...`.
    pub path_and_query: String,
    /// The form-encoded body of a POST (`application/x-www-form-urlencoded`).
    pub form: Option<String>,
    pub idempotency_key: Option<String>,
}

/// How the adapter's requests reach the provider: the answer's status and body, or the
/// error that stands for no answer ([`PaymentError::Unavailable`] when the request was
/// never delivered, [`PaymentError::Unknown`] when it may have been). [`HttpTransport`]
/// speaks HTTPS; the deterministic simulator carries requests in process to
/// `tessera-paysim`, so it drives this adapter, not a stand-in.
#[async_trait::async_trait]
pub trait Transport: Send + Sync + std::fmt::Debug {
    async fn send(&self, req: WireRequest) -> Result<(u16, bytes::Bytes), PaymentError>;
}

/// A [`Transport`] over HTTPS with `reqwest` (the secret key as a bearer token, the pinned
/// API version, W3C trace context).
#[derive(Debug, Clone)]
pub struct HttpTransport {
    http: reqwest::Client,
    base_url: String,
    secret_key: SecretString,
    api_version: Option<String>,
}

impl HttpTransport {
    pub fn new(config: StripeConfig) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("tessera-payments/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &config.extra_roots_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build()?;
        Ok(HttpTransport {
            http,
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            secret_key: config.secret_key,
            api_version: config.api_version,
        })
    }
}

#[async_trait::async_trait]
impl Transport for HttpTransport {
    async fn send(&self, req: WireRequest) -> Result<(u16, bytes::Bytes), PaymentError> {
        let mut r = self
            .http
            .request(req.method, format!("{}{}", self.base_url, req.path_and_query))
            .bearer_auth(self.secret_key.expose_secret());
        if let Some(v) = &self.api_version {
            r = r.header("stripe-version", v);
        }
        let mut trace = http::HeaderMap::new();
        tessera_runtime::telemetry::inject_headers(&mut trace);
        r = r.headers(trace);
        if let Some(key) = &req.idempotency_key {
            r = r.header("idempotency-key", key);
        }
        if let Some(form) = req.form {
            r = r
                .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form);
        }
        send_inner(r).await
    }
}

/// A [`PaymentProvider`] speaking Stripe's API.
#[derive(Debug, Clone)]
pub struct StripeClient {
    transport: std::sync::Arc<dyn Transport>,
}

impl StripeClient {
    /// The adapter over HTTPS.
    pub fn new(config: StripeConfig) -> anyhow::Result<Self> {
        Ok(Self::with_transport(std::sync::Arc::new(HttpTransport::new(config)?)))
    }

    /// The adapter over another transport.
    pub fn with_transport(transport: std::sync::Arc<dyn Transport>) -> Self {
        StripeClient { transport }
    }

    async fn post(
        &self,
        op: &'static str,
        path: &str,
        form: &[(&str, String)],
        key: &IdempotencyKey,
    ) -> Result<bytes::Bytes, PaymentError> {
        let req = WireRequest {
            method: http::Method::POST,
            path_and_query: path.to_owned(),
            form: Some(encode(form)?),
            idempotency_key: Some(key.as_str().to_owned()),
        };
        self.send(op, req).await
    }

    async fn get(
        &self,
        op: &'static str,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<bytes::Bytes, PaymentError> {
        let path_and_query =
            if query.is_empty() { path.to_owned() } else { format!("{path}?{}", encode(query)?) };
        let req = WireRequest {
            method: http::Method::GET,
            path_and_query,
            form: None,
            idempotency_key: None,
        };
        self.send(op, req).await
    }

    async fn send(&self, op: &'static str, req: WireRequest) -> Result<bytes::Bytes, PaymentError> {
        let started = Instant::now();
        let result = match self.transport.send(req).await {
            Ok((status, body)) if (200..300).contains(&status) => Ok(body),
            Ok((status, body)) => Err(api_error(status, &body)),
            Err(e) => Err(e),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        metrics::counter!("tessera_payments_provider_requests_total", "op" => op, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("tessera_payments_provider_request_duration_seconds", "op" => op)
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &result
            && e.is_unknown()
        {
            tracing::warn!(op, "payment call outcome unknown: {e}");
        }
        result
    }
}

/// Form or query encoding, as Stripe reads it.
fn encode(pairs: &[(&str, String)]) -> Result<String, PaymentError> {
    serde_urlencoded::to_string(pairs).map_err(|e| PaymentError::Invalid {
        code: "unencodable".to_owned(),
        message: e.to_string(),
        param: None,
    })
}

async fn send_inner(req: reqwest::RequestBuilder) -> Result<(u16, bytes::Bytes), PaymentError> {
    let resp = req.send().await.map_err(transport_error)?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| PaymentError::Unknown {
        reason: format!("reading the response failed: {}", error_chain(&e)),
    })?;
    Ok((status.as_u16(), body))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn transport_error(e: reqwest::Error) -> PaymentError {
    if e.is_connect() {
        // The connection was never established, so the request was never delivered.
        return PaymentError::Unavailable { reason: error_chain(&e) };
    }
    if e.is_timeout() {
        return PaymentError::Unknown { reason: "the provider did not answer in time".to_owned() };
    }
    PaymentError::Unknown { reason: error_chain(&e) }
}

#[derive(Deserialize)]
struct WireErrorEnvelope {
    error: WireError,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    decline_code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    param: Option<String>,
    #[serde(default)]
    payment_intent: Option<WirePaymentIntent>,
}

/// Codes that say the object is in the wrong state rather than that the request is bad.
const WRONG_STATE_CODES: &[&str] = &[
    "payment_intent_unexpected_state",
    "charge_already_captured",
    "charge_already_refunded",
    "charge_expired_for_capture",
    "charge_not_refundable",
    "amount_too_large",
];

fn api_error(status: u16, body: &[u8]) -> PaymentError {
    if status >= 500 {
        return PaymentError::Unknown { reason: format!("the provider answered {status}") };
    }
    let Ok(WireErrorEnvelope { error }) = serde_json::from_slice::<WireErrorEnvelope>(body) else {
        // A 4xx we cannot read. 4xx means "not executed" in Stripe's contract, but an
        // unreadable one may come from a proxy in between; stay on the safe side.
        return PaymentError::Unknown { reason: format!("unreadable {status} from the provider") };
    };
    let code = error.code.clone().unwrap_or_default();
    let message = error.message.clone().unwrap_or_default();
    match (status, error.kind.as_str()) {
        (_, "card_error") | (402, _) => PaymentError::Declined {
            code: if code.is_empty() { "card_declined".to_owned() } else { code },
            decline_code: error.decline_code,
            payment_id: error.payment_intent.map(|pi| pi.id),
        },
        (_, "idempotency_error") if status != 409 => PaymentError::IdempotencyConflict,
        // Another request with the same key is still running: its outcome is not ours to
        // know yet.
        (409, _) => {
            PaymentError::Unknown { reason: "a request with this key is in progress".into() }
        }
        (401 | 403, _) => PaymentError::Unauthorized,
        (429, _) => PaymentError::RateLimited,
        (404, _) => PaymentError::NotFound,
        _ if WRONG_STATE_CODES.contains(&code.as_str()) => {
            PaymentError::WrongState { code, message }
        }
        _ => PaymentError::Invalid {
            code: if code.is_empty() { error.kind } else { code },
            message,
            param: error.param,
        },
    }
}

/// A PaymentIntent as Stripe serializes it (only the fields we read).
#[derive(Debug, Deserialize)]
pub(crate) struct WirePaymentIntent {
    pub(crate) id: String,
    status: PaymentStatus,
    amount: u64,
    #[serde(default)]
    amount_capturable: u64,
    #[serde(default)]
    amount_received: u64,
    currency: String,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    last_payment_error: Option<WireLastError>,
    /// An id, or the charge object when expanded.
    #[serde(default)]
    latest_charge: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct WireLastError {
    #[serde(default)]
    code: Option<String>,
}

impl WirePaymentIntent {
    pub(crate) fn into_payment(self) -> Payment {
        let amount_refunded_minor = self
            .latest_charge
            .as_ref()
            .and_then(|c| c.get("amount_refunded"))
            .and_then(|a| a.as_u64())
            .unwrap_or(0);
        Payment {
            id: self.id,
            status: self.status,
            amount_minor: self.amount,
            amount_capturable_minor: self.amount_capturable,
            amount_received_minor: self.amount_received,
            amount_refunded_minor,
            currency: self.currency,
            order_id: self.metadata.get("order_id").cloned(),
            last_error_code: self.last_payment_error.and_then(|e| e.code),
            created_s: self.created,
        }
    }
}

#[derive(Deserialize)]
struct WireRefund {
    id: String,
    amount: u64,
    currency: String,
    status: RefundStatus,
    payment_intent: Option<String>,
}

#[derive(Deserialize)]
struct WireSearch {
    data: Vec<WirePaymentIntent>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, PaymentError> {
    // The call succeeded but we cannot read what it did: for a mutating call that is an
    // unknown outcome.
    serde_json::from_slice(body).map_err(|e| PaymentError::Unknown {
        reason: format!("unreadable response from the provider: {e}"),
    })
}

/// Provider ids go into URL paths; refuse anything that is not a plain id.
fn check_id(id: &str) -> Result<&str, PaymentError> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(id)
    } else {
        Err(PaymentError::Invalid {
            code: "invalid_id".to_owned(),
            message: "not a provider object id".to_owned(),
            param: Some("id".to_owned()),
        })
    }
}

fn check_money(amount_minor: u64, currency: &str) -> Result<String, PaymentError> {
    if amount_minor == 0 {
        return Err(PaymentError::Invalid {
            code: "amount_too_small".into(),
            message: "amount must be at least 1 minor unit".into(),
            param: Some("amount".into()),
        });
    }
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(PaymentError::Invalid {
            code: "invalid_currency".into(),
            message: "currency must be an ISO 4217 code".into(),
            param: Some("currency".into()),
        });
    }
    Ok(currency.to_ascii_lowercase())
}

#[async_trait::async_trait]
impl PaymentProvider for StripeClient {
    async fn authorize(
        &self,
        req: &AuthorizeRequest,
        key: &IdempotencyKey,
    ) -> Result<Payment, PaymentError> {
        let span = tracing::info_span!("payments.authorize", order_id = %req.order_id);
        async {
            let currency = check_money(req.amount_minor, &req.currency)?;
            let mut form = vec![
                ("amount", req.amount_minor.to_string()),
                ("currency", currency),
                ("payment_method", req.payment_method.clone()),
                ("payment_method_types[]", "card".to_owned()),
                ("capture_method", "manual".to_owned()),
                ("confirm", "true".to_owned()),
                ("metadata[order_id]", req.order_id.to_string()),
                ("metadata[customer_id]", req.customer_id.to_string()),
                ("expand[]", "latest_charge".to_owned()),
            ];
            if let Some(d) = &req.description {
                form.push(("description", d.clone()));
            }
            let body = self.post("authorize", "/v1/payment_intents", &form, key).await?;
            Ok(parse::<WirePaymentIntent>(&body)?.into_payment())
        }
        .instrument(span)
        .await
    }

    async fn capture(
        &self,
        payment_id: &str,
        amount_minor: Option<u64>,
        key: &IdempotencyKey,
    ) -> Result<Payment, PaymentError> {
        let span = tracing::info_span!("payments.capture", payment_id);
        async {
            let id = check_id(payment_id)?;
            let mut form = vec![("expand[]", "latest_charge".to_owned())];
            if let Some(a) = amount_minor {
                form.push(("amount_to_capture", a.to_string()));
            }
            let path = format!("/v1/payment_intents/{id}/capture");
            let body = self.post("capture", &path, &form, key).await?;
            Ok(parse::<WirePaymentIntent>(&body)?.into_payment())
        }
        .instrument(span)
        .await
    }

    async fn cancel(
        &self,
        payment_id: &str,
        key: &IdempotencyKey,
    ) -> Result<Payment, PaymentError> {
        let span = tracing::info_span!("payments.cancel", payment_id);
        async {
            let id = check_id(payment_id)?;
            let form = [("cancellation_reason", "abandoned".to_owned())];
            let path = format!("/v1/payment_intents/{id}/cancel");
            let body = self.post("cancel", &path, &form, key).await?;
            Ok(parse::<WirePaymentIntent>(&body)?.into_payment())
        }
        .instrument(span)
        .await
    }

    async fn refund(
        &self,
        payment_id: &str,
        amount_minor: Option<u64>,
        key: &IdempotencyKey,
    ) -> Result<Refund, PaymentError> {
        let span = tracing::info_span!("payments.refund", payment_id);
        async {
            let id = check_id(payment_id)?;
            let mut form = vec![("payment_intent", id.to_owned())];
            if let Some(a) = amount_minor {
                form.push(("amount", a.to_string()));
            }
            let body = self.post("refund", "/v1/refunds", &form, key).await?;
            let r: WireRefund = parse(&body)?;
            Ok(Refund {
                id: r.id,
                payment_id: r.payment_intent.unwrap_or_else(|| id.to_owned()),
                amount_minor: r.amount,
                currency: r.currency,
                status: r.status,
            })
        }
        .instrument(span)
        .await
    }

    async fn retrieve(&self, payment_id: &str) -> Result<Payment, PaymentError> {
        let span = tracing::info_span!("payments.retrieve", payment_id);
        async {
            let id = check_id(payment_id)?;
            let path = format!("/v1/payment_intents/{id}");
            let body = self.get("retrieve", &path, &[("expand[]", "latest_charge".into())]).await?;
            Ok(parse::<WirePaymentIntent>(&body)?.into_payment())
        }
        .instrument(span)
        .await
    }

    async fn find_by_order(&self, order_id: &OrderId) -> Result<Vec<Payment>, PaymentError> {
        let span = tracing::info_span!("payments.find_by_order", %order_id);
        async {
            // Order ids are `o_[a-z0-9]+`, so they need no escaping inside the quotes.
            let query = format!("metadata['order_id']:'{order_id}'");
            let params = [
                ("query", query),
                ("limit", "100".to_owned()),
                ("expand[]", "data.latest_charge".to_owned()),
            ];
            let body = self.get("find_by_order", "/v1/payment_intents/search", &params).await?;
            let found: WireSearch = parse(&body)?;
            let mut payments: Vec<Payment> =
                found.data.into_iter().map(WirePaymentIntent::into_payment).collect();
            payments.sort_by(|a, b| b.created_s.cmp(&a.created_s).then_with(|| b.id.cmp(&a.id)));
            Ok(payments)
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: u16, body: &str) -> PaymentError {
        api_error(status, body.as_bytes())
    }

    #[test]
    fn maps_provider_errors_to_what_the_saga_branches_on() {
        let declined = err(
            402,
            r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds","message":"no","payment_intent":{"id":"pi_1","status":"requires_payment_method","amount":5,"currency":"eur"}}}"#,
        );
        assert_eq!(
            declined,
            PaymentError::Declined {
                code: "card_declined".into(),
                decline_code: Some("insufficient_funds".into()),
                payment_id: Some("pi_1".into())
            }
        );
        assert!(err(500, r#"{"error":{"type":"api_error"}}"#).is_unknown());
        assert!(err(503, "<html>").is_unknown());
        assert!(err(409, r#"{"error":{"type":"idempotency_error"}}"#).is_unknown());
        assert_eq!(
            err(400, r#"{"error":{"type":"idempotency_error","message":"x"}}"#),
            PaymentError::IdempotencyConflict
        );
        assert_eq!(
            err(401, r#"{"error":{"type":"invalid_request_error"}}"#),
            PaymentError::Unauthorized
        );
        assert_eq!(
            err(404, r#"{"error":{"type":"invalid_request_error","code":"resource_missing"}}"#),
            PaymentError::NotFound
        );
        assert!(matches!(
            err(
                400,
                r#"{"error":{"type":"invalid_request_error","code":"payment_intent_unexpected_state"}}"#
            ),
            PaymentError::WrongState { .. }
        ));
        assert!(matches!(
            err(400, r#"{"error":{"type":"invalid_request_error","code":"resource_missing","param":"payment_method"}}"#),
            PaymentError::Invalid { param: Some(p), .. } if p == "payment_method"
        ));
    }
}
