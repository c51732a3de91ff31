//! The one error body every Tessera service returns, and its stable codes.
//!
//! ```json
//! {"code": "seat_held", "message": "seat A-12-7 is held by someone else"}
//! ```
//! `code` is the contract: clients branch on it. `message` is for humans and may change.

use serde::{Deserialize, Serialize};

/// Machine-readable error codes. New codes may be added; clients must treat an unknown
/// code by its HTTP status class (deserializes to [`ErrorCode::Other`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    // --- request shape (edge and core) ---
    NotFound,
    MethodNotAllowed,
    MalformedJson,
    InvalidRequest,
    BodyTooLarge,
    UnsupportedMediaType,
    RateLimited,
    ChallengeRequired,
    ChallengeFailed,
    // --- identity ---
    Unauthenticated,
    InvalidToken,
    TokenExpired,
    Forbidden,
    // --- catalog / inventory ---
    UnknownEvent,
    UnknownSeat,
    UnknownPool,
    UnknownSection,
    UnknownHold,
    DuplicateSeat,
    InvalidQuantity,
    SeatHeld,
    SeatSold,
    NotEnoughAdjacent,
    SoldOut,
    LimitExceeded,
    EventNotOnSale,
    EventExists,
    InvalidSeatMap,
    HoldExpired,
    HoldNotActive,
    HoldForeign,
    HoldPaymentInFlight,
    IdempotencyConflict,
    IdempotencyKeyRequired,
    // --- waiting room ---
    AdmissionRequired,
    /// The admission token already admitted a hold (each admits one).
    AdmissionUsed,
    QueueTicketInvalid,
    QueueTokenWrongEvent,
    QueueTokenWrongDevice,
    QueueClosed,
    NotAdmittedYet,
    /// A waiting-list join while places are still offered in queue order.
    NotSoldOut,
    /// The admission's window passed unused (or its fan left); join again.
    AdmissionExpired,
    /// The fan left the waiting room with this ticket; join again for a new place.
    QueueLeft,
    /// Status polls from one ticket faster than the waiting room answers them.
    QueuePollTooFast,
    // --- orders, payments, tickets ---
    UnknownOrder,
    PaymentDeclined,
    PaymentFailed,
    CheckoutInProgress,
    OrderNotRefundable,
    WebhookSignatureInvalid,
    TicketInvalid,
    TicketAlreadyUsed,
    // --- regions / operators ---
    UnknownRegion,
    LastHealthyRegion,
    // --- server side ---
    Internal,
    Unavailable,
    RegionUnavailable,
    Timeout,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// Every code, in declaration order (for clients' message catalogues and their tests).
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::MalformedJson,
        ErrorCode::InvalidRequest,
        ErrorCode::BodyTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RateLimited,
        ErrorCode::ChallengeRequired,
        ErrorCode::ChallengeFailed,
        ErrorCode::Unauthenticated,
        ErrorCode::InvalidToken,
        ErrorCode::TokenExpired,
        ErrorCode::Forbidden,
        ErrorCode::UnknownEvent,
        ErrorCode::UnknownSeat,
        ErrorCode::UnknownPool,
        ErrorCode::UnknownSection,
        ErrorCode::UnknownHold,
        ErrorCode::DuplicateSeat,
        ErrorCode::InvalidQuantity,
        ErrorCode::SeatHeld,
        ErrorCode::SeatSold,
        ErrorCode::NotEnoughAdjacent,
        ErrorCode::SoldOut,
        ErrorCode::LimitExceeded,
        ErrorCode::EventNotOnSale,
        ErrorCode::EventExists,
        ErrorCode::InvalidSeatMap,
        ErrorCode::HoldExpired,
        ErrorCode::HoldNotActive,
        ErrorCode::HoldForeign,
        ErrorCode::HoldPaymentInFlight,
        ErrorCode::IdempotencyConflict,
        ErrorCode::IdempotencyKeyRequired,
        ErrorCode::AdmissionRequired,
        ErrorCode::AdmissionUsed,
        ErrorCode::QueueTicketInvalid,
        ErrorCode::QueueTokenWrongEvent,
        ErrorCode::QueueTokenWrongDevice,
        ErrorCode::QueueClosed,
        ErrorCode::NotAdmittedYet,
        ErrorCode::NotSoldOut,
        ErrorCode::AdmissionExpired,
        ErrorCode::QueueLeft,
        ErrorCode::QueuePollTooFast,
        ErrorCode::UnknownOrder,
        ErrorCode::PaymentDeclined,
        ErrorCode::PaymentFailed,
        ErrorCode::CheckoutInProgress,
        ErrorCode::OrderNotRefundable,
        ErrorCode::WebhookSignatureInvalid,
        ErrorCode::TicketInvalid,
        ErrorCode::TicketAlreadyUsed,
        ErrorCode::UnknownRegion,
        ErrorCode::LastHealthyRegion,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::RegionUnavailable,
        ErrorCode::Timeout,
        ErrorCode::Other,
    ];

    /// The HTTP status every service uses for this code.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            NotFound | UnknownEvent | UnknownHold | UnknownOrder | UnknownRegion => 404,
            MethodNotAllowed => 405,
            MalformedJson | InvalidRequest | IdempotencyKeyRequired => 400,
            WebhookSignatureInvalid => 400,
            BodyTooLarge => 413,
            UnsupportedMediaType => 415,
            RateLimited => 429,
            ChallengeRequired | ChallengeFailed => 428,
            Unauthenticated | InvalidToken | TokenExpired => 401,
            Forbidden
            | HoldForeign
            | AdmissionRequired
            | QueueTicketInvalid
            | QueueTokenWrongEvent
            | QueueTokenWrongDevice
            | NotAdmittedYet
            | TicketInvalid => 403,
            UnknownSeat | UnknownPool | UnknownSection | DuplicateSeat | InvalidQuantity
            | LimitExceeded | InvalidSeatMap => 422,
            SeatHeld | SeatSold | NotEnoughAdjacent | SoldOut | EventNotOnSale | EventExists
            | HoldNotActive | HoldPaymentInFlight | IdempotencyConflict | QueueClosed
            | CheckoutInProgress | OrderNotRefundable | TicketAlreadyUsed | LastHealthyRegion
            | AdmissionUsed | NotSoldOut => 409,
            HoldExpired | AdmissionExpired | QueueLeft => 410,
            QueuePollTooFast => 429,
            PaymentDeclined => 402,
            PaymentFailed => 502,
            Internal | Other => 500,
            Unavailable | RegionUnavailable => 503,
            Timeout => 504,
        }
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        code_name(self)
    }

    /// Whether retrying the same request later may succeed without changing it.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited
                | ErrorCode::QueuePollTooFast
                | ErrorCode::Unavailable
                | ErrorCode::RegionUnavailable
                | ErrorCode::Timeout
                | ErrorCode::CheckoutInProgress
        )
    }
}

fn code_name(code: ErrorCode) -> &'static str {
    use ErrorCode::*;
    match code {
        NotFound => "not_found",
        MethodNotAllowed => "method_not_allowed",
        MalformedJson => "malformed_json",
        InvalidRequest => "invalid_request",
        BodyTooLarge => "body_too_large",
        UnsupportedMediaType => "unsupported_media_type",
        RateLimited => "rate_limited",
        ChallengeRequired => "challenge_required",
        ChallengeFailed => "challenge_failed",
        Unauthenticated => "unauthenticated",
        InvalidToken => "invalid_token",
        TokenExpired => "token_expired",
        Forbidden => "forbidden",
        UnknownEvent => "unknown_event",
        UnknownSeat => "unknown_seat",
        UnknownPool => "unknown_pool",
        UnknownSection => "unknown_section",
        UnknownHold => "unknown_hold",
        DuplicateSeat => "duplicate_seat",
        InvalidQuantity => "invalid_quantity",
        SeatHeld => "seat_held",
        SeatSold => "seat_sold",
        NotEnoughAdjacent => "not_enough_adjacent",
        SoldOut => "sold_out",
        LimitExceeded => "limit_exceeded",
        EventNotOnSale => "event_not_on_sale",
        EventExists => "event_exists",
        InvalidSeatMap => "invalid_seat_map",
        HoldExpired => "hold_expired",
        HoldNotActive => "hold_not_active",
        HoldForeign => "hold_foreign",
        HoldPaymentInFlight => "hold_payment_in_flight",
        IdempotencyConflict => "idempotency_conflict",
        IdempotencyKeyRequired => "idempotency_key_required",
        AdmissionRequired => "admission_required",
        AdmissionUsed => "admission_used",
        QueueTicketInvalid => "queue_ticket_invalid",
        QueueTokenWrongEvent => "queue_token_wrong_event",
        QueueTokenWrongDevice => "queue_token_wrong_device",
        QueueClosed => "queue_closed",
        NotAdmittedYet => "not_admitted_yet",
        NotSoldOut => "not_sold_out",
        AdmissionExpired => "admission_expired",
        QueueLeft => "queue_left",
        QueuePollTooFast => "queue_poll_too_fast",
        UnknownOrder => "unknown_order",
        PaymentDeclined => "payment_declined",
        PaymentFailed => "payment_failed",
        CheckoutInProgress => "checkout_in_progress",
        OrderNotRefundable => "order_not_refundable",
        WebhookSignatureInvalid => "webhook_signature_invalid",
        TicketInvalid => "ticket_invalid",
        TicketAlreadyUsed => "ticket_already_used",
        UnknownRegion => "unknown_region",
        LastHealthyRegion => "last_healthy_region",
        Internal => "internal",
        Unavailable => "unavailable",
        RegionUnavailable => "region_unavailable",
        Timeout => "timeout",
        Other => "other",
    }
}

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiErrorBody { code, message: message.into() }
    }
    pub fn status(&self) -> u16 {
        self.code.status()
    }
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"code":"internal","message":"failed to encode error"}"#.to_owned()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_json_and_names() {
        let body = ApiErrorBody::new(ErrorCode::SeatHeld, "seat A-1-1 is held");
        let json = body.to_json();
        assert_eq!(json, r#"{"code":"seat_held","message":"seat A-1-1 is held"}"#);
        let back: ApiErrorBody = serde_json::from_str(&json).unwrap();
        assert_eq!(back, body);
        assert_eq!(ErrorCode::SeatHeld.as_str(), "seat_held");
        assert_eq!(ErrorCode::LastHealthyRegion.as_str(), "last_healthy_region");
    }

    #[test]
    fn unknown_codes_from_newer_peers_are_tolerated() {
        let back: ApiErrorBody =
            serde_json::from_str(r#"{"code":"brand_new_code","message":"x"}"#).unwrap();
        assert_eq!(back.code, ErrorCode::Other);
        assert_eq!(back.status(), 500);
    }

    #[test]
    fn every_client_error_is_4xx() {
        for code in [
            ErrorCode::SeatSold,
            ErrorCode::DuplicateSeat,
            ErrorCode::HoldExpired,
            ErrorCode::IdempotencyConflict,
            ErrorCode::QueueTokenWrongDevice,
        ] {
            assert!((400..500).contains(&code.status()), "{code:?}");
        }
    }

    #[test]
    fn all_lists_every_code_once() {
        // A new variant must be added to this match, and then to `ALL`.
        fn position(code: ErrorCode) -> usize {
            use ErrorCode::*;
            match code {
                NotFound => 0,
                MethodNotAllowed => 1,
                MalformedJson => 2,
                InvalidRequest => 3,
                BodyTooLarge => 4,
                UnsupportedMediaType => 5,
                RateLimited => 6,
                ChallengeRequired => 7,
                ChallengeFailed => 8,
                Unauthenticated => 9,
                InvalidToken => 10,
                TokenExpired => 11,
                Forbidden => 12,
                UnknownEvent => 13,
                UnknownSeat => 14,
                UnknownPool => 15,
                UnknownSection => 16,
                UnknownHold => 17,
                DuplicateSeat => 18,
                InvalidQuantity => 19,
                SeatHeld => 20,
                SeatSold => 21,
                NotEnoughAdjacent => 22,
                SoldOut => 23,
                LimitExceeded => 24,
                EventNotOnSale => 25,
                EventExists => 26,
                InvalidSeatMap => 27,
                HoldExpired => 28,
                HoldNotActive => 29,
                HoldForeign => 30,
                HoldPaymentInFlight => 31,
                IdempotencyConflict => 32,
                IdempotencyKeyRequired => 33,
                AdmissionRequired => 34,
                AdmissionUsed => 35,
                QueueTicketInvalid => 36,
                QueueTokenWrongEvent => 37,
                QueueTokenWrongDevice => 38,
                QueueClosed => 39,
                NotAdmittedYet => 40,
                NotSoldOut => 41,
                AdmissionExpired => 42,
                QueueLeft => 43,
                QueuePollTooFast => 44,
                UnknownOrder => 45,
                PaymentDeclined => 46,
                PaymentFailed => 47,
                CheckoutInProgress => 48,
                OrderNotRefundable => 49,
                WebhookSignatureInvalid => 50,
                TicketInvalid => 51,
                TicketAlreadyUsed => 52,
                UnknownRegion => 53,
                LastHealthyRegion => 54,
                Internal => 55,
                Unavailable => 56,
                RegionUnavailable => 57,
                Timeout => 58,
                Other => 59,
            }
        }
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(position(*code), i, "{code:?}");
        }
        assert_eq!(ErrorCode::ALL.len(), position(ErrorCode::Other) + 1);
    }
}
