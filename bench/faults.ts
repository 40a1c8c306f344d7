/**
 * Fault injection with a client workload around each fault (issue 15, point 2): real gateway
 * processes, a real redis-server, faults made with signals, and partitions made with network
 * namespaces (test/helpers/lan.ts: each node in its own namespace behind a router namespace; a
 * cut is a pair of `ip rule ... blackhole` in the router, so packets are dropped in the middle).
 * Without root (no `ip netns`), the cuts fall back to fault proxies on loopback that stop
 * forwarding (no FIN, no RST).
 *
 *   sigstop-owner   SIGSTOP of a VM's owner (host silent) for `--hold` ms, then SIGCONT
 *   sigstop-leader  SIGSTOP of the leader, then SIGCONT
 *   redis-cut       the owner cut from Redis only (the router drops what it and Redis send each
 *                   other; clients and its peers still reach it)
 *   peer-cut        the owner cut from its peers only (the router drops what it and each other
 *                   node send each other; clients and Redis still reach it)
 *   slow-link       the owner's link slowed (tc tbf both ways, 512 kbit/s, 300 ms queue then
 *                   drops: slow, and lossy at peaks; namespaces only)
 *   console-hang    a console process SIGSTOPped mid-stream while the client keeps writing
 *   disk-full       one node with the embedded directory, its state folder in a full tmpfs
 *                   (`unshare -m`), then the space freed
 *
 * Around every cluster fault, until the fault is healed and 4 s after:
 *   - live tunnels: one CONNECT tunnel entering each node, echo traffic every 100 ms; a tunnel the
 *     gateway closes is reopened (new ticket) through the next node that is not the faulted one,
 *     as a client behind a balancer would;
 *   - new tunnels: on each node, a loop asking for a ticket and opening a CONNECT tunnel to the
 *     first console byte (statuses and ONEPORT_ERR codes of refusals, how long each took);
 *   - directory writes: on each node a loop of admin `PUT /api/vms/<name>`; every write answered
 *     2xx is read back from Redis and from every node's mirror afterwards (acknowledged, lost);
 *   - ticket races: one ticket redeemed at once on two nodes from two client addresses; both
 *     answered 200 is a double redemption;
 *   - stale-leader writes: every fenced entry of the change feed carries the writer's lease token
 *     `<node>|<epoch>`; an entry whose epoch is below one written before it was accepted from a
 *     leader that had already been replaced.
 *
 *   npm run bench:faults               5 runs of each fault
 *   npm run bench:faults -- --quick    3 runs
 *   --only sigstop-owner,redis-cut     a subset
 *
 * Writes bench/faults-results.json and, with the other results, `npm run reliability` makes
 * bench/RELIABILITY.md.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Agent } from 'undici';
import { Redis } from 'ioredis';
import { startFaultProxy, startRedis, type FaultProxy } from '../test/helpers/redis.js';
import { lanUnavailable, startLan, type Lan } from '../test/helpers/lan.js';
import { adminToken, electedLeader, logTime, makeCluster, type ClusterNode, type TestCluster } from '../test/helpers/cluster.js';
import { basic, errorCode, freePort, rawRequest } from '../test/helpers/net.js';
import { apiCall } from '../test/helpers/api.js';
import { eventually } from '../test/helpers/wait.js';
import { createCa } from '../certs/ca.js';

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const ROOT = join(BENCH_DIR, '..');
const { values: args } = parseArgs({ options: { quick: { type: 'boolean', default: false }, runs: { type: 'string' }, only: { type: 'string' }, hold: { type: 'string' } } });
const runs = Number(args.runs ?? (args.quick ? 3 : 5));
/** How long a fault lasts before it is healed: well past the 1.5 s heartbeat timeout. */
const HOLD_MS = Number(args.hold ?? 6000);
/** The workload keeps going this long after the heal. */
const AFTER_MS = 4000;
const only = args.only ? new Set(args.only.split(',')) : undefined;
const PREFIX = 'oneport:{dir}:';
/** The clients race tickets from two addresses and lose on purpose, and ask for ~10 tickets a second: no lock-out, no ticket budget. */
const BASE = { log: { level: 'info' }, limits: { authFailuresPerAddressPerMinute: 1_000_000, loginsPerAddressPerMinute: 1_000_000, ticketsPerUserPerMinute: 1_000_000 } };

const teardowns: Array<() => unknown> = [];
const t = { teardown: (fn: () => unknown) => teardowns.push(fn) };
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const log = (s: string): void => void process.stderr.write(`${new Date().toISOString().slice(11, 23)} ${s}\n`);

// ---------------------------------------------------------------------------------------------
// Clients

interface Ctx {
  cluster: TestCluster;
  nodes: ClusterNode[];
  token: string;
  redis: Redis;
  /** Two client addresses for the ticket races (not the address the other clients come from). */
  raceFrom: readonly [string, string];
}

interface Answer {
  status: number;
  code?: string | undefined;
}

async function api(ctx: Ctx, node: ClusterNode, method: string, path: string, body?: unknown, timeoutMs = 4000): Promise<Answer & { body?: unknown }> {
  try {
    const r = await apiCall<{ error?: { code?: string } }>(ctx.cluster.agent, `https://${node.host}:${node.port}`, method, path, { token: ctx.token, body, timeoutMs });
    return { status: r.status, code: typeof r.body === 'object' ? r.body?.error?.code : undefined, body: r.body };
  } catch (err) {
    return { status: 0, code: (err as Error).name === 'TimeoutError' || (err as Error).name === 'AbortError' ? 'no answer (timeout)' : `error: ${(err as Error).message}` };
  }
}

const BANNER = 'RFB 003.008\n';

/** Ticket at `node`, then CONNECT at `node`, resolved at the console's first byte or a refusal. */
async function openTunnel(ctx: Ctx, node: ClusterNode, vm: string, timeoutMs = 8000): Promise<Answer & { socket?: net.Socket; stage?: string }> {
  const tk = await api(ctx, node, 'POST', `/api/desktops/${vm}/tickets`, { protocol: 'vnc' });
  if (tk.status !== 200) return { ...tk, stage: 'ticket' };
  const ticket = (tk.body as { ticket: string }).ticket;
  const res = await rawRequest(node.port, `CONNECT ${vm}:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('root', ticket)}\r\n\r\n`, { timeoutMs, host: node.host }).catch(() => undefined);
  if (!res) return { status: 0, code: 'no answer (timeout)', stage: 'connect' };
  if (res.status !== 200) {
    res.socket.destroy();
    return { status: res.status, code: errorCode(res.body), stage: 'connect' };
  }
  const socket = res.socket as net.Socket;
  if (res.rest.length === 0) {
    const firstByte = Promise.race([once(socket, 'data').then(() => 'data'), once(socket, 'close').then(() => 'closed'), sleep(timeoutMs).then(() => 'silent')]);
    socket.resume();
    const first = await firstByte;
    if (first !== 'data') {
      socket.destroy();
      return { status: 200, code: first === 'closed' ? 'closed before the console\'s first byte' : `no console byte within ${timeoutMs} ms`, stage: 'first-byte' };
    }
  }
  socket.resume();
  return { status: 200, socket };
}

/** A live tunnel with echo traffic; reopened elsewhere when the gateway closes it. */
class LiveTunnel {
  sent = 0;
  received = 0;
  lastRx = Date.now();
  maxGapMs = 0;
  closedAt: number | undefined;
  reopenedAt: number | undefined;
  reopenedVia: string | undefined;
  private socket: net.Socket | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  constructor(private readonly ctx: Ctx, readonly entry: ClusterNode, private readonly vm: string, private readonly avoid: () => ClusterNode | undefined) {}

  async start(): Promise<void> {
    const r = await openTunnel(this.ctx, this.entry, this.vm);
    if (!r.socket) throw new Error(`live tunnel via ${this.entry.id}: ${r.status} ${r.code ?? ''}`);
    this.attach(r.socket, BANNER.length);
    this.timer = setInterval(() => this.tick(), 100);
  }

  private attach(socket: net.Socket, alreadyReceived: number): void {
    this.socket = socket;
    this.received = alreadyReceived; // counts bytes of this socket only; `sent` is reset with it
    this.sent = 0;
    this.lastRx = Date.now();
    socket.on('data', (d: Buffer) => {
      const now = Date.now();
      this.maxGapMs = Math.max(this.maxGapMs, now - this.lastRx);
      this.lastRx = now;
      this.received += d.length;
    });
    socket.once('close', () => {
      if (this.stopped || this.socket !== socket) return;
      this.closedAt ??= Date.now();
      this.socket = undefined;
      void this.reopen();
    });
  }

  private tick(): void {
    if (!this.socket || this.socket.writableNeedDrain) return;
    this.socket.write(Buffer.alloc(16, 0x61));
    this.sent += 16;
  }

  private async reopen(): Promise<void> {
    const order = [...this.ctx.nodes.slice(this.ctx.nodes.indexOf(this.entry)), ...this.ctx.nodes.slice(0, this.ctx.nodes.indexOf(this.entry))];
    for (let i = 0; !this.stopped; i++) {
      const candidates = order.filter((n) => n !== this.avoid());
      const via = candidates[i % candidates.length]!;
      const r = await openTunnel(this.ctx, via, this.vm, 4000);
      if (r.socket) {
        if (this.stopped) {
          r.socket.destroy();
          return;
        }
        this.reopenedAt = Date.now();
        this.reopenedVia = via.id;
        this.attach(r.socket, BANNER.length);
        return;
      }
      await sleep(50);
    }
  }

  /** Open and the echo flowing (all sent bytes back within `ms`). */
  async flowing(ms = 3000): Promise<boolean> {
    const until = Date.now() + ms;
    while (Date.now() < until) {
      if (this.socket && this.received >= this.sent + BANNER.length) return true;
      await sleep(50);
    }
    return false;
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
    this.socket?.destroy();
  }
}

interface Attempt {
  node: string;
  at: number;
  ms: number;
  ok: boolean;
  status: number;
  code?: string | undefined;
  stage?: string | undefined;
}

/** Loops run until `stop()`: new tunnels on every node, directory writes, ticket races. */
function workload(ctx: Ctx, vm: string, run: string): { stop(): Promise<void>; attempts: Attempt[]; writes: Attempt[]; acked: string[]; races: { n: number; one: number; both: number; none: number } } {
  let stopped = false;
  const attempts: Attempt[] = [];
  const writes: Attempt[] = [];
  const acked: string[] = [];
  const races = { n: 0, one: 0, both: 0, none: 0 };
  const loops: Array<Promise<void>> = [];
  for (const node of ctx.nodes) {
    loops.push((async () => {
      while (!stopped) {
        const at = Date.now();
        const r = await openTunnel(ctx, node, vm);
        r.socket?.destroy();
        attempts.push({ node: node.id, at, ms: Date.now() - at, ok: r.socket !== undefined, status: r.status, code: r.code, stage: r.stage });
        await sleep(100);
      }
    })());
    loops.push((async () => {
      for (let i = 0; !stopped; i++) {
        const name = `w-${run}-${node.id}-${i}`;
        const at = Date.now();
        // A VM parked on a node that is no member: a directory write nobody fails over or probes.
        const r = await api(ctx, node, 'PUT', `/api/vms/${name}`, { node: 'parked', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: 5999 }], users: [] });
        const ok = r.status >= 200 && r.status < 300;
        if (ok) acked.push(name);
        writes.push({ node: node.id, at, ms: Date.now() - at, ok, status: r.status, code: r.code });
        await sleep(150);
      }
    })());
  }
  loops.push((async () => {
    for (let i = 0; !stopped; i++) {
      const [a, b, c] = [ctx.nodes[i % 3]!, ctx.nodes[(i + 1) % 3]!, ctx.nodes[(i + 2) % 3]!];
      const tk = await api(ctx, c, 'POST', `/api/desktops/${vm}/tickets`, { protocol: 'vnc' });
      if (tk.status !== 200) {
        await sleep(100);
        continue;
      }
      const ticket = (tk.body as { ticket: string }).ticket;
      const req = `CONNECT ${vm}:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('root', ticket)}\r\n\r\n`;
      // Two client addresses: the same-address rule for a session's further connections must not apply.
      const both = await Promise.all([a, b].map((n, j) => rawRequest(n.port, req, { localAddress: ctx.raceFrom[j], timeoutMs: 8000, host: n.host }).then((r) => {
        r.socket.destroy();
        return r.status === 200;
      }, () => false)));
      races.n++;
      const won = both.filter(Boolean).length;
      if (won === 2) races.both++;
      else if (won === 1) races.one++;
      else races.none++;
      await sleep(100);
    }
  })());
  return {
    attempts,
    writes,
    acked,
    races,
    async stop() {
      stopped = true;
      await Promise.all(loops);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Checks

/** Fenced change-feed entries accepted with an epoch below one written earlier. */
async function staleLeaderWrites(redis: Redis): Promise<{ fenced: number; stale: number }> {
  const entries = (await redis.xrange(`${PREFIX}changes`, '-', '+')) as Array<[string, string[]]>;
  let max = 0;
  let fenced = 0;
  let stale = 0;
  for (const [, fields] of entries) {
    const w = fields[fields.indexOf('w') + 1] ?? '';
    if (!w) continue;
    fenced++;
    const epoch = Number(w.slice(w.lastIndexOf('|') + 1));
    if (epoch < max) stale++;
    max = Math.max(max, epoch);
  }
  return { fenced, stale };
}

/** Acknowledged writes missing from Redis, and from some node's mirror (after 5 s to converge). */
async function lostWrites(ctx: Ctx, acked: string[]): Promise<{ acked: number; lostInRedis: number; missingInMirrors: number }> {
  let lostInRedis = 0;
  for (const name of acked) if (!(await ctx.redis.hexists(`${PREFIX}vms`, name))) lostInRedis++;
  let missingInMirrors = 0;
  for (const node of ctx.nodes) {
    const missing = await eventually(async () => {
      const r = await api(ctx, node, 'GET', '/api/vms');
      if (r.status !== 200) return undefined;
      const names = new Set((r.body as Array<{ name: string }>).map((u) => u.name));
      const m = acked.filter((n) => !names.has(n)).length;
      return m === 0 ? 0 : undefined;
    }, 5000, 'mirror').catch(() => -1);
    if (missing !== 0) missingInMirrors++;
  }
  return { acked: acked.length, lostInRedis, missingInMirrors };
}

interface Refusals {
  attempts: number;
  ok: number;
  /** status/code -> count, for failed attempts started after the fault. */
  refused: Record<string, number>;
  /** From the fault to the end of the last failed or slow (> 1 s) attempt on this node; 0 when none. */
  outageMs: number;
  slowestOkMs: number;
}

function summarize(attempts: Attempt[], faultAt: number): Record<string, Refusals> {
  const out: Record<string, Refusals> = {};
  for (const a of attempts) {
    if (a.at + a.ms < faultAt) continue;
    const r = (out[a.node] ??= { attempts: 0, ok: 0, refused: {}, outageMs: 0, slowestOkMs: 0 });
    r.attempts++;
    if (a.ok) {
      r.ok++;
      r.slowestOkMs = Math.max(r.slowestOkMs, a.ms);
    } else {
      const key = `${a.status || 'none'} ${a.code ?? ''}${a.stage ? ` (${a.stage})` : ''}`.trim();
      r.refused[key] = (r.refused[key] ?? 0) + 1;
    }
    if (!a.ok || a.ms > 1000) r.outageMs = Math.max(r.outageMs, a.at + a.ms - faultAt);
  }
  return out;
}

function procStat(pid: number): { rssKiB: number; fds: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return { rssKiB: Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0), fds: readdirSync(`/proc/${pid}/fd`).length };
}

// ---------------------------------------------------------------------------------------------
// Cluster faults

type ClusterFault = 'sigstop-owner' | 'sigstop-leader' | 'redis-cut' | 'peer-cut' | 'slow-link';

/** The slow link: a token bucket on both ends of the owner's link (lan.ts `slow`). */
const SLOW = { rate: '512kbit', latencyMs: 300 };

interface RunResult {
  run: number;
  faulted: string;
  role: string;
  holdMs: number;
  live: Array<{ entry: string; outcome: 'kept' | 'stalled' | 'rerouted' | 'lost'; maxGapMs: number; closedAfterMs?: number; firstByteAfterMs?: number; via?: string }>;
  newTunnels: Record<string, Refusals>;
  /** `attempted`/`acked`/`refused`: writes that ended after the fault began; the loss checks cover every write of the run (`ackedInRun`). */
  writes: { attempted: number; acked: number; ackedInRun: number; refused: Record<string, number>; lostInRedis: number; missingInMirrors: number };
  races: { n: number; one: number; both: number; none: number };
  staleLeaderWrites: number;
  fencedEntries: number;
  newLeaderMs?: number;
  vmFailoverMs?: number;
  healthyAgainMs: number;
  /** Cluster events logged by any node from the fault on: `+ms node event subject`. */
  events: string[];
}

async function leaderId(ctx: Ctx, healthy: ClusterNode[]): Promise<string> {
  return eventually(async () => {
    for (const n of healthy) {
      const r = await api(ctx, n, 'GET', '/api/cluster', undefined, 2000);
      const b = r.body as { leader?: { node?: string }; nodes?: Array<{ id: string; state: string }> } | undefined;
      if (r.status === 200 && b?.leader?.node && b.nodes?.filter((x) => x.state === 'up').length === ctx.nodes.length) return b.leader.node;
    }
    return undefined;
  }, 30_000, 'a leader and every node up');
}

/** Why the cuts run on loopback fault proxies instead of network namespaces, or false. */
const noLan = lanUnavailable();

async function clusterFault(kind: ClusterFault): Promise<{ runs: RunResult[]; note: string; how: 'netns' | 'proxy' | 'signal'; rate?: string; latencyMs?: number }> {
  const cut = kind === 'redis-cut' || kind === 'peer-cut' || kind === 'slow-link';
  if (kind === 'slow-link' && noLan !== false) throw new Error(`a slow link needs network namespaces: ${noLan}`);
  // The cuts: every node in its own network namespace, Redis, the console and the clients in
  // ours, all behind one router namespace (lan.ts). Our addresses: clients (lan.gateway), Redis,
  // two for the ticket races.
  const lan: Lan | undefined = cut && noLan === false ? startLan(t, ['f1', 'f2', 'f3'], 3) : undefined;
  const redisAt = lan?.extra[0];
  const redisServer = await startRedis(t, redisAt ? { args: ['--bind', '127.0.0.1', redisAt, '--protected-mode', 'no'] } : {});
  const redisPort = Number(new URL(redisServer.url).port);
  const cluster = makeCluster(t, redisAt ? `redis://${redisAt}:${redisPort}` : redisServer.url, BASE);
  const redis = new Redis(redisServer.url, { lazyConnect: false });
  redis.on('error', () => {});
  teardowns.push(() => redis.disconnect());
  const inLan = (id: string): { netns?: { name: string; host: string } } => {
    const n = lan?.nodes.get(id);
    return n ? { netns: { name: n.netns, host: n.host } } : {};
  };
  // The third node, x, is the one the cut faults isolate; it joins once a leader exists so that it
  // starts as a follower.
  const a = await cluster.start('f1', {}, inLan('f1'));
  const b = await cluster.start('f2', {}, inLan('f2'));
  await electedLeader([a, b]);
  let proxy: FaultProxy | undefined;
  let x: ClusterNode;
  if (lan) {
    x = await cluster.start('f3', {}, inLan('f3'));
  } else if (kind === 'redis-cut') {
    proxy = await startFaultProxy(t, redisPort);
    x = await cluster.start('f3', { cluster: { redis: proxy.url } });
  } else if (kind === 'peer-cut') {
    const port = await freePort();
    proxy = await startFaultProxy(t, port);
    x = await cluster.start('f3', { listen: `127.0.0.1:${port}`, cluster: { advertise: `127.0.0.1:${proxy.port}` } });
  } else {
    x = await cluster.start('f3');
  }
  const nodes = [a, b, x];
  const token = await adminToken(a);
  const ctx: Ctx = { cluster, nodes, token, redis, raceFrom: lan ? [lan.extra[1]!, lan.extra[2]!] : ['127.0.0.2', '127.0.0.3'] };
  const byId = (id: string): ClusterNode => nodes.find((n) => n.id === id)!;
  const consoleHost = lan?.gateway ?? '127.0.0.1';
  const consolePort = await freePort();
  const consoleServer = net.createServer((s) => {
    s.on('error', () => {});
    s.write(BANNER);
    s.pipe(s);
  });
  consoleServer.listen(consolePort, consoleHost);
  await once(consoleServer, 'listening');
  teardowns.push(() => consoleServer.close());
  // Who x stops hearing in a cut made with the LAN.
  const cutFrom = (): string[] => (kind === 'redis-cut' ? [redisAt!] : [a.host, b.host]);

  const results: RunResult[] = [];
  for (let run = 1; run <= runs; run++) {
    const leader = byId(await leaderId(ctx, nodes));
    const followers = nodes.filter((n) => n !== leader);
    // The faulted node and the VM's owner/replica for this fault.
    let faulted: ClusterNode;
    let owner: ClusterNode;
    let replica: ClusterNode;
    if (kind === 'sigstop-leader') {
      faulted = leader;
      [owner, replica] = followers as [ClusterNode, ClusterNode];
    } else if (kind === 'sigstop-owner') {
      [owner, replica] = followers as [ClusterNode, ClusterNode];
      faulted = owner;
    } else {
      if (leader === x) throw new Error(`${kind}: the isolated node leads; the run would test a leader cut instead`);
      owner = faulted = x;
      replica = followers.find((n) => n !== x)!;
    }
    const vm = `desk${run}`;
    const put = await api(ctx, leader, 'PUT', `/api/vms/${vm}`, { node: owner.id, replica: replica.id, endpoints: [{ protocol: 'vnc', host: consoleHost, port: consolePort }], users: ['root'] });
    if (put.status !== 200) throw new Error(`PUT ${vm}: ${put.status} ${put.code ?? ''}`);
    for (const n of nodes) await eventually(async () => ((await api(ctx, n, 'GET', `/api/vms/${vm}`)).body as { node?: string; state?: string } | undefined)?.state === 'running' || undefined, 10_000, `${vm} on ${n.id}`);

    const avoid = (): ClusterNode | undefined => faulted;
    const live = nodes.map((n) => new LiveTunnel(ctx, n, vm, avoid));
    await Promise.all(live.map((l) => l.start()));
    const load = workload(ctx, vm, `${kind}-${run}`);
    await sleep(1000);
    const marks = nodes.map((n) => n.logs.length);
    for (const l of live) l.maxGapMs = 0;
    const faultAt = Date.now();
    if (kind === 'sigstop-owner' || kind === 'sigstop-leader') faulted.kill('SIGSTOP');
    else if (kind === 'slow-link') lan!.slow(x.id, SLOW.rate, SLOW.latencyMs);
    else if (lan) lan.cut(x.host, cutFrom());
    else proxy!.hang();
    await sleep(HOLD_MS);
    if (kind === 'sigstop-owner' || kind === 'sigstop-leader') faulted.kill('SIGCONT');
    else if (kind === 'slow-link') lan!.fast(x.id);
    else if (lan) lan.heal(x.host, cutFrom());
    else proxy!.heal();
    const healedAt = Date.now();
    await sleep(AFTER_MS);
    const flowing = await Promise.all(live.map((l) => l.flowing()));
    await load.stop();
    for (const l of live) l.stop();
    const healthy = Date.now();
    await leaderId(ctx, nodes);
    const healthyAgainMs = Date.now() - healthy + (healthy - healedAt);

    const survivors = nodes.filter((n, i) => n !== faulted && marks[i] !== undefined);
    const elected = kind === 'sigstop-leader'
      ? await Promise.race(survivors.map((n) => n.waitFor((l) => l.event === 'leader-elected', 1, { after: marks[nodes.indexOf(n)] })).map((p) => p.catch(() => undefined))).catch(() => undefined)
      : undefined;
    const leaderLines = nodes.flatMap((n, i) => n.logs.slice(marks[i]));
    const failover = leaderLines.find((l) => l.event === 'vm-failover' && l.vm === vm);
    const electedLine = leaderLines.find((l) => l.event === 'leader-elected' && l.node !== faulted.id) ?? elected;
    const writesRefused: Record<string, number> = {};
    for (const w of load.writes) if (!w.ok && w.at + w.ms >= faultAt) writesRefused[`${w.status || 'none'} ${w.code ?? ''}`.trim()] = (writesRefused[`${w.status || 'none'} ${w.code ?? ''}`.trim()] ?? 0) + 1;
    const lost = await lostWrites(ctx, load.acked);
    const stale = await staleLeaderWrites(redis);
    const r: RunResult = {
      run,
      faulted: faulted.id,
      role: kind === 'sigstop-leader' ? 'leader' : 'owner (follower)',
      holdMs: HOLD_MS,
      live: live.map((l, i) => {
        const outcome = l.closedAt === undefined ? (flowing[i] ? 'kept' : 'stalled') : l.reopenedAt !== undefined && flowing[i] ? 'rerouted' : 'lost';
        return {
          entry: l.entry.id,
          outcome,
          maxGapMs: l.maxGapMs,
          ...(l.closedAt !== undefined ? { closedAfterMs: l.closedAt - faultAt } : {}),
          ...(l.reopenedAt !== undefined ? { firstByteAfterMs: l.reopenedAt - faultAt, via: l.reopenedVia } : {}),
        };
      }),
      newTunnels: summarize(load.attempts, faultAt),
      writes: { attempted: load.writes.filter((w) => w.at + w.ms >= faultAt).length, acked: load.writes.filter((w) => w.ok && w.at + w.ms >= faultAt).length, ackedInRun: lost.acked, refused: writesRefused, lostInRedis: lost.lostInRedis, missingInMirrors: lost.missingInMirrors },
      races: load.races,
      staleLeaderWrites: stale.stale,
      fencedEntries: stale.fenced,
      ...(electedLine ? { newLeaderMs: logTime(electedLine) - faultAt } : {}),
      ...(failover ? { vmFailoverMs: logTime(failover) - faultAt } : {}),
      healthyAgainMs,
      events: nodes.flatMap((n, i) => n.logs.slice(marks[i]).filter((l) => l.event !== undefined && !/^(tunnel|http|session|audit|ticket|api|connect)/.test(String(l.event))).map((l) => ({ at: logTime(l) - faultAt, s: `${n.id} ${String(l.event)} ${String(l.vm ?? l.node ?? l.reason ?? '')}` }))).sort((p, q) => p.at - q.at).map((e) => `+${e.at} ${e.s}`).slice(0, 60),
    };
    results.push(r);
    log(`${kind} ${run}/${runs}: live ${r.live.map((l) => `${l.entry}:${l.outcome}${l.firstByteAfterMs !== undefined ? `@${l.firstByteAfterMs}` : ''}/gap${l.maxGapMs}`).join(' ')}; new tunnels ${Object.entries(r.newTunnels).map(([n, s]) => `${n}:${s.ok}/${s.attempts} out${s.outageMs} ${JSON.stringify(s.refused)}`).join(' ')}; writes acked ${r.writes.acked} lost ${r.writes.lostInRedis}; races ${JSON.stringify(r.races)}; stale ${r.staleLeaderWrites}; leader ${r.newLeaderMs ?? '-'} vm ${r.vmFailoverMs ?? '-'}`);
  }
  const note = {
    'sigstop-owner': 'The VM owner (a follower) SIGSTOPped: its connections stay open, so only the heartbeat timeout (nodeTimeoutMs 1500) can judge it.',
    'sigstop-leader': 'The leader SIGSTOPped: its lease (1200 ms) expires; the VM owner is a follower.',
    'redis-cut': lan
      ? 'Every node in its own network namespace behind a router namespace; the router drops what the VM owner and Redis send each other (`ip rule add from <owner> to <redis> blackhole` and back): it can neither heartbeat nor read the change feed; peers and clients still reach it.'
      : `The VM owner reaches Redis through a fault proxy on loopback that stops forwarding (no FIN, no RST): it can neither heartbeat nor read the change feed; peers and clients still reach it. (No network namespaces here: ${String(noLan)}.)`,
    'peer-cut': lan
      ? 'Every node in its own network namespace behind a router namespace; the router drops what the VM owner and each other node send each other (`ip rule ... blackhole`, both ways): hops and probes to it and its forwarding to the leader go silent; Redis and clients still reach it.'
      : `The VM owner is advertised through a fault proxy on loopback that stops forwarding: the other nodes cannot reach its port (hops, probes); its own connections to them, Redis and clients still work. (No network namespaces here: ${String(noLan)}.)`,
    'slow-link': `Every node in its own network namespace behind a router namespace; the VM owner's link is slowed both ways to ${SLOW.rate} with a ${SLOW.latencyMs} ms queue, beyond which packets are dropped (\`tc qdisc ... tbf\`; this kernel has no sch_netem for fixed delay and random loss). The workload's own traffic through it (hops, TLS handshakes, API writes, Redis) fills it, so it is slow and, at peaks, lossy.`,
  }[kind];
  for (const n of nodes) n.kill('SIGKILL');
  return { runs: results, note, how: lan ? 'netns' : cut ? 'proxy' : 'signal', ...(kind === 'slow-link' ? SLOW : {}) };
}

// ---------------------------------------------------------------------------------------------
// A console that hangs mid-stream

interface ConsoleHangRun {
  run: number;
  entry: string;
  /** Bytes echoed back to the client by the end (all of clientBytesAccepted when nothing was lost or stuck). */
  clientBytesEchoed: number;
  /** Bytes the client wrote before its socket stopped taking them (backpressure reached it). */
  clientBytesAccepted: number;
  clientBlocked: boolean;
  gatewayRssGrowthKiB: number;
  /** The tunnel as the client saw it while the console was stopped. */
  closedWhileHung: boolean;
  /** After SIGCONT: every byte the client wrote came back, in order. */
  resumedIntact: boolean;
  resumeMs: number;
  /** Descriptors of the entry and the owner after the client left, against before the tunnel. */
  fdsLeakedEntry: number;
  fdsLeakedOwner: number;
}

async function consoleHang(): Promise<ConsoleHangRun[]> {
  const redisServer = await startRedis(t);
  const cluster = makeCluster(t, redisServer.url, BASE);
  const a = await cluster.start('c1');
  const b = await cluster.start('c2');
  const leader = await electedLeader([a, b]);
  const token = await adminToken(leader);
  const redis = new Redis(redisServer.url);
  redis.on('error', () => {});
  teardowns.push(() => redis.disconnect());
  const ctx: Ctx = { cluster, nodes: [a, b], token, redis, raceFrom: ['127.0.0.2', '127.0.0.3'] };
  const port = await freePort();
  // The console is its own process so that it can be SIGSTOPped: a banner, then echo.
  const code = `const net=require('net');net.createServer(s=>{s.on('error',()=>{});s.write(${JSON.stringify(BANNER)});s.pipe(s)}).listen(${port},'127.0.0.1',()=>console.log('ready'))`;
  const consoleProc: ChildProcess = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  teardowns.push(() => {
    consoleProc.kill('SIGCONT');
    consoleProc.kill('SIGKILL');
  });
  await once(consoleProc.stdout!, 'data');
  const put = await api(ctx, leader, 'PUT', '/api/vms/hang', { node: b.id, endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port }], users: ['root'] });
  if (put.status !== 200) throw new Error(`PUT hang: ${put.status}`);
  await eventually(async () => ((await api(ctx, a, 'GET', '/api/vms/hang')).body as { state?: string }).state === 'running' || undefined, 10_000, 'hang on c1');
  const out: ConsoleHangRun[] = [];
  for (let run = 1; run <= runs; run++) {
    const before = { a: procStat(a.proc.pid!), b: procStat(b.proc.pid!) };
    // Odd runs enter at c1 (the console owned by c2: the relay hop is inside the stalled path),
    // even runs at the owner c2 itself.
    const entry = run % 2 === 1 ? a : b;
    const r = await openTunnel(ctx, entry, 'hang');
    if (!r.socket) throw new Error(`console-hang tunnel: ${r.status} ${r.code ?? ''}`);
    const s = r.socket;
    let received = 0;
    let closed = false;
    s.on('data', (d: Buffer) => (received += d.length));
    s.once('close', () => (closed = true));
    consoleProc.kill('SIGSTOP');
    const chunk = Buffer.alloc(64 * 1024, 0x62);
    let written = 0;
    let blocked = false;
    const until = Date.now() + HOLD_MS;
    while (Date.now() < until && !closed) {
      if (s.writableNeedDrain) {
        blocked = true;
        await sleep(50);
        continue;
      }
      s.write(chunk);
      written += chunk.length;
      if (written > 512 * 1024 * 1024) break;
      await new Promise((res) => setImmediate(res));
    }
    const during = { a: procStat(a.proc.pid!), b: procStat(b.proc.pid!) };
    const closedWhileHung = closed;
    const contAt = Date.now();
    consoleProc.kill('SIGCONT');
    let resumedIntact = false;
    const deadlineAt = Date.now() + 30_000;
    while (!closed && Date.now() < deadlineAt) {
      // `received` counts what followed the console's banner (openTunnel read the banner).
      if (received >= written) {
        resumedIntact = received === written;
        break;
      }
      await sleep(20);
    }
    const resumeMs = Date.now() - contAt;
    s.destroy();
    await sleep(1500);
    const after = { a: procStat(a.proc.pid!), b: procStat(b.proc.pid!) };
    out.push({
      run,
      entry: entry === a ? 'c1 (relayed to the owner c2)' : 'c2 (the owner)',
      clientBytesAccepted: written,
      clientBytesEchoed: received,
      clientBlocked: blocked,
      gatewayRssGrowthKiB: Math.max(during.a.rssKiB - before.a.rssKiB, during.b.rssKiB - before.b.rssKiB),
      closedWhileHung,
      resumedIntact,
      resumeMs,
      fdsLeakedEntry: after.a.fds - before.a.fds,
      fdsLeakedOwner: after.b.fds - before.b.fds,
    });
    log(`console-hang ${run}/${runs}: ${JSON.stringify(out.at(-1))}`);
  }
  a.kill('SIGKILL');
  b.kill('SIGKILL');
  return out;
}

// ---------------------------------------------------------------------------------------------
// The state folder's disk full (one node, embedded directory)

interface DiskFullResult {
  measured: boolean;
  reason?: string;
  tmpfsKiB?: number;
  /** Writes acknowledged after the fill, into the change log's already allocated last page, before the first refusal. */
  slackWrites?: number;
  writesDuringFull?: { attempted: number; acked: number; refused: Record<string, number> };
  ackedLost?: number;
  /** Writes answered with an error that the node's directory shows anyway (applied in memory, not on disk). */
  refusedButVisible?: number;
  writesAfterFreed?: { attempted: number; acked: number };
  tunnelsDuringFull?: { attempted: number; ok: number; refused: Record<string, number> };
  nodeSurvived?: boolean;
}

async function diskFull(): Promise<DiskFullResult> {
  const probe = spawnSync('unshare', ['-m', 'sh', '-c', 'd=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs "$d" && umount "$d" && rmdir "$d"']);
  if (probe.status !== 0) return { measured: false, reason: `no private mount namespace with tmpfs: ${probe.stderr.toString().trim()}` };
  const dir = mkdtempSync(join(os.tmpdir(), 'oneport-diskfull-'));
  teardowns.push(() => rmSync(dir, { recursive: true, force: true }));
  const ca = createCa();
  const agent = new Agent({ connect: { ca: ca.cert, servername: 'localhost' } });
  teardowns.push(() => agent.close());
  const state = join(dir, 'state');
  const tmpfsKiB = 2048;
  const port = await freePort();
  const consolePort = await freePort();
  const consoleServer = net.createServer((s) => {
    s.on('error', () => {});
    s.write(BANNER);
    s.pipe(s);
  }).listen(consolePort, '127.0.0.1');
  teardowns.push(() => consoleServer.close());
  const cfg = { nodeId: 'd1', listen: `127.0.0.1:${port}`, state, demo: { enabled: false }, log: { level: 'info' }, tunnel: { protocolCheck: false } };
  // The tmpfs is mounted inside the node's own mount namespace; the bench writes into it through
  // /proc/<pid>/root, which shows the node's view of the file system.
  const script = `mkdir -p "${state}" && mount -t tmpfs -o size=${tmpfsKiB}k,mode=0700 tmpfs "${state}" && printf '%s' "$CA" > "${state}/ca.pem" && printf '%s' "$CAKEY" > "${state}/ca-key.pem" && chmod 600 "${state}/ca-key.pem" && printf '%s' "$CFG" > "${state}/config.json" && exec "${process.execPath}" --import tsx "${join(ROOT, 'gateway', 'cli.ts')}" serve --config "${state}/config.json"`;
  const proc = spawn('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script], { cwd: ROOT, env: { ...process.env, CA: ca.cert, CAKEY: ca.key, CFG: JSON.stringify(cfg), ONEPORT_STATE: state }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
  proc.stdout!.resume();
  teardowns.push(() => proc.kill('SIGKILL'));
  const origin = `https://127.0.0.1:${port}`;
  const call = async (method: string, path: string, body?: unknown, token?: string): Promise<Answer & { body?: unknown }> => {
    try {
      const r = await apiCall<{ error?: { code?: string } }>(agent, origin, method, path, { body, token, timeoutMs: 4000 });
      return { status: r.status, code: typeof r.body === 'object' ? r.body?.error?.code : undefined, body: r.body };
    } catch (err) {
      return { status: 0, code: `no answer: ${(err as Error).message}` };
    }
  };
  const up = async (): Promise<void> => {
    await eventually(async () => ((await call('GET', '/healthz')).status === 200 ? true : undefined), 30_000, `disk-full node up (${stderr.slice(-400)})`);
  };
  await up();
  const pid = proc.pid!;
  // `unshare` execs sh which execs node: the same pid throughout.
  const root = `/proc/${pid}/root${state}`;
  await eventually(async () => (readdirSync(root).length > 0 ? true : undefined), 5000, 'state visible');
  // An admin through the login API needs a user: create it with the CLI's control socket, seen through /proc.
  const { openAdmin } = await import('../gateway/admin.js');
  const admin = await openAdmin(root);
  await admin.putUser('root', { password: 'root-password-1', roles: ['admin'] });
  const token = ((await call('POST', '/api/login', { user: 'root', password: 'root-password-1' })).body as { token: string }).token;
  await call('PUT', '/api/vms/disk', { node: 'd1', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: consolePort }], users: ['root'] }, token);
  // Fill the tmpfs to the last block.
  const filler = join(root, 'filler');
  spawnSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=4k'], { stdio: 'ignore' });
  const acked: string[] = [];
  const refused: Record<string, number> = {};
  // The change log's last page, already allocated, still has room that dd cannot take: writes
  // fit there (and are kept) until one needs a new block. Use it up first, so that the 20 writes
  // below meet a full disk; each one acknowledged here is checked like the others.
  let slackWrites = 0;
  for (; slackWrites < 200; slackWrites++) {
    const name = `slack-${slackWrites}`;
    const r = await call('PUT', `/api/vms/${name}`, { node: 'd1', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: 5999 }], users: [] }, token);
    if (r.status < 200 || r.status >= 300) break;
    acked.push(name);
  }
  const slackAcked = acked.length;
  let attempted = 0;
  for (let i = 0; i < 20; i++) {
    attempted++;
    const name = `full-${i}`;
    const r = await call('PUT', `/api/vms/${name}`, { node: 'd1', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: 5999 }], users: [] }, token);
    if (r.status >= 200 && r.status < 300) acked.push(name);
    else refused[`${r.status} ${r.code ?? ''}`.trim()] = (refused[`${r.status} ${r.code ?? ''}`.trim()] ?? 0) + 1;
  }
  const tRefused: Record<string, number> = {};
  let tOk = 0;
  for (let i = 0; i < 5; i++) {
    const tk = await call('POST', '/api/desktops/disk/tickets', { protocol: 'vnc' }, token);
    if (tk.status !== 200) {
      tRefused[`${tk.status} ${tk.code ?? ''} (ticket)`] = (tRefused[`${tk.status} ${tk.code ?? ''} (ticket)`] ?? 0) + 1;
      continue;
    }
    const res = await rawRequest(port, `CONNECT disk:5900 HTTP/1.1\r\nProxy-Authorization: ${basic('root', (tk.body as { ticket: string }).ticket)}\r\n\r\n`, { timeoutMs: 5000 }).catch(() => undefined);
    res?.socket.destroy();
    if (res?.status === 200) tOk++;
    else tRefused[`${res?.status ?? 'none'} ${res ? errorCode(res.body) ?? '' : ''} (connect)`] = (tRefused[`${res?.status ?? 'none'} ${res ? errorCode(res.body) ?? '' : ''} (connect)`] ?? 0) + 1;
  }
  const nodeSurvived = (await call('GET', '/healthz')).status === 200;
  rmSync(filler, { force: true });
  const after: string[] = [];
  for (let i = 0; i < 5; i++) {
    const r = await call('PUT', `/api/vms/freed-${i}`, { node: 'd1', endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port: 5999 }], users: [] }, token);
    if (r.status >= 200 && r.status < 300) after.push(`freed-${i}`);
  }
  await admin.close();
  // Every write acknowledged while the disk was full must be in the node's directory and in its
  // state file (read through /proc/<pid>/root: the tmpfs exists only in the node's namespace).
  const list = await call('GET', '/api/vms', undefined, token);
  const names = new Set((Array.isArray(list.body) ? (list.body as Array<{ name: string }>) : []).map((u) => u.name));
  const files = readdirSync(root).map((f) => {
    try {
      return readFileSync(join(root, f), 'utf8');
    } catch {
      return '';
    }
  }).join('\n');
  const lostOnDisk = acked.filter((n) => !files.includes(`"${n}"`)).length;
  const lostInMemory = acked.filter((n) => !names.has(n)).length;
  const refusedNames = [...Array.from({ length: attempted }, (_, i) => `full-${i}`), `slack-${slackWrites}`].filter((n) => !acked.includes(n));
  const refusedButVisible = refusedNames.filter((n) => names.has(n)).length;
  proc.kill('SIGKILL');
  return {
    measured: true,
    tmpfsKiB,
    slackWrites,
    writesDuringFull: { attempted, acked: acked.length - slackAcked, refused },
    ackedLost: Math.max(lostOnDisk, lostInMemory),
    refusedButVisible,
    writesAfterFreed: { attempted: 5, acked: after.length },
    tunnelsDuringFull: { attempted: 5, ok: tOk, refused: tRefused },
    nodeSurvived,
  };
}

// ---------------------------------------------------------------------------------------------

function netemCheck(): { measured: false; reason: string } {
  const r = spawnSync('unshare', ['-n', 'sh', '-c', 'ip link add fa type veth peer name fb && ip link set fa up && ip link set fb up && tc qdisc add dev fa root netem delay 50ms loss 1%']);
  if (r.status === 0) return { measured: false, reason: 'tc netem works here, but the lossy-link scenario is not written yet' };
  return { measured: false, reason: `\`tc qdisc add dev <veth> root netem\` in a private network namespace was refused: "${(r.stderr.toString().trim() || r.error?.message) ?? ''}" (the kernel has no sch_netem and modprobe is absent)` };
}

async function main(): Promise<void> {
  const started = Date.now();
  const results: Record<string, unknown> = {
    date: new Date().toISOString(),
    node: process.version,
    machine: `${os.cpus()[0]?.model ?? 'cpu'}, ${os.cpus().length} cores`,
    runs,
    holdMs: HOLD_MS,
    afterMs: AFTER_MS,
    settings: 'defaults: leaseMs 1200, renewMs 250, heartbeatMs 500, nodeTimeoutMs 1500, processWatchMs 250, tunnel.holdMs 60000',
    faults: {} as Record<string, unknown>,
  };
  const faults = results.faults as Record<string, unknown>;
  const want = (k: string): boolean => !only || only.has(k);
  const save = (): void => writeFileSync(join(BENCH_DIR, 'faults-results.json'), `${JSON.stringify({ ...results, seconds: Math.round((Date.now() - started) / 1000), loadAverage: os.loadavg() }, null, 2)}\n`);
  for (const kind of ['sigstop-owner', 'sigstop-leader', 'redis-cut', 'peer-cut', 'slow-link'] as const) {
    if (!want(kind)) continue;
    try {
      faults[kind] = await clusterFault(kind);
    } catch (err) {
      log(`${kind}: ${(err as Error).stack ?? String(err)}`);
      faults[kind] = { error: String((err as Error).message) };
    }
    save();
  }
  if (want('console-hang')) {
    try {
      faults['console-hang'] = { runs: await consoleHang() };
    } catch (err) {
      log(`console-hang: ${(err as Error).stack ?? String(err)}`);
      faults['console-hang'] = { error: String((err as Error).message) };
    }
    save();
  }
  if (want('disk-full')) {
    try {
      faults['disk-full'] = await diskFull();
    } catch (err) {
      log(`disk-full: ${(err as Error).stack ?? String(err)}`);
      faults['disk-full'] = { measured: false, reason: `the scenario failed: ${(err as Error).message}` };
    }
    save();
  }
  if (want('netem')) faults.netem = netemCheck();
  save();
  log(`done in ${Math.round((Date.now() - started) / 1000)} s: bench/faults-results.json`);
}

try {
  await main();
} catch (err) {
  console.error(err);
  process.exitCode = 1;
} finally {
  // Every process and server this run started, newest first.
  for (const fn of teardowns.reverse()) await Promise.resolve(fn()).catch(() => undefined);
  process.exit();
}
