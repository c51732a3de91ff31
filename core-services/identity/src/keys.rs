//! Keys: Ed25519 signing keys held in memory, and the sets of public keys a verifier
//! trusts (Ed25519 and RSA), read from configuration or from an issuer's JWKS.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{SigningKey, VerifyingKey};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::TokenError;

/// A private Ed25519 signing key with its key id. It signs Tessera's own tokens (queue
/// tickets, admission tokens, tickets, admission watermarks, and the local development
/// issuer's identity tokens).
#[derive(Clone)]
pub struct SigningKeyPair {
    pub kid: String,
    pub(crate) key: SigningKey,
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

    /// From `kid:base64url-seed`, the form the edge's and the core's signing-key settings
    /// take.
    pub fn from_config(spec: &str) -> Result<Self, TokenError> {
        let (kid, seed) = spec.trim().split_once(':').ok_or(TokenError::Malformed)?;
        if kid.is_empty() {
            return Err(TokenError::Malformed);
        }
        Self::from_base64(kid, seed)
    }

    /// Derives a key from a passphrase. For local development stacks and tests only:
    /// anyone who knows the phrase has the key.
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

    /// `kid:base64url-seed` (see [`SigningKeyPair::from_config`]).
    pub fn to_config_string(&self) -> String {
        format!("{}:{}", self.kid, self.seed_base64())
    }
}

/// An Ed25519 public key with its key id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    pub(crate) key: VerifyingKey,
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

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// The key as a JWK (`kty` OKP, `crv` Ed25519, `alg` EdDSA, `use` sig).
    pub fn to_jwk(&self) -> Jwk {
        Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::EdDSA),
                key_id: Some(self.kid.clone()),
                ..Default::default()
            },
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: self.to_base64(),
            }),
        }
    }
}

/// One trusted public key: the algorithm it verifies (a token must name exactly this
/// algorithm, which closes algorithm confusion) and the key.
#[derive(Clone)]
pub(crate) struct TrustedKey {
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
    /// The raw key of an Ed25519 entry, for [`Keyset::to_config_string`].
    pub(crate) ed25519: Option<[u8; 32]>,
}

/// The public keys a verifier trusts, by key id. Rotation: publish the next key here
/// before anyone signs with it; drop the old one after its longest-lived token expired.
/// Issuers that publish a JWKS rotate without anyone editing configuration: see the
/// `oidc` module.
#[derive(Clone, Default)]
pub struct Keyset {
    keys: HashMap<String, Arc<TrustedKey>>,
}

impl fmt::Debug for Keyset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<_> = self.keys.iter().map(|(k, v)| format!("{k}:{:?}", v.alg)).collect();
        kids.sort();
        f.debug_tuple("Keyset").field(&kids).finish()
    }
}

impl Keyset {
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        let mut set = Keyset::default();
        for k in keys {
            set.insert(k);
        }
        set
    }

    /// Parses the configuration forms: `kid:base64url,kid:base64url` (Ed25519 public
    /// keys), or a JWKS document (`{"keys": [...]}`, Ed25519 and RSA keys), as issuers
    /// publish it.
    pub fn parse(spec: &str) -> Result<Self, TokenError> {
        let spec = spec.trim();
        if spec.starts_with('{') {
            let jwks: JwkSet = serde_json::from_str(spec).map_err(|_| TokenError::Malformed)?;
            return Keyset::from_jwks(&jwks);
        }
        let mut keys = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (kid, b64) = item.split_once(':').ok_or(TokenError::Malformed)?;
            keys.push(PublicKey::from_base64(kid, b64)?);
        }
        Ok(Keyset::new(keys))
    }

    /// The signing keys of a JWKS: Ed25519 (`OKP`, EdDSA) and RSA (RS256). Keys for
    /// encryption, without a `kid`, or of other types are left out; a key that claims an
    /// algorithm its type cannot have makes the whole set malformed.
    pub fn from_jwks(jwks: &JwkSet) -> Result<Self, TokenError> {
        let mut set = Keyset::default();
        for jwk in &jwks.keys {
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            let declared = jwk.common.key_algorithm;
            let entry = match &jwk.algorithm {
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                    if declared.is_some_and(|a| a != KeyAlgorithm::EdDSA) {
                        return Err(TokenError::Malformed);
                    }
                    let raw = B64.decode(&p.x).map_err(|_| TokenError::Malformed)?;
                    let raw: [u8; 32] = raw.try_into().map_err(|_| TokenError::Malformed)?;
                    VerifyingKey::from_bytes(&raw).map_err(|_| TokenError::Malformed)?;
                    TrustedKey {
                        alg: Algorithm::EdDSA,
                        key: DecodingKey::from_ed_components(&p.x)
                            .map_err(|_| TokenError::Malformed)?,
                        ed25519: Some(raw),
                    }
                }
                AlgorithmParameters::RSA(p) => {
                    if declared.is_some_and(|a| a != KeyAlgorithm::RS256) {
                        // RS384/PS256... are not accepted; leave the key out.
                        continue;
                    }
                    let key = DecodingKey::from_rsa_components(&p.n, &p.e)
                        .map_err(|_| TokenError::Malformed)?;
                    TrustedKey { alg: Algorithm::RS256, key, ed25519: None }
                }
                _ => continue,
            };
            set.keys.insert(kid, Arc::new(entry));
        }
        Ok(set)
    }

    pub fn insert(&mut self, key: PublicKey) {
        let raw = *key.key.as_bytes();
        let entry = TrustedKey {
            alg: Algorithm::EdDSA,
            key: DecodingKey::from_ed_components(&B64.encode(raw))
                .unwrap_or_else(|_| unreachable!("a 32-byte key always encodes")),
            ed25519: Some(raw),
        };
        self.keys.insert(key.kid, Arc::new(entry));
    }

    /// Adds every key of `other` (its entries win on equal key ids).
    pub fn extend(&mut self, other: &Keyset) {
        for (kid, k) in &other.keys {
            self.keys.insert(kid.clone(), k.clone());
        }
    }

    pub(crate) fn get(&self, kid: &str) -> Option<&TrustedKey> {
        self.keys.get(kid).map(|k| &**k)
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Key ids, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut v: Vec<_> = self.keys.keys().cloned().collect();
        v.sort();
        v
    }

    /// The Ed25519 public keys, for checks against well-known development keys.
    pub fn ed25519_keys(&self) -> Vec<PublicKey> {
        let mut out = Vec::new();
        for (kid, k) in &self.keys {
            if let Some(raw) = k.ed25519
                && let Ok(key) = VerifyingKey::from_bytes(&raw)
            {
                out.push(PublicKey { kid: kid.clone(), key });
            }
        }
        out.sort_by(|a, b| a.kid.cmp(&b.kid));
        out
    }

    /// `kid:base64,...` of the Ed25519 keys, sorted by kid (RSA keys have no such form).
    pub fn to_config_string(&self) -> String {
        self.ed25519_keys()
            .iter()
            .map(|k| format!("{}:{}", k.kid, k.to_base64()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The Ed25519 keys as a JWKS (what the local development issuer publishes).
    pub fn to_jwks(&self) -> JwkSet {
        JwkSet { keys: self.ed25519_keys().iter().map(PublicKey::to_jwk).collect() }
    }
}
