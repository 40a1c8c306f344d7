/**
 * The one result shape of every message parser in protocols/ (the handshake codecs: RDCleanPath,
 * RFB security, SPICE link). Like a detector's answer it is three-way, because these parsers run
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

export type Parse<T, C extends string = string> =
  | { readonly kind: 'done'; readonly value: T; readonly length: number }
  | { readonly kind: 'more'; readonly need?: number }
  | { readonly kind: 'error'; readonly code: C; readonly reason: string };

export function done<T>(value: T, length: number): Parse<T, never> {
  return { kind: 'done', value, length };
}

export function more(need?: number): Parse<never, never> {
  return need === undefined ? { kind: 'more' } : { kind: 'more', need };
}

export function failure<C extends string>(code: C, reason: string): Parse<never, C> {
  return { kind: 'error', code, reason };
}

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
