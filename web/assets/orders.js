import { api, header, requireIdentity } from "/assets/api.js";
import { $, h, t, tn, fmtMoney, fmtDate, notice } from "/assets/ui.js";

header();
const me = requireIdentity();
const box = $("#orders");

export function orderBadge(state) {
  const kind = { completed: "ok", payment_pending: "warn", failed: "bad", refunded: "" }[state] ?? "";
  return h("span", { class: `badge ${kind}` }, t(`order_${state}`));
}

async function main() {
  if (!me) return;
  try {
    const [{ data }, events] = await Promise.all([
      api("/v1/orders"),
      api("/v1/events", { auth: false }).then((r) => r.data.events).catch(() => []),
    ]);
    const names = new Map(events.map((e) => [e.event_id, e]));
    box.replaceChildren();
    if (!data.orders.length) {
      box.append(h("div", { class: "card" }, h("p", {}, t("orders_none")), h("a", { class: "btn", href: "/" }, t("nav_events"))));
      return;
    }
    const orders = [...data.orders].sort((a, b) => b.created_at_ms - a.created_at_ms);
    for (const o of orders) {
      const ev = names.get(o.event_id);
      const what = o.seats.length ? o.seats.join(", ") : tn("ga_places_n", o.quantity, { pool: o.pool || "" });
      box.append(h("article", { class: "card" },
        h("div", { class: "order-row" },
          h("h2", {}, h("a", { href: `/orders/${o.order_id}` }, ev ? ev.name : o.event_id)),
          orderBadge(o.state)),
        h("p", { class: "muted" }, ev ? fmtDate(ev.starts_at) : "", ev ? h("br") : "", what),
        h("p", {}, `${fmtMoney(o.amount_minor, o.currency)} · ${tn("n_tickets", o.tickets.length)}`)));
    }
  } catch (e) {
    box.replaceChildren();
    notice("bad", e.message);
  } finally {
    box.removeAttribute("aria-busy");
  }
}

main();
