/**
 * Password hashing with scrypt (RFC 7914), stored as `scrypt$N$r$p$salt$hash` (base64).
 * Verification is constant-time, and unknown users cost the same as known ones so timing does
 * not tell which user names exist.
 */
import { randomBytes, scrypt as scryptCb, timingSafeEqual, type ScryptOptions } from 'node:crypto';

const N = 1 << 15;
const R = 8;
const P = 1;
const KEYLEN = 32;
/** scrypt needs 128 * N * r bytes; leave headroom above Node's 32 MiB default. */
const MAXMEM = 128 * N * R * 2;

function scrypt(password: string, salt: Buffer, keylen: number, opts: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scryptCb(password, salt, keylen, opts, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const hash = await scrypt(password, salt, KEYLEN, { N, r: R, p: P, maxmem: MAXMEM });
  return `scrypt$${N}$${R}$${P}$${salt.toString('base64')}$${hash.toString('base64')}`;
}

let dummyHash: Promise<string> | undefined;

/** @param stored undefined for an unknown user: a dummy hash is checked so timing is the same. */
export async function verifyPassword(password: string, stored: string | undefined): Promise<boolean> {
  const target = stored ?? (await (dummyHash ??= hashPassword(randomBytes(16).toString('hex'))));
  const parts = target.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false;
  const [, n, r, p, saltB64, hashB64] = parts as [string, string, string, string, string, string];
  const cost = Number(n);
  const blockSize = Number(r);
  const parallel = Number(p);
  // Refuse parameters that would let a tampered directory exhaust memory or CPU.
  if (!(cost >= 1024 && cost <= 1 << 20 && blockSize >= 1 && blockSize <= 32 && parallel >= 1 && parallel <= 4)) return false;
  const expected = Buffer.from(hashB64, 'base64');
  if (expected.length < 16 || expected.length > 64) return false;
  const actual = await scrypt(password, Buffer.from(saltB64, 'base64'), expected.length, {
    N: cost,
    r: blockSize,
    p: parallel,
    maxmem: 128 * cost * blockSize * 2,
  });
  return timingSafeEqual(actual, expected) && stored !== undefined;
}

/** A random password people can type: 20 characters from an unambiguous alphabet. */
export function randomPassword(): string {
  const alphabet = 'abcdefghjkmnpqrstuvwxyzABCDEFGHJKMNPQRSTUVWXYZ23456789';
  const bytes = randomBytes(20);
  let s = '';
  for (const b of bytes) s += alphabet[b % alphabet.length];
  return s;
}
