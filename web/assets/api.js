// The public API as the pages use it: identity, device, retries, challenges, errors.
// Business rules stay in the API; this module only carries requests and explains answers.
import { announce, errorText, t, h, $ } from "/assets/ui.js";

const TOKEN_KEY = "tessera.identity";
const DEVICE_KEY = "tessera.device";

/** An API error with its stable `code` and a human message from the catalogue. */
export class ApiError extends Error {
  constructor(status, code, serverMessage) {
    super(errorText(code, status));
    this.status = status;
    this.code = code || null;
    this.serverMessage = serverMessage || "";
  }
}

function randomHex(bytes) {
  const b = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

export function newKey(prefix) {
  return `${prefix}-${crypto.randomUUID ? crypto.randomUUID() : randomHex(16)}`;
}

/** This browser's device id (the queue ticket and admission are bound to it). */
export function deviceId() {
  let id = localStorage.getItem(DEVICE_KEY);
  if (!id || !/^[a-z0-9-]{8,64}$/.test(id)) {
    id = `web-${randomHex(12)}`;
    localStorage.setItem(DEVICE_KEY, id);
  }
  return id;
}

function b64urlJson(part) {
  const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
  const bin = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
  const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}

/** The claims of a JWT (not verified: the API verifies; the page only reads its own). */
export function claimsOf(token) {
  try {
    return b64urlJson(token.split(".")[1]);
  } catch {
    return null;
  }
}

/** The fan's identity, or null. Tokens with an operator role are never kept by the pages. */
export function identity() {
  const raw = localStorage.getItem(TOKEN_KEY);
  if (!raw) return null;
  const c = claimsOf(raw);
  const roles = (c && c.roles) || [];
  if (!c || roles.includes("operator") || roles.includes("gate") || c.exp * 1000 < Date.now() + 30_000) {
    localStorage.removeItem(TOKEN_KEY);
    return null;
  }
  return { token: raw, customer: c.sub, email: c.email || "", exp: c.exp };
}

export function keepIdentity(token) {
  const c = claimsOf(token);
  const roles = (c && c.roles) || [];
  if (!c || roles.includes("operator") || roles.includes("gate")) return false;
  localStorage.setItem(TOKEN_KEY, token);
  return true;
}

export function signOut() {
  localStorage.removeItem(TOKEN_KEY);
}

/** Sends the fan to sign in and back here afterwards. */
export function requireIdentity() {
  const id = identity();
  if (id) return id;
  const next = location.pathname + location.search;
  location.assign(`/signin?next=${encodeURIComponent(next)}`);
  return null;
}

const sleep = (ms, signal) =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); reject(signal.reason); }, { once: true });
  });

let powWorker = null;
/** Solves a proof-of-work challenge in a Web Worker, so the page stays responsive. */
function solveChallenge(challenge) {
  if (!powWorker) powWorker = new Worker(import.meta.resolve("/assets/pow-worker.js"));
  return new Promise((resolve, reject) => {
    const onMessage = (e) => {
      if (e.data.challenge !== challenge) return;
      powWorker.removeEventListener("message", onMessage);
      if (e.data.nonce !== null) resolve(e.data.nonce);
      else reject(new ApiError(428, "challenge_failed"));
    };
    powWorker.addEventListener("message", onMessage);
    powWorker.postMessage({ challenge });
  });
}

/** Last time (ms) the server told us, from its `date` header: corrects the fan's clock. */
export let clockOffsetMs = 0;

/**
 * Calls the API. Retries what is safe to retry: network losses with backoff (and says so),
 * 429s after `retry-after`, 503s briefly, and proof-of-work challenges once solved. A
 * request is only retried when it is idempotent (GET, DELETE, or carries an
 * `Idempotency-Key`), or the `retry` option says repeating it is harmless.
 */
export async function api(path, opts = {}) {
  const method = opts.method || "GET";
  const headers = { accept: "application/json", ...(opts.headers || {}) };
  if (opts.auth !== false) {
    const id = identity();
    if (id) headers.authorization = `Bearer ${id.token}`;
    headers["x-tessera-device"] = deviceId();
  }
  let body;
  if (opts.json !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(opts.json);
  }
  const safe = opts.retry ?? (method === "GET" || method === "DELETE" || "idempotency-key" in headers);
  let delay = 1000;
  let solved = false;
  for (let attempt = 0; ; attempt++) {
    let resp;
    try {
      resp = await fetch(path, { method, headers, body, signal: opts.signal, cache: "no-store" });
    } catch (e) {
      if (opts.signal?.aborted) throw e;
      if (!safe || attempt >= (opts.maxRetries ?? 8)) throw new ApiError(0, "network");
      const s = Math.round(delay / 1000);
      announce(t("network_retry", { s }));
      opts.onRetry?.(t("network_retry", { s }));
      await sleep(delay, opts.signal);
      delay = Math.min(delay * 2, 30_000);
      continue;
    }
    const date = Date.parse(resp.headers.get("date") || "");
    if (!Number.isNaN(date)) clockOffsetMs = date - Date.now();
    if (resp.status === 428 && !solved) {
      const challenge = resp.headers.get("x-tessera-pow-challenge");
      if (challenge) {
        opts.onRetry?.(t("solving_challenge"));
        const nonce = await solveChallenge(challenge);
        headers["x-tessera-pow"] = `${challenge}:${nonce}`;
        solved = true;
        continue;
      }
    }
    if (resp.status === 429 && attempt < (opts.maxRetries ?? 8)) {
      const after = Number(resp.headers.get("retry-after"));
      const wait = Number.isFinite(after) && after > 0 ? Math.min(after, 120) * 1000 : delay;
      const msg = t("rate_limited_wait", { s: Math.ceil(wait / 1000) });
      announce(msg);
      opts.onRetry?.(msg);
      await sleep(wait, opts.signal);
      delay = Math.min(delay * 2, 30_000);
      continue;
    }
    if (resp.status === 503 && safe && attempt < 3) {
      await sleep(delay, opts.signal);
      delay *= 2;
      continue;
    }
    if (opts.raw) return resp;
    const text = await resp.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (!resp.ok) {
      if (resp.status === 401 && opts.auth !== false) signOut();
      throw new ApiError(resp.status, data && data.code, data && data.message);
    }
    return { status: resp.status, data, headers: resp.headers };
  }
}

/** The server's idea of now (ms since the epoch). */
export function serverNow() {
  return Date.now() + clockOffsetMs;
}

/** Fills the header's sign-in area. */
export function header() {
  const slot = $("#who");
  if (!slot) return;
  const id = identity();
  if (id) {
    slot.replaceChildren(
      h("span", { class: "who" }, t("signed_in_as", { name: id.customer })),
      " ",
      h("button", { class: "btn quiet", type: "button", onclick: () => { signOut(); location.assign("/"); } }, t("sign_out")),
    );
  } else {
    const next = encodeURIComponent(location.pathname + location.search);
    slot.replaceChildren(h("a", { href: `/signin?next=${next}` }, t("sign_in")));
  }
}
