/**
 * The primary of a node with workers (README "Workers"; config `workers`). It serves no tunnel
 * itself; it holds what there is one of per node:
 *
 * - in a cluster (`cluster.redis`): the node's leader lease, its membership entry and heartbeat,
 *   the process watch, failover and recovery hooks (cluster.ts), the drain's VM moves, and the
 *   node's one mirror of the directory: each worker sees the cluster through it (remote-cluster.ts),
 *   holds a copy of that mirror fed over IPC (feed.ts, fed-directory.ts) and writes through it,
 *   and redeems tickets in Redis itself;
 * - the one port: it accepts (the kernel never wakes a worker for a connection), admits or refuses
 *   the connection on the node-wide per-address counts and cap (admission.ts), and passes the
 *   socket, unread, to the worker with the fewest connections. The listening socket stays here, so
 *   a same-host restart (SIGUSR2) passes it on as with one process, and a replaced worker needs
 *   nothing from it;
 * - outside a cluster, the embedded directory (the only writer of its files) and the memory auth
 *   store: workers read a replica of the directory and redeem tickets here, over IPC (remote.ts);
 * - the login and ticket budgets, the TLS session ticket key (one for all workers, so a client
 *   resumes its TLS session on any of them), where each parked `oneport.v1` session is held;
 * - the control socket (each connection is passed to a worker, which answers the API), the demo
 *   desktop, /metrics summed over the workers;
 * - the node's lifecycle: a drain (SIGTERM, SIGINT, `oneport node drain`) drains every worker; a
 *   worker that dies is replaced, and only its own connections are lost.
 */
import nodeCluster, { type Worker } from 'node:cluster';
import net from 'node:net';
import { readFileSync, rmSync } from 'node:fs';
import { AggregatorRegistry, Counter, Gauge } from 'prom-client';
import { type Config, parseListen } from '../config.js';
import { formatHostPort } from '../hostport.js';
import { ensureState } from '../state.js';
import { MemoryDirectory } from '../directory/memory.js';
import { DirectoryFeed } from './feed.js';
import type { FedWriteReply } from './fed-directory.js';
import type { Directory, DirectoryChange } from '../directory/directory.js';
import type { Cluster } from '../cluster/cluster.js';
import type { ClusterNote } from './remote-cluster.js';
import { workerName } from './through.js';
import { moveOwnVms } from '../drain.js';
import { MemoryAuthStore } from '../auth/store.js';
import { AttemptLimiter } from '../auth/limits.js';
import { ConnectionCounts } from '../admission.js';
import { addressKey } from '../address.js';
import { normaliseAddress } from '../conninfo.js';
import { Metrics } from '../metrics.js';
import { type Logger, RateLimitedLog } from '../log.js';
import { isListed, serverFd, trustedProxies } from '../listener.js';
import { bindControlSocket } from '../control.js';
import { TICKET_KEY_ROTATE_MS, newTicketKey } from '../tls-tickets.js';
import { startRfbServer, type RfbServer } from '../demo/rfb.js';
import { advertisedAddress, announceDemo, ensureDemo, joinCluster, joinWithToken, openMirror, redisOptions } from '../server.js';
import { DirectoryUnavailableError, directoryFreshness } from '../directory/redis.js';
import { type Channel, Rpc } from './ipc.js';
import { DIRECTORY_WRITES, NodeSessionCounts, STORE_OPS } from './remote.js';
import type { CountedSession } from '../tunnel/session-caps.js';
import type { SessionCapValues } from '../tunnel/policy.js';
import { type Hello, workerSocket } from './worker.js';

export interface PrimaryOptions {
  readonly workers: number;
  readonly log: Logger;
  /** Cluster mode: a join token (cluster/join.ts), else `cluster.joinTokenFile` is read. */
  readonly joinToken?: string;
  /** Same-host restart: the listening socket a predecessor passed on. */
  readonly listenFd?: number;
  readonly onBound?: () => void;
  readonly announce?: (text: string) => void;
}

export interface Primary {
  readonly log: Logger;
  readonly url: string;
  listenFd(): number | undefined;
  /** Every worker drains (drain.ts); resolves once all stopped and the primary closed. */
  drain(opts: { moveVms?: boolean; cause: string }): Promise<void>;
  /** Same-host restart, once the successor accepts: stop accepting, every worker hands off. */
  handOff(): Promise<void>;
  readonly stopped: Promise<void>;
}

interface Slot {
  readonly worker: Worker;
  readonly rpc: Rpc;
  readonly startedAt: number;
  /** It asked for the directory: directory changes go to it from then on. */
  hello: boolean;
  ready: boolean;
  /** Connections (and parked sessions) counted for it, per client address. */
  readonly held: Map<string, number>;
  open: number;
  /** Its tunnels, as it last said (cluster mode: the node's heartbeat reports the sum). */
  tunnels: number;
}

/** How long a starting node waits for its workers. */
const WORKERS_START_MS = 60_000;
/** A worker that dies sooner than this after its start is replaced after a pause (no crash loop at full speed). */
const EARLY_DEATH_MS = 10_000;
const RESPAWN_PAUSE_MS = 1000;
/** Past the drain period, workers still running are killed. */
const DRAIN_SLACK_MS = 10_000;
/** RD Gateway pairs waiting for their IN request, node-wide (each worker also has rdg.maxUnpaired). */
const MAX_RDG_PAIRS = 100_000;
/** The primary's answer to /metrics waits this long for each worker. */
const METRICS_TIMEOUT_MS = 5000;

export async function runPrimary(config: Config, opts: PrimaryOptions): Promise<Primary> {
  const { log } = opts;
  const redisTarget = config.cluster.redis;
  const redis = redisTarget !== undefined ? redisOptions(redisTarget, config.cluster.redisCa ? readFileSync(config.cluster.redisCa, 'utf8') : undefined) : undefined;
  const joinToken = opts.joinToken ?? (config.cluster.joinTokenFile !== undefined ? readFileSync(config.cluster.joinTokenFile, 'utf8') : undefined);
  if (redis !== undefined && joinToken !== undefined) await joinWithToken(config, redis, joinToken, log);
  const state = ensureState(config.state, config.serverNames);
  for (const what of state.created) log.info({ event: 'state-created', state: config.state }, `created ${what}`);
  for (const warning of state.warnings) log.warn({ event: 'state-warning', state: config.state }, warning);
  const metrics = new Metrics({ defaultMetrics: true });
  // Cluster mode: the node's one lease and membership entry, and its one mirror of the directory
  // (the failover work's, and what the workers copy: feed.ts); each worker redeems tickets in Redis
  // itself. The workers start while the mirror loads, and copy it once it is open.
  const core = redis !== undefined ? await joinCluster(config, state, redis, { log, metrics }) : undefined;
  const cluster = core?.own;
  // The workers' directories are copies of that mirror (feed.ts): the node reads Redis once.
  const feed = core ? new DirectoryFeed() : undefined;
  const mirror = core ? openMirror(config, state, redis!, core, log, feed).then((d) => ({ d }), (e: unknown) => ({ e })) : undefined;
  let mirrorOpen = false;
  // Embedded mode: the directory and the auth store are here, the workers' over IPC. In cluster
  // mode `dir` is the mirror, set once loaded (before the port opens and the cluster starts).
  // (Until then an empty stand-in: nothing reads it before, the hello of cluster workers carries no directory.)
  let dir: Directory = mirror ? new MemoryDirectory(undefined) : new MemoryDirectory(state.paths.directory);
  if (!mirror) await (dir as MemoryDirectory).flush();
  /** Why the mirror did not open, once it failed (the start gives up without waiting for the workers, which wait for it). */
  let mirrorFailed: { e: unknown } | undefined;
  void mirror?.then((m) => {
    if ('e' in m) {
      mirrorFailed = m;
      return;
    }
    dir = m.d;
    mirrorOpen = true;
    feed!.open(m.d);
  });
  const store = core ? undefined : new MemoryAuthStore({ revocationsFile: state.paths.revokedSessions });
  const counts = new ConnectionCounts(config.limits);
  const limiters = new Map<string, AttemptLimiter>();
  const holders = new Map<string, number>();
  const sessionCounts = new NodeSessionCounts();
  /** RD Gateway legacy pairs: which worker holds the OUT request of each, until when. */
  const rdgOuts = new Map<string, { worker: number; until: number }>();
  const trusted = trustedProxies(config.proxyProtocol.trusted);
  const noisyLog = new RateLimitedLog();
  const workerConnections = new Gauge({ name: 'oneport_worker_connections', help: 'Client connections (and parked sessions) counted for each worker process', labelNames: ['worker'] as const, registers: [metrics.registry] });
  const workerRestarts = new Counter({ name: 'oneport_worker_restarts_total', help: 'Worker processes replaced after they died', registers: [metrics.registry] });
  new Gauge({ name: 'oneport_workers', help: 'Worker processes serving the port', registers: [metrics.registry], collect() { this.set([...slots.values()].filter((s) => s.ready).length); } });

  let ticketKey = newTicketKey();
  const slots = new Map<number, Slot>();
  let stopping = false;
  let drainOpts: { moveVms?: boolean; cause: string } | undefined;
  let handingOff = false;
  let allGone: (() => void) | undefined;
  let rr = 0;

  const broadcast = (method: string, args: unknown): void => {
    for (const s of slots.values()) if (s.hello) s.rpc.note(method, args);
  };
  if (!core) {
    dir.on('change', (c: DirectoryChange) => {
      const record = c.kind === 'keys' ? dir.keys() : c.kind === 'user' ? dir.getUser(c.name) : dir.getVm(c.name);
      broadcast('dir-change', record === undefined ? { change: c } : { change: c, record });
    });
  }
  /** What the workers see of the cluster (remote-cluster.ts): sent on every change of leader and every half heartbeat. */
  const clusterNote = (c: Cluster): ClusterNote => ({ leader: c.leader() ?? null, highestEpoch: c.highestEpoch(), leads: c.isLeader(), nodes: c.nodes() });
  let viewTimer: NodeJS.Timeout | undefined;
  if (cluster) {
    const tell = (): void => broadcast('cluster', clusterNote(cluster));
    for (const event of ['leader', 'elected', 'stepped-down'] as const) cluster.lease.on(event, tell);
    viewTimer = setInterval(tell, Math.max(50, Math.floor(config.cluster.heartbeatMs / 2)));
    viewTimer.unref();
  }
  /** The primary's directory: always fresh when embedded; the mirror's age in a cluster. */
  const directoryState = (): { version: number; ageMs: number; connected: boolean } => ({ version: dir.version(), ...directoryFreshness(dir) });
  /** The drain's VM moves (cluster mode): once for the node, whichever worker asks first. */
  let moving: Promise<number> | undefined;
  const rotation = setInterval(() => {
    ticketKey = newTicketKey();
    broadcast('ticket-key', ticketKey.toString('base64'));
  }, TICKET_KEY_ROTATE_MS);
  rotation.unref();

  const count = (s: Slot, key: string): void => {
    s.held.set(key, (s.held.get(key) ?? 0) + 1);
    s.open++;
  };
  /** Release one count `s` holds for `key`; a worker cannot release what it does not hold. */
  const release = (s: Slot, key: string): void => {
    const n = s.held.get(key) ?? 0;
    if (n === 0) return;
    if (n === 1) s.held.delete(key);
    else s.held.set(key, n - 1);
    s.open--;
    counts.remove(key);
  };

  const demo: RfbServer | undefined = config.demo.enabled ? await startRfbServer({ host: '127.0.0.1', port: 0 }) : undefined;
  if (demo && cluster) {
    // In a cluster only the leader writes; the first leader with a demo desktop creates it.
    cluster.lease.on('elected', () => {
      if (dir.getVm('demo') && dir.getUser('demo')) return;
      ensureDemo(dir, config.nodeId, demo.port, { onlyIfAbsent: true }).then((p) => announceDemo(p, opts.announce), (err: unknown) =>
        log.warn({ event: 'demo', err: (err as Error).message }, 'could not create the demo desktop'),
      );
    });
  } else if (demo) {
    announceDemo(await ensureDemo(dir, config.nodeId, demo.port), opts.announce);
  }

  const serve = (s: Slot): void => {
    const { rpc } = s;
    rpc.handle('hello', (): Hello => {
      s.hello = true;
      const ticket = ticketKey.toString('base64');
      if (cluster) return { cluster: clusterNote(cluster), ticketKey: ticket };
      return { snapshot: { version: dir.version(), users: dir.listUsers(), vms: dir.listVms(), keys: dir.keys() }, ticketKey: ticket };
    });
    rpc.on('ready', () => {
      s.ready = true;
      log.info({ event: 'worker-started', worker: s.worker.id, pid: s.worker.process.pid }, `worker ${s.worker.id} serving`);
      // Started while the node drains (a replacement): it drains too.
      if (handingOff) rpc.note('handoff');
      else if (drainOpts) rpc.note('drain', drainOpts);
    });
    rpc.handle('dir', async (a) => {
      const { op, args } = a as { op: string; args: unknown[] };
      if (!(DIRECTORY_WRITES as readonly string[]).includes(op) || !Array.isArray(args)) throw new Error(`no directory write ${op}`);
      if (core && !mirrorOpen) throw new DirectoryUnavailableError('directory: the node\'s mirror is still loading');
      const r = await (dir[op as (typeof DIRECTORY_WRITES)[number]] as (...x: unknown[]) => Promise<unknown>).apply(dir, args);
      // A worker's copy (fed-directory.ts) waits for this version; the embedded replica has every change before the answer.
      return core ? ({ r: r ?? null, v: dir.version() } satisfies FedWriteReply) : r;
    });
    const storeOp = (a: unknown): Promise<unknown> => {
      const { op, args } = a as { op: string; args: unknown[] };
      if (!store) throw new Error('cluster mode: workers redeem tickets in Redis themselves');
      if (!(STORE_OPS as readonly string[]).includes(op) || !Array.isArray(args)) throw new Error(`no store operation ${op}`);
      return (store[op as (typeof STORE_OPS)[number]] as (...x: unknown[]) => Promise<unknown>).apply(store, args);
    };
    rpc.handle('store', storeOp);
    rpc.on('store', (a) => void storeOp(a).catch(() => undefined));
    rpc.handle('limit', (a) => {
      const { name, points, op, key } = a as { name: string; points: number; op: string; key: string };
      if (!['check', 'count', 'take', 'refund', 'reset'].includes(op) || typeof key !== 'string') throw new Error(`no limiter operation ${op}`);
      let l = limiters.get(name);
      if (!l) limiters.set(name, (l = new AttemptLimiter(points)));
      return l[op as 'check'](key);
    });
    rpc.handle('admit', (a) => {
      const key = String((a as { key: string }).key);
      const refusal = counts.admit(key);
      if (refusal === undefined) count(s, key);
      return refusal ?? null;
    });
    rpc.on('add', (a) => {
      const key = String((a as { key: string }).key);
      counts.add(key);
      count(s, key);
    });
    rpc.on('release', (a) => release(s, String((a as { key: string }).key)));
    rpc.on('session', (a) => {
      const { id, held } = a as { id: string; held: boolean };
      if (typeof id !== 'string' || id.length > 128) return;
      if (held) holders.set(id, s.worker.id);
      else if (holders.get(id) === s.worker.id) holders.delete(id);
    });
    rpc.handle('holder', (id) => {
      const w = holders.get(String(id));
      const pid = w === undefined ? undefined : slots.get(w)?.worker.process.pid;
      return pid === undefined ? null : workerName(pid);
    });
    rpc.handle('session-admit', (a) => {
      const { session, caps } = a as { session: CountedSession; caps: SessionCapValues };
      return sessionCounts.admit(s.worker.id, session, caps);
    });
    rpc.on('session-release', (a) => sessionCounts.release(s.worker.id, String((a as { id: string }).id)));
    rpc.handle('rdg-announce', (a) => {
      const { id, ttlMs } = a as { id: string; ttlMs: number };
      const now = Date.now();
      if (rdgOuts.size >= MAX_RDG_PAIRS) for (const [k, v] of rdgOuts) if (v.until <= now) rdgOuts.delete(k);
      if (typeof id === 'string' && id.length <= 64 && rdgOuts.size < MAX_RDG_PAIRS) rdgOuts.set(id, { worker: s.worker.id, until: now + Math.min(Number(ttlMs) || 0, 60_000) });
    });
    rpc.on('rdg-forget', (a) => {
      const id = String((a as { id: string }).id);
      if (rdgOuts.get(id)?.worker === s.worker.id) rdgOuts.delete(id);
    });
    rpc.handle('rdg-locate', (id) => {
      const held = rdgOuts.get(String(id));
      if (!held || held.until <= Date.now()) return null;
      const pid = slots.get(held.worker)?.worker.process.pid;
      return pid === undefined ? null : workerName(pid);
    });
    rpc.on('logged-out', (sid) => broadcast('logged-out', String(sid)));
    rpc.on('tunnels', (n) => {
      s.tunnels = Number(n) || 0;
    });
    rpc.handle('cluster-status', () => {
      if (!cluster) throw new Error('not a cluster node');
      return cluster.statusNow();
    });
    rpc.handle('move-vms', (a) => {
      if (!cluster || !core) return 0;
      const deadline = Number((a as { deadline?: number }).deadline) || Date.now();
      moving ??= moveOwnVms({ dir, cluster, log, metrics, dispatcher: cluster.peers.agent, requestTimeoutMs: config.http.requestTimeoutMs }, deadline);
      return moving;
    });
    rpc.on('drain', (o) => void drain({ moveVms: (o as { moveVms?: boolean }).moveVms === true, cause: String((o as { cause?: string }).cause ?? 'api') }));
    rpc.handle('metrics', () => metricsText());
    rpc.handle('sessions', async () => (await askWorkers<unknown[]>('local-sessions', null)).flat().sort((a, b) => since(a).localeCompare(since(b))));
    rpc.handle('terminate', async (id) => (await askWorkers<unknown>('local-terminate', id)).find((a) => a !== null) ?? null);
    rpc.handle('terminate-user', async (name) => (await askWorkers<number>('local-terminate-user', name)).reduce((n, a) => n + (a ?? 0), 0));
  };

  const fork = (): Slot => {
    const worker = nodeCluster.fork();
    const s: Slot = { worker, rpc: new Rpc(worker as unknown as Channel), startedAt: Date.now(), hello: false, ready: false, held: new Map(), open: 0, tunnels: 0 };
    slots.set(worker.id, s);
    feed?.attach(s.rpc);
    serve(s);
    worker.on('error', () => undefined);
    worker.once('exit', (code, signal) => {
      slots.delete(worker.id);
      feed?.detach(s.rpc);
      s.rpc.close();
      // Its connections are gone with it: their counts and sessions too.
      for (const [key, n] of s.held) for (let i = 0; i < n; i++) counts.remove(key);
      s.held.clear();
      for (const [id, w] of holders) if (w === worker.id) holders.delete(id);
      sessionCounts.forget(worker.id);
      // A worker killed outright leaves its relay socket behind.
      if (worker.process.pid !== undefined) {
        rmSync(workerSocket(config.state, worker.process.pid), { force: true });
        rmSync(workerSocket(config.state, worker.process.pid, 'rdg'), { force: true });
      }
      if (stopping) {
        if (slots.size === 0) allGone?.();
        return;
      }
      workerRestarts.inc();
      const early = Date.now() - s.startedAt < EARLY_DEATH_MS;
      log.error({ event: 'worker-died', worker: worker.id, code, signal }, `worker ${worker.id} stopped (${signal ?? `exit ${code}`}): starting another; the other workers' tunnels go on`);
      setTimeout(() => {
        if (!stopping) fork();
      }, early ? RESPAWN_PAUSE_MS : 0).unref();
    });
    return s;
  };

  /** The ready worker with the fewest connections (ties: in turn). */
  const pick = (): Slot | undefined => {
    const ready = [...slots.values()].filter((s) => s.ready && s.worker.isConnected());
    if (ready.length === 0) return undefined;
    rr = (rr + 1) % ready.length;
    let best: Slot | undefined;
    for (let i = 0; i < ready.length; i++) {
      const s = ready[(rr + i) % ready.length]!;
      if (!best || s.open < best.open) best = s;
    }
    return best;
  };

  const refuse = (socket: net.Socket, address: string, result: string, message: string): void => {
    metrics.connections.inc({ result });
    if (noisyLog.take(`reject:${result}`) >= 0) log.info({ event: 'connection-rejected', reason: result.replace(/^rejected-/, ''), client: address }, message);
    socket.destroy();
  };
  const accept = (socket: net.Socket): void => {
    socket.on('error', () => socket.destroy());
    const address = normaliseAddress(socket.remoteAddress ?? 'unknown');
    if (counts.total >= config.limits.maxConnections) {
      metrics.connections.inc({ result: 'dropped-max-connections' });
      socket.destroy();
      return;
    }
    const key = addressKey(address);
    // As the listener does in one process: trusted PROXY balancers, and other nodes' hops, are counted, never refused.
    const refusal = isListed(trusted, address) || cluster?.isNodeAddress(address) ? (counts.add(key), undefined) : counts.admit(key);
    if (refusal) {
      refuse(socket, address, `rejected-${refusal}`, refusal === 'address-limit' ? 'connection refused: too many connections from this address' : 'connection refused: the port is nearly full and this address holds more than its share');
      return;
    }
    const s = pick();
    if (!s) {
      counts.remove(key);
      socket.destroy();
      return;
    }
    count(s, key);
    s.rpc.note('conn', { key }, socket, (err) => {
      if (!err) return;
      release(s, key);
      socket.destroy();
    });
  };

  /** The same question to every ready worker (one that does not answer in time is left out). */
  const askWorkers = async <T>(method: string, args: unknown): Promise<T[]> =>
    (await Promise.all([...slots.values()].filter((w) => w.ready).map((w) => w.rpc.call<T>(method, args, METRICS_TIMEOUT_MS).then((v) => [v], () => [])))).flat();
  const since = (x: unknown): string => String((x as { since?: string }).since ?? '');

  const metricsText = async (): Promise<string> => {
    const parts = await Promise.all(
      [...slots.values()].filter((s) => s.ready).map((s) => s.rpc.call<unknown[]>('metrics', null, METRICS_TIMEOUT_MS).catch(() => undefined)),
    );
    // Only the workers alive now.
    workerConnections.reset();
    for (const s of slots.values()) workerConnections.set({ worker: String(s.worker.id) }, s.open);
    // The primary's own node-level gauges (kept as max / min over the processes, metrics.ts).
    const st = directoryState();
    metrics.directoryVersion.set(st.version);
    metrics.directoryAge.set(st.ageMs / 1000);
    metrics.directoryConnected.set(st.connected ? 1 : 0);
    if (cluster) {
      metrics.clusterLeader.set(cluster.isLeader() ? 1 : 0);
      metrics.clusterEpoch.set(cluster.leader()?.epoch ?? cluster.highestEpoch());
    }
    metrics.draining.set(drainOpts || handingOff ? 1 : 0);
    const own = await metrics.registry.getMetricsAsJSON();
    return AggregatorRegistry.aggregate([own, ...parts.filter((p): p is unknown[] => p !== undefined)] as never).metrics();
  };

  // The workers, then the port: the first connection finds a worker ready.
  nodeCluster.setupPrimary({ silent: false, serialization: 'advanced' });
  // In a cluster the workers copy the node's mirror: the time counts from when it is loaded.
  let startDeadline = Date.now() + WORKERS_START_MS;
  void mirror?.then(() => (startDeadline = Date.now() + WORKERS_START_MS));
  for (let i = 0; i < opts.workers; i++) fork();
  while ([...slots.values()].filter((s) => s.ready).length < opts.workers && !mirrorFailed) {
    if (Date.now() > startDeadline) {
      stopping = true;
      for (const s of slots.values()) s.worker.process.kill('SIGKILL');
      throw new Error(`workers: ${opts.workers} worker(s) did not start within ${WORKERS_START_MS} ms${mirror ? ' of the directory mirror\'s load' : ''}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  if (mirror) {
    const loaded = await mirror;
    if ('e' in loaded) {
      stopping = true;
      for (const s of slots.values()) s.worker.process.kill('SIGKILL');
      throw loaded.e;
    }
  }

  const listen = parseListen(config.listen);
  if (!listen) throw new Error(`bad listen address ${config.listen}`);
  const server = net.createServer({ pauseOnConnect: true }, accept);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.listenFd !== undefined ? { fd: opts.listenFd } : { host: listen.host, port: listen.port }, () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
  opts.onBound?.();
  const address = server.address() as net.AddressInfo;
  const control = net.createServer({ pauseOnConnect: true }, (socket) => {
    socket.on('error', () => socket.destroy());
    const s = pick();
    if (!s) {
      socket.destroy();
      return;
    }
    s.rpc.note('control', null, socket, (err) => err && socket.destroy());
  });
  await bindControlSocket(control, state.paths.controlSocket, opts.listenFd !== undefined ? 30_000 : 0);
  const anyAddress = address.address === '0.0.0.0' || address.address === '::';
  const bound = formatHostPort(address.address, address.port);
  if (cluster) {
    await cluster.start({
      dir,
      address: advertisedAddress(config, address),
      tunnels: () => [...slots.values()].reduce((n, w) => n + w.tunnels, 0),
      mirror: () => directoryState(),
    });
  }
  // Last, as in one process (server.ts): a node that says it listens is a member too.
  log.info(
    { event: 'listening', address: address.address, port: address.port, directory: dir.kind, node: config.nodeId, cluster: cluster !== undefined, workers: opts.workers },
    `oneport listening on ${bound} (${opts.workers} workers)`,
  );

  let markStopped!: () => void;
  const stopped = new Promise<void>((r) => (markStopped = r));
  let ending: Promise<void> | undefined;
  /** Wait for every worker to stop (killing those past the drain period), then close what is ours. */
  const end = (): Promise<void> =>
    (ending ??= (async () => {
      stopping = true;
      const gone = new Promise<void>((r) => (allGone = r));
      if (slots.size === 0) allGone?.();
      const backstop = setTimeout(() => {
        for (const s of slots.values()) s.worker.process.kill('SIGKILL');
      }, config.shutdown.drainMs + config.shutdown.unreadyMs + DRAIN_SLACK_MS);
      await gone;
      clearTimeout(backstop);
      clearInterval(rotation);
      // Not awaited: a server counts the sockets it passed to workers as its own until they end.
      server.close();
      control.close();
      clearInterval(viewTimer);
      await demo?.close();
      // Leaves the membership: the node is gone for the others now, not a heartbeat timeout later.
      await cluster?.stop();
      await store?.close();
      await dir.close();
      log.info({ event: 'stopped' }, 'stopped');
      log.flush?.();
      markStopped();
    })());
  const drain = (o: { moveVms?: boolean; cause: string }): Promise<void> => {
    if (!drainOpts && !handingOff) {
      drainOpts = o;
      stopping = true;
      log.info({ event: 'drain-started', cause: o.cause, workers: slots.size }, `draining (${o.cause}): every worker`);
      broadcast('drain', o);
    }
    return end();
  };
  const handOff = (): Promise<void> => {
    if (!drainOpts && !handingOff) {
      handingOff = true;
      stopping = true;
      // The successor accepts on the same socket from now on.
      server.close();
      control.close();
      log.info({ event: 'handed-off', workers: slots.size }, 'the successor accepts on the port now: every worker sends its clients over');
      broadcast('handoff', null);
    }
    return end();
  };
  return {
    log,
    url: `https://${anyAddress ? formatHostPort('localhost', address.port) : bound}/`,
    listenFd: () => serverFd(server),
    drain,
    handOff,
    stopped,
  };
}
