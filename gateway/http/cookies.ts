/**
 * The portal's session cookie (CONTRACT section 5): HttpOnly, Secure, SameSite=Strict, and named
 * with the `__Host-` prefix (RFC 6265bis section 4.1.3.2), which browsers accept only with Secure,
 * Path=/ and no Domain: a sibling subdomain or a clear-text page cannot plant or overwrite it
 * (session fixation, cookie tossing).
 *
 * The old name (`oneport_session`) is not read: nothing but browsers sends it, and reading it would
 * keep that hole open. A browser holding one logs in once more; login and logout expire it.
 */
export const SESSION_COOKIE = '__Host-oneport_session';
const LEGACY_SESSION_COOKIE = 'oneport_session';

export function readCookie(header: string | undefined, name: string): string | undefined {
  if (!header || header.length > 8192) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

const ATTRIBUTES = 'Path=/; HttpOnly; Secure; SameSite=Strict';

/** Set-Cookie values for a login: the session, and the old cookie's expiry. */
export function sessionCookie(token: string, maxAgeMs: number): string[] {
  return [`${SESSION_COOKIE}=${token}; ${ATTRIBUTES}; Max-Age=${Math.floor(maxAgeMs / 1000)}`, expired(LEGACY_SESSION_COOKIE)];
}

/** Set-Cookie values for a logout. */
export function clearedSessionCookie(): string[] {
  return [expired(SESSION_COOKIE), expired(LEGACY_SESSION_COOKIE)];
}

function expired(name: string): string {
  return `${name}=; ${ATTRIBUTES}; Max-Age=0`;
}
