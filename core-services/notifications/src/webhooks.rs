//! Operator webhooks: endpoint settings, the `tessera-signature` scheme, and one delivery
//! attempt over HTTP.
//!
//! The body is the [`BusEvent`] JSON. The signature header is
//! `tessera-signature: t=<unix seconds>,v1=<hex hmac-sha256(secret, "<t>.<body>")>`.
//! Receivers check it with [`verify`] against the raw body and their clock; deliveries
//! repeat after failures, so receivers should apply events idempotently by `id`.

use std::time::Duration;

use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tessera_api::ErrorCode;
use tessera_api::bus::BusEvent;
use tessera_api::headers::WEBHOOK_SIGNATURE;

/// Default tolerance between the signed time and the receiver's clock.
pub const DEFAULT_TOLERANCE_S: u64 = 300;

/// An operator's endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]

pub struct WebhookEndpoint {
    /// Stable id; deliveries refer to the endpoint by it.
    pub id: String,
    pub url: String,
    /// The signing secret shared with the receiver (never logged).
    pub secret: tessera_runtime::config::Secret,
    /// Event kinds to send (`order.completed`, `hold.expiring`...); empty sends all.
    #[serde(default)]
    pub events: Vec<String>,
}

impl WebhookEndpoint {
    pub fn wants(&self, kind: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|k| k == kind)
    }
}

/// Why a webhook was refused. All map to [`ErrorCode::WebhookSignatureInvalid`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is missing")]
    Missing,
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the signature does not match the body")]
    Mismatch,
    #[error("the signature timestamp is outside the tolerance")]
    Stale,
}

impl SignatureError {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::WebhookSignatureInvalid
    }
}

fn mac(secret: &str, t: u64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("hmac takes keys of any length"));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `tessera-signature` value for `body` signed at `t` (unix seconds).
pub fn sign(secret: &str, t: u64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex::encode(mac(secret, t, body).finalize().into_bytes()))
}

/// Checks a `tessera-signature` header against the raw body. Accepts any of several `v1`
/// entries (sent while a secret is rotated).
pub fn verify(
    secret: &str,
    header: Option<&str>,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<u64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", v)) => sigs.push(v),
            Some(_) => {}
            None => return Err(SignatureError::Malformed),
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    let ok = sigs.iter().any(|s| {
        hex::decode(s).is_ok_and(|bytes| mac(secret, t, body).verify_slice(&bytes).is_ok())
    });
    if !ok {
        return Err(SignatureError::Mismatch);
    }
    if now_s.abs_diff(t) > tolerance_s {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

/// Sends one signed delivery. `Ok` means the receiver answered 2xx.
pub(crate) async fn post(
    http: &reqwest::Client,
    endpoint: &WebhookEndpoint,
    event: &BusEvent,
    now_s: u64,
    timeout: Duration,
) -> Result<(), String> {
    let body = serde_json::to_vec(event).map_err(|e| format!("encode event: {e}"))?;
    let signature = sign(endpoint.secret.expose(), now_s, &body);
    let mut headers = http::HeaderMap::new();
    tessera_runtime::telemetry::inject_headers(&mut headers);
    let resp = http
        .post(&endpoint.url)
        .headers(headers)
        .timeout(timeout)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(WEBHOOK_SIGNATURE, signature)
        .body(body)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() { "timed out".to_owned() } else { "connection failed".to_owned() }
        })?;
    let status = resp.status();
    if status.is_success() { Ok(()) } else { Err(format!("endpoint answered {}", status.as_u16())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_signatures_and_refuses_forgeries() {
        let body = br#"{"id":"1"}"#;
        let h = sign("s3cret", 1_000, body);
        assert_eq!(verify("s3cret", Some(&h), body, 1_010, 300), Ok(()));
        assert_eq!(verify("s3cret", Some(&h), b"{}", 1_010, 300), Err(SignatureError::Mismatch));
        assert_eq!(verify("other", Some(&h), body, 1_010, 300), Err(SignatureError::Mismatch));
        assert_eq!(verify("s3cret", Some(&h), body, 1_301, 300), Err(SignatureError::Stale));
        assert_eq!(verify("s3cret", None, body, 1_000, 300), Err(SignatureError::Missing));
        assert_eq!(
            verify("s3cret", Some("t=x,v1=00"), body, 1_000, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify("s3cret", Some("v1=00"), body, 1_000, 300),
            Err(SignatureError::Malformed)
        );
        let rotated = format!("{},v1={}", h, "ab".repeat(32));
        assert_eq!(verify("s3cret", Some(&rotated), body, 1_000, 300), Ok(()));
        assert_eq!(SignatureError::Stale.code().status(), 400);
    }

    #[test]
    fn endpoints_filter_by_kind() {
        let mut e = WebhookEndpoint {
            id: "a".into(),
            url: "u".into(),
            secret: tessera_runtime::config::Secret::new("s"),
            events: vec![],
        };
        assert!(e.wants("order.completed"));
        e.events = vec!["order.completed".into()];
        assert!(e.wants("order.completed") && !e.wants("hold.expiring"));
    }
}
