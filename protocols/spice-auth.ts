/**
 * The SPICE link stage (spice-protocol `spice/protocol.h`, spice-server `reds.cpp`) for a gateway
 * that logs in to a console with the console's password while its users never learn it.
 *
 * Every SPICE channel (main, display, inputs, cursor, ...) is its own TCP connection and links on
 * its own, little-endian throughout:
 *   client -> server  SpiceLinkHeader { magic "REDQ", major 2, minor 2, size }
 *                     SpiceLinkMess { connection_id u32, channel_type u8, channel_id u8,
 *                                     num_common_caps u32, num_channel_caps u32, caps_offset u32 }
 *                     + caps (u32 bit-words; caps_offset counts from the start of SpiceLinkMess)
 *   server -> client  SpiceLinkHeader + SpiceLinkReply { error u32, pub_key[162],
 *                                     num_common_caps u32, num_channel_caps u32, caps_offset u32 }
 *                     + caps; pub_key is a fresh 1024-bit RSA key as SubjectPublicKeyInfo DER
 *   client -> server  if the client set common cap PROTOCOL_AUTH_SELECTION: u32 auth mechanism
 *                     (1 = SPICE ticket); then the ticket: the NUL-terminated password,
 *                     RSA-OAEP (SHA-1) encrypted with pub_key: 128 bytes
 *   server -> client  u32 link result (0 = OK, 7 = permission denied, ...)
 * The gateway relays the client's link message and the server's reply, throws away the ticket the
 * browser made (from no password, or whatever the user typed) and sends one made from the real
 * password instead; the link result tells both whether it worked.
 *
 * Caps follow spice-server's own: a link message's body is at most 4 KiB and each caps count at
 * most 1024.
 */
import { constants, createPublicKey, publicEncrypt } from 'node:crypto';
import { type Parse, type Result, done, err, failure, more, ok, view } from './parse.js';

export const SPICE_MAGIC = Buffer.from('REDQ', 'latin1');
export const SPICE_VERSION_MAJOR = 2;
export const SPICE_VERSION_MINOR = 2;
export const SPICE_LINK_HEADER_BYTES = 16;
export const SPICE_LINK_MESS_BYTES = 18;
export const SPICE_LINK_REPLY_BYTES = 178;
/** SubjectPublicKeyInfo DER of a 1024-bit RSA key (SPICE_TICKET_PUBKEY_BYTES). */
export const SPICE_PUBKEY_BYTES = 162;
/** RSA-1024 ciphertext (SPICE_TICKET_KEY_PAIR_LENGTH / 8). */
export const SPICE_TICKET_BYTES = 128;
/** spice-server refuses to set longer passwords (SPICE_MAX_PASSWORD_LENGTH). */
export const SPICE_MAX_PASSWORD_BYTES = 60;
/** spice-server's caps on a link message body and on each caps count. */
export const SPICE_LINK_MAX_BYTES = 4096; // 4 KiB
export const SPICE_MAX_CAPS = 1024;

/** SpiceLinkErr. */
export const SPICE_LINK_ERR = Object.freeze({
  OK: 0,
  ERROR: 1,
  INVALID_MAGIC: 2,
  INVALID_DATA: 3,
  VERSION_MISMATCH: 4,
  NEED_SECURED: 5,
  NEED_UNSECURED: 6,
  PERMISSION_DENIED: 7,
  BAD_CONNECTION_ID: 8,
  CHANNEL_NOT_AVAILABLE: 9,
});

/** SpiceChannelType (the ones a desktop uses; others exist). */
export const SPICE_CHANNEL = Object.freeze({ MAIN: 1, DISPLAY: 2, INPUTS: 3, CURSOR: 4, PLAYBACK: 5, RECORD: 6, USBREDIR: 9, PORT: 10, WEBDAV: 11 });

/** Common capabilities (bit numbers in the common caps words). */
export const SPICE_COMMON_CAP = Object.freeze({ PROTOCOL_AUTH_SELECTION: 0, AUTH_SPICE: 1, AUTH_SASL: 2, MINI_HEADER: 3 });

export type SpiceAuthErrorCode = 'malformed' | 'bad-magic' | 'unsupported-version' | 'too-large';

export interface SpiceLinkMess {
  readonly major: number;
  readonly minor: number;
  readonly connectionId: number;
  readonly channelType: number;
  readonly channelId: number;
  readonly commonCaps: readonly number[];
  readonly channelCaps: readonly number[];
}

export interface SpiceLinkReply {
  readonly major: number;
  readonly minor: number;
  /** A SPICE_LINK_ERR value; when not OK the key is zeros. */
  readonly error: number;
  /** SubjectPublicKeyInfo DER, zero-padded to 162 bytes. */
  readonly publicKey: Buffer;
  readonly commonCaps: readonly number[];
  readonly channelCaps: readonly number[];
}

/** A client's SpiceLinkHeader + SpiceLinkMess + caps. */
export function parseSpiceLinkMess(bytes: Uint8Array): Parse<SpiceLinkMess, SpiceAuthErrorCode> {
  const h = readHeader(view(bytes), SPICE_LINK_MESS_BYTES);
  if (h.kind !== 'done') return h;
  const body = view(bytes).subarray(SPICE_LINK_HEADER_BYTES, h.length);
  const caps = readCaps(body, body.readUInt32LE(6), body.readUInt32LE(10), body.readUInt32LE(14), SPICE_LINK_MESS_BYTES);
  if (caps.kind !== 'done') return caps;
  return done(
    {
      major: h.value.major,
      minor: h.value.minor,
      connectionId: body.readUInt32LE(0),
      channelType: body.readUInt8(4),
      channelId: body.readUInt8(5),
      ...caps.value,
    },
    h.length,
  );
}

/** A server's SpiceLinkHeader + SpiceLinkReply + caps. */
export function parseSpiceLinkReply(bytes: Uint8Array): Parse<SpiceLinkReply, SpiceAuthErrorCode> {
  const h = readHeader(view(bytes), SPICE_LINK_REPLY_BYTES);
  if (h.kind !== 'done') return h;
  const body = view(bytes).subarray(SPICE_LINK_HEADER_BYTES, h.length);
  const at = 4 + SPICE_PUBKEY_BYTES;
  const caps = readCaps(body, body.readUInt32LE(at), body.readUInt32LE(at + 4), body.readUInt32LE(at + 8), SPICE_LINK_REPLY_BYTES);
  if (caps.kind !== 'done') return caps;
  return done(
    {
      major: h.value.major,
      minor: h.value.minor,
      error: body.readUInt32LE(0),
      publicKey: Buffer.from(body.subarray(4, at)),
      ...caps.value,
    },
    h.length,
  );
}

export function spiceLinkMessMessage(m: Omit<SpiceLinkMess, 'major' | 'minor'>): Buffer {
  const body = Buffer.alloc(SPICE_LINK_MESS_BYTES);
  body.writeUInt32LE(m.connectionId >>> 0, 0);
  body.writeUInt8(m.channelType & 0xff, 4);
  body.writeUInt8(m.channelId & 0xff, 5);
  body.writeUInt32LE(m.commonCaps.length, 6);
  body.writeUInt32LE(m.channelCaps.length, 10);
  body.writeUInt32LE(SPICE_LINK_MESS_BYTES, 14);
  return withHeader(Buffer.concat([body, capWords(m.commonCaps), capWords(m.channelCaps)]));
}

/**
 * A reply. With a non-OK `error` everything else is zero, key and caps offset included, which is
 * how spice-server refuses a link (reds_send_link_error).
 */
export function spiceLinkReplyMessage(r: { error: number; publicKey?: Uint8Array; commonCaps?: readonly number[]; channelCaps?: readonly number[] }): Buffer {
  const body = Buffer.alloc(SPICE_LINK_REPLY_BYTES);
  body.writeUInt32LE(r.error >>> 0, 0);
  if (r.error !== SPICE_LINK_ERR.OK) return withHeader(body);
  if (r.publicKey !== undefined) view(r.publicKey).copy(body, 4, 0, SPICE_PUBKEY_BYTES);
  const common = r.commonCaps ?? [];
  const channel = r.channelCaps ?? [];
  const at = 4 + SPICE_PUBKEY_BYTES;
  body.writeUInt32LE(common.length, at);
  body.writeUInt32LE(channel.length, at + 4);
  body.writeUInt32LE(SPICE_LINK_REPLY_BYTES, at + 8);
  return withHeader(Buffer.concat([body, capWords(common), capWords(channel)]));
}

/** Whether bit `cap` is set in a caps word list. */
export function hasSpiceCap(words: readonly number[], cap: number): boolean {
  const word = words[cap >>> 5];
  return word !== undefined && ((word >>> (cap & 31)) & 1) === 1;
}

/**
 * How many bytes the client sends after the server's reply: the u32 auth mechanism if it set
 * PROTOCOL_AUTH_SELECTION (spice-html5 and remote-viewer do), then the 128-byte ticket.
 */
export function spiceClientAuthBytes(mess: SpiceLinkMess): number {
  return (hasSpiceCap(mess.commonCaps, SPICE_COMMON_CAP.PROTOCOL_AUTH_SELECTION) ? 4 : 0) + SPICE_TICKET_BYTES;
}

/** SpiceLinkAuthMechanism: a u32 (SPICE_COMMON_CAP.AUTH_SPICE for a ticket). */
export function parseSpiceAuthMechanism(bytes: Uint8Array): Parse<number, SpiceAuthErrorCode> {
  return bytes.length < 4 ? more(4) : done(view(bytes).readUInt32LE(0), 4);
}

export function spiceAuthMechanismMessage(mechanism: number = SPICE_COMMON_CAP.AUTH_SPICE): Buffer {
  return u32le(mechanism);
}

/** The u32 link result that ends the link stage. */
export function parseSpiceLinkResult(bytes: Uint8Array): Parse<number, SpiceAuthErrorCode> {
  return bytes.length < 4 ? more(4) : done(view(bytes).readUInt32LE(0), 4);
}

export function spiceLinkResultMessage(error: number): Buffer {
  return u32le(error);
}

export type SpiceTicketErrorCode = 'bad-key' | 'bad-password';

/**
 * The ticket for `password`: RSA-OAEP (SHA-1, MGF1-SHA-1) of its UTF-8 bytes and a NUL, under
 * the reply's public key, which is what spice-server decrypts with RSA_PKCS1_OAEP_PADDING and
 * then compares with strcmp. So a password may not hold a NUL, and spice-server sets none longer
 * than 60 bytes. OAEP is randomised: two tickets for one password differ.
 */
export function spiceTicket(password: string | Uint8Array, publicKeyDer: Uint8Array): Result<Buffer, SpiceTicketErrorCode> {
  const secret = typeof password === 'string' ? Buffer.from(password, 'utf8') : view(password);
  if (secret.includes(0)) return err('bad-password', 'a SPICE password cannot contain NUL');
  if (secret.length > SPICE_MAX_PASSWORD_BYTES) return err('bad-password', `a SPICE password is at most ${SPICE_MAX_PASSWORD_BYTES} bytes`);
  let key;
  try {
    key = createPublicKey({ key: view(publicKeyDer), format: 'der', type: 'spki' });
  } catch (e) {
    return err('bad-key', `not a SubjectPublicKeyInfo: ${(e as Error).message}`);
  }
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  if (key.asymmetricKeyType !== 'rsa' || bits < 1024) return err('bad-key', `need an RSA key of at least 1024 bits, got ${key.asymmetricKeyType} ${bits}`);
  return ok(publicEncrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, Buffer.concat([secret, Buffer.from([0])])));
}

// ---- helpers ----------------------------------------------------------------------------------

interface Header {
  readonly major: number;
  readonly minor: number;
}

/** The link header; `done` only once the whole body (of at least `minBody` bytes) is there. */
function readHeader(b: Buffer, minBody: number): Parse<Header, SpiceAuthErrorCode> {
  for (let i = 0; i < Math.min(b.length, 4); i++) if (b[i] !== SPICE_MAGIC[i]) return failure('bad-magic', 'a SPICE link message starts with "REDQ"');
  if (b.length < SPICE_LINK_HEADER_BYTES) return more(SPICE_LINK_HEADER_BYTES);
  const major = b.readUInt32LE(4);
  const minor = b.readUInt32LE(8);
  const size = b.readUInt32LE(12);
  if (major !== SPICE_VERSION_MAJOR) return failure('unsupported-version', `SPICE protocol ${major}.${minor}`);
  if (size < minBody) return failure('malformed', `a link body of ${size} bytes; at least ${minBody}`);
  if (size > SPICE_LINK_MAX_BYTES) return failure('too-large', `a link body of ${size} bytes; the cap is ${SPICE_LINK_MAX_BYTES}`);
  const total = SPICE_LINK_HEADER_BYTES + size;
  if (b.length < total) return more(total);
  return done({ major, minor }, total);
}

/** Caps as spice-server checks them: counts capped, and the words inside the body. */
function readCaps(
  body: Buffer,
  common: number,
  channel: number,
  offset: number,
  fixed: number,
): Parse<{ commonCaps: number[]; channelCaps: number[] }, SpiceAuthErrorCode> {
  if (common > SPICE_MAX_CAPS || channel > SPICE_MAX_CAPS) return failure('too-large', `${common} + ${channel} caps words; the cap is ${SPICE_MAX_CAPS} each`);
  const words = common + channel;
  if (words > 0 && (offset < fixed || offset + 4 * words > body.length)) return failure('malformed', `caps at ${offset}..${offset + 4 * words} outside the ${body.length}-byte body`);
  const read = (from: number, n: number): number[] => Array.from({ length: n }, (_, i) => body.readUInt32LE(offset + 4 * (from + i)));
  return done({ commonCaps: read(0, common), channelCaps: read(common, channel) }, body.length);
}

function withHeader(body: Buffer): Buffer {
  const h = Buffer.alloc(SPICE_LINK_HEADER_BYTES);
  SPICE_MAGIC.copy(h, 0);
  h.writeUInt32LE(SPICE_VERSION_MAJOR, 4);
  h.writeUInt32LE(SPICE_VERSION_MINOR, 8);
  h.writeUInt32LE(body.length, 12);
  return Buffer.concat([h, body]);
}

function capWords(words: readonly number[]): Buffer {
  const b = Buffer.alloc(4 * words.length);
  words.forEach((w, i) => b.writeUInt32LE(w >>> 0, 4 * i));
  return b;
}

function u32le(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}
