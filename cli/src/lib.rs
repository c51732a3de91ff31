//! The tessera operator CLI.
