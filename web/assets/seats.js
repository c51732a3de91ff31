// The seat map: an SVG of the catalog's sections, rows and seats with live availability,
// an equivalent step-through list (section → row → seat) for keyboards and screen
// readers, best-available and general-admission requests. The hold itself, its limits and
// what is free are the API's: the page only asks and explains.
import { api, header, requireIdentity, serverNow, newKey, ApiError } from "/assets/api.js";
import { $, h, t, tn, fmtInt, fmtMoney, fmtClock, announce, notice, focusOn, pathId } from "/assets/ui.js";
import { storedAdmission, forgetAdmission, tierMap } from "/assets/event-common.js";

header();
const eventId = pathId(1);
const me = requireIdentity();
const PITCH = 10;
const REFRESH_MS = 15_000;

let detail = null;
let tiers = null;
const statuses = new Map(); // section_id -> Map(row -> string of f/h/s)
const selected = new Set();
const seatEls = new Map(); // seat id -> svg element
let poolFree = new Map();

const seatId = (sec, row, n) => `${sec}-${row}-${n}`;
function parseSeat(id) {
  const m = /^(.+)-([^-]+)-(\d+)$/.exec(id);
  return m ? { section: m[1], row: m[2], n: Number(m[3]) } : null;
}
const sectionOf = (id) => detail.sections.find((s) => s.section_id === id);
function rowsOf(sec) {
  if (sec.rows && sec.rows.length) return sec.rows;
  const out = [];
  for (let r = 1; r <= (sec.row_count || 0); r++) out.push({ row: String(r), seats: sec.seats_per_row || 0, accessible: [] });
  return out;
}
function stateOf(id) {
  const p = parseSeat(id);
  const s = p && statuses.get(p.section)?.get(p.row);
  return s ? s[p.n - 1] || "f" : "f";
}
const isFree = (id) => stateOf(id) === "f";
const priceOfSection = (sec) => tiers.get(sec.tier)?.price_minor ?? 0;
const money = (minor) => fmtMoney(minor, detail.event.currency);
function seatLabel(id) {
  const p = parseSeat(id);
  const sec = sectionOf(p.section);
  return t("seat_label", { seat: p.n, row: p.row, section: sec ? sec.name : p.section });
}
function isAccessible(id) {
  const p = parseSeat(id);
  const row = rowsOf(sectionOf(p.section)).find((r) => r.row === p.row);
  return Boolean(row && (row.accessible || []).includes(p.n));
}

// ---------- data ----------
async function loadSeats() {
  await Promise.all(detail.sections.map(async (sec) => {
    const { data } = await api(`/v1/events/${eventId}/sections/${sec.section_id}/seats`, { auth: false });
    statuses.set(sec.section_id, new Map(data.rows.map((r) => [r.row, r.statuses])));
  }));
  try {
    const { data } = await api(`/v1/events/${eventId}/availability`, { auth: false });
    poolFree = new Map(data.pools.map((p) => [p.pool_id, p.free]));
  } catch { /* counts are a nicety */ }
}

/** Marks seats taken or free; `explain` says which picked seats were just taken. */
function applyStatuses(explain = true) {
  const lost = [];
  for (const [id, el] of seatEls) {
    const free = isFree(id);
    el.classList.toggle("taken", !free);
    if (!free && selected.has(id)) { selected.delete(id); lost.push(id); el.classList.remove("selected"); }
  }
  if (lost.length) renderBasket();
  if (lost.length && explain) {
    const msg = t("seats_just_taken", { seats: lost.map(seatLabel).join(", ") });
    notice("warn", msg);
    announce(msg);
  }
  if (listState.section) renderList();
}

// ---------- the SVG map ----------
function buildMap() {
  const NS = (tag, attrs) => h(`svg:${tag}`, attrs);
  const byTier = new Map();
  for (const sec of detail.sections) {
    const idx = tiers.get(sec.tier)?.index ?? 0;
    byTier.set(idx, [...(byTier.get(idx) || []), sec]);
  }
  const rings = [...byTier.keys()].sort((a, b) => a - b).map((k) => byTier.get(k));
  const gap = 40;
  const ringSizes = rings.map((secs) => {
    const widths = secs.map((s) => Math.max(...rowsOf(s).map((r) => r.seats), 1) * PITCH);
    const heights = secs.map((s) => rowsOf(s).length * PITCH);
    return { widths, width: widths.reduce((a, b) => a + b, 0) + gap * (secs.length - 1), height: Math.max(...heights, 0) };
  });
  const width = Math.max(600, ...ringSizes.map((r) => r.width)) + 80;
  const g = NS("g", {});
  let y = 20;
  // Stage
  g.append(NS("rect", { x: width / 2 - 150, y, width: 300, height: 44, rx: 10, class: "stage" }));
  const stage = NS("text", { x: width / 2, y: y + 28, "text-anchor": "middle", class: "stage-label" });
  stage.textContent = t("seats_stage");
  g.append(stage);
  y += 64;
  // General admission pools in front of the stage
  if (detail.ga_pools.length) {
    const pw = Math.min(420, (width - 80) / detail.ga_pools.length);
    detail.ga_pools.forEach((p, i) => {
      const x = width / 2 - (pw * detail.ga_pools.length) / 2 + i * pw;
      const idx = tiers.get(p.tier)?.index ?? 0;
      const r = NS("rect", { x: x + 4, y, width: pw - 8, height: 90, rx: 12, class: `pool t${idx}`, "data-pool": p.pool_id });
      r.addEventListener("click", () => chooseWhere(`pool:${p.pool_id}`));
      g.append(r);
      const label = NS("text", { x: x + pw / 2, y: y + 50, "text-anchor": "middle", class: "section-label pool-label" });
      label.textContent = p.name;
      g.append(label);
    });
    y += 120;
  }
  rings.forEach((secs, ri) => {
    const size = ringSizes[ri];
    let x = (width - size.width) / 2;
    secs.forEach((sec, si) => {
      const w = size.widths[si];
      const angle = (si - (secs.length - 1) / 2) * 7;
      const cx = x + w / 2;
      const sg = NS("g", { transform: `rotate(${angle} ${cx} ${y + size.height / 2})`, "data-section": sec.section_id });
      const label = NS("text", { x: cx, y: y - 6, "text-anchor": "middle", class: "section-label" });
      label.textContent = sec.name;
      sg.append(label);
      const idx = tiers.get(sec.tier)?.index ?? 0;
      rowsOf(sec).forEach((row, r) => {
        const offset = (w - row.seats * PITCH) / 2;
        for (let n = 1; n <= row.seats; n++) {
          const id = seatId(sec.section_id, row.row, n);
          const sx = x + offset + (n - 0.5) * PITCH;
          const sy = y + (r + 0.5) * PITCH;
          const acc = (row.accessible || []).includes(n);
          const el = acc
            ? NS("rect", { x: sx - 4, y: sy - 4, width: 8, height: 8, rx: 1.5, class: `seat t${idx}`, "data-seat": id })
            : NS("circle", { cx: sx, cy: sy, r: 3.8, class: `seat t${idx}`, "data-seat": id });
          if (!isFree(id)) el.classList.add("taken");
          seatEls.set(id, el);
          sg.append(el);
        }
      });
      g.append(sg);
      x += w + gap;
    });
    y += size.height + 50;
  });
  const height = y;
  const svg = NS("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": "map-title", id: "map", preserveAspectRatio: "xMidYMid meet" });
  const title = NS("title", { id: "map-title" });
  title.textContent = t("seats_map_title");
  svg.append(title, g);
  $("#map-wrap").prepend(svg);
  panZoom(svg, { width, height });
  svg.addEventListener("click", (e) => {
    if (svg.dataset.dragged === "1") return;
    const id = e.target.getAttribute?.("data-seat");
    if (id) toggleSeat(id);
  });
}

function panZoom(svg, full) {
  let view = { x: 0, y: 0, w: full.width, h: full.height };
  const set = () => svg.setAttribute("viewBox", `${view.x} ${view.y} ${view.w} ${view.h}`);
  const zoom = (factor, cx = view.x + view.w / 2, cy = view.y + view.h / 2) => {
    const w = Math.min(full.width, Math.max(full.width / 8, view.w / factor));
    const f = w / view.w;
    view = { x: cx - (cx - view.x) * f, y: cy - (cy - view.y) * f, w, h: view.h * f };
    set();
  };
  $("#zoom-in").addEventListener("click", () => zoom(1.5));
  $("#zoom-out").addEventListener("click", () => zoom(1 / 1.5));
  $("#zoom-reset").addEventListener("click", () => { view = { x: 0, y: 0, w: full.width, h: full.height }; set(); });
  const toSvg = (clientX, clientY) => {
    const r = svg.getBoundingClientRect();
    return { x: view.x + ((clientX - r.left) / r.width) * view.w, y: view.y + ((clientY - r.top) / r.height) * view.h };
  };
  const pointers = new Map();
  let start = null;
  svg.addEventListener("pointerdown", (e) => {
    pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
    svg.dataset.dragged = "0";
    start = { view: { ...view }, pts: new Map(pointers) };
  });
  svg.addEventListener("pointermove", (e) => {
    if (!pointers.has(e.pointerId) || !start) return;
    pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
    const r = svg.getBoundingClientRect();
    const scale = start.view.w / r.width;
    const now = [...pointers.values()];
    const then = [...start.pts.values()];
    if (now.length === 1 && then.length >= 1) {
      const dx = now[0].x - then[0].x;
      const dy = now[0].y - then[0].y;
      if (Math.hypot(dx, dy) > 6) {
        svg.dataset.dragged = "1";
        if (!svg.hasPointerCapture(e.pointerId)) svg.setPointerCapture(e.pointerId);
      }
      if (svg.dataset.dragged === "1") {
        view = { ...start.view, x: start.view.x - dx * scale, y: start.view.y - dy * scale };
        set();
      }
    } else if (now.length >= 2 && then.length >= 2) {
      svg.dataset.dragged = "1";
      const d0 = Math.hypot(then[0].x - then[1].x, then[0].y - then[1].y);
      const d1 = Math.hypot(now[0].x - now[1].x, now[0].y - now[1].y);
      if (d0 > 0) {
        const mid = toSvg((now[0].x + now[1].x) / 2, (now[0].y + now[1].y) / 2);
        view = { ...start.view };
        zoom(d1 / d0, mid.x, mid.y);
      }
    }
  });
  const end = (e) => {
    pointers.delete(e.pointerId);
    start = pointers.size ? { view: { ...view }, pts: new Map(pointers) } : null;
  };
  svg.addEventListener("pointerup", end);
  svg.addEventListener("pointercancel", end);
  svg.addEventListener("wheel", (e) => {
    if (!e.ctrlKey && !e.metaKey) return;
    e.preventDefault();
    const p = toSvg(e.clientX, e.clientY);
    zoom(e.deltaY < 0 ? 1.2 : 1 / 1.2, p.x, p.y);
  }, { passive: false });
}

function legend() {
  const items = [...tiers.values()].map((tier) =>
    h("li", {}, h("span", { class: "swatch", "data-tier": tier.index }), `${tier.name} · ${money(tier.price_minor)}`));
  const icon = (shape, cls) => {
    const s = h("svg:svg", { width: 16, height: 16, viewBox: "0 0 16 16", "aria-hidden": "true", focusable: "false" });
    s.append(shape === "rect"
      ? h("svg:rect", { x: 3, y: 3, width: 10, height: 10, rx: 2, class: cls })
      : h("svg:circle", { cx: 8, cy: 8, r: 6, class: cls }));
    return s;
  };
  items.push(
    h("li", {}, icon("rect", "t0"), t("legend_accessible")),
    h("li", {}, icon("circle", "seat taken"), t("legend_taken")),
    h("li", {}, icon("circle", "t0 seat selected"), t("legend_selected")));
  $("#legend").replaceChildren(...items);
}

// ---------- selection and basket ----------
function toggleSeat(id) {
  if (!isFree(id)) { announce(t("seat_taken_say", { seat: seatLabel(id) })); return; }
  if (selected.has(id)) selected.delete(id);
  else {
    const max = Math.min(detail.event.max_tickets_per_customer, 20);
    if (selected.size >= max) {
      notice("warn", tn("seats_limit", max));
      announce(tn("seats_limit", max));
      return;
    }
    selected.add(id);
  }
  seatEls.get(id)?.classList.toggle("selected", selected.has(id));
  announce(selected.has(id) ? t("seat_added", { seat: seatLabel(id) }) : t("seat_removed", { seat: seatLabel(id) }));
  renderBasket();
  if (listState.row) renderList(false);
}

function renderBasket() {
  const box = $("#basket");
  const btn = $("#hold");
  if (!selected.size) {
    box.replaceChildren(h("p", { class: "muted" }, t("basket_empty")));
    btn.disabled = true;
    btn.textContent = t("basket_hold");
    return;
  }
  let total = 0;
  const lines = [...selected].map((id) => {
    const price = priceOfSection(sectionOf(parseSeat(id).section));
    total += price;
    return h("li", {}, `${seatLabel(id)} · ${money(price)}`, isAccessible(id) ? ` · ${t("legend_accessible")}` : "");
  });
  box.replaceChildren(h("ul", {}, lines), h("p", { class: "total" }, t("basket_total", { total: money(total) })));
  btn.disabled = false;
  btn.textContent = tn("basket_hold_n", selected.size);
}

// ---------- holds ----------
async function hold(body, button) {
  const adm = storedAdmission(eventId, serverNow());
  if (!adm) { needAdmission(); return; }
  button.disabled = true;
  const original = button.textContent;
  button.textContent = t("holding");
  try {
    const { data } = await api(`/v1/events/${eventId}/holds`, {
      method: "POST", json: body,
      headers: { "x-tessera-admission": adm.token, "idempotency-key": newKey("hold") },
    });
    sessionStorage.setItem(`tessera.hold.${data.hold_id}`, JSON.stringify({ event_id: eventId }));
    location.assign(`/events/${eventId}/checkout?hold=${encodeURIComponent(data.hold_id)}`);
  } catch (e) {
    button.disabled = false;
    button.textContent = original;
    if (e instanceof ApiError && ["admission_required", "not_admitted_yet", "queue_ticket_invalid", "queue_token_wrong_device", "queue_token_wrong_event", "token_expired"].includes(e.code)) {
      if (e.code !== "token_expired") forgetAdmission(eventId);
      notice("bad", e.message, h("a", { href: `/events/${eventId}/queue` }, t("back_to_queue")));
    } else {
      notice("bad", e.message);
    }
    announce(e.message);
    if (e instanceof ApiError && ["seat_held", "seat_sold", "not_enough_adjacent", "sold_out"].includes(e.code)) {
      await loadSeats().catch(() => {});
      applyStatuses(false);
    }
  }
}

function needAdmission() {
  notice("warn", t("seats_need_admission"), h("a", { class: "btn", href: `/events/${eventId}/queue` }, t("back_to_queue")));
  focusOn($("#notice"));
}

// ---------- step-through list ----------
const listState = { section: null, row: null, pool: null };
function renderList(moveFocus = true) {
  const crumbs = $("#crumbs");
  const title = $("#list-title");
  const list = $("#picker");
  const crumb = (label, onclick) => h("li", {}, onclick ? h("button", { class: "btn quiet", type: "button", onclick }, label) : h("span", { "aria-current": "location" }, label));
  list.replaceChildren();
  if (!listState.section && !listState.pool) {
    crumbs.replaceChildren(crumb(t("list_all_sections")));
    title.textContent = t("list_pick_section");
    for (const sec of detail.sections) {
      const free = [...(statuses.get(sec.section_id)?.values() || [])].join("").split("").filter((c) => c === "f").length;
      list.append(h("li", {}, h("button", { class: "btn secondary", type: "button", onclick: () => { listState.section = sec.section_id; renderList(); } },
        `${sec.name} · ${money(priceOfSection(sec))} · ${tn("n_free", free)}`)));
    }
    for (const p of detail.ga_pools) {
      const free = poolFree.get(p.pool_id);
      list.append(h("li", {}, h("button", { class: "btn secondary", type: "button", onclick: () => chooseWhere(`pool:${p.pool_id}`) },
        `${p.name} · ${money(tiers.get(p.tier)?.price_minor ?? 0)} · ${free === undefined ? t("standing") : tn("n_free", free)}`)));
    }
  } else if (!listState.row) {
    const sec = sectionOf(listState.section);
    crumbs.replaceChildren(crumb(t("list_all_sections"), () => { listState.section = null; renderList(); }), crumb(sec.name));
    title.textContent = t("list_pick_row", { section: sec.name });
    for (const row of rowsOf(sec)) {
      const free = (statuses.get(sec.section_id)?.get(row.row) || "").split("").filter((c) => c === "f").length;
      list.append(h("li", {}, h("button", { class: "btn secondary", type: "button", disabled: free === 0, onclick: () => { listState.row = row.row; renderList(); } },
        `${t("row_n", { row: row.row })} · ${tn("n_free", free)}`)));
    }
  } else {
    const sec = sectionOf(listState.section);
    const row = rowsOf(sec).find((r) => r.row === listState.row);
    crumbs.replaceChildren(
      crumb(t("list_all_sections"), () => { listState.section = null; listState.row = null; renderList(); }),
      crumb(sec.name, () => { listState.row = null; renderList(); }),
      crumb(t("row_n", { row: row.row })));
    title.textContent = t("list_pick_seat", { row: row.row, section: sec.name });
    for (let n = 1; n <= row.seats; n++) {
      const id = seatId(sec.section_id, row.row, n);
      const free = isFree(id);
      const acc = (row.accessible || []).includes(n);
      const label = [t("seat_n", { seat: n }), acc ? t("legend_accessible") : null, free ? null : t("legend_taken")].filter(Boolean).join(" · ");
      list.append(h("li", {}, h("button", {
        class: `btn secondary seat-btn${free ? "" : " taken"}`, type: "button", "aria-pressed": selected.has(id) ? "true" : "false",
        disabled: !free, "data-seat": id, onclick: () => toggleSeat(id),
      }, label)));
    }
  }
  if (moveFocus) focusOn(title);
}

// ---------- best available and GA ----------
function fillBestForm() {
  const sel = $("#best-where");
  const opts = [];
  for (const tier of tiers.values()) {
    if (detail.sections.some((s) => s.tier === tier.tier_id)) opts.push(h("option", { value: `tier:${tier.tier_id}` }, t("best_anywhere_in", { tier: tier.name, price: money(tier.price_minor) })));
  }
  for (const sec of detail.sections) opts.push(h("option", { value: `section:${sec.section_id}` }, t("best_in_section", { section: sec.name, price: money(priceOfSection(sec)) })));
  for (const p of detail.ga_pools) opts.push(h("option", { value: `pool:${p.pool_id}` }, t("best_pool", { pool: p.name, price: money(tiers.get(p.tier)?.price_minor ?? 0) })));
  sel.replaceChildren(...opts);
  $("#best-qty").max = String(Math.min(detail.event.max_tickets_per_customer, 20));
  const syncAccessible = () => {
    const pool = sel.value.startsWith("pool:");
    $("#best-accessible").disabled = pool;
    if (pool) $("#best-accessible").checked = false;
  };
  sel.addEventListener("change", syncAccessible);
  syncAccessible();
  $("#best").addEventListener("submit", (e) => {
    e.preventDefault();
    const [kind, value] = sel.value.split(":");
    const quantity = Number($("#best-qty").value);
    if (!Number.isInteger(quantity) || quantity < 1) {
      notice("bad", t("best_qty_invalid"));
      $("#best-qty").setAttribute("aria-invalid", "true");
      focusOn($("#best-qty"));
      return;
    }
    $("#best-qty").removeAttribute("aria-invalid");
    const body = { [kind]: value, quantity };
    if (kind !== "pool" && $("#best-accessible").checked) body.accessible = true;
    hold(body, $("#best-submit"));
  });
}

function chooseWhere(value) {
  selectTab("best");
  $("#best-where").value = value;
  $("#best-where").dispatchEvent(new Event("change"));
  focusOn($("#best-qty"));
}

// ---------- tabs ----------
const TABS = ["map", "list", "best"];
function selectTab(name) {
  for (const n of TABS) {
    const tab = $(`#tab-${n}`);
    const on = n === name;
    tab.setAttribute("aria-selected", on ? "true" : "false");
    tab.tabIndex = on ? 0 : -1;
    $(`#panel-${n}`).hidden = !on;
  }
  if (name === "list") renderList(false);
}
function tabs() {
  TABS.forEach((n, i) => {
    const tab = $(`#tab-${n}`);
    tab.addEventListener("click", () => selectTab(n));
    tab.addEventListener("keydown", (e) => {
      const d = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
      if (!d) return;
      const next = TABS[(i + d + TABS.length) % TABS.length];
      selectTab(next);
      $(`#tab-${next}`).focus();
    });
  });
}

function admissionClock() {
  const adm = storedAdmission(eventId, serverNow());
  const out = $("#admission-left");
  if (!adm || !adm.expires_at_ms) { out.textContent = ""; return; }
  const tick = () => {
    const left = (adm.expires_at_ms - serverNow()) / 1000;
    out.textContent = left > 0 ? t("admission_left", { time: fmtClock(left) }) : t("admission_over");
  };
  tick();
  setInterval(tick, 1000);
}

async function main() {
  if (!me) return;
  if (!eventId) { notice("bad", t("bad_link")); return; }
  tabs();
  try {
    ({ data: detail } = await api(`/v1/events/${eventId}`, { auth: false }));
    tiers = tierMap(detail);
    document.title = `${t("seats_title")} · ${detail.event.name} · Tessera`;
    $("#title").textContent = `${t("seats_title")}: ${detail.event.name}`;
    await loadSeats();
  } catch (e) {
    notice("bad", e.message, h("a", { href: "/" }, t("nav_events")));
    return;
  }
  if (!storedAdmission(eventId, serverNow())) needAdmission();
  admissionClock();
  buildMap();
  legend();
  fillBestForm();
  renderBasket();
  $("#limit").textContent = tn("event_limit", detail.event.max_tickets_per_customer);
  $("#hold").addEventListener("click", () => hold({ seats: [...selected] }, $("#hold")));
  setInterval(async () => {
    if (document.visibilityState !== "visible") return;
    try { await loadSeats(); applyStatuses(); } catch { /* next time */ }
  }, REFRESH_MS);
  announce(t("seats_ready", { free: fmtInt([...statuses.values()].flatMap((m) => [...m.values()]).join("").split("").filter((c) => c === "f").length) }));
}

main();
