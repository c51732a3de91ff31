//! The fan pages' bundler: turns the plain sources under `web/` (HTML, CSS, ES modules,
//! one string catalogue per language) into what the `pages` edge component serves.
//!
//! - Every file under `web/assets/` gets a content-hashed name (`/assets/app.3f9c1a2b4d.css`)
//!   so it can be cached for a year (`immutable`).
//! - Each language catalogue `web/i18n/<lang>.json` becomes an ES module
//!   `/assets/strings-<lang>.<hash>.js`; modules import it as `/assets/strings.js`.
//! - Each page of [`PAGES`] is wrapped in `web/pages/_layout.html` once per language, with
//!   `{{t:key}}` replaced by the catalogue's text, asset paths replaced by their hashed
//!   names, an import map (so modules import each other by their plain names and one
//!   changed module changes only its own name) and `modulepreload` links for the page's
//!   whole module graph. The import map is the only inline script; its SHA-256 goes into
//!   the page's Content-Security-Policy.
//! - Every body is also gzipped (level 9), so the component serves it compressed without
//!   compressing anything per request.
//!
//! It is not a web framework or a template engine: there is no Node build step, and the
//! sources run as they are in any current browser.

//!
//! [`serve`] is what the component decides per request (which page, which language,
//! which headers); it has no dependencies and compiles to WASM. The bundler needs the
//! `bundle` feature (on by default; the component turns it off for its runtime copy).

pub mod serve;

#[cfg(feature = "bundle")]
mod bundle;
#[cfg(feature = "bundle")]
pub use bundle::*;
