//! The transactional key-value store interface with FoundationDB semantics.
