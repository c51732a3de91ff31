//! The fan-facing route table of the edge. Anything not listed here is answered with
//! `404 not_found` before it reaches a region.

use tessera_api::{ApiErrorBody, ErrorCode, EventId, HoldId, OrderId, SectionId, TicketId};

/// A recognised fan route with its typed path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    ListEvents,
    GetEvent {
        event_id: EventId,
    },
    Availability {
        event_id: EventId,
    },
    SectionSeats {
        event_id: EventId,
        section_id: SectionId,
    },
    QueueJoin {
        event_id: EventId,
    },
    QueueStatus {
        event_id: EventId,
    },
    /// `POST /v1/events/{id}/queue/waiting-list`: stay for returns after "sold out".
    QueueWaitingList {
        event_id: EventId,
    },
    /// `DELETE /v1/events/{id}/queue`: give the place up.
    QueueLeave {
        event_id: EventId,
    },
    Admission {
        event_id: EventId,
    },
    CreateHold {
        event_id: EventId,
    },
    GetHold {
        hold_id: HoldId,
    },
    ReleaseHold {
        hold_id: HoldId,
    },
    Checkout,
    ListOrders,
    GetOrder {
        order_id: OrderId,
    },
    /// `GET /v1/orders/{order_id}/tickets/{ticket_id}/qr.svg`: a ticket's QR code.
    TicketQr {
        order_id: OrderId,
        ticket_id: TicketId,
    },
    Checkin,
    /// `POST /v1/dev/token`: the development issuer; the edge serves it only in local mode.
    DevToken,
    /// `POST /v1/webhooks/payments`: the payment provider's signed events, passed to the
    /// router byte for byte (the core checks the signature), without bot scoring.
    PaymentWebhook,
    EventStream {
        event_id: EventId,
    },
    /// `/v1/ops/...`: shape-checked here, authorized by the router and the core.
    Ops {
        method: String,
    },
}

/// Which component serves a route after bot scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Catalog reads served from the edge's key-value store.
    Catalog,
    /// Queue joins, status polls and admission-gated holds.
    WaitingRoom,
    /// Everything else goes straight to the region router.
    Router,
}

impl Route {
    /// A short stable name, used in metrics labels and logs (never carries ids).
    pub fn name(&self) -> &'static str {
        match self {
            Route::ListEvents => "list_events",
            Route::GetEvent { .. } => "get_event",
            Route::Availability { .. } => "availability",
            Route::SectionSeats { .. } => "section_seats",
            Route::QueueJoin { .. } => "queue_join",
            Route::QueueStatus { .. } => "queue_status",
            Route::QueueWaitingList { .. } => "queue_waiting_list",
            Route::QueueLeave { .. } => "queue_leave",
            Route::Admission { .. } => "admission",
            Route::CreateHold { .. } => "create_hold",
            Route::GetHold { .. } => "get_hold",
            Route::ReleaseHold { .. } => "release_hold",
            Route::Checkout => "checkout",
            Route::ListOrders => "list_orders",
            Route::GetOrder { .. } => "get_order",
            Route::TicketQr { .. } => "ticket_qr",
            Route::Checkin => "checkin",
            Route::DevToken => "dev_token",
            Route::PaymentWebhook => "payment_webhook",
            Route::EventStream { .. } => "event_stream",
            Route::Ops { .. } => "ops",
        }
    }

    pub fn stage(&self) -> Stage {
        match self {
            Route::ListEvents
            | Route::GetEvent { .. }
            | Route::Availability { .. }
            | Route::SectionSeats { .. } => Stage::Catalog,
            Route::QueueJoin { .. }
            | Route::QueueStatus { .. }
            | Route::QueueWaitingList { .. }
            | Route::QueueLeave { .. }
            | Route::CreateHold { .. } => Stage::WaitingRoom,
            _ => Stage::Router,
        }
    }

    /// The event a route is about, if any (for per-event bot thresholds).
    pub fn event_id(&self) -> Option<&EventId> {
        match self {
            Route::GetEvent { event_id }
            | Route::Availability { event_id }
            | Route::SectionSeats { event_id, .. }
            | Route::QueueJoin { event_id }
            | Route::QueueStatus { event_id }
            | Route::QueueWaitingList { event_id }
            | Route::QueueLeave { event_id }
            | Route::Admission { event_id }
            | Route::CreateHold { event_id }
            | Route::EventStream { event_id } => Some(event_id),
            _ => None,
        }
    }
}

fn not_found() -> ApiErrorBody {
    ApiErrorBody::new(ErrorCode::NotFound, "no such route")
}

fn method_not_allowed(allowed: &str) -> ApiErrorBody {
    ApiErrorBody::new(ErrorCode::MethodNotAllowed, format!("this route accepts {allowed}"))
}

fn id<T>(parsed: Result<T, tessera_api::InvalidId>) -> Result<T, ApiErrorBody> {
    // A path whose id has the wrong shape names nothing that can exist.
    parsed.map_err(|e| ApiErrorBody::new(ErrorCode::NotFound, format!("no such route: {e}")))
}

/// Maps a method and a path (without the query) to a route.
pub fn classify(method: &str, path: &str) -> Result<Route, ApiErrorBody> {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Err(not_found());
    };
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(not_found());
    }
    let m = method;
    let only = |want: &'static str, route: Route| -> Result<Route, ApiErrorBody> {
        if m == want { Ok(route) } else { Err(method_not_allowed(want)) }
    };
    match segs.as_slice() {
        ["events"] => only("GET", Route::ListEvents),
        ["events", ev] => only("GET", Route::GetEvent { event_id: id(EventId::parse(ev))? }),
        ["events", ev, "availability"] => {
            only("GET", Route::Availability { event_id: id(EventId::parse(ev))? })
        }
        ["events", ev, "sections", sec, "seats"] => only(
            "GET",
            Route::SectionSeats {
                event_id: id(EventId::parse(ev))?,
                section_id: id(SectionId::parse(sec))?,
            },
        ),
        ["events", ev, "queue"] => {
            let event_id = id(EventId::parse(ev))?;
            match m {
                "POST" => Ok(Route::QueueJoin { event_id }),
                "GET" => Ok(Route::QueueStatus { event_id }),
                "DELETE" => Ok(Route::QueueLeave { event_id }),
                _ => Err(method_not_allowed("GET, POST, DELETE")),
            }
        }
        ["events", ev, "queue", "waiting-list"] => {
            only("POST", Route::QueueWaitingList { event_id: id(EventId::parse(ev))? })
        }
        ["events", ev, "admission"] => {
            only("GET", Route::Admission { event_id: id(EventId::parse(ev))? })
        }
        ["events", ev, "holds"] => {
            only("POST", Route::CreateHold { event_id: id(EventId::parse(ev))? })
        }
        ["events", ev, "stream"] => {
            only("GET", Route::EventStream { event_id: id(EventId::parse(ev))? })
        }
        ["holds", h] => {
            let hold_id = id(HoldId::parse(h))?;
            match m {
                "GET" => Ok(Route::GetHold { hold_id }),
                "DELETE" => Ok(Route::ReleaseHold { hold_id }),
                _ => Err(method_not_allowed("GET, DELETE")),
            }
        }
        ["orders"] => match m {
            "POST" => Ok(Route::Checkout),
            "GET" => Ok(Route::ListOrders),
            _ => Err(method_not_allowed("GET, POST")),
        },
        ["orders", o] => only("GET", Route::GetOrder { order_id: id(OrderId::parse(o))? }),
        ["orders", o, "tickets", t, "qr.svg"] => only(
            "GET",
            Route::TicketQr {
                order_id: id(OrderId::parse(o))?,
                ticket_id: id(TicketId::parse(t))?,
            },
        ),
        ["checkin"] => only("POST", Route::Checkin),
        ["dev", "token"] => only("POST", Route::DevToken),
        ["webhooks", "payments"] => only("POST", Route::PaymentWebhook),
        ["ops", more @ ..] if !more.is_empty() && more.len() <= 8 => {
            let ok = more.iter().all(|s| {
                s.len() <= 128
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:@+".contains(&b))
            });
            if !ok {
                return Err(not_found());
            }
            match m {
                "GET" | "POST" | "PUT" | "DELETE" => Ok(Route::Ops { method: m.to_owned() }),
                _ => Err(method_not_allowed("GET, POST, PUT, DELETE")),
            }
        }
        _ => Err(not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    fn check(method: &str, path: &str, expect: Expect) {
        let got = match classify(method, path) {
            Ok(r) => format!("{} {:?}", r.name(), r.stage()),
            Err(e) => e.to_json(),
        };
        expect.assert_eq(&got);
    }

    #[test]
    fn classifies_every_fan_route() {
        check("GET", "/v1/events", expect!["list_events Catalog"]);
        check("GET", "/v1/events/summer-26", expect!["get_event Catalog"]);
        check("GET", "/v1/events/summer-26/sections/A/seats", expect!["section_seats Catalog"]);
        check("POST", "/v1/events/summer-26/queue", expect!["queue_join WaitingRoom"]);
        check("GET", "/v1/events/summer-26/queue", expect!["queue_status WaitingRoom"]);
        check("DELETE", "/v1/events/summer-26/queue", expect!["queue_leave WaitingRoom"]);
        check(
            "POST",
            "/v1/events/summer-26/queue/waiting-list",
            expect!["queue_waiting_list WaitingRoom"],
        );
        check("POST", "/v1/events/summer-26/holds", expect!["create_hold WaitingRoom"]);
        check("DELETE", "/v1/holds/h_abcdefgh1", expect!["release_hold Router"]);
        check("POST", "/v1/orders", expect!["checkout Router"]);
        check(
            "GET",
            "/v1/orders/o_abcdefgh1/tickets/t_abcdefgh1/qr.svg",
            expect!["ticket_qr Router"],
        );
        check("PUT", "/v1/ops/events/summer-26/admission", expect!["ops Router"]);
        check("POST", "/v1/webhooks/payments", expect!["payment_webhook Router"]);
    }

    #[test]
    fn rejects_unknown_paths_and_methods_with_codes() {
        check("GET", "/", expect![[r#"{"code":"not_found","message":"no such route"}"#]]);
        check(
            "GET",
            "/v1/events//x",
            expect![[r#"{"code":"not_found","message":"no such route"}"#]],
        );
        check(
            "GET",
            "/v1/events/Bad_Id",
            expect![[
                r#"{"code":"not_found","message":"no such route: invalid event id: must start with a lowercase letter or digit"}"#
            ]],
        );
        check(
            "PATCH",
            "/v1/events/summer-26/queue",
            expect![[
                r#"{"code":"method_not_allowed","message":"this route accepts GET, POST, DELETE"}"#
            ]],
        );
        check(
            "GET",
            "/v1/holds/x_1",
            expect![[
                r#"{"code":"not_found","message":"no such route: invalid hold id: has the wrong prefix"}"#
            ]],
        );
    }
}
