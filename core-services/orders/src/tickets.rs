//! Signed tickets: the QR payload is an Ed25519-signed token a gate verifies offline with
//! the public key; it names the ticket, the event, the order and the seat. [`qr_svg`]
//! draws that payload as the QR code the fan shows at the gate.

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tessera_api::{EventId, OrderId, PoolId, SeatId, TicketId};
use tessera_fdb_schema::values::OrderRecord;
use tessera_identity::{Keyset, SigningKeyPair, TokenError};

/// What a ticket's QR payload says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketClaims {
    /// Always `"tkt"`.
    pub typ: String,
    pub ticket_id: TicketId,
    pub event_id: EventId,
    pub order_id: OrderId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seat_id: Option<SeatId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolId>,
    pub iat_ms: u64,
}

pub(crate) fn sign_ticket(
    key: &SigningKeyPair,
    id: &TicketId,
    o: &OrderRecord,
    seat: Option<&SeatId>,
) -> String {
    let claims = TicketClaims {
        typ: "tkt".into(),
        ticket_id: id.clone(),
        event_id: o.event_id.clone(),
        order_id: o.order_id.clone(),
        seat_id: seat.cloned(),
        pool: if seat.is_none() { o.pool.clone() } else { None },
        // Ed25519 signatures are deterministic: with a fixed issue time the QR code of a
        // ticket is the same every time the order is read.
        iat_ms: o.updated_at_ms,
    };
    tessera_identity::sign(key, &claims)
}

/// Verifies a QR payload offline (what a gate scanner does before asking the server).
pub fn verify_ticket(keys: &Keyset, qr: &str) -> Result<TicketClaims, TokenError> {
    let claims: TicketClaims = tessera_identity::verify(keys, qr)?;
    if claims.typ != "tkt" {
        return Err(TokenError::Malformed);
    }
    Ok(claims)
}

/// SHA-256 (hex) over length-prefixed parts: a canonical request digest.
pub(crate) fn hash_parts(parts: &[&str]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The QR code (an SVG image) of a ticket's signed payload, with its quiet zone, error
/// correction level M (15 % of the code may be lost), dark modules on white.
pub fn qr_svg(payload: &str) -> Result<String, qrcode::types::QrError> {
    let code = qrcode::QrCode::with_error_correction_level(payload.as_bytes(), qrcode::EcLevel::M)?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(256, 256)
        .dark_color(qrcode::render::svg::Color("#000000"))
        .light_color(qrcode::render::svg::Color("#ffffff"))
        .quiet_zone(true)
        .build())
}
