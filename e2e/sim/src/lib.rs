//! Deterministic simulation of the core.
