//! Clock and randomness for deterministic core code.
