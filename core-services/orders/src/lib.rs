//! Checkout: orders, the payment saga and tickets.
