/**
 * Who is this? Passwords (login API, Basic credentials inside TLS), session tokens (API, portal
 * cookie), console tickets (tunnels) and resume tokens. Every failure is counted against the
 * client address (IPv6: its /64) and, for passwords, against the user from that address; a client
 * over its budget is refused before any hashing or lookup is done. Nothing here logs a secret.
 */
import { randomBytes } from 'node:crypto';
import { OneportError } from '../errors.js';
import type { Metrics } from '../metrics.js';
import { type Directory, type Protocol, type UserRecord, type VmRecord, isAssigned } from '../directory/directory.js';
import { verifyPassword } from './passwords.js';
import type { AuthStore, Redemption } from './store.js';
import { checkTicket, mintTicket } from './tickets.js';
import { type TokenPayload, mintToken, verifyToken } from './tokens.js';
import { AttemptLimiter, ConcurrencyGate, type Limiter, type LimiterFactory } from './limits.js';
import { addressKey } from '../address.js';
import { once } from '../once.js';

export interface AuthSettings {
  readonly ticketTtlMs: number;
  /** After its first use, a ticket opens further connections of that console session from the same address for this long. */
  readonly ticketReuseMs: number;
  readonly ticketReuseAfterCloseMs: number;
  readonly resumeTtlMs: number;
  readonly sessionTtlMs: number;
  readonly loginsPerUserPerMinute: number;
  readonly loginsPerAddressPerMinute: number;
  readonly authFailuresPerAddressPerMinute: number;
  readonly concurrentHashesPerAddress: number;
  readonly concurrentHashes: number;
  readonly ticketsPerUserPerMinute: number;
}

/** Longest user name a limiter key holds (names are at most 64; Basic credentials could be longer). */
const MAX_KEYED_NAME = 128;

export interface IssuedTicket {
  readonly ticket: string;
  readonly expiresAt: number;
  readonly resume: string;
  readonly resumeExpiresAt: number;
}

export interface TicketGrant {
  readonly user: UserRecord;
  /** Console session the connection belongs to (shared by a SPICE client's channels). */
  readonly sessionId: string;
  readonly first: boolean;
  /** The API session the ticket was asked for in (portal, API), if any: its logout ends the tunnel. */
  readonly apiSession?: string | undefined;
  /**
   * The connection this redemption let in has ended, or was never made: after the last one a
   * spent ticket is accepted again only for `auth.ticketReuseAfterCloseMs`. Idempotent.
   */
  readonly release: () => void;
}

export class Authenticator {
  /**
   * Keyed on user AND address, never on the user alone: a per-user budget shared by every address
   * cannot tell the guesser from the user, so once a guesser spends it the user's right password is
   * refused too (a lockout switch for anyone who knows a user name), and if it did not refuse the
   * user it would limit nothing. Per user and address, a client that knows the password is limited
   * only by its own failures; a guesser spread over many addresses is bounded by each address's
   * budget (loginsPerAddress, IPv6 per /64), scrypt's cost and the concurrency gate.
   */
  private readonly loginsPerUser: Limiter;
  private readonly loginsPerAddress: Limiter;
  private readonly failuresPerAddress: Limiter;
  private readonly hashing: ConcurrencyGate;
  /** Tickets users ask for in their sessions: each one is a store record (memory or Redis). */
  private readonly ticketsPerUser: Limiter;

  constructor(
    private readonly dir: Directory,
    private readonly store: AuthStore,
    private readonly settings: AuthSettings,
    private readonly metrics: Metrics,
    /** Where the budgets are counted: here, or node-wide in the primary (workers). */
    limiter: LimiterFactory = (_name, points) => new AttemptLimiter(points),
  ) {
    this.loginsPerUser = limiter('loginsPerUser', settings.loginsPerUserPerMinute);
    this.loginsPerAddress = limiter('loginsPerAddress', settings.loginsPerAddressPerMinute);
    this.failuresPerAddress = limiter('failuresPerAddress', settings.authFailuresPerAddressPerMinute);
    // Per process: it bounds the scrypt jobs queued on this process's thread pool.
    this.hashing = new ConcurrencyGate(settings.concurrentHashesPerAddress, settings.concurrentHashes);
    this.ticketsPerUser = limiter('ticketsPerUser', settings.ticketsPerUserPerMinute);
  }

  /**
   * Password check for the login API and Basic credentials (callers ensure TLS). Order matters:
   * a slot in the hashing gate (429 at once when the address or everyone has too many hashes
   * running), then one attempt reserved from each budget BEFORE scrypt runs, so parallel guesses
   * cannot all pass a check made before any of them was counted. A right password gives its
   * attempts back: the budgets count failures.
   */
  async password(name: string, password: string, client: string): Promise<UserRecord> {
    const address = addressKey(client);
    const userKey = `${address}\0${name.slice(0, MAX_KEYED_NAME)}`;
    const leave = this.hashing.enter(address);
    try {
      await this.loginsPerAddress.take(address);
      try {
        await this.loginsPerUser.take(userKey);
      } catch (e) {
        await this.loginsPerAddress.refund(address);
        throw e;
      }
      const user = this.dir.getUser(name);
      const ok = await verifyPassword(password, user?.passwordHash);
      if (!ok || !user) {
        this.metrics.authFailures.inc({ kind: 'password' });
        throw new OneportError('ONEPORT_ERR_BAD_CREDENTIALS');
      }
      await Promise.all([this.loginsPerAddress.refund(address), this.loginsPerUser.refund(userKey)]);
      return user;
    } finally {
      leave();
    }
  }

  async login(name: string, password: string, client: string): Promise<{ user: UserRecord; token: string; expiresAt: number }> {
    const user = await this.password(name, password, client);
    const { token, payload } = mintToken(this.dir.keys(), 'session', { sub: user.name }, this.settings.sessionTtlMs);
    return { user, token, expiresAt: payload.exp };
  }

  /** API / portal session token (Bearer or cookie). */
  async session(token: string): Promise<{ user: UserRecord; payload: TokenPayload }> {
    const payload = verifyToken(this.dir.keys(), 'session', token);
    const user = payload && this.dir.getUser(payload.sub);
    if (!payload || !user || payload.iat < user.sessionsNotBefore || (await this.store.isSessionRevoked(payload.sid))) {
      this.metrics.authFailures.inc({ kind: 'session' });
      throw new OneportError('ONEPORT_ERR_SESSION_INVALID');
    }
    return { user, payload };
  }

  async logout(payload: TokenPayload): Promise<void> {
    await this.store.revokeSession(payload.sid, payload.exp);
  }

  /**
   * An admin terminated console session `sessionId`: its resume tokens (whose `sid` it is) stop
   * working, cluster-wide, for as long as any of them could live.
   */
  async endConsoleSession(sessionId: string): Promise<void> {
    await this.store.revokeSession(sessionId, Date.now() + this.settings.resumeTtlMs);
  }

  /**
   * A console ticket (and its resume token) for a user already allowed on the VM.
   *
   * `session`: the API session asking (portal, API client). The ticket and the resume token then
   * record its id and die with it (logout, revocation; a password change ends them through
   * sessionsNotBefore anyway), and neither outlives it: a revocation is kept only until the
   * session's own expiry, so a longer-lived resume token would come back to life after that.
   * Without a session (admin API, CLI: `oneport ticket`) they are bound to user + VM only.
   * Tickets asked for in a session count against the user's `ticketsPerUserPerMinute` (429 beyond);
   * an admin's or the CLI's are not counted.
   */
  async issueTicket(user: UserRecord, vm: VmRecord, protocol: Protocol, session?: TokenPayload): Promise<IssuedTicket> {
    if (!isAssigned(vm, user)) throw new OneportError('ONEPORT_ERR_NOT_ASSIGNED');
    if (!vm.endpoints.some((e) => e.protocol === protocol)) throw new OneportError('ONEPORT_ERR_NO_SUCH_PROTOCOL');
    if (session) await this.ticketsPerUser.take(user.name);
    const keys = this.dir.keys();
    const now = Date.now();
    const left = session ? session.exp - now : Infinity;
    const { ticket, claims } = mintTicket(keys, vm.name, protocol, Math.min(this.settings.ticketTtlMs, left), now);
    const resume = mintToken(keys, 'resume', { sub: user.name, vm: vm.name, ...(session ? { ses: session.sid } : {}) }, Math.min(this.settings.resumeTtlMs, left), now);
    await this.store.putTicket({
      id: claims.id,
      user: user.name,
      vm: vm.name,
      protocol,
      expiresAt: claims.expiresAt,
      ...(session ? { session: session.sid } : {}),
      console: resume.payload.sid,
    });
    return { ticket, expiresAt: claims.expiresAt, resume: resume.token, resumeExpiresAt: resume.payload.exp };
  }

  /**
   * A resume token (CONTRACT section 6) as the credential of a new tunnel: a reconnect to the VM it
   * names, by the user it names, on any node, with no new login. `claimedUser` (Basic credentials,
   * or the portal session's user) must be the token's user.
   */
  async resume(token: string, vmName: string, client: string, claimedUser?: string): Promise<{ user: UserRecord; sessionId: string; issuedAt: number; apiSession?: string | undefined }> {
    const payload = verifyToken(this.dir.keys(), 'resume', token);
    if (!payload || payload.vm !== vmName || (claimedUser !== undefined && claimedUser !== '' && claimedUser !== payload.sub)) {
      await this.countFailure(client, 'ticket');
      throw new OneportError('ONEPORT_ERR_TICKET_INVALID', 'resume token invalid, expired, or for another VM or user');
    }
    const user = this.dir.getUser(payload.sub);
    if (
      !user ||
      payload.iat < user.sessionsNotBefore ||
      (payload.ses !== undefined && (await this.resumeSessionRevoked(payload.ses))) ||
      // The console session itself was terminated by an admin (endConsoleSession).
      (await this.resumeSessionRevoked(payload.sid))
    ) {
      this.metrics.authFailures.inc({ kind: 'session' });
      throw new OneportError('ONEPORT_ERR_SESSION_INVALID');
    }
    // The console session began no earlier than its ticket was issued, with this token.
    return { user, sessionId: payload.sid, issuedAt: payload.iat, apiSession: payload.ses };
  }

  /**
   * Was the API session that minted a resume token revoked? While the shared store (Redis) cannot
   * be reached, resume tokens keep working (DECISIONS 2026-12-03: existing tunnels and resume
   * tokens survive a Redis outage); user, expiry and sessionsNotBefore are still checked, from the
   * directory mirror. So a logged-out resume token works during an outage, for at most its 10 min.
   */
  private async resumeSessionRevoked(sid: string): Promise<boolean> {
    try {
      return await this.store.isSessionRevoked(sid);
    } catch (e) {
      if (e instanceof OneportError && e.code === 'ONEPORT_ERR_DIRECTORY_UNAVAILABLE') return false;
      throw e;
    }
  }

  /** Refuse early when this address (IPv6: its /64) has failed too often. */
  async checkAddress(client: string): Promise<void> {
    await this.failuresPerAddress.check(addressKey(client));
  }

  async countFailure(client: string, kind: 'ticket' | 'password' | 'session'): Promise<void> {
    this.metrics.authFailures.inc({ kind });
    await this.failuresPerAddress.count(addressKey(client));
  }

  /**
   * Verify and spend a console ticket for (vm, protocol), from `client`. `claimedUser` is the user
   * name from Basic credentials, if any: it must be the ticket's user.
   */
  async redeemTicket(ticket: string, vm: VmRecord, protocol: Protocol, client: string, claimedUser?: string): Promise<TicketGrant> {
    const check = checkTicket(this.dir.keys(), ticket, vm.name);
    if (!check.ok || check.claims.protocol !== protocol) {
      await this.countFailure(client, 'ticket');
      throw new OneportError('ONEPORT_ERR_TICKET_INVALID');
    }
    const id = check.claims.id;
    const r = await this.store.redeemTicket(id, client, Date.now(), randomBytes(9).toString('base64url'), {
      windowMs: this.settings.ticketReuseMs,
      afterCloseMs: this.settings.ticketReuseAfterCloseMs,
    });
    if (r.outcome === 'refused') {
      await this.countFailure(client, 'ticket');
      throw new OneportError('ONEPORT_ERR_TICKET_INVALID');
    }
    const release = once((): void => void this.store.releaseTicket(id, Date.now()));
    try {
      return await this.grantFor(r, vm, protocol, client, claimedUser, release);
    } catch (e) {
      release();
      throw e;
    }
  }

  private async grantFor(r: Exclude<Redemption, { outcome: 'refused' }>, vm: VmRecord, protocol: Protocol, client: string, claimedUser: string | undefined, release: () => void): Promise<TicketGrant> {
    if (r.record.vm !== vm.name || r.record.protocol !== protocol) {
      await this.countFailure(client, 'ticket');
      throw new OneportError('ONEPORT_ERR_TICKET_INVALID');
    }
    if (claimedUser !== undefined && claimedUser !== '' && claimedUser !== r.record.user) {
      await this.countFailure(client, 'ticket');
      throw new OneportError('ONEPORT_ERR_TICKET_INVALID');
    }
    // Issued in an API session that has been logged out since: dead, like its resume token.
    if (r.record.session !== undefined && (await this.store.isSessionRevoked(r.record.session))) {
      this.metrics.authFailures.inc({ kind: 'session' });
      throw new OneportError('ONEPORT_ERR_TICKET_INVALID');
    }
    const user = this.dir.getUser(r.record.user);
    // The user may have been removed or unassigned since the ticket was issued.
    if (!user || !isAssigned(vm, user)) throw new OneportError('ONEPORT_ERR_NOT_ASSIGNED');
    // One console session for the ticket's connections and for reconnects with its resume token.
    return { user, sessionId: r.record.console ?? r.sessionId, first: r.outcome === 'first', apiSession: r.record.session, release };
  }
}
