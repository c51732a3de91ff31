//! Hosted card fields, as a real provider's client-side SDK offers them (Stripe Elements):
//! the merchant's page embeds `GET /hosted/card` in an iframe, so card numbers are typed
//! into the provider's origin and never reach the merchant's page or servers. The frame
//! turns the card into a payment method (`POST /v1/payment_methods` with the publishable
//! key) and hands only its id to the page with `postMessage`.
//!
//! Test cards follow Stripe's table: `4242 4242 4242 4242` approves as `pm_card_visa`,
//! `4000 0000 0000 0002` declines as `pm_card_chargeDeclined`, and so on (see [`TEST_CARDS`]).
//! The simulator's own fault cards are listed there too. Numbers that fail the Luhn check,
//! past expiry dates and malformed CVCs are refused here, as the provider refuses them,
//! before any payment is attempted. The payment method id is the test method's name, so a
//! restart of the simulator forgets nothing.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::json;

use super::Simulator;

/// Card number -> (payment method, brand).
pub(crate) const TEST_CARDS: &[(&str, &str, &str)] = &[
    ("4242424242424242", "pm_card_visa", "visa"),
    ("4000056655665556", "pm_card_visa_debit", "visa"),
    ("5555555555554444", "pm_card_mastercard", "mastercard"),
    ("5200828282828210", "pm_card_mastercard_debit", "mastercard"),
    ("378282246310005", "pm_card_amex", "amex"),
    ("6011111111111117", "pm_card_discover", "discover"),
    ("3566002020360505", "pm_card_jcb", "jcb"),
    ("6200000000000005", "pm_card_unionpay", "unionpay"),
    ("4000000000000002", "pm_card_chargeDeclined", "visa"),
    ("4000000000009995", "pm_card_chargeDeclinedInsufficientFunds", "visa"),
    ("4000000000009987", "pm_card_chargeDeclinedLostCard", "visa"),
    ("4000000000009979", "pm_card_chargeDeclinedStolenCard", "visa"),
    ("4100000000000019", "pm_card_chargeDeclinedFraudulent", "visa"),
    ("4000000000000069", "pm_card_chargeDeclinedExpiredCard", "visa"),
    ("4000000000000127", "pm_card_chargeDeclinedIncorrectCvc", "visa"),
    ("4000000000000119", "pm_card_chargeDeclinedProcessingError", "visa"),
    // The simulator's own: approved but answered late, with a 500, or cut off.
    ("4000000000007726", "pm_card_tessera_timeout", "visa"),
    ("4000000000005126", "pm_card_tessera_unknown", "visa"),
    ("4000000000003238", "pm_card_tessera_reset", "visa"),
];

pub(crate) fn routes(sim: Simulator) -> Router {
    Router::new()
        .route("/hosted/card", get(card_page))
        .route("/hosted/card.js", get(card_script))
        .route("/v1/payment_methods", post(create_payment_method))
        .with_state(sim)
}

fn luhn_ok(digits: &str) -> bool {
    let mut sum = 0;
    for (i, c) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(c - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}

fn card_error(status: u16, code: &str, message: &str, param: &str) -> Response {
    let body =
        json!({"error": {"type": "card_error", "code": code, "message": message, "param": param}});
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::PAYMENT_REQUIRED);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `POST /v1/payment_methods` (form: `type=card`, `card[number]`, `card[exp_month]`,
/// `card[exp_year]`, `card[cvc]`), authorized with the publishable key.
async fn create_payment_method(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let configured = sim.inner.config.publishable_key.as_str();
    // No publishable key configured: hosted card fields are off.
    if configured.is_empty() || key != Some(configured) {
        let body = json!({"error": {"type": "invalid_request_error", "code": "api_key_invalid", "message": "Invalid API Key provided."}});
        let mut r = Response::new(Body::from(body.to_string()));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return r;
    }
    let Ok(pairs) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        return card_error(400, "parameter_invalid_string", "Invalid request body", "card");
    };
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.trim().to_owned());
    let number: String =
        get("card[number]").unwrap_or_default().chars().filter(|c| !c.is_whitespace()).collect();
    if number.len() < 12
        || number.len() > 19
        || !number.bytes().all(|b| b.is_ascii_digit())
        || !luhn_ok(&number)
    {
        return card_error(402, "incorrect_number", "Your card number is incorrect.", "number");
    }
    let month: u32 = get("card[exp_month]").and_then(|m| m.parse().ok()).unwrap_or(0);
    let mut year: u32 = get("card[exp_year]").and_then(|y| y.parse().ok()).unwrap_or(0);
    if year < 100 {
        year += 2000;
    }
    let now_s = sim.inner.clock.now_ms() / 1000;
    let (this_year, this_month) = year_month(now_s);
    if !(1..=12).contains(&month) {
        return card_error(
            402,
            "invalid_expiry_month",
            "Your card's expiration month is invalid.",
            "exp_month",
        );
    }
    if year < this_year || (year == this_year && month < this_month) || year > this_year + 50 {
        return card_error(
            402,
            "invalid_expiry_year",
            "Your card's expiration year is invalid.",
            "exp_year",
        );
    }
    let cvc = get("card[cvc]").unwrap_or_default();
    let cvc_len = if number.starts_with("34") || number.starts_with("37") { 4 } else { 3 };
    if cvc.len() != cvc_len || !cvc.bytes().all(|b| b.is_ascii_digit()) {
        return card_error(402, "invalid_cvc", "Your card's security code is invalid.", "cvc");
    }
    let Some((_, pm, brand)) = TEST_CARDS.iter().find(|(n, _, _)| *n == number) else {
        return card_error(
            402,
            "card_declined",
            "Your card was declined. Your request was in test mode, but used a non test card.",
            "number",
        );
    };
    metrics::counter!("tessera_paysim_payment_methods_total").increment(1);
    let body = json!({
        "id": pm,
        "object": "payment_method",
        "type": "card",
        "card": {"brand": brand, "last4": &number[number.len() - 4..], "exp_month": month, "exp_year": year},
        "created": now_s,
        "livemode": false,
    });
    let mut r = Response::new(Body::from(body.to_string()));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// (year, month) of a Unix time, UTC.
fn year_month(secs: u64) -> (u32, u32) {
    let days = (secs / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as u32, month as u32)
}

const PAGE: &str = include_str!("hosted/card.html");
const SCRIPT: &str = include_str!("hosted/card.js");

/// The card fields' frame. It may be framed by any merchant page (as a provider's are);
/// it answers only the page that embeds it, at the origin the page named.
async fn card_page() -> Response {
    let mut r = Response::new(Body::from(PAGE));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors *; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

async fn card_script() -> Response {
    let mut r = Response::new(Body::from(SCRIPT));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cards_pass_luhn_and_name_known_methods() {
        for (number, pm, _) in TEST_CARDS {
            assert!(luhn_ok(number), "{number}");
            assert!(super::super::card_behaviour(pm).is_some(), "{pm}");
        }
        assert!(!luhn_ok("4242424242424241"));
    }

    #[test]
    fn year_month_of_known_dates() {
        assert_eq!(year_month(0), (1970, 1));
        assert_eq!(year_month(1_798_761_600), (2027, 1)); // 2027-01-01
        assert_eq!(year_month(1_796_169_599), (2026, 12)); // 2026-12-01 23:59:59
        assert_eq!(year_month(1_796_083_199), (2026, 11)); // 2026-11-30 23:59:59
    }
}
