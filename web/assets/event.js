import { api, header, identity, serverNow } from "/assets/api.js";
import { $, h, t, tn, fmtDate, fmtMoney, fmtClock, notice, pathId, announce } from "/assets/ui.js";
import { stateBadge, storedTicket, tierMap } from "/assets/event-common.js";
import { commitmentOf, lotteryValue } from "/assets/shuffle.js";

header();
const eventId = pathId(1);
const top = $("#event");

async function load() {
  if (!eventId) throw Object.assign(new Error(), { message: t("bad_link") });
  const { data: detail } = await api(`/v1/events/${eventId}`, { auth: false });
  return detail;
}

function priceRows(detail) {
  const tiers = tierMap(detail);
  const where = new Map();
  for (const s of detail.sections) where.set(s.tier, [...(where.get(s.tier) || []), s.name]);
  for (const p of detail.ga_pools) where.set(p.tier, [...(where.get(p.tier) || []), p.name]);
  return [...tiers.values()].map((tier) =>
    h("tr", {},
      h("td", {}, h("span", { class: "swatch", "data-tier": tier.index }), tier.name),
      h("td", {}, (where.get(tier.tier_id) || []).join(", ")),
      h("td", { class: "num" }, fmtMoney(tier.price_minor, detail.event.currency))));
}

function saleBox(ev) {
  const box = $("#sale");
  const ticket = storedTicket(ev.event_id);
  const queueHref = `/events/${ev.event_id}/queue`;
  const parts = [];
  if (ev.state === "scheduled") {
    parts.push(h("p", {}, t("event_scheduled")));
    if (ev.on_sale_at) {
      const at = Date.parse(ev.on_sale_at);
      const clock = h("p", { class: "big-number countdown", id: "opens-in" }, "");
      parts.push(h("p", { class: "muted" }, t("event_opens_at", { when: fmtDate(ev.on_sale_at) })), clock);
      const tick = () => {
        const left = (at - serverNow()) / 1000;
        clock.textContent = left > 0 ? fmtClock(left) : t("event_opening_now");
      };
      tick();
      setInterval(tick, 1000);
    }
    parts.push(h("p", {}, t("event_join_early")));
  } else if (ev.state === "on_sale") {
    parts.push(h("p", {}, t("event_on_sale")));
  } else {
    parts.push(h("p", {}, t(`event_state_${ev.state}`)));
  }
  if (ev.state === "scheduled" || ev.state === "on_sale" || ev.state === "paused") {
    const label = ticket ? t("event_return_to_queue") : t("event_join");
    parts.push(h("p", {}, h("a", { class: "btn big", href: identity() ? queueHref : `/signin?next=${encodeURIComponent(queueHref)}` }, label)));
  }
  box.replaceChildren(...parts);
}

async function fairness(ev) {
  $("#commitment").textContent = ev.shuffle_commitment;
  $("#seed").textContent = ev.shuffle_seed || t("fair_seed_hidden");
  const box = $("#check");
  if (!ev.shuffle_seed) {
    box.replaceChildren(h("p", {}, t("fair_before")));
    return;
  }
  const button = h("button", { class: "btn secondary", type: "button" }, t("fair_check"));
  const out = h("div", { class: "stack" });
  button.addEventListener("click", async () => {
    out.replaceChildren();
    const c = await commitmentOf(ev.shuffle_seed);
    const ok = c === ev.shuffle_commitment.toLowerCase();
    out.append(h("p", { class: ok ? "notice ok" : "notice bad" }, ok ? t("fair_seed_ok") : t("fair_seed_bad")));
    const ticket = storedTicket(ev.event_id);
    if (ticket && ticket.phase === "pre_open") {
      const mine = await lotteryValue(ev.shuffle_seed, ev.event_id, ticket.ticket_id);
      let stated = null;
      try {
        const { data } = await api(`/v1/events/${ev.event_id}/queue`, { headers: { "x-tessera-queue-ticket": ticket.ticket } });
        stated = data.lottery || null;
      } catch { stated = null; }
      out.append(h("p", {}, t("fair_your_value")), h("p", { class: "mono" }, mine));
      if (stated) {
        const same = stated.toLowerCase() === mine;
        out.append(h("p", { class: same ? "notice ok" : "notice bad" }, same ? t("fair_value_ok") : t("fair_value_bad")));
      }
    } else if (ticket) {
      out.append(h("p", {}, t("fair_open_phase")));
    } else {
      out.append(h("p", {}, t("fair_no_ticket")));
    }
    announce(out.textContent);
  });
  box.replaceChildren(h("p", {}, t("fair_after")), button, out);
}

try {
  const detail = await load();
  const ev = detail.event;
  document.title = `${ev.name} · Tessera`;
  top.replaceChildren(
    h("div", { class: "spread" }, h("h1", {}, ev.name), stateBadge(ev.state)),
    h("dl", { class: "facts card" },
      h("dt", {}, t("event_where_label")), h("dd", {}, ev.venue),
      h("dt", {}, t("event_when_label")), h("dd", {}, fmtDate(ev.starts_at)),
      h("dt", {}, t("event_limit_label")), h("dd", {}, tn("event_limit", ev.max_tickets_per_customer)),
      h("dt", {}, t("event_hold_label")), h("dd", {}, tn("event_hold_minutes", Math.round(ev.hold_ttl_s / 60)))),
  );
  $("#prices").replaceChildren(...priceRows(detail));
  saleBox(ev);
  await fairness(ev);
  $("#event-body").hidden = false;
} catch (e) {
  top.replaceChildren();
  notice("bad", e.message, e.code === "unknown_event" || !eventId ? h("a", { href: "/" }, t("nav_events")) : null);
} finally {
  top.removeAttribute("aria-busy");
}
