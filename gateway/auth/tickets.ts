/**
 * Console tickets (CONTRACT section 6).
 *
 * A ticket is 31 bytes, base32 (lowercase, no padding) to 50 characters, so it fits in one DNS
 * label and can ride in a CONNECT host name:
 *
 *   0      version (1)
 *   1      signing key id
 *   2      protocol (0 rdp, 1 vnc, 2 spice)
 *   3..6   expiry, seconds since the epoch, big-endian
 *   7..16  random id (80 bits)
 *   17..30 HMAC-SHA256(key, "oneport-ticket" 0x00 bytes[0..16] vm)[0..13]
 *
 * The MAC binds the ticket to its VM and protocol and can be checked on any node without state,
 * in constant time, before the shared store is asked anything: forged, expired and cross-VM
 * tickets cost one HMAC. The store then binds it to its user and spends it (single use).
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { KeyRing, Protocol, SigningKey } from '../directory/directory.js';
import { base32Decode, base32Encode } from './base32.js';

const VERSION = 1;
const BYTES = 31;
const MAC_OFFSET = 17;
export const TICKET_LENGTH = Math.ceil((BYTES * 8) / 5);
/** Cheap shape test, used to tell a ticket from a password in Basic credentials. */
export const TICKET_RE = new RegExp(`^[a-z2-7]{${TICKET_LENGTH}}$`);

const PROTOCOL_CODES: readonly Protocol[] = ['rdp', 'vnc', 'spice'];

export interface TicketClaims {
  /** Hex of the random id; key of the ticket's record in the store. */
  readonly id: string;
  readonly protocol: Protocol;
  readonly expiresAt: number;
}

function mac(key: SigningKey, signed: Uint8Array, vm: string): Buffer {
  return createHmac('sha256', Buffer.from(key.secret, 'base64'))
    .update('oneport-ticket\0')
    .update(signed)
    .update(vm, 'utf8')
    .digest()
    .subarray(0, BYTES - MAC_OFFSET);
}

export function mintTicket(keys: KeyRing, vm: string, protocol: Protocol, ttlMs: number, now = Date.now()): { ticket: string; claims: TicketClaims } {
  const buf = Buffer.alloc(BYTES);
  buf[0] = VERSION;
  buf[1] = keys.current.id;
  buf[2] = PROTOCOL_CODES.indexOf(protocol);
  // Round expiry down so a ticket never outlives its configured lifetime.
  const expSeconds = Math.floor((now + ttlMs) / 1000);
  buf.writeUInt32BE(expSeconds, 3);
  randomBytes(10).copy(buf, 7);
  mac(keys.current, buf.subarray(0, MAC_OFFSET), vm).copy(buf, MAC_OFFSET);
  return {
    ticket: base32Encode(buf),
    claims: { id: buf.subarray(7, MAC_OFFSET).toString('hex'), protocol, expiresAt: expSeconds * 1000 },
  };
}

export type TicketCheck =
  | { readonly ok: true; readonly claims: TicketClaims }
  | { readonly ok: false; readonly reason: 'malformed' | 'unknown-key' | 'bad-mac' | 'expired' };

/** Stateless check of shape, key, MAC (for this VM) and expiry. Constant-time MAC comparison. */
export function checkTicket(keys: KeyRing, ticket: string, vm: string, now = Date.now()): TicketCheck {
  if (!TICKET_RE.test(ticket)) return { ok: false, reason: 'malformed' };
  const buf = base32Decode(ticket, BYTES);
  if (!buf || buf[0] !== VERSION) return { ok: false, reason: 'malformed' };
  const protocol = PROTOCOL_CODES[buf[2] ?? 255];
  if (!protocol) return { ok: false, reason: 'malformed' };
  const key = [keys.current, ...keys.previous].find((k) => k.id === buf[1]);
  if (!key) return { ok: false, reason: 'unknown-key' };
  const expected = mac(key, buf.subarray(0, MAC_OFFSET), vm);
  if (!timingSafeEqual(expected, buf.subarray(MAC_OFFSET))) return { ok: false, reason: 'bad-mac' };
  const expiresAt = buf.readUInt32BE(3) * 1000;
  if (expiresAt <= now) return { ok: false, reason: 'expired' };
  return { ok: true, claims: { id: buf.subarray(7, MAC_OFFSET).toString('hex'), protocol, expiresAt } };
}

/** The protocol a well-formed ticket claims, before any check (to pick an endpoint). */
export function ticketProtocol(ticket: string): Protocol | undefined {
  if (!TICKET_RE.test(ticket)) return undefined;
  const buf = base32Decode(ticket, BYTES);
  return buf ? PROTOCOL_CODES[buf[2] ?? 255] : undefined;
}
