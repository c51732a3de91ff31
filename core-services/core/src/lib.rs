//! The per-region core service process.
