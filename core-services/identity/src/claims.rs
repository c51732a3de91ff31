//! Identity tokens: their claims, roles, and how they are verified and (locally) minted.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tessera_api::CustomerId;

use crate::TokenError;
use crate::jws;
use crate::keys::{Keyset, SigningKeyPair};

/// The audience Tessera's own identity tokens carry, and the default a verifier expects.
pub const AUDIENCE: &str = "tessera";

/// Buys tickets: holds, orders, the waiting room.
pub const ROLE_FAN: &str = "fan";
/// Reads operator views (regions, sales) without changing anything.
pub const ROLE_VIEWER: &str = "viewer";
/// Runs sales: events, opening and pausing, admission rates, region drains.
pub const ROLE_OPERATOR: &str = "operator";
/// Everything an operator does, plus refunds.
pub const ROLE_ADMIN: &str = "admin";
/// Scans tickets at a venue's gates.
pub const ROLE_GATE: &str = "gate";

/// Every role Tessera knows.
pub const ROLES: [&str; 5] = [ROLE_FAN, ROLE_VIEWER, ROLE_OPERATOR, ROLE_ADMIN, ROLE_GATE];

/// Whether holding `held` grants `wanted`: `admin` includes `operator`, `viewer` and
/// `gate`; `operator` includes `viewer`.
pub fn role_grants(held: &str, wanted: &str) -> bool {
    held == wanted
        || match held {
            ROLE_ADMIN => matches!(wanted, ROLE_OPERATOR | ROLE_VIEWER | ROLE_GATE),
            ROLE_OPERATOR => wanted == ROLE_VIEWER,
            _ => false,
        }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

fn lenient_roles<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        serde_json::Value::Array(items) => {
            items.iter().filter_map(|r| r.as_str()).map(str::to_owned).collect()
        }
        _ => Vec::new(),
    })
}

fn one_if_single<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    match v {
        [one] => s.serialize_str(one),
        many => many.serialize(s),
    }
}

/// Claims of an identity token (an OIDC ID or access token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityClaims {
    pub iss: String,
    /// The customer id that holds, orders and queue tickets are bound to.
    pub sub: CustomerId,
    /// A string or an array in OIDC; always a list here.
    #[serde(deserialize_with = "one_or_many", serialize_with = "one_if_single")]
    pub aud: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The token's roles (from the verifier's role claim), plus the verifier's defaults.
    #[serde(default, deserialize_with = "lenient_roles")]
    pub roles: Vec<String>,
    /// The OIDC `email` claim, when the issuer shares it (for notifications only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl IdentityClaims {
    /// Checks issuer, Tessera's default audience and the validity window (with `leeway_s`
    /// of clock skew).
    pub fn check(&self, issuer: &str, now_ms: u64, leeway_s: u64) -> Result<(), TokenError> {
        self.check_for(issuer, AUDIENCE, now_ms, leeway_s)
    }

    /// [`IdentityClaims::check`] for another audience.
    pub fn check_for(
        &self,
        issuer: &str,
        audience: &str,
        now_ms: u64,
        leeway_s: u64,
    ) -> Result<(), TokenError> {
        if !self.aud.iter().any(|a| a == audience) {
            return Err(TokenError::WrongAudience);
        }
        if self.iss != issuer {
            return Err(TokenError::WrongIssuer);
        }
        let now_s = now_ms / 1000;
        if now_s > self.exp.saturating_add(leeway_s) {
            return Err(TokenError::Expired);
        }
        let not_before = self.nbf.unwrap_or(0).max(self.iat);
        if not_before > now_s.saturating_add(leeway_s) {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }

    /// Whether the token grants `role` (directly or through a broader role).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| role_grants(r, role))
    }
}

/// Verifies identity tokens: signature (key and algorithm from the keyset), issuer,
/// audience, validity window; then reads the roles from the configured claim.
#[derive(Debug, Clone)]
pub struct IdentityVerifier {
    pub issuer: String,
    pub audience: String,
    pub keys: Keyset,
    pub leeway_s: u64,
    /// Where the roles are: a top-level claim (`roles`, `https://tessera/roles`) or a
    /// dotted path into nested objects (`realm_access.roles`). A list of strings or one
    /// space-separated string.
    pub roles_claim: String,
    /// Roles every verified token has (`fan` by default, so a plain OIDC login can buy).
    pub default_roles: Vec<String>,
}

impl IdentityVerifier {
    /// A verifier with Tessera's defaults: audience `tessera`, 30 s leeway, roles from
    /// `roles`, and `fan` for everyone.
    pub fn new(issuer: impl Into<String>, keys: Keyset) -> Self {
        IdentityVerifier {
            issuer: issuer.into(),
            audience: AUDIENCE.to_owned(),
            keys,
            leeway_s: 30,
            roles_claim: "roles".to_owned(),
            default_roles: vec![ROLE_FAN.to_owned()],
        }
    }

    pub fn verify(&self, token: &str, now_ms: u64) -> Result<IdentityClaims, TokenError> {
        verify_identity(&self.keys, self, token, now_ms)
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

/// The value at `path` in `claims`: the whole string as a top-level claim name first
/// (namespaced claims contain dots), else a dotted path.
fn claim_at<'a>(claims: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(claims, |v, part| v.get(part))
}

/// Verifies `token` with `keys` under the settings of `v` (its own keys are not used, so
/// a verifier whose keys are fetched can pass the current set).
pub(crate) fn verify_identity(
    keys: &Keyset,
    v: &IdentityVerifier,
    token: &str,
    now_ms: u64,
) -> Result<IdentityClaims, TokenError> {
    let raw: serde_json::Value = jws::verify(keys, token)?;
    let mut claims: IdentityClaims = {
        // The roles come from the configured claim, not from a `roles` claim by default.
        let mut without_roles = raw.clone();
        if let Some(map) = without_roles.as_object_mut() {
            map.remove("roles");
        }
        serde_json::from_value(without_roles).map_err(|_| TokenError::Malformed)?
    };
    claims.check_for(&v.issuer, &v.audience, now_ms, v.leeway_s)?;
    let mut roles: Vec<String> = v.default_roles.clone();
    match claim_at(&raw, &v.roles_claim) {
        Some(serde_json::Value::Array(items)) => {
            roles.extend(items.iter().filter_map(|r| r.as_str()).map(str::to_owned));
        }
        Some(serde_json::Value::String(s)) => {
            roles.extend(s.split_whitespace().map(str::to_owned));
        }
        _ => {}
    }
    roles.retain(|r| crate::ROLES.contains(&r.as_str()));
    roles.sort();
    roles.dedup();
    claims.roles = roles;
    Ok(claims)
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
            aud: vec![AUDIENCE.to_owned()],
            exp: iat + ttl_s,
            iat,
            nbf: None,
            roles,
            email,
        };
        jws::sign(&self.key, &claims)
    }
}

/// Extracts the token from an `Authorization: Bearer <token>` header value.
pub fn bearer(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}
