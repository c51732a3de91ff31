//! Signed tokens for Tessera: compact EdDSA (Ed25519) JWTs.
//!
//! Two users: the fan/operator **identity token** ([`IdentityClaims`], an OIDC-style JWT
//! whose `sub` is the customer id that holds, orders and queue tickets are bound to), and
//! the waiting room's queue and admission tokens, which reuse [`sign`] and [`verify`] with
//! their own claims.
//!
//! What it is not: an OIDC client. Keys arrive as configuration ([`Keyset`]), rotation is
//! done by adding the next key under a new `kid` before signing with it.
//! Pure and I/O free; compiles to WASM for the edge components.

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tessera_api::CustomerId;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token uses an unsupported algorithm")]
    Algorithm,
    #[error("token was signed by an unknown key")]
    UnknownKey,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token is for another audience")]
    WrongAudience,
    #[error("token is from an untrusted issuer")]
    WrongIssuer,
    #[error("token lacks the required role")]
    MissingRole,
}

/// A private signing key with its key id.
#[derive(Clone)]
pub struct SigningKeyPair {
    pub kid: String,
    key: SigningKey,
}

impl fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyPair").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKeyPair {
    /// From a 32-byte seed.
    pub fn from_seed(kid: impl Into<String>, seed: [u8; 32]) -> Self {
        SigningKeyPair { kid: kid.into(), key: SigningKey::from_bytes(&seed) }
    }
    /// From the base64url (no padding) encoding of a 32-byte seed, as kept in config.
    pub fn from_base64(kid: impl Into<String>, seed_b64: &str) -> Result<Self, TokenError> {
        let bytes = B64.decode(seed_b64.trim()).map_err(|_| TokenError::Malformed)?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| TokenError::Malformed)?;
        Ok(Self::from_seed(kid, seed))
    }
    /// Derives a key from a passphrase. For local development stacks and tests only.
    pub fn derive_for_development(kid: impl Into<String>, passphrase: &str) -> Self {
        use sha2::Digest as _;
        let seed: [u8; 32] = sha2::Sha256::digest(passphrase.as_bytes()).into();
        Self::from_seed(kid, seed)
    }
    pub fn public(&self) -> PublicKey {
        PublicKey { kid: self.kid.clone(), key: self.key.verifying_key() }
    }
    /// The base64url seed, as config files carry it. Handle like any private key.
    pub fn seed_base64(&self) -> String {
        B64.encode(self.key.to_bytes())
    }
}

/// A public key with its key id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    key: VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}, {})", self.kid, self.to_base64())
    }
}

impl PublicKey {
    pub fn from_base64(kid: impl Into<String>, b64: &str) -> Result<Self, TokenError> {
        let bytes = B64.decode(b64.trim()).map_err(|_| TokenError::Malformed)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| TokenError::Malformed)?;
        let key = VerifyingKey::from_bytes(&arr).map_err(|_| TokenError::Malformed)?;
        Ok(PublicKey { kid: kid.into(), key })
    }
    pub fn to_base64(&self) -> String {
        B64.encode(self.key.as_bytes())
    }
}

/// The public keys a verifier trusts, by key id. Rotation: publish the next key here
/// before anyone signs with it; drop the old one after its longest-lived token expired.
#[derive(Debug, Clone, Default)]
pub struct Keyset {
    keys: HashMap<String, VerifyingKey>,
}

impl Keyset {
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        Keyset { keys: keys.into_iter().map(|k| (k.kid, k.key)).collect() }
    }
    /// Parses `kid:base64,kid:base64` (the config and env format).
    pub fn parse(list: &str) -> Result<Self, TokenError> {
        let mut keys = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (kid, b64) = item.split_once(':').ok_or(TokenError::Malformed)?;
            keys.push(PublicKey::from_base64(kid, b64)?);
        }
        Ok(Keyset::new(keys))
    }
    pub fn insert(&mut self, key: PublicKey) {
        self.keys.insert(key.kid, key.key);
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    /// `kid:base64,...`, sorted by kid.
    pub fn to_config_string(&self) -> String {
        let mut v: Vec<_> = self
            .keys
            .iter()
            .map(|(kid, k)| format!("{kid}:{}", B64.encode(k.as_bytes())))
            .collect();
        v.sort();
        v.join(",")
    }
}

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

/// Signs `claims` as a compact JWT (`header.claims.signature`, base64url, EdDSA).
pub fn sign<C: Serialize>(key: &SigningKeyPair, claims: &C) -> String {
    let header = Header { alg: "EdDSA", typ: "JWT", kid: &key.kid };
    // Serializing plain structs of strings and numbers cannot fail.
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

/// The parts of a token, split and decoded but not yet verified.
#[derive(Debug)]
pub struct Unverified<'a> {
    pub kid: String,
    signed_part: &'a str,
    claims_json: Vec<u8>,
    signature: [u8; 64],
}

/// Splits and decodes a compact JWT without verifying it.
pub fn decode_unverified(token: &str) -> Result<Unverified<'_>, TokenError> {
    if token.len() > 8 * 1024 {
        return Err(TokenError::Malformed);
    }
    let (signed_part, sig_b64) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (header_b64, claims_b64) = signed_part.split_once('.').ok_or(TokenError::Malformed)?;
    let header_json = B64.decode(header_b64).map_err(|_| TokenError::Malformed)?;
    let header: Header<'_> =
        serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
    if header.alg != "EdDSA" {
        return Err(TokenError::Algorithm);
    }
    let kid = header.kid.to_owned();
    let claims_json = B64.decode(claims_b64).map_err(|_| TokenError::Malformed)?;
    let sig = B64.decode(sig_b64).map_err(|_| TokenError::Malformed)?;
    let signature: [u8; 64] = sig.try_into().map_err(|_| TokenError::Malformed)?;
    Ok(Unverified { kid, signed_part, claims_json, signature })
}

impl Unverified<'_> {
    /// Checks the signature against the keyset and decodes the claims.
    pub fn verify<C: DeserializeOwned>(&self, keys: &Keyset) -> Result<C, TokenError> {
        let key = keys.keys.get(&self.kid).ok_or(TokenError::UnknownKey)?;
        let sig = Signature::from_bytes(&self.signature);
        key.verify(self.signed_part.as_bytes(), &sig).map_err(|_| TokenError::BadSignature)?;
        self.claims()
    }
    /// Decodes the claims without checking the signature. Only for callers that verified
    /// this exact token before (a verification cache keyed by the whole token).
    pub fn claims<C: DeserializeOwned>(&self) -> Result<C, TokenError> {
        serde_json::from_slice(&self.claims_json).map_err(|_| TokenError::Malformed)
    }
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }
}

/// Verifies a compact JWT and decodes its claims. Time checks are the caller's, since
/// claims differ; see [`IdentityClaims::check`].
pub fn verify<C: DeserializeOwned>(keys: &Keyset, token: &str) -> Result<C, TokenError> {
    decode_unverified(token)?.verify(keys)
}

/// The audience every Tessera identity token carries.
pub const AUDIENCE: &str = "tessera";

/// Roles a token can grant.
pub const ROLE_FAN: &str = "fan";
pub const ROLE_OPERATOR: &str = "operator";
pub const ROLE_GATE: &str = "gate";

/// Claims of an identity token (OIDC-style).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityClaims {
    pub iss: String,
    pub sub: CustomerId,
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    pub iat: u64,
    #[serde(default)]
    pub roles: Vec<String>,
    /// The OIDC `email` claim, when the issuer shares it (for notifications only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl IdentityClaims {
    /// Checks audience, issuer and validity window (with `leeway_s` of clock skew).
    pub fn check(&self, issuer: &str, now_ms: u64, leeway_s: u64) -> Result<(), TokenError> {
        if self.aud != AUDIENCE {
            return Err(TokenError::WrongAudience);
        }
        if self.iss != issuer {
            return Err(TokenError::WrongIssuer);
        }
        let now_s = now_ms / 1000;
        if now_s > self.exp.saturating_add(leeway_s) {
            return Err(TokenError::Expired);
        }
        if self.iat > now_s.saturating_add(leeway_s) {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Verifies identity tokens: signature, audience, issuer, time.
#[derive(Debug, Clone)]
pub struct IdentityVerifier {
    pub issuer: String,
    pub keys: Keyset,
    pub leeway_s: u64,
}

impl IdentityVerifier {
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<IdentityClaims, TokenError> {
        let claims: IdentityClaims = verify(&self.keys, token)?;
        claims.check(&self.issuer, now_ms, self.leeway_s)?;
        Ok(claims)
    }
    /// Verifies and requires `role`.
    pub fn verify_role(
        &self,
        token: &str,
        now_ms: u64,
        role: &str,
    ) -> Result<IdentityClaims, TokenError> {
        let claims = self.verify(token, now_ms)?;
        if !claims.has_role(role) {
            return Err(TokenError::MissingRole);
        }
        Ok(claims)
    }
}

/// Mints identity tokens. In production an OIDC provider does this; locally the
/// development issuer in the core does.
#[derive(Debug, Clone)]
pub struct IdentityIssuer {
    pub issuer: String,
    pub key: SigningKeyPair,
}

impl IdentityIssuer {
    pub fn mint(&self, sub: CustomerId, roles: Vec<String>, now_ms: u64, ttl_s: u64) -> String {
        self.mint_with_email(sub, roles, None, now_ms, ttl_s)
    }

    /// [`Self::mint`] with the `email` claim.
    pub fn mint_with_email(
        &self,
        sub: CustomerId,
        roles: Vec<String>,
        email: Option<String>,
        now_ms: u64,
        ttl_s: u64,
    ) -> String {
        let iat = now_ms / 1000;
        let claims = IdentityClaims {
            iss: self.issuer.clone(),
            sub,
            aud: AUDIENCE.to_owned(),
            exp: iat + ttl_s,
            iat,
            roles,
            email,
        };
        sign(&self.key, &claims)
    }
}

/// Extracts the token from an `Authorization: Bearer <token>` header value.
pub fn bearer(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> IdentityIssuer {
        IdentityIssuer {
            issuer: "https://id.tessera.local".into(),
            key: SigningKeyPair::derive_for_development("k1", "test"),
        }
    }
    fn verifier() -> IdentityVerifier {
        IdentityVerifier {
            issuer: "https://id.tessera.local".into(),
            keys: Keyset::new([issuer().key.public()]),
            leeway_s: 5,
        }
    }
    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn round_trips_a_fan_token() {
        let t = issuer().mint(CustomerId::parse("fan-1").unwrap(), vec![ROLE_FAN.into()], NOW, 600);
        let c = verifier().verify(&t, NOW + 1000).unwrap();
        assert_eq!(c.sub.as_str(), "fan-1");
        assert!(c.has_role(ROLE_FAN));
        assert_eq!(verifier().verify_role(&t, NOW, ROLE_OPERATOR), Err(TokenError::MissingRole));
    }

    #[test]
    fn rejects_expired_forged_and_foreign_tokens() {
        let t = issuer().mint(CustomerId::parse("fan-1").unwrap(), vec![], NOW, 60);
        assert_eq!(verifier().verify(&t, NOW + 70_000), Err(TokenError::Expired));

        // Same claims signed by another key under the same kid.
        let forger = IdentityIssuer {
            issuer: "https://id.tessera.local".into(),
            key: SigningKeyPair::derive_for_development("k1", "attacker"),
        };
        let forged = forger.mint(CustomerId::parse("fan-1").unwrap(), vec![], NOW, 60);
        assert_eq!(verifier().verify(&forged, NOW), Err(TokenError::BadSignature));

        // Claims edited after signing.
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        let edited = serde_json::to_vec(&IdentityClaims {
            iss: "https://id.tessera.local".into(),
            sub: CustomerId::parse("fan-2").unwrap(),
            aud: AUDIENCE.into(),
            exp: NOW / 1000 + 60,
            iat: NOW / 1000,
            roles: vec![ROLE_OPERATOR.into()],
            email: None,
        })
        .unwrap();
        parts[1] = B64.encode(edited);
        assert_eq!(verifier().verify(&parts.join("."), NOW), Err(TokenError::BadSignature));

        let other_kid = IdentityIssuer {
            issuer: "https://id.tessera.local".into(),
            key: SigningKeyPair::derive_for_development("k2", "test"),
        };
        let t2 = other_kid.mint(CustomerId::parse("fan-1").unwrap(), vec![], NOW, 60);
        assert_eq!(verifier().verify(&t2, NOW), Err(TokenError::UnknownKey));

        for junk in ["", "a.b", "a.b.c", "....", "eyJhbGciOiJub25lIn0.e30."] {
            assert!(verifier().verify(junk, NOW).is_err(), "{junk}");
        }
    }

    #[test]
    fn keysets_round_trip_through_config_strings() {
        let ks = Keyset::new([
            SigningKeyPair::derive_for_development("a", "1").public(),
            SigningKeyPair::derive_for_development("b", "2").public(),
        ]);
        let s = ks.to_config_string();
        assert_eq!(Keyset::parse(&s).unwrap().to_config_string(), s);
        assert!(Keyset::parse("nonsense").is_err());
    }

    #[test]
    fn parses_bearer_headers() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_input(s in ".{0,300}") {
            let _ = verifier().verify(&s, NOW);
        }
    }
}
