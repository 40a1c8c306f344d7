/**
 * A real cluster for tests: gateway processes (`oneport serve` from the sources) sharing one
 * `redis-server`, each with its own state folder holding the same cluster CA. Each node's JSON log
 * lines are parsed as they come; tests await log events (`node.waitFor`) instead of sleeping.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Agent } from 'undici';
import { createCa, issueClientCert, type Pem } from '../../certs/ca.js';
import { openAdmin, type Admin } from '../../gateway/admin.js';
import { eventually } from './wait.js';
import { startRedis } from './redis.js';
import { apiCall, type ApiResponse } from './api.js';
import { onJsonLines } from './json-lines.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = join(ROOT, 'gateway', 'cli.ts');

export type LogLine = Record<string, unknown> & { event?: string; time?: number; msg?: string };

export interface ClusterNode {
  readonly id: string;
  readonly state: string;
  readonly port: number;
  /** The address its port is reached at: 127.0.0.1, or its own in a network namespace. */
  readonly host: string;
  readonly address: string;
  readonly proc: ChildProcess;
  readonly logs: LogLine[];
  /** Resolves with the first log line (already seen or to come) matching `pred`. */
  waitFor(pred: (l: LogLine) => boolean, timeoutMs?: number, opts?: { after?: number }): Promise<LogLine>;
  /** JSON API call over TLS (trusting the cluster CA), bounded at 10 s. */
  api<T = unknown>(method: string, path: string, opts?: { body?: unknown; token?: string }): Promise<ApiResponse<T>>;
  /** The control socket client (acts as the machine's administrator). */
  admin(): Promise<Admin>;
  kill(signal?: NodeJS.Signals): void;
  exited(): Promise<number | null>;
  stop(): Promise<void>;
}

export interface TestCluster {
  readonly ca: Pem;
  readonly dir: string;
  readonly redisUrl: string;
  readonly agent: Agent;
  /**
   * `withCa: false`: the state folder gets no CA (a node that joins with a token). `netns`: run
   * the node in that network namespace (test/helpers/lan.ts), listening on `host`.
   */
  start(id: string, extra?: Record<string, unknown>, opts?: { withCa?: boolean; netns?: { name: string; host: string } }): Promise<ClusterNode>;
  /** A user client certificate from the cluster CA (not a node's). */
  userCert(name: string): Pem;
}

export function makeCluster(t: Teardown, redisUrl: string, base: Record<string, unknown> = {}): TestCluster {
  const dir = mkdtempSync(join(tmpdir(), 'oneport-cluster-'));
  const ca = createCa();
  const agent = new Agent({ connect: { ca: ca.cert, servername: 'localhost' } });
  const nodes: ClusterNode[] = [];
  t.teardown(async () => {
    for (const n of nodes) n.kill('SIGKILL');
    await Promise.all(nodes.map((n) => n.exited()));
    await agent.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return {
    ca,
    dir,
    redisUrl,
    agent,
    userCert: (name) => issueClientCert(ca, name),
    async start(id, extra = {}, opts = {}) {
      const state = join(dir, id);
      mkdirSync(state, { recursive: true, mode: 0o700 });
      if (opts.withCa ?? true) {
        writeFileSync(join(state, 'ca.pem'), ca.cert);
        writeFileSync(join(state, 'ca-key.pem'), ca.key, { mode: 0o600 });
      }
      const cfg = {
        nodeId: id,
        listen: `${opts.netns?.host ?? '127.0.0.1'}:0`,
        state,
        demo: { enabled: false },
        log: { level: 'debug' },
        // One process per node unless a test asks for workers (test/cluster/*workers*): three
        // nodes of three processes each would crowd a 2-core machine.
        workers: 1,
        ...base,
        ...extra,
        cluster: { redis: redisUrl, ...(base.cluster as object), ...(extra.cluster as object) },
        // Echo servers stand in for consoles: no protocol check unless a test asks for it.
        tunnel: { protocolCheck: false, ...(base.tunnel as object), ...(extra.tunnel as object) },
      };
      writeFileSync(join(state, 'config.json'), JSON.stringify(cfg));
      const node = await spawnNode(id, state, join(state, 'config.json'), agent, opts.netns);
      nodes.push(node);
      return node;
    },
  };
}

async function spawnNode(id: string, state: string, config: string, agent: Agent, netns?: { name: string; host: string }): Promise<ClusterNode> {
  const argv = [process.execPath, '--import', 'tsx', CLI, 'serve', '--config', config];
  // `ip netns exec` execs the node in place: the child's pid is the gateway's (signals reach it).
  if (netns) argv.unshift('ip', 'netns', 'exec', netns.name);
  const proc = spawn(argv[0]!, argv.slice(1), {
    cwd: ROOT,
    env: { ...process.env, ONEPORT_STATE: state },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: LogLine[] = [];
  const waiters = new Set<{ pred: (l: LogLine) => boolean; resolve: (l: LogLine) => void; after: number }>();
  let stderr = '';
  onJsonLines<LogLine>(proc.stdout!, (parsed) => {
    logs.push(parsed);
    for (const w of [...waiters]) {
      if (logs.length - 1 >= w.after && w.pred(parsed)) {
        waiters.delete(w);
        w.resolve(parsed);
      }
    }
  });
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (c: string) => {
    stderr = (stderr + c).slice(-4000);
  });
  let exitCode: number | null | undefined;
  const exit = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve((exitCode = code))));

  const waitFor = (pred: (l: LogLine) => boolean, timeoutMs = 15_000, opts: { after?: number } = {}): Promise<LogLine> => {
    const after = opts.after ?? 0;
    const seen = logs.slice(after).find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const w = {
        pred,
        after,
        resolve: (l: LogLine) => {
          clearTimeout(timer);
          resolve(l);
        },
      };
      const timer = setTimeout(() => {
        waiters.delete(w);
        reject(new Error(`node ${id}: no matching log line within ${timeoutMs} ms (exit ${String(exitCode)}); stderr: ${stderr.slice(-800)}`));
      }, timeoutMs);
      waiters.add(w);
    });
  };

  const listening = await Promise.race([
    waitFor((l) => l.event === 'listening', 30_000),
    exit.then((code) => {
      throw new Error(`node ${id} exited (${String(code)}) before listening: ${stderr}`);
    }),
  ]);
  const port = Number(listening.port);
  const host = netns?.host ?? '127.0.0.1';
  const node: ClusterNode = {
    id,
    state,
    port,
    host,
    address: `${host}:${port}`,
    proc,
    logs,
    waitFor,
    api: <T>(method: string, path: string, opts: { body?: unknown; token?: string } = {}) =>
      apiCall<T>(agent, `https://${host}:${port}`, method, path, { ...opts, timeoutMs: 10_000 }),
    admin: () => openAdmin(state),
    kill: (signal = 'SIGKILL') => {
      if (exitCode === undefined) proc.kill(signal);
    },
    exited: () => exit,
    async stop() {
      if (exitCode !== undefined) return;
      proc.kill('SIGTERM');
      await exit;
    },
  };
  return node;
}

/** When a log line was written (ms since the epoch), whether pino wrote the time as a number or a string. */
export function logTime(l: { time?: unknown }): number {
  return typeof l.time === 'number' ? l.time : Date.parse(String(l.time));
}

/** The first node that logs `leader-elected` (after line `after[i]` of node i's log). */
export function electedLeader(nodes: readonly ClusterNode[], after: readonly number[] = [], timeoutMs = 20_000): Promise<ClusterNode> {
  return Promise.race(nodes.map((n, i) => n.waitFor((l) => l.event === 'leader-elected', timeoutMs, { after: after[i] ?? 0 }).then(() => n)));
}

/**
 * Create admin `root` through `node`'s control socket (as the machine's administrator; forwarded
 * to the leader when `node` follows), retrying while the cluster has no leader or no Redis, then
 * log in on `loginAt` (default: the same node). Returns the session token.
 */
export async function adminToken(node: ClusterNode, loginAt: ClusterNode = node): Promise<string> {
  const admin = await node.admin();
  await eventually(async () => {
    try {
      return await admin.putUser('root', { password: 'root-password-1', roles: ['admin'] });
    } catch (err) {
      if (/leader|directory/i.test(String(err))) return undefined;
      throw err;
    }
  }, 15_000, 'admin user');
  const r = await loginAt.api<{ token: string }>('POST', '/api/login', { body: { user: 'root', password: 'root-password-1' } });
  if (r.status !== 200) throw new Error(`admin login: ${r.status}`);
  return r.body.token;
}

/**
 * Every node sees VM `vm` on `owner`, and every node up. An entry node relays a new `oneport.v1`
 * session to the owner only once it sees the owner up (before, it holds the session itself), so a
 * test about where sessions are held waits for both.
 */
export async function seenEverywhere(nodes: readonly ClusterNode[], token: string, vm: string, owner: string, timeoutMs = 15_000): Promise<void> {
  for (const n of nodes) {
    await eventually(async () => ((await n.api<{ node?: string }>('GET', `/api/vms/${vm}`, { token })).body.node === owner ? true : undefined), timeoutMs, `${vm} on ${owner} seen on ${n.id}`);
    await eventually(async () => {
      const view = await n.api<{ nodes: Array<{ state: string }> }>('GET', '/api/cluster', { token });
      return view.body.nodes.length === nodes.length && view.body.nodes.every((x) => x.state === 'up') ? true : undefined;
    }, timeoutMs, `${nodes.length} nodes up on ${n.id}`);
  }
}

export interface TwoNodes {
  readonly cluster: TestCluster;
  readonly a: ClusterNode;
  readonly b: ClusterNode;
  /** A fresh RDP console ticket for alice and VM "win", asked for at node `at`. */
  ticket(at: ClusterNode): Promise<string>;
}

/**
 * Two gateway processes on a real redis-server, user alice, and VM "win" (RDP at `consolePort`)
 * owned by the first node; returns once both nodes see the VM and each other up.
 */
export async function twoNodesWithWin(t: { teardown(fn: () => unknown): void }, consolePort: number): Promise<TwoNodes> {
  const redis = await startRedis(t);
  const cluster = makeCluster(t, redis.url);
  const a = await cluster.start('na');
  const b = await cluster.start('nb');
  const leader = await electedLeader([a, b]);
  const token = await adminToken(leader);
  await leader.api('PUT', '/api/users/alice', { token, body: { password: 'alice-password-1' } });
  const put = await leader.api('PUT', '/api/vms/win', { token, body: { node: a.id, endpoints: [{ protocol: 'rdp', host: '127.0.0.1', port: consolePort }], users: ['alice'] } });
  if (put.status !== 200) throw new Error(`PUT /api/vms/win: ${put.status}`);
  await seenEverywhere([a, b], token, 'win', a.id);
  return {
    cluster,
    a,
    b,
    async ticket(at) {
      const alice = (await at.api<{ token: string }>('POST', '/api/login', { body: { user: 'alice', password: 'alice-password-1' } })).body.token;
      return (await at.api<{ ticket: string }>('POST', '/api/desktops/win/tickets', { token: alice, body: { protocol: 'rdp' } })).body.ticket;
    },
  };
}
