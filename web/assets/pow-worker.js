// Solves the edge's proof-of-work challenges off the page's main thread.
// A challenge is `v1.<difficulty>.<expires_ms>.<salt>.<mac>`; a solution is a decimal nonce
// such that SHA-256(`<challenge>:<nonce>`) starts with `difficulty` zero bits.
//
// Web Crypto's digest is asynchronous and costs a round trip per call (~30k hashes/s
// here), too slow for the hardest challenges (22 bits, ~4M hashes), so the search uses the
// small synchronous SHA-256 below (~1M hashes/s). It is checked against Web Crypto before
// it is trusted, and the edge checks every solution anyway.
const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);
const W = new Uint32Array(64);
const enc = new TextEncoder();

/**
 * SHA-256 of the first `len` bytes of `buf` into `out` (8 words). `buf` is used as the
 * padded message, so it must have room for the padding (`len` + 72 bytes).
 */
function sha256(buf, len, out) {
  const blocks = Math.ceil((len + 9) / 64);
  const end = blocks * 64;
  buf.fill(0, len, end);
  buf[len] = 0x80;
  const bitLen = len * 8;
  buf[end - 4] = bitLen >>> 24; buf[end - 3] = bitLen >>> 16; buf[end - 2] = bitLen >>> 8; buf[end - 1] = bitLen;
  let h0 = 0x6a09e667, h1 = 0xbb67ae85, h2 = 0x3c6ef372, h3 = 0xa54ff53a;
  let h4 = 0x510e527f, h5 = 0x9b05688c, h6 = 0x1f83d9ab, h7 = 0x5be0cd19;
  for (let off = 0; off < end; off += 64) {
    for (let i = 0; i < 16; i++) {
      const j = off + i * 4;
      W[i] = (buf[j] << 24) | (buf[j + 1] << 16) | (buf[j + 2] << 8) | buf[j + 3];
    }
    for (let i = 16; i < 64; i++) {
      const a = W[i - 15], b = W[i - 2];
      const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
      const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
      W[i] = (W[i - 16] + s0 + W[i - 7] + s1) | 0;
    }
    let a = h0, b = h1, c = h2, d = h3, e = h4, f = h5, g = h6, h = h7;
    for (let i = 0; i < 64; i++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (h + S1 + ((e & f) ^ (~e & g)) + K[i] + W[i]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    h0 = (h0 + a) | 0; h1 = (h1 + b) | 0; h2 = (h2 + c) | 0; h3 = (h3 + d) | 0;
    h4 = (h4 + e) | 0; h5 = (h5 + f) | 0; h6 = (h6 + g) | 0; h7 = (h7 + h) | 0;
  }
  out[0] = h0; out[1] = h1; out[2] = h2; out[3] = h3; out[4] = h4; out[5] = h5; out[6] = h6; out[7] = h7;
}

/** SHA-256 of a byte array (allocates; for the self-test). */
function sha256Bytes(bytes, out) {
  const buf = new Uint8Array(bytes.length + 72);
  buf.set(bytes);
  sha256(buf, bytes.length, out);
}

function leadingZeroBits(words) {
  let n = 0;
  for (const w of words) {
    if (w === 0) { n += 32; continue; }
    return n + Math.clz32(w);
  }
  return n;
}

let trusted = null;
/** Whether the synchronous SHA-256 agrees with Web Crypto on this browser. */
async function selfTest() {
  if (trusted !== null) return trusted;
  const msg = enc.encode("tessera-pow-self-test:12345");
  const ref = new DataView(await crypto.subtle.digest("SHA-256", msg));
  const mine = new Uint32Array(8);
  sha256Bytes(msg, mine);
  trusted = mine.every((w, i) => (w >>> 0) === ref.getUint32(i * 4));
  return trusted;
}

async function solve(challenge) {
  const difficulty = Number(challenge.split(".")[1]);
  if (!Number.isInteger(difficulty) || difficulty < 1 || difficulty > 32) return null;
  const prefix = `${challenge}:`;
  if (await selfTest()) {
    const out = new Uint32Array(8);
    const head = enc.encode(prefix);
    const buf = new Uint8Array(head.length + 10 + 72);
    buf.set(head);
    for (let n = 0; n < 2 ** 32; n++) {
      // The nonce's decimal digits after the prefix, without allocating.
      let len = head.length;
      const digits = String(n);
      for (let i = 0; i < digits.length; i++) buf[len++] = digits.charCodeAt(i);
      sha256(buf, len, out);
      if (leadingZeroBits(out) >= difficulty) return digits;
    }
    return null;
  }
  // Fall back to Web Crypto, in batches.
  const batch = 512;
  for (let base = 0; base < 2 ** 32; base += batch) {
    const digests = await Promise.all(
      Array.from({ length: batch }, (_, i) => crypto.subtle.digest("SHA-256", enc.encode(prefix + (base + i)))),
    );
    for (let i = 0; i < batch; i++) {
      const v = new DataView(digests[i]);
      const words = [0, 1, 2, 3, 4, 5, 6, 7].map((j) => v.getUint32(j * 4));
      if (leadingZeroBits(words) >= difficulty) return String(base + i);
    }
  }
  return null;
}

self.addEventListener("message", async (e) => {
  const { challenge } = e.data;
  let nonce = null;
  try { nonce = await solve(challenge); } catch { nonce = null; }
  self.postMessage({ challenge, nonce });
});
