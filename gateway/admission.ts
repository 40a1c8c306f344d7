/**
 * Who may hold one more connection on the port (security issue 10, point 3). A plain type, free
 * of sockets, so its rules are tested alone; the listener asks it at accept, and again once a
 * trusted PROXY header has named the real client.
 *
 * Two rules, both answered before a byte is read (DECISIONS 2026-12-03: refuse at accept, a reset
 * instead of a 429 is acceptable):
 * - limits.maxConnectionsPerAddress: an address (an IPv6 client by its /64, see addressKey)
 *   holding that many is refused.
 * - Fair share near the global cap: once the node holds HIGH_WATER (80%) of limits.maxConnections,
 *   an address is refused when it already holds its fair share, maxConnections / (A + 1), A being
 *   the addresses holding connections now. The "+ 1" is the room kept for a newcomer: if every
 *   address stops at its share, they hold at most A/(A+1) of the cap together, and one full share
 *   is still free for an address that holds nothing (which is never refused by this rule). Below
 *   80% the rule stays out of the way of one busy address (a NAT, a SPICE client's channels).
 * The global cap itself is Node's server.maxConnections (connections beyond it are dropped).
 */
import { isIPv4, isIPv6 } from 'node:net';

/** Above this share of limits.maxConnections, addresses are held to their fair share. */
export const HIGH_WATER = 0.8;

export type Refusal = 'address-limit' | 'fair-share';

/**
 * The key an address is counted under: IPv4 (and IPv4-mapped IPv6, ::ffff:a.b.c.d) by the address,
 * IPv6 by its /64, the smallest block a single site is usually given (RFC 6177), so one host
 * cannot take a fresh address per connection. Anything else (a name, 'unknown') is its own key.
 */
export function addressKey(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped && isIPv4(mapped[1] ?? '')) return mapped[1] ?? address;
  if (isIPv4(address)) return address;
  const zone = address.indexOf('%');
  const bare = zone < 0 ? address : address.slice(0, zone);
  if (!isIPv6(bare)) return address;
  const groups = expandV6(bare);
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

export class ConnectionCounts {
  private readonly perKey = new Map<string, number>();
  private open = 0;

  constructor(private readonly limits: { readonly maxConnections: number; readonly maxConnectionsPerAddress: number }) {}

  /** Connections counted, all addresses together. */
  get total(): number {
    return this.open;
  }

  holding(key: string): number {
    return this.perKey.get(key) ?? 0;
  }

  /** Why one more connection from `key` (not counted yet) must be refused, or undefined to admit it. */
  check(key: string): Refusal | undefined {
    const held = this.holding(key);
    if (held >= this.limits.maxConnectionsPerAddress) return 'address-limit';
    const { maxConnections } = this.limits;
    if (this.open >= Math.floor(maxConnections * HIGH_WATER)) {
      const share = Math.max(1, Math.floor(maxConnections / (this.perKey.size + 1)));
      if (held >= share) return 'fair-share';
    }
    return undefined;
  }

  add(key: string): void {
    this.perKey.set(key, this.holding(key) + 1);
    this.open++;
  }

  remove(key: string): void {
    const n = this.holding(key) - 1;
    if (n < 0) return;
    if (n === 0) this.perKey.delete(key);
    else this.perKey.set(key, n);
    this.open--;
  }
}
