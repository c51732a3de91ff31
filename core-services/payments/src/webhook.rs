//! Provider webhooks: the `Stripe-Signature` scheme and the event envelope.
//!
//! The provider signs `"<t>.<raw body>"` with HMAC-SHA256 under the endpoint's signing
//! secret and sends `Stripe-Signature: t=<unix seconds>,v1=<hex>` (several `v1` entries
//! while a secret is being rolled). A receiver checks that one `v1` matches and that `t`
//! is within a tolerance of its own clock, so a captured request cannot be replayed later.

use hmac::{Hmac, Mac as _};
use serde::Deserialize;
use sha2::Sha256;
use tessera_api::ErrorCode;

use crate::provider::{Payment, PaymentStatus};
use crate::stripe::WirePaymentIntent;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "stripe-signature";

/// How far the signed timestamp may be from our clock (Stripe's libraries use 300 s).
pub const DEFAULT_TOLERANCE_S: u64 = 300;

/// Why a webhook was refused. Every variant maps to
/// [`ErrorCode::WebhookSignatureInvalid`]: the sender learns nothing about which check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the signature header is missing")]
    MissingHeader,
    #[error("the signature header is malformed")]
    Malformed,
    #[error("no signature matches the payload")]
    NoMatchingSignature,
    #[error("the signature timestamp is outside the tolerance")]
    TimestampOutsideTolerance,
    #[error("the payload is not a provider event")]
    BadPayload,
}

impl WebhookError {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::WebhookSignatureInvalid
    }
}

fn mac(secret: &str, timestamp_s: u64, payload: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("hmac takes any key length"));
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

/// The `Stripe-Signature` header value for `payload` signed at `timestamp_s`.
pub fn sign(secret: &str, timestamp_s: u64, payload: &[u8]) -> String {
    let sig = mac(secret, timestamp_s, payload).finalize().into_bytes();
    format!("t={timestamp_s},v1={}", hex::encode(sig))
}

/// Checks a `Stripe-Signature` header against the raw request body. The MAC comparison is
/// constant-time (`hmac`'s `verify_slice`). Returns the signed timestamp.
pub fn verify(
    secret: &str,
    header: Option<&str>,
    payload: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<u64, WebhookError> {
    let header = header.ok_or(WebhookError::MissingHeader)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let (k, v) = item.trim().split_once('=').ok_or(WebhookError::Malformed)?;
        match k {
            "t" => timestamp = Some(v.parse::<u64>().map_err(|_| WebhookError::Malformed)?),
            "v1" => signatures.push(v),
            // Other schemes (`v0` test signatures) are ignored, as the provider documents.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(WebhookError::Malformed)?;
    if signatures.is_empty() {
        return Err(WebhookError::NoMatchingSignature);
    }
    let matched = signatures.iter().any(|sig| {
        hex::decode(sig)
            .is_ok_and(|bytes| mac(secret, timestamp, payload).verify_slice(&bytes).is_ok())
    });
    if !matched {
        return Err(WebhookError::NoMatchingSignature);
    }
    if now_s.abs_diff(timestamp) > tolerance_s {
        return Err(WebhookError::TimestampOutsideTolerance);
    }
    Ok(timestamp)
}

/// A verified delivery: the event and when the provider signed this delivery of it. The
/// provider signs each delivery (retries included) anew, so `(signed_at_s, event.id)`
/// names one delivery, and a second request with the same pair is a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDelivery {
    pub event: ProviderEvent,
    pub signed_at_s: u64,
}

/// Verifies a webhook request and parses its event, keeping the signed timestamp.
pub fn verify_delivery(
    secret: &str,
    header: Option<&str>,
    payload: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<VerifiedDelivery, WebhookError> {
    let signed_at_s = verify(secret, header, payload, now_s, tolerance_s)?;
    Ok(VerifiedDelivery { event: parse_event(payload)?, signed_at_s })
}

/// A verified provider event, reduced to what the saga acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEvent {
    /// `evt_...`; deliveries can repeat, so handle events idempotently by this id.
    pub id: String,
    /// `payment_intent.succeeded`, `payment_intent.canceled`, `charge.refunded`...
    pub kind: String,
    pub created_s: u64,
    pub data: ProviderEventData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderEventData {
    /// The payment as it was when the event happened.
    Payment(Payment),
    /// A charge event: which payment it belongs to and how much was refunded so far.
    Charge { payment_id: String, amount_refunded_minor: u64, order_id: Option<String> },
    /// An object this build does not interpret.
    Other { object: String },
}

#[derive(Deserialize)]
struct WireEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    created: u64,
    data: WireEventData,
}

#[derive(Deserialize)]
struct WireEventData {
    object: serde_json::Value,
}

#[derive(Deserialize)]
struct WireChargeRef {
    payment_intent: Option<String>,
    #[serde(default)]
    amount_refunded: u64,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
}

/// Verifies a webhook request and parses its event. Use the raw body bytes exactly as
/// received: re-serialized JSON does not match the signature.
pub fn verify_event(
    secret: &str,
    header: Option<&str>,
    payload: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<ProviderEvent, WebhookError> {
    Ok(verify_delivery(secret, header, payload, now_s, tolerance_s)?.event)
}

/// Parses an event body (after [`verify`]).
pub fn parse_event(payload: &[u8]) -> Result<ProviderEvent, WebhookError> {
    let event: WireEvent = serde_json::from_slice(payload).map_err(|_| WebhookError::BadPayload)?;
    let object = event.data.object;
    let kind_of_object = object.get("object").and_then(|o| o.as_str()).unwrap_or("").to_owned();
    let data = match kind_of_object.as_str() {
        "payment_intent" => {
            let pi: WirePaymentIntent =
                serde_json::from_value(object).map_err(|_| WebhookError::BadPayload)?;
            ProviderEventData::Payment(pi.into_payment())
        }
        "charge" => {
            let ch: WireChargeRef =
                serde_json::from_value(object).map_err(|_| WebhookError::BadPayload)?;
            ProviderEventData::Charge {
                payment_id: ch.payment_intent.ok_or(WebhookError::BadPayload)?,
                amount_refunded_minor: ch.amount_refunded,
                order_id: ch.metadata.get("order_id").cloned(),
            }
        }
        _ => ProviderEventData::Other { object: kind_of_object },
    };
    Ok(ProviderEvent { id: event.id, kind: event.kind, created_s: event.created, data })
}

impl ProviderEvent {
    /// The payment status this event reports, for payment events.
    pub fn payment_status(&self) -> Option<PaymentStatus> {
        match &self.data {
            ProviderEventData::Payment(p) => Some(p.status),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test";

    #[test]
    fn accepts_its_own_signatures_and_rejects_tampering() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(SECRET, 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(verify(SECRET, Some(&header), body, 1_700_000_010, 300), Ok(1_700_000_000));
        assert_eq!(
            verify(SECRET, Some(&header), br#"{"id":"evt_2"}"#, 1_700_000_010, 300),
            Err(WebhookError::NoMatchingSignature)
        );
        assert_eq!(
            verify("whsec_other", Some(&header), body, 1_700_000_010, 300),
            Err(WebhookError::NoMatchingSignature)
        );
        assert_eq!(
            verify(SECRET, Some(&header), body, 1_700_000_301, 300),
            Err(WebhookError::TimestampOutsideTolerance)
        );
        assert_eq!(verify(SECRET, None, body, 0, 300), Err(WebhookError::MissingHeader));
        assert_eq!(verify(SECRET, Some("v1=abc"), body, 0, 300), Err(WebhookError::Malformed));
        assert_eq!(verify(SECRET, Some("garbage"), body, 0, 300), Err(WebhookError::Malformed));
    }

    #[test]
    fn accepts_any_of_several_signatures_while_secrets_roll() {
        let body = b"{}";
        let old = sign("whsec_old", 100, body);
        let new = sign(SECRET, 100, body);
        let both = format!("{},{}", new, old.split_once(',').unwrap().1);
        assert_eq!(verify("whsec_old", Some(&both), body, 100, 300), Ok(100));
        assert_eq!(verify(SECRET, Some(&both), body, 100, 300), Ok(100));
    }
}
