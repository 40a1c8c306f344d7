/**
 * The result shape every binary parser in protocols/ returns, and the bounded readers they share.
 *
 * A parse is three-way and total, like a detector's answer: 'ok' with the value and the number of
 * bytes it took, 'more' while the input is a proper prefix of something that could still parse,
 * 'error' with a stable code once it never will. Parsers check lengths before they read, and the
 * readers below return 0 past the end instead of throwing, so no input can make a parser throw.
 */

export type Parse<T, E extends string> =
  | { readonly kind: 'ok'; readonly value: T; readonly length: number }
  | { readonly kind: 'more' }
  | { readonly kind: 'error'; readonly code: E };

export const MORE_BYTES: { readonly kind: 'more' } = Object.freeze({ kind: 'more' });

export function parsed<T>(value: T, length: number): { readonly kind: 'ok'; readonly value: T; readonly length: number } {
  return { kind: 'ok', value, length };
}

export function failed<E extends string>(code: E): { readonly kind: 'error'; readonly code: E } {
  return { kind: 'error', code };
}

export const u8 = (b: Uint8Array, at: number): number => b[at] ?? 0;
export const u16be = (b: Uint8Array, at: number): number => (u8(b, at) << 8) | u8(b, at + 1);
export const u16le = (b: Uint8Array, at: number): number => u8(b, at) | (u8(b, at + 1) << 8);
export const u32le = (b: Uint8Array, at: number): number =>
  (u8(b, at) | (u8(b, at + 1) << 8) | (u8(b, at + 2) << 16) | (u8(b, at + 3) << 24)) >>> 0;
export const u64le = (b: Uint8Array, at: number): bigint =>
  BigInt(u32le(b, at)) | (BigInt(u32le(b, at + 4)) << 32n);

/** Does `b` hold the ASCII bytes of `text` at `at`? */
export function asciiAt(b: Uint8Array, at: number, text: string): boolean {
  if (at + text.length > b.length) return false;
  for (let i = 0; i < text.length; i++) if (b[at + i] !== text.charCodeAt(i)) return false;
  return true;
}

/** Index of the first CR LF at or after `from`, or -1. */
export function indexOfCrlf(b: Uint8Array, from: number, end = b.length): number {
  for (let i = from; i + 1 < end; i++) if (b[i] === 0x0d && b[i + 1] === 0x0a) return i;
  return -1;
}

/**
 * UTF-16LE text as Windows writes it: real clients count the terminating NUL in the length (FreeRDP
 * 2.11's preconnection blob even carries two), so trailing NULs are dropped. An odd byte count is
 * not UTF-16 and gives null.
 */
export function utf16z(b: Uint8Array): string | null {
  if (b.length % 2 !== 0) return null;
  let end = b.length;
  while (end >= 2 && b[end - 1] === 0 && b[end - 2] === 0) end -= 2;
  return Buffer.from(b.buffer, b.byteOffset, end).toString('utf16le');
}

/** `text` as UTF-16LE with one terminating NUL, the way Windows and FreeRDP send strings. */
export function toUtf16z(text: string): Buffer {
  return Buffer.from(`${text}\0`, 'utf16le');
}

/** Encoders take values from our own code: an out-of-range one is a bug, reported at once. */
export function checkUint(name: string, value: number, bits: 8 | 16 | 32): void {
  if (!Number.isInteger(value) || value < 0 || value >= 2 ** bits) {
    throw new RangeError(`${name} must be an unsigned ${bits}-bit integer, got ${value}`);
  }
}
