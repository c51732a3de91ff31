//! The provider-neutral interface: what the checkout saga needs from a card processor.

use std::fmt;

use serde::{Deserialize, Serialize};
use tessera_api::{CustomerId, OrderId};

/// The longest idempotency key providers accept (Stripe: 255 characters).
const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;

/// A key that makes a mutating provider call safe to repeat: the same key with the same
/// parameters returns the first call's result instead of moving money again.
///
/// The saga derives one key per step from the fan's own `Idempotency-Key`
/// ([`IdempotencyKey::derive`]), so a retried checkout reaches the provider with the same
/// keys it used the first time.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

/// Why a string cannot be an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an idempotency key must be 1 to 255 visible ASCII characters")]
pub struct InvalidIdempotencyKey;

impl IdempotencyKey {
    pub fn new(key: impl Into<String>) -> Result<Self, InvalidIdempotencyKey> {
        let key = key.into();
        let visible = key.bytes().all(|b| b.is_ascii_graphic());
        if key.is_empty() || key.len() > IDEMPOTENCY_KEY_LEN_MAX || !visible {
            return Err(InvalidIdempotencyKey);
        }
        Ok(IdempotencyKey(key))
    }

    /// This key as `customer`'s: the key every provider call of a checkout derives from.
    /// The provider keeps one namespace of keys for the whole merchant account, so the
    /// fan's own key (`checkout-1`) must never reach it as it is: two fans who pick the
    /// same key would meet there, and the second fan's payment would be refused. The
    /// customer id and the key are hashed with a separator, so no two (customer, key)
    /// pairs give the same result.
    pub fn scoped_to(&self, customer: &CustomerId) -> IdempotencyKey {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(b"tessera-idempotency-v1\0");
        h.update((customer.as_str().len() as u64).to_be_bytes());
        h.update(customer.as_str().as_bytes());
        h.update(self.0.as_bytes());
        IdempotencyKey(format!("cus-{}", hex::encode(h.finalize())))
    }

    /// The key of one step (`authorize`, `capture`, `void`, `refund`...) of the operation
    /// this key names. Deterministic, so a retry derives the same key. Keys that would grow
    /// past the provider's limit are shortened to a SHA-256 of the full text.
    pub fn derive(&self, step: &str) -> IdempotencyKey {
        let full = format!("{}:{step}", self.0);
        if full.len() <= IDEMPOTENCY_KEY_LEN_MAX && full.bytes().all(|b| b.is_ascii_graphic()) {
            return IdempotencyKey(full);
        }
        use sha2::Digest as _;
        IdempotencyKey(format!("sha256:{}", hex::encode(sha2::Sha256::digest(full.as_bytes()))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({:?})", self.0)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = InvalidIdempotencyKey;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        IdempotencyKey::new(s)
    }
}

impl From<IdempotencyKey> for String {
    fn from(k: IdempotencyKey) -> String {
        k.0
    }
}

/// Where a payment stands (Stripe's PaymentIntent statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Created, or the last attempt was declined: nothing is held on the card.
    RequiresPaymentMethod,
    RequiresConfirmation,
    /// The fan must complete an extra step (3-D Secure); nothing is held yet.
    RequiresAction,
    Processing,
    /// Authorized: the amount is held on the card until captured or voided.
    RequiresCapture,
    /// Voided, or never completed: nothing was charged.
    Canceled,
    /// Captured: the fan was charged (refunds are tracked separately).
    Succeeded,
    /// A status this build does not know.
    #[serde(other)]
    Unknown,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::RequiresPaymentMethod => "requires_payment_method",
            PaymentStatus::RequiresConfirmation => "requires_confirmation",
            PaymentStatus::RequiresAction => "requires_action",
            PaymentStatus::Processing => "processing",
            PaymentStatus::RequiresCapture => "requires_capture",
            PaymentStatus::Canceled => "canceled",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Unknown => "unknown",
        }
    }

    /// Whether money is held or taken on the fan's card in this state.
    pub fn holds_funds(self) -> bool {
        matches!(self, PaymentStatus::RequiresCapture | PaymentStatus::Succeeded)
    }
}

/// A payment as the provider reports it. Amounts are in minor units of `currency`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// The provider's id (`pi_...`).
    pub id: String,
    pub status: PaymentStatus,
    pub amount_minor: u64,
    /// Held on the card and not yet captured.
    pub amount_capturable_minor: u64,
    /// Captured.
    pub amount_received_minor: u64,
    /// Refunded out of what was captured (known when the provider reports it).
    pub amount_refunded_minor: u64,
    /// Lower-case ISO 4217 code, as Stripe writes it (`eur`).
    pub currency: String,
    /// The `order_id` metadata the payment was created with.
    pub order_id: Option<String>,
    /// The code of the last failed attempt (`card_declined`...), if any.
    pub last_error_code: Option<String>,
    /// Seconds since the Unix epoch.
    pub created_s: u64,
}

impl Payment {
    /// What the fan has paid and not been given back.
    pub fn net_charged_minor(&self) -> u64 {
        self.amount_received_minor.saturating_sub(self.amount_refunded_minor)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    Pending,
    RequiresAction,
    Succeeded,
    Failed,
    Canceled,
    #[serde(other)]
    Unknown,
}

/// A refund of (part of) a captured payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// The provider's id (`re_...`).
    pub id: String,
    pub payment_id: String,
    pub amount_minor: u64,
    pub currency: String,
    pub status: RefundStatus,
}

/// What the saga asks for when a fan checks out: hold `amount_minor` on the card behind
/// `payment_method`, to be captured once the seats are confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeRequest {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub amount_minor: u64,
    /// ISO 4217 (any case; sent lower-case).
    pub currency: String,
    /// A payment method token from the provider's client-side SDK (`pm_...`).
    pub payment_method: String,
    /// Shown on the fan's statement and in the provider's dashboard.
    pub description: Option<String>,
}

/// Why a provider call failed. The variants separate what the saga must treat
/// differently: a definitive "no" ([`Declined`](Self::Declined), [`Invalid`](Self::Invalid),
/// [`Unavailable`](Self::Unavailable)...) after which nothing was charged by this call, from
/// [`Unknown`](Self::Unknown), after which the call may or may not have taken effect and
/// the caller must reconcile (repeat with the same key, or
/// [`PaymentProvider::find_by_order`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The card network said no. Nothing was charged.
    #[error("payment declined ({code})")]
    Declined {
        /// `card_declined`, `expired_card`, `incorrect_cvc`, `processing_error`...
        code: String,
        /// The issuer's reason (`insufficient_funds`, `lost_card`...), when given.
        decline_code: Option<String>,
        /// The payment the decline was recorded on, when the provider created one.
        payment_id: Option<String>,
    },
    /// The call may or may not have taken effect (timeout, connection lost after sending,
    /// a 5xx from the provider, a concurrent request with the same key).
    #[error("payment outcome unknown: {reason}")]
    Unknown { reason: String },
    /// The provider could not be reached at all; the request was not delivered.
    #[error("payment provider unreachable: {reason}")]
    Unavailable { reason: String },
    /// The provider is shedding load; the request was not executed.
    #[error("payment provider rate limited the request")]
    RateLimited,
    /// The request was malformed or refers to something that cannot be paid with.
    #[error("invalid payment request ({code}): {message}")]
    Invalid { code: String, message: String, param: Option<String> },
    /// The payment is in a state that does not allow the operation (capturing a voided
    /// payment, refunding more than was captured).
    #[error("payment is in the wrong state ({code}): {message}")]
    WrongState { code: String, message: String },
    #[error("no such payment")]
    NotFound,
    /// The idempotency key was used before with different parameters.
    #[error("idempotency key reused with different parameters")]
    IdempotencyConflict,
    /// The provider refused our credentials.
    #[error("payment provider rejected the credentials")]
    Unauthorized,
}

impl PaymentError {
    /// Whether the call may have taken effect without us learning so.
    pub fn is_unknown(&self) -> bool {
        matches!(self, PaymentError::Unknown { .. })
    }

    /// Whether repeating the same call with the same key later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PaymentError::Unknown { .. }
                | PaymentError::Unavailable { .. }
                | PaymentError::RateLimited
        )
    }

    /// A short label for metrics (`outcome`).
    pub fn label(&self) -> &'static str {
        match self {
            PaymentError::Declined { .. } => "declined",
            PaymentError::Unknown { .. } => "unknown",
            PaymentError::Unavailable { .. } => "unavailable",
            PaymentError::RateLimited => "rate_limited",
            PaymentError::Invalid { .. } => "invalid",
            PaymentError::WrongState { .. } => "wrong_state",
            PaymentError::NotFound => "not_found",
            PaymentError::IdempotencyConflict => "idempotency_conflict",
            PaymentError::Unauthorized => "unauthorized",
        }
    }
}

/// A card processor, as the checkout saga uses it. Every mutating call takes an
/// idempotency key; reads do not need one.
///
/// Implementations must map "maybe happened" to [`PaymentError::Unknown`] and never to a
/// definitive error, since the saga releases seats on definitive failures.
#[async_trait::async_trait]
pub trait PaymentProvider: Send + Sync {
    /// Creates and confirms a payment with manual capture: on success the amount is held
    /// on the card ([`PaymentStatus::RequiresCapture`]).
    async fn authorize(
        &self,
        req: &AuthorizeRequest,
        key: &IdempotencyKey,
    ) -> Result<Payment, PaymentError>;

    /// Captures an authorized payment (`None`: the whole authorized amount).
    async fn capture(
        &self,
        payment_id: &str,
        amount_minor: Option<u64>,
        key: &IdempotencyKey,
    ) -> Result<Payment, PaymentError>;

    /// Voids an uncaptured payment, releasing the hold on the card.
    async fn cancel(&self, payment_id: &str, key: &IdempotencyKey)
    -> Result<Payment, PaymentError>;

    /// Refunds a captured payment (`None`: whatever is left to refund).
    async fn refund(
        &self,
        payment_id: &str,
        amount_minor: Option<u64>,
        key: &IdempotencyKey,
    ) -> Result<Refund, PaymentError>;

    /// Reads a payment as the provider sees it now.
    async fn retrieve(&self, payment_id: &str) -> Result<Payment, PaymentError>;

    /// Every payment created for `order_id` (by its metadata), newest first. This is how an
    /// unknown outcome is reconciled when the payment id was never learned.
    async fn find_by_order(&self, order_id: &OrderId) -> Result<Vec<Payment>, PaymentError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_are_stable_and_bounded() {
        let key = IdempotencyKey::new("fan-key-1").unwrap();
        assert_eq!(key.derive("authorize").as_str(), "fan-key-1:authorize");
        assert_eq!(key.derive("authorize"), key.derive("authorize"));
        assert_ne!(key.derive("authorize"), key.derive("capture"));
        let long = IdempotencyKey::new("k".repeat(255)).unwrap();
        let d = long.derive("capture");
        assert!(d.as_str().starts_with("sha256:") && d.as_str().len() <= 255);
        assert!(IdempotencyKey::new("").is_err());
        assert!(IdempotencyKey::new("has space").is_err());
        assert!(IdempotencyKey::new("k".repeat(256)).is_err());
    }

    #[test]
    fn unknown_statuses_from_newer_providers_are_tolerated() {
        let s: PaymentStatus = serde_json::from_str("\"requires_capture\"").unwrap();
        assert_eq!(s, PaymentStatus::RequiresCapture);
        let s: PaymentStatus = serde_json::from_str("\"brand_new\"").unwrap();
        assert_eq!(s, PaymentStatus::Unknown);
    }
}
