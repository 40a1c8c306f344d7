/**
 * WebSocket framing (RFC 6455 section 5), server side, for the RD Gateway's upgraded
 * `RDG_OUT_DATA` (MS-TSGU 2.2.3.3.1): FreeRDP's handshake is not one a stock WebSocket library
 * accepts (its Sec-WebSocket-Key is not base64), so the gateway frames the connection itself.
 *
 * Client frames must be masked (5.3); payload lengths are checked against a cap as soon as the
 * length field is in, before any payload is awaited; control frames are at most 125 bytes and
 * never fragmented (5.5); reserved bits and opcodes are refused (no extension is negotiated).
 * Server frames are unmasked.
 */
import { type Parse, MORE_BYTES, done, failure, more, u16be, u8 } from './parse.js';

export const Opcode = {
  CONTINUATION: 0x0,
  TEXT: 0x1,
  BINARY: 0x2,
  CLOSE: 0x8,
  PING: 0x9,
  PONG: 0xa,
} as const;

export interface Frame {
  readonly fin: boolean;
  readonly opcode: number;
  /** Unmasked; a fresh buffer. */
  readonly payload: Buffer;
}

export type FrameError = 'reserved-bits' | 'bad-opcode' | 'not-masked' | 'control-too-long' | 'control-fragmented' | 'payload-too-large' | 'bad-length';

const KNOWN = new Set<number>(Object.values(Opcode));
const isControl = (opcode: number): boolean => (opcode & 0x8) !== 0;

/** One client frame at the start of `b`; `maxPayload` bounds data frames (control frames: 125). */
export function parseFrame(b: Uint8Array, maxPayload: number): Parse<Frame, FrameError> {
  if (b.length < 2) return MORE_BYTES;
  const b0 = u8(b, 0);
  const b1 = u8(b, 1);
  if (b0 & 0x70) return failure('reserved-bits');
  const opcode = b0 & 0x0f;
  const fin = (b0 & 0x80) !== 0;
  if (!KNOWN.has(opcode)) return failure('bad-opcode');
  if (!(b1 & 0x80)) return failure('not-masked');
  let length = b1 & 0x7f;
  let at = 2;
  if (isControl(opcode)) {
    if (length > 125) return failure('control-too-long');
    if (!fin) return failure('control-fragmented');
  }
  if (length === 126) {
    if (b.length < 4) return MORE_BYTES;
    length = u16be(b, 2);
    at = 4;
  } else if (length === 127) {
    if (b.length < 10) return MORE_BYTES;
    // The top 32 bits must be 0 for any payload we take; the most significant bit always.
    if (u8(b, 2) & 0x80) return failure('bad-length');
    if (u8(b, 2) || u8(b, 3) || u8(b, 4) || u8(b, 5)) return failure('payload-too-large');
    length = ((u8(b, 6) << 24) | (u8(b, 7) << 16) | (u8(b, 8) << 8) | u8(b, 9)) >>> 0;
    at = 10;
  }
  if (length > maxPayload) return failure('payload-too-large');
  // The whole frame's size is known from here: the caller can wait for all of it at once.
  if (b.length < at + 4 + length) return more(at + 4 + length);
  const start = at + 4;
  return done({ fin, opcode, payload: unmask(b.subarray(start, start + length), b.subarray(at, at + 4)) }, start + length);
}

/**
 * `data` XOR the 4-byte `mask`, into a fresh buffer: a word at a time (its own ArrayBuffer, so
 * aligned; the mask read in the machine's byte order, like the words), then the tail bytes.
 */
export function unmask(data: Uint8Array, mask: Uint8Array): Buffer {
  const n = data.length;
  const out = Buffer.allocUnsafeSlow(n);
  out.set(data);
  const words = n >>> 2;
  if (words > 0) {
    const m = new Uint32Array(Uint8Array.from(mask.subarray(0, 4)).buffer)[0] ?? 0;
    const w = new Uint32Array(out.buffer, out.byteOffset, words);
    for (let i = 0; i < words; i++) w[i]! ^= m;
  }
  for (let i = words << 2; i < n; i++) out[i] = u8(data, i) ^ u8(mask, i & 3);
  return out;
}

/** The header of an unmasked server frame with FIN set, for a payload written after it. */
export function frameHeader(opcode: number, length: number): Buffer {
  if (length < 126) return Buffer.from([0x80 | opcode, length]);
  if (length < 0x10000) return Buffer.from([0x80 | opcode, 126, length >>> 8, length & 0xff]);
  const h = Buffer.alloc(10);
  h[0] = 0x80 | opcode;
  h[1] = 127;
  h.writeUInt32BE(length, 6);
  return h;
}

/** A server frame: unmasked, FIN set. */
export function encodeFrame(opcode: number, payload: Uint8Array = Buffer.alloc(0)): Buffer {
  return Buffer.concat([frameHeader(opcode, payload.length), payload]);
}

/** A close frame's payload: the code, then a reason cut to fit the 125-byte control limit. */
export function closePayload(code: number, reason = ''): Buffer {
  const text = Buffer.from(reason, 'utf8').subarray(0, 123);
  const out = Buffer.allocUnsafe(2 + text.length);
  out.writeUInt16BE(code, 0);
  text.copy(out, 2);
  return out;
}

/** A client frame (masked), for tests and peers that play the client. */
export function encodeClientFrame(opcode: number, payload: Uint8Array, mask: Uint8Array = Buffer.from([0x12, 0x34, 0x56, 0x78]), fin = true): Buffer {
  const n = payload.length;
  const headerLength = n < 126 ? 2 : n < 0x10000 ? 4 : 10;
  const out = Buffer.allocUnsafe(headerLength + 4 + n);
  out[0] = (fin ? 0x80 : 0) | opcode;
  if (n < 126) {
    out[1] = 0x80 | n;
  } else if (n < 0x10000) {
    out[1] = 0x80 | 126;
    out.writeUInt16BE(n, 2);
  } else {
    out[1] = 0x80 | 127;
    out.writeUInt32BE(0, 2);
    out.writeUInt32BE(n, 6);
  }
  out.set(mask.subarray(0, 4), headerLength);
  for (let i = 0; i < n; i++) out[headerLength + 4 + i] = (payload[i] ?? 0) ^ (mask[i & 3] ?? 0);
  return out;
}
