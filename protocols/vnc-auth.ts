/**
 * The RFB security handshake (RFC 6143 sections 7.1.1-7.1.3 and 7.2.2) for a gateway that sits
 * in the middle and keeps the console password from users: towards the console it is a client
 * that answers VNC Authentication itself; towards the browser (noVNC) it is a server that offers
 * only security type None, because the user was already authenticated by a console ticket.
 *
 * The three protocol versions differ exactly here, and clients trip on each difference:
 * - 3.3: the server alone picks the type and sends it as a u32 (0 = refused, then a reason);
 *   there is no choice message; after None there is no SecurityResult.
 * - 3.7: the server sends a u8 count and that many u8 types (count 0 = refused, then a reason);
 *   the client answers with one u8; after None there is still no SecurityResult.
 * - 3.8: as 3.7, but a SecurityResult (u32) always follows, None included, and a failed one
 *   carries a reason string.
 * Anything else a server announces is read as 3.3 (RFC 6143 7.1.1), except a higher major or a
 * minor above 8 (Apple's 3.889, RealVNC 4.x and 5.x), which accept 3.8.
 *
 * VNC Authentication: the server sends 16 random bytes; the client returns them DES-ECB encrypted
 * with the password as key: its first 8 bytes, zero-padded, each byte's bits reversed (the
 * reference implementation's d3des numbers key bits from the other end, and every server since
 * reproduces that). OpenSSL 3 moved single DES into the legacy provider, which Node does not
 * load, so `des-ecb` is missing; two-key triple DES with both halves equal is single DES
 * (E_K(D_K(E_K(x))) = E_K(x), which is how 3DES was specified to stay compatible), and
 * `des-ede-ecb` is in OpenSSL's default provider. No pure-JS DES to maintain.
 */
import { createCipheriv } from 'node:crypto';
import { vncDetector } from './vnc.js';
import { type Parse, done, failure, more, view } from './parse.js';

export type RfbVersion = '3.3' | '3.7' | '3.8';

export const RFB_SECURITY_INVALID = 0;
export const RFB_SECURITY_NONE = 1;
export const RFB_SECURITY_VNC_AUTH = 2;

export const VNC_AUTH_CHALLENGE_BYTES = 16;
/** Reason strings we read; servers send a sentence ("Authentication failed", "Too many ..."). */
export const RFB_REASON_MAX_BYTES = 1024; // 1 KiB

export type VncAuthErrorCode = 'malformed' | 'too-large' | 'unsupported-version' | 'unsupported-security';

/** What a server offers: the types it accepts, or a refusal with its reason. */
export type SecurityOffer = { readonly kind: 'types'; readonly types: readonly number[] } | { readonly kind: 'refused'; readonly reason: string };

/** status 0 is success; 1 is failure; some servers use 2 for "too many attempts". */
export interface SecurityResult {
  readonly accepted: boolean;
  readonly status: number;
  /** Only 3.8 failures carry one. */
  readonly reason?: string;
}

export interface ProtocolVersion {
  /** As written on the wire. */
  readonly major: number;
  readonly minor: number;
  /** The handshake that version implies. */
  readonly version: RfbVersion;
}

/** Read a 12-byte ProtocolVersion ("RFB 003.008\n"), from a server or from a client. */
export function parseProtocolVersion(bytes: Uint8Array): Parse<ProtocolVersion, VncAuthErrorCode> {
  const d = vncDetector.detect(bytes);
  if (d.kind === 'more') return more(12);
  if (d.kind === 'no') return failure('malformed', 'not an RFB ProtocolVersion ("RFB xxx.yyy\\n")');
  const { major, minor } = d.info;
  const version = handshakeFor(major, minor);
  if (version === undefined) return failure('unsupported-version', `RFB ${major}.${minor}`);
  return done({ major, minor, version }, 12);
}

/** The handshake a peer announcing major.minor speaks; undefined below 3.3. */
export function handshakeFor(major: number, minor: number): RfbVersion | undefined {
  if (major > 3) return '3.8';
  if (major < 3) return undefined;
  if (minor >= 8) return '3.8';
  return minor === 7 ? '3.7' : '3.3';
}

/** The 12-byte ProtocolVersion message for a handshake version. */
export function protocolVersionMessage(version: RfbVersion): Buffer {
  return Buffer.from(`RFB 003.00${version.slice(2)}\n`, 'latin1');
}

/** The server's security message: 3.3's u32 type, or 3.7/3.8's u8-counted list (RFC 6143 7.1.2). */
export function parseSecurityOffer(version: RfbVersion, bytes: Uint8Array): Parse<SecurityOffer, VncAuthErrorCode> {
  const b = view(bytes);
  if (version === '3.3') {
    if (b.length < 4) return more(4);
    const type = b.readUInt32BE(0);
    if (type === RFB_SECURITY_INVALID) return refusal(b, 4);
    if (type !== RFB_SECURITY_NONE && type !== RFB_SECURITY_VNC_AUTH) return failure('malformed', `RFB 3.3 security type ${type}`);
    return done({ kind: 'types', types: [type] }, 4);
  }
  if (b.length < 1) return more(1);
  const count = b[0] ?? 0;
  if (count === 0) return refusal(b, 1);
  if (b.length < 1 + count) return more(1 + count);
  return done({ kind: 'types', types: [...b.subarray(1, 1 + count)] }, 1 + count);
}

/** Which offered type the gateway answers, as a console client: None if it may, else VNC Auth. */
export function chooseConsoleSecurity(types: readonly number[]): typeof RFB_SECURITY_NONE | typeof RFB_SECURITY_VNC_AUTH | undefined {
  if (types.includes(RFB_SECURITY_NONE)) return RFB_SECURITY_NONE;
  if (types.includes(RFB_SECURITY_VNC_AUTH)) return RFB_SECURITY_VNC_AUTH;
  return undefined;
}

/** The client's one-byte choice (3.7/3.8 only: in 3.3 the client sends nothing). */
export function securityChoiceMessage(type: number): Buffer {
  return Buffer.from([type & 0xff]);
}

/** Read the client's one-byte choice (3.7/3.8). */
export function parseSecurityChoice(bytes: Uint8Array): Parse<number, VncAuthErrorCode> {
  return bytes.length < 1 ? more(1) : done(bytes[0] ?? 0, 1);
}

/** The VNC Authentication challenge: 16 bytes (a copy, so it outlives the read buffer). */
export function parseVncAuthChallenge(bytes: Uint8Array): Parse<Buffer, VncAuthErrorCode> {
  if (bytes.length < VNC_AUTH_CHALLENGE_BYTES) return more(VNC_AUTH_CHALLENGE_BYTES);
  return done(Buffer.from(bytes.subarray(0, VNC_AUTH_CHALLENGE_BYTES)), VNC_AUTH_CHALLENGE_BYTES);
}

/**
 * The 16-byte answer to a VNC Authentication challenge. A string password is taken as UTF-8;
 * only its first 8 bytes count (servers truncate the same way). Throws a RangeError only for a
 * challenge that is not 16 bytes, which `parseVncAuthChallenge` never returns.
 */
export function vncAuthResponse(challenge: Uint8Array, password: string | Uint8Array): Buffer {
  if (challenge.length !== VNC_AUTH_CHALLENGE_BYTES) throw new RangeError(`a VNC challenge is 16 bytes, not ${challenge.length}`);
  const raw = typeof password === 'string' ? Buffer.from(password, 'utf8') : view(password);
  const key = Buffer.alloc(8);
  for (let i = 0; i < 8 && i < raw.length; i++) key[i] = reverseBits(raw[i] ?? 0);
  return desEcb(key, view(challenge));
}

/** The server's SecurityResult (RFC 6143 7.1.3); in 3.8 a failure is followed by a reason. */
export function parseSecurityResult(version: RfbVersion, bytes: Uint8Array): Parse<SecurityResult, VncAuthErrorCode> {
  const b = view(bytes);
  if (b.length < 4) return more(4);
  const status = b.readUInt32BE(0);
  if (status === 0) return done({ accepted: true, status }, 4);
  if (version !== '3.8') return done({ accepted: false, status }, 4);
  const reason = readReason(b, 4);
  if (reason.kind !== 'done') return reason;
  return done({ accepted: false, status, reason: reason.value }, 4 + reason.length);
}

// ---- the gateway as the browser's server, offering only None ----------------------------------

/** Offer security type None: 3.3's u32 1, or a 3.7/3.8 list holding only None. */
export function noneSecurityOffer(version: RfbVersion): Buffer {
  return version === '3.3' ? u32(RFB_SECURITY_NONE) : Buffer.from([1, RFB_SECURITY_NONE]);
}

/** What follows the client's choice of None: a SecurityResult "OK" in 3.8, nothing before. */
export function noneSecurityResult(version: RfbVersion): Buffer {
  return version === '3.8' ? u32(0) : Buffer.alloc(0);
}

/**
 * Refuse the connection in place of the security offer, with a reason the client shows (3.3:
 * type 0; 3.7/3.8: an empty list). The one refusal every version can carry a reason in.
 */
export function securityRefusal(version: RfbVersion, reason: string): Buffer {
  const text = truncateUtf8(reason, RFB_REASON_MAX_BYTES);
  return Buffer.concat([version === '3.3' ? u32(RFB_SECURITY_INVALID) : Buffer.from([0]), u32(text.length), text]);
}

// ---- helpers ----------------------------------------------------------------------------------

function refusal(b: Buffer, at: number): Parse<SecurityOffer, VncAuthErrorCode> {
  const reason = readReason(b, at);
  if (reason.kind !== 'done') return reason;
  return done({ kind: 'refused', reason: reason.value }, at + reason.length);
}

/** A u32 length and that many bytes; QEMU counts a trailing NUL, which is dropped. */
function readReason(b: Buffer, at: number): Parse<string, VncAuthErrorCode> {
  if (b.length < at + 4) return more(at + 4);
  const n = b.readUInt32BE(at);
  if (n > RFB_REASON_MAX_BYTES) return failure('too-large', `a reason of ${n} bytes; the cap is ${RFB_REASON_MAX_BYTES}`);
  if (b.length < at + 4 + n) return more(at + 4 + n);
  return done(b.toString('utf8', at + 4, at + 4 + n).replace(/\0+$/, ''), 4 + n);
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

function truncateUtf8(s: string, max: number): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length <= max) return b;
  let end = max;
  while (end > 0 && ((b[end] ?? 0) & 0xc0) === 0x80) end--; // do not cut a character in half
  return b.subarray(0, end);
}

function reverseBits(byte: number): number {
  let r = 0;
  for (let i = 0; i < 8; i++) r |= ((byte >> i) & 1) << (7 - i);
  return r;
}

/** Single DES in ECB mode, as two-key 3DES with equal halves (see the file comment). */
function desEcb(key: Buffer, data: Buffer): Buffer {
  const cipher = createCipheriv('des-ede-ecb', Buffer.concat([key, key]), null);
  cipher.setAutoPadding(false);
  return Buffer.concat([cipher.update(data), cipher.final()]);
}
