//! Pure edge logic shared by the WASM components.
