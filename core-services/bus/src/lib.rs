//! NATS JetStream: region streams, outbox relay and idempotent consumers.
