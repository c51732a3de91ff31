//! Payments for Tessera: the provider-neutral interface the checkout saga calls
//! ([`PaymentProvider`]), an adapter that speaks Stripe's PaymentIntents HTTP API
//! ([`stripe::StripeClient`]) and Stripe-style webhook signatures ([`webhook`]). The local
//! provider simulator that speaks the same wire format (`tessera-paysim`) is test support,
//! in its own crate.
//!
//! What it is not: the saga. Deciding when to authorize, capture, void or refund, and
//! keeping the order and its seats consistent with the provider, is `tessera-orders`'
//! job. This crate only guarantees that every mutating call carries an idempotency key and
//! that its errors say whether money may have moved ([`PaymentError::Unknown`]) or
//! certainly did not.
//!
//! No card data passes through here: the fan's browser turns a card into a payment method
//! token (`pm_...`) with the provider's own SDK, and only that token reaches us.

mod provider;
pub mod stripe;
pub mod webhook;

pub use provider::{
    AuthorizeRequest, IdempotencyKey, InvalidIdempotencyKey, Payment, PaymentError,
    PaymentProvider, PaymentStatus, Refund, RefundStatus,
};
