//! The adaptive proof-of-work challenge for clients with a middling bot score.
//!
//! A challenge is stateless: `v1.<difficulty>.<expires_ms>.<salt>.<mac>` where `mac` is an
//! HMAC-SHA256 (first 16 bytes, hex) over the other fields and the client key, under the
//! edge's `pow_secret`. So a challenge can be checked at any edge sharing the secret and
//! is useless to another client. A solution is a decimal `nonce` such that
//! SHA-256(`<challenge>:<nonce>`) starts with `difficulty` zero bits. The client sends
//! `x-tessera-pow: <challenge>:<nonce>`.

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Why a solution was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowError {
    Malformed,
    Forged,
    Expired,
    Insufficient,
}

/// How long a client has to solve a challenge, and how long a solution is accepted.
pub const CHALLENGE_TTL_MS: u64 = 120_000;
/// The difficulty range, in leading zero bits. 16 bits is ~65k hashes (well under a second
/// in a browser); 22 bits is ~4M (seconds).
pub const DIFFICULTY_MIN: u8 = 14;
pub const DIFFICULTY_MAX: u8 = 22;

/// Difficulty for a score between the challenge and shadow thresholds: harder the
/// closer the score is to the shadow threshold.
pub fn difficulty_for(score: u8, challenge_at: u8, shadow_at: u8) -> u8 {
    if shadow_at <= challenge_at {
        return DIFFICULTY_MAX;
    }
    let span = u32::from(shadow_at - challenge_at);
    let pos = u32::from(score.saturating_sub(challenge_at)).min(span);
    let extra = (u32::from(DIFFICULTY_MAX - DIFFICULTY_MIN) * pos) / span;
    DIFFICULTY_MIN + extra as u8
}

fn mac(secret: &[u8], fields: &str, client_key: &str) -> String {
    let mut m = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| {
        // HMAC accepts keys of any length; this branch cannot be taken.
        HmacSha256::new_from_slice(b"tessera").expect("hmac key")
    });
    m.update(fields.as_bytes());
    m.update(b"|");
    m.update(client_key.as_bytes());
    hex::encode(&m.finalize().into_bytes()[..16])
}

/// Issues a challenge. `salt` is fresh randomness from the caller.
pub fn issue(
    secret: &[u8],
    client_key: &str,
    difficulty: u8,
    now_ms: u64,
    salt: [u8; 8],
) -> String {
    let fields = format!("v1.{difficulty}.{}.{}", now_ms + CHALLENGE_TTL_MS, hex::encode(salt));
    let tag = mac(secret, &fields, client_key);
    format!("{fields}.{tag}")
}

/// Leading zero bits of a digest.
pub fn leading_zero_bits(digest: &[u8]) -> u32 {
    let mut n = 0;
    for b in digest {
        if *b == 0 {
            n += 8;
        } else {
            n += b.leading_zeros();
            break;
        }
    }
    n
}

fn digest(challenge: &str, nonce: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(challenge.as_bytes());
    h.update(b":");
    h.update(nonce.to_string().as_bytes());
    h.finalize().into()
}

/// Checks a `<challenge>:<nonce>` header value. Returns the challenge's difficulty.
pub fn verify(secret: &[u8], client_key: &str, header: &str, now_ms: u64) -> Result<u8, PowError> {
    let (challenge, nonce) = header.rsplit_once(':').ok_or(PowError::Malformed)?;
    let nonce: u64 = nonce.parse().map_err(|_| PowError::Malformed)?;
    let (fields, tag) = challenge.rsplit_once('.').ok_or(PowError::Malformed)?;
    let mut parts = fields.split('.');
    let (Some("v1"), Some(d), Some(exp), Some(_salt), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PowError::Malformed);
    };
    let difficulty: u8 = d.parse().map_err(|_| PowError::Malformed)?;
    let exp: u64 = exp.parse().map_err(|_| PowError::Malformed)?;
    // Constant-time comparison is not needed for a MAC over public data that is only
    // checked, never used to decide between secrets; still compare whole strings.
    if mac(secret, fields, client_key) != tag {
        return Err(PowError::Forged);
    }
    if now_ms > exp {
        return Err(PowError::Expired);
    }
    if leading_zero_bits(&digest(challenge, nonce)) < u32::from(difficulty) {
        return Err(PowError::Insufficient);
    }
    Ok(difficulty)
}

/// Solves a challenge by brute force (what a fan's browser does; used by tests and tools).
pub fn solve(challenge: &str) -> Option<u64> {
    let d: u32 = challenge.split('.').nth(1)?.parse().ok()?;
    (0..u64::MAX).find(|n| leading_zero_bits(&digest(challenge, *n)) >= d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"edge-secret";

    #[test]
    fn solved_challenges_verify_only_for_their_client_and_time() {
        let c = issue(SECRET, "10.0.0.1", 8, 1_000, [1; 8]);
        let n = solve(&c).unwrap();
        let header = format!("{c}:{n}");
        assert_eq!(verify(SECRET, "10.0.0.1", &header, 2_000), Ok(8));
        assert_eq!(verify(SECRET, "10.0.0.2", &header, 2_000), Err(PowError::Forged));
        assert_eq!(verify(b"other", "10.0.0.1", &header, 2_000), Err(PowError::Forged));
        assert_eq!(
            verify(SECRET, "10.0.0.1", &header, 1_000 + CHALLENGE_TTL_MS + 1),
            Err(PowError::Expired)
        );
        let easier = c.replacen("v1.8.", "v1.1.", 1);
        assert_eq!(
            verify(SECRET, "10.0.0.1", &format!("{easier}:{n}"), 2_000),
            Err(PowError::Forged)
        );
        assert_eq!(verify(SECRET, "10.0.0.1", "junk", 2_000), Err(PowError::Malformed));
    }

    #[test]
    fn a_wrong_nonce_is_insufficient() {
        let c = issue(SECRET, "k", 16, 0, [2; 8]);
        let n = solve(&c).unwrap();
        let wrong = (0..).find(|m| *m != n && leading_zero_bits(&digest(&c, *m)) < 16).unwrap();
        assert_eq!(verify(SECRET, "k", &format!("{c}:{wrong}"), 1), Err(PowError::Insufficient));
    }

    #[test]
    fn difficulty_grows_with_the_score() {
        assert_eq!(difficulty_for(40, 40, 80), DIFFICULTY_MIN);
        assert_eq!(difficulty_for(80, 40, 80), DIFFICULTY_MAX);
        assert_eq!(difficulty_for(60, 40, 80), 18);
    }
}
