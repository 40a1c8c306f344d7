/**
 * The checks every tunnel request goes through, whatever carried it: credentials, VM,
 * assignment, endpoint, VM state; in an order that never burns a ticket on a request that would
 * fail anyway and never tells an unauthenticated client which VMs exist or what they offer: a
 * ticket's signature (which binds VM and protocol) is checked before anything about the VM is
 * looked at, and every failure before that point is the same 407/4401, counted.
 */
import type { Authenticator } from '../auth/authenticator.js';
import { checkTicket } from '../auth/tickets.js';
import { createHash } from 'node:crypto';
import { type Directory, type UserRecord, isAssigned } from '../directory/directory.js';
import { OneportError } from '../errors.js';
import type { Metrics } from '../metrics.js';
import { checkVmState, lookupVm, selectEndpoint } from '../routing.js';
import type { TunnelRequest, TunnelTarget } from './request.js';

export interface AuthorizeDeps {
  readonly dir: Directory;
  readonly auth: Authenticator;
  readonly metrics: Metrics;
  /** This node's id in a cluster: a hop is accepted only for VMs it owns. */
  readonly nodeId: string | undefined;
}

/**
 * The console session of a connection made with standing credentials (a password, the portal's
 * cookie), which bind no connection to another the way a ticket does: every connection of one user
 * to one VM's console over one protocol from one address at the same time is one session (a SPICE
 * client's channels, spice-html5's WebSockets), for the session caps and the maximum session time.
 * A new one begins once all of them have ended.
 */
export function standingSession(kind: 'password' | 'session', user: string, vm: string, protocol: string, client: string): string {
  return `${kind}:${createHash('sha256').update(`${user}\0${vm}\0${protocol}\0${client}`).digest('base64url').slice(0, 16)}`;
}

/** Resume and session tokens look like `v1.<payload>.<mac>`; tickets are base32 letters only. */
export function isToken(secret: string): boolean {
  return secret.startsWith('v1.');
}

export async function authorizeTunnel(deps: AuthorizeDeps, req: TunnelRequest): Promise<TunnelTarget> {
  const { auth, dir, metrics } = deps;
  const started = process.hrtime.bigint();
  const cred = req.credential;
  const hold = { hold: req.hold };
  switch (cred.kind) {
    case 'ticket': {
      await auth.checkAddress(req.client);
      const vm = dir.getVm(req.vmName);
      // Unknown VM, forged, expired or cross-VM ticket: one answer, one count, no lookup beyond.
      const check = vm ? checkTicket(dir.keys(), cred.ticket, vm.name) : undefined;
      if (!vm || !check?.ok) {
        await auth.countFailure(req.client, 'ticket');
        throw new OneportError('ONEPORT_ERR_TICKET_INVALID');
      }
      const endpoint = selectEndpoint(vm, { ...req.hints, ticketProtocol: check.claims.protocol });
      checkVmState(vm, hold);
      const afterLookup = metrics.observeSetup('lookup', started);
      const grant = await auth.redeemTicket(cred.ticket, vm, endpoint.protocol, req.client, cred.user);
      metrics.observeSetup('auth', afterLookup);
      return { vm, endpoint, user: grant.user, sessionId: grant.sessionId, via: 'ticket', apiSession: grant.apiSession, release: grant.release };
    }
    case 'resume': {
      await auth.checkAddress(req.client);
      let claimed = cred.user;
      if (claimed === undefined && cred.cookie !== undefined) claimed = await auth.session(cred.cookie).then((s) => s.user.name, () => undefined);
      const grant = await auth.resume(cred.token, req.vmName, req.client, claimed);
      const vm = lookupVm(dir, req.vmName);
      if (!isAssigned(vm, grant.user)) throw new OneportError('ONEPORT_ERR_NOT_ASSIGNED');
      const endpoint = selectEndpoint(vm, req.hints);
      checkVmState(vm, hold);
      metrics.observeSetup('auth', started);
      return { vm, endpoint, user: grant.user, sessionId: grant.sessionId, sessionSince: grant.issuedAt, via: 'resume', apiSession: grant.apiSession };
    }
    case 'node': {
      // Another node authenticated the client and redeemed its ticket; this node checks that it
      // owns the VM (by its own mirror) and reaches the console locally.
      const vm = lookupVm(dir, req.vmName);
      const endpoint = selectEndpoint(vm, req.hints);
      if (vm.node !== deps.nodeId) {
        // The sender's mirror is behind or ahead of ours: the VM is changing hands.
        throw new OneportError('ONEPORT_ERR_VM_RECOVERING', `${vm.name} is not on node ${deps.nodeId ?? '?'}`, { retryAfter: 1 });
      }
      checkVmState(vm);
      const user: UserRecord = { name: cred.user, passwordHash: '', roles: [], groups: [], sessionsNotBefore: 0 };
      return { vm, endpoint, user, sessionId: `hop:${cred.node}`, via: 'hop' };
    }
    case 'password':
    case 'session': {
      let user: UserRecord;
      let apiSession: string | undefined;
      if (cred.kind === 'password') {
        if (!req.tls) throw new OneportError('ONEPORT_ERR_CLEARTEXT_PASSWORD');
        user = await auth.password(cred.user, cred.password, req.client);
      } else {
        const s = await auth.session(cred.token);
        user = s.user;
        apiSession = s.payload.sid;
      }
      const afterAuth = metrics.observeSetup('auth', started);
      const vm = lookupVm(dir, req.vmName);
      if (!isAssigned(vm, user)) throw new OneportError('ONEPORT_ERR_NOT_ASSIGNED');
      const endpoint = selectEndpoint(vm, req.hints);
      checkVmState(vm, hold);
      metrics.observeSetup('lookup', afterAuth);
      return { vm, endpoint, user, sessionId: standingSession(cred.kind, user.name, vm.name, endpoint.protocol, req.client), via: cred.kind, apiSession };
    }
  }
}
