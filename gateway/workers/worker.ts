/**
 * One worker of a node (README "Workers"): a whole gateway (server.ts) that binds nothing. The
 * primary accepts on the one port and passes each connection here with the client address it
 * was counted under; the embedded directory, the auth store, the login budgets, the per-address
 * counts and the TLS ticket key are the primary's (remote.ts). What stays here: the tunnels,
 * the parked `oneport.v1` sessions and their replay bytes.
 *
 * A parked session lives in the worker that opened it; its client usually comes back on another
 * worker. Each worker serves resumes on a Unix socket in the state folder (`workers/<pid>.sock`,
 * mode 0600): the worker the client reached asks the primary which worker holds the session and
 * relays the leg there, like the relay between nodes (cluster/relay.ts). The holder checks the
 * resume token as for any resume.
 */
import nodeCluster from 'node:cluster';
import http from 'node:http';
import net from 'node:net';
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import type { Config } from '../config.js';
import { keyRingSeal, startGateway } from '../server.js';
import { createLogger } from '../log.js';
import { TicketKeys } from '../tls-tickets.js';
import { OneportError } from '../errors.js';
import { revokeApiSession } from '../tunnel/revoke.js';
import { resumeSession } from '../tunnel/resume.js';
import { createWebSocketServer } from '../http/websocket.js';
import { guard } from '../http/guard.js';
import { spliceToHolder } from '../cluster/relay.js';
import { spliceRelay } from '../cluster/rdg-link.js';
import { refreshGauges, terminate } from '../http/api.js';
import { type TunnelSummary, summarize } from '../tunnel/registry.js';
import { type Channel, Rpc } from './ipc.js';
import { ensureNodeCert, ensureState } from '../state.js';
import { type ClusterNote, RemoteCluster } from './remote-cluster.js';
import { FedDirectory } from './fed-directory.js';
import { workerName, workerPid } from './through.js';
import { type ChangeNote, type DirectorySnapshot, RemoteAuthStore, RemoteCounts, RemoteLimiter, RemoteSessionCounter, WorkerDirectory } from './remote.js';

/** What the primary answers a starting worker. */
export interface Hello {
  /** The embedded directory (none in cluster mode: each worker mirrors Redis itself). */
  readonly snapshot?: DirectorySnapshot;
  /** Cluster mode: the primary's view of the cluster. */
  readonly cluster?: ClusterNote;
  /** The TLS session ticket key, base64. */
  readonly ticketKey: string;
}

/** The header that carries the client's address on a relayed resume (worker to worker only). */
const CLIENT_HEADER = 'x-oneport-client';
const RELAY_PATH = /^\/tunnel\/([^/?#]{1,200})\/([a-z]{1,10})$/;

/** Where the worker with process id `pid` serves relayed resumes (and, `rdg`, relayed RD Gateway IN requests). */
export function workerSocket(state: string, pid: number | string, what: 'resume' | 'rdg' = 'resume'): string {
  return join(state, 'workers', what === 'rdg' ? `${pid}.rdg.sock` : `${pid}.sock`);
}

export async function runWorker(config: Config): Promise<void> {
  const id = nodeCluster.worker?.id ?? process.pid;
  const rpc = new Rpc(process as unknown as Channel);
  const log = createLogger({ level: config.log.level, nodeId: config.nodeId, format: config.log.format }).child({ worker: id });
  const hello = await rpc.call<Hello>('hello');
  const dir = hello.snapshot ? new WorkerDirectory(rpc, hello.snapshot) : undefined;
  rpc.on('dir-change', (note) => dir?.apply(note as ChangeNote));
  let cluster: RemoteCluster | undefined;
  /** Cluster mode: a copy of the primary's directory mirror (the node reads Redis once). */
  let fed: FedDirectory | undefined;
  if (hello.cluster) {
    const state = ensureState(config.state, config.serverNames);
    const identity = { nodeId: config.nodeId, ca: state.ca.cert, cert: ensureNodeCert(state, config.nodeId, config.serverNames) };
    cluster = new RemoteCluster(rpc, config.nodeId, identity, { prefix: config.cluster.prefix, dialTimeoutMs: config.tunnel.dialTimeoutMs, leaseMs: config.cluster.leaseMs }, hello.cluster);
    const view = cluster;
    rpc.on('cluster', (note) => view.apply(note as ClusterNote));
    const seal = keyRingSeal(state, log, false);
    fed = await FedDirectory.open(rpc, seal ? (text) => seal.open(text) : undefined, log);
  }
  const tickets = new TicketKeys(Infinity, Date.now, Buffer.from(hello.ticketKey, 'base64'));
  rpc.on('ticket-key', (key) => tickets.replace(Buffer.from(key as string, 'base64')));
  const counts = new RemoteCounts(rpc);
  // By process id: a same-host restart's successor has workers with the same ids meanwhile.
  const socketPath = workerSocket(config.state, process.pid);
  let draining = false;
  /** Connections on this worker's RD Gateway relay socket: from the other workers only (mode 0600). */
  const fromWorkers = new WeakSet<net.Socket>();
  const gw = await startGateway(
    { ...config, demo: { ...config.demo, enabled: false } },
    {
      // Embedded: the primary's directory and auth store. Cluster mode: the copy of the primary's
      // mirror, and an auth store of its own (tickets are spent in Redis).
      ...(dir ? { directory: dir, store: new RemoteAuthStore(rpc) } : fed ? { directory: fed } : {}),
      logger: log,
      worker: {
        id,
        connections: counts,
        limiter: (name, points) => new RemoteLimiter(rpc, name, points),
        tickets,
        drain: (o) => {
          const started = !draining;
          rpc.note('drain', o);
          return { started };
        },
        loggedOut: (sid) => rpc.note('logged-out', sid),
        sessionRecord: {
          put: (sid, parked) => rpc.note('session', { id: sid, held: true, parked }),
          forget: (sid) => rpc.note('session', { id: sid, held: false }),
        },
        relay: {
          self: workerName(process.pid),
          holder: async (sid) => (await rpc.call<string | null>('holder', sid)) ?? undefined,
          // Sessions are held by the worker that took them (no owner elsewhere on one node).
          ownerOf: () => undefined,
          relay: async (holder, client, r) => {
            const target = workerSocket(config.state, workerPid(holder));
            const upstream = new WebSocket(`ws+unix:${target}:${r.path}`, ['oneport.v1'], {
              headers: { [CLIENT_HEADER]: r.client, ...(r.cookie !== undefined ? { cookie: r.cookie } : {}) },
              handshakeTimeout: config.tunnel.dialTimeoutMs,
              perMessageDeflate: false,
            });
            const relay = await spliceToHolder(upstream, client, holder, r, {}, () => new OneportError('ONEPORT_ERR_CONSOLE_UNREACHABLE', `worker ${holder} refused the relay`));
            log.info({ event: 'session-relayed', vm: r.vm, holder }, `oneport.v1 leg on ${r.vm} relayed to worker ${holder}`);
            return relay;
          },
        },
        metricsText: () => rpc.call<string>('metrics'),
        sessionCounter: new RemoteSessionCounter(rpc),
        rdgLink: {
          self: workerName(process.pid),
          announce: (pairId, ttlMs) => rpc.call('rdg-announce', { id: pairId, ttlMs }),
          forget: (pairId) => rpc.note('rdg-forget', { id: pairId }),
          locate: async (pairId) => (await rpc.call<string | null>('rdg-locate', pairId)) ?? undefined,
          relay: async (holder, socket, head, client) => {
            const upstream = net.connect(workerSocket(config.state, workerPid(holder), 'rdg'));
            upstream.on('error', () => upstream.destroy());
            await new Promise<void>((resolve, reject) => {
              upstream.once('connect', resolve);
              upstream.once('close', () => reject(new OneportError('ONEPORT_ERR_CONSOLE_UNREACHABLE', `worker ${holder} holding RDG_OUT_DATA did not take the relay`)));
            });
            if (socket.destroyed) {
              upstream.destroy();
              return;
            }
            spliceRelay(socket, upstream, head);
            log.info({ event: 'rdg-relayed', client, holder }, `RD Gateway IN request relayed to worker ${holder}, which holds its RDG_OUT_DATA`);
          },
        },
        fromWorker: (socket) => fromWorkers.has(socket),
        ...(cluster
          ? {
              cluster,
              // The primary moves the node's VMs once, whichever worker asks first; the others wait for the same moves.
              moveVms: (deadline: number) => rpc.call<number>('move-vms', { deadline }, Math.max(1000, deadline - Date.now() + 1000)),
            }
          : {}),
        sessions: {
          sessions: () => rpc.call<TunnelSummary[]>('sessions'),
          terminate: async (tid) => (await rpc.call<{ user: string; vm: string; ended: number } | null>('terminate', tid)) ?? undefined,
          terminateUser: (name) => rpc.call<number>('terminate-user', name),
        },
      },
    },
  );
  const { ctx } = gw;

  // Resumes relayed from the other workers: the holder answers as for a client of its own, without relaying again.
  mkdirSync(join(config.state, 'workers'), { recursive: true, mode: 0o700 });
  rmSync(socketPath, { force: true });
  const wss = createWebSocketServer(ctx);
  const relayServer = http.createServer((_req, res) => res.writeHead(404).end());
  relayServer.headersTimeout = ctx.config.tunnel.dialTimeoutMs;
  relayServer.requestTimeout = ctx.config.tunnel.dialTimeoutMs;
  relayServer.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    socket.on('error', () => socket.destroy());
    const url = new URL(req.url ?? '/', 'http://worker');
    const m = RELAY_PATH.exec(url.pathname);
    const session = url.searchParams.get('session');
    if (!m || session === null) {
      socket.destroy();
      return;
    }
    const client = String(req.headers[CLIENT_HEADER] ?? 'unknown').slice(0, 64);
    const request = { vmName: decodeURIComponent(m[1]!), protocol: m[2]!, resume: url.searchParams.get('resume'), session, received: url.searchParams.get('received'), client };
    wss.handleUpgrade(req, socket, head, (ws) => guard(ctx, 'websocket', resumeSession({ ...ctx.resume, relay: undefined }, ws, request), () => ws.terminate(), { client }));
  });
  await new Promise<void>((resolve, reject) => {
    relayServer.once('error', reject);
    relayServer.listen(socketPath, () => resolve());
  });
  chmodSync(socketPath, 0o600);
  // RD Gateway IN requests another worker relayed (its OUT request is held here): raw bytes, the
  // request head first, as a node relays to another node (cluster/rdg-link.ts).
  const rdgPath = workerSocket(config.state, process.pid, 'rdg');
  rmSync(rdgPath, { force: true });
  const rdgServer = net.createServer((socket) => {
    socket.on('error', () => socket.destroy());
    fromWorkers.add(socket);
    const timer = setTimeout(() => socket.destroy(), ctx.config.rdg.setupTimeoutMs);
    socket.once('data', (first: Buffer) => {
      clearTimeout(timer);
      socket.pause();
      gw.acceptRdgRelay(socket, first);
    });
  });
  await new Promise<void>((resolve, reject) => {
    rdgServer.once('error', reject);
    rdgServer.listen(rdgPath, () => resolve());
  });
  chmodSync(rdgPath, 0o600);

  rpc.on('conn', (args, handle) => {
    const key = (args as { key: string }).key;
    counts.adopted(key);
    gw.adopt(handle as net.Socket, key);
  });
  rpc.on('control', (_args, handle) => gw.acceptControl(handle as net.Socket));
  rpc.on('logged-out', (sid) => revokeApiSession({ tunnels: ctx.tunnels, metrics: ctx.metrics, log }, sid as string));
  rpc.on('drain', (o) => {
    draining = true;
    const opts = o as { moveVms?: boolean; cause?: string };
    void gw.drain({ ...(opts.moveVms !== undefined ? { moveVms: opts.moveVms } : {}), cause: opts.cause ?? 'api' });
  });
  rpc.on('handoff', () => {
    draining = true;
    void gw.handOff();
  });
  rpc.handle('metrics', () => {
    refreshGauges(ctx);
    return ctx.metrics.registry.getMetricsAsJSON();
  });
  // This worker's part of the node's session list and terminate calls (the primary asks every worker).
  rpc.handle('local-sessions', () => ctx.tunnels.clientTunnels().map((t) => summarize(t, ctx.config.nodeId)));
  rpc.handle('local-terminate', async (tid) => {
    const t = ctx.tunnels.clientTunnel(String(tid));
    if (!t) return null;
    return { user: t.user, vm: t.vm, ended: await terminate(ctx, [t]) };
  });
  rpc.handle('local-terminate-user', (name) => terminate(ctx, ctx.tunnels.clientTunnels(String(name))));

  // The primary decides when the node stops; signals sent to the whole group are its to answer.
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGUSR2'] as const) process.on(sig, () => undefined);
  const lastResort = (where: string) => (e: unknown): void => {
    ctx.metrics.internalErrors.inc({ where });
    log.error({ err: e, event: 'last-resort', where }, `${where}: kept serving`);
  };
  process.on('unhandledRejection', lastResort('unhandledRejection'));
  process.on('uncaughtException', lastResort('uncaughtException'));
  void gw.stopped.then(() => {
    relayServer.close();
    rdgServer.close();
    rmSync(socketPath, { force: true });
    rmSync(rdgPath, { force: true });
    rpc.close();
    process.exit(0);
  });
  // Cluster mode: the node's heartbeat reports its tunnels, summed over the workers by the primary.
  if (cluster) {
    const report = setInterval(() => rpc.note('tunnels', ctx.tunnels.size), Math.max(50, Math.floor(config.cluster.heartbeatMs / 2)));
    report.unref();
    void gw.stopped.then(() => clearInterval(report));
  }
  rpc.note('ready');
}
