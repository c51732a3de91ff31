//! The edge host: a wasmtime server for Tessera's Spin components.
