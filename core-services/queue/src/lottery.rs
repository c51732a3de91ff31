//! The verifiable shuffle.
//!
//! Before the sale the core draws a 32-byte seed and publishes `commitment(seed)` (in the
//! event and every watermark). At opening it reveals the seed. A pre-open ticket's lottery
//! value is SHA-256(seed ‖ event_id ‖ ticket_id) over the raw bytes of the seed and the
//! two ids (unambiguous: event ids never contain `_`, ticket ids always start with `q_`);
//! the order of pre-open fans is ascending [`lottery_rank`] (its first 8 bytes, big
//! endian). Since the seed is fixed before anyone joins and each ticket id mixes in the
//! fan's own `client_nonce`, neither the operator nor a fan can steer a place.

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use tessera_api::{EventId, QueueTicketId};

/// SHA-256 commitment (hex) to a seed given as hex.
pub fn commitment(seed_hex: &str) -> Option<String> {
    let seed = hex::decode(seed_hex).ok()?;
    Some(hex::encode(Sha256::digest(&seed)))
}

/// Whether `seed_hex` is the seed `commitment_hex` committed to.
pub fn verify_seed(commitment_hex: &str, seed_hex: &str) -> bool {
    commitment(seed_hex).is_some_and(|c| c.eq_ignore_ascii_case(commitment_hex))
}

/// SHA-256(seed ‖ event_id ‖ ticket_id).
pub fn lottery_value(seed: &[u8], event_id: &EventId, ticket_id: &QueueTicketId) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed);
    h.update(event_id.as_str().as_bytes());
    h.update(ticket_id.as_str().as_bytes());
    h.finalize().into()
}

/// The first 8 bytes of a lottery value, big endian: lower is earlier.
pub fn lottery_rank(value: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&value[..8]);
    u64::from_be_bytes(b)
}

/// Rank of a ticket under a seed given as hex.
pub fn rank_for(seed_hex: &str, event_id: &EventId, ticket_id: &QueueTicketId) -> Option<u64> {
    let seed = hex::decode(seed_hex).ok()?;
    Some(lottery_rank(&lottery_value(&seed, event_id, ticket_id)))
}

/// Derives a ticket id from the fan's nonce and the edge's randomness, so that neither
/// side alone chooses it.
pub fn ticket_id(client_nonce: Option<&str>, edge_random: [u8; 16]) -> QueueTicketId {
    let mut h = Sha256::new();
    h.update(b"tessera-queue-ticket-v1");
    h.update(client_nonce.unwrap_or("").as_bytes());
    h.update(edge_random);
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    QueueTicketId::from_random(u128::from_le_bytes(b))
}

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Inverse of `tessera_api::random_id_string` for 26-character ids.
fn decode_id(id: &QueueTicketId) -> Option<u128> {
    let rest = id.as_str().strip_prefix("q_")?;
    if rest.len() != 26 {
        return None;
    }
    let mut v: u128 = 0;
    for (i, c) in rest.bytes().enumerate() {
        let d = BASE32.iter().position(|x| *x == c)? as u128;
        if i == 25 {
            // The last character carries the top 3 bits of 128.
            if d > 7 {
                return None;
            }
        }
        v |= d << (5 * i);
    }
    Some(v)
}

fn shadow_tag(secret: &[u8], low: u128) -> u128 {
    let mut m = <Hmac<Sha256>>::new_from_slice(secret)
        .unwrap_or_else(|_| <Hmac<Sha256>>::new_from_slice(b"tessera").expect("hmac key"));
    m.update(b"tessera-shadow-v1");
    m.update(&low.to_le_bytes());
    let d = m.finalize().into_bytes();
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&d[..6]);
    u128::from_le_bytes(b)
}

const LOW_BITS: u32 = 80;
const LOW_MASK: u128 = (1u128 << LOW_BITS) - 1;

/// A ticket id for the shadow queue: it looks like any other, but its top 48 bits are a MAC
/// of the rest under the edges' `shadow_secret`, so every edge holding the secret (and no
/// one else) knows it never admits. Nothing in the token says so.
pub fn shadow_ticket_id(secret: &[u8], edge_random: [u8; 16]) -> QueueTicketId {
    let low = u128::from_le_bytes(edge_random) & LOW_MASK;
    QueueTicketId::from_random(low | (shadow_tag(secret, low) << LOW_BITS))
}

/// Whether a ticket id was minted by [`shadow_ticket_id`] under `secret`.
pub fn is_shadow(secret: &[u8], id: &QueueTicketId) -> bool {
    decode_id(id).is_some_and(|v| {
        let low = v & LOW_MASK;
        v >> LOW_BITS == shadow_tag(secret, low)
    })
}

/// The watermark threshold that admits exactly the first `admitted` of the pre-open
/// tickets whose ranks are `sorted_ranks` (ascending). `None` admits none.
pub fn threshold_for(sorted_ranks: &[u64], admitted: u64) -> Option<u64> {
    if admitted == 0 || sorted_ranks.is_empty() {
        return None;
    }
    let i = usize::try_from(admitted).unwrap_or(usize::MAX).min(sorted_ranks.len()) - 1;
    Some(sorted_ranks[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_match_only_their_commitment() {
        let seed = "00".repeat(31) + "01";
        let c = commitment(&seed).unwrap();
        assert!(verify_seed(&c, &seed));
        assert!(!verify_seed(&c, &("00".repeat(31) + "02")));
        assert!(!verify_seed(&c, "zz"));
    }

    #[test]
    fn ticket_ids_round_trip_through_the_decoder() {
        for r in [0u128, 1, u128::MAX, 0xdead_beef << 70] {
            let id = QueueTicketId::from_random(r);
            assert_eq!(decode_id(&id), Some(r));
        }
    }

    #[test]
    fn shadow_ids_are_recognised_only_with_the_secret() {
        let id = shadow_ticket_id(b"s3cret", [7; 16]);
        assert!(is_shadow(b"s3cret", &id));
        assert!(!is_shadow(b"other", &id));
        let normal = ticket_id(Some("00112233445566778899aabbccddeeff"), [7; 16]);
        assert!(!is_shadow(b"s3cret", &normal));
    }

    #[test]
    fn threshold_admits_exactly_the_first_k() {
        let ranks = [5, 9, 20, 40];
        assert_eq!(threshold_for(&ranks, 0), None);
        assert_eq!(threshold_for(&ranks, 2), Some(9));
        assert_eq!(threshold_for(&ranks, 99), Some(40));
    }
}
