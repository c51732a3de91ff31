//! The keys of local development stacks, derived from public phrases, and the checks that
//! keep them out of production.
//!
//! A local stack (`cargo xtask up`, the end-to-end tests) needs keys that every process
//! agrees on without a secret store, so they are derived from the phrases below. Anyone
//! who reads this file has them: production mode refuses every one of them.

use crate::keys::{PublicKey, SigningKeyPair};

/// What a development key is for; each has its own phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The local development issuer's identity tokens.
    Identity,
    /// The edge's queue tickets and admission tokens.
    Edge,
    /// Tickets (QR codes) gates accept.
    Tickets,
    /// The core's admission watermarks.
    Watermark,
}

impl Purpose {
    pub const ALL: [Purpose; 4] =
        [Purpose::Identity, Purpose::Edge, Purpose::Tickets, Purpose::Watermark];

    fn phrase(self) -> &'static str {
        match self {
            Purpose::Identity => "tessera-local-identity",
            Purpose::Edge => "tessera-local-edge",
            Purpose::Tickets => "tessera-local-tickets",
            Purpose::Watermark => "tessera-local-watermark",
        }
    }
}

/// The development key for `purpose`, under key id `kid`.
pub fn key(purpose: Purpose, kid: &str) -> SigningKeyPair {
    SigningKeyPair::derive_for_development(kid, purpose.phrase())
}

/// Whether `key` is one of the development keys (under any key id).
pub fn is_development_key(key: &PublicKey) -> bool {
    Purpose::ALL.iter().any(|p| self::key(*p, "").public().as_bytes() == key.as_bytes())
}

/// Whether `key` signs like one of the development keys.
pub fn is_development_signing_key(key: &SigningKeyPair) -> bool {
    is_development_key(&key.public())
}

/// Secrets of local stacks that production mode refuses wherever they appear.
pub const SECRETS: [&str; 5] = [
    "sk_test_tessera",
    "whsec_tessera_local",
    "tessera-local-shadow-secret",
    "tessera-local-pow-secret",
    SERVICE_CREDENTIAL,
];

/// The edge's service credential on local stacks.
pub const SERVICE_CREDENTIAL: &str = "tessera-local-edge-service-credential";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_development_keys_under_any_kid() {
        assert!(is_development_key(&key(Purpose::Edge, "edge-7").public()));
        assert!(is_development_signing_key(&key(Purpose::Tickets, "t")));
        let other = SigningKeyPair::from_seed("edge-1", [7; 32]);
        assert!(!is_development_key(&other.public()));
    }
}
