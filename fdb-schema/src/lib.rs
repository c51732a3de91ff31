//! The key space of Tessera's inventory store, defined once, as FoundationDB tuple-layer
//! subspaces, and the formats of the values stored under them.
//!
//! Only this crate builds keys. Both store backends (FoundationDB and the embedded store)
//! keep these very bytes, so one inventory implementation runs on both. `README.md` next to
//! this file documents every subspace and how its value format evolves.
//!
//! What this crate is not: a data access layer. It does not read or write; the services do,
//! through `tessera-store`.

pub mod keys;
pub mod notify;
pub mod values;

pub use keys::Keyspace;
pub use values::{SchemaError, SeatState, SeatStatus};
