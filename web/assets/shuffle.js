// Recomputes the waiting room's verifiable shuffle in the browser (Web Crypto SHA-256):
// the seed matches the commitment published before opening, and a pre-open ticket's
// lottery value is SHA-256(seed ‖ event_id ‖ ticket_id).
function hexToBytes(hex) {
  if (!/^([0-9a-f]{2})+$/i.test(hex)) return null;
  return Uint8Array.from(hex.match(/../g), (b) => parseInt(b, 16));
}
const toHex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");

export async function commitmentOf(seedHex) {
  const seed = hexToBytes(seedHex);
  return seed ? toHex(await crypto.subtle.digest("SHA-256", seed)) : null;
}

export async function lotteryValue(seedHex, eventId, ticketId) {
  const seed = hexToBytes(seedHex);
  if (!seed) return null;
  const rest = new TextEncoder().encode(eventId + ticketId);
  const all = new Uint8Array(seed.length + rest.length);
  all.set(seed);
  all.set(rest, seed.length);
  return toHex(await crypto.subtle.digest("SHA-256", all));
}
