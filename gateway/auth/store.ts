/**
 * Shared, short-lived auth state: console ticket redemption and session revocation. It must be
 * cluster-wide (a ticket redeemed on one node is spent on all), so it sits behind an async
 * interface: memory here, Redis in the cluster issue, with the same semantics.
 */
import type { Protocol } from '../directory/directory.js';

export interface TicketRecord {
  /** Hex of the ticket's random id; the ticket string itself is never stored. */
  readonly id: string;
  readonly user: string;
  readonly vm: string;
  readonly protocol: Protocol;
  readonly expiresAt: number;
}

export type Redemption =
  /** First use: opens a new console session. */
  | { readonly outcome: 'first'; readonly record: TicketRecord; readonly sessionId: string }
  /** Another connection of the session the first use opened (a SPICE channel). */
  | { readonly outcome: 'again'; readonly record: TicketRecord; readonly sessionId: string }
  | { readonly outcome: 'refused'; readonly reason: 'unknown' | 'expired' | 'replay' };

export interface AuthStore {
  putTicket(record: TicketRecord): Promise<void>;
  /**
   * Atomically: the first call for an id binds it to `client` and returns 'first'; later calls
   * from the same client address before expiry return 'again' with the same session id; anything
   * else is refused.
   */
  redeemTicket(id: string, client: string, now: number, newSessionId: string): Promise<Redemption>;
  revokeSession(sessionId: string, until: number): Promise<void>;
  isSessionRevoked(sessionId: string): Promise<boolean>;
  close(): Promise<void>;
}

interface TicketState {
  record: TicketRecord;
  boundTo?: { client: string; sessionId: string };
}

export class MemoryAuthStore implements AuthStore {
  private readonly tickets = new Map<string, TicketState>();
  private readonly revoked = new Map<string, number>();
  private readonly sweeper: NodeJS.Timeout;

  constructor(private readonly now: () => number = Date.now) {
    // Expired entries are dropped in the background; lookups check expiry themselves.
    this.sweeper = setInterval(() => this.sweep(), 30_000);
    this.sweeper.unref();
  }

  private sweep(): void {
    const t = this.now();
    for (const [id, s] of this.tickets) if (s.record.expiresAt <= t) this.tickets.delete(id);
    for (const [id, until] of this.revoked) if (until <= t) this.revoked.delete(id);
  }

  async putTicket(record: TicketRecord): Promise<void> {
    this.tickets.set(record.id, { record });
  }

  async redeemTicket(id: string, client: string, now: number, newSessionId: string): Promise<Redemption> {
    const s = this.tickets.get(id);
    if (!s) return { outcome: 'refused', reason: 'unknown' };
    if (s.record.expiresAt <= now) {
      this.tickets.delete(id);
      return { outcome: 'refused', reason: 'expired' };
    }
    if (!s.boundTo) {
      s.boundTo = { client, sessionId: newSessionId };
      return { outcome: 'first', record: s.record, sessionId: newSessionId };
    }
    if (s.boundTo.client === client) return { outcome: 'again', record: s.record, sessionId: s.boundTo.sessionId };
    return { outcome: 'refused', reason: 'replay' };
  }

  async revokeSession(sessionId: string, until: number): Promise<void> {
    this.revoked.set(sessionId, until);
  }

  async isSessionRevoked(sessionId: string): Promise<boolean> {
    const until = this.revoked.get(sessionId);
    return until !== undefined && until > this.now();
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
  }
}
