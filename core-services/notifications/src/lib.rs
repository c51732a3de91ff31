//! Notifications for Tessera: what fans and operators hear about bus events.
//!
//! - **Email** ([`email`]): an order confirmation on `order.completed` and "your hold is
//!   about to expire" on `hold.expiring`, sent over SMTP with `lettre`. Addresses never
//!   travel on the bus: they are looked up through [`Contacts`] when sending, and never
//!   logged.
//! - **Webhooks** ([`webhooks`]): operator endpoints receive the bus event's JSON, signed
//!   with `tessera-signature: t=<unix>,v1=<hex hmac-sha256(secret, "<t>.<body>")>`.
//! - Both go through one durable delivery queue in the store: [`Notifier::handle`] marks a
//!   bus event consumed and writes its deliveries in one transaction (so a duplicate event
//!   has no second effect), and the worker retries failures with exponential backoff and
//!   jitter, then records a dead letter.
//! - **Server-sent events** ([`sse`]): `GET /v1/events/{event_id}/stream` pushes a fan's own
//!   hold, order and queue news to their page.
//!
//! The SMTP server that keeps messages as files for the local stack and tests
//! (`tessera-mailsink`) is test support, in its own crate.
//!
//! What it is not: a bus consumer. Whoever reads NATS calls [`Notifier::handle`]; this crate
//! never talks to NATS, and it does not decide what happened, only who hears about it.

pub mod email;
mod queue;
pub mod sse;
pub mod webhooks;

pub use queue::{
    CONSUMER, Contacts, DeliveryOutcome, Handled, Notifier, NotifierConfig, NotifyError,
    RetryPolicy, retry_delay_ms,
};
pub use tessera_fdb_schema::notify::{DeadLetterRecord, DeliveryChannel, DeliveryRecord};
