//! Queue tickets and admission tokens: compact EdDSA JWTs carrying
//! [`QueueTicketClaims`], signed by an edge key (`kid` for rotation) and checked against
//! the keyset of all edges.

use sha2::{Digest as _, Sha256};
use tessera_api::queue::QueueTicketClaims;
use tessera_api::{CustomerId, ErrorCode, EventId};
use tessera_identity::{Keyset, SigningKeyPair, TokenError};

/// `typ` of a queue ticket.
pub const TYP_TICKET: &str = "qt";
/// `typ` of an admission token.
pub const TYP_ADMISSION: &str = "adm";

/// Why a queue ticket or admission token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueTokenError {
    #[error("token is malformed or not signed by a trusted edge")]
    Invalid(#[source] TokenError),
    #[error("token is a {found} token, not a {expected} token")]
    WrongType { expected: &'static str, found: String },
    #[error("token has expired")]
    Expired,
    #[error("token is for another event")]
    WrongEvent,
    #[error("token is bound to another device")]
    WrongDevice,
    #[error("token belongs to another customer")]
    WrongCustomer,
}

impl QueueTokenError {
    /// The error code the edge and the core answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            QueueTokenError::Invalid(_) | QueueTokenError::WrongType { .. } => {
                ErrorCode::QueueTicketInvalid
            }
            QueueTokenError::Expired => ErrorCode::TokenExpired,
            QueueTokenError::WrongEvent => ErrorCode::QueueTokenWrongEvent,
            QueueTokenError::WrongDevice => ErrorCode::QueueTokenWrongDevice,
            QueueTokenError::WrongCustomer => ErrorCode::Forbidden,
        }
    }

    /// The code for an admission token: one past its life is `admission_expired` (its
    /// place has gone to the next fan), not a generic expired token.
    pub fn admission_code(&self) -> ErrorCode {
        match self {
            QueueTokenError::Expired => ErrorCode::AdmissionExpired,
            e => e.code(),
        }
    }
}

/// The device binding: SHA-256 of the device id, hex, first 32 characters.
pub fn device_hash(device_id: &str) -> String {
    let d = Sha256::digest(device_id.as_bytes());
    hex::encode(&d[..16])
}

/// Signs claims (the `kid` in the claims is set to the key's).
pub fn issue(key: &SigningKeyPair, claims: &QueueTicketClaims) -> String {
    let mut claims = claims.clone();
    claims.kid.clone_from(&key.kid);
    tessera_identity::sign(key, &claims)
}

/// Checks the bindings of already signature-checked claims.
pub fn check_claims(
    claims: &QueueTicketClaims,
    typ: &'static str,
    event_id: &EventId,
    device_hash: &str,
    now_ms: u64,
) -> Result<(), QueueTokenError> {
    if claims.typ != typ {
        return Err(QueueTokenError::WrongType { expected: typ, found: claims.typ.clone() });
    }
    if &claims.event_id != event_id {
        return Err(QueueTokenError::WrongEvent);
    }
    if claims.device != device_hash {
        return Err(QueueTokenError::WrongDevice);
    }
    if now_ms >= claims.exp_ms {
        return Err(QueueTokenError::Expired);
    }
    Ok(())
}

fn verify_sig(keys: &Keyset, token: &str) -> Result<QueueTicketClaims, QueueTokenError> {
    tessera_identity::verify::<QueueTicketClaims>(keys, token).map_err(QueueTokenError::Invalid)
}

/// Verifies a queue ticket for `event_id` presented from the device with `device_hash`.
pub fn verify_ticket(
    keys: &Keyset,
    token: &str,
    event_id: &EventId,
    device_hash: &str,
    now_ms: u64,
) -> Result<QueueTicketClaims, QueueTokenError> {
    let claims = verify_sig(keys, token)?;
    check_claims(&claims, TYP_TICKET, event_id, device_hash, now_ms)?;
    Ok(claims)
}

/// Verifies an admission token for `event_id`, presented by `customer_id` (the `sub` of
/// the caller's verified identity token) from the device with `device_hash`. The core
/// calls this before creating a hold.
pub fn verify_admission(
    keys: &Keyset,
    token: &str,
    event_id: &EventId,
    customer_id: &CustomerId,
    device_hash: &str,
    now_ms: u64,
) -> Result<QueueTicketClaims, QueueTokenError> {
    let claims = verify_sig(keys, token)?;
    check_claims(&claims, TYP_ADMISSION, event_id, device_hash, now_ms)?;
    if &claims.customer_id != customer_id {
        return Err(QueueTokenError::WrongCustomer);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_api::QueueTicketId;
    use tessera_api::queue::QueuePhase;

    const NOW: u64 = 1_800_000_000_000;

    fn key(kid: &str, pass: &str) -> SigningKeyPair {
        SigningKeyPair::derive_for_development(kid, pass)
    }
    fn claims(typ: &str) -> QueueTicketClaims {
        QueueTicketClaims {
            typ: typ.into(),
            ticket_id: QueueTicketId::from_random(42),
            event_id: EventId::parse("show-1").unwrap(),
            customer_id: CustomerId::parse("fan-1").unwrap(),
            device: device_hash("phone-1"),
            phase: QueuePhase::Open,
            seq: 7,
            rank: None,
            iat_ms: NOW,
            exp_ms: NOW + 60_000,
            kid: String::new(),
            waiting_list: false,
        }
    }

    #[test]
    fn tokens_verify_under_any_key_in_the_keyset() {
        let (a, b) = (key("edge-a", "a"), key("edge-b", "b"));
        let keys = Keyset::new([a.public(), b.public()]);
        let ev = EventId::parse("show-1").unwrap();
        for k in [&a, &b] {
            let t = issue(k, &claims(TYP_TICKET));
            let c = verify_ticket(&keys, &t, &ev, &device_hash("phone-1"), NOW).unwrap();
            assert_eq!(c.kid, k.kid);
            assert_eq!(c.seq, 7);
        }
    }

    #[test]
    fn admission_needs_the_right_type_and_customer() {
        let k = key("edge-a", "a");
        let keys = Keyset::new([k.public()]);
        let ev = EventId::parse("show-1").unwrap();
        let dev = device_hash("phone-1");
        let fan = CustomerId::parse("fan-1").unwrap();
        let qt = issue(&k, &claims(TYP_TICKET));
        assert!(matches!(
            verify_admission(&keys, &qt, &ev, &fan, &dev, NOW),
            Err(QueueTokenError::WrongType { .. })
        ));
        let adm = issue(&k, &claims(TYP_ADMISSION));
        assert!(verify_admission(&keys, &adm, &ev, &fan, &dev, NOW).is_ok());
        let other = CustomerId::parse("fan-2").unwrap();
        assert_eq!(
            verify_admission(&keys, &adm, &ev, &other, &dev, NOW),
            Err(QueueTokenError::WrongCustomer)
        );
    }
}
