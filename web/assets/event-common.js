// What the event, waiting-room and seat pages share: the sale state and the stored
// queue ticket and admission of this browser.
import { h, t } from "/assets/ui.js";

export function stateBadge(state) {
  const kind = { on_sale: "ok", scheduled: "", paused: "warn", sold_out: "bad", closed: "bad" }[state] ?? "";
  return h("span", { class: `badge ${kind}` }, t(`state_${state}`));
}

const qKey = (eventId) => `tessera.queue.${eventId}`;
const aKey = (eventId) => `tessera.admission.${eventId}`;

/** This browser's queue ticket for an event (survives closing the tab). */
export function storedTicket(eventId) {
  try { return JSON.parse(localStorage.getItem(qKey(eventId)) || "null"); } catch { return null; }
}
export function keepTicket(eventId, ticket) {
  localStorage.setItem(qKey(eventId), JSON.stringify(ticket));
}
export function forgetTicket(eventId) {
  localStorage.removeItem(qKey(eventId));
  localStorage.removeItem(aKey(eventId));
}

/** The admission token, while it is valid. */
export function storedAdmission(eventId, nowMs) {
  try {
    const a = JSON.parse(localStorage.getItem(aKey(eventId)) || "null");
    if (a && (!a.expires_at_ms || a.expires_at_ms > nowMs)) return a;
  } catch { /* ignore */ }
  return null;
}
export function keepAdmission(eventId, token, expiresAtMs) {
  localStorage.setItem(aKey(eventId), JSON.stringify({ token, expires_at_ms: expiresAtMs || null }));
}
export function forgetAdmission(eventId) {
  localStorage.removeItem(aKey(eventId));
}

/** Price of each tier by id. */
export function tierMap(detail) {
  return new Map(detail.tiers.map((tier, i) => [tier.tier_id, { ...tier, index: i }]));
}
