/**
 * The JSON API (CONTRACT section 5), health and metrics. The same router serves the TLS port
 * and the local control socket (where the caller is the machine's administrator: the CLI).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { z } from 'zod';
import type { GatewayContext } from '../context.js';
import { OneportError, validationError } from '../errors.js';
import { type UserRecord, type VmRecord, isAssigned, protocolSchema, publicVmRecord, userNameSchema, vmsForUser } from '../directory/directory.js';
import * as commands from '../directory/commands.js';
import { moveSchema, publicUser, userInputSchema } from '../directory/commands.js';
import { lookupVm } from '../routing.js';
import { SESSION_COOKIE, clearedSessionCookie, readCookie, sessionCookie } from './cookies.js';
import { decodePathSegment, pathOf, safeHost, sendError, sendJson } from './respond.js';
import { connInfo } from '../conninfo.js';
import type { TokenPayload } from '../auth/tokens.js';
import { VERSION } from '../version.js';
import { OPENAPI } from './openapi.js';
import { forwardToLeader } from './forward.js';
import { ACTING_HEADER, CLIENT_HEADER, FORWARDED_BY_HEADER } from '../cluster/peers.js';
import { type FanoutDeps, type NodeAnswer, askNode, askOtherNodes } from '../cluster/fanout.js';
import { postToNode } from '../drain.js';
import { type Tunnel, type TunnelSummary, summarize } from '../tunnel/registry.js';
import { terminateSessions } from '../tunnel/revoke.js';
import type { AdminAuditRecord } from '../audit.js';
import { formatHostPort } from '../hostport.js';
import { isRdpFileVariant, rdpFile } from '../rdp/rdp-file.js';
import { nativeRdpOn } from '../rdp/native.js';
import { DEFAULT_JOIN_TTL_MS, type JoinService, MAX_JOIN_TTL_MS, joinRequestSchema, signerPeer } from '../cluster/join.js';

export interface Principal {
  readonly user: UserRecord;
  /** Session token payload; undefined for the control socket. */
  readonly session?: TokenPayload | undefined;
  readonly viaCookie: boolean;
}

/** The control socket's caller: whoever can open a 0600 socket in the state folder. */
export const LOCAL_ADMIN: UserRecord = Object.freeze({
  name: 'local-admin',
  passwordHash: '',
  roles: ['admin'] as const,
  groups: [],
  sessionsNotBefore: 0,
});

interface Call {
  readonly ctx: GatewayContext;
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly params: readonly string[];
  readonly local: boolean;
  readonly client: string;
  /** The cluster node that sent this call (node certificate, forwarded-by header), if one did. */
  readonly peer: string | undefined;
  principal(): Promise<Principal>;
  admin(): Promise<Principal>;
  body<T>(schema: z.ZodType<T>): Promise<T>;
}

type Handler = (c: Call) => Promise<void> | void;

interface Route {
  readonly method: string;
  readonly pattern: RegExp;
  /** As written, `:p` for each path parameter (the OpenAPI test compares it with the document). */
  readonly path: string;
  readonly name: string;
  readonly handler: Handler;
  /** A directory change: executed by the cluster's leader (a follower forwards it). */
  readonly leader: boolean;
}

const seg = '([^/]{1,200})';
const routes: Route[] = [];
function route(method: string, path: string, name: string, handler: Handler, opts: { leader?: boolean } = {}): void {
  routes.push({ method, pattern: new RegExp(`^${path.replaceAll(':p', seg)}$`), path, name, handler, leader: opts.leader ?? false });
}

const loginSchema = z.object({ user: z.string().min(1).max(64), password: z.string().min(1).max(1024) }).strict();
const ticketSchema = z.object({ protocol: protocolSchema.optional() }).strict();
const adminTicketSchema = z.object({ user: userNameSchema, vm: z.string(), protocol: protocolSchema.optional() }).strict();

function publicVm(vm: VmRecord, nativeRdpEnabled: boolean): Record<string, unknown> {
  const protocols = vm.endpoints.map((e) => e.protocol);
  // nativeRdp: whether a stock RDP client may connect straight to the port (the portal offers that .rdp file).
  return { vm: vm.name, protocols, state: vm.state, node: vm.node, ...(protocols.includes('rdp') ? { nativeRdp: nativeRdpOn(nativeRdpEnabled, vm) } : {}) };
}

/**
 * `session`: the caller's own API session, when the ticket is for the caller (portal, API): the
 * ticket and its resume token die with it. Admin tickets for someone else carry none.
 */
async function ticketResponse(c: Call, user: UserRecord, vm: VmRecord, protocolIn: string | undefined, session?: TokenPayload): Promise<Record<string, unknown>> {
  const protocol = (protocolIn ?? vm.endpoints[0]?.protocol ?? 'vnc') as VmRecord['endpoints'][number]['protocol'];
  const endpoint = vm.endpoints.find((e) => e.protocol === protocol);
  if (!endpoint) throw new OneportError('ONEPORT_ERR_NO_SUCH_PROTOCOL');
  const t = await c.ctx.auth.issueTicket(user, vm, protocol, session);
  return {
    vm: vm.name,
    protocol,
    ticket: t.ticket,
    expiresAt: new Date(t.expiresAt).toISOString(),
    websocket: `/tunnel/${encodeURIComponent(vm.name)}/${protocol}?ticket=${t.ticket}`,
    connect: `${vm.name}:${endpoint.publishedPort}`,
    connectWithTicket: `${t.ticket}.${vm.name}:${endpoint.publishedPort}`,
    resume: t.resume,
    resumeExpiresAt: new Date(t.resumeExpiresAt).toISOString(),
  };
}

/** Every route: method and path (`:p` for a parameter). */
export function apiRoutes(): Array<{ method: string; path: string; leader: boolean }> {
  return routes.map((r) => ({ method: r.method, path: r.path, leader: r.leader }));
}

route('GET', '/healthz', 'healthz', (c) => sendJson(c.res, 200, { status: 'ok' }));
route('GET', '/readyz', 'readyz', (c) => {
  const { lifecycle } = c.ctx;
  // A stale mirror still routes (known VMs, known owners), so the node stays ready; the age says
  // how stale, for the operator and the load balancer's judgement.
  const ready = lifecycle.listening && !lifecycle.shuttingDown && !lifecycle.unready;
  const st = c.ctx.directoryState();
  const leader = c.ctx.cluster?.leader();
  sendJson(c.res, ready ? 200 : 503, {
    status: ready ? 'ready' : lifecycle.shuttingDown || lifecycle.unready ? 'shutting-down' : 'starting',
    directory: { kind: c.ctx.dir.kind, version: c.ctx.dir.version(), connected: st.connected, stale: !st.connected, ageSeconds: Math.round(st.ageMs / 100) / 10 },
    ...(c.ctx.cluster ? { cluster: { node: c.ctx.cluster.nodeId, leader: leader ? { node: leader.node, epoch: leader.epoch } : null } } : {}),
  });
});
/** The gauges read at scrape time (also each worker's, when the primary gathers /metrics). */
export function refreshGauges(ctx: GatewayContext): void {
  const st = ctx.directoryState();
  ctx.metrics.directoryVersion.set(ctx.dir.version());
  ctx.metrics.directoryAge.set(st.ageMs / 1000);
  ctx.metrics.directoryConnected.set(st.connected ? 1 : 0);
  ctx.metrics.sessionsParked.set(ctx.sessions.parkedCount);
  ctx.metrics.sessionReplayBytes.set(ctx.sessions.bufferedBytes);
  if (ctx.cluster) {
    ctx.metrics.clusterLeader.set(ctx.cluster.isLeader() ? 1 : 0);
    ctx.metrics.clusterEpoch.set(ctx.cluster.leader()?.epoch ?? ctx.cluster.highestEpoch());
  }
}

route('GET', '/metrics', 'metrics', async (c) => {
  refreshGauges(c.ctx);
  // With workers: every worker's and the primary's, summed (workers/primary.ts).
  const text = c.ctx.metricsText ? await c.ctx.metricsText() : await c.ctx.metrics.registry.metrics();
  c.res.writeHead(200, { 'Content-Type': c.ctx.metrics.registry.contentType, 'Cache-Control': 'no-store' });
  c.res.end(text);
});

route('GET', '/api/openapi.json', 'openapi', (c) => sendJson(c.res, 200, OPENAPI));
route('POST', '/api/login', 'login', async (c) => {
  if (!c.local && !connInfo(c.req.socket)?.tls) throw new OneportError('ONEPORT_ERR_TLS_REQUIRED');
  const body = await c.body(loginSchema);
  const { token, expiresAt } = await c.ctx.auth.login(body.user, body.password, c.client);
  sendJson(c.res, 200, { token, expiresAt: new Date(expiresAt).toISOString() }, {
    'Set-Cookie': sessionCookie(token, c.ctx.config.auth.sessionTtlMs),
  });
});
route('POST', '/api/logout', 'logout', async (c) => {
  const p = await c.principal();
  if (p.session) {
    await c.ctx.auth.logout(p.session);
    c.ctx.loggedOut(p.session.sid);
  }
  sendJson(c.res, 200, { ok: true }, { 'Set-Cookie': clearedSessionCookie() });
});
route('GET', '/api/me', 'me', async (c) => {
  const p = await c.principal();
  sendJson(c.res, 200, publicUser(p.user));
});
route('GET', '/api/desktops', 'desktops', async (c) => {
  const p = await c.principal();
  sendJson(c.res, 200, vmsForUser(c.ctx.dir, p.user).map((vm) => publicVm(vm, c.ctx.config.nativeRdp.enabled)));
});
route('POST', '/api/desktops/:p/tickets', 'tickets', async (c) => {
  const p = await c.principal();
  const body = await c.body(ticketSchema);
  const vm = lookupVm(c.ctx.dir, c.params[0] ?? '');
  if (!isAssigned(vm, p.user)) throw new OneportError('ONEPORT_ERR_NOT_ASSIGNED');
  sendJson(c.res, 200, await ticketResponse(c, p.user, vm, body.protocol, p.session));
});
route('GET', '/api/desktops/:p/console.vv', 'console.vv', async (c) => {
  const p = await c.principal();
  const vm = lookupVm(c.ctx.dir, c.params[0] ?? '');
  if (!isAssigned(vm, p.user)) throw new OneportError('ONEPORT_ERR_NOT_ASSIGNED');
  const query = new URL(c.req.url ?? '/', 'https://x').searchParams;
  const protocol = protocolSchema.safeParse(query.get('protocol') ?? 'spice');
  // remote-viewer ignores `proxy=` for VNC and resolves `<ticket>.<vm>` itself: the ticket would go
  // to the user's DNS resolver and the connection nowhere. No .vv for VNC, then.
  if (protocol.success && protocol.data === 'vnc') {
    throw new OneportError('ONEPORT_ERR_VALIDATION', 'no .vv for VNC: remote-viewer ignores the proxy for VNC; open it in the browser, or use a VNC client through CONNECT (README "Client recipes")');
  }
  if (!protocol.success || protocol.data !== 'spice') throw new OneportError('ONEPORT_ERR_VALIDATION', 'protocol must be spice');
  // proxy=https: the client speaks TLS to the gateway before CONNECT (it checks our certificate).
  const proxyScheme = query.get('proxy') ?? 'http';
  if (proxyScheme !== 'http' && proxyScheme !== 'https') throw new OneportError('ONEPORT_ERR_VALIDATION', 'proxy must be http or https');
  const t = await ticketResponse(c, p.user, vm, protocol.data, p.session);
  const [host, port] = String(t.connectWithTicket).split(/:(?=\d+$)/);
  // The Host header goes into the file: only a plain host[:port], else our first server name.
  const gatewayHost = safeHost(c.req.headers.host) ?? c.ctx.config.serverNames[0] ?? 'localhost';
  const text = [
    '[virt-viewer]',
    `type=${protocol.data}`,
    `host=${host}`,
    `port=${port}`,
    `proxy=${proxyScheme}://${gatewayHost}`,
    `title=${vm.name} (oneport)`,
    'delete-this-file=1',
    '',
  ].join('\n');
  c.res.writeHead(200, {
    'Content-Type': 'application/x-virt-viewer',
    'Content-Disposition': `attachment; filename="${vm.name}.vv"`,
    'Cache-Control': 'no-store',
  });
  c.res.end(text);
});
/**
 * The CA that signed the certificate this gateway serves, when oneport made that certificate itself
 * (no `tls.certificates` configured): public, so that clients which verify the gateway (remote-viewer
 * with a TLS .vv, curl) can be told to trust it. 404 when the operator configured certificates.
 */
route('GET', '/api/ca.pem', 'ca.pem', async (c) => {
  if (c.ctx.selfMadeCa === undefined) throw new OneportError('ONEPORT_ERR_NOT_FOUND', 'this gateway serves a certificate it did not make: trust its issuer as usual');
  c.res.writeHead(200, {
    'Content-Type': 'application/x-pem-file',
    'Content-Disposition': 'attachment; filename="oneport-ca.pem"',
    'Cache-Control': 'no-cache',
  });
  c.res.end(c.ctx.selfMadeCa);
});
route('GET', '/api/desktops/:p/console.rdp', 'console.rdp', async (c) => {
  const p = await c.principal();
  const vm = lookupVm(c.ctx.dir, c.params[0] ?? '');
  if (!isAssigned(vm, p.user)) throw new OneportError('ONEPORT_ERR_NOT_ASSIGNED');
  const variant = new URL(c.req.url ?? '/', 'https://x').searchParams.get('variant') ?? 'gateway';
  if (!isRdpFileVariant(variant)) throw new OneportError('ONEPORT_ERR_VALIDATION', 'variant must be gateway or native');
  const endpoint = vm.endpoints.find((e) => e.protocol === 'rdp');
  if (!endpoint) throw new OneportError('ONEPORT_ERR_NO_SUCH_PROTOCOL');
  if (variant === 'native' && !nativeRdpOn(c.ctx.config.nativeRdp.enabled, vm)) throw new OneportError('ONEPORT_ERR_FORBIDDEN', 'native RDP is turned off for this desktop');
  const t = await ticketResponse(c, p.user, vm, 'rdp', p.session);
  // The Host header goes into the file only when it is a plain host[:port]; else our first server name and this port.
  const gateway = safeHost(c.req.headers.host) ?? formatHostPort(c.ctx.config.serverNames[0] ?? 'localhost', c.req.socket.localPort ?? 443);
  const text = rdpFile({ variant, vm: vm.name, publishedPort: endpoint.publishedPort, gateway, ticket: String(t.ticket) });
  c.res.writeHead(200, {
    'Content-Type': 'application/x-rdp',
    'Content-Length': Buffer.byteLength(text),
    'Content-Disposition': `attachment; filename="${vm.name}${variant === 'native' ? '-native' : ''}.rdp"`,
    'Cache-Control': 'no-store',
  });
  c.res.end(text);
});
/** Node addresses, versions and load: for admins only (the portal never needs them). */
route('GET', '/api/cluster', 'cluster', async (c) => {
  await c.admin();
  const id = c.ctx.config.nodeId;
  const st = c.ctx.directoryState();
  const directory = { kind: c.ctx.dir.kind, version: c.ctx.dir.version(), connected: st.connected, ageMs: st.ageMs };
  if (!c.ctx.cluster) {
    sendJson(c.res, 200, {
      self: id,
      leader: { node: id, epoch: 1 },
      directory,
      nodes: [{ id, state: 'up', leader: true, version: VERSION, mirror: { version: directory.version, ageMs: 0, connected: true } }],
    });
    return;
  }
  sendJson(c.res, 200, { ...(await c.ctx.cluster.status()), directory });
});

// Cluster membership: join tokens (README "Cluster setup"; cluster/join.ts).
const joinTokenSchema = z
  .object({
    node: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, { message: 'a node id (letters, digits, . _ -)' }),
    ttlSeconds: z.number().int().min(1).max(MAX_JOIN_TTL_MS / 1000).optional(),
  })
  .strict();
function joins(ctx: GatewayContext): JoinService {
  if (!ctx.join) throw new OneportError('ONEPORT_ERR_NOT_FOUND', 'this node is not in a cluster');
  return ctx.join;
}
route('POST', '/api/cluster/join-tokens', 'join-token', async (c) => {
  const p = await c.admin();
  const body = await c.body(joinTokenSchema);
  const ttlMs = body.ttlSeconds !== undefined ? body.ttlSeconds * 1000 : DEFAULT_JOIN_TTL_MS;
  const minted = await joins(c.ctx).mint(body.node, ttlMs, p.user.name);
  await audit(c, 'node.join-token', { type: 'node', name: body.node }, { ttlSeconds: ttlMs / 1000 });
  sendJson(c.res, 200, { token: minted.token, node: minted.node, expiresAt: new Date(minted.expiresAt).toISOString() });
});
// The CA certificate is public (browsers are told to trust it); a joining node pins it by hash.
route('GET', '/api/cluster/ca', 'cluster-ca', (c) => {
  const j = joins(c.ctx);
  sendJson(c.res, 200, { ca: j.caCert, fingerprint: j.fingerprint });
});
route('POST', '/api/cluster/join', 'join', async (c) => {
  const j = joins(c.ctx);
  if (!c.local && !connInfo(c.req.socket)?.tls) throw new OneportError('ONEPORT_ERR_TLS_REQUIRED');
  await j.limit(c.client);
  const { cluster, leaderLink } = c.ctx;
  if (!j.signer && cluster && leaderLink) {
    // Never a second hop: a forwarded call reaching a node without the CA key fails.
    const peer = c.peer === undefined ? signerPeer(cluster.nodes(), cluster.leader()?.node, cluster.nodeId) : undefined;
    if (!peer) throw new OneportError('ONEPORT_ERR_NODE_UNREACHABLE', 'no live node holds the cluster CA key to sign this request');
    const body = await readBody(c.req, c.ctx.config.http.maxBodyBytes);
    await forwardToLeader({ nodeId: cluster.nodeId, leaderPeer: () => Promise.resolve(peer), dispatcher: leaderLink.dispatcher }, c.req, c.res, { local: false, client: c.client, body, timeoutMs: c.ctx.config.http.requestTimeoutMs, target: 'the signing node' });
    return;
  }
  sendJson(c.res, 200, await j.sign(await c.body(joinRequestSchema), c.client, c.peer));
});

// Admin: directory changes.
route('GET', '/api/vms', 'vms', async (c) => {
  await c.admin();
  sendJson(c.res, 200, c.ctx.dir.listVms().map(publicVmRecord));
});
route('GET', '/api/vms/:p', 'vm', async (c) => {
  await c.admin();
  sendJson(c.res, 200, publicVmRecord(lookupVm(c.ctx.dir, c.params[0] ?? '')));
});
route('PUT', '/api/vms/:p', 'vm', async (c) => {
  await c.admin();
  const name = c.params[0] ?? '';
  const body = await c.body(z.record(z.string(), z.unknown()));
  const existed = c.ctx.dir.getVm(name) !== undefined;
  const vm = await commands.putVm(c.ctx.dir, { ...body, name });
  await audit(c, existed ? 'vm.update' : 'vm.create', { type: 'vm', name }, { fields: Object.keys(body).sort() });
  sendJson(c.res, 200, publicVmRecord(vm));
}, { leader: true });
// The console password alone (the CLI's `vm password`): never echoed, audited without it.
route('PUT', '/api/vms/:p/console-password', 'console-password', async (c) => {
  await c.admin();
  const name = c.params[0] ?? '';
  const body = await c.body(commands.consolePasswordInputSchema);
  const vm = await commands.setConsolePassword(c.ctx.dir, name, body);
  await audit(c, 'vm.console-password', { type: 'vm', name }, { protocol: body.protocol, set: body.password !== null });
  sendJson(c.res, 200, publicVmRecord(vm));
}, { leader: true });
route('DELETE', '/api/vms/:p', 'vm', async (c) => {
  await c.admin();
  await commands.deleteVm(c.ctx.dir, c.params[0] ?? '');
  await audit(c, 'vm.delete', { type: 'vm', name: c.params[0] ?? '' });
  sendJson(c.res, 200, { ok: true });
}, { leader: true });
route('POST', '/api/vms/:p/move', 'move', async (c) => {
  await c.admin();
  const { node } = await c.body(moveSchema);
  const cluster = c.ctx.cluster;
  const nodeState = cluster ? (n: string): string | undefined => cluster.node(n)?.state : undefined;
  const before = lookupVm(c.ctx.dir, c.params[0] ?? '');
  const moved = await commands.moveVm(c.ctx.dir, before.name, node, { nodeState });
  await audit(c, 'vm.move', { type: 'vm', name: before.name }, { from: before.node, to: node, epoch: moved.epoch });
  sendJson(c.res, 200, publicVmRecord(moved));
}, { leader: true });
const drainSchema = z.object({ moveVms: z.boolean().optional() }).strict();
route('POST', '/api/nodes/:p/drain', 'drain', async (c) => {
  await c.admin();
  const { moveVms = false } = await c.body(drainSchema);
  const node = c.params[0] ?? '';
  const { cluster, config } = c.ctx;
  if (node === config.nodeId) {
    // With workers: every worker's client tunnels (this node holds no hops outside a cluster).
    const tunnels = c.ctx.workers ? (await c.ctx.workers.sessions()).length : c.ctx.tunnels.size;
    const { started } = c.ctx.drain({ moveVms, cause: 'api' });
    await audit(c, 'node.drain', { type: 'node', name: node }, { moveVms, started });
    sendJson(c.res, 202, { node, draining: true, started, tunnels, moveVms });
    return;
  }
  // Another node: passed on over node TLS, as the administrator this call proved to be.
  const peer = cluster?.node(node);
  if (!cluster || !peer) throw new OneportError('ONEPORT_ERR_NOT_FOUND', `no node ${node} in the cluster`);
  if (c.peer !== undefined) throw new OneportError('ONEPORT_ERR_NODE_UNREACHABLE', 'not passed on twice');
  if (peer.state !== 'up' && peer.state !== 'suspect') throw new OneportError('ONEPORT_ERR_NODE_UNREACHABLE', `node ${node} is ${peer.state}`);
  let answer;
  try {
    answer = await postToNode({ nodeId: c.ctx.config.nodeId, dispatcher: c.ctx.leaderLink!.dispatcher }, peer.info.address, `/api/nodes/${encodeURIComponent(node)}/drain`, { moveVms }, c.ctx.config.http.requestTimeoutMs);
  } catch (err) {
    throw new OneportError('ONEPORT_ERR_NODE_UNREACHABLE', `node ${node} did not answer: ${(err as Error).message}`, { cause: err });
  }
  c.res.writeHead(answer.status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
  c.res.end(answer.text);
});
route('POST', '/api/keys/rotate', 'rotate-keys', async (c) => {
  await c.admin();
  await c.ctx.dir.rotateKeys();
  const k = c.ctx.dir.keys();
  await audit(c, 'keys.rotate', { type: 'keys', name: 'signing' }, { current: k.current.id });
  c.ctx.log.info({ event: 'keys-rotated', current: k.current.id }, `ticket signing key rotated (key ${k.current.id}; key ${k.previous[0]?.id ?? '-'} stays valid)`);
  sendJson(c.res, 200, { current: k.current.id, previous: k.previous.map((p) => p.id) });
}, { leader: true });
route('GET', '/api/users', 'users', async (c) => {
  await c.admin();
  sendJson(c.res, 200, c.ctx.dir.listUsers().map(publicUser));
});
route('PUT', '/api/users/:p', 'user', async (c) => {
  await c.admin();
  // The name is checked before the body is read, so a bad name is the error a client sees first.
  const name = commands.checkUserName(c.params[0] ?? '');
  const body = await c.body(userInputSchema);
  const existed = c.ctx.dir.getUser(name) !== undefined;
  const user = await commands.putUser(c.ctx.dir, name, body);
  // Field names only: a password is audited as "password changed", never its value.
  await audit(c, existed ? 'user.update' : 'user.create', { type: 'user', name }, { fields: Object.keys(body).sort(), roles: user.roles, groups: user.groups });
  sendJson(c.res, 200, user);
}, { leader: true });
route('DELETE', '/api/users/:p', 'user', async (c) => {
  await c.admin();
  await commands.deleteUser(c.ctx.dir, c.params[0] ?? '');
  await audit(c, 'user.delete', { type: 'user', name: c.params[0] ?? '' });
  sendJson(c.res, 200, { ok: true });
}, { leader: true });
route('POST', '/api/tickets', 'admin-ticket', async (c) => {
  await c.admin();
  const body = await c.body(adminTicketSchema);
  const user = c.ctx.dir.getUser(body.user);
  if (!user) throw new OneportError('ONEPORT_ERR_NOT_FOUND', 'no such user');
  const vm = lookupVm(c.ctx.dir, body.vm);
  if (!isAssigned(vm, user)) throw new OneportError('ONEPORT_ERR_NOT_ASSIGNED');
  const answer = await ticketResponse(c, user, vm, body.protocol);
  await audit(c, 'ticket.issue', { type: 'user', name: user.name }, { vm: vm.name, protocol: answer.protocol });
  sendJson(c.res, 200, answer);
});

// Admin: live sessions, every node's (README "Session controls").

/**
 * `?local=1`: this node's part only. Asked by another node of the cluster (node certificate and
 * forwarded-by header: no user credentials, the asking node checked them) or the control socket.
 */
function localOnly(c: Call): boolean {
  const q = new URL(c.req.url ?? '/', 'https://x').searchParams.get('local');
  if (q === null) return false;
  if (q !== '1') throw new OneportError('ONEPORT_ERR_VALIDATION', 'local must be 1');
  if (c.peer === undefined && !c.local) throw new OneportError('ONEPORT_ERR_FORBIDDEN', 'local=1 is for the nodes of the cluster');
  return true;
}

/** A node asking for its part, or an admin. */
async function nodeOrAdmin(c: Call, local: boolean): Promise<void> {
  if (!(local && c.peer !== undefined)) await c.admin();
}

function fanout(ctx: GatewayContext): FanoutDeps | undefined {
  const { cluster, leaderLink } = ctx;
  return cluster && leaderLink ? { self: cluster.nodeId, nodes: () => cluster.nodes(), dispatcher: leaderLink.dispatcher } : undefined;
}

export function terminate(ctx: GatewayContext, tunnels: readonly Tunnel[]): Promise<number> {
  return terminateSessions({ tunnels: ctx.tunnels, metrics: ctx.metrics, log: ctx.log, endSession: (sid) => ctx.auth.endConsoleSession(sid) }, tunnels);
}

/** What each node said: this one, then the others (a node that did not answer says why). */
function nodeReport<T>(self: string, mine: Record<string, unknown>, others: ReadonlyArray<NodeAnswer<T>>, count: (body: T) => Record<string, unknown>): { nodes: Array<Record<string, unknown>>; complete: boolean } {
  const nodes = [
    { node: self, state: 'up', answered: true, ...mine },
    ...others.map((a) => (a.answered && a.body !== undefined ? { node: a.node, state: a.state, answered: true, ...count(a.body) } : { node: a.node, state: a.state, answered: false, error: a.error })),
  ];
  // Nodes that are down or left hold no tunnels; every node that may hold some must have answered.
  return { nodes, complete: others.every((a) => a.answered || (a.state !== 'up' && a.state !== 'suspect')) };
}

route('GET', '/api/sessions', 'sessions', async (c) => {
  const local = localOnly(c);
  await nodeOrAdmin(c, local);
  const self = c.ctx.config.nodeId;
  // With workers: every worker's (the primary asks them).
  const mine = c.ctx.workers ? await c.ctx.workers.sessions() : c.ctx.tunnels.clientTunnels().map((t) => summarize(t, self));
  const f = fanout(c.ctx);
  if (local || !f) {
    if (local) return sendJson(c.res, 200, { node: self, sessions: mine });
    return sendJson(c.res, 200, { sessions: mine, nodes: [{ node: self, state: 'up', answered: true, sessions: mine.length }], complete: true });
  }
  const others = await askOtherNodes<{ sessions: TunnelSummary[] }>(f, 'GET', '/api/sessions?local=1');
  const sessions = [...mine, ...others.flatMap((a) => a.body?.sessions ?? [])].sort((a, b) => a.since.localeCompare(b.since) || a.id.localeCompare(b.id));
  sendJson(c.res, 200, { sessions, ...nodeReport(self, { sessions: mine.length }, others, (b) => ({ sessions: b.sessions.length })) });
});
route('DELETE', '/api/sessions/:p', 'session', async (c) => {
  const local = localOnly(c);
  await nodeOrAdmin(c, local);
  const id = c.params[0] ?? '';
  const self = c.ctx.config.nodeId;
  const node = id.slice(0, Math.max(0, id.lastIndexOf(':')));
  const f = fanout(c.ctx);
  if (local || !f || node === self) {
    const t = c.ctx.tunnels.clientTunnel(id);
    if (!t && c.ctx.workers) {
      // Held by another worker of this node: it ends it.
      const a = await c.ctx.workers.terminate(id);
      if (!a) throw new OneportError('ONEPORT_ERR_NOT_FOUND', 'no such session');
      if (!local) await audit(c, 'session.terminate', { type: 'session', name: id }, { user: a.user, vm: a.vm, tunnels: a.ended });
      return sendJson(c.res, 200, { id, node: self, ...a });
    }
    if (!t) throw new OneportError('ONEPORT_ERR_NOT_FOUND', 'no such session');
    const ended = await terminate(c.ctx, [t]);
    if (!local) await audit(c, 'session.terminate', { type: 'session', name: id }, { user: t.user, vm: t.vm, tunnels: ended });
    return sendJson(c.res, 200, { id, node: self, user: t.user, vm: t.vm, ended });
  }
  const a = await askNode<Record<string, unknown>>(f, node, 'DELETE', `/api/sessions/${encodeURIComponent(id)}?local=1`);
  if (!a || (!a.answered && a.state !== 'up' && a.state !== 'suspect')) {
    throw new OneportError('ONEPORT_ERR_NOT_FOUND', a ? `no such session: node ${node} is ${a.state}` : `no such session (no node ${node})`);
  }
  if (!a.answered) throw new OneportError('ONEPORT_ERR_NODE_UNREACHABLE', `node ${node} did not answer (${a.error ?? '?'}); the session may still be open`);
  if (a.status === 200) await audit(c, 'session.terminate', { type: 'session', name: id }, { user: a.body?.user, vm: a.body?.vm, tunnels: a.body?.ended });
  sendJson(c.res, a.status ?? 502, a.body);
});
route('DELETE', '/api/users/:p/sessions', 'user-sessions', async (c) => {
  const local = localOnly(c);
  await nodeOrAdmin(c, local);
  const name = c.params[0] ?? '';
  const self = c.ctx.config.nodeId;
  const mine = c.ctx.workers ? await c.ctx.workers.terminateUser(name) : await terminate(c.ctx, c.ctx.tunnels.clientTunnels(name));
  if (local) return sendJson(c.res, 200, { node: self, ended: mine });
  const f = fanout(c.ctx);
  const others = f ? await askOtherNodes<{ ended: number }>(f, 'DELETE', `/api/users/${encodeURIComponent(name)}/sessions?local=1`) : [];
  const ended = mine + others.reduce((n, a) => n + (a.body?.ended ?? 0), 0);
  const report = nodeReport(self, { ended: mine }, others, (b) => ({ ended: b.ended }));
  await audit(c, 'user.sessions.terminate', { type: 'user', name }, { tunnels: ended, complete: report.complete });
  sendJson(c.res, 200, { user: name, ended, ...report });
});

/**
 * One audit record for an admin change made by this call (audit.ts): who (the principal, or the
 * machine's administrator on the control socket), from where, what, which record. `details` must
 * never hold a secret: callers pass field names and counts.
 */
async function audit(c: Call, action: string, target: AdminAuditRecord['target'], details?: Record<string, unknown>): Promise<void> {
  const p = await c.principal();
  c.ctx.audit.record({
    kind: 'admin',
    time: new Date().toISOString(),
    node: c.ctx.config.nodeId,
    actor: p.user.name,
    via: c.local ? 'control-socket' : 'api',
    ...(c.peer !== undefined ? { forwardedBy: c.peer } : {}),
    client: c.client,
    action,
    target,
    ...(details !== undefined ? { details } : {}),
  });
}

/** The request body, at most `limit` bytes. */
async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > limit) throw new OneportError('ONEPORT_ERR_PAYLOAD_TOO_LARGE');
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of req) {
      size += (chunk as Buffer).length;
      if (size > limit) throw new OneportError('ONEPORT_ERR_PAYLOAD_TOO_LARGE');
      chunks.push(chunk as Buffer);
    }
  } catch (e) {
    // The body broke off (client gone, request timeout, bad chunk framing): the client's doing,
    // answered as a bad request if anyone is still there, never an internal error.
    if (e instanceof OneportError) throw e;
    throw new OneportError('ONEPORT_ERR_BAD_REQUEST', 'the request body ended early or was malformed', { cause: e });
  }
  return Buffer.concat(chunks);
}

/**
 * A call another node forwarded (cluster): trusted only over TLS with a node certificate; then
 * its client address header is believed. Undefined for everything else.
 */
function forwardedBy(ctx: GatewayContext, req: IncomingMessage): { node: string; client: string | undefined } | undefined {
  if (!ctx.cluster || req.headers[FORWARDED_BY_HEADER] === undefined) return undefined;
  const node = ctx.peerNode(req.socket);
  if (node === undefined) return undefined;
  const c = req.headers[CLIENT_HEADER];
  return { node, client: typeof c === 'string' && c.length <= 64 ? c : undefined };
}

async function readJson(req: IncomingMessage, limit: number): Promise<unknown> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  // Requiring JSON also stops cross-site form posts riding the session cookie.
  if (type !== 'application/json') throw new OneportError('ONEPORT_ERR_VALIDATION', 'send Content-Type: application/json');
  const text = (await readBody(req, limit)).toString('utf8');
  if (text.trim() === '') return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new OneportError('ONEPORT_ERR_VALIDATION', 'body is not valid JSON');
  }
}

/** Returns false when no route matched (the caller serves static files or 404). */
export async function handleApi(ctx: GatewayContext, req: IncomingMessage, res: ServerResponse, opts: { local: boolean }): Promise<boolean> {
  const path = pathOf(req);
  const candidates = routes.filter((r) => r.pattern.test(path));
  if (candidates.length === 0) return false;
  const r = candidates.find((x) => x.method === req.method || (x.method === 'GET' && req.method === 'HEAD'));
  const client = connInfo(req.socket)?.remoteAddress ?? req.socket.remoteAddress ?? 'local';
  let status = 200;
  res.on('error', () => undefined);
  try {
    if (!r) {
      res.setHeader('Allow', [...new Set(candidates.map((x) => x.method))].join(', '));
      throw new OneportError('ONEPORT_ERR_METHOD_NOT_ALLOWED');
    }
    const vouched = forwardedBy(ctx, req);
    if (r.leader && ctx.cluster && !ctx.cluster.isLeader()) {
      // Never a second hop: a forwarded call that finds no leader here fails, and the client retries.
      if (vouched !== undefined) throw new OneportError('ONEPORT_ERR_NOT_LEADER', undefined, { retryAfter: 1 });
      // Every directory change is an admin's: the caller proves it here before anything is sent
      // to the leader (which checks again), so no unauthenticated request crosses to it.
      if (!opts.local) {
        const p = await resolvePrincipal(ctx, req, false);
        if (!p.user.roles.includes('admin')) throw new OneportError('ONEPORT_ERR_ADMIN_ONLY');
      }
      const body = await readBody(req, ctx.config.http.maxBodyBytes);
      await forwardToLeader(ctx.leaderLink!, req, res, { local: opts.local, client, body, timeoutMs: ctx.config.http.requestTimeoutMs });
      status = res.statusCode;
      ctx.metrics.httpRequests.inc({ route: r.name, status: String(status) });
      return true;
    }
    // Path parameters arrive %-encoded; a malformed escape is a 400, not an internal error.
    const params = (r.pattern.exec(path) ?? []).slice(1).map(decodePathSegment);
    const local = opts.local || (vouched !== undefined && req.headers[ACTING_HEADER] === 'local-admin');
    let cached: Promise<Principal> | undefined;
    const principal = (): Promise<Principal> => (cached ??= resolvePrincipal(ctx, req, local));
    const call: Call = {
      ctx,
      req,
      res,
      params,
      local,
      client: vouched?.client ?? client,
      peer: vouched?.node,
      principal,
      admin: async () => {
        const p = await principal();
        if (!p.user.roles.includes('admin')) throw new OneportError('ONEPORT_ERR_ADMIN_ONLY');
        return p;
      },
      body: async <T>(schema: z.ZodType<T>) => {
        const parsed = schema.safeParse(await readJson(req, ctx.config.http.maxBodyBytes));
        if (!parsed.success) throw validationError(parsed.error);
        return parsed.data;
      },
    };
    await r.handler(call);
    status = res.statusCode;
  } catch (e) {
    const err = sendError(res, e);
    status = err.status;
    if (err.code === 'ONEPORT_ERR_INTERNAL') ctx.log.error({ err: e, path }, 'API request failed');
  }
  ctx.metrics.httpRequests.inc({ route: r?.name ?? 'unknown', status: String(status) });
  return true;
}

async function resolvePrincipal(ctx: GatewayContext, req: IncomingMessage, local: boolean): Promise<Principal> {
  if (local) return { user: LOCAL_ADMIN, viaCookie: false };
  const authz = req.headers.authorization;
  let token: string | undefined;
  let viaCookie = false;
  if (authz !== undefined) {
    const m = /^Bearer\s+(\S+)$/i.exec(authz);
    if (!m) throw new OneportError('ONEPORT_ERR_AUTH_REQUIRED', 'use Authorization: Bearer <token>');
    token = m[1];
  } else {
    token = readCookie(req.headers.cookie, SESSION_COOKIE);
    viaCookie = true;
  }
  if (!token) throw new OneportError('ONEPORT_ERR_AUTH_REQUIRED', 'log in first (POST /api/login)');
  const { user, payload } = await ctx.auth.session(token);
  return { user, session: payload, viaCookie };
}
