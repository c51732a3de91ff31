//! Notifications: email, webhooks and server-sent events from bus events.
