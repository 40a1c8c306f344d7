/**
 * Native RDP on the one port: what a client sends first, and the answers the gateway writes itself.
 *
 * - TPKT (RFC 1006 section 6) carrying an X.224 Connection Request (ISO 8073 13.3, MS-RDPBCGR
 *   2.2.1.1): a routing token or a `Cookie: mstshash=` line, then an optional RDP_NEG_REQ
 *   (2.2.1.1.1) and RDP_NEG_CORRELATION_INFO (2.2.1.1.2);
 * - before it, optionally, an MS-RDPEPS preconnection PDU (2.2.1.1 v1, 2.2.1.2 v2 with a UTF-16LE
 *   blob), which FreeRDP sends for `/pcb:` and `/pcid:`;
 * - the X.224 Connection Confirm (MS-RDPBCGR 2.2.1.2) with RDP_NEG_RSP or RDP_NEG_FAILURE.
 *
 * Everything is pure and bounded. The X.224 length indicator is one byte, so a Connection Request
 * or Confirm is at most 259 bytes whatever its TPKT header claims; a preconnection blob is capped
 * (PCB_MAX_CHARS by default). Parsers return codes, never throw.
 *
 * What real clients send (FreeRDP 2.11.7, captured; fixtures in test/fixtures/rdp-packets.ts):
 * `/load-balance-info:<s>` puts `<s>` verbatim as the routing token line, with no `Cookie: msts=`
 * prefix (as mstsc does with an .rdp file's loadbalanceinfo), so a token is whatever line comes
 * before the negotiation request; `/pcb:<s>` sends a v2 PDU whose cchPCB counts two NULs. Answered
 * with RDP_NEG_FAILURE, FreeRDP reconnects twice, downgrading (SSL only, then standard RDP
 * security), unless `/sec:` forces one protocol: the routing token comes again each time, the
 * preconnection PDU only the first time. A ticket in the blob therefore does not reach those
 * retries; a refusal costs three connections.
 */
import { type Detection, type Detector, MORE, NO, match } from './detector.js';
import {
  type Parse, type Result, MORE_BYTES, asciiAt, checkUint, err, failure, indexOfCrlf, done, ok, toUtf16z, u16be, u16le, u32le, u8, utf16z,
} from './parse.js';

export const TPKT_VERSION = 3;
export const TPKT_HEADER_LENGTH = 4;
/** X.224 TPDU codes (ISO 8073 13.3.1, 13.4.1), class 0 with CDT 0 as RDP uses them. */
export const X224_CONNECTION_REQUEST = 0xe0;
export const X224_CONNECTION_CONFIRM = 0xd0;
/** TPKT header, then LI, code, DST-REF, SRC-REF, class option. */
export const X224_FIXED_LENGTH = TPKT_HEADER_LENGTH + 7;
/** The length indicator is one byte and 255 is reserved: LI <= 254, so a CR/CC is <= 259 bytes. */
export const X224_MAX_LENGTH = TPKT_HEADER_LENGTH + 1 + 254;

/** requestedProtocols / selectedProtocol bits (MS-RDPBCGR 2.2.1.1.1). */
export const RdpProtocol = {
  RDP: 0x00,
  SSL: 0x01,
  HYBRID: 0x02,
  RDSTLS: 0x04,
  HYBRID_EX: 0x08,
  RDSAAD: 0x10,
} as const;

/** The type byte of the negotiation structures. */
export const NegType = {
  REQUEST: 0x01,
  RESPONSE: 0x02,
  FAILURE: 0x03,
  CORRELATION_INFO: 0x06,
} as const;

/** RDP_NEG_REQ flags (2.2.1.1.1). */
export const NegRequestFlag = {
  RESTRICTED_ADMIN_MODE_REQUIRED: 0x01,
  REDIRECTED_AUTHENTICATION_MODE_REQUIRED: 0x02,
  CORRELATION_INFO_PRESENT: 0x08,
} as const;

/** RDP_NEG_RSP flags (2.2.1.2.1). */
export const NegResponseFlag = {
  EXTENDED_CLIENT_DATA_SUPPORTED: 0x01,
  DYNVC_GFX_PROTOCOL_SUPPORTED: 0x02,
  NEGRSP_FLAG_RESERVED: 0x04,
  RESTRICTED_ADMIN_MODE_SUPPORTED: 0x08,
  REDIRECTED_AUTHENTICATION_MODE_SUPPORTED: 0x10,
} as const;

/** RDP_NEG_FAILURE failureCode (2.2.1.2.2). */
export const NegFailureCode = {
  SSL_REQUIRED_BY_SERVER: 0x01,
  SSL_NOT_ALLOWED_BY_SERVER: 0x02,
  SSL_CERT_NOT_ON_SERVER: 0x03,
  INCONSISTENT_FLAGS: 0x04,
  HYBRID_REQUIRED_BY_SERVER: 0x05,
  SSL_WITH_USER_AUTH_REQUIRED_BY_SERVER: 0x06,
} as const;

const NEG_LENGTH = 8;
const CORRELATION_INFO_LENGTH = 36;
const MSTSHASH = 'Cookie: mstshash=';
const MSTS = 'Cookie: msts=';

// ---------------------------------------------------------------------------------------------
// Detectors

export interface RdpInfo {
  /** Bytes the Connection Request occupies (its TPKT length). */
  readonly length: number;
}

/**
 * TPKT version 3 + X.224 Connection Request: 03 00 <len> <LI = len - 5> E0. Matches on those six
 * bytes; the whole request (`length` bytes, at most 259) is read and parsed after hand-off.
 */
export const rdpDetector = {
  name: 'rdp',
  detect(head: Uint8Array): Detection<RdpInfo> {
    if (head.length === 0) return MORE;
    if (head[0] !== TPKT_VERSION) return NO;
    if (head.length < 2) return MORE;
    if (head[1] !== 0x00) return NO;
    if (head.length < 3) return MORE;
    // The high length byte: a CR is 11..259 bytes long.
    if (u8(head, 2) > X224_MAX_LENGTH >> 8) return NO;
    if (head.length < 4) return MORE;
    const length = u16be(head, 2);
    if (length < X224_FIXED_LENGTH || length > X224_MAX_LENGTH) return NO;
    if (head.length < 5) return MORE;
    if (u8(head, 4) !== length - 5) return NO;
    if (head.length < 6) return MORE;
    return u8(head, 5) === X224_CONNECTION_REQUEST ? match({ length }) : NO;
  },
} satisfies Detector<RdpInfo>;

/** MS-RDPEPS 2.2.1.1: a v1 PDU is exactly 16 bytes; v2 (2.2.1.2) adds cchPCB and the blob. */
export const PCB_V1_LENGTH = 16;
export const PCB_V2_MIN_LENGTH = 18;
/**
 * Longest preconnection blob we accept, in UTF-16 code units with its NULs. The blob carries
 * `<ticket>.<vm>`: a ticket is at most 63 characters and a VM name a DNS name (at most 253).
 */
export const PCB_MAX_CHARS = 512;

export interface PreconnectionInfo {
  /** Bytes the PDU occupies (its cbSize); the Connection Request follows. */
  readonly length: number;
  readonly version: 1 | 2;
}

/**
 * A preconnection PDU, recognised by its fixed part: cbSize (16, or 18 + 2 * cchPCB up to the
 * blob cap), Flags 0, Version 1 or 2 consistent with cbSize, and for v2 cchPCB consistent with
 * cbSize. Matches after 16 bytes (v1) or 18 (v2); the blob is read after hand-off.
 */
export function createPreconnectionDetector(maxChars = PCB_MAX_CHARS): Detector<PreconnectionInfo> {
  const maxLength = PCB_V2_MIN_LENGTH + 2 * maxChars;
  return {
    name: 'rdp-preconnection',
    detect(head: Uint8Array): Detection<PreconnectionInfo> {
      if (head.length === 0) return MORE;
      // cbSize is 16 or 18 + 2n: even, and its two high bytes are zero.
      if (u8(head, 0) % 2 !== 0) return NO;
      if (head.length < 2) return MORE;
      if (u8(head, 1) > maxLength >> 8) return NO;
      for (let i = 2; i < Math.min(head.length, 8); i++) if (head[i] !== 0) return NO; // cbSize high, Flags
      if (head.length < 4) return MORE;
      const length = u32le(head, 0);
      if (length !== PCB_V1_LENGTH && (length < PCB_V2_MIN_LENGTH || length > maxLength)) return NO;
      if (head.length < 9) return MORE;
      const version = length === PCB_V1_LENGTH ? 1 : 2;
      if (u8(head, 8) !== version) return NO;
      for (let i = 9; i < Math.min(head.length, 12); i++) if (head[i] !== 0) return NO;
      const fixed = version === 1 ? PCB_V1_LENGTH : PCB_V2_MIN_LENGTH;
      if (head.length < fixed) return MORE;
      if (version === 2 && PCB_V2_MIN_LENGTH + 2 * u16le(head, 16) !== length) return NO;
      return match({ length, version });
    },
  };
}

export const rdpPreconnectionDetector = createPreconnectionDetector();

// ---------------------------------------------------------------------------------------------
// X.224 Connection Request

/**
 * The line before the negotiation request. `mstshash` is the cookie (a user-name hint mstsc and
 * FreeRDP send by default); `msts` is the routing token in its documented `Cookie: msts=` form;
 * `raw` is any other CR LF-terminated token (FreeRDP `/load-balance-info:`, mstsc loadbalanceinfo).
 * `value` is the text between the prefix and CR LF, byte for byte (latin1).
 */
export interface RoutingToken {
  readonly kind: 'mstshash' | 'msts' | 'raw';
  readonly value: string;
}

export interface NegotiationRequest {
  readonly flags: number;
  readonly requestedProtocols: number;
  /** RDP_NEG_CORRELATION_INFO's 16-byte correlationId, when the client sent one. */
  readonly correlationId: Uint8Array | null;
}

export interface ConnectionRequest {
  readonly dstRef: number;
  readonly srcRef: number;
  readonly classOption: number;
  readonly token: RoutingToken | null;
  /** Null for a client that only speaks standard RDP security (FreeRDP `/sec:rdp`). */
  readonly negotiation: NegotiationRequest | null;
}

export type X224Error =
  | 'not-tpkt'
  | 'bad-length'
  | 'bad-length-indicator'
  | 'not-connection-request'
  | 'not-connection-confirm'
  | 'unterminated-token'
  | 'bad-negotiation'
  | 'bad-correlation-info'
  | 'trailing-bytes';

/** TPKT + X.224 header checks shared by request and confirm; the TPDU's length, or an error. */
function x224Header(b: Uint8Array, code: number): Parse<number, X224Error> {
  if (b.length < 1) return MORE_BYTES;
  if (b[0] !== TPKT_VERSION) return failure('not-tpkt');
  if (b.length < 2) return MORE_BYTES;
  if (b[1] !== 0x00) return failure('not-tpkt');
  if (b.length < 4) return MORE_BYTES;
  const length = u16be(b, 2);
  if (length < X224_FIXED_LENGTH || length > X224_MAX_LENGTH) return failure('bad-length');
  if (b.length < 5) return MORE_BYTES;
  if (u8(b, 4) !== length - 5) return failure('bad-length-indicator');
  if (b.length < 6) return MORE_BYTES;
  if (u8(b, 5) !== code) return failure(code === X224_CONNECTION_REQUEST ? 'not-connection-request' : 'not-connection-confirm');
  if (b.length < length) return MORE_BYTES;
  return done(length, length);
}

/**
 * Parse a Connection Request at the start of `b` (bytes after it are left alone). 'more' until the
 * whole TPKT is there; the announced length is bounded by X224_MAX_LENGTH before anything waits.
 */
export function parseConnectionRequest(b: Uint8Array): Parse<ConnectionRequest, X224Error> {
  const h = x224Header(b, X224_CONNECTION_REQUEST);
  if (h.kind !== 'done') return h;
  const end = h.value;
  let at = X224_FIXED_LENGTH;

  let token: RoutingToken | null = null;
  if (at < end && b[at] !== NegType.REQUEST) {
    const kind = asciiAt(b, at, MSTSHASH) ? 'mstshash' : asciiAt(b, at, MSTS) ? 'msts' : 'raw';
    const start = at + (kind === 'mstshash' ? MSTSHASH.length : kind === 'msts' ? MSTS.length : 0);
    const crlf = indexOfCrlf(b, start, end);
    if (crlf < 0) return failure('unterminated-token');
    token = { kind, value: Buffer.from(b.buffer, b.byteOffset + start, crlf - start).toString('latin1') };
    at = crlf + 2;
  }

  let negotiation: NegotiationRequest | null = null;
  if (at < end) {
    if (b[at] !== NegType.REQUEST || end - at < NEG_LENGTH || u16le(b, at + 2) !== NEG_LENGTH) return failure('bad-negotiation');
    const flags = u8(b, at + 1);
    const requestedProtocols = u32le(b, at + 4);
    at += NEG_LENGTH;
    let correlationId: Uint8Array | null = null;
    if (flags & NegRequestFlag.CORRELATION_INFO_PRESENT) {
      if (
        end - at < CORRELATION_INFO_LENGTH ||
        b[at] !== NegType.CORRELATION_INFO ||
        u16le(b, at + 2) !== CORRELATION_INFO_LENGTH
      ) {
        return failure('bad-correlation-info');
      }
      correlationId = Uint8Array.from(b.subarray(at + 4, at + 20));
      at += CORRELATION_INFO_LENGTH;
    }
    negotiation = { flags, requestedProtocols, correlationId };
  }
  if (at !== end) return failure('trailing-bytes');

  return done({ dstRef: u16be(b, 6), srcRef: u16be(b, 8), classOption: u8(b, 10), token, negotiation }, end);
}

function tokenBytes(token: RoutingToken): Buffer {
  if (/[\r\n]/.test(token.value) || !/^[\x00-\xff]*$/.test(token.value)) {
    throw new RangeError('a routing token value is latin1 text without CR or LF');
  }
  const prefix = token.kind === 'mstshash' ? MSTSHASH : token.kind === 'msts' ? MSTS : '';
  return Buffer.from(`${prefix}${token.value}\r\n`, 'latin1');
}

/** The bytes of a Connection Request; TPKT length and LI follow from its contents. */
export function encodeConnectionRequest(cr: ConnectionRequest): Buffer {
  const parts: Buffer[] = [];
  if (cr.token) parts.push(tokenBytes(cr.token));
  if (cr.negotiation) {
    const n = cr.negotiation;
    checkUint('negotiation flags', n.flags, 8);
    checkUint('requestedProtocols', n.requestedProtocols, 32);
    // The flag says whether the correlation info follows; keep the two consistent.
    const flags = n.correlationId
      ? n.flags | NegRequestFlag.CORRELATION_INFO_PRESENT
      : n.flags & ~NegRequestFlag.CORRELATION_INFO_PRESENT;
    const neg = Buffer.alloc(NEG_LENGTH);
    neg.writeUInt8(NegType.REQUEST, 0);
    neg.writeUInt8(flags, 1);
    neg.writeUInt16LE(NEG_LENGTH, 2);
    neg.writeUInt32LE(n.requestedProtocols, 4);
    parts.push(neg);
    if (n.correlationId) {
      if (n.correlationId.length !== 16) throw new RangeError('correlationId is 16 bytes');
      const info = Buffer.alloc(CORRELATION_INFO_LENGTH);
      info.writeUInt8(NegType.CORRELATION_INFO, 0);
      info.writeUInt16LE(CORRELATION_INFO_LENGTH, 2);
      info.set(n.correlationId, 4);
      parts.push(info);
    }
  }
  return x224(X224_CONNECTION_REQUEST, cr, Buffer.concat(parts));
}

/**
 * The request to forward to the console: the same PDU without its routing token or cookie line
 * (the ticket must not reach the VM), TPKT length and X.224 LI recomputed.
 */
export function stripRoutingToken(cr: ConnectionRequest): Buffer {
  return encodeConnectionRequest({ ...cr, token: null });
}

interface X224Refs {
  readonly dstRef: number;
  readonly srcRef: number;
  readonly classOption: number;
}

function x224(code: number, refs: X224Refs, variable: Buffer): Buffer {
  checkUint('dstRef', refs.dstRef, 16);
  checkUint('srcRef', refs.srcRef, 16);
  checkUint('classOption', refs.classOption, 8);
  const length = X224_FIXED_LENGTH + variable.length;
  if (length > X224_MAX_LENGTH) throw new RangeError(`an X.224 connection PDU is at most ${X224_MAX_LENGTH} bytes, this one ${length}`);
  const out = Buffer.alloc(length);
  out.writeUInt8(TPKT_VERSION, 0);
  out.writeUInt16BE(length, 2);
  out.writeUInt8(length - 5, 4);
  out.writeUInt8(code, 5);
  out.writeUInt16BE(refs.dstRef, 6);
  out.writeUInt16BE(refs.srcRef, 8);
  out.writeUInt8(refs.classOption, 10);
  variable.copy(out, X224_FIXED_LENGTH);
  return out;
}

// ---------------------------------------------------------------------------------------------
// X.224 Connection Confirm

export type NegotiationAnswer =
  | { readonly type: 'response'; readonly flags: number; readonly selectedProtocol: number }
  | { readonly type: 'failure'; readonly flags: number; readonly failureCode: number };

export interface ConnectionConfirm {
  readonly dstRef: number;
  readonly srcRef: number;
  readonly classOption: number;
  /** Null when the server answered a request without RDP_NEG_REQ (standard RDP security). */
  readonly negotiation: NegotiationAnswer | null;
}

/** Parse a console's Connection Confirm (what the RDCleanPath answer carries back). */
export function parseConnectionConfirm(b: Uint8Array): Parse<ConnectionConfirm, X224Error> {
  const h = x224Header(b, X224_CONNECTION_CONFIRM);
  if (h.kind !== 'done') return h;
  const end = h.value;
  const at = X224_FIXED_LENGTH;
  let negotiation: NegotiationAnswer | null = null;
  if (at < end) {
    const type = u8(b, at);
    if ((type !== NegType.RESPONSE && type !== NegType.FAILURE) || end - at < NEG_LENGTH || u16le(b, at + 2) !== NEG_LENGTH) {
      return failure('bad-negotiation');
    }
    const flags = u8(b, at + 1);
    const value = u32le(b, at + 4);
    negotiation = type === NegType.RESPONSE
      ? { type: 'response', flags, selectedProtocol: value }
      : { type: 'failure', flags, failureCode: value };
    if (at + NEG_LENGTH !== end) return failure('trailing-bytes');
  }
  return done({ dstRef: u16be(b, 6), srcRef: u16be(b, 8), classOption: u8(b, 10), negotiation }, end);
}

export function encodeConnectionConfirm(cc: ConnectionConfirm): Buffer {
  if (!cc.negotiation) return x224(X224_CONNECTION_CONFIRM, cc, Buffer.alloc(0));
  const n = cc.negotiation;
  const value = n.type === 'response' ? n.selectedProtocol : n.failureCode;
  checkUint('negotiation flags', n.flags, 8);
  checkUint(n.type === 'response' ? 'selectedProtocol' : 'failureCode', value, 32);
  const neg = Buffer.alloc(NEG_LENGTH);
  neg.writeUInt8(n.type === 'response' ? NegType.RESPONSE : NegType.FAILURE, 0);
  neg.writeUInt8(n.flags, 1);
  neg.writeUInt16LE(NEG_LENGTH, 2);
  neg.writeUInt32LE(value, 4);
  return x224(X224_CONNECTION_CONFIRM, cc, neg);
}

/**
 * An X.224 Connection Confirm carrying RDP_NEG_FAILURE: how the gateway refuses a native client at
 * once (no valid ticket) instead of closing silently. References are 0, as RDP servers send them
 * (FreeRDP 2.11's shadow server: 03 00 00 13 0e d0 00 00 00 00 00 03 00 08 00 <code>).
 */
export function buildNegotiationFailure(failureCode: number, refs: Partial<X224Refs> = {}): Buffer {
  return encodeConnectionConfirm({
    dstRef: refs.dstRef ?? 0,
    srcRef: refs.srcRef ?? 0,
    classOption: refs.classOption ?? 0,
    negotiation: { type: 'failure', flags: 0, failureCode },
  });
}

// ---------------------------------------------------------------------------------------------
// MS-RDPEPS preconnection PDU

export interface PreconnectionPdu {
  readonly version: 1 | 2;
  readonly flags: number;
  readonly id: number;
  /** v2's wszPCB without its trailing NULs; null for v1. */
  readonly blob: string | null;
}

export type PreconnectionError = 'bad-length' | 'too-long' | 'bad-flags' | 'bad-version' | 'bad-blob';

/**
 * Parse a preconnection PDU at the start of `b`. Following MS-RDPEPS 3.2.5.1 it takes exactly
 * cbSize bytes: 16 is v1, 18 and more is v2 (up to the blob cap), anything else is refused.
 */
export function parsePreconnectionPdu(b: Uint8Array, maxChars = PCB_MAX_CHARS): Parse<PreconnectionPdu, PreconnectionError> {
  const maxLength = PCB_V2_MIN_LENGTH + 2 * maxChars;
  if (b.length < 4) {
    // Refuse an impossible size as soon as its bytes show it, as the detector does.
    if (b.length >= 1 && u8(b, 0) % 2 !== 0) return failure('bad-length');
    if (b.length >= 2 && u8(b, 1) > maxLength >> 8) return failure('too-long');
    if (b.length >= 3 && u8(b, 2) !== 0) return failure('too-long');
    return MORE_BYTES;
  }
  const length = u32le(b, 0);
  if (length > maxLength) return failure('too-long');
  if (length !== PCB_V1_LENGTH && length < PCB_V2_MIN_LENGTH) return failure('bad-length');
  for (let i = 4; i < Math.min(b.length, 8); i++) if (b[i] !== 0) return failure('bad-flags');
  if (b.length < 8) return MORE_BYTES;
  const flags = u32le(b, 4);
  const expected = length === PCB_V1_LENGTH ? 1 : 2;
  if (b.length >= 9 && u8(b, 8) !== expected) return failure('bad-version');
  for (let i = 9; i < Math.min(b.length, 12); i++) if (b[i] !== 0) return failure('bad-version');
  if (b.length < 12) return MORE_BYTES;
  const version = expected;
  if (b.length < (version === 1 ? PCB_V1_LENGTH : PCB_V2_MIN_LENGTH)) return MORE_BYTES;
  const id = u32le(b, 12);
  if (version === 1) return done({ version: 1, flags, id, blob: null }, length);
  if (PCB_V2_MIN_LENGTH + 2 * u16le(b, 16) !== length) return failure('bad-length');
  if (b.length < length) return MORE_BYTES;
  const blob = utf16z(b.subarray(PCB_V2_MIN_LENGTH, length));
  if (blob === null) return failure('bad-blob');
  return done({ version: 2, flags, id, blob }, length);
}

/** v1 when `blob` is null; v2 otherwise, the blob NUL-terminated (cchPCB 0 for an empty blob). */
export function encodePreconnectionPdu(pdu: { readonly id: number; readonly blob: string | null }): Buffer {
  checkUint('id', pdu.id, 32);
  const text = pdu.blob === null ? null : pdu.blob === '' ? Buffer.alloc(0) : toUtf16z(pdu.blob);
  const length = text === null ? PCB_V1_LENGTH : PCB_V2_MIN_LENGTH + text.length;
  if (text !== null && text.length / 2 > 0xffff) throw new RangeError('a preconnection blob is at most 65535 UTF-16 code units');
  const out = Buffer.alloc(length);
  out.writeUInt32LE(length, 0);
  out.writeUInt32LE(text === null ? 1 : 2, 8);
  out.writeUInt32LE(pdu.id, 12);
  if (text !== null) {
    out.writeUInt16LE(text.length / 2, 16);
    text.copy(out, PCB_V2_MIN_LENGTH);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The whole opening

export interface RdpOpening {
  readonly preconnection: PreconnectionPdu | null;
  readonly request: ConnectionRequest;
}

/**
 * What a native client sends before it waits for an answer: an optional preconnection PDU, then
 * the Connection Request. A PDU's cbSize is even and at least 16, so a first byte of 03 can only be
 * TPKT. 'done' carries the total length of both; whatever follows is not part of the opening.
 */
export function parseRdpOpening(
  b: Uint8Array,
  maxChars = PCB_MAX_CHARS,
): Parse<RdpOpening, X224Error | `preconnection-${PreconnectionError}`> {
  if (b.length === 0) return MORE_BYTES;
  let preconnection: PreconnectionPdu | null = null;
  let offset = 0;
  if (b[0] !== TPKT_VERSION) {
    const p = parsePreconnectionPdu(b, maxChars);
    if (p.kind === 'error') return failure(`preconnection-${p.code}`);
    if (p.kind === 'more') return p;
    preconnection = p.value;
    offset = p.length;
  }
  const r = parseConnectionRequest(b.subarray(offset));
  if (r.kind !== 'done') return r;
  return done({ preconnection, request: r.value }, offset + r.length);
}

// ---------------------------------------------------------------------------------------------
// What a native opening carries for a broker, and what the console gets instead

export type CarrierError = 'carriers-differ';

/**
 * The text a stock client carries for a broker: the preconnection blob (`/pcb:`, `pcb:s:`) or a
 * routing token (`Cookie: msts=<text>`, or a raw line: `/load-balance-info:`, `loadbalanceinfo:s:`).
 * Null when there is neither (a `Cookie: mstshash=` is a user-name hint, not a carrier; a v1 PDU
 * and an empty blob carry nothing). Both present must agree: a client never sends two targets.
 */
export function openingCarrier(opening: RdpOpening): Result<string | null, CarrierError> {
  const blob = opening.preconnection?.blob || null;
  const token = opening.request.token;
  const routed = token && token.kind !== 'mstshash' ? token.value : null;
  if (blob !== null && routed !== null && blob !== routed) return err('carriers-differ', 'the preconnection blob and the routing token name different targets');
  return ok(blob ?? routed);
}

/**
 * The Connection Request as the console gets it: no preconnection PDU and no routing token (the
 * ticket stays with the gateway), a `Cookie: mstshash=` kept, TPKT length and X.224 LI recomputed.
 */
export function requestForConsole(opening: RdpOpening): Buffer {
  const { request } = opening;
  return request.token?.kind === 'mstshash' ? encodeConnectionRequest(request) : stripRoutingToken(request);
}
