//! Signed admission watermarks.
//!
//! The core signs each watermark it publishes with its watermark key ([`sign`]); an edge
//! admits fans only by a watermark whose signature verifies against the core's public
//! keys and that is fresh ([`verify`]). So whoever can publish on NATS cannot admit
//! anyone: a forged watermark fails the signature, and a genuine old one (replayed to
//! hold admission back, or with a version an attacker hopes stays highest) is stale.

use tessera_api::EventId;
use tessera_api::queue::{AdmissionWatermark, SignedWatermark};
use tessera_identity::{Keyset, SigningKeyPair, TokenError};

/// How old a watermark may be before an edge stops trusting it: the core publishes
/// several a second, so a minute means the publisher is gone.
pub const MAX_AGE_MS: u64 = 60_000;

/// Why a published watermark was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatermarkError {
    #[error("not a signed watermark")]
    Malformed,
    #[error("signature refused")]
    Signature(#[source] TokenError),
    #[error("signed for event {signed}, published for {published}")]
    WrongEvent { signed: EventId, published: EventId },
    #[error("published {age_ms} ms ago")]
    Stale { age_ms: u64 },
    #[error("published {ahead_ms} ms in the future")]
    FromTheFuture { ahead_ms: u64 },
}

/// The watermark with its signature, as the core publishes it.
pub fn sign(key: &SigningKeyPair, watermark: &AdmissionWatermark) -> SignedWatermark {
    SignedWatermark { watermark: watermark.clone(), signed: tessera_identity::sign(key, watermark) }
}

/// Checks a published watermark (the JSON of a [`SignedWatermark`]) for `event_id` at
/// `now_ms` and returns what its signature covers. The unsigned fields next to the
/// signature are never used.
pub fn verify(
    keys: &Keyset,
    payload: &[u8],
    event_id: &EventId,
    now_ms: u64,
    max_age_ms: u64,
) -> Result<AdmissionWatermark, WatermarkError> {
    let published: SignedWatermark =
        serde_json::from_slice(payload).map_err(|_| WatermarkError::Malformed)?;
    let wm: AdmissionWatermark =
        tessera_identity::verify(keys, &published.signed).map_err(WatermarkError::Signature)?;
    if &wm.event_id != event_id {
        return Err(WatermarkError::WrongEvent {
            signed: wm.event_id,
            published: event_id.clone(),
        });
    }
    if now_ms > wm.published_at_ms + max_age_ms {
        return Err(WatermarkError::Stale { age_ms: now_ms - wm.published_at_ms });
    }
    // Clocks differ a little between machines; a watermark from far ahead is not genuine.
    if wm.published_at_ms > now_ms + max_age_ms {
        return Err(WatermarkError::FromTheFuture { ahead_ms: wm.published_at_ms - now_ms });
    }
    Ok(wm)
}

#[cfg(test)]
mod tests {
    use tessera_api::inventory::SaleState;

    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn wm(event: &str, version: u64) -> AdmissionWatermark {
        AdmissionWatermark {
            event_id: EventId::parse(event).unwrap(),
            state: SaleState::OnSale,
            version,
            commitment: "c".into(),
            seed: None,
            pre_open_count: 0,
            pre_open_threshold: None,
            pre_open_admitted: 0,
            open_admitted: 10,
            open_admitted_rank: Some("00".into()),
            open_count: 100,
            rate_per_s: 5.0,
            remaining: 50,
            published_at_ms: NOW,
            outstanding: 0,
            waiting_list_line: None,
            expired_line: None,
            expired_waiting_list_line: None,
            estimate: None,
        }
    }

    #[test]
    fn accepts_only_fresh_watermarks_signed_by_the_core() {
        let core = SigningKeyPair::derive_for_development("wm-1", "core");
        let keys = Keyset::new([core.public()]);
        let ev = EventId::parse("show-1").unwrap();
        let good = serde_json::to_vec(&sign(&core, &wm("show-1", 7))).unwrap();
        assert_eq!(verify(&keys, &good, &ev, NOW + 500, MAX_AGE_MS).unwrap().version, 7);

        // Someone who can publish on NATS but holds no key: forged, or edited after signing.
        let forger = SigningKeyPair::derive_for_development("wm-1", "attacker");
        let forged = serde_json::to_vec(&sign(&forger, &wm("show-1", u64::MAX))).unwrap();
        assert!(matches!(
            verify(&keys, &forged, &ev, NOW, MAX_AGE_MS),
            Err(WatermarkError::Signature(TokenError::BadSignature))
        ));
        let mut edited = sign(&core, &wm("show-1", 7));
        edited.watermark.open_admitted = 1_000_000;
        edited.watermark.version = u64::MAX;
        let edited = serde_json::to_vec(&edited).unwrap();
        let back = verify(&keys, &edited, &ev, NOW, MAX_AGE_MS).unwrap();
        assert_eq!((back.version, back.open_admitted), (7, 10), "only signed fields count");
        // A plain, unsigned watermark is not enough.
        let plain = serde_json::to_vec(&wm("show-1", 8)).unwrap();
        assert_eq!(verify(&keys, &plain, &ev, NOW, MAX_AGE_MS), Err(WatermarkError::Malformed));
        // Another event's genuine watermark, and an old one.
        let other = serde_json::to_vec(&sign(&core, &wm("show-2", 9))).unwrap();
        assert!(matches!(
            verify(&keys, &other, &ev, NOW, MAX_AGE_MS),
            Err(WatermarkError::WrongEvent { .. })
        ));
        assert!(matches!(
            verify(&keys, &good, &ev, NOW + MAX_AGE_MS + 1, MAX_AGE_MS),
            Err(WatermarkError::Stale { .. })
        ));
    }
}
