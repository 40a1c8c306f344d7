/**
 * The key client addresses are counted under, for connection limits (admission.ts) and for
 * authentication budgets (auth/limits.ts): IPv4 by the address (an IPv4-mapped IPv6 address is
 * IPv4), IPv6 by its /64, since one subscriber usually holds a whole /64.
 */
import { isIPv4, isIPv6 } from 'node:net';

/**
 * The key an address is counted under: IPv4 (and IPv4-mapped IPv6, ::ffff:a.b.c.d) by the address,
 * IPv6 by its /64, the smallest block a single site is usually given (RFC 6177), so one host
 * cannot take a fresh address per connection. Anything else (a name, 'unknown') is its own key.
 */
export function addressKey(address: string): string {
  if (isIPv4(address)) return address;
  const zone = address.indexOf('%');
  const bare = zone < 0 ? address : address.slice(0, zone);
  if (!isIPv6(bare)) return address;
  const groups = expandV6(bare);
  // ::ffff:a.b.c.d in any spelling (dotted, hex, expanded) is the IPv4 client a.b.c.d.
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    const [hi = 0, lo = 0] = groups.slice(6);
    return `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
  }
  return `${groups.slice(0, 4).map((g) => g.toString(16)).join(':')}::/64`;
}

/** The eight 16-bit groups of a valid IPv6 address (with '::' and an embedded IPv4 tail). */
function expandV6(address: string): number[] {
  let text = address.toLowerCase();
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = v4.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const zeros = tail === undefined ? [] : Array<string>(8 - left.length - right.length).fill('0');
  return [...left, ...zeros, ...right].map((g) => parseInt(g, 16));
}
