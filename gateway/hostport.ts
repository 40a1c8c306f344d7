/**
 * `host:port` text, parsed and written in one place: `name:port`, `1.2.3.4:port` and
 * `[v6]:port` (RFC 3986 section 3.2.2: an IPv6 literal is bracketed, or its colons would run into
 * the port's). Used for the listen and advertise addresses (config.ts, server.ts), node addresses
 * (cluster/peers.ts), CONNECT authorities (routing.ts) and console addresses given to the CLI.
 *
 * Pure and bounded: it never resolves a name, and refuses anything over MAX_HOST_PORT_LENGTH
 * before looking at it. What a caller then does with the host (lowercase it, refuse address
 * literals, split a ticket off it) is the caller's business.
 */
import { isIP } from 'node:net';

/** A 253-byte DNS name, a colon and five digits fit with room to spare. */
export const MAX_HOST_PORT_LENGTH = 300;

export interface HostPort {
  /** As written, without brackets (an IPv6 literal may carry a `%zone`). */
  readonly host: string;
  readonly port: number;
}

export interface HostPortRules {
  /** Accept port 0 (listening: the system picks a port). @default false */
  readonly portZero?: boolean | undefined;
  /** Accept `:port`, an empty host (listening: every address). @default false */
  readonly emptyHost?: boolean | undefined;
}

/** Host names and IPv4 literals; `%` because CONNECT authorities have always allowed it. */
const NAME_RE = /^[A-Za-z0-9._%-]+$/;
/** Inside brackets: an IPv6 literal, optionally with a zone (`fe80::1%eth0`). */
const BRACKETED_RE = /^[A-Za-z0-9._%:-]+$/;

/** A port in decimal, 1 to 65535 (0 too with `portZero`); undefined for anything else. */
export function parsePort(text: string, rules: Pick<HostPortRules, 'portZero'> = {}): number | undefined {
  if (!/^[0-9]{1,5}$/.test(text)) return undefined;
  const port = Number(text);
  if (port > 65535 || (port === 0 && !rules.portZero)) return undefined;
  return port;
}

/**
 * `host:port` or `[v6]:port`; undefined when malformed. An IPv6 literal without brackets is
 * refused: `::1:22` could be host `::1` port 22 or host `::1:22` with no port.
 */
export function parseHostPort(text: string, rules: HostPortRules = {}): HostPort | undefined {
  if (text.length === 0 || text.length > MAX_HOST_PORT_LENGTH) return undefined;
  let host: string;
  let portText: string;
  if (text.startsWith('[')) {
    const end = text.indexOf(']');
    if (end < 0 || text[end + 1] !== ':') return undefined;
    host = text.slice(1, end);
    portText = text.slice(end + 2);
    if (!BRACKETED_RE.test(host) || isIP(host.split('%')[0] ?? '') !== 6) return undefined;
  } else {
    const colon = text.lastIndexOf(':');
    if (colon < 0) return undefined;
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host === '' ? !rules.emptyHost : !NAME_RE.test(host)) return undefined;
  }
  const port = parsePort(portText, rules);
  return port === undefined ? undefined : { host, port };
}

/** The other way: brackets around an IPv6 host, so the result parses back to the same pair. */
export function formatHostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}
