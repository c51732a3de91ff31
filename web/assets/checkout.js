// Checkout: the hold's countdown (frozen while the payment is in flight, as the API
// freezes the hold), the provider's hosted card fields in an iframe (card data never
// touches this page), and one idempotency key per payment attempt so that a double click
// or a retried request can never pay twice.
import { api, header, requireIdentity, serverNow, newKey, ApiError } from "/assets/api.js";
import { $, h, t, fmtMoney, fmtClock, announce, notice, focusOn, pathId, param, show } from "/assets/ui.js";

header();
const eventId = pathId(1);
const holdId = param("hold", /^h_[a-z0-9]{8,40}$/);
const me = requireIdentity();
const payUrl = document.querySelector('meta[name="tessera-payments-url"]')?.content || "";
const payKey = document.querySelector('meta[name="tessera-payments-key"]')?.content || "";
let payOrigin = "";
try { payOrigin = new URL(payUrl).origin; } catch { payOrigin = ""; }

let hold = null;
let frozen = false;
let attempt = null; // { key, pm } while a payment attempt is running or may be retried
let timer = null;

function renderTimer() {
  const box = $("#timer");
  const state = $("#timer-state");
  if (!hold) return;
  const left = (hold.expires_at_ms - serverNow()) / 1000;
  box.classList.toggle("frozen", frozen);
  if (frozen) {
    state.textContent = t("timer_frozen");
  } else if (left <= 0) {
    $("#countdown").textContent = "0:00";
    state.textContent = t("timer_over");
    if (!box.dataset.over) {
      box.dataset.over = "1";
      notice("bad", t("hold_ran_out"), h("a", { href: `/events/${eventId}/seats` }, t("back_to_seats")));
      announce(t("hold_ran_out"));
      $("#pay-btn").disabled = true;
    }
    return;
  } else {
    state.textContent = t("timer_running");
    // Warn once, a minute before the end.
    if (left < 60 && !box.dataset.warned) { box.dataset.warned = "1"; announce(t("timer_one_minute")); }
  }
  $("#countdown").textContent = fmtClock(left);
}

function summary() {
  const seats = hold.seats.length
    ? h("ul", {}, hold.seats.map((s) => h("li", {}, s)))
    : h("p", {}, t("ga_places", { n: hold.quantity, pool: hold.pool || "" }));
  $("#summary").replaceChildren(
    seats,
    h("p", { class: "total" }, t("basket_total", { total: fmtMoney(hold.amount_minor, hold.currency) })));
}

async function loadHold() {
  const { data } = await api(`/v1/holds/${holdId}`);
  hold = data;
  frozen = hold.state === "payment_pending";
  if (hold.event_id !== eventId) throw new ApiError(403, "hold_foreign");
  if (hold.state === "confirmed") {
    notice("ok", t("hold_confirmed"), h("a", { href: "/orders" }, t("nav_orders")));
    return false;
  }
  if (hold.state === "released" || hold.state === "expired") {
    notice("bad", t(`hold_${hold.state}`), h("a", { href: `/events/${eventId}/seats` }, t("back_to_seats")));
    return false;
  }
  return true;
}

// ---------- the provider's hosted card fields ----------
const frame = $("#card-frame");
let pending = new Map();
function tokenize() {
  return new Promise((resolve, reject) => {
    const id = newKey("tok");
    pending.set(id, { resolve, reject });
    frame.contentWindow.postMessage({ type: "tessera-pay:tokenize", id }, payOrigin);
    setTimeout(() => {
      if (pending.delete(id)) reject(new ApiError(504, "timeout"));
    }, 20_000);
  });
}
window.addEventListener("message", (e) => {
  if (e.origin !== payOrigin || e.source !== frame.contentWindow) return;
  const m = e.data || {};
  if (m.type === "tessera-pay:resize" && Number.isFinite(m.height)) {
    frame.style.height = `${Math.min(Math.max(m.height, 120), 800)}px`;
  }
  const p = m.id && pending.get(m.id);
  if (!p) return;
  pending.delete(m.id);
  if (m.type === "tessera-pay:payment_method") p.resolve(m.payment_method);
  else p.reject(Object.assign(new Error(m.message || t("card_invalid")), { card: true }));
});

// ---------- paying ----------
async function pay(e) {
  e.preventDefault();
  const btn = $("#pay-btn");
  if (btn.getAttribute("aria-disabled") === "true") return; // a payment is already in flight
  const email = $("#email").value.trim();
  if (!/^[^@\s]+@[^@\s]+$/.test(email)) {
    notice("bad", t("checkout_email_invalid"));
    $("#email").setAttribute("aria-invalid", "true");
    focusOn($("#email"));
    return;
  }
  $("#email").removeAttribute("aria-invalid");
  busy(true);
  try {
    if (!attempt) attempt = { key: newKey("checkout"), pm: null };
    if (!attempt.pm) attempt.pm = await tokenize();
    frozen = true;
    renderTimer();
    announce(t("paying_say"));
    const { status, data } = await api("/v1/orders", {
      method: "POST",
      json: { hold_id: holdId, payment_method: attempt.pm, email },
      headers: { "idempotency-key": attempt.key },
      onRetry: (msg) => notice("warn", msg),
    });
    if (status === 202 || data.state === "payment_pending") await settle(data.order_id);
    else done(data);
  } catch (err) {
    await failed(err);
  }
}

function busy(on) {
  const btn = $("#pay-btn");
  btn.setAttribute("aria-disabled", on ? "true" : "false");
  btn.replaceChildren(...(on ? [h("span", { class: "spinner", "aria-hidden": "true" }), t("paying")] : [t("checkout_pay_btn")]));
}

async function settle(orderId) {
  notice("info", t("payment_pending"));
  announce(t("payment_pending"));
  for (let i = 0; i < 60; i++) {
    await new Promise((r) => setTimeout(r, 2000));
    try {
      const { data } = await api(`/v1/orders/${orderId}`);
      if (data.state === "completed") return done(data);
      if (data.state === "failed" || data.state === "refunded") {
        throw new ApiError(402, data.failure_code === "hold_expired" ? "hold_expired" : "payment_failed");
      }
    } catch (e) {
      if (e instanceof ApiError && e.status !== 0) throw e;
    }
  }
  notice("warn", t("payment_still_pending"), h("a", { href: `/orders/${orderId}` }, t("see_order")));
  busy(false);
}

function done(order) {
  attempt = null;
  announce(t("paid_say"));
  location.assign(`/orders/${order.order_id}?new=1`);
}

async function failed(err) {
  busy(false);
  if (err.card) {
    // The card fields said what is wrong; nothing was sent to Tessera.
    attempt = null;
    frozen = false;
    notice("bad", err.message);
    announce(err.message);
    return;
  }
  const code = err instanceof ApiError ? err.code : null;
  const status = err instanceof ApiError ? err.status : 0;
  // A definitive "no" (declined, failed, hold gone) ends the attempt; anything else may have
  // gone through and is only ever repeated with the same key.
  const unknownOutcome = status === 0
    || ["internal", "unavailable", "region_unavailable", "timeout", "checkout_in_progress", "other"].includes(code)
    || (status >= 500 && code !== "payment_failed");
  if (unknownOutcome) {
    // Keep the attempt (and its key): paying again repeats the same request, which the
    // API answers with the first outcome instead of charging again.
    notice("warn", `${err.message} ${t("payment_unknown_retry")}`, h("a", { href: "/orders" }, t("nav_orders")));
    announce(err.message);
    return;
  }
  attempt = null;
  try { await loadHold(); } catch { /* keep what we know */ }
  frozen = hold && hold.state === "payment_pending";
  renderTimer();
  const stillHeld = hold && hold.state === "active";
  const next = stillHeld ? t("payment_try_again") : t("payment_seats_released");
  notice("bad", `${err.message} ${next}`, stillHeld ? null : h("a", { href: `/events/${eventId}/seats` }, t("back_to_seats")));
  announce(`${err.message} ${next}`);
  if (!stillHeld) $("#pay-btn").disabled = true;
  focusOn($("#notice"));
}

async function release() {
  try {
    await api(`/v1/holds/${holdId}`, { method: "DELETE" });
    location.assign(`/events/${eventId}/seats`);
  } catch (e) {
    notice("bad", e.message);
  }
}

async function main() {
  if (!me) return;
  if (!eventId || !holdId) {
    notice("bad", t("bad_link"), h("a", { href: "/" }, t("nav_events")));
    show($("#pay"), false);
    return;
  }
  $("#email").value = me.email || "";
  try {
    if (!(await loadHold())) { show($("#pay"), false); show($("#release"), false); return; }
  } catch (e) {
    notice("bad", e.message, h("a", { href: eventId ? `/events/${eventId}/seats` : "/" }, t("back_to_seats")));
    show($("#pay"), false);
    show($("#release"), false);
    return;
  }
  summary();
  renderTimer();
  timer = setInterval(renderTimer, 1000);
  if (!payOrigin) { notice("bad", t("payments_unavailable")); return; }
  const src = new URL("/hosted/card", payUrl);
  src.searchParams.set("key", payKey);
  src.searchParams.set("origin", location.origin);
  src.searchParams.set("lang", document.documentElement.lang);
  frame.src = src.toString();
  $("#pay").addEventListener("submit", pay);
  $("#release").addEventListener("click", release);
  focusOn($("#title"));
}

main();
