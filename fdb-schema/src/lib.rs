//! The key space of Tessera's inventory store as FoundationDB tuple-layer subspaces.
