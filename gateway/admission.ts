/**
 * Who may hold one more connection on the port (security issue 10, point 3). A plain type, free
 * of sockets, so its rules are tested alone; the listener asks it at accept, and again once a
 * trusted PROXY header has named the real client.
 *
 * Two rules, both answered before a byte is read (DECISIONS 2026-12-03: refuse at accept, a reset
 * instead of a 429 is acceptable):
 * - limits.maxConnectionsPerAddress: an address (an IPv6 client by its /64, see address.ts)
 *   holding that many is refused.
 * - Fair share near the global cap: once the node holds HIGH_WATER (80%) of limits.maxConnections,
 *   an address is refused when it already holds its fair share, maxConnections / (A + 1), A being
 *   the addresses holding connections now. The "+ 1" is the room kept for a newcomer: if every
 *   address stops at its share, they hold at most A/(A+1) of the cap together, and one full share
 *   is still free for an address that holds nothing (which is never refused by this rule). Below
 *   80% the rule stays out of the way of one busy address (a NAT, a SPICE client's channels).
 * The global cap itself is Node's server.maxConnections (connections beyond it are dropped).
 *
 * A parked resumable session (tunnel/session.ts) keeps its console connection for a client whose
 * socket is gone; it holds a count for the address that parked it (`hold`), so dropping legs on
 * purpose does not free slots for more: the count is released when the session resumes or ends.
 */

/** Above this share of limits.maxConnections, addresses are held to their fair share. */
export const HIGH_WATER = 0.8;

export type Refusal = 'address-limit' | 'fair-share';

/**
 * What the listener and the parked sessions need of the counts: ConnectionCounts in one process;
 * with workers, a client of the primary's ConnectionCounts (workers/remote.ts), whose answer to
 * `admit` comes over IPC.
 */
export interface Admission {
  /** Admit one more connection from `key` and count it, or say why it must be refused (not counted). */
  admit(key: string): Refusal | undefined | Promise<Refusal | undefined>;
  /** Count one without asking (an address exempt from the rules). */
  add(key: string): void;
  remove(key: string): void;
  hold(key: string): () => void;
  /** Connections counted (with workers: those counted through this process). */
  readonly total: number;
  holding(key: string): number;
}

export class ConnectionCounts implements Admission {
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

  admit(key: string): Refusal | undefined {
    const refusal = this.check(key);
    // One more: the rules count it from now on.
    if (refusal === undefined) this.add(key);
    return refusal;
  }

  add(key: string): void {
    this.perKey.set(key, this.holding(key) + 1);
    this.open++;
  }

  /**
   * Count one connection for `key` that is not a socket (a parked session), without checking: it
   * takes the place of the socket that just closed. Returns the release, which is idempotent.
   */
  hold(key: string): () => void {
    return holdCount(this, key);
  }

  remove(key: string): void {
    const n = this.holding(key) - 1;
    if (n < 0) return;
    if (n === 0) this.perKey.delete(key);
    else this.perKey.set(key, n);
    this.open--;
  }
}

/** Count one for `key` now; the returned release (idempotent) gives it back. */
export function holdCount(counts: { add(key: string): void; remove(key: string): void }, key: string): () => void {
  counts.add(key);
  let held = true;
  return () => {
    if (!held) return;
    held = false;
    counts.remove(key);
  };
}
