//! The waiting room's rules, shared by the edge (which issues and checks tokens and admits
//! fans) and the core (which registers places and publishes the admission watermark).
//!
//! - [`token`]: Ed25519-signed queue tickets (`typ = "qt"`) and admission tokens
//!   (`typ = "adm"`), bound to one event, one customer and one device, short-lived, and
//!   verifiable by any holder of the keyset without calling a region.
//! - [`lottery`]: the verifiable shuffle. A commitment to the seed is published before the
//!   sale; the seed after. A pre-open ticket's lottery value is
//!   SHA-256(seed ‖ event_id ‖ ticket_id), so anyone can recompute the order.
//! - [`admission`]: what the edge tells a fan (admitted or not, place, honest wait) given
//!   a watermark.
//! - [`controller`]: the admission controller the core runs, turning queue counts,
//!   remaining inventory, core health and the operator's rate into a watermark.
//! - [`watermark`]: watermarks signed by the core's key, which edges verify (and ignore
//!   when stale) before admitting anyone by them.
//!
//! It does no I/O and reads no clock: time arrives as `now_ms`, randomness as bytes. It
//! compiles to WASM for the edge components.

pub mod admission;
pub mod controller;
pub mod lottery;
pub mod token;
pub mod watermark;

pub use admission::{QueueView, is_admitted, view};
pub use controller::{AdmissionController, ControllerConfig, ControllerInput};
pub use lottery::{commitment, lottery_rank, lottery_value, verify_seed};
pub use token::{
    QueueTokenError, TYP_ADMISSION, TYP_TICKET, device_hash, issue, verify_admission, verify_ticket,
};
