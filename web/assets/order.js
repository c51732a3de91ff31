// One order and its tickets. Each ticket's QR code is an SVG the API draws from the
// signed ticket (the same payload the gates check); it is fetched with the fan's identity.
import { api, header, requireIdentity } from "/assets/api.js";
import { $, h, t, fmtMoney, fmtDate, notice, pathId, param, announce, focusOn } from "/assets/ui.js";

header();
const me = requireIdentity();
const orderId = pathId(1);
const box = $("#order");

async function qrImage(ticket) {
  const img = h("img", { alt: t("ticket_qr_alt", { seat: ticket.seat_id || ticket.pool || ticket.ticket_id }), width: 224, height: 224 });
  try {
    const resp = await api(`/v1/orders/${orderId}/tickets/${ticket.ticket_id}/qr.svg`, { raw: true, headers: { accept: "image/svg+xml" } });
    if (!resp.ok) throw new Error(String(resp.status));
    img.src = URL.createObjectURL(await resp.blob());
  } catch {
    img.alt = t("ticket_qr_failed");
  }
  return img;
}

async function main() {
  if (!me) return;
  if (!orderId || !/^o_[a-z0-9]{8,40}$/.test(orderId)) {
    box.replaceChildren();
    notice("bad", t("bad_link"), h("a", { href: "/orders" }, t("nav_orders")));
    return;
  }
  try {
    const { data: o } = await api(`/v1/orders/${orderId}`);
    let ev = null;
    try { ev = (await api(`/v1/events/${o.event_id}`, { auth: false })).data.event; } catch { ev = null; }
    $("#title").textContent = ev ? ev.name : t("order_title");
    const facts = h("dl", { class: "facts card" },
      h("dt", {}, t("order_state")), h("dd", {}, t(`order_${o.state}`)),
      ev ? [h("dt", {}, t("event_when_label")), h("dd", {}, fmtDate(ev.starts_at)), h("dt", {}, t("event_where_label")), h("dd", {}, ev.venue)] : [],
      h("dt", {}, t("order_paid")), h("dd", {}, fmtMoney(o.amount_minor, o.currency)),
      h("dt", {}, t("order_number")), h("dd", { class: "mono" }, o.order_id));
    const tickets = h("div", { class: "tickets" });
    for (const tk of o.tickets) {
      tickets.append(h("article", { class: "card ticket" },
        h("h2", {}, tk.seat_id ? t("ticket_seat", { seat: tk.seat_id }) : t("ticket_ga", { pool: tk.pool || "" })),
        await qrImage(tk),
        h("p", { class: "small muted" }, t("ticket_show_at_gate"))));
    }
    const parts = [facts];
    if (o.state === "completed") parts.push(h("h2", {}, t("tickets_title")), tickets);
    else if (o.state === "payment_pending") parts.push(h("p", { class: "notice info" }, t("payment_pending")));
    else parts.push(h("p", { class: "notice bad" }, t(`order_${o.state}_text`)));
    box.replaceChildren(...parts);
    if (param("new", /^1$/) && o.state === "completed") {
      notice("ok", t("order_thanks"));
      announce(t("order_thanks"));
      focusOn($("#title"));
    }
  } catch (e) {
    box.replaceChildren();
    notice("bad", e.message, h("a", { href: "/orders" }, t("nav_orders")));
  } finally {
    box.removeAttribute("aria-busy");
  }
}

main();
