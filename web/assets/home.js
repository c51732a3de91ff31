import { api, header } from "/assets/api.js";
import { $, h, t, fmtDate, notice } from "/assets/ui.js";
import { stateBadge } from "/assets/event-common.js";

header();
const list = $("#events");
try {
  const { data } = await api("/v1/events", { auth: false });
  list.replaceChildren();
  if (!data.events.length) list.append(h("p", {}, t("home_none")));
  for (const ev of data.events) {
    const href = `/events/${encodeURIComponent(ev.event_id)}`;
    list.append(
      h("article", { class: "card event-card" },
        h("div", { class: "spread" }, stateBadge(ev.state)),
        h("h2", {}, h("a", { href }, ev.name)),
        h("p", { class: "muted" }, ev.venue, h("br"), fmtDate(ev.starts_at)),
        h("a", { class: "btn secondary", href, "aria-label": t("home_view_named", { name: ev.name }) }, t("home_view")),
      ),
    );
  }
} catch (e) {
  list.replaceChildren();
  notice("bad", e.message);
} finally {
  list.removeAttribute("aria-busy");
}
