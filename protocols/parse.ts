/**
 * The one result shape of every message parser in protocols/ (RDP and MS-TSGU packets, and the
 * handshake codecs: RDCleanPath, RFB security, SPICE link), and the bounded readers they share. Like a detector's answer it is three-way, because these parsers run
 * over bytes that arrive in pieces: a TCP segment or a WebSocket message may hold half a message,
 * exactly one, or one and the start of the next.
 *
 * - `done`: a whole message, `length` bytes long, was read from the front of the input; bytes past
 *   `length` belong to whatever follows and are the caller's.
 * - `more`: the input is a proper prefix of a message that could still be valid. `need`, when
 *   known, is the total number of bytes the message takes (not how many are missing).
 * - `error`: no amount of further bytes can make this a valid message. `code` is stable and meant
 *   for code (metrics, mapping to a close reason); `reason` is for people and logs.
 *
 * Parsers are pure and total: any input gives one of the three, never an exception, and every
 * length they trust from the wire is checked against a cap first.
 */

export interface Done<T> {
  readonly kind: 'done';
  readonly value: T;
  readonly length: number;
}
export interface More {
  readonly kind: 'more';
  readonly need?: number;
}
export interface Failure<C extends string> {
  readonly kind: 'error';
  readonly code: C;
  readonly reason: string;
}

export type Parse<T, C extends string = string> = Done<T> | More | Failure<C>;

export function done<T>(value: T, length: number): Done<T> {
  return { kind: 'done', value, length };
}

export function more(need?: number): More {
  return need === undefined ? { kind: 'more' } : { kind: 'more', need };
}

/** A parse that never will succeed; `reason` defaults to the code (binary codecs often need no more). */
export function failure<C extends string>(code: C, reason: string = code): Failure<C> {
  return { kind: 'error', code, reason };
}

/** The shared 'more' answer with no size known yet. */
export const MORE_BYTES: More = Object.freeze({ kind: 'more' });

/** For builders and other non-streaming steps: a value or a coded failure. */
export type Result<T, C extends string = string> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly code: C; readonly reason: string };

export function ok<T>(value: T): Result<T, never> {
  return { ok: true, value };
}

export function err<C extends string>(code: C, reason: string): Result<never, C> {
  return { ok: false, code, reason };
}

/** A Buffer view of any Uint8Array, without copying. */
export function view(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/* Bounded readers: 0 past the end instead of a throw; parsers check lengths before they trust a value. */
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
