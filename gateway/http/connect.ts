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
import { OneportError } from '../errors.js';
import { isProtocol, parseAuthority, splitHostTicket, isAddressLiteral } from '../routing.js';
import { TICKET_RE } from '../auth/tickets.js';
import { isToken } from '../tunnel/authorize.js';
import { openTunnel, refuseTunnel } from '../tunnel/broker.js';
import { StreamLeg } from '../tunnel/legs/stream.js';
import type { Credential, TunnelRequest } from '../tunnel/request.js';

/** The request header that marks a node-to-node hop (cluster/peers.ts); its value is the sending node's id. */
export const HOP_HEADER = 'oneport-hop';

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

/**
 * A CONNECT request as a tunnel request: the target authority, the protocol header, and the
 * credential in whichever form the client could send it (CONTRACT section 3). Throws a
 * OneportError for a request that cannot be one.
 */
export function connectRequest(req: IncomingMessage, tls: boolean, client: string): TunnelRequest {
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
  return { vmName, credential, hints: { protocol: headerProtocol, port: authority.port }, tls, client, hold: true };
}

export async function handleConnect(ctx: GatewayContext, req: IncomingMessage, socket: net.Socket, head: Buffer): Promise<void> {
  if (req.headers[HOP_HEADER] !== undefined) return handleHop(ctx, req, socket, head);
  const info = connInfo(socket);
  const tls = info?.tls ?? false;
  const client = info?.remoteAddress ?? socket.remoteAddress ?? 'unknown';
  const leg = new StreamLeg(socket, {
    transport: tls ? 'connect-tls' : 'connect',
    client,
    acceptedAt: info?.acceptedAt ?? process.hrtime.bigint(),
    head,
  });
  let request: TunnelRequest;
  try {
    request = connectRequest(req, tls, client);
  } catch (e) {
    refuseTunnel(ctx.broker, leg, e);
    return;
  }
  await openTunnel(ctx.broker, request, leg);
}

/**
 * The owner's side of a node-to-node hop (cluster/peers.ts): `CONNECT <vm>:<port>` with
 * `Oneport-Hop: <node>`, over TLS with a node certificate from the cluster CA; anything else on
 * this path gets 403. The sending node authenticated the user and redeemed the ticket; this node
 * checks that it owns the VM (by its own mirror) and dials the console locally.
 */
async function handleHop(ctx: GatewayContext, req: IncomingMessage, socket: net.Socket, head: Buffer): Promise<void> {
  const info = connInfo(socket);
  const from = ctx.peerNode(socket);
  const client = info?.remoteAddress ?? socket.remoteAddress ?? 'unknown';
  const leg = new StreamLeg(socket, {
    transport: 'hop',
    client: `${from ?? '?'}/${client}`,
    acceptedAt: info?.acceptedAt ?? process.hrtime.bigint(),
    head,
    hop: { from: from ?? 'unknown' },
  });
  let request: TunnelRequest;
  try {
    if (from === undefined) throw new OneportError('ONEPORT_ERR_FORBIDDEN', 'the node-to-node path needs a cluster node certificate');
    const authority = parseAuthority(req.url ?? '');
    if (!authority || authority.literal) throw new OneportError('ONEPORT_ERR_BAD_REQUEST', 'a hop names <vm>:<port>');
    const headerValue = req.headers['desktop-protocol'];
    const protocol = typeof headerValue === 'string' ? headerValue.trim().toLowerCase() : undefined;
    const userHeader = req.headers['oneport-user'];
    request = {
      vmName: authority.host,
      credential: { kind: 'node', node: from, user: typeof userHeader === 'string' ? userHeader.slice(0, 64) : `node:${from}` },
      hints: { protocol: protocol !== undefined && isProtocol(protocol) ? protocol : undefined, port: authority.port },
      tls: true,
      client,
      hold: false,
    };
  } catch (e) {
    refuseTunnel(ctx.broker, leg, e);
    return;
  }
  await openTunnel(ctx.broker, request, leg);
}
