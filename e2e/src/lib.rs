//! End-to-end harness: starts the real multi-region stack.
