//! `cargo xtask e2e checkout`: many checkouts through the edge while the payment provider
//! declines, times out and loses answers, and one region's core (where orders run) is
//! killed with SIGKILL midway. Afterwards the provider's ledger and the orders must agree:
//! nobody charged without tickets, no tickets without a charge, no double charges, no
//! authorization left neither captured nor voided; and every attempt is accounted for:
//! completed + declined + failed == attempts (an attempt whose every try went unanswered
//! is found through the fan's order list, and counts as failed if it has no order).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::fan::{Api, Fan, Operator};
use crate::stack::{Stack, StackOptions};

/// Size and shape of the run.
#[derive(Debug, Clone)]
pub struct CheckoutOptions {
    pub checkouts: usize,
    pub concurrency: usize,
    /// Kill the first region's core after this many checkouts started; restart it once
    /// twice the concurrency more have started.
    pub kill_after: usize,
}

impl CheckoutOptions {
    pub fn full() -> Self {
        CheckoutOptions { checkouts: 1000, concurrency: 48, kill_after: 500 }
    }
}

/// The payment method of the `i`-th checkout: 10% declines, 5% timeouts, 2% unknown.
fn card(i: usize) -> &'static str {
    match i % 100 {
        0..=9 => "pm_card_chargeDeclined",
        10..=14 => "pm_card_tessera_timeout",
        15..=16 => "pm_card_tessera_unknown",
        _ => "pm_card_visa",
    }
}

#[derive(Debug, Default)]
struct Outcome {
    /// The fan's identity token (to read the order afterwards).
    token: String,
    order_id: Option<String>,
    status: u16,
    latency: Duration,
    retries: u32,
}

/// One fan: join, wait for admission, hold, check out (retrying the same request with the
/// same idempotency key when the connection fails, as a real client does).
async fn one(edge: Api, issuer: Api, i: usize, event: String) -> anyhow::Result<Outcome> {
    // Fans get their identity from the identity provider, not through the edge.
    let customer = format!("buyer-{i}");
    let token = issuer.dev_token(&customer, false).await?;
    let mut fan = Fan::with_token(edge, &customer, token);
    // Joining again returns the place already recorded, so a failed join is repeated.
    let mut joined = false;
    for _ in 0..20 {
        match fan.join(&event).await {
            Ok(r) if r.ok() => {
                joined = true;
                break;
            }
            Ok(r) if r.status < 500 => bail!("join: {} {}", r.status, r.body),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    if !joined {
        bail!("join never succeeded");
    }
    fan.wait_admitted(&event, Duration::from_secs(60)).await?;
    let quantity = 1 + (i % 2);
    let key = format!("checkout-{i}");
    let mut hold = None;
    for _ in 0..10 {
        match fan
            .hold(
                &event,
                &json!({"pool": "FLOOR", "quantity": quantity}),
                Some(&format!("hold-{i}")),
            )
            .await
        {
            Ok(r) if r.status == 201 => {
                hold = r.body["hold_id"].as_str().map(str::to_owned);
                break;
            }
            Ok(r) if r.status >= 500 => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(r) => bail!("hold: {} {}", r.status, r.body),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let hold = hold.context("hold never succeeded")?;
    let started = Instant::now();
    let mut out = Outcome { token: fan.token.clone(), ..Outcome::default() };
    for attempt in 0..20 {
        match fan.checkout(&hold, card(i), &key).await {
            Ok(r) if r.status < 500 || r.code() == Some("payment_failed") => {
                out.status = r.status;
                out.order_id = r.body["order_id"].as_str().map(str::to_owned).or_else(|| {
                    // Errors name the order in the message ("order o_... failed").
                    r.body["message"].as_str().and_then(|m| {
                        m.split_whitespace()
                            .find(|w| w.starts_with("o_"))
                            .map(|w| w.trim_end_matches([';', ',', ')']).to_owned())
                    })
                });
                break;
            }
            Ok(_) | Err(_) => {
                out.retries = attempt + 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    out.latency = started.elapsed();
    Ok(out)
}

/// Runs the scenario on a fresh stack and prints the `key=value` summary.
pub async fn run(opts: CheckoutOptions) -> anyhow::Result<BTreeMap<String, String>> {
    let mut options = StackOptions::for_tests("checkout")?;
    // Timed-out answers come after 5 s; the core gives up after 2 s and settles it later.
    options.paysim_toml = "[faults]\ntimeout_delay_ms = 5000\n".into();
    let mut stack = Stack::start(options, &|s| eprintln!("[checkout] {s}")).await?;
    let edge = Api::new(stack.http.clone(), stack.urls.edge.clone().context("edge")?);
    let router = Api::new(stack.http.clone(), stack.urls.router.clone());
    let op = Operator::new(router.clone()).await?;
    let event = "checkout-night".to_owned();
    let map = json!({
        "event_id": event, "name": "Checkout Night", "venue": "Hall", "starts_at": "2027-09-01T20:00:00Z",
        "currency": "EUR", "max_tickets_per_customer": 4, "hold_ttl_s": 600,
        "tiers": [{"tier_id": "GA", "name": "Floor", "price_minor": 4500}],
        "ga_pools": [{"pool_id": "FLOOR", "name": "Floor", "tier": "GA", "capacity": 5000}],
        "open_now": true
    });
    let r = op.create_event(&map).await?;
    if r.status != 201 {
        bail!("create event: {} {}", r.status, r.body);
    }
    op.admission_rate(&event, 2000.0).await?;
    // Kill the region that is serving the traffic.
    let probe = router.get("/v1/events", &[]).await?;
    let victim = format!("core-{}", probe.served_by.clone().context("router names no region")?);

    let started = Arc::new(AtomicUsize::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.concurrency));
    let mut tasks = Vec::new();
    let t0 = Instant::now();
    for i in 0..opts.checkouts {
        let permit = sem.clone().acquire_owned().await?;
        started.fetch_add(1, Ordering::Relaxed);
        let (edge, issuer, event) = (edge.clone(), router.clone(), event.clone());
        tasks.push(tokio::spawn(async move {
            let r = one(edge, issuer, i, event).await;
            drop(permit);
            (i, r)
        }));
        if i + 1 == opts.kill_after {
            eprintln!(
                "[checkout] {} checkouts started: kill -9 {victim} (the region serving them)",
                i + 1
            );
            stack.kill(&victim)?;
        }
        if i + 1 == opts.kill_after + opts.concurrency * 2 {
            eprintln!("[checkout] restarting {victim}");
            stack.restart(&victim).await?;
        }
        if (i + 1) % 100 == 0 {
            eprintln!("[checkout] {} / {} started ({:.0?})", i + 1, opts.checkouts, t0.elapsed());
        }
    }
    let mut outcomes: Vec<(usize, Outcome)> = Vec::new();
    let mut failures = Vec::new();
    for t in tasks {
        match t.await? {
            (i, Ok(o)) => outcomes.push((i, o)),
            (i, Err(e)) => failures.push(format!("buyer-{i}: {e:#}")),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} fans did not get through:\n{}",
            failures.len(),
            failures.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
        );
    }

    // An attempt whose every try failed has no order id: ask the platform for the fan's
    // orders (each buyer checks out once), so that no attempt drops out of the count.
    let auth_of = |o: &Outcome| format!("Bearer {}", o.token);
    let mut unanswered = 0;
    for (i, o) in outcomes.iter_mut() {
        if o.status == 0 {
            unanswered += 1;
            eprintln!("[checkout] buyer-{i} never got an answer to its checkout");
        }
        if o.order_id.is_none() {
            let r = router.get("/v1/orders", &[("authorization", &auth_of(o))]).await?;
            let ids: Vec<String> = r.body["orders"]
                .as_array()
                .map(|a| {
                    a.iter().filter_map(|x| x["order_id"].as_str().map(str::to_owned)).collect()
                })
                .unwrap_or_default();
            match ids.as_slice() {
                [] => {}
                [one] => o.order_id = Some(one.clone()),
                more => bail!("buyer-{i} checked out once and has {} orders", more.len()),
            }
        }
    }

    // Let the reconcilers settle every order whose payment outcome was unknown.
    eprintln!("[checkout] waiting for every order to settle");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut states: HashMap<String, Value> = HashMap::new();
    loop {
        states.clear();
        let mut pending = 0;
        for (_, o) in &outcomes {
            let Some(order_id) = &o.order_id else { continue };
            // Audit reads go to the router: they are not fan traffic.
            let r = router
                .get(&format!("/v1/orders/{order_id}"), &[("authorization", &auth_of(o))])
                .await?;
            if r.body["state"] == "payment_pending" {
                pending += 1;
            }
            states.insert(order_id.clone(), r.body);
        }
        if pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{pending} orders still pending after 120 s");
        }
        eprintln!("[checkout] {pending} orders pending");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // The audit: the provider's ledger against the orders. Authorizations of failed
    // orders are voided by the saga or the reconciler; give them a moment.
    let ledger = crate::scenarios::settled_ledger(&stack, "checkout").await?;
    let uncaptured = ledger["summary"]["uncaptured_authorizations"].as_u64().unwrap_or(u64::MAX);
    let mut charged: HashMap<String, i64> = HashMap::new();
    for intent in ledger["intents"].as_array().cloned().unwrap_or_default() {
        if let Some(o) = intent["order_id"].as_str() {
            *charged.entry(o.to_owned()).or_default() +=
                intent["net_charged"].as_i64().unwrap_or(0);
        }
    }
    // Every attempt lands in exactly one of completed, declined (the card said no) and
    // failed (anything else, including no order at all).
    let mut charged_without_ticket = 0;
    let mut ticket_without_charge = 0;
    let (mut completed, mut declined, mut failed) = (0usize, 0usize, 0usize);
    let mut decline_mismatch = 0;
    let mut places_sold = 0u64;
    for (i, o) in &outcomes {
        let declining_card = card(*i) == "pm_card_chargeDeclined";
        let Some(order_id) = &o.order_id else {
            failed += 1;
            eprintln!("[checkout] buyer-{i} has no order");
            continue;
        };
        let body = &states[order_id];
        let paid = charged.get(order_id).copied().unwrap_or(0);
        let tickets = body["tickets"].as_array().map_or(0, Vec::len);
        match body["state"].as_str() {
            Some("completed") => {
                completed += 1;
                places_sold += body["quantity"].as_u64().unwrap_or(0);
                if paid != body["amount_minor"].as_i64().unwrap_or(-1) || tickets == 0 {
                    ticket_without_charge += 1;
                    eprintln!("[checkout] completed order {order_id} charged {paid}: {body}");
                }
                if declining_card {
                    decline_mismatch += 1;
                    eprintln!("[checkout] buyer-{i} paid with a declining card: {body}");
                }
            }
            state => {
                if state == Some("failed") && body["failure_code"] == "card_declined" {
                    declined += 1;
                } else {
                    failed += 1;
                }
                if declining_card != (body["failure_code"] == "card_declined") {
                    decline_mismatch += 1;
                    eprintln!("[checkout] buyer-{i} (card {}) ended {body}", card(*i));
                }
                if paid != 0 {
                    charged_without_ticket += 1;
                    eprintln!("[checkout] {} order {order_id} charged {paid}", body["state"]);
                }
            }
        }
    }
    let attempts = opts.checkouts;
    let accounted = completed + declined + failed;
    if accounted != attempts {
        eprintln!(
            "[checkout] {completed} completed + {declined} declined + {failed} failed = {accounted}, not the {attempts} attempts"
        );
    }
    // Charges for orders nobody heard of are charges without tickets too.
    for (order_id, paid) in &charged {
        if *paid > 0 && !states.contains_key(order_id) {
            charged_without_ticket += 1;
            eprintln!("[checkout] provider charged unknown order {order_id}");
        }
    }
    let duplicate_charges = ledger["summary"]["duplicate_charges"].as_u64().unwrap_or(u64::MAX);
    let avail = router.get(&format!("/v1/events/{event}/availability"), &[]).await?;
    let pool = &avail.body["pools"][0];
    let oversold = u64::from(
        pool["sold"].as_u64().unwrap_or(0) != places_sold
            || pool["held"].as_u64().unwrap_or(0) + pool["sold"].as_u64().unwrap_or(0) > 5000,
    );

    let mut lat: Vec<Duration> =
        outcomes.iter().filter(|(_, o)| o.status == 201).map(|(_, o)| o.latency).collect();
    lat.sort();
    let pct = |p: f64| crate::scenarios::quantile(&lat, p).as_secs_f64() * 1000.0;
    let retries: u32 = outcomes.iter().map(|(_, o)| o.retries).sum();
    let warnings = stack.unexpected_warnings(crate::scenarios::EXPECTED_WARNINGS);
    for w in warnings.iter().take(20) {
        eprintln!("[checkout] unexpected: {w}");
    }
    stack.stop();
    let mut kv = BTreeMap::new();
    kv.insert("checkouts".into(), attempts.to_string());
    kv.insert("orders_completed".into(), completed.to_string());
    kv.insert("orders_declined".into(), declined.to_string());
    kv.insert("orders_failed".into(), failed.to_string());
    kv.insert("unaccounted".into(), attempts.abs_diff(accounted).to_string());
    kv.insert("decline_mismatch".into(), decline_mismatch.to_string());
    kv.insert("checkouts_unanswered".into(), unanswered.to_string());
    kv.insert("uncaptured_authorizations".into(), uncaptured.to_string());
    kv.insert("charged_without_ticket".into(), charged_without_ticket.to_string());
    kv.insert("ticket_without_charge".into(), ticket_without_charge.to_string());
    kv.insert("duplicate_charges".into(), duplicate_charges.to_string());
    kv.insert("oversold".into(), oversold.to_string());
    kv.insert("client_retries".into(), retries.to_string());
    kv.insert("checkout_p50_ms".into(), format!("{:.0}", pct(0.5)));
    kv.insert("checkout_p99_ms".into(), format!("{:.0}", pct(0.99)));
    kv.insert("unexpected_warnings".into(), warnings.len().to_string());
    Ok(kv)
}
