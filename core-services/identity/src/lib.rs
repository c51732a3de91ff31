//! Identity tokens (EdDSA JWT): minting and verification.
