/**
 * This node's part in the cluster: the leader lease (lease.ts), membership and heartbeats
 * (membership.ts), node-to-node TLS (peers.ts), and the two halves of VM failover:
 *
 * - the leader, on each heartbeat tick, looks for nodes whose heartbeat expired. Such a node is
 *   failed only when others agree: at least two nodes besides it (or every remaining node, in a
 *   smaller cluster) found its port silent. Then, for each VM it owned, the replica (if it is up)
 *   becomes the owner, the VM's epoch goes up and it is marked `recovering`; a VM without a live
 *   replica is marked `down`. Each write is fenced (leader token) and compare-and-set (VM epoch).
 * - every node watches the VMs it owns: a `recovering` VM gets the failover hook run once for its
 *   epoch (the deployment starts the VM there), then its console is probed until it answers, and
 *   the VM is marked `running` (compare-and-set on the epoch, so a newer change always wins). A
 *   `down` VM whose owner is up again is probed the same way.
 */
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import type { Redis } from 'ioredis';
import { request } from 'undici';
import type { Config } from '../config.js';
import type { Directory, VmRecord } from '../directory/directory.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { VERSION } from '../version.js';
import { type ProbeProtocol, probeAnswer, probeGreeting } from '../../protocols/probe.js';
import { LeaderLease, type LeaderInfo } from './lease.js';
import { Membership, type NodeInfo, type PeerView } from './membership.js';
import { Peers, peerNodeId, type NodeIdentity } from './peers.js';
import { ProcessWatch } from './process-watch.js';
import { RedisDirectory, type ReseedVerdict } from '../directory/redis.js';
import { type ClusterStatus, type ClusterView, type Fence, isNodeAddressIn } from './view.js';
import { X509Certificate } from 'node:crypto';


export interface ClusterDeps {
  readonly config: Config;
  /** A dedicated connection (lease, heartbeats): never blocked behind directory traffic. */
  readonly redis: Redis;
  readonly identity: NodeIdentity;
  readonly log: Logger;
  readonly metrics: Metrics;
  /** Where this node remembers the highest leader epoch it has seen. */
  readonly epochFile: string;
  /** This node holds the CA key and signs join requests (advertised in its node record). */
  readonly signer?: boolean;
}

/**
 * Console probe: the console answers its protocol (protocols/probe.ts: the RFB banner, a SPICE
 * link reply, an RDP X.224 Connection Confirm) within the deadline, on one short connection.
 */
export function probeConsole(host: string, port: number, protocol: ProbeProtocol, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    let seen = Buffer.alloc(0);
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    s.on('error', () => done(false));
    s.on('connect', () => {
      const hello = probeGreeting(protocol);
      if (hello.length) s.write(hello);
    });
    s.on('data', (d: Buffer) => {
      seen = Buffer.concat([seen, d]).subarray(0, 64);
      const r = probeAnswer(protocol, seen);
      if (r.kind !== 'more') done(r.kind === 'match');
    });
    s.on('end', () => done(false));
  });
}

export class Cluster implements ClusterView {
  readonly lease: LeaderLease;
  readonly peers: Peers;
  private readonly members: Membership;
  private readonly watch: ProcessWatch;
  /** Nodes found gone (process-watch.ts) being judged on fast heartbeats, until failed over. */
  private readonly urgent = new Map<string, number>();
  private urgentTimer: NodeJS.Timeout | undefined;
  private dir: Directory | undefined;
  private address = '';
  private startedAt = Date.now();
  private tickTimer: NodeJS.Timeout | undefined;
  private recoveryTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private ticking = false;
  private tunnels: () => number = () => 0;
  private mirror: () => { version: number; ageMs: number; connected: boolean } = () => ({ version: 0, ageMs: 0, connected: false });
  /** Last heartbeat seen per node (ms, their clock), to report how long a failover took. */
  private readonly lastSeen = new Map<string, number>();
  private readonly probing = new Set<string>();
  /** Per late node, the heartbeat (its `at`) it was late after and judged for: one probe per such silence. */
  private readonly judgedLate = new Map<string, number>();
  /** When (performance.now()) the next up peer turns late if it does not heartbeat before. */
  private nextLateAt = Number.POSITIVE_INFINITY;
  /** VM name -> epoch whose hook ran (or runs) here. */
  private readonly hooked = new Map<string, number>();
  private readonly recovering = new Set<string>();
  private readonly failingOver = new Set<string>();
  /** The leader term in which this node started gathering mirror versions before a reseed. */
  private gathering: { epoch: number; since: number } | undefined;

  private readonly caCert: X509Certificate;

  constructor(private readonly deps: ClusterDeps) {
    const c = deps.config.cluster;
    this.caCert = new X509Certificate(deps.identity.ca);
    this.lease = new LeaderLease({
      redis: deps.redis,
      key: `${c.prefix}leader`,
      epochKey: `${c.prefix}epoch`,
      nodeId: deps.config.nodeId,
      leaseMs: c.leaseMs,
      renewMs: c.renewMs,
      pollMs: c.pollMs,
      initialEpoch: readEpoch(deps.epochFile),
      log: deps.log,
      // While Redis waits for the directory to be written back, a node whose mirror is older than
      // a live peer's does not lead: the leader writes its mirror back, and must hold the newest.
      eligible: () => this.fresherPeer() === undefined,
    });
    this.lease.on('epoch', (e: number) => {
      try {
        writeFileSync(deps.epochFile, `${e}\n`, { mode: 0o600 });
      } catch (err) {
        deps.log.warn({ event: 'epoch-file', err: (err as Error).message }, 'cannot remember the leader epoch on disk');
      }
    });
    this.lease.on('leader', (info: LeaderInfo | undefined) => {
      deps.log.info({ event: 'leader-changed', leader: info?.node ?? null, epoch: info?.epoch ?? null }, info ? `cluster leader: ${info.node} (epoch ${info.epoch})` : 'cluster has no leader');
    });
    this.members = new Membership(deps.redis, c.prefix, c.nodeTimeoutMs);
    this.peers = new Peers(deps.identity, deps.config.tunnel.dialTimeoutMs);
    this.watch = new ProcessWatch({
      redis: deps.redis,
      prefix: c.prefix,
      self: deps.config.nodeId,
      everyMs: c.processWatchMs,
      probeMs: Math.min(1000, c.nodeTimeoutMs),
      verdictTtlMs: c.nodeTimeoutMs * 4,
      view: () => this.members.all(),
      leader: () => this.leader(),
      isLeader: () => this.isLeader(),
      probe: (address, ms) => this.peers.probe(address, ms),
      log: deps.log,
      onGone: (node, leaseRemoved) => this.judgeNow(node, leaseRemoved),
    });
  }

  /**
   * A node's process is gone (process-watch.ts): judge it now and watch it closely (see
   * watchClosely), so that this node's verdict, and as leader the failover, do not wait for the
   * next regular tick.
   */
  private judgeNow(node: string, leaseRemoved: boolean): void {
    if (this.stopped) return;
    // Its lease may be gone (removed by whoever found it): try to take it without waiting a poll.
    if (leaseRemoved || this.leader()?.node === node) this.lease.pollNow();
    // Our own verdict at once (the finder wrote its own), not at the tick that sees it suspect.
    const p = this.members.get(node);
    if (p && node !== this.nodeId) void this.judge(p);
    this.watchClosely(node);
  }

  /**
   * Heartbeat now and again every tenth of a heartbeat while `node` is late or suspect, until it
   * is failed over, is back, or 2 x nodeTimeoutMs passed: the verdicts of the others land between
   * two regular ticks, and the leader fails the node over on the first fast tick that sees them.
   */
  private watchClosely(node: string): void {
    if (!this.urgent.has(node)) this.urgent.set(node, performance.now() + this.deps.config.cluster.nodeTimeoutMs * 2);
    if (this.urgentTimer) return;
    const step = Math.max(20, Math.floor(this.deps.config.cluster.heartbeatMs / 10));
    const run = (): void => {
      this.urgentTimer = undefined;
      if (this.stopped) return;
      const leader = this.leader()?.node;
      if (leader !== undefined && this.urgent.has(leader)) this.lease.pollNow();
      void this.tick()
        .catch(() => undefined)
        .finally(() => {
          // Done with a node once it is failed over, left, back up (on time), or its time is over.
          for (const [id, until] of this.urgent) {
            const p = this.members.get(id);
            if (performance.now() > until || !p || (p.state !== 'suspect' && !this.late(p))) this.urgent.delete(id);
          }
          if (!this.stopped && this.urgent.size > 0) this.urgentTimer = setTimeout(run, step);
        });
    };
    this.urgentTimer = setTimeout(run, 0);
  }

  /**
   * The heartbeat's remaining time below which a node counts as late: it missed two beats
   * (heartbeatMs each) in a row. Undefined when nodeTimeoutMs leaves no room for that (it is at
   * least twice heartbeatMs): such a node is judged once it is suspect, as before.
   */
  private lateBelowMs(): number | undefined {
    const c = this.deps.config.cluster;
    const below = c.nodeTimeoutMs - 2 * c.heartbeatMs;
    return below > 0 ? below : undefined;
  }

  /** Is `p` up but late (two heartbeats missed), so that its heartbeat may be about to expire? */
  private late(p: PeerView): boolean {
    const below = this.lateBelowMs();
    return p.state === 'up' && p.info.id !== this.nodeId && below !== undefined && p.expiresInMs !== undefined && p.expiresInMs <= below;
  }

  /** The node id behind a verified node certificate on this socket (see peers.ts), or undefined. */
  peerNode(socket: net.Socket): string | undefined {
    return peerNodeId(socket, this.caCert);
  }

  get nodeId(): string {
    return this.deps.config.nodeId;
  }

  /**
   * Does another node of the view advertise its port at `address` (a connection's peer IP)? Its
   * node-to-node hops carry many clients' tunnels, so the listener does not hold it to the
   * per-address limit. Only nodes advertised by IP literal are recognised; the list is read per
   * call because it is a handful of nodes and changes as they come and go.
   */
  isNodeAddress(address: string): boolean {
    return isNodeAddressIn(this.members.all(), this.nodeId, address);
  }

  /** The directory's fence: hand this to RedisDirectory before it opens. */
  fence(): Fence {
    return { key: `${this.deps.config.cluster.prefix}leader`, token: () => this.lease.fenceToken(), onFenced: () => this.lease.fenced(), reseed: () => this.reseedVerdict() };
  }

  /**
   * May this node write its mirror back into a Redis that lost the directory? Only as leader, and
   * only `nodeTimeoutMs` after it first asked in this term: by then every live node has
   * heartbeated its mirror version into the new Redis (tick() hands those versions to the
   * directory, which refuses a mirror older than any of them), and a node that has not is
   * suspect anyway.
   */
  private reseedVerdict(): ReseedVerdict {
    const leader = this.isLeader() ? this.leader() : undefined;
    if (!leader) return 'not-leader';
    if (this.gathering?.epoch !== leader.epoch) this.gathering = { epoch: leader.epoch, since: performance.now() };
    if (performance.now() - this.gathering.since < this.deps.config.cluster.nodeTimeoutMs) return 'gathering';
    return this.fresherPeer() === undefined ? 'go' : 'not-leader';
  }

  /**
   * While Redis waits for the directory to be written back: a live peer whose mirror is newer than
   * ours (it should lead the reseed), if any.
   */
  private fresherPeer(): string | undefined {
    const dir = this.dir;
    if (!(dir instanceof RedisDirectory) || dir.awaitingReseed() === undefined) return undefined;
    const own = dir.version();
    return this.members.all().find((p) => p.info.id !== this.nodeId && p.state === 'up' && (p.heartbeat?.mirror.version ?? 0) > own)?.info.id;
  }

  /** Start electing and heartbeating once the port is bound (the address is known). */
  async start(opts: { dir: Directory; address: string; tunnels: () => number; mirror: () => { version: number; ageMs: number; connected: boolean } }): Promise<void> {
    this.dir = opts.dir;
    this.address = opts.address;
    this.tunnels = opts.tunnels;
    this.mirror = opts.mirror;
    this.startedAt = Date.now();
    await this.watch.start();
    await this.tick().catch(() => {});
    this.lease.start();
    this.scheduleTick();
    opts.dir.on('change', (c: { kind: string; name?: string }) => {
      if (c.kind === 'vm' && c.name) void this.recover(c.name);
    });
    this.recoveryTimer = setInterval(() => {
      // Indexed: O(this node's unsettled VMs), not O(directory), every recoveryProbeMs.
      for (const vm of this.dir?.unsettledVms(this.nodeId) ?? []) void this.recover(vm.name);
    }, this.deps.config.cluster.recoveryProbeMs);
    this.recoveryTimer.unref();
  }

  isLeader(): boolean {
    return this.lease.isLeader();
  }

  leader(): LeaderInfo | undefined {
    return this.lease.leader();
  }

  node(id: string): PeerView | undefined {
    return this.members.get(id);
  }

  /** Every node the cluster knows (this one included), as of the last heartbeat. */
  nodes(): readonly PeerView[] {
    return this.members.all();
  }

  selfInfo(): NodeInfo {
    return {
      id: this.nodeId,
      address: this.address,
      version: VERSION,
      capacity: this.deps.config.cluster.capacity ?? this.deps.config.limits.maxConnections,
      startedAt: this.startedAt,
      ...(this.deps.signer ? { signer: true } : {}),
      ...(this.watch.clientId() === undefined ? {} : { redisClient: this.watch.clientId() }),
    };
  }

  highestEpoch(): number {
    return this.lease.highestEpoch();
  }

  status(): Promise<ClusterStatus> {
    return Promise.resolve(this.statusNow());
  }

  statusNow(): ClusterStatus {
    const leader = this.leader();
    const nodes = this.members.all().map((p) => ({
      id: p.info.id,
      address: p.info.address,
      state: p.state,
      leader: leader?.node === p.info.id,
      version: p.info.version,
      capacity: p.info.capacity,
      startedAt: new Date(p.info.startedAt).toISOString(),
      tunnels: p.heartbeat?.tunnels ?? null,
      heartbeatAgeMs: p.heartbeat ? Math.max(0, Date.now() - p.heartbeat.at) : null,
      mirror: p.heartbeat ? { version: p.heartbeat.mirror.version, ageMs: p.heartbeat.mirror.ageMs, connected: p.heartbeat.mirror.connected } : null,
      unreachableBy: p.unreachableBy,
      ...(p.info.down ? { downSince: new Date(p.info.down.at).toISOString() } : {}),
    }));
    return { self: this.nodeId, leader: leader ? { node: leader.node, epoch: leader.epoch } : null, highestEpoch: this.lease.highestEpoch(), nodes };
  }

  /**
   * The next regular heartbeat, or sooner at the moment a peer turns late (see tick), so that a
   * node gone silent is probed at once, not up to a heartbeat later.
   */
  private scheduleTick(): void {
    if (this.stopped) return;
    const { heartbeatMs } = this.deps.config.cluster;
    const delay = Math.min(heartbeatMs, Math.max(20, Math.ceil(this.nextLateAt - performance.now()) + 5));
    this.tickTimer = setTimeout(() => {
      void this.tick()
        .catch((err: Error) => this.deps.log.debug({ event: 'heartbeat-error', err: err.message }, 'heartbeat failed'))
        .finally(() => this.scheduleTick());
    }, delay);
  }

  /** One heartbeat: write ours, read the view, judge silent nodes, and (as leader) fail over. */
  private async tick(): Promise<void> {
    if (this.ticking || this.stopped) return;
    this.ticking = true;
    // A heartbeat that fails (Redis away) leaves no late moment to wake up for: the next one comes
    // a heartbeat later, not in a loop.
    this.nextLateAt = Number.POSITIVE_INFINITY;
    try {
      const view = await this.members.beat(this.selfInfo(), { at: Date.now(), tunnels: this.tunnels(), mirror: this.mirror() });
      const counts = { up: 0, suspect: 0, down: 0, left: 0 };
      const now = performance.now();
      const lateBelow = this.lateBelowMs();
      let nextLateAt = Number.POSITIVE_INFINITY;
      for (const p of view.values()) {
        counts[p.state]++;
        if (p.heartbeat) this.lastSeen.set(p.info.id, p.heartbeat.at);
        // A peer's mirror holds only versions Redis acknowledged: ours must not be written back older.
        if (p.heartbeat && p.info.id !== this.nodeId && this.dir instanceof RedisDirectory) this.dir.noteAcknowledged(p.heartbeat.mirror.version, p.info.id);
        if (p.info.id === this.nodeId) continue;
        if (p.state === 'suspect') {
          void this.judge(p);
        } else if (this.late(p) && p.heartbeat) {
          // Two heartbeats missed: probe its port now, once for this silence, so that the verdicts
          // are in when its heartbeat expires (the leader still fails over only a node that is
          // suspect, i.e. silent for nodeTimeoutMs, and that two others found silent).
          if (this.judgedLate.get(p.info.id) !== p.heartbeat.at) {
            this.judgedLate.set(p.info.id, p.heartbeat.at);
            void this.judge(p);
          }
          this.watchClosely(p.info.id);
        } else if (p.state === 'up' && lateBelow !== undefined && p.expiresInMs !== undefined) {
          nextLateAt = Math.min(nextLateAt, now + p.expiresInMs - lateBelow);
        }
      }
      this.nextLateAt = nextLateAt;
      for (const [state, n] of Object.entries(counts)) this.deps.metrics.clusterNodes.set({ state }, n);
      const fresher = this.isLeader() ? this.fresherPeer() : undefined;
      if (fresher !== undefined) {
        this.deps.log.warn({ event: 'leader-abdicated', fresher }, `Redis lost the directory and node ${fresher} holds a newer mirror: it should lead the reseed`);
        await this.lease.abdicate('fresher-mirror-elsewhere');
      }
      if (this.isLeader()) this.sweep(view);
    } finally {
      this.ticking = false;
    }
  }

  /** Is the silent node's port really silent? Our verdict goes to Redis for the leader to count. */
  private async judge(p: PeerView): Promise<void> {
    if (this.probing.has(p.info.id)) return;
    this.probing.add(p.info.id);
    try {
      const ok = await this.peers.probe(p.info.address, Math.min(1000, this.deps.config.cluster.nodeTimeoutMs));
      await this.members.verdict(this.nodeId, p.info.id, !ok);
    } catch {
      // Redis away: no verdict this round.
    } finally {
      this.probing.delete(p.info.id);
    }
  }

  /** Leader: fail over every suspect node that enough others found silent. */
  private sweep(view: ReadonlyMap<string, PeerView>): void {
    for (const p of view.values()) {
      if (p.state !== 'suspect' || p.info.id === this.nodeId || this.failingOver.has(p.info.id)) continue;
      const others = [...view.values()].filter((o) => o.state === 'up' && o.info.id !== p.info.id);
      const needed = Math.min(2, others.length);
      const agree = p.unreachableBy.filter((id) => others.some((o) => o.info.id === id)).length;
      if (needed === 0 || agree < needed) continue;
      this.failingOver.add(p.info.id);
      void this.failover(p, agree).finally(() => this.failingOver.delete(p.info.id));
    }
  }

  private async failover(dead: PeerView, agree: number): Promise<void> {
    const dir = this.dir!;
    const started = performance.now();
    const lastSeen = this.lastSeen.get(dead.info.id);
    const epoch = this.leader()?.epoch ?? 0;
    this.deps.log.warn(
      { event: 'node-failed', node: dead.info.id, address: dead.info.address, confirmedBy: agree, silentForMs: lastSeen ? Date.now() - lastSeen : null },
      `node ${dead.info.id} failed: no heartbeat, port silent for ${agree} other node(s); failing its VMs over`,
    );
    let promoted = 0;
    let down = 0;
    try {
      // All of the node's VMs in one putVms: it writes them PUT_VMS_MAX to a fenced script (one
      // feed entry each) and waits for this node's mirror once, after the last (at 1M VMs, 20k
      // VMs in 200-VM calls each waiting for the mirror took 8-21 s).
      const owned = dir.vmsOnNode(dead.info.id);
      const nexts = owned.map((vm): VmRecord => {
        const replica = vm.replica !== undefined ? this.members.get(vm.replica) : undefined;
        return replica?.state === 'up'
          ? { ...vm, node: replica.info.id, replica: vm.node, state: 'recovering', epoch: vm.epoch + 1 }
          : { ...vm, state: 'down', epoch: vm.epoch + 1 };
      });
      const written = await dir.putVms(nexts, owned.map((vm) => vm.epoch));
      for (const [j, next] of nexts.entries()) {
        if (!written[j]) continue;
        const vm = owned[j]!;
        if (next.state === 'recovering') promoted++;
        else down++;
        this.deps.metrics.failoverVms.inc({ result: next.state === 'recovering' ? 'promoted' : 'down' });
        this.deps.log.warn(
          { event: 'vm-failover', vm: vm.name, from: vm.node, to: next.state === 'recovering' ? next.node : null, epoch: next.epoch, state: next.state },
          next.state === 'recovering' ? `VM ${vm.name}: ${vm.node} -> ${next.node} (epoch ${next.epoch})` : `VM ${vm.name} is down: no live replica`,
        );
      }
      await this.members.markDown(dead.info, epoch);
      const ms = performance.now() - started;
      this.deps.metrics.failovers.inc({ result: 'ok' });
      this.deps.metrics.failoverSeconds.observe(ms / 1000);
      this.deps.log.warn({ event: 'node-failover-done', node: dead.info.id, promoted, down, ms: Math.round(ms) }, `failover of node ${dead.info.id} done: ${promoted} VM(s) promoted, ${down} down`);
    } catch (err) {
      this.deps.metrics.failovers.inc({ result: 'error' });
      this.deps.log.error({ event: 'node-failover-error', node: dead.info.id, err: (err as Error).message }, 'failover interrupted; the next leader tick retries');
    }
  }

  /** Owner side: hook once per epoch, then probe until the console answers, then `running`. */
  private async recover(name: string): Promise<void> {
    const vm = this.dir?.getVm(name);
    if (!vm || vm.node !== this.nodeId || (vm.state !== 'recovering' && vm.state !== 'down') || this.recovering.has(name) || this.stopped) return;
    this.recovering.add(name);
    try {
      if (vm.state === 'recovering' && this.hooked.get(name) !== vm.epoch) {
        this.hooked.set(name, vm.epoch);
        await this.runHook(vm);
      }
      const endpoint = vm.endpoints[0];
      if (!endpoint) return;
      const ok = await probeConsole(endpoint.host, endpoint.port, endpoint.protocol, this.deps.config.tunnel.dialTimeoutMs);
      if (!ok) return;
      const now = this.dir!.getVm(name);
      if (!now || now.epoch !== vm.epoch || now.node !== this.nodeId) return;
      if (await this.dir!.putVm({ ...now, state: 'running' }, { ifEpoch: now.epoch, unfenced: true })) {
        this.deps.log.info({ event: 'vm-running', vm: name, epoch: now.epoch }, `VM ${name}: console answers on ${this.nodeId}; running (epoch ${now.epoch})`);
      }
    } catch (err) {
      this.deps.log.warn({ event: 'vm-recovery-error', vm: name, err: (err as Error).message }, `VM ${name}: recovery step failed; retrying`);
    } finally {
      this.recovering.delete(name);
    }
  }

  private async runHook(vm: VmRecord): Promise<void> {
    const hook = this.deps.config.cluster.failoverHook;
    if (!hook) return;
    const started = performance.now();
    const timeout = this.deps.config.cluster.hookTimeoutMs;
    try {
      if ('url' in hook) {
        const res = await request(hook.url, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ vm: vm.name, epoch: vm.epoch, node: this.nodeId, previousNode: vm.replica ?? null }),
          signal: AbortSignal.timeout(timeout),
        });
        await res.body.dump();
        if (res.statusCode >= 300) throw new Error(`webhook answered ${res.statusCode}`);
      } else {
        const [cmd, ...args] = hook.command;
        await new Promise<void>((resolve, reject) => {
          execFile(
            cmd!,
            [...args, vm.name, String(vm.epoch)],
            { timeout, env: { ...process.env, ONEPORT_VM: vm.name, ONEPORT_EPOCH: String(vm.epoch), ONEPORT_NODE: this.nodeId } },
            (err) => (err ? reject(err) : resolve()),
          );
        });
      }
      this.deps.metrics.hooks.inc({ result: 'ok' });
      this.deps.log.info({ event: 'failover-hook', vm: vm.name, epoch: vm.epoch, ms: Math.round(performance.now() - started) }, `failover hook done for ${vm.name}`);
    } catch (err) {
      this.deps.metrics.hooks.inc({ result: 'error' });
      this.deps.log.error({ event: 'failover-hook-error', vm: vm.name, epoch: vm.epoch, err: (err as Error).message }, `failover hook failed for ${vm.name}`);
    }
  }

  /** The address of node `id` when it is an up member (a peer to talk to), else undefined. */
  peerAddress(id: string): string | undefined {
    const p = this.members.get(id);
    return p && p.state === 'up' ? p.info.address : undefined;
  }

  /**
   * The leader as a peer to forward to, waiting (up to twice the lease) through an election
   * rather than failing the caller at once; undefined when there is none, or it is this node.
   */
  async leaderPeer(): Promise<{ node: string; address: string } | undefined> {
    const leader = await this.awaitLeader(this.deps.config.cluster.leaseMs * 2);
    const address = leader ? this.peerAddress(leader.node) : undefined;
    return leader && address ? { node: leader.node, address } : undefined;
  }

  /** The leader, waiting (up to `ms`) through an election rather than failing the caller at once. */
  private awaitLeader(ms: number): Promise<LeaderInfo | undefined> {
    const now = this.leader();
    if (now && now.node !== this.nodeId) return Promise.resolve(now);
    return new Promise((resolve) => {
      const done = (info: LeaderInfo | undefined): void => {
        if (info && info.node === this.nodeId && !this.isLeader()) return;
        clearTimeout(timer);
        this.lease.removeListener('leader', done);
        resolve(info);
      };
      const timer = setTimeout(() => done(this.leader()), ms);
      this.lease.on('leader', done);
    });
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.tickTimer);
    clearTimeout(this.urgentTimer);
    clearInterval(this.recoveryTimer);
    this.watch.stop();
    await this.lease.stop();
    if (this.address) await this.members.leave(this.selfInfo()).catch(() => {});
    await this.peers.close().catch(() => {});
    await this.deps.redis.quit().catch(() => this.deps.redis.disconnect());
  }
}

function readEpoch(file: string): number {
  try {
    const n = Number(readFileSync(file, 'utf8').trim());
    return Number.isSafeInteger(n) && n > 0 ? n : 0;
  } catch {
    return 0;
  }
}
