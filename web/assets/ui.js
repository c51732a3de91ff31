// Shared page helpers: strings, the live region, formatting, focus, the header.
import strings from "/assets/strings.js";

export const lang = document.documentElement.lang || "en";

/** A UI string with `{name}` placeholders filled in. */
export function t(key, vars = {}) {
  let s = strings.ui[key];
  if (s === undefined) s = key;
  return s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m));
}

/** A plural-aware string: `key_one`, `key_other` (and whatever the language's rules name). */
export function tn(key, n, vars = {}) {
  const form = new Intl.PluralRules(lang).select(n);
  const k = `${key}_${form}` in strings.ui ? `${key}_${form}` : `${key}_other`;
  return t(k, { n: fmtInt(n), ...vars });
}

/** The human message for an API error code (falls back on the HTTP status class). */
export function errorText(code, status) {
  if (code && strings.errors[code]) return strings.errors[code];
  if (status === 429) return strings.errors.rate_limited;
  if (status >= 500) return strings.errors.unavailable;
  if (status === 401) return strings.errors.unauthenticated;
  if (status === 403) return strings.errors.forbidden;
  if (status === 404) return strings.errors.not_found;
  return strings.errors.other;
}

export function catalogueHas(code) {
  return Boolean(strings.errors[code]);
}

export const $ = (sel, root = document) => root.querySelector(sel);

/** Creates an element: `h("p", {class: "x"}, "text", child)`. */
export function h(tag, attrs = {}, ...children) {
  const svg = tag.startsWith("svg:");
  const el = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

let lastAnnounced = "";
/** Says something in the page's polite live region (`role="status"`). */
export function announce(text) {
  const region = document.getElementById("live");
  if (!region || !text || text === lastAnnounced) return;
  lastAnnounced = text;
  region.textContent = "";
  // A fresh text node after a tick is read out even if the text repeats an older one.
  setTimeout(() => { region.textContent = text; }, 50);
}

/** Shows a notice (kind: info, ok, warn, bad) in `#notice`, or clears it. */
export function notice(kind, text, action) {
  const box = document.getElementById("notice");
  if (!box) return;
  box.className = `notice ${kind || ""}`;
  box.replaceChildren();
  if (!text) return;
  box.append(h("p", {}, text));
  if (action) box.append(h("p", {}, action));
  if (kind === "bad" || kind === "warn") box.setAttribute("role", "alert");
  else box.removeAttribute("role");
}

/** Moves focus to a heading or region after a step changes (WCAG 2.4.3). */
export function focusOn(el) {
  if (!el) return;
  if (el.tabIndex < 0 && !el.hasAttribute("tabindex")) el.setAttribute("tabindex", "-1");
  el.focus({ preventScroll: false });
}

export function fmtInt(n) {
  return new Intl.NumberFormat(lang).format(n);
}

export function fmtMoney(minor, currency) {
  const digits = new Intl.NumberFormat(lang, { style: "currency", currency }).resolvedOptions()
    .maximumFractionDigits;
  return new Intl.NumberFormat(lang, { style: "currency", currency }).format(minor / 10 ** digits);
}

export function fmtDate(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return new Intl.DateTimeFormat(lang, { dateStyle: "full", timeStyle: "short" }).format(d);
}

export function fmtTime(ms) {
  return new Intl.DateTimeFormat(lang, { timeStyle: "short" }).format(new Date(ms));
}

/** `m:ss` (or `h:mm:ss`) for a number of seconds. */
export function fmtClock(totalS) {
  const s = Math.max(0, Math.floor(totalS));
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return hh > 0 ? `${hh}:${String(mm).padStart(2, "0")}:${ss}` : `${mm}:${ss}`;
}

/** "about 2–4 minutes" for a range of seconds. */
export function fmtWaitRange(low, high) {
  const mins = (s) => Math.max(1, Math.round(s / 60));
  if (high < 60) return t("wait_under_minute");
  if (mins(low) === mins(high)) return tn("wait_minutes", mins(high));
  return t("wait_range", { low: fmtInt(mins(low)), high: fmtInt(mins(high)) });
}

/** The path segment after `prefix`, validated as an id (a-z, 0-9, `-`, `_`). */
export function pathId(index) {
  const seg = location.pathname.split("/").filter(Boolean)[index] || "";
  return /^[A-Za-z0-9_-]{1,64}$/.test(seg) ? seg : null;
}

export function param(name, pattern) {
  const v = new URLSearchParams(location.search).get(name);
  return v && pattern.test(v) ? v : null;
}

export function show(el, yes) {
  if (el) el.hidden = !yes;
}
