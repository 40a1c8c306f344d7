/**
 * Workers in cluster mode (README "Workers", "Cluster setup"): three real `oneport serve` nodes on
 * a real redis-server, each with `workers: 2` (a primary and two worker processes). The primary
 * holds what there is one of per node (the port, the lease, the membership entry, the drain); each
 * worker keeps its own Redis mirror, auth store and node-TLS peers. What must hold, each checked
 * where the connection demonstrably landed on one worker or the other (the `worker` field of the
 * log lines, `oneport_worker_connections{worker}` read before and after a connection):
 *
 * 1. one membership entry and one heartbeat per node, one leader: the cluster view (API on every
 *    worker, `oneport cluster status`) and the Redis keys list the nodes, never their workers;
 * 2. connections to a node are spread over its workers; a VM owned by another node is reached
 *    from either worker (hop); /metrics is the node's (summed over its workers);
 * 3. an admin write made through either worker of a follower or of the leader (API, control
 *    socket) lands, and every worker of every node sees it;
 * 4. a console ticket is spent once cluster-wide, whichever worker of whichever node redeems it;
 * 5. a parked `oneport.v1` session resumes through the other worker of its node and through
 *    another node, relayed to the worker holding it, every byte once; likewise an RD Gateway
 *    legacy pair whose IN request lands on another worker or node than its OUT request;
 * 6. a moved VM's tunnels are rerouted on every worker of every node;
 * 7. a worker killed with SIGKILL is replaced; the node stays one member (leader unchanged, no
 *    failover); the other worker's tunnels go on;
 * 8. SIGTERM on a node with `shutdown.moveVms` drains every worker, moves each VM exactly once,
 *    leaves the membership and exits 0; so does a node SIGTERMed as soon as it logs `listening`.
 */
import t, { type Test } from 'tap';
import http from 'node:http';
import type net from 'node:net';
import tls from 'node:tls';
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { WebSocket } from 'ws';
import { OneportChannel } from '../../web/oneport-channel.js';
import { statePaths } from '../../gateway/state.js';
import { startRedis } from '../helpers/redis.js';
import { makeCluster, adminToken, type ClusterNode, type LogLine, type TestCluster } from '../helpers/cluster.js';
import { apiCall, type ApiResponse } from '../helpers/api.js';
import { startBackend, rawRequest, connectRaw, echoRoundTrip, closedWithin, errorCode, type Backend } from '../helpers/net.js';
import { clearConnect } from '../helpers/scenario.js';
import { RdgLegacyClient } from '../helpers/rdg.js';
import { deadline, eventually } from '../helpers/wait.js';

// Budget: the .taprc's 180 s, as for the other cluster suites (30-45 s measured at load 4-8 on two cores).

const CLI = fileURLToPath(new URL('../../gateway/cli.ts', import.meta.url));
const WORKERS = 2;
const DRAIN_MS = 20_000;
const PREFIX = 'oneport:{dir}:';
const IDS = ['cw1', 'cw2', 'cw3'] as const;

let cluster: TestCluster;
let redis: Redis;
/** cw1 leads (started first, alone); cw2 and cw3 follow; cw3 drains with shutdown.moveVms. */
let nodes: ClusterNode[];
let lead: ClusterNode;
let f2: ClusterNode;
let f3: ClusterNode;
let token: string;
let echo: Backend;

t.before(async () => {
  const server = await startRedis(t);
  cluster = makeCluster(t, server.url, { workers: WORKERS, shutdown: { drainMs: DRAIN_MS, unreadyMs: 0 } });
  // The makeCluster teardown kills each node's primary; its workers too, whatever became of the IPC channel.
  t.teardown(() => {
    for (const n of nodes ?? []) {
      for (const l of n.logs) {
        if (l.event !== 'worker-started' || typeof l.pid !== 'number') continue;
        try {
          process.kill(l.pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    }
  });
  redis = new Redis(server.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await redis.connect();
  t.teardown(() => redis.quit().catch(() => undefined));
  // One at a time (nine processes on two cores), the leader first: the roles are known.
  lead = await cluster.start(IDS[0]);
  await lead.waitFor((l) => l.event === 'leader-elected', 30_000);
  f2 = await cluster.start(IDS[1]);
  f3 = await cluster.start(IDS[2], { shutdown: { drainMs: DRAIN_MS, unreadyMs: 0, moveVms: true } });
  nodes = [lead, f2, f3];
  token = await adminToken(lead);
  echo = await startBackend(t);
  await ok(api(lead, 'PUT', '/api/users/alice', { body: { password: 'alice-password-1' } }), 'alice');
  await putVm(lead, 'far', f2.id, { replica: f3.id });
  for (const n of nodes) {
    await eventually(async () => {
      const view = (await api<ClusterView>(n, 'GET', '/api/cluster')).body;
      return view.nodes.length === 3 && view.nodes.every((x) => x.state === 'up') ? true : undefined;
    }, 30_000, `3 nodes up on ${n.id}`);
  }
  await seenEverywhere('far', f2.id);
});

interface ClusterView {
  self: string;
  leader: { node: string; epoch: number } | null;
  nodes: Array<{ id: string; state: string; leader: boolean; tunnels: number | null }>;
}

// ---- talking to a node ----------------------------------------------------------------------

/** An API call on `node`'s port as the admin, on a connection closed after it (none left on a worker). */
function api<T = any>(node: ClusterNode, method: string, path: string, opts: { body?: unknown; token?: string } = {}): Promise<ApiResponse<T>> {
  return apiCall<T>(cluster.agent, `https://127.0.0.1:${node.port}`, method, path, { token: opts.token ?? token, body: opts.body, headers: { connection: 'close' }, timeoutMs: 10_000 });
}

async function ok<T>(p: Promise<ApiResponse<T>>, what: string): Promise<T> {
  const r = await p;
  if (r.status !== 200) throw new Error(`${what}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

async function putVm(node: ClusterNode, name: string, owner: string, extra: Record<string, unknown> = {}, port = echo.port): Promise<void> {
  await ok(api(node, 'PUT', `/api/vms/${name}`, { body: { node: owner, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port }], users: ['alice'], ...extra } }), `PUT /api/vms/${name}`);
}

/** Every node's mirror has VM `name` on `owner`. */
async function seenEverywhere(name: string, owner: string): Promise<void> {
  for (const n of nodes) {
    await eventually(async () => ((await api<{ node?: string }>(n, 'GET', `/api/vms/${name}`)).body.node === owner ? true : undefined), 10_000, `${name} on ${owner}, seen at ${n.id}`);
  }
}

/** HTTP over `node`'s control socket (the machine's administrator; counted on no worker). */
function control(node: ClusterNode, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: statePaths(node.state).controlSocket, path, agent: false, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`${node.id} ${path}: ${res.statusCode} ${body}`))));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error(`${node.id} ${path}: no answer`)));
    req.end();
  });
}

/** The sum of the series of `name` whose labels include `labels`; NaN when there is none. */
function metric(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = Number.NaN;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{([^}]*)\\})? (\\S+)$`, 'gm'))) {
    const have = new Map([...(m[1] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1]!, x[2]!]));
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) sum = (Number.isNaN(sum) ? 0 : sum) + Number(m[2]);
  }
  return sum;
}

/** `oneport_worker_connections` by worker id. */
async function perWorker(node: ClusterNode): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const m of (await control(node, '/metrics')).matchAll(/^oneport_worker_connections\{worker="([^"]+)"\} (\d+)$/gm)) out.set(m[1]!, Number(m[2]));
  return out;
}

/** A console ticket (and resume token) for alice, issued through `node`'s control socket. */
async function ticket(node: ClusterNode, vm: string, protocol = 'vnc'): Promise<{ ticket: string; resume: string }> {
  const admin = await node.admin();
  try {
    const r = await admin.ticket('alice', vm, protocol);
    return { ticket: String(r.ticket), resume: String(r.resume) };
  } finally {
    await admin.close();
  }
}

function since(node: ClusterNode, mark: number, pred: (l: LogLine) => boolean): LogLine[] {
  return node.logs.slice(mark).filter(pred);
}

/** The worker ids that wrote lines matching `pred` (after `mark`). */
function workersLogging(node: ClusterNode, mark: number, pred: (l: LogLine) => boolean): Set<string> {
  return new Set(since(node, mark, pred).map((l) => String(l.worker)));
}

/**
 * Connections made by `open` until one is held on each worker of `node`: which worker took each
 * is read from `oneport_worker_connections` before and after (the primary counts a connection as
 * it passes it on). Connections that landed on a worker already holding one are closed.
 */
async function onEachWorker<S extends net.Socket>(node: ClusterNode, open: () => Promise<S>): Promise<Map<string, S>> {
  const held = new Map<string, S>();
  const spare: S[] = [];
  try {
    for (let i = 0; i < 8 && held.size < WORKERS; i++) {
      const before = await perWorker(node);
      const s = await open();
      const after = await perWorker(node);
      const grew = [...after].filter(([w, n]) => n > (before.get(w) ?? 0)).map(([w]) => w);
      if (grew.length === 1 && !held.has(grew[0]!)) held.set(grew[0]!, s);
      else spare.push(s);
    }
  } finally {
    for (const s of spare) s.destroy();
  }
  if (held.size < WORKERS) {
    for (const s of held.values()) s.destroy();
    throw new Error(`${node.id}: no connection held on each of its workers (${[...held.keys()].join(', ')}; ${JSON.stringify([...(await perWorker(node))])})`);
  }
  return held;
}

interface Held {
  readonly worker: string;
  readonly socket: net.Socket;
}

/** A CONNECT tunnel to `vm` entering at `node` on each of its workers, each checked with an echo. */
async function tunnelOnEachWorker(t: Test, node: ClusterNode, vm: string): Promise<Held[]> {
  const held = await onEachWorker(node, async () => {
    const r = await rawRequest(node.port, clearConnect((await ticket(node, vm)).ticket, vm));
    if (r.status !== 200) throw new Error(`${node.id}: CONNECT ${vm}: ${r.status} ${r.body}`);
    return r.socket;
  });
  const out = [...held].map(([worker, socket]) => ({ worker, socket }));
  for (const h of out) {
    const data = Buffer.from(`${vm} via ${node.id} worker ${h.worker}`);
    t.same(await echoRoundTrip(h.socket, data), data, `a tunnel to ${vm} through ${node.id}'s worker ${h.worker} carries bytes`);
  }
  return out;
}

/**
 * Idle connections (not a byte sent: held in detection, `detect.timeoutMs`) until each worker of
 * `node` holds as many connections as the other, so that two connections made at once go to one
 * worker each. Other nodes' keep-alive connections (to the leader, say) tilt the balance otherwise.
 */
async function evenOut(node: ClusterNode): Promise<net.Socket[]> {
  const ballast: net.Socket[] = [];
  for (let i = 0; i < 32; i++) {
    const c = [...(await perWorker(node)).values()];
    if (c.length === WORKERS && Math.max(...c) === Math.min(...c)) return ballast;
    ballast.push(await connectRaw(node.port, { localAddress: '127.0.0.99' }));
  }
  for (const b of ballast) b.destroy();
  throw new Error(`${node.id}: could not even out its workers (${JSON.stringify([...(await perWorker(node))])})`);
}

interface Pinned {
  readonly socket: tls.TLSSocket;
  call<T = any>(method: string, path: string, body?: unknown): Promise<{ status: number; headers: Record<string, string>; body: T }>;
}

/** A TLS connection to `node`'s port, kept open: HTTP/1.1 requests on it are all served by one worker. */
async function pin(node: ClusterNode): Promise<tls.TLSSocket> {
  const socket = tls.connect({ host: '127.0.0.1', port: node.port, ca: cluster.ca.cert, servername: 'localhost' });
  socket.on('error', () => undefined);
  await Promise.race([once(socket, 'secureConnect'), deadline(10_000, `TLS to ${node.id}`)]);
  return socket;
}

/**
 * The body of an HTTP/1.1 answer from the bytes after its head: by Content-Length, or chunked (a
 * call forwarded to the leader is answered as it streams back); undefined while incomplete.
 */
function messageBody(rest: Buffer, headers: Record<string, string>): Buffer | Error | undefined {
  if (headers['transfer-encoding']?.toLowerCase() === 'chunked') {
    const chunks: Buffer[] = [];
    for (let at = 0; ; ) {
      const eol = rest.indexOf('\r\n', at);
      if (eol < 0) return undefined;
      const size = Number.parseInt(rest.subarray(at, eol).toString('latin1'), 16);
      if (Number.isNaN(size)) return new Error('a bad chunk size');
      if (rest.length < eol + 2 + size + 2) return undefined;
      if (size === 0) return Buffer.concat(chunks);
      chunks.push(rest.subarray(eol + 2, eol + 2 + size));
      at = eol + 2 + size + 2;
    }
  }
  const length = Number(headers['content-length'] ?? 'NaN');
  if (!Number.isInteger(length)) return new Error('neither Content-Length nor chunked');
  return rest.length < length ? undefined : rest.subarray(0, length);
}

/** HTTP/1.1 requests, one at a time, on `socket`. */
function pinned(socket: tls.TLSSocket): Pinned {
  let queue: Promise<unknown> = Promise.resolve();
  const call = <T>(method: string, path: string, body?: unknown): Promise<{ status: number; headers: Record<string, string>; body: T }> =>
    new Promise((resolve, reject) => {
      const payload = body === undefined ? '' : JSON.stringify(body);
      let buf = Buffer.alloc(0);
      const done = (err: Error | undefined, value?: { status: number; headers: Record<string, string>; body: T }): void => {
        clearTimeout(timer);
        socket.removeListener('data', onData);
        socket.removeListener('close', onClose);
        if (err) reject(err);
        else resolve(value!);
      };
      const onData = (d: Buffer): void => {
        buf = Buffer.concat([buf, d]);
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
        const headers = Object.fromEntries(lines.slice(1).map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
        const body = messageBody(buf.subarray(end + 4), headers);
        if (body === undefined) return;
        if (body instanceof Error) return done(new Error(`${method} ${path}: ${body.message} in ${JSON.stringify(lines)}`));
        const text = body.toString('utf8');
        let parsed: unknown = text;
        try {
          parsed = JSON.parse(text);
        } catch {
          // not JSON: the text
        }
        done(undefined, { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(lines[0] ?? '')?.[1] ?? 0), headers, body: parsed as T });
      };
      const onClose = (): void => done(new Error(`${method} ${path}: the pinned connection closed`));
      const timer = setTimeout(() => done(new Error(`${method} ${path}: no answer within 10 s`)), 10_000);
      socket.on('data', onData);
      socket.once('close', onClose);
      const head = [`${method} ${path} HTTP/1.1`, 'Host: localhost', `Authorization: Bearer ${token}`];
      if (payload) head.push('Content-Type: application/json', `Content-Length: ${Buffer.byteLength(payload)}`);
      socket.write(`${head.join('\r\n')}\r\n\r\n${payload}`);
    });
  return {
    socket,
    call: <T>(method: string, path: string, body?: unknown) => {
      const next = queue.then(() => call<T>(method, path, body));
      queue = next.catch(() => undefined);
      return next;
    },
  };
}

/** An API connection held on each worker of `node` (closed at the end of the test). */
async function apiOnEachWorker(t: Test, node: ClusterNode): Promise<Map<string, Pinned>> {
  const held = await onEachWorker(node, () => pin(node));
  t.teardown(() => {
    for (const s of held.values()) s.destroy();
  });
  return new Map([...held].map(([w, s]) => [w, pinned(s)]));
}

/** The `worker-started` line of worker `worker` on `node`. */
function startedLine(node: ClusterNode, worker: string): LogLine {
  const l = node.logs.filter((x) => x.event === 'worker-started' && String(x.worker) === worker).pop();
  if (!l) throw new Error(`${node.id}: no worker-started line for worker ${worker}`);
  return l;
}

/** Events that say a node was taken for dead or the leadership moved. */
const UPHEAVAL = new Set(['node-process-gone', 'node-failed', 'vm-failover', 'leader-elected', 'leader-changed', 'leader-stepped-down', 'leader-abdicated']);

async function redisMembership(): Promise<{ alive: string[]; members: string[]; leader: string | null }> {
  const alive = (await redis.keys(`${PREFIX}alive:*`)).map((k) => k.slice(`${PREFIX}alive:`.length)).sort();
  const members = (await redis.hkeys(`${PREFIX}nodes`)).sort();
  return { alive, members, leader: await redis.get(`${PREFIX}leader`) };
}

// ---- 1 ----------------------------------------------------------------------------------------

t.test('one membership entry and one heartbeat per node, one leader: the nodes, never their workers', async (t) => {
  for (const n of nodes) {
    const listening = n.logs.filter((l) => l.event === 'listening');
    t.equal(listening.length, 1, `${n.id}: the port is bound once (by the primary)`);
    t.equal(listening[0]?.workers, WORKERS, `${n.id}: listening with workers: ${WORKERS}`);
    const started = n.logs.filter((l) => l.event === 'worker-started');
    t.equal(started.length, WORKERS, `${n.id}: ${WORKERS} workers started`);
    t.equal(new Set(started.map((l) => l.pid)).size, WORKERS, `${n.id}: in ${WORKERS} processes`);
  }
  const elected = nodes.flatMap((n) => n.logs.filter((l) => l.event === 'leader-elected').map((l) => ({ node: n.id, worker: l.worker, epoch: l.epoch })));
  t.equal(elected.length, 1, `one election in the whole cluster (${JSON.stringify(elected)})`);
  t.equal(elected[0]?.node, lead.id, `won by ${lead.id}`);
  t.not(typeof elected[0]?.worker, 'number', 'by its primary, not by a worker');
  const epoch = Number(elected[0]?.epoch);

  const r = await redisMembership();
  t.same(r.alive, [...IDS], `Redis: one alive: key per node (${r.alive.join(', ')})`);
  t.same(r.members, [...IDS], `Redis: one member entry per node (${r.members.join(', ')})`);
  t.equal(r.leader, `${lead.id}|${epoch}`, 'Redis: the lease is the leader node\'s, at the epoch it was elected with');

  // The view every worker of every node gives (from its primary).
  for (const n of nodes) {
    const pins = await apiOnEachWorker(t, n);
    await Promise.all(
      [...pins].map(async ([w, p]) => {
        const view = await p.call<ClusterView>('GET', '/api/cluster');
        t.equal(view.status, 200, `${n.id} worker ${w}: GET /api/cluster`);
        t.same(view.body.nodes.map((x) => x.id).sort(), [...IDS], `${n.id} worker ${w}: exactly the three nodes`);
        t.ok(view.body.nodes.every((x) => x.state === 'up'), `${n.id} worker ${w}: all up`);
        t.match(view.body.leader, { node: lead.id, epoch }, `${n.id} worker ${w}: ${lead.id} leads, epoch ${epoch}`);
        t.equal(view.body.nodes.filter((x) => x.leader).length, 1, `${n.id} worker ${w}: one node marked leader`);
        t.equal(view.body.self, n.id, `${n.id} worker ${w}: self is the node`);
      }),
    );
    for (const p of pins.values()) p.socket.destroy();
  }
  const out = await cli(f3.state, ['cluster', 'status', '--json']);
  const status = JSON.parse(out) as ClusterView;
  t.same(status.nodes.map((x) => x.id).sort(), [...IDS], '`oneport cluster status` (control socket, a worker) lists the three nodes');
  t.equal(status.leader?.node, lead.id, '`oneport cluster status`: the leader');
  for (const n of nodes) {
    const text = await control(n, '/metrics');
    t.equal(metric(text, 'oneport_workers'), WORKERS, `${n.id} /metrics: oneport_workers ${WORKERS}`);
    t.equal(metric(text, 'oneport_cluster_nodes'), 3, `${n.id} /metrics: oneport_cluster_nodes 3 (not a sum over the workers)`);
    t.equal(metric(text, 'oneport_cluster_leader'), n === lead ? 1 : 0, `${n.id} /metrics: oneport_cluster_leader`);
    t.equal(metric(text, 'oneport_cluster_epoch'), epoch, `${n.id} /metrics: oneport_cluster_epoch ${epoch}`);
  }
});

// ---- 2 ----------------------------------------------------------------------------------------

t.test("connections are spread over a node's workers; a VM on another node is reached from either (hop); /metrics is the node's", async (t) => {
  const marks = nodes.map((n) => n.logs.length);
  // far is f2's: tunnels entering the leader hop there.
  const tunnels = await tunnelOnEachWorker(t, lead, 'far');
  const more = await tunnelOnEachWorker(t, lead, 'far');
  const all = [...tunnels, ...more];
  const counts = await perWorker(lead);
  t.ok([...counts.values()].every((n) => n >= 2), `${lead.id}: two tunnels on each worker (${JSON.stringify([...counts])})`);
  const text = await control(lead, '/metrics');
  t.equal(metric(text, 'oneport_workers'), WORKERS, `${lead.id} /metrics: oneport_workers ${WORKERS}`);
  t.equal(metric(text, 'oneport_tunnels_active', { protocol: 'vnc', transport: 'connect' }), 4, `${lead.id} /metrics: the four tunnels, summed over the workers`);
  const owner = await control(f2, '/metrics');
  t.equal(metric(owner, 'oneport_tunnels_active', { protocol: 'vnc', transport: 'hop' }), 4, `${f2.id} /metrics: the four hops, summed over its workers`);
  const hopsAt = await perWorker(f2);
  t.ok([...hopsAt.values()].every((n) => n >= 1), `${f2.id}: the hops arriving are spread over its workers too (${JSON.stringify([...hopsAt])})`);
  // The heartbeat is the node's: every worker's tunnels.
  const beat = await eventually(async () => {
    const view = (await api<ClusterView>(f3, 'GET', '/api/cluster')).body;
    return view.nodes.find((x) => x.id === lead.id && x.tunnels === 4);
  }, 15_000, `${lead.id}'s heartbeat counting its 4 tunnels, seen at ${f3.id}`);
  t.equal(beat.tunnels, 4, `${lead.id}'s heartbeat says 4 tunnels (both workers')`);

  const closed = all.map((h) => closedWithin(h.socket, 15_000));
  for (const h of all) h.socket.end();
  await Promise.all(closed);
  const lines = await eventually(() => {
    const ls = since(lead, marks[0]!, (l) => l.event === 'tunnel' && l.vm === 'far' && l.transport === 'connect');
    return ls.length >= 4 ? ls : undefined;
  }, 15_000, 'four tunnel lines');
  t.same([...new Set(lines.map((l) => String(l.worker)))].sort(), [...new Set(all.map((h) => h.worker))].sort(), `${lead.id}: the tunnel lines name both workers`);
  t.ok(lines.every((l) => l.consoleNode === f2.id), `each reached the console through ${f2.id}`);
  const hops = await eventually(() => {
    const ls = since(f2, marks[1]!, (l) => l.event === 'tunnel' && l.vm === 'far' && l.transport === 'hop');
    return ls.length >= 4 ? ls : undefined;
  }, 15_000, `four hop lines on ${f2.id}`);
  t.equal(new Set(hops.map((l) => String(l.worker))).size, WORKERS, `${f2.id}: the hops were served by both its workers`);
});

// ---- 3 ----------------------------------------------------------------------------------------

t.test('an admin write through either worker of a follower or of the leader lands and is seen by every worker of every node', async (t) => {
  const vms: string[] = [];
  const users: string[] = [];
  for (const node of [f2, lead]) {
    const pins = await apiOnEachWorker(t, node);
    for (const [w, p] of pins) {
      const vm = `vm-${node.id}-w${w}`;
      const r = await p.call('PUT', `/api/vms/${vm}`, { node: f3.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port }], users: ['alice'] });
      t.equal(r.status, 200, `PUT ${vm} through ${node.id}'s worker ${w} (${JSON.stringify(r.body)})`);
      if (node !== lead) t.equal(r.headers['oneport-leader'], lead.id, `forwarded to the leader ${lead.id}`);
      const user = `u-${node.id}-w${w}`;
      const u = await p.call('PUT', `/api/users/${user}`, { password: 'user-password-1' });
      t.equal(u.status, 200, `PUT /api/users/${user} through ${node.id}'s worker ${w} (${JSON.stringify(u.body)})`);
      vms.push(vm);
      users.push(user);
    }
    for (const p of pins.values()) p.socket.destroy();
    // And through the control socket (passed to one worker or the other).
    const admin = await node.admin();
    try {
      await admin.putVm({ name: `vm-${node.id}-control`, node: f3.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: echo.port }], users: ['alice'] } as Parameters<typeof admin.putVm>[0]);
      await admin.putUser(`u-${node.id}-control`, { password: 'user-password-1' });
    } finally {
      await admin.close();
    }
    vms.push(`vm-${node.id}-control`);
    users.push(`u-${node.id}-control`);
    t.pass(`VM and user written through ${node.id}'s control socket`);
  }
  for (const n of nodes) {
    const pins = await apiOnEachWorker(t, n);
    await Promise.all(
      [...pins].map(async ([w, p]) => {
        const missing = await eventually(async () => {
          const v = (await p.call<Array<{ name: string; node: string }>>('GET', '/api/vms')).body;
          const u = (await p.call<Array<{ name: string }>>('GET', '/api/users')).body;
          const gone = [...vms.filter((x) => !v.some((y) => y.name === x && y.node === f3.id)), ...users.filter((x) => !u.some((y) => y.name === x))];
          return gone.length === 0 ? gone : undefined;
        }, 10_000, `${n.id} worker ${w} seeing the ${vms.length} VMs and ${users.length} users`).catch((e: Error) => [e.message]);
        t.same(missing, [], `${n.id} worker ${w} sees every VM and user written`);
      }),
    );
    for (const p of pins.values()) p.socket.destroy();
  }
});

// ---- 4 ----------------------------------------------------------------------------------------

t.test('a console ticket is spent once cluster-wide, whichever worker of whichever node redeems it', async (t) => {
  // Every worker of every node must have refused a ticket another worker redeemed.
  const refusedOn = new Set<string>();
  const everyWorker = async (): Promise<Set<string>> => new Set((await Promise.all(nodes.map(async (n) => [...(await perWorker(n)).keys()].map((w) => `${n.id}/${w}`)))).flat());
  const all = await everyWorker();
  for (let round = 1; round <= 4 && [...all].some((w) => !refusedOn.has(w)); round++) {
    const tk = (await ticket(nodes[round % 3]!, 'far')).ticket;
    const ballast = (await Promise.all(nodes.map((n) => evenOut(n)))).flat();
    const marks = nodes.map((n) => n.logs.length);
    // Two at each node at once (the second goes to the worker without the first), each from its own address.
    const attempts = nodes.flatMap((n, i) => [0, 1].map((j) => ({ node: n, client: `127.0.0.${10 * round + 2 * i + j}` })));
    const results = await Promise.all(attempts.map((a) => rawRequest(a.node.port, clearConnect(tk, 'far'), { localAddress: a.client }).then((r) => ({ ...a, r }))));
    for (const b of ballast) b.destroy();
    const won = results.filter((x) => x.r.status === 200);
    t.equal(won.length, 1, `round ${round}: one of six redemptions at once succeeds (${results.map((x) => `${x.node.id}:${x.r.status}`).join(' ')})`);
    for (const x of results.filter((y) => y.r.status !== 200)) t.equal(errorCode(x.r.body), 'ONEPORT_ERR_TICKET_INVALID', `round ${round}: ${x.node.id} from ${x.client}: refused as spent`);
    for (const w of won) w.r.socket.destroy();
    // Who served each attempt: the refusal lines, and the winner's tunnel line once closed.
    const served = await Promise.all(
      results.map(async (x) => {
        const i = nodes.indexOf(x.node);
        const l = await x.node.waitFor((l) => (l.event === 'tunnel-refused' || l.event === 'tunnel') && l.client === x.client, 15_000, { after: marks[i] });
        return { ...x, worker: `${x.node.id}/${String(l.worker)}` };
      }),
    );
    const winner = served.find((x) => x.r.status === 200);
    for (const x of served) if (x !== winner && x.worker !== winner?.worker) refusedOn.add(x.worker);
    t.comment(`round ${round}: redeemed by ${winner?.worker}; refused by ${served.filter((x) => x !== winner).map((x) => x.worker).join(', ')}`);
  }
  t.same([...all].filter((w) => !refusedOn.has(w)), [], `every worker of every node refused a ticket spent on another worker (${[...refusedOn].sort().join(', ')})`);
});

// ---- 5 ----------------------------------------------------------------------------------------

t.test('a parked oneport.v1 session resumes through the other worker of its node and through another node, every byte once', async (t) => {
  const desk = await startBackend(t);
  await putVm(lead, 'keep', f2.id, {}, desk.port);
  await seenEverywhere('keep', f2.id);
  const owner = f2;
  const issued = await ticket(owner, 'keep');
  const statuses: Array<{ state: string; attempt?: number }> = [];
  const ch = new OneportChannel(`wss://127.0.0.1:${owner.port}/tunnel/keep/vnc?ticket=${issued.ticket}`, {
    resume: issued.resume,
    WebSocket: WebSocket as never,
    wsOptions: { ca: cluster.ca.cert },
    onStatus: (s) => statuses.push(s),
  });
  t.teardown(() => ch.close());
  const sent: Buffer[] = [];
  const got: Buffer[] = [];
  let gotBytes = 0;
  const waiters: Array<() => void> = [];
  ch.onmessage = (ev) => {
    const b = Buffer.from(ev.data);
    got.push(b);
    gotBytes += b.length;
    for (const w of waiters.splice(0)) w();
  };
  const say = (n: number): void => {
    const b = randomBytes(n);
    sent.push(b);
    ch.send(b);
  };
  const allBack = async (what: string): Promise<void> => {
    const want = sent.reduce((a, b) => a + b.length, 0);
    const wait = (async () => {
      while (gotBytes < want) await new Promise<void>((r) => waiters.push(r));
    })();
    await Promise.race([wait, deadline(30_000, what)]);
  };
  await Promise.race([new Promise<void>((r) => (ch.onopen = () => r())), deadline(30_000, 'channel open')]);
  say(64 * 1024);
  await allBack('the first bytes echoed');
  const session = ch.session!;
  t.equal(await eventually(async () => (await redis.get(`${PREFIX}session:${session}`)) ?? undefined, 10_000, 'the session recorded in Redis'), owner.id, `Redis records the session by node (${owner.id}), not by worker`);

  /** Cut the leg (as a network would), send while it is down, resume through `via`; returns the log marks. */
  const cutAndResume = async (via: ClusterNode, what: string): Promise<number[]> => {
    const marks = nodes.map((n) => n.logs.length);
    const from = statuses.length;
    (ch as unknown as { url: string }).url = `wss://127.0.0.1:${via.port}/tunnel/keep/vnc`;
    (ch.leg as { _socket?: net.Socket })._socket?.destroy();
    say(48 * 1024);
    await allBack(`${what}: the bytes sent while the leg was down, echoed`);
    say(16 * 1024);
    await allBack(`${what}: bytes after the resume`);
    const states = statuses.slice(from).map((s) => `${s.state}${s.attempt !== undefined ? `#${s.attempt}` : ''}`);
    t.same(states, ['resuming#1', 'resumed#0'], `${what}: resumed at the first attempt (${states.join(' ')})`);
    return marks;
  };

  // Through the owner again: the parked session holds a count on its worker, so the leg lands on
  // the other one, which relays it. Should it land on the holder itself, cut again.
  let holder: string | undefined;
  let relayedBy: string | undefined;
  for (let i = 1; i <= 3 && relayedBy === undefined; i++) {
    const marks = await cutAndResume(owner, `resume ${i} through ${owner.id}`);
    const j = nodes.indexOf(owner);
    const resumed = await owner.waitFor((l) => l.event === 'session-resumed' && l.vm === 'keep', 15_000, { after: marks[j] });
    holder ??= String(resumed.worker);
    t.equal(String(resumed.worker), holder, `resume ${i}: the session stays on worker ${holder}`);
    const relayed = since(owner, marks[j]!, (l) => l.event === 'session-relayed' && l.vm === 'keep');
    if (relayed.length > 0) {
      relayedBy = String(relayed[0]!.worker);
      t.not(relayedBy, holder, `resume ${i}: the leg reached worker ${relayedBy}, which relayed it to worker ${holder}, the holder`);
    } else t.comment(`resume ${i}: the leg landed on the holder itself (worker ${holder}); again`);
  }
  t.ok(relayedBy !== undefined, `a resume landed on the other worker of ${owner.id} and was relayed`);

  // Through another node: relayed to the owner node, there to the holding worker.
  const other = lead;
  const marks = await cutAndResume(other, `resume through ${other.id}`);
  const sentOn = await other.waitFor((l) => l.event === 'session-relayed' && l.vm === 'keep', 15_000, { after: marks[nodes.indexOf(other)] });
  t.equal(sentOn.holder, owner.id, `${other.id} relayed the leg to the node holding the session, ${owner.id}`);
  const resumed = await owner.waitFor((l) => l.event === 'session-resumed' && l.vm === 'keep', 15_000, { after: marks[nodes.indexOf(owner)] });
  t.equal(String(resumed.worker), holder, `${owner.id}'s worker ${holder} resumed it: the same holder`);
  const within = since(owner, marks[nodes.indexOf(owner)]!, (l) => l.event === 'session-relayed' && l.vm === 'keep');
  t.comment(within.length > 0 ? `at ${owner.id}, worker ${String(within[0]!.worker)} took the relay and passed it on to worker ${holder}` : `at ${owner.id}, the relay landed on worker ${holder} itself`);

  t.same(Buffer.concat(got), Buffer.concat(sent), `every byte came back once, in order (${gotBytes} bytes)`);
  t.equal(desk.accepted, 1, 'the console saw one connection for the whole session');
  for (const n of nodes) {
    const bad = n.logs.filter((l) => ['resume-refused', 'resume-failed', 'session-relay-failed'].includes(String(l.event)));
    t.same(bad.map((l) => `${String(l.event)}@${String(l.worker)}: ${String(l.msg)}`), [], `${n.id}: no resume refused or failed`);
  }
  ch.close();
});

// ---- 5b ---------------------------------------------------------------------------------------

t.test("an RD Gateway legacy pair whose IN request lands on the other worker, or on another node, pairs with its OUT", async (t) => {
  await putVm(lead, 'win', f2.id, { endpoints: [{ protocol: 'rdp', host: '127.0.0.1', port: echo.port }] });
  await seenEverywhere('win', f2.id);
  const cases = [[f2, f2], [f2, lead], [lead, f3]] as const;
  for (const [i, [out, inn]] of cases.entries()) {
    const marks = nodes.map((n) => n.logs.length);
    // Even: the OUT request then holds one worker busier, and an IN request to the same node goes to the other.
    const ballast = await evenOut(out);
    const c = await RdgLegacyClient.connect([out.port, inn.port], cluster.ca.cert, `c0ffee0${i}-0000-0000-0000-000000000000`);
    for (const b of ballast) b.destroy();
    t.teardown(() => c.destroy());
    t.match(await c.open((await ticket(out, 'win', 'rdp')).ticket, 'win'), { type: 'channel-response', errorCode: 0 }, `OUT on ${out.id}, IN on ${inn.id}: channel opened`);
    const data = randomBytes(100_000);
    for (let at = 0; at < data.length; at += 0xffff) c.send({ type: 'data', data: data.subarray(at, at + 0xffff) });
    t.same(await c.readData(data.length), data, `OUT on ${out.id}, IN on ${inn.id}: data both ways`);
    c.send({ type: 'close-channel', statusCode: 0 });
    await c.closed();
    const tunnel = await out.waitFor((l) => l.event === 'tunnel' && l.vm === 'win' && l.transport === 'rdg-http', 15_000, { after: marks[nodes.indexOf(out)] });
    const holder = String(tunnel.worker);
    const relayed = since(inn, marks[nodes.indexOf(inn)]!, (l) => l.event === 'rdg-relayed');
    if (out === inn) {
      t.equal(relayed.length, 1, `${out.id}: the IN request was relayed once (${relayed.map((l) => `${String(l.worker)}->${String(l.holder)}`).join(', ')})`);
      t.not(String(relayed[0]?.worker), holder, `${out.id}: it reached worker ${String(relayed[0]?.worker)}, which relayed it to worker ${holder}, holding the OUT request and the tunnel`);
    } else {
      t.equal(relayed[0]?.node, out.id, `${inn.id} relayed the IN request to ${out.id}`);
      const within = since(out, marks[nodes.indexOf(out)]!, (l) => l.event === 'rdg-relayed');
      t.ok(within.every((l) => String(l.worker) !== holder), `at ${out.id}, the tunnel is worker ${holder}'s${within.length > 0 ? `; worker ${String(within[0]!.worker)} took the relay and passed it on` : ' (the relay landed on it)'}`);
    }
  }
});

// ---- 6 ----------------------------------------------------------------------------------------

t.test("a moved VM's tunnels are rerouted on every worker of every node", async (t) => {
  await putVm(lead, 'mv', f2.id);
  await seenEverywhere('mv', f2.id);
  const held = new Map<ClusterNode, Held[]>();
  // The owner's first (its own workers, before the hops from the others arrive there).
  for (const n of [f2, lead, f3]) held.set(n, await tunnelOnEachWorker(t, n, 'mv'));
  const closed = [...held.values()].flat().map((h) => closedWithin(h.socket, 15_000));
  const marks = nodes.map((n) => n.logs.length);
  const before = (await api<{ epoch: number }>(lead, 'GET', '/api/vms/mv')).body.epoch;
  const moved = await ok(api<{ node: string; epoch: number }>(f3, 'POST', '/api/vms/mv/move', { body: { node: f3.id } }), 'move mv');
  t.equal(moved.node, f3.id, `mv moved to ${f3.id} (asked at ${f3.id}, executed by the leader)`);
  t.equal(moved.epoch, before + 1, 'its epoch bumped once');
  await Promise.all(closed);
  t.pass('all six tunnels were closed');
  // Their close lines are written once both legs ended: awaited, so that later lines are new tunnels'.
  for (const [n, hs] of held) {
    const ends = await eventually(() => {
      const ls = since(n, marks[nodes.indexOf(n)]!, (l) => l.event === 'tunnel' && l.vm === 'mv' && l.transport === 'connect' && l.closeReason === 'rerouted');
      return ls.length >= hs.length ? ls : undefined;
    }, 15_000, `${n.id}: the rerouted tunnels' lines`);
    t.same(ends.map((l) => String(l.worker)).sort(), hs.map((h) => h.worker).sort(), `${n.id}: each worker's tunnel closed as rerouted`);
  }
  for (const [n, hs] of held) {
    const i = nodes.indexOf(n);
    const rerouted = await eventually(() => {
      const ws = workersLogging(n, marks[i]!, (l) => l.event === 'tunnels-rerouted' && l.vm === 'mv');
      return ws.size >= WORKERS ? ws : undefined;
    }, 15_000, `${n.id}: tunnels-rerouted from both workers`).catch(() => workersLogging(n, marks[i]!, (l) => l.event === 'tunnels-rerouted' && l.vm === 'mv'));
    t.same([...rerouted].sort(), hs.map((h) => h.worker).sort(), `${n.id}: each worker rerouted its own (${[...rerouted].join(', ')})`);
  }
  // New tunnels, on every worker of every node, go to the new owner.
  for (const n of nodes) {
    const mark = n.logs.length;
    const again = await tunnelOnEachWorker(t, n, 'mv');
    for (const h of again) h.socket.destroy();
    const lines = await eventually(() => {
      const ls = since(n, mark, (l) => l.event === 'tunnel' && l.vm === 'mv' && l.transport === 'connect');
      return ls.length >= WORKERS ? ls : undefined;
    }, 15_000, `${n.id}: tunnel lines`);
    t.ok(lines.every((l) => l.consoleNode === f3.id), `${n.id}: both workers route mv to ${f3.id} now (${lines.map((l) => `${String(l.worker)}->${String(l.consoleNode)}`).join(', ')})`);
  }
});

// ---- 7 ----------------------------------------------------------------------------------------

t.test("a worker killed with SIGKILL is replaced; the node stays one member; the other worker's tunnels go on", async (t) => {
  // A follower that owns VMs (the process watch, the failover), then the leader (the lease).
  for (const node of [f2, lead]) {
    const [survivor, victim] = await tunnelOnEachWorker(t, node, 'far');
    const pid = Number(startedLine(node, victim!.worker).pid);
    const before = await redisMembership();
    const farBefore = (await api<{ node: string; epoch: number }>(lead, 'GET', '/api/vms/far')).body;
    const marks = nodes.map((n) => n.logs.length);
    const i = nodes.indexOf(node);
    const gone = closedWithin(victim!.socket, 20_000);
    process.kill(pid, 'SIGKILL');
    await node.waitFor((l) => l.event === 'worker-died' && String(l.worker) === victim!.worker, 20_000, { after: marks[i] });
    await gone;
    t.pass(`${node.id}: worker ${victim!.worker} (pid ${pid}) died, its tunnel with it`);
    const data = Buffer.from('still here');
    t.same(await echoRoundTrip(survivor!.socket, data), data, `${node.id}: worker ${survivor!.worker}'s tunnel goes on`);
    const replacement = await node.waitFor((l) => l.event === 'worker-started', 60_000, { after: marks[i] });
    t.not(String(replacement.worker), victim!.worker, `${node.id}: replaced by worker ${String(replacement.worker)}`);
    const counts = await eventually(async () => {
      const c = await perWorker(node);
      return c.size === WORKERS && c.has(String(replacement.worker)) ? c : undefined;
    }, 20_000, `${node.id}: two workers again`);
    t.notOk(counts.has(victim!.worker), `${node.id}: the dead worker is gone from /metrics (${JSON.stringify([...counts])})`);
    t.equal(metric(await control(node, '/metrics'), 'oneport_workers'), WORKERS, `${node.id} /metrics: oneport_workers ${WORKERS}`);

    // Still one member, up; the same leader; nobody failed over.
    for (const n of nodes) {
      const view = (await api<ClusterView>(n, 'GET', '/api/cluster')).body;
      t.same(view.nodes.map((x) => `${x.id}:${x.state}`).sort(), IDS.map((id) => `${id}:up`), `${n.id} sees the three nodes up`);
      t.equal(view.leader?.node, lead.id, `${n.id}: ${lead.id} still leads`);
    }
    t.same(await redisMembership(), before, 'Redis: the same alive keys, member entries and lease');
    const farAfter = (await api<{ node: string; epoch: number }>(lead, 'GET', '/api/vms/far')).body;
    t.same({ node: farAfter.node, epoch: farAfter.epoch }, { node: farBefore.node, epoch: farBefore.epoch }, `far stays on ${farBefore.node}, same epoch`);
    for (const n of nodes) {
      const upheaval = since(n, marks[nodes.indexOf(n)]!, (l) => UPHEAVAL.has(String(l.event)));
      t.same(upheaval.map((l) => `${String(l.event)} ${JSON.stringify(l)}`), [], `${n.id}: no failover, no election`);
    }
    const again = await tunnelOnEachWorker(t, node, 'far');
    t.ok(again.some((h) => h.worker === String(replacement.worker)), `${node.id}: the replacement serves tunnels`);
    for (const h of [...again, survivor!]) h.socket.destroy();
  }
});

// ---- 8 ----------------------------------------------------------------------------------------

t.test('SIGTERM on a node with workers and shutdown.moveVms: drains, moves each VM once, leaves, exits 0', async (t) => {
  const node = f3;
  await putVm(lead, 'd1', node.id, { replica: f2.id });
  await putVm(lead, 'd2', node.id, { replica: f2.id });
  await seenEverywhere('d2', node.id);
  const owned = (await api<Array<{ name: string; node: string; epoch: number }>>(lead, 'GET', '/api/vms')).body.filter((v) => v.node === node.id);
  t.ok(owned.length >= 3, `${node.id} owns ${owned.map((v) => v.name).join(', ')}`);
  const tunnels = await tunnelOnEachWorker(t, node, 'd1');
  // A tunnel entering elsewhere, hopping to the drained node.
  const hop = await rawRequest(lead.port, clearConnect((await ticket(lead, 'd2')).ticket, 'd2'));
  t.equal(hop.status, 200, `a tunnel to d2 entering at ${lead.id}`);
  const workers = [...(await perWorker(node)).keys()];
  const closed = [...tunnels.map((h) => h.socket), hop.socket].map((s) => closedWithin(s, DRAIN_MS + 10_000));
  const marks = nodes.map((n) => n.logs.length);
  const i = nodes.indexOf(node);
  node.kill('SIGTERM');
  await Promise.all(closed);
  t.pass('every tunnel through or to the node was closed');
  t.equal(await Promise.race([node.exited(), deadline(DRAIN_MS + 20_000, `${node.id} exiting`)]), 0, `${node.id} exits 0`);

  const drained = workersLogging(node, marks[i]!, (l) => l.event === 'drain-started' && typeof l.worker === 'number');
  t.same([...drained].sort(), workers.sort(), `both workers drained (${[...drained].join(', ')})`);
  const movedLines = since(node, marks[i]!, (l) => l.event === 'drain-vm-moved');
  t.comment(`drain-vm-moved: ${movedLines.map((l) => `${String(l.vm)}->${String(l.node)}@${String(l.worker)}`).join(', ')}`);
  const notMoved = since(node, marks[i]!, (l) => l.event === 'drain-vm-not-moved');
  t.same(notMoved.map((l) => `${String(l.vm)}@${String(l.worker)}: ${String(l.err ?? l.msg)}`), [], 'no move attempted twice or failed');
  const after = (await api<Array<{ name: string; node: string; epoch: number }>>(lead, 'GET', '/api/vms')).body;
  for (const vm of owned) {
    t.equal(movedLines.filter((l) => l.vm === vm.name).length, 1, `${vm.name}: one drain-vm-moved line`);
    const now = after.find((v) => v.name === vm.name);
    t.equal(now?.epoch, vm.epoch + 1, `${vm.name}: epoch ${vm.epoch} -> ${String(now?.epoch)} (moved once)`);
    t.not(now?.node, node.id, `${vm.name}: now on ${String(now?.node)}`);
  }
  // It left on purpose: no failover, its entry says left.
  for (const n of [lead, f2]) {
    const state = await eventually(async () => {
      const view = (await api<ClusterView>(n, 'GET', '/api/cluster')).body;
      return view.nodes.find((x) => x.id === node.id && x.state !== 'up')?.state;
    }, 15_000, `${node.id} no longer up at ${n.id}`);
    t.equal(state, 'left', `${n.id} sees ${node.id} as left`);
  }
  const r = await eventually(async () => {
    const m = await redisMembership();
    return m.alive.includes(node.id) ? undefined : m;
  }, 15_000, `alive:${node.id} gone`);
  t.same(r.alive, [lead.id, f2.id], `Redis: alive keys of the two nodes left (${r.alive.join(', ')})`);
  for (const n of [lead, f2]) {
    const lines = since(n, marks[nodes.indexOf(n)]!, (l) => UPHEAVAL.has(String(l.event)));
    const upheaval = lines.filter((l) => l.event !== 'node-process-gone');
    t.same(upheaval.map((l) => `${String(l.event)} ${JSON.stringify(l)}`), [], `${n.id}: no failover, no election`);
    // The leave is written before the process closes its Redis connection and ends.
    const taken = lines.filter((l) => l.event === 'node-process-gone');
    t.same(taken.map((l) => JSON.stringify(l)), [], `${n.id}: the leave is not taken for a process death (node-process-gone)`);
  }
});

// ---- 8b ---------------------------------------------------------------------------------------

t.test('a node SIGTERMed as soon as it says listening drains and exits 0', async (t) => {
  // `listening` is what a service manager or an operator waits for: from then on SIGTERM is a drain.
  const node = await cluster.start('cw4');
  nodes.push(node);
  const mark = lead.logs.length;
  node.kill('SIGTERM');
  const code = await Promise.race([node.exited(), deadline(DRAIN_MS + 20_000, `${node.id} exiting`)]);
  t.equal(code, 0, `${node.id} exits 0 (exit ${String(code)}, signal ${String(node.proc.signalCode)}; its last lines: ${node.logs.slice(-6).map((l) => `${String(l.event ?? l.msg)}@${String(l.worker)}`).join(' ')})`);
  t.ok(node.logs.some((l) => l.event === 'drain-started' && l.worker === 'primary'), 'its primary drained');
  const view = await eventually(async () => {
    const v = (await api<ClusterView>(lead, 'GET', '/api/cluster')).body;
    return v.nodes.some((x) => x.id === node.id && x.state === 'up') ? undefined : v;
  }, 15_000, `${node.id} no longer up at ${lead.id}`);
  t.match(view.nodes.find((x) => x.id === node.id)?.state ?? 'absent', /^(left|absent)$/, `${lead.id} sees ${node.id} left (or never joined), not down`);
  t.same(since(lead, mark, (l) => UPHEAVAL.has(String(l.event)) && l.node === node.id).map((l) => String(l.event)), [], `${lead.id}: ${node.id} not taken for dead`);
});

function cli(state: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--import', 'tsx', CLI, '--state', state, ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`oneport ${args.join(' ')}: ${err.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}
