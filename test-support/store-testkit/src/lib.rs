//! Test support for the store (never linked into a service): [`conformance`], the one suite
//! of FoundationDB behaviour every backend must pass, expanded per backend with
//! [`conformance_tests!`]; [`faults::FaultyStore`], a wrapper that makes commits fail the
//! ways FoundationDB's do; and the `tessera-store-stress` binary, a writer process the crash
//! tests kill with SIGKILL mid-load.

pub mod conformance;
pub mod faults;
