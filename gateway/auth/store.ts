/**
 * Shared, short-lived auth state: console ticket redemption and session revocation. It must be
 * cluster-wide (a ticket redeemed on one node is spent on all), so it sits behind an async
 * interface: memory here (one node), Redis for a cluster (redis-store.ts), with the same semantics.
 *
 * Revocations must survive a restart (CONTRACT section 6), or a logged-out session token, and the
 * resume tokens it minted, would work again after one: the memory store keeps them in a file in
 * the state folder (`revoked-sessions.json`), replaced atomically on every revocation and pruned of
 * entries whose session has expired anyway. Tickets stay in memory: they live 60 s.
 */
import { readFileSync, statSync } from 'node:fs';
import type { Protocol } from '../directory/directory.js';
import { writeAtomic } from '../directory/memory.js';

export interface TicketRecord {
  /** Hex of the ticket's random id; the ticket string itself is never stored. */
  readonly id: string;
  readonly user: string;
  readonly vm: string;
  readonly protocol: Protocol;
  readonly expiresAt: number;
  /** The API session that asked for the ticket, if any: revoking it kills the ticket too. */
  readonly session?: string;
  /**
   * The console session the ticket opens: its resume token's `sid`, so that a reconnect with the
   * resume token is the same session as the ticket's connections (session caps, max session time).
   */
  readonly console?: string;
}

export type Redemption =
  /** First use: opens a new console session. */
  | { readonly outcome: 'first'; readonly record: TicketRecord; readonly sessionId: string }
  /** Another connection of the session the first use opened (a SPICE channel). */
  | { readonly outcome: 'again'; readonly record: TicketRecord; readonly sessionId: string }
  | { readonly outcome: 'refused'; readonly reason: 'unknown' | 'expired' | 'replay' };

/**
 * When a spent ticket is accepted again (config auth.ticketReuseMs, auth.ticketReuseAfterCloseMs):
 * for the further connections a real client opens for the same console session (a SPICE client's
 * other channels, an RDP client's retry after security negotiation), and nothing else.
 */
export interface TicketReuse {
  /** Only this long after the first use, whatever else holds. */
  readonly windowMs: number;
  /** Only while a connection opened with the ticket is open, or this long after the last one closed. */
  readonly afterCloseMs: number;
}

export interface AuthStore {
  putTicket(record: TicketRecord): Promise<void>;
  /**
   * Spend a ticket, atomically: the first redemption binds it to `client` and a new console
   * session and counts one open connection; later ones are 'again' (the same session, one more
   * open connection) only from that address, within `reuse.windowMs` of the first, and while one
   * of its connections is open or within `reuse.afterCloseMs` of the last one's end; else 'replay'.
   */
  redeemTicket(id: string, client: string, now: number, newSessionId: string, reuse: TicketReuse): Promise<Redemption>;
  /** A connection a redemption counted has ended (or never opened). Never rejects. */
  releaseTicket(id: string, now: number): Promise<void>;
  revokeSession(sessionId: string, until: number): Promise<void>;
  isSessionRevoked(sessionId: string): Promise<boolean>;
  close(): Promise<void>;
}

interface TicketState {
  record: TicketRecord;
  boundTo?: { client: string; sessionId: string; at: number; open: number; closedAt: number };
}

export interface MemoryAuthStoreOptions {
  /** @default Date.now */
  readonly now?: () => number;
  /** Where revocations are kept across restarts. @default none (memory only: tests) */
  readonly revocationsFile?: string;
}

const REVOCATIONS_FORMAT = 'oneport-revoked-sessions/1';
/** A revocations file is one short line per logged-out session still within its lifetime. */
const MAX_REVOCATIONS_FILE_BYTES = 64 * 1024 * 1024;
const SESSION_ID_RE = /^[A-Za-z0-9_-]{1,64}$/;

export class MemoryAuthStore implements AuthStore {
  private readonly tickets = new Map<string, TicketState>();
  private readonly revoked = new Map<string, number>();
  private readonly sweeper: NodeJS.Timeout;
  private readonly now: () => number;
  private readonly file: string | undefined;
  /** The write under way, and the one queued behind it (which will include every change so far). */
  private writing: Promise<void> | undefined;
  private queued: Promise<void> | undefined;

  /**
   * Reads the revocations file, if given and present. Throws if it is not one we wrote (rather
   * than start with logged-out sessions alive again); deleting it is the operator's call.
   */
  constructor(opts: MemoryAuthStoreOptions | (() => number) = {}) {
    const o = typeof opts === 'function' ? { now: opts } : opts;
    this.now = o.now ?? Date.now;
    this.file = o.revocationsFile;
    if (this.file) this.load(this.file);
    // Expired entries are dropped in the background; lookups check expiry themselves.
    this.sweeper = setInterval(() => this.sweep(), 30_000);
    this.sweeper.unref();
  }

  private load(file: string): void {
    let text: string;
    try {
      if (statSync(file).size > MAX_REVOCATIONS_FILE_BYTES) throw new Error(`larger than ${MAX_REVOCATIONS_FILE_BYTES} bytes`);
      text = readFileSync(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new Error(`cannot read the session revocations file ${file}: ${(e as Error).message}`, { cause: e });
    }
    const bad = (why: string): Error =>
      new Error(`session revocations file ${file} is damaged (${why}); logged-out sessions would work again without it: delete it only if that is acceptable`);
    let data: unknown;
    try {
      data = JSON.parse(text);
    } catch {
      throw bad('not JSON');
    }
    const shape = data as { format?: unknown; revoked?: unknown };
    if (typeof data !== 'object' || data === null || shape.format !== REVOCATIONS_FORMAT || typeof shape.revoked !== 'object' || shape.revoked === null) {
      throw bad(`not ${REVOCATIONS_FORMAT}`);
    }
    const t = this.now();
    for (const [sid, until] of Object.entries(shape.revoked)) {
      if (!SESSION_ID_RE.test(sid) || typeof until !== 'number' || !Number.isFinite(until)) throw bad('a malformed entry');
      if (until > t) this.revoked.set(sid, until);
    }
  }

  /**
   * Write the revocations (pruned of expired ones). Resolves once a write that began after this
   * call has reached the disk; concurrent calls share one queued write.
   */
  private persist(): Promise<void> {
    const file = this.file;
    if (!file) return Promise.resolve();
    if (!this.writing) {
      const t = this.now();
      const revoked: Record<string, number> = {};
      for (const [sid, until] of this.revoked) if (until > t) revoked[sid] = until;
      const w = writeAtomic(file, `${JSON.stringify({ format: REVOCATIONS_FORMAT, revoked })}\n`);
      this.writing = w.finally(() => {
        this.writing = undefined;
      });
      return this.writing;
    }
    // The write under way may have serialised the map before this change: queue one more.
    this.queued ??= this.writing
      .catch(() => undefined)
      .then(() => {
        this.queued = undefined;
        return this.persist();
      });
    return this.queued;
  }

  private sweep(): void {
    const t = this.now();
    for (const [id, s] of this.tickets) if (s.record.expiresAt <= t) this.tickets.delete(id);
    for (const [id, until] of this.revoked) if (until <= t) this.revoked.delete(id);
  }

  async putTicket(record: TicketRecord): Promise<void> {
    this.tickets.set(record.id, { record });
  }

  async redeemTicket(id: string, client: string, now: number, newSessionId: string, reuse: TicketReuse): Promise<Redemption> {
    const s = this.tickets.get(id);
    if (!s) return { outcome: 'refused', reason: 'unknown' };
    if (s.record.expiresAt <= now) {
      this.tickets.delete(id);
      return { outcome: 'refused', reason: 'expired' };
    }
    const b = s.boundTo;
    if (!b) {
      s.boundTo = { client, sessionId: newSessionId, at: now, open: 1, closedAt: 0 };
      return { outcome: 'first', record: s.record, sessionId: newSessionId };
    }
    if (b.client === client && now - b.at <= reuse.windowMs && (b.open > 0 || now - b.closedAt <= reuse.afterCloseMs)) {
      b.open += 1;
      return { outcome: 'again', record: s.record, sessionId: b.sessionId };
    }
    return { outcome: 'refused', reason: 'replay' };
  }

  async releaseTicket(id: string, now: number): Promise<void> {
    const b = this.tickets.get(id)?.boundTo;
    if (!b || b.open === 0) return;
    b.open -= 1;
    if (b.open === 0) b.closedAt = now;
  }

  /** Resolves once the revocation is on disk (when there is a file): a logout is final when answered. */
  async revokeSession(sessionId: string, until: number): Promise<void> {
    if (until <= this.now()) return;
    this.revoked.set(sessionId, Math.max(until, this.revoked.get(sessionId) ?? 0));
    await this.persist();
  }

  async isSessionRevoked(sessionId: string): Promise<boolean> {
    const until = this.revoked.get(sessionId);
    return until !== undefined && until > this.now();
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
    await (this.queued ?? this.writing)?.catch(() => undefined);
  }
}
