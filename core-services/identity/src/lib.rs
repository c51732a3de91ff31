//! Signed tokens for Tessera.
//!
//! - **Identity tokens** ([`IdentityClaims`]): OIDC-style JWTs from any issuer, signed
//!   with EdDSA (Ed25519) or RS256, whose `sub` is the customer id that holds, orders and
//!   queue tickets are bound to. [`IdentityVerifier`] checks the signature against a
//!   [`Keyset`] (the algorithm is pinned to each key), issuer, audience and validity, and
//!   reads the roles ([`ROLES`]) from a configurable claim. With the `fetch` feature,
//!   [`oidc::Oidc`] keeps the keyset current from the issuer's discovery document and
//!   JWKS.
//! - **Tessera's own tokens** (queue tickets and admission tokens, tickets, admission
//!   watermarks): compact Ed25519 JWTs made with [`sign`] and checked with [`verify`].
//! - [`dev`]: the keys of local stacks, which production refuses.
//!
//! Verification is the `jsonwebtoken` crate's. Without `fetch` the crate does no I/O and
//! compiles to `wasm32-wasip1` for the edge components, which get the issuer's keys as a
//! variable instead of fetching them.

mod claims;
pub mod dev;
mod jws;
mod keys;
#[cfg(feature = "fetch")]
pub mod oidc;

pub use claims::{
    AUDIENCE, IdentityClaims, IdentityIssuer, IdentityVerifier, ROLE_ADMIN, ROLE_FAN, ROLE_GATE,
    ROLE_OPERATOR, ROLE_VIEWER, ROLES, bearer, role_grants,
};
pub use jws::{TOKEN_LEN_MAX, Unverified, decode_unverified, sign, verify};
pub use keys::{Keyset, PublicKey, SigningKeyPair};

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

impl TokenError {
    /// A short stable name for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Algorithm => "algorithm",
            TokenError::UnknownKey => "unknown_kid",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::MissingRole => "missing_role",
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use tessera_api::CustomerId;

    use super::*;

    const ISSUER: &str = "https://id.example.org";

    fn key(kid: &str, pass: &str) -> SigningKeyPair {
        SigningKeyPair::derive_for_development(kid, pass)
    }
    fn issuer() -> IdentityIssuer {
        IdentityIssuer { issuer: ISSUER.into(), key: key("k1", "test") }
    }
    fn verifier() -> IdentityVerifier {
        IdentityVerifier::new(ISSUER, Keyset::new([issuer().key.public()]))
    }
    fn fan(id: &str) -> CustomerId {
        CustomerId::parse(id).unwrap()
    }
    const NOW: u64 = 1_800_000_000_000;

    /// Builds a token from raw parts, for attacks the signer never produces.
    fn raw_token(header: &serde_json::Value, claims: &serde_json::Value, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string()),
            B64.encode(sig)
        )
    }

    fn claims_json(roles: &[&str]) -> serde_json::Value {
        serde_json::json!({
            "iss": ISSUER, "sub": "fan-1", "aud": "tessera",
            "exp": NOW / 1000 + 60, "iat": NOW / 1000, "roles": roles,
        })
    }

    #[test]
    fn round_trips_a_fan_token_with_default_and_implied_roles() {
        let t = issuer().mint(fan("fan-1"), vec![ROLE_OPERATOR.into()], NOW, 600);
        let c = verifier().verify(&t, NOW + 1000).unwrap();
        assert_eq!(c.sub.as_str(), "fan-1");
        assert_eq!(c.roles, vec!["fan".to_owned(), "operator".to_owned()]);
        assert!(c.has_role(ROLE_VIEWER), "operator implies viewer");
        assert!(!c.has_role(ROLE_ADMIN));
        assert_eq!(verifier().verify_role(&t, NOW, ROLE_GATE), Err(TokenError::MissingRole));
        let admin = issuer().mint(fan("a-1"), vec![ROLE_ADMIN.into()], NOW, 600);
        let c = verifier().verify(&admin, NOW).unwrap();
        assert!(c.has_role(ROLE_OPERATOR) && c.has_role(ROLE_GATE) && c.has_role(ROLE_VIEWER));
    }

    #[test]
    fn rejects_expired_forged_and_foreign_tokens() {
        let t = issuer().mint(fan("fan-1"), vec![], NOW, 60);
        assert_eq!(verifier().verify(&t, NOW + 120_000), Err(TokenError::Expired));
        assert_eq!(verifier().verify(&t, NOW - 120_000), Err(TokenError::NotYetValid));

        // Same claims signed by another key under the same kid.
        let forger = IdentityIssuer { issuer: ISSUER.into(), key: key("k1", "attacker") };
        let forged = forger.mint(fan("fan-1"), vec![], NOW, 60);
        assert_eq!(verifier().verify(&forged, NOW), Err(TokenError::BadSignature));

        // Claims edited after signing.
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        parts[1] = B64.encode(claims_json(&["admin"]).to_string());
        assert_eq!(verifier().verify(&parts.join("."), NOW), Err(TokenError::BadSignature));

        let other_kid = IdentityIssuer { issuer: ISSUER.into(), key: key("k2", "test") };
        let t2 = other_kid.mint(fan("fan-1"), vec![], NOW, 60);
        assert_eq!(verifier().verify(&t2, NOW), Err(TokenError::UnknownKey));

        let other_iss = IdentityIssuer { issuer: "https://evil.example".into(), ..issuer() };
        let t3 = other_iss.mint(fan("fan-1"), vec![], NOW, 60);
        assert_eq!(verifier().verify(&t3, NOW), Err(TokenError::WrongIssuer));

        let mut v = verifier();
        v.audience = "another-app".into();
        assert_eq!(v.verify(&t, NOW), Err(TokenError::WrongAudience));

        for junk in ["", "a.b", "a.b.c", "....", "eyJhbGciOiJub25lIn0.e30."] {
            assert!(verifier().verify(junk, NOW).is_err(), "{junk}");
        }
    }

    #[test]
    fn refuses_alg_none_and_algorithm_confusion() {
        let none = raw_token(
            &serde_json::json!({"alg": "none", "typ": "JWT", "kid": "k1"}),
            &claims_json(&["admin"]),
            b"",
        );
        assert_eq!(verifier().verify(&none, NOW), Err(TokenError::Algorithm));
        // HS256 with the Ed25519 public key as the HMAC secret: the key is pinned to EdDSA.
        let public = issuer().key.public();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("k1".into());
        let hs = jsonwebtoken::encode(
            &header,
            &claims_json(&["admin"]),
            &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(verifier().verify(&hs, NOW), Err(TokenError::Algorithm));
        // RS256 named under an Ed25519 key id.
        let rs = raw_token(
            &serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "k1"}),
            &claims_json(&["admin"]),
            &[0u8; 256],
        );
        assert_eq!(verifier().verify(&rs, NOW), Err(TokenError::Algorithm));
        // A key embedded in the header is never trusted.
        let attacker = key("k1", "attacker");
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("k1".into());
        header.jwk = Some(attacker.public().to_jwk());
        let embedded = jws::sign(&attacker, &claims_json(&["admin"]));
        assert_eq!(verifier().verify(&embedded, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn what_sign_makes_verifies_with_jsonwebtoken_and_back() {
        let k = key("k1", "test");
        let t = sign(&k, &claims_json(&["fan"]));
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.validate_exp = false;
        v.validate_aud = false;
        let dk = jsonwebtoken::DecodingKey::from_ed_components(&k.public().to_base64()).unwrap();
        let back = jsonwebtoken::decode::<serde_json::Value>(&t, &dk, &v).unwrap();
        assert_eq!(back.claims["sub"], "fan-1");
        assert_eq!(back.header.kid.as_deref(), Some("k1"));
        // The other way: jsonwebtoken's own signer, verified here.
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        let der = k.key.to_pkcs8_der().unwrap();
        let ek = jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes());
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("k1".into());
        let t2 = jsonwebtoken::encode(&header, &claims_json(&["fan"]), &ek).unwrap();
        assert_eq!(verifier().verify(&t2, NOW).unwrap().sub.as_str(), "fan-1");
    }

    #[test]
    fn reads_roles_from_a_configured_claim() {
        let k = key("k1", "test");
        let mut c = claims_json(&[]);
        c["realm_access"] = serde_json::json!({"roles": ["gate", "unknown-role"]});
        c["https://tessera/roles"] = serde_json::json!("viewer operator");
        let t = sign(&k, &c);
        let mut v = verifier();
        v.roles_claim = "realm_access.roles".into();
        assert_eq!(v.verify(&t, NOW).unwrap().roles, vec!["fan".to_owned(), "gate".to_owned()]);
        v.roles_claim = "https://tessera/roles".into();
        v.default_roles = vec![];
        assert_eq!(
            v.verify(&t, NOW).unwrap().roles,
            vec!["operator".to_owned(), "viewer".to_owned()]
        );
        // The `roles` claim counts only when it is the configured one.
        let t = sign(&k, &claims_json(&["admin"]));
        v.roles_claim = "groups".into();
        assert!(v.verify(&t, NOW).unwrap().roles.is_empty());
    }

    #[test]
    fn keysets_round_trip_through_config_strings_and_jwks() {
        let ks = Keyset::new([key("a", "1").public(), key("b", "2").public()]);
        let s = ks.to_config_string();
        assert_eq!(Keyset::parse(&s).unwrap().to_config_string(), s);
        let jwks = serde_json::to_string(&ks.to_jwks()).unwrap();
        assert!(jwks.contains("\"kty\":\"OKP\"") && jwks.contains("\"alg\":\"EdDSA\""));
        assert_eq!(Keyset::parse(&jwks).unwrap().to_config_string(), s);
        assert!(Keyset::parse("nonsense").is_err());
        // An OKP key that claims RS256 is a malformed set.
        let bad = jwks.replace("EdDSA", "RS256");
        assert!(Keyset::parse(&bad).is_err());
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

        #[test]
        fn never_panics_on_arbitrary_dotted_input(
            a in "[A-Za-z0-9_-]{0,60}", b in "[A-Za-z0-9_-]{0,60}", c in "[A-Za-z0-9_-]{0,90}"
        ) {
            let _ = verifier().verify(&format!("{a}.{b}.{c}"), NOW);
            let _ = verifier().verify(&format!("eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0.{b}.{c}"), NOW);
        }
    }
}
