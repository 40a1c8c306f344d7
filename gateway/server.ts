/**
 * One gateway node, assembled: state folder, directory, auth, the listener on the one port, the
 * HTTP servers behind it, the control socket, the demo desktop. `startGateway` is what the CLI's
 * `serve` runs and what integration tests start in-process.
 */
import tls from 'node:tls';
import type net from 'node:net';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { type Config, parseListen } from './config.js';
import { formatHostPort } from './hostport.js';
import type { GatewayContext, WorkerSessions } from './context.js';
import { type Directory, type UserRecord, toVmRecord, vmSchema } from './directory/directory.js';
import { MemoryDirectory } from './directory/memory.js';
import { type AuthStore, MemoryAuthStore } from './auth/store.js';
import { Authenticator } from './auth/authenticator.js';
import { hashPassword, randomPassword } from './auth/passwords.js';
import { Metrics } from './metrics.js';
import { type Logger, RateLimitedLog, createLogger } from './log.js';
import { TunnelRegistry } from './tunnel/registry.js';
import { Listener } from './listener.js';
import { SessionRegistry } from './tunnel/session-registry.js';
import type { ResumableSession } from './tunnel/session.js';
import { type Admission, ConnectionCounts } from './admission.js';
import type { LimiterFactory } from './auth/limits.js';
import type { SessionRelay } from './tunnel/resume.js';
import { followMoves } from './tunnel/reroute.js';
import { followRevocations, revokeApiSession } from './tunnel/revoke.js';
import { localReach } from './tunnel/reach.js';
import { VmWatcher } from './tunnel/watcher.js';
import { type SessionCounter, SessionCaps } from './tunnel/session-caps.js';
import { RedisSessionCounter } from './cluster/session-counts.js';
import { RedisSessionLocator } from './tunnel/session-locator.js';
import { clusterReach } from './cluster/reach.js';
import { watchHops } from './cluster/hop-watch.js';
import { relayTo } from './cluster/relay.js';
import { Relays } from './tunnel/relays.js';
import { rerouteMessage } from './tunnel/close.js';
import { createClearHttpServer, createTlsHttpServer } from './http/servers.js';
import { Portal } from './http/portal.js';
import { guard } from './http/guard.js';
import { handleNativeRdp } from './rdp/native.js';
import { type EnsuredState, ensureNodeCert, ensureState } from './state.js';
import { type LoadWatcher, RedisDirectory, createConnection, directoryFreshness } from './directory/redis.js';
import { RedisAuthStore } from './auth/redis-store.js';
import { Cluster } from './cluster/cluster.js';
import type { ClusterView } from './cluster/view.js';
import { NODE_SERVERNAME, type NodeIdentity } from './cluster/peers.js';
import type { Redis, RedisOptions } from 'ioredis';
import { certificateMatchesName } from '../certs/ca.js';
import { startRfbServer, type RfbServer } from './demo/rfb.js';
import { ControlServer } from './control.js';
import { AuditLog } from './audit.js';
import { type RdgClusterLink, RdgEntrance } from './rdg/entrance.js';
import { routeTls } from './rdg/route.js';
import { rdgClusterLink } from './cluster/rdg-link.js';
import { rdgThroughWorkers, throughWorkers } from './workers/through.js';
import { JoinService, JoinTokens, joinIfNeeded } from './cluster/join.js';
import { KeyRingSeal, sealKeyFromCa } from './cluster/seal.js';
import { drainNode } from './drain.js';
import { TLS_SESSION_TIMEOUT_S, TicketKeys } from './tls-tickets.js';

export interface GatewayOptions {
  /** Defaults to the embedded directory saved in the state folder. */
  readonly directory?: Directory;
  readonly store?: AuthStore;
  readonly logger?: Logger;
  /** Where the demo user's password is announced (once, when the user is created). */
  readonly announce?: (text: string) => void;
  /** Serve the control socket in the state folder (the CLI's way in). @default true */
  readonly controlSocket?: boolean;
  /** A join token (cluster/join.ts), e.g. from ONEPORT_JOIN_TOKEN; else `cluster.joinTokenFile` is read. */
  readonly joinToken?: string;
  /**
   * Same-host restart: the listening socket a predecessor passed on (a descriptor), taken over
   * instead of binding `listen`; the control socket is taken once the predecessor lets it go.
   */
  readonly listenFd?: number;
  /** Called as soon as the port accepts (before the cluster and control socket start). */
  readonly onBound?: () => void;
  /**
   * This gateway is one worker of several (workers/worker.ts): it binds nothing (the primary
   * accepts and passes connections in through `adopt`) and uses the primary's node-wide state.
   */
  readonly worker?: WorkerHooks;
}

/** What a worker gets from its primary (workers/worker.ts); the directory and store come as `directory` and `store`. */
export interface WorkerHooks {
  /** Shown in log lines and /metrics as `worker`. */
  readonly id: number;
  readonly connections: Admission;
  readonly limiter: LimiterFactory;
  readonly tickets: TicketKeys;
  /** Start the node's drain (every worker's), unless one is under way. */
  readonly drain: (opts: { moveVms: boolean; cause: string }) => { started: boolean };
  /** An API session was logged out: every worker ends its tunnels. */
  readonly loggedOut: (sid: string) => void;
  /** Where this worker's resumable sessions are recorded, so another worker can relay to them. */
  readonly sessionRecord: { put(id: string, parked: boolean): void; forget(id: string): void };
  readonly relay: SessionRelay;
  /** /metrics for the whole node. */
  readonly metricsText: () => Promise<string>;
  readonly sessions: WorkerSessions;
  /** Session caps counted over every worker (the primary's). */
  readonly sessionCounter: SessionCounter;
  /** The RD Gateway legacy pair across workers (an IN request relayed to the worker holding its OUT). */
  readonly rdgLink: RdgClusterLink;
  /** A connection from another worker of this node (a relayed RD Gateway IN request): trusted as a peer. */
  readonly fromWorker: (socket: net.Socket) => boolean;
  /**
   * Cluster mode: the primary's view of the cluster (it holds the lease and the membership); the
   * worker's directory (`directory`) is a copy of the primary's mirror, and it opens its own auth store.
   */
  readonly cluster?: ClusterView & { close(): Promise<void> };
  /** Cluster mode: the drain's VM moves, done once for the node by the primary; resolves with how many moved. */
  readonly moveVms?: (deadline: number) => Promise<number>;
}

export interface Gateway {
  readonly ctx: GatewayContext;
  readonly host: string;
  readonly port: number;
  /** https://host:port/ */
  readonly url: string;
  /** PEM of the CA that signed the self-made server certificate. */
  readonly caCert: string;
  /** The demo user's password when this start created it. */
  readonly demoPassword: string | undefined;
  readonly demo: RfbServer | undefined;
  /** Plain stop: stop accepting, let tunnels finish up to `drainMs`, then close the rest. Idempotent. */
  close(opts?: { drainMs?: number }): Promise<void>;
  /**
   * Graceful stop for an upgrade (drain.ts): unready, clients sent elsewhere, VMs moved when
   * asked, then stopped once its tunnels are gone or `drainMs` passed. Resolves when stopped.
   */
  drain(opts?: { moveVms?: boolean; drainMs?: number; cause?: string }): Promise<void>;
  /** Resolves once the gateway has stopped, whoever stopped it (a drain asked for over the API). */
  readonly stopped: Promise<void>;
  /** The listening socket's descriptor, for a successor (same-host restart). */
  listenFd(): number | undefined;
  /**
   * Same-host restart, once a successor accepts on the same socket: stop accepting here, let the
   * control socket go, send clients to reconnect (they land on the successor), then stop.
   */
  handOff(): Promise<void>;
  /** Workers: serve a connection the primary accepted and counted under `key`. */
  adopt(socket: net.Socket, key: string): void;
  /** Workers: an RD Gateway IN request another worker relayed here (its first bytes read). */
  acceptRdgRelay(socket: net.Socket, initial: Buffer): void;
  /** Workers: serve a control-socket connection the primary accepted. */
  acceptControl(socket: net.Socket): void;
}

/** web/ beside gateway/ in the sources, or two levels up from dist/gateway/ when built. */
const HERE = dirname(fileURLToPath(import.meta.url));
const WEB_ROOT = [join(HERE, '..', 'web'), join(HERE, '..', '..', 'web')].find((d) => existsSync(join(d, 'index.html'))) ?? join(HERE, '..', 'web');

export async function startGateway(config: Config, opts: GatewayOptions = {}): Promise<Gateway> {
  const worker = opts.worker;
  const log = opts.logger ?? createLogger({ level: config.log.level, nodeId: config.nodeId, format: config.log.format });
  const redisTarget = config.cluster.redis;
  // A directory given (tests) means no cluster, except a cluster worker's copy of its primary's mirror.
  const redis = redisTarget !== undefined && (!opts.directory || worker?.cluster !== undefined) ? redisOptions(redisTarget, config.cluster.redisCa ? readFileSync(config.cluster.redisCa, 'utf8') : undefined) : undefined;
  // A worker's primary joined before it started the workers.
  const joinToken = worker ? undefined : (opts.joinToken ?? (config.cluster.joinTokenFile !== undefined ? readFileSync(config.cluster.joinTokenFile, 'utf8') : undefined));
  if (redis !== undefined && joinToken !== undefined) await joinWithToken(config, redis, joinToken, log);
  const state = ensureState(config.state, config.serverNames);
  for (const what of state.created) log.info({ event: 'state-created', state: config.state }, `created ${what}`);
  for (const warning of state.warnings) log.warn({ event: 'state-warning', state: config.state }, warning);

  const metrics = new Metrics({ defaultMetrics: true });
  /** What the handlers see of the cluster; `ownCluster` when this process holds the lease and membership itself. */
  let cluster: ClusterView | undefined;
  let ownCluster: Cluster | undefined;
  let nodeIdentity: NodeIdentity | undefined;
  let redisConnection: Redis | undefined;
  let joins: JoinService | undefined;
  let dir: Directory;
  let store: AuthStore;
  // Tunnel ids are unique per node: with workers, each mints its own (`<node>:w<id>:<n>`).
  const tunnels = new TunnelRegistry(worker ? `${config.nodeId}:w${worker.id}` : config.nodeId);
  // oneport.v1 legs relayed to the node holding their session (cluster only).
  const relays = new Relays();
  if (redisTarget !== undefined && redis !== undefined) {
    // A worker's directory is a copy of its primary's mirror (workers/fed-directory.ts): the node reads Redis once.
    const deps = { log, metrics, ...(worker?.cluster ? { view: worker.cluster } : {}) };
    const core = worker && opts.directory ? { ...(await joinCluster(config, state, redis, deps)), dir: opts.directory } : await openClusterCore(config, state, redis, deps);
    const { conn, dir: redisDir } = core;
    nodeIdentity = core.identity;
    cluster = core.cluster;
    ownCluster = core.own;
    redisConnection = conn;
    dir = redisDir;
    store =
      opts.store ??
      (await RedisAuthStore.open({
        redis,
        prefix: `${config.cluster.prefix}auth:`,
        // A logout (or an ended console session) on another node ends the tunnels it opened here.
        onRevoked: (sid) => revokeApiSession({ tunnels, metrics, log }, sid),
      }).catch(async (err: unknown) => {
        // Nothing half-started stays behind: the directory's and the cluster's connections go too.
        await redisDir.close();
        conn.disconnect();
        throw err;
      }));
  } else {
    dir = opts.directory ?? new MemoryDirectory(state.paths.directory);
    if (dir instanceof MemoryDirectory) await dir.flush();
    store = opts.store ?? new MemoryAuthStore({ revocationsFile: state.paths.revokedSessions });
  }
  const directoryState = (): { connected: boolean; ageMs: number } => directoryFreshness(dir);
  const auth = new Authenticator(dir, store, { ...config.auth, ...config.limits }, metrics, worker?.limiter);
  const audit = new AuditLog({
    file: config.audit.file === false ? undefined : (config.audit.file ?? join(config.state, 'audit.log')),
    webhook: config.audit.webhook === undefined ? undefined : { url: config.audit.webhook, queue: config.audit.webhookQueue, timeoutMs: config.audit.webhookTimeoutMs },
    metrics,
    log,
  });
  if (redisConnection) {
    const conn = redisConnection;
    joins = new JoinService({
      tokens: new JoinTokens(conn, config.cluster.prefix),
      ca: state.ca,
      nodeId: config.nodeId,
      isAlive: async (id) => (await conn.exists(`${config.cluster.prefix}alive:${id}`)) === 1,
      log,
      audit,
      perAddressPerMinute: config.limits.joinsPerAddressPerMinute,
    });
  }
  const lifecycle = { listening: false, shuttingDown: false, unready: false };
  const noisyLog = new RateLimitedLog();
  let ownOrigins: string[] = [];
  // How consoles are reached, and where sessions live: the cluster's answers, or a single node's.
  const reach = cluster ? clusterReach(cluster, dir, config, metrics) : localReach({ dialTimeoutMs: config.tunnel.dialTimeoutMs, metrics });
  const locator = cluster && redisConnection ? new RedisSessionLocator(redisConnection, config.cluster.prefix, config.nodeId) : undefined;
  const watcher = new VmWatcher(dir);
  // Session caps: counted in memory on one node, in Redis across a cluster.
  const caps = new SessionCaps({
    dir,
    defaults: config.limits,
    counter:
      cluster && redisConnection
        ? new RedisSessionCounter({
            redis: redisConnection,
            prefix: config.cluster.prefix,
            // Each worker counts what it holds (a session part of which two workers hold counts once).
            nodeId: worker ? `${config.nodeId}#w${worker.id}` : config.nodeId,
            refreshMs: config.cluster.heartbeatMs,
            ttlMs: config.cluster.nodeTimeoutMs * 2,
            onRefreshError: (err) => log.debug({ event: 'session-caps-refresh-error', err: err.message }, 'session caps: refresh failed'),
          })
        : worker?.sessionCounter,
    metrics,
    log,
    noisyLog,
  });
  // Per-address counts: the listener's sockets, and parked sessions for the address that parked them.
  const connections: Admission = worker?.connections ?? new ConnectionCounts(config.limits);
  // Where each resumable session is held: the node in Redis (cluster), the worker in the primary (workers).
  const records = [
    ...(worker ? [worker.sessionRecord] : []),
    ...(locator
      ? [
          {
            put: (id: string, parked: boolean) => locator.put(id, parked ? config.tunnel.resume.graceMs : 24 * 3600 * 1000),
            forget: (id: string) => locator.forget(id),
          },
        ]
      : []),
  ];
  const sessions = new SessionRegistry<ResumableSession>({
    ...(records.length > 0
      ? {
          record: {
            put: (id: string, parked: boolean) => records.forEach((r) => r.put(id, parked)),
            forget: (id: string) => records.forEach((r) => r.forget(id)),
          },
        }
      : {}),
    caps: config.tunnel.resume,
    connections,
    onCap: (e) => {
      metrics.sessionCaps.inc({ cap: e.cap, action: e.action });
      if (noisyLog.take(`session-cap:${e.cap}:${e.action}`) >= 0) {
        log.info({ event: e.action === 'ended' ? 'session-capped' : 'session-refused', cap: e.cap, user: e.user, session: e.session }, e.action === 'ended' ? `parked session ended: ${e.cap} cap` : `new resumable session refused: ${e.cap} cap`);
      }
    },
  });
  // oneport.v1 sessions across the cluster: held at the VM's owner, resumed through any node.
  const nodeRelay: SessionRelay | undefined =
    cluster && locator && nodeIdentity
      ? {
        self: cluster.nodeId,
        // A holder that is not an up member took its sessions with it: "gone", reconnect fresh.
        holder: async (id) => {
          const h = await locator.holder(id);
          return h !== undefined && (h === cluster.nodeId || cluster.peerAddress(h) !== undefined) ? h : undefined;
        },
        ownerOf: (name) => {
          const vm = dir.getVm(name);
          if (!vm || vm.node === cluster.nodeId || vm.state === 'recovering' || vm.state === 'migrating') return undefined;
          return cluster.peerAddress(vm.node) !== undefined ? vm.node : undefined;
        },
        relay: (holder, ws, r) => {
          const vm = dir.getVm(r.vm);
          const vmAt = vm ? { node: vm.node, epoch: vm.epoch } : undefined;
          // Its side dropped: a holder still up whose port answers parked the session; else it died with it.
          const holderAlive = async (n: string): Promise<boolean> => {
            const address = cluster.peerAddress(n);
            return address !== undefined && (await cluster.peers.probe(address, HOLDER_PROBE_MS));
          };
          return relayTo({ identity: nodeIdentity!, handshakeTimeoutMs: config.tunnel.dialTimeoutMs, pingIntervalMs: config.tunnel.wsPingIntervalMs, log, relays, peerAddress: (n) => cluster.peerAddress(n), holderAlive, goneMessage: () => rerouteMessage(config.tunnel.rerouteRetryMs) }, holder, ws, { ...r, vmAt });
        },
      }
      : undefined;
  const ctx: GatewayContext = {
    config,
    dir,
    auth,
    store,
    metrics,
    log,
    noisyLog,
    tunnels,
    relays,
    lifecycle,
    ownOrigins: () => ownOrigins,
    cluster,
    directoryState,
    selfMadeCa: config.tls.certificates.length > 0 ? undefined : state.ca.cert,
    ...(worker ? { metricsText: worker.metricsText, workers: worker.sessions } : {}),
    connections,
    sessions,
    broker: { dir, auth, reach, watcher, tunnels, metrics, log, noisyLog, lifecycle, nodeId: cluster?.nodeId, holdMs: config.tunnel.holdMs, policy: { idleTimeoutMs: config.tunnel.idleTimeoutMs, maxSessionMs: config.tunnel.maxSessionMs }, caps, audit, self: config.nodeId, handshake: { timeoutMs: config.tunnel.handshakeTimeoutMs, protocolCheck: config.tunnel.protocolCheck }, halfCloseMs: config.tunnel.halfCloseMs },
    resume: {
      auth,
      dir,
      sessions,
      metrics,
      log,
      noisyLog,
      pingIntervalMs: config.tunnel.wsPingIntervalMs,
      relay: worker && nodeRelay ? throughWorkers(nodeRelay, worker.relay, config.nodeId) : (worker?.relay ?? nodeRelay),
    },    leaderLink: cluster ? { nodeId: cluster.nodeId, leaderPeer: () => cluster.leaderPeer(), dispatcher: cluster.peers.agent } : undefined,
    peerNode: (socket) => (worker?.fromWorker(socket) ? 'worker' : cluster?.peerNode(socket)),
    // Other nodes hear of it from the auth store's revocation feed (auth/redis-store.ts).
    loggedOut: worker ? worker.loggedOut : (sid) => revokeApiSession({ tunnels, metrics, log }, sid),
    audit,
    join: joins,
    drain: worker
      ? worker.drain
      : (o) => {
      const already = draining !== undefined || closing !== undefined;
      void drain({ moveVms: o.moveVms, cause: o.cause });
      return { started: !already };
    },
  };

  // Sessions follow their VM: a change of owner ends its tunnels here at once (clients reconnect).
  const stopFollowing = followMoves({ dir, tunnels, relays, metrics, log, rerouteRetryMs: config.tunnel.rerouteRetryMs });
  // Revocation reaches live tunnels: a deleted user, a changed password, an unassigned VM.
  const stopRevoking = followRevocations({ dir, tunnels, metrics, log });
  // A hop whose owner went silent to this node without being failed over (cut from its peers):
  // its tunnels end (clients reconnect) instead of waiting as long as the cut lasts.
  const stopWatchingHops =
    cluster && config.cluster.consoleDial === 'via-owner'
      ? watchHops({
          tunnels,
          self: config.nodeId,
          everyMs: Math.max(50, Math.floor(config.cluster.heartbeatMs / 2)),
          silentMs: config.cluster.nodeTimeoutMs,
          probeMs: Math.min(1000, config.cluster.nodeTimeoutMs),
          address: (node) => cluster.node(node)?.info.address,
          probe: (address, ms) => cluster.peers.probe(address, ms),
          rerouteRetryMs: config.tunnel.rerouteRetryMs,
          metrics,
          log,
        })
      : () => undefined;

  const contexts = buildSecureContexts(config, state.server, nodeIdentity, worker?.tickets);
  const tlsHttp = createTlsHttpServer(ctx, new Portal(WEB_ROOT));
  const clearHttp = createClearHttpServer(ctx);
  const nodeRdgLink = cluster && redisConnection ? rdgClusterLink(cluster, redisConnection, config.cluster.prefix, log) : undefined;
  const rdg = new RdgEntrance(ctx, worker && nodeRdgLink ? rdgThroughWorkers(nodeRdgLink, worker.rdgLink, config.nodeId) : (worker?.rdgLink ?? nodeRdgLink));
  const listener = new Listener(ctx, {
    // RD Gateway requests (RDG_OUT_DATA / RDG_IN_DATA) go to their own entrance; the rest is HTTPS.
    onTls: (s) => routeTls(s, config.http.headersTimeoutMs, { rdg: (sock, head) => rdg.handle(sock, head), http: (sock) => tlsHttp.emit('connection', sock) }),
    onHttp: (s) => {
      clearHttp.emit('connection', s);
      // The HTTP parser reads the handle directly; the replayed bytes wait in the stream buffer
      // until it flows again.
      s.resume();
    },
    // Native RDP: the entrance reads the opening itself; a failure it did not answer closes the connection.
    onRdp: (s) => guard(ctx, 'rdp', handleNativeRdp(ctx, s), () => s.destroy()),
    secureContext: contexts,
    // Nodes present their node certificates on the same port (cluster only).
    requestClientCert: cluster !== undefined,
    // Hops from other nodes carry many clients' tunnels: not held to the per-address limit.
    ...(cluster ? { exempt: (address: string) => cluster.isNodeAddress(address) } : {}),
  });

  let demo: RfbServer | undefined;
  let demoPassword: string | undefined;
  const announce = (password: string | undefined): void => announceDemo(password, opts.announce);
  // With workers, the primary serves the demo desktop.
  if (config.demo.enabled && !worker) {
    demo = await startRfbServer({ host: '127.0.0.1', port: 0 });
    if (cluster) {
      // In a cluster only the leader writes; the first leader with a demo desktop creates it.
      const port = demo.port;
      ownCluster?.lease.on('elected', () => {
        if (dir.getVm('demo') && dir.getUser('demo')) return;
        ensureDemo(dir, config.nodeId, port, { onlyIfAbsent: true }).then(announce, (err: unknown) =>
          log.warn({ event: 'demo', err: (err as Error).message }, 'could not create the demo desktop'),
        );
      });
    } else {
      demoPassword = await ensureDemo(dir, config.nodeId, demo.port);
      announce(demoPassword);
    }
  }

  const listen = parseListen(config.listen);
  if (!listen) throw new Error(`bad listen address ${config.listen}`);
  // A worker binds nothing: the primary holds the port and passes connections in.
  const address = worker ? { address: listen.host, port: listen.port, family: '' } : await listener.listen(listen.host, listen.port, opts.listenFd);
  lifecycle.listening = true;
  opts.onBound?.();
  const anyAddress = address.address === '0.0.0.0' || address.address === '::';
  const bound = formatHostPort(address.address, address.port);
  ownOrigins = config.serverNames.map((n) => `https://${formatHostPort(n, address.port)}`);
  if (address.port === 443) ownOrigins.push(...config.serverNames.map((n) => `https://${n}`));

  if (ownCluster) {
    await ownCluster.start({
      dir,
      address: advertisedAddress(config, address),
      tunnels: () => tunnels.size,
      mirror: () => {
        const st = directoryState();
        return { version: dir.version(), ageMs: st.ageMs, connected: st.connected };
      },
    });
  }

  let control: ControlServer | undefined;
  if (!worker && (opts.controlSocket ?? true)) {
    control = new ControlServer(ctx, state.paths.controlSocket);
    await control.listen(opts.listenFd !== undefined ? PREDECESSOR_CONTROL_WAIT_MS : 0);
  }
  if (worker) log.info({ event: 'worker-ready' }, `worker ${worker.id} ready`);
  else log.info(
    { event: 'listening', address: address.address, port: address.port, directory: dir.kind, node: config.nodeId, cluster: cluster !== undefined },
    `oneport listening on ${bound}`,
  );

  let draining: Promise<void> | undefined;
  const drain = (o: { moveVms?: boolean; drainMs?: number; cause?: string } = {}): Promise<void> =>
    (draining ??=
      closing ??
      (async () => {
        try {
          await drainNode(ctx, {
            moveVms: o.moveVms ?? config.shutdown.moveVms,
            drainMs: o.drainMs ?? config.shutdown.drainMs,
            unreadyMs: config.shutdown.unreadyMs,
            cause: o.cause ?? 'api',
            ...(worker?.moveVms ? { mover: worker.moveVms } : {}),
          });
        } catch (err) {
          log.error({ err, event: 'drain-failed' }, 'drain failed: stopping now');
        }
        await close({ drainMs: 0 });
      })());
  const handOff = (): Promise<void> =>
    (draining ??=
      closing ??
      (async () => {
        listener.handOff();
        // The successor binds the control socket's path once this one closed it.
        await control?.close();
        control = undefined;
        log.info({ event: 'handed-off', tunnels: tunnels.size }, 'the successor accepts on the port now: sending clients over');
        try {
          // Nothing new arrives here any more: tunnels still in setup open normally and are told on the next round.
          await drainNode(ctx, { moveVms: false, drainMs: config.shutdown.drainMs, unreadyMs: 0, cause: 'restart', refuse: false, resumeHere: true });
        } catch (err) {
          log.error({ err, event: 'drain-failed' }, 'drain failed: stopping now');
        }
        await close({ drainMs: 0 });
      })());
  let closing: Promise<void> | undefined;
  let markStopped!: () => void;
  const stopped = new Promise<void>((r) => (markStopped = r));
  const close = (closeOpts: { drainMs?: number } = {}): Promise<void> =>
    (closing ??= (async () => {
      lifecycle.shuttingDown = true;
      const drainMs = closeOpts.drainMs ?? config.shutdown.drainMs;
      log.info({ event: 'shutdown', tunnels: tunnels.size, drainMs }, 'stopping: no new connections; draining tunnels');
      const stopped = listener.stopAccepting();
      tlsHttp.closeIdleConnections();
      clearHttp.closeIdleConnections();
      let timer: NodeJS.Timeout | undefined;
      const empty = (): Promise<unknown> => Promise.all([tunnels.whenEmpty(), relays.whenEmpty()]);
      // New tunnels are refused from now on; those being set up still finish within the period.
      await Promise.race([Promise.all([tunnels.whenIdle(), relays.whenEmpty()]), new Promise<void>((r) => (timer = setTimeout(r, drainMs)))]);
      clearTimeout(timer);
      if (tunnels.size + relays.size > 0) log.info({ event: 'shutdown', tunnels: tunnels.size, relays: relays.size }, 'drain period over: closing remaining tunnels');
      tunnels.closeAll('shutdown');
      relays.closeAll(1001, 'gateway shutting down');
      await empty();
      tlsHttp.closeAllConnections();
      clearHttp.closeAllConnections();
      // Stops their timeout checks; they were never bound, so "not running" is expected.
      tlsHttp.close(() => undefined);
      clearHttp.close(() => undefined);
      listener.destroyAll();
      await stopped;
      await control?.close();
      stopFollowing();
      stopRevoking();
      stopWatchingHops();
      watcher.close();
      caps.close();
      await audit.close();
      await ownCluster?.stop();
      await worker?.cluster?.close();
      await demo?.close();
      await store.close();
      await dir.close();
      lifecycle.listening = false;
      ctx.metrics.draining.set(0);
      log.info({ event: 'stopped' }, 'stopped');
      log.flush?.();
      markStopped();
    })());

  return {
    ctx,
    host: address.address,
    port: address.port,
    url: `https://${anyAddress ? formatHostPort('localhost', address.port) : bound}/`,
    caCert: state.ca.cert,
    demoPassword,
    demo,
    close,
    drain,
    stopped,
    listenFd: () => listener.fd,
    handOff,
    adopt: (socket, key) => listener.adopt(socket, key),
    acceptRdgRelay: (socket, initial) => rdg.handle(socket as tls.TLSSocket, initial),
    acceptControl: (socket) => {
      control ??= new ControlServer(ctx, state.paths.controlSocket);
      control.accept(socket);
    },
  };
}

/** What a cluster node opens first: its Redis connection and its view of the cluster (joinCluster), then its directory mirror. */
export interface ClusterLink {
  /** The dedicated connection (lease, heartbeats, session records). */
  readonly conn: Redis;
  readonly identity: NodeIdentity;
  readonly cluster: ClusterView;
  /** The Cluster when this process holds the node's lease and membership (not a worker). */
  readonly own: Cluster | undefined;
}

export interface ClusterCore extends ClusterLink {
  readonly dir: RedisDirectory;
}

/** Connect to Redis and take part in the cluster (or, a worker, see it through `view`); not started yet. */
export async function joinCluster(config: Config, state: EnsuredState, redis: string | RedisOptions, deps: { log: Logger; metrics: Metrics; view?: ClusterView }): Promise<ClusterLink> {
  const { log, metrics, view } = deps;
  const target = config.cluster.redis!;
  // Once per node: a worker's primary said it already.
  if (!view) {
    for (const gap of redisExposure(target)) {
      log.warn({ event: 'redis-insecure', gap }, `Redis ${gap}: whoever reaches it can read the password hashes and rewrite the directory (users, roles, VM addresses); see README "Security"`);
    }
  }
  const identity = { nodeId: config.nodeId, ca: state.ca.cert, cert: ensureNodeCert(state, config.nodeId, config.serverNames) };
  const conn = createConnection(redis, { connectionName: 'oneport-cluster', commandTimeout: 1000, connectTimeout: 2000 });
  await connectAtStart(conn, target);
  const own = view ? undefined : new Cluster({ config, redis: conn, identity, log, metrics, epochFile: state.paths.epoch, signer: state.ca.key !== undefined });
  return { conn, identity, cluster: view ?? own!, own };
}

/** What seals the key ring in Redis: from the CA key, or the key a joined node was given; warns once per node (`warn`) when there is none. */
export function keyRingSeal(state: EnsuredState, log: Logger, warn: boolean): KeyRingSeal | undefined {
  const sealKey = state.ca.key !== undefined ? sealKeyFromCa(state.ca.key) : readSealKey(state.paths.sealKey);
  if (sealKey === undefined && warn) log.warn({ event: 'no-seal-key', file: state.paths.sealKey }, 'no seal key: a sealed key ring in Redis cannot be read (join again with a token)');
  return sealKey ? new KeyRingSeal(sealKey) : undefined;
}

/**
 * The directory mirror, fenced with the leader's token; the link's connection is closed if it
 * fails. `feed`: a node's primary, whose workers copy the mirror and serve the portal from their
 * copies (the primary's is kept without a per-user index).
 */
export async function openMirror(config: Config, state: EnsuredState, redis: string | RedisOptions, link: ClusterLink, log: Logger, feed?: LoadWatcher): Promise<RedisDirectory> {
  if (!link.own) throw new Error('openMirror: the process holding the node\'s lease opens its mirror (workers copy it)');
  const seal = keyRingSeal(state, log, true);
  return RedisDirectory.open({ redis, prefix: config.cluster.prefix, log, fence: link.own.fence(), ...(seal ? { seal } : {}), ...(feed ? { loads: feed, userIndex: false } : {}) }).catch((err: unknown) => {
    link.conn.disconnect();
    throw err;
  });
}

/** joinCluster, then openMirror. */
export async function openClusterCore(config: Config, state: EnsuredState, redis: string | RedisOptions, deps: { log: Logger; metrics: Metrics; view?: ClusterView }): Promise<ClusterCore> {
  const link = await joinCluster(config, state, redis, deps);
  return { ...link, dir: await openMirror(config, state, redis, link, deps.log) };
}

/** How long a successor waits for its predecessor to let the control socket go. */
const PREDECESSOR_CONTROL_WAIT_MS = 30_000;
/** How long a session holder's port gets to answer when a relay to it drops (as cluster/reach.ts's OWNER_PROBE_MS). */
const HOLDER_PROBE_MS = 500;

/** The seal key a joined node was given (base64 in `seal.key`), if it has one. */
function readSealKey(file: string): Buffer | undefined {
  if (!existsSync(file)) return undefined;
  const key = Buffer.from(readFileSync(file, 'utf8').trim(), 'base64');
  return key.length === 32 ? key : undefined;
}

/** Join the cluster with a token before the state folder is read (cluster/join.ts). */
export async function joinWithToken(config: Config, redis: string | RedisOptions, token: string, log: Logger): Promise<void> {
  const conn = createConnection(redis, { connectionName: 'oneport-join', commandTimeout: 2000, connectTimeout: 2000 });
  conn.on('error', () => undefined);
  try {
    await conn.connect();
    await joinIfNeeded({ root: config.state, nodeId: config.nodeId, names: config.serverNames, token, redis: conn, prefix: config.cluster.prefix, timeoutMs: config.tunnel.dialTimeoutMs * 2, log });
  } finally {
    conn.disconnect();
  }
}

/**
 * SNI: the first configured certificate whose names match; else the default (first) one.
 * Names are parsed once here, not per handshake; answers are cached per server name (bounded).
 */
const SESSION_ID_CONTEXT = 'oneport';

function buildSecureContexts(config: Config, selfMade: { cert: string; key: string }, node: NodeIdentity | undefined, shared: TicketKeys | undefined): (servername: string | undefined) => tls.SecureContext {
  const clientCa = node?.ca;
  // Session resumption: one rotating ticket key for every context (gateway/tls-tickets.ts); with
  // workers, the primary's key, so a client resumes on whichever worker it lands.
  const tickets = shared ?? new TicketKeys();
  // Nodes ask for NODE_SERVERNAME and get the node certificate; everyone else the server's.
  const nodeContext = node
    ? tickets.add(tls.createSecureContext({ cert: node.cert.cert, key: node.cert.key, ca: node.ca, minVersion: config.tls.minVersion, sessionIdContext: SESSION_ID_CONTEXT, sessionTimeout: TLS_SESSION_TIMEOUT_S }))
    : undefined;
  const pick = buildServerContexts(config, selfMade, clientCa, tickets);
  return (servername) => {
    tickets.check();
    return nodeContext && servername === NODE_SERVERNAME ? nodeContext : pick(servername);
  };
}

function buildServerContexts(config: Config, selfMade: { cert: string; key: string }, clientCa: string | undefined, tickets: TicketKeys): (servername: string | undefined) => tls.SecureContext {
  const pems = config.tls.certificates.length
    ? config.tls.certificates.map((c) => ({ cert: readFileSync(c.cert, 'utf8'), key: readFileSync(c.key, 'utf8') }))
    : [selfMade];
  const entries = pems.map((p) => ({
    matches: (name: string) => certificateMatchesName(p.cert, name),
    // With client certificates requested, OpenSSL refuses to resume a session (alert "internal
    // error") unless the context has a session id context.
    context: tickets.add(
      tls.createSecureContext({ cert: p.cert, key: p.key, minVersion: config.tls.minVersion, sessionIdContext: SESSION_ID_CONTEXT, sessionTimeout: TLS_SESSION_TIMEOUT_S, ...(clientCa ? { ca: clientCa } : {}) }),
    ),
  }));
  const fallback = entries[0]!.context;
  if (entries.length === 1) return () => fallback;
  const chosen = new Map<string, tls.SecureContext>();
  return (servername) => {
    if (!servername) return fallback;
    let ctx = chosen.get(servername);
    if (!ctx) {
      ctx = entries.find((e) => e.matches(servername))?.context ?? fallback;
      if (chosen.size < 1024) chosen.set(servername, ctx);
    }
    return ctx;
  };
}

/**
 * What the Redis connection leaves open: no password (anyone who reaches it reads the signing
 * keys) and no TLS (anyone on the path does). Warned at start, once each.
 */
export function redisExposure(r: NonNullable<Config['cluster']['redis']>): string[] {
  const gaps: string[] = [];
  if (typeof r === 'string') {
    let u: URL | undefined;
    try {
      u = new URL(r);
    } catch {
      return gaps;
    }
    if (!u.password) gaps.push('has no password (redis://user:password@...)');
    const loopback = /^(127\.|\[?::1\]?$|localhost$)/.test(u.hostname);
    if (u.protocol !== 'rediss:' && !loopback) gaps.push('is reached without TLS (rediss://)');
    return gaps;
  }
  if (r.password === undefined) gaps.push('has no password (cluster.redis.password)');
  if (!r.tls) gaps.push('is reached without TLS (cluster.redis.tls)');
  return gaps;
}

/** How long `serve` waits for Redis at start before it gives up and says why. */
const REDIS_START_DEADLINE_MS = 5000;

/**
 * The first connection to Redis, or a clear error. A URL fails on its own (refused, timed out);
 * through Sentinel ioredis retries forever (unreachable sentinels, an unknown master group), so
 * the start has a deadline and the error names the sentinels, the group and the last error.
 */
async function connectAtStart(conn: Redis, target: NonNullable<Config['cluster']['redis']>): Promise<void> {
  let lastError = '';
  conn.on('error', (e: Error) => {
    lastError = e.message;
  });
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${REDIS_START_DEADLINE_MS} ms`)), REDIS_START_DEADLINE_MS);
  });
  try {
    await Promise.race([conn.connect(), deadline]);
  } catch (err) {
    conn.disconnect();
    const why = lastError || (err as Error).message;
    if (typeof target === 'string') throw new Error(`cluster: cannot reach Redis: ${why}`, { cause: err });
    const sentinels = target.sentinels.map((x) => formatHostPort(x.host, x.port)).join(', ');
    throw new Error(`cluster: cannot reach Redis through Sentinel (sentinels ${sentinels}, master group "${target.name}"): ${why}`, { cause: err });
  } finally {
    clearTimeout(timer);
  }
}

/**
 * ioredis options from the config: a URL, or Sentinel with its options. With Sentinel, `tls`
 * covers both the master (enableTLSForSentinelMode) and the sentinels themselves (sentinelTLS).
 * (ioredis's failoverDetector, which follows `+switch-master`, was tried: with it a node's mirror
 * sometimes missed the master change in test/cluster/redis-outage.test.ts; not used.)
 */
export function redisOptions(r: NonNullable<Config['cluster']['redis']>, ca: string | undefined): string | RedisOptions {
  if (typeof r === 'string') {
    if (ca === undefined) return r;
    // A private CA for rediss://: spell the URL out as options so the CA can join them.
    const u = new URL(r);
    return {
      host: u.hostname.replace(/^\[|\]$/g, ''),
      port: Number(u.port || 6379),
      ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
      ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
      ...(u.pathname.length > 1 ? { db: Number(u.pathname.slice(1)) } : {}),
      ...(u.protocol === 'rediss:' ? { tls: { ca } } : {}),
    };
  }
  const tlsOptions = ca ? { ca } : {};
  const tls = r.tls ? { tls: tlsOptions, sentinelTLS: tlsOptions, enableTLSForSentinelMode: true } : {};
  return {
    sentinels: r.sentinels.map((s) => ({ host: s.host, port: s.port })),
    name: r.name,
    ...(r.username !== undefined ? { username: r.username } : {}),
    ...(r.password !== undefined ? { password: r.password } : {}),
    ...(r.sentinelUsername !== undefined ? { sentinelUsername: r.sentinelUsername } : {}),
    ...(r.sentinelPassword !== undefined ? { sentinelPassword: r.sentinelPassword } : {}),
    ...(r.db !== undefined ? { db: r.db } : {}),
    ...tls,
  };
}

/** Where the other nodes reach this node's port: `cluster.advertise`, else the bound address (bound to every address: the first server name). */
export function advertisedAddress(config: Config, bound: { address: string; port: number }): string {
  if (config.cluster.advertise !== undefined) return config.cluster.advertise;
  const anyAddress = bound.address === '0.0.0.0' || bound.address === '::';
  return anyAddress ? formatHostPort(config.serverNames[0] ?? 'localhost', bound.port) : formatHostPort(bound.address, bound.port);
}

/** The demo user's password, the one time it is made (stderr unless `to`). */
export function announceDemo(password: string | undefined, to?: (text: string) => void): void {
  if (password === undefined) return;
  (to ?? ((t) => process.stderr.write(t)))(
    `\n  oneport demo desktop ready: user "demo", password "${password}" (shown once; change it with \`oneport user add demo --password ...\`)\n\n`,
  );
}

/** VM "demo" on the built-in desktop, and user "demo" (created once, with a random password). */
export async function ensureDemo(dir: Directory, nodeId: string, port: number, opts: { onlyIfAbsent?: boolean } = {}): Promise<string | undefined> {
  const vm = toVmRecord(
    vmSchema.parse({
      name: 'demo',
      node: nodeId,
      endpoints: [{ protocol: 'vnc', host: '127.0.0.1', port, publishedPort: 5900 }],
      users: ['demo'],
    }),
  );
  const existing = dir.getVm('demo');
  if (!existing) await dir.putVm(vm);
  else if (!opts.onlyIfAbsent) await dir.putVm({ ...existing, node: nodeId, endpoints: vm.endpoints });
  if (dir.getUser('demo')) return undefined;
  const password = randomPassword();
  const user: UserRecord = { name: 'demo', passwordHash: await hashPassword(password), roles: ['user'], groups: [], sessionsNotBefore: 0 };
  await dir.putUser(user);
  return password;
}
