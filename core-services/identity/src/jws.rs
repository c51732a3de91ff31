//! Compact JWS: signing Tessera's own tokens, and verifying any token against a
//! [`Keyset`] with `jsonwebtoken`.
//!
//! Verification is `jsonwebtoken`'s, with the algorithm pinned to the one the key was
//! published for: a token whose header names another algorithm (`none`, `HS256` signed
//! with a public key as the secret, `RS256` under an Ed25519 key id) is refused before any
//! signature check, and keys embedded in the header (`jwk`, `jku`, `x5u`) are never used.
//!
//! Signing builds the same compact form (`base64url(header).base64url(claims).base64url(sig)`)
//! with the Ed25519 key held in memory: `jsonwebtoken`'s signer takes the key as PKCS#8
//! bytes and derives it again for every signature, which doubles the cost of issuing a
//! queue ticket at the edge. The tests check that what this signs verifies with
//! `jsonwebtoken` and the other way round.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::Signer as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::TokenError;
use crate::keys::{Keyset, SigningKeyPair};

/// Tokens longer than this are refused unparsed.
pub const TOKEN_LEN_MAX: usize = 8 * 1024;

/// Signs `claims` as a compact JWT (`alg` EdDSA, `typ` JWT, the key's `kid`).
pub fn sign<C: Serialize>(key: &SigningKeyPair, claims: &C) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    // Serializing a header and plain structs of strings and numbers cannot fail.
    let header = serde_json::to_vec(&header).unwrap_or_default();
    let claims = serde_json::to_vec(claims).unwrap_or_default();
    let mut out = String::with_capacity(64 + header.len() * 4 / 3 + claims.len() * 4 / 3 + 88);
    B64.encode_string(&header, &mut out);
    out.push('.');
    B64.encode_string(&claims, &mut out);
    let sig = key.key.sign(out.as_bytes());
    out.push('.');
    B64.encode_string(sig.to_bytes(), &mut out);
    out
}

/// The `alg` a header names, read leniently (for telling "unsupported algorithm" from
/// "malformed" when `jsonwebtoken` refuses the header).
fn header_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let json = B64.decode(header).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&json).ok()?;
    v.get("alg")?.as_str().map(str::to_owned)
}

fn map_error(e: &jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => TokenError::Algorithm,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        _ => TokenError::Malformed,
    }
}

/// Verifies a compact JWT against `keys` and decodes its claims. Time, issuer and
/// audience are the caller's to check, since claims differ (see
/// [`crate::IdentityVerifier`] and `tessera_queue::token`).
pub fn verify<C: DeserializeOwned>(keys: &Keyset, token: &str) -> Result<C, TokenError> {
    if token.len() > TOKEN_LEN_MAX {
        return Err(TokenError::Malformed);
    }
    let header = match jsonwebtoken::decode_header(token) {
        Ok(h) => h,
        Err(_) => {
            return Err(match header_alg(token) {
                Some(alg) if alg.parse::<Algorithm>().is_err() => TokenError::Algorithm,
                _ => TokenError::Malformed,
            });
        }
    };
    let kid = header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
    let trusted = keys.get(kid).ok_or(TokenError::UnknownKey)?;
    if header.alg != trusted.alg {
        return Err(TokenError::Algorithm);
    }
    let mut validation = Validation::new(trusted.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<C>(token, &trusted.key, &validation)
        .map(|d| d.claims)
        .map_err(|e| map_error(&e))
}

/// The parts of a token, split and decoded but not yet verified.
#[derive(Debug)]
pub struct Unverified<'a> {
    pub kid: String,
    token: &'a str,
    signature: [u8; 64],
}

/// Splits and decodes a compact Ed25519 JWT without verifying it (for caches keyed by a
/// token's signature).
pub fn decode_unverified(token: &str) -> Result<Unverified<'_>, TokenError> {
    if token.len() > TOKEN_LEN_MAX {
        return Err(TokenError::Malformed);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::Algorithm);
    }
    let kid = header.kid.ok_or(TokenError::Malformed)?;
    let (_, sig_b64) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let sig = B64.decode(sig_b64).map_err(|_| TokenError::Malformed)?;
    let signature: [u8; 64] = sig.try_into().map_err(|_| TokenError::Malformed)?;
    Ok(Unverified { kid, token, signature })
}

impl Unverified<'_> {
    /// Checks the signature against the keyset and decodes the claims.
    pub fn verify<C: DeserializeOwned>(&self, keys: &Keyset) -> Result<C, TokenError> {
        verify(keys, self.token)
    }

    /// Decodes the claims without checking the signature. Only for callers that verified
    /// this exact token before (a verification cache keyed by the whole token).
    pub fn claims<C: DeserializeOwned>(&self) -> Result<C, TokenError> {
        jsonwebtoken::dangerous::insecure_decode_claims(self.token)
            .map_err(|_| TokenError::Malformed)
    }

    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }
}
