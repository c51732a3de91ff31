//! Header names used across the edge, the router and the core.

/// Idempotency key for any mutating request (holds, checkouts, refunds).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The waiting room's admission token, required for holds while a queue is active.
pub const ADMISSION: &str = "x-tessera-admission";
/// The waiting room's queue ticket (a signed token carrying the fan's rank).
pub const QUEUE_TICKET: &str = "x-tessera-queue-ticket";
/// The fan's device/session id that queue tokens are bound to.
pub const DEVICE: &str = "x-tessera-device";
/// A solved proof-of-work challenge: `<challenge>:<solution>`.
pub const POW: &str = "x-tessera-pow";
/// An explicit region preference (overrides the PoP latency table).
pub const REGION_HINT: &str = "x-tessera-region";
/// Fly.io's header naming the PoP that received the request.
pub const FLY_REGION: &str = "fly-region";
/// The PoP of the edge that forwarded a request.
pub const EDGE_POP: &str = "x-tessera-pop";
/// The region that served a request (set by the router / core on responses).
pub const SERVED_BY: &str = "x-tessera-region-served";
/// Set to `true` when the edge served catalog data while the region was unreachable.
pub const STALE: &str = "x-tessera-stale";
/// The bot score the edge computed for the request (0 = human, 100 = bot).
pub const BOT_SCORE: &str = "x-tessera-bot-score";
/// Identity of the authenticated caller as verified at the edge (informational only:
/// the core always verifies the bearer token itself).
pub const AUTHORIZATION: &str = "authorization";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// Webhook signature header (`t=<unix>,v1=<hex hmac-sha256>`).
pub const WEBHOOK_SIGNATURE: &str = "tessera-signature";
/// A Tessera service's credential for `/v1/internal/...` (the edge registering a fan's
/// place): one of the core's `service_credentials`. Fans never have one.
pub const SERVICE_CREDENTIAL: &str = "x-tessera-service";
