/**
 * Who is this? Passwords (login API, Basic credentials inside TLS), session tokens (API, portal
 * cookie), console tickets (tunnels) and resume tokens. Every failure is counted against the
 * client address (and user), and a client over its budget is refused before any hashing or
 * lookup is done. Nothing here logs a secret.
 */
import { randomBytes } from 'node:crypto';
import { OneportError } from '../errors.js';
import type { Metrics } from '../metrics.js';
import { type Directory, type Protocol, type UserRecord, type VmRecord, isAssigned } from '../directory/directory.js';
import { verifyPassword } from './passwords.js';
import type { AuthStore } from './store.js';
import { checkTicket, mintTicket } from './tickets.js';
import { type TokenPayload, mintToken, verifyToken } from './tokens.js';
import { AttemptLimiter } from './limits.js';

export interface AuthSettings {
  readonly ticketTtlMs: number;
  readonly resumeTtlMs: number;
  readonly sessionTtlMs: number;
  readonly loginsPerUserPerMinute: number;
  readonly loginsPerAddressPerMinute: number;
  readonly authFailuresPerAddressPerMinute: number;
}

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
}

export class Authenticator {
  private readonly loginsPerUser: AttemptLimiter;
  private readonly loginsPerAddress: AttemptLimiter;
  private readonly failuresPerAddress: AttemptLimiter;

  constructor(
    private readonly dir: Directory,
    private readonly store: AuthStore,
    private readonly settings: AuthSettings,
    private readonly metrics: Metrics,
  ) {
    this.loginsPerUser = new AttemptLimiter(settings.loginsPerUserPerMinute);
    this.loginsPerAddress = new AttemptLimiter(settings.loginsPerAddressPerMinute);
    this.failuresPerAddress = new AttemptLimiter(settings.authFailuresPerAddressPerMinute);
  }

  /** Password check for the login API and Basic credentials (callers ensure TLS). */
  async password(name: string, password: string, client: string): Promise<UserRecord> {
    await this.loginsPerAddress.check(client);
    await this.loginsPerUser.check(name);
    const user = this.dir.getUser(name);
    const ok = await verifyPassword(password, user?.passwordHash);
    if (!ok || !user) {
      this.metrics.authFailures.inc({ kind: 'password' });
      await Promise.all([this.loginsPerAddress.count(client), this.loginsPerUser.count(name)]);
      throw new OneportError('ONEPORT_ERR_BAD_CREDENTIALS');
    }
    await this.loginsPerUser.reset(name);
    return user;
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

  /** A console ticket (and its resume token) for a user already allowed on the VM. */
  async issueTicket(user: UserRecord, vm: VmRecord, protocol: Protocol): Promise<IssuedTicket> {
    if (!isAssigned(vm, user)) throw new OneportError('ONEPORT_ERR_NOT_ASSIGNED');
    if (!vm.endpoints.some((e) => e.protocol === protocol)) throw new OneportError('ONEPORT_ERR_NO_SUCH_PROTOCOL');
    const keys = this.dir.keys();
    const { ticket, claims } = mintTicket(keys, vm.name, protocol, this.settings.ticketTtlMs);
    await this.store.putTicket({ id: claims.id, user: user.name, vm: vm.name, protocol, expiresAt: claims.expiresAt });
    const resume = mintToken(keys, 'resume', { sub: user.name, vm: vm.name }, this.settings.resumeTtlMs);
    return { ticket, expiresAt: claims.expiresAt, resume: resume.token, resumeExpiresAt: resume.payload.exp };
  }

  /**
   * A resume token (CONTRACT section 6) as the credential of a new tunnel: a reconnect to the VM it
   * names, by the user it names, on any node, with no new login. `claimedUser` (Basic credentials,
   * or the portal session's user) must be the token's user.
   */
  async resume(token: string, vmName: string, client: string, claimedUser?: string): Promise<{ user: UserRecord; sessionId: string }> {
    const payload = verifyToken(this.dir.keys(), 'resume', token);
    if (!payload || payload.vm !== vmName || (claimedUser !== undefined && claimedUser !== '' && claimedUser !== payload.sub)) {
      await this.countFailure(client, 'ticket');
      throw new OneportError('ONEPORT_ERR_TICKET_INVALID', 'resume token invalid, expired, or for another VM or user');
    }
    const user = this.dir.getUser(payload.sub);
    if (!user || payload.iat < user.sessionsNotBefore) {
      this.metrics.authFailures.inc({ kind: 'session' });
      throw new OneportError('ONEPORT_ERR_SESSION_INVALID');
    }
    return { user, sessionId: payload.sid };
  }

  /** Refuse early when this address has failed too often. */
  async checkAddress(client: string): Promise<void> {
    await this.failuresPerAddress.check(client);
  }

  async countFailure(client: string, kind: 'ticket' | 'password' | 'session'): Promise<void> {
    this.metrics.authFailures.inc({ kind });
    await this.failuresPerAddress.count(client);
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
    const r = await this.store.redeemTicket(check.claims.id, client, Date.now(), randomBytes(9).toString('base64url'));
    if (r.outcome === 'refused' || r.record.vm !== vm.name || r.record.protocol !== protocol) {
      await this.countFailure(client, 'ticket');
      throw new OneportError('ONEPORT_ERR_TICKET_INVALID');
    }
    if (claimedUser !== undefined && claimedUser !== '' && claimedUser !== r.record.user) {
      await this.countFailure(client, 'ticket');
      throw new OneportError('ONEPORT_ERR_TICKET_INVALID');
    }
    const user = this.dir.getUser(r.record.user);
    // The user may have been removed or unassigned since the ticket was issued.
    if (!user || !isAssigned(vm, user)) throw new OneportError('ONEPORT_ERR_NOT_ASSIGNED');
    return { user, sessionId: r.sessionId, first: r.outcome === 'first' };
  }
}
