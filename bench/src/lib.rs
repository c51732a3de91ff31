//! Benchmarks for the hot paths.
