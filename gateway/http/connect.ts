/**
 * HTTP CONNECT tunnels (CONTRACT section 3), in clear text and inside TLS.
 *
 *   CONNECT <vm>:<port> | <ticket>.<vm>:<port>   HTTP/1.0 or 1.1, Host optional
 *   Proxy-Authorization: Basic base64(user:ticket-or-password) | Bearer <ticket>
 *   Desktop-Protocol: rdp | vnc | spice          (optional)
 *
 * Answers 200 only once the console accepted the connection; any byte the client sent after its
 * headers (Node hands them over as `head`, or they wait in the socket) reaches the console.
 */
import type { IncomingMessage } from 'node:http';
import type net from 'node:net';
import type { GatewayContext } from '../context.js';
import { connInfo } from '../conninfo.js';
import { OneportError, toOneportError } from '../errors.js';
import { isProtocol, parseAuthority, splitHostTicket, isAddressLiteral, lookupVm, selectEndpoint, checkVmState } from '../routing.js';
import { HOP_HEADER } from '../cluster/peers.js';
import { TICKET_RE } from '../auth/tickets.js';
import { StreamPump } from '../tunnel/pump.js';
import { type TunnelTarget, dialConsole, openConsole, trackTunnel } from '../tunnel/open.js';
import type { Transport } from '../tunnel/registry.js';
import { type Credential, authorizeTunnel, isToken } from './authorize.js';
import { writeRawError } from './respond.js';

type ProxyCredentials =
  | { kind: 'basic'; user: string; secret: string }
  | { kind: 'bearer'; token: string };

/** RFC 7617 Basic (user:secret) or RFC 6750-style Bearer; undefined when the header is absent. */
export function parseProxyAuthorization(header: string | undefined): ProxyCredentials | undefined {
  if (header === undefined) return undefined;
  const m = /^\s*([A-Za-z]+)\s+(\S+)\s*$/.exec(header);
  if (!m) throw new OneportError('ONEPORT_ERR_AUTH_REQUIRED', 'unreadable Proxy-Authorization header');
  const scheme = (m[1] ?? '').toLowerCase();
  const value = m[2] ?? '';
  if (scheme === 'bearer') return { kind: 'bearer', token: value };
  if (scheme !== 'basic') throw new OneportError('ONEPORT_ERR_AUTH_REQUIRED', 'use Basic or Bearer credentials');
  const decoded = Buffer.from(value, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) throw new OneportError('ONEPORT_ERR_AUTH_REQUIRED', 'Basic credentials must be user:secret');
  return { kind: 'basic', user: decoded.slice(0, colon), secret: decoded.slice(colon + 1) };
}

export async function handleConnect(ctx: GatewayContext, req: IncomingMessage, socket: net.Socket, head: Buffer): Promise<void> {
  if (req.headers[HOP_HEADER] !== undefined) return handleHop(ctx, req, socket, head);
  const info = connInfo(socket);
  const tls = info?.tls ?? false;
  const client = info?.remoteAddress ?? socket.remoteAddress ?? 'unknown';
  const transport = tls ? 'connect-tls' : 'connect';
  // The client leaving while we authenticate or dial cancels the dial.
  const abort = new AbortController();
  const onGone = (): void => abort.abort();
  socket.once('close', onGone);
  let protocolLabel = 'unknown';
  try {
    if (ctx.lifecycle.shuttingDown) throw new OneportError('ONEPORT_ERR_SHUTTING_DOWN', undefined, { retryAfter: 5 });
    if (info?.limited) throw new OneportError('ONEPORT_ERR_RATE_LIMITED', 'too many connections from your address', { retryAfter: 5 });
    const authority = parseAuthority(req.url ?? '');
    if (!authority) throw new OneportError('ONEPORT_ERR_BAD_REQUEST', 'CONNECT needs <vm>:<port>');
    const headerValue = req.headers['desktop-protocol'];
    const headerProtocol = typeof headerValue === 'string' ? headerValue.trim().toLowerCase() : undefined;
    if (headerProtocol !== undefined && !isProtocol(headerProtocol)) {
      throw new OneportError('ONEPORT_ERR_BAD_REQUEST', 'Desktop-Protocol must be rdp, vnc or spice');
    }
    const creds = parseProxyAuthorization(req.headers['proxy-authorization']);
    // `<ticket>.<vm>` works with or without credentials (a .vv file may carry both).
    const split = splitHostTicket(authority.host);
    const vmName = split?.vm ?? authority.host;
    let credential: Credential;
    if (!creds) {
      if (!split) throw new OneportError('ONEPORT_ERR_AUTH_REQUIRED');
      credential = { kind: 'ticket', ticket: split.ticket };
    } else if (creds.kind === 'bearer') {
      credential = isToken(creds.token) ? { kind: 'resume', token: creds.token } : { kind: 'ticket', ticket: creds.token };
    } else if (isToken(creds.secret)) {
      credential = { kind: 'resume', token: creds.secret, user: creds.user };
    } else if (TICKET_RE.test(creds.secret)) {
      credential = { kind: 'ticket', ticket: creds.secret, user: creds.user };
    } else if (split) {
      credential = { kind: 'ticket', ticket: split.ticket, user: creds.user };
    } else {
      credential = { kind: 'password', user: creds.user, password: creds.secret };
    }
    if (credential.kind === 'resume' && !tls) throw new OneportError('ONEPORT_ERR_CLEARTEXT_PASSWORD', 'resume tokens are accepted only over TLS');
    if (split && credential.kind === 'ticket' && credential.ticket !== split.ticket) {
      throw new OneportError('ONEPORT_ERR_BAD_REQUEST', 'two different tickets in one request');
    }
    if (authority.literal || isAddressLiteral(vmName)) throw new OneportError('ONEPORT_ERR_ADDRESS_LITERAL');
    const authorized = await authorizeTunnel(ctx, {
      vmName,
      credential,
      hints: { protocol: headerProtocol, port: authority.port },
      tls,
      client,
      hold: true,
    });
    protocolLabel = authorized.endpoint.protocol;
    // Held here, with no status line sent, while the VM changes hands.
    const { socket: consoleSocket, target } = await openConsole(ctx, authorized, abort.signal);
    socket.removeListener('close', onGone);
    splice(ctx, socket, consoleSocket, target, { transport, client, head, acceptedAt: info?.acceptedAt }, 'client went away');
  } catch (e) {
    socket.removeListener('close', onGone);
    const err = toOneportError(e);
    ctx.metrics.tunnels.inc({ protocol: protocolLabel, transport, result: err.code });
    if (err.code === 'ONEPORT_ERR_INTERNAL') ctx.log.error({ err: e, client }, 'CONNECT failed');
    else if (ctx.noisyLog.take(`connect:${err.code}`) >= 0) {
      ctx.log.info({ event: 'tunnel-refused', transport, client, code: err.code, status: err.status }, err.message);
    }
    writeRawError(socket, err, { proxy: true });
  }
}

/**
 * The owner's side of a node-to-node hop (cluster/peers.ts): `CONNECT <vm>:<port>` with
 * `Oneport-Hop: <node>`, over TLS with a node certificate from the cluster CA; anything else on
 * this path gets 403. The sending node authenticated the user and redeemed the ticket; this node
 * checks that it owns the VM (by its own mirror) and dials the console locally.
 */
async function handleHop(ctx: GatewayContext, req: IncomingMessage, socket: net.Socket, head: Buffer): Promise<void> {
  const info = connInfo(socket);
  const from = ctx.cluster?.peerNode(socket);
  const client = info?.remoteAddress ?? socket.remoteAddress ?? 'unknown';
  const abort = new AbortController();
  const onGone = (): void => abort.abort();
  socket.once('close', onGone);
  let protocolLabel = 'unknown';
  try {
    if (!ctx.cluster || from === undefined) {
      throw new OneportError('ONEPORT_ERR_FORBIDDEN', 'the node-to-node path needs a cluster node certificate');
    }
    if (ctx.lifecycle.shuttingDown) throw new OneportError('ONEPORT_ERR_SHUTTING_DOWN', undefined, { retryAfter: 5 });
    const authority = parseAuthority(req.url ?? '');
    if (!authority || authority.literal) throw new OneportError('ONEPORT_ERR_BAD_REQUEST', 'a hop names <vm>:<port>');
    const headerValue = req.headers['desktop-protocol'];
    const protocol = typeof headerValue === 'string' ? headerValue.trim().toLowerCase() : undefined;
    const vm = lookupVm(ctx.dir, authority.host);
    const endpoint = selectEndpoint(vm, { protocol: protocol !== undefined && isProtocol(protocol) ? protocol : undefined, port: authority.port });
    protocolLabel = endpoint.protocol;
    if (vm.node !== ctx.cluster.nodeId) {
      // The sender's mirror is behind or ahead of ours: the VM is changing hands.
      throw new OneportError('ONEPORT_ERR_VM_RECOVERING', `${vm.name} is not on node ${ctx.cluster.nodeId}`, { retryAfter: 1 });
    }
    checkVmState(vm);
    const userHeader = req.headers['oneport-user'];
    const target: TunnelTarget = {
      vm,
      endpoint,
      user: { name: typeof userHeader === 'string' ? userHeader.slice(0, 64) : `node:${from}`, passwordHash: '', roles: [], groups: [], sessionsNotBefore: 0 },
      sessionId: `hop:${from}`,
      via: 'hop',
    };
    const consoleSocket = await dialConsole(ctx, target, abort.signal);
    socket.removeListener('close', onGone);
    splice(ctx, socket, consoleSocket, target, { transport: 'hop', client: `${from}/${client}`, head, acceptedAt: info?.acceptedAt }, 'the sending node went away');
  } catch (e) {
    socket.removeListener('close', onGone);
    const err = toOneportError(e);
    ctx.metrics.tunnels.inc({ protocol: protocolLabel, transport: 'hop', result: err.code });
    if (err.code === 'ONEPORT_ERR_INTERNAL') ctx.log.error({ err: e, client }, 'hop failed');
    else if (ctx.noisyLog.take(`hop:${err.code}`) >= 0) {
      ctx.log.info({ event: 'hop-refused', client, from: from ?? null, code: err.code, status: err.status }, err.message);
    }
    writeRawError(socket, err, { extraHeaders: { 'Oneport-Error': err.code } });
  }
}

/** The console answered: say 200, splice the two sockets, and register the tunnel (both CONNECT paths). */
function splice(
  ctx: GatewayContext,
  socket: net.Socket,
  consoleSocket: net.Socket,
  target: TunnelTarget,
  leg: { transport: Transport; client: string; head: Buffer; acceptedAt: bigint | undefined },
  goneMessage: string,
): void {
  if (socket.destroyed) {
    consoleSocket.destroy();
    throw new OneportError('ONEPORT_ERR_CONSOLE_UNREACHABLE', goneMessage);
  }
  socket.write('HTTP/1.1 200 Connection established\r\n\r\n');
  const pump = new StreamPump(socket, consoleSocket, { idleTimeoutMs: ctx.config.tunnel.idleTimeoutMs }, leg.head);
  trackTunnel(ctx, target, leg.transport, leg.client, pump, leg.acceptedAt ?? process.hrtime.bigint());
}
