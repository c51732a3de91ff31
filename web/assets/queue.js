// The waiting room: join once, then wait for news. The status request is a long poll
// (`wait_s`, `known`): the edge answers as soon as the state changes, so "it's your turn"
// arrives without the page asking more often than every 20 s. The fan's event stream is
// a second, faster nudge. Nothing here reloads the page.
import { api, header, requireIdentity, serverNow, ApiError } from "/assets/api.js";
import { $, h, t, tn, fmtInt, fmtWaitRange, fmtClock, fmtTime, announce, notice, focusOn, pathId, show } from "/assets/ui.js";
import { storedTicket, keepTicket, forgetTicket, keepAdmission, forgetAdmission } from "/assets/event-common.js";

header();
const eventId = pathId(1);
const POLL_S = 20;
const me = requireIdentity();
let last = null;
let firstAhead = null;
let stopped = false;
let wake = null;
// Set by the event stream's "your turn": the edge may learn of it a moment later, so ask
// again a few times a second apart instead of waiting for the next long poll.
let turnHint = 0;

function nonce() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

async function join() {
  const existing = storedTicket(eventId);
  if (existing && existing.customer === me.customer) return existing;
  const { data } = await api(`/v1/events/${eventId}/queue`, {
    method: "POST", json: { client_nonce: nonce() }, retry: true,
    onRetry: (msg) => { $("#state-text").textContent = msg; },
  });
  const ticket = { ticket: data.ticket, ticket_id: data.ticket_id, phase: data.phase, customer: me.customer };
  keepTicket(eventId, ticket);
  return ticket;
}

function setMeter(pct) {
  const v = Math.max(0, Math.min(100, Math.round(pct)));
  $("#meter-bar").style.width = `${v}%`;
  $("#meter").setAttribute("aria-valuenow", String(v));
  $("#meter").setAttribute("aria-valuetext", t("queue_progress", { pct: v }));
}

function waitText(s) {
  if (s.wait_s && Number.isFinite(s.wait_s.low) && Number.isFinite(s.wait_s.high)) return fmtWaitRange(s.wait_s.low, s.wait_s.high);
  if (Number.isFinite(s.estimated_wait_s)) return fmtWaitRange(s.estimated_wait_s, s.estimated_wait_s);
  return null;
}

function chanceText(c) {
  if (typeof c !== "number" || !(c >= 0 && c <= 1)) return null;
  const pct = Math.round(c * 100);
  const word = c >= 0.8 ? t("chance_good") : c >= 0.4 ? t("chance_fair") : t("chance_low");
  return `${word} · ${pct} %`;
}

let admissionTimer = null;
function render(s) {
  const prev = last;
  last = s;
  const title = $("#state-title");
  const text = $("#state-text");
  const actions = $("#actions");
  const hero = $("#hero");
  hero.classList.toggle("your-turn", s.state === "admitted");
  // The same admission answered again (a nudge from the event stream, a long poll that ran
  // out) keeps its button: rebuilding it would take keyboard focus and a half-made click
  // away from the fan.
  const sameTurn = s.state === "admitted" && prev && prev.state === "admitted"
    && prev.admission_token === s.admission_token && $("#choose") !== null;
  if (!sameTurn) {
    actions.replaceChildren();
    show(actions, false);
  }
  show($("#facts"), s.state === "waiting" || s.state === "pre_open" || s.state === "paused");
  show($("#keep-open"), s.state !== "admitted" && s.state !== "closed");

  const ahead = Number.isFinite(s.ahead) ? s.ahead : null;
  if (ahead !== null && (firstAhead === null || ahead > firstAhead)) {
    firstAhead = ahead;
    sessionStorage.setItem(`tessera.first-ahead.${eventId}`, String(ahead));
  }
  $("#ahead").textContent = ahead === null ? "–" : fmtInt(ahead);
  $("#wait").textContent = waitText(s) || "–";
  $("#chance").textContent = chanceText(s.chance) || "–";

  let say = null;
  switch (s.state) {
    case "pre_open":
      title.textContent = t("queue_pre_open_title");
      text.textContent = t("queue_pre_open_text");
      setMeter(5);
      say = t("queue_pre_open_title");
      break;
    case "waiting": {
      title.replaceChildren(h("span", { class: "pulse", "aria-hidden": "true" }), t("queue_waiting_title"));
      const parts = [ahead === null ? t("queue_waiting_text") : tn("queue_ahead_text", ahead)];
      const w = waitText(s);
      if (w) parts.push(t("queue_wait_text", { wait: w }));
      text.textContent = parts.join(" ");
      setMeter(firstAhead ? 100 * (1 - (ahead ?? firstAhead) / Math.max(firstAhead, 1)) : 10);
      // Announce moves in steps, not every answer.
      if (!prev || prev.state !== "waiting" || (ahead !== null && prev.ahead - ahead >= Math.max(1, Math.ceil((firstAhead || 10) / 10)))) {
        say = text.textContent;
      }
      break;
    }
    case "admitted": {
      title.textContent = t("queue_admitted_title");
      keepAdmission(eventId, s.admission_token, s.admission_expires_at_ms);
      text.textContent = s.admission_expires_at_ms
        ? t("queue_admitted_until", { time: fmtTime(s.admission_expires_at_ms) })
        : t("queue_admitted_text");
      setMeter(100);
      if (sameTurn) break;
      const go = h("a", { class: "btn big", href: `/events/${eventId}/seats`, id: "choose" }, t("queue_choose_seats"));
      actions.append(go);
      show(actions, true);
      say = `${t("queue_admitted_title")} ${text.textContent}`;
      if (!prev || prev.state !== "admitted") focusOn(title);
      clearInterval(admissionTimer);
      if (s.admission_expires_at_ms) {
        admissionTimer = setInterval(() => {
          const left = (s.admission_expires_at_ms - serverNow()) / 1000;
          if (left <= 0) { clearInterval(admissionTimer); forgetAdmission(eventId); refresh(); return; }
          go.textContent = `${t("queue_choose_seats")} (${fmtClock(left)})`;
        }, 1000);
      }
      break;
    }
    case "paused":
      title.textContent = t("queue_paused_title");
      text.textContent = t("queue_paused_text");
      say = title.textContent;
      break;
    case "sold_out": {
      title.textContent = t("queue_sold_out_title");
      if (s.waiting_list) {
        text.textContent = t("queue_on_waiting_list");
      } else {
        text.textContent = t("queue_sold_out_text");
        actions.append(
          h("button", { class: "btn", type: "button", id: "stay", onclick: stayOnList }, t("queue_stay")),
          h("button", { class: "btn secondary", type: "button", id: "leave", onclick: leave }, t("queue_leave")));
        show(actions, true);
      }
      setMeter(0);
      say = `${title.textContent} ${text.textContent}`;
      if (!prev || prev.state !== "sold_out") focusOn(title);
      break;
    }
    case "closed":
      title.textContent = t("queue_closed_title");
      text.textContent = t("queue_closed_text");
      say = title.textContent;
      break;
    default:
      title.textContent = t("queue_unknown_state");
  }
  if (say) announce(say);
}

async function stayOnList() {
  try {
    await api(`/v1/events/${eventId}/queue/waiting-list`, { method: "POST", json: {}, headers: { "x-tessera-queue-ticket": storedTicket(eventId).ticket }, retry: true });
    notice("ok", t("queue_on_waiting_list"));
    announce(t("queue_on_waiting_list"));
    refresh();
  } catch (e) {
    notice("bad", e.message);
  }
}

async function leave() {
  try {
    await api(`/v1/events/${eventId}/queue`, { method: "DELETE", headers: { "x-tessera-queue-ticket": storedTicket(eventId).ticket } });
  } catch (e) {
    if (!(e instanceof ApiError) || e.status >= 500) { notice("bad", e.message); return; }
  }
  stopped = true;
  forgetTicket(eventId);
  notice("ok", t("queue_left"), h("a", { href: `/events/${eventId}` }, t("back_to_event")));
  $("#state-title").textContent = t("queue_left");
  show($("#actions"), false);
  focusOn($("#state-title"));
}

/** Asks for news at once (a wake-up from the event stream, or the admission ran out). */
function refresh() {
  if (wake) wake();
}

async function status(known, signal) {
  const ticket = storedTicket(eventId);
  const q = known ? `?wait_s=${POLL_S}&known=${encodeURIComponent(known)}` : "";
  const { data } = await api(`/v1/events/${eventId}/queue${q}`, {
    headers: { "x-tessera-queue-ticket": ticket.ticket }, signal,
    onRetry: (msg) => { $("#state-text").textContent = msg; },
  });
  return data;
}

async function loop() {
  let known = null;
  while (!stopped) {
    const started = performance.now();
    const ctl = new AbortController();
    wake = () => ctl.abort(new DOMException("wake", "AbortError"));
    let s = null;
    try {
      s = await status(known, ctl.signal);
    } catch (e) {
      if (e && e.name === "AbortError") { known = null; continue; }
      if (e instanceof ApiError && ["queue_ticket_invalid", "queue_token_wrong_device", "queue_token_wrong_event"].includes(e.code)) {
        // The stored ticket is not this fan's (another sign-in, or it expired): join again.
        forgetTicket(eventId);
        await join();
        known = null;
        continue;
      }
      notice("bad", e.message);
      s = null;
    }
    // A new state (or the first answer) is followed at once by a long poll on it: the edge
    // holds that request until the state changes. An answer that brings nothing new (the
    // long poll ran out, or a host that answers at once) and a failure are paced: never more
    // than one request every POLL_S seconds unless woken.
    const news = s !== null && s.state !== known;
    if (s) {
      notice(null, "");
      render(s);
      known = s.state;
      if (s.state === "closed") return;
    }
    let left = news ? 0 : POLL_S * 1000 - (performance.now() - started);
    if (turnHint > 0 && s && s.state !== "admitted") { turnHint -= 1; left = 1000; }
    if (s && s.state === "admitted") turnHint = 0;
    if (left > 0) {
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        wake = () => { clearTimeout(timer); known = null; resolve(); };
      });
    }
  }
}

/** The fan's own event stream: a nudge when their place moves or their turn comes. */
async function stream() {
  for (let delay = 2000; !stopped; delay = Math.min(delay * 2, 60_000)) {
    try {
      const resp = await api(`/v1/events/${eventId}/stream`, { raw: true, headers: { accept: "text/event-stream" }, maxRetries: 0 });
      if (!resp.ok || !resp.body) throw new Error("stream");
      delay = 2000;
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const name = /^event: ?(.*)$/m.exec(block)?.[1];
          if (name === "queue.your_turn") { turnHint = 5; refresh(); }
        }
      }
    } catch { /* the long poll carries on without it */ }
    await new Promise((r) => setTimeout(r, delay));
  }
}

async function main() {
  if (!me) return;
  if (!eventId) { notice("bad", t("bad_link")); return; }
  $("#back").href = `/events/${eventId}`;
  $("#fairness").href = `/events/${eventId}#fair-title`;
  firstAhead = Number(sessionStorage.getItem(`tessera.first-ahead.${eventId}`)) || null;
  try {
    const { data } = await api(`/v1/events/${eventId}`, { auth: false });
    $("#event-name").textContent = data.event.name;
    document.title = `${t("queue_doc_title")} · ${data.event.name} · Tessera`;
  } catch (e) {
    notice("bad", e.message, h("a", { href: "/" }, t("nav_events")));
    $("#state-title").textContent = t("queue_cannot_join");
    return;
  }
  try {
    await join();
  } catch (e) {
    notice("bad", e.message);
    $("#state-title").textContent = t("queue_cannot_join");
    return;
  }
  stream();
  await loop();
}

main();
