/**
 * RDCleanPath: the one PDU IronRDP's web client and a proxy exchange over a WebSocket before the
 * RDP byte stream (crate `ironrdp-rdcleanpath`, used with Devolutions Gateway). The browser cannot
 * do the RDP server's TLS handshake itself, so it sends the proxy its X.224 Connection Request;
 * the proxy dials the server, sends that request, does TLS with the server, and answers with the
 * X.224 Connection Confirm and the server's certificate chain. After that the WebSocket carries
 * the RDP stream in clear (inside the browser's wss://), which the proxy relays to and from its own
 * TLS session with the server (Devolutions Gateway's `rd_clean_path.rs` does the same); the client
 * uses the chain's first certificate only for its key (CredSSP's public-key binding).
 *
 * The PDU is DER. ASN.1 as IronRDP defines it (all tags EXPLICIT, every field but the version
 * optional, fields in tag order):
 *
 *   RDCleanPathPdu ::= SEQUENCE {
 *     version             [0] INTEGER,                 -- 3390 (BASE_VERSION 3389 + 1)
 *     error               [1] RDCleanPathErr OPTIONAL, -- proxy -> client
 *     destination         [2] UTF8String OPTIONAL,     -- client -> proxy
 *     proxy_auth          [3] UTF8String OPTIONAL,     -- client -> proxy (for us: a console ticket)
 *     server_auth         [4] UTF8String OPTIONAL,     -- unused
 *     preconnection_blob  [5] UTF8String OPTIONAL,     -- client -> proxy (MS-RDPEPS)
 *     x224_connection_pdu [6] OCTET STRING OPTIONAL,   -- both ways
 *     server_cert_chain   [7] SEQUENCE OF OCTET STRING OPTIONAL, -- proxy -> client, DER certs
 *     -- [8] was reserved for an OCSP response and is not defined
 *     server_addr         [9] UTF8String OPTIONAL }    -- proxy -> client
 *   RDCleanPathErr ::= SEQUENCE {
 *     error_code       [0] INTEGER (u16),              -- 1 general, 2 negotiation
 *     http_status_code [1] INTEGER (u16) OPTIONAL,
 *     wsa_last_error   [2] INTEGER (u16) OPTIONAL,
 *     tls_alert_code   [3] INTEGER (u8) OPTIONAL }
 *
 * node-forge's `asn1` reads and writes the tree (it handles context-specific explicit tags as
 * ordinary constructed nodes); this module adds what forge does not: a cap on the PDU and on each
 * field, strict DER (forge also accepts BER, so a decoded tree must re-encode to the very same
 * bytes), the schema above, and framing for a stream ("is a whole PDU there yet?").
 */
import forge from 'node-forge';
import { type Detection, type Detector, MORE, NO, match } from './detector.js';
import { type Parse, type Result, done, err, failure, more, ok, view } from './parse.js';

export const RDCLEANPATH_BASE_VERSION = 3389;
/** The only version IronRDP speaks (its VERSION_1). */
export const RDCLEANPATH_VERSION = RDCLEANPATH_BASE_VERSION + 1;
export const RDCLEANPATH_GENERAL_ERROR = 1;
export const RDCLEANPATH_NEGOTIATION_ERROR = 2;

export interface RdcleanpathLimits {
  /** Whole PDU, header included. */
  readonly pduBytes: number;
  /** destination, proxy_auth, server_auth and server_addr, each (UTF-8 bytes). */
  readonly stringBytes: number;
  /** preconnection_blob (UTF-8 bytes). */
  readonly preconnectionBlobBytes: number;
  /** x224_connection_pdu. */
  readonly x224Bytes: number;
  /** Each certificate in server_cert_chain. */
  readonly certBytes: number;
  /** Certificates in server_cert_chain. */
  readonly certs: number;
}

export const RDCLEANPATH_LIMITS: RdcleanpathLimits = Object.freeze({
  pduBytes: 64 * 1024, // 64 KiB: a request is well under 2 KiB; a response is mostly the chain
  stringBytes: 4 * 1024, // 4 KiB: host names, tickets and addresses are far shorter
  preconnectionBlobBytes: 8 * 1024, // 8 KiB: an MS-RDPEPS v2 blob is a short UTF-16 string
  x224Bytes: 8 * 1024, // 8 KiB: a Connection Request with a long routing token is ~300 bytes
  certBytes: 16 * 1024, // 16 KiB per certificate
  certs: 16, // chain length
});

/** Tighter caps for what a gateway reads: requests from not-yet-authorized browsers. */
export const RDCLEANPATH_REQUEST_LIMITS: RdcleanpathLimits = Object.freeze({
  pduBytes: 16 * 1024, // 16 KiB
  stringBytes: 2 * 1024, // 2 KiB
  preconnectionBlobBytes: 4 * 1024, // 4 KiB
  x224Bytes: 4 * 1024, // 4 KiB
  certBytes: 0,
  certs: 0,
});

export type RdcleanpathErrorCode = 'malformed' | 'too-large' | 'unsupported-version' | 'missing-field' | 'invalid-field';

export interface RdcleanpathError {
  readonly errorCode: number;
  readonly httpStatusCode?: number;
  readonly wsaLastError?: number;
  readonly tlsAlertCode?: number;
}

/** The PDU as on the wire: every field optional but the version (IronRDP's `RDCleanPathPdu`). */
export interface RdcleanpathPdu {
  readonly version: number;
  readonly error?: RdcleanpathError;
  readonly destination?: string;
  readonly proxyAuth?: string;
  readonly serverAuth?: string;
  readonly preconnectionBlob?: string;
  readonly x224ConnectionPdu?: Buffer;
  readonly serverCertChain?: readonly Buffer[];
  readonly serverAddr?: string;
}

/**
 * What a PDU means, by which fields it carries (IronRDP's `RDCleanPathMessage`). The VMConnect
 * forms (Hyper-V console: the proxy sends the blob as a PCB v2 and does TLS, no X.224) are
 * recognised so they can be refused by name rather than misread as a plain request.
 */
export type RdcleanpathMessage =
  | {
      readonly type: 'request';
      readonly destination: string;
      readonly proxyAuth: string;
      readonly serverAuth?: string;
      readonly preconnectionBlob?: string;
      readonly x224ConnectionRequest: Buffer;
    }
  | { readonly type: 'vmconnect-request'; readonly destination: string; readonly proxyAuth: string; readonly serverAuth?: string; readonly pcbPayload: string }
  | { readonly type: 'response'; readonly x224ConnectionResponse: Buffer; readonly serverCertChain: readonly Buffer[]; readonly serverAddr: string }
  | { readonly type: 'vmconnect-response'; readonly serverCertChain: readonly Buffer[]; readonly serverAddr: string }
  | { readonly type: 'general-error'; readonly error: RdcleanpathError }
  | { readonly type: 'negotiation-error'; readonly x224ConnectionResponse: Buffer };

// DER identifiers (X.690 8.1.2): class in bits 8-7, constructed in bit 6, tag number below.
const SEQUENCE = 0x30;
const UNIVERSAL = 0x00;
const CONTEXT = 0x80;
const T_INTEGER = 2;
const T_OCTETS = 4;
const T_UTF8 = 12;
const T_SEQUENCE = 16;
/** SEQUENCE > [1] > SEQUENCE > [0] > INTEGER is the deepest path: five levels. */
const MAX_DEPTH = 5;
/** Elements in the largest PDU but for its certificates: 19 for the fields, 9 for the error. */
const MAX_ELEMENTS = 32;
/** The version field is always these six bytes in DER: [0] { INTEGER 3390 }. */
const VERSION_FIELD = Buffer.from([0xa0, 0x04, 0x02, 0x02, RDCLEANPATH_VERSION >> 8, RDCLEANPATH_VERSION & 0xff]);

type Asn1 = forge.asn1.Asn1;
const fromDer = forge.asn1.fromDer as unknown as (bytes: string, options: { strict: boolean; parseAllBytes: boolean; decodeBitStrings: boolean; maxDepth: number }) => Asn1;

/**
 * Stream framing: does `bytes` start with a whole RDCleanPath PDU? `done` with the PDU's length
 * (bytes after it are not looked at), `more` (with `need`, the total, once the header is in), or
 * an error as soon as the header or the version field cannot be an RDCleanPath PDU we accept.
 */
export function rdcleanpathFrame(bytes: Uint8Array, limits: RdcleanpathLimits = RDCLEANPATH_LIMITS): Parse<number, RdcleanpathErrorCode> {
  if (bytes.length === 0) return more();
  if (bytes[0] !== SEQUENCE) return failure('malformed', 'an RDCleanPath PDU is a DER SEQUENCE (0x30)');
  const header = readLength(bytes, 1);
  if (header.kind !== 'done') return header;
  const total = 1 + header.length + header.value;
  if (total > limits.pduBytes) return failure('too-large', `PDU of ${total} bytes; the cap is ${limits.pduBytes}`);
  const version = checkVersionField(bytes.subarray(1 + header.length, Math.min(bytes.length, total)), header.value);
  if (version.kind === 'error') return version;
  if (bytes.length < total) return more(total);
  if (version.kind === 'more') return failure('malformed', 'the PDU ends inside its version field');
  return done(total, total);
}

/** Decode one PDU from the front of `bytes` (see `Parse`: trailing bytes are left to the caller). */
export function decodeRdcleanpath(bytes: Uint8Array, limits: RdcleanpathLimits = RDCLEANPATH_LIMITS): Parse<RdcleanpathPdu, RdcleanpathErrorCode> {
  const frame = rdcleanpathFrame(bytes, limits);
  if (frame.kind !== 'done') return frame;
  // forge builds an object per DER element; a PDU of thousands of empty elements would cost
  // milliseconds before the schema refused it, so count them first, building nothing.
  if (countElements(bytes, 0, frame.length, 0, MAX_ELEMENTS + limits.certs) < 0) {
    return failure('malformed', 'more DER elements than an RDCleanPath PDU has');
  }
  const der = view(bytes).subarray(0, frame.length).toString('binary');
  let tree: Asn1;
  try {
    tree = fromDer(der, { strict: true, parseAllBytes: true, decodeBitStrings: false, maxDepth: MAX_DEPTH });
    // forge reads BER too (indefinite and non-minimal lengths, non-minimal integers) and writes
    // DER; what does not survive the round trip unchanged was not DER.
    if (forge.asn1.toDer(tree).getBytes() !== der) return failure('malformed', 'not DER (non-minimal length or integer, or indefinite length)');
  } catch (e) {
    return failure('malformed', `not DER: ${(e as Error).message}`);
  }
  try {
    return done(readPdu(tree, limits), frame.length);
  } catch (e) {
    if (e instanceof FieldError) return failure(e.code, e.message);
    return failure('malformed', (e as Error).message);
  }
}

/** Encode a PDU as DER, refusing what the other side's caps (ours) would refuse. */
export function encodeRdcleanpath(pdu: RdcleanpathPdu, limits: RdcleanpathLimits = RDCLEANPATH_LIMITS): Result<Buffer, RdcleanpathErrorCode> {
  try {
    const fields: Asn1[] = [explicit(0, integer(pdu.version, Number.MAX_SAFE_INTEGER, 'version'))];
    if (pdu.error !== undefined) fields.push(explicit(1, errorNode(pdu.error)));
    if (pdu.destination !== undefined) fields.push(explicit(2, utf8(pdu.destination, limits.stringBytes, 'destination')));
    if (pdu.proxyAuth !== undefined) fields.push(explicit(3, utf8(pdu.proxyAuth, limits.stringBytes, 'proxy_auth')));
    if (pdu.serverAuth !== undefined) fields.push(explicit(4, utf8(pdu.serverAuth, limits.stringBytes, 'server_auth')));
    if (pdu.preconnectionBlob !== undefined) fields.push(explicit(5, utf8(pdu.preconnectionBlob, limits.preconnectionBlobBytes, 'preconnection_blob')));
    if (pdu.x224ConnectionPdu !== undefined) fields.push(explicit(6, octets(pdu.x224ConnectionPdu, limits.x224Bytes, 'x224_connection_pdu')));
    if (pdu.serverCertChain !== undefined) {
      if (pdu.serverCertChain.length > limits.certs) throw new FieldError('too-large', `${pdu.serverCertChain.length} certificates; the cap is ${limits.certs}`);
      const certs = pdu.serverCertChain.map((c, i) => octets(c, limits.certBytes, `server_cert_chain[${i}]`));
      fields.push(explicit(7, forge.asn1.create(UNIVERSAL, T_SEQUENCE, true, certs)));
    }
    if (pdu.serverAddr !== undefined) fields.push(explicit(9, utf8(pdu.serverAddr, limits.stringBytes, 'server_addr')));
    const der = Buffer.from(forge.asn1.toDer(forge.asn1.create(UNIVERSAL, T_SEQUENCE, true, fields)).getBytes(), 'binary');
    if (der.length > limits.pduBytes) return err('too-large', `PDU of ${der.length} bytes; the cap is ${limits.pduBytes}`);
    return ok(der);
  } catch (e) {
    if (e instanceof FieldError) return err(e.code, e.message);
    throw e;
  }
}

/** What a decoded PDU means, or which field it lacks (IronRDP's `RDCleanPathMessage::try_from`). */
export function rdcleanpathMessage(pdu: RdcleanpathPdu): Result<RdcleanpathMessage, 'missing-field'> {
  const opt = <K extends string, V>(key: K, v: V | undefined): { [P in K]?: V } => (v === undefined ? {} : ({ [key]: v } as { [P in K]?: V }));
  if (pdu.destination !== undefined) {
    if (pdu.proxyAuth === undefined) return err('missing-field', 'a request without proxy_auth');
    const common = { destination: pdu.destination, proxyAuth: pdu.proxyAuth, ...opt('serverAuth', pdu.serverAuth) };
    if (pdu.x224ConnectionPdu !== undefined) {
      return ok({ type: 'request', ...common, ...opt('preconnectionBlob', pdu.preconnectionBlob), x224ConnectionRequest: pdu.x224ConnectionPdu });
    }
    if (pdu.preconnectionBlob !== undefined && pdu.preconnectionBlob.trim() !== '') {
      return ok({ type: 'vmconnect-request', ...common, pcbPayload: pdu.preconnectionBlob });
    }
    return err('missing-field', 'a request without x224_connection_pdu or a non-empty preconnection_blob');
  }
  if (pdu.serverAddr !== undefined) {
    if (pdu.serverCertChain === undefined) return err('missing-field', 'a response without server_cert_chain');
    const common = { serverCertChain: pdu.serverCertChain, serverAddr: pdu.serverAddr };
    return pdu.x224ConnectionPdu !== undefined
      ? ok({ type: 'response', x224ConnectionResponse: pdu.x224ConnectionPdu, ...common })
      : ok({ type: 'vmconnect-response', ...common });
  }
  if (pdu.error === undefined) return err('missing-field', 'neither destination, server_addr nor error');
  if (pdu.error.errorCode === RDCLEANPATH_NEGOTIATION_ERROR && pdu.x224ConnectionPdu !== undefined) {
    return ok({ type: 'negotiation-error', x224ConnectionResponse: pdu.x224ConnectionPdu });
  }
  return ok({ type: 'general-error', error: pdu.error });
}

/** The PDU that carries a message (the inverse of `rdcleanpathMessage`). */
export function rdcleanpathPdu(message: RdcleanpathMessage): RdcleanpathPdu {
  const version = RDCLEANPATH_VERSION;
  switch (message.type) {
    case 'request': {
      const { type: _, x224ConnectionRequest, ...rest } = message;
      return { version, ...rest, x224ConnectionPdu: x224ConnectionRequest };
    }
    case 'vmconnect-request': {
      const { type: _, pcbPayload, ...rest } = message;
      return { version, ...rest, preconnectionBlob: pcbPayload };
    }
    case 'response':
      return { version, x224ConnectionPdu: message.x224ConnectionResponse, serverCertChain: message.serverCertChain, serverAddr: message.serverAddr };
    case 'vmconnect-response':
      return { version, serverCertChain: message.serverCertChain, serverAddr: message.serverAddr };
    case 'general-error':
      return { version, error: message.error };
    case 'negotiation-error':
      return { version, error: { errorCode: RDCLEANPATH_NEGOTIATION_ERROR }, x224ConnectionPdu: message.x224ConnectionResponse };
  }
}

/**
 * Recognises the first bytes of an RDCleanPath PDU: the SEQUENCE header and the version field
 * (like IronRDP's `detect`). `length` is the whole PDU's, which may not have arrived yet.
 */
export const rdcleanpathDetector = {
  name: 'rdcleanpath',
  detect(head: Uint8Array): Detection<{ readonly length: number }> {
    if (head.length === 0) return MORE;
    if (head[0] !== SEQUENCE) return NO;
    const header = readLength(head, 1);
    if (header.kind === 'more') return MORE;
    if (header.kind === 'error') return NO;
    const total = 1 + header.length + header.value;
    if (total > RDCLEANPATH_LIMITS.pduBytes) return NO;
    const version = checkVersionField(head.subarray(1 + header.length, Math.min(head.length, total)), header.value);
    if (version.kind === 'error') return NO;
    if (version.kind === 'more') return head.length >= total ? NO : MORE;
    return match({ length: total });
  },
} satisfies Detector<{ readonly length: number }>;

// ---- reading ---------------------------------------------------------------------------------

class FieldError extends Error {
  constructor(
    readonly code: RdcleanpathErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/**
 * A DER definite length at `at`: `value` is the length, `length` how many bytes it took. Long form
 * up to 3 bytes (16 MiB), which is past every cap; minimal encoding required.
 */
function readLength(bytes: Uint8Array, at: number): Parse<number, RdcleanpathErrorCode> {
  if (bytes.length <= at) return more();
  const first = bytes[at] ?? 0;
  if (first < 0x80) return done(first, 1);
  if (first === 0x80) return failure('malformed', 'indefinite length (BER, not DER)');
  const n = first & 0x7f;
  if (n > 3) return failure('too-large', `a length of ${n} bytes`);
  if (bytes.length < at + 1 + n) return more();
  let value = 0;
  for (let i = 1; i <= n; i++) value = value * 256 + (bytes[at + i] ?? 0);
  if (value < 0x80 || (bytes[at + 1] ?? 0) === 0) return failure('malformed', 'non-minimal length (BER, not DER)');
  return done(value, 1 + n);
}

/**
 * Count TLV elements in bytes[start, end) down to MAX_DEPTH, spending `budget`; -1 once it is
 * spent. Malformed lengths stop the count early: forge then finds and reports them.
 */
function countElements(b: Uint8Array, start: number, end: number, depth: number, budget: number): number {
  let at = start;
  while (at < end) {
    if (--budget < 0) return -1;
    const len = readLength(b, at + 1);
    if (len.kind !== 'done') return budget;
    const bodyStart = at + 1 + len.length;
    const bodyEnd = bodyStart + len.value;
    if (bodyEnd > end) return budget;
    if (((b[at] ?? 0) & 0x20) !== 0 && depth + 1 < MAX_DEPTH) {
      budget = countElements(b, bodyStart, bodyEnd, depth + 1, budget);
      if (budget < 0) return -1;
    }
    at = bodyEnd;
  }
  return budget;
}

/**
 * The start of a SEQUENCE's contents (`body`, possibly cut short) against the version field. In
 * DER the accepted version is exactly VERSION_FIELD; a well-formed [0] INTEGER with another value
 * is a version we do not speak, anything else is not RDCleanPath.
 */
function checkVersionField(body: Uint8Array, bodyLength: number): Parse<undefined, RdcleanpathErrorCode> {
  const n = Math.min(body.length, VERSION_FIELD.length);
  let same = true;
  for (let i = 0; i < n; i++) if (body[i] !== VERSION_FIELD[i]) same = false;
  if (same) {
    if (bodyLength < VERSION_FIELD.length) return failure('malformed', 'the PDU is shorter than its version field');
    return body.length >= VERSION_FIELD.length ? done(undefined, VERSION_FIELD.length) : more();
  }
  // Otherwise it may still be a short explicit [0] INTEGER with another value:
  // A0 len 02 ilen value..., with len = ilen + 2 and 1 <= ilen <= 8.
  const [b0, b1, b2, b3] = [body[0], body[1], body[2], body[3]];
  const shape =
    b0 === 0xa0 && (b1 === undefined || (b1 >= 3 && b1 <= 10)) && (b2 === undefined || b2 === 0x02) && (b3 === undefined || b1 === undefined || b3 === b1 - 2);
  if (!shape) return failure('malformed', 'an RDCleanPath PDU starts with [0] { INTEGER 3390 }');
  if (b3 === undefined) return bodyLength < 4 ? failure('malformed', 'the PDU ends inside its version field') : more();
  return failure('unsupported-version', 'an RDCleanPath version other than 3390');
}

function readPdu(tree: Asn1, limits: RdcleanpathLimits): RdcleanpathPdu {
  const f = fields(tree, [0, 1, 2, 3, 4, 5, 6, 7, 9], 'RDCleanPathPdu');
  const versionNode = f.get(0);
  if (versionNode === undefined) throw new FieldError('missing-field', 'no version');
  const version = readUint(versionNode, Number.MAX_SAFE_INTEGER, 'version');
  if (version !== RDCLEANPATH_VERSION) throw new FieldError('unsupported-version', `version ${version}`);
  const pdu: { -readonly [K in keyof RdcleanpathPdu]: RdcleanpathPdu[K] } = { version };
  const get = <T>(tag: number, read: (n: Asn1) => T): T | undefined => {
    const n = f.get(tag);
    return n === undefined ? undefined : read(n);
  };
  const error = get(1, readError);
  if (error !== undefined) pdu.error = error;
  const destination = get(2, (n) => readUtf8(n, limits.stringBytes, 'destination'));
  if (destination !== undefined) pdu.destination = destination;
  const proxyAuth = get(3, (n) => readUtf8(n, limits.stringBytes, 'proxy_auth'));
  if (proxyAuth !== undefined) pdu.proxyAuth = proxyAuth;
  const serverAuth = get(4, (n) => readUtf8(n, limits.stringBytes, 'server_auth'));
  if (serverAuth !== undefined) pdu.serverAuth = serverAuth;
  const pcb = get(5, (n) => readUtf8(n, limits.preconnectionBlobBytes, 'preconnection_blob'));
  if (pcb !== undefined) pdu.preconnectionBlob = pcb;
  const x224 = get(6, (n) => readOctets(n, limits.x224Bytes, 'x224_connection_pdu'));
  if (x224 !== undefined) pdu.x224ConnectionPdu = x224;
  const chain = get(7, (n) => {
    const certs = children(n, 'server_cert_chain');
    if (certs.length > limits.certs) throw new FieldError('too-large', `${certs.length} certificates; the cap is ${limits.certs}`);
    return certs.map((c, i) => readOctets(c, limits.certBytes, `server_cert_chain[${i}]`));
  });
  if (chain !== undefined) pdu.serverCertChain = chain;
  const serverAddr = get(9, (n) => readUtf8(n, limits.stringBytes, 'server_addr'));
  if (serverAddr !== undefined) pdu.serverAddr = serverAddr;
  return pdu;
}

function readError(node: Asn1): RdcleanpathError {
  const f = fields(node, [0, 1, 2, 3], 'RDCleanPathErr');
  const code = f.get(0);
  if (code === undefined) throw new FieldError('missing-field', 'an error without error_code');
  const e: { -readonly [K in keyof RdcleanpathError]: RdcleanpathError[K] } = { errorCode: readUint(code, 0xffff, 'error_code') };
  const http = f.get(1);
  if (http !== undefined) e.httpStatusCode = readUint(http, 0xffff, 'http_status_code');
  const wsa = f.get(2);
  if (wsa !== undefined) e.wsaLastError = readUint(wsa, 0xffff, 'wsa_last_error');
  const tls = f.get(3);
  if (tls !== undefined) e.tlsAlertCode = readUint(tls, 0xff, 'tls_alert_code');
  return e;
}

/** A SEQUENCE of EXPLICIT [n] fields: each tag allowed, at most once, in ascending order. */
function fields(node: Asn1, allowed: readonly number[], what: string): Map<number, Asn1> {
  const out = new Map<number, Asn1>();
  let last = -1;
  for (const child of children(node, what)) {
    const tag = child.type as number;
    if ((child.tagClass as number) !== CONTEXT || !child.constructed || !allowed.includes(tag)) {
      throw new FieldError('malformed', `${what}: unexpected element (class 0x${(child.tagClass as number).toString(16)}, tag ${tag})`);
    }
    if (tag <= last) throw new FieldError('malformed', `${what}: [${tag}] out of order or repeated`);
    last = tag;
    const inner = child.value;
    if (!Array.isArray(inner) || inner.length !== 1 || inner[0] === undefined) throw new FieldError('malformed', `${what}: [${tag}] must hold exactly one element`);
    out.set(tag, inner[0]);
  }
  return out;
}

function children(node: Asn1, what: string): Asn1[] {
  if ((node.tagClass as number) !== UNIVERSAL || (node.type as number) !== T_SEQUENCE || !node.constructed || !Array.isArray(node.value)) {
    throw new FieldError('malformed', `${what}: expected a SEQUENCE`);
  }
  return node.value;
}

function primitive(node: Asn1, type: number, what: string): string {
  if ((node.tagClass as number) !== UNIVERSAL || (node.type as number) !== type || node.constructed || typeof node.value !== 'string') {
    throw new FieldError('malformed', `${what}: expected universal type ${type}`);
  }
  return node.value;
}

/** A non-negative INTEGER no larger than `max` (DER minimality is checked by the round trip). */
function readUint(node: Asn1, max: number, what: string): number {
  const raw = primitive(node, T_INTEGER, what);
  if (raw.length === 0) throw new FieldError('malformed', `${what}: empty INTEGER`);
  if (raw.charCodeAt(0) & 0x80) throw new FieldError('invalid-field', `${what}: negative`);
  let value = 0;
  for (let i = 0; i < raw.length; i++) {
    value = value * 256 + raw.charCodeAt(i);
    if (value > max) throw new FieldError('invalid-field', `${what}: larger than ${max}`);
  }
  return value;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function readUtf8(node: Asn1, cap: number, what: string): string {
  const raw = primitive(node, T_UTF8, what);
  if (raw.length > cap) throw new FieldError('too-large', `${what}: ${raw.length} bytes; the cap is ${cap}`);
  try {
    return strictUtf8.decode(Buffer.from(raw, 'binary'));
  } catch {
    throw new FieldError('malformed', `${what}: not UTF-8`);
  }
}

function readOctets(node: Asn1, cap: number, what: string): Buffer {
  const raw = primitive(node, T_OCTETS, what);
  if (raw.length > cap) throw new FieldError('too-large', `${what}: ${raw.length} bytes; the cap is ${cap}`);
  return Buffer.from(raw, 'binary');
}

// ---- writing ---------------------------------------------------------------------------------

function explicit(tag: number, inner: Asn1): Asn1 {
  return forge.asn1.create(CONTEXT, tag as forge.asn1.Type, true, [inner]);
}

function integer(value: number, max: number, what: string): Asn1 {
  if (!Number.isSafeInteger(value) || value < 0 || value > max) throw new FieldError('invalid-field', `${what}: ${value} is not an integer in 0..${max}`);
  // Big-endian, minimal, with a leading zero when the top bit is set (DER INTEGERs are signed).
  const bytes: number[] = [];
  let v = value;
  do {
    bytes.unshift(v % 256);
    v = Math.floor(v / 256);
  } while (v > 0);
  if ((bytes[0] ?? 0) & 0x80) bytes.unshift(0);
  return forge.asn1.create(UNIVERSAL, T_INTEGER, false, String.fromCharCode(...bytes));
}

function errorNode(e: RdcleanpathError): Asn1 {
  const f: Asn1[] = [explicit(0, integer(e.errorCode, 0xffff, 'error_code'))];
  if (e.httpStatusCode !== undefined) f.push(explicit(1, integer(e.httpStatusCode, 0xffff, 'http_status_code')));
  if (e.wsaLastError !== undefined) f.push(explicit(2, integer(e.wsaLastError, 0xffff, 'wsa_last_error')));
  if (e.tlsAlertCode !== undefined) f.push(explicit(3, integer(e.tlsAlertCode, 0xff, 'tls_alert_code')));
  return forge.asn1.create(UNIVERSAL, T_SEQUENCE, true, f);
}

function utf8(s: string, cap: number, what: string): Asn1 {
  const bytes = Buffer.from(s, 'utf8');
  if (bytes.length > cap) throw new FieldError('too-large', `${what}: ${bytes.length} bytes; the cap is ${cap}`);
  return forge.asn1.create(UNIVERSAL, T_UTF8, false, bytes.toString('binary'));
}

function octets(b: Uint8Array, cap: number, what: string): Asn1 {
  if (b.length > cap) throw new FieldError('too-large', `${what}: ${b.length} bytes; the cap is ${cap}`);
  return forge.asn1.create(UNIVERSAL, T_OCTETS, false, view(b).toString('binary'));
}
