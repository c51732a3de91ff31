//! The simulator's deterministic core: PaymentIntents, charges and refunds, their state
//! machine, and how they look on the wire. No clock, randomness or I/O: the caller passes
//! the time, the new object's sequence number and the card network's answer.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use tessera_payments::PaymentStatus;

/// The card network's answer to an authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CardAnswer {
    Approve,
    /// The issuer asks for 3-D Secure: the intent waits in `requires_action` for the
    /// cardholder, who never comes back in a test (nothing is charged).
    Authenticate,
    Decline {
        code: &'static str,
        decline_code: Option<&'static str>,
        message: &'static str,
    },
}

/// A charge: the attempt to move money behind a PaymentIntent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Charge {
    pub(crate) id: String,
    pub(crate) amount: u64,
    pub(crate) amount_captured: u64,
    pub(crate) amount_refunded: u64,
    pub(crate) captured: bool,
    /// `succeeded` or `failed`.
    pub(crate) status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LastError {
    pub(crate) code: String,
    pub(crate) decline_code: Option<String>,
    pub(crate) message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Intent {
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) client_secret: String,
    pub(crate) amount: u64,
    pub(crate) currency: String,
    pub(crate) status: PaymentStatus,
    pub(crate) capture_method: String,
    pub(crate) payment_method: Option<String>,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) description: Option<String>,
    pub(crate) created: u64,
    pub(crate) amount_capturable: u64,
    pub(crate) amount_received: u64,
    /// Every charge attempt, oldest first; the last one is `latest_charge`.
    pub(crate) charges: Vec<Charge>,
    pub(crate) last_payment_error: Option<LastError>,
    pub(crate) canceled_at: Option<u64>,
    pub(crate) cancellation_reason: Option<String>,
}

impl Intent {
    pub(crate) fn latest_charge(&self) -> Option<&Charge> {
        self.charges.last()
    }
    fn captured_charge_mut(&mut self) -> Option<&mut Charge> {
        self.charges.iter_mut().rev().find(|c| c.status == "succeeded")
    }
    pub(crate) fn amount_captured(&self) -> u64 {
        self.charges.iter().map(|c| c.amount_captured).sum()
    }
    pub(crate) fn amount_refunded(&self) -> u64 {
        self.charges.iter().map(|c| c.amount_refunded).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RefundRec {
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) amount: u64,
    pub(crate) currency: String,
    pub(crate) charge: String,
    pub(crate) payment_intent: String,
    pub(crate) reason: Option<String>,
    pub(crate) created: u64,
}

/// An event for the webhook endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct EventRec {
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) kind: String,
    pub(crate) created: u64,
    pub(crate) object: Value,
    pub(crate) idempotency_key: Option<String>,
}

/// A Stripe-shaped API error.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WireErr {
    pub(crate) status: u16,
    pub(crate) kind: &'static str,
    pub(crate) code: Option<&'static str>,
    pub(crate) decline_code: Option<String>,
    pub(crate) message: String,
    pub(crate) param: Option<String>,
    pub(crate) payment_intent: Option<Box<Value>>,
}

impl WireErr {
    pub(crate) fn invalid(
        code: &'static str,
        message: impl Into<String>,
        param: Option<&str>,
    ) -> Self {
        WireErr {
            status: 400,
            kind: "invalid_request_error",
            code: Some(code),
            decline_code: None,
            message: message.into(),
            param: param.map(str::to_owned),
            payment_intent: None,
        }
    }
    pub(crate) fn missing(what: &str, id: &str, param: Option<&str>) -> Self {
        let mut e = WireErr::invalid("resource_missing", format!("No such {what}: '{id}'"), param);
        if param.is_none() {
            e.status = 404;
        }
        e
    }
    pub(crate) fn to_json(&self) -> Value {
        let mut err = json!({"type": self.kind, "message": self.message});
        if let Some(c) = self.code {
            err["code"] = json!(c);
        }
        if let Some(d) = &self.decline_code {
            err["decline_code"] = json!(d);
        }
        if let Some(p) = &self.param {
            err["param"] = json!(p);
        }
        if let Some(pi) = &self.payment_intent {
            err["payment_intent"] = (**pi).clone();
        }
        json!({ "error": err })
    }
}

/// What an operation did: the response, and what must be journaled and announced.
#[derive(Debug)]
pub(crate) struct Applied {
    pub(crate) status: u16,
    pub(crate) body: Value,
    pub(crate) intents: Vec<Intent>,
    pub(crate) refunds: Vec<RefundRec>,
    /// `(type, object)` pairs to turn into events.
    pub(crate) events: Vec<(&'static str, Value)>,
}

impl Applied {
    fn error(e: WireErr) -> Self {
        Applied {
            status: e.status,
            body: e.to_json(),
            intents: vec![],
            refunds: vec![],
            events: vec![],
        }
    }
}

/// The form parameters of a request, as Stripe reads them.
#[derive(Debug, Default)]
pub(crate) struct Params {
    pub(crate) scalars: BTreeMap<String, String>,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) lists: BTreeMap<String, Vec<String>>,
}

impl Params {
    pub(crate) fn parse(pairs: Vec<(String, String)>) -> Result<Self, WireErr> {
        let mut p = Params::default();
        for (k, v) in pairs {
            if let Some(inner) = k.strip_prefix("metadata[").and_then(|r| r.strip_suffix(']')) {
                if inner.is_empty() || inner.len() > 40 || v.len() > 500 {
                    return Err(WireErr::invalid(
                        "parameter_invalid_string",
                        "invalid metadata",
                        Some(&k),
                    ));
                }
                p.metadata.insert(inner.to_owned(), v);
            } else if let Some(name) = k.strip_suffix("[]") {
                p.lists.entry(name.to_owned()).or_default().push(v);
            } else {
                p.scalars.insert(k, v);
            }
        }
        Ok(p)
    }

    /// Refuses parameters the endpoint does not take, as Stripe does.
    pub(crate) fn only(
        &self,
        scalars: &[&str],
        lists: &[&str],
        metadata: bool,
    ) -> Result<(), WireErr> {
        for k in self.scalars.keys() {
            if !scalars.contains(&k.as_str()) {
                return Err(unknown_param(k));
            }
        }
        for k in self.lists.keys() {
            if !lists.contains(&k.as_str()) {
                return Err(unknown_param(&format!("{k}[]")));
            }
        }
        if !metadata && !self.metadata.is_empty() {
            return Err(unknown_param("metadata"));
        }
        Ok(())
    }

    fn amount(&self, name: &str) -> Result<Option<u64>, WireErr> {
        match self.scalars.get(name) {
            None => Ok(None),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (1..=99_999_999).contains(&n) => Ok(Some(n)),
                _ => Err(WireErr::invalid(
                    "parameter_invalid_integer",
                    format!("Invalid positive integer: {name}"),
                    Some(name),
                )),
            },
        }
    }

    fn flag(&self, name: &str) -> Result<bool, WireErr> {
        match self.scalars.get(name).map(String::as_str) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(WireErr::invalid(
                "parameter_invalid_boolean",
                format!("Invalid boolean: {name}"),
                Some(name),
            )),
        }
    }

    /// Whether `expand[]` asks for `path`.
    pub(crate) fn expands(&self, path: &str) -> bool {
        self.lists.get("expand").is_some_and(|l| l.iter().any(|e| e == path))
    }
}

fn unknown_param(name: &str) -> WireErr {
    WireErr::invalid("parameter_unknown", format!("Received unknown parameter: {name}"), Some(name))
}

/// All objects, as replayed from the journal.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) intents: BTreeMap<String, Intent>,
    pub(crate) refunds: BTreeMap<String, RefundRec>,
    /// Order id → intent ids, for search.
    by_order: HashMap<String, Vec<String>>,
    pub(crate) next_seq: u64,
}

pub(crate) fn object_id(prefix: &str, seq: u64, salt: u64) -> String {
    format!("{prefix}_{seq:08}{salt:016x}")
}

impl Ledger {
    pub(crate) fn put_intent(&mut self, intent: Intent) {
        self.next_seq = self.next_seq.max(intent.seq + 1);
        if !self.intents.contains_key(&intent.id)
            && let Some(order) = intent.metadata.get("order_id")
        {
            self.by_order.entry(order.clone()).or_default().push(intent.id.clone());
        }
        self.intents.insert(intent.id.clone(), intent);
    }

    pub(crate) fn put_refund(&mut self, refund: RefundRec) {
        self.next_seq = self.next_seq.max(refund.seq + 1);
        self.refunds.insert(refund.id.clone(), refund);
    }

    pub(crate) fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// `POST /v1/payment_intents`. `payment_method` behaviour is validated by the caller
    /// (which knows the test cards); `answer` is used only when `confirm=true`.
    pub(crate) fn create(
        &mut self,
        p: &Params,
        now_s: u64,
        salt: u64,
        answer: &CardAnswer,
    ) -> Applied {
        let r = (|| {
            p.only(
                &[
                    "amount",
                    "currency",
                    "payment_method",
                    "confirm",
                    "capture_method",
                    "description",
                    "customer",
                ],
                &["payment_method_types", "expand"],
                true,
            )?;
            let amount = p.amount("amount")?.ok_or_else(|| {
                WireErr::invalid(
                    "parameter_missing",
                    "Missing required param: amount.",
                    Some("amount"),
                )
            })?;
            let currency = p.scalars.get("currency").ok_or_else(|| {
                WireErr::invalid(
                    "parameter_missing",
                    "Missing required param: currency.",
                    Some("currency"),
                )
            })?;
            if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
                return Err(WireErr::invalid(
                    "parameter_invalid_string",
                    "Invalid currency",
                    Some("currency"),
                ));
            }
            let capture_method =
                p.scalars.get("capture_method").map(String::as_str).unwrap_or("automatic");
            if !matches!(capture_method, "automatic" | "automatic_async" | "manual") {
                return Err(WireErr::invalid(
                    "parameter_invalid_string",
                    "Invalid capture_method",
                    Some("capture_method"),
                ));
            }
            if let Some(types) = p.lists.get("payment_method_types")
                && types.iter().any(|t| t != "card")
            {
                return Err(WireErr::invalid(
                    "payment_method_type_invalid",
                    "Only card is supported",
                    Some("payment_method_types"),
                ));
            }
            let confirm = p.flag("confirm")?;
            if confirm && !p.scalars.contains_key("payment_method") {
                return Err(WireErr::invalid(
                    "parameter_missing",
                    "You must provide a payment_method when confirming.",
                    Some("payment_method"),
                ));
            }
            Ok((amount, currency.clone(), capture_method.to_owned(), confirm))
        })();
        let (amount, currency, capture_method, confirm) = match r {
            Ok(v) => v,
            Err(e) => return Applied::error(e),
        };
        let seq = self.take_seq();
        let id = object_id("pi", seq, salt);
        let payment_method = p.scalars.get("payment_method").cloned();
        let intent = Intent {
            seq,
            client_secret: format!("{id}_secret_{:016x}", salt.rotate_left(17)),
            id,
            amount,
            currency,
            status: if payment_method.is_some() {
                PaymentStatus::RequiresConfirmation
            } else {
                PaymentStatus::RequiresPaymentMethod
            },
            capture_method,
            payment_method,
            metadata: p.metadata.clone(),
            description: p.scalars.get("description").cloned(),
            created: now_s,
            amount_capturable: 0,
            amount_received: 0,
            charges: vec![],
            last_payment_error: None,
            canceled_at: None,
            cancellation_reason: None,
        };
        let mut events = vec![("payment_intent.created", intent_json(&intent, false))];
        if !confirm {
            let body = intent_json(&intent, p.expands("latest_charge"));
            self.put_intent(intent.clone());
            return Applied { status: 200, body, intents: vec![intent], refunds: vec![], events };
        }
        let mut applied = self.confirm_intent(intent, p, salt, answer);
        events.append(&mut applied.events);
        applied.events = events;
        applied
    }

    /// `POST /v1/payment_intents/{id}/confirm`.
    pub(crate) fn confirm(
        &mut self,
        id: &str,
        p: &Params,
        salt: u64,
        answer: &CardAnswer,
    ) -> Applied {
        if let Err(e) = p.only(&["payment_method"], &["expand"], false) {
            return Applied::error(e);
        }
        let Some(intent) = self.intents.get(id).cloned() else {
            return Applied::error(WireErr::missing("payment_intent", id, None));
        };
        if !matches!(
            intent.status,
            PaymentStatus::RequiresPaymentMethod | PaymentStatus::RequiresConfirmation
        ) {
            return Applied::error(unexpected_state(
                &intent,
                "confirm",
                "requires_payment_method, requires_confirmation",
            ));
        }
        let mut intent = intent;
        if let Some(pm) = p.scalars.get("payment_method") {
            intent.payment_method = Some(pm.clone());
        }
        if intent.payment_method.is_none() {
            return Applied::error(WireErr::invalid(
                "payment_intent_unexpected_state",
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                None,
            ));
        }
        self.confirm_intent(intent, p, salt, answer)
    }

    fn confirm_intent(
        &mut self,
        mut intent: Intent,
        p: &Params,
        salt: u64,
        answer: &CardAnswer,
    ) -> Applied {
        if *answer == CardAnswer::Authenticate {
            intent.status = PaymentStatus::RequiresAction;
            intent.last_payment_error = None;
            self.put_intent(intent.clone());
            let body = intent_json(&intent, p.expands("latest_charge"));
            let events = vec![("payment_intent.requires_action", intent_json(&intent, false))];
            return Applied { status: 200, body, intents: vec![intent], refunds: vec![], events };
        }
        let charge_seq = self.take_seq();
        let charge_id = object_id("ch", charge_seq, salt.rotate_left(7));
        match answer {
            CardAnswer::Authenticate => unreachable!("answered above"),
            CardAnswer::Approve => {
                let manual = intent.capture_method == "manual";
                intent.charges.push(Charge {
                    id: charge_id,
                    amount: intent.amount,
                    amount_captured: if manual { 0 } else { intent.amount },
                    amount_refunded: 0,
                    captured: !manual,
                    status: "succeeded".to_owned(),
                });
                intent.last_payment_error = None;
                let kind = if manual {
                    intent.status = PaymentStatus::RequiresCapture;
                    intent.amount_capturable = intent.amount;
                    "payment_intent.amount_capturable_updated"
                } else {
                    intent.status = PaymentStatus::Succeeded;
                    intent.amount_received = intent.amount;
                    "payment_intent.succeeded"
                };
                self.put_intent(intent.clone());
                let body = intent_json(&intent, p.expands("latest_charge"));
                let events = vec![(kind, intent_json(&intent, false))];
                Applied { status: 200, body, intents: vec![intent], refunds: vec![], events }
            }
            CardAnswer::Decline { code, decline_code, message } => {
                intent.charges.push(Charge {
                    id: charge_id,
                    amount: intent.amount,
                    amount_captured: 0,
                    amount_refunded: 0,
                    captured: false,
                    status: "failed".to_owned(),
                });
                intent.status = PaymentStatus::RequiresPaymentMethod;
                intent.last_payment_error = Some(LastError {
                    code: (*code).to_owned(),
                    decline_code: decline_code.map(str::to_owned),
                    message: (*message).to_owned(),
                });
                self.put_intent(intent.clone());
                let pi = intent_json(&intent, false);
                let err = WireErr {
                    status: 402,
                    kind: "card_error",
                    code: Some(code),
                    decline_code: decline_code.map(str::to_owned),
                    message: (*message).to_owned(),
                    param: None,
                    payment_intent: Some(Box::new(pi.clone())),
                };
                Applied {
                    status: 402,
                    body: err.to_json(),
                    intents: vec![intent],
                    refunds: vec![],
                    events: vec![("payment_intent.payment_failed", pi)],
                }
            }
        }
    }

    /// `POST /v1/payment_intents/{id}/capture`.
    pub(crate) fn capture(&mut self, id: &str, p: &Params) -> Applied {
        if let Err(e) = p.only(&["amount_to_capture"], &["expand"], true) {
            return Applied::error(e);
        }
        let Some(mut intent) = self.intents.get(id).cloned() else {
            return Applied::error(WireErr::missing("payment_intent", id, None));
        };
        if intent.status != PaymentStatus::RequiresCapture {
            return Applied::error(unexpected_state(&intent, "captured", "requires_capture"));
        }
        let amount = match p.amount("amount_to_capture") {
            Ok(a) => a.unwrap_or(intent.amount_capturable),
            Err(e) => return Applied::error(e),
        };
        if amount > intent.amount_capturable {
            return Applied::error(WireErr::invalid(
                "amount_too_large",
                "The amount to capture exceeds the amount capturable.",
                Some("amount_to_capture"),
            ));
        }
        intent.metadata.extend(p.metadata.clone());
        intent.status = PaymentStatus::Succeeded;
        intent.amount_received = amount;
        intent.amount_capturable = 0;
        if let Some(ch) = intent.captured_charge_mut() {
            ch.captured = true;
            ch.amount_captured = amount;
        }
        self.put_intent(intent.clone());
        let body = intent_json(&intent, p.expands("latest_charge"));
        let events = vec![("payment_intent.succeeded", intent_json(&intent, false))];
        Applied { status: 200, body, intents: vec![intent], refunds: vec![], events }
    }

    /// `POST /v1/payment_intents/{id}/cancel`.
    pub(crate) fn cancel(&mut self, id: &str, p: &Params, now_s: u64) -> Applied {
        if let Err(e) = p.only(&["cancellation_reason"], &["expand"], false) {
            return Applied::error(e);
        }
        let reason = p.scalars.get("cancellation_reason").cloned();
        if let Some(r) = &reason
            && !matches!(
                r.as_str(),
                "duplicate" | "fraudulent" | "requested_by_customer" | "abandoned"
            )
        {
            return Applied::error(WireErr::invalid(
                "parameter_invalid_string",
                "Invalid cancellation_reason",
                Some("cancellation_reason"),
            ));
        }
        let Some(mut intent) = self.intents.get(id).cloned() else {
            return Applied::error(WireErr::missing("payment_intent", id, None));
        };
        if matches!(intent.status, PaymentStatus::Succeeded | PaymentStatus::Canceled) {
            return Applied::error(unexpected_state(
                &intent,
                "canceled",
                "requires_payment_method, requires_capture, requires_confirmation, requires_action, processing",
            ));
        }
        intent.status = PaymentStatus::Canceled;
        intent.amount_capturable = 0;
        intent.canceled_at = Some(now_s);
        intent.cancellation_reason = reason;
        self.put_intent(intent.clone());
        let body = intent_json(&intent, p.expands("latest_charge"));
        let events = vec![("payment_intent.canceled", intent_json(&intent, false))];
        Applied { status: 200, body, intents: vec![intent], refunds: vec![], events }
    }

    /// `POST /v1/refunds`.
    pub(crate) fn refund(&mut self, p: &Params, now_s: u64, salt: u64) -> Applied {
        if let Err(e) = p.only(&["payment_intent", "charge", "amount", "reason"], &["expand"], true)
        {
            return Applied::error(e);
        }
        let intent_id = match (p.scalars.get("payment_intent"), p.scalars.get("charge")) {
            (Some(pi), None) => pi.clone(),
            (None, Some(ch)) => {
                match self.intents.values().find(|i| i.charges.iter().any(|c| &c.id == ch)) {
                    Some(i) => i.id.clone(),
                    None => return Applied::error(WireErr::missing("charge", ch, Some("charge"))),
                }
            }
            _ => {
                return Applied::error(WireErr::invalid(
                    "parameter_missing",
                    "Provide exactly one of charge or payment_intent.",
                    Some("payment_intent"),
                ));
            }
        };
        let reason = p.scalars.get("reason").cloned();
        if let Some(r) = &reason
            && !matches!(r.as_str(), "duplicate" | "fraudulent" | "requested_by_customer")
        {
            return Applied::error(WireErr::invalid(
                "parameter_invalid_string",
                "Invalid reason",
                Some("reason"),
            ));
        }
        let Some(mut intent) = self.intents.get(&intent_id).cloned() else {
            return Applied::error(WireErr::missing(
                "payment_intent",
                &intent_id,
                Some("payment_intent"),
            ));
        };
        if intent.status != PaymentStatus::Succeeded {
            return Applied::error(WireErr::invalid(
                "charge_not_refundable",
                format!(
                    "This PaymentIntent ({}) does not have a successful charge to refund (status {}).",
                    intent.id,
                    intent.status.as_str()
                ),
                Some("payment_intent"),
            ));
        }
        let requested = match p.amount("amount") {
            Ok(a) => a,
            Err(e) => return Applied::error(e),
        };
        let currency = intent.currency.clone();
        let Some(charge) = intent.captured_charge_mut() else {
            return Applied::error(WireErr::invalid(
                "charge_not_refundable",
                "Nothing was captured.",
                None,
            ));
        };
        let left = charge.amount_captured - charge.amount_refunded;
        if left == 0 {
            return Applied::error(WireErr::invalid(
                "charge_already_refunded",
                format!("Charge {} has already been refunded.", charge.id),
                None,
            ));
        }
        let amount = requested.unwrap_or(left);
        if amount > left {
            return Applied::error(WireErr::invalid(
                "amount_too_large",
                format!(
                    "Refund amount ({amount}) is greater than unrefunded amount on charge ({left})"
                ),
                Some("amount"),
            ));
        }
        charge.amount_refunded += amount;
        let charge_id = charge.id.clone();
        let seq = self.take_seq();
        let refund = RefundRec {
            seq,
            id: object_id("re", seq, salt),
            amount,
            currency,
            charge: charge_id,
            payment_intent: intent.id.clone(),
            reason,
            created: now_s,
        };
        self.put_intent(intent.clone());
        self.put_refund(refund.clone());
        let body = refund_json(&refund);
        let charge_obj =
            intent.latest_charge().map(|c| charge_json(&intent, c)).unwrap_or(Value::Null);
        Applied {
            status: 200,
            body,
            intents: vec![intent],
            refunds: vec![refund],
            events: vec![("charge.refunded", charge_obj)],
        }
    }

    /// `GET /v1/payment_intents/search`: supports `field:'value'` clauses joined by `AND`
    /// over `metadata['key']`, `status` and `currency`.
    pub(crate) fn search(&self, query: &str) -> Result<Vec<&Intent>, WireErr> {
        let clauses = parse_query(query)?;
        let candidates: Box<dyn Iterator<Item = &Intent>> =
            match clauses.iter().find(|(f, _)| f == "metadata.order_id") {
                Some((_, order)) => Box::new(
                    self.by_order
                        .get(order)
                        .into_iter()
                        .flatten()
                        .filter_map(|id| self.intents.get(id)),
                ),
                None => Box::new(self.intents.values()),
            };
        let mut found: Vec<&Intent> = candidates
            .filter(|i| {
                clauses.iter().all(|(field, value)| match field.strip_prefix("metadata.") {
                    Some(k) => i.metadata.get(k) == Some(value),
                    None if field == "status" => i.status.as_str() == value,
                    None => i.currency == *value,
                })
            })
            .collect();
        found.sort_by_key(|i| std::cmp::Reverse(i.seq));
        Ok(found)
    }
}

fn unexpected_state(intent: &Intent, verb: &str, allowed: &str) -> WireErr {
    let mut e = WireErr::invalid(
        "payment_intent_unexpected_state",
        format!(
            "This PaymentIntent could not be {verb} because it has a status of {}. Only a PaymentIntent with one of the following statuses may be {verb}: {allowed}.",
            intent.status.as_str()
        ),
        None,
    );
    e.payment_intent = Some(Box::new(intent_json(intent, false)));
    e
}

fn parse_query(query: &str) -> Result<Vec<(String, String)>, WireErr> {
    let bad = || {
        WireErr::invalid(
            "parameter_invalid_string",
            format!("Invalid search query: {query}"),
            Some("query"),
        )
    };
    let mut out = Vec::new();
    for clause in query.split(" AND ") {
        let clause = clause.trim();
        let (field, value) = clause.split_once(':').ok_or_else(bad)?;
        let value = unquote(value.trim()).ok_or_else(bad)?;
        let field = if let Some(rest) = field.strip_prefix("metadata[") {
            let key = rest.strip_suffix(']').and_then(unquote).ok_or_else(bad)?;
            format!("metadata.{key}")
        } else if matches!(field, "status" | "currency") {
            field.to_owned()
        } else {
            return Err(bad());
        };
        out.push((field, value.to_owned()));
    }
    Ok(out)
}

fn unquote(s: &str) -> Option<&str> {
    s.strip_prefix('\'')
        .and_then(|r| r.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|r| r.strip_suffix('"')))
}

/// A PaymentIntent on the wire.
pub(crate) fn intent_json(i: &Intent, expand_charge: bool) -> Value {
    let latest_charge = match (i.latest_charge(), expand_charge) {
        (None, _) => Value::Null,
        (Some(c), false) => json!(c.id),
        (Some(c), true) => charge_json(i, c),
    };
    let last_payment_error = i.last_payment_error.as_ref().map(|e| {
        json!({
            "type": "card_error",
            "code": e.code,
            "decline_code": e.decline_code,
            "message": e.message,
            "payment_method": {"id": i.payment_method, "object": "payment_method", "type": "card"},
        })
    });
    json!({
        "id": i.id,
        "object": "payment_intent",
        "amount": i.amount,
        "amount_capturable": i.amount_capturable,
        "amount_received": i.amount_received,
        "canceled_at": i.canceled_at,
        "cancellation_reason": i.cancellation_reason,
        "capture_method": i.capture_method,
        "client_secret": i.client_secret,
        "confirmation_method": "automatic",
        "created": i.created,
        "currency": i.currency,
        "customer": null,
        "description": i.description,
        "last_payment_error": last_payment_error,
        "latest_charge": latest_charge,
        "livemode": false,
        "metadata": i.metadata,
        "payment_method": i.payment_method,
        "payment_method_types": ["card"],
        "status": i.status.as_str(),
    })
}

pub(crate) fn charge_json(i: &Intent, c: &Charge) -> Value {
    json!({
        "id": c.id,
        "object": "charge",
        "amount": c.amount,
        "amount_captured": c.amount_captured,
        "amount_refunded": c.amount_refunded,
        "captured": c.captured,
        "created": i.created,
        "currency": i.currency,
        "livemode": false,
        "metadata": i.metadata,
        "paid": c.status == "succeeded",
        "payment_intent": i.id,
        "payment_method": i.payment_method,
        "refunded": c.amount_captured > 0 && c.amount_refunded == c.amount_captured,
        "status": c.status,
    })
}

pub(crate) fn refund_json(r: &RefundRec) -> Value {
    json!({
        "id": r.id,
        "object": "refund",
        "amount": r.amount,
        "charge": r.charge,
        "created": r.created,
        "currency": r.currency,
        "metadata": {},
        "payment_intent": r.payment_intent,
        "reason": r.reason,
        "status": "succeeded",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::parse(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
            .unwrap()
    }

    fn authorize(l: &mut Ledger, order: &str, answer: &CardAnswer) -> Applied {
        let p = params(&[
            ("amount", "5000"),
            ("currency", "eur"),
            ("payment_method", "pm_card_visa"),
            ("confirm", "true"),
            ("capture_method", "manual"),
            ("metadata[order_id]", order),
        ]);
        l.create(&p, 100, 7, answer)
    }

    #[test]
    fn walks_the_manual_capture_state_machine() {
        let mut l = Ledger::default();
        let a = authorize(&mut l, "o_1", &CardAnswer::Approve);
        assert_eq!(a.status, 200);
        assert_eq!(a.body["status"], "requires_capture");
        assert_eq!(a.body["amount_capturable"], 5000);
        let id = a.body["id"].as_str().unwrap().to_owned();

        let c = l.capture(&id, &params(&[("amount_to_capture", "4000")]));
        assert_eq!((c.status, c.body["status"].as_str()), (200, Some("succeeded")));
        assert_eq!(c.body["amount_received"], 4000);
        assert_eq!(
            l.capture(&id, &params(&[])).body["error"]["code"],
            "payment_intent_unexpected_state"
        );
        assert_eq!(
            l.cancel(&id, &params(&[]), 5).body["error"]["code"],
            "payment_intent_unexpected_state"
        );

        let r = l.refund(&params(&[("payment_intent", &id), ("amount", "1500")]), 200, 9);
        assert_eq!((r.status, r.body["amount"].as_u64()), (200, Some(1500)));
        let r = l.refund(&params(&[("payment_intent", &id), ("amount", "3000")]), 200, 10);
        assert_eq!(r.body["error"]["code"], "amount_too_large");
        let r = l.refund(&params(&[("payment_intent", &id)]), 200, 11);
        assert_eq!(r.body["amount"], 2500);
        let r = l.refund(&params(&[("payment_intent", &id)]), 200, 12);
        assert_eq!(r.body["error"]["code"], "charge_already_refunded");
        assert_eq!(l.intents[&id].amount_refunded(), 4000);
    }

    #[test]
    fn declines_leave_nothing_capturable_and_voids_release_holds() {
        let mut l = Ledger::default();
        let decline = CardAnswer::Decline {
            code: "card_declined",
            decline_code: Some("insufficient_funds"),
            message: "Your card has insufficient funds.",
        };
        let d = authorize(&mut l, "o_2", &decline);
        assert_eq!(d.status, 402);
        assert_eq!(d.body["error"]["decline_code"], "insufficient_funds");
        assert_eq!(d.body["error"]["payment_intent"]["status"], "requires_payment_method");
        let id = d.body["error"]["payment_intent"]["id"].as_str().unwrap().to_owned();
        assert_eq!(
            l.capture(&id, &params(&[])).body["error"]["code"],
            "payment_intent_unexpected_state"
        );

        let a = authorize(&mut l, "o_3", &CardAnswer::Approve);
        let id = a.body["id"].as_str().unwrap().to_owned();
        let c = l.cancel(&id, &params(&[("cancellation_reason", "abandoned")]), 101);
        assert_eq!(
            (c.body["status"].as_str(), c.body["amount_capturable"].as_u64()),
            (Some("canceled"), Some(0))
        );
        let r = l.refund(&params(&[("payment_intent", &id)]), 200, 9);
        assert_eq!(r.body["error"]["code"], "charge_not_refundable");
    }

    #[test]
    fn searches_by_metadata_and_status() {
        let mut l = Ledger::default();
        authorize(&mut l, "o_1", &CardAnswer::Approve);
        authorize(&mut l, "o_2", &CardAnswer::Approve);
        authorize(&mut l, "o_2", &CardAnswer::Approve);
        assert_eq!(l.search("metadata['order_id']:'o_2'").unwrap().len(), 2);
        assert_eq!(l.search("metadata[\"order_id\"]:\"o_1\"").unwrap().len(), 1);
        assert_eq!(l.search("metadata['order_id']:'o_1' AND status:'canceled'").unwrap().len(), 0);
        assert_eq!(l.search("status:'requires_capture'").unwrap().len(), 3);
        assert!(l.search("amount>5").is_err());
        assert!(l.search("metadata['order_id']:o_1").is_err());
    }

    #[test]
    fn refuses_unknown_and_malformed_parameters() {
        let mut l = Ledger::default();
        let a = l.create(
            &params(&[("amount", "5"), ("currency", "eur"), ("bogus", "1")]),
            1,
            1,
            &CardAnswer::Approve,
        );
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (400, Some("parameter_unknown")));
        let a =
            l.create(&params(&[("amount", "-5"), ("currency", "eur")]), 1, 1, &CardAnswer::Approve);
        assert_eq!(a.body["error"]["code"], "parameter_invalid_integer");
        let a =
            l.create(&params(&[("amount", "5"), ("currency", "EURO")]), 1, 1, &CardAnswer::Approve);
        assert_eq!(a.body["error"]["param"], "currency");
        assert!(l.intents.is_empty());
    }
}
