//! Request validation: every request is checked against its route's schema before any
//! component acts on it, so nothing malformed reaches a region. Errors follow the
//! platform's contract: `{"code": .., "message": ..}` with the code's status.

use serde::de::DeserializeOwned;
use tessera_api::headers;
use tessera_api::inventory::HoldRequest;
use tessera_api::ops::{AdmissionRateRequest, DevTokenRequest, DrainRequest};
use tessera_api::orders::{CheckinRequest, CheckoutRequest};
use tessera_api::queue::{QueueJoinRequest, QueueStatusState};
use tessera_api::{ApiErrorBody, ErrorCode};

use crate::routes::{Route, classify};

/// Size limits applied to every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub body_max_bytes: usize,
    pub path_max_bytes: usize,
    pub query_max_bytes: usize,
    pub header_value_max_bytes: usize,
    pub headers_total_max_bytes: usize,
    pub header_count_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_max_bytes: 16 * 1024,
            path_max_bytes: 1024,
            query_max_bytes: 1024,
            header_value_max_bytes: 8 * 1024,
            headers_total_max_bytes: 32 * 1024,
            // Below what every host accepts (Spin takes at most 56 request headers), so a
            // fan gets the same answer on any host. Host-specific `spin-*` headers are not
            // the fan's and are not counted.
            header_count_max: 48,
        }
    }
}

/// The parts of a request validation looks at. Header names are lowercase.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a [(&'a str, &'a [u8])],
    pub body: &'a [u8],
}

impl<'a> RequestView<'a> {
    /// The first value of header `name` (lowercase) as text, if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.iter().find(|(n, _)| *n == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

fn err(code: ErrorCode, message: impl Into<String>) -> ApiErrorBody {
    ApiErrorBody::new(code, message)
}

/// The longest device id a fan may send (it is hashed before use).
pub const DEVICE_MAX_BYTES: usize = 128;
/// The longest idempotency key accepted.
pub const IDEMPOTENCY_KEY_MAX_BYTES: usize = 128;

/// Validates a request and returns its route.
pub fn validate(req: &RequestView<'_>, limits: &Limits) -> Result<Route, ApiErrorBody> {
    if req.path.len() > limits.path_max_bytes {
        return Err(err(ErrorCode::InvalidRequest, "request path is too long"));
    }
    if req.query.is_some_and(|q| q.len() > limits.query_max_bytes) {
        return Err(err(ErrorCode::InvalidRequest, "query string is too long"));
    }
    if req.headers.len() > limits.header_count_max {
        return Err(err(ErrorCode::InvalidRequest, "too many headers"));
    }
    let mut total = 0usize;
    for (name, value) in req.headers {
        if value.len() > limits.header_value_max_bytes {
            return Err(err(ErrorCode::InvalidRequest, format!("header `{name}` is too long")));
        }
        total += name.len() + value.len();
    }
    if total > limits.headers_total_max_bytes {
        return Err(err(ErrorCode::InvalidRequest, "request headers are too large"));
    }
    if req.body.len() > limits.body_max_bytes {
        return Err(err(ErrorCode::BodyTooLarge, "request body is too large"));
    }
    let route = classify(req.method, req.path)?;
    check_route(req, &route)?;
    Ok(route)
}

fn check_route(req: &RequestView<'_>, route: &Route) -> Result<(), ApiErrorBody> {
    match route {
        Route::ListEvents
        | Route::GetEvent { .. }
        | Route::Availability { .. }
        | Route::SectionSeats { .. }
        | Route::Admission { .. }
        | Route::GetHold { .. }
        | Route::ReleaseHold { .. }
        | Route::ListOrders
        | Route::GetOrder { .. }
        | Route::TicketQr { .. }
        | Route::EventStream { .. } => no_body(req),
        Route::QueueJoin { .. } => {
            device(req)?;
            let join: QueueJoinRequest =
                if req.body.is_empty() { QueueJoinRequest::default() } else { json_body(req)? };
            if let Some(nonce) = &join.client_nonce {
                let ok = (16..=64).contains(&nonce.len())
                    && nonce.bytes().all(|b| b.is_ascii_hexdigit());
                if !ok {
                    return Err(err(
                        ErrorCode::InvalidRequest,
                        "`client_nonce` must be 16 to 64 hex characters",
                    ));
                }
            }
            bearer(req)
        }
        Route::QueueStatus { .. } => {
            no_body(req)?;
            device(req)?;
            long_poll(req.query)?;
            queue_ticket(req)
        }
        Route::QueueWaitingList { .. } | Route::QueueLeave { .. } => {
            no_body(req)?;
            device(req)?;
            bearer(req)?;
            queue_ticket(req)
        }
        Route::CreateHold { .. } => {
            let hold: HoldRequest = json_body(req)?;
            hold.validate().map_err(|e| {
                let code = match e {
                    tessera_api::inventory::HoldRequestError::Shape => ErrorCode::InvalidRequest,
                    tessera_api::inventory::HoldRequestError::Quantity { .. } => {
                        ErrorCode::InvalidQuantity
                    }
                    tessera_api::inventory::HoldRequestError::DuplicateSeat(_) => {
                        ErrorCode::DuplicateSeat
                    }
                };
                err(code, e.to_string())
            })?;
            bearer(req)?;
            device(req)?;
            match req.header(headers::ADMISSION) {
                Some(t) if !t.is_empty() && t.len() <= 2048 => Ok(()),
                _ => Err(err(
                    ErrorCode::AdmissionRequired,
                    format!("holds need an admission token in `{}`", headers::ADMISSION),
                )),
            }
        }
        Route::Checkout => {
            let _: CheckoutRequest = json_body(req)?;
            bearer(req)?;
            match req.header(headers::IDEMPOTENCY_KEY) {
                Some(k) if idempotency_key_ok(k) => Ok(()),
                Some(_) => Err(err(
                    ErrorCode::InvalidRequest,
                    "`idempotency-key` must be 1 to 128 visible ASCII characters",
                )),
                None => Err(err(
                    ErrorCode::IdempotencyKeyRequired,
                    "checkout needs an `idempotency-key` header",
                )),
            }
        }
        Route::Checkin => {
            let _: CheckinRequest = json_body(req)?;
            bearer(req)
        }
        Route::DevToken => {
            let _: DevTokenRequest = json_body(req)?;
            Ok(())
        }
        // The provider signs the exact bytes: they go on unparsed, only size-limited.
        Route::PaymentWebhook => {
            if req.body.is_empty() {
                Err(err(ErrorCode::InvalidRequest, "empty webhook"))
            } else {
                Ok(())
            }
        }
        Route::Ops { method } => {
            bearer(req)?;
            if method == "GET" || method == "DELETE" {
                return no_body(req);
            }
            if req.body.is_empty() {
                return Ok(());
            }
            // Operator bodies have many shapes; the ones the edge knows are typed, the rest
            // must at least be a JSON object. The core checks the exact schema.
            if req.path.ends_with("/admission") {
                let r: AdmissionRateRequest = json_body(req)?;
                if !(r.rate_per_s.is_finite() && r.rate_per_s >= 0.0) {
                    return Err(err(ErrorCode::InvalidRequest, "`rate_per_s` must be >= 0"));
                }
                return Ok(());
            }
            if req.path.ends_with("/drain") {
                let _: DrainRequest = json_body(req)?;
                return Ok(());
            }
            let v: serde_json::Value = json_body(req)?;
            if !v.is_object() {
                return Err(err(ErrorCode::InvalidRequest, "request body must be a JSON object"));
            }
            Ok(())
        }
    }
}

fn queue_ticket(req: &RequestView<'_>) -> Result<(), ApiErrorBody> {
    match req.header(headers::QUEUE_TICKET) {
        Some(t) if !t.is_empty() && t.len() <= 2048 => Ok(()),
        _ => Err(err(
            ErrorCode::QueueTicketInvalid,
            format!("send your queue ticket in `{}`", headers::QUEUE_TICKET),
        )),
    }
}

/// The longest a status request may be held open (`wait_s`).
pub const LONG_POLL_MAX_S: u64 = 30;

/// A queue status request held open until the fan's state differs from `known`, or for
/// `wait_s` seconds: `GET /v1/events/{id}/queue?wait_s=20&known=waiting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LongPoll {
    pub wait_s: u64,
    pub known: Option<QueueStatusState>,
}

/// Parses the query of a queue status request (`wait_s`, `known`; nothing else).
pub fn long_poll(query: Option<&str>) -> Result<LongPoll, ApiErrorBody> {
    let mut out = LongPoll::default();
    let mut seen = (false, false);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "wait_s" if !seen.0 => {
                seen.0 = true;
                out.wait_s = value
                    .parse::<u64>()
                    .ok()
                    .filter(|w| *w <= LONG_POLL_MAX_S && !value.starts_with('+'))
                    .ok_or_else(|| {
                        err(
                            ErrorCode::InvalidRequest,
                            format!(
                                "`wait_s` must be a whole number of seconds, 0 to {LONG_POLL_MAX_S}"
                            ),
                        )
                    })?;
            }
            "known" if !seen.1 => {
                seen.1 = true;
                let state = serde_json::from_value::<QueueStatusState>(serde_json::Value::String(
                    value.to_owned(),
                ))
                .map_err(|_| {
                    err(
                        ErrorCode::InvalidRequest,
                        "`known` must be a queue state such as `waiting`",
                    )
                })?;
                out.known = Some(state);
            }
            _ => {
                return Err(err(
                    ErrorCode::InvalidRequest,
                    "a queue status takes only `wait_s` and `known` (each once)",
                ));
            }
        }
    }
    Ok(out)
}

fn idempotency_key_ok(k: &str) -> bool {
    !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_MAX_BYTES && k.bytes().all(|b| b.is_ascii_graphic())
}

fn no_body(req: &RequestView<'_>) -> Result<(), ApiErrorBody> {
    if req.body.is_empty() {
        Ok(())
    } else {
        Err(err(ErrorCode::InvalidRequest, "this route takes no request body"))
    }
}

fn device(req: &RequestView<'_>) -> Result<(), ApiErrorBody> {
    match req.header(headers::DEVICE) {
        Some(d)
            if !d.is_empty()
                && d.len() <= DEVICE_MAX_BYTES
                && d.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(())
        }
        _ => Err(err(
            ErrorCode::InvalidRequest,
            format!(
                "send a device id (1 to 128 visible ASCII characters) in `{}`",
                headers::DEVICE
            ),
        )),
    }
}

fn bearer(req: &RequestView<'_>) -> Result<(), ApiErrorBody> {
    match req.header(headers::AUTHORIZATION).and_then(tessera_identity::bearer) {
        Some(_) => Ok(()),
        None => Err(err(
            ErrorCode::Unauthenticated,
            "send your identity token as `authorization: Bearer <token>`",
        )),
    }
}

fn json_body<T: DeserializeOwned>(req: &RequestView<'_>) -> Result<T, ApiErrorBody> {
    let ct = req.header("content-type").unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(err(
            ErrorCode::UnsupportedMediaType,
            "expected a request with `content-type: application/json`",
        ));
    }
    serde_json::from_slice(req.body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                err(ErrorCode::MalformedJson, format!("malformed JSON: {e}"))
            }
            Category::Data => err(ErrorCode::InvalidRequest, format!("invalid request body: {e}")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    fn check(method: &str, path: &str, hdrs: &[(&str, &str)], body: &str, expect: Expect) {
        let headers: Vec<(&str, &[u8])> = hdrs.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let req = RequestView { method, path, query, headers: &headers, body: body.as_bytes() };
        let got = match validate(&req, &Limits::default()) {
            Ok(r) => format!("ok {}", r.name()),
            Err(e) => format!("{} {}", e.status(), e.to_json()),
        };
        expect.assert_eq(&got);
    }

    const JSON: (&str, &str) = ("content-type", "application/json");
    const AUTH: (&str, &str) = ("authorization", "Bearer abc.def.ghi");
    const DEV: (&str, &str) = ("x-tessera-device", "dev-1");

    #[test]
    fn accepts_well_formed_requests() {
        check("GET", "/v1/events?limit=3", &[], "", expect!["ok list_events"]);
        check("POST", "/v1/events/e1/queue", &[AUTH, DEV], "", expect!["ok queue_join"]);
        check(
            "POST",
            "/v1/events/e1/queue",
            &[AUTH, DEV, JSON],
            r#"{"client_nonce":"00112233445566778899aabbccddeeff"}"#,
            expect!["ok queue_join"],
        );
        check(
            "POST",
            "/v1/events/e1/holds",
            &[AUTH, DEV, JSON, ("x-tessera-admission", "a.b.c")],
            r#"{"seats":["A-1-1"]}"#,
            expect!["ok create_hold"],
        );
        check(
            "POST",
            "/v1/orders",
            &[AUTH, JSON, ("idempotency-key", "k-1")],
            r#"{"hold_id":"h_abcdefgh12","payment_method":"pm_card_visa"}"#,
            expect!["ok checkout"],
        );
    }

    #[test]
    fn rejects_malformed_requests_with_stable_codes() {
        check(
            "GET",
            "/v1/events",
            &[],
            "x",
            expect![[
                r#"400 {"code":"invalid_request","message":"this route takes no request body"}"#
            ]],
        );
        check(
            "POST",
            "/v1/events/e1/holds",
            &[AUTH, DEV, ("x-tessera-admission", "a.b.c")],
            r#"{"seats":["A-1-1"]}"#,
            expect![[
                r#"415 {"code":"unsupported_media_type","message":"expected a request with `content-type: application/json`"}"#
            ]],
        );
        check(
            "POST",
            "/v1/events/e1/holds",
            &[AUTH, DEV, JSON, ("x-tessera-admission", "a.b.c")],
            r#"{"seats":["A-1-1"],"x":1}"#,
            expect![[
                r#"400 {"code":"invalid_request","message":"invalid request body: unknown field `x`, expected one of `seats`, `section`, `tier`, `pool`, `quantity`, `adjacent`, `accessible` at line 1 column 22"}"#
            ]],
        );
        check(
            "POST",
            "/v1/events/e1/holds",
            &[AUTH, DEV, JSON, ("x-tessera-admission", "a.b.c")],
            r#"{"seats":["#,
            expect![[
                r#"400 {"code":"malformed_json","message":"malformed JSON: EOF while parsing a list at line 1 column 10"}"#
            ]],
        );
        check(
            "POST",
            "/v1/events/e1/holds",
            &[AUTH, DEV, JSON, ("x-tessera-admission", "a.b.c")],
            r#"{"pool":"FLOOR","quantity":99}"#,
            expect![[
                r#"422 {"code":"invalid_quantity","message":"`quantity` must be between 1 and 20"}"#
            ]],
        );
        check(
            "POST",
            "/v1/events/e1/holds",
            &[AUTH, DEV, JSON],
            r#"{"seats":["A-1-1"]}"#,
            expect![[
                r#"403 {"code":"admission_required","message":"holds need an admission token in `x-tessera-admission`"}"#
            ]],
        );
        check(
            "POST",
            "/v1/orders",
            &[AUTH, JSON],
            r#"{"hold_id":"h_abcdefgh12","payment_method":"pm_card_visa"}"#,
            expect![[
                r#"400 {"code":"idempotency_key_required","message":"checkout needs an `idempotency-key` header"}"#
            ]],
        );
        check(
            "POST",
            "/v1/events/e1/queue",
            &[DEV],
            "",
            expect![[
                r#"401 {"code":"unauthenticated","message":"send your identity token as `authorization: Bearer <token>`"}"#
            ]],
        );
        check(
            "GET",
            "/v1/events/e1/queue",
            &[DEV],
            "",
            expect![[
                r#"403 {"code":"queue_ticket_invalid","message":"send your queue ticket in `x-tessera-queue-ticket`"}"#
            ]],
        );
        let big = format!(r#"{{"customer_id":"{}"}}"#, "a".repeat(20_000));
        check(
            "POST",
            "/v1/dev/token",
            &[JSON],
            &big,
            expect![[r#"413 {"code":"body_too_large","message":"request body is too large"}"#]],
        );
    }

    #[test]
    fn queue_requests_carry_a_ticket_and_at_most_a_long_poll() {
        const QT: (&str, &str) = ("x-tessera-queue-ticket", "a.b.c");
        check(
            "GET",
            "/v1/events/e1/queue?wait_s=20&known=waiting",
            &[DEV, QT],
            "",
            expect!["ok queue_status"],
        );
        check("GET", "/v1/events/e1/queue", &[DEV, QT], "", expect!["ok queue_status"]);
        check(
            "POST",
            "/v1/events/e1/queue/waiting-list",
            &[AUTH, DEV, QT],
            "",
            expect!["ok queue_waiting_list"],
        );
        check("DELETE", "/v1/events/e1/queue", &[AUTH, DEV, QT], "", expect!["ok queue_leave"]);
        check(
            "GET",
            "/v1/events/e1/queue?wait_s=99",
            &[DEV, QT],
            "",
            expect![[
                r#"400 {"code":"invalid_request","message":"`wait_s` must be a whole number of seconds, 0 to 30"}"#
            ]],
        );
        check(
            "GET",
            "/v1/events/e1/queue?wait_s=-1",
            &[DEV, QT],
            "",
            expect![[
                r#"400 {"code":"invalid_request","message":"`wait_s` must be a whole number of seconds, 0 to 30"}"#
            ]],
        );
        check(
            "GET",
            "/v1/events/e1/queue?known=bogus",
            &[DEV, QT],
            "",
            expect![[
                r#"400 {"code":"invalid_request","message":"`known` must be a queue state such as `waiting`"}"#
            ]],
        );
        check(
            "GET",
            "/v1/events/e1/queue?wait_s=1&wait_s=2",
            &[DEV, QT],
            "",
            expect![[
                r#"400 {"code":"invalid_request","message":"a queue status takes only `wait_s` and `known` (each once)"}"#
            ]],
        );
        check(
            "GET",
            "/v1/events/e1/queue?limit=3",
            &[DEV, QT],
            "",
            expect![[
                r#"400 {"code":"invalid_request","message":"a queue status takes only `wait_s` and `known` (each once)"}"#
            ]],
        );
        check(
            "POST",
            "/v1/events/e1/queue/waiting-list",
            &[AUTH, DEV],
            "",
            expect![[
                r#"403 {"code":"queue_ticket_invalid","message":"send your queue ticket in `x-tessera-queue-ticket`"}"#
            ]],
        );
        check(
            "DELETE",
            "/v1/events/e1/queue",
            &[DEV, QT],
            "",
            expect![[
                r#"401 {"code":"unauthenticated","message":"send your identity token as `authorization: Bearer <token>`"}"#
            ]],
        );
        check(
            "GET",
            "/v1/events/e1/queue/waiting-list",
            &[DEV, QT],
            "",
            expect![[r#"405 {"code":"method_not_allowed","message":"this route accepts POST"}"#]],
        );
        assert_eq!(
            long_poll(Some("known=sold_out&wait_s=0")),
            Ok(LongPoll { wait_s: 0, known: Some(QueueStatusState::SoldOut) })
        );
    }
}
