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
import { WebSocket, WebSocketServer } from 'ws';
import type { GatewayContext } from '../context.js';
import { connInfo } from '../conninfo.js';
import { OneportError, toOneportError } from '../errors.js';
import { isProtocol } from '../routing.js';
import type { VmRecord } from '../directory/directory.js';
import { type CloseReason, WebSocketPump } from '../tunnel/pump.js';
import { openConsole, trackTunnel } from '../tunnel/open.js';
import { RESUMABLE_SUBPROTOCOL, ResumableSession } from '../tunnel/session.js';
import { newId } from '../auth/tokens.js';
import { type Credential, authorizeTunnel } from './authorize.js';
import { decodePathSegment, parseRequestUrl, writeRawError } from './respond.js';
import { SESSION_COOKIE, readCookie } from './cookies.js';

const TUNNEL_PATH = /^\/tunnel\/([^/?#]{1,200})\/([^/?#]{1,16})$/;
/** Subprotocols we speak, in order of preference. */
const SUBPROTOCOLS = [RESUMABLE_SUBPROTOCOL, 'binary'];

/** `rerouteRetryMs`: the bound of the jittered wait told to rerouted clients (config tunnel.rerouteRetryMs). */
export function wsCloseFor(reason: CloseReason, rerouteRetryMs = 500): { code: number; message: string } {
  switch (reason) {
    case 'shutdown':
      return { code: 1001, message: 'gateway shutting down' };
    case 'idle':
      return { code: 1000, message: 'idle timeout' };
    case 'console-error':
      return { code: 4502, message: 'console connection lost' };
    case 'too-large':
      return { code: 1009, message: 'message too large' };
    case 'rerouted':
      // CONTRACT section 4: reconnect now (with the resume token), after retryMs.
      return { code: 4001, message: JSON.stringify({ retryMs: Math.floor(Math.random() * rerouteRetryMs) }) };
    default:
      return { code: 1000, message: 'console closed' };
  }
}

export function createWebSocketServer(ctx: GatewayContext): WebSocketServer {
  return new WebSocketServer({
    noServer: true,
    clientTracking: false,
    perMessageDeflate: false,
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

export async function handleUpgrade(ctx: GatewayContext, wss: WebSocketServer, req: IncomingMessage, socket: net.Socket, head: Buffer): Promise<void> {
  const info = connInfo(socket);
  const client = info?.remoteAddress ?? socket.remoteAddress ?? 'unknown';
  // Refusals before the upgrade are plain HTTP answers. Everything parsed from the request line
  // is parsed in here: a malformed URL or %-escape is the client's error, never ours.
  let url: URL;
  let vmName: string;
  let protocolText: string;
  try {
    if (!info?.tls) throw new OneportError('ONEPORT_ERR_TLS_REQUIRED');
    if (info.limited) throw new OneportError('ONEPORT_ERR_RATE_LIMITED', undefined, { retryAfter: 5 });
    if (ctx.lifecycle.shuttingDown) throw new OneportError('ONEPORT_ERR_SHUTTING_DOWN', undefined, { retryAfter: 5 });
    if ((req.headers.upgrade ?? '').toLowerCase() !== 'websocket') throw new OneportError('ONEPORT_ERR_BAD_REQUEST', 'only WebSocket upgrades');
    url = parseRequestUrl(req.url);
    const m = TUNNEL_PATH.exec(url.pathname);
    if (!m) throw new OneportError('ONEPORT_ERR_NOT_FOUND', 'WebSocket tunnels live at /tunnel/<vm>/<protocol>');
    vmName = decodePathSegment(m[1] ?? '').toLowerCase();
    protocolText = decodePathSegment(m[2] ?? '').toLowerCase();
    if (!originAllowed(ctx, req)) throw new OneportError('ONEPORT_ERR_ORIGIN');
  } catch (e) {
    const err = toOneportError(e);
    ctx.metrics.tunnels.inc({ protocol: 'unknown', transport: 'websocket', result: err.code });
    if (ctx.noisyLog.take(`ws:${err.code}`) >= 0) ctx.log.info({ event: 'tunnel-refused', transport: 'websocket', client, code: err.code }, err.message);
    writeRawError(socket, err);
    return;
  }
  const ticket = url.searchParams.get('ticket');
  const resume = url.searchParams.get('resume');
  const session = url.searchParams.get('session');
  const receivedText = url.searchParams.get('received');
  const cookie = readCookie(req.headers.cookie, SESSION_COOKIE);

  wss.handleUpgrade(req, socket, head, (ws) => {
    const r: WsRequest = { vmName, protocolText, ticket, resume, cookie, client, acceptedAt: info.acceptedAt };
    const work = session !== null && ws.protocol === RESUMABLE_SUBPROTOCOL ? resumeSession(ctx, ws, r, session, receivedText) : runTunnel(ctx, ws, r);
    work.catch((e: unknown) => {
      ctx.metrics.internalErrors.inc({ where: 'websocket' });
      ctx.log.error({ err: e, event: 'handler-failed', where: 'websocket', client }, 'WebSocket handler failed');
      ws.terminate();
    });
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

async function runTunnel(ctx: GatewayContext, ws: WebSocket, r: WsRequest): Promise<void> {
  ws.on('error', () => ws.terminate());
  // Messages that arrive while we authenticate and dial are kept, up to a bound.
  const queued: Buffer[] = [];
  let queuedBytes = 0;
  let overflow = false;
  const onMessage = (data: Buffer): void => {
    queuedBytes += data.length;
    if (queuedBytes > ctx.config.limits.preConnectBufferBytes) overflow = true;
    else queued.push(Buffer.from(data));
  };
  ws.on('message', onMessage);
  const abort = new AbortController();
  ws.once('close', () => abort.abort());
  let protocolLabel = 'unknown';
  try {
    if (!isProtocol(r.protocolText)) throw new OneportError('ONEPORT_ERR_NO_SUCH_PROTOCOL');
    protocolLabel = r.protocolText;
    let credential: Credential;
    if (r.ticket) credential = { kind: 'ticket', ticket: r.ticket };
    else if (r.resume) {
      // The browser always sends its cookie; an expired or revoked session must not spoil a valid
      // resume token (the token is the credential here). A live session must be the token's user.
      let cookieUser: string | undefined;
      if (r.cookie) cookieUser = await ctx.auth.session(r.cookie).then((s) => s.user.name, () => undefined);
      credential = { kind: 'resume', token: r.resume, user: cookieUser };
    }
    else if (r.cookie) credential = { kind: 'session', user: (await ctx.auth.session(r.cookie)).user };
    else throw new OneportError('ONEPORT_ERR_AUTH_REQUIRED', 'ticket missing');
    const authorized = await authorizeTunnel(ctx, {
      vmName: r.vmName,
      credential,
      hints: { protocol: r.protocolText },
      tls: true,
      client: r.client,
      hold: true,
    });
    // Held here, upgraded and waiting, while the VM changes hands.
    const { socket: consoleSocket, target } = await openConsole(ctx, authorized, abort.signal);
    ws.removeListener('message', onMessage);
    if (ws.readyState !== WebSocket.OPEN) {
      consoleSocket.destroy();
      throw new OneportError('ONEPORT_ERR_CONSOLE_UNREACHABLE', 'client went away');
    }
    if (overflow) {
      consoleSocket.destroy();
      throw new OneportError('ONEPORT_ERR_PAYLOAD_TOO_LARGE', 'too much data before the console answered');
    }
    const closeFor = (why: CloseReason): { code: number; message: string } => wsCloseFor(why, ctx.config.tunnel.rerouteRetryMs);
    let pump: WebSocketPump | ResumableSession;
    if (ws.protocol === RESUMABLE_SUBPROTOCOL) {
      const owner = { id: newId(), user: target.user.name, vm: target.vm.name, protocol: target.endpoint.protocol };
      const { graceMs, maxBufferBytes } = ctx.config.tunnel.resume;
      pump = new ResumableSession(owner, consoleSocket, ws, { idleTimeoutMs: ctx.config.tunnel.idleTimeoutMs, wsCloseFor: closeFor, graceMs, maxBufferBytes }, (s, parked) => ctx.sessions.update(s, parked), queued);
    } else {
      pump = new WebSocketPump(ws, consoleSocket, { idleTimeoutMs: ctx.config.tunnel.idleTimeoutMs, wsCloseFor: closeFor, judgeConsoleEnd: hopEndJudge(ctx, target.vm) }, queued);
    }
    keepAlive(ws, ctx.config.tunnel.wsPingIntervalMs, pump.done);
    trackTunnel(ctx, target, 'websocket', r.client, pump, r.acceptedAt);
  } catch (e) {
    ws.removeListener('message', onMessage);
    const err = toOneportError(e);
    ctx.metrics.tunnels.inc({ protocol: protocolLabel, transport: 'websocket', result: err.code });
    if (err.code === 'ONEPORT_ERR_INTERNAL') ctx.log.error({ err: e, client: r.client }, 'WebSocket tunnel failed');
    else if (ctx.noisyLog.take(`ws:${err.code}`) >= 0) {
      ctx.log.info({ event: 'tunnel-refused', transport: 'websocket', client: r.client, code: err.code }, err.message);
    }
    const reason = err.retryAfter === undefined ? err.code : JSON.stringify({ code: err.code, retryMs: err.retryAfter * 1000 });
    if (ws.readyState === WebSocket.OPEN) ws.close(err.wsClose, reason.slice(0, 120));
  }
}

/** Ping every interval; a client that has not answered the previous ping is gone. */
function keepAlive(ws: WebSocket, intervalMs: number, done: Promise<unknown>): void {
  let alive = true;
  ws.on('pong', () => (alive = true));
  const timer = setInterval(() => {
    if (!alive) {
      ws.terminate();
      return;
    }
    alive = false;
    ws.ping();
  }, intervalMs);
  timer.unref();
  void done.then(() => clearInterval(timer));
}

/**
 * A client of a parked `oneport.v1` session comes back: `?resume=<token>&session=<id>&received=<n>`.
 * The resume token proves user and VM; the session must be theirs. Held on this node: attach and
 * replay. Held on another node (cluster): relay this leg to it over node TLS. Gone (the console
 * died, the grace period passed): 4001, so the client reconnects fresh with its resume token.
 */
async function resumeSession(ctx: GatewayContext, ws: WebSocket, r: WsRequest, sessionId: string, receivedText: string | null): Promise<void> {
  ws.on('error', () => ws.terminate());
  const queued: Buffer[] = [];
  const onMessage = (data: Buffer): void => void queued.push(Buffer.from(data));
  ws.on('message', onMessage);
  try {
    if (!r.resume) throw new OneportError('ONEPORT_ERR_AUTH_REQUIRED', 'resuming a session needs its resume token');
    const received = Number(receivedText ?? 'NaN');
    if (!Number.isSafeInteger(received) || received < 0) throw new OneportError('ONEPORT_ERR_BAD_REQUEST', 'received must be a byte count');
    const grant = await ctx.auth.resume(r.resume, r.vmName, r.client);
    const local = ctx.sessions.get(sessionId);
    if (local) {
      if (local.owner.user !== grant.user.name || local.owner.vm !== r.vmName || local.owner.protocol !== r.protocolText) {
        throw new OneportError('ONEPORT_ERR_TICKET_INVALID', 'not your session');
      }
      ws.removeListener('message', onMessage);
      // Messages that raced in before the hello are payload sent after the client's offset... but
      // the client sends nothing until it has the hello, so `queued` is empty by protocol.
      const refused = local.attach(ws, received, queued);
      if (refused) throw new OneportError('ONEPORT_ERR_TICKET_INVALID', refused === 'offset' ? 'cannot replay from that offset' : 'session ended');
      ctx.metrics.resumes.inc({ result: 'ok' });
      ctx.log.info({ event: 'session-resumed', vm: r.vmName, user: grant.user.name, session: sessionId, legs: local.legs, client: r.client }, `session on ${r.vmName} resumed`);
      keepAlive(ws, ctx.config.tunnel.wsPingIntervalMs, local.done);
      return;
    }
    const holder = await ctx.cluster?.sessionNode(sessionId);
    if (holder && holder !== ctx.cluster!.nodeId) {
      ws.removeListener('message', onMessage);
      await ctx.cluster!.relayResume(holder, ws, r.vmName, r.protocolText, { resume: r.resume, session: sessionId, received }, queued);
      ctx.metrics.resumes.inc({ result: 'relayed' });
      return;
    }
    ctx.metrics.resumes.inc({ result: 'gone' });
    // The console is gone with its session: reconnect fresh (level 2) with the resume token.
    if (ws.readyState === WebSocket.OPEN) ws.close(4001, JSON.stringify({ retryMs: 0, fresh: true }));
  } catch (e) {
    ws.removeListener('message', onMessage);
    const err = toOneportError(e);
    ctx.metrics.resumes.inc({ result: err.code });
    if (ctx.noisyLog.take(`resume:${err.code}`) >= 0) ctx.log.info({ event: 'resume-refused', client: r.client, code: err.code }, err.message);
    if (ws.readyState === WebSocket.OPEN) ws.close(err.wsClose, err.code);
  }
}

/**
 * For a tunnel hopped to the VM's owner node: when the hop ends cleanly, was it the console, or
 * the owner node going away (a killed process closes its sockets cleanly too)? A node that no
 * longer answers its port, or a VM that changed owner meanwhile, means "reconnect" (4001).
 */
function hopEndJudge(ctx: GatewayContext, vm: VmRecord): (() => Promise<CloseReason | undefined>) | undefined {
  const { cluster } = ctx;
  if (!cluster || vm.node === cluster.nodeId || ctx.config.cluster.consoleDial !== 'via-owner') return undefined;
  return async () => {
    const now = ctx.dir.getVm(vm.name);
    if (!now || now.node !== vm.node || now.epoch !== vm.epoch) return 'rerouted';
    const owner = cluster.node(vm.node);
    if (!owner || owner.state !== 'up') return 'rerouted';
    return (await cluster.peers.probe(owner.info.address, 500)) ? undefined : 'rerouted';
  };
}
