/**
 * The checks every tunnel request goes through, whatever carried it (CONNECT or WebSocket):
 * credentials, VM, assignment, endpoint, VM state; in an order that never burns a ticket on a
 * request that would fail anyway and never tells an unauthenticated client which VMs exist.
 */
import type { GatewayContext } from '../context.js';
import { OneportError } from '../errors.js';
import { type UserRecord, isAssigned } from '../directory/directory.js';
import { type EndpointHints, checkVmState, lookupVm, selectEndpoint } from '../routing.js';
import { ticketProtocol } from '../auth/tickets.js';
import { newId } from '../auth/tokens.js';
import type { TunnelTarget } from '../tunnel/open.js';

export type Credential =
  | { readonly kind: 'ticket'; readonly ticket: string; readonly user?: string | undefined }
  | { readonly kind: 'password'; readonly user: string; readonly password: string }
  | { readonly kind: 'session'; readonly user: UserRecord }
  | { readonly kind: 'resume'; readonly token: string; readonly user?: string | undefined };

/** Resume and session tokens look like `v1.<payload>.<mac>`; tickets are base32 letters only. */
export function isToken(secret: string): boolean {
  return secret.startsWith('v1.');
}

export interface TunnelRequest {
  readonly vmName: string;
  readonly credential: Credential;
  readonly hints: EndpointHints;
  readonly tls: boolean;
  readonly client: string;
  /** The caller holds a recovering or migrating VM's clients (tunnel/open.ts) instead of refusing them. */
  readonly hold?: boolean;
}

export async function authorizeTunnel(ctx: GatewayContext, req: TunnelRequest): Promise<TunnelTarget> {
  const started = process.hrtime.bigint();
  const { credential: cred } = req;
  if (cred.kind === 'ticket') {
    await ctx.auth.checkAddress(req.client);
    const vm = ctx.dir.getVm(req.vmName);
    if (!vm) {
      // A ticket names no VM we could check it against: same answer as a forged ticket.
      await ctx.auth.countFailure(req.client, 'ticket');
      throw new OneportError('ONEPORT_ERR_TICKET_INVALID');
    }
    const endpoint = selectEndpoint(vm, { ...req.hints, ticketProtocol: ticketProtocol(cred.ticket) });
    checkVmState(vm, { hold: req.hold });
    const afterLookup = ctx.metrics.observeSetup('lookup', started);
    const grant = await ctx.auth.redeemTicket(cred.ticket, vm, endpoint.protocol, req.client, cred.user);
    ctx.metrics.observeSetup('auth', afterLookup);
    return { vm, endpoint, user: grant.user, sessionId: grant.sessionId, via: 'ticket' };
  }
  if (cred.kind === 'resume') {
    await ctx.auth.checkAddress(req.client);
    const grant = await ctx.auth.resume(cred.token, req.vmName, req.client, cred.user);
    const vm = lookupVm(ctx.dir, req.vmName);
    if (!isAssigned(vm, grant.user)) throw new OneportError('ONEPORT_ERR_NOT_ASSIGNED');
    const endpoint = selectEndpoint(vm, req.hints);
    checkVmState(vm, { hold: req.hold });
    ctx.metrics.observeSetup('auth', started);
    return { vm, endpoint, user: grant.user, sessionId: grant.sessionId, via: 'resume' };
  }
  let user: UserRecord;
  if (cred.kind === 'password') {
    if (!req.tls) throw new OneportError('ONEPORT_ERR_CLEARTEXT_PASSWORD');
    user = await ctx.auth.password(cred.user, cred.password, req.client);
  } else {
    user = cred.user;
  }
  const afterAuth = ctx.metrics.observeSetup('auth', started);
  const vm = lookupVm(ctx.dir, req.vmName);
  if (!isAssigned(vm, user)) throw new OneportError('ONEPORT_ERR_NOT_ASSIGNED');
  const endpoint = selectEndpoint(vm, req.hints);
  checkVmState(vm, { hold: req.hold });
  ctx.metrics.observeSetup('lookup', afterAuth);
  return { vm, endpoint, user, sessionId: newId(), via: cred.kind };
}
