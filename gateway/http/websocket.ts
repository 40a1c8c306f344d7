/**
 * WebSocket tunnels (CONTRACT section 4), with `ws`:
 *
 *   GET /tunnel/<vm>/<protocol>?ticket=<ticket>    Upgrade: websocket, over TLS only
 *   Sec-WebSocket-Protocol: binary                  echoed when offered (noVNC)
 *
 * A foreign Origin is refused before the upgrade (HTTP 403), so a page elsewhere cannot ride a
 * user's cookie. Everything after the upgrade is answered with the contract's close codes,
 * because browsers cannot read the status of a failed handshake.
 */
import type { IncomingMessage } from 'node:http';
import type net from 'node:net';
import { isIP } from 'node:net';
import { type WebSocket, WebSocketServer } from 'ws';
import type { GatewayContext } from '../context.js';
import { connInfo, normaliseAddress } from '../conninfo.js';
import { CLIENT_HEADER, FORWARDED_BY_HEADER } from '../cluster/peers.js';
import { OneportError } from '../errors.js';
import { isProtocol } from '../routing.js';
import { RESUMABLE_SUBPROTOCOL } from '../tunnel/session.js';
import { openTunnel, refuseTunnel } from '../tunnel/broker.js';
import { WebSocketLeg } from '../tunnel/legs/websocket.js';
import { answerOnlyLeg } from '../tunnel/legs/leg.js';
import { resumeSession } from '../tunnel/resume.js';
import type { Credential } from '../tunnel/request.js';
import { decodePathSegment, parseRequestUrl, writeRawError } from './respond.js';
import { runRdcleanpath } from './rdcleanpath.js';
import { guard } from './guard.js';
import { SESSION_COOKIE, readCookie } from './cookies.js';

const TUNNEL_PATH = /^\/tunnel\/([^/?#]{1,200})\/([^/?#]{1,16})$/;
/** IronRDP's web client (README "RDP in the browser"): the credential rides in the request PDU. */
const RDCLEANPATH_PATH = /^\/rdcleanpath\/([^/?#]{1,200})$/;
/** Subprotocols we speak, in order of preference. */
const SUBPROTOCOLS = [RESUMABLE_SUBPROTOCOL, 'binary'];

export function createWebSocketServer(ctx: GatewayContext): WebSocketServer {
  return new WebSocketServer({
    noServer: true,
    clientTracking: false,
    perMessageDeflate: false,
    // ws answers pings itself; a client that floods pings and never reads gets cut once this many
    // answers wait unsent, so pongs cannot pile up in memory behind a full socket.
    autoPong: true,
    // (ws 8.18+; not in @types/ws yet.)
    ...({ maxPendingAutoPongs: 60 } as object),
    maxPayload: ctx.config.limits.wsMaxPayloadBytes,
    handleProtocols: (offered) => SUBPROTOCOLS.find((p) => offered.has(p)) ?? false,
  });
}

export function originAllowed(ctx: GatewayContext, req: IncomingMessage): boolean {
  const origin = req.headers.origin;
  // Non-browser clients send no Origin; they are not the target of cross-site attacks.
  if (origin === undefined) return true;
  let parsed: URL;
  try {
    parsed = new URL(origin);
  } catch {
    return false;
  }
  if (parsed.protocol === 'https:' && req.headers.host !== undefined && parsed.host === req.headers.host.toLowerCase()) return true;
  const normalised = parsed.origin;
  return ctx.config.http.allowedOrigins.some((o) => new URL(o).origin === normalised) || ctx.ownOrigins().includes(normalised);
}

/**
 * A `oneport.v1` leg another node relays here (cluster/relay.ts) comes over TLS with a node
 * certificate and names the client's address; anything else is a client, whatever it claims.
 */
function relayedClient(ctx: GatewayContext, req: IncomingMessage, socket: net.Socket): string | undefined {
  if (req.headers[FORWARDED_BY_HEADER] === undefined || ctx.peerNode(socket) === undefined) return undefined;
  const c = req.headers[CLIENT_HEADER];
  return typeof c === 'string' && isIP(c) !== 0 ? normaliseAddress(c) : undefined;
}

export async function handleUpgrade(ctx: GatewayContext, wss: WebSocketServer, req: IncomingMessage, socket: net.Socket, head: Buffer): Promise<void> {
  const info = connInfo(socket);
  const relayedFor = relayedClient(ctx, req, socket);
  const client = relayedFor ?? info?.remoteAddress ?? socket.remoteAddress ?? 'unknown';
  // Refusals before the upgrade are plain HTTP answers. Everything parsed from the request line
  // is parsed in here: a malformed URL or %-escape is the client's error, never ours.
  let url: URL;
  let vmName: string;
  let protocolText: string;
  let rdcleanpath: boolean;
  try {
    if (!info?.tls) throw new OneportError('ONEPORT_ERR_TLS_REQUIRED');
    if (ctx.lifecycle.shuttingDown) throw new OneportError('ONEPORT_ERR_SHUTTING_DOWN', undefined, { retryAfter: 5 });
    if ((req.headers.upgrade ?? '').toLowerCase() !== 'websocket') throw new OneportError('ONEPORT_ERR_BAD_REQUEST', 'only WebSocket upgrades');
    url = parseRequestUrl(req.url);
    const m = TUNNEL_PATH.exec(url.pathname) ?? RDCLEANPATH_PATH.exec(url.pathname);
    if (!m) throw new OneportError('ONEPORT_ERR_NOT_FOUND', 'WebSocket tunnels live at /tunnel/<vm>/<protocol> and /rdcleanpath/<vm>');
    vmName = decodePathSegment(m[1] ?? '').toLowerCase();
    rdcleanpath = m[2] === undefined;
    protocolText = rdcleanpath ? 'rdp' : decodePathSegment(m[2] ?? '').toLowerCase();
    if (!originAllowed(ctx, req)) throw new OneportError('ONEPORT_ERR_ORIGIN');
  } catch (e) {
    refuseTunnel(ctx.broker, answerOnlyLeg('websocket', client, (err) => writeRawError(socket, err)), e);
    return;
  }
  const ticket = url.searchParams.get('ticket');
  const resume = url.searchParams.get('resume');
  const session = url.searchParams.get('session');
  const received = url.searchParams.get('received');
  const cookie = readCookie(req.headers.cookie, SESSION_COOKIE);

  wss.handleUpgrade(req, socket, head, (ws) => {
    const work =
      rdcleanpath
        ? runRdcleanpath(ctx, ws, { vmName, cookie, client, acceptedAt: info.acceptedAt })
        : session !== null && ws.protocol === RESUMABLE_SUBPROTOCOL
          ? resumeSession(ctx.resume, ws, { vmName, protocol: protocolText, resume, session, received, client, forwarded: relayedFor !== undefined })
          : ws.protocol === RESUMABLE_SUBPROTOCOL && relayedFor === undefined
            ? newSession(ctx, ws, url, { vmName, protocolText, ticket, resume, cookie, client, acceptedAt: info.acceptedAt })
            : runTunnel(ctx, ws, { vmName, protocolText, ticket, resume, cookie, client, acceptedAt: info.acceptedAt });
    guard(ctx, 'websocket', work, () => ws.terminate(), { client });
  });
}

interface WsRequest {
  vmName: string;
  protocolText: string;
  ticket: string | null;
  /** A resume token (CONTRACT section 6): reconnect after a reroute or a drop, no new login. */
  resume: string | null;
  cookie: string | undefined;
  client: string;
  acceptedAt: bigint;
}

/**
 * A new `oneport.v1` session is held at its VM's owner, next to the console, when that is another
 * node: this node only relays (cluster/relay.ts), so it can go away (drain) without ending the
 * session. The owner authorizes the request itself. When it cannot be asked (not up, refusing
 * while it drains), the session is held here as on one node.
 */
async function newSession(ctx: GatewayContext, ws: WebSocket, url: URL, r: WsRequest): Promise<void> {
  const relay = ctx.resume.relay;
  const owner = relay?.ownerOf(r.vmName);
  if (relay && owner !== undefined) {
    try {
      await relay.relay(owner, ws, { path: `${url.pathname}${url.search}`, vm: r.vmName, client: r.client, cookie: r.cookie === undefined ? undefined : `${SESSION_COOKIE}=${r.cookie}` });
      return;
    } catch (e) {
      ctx.log.debug({ event: 'session-relay-failed', vm: r.vmName, holder: owner, err: (e as Error).message }, 'the VM owner did not take the session: held here');
      if (ws.readyState !== ws.OPEN) return;
    }
  }
  await runTunnel(ctx, ws, r);
}

async function runTunnel(ctx: GatewayContext, ws: WebSocket, r: WsRequest): Promise<void> {
  const { tunnel, limits } = ctx.config;
  const leg = new WebSocketLeg(ws, {
    client: r.client,
    acceptedAt: r.acceptedAt,
    pingIntervalMs: tunnel.wsPingIntervalMs,
    rerouteRetryMs: tunnel.rerouteRetryMs,
    preConnectBufferBytes: limits.preConnectBufferBytes,
    resume: { sessions: ctx.sessions, graceMs: tunnel.resume.graceMs, maxBufferBytes: tunnel.resume.maxBufferBytes },
  });
  let credential: Credential;
  try {
    if (!isProtocol(r.protocolText)) throw new OneportError('ONEPORT_ERR_NO_SUCH_PROTOCOL');
    if (r.ticket) credential = { kind: 'ticket', ticket: r.ticket };
    else if (r.resume) credential = { kind: 'resume', token: r.resume, cookie: r.cookie };
    else if (r.cookie) credential = { kind: 'session', token: r.cookie };
    else throw new OneportError('ONEPORT_ERR_AUTH_REQUIRED', 'ticket missing');
  } catch (e) {
    refuseTunnel(ctx.broker, leg, e);
    return;
  }
  await openTunnel(ctx.broker, { vmName: r.vmName, credential, hints: { protocol: r.protocolText }, tls: true, client: r.client, hold: true }, leg);
}
