/**
 * Signed bearer tokens: API sessions (hours, revocable) and resume tokens (bound to user + VM and
 * to the API session that minted them, at most 10 minutes; used to reconnect without a new login).
 * Format:
 *
 *   v1.<base64url(JSON payload)>.<base64url(HMAC-SHA256(key, purpose 0x00 payload))>
 *
 * The purpose is part of the MAC, so a resume token can never pass as a session token.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { KeyRing } from '../directory/directory.js';

export type TokenPurpose = 'session' | 'resume';

export interface TokenPayload {
  /** Key id. */
  readonly k: number;
  /** User name. */
  readonly sub: string;
  /** Session id (revocation) or console session id (resume). */
  readonly sid: string;
  /** Issued at, ms. */
  readonly iat: number;
  /** Expires at, ms. */
  readonly exp: number;
  /** Resume tokens: the VM they reconnect to. */
  readonly vm?: string;
  /**
   * Resume tokens minted in an API session: that session's `sid`. Logging it out (or revoking it)
   * kills the resume token. Absent for tickets issued without a session (admin API, CLI).
   */
  readonly ses?: string;
}

const MAX_TOKEN_LENGTH = 1024;
/** Ids we mint are 16 characters (newId); anything much longer is not ours. */
const MAX_ID_LENGTH = 64;

function sign(secret: string, purpose: TokenPurpose, body: string): Buffer {
  return createHmac('sha256', Buffer.from(secret, 'base64')).update(`${purpose}\0`).update(body).digest();
}

export function newId(): string {
  return randomBytes(12).toString('base64url');
}

export function mintToken(
  keys: KeyRing,
  purpose: TokenPurpose,
  claims: { sub: string; sid?: string; vm?: string; ses?: string },
  ttlMs: number,
  now = Date.now(),
): { token: string; payload: TokenPayload } {
  const payload: TokenPayload = {
    k: keys.current.id,
    sub: claims.sub,
    sid: claims.sid ?? newId(),
    iat: now,
    exp: now + ttlMs,
    ...(claims.vm === undefined ? {} : { vm: claims.vm }),
    ...(claims.ses === undefined ? {} : { ses: claims.ses }),
  };
  const body = Buffer.from(JSON.stringify(payload)).toString('base64url');
  return { token: `v1.${body}.${sign(keys.current.secret, purpose, body).toString('base64url')}`, payload };
}

/** Checks format, key, MAC (constant time) and expiry; the caller checks revocation and the user. */
export function verifyToken(keys: KeyRing, purpose: TokenPurpose, token: string, now = Date.now()): TokenPayload | undefined {
  if (token.length > MAX_TOKEN_LENGTH) return undefined;
  const parts = token.split('.');
  if (parts.length !== 3 || parts[0] !== 'v1') return undefined;
  const [, body, macText] = parts as [string, string, string];
  let payload: TokenPayload;
  try {
    payload = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as TokenPayload;
  } catch {
    return undefined;
  }
  if (typeof payload !== 'object' || payload === null || typeof payload.k !== 'number') return undefined;
  const key = [keys.current, ...keys.previous].find((k) => k.id === payload.k);
  if (!key) return undefined;
  const expected = sign(key.secret, purpose, body);
  const given = Buffer.from(macText, 'base64url');
  // Node's decoder skips characters outside the alphabet and ignores the last character's spare
  // bits, so one MAC has endless spellings (`<mac>!`, `!<mac>`, ...). Only the canonical one is
  // the token: a token string is then one credential, as a ticket is (base32.ts).
  if (given.toString('base64url') !== macText) return undefined;
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return undefined;
  if (typeof payload.exp !== 'number' || payload.exp <= now) return undefined;
  if (typeof payload.sub !== 'string' || typeof payload.sid !== 'string' || payload.sid.length > MAX_ID_LENGTH) return undefined;
  if (payload.ses !== undefined && (typeof payload.ses !== 'string' || payload.ses.length > MAX_ID_LENGTH)) return undefined;
  return payload;
}
