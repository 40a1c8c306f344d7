/**
 * RFC 4648 section 6 base32 in lowercase without padding: tickets must be DNS-label-safe
 * (lowercase letters and digits), so they can ride in a host name (CONTRACT section 3).
 */
const ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';
const LOOKUP = new Int8Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) LOOKUP[ALPHABET.charCodeAt(i)] = i;

export function base32Encode(bytes: Uint8Array): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    value &= (1 << bits) - 1;
  }
  if (bits > 0) out += ALPHABET[(value << (5 - bits)) & 31];
  return out;
}

/** Returns undefined on any character outside the alphabet or non-canonical trailing bits. */
export function base32Decode(text: string, expectedBytes: number): Buffer | undefined {
  if (text.length !== Math.ceil((expectedBytes * 8) / 5)) return undefined;
  const out = Buffer.alloc(expectedBytes);
  let bits = 0;
  let value = 0;
  let i = 0;
  for (let k = 0; k < text.length; k++) {
    const c = text.charCodeAt(k);
    const v = c < 128 ? (LOOKUP[c] ?? -1) : -1;
    if (v < 0) return undefined;
    value = (value << 5) | v;
    bits += 5;
    if (bits >= 8) {
      out[i++] = (value >>> (bits - 8)) & 0xff;
      bits -= 8;
    }
    value &= (1 << bits) - 1;
  }
  if (value !== 0) return undefined;
  return out;
}
